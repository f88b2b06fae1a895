//! Refuses to start: its `init` asks for configuration it is not given.

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin};

struct NeedsKey;

impl Plugin for NeedsKey {
    fn init(config: &Config) -> Result<Self, String> {
        match config.get("api_key") {
            Some(_) => Ok(NeedsKey),
            None => Err("config `api_key` is not set; add it to the plugin's configuration".into()),
        }
    }

    fn info(&self) -> Info {
        Info::new("init_fails", "0.1.0", ["order.placed"])
    }

    fn handle(&mut self, _event: &Event<'_>, _ctx: &mut Context) -> Outcome {
        Outcome::Ack
    }
}

export_plugin!(NeedsKey);
