//! What one call into a plugin may use, and how it is stopped or slowed:
//! its clock (the deadline, the cut of a foreground call that turns out
//! heavy, the throttle of a misbehaving plugin's call) and its memory (the
//! cap, and the growth that makes a foreground call heavy).
//!
//! A call is judged by the CPU time it used (the calling thread's CPU
//! clock, host functions it called included), never by the time it spent
//! waiting for a CPU: on a machine whose cores are busy with other
//! programs an honest call takes longer on the wall clock but no more CPU.
//! The deadline is CPU time; a wall-clock ceiling of
//! [`WALL_CEILING_FACTOR`] times the deadline stops a call that makes no
//! progress at all, for liveness only.
//!
//! A worker calls a plugin in the foreground ([`CallMode::Foreground`]):
//! the cheap path every honest batch takes. A call that uses more than
//! [`PREEMPT_AFTER`] of CPU or grows its memory by [`PREEMPT_GROWTH_BYTES`]
//! there is cut: its effects were only buffered, so the worker runs the
//! batch again from the start in the background ([`CallMode::Background`]),
//! with what is left of its deadline. A background call yields to the
//! host's foreground work (batches handled in the foreground, from the call
//! to their commit: [`ForegroundCall`]): while any is under way it pauses a
//! tick at a time,
//! running at least one tick in [`BACKGROUND_YIELDS_MAX`] + 1, so a heavy
//! plugin takes what the light ones leave and is never starved by them.
//! Towards other programs on the machine it is an ordinary thread: the
//! operating system shares the CPU fairly, so a busy machine slows it down
//! but never stops it (an idle or batch OS priority would: `SCHED_IDLE` gets
//! 0.3 % of a core against a busy program). An infinite loop burns
//! [`PREEMPT_AFTER`] of a core before it yields to the other plugins.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, StoreLimits, UpdateDeadline};

use super::EPOCH_TICK_MS;

/// A foreground call that has used this much CPU time is cut and run
/// again in the background.
pub const PREEMPT_AFTER: Duration = Duration::from_millis(100);
/// Why a call cut for [`PREEMPT_AFTER`] was cut (keep the two together).
const RAN_LONG: &str = "used 100 ms of CPU time";

/// A foreground call that grows its memory by this much is cut and run
/// again in the background: copying that much in and out of the sandbox is
/// work the epoch clock does not see.
pub const PREEMPT_GROWTH_BYTES: usize = 16 << 20;
/// Why a call cut for [`PREEMPT_GROWTH_BYTES`] was cut (keep them together).
const GREW: &str = "grew its memory by 16 MiB";

/// A throttled call pauses this many times the CPU time it used since its
/// last pause: at most a tenth of a core.
pub const THROTTLE_PAUSE_TICKS: u64 = 9;

/// A call still running this many times its deadline after it started, on
/// the wall clock, is stopped however little CPU it used: liveness only,
/// far above what waiting for a busy CPU costs (a background call gets
/// about a tenth of a core against a busy program).
pub const WALL_CEILING_FACTOR: u32 = 60;

/// Ticks in a row a background call pauses while foreground calls run,
/// before it runs one: it gets at least a fiftieth of a core against them.
pub const BACKGROUND_YIELDS_MAX: u32 = 49;

/// Foreground batches under way now, in the whole process.
static FOREGROUND_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Counts a batch handled in the foreground as under way while it lives
/// (a worker holds it from the call to the batch's commit).
pub struct ForegroundCall(());

impl ForegroundCall {
    /// A foreground batch starts.
    pub fn enter() -> ForegroundCall {
        FOREGROUND_CALLS.fetch_add(1, Ordering::Relaxed);
        ForegroundCall(())
    }
}

impl Drop for ForegroundCall {
    fn drop(&mut self) {
        FOREGROUND_CALLS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The CPU time the calling thread has used so far.
pub fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Where and how a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallMode {
    /// On the worker's thread at normal priority; cut if it turns heavy.
    Foreground,
    /// Yielding to the host's foreground calls, never cut before its deadline: a
    /// plugin known to be heavy, or `init`.
    Background,
    /// In the background, and paused [`THROTTLE_PAUSE_TICKS`] times the
    /// CPU time it ran after each tick: a plugin that misbehaved. Its
    /// pauses count against its deadline.
    Throttled,
}

/// Why a call was stopped before it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A foreground call turned heavy, for this reason.
    Cut(&'static str),
    /// It used its deadline of CPU time (with its pauses, when throttled).
    Deadline,
    /// It ran [`WALL_CEILING_FACTOR`] times its deadline on the wall clock.
    WallCeiling,
}

/// The state of the call in progress, kept in the store: the epoch
/// callback and the resource limiter read and update it.
pub struct CallState {
    limits: StoreLimits,
    mode: CallMode,
    /// The CPU time the call may use.
    budget: Duration,
    /// The calling thread's CPU clock when the call began.
    cpu_start: Duration,
    /// The CPU time used when the throttle last paused.
    cpu_at_pause: Duration,
    /// The CPU time the call used, once it returned.
    cpu_used: Duration,
    /// When the call began, on the wall clock.
    started: Instant,
    /// The wall-clock ceiling.
    ceiling: Instant,
    grown: usize,
    stopped: Option<Stop>,
    /// Time the call spent paused by throttling.
    paused: Duration,
    /// Ticks in a row a background call paused for foreground calls.
    yields: u32,
}

impl CallState {
    pub(super) fn new(limits: StoreLimits) -> CallState {
        CallState {
            limits,
            mode: CallMode::Background,
            budget: Duration::ZERO,
            cpu_start: Duration::ZERO,
            cpu_at_pause: Duration::ZERO,
            cpu_used: Duration::ZERO,
            started: Instant::now(),
            ceiling: Instant::now(),
            grown: 0,
            stopped: None,
            paused: Duration::ZERO,
            yields: 0,
        }
    }

    /// The CPU time a call of `mode` with `budget` may use before it is
    /// cut (in the foreground, at [`PREEMPT_AFTER`]) or stopped at its
    /// deadline.
    pub fn cpu_limit(mode: CallMode, budget: Duration) -> Duration {
        match mode {
            CallMode::Foreground => budget.min(PREEMPT_AFTER),
            CallMode::Background | CallMode::Throttled => budget,
        }
    }

    /// Start a call of `mode` on this thread that may use `budget` of CPU
    /// time; returns the epoch ticks until the store's callback is first
    /// asked.
    pub(super) fn begin(&mut self, mode: CallMode, budget: Duration) -> u64 {
        self.mode = mode;
        self.budget = budget;
        self.cpu_start = thread_cpu();
        self.cpu_at_pause = Duration::ZERO;
        self.cpu_used = Duration::ZERO;
        self.started = Instant::now();
        self.ceiling = self.started + budget.saturating_mul(WALL_CEILING_FACTOR);
        self.grown = 0;
        self.stopped = None;
        self.paused = Duration::ZERO;
        self.yields = 0;
        let first = match mode {
            CallMode::Foreground => Self::cpu_limit(mode, budget),
            CallMode::Background | CallMode::Throttled => Duration::from_millis(EPOCH_TICK_MS),
        };
        ticks(first)
    }

    /// The call returned (or was stopped): note the CPU time it used. On
    /// the thread that made the call. A call that took less than half of
    /// [`PREEMPT_AFTER`] on the wall clock cannot have been heavy: its wall
    /// time stands for its CPU time (an upper bound), which saves reading
    /// the CPU clock (a system call) on the path of every light batch.
    pub(super) fn end(&mut self) {
        let wall = self.started.elapsed();
        self.cpu_used = if wall < PREEMPT_AFTER / 2 {
            wall
        } else {
            thread_cpu().saturating_sub(self.cpu_start)
        };
    }

    /// Why the call was stopped before it returned, if it was.
    pub fn stopped(&self) -> Option<Stop> {
        self.stopped
    }

    /// The CPU time the last call used.
    pub fn cpu_used(&self) -> Duration {
        self.cpu_used
    }

    /// Time the call spent paused by throttling.
    pub fn paused(&self) -> Duration {
        self.paused
    }

    /// Whether the call was heavy: it used [`PREEMPT_AFTER`] of CPU time or
    /// grew its memory by [`PREEMPT_GROWTH_BYTES`].
    pub fn heavy(&self) -> bool {
        matches!(self.stopped, Some(Stop::Cut(_)))
            || self.grown >= PREEMPT_GROWTH_BYTES
            || self.cpu_used >= PREEMPT_AFTER
    }

    /// The store's epoch callback, on the calling thread: stop the call at
    /// its deadline or wall-clock ceiling, cut a foreground call past
    /// [`PREEMPT_AFTER`], pause a throttled one. Between two asks the CPU
    /// clock advances at most as fast as the wall clock, so asking again
    /// after the CPU time left never misses a limit.
    pub(super) fn on_epoch(&mut self) -> UpdateDeadline {
        let now = Instant::now();
        let cpu = thread_cpu().saturating_sub(self.cpu_start);
        if now >= self.ceiling {
            self.stopped = Some(Stop::WallCeiling);
            return UpdateDeadline::Interrupt;
        }
        let charged = cpu + self.paused;
        if charged >= self.budget {
            self.stopped = Some(Stop::Deadline);
            return UpdateDeadline::Interrupt;
        }
        let left = (self.budget - charged).min(self.ceiling - now);
        match self.mode {
            CallMode::Foreground if cpu >= PREEMPT_AFTER => {
                self.stopped = Some(Stop::Cut(RAN_LONG));
                UpdateDeadline::Interrupt
            }
            CallMode::Foreground => {
                UpdateDeadline::Continue(ticks((PREEMPT_AFTER - cpu).min(left)))
            }
            CallMode::Throttled => {
                let ran = cpu.saturating_sub(self.cpu_at_pause);
                let nap = ran.saturating_mul(THROTTLE_PAUSE_TICKS as u32).min(left);
                std::thread::sleep(nap);
                self.paused += nap;
                self.cpu_at_pause = cpu;
                UpdateDeadline::Continue(1)
            }
            CallMode::Background => {
                if FOREGROUND_CALLS.load(Ordering::Relaxed) > 0
                    && self.yields < BACKGROUND_YIELDS_MAX
                {
                    let nap = Duration::from_millis(EPOCH_TICK_MS).min(self.ceiling - now);
                    std::thread::sleep(nap);
                    self.yields += 1;
                } else {
                    self.yields = 0;
                }
                UpdateDeadline::Continue(1)
            }
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
            self.stopped = Some(Stop::Cut(GREW));
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
