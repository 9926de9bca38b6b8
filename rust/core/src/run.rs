//! One run of a flow: the run table, dependency counting, triggers, skips, retry
//! timers, map expansion and depth-first ordering.
//!
//! # The algorithm
//! Runs `0..n_tasks` are the tasks' own runs. Every task counts the inputs it still
//! waits for in two counters: `pending_whole` (edges that need the whole upstream
//! finished) and `pending_expand` (*elementwise* edges — mapped edges from a mapped
//! task — that only need the upstream's children to exist). When both reach zero
//! the task's run is pushed on the ready stack.
//!
//! A mapped task's own run never executes: when it is popped the core checks its
//! inputs, asks the [`Host`] for the lengths of the mapped inputs, and *expands*
//! it into children appended to the run table (parent state `Mapped`). Child `i`
//! of a task fed by an elementwise edge waits only for child `i` of its upstream
//! (a per-run `pending` counter), so a map chain runs branch by branch.
//!
//! The ready stack is LIFO: whatever a completion makes ready runs next, which
//! gives depth-first order (child `i` of stage 2 runs right after child `i` of
//! stage 1). A freshly expanded map pushes its ready children as one compact range
//! item, popped in index order, so a million children cost one stack entry. When a
//! run is popped its upstream states are counted, `skip_on_upstream_skip` and the
//! built-in trigger are applied, and only then is it handed to the host as
//! [`Ready`]. Retries wait on a timer heap of their own; nothing else waits for
//! them. The run is over when the stack, the timers and the in-flight set are all
//! empty.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use crate::error::CoreError;
use crate::graph::Graph;
use crate::ids::{EdgeId, RunId, TaskId};
use crate::state::StateKind;
use crate::trigger::{Trigger, TriggerDecision, UpstreamCounts};

/// Questions the core asks the host about results it does not hold.
pub trait Host {
    /// `len(result)` of a finished run, or why it cannot be mapped over.
    fn len_of(&mut self, run: RunId) -> Result<u32, String>;
    /// `len(result[item])` of a finished run (for flattening), or why not.
    fn len_of_item(&mut self, run: RunId, item: u32) -> Result<u32, String>;
}

/// Why a run failed, as far as retries care. The host says what happened; the
/// core alone decides whether that failure is retried ([`Cause::retryable`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The task raised an error; `matched` says whether it matches the task's
    /// `retry_on` (with no `retry_on`: whether it is an ordinary `Exception`,
    /// not a `BaseException` such as `SystemExit`).
    Raised {
        /// The error matches `retry_on`.
        matched: bool,
    },
    /// The task raised the FAIL signal (retries apply, whatever `retry_on` says).
    FailSignal,
    /// The worker executing it died (retries apply; `retry_on` does not filter a death).
    WorkerLost,
    /// ferroflow could not run or keep it (inputs not assembled, value not
    /// written, a hook misbehaved, a state handler raised): retrying cannot help.
    Internal,
}

impl Cause {
    /// Whether a failure with this cause may be retried (while retries are left).
    pub fn retryable(self) -> bool {
        match self {
            Cause::Raised { matched } => matched,
            Cause::FailSignal | Cause::WorkerLost => true,
            Cause::Internal => false,
        }
    }
}

/// What the host reports when a run it executed ends.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// It succeeded.
    Success,
    /// Its result came from the cache.
    Cached,
    /// It raised SKIP (with this message).
    Skipped(Option<String>),
    /// It failed: retried while retries are left, if its cause is retryable.
    Failed {
        /// The error, as the state's message.
        message: Option<String>,
        /// What failed (see [`Cause::retryable`]).
        cause: Cause,
    },
    /// It ran past its timeout: retried like a failure, while retries are left.
    TimedOut {
        /// The state's message.
        message: Option<String>,
    },
    /// Its custom trigger (evaluated by the host) said no.
    TriggerFailed(Option<String>),
    /// The RETRY signal: retry after `retry_delay` even past `max_retries`.
    Retry(Option<String>),
    /// The LOOP signal: run again at once with the loop count + 1.
    Loop(Option<String>),
    /// The PAUSE signal: the run waits for approval ([`Run::approve`]).
    Paused(Option<String>),
    /// It was cancelled.
    Cancelled(Option<String>),
    /// The user interrupted it (Ctrl-C): it is Cancelled, and a driver stops the
    /// whole flow run ([`crate::driver::Driver`]).
    Interrupted(Option<String>),
    /// Finished in an earlier flow run and restored from its checkpoint.
    Restored(Option<String>),
}

impl Outcome {
    /// Whether [`Run::complete`] retries a run that ends with this outcome
    /// while it has `retries_left`: the one retry rule. RETRY always retries;
    /// a timeout, and a failure whose cause is retryable, while retries are left.
    pub fn is_retried(&self, retries_left: bool) -> bool {
        match self {
            Outcome::Retry(_) => true,
            Outcome::TimedOut { .. } => retries_left,
            Outcome::Failed { cause, .. } => retries_left && cause.retryable(),
            _ => false,
        }
    }

    /// A failure with this message and cause.
    pub fn failed(message: impl Into<String>, cause: Cause) -> Outcome {
        Outcome::Failed {
            message: Some(message.into()),
            cause,
        }
    }
}

/// A run the host should execute now.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The run to execute.
    pub run: RunId,
    /// Its task.
    pub task: TaskId,
    /// Its index among a map's children (`None` for a task's own run).
    pub map_index: Option<u32>,
    /// 1 on the first attempt.
    pub run_count: u32,
    /// 0 until the task raises LOOP.
    pub loop_count: u32,
    /// The task has a custom trigger the host must evaluate before running it.
    pub custom_trigger: bool,
    /// For an observed task ([`crate::graph::TaskSpec::observed`]): the state the
    /// core decided without executing it (Skipped, TriggerFailed or Paused, with
    /// [`Run::message`]). The host shows it to the task's handlers and reports
    /// what they make of it; the run is not executed and not counted as an attempt.
    pub decided: Option<StateKind>,
    /// The run was approved after a pause (PAUSE or `manual_only`): this
    /// attempt is its resumption (`context.resume` in Python).
    pub resumed: bool,
}

/// Where one input value of a run comes from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `result[run]`
    Run(RunId),
    /// `result[run][item]`
    Item(RunId, u32),
    /// `result[run][outer][inner]`
    Nested(RunId, u32, u32),
    /// `[result[base + i] for i in 0..len]` (a reduce over mapped children).
    Children(RunId, u32),
}

/// Where element `j` of a flattened mapped input comes from.
pub type FlatSource = Source;

/// The flow's final verdict from its reference tasks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowOutcome {
    /// Every reference task (and child) finished without failing.
    Success,
    /// Reference tasks that failed (or have a failed child).
    Failed(Vec<TaskId>),
    /// The run, or a reference task, was cancelled.
    Cancelled,
    /// Reference tasks that did not finish (paused, or waiting on a paused task).
    Unfinished(Vec<TaskId>),
}

/// One journalled state transition: which run, into which state, and when
/// (the instant the host gave with the call that made it).
pub type Transition = (RunId, StateKind, Instant);

#[derive(Copy, Clone, Debug)]
enum Item {
    One(RunId),
    Range { next: u32, end: u32 },
}

#[derive(Clone, Debug, Default)]
struct TaskRec {
    pending_whole: u32,
    pending_expand: u32,
    /// `(first child run, number of children)` once expanded.
    children: Option<(u32, u32)>,
    unfinished: u32,
    whole_done: bool,
}

impl TaskRec {
    /// Waits for no input: the task's own run may be pushed ready.
    fn unblocked(&self) -> bool {
        self.pending_whole == 0 && self.pending_expand == 0
    }
}

/// How many states there are (the length of [`Run::state_counts`]).
const N_STATES: usize = StateKind::ALL.len();

/// The state of one flow run.
pub struct Run {
    graph: Graph,
    // Per run (struct of arrays).
    task_of: Vec<TaskId>,
    state: Vec<StateKind>,
    pending: Vec<u32>,
    run_count: Vec<u16>,
    // Sparse per-run data.
    loop_count: HashMap<u32, u32>,
    messages: HashMap<u32, String>,
    // Per task.
    tasks: Vec<TaskRec>,
    // Prefix sums of element counts for flattened mapped edges.
    flat: HashMap<u32, Vec<u32>>,
    stack: Vec<Item>,
    timers: BinaryHeap<Reverse<(Instant, u32)>>,
    journal: Option<Vec<Transition>>,
    /// The instant of the call being handled ([`Run::next_ready`],
    /// [`Run::complete`]): the time of the transitions it makes.
    clock: Instant,
    cancelled: bool,
    release: Option<Release>,
    /// How many runs are in each state, by state code. The runs in flight
    /// (handed out, not completed) are exactly the `Running` ones.
    counts: [u32; N_STATES],
}

/// Bookkeeping for releasing results nothing downstream still needs.
struct Release {
    /// Per task: never release (reference or terminal tasks).
    keep: Vec<bool>,
    /// Per task: every out-edge is elementwise (and there are at most 255 of
    /// them), so child `i` can go as soon as the downstream children `i` have
    /// finished.
    per_child: Vec<bool>,
    /// Per per-child task, once expanded: consumers left for each child.
    remaining: HashMap<u32, Vec<u8>>,
    /// Per task (whole scheme): out-edges whose downstream task has not finished.
    whole_left: Vec<u32>,
    /// Runs whose results may be dropped, for the host to drain.
    out: Vec<RunId>,
}

impl Run {
    /// Start a run of a validated graph: every task Pending, roots ready.
    pub fn new(graph: Graph) -> Run {
        let n = graph.n_tasks();
        let mut tasks = vec![TaskRec::default(); n];
        for (t, rec) in tasks.iter_mut().enumerate() {
            for &e in graph.ins(TaskId(t as u32)) {
                if graph.is_elementwise(e) {
                    rec.pending_expand += 1;
                } else {
                    rec.pending_whole += 1;
                }
            }
        }
        let mut stack = Vec::new();
        for t in (0..n).rev() {
            if tasks[t].unblocked() {
                stack.push(Item::One(RunId(t as u32)));
            }
        }
        Run {
            task_of: (0..n as u32).map(TaskId).collect(),
            state: vec![StateKind::Pending; n],
            counts: {
                let mut c = [0u32; N_STATES];
                c[StateKind::Pending as usize] = n as u32;
                c
            },
            pending: vec![0; n],
            run_count: vec![0; n],
            loop_count: HashMap::new(),
            messages: HashMap::new(),
            tasks,
            flat: HashMap::new(),
            stack,
            timers: BinaryHeap::new(),
            journal: None,
            clock: Instant::now(),
            cancelled: false,
            release: None,
            graph,
        }
    }

    /// Record every state transition for [`Run::drain_journal`].
    pub fn enable_journal(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    /// Release results early: after this, [`Run::drain_released`] lists runs whose
    /// results no downstream run can still read. Results of `keep` tasks and of
    /// tasks without downstream tasks are never released.
    pub fn enable_release(&mut self, keep: &[TaskId]) {
        let n = self.graph.n_tasks();
        let mut keep_v = vec![false; n];
        let mut per_child = vec![false; n];
        let mut whole_left = vec![0u32; n];
        for t in 0..n {
            let tid = TaskId(t as u32);
            let outs = self.graph.outs(tid);
            keep_v[t] = outs.is_empty();
            // The per-child count is a byte per child: a task read by more
            // consumers than that is released the whole way instead.
            per_child[t] = !outs.is_empty()
                && outs.len() <= usize::from(u8::MAX)
                && outs.iter().all(|&e| self.graph.is_elementwise(e));
            whole_left[t] = outs.len() as u32;
        }
        for k in keep {
            if let Some(v) = keep_v.get_mut(k.idx()) {
                *v = true;
            }
        }
        self.release = Some(Release {
            keep: keep_v,
            per_child,
            remaining: HashMap::new(),
            whole_left,
            out: Vec::new(),
        });
    }

    /// Take the runs whose results were released since the last call.
    pub fn drain_released(&mut self) -> Vec<RunId> {
        self.release
            .as_mut()
            .map(|r| std::mem::take(&mut r.out))
            .unwrap_or_default()
    }

    /// A downstream child `i` of `d` finished: its elementwise inputs may go.
    fn release_child_inputs(&mut self, d: TaskId, i: u32) {
        let Some(rel) = self.release.as_mut() else {
            return;
        };
        for &e in self.graph.ins(d) {
            if !self.graph.is_elementwise(e) {
                continue;
            }
            let u = self.graph.edge(e).upstream;
            if !rel.per_child[u.idx()] || rel.keep[u.idx()] {
                continue;
            }
            if let (Some(rem), Some((ub, _))) =
                (rel.remaining.get_mut(&u.0), self.tasks[u.idx()].children)
                && let Some(c) = rem.get_mut(i as usize)
                && *c > 0
            {
                *c -= 1;
                if *c == 0 {
                    rel.out.push(RunId(ub + i));
                }
            }
        }
    }

    /// Task `d` finished as a whole: inputs it never consumed child by child, and
    /// whole inputs whose last consumer this was, may go.
    fn release_task_inputs(&mut self, d: TaskId) {
        let Some(rel) = self.release.as_mut() else {
            return;
        };
        let d_children = self.tasks[d.idx()].children.map_or(0, |(_, n)| n);
        for &e in self.graph.ins(d) {
            let u = self.graph.edge(e).upstream;
            if rel.keep[u.idx()] {
                continue;
            }
            let urec = &self.tasks[u.idx()];
            if rel.per_child[u.idx()] {
                if !self.graph.is_elementwise(e) {
                    continue;
                }
                if let (Some(rem), Some((ub, un))) = (rel.remaining.get_mut(&u.0), urec.children) {
                    for i in d_children.min(un)..un {
                        let c = &mut rem[i as usize];
                        if *c > 0 {
                            *c -= 1;
                            if *c == 0 {
                                rel.out.push(RunId(ub + i));
                            }
                        }
                    }
                }
                continue;
            }
            let left = &mut rel.whole_left[u.idx()];
            *left = left.saturating_sub(1);
            if *left == 0 {
                rel.out.push(RunId(u.0));
                if let Some((ub, un)) = urec.children {
                    rel.out.extend((ub..ub + un).map(RunId));
                }
            }
        }
    }

    /// Move the transitions recorded since the last call into `out` (cleared
    /// first). Swapping buffers keeps both allocations alive across calls.
    pub fn take_journal(&mut self, out: &mut Vec<Transition>) {
        out.clear();
        if let Some(j) = self.journal.as_mut() {
            std::mem::swap(j, out);
        }
    }

    /// Take the transitions recorded since the last call.
    pub fn drain_journal(&mut self) -> Vec<Transition> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The graph being run.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Number of runs in the table (tasks plus expanded children).
    pub fn n_runs(&self) -> usize {
        self.state.len()
    }

    fn check(&self, run: RunId) -> Result<(), CoreError> {
        if run.idx() < self.state.len() {
            Ok(())
        } else {
            Err(CoreError::UnknownRun(run.0))
        }
    }

    /// State of a run.
    pub fn state(&self, run: RunId) -> Result<StateKind, CoreError> {
        self.check(run)?;
        Ok(self.state[run.idx()])
    }

    /// The task a run belongs to.
    pub fn task_of(&self, run: RunId) -> Result<TaskId, CoreError> {
        self.check(run)?;
        Ok(self.task_of[run.idx()])
    }

    /// The map index of a child run (`None` for a task's own run).
    pub fn map_index(&self, run: RunId) -> Option<u32> {
        if run.idx() < self.graph.n_tasks() {
            return None;
        }
        let t = self.task_of.get(run.idx())?;
        self.tasks[t.idx()].children.map(|(base, _)| run.0 - base)
    }

    /// How many times a run was started (1 on the first attempt).
    pub fn run_count(&self, run: RunId) -> u32 {
        self.run_count.get(run.idx()).map_or(0, |&c| u32::from(c))
    }

    /// How many times a run looped.
    pub fn loop_count(&self, run: RunId) -> u32 {
        self.loop_count.get(&run.0).copied().unwrap_or(0)
    }

    /// The message of a run's current state, if any.
    pub fn message(&self, run: RunId) -> Option<&str> {
        if self.messages.is_empty() {
            return None;
        }
        self.messages.get(&run.0).map(String::as_str)
    }

    /// `(first child run, number of children)` of an expanded mapped task.
    pub fn children(&self, task: TaskId) -> Option<(RunId, u32)> {
        self.tasks
            .get(task.idx())?
            .children
            .map(|(b, n)| (RunId(b), n))
    }

    /// How many runs are in each state, indexed by state code (for progress).
    pub fn state_counts(&self) -> [u32; N_STATES] {
        self.counts
    }

    /// Runs that have been handed out and not completed.
    pub fn in_flight(&self) -> u32 {
        self.counts[StateKind::Running as usize]
    }

    /// True when nothing is ready, waiting on a timer or executing.
    pub fn is_done(&self) -> bool {
        self.stack.is_empty() && self.timers.is_empty() && self.in_flight() == 0
    }

    /// When the earliest retry timer fires, if any.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    fn set(&mut self, run: RunId, kind: StateKind, message: Option<String>) {
        self.set_quiet(run, kind, message);
        if let Some(j) = self.journal.as_mut() {
            j.push((run, kind, self.clock));
        }
    }

    /// [`Run::set`] without a journal entry.
    fn set_quiet(&mut self, run: RunId, kind: StateKind, message: Option<String>) {
        let old = std::mem::replace(&mut self.state[run.idx()], kind);
        self.counts[old as usize] -= 1;
        self.counts[kind as usize] += 1;
        match message {
            Some(m) => {
                self.messages.insert(run.0, m);
            }
            None => {
                if !self.messages.is_empty() {
                    self.messages.remove(&run.0);
                }
            }
        }
    }

    fn push_ready(&mut self, run: RunId) {
        self.stack.push(Item::One(run));
    }

    fn pop(&mut self) -> Option<RunId> {
        match self.stack.last_mut()? {
            Item::One(r) => {
                let r = *r;
                self.stack.pop();
                Some(r)
            }
            Item::Range { next, end } => {
                let r = *next;
                *next += 1;
                if *next >= *end {
                    self.stack.pop();
                }
                Some(RunId(r))
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, r))) = self.timers.pop() {
                self.push_ready(RunId(r));
            }
        }
    }

    /// The next run to execute, or `None` when nothing is ready now (check
    /// [`Run::is_done`] and [`Run::next_wakeup`]). Runs that end without executing
    /// (skipped, trigger failed, paused, mapped parents) are settled on the way.
    pub fn next_ready(&mut self, now: Instant, host: &mut dyn Host) -> Option<Ready> {
        self.clock = now;
        self.fire_timers(now);
        while let Some(run) = self.pop() {
            if let Some(ready) = self.prepare(run, host) {
                return Some(ready);
            }
        }
        None
    }

    fn prepare(&mut self, run: RunId, host: &mut dyn Host) -> Option<Ready> {
        let task = self.task_of[run.idx()];
        let is_parent = run.idx() < self.graph.n_tasks();
        let st = self.state[run.idx()];
        if is_parent && self.graph.is_mapped(task) {
            self.expand(task, host);
            return None;
        }
        let spec = &self.graph.tasks[task.idx()];
        let custom = spec.trigger == Trigger::Custom;
        if st == StateKind::Pending {
            let counts = self.upstream_counts(run);
            let decided = if spec.skip_on_upstream_skip && counts.skipped > 0 {
                Some((StateKind::Skipped, "Upstream task was skipped.".to_string()))
            } else if custom {
                None
            } else {
                match spec.trigger.decide(counts) {
                    TriggerDecision::Run => None,
                    TriggerDecision::Fail(msg) => Some((StateKind::TriggerFailed, msg)),
                    TriggerDecision::Skip(msg) => Some((StateKind::Skipped, msg)),
                    TriggerDecision::Pause => Some((
                        StateKind::Paused,
                        "Trigger was \"manual_only\": waiting for approval.".to_string(),
                    )),
                }
            };
            if let Some((kind, msg)) = decided {
                if spec.observed {
                    // Handed out for its handlers: Running in the table (so it
                    // counts as in flight), not journalled; the host's report
                    // journals the state the handlers settle on.
                    self.set_quiet(run, StateKind::Running, Some(msg));
                    return Some(Ready {
                        run,
                        task,
                        map_index: if is_parent { None } else { self.map_index(run) },
                        run_count: u32::from(self.run_count[run.idx()]),
                        loop_count: self.loop_count(run),
                        custom_trigger: false,
                        decided: Some(kind),
                        resumed: false,
                    });
                }
                if kind == StateKind::Paused {
                    self.set(run, kind, Some(msg));
                } else {
                    self.finish(run, kind, Some(msg));
                }
                return None;
            }
        }
        let looping = st == StateKind::Looped;
        if !looping {
            let c = &mut self.run_count[run.idx()];
            *c = c.saturating_add(1);
        }
        self.set(run, StateKind::Running, None);
        Some(Ready {
            run,
            task,
            map_index: if is_parent { None } else { self.map_index(run) },
            run_count: u32::from(self.run_count[run.idx()]),
            loop_count: self.loop_count(run),
            custom_trigger: custom && st == StateKind::Pending,
            decided: None,
            resumed: st == StateKind::Resume,
        })
    }

    /// The upstream runs whose states a run's trigger sees, per input edge.
    pub fn upstream_runs(&self, run: RunId) -> Vec<(EdgeId, Vec<RunId>)> {
        let Some(&task) = self.task_of.get(run.idx()) else {
            return Vec::new();
        };
        let child = self.map_index(run);
        self.graph
            .ins(task)
            .iter()
            .map(|&e| {
                let mut runs = Vec::new();
                self.for_upstream(e, child, |r| runs.push(r));
                (e, runs)
            })
            .collect()
    }

    /// Whether input edge `e` of `run` reads every child of a mapped upstream
    /// (a reduce): its trigger then sees the children's states as one `Mapped`
    /// state, possibly with no children.
    pub fn reads_children(&self, e: EdgeId, run: RunId) -> bool {
        let spec = self.graph.edge(e);
        let child = self.map_index(run);
        let elementwise = child.is_some() && self.graph.is_elementwise(e);
        !elementwise && !spec.mapped && self.tasks[spec.upstream.idx()].children.is_some()
    }

    fn for_upstream(&self, e: EdgeId, child: Option<u32>, mut f: impl FnMut(RunId)) {
        let spec = self.graph.edge(e);
        let u = spec.upstream;
        let rec = &self.tasks[u.idx()];
        match (child, rec.children) {
            (Some(i), Some((base, _))) if self.graph.is_elementwise(e) => f(RunId(base + i)),
            (_, Some((base, n))) if !spec.mapped => (base..base + n).for_each(|r| f(RunId(r))),
            _ => f(RunId(u.0)),
        }
    }

    fn upstream_counts(&self, run: RunId) -> UpstreamCounts {
        let task = self.task_of[run.idx()];
        let child = self.map_index(run);
        let mut c = UpstreamCounts::default();
        for &e in self.graph.ins(task) {
            self.for_upstream(e, child, |r| {
                let s = self.state[r.idx()];
                c.total += 1;
                c.successful += u32::from(s.is_successful());
                c.failed += u32::from(s.is_failed());
                c.skipped += u32::from(s.is_skipped());
            });
        }
        c
    }

    fn expand(&mut self, task: TaskId, host: &mut dyn Host) {
        let parent = RunId(task.0);
        let spec = &self.graph.tasks[task.idx()];
        let skip = spec.skip_on_upstream_skip;
        let name = spec.name.clone();
        // Parent-level checks: skipped inputs, and inputs to map over that did not succeed.
        let mut skipped = false;
        let mut bad: Option<String> = None;
        for &e in self.graph.ins(task) {
            let es = self.graph.edge(e);
            let us = self.state[es.upstream.idx()];
            skipped |= us.is_skipped();
            if (es.mapped || es.flattened)
                && (!us.is_successful() || us.is_skipped())
                && bad.is_none()
            {
                bad = Some(self.graph.tasks[es.upstream.idx()].name.clone());
            }
        }
        if skip && skipped {
            self.finish(
                parent,
                StateKind::Skipped,
                Some("Upstream task was skipped.".into()),
            );
            return;
        }
        if let Some(up) = bad {
            self.finish(
                parent,
                StateKind::TriggerFailed,
                Some(format!("Upstream task '{up}' of mapped task '{name}' did not succeed: nothing to map over.")),
            );
            return;
        }
        // Lengths of the mapped inputs; the map zips to the shortest.
        let mut n = u32::MAX;
        let ins: Vec<EdgeId> = self.graph.ins(task).to_vec();
        for e in ins {
            let es = *self.graph.edge(e);
            if !es.mapped {
                continue;
            }
            let u = es.upstream;
            let len = if self.graph.is_elementwise(e) {
                Ok(self.tasks[u.idx()].children.map_or(0, |(_, n)| n))
            } else if es.flattened {
                self.flat_prefix(e, host)
                    .map(|p| p.last().copied().unwrap_or(0))
            } else {
                host.len_of(RunId(u.0))
            };
            match len {
                Ok(l) => n = n.min(l),
                Err(why) => {
                    let up = &self.graph.tasks[u.idx()].name;
                    self.finish(
                        parent,
                        StateKind::Failed,
                        Some(format!(
                            "Cannot map '{name}' over the result of '{up}': {why}"
                        )),
                    );
                    return;
                }
            }
        }
        if n == u32::MAX {
            n = 0;
        }
        let base = self.state.len() as u64;
        if base + u64::from(n) >= u64::from(u32::MAX) {
            self.finish(
                parent,
                StateKind::Failed,
                Some(CoreError::TooManyRuns(u64::from(u32::MAX)).to_string()),
            );
            return;
        }
        let base = base as u32;
        let elementwise: Vec<TaskId> = self
            .graph
            .ins(task)
            .iter()
            .filter(|&&e| self.graph.is_elementwise(e))
            .map(|&e| self.graph.edge(e).upstream)
            .collect();
        let total = self.state.len() + n as usize;
        self.task_of.resize(total, task);
        self.state.resize(total, StateKind::Pending);
        self.counts[StateKind::Pending as usize] += n;
        self.run_count.resize(total, 0);
        let mut all_ready = true;
        if elementwise.is_empty() {
            self.pending.resize(total, 0);
        } else {
            self.pending.reserve(n as usize);
            for i in 0..n {
                let mut p = 0;
                for u in &elementwise {
                    if let Some((ub, _)) = self.tasks[u.idx()].children
                        && !self.state[(ub + i) as usize].is_final()
                    {
                        p += 1;
                    }
                }
                all_ready &= p == 0;
                self.pending.push(p);
            }
        }
        // Children start Pending; the journal records the expansion as the
        // parent's `Mapped` transition (see `children`), not one entry per child.
        self.tasks[task.idx()].children = Some((base, n));
        if let Some(rel) = self.release.as_mut()
            && rel.per_child[task.idx()]
            && !rel.keep[task.idx()]
        {
            // per_child guarantees the count fits.
            let consumers = u8::try_from(self.graph.outs(task).len()).unwrap_or(u8::MAX);
            rel.remaining.insert(task.0, vec![consumers; n as usize]);
        }
        self.tasks[task.idx()].unfinished = n;
        self.set(parent, StateKind::Mapped, None);
        // Ready children first, then downstream parents on top of them, so that
        // downstream maps expand before our first child runs (depth-first).
        if all_ready {
            if n > 0 {
                self.stack.push(Item::Range {
                    next: base,
                    end: base + n,
                });
            }
        } else {
            for i in (0..n).rev() {
                if self.pending[(base + i) as usize] == 0 {
                    self.push_ready(RunId(base + i));
                }
            }
        }
        let outs: Vec<EdgeId> = self.graph.outs(task).to_vec();
        for e in outs {
            if self.graph.is_elementwise(e) {
                let d = self.graph.edge(e).downstream;
                self.dec_expand(d);
            }
        }
        if n == 0 {
            self.whole_done(task);
        }
    }

    fn flat_prefix(&mut self, e: EdgeId, host: &mut dyn Host) -> Result<Vec<u32>, String> {
        let u = self.graph.edge(e).upstream;
        let mut prefix = Vec::new();
        let mut acc: u32 = 0;
        let mut add = |l: u32, prefix: &mut Vec<u32>| -> Result<(), String> {
            acc = acc.checked_add(l).ok_or("too many elements to flatten")?;
            prefix.push(acc);
            Ok(())
        };
        if let Some((base, n)) = self.tasks[u.idx()].children {
            for r in base..base + n {
                let s = self.state[r as usize];
                if !s.is_successful() || s.is_skipped() {
                    return Err(format!("child {} did not succeed ({})", r - base, s.name()));
                }
                add(host.len_of(RunId(r))?, &mut prefix)?;
            }
        } else {
            let outer = host.len_of(RunId(u.0))?;
            for k in 0..outer {
                add(host.len_of_item(RunId(u.0), k)?, &mut prefix)?;
            }
        }
        self.flat.insert(e.0, prefix.clone());
        Ok(prefix)
    }

    /// Where input edge `e` of a run gets its value.
    pub fn source(&self, e: EdgeId, run: RunId) -> Source {
        let spec = self.graph.edge(e);
        let u = spec.upstream;
        let child = self.map_index(run);
        let rec = &self.tasks[u.idx()];
        match (spec.mapped, child) {
            (true, Some(i)) => {
                if spec.flattened {
                    let prefix = self.flat.get(&e.0).map_or(&[][..], Vec::as_slice);
                    // First k with prefix[k] > i.
                    let k = prefix.partition_point(|&p| p <= i) as u32;
                    let start = if k == 0 { 0 } else { prefix[(k - 1) as usize] };
                    match rec.children {
                        Some((base, _)) => Source::Item(RunId(base + k), i - start),
                        None => Source::Nested(RunId(u.0), k, i - start),
                    }
                } else {
                    match rec.children {
                        Some((base, _)) => Source::Run(RunId(base + i)),
                        None => Source::Item(RunId(u.0), i),
                    }
                }
            }
            _ => match rec.children {
                Some((base, n)) => Source::Children(RunId(base), n),
                None => Source::Run(RunId(u.0)),
            },
        }
    }

    fn dec_expand(&mut self, d: TaskId) {
        self.tasks[d.idx()].pending_expand -= 1;
        self.push_if_unblocked(d);
    }

    fn dec_whole(&mut self, d: TaskId) {
        self.tasks[d.idx()].pending_whole -= 1;
        self.push_if_unblocked(d);
    }

    fn push_if_unblocked(&mut self, d: TaskId) {
        if self.tasks[d.idx()].unblocked() {
            self.push_ready(RunId(d.0));
        }
    }

    fn finish(&mut self, run: RunId, kind: StateKind, message: Option<String>) {
        self.set(run, kind, message);
        let task = self.task_of[run.idx()];
        if run.idx() < self.graph.n_tasks() {
            self.whole_done(task);
            return;
        }
        let Some((base, _)) = self.tasks[task.idx()].children else {
            return;
        };
        let i = run.0 - base;
        let n_outs = self.graph.outs(task).len();
        for k in 0..n_outs {
            let e = self.graph.outs(task)[k];
            if !self.graph.is_elementwise(e) {
                continue;
            }
            let d = self.graph.edge(e).downstream;
            if let Some((db, dn)) = self.tasks[d.idx()].children
                && i < dn
            {
                let p = &mut self.pending[(db + i) as usize];
                *p -= 1;
                if *p == 0 {
                    self.push_ready(RunId(db + i));
                }
            }
        }
        if self.release.is_some() {
            self.release_child_inputs(task, i);
        }
        let rec = &mut self.tasks[task.idx()];
        rec.unfinished -= 1;
        if rec.unfinished == 0 {
            self.whole_done(task);
        }
    }

    fn whole_done(&mut self, task: TaskId) {
        let expanded = {
            let rec = &mut self.tasks[task.idx()];
            if rec.whole_done {
                return;
            }
            rec.whole_done = true;
            rec.children.is_some()
        };
        if self.release.is_some() {
            self.release_task_inputs(task);
        }
        let n_outs = self.graph.outs(task).len();
        for k in 0..n_outs {
            let e = self.graph.outs(task)[k];
            let d = self.graph.edge(e).downstream;
            if self.graph.is_elementwise(e) {
                if !expanded {
                    self.dec_expand(d);
                }
            } else {
                self.dec_whole(d);
            }
        }
    }

    /// Report how a run handed out by [`Run::next_ready`] ended, at `now`.
    pub fn complete(
        &mut self,
        run: RunId,
        outcome: Outcome,
        now: Instant,
    ) -> Result<(), CoreError> {
        self.check(run)?;
        let st = self.state[run.idx()];
        if st != StateKind::Running {
            return Err(CoreError::NotRunning {
                run: run.0,
                state: st.name(),
            });
        }
        self.clock = now;
        let task = self.task_of[run.idx()];
        let spec = &self.graph.tasks[task.idx()];
        let (max_retries, delay) = (spec.max_retries, spec.retry_delay);
        if outcome.is_retried(self.run_count(run) <= max_retries) {
            let msg = match outcome {
                Outcome::Retry(m) | Outcome::TimedOut { message: m } => m,
                Outcome::Failed { message, .. } => message,
                _ => None,
            };
            self.set(run, StateKind::Retrying, msg);
            // Task options are checked when a task is made, so `now + delay`
            // fits; a delay past what the clock can hold waits "for ever".
            let at = now
                .checked_add(delay)
                .unwrap_or_else(|| now + Duration::from_secs(u32::MAX.into()));
            self.timers.push(Reverse((at, run.0)));
            return Ok(());
        }
        match outcome {
            Outcome::Success => self.finish(run, StateKind::Success, None),
            Outcome::Cached => self.finish(run, StateKind::Cached, None),
            Outcome::Skipped(m) => self.finish(run, StateKind::Skipped, m),
            Outcome::TriggerFailed(m) => self.finish(run, StateKind::TriggerFailed, m),
            Outcome::Cancelled(m) | Outcome::Interrupted(m) => {
                self.finish(run, StateKind::Cancelled, m);
            }
            Outcome::Restored(m) => self.finish(run, StateKind::Success, m),
            Outcome::Failed { message, .. } => self.finish(run, StateKind::Failed, message),
            Outcome::TimedOut { message } => self.finish(run, StateKind::TimedOut, message),
            // Always retried (above).
            Outcome::Retry(_) => {}
            Outcome::Loop(m) => {
                *self.loop_count.entry(run.0).or_insert(0) += 1;
                self.set(run, StateKind::Looped, m);
                self.push_ready(run);
            }
            Outcome::Paused(m) => self.set(run, StateKind::Paused, m),
        }
        Ok(())
    }

    /// Whether `run` has retries left: a retryable failure of its current
    /// attempt would be retried.
    pub fn retries_left(&self, run: RunId) -> bool {
        self.task_of
            .get(run.idx())
            .is_some_and(|&t| self.run_count(run) <= self.graph.tasks[t.idx()].max_retries)
    }

    /// Approve a paused run (PAUSE, or a `manual_only` trigger): it runs next,
    /// without its trigger being asked again (state `Resume`).
    pub fn approve(&mut self, run: RunId) -> Result<(), CoreError> {
        self.check(run)?;
        let st = self.state[run.idx()];
        if st != StateKind::Paused {
            return Err(CoreError::NotPaused {
                run: run.0,
                state: st.name(),
            });
        }
        self.set(run, StateKind::Resume, None);
        self.push_ready(run);
        Ok(())
    }

    /// The runs waiting for approval.
    pub fn paused(&self) -> Vec<RunId> {
        if self.counts[StateKind::Paused as usize] == 0 {
            return Vec::new();
        }
        (0..self.state.len() as u32)
            .map(RunId)
            .filter(|r| self.state[r.idx()] == StateKind::Paused)
            .collect()
    }

    /// Stop the run: running runs and waiting retries become Cancelled, nothing
    /// else starts. Finished runs keep their states; the rest stay Pending.
    pub fn cancel(&mut self, message: &str) {
        self.cancelled = true;
        self.stack.clear();
        self.timers.clear();
        for r in 0..self.state.len() {
            if matches!(
                self.state[r],
                StateKind::Running | StateKind::Retrying | StateKind::Looped | StateKind::Resume
            ) {
                self.set(
                    RunId(r as u32),
                    StateKind::Cancelled,
                    Some(message.to_string()),
                );
            }
        }
    }

    /// The flow's verdict over its reference tasks.
    pub fn outcome(&self, reference: &[TaskId]) -> FlowOutcome {
        let mut failed = Vec::new();
        let mut unfinished = Vec::new();
        let mut cancelled = self.cancelled;
        for &t in reference {
            let mut states = vec![self.state[t.idx()]];
            if let Some((base, n)) = self.tasks[t.idx()].children {
                states.extend(&self.state[base as usize..(base + n) as usize]);
            }
            if states.iter().any(|s| s.is_failed()) {
                failed.push(t);
            } else if states.contains(&StateKind::Cancelled) {
                cancelled = true;
            } else if states
                .iter()
                .any(|s| !s.is_finished() || *s == StateKind::Looped)
            {
                unfinished.push(t);
            }
        }
        if cancelled {
            FlowOutcome::Cancelled
        } else if !failed.is_empty() {
            FlowOutcome::Failed(failed)
        } else if !unfinished.is_empty() {
            FlowOutcome::Unfinished(unfinished)
        } else {
            FlowOutcome::Success
        }
    }
}
