//! The seam between the SDK and the host: every call the SDK makes into the
//! host (publish, config, log, the key-value bucket) goes through here.
//!
//! Compiled to WebAssembly these are the generated imports of the contract.
//! Compiled natively (a plugin's `cargo test`) they go to the test host of
//! [`crate::testing`], which keeps the host's rules: what a handler writes or
//! publishes counts only if its event is acked.

use crate::bindings::wasi::keyvalue::store;
use crate::{Level, Outgoing, PublishError, When};

/// A key and the cursor of the next page, from `list-keys`.
pub(crate) type KeysPage = (Vec<String>, Option<String>);

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::*;
    use crate::bindings::plugbus::plugin::{config, publisher, scheduler};
    use crate::bindings::wasi::keyvalue::atomics;
    use crate::bindings::wasi::logging::logging;

    pub(crate) fn publish(cause: u32, event: &Outgoing) -> Result<(), PublishError> {
        publisher::publish(cause, event)
    }

    pub(crate) fn schedule(
        cause: u32,
        key: &str,
        due: When,
        event: &Outgoing,
    ) -> Result<(), PublishError> {
        scheduler::schedule(cause, key, due, event)
    }

    pub(crate) fn cancel(cause: u32, key: &str) -> Result<(), PublishError> {
        scheduler::cancel(cause, key)
    }

    pub(crate) fn config() -> Vec<(String, String)> {
        config::get_all()
    }

    pub(crate) fn log(level: Level, message: &str) {
        logging::log(level, "", message);
    }

    /// The plugin's bucket, a resource of the host.
    pub(crate) struct Bucket(store::Bucket);

    impl Bucket {
        pub(crate) fn open(name: &str) -> Result<Bucket, store::Error> {
            store::open(name).map(Bucket)
        }

        pub(crate) fn get(&self, key: &str) -> Result<Option<Vec<u8>>, store::Error> {
            self.0.get(key)
        }

        pub(crate) fn set(&self, key: &str, value: &[u8]) -> Result<(), store::Error> {
            self.0.set(key, value)
        }

        pub(crate) fn delete(&self, key: &str) -> Result<(), store::Error> {
            self.0.delete(key)
        }

        pub(crate) fn exists(&self, key: &str) -> Result<bool, store::Error> {
            self.0.exists(key)
        }

        pub(crate) fn increment(&self, key: &str, delta: i64) -> Result<i64, store::Error> {
            atomics::increment(&self.0, key, delta)
        }

        pub(crate) fn list_keys(&self, cursor: Option<&str>) -> Result<KeysPage, store::Error> {
            self.0
                .list_keys(cursor)
                .map(|page| (page.keys, page.cursor))
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::*;
    use crate::testing::sandbox;

    pub(crate) fn publish(cause: u32, event: &Outgoing) -> Result<(), PublishError> {
        sandbox::with(|s| s.publish(cause, event))
    }

    pub(crate) fn schedule(
        cause: u32,
        key: &str,
        due: When,
        event: &Outgoing,
    ) -> Result<(), PublishError> {
        sandbox::with(|s| s.schedule(cause, key, due, event))
    }

    pub(crate) fn cancel(cause: u32, key: &str) -> Result<(), PublishError> {
        sandbox::with(|s| s.cancel(cause, key))
    }

    pub(crate) fn config() -> Vec<(String, String)> {
        sandbox::with(|s| s.config.clone())
    }

    pub(crate) fn log(level: Level, message: &str) {
        sandbox::with(|s| s.log(level, message));
    }

    /// The plugin's bucket in the test host: the harness that is running
    /// the plugin holds its contents.
    pub(crate) struct Bucket;

    impl Bucket {
        pub(crate) fn open(name: &str) -> Result<Bucket, store::Error> {
            if name == "default" {
                Ok(Bucket)
            } else {
                Err(store::Error::NoSuchStore)
            }
        }

        pub(crate) fn get(&self, key: &str) -> Result<Option<Vec<u8>>, store::Error> {
            Ok(sandbox::with(|s| s.get(key)))
        }

        pub(crate) fn set(&self, key: &str, value: &[u8]) -> Result<(), store::Error> {
            sandbox::with(|s| s.write(key, Some(value.to_vec())))
        }

        pub(crate) fn delete(&self, key: &str) -> Result<(), store::Error> {
            sandbox::with(|s| s.write(key, None))
        }

        pub(crate) fn exists(&self, key: &str) -> Result<bool, store::Error> {
            Ok(sandbox::with(|s| s.get(key).is_some()))
        }

        pub(crate) fn increment(&self, key: &str, delta: i64) -> Result<i64, store::Error> {
            sandbox::with(|s| s.increment(key, delta))
        }

        pub(crate) fn list_keys(&self, _cursor: Option<&str>) -> Result<KeysPage, store::Error> {
            Ok((sandbox::with(|s| s.keys()), None))
        }
    }
}

pub(crate) use imp::*;
