//! The host side of the plugin's imports: `wasi:logging`, `publisher`,
//! `config` (`wasi:keyvalue` is in `runtime::kv`), and the WASI 0.2 context (which grants nothing: no files,
//! environment, arguments, sockets or name lookups; stdout and stderr go to
//! the host log tagged with the plugin's name).
//!
//! During a `handle` call the state knows the batch being handled, so a
//! publish names its cause by index in the batch and inherits the cause's correlation
//! id and hop count. Publishes are held here until the call returns; the
//! caller decides which are sent (those whose cause was acked).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::StoreLimits;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::plugbus::plugin::{config, publisher, types};
use super::bindings::wasi::logging::logging;
use crate::event::{Chunk, Event};

pub use types::Outgoing;

/// Per-store state: WASI context, limits, config and the batch in flight.
pub struct HostState {
    pub(super) plugin: Arc<str>,
    wasi: WasiCtx,
    pub(super) table: ResourceTable,
    /// The call in progress: its clock and its memory.
    pub(super) call: super::call::CallState,
    config: Vec<(String, String)>,
    hops_max: u32,
    publish_policy: Arc<super::PublishPolicy>,
    /// The schemas this version declares.
    declared: Arc<crate::schema::Declared>,
    /// Log lines (wasi:logging) share the stdout/stderr rate limit.
    output: Arc<super::RateLimit>,
    batch: Option<(Chunk, Range<usize>)>,
    published: Vec<(usize, Event)>,
    /// Where the plugin's committed state is.
    pub(super) kv: super::kv::Backend,
    /// State written in the call in progress, not yet committed.
    pub(super) kv_writes: super::kv::Writes,
    /// On a broker: the committed value of each key as the call first read
    /// it, which must still be there for its writes to commit (another
    /// host may have changed it meanwhile).
    pub(super) kv_reads: std::cell::RefCell<super::kv::Writes>,
    pub(super) kv_write_bytes: usize,
    /// How the call's writes change the state's size, in bytes.
    pub(super) kv_delta: i64,
    /// The plugin's state quota.
    pub(super) state: Arc<super::kv::StateQuota>,
    /// The timer changes of the call in progress (`runtime::timers`).
    pub(super) timers: super::timers::CallTimers,
    /// The plugin's timer limits.
    pub(super) timer_book: super::timers::TimerBook,
    /// Publishes refused by the plugin's policy in the call in progress.
    /// (Output lines over the rate limit are dropped but not counted here:
    /// a plugin that logs each event is chatty, not misbehaving.)
    refused: u64,
}

impl HostState {
    pub(super) fn new(
        plugin: &str,
        instance: &super::InstanceConfig,
        limits: StoreLimits,
    ) -> HostState {
        let plugin: Arc<str> = Arc::from(plugin);
        let mut wasi = wasmtime_wasi::WasiCtxBuilder::new();
        let output = |stream| GuestOutput::new(plugin.clone(), stream, instance.output.clone());
        wasi.stdout(output("stdout"))
            .stderr(output("stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        HostState {
            plugin,
            wasi: wasi.build(),
            table: ResourceTable::new(),
            call: super::call::CallState::new(limits),
            config: instance.config.clone(),
            hops_max: instance.hops_max,
            publish_policy: instance.publish.clone(),
            declared: instance.declared.clone(),
            output: instance.output.clone(),
            batch: None,
            published: Vec::new(),
            kv: instance.kv.clone(),
            kv_writes: Default::default(),
            kv_reads: Default::default(),
            kv_write_bytes: 0,
            kv_delta: 0,
            state: instance.state.clone(),
            timers: Default::default(),
            timer_book: instance.timers,
            refused: 0,
        }
    }

    pub(super) fn begin_batch(&mut self, chunk: &Chunk, range: Range<usize>) {
        self.batch = Some((chunk.clone(), range));
        self.published.clear();
        self.refused = 0;
        self.take_writes();
        self.timers = Default::default();
    }

    /// Publishes refused in the call in progress.
    pub(super) fn refused(&self) -> u64 {
        self.refused
    }

    /// The state written since the last call to this (or the batch's
    /// start), and how it changes the state's size.
    pub(super) fn take_writes(&mut self) -> (super::kv::Writes, i64) {
        self.kv_write_bytes = 0;
        self.kv_reads.get_mut().clear();
        let delta = std::mem::take(&mut self.kv_delta);
        (std::mem::take(&mut self.kv_writes), delta)
    }

    /// How many events the call in progress handles.
    pub(super) fn batch_len(&self) -> usize {
        self.batch().len()
    }

    /// The events of the call in progress.
    fn batch(&self) -> &[Arc<Event>] {
        match &self.batch {
            Some((chunk, range)) => chunk.get(range.clone()).unwrap_or_default(),
            None => &[],
        }
    }

    pub(super) fn end_batch(&mut self) -> super::BatchEffects {
        self.batch = None;
        let reads = std::mem::take(self.kv_reads.get_mut());
        let (writes, state_delta) = self.take_writes();
        let timers = std::mem::take(&mut self.timers);
        super::BatchEffects {
            published: std::mem::take(&mut self.published),
            writes,
            reads,
            state_delta,
            timers: timers.changes,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl logging::Host for HostState {
    fn log(&mut self, level: logging::Level, context: String, message: String) {
        if !self.output.take() {
            return;
        }
        // A line of the host log, however long the plugin made it.
        let context = plugbus_contract::prefix_at_char(&context, LINE_BYTES_MAX / 4);
        let message = plugbus_contract::prefix_at_char(&message, LINE_BYTES_MAX);
        let plugin = &*self.plugin;
        let sep = if context.is_empty() { "" } else { ": " };
        match level {
            logging::Level::Trace => {
                tracing::trace!(target: "plugin", "[{plugin}] {context}{sep}{message}")
            }
            logging::Level::Debug => {
                tracing::debug!(target: "plugin", "[{plugin}] {context}{sep}{message}")
            }
            logging::Level::Info => {
                tracing::info!(target: "plugin", "[{plugin}] {context}{sep}{message}")
            }
            logging::Level::Warn => {
                tracing::warn!(target: "plugin", "[{plugin}] {context}{sep}{message}")
            }
            logging::Level::Error | logging::Level::Critical => {
                tracing::error!(target: "plugin", "[{plugin}] {context}{sep}{message}")
            }
        }
    }
}

impl HostState {
    /// The plugin's config value at `key`.
    pub(super) fn config_value(&self, key: &str) -> Option<String> {
        self.config
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// All of the plugin's config.
    pub(super) fn config_values(&self) -> Vec<(String, String)> {
        self.config.clone()
    }
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.config_value(&key)
    }

    fn get_all(&mut self) -> Vec<(String, String)> {
        self.config_values()
    }
}

impl publisher::Host for HostState {
    fn publish(&mut self, cause: u32, event: Outgoing) -> Result<(), types::PublishError> {
        let index = cause as usize;
        // The same plugin handling the same event publishes the same ids:
        // handled again after a crash, its follow-ups are duplicates that
        // the log's duplicate window and idempotent consumers recognise.
        let ordinal = self.published.iter().filter(|(i, _)| *i == index).count();
        let published = self.published.len();
        let follow = self.follow_up_of(cause, event, published, |plugin, cause_id| {
            follow_up_id(plugin, cause_id, ordinal)
        })?;
        self.published.push((index, follow));
        Ok(())
    }
}

impl HostState {
    /// `event` as a follow-up of the event at index `cause`, with the id
    /// `id(plugin, cause id)` gives: checked as a publish is (the cause, the
    /// topic, the plugin's policy, the call's limits with `published` so
    /// far, the hop limit, the chain's budget), charged to its rate.
    pub(super) fn follow_up(
        &mut self,
        cause: u32,
        event: Outgoing,
        id: impl FnOnce(&str, &str) -> String,
    ) -> Result<Event, types::PublishError> {
        self.follow_up_of(cause, event, 0, id)
    }

    fn follow_up_of(
        &mut self,
        cause: u32,
        event: Outgoing,
        published: usize,
        id: impl FnOnce(&str, &str) -> String,
    ) -> Result<Event, types::PublishError> {
        let index = cause as usize;
        let batch_len = self.batch().len();
        let call = plugbus_contract::publish::Publish {
            cause,
            topic: &event.type_,
            subject: event.subject.as_deref(),
            data_bytes: event.data.len(),
        };
        // A topic it may not publish to is refused as such, however many
        // it published (but only once it is a topic of an event in hand).
        let refused = |why: plugbus_contract::publish::Refused| match why.is_unknown_cause() {
            true => types::PublishError::UnknownCause(why.to_string()),
            false => types::PublishError::Invalid(why.to_string()),
        };
        plugbus_contract::publish::check_cause(cause, batch_len).map_err(refused)?;
        plugbus_contract::topic::validate_topic(&event.type_)
            .map_err(|e| types::PublishError::Invalid(e.to_string()))?;
        if let Err(why) = self.publish_policy.check(&event.type_) {
            self.refused += 1;
            return Err(types::PublishError::Denied(why));
        }
        plugbus_contract::publish::check_limits(&call, batch_len, published).map_err(refused)?;
        self.publish_policy
            .schemas
            .check_publish(
                &event.type_,
                &event.data,
                &self.plugin,
                self.declared.publishes.get(&event.type_).map(|c| &**c),
            )
            .map_err(|v| types::PublishError::Invalid(v.to_string()))?;
        let cause = self.batch()[index].clone();
        if cause.hops + 1 > self.hops_max {
            return Err(types::PublishError::Invalid(format!(
                "this chain has passed through {} handlers, the limit (hops_max) is {}; is there a publish loop?",
                cause.hops + 1,
                self.hops_max
            )));
        }
        let mut follow = Event::with_id(
            id(&self.plugin, &cause.id),
            &event.type_,
            Some(
                event
                    .datacontenttype
                    .unwrap_or_else(|| "application/json".to_string()),
            ),
            event.data,
        )
        .map_err(|e| types::PublishError::Invalid(e.to_string()))?;
        // The chain's budget is used only by a publish that is otherwise
        // accepted.
        if let Err(why) = self.publish_policy.take_chain(cause.chain_id()) {
            self.refused += 1;
            return Err(types::PublishError::Denied(why));
        }
        follow.source = format!("{}{}", crate::event::PLUGIN_SOURCE, self.plugin);
        follow.subject = event.subject;
        follow.correlationid = Some(cause.chain_id().to_string());
        follow.causationid = Some(cause.id.clone());
        follow.cause_sequence = Some(cause.sequence);
        // From when this host accepted the cause; for a cause read back
        // from a store or a broker, from its `time`.
        follow.after_cause = cause.accepted_at.map(|at| at.elapsed()).or_else(|| {
            humantime::parse_rfc3339_weak(&cause.time)
                .ok()
                .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
        });
        follow.hops = cause.hops + 1;
        follow.continue_trace(&cause);
        // The major it was checked against: its topic's, else its own.
        self.publish_policy.schemas.stamp(&mut follow);
        self.declared.stamp(&mut follow);
        // Over the plugin's rate this is a debt, which holds its next
        // delivery (backpressure), not a refusal.
        self.publish_policy.rate.charge();
        Ok(follow)
    }
}

/// Namespace of follow-up event ids (UUID v5).
const FOLLOW_UP_IDS: uuid::Uuid = uuid::Uuid::from_u128(0x5a1c_2f0e_8d4b_4f6a_9e1d_3c7b_2a60_b1e5);

/// The id of the `ordinal`th follow-up `plugin` publishes for the event
/// `cause_id`: derived from them, so the same handling gives the same id.
pub fn follow_up_id(plugin: &str, cause_id: &str, ordinal: usize) -> String {
    let name = format!("{plugin}\0{cause_id}\0{ordinal}");
    uuid::Uuid::new_v5(&FOLLOW_UP_IDS, name.as_bytes()).to_string()
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    super::bindings::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    super::wasi_config::add_to_linker(linker)
}

/// Guest stdout/stderr: each line goes to the host log, tagged with the
/// plugin's name. Lines are cut at `LINE_BYTES_MAX`, and kept only within
/// the plugin's output rate limit: the lines over it are dropped, counted,
/// and the next line kept says how many went.
#[derive(Clone)]
pub(super) struct GuestOutput {
    plugin: Arc<str>,
    stream: &'static str,
    line: Arc<std::sync::Mutex<Vec<u8>>>,
    limit: Arc<super::RateLimit>,
    /// Lines dropped since the last one kept.
    dropped: Arc<AtomicU64>,
}

const LINE_BYTES_MAX: usize = 4096;

impl GuestOutput {
    fn new(plugin: Arc<str>, stream: &'static str, limit: Arc<super::RateLimit>) -> GuestOutput {
        GuestOutput {
            plugin,
            stream,
            line: Arc::default(),
            limit,
            dropped: Arc::default(),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let Ok(mut line) = self.line.lock() else {
            return;
        };
        for &b in bytes {
            if b == b'\n' || line.len() >= LINE_BYTES_MAX {
                self.emit(&line);
                line.clear();
                if b == b'\n' {
                    continue;
                }
            }
            line.push(b);
        }
    }

    fn emit(&self, line: &[u8]) {
        if !self.limit.take() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(target: "plugin", "[{}] {}: {dropped} lines dropped (over limits.output_lines_per_s_max = {})", self.plugin, self.stream, self.limit.per_s().unwrap_or(0));
        }
        tracing::info!(target: "plugin", "[{}] {}: {}", self.plugin, self.stream, String::from_utf8_lossy(line));
    }
}

impl wasmtime_wasi::cli::IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl wasmtime_wasi::p2::Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl wasmtime_wasi::p2::OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), wasmtime_wasi::p2::StreamError> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), wasmtime_wasi::p2::StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, wasmtime_wasi::p2::StreamError> {
        Ok(LINE_BYTES_MAX)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::follow_up_id;

    #[test]
    fn follow_up_ids_depend_on_plugin_cause_and_ordinal_only() {
        let a = follow_up_id("inventory", "order-1", 0);
        assert_eq!(a, follow_up_id("inventory", "order-1", 0));
        assert_ne!(a, follow_up_id("inventory", "order-1", 1));
        assert_ne!(a, follow_up_id("inventory", "order-2", 0));
        assert_ne!(a, follow_up_id("email", "order-1", 0));
        assert_eq!(a.len(), 36, "a UUID: {a}");
    }
}
