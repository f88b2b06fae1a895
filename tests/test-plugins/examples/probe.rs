//! Measures end-to-end latency for the benchmark, read from the wall clock
//! the sandbox is granted and kept under `lat.<id>` in microseconds.
//!
//! By default, for each `order.placed`: from the event's `time` (set by the
//! host when it accepted the event) to the moment `handle` saw it.
//!
//! With config `measure = "chain"`, the choreography chain: it also
//! subscribes to inventory's follow-ups, keeps each order's acceptance time
//! (`at.<order id>`, not a number) and, when the follow-up the order caused
//! arrives, keeps `lat.<order id>`: from the order's acceptance to this
//! plugin handling its follow-up, as email does.

use std::time::{Duration, SystemTime};

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin, State};

struct Probe {
    state: State,
    chain: bool,
}

impl Plugin for Probe {
    fn init(config: &Config) -> Result<Self, String> {
        let chain = match config.get("measure") {
            None => false,
            Some("chain") => true,
            Some(other) => {
                return Err(format!(
                    "config `measure` = `{other}` is not known: set it to `chain` or leave it out"
                ))
            }
        };
        Ok(Probe {
            state: State::open().map_err(|e| e.to_string())?,
            chain,
        })
    }

    fn info(&self) -> Info {
        if self.chain {
            Info::new("probe", "0.1.0", ["order.placed", "inventory.*"])
        } else {
            Info::new("probe", "0.1.0", ["order.placed"])
        }
    }

    fn handle(&mut self, event: &Event<'_>, _ctx: &mut Context) -> Outcome {
        let now = SystemTime::now();
        let kept = if !self.chain {
            accepted(event).map(|at| self.keep_latency(event.id(), now, at))
        } else if event.topic() == "order.placed" {
            accepted(event).map(|at| self.keep_accepted(event.id(), at))
        } else {
            self.follow_up(event, now)
        };
        match kept {
            Ok(Ok(())) => Outcome::Ack,
            Ok(Err(e)) => Outcome::retry(e.to_string()),
            Err(why) => Outcome::reject(why),
        }
    }
}

/// A state write's result, or why the event is rejected.
type Kept = Result<Result<(), plugbus_sdk::StateError>, String>;

impl Probe {
    fn keep_latency(
        &self,
        id: &str,
        now: SystemTime,
        from: SystemTime,
    ) -> Result<(), plugbus_sdk::StateError> {
        let micros = now.duration_since(from).map_or(0, |d| d.as_micros() as u64);
        self.state
            .set(&format!("lat.{id}"), micros.to_string().as_bytes())
    }

    /// Keep when order `id` was accepted (`@micros`, not a number, so the
    /// benchmark does not read it as a latency).
    fn keep_accepted(&self, id: &str, at: SystemTime) -> Result<(), plugbus_sdk::StateError> {
        let micros = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        self.state
            .set(&format!("at.{id}"), format!("@{micros}").as_bytes())
    }

    /// A follow-up: the latency from its order's acceptance.
    fn follow_up(&self, event: &Event<'_>, now: SystemTime) -> Kept {
        let order = event
            .causation_id()
            .ok_or("a follow-up without a causation id")?;
        let key = format!("at.{order}");
        let kept = match self.state.get(&key) {
            Ok(Some(v)) => v,
            Ok(None) => return Err(format!("no order {order} seen before")),
            Err(e) => return Ok(Err(e)),
        };
        let micros: u64 = String::from_utf8_lossy(&kept)
            .trim_start_matches('@')
            .parse()
            .map_err(|e| format!("`{key}` is not a time: {e}"))?;
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(micros);
        Ok(self
            .keep_latency(order, now, at)
            .and_then(|()| self.state.delete(&key)))
    }
}

/// When the host accepted `event`.
fn accepted(event: &Event<'_>) -> Result<SystemTime, String> {
    humantime::parse_rfc3339(event.time())
        .map_err(|_| format!("time `{}` is not RFC 3339", event.time()))
}

export_plugin!(Probe);
