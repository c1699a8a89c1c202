//! How busy the store's connections are, for the operator ([`super::Database::connection_use`]):
//! how many a request holds and how many are idle, how many requests wait for one now, how long
//! the waits took, how many gave up, and how many new connections failed to open.
//!
//! What is counted is where a request can wait: on PostgreSQL, the requests' own connections
//! (`store/pg_connections.rs`, at most `max_connections`); on SQLite, the turns of the one
//! writer connection (`store/writer.rs`). SQLite's reads never wait: each runs on an idle read
//! connection or a new one, on the calling thread.
//!
//! The figures are plain atomics the store updates as it hands connections out; `/metrics`
//! reads them when it is scraped. Written by hand because neither sqlx's pool (which the
//! requests no longer use) nor the metrics library can see these waits.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// The upper bounds, in seconds, of the buckets the waits are counted in: from a connection at
/// once (well under 100 µs) to a wait that reaches the acquire timeout (10 s by default).
/// Steps of 1, 2.5 and 5, so that a quantile read from them is within a factor of 2.5.
pub const WAIT_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Where the requests of this process wait for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionKind {
    /// PostgreSQL: the connections requests run their statements and transactions on.
    PostgresRequests,
    /// SQLite: the one connection that writes, taken in turn.
    SqliteWriter,
}

impl ConnectionKind {
    /// The name `/metrics` labels it with (`pool="requests"` or `pool="writer"`).
    pub fn label(self) -> &'static str {
        match self {
            ConnectionKind::PostgresRequests => "requests",
            ConnectionKind::SqliteWriter => "writer",
        }
    }
}

/// A reading of [`super::Database::connection_use`].
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionUse {
    /// Which connections these are.
    pub kind: ConnectionKind,
    /// The most there can be at once.
    pub max: u64,
    /// Held by a request now (or, on PostgreSQL, being opened or flushed for one).
    pub in_use: u64,
    /// Open and free.
    pub idle: u64,
    /// Requests waiting for one now.
    pub waiting: u64,
    /// The waits that ended with a connection, and how long they took.
    pub waits: WaitCounts,
    /// The waits that gave up at the acquire timeout (each answered as unavailability).
    pub timeouts: u64,
    /// New connections the database refused or that failed to open (PostgreSQL; each answered
    /// as unavailability): a database down or unreachable, where `timeouts` is one too busy.
    pub open_failures: u64,
}

/// Waits counted by how long they took: a histogram over [`WAIT_BUCKETS`].
#[derive(Clone, Debug, PartialEq)]
pub struct WaitCounts {
    /// How many waits ended with a connection.
    pub count: u64,
    /// Their summed duration, in seconds.
    pub sum_seconds: f64,
    /// For each bucket of [`WAIT_BUCKETS`], how many took at most its bound and more than the
    /// previous one's; the last entry counts those longer than the last bound.
    pub buckets: [u64; WAIT_BUCKETS.len() + 1],
}

/// The counters one kind of connection keeps (see the module's documentation).
#[derive(Debug, Default)]
pub(crate) struct WaitRecorder {
    waiting: AtomicUsize,
    count: AtomicU64,
    sum_nanos: AtomicU64,
    timeouts: AtomicU64,
    open_failures: AtomicU64,
    buckets: [AtomicU64; WAIT_BUCKETS.len() + 1],
}

/// Counts a caller as waiting until dropped.
pub(crate) struct Waiting<'a>(&'a WaitRecorder);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl WaitRecorder {
    /// Counts a caller as waiting until the returned guard is dropped.
    pub(crate) fn waiting(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(self)
    }

    /// Counts a wait that ended with a connection after `waited`.
    pub(crate) fn record(&self, waited: Duration) {
        let seconds = waited.as_secs_f64();
        let bucket = WAIT_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(WAIT_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a wait that gave up at the acquire timeout.
    pub(crate) fn timed_out(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a new connection that failed to open.
    pub(crate) fn open_failed(&self) {
        self.open_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests waiting now.
    pub(crate) fn waiting_now(&self) -> u64 {
        self.waiting.load(Ordering::Acquire) as u64
    }

    /// The waits so far.
    pub(crate) fn waits(&self) -> WaitCounts {
        let mut buckets = [0; WAIT_BUCKETS.len() + 1];
        for (count, bucket) in buckets.iter_mut().zip(&self.buckets) {
            *count = bucket.load(Ordering::Relaxed);
        }
        WaitCounts {
            // The buckets' total, not `count`: read one after the other, they may differ by a
            // wait that ended meanwhile, and a histogram's count must match its buckets.
            count: buckets.iter().sum(),
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            buckets,
        }
    }

    /// The waits that gave up so far.
    pub(crate) fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    /// The connections that failed to open so far.
    pub(crate) fn open_failures(&self) -> u64 {
        self.open_failures.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_fall_in_the_bucket_of_their_bound_and_beyond_the_last() {
        let recorder = WaitRecorder::default();
        recorder.record(Duration::from_micros(40));
        recorder.record(Duration::from_micros(100));
        recorder.record(Duration::from_micros(101));
        recorder.record(Duration::from_millis(3));
        recorder.record(Duration::from_secs(11));
        let waits = recorder.waits();
        assert_eq!(waits.count, 5);
        assert_eq!(waits.buckets[0], 2, "40 µs and exactly 100 µs");
        assert_eq!(waits.buckets[1], 1, "101 µs");
        assert_eq!(waits.buckets[5], 1, "3 ms is in the 5 ms bucket");
        assert_eq!(waits.buckets[WAIT_BUCKETS.len()], 1, "11 s is past 10 s");
        assert!((waits.sum_seconds - 11.003241).abs() < 1e-9);
        assert_eq!(recorder.timeouts(), 0);
    }

    #[test]
    fn a_caller_waits_until_its_guard_is_dropped() {
        let recorder = WaitRecorder::default();
        let first = recorder.waiting();
        let second = recorder.waiting();
        assert_eq!(recorder.waiting_now(), 2);
        drop(first);
        assert_eq!(recorder.waiting_now(), 1);
        drop(second);
        recorder.timed_out();
        recorder.open_failed();
        assert_eq!(recorder.waiting_now(), 0);
        assert_eq!(recorder.timeouts(), 1);
        assert_eq!(recorder.open_failures(), 1);
        assert_eq!(recorder.waits().count, 0);
    }
}
