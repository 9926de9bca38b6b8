//! A scripted host for driving the core in tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferroflow_core::{Host, Outcome, Run, RunId, StateKind};

/// Results are lists of `len` items (each item a list of `item_len` items).
#[derive(Default)]
pub struct Lens {
    pub len: HashMap<u32, Result<u32, String>>,
    pub item_len: HashMap<(u32, u32), u32>,
}

impl Lens {
    /// Runs `run` return lists of `len` items, for each `(run, len)`.
    pub fn with_lens(lens: impl IntoIterator<Item = (u32, u32)>) -> Lens {
        Lens {
            len: lens.into_iter().map(|(r, l)| (r, Ok(l))).collect(),
            ..Lens::default()
        }
    }
}

impl Host for Lens {
    fn len_of(&mut self, run: RunId) -> Result<u32, String> {
        self.len
            .get(&run.0)
            .cloned()
            .unwrap_or(Err("not a sequence".into()))
    }
    fn len_of_item(&mut self, run: RunId, item: u32) -> Result<u32, String> {
        self.item_len
            .get(&(run.0, item))
            .copied()
            .ok_or_else(|| "not a sequence".into())
    }
}

/// Drive a run to the end with a virtual clock. `decide` picks each run's outcome;
/// `on_success` may register result lengths. Returns the order runs executed in.
pub fn drive(
    run: &mut Run,
    lens: &mut Lens,
    mut decide: impl FnMut(&Run, ferroflow_core::Ready) -> Outcome,
) -> Vec<RunId> {
    let mut now = Instant::now();
    let mut order = Vec::new();
    let mut guard = 0u64;
    loop {
        guard += 1;
        assert!(guard < 50_000_000, "run did not end");
        if let Some(ready) = run.next_ready(now, lens) {
            order.push(ready.run);
            let out = decide(run, ready);
            run.complete(ready.run, out, now).expect("complete");
            continue;
        }
        if run.is_done() {
            break;
        }
        match run.next_wakeup() {
            Some(t) => now = t.max(now + Duration::from_nanos(1)),
            None => panic!("stuck: nothing ready, nothing waiting, not done"),
        }
    }
    order
}

/// The state of run `r`.
pub fn state(run: &Run, r: u32) -> StateKind {
    run.state(RunId(r)).expect("state")
}

/// Task `t{i}` with these options (the property tests' generated tasks).
pub fn task_spec(
    i: usize,
    trigger: ferroflow_core::Trigger,
    skip_on_upstream_skip: bool,
    max_retries: u32,
    retry_delay_ms: u64,
) -> ferroflow_core::TaskSpec {
    let mut s = ferroflow_core::TaskSpec::new(format!("t{i}"));
    s.trigger = trigger;
    s.skip_on_upstream_skip = skip_on_upstream_skip;
    s.max_retries = max_retries;
    s.retry_delay = Duration::from_millis(retry_delay_ms);
    s
}
