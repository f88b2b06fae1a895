//! Logs the id of every `order.placed` it handles (`handled <id>`), so a
//! test can check delivery across crashes and restarts from the host log.

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin};

struct Recorder;

impl Plugin for Recorder {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Recorder)
    }

    fn info(&self) -> Info {
        Info::new("recorder", "0.1.0", ["order.placed"])
    }

    fn handle(&mut self, event: &Event<'_>, _ctx: &mut Context) -> Outcome {
        plugbus_sdk::info!("handled {}", event.id());
        Outcome::Ack
    }
}

export_plugin!(Recorder);
