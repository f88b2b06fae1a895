//! The WebAssembly runtime: one wasmtime [`Engine`] for the process, and
//! everything between a `.wasm` file and a running plugin instance.
//!
//! It owns: telling core modules from components and turning a core module
//! built for wasm32-wasip1 into a component (with the WASI preview1 reactor
//! adapter); the on-disk compile cache, keyed by the file's content hash and
//! the engine's compatibility hash; checking which contract version a plugin
//! was built against; the linker with the host imports (`runtime::host_api`);
//! compiling in two tiers (below); and the limits every call runs under (an
//! epoch deadline per batch, a memory cap per store, a stack cap per engine,
//! and the cut of a foreground call that turns heavy: `runtime::call`). A
//! call that traps, runs
//! past its deadline or exhausts its memory fails its whole batch; the store
//! is then dropped and a fresh instance made from the [`InstancePre`]
//! (`PluginInstance::reset`).
//!
//! It knows nothing of the bus, queues or HTTP: a caller hands it a batch of
//! events and gets back outcomes and the follow-up events the plugin asked
//! to publish.
//!
//! Two tiers: with [`Runtime::tiered`], a plugin missing from the compile
//! cache is compiled at once by Winch, wasmtime's single-pass baseline
//! compiler (about four times faster to compile than Cranelift, slower
//! code), so a cold start is quick; [`Runtime::compile_in_child`] then
//! compiles it with Cranelift into the cache, and the registry swaps the
//! optimized build in. Both compiles run in a child process (`plugbus
//! compile`) that writes the cache: the compilers' memory stays out of the
//! host's resident set, and a compiler fault or a compile-time bomb out of
//! the host. Should the child fail, the host compiles in its own process,
//! which also gives the failure its precise error.
//!
//! Rooms: `load` (file to component, engines, the compile cache),
//! `instance` (instantiating and calling a plugin), `batch` (a batch's
//! crossing into the sandbox), `call` (the deadline and the foreground
//! cut), `host_api` (the imports), `kv` (state), `policy` (what a plugin
//! may publish), `chains` (causal-chain budgets), `cache` (cache files).
//!
//! [`InstancePre`]: wasmtime::component::InstancePre

mod batch;
pub mod cache;
pub mod call;
pub mod chains;
mod host_api;
mod instance;
pub mod kv;
mod load;
pub use load::content_hash;
pub mod imports_fuzz;
pub mod policy;
mod timers;
pub mod wasi_config;

use batch::BatchBuffer;
pub use batch::{batch_bytes, BATCH_BYTES_LIMIT, HEADER_WORDS};
pub use instance::{instantiate, PluginInstance};
use load::engine_with_stack;

use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{types::ComponentItem, Component, Linker};
use wasmtime::{Config, Engine, Store, StoreLimitsBuilder};

use crate::event::{Chunk, Event};
pub use call::{CallMode, THROTTLE_PAUSE_TICKS};
pub use host_api::{HostState, Outgoing};
pub use policy::{PublishPolicy, RateLimit, Storm};
pub use timers::TimerBook;

/// The generated host-side bindings of the `plugin` world.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
        with: {
            "wasi:keyvalue/store.bucket": super::kv::KvBucket,
            "wasi:keyvalue/atomics.cas": super::kv::KvCas,
        },
    });
}

use bindings::plugbus::plugin::types as wit;
pub use bindings::plugbus::plugin::types::{Info, Outcome};

/// A handler's outcome for one event, in words (`ack`, `retry: why`,
/// `reject: why`; none returned counts as a retry).
pub fn outcome_words(outcome: Option<&Outcome>) -> String {
    match outcome {
        Some(Outcome::Ack) => "ack".to_string(),
        Some(Outcome::Retry(r)) => format!("retry: {}", r.message),
        Some(Outcome::Reject(why)) => format!("reject: {why}"),
        None => "retry: no outcome returned".to_string(),
    }
}

/// The contract package this host implements.
pub const CONTRACT_PACKAGE: &str = "plugbus:plugin";
/// The contract version this host implements. It accepts plugins built
/// against any version semver-compatible with it (for 0.x: the same minor).
pub const CONTRACT_VERSION: &str = "0.1.1";

/// How often the epoch advances, in milliseconds: the granularity of
/// deadlines.
pub const EPOCH_TICK_MS: u64 = 10;

/// Bounds every plugin call runs under.
#[derive(Debug, Clone)]
pub struct Limits {
    /// CPU time one `handle` (or `init`) call may use, in ms (time spent
    /// waiting for a CPU does not count; [`call::WALL_CEILING_FACTOR`] times
    /// it on the wall clock stops a call for liveness). Default 1000.
    pub deadline_ms: u64,
    /// Linear memory a plugin instance may grow to, in bytes. Default 64 MiB.
    pub memory_bytes_max: usize,
    /// WebAssembly stack a call may use, in bytes. Default 512 KiB.
    pub stack_bytes_max: usize,
    /// Enforce the deadline and the memory cap. Always true in the binary;
    /// false only to measure what they cost (the benchmark).
    pub enforce: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 1000,
            memory_bytes_max: 64 << 20,
            stack_bytes_max: 512 << 10,
            enforce: true,
        }
    }
}

/// Why a plugin file could not be loaded. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading the file failed.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The plugin file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not WebAssembly at all.
    #[error("{file}: not a WebAssembly file (it does not start with `\\0asm`); plugins are `.wasm` files built with `cargo build --target wasm32-wasip1 --release`")]
    NotWasm {
        /// The plugin file.
        file: PathBuf,
    },
    /// The core module could not be made into a component.
    #[error("{file}: cannot be turned into a component: {reason}; build it as a `cdylib` with plugbus-sdk for wasm32-wasip1")]
    Componentize {
        /// The plugin file.
        file: PathBuf,
        /// wit-component's explanation.
        reason: String,
    },
    /// wasmtime refused to compile it.
    #[error("{file}: does not compile: {reason}")]
    Compile {
        /// The plugin file.
        file: PathBuf,
        /// wasmtime's explanation.
        reason: String,
    },
    /// It was built against a contract version this host does not accept.
    #[error("{file}: built against {CONTRACT_PACKAGE}@{found}, but this host implements {CONTRACT_PACKAGE}@{CONTRACT_VERSION} and accepts only versions compatible with it; rebuild the plugin with a plugbus-sdk for {CONTRACT_VERSION}, or run a plugbus that implements {found}")]
    ContractVersion {
        /// The plugin file.
        file: PathBuf,
        /// The version it was built against.
        found: String,
    },
    /// It does not export the handler at all.
    #[error("{file}: does not export `{CONTRACT_PACKAGE}/handler`; a plugin must export it (with plugbus-sdk: `export_plugin!(YourType)`)")]
    NoHandler {
        /// The plugin file.
        file: PathBuf,
    },
    /// Its imports cannot be satisfied (it asks for something not granted).
    #[error("{file}: cannot be linked: {reason}; a plugin may import only the plugbus:plugin interfaces, wasi:logging and WASI 0.2")]
    Link {
        /// The plugin file.
        file: PathBuf,
        /// wasmtime's explanation.
        reason: String,
    },
}

/// Why instantiating or calling a plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Instantiation failed.
    #[error("plugin `{plugin}`: instantiation failed: {reason}")]
    Instantiate {
        /// The plugin name.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// `init` returned an error.
    #[error("plugin `{plugin}`: init refused to start: {reason}")]
    InitFailed {
        /// The plugin name.
        plugin: String,
        /// The plugin's own message.
        reason: String,
    },
    /// A foreground call turned heavy and was cut, to be run again in
    /// the background ([`call`]): nothing it did was kept.
    #[error("plugin `{plugin}`: the call was cut in the foreground: it {why}")]
    Preempted {
        /// The plugin name.
        plugin: String,
        /// What made it heavy.
        why: &'static str,
    },
    /// The call used its deadline of CPU time, or ran
    /// [`call::WALL_CEILING_FACTOR`] times it on the wall clock, and was
    /// stopped.
    #[error("plugin `{plugin}`: {}", deadline_message(call, *deadline_ms, *wall))]
    Deadline {
        /// The plugin name.
        plugin: String,
        /// Which export: `init` or `handle`.
        call: &'static str,
        /// Its deadline, in ms of CPU time.
        deadline_ms: u64,
        /// Stopped by the wall-clock ceiling, not the CPU deadline.
        wall: bool,
    },
    /// The call trapped: a panic, a bug, or the memory cap.
    #[error("plugin `{plugin}` trapped: {reason}")]
    Trap {
        /// The plugin name.
        plugin: String,
        /// The trap, with a backtrace when there is one.
        reason: String,
    },
    /// The plugin returned a number of outcomes other than one per event.
    #[error("plugin `{plugin}` returned {got} outcomes for a batch of {want} events; a plugin must return exactly one outcome per event")]
    OutcomeCount {
        /// The plugin name.
        plugin: String,
        /// Outcomes returned.
        got: usize,
        /// Events sent.
        want: usize,
    },
}

/// What a [`CallError::Deadline`] says: which limit, and the fix.
fn deadline_message(call: &str, deadline_ms: u64, wall: bool) -> String {
    let what = if wall {
        format!(
            "`{call}` did not return within {} s on the wall clock ({} times its deadline of {deadline_ms} ms of CPU time) and was stopped",
            deadline_ms.saturating_mul(u64::from(call::WALL_CEILING_FACTOR)) / 1000,
            call::WALL_CEILING_FACTOR
        )
    } else {
        format!("`{call}` ran past its deadline of {deadline_ms} ms of CPU time and was stopped")
    };
    let fix = if call == "init" {
        "init must return promptly: move long work out of init (into handle, or into state built up over events)"
    } else {
        "make a batch do less (a smaller `batch_events_max`)"
    };
    format!("{what}; {fix}, or raise `limits.deadline_ms` in the plugin's manifest (or `--deadline-ms`)")
}

/// An engine and the linker made for it.
type EngineAndLinker = (Engine, Arc<Linker<HostState>>);

/// Which compiler made a plugin's machine code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Winch, the baseline compiler: compiled fast, runs slower; the build
    /// a cold start serves with until the optimized one is ready.
    Baseline,
    /// Cranelift, the optimizing compiler.
    Optimized,
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tier::Baseline => "baseline",
            Tier::Optimized => "optimized",
        })
    }
}

impl std::str::FromStr for Tier {
    type Err = String;

    /// The names [`Tier`]'s `Display` writes.
    fn from_str(s: &str) -> Result<Tier, String> {
        match s {
            "baseline" => Ok(Tier::Baseline),
            "optimized" => Ok(Tier::Optimized),
            _ => Err(format!("`{s}` is not a tier; use optimized or baseline")),
        }
    }
}

/// The wasm stack caps a plugin may have (a manifest's
/// `limits.stack_bytes_max`, `plugbus compile --stack-bytes-max`): wasmtime
/// refuses a wasm stack above its 2 MiB async stack, and wasm frames share
/// the calling thread's native stack.
pub const STACK_BYTES_RANGE: std::ops::RangeInclusive<usize> = 16 << 10..=1 << 20;

/// How long the optimizing compile of one plugin may take in its child
/// process before it is stopped (the plugin keeps its baseline build).
pub const OPTIMIZE_TIMEOUT: Duration = Duration::from_secs(120);

/// The engine, the linker and the compile cache, shared by every plugin.
///
/// The stack cap is a setting of a wasmtime engine, not of a store, so a
/// plugin whose manifest asks for another stack cap gets an engine of its
/// own (made once per distinct cap, sharing the epoch ticker and the
/// compile cache).
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    /// Engines for other stack caps or the baseline tier, by both.
    others: Mutex<Vec<((usize, Tier), EngineAndLinker)>>,
    /// Every engine the epoch ticker advances.
    ticked: Arc<Mutex<Vec<wasmtime::EngineWeak>>>,
    cache_dir: Option<PathBuf>,
    limits: Limits,
    ticker_stop: Arc<AtomicBool>,
    /// The program that compiles optimized builds into the cache (the
    /// plugbus binary), when compiling in tiers.
    optimizer: Option<PathBuf>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// A plugin file compiled and linked, ready to instantiate any number of
/// times.
pub struct LoadedPlugin {
    name: String,
    content_hash: String,
    pre: bindings::PluginPre<HostState>,
    engine: Engine,
    tier: Tier,
    /// Its `plugbus:contracts` section, if it has one.
    contracts: Option<Vec<u8>>,
}

/// What the instance needs from outside: its config, its bounds and where
/// its state goes.
#[derive(Clone, Default)]
pub struct InstanceConfig {
    /// Config values passed to the plugin.
    pub config: Vec<(String, String)>,
    /// Hops after which a chain of follow-up events is cut. Default 32.
    pub hops_max: u32,
    /// Where the plugin's key-value state is committed.
    pub kv: kv::Backend,
    /// The deadline and memory cap of each call (the stack cap is the
    /// engine's: [`Runtime::load_file_with_stack`]).
    pub limits: Limits,
    /// Which topics it may publish to, and how fast. Shared by the
    /// plugin's instances, so a re-instantiation does not refill it.
    pub publish: Arc<PublishPolicy>,
    /// Lines of stdout/stderr it may write per second, shared likewise.
    pub output: Arc<RateLimit>,
    /// Its state quota and what it keeps, shared likewise.
    pub state: Arc<kv::StateQuota>,
    /// Its timer limits.
    pub timers: TimerBook,
    /// The schemas it declares (what it publishes is checked against
    /// them).
    pub declared: Arc<crate::schema::Declared>,
}

/// The native stack a thread needs to call into wasm with a stack cap of
/// `wasm_stack` bytes: wasm frames live on the calling thread's stack,
/// beside the host's own frames (wasmtime, WASI, host calls).
pub fn native_stack_for(wasm_stack: usize) -> usize {
    wasm_stack.saturating_add(2 << 20)
}

/// Run `f` on a thread whose native stack fits wasm calls with a stack cap
/// of `wasm_stack` bytes (when the cap is above the default, which every
/// thread fits); inline if no thread can be had.
pub fn with_native_stack<T: Send>(wasm_stack: usize, f: impl FnOnce() -> T + Send) -> T {
    if wasm_stack <= Limits::default().stack_bytes_max {
        return f();
    }
    on_own_thread("plugin-init".into(), wasm_stack, f)
}

/// Run `f` on a thread of its own named `name`, with native stack room for
/// wasm calls with a stack cap of `wasm_stack` bytes; on the calling
/// thread, as it is, if no thread can be had. The caller waits for it.
fn on_own_thread<T: Send>(name: String, wasm_stack: usize, f: impl FnOnce() -> T + Send) -> T {
    let mut f = Some(f);
    let ran = thread::scope(|scope| {
        let pending = &mut f;
        let call = thread::Builder::new()
            .name(name)
            .stack_size(native_stack_for(wasm_stack))
            .spawn_scoped(scope, move || {
                let f = pending.take()?;
                Some(f())
            });
        call.ok().map(|c| {
            c.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    });
    match (ran.flatten(), f) {
        (Some(out), _) => out,
        (None, Some(f)) => f(),
        (None, None) => unreachable!("the thread ran f or did not start"),
    }
}

/// Lines of guest stdout/stderr kept per second by default.
pub const OUTPUT_LINES_PER_S_DEFAULT: u32 = 100;

/// The longest message of a `retry` or `reject` outcome that is kept (in
/// logs and dead letters); longer ones are cut, saying so.
pub const OUTCOME_MESSAGE_BYTES_MAX: usize = 4096;

/// What a call left in the host state: its publishes, writes and reads.
pub(crate) struct BatchEffects {
    published: Vec<(usize, crate::event::Event)>,
    writes: kv::Writes,
    reads: kv::Writes,
    state_delta: i64,
    timers: Vec<crate::timer::TimerChange>,
}

/// The result of one `handle` call.
pub struct BatchResult {
    /// One outcome per event, in order.
    pub outcomes: Vec<Outcome>,
    /// Follow-up events, each with the index (in the batch) of its cause.
    pub published: Vec<(usize, Event)>,
    /// Key-value writes made by the call, not yet committed.
    pub writes: kv::Writes,
    /// On a broker: the committed values the call read, which must be
    /// unchanged for `writes` to commit.
    pub reads: kv::Writes,
    /// How the writes change the state's size, in bytes
    /// ([`kv::StateQuota::committed`] once they are).
    pub state_delta: i64,
    /// Timer changes made by the call, in order: kept as the writes are
    /// (their bytes count in the state quota; the store keeps the count).
    pub timers: Vec<crate::timer::TimerChange>,
    /// What the plugin was refused or cut in the call: publishes refused
    /// by its policy, outcome messages cut. (Output lines over the rate
    /// limit are dropped and counted apart: logging is not an offence.)
    pub refused: u64,
    /// Whether the call was heavy ([`call::CallState::heavy`]).
    pub heavy: bool,
}

impl Runtime {
    /// Build the engine with epoch interruption and the stack cap, and link
    /// the host imports. `cache_dir` holds compiled artifacts (none: compile
    /// every time).
    pub fn new(limits: Limits, cache_dir: Option<PathBuf>) -> Result<Runtime, String> {
        let (engine, linker) =
            engine_with_stack(limits.stack_bytes_max, limits.enforce, Tier::Optimized)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticked = Arc::new(Mutex::new(vec![engine.weak()]));
        let (stop, ticking) = (ticker_stop.clone(), ticked.clone());
        thread::Builder::new()
            .name("plugbus-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
                    let engines = ticking.lock().unwrap_or_else(|p| p.into_inner());
                    let mut alive = 0;
                    for engine in engines.iter().filter_map(|w| w.upgrade()) {
                        engine.increment_epoch();
                        alive += 1;
                    }
                    if alive == 0 {
                        break;
                    }
                }
            })
            .map_err(|e| format!("cannot start the epoch thread: {e}"))?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            others: Mutex::default(),
            ticked,
            cache_dir,
            limits,
            ticker_stop,
            optimizer: None,
        })
    }

    /// Compile in two tiers: a plugin missing from the compile cache is
    /// compiled by the baseline compiler, and [`Runtime::compile_optimized`]
    /// runs `optimizer` (the plugbus binary: `plugbus compile`) to put the
    /// optimized build in the cache. Needs a cache directory; without one
    /// plugins are compiled optimized at once.
    pub fn tiered(mut self, optimizer: PathBuf) -> Runtime {
        if self.cache_dir.is_some() {
            self.optimizer = Some(optimizer);
        }
        self
    }

    /// The host's limits (the defaults of every plugin).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether plugins missing from the cache start on a baseline build, to
    /// be followed by [`Runtime::compile_in_child`] for the optimized one.
    pub fn is_tiered(&self) -> bool {
        self.optimizer.is_some()
    }

    /// The engine (for tests and benchmarks).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl LoadedPlugin {
    /// Its `plugbus:contracts` section (the schemas it declares), if any.
    pub fn contracts(&self) -> Option<&[u8]> {
        self.contracts.as_deref()
    }

    /// The plugin's name (its file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The SHA-256 of the plugin file, hex.
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }

    /// Which compiler made it.
    pub fn tier(&self) -> Tier {
        self.tier
    }
}

#[cfg(test)]
mod tests {
    use super::load::componentize;
    use super::*;

    #[test]
    fn batch_buffer_headers_point_at_each_attribute() {
        let mut e = Event::new(
            "order.placed",
            Some("application/json".into()),
            b"{}".to_vec(),
        )
        .expect("event");
        e.subject = Some("o-1".into());
        e.sequence = (7 << 32) | 9;
        e.extensions = vec![("tenant".into(), "acme".into())];
        let e = Arc::new(e);
        let mut buf = BatchBuffer::default();
        buf.fill(&[e.clone(), e.clone()], &[1, 3]);
        let b = &buf.batch;
        assert_eq!(b.headers.len(), 2 * HEADER_WORDS);
        assert_eq!(b.bytes.len(), 2 * batch_bytes(&e));
        let h = &b.headers[HEADER_WORDS..];
        let text = |i: usize| &b.bytes[h[i] as usize..(h[i] + h[i + 1]) as usize];
        assert_eq!(text(0), e.id.as_bytes());
        assert_eq!(text(4), b"order.placed");
        assert_eq!(text(6), b"o-1");
        assert_eq!(text(12), b"{}");
        assert_eq!(h[15], 0, "absent correlation id has length 0");
        assert_eq!((h[18], h[19]), (9, 7), "sequence low, high");
        assert_eq!(h[20], 3, "attempt");
        assert_eq!((h[21], h[22]), (1, 1), "second extension, one of them");
        let x = &b.extensions[4..8];
        let at = |o: u32, l: u32| &b.bytes[o as usize..(o + l) as usize];
        assert_eq!(
            (at(x[0], x[1]), at(x[2], x[3])),
            (&b"tenant"[..], &b"acme"[..])
        );
        // Refilling reuses the buffers.
        buf.fill(std::slice::from_ref(&e), &[1]);
        assert_eq!(buf.batch.headers.len(), HEADER_WORDS);
    }

    fn noop_batch(n: usize) -> (Chunk, Vec<u32>) {
        let chunk: Chunk = (0..n)
            .map(|_| Arc::new(Event::new("order.placed", None, b"{}".to_vec()).expect("event")))
            .collect();
        (chunk, vec![1; n])
    }

    #[test]
    fn a_ready_component_loads_like_a_core_module() {
        let rt = Runtime::new(Limits::default(), None).expect("runtime");
        let core = std::fs::read(plugbus_e2e::artifacts::NOOP).expect("noop built");
        let component = componentize(Path::new("noop.wasm"), &core).expect("componentizes");
        assert!(wasmparser::Parser::is_component(&component));
        let loaded = rt
            .load_bytes(Path::new("noop.wasm"), "noop", &component)
            .expect("a component loads as is");
        let (mut instance, info) =
            instantiate(Arc::new(loaded), InstanceConfig::default()).expect("instantiates");
        assert_eq!(info.subscriptions, ["order.placed"]);
        let (chunk, attempts) = noop_batch(3);
        let result = instance
            .handle(
                &chunk,
                0..3,
                &attempts,
                CallMode::Foreground,
                Duration::from_secs(1),
            )
            .expect("handles");
        assert_eq!(result.outcomes.len(), 3);
        assert!(result.outcomes.iter().all(|o| matches!(o, Outcome::Ack)));
    }

    /// The hostile test plugin in `mode`, instantiated with `memory` bytes,
    /// and the runtime whose epoch ticker keeps its deadlines.
    fn hostile(mode: &str, memory: usize) -> (Runtime, PluginInstance) {
        let rt = Runtime::new(Limits::default(), None).expect("runtime");
        let loaded = rt
            .load_file(Path::new(plugbus_e2e::artifacts::HOSTILE))
            .expect("hostile loads");
        let config = InstanceConfig {
            config: vec![("mode".into(), mode.into())],
            limits: Limits {
                memory_bytes_max: memory,
                ..Limits::default()
            },
            ..InstanceConfig::default()
        };
        let instance = instantiate(Arc::new(loaded), config)
            .expect("instantiates")
            .0;
        (rt, instance)
    }

    #[test]
    fn a_foreground_call_past_its_grace_is_cut_and_runs_on_in_the_background() {
        let (_rt, mut looping) = hostile("loop", 64 << 20);
        let (chunk, attempts) = noop_batch(2);
        let deadline = Duration::from_secs(1);
        let cut = looping
            .handle(&chunk, 0..2, &attempts, CallMode::Foreground, deadline)
            .err()
            .expect("an endless call is cut");
        assert!(
            matches!(&cut, CallError::Preempted { why, .. } if why.contains("100 ms")),
            "{cut}"
        );
        looping.reset().expect("re-instantiates");
        // In the background it is not cut, and stops at its deadline.
        let err = looping
            .handle(&chunk, 0..2, &attempts, CallMode::Background, deadline / 4)
            .err()
            .expect("an endless call stops at its deadline");
        assert!(
            matches!(
                &err,
                CallError::Deadline {
                    call: "handle",
                    deadline_ms: 1000,
                    wall: false,
                    ..
                }
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("deadline of 1000 ms of CPU time") && text.contains("limits.deadline_ms"),
            "{text}"
        );
        // It was stopped for the CPU time it used, not for the time it took.
        assert!(
            looping.cpu_used() >= deadline / 4,
            "{:?}",
            looping.cpu_used()
        );
        // Throttled, it is paused most of the time it takes, and the pauses
        // count against its deadline.
        looping.reset().expect("re-instantiates");
        let err = looping
            .handle(&chunk, 0..2, &attempts, CallMode::Throttled, deadline / 4)
            .err()
            .expect("stops at its deadline");
        assert!(matches!(err, CallError::Deadline { .. }), "{err}");
        assert!(looping.paused() > looping.cpu_used(), "paused");
        assert!(looping.paused() + looping.cpu_used() >= deadline / 4);
    }

    #[test]
    fn an_init_that_spins_forever_is_stopped_at_its_deadline_and_says_so() {
        let rt = Runtime::new(Limits::default(), None).expect("runtime");
        let loaded = rt
            .load_file(Path::new(plugbus_e2e::artifacts::HOSTILE))
            .expect("hostile loads");
        let config = InstanceConfig {
            config: vec![("mode".into(), "init-loop".into())],
            limits: Limits {
                deadline_ms: 200,
                ..Limits::default()
            },
            ..InstanceConfig::default()
        };
        let err = instantiate(Arc::new(loaded), config)
            .err()
            .expect("init never returns");
        let text = err.to_string();
        assert!(
            matches!(
                err,
                CallError::Deadline {
                    call: "init",
                    deadline_ms: 200,
                    wall: false,
                    ..
                }
            ),
            "{text}"
        );
        assert!(
            text.contains("init must return promptly") && !text.contains("wasm trap"),
            "{text}"
        );
    }

    #[test]
    fn a_foreground_call_growing_its_memory_by_16_mib_is_cut() {
        let (_rt, mut big) = hostile("big", 256 << 20);
        let (chunk, attempts) = noop_batch(2);
        let deadline = Duration::from_secs(5);
        let cut = big
            .handle(&chunk, 0..2, &attempts, CallMode::Foreground, deadline)
            .err()
            .expect("cut");
        assert!(
            matches!(&cut, CallError::Preempted { why, .. } if why.contains("memory")),
            "{cut}"
        );
        big.reset().expect("re-instantiates");
        let done = big
            .handle(&chunk, 0..2, &attempts, CallMode::Background, deadline)
            .expect("runs to the end in the background");
        assert!(done.heavy, "a heavy call");
        assert_eq!(done.refused, 1, "its 100 MB message is cut");
        // An ordinary call is neither cut nor heavy.
        let (_rt2, mut light) = hostile("work", 64 << 20);
        let done = light
            .handle(&chunk, 0..2, &attempts, CallMode::Foreground, deadline)
            .expect("handles");
        assert!(!done.heavy);
    }
}
