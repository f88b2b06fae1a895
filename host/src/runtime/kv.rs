//! The plugin's state as the sandbox sees it: `wasi:keyvalue` (store,
//! atomics, batch at 0.2.0-draft2) on one bucket per plugin, `default`.
//!
//! Writes made during a `handle` call are held in the store's overlay and
//! read back from it (a plugin reads its own writes); the worker commits
//! them with the plugin's cursor only for a batch whose events were all
//! acked (`plugin::worker`), so what a plugin keeps is exactly the effect of
//! the events it acked. Reads of keys not written in the call go to the
//! [`Backend`]: the durable store (answered by its exact copy of the
//! plugin's state, `store::state_view`), a broker (answered by this host's
//! copy when it has the key, `store::state_cache`: the settlement checks
//! every value read), or a map in memory (`--memory`).
//!
//! Writes during `init` are committed when `init` returns.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

use wasmtime::component::Resource;

use super::bindings::wasi::keyvalue::{atomics, batch, store};
use super::HostState;

/// The only bucket name: the plugin's own.
pub const BUCKET: &str = "default";
pub use plugbus_contract::state::{CALL_WRITE_BYTES_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX};
/// Keys per page of `list-keys`.
pub const LIST_PAGE: usize = 1000;
/// The state a plugin may keep by default (keys and values), in bytes.
pub const STATE_BYTES_MAX_DEFAULT: u64 = 64 << 20;

/// A plugin's state quota (`limits.state_bytes_max`) and what it keeps now
/// (keys and values, committed), shared by its instances. A write that would
/// take the state past the quota fails in the plugin and is counted; writes
/// that shrink it always succeed.
#[derive(Debug)]
pub struct StateQuota {
    max: u64,
    used: AtomicU64,
    refused: Counter,
}

impl Default for StateQuota {
    fn default() -> Self {
        StateQuota::new(STATE_BYTES_MAX_DEFAULT, 0, Counter::default())
    }
}

impl StateQuota {
    /// A quota of `max` bytes with `used` kept now; refusals go to
    /// `refused`.
    pub fn new(max: u64, used: u64, refused: Counter) -> StateQuota {
        StateQuota {
            max,
            used: AtomicU64::new(used),
            refused,
        }
    }

    /// The quota, in bytes.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The bytes of state kept now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The state keeps `bytes` now (measured at a start).
    pub fn set_used(&self, bytes: u64) {
        self.used.store(bytes, Ordering::Relaxed);
    }

    /// Writes that changed the state by `delta` bytes were committed.
    pub fn committed(&self, delta: i64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_add_signed(delta))
            });
    }
}

/// A plugin's bucket handle (the guest's `bucket` resource).
pub struct KvBucket;

/// A compare-and-swap in progress (the guest's `cas` resource): the key and
/// the value it saw.
pub struct KvCas {
    key: String,
    seen: Option<Vec<u8>>,
}

/// Where committed state lives: the plugin's bucket in the backend (the
/// embedded store's `kv` keyspace, a broker's, or memory mode's map).
#[derive(Clone)]
pub struct Backend(Arc<dyn crate::backend::Backend>);

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kv::Backend({})", self.0.describe())
    }
}

impl Default for Backend {
    fn default() -> Self {
        Backend(Arc::new(crate::backend::memory::MemoryBackend::standalone()))
    }
}

/// Writes not yet committed: a value, or none for a delete.
pub type Writes = BTreeMap<String, Option<Vec<u8>>>;

impl Backend {
    /// The buckets kept by `backend`.
    pub fn on(backend: Arc<dyn crate::backend::Backend>) -> Backend {
        Backend(backend)
    }

    /// The committed value of `key` in `plugin`'s bucket.
    pub fn get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.kv_get(plugin, key).map_err(|e| e.to_string())
    }

    /// The value of `key` in `plugin`'s bucket as its handler reads it: a
    /// broker may answer from this host's copy of the state, because the
    /// settlement checks every value a batch read (`backend::state_cache`).
    pub fn read(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.kv_read(plugin, key).map_err(|e| e.to_string())
    }

    /// Up to `max` committed keys after `after`, in order, with values.
    pub fn list(
        &self,
        plugin: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, String> {
        self.0
            .kv_list(plugin, after, max)
            .map_err(|e| e.to_string())
    }

    /// Whether the backend keeps timers for its plugins.
    pub fn keeps_timers(&self) -> bool {
        self.0.capabilities().timers
    }

    /// `plugin`'s timer `key`, if it is set.
    pub fn timer(&self, plugin: &str, key: &str) -> Result<Option<crate::timer::Timer>, String> {
        self.0.timer(plugin, key).map_err(|e| e.to_string())
    }

    /// The timers `plugin` keeps set.
    pub fn timer_usage(&self, plugin: &str) -> Result<crate::timer::Usage, String> {
        self.0.timer_usage(plugin).map_err(|e| e.to_string())
    }

    /// The bytes (keys and values) of `plugin`'s committed state (its
    /// timers' are the store's: [`Backend::timer_usage`]).
    pub fn usage(&self, plugin: &str) -> Result<u64, String> {
        let mut total = 0u64;
        let mut after: Option<String> = None;
        loop {
            let page = self.list(plugin, after.as_deref(), LIST_PAGE)?;
            total += page
                .iter()
                .map(|(k, v)| (k.len() + v.len()) as u64)
                .sum::<u64>();
            match page.last() {
                Some((k, _)) if page.len() == LIST_PAGE => after = Some(k.clone()),
                _ => return Ok(total),
            }
        }
    }

    /// Commit `writes` at once, outside any delivery (writes made during
    /// `init`). No cursor moves: a plugin new to the log has none yet,
    /// and must still be seen as new.
    pub fn apply(&self, plugin: &str, writes: Writes) -> Result<(), String> {
        if writes.is_empty() {
            return Ok(());
        }
        self.0
            .put_state(plugin, writes.into_iter().collect())
            .map_err(|e| e.to_string())
    }
}

fn other(e: impl std::fmt::Display) -> store::Error {
    store::Error::Other(e.to_string())
}

/// Check a key the plugin gave, before it reaches the store (whose engine
/// has limits of its own, which a plugin must never reach).
fn check_key(key: &str) -> Result<(), store::Error> {
    plugbus_contract::state::check_key(key).map_err(other)
}

impl HostState {
    /// The value of `key` as this call sees it.
    fn kv_read(&self, key: &str) -> Result<Option<Vec<u8>>, store::Error> {
        check_key(key)?;
        if let Some(v) = self.kv_writes.get(key) {
            return Ok(v.clone());
        }
        // Read once per call: what the commit checks is what the call saw
        // (and a write's size is reckoned from it without a second read).
        if let Some(v) = self.kv_reads.borrow().get(key) {
            return Ok(v.clone());
        }
        let value = self.kv.read(&self.plugin, key).map_err(other)?;
        // What the call's writes are computed from: the commit checks it
        // is still the bucket's (another worker or host may write it).
        self.kv_reads
            .borrow_mut()
            .entry(key.to_string())
            .or_insert_with(|| value.clone());
        Ok(value)
    }

    fn kv_write(&mut self, key: String, value: Option<Vec<u8>>) -> Result<(), store::Error> {
        let before = self.kv_read(&key)?.map(|v| v.len());
        self.kv_replace(key, before, value)
    }

    /// Write `value` (none: delete) over the `before` bytes `key` holds as
    /// this call sees it (none: no value), within the limits and the
    /// state quota.
    fn kv_replace(
        &mut self,
        key: String,
        before: Option<usize>,
        value: Option<Vec<u8>>,
    ) -> Result<(), store::Error> {
        let value_len = value.as_ref().map_or(0, Vec::len);
        plugbus_contract::state::check_write(&key, value_len, self.kv_write_bytes)
            .map_err(other)?;
        let size = key.len() + value_len;
        let before = before.map_or(0, |v| key.len() + v);
        let delta = if value.is_some() { size } else { 0 } as i64 - before as i64;
        self.check_quota(delta).map_err(other)?;
        self.kv_write_bytes += size;
        self.kv_delta += delta;
        self.kv_writes.insert(key, value);
        Ok(())
    }

    /// Whether the call may grow the plugin's state by `delta` bytes more
    /// (a change that shrinks it always may); the words of a refusal.
    pub(super) fn check_quota(&mut self, delta: i64) -> Result<(), String> {
        let timers = self.stored_timers().bytes as i64 + self.timers.bytes_delta;
        let after = (self.state.used() as i64).saturating_add(self.kv_delta + timers + delta);
        if delta > 0 && after > self.state.max() as i64 {
            self.state.refused.inc();
            return Err(format!(
                "the state quota of plugin `{}` is full: this write would keep {after} bytes of state (keys, values and timers), over its limits.state_bytes_max of {}; delete keys or cancel timers it no longer needs, or raise the quota in its manifest",
                self.plugin,
                self.state.max()
            ));
        }
        Ok(())
    }

    fn kv_increment(&mut self, key: String, delta: i64) -> Result<i64, store::Error> {
        let held = self.kv_read(&key)?;
        let (next, stored) =
            plugbus_contract::state::increment(&key, held.as_deref(), delta).map_err(other)?;
        self.kv_replace(key, held.map(|v| v.len()), Some(stored))?;
        Ok(next)
    }
}

impl store::Host for HostState {
    fn open(&mut self, identifier: String) -> Result<Resource<KvBucket>, store::Error> {
        if identifier != BUCKET {
            return Err(store::Error::NoSuchStore);
        }
        self.table.push(KvBucket).map_err(other)
    }
}

impl store::HostBucket for HostState {
    fn get(&mut self, _: Resource<KvBucket>, key: String) -> Result<Option<Vec<u8>>, store::Error> {
        self.kv_read(&key)
    }

    fn set(
        &mut self,
        _: Resource<KvBucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), store::Error> {
        self.kv_write(key, Some(value))
    }

    fn delete(&mut self, _: Resource<KvBucket>, key: String) -> Result<(), store::Error> {
        self.kv_write(key, None)
    }

    fn exists(&mut self, _: Resource<KvBucket>, key: String) -> Result<bool, store::Error> {
        Ok(self.kv_read(&key)?.is_some())
    }

    fn list_keys(
        &mut self,
        _: Resource<KvBucket>,
        cursor: Option<String>,
    ) -> Result<store::KeyResponse, store::Error> {
        let after = cursor.as_deref();
        if let Some(after) = after {
            // A cursor is a key this call returned.
            check_key(after)?;
        }
        let committed = self
            .kv
            .list(&self.plugin, after, LIST_PAGE + 1)
            .map_err(other)?;
        let more_committed = committed.len() > LIST_PAGE;
        let mut keys: BTreeMap<String, bool> =
            committed.into_iter().map(|(k, _)| (k, true)).collect();
        for (k, v) in &self.kv_writes {
            if after.is_none_or(|a| k.as_str() > a) {
                keys.insert(k.clone(), v.is_some());
            }
        }
        let mut live: Vec<String> = keys
            .into_iter()
            .filter_map(|(k, present)| present.then_some(k))
            .collect();
        let more = more_committed || live.len() > LIST_PAGE;
        live.truncate(LIST_PAGE);
        let cursor = if more { live.last().cloned() } else { None };
        Ok(store::KeyResponse { keys: live, cursor })
    }

    fn drop(&mut self, rep: Resource<KvBucket>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl atomics::Host for HostState {
    fn increment(
        &mut self,
        _: Resource<KvBucket>,
        key: String,
        delta: i64,
    ) -> Result<i64, store::Error> {
        self.kv_increment(key, delta)
    }

    fn swap(&mut self, cas: Resource<KvCas>, value: Vec<u8>) -> Result<(), atomics::CasError> {
        let cas_state = self
            .table
            .delete(cas)
            .map_err(|e| atomics::CasError::StoreError(other(e)))?;
        let now = self
            .kv_read(&cas_state.key)
            .map_err(atomics::CasError::StoreError)?;
        if now != cas_state.seen {
            let fresh = self
                .table
                .push(KvCas {
                    key: cas_state.key,
                    seen: now,
                })
                .map_err(|e| atomics::CasError::StoreError(other(e)))?;
            return Err(atomics::CasError::CasFailed(fresh));
        }
        let before = now.map(|v| v.len());
        self.kv_replace(cas_state.key, before, Some(value))
            .map_err(atomics::CasError::StoreError)
    }
}

impl atomics::HostCas for HostState {
    fn new(&mut self, _: Resource<KvBucket>, key: String) -> Result<Resource<KvCas>, store::Error> {
        let seen = self.kv_read(&key)?;
        self.table.push(KvCas { key, seen }).map_err(other)
    }

    fn current(&mut self, cas: Resource<KvCas>) -> Result<Option<Vec<u8>>, store::Error> {
        let key = self.table.get(&cas).map_err(other)?.key.clone();
        self.kv_read(&key)
    }

    fn drop(&mut self, rep: Resource<KvCas>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl batch::Host for HostState {
    fn get_many(
        &mut self,
        _: Resource<KvBucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, store::Error> {
        keys.into_iter()
            .map(|k| Ok(self.kv_read(&k)?.map(|v| (k, v))))
            .collect()
    }

    fn set_many(
        &mut self,
        _: Resource<KvBucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), store::Error> {
        for (k, v) in key_values {
            self.kv_write(k, Some(v))?;
        }
        Ok(())
    }

    fn delete_many(
        &mut self,
        _: Resource<KvBucket>,
        keys: Vec<String>,
    ) -> Result<(), store::Error> {
        for k in keys {
            self.kv_write(k, None)?;
        }
        Ok(())
    }
}
