//! Property test: many runs in flight, completed in random order, through the
//! core's [`Driver`], against a small reference interpreter.
//!
//! Random DAGs (edges from lower to higher index) with plain, mapped (over a
//! list, or elementwise from a mapped task), flattened and reduce edges; random
//! built-in triggers and skip rules; scripted outcomes per attempt including
//! LOOP, RETRY, PAUSE (approved later, at a random moment), SKIP, failures with
//! and without a matching `retry_on`, the FAIL signal, internal failures and
//! timeouts, with retries and retry delays. Up to eight runs are in flight at
//! once and complete in an order the case's seed picks; the virtual clock
//! advances when the driver asks to wait. Checked:
//!
//! * no run is handed out before every upstream run it reads is final;
//! * every run reaches exactly one final state (journal), and the run ends;
//! * every task's and child's final state and run count equal the reference's;
//! * with a cancel partway, the run stops at once: nothing is left running,
//!   completions of cancelled runs are refused, and nothing else starts.
//!
//! `PROPTEST_CASES` sets the number of cases (`make proptest` runs 100,000).
#![allow(clippy::unwrap_used)]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::task_spec;
use ferroflow_core::{
    Cause, Driver, EdgeSpec, Graph, Host, Outcome, Policy, Ready, Run, RunId, StateKind, Step,
    TaskId, TaskSpec, Trigger,
};
use proptest::prelude::*;

/// What one attempt of a run does.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Act {
    Success,
    Skip,
    /// An error; `true` when it matches `retry_on`.
    Fail(bool),
    FailSignal,
    Internal,
    Timeout,
    Retry,
    Loop,
    Pause,
}

impl Act {
    fn outcome(self) -> Outcome {
        match self {
            Act::Success => Outcome::Success,
            Act::Skip => Outcome::Skipped(Some("SKIP".into())),
            Act::Fail(matched) => Outcome::failed("boom", Cause::Raised { matched }),
            Act::FailSignal => Outcome::failed("FAIL", Cause::FailSignal),
            Act::Internal => Outcome::failed("internal", Cause::Internal),
            Act::Timeout => Outcome::TimedOut {
                message: Some("slow".into()),
            },
            Act::Retry => Outcome::Retry(None),
            Act::Loop => Outcome::Loop(None),
            Act::Pause => Outcome::Paused(None),
        }
    }
}

fn terminal_act() -> impl Strategy<Value = Act> {
    prop_oneof![
        4 => Just(Act::Success),
        1 => Just(Act::Skip),
        1 => any::<bool>().prop_map(Act::Fail),
        1 => Just(Act::FailSignal),
        1 => Just(Act::Internal),
        1 => Just(Act::Timeout),
    ]
}

fn any_act() -> impl Strategy<Value = Act> {
    prop_oneof![
        3 => terminal_act(),
        1 => Just(Act::Retry),
        2 => Just(Act::Loop),
        1 => Just(Act::Pause),
    ]
}

/// Up to three acts, the last terminal (it repeats for later attempts).
fn script() -> impl Strategy<Value = Vec<Act>> {
    (prop::collection::vec(any_act(), 0..3), terminal_act()).prop_map(|(mut v, last)| {
        v.push(last);
        v
    })
}

#[derive(Copy, Clone, Debug)]
enum Trig {
    AllSuccessful,
    AllFailed,
    AnySuccessful,
    AnyFailed,
    AllFinished,
    NotAllSkipped,
}

impl Trig {
    fn to_core(self) -> Trigger {
        match self {
            Trig::AllSuccessful => Trigger::AllSuccessful,
            Trig::AllFailed => Trigger::AllFailed,
            Trig::AnySuccessful => Trigger::AnySuccessful,
            Trig::AnyFailed => Trigger::AnyFailed,
            Trig::AllFinished => Trigger::AllFinished,
            Trig::NotAllSkipped => Trigger::NotAllSkipped,
        }
    }

    /// `None`: run; else the state the run ends in without executing.
    fn decide(self, up: &[StateKind]) -> Option<StateKind> {
        let total = up.len();
        if total == 0 {
            return None;
        }
        let ok = |s: &&StateKind| {
            matches!(
                s,
                StateKind::Success | StateKind::Cached | StateKind::Mapped | StateKind::Skipped
            )
        };
        let bad = |s: &&StateKind| {
            matches!(
                s,
                StateKind::Failed | StateKind::TimedOut | StateKind::TriggerFailed
            )
        };
        let successful = up.iter().filter(ok).count();
        let failed = up.iter().filter(bad).count();
        let skipped = up.iter().filter(|s| **s == StateKind::Skipped).count();
        let run = match self {
            Trig::AllSuccessful => successful == total,
            Trig::AllFailed => failed == total,
            Trig::AnySuccessful => successful > 0,
            Trig::AnyFailed => failed > 0,
            Trig::AllFinished => true,
            Trig::NotAllSkipped if skipped == total => return Some(StateKind::Skipped),
            Trig::NotAllSkipped => successful == total,
        };
        (!run).then_some(StateKind::TriggerFailed)
    }
}

fn trig() -> impl Strategy<Value = Trig> {
    prop_oneof![
        4 => Just(Trig::AllSuccessful),
        1 => Just(Trig::AllFailed),
        1 => Just(Trig::AnySuccessful),
        1 => Just(Trig::AnyFailed),
        2 => Just(Trig::AllFinished),
        1 => Just(Trig::NotAllSkipped),
    ]
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    Mapped,
    Flattened,
}

#[derive(Clone, Debug)]
struct TaskCase {
    trigger: Trig,
    skip: bool,
    max_retries: u32,
    delay_ms: u64,
    /// Child `i` follows `scripts[i % 3]`; a task's own run follows `scripts[0]`.
    scripts: Vec<Vec<Act>>,
    /// Its results are lists of `(len + map_index) % 4` items.
    len: u32,
    /// It has state handlers: runs the core decides are handed out `decided`.
    observed: bool,
}

#[derive(Clone, Debug)]
struct Case {
    tasks: Vec<TaskCase>,
    edges: Vec<(u32, u32, Kind)>,
    workers: usize,
    seed: u64,
    cancel_after: Option<u32>,
}

fn task_case() -> impl Strategy<Value = TaskCase> {
    (
        trig(),
        any::<bool>(),
        0u32..3,
        prop_oneof![Just(0u64), 1u64..20],
        prop::collection::vec(script(), 3),
        0u32..4,
        any::<bool>(),
    )
        .prop_map(
            |(trigger, skip, max_retries, delay_ms, scripts, len, observed)| TaskCase {
                trigger,
                skip,
                max_retries,
                delay_ms,
                scripts,
                len,
                observed,
            },
        )
}

fn case() -> impl Strategy<Value = Case> {
    let kind =
        prop_oneof![3 => Just(Kind::Plain), 3 => Just(Kind::Mapped), 1 => Just(Kind::Flattened)];
    (1usize..=10)
        .prop_flat_map(move |n| {
            (
                prop::collection::vec(task_case(), n),
                prop::collection::vec((0..n as u32, 0..n as u32, kind.clone()), 0..=3 * n),
                2usize..=8,
                any::<u64>(),
                prop::option::weighted(0.1, 0u32..20),
            )
        })
        .prop_map(|(tasks, pairs, workers, seed, cancel_after)| Case {
            tasks,
            edges: pairs
                .into_iter()
                .filter(|(a, b, _)| a != b)
                .map(|(a, b, k)| (a.min(b), a.max(b), k))
                .collect(),
            workers,
            seed,
            cancel_after,
        })
}

fn item_len(task: usize, k: u32) -> u32 {
    (task as u32 + k) % 3
}

fn result_len(case: &Case, task: usize, idx: Option<u32>) -> u32 {
    (case.tasks[task].len + idx.unwrap_or(0)) % 4
}

fn script_of(case: &Case, task: usize, idx: Option<u32>) -> &[Act] {
    &case.tasks[task].scripts[idx.unwrap_or(0) as usize % 3]
}

// ---------------------------------------------------------------------------
// The reference interpreter.

/// `(state, run_count)` of a run that executes with `acts`.
fn execute(acts: &[Act], max_retries: u32) -> (StateKind, u32) {
    let mut rc = 1;
    let mut step = 0;
    loop {
        let a = acts[step.min(acts.len() - 1)];
        step += 1;
        let retries_left = rc <= max_retries;
        match a {
            Act::Success => return (StateKind::Success, rc),
            Act::Skip => return (StateKind::Skipped, rc),
            Act::Fail(true) | Act::FailSignal | Act::Timeout if retries_left => rc += 1,
            Act::Fail(_) | Act::FailSignal | Act::Internal => return (StateKind::Failed, rc),
            Act::Timeout => return (StateKind::TimedOut, rc),
            // RETRY always retries; an approved PAUSE runs again as a new attempt.
            Act::Retry | Act::Pause => rc += 1,
            Act::Loop => {}
        }
    }
}

#[derive(Clone, Debug)]
struct RefTask {
    state: (StateKind, u32),
    children: Option<Vec<(StateKind, u32)>>,
}

fn reference(case: &Case, mapped: &[bool]) -> Vec<RefTask> {
    let mut out: Vec<RefTask> = Vec::new();
    for (t, spec) in case.tasks.iter().enumerate() {
        let ins: Vec<(usize, Kind)> = case
            .edges
            .iter()
            .filter(|e| e.1 as usize == t)
            .map(|e| (e.0 as usize, e.2))
            .collect();
        let upstream = |child: Option<u32>| -> Vec<StateKind> {
            let mut v = Vec::new();
            for &(u, k) in &ins {
                let ur = &out[u];
                match (child, &ur.children) {
                    (Some(i), Some(ch)) if k == Kind::Mapped => v.push(ch[i as usize].0),
                    (_, Some(ch)) if k == Kind::Plain => v.extend(ch.iter().map(|c| c.0)),
                    _ => v.push(ur.state.0),
                }
            }
            v
        };
        let settle = |child: Option<u32>| -> (StateKind, u32) {
            let up = upstream(child);
            if spec.skip && up.contains(&StateKind::Skipped) {
                return (StateKind::Skipped, 0);
            }
            if let Some(s) = spec.trigger.decide(&up) {
                return (s, 0);
            }
            execute(script_of(case, t, child), spec.max_retries)
        };
        if !mapped[t] {
            let state = settle(None);
            out.push(RefTask {
                state,
                children: None,
            });
            continue;
        }
        // A mapped task: parent-level checks, then one child per element.
        let parent = |s| RefTask {
            state: (s, 0),
            children: None,
        };
        let skipped = ins
            .iter()
            .any(|&(u, _)| out[u].state.0 == StateKind::Skipped);
        if spec.skip && skipped {
            out.push(parent(StateKind::Skipped));
            continue;
        }
        let bad = ins.iter().any(|&(u, k)| {
            let s = out[u].state.0;
            k != Kind::Plain
                && (!matches!(
                    s,
                    StateKind::Success | StateKind::Cached | StateKind::Mapped
                ))
        });
        if bad {
            out.push(parent(StateKind::TriggerFailed));
            continue;
        }
        let mut n = u32::MAX;
        let mut failed = false;
        for &(u, k) in &ins {
            let len = match k {
                Kind::Plain => continue,
                Kind::Mapped => match &out[u].children {
                    Some(ch) => ch.len() as u32,
                    None => result_len(case, u, None),
                },
                Kind::Flattened => match &out[u].children {
                    Some(ch) => {
                        if ch.iter().any(|c| c.0 != StateKind::Success) {
                            failed = true;
                            break;
                        }
                        (0..ch.len() as u32)
                            .map(|i| result_len(case, u, Some(i)))
                            .sum()
                    }
                    None => (0..result_len(case, u, None)).map(|k| item_len(u, k)).sum(),
                },
            };
            n = n.min(len);
        }
        if failed {
            out.push(parent(StateKind::Failed));
            continue;
        }
        if n == u32::MAX {
            n = 0;
        }
        let children = (0..n).map(|i| settle(Some(i))).collect();
        out.push(RefTask {
            state: (StateKind::Mapped, 0),
            children: Some(children),
        });
    }
    out
}

// ---------------------------------------------------------------------------
// The harness: a host with many runs in flight.

/// Result lengths of finished runs, by run id.
#[derive(Default)]
struct Lens {
    of: HashMap<u32, (usize, Option<u32>, u32)>,
}

impl Host for Lens {
    fn len_of(&mut self, run: RunId) -> Result<u32, String> {
        self.of
            .get(&run.0)
            .map(|&(_, _, len)| len)
            .ok_or_else(|| format!("run {} has no result", run.0))
    }
    fn len_of_item(&mut self, run: RunId, item: u32) -> Result<u32, String> {
        let &(task, _, len) = self.of.get(&run.0).ok_or("no result")?;
        if item >= len {
            return Err("no such item".into());
        }
        Ok(item_len(task, item))
    }
}

/// A tiny deterministic generator (xorshift), seeded by the case.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn build(case: &Case) -> Run {
    let specs: Vec<TaskSpec> = case
        .tasks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut s = task_spec(i, c.trigger.to_core(), c.skip, c.max_retries, c.delay_ms);
            s.observed = c.observed;
            s
        })
        .collect();
    let edges: Vec<EdgeSpec> = case
        .edges
        .iter()
        .map(|&(a, b, k)| match k {
            Kind::Plain => EdgeSpec::new(a, b),
            Kind::Mapped => EdgeSpec::new(a, b).mapped(),
            Kind::Flattened => EdgeSpec::new(a, b).mapped().flattened(),
        })
        .collect();
    let mut run = Run::new(Graph::new(specs, edges).unwrap());
    run.enable_journal();
    run
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let run = build(case);
    let mapped: Vec<bool> = (0..case.tasks.len())
        .map(|t| run.graph().is_mapped(TaskId(t as u32)))
        .collect();
    let t0 = Instant::now();
    let mut now = t0;
    let mut driver = Driver::new(run, Policy::default(), None, now);
    let mut host = Lens::default();
    let mut rng = Rng(case.seed | 1);
    let mut in_flight: Vec<Ready> = Vec::new();
    let mut steps: HashMap<u32, usize> = HashMap::new();
    let mut journal = Vec::new();
    let mut completions = 0u32;
    let mut guard = 0u32;
    loop {
        guard += 1;
        prop_assert!(guard < 100_000, "the run did not end");
        if let Some(c) = case.cancel_after
            && completions == c
        {
            return check_cancel(&mut driver, &in_flight, &mut journal, now);
        }
        // Hand out work while "workers" are free.
        let mut wait = None;
        let mut done = false;
        while in_flight.len() < case.workers {
            match driver.step(now, &mut host) {
                Step::Execute { ready, .. } => {
                    for (_, ups) in driver.run().upstream_runs(ready.run) {
                        for u in ups {
                            let s = driver.run().state(u).unwrap();
                            prop_assert!(
                                s.is_final(),
                                "run {} started while its upstream {} was {:?}",
                                ready.run.0,
                                u.0,
                                s
                            );
                        }
                    }
                    in_flight.push(ready);
                }
                Step::Wait { until } => {
                    wait = Some(until);
                    break;
                }
                Step::Done => {
                    done = true;
                    break;
                }
            }
        }
        journal.extend(driver.run_mut().drain_journal());
        // Approve a paused run now and then, and always when nothing else is left.
        let paused = driver.run().paused();
        if !paused.is_empty() && (done || rng.below(6) == 0) {
            let r = paused[rng.below(paused.len())];
            driver.approve(r).unwrap();
            continue;
        }
        if done {
            prop_assert!(in_flight.is_empty(), "done with runs in flight");
            break;
        }
        if in_flight.is_empty() || (wait.is_some() && rng.below(4) == 0) {
            // Let time pass (for retry timers); a completion may come first.
            let until = wait.unwrap_or(now + Duration::from_millis(1));
            prop_assert!(until >= now, "the driver asked to wait until the past");
            now = until.max(now + Duration::from_micros(1));
            continue;
        }
        // Complete a random batch, as a thread pool's completions arrive: runs
        // made ready by earlier ones in the batch wait on the stack meanwhile.
        let batch = 1 + rng.below(in_flight.len());
        for _ in 0..batch {
            let ready = in_flight.swap_remove(rng.below(in_flight.len()));
            let t = ready.task.idx();
            if let Some(kind) = ready.decided {
                // A decided run: its "handlers" keep the core's state.
                prop_assert!(case.tasks[t].observed);
                let msg = driver.run().message(ready.run).map(str::to_string);
                let out = match kind {
                    StateKind::Skipped => Outcome::Skipped(msg),
                    StateKind::Paused => Outcome::Paused(msg),
                    StateKind::TriggerFailed => Outcome::TriggerFailed(msg),
                    other => return Err(TestCaseError::fail(format!("decided {other:?}"))),
                };
                driver.settle(ready.run, out, now).unwrap();
                completions += 1;
                continue;
            }
            let step = steps.entry(ready.run.0).or_insert(0);
            let acts = script_of(case, t, ready.map_index);
            let act = acts[(*step).min(acts.len() - 1)];
            *step += 1;
            if act == Act::Success {
                host.of.insert(
                    ready.run.0,
                    (t, ready.map_index, result_len(case, t, ready.map_index)),
                );
            }
            let stop = driver.complete(ready.run, act.outcome(), now, now).unwrap();
            prop_assert!(!stop);
            completions += 1;
        }
    }
    journal.extend(driver.run_mut().drain_journal());
    let run = driver.run();
    prop_assert!(run.is_done());
    check_journal(run, &journal)?;
    let expected = reference(case, &mapped);
    for (t, want) in expected.iter().enumerate() {
        let tid = TaskId(t as u32);
        let got = (
            run.state(RunId(t as u32)).unwrap(),
            run.run_count(RunId(t as u32)),
        );
        prop_assert_eq!(got, want.state, "task {}", t);
        let children = run.children(tid).map(|(base, n)| {
            (0..n)
                .map(|i| {
                    let r = RunId(base.0 + i);
                    (run.state(r).unwrap(), run.run_count(r))
                })
                .collect::<Vec<_>>()
        });
        prop_assert_eq!(
            children.as_ref(),
            want.children.as_ref(),
            "children of task {}",
            t
        );
    }
    Ok(())
}

/// Every run reaches exactly one final state (journal), never changes after
/// that, and every run in the table ends final.
fn check_journal(run: &Run, journal: &[ferroflow_core::Transition]) -> Result<(), TestCaseError> {
    let mut finished: HashMap<u32, StateKind> = HashMap::new();
    for &(r, s, _) in journal {
        if let Some(f) = finished.get(&r.0) {
            return Err(TestCaseError::fail(format!(
                "run {} became {s:?} after finishing as {f:?}",
                r.0
            )));
        }
        if s.is_final() {
            finished.insert(r.0, s);
        }
    }
    for r in 0..run.n_runs() as u32 {
        let s = run.state(RunId(r)).unwrap();
        prop_assert!(s.is_final(), "run {} ended {:?}", r, s);
        prop_assert_eq!(finished.get(&r), Some(&s), "run {} journal", r);
    }
    Ok(())
}

/// A cancel stops everything at once.
fn check_cancel(
    driver: &mut Driver,
    in_flight: &[Ready],
    journal: &mut Vec<ferroflow_core::Transition>,
    now: Instant,
) -> Result<(), TestCaseError> {
    driver.interrupt("cancelled by the test");
    prop_assert_eq!(driver.step(now, &mut Lens::default()), Step::Done);
    for r in in_flight {
        prop_assert_eq!(driver.run().state(r.run).unwrap(), StateKind::Cancelled);
        prop_assert!(driver.complete(r.run, Outcome::Success, now, now).is_err());
    }
    journal.extend(driver.run_mut().drain_journal());
    let run = driver.run();
    prop_assert!(run.is_done());
    for r in 0..run.n_runs() as u32 {
        let s = run.state(RunId(r)).unwrap();
        prop_assert!(
            s.is_final() || matches!(s, StateKind::Pending | StateKind::Paused),
            "run {} is {:?} after a cancel",
            r,
            s
        );
    }
    let mut finished: HashMap<u32, StateKind> = HashMap::new();
    for &(r, s, _) in journal.iter() {
        prop_assert!(
            !finished.contains_key(&r.0),
            "run {} changed after finishing",
            r.0
        );
        if s.is_final() {
            finished.insert(r.0, s);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn many_in_flight_match_reference(case in case()) {
        check(&case)?;
    }
}

/// The bug this property was written for: a mapped task that LOOPs feeding a
/// mapped task that also waits for another task, so that it expands while an
/// upstream child is between two iterations (`Looped`).
#[test]
fn regression_loop_child_holds_its_downstream_child() {
    let specs = (0..4).map(|i| TaskSpec::new(format!("t{i}"))).collect();
    // src(0) -> loop(1) mapped; gate(2) -> inc(3); loop -> inc elementwise.
    let edges = vec![
        EdgeSpec::new(0, 1).mapped(),
        EdgeSpec::new(1, 3).mapped(),
        EdgeSpec::new(2, 3),
    ];
    let mut run = Run::new(Graph::new(specs, edges).unwrap());
    let now = Instant::now();
    let mut lens = Lens::default();
    let src = run.next_ready(now, &mut lens).unwrap();
    assert_eq!(src.task, TaskId(0));
    run.complete(src.run, Outcome::Success, now).unwrap();
    lens.of.insert(src.run.0, (0, None, 2));
    let a = run.next_ready(now, &mut lens).unwrap();
    let b = run.next_ready(now, &mut lens).unwrap();
    let gate = run.next_ready(now, &mut lens).unwrap();
    assert_eq!(
        (a.task, b.task, gate.task),
        (TaskId(1), TaskId(1), TaskId(2))
    );
    run.complete(a.run, Outcome::Loop(None), now).unwrap();
    run.complete(b.run, Outcome::Success, now).unwrap();
    // The gate lets `inc` expand while child a is Looped.
    run.complete(gate.run, Outcome::Success, now).unwrap();
    let mut a_done = false;
    while let Some(r) = run.next_ready(now, &mut lens) {
        if r.task == TaskId(3) && r.map_index == Some(0) {
            assert!(a_done, "inc[0] started while loop[0] was still looping");
        }
        if r.run == a.run {
            a_done = true;
        }
        run.complete(r.run, Outcome::Success, now).unwrap();
    }
    assert!(run.is_done());
    let (base, n) = run.children(TaskId(3)).unwrap();
    assert_eq!(n, 2);
    for i in 0..n {
        assert_eq!(run.state(RunId(base.0 + i)).unwrap(), StateKind::Success);
    }
}
