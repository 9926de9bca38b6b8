//! Recording a flow run into the run store, from the runner's journal.
//!
//! One `Recorder` (one writer thread) per store path and process, shared by every
//! flow run; events go through an `EventBuffer`, so the run loop only appends to a
//! vector. Map children are registered as one range when their parent expands.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ferroflow_core::store::{
    Event, EventBuffer, NewTaskRun, PackItem, Recorder, StoreError, TransitionItem, now,
};
use std::time::Instant;

use ferroflow_core::{Run, RunId, StateKind, TaskId, Transition};

/// Transitions per `Transitions` event.
const BATCH: usize = 8192;

/// How many stores a process keeps open at once.
const MAX_OPEN: usize = 4;

fn recorders() -> &'static Mutex<HashMap<PathBuf, Arc<Recorder>>> {
    static R: OnceLock<Mutex<HashMap<PathBuf, Arc<Recorder>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The process-wide recorder for a store, started on first use (or again after
/// its writer stopped on an error).
pub fn recorder_for(path: &Path) -> Result<Arc<Recorder>, StoreError> {
    let mut map = recorders().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = map.get(path)
        && r.error().is_none()
    {
        return Ok(Arc::clone(r));
    }
    let r = Arc::new(Recorder::start(path)?);
    // Keep a few stores open; close the others (their last flow run has ended
    // and flushed), so a process that records into many homes does not pile
    // up writer threads and open files.
    if map.len() >= MAX_OPEN {
        let idle: Vec<PathBuf> = map
            .iter()
            .filter(|(_, r)| Arc::strong_count(r) == 1)
            .map(|(p, _)| p.clone())
            .collect();
        for p in idle {
            if let Some(old) = map.remove(&p)
                && let Ok(old) = Arc::try_unwrap(old)
            {
                let _ = std::thread::Builder::new()
                    .name("ferroflow-store-close".into())
                    .spawn(move || {
                        let _ = old.close();
                    });
            }
        }
    }
    map.insert(path.to_path_buf(), Arc::clone(&r));
    Ok(r)
}

/// What a flow run needs to know to be recorded.
pub struct FlowRunMeta {
    /// The run store file.
    pub store_path: PathBuf,
    pub flow_run_id: String,
    pub flow_name: String,
    /// The flow's parameters, as JSON.
    pub parameters_json: String,
    /// The id of the flow run this one resumes, if any.
    pub resumed_from: Option<String>,
    /// This machine's name, as `socket.gethostname()` gives it (the interrupted-run
    /// fixup compares it).
    pub host: String,
}

/// The recording side of one flow run.
pub struct Recording {
    rec: Arc<Recorder>,
    buf: EventBuffer,
    /// The flow run id.
    id: Arc<str>,
    /// Task names, by task id (shared by every event that names a task).
    names: Vec<Arc<str>>,
    /// Transitions not yet in a `Transitions` event.
    items: Vec<TransitionItem>,
    /// The wall-clock time (seconds since the epoch) at `origin`: a
    /// transition's instant converts to wall time from this pair, so it costs
    /// no clock read.
    wall: f64,
    origin: Instant,
    /// Result locations reported by checkpointing tasks, waiting for the run's
    /// next transition.
    pub locations: HashMap<u32, String>,
}

impl Recording {
    /// Open (or share) the store's recorder and record the start of the run and
    /// its task runs.
    pub fn start(meta: FlowRunMeta, run: &Run) -> Result<Recording, StoreError> {
        let rec = recorder_for(&meta.store_path)?;
        let id: Arc<str> = Arc::from(meta.flow_run_id.as_str());
        let names: Vec<Arc<str>> = run
            .graph()
            .tasks
            .iter()
            .map(|t| Arc::from(t.name.as_str()))
            .collect();
        rec.send(Event::FlowRunStarted {
            id: Arc::clone(&id),
            flow_name: meta.flow_name,
            parameters_json: meta.parameters_json,
            started: now(),
            pid: std::process::id(),
            host: meta.host,
            resumed_from: meta.resumed_from,
        });
        rec.send(Event::TaskRuns {
            flow_run_id: Arc::clone(&id),
            runs: names
                .iter()
                .enumerate()
                .map(|(t, name)| NewTaskRun {
                    run: RunId(t as u32),
                    task: TaskId(t as u32),
                    task_name: Arc::clone(name),
                    map_index: None,
                })
                .collect(),
        });
        Ok(Recording {
            rec,
            buf: EventBuffer::new(),
            id,
            names,
            items: Vec::with_capacity(BATCH),
            wall: now(),
            origin: Instant::now(),
            locations: HashMap::new(),
        })
    }

    /// Turn journal entries into store events. Transitions collect in a batch
    /// that goes out as one event every few thousand entries.
    pub fn journal(&mut self, run: &Run, entries: &[Transition]) {
        if entries.is_empty() {
            return;
        }
        let n_tasks = self.names.len();
        for &(r, state, instant) in entries {
            // The instant the run loop gave the core with the call that made
            // this transition: the real start or end of an attempt.
            let at = self.wall_time(instant);
            if state == StateKind::Mapped && r.idx() < n_tasks {
                let task = TaskId(r.0);
                if let Some((first_run, count)) = run.children(task) {
                    // Children must be registered before their own transitions.
                    self.flush_items();
                    self.buf.push(
                        &self.rec,
                        Event::MapChildren {
                            flow_run_id: Arc::clone(&self.id),
                            task,
                            task_name: Arc::clone(&self.names[r.idx()]),
                            first_run,
                            count,
                        },
                    );
                }
            }
            let result_location = if !self.locations.is_empty() && state.is_successful() {
                self.locations.remove(&r.0)
            } else {
                None
            };
            let message = if state == StateKind::Running {
                None
            } else {
                run.message(r).map(str::to_string)
            };
            self.items.push(TransitionItem {
                run: r,
                state,
                message,
                run_count: run.run_count(r),
                at,
                result_location,
            });
        }
        if self.items.len() >= BATCH {
            self.flush_items();
        }
    }

    /// Wall-clock seconds of a monotonic instant.
    fn wall_time(&self, at: Instant) -> f64 {
        match at.checked_duration_since(self.origin) {
            Some(d) => self.wall + d.as_secs_f64(),
            None => self.wall - self.origin.duration_since(at).as_secs_f64(),
        }
    }

    fn flush_items(&mut self) {
        if self.items.is_empty() {
            return;
        }
        // A full batch hands over its buffer; a small one (sent before a slow
        // call or a wait) is copied out, so the batch buffer is not
        // reallocated at its full size for a few items.
        let items = if self.items.len() >= BATCH / 2 {
            std::mem::replace(&mut self.items, Vec::with_capacity(BATCH))
        } else {
            self.items.drain(..).collect()
        };
        self.buf.push(
            &self.rec,
            Event::Transitions {
                flow_run_id: Arc::clone(&self.id),
                items,
            },
        );
    }

    /// Record the end of the flow run and wait until everything is committed.
    pub fn end(&mut self, state: StateKind, message: Option<String>) -> Result<(), StoreError> {
        self.flush_items();
        self.buf.send(&self.rec);
        self.rec.send(Event::FlowRunEnded {
            id: Arc::clone(&self.id),
            state,
            message,
            ended: now(),
        });
        self.rec.flush()
    }

    /// Where checkpointed values were written in a pack file (after the bytes
    /// reached the file).
    pub fn pack_locations(&mut self, pack: &Arc<str>, items: Vec<PackItem>) {
        // After the transitions buffered so far, so a reader never sees a
        // location ahead of its run's registration.
        self.flush_items();
        self.buf.push(
            &self.rec,
            Event::PackLocations {
                flow_run_id: Arc::clone(&self.id),
                pack: Arc::clone(pack),
                items,
            },
        );
    }

    /// A log line of one task run (e.g. the traceback of a failure).
    pub fn log(&mut self, run: RunId, level: i32, message: String) {
        self.flush_items();
        self.buf.push(
            &self.rec,
            Event::Log {
                flow_run_id: Arc::clone(&self.id),
                run: Some(run),
                level,
                at: now(),
                message,
            },
        );
    }

    /// Hand what is buffered to the writer (before waits and slow calls):
    /// posted, so this costs a lock, not a wake-up of the writer thread.
    pub fn send(&mut self) {
        self.flush_items();
        self.buf.post(&self.rec);
    }

    /// Records the writer could not store.
    pub fn lost(&self) -> u64 {
        self.rec.lost()
    }
}
