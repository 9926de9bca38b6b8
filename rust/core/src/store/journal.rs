//! The task-run journal: the compact binary records the writer appends (one
//! blob per flow run per commit) and the fold that turns them back into rows.
//!
//! A blob is a version byte, a base time (`f64`, little-endian) and records:
//!
//! | tag | record | fields |
//! | --- | --- | --- |
//! | 1 | task name | task, name |
//! | 2 | register one run | run, task, map index + 1 (0: none) |
//! | 3 | register a range | first run, count, task, first map index + 1 (0: none) |
//! | 4 | transition | run, state code with flags (0x80 message, 0x40 result location), run count, time, \[message\], \[location\] |
//! | 5 | result location | run, location |
//! | 6 | pack locations | pack location, count, then per record: run (zig-zag delta from the previous run + 1), offset (zig-zag delta from the end of the previous payload + 4), length |
//!
//! A pack record's location reads back as `"<pack>#<offset>:<length>"`; the
//! deltas make a record of a depth-first map cost about three bytes.
//! Integers are LEB128 varints; a time is the zig-zag varint of microseconds
//! after the base time; a string is a varint length and UTF-8 bytes. Within a
//! range the map index grows with the run id (a map's children are contiguous).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::StateKind;

const VERSION: u8 = 1;
const TAG_NAME: u8 = 1;
const TAG_REGISTER: u8 = 2;
const TAG_RANGE: u8 = 3;
const TAG_TRANSITION: u8 = 4;
const TAG_LOCATION: u8 = 5;
const TAG_PACK: u8 = 6;
/// The length prefix before each payload of a pack file.
const PACK_PREFIX: u64 = 4;
const HAS_MESSAGE: u8 = 0x80;
const HAS_LOCATION: u8 = 0x40;
const NAN_TIME: i64 = i64::MIN;
/// A range ending past this is taken as damage, not a map.
const MAX_RANGE: u64 = 1 << 32;
/// A fold holding more runs than this is taken as damage (a run table this big
/// would not fit in memory either).
const MAX_FOLD_RUNS: u64 = 1 << 28;

/// A fast hasher for small integer keys.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A hash map keyed by small integers.
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Builds one blob.
pub(crate) struct Encoder {
    buf: Vec<u8>,
    base: Option<f64>,
}

impl Encoder {
    pub(crate) fn new() -> Encoder {
        let mut buf = Vec::with_capacity(256);
        buf.push(VERSION);
        buf.extend_from_slice(&0f64.to_le_bytes());
        Encoder { buf, base: None }
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn string(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    fn time(&mut self, at: f64) {
        if !at.is_finite() {
            self.varint(zigzag(NAN_TIME));
            return;
        }
        let base = match self.base {
            Some(b) => b,
            None => {
                self.base = Some(at);
                self.buf[1..9].copy_from_slice(&at.to_le_bytes());
                at
            }
        };
        let micros = ((at - base) * 1e6).round();
        // Out of range (centuries apart) saturates; `as` does not panic.
        self.varint(zigzag(micros as i64));
    }

    pub(crate) fn task_name(&mut self, task: u32, name: &str) {
        self.buf.push(TAG_NAME);
        self.varint(u64::from(task));
        self.string(name);
    }

    /// A map index as stored: `index + 1`, 0 for none (see [`Decoder::index`]).
    fn index(&mut self, map_index: Option<u32>) {
        self.varint(map_index.map_or(0, |i| u64::from(i) + 1));
    }

    pub(crate) fn register(&mut self, run: u32, task: u32, map_index: Option<u32>) {
        self.buf.push(TAG_REGISTER);
        self.varint(u64::from(run));
        self.varint(u64::from(task));
        self.index(map_index);
    }

    pub(crate) fn register_range(
        &mut self,
        first_run: u32,
        count: u32,
        task: u32,
        first_map_index: Option<u32>,
    ) {
        self.buf.push(TAG_RANGE);
        self.varint(u64::from(first_run));
        self.varint(u64::from(count));
        self.varint(u64::from(task));
        self.index(first_map_index);
    }

    pub(crate) fn transition(
        &mut self,
        run: u32,
        state: StateKind,
        run_count: u32,
        at: f64,
        message: Option<&str>,
        location: Option<&str>,
    ) {
        self.buf.push(TAG_TRANSITION);
        self.varint(u64::from(run));
        let mut code = state as u8;
        if message.is_some() {
            code |= HAS_MESSAGE;
        }
        if location.is_some() {
            code |= HAS_LOCATION;
        }
        self.buf.push(code);
        self.varint(u64::from(run_count));
        self.time(at);
        if let Some(m) = message {
            self.string(m);
        }
        if let Some(l) = location {
            self.string(l);
        }
    }

    pub(crate) fn result_location(&mut self, run: u32, location: &str) {
        self.buf.push(TAG_LOCATION);
        self.varint(u64::from(run));
        self.string(location);
    }

    pub(crate) fn pack_locations(&mut self, pack: &str, items: &[super::PackItem]) {
        self.buf.push(TAG_PACK);
        self.string(pack);
        self.varint(items.len() as u64);
        let (mut next_run, mut next_offset) = (0i64, 0i64);
        for it in items {
            let run = i64::from(it.run.0);
            self.varint(zigzag(run - next_run));
            // Offsets of real files fit an i64; wrapping keeps damage a decode
            // error, never a panic.
            let offset = it.offset as i64;
            self.varint(zigzag(offset.wrapping_sub(next_offset)));
            self.varint(u64::from(it.length));
            next_run = run + 1;
            next_offset = offset
                .wrapping_add(i64::from(it.length))
                .wrapping_add(PACK_PREFIX as i64);
        }
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// One decoded record.
#[derive(Debug, PartialEq)]
pub(crate) enum Rec<'a> {
    Name {
        task: u32,
        name: &'a str,
    },
    Range {
        first_run: u32,
        count: u32,
        task: u32,
        first_map_index: Option<u32>,
    },
    Transition {
        run: u32,
        state: StateKind,
        run_count: u32,
        at: f64,
        message: Option<&'a str>,
        location: Option<&'a str>,
    },
    Location {
        run: u32,
        location: &'a str,
    },
    /// Records of one pack: `(run, offset, length)`.
    Pack {
        pack: &'a str,
        items: Vec<(u32, u64, u32)>,
    },
}

/// Reads the records of one blob. Damage gives an error, never a panic.
pub(crate) struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    base: f64,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Result<Decoder<'a>, String> {
        match buf {
            [VERSION, rest @ ..] if rest.len() >= 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&rest[..8]);
                Ok(Decoder {
                    buf,
                    pos: 9,
                    base: f64::from_le_bytes(b),
                })
            }
            [v, ..] if *v != VERSION => Err(format!("journal record version {v} is unknown")),
            _ => Err("journal record is truncated".into()),
        }
    }

    fn byte(&mut self) -> Result<u8, String> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or("journal record is truncated")?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("journal record has a bad number".into())
    }

    fn u32(&mut self) -> Result<u32, String> {
        u32::try_from(self.varint()?).map_err(|_| "journal record has a bad id".to_string())
    }

    fn index(&mut self) -> Result<Option<u32>, String> {
        match self.varint()? {
            0 => Ok(None),
            v => u32::try_from(v - 1)
                .map(Some)
                .map_err(|_| "journal record has a bad map index".to_string()),
        }
    }

    fn string(&mut self) -> Result<&'a str, String> {
        let len = usize::try_from(self.varint()?).map_err(|_| "bad length".to_string())?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.buf.len())
            .ok_or("journal record is truncated")?;
        let s = std::str::from_utf8(&self.buf[self.pos..end])
            .map_err(|_| "journal record has a bad string".to_string())?;
        self.pos = end;
        Ok(s)
    }

    /// A string if the record's flags say one follows.
    fn string_if(&mut self, present: bool) -> Result<Option<&'a str>, String> {
        if present {
            self.string().map(Some)
        } else {
            Ok(None)
        }
    }

    fn time(&mut self) -> Result<f64, String> {
        let d = unzigzag(self.varint()?);
        Ok(if d == NAN_TIME {
            f64::NAN
        } else {
            self.base + d as f64 / 1e6
        })
    }

    /// The next record, or `None` at the end.
    pub(crate) fn next_rec(&mut self) -> Result<Option<Rec<'a>>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let rec = match self.byte()? {
            TAG_NAME => Rec::Name {
                task: self.u32()?,
                name: self.string()?,
            },
            TAG_REGISTER => Rec::Range {
                first_run: self.u32()?,
                count: 1,
                task: self.u32()?,
                first_map_index: self.index()?,
            },
            TAG_RANGE => {
                let first_run = self.u32()?;
                let count = self.u32()?;
                if u64::from(first_run) + u64::from(count) > MAX_RANGE {
                    return Err("journal record has a bad range".into());
                }
                Rec::Range {
                    first_run,
                    count,
                    task: self.u32()?,
                    first_map_index: self.index()?,
                }
            }
            TAG_TRANSITION => {
                let run = self.u32()?;
                let code = self.byte()?;
                let state = StateKind::from_code(code & !(HAS_MESSAGE | HAS_LOCATION))
                    .ok_or("journal record has an unknown state")?;
                let run_count = self.u32()?;
                let at = self.time()?;
                let message = self.string_if(code & HAS_MESSAGE != 0)?;
                let location = self.string_if(code & HAS_LOCATION != 0)?;
                Rec::Transition {
                    run,
                    state,
                    run_count,
                    at,
                    message,
                    location,
                }
            }
            TAG_LOCATION => Rec::Location {
                run: self.u32()?,
                location: self.string()?,
            },
            TAG_PACK => {
                let pack = self.string()?;
                let count = self.varint()?;
                // Each record takes at least three bytes: a count past what is
                // left is damage (and must not size an allocation).
                if count > (self.buf.len() - self.pos) as u64 {
                    return Err("journal record has a bad pack count".into());
                }
                let mut items = Vec::with_capacity(count as usize);
                let (mut next_run, mut next_offset) = (0i64, 0i64);
                for _ in 0..count {
                    let run = next_run.wrapping_add(unzigzag(self.varint()?));
                    let offset = next_offset.wrapping_add(unzigzag(self.varint()?));
                    let length = self.u32()?;
                    let (Ok(r), Ok(o)) = (u32::try_from(run), u64::try_from(offset)) else {
                        return Err("journal record has a bad pack record".into());
                    };
                    items.push((r, o, length));
                    next_run = run + 1;
                    next_offset = offset
                        .wrapping_add(i64::from(length))
                        .wrapping_add(PACK_PREFIX as i64);
                }
                Rec::Pack { pack, items }
            }
            t => return Err(format!("journal record has an unknown tag {t}")),
        };
        Ok(Some(rec))
    }
}

/// The latest state of one task run, as folded from the journal.
#[derive(Clone, Debug, Default)]
pub(crate) struct RunFold {
    pub task: u32,
    pub map_index: Option<u32>,
    pub run_count: u32,
    pub state: Option<StateKind>,
    pub message: Option<String>,
    pub started: Option<f64>,
    pub ended: Option<f64>,
    pub result_location: Option<String>,
}

/// The task runs of one flow run by run id: a vector for the dense ids the run
/// table hands out, a map for any far-off id (so that damaged data cannot make
/// it allocate for ids that are not there).
#[derive(Default)]
pub(crate) struct RunTable {
    dense: Vec<Option<RunFold>>,
    /// Only ids at or past `dense.len()`.
    sparse: IdMap<u32, RunFold>,
    count: u64,
}

/// How far past the dense part a registration may reach and still grow it.
const DENSE_SLACK: u64 = 1 << 20;

impl RunTable {
    /// The run, created (default) if it is new. `end` is where the registration
    /// it belongs to ends (for growing the dense part once per range).
    fn entry(&mut self, run: u32, end: u64) -> &mut RunFold {
        let len = self.dense.len() as u64;
        if u64::from(run) >= len && u64::from(run) <= len + DENSE_SLACK {
            let new_len = end.max(u64::from(run) + 1).min(MAX_FOLD_RUNS) as usize;
            self.dense
                .resize_with(new_len.max(run as usize + 1), || None);
            if !self.sparse.is_empty() {
                let len = self.dense.len() as u32;
                let moved: Vec<u32> = self.sparse.keys().copied().filter(|&k| k < len).collect();
                for k in moved {
                    self.dense[k as usize] = self.sparse.remove(&k);
                }
            }
        }
        let slot = match self.dense.get_mut(run as usize) {
            Some(slot) => slot,
            None => {
                return self.sparse.entry(run).or_insert_with(|| {
                    self.count += 1;
                    RunFold::default()
                });
            }
        };
        if slot.is_none() {
            self.count += 1;
        }
        slot.get_or_insert_with(RunFold::default)
    }

    /// The run, if registered.
    pub(crate) fn get_mut(&mut self, run: u32) -> Option<&mut RunFold> {
        match self.dense.get_mut(run as usize) {
            Some(slot) => slot.as_mut(),
            None => self.sparse.get_mut(&run),
        }
    }

    /// How many runs are registered.
    pub(crate) fn len(&self) -> u64 {
        self.count
    }

    /// The runs in run-id order, borrowed.
    pub(crate) fn iter_sorted(&self) -> impl Iterator<Item = (u32, &RunFold)> {
        let mut sparse: Vec<(u32, &RunFold)> = self.sparse.iter().map(|(&k, r)| (k, r)).collect();
        sparse.sort_unstable_by_key(|(k, _)| *k);
        self.dense
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|r| (i as u32, r)))
            .chain(sparse)
    }

    /// The runs in run-id order.
    pub(crate) fn into_sorted(self) -> Vec<(u32, RunFold)> {
        let mut out: Vec<(u32, RunFold)> = Vec::with_capacity(self.count as usize);
        out.extend(
            self.dense
                .into_iter()
                .enumerate()
                .filter_map(|(i, r)| r.map(|r| (i as u32, r))),
        );
        let mut sparse: Vec<(u32, RunFold)> = self.sparse.into_iter().collect();
        sparse.sort_unstable_by_key(|(k, _)| *k);
        out.extend(sparse);
        out
    }
}

/// Task runs and task names of one flow run.
#[derive(Default)]
pub(crate) struct Fold {
    pub runs: RunTable,
    pub names: IdMap<u32, String>,
}

impl Fold {
    /// Apply one blob. Records about runs never registered are ignored (the
    /// writer rejects them).
    pub(crate) fn apply(&mut self, blob: &[u8]) -> Result<(), String> {
        let mut d = Decoder::new(blob)?;
        while let Some(rec) = d.next_rec()? {
            match rec {
                Rec::Name { task, name } => {
                    self.names.insert(task, name.to_string());
                }
                Rec::Range {
                    first_run,
                    count,
                    task,
                    first_map_index,
                } => {
                    if self.runs.len() + u64::from(count) > MAX_FOLD_RUNS {
                        return Err("journal registers more task runs than a run can have".into());
                    }
                    let end = u64::from(first_run) + u64::from(count);
                    for i in 0..count {
                        let r = self.runs.entry(first_run + i, end);
                        r.task = task;
                        r.map_index = first_map_index.map(|m| m.wrapping_add(i));
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
                    if let Some(r) = self.runs.get_mut(run) {
                        r.state = Some(state);
                        r.run_count = run_count;
                        r.message = message.map(str::to_string);
                        if state == StateKind::Running && r.started.is_none() {
                            r.started = Some(at);
                        }
                        r.ended = state.is_finished().then_some(at);
                        if let Some(l) = location {
                            r.result_location = Some(l.to_string());
                        }
                    }
                }
                Rec::Location { run, location } => {
                    if let Some(r) = self.runs.get_mut(run) {
                        r.result_location = Some(location.to_string());
                    }
                }
                Rec::Pack { pack, items } => {
                    for (run, offset, length) in items {
                        if let Some(r) = self.runs.get_mut(run) {
                            r.result_location = Some(format!("{pack}#{offset}:{length}"));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The latest (finite) transition time in one blob, if it has a transition.
pub(crate) fn last_time(blob: &[u8]) -> Result<Option<f64>, String> {
    let mut d = Decoder::new(blob)?;
    let mut last: Option<f64> = None;
    while let Some(rec) = d.next_rec()? {
        if let Rec::Transition { at, .. } = rec
            && at.is_finite()
        {
            last = Some(last.map_or(at, |l: f64| l.max(at)));
        }
    }
    Ok(last)
}

/// The transitions of one run in one blob, appended to `out` as
/// `(state, message, at)`.
pub(crate) fn transitions_of(
    blob: &[u8],
    run: u32,
    out: &mut Vec<(StateKind, Option<String>, f64)>,
) -> Result<(), String> {
    let mut d = Decoder::new(blob)?;
    while let Some(rec) = d.next_rec()? {
        if let Rec::Transition {
            run: r,
            state,
            at,
            message,
            ..
        } = rec
            && r == run
        {
            out.push((state, message.map(str::to_string), at));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal of a parent (run 0) and three mapped children (5-7): run 6 started
    /// and failed with `failed`, run 7 succeeded with `succeeded` (at a NaN time),
    /// run 5 has a result location. Not finished, so a test can add records.
    fn sample(failed: &str, succeeded: Option<&str>) -> Encoder {
        let mut e = Encoder::new();
        e.task_name(1, "child");
        e.register(0, 0, None);
        e.register_range(5, 3, 1, Some(0));
        e.transition(6, StateKind::Running, 1, 1000.0, None, None);
        e.transition(6, StateKind::Failed, 1, 1000.5, Some(failed), Some("r/6"));
        e.transition(7, StateKind::Success, 2, f64::NAN, succeeded, None);
        e.result_location(5, "r/5");
        e
    }

    #[test]
    fn round_trip() {
        let blob = sample("boom \"x\"", None).finish();
        let mut f = Fold::default();
        f.apply(&blob).expect("decodes");
        assert_eq!(f.names.get(&1).map(String::as_str), Some("child"));
        assert_eq!(f.runs.len(), 4);
        let r6 = f.runs.get_mut(6).expect("run 6").clone();
        assert_eq!(r6.map_index, Some(1));
        assert_eq!(r6.state, Some(StateKind::Failed));
        assert_eq!(r6.started, Some(1000.0));
        assert_eq!(r6.ended, Some(1000.5));
        assert_eq!(r6.message.as_deref(), Some("boom \"x\""));
        assert_eq!(r6.result_location.as_deref(), Some("r/6"));
        assert!(
            f.runs
                .get_mut(7)
                .and_then(|r| r.ended)
                .is_some_and(f64::is_nan)
        );
        assert_eq!(
            f.runs
                .get_mut(5)
                .and_then(|r| r.result_location.clone())
                .as_deref(),
            Some("r/5")
        );
        let sorted: Vec<u32> = f.runs.into_sorted().into_iter().map(|(r, _)| r).collect();
        assert_eq!(sorted, [0, 5, 6, 7]);
        let mut t = Vec::new();
        transitions_of(&blob, 6, &mut t).expect("decodes");
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].0, StateKind::Failed);
    }

    #[test]
    fn masking_a_blob_changes_only_the_messages() {
        let mut e = sample("no s3cr3t-x here", Some("fine"));
        e.pack_locations("runs/x/t-1.pack", &[item(0, 4, 5), item(7, 13, 2)]);
        let blob = e.finish();
        let values = ["s3cr3t".to_string(), "s3cr3t-x".to_string()];
        let masked = crate::store::mask_journal_blob(&blob, &values)
            .expect("decodes")
            .expect("a message held a value");
        let (mut a, mut b) = (Fold::default(), Fold::default());
        a.apply(&blob).expect("decodes");
        b.apply(&masked).expect("decodes");
        assert_eq!(a.names, b.names);
        let (mut ra, mut rb) = (a.runs.into_sorted(), b.runs.into_sorted());
        assert_eq!(ra.len(), rb.len());
        // The longer value is masked whole.
        assert_eq!(rb[2].1.message.as_deref(), Some("no **** here"));
        rb[2].1.message = ra[2].1.message.clone();
        for ((x, p), (y, q)) in ra.drain(..).zip(rb.drain(..)) {
            assert_eq!((x, p.state, p.map_index), (y, q.state, q.map_index));
            assert_eq!(
                (p.message, p.result_location),
                (q.message, q.result_location)
            );
            assert_eq!(p.started, q.started);
            assert_eq!(p.ended.map(f64::to_bits), q.ended.map(f64::to_bits));
        }
        assert_eq!(
            crate::store::mask_journal_blob(&blob, &["absent".into()]),
            Ok(None)
        );
        assert!(crate::store::mask_journal_blob(&blob[..blob.len() - 1], &values).is_err());
    }

    fn item(run: u32, offset: u64, length: u32) -> crate::store::PackItem {
        crate::store::PackItem {
            run: crate::RunId(run),
            offset,
            length,
        }
    }

    #[test]
    fn pack_locations_round_trip_compactly() {
        let mut e = Encoder::new();
        e.register_range(10, 1000, 1, Some(0));
        // Contiguous payloads of consecutive runs: the common case.
        let items: Vec<_> = (0..1000u32)
            .map(|i| item(10 + i, 40 + u64::from(i) * 9, 5))
            .collect();
        let before = Encoder::new().finish().len();
        e.pack_locations("runs/x/t-1.pack", &items);
        // Out of order, with gaps and a large offset.
        e.pack_locations("p2", &[item(500, 7_000_000_000, 1), item(12, 3, 0)]);
        let blob = e.finish();
        // 1000 records in about three bytes each, plus the registration.
        assert!(blob.len() - before < 3200, "{} bytes", blob.len());
        let mut f = Fold::default();
        f.apply(&blob).expect("decodes");
        let loc = |f: &mut Fold, r: u32| f.runs.get_mut(r).and_then(|r| r.result_location.clone());
        assert_eq!(loc(&mut f, 10).as_deref(), Some("runs/x/t-1.pack#40:5"));
        assert_eq!(loc(&mut f, 11).as_deref(), Some("runs/x/t-1.pack#49:5"));
        assert_eq!(loc(&mut f, 1009).as_deref(), Some("runs/x/t-1.pack#9031:5"));
        assert_eq!(loc(&mut f, 500).as_deref(), Some("p2#7000000000:1"));
        assert_eq!(loc(&mut f, 12).as_deref(), Some("p2#3:0"));
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let mut e = Encoder::new();
        e.task_name(1, "child");
        e.register_range(0, 10, 1, Some(0));
        e.transition(3, StateKind::Running, 1, 5.0, Some("m"), None);
        e.pack_locations("p", &[item(3, 40, 5), item(4, 49, 5)]);
        let blob = e.finish();
        for cut in 0..blob.len() {
            let mut f = Fold::default();
            let _ = f.apply(&blob[..cut]);
        }
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0xff;
            let mut f = Fold::default();
            let _ = f.apply(&bad);
        }
        assert!(Fold::default().apply(&[]).is_err());
        // A far-off run id goes to the sparse part and still sorts last. (The
        // move from the sparse to the dense part needs a dense part past
        // `DENSE_SLACK` runs, too big for a unit test.)
        let mut e = Encoder::new();
        e.register(3_000_000_000, 1, None);
        e.register(10, 1, None);
        e.register_range(11, 5, 1, Some(0));
        let mut f = Fold::default();
        f.apply(&e.finish()).expect("decodes");
        let sorted: Vec<u32> = f.runs.into_sorted().into_iter().map(|(r, _)| r).collect();
        assert_eq!(sorted, [10, 11, 12, 13, 14, 15, 3_000_000_000]);
        assert!(Fold::default().apply(&[9, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
