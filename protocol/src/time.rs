//! Time on the wire: whole seconds since the Unix epoch, UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, as carried in every signed payload.
pub type UnixSeconds = i64;

/// The current time in seconds since the Unix epoch.
///
/// A clock before 1970 (a broken device clock) reads as 0, which every freshness check then
/// rejects as too old; it never panics.
pub fn now() -> UnixSeconds {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
