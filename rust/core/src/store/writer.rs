//! The write side: [`Recorder`], its [`Event`]s, [`EventBuffer`] and the
//! writer thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{CachedStatement, Connection, OptionalExtension, params};

use super::journal::{Encoder, IdMap};
use super::{FLOW_RUNNING, StoreError, StoreOptions, open_connection};
use crate::{RunId, StateKind, TaskId};

/// The writer commits once this many records are pending, even before
/// [`StoreOptions::commit_interval`] has passed.
pub const MAX_BATCH_ROWS: usize = 1_000_000;

/// A task run to register (see [`Event::TaskRuns`]). It starts `Pending` with
/// run count 0.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTaskRun {
    /// The run's id in the run table.
    pub run: RunId,
    /// The task it runs.
    pub task: TaskId,
    /// The task's name (shared: a map's children all have their parent's).
    pub task_name: Arc<str>,
    /// The index of a mapped child, `None` for a task's own run.
    pub map_index: Option<u32>,
}

/// One state transition of a task run (see [`Event::Transition`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TransitionItem {
    /// The task run.
    pub run: RunId,
    /// The state it entered.
    pub state: StateKind,
    /// The state's message, if any (replaces the run's message).
    pub message: Option<String>,
    /// The run's attempt count after this transition.
    pub run_count: u32,
    /// When (seconds since the Unix epoch; stored to the microsecond).
    pub at: f64,
    /// Where the result was written, when this transition checkpointed it
    /// (`None` leaves an earlier location in place).
    pub result_location: Option<String>,
}

/// One log line (see [`Event::Logs`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    /// The task run it belongs to (`None`: the flow run's own line).
    pub run: Option<RunId>,
    /// The level, as Python's `logging` numbers it.
    pub level: i32,
    /// When (seconds since the Unix epoch).
    pub at: f64,
    /// The formatted message.
    pub message: String,
}

/// One record of a pack file (see [`Event::PackLocations`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackItem {
    /// The task run whose result it is.
    pub run: RunId,
    /// The byte offset of the payload in the pack file.
    pub offset: u64,
    /// The payload's length in bytes.
    pub length: u32,
}

/// Something to record. Flow runs are named by their text id. Every event about
/// a flow run must come after its [`Event::FlowRunStarted`] (from this recorder,
/// or already in the store); once a flow run is started through a recorder,
/// every task run must be registered through it ([`Event::TaskRuns`] or
/// [`Event::MapChildren`]) before its transitions.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A flow run starts (state `Running`). Sending it again for an existing id
    /// restarts that row (state `Running`, end cleared); its task runs are kept
    /// but must be registered again before new transitions.
    FlowRunStarted {
        /// The flow run's id (e.g. a UUID).
        id: Arc<str>,
        /// The flow's name.
        flow_name: String,
        /// The parameters as a JSON object, serialized by the caller.
        parameters_json: String,
        /// When it started.
        started: f64,
        /// The process running it (for the interrupted-run fixup).
        pid: u32,
        /// The machine running it.
        host: String,
        /// The flow run this one resumes, if any.
        resumed_from: Option<String>,
    },
    /// Register task runs (a run's tasks at the start, or any runs). Registering
    /// an existing run updates its task and map index and keeps its state and
    /// history. Consecutive runs of one task with consecutive map indexes are
    /// stored as one range.
    TaskRuns {
        /// The flow run.
        flow_run_id: Arc<str>,
        /// The runs.
        runs: Vec<NewTaskRun>,
    },
    /// Register the children of a mapped task in one go: runs `first_run ..
    /// first_run + count` of `task`, with map indexes `0 .. count` (the run
    /// table gives a map's children contiguous run ids). Costs the same for a
    /// million children as for one.
    MapChildren {
        /// The flow run.
        flow_run_id: Arc<str>,
        /// The mapped task.
        task: TaskId,
        /// Its name.
        task_name: Arc<str>,
        /// The run id of child 0.
        first_run: RunId,
        /// How many children.
        count: u32,
    },
    /// One task run changed state: its state, message and run count become
    /// these; `started` is the first `Running`; `ended` is set when finished and
    /// cleared otherwise; the transition is appended to its history.
    Transition {
        /// The flow run.
        flow_run_id: Arc<str>,
        /// The transition.
        item: TransitionItem,
    },
    /// Many transitions of one flow run at once, in order (cheaper than one
    /// event each).
    Transitions {
        /// The flow run.
        flow_run_id: Arc<str>,
        /// The transitions, in order.
        items: Vec<TransitionItem>,
    },
    /// Where a task run's result was written.
    ResultLocation {
        /// The flow run.
        flow_run_id: Arc<str>,
        /// The task run.
        run: RunId,
        /// The location (a path or URL, as the result backend names it).
        location: String,
    },
    /// Where many task runs' results were written in one pack file (see
    /// [`PackItem`]): each run's location becomes `"<pack>#<offset>:<length>"`.
    /// A few bytes per run in the store, against a full location string each.
    PackLocations {
        /// The flow run.
        flow_run_id: Arc<str>,
        /// The pack file's location (as the result backend names it).
        pack: Arc<str>,
        /// The records, in any order.
        items: Vec<PackItem>,
    },
    /// A log line of the flow run (`run: None`) or of one of its task runs.
    Log {
        /// The flow run.
        flow_run_id: Arc<str>,
        /// The task run, if any.
        run: Option<RunId>,
        /// The level, as Python's `logging` numbers it.
        level: i32,
        /// When.
        at: f64,
        /// The formatted message.
        message: String,
    },
    /// Many log lines of one flow run, in order: written in the same
    /// transaction as the other events of a commit (one prepared insert per
    /// line), never one transaction per line.
    Logs {
        /// The flow run.
        flow_run_id: Arc<str>,
        /// The lines.
        lines: Vec<LogLine>,
    },
    /// The flow's structure for this run, as JSON (the caller's format; resume
    /// compares it with the flow's structure then).
    FlowStructure {
        /// The flow run.
        id: Arc<str>,
        /// The structure as JSON text.
        structure_json: String,
    },
    /// A flow run ended in its final state.
    FlowRunEnded {
        /// The flow run.
        id: Arc<str>,
        /// Its final state.
        state: StateKind,
        /// The state's message.
        message: Option<String>,
        /// When it ended.
        ended: f64,
    },
    /// Add or replace a cache entry (keyed by task key, cache key and inputs hash).
    CachePut(super::CacheRow),
}

impl Event {
    /// How many records this event holds (for batch sizes and loss counts).
    fn rows(&self) -> usize {
        match self {
            Event::TaskRuns { runs, .. } => runs.len().max(1),
            Event::MapChildren { count, .. } => (*count as usize).max(1),
            Event::Transitions { items, .. } => items.len().max(1),
            Event::PackLocations { items, .. } => items.len().max(1),
            Event::Logs { lines, .. } => lines.len().max(1),
            _ => 1,
        }
    }
}

enum Msg {
    Event(Event),
    Events(Vec<Event>),
    /// Events of inbox generation `.0` wait: drain them by the next commit
    /// (see [`Recorder::post`]).
    Nudge(u64),
    /// The inbox of generation `.0` is large: drain it now (ignored when that
    /// generation was drained already).
    Drain(u64),
    Flush(Sender<()>),
    Close,
}

/// Events posted without a channel message each (see [`Recorder::post`]).
/// While `armed` (a nudge was sent, the inbox not yet drained), every event
/// goes here, so the writer sees all events in the order they were given: no
/// event message can enter the channel between a nudge and its drain.
#[derive(Default)]
struct Inbox {
    events: Vec<Event>,
    rows: usize,
    armed: bool,
    /// Counts arms: a drain request names the generation it is for.
    generation: u64,
    /// A drain request for this generation is on its way.
    kicked: bool,
}

/// An armed inbox holding this many records asks the writer to drain it at
/// once (a run loop's full batches are encoded while the run goes on, not all
/// at the commit).
const DRAIN_ROWS: usize = 8192;

impl Inbox {
    /// Add events while armed; a message to send, if any.
    fn add(&mut self, events: impl IntoIterator<Item = Event>) -> Option<Msg> {
        for e in events {
            self.rows += e.rows();
            self.events.push(e);
        }
        if !self.armed {
            self.armed = true;
            self.generation += 1;
            return Some(Msg::Nudge(self.generation));
        }
        if self.rows >= DRAIN_ROWS && !self.kicked {
            self.kicked = true;
            return Some(Msg::Drain(self.generation));
        }
        None
    }

    fn take(&mut self) -> Vec<Event> {
        self.armed = false;
        self.kicked = false;
        self.rows = 0;
        std::mem::take(&mut self.events)
    }
}

/// What the writer thread shares with the recorder: the first error and the
/// count of records it could not write.
struct Shared {
    path: PathBuf,
    error: Mutex<Option<StoreError>>,
    lost: AtomicU64,
    inbox: Mutex<Inbox>,
}

impl Shared {
    /// Keep the first error, except that a fatal error replaces a rejected event.
    fn record(&self, e: StoreError) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        let replace = match &*slot {
            None => true,
            Some(old) => !old.is_fatal() && e.is_fatal(),
        };
        if replace {
            *slot = Some(e);
        }
    }

    fn error(&self) -> Option<StoreError> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lose(&self, n: usize) {
        self.lost.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn result(&self) -> Result<(), StoreError> {
        match self.error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopped(&self) -> StoreError {
        StoreError::WriterStopped {
            path: self.path.clone(),
        }
    }

    /// The writer is gone: `n` records could not be handed to it.
    fn stopped_losing(&self, n: usize) {
        self.lose(n);
        self.record(self.stopped());
    }
}

/// The write side of the store: one writer thread fed through a channel.
///
/// [`Recorder::send`] never blocks. [`Recorder::flush`] waits until everything
/// sent before it is committed; [`Recorder::close`] flushes and stops the thread
/// (dropping a recorder does the same, discarding the result). `Recorder` is
/// `Send + Sync`: share it by reference or in an `Arc` to send from several
/// threads. Each send is a channel operation; a hot loop should collect its
/// events in an [`EventBuffer`] (or send [`Event::Transitions`]).
pub struct Recorder {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.shared.path)
            .field("lost", &self.lost())
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Open the store at `path` (creating it if needed) and start the writer
    /// thread. Every error [`super::Store::open`] can give is returned here,
    /// before anything is recorded.
    pub fn start(path: &Path) -> Result<Recorder, StoreError> {
        Recorder::start_with(path, &StoreOptions::default())
    }

    /// [`Recorder::start`] with explicit options.
    pub fn start_with(path: &Path, options: &StoreOptions) -> Result<Recorder, StoreError> {
        let conn = open_connection(path, options)?;
        // The writer checkpoints the WAL itself, between commits (see
        // `CHECKPOINT_BYTES`), so that a flush never waits for one.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| StoreError::from_sqlite(path, e))?;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            error: Mutex::new(None),
            lost: AtomicU64::new(0),
            inbox: Mutex::new(Inbox::default()),
        });
        let (tx, rx) = mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let interval = options.commit_interval;
        let thread = std::thread::Builder::new()
            .name("ferroflow-store".into())
            .spawn(move || writer_main(&conn, &rx, &thread_shared, interval))
            .map_err(|e| StoreError::from_io(path, &e))?;
        Ok(Recorder {
            tx,
            shared,
            thread: Some(thread),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Queue an event. Never blocks; a failure to write it shows up in
    /// [`Recorder::flush`], [`Recorder::close`], [`Recorder::error`] and
    /// [`Recorder::lost`].
    pub fn send(&self, event: Event) {
        self.queue([event], |[e]| e.rows(), |[e]| Msg::Event(e));
    }

    /// Queue several events, in order, as one channel message.
    pub fn send_all(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.queue(
            events,
            |events| events.iter().map(Event::rows).sum(),
            Msg::Events,
        );
    }

    /// Send `events` as the channel message `msg` makes of them, or append
    /// them to the inbox while it is armed (so that they stay behind the events
    /// posted before them; see [`Inbox`]). `rows` counts their records, for
    /// the loss count when the writer is gone.
    fn queue<E: IntoIterator<Item = Event>>(
        &self,
        events: E,
        rows: impl FnOnce(&E) -> usize,
        msg: impl FnOnce(E) -> Msg,
    ) {
        let mut inbox = self.shared.inbox();
        if inbox.armed {
            if let Some(m) = inbox.add(events) {
                self.control(&mut inbox, m);
            }
            return;
        }
        let n = rows(&events);
        if self.tx.send(msg(events)).is_err() {
            self.shared.stopped_losing(n);
        }
    }

    /// Queue events through an inbox the writer drains at its next commit
    /// (within the commit interval; at once when it grows past a few thousand
    /// records), or before a flush. The first post after a drain sends one
    /// message; later posts (and sends) only take a lock and append. For loops
    /// that hand over small batches often (a run loop before each slow call):
    /// they pay a channel operation per commit, not per batch.
    pub fn post(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut inbox = self.shared.inbox();
        if let Some(msg) = inbox.add(events) {
            self.control(&mut inbox, msg);
        }
    }

    /// Send an inbox message (with the inbox locked, so messages keep order).
    fn control(&self, inbox: &mut Inbox, msg: Msg) {
        if self.tx.send(msg).is_err() {
            let lost = inbox.take();
            self.shared
                .stopped_losing(lost.iter().map(Event::rows).sum());
        }
    }

    /// Wait until every event sent before this call is committed (or has failed).
    /// Returns the first error the writer met, if any — also one met earlier.
    pub fn flush(&self) -> Result<(), StoreError> {
        let (reply_tx, reply_rx) = mpsc::channel();
        if self.tx.send(Msg::Flush(reply_tx)).is_err() || reply_rx.recv().is_err() {
            self.shared.record(self.shared.stopped());
        }
        self.shared.result()
    }

    /// The first error the writer met so far, if any.
    pub fn error(&self) -> Option<StoreError> {
        self.shared.error()
    }

    /// How many records (task-run registrations, transitions, log lines, ...)
    /// could not be written so far.
    pub fn lost(&self) -> u64 {
        self.shared.lost.load(Ordering::Relaxed)
    }

    /// Commit everything sent, stop the writer thread and return the first error
    /// it met, if any.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), StoreError> {
        if let Some(thread) = self.thread.take() {
            let _ = self.tx.send(Msg::Close);
            if thread.join().is_err() {
                self.shared.record(self.shared.stopped());
            }
        }
        self.shared.result()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn same_id(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

/// Collects events on the caller's side and hands them to a [`Recorder`] as one
/// channel message per `limit` records, so that a hot loop pays a `Vec::push`
/// per event instead of a channel operation.
///
/// Call [`EventBuffer::send`] whenever the loop is about to wait (and before
/// [`Recorder::flush`] / [`Recorder::close`]): buffered events are not seen by
/// the writer until then. Dropping a buffer discards what it holds.
#[derive(Debug)]
pub struct EventBuffer {
    events: Vec<Event>,
    rows: usize,
    limit: usize,
}

impl Default for EventBuffer {
    fn default() -> Self {
        EventBuffer::new()
    }
}

impl EventBuffer {
    /// A buffer that sends every 8192 records.
    pub fn new() -> EventBuffer {
        EventBuffer::with_limit(8192)
    }

    /// A buffer that sends every `limit` records (at least 1).
    pub fn with_limit(limit: usize) -> EventBuffer {
        EventBuffer {
            events: Vec::new(),
            rows: 0,
            limit: limit.max(1),
        }
    }

    /// Add an event; sends the buffer to `recorder` when it is full.
    ///
    /// Consecutive transitions (or task-run registrations) of one flow run are
    /// merged into one [`Event::Transitions`] (or [`Event::TaskRuns`]).
    pub fn push(&mut self, recorder: &Recorder, event: Event) {
        self.rows += event.rows();
        let event = match (self.events.last_mut(), event) {
            (
                Some(Event::Transitions { flow_run_id, items }),
                Event::Transition {
                    flow_run_id: id,
                    item,
                },
            ) if same_id(flow_run_id, &id) => {
                items.push(item);
                None
            }
            (
                Some(Event::TaskRuns { flow_run_id, runs }),
                Event::TaskRuns {
                    flow_run_id: id,
                    runs: more,
                },
            ) if same_id(flow_run_id, &id) => {
                runs.extend(more);
                None
            }
            (_, Event::Transition { flow_run_id, item }) => Some(Event::Transitions {
                flow_run_id,
                items: vec![item],
            }),
            (_, event) => Some(event),
        };
        if let Some(event) = event {
            self.events.push(event);
        }
        if self.rows >= self.limit {
            self.send(recorder);
        }
    }

    /// Send what is buffered to `recorder`.
    pub fn send(&mut self, recorder: &Recorder) {
        if let Some(events) = self.take() {
            recorder.send_all(events);
        }
    }

    /// Hand what is buffered to `recorder` without waking its writer (see
    /// [`Recorder::post`]).
    pub fn post(&mut self, recorder: &Recorder) {
        if let Some(events) = self.take() {
            recorder.post(events);
        }
    }

    /// Empty the buffer; `None` when there is nothing in it.
    fn take(&mut self) -> Option<Vec<Event>> {
        if self.events.is_empty() {
            return None;
        }
        self.rows = 0;
        Some(std::mem::take(&mut self.events))
    }

    /// How many events are buffered.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

// ---------------------------------------------------------------------------
// The writer thread.
//
// Events are gathered in memory for up to one commit interval (or
// MAX_BATCH_ROWS records, or until a flush), then written in one transaction.
// Task-run events (registrations, transitions, result locations) are encoded as
// they arrive into one compact journal blob per flow run (see `journal`), so a
// commit writes one row per flow run however many task runs changed. Flow-run
// events, logs and cache entries are few and are written as rows, in order.

/// Insert one log line (see the `logs` table in the module docs).
const INSERT_LOG: &str = "INSERT INTO logs(flow_run_id, task_run_id, level, time, message) \
     VALUES (?1, ?2, ?3, ?4, ?5)";

/// Log lines per multi-row insert (a statement per line costs about twice as much).
const LOG_ROWS_PER_INSERT: usize = 64;

/// `INSERT INTO logs ... VALUES (...), (...)` with `rows` rows.
fn insert_logs_sql(rows: usize) -> String {
    let mut sql =
        String::from("INSERT INTO logs(flow_run_id, task_run_id, level, time, message) VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?)");
    }
    sql
}

/// Insert the log lines of one flow run (in order); returns roughly how many bytes
/// they add to the WAL.
fn write_log_lines(
    conn: &Connection,
    flow_run_id: &str,
    lines: &[LogLine],
) -> rusqlite::Result<usize> {
    let mut bytes = 0;
    let mut chunks = lines.chunks_exact(LOG_ROWS_PER_INSERT);
    if lines.len() >= LOG_ROWS_PER_INSERT {
        let mut insert = conn.prepare_cached(&insert_logs_sql(LOG_ROWS_PER_INSERT))?;
        for chunk in &mut chunks {
            let mut values: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(chunk.len() * 5);
            let runs: Vec<Option<u32>> = chunk.iter().map(|l| l.run.map(|r| r.0)).collect();
            for (line, run) in chunk.iter().zip(&runs) {
                values.push(&flow_run_id);
                values.push(run);
                values.push(&line.level);
                values.push(&line.at);
                values.push(&line.message);
                bytes += 64 + line.message.len();
            }
            insert.execute(values.as_slice())?;
        }
    }
    let mut insert = conn.prepare_cached(INSERT_LOG)?;
    for line in chunks.remainder() {
        insert.execute(params![
            flow_run_id,
            line.run.map(|r| r.0),
            line.level,
            line.at,
            line.message
        ])?;
        bytes += 64 + line.message.len();
    }
    Ok(bytes)
}

/// The writer copies the WAL back into the database (a passive checkpoint)
/// after a commit once about this many bytes were written since the last one;
/// SQLite's own checkpoint after every 4 MiB would run inside commits, on the
/// path of a flush. The last connection to close checkpoints what is left.
const CHECKPOINT_BYTES: usize = 64 << 20;

/// A set of run ids: a bitmap in pages of 65,536 runs.
#[derive(Default)]
struct RunSet {
    pages: Vec<Option<Box<[u64; 1024]>>>,
}

impl RunSet {
    /// Where a run's bit is: `(page, word in the page, bit in the word)`.
    fn locate(run: u32) -> (usize, usize, u32) {
        ((run >> 16) as usize, ((run >> 6) & 1023) as usize, run & 63)
    }

    fn insert(&mut self, run: u32) {
        let (page, word, bit) = RunSet::locate(run);
        if self.pages.len() <= page {
            self.pages.resize_with(page + 1, || None);
        }
        let p = self.pages[page].get_or_insert_with(|| Box::new([0; 1024]));
        p[word] |= 1 << bit;
    }

    fn insert_range(&mut self, first: u32, count: u32) {
        for i in 0..count {
            match first.checked_add(i) {
                Some(run) => self.insert(run),
                None => break,
            }
        }
    }

    fn contains(&self, run: u32) -> bool {
        let (page, word, bit) = RunSet::locate(run);
        match self.pages.get(page) {
            Some(Some(p)) => p[word] & (1 << bit) != 0,
            _ => false,
        }
    }
}

/// What the writer knows about one flow run, for its lifetime.
#[derive(Default)]
struct FlowInfo {
    /// Its key in `flow_runs`, once known.
    key: Option<i64>,
    /// Tasks whose name is already in the journal.
    named: IdMap<u32, ()>,
    /// Task runs registered through this writer.
    registered: RunSet,
    /// Whether the flow run was started through this writer: then every task
    /// run must be registered here before anything else is said about it.
    checked: bool,
}

/// An event that is written as a row, in arrival order.
enum Op {
    FlowStart(Event),
    FlowEnd(Event),
    FlowStructure(Event),
    Log(Event),
    Logs(Event),
    CachePut(super::CacheRow),
}

/// The journal blob of one flow run in the pending batch.
struct Slot {
    flow: usize,
    enc: Encoder,
    /// Records encoded (0: nothing to write).
    records: usize,
}

/// Events the writer rejected (caller bugs): what to report and how many
/// records were dropped.
#[derive(Default)]
struct Rejects {
    first: Option<String>,
    lost: usize,
}

impl Rejects {
    fn add(&mut self, detail: impl FnOnce() -> String, lost: usize) {
        if self.first.is_none() {
            self.first = Some(detail());
        }
        self.lost += lost;
    }
}

fn unknown_flow_run(id: &str) -> String {
    format!("an event names flow run '{id}', which was never started (send FlowRunStarted first)")
}

fn unregistered(id: &str, run: u32) -> String {
    format!(
        "an event names task run {run} of flow run '{id}', which was never registered (send \
         TaskRuns or MapChildren first)"
    )
}

/// Everything gathered for the next transaction.
#[derive(Default)]
struct Pending {
    slots: Vec<Slot>,
    ops: Vec<Op>,
    rejects: Rejects,
    records: usize,
    since: Option<Instant>,
}

/// The writer thread's state.
struct Writer<'c> {
    conn: &'c Connection,
    shared: &'c Shared,
    /// Flow runs by id → index into `flows`.
    index: HashMap<Arc<str>, usize>,
    flows: Vec<(Arc<str>, FlowInfo)>,
    pending: Pending,
    /// Set after a fatal error: nothing more is written, only counted.
    poisoned: bool,
    /// Roughly how many bytes went into the WAL since the last checkpoint.
    since_checkpoint: usize,
}

impl Writer<'_> {
    fn flow(&mut self, id: &Arc<str>) -> usize {
        if let Some(&i) = self.index.get(id) {
            return i;
        }
        self.flows.push((Arc::clone(id), FlowInfo::default()));
        self.index.insert(Arc::clone(id), self.flows.len() - 1);
        self.flows.len() - 1
    }

    /// The pending slot of a flow run (few per batch: a scan beats hashing).
    fn slot(&mut self, id: &Arc<str>) -> usize {
        let found = self
            .pending
            .slots
            .iter()
            .rposition(|s| same_id(&self.flows[s.flow].0, id));
        match found {
            Some(i) => i,
            None => {
                let flow = self.flow(id);
                self.pending.slots.push(Slot {
                    flow,
                    enc: Encoder::new(),
                    records: 0,
                });
                self.pending.slots.len() - 1
            }
        }
    }

    fn name_task(&mut self, slot: usize, task: u32, name: &str) {
        let s = &mut self.pending.slots[slot];
        let info = &mut self.flows[s.flow].1;
        if info.named.insert(task, ()).is_none() {
            s.enc.task_name(task, name);
        }
    }

    /// Fold one event into the pending batch.
    fn add(&mut self, mut event: Event) {
        super::mask::event(&mut event);
        let n = event.rows();
        self.pending.records += n;
        if self.pending.since.is_none() {
            self.pending.since = Some(Instant::now());
        }
        match event {
            Event::FlowRunStarted { ref id, .. } => {
                let f = self.flow(id);
                let info = &mut self.flows[f].1;
                info.checked = true;
                info.registered = RunSet::default();
                self.pending.ops.push(Op::FlowStart(event));
            }
            Event::TaskRuns { flow_run_id, runs } => {
                let slot = self.slot(&flow_run_id);
                let mut i = 0;
                while i < runs.len() {
                    let r0 = &runs[i];
                    self.name_task(slot, r0.task.0, &r0.task_name);
                    // A stretch of consecutive runs of one task with consecutive
                    // map indexes is one range record.
                    let mut j = i + 1;
                    while let Some(r) = runs.get(j) {
                        let k = (j - i) as u64;
                        let next_run = u64::from(r0.run.0) + k == u64::from(r.run.0);
                        let next_index = match (r0.map_index, r.map_index) {
                            (Some(a), Some(b)) => u64::from(a) + k == u64::from(b),
                            _ => false,
                        };
                        if r.task != r0.task || !next_run || !next_index {
                            break;
                        }
                        j += 1;
                    }
                    let count = (j - i) as u32;
                    let enc = &mut self.pending.slots[slot].enc;
                    if count == 1 {
                        enc.register(r0.run.0, r0.task.0, r0.map_index);
                    } else {
                        enc.register_range(r0.run.0, count, r0.task.0, r0.map_index);
                    }
                    self.registered(slot, r0.run.0, count, count as usize);
                    i = j;
                }
            }
            Event::MapChildren {
                flow_run_id,
                task,
                task_name,
                first_run,
                count,
            } => {
                let slot = self.slot(&flow_run_id);
                self.name_task(slot, task.0, &task_name);
                self.pending.slots[slot]
                    .enc
                    .register_range(first_run.0, count, task.0, Some(0));
                self.registered(slot, first_run.0, count, n);
            }
            Event::Transition { flow_run_id, item } => {
                let slot = self.slot(&flow_run_id);
                self.transition(slot, &item);
            }
            Event::Transitions { flow_run_id, items } => {
                let slot = self.slot(&flow_run_id);
                for item in &items {
                    self.transition(slot, item);
                }
            }
            Event::ResultLocation {
                flow_run_id,
                run,
                location,
            } => {
                let slot = self.slot(&flow_run_id);
                if self.check(slot, run.0) {
                    let s = &mut self.pending.slots[slot];
                    s.enc.result_location(run.0, &location);
                    s.records += 1;
                }
            }
            Event::PackLocations {
                flow_run_id,
                pack,
                items,
            } => {
                let slot = self.slot(&flow_run_id);
                let kept: Vec<PackItem> = items
                    .into_iter()
                    .filter(|it| self.check(slot, it.run.0))
                    .collect();
                if !kept.is_empty() {
                    let s = &mut self.pending.slots[slot];
                    s.enc.pack_locations(&pack, &kept);
                    s.records += kept.len();
                }
            }
            e @ Event::FlowRunEnded { .. } => self.pending.ops.push(Op::FlowEnd(e)),
            e @ Event::Log { .. } => self.pending.ops.push(Op::Log(e)),
            e @ Event::Logs { .. } => self.pending.ops.push(Op::Logs(e)),
            e @ Event::FlowStructure { .. } => self.pending.ops.push(Op::FlowStructure(e)),
            Event::CachePut(row) => self.pending.ops.push(Op::CachePut(row)),
        }
    }

    /// Runs `first .. first + count` were encoded as registered (as `records`
    /// records) in `slot`: later events may name them.
    fn registered(&mut self, slot: usize, first: u32, count: u32, records: usize) {
        let s = &mut self.pending.slots[slot];
        s.records += records;
        self.flows[s.flow].1.registered.insert_range(first, count);
    }

    /// Whether a task run may be written about (rejects it otherwise).
    fn check(&mut self, slot: usize, run: u32) -> bool {
        let info = &self.flows[self.pending.slots[slot].flow];
        if !info.1.checked || info.1.registered.contains(run) {
            return true;
        }
        let id = &info.0;
        self.pending.rejects.add(|| unregistered(id, run), 1);
        false
    }

    fn transition(&mut self, slot: usize, t: &TransitionItem) {
        if self.check(slot, t.run.0) {
            let s = &mut self.pending.slots[slot];
            s.enc.transition(
                t.run.0,
                t.state,
                t.run_count,
                t.at,
                t.message.as_deref(),
                t.result_location.as_deref(),
            );
            s.records += 1;
        }
    }

    /// The key of a flow run, from the writer's memory or the store.
    fn key(
        &mut self,
        flow: usize,
        lookup: &mut CachedStatement<'_>,
    ) -> rusqlite::Result<Option<i64>> {
        let (id, info) = &mut self.flows[flow];
        if info.key.is_none() {
            info.key = lookup.query_row([&**id], |r| r.get(0)).optional()?;
        }
        Ok(info.key)
    }

    /// Write the pending batch in one transaction.
    fn commit(&mut self) {
        let mut pending = std::mem::take(&mut self.pending);
        if pending.records == 0 {
            return;
        }
        if self.poisoned {
            self.shared.lose(pending.records);
            return;
        }
        let records = pending.records;
        let result = self.conn.execute_batch("BEGIN IMMEDIATE").and_then(|()| {
            let written = self
                .write(&mut pending)
                .and_then(|bytes| self.conn.execute_batch("COMMIT").map(|()| bytes));
            if written.is_err() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            written
        });
        match result {
            Ok(bytes) => {
                self.since_checkpoint += bytes;
                if self.since_checkpoint >= CHECKPOINT_BYTES {
                    self.since_checkpoint = 0;
                    // Passive: never waits for readers. A failure loses nothing
                    // (the pages stay in the WAL), so it is not reported.
                    let _ = self
                        .conn
                        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                }
                if let Some(detail) = pending.rejects.first {
                    self.shared.lose(pending.rejects.lost);
                    self.shared.record(StoreError::Invalid {
                        path: self.shared.path.clone(),
                        detail,
                    });
                }
            }
            Err(e) => {
                self.poisoned = true;
                self.shared.lose(records);
                self.shared
                    .record(StoreError::from_sqlite(&self.shared.path, e));
            }
        }
    }

    /// Write the batch; returns roughly how many bytes it added to the WAL.
    fn write(&mut self, pending: &mut Pending) -> rusqlite::Result<usize> {
        let conn = self.conn;
        // Every row-level op dirties at least a page.
        let mut bytes = pending.ops.len() * 4096;
        let mut flow_key = conn.prepare_cached("SELECT key FROM flow_runs WHERE id = ?1")?;
        for op in std::mem::take(&mut pending.ops) {
            match op {
                Op::FlowStart(Event::FlowRunStarted {
                    id,
                    flow_name,
                    parameters_json,
                    started,
                    pid,
                    host,
                    resumed_from,
                }) => {
                    let key: i64 = conn
                        .prepare_cached(
                            "INSERT INTO flow_runs(id, flow_name, parameters, state, started, \
                             pid, host, resumed_from, proc) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                             ON CONFLICT(id) DO UPDATE SET flow_name = excluded.flow_name, \
                             parameters = excluded.parameters, state = excluded.state, \
                             message = NULL, started = excluded.started, ended = NULL, \
                             pid = excluded.pid, host = excluded.host, \
                             resumed_from = excluded.resumed_from, proc = excluded.proc \
                             RETURNING key",
                        )?
                        .query_row(
                            params![
                                &*id,
                                flow_name,
                                parameters_json,
                                FLOW_RUNNING,
                                started,
                                pid,
                                host,
                                resumed_from,
                                // Known for this process only; another pid's
                                // run falls back to the pid check.
                                (pid == std::process::id())
                                    .then(super::own_identity)
                                    .flatten()
                            ],
                            |r| r.get(0),
                        )?;
                    let f = self.flow(&id);
                    self.flows[f].1.key = Some(key);
                }
                Op::FlowEnd(Event::FlowRunEnded {
                    id,
                    state,
                    message,
                    ended,
                }) => {
                    let f = self.flow(&id);
                    match self.key(f, &mut flow_key)? {
                        Some(key) => {
                            conn.prepare_cached(
                                "UPDATE flow_runs SET state = ?2, message = ?3, ended = ?4 \
                                 WHERE key = ?1",
                            )?
                            .execute(params![
                                key,
                                state.name(),
                                message,
                                ended
                            ])?;
                        }
                        None => pending.rejects.add(|| unknown_flow_run(&id), 1),
                    }
                }
                Op::Log(Event::Log {
                    flow_run_id,
                    run,
                    level,
                    at,
                    message,
                }) => {
                    let f = self.flow(&flow_run_id);
                    match self.key(f, &mut flow_key)? {
                        Some(_) => {
                            conn.prepare_cached(INSERT_LOG)?.execute(params![
                                &*flow_run_id,
                                run.map(|r| r.0),
                                level,
                                at,
                                message
                            ])?;
                        }
                        None => pending.rejects.add(|| unknown_flow_run(&flow_run_id), 1),
                    }
                }
                Op::Logs(Event::Logs { flow_run_id, lines }) => {
                    let f = self.flow(&flow_run_id);
                    match self.key(f, &mut flow_key)? {
                        Some(_) => {
                            bytes += write_log_lines(conn, &flow_run_id, &lines)?;
                        }
                        None => pending
                            .rejects
                            .add(|| unknown_flow_run(&flow_run_id), lines.len()),
                    }
                }
                Op::FlowStructure(Event::FlowStructure { id, structure_json }) => {
                    let f = self.flow(&id);
                    match self.key(f, &mut flow_key)? {
                        Some(key) => {
                            conn.prepare_cached(
                                "UPDATE flow_runs SET structure = ?2 WHERE key = ?1",
                            )?
                            .execute(params![key, structure_json])?;
                        }
                        None => pending.rejects.add(|| unknown_flow_run(&id), 1),
                    }
                }
                Op::CachePut(row) => super::read::put_cache_row(conn, &row)?,
                // `Writer::add` builds each op from its own variant.
                Op::FlowStart(_)
                | Op::FlowEnd(_)
                | Op::FlowStructure(_)
                | Op::Log(_)
                | Op::Logs(_) => {}
            }
        }
        let mut insert =
            conn.prepare_cached("INSERT INTO journal(flow_run, data) VALUES (?1, ?2)")?;
        for slot in std::mem::take(&mut pending.slots) {
            if slot.records == 0 {
                continue;
            }
            match self.key(slot.flow, &mut flow_key)? {
                Some(key) => {
                    let blob = slot.enc.finish();
                    bytes += blob.len() + 4096;
                    insert.execute(params![key, blob])?;
                }
                None => {
                    let id = self.flows[slot.flow].0.to_string();
                    pending.rejects.add(|| unknown_flow_run(&id), slot.records);
                }
            }
        }
        Ok(bytes)
    }
}

/// The writer thread: gather events for up to one commit interval (or
/// [`MAX_BATCH_ROWS`] records, or until a flush or close), write them in one
/// transaction, answer flushes, repeat until closed.
fn writer_main(conn: &Connection, rx: &Receiver<Msg>, shared: &Shared, interval: Duration) {
    let mut writer = Writer {
        conn,
        shared,
        index: HashMap::new(),
        flows: Vec::new(),
        pending: Pending::default(),
        poisoned: false,
        since_checkpoint: 0,
    };
    // The inbox generation announced and not drained yet.
    let mut nudged: Option<u64> = None;
    let drain = |writer: &mut Writer<'_>, nudged: &mut Option<u64>| {
        if nudged.take().is_some() {
            let posted = shared.inbox().take();
            for event in posted {
                writer.add(event);
            }
        }
    };
    loop {
        let msg = match writer.pending.since {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(since) => {
                let left = interval.saturating_sub(since.elapsed());
                if left.is_zero() {
                    Err(RecvTimeoutError::Timeout)
                } else {
                    rx.recv_timeout(left)
                }
            }
        };
        match msg {
            Ok(Msg::Nudge(generation)) => {
                nudged = Some(generation);
                // Drained at the next commit at the latest.
                writer.pending.since.get_or_insert_with(Instant::now);
                continue;
            }
            Ok(Msg::Drain(generation)) => {
                if nudged == Some(generation) {
                    drain(&mut writer, &mut nudged);
                }
            }
            // While nudged, no event message can be in the channel (events go
            // to the inbox until it is drained): what arrives now is a flush,
            // a close or the commit timer, and the posted events come first.
            _ => drain(&mut writer, &mut nudged),
        }
        match msg {
            Ok(Msg::Nudge(_) | Msg::Drain(_)) => {}
            Ok(Msg::Event(event)) => writer.add(event),
            Ok(Msg::Events(events)) => {
                for event in events {
                    writer.add(event);
                }
            }
            Ok(Msg::Flush(reply)) => {
                writer.commit();
                let _ = reply.send(());
            }
            Ok(Msg::Close) | Err(RecvTimeoutError::Disconnected) => {
                writer.commit();
                return;
            }
            Err(RecvTimeoutError::Timeout) => writer.commit(),
        }
        if writer.pending.records >= MAX_BATCH_ROWS {
            writer.commit();
        }
    }
}
