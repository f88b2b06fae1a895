//! A plugin built against `plugbus:plugin@0.1.0`, the contract before
//! timers (0.1.1 added the `scheduler` import): a host of 0.1.1 must load
//! and run it, as the component model's semver rules say (0.1.1 only adds).
//! It acks every event and says so in its log.

// wit-bindgen's export glue (expanded here, not in plugbus-sdk) is unsafe by
// nature: raw ABI functions. No hand-written unsafe in this file.
#![allow(unsafe_code)]

#[allow(missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package plugbus:plugin@0.1.0;

            interface types {
                record batch {
                    bytes: list<u8>,
                    headers: list<u32>,
                    extensions: list<u32>,
                }
                record retry {
                    delay-ms: option<u64>,
                    message: string,
                }
                variant outcome {
                    ack,
                    retry(retry),
                    reject(string),
                }
                record info {
                    name: string,
                    version: string,
                    subscriptions: list<string>,
                }
            }

            interface handler {
                use types.{batch, outcome, info};
                init: func() -> result<info, string>;
                handle: func(batch: batch) -> list<outcome>;
            }

            world plugin {
                export handler;
            }
        "#,
        world: "plugin",
    });
}

use bindings::exports::plugbus::plugin::handler::Guest;
use bindings::plugbus::plugin::types::{Batch, Info, Outcome};

struct Old;

impl Guest for Old {
    fn init() -> Result<Info, String> {
        Ok(Info {
            name: "old".into(),
            version: "0.1.0".into(),
            subscriptions: vec!["old.>".into()],
        })
    }

    fn handle(batch: Batch) -> Vec<Outcome> {
        // 24 header words per event (the 0.1.0 layout).
        let events = batch.headers.len() / 24;
        println!("contract 0.1.0 plugin handled {events} events");
        vec![Outcome::Ack; events]
    }
}

bindings::export!(Old with_types_in bindings);
