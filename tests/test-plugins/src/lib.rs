//! Test plugins for plugbus's own tests and benchmarks. Each is an example
//! of this crate, built as a cdylib to wasm32-wasip1:
//!
//! - `noop`: acks every `order.placed`; the trivial plugin of the benchmarks.
//! - `trap`: panics (a wasm trap) on events whose data contains `boom`.
//! - `recorder`: logs `handled <id>` for every event, to check delivery.
//! - `slow`: spends `50 ms` (busy, on the monotonic clock) on each event.
//! - `init_fails`: refuses to start, with a message naming the fix.
//! - `contract_v2`: built against `plugbus:plugin@0.2.0`, which this host
//!   does not implement.
