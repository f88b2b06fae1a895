//! The host's imports (state, publish, config, log) called with arbitrary
//! arguments, as a guest's calls arrive, against the embedded store: every
//! call returns, an error at worst; none panics (`runtime::imports_fuzz`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    plugbus::runtime::imports_fuzz::run(data);
});
