//! Newtype ids. Every index into a core table has its own type so that a task id
//! can never be used where a run id is expected.

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u32);

        impl $name {
            /// The id as a `usize` index into its table.
            #[inline]
            pub fn idx(self) -> usize {
                self.0 as usize
            }
        }
    };
}

define_id!(
    /// A task of the graph (index into `Graph::tasks`).
    TaskId
);
define_id!(
    /// An edge of the graph (index into `Graph::edges`).
    EdgeId
);
define_id!(
    /// A task run. Runs `0..n_tasks` are the tasks' own (parent) runs, so the run
    /// of task `t` is `RunId(t.0)`; mapped children are appended after them.
    RunId
);
