//! The run store: an embedded SQLite database (WAL) that records flow runs, task
//! runs with every state transition, logs, result locations and the cache index.
//!
//! # Layout
//!
//! One file, `$FERROFLOW_HOME/ferroflow.db` (default `~/.ferroflow/ferroflow.db`,
//! see [`default_store_path`]). The schema version lives in `PRAGMA user_version`;
//! a store written by a newer ferroflow is refused with
//! [`StoreError::NewerSchema`], never rewritten. Tables:
//!
//! - `flow_runs`: one row per flow run (text id, flow name, parameters as JSON,
//!   state, message, start and end, pid, host and the process's identity, see
//!   [`process_identity`], and the flow's structure as JSON for resume rules,
//!   see [`Event::FlowStructure`]), with an integer `key` that the journal
//!   refers to;
//! - `journal`: the task runs of each flow run, as an append-only sequence of
//!   compact binary blobs (registrations, state transitions with messages,
//!   result locations; format in the `journal` module). Readers fold it back
//!   into one row per task run ([`Store::task_runs`]) and a history per task run
//!   ([`Store::transitions`]);
//! - `logs`: one row per log line: `flow_run_id` (the flow run's text id),
//!   `task_run_id` (the task run's id in the flow run's run table, NULL for a
//!   line of the flow run itself), `level` (as Python's `logging` numbers it),
//!   `time` (seconds since the Unix epoch) and `message`. Lines arrive in
//!   batches ([`Event::Logs`]) and are written with the other records of a
//!   commit; the same shape is what a server ingests;
//! - `cache`: the cache index, one row per task key, cache key and inputs hash;
//! - the platform tables (schema version 4, `platform.sql`): `projects`, `flows`
//!   (one row per registered version), `schedules`, `agents`, `audit`, and the
//!   columns of `flow_runs` that a server-created run fills (its flow, state
//!   version, labels, scheduled start). The server (`ferroflow server start`)
//!   uses the same store: this module creates and upgrades those tables in
//!   SQLite, the server's PostgreSQL dialect keeps the same ones, and a test
//!   fails if the two drift;
//! - version 5 (`v5_auth.sql`): `tokens` (API tokens, hashed), `sessions` (signed-in
//!   browsers), the request's address on `audit`, the agent's token on `agents`.
//! - the operations tables (schema version 6, `v6_ops.sql`): `backfills`,
//!   `flow_limits`, `task_tag_limits`, `task_slots`, `notify_rules`,
//!   `notifications`, and `flow_runs.backfill_id`;
//! - `secrets` (schema version 7, `v7_secrets.sql`): name, Fernet ciphertext,
//!   created, updated; the key is never in the store;
//! - version 8 (`v8_log_index.sql`): indexes on `logs` by time, by task run and (warnings
//!   and worse) by level, so a page of a big run's logs is read without a sort.
//!
//! A new store is created with `auto_vacuum = INCREMENTAL`, so that pruning old
//! runs can give the space back in small steps (see
//! `python/ferroflow/server/retention.py`).
//!
//! Every message and log line the writer records first goes through [`mask`]:
//! the secret values a process has read are replaced with `****`.
//!
//! # Migrations
//!
//! `PRAGMA user_version` is the schema version. Opening a store runs, in one
//! immediate transaction, every step of `MIGRATIONS` newer than the file's
//! version; every row already there stays. A store newer than this build is
//! refused untouched.
//!
//! Task runs are journaled rather than kept one row per task run because a run
//! may have a million of them, each changing state two or three times within
//! milliseconds: a row write per change costs a microsecond or more, the run
//! loop a fraction of that per task run.
//!
//! # Writing: one thread, batched transactions
//!
//! A run never talks to SQLite itself. It starts a [`Recorder`], which opens its
//! own connection (so a bad store is reported before anything runs) and hands it
//! to one writer thread. The run sends [`Event`]s through an unbounded
//! `std::sync::mpsc` channel: [`Recorder::send`] never blocks and never touches
//! the disk (an [`EventBuffer`] makes it one `Vec::push` per event). The writer
//! gathers events for up to [`StoreOptions::commit_interval`] (100 ms), encoding
//! task-run events into one journal blob per flow run as they arrive, then
//! writes the batch in one `BEGIN IMMEDIATE ... COMMIT` transaction with cached
//! prepared statements: a handful of rows however many task runs changed.
//! [`Recorder::flush`] commits at once and waits for it.
//!
//! Errors are never silent: the writer keeps the first error (a fatal SQLite
//! error wins over a rejected event), counts the records it could not write
//! ([`Recorder::lost`]), and [`Recorder::flush`] / [`Recorder::close`] return
//! that error. After a fatal error the batch is rolled back and the writer stops
//! writing (later events are only counted), so a store never holds a run with
//! silent holes in the middle.
//!
//! # Reading
//!
//! [`Store`] is a plain connection with the queries the CLI and resume need:
//! [`Store::list_flow_runs`], [`Store::flow_run`] (by id or unique prefix),
//! [`Store::task_runs`], [`Store::transitions`], [`Store::logs`],
//! [`Store::finished_task_runs_with_results`], the cache index and the
//! interrupted-run fixup. WAL lets readers work while a writer writes.
//!
//! # Bad input
//!
//! A file that is not a SQLite database (or is a SQLite database that is not a
//! run store), a newer schema, a read-only or locked store: each is a typed
//! [`StoreError`] whose message names the path and says what to do. The store
//! never deletes, truncates or overwrites an existing file to recover.

mod journal;
pub mod mask;
mod read;
mod writer;

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags};
use thiserror::Error;

use crate::StateKind;

pub use read::{
    CacheRow, FinishedTaskRun, FlowRunRow, INTERRUPTED_TASK_RUN, JournalFold, LogRow, ReportBatch,
    ReportLog, TaskRunFilter, TaskRunRow, TaskSpan, TransitionRow, encode_transitions,
    fold_journal, journal_transitions, mask_journal_blob,
};
pub use writer::{
    Event, EventBuffer, LogLine, MAX_BATCH_ROWS, NewTaskRun, PackItem, Recorder, TransitionItem,
};

/// The schema version this build writes and reads (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 8;

/// The store's file name inside `FERROFLOW_HOME`.
pub const STORE_FILE_NAME: &str = "ferroflow.db";

/// The state name of a flow run that is still running (or whose process died
/// before the fixup noticed).
pub const FLOW_RUNNING: &str = "Running";

/// The state name given to a flow run whose process ended without finishing it.
pub const FLOW_INTERRUPTED: &str = "Interrupted";

/// How long a connection waits for another writer before giving up with
/// [`StoreError::Locked`], unless [`StoreOptions::busy_timeout`] says otherwise.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Everything that can go wrong with the run store. Every message names the
/// store's path and says what the user can do.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum StoreError {
    /// The file is not a SQLite database, is damaged, or is a SQLite database that
    /// is not a ferroflow run store. It is left untouched.
    #[error(
        "{} is not a ferroflow run store or is corrupt ({detail}): move the file aside, \
         set FERROFLOW_HOME to another directory, or run with recording off",
        path.display()
    )]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// What SQLite or the header check said.
        detail: String,
    },
    /// The store was written by a newer ferroflow with a schema this one does not know.
    #[error(
        "the run store {} has schema version {found}, newer than this ferroflow supports \
         ({supported}): upgrade ferroflow, set FERROFLOW_HOME to another directory, or run \
         with recording off",
        path.display()
    )]
    NewerSchema {
        /// The store file.
        path: PathBuf,
        /// The version found in the file.
        found: i64,
        /// [`SCHEMA_VERSION`].
        supported: i64,
    },
    /// The store (or its directory) cannot be written.
    #[error(
        "the run store {} cannot be written ({detail}): make it writable, set FERROFLOW_HOME \
         to a writable directory, or run with recording off",
        path.display()
    )]
    ReadOnly {
        /// The store file (or the directory that could not be created).
        path: PathBuf,
        /// What the OS or SQLite said.
        detail: String,
    },
    /// Another process held the write lock for longer than the busy timeout.
    #[error(
        "the run store {} is locked by another process: wait for it to finish, set \
         FERROFLOW_HOME to another directory, or run with recording off",
        path.display()
    )]
    Locked {
        /// The store file.
        path: PathBuf,
    },
    /// A file-system error other than permissions (e.g. a path component is a
    /// regular file, the disk is full).
    #[error(
        "cannot use the run store {}: {detail}: set FERROFLOW_HOME to a usable directory, or \
         run with recording off",
        path.display()
    )]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// What the OS said.
        detail: String,
    },
    /// Any other SQLite error.
    #[error("run store {}: {detail}", path.display())]
    Sqlite {
        /// The store file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// A flow-run id prefix matches more than one flow run.
    #[error(
        "flow run id '{prefix}' is ambiguous: it matches {}; give more characters",
        matches.join(", ")
    )]
    AmbiguousId {
        /// The prefix given.
        prefix: String,
        /// Some of the ids it matches (at most five).
        matches: Vec<String>,
    },
    /// The host sent an event the store cannot apply (a bug in the caller, not bad
    /// user input): e.g. a transition for a flow run that was never started.
    #[error("run store {}: {detail} (this is a bug in ferroflow)", path.display())]
    Invalid {
        /// The store file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The writer thread stopped without reporting an error (a bug).
    #[error(
        "the run store writer for {} stopped unexpectedly (this is a bug in ferroflow)",
        path.display()
    )]
    WriterStopped {
        /// The store file.
        path: PathBuf,
    },
}

impl StoreError {
    /// Map a SQLite error on the store at `path` to the typed error.
    pub(crate) fn from_sqlite(path: &Path, e: rusqlite::Error) -> StoreError {
        let path = path.to_path_buf();
        let detail = e.to_string();
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
                StoreError::Corrupt { path, detail }
            }
            Some(ErrorCode::ReadOnly) | Some(ErrorCode::PermissionDenied) => {
                StoreError::ReadOnly { path, detail }
            }
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
                StoreError::Locked { path }
            }
            Some(ErrorCode::CannotOpen)
            | Some(ErrorCode::DiskFull)
            | Some(ErrorCode::SystemIoFailure) => StoreError::Io { path, detail },
            _ => StoreError::Sqlite { path, detail },
        }
    }

    /// Map an I/O error on `path` to the typed error.
    pub(crate) fn from_io(path: &Path, e: &io::Error) -> StoreError {
        let path = path.to_path_buf();
        let detail = e.to_string();
        match e.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                StoreError::ReadOnly { path, detail }
            }
            _ => StoreError::Io { path, detail },
        }
    }

    /// Whether this error stops the writer (as opposed to a rejected event).
    pub(crate) fn is_fatal(&self) -> bool {
        !matches!(self, StoreError::Invalid { .. })
    }
}

/// How long a [`Recorder`] gathers events before it commits them, unless
/// [`StoreOptions::commit_interval`] says otherwise.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// How to open a store.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreOptions {
    /// How long to wait for another process's write lock before
    /// [`StoreError::Locked`]. Default [`DEFAULT_BUSY_TIMEOUT`].
    pub busy_timeout: Duration,
    /// How long a [`Recorder`] gathers events before committing them (a
    /// [`Recorder::flush`] commits at once). Longer windows fold more of a task
    /// run's transitions into one row write; a crash loses at most this much.
    /// Default [`DEFAULT_COMMIT_INTERVAL`].
    pub commit_interval: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
        }
    }
}

/// The store path for the current environment: `$FERROFLOW_HOME/ferroflow.db`,
/// else `$HOME/.ferroflow/ferroflow.db` (`%USERPROFILE%` on Windows); `None`
/// when neither variable is set (or set empty).
pub fn default_store_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"));
    store_path_for(
        std::env::var_os("FERROFLOW_HOME").as_deref(),
        home.as_deref(),
    )
}

/// The store path given the values of `FERROFLOW_HOME` and the user's home
/// directory (the pure part of [`default_store_path`]).
pub fn store_path_for(ferroflow_home: Option<&OsStr>, home: Option<&OsStr>) -> Option<PathBuf> {
    match (ferroflow_home, home) {
        (Some(fh), _) if !fh.is_empty() => Some(Path::new(fh).join(STORE_FILE_NAME)),
        (_, Some(h)) if !h.is_empty() => {
            Some(Path::new(h).join(".ferroflow").join(STORE_FILE_NAME))
        }
        _ => None,
    }
}

/// Seconds since the Unix epoch, as stored in every time column.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The [`StateKind`] with this stored name, if it is one (flow runs may also be
/// [`FLOW_RUNNING`] — which is `Running` — or [`FLOW_INTERRUPTED`], which is not).
pub fn state_from_name(name: &str) -> Option<StateKind> {
    StateKind::ALL.iter().copied().find(|k| k.name() == name)
}

/// Who process `pid` is, beyond its number: `"<boot id>/<start time>"` from
/// `/proc` (Linux), so that a pid reused by another process, or the same pid
/// after a reboot, is not taken for the process that recorded a run. `None`
/// where `/proc` does not tell (the process is gone, or not Linux).
pub fn process_identity(pid: u32) -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses):
    // state is field 3, start time field 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    let start = rest.split_whitespace().nth(19)?;
    Some(format!("{}/{start}", boot.trim()))
}

/// This process's identity ([`process_identity`]), read once.
pub(crate) fn own_identity() -> Option<&'static str> {
    static OWN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| process_identity(std::process::id()))
        .as_deref()
}

/// Whether process `pid` is alive on this machine, for
/// [`Store::fixup_interrupted`]. Uses `/proc` where there is one, `kill -0`
/// elsewhere on Unix; answers `true` (so nothing is marked interrupted) when it
/// cannot tell.
pub fn pid_is_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if Path::new("/proc/self").exists() {
        return Path::new("/proc").join(pid.to_string()).exists();
    }
    if cfg!(unix) {
        return std::process::Command::new("kill")
            .arg("-0")
            .arg(pid.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(true);
    }
    true
}

/// A connection to the run store, for reading and for small writes (cache
/// entries, the interrupted-run fixup). Runs record through a [`Recorder`].
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    options: StoreOptions,
}

impl Store {
    /// Open (creating if needed) the store at `path` with default options.
    ///
    /// Creates missing parent directories. Fails with a typed error, leaving any
    /// existing file untouched, when the file is not a run store
    /// ([`StoreError::Corrupt`]), has a newer schema ([`StoreError::NewerSchema`]),
    /// cannot be written ([`StoreError::ReadOnly`]) or stays locked
    /// ([`StoreError::Locked`]).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, &StoreOptions::default())
    }

    /// [`Store::open`] with explicit options.
    pub fn open_with(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let conn = open_connection(path, options)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            options: options.clone(),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Start a [`Recorder`] on the same file, with the same options.
    pub fn recorder(&self) -> Result<Recorder, StoreError> {
        Recorder::start_with(&self.path, &self.options)
    }

    pub(crate) fn err(&self, e: rusqlite::Error) -> StoreError {
        StoreError::from_sqlite(&self.path, e)
    }
}

/// Check the path without writing to any existing file: create missing parent
/// directories, refuse a directory or a file that does not start with the SQLite
/// header.
fn check_path(path: &Path) -> Result<(), StoreError> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        fs::create_dir_all(parent).map_err(|e| StoreError::from_io(parent, &e))?;
    }
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::from_io(path, &e)),
    };
    if meta.is_dir() {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: "it is a directory".into(),
        });
    }
    if meta.len() == 0 {
        // An empty file is an empty SQLite database: nothing to lose.
        return Ok(());
    }
    let mut header = [0u8; 16];
    let mut file = fs::File::open(path).map_err(|e| StoreError::from_io(path, &e))?;
    let mut got = 0;
    while got < header.len() {
        match file.read(&mut header[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StoreError::from_io(path, &e)),
        }
    }
    if got < header.len() || &header != SQLITE_HEADER {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: "the file is not a SQLite database".into(),
        });
    }
    Ok(())
}

/// Open a read-write connection, check the file and the schema version, switch
/// to WAL and create the schema in a fresh store.
pub(crate) fn open_connection(
    path: &Path,
    options: &StoreOptions,
) -> Result<Connection, StoreError> {
    check_path(path)?;
    let sq = |e| StoreError::from_sqlite(path, e);
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(sq)?;
    conn.busy_timeout(options.busy_timeout).map_err(sq)?;
    // Reading the version reads the header: a damaged file fails here, before
    // anything is written.
    let version = user_version(&conn).map_err(sq)?;
    check_not_newer(path, version)?;
    if conn.is_readonly(rusqlite::MAIN_DB).map_err(sq)? {
        return Err(StoreError::ReadOnly {
            path: path.to_path_buf(),
            detail: "the file or its directory is read-only".into(),
        });
    }
    // A version-0 file with tables is somebody else's database: refuse it before
    // anything (even the journal mode in its header) is changed.
    if version == 0 && count_tables(&conn).map_err(sq)? > 0 {
        return Err(foreign(path));
    }
    // A new store gives freed pages back in small steps (`PRAGMA incremental_vacuum`
    // after a prune, see python/ferroflow/server/retention.py); the mode can only be
    // set before the first table exists (an older store keeps NONE until one full
    // VACUUM switches it).
    if version == 0 {
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(sq)?;
    }
    // WAL may be refused on some file systems; the store then still works with
    // the rollback journal, so the answer is not checked.
    let _mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(sq)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sq)?;
    if version < SCHEMA_VERSION {
        create_schema(&conn, path)?;
    }
    Ok(conn)
}

fn count_tables(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
}

fn foreign(path: &Path) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: "it is a SQLite database of another program".into(),
    }
}

/// Refuse a store whose schema `version` is newer than this build's.
fn check_not_newer(path: &Path, version: i64) -> Result<(), StoreError> {
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// Create the schema in a store at version 0, or bring an older version up to
/// date, inside one immediate transaction (a concurrent creator is waited for,
/// then seen). A version-0 file that already has tables is somebody else's
/// SQLite database: refused.
fn create_schema(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let sq = |e| StoreError::from_sqlite(path, e);
    conn.execute_batch("BEGIN IMMEDIATE").map_err(sq)?;
    let result = (|| -> Result<(), StoreError> {
        let version = user_version(conn).map_err(sq)?;
        check_not_newer(path, version)?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        if version == 0 {
            if count_tables(conn).map_err(sq)? > 0 {
                return Err(foreign(path));
            }
            conn.execute_batch(SCHEMA_V1).map_err(sq)?;
        }
        for (from, step) in MIGRATIONS {
            if version <= *from {
                conn.execute_batch(step).map_err(sq)?;
            }
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sq)?;
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT").map_err(sq),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

const SCHEMA_V1: &str = "
CREATE TABLE flow_runs(
    key INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    flow_name TEXT NOT NULL,
    parameters TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL,
    message TEXT,
    started REAL NOT NULL,
    ended REAL,
    pid INTEGER,
    host TEXT,
    resumed_from TEXT
);
CREATE INDEX flow_runs_by_started ON flow_runs(started);
CREATE TABLE journal(
    seq INTEGER PRIMARY KEY,
    flow_run INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX journal_by_flow_run ON journal(flow_run, seq);
CREATE TABLE logs(
    flow_run INTEGER NOT NULL,
    run INTEGER,
    level INTEGER NOT NULL,
    at REAL NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX logs_by_flow_run ON logs(flow_run);
CREATE TABLE cache(
    task_key TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    inputs_hash TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    expires REAL,
    result_location TEXT NOT NULL,
    serializer TEXT NOT NULL DEFAULT '',
    PRIMARY KEY(task_key, cache_key, inputs_hash)
);
";

const SCHEMA_V2: &str = "ALTER TABLE flow_runs ADD COLUMN proc TEXT;";

const SCHEMA_V3: &str = "
CREATE TABLE logs_v3(
    flow_run_id TEXT NOT NULL,
    task_run_id INTEGER,
    level INTEGER NOT NULL,
    time REAL NOT NULL,
    message TEXT NOT NULL
);
INSERT INTO logs_v3(flow_run_id, task_run_id, level, time, message)
    SELECT f.id, l.run, l.level, l.at, l.message
    FROM logs l JOIN flow_runs f ON l.flow_run = f.key ORDER BY l.rowid;
DROP TABLE logs;
ALTER TABLE logs_v3 RENAME TO logs;
CREATE INDEX logs_by_flow_run ON logs(flow_run_id);
ALTER TABLE flow_runs ADD COLUMN structure TEXT;
";

/// Version 4: the platform tables (projects, flows and their versions, schedules,
/// agents, audit) and the flow-run columns the server needs. Kept in a `.sql` file
/// so that the server's PostgreSQL schema can be read beside it.
const SCHEMA_V4: &str = include_str!("platform.sql");

/// Version 5: API tokens (hashed), UI sessions, the address of audited requests and
/// the token that registered an agent (`v5_auth.sql`).
const SCHEMA_V5: &str = include_str!("v5_auth.sql");

/// Version 6: operations: backfills, concurrency limits (flow runs, task tags),
/// notification rules and deliveries.
const SCHEMA_V6: &str = include_str!("v6_ops.sql");

/// Version 7: the `secrets` table (names, dates and Fernet ciphertext; the key is
/// never in the store).
const SCHEMA_V7: &str = include_str!("v7_secrets.sql");

/// Version 8: the indexes that read a page of a big run's logs without a sort
/// (`v8_log_index.sql`).
const SCHEMA_V8: &str = include_str!("v8_log_index.sql");

/// The steps that bring a store up to [`SCHEMA_VERSION`]: a store at version `v`
/// runs every step whose `from` is at least `v` (a fresh store first gets
/// version 1's tables). Adding a version is one more line here.
const MIGRATIONS: &[(i64, &str)] = &[
    // Version 2: the identity of the process that runs a flow run.
    (1, SCHEMA_V2),
    // Version 3: logs keyed by the flow run's text id (the shape a server
    // shares), every existing line kept; the flow's structure per run.
    (2, SCHEMA_V3),
    (3, SCHEMA_V4),
    (4, SCHEMA_V5),
    (5, SCHEMA_V6),
    (6, SCHEMA_V7),
    (7, SCHEMA_V8),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_an_identity_on_linux() {
        if Path::new("/proc/self/stat").exists() {
            let me = process_identity(std::process::id()).expect("identity");
            assert_eq!(Some(me.as_str()), own_identity());
            assert!(me.contains('/'), "{me}");
        }
        assert_eq!(process_identity(u32::MAX), None);
    }

    #[test]
    fn store_path_prefers_ferroflow_home() {
        let p = store_path_for(Some(OsStr::new("/x")), Some(OsStr::new("/home/u")));
        assert_eq!(p, Some(PathBuf::from("/x/ferroflow.db")));
        let p = store_path_for(Some(OsStr::new("")), Some(OsStr::new("/home/u")));
        assert_eq!(p, Some(PathBuf::from("/home/u/.ferroflow/ferroflow.db")));
        assert_eq!(store_path_for(None, None), None);
    }

    #[test]
    fn state_names_round_trip() {
        for k in StateKind::ALL {
            assert_eq!(state_from_name(k.name()), Some(k));
        }
        assert_eq!(state_from_name(FLOW_INTERRUPTED), None);
    }
}
