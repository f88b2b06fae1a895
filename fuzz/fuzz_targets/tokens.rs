//! The token file parser (`--auth FILE`): any text is a set of tokens or
//! an error naming the entry, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugbus::http::auth;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(principals) = auth::parse(text) {
            for p in &principals {
                let _ = p.may_publish("order.placed");
            }
        }
    }
});
