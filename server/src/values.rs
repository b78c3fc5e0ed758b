//! The file a member's MVCC store keeps its keys' and values' bytes in, so that only the
//! index stays in memory ([`synod_protocols::mvcc::records`]).
//!
//! The file is a cache rebuilt on every start from the snapshot and the log (which hold
//! every value), so it is never fsynced and a member deletes whatever such files a previous
//! run left. Each generation is its own file, `values-<generation>.dat` in the member's
//! `values` directory; a generation is deleted when nothing refers to it any more (a
//! checkpoint still being written keeps the one it reads from). Reads are positioned
//! (`pread`), so a storage thread writing a checkpoint reads while the node appends.
//!
//! Appends are gathered in a small buffer and written to the file when it fills: one
//! `pwrite` per [`WRITE_BUFFER_BYTES`] instead of one per applied value on every member
//! (a put costs three of them in a three-member cluster). Reads of the buffered tail are
//! served from the buffer.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use synod_protocols::mvcc::records::RecordFile;
use synod_protocols::replicated::SnapshotTail;

/// One generation of the value file.
#[derive(Debug)]
pub struct ValueFile {
    file: File,
    path: PathBuf,
    directory: PathBuf,
    generation: u64,
    /// Bytes appended (the node's thread appends; any thread reads below this).
    length: AtomicU64,
    /// Appended bytes not yet written to the file.
    tail: Mutex<Tail>,
}

/// How many appended bytes are gathered before they are written to the file.
pub const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// The end of the value file that is still in memory.
#[derive(Debug, Default)]
struct Tail {
    /// Bytes before this offset are in the file.
    written: u64,
    /// The bytes from `written` on.
    buffer: Vec<u8>,
}

impl ValueFile {
    /// Empties `directory` of earlier runs' value files and starts generation 0 in it.
    pub fn start(directory: &Path) -> std::io::Result<Arc<ValueFile>> {
        std::fs::create_dir_all(directory)?;
        for entry in std::fs::read_dir(directory)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("values-") && name.ends_with(".dat") {
                std::fs::remove_file(entry.path())?;
            }
        }
        Self::create(directory, 0)
    }

    fn create(directory: &Path, generation: u64) -> std::io::Result<Arc<ValueFile>> {
        let path = directory.join(format!("values-{generation:020}.dat"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        Ok(Arc::new(ValueFile {
            file,
            path,
            directory: directory.to_path_buf(),
            generation,
            length: AtomicU64::new(0),
            tail: Mutex::new(Tail::default()),
        }))
    }

    /// The buffered tail (every change to it is a single step: see [`crate::lock`]).
    fn tail(&self) -> MutexGuard<'_, Tail> {
        crate::lock(&self.tail)
    }

    /// Where this generation lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl SnapshotTail for ValueFile {
    fn len(&self) -> u64 {
        self.length.load(Ordering::Acquire)
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let end = offset.saturating_add(out.len() as u64);
        if end > self.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: bytes up to {end} asked for, {} written",
                    self.path.display(),
                    self.len()
                ),
            ));
        }
        // The part at or past `written` is copied from the buffer under the lock; the part
        // before it is in the file for good (it is written before `written` moves).
        let in_file = {
            let tail = self.tail();
            let in_file = tail.written.saturating_sub(offset).min(out.len() as u64) as usize;
            if in_file < out.len() {
                let from = (offset + in_file as u64 - tail.written) as usize;
                let rest = out.len() - in_file;
                out[in_file..].copy_from_slice(&tail.buffer[from..from + rest]);
            }
            in_file
        };
        self.file.read_exact_at(&mut out[..in_file], offset)
    }
}

impl RecordFile for ValueFile {
    fn append(&self, bytes: &[u8]) -> std::io::Result<u64> {
        let mut tail = self.tail();
        let offset = tail.written + tail.buffer.len() as u64;
        if tail.buffer.len() + bytes.len() > WRITE_BUFFER_BYTES && !tail.buffer.is_empty() {
            self.file.write_all_at(&tail.buffer, tail.written)?;
            tail.written = offset;
            tail.buffer.clear();
        }
        if bytes.len() >= WRITE_BUFFER_BYTES {
            // A large value goes straight to the file.
            self.file.write_all_at(bytes, offset)?;
            tail.written = offset + bytes.len() as u64;
        } else {
            tail.buffer.extend_from_slice(bytes);
        }
        self.length
            .store(offset + bytes.len() as u64, Ordering::Release);
        Ok(offset)
    }

    fn fresh(&self) -> std::io::Result<Arc<dyn RecordFile>> {
        let next: Arc<dyn RecordFile> = Self::create(&self.directory, self.generation + 1)?;
        Ok(next)
    }
}

impl Drop for ValueFile {
    fn drop(&mut self) {
        // Nothing refers to this generation any more.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory(name: &str) -> PathBuf {
        let directory =
            std::env::temp_dir().join(format!("synod-values-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        directory
    }

    #[test]
    fn appends_read_back_and_a_generation_is_deleted_when_dropped() {
        let directory = directory("generations");
        std::fs::create_dir_all(&directory).unwrap();
        std::fs::write(directory.join("values-00000000000000000007.dat"), b"stale").unwrap();
        let first = ValueFile::start(&directory).unwrap();
        assert!(!directory.join("values-00000000000000000007.dat").exists());
        assert_eq!(first.append(b"hello").unwrap(), 0);
        assert_eq!(first.append(b"world").unwrap(), 5);
        let mut out = [0u8; 5];
        first.read_at(5, &mut out).unwrap();
        assert_eq!(&out, b"world");
        // Past the end is an error, not zeros.
        assert!(first.read_at(6, &mut out).is_err());
        let second = first.fresh().unwrap();
        assert_eq!(second.len(), 0);
        let first_path = first.path().to_path_buf();
        drop(first);
        assert!(!first_path.exists());
        drop(second);
        assert_eq!(std::fs::read_dir(&directory).unwrap().count(), 0);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    /// Reads of every range, across the boundary between the file and the buffer, return
    /// what was appended, while appends of every size move the boundary.
    #[test]
    fn reads_span_the_written_part_and_the_buffer() {
        let directory = directory("buffer");
        let file = ValueFile::start(&directory).unwrap();
        let mut expected = Vec::new();
        let sizes = [
            1usize,
            700,
            WRITE_BUFFER_BYTES - 3,
            5,
            WRITE_BUFFER_BYTES + 9,
            40_000,
        ];
        for (round, size) in sizes.iter().cycle().take(24).enumerate() {
            let bytes: Vec<u8> = (0..*size).map(|i| (i * 31 + round) as u8).collect();
            assert_eq!(file.append(&bytes).unwrap(), expected.len() as u64);
            expected.extend_from_slice(&bytes);
            assert_eq!(file.len(), expected.len() as u64);
            let written = file.tail().written as usize;
            assert!(expected.len() - written <= WRITE_BUFFER_BYTES);
            // The file holds exactly the written part.
            let on_disk = std::fs::read(file.path()).unwrap();
            assert_eq!(on_disk, expected[..written]);
            for (start, length) in [
                (0, expected.len()),
                (
                    written.saturating_sub(10),
                    20.min(expected.len() - written.saturating_sub(10)),
                ),
                (expected.len() - 1, 1),
                (written, expected.len() - written),
            ] {
                let mut out = vec![0u8; length];
                file.read_at(start as u64, &mut out).unwrap();
                assert_eq!(
                    out,
                    expected[start..start + length],
                    "round {round} at {start}"
                );
            }
        }
        let mut out = [0u8; 2];
        assert!(file.read_at(expected.len() as u64 - 1, &mut out).is_err());
        drop(file);
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
