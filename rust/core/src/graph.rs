//! The task graph: tasks, keyed (data) and unkeyed (ordering) edges, mapped and
//! flattened edges, and validation.
//!
//! Validation reports a cycle with the names of the tasks on it. Adjacency is
//! stored as id-indexed vectors so iteration order (and therefore scheduling
//! order) is deterministic.

use std::time::Duration;

use crate::error::CoreError;
use crate::ids::{EdgeId, TaskId};
use crate::trigger::Trigger;

/// Everything the core needs to know about one task.
#[derive(Clone, Debug)]
pub struct TaskSpec {
    /// The task's name (in messages and cycle reports).
    pub name: String,
    /// How many times a retryable failure is retried.
    pub max_retries: u32,
    /// How long a failed run waits before its retry is ready.
    pub retry_delay: Duration,
    /// When the task may run, given its upstream states.
    pub trigger: Trigger,
    /// Skip the task, without asking its trigger, when an upstream run was skipped.
    pub skip_on_upstream_skip: bool,
    /// The host shows this task's state changes to handlers that may replace
    /// them: a run the core would skip, fail by its trigger or pause is handed
    /// out with [`crate::run::Ready::decided`] instead of settled, and the host
    /// reports the final outcome.
    pub observed: bool,
}

impl TaskSpec {
    /// A task with default options (no retries, `all_successful`, skip on upstream skip).
    pub fn new(name: impl Into<String>) -> Self {
        TaskSpec {
            name: name.into(),
            max_retries: 0,
            retry_delay: Duration::ZERO,
            trigger: Trigger::AllSuccessful,
            skip_on_upstream_skip: true,
            observed: false,
        }
    }
}

/// An edge `upstream -> downstream`. `keyed` edges carry data; the others only order.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct EdgeSpec {
    /// The task that must finish first (and whose result a keyed edge carries).
    pub upstream: TaskId,
    /// The task that waits for it.
    pub downstream: TaskId,
    /// The edge carries data (an input of `downstream`).
    pub keyed: bool,
    /// `downstream` maps over `upstream`'s result: one child run per element.
    pub mapped: bool,
    /// With `mapped`: map over the elements of the elements (`flatten`).
    pub flattened: bool,
}

impl EdgeSpec {
    /// A plain ordering edge.
    pub fn new(upstream: u32, downstream: u32) -> Self {
        EdgeSpec {
            upstream: TaskId(upstream),
            downstream: TaskId(downstream),
            keyed: false,
            mapped: false,
            flattened: false,
        }
    }
    /// Mark the edge mapped.
    pub fn mapped(mut self) -> Self {
        self.mapped = true;
        self
    }
    /// Mark the edge flattened.
    pub fn flattened(mut self) -> Self {
        self.flattened = true;
        self
    }
}

/// A validated task graph.
#[derive(Clone, Debug)]
pub struct Graph {
    /// The tasks, indexed by [`TaskId`].
    pub tasks: Vec<TaskSpec>,
    /// The edges, indexed by [`EdgeId`].
    pub edges: Vec<EdgeSpec>,
    ins: Vec<Vec<EdgeId>>,
    outs: Vec<Vec<EdgeId>>,
    mapped: Vec<bool>,
}

impl Graph {
    /// Build and validate a graph. Fails on unknown task ids, self edges and cycles.
    pub fn new(tasks: Vec<TaskSpec>, edges: Vec<EdgeSpec>) -> Result<Graph, CoreError> {
        let n = tasks.len();
        let mut ins = vec![Vec::new(); n];
        let mut outs = vec![Vec::new(); n];
        let mut mapped = vec![false; n];
        for (i, e) in edges.iter().enumerate() {
            for t in [e.upstream, e.downstream] {
                if t.idx() >= n {
                    return Err(CoreError::UnknownTask {
                        edge: i,
                        task: t.0,
                        n_tasks: n,
                    });
                }
            }
            if e.upstream == e.downstream {
                return Err(CoreError::SelfEdge(tasks[e.upstream.idx()].name.clone()));
            }
            let id = EdgeId(i as u32);
            outs[e.upstream.idx()].push(id);
            ins[e.downstream.idx()].push(id);
            if e.mapped {
                mapped[e.downstream.idx()] = true;
            }
        }
        let g = Graph {
            tasks,
            edges,
            ins,
            outs,
            mapped,
        };
        if let Some(cycle) = find_cycle(n, g.edges.iter().map(|e| (e.upstream.0, e.downstream.0))) {
            let names = cycle
                .iter()
                .map(|t| g.tasks[t.idx()].name.clone())
                .collect();
            return Err(CoreError::Cycle(names));
        }
        Ok(g)
    }

    /// Number of tasks.
    pub fn n_tasks(&self) -> usize {
        self.tasks.len()
    }
    /// Edges into a task, in insertion order.
    pub fn ins(&self, t: TaskId) -> &[EdgeId] {
        &self.ins[t.idx()]
    }
    /// Edges out of a task, in insertion order.
    pub fn outs(&self, t: TaskId) -> &[EdgeId] {
        &self.outs[t.idx()]
    }
    /// The edge with this id.
    pub fn edge(&self, e: EdgeId) -> &EdgeSpec {
        &self.edges[e.idx()]
    }
    /// Whether a task is mapped (has at least one mapped input edge).
    pub fn is_mapped(&self, t: TaskId) -> bool {
        self.mapped[t.idx()]
    }
    /// An edge whose downstream child `i` depends only on upstream child `i`:
    /// mapped, not flattened, from a mapped task.
    pub fn is_elementwise(&self, e: EdgeId) -> bool {
        let s = self.edge(e);
        s.mapped && !s.flattened && self.is_mapped(s.upstream)
    }

    /// What the core asks the host about a task's results when it expands maps
    /// over them ([`crate::run::Host`]): an executor that keeps results
    /// elsewhere (Dask) prepares exactly this much.
    pub fn measure(&self, t: TaskId) -> Measure {
        let mapped = self.is_mapped(t);
        let mut m = Measure::Nothing;
        for &e in self.outs(t) {
            let s = self.edge(e);
            let need = match (s.mapped, s.flattened, mapped) {
                // Flattened over children: each child's length.
                (_, true, true) => Measure::Len,
                // Flattened over one list of lists: its length and its items'.
                (_, true, false) => Measure::ItemLens,
                // Mapped over one list: its length (children need nothing).
                (true, false, false) => Measure::Len,
                _ => Measure::Nothing,
            };
            m = m.max(need);
        }
        m
    }
}

/// How much of a task's result the core measures ([`Graph::measure`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Measure {
    /// Nothing: no map expands over it.
    Nothing = 0,
    /// `len(result)` (of the task's own run, or of each child of a mapped task).
    Len = 1,
    /// `len(result)` and `len(result[k])` of every item (flattening one list).
    ItemLens = 2,
}

/// Find a cycle in a graph of `n` nodes given as `(upstream, downstream)` pairs.
/// Returns the nodes on the cycle in edge order with the first node repeated at the
/// end (`a -> b -> a`), or `None` for a DAG. Ids out of range are ignored.
/// Iterative, so deep graphs do not overflow the stack.
pub fn find_cycle(n: usize, edges: impl IntoIterator<Item = (u32, u32)>) -> Option<Vec<TaskId>> {
    let mut adj: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (u, d) in edges {
        if (u as usize) < n && (d as usize) < n {
            adj[u as usize].push(d);
        }
    }
    // 0 = unvisited, 1 = on the DFS stack, 2 = done.
    let mut color = vec![0u8; n];
    let mut parent = vec![u32::MAX; n];
    let mut stack: Vec<(u32, usize)> = Vec::new();
    for root in 0..n {
        if color[root] != 0 {
            continue;
        }
        color[root] = 1;
        stack.push((root as u32, 0));
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let succ = &adj[node as usize];
            if *next < succ.len() {
                let d = succ[*next];
                *next += 1;
                match color[d as usize] {
                    0 => {
                        color[d as usize] = 1;
                        parent[d as usize] = node;
                        stack.push((d, 0));
                    }
                    1 => {
                        // Back edge node -> d: walk parents from node back to d.
                        let mut path = vec![TaskId(node)];
                        let mut cur = node;
                        while cur != d {
                            cur = parent[cur as usize];
                            path.push(TaskId(cur));
                        }
                        path.reverse();
                        path.push(TaskId(d));
                        return Some(path);
                    }
                    _ => {}
                }
            } else {
                color[node as usize] = 2;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn specs(names: &[&str]) -> Vec<TaskSpec> {
        names.iter().map(|n| TaskSpec::new(*n)).collect()
    }

    #[test]
    fn cycle_is_named_in_order() {
        let err = Graph::new(
            specs(&["a", "b", "c", "d"]),
            vec![
                EdgeSpec::new(0, 1),
                EdgeSpec::new(1, 2),
                EdgeSpec::new(2, 1),
                EdgeSpec::new(2, 3),
            ],
        )
        .unwrap_err();
        assert_eq!(
            err,
            CoreError::Cycle(vec!["b".into(), "c".into(), "b".into()])
        );
        assert_eq!(err.to_string(), "cycle: b -> c -> b");
    }

    #[test]
    fn dag_ok_and_bad_ids() {
        assert!(Graph::new(specs(&["a", "b"]), vec![EdgeSpec::new(0, 1)]).is_ok());
        assert!(matches!(
            Graph::new(specs(&["a"]), vec![EdgeSpec::new(0, 5)]),
            Err(CoreError::UnknownTask { .. })
        ));
        assert!(matches!(
            Graph::new(specs(&["a"]), vec![EdgeSpec::new(0, 0)]),
            Err(CoreError::SelfEdge(_))
        ));
    }

    #[test]
    fn deep_chain_does_not_overflow() {
        let n = 200_000u32;
        let edges: Vec<(u32, u32)> = (0..n - 1).map(|i| (i, i + 1)).collect();
        assert!(find_cycle(n as usize, edges.iter().copied()).is_none());
        let mut with_back = edges;
        with_back.push((n - 1, 0));
        assert_eq!(
            find_cycle(n as usize, with_back).map(|c| c.len()),
            Some(n as usize + 1)
        );
    }
}
