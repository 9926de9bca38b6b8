//! Behaviour of the run engine, driven through its public API.
#![allow(clippy::unwrap_used)]
mod common;

use std::time::Duration;

use common::{Lens, drive, state};
use ferroflow_core::{
    Cause, EdgeSpec, FlowOutcome, Graph, Outcome, Ready, Run, RunId, StateKind, TaskId, TaskSpec,
    Trigger,
};

fn tasks(n: usize) -> Vec<TaskSpec> {
    (0..n).map(|i| TaskSpec::new(format!("t{i}"))).collect()
}

/// A run of these tasks and edges (which must make a valid graph).
fn new_run(tasks: Vec<TaskSpec>, edges: Vec<EdgeSpec>) -> Run {
    Run::new(Graph::new(tasks, edges).unwrap())
}

/// `0 -> 1 -> ... -> stages`, every edge mapped: a source and a chain of maps.
fn map_chain(stages: u32) -> Vec<EdgeSpec> {
    (0..stages)
        .map(|s| EdgeSpec::new(s, s + 1).mapped())
        .collect()
}

fn fail() -> Outcome {
    Outcome::Failed {
        message: Some("boom".into()),
        cause: Cause::Raised { matched: true },
    }
}

/// Outcomes for [`drive`]: [`fail`] where `pred` says so, success elsewhere.
fn fail_where(mut pred: impl FnMut(&Run, Ready) -> bool) -> impl FnMut(&Run, Ready) -> Outcome {
    move |run, r| {
        if pred(run, r) {
            fail()
        } else {
            Outcome::Success
        }
    }
}

#[test]
fn chain_runs_in_order_and_failure_stops_downstream() {
    let mut run = new_run(tasks(3), vec![EdgeSpec::new(0, 1), EdgeSpec::new(1, 2)]);
    let order = drive(
        &mut run,
        &mut Lens::default(),
        fail_where(|_, r| r.task == TaskId(1)),
    );
    assert_eq!(order, vec![RunId(0), RunId(1)]);
    assert_eq!(state(&run, 0), StateKind::Success);
    assert_eq!(state(&run, 1), StateKind::Failed);
    assert_eq!(state(&run, 2), StateKind::TriggerFailed);
    assert_eq!(
        run.outcome(&[TaskId(2)]),
        FlowOutcome::Failed(vec![TaskId(2)])
    );
}

#[test]
fn skip_propagates_unless_disabled() {
    let mut t = tasks(4);
    t[3].skip_on_upstream_skip = false;
    t[3].trigger = Trigger::AllFinished;
    let mut run = new_run(
        t,
        vec![
            EdgeSpec::new(0, 1),
            EdgeSpec::new(1, 2),
            EdgeSpec::new(1, 3),
        ],
    );
    drive(&mut run, &mut Lens::default(), |_, r| {
        if r.task == TaskId(1) {
            Outcome::Skipped(None)
        } else {
            Outcome::Success
        }
    });
    assert_eq!(state(&run, 2), StateKind::Skipped);
    assert_eq!(state(&run, 3), StateKind::Success);
    assert_eq!(run.outcome(&[TaskId(2), TaskId(3)]), FlowOutcome::Success);
}

#[test]
fn retry_waits_only_for_itself() {
    // t0 fails once with a long delay; t1..t3 is an independent chain that must all
    // run before t0's retry.
    let mut t = tasks(4);
    t[0].max_retries = 2;
    t[0].retry_delay = Duration::from_secs(60);
    let mut run = new_run(t, vec![EdgeSpec::new(1, 2), EdgeSpec::new(2, 3)]);
    let mut attempts = 0;
    let order = drive(&mut run, &mut Lens::default(), |_, r| {
        if r.task == TaskId(0) {
            attempts += 1;
            if attempts == 1 {
                return fail();
            }
        }
        Outcome::Success
    });
    assert_eq!(
        order,
        vec![RunId(0), RunId(1), RunId(2), RunId(3), RunId(0)]
    );
    assert_eq!(state(&run, 0), StateKind::Success);
    assert_eq!(run.run_count(RunId(0)), 2);
}

#[test]
fn retries_exhausted_and_not_retryable() {
    let mut t = tasks(2);
    t[0].max_retries = 2;
    t[1].max_retries = 5;
    let mut run = new_run(t, vec![]);
    drive(&mut run, &mut Lens::default(), |_, r| {
        if r.task == TaskId(0) {
            fail()
        } else {
            Outcome::Failed {
                message: None,
                cause: Cause::Raised { matched: false },
            }
        }
    });
    assert_eq!(run.run_count(RunId(0)), 3);
    assert_eq!(run.run_count(RunId(1)), 1);
    assert_eq!(state(&run, 0), StateKind::Failed);
    assert_eq!(run.message(RunId(0)), Some("boom"));
}

#[test]
fn loop_reruns_with_count() {
    let mut run = new_run(tasks(1), vec![]);
    let mut seen = Vec::new();
    drive(&mut run, &mut Lens::default(), |_, r| {
        seen.push(r.loop_count);
        if r.loop_count < 3 {
            Outcome::Loop(None)
        } else {
            Outcome::Success
        }
    });
    assert_eq!(seen, vec![0, 1, 2, 3]);
    assert_eq!(run.run_count(RunId(0)), 1);
}

#[test]
fn manual_only_pauses_and_flow_is_unfinished() {
    let mut t = tasks(2);
    t[1].trigger = Trigger::ManualOnly;
    let mut run = new_run(t, vec![EdgeSpec::new(0, 1)]);
    drive(&mut run, &mut Lens::default(), |_, _| Outcome::Success);
    assert_eq!(state(&run, 1), StateKind::Paused);
    assert_eq!(
        run.outcome(&[TaskId(1)]),
        FlowOutcome::Unfinished(vec![TaskId(1)])
    );
}

#[test]
fn map_expands_and_reduce_sees_children() {
    // 0: source list of 5, 1: mapped over 0, 2: reduce of 1.
    let mut run = new_run(
        tasks(3),
        vec![EdgeSpec::new(0, 1).mapped(), EdgeSpec::new(1, 2)],
    );
    let mut lens = Lens::with_lens([(0, 5)]);
    drive(
        &mut run,
        &mut lens,
        fail_where(|run, r| run.map_index(r.run) == Some(2)),
    );
    let (base, n) = run.children(TaskId(1)).unwrap();
    assert_eq!(n, 5);
    assert_eq!(state(&run, 1), StateKind::Mapped);
    assert_eq!(state(&run, base.0 + 2), StateKind::Failed);
    assert_eq!(state(&run, 2), StateKind::TriggerFailed);
    assert_eq!(run.upstream_runs(RunId(2))[0].1.len(), 5);
    assert_eq!(
        run.outcome(&[TaskId(1)]),
        FlowOutcome::Failed(vec![TaskId(1)])
    );
}

#[test]
fn map_chain_is_depth_first_and_failure_stays_in_branch() {
    // 0: source (len 3), 1 = map(0), 2 = map(1), 3 = map(2)
    let mut run = new_run(tasks(4), map_chain(3));
    let mut lens = Lens::with_lens([(0, 3)]);
    let order = drive(
        &mut run,
        &mut lens,
        fail_where(|run, r| r.task == TaskId(2) && run.map_index(r.run) == Some(1)),
    );
    let idx: Vec<(u32, Option<u32>)> = order
        .iter()
        .map(|&r| (run.task_of(r).unwrap().0, run.map_index(r)))
        .collect();
    assert_eq!(
        idx,
        vec![
            (0, None),
            (1, Some(0)),
            (2, Some(0)),
            (3, Some(0)),
            (1, Some(1)),
            (2, Some(1)),
            (1, Some(2)),
            (2, Some(2)),
            (3, Some(2)),
        ]
    );
    let (b3, _) = run.children(TaskId(3)).unwrap();
    assert_eq!(state(&run, b3.0 + 1), StateKind::TriggerFailed);
    assert_eq!(state(&run, b3.0), StateKind::Success);
}

#[test]
fn zip_to_shortest_and_empty_map() {
    // 0 (len 4), 1 (len 2) -> 2 = map(0, 1); 3 (len 0) -> 4 = map(3) -> 5 = map(4) -> 6 reduce
    let mut run = new_run(
        tasks(7),
        vec![
            EdgeSpec::new(0, 2).mapped(),
            EdgeSpec::new(1, 2).mapped(),
            EdgeSpec::new(3, 4).mapped(),
            EdgeSpec::new(4, 5).mapped(),
            EdgeSpec::new(5, 6),
        ],
    );
    let mut lens = Lens::with_lens([(0, 4), (1, 2), (3, 0)]);
    drive(&mut run, &mut lens, |_, _| Outcome::Success);
    assert_eq!(run.children(TaskId(2)).unwrap().1, 2);
    assert_eq!(run.children(TaskId(5)).unwrap().1, 0);
    assert_eq!(state(&run, 6), StateKind::Success);
}

#[test]
fn unmappable_input_fails_parent_with_message() {
    let mut run = new_run(tasks(3), map_chain(2));
    let mut lens = Lens::default();
    lens.len
        .insert(0, Err("int is not a sized sequence".into()));
    drive(&mut run, &mut lens, |_, _| Outcome::Success);
    assert_eq!(state(&run, 1), StateKind::Failed);
    assert!(
        run.message(RunId(1))
            .unwrap()
            .contains("int is not a sized sequence")
    );
    assert_eq!(state(&run, 2), StateKind::TriggerFailed);
}

#[test]
fn flatten_across_children() {
    // 0 (len 3) -> 1 = map(0); 1 children return [0], [0,1], [0,1,2] -> 2 = map(flatten(1))
    let mut run = new_run(
        tasks(3),
        vec![
            EdgeSpec::new(0, 1).mapped(),
            EdgeSpec::new(1, 2).mapped().flattened(),
        ],
    );
    // children of task 1 are runs 3, 4, 5
    let mut lens = Lens::with_lens([(0, 3), (3, 1), (4, 2), (5, 3)]);
    drive(&mut run, &mut lens, |_, _| Outcome::Success);
    let (b2, n2) = run.children(TaskId(2)).unwrap();
    assert_eq!(n2, 6);
    let e = run.graph().ins(TaskId(2))[0];
    use ferroflow_core::run::Source;
    assert_eq!(run.source(e, RunId(b2.0)), Source::Item(RunId(3), 0));
    assert_eq!(run.source(e, RunId(b2.0 + 2)), Source::Item(RunId(4), 1));
    assert_eq!(run.source(e, RunId(b2.0 + 5)), Source::Item(RunId(5), 2));
}

#[test]
fn child_retries_on_its_own() {
    let mut t = tasks(2);
    t[1].max_retries = 1;
    t[1].retry_delay = Duration::from_secs(1);
    let mut run = new_run(t, map_chain(1));
    let mut lens = Lens::with_lens([(0, 3)]);
    drive(
        &mut run,
        &mut lens,
        fail_where(|run, r| run.map_index(r.run) == Some(1) && r.run_count == 1),
    );
    let (b, _) = run.children(TaskId(1)).unwrap();
    assert_eq!(run.run_count(RunId(b.0 + 1)), 2);
    assert_eq!(run.run_count(RunId(b.0)), 1);
    assert_eq!(state(&run, b.0 + 1), StateKind::Success);
}

#[test]
fn cancel_keeps_finished_states() {
    let mut run = new_run(tasks(3), vec![EdgeSpec::new(0, 1), EdgeSpec::new(1, 2)]);
    let now = std::time::Instant::now();
    let mut lens = Lens::default();
    let r0 = run.next_ready(now, &mut lens).unwrap();
    run.complete(r0.run, Outcome::Success, now).unwrap();
    let r1 = run.next_ready(now, &mut lens).unwrap();
    assert_eq!(run.in_flight(), 1);
    run.cancel("interrupted");
    assert_eq!(run.in_flight(), 0);
    assert!(run.is_done());
    assert_eq!(state(&run, 0), StateKind::Success);
    assert_eq!(state(&run, r1.run.0), StateKind::Cancelled);
    assert_eq!(state(&run, 2), StateKind::Pending);
    assert!(run.complete(r1.run, Outcome::Success, now).is_err());
    assert_eq!(run.outcome(&[TaskId(2)]), FlowOutcome::Cancelled);
}

#[test]
fn million_children_fit() {
    let mut run = new_run(
        tasks(3),
        vec![EdgeSpec::new(0, 1).mapped(), EdgeSpec::new(1, 2)],
    );
    let mut lens = Lens::with_lens([(0, 1_000_000)]);
    let order = drive(&mut run, &mut lens, |_, _| Outcome::Success);
    assert_eq!(order.len(), 1_000_002);
    assert_eq!(state(&run, 2), StateKind::Success);
}

#[test]
fn release_frees_inputs_branch_by_branch() {
    // 0: source (len 3) -> 1 = map(0) -> 2 = map(1) -> 3 = map(2); 3 is terminal.
    let mut run = new_run(tasks(4), map_chain(3));
    run.enable_release(&[]);
    let mut lens = Lens::with_lens([(0, 3)]);
    let mut released_after: Vec<(RunId, Vec<RunId>)> = Vec::new();
    let mut now = std::time::Instant::now();
    while let Some(r) = run.next_ready(now, &mut lens) {
        run.complete(r.run, Outcome::Success, now).unwrap();
        released_after.push((r.run, run.drain_released()));
        now += Duration::from_millis(1);
    }
    assert!(run.is_done());
    let (b1, _) = run.children(TaskId(1)).unwrap();
    let (b2, _) = run.children(TaskId(2)).unwrap();
    let (b3, _) = run.children(TaskId(3)).unwrap();
    // When child 0 of stage 2 finishes, child 0 of stage 1 is released at once.
    let at = released_after.iter().find(|(r, _)| *r == b2).unwrap();
    assert_eq!(at.1, vec![b1]);
    let all: Vec<RunId> = released_after.iter().flat_map(|(_, v)| v.clone()).collect();
    // The source (once task 1 is done), every stage-1 and stage-2 child: never stage 3.
    assert!(all.contains(&RunId(0)));
    for i in 0..3 {
        assert!(all.contains(&RunId(b1.0 + i)));
        assert!(all.contains(&RunId(b2.0 + i)));
        assert!(!all.contains(&RunId(b3.0 + i)));
    }
    assert_eq!(all.len(), 7);
}

#[test]
fn state_counts_follow_every_transition() {
    let mut run = new_run(
        tasks(3),
        vec![EdgeSpec::new(0, 1).mapped(), EdgeSpec::new(1, 2)],
    );
    assert_eq!(run.state_counts()[StateKind::Pending as usize], 3);
    let mut lens = Lens::with_lens([(0, 4)]);
    drive(
        &mut run,
        &mut lens,
        fail_where(|run, r| run.map_index(r.run) == Some(1)),
    );
    let c = run.state_counts();
    assert_eq!(c.iter().sum::<u32>() as usize, run.n_runs());
    assert_eq!(c[StateKind::Success as usize], 4); // source + 3 children
    assert_eq!(c[StateKind::Failed as usize], 1);
    assert_eq!(c[StateKind::Mapped as usize], 1);
    assert_eq!(c[StateKind::TriggerFailed as usize], 1);
    assert_eq!(c[StateKind::Pending as usize], 0);
}

#[test]
fn release_waits_for_every_consumer_even_past_255() {
    // 0: source (len 2) -> 1 = map(0) -> 300 tasks each mapping over 1 (all
    // elementwise). Child i of task 1 may only be released once child i of all
    // 300 consumers has finished.
    const CONSUMERS: u32 = 300;
    let mut edges = vec![EdgeSpec::new(0, 1).mapped()];
    for c in 0..CONSUMERS {
        edges.push(EdgeSpec::new(1, 2 + c).mapped());
    }
    let mut run = new_run(tasks(2 + CONSUMERS as usize), edges);
    run.enable_release(&[]);
    let mut lens = Lens::with_lens([(0, 2)]);
    let mut done_at = [0u32; 2]; // consumer children finished, by map index
    let mut released = 0;
    let mut now = std::time::Instant::now();
    while let Some(r) = run.next_ready(now, &mut lens) {
        run.complete(r.run, Outcome::Success, now).unwrap();
        if r.task.0 >= 2 {
            done_at[r.map_index.unwrap() as usize] += 1;
        }
        let (b1, n1) = run.children(TaskId(1)).unwrap_or((RunId(0), 0));
        for f in run.drain_released() {
            if (b1.0..b1.0 + n1).contains(&f.0) {
                let i = (f.0 - b1.0) as usize;
                assert_eq!(
                    done_at[i], CONSUMERS,
                    "child {i} of task 1 released while consumers still read it"
                );
                released += 1;
            }
        }
        now += Duration::from_millis(1);
    }
    assert!(run.is_done());
    assert_eq!(
        released, 2,
        "both children of task 1 are released in the end"
    );
}

#[test]
fn observed_runs_the_core_would_settle_are_handed_out_decided() {
    // t0 skips; t1 (observed) would be skipped too: the host gets it with
    // `decided`, and what it reports is the state (here its handler rescued it).
    let mut t = tasks(3);
    t[1].observed = true;
    let mut run = new_run(t, vec![EdgeSpec::new(0, 1), EdgeSpec::new(1, 2)]);
    run.enable_journal();
    let mut decided = Vec::new();
    drive(&mut run, &mut Lens::default(), |_, r| {
        if r.task == TaskId(0) {
            return Outcome::Skipped(None);
        }
        if let Some(kind) = r.decided {
            decided.push((r.task, kind, r.run_count));
            return Outcome::Success;
        }
        Outcome::Success
    });
    assert_eq!(decided, vec![(TaskId(1), StateKind::Skipped, 0)]);
    assert_eq!(state(&run, 1), StateKind::Success);
    assert_eq!(run.run_count(RunId(1)), 0);
    assert_eq!(state(&run, 2), StateKind::Success);
    // The journal shows t1 going straight to its final state, never Running.
    let j = run.drain_journal();
    let t1: Vec<StateKind> = j.iter().filter(|e| e.0 == RunId(1)).map(|e| e.1).collect();
    assert_eq!(t1, vec![StateKind::Success]);
}

#[test]
fn approve_resumes_a_paused_run_without_asking_its_trigger() {
    let mut t = tasks(2);
    t[1].trigger = Trigger::ManualOnly;
    let mut run = new_run(t, vec![EdgeSpec::new(0, 1)]);
    let order = drive(&mut run, &mut Lens::default(), |_, _| Outcome::Success);
    assert_eq!(order, vec![RunId(0)]);
    assert_eq!(state(&run, 1), StateKind::Paused);
    assert_eq!(run.paused(), vec![RunId(1)]);
    assert!(
        run.approve(RunId(0)).is_err(),
        "only a paused run can be approved"
    );
    run.approve(RunId(1)).unwrap();
    assert_eq!(state(&run, 1), StateKind::Resume);
    let order = drive(&mut run, &mut Lens::default(), |_, _| Outcome::Success);
    assert_eq!(order, vec![RunId(1)]);
    assert_eq!(state(&run, 1), StateKind::Success);
    assert_eq!(run.run_count(RunId(1)), 1);
}
