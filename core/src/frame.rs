//! Framing for the wire and the disk: a length, a CRC32C of the payload, then the payload.
//!
//! ```text
//! +----------------+----------------+-------------------------+
//! | length: u32 LE | crc32c: u32 LE | payload: `length` bytes |
//! +----------------+----------------+-------------------------+
//! ```
//!
//! Decoding never panics and never allocates on the say-so of a length field: a frame that is
//! only partly present is [`FrameError::Incomplete`] (more bytes may still arrive, or on disk:
//! a torn tail), kept apart from real corruption ([`FrameError::ChecksumMismatch`],
//! [`FrameError::TooLarge`]).
//!
//! ```
//! use synod_core::frame::{decode_frame, encode_frame, FrameError};
//!
//! let mut bytes = Vec::new();
//! encode_frame(b"hello", &mut bytes).unwrap();
//! assert_eq!(decode_frame(&bytes), Ok((&b"hello"[..], bytes.len())));
//! assert!(matches!(decode_frame(&bytes[..6]), Err(FrameError::Incomplete { .. })));
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes before the payload: the length and the checksum.
pub const FRAME_HEADER_BYTES: usize = 8;

/// The largest payload a frame may carry. Bigger than any record or message Synod sends
/// (etcd's request limit is 1.5 MiB; snapshots travel in chunks), small enough that a
/// corrupted length field can never make a reader wait for or allocate gigabytes.
pub const MAX_FRAME_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;

const _: () = assert!(MAX_FRAME_PAYLOAD_BYTES <= u32::MAX as usize);

/// Why bytes are not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The buffer ends inside the frame; `needed` more bytes would complete it.
    #[error("incomplete frame: {needed} more bytes needed")]
    Incomplete {
        /// Bytes missing.
        needed: usize,
    },
    /// The length field exceeds [`MAX_FRAME_PAYLOAD_BYTES`].
    #[error("frame length {length} exceeds the limit of {MAX_FRAME_PAYLOAD_BYTES} bytes")]
    TooLarge {
        /// The length claimed.
        length: usize,
    },
    /// The payload does not match its checksum.
    #[error("frame checksum mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    ChecksumMismatch {
        /// The checksum in the header.
        expected: u32,
        /// The checksum of the payload read.
        actual: u32,
    },
    /// A value could not be serialized.
    #[error("cannot encode record: {0}")]
    Encode(String),
    /// A checksummed payload is not a valid value of the expected type.
    #[error("cannot decode record: {0}")]
    Decode(String),
}

/// Appends one frame holding `payload` to `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if payload.len() > MAX_FRAME_PAYLOAD_BYTES {
        return Err(FrameError::TooLarge {
            length: payload.len(),
        });
    }
    let length = payload.len() as u32;
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Reads a little-endian u32 at `offset`; the caller guarantees four bytes are there.
fn read_u32(buffer: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&buffer[offset..offset + 4]);
    u32::from_le_bytes(word)
}

/// Decodes the frame at the start of `buffer`: its payload and the bytes it occupied.
pub fn decode_frame(buffer: &[u8]) -> Result<(&[u8], usize), FrameError> {
    if buffer.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::Incomplete {
            needed: FRAME_HEADER_BYTES - buffer.len(),
        });
    }
    let length = read_u32(buffer, 0) as usize;
    if length > MAX_FRAME_PAYLOAD_BYTES {
        return Err(FrameError::TooLarge { length });
    }
    let total = FRAME_HEADER_BYTES + length;
    if buffer.len() < total {
        return Err(FrameError::Incomplete {
            needed: total - buffer.len(),
        });
    }
    let expected = read_u32(buffer, 4);
    let payload = &buffer[FRAME_HEADER_BYTES..total];
    let actual = crc32c::crc32c(payload);
    if actual != expected {
        return Err(FrameError::ChecksumMismatch { expected, actual });
    }
    Ok((payload, total))
}

/// Decodes consecutive frames, stopping at the first error and reporting the offset where
/// the bad frame starts (log recovery truncates a torn tail there).
pub fn decode_all(buffer: &[u8]) -> (Vec<&[u8]>, Option<(usize, FrameError)>) {
    let mut payloads = Vec::new();
    let mut offset = 0;
    while offset < buffer.len() {
        match decode_frame(&buffer[offset..]) {
            Ok((payload, consumed)) => {
                payloads.push(payload);
                offset += consumed;
            }
            Err(error) => return (payloads, Some((offset, error))),
        }
    }
    (payloads, None)
}

/// Serializes `value` with postcard and appends it to `out` as one frame.
pub fn encode_record<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let payload =
        postcard::to_allocvec(value).map_err(|error| FrameError::Encode(error.to_string()))?;
    encode_frame(&payload, out)
}

/// Deserializes a frame payload written by [`encode_record`].
pub fn decode_record<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (value, rest) = postcard::take_from_bytes(payload)
        .map_err(|error| FrameError::Decode(error.to_string()))?;
    // `postcard::from_bytes` ignores leftovers, but a frame holds exactly one record: bytes
    // past it mean the reader expects a different type than the writer wrote.
    if !rest.is_empty() {
        return Err(FrameError::Decode(format!(
            "{} bytes left after the record",
            rest.len()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        encode_frame(payload, &mut bytes).expect("small payload");
        bytes
    }

    #[test]
    fn the_layout_is_length_checksum_payload() {
        let bytes = framed(b"abc");
        assert_eq!(&bytes[..4], &3u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &crc32c::crc32c(b"abc").to_le_bytes());
        assert_eq!(&bytes[8..], b"abc");
        // The CRC32C (Castagnoli) check value, so this is not plain CRC-32.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn an_empty_payload_is_a_valid_frame() {
        let bytes = framed(b"");
        assert_eq!(decode_frame(&bytes), Ok((&b""[..], FRAME_HEADER_BYTES)));
    }

    #[test]
    fn a_huge_length_is_refused_before_waiting_for_it() {
        let mut bytes = ((MAX_FRAME_PAYLOAD_BYTES + 1) as u32)
            .to_le_bytes()
            .to_vec();
        bytes.extend_from_slice(&[0; 4]);
        assert_eq!(
            decode_frame(&bytes),
            Err(FrameError::TooLarge {
                length: MAX_FRAME_PAYLOAD_BYTES + 1
            })
        );
    }

    #[test]
    fn a_torn_tail_is_reported_at_its_offset() {
        let mut bytes = framed(b"first");
        let second = framed(b"second");
        let first_length = bytes.len();
        bytes.extend_from_slice(&second[..second.len() - 2]);
        let (payloads, error) = decode_all(&bytes);
        assert_eq!(payloads, vec![&b"first"[..]]);
        assert_eq!(
            error,
            Some((first_length, FrameError::Incomplete { needed: 2 }))
        );
    }

    #[test]
    fn records_round_trip_through_postcard() {
        let mut bytes = Vec::new();
        encode_record(&("key".to_string(), 42u64), &mut bytes).expect("encodes");
        let (payload, _) = decode_frame(&bytes).expect("valid frame");
        let decoded: (String, u64) = decode_record(payload).expect("decodes");
        assert_eq!(decoded, ("key".to_string(), 42));
        assert!(matches!(
            decode_record::<(String, u64)>(&[0xFF]),
            Err(FrameError::Decode(_))
        ));
        // A payload holding a longer value than the reader expects is not silently cut.
        let longer = postcard::to_allocvec(&(7u8, 8u8)).expect("encodes");
        assert!(matches!(
            decode_record::<u8>(&longer),
            Err(FrameError::Decode(_))
        ));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame(&bytes);
            let (payloads, error) = decode_all(&bytes);
            // Whatever decoded re-encodes to exactly the bytes it came from.
            let mut again = Vec::new();
            for payload in &payloads {
                encode_frame(payload, &mut again).expect("decoded payloads are small");
            }
            let consumed = error.map_or(bytes.len(), |(offset, _)| offset);
            prop_assert_eq!(&again[..], &bytes[..consumed]);
        }

        #[test]
        fn frames_round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut bytes = Vec::new();
            for payload in &payloads {
                encode_frame(payload, &mut bytes).expect("small payload");
            }
            let (decoded, error) = decode_all(&bytes);
            prop_assert_eq!(error, None);
            prop_assert_eq!(decoded, payloads.iter().map(Vec::as_slice).collect::<Vec<_>>());
        }

        #[test]
        fn every_truncation_is_incomplete(payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let bytes = framed(&payload);
            for keep in 0..bytes.len() {
                // Before the length is readable only the header's rest is known to be missing.
                let needed = if keep < FRAME_HEADER_BYTES {
                    FRAME_HEADER_BYTES - keep
                } else {
                    bytes.len() - keep
                };
                prop_assert_eq!(decode_frame(&bytes[..keep]), Err(FrameError::Incomplete { needed }));
            }
        }

        #[test]
        fn a_flipped_bit_is_never_accepted_as_another_payload(
            payload in proptest::collection::vec(any::<u8>(), 1..64),
            position in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut bytes = framed(&payload);
            let index = position.index(bytes.len());
            bytes[index] ^= 1 << bit;
            // A flip in the payload or checksum breaks the checksum; one in the length makes
            // the frame incomplete, too large, or a shorter payload whose checksum (with
            // probability 2^-32) does not match.
            let result = decode_frame(&bytes);
            prop_assert!(result.is_err(), "accepted a corrupted frame: {:?}", result);
        }
    }
}
