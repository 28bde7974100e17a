//! Fuzz target: decoding any bytes as a frame never panics, and whatever decodes re-encodes
//! to a frame that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracevisor_protocol::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode(data) {
        let bytes = encode(&frame).expect("a decoded frame encodes");
        assert_eq!(decode(&bytes).as_ref(), Ok(&frame));
    }
});
