//! Spends 50 ms on every `order.placed` (busy-waiting on the monotonic
//! clock): a consumer that cannot keep up, for backpressure tests.

use std::time::{Duration, Instant};

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin};

struct Slow;

impl Plugin for Slow {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Slow)
    }

    fn info(&self) -> Info {
        Info::new("slow", "0.1.0", ["order.placed"])
    }

    fn handle(&mut self, _event: &Event<'_>, _ctx: &mut Context) -> Outcome {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            std::hint::spin_loop();
        }
        Outcome::Ack
    }
}

export_plugin!(Slow);
