//! Time, read from one injected clock: the server never asks the system for the time in its
//! rules, so tests move time forward instead of sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Where the server reads the time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;

    /// Seconds since the Unix epoch.
    fn now(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that moves only when told: starts at the system time, then [`ManualClock::advance`]
/// moves it forward. Clones share one time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock reading the system's time now.
    pub fn new() -> Self {
        Self(Arc::new(AtomicI64::new(SystemClock.now_ms())))
    }

    /// A clock reading `ms` milliseconds since the Unix epoch.
    pub fn at_ms(ms: i64) -> Self {
        Self(Arc::new(AtomicI64::new(ms)))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The clock a server uses when none is configured.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let clock = ManualClock::at_ms(1_000_500);
        let other = clock.clone();
        assert_eq!(clock.now(), 1000);
        other.advance(Duration::from_millis(600));
        assert_eq!(clock.now_ms(), 1_001_100);
        assert_eq!(clock.now(), 1001);
    }

    #[test]
    fn seconds_round_down_before_the_epoch_too() {
        assert_eq!(ManualClock::at_ms(-1).now(), -1);
    }
}
