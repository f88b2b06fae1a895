//! What one call into a plugin may use, and how it is stopped or slowed:
//! its clock (the deadline, the cut of a foreground call that turns out
//! heavy, the throttle of a misbehaving plugin's call) and its memory (the
//! cap, and the growth that makes a foreground call heavy).
//!
//! A worker calls a plugin on its own thread, at normal CPU priority: the
//! cheap path every honest batch takes. A call that runs past
//! [`PREEMPT_AFTER`] or grows its memory by [`PREEMPT_GROWTH_BYTES`] there
//! is cut ([`CallMode::Foreground`]): its effects were only buffered, so
//! the worker runs the batch again from the start on a thread of the
//! lowest CPU priority ([`CallMode::Background`]), with what is left of
//! its deadline. A heavy plugin then takes only the CPU the others leave
//! idle, at full speed on an idle machine; an infinite loop burns
//! [`PREEMPT_AFTER`] of a core before it yields to the other plugins.

use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, StoreLimits, UpdateDeadline};

use super::EPOCH_TICK_MS;

/// A foreground call still running after this long is cut and run again
/// in the background.
pub const PREEMPT_AFTER: Duration = Duration::from_millis(100);
/// Why a call cut for [`PREEMPT_AFTER`] was cut (keep the two together).
const RAN_LONG: &str = "ran past 100 ms";

/// A foreground call that grows its memory by this much is cut and run
/// again in the background: copying that much in and out of the sandbox is
/// work the epoch clock does not see.
pub const PREEMPT_GROWTH_BYTES: usize = 16 << 20;
/// Why a call cut for [`PREEMPT_GROWTH_BYTES`] was cut (keep them together).
const GREW: &str = "grew its memory by 16 MiB";

/// A throttled call runs one epoch tick, then pauses this many ticks: at
/// most a tenth of a core.
pub const THROTTLE_PAUSE_TICKS: u64 = 9;

/// Where and how a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallMode {
    /// On the worker's thread at normal priority; cut if it turns heavy.
    Foreground,
    /// On a thread of the lowest CPU priority, never cut before its
    /// deadline: a plugin known to be heavy, or `init`.
    Background,
    /// In the background, and paused [`THROTTLE_PAUSE_TICKS`] ticks after
    /// each tick it runs: a plugin that misbehaved.
    Throttled,
}

/// The state of the call in progress, kept in the store: the epoch
/// callback and the resource limiter read and update it.
pub struct CallState {
    limits: StoreLimits,
    mode: CallMode,
    started: Instant,
    deadline: Instant,
    grown: usize,
    /// Whether the call was cut, and why.
    preempted: Option<&'static str>,
    /// Time the call spent paused by throttling.
    paused: Duration,
}

impl CallState {
    pub(super) fn new(limits: StoreLimits) -> CallState {
        let now = Instant::now();
        CallState {
            limits,
            mode: CallMode::Background,
            started: now,
            deadline: now,
            grown: 0,
            preempted: None,
            paused: Duration::ZERO,
        }
    }

    /// Start a call of `mode` that may take `budget`; returns the epoch
    /// ticks until the store's callback is first asked.
    pub(super) fn begin(&mut self, mode: CallMode, budget: Duration) -> u64 {
        let now = Instant::now();
        self.mode = mode;
        self.started = now;
        self.deadline = now + budget;
        self.grown = 0;
        self.preempted = None;
        self.paused = Duration::ZERO;
        let first = match mode {
            CallMode::Foreground => budget.min(PREEMPT_AFTER),
            CallMode::Background => budget,
            CallMode::Throttled => Duration::from_millis(EPOCH_TICK_MS),
        };
        ticks(first)
    }

    /// Why the call was cut for turning heavy in the foreground, if it was.
    pub fn preempted(&self) -> Option<&'static str> {
        self.preempted
    }

    /// Time the call spent paused by throttling.
    pub fn paused(&self) -> Duration {
        self.paused
    }

    /// Whether the call was heavy: it ran past [`PREEMPT_AFTER`] (pauses
    /// not counted) or grew its memory by [`PREEMPT_GROWTH_BYTES`].
    pub fn heavy(&self) -> bool {
        self.preempted.is_some()
            || self.grown >= PREEMPT_GROWTH_BYTES
            || self.started.elapsed().saturating_sub(self.paused) >= PREEMPT_AFTER
    }

    /// The store's epoch callback: interrupt at the deadline, cut a
    /// foreground call past [`PREEMPT_AFTER`], pause a throttled one.
    pub(super) fn on_epoch(&mut self) -> UpdateDeadline {
        let now = Instant::now();
        if now >= self.deadline {
            return UpdateDeadline::Interrupt;
        }
        match self.mode {
            CallMode::Foreground if now - self.started >= PREEMPT_AFTER => {
                self.preempted = Some(RAN_LONG);
                UpdateDeadline::Interrupt
            }
            CallMode::Throttled => {
                let nap = Duration::from_millis(EPOCH_TICK_MS * THROTTLE_PAUSE_TICKS)
                    .min(self.deadline - now);
                std::thread::sleep(nap);
                self.paused += nap;
                UpdateDeadline::Continue(1)
            }
            CallMode::Foreground => UpdateDeadline::Continue(ticks(
                (PREEMPT_AFTER - (now - self.started)).min(self.deadline - now),
            )),
            CallMode::Background => UpdateDeadline::Continue(ticks(self.deadline - now)),
        }
    }
}

/// Epoch ticks in `d`, at least one.
fn ticks(d: Duration) -> u64 {
    (d.as_millis() as u64).div_ceil(EPOCH_TICK_MS).max(1)
}

impl ResourceLimiter for CallState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if !self.limits.memory_growing(current, desired, maximum)? {
            return Ok(false);
        }
        self.grown = self.grown.saturating_add(desired.saturating_sub(current));
        if self.mode == CallMode::Foreground && self.grown >= PREEMPT_GROWTH_BYTES {
            self.preempted = Some(GREW);
            return Err(wasmtime::format_err!("cut in the foreground: {GREW}"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Lower the calling thread's CPU priority to the lowest: the `SCHED_IDLE`
/// policy, under which any other thread that wakes up takes the CPU at
/// once (Linux), else the highest nice value. A thread may lower its own
/// priority but, unprivileged, never raise it again: background calls get
/// a thread each. A failure leaves it as it was.
pub fn lower_own_priority() {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy as Normal,
        ThreadPriority, ThreadSchedulePolicy,
    };
    let lowest = |policy| {
        set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(policy),
        )
    };
    #[cfg(target_os = "linux")]
    let lowered = lowest(Normal::Idle).or_else(|_| lowest(Normal::Other));
    #[cfg(not(target_os = "linux"))]
    let lowered = lowest(Normal::Other);
    if let Err(e) = lowered {
        tracing::debug!("cannot lower a plugin call's priority: {e:?}");
    }
}
