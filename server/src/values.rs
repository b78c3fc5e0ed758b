//! The file a member's MVCC store keeps its keys' and values' bytes in, so that only the
//! index stays in memory ([`synod_protocols::mvcc::records`]).
//!
//! The file is a cache rebuilt on every start from the snapshot and the log (which hold
//! every value), so it is never fsynced and a member deletes whatever such files a previous
//! run left. Each generation is its own file, `values-<generation>.dat` in the member's
//! `values` directory; a generation is deleted when nothing refers to it any more (a
//! checkpoint still being written keeps the one it reads from). Reads are positioned
//! (`pread`), so a storage thread writing a checkpoint reads while the node appends.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
        }))
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
        self.file.read_exact_at(out, offset)
    }
}

impl RecordFile for ValueFile {
    fn append(&self, bytes: &[u8]) -> std::io::Result<u64> {
        let offset = self.length.load(Ordering::Acquire);
        self.file.write_all_at(bytes, offset)?;
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
}
