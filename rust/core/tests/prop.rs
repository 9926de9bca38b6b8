//! Property tests: the real [`Run`] against a small reference interpreter.
//!
//! * `dag_matches_reference`: random DAGs (edges only from lower to higher index,
//!   duplicates allowed) with random built-in triggers, `skip_on_upstream_skip`,
//!   retries and scripted outcomes. Every task must end in the state and with the
//!   run count the reference predicts, every run must reach a finished state exactly
//!   once (journal), the run must end, and the flow outcome over the terminal tasks
//!   must agree with the reference.
//! * `map_chain_matches_reference`: a source of random length feeding 1–3 chained
//!   mapped stages and a final reduce. Every child must end as the reference
//!   predicts, and child `i` of stage `s + 1` must never start before child `i` of
//!   stage `s` has finished.
mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Lens, drive, task_spec};
use ferroflow_core::{
    Cause, EdgeSpec, FlowOutcome, Graph, Outcome, Run, RunId, StateKind, TaskId, TaskSpec,
    Transition, Trigger,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Triggers, with bounds kept exact for the reference.

/// A `some_*` bound: an absolute count (`>= 1`) or a percentage of the upstream
/// count (`< 100 %`). The core gets it as an `f64`; the reference uses integers.
#[derive(Copy, Clone, Debug)]
enum Bound {
    /// At least/at most this many upstream states (>= 1).
    Count(u32),
    /// This many percent (0..100) of the upstream states.
    Percent(u32),
}

impl Bound {
    fn to_f64(self) -> f64 {
        match self {
            Bound::Count(k) => f64::from(k),
            Bound::Percent(p) => f64::from(p) / 100.0,
        }
    }
    /// `count < bound` over `total` upstream states, in exact arithmetic.
    fn too_few(self, count: u32, total: u32) -> bool {
        match self {
            Bound::Count(k) => count < k,
            Bound::Percent(p) => u64::from(count) * 100 < u64::from(p) * u64::from(total),
        }
    }
    /// `count > bound` over `total` upstream states, in exact arithmetic.
    fn too_many(self, count: u32, total: u32) -> bool {
        match self {
            Bound::Count(k) => count > k,
            Bound::Percent(p) => u64::from(count) * 100 > u64::from(p) * u64::from(total),
        }
    }
}

#[derive(Copy, Clone, Debug)]
enum Trig {
    AllSuccessful,
    AllFailed,
    AnySuccessful,
    AnyFailed,
    AllFinished,
    NotAllSkipped,
    SomeSuccessful(Option<Bound>, Option<Bound>),
    SomeFailed(Option<Bound>, Option<Bound>),
}

impl Trig {
    fn to_core(self) -> Trigger {
        let f = |b: Option<Bound>| b.map(Bound::to_f64);
        match self {
            Trig::AllSuccessful => Trigger::AllSuccessful,
            Trig::AllFailed => Trigger::AllFailed,
            Trig::AnySuccessful => Trigger::AnySuccessful,
            Trig::AnyFailed => Trigger::AnyFailed,
            Trig::AllFinished => Trigger::AllFinished,
            Trig::NotAllSkipped => Trigger::NotAllSkipped,
            Trig::SomeSuccessful(lo, hi) => Trigger::SomeSuccessful {
                at_least: f(lo),
                at_most: f(hi),
            },
            Trig::SomeFailed(lo, hi) => Trigger::SomeFailed {
                at_least: f(lo),
                at_most: f(hi),
            },
        }
    }

    /// What the trigger decides over a run's upstream states, following the
    /// documented semantics of the built-ins (`python/ferroflow/triggers.py`, which
    /// says the Rust fast path implements the same).
    fn decide(self, upstream: &[StateKind]) -> Decision {
        let total = upstream.len() as u32;
        if total == 0 {
            return Decision::Run;
        }
        let successful = upstream.iter().filter(|s| ref_successful(**s)).count() as u32;
        let failed = upstream.iter().filter(|s| ref_failed(**s)).count() as u32;
        let skipped = upstream
            .iter()
            .filter(|s| **s == StateKind::Skipped)
            .count() as u32;
        let within = |count: u32, lo: Option<Bound>, hi: Option<Bound>| {
            !lo.is_some_and(|b| b.too_few(count, total))
                && !hi.is_some_and(|b| b.too_many(count, total))
        };
        let ok = match self {
            Trig::AllSuccessful => successful == total,
            Trig::AllFailed => failed == total,
            Trig::AnySuccessful => successful > 0,
            Trig::AnyFailed => failed > 0,
            Trig::AllFinished => true,
            // All skipped: SKIP (the task is skipped too); otherwise as all_successful.
            Trig::NotAllSkipped if skipped == total => return Decision::Skip,
            Trig::NotAllSkipped => successful == total,
            Trig::SomeSuccessful(lo, hi) => within(successful, lo, hi),
            Trig::SomeFailed(lo, hi) => within(failed, lo, hi),
        };
        if ok { Decision::Run } else { Decision::Fail }
    }
}

/// A trigger's verdict in the reference.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Decision {
    Run,
    /// TRIGGERFAIL: the run ends TriggerFailed.
    Fail,
    /// SKIP: the run ends Skipped.
    Skip,
}

/// `(state, run_count)` of a run whose upstream decided it does not execute.
fn not_executed(d: Decision) -> Option<(StateKind, u32)> {
    match d {
        Decision::Run => None,
        Decision::Fail => Some((StateKind::TriggerFailed, 0)),
        Decision::Skip => Some((StateKind::Skipped, 0)),
    }
}

/// Successful for triggers: Success, Cached, Mapped, Skipped.
fn ref_successful(s: StateKind) -> bool {
    matches!(
        s,
        StateKind::Success | StateKind::Cached | StateKind::Mapped | StateKind::Skipped
    )
}

/// Failed for triggers: Failed, TimedOut, TriggerFailed.
fn ref_failed(s: StateKind) -> bool {
    matches!(
        s,
        StateKind::Failed | StateKind::TimedOut | StateKind::TriggerFailed
    )
}

fn bound() -> impl Strategy<Value = Bound> {
    prop_oneof![
        (1u32..=6).prop_map(Bound::Count),
        // Round percentages, where float rounding of `v * total` would show.
        prop::sample::select(vec![0u32, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90])
            .prop_map(Bound::Percent),
        (0u32..100).prop_map(Bound::Percent),
    ]
}

fn trig() -> impl Strategy<Value = Trig> {
    let bounds = || (prop::option::of(bound()), prop::option::of(bound()));
    prop_oneof![
        1 => Just(Trig::AllSuccessful),
        1 => Just(Trig::AllFailed),
        1 => Just(Trig::AnySuccessful),
        1 => Just(Trig::AnyFailed),
        1 => Just(Trig::AllFinished),
        1 => Just(Trig::NotAllSkipped),
        1 => bounds().prop_map(|(lo, hi)| Trig::SomeSuccessful(lo, hi)),
        1 => bounds().prop_map(|(lo, hi)| Trig::SomeFailed(lo, hi)),
    ]
}

// ---------------------------------------------------------------------------
// Scripts: what a run does each time it executes.

#[derive(Copy, Clone, Debug)]
enum Script {
    Success,
    /// The SKIP signal.
    Skip,
    /// Fail on every attempt (as a timeout when `timeout`; timeouts are always
    /// retryable).
    Fail {
        retryable: bool,
        timeout: bool,
    },
    /// Fail (retryably) on the first `k` attempts, then succeed.
    FailThenSucceed(u32),
}

impl Script {
    /// The outcome of attempt `run_count` (1-based).
    fn outcome(self, run_count: u32) -> Outcome {
        match self {
            Script::Success => Outcome::Success,
            Script::Skip => Outcome::Skipped(Some("SKIP".into())),
            Script::Fail {
                retryable,
                timeout: false,
            } => Outcome::Failed {
                message: Some("boom".into()),
                cause: Cause::Raised { matched: retryable },
            },
            Script::Fail { timeout: true, .. } => Outcome::TimedOut {
                message: Some("too slow".into()),
            },
            Script::FailThenSucceed(k) if run_count <= k => Outcome::Failed {
                message: Some("flaky".into()),
                cause: Cause::Raised { matched: true },
            },
            Script::FailThenSucceed(_) => Outcome::Success,
        }
    }

    /// Final state and run count of a run that is allowed to execute.
    fn result(self, max_retries: u32) -> (StateKind, u32) {
        match self {
            Script::Success => (StateKind::Success, 1),
            Script::Skip => (StateKind::Skipped, 1),
            Script::Fail { retryable, timeout } => (
                if timeout {
                    StateKind::TimedOut
                } else {
                    StateKind::Failed
                },
                // A timeout is retried like any retryable failure.
                if retryable || timeout {
                    max_retries + 1
                } else {
                    1
                },
            ),
            Script::FailThenSucceed(k) if k <= max_retries => (StateKind::Success, k + 1),
            Script::FailThenSucceed(_) => (StateKind::Failed, max_retries + 1),
        }
    }
}

fn script() -> impl Strategy<Value = Script> {
    prop_oneof![
        3 => Just(Script::Success),
        1 => Just(Script::Skip),
        2 => (any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(retryable, timeout)| Script::Fail { retryable, timeout }),
        1 => (1u32..4).prop_map(Script::FailThenSucceed),
    ]
}

// ---------------------------------------------------------------------------
// Journal checks shared by both properties.

/// Every run in the journal reaches a finished state exactly once, never changes
/// after that, and the last journalled state is the run's current state. Every run
/// in the table appears in the journal.
fn check_journal(run: &Run, journal: &[Transition]) -> Result<(), TestCaseError> {
    let mut finished: HashMap<u32, StateKind> = HashMap::new();
    let mut last: HashMap<u32, StateKind> = HashMap::new();
    for (i, &(r, s, _)) in journal.iter().enumerate() {
        if let Some(f) = finished.get(&r.0) {
            return Err(TestCaseError::fail(format!(
                "run {} transitioned to {s:?} (journal entry {i}) after finishing as {f:?}",
                r.0
            )));
        }
        if s.is_final() {
            finished.insert(r.0, s);
        }
        last.insert(r.0, s);
    }
    for r in 0..run.n_runs() as u32 {
        let now = run.state(RunId(r)).expect("state");
        prop_assert_eq!(
            finished.get(&r),
            Some(&now),
            "run {} must finish exactly once, as its final state",
            r
        );
        prop_assert_eq!(last.get(&r), Some(&now));
    }
    prop_assert_eq!(finished.len(), run.n_runs(), "journal names unknown runs");
    Ok(())
}

/// The upstream runs of `r` (as its trigger sees them) that have not finished,
/// with their states: none may be left when `r` is handed out.
fn unfinished_upstream(run: &Run, r: RunId) -> Vec<(RunId, StateKind)> {
    run.upstream_runs(r)
        .into_iter()
        .flat_map(|(_, ups)| ups)
        .map(|u| (u, run.state(u).expect("state")))
        .filter(|(_, s)| !s.is_final())
        .collect()
}

/// The flow outcome over the one reference task `t`, given whether it failed.
fn verdict(t: TaskId, failed: bool) -> FlowOutcome {
    if failed {
        FlowOutcome::Failed(vec![t])
    } else {
        FlowOutcome::Success
    }
}

// ---------------------------------------------------------------------------
// Property 1: random DAGs.

#[derive(Clone, Debug)]
struct TaskCase {
    trigger: Trig,
    skip_on_upstream_skip: bool,
    max_retries: u32,
    retry_delay_ms: u64,
    script: Script,
}

fn task_case() -> impl Strategy<Value = TaskCase> {
    (
        trig(),
        any::<bool>(),
        0u32..3,
        prop_oneof![Just(0u64), 0u64..50],
        script(),
    )
        .prop_map(
            |(trigger, skip_on_upstream_skip, max_retries, retry_delay_ms, script)| TaskCase {
                trigger,
                skip_on_upstream_skip,
                max_retries,
                retry_delay_ms,
                script,
            },
        )
}

#[derive(Clone, Debug)]
struct DagCase {
    tasks: Vec<TaskCase>,
    /// `(upstream, downstream)` with `upstream < downstream`; duplicates allowed.
    edges: Vec<(u32, u32)>,
}

fn dag_case() -> impl Strategy<Value = DagCase> {
    (1usize..=25)
        .prop_flat_map(|n| {
            let pairs = prop::collection::vec((0..n as u32, 0..n as u32), 0..=3 * n);
            (prop::collection::vec(task_case(), n), pairs)
        })
        .prop_map(|(tasks, pairs)| DagCase {
            tasks,
            edges: pairs
                .into_iter()
                .filter(|(a, b)| a != b)
                .map(|(a, b)| (a.min(b), a.max(b)))
                .collect(),
        })
}

/// The reference interpreter: `(state, run_count)` of every task, in index order.
fn dag_reference(case: &DagCase) -> Vec<(StateKind, u32)> {
    let mut out: Vec<(StateKind, u32)> = Vec::with_capacity(case.tasks.len());
    for (t, spec) in case.tasks.iter().enumerate() {
        let upstream: Vec<StateKind> = case
            .edges
            .iter()
            .filter(|e| e.1 as usize == t)
            .map(|e| out[e.0 as usize].0)
            .collect();
        let res = if spec.skip_on_upstream_skip && upstream.contains(&StateKind::Skipped) {
            (StateKind::Skipped, 0)
        } else {
            not_executed(spec.trigger.decide(&upstream))
                .unwrap_or_else(|| spec.script.result(spec.max_retries))
        };
        out.push(res);
    }
    out
}

fn check_dag(case: &DagCase) -> Result<(), TestCaseError> {
    let n = case.tasks.len();
    let specs: Vec<TaskSpec> = case
        .tasks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            task_spec(
                i,
                c.trigger.to_core(),
                c.skip_on_upstream_skip,
                c.max_retries,
                c.retry_delay_ms,
            )
        })
        .collect();
    let edges: Vec<EdgeSpec> = case
        .edges
        .iter()
        .map(|&(a, b)| EdgeSpec::new(a, b))
        .collect();
    let graph = Graph::new(specs, edges).expect("a valid DAG");
    let mut run = Run::new(graph);
    run.enable_journal();

    let mut violations: Vec<String> = Vec::new();
    let mut attempts = vec![0u32; n];
    drive(&mut run, &mut Lens::default(), |run, ready| {
        let t = ready.task.idx();
        attempts[t] += 1;
        if ready.run != RunId(ready.task.0) || ready.map_index.is_some() {
            violations.push(format!("task {t} handed out as {ready:?}"));
        }
        if ready.run_count != attempts[t] {
            violations.push(format!(
                "task {t}: attempt {} handed out with run_count {}",
                attempts[t], ready.run_count
            ));
        }
        for (u, s) in unfinished_upstream(run, ready.run) {
            violations.push(format!("task {t} started while upstream {} is {s:?}", u.0));
        }
        case.tasks[t].script.outcome(ready.run_count)
    });
    prop_assert!(violations.is_empty(), "{:?}", violations);
    prop_assert!(run.is_done());
    prop_assert_eq!(run.n_runs(), n);

    let expected = dag_reference(case);
    let actual: Vec<(StateKind, u32)> = (0..n as u32)
        .map(|r| (run.state(RunId(r)).expect("state"), run.run_count(RunId(r))))
        .collect();
    for t in 0..n {
        prop_assert_eq!(
            actual[t],
            expected[t],
            "task {} (state, run_count): actual vs reference; all actual {:?}, all expected {:?}",
            t,
            &actual,
            &expected
        );
    }

    let journal = run.drain_journal();
    check_journal(&run, &journal)?;

    let terminal: Vec<TaskId> = (0..n as u32)
        .filter(|&t| !case.edges.iter().any(|e| e.0 == t))
        .map(TaskId)
        .collect();
    let failed: Vec<TaskId> = terminal
        .iter()
        .copied()
        .filter(|t| ref_failed(expected[t.idx()].0))
        .collect();
    let want = if failed.is_empty() {
        FlowOutcome::Success
    } else {
        FlowOutcome::Failed(failed)
    };
    prop_assert_eq!(run.outcome(&terminal), want);
    Ok(())
}

// ---------------------------------------------------------------------------
// Property 2: map chains.

#[derive(Clone, Debug)]
struct StageCase {
    skip_on_upstream_skip: bool,
    max_retries: u32,
    /// One script per child (only the first `len` are used).
    children: Vec<Script>,
}

#[derive(Clone, Debug)]
struct MapCase {
    len: u32,
    stages: Vec<StageCase>,
    reduce_trigger: Trig,
    reduce_skip_on_upstream_skip: bool,
}

fn child_script() -> impl Strategy<Value = Script> {
    prop_oneof![
        6 => Just(Script::Success),
        1 => Just(Script::Skip),
        2 => any::<bool>().prop_map(|retryable| Script::Fail { retryable, timeout: false }),
        1 => (1u32..3).prop_map(Script::FailThenSucceed),
    ]
}

fn map_case() -> impl Strategy<Value = MapCase> {
    (0u32..50).prop_flat_map(|len| {
        let stage = (
            any::<bool>(),
            0u32..2,
            prop::collection::vec(child_script(), len as usize),
        )
            .prop_map(|(skip_on_upstream_skip, max_retries, children)| StageCase {
                skip_on_upstream_skip,
                max_retries,
                children,
            });
        (prop::collection::vec(stage, 1..=3), trig(), any::<bool>()).prop_map(
            move |(stages, reduce_trigger, reduce_skip)| MapCase {
                len,
                stages,
                reduce_trigger,
                reduce_skip_on_upstream_skip: reduce_skip,
            },
        )
    })
}

/// `(state, run_count)` of one run.
type Fate = (StateKind, u32);

/// Reference: per stage, per child `(state, run_count)`; then the reduce's.
fn map_reference(case: &MapCase) -> (Vec<Vec<Fate>>, Fate) {
    let mut stages: Vec<Vec<Fate>> = Vec::new();
    for st in &case.stages {
        // Stage 1 sees the (successful) source; later stages see child i of the
        // previous stage. Stage tasks use the default `all_successful` trigger.
        let ups: Vec<StateKind> = match stages.last() {
            None => vec![StateKind::Success; case.len as usize],
            Some(prev) => prev.iter().map(|c| c.0).collect(),
        };
        let kids = ups
            .iter()
            .zip(&st.children)
            .map(|(&up, script)| {
                if st.skip_on_upstream_skip && up == StateKind::Skipped {
                    (StateKind::Skipped, 0)
                } else if !ref_successful(up) {
                    (StateKind::TriggerFailed, 0)
                } else {
                    script.result(st.max_retries)
                }
            })
            .collect();
        stages.push(kids);
    }
    let last: Vec<StateKind> = stages
        .last()
        .map(|k| k.iter().map(|c| c.0).collect())
        .unwrap_or_default();
    let reduce = if case.reduce_skip_on_upstream_skip && last.contains(&StateKind::Skipped) {
        (StateKind::Skipped, 0)
    } else {
        not_executed(case.reduce_trigger.decide(&last)).unwrap_or((StateKind::Success, 1))
    };
    (stages, reduce)
}

fn check_map(case: &MapCase) -> Result<(), TestCaseError> {
    let n_stages = case.stages.len();
    let reduce = n_stages as u32 + 1;
    let mut specs = vec![TaskSpec::new("source")];
    for (s, st) in case.stages.iter().enumerate() {
        let mut spec = TaskSpec::new(format!("stage{}", s + 1));
        spec.skip_on_upstream_skip = st.skip_on_upstream_skip;
        spec.max_retries = st.max_retries;
        spec.retry_delay = Duration::from_millis(s as u64 * 3);
        specs.push(spec);
    }
    let mut r = TaskSpec::new("reduce");
    r.trigger = case.reduce_trigger.to_core();
    r.skip_on_upstream_skip = case.reduce_skip_on_upstream_skip;
    specs.push(r);
    let mut edges: Vec<EdgeSpec> = (0..n_stages as u32)
        .map(|s| EdgeSpec::new(s, s + 1).mapped())
        .collect();
    edges.push(EdgeSpec::new(n_stages as u32, reduce));
    let graph = Graph::new(specs, edges).expect("a valid chain");
    let mut run = Run::new(graph);
    run.enable_journal();
    let mut lens = Lens::with_lens([(0, case.len)]);

    let mut violations: Vec<String> = Vec::new();
    let order = drive(&mut run, &mut lens, |run, ready| {
        let t = ready.task.0;
        if t == 0 || t == reduce {
            if ready.map_index.is_some() {
                violations.push(format!("unmapped task handed out as {ready:?}"));
            }
            return Outcome::Success;
        }
        let Some(i) = ready.map_index else {
            violations.push(format!("mapped parent handed out: {ready:?}"));
            return Outcome::Success;
        };
        // Child i of stage s waits for child i of stage s - 1 to finish.
        for (u, s) in unfinished_upstream(run, ready.run) {
            violations.push(format!(
                "child {i} of stage {t} started while upstream run {} is {s:?}",
                u.0
            ));
        }
        case.stages[t as usize - 1].children[i as usize].outcome(ready.run_count)
    });
    prop_assert!(violations.is_empty(), "{:?}", violations);
    prop_assert!(run.is_done());

    let (want_stages, want_reduce) = map_reference(case);
    prop_assert_eq!(run.state(RunId(0)).expect("state"), StateKind::Success);
    let mut bases = Vec::new();
    for (s, want_kids) in want_stages.iter().enumerate() {
        let task = TaskId(s as u32 + 1);
        prop_assert_eq!(run.state(RunId(task.0)).expect("state"), StateKind::Mapped);
        let (base, n) = run.children(task).expect("stage expanded");
        prop_assert_eq!(n, case.len, "stage {} has the source's length", s + 1);
        bases.push(base.0);
        for i in 0..case.len {
            let r = RunId(base.0 + i);
            prop_assert_eq!(run.task_of(r).expect("task"), task);
            prop_assert_eq!(run.map_index(r), Some(i));
            let got = (run.state(r).expect("state"), run.run_count(r));
            prop_assert_eq!(
                got,
                want_kids[i as usize],
                "child {} of stage {}: actual vs reference",
                i,
                s + 1
            );
        }
    }
    let got_reduce = (
        run.state(RunId(reduce)).expect("state"),
        run.run_count(RunId(reduce)),
    );
    prop_assert_eq!(got_reduce, want_reduce, "reduce: actual vs reference");
    prop_assert_eq!(run.n_runs(), n_stages + 2 + n_stages * case.len as usize);

    // Order: every execution of child i of stage s + 1 comes after the last
    // execution of child i of stage s.
    let pos_first = |r: u32| order.iter().position(|x| x.0 == r);
    let pos_last = |r: u32| order.iter().rposition(|x| x.0 == r);
    for s in 1..n_stages {
        for i in 0..case.len {
            let (up, down) = (bases[s - 1] + i, bases[s] + i);
            if let (Some(first_down), Some(last_up)) = (pos_first(down), pos_last(up)) {
                prop_assert!(
                    first_down > last_up,
                    "child {} of stage {} ran before child {} of stage {} finished",
                    i,
                    s + 1,
                    i,
                    s
                );
            }
        }
    }

    let journal = run.drain_journal();
    check_journal(&run, &journal)?;

    let last = TaskId(n_stages as u32);
    let last_failed = want_stages[n_stages - 1].iter().any(|c| ref_failed(c.0));
    prop_assert_eq!(run.outcome(&[last]), verdict(last, last_failed));
    let reduce = TaskId(reduce);
    prop_assert_eq!(
        run.outcome(&[reduce]),
        verdict(reduce, ref_failed(want_reduce.0))
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Do not write regression files next to the tests.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn dag_matches_reference(case in dag_case()) {
        check_dag(&case)?;
    }

    #[test]
    fn map_chain_matches_reference(case in map_case()) {
        check_map(&case)?;
    }
}

// ---------------------------------------------------------------------------
// Regression cases: minimal cases the properties above once found in the core.

/// Tasks `0..n` with the given scripts, plus `edges`; `last` configures the last task.
fn run_small(scripts: &[Script], edges: Vec<EdgeSpec>, last: impl FnOnce(&mut TaskSpec)) -> Run {
    let mut specs: Vec<TaskSpec> = (0..scripts.len())
        .map(|i| TaskSpec::new(format!("t{i}")))
        .collect();
    if let Some(t) = specs.last_mut() {
        last(t);
    }
    let mut run = Run::new(Graph::new(specs, edges).expect("a valid DAG"));
    drive(&mut run, &mut Lens::default(), |_, r| {
        scripts[r.task.idx()].outcome(r.run_count)
    });
    run
}

#[test]
fn regression_not_all_skipped_all_skipped_is_skipped() {
    // t0 raises SKIP; t1 (not_all_skipped, skip_on_upstream_skip = false) must be
    // skipped too (triggers.not_all_skipped raises SKIP).
    let run = run_small(
        &[Script::Skip, Script::Success],
        vec![EdgeSpec::new(0, 1)],
        |t| {
            t.trigger = Trigger::NotAllSkipped;
            t.skip_on_upstream_skip = false;
        },
    );
    assert_eq!(common::state(&run, 1), StateKind::Skipped);
}

#[test]
fn regression_not_all_skipped_failed_upstream_trigger_fails() {
    // t0 fails; t1 (not_all_skipped) must not run (triggers.not_all_skipped raises
    // TRIGGERFAIL when some upstream did not succeed).
    let fail = Script::Fail {
        retryable: false,
        timeout: false,
    };
    let run = run_small(&[fail, Script::Success], vec![EdgeSpec::new(0, 1)], |t| {
        t.trigger = Trigger::NotAllSkipped;
    });
    assert_eq!(common::state(&run, 1), StateKind::TriggerFailed);
    assert_eq!(run.run_count(RunId(1)), 0);
}

#[test]
fn regression_proportion_bound_rounding() {
    // 25 upstreams, 7 succeed: 7 is exactly 28 % of 25, so at_least = 0.28 holds
    // (Python: ceil(25 * 0.28 - 1e-9) = 7 <= 7). The core computes 0.28 * 25 =
    // 7.000000000000001 and fails the trigger.
    let fail = Script::Fail {
        retryable: false,
        timeout: false,
    };
    let mut scripts: Vec<Script> = (0..25)
        .map(|i| if i < 7 { Script::Success } else { fail })
        .collect();
    scripts.push(Script::Success);
    let edges = (0..25).map(|i| EdgeSpec::new(i, 25)).collect();
    let run = run_small(&scripts, edges, |t| {
        t.trigger = Trigger::SomeSuccessful {
            at_least: Some(0.28),
            at_most: None,
        };
    });
    assert_eq!(common::state(&run, 25), StateKind::Success);
}
