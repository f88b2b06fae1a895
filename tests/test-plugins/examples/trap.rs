//! Traps (panics) on any `order.placed` whose data contains `boom`; acks the
//! rest and logs how many it has acked since this instance started.

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin};

struct Trap {
    acked: u64,
}

impl Plugin for Trap {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Trap { acked: 0 })
    }

    fn info(&self) -> Info {
        Info::new("trap", "0.1.0", ["order.placed"])
    }

    fn handle(&mut self, event: &Event<'_>, _ctx: &mut Context) -> Outcome {
        if event.data().windows(4).any(|w| w == b"boom") {
            panic!("boom in event {}", event.id());
        }
        self.acked += 1;
        plugbus_sdk::info!("acked {} since start", self.acked);
        Outcome::Ack
    }
}

export_plugin!(Trap);
