//! Arbitrary bytes through the frame decoder: it must never panic, and whatever it accepts
//! must re-encode to exactly the bytes it was read from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synod_core::frame::{FRAME_HEADER_BYTES, FrameError, decode_all, decode_frame, encode_frame};

fuzz_target!(|bytes: &[u8]| {
    if let Ok((payload, consumed)) = decode_frame(bytes) {
        let mut again = Vec::new();
        encode_frame(payload, &mut again).expect("a decoded payload is within limits");
        assert_eq!(&again[..], &bytes[..consumed]);
    }
    let (payloads, error) = decode_all(bytes);
    let mut again = Vec::new();
    for payload in &payloads {
        encode_frame(payload, &mut again).expect("a decoded payload is within limits");
    }
    let consumed = error.as_ref().map_or(bytes.len(), |(offset, _)| *offset);
    assert_eq!(&again[..], &bytes[..consumed]);
    if let Some((offset, FrameError::Incomplete { needed })) = error {
        // The frame is the tail and `needed` is exact: the rest of the header while the
        // length is unreadable, else the rest of the frame that length announces.
        let available = bytes.len() - offset;
        let frame_bytes = if available < FRAME_HEADER_BYTES {
            FRAME_HEADER_BYTES
        } else {
            let length = u32::from_le_bytes([
                bytes[offset],
                bytes[offset + 1],
                bytes[offset + 2],
                bytes[offset + 3],
            ]);
            FRAME_HEADER_BYTES + length as usize
        };
        assert!(needed > 0);
        assert_eq!(available + needed, frame_bytes);
    }
});
