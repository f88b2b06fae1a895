//! A plugin whose versions tell themselves apart: its tag is the 16 bytes
//! `SWAPTAG:` and eight digits in its data segment, which a test patches
//! in the built file to make as many versions as it likes without
//! rebuilding. For each `swap.*` event it acks, it counts it (`seen`) and
//! appends `<id>@<tag>` to `order.<subject>` in its state: which events it
//! handled, in what order, and which version handled each.

use plugbus_sdk::{export_plugin, Config, Context, Event, Info, Outcome, Plugin, State};

/// Patched in the built file; read through `black_box` so that the
/// compiler cannot fold it into the code.
static TAG: [u8; 16] = *b"SWAPTAG:00000000";

fn tag() -> String {
    let bytes: &[u8; 16] = std::hint::black_box(&TAG);
    String::from_utf8_lossy(bytes).into_owned()
}

struct Swapper {
    state: State,
    tag: String,
}

impl Plugin for Swapper {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Swapper {
            state: State::open().map_err(|e| e.to_string())?,
            tag: tag(),
        })
    }

    fn info(&self) -> Info {
        Info::new("swapper", &self.tag, ["swap.>"])
    }

    fn handle(&mut self, event: &Event<'_>, _ctx: &mut Context) -> Outcome {
        let key = format!("order.{}", event.subject().unwrap_or("-"));
        let result = self.state.increment("seen", 1).and_then(|_| {
            let mut order: Vec<String> = self.state.get_json(&key)?.unwrap_or_default();
            order.push(format!("{}@{}", event.id(), self.tag));
            self.state.set_json(&key, &order)
        });
        match result {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::retry(e.to_string()),
        }
    }
}

export_plugin!(Swapper);
