//! The log record decoder: one event, or a run of them, as the store reads
//! them back from disk. A damaged record must be an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugbus::store::codec;

fuzz_target!(|data: &[u8]| {
    let _ = codec::decode(7, data);
    let _ = codec::decode_run(7, data);
});
