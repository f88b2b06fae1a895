//! A driver for the fuzz target `imports` (`fuzz/fuzz_targets/imports.rs`):
//! the host's imports called with arbitrary arguments, as a guest's calls
//! arrive once lifted (state get, set, delete, exists, increment, list,
//! batch and compare-and-swap; publish; config; log), against the embedded
//! store, so that no argument a plugin controls reaches the store, the log
//! or the engine unchecked. Every call must return (an error is fine);
//! none may panic. The writes of each run are committed through the
//! store as a batch's would be.

use std::sync::{Arc, OnceLock};

use wasmtime::StoreLimitsBuilder;

use super::bindings::plugbus::plugin::{config, publisher, types};
use super::bindings::wasi::keyvalue::{atomics, batch, store};
use super::bindings::wasi::logging::logging;
use super::{kv, HostState, InstanceConfig};
use crate::event::Event;

/// The store the runs share, in a directory of its own for the process.
fn shared_store() -> Option<Arc<dyn crate::backend::Backend>> {
    static STORE: OnceLock<Option<Arc<dyn crate::backend::Backend>>> = OnceLock::new();
    STORE
        .get_or_init(|| {
            let dir =
                std::env::temp_dir().join(format!("plugbus-fuzz-imports-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let fsync = crate::store::Fsync::Interval(std::time::Duration::from_secs(3600));
            let store = crate::store::Store::open(&dir, fsync).ok()?;
            let log = crate::store::log::Log::start(store, fsync, Default::default()).ok()?;
            let window = log.dedup_window();
            let backend = crate::backend::embedded::EmbeddedBackend::new(log, window);
            Some(Arc::new(backend) as Arc<dyn crate::backend::Backend>)
        })
        .clone()
}

/// Reads the arguments of the calls from the fuzzer's bytes.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    /// A length from a table of the interesting ones (the limits, the
    /// engine's, around them), or a small one.
    fn len(&mut self) -> usize {
        const SIZES: [usize; 12] = [
            0,
            1,
            2,
            255,
            1023,
            1024,
            1025,
            4096,
            65_535,
            65_536,
            1 << 20,
            (1 << 20) + 1,
        ];
        let b = self.byte();
        if b & 0x80 != 0 {
            SIZES[usize::from(b & 0x7f) % SIZES.len()]
        } else {
            usize::from(b)
        }
    }

    /// A string: bytes of the input, or one character repeated to a length.
    fn string(&mut self) -> String {
        let n = self.len();
        if self.byte() & 1 == 0 {
            let take = n.min(self.0.len());
            let (s, rest) = self.0.split_at(take);
            self.0 = rest;
            String::from_utf8_lossy(s).into_owned()
        } else {
            let c = char::from(b'a' + self.byte() % 26);
            std::iter::repeat_n(c, n).collect()
        }
    }

    fn bytes(&mut self) -> Vec<u8> {
        self.string().into_bytes()
    }

    fn i64(&mut self) -> i64 {
        let mut w = [0u8; 8];
        for b in &mut w {
            *b = self.byte();
        }
        i64::from_le_bytes(w)
    }
}

/// Drive the imports with the calls `data` describes.
pub fn run(data: &[u8]) {
    let Some(store) = shared_store() else {
        return;
    };
    let config = InstanceConfig {
        config: vec![("mode".into(), "fuzz".into())],
        kv: kv::Backend::on(store),
        ..InstanceConfig::default()
    };
    let limits = StoreLimitsBuilder::new().build();
    let mut host = HostState::new("fuzzed", &config, limits);
    let events: Vec<Arc<Event>> = (0..2)
        .filter_map(|i| {
            let mut e = Event::new("order.placed", None, b"{}".to_vec()).ok()?;
            e.sequence = i + 1;
            Some(Arc::new(e))
        })
        .collect();
    let chunk: crate::event::Chunk = Arc::from(events);
    host.begin_batch(&chunk, 0..chunk.len());
    let Ok(bucket) = store::Host::open(&mut host, kv::BUCKET.into()) else {
        return;
    };
    let mut input = Input(data);
    for _ in 0..64 {
        if input.0.is_empty() {
            break;
        }
        call(&mut host, &bucket, &mut input);
    }
    let effects = host.end_batch();
    let _ = config.kv.apply("fuzzed", effects.writes);
}

/// One call, chosen and filled from `input`.
fn call(
    host: &mut HostState,
    bucket: &wasmtime::component::Resource<kv::KvBucket>,
    input: &mut Input<'_>,
) {
    let b = || wasmtime::component::Resource::<kv::KvBucket>::new_borrow(bucket.rep());
    match input.byte() % 14 {
        0 => {
            let _ = store::HostBucket::get(host, b(), input.string());
        }
        1 => {
            let _ = store::HostBucket::set(host, b(), input.string(), input.bytes());
        }
        2 => {
            let _ = store::HostBucket::delete(host, b(), input.string());
        }
        3 => {
            let _ = store::HostBucket::exists(host, b(), input.string());
        }
        4 => {
            let _ = atomics::Host::increment(host, b(), input.string(), input.i64());
        }
        5 => {
            let cursor = (input.byte() & 1 == 1).then(|| input.string());
            let _ = store::HostBucket::list_keys(host, b(), cursor);
        }
        6 => {
            let keys = (0..input.byte() % 8).map(|_| input.string()).collect();
            let _ = batch::Host::get_many(host, b(), keys);
        }
        7 => {
            let pairs = (0..input.byte() % 8)
                .map(|_| (input.string(), input.bytes()))
                .collect();
            let _ = batch::Host::set_many(host, b(), pairs);
        }
        8 => {
            let keys = (0..input.byte() % 8).map(|_| input.string()).collect();
            let _ = batch::Host::delete_many(host, b(), keys);
        }
        9 => {
            if let Ok(cas) = atomics::HostCas::new(host, b(), input.string()) {
                let _ = atomics::Host::swap(host, cas, input.bytes());
            }
        }
        10 => {
            let event = types::Outgoing {
                type_: input.string(),
                subject: (input.byte() & 1 == 1).then(|| input.string()),
                datacontenttype: (input.byte() & 1 == 1).then(|| input.string()),
                data: input.bytes(),
            };
            let cause = u32::from(input.byte());
            let _ = publisher::Host::publish(host, cause, event);
        }
        11 => {
            let _ = config::Host::get(host, input.string());
        }
        12 => {
            let level = match input.byte() % 6 {
                0 => logging::Level::Trace,
                1 => logging::Level::Debug,
                2 => logging::Level::Info,
                3 => logging::Level::Warn,
                4 => logging::Level::Error,
                _ => logging::Level::Critical,
            };
            logging::Host::log(host, level, input.string(), input.string());
        }
        _ => {
            let _ = config::Host::get_all(host);
        }
    }
}

#[cfg(test)]
mod tests {
    /// The driver runs the calls the fuzz target's seeds describe, and
    /// over-long keys come back as errors.
    #[test]
    fn the_imports_driver_runs_hostile_arguments_without_a_panic() {
        // A 1 MiB key (table entry 10, repeated), set then read.
        let huge_set = [1u8, 0x80 | 10, 1, 0, 0x80 | 2, 1, 1];
        super::run(&huge_set);
        let huge_get = [0u8, 0x80 | 9, 1, 3];
        super::run(&huge_get);
        // A long list cursor, a publish with a long topic, a long log line.
        super::run(&[5, 1, 0x80 | 9, 1, 4, 10, 0x80 | 10, 1, 2, 0, 0, 0, 0]);
        super::run(&[12, 2, 0x80 | 10, 1, 5, 0x80 | 10, 1, 6]);
        // Every call once with short arguments.
        let all: Vec<u8> = (0..14u8)
            .flat_map(|op| [op, 3, 0, b'k', b'e', b'y'])
            .collect();
        super::run(&all);
    }
}
