//! Built-in triggers, evaluated over counts of upstream states.
//!
//! A trigger decides whether a task whose upstream runs have all finished may run.
//! Custom (Python) triggers are evaluated by the host; the core only flags them.

/// Counts of upstream states seen by one task run.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamCounts {
    /// Upstream runs seen.
    pub total: u32,
    /// How many are successful ([`crate::StateKind::is_successful`]; skipped
    /// runs count).
    pub successful: u32,
    /// How many failed ([`crate::StateKind::is_failed`]).
    pub failed: u32,
    /// How many were skipped.
    pub skipped: u32,
}

/// What a trigger decided.
#[derive(Clone, Debug, PartialEq)]
pub enum TriggerDecision {
    /// The task may run.
    Run,
    /// The task does not run: it ends TriggerFailed with this message.
    Fail(String),
    /// `manual_only`: the task waits for approval (Paused).
    Pause,
    /// `not_all_skipped` with every upstream skipped: the task is Skipped.
    Skip(String),
}

/// A trigger of a task.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// Every upstream run is successful (the default).
    AllSuccessful,
    /// Every upstream run failed.
    AllFailed,
    /// At least one upstream run is successful.
    AnySuccessful,
    /// At least one upstream run failed.
    AnyFailed,
    /// Always, once the upstream runs have finished.
    AllFinished,
    /// Never on its own: the task waits for manual approval.
    ManualOnly,
    /// Skipped when every upstream run was skipped; otherwise as
    /// `AllSuccessful`.
    NotAllSkipped,
    /// The number of successful upstream runs is within the bounds. Bounds
    /// below 1.0 are proportions of the number of upstream states.
    SomeSuccessful {
        /// Lower bound, if any.
        at_least: Option<f64>,
        /// Upper bound, if any.
        at_most: Option<f64>,
    },
    /// The number of failed upstream runs is within the bounds (as for
    /// `SomeSuccessful`).
    SomeFailed {
        /// Lower bound, if any.
        at_least: Option<f64>,
        /// Upper bound, if any.
        at_most: Option<f64>,
    },
    /// Evaluated by the host.
    Custom,
}

/// Lower bound as a whole count: fractions below 1 are proportions of `total`;
/// rounded up (with a little slack for float error), like the Python triggers.
fn lower(b: Option<f64>, total: u32) -> Option<f64> {
    b.map(|v| {
        if v < 1.0 {
            (v * f64::from(total) - 1e-9).ceil()
        } else {
            v.ceil()
        }
    })
}

/// Upper bound as a whole count, rounded down.
fn upper(b: Option<f64>, total: u32) -> Option<f64> {
    b.map(|v| {
        if v < 1.0 {
            (v * f64::from(total) + 1e-9).floor()
        } else {
            v.floor()
        }
    })
}

fn some(name: &str, count: u32, total: u32, lo: Option<f64>, hi: Option<f64>) -> TriggerDecision {
    let c = f64::from(count);
    let lo_v = lower(lo, total);
    let hi_v = upper(hi, total);
    if lo_v.is_some_and(|l| c < l) || hi_v.is_some_and(|h| c > h) {
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x}"));
        TriggerDecision::Fail(format!(
            "Trigger was \"{name}\" with bounds [{}, {}] but {count} of {total} upstream states matched.",
            fmt(lo_v),
            fmt(hi_v)
        ))
    } else {
        TriggerDecision::Run
    }
}

impl Trigger {
    /// The trigger's name as in `ferroflow.triggers`.
    pub fn name(&self) -> &'static str {
        match self {
            Trigger::AllSuccessful => "all_successful",
            Trigger::AllFailed => "all_failed",
            Trigger::AnySuccessful => "any_successful",
            Trigger::AnyFailed => "any_failed",
            Trigger::AllFinished => "all_finished",
            Trigger::ManualOnly => "manual_only",
            Trigger::NotAllSkipped => "not_all_skipped",
            Trigger::SomeSuccessful { .. } => "some_successful",
            Trigger::SomeFailed { .. } => "some_failed",
            Trigger::Custom => "custom",
        }
    }

    /// Decide over upstream counts. An empty upstream set satisfies every trigger
    /// except `manual_only`.
    pub fn decide(&self, c: UpstreamCounts) -> TriggerDecision {
        let fail = |what: &str| {
            TriggerDecision::Fail(format!(
                "Trigger was \"{}\" but {what} ({} of {} upstream states successful, {} failed).",
                self.name(),
                c.successful,
                c.total,
                c.failed
            ))
        };
        match self {
            Trigger::ManualOnly => TriggerDecision::Pause,
            _ if c.total == 0 => TriggerDecision::Run,
            Trigger::AllSuccessful if c.successful < c.total => {
                fail("some of the upstream tasks did not succeed")
            }
            Trigger::AllFailed if c.failed < c.total => {
                fail("some of the upstream tasks did not fail")
            }
            Trigger::AnySuccessful if c.successful == 0 => {
                fail("none of the upstream tasks succeeded")
            }
            Trigger::AnyFailed if c.failed == 0 => fail("none of the upstream tasks failed"),
            Trigger::NotAllSkipped if c.skipped == c.total => {
                TriggerDecision::Skip("All upstream tasks were skipped.".into())
            }
            Trigger::NotAllSkipped if c.successful < c.total => {
                fail("some of the upstream tasks did not succeed")
            }
            Trigger::SomeSuccessful { at_least, at_most } => some(
                "some_successful",
                c.successful,
                c.total,
                *at_least,
                *at_most,
            ),
            Trigger::SomeFailed { at_least, at_most } => {
                some("some_failed", c.failed, c.total, *at_least, *at_most)
            }
            _ => TriggerDecision::Run,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn counts(total: u32, successful: u32, failed: u32, skipped: u32) -> UpstreamCounts {
        UpstreamCounts {
            total,
            successful,
            failed,
            skipped,
        }
    }

    #[test]
    fn builtins() {
        assert_eq!(
            Trigger::AllSuccessful.decide(counts(2, 2, 0, 0)),
            TriggerDecision::Run
        );
        assert!(matches!(
            Trigger::AllSuccessful.decide(counts(2, 1, 1, 0)),
            TriggerDecision::Fail(_)
        ));
        assert_eq!(
            Trigger::AllFailed.decide(counts(2, 0, 2, 0)),
            TriggerDecision::Run
        );
        assert!(matches!(
            Trigger::AnyFailed.decide(counts(2, 2, 0, 0)),
            TriggerDecision::Fail(_)
        ));
        assert_eq!(
            Trigger::AnySuccessful.decide(counts(2, 1, 1, 0)),
            TriggerDecision::Run
        );
        assert_eq!(
            Trigger::AllFinished.decide(counts(3, 0, 3, 0)),
            TriggerDecision::Run
        );
        assert_eq!(
            Trigger::ManualOnly.decide(counts(0, 0, 0, 0)),
            TriggerDecision::Pause
        );
        assert!(matches!(
            Trigger::NotAllSkipped.decide(counts(2, 2, 0, 2)),
            TriggerDecision::Skip(_)
        ));
        assert!(matches!(
            Trigger::NotAllSkipped.decide(counts(2, 1, 1, 0)),
            TriggerDecision::Fail(_)
        ));
        assert_eq!(
            Trigger::NotAllSkipped.decide(counts(2, 2, 0, 1)),
            TriggerDecision::Run
        );
        assert_eq!(
            Trigger::AllSuccessful.decide(counts(0, 0, 0, 0)),
            TriggerDecision::Run
        );
    }

    #[test]
    fn proportions() {
        let t = Trigger::SomeSuccessful {
            at_least: Some(0.5),
            at_most: None,
        };
        assert_eq!(t.decide(counts(4, 2, 2, 0)), TriggerDecision::Run);
        assert!(matches!(
            t.decide(counts(4, 1, 3, 0)),
            TriggerDecision::Fail(_)
        ));
        let t = Trigger::SomeFailed {
            at_least: Some(1.0),
            at_most: Some(2.0),
        };
        assert_eq!(t.decide(counts(4, 2, 2, 0)), TriggerDecision::Run);
        assert!(matches!(
            t.decide(counts(4, 1, 3, 0)),
            TriggerDecision::Fail(_)
        ));
    }
}
