//! The segment file format and the pure scan that recovery runs over a segment's bytes.
//!
//! ```text
//! header (24 bytes):
//! +------------------+----------------+-----------------------+-----------------------+
//! | magic "SYNODWAL" | version: u32LE | first_index: u64 LE   | crc32c of the 20 bytes |
//! +------------------+----------------+-----------------------+-----------------------+
//! then records, each one `synod_core::frame` frame whose payload is
//! +---------------------+----------------+
//! | index: u64 LE       | record bytes   |
//! +---------------------+----------------+
//! ```
//!
//! The index inside each frame makes every record say where it belongs: zeros (a
//! preallocated or never-written tail) can never decode as a record (an empty frame has no
//! room for an index), and a stale frame from elsewhere is refused.

use std::ops::Range;

use synod_core::frame::{FRAME_HEADER_BYTES, FrameError, MAX_FRAME_PAYLOAD_BYTES, decode_frame};

/// The first bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SYNODWAL";
/// The segment format this code writes and reads.
pub const SEGMENT_VERSION: u32 = 1;
/// Bytes of the segment header: magic, version, first index, checksum.
pub const SEGMENT_HEADER_BYTES: usize = 24;
/// Bytes each record's frame payload spends on the record's index.
pub const RECORD_INDEX_BYTES: usize = 8;
/// Bytes a record costs in a segment beyond its own length.
pub const RECORD_OVERHEAD_BYTES: usize = FRAME_HEADER_BYTES + RECORD_INDEX_BYTES;
/// The largest record [`crate::Wal::append`] accepts: a frame's limit less the index.
pub const MAX_RECORD_BYTES: usize = MAX_FRAME_PAYLOAD_BYTES - RECORD_INDEX_BYTES;

const _: () = assert!(SEGMENT_HEADER_BYTES == SEGMENT_MAGIC.len() + 4 + 8 + 4);

/// The file name of the segment whose first record has index `first_index`. Twenty digits
/// hold any u64, so names sort in index order.
pub fn segment_file_name(first_index: u64) -> String {
    format!("wal-{first_index:020}.log")
}

/// The first index encoded in a segment file name, if `name` is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    parse_indexed_name(name, "wal-", ".log")
}

/// Parses `<prefix><20 digits><suffix>`.
pub(crate) fn parse_indexed_name(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header of a segment whose first record has index `first_index`.
pub fn encode_segment_header(first_index: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&first_index.to_le_bytes());
    let checksum = crc32c::crc32c(&header[..20]);
    header[20..24].copy_from_slice(&checksum.to_le_bytes());
    header
}

/// Checks a segment header against the first index its file name promises.
pub fn check_segment_header(bytes: &[u8], first_index: u64) -> Result<(), String> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(format!(
            "the file has {} bytes, shorter than the {SEGMENT_HEADER_BYTES}-byte header",
            bytes.len()
        ));
    }
    if bytes[..8] != SEGMENT_MAGIC {
        return Err("wrong magic: not a Synod write-ahead log segment".into());
    }
    let checksum = u32::from_le_bytes(word(&bytes[20..24]));
    let actual = crc32c::crc32c(&bytes[..20]);
    if checksum != actual {
        return Err(format!(
            "header checksum mismatch: stored {checksum:#010x}, computed {actual:#010x}"
        ));
    }
    let version = u32::from_le_bytes(word(&bytes[8..12]));
    if version != SEGMENT_VERSION {
        return Err(format!(
            "format version {version}, but this build reads version {SEGMENT_VERSION}"
        ));
    }
    let stored_index = u64::from_le_bytes(double_word(&bytes[12..20]));
    if stored_index != first_index {
        return Err(format!(
            "the header says the first record is {stored_index}, the file name says {first_index}"
        ));
    }
    Ok(())
}

/// Appends the frame of record `index` holding `record` to `out`.
pub fn encode_record_frame(index: u64, record: &[u8], out: &mut Vec<u8>) {
    debug_assert!(record.len() <= MAX_RECORD_BYTES);
    let length = (RECORD_INDEX_BYTES + record.len()) as u32;
    let mut checksum = crc32c::crc32c(&index.to_le_bytes());
    checksum = crc32c::crc32c_append(checksum, record);
    out.reserve(RECORD_OVERHEAD_BYTES + record.len());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&checksum.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(record);
}

/// What a scan of one segment's records found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    /// Byte ranges (within the segment file) of the records that verified, in order; their
    /// indexes run from the segment's first index upwards without gaps.
    pub records: Vec<Range<usize>>,
    /// Where the valid records end: the file length, or where the first bad frame starts.
    pub valid_end: usize,
    /// Why the bytes at `valid_end` are not a record, if the file continues past it.
    pub stop: Option<ScanStop>,
}

/// Why a segment scan stopped before the end of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanStop {
    /// What is wrong with the frame at `valid_end`.
    pub reason: String,
    /// Whether every byte from `valid_end` on is zero (a preallocated, unwritten tail).
    pub rest_is_zero: bool,
    /// The offset of a verifying record with a later index past the bad frame, if any:
    /// proof that the damage is not a torn tail but corruption inside the log.
    pub valid_record_after: Option<usize>,
}

/// Scans the records of a segment (`bytes` is the whole file, header included, already
/// checked) whose first record has index `first_index`. Never panics.
pub fn scan_segment(bytes: &[u8], first_index: u64) -> SegmentScan {
    let mut records = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES.min(bytes.len());
    let mut expected = first_index;
    while offset < bytes.len() {
        match decode_record_frame(&bytes[offset..], expected) {
            Ok(consumed) => {
                records.push(offset..offset + consumed);
                offset += consumed;
                expected = expected.saturating_add(1);
            }
            Err(reason) => {
                let rest = &bytes[offset..];
                let stop = ScanStop {
                    reason,
                    rest_is_zero: rest.iter().all(|&byte| byte == 0),
                    valid_record_after: find_later_record(bytes, offset, expected),
                };
                return SegmentScan {
                    records,
                    valid_end: offset,
                    stop: Some(stop),
                };
            }
        }
    }
    SegmentScan {
        records,
        valid_end: offset,
        stop: None,
    }
}

/// The record bytes of a frame found by [`scan_segment`] (the index stripped).
pub fn record_bytes(bytes: &[u8], frame: Range<usize>) -> &[u8] {
    &bytes[frame.start + RECORD_OVERHEAD_BYTES..frame.end]
}

/// Decodes the record frame at the start of `bytes`, which must carry index `expected`;
/// returns the bytes it occupies.
fn decode_record_frame(bytes: &[u8], expected: u64) -> Result<usize, String> {
    let (payload, consumed) = decode_frame(bytes).map_err(|error| match error {
        FrameError::Incomplete { needed } => {
            format!("the record is cut short ({needed} bytes missing)")
        }
        other => other.to_string(),
    })?;
    if payload.len() < RECORD_INDEX_BYTES {
        return Err(format!(
            "a {}-byte frame is too short to hold a record index",
            payload.len()
        ));
    }
    let index = u64::from_le_bytes(double_word(&payload[..RECORD_INDEX_BYTES]));
    if index != expected {
        return Err(format!(
            "record index {index} where {expected} was expected"
        ));
    }
    Ok(consumed)
}

/// Looks past a bad frame at `bad_offset` (which should hold record `expected`) for any
/// record frame that verifies and carries a later index. The bad frame's own length field
/// may be the damaged part, so every byte offset is tried; cheap field checks reject almost
/// every offset before a checksum is computed, so this is linear in practice.
fn find_later_record(bytes: &[u8], bad_offset: usize, expected: u64) -> Option<usize> {
    let mut offset = bad_offset + 1;
    while offset + RECORD_OVERHEAD_BYTES <= bytes.len() {
        let remaining = bytes.len() - offset;
        let length = u32::from_le_bytes(word(&bytes[offset..offset + 4])) as usize;
        let index_at = offset + FRAME_HEADER_BYTES;
        let index = u64::from_le_bytes(double_word(&bytes[index_at..index_at + 8]));
        // A record after the bad one has a later index, and no more later than the number
        // of smallest records that fit between them.
        let plausible_index = index >= expected
            && index - expected <= (offset - bad_offset) as u64 / RECORD_OVERHEAD_BYTES as u64 + 1;
        if length >= RECORD_INDEX_BYTES
            && FRAME_HEADER_BYTES + length <= remaining
            && plausible_index
            && decode_frame(&bytes[offset..]).is_ok()
        {
            return Some(offset);
        }
        offset += 1;
    }
    None
}

/// The four bytes of `slice` (exactly four long) as an array.
fn word(slice: &[u8]) -> [u8; 4] {
    let mut out = [0u8; 4];
    out.copy_from_slice(slice);
    out
}

/// The eight bytes of `slice` (exactly eight long) as an array.
fn double_word(slice: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(slice);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(first_index: u64, records: &[&[u8]]) -> Vec<u8> {
        let mut bytes = encode_segment_header(first_index).to_vec();
        for (offset, record) in records.iter().enumerate() {
            encode_record_frame(first_index + offset as u64, record, &mut bytes);
        }
        bytes
    }

    #[test]
    fn names_sort_by_index_and_round_trip() {
        assert_eq!(segment_file_name(7), "wal-00000000000000000007.log");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert!(segment_file_name(9) < segment_file_name(10));
        assert_eq!(parse_segment_file_name("wal-7.log"), None);
        assert_eq!(
            parse_segment_file_name("wal-0000000000000000000x.log"),
            None
        );
        assert_eq!(
            parse_segment_file_name("wal-99999999999999999999.log"),
            None
        );
    }

    #[test]
    fn a_header_checks_magic_checksum_version_and_index() {
        let header = encode_segment_header(42);
        assert_eq!(check_segment_header(&header, 42), Ok(()));
        assert!(
            check_segment_header(&header, 43)
                .unwrap_err()
                .contains("file name")
        );
        assert!(
            check_segment_header(&header[..10], 42)
                .unwrap_err()
                .contains("shorter")
        );
        let mut flipped = header;
        flipped[13] ^= 1;
        assert!(
            check_segment_header(&flipped, 42)
                .unwrap_err()
                .contains("checksum")
        );
        let mut other_version = header;
        other_version[8] = 2;
        let checksum = crc32c::crc32c(&other_version[..20]);
        other_version[20..].copy_from_slice(&checksum.to_le_bytes());
        assert!(
            check_segment_header(&other_version, 42)
                .unwrap_err()
                .contains("version 2")
        );
    }

    #[test]
    fn a_clean_segment_scans_to_its_end() {
        let bytes = segment(5, &[b"a", b"", b"ccc"]);
        let scan = scan_segment(&bytes, 5);
        assert_eq!(scan.stop, None);
        assert_eq!(scan.valid_end, bytes.len());
        let records: Vec<&[u8]> = scan
            .records
            .iter()
            .map(|frame| record_bytes(&bytes, frame.clone()))
            .collect();
        assert_eq!(records, vec![&b"a"[..], b"", b"ccc"]);
    }

    #[test]
    fn zeros_after_the_records_are_a_clean_unwritten_tail() {
        let mut bytes = segment(0, &[b"x"]);
        let end = bytes.len();
        bytes.resize(end + 100, 0);
        let scan = scan_segment(&bytes, 0);
        assert_eq!(scan.valid_end, end);
        let stop = scan.stop.expect("zeros are not a record");
        assert!(stop.rest_is_zero);
        assert_eq!(stop.valid_record_after, None);
    }

    #[test]
    fn a_damaged_record_followed_by_a_valid_one_is_found() {
        let bytes = segment(3, &[b"first", b"second", b"third"]);
        let clean = scan_segment(&bytes, 3);
        let second = clean.records[1].clone();
        let third = clean.records[2].clone();
        // Damage the length field so the frame claims to run past the end of the file.
        let mut damaged = bytes.clone();
        damaged[second.start + 3] ^= 0x40;
        let scan = scan_segment(&damaged, 3);
        assert_eq!(scan.valid_end, second.start);
        let stop = scan.stop.expect("stops at the damage");
        assert_eq!(stop.valid_record_after, Some(third.start));
        // The same damage in the last record leaves nothing valid after it: a torn tail.
        let mut torn = bytes.clone();
        torn[third.start + 9] ^= 1;
        let stop = scan_segment(&torn, 3).stop.expect("stops at the damage");
        assert_eq!(stop.valid_record_after, None);
        assert!(!stop.rest_is_zero);
    }

    #[test]
    fn a_record_with_the_wrong_index_is_refused() {
        let bytes = segment(3, &[b"a"]);
        let scan = scan_segment(&bytes, 4);
        assert!(scan.records.is_empty());
        assert!(scan.stop.expect("refused").reason.contains("index 3"));
    }
}
