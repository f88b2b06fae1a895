//! A copy of one plugin's state held in this process, true at a version of
//! it (a count of the writes to it), so that a handler's read of a key
//! read or written before needs no look-up in the store and no round trip
//! to a broker.
//!
//! The embedded store moves the version with every write it makes
//! (`store::state_view`), so its copies are exact. A shared broker counts
//! the writes to each plugin's state, whoever makes them: a value read
//! together with a later version, or a settlement that lands at a version
//! past the next one, means someone else wrote in between, and the copy
//! starts again from what it just learned. A value the copy still gives
//! after another host wrote it is caught where every read is caught: the
//! settlement checks each value its batch read against the broker's and
//! answers a conflict, and the consumer forgets the copy
//! ([`StateCache::forget`]) before the batch is handled again. A broker
//! that counts no versions (NATS) keeps its copies at one version and
//! leans on that check alone ([`StateCache::read_here`],
//! [`StateCache::wrote_here`]).
//!
//! A copy that knows nothing yet may be loaded whole (a bucket of at most
//! [`STATE_CACHE_LOAD_ENTRIES_MAX`] keys, at most once per
//! [`STATE_CACHE_LOAD_EVERY`]): while it stays complete, a key it does not
//! hold is known absent, so a plugin whose keys are mostly new (stock not
//! yet counted) does not wait for a round trip per key either.
//!
//! Bounded: at most [`STATE_CACHE_BYTES_MAX`] of keys and values per plugin
//! and host; past it the copy starts again empty.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most bytes (keys and values) one plugin's copy holds on one host.
pub const STATE_CACHE_BYTES_MAX: usize = 1 << 20;

/// The most keys a bucket may have to be loaded whole.
pub const STATE_CACHE_LOAD_ENTRIES_MAX: usize = 8192;

/// How often a copy may be loaded whole (after a conflict it knows nothing
/// again: with hosts writing the same keys, loads would follow each other).
pub const STATE_CACHE_LOAD_EVERY: Duration = Duration::from_secs(1);

/// What a copy costs per key beside its bytes (the map's entry, the two
/// allocations), so that many tiny keys are bounded too.
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// The version of every copy on a broker that keeps none ([`StateCache::read_here`],
/// [`StateCache::wrote_here`]).
const UNVERSIONED: u64 = 0;

/// A map keyed by strings, hashed with a per-process seed (foldhash): a
/// handler's every state read looks up two (plugin, then key), and SipHash
/// was most of their cost.
type Map<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// One `T` per plugin, made on first use.
pub struct PerPlugin<T>(Mutex<Map<Arc<T>>>);

impl<T> Default for PerPlugin<T> {
    fn default() -> Self {
        PerPlugin(Mutex::default())
    }
}

impl<T: Default> PerPlugin<T> {
    /// `plugin`'s.
    pub fn of(&self, plugin: &str) -> Arc<T> {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = all.get(plugin) {
            return t.clone();
        }
        let t = Arc::new(T::default());
        all.insert(plugin.to_string(), t.clone());
        t
    }
}

/// The plugins' copies on this host, one per plugin.
pub type StateCaches = PerPlugin<StateCache>;

/// One plugin's copy: values (none: the key is absent) true at `version`.
#[derive(Default)]
pub struct StateCache(Mutex<Copy>);

#[derive(Default)]
struct Copy {
    /// The version of the broker's state the values are true at; none
    /// while nothing is known.
    version: Option<u64>,
    values: Map<Option<Vec<u8>>>,
    bytes: usize,
    /// Every key of the bucket is in `values`: one missing is absent.
    complete: bool,
    /// When the copy was last loaded whole (or a load was tried).
    loaded_at: Option<Instant>,
}

impl Copy {
    fn put(&mut self, key: &str, value: Option<Vec<u8>>) {
        let size = entry_bytes(key, value.as_deref());
        if self.bytes + size > STATE_CACHE_BYTES_MAX {
            self.clear();
        }
        self.bytes += size;
        if let Some(old) = self.values.insert(key.to_string(), value) {
            self.bytes -= entry_bytes(key, old.as_deref());
        }
    }

    /// Hold no values (and so no longer every key).
    fn clear(&mut self) {
        self.values.clear();
        self.bytes = 0;
        self.complete = false;
    }

    /// Begin again at `version`, knowing nothing.
    fn restart(&mut self, version: u64) {
        self.clear();
        self.version = Some(version);
    }

    /// `key`'s value as held (`Some(None)`: absent), or none when unknown.
    fn known(&self, key: &str) -> Option<Option<Vec<u8>>> {
        match self.values.get(key) {
            Some(value) => Some(value.clone()),
            None => self.complete.then_some(None),
        }
    }
}

fn entry_bytes(key: &str, value: Option<&[u8]>) -> usize {
    key.len() + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD_BYTES
}

impl StateCache {
    /// The value of `key` as the copy knows it (`Some(None)`: absent), or
    /// none when it does not know.
    pub fn get(&self, key: &str) -> Option<Option<Vec<u8>>> {
        let copy = self.0.lock().unwrap_or_else(|p| p.into_inner());
        copy.version?;
        copy.known(key)
    }

    /// The value of `key` if the copy knows it and is true at `version`.
    pub fn get_at(&self, key: &str, version: u64) -> Option<Option<Vec<u8>>> {
        let copy = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if copy.version != Some(version) {
            return None;
        }
        copy.known(key)
    }

    /// Whether a read this copy cannot answer should load the whole bucket:
    /// the copy knows nothing and was not loaded within
    /// [`STATE_CACHE_LOAD_EVERY`]. A yes counts as the load.
    pub fn load_now(&self) -> bool {
        let mut copy = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let due = copy.version.is_none()
            && copy
                .loaded_at
                .is_none_or(|at| at.elapsed() >= STATE_CACHE_LOAD_EVERY);
        if due {
            copy.loaded_at = Some(Instant::now());
        }
        due
    }

    /// The broker answered the whole bucket, `entries`, at `version`.
    pub fn loaded(&self, entries: Vec<(String, Vec<u8>)>, version: u64) {
        let mut copy = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if copy.version.is_some_and(|v| v > version) {
            return;
        }
        copy.restart(version);
        copy.complete = true;
        for (key, value) in entries {
            // Past the bound the copy starts again, no longer complete.
            copy.put(&key, Some(value));
        }
    }

    /// The broker answered `value` for `key` at `version`.
    pub fn read(&self, key: &str, value: Option<Vec<u8>>, version: u64) {
        let mut copy = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match copy.version {
            Some(v) if v == version => {}
            // Read before writes the copy already has: too old to keep.
            Some(v) if v > version => return,
            _ => copy.restart(version),
        }
        copy.put(key, value);
    }

    /// This host's settlement wrote `writes`, and the broker's state is at
    /// `version` after it.
    pub fn wrote<'a>(
        &self,
        writes: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
        version: u64,
    ) {
        let mut copy = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match copy.version {
            Some(v) if v + 1 == version => copy.version = Some(version),
            // Another settlement of this host landed after it and is in
            // the copy already.
            Some(v) if v >= version => return,
            // Someone wrote in between (or nothing was known): only these
            // writes are known true now.
            _ => copy.restart(version),
        }
        for (key, value) in writes {
            copy.put(key, value.map(<[u8]>::to_vec));
        }
    }

    /// The broker answered `value` for `key`, on a broker that keeps no
    /// version of the plugin's state (NATS): kept at [`UNVERSIONED`].
    pub fn read_here(&self, key: &str, value: Option<Vec<u8>>) {
        self.read(key, value, UNVERSIONED);
    }

    /// This host's settlement wrote `writes`, on a broker that keeps no
    /// version of the plugin's state (NATS): the copy takes them as they
    /// are. Every value a batch read is checked at its settlement, so a
    /// value another host changed since costs a conflict, after which the
    /// copy is forgotten.
    pub fn wrote_here<'a>(&self, writes: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) {
        let mut copy = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if copy.version.is_none() {
            copy.restart(UNVERSIONED);
        }
        for (key, value) in writes {
            copy.put(key, value.map(<[u8]>::to_vec));
        }
    }

    /// Forget everything (a conflict: the copy was wrong somewhere; a
    /// settlement whose outcome is unknown).
    pub fn forget(&self) {
        let mut copy = self.0.lock().unwrap_or_else(|p| p.into_inner());
        copy.clear();
        copy.version = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn a_value_read_is_known_until_someone_else_writes() {
        let c = StateCache::default();
        assert_eq!(c.get("a"), None, "nothing known");
        c.read("a", v("1"), 7);
        c.read("gone", None, 7);
        assert_eq!(c.get("a"), Some(v("1")));
        assert_eq!(c.get("gone"), Some(None), "an absent key is known absent");
        // Our own write, the next version: kept with what was known.
        c.wrote([("a", Some(&b"2"[..]))], 8);
        assert_eq!(c.get("a"), Some(v("2")));
        assert_eq!(c.get("gone"), Some(None));
        // Another host wrote version 9: ours is 10, the rest is unknown.
        c.wrote([("b", Some(&b"x"[..]))], 10);
        assert_eq!(c.get("a"), None);
        assert_eq!(c.get("b"), Some(v("x")));
        // A read at a later version starts again too.
        c.read("c", v("z"), 12);
        assert_eq!(c.get("b"), None);
        assert_eq!(c.get("c"), Some(v("z")));
    }

    #[test]
    fn late_answers_never_overwrite_newer_knowledge() {
        let c = StateCache::default();
        c.wrote([("a", Some(&b"new"[..]))], 5);
        c.read("a", v("old"), 4);
        assert_eq!(c.get("a"), Some(v("new")), "a read from before the write");
        c.wrote([("a", Some(&b"older"[..]))], 5);
        assert_eq!(
            c.get("a"),
            Some(v("new")),
            "a settlement already in the copy"
        );
        c.forget();
        assert_eq!(c.get("a"), None);
    }

    #[test]
    fn a_complete_copy_knows_what_is_absent_until_someone_else_writes() {
        let c = StateCache::default();
        assert!(c.load_now(), "nothing known: load");
        assert!(!c.load_now(), "not twice within the interval");
        c.loaded(vec![("a".into(), b"1".to_vec())], 3);
        assert_eq!(c.get("a"), Some(v("1")));
        assert_eq!(c.get("new"), Some(None), "complete: absent");
        c.wrote([("new", Some(&b"2"[..]))], 4);
        assert_eq!(c.get("new"), Some(v("2")));
        assert_eq!(c.get("other"), Some(None), "still complete after our write");
        c.wrote([("b", Some(&b"3"[..]))], 6);
        assert_eq!(c.get("other"), None, "someone wrote version 5");
        assert_eq!(c.get("b"), Some(v("3")));
        c.loaded(Vec::new(), 5);
        assert_eq!(c.get("b"), Some(v("3")), "an older load is dropped");
        c.forget();
        assert!(!c.load_now(), "loaded within the interval");
    }

    #[test]
    fn the_copy_is_bounded() {
        let c = StateCache::default();
        let big = vec![0u8; 4096];
        for i in 0..1000 {
            c.read(&format!("k{i}"), Some(big.clone()), 1);
        }
        let copy = c.0.lock().expect("not poisoned");
        assert!(copy.bytes <= STATE_CACHE_BYTES_MAX, "{}", copy.bytes);
        let counted: usize = copy
            .values
            .iter()
            .map(|(k, v)| entry_bytes(k, v.as_deref()))
            .sum();
        assert_eq!(counted, copy.bytes, "the count is what is held");
    }
}
