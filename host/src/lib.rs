//! # plugbus
//!
//! An event runtime that hosts sandboxed WebAssembly consumer plugins. One
//! process runs a pub/sub dispatcher and loads plugins from a directory;
//! each plugin is a WebAssembly component implementing the
//! `plugbus:plugin` contract (see the repository's `wit/`).
//!
//! Data flows one way: [`http`] ingress → [`bus`] → per-plugin queues →
//! [`plugin`] workers → [`runtime`] → the plugin; a plugin's follow-up
//! events re-enter at the bus. Nothing below `bus` knows about HTTP;
//! nothing in `bus` knows about wasmtime.

pub mod audit;
pub mod author;
pub mod backend;
pub mod bus;
pub mod cli;
pub mod client;
pub mod config_file;
pub mod dispatch;
pub mod event;
pub mod http;
pub mod metrics;
pub mod observe;
pub mod plugin;
#[cfg(test)]
mod reference;
pub mod run_settings;
pub mod runtime;
pub mod schema;
pub mod server;
pub mod store;
pub mod telemetry;
#[cfg(test)]
mod tidy;
pub mod timer;
