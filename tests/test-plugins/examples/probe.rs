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
            Some(other) => return Err(format!("config `measure` = `{other}`: only `chain`")),
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
            match accepted(event) {
                Ok(at) => self.keep_latency(event.id(), now, at),
                Err(e) => return Outcome::reject(e),
            }
        } else if event.topic() == "order.placed" {
            match accepted(event) {
                Ok(at) => {
                    let micros = at
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros());
                    self.state.set(
                        &format!("at.{}", event.id()),
                        format!("@{micros}").as_bytes(),
                    )
                }
                Err(e) => return Outcome::reject(e),
            }
        } else {
            let Some(order) = event.causation_id() else {
                return Outcome::reject("a follow-up without a causation id");
            };
            let key = format!("at.{order}");
            let at = match self.state.get(&key) {
                Ok(Some(v)) => String::from_utf8_lossy(&v)
                    .trim_start_matches('@')
                    .parse::<u64>()
                    .map(|us| SystemTime::UNIX_EPOCH + Duration::from_micros(us)),
                Ok(None) => return Outcome::reject(format!("no order {order} seen before")),
                Err(e) => return Outcome::retry(e.to_string()),
            };
            match at {
                Ok(at) => self
                    .keep_latency(order, now, at)
                    .and_then(|()| self.state.delete(&key)),
                Err(e) => return Outcome::reject(e.to_string()),
            }
        };
        match kept {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::retry(e.to_string()),
        }
    }
}

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
}

/// When the host accepted `event`.
fn accepted(event: &Event<'_>) -> Result<SystemTime, String> {
    humantime::parse_rfc3339(event.time())
        .map_err(|_| format!("time `{}` is not RFC 3339", event.time()))
}

export_plugin!(Probe);
