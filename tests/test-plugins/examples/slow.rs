//! Spends 50 ms on every `order.placed` (busy-waiting on the monotonic
//! clock) and notes the event in its state (`seen:ID`): a consumer that
//! cannot keep up, for backpressure tests, whose outcome is a state commit
//! (which a broker must fence).

use std::time::{Duration, Instant};

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin, State};

struct Slow {
    state: State,
}

impl Plugin for Slow {
    fn init(_config: &Config) -> Result<Self, String> {
        let state = State::open().map_err(|e| format!("cannot open the state bucket: {e}"))?;
        Ok(Slow { state })
    }

    fn info(&self) -> Info {
        Info::new("slow", "0.1.0", ["order.placed"])
    }

    fn handle(&mut self, event: &Event<'_>, _ctx: &mut Context) -> Outcome {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            std::hint::spin_loop();
        }
        match self.state.set(&format!("seen:{}", event.id()), b"1") {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::retry(format!("cannot note the event: {e}")),
        }
    }
}

export_plugin!(Slow);
