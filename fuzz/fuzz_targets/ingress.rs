//! The ingress parsers: a plain JSON body, a structured CloudEvent, a
//! batch, and binary mode (headers and a body). The first byte picks the
//! parser; the rest is the input. None may panic; an event that parses
//! must be one the host accepts (it validates itself).
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugbus::event::Event;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            let _ = Event::from_plain_json("order.placed", body);
        }
        1 => {
            let _ = Event::parse_structured(body);
        }
        2 => {
            let _ = Event::parse_batch(body);
        }
        _ => {
            // Lines of `name: value` headers, a blank line, then the body.
            let text = String::from_utf8_lossy(body);
            let (head, rest) = text.split_once("\n\n").unwrap_or((&text, ""));
            let attributes: Vec<(String, String)> = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect();
            let _ = Event::from_binary(attributes, None, rest.as_bytes().to_vec());
        }
    }
});
