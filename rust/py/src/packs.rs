//! Checkpointing map children natively: the runner serializes each successful
//! value as it settles and appends it to the task's pack file in blocks.
//!
//! A task whose only extra is a checkpoint in the default pack layout (no
//! handlers, timeout, target, cache or location template; a plain
//! `LocalResult`) runs like a plain task: its function is called directly and
//! its value goes to a [`PackSink`]. Python opens the pack (directories,
//! confinement, header, lock, compatibility checks: `_checkpoint.open_native`)
//! and hands over a writer whose `write_framed(parts)` appends framed records
//! and returns where they start. Here, per value: one serializer call (the C
//! pickler for plain builtin values), a copy into the block, and three numbers.
//!
//! A block is written when it holds 1 MiB or 16384 records, and whenever the
//! core's driver tells the runner to flush (at least every 50 ms while tasks
//! run, before a call of a task not known to be quick, before a wait), and when
//! the run ends. Only then are its records' locations sent to
//! the run store, as one compact `PackLocations` event: a location in the store
//! always names bytes that reached the file. A kill loses at most the last
//! block's checkpoints; those children run again on resume.

use std::sync::Arc;

use ferroflow_core::RunId;
use ferroflow_core::store::PackItem;
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyBytes, PyComplex, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString,
    PyTuple,
};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::{PyErrKind, ff_error, keep_interrupt};

/// A block is written once it holds this many bytes...
const BLOCK_BYTES: usize = 1 << 20;
/// ...or this many records.
const BLOCK_RECORDS: usize = 16384;
/// A payload at least this big is written on its own, not copied into the block.
const BIG: usize = 1 << 16;
/// How many objects the plain-value check looks at before giving up.
const PLAIN_BUDGET: i32 = 256;

/// The pack of one task in one flow run.
pub struct PackSink {
    /// `write_framed(parts: list[bytes]) -> int`: append, flush to the OS,
    /// return the offset of the first byte.
    write: Py<PyAny>,
    /// The pack's location, as the result backend names it.
    pub location: Arc<str>,
    /// A fast serializer for values it takes (e.g. the C pickler), called as
    /// `fast(value, *extra)`.
    fast: Option<Py<PyAny>>,
    extra: Vec<Py<PyAny>>,
    /// `fast` only takes plain builtin values (scalars and builtin containers).
    gate: bool,
    /// The serializer is protocol-5 pickle: scalars are encoded here
    /// ([`pickle_scalar`]).
    scalars: bool,
    /// The general serializer: `value -> bytes`, raising a readable error.
    slow: Py<PyAny>,
    buf: Vec<u8>,
    /// `(run, offset in buf, length)`.
    items: Vec<(RunId, usize, u32)>,
    /// Why writing failed; later values of the task fail with it.
    broken: Option<String>,
}

/// What a block write gives back: the records' locations, or the error and how
/// many checkpoints it lost.
pub enum Written {
    /// No block was written (nothing buffered, or the block is not full yet).
    Nothing,
    /// A block reached the file: where each of its records is.
    Items(Vec<PackItem>),
    /// Writing failed (why, and how many checkpoints were lost); the sink is
    /// broken from then on.
    Lost(String, usize),
}

fn err_text(py: Python<'_>, e: &PyErr) -> String {
    e.value(py).to_string()
}

/// Append `v` as `pickle.dumps(v, 5)` would write it, for the exact builtin
/// scalars whose encoding is short and fixed: `None`, `bool`, `int` in 64 bits,
/// `float`, and `str` / `bytes` of under 256 bytes. Returns false (appending
/// nothing) for anything else. Byte-for-byte the C pickler's output (the tests
/// compare the two), so readers cannot tell which wrote a record; a map of
/// numbers skips a pickler object per value.
fn pickle_scalar(v: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> bool {
    // Opcodes of the pickle protocol (Lib/pickletools.py).
    const PROTO: u8 = 0x80;
    const FRAME: u8 = 0x95;
    const STOP: u8 = b'.';
    const MEMOIZE: u8 = 0x94;
    let mut body = [0u8; 2 + 256 + 2];
    let n = if v.is_none() {
        body[0] = b'N';
        1
    } else if v.is_exact_instance_of::<PyBool>() {
        body[0] = if v.is_truthy().unwrap_or(false) {
            0x88
        } else {
            0x89
        };
        1
    } else if v.is_exact_instance_of::<PyInt>() {
        let Ok(i) = v.extract::<i64>() else {
            return false;
        };
        if (0..=0xff).contains(&i) {
            body[0] = b'K'; // BININT1
            body[1] = i as u8;
            2
        } else if (0..=0xffff).contains(&i) {
            body[0] = b'M'; // BININT2
            body[1..3].copy_from_slice(&(i as u16).to_le_bytes());
            3
        } else if i32::try_from(i).is_ok() {
            body[0] = b'J'; // BININT
            body[1..5].copy_from_slice(&(i as i32).to_le_bytes());
            5
        } else {
            // LONG1: little-endian two's complement in the fewest bytes the C
            // pickler uses: bit length of |i| / 8 + 1, less a redundant 0xff.
            let bits = 128 - i128::from(i).unsigned_abs().leading_zeros() as usize;
            let mut len = bits / 8 + 1;
            let le = i128::from(i).to_le_bytes();
            if i < 0 && len > 1 && le[len - 1] == 0xff && le[len - 2] & 0x80 != 0 {
                len -= 1;
            }
            body[0] = 0x8a;
            body[1] = len as u8;
            body[2..2 + len].copy_from_slice(&le[..len]);
            2 + len
        }
    } else if v.is_exact_instance_of::<PyFloat>() {
        let Ok(f) = v.extract::<f64>() else {
            return false;
        };
        body[0] = b'G'; // BINFLOAT
        body[1..9].copy_from_slice(&f.to_be_bytes());
        9
    } else {
        let data: &[u8] = if let Ok(s) = v.cast_exact::<PyString>() {
            body[0] = 0x8c; // SHORT_BINUNICODE
            match s.to_str() {
                Ok(text) => text.as_bytes(),
                Err(_) => return false, // lone surrogates: pickle's own way
            }
        } else if let Ok(b) = v.cast_exact::<PyBytes>() {
            body[0] = b'C'; // SHORT_BINBYTES
            b.as_bytes()
        } else {
            return false;
        };
        if data.len() > 0xff {
            return false;
        }
        body[1] = data.len() as u8;
        body[2..2 + data.len()].copy_from_slice(data);
        body[2 + data.len()] = MEMOIZE;
        3 + data.len()
    };
    body[n] = STOP;
    let payload = n + 1;
    // Protocol 4+ frames the opcodes after PROTO when they are 4 bytes or more.
    let framed = payload >= 4;
    let total = 2 + if framed { 9 } else { 0 } + payload;
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&[PROTO, 5]);
    if framed {
        out.push(FRAME);
        out.extend_from_slice(&(payload as u64).to_le_bytes());
    }
    out.extend_from_slice(&body[..payload]);
    true
}

/// Whether `v` is built only of builtin scalars and containers (bounded walk),
/// for which the C pickler writes the same bytes as cloudpickle.
fn is_plain(v: &Bound<'_, PyAny>, budget: &mut i32) -> bool {
    *budget -= 1;
    if *budget < 0 {
        return false;
    }
    if v.is_none()
        || v.is_exact_instance_of::<PyInt>()
        || v.is_exact_instance_of::<PyFloat>()
        || v.is_exact_instance_of::<PyString>()
        || v.is_exact_instance_of::<PyBytes>()
        || v.is_exact_instance_of::<PyBool>()
        || v.is_exact_instance_of::<PyComplex>()
    {
        return true;
    }
    if let Ok(t) = v.cast_exact::<PyTuple>() {
        return t.iter().all(|x| is_plain(&x, budget));
    }
    if let Ok(l) = v.cast_exact::<PyList>() {
        return l.iter().all(|x| is_plain(&x, budget));
    }
    if let Ok(d) = v.cast_exact::<PyDict>() {
        return d
            .iter()
            .all(|(k, x)| is_plain(&k, budget) && is_plain(&x, budget));
    }
    if let Ok(s) = v.cast_exact::<PySet>() {
        return s.iter().all(|x| is_plain(&x, budget));
    }
    if let Ok(s) = v.cast_exact::<PyFrozenSet>() {
        return s.iter().all(|x| is_plain(&x, budget));
    }
    false
}

impl PackSink {
    /// Build from what the open hook returned: `(write_framed, location, fast,
    /// extra, gate, slow, scalars)`.
    pub fn from_hook(opened: &Bound<'_, PyAny>) -> PyResult<PackSink> {
        type Opened = (
            Py<PyAny>,
            String,
            Option<Py<PyAny>>,
            Vec<Py<PyAny>>,
            bool,
            Py<PyAny>,
            bool,
        );
        let (write, location, fast, extra, gate, slow, scalars) = opened.extract::<Opened>()?;
        Ok(PackSink {
            write,
            location: Arc::from(location),
            fast,
            extra,
            gate,
            slow,
            scalars,
            buf: Vec::new(),
            items: Vec::new(),
            broken: None,
        })
    }

    fn serialize<'py>(&self, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let py = value.py();
        if let Some(fast) = &self.fast
            && (!self.gate || is_plain(value, &mut PLAIN_BUDGET.clone()))
        {
            let fast = fast.bind(py);
            let called = match self.extra.as_slice() {
                [] => fast.call1((value,)),
                [a] => fast.call1((value, a.bind(py))),
                more => {
                    let mut args = vec![value.clone()];
                    args.extend(more.iter().map(|a| a.bind(py).clone()));
                    PyTuple::new(py, args).and_then(|t| fast.call1(t))
                }
            };
            // Anything the fast path refuses goes the general way (which
            // explains the problem if there is one).
            if let Ok(b) = called
                && let Ok(b) = b.cast_into::<PyBytes>()
            {
                return Ok(b);
            }
        }
        Ok(self.slow.bind(py).call1((value,))?.cast_into::<PyBytes>()?)
    }

    /// Serialize and buffer the value of `run`. Err: why it cannot be written
    /// (a `ResultError` or the serializer's own error).
    pub fn append(
        &mut self,
        py: Python<'_>,
        run: RunId,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<Written> {
        if let Some(why) = &self.broken {
            return Err(ff_error(py, PyErrKind::Result, why.clone()));
        }
        if self.scalars {
            let at = self.buf.len();
            if pickle_scalar(value, &mut self.buf) {
                let len = (self.buf.len() - at - 4) as u32;
                self.items.push((run, at + 4, len));
                return Ok(self.written_if_full(py));
            }
        }
        let data = self.serialize(value)?;
        let bytes = data.as_bytes();
        let Ok(len) = u32::try_from(bytes.len()) else {
            let msg = format!(
                "a value of {} bytes is too large for a pack record; use a single-file \
                 location for it",
                bytes.len()
            );
            return Err(ff_error(py, PyErrKind::Result, msg));
        };
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.items.push((run, self.buf.len(), len));
        if bytes.len() >= BIG {
            // Written at once with what is buffered, without copying it.
            return Ok(self.write_block(py, Some(&data)));
        }
        self.buf.extend_from_slice(bytes);
        Ok(self.written_if_full(py))
    }

    fn written_if_full(&mut self, py: Python<'_>) -> Written {
        if self.buf.len() >= BLOCK_BYTES || self.items.len() >= BLOCK_RECORDS {
            return self.write_block(py, None);
        }
        Written::Nothing
    }

    /// Write what is buffered.
    pub fn flush(&mut self, py: Python<'_>) -> Written {
        self.write_block(py, None)
    }

    /// Write what is buffered, plus `tail` (the payload of the last record when
    /// it was not copied into the block).
    fn write_block(&mut self, py: Python<'_>, tail: Option<&Bound<'_, PyBytes>>) -> Written {
        let items = std::mem::take(&mut self.items);
        if items.is_empty() {
            return Written::Nothing;
        }
        let head = PyBytes::new(py, &self.buf);
        self.buf.clear();
        let parts = match tail {
            Some(t) => PyList::new(py, [head.into_any(), t.clone().into_any()]),
            None => PyList::new(py, [head]),
        };
        let written = parts
            .and_then(|p| self.write.bind(py).call1((p,)))
            .and_then(|base| base.extract::<u64>());
        match written {
            Ok(base) => Written::Items(
                items
                    .into_iter()
                    .map(|(run, at, length)| PackItem {
                        run,
                        offset: base + at as u64,
                        length,
                    })
                    .collect(),
            ),
            Err(e) => {
                let why = if keep_interrupt(py, &e) {
                    "the run was interrupted (Ctrl-C) while they were written".to_string()
                } else {
                    err_text(py, &e)
                };
                self.broken = Some(why.clone());
                Written::Lost(why, items.len())
            }
        }
    }

    /// Visit the Python objects the sink holds (for the runner's `__traverse__`).
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.write)?;
        if let Some(f) = &self.fast {
            visit.call(f)?;
        }
        for a in &self.extra {
            visit.call(a)?;
        }
        visit.call(&self.slow)
    }
}
