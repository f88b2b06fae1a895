//! Why a plugin did not start, and why a replay could not be done.

use std::path::PathBuf;

use crate::plugin::ManifestError;
use crate::runtime::{CallError, LoadError};
use crate::store::StoreError;
use plugbus_contract::topic::TopicError;

/// Why a plugin did not start.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Its manifest cannot be used.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Instantiation or `init` failed.
    #[error("{file}: {source}")]
    Start {
        /// The plugin file.
        file: PathBuf,
        /// What failed.
        source: CallError,
    },
    /// `init` returned a subscription that is not a pattern.
    #[error("{file}: init returned subscription `{pattern}`, which is not valid: {source}")]
    Subscription {
        /// The plugin file.
        file: PathBuf,
        /// The pattern as returned.
        pattern: String,
        /// Why it is invalid.
        source: TopicError,
    },
    /// The schemas it declares cannot be used.
    #[error("{file}: {source}")]
    Contracts {
        /// The plugin file.
        file: PathBuf,
        /// Why.
        source: crate::schema::declared::DeclareError,
    },
    /// What it declares does not fit a running plugin's declarations.
    #[error("{0}")]
    Incompatible(Box<super::Incompatible>),
    /// What it would publish in its shadow run does not fit a running
    /// consumer's declared reader schema.
    #[error("{0}")]
    ShadowMisfit(Box<super::shadow::ShadowMisfit>),
    /// `init` returned no subscriptions.
    #[error("{file}: init returned no subscriptions, so the plugin would never get an event; return at least one topic pattern from `info()`")]
    NoSubscriptions {
        /// The plugin file.
        file: PathBuf,
    },
    /// The worker thread could not be started.
    #[error("{file}: {reason}")]
    Broker {
        /// The plugin file.
        file: PathBuf,
        /// What the broker backend cannot do with these settings.
        reason: String,
    },
    /// A worker thread could not be started.
    #[error("{file}: cannot start a worker thread: {source}")]
    Thread {
        /// The plugin file.
        file: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The plugin's cursor could not be read.
    #[error("{file}: {source}")]
    Cursor {
        /// The plugin file.
        file: PathBuf,
        /// The store's error.
        source: StoreError,
    },
    /// The plugin directory cannot be read.
    #[error(
        "plugin directory {dir}: {source}; create it or pass --plugins with an existing directory"
    )]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Why a replay could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// There is no log in memory mode.
    #[error("replay needs the durable log; this host runs with --memory")]
    NotDurable,
    /// No such running plugin.
    #[error("no running plugin is called `{0}`; see `plugbus plugins`")]
    NoPlugin(String),
    /// The cursor (or the broker's consumer group) could not be moved.
    #[error("cannot move the plugin's position in the log: {0}")]
    Backend(crate::backend::BackendError),
    /// The plugin did not start again.
    #[error("the plugin did not start again after moving its cursor: {0}")]
    Restart(PluginError),
}
