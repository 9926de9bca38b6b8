//! The run store on real SQLite files in a temporary directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroflow_core::store::{
    CacheRow, Event, EventBuffer, FLOW_INTERRUPTED, FlowRunRow, INTERRUPTED_TASK_RUN, LogLine,
    NewTaskRun, PackItem, Recorder, Store, StoreError, StoreOptions, TransitionItem, TransitionRow,
};
use ferroflow_core::{RunId, StateKind, TaskId};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "ferroflow-store-{name}-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("ferroflow.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        make_writable(&self.0);
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn make_writable(dir: &Path) {
    #[cfg(unix)]
    {
        if dir.exists() {
            set_mode(dir, 0o755);
            if let Ok(entries) = fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        make_writable(&e.path());
                    } else {
                        set_mode(&e.path(), 0o644);
                    }
                }
            }
        }
    }
}

fn id(s: &str) -> Arc<str> {
    Arc::from(s)
}

fn started(flow_run_id: &Arc<str>, flow: &str) -> Event {
    Event::FlowRunStarted {
        id: Arc::clone(flow_run_id),
        flow_name: flow.into(),
        parameters_json: r#"{"x": 1}"#.into(),
        started: 1000.0,
        pid: std::process::id(),
        host: "testhost".into(),
        resumed_from: None,
    }
}

/// A flow run of flow "f" started by process `pid` on `host`.
fn started_by(flow_run_id: &str, pid: u32, host: &str) -> Event {
    Event::FlowRunStarted {
        id: id(flow_run_id),
        flow_name: "f".into(),
        parameters_json: "{}".into(),
        started: 1.0,
        pid,
        host: host.into(),
        resumed_from: None,
    }
}

fn ended(flow_run_id: &Arc<str>, state: StateKind, at: f64) -> Event {
    Event::FlowRunEnded {
        id: Arc::clone(flow_run_id),
        state,
        message: None,
        ended: at,
    }
}

fn task_runs(flow_run_id: &Arc<str>, runs: Vec<NewTaskRun>) -> Event {
    Event::TaskRuns {
        flow_run_id: Arc::clone(flow_run_id),
        runs,
    }
}

fn log(flow_run_id: &Arc<str>, run: Option<u32>, level: i32, at: f64, message: &str) -> Event {
    Event::Log {
        flow_run_id: Arc::clone(flow_run_id),
        run: run.map(RunId),
        level,
        at,
        message: message.into(),
    }
}

fn task_run(run: u32, task: u32, name: &Arc<str>, map_index: Option<u32>) -> NewTaskRun {
    NewTaskRun {
        run: RunId(run),
        task: TaskId(task),
        task_name: Arc::clone(name),
        map_index,
    }
}

fn tr(run: u32, state: StateKind, run_count: u32, at: f64) -> TransitionItem {
    TransitionItem {
        run: RunId(run),
        state,
        message: None,
        run_count,
        at,
        result_location: None,
    }
}

fn transition(flow_run_id: &Arc<str>, item: TransitionItem) -> Event {
    Event::Transition {
        flow_run_id: Arc::clone(flow_run_id),
        item,
    }
}

fn transitions(flow_run_id: &Arc<str>, items: Vec<TransitionItem>) -> Event {
    Event::Transitions {
        flow_run_id: Arc::clone(flow_run_id),
        items,
    }
}

/// The flow run with this id, which must exist.
fn flow_run(store: &Store, id: &str) -> FlowRunRow {
    store.flow_run(id).expect("get").expect("exists")
}

/// The states of a task run's history.
fn states(hist: &[TransitionRow]) -> Vec<StateKind> {
    hist.iter().map(|t| t.state).collect()
}

/// The history of task run `run` of flow run `id`, as states.
fn history(store: &Store, id: &str, run: u32) -> Vec<StateKind> {
    states(&store.transitions(id, RunId(run)).expect("history"))
}

/// The finished task runs of a flow run with results, as `(run, location)`.
fn results(store: &Store, id: &str) -> Vec<(u32, String)> {
    store
        .finished_task_runs_with_results(id)
        .expect("finished")
        .into_iter()
        .map(|t| (t.run.0, t.result_location))
        .collect()
}

#[test]
fn recorder_is_send_and_sync_and_store_is_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Recorder>();
    send::<Store>();
    send_sync::<StoreError>();
}

#[test]
fn round_trip_flow_run_task_runs_transitions_logs() {
    let dir = TempDir::new("roundtrip");
    // The store's directory does not exist yet: it is created.
    let path = dir.0.join("home").join("ferroflow.db");
    let rec = Recorder::start(&path).expect("start recorder");
    let fr = id("7f3a9c00-0000-4000-8000-000000000001");
    let add: Arc<str> = Arc::from("add");
    let inc: Arc<str> = Arc::from("inc");
    rec.send(started(&fr, "etl"));
    rec.send(task_runs(
        &fr,
        vec![task_run(0, 0, &add, None), task_run(1, 1, &inc, None)],
    ));
    rec.send(transition(&fr, tr(0, StateKind::Running, 1, 1001.0)));
    rec.send(transition(
        &fr,
        TransitionItem {
            message: Some("boom".into()),
            ..tr(0, StateKind::Retrying, 1, 1002.0)
        },
    ));
    rec.send(transition(&fr, tr(0, StateKind::Running, 2, 1003.0)));
    rec.send(transition(
        &fr,
        TransitionItem {
            result_location: Some("results/add-0.pickle".into()),
            ..tr(0, StateKind::Success, 2, 1004.0)
        },
    ));
    // Task 1 maps over two items: its children are registered when it expands.
    rec.send(transition(&fr, tr(1, StateKind::Mapped, 1, 1005.0)));
    rec.send(task_runs(
        &fr,
        vec![task_run(2, 1, &inc, Some(0)), task_run(3, 1, &inc, Some(1))],
    ));
    rec.send(transitions(
        &fr,
        vec![
            tr(2, StateKind::Running, 1, 1006.0),
            tr(3, StateKind::Running, 1, 1006.5),
            tr(2, StateKind::Success, 1, 1007.0),
            TransitionItem {
                message: Some("ValueError: bad".into()),
                ..tr(3, StateKind::Failed, 1, 1008.0)
            },
        ],
    ));
    rec.send(Event::ResultLocation {
        flow_run_id: Arc::clone(&fr),
        run: RunId(2),
        location: "results/inc-0.pickle".into(),
    });
    rec.send(log(&fr, Some(3), 40, 1008.0, "task failed"));
    rec.send(log(&fr, None, 20, 1009.0, "flow finished"));
    rec.send(Event::FlowRunEnded {
        id: Arc::clone(&fr),
        state: StateKind::Failed,
        message: Some("some reference tasks failed".into()),
        ended: 1010.0,
    });
    rec.flush().expect("flush");
    // Readers see what is flushed while the recorder is still open.
    let store = Store::open(&path).expect("open store");
    assert_eq!(store.list_flow_runs(10).expect("list").len(), 1);
    rec.close().expect("close");

    let runs = store.list_flow_runs(10).expect("list");
    assert_eq!(runs.len(), 1);
    let f = &runs[0];
    assert_eq!(f.id, &*fr);
    assert_eq!(f.flow_name, "etl");
    assert_eq!(f.parameters_json, r#"{"x": 1}"#);
    assert_eq!(f.state, "Failed");
    assert_eq!(f.message.as_deref(), Some("some reference tasks failed"));
    assert_eq!(f.started, 1000.0);
    assert_eq!(f.ended, Some(1010.0));
    assert_eq!(f.pid, Some(std::process::id()));
    assert_eq!(f.host.as_deref(), Some("testhost"));

    let tasks = store.task_runs(&fr).expect("task runs");
    assert_eq!(tasks.len(), 4);
    let t0 = &tasks[0];
    assert_eq!(
        (t0.run, t0.task, &*t0.task_name),
        (RunId(0), TaskId(0), "add")
    );
    assert_eq!(t0.state, StateKind::Success);
    assert_eq!(t0.run_count, 2);
    assert_eq!(t0.message, None);
    assert_eq!(t0.started, Some(1001.0), "started is the first Running");
    assert_eq!(t0.ended, Some(1004.0));
    assert_eq!(t0.result_location.as_deref(), Some("results/add-0.pickle"));
    assert_eq!(tasks[1].state, StateKind::Mapped);
    assert_eq!(tasks[1].map_index, None);
    assert_eq!(tasks[2].map_index, Some(0));
    assert_eq!(
        tasks[2].result_location.as_deref(),
        Some("results/inc-0.pickle")
    );
    assert_eq!(tasks[3].map_index, Some(1));
    assert_eq!(tasks[3].state, StateKind::Failed);
    assert_eq!(tasks[3].message.as_deref(), Some("ValueError: bad"));

    let hist = store.transitions(&fr, RunId(0)).expect("transitions");
    use StateKind::{Retrying, Running, Success};
    assert_eq!(states(&hist), [Running, Retrying, Running, Success]);
    assert_eq!(hist[1].message.as_deref(), Some("boom"));
    assert_eq!(hist[3].at, 1004.0);

    let logs = store.logs(&fr).expect("logs");
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[0].run, Some(RunId(3)));
    assert_eq!(logs[0].level, 40);
    assert_eq!(logs[1].run, None);
    assert_eq!(logs[1].message, "flow finished");

    assert_eq!(
        results(&store, &fr),
        [
            (0, "results/add-0.pickle".to_string()),
            (2, "results/inc-0.pickle".to_string())
        ]
    );
    // Unknown flow runs read as empty.
    assert!(store.task_runs("nope").expect("task runs").is_empty());
}

#[test]
fn million_transitions_recorded_and_flushed() {
    let dir = TempDir::new("million");
    let path = dir.db();
    let rec = Recorder::start(&path).expect("start recorder");
    let name: Arc<str> = Arc::from("child");
    const N: u32 = 1_000_000;

    // Worst case for the caller: one `send` per transition.
    let fr = id("one-event-each");
    rec.send(started(&fr, "map"));
    rec.send(task_runs(
        &fr,
        (0..N).map(|r| task_run(r, 1, &name, Some(r))).collect(),
    ));
    rec.flush().expect("flush task runs");
    let t1 = Instant::now();
    for r in 0..N {
        rec.send(transition(&fr, tr(r, StateKind::Running, 1, 2000.0)));
    }
    let send = t1.elapsed();
    rec.flush().expect("flush transitions");
    let single = t1.elapsed();

    // A map as a run loop records it: the children registered at expansion in
    // one event, then each child Running and Success, through an EventBuffer.
    let fr2 = id("map-children");
    let t2 = Instant::now();
    let mut buf = EventBuffer::new();
    buf.push(&rec, started(&fr2, "map"));
    buf.push(
        &rec,
        Event::MapChildren {
            flow_run_id: Arc::clone(&fr2),
            task: TaskId(1),
            task_name: Arc::clone(&name),
            first_run: RunId(0),
            count: N,
        },
    );
    for r in 0..N {
        buf.push(&rec, transition(&fr2, tr(r, StateKind::Running, 1, 3000.0)));
        buf.push(
            &rec,
            transition(&fr2, tr(r, StateKind::Success, 1, 3000.25)),
        );
    }
    buf.send(&rec);
    let send_map = t2.elapsed();
    rec.flush().expect("flush map");
    let map = t2.elapsed();
    let t_close = Instant::now();
    rec.close().expect("close");
    let close = t_close.elapsed();
    println!(
        "run store, {N} task runs per case:\n  one send per transition: caller {send:.2?}, all \
         committed after {single:.2?}\n  map children (MapChildren + Running + Success each) \
         through an EventBuffer: caller {send_map:.2?}, all committed after {map:.2?}\n  \
         close (final WAL checkpoint): {close:.2?}"
    );

    let store = Store::open(&path).expect("open store");
    let t3 = Instant::now();
    let runs = store.task_runs(&fr2).expect("task runs");
    println!(
        "  reading back {} task runs: {:.2?}",
        runs.len(),
        t3.elapsed()
    );
    assert_eq!(runs.len(), N as usize);
    assert!(
        runs.iter()
            .enumerate()
            .all(|(i, r)| r.run == RunId(i as u32)
                && r.map_index == Some(i as u32)
                && r.state == StateKind::Success
                && r.started == Some(3000.0)
                && r.ended == Some(3000.25)
                && &*r.task_name == "child")
    );
    let runs = store.task_runs(&fr).expect("task runs");
    assert_eq!(runs.len(), N as usize);
    assert!(
        runs.iter()
            .all(|r| r.state == StateKind::Running && r.ended.is_none())
    );
    let hist = store
        .transitions(&fr2, RunId(123_456))
        .expect("transitions");
    assert_eq!(states(&hist), [StateKind::Running, StateKind::Success]);
    assert_eq!(hist[1].at, 3000.25);
    let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        + fs::metadata(path.with_extension("db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    println!("  store size: {:.1} MB", size as f64 / 1e6);
}

fn assert_message_helps(e: &StoreError, path: &Path) {
    let msg = e.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "message names the path: {msg}"
    );
    assert!(
        msg.contains("FERROFLOW_HOME") && msg.contains("recording off"),
        "message says what to do: {msg}"
    );
}

#[test]
fn garbage_file_is_corrupt_and_left_untouched() {
    let dir = TempDir::new("garbage");
    let path = dir.db();
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
    fs::write(&path, &garbage).expect("write garbage");
    for attempt in 0..2 {
        let err = if attempt == 0 {
            Store::open(&path).expect_err("garbage store opens")
        } else {
            Recorder::start(&path).expect_err("garbage store records")
        };
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert_message_helps(&err, &path);
        assert!(err.to_string().contains("move the file aside"));
    }
    assert!(
        fs::read(&path).expect("read back") == garbage,
        "file changed"
    );
    let names: Vec<_> = fs::read_dir(&dir.0)
        .expect("list")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 1, "no -wal or -shm files left: {names:?}");

    // A file that starts like SQLite but is damaged after the header.
    let mut fake = b"SQLite format 3\0".to_vec();
    fake.extend(std::iter::repeat_n(0xAB_u8, 8192));
    fs::write(&path, &fake).expect("write fake");
    let err = Store::open(&path).expect_err("damaged store opens");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(fs::read(&path).expect("read back") == fake, "file changed");

    // A directory at the store path.
    let as_dir = dir.0.join("dir.db");
    fs::create_dir(&as_dir).expect("mkdir");
    let err = Store::open(&as_dir).expect_err("directory opens");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[test]
fn sqlite_database_of_another_program_is_refused_untouched() {
    let dir = TempDir::new("foreign");
    let path = dir.db();
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch("CREATE TABLE notes(body TEXT); INSERT INTO notes VALUES ('mine');")
            .expect("create");
    }
    let before = fs::read(&path).expect("read");
    let err = Store::open(&path).expect_err("foreign db opens");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert_message_helps(&err, &path);
    assert!(
        fs::read(&path).expect("read back") == before,
        "file changed"
    );
}

#[test]
fn newer_schema_is_refused() {
    let dir = TempDir::new("newer");
    let path = dir.db();
    drop(Store::open(&path).expect("create store"));
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.pragma_update(None, "user_version", 99)
            .expect("bump version");
    }
    let before = fs::read(&path).expect("read");
    let err = Store::open(&path).expect_err("newer store opens");
    assert_eq!(
        err,
        StoreError::NewerSchema {
            path: path.clone(),
            found: 99,
            supported: ferroflow_core::store::SCHEMA_VERSION,
        }
    );
    assert_message_helps(&err, &path);
    assert!(matches!(
        Recorder::start(&path),
        Err(StoreError::NewerSchema { .. })
    ));
    assert!(
        fs::read(&path).expect("read back") == before,
        "file changed"
    );
}

/// Whether permission bits stop this process from writing (not so for root).
#[cfg(unix)]
fn permissions_apply(dir: &Path) -> bool {
    let probe = dir.join("probe");
    fs::create_dir(&probe).expect("mkdir probe");
    set_mode(&probe, 0o555);
    let denied = fs::write(probe.join("x"), b"x").is_err();
    set_mode(&probe, 0o755);
    let _ = fs::remove_dir_all(&probe);
    denied
}

#[test]
fn unwritable_home_is_a_typed_error() {
    let dir = TempDir::new("readonly");
    // A FERROFLOW_HOME below a regular file cannot be created, even by root.
    let file = dir.0.join("plainfile");
    fs::write(&file, b"user data").expect("write file");
    let path = file.join("home").join("ferroflow.db");
    let err = Store::open(&path).expect_err("store below a file opens");
    assert!(
        matches!(err, StoreError::Io { .. } | StoreError::ReadOnly { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("plainfile"), "{err}");
    assert!(err.to_string().contains("FERROFLOW_HOME"), "{err}");
    assert!(matches!(
        Recorder::start(&path),
        Err(StoreError::Io { .. } | StoreError::ReadOnly { .. })
    ));
    assert_eq!(fs::read(&file).expect("read back"), b"user data");

    // Permission bits: only meaningful when not running as root (root writes
    // through chmod 555), so this part is skipped under root.
    #[cfg(unix)]
    if permissions_apply(&dir.0) {
        let ro_home = dir.0.join("ro-home");
        fs::create_dir(&ro_home).expect("mkdir");
        set_mode(&ro_home, 0o555);
        let path = ro_home.join("ferroflow.db");
        let err = Store::open(&path).expect_err("store in read-only dir opens");
        assert!(
            matches!(err, StoreError::ReadOnly { .. } | StoreError::Io { .. }),
            "{err:?}"
        );
        assert_message_helps(&err, &path);

        // An existing store made read-only.
        let rw_home = dir.0.join("rw-home");
        let path = rw_home.join("ferroflow.db");
        drop(Store::open(&path).expect("create store"));
        set_mode(&path, 0o444);
        set_mode(&rw_home, 0o555);
        let err = Recorder::start(&path).expect_err("read-only store records");
        assert!(
            matches!(err, StoreError::ReadOnly { .. } | StoreError::Io { .. }),
            "{err:?}"
        );
        assert_message_helps(&err, &path);
    } else {
        println!("running as root: permission-bit cases skipped");
    }
}

#[test]
fn locked_store_reports_lost_records() {
    let dir = TempDir::new("locked");
    let path = dir.db();
    let options = StoreOptions {
        busy_timeout: Duration::from_millis(100),
        ..StoreOptions::default()
    };
    let rec = Recorder::start_with(&path, &options).expect("start");
    let fr = id("locked-run");
    rec.send(started(&fr, "f"));
    rec.flush().expect("flush");

    let other = rusqlite::Connection::open(&path).expect("open");
    other.execute_batch("BEGIN IMMEDIATE").expect("lock");
    rec.send(log(&fr, None, 20, 1.0, "lost"));
    let err = rec.flush().expect_err("flush while locked");
    assert_eq!(err, StoreError::Locked { path: path.clone() });
    assert_message_helps(&err, &path);
    assert_eq!(rec.lost(), 1);
    other.execute_batch("COMMIT").expect("unlock");
    // The writer stopped: later records are counted, never silently dropped.
    rec.send(ended(&fr, StateKind::Success, 2.0));
    assert_eq!(rec.flush(), Err(err.clone()));
    assert_eq!(rec.lost(), 2);
    assert_eq!(rec.error(), Some(err.clone()));
    assert_eq!(rec.close(), Err(err));
}

#[test]
fn events_for_unknown_runs_are_reported() {
    let dir = TempDir::new("invalid");
    let path = dir.db();
    let rec = Recorder::start(&path).expect("start");
    let fr = id("known");
    rec.send(transition(
        &id("unknown"),
        tr(0, StateKind::Running, 1, 1.0),
    ));
    rec.send(started(&fr, "f"));
    rec.send(transition(&fr, tr(5, StateKind::Running, 1, 1.0)));
    let err = rec.flush().expect_err("flush");
    assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
    assert!(err.to_string().contains("never"), "{err}");
    // Both transitions are counted as lost: one names an unknown flow run, the
    // other a task run that was never registered.
    assert_eq!(rec.lost(), 2);
    // The rest was written.
    rec.send(ended(&fr, StateKind::Success, 3.0));
    assert!(rec.close().is_err());
    let store = Store::open(&path).expect("open");
    assert_eq!(flow_run(&store, "known").state, "Success");
    assert!(
        store
            .transitions("known", RunId(5))
            .expect("hist")
            .is_empty()
    );
}

#[test]
fn pack_locations_are_stored_per_run() {
    let dir = TempDir::new("packs");
    let path = dir.db();
    let rec = Recorder::start(&path).expect("start");
    let fr = id("packed");
    let inc: Arc<str> = Arc::from("inc");
    rec.send(started(&fr, "f"));
    rec.send(task_runs(&fr, vec![task_run(0, 0, &inc, None)]));
    rec.send(Event::MapChildren {
        flow_run_id: Arc::clone(&fr),
        task: TaskId(0),
        task_name: Arc::clone(&inc),
        first_run: RunId(1),
        count: 3,
    });
    rec.send(transitions(
        &fr,
        (1..4).map(|r| tr(r, StateKind::Success, 1, 2.0)).collect(),
    ));
    let item = |run, offset, length| PackItem {
        run: RunId(run),
        offset,
        length,
    };
    rec.send(Event::PackLocations {
        flow_run_id: Arc::clone(&fr),
        pack: Arc::from("runs/packed/inc-7.pack"),
        // Run 9 was never registered: rejected and counted, the rest kept.
        items: vec![item(1, 40, 5), item(3, 49, 12), item(9, 65, 1)],
    });
    assert!(rec.flush().is_err());
    assert_eq!(rec.lost(), 1);
    drop(rec);
    let store = Store::open(&path).expect("open");
    assert_eq!(
        results(&store, "packed"),
        [
            (1, "runs/packed/inc-7.pack#40:5".to_string()),
            (3, "runs/packed/inc-7.pack#49:12".to_string()),
        ]
    );
}

#[test]
fn posted_events_keep_their_order_with_sent_ones() {
    let dir = TempDir::new("posted");
    let path = dir.db();
    let rec = Recorder::start(&path).expect("start");
    let fr = id("posted");
    let t: Arc<str> = Arc::from("t");
    // Registered by a post, then transitions both sent and posted: none may
    // reach the writer before the registration (it would be rejected).
    rec.post(vec![
        started(&fr, "f"),
        task_runs(&fr, vec![task_run(0, 0, &t, None)]),
    ]);
    rec.send(transition(&fr, tr(0, StateKind::Running, 1, 1.0)));
    rec.post(vec![transition(&fr, tr(0, StateKind::Retrying, 1, 2.0))]);
    rec.send_all(vec![transition(&fr, tr(0, StateKind::Running, 2, 3.0))]);
    rec.post(vec![transition(&fr, tr(0, StateKind::Success, 2, 4.0))]);
    // A post past the drain size is drained early; order still holds.
    rec.post(vec![Event::MapChildren {
        flow_run_id: Arc::clone(&fr),
        task: TaskId(0),
        task_name: Arc::clone(&t),
        first_run: RunId(1),
        count: 20_000,
    }]);
    rec.post(vec![transitions(
        &fr,
        (1..20_001)
            .map(|r| tr(r, StateKind::Running, 1, 5.0))
            .collect(),
    )]);
    rec.send(transition(&fr, tr(7, StateKind::Success, 1, 6.0)));
    rec.post(vec![transition(&fr, tr(8, StateKind::Success, 1, 6.0))]);
    rec.flush().expect("nothing rejected");
    assert_eq!(rec.lost(), 0);
    // A post alone is committed within the commit interval, without a flush.
    rec.post(vec![ended(&fr, StateKind::Success, 5.0)]);
    let store = Store::open(&path).expect("open");
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.flow_run("posted").expect("read").map(|f| f.state) != Some("Success".into()) {
        assert!(
            Instant::now() < deadline,
            "the posted end was never committed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    use StateKind::{Retrying, Running, Success};
    assert_eq!(
        history(&store, "posted", 0),
        [Running, Retrying, Running, Success]
    );
    for r in [7, 8] {
        assert_eq!(history(&store, "posted", r), [Running, Success]);
    }
    rec.close().expect("close");
}

#[test]
fn dropping_a_recorder_commits_what_was_sent() {
    let dir = TempDir::new("drop");
    let path = dir.db();
    {
        let rec = Recorder::start(&path).expect("start");
        let fr = id("dropped");
        rec.send(started(&fr, "f"));
        for i in 0..1000 {
            rec.send(log(&fr, None, 20, f64::from(i), &format!("line {i}")));
        }
    }
    let store = Store::open(&path).expect("open");
    assert_eq!(store.logs("dropped").expect("logs").len(), 1000);
}

#[test]
fn flow_run_by_unique_prefix() {
    let dir = TempDir::new("prefix");
    let path = dir.db();
    let rec = Recorder::start(&path).expect("start");
    for fr in ["abc123", "abd456", "abd789", "xyz000"] {
        rec.send(started(&id(fr), "f"));
    }
    rec.close().expect("close");
    let store = Store::open(&path).expect("open");
    let get = |p: &str| store.flow_run(p).map(|r| r.map(|r| r.id));
    assert_eq!(get("abc123"), Ok(Some("abc123".into())));
    assert_eq!(get("abc"), Ok(Some("abc123".into())));
    assert_eq!(get("x"), Ok(Some("xyz000".into())));
    assert_eq!(get("abd7"), Ok(Some("abd789".into())));
    assert_eq!(get("abe"), Ok(None));
    assert_eq!(get("zzz"), Ok(None));
    assert_eq!(get(""), Ok(None));
    match get("ab") {
        Err(StoreError::AmbiguousId { prefix, matches }) => {
            assert_eq!(prefix, "ab");
            assert_eq!(matches, ["abc123", "abd456", "abd789"]);
        }
        other => panic!("expected an ambiguous prefix, got {other:?}"),
    }
    let err = store.flow_run("abd").expect_err("ambiguous");
    assert!(err.to_string().contains("abd456"), "{err}");
    // Newest first.
    let ids: Vec<String> = store
        .list_flow_runs(2)
        .expect("list")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["xyz000", "abd789"]);
}

#[test]
fn interrupted_runs_are_fixed_up() {
    let dir = TempDir::new("interrupted");
    let path = dir.db();
    let rec = Recorder::start(&path).expect("start");
    rec.send(started_by("dead", 111, "here"));
    rec.send(started_by("alive", 222, "here"));
    rec.send(started_by("elsewhere", 111, "there"));
    rec.send(started_by("finished", 111, "here"));
    rec.send(ended(&id("finished"), StateKind::Success, 2.0));
    rec.close().expect("close");

    let store = Store::open(&path).expect("open");
    let mut asked = Vec::new();
    let marked = store
        .fixup_interrupted("here", |pid| {
            asked.push(pid);
            pid == 222
        })
        .expect("fixup");
    assert_eq!(marked, ["dead"]);
    asked.sort_unstable();
    assert_eq!(asked, [111, 222]);
    let dead = flow_run(&store, "dead");
    assert_eq!(dead.state, FLOW_INTERRUPTED);
    assert!(
        dead.message.as_deref().unwrap_or("").contains("pid 111"),
        "{dead:?}"
    );
    for (fr, state) in [
        ("alive", "Running"),
        ("elsewhere", "Running"),
        ("finished", "Success"),
    ] {
        assert_eq!(flow_run(&store, fr).state, state);
    }
    // Once its process is gone, "alive" is marked too; "dead" is not marked
    // again, and the runs of other hosts or that finished are left alone.
    assert_eq!(
        store.fixup_interrupted("here", |_| false).expect("fixup"),
        ["alive"]
    );
    assert!(!store.mark_interrupted("dead", "again").expect("mark"));
    // This process is alive.
    assert!(ferroflow_core::store::pid_is_alive(std::process::id()));
}

#[test]
fn an_interrupted_run_ends_at_its_last_record_and_stops_running() {
    let dir = TempDir::new("interrupted-end");
    let path = dir.db();
    let rec = Recorder::start(&path).expect("start");
    let fr = id("dead");
    rec.send(started_by("dead", 111, "here"));
    let name = id("t");
    rec.send(task_runs(
        &fr,
        vec![task_run(0, 0, &name, None), task_run(1, 0, &name, None)],
    ));
    rec.send(transitions(
        &fr,
        vec![
            tr(0, StateKind::Running, 1, 2.0),
            tr(0, StateKind::Success, 1, 3.0),
            tr(1, StateKind::Running, 1, 4.0),
        ],
    ));
    rec.send(log(&fr, Some(1), 20, 4.5, "still going"));
    rec.close().expect("close");
    let store = Store::open(&path).expect("open");
    let runs = store.task_runs("dead").expect("runs");
    assert_eq!(runs[1].state, StateKind::Running, "not marked yet");
    assert_eq!(
        store.fixup_interrupted("here", |_| false).expect("fixup"),
        ["dead"]
    );
    let dead = flow_run(&store, "dead");
    assert_eq!(
        (dead.state.as_str(), dead.ended),
        (FLOW_INTERRUPTED, Some(4.5))
    );
    let runs = store.task_runs("dead").expect("runs");
    assert_eq!(runs[0].state, StateKind::Success);
    assert_eq!(runs[0].ended, Some(3.0));
    assert_eq!(runs[1].state, StateKind::Cancelled);
    assert_eq!(runs[1].message.as_deref(), Some(INTERRUPTED_TASK_RUN));
    assert_eq!(runs[1].ended, Some(4.5));
}

#[test]
fn cache_put_and_get_with_expiry() {
    let dir = TempDir::new("cache");
    let path = dir.db();
    let store = Store::open(&path).expect("open");
    let row = |hash: &str, created: f64, expires: Option<f64>| CacheRow {
        task_key: "flow/task".into(),
        cache_key: "k".into(),
        inputs_hash: hash.into(),
        created,
        expires,
        result_location: format!("results/{hash}"),
        serializer: "pickle".into(),
    };
    assert_eq!(store.cache_get("flow/task", "k", 0.0), Ok(None));
    store.cache_put(&row("a", 10.0, Some(20.0))).expect("put");
    store.cache_put(&row("b", 12.0, None)).expect("put");
    assert_eq!(
        store.cache_get("flow/task", "k", 15.0),
        Ok(Some(row("b", 12.0, None)))
    );
    assert_eq!(
        store
            .cache_candidates("flow/task", "k", 15.0)
            .expect("candidates")
            .len(),
        2
    );
    // Expired entries are not returned.
    assert_eq!(
        store
            .cache_candidates("flow/task", "k", 20.0)
            .expect("c")
            .len(),
        1
    );
    // Same inputs hash: replaced.
    store.cache_put(&row("a", 30.0, Some(40.0))).expect("put");
    assert_eq!(
        store.cache_get("flow/task", "k", 35.0),
        Ok(Some(row("a", 30.0, Some(40.0))))
    );
    assert_eq!(store.cache_get("flow/task", "other", 35.0), Ok(None));

    // Through the recorder, durable across connections.
    let rec = store.recorder().expect("recorder");
    rec.send(Event::CachePut(CacheRow {
        cache_key: "other".into(),
        ..row("c", 50.0, None)
    }));
    rec.close().expect("close");
    let again = Store::open(&path).expect("reopen");
    assert_eq!(
        again
            .cache_get("flow/task", "other", 1e12)
            .expect("get")
            .map(|r| r.result_location),
        Some("results/c".into())
    );
}

#[test]
fn restarting_a_flow_run_keeps_its_task_runs() {
    let dir = TempDir::new("restart");
    let path = dir.db();
    let fr = id("again");
    let name: Arc<str> = Arc::from("t");
    let rec = Recorder::start(&path).expect("start");
    rec.send(started(&fr, "f"));
    rec.send(task_runs(&fr, vec![task_run(0, 0, &name, None)]));
    rec.send(transition(
        &fr,
        TransitionItem {
            result_location: Some("r0".into()),
            ..tr(0, StateKind::Success, 1, 5.0)
        },
    ));
    rec.send(ended(&fr, StateKind::Cancelled, 6.0));
    rec.close().expect("close");
    // A second process (new recorder, so the id is looked up in the file).
    let rec = Recorder::start(&path).expect("start");
    rec.send(started(&fr, "f"));
    rec.send(task_runs(&fr, vec![task_run(0, 0, &name, None)]));
    rec.close().expect("close");
    let store = Store::open(&path).expect("open");
    let f = flow_run(&store, "again");
    assert_eq!((f.state.as_str(), f.ended), ("Running", None));
    let t = store.task_runs("again").expect("tasks");
    assert_eq!(t[0].state, StateKind::Success);
    assert_eq!(t[0].result_location.as_deref(), Some("r0"));
}

#[test]
fn a_reused_pid_or_a_reboot_does_not_keep_a_run_running() {
    let dir = TempDir::new("identity");
    let path = dir.db();
    let rec = Recorder::start(&path).expect("start");
    let me = std::process::id();
    for fr in ["mine", "rebooted"] {
        rec.send(started_by(fr, me, "here"));
    }
    rec.close().expect("close");
    if ferroflow_core::store::process_identity(me).is_none() {
        return; // no /proc: the pid check alone applies (tested above)
    }
    // As if "rebooted" had been recorded by this pid before a reboot (or by a
    // process whose pid this one now reuses).
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute(
        "UPDATE flow_runs SET proc = 'another-boot/42' WHERE id = 'rebooted'",
        [],
    )
    .expect("update");
    drop(conn);
    let store = Store::open(&path).expect("open");
    // Even an is_alive that says yes to every pid does not keep it running.
    let marked = store.fixup_interrupted("here", |_| true).expect("fixup");
    assert_eq!(marked, ["rebooted"]);
    assert_eq!(flow_run(&store, "mine").state, "Running");
}

/// The schema of session 1's ferroflow (version 1); version 2 added `proc`.
const OLD_SCHEMA: &str = "
CREATE TABLE flow_runs(key INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
    flow_name TEXT NOT NULL, parameters TEXT NOT NULL DEFAULT '{}', state TEXT NOT NULL,
    message TEXT, started REAL NOT NULL, ended REAL, pid INTEGER, host TEXT,
    resumed_from TEXT);
CREATE INDEX flow_runs_by_started ON flow_runs(started);
CREATE TABLE journal(seq INTEGER PRIMARY KEY, flow_run INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX journal_by_flow_run ON journal(flow_run, seq);
CREATE TABLE logs(flow_run INTEGER NOT NULL, run INTEGER, level INTEGER NOT NULL,
    at REAL NOT NULL, message TEXT NOT NULL);
CREATE INDEX logs_by_flow_run ON logs(flow_run);
CREATE TABLE cache(task_key TEXT NOT NULL, cache_key TEXT NOT NULL,
    inputs_hash TEXT NOT NULL DEFAULT '', created REAL NOT NULL, expires REAL,
    result_location TEXT NOT NULL, serializer TEXT NOT NULL DEFAULT '',
    PRIMARY KEY(task_key, cache_key, inputs_hash));
INSERT INTO flow_runs(key, id, flow_name, state, started, ended)
    VALUES (1, 'old', 'f', 'Success', 10.0, 11.0), (2, 'older', 'g', 'Failed', 5.0, 6.0);
INSERT INTO logs(flow_run, run, level, at, message)
    VALUES (1, 3, 40, 10.5, 'boom'), (2, NULL, 20, 5.5, 'flow line'), (1, NULL, 20, 10.7, 'late');
";

/// What version 3 changed: logs keyed by the flow run's text id, every line kept.
const V3_LOGS: &str = "
CREATE TABLE logs_v3(flow_run_id TEXT NOT NULL, task_run_id INTEGER, level INTEGER NOT NULL,
    time REAL NOT NULL, message TEXT NOT NULL);
INSERT INTO logs_v3(flow_run_id, task_run_id, level, time, message)
    SELECT f.id, l.run, l.level, l.at, l.message
    FROM logs l JOIN flow_runs f ON l.flow_run = f.key ORDER BY l.rowid;
DROP TABLE logs;
ALTER TABLE logs_v3 RENAME TO logs;
CREATE INDEX logs_by_flow_run ON logs(flow_run_id);
ALTER TABLE flow_runs ADD COLUMN structure TEXT;
";

/// An old store, written as `version` wrote it, upgraded in place on open:
/// every flow run and log line kept, the logs in the shape of version 3.
fn upgrade_keeps_everything(version: i64) {
    let dir = TempDir::new("upgrade");
    let path = dir.db();
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch(OLD_SCHEMA).expect("old schema");
    if version >= 2 {
        conn.execute_batch("ALTER TABLE flow_runs ADD COLUMN proc TEXT;")
            .expect("v2");
    }
    if version >= 3 {
        conn.execute_batch(V3_LOGS).expect("v3");
    }
    if version >= 4 {
        conn.execute_batch(include_str!("../src/store/platform.sql"))
            .expect("v4");
    }
    conn.pragma_update(None, "user_version", version)
        .expect("version");
    drop(conn);
    let store = Store::open(&path).expect("open upgrades");
    assert_eq!(flow_run(&store, "old").flow_name, "f");
    assert_eq!(flow_run(&store, "older").state, "Failed");
    let logs = store.logs("old").expect("logs");
    let lines: Vec<(Option<u32>, i32, &str)> = logs
        .iter()
        .map(|l| (l.run.map(|r| r.0), l.level, l.message.as_str()))
        .collect();
    assert_eq!(lines, [(Some(3), 40, "boom"), (None, 20, "late")]);
    assert_eq!(logs[0].at, 10.5);
    assert_eq!(store.logs("older").expect("logs")[0].message, "flow line");
    assert_eq!(store.flow_structure("old").expect("structure"), None);
    drop(store);
    let conn = rusqlite::Connection::open(&path).expect("open");
    let now: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(now, ferroflow_core::store::SCHEMA_VERSION);
    let cols: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('logs') ORDER BY cid")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("columns");
    assert_eq!(
        cols,
        ["flow_run_id", "task_run_id", "level", "time", "message"]
    );
    let proc: Option<String> = conn
        .query_row("SELECT proc FROM flow_runs WHERE id = 'old'", [], |r| {
            r.get(0)
        })
        .expect("column exists");
    assert_eq!(proc, None);
    // Version 4: the platform's columns and tables, empty.
    let (flow_id, state_version): (Option<String>, i64) = conn
        .query_row(
            "SELECT flow_id, version FROM flow_runs WHERE id = 'old'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("platform columns exist");
    assert_eq!((flow_id, state_version), (None, 0));
    let projects: i64 = conn
        .query_row("SELECT count(*) FROM projects", [], |r| r.get(0))
        .expect("platform tables exist");
    assert_eq!(projects, 0);
    // Version 5: tokens and sessions, empty; audit rows have an address.
    let auth: i64 = conn
        .query_row(
            "SELECT (SELECT count(*) FROM tokens) + (SELECT count(*) FROM sessions) \
             + (SELECT count(address) FROM audit) + (SELECT count(token_name) FROM agents)",
            [],
            |r| r.get(0),
        )
        .expect("auth tables exist");
    assert_eq!(auth, 0);
    assert_eq!(log_indexes(&conn), V8_LOG_INDEXES);
    drop(conn);
    // A new run records into the upgraded store as into a fresh one.
    let rec = Recorder::start(&path).expect("start");
    let new = id("new");
    rec.send(started(&new, "f"));
    rec.send(log(&new, None, 20, 20.0, "hello"));
    rec.close().expect("close");
    let store = Store::open(&path).expect("open");
    assert_eq!(store.logs("new").expect("logs")[0].message, "hello");
}

/// The indexes that version 8 added on `logs` (by time, by task run, by level).
const V8_LOG_INDEXES: [&str; 3] = ["logs_by_level", "logs_by_task_run", "logs_by_time"];

/// The names of the indexes on `logs` that schema version 8 added, sorted.
fn log_indexes(conn: &rusqlite::Connection) -> Vec<String> {
    conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'logs' \
         AND name != 'logs_by_flow_run' AND sql IS NOT NULL ORDER BY name",
    )
    .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
    .expect("indexes")
}

#[test]
fn a_version_7_store_gets_the_log_indexes() {
    let dir = TempDir::new("upgrade-v7");
    let path = dir.db();
    let rec = Recorder::start(&path).expect("start");
    let fr = id("fr");
    rec.send(started(&fr, "f"));
    rec.send(log(&fr, Some(3), 40, 2.0, "boom"));
    rec.send(log(&fr, None, 20, 1.0, "first"));
    rec.close().expect("close");
    // As version 7 left it: no log index but the one by flow run.
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch(
        "DROP INDEX logs_by_time; DROP INDEX logs_by_task_run; DROP INDEX logs_by_level; \
         PRAGMA user_version = 7;",
    )
    .expect("as version 7");
    assert!(log_indexes(&conn).is_empty());
    drop(conn);
    let store = Store::open(&path).expect("open upgrades");
    let messages: Vec<String> = store
        .logs("fr")
        .expect("logs")
        .into_iter()
        .map(|l| l.message)
        .collect();
    assert_eq!(messages, ["boom", "first"]);
    drop(store);
    let conn = rusqlite::Connection::open(&path).expect("open");
    assert_eq!(log_indexes(&conn), V8_LOG_INDEXES);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, 8);
    // A page of a run's lines in time order walks the index, with no sort.
    let plan: Vec<String> = conn
        .prepare(
            "EXPLAIN QUERY PLAN SELECT message FROM logs WHERE flow_run_id = ?1 \
             ORDER BY time, rowid LIMIT 200",
        )
        .and_then(|mut s| s.query_map(["fr"], |r| r.get(3))?.collect())
        .expect("plan");
    assert_eq!(
        plan,
        ["SEARCH logs USING INDEX logs_by_time (flow_run_id=?)"]
    );
}

#[test]
fn a_version_1_store_is_upgraded_in_place() {
    upgrade_keeps_everything(1);
}

#[test]
fn a_version_2_store_is_upgraded_in_place() {
    upgrade_keeps_everything(2);
}

#[test]
fn a_version_3_store_is_upgraded_in_place() {
    upgrade_keeps_everything(3);
}

#[test]
fn a_version_4_store_is_upgraded_in_place() {
    upgrade_keeps_everything(4);
}

#[test]
fn log_batches_and_structure_are_recorded() {
    let dir = TempDir::new("logs");
    let path = dir.db();
    let rec = Recorder::start(&path).expect("start");
    let fr = id("fr");
    rec.send(started(&fr, "f"));
    let lines = (0..10_000u32)
        .map(|i| LogLine {
            run: (i % 2 == 0).then_some(RunId(i)),
            level: 20,
            at: 100.0 + f64::from(i),
            message: format!("line {i}"),
        })
        .collect();
    rec.send(Event::Logs {
        flow_run_id: Arc::clone(&fr),
        lines,
    });
    rec.send(Event::FlowStructure {
        id: Arc::clone(&fr),
        structure_json: "[1]".into(),
    });
    rec.send(Event::Logs {
        flow_run_id: id("nobody"),
        lines: vec![LogLine {
            run: None,
            level: 20,
            at: 1.0,
            message: "lost".into(),
        }],
    });
    assert!(
        rec.flush().is_err(),
        "a batch for an unknown flow run is reported"
    );
    assert_eq!(rec.lost(), 1);
    drop(rec);
    let store = Store::open(&path).expect("open");
    let logs = store.logs("fr").expect("logs");
    assert_eq!(logs.len(), 10_000);
    assert_eq!(logs[9_999].message, "line 9999");
    assert_eq!(logs[2].run, Some(RunId(2)));
    assert_eq!(logs[3].run, None);
    assert_eq!(
        store.flow_structure("fr").expect("get").as_deref(),
        Some("[1]")
    );
    assert_eq!(
        store.last_record_time("fr").expect("t"),
        Some(100.0 + 9_999.0)
    );
}
