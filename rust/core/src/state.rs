//! Task-run states. The numeric codes are shared with the Python side
//! (`ferroflow.states.BY_CODE`): change both together.

/// The state of one task run, as a one-byte code.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StateKind {
    /// Not started yet.
    Pending = 0,
    /// Will start at a set time (a kind of `Pending`).
    Scheduled = 1,
    /// Waits for manual approval (a kind of `Scheduled`).
    Paused = 2,
    /// A paused run that was approved (a kind of `Scheduled`).
    Resume = 3,
    /// Failed and will run again after its retry delay (a kind of `Scheduled`).
    Retrying = 4,
    /// Executing.
    Running = 5,
    /// Succeeded. This and every later code is finished.
    Success = 6,
    /// Did not execute: the result came from the cache (a kind of `Success`).
    Cached = 7,
    /// A mapped task's own run, expanded into children (a kind of `Success`).
    Mapped = 8,
    /// Skipped (a kind of `Success`).
    Skipped = 9,
    /// Raised `LOOP` and runs again.
    Looped = 10,
    /// Failed.
    Failed = 11,
    /// Ran past its timeout (a kind of `Failed`).
    TimedOut = 12,
    /// Its trigger said no, so it did not run (a kind of `Failed`).
    TriggerFailed = 13,
    /// Cancelled.
    Cancelled = 14,
}

impl StateKind {
    /// All states, indexed by code.
    pub const ALL: [StateKind; 15] = [
        StateKind::Pending,
        StateKind::Scheduled,
        StateKind::Paused,
        StateKind::Resume,
        StateKind::Retrying,
        StateKind::Running,
        StateKind::Success,
        StateKind::Cached,
        StateKind::Mapped,
        StateKind::Skipped,
        StateKind::Looped,
        StateKind::Failed,
        StateKind::TimedOut,
        StateKind::TriggerFailed,
        StateKind::Cancelled,
    ];

    /// The state with this code, if any.
    pub fn from_code(code: u8) -> Option<StateKind> {
        Self::ALL.get(code as usize).copied()
    }

    /// The state's class name, as in `ferroflow.states`.
    pub fn name(self) -> &'static str {
        match self {
            StateKind::Pending => "Pending",
            StateKind::Scheduled => "Scheduled",
            StateKind::Paused => "Paused",
            StateKind::Resume => "Resume",
            StateKind::Retrying => "Retrying",
            StateKind::Running => "Running",
            StateKind::Success => "Success",
            StateKind::Cached => "Cached",
            StateKind::Mapped => "Mapped",
            StateKind::Skipped => "Skipped",
            StateKind::Looped => "Looped",
            StateKind::Failed => "Failed",
            StateKind::TimedOut => "TimedOut",
            StateKind::TriggerFailed => "TriggerFailed",
            StateKind::Cancelled => "Cancelled",
        }
    }

    /// Finished: Success and its children, Failed and its children, Cancelled, Looped.
    #[inline]
    pub fn is_finished(self) -> bool {
        (self as u8) >= StateKind::Success as u8
    }

    /// Settled for good: finished and not `Looped` (a looping run runs again).
    /// Dependency counting waits for this, never for [`StateKind::is_finished`]
    /// alone: a downstream run must not start while its upstream still loops.
    /// `Paused` is not finished either: it waits for approval.
    #[inline]
    pub fn is_final(self) -> bool {
        self.is_finished() && self != StateKind::Looped
    }

    /// Successful: Success, Cached, Mapped, Skipped.
    #[inline]
    pub fn is_successful(self) -> bool {
        matches!(
            self,
            StateKind::Success | StateKind::Cached | StateKind::Mapped | StateKind::Skipped
        )
    }

    /// Failed: Failed, TimedOut, TriggerFailed.
    #[inline]
    pub fn is_failed(self) -> bool {
        matches!(
            self,
            StateKind::Failed | StateKind::TimedOut | StateKind::TriggerFailed
        )
    }

    /// Skipped.
    #[inline]
    pub fn is_skipped(self) -> bool {
        self == StateKind::Skipped
    }
}
