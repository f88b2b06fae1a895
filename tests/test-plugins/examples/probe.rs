//! Measures end-to-end latency for the benchmark: for each `order.placed`
//! it keeps, under `lat.<id>`, the microseconds from the event's `time`
//! (set by the host when it accepted the event) to the moment `handle` saw
//! it, read from the wall clock the sandbox is granted.

use std::time::SystemTime;

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin, State};

struct Probe {
    state: State,
}

impl Plugin for Probe {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Probe {
            state: State::open().map_err(|e| e.to_string())?,
        })
    }

    fn info(&self) -> Info {
        Info::new("probe", "0.1.0", ["order.placed"])
    }

    fn handle(&mut self, event: &Event<'_>, _ctx: &mut Context) -> Outcome {
        let now = SystemTime::now();
        let Ok(accepted) = humantime::parse_rfc3339(event.time()) else {
            return Outcome::reject(format!("time `{}` is not RFC 3339", event.time()));
        };
        let micros = now
            .duration_since(accepted)
            .map_or(0, |d| d.as_micros() as u64);
        match self.state.set(
            &format!("lat.{}", event.id()),
            micros.to_string().as_bytes(),
        ) {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::retry(e.to_string()),
        }
    }
}

export_plugin!(Probe);
