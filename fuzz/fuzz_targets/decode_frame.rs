//! Arbitrary bytes through the frame decoder: it must never panic, and whatever it accepts
//! must re-encode to exactly the bytes it was read from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synod_core::frame::{FrameError, decode_all, decode_frame, encode_frame};

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
    if let Some((_, FrameError::Incomplete { needed })) = error {
        // An incomplete frame always lacks at least one byte.
        assert!(needed > 0);
    }
});
