//! The snapshot file format: one checkpoint record, checksummed, in a file of its own.
//!
//! ```text
//! +--------------------+----------------+-------------+-------------------+
//! | magic "SYNODSNP"   | version: u32LE | index: u64LE| length: u64 LE    |
//! +--------------------+----------------+-------------+-------------------+
//! | payload crc32c: u32 LE | header crc32c (of the 32 bytes before): u32 LE |
//! +------------------------+-----------------------------------------------+
//! | payload: `length` bytes                                                |
//! +------------------------------------------------------------------------+
//! ```
//!
//! A snapshot is never written in place: it is written to a `.tmp` name, fsynced, renamed
//! and the directory fsynced, so a file under a snapshot name was complete when it got it.

/// The first bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"SYNODSNP";
/// The snapshot format this code writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
/// Bytes of the snapshot header.
pub const SNAPSHOT_HEADER_BYTES: usize = 36;

const _: () = assert!(SNAPSHOT_HEADER_BYTES == SNAPSHOT_MAGIC.len() + 4 + 8 + 8 + 4 + 4);

/// The file name of the snapshot of checkpoint record `index`.
pub fn snapshot_file_name(index: u64) -> String {
    format!("snapshot-{index:020}.snap")
}

/// The checkpoint index encoded in a snapshot file name, if `name` is one.
pub fn parse_snapshot_file_name(name: &str) -> Option<u64> {
    crate::segment::parse_indexed_name(name, "snapshot-", ".snap")
}

/// The header of a snapshot of checkpoint record `index` holding `payload`.
pub fn encode_snapshot_header(index: u64, payload: &[u8]) -> [u8; SNAPSHOT_HEADER_BYTES] {
    encode_snapshot_header_of(index, payload.len() as u64, crc32c::crc32c(payload))
}

/// The header of a snapshot of checkpoint record `index` whose payload is `length` bytes
/// with CRC32C `checksum` (for a payload written as a stream).
pub fn encode_snapshot_header_of(
    index: u64,
    length: u64,
    checksum: u32,
) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    header[..8].copy_from_slice(&SNAPSHOT_MAGIC);
    header[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&index.to_le_bytes());
    header[20..28].copy_from_slice(&length.to_le_bytes());
    header[28..32].copy_from_slice(&checksum.to_le_bytes());
    let checksum = crc32c::crc32c(&header[..32]);
    header[32..36].copy_from_slice(&checksum.to_le_bytes());
    header
}

/// Why a snapshot's bytes do not verify: the byte offset of the problem and what it is.
pub type SnapshotDefect = (u64, String);

/// Verifies a whole snapshot file (`bytes`) that should hold checkpoint record `index` and
/// returns its payload. Never panics.
pub fn decode_snapshot(bytes: &[u8], index: u64) -> Result<&[u8], SnapshotDefect> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err((
            bytes.len() as u64,
            format!(
                "the file has {} bytes, shorter than the {SNAPSHOT_HEADER_BYTES}-byte header",
                bytes.len()
            ),
        ));
    }
    if bytes[..8] != SNAPSHOT_MAGIC {
        return Err((0, "wrong magic: not a Synod snapshot".into()));
    }
    let header_checksum = u32::from_le_bytes(array(&bytes[32..36]));
    let actual = crc32c::crc32c(&bytes[..32]);
    if header_checksum != actual {
        return Err((
            0,
            format!(
                "header checksum mismatch: stored {header_checksum:#010x}, computed {actual:#010x}"
            ),
        ));
    }
    let version = u32::from_le_bytes(array(&bytes[8..12]));
    if version != SNAPSHOT_VERSION {
        return Err((
            8,
            format!("format version {version}, but this build reads version {SNAPSHOT_VERSION}"),
        ));
    }
    let stored_index = u64::from_le_bytes(array(&bytes[12..20]));
    if stored_index != index {
        return Err((
            12,
            format!("the header says checkpoint {stored_index}, the file name says {index}"),
        ));
    }
    let length = u64::from_le_bytes(array(&bytes[20..28]));
    let available = (bytes.len() - SNAPSHOT_HEADER_BYTES) as u64;
    if length != available {
        return Err((
            20,
            format!("the header announces {length} payload bytes but the file holds {available}"),
        ));
    }
    let payload = &bytes[SNAPSHOT_HEADER_BYTES..];
    let payload_checksum = u32::from_le_bytes(array(&bytes[28..32]));
    let actual = crc32c::crc32c(payload);
    if payload_checksum != actual {
        return Err((
            SNAPSHOT_HEADER_BYTES as u64,
            format!(
                "payload checksum mismatch: stored {payload_checksum:#010x}, computed {actual:#010x}"
            ),
        ));
    }
    Ok(payload)
}

/// The `N` bytes of `slice` (exactly `N` long) as an array.
fn array<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(slice);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(index: u64, payload: &[u8]) -> Vec<u8> {
        let mut bytes = encode_snapshot_header(index, payload).to_vec();
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn a_snapshot_round_trips() {
        let bytes = snapshot(9, b"state");
        assert_eq!(decode_snapshot(&bytes, 9), Ok(&b"state"[..]));
        assert_eq!(parse_snapshot_file_name(&snapshot_file_name(9)), Some(9));
        assert_eq!(parse_snapshot_file_name("snapshot-9.snap"), None);
    }

    #[test]
    fn every_single_bit_flip_and_truncation_is_detected() {
        let bytes = snapshot(3, b"a small state machine");
        for position in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[position] ^= 1 << bit;
                assert!(
                    decode_snapshot(&flipped, 3).is_err(),
                    "flip at {position} bit {bit}"
                );
            }
        }
        for keep in 0..bytes.len() {
            assert!(decode_snapshot(&bytes[..keep], 3).is_err(), "cut at {keep}");
        }
        assert!(decode_snapshot(&bytes, 4).is_err());
    }
}
