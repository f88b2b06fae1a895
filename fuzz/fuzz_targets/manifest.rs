//! The plugin manifest parser (`NAME.toml`): any text is a manifest or an
//! error naming the key, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugbus::plugin::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Manifest::parse(std::path::Path::new("fuzz.toml"), text);
    }
});
