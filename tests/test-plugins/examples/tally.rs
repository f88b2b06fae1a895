//! Counts the `tally.*` events it acks in its state (`seen`, and
//! `attempt.<id>`: the attempt that was acked), and asks for retries when
//! an event says so: `{"retry_until_attempt": N, "delay_ms": D}` is retried
//! (after D ms) until its attempt N. Every call writes state first, so a
//! test sees whether writes made for a retried event are kept (they must
//! not be). It records the order of its acks per subject under
//! `order.<subject>` (`order.-` without one).

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin, State};

struct Tally {
    state: State,
}

impl Plugin for Tally {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Tally {
            state: State::open().map_err(|e| e.to_string())?,
        })
    }

    fn info(&self) -> Info {
        Info::new("tally", "0.1.0", ["tally.>"])
    }

    fn handle(&mut self, event: &Event<'_>, _ctx: &mut Context) -> Outcome {
        let data: serde_json::Value = event.json().unwrap_or_default();
        if let Err(e) = self.state.increment("seen", 1) {
            return Outcome::retry(e.to_string());
        }
        if let Err(e) = self
            .state
            .set_json(&format!("attempt.{}", event.id()), &event.attempt())
        {
            return Outcome::retry(e.to_string());
        }
        let until = data["retry_until_attempt"].as_u64().unwrap_or(0);
        if u64::from(event.attempt()) < until {
            let delay = data["delay_ms"].as_u64().unwrap_or(10);
            plugbus_sdk::info!("retry {} (attempt {})", event.id(), event.attempt());
            return Outcome::retry_after(delay, "asked to retry");
        }
        // The order acks happen in, per subject.
        let key = format!("order.{}", event.subject().unwrap_or("-"));
        let mut order: Vec<String> = match self.state.get_json(&key) {
            Ok(order) => order.unwrap_or_default(),
            Err(e) => return Outcome::retry(e.to_string()),
        };
        order.push(event.id().to_string());
        if let Err(e) = self.state.set_json(&key, &order) {
            return Outcome::retry(e.to_string());
        }
        plugbus_sdk::info!("acked {} (attempt {})", event.id(), event.attempt());
        Outcome::Ack
    }
}

export_plugin!(Tally);
