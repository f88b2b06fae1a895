//! Sets, replaces and calls off timers as `timer.*` events ask, and
//! records the timers' events it receives:
//!
//! - `timer.set {"key": K, "after_ms": N}` sets timer K to publish
//!   `timer.fired {"key": K}` N ms later (setting K again replaces it);
//! - `timer.cancel {"key": K}` calls it off;
//! - `timer.fired` counts `fired.K` in its state and keeps the event's
//!   `latems` as `late.K` and whether it came before its `scheduledat` as
//!   `early.K`.

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin, State, When};

struct Timers {
    state: State,
}

impl Plugin for Timers {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Timers {
            state: State::open().map_err(|e| e.to_string())?,
        })
    }

    fn info(&self) -> Info {
        Info::new(
            "timers",
            "0.1.0",
            ["timer.set", "timer.cancel", "timer.fired"],
        )
    }

    fn handle(&mut self, event: &Event<'_>, ctx: &mut Context) -> Outcome {
        let data: serde_json::Value = event.json().unwrap_or_default();
        let key = data["key"].as_str().unwrap_or("none").to_string();
        let done = match event.topic() {
            "timer.set" => {
                let after = data["after_ms"].as_u64().unwrap_or(0);
                let fired = serde_json::json!({ "key": key });
                ctx.schedule(&key, When::AfterMs(after), "timer.fired", &fired)
                    .map_err(|e| e.to_string())
            }
            "timer.cancel" => ctx.cancel(&key).map_err(|e| e.to_string()),
            _ => self.fired(event, &key),
        };
        match done {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::reject(e),
        }
    }
}

impl Timers {
    fn fired(&self, event: &Event<'_>, key: &str) -> Result<(), String> {
        let ext = |name: &str| {
            event
                .extensions()
                .find(|(k, _)| *k == name)
                .map_or(String::new(), |(_, v)| v.to_string())
        };
        let (late, due) = (ext("latems"), ext("scheduledat"));
        let at = |t: &str| humantime::parse_rfc3339_weak(t).ok();
        let early = match (at(event.time()), at(&due)) {
            (Some(time), Some(due)) => time < due,
            _ => true,
        };
        let s = &self.state;
        s.increment(&format!("fired.{key}"), 1)
            .map_err(|e| e.to_string())?;
        s.set(&format!("late.{key}"), late.as_bytes())
            .map_err(|e| e.to_string())?;
        s.set_json(&format!("early.{key}"), &early)
            .map_err(|e| e.to_string())
    }
}

export_plugin!(Timers);
