//! Where the store keeps the bytes of its keys and values: an append-only sequence of
//! records, in memory or in a file the embedding server supplies, so that only the index
//! (keys, revisions, versions) stays on the heap.
//!
//! Every written version appends one record; a version and its change-log entry both refer
//! to it by offset. A record is
//!
//! ```text
//! crc32c: u32 LE | key length: u32 LE | value length: u32 LE (u32::MAX: a deletion)
//!   | mod revision: i64 LE | create revision: i64 LE | version: i64 LE | lease: i64 LE
//!   | key | value
//! ```
//!
//! where the checksum covers everything after it, so a damaged or short file is detected
//! when a record is read, never answered as data. A record carries everything the store's
//! index holds about its version (`RecordMeta`), so the index can be rebuilt by scanning
//! the records (`Records::scan`): a snapshot is a small head plus the records' bytes, and
//! taking one never encodes the index.
//!
//! The file form ([`RecordFile`]) is a cache, not a source of truth: a snapshot carries
//! the records' bytes, and a restarted server rebuilds the file from its snapshot and log,
//! so the file needs no fsync of its own. In memory (the simulator and the model checker)
//! the bytes live in a `Vec` and everything stays deterministic.
//!
//! Space: a record becomes garbage once compaction drops the version it belongs to; when
//! garbage outweighs the live records, compaction copies the live ones into a fresh
//! sequence (a new file generation) and rewrites the offsets.

use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::replicated::SnapshotTail;

/// Bytes of a record's header.
pub const RECORD_HEADER_BYTES: usize = 44;

/// What a record says about the version it holds, besides its key and value: enough to
/// rebuild the store's index from the records alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct RecordMeta {
    /// The revision that wrote the version.
    pub(crate) mod_revision: i64,
    /// The revision that created the key (0 for a deletion).
    pub(crate) create_revision: i64,
    /// The key's version counter (0 for a deletion).
    pub(crate) version: i64,
    /// The lease the version is attached to (0: none).
    pub(crate) lease: i64,
}

/// The value length that marks a deletion.
pub(crate) const DELETION: u32 = u32::MAX;

/// Reclaim space once garbage is at least this large and outweighs the live records.
const RECLAIM_GARBAGE_MIN: u64 = 64 << 10;

/// An append-only file of records, supplied by a server (the store itself never opens a
/// file). Appends come from one thread (the node's); reads may come from any, and bytes
/// once appended never change, so a reader holding an offset below [`SnapshotTail::len`]
/// reads the same bytes forever.
pub trait RecordFile: SnapshotTail {
    /// Appends `bytes`; returns the offset they start at.
    fn append(&self, bytes: &[u8]) -> std::io::Result<u64>;
    /// A new, empty file of the same kind (the next generation). This one stays readable
    /// for as long as something holds it.
    fn fresh(&self) -> std::io::Result<Arc<dyn RecordFile>>;
}

#[derive(Clone, Debug)]
enum Bytes {
    Memory(Vec<u8>),
    File(Arc<dyn RecordFile>),
}

/// A record read back.
pub(crate) struct Record {
    pub(crate) key: Vec<u8>,
    /// `None`: a deletion.
    pub(crate) value: Option<Vec<u8>>,
}

/// The store's records (see the module doc).
#[derive(Clone, Debug)]
pub(crate) struct Records {
    bytes: Bytes,
    /// Bytes of records no version refers to any more.
    garbage: u64,
    /// The first I/O or checksum failure; the store answers nothing from a failed file.
    failure: OnceLock<String>,
}

impl Default for Records {
    fn default() -> Self {
        Records {
            bytes: Bytes::Memory(Vec::new()),
            garbage: 0,
            failure: OnceLock::new(),
        }
    }
}

impl PartialEq for Records {
    fn eq(&self, other: &Self) -> bool {
        self.garbage == other.garbage
            && match (&self.bytes, &other.bytes) {
                (Bytes::Memory(left), Bytes::Memory(right)) => left == right,
                (Bytes::File(left), Bytes::File(right)) => Arc::ptr_eq(left, right),
                _ => false,
            }
    }
}

impl Eq for Records {}

impl Hash for Records {
    fn hash<H: Hasher>(&self, hasher: &mut H) {
        self.garbage.hash(hasher);
        match &self.bytes {
            Bytes::Memory(bytes) => bytes.hash(hasher),
            Bytes::File(file) => file.len().hash(hasher),
        }
    }
}

/// Why a record cannot be read.
pub(crate) type RecordError = String;

impl Records {
    /// Bytes appended so far (live and garbage).
    pub(crate) fn len(&self) -> u64 {
        match &self.bytes {
            Bytes::Memory(bytes) => bytes.len() as u64,
            Bytes::File(file) => file.len(),
        }
    }

    /// Bytes of records no version refers to.
    pub(crate) fn garbage(&self) -> u64 {
        self.garbage
    }

    /// The first failure, if the file failed.
    pub(crate) fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    pub(crate) fn fail(&self, error: String) -> RecordError {
        let _ = self.failure.set(error.clone());
        error
    }

    /// Appends a record of `key` and `value` (`None`: a deletion); returns its offset.
    pub(crate) fn append(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        meta: RecordMeta,
    ) -> Result<u64, RecordError> {
        if let Some(failure) = self.failure() {
            return Err(failure.to_string());
        }
        let encoded = encode_record(key, value, meta);
        match &mut self.bytes {
            Bytes::Memory(bytes) => {
                let offset = bytes.len() as u64;
                bytes.extend_from_slice(&encoded);
                Ok(offset)
            }
            Bytes::File(file) => match file.append(&encoded) {
                Ok(offset) => Ok(offset),
                Err(error) => Err(self.fail(format!("cannot append to the value file: {error}"))),
            },
        }
    }

    /// Reads the record at `offset` whose key is `key_len` bytes and whose value is
    /// `value_len` bytes (`None`: unknown, read the header first).
    pub(crate) fn read(
        &self,
        offset: u64,
        key_len: Option<usize>,
        value_len: Option<u32>,
    ) -> Result<Record, RecordError> {
        if let Some(failure) = self.failure() {
            return Err(failure.to_string());
        }
        let (key_len, value_len) = match (key_len, value_len) {
            (Some(key_len), Some(value_len)) => (key_len, value_len),
            _ => {
                let mut header = [0u8; RECORD_HEADER_BYTES];
                self.read_exact(offset, &mut header)?;
                (
                    u32::from_le_bytes(array(&header[4..8])) as usize,
                    u32::from_le_bytes(array(&header[8..12])),
                )
            }
        };
        let value_bytes = if value_len == DELETION {
            0
        } else {
            value_len as usize
        };
        let mut buffer = vec![0u8; RECORD_HEADER_BYTES + key_len + value_bytes];
        self.read_exact(offset, &mut buffer)?;
        let stored = u32::from_le_bytes(array(&buffer[0..4]));
        let stored_key = u32::from_le_bytes(array(&buffer[4..8])) as usize;
        let stored_value = u32::from_le_bytes(array(&buffer[8..12]));
        if stored != crc32c::crc32c(&buffer[4..])
            || stored_key != key_len
            || stored_value != value_len
        {
            return Err(self.fail(format!(
                "the value file's record at offset {offset} is damaged (checksum or length mismatch); \
                 restart the member to rebuild the file from its snapshot and log"
            )));
        }
        let mut value = buffer.split_off(RECORD_HEADER_BYTES + key_len);
        let key = buffer.split_off(RECORD_HEADER_BYTES);
        let value = (value_len != DELETION).then(|| {
            value.shrink_to_fit();
            value
        });
        Ok(Record { key, value })
    }

    /// Bytes of the whole record at `offset`, read from its header.
    pub(crate) fn record_length(&self, offset: u64) -> Result<usize, RecordError> {
        let mut header = [0u8; RECORD_HEADER_BYTES];
        self.read_exact(offset, &mut header)?;
        Ok(record_bytes(
            u32::from_le_bytes(array(&header[4..8])) as usize,
            u32::from_le_bytes(array(&header[8..12])),
        ))
    }

    /// The key of the record at `offset`, read without its value (so without checking the
    /// checksum, which covers both): for finding keys to compact, where a damaged key
    /// only leaves history unfreed.
    pub(crate) fn read_key(&self, offset: u64) -> Result<Vec<u8>, RecordError> {
        const GUESS: usize = 128;
        let available = self.len().saturating_sub(offset);
        let first = usize::try_from(available)
            .unwrap_or(usize::MAX)
            .min(RECORD_HEADER_BYTES + GUESS);
        let mut buffer = vec![0u8; first.max(RECORD_HEADER_BYTES)];
        self.read_exact(offset, &mut buffer)?;
        let key_len = u32::from_le_bytes(array(&buffer[4..8])) as usize;
        if RECORD_HEADER_BYTES + key_len <= buffer.len() {
            buffer.truncate(RECORD_HEADER_BYTES + key_len);
            return Ok(buffer.split_off(RECORD_HEADER_BYTES));
        }
        let mut key = vec![0u8; key_len];
        self.read_exact(offset + RECORD_HEADER_BYTES as u64, &mut key)?;
        Ok(key)
    }

    fn read_exact(&self, offset: u64, out: &mut [u8]) -> Result<(), RecordError> {
        match &self.bytes {
            Bytes::Memory(bytes) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                match bytes.get(start..start.saturating_add(out.len())) {
                    Some(slice) => {
                        out.copy_from_slice(slice);
                        Ok(())
                    }
                    None => Err(self.fail(format!(
                        "record at offset {offset} lies past the end of the records ({} bytes)",
                        bytes.len()
                    ))),
                }
            }
            Bytes::File(file) => {
                let end = offset.saturating_add(out.len() as u64);
                if end > file.len() {
                    return Err(self.fail(format!(
                        "the value file is short: a record needs bytes up to {end}, the file has {}",
                        file.len()
                    )));
                }
                file.read_at(offset, out).map_err(|error| {
                    self.fail(format!(
                        "cannot read the value file at offset {offset}: {error}"
                    ))
                })
            }
        }
    }

    /// Counts the record at `offset` as garbage.
    pub(crate) fn forget(&mut self, key_len: usize, value_len: u32) {
        let value_bytes = if value_len == DELETION { 0 } else { value_len };
        self.garbage += (RECORD_HEADER_BYTES + key_len) as u64 + u64::from(value_bytes);
    }

    /// True once garbage is worth a rewrite.
    pub(crate) fn wants_reclaim(&self) -> bool {
        self.garbage >= RECLAIM_GARBAGE_MIN && self.garbage * 2 > self.len()
    }

    /// An empty sequence of the same kind (a new file generation for a file).
    pub(crate) fn fresh(&self) -> Result<Records, RecordError> {
        let bytes =
            match &self.bytes {
                Bytes::Memory(_) => Bytes::Memory(Vec::new()),
                Bytes::File(file) => Bytes::File(file.fresh().map_err(|error| {
                    self.fail(format!("cannot start a new value file: {error}"))
                })?),
            };
        Ok(Records {
            bytes,
            garbage: 0,
            failure: OnceLock::new(),
        })
    }

    /// Copies the record at `offset` (of `length` bytes in all) from `source` to the end.
    pub(crate) fn copy_from(
        &mut self,
        source: &Records,
        offset: u64,
        length: usize,
    ) -> Result<u64, RecordError> {
        let mut buffer = vec![0u8; length];
        source.read_exact(offset, &mut buffer)?;
        match &mut self.bytes {
            Bytes::Memory(bytes) => {
                let at = bytes.len() as u64;
                bytes.extend_from_slice(&buffer);
                Ok(at)
            }
            Bytes::File(file) => file
                .append(&buffer)
                .map_err(|error| format!("cannot append to the value file: {error}")),
        }
    }

    /// Moves records held in memory into a fresh generation of `file` (offsets stay the
    /// same); a no-op when they are in a file already.
    pub(crate) fn spill_into(&mut self, file: &Arc<dyn RecordFile>) -> Result<(), RecordError> {
        let Bytes::Memory(bytes) = &mut self.bytes else {
            return Ok(());
        };
        let fresh = file
            .fresh()
            .map_err(|error| format!("cannot start a new value file: {error}"))?;
        for chunk in bytes.chunks(1 << 20) {
            fresh
                .append(chunk)
                .map_err(|error| format!("cannot append to the value file: {error}"))?;
        }
        self.bytes = Bytes::File(fresh);
        Ok(())
    }

    /// The file, if the records live in one.
    pub(crate) fn file(&self) -> Option<&Arc<dyn RecordFile>> {
        match &self.bytes {
            Bytes::File(file) => Some(file),
            Bytes::Memory(_) => None,
        }
    }

    /// Every byte, in memory (for a self-contained encoding).
    fn all_bytes(&self) -> Result<std::borrow::Cow<'_, [u8]>, RecordError> {
        match &self.bytes {
            Bytes::Memory(bytes) => Ok(std::borrow::Cow::Borrowed(bytes)),
            Bytes::File(file) => {
                let length = usize::try_from(file.len()).map_err(|_| "value file too large")?;
                let mut bytes = vec![0u8; length];
                file.read_at(0, &mut bytes)
                    .map_err(|error| format!("cannot read the value file: {error}"))?;
                Ok(std::borrow::Cow::Owned(bytes))
            }
        }
    }

    /// Visits every record held in memory, in order, as (offset, key, value length,
    /// metadata), checking each one's checksum: how a decoded snapshot rebuilds the index.
    /// Records in a file are not scanned (a decoded snapshot holds its records in memory).
    pub(crate) fn scan(
        &self,
        mut visit: impl FnMut(u64, &[u8], u32, RecordMeta),
    ) -> Result<(), RecordError> {
        let Bytes::Memory(bytes) = &self.bytes else {
            return Err("records in a file are not scanned; decode a snapshot instead".into());
        };
        let mut offset = 0usize;
        while offset < bytes.len() {
            let damaged = || {
                format!(
                    "the snapshot's record at offset {offset} is damaged (checksum or length \
                     mismatch); take the snapshot again from a healthy member"
                )
            };
            let header = bytes
                .get(offset..offset + RECORD_HEADER_BYTES)
                .ok_or_else(damaged)?;
            let key_len = u32::from_le_bytes(array(&header[4..8])) as usize;
            let value_len = u32::from_le_bytes(array(&header[8..12]));
            let length = record_bytes(key_len, value_len);
            let record = bytes
                .get(offset..offset.saturating_add(length))
                .ok_or_else(damaged)?;
            if u32::from_le_bytes(array(&record[0..4])) != crc32c::crc32c(&record[4..]) {
                return Err(damaged());
            }
            let meta = RecordMeta {
                mod_revision: i64::from_le_bytes(array(&header[12..20])),
                create_revision: i64::from_le_bytes(array(&header[20..28])),
                version: i64::from_le_bytes(array(&header[28..36])),
                lease: i64::from_le_bytes(array(&header[36..44])),
            };
            let key = &record[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + key_len];
            visit(offset as u64, key, value_len, meta);
            offset += length;
        }
        Ok(())
    }

    /// Sets the garbage count (after a rebuild computed it).
    pub(crate) fn set_garbage(&mut self, garbage: u64) {
        self.garbage = garbage;
    }

    /// The snapshot tail these records form: the file and its length now, or `None` when
    /// they are in memory (then they are encoded with the rest of the state).
    pub(crate) fn tail(&self) -> Option<(Arc<dyn SnapshotTail>, u64)> {
        let file = self.file()?;
        let tail: Arc<dyn SnapshotTail> = file.clone();
        Some((tail, file.len()))
    }
}

/// The encoding of a record.
fn encode_record(key: &[u8], value: Option<&[u8]>, meta: RecordMeta) -> Vec<u8> {
    let value_bytes = value.unwrap_or_default();
    let mut encoded = Vec::with_capacity(RECORD_HEADER_BYTES + key.len() + value_bytes.len());
    encoded.extend_from_slice(&[0; 4]);
    encoded.extend_from_slice(&(key.len() as u32).to_le_bytes());
    let value_len = value.map_or(DELETION, |value| value.len() as u32);
    encoded.extend_from_slice(&value_len.to_le_bytes());
    encoded.extend_from_slice(&meta.mod_revision.to_le_bytes());
    encoded.extend_from_slice(&meta.create_revision.to_le_bytes());
    encoded.extend_from_slice(&meta.version.to_le_bytes());
    encoded.extend_from_slice(&meta.lease.to_le_bytes());
    encoded.extend_from_slice(key);
    encoded.extend_from_slice(value_bytes);
    let checksum = crc32c::crc32c(&encoded[4..]);
    encoded[..4].copy_from_slice(&checksum.to_le_bytes());
    encoded
}

/// Bytes of a whole record.
pub(crate) fn record_bytes(key_len: usize, value_len: u32) -> usize {
    let value_bytes = if value_len == DELETION {
        0
    } else {
        value_len as usize
    };
    RECORD_HEADER_BYTES + key_len + value_bytes
}

fn array<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(slice);
    out
}

/// The records' garbage count and then (unless only the head is wanted) their bytes as one
/// byte string: the bytes go last so a snapshot can stream them after the rest.
impl Serialize for Records {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let bytes = self.all_bytes().map_err(serde::ser::Error::custom)?;
        let mut tuple = serializer.serialize_tuple(2)?;
        tuple.serialize_element(&self.garbage)?;
        tuple.serialize_element(&ByteStr(&bytes))?;
        tuple.end()
    }
}

/// Serializes only the garbage count: the head of a snapshot whose records follow as its
/// tail (see [`crate::replicated::StateMachine::snapshot_parts`]).
pub(crate) struct RecordsHead<'a>(pub(crate) &'a Records);

impl Serialize for RecordsHead<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.garbage.serialize(serializer)
    }
}

struct ByteStr<'a>(&'a [u8]);

impl Serialize for ByteStr<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

impl<'de> Deserialize<'de> for Records {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (garbage, bytes): (u64, crate::bytes::ByteBuf) =
            Deserialize::deserialize(deserializer)?;
        Ok(Records {
            bytes: Bytes::Memory(bytes.0),
            garbage,
            failure: OnceLock::new(),
        })
    }
}
