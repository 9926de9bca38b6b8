//! The run loop's policy, without I/O: given completions and the real clock, the
//! [`Driver`] answers what the host does next.
//!
//! A host (the Python binding, or a test) owns the I/O: it calls tasks, in its
//! own thread, on worker threads or through an external executor, and it sends
//! buffered records to the run store. It asks [`Driver::step`] what to do and
//! gets one of:
//!
//! * [`Step::Execute`]: call this run now (first sending what is buffered when
//!   `flush` says so);
//! * [`Step::Wait`]: nothing can start now; send what is buffered, then wait for
//!   a completion or until the instant given, whichever comes first;
//! * [`Step::Done`]: the flow run is over.
//!
//! The host reports each call back with [`Driver::complete`], giving the instants
//! the call started and ended. The driver owns every decision in between:
//!
//! * **Retries**: whether a failure is retried comes from its
//!   [`Cause`](crate::run::Cause) (what the
//!   host saw: the error's kind and whether it matched `retry_on`) and the runs
//!   left, in [`Run::complete`]; retry timers are the run's own timer heap.
//! * **Waiting**: a wait lasts until the next retry timer, and never longer
//!   than [`Policy::max_wait`], so the host checks for Ctrl-C and sends records
//!   at least that often.
//! * **Flushing**: records of finished runs must not wait behind a long call. A
//!   task is *quick* when its last call took less than [`Policy::flush_every`];
//!   before a call of a task not known to be quick, and whenever
//!   `flush_every` has passed since the last flush, the host is told to flush.
//! * **Stopping**: an [`Outcome::Interrupted`] completion, or
//!   [`Driver::interrupt`] (Ctrl-C seen by the host), cancels the run.
//!
//! The clock is the host's: every call takes `now`, so tests drive the driver
//! with made-up instants and the binding with real ones. Transition times in
//! the journal are those instants, so the run store sees when each attempt
//! really started and ended.

use std::time::{Duration, Instant};

use crate::error::CoreError;
use crate::ids::{RunId, TaskId};
use crate::run::{Host, Outcome, Ready, Run};

/// The knobs of the run loop's policy.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Buffered records are sent at least this often while tasks run, and a
    /// task whose call took less than this is *quick* (no flush before it).
    pub flush_every: Duration,
    /// The longest single wait: the host checks for Ctrl-C at least this often.
    pub max_wait: Duration,
    /// When only runs waiting for approval are left, wait for approvals (the
    /// host looks for them at every wait) instead of ending the run.
    pub wait_for_approval: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            flush_every: Duration::from_millis(50),
            max_wait: Duration::from_millis(50),
            wait_for_approval: false,
        }
    }
}

/// What the host does next.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Execute this run now; when `flush`, send buffered records first.
    Execute {
        /// The run to execute.
        ready: Ready,
        /// Send buffered records before the call.
        flush: bool,
    },
    /// Nothing can start now: send buffered records, then wait for a
    /// completion or until `until`, whichever comes first.
    Wait {
        /// Wake up at this instant at the latest.
        until: Instant,
    },
    /// The flow run is over: nothing is ready, waiting or in flight.
    Done,
}

/// The message of runs cancelled by an interrupt.
pub const INTERRUPTED: &str = "Flow run interrupted (KeyboardInterrupt).";

/// One flow run's loop policy around its [`Run`].
pub struct Driver {
    run: Run,
    policy: Policy,
    /// By task: its last call took less than `flush_every`.
    quick: Vec<bool>,
    last_flush: Instant,
    stopped: Option<String>,
}

impl Driver {
    /// Drive `run`. `quick` is what an earlier run of the same flow learned
    /// (one flag per task; any other length is ignored and every task counts
    /// as slow until it proves quick).
    pub fn new(run: Run, policy: Policy, quick: Option<Vec<bool>>, now: Instant) -> Driver {
        let n = run.graph().n_tasks();
        let quick = match quick {
            Some(q) if q.len() == n => q,
            _ => vec![false; n],
        };
        Driver {
            run,
            policy,
            quick,
            last_flush: now,
            stopped: None,
        }
    }

    /// The run being driven.
    pub fn run(&self) -> &Run {
        &self.run
    }

    /// The run being driven, for setting it up (journal, release) and for
    /// reading what the host needs (arguments' sources, results to release).
    pub fn run_mut(&mut self) -> &mut Run {
        &mut self.run
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// By task: whether its last call was quick (for the next run of the flow).
    pub fn quick(&self) -> &[bool] {
        &self.quick
    }

    /// Why the run was stopped, if it was.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    /// What to do next, at `now`. Runs that end without executing (skips,
    /// trigger failures, mapped parents, pauses) are settled on the way; the
    /// host drains their journal entries as usual.
    pub fn step(&mut self, now: Instant, host: &mut dyn Host) -> Step {
        if self.stopped.is_some() {
            return Step::Done;
        }
        if let Some(ready) = self.run.next_ready(now, host) {
            let quick = self.quick.get(ready.task.idx()).copied().unwrap_or(false);
            let flush = !quick || self.flush_due(now);
            if flush {
                self.last_flush = now;
            }
            return Step::Execute { ready, flush };
        }
        self.idle(now)
    }

    /// What to do at `now` when no run can be handed out (for a host whose
    /// workers are all busy): wait, or done.
    pub fn idle(&mut self, now: Instant) -> Step {
        if self.stopped.is_some() {
            return Step::Done;
        }
        if self.run.is_done() && !(self.policy.wait_for_approval && self.waiting_for_approval()) {
            return Step::Done;
        }
        if self.run.in_flight() == 0 && self.run.next_wakeup().is_none() {
            // Only runs waiting for approval are left: nothing wakes up unless
            // the policy says to wait for an approval.
            if !self.policy.wait_for_approval || self.run.paused().is_empty() {
                return Step::Done;
            }
            self.last_flush = now;
            return Step::Wait {
                until: now + self.policy.max_wait,
            };
        }
        self.last_flush = now;
        let cap = now + self.policy.max_wait;
        let until = self.run.next_wakeup().map_or(cap, |w| w.min(cap));
        Step::Wait { until }
    }

    /// Whether buffered records are due to be sent at `now` (a host with calls
    /// in flight asks this between completions). Saying yes resets the timer.
    pub fn flush_due_now(&mut self, now: Instant) -> bool {
        let due = self.flush_due(now);
        if due {
            self.last_flush = now;
        }
        due
    }

    fn flush_due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_flush) >= self.policy.flush_every
    }

    /// Report how a run handed out by [`Driver::step`] ended: its call ran
    /// from `started` to `ended`. Returns true when the flow run stops here
    /// (the task was interrupted).
    pub fn complete(
        &mut self,
        run: RunId,
        outcome: Outcome,
        started: Instant,
        ended: Instant,
    ) -> Result<bool, CoreError> {
        let task = self.run.task_of(run)?;
        let interrupted = matches!(outcome, Outcome::Interrupted(_));
        self.run.complete(run, outcome, ended)?;
        self.learn(task, started, ended);
        if interrupted {
            self.interrupt(INTERRUPTED);
        }
        Ok(interrupted)
    }

    /// Report how a run handed out by [`Driver::step`] ended without being
    /// called (a constant, a collection, a restored checkpoint, a state its
    /// handlers settled): like [`Driver::complete`], but nothing is learned
    /// about how long the task's calls take.
    pub fn settle(
        &mut self,
        run: RunId,
        outcome: Outcome,
        now: Instant,
    ) -> Result<bool, CoreError> {
        let interrupted = matches!(outcome, Outcome::Interrupted(_));
        self.run.complete(run, outcome, now)?;
        if interrupted {
            self.interrupt(INTERRUPTED);
        }
        Ok(interrupted)
    }

    fn learn(&mut self, task: TaskId, started: Instant, ended: Instant) {
        if let Some(q) = self.quick.get_mut(task.idx()) {
            *q = ended.saturating_duration_since(started) < self.policy.flush_every;
        }
    }

    /// Stop the run (Ctrl-C seen by the host): what runs or waits is Cancelled
    /// with `reason`, nothing else starts.
    pub fn interrupt(&mut self, reason: &str) {
        if self.stopped.is_none() {
            self.run.cancel(reason);
            self.stopped = Some(reason.to_string());
        }
    }

    /// Whether runs wait for approval and nothing else is left to do.
    pub fn waiting_for_approval(&self) -> bool {
        self.run.is_done() && !self.run.paused().is_empty()
    }

    /// Approve a paused run: it runs at the next step.
    pub fn approve(&mut self, run: RunId) -> Result<(), CoreError> {
        self.run.approve(run)
    }
}
