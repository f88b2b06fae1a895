//! Reads its config through `wasi:config/store` at both versions other
//! hosts serve (Spin's `0.2.0-draft-2024-09-27`, wasmCloud's `0.2.0-rc.1`)
//! and keeps what it read in its state: `draft.greeting`, `rc1.greeting`,
//! `draft.keys`, `rc1.keys`.

// wit-bindgen's import glue (expanded here) is unsafe by nature: raw ABI
// functions. No hand-written unsafe in this file.
#![allow(unsafe_code)]

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin, State};

#[allow(missing_docs, clippy::all)]
mod standard {
    wit_bindgen::generate!({
        path: "wit-config",
        world: "reader",
        generate_all,
    });
}

use standard::wasi::config0_2_0_draft_2024_09_27::store as draft;
use standard::wasi::config0_2_0_rc_1::store as rc1;

struct ConfigReader;

impl Plugin for ConfigReader {
    fn init(_config: &Config) -> Result<Self, String> {
        let state = State::open().map_err(|e| e.to_string())?;
        let keep =
            |key: &str, value: String| state.set(key, value.as_bytes()).map_err(|e| e.to_string());
        let greeting = draft::get("greeting").map_err(|e| format!("{e:?}"))?;
        keep("draft.greeting", greeting.unwrap_or_default())?;
        let greeting = rc1::get("greeting").map_err(|e| format!("{e:?}"))?;
        keep("rc1.greeting", greeting.unwrap_or_default())?;
        let all = draft::get_all().map_err(|e| format!("{e:?}"))?;
        keep("draft.keys", all.len().to_string())?;
        let all = rc1::get_all().map_err(|e| format!("{e:?}"))?;
        keep("rc1.keys", all.len().to_string())?;
        Ok(ConfigReader)
    }

    fn info(&self) -> Info {
        Info::new("config_reader", "1", ["config.read"])
    }

    fn handle(&mut self, _event: &Event<'_>, _ctx: &mut Context) -> Outcome {
        Outcome::Ack
    }
}

export_plugin!(ConfigReader);
