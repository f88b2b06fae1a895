//! Topic patterns and topics: parsing, and matching a pattern against a
//! topic, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugbus_contract::topic::{validate_topic, Pattern};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, topic) = text.split_once('\n').unwrap_or((text, "order.placed"));
    if let Ok(p) = Pattern::parse(pattern) {
        let _ = p.matches(topic);
        let _ = p.to_string();
    }
    let _ = validate_topic(topic);
});
