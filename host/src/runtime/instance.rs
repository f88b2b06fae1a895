//! A running plugin instance: instantiating a loaded plugin with its store
//! and limits, calling `init` and `handle` under the deadline and the
//! foreground cut, resetting after a failed call, and the reasons a call
//! gives when it traps or is stopped.

use super::*;

/// A live plugin instance: its store and its bindings.
pub struct PluginInstance {
    loaded: Arc<LoadedPlugin>,
    config: InstanceConfig,
    store: Store<HostState>,
    bindings: bindings::Plugin,
    buffer: BatchBuffer,
}

/// Start the clock of a call of `mode` that may use `budget` of CPU time.
fn begin_call(store: &mut Store<HostState>, mode: CallMode, budget: Duration) {
    let ticks = store.data_mut().call.begin(mode, budget);
    store.set_epoch_deadline(ticks);
}

/// Instantiate `loaded` and run `init`. Returns the instance and what the
/// plugin said about itself.
pub fn instantiate(
    loaded: Arc<LoadedPlugin>,
    config: InstanceConfig,
) -> Result<(PluginInstance, Info), CallError> {
    let mut store = loaded.new_store(&config);
    let deadline = Duration::from_millis(config.limits.deadline_ms);
    begin_call(&mut store, CallMode::Background, deadline);
    let bindings = loaded.pre.instantiate(&mut store);
    store.data_mut().call.end();
    let bindings = bindings.map_err(|e| {
        loaded
            .stopped(&store, "init", &config)
            .unwrap_or_else(|| CallError::Instantiate {
                plugin: loaded.name.clone(),
                reason: format!("{e:#}"),
            })
    })?;
    begin_call(&mut store, CallMode::Background, deadline);
    let info = bindings.plugbus_plugin_handler().call_init(&mut store);
    store.data_mut().call.end();
    let info = info
        .map_err(|e| {
            loaded
                .stopped(&store, "init", &config)
                .unwrap_or_else(|| CallError::Trap {
                    plugin: loaded.name.clone(),
                    reason: format!("in init: {}", trap_reason(&e)),
                })
        })?
        .map_err(|reason| CallError::InitFailed {
            plugin: loaded.name.clone(),
            reason,
        })?;
    let (writes, delta) = store.data_mut().take_writes();
    config
        .kv
        .apply(&loaded.name, writes)
        .map_err(|reason| CallError::InitFailed {
            plugin: loaded.name.clone(),
            reason: format!("cannot keep what init wrote to its state: {reason}"),
        })?;
    config.state.committed(delta);
    Ok((
        PluginInstance {
            loaded,
            config,
            store,
            bindings,
            buffer: BatchBuffer::default(),
        },
        info,
    ))
}

impl PluginInstance {
    /// The schemas its version declares.
    pub fn declared(&self) -> &Arc<crate::schema::Declared> {
        &self.config.declared
    }

    /// Time the last call spent paused by throttling
    /// ([`CallMode::Throttled`]).
    pub fn paused(&self) -> Duration {
        self.store.data().call.paused()
    }

    /// The plugin's state quota.
    pub fn state(&self) -> &Arc<kv::StateQuota> {
        &self.config.state
    }

    /// The CPU time the last call used.
    pub fn cpu_used(&self) -> Duration {
        self.store.data().call.cpu_used()
    }

    /// Drop this store and make a fresh instance (after a trap).
    pub fn reset(&mut self) -> Result<Info, CallError> {
        let (fresh, info) = instantiate(self.loaded.clone(), self.config.clone())?;
        *self = fresh;
        Ok(info)
    }

    /// Call `handle` once for the events `chunk[range]` (the batch);
    /// `attempts[i]` is the delivery attempt of the batch's `i`th event.
    /// Copies the batch into one buffer for the guest, runs it in `mode`
    /// for at most `budget` of CPU time, and collects follow-up events. The caller
    /// keeps the batch's [`batch_bytes`] under [`BATCH_BYTES_LIMIT`].
    ///
    /// A foreground call that turns heavy fails with
    /// [`CallError::Preempted`]; the store must then be reset before the
    /// batch runs again in the background.
    pub fn handle(
        &mut self,
        chunk: &Chunk,
        range: Range<usize>,
        attempts: &[u32],
        mode: CallMode,
        budget: Duration,
    ) -> Result<BatchResult, CallError> {
        let batch = chunk.get(range.clone()).unwrap_or_default();
        self.buffer.fill(batch, attempts);
        self.store.data_mut().begin_batch(chunk, range);
        begin_call(&mut self.store, mode, budget);
        let result = self
            .bindings
            .plugbus_plugin_handler()
            .call_handle(&mut self.store, &self.buffer.batch);
        self.store.data_mut().call.end();
        let super::BatchEffects {
            published,
            writes,
            reads,
            state_delta,
            timers,
        } = self.store.data_mut().end_batch();
        let state = self.store.data();
        let mut refused = state.refused();
        let heavy = state.call.heavy();
        let mut outcomes = result.map_err(|e| match state.call.stopped() {
            Some(call::Stop::Cut(why)) => CallError::Preempted {
                plugin: self.loaded.name.clone(),
                why,
            },
            _ => self
                .loaded
                .stopped(&self.store, "handle", &self.config)
                .unwrap_or_else(|| CallError::Trap {
                    plugin: self.loaded.name.clone(),
                    reason: trap_reason(&e),
                }),
        })?;
        if outcomes.len() != batch.len() {
            return Err(CallError::OutcomeCount {
                plugin: self.loaded.name.clone(),
                got: outcomes.len(),
                want: batch.len(),
            });
        }
        for outcome in &mut outcomes {
            match outcome {
                Outcome::Retry(wit::Retry { message, .. }) | Outcome::Reject(message) => {
                    refused += u64::from(cut_message(message));
                }
                Outcome::Ack => {}
            }
        }
        Ok(BatchResult {
            outcomes,
            published,
            writes,
            reads,
            state_delta,
            timers,
            refused,
            heavy,
        })
    }
}

/// Lines of a trap's wasm backtrace kept in its reason.
const TRAP_BACKTRACE_LINES_MAX: usize = 12;

/// A trap's reason: its cause (`wasm trap: interrupt`, `call stack
/// exhausted`, a guest panic's `unreachable`), then the start of the wasm
/// backtrace, so that a runaway recursion does not make a megabyte of text.
fn trap_reason(e: &wasmtime::Error) -> String {
    let root = e.root_cause().to_string();
    let full = format!("{e:#}");
    let mut lines = full.lines();
    let mut kept: Vec<&str> = lines.by_ref().take(TRAP_BACKTRACE_LINES_MAX).collect();
    let more = lines.count();
    if more > 0 {
        kept.push("    …");
    }
    let detail = kept.join("\n");
    if more > 0 {
        format!("{root}; {detail} ({more} more lines)")
    } else if detail.contains(&root) {
        detail
    } else {
        format!("{root}; {detail}")
    }
}

/// Cut `message` to [`OUTCOME_MESSAGE_BYTES_MAX`] (at a character
/// boundary), saying how long it was; true if it was cut.
fn cut_message(message: &mut String) -> bool {
    if message.len() <= OUTCOME_MESSAGE_BYTES_MAX {
        return false;
    }
    let total = message.len();
    let end = plugbus_contract::prefix_at_char(message, OUTCOME_MESSAGE_BYTES_MAX).len();
    message.truncate(end);
    message.push_str(&format!("… (cut: the plugin's message was {total} bytes)"));
    message.shrink_to_fit();
    true
}

impl LoadedPlugin {
    fn new_store(&self, config: &InstanceConfig) -> Store<HostState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(config.limits.memory_bytes_max)
            .instances(16)
            .tables(64)
            .memories(8)
            .build();
        let state = HostState::new(&self.name, config, limits);
        let mut store = Store::new(&self.engine, state);
        if config.limits.enforce {
            store.limiter(|s| &mut s.call);
            store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().call.on_epoch()));
        }
        store
    }

    /// The error for a call stopped by its deadline or the wall-clock
    /// ceiling (`None` if it was not, or was cut for turning heavy).
    fn stopped(
        &self,
        store: &Store<HostState>,
        call: &'static str,
        config: &InstanceConfig,
    ) -> Option<CallError> {
        let wall = match store.data().call.stopped()? {
            call::Stop::Deadline => false,
            call::Stop::WallCeiling => true,
            call::Stop::Cut(_) => return None,
        };
        Some(CallError::Deadline {
            plugin: self.name.clone(),
            call,
            deadline_ms: config.limits.deadline_ms,
            wall,
        })
    }
}
