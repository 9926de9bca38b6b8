//! Masking secret values out of what the store records.
//!
//! A process that reads a secret (`ferroflow.tasks.secrets`) adds its value with
//! [`add`]; from then on the writer replaces every occurrence of it, in every
//! state message and log line of every flow run this process records, with
//! [`MASK`] before the text reaches the store. Values are process-wide and are
//! never removed: a value that was secret once stays masked.
//!
//! Longer values are replaced first, so a secret that contains another is
//! masked whole. Checking costs one relaxed atomic load while no value was
//! added, so processes that read no secret pay nothing.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, RwLock};

use super::writer::Event;

/// What a masked value is replaced with.
pub const MASK: &str = "****";

static ANY: AtomicBool = AtomicBool::new(false);

fn values() -> &'static RwLock<Vec<String>> {
    static V: OnceLock<RwLock<Vec<String>>> = OnceLock::new();
    V.get_or_init(|| RwLock::new(Vec::new()))
}

/// Mask `value` from now on (an empty value is ignored).
pub fn add(value: &str) {
    if value.is_empty() {
        return;
    }
    let mut v = values().write().unwrap_or_else(|p| p.into_inner());
    if !v.iter().any(|x| x == value) {
        v.push(value.to_string());
        // Longest first: a value containing another is replaced whole.
        v.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    }
    ANY.store(true, Ordering::Release);
}

/// Whether any value is masked in this process.
pub fn active() -> bool {
    ANY.load(Ordering::Acquire)
}

/// `text` with every masked value replaced by [`MASK`].
pub fn apply(text: &str) -> Cow<'_, str> {
    if !active() {
        return Cow::Borrowed(text);
    }
    let v = values().read().unwrap_or_else(|p| p.into_inner());
    let mut out: Cow<'_, str> = Cow::Borrowed(text);
    for value in v.iter() {
        if out.contains(value.as_str()) {
            out = Cow::Owned(out.replace(value.as_str(), MASK));
        }
    }
    out
}

fn apply_in_place(text: &mut String) {
    if let Cow::Owned(masked) = apply(text) {
        *text = masked;
    }
}

fn apply_opt(text: &mut Option<String>) {
    if let Some(t) = text.as_mut() {
        apply_in_place(t);
    }
}

/// Mask the messages and log lines an event carries (the writer calls it on
/// every event before recording it).
pub fn event(event: &mut Event) {
    if !active() {
        return;
    }
    match event {
        Event::Transition { item, .. } => apply_opt(&mut item.message),
        Event::Transitions { items, .. } => {
            for item in items {
                apply_opt(&mut item.message);
            }
        }
        Event::Log { message, .. } => apply_in_place(message),
        Event::Logs { lines, .. } => {
            for line in lines {
                apply_in_place(&mut line.message);
            }
        }
        Event::FlowRunEnded { message, .. } => apply_opt(message),
        Event::FlowRunStarted { .. }
        | Event::TaskRuns { .. }
        | Event::MapChildren { .. }
        | Event::ResultLocation { .. }
        | Event::PackLocations { .. }
        | Event::FlowStructure { .. }
        | Event::CachePut(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_masked_longest_first() {
        assert_eq!(apply("nothing yet"), "nothing yet");
        add("");
        add("hunter2");
        add("hunter2-and-more");
        assert!(active());
        assert_eq!(apply("a hunter2-and-more b hunter2"), "a **** b ****");
        assert!(matches!(apply("clean"), Cow::Borrowed(_)));
    }
}
