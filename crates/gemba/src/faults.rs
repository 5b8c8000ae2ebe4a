//! Test-only fault injection, compiled only into test builds (`--features test-faults`, which
//! `scripts/test.sh` turns on). A production build has none of it: a stray `GEMBA_TEST_*`
//! variable there is reported once on stderr and otherwise ignored.
//!
//! - `GEMBA_TEST_SLOW_TOOL=tool@ms` delays a tool (as a slow disk would), checking its budget so a
//!   timeout or a cancel still stops it;
//! - `GEMBA_TEST_PANIC_TOOL=tool[@N]` panics inside the tool (every Nth call);
//! - `GEMBA_TEST_BURN_TOOL=tool@N` adds N rounds of pointless CPU work to every call of a tool: a
//!   planted regression for the performance gate to catch;
//! - `GEMBA_TEST_SAVE_PAUSE_MS=ms` holds a save between writing and renaming, to kill the server
//!   there;
//! - `GEMBA_TEST_APPEND_PAUSE_MS=ms` holds a fork edit halfway through writing its log line, to
//!   kill the server there.

#[cfg(not(feature = "test-faults"))]
use std::time::Duration;

#[cfg(not(feature = "test-faults"))]
use sheets::{Budget, SheetsError};

/// The variables this module reads.
#[cfg_attr(feature = "test-faults", allow(dead_code))]
pub const VARIABLES: [&str; 5] = [
    "GEMBA_TEST_SLOW_TOOL",
    "GEMBA_TEST_PANIC_TOOL",
    "GEMBA_TEST_BURN_TOOL",
    "GEMBA_TEST_SAVE_PAUSE_MS",
    "GEMBA_TEST_APPEND_PAUSE_MS",
];

#[cfg(feature = "test-faults")]
mod enabled {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use sheets::{Budget, SheetsError};

    /// The faults this process was asked to inject.
    #[derive(Debug, Default)]
    pub struct Faults {
        panic_tool: Option<(String, u64)>,
        panic_count: AtomicU64,
        slow_tool: Option<(String, Duration)>,
        burn_tool: Option<(String, u64)>,
    }

    fn tool_at<T: std::str::FromStr>(var: &str) -> Option<(String, Option<T>)> {
        let s = std::env::var(var).ok().filter(|s| !s.is_empty())?;
        Some(match s.split_once('@') {
            Some((t, n)) => (t.to_string(), n.parse().ok()),
            None => (s, None),
        })
    }

    impl Faults {
        pub fn from_env() -> Self {
            Self {
                panic_tool: tool_at::<u64>("GEMBA_TEST_PANIC_TOOL").map(|(t, n)| (t, n.unwrap_or(1).max(1))),
                panic_count: AtomicU64::new(0),
                slow_tool: tool_at::<u64>("GEMBA_TEST_SLOW_TOOL")
                    .and_then(|(t, ms)| Some((t, Duration::from_millis(ms?)))),
                burn_tool: tool_at::<u64>("GEMBA_TEST_BURN_TOOL").and_then(|(t, n)| Some((t, n?))),
            }
        }

        /// Whether a fault is planted on `tool` (its calls then always run on the blocking pool).
        pub fn touches(&self, tool: &str) -> bool {
            [
                &self.slow_tool.as_ref().map(|t| &t.0),
                &self.panic_tool.as_ref().map(|t| &t.0),
                &self.burn_tool.as_ref().map(|t| &t.0),
            ]
            .iter()
            .any(|t| t.is_some_and(|t| t == tool))
        }

        /// Before the tool runs: the planted delay (stopped by the budget) and panic.
        pub fn before(&self, tool: &str, budget: &Budget) -> Result<(), SheetsError> {
            if let Some((t, delay)) = &self.slow_tool
                && t == tool
            {
                let until = Instant::now() + *delay;
                while Instant::now() < until {
                    budget.check()?;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            if let Some((t, every)) = &self.panic_tool
                && t == tool
                && (self.panic_count.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(*every)
            {
                panic!("injected fault: GEMBA_TEST_PANIC_TOOL={tool}");
            }
            Ok(())
        }

        /// After the tool ran: the planted CPU burn.
        pub fn after(&self, tool: &str) {
            if let Some((t, rounds)) = &self.burn_tool
                && t == tool
            {
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for i in 0..*rounds {
                    h = (h ^ i).wrapping_mul(0x0100_0000_01b3);
                }
                std::hint::black_box(h);
            }
        }
    }

    fn pause(var: &str) -> Option<Duration> {
        std::env::var(var).ok().and_then(|v| v.parse().ok()).filter(|&ms| ms > 0).map(Duration::from_millis)
    }

    pub fn save_pause() -> Option<Duration> {
        pause("GEMBA_TEST_SAVE_PAUSE_MS")
    }

    pub fn append_pause() -> Option<Duration> {
        pause("GEMBA_TEST_APPEND_PAUSE_MS")
    }
}

#[cfg(feature = "test-faults")]
pub use enabled::{Faults, append_pause, save_pause};

/// A production build injects nothing.
#[cfg(not(feature = "test-faults"))]
#[derive(Debug, Default)]
pub struct Faults;

#[cfg(not(feature = "test-faults"))]
impl Faults {
    pub fn from_env() -> Self {
        let set: Vec<&str> = VARIABLES.iter().copied().filter(|v| std::env::var_os(v).is_some()).collect();
        if !set.is_empty() {
            tracing::warn!(
                "ignoring {}: fault injection is compiled only into test builds (--features test-faults)",
                set.join(", ")
            );
        }
        Self
    }

    #[inline(always)]
    pub fn touches(&self, _tool: &str) -> bool {
        false
    }

    #[inline(always)]
    pub fn before(&self, _tool: &str, _budget: &Budget) -> Result<(), SheetsError> {
        Ok(())
    }

    #[inline(always)]
    pub fn after(&self, _tool: &str) {}
}

#[cfg(not(feature = "test-faults"))]
pub fn save_pause() -> Option<Duration> {
    None
}

#[cfg(not(feature = "test-faults"))]
pub fn append_pause() -> Option<Duration> {
    None
}
