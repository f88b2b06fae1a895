//! The plugin's own state: a key-value bucket kept by the host
//! (`wasi:keyvalue`), read and written like a map.
//!
//! What a handler writes while handling an event is kept only if the
//! event's outcome is [`Outcome::Ack`](crate::Outcome::Ack), and the host
//! commits it together with its progress through the log: after a crash the
//! state and the events counted in it agree. Keep counters and projections
//! here, not in the plugin's memory, which starts empty after every restart.
//!
//! ```
//! use plugbus_sdk::State;
//!
//! let state = State::open().expect("the host gives every plugin a bucket");
//! let orders = state.increment("orders", 1).expect("a number");
//! state.set_json("last_order", &serde_json::json!({ "n": orders })).expect("stored");
//! ```

use std::fmt;

use crate::bindings::wasi::keyvalue::store;
use crate::host::Bucket;

/// The plugin's bucket.
pub struct State {
    bucket: Bucket,
}

/// A state operation failed; the text says why. Usually worth a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateError(String);

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StateError {}

impl From<store::Error> for StateError {
    fn from(e: store::Error) -> Self {
        StateError(match e {
            store::Error::NoSuchStore => "no such bucket".to_string(),
            store::Error::AccessDenied => "access to the bucket denied".to_string(),
            store::Error::Other(text) => text,
        })
    }
}

impl State {
    /// Open the plugin's bucket (`default`). Cheap; open it once in
    /// [`Plugin::init`](crate::Plugin::init) and keep it.
    pub fn open() -> Result<State, StateError> {
        Ok(State {
            bucket: Bucket::open("default")?,
        })
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.bucket.get(key)?)
    }

    /// The value of `key`, decoded from JSON.
    pub fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StateError> {
        match self.get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StateError(format!("`{key}` does not hold the JSON expected: {e}"))),
        }
    }

    /// Set `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        Ok(self.bucket.set(key, value)?)
    }

    /// Set `key` to `value` as JSON.
    pub fn set_json<T: serde::Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| StateError(format!("cannot encode `{key}` as JSON: {e}")))?;
        self.set(key, &bytes)
    }

    /// Remove `key` (nothing happens if it is not there).
    pub fn delete(&self, key: &str) -> Result<(), StateError> {
        Ok(self.bucket.delete(key)?)
    }

    /// Whether `key` has a value.
    pub fn exists(&self, key: &str) -> Result<bool, StateError> {
        Ok(self.bucket.exists(key)?)
    }

    /// Add `delta` to the counter at `key` (a missing key counts as 0) and
    /// return the new value. Counters are stored as decimal text, so they
    /// read as JSON numbers.
    pub fn increment(&self, key: &str, delta: i64) -> Result<i64, StateError> {
        Ok(self.bucket.increment(key, delta)?)
    }

    /// The counter at `key`, 0 when missing.
    pub fn counter(&self, key: &str) -> Result<i64, StateError> {
        Ok(self.get_json::<i64>(key)?.unwrap_or(0))
    }

    /// Every key, in order.
    pub fn keys(&self) -> Result<Vec<String>, StateError> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let (page, next) = self.bucket.list_keys(cursor.as_deref())?;
            keys.extend(page);
            match next {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }
}
