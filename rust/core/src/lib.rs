//! ferroflow-core: the engine behind ferroflow, in pure Rust.
//!
//! The core owns a run: the task graph and its validation ([`graph`]), the state
//! machine ([`state`]), the built-in triggers ([`trigger`]) and the run table with
//! dependency counting, skip propagation, retry timers, map expansion and
//! depth-first ordering ([`run`]), and the run loop's policy: what to execute,
//! how long to wait, when to flush, whether a failure is retried ([`driver`]). It speaks integer ids and compact enums; the
//! run engine performs no I/O: a host (the Python binding, or a test) asks for
//! ready runs, executes them wherever it likes and reports outcomes back. The run
//! store ([`store`]) is the one part that touches disk, from its own writer thread.
#![deny(unsafe_code)]

pub mod driver;
pub mod error;
pub mod graph;
pub mod ids;
pub mod run;
pub mod state;
pub mod store;
pub mod trigger;

pub use driver::{Driver, Policy, Step};
pub use error::CoreError;
pub use graph::{EdgeSpec, Graph, TaskSpec};
pub use ids::{EdgeId, RunId, TaskId};
pub use run::{Cause, FlatSource, FlowOutcome, Host, Outcome, Ready, Run, Transition};
pub use state::StateKind;
pub use trigger::Trigger;
