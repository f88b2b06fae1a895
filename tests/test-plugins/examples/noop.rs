//! Acks every `order.placed` event and does nothing else.

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin};

struct Noop;

impl Plugin for Noop {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Noop)
    }

    fn info(&self) -> Info {
        Info::new("noop", "0.1.0", ["order.placed"])
    }

    fn handle(&mut self, _event: &Event<'_>, _ctx: &mut Context) -> Outcome {
        Outcome::Ack
    }
}

export_plugin!(Noop);
