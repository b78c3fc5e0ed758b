//! Direct, synchronous writes of a segment's records (`O_DIRECT | O_DSYNC`): see
//! [`crate::WalOptions::direct_io`].
//!
//! Direct I/O moves whole, aligned blocks between a block-aligned buffer and the disk, so a
//! record that ends in the middle of a block cannot be written by itself. The writer keeps
//! the segment's last, partial block in memory and writes it again, extended by the new
//! records and padded with zeros to the block's end, at each write. The zeros land where the
//! segment already holds zeros (a preallocated tail) or past its end (recovery treats a zero
//! tail as unwritten space, not as a torn record), and the block's earlier bytes are written
//! again with the contents they already have on the disk, so a write cut short by a crash
//! leaves each sector either as it was or as it was meant to be; both hold every record
//! synced before. The page cache writes a partial page again at every fsync in the same way.
//!
//! Why by hand: the standard library has no aligned buffer type, and the crates that offer
//! one bring whole I/O frameworks for this one buffer. The buffer here over-allocates by one
//! block and uses the aligned part, which needs no `unsafe`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// When a write reaches past the zeros already in the file, it carries on with zeros up to
/// the next multiple of this many bytes. The writes in between then overwrite allocated
/// blocks and leave the file's size alone, so each is durable without a journal commit for
/// the size: on this project's disk an appending direct write takes about 320 µs where an
/// overwrite takes 175 µs (three members writing at once). A 256 KiB write of zeros costs
/// about 0.3–0.7 ms once per 256 KiB of log, some 700 records of a small put.
pub(crate) const ZERO_AHEAD_BYTES: u64 = 256 * 1024;

/// The alignment of the file offsets, lengths and buffer addresses of direct writes. Devices
/// ask for their logical block size (512 or 4096 bytes); 4096 satisfies both.
pub(crate) const DIRECT_BLOCK_BYTES: usize = 4096;

/// Writes one segment's records with `O_DIRECT | O_DSYNC`: each write is on the disk when it
/// returns, without going through the page cache and without a separate fsync.
#[derive(Debug)]
pub(crate) struct DirectWriter {
    file: File,
    /// The file offset of the segment's last, partial block: where the next write starts.
    block_start: u64,
    /// The file holds zeros (or records) up to here: writes before it change no size.
    zeroed_end: u64,
    /// Zeros are written ahead no further than here (the segment's size limit).
    zero_ahead_limit: u64,
    /// The bytes from `block_start` to the segment's end, in an aligned buffer with room
    /// for more.
    buffer: AlignedBuffer,
}

impl DirectWriter {
    /// Opens the segment at `path` for direct writes after its first `end` bytes; `tail`
    /// must be those bytes from the start of the block holding byte `end` (the bytes of
    /// `[end - end % DIRECT_BLOCK_BYTES, end)`); `segment_bytes` bounds the zeros written
    /// ahead ([`ZERO_AHEAD_BYTES`]). Fails where the file system has no direct I/O (the
    /// caller then writes through the page cache).
    pub(crate) fn open(
        path: &Path,
        end: u64,
        tail: &[u8],
        segment_bytes: u64,
    ) -> std::io::Result<DirectWriter> {
        let block_start = end - end % DIRECT_BLOCK_BYTES as u64;
        debug_assert_eq!(tail.len() as u64, end - block_start);
        let file = direct_options().open(path)?;
        let zeroed_end = file.metadata()?.len();
        let mut buffer = AlignedBuffer::with_capacity(DIRECT_BLOCK_BYTES);
        buffer.extend(tail);
        Ok(DirectWriter {
            file,
            block_start,
            zeroed_end,
            zero_ahead_limit: segment_bytes.next_multiple_of(DIRECT_BLOCK_BYTES as u64),
            buffer,
        })
    }

    /// Writes `frames` after the segment's current end; they are durable when this returns.
    pub(crate) fn write(&mut self, frames: &[u8]) -> std::io::Result<()> {
        self.buffer.extend(frames);
        let end = self.buffer.len();
        let mut padded = end.next_multiple_of(DIRECT_BLOCK_BYTES);
        let write_end = self.block_start + padded as u64;
        if write_end > self.zeroed_end {
            let ahead = write_end
                .next_multiple_of(ZERO_AHEAD_BYTES)
                .min(self.zero_ahead_limit)
                .max(write_end);
            padded = (ahead - self.block_start) as usize;
        }
        let result = self
            .file
            .write_all_at(self.buffer.padded(padded), self.block_start);
        // Whatever happened, keep the buffer equal to the segment's intended bytes from
        // `block_start`: the caller poisons the log on an error, so nothing writes again.
        result?;
        self.zeroed_end = self.zeroed_end.max(self.block_start + padded as u64);
        let whole_blocks = end - end % DIRECT_BLOCK_BYTES;
        self.buffer.drop_front(whole_blocks);
        self.block_start += whole_blocks as u64;
        Ok(())
    }
}

/// Opens for direct, synchronous writes.
fn direct_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC);
    options
}

/// Whether the file system holding `directory` takes direct I/O (tests on a file system
/// without it, such as tmpfs before Linux 6.6, check the fallback instead).
#[cfg(test)]
pub(crate) fn available_in(directory: &Path) -> bool {
    let probe = directory.join(format!("synod-direct-probe-{}", std::process::id()));
    let opened = direct_options()
        .create(true)
        .truncate(true)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    opened
}

/// A byte buffer whose contents start at a [`DIRECT_BLOCK_BYTES`]-aligned address.
#[derive(Debug)]
struct AlignedBuffer {
    /// One block more than the usable capacity; the contents start at `start`.
    storage: Vec<u8>,
    start: usize,
    length: usize,
}

impl AlignedBuffer {
    fn with_capacity(capacity: usize) -> AlignedBuffer {
        let storage = vec![0u8; capacity + DIRECT_BLOCK_BYTES];
        // For a byte pointer the offset always exists and is below the alignment.
        let start = storage.as_ptr().align_offset(DIRECT_BLOCK_BYTES);
        AlignedBuffer {
            storage,
            start,
            length: 0,
        }
    }

    fn len(&self) -> usize {
        self.length
    }

    fn capacity(&self) -> usize {
        self.storage.len() - self.start
    }

    /// Grows the buffer (keeping its contents) so it holds at least `capacity` bytes.
    fn reserve(&mut self, capacity: usize) {
        if capacity <= self.capacity() {
            return;
        }
        let mut grown = AlignedBuffer::with_capacity(capacity.max(2 * self.capacity()));
        grown.extend(self.contents());
        *self = grown;
    }

    fn contents(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.length]
    }

    fn extend(&mut self, bytes: &[u8]) {
        // Room for the zero padding of the last block, too.
        self.reserve((self.length + bytes.len()).next_multiple_of(DIRECT_BLOCK_BYTES));
        let at = self.start + self.length;
        self.storage[at..at + bytes.len()].copy_from_slice(bytes);
        self.length += bytes.len();
    }

    /// The contents followed by zeros up to `padded` bytes, a multiple of the block size.
    fn padded(&mut self, padded: usize) -> &[u8] {
        self.reserve(padded);
        let from = self.start + self.length;
        let to = self.start + padded;
        self.storage[from..to].fill(0);
        &self.storage[self.start..to]
    }

    /// Removes the first `count` bytes, moving the rest to the front.
    fn drop_front(&mut self, count: usize) {
        let from = self.start + count;
        self.storage
            .copy_within(from..self.start + self.length, self.start);
        self.length -= count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_stays_aligned_as_it_grows_and_shifts() {
        let mut buffer = AlignedBuffer::with_capacity(16);
        let pattern: Vec<u8> = (0..10_000u32).map(|value| value as u8).collect();
        // More than the initial capacity at once, from empty, then more again.
        buffer.extend(&pattern[..5000]);
        buffer.extend(&pattern[5000..]);
        assert_eq!(buffer.contents(), &pattern[..]);
        let padded = buffer.padded(12_288);
        assert_eq!(padded.as_ptr() as usize % DIRECT_BLOCK_BYTES, 0);
        assert_eq!(&padded[..10_000], &pattern[..]);
        assert!(padded[10_000..].iter().all(|&byte| byte == 0));
        buffer.drop_front(8192);
        assert_eq!(buffer.contents(), &pattern[8192..]);
        assert_eq!(buffer.contents().as_ptr() as usize % DIRECT_BLOCK_BYTES, 0);
    }

    #[test]
    fn the_writer_opens_its_file_direct_and_synchronous() {
        use std::os::fd::AsRawFd;
        if !available_in(&std::env::temp_dir()) {
            eprintln!("no direct I/O in the temp dir's file system: nothing to check");
            return;
        }
        let path = std::env::temp_dir().join(format!("synod-direct-flags-{}", std::process::id()));
        std::fs::write(&path, [0u8; 24]).expect("writes");
        let writer = DirectWriter::open(&path, 24, &[0u8; 24], 1 << 20).expect("opens");
        // SAFETY: F_GETFL reads no memory of ours; the descriptor is open while `writer` is.
        let flags = unsafe { libc::fcntl(writer.file.as_raw_fd(), libc::F_GETFL) };
        std::fs::remove_file(&path).expect("removes");
        assert_ne!(flags & libc::O_DIRECT, 0, "bypasses the page cache");
        // Without O_DSYNC a write would sit in the disk's cache while the log counts it durable.
        assert_eq!(flags & libc::O_DSYNC, libc::O_DSYNC, "durable on return");
    }
}
