//! The read side of [`Store`] (and its few direct writes): rows and queries.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Params, Row, params};

use super::journal::{Decoder, Encoder, Fold, IdMap, Rec, RunFold, last_time, transitions_of};
use super::{FLOW_INTERRUPTED, FLOW_RUNNING, Store, StoreError};
use crate::{RunId, StateKind, TaskId};

/// One flow run.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowRunRow {
    /// Its id.
    pub id: String,
    /// The flow's name.
    pub flow_name: String,
    /// Its parameters, as the JSON text the recorder was given.
    pub parameters_json: String,
    /// `Running`, [`FLOW_INTERRUPTED`] or the name of its final [`crate::StateKind`].
    pub state: String,
    /// The final state's message (or why it was marked interrupted).
    pub message: Option<String>,
    /// When it started (seconds since the Unix epoch).
    pub started: f64,
    /// When it ended, if it did.
    pub ended: Option<f64>,
    /// The process that ran it.
    pub pid: Option<u32>,
    /// The machine that ran it.
    pub host: Option<String>,
    /// The flow run it resumed, if any.
    pub resumed_from: Option<String>,
}

/// One task run, in its latest state.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRunRow {
    /// Its id in the run table.
    pub run: RunId,
    /// The task.
    pub task: TaskId,
    /// The task's name (shared by the rows of one task).
    pub task_name: Arc<str>,
    /// The index of a mapped child.
    pub map_index: Option<u32>,
    /// How many attempts it made.
    pub run_count: u32,
    /// Its latest state (`Pending` until its first transition).
    pub state: StateKind,
    /// The latest state's message.
    pub message: Option<String>,
    /// When it first started running.
    pub started: Option<f64>,
    /// When it finished (`None` while not finished).
    pub ended: Option<f64>,
    /// Where its result was written, if it was.
    pub result_location: Option<String>,
}

/// One log line of a [`ReportBatch`], with its `rowid` (what the server acknowledges).
#[derive(Clone, Debug, PartialEq)]
pub struct ReportLog {
    /// Its rowid in the `logs` table.
    pub rowid: i64,
    /// The task run it belongs to (`None`: the flow run's own).
    pub run: Option<RunId>,
    /// The level, as Python's `logging` numbers it.
    pub level: i32,
    /// When.
    pub at: f64,
    /// The text.
    pub message: String,
}

/// The next batch of a flow run's records for a server: see [`Store::report_batch`].
#[derive(Clone, Debug, PartialEq)]
pub struct ReportBatch {
    /// The flow-run row.
    pub run: FlowRunRow,
    /// The recorded flow structure, if any.
    pub structure: Option<String>,
    /// Journal blobs after the given seq, with their seq, in order.
    pub journal: Vec<(i64, Vec<u8>)>,
    /// Log lines after the given rowid, in order.
    pub logs: Vec<ReportLog>,
    /// Whether this is everything recorded so far.
    pub complete: bool,
}

/// One state transition of a task run.
#[derive(Clone, Debug, PartialEq)]
pub struct TransitionRow {
    /// The state entered.
    pub state: StateKind,
    /// Its message.
    pub message: Option<String>,
    /// When.
    pub at: f64,
}

/// One log line.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRow {
    /// The task run it belongs to (`None`: the flow run's own).
    pub run: Option<RunId>,
    /// The level, as Python's `logging` numbers it.
    pub level: i32,
    /// When.
    pub at: f64,
    /// The message.
    pub message: String,
}

/// A finished task run whose result was written somewhere (for resume).
#[derive(Clone, Debug, PartialEq)]
pub struct FinishedTaskRun {
    /// Its id in the run table.
    pub run: RunId,
    /// The task.
    pub task: TaskId,
    /// The task's name (shared by the rows of one task).
    pub task_name: Arc<str>,
    /// The index of a mapped child.
    pub map_index: Option<u32>,
    /// Its final state.
    pub state: StateKind,
    /// Where its result was written.
    pub result_location: String,
}

/// One entry of the cache index.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheRow {
    /// The task's stable key.
    pub task_key: String,
    /// The cache key (the task's `cache_key`, or its key by default).
    pub cache_key: String,
    /// A hash of the inputs the result was computed from (`""` when unused).
    pub inputs_hash: String,
    /// When the entry was made.
    pub created: f64,
    /// When it stops being valid (`None`: never).
    pub expires: Option<f64>,
    /// Where the cached result is.
    pub result_location: String,
    /// Which serializer wrote it (`""` when unknown).
    pub serializer: String,
}

/// The message of a task run that was running when its flow run's process
/// ended (see [`Store::task_runs`]).
pub const INTERRUPTED_TASK_RUN: &str =
    "Interrupted: the process running the flow run ended while this task run was running.";

/// Task names as shared strings, so that a million rows of one task share one.
struct Names {
    by_task: IdMap<u32, Arc<str>>,
    unknown: Arc<str>,
}

impl Names {
    fn of(fold: &Fold) -> Names {
        Names {
            by_task: fold
                .names
                .iter()
                .map(|(&t, n)| (t, Arc::from(n.as_str())))
                .collect(),
            unknown: Arc::from(""),
        }
    }

    fn name(&self, task: u32) -> Arc<str> {
        Arc::clone(self.by_task.get(&task).unwrap_or(&self.unknown))
    }
}

/// Fold journal blobs (one flow run's, oldest first, as stored in the `journal`
/// table) into its task runs: each in its latest state, in run-id order. The
/// server reads a store through SQL and folds with this, so that one format
/// serves the embedded store and PostgreSQL. An unreadable blob is an error
/// naming the damage.
pub fn fold_journal<'a, I>(blobs: I) -> Result<Vec<TaskRunRow>, String>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let (runs, names) = fold_blobs(blobs)?;
    Ok(runs
        .into_iter()
        .map(|(run, r)| task_run_row(run, r, &names))
        .collect())
}

/// Every state transition of task run `run` in these journal blobs, oldest first.
pub fn journal_transitions<'a, I>(blobs: I, run: RunId) -> Result<Vec<TransitionRow>, String>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut out = Vec::new();
    for blob in blobs {
        transitions_of(blob, run.0, &mut out)?;
    }
    Ok(out
        .into_iter()
        .map(|(state, message, at)| TransitionRow { state, message, at })
        .collect())
}

/// One journal blob holding these transitions (for a writer other than the
/// [`super::Recorder`], e.g. the server applying a state change to a task run
/// that the journal already registers).
pub fn encode_transitions(items: &[super::TransitionItem]) -> Vec<u8> {
    let mut enc = Encoder::new();
    for t in items {
        enc.transition(
            t.run.0,
            t.state,
            t.run_count,
            t.at,
            t.message.as_deref(),
            t.result_location.as_deref(),
        );
    }
    enc.finish()
}

/// `blob` (one row of the `journal` table) with every occurrence of `values` in
/// its transition messages replaced by [`super::mask::MASK`] (longest value
/// first), or `None` when no message holds one (the blob stays as it is): how
/// the server keeps a secret value out of an ingested journal.
///
/// # Errors
///
/// A damaged blob, as [`journal_transitions`] reports it.
pub fn mask_journal_blob(blob: &[u8], values: &[String]) -> Result<Option<Vec<u8>>, String> {
    let mut values: Vec<&str> = values
        .iter()
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .collect();
    values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    let mut dec = Decoder::new(blob)?;
    let mut enc = Encoder::new();
    let mut changed = false;
    while let Some(rec) = dec.next_rec()? {
        match rec {
            Rec::Name { task, name } => enc.task_name(task, name),
            Rec::Range {
                first_run,
                count,
                task,
                first_map_index,
            } => {
                if count == 1 {
                    enc.register(first_run, task, first_map_index);
                } else {
                    enc.register_range(first_run, count, task, first_map_index);
                }
            }
            Rec::Transition {
                run,
                state,
                run_count,
                at,
                message,
                location,
            } => {
                let mut masked = message.map(str::to_string);
                if let Some(text) = masked.as_mut() {
                    for value in &values {
                        if text.contains(value) {
                            *text = text.replace(value, super::mask::MASK);
                            changed = true;
                        }
                    }
                }
                enc.transition(run, state, run_count, at, masked.as_deref(), location);
            }
            Rec::Location { run, location } => enc.result_location(run, location),
            Rec::Pack { pack, items } => {
                let items: Vec<super::PackItem> = items
                    .into_iter()
                    .map(|(run, offset, length)| super::PackItem {
                        run: RunId(run),
                        offset,
                        length,
                    })
                    .collect();
                enc.pack_locations(pack, &items);
            }
        }
    }
    Ok(changed.then(|| enc.finish()))
}

/// One flow run's journal folded incrementally: [`JournalFold::apply`] each blob
/// once, in `seq` order, as it appears; [`JournalFold::counts`] and
/// [`JournalFold::page`] read the current task runs without copying them all.
/// The server keeps one per busy flow run, so that the counts of a run with a
/// million mapped children cost a walk over its table, not a decode of its
/// whole journal.
#[derive(Default)]
pub struct JournalFold {
    fold: Fold,
}

/// One row of [`JournalFold::spans`]: task, task name, mapped children (or the task's
/// own run), how many runs, the earliest start and the latest end.
pub type TaskSpan = (TaskId, String, bool, u64, Option<f64>, Option<f64>);

/// Which task runs [`JournalFold::page`] returns.
#[derive(Clone, Debug, Default)]
pub struct TaskRunFilter {
    /// Only this task's runs.
    pub task: Option<TaskId>,
    /// Only mapped children (`Some(true)`) or only tasks' own runs (`Some(false)`).
    pub children: Option<bool>,
    /// Only runs in one of these states (empty: any).
    pub states: Vec<StateKind>,
}

impl JournalFold {
    /// An empty fold.
    pub fn new() -> JournalFold {
        JournalFold::default()
    }

    /// Apply the next blob (an error names the damage; the fold keeps what it had).
    pub fn apply(&mut self, blob: &[u8]) -> Result<(), String> {
        self.fold.apply(blob)
    }

    /// How many task runs are registered.
    pub fn len(&self) -> u64 {
        self.fold.runs.len()
    }

    /// Whether no task run is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(task, task name, is mapped child, state, count)`, ordered by task, own run
    /// before children, then state code.
    pub fn counts(&self) -> Vec<(TaskId, String, bool, StateKind, u64)> {
        let mut counts: std::collections::BTreeMap<(u32, bool, u8), u64> = Default::default();
        for (_, r) in self.fold.runs.iter_sorted() {
            let state = r.state.unwrap_or(StateKind::Pending);
            *counts
                .entry((r.task, r.map_index.is_some(), state as u8))
                .or_insert(0) += 1;
        }
        let names = Names::of(&self.fold);
        counts
            .into_iter()
            .map(|((task, child, code), n)| {
                let state = StateKind::from_code(code).unwrap_or(StateKind::Pending);
                (TaskId(task), names.name(task).to_string(), child, state, n)
            })
            .collect()
    }

    /// `(task, task name, is mapped child, runs, earliest start, latest end)` per task
    /// and own run / children, ordered by task then own run first: what a timeline of
    /// a huge run draws (one bar per task, never one per child).
    pub fn spans(&self) -> Vec<TaskSpan> {
        type Span = (u64, Option<f64>, Option<f64>);
        let mut spans: std::collections::BTreeMap<(u32, bool), Span> = Default::default();
        for (_, r) in self.fold.runs.iter_sorted() {
            let e = spans
                .entry((r.task, r.map_index.is_some()))
                .or_insert((0, None, None));
            e.0 += 1;
            if let Some(s) = r.started {
                e.1 = Some(e.1.map_or(s, |m: f64| m.min(s)));
            }
            if let Some(t) = r.ended {
                e.2 = Some(e.2.map_or(t, |m: f64| m.max(t)));
            }
        }
        let names = Names::of(&self.fold);
        spans
            .into_iter()
            .map(|((task, child), (n, s, e))| {
                (TaskId(task), names.name(task).to_string(), child, n, s, e)
            })
            .collect()
    }

    /// Task run `run`, if registered.
    pub fn get(&mut self, run: RunId) -> Option<TaskRunRow> {
        let names = Names::of(&self.fold);
        let r = self.fold.runs.get_mut(run.0)?;
        Some(TaskRunRow {
            run,
            task: TaskId(r.task),
            task_name: names.name(r.task),
            map_index: r.map_index,
            run_count: r.run_count,
            state: r.state.unwrap_or(StateKind::Pending),
            message: r.message.clone(),
            started: r.started,
            ended: r.ended,
            result_location: r.result_location.clone(),
        })
    }

    /// How many task runs match `filter`, and those from `offset` on (at most
    /// `limit`), in run-id order.
    pub fn page(
        &self,
        filter: &TaskRunFilter,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<TaskRunRow>) {
        let names = Names::of(&self.fold);
        let mut total = 0;
        let mut out = Vec::new();
        for (run, r) in self.fold.runs.iter_sorted() {
            let state = r.state.unwrap_or(StateKind::Pending);
            if filter.task.is_some_and(|t| t.0 != r.task)
                || filter.children.is_some_and(|c| c != r.map_index.is_some())
                || (!filter.states.is_empty() && !filter.states.contains(&state))
            {
                continue;
            }
            if total >= offset && out.len() < limit {
                out.push(TaskRunRow {
                    run: RunId(run),
                    task: TaskId(r.task),
                    task_name: names.name(r.task),
                    map_index: r.map_index,
                    run_count: r.run_count,
                    state,
                    message: r.message.clone(),
                    started: r.started,
                    ended: r.ended,
                    result_location: r.result_location.clone(),
                });
            }
            total += 1;
        }
        (total, out)
    }
}

/// The row of task run `run` as its journal folds to.
fn task_run_row(run: u32, r: RunFold, names: &Names) -> TaskRunRow {
    TaskRunRow {
        run: RunId(run),
        task: TaskId(r.task),
        task_name: names.name(r.task),
        map_index: r.map_index,
        run_count: r.run_count,
        state: r.state.unwrap_or(StateKind::Pending),
        message: r.message,
        started: r.started,
        ended: r.ended,
        result_location: r.result_location,
    }
}

fn fold_blobs<'a, I>(blobs: I) -> Result<(Vec<(u32, RunFold)>, Names), String>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut fold = Fold::default();
    for blob in blobs {
        fold.apply(blob)?;
    }
    let names = Names::of(&fold);
    Ok((fold.runs.into_sorted(), names))
}

const FLOW_COLS: &str =
    "id, flow_name, parameters, state, message, started, ended, pid, host, resumed_from";

fn flow_row(r: &Row<'_>) -> rusqlite::Result<FlowRunRow> {
    Ok(FlowRunRow {
        id: r.get(0)?,
        flow_name: r.get(1)?,
        parameters_json: r.get(2)?,
        state: r.get(3)?,
        message: r.get(4)?,
        started: r.get(5)?,
        ended: r.get(6)?,
        pid: r.get(7)?,
        host: r.get(8)?,
        resumed_from: r.get(9)?,
    })
}

/// Add or replace a cache entry.
const CACHE_PUT: &str = "INSERT INTO cache(task_key, cache_key, inputs_hash, \
     created, expires, result_location, serializer) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
     ON CONFLICT(task_key, cache_key, inputs_hash) DO UPDATE SET created = excluded.created, \
     expires = excluded.expires, result_location = excluded.result_location, \
     serializer = excluded.serializer";

/// Add or replace a cache entry on `conn` (for [`Store::cache_put`] and the
/// writer's [`super::Event::CachePut`]).
pub(crate) fn put_cache_row(conn: &Connection, row: &CacheRow) -> rusqlite::Result<()> {
    conn.prepare_cached(CACHE_PUT)?.execute(params![
        row.task_key,
        row.cache_key,
        row.inputs_hash,
        row.created,
        row.expires,
        row.result_location,
        row.serializer
    ])?;
    Ok(())
}

const CACHE_COLS: &str =
    "task_key, cache_key, inputs_hash, created, expires, result_location, serializer";

fn cache_row(r: &Row<'_>) -> rusqlite::Result<CacheRow> {
    Ok(CacheRow {
        task_key: r.get(0)?,
        cache_key: r.get(1)?,
        inputs_hash: r.get(2)?,
        created: r.get(3)?,
        expires: r.get(4)?,
        result_location: r.get(5)?,
        serializer: r.get(6)?,
    })
}

impl Store {
    /// Every row of the query `sql`, mapped by `f`, through the statement cache.
    fn rows<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.query_map(params, f)?.collect())
            .map_err(|e| self.err(e))
    }

    /// The most recently started flow runs, newest first.
    pub fn list_flow_runs(&self, limit: usize) -> Result<Vec<FlowRunRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.rows(
            &format!("SELECT {FLOW_COLS} FROM flow_runs ORDER BY started DESC, key DESC LIMIT ?1"),
            [limit],
            flow_row,
        )
    }

    /// The flow run with this id, or the only one whose id starts with it (like a
    /// git short id). `Ok(None)` when nothing matches (or the prefix is empty);
    /// [`StoreError::AmbiguousId`] when several do.
    pub fn flow_run(&self, id_or_prefix: &str) -> Result<Option<FlowRunRow>, StoreError> {
        if id_or_prefix.is_empty() {
            return Ok(None);
        }
        let exact = self
            .conn
            .prepare_cached(&format!("SELECT {FLOW_COLS} FROM flow_runs WHERE id = ?1"))
            .and_then(|mut s| s.query_row([id_or_prefix], flow_row).optional())
            .map_err(|e| self.err(e))?;
        if exact.is_some() {
            return Ok(exact);
        }
        // Ids sort together with their prefixes: the matches are the first rows
        // at or after the prefix, on the unique index.
        let ids: Vec<String> = self
            .rows(
                "SELECT id FROM flow_runs WHERE id >= ?1 ORDER BY id LIMIT 6",
                [id_or_prefix],
                |r| r.get::<_, String>(0),
            )?
            .into_iter()
            .take_while(|id| id.starts_with(id_or_prefix))
            .collect();
        match ids.as_slice() {
            [] => Ok(None),
            [only] => {
                let only = only.clone();
                self.flow_run(&only)
            }
            _ => Err(StoreError::AmbiguousId {
                prefix: id_or_prefix.to_string(),
                matches: ids.into_iter().take(5).collect(),
            }),
        }
    }

    /// The journal blobs of a flow run (by full id), oldest first.
    fn journal(&self, flow_run_id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        self.rows(
            "SELECT j.data FROM journal j JOIN flow_runs f ON j.flow_run = f.key \
             WHERE f.id = ?1 ORDER BY j.seq",
            [flow_run_id],
            |r| r.get::<_, Vec<u8>>(0),
        )
    }

    fn damaged(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    /// The task runs of a flow run (by full id), in run-id order, each in its
    /// latest state; empty when the flow run is unknown. In a flow run marked
    /// [`FLOW_INTERRUPTED`], a task run last seen `Running` reads as `Cancelled`,
    /// ended when the flow run's last record was written: its process is gone,
    /// so it is not running any more.
    pub fn task_runs(&self, flow_run_id: &str) -> Result<Vec<TaskRunRow>, StoreError> {
        let blobs = self.journal(flow_run_id)?;
        let (runs, names) =
            fold_blobs(blobs.iter().map(Vec::as_slice)).map_err(|d| self.damaged(d))?;
        let interrupted = self
            .conn
            .prepare_cached("SELECT ended FROM flow_runs WHERE id = ?1 AND state = ?2")
            .and_then(|mut s| {
                s.query_row(params![flow_run_id, FLOW_INTERRUPTED], |r| {
                    r.get::<_, Option<f64>>(0)
                })
                .optional()
            })
            .map_err(|e| self.err(e))?;
        Ok(runs
            .into_iter()
            .map(|(run, r)| {
                let mut row = task_run_row(run, r, &names);
                if let Some(ended) = interrupted
                    && row.state == StateKind::Running
                {
                    row.state = StateKind::Cancelled;
                    row.message = Some(INTERRUPTED_TASK_RUN.to_string());
                    row.ended = ended.or(row.started);
                }
                row
            })
            .collect())
    }

    /// When the last record of a flow run (by full id) was made: the latest
    /// task-run transition or log line, or its start when it has neither.
    /// `None` when the flow run is unknown.
    pub fn last_record_time(&self, flow_run_id: &str) -> Result<Option<f64>, StoreError> {
        let Some(started) = self
            .conn
            .prepare_cached("SELECT started FROM flow_runs WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row([flow_run_id], |r| r.get::<_, f64>(0))
                    .optional()
            })
            .map_err(|e| self.err(e))?
        else {
            return Ok(None);
        };
        let mut last = started;
        // Transition times grow from blob to blob: the newest blob holds the latest.
        let blob: Option<Vec<u8>> = self
            .conn
            .prepare_cached(
                "SELECT j.data FROM journal j JOIN flow_runs f ON j.flow_run = f.key \
                 WHERE f.id = ?1 ORDER BY j.seq DESC LIMIT 1",
            )
            .and_then(|mut s| s.query_row([flow_run_id], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))?;
        if let Some(blob) = blob
            && let Some(t) = last_time(&blob).map_err(|d| self.damaged(d))?
        {
            last = last.max(t);
        }
        let log: Option<f64> = self
            .conn
            .prepare_cached("SELECT max(time) FROM logs WHERE flow_run_id = ?1")
            .and_then(|mut s| s.query_row([flow_run_id], |r| r.get(0)))
            .map_err(|e| self.err(e))?;
        if let Some(t) = log {
            last = last.max(t);
        }
        Ok(Some(last))
    }

    /// What a flow run recorded after journal `seq` `journal_after` and log `rowid`
    /// `log_after`, read in one transaction: the next batch a reporter streams to a
    /// server (see `python/ferroflow/reporting.py`). At most about `max_bytes` of
    /// journal blobs (at least one) and `max_logs` log lines; `complete` is false when
    /// more is left. `None` for an unknown flow run.
    ///
    /// A reporter in the process that records the run must read through this, never
    /// through a second SQLite library: two copies of SQLite in one process do not see
    /// each other's POSIX locks on the same file.
    pub fn report_batch(
        &self,
        flow_run_id: &str,
        journal_after: i64,
        log_after: i64,
        max_bytes: usize,
        max_logs: usize,
    ) -> Result<Option<ReportBatch>, StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let found = tx
            .prepare_cached(&format!(
                "SELECT {FLOW_COLS}, key, structure FROM flow_runs WHERE id = ?1"
            ))
            .and_then(|mut s| {
                s.query_row([flow_run_id], |r| {
                    Ok((
                        flow_row(r)?,
                        r.get::<_, i64>(10)?,
                        r.get::<_, Option<String>>(11)?,
                    ))
                })
                .optional()
            })
            .map_err(|e| self.err(e))?;
        let Some((run, key, structure)) = found else {
            return Ok(None);
        };
        let mut journal = Vec::new();
        let mut size = 0usize;
        let mut complete = true;
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT seq, data FROM journal WHERE flow_run = ?1 AND seq > ?2 ORDER BY seq",
                )
                .map_err(|e| self.err(e))?;
            let mut rows = stmt
                .query(params![key, journal_after])
                .map_err(|e| self.err(e))?;
            while let Some(r) = rows.next().map_err(|e| self.err(e))? {
                let seq: i64 = r.get(0).map_err(|e| self.err(e))?;
                let data: Vec<u8> = r.get(1).map_err(|e| self.err(e))?;
                if !journal.is_empty() && size + data.len() > max_bytes {
                    complete = false;
                    break;
                }
                size += data.len();
                journal.push((seq, data));
            }
        }
        let limit = i64::try_from(max_logs).unwrap_or(i64::MAX);
        let logs = tx
            .prepare_cached(
                "SELECT rowid, task_run_id, level, time, message FROM logs \
                 WHERE flow_run_id = ?1 AND rowid > ?2 ORDER BY rowid LIMIT ?3",
            )
            .and_then(|mut s| {
                s.query_map(params![flow_run_id, log_after, limit], |r| {
                    Ok(ReportLog {
                        rowid: r.get(0)?,
                        run: r.get::<_, Option<u32>>(1)?.map(RunId),
                        level: r.get(2)?,
                        at: r.get(3)?,
                        message: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(|e| self.err(e))?;
        if logs.len() >= max_logs {
            complete = false;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(Some(ReportBatch {
            run,
            structure,
            journal,
            logs,
            complete,
        }))
    }

    /// The flow's structure recorded for a flow run (see
    /// [`super::Event::FlowStructure`]), if any.
    pub fn flow_structure(&self, flow_run_id: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .prepare_cached("SELECT structure FROM flow_runs WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row([flow_run_id], |r| r.get::<_, Option<String>>(0))
                    .optional()
            })
            .map(Option::flatten)
            .map_err(|e| self.err(e))
    }

    /// Every state transition of one task run, oldest first.
    pub fn transitions(
        &self,
        flow_run_id: &str,
        run: RunId,
    ) -> Result<Vec<TransitionRow>, StoreError> {
        let blobs = self.journal(flow_run_id)?;
        journal_transitions(blobs.iter().map(Vec::as_slice), run).map_err(|d| self.damaged(d))
    }

    /// The log lines of a flow run and its task runs, in the order written.
    pub fn logs(&self, flow_run_id: &str) -> Result<Vec<LogRow>, StoreError> {
        self.rows(
            "SELECT task_run_id, level, time, message FROM logs WHERE flow_run_id = ?1 \
             ORDER BY rowid",
            [flow_run_id],
            |r| {
                Ok(LogRow {
                    run: r.get::<_, Option<u32>>(0)?.map(RunId),
                    level: r.get(1)?,
                    at: r.get(2)?,
                    message: r.get(3)?,
                })
            },
        )
    }

    /// The finished task runs of a flow run that have a result location, in
    /// run-id order: what a resume may reuse (if the result can be read back).
    pub fn finished_task_runs_with_results(
        &self,
        flow_run_id: &str,
    ) -> Result<Vec<FinishedTaskRun>, StoreError> {
        let blobs = self.journal(flow_run_id)?;
        let (runs, names) =
            fold_blobs(blobs.iter().map(Vec::as_slice)).map_err(|d| self.damaged(d))?;
        Ok(runs
            .into_iter()
            .filter_map(|(run, r)| {
                let state = r.state.filter(|s| s.is_finished())?;
                Some(FinishedTaskRun {
                    run: RunId(run),
                    task: TaskId(r.task),
                    task_name: names.name(r.task),
                    map_index: r.map_index,
                    state,
                    result_location: r.result_location?,
                })
            })
            .collect())
    }

    /// Mark a flow run [`FLOW_INTERRUPTED`] with this message if it is still
    /// recorded as running, ended at its last record ([`Store::last_record_time`]):
    /// its duration stops growing. Returns whether it was.
    pub fn mark_interrupted(&self, id: &str, message: &str) -> Result<bool, StoreError> {
        let ended = self.last_record_time(id)?;
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE flow_runs SET state = ?2, message = ?3, ended = coalesce(ended, ?5) \
                 WHERE id = ?1 AND state = ?4",
            )
            .and_then(|mut s| {
                s.execute(params![id, FLOW_INTERRUPTED, message, FLOW_RUNNING, ended])
            })
            .map_err(|e| self.err(e))?;
        Ok(changed > 0)
    }

    /// Mark [`FLOW_INTERRUPTED`] every flow run recorded as running on `host` whose
    /// process is gone. A run recorded with its process's identity (see
    /// [`super::process_identity`]) is gone unless its pid is still that very
    /// process: a pid reused by another process, or the machine rebooted since,
    /// counts as gone. Otherwise `is_alive(pid)` tells (use
    /// [`super::pid_is_alive`]). Runs of other hosts, or without a pid, are left
    /// alone. Returns the ids marked.
    pub fn fixup_interrupted(
        &self,
        host: &str,
        mut is_alive: impl FnMut(u32) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        type Row = (String, Option<u32>, Option<String>);
        let running: Vec<Row> = self.rows(
            "SELECT id, pid, proc FROM flow_runs WHERE state = ?1 AND host = ?2",
            params![FLOW_RUNNING, host],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let mut marked = Vec::new();
        for (id, pid, identity) in running {
            let Some(pid) = pid else { continue };
            let gone = match identity {
                // The recording process's identity is known: the pid must still
                // be that process (not a reuse, not a pid after a reboot).
                Some(recorded) => super::process_identity(pid).as_deref() != Some(&recorded),
                None => !is_alive(pid),
            };
            if !gone {
                continue;
            }
            let message =
                format!("the process running it (pid {pid} on {host}) ended before it finished");
            if self.mark_interrupted(&id, &message)? {
                marked.push(id);
            }
        }
        Ok(marked)
    }

    /// The newest unexpired cache entry for this task and cache key at time
    /// `now`, if any.
    pub fn cache_get(
        &self,
        task_key: &str,
        cache_key: &str,
        now: f64,
    ) -> Result<Option<CacheRow>, StoreError> {
        Ok(self
            .cache_candidates(task_key, cache_key, now)?
            .into_iter()
            .next())
    }

    /// Every unexpired cache entry for this task and cache key at time `now`
    /// (one per inputs hash), newest first — for cache validators that compare
    /// inputs.
    pub fn cache_candidates(
        &self,
        task_key: &str,
        cache_key: &str,
        now: f64,
    ) -> Result<Vec<CacheRow>, StoreError> {
        self.rows(
            &format!(
                "SELECT {CACHE_COLS} FROM cache WHERE task_key = ?1 AND cache_key = ?2 \
                 AND (expires IS NULL OR expires > ?3) ORDER BY created DESC"
            ),
            params![task_key, cache_key, now],
            cache_row,
        )
    }

    /// Add a cache entry, replacing the one with the same task key, cache key
    /// and inputs hash. (A run can also send [`super::Event::CachePut`].)
    pub fn cache_put(&self, row: &CacheRow) -> Result<(), StoreError> {
        put_cache_row(&self.conn, row).map_err(|e| self.err(e))
    }
}
