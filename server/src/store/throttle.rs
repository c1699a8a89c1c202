//! The pairing-code guessing throttle: failed attempts per client address per minute, in the
//! database so that every instance behind a load balancer counts together.

use sqlx::Row;

use super::Database;
use crate::store::StoreError;

const WINDOW_SECONDS: i64 = 60;

fn window(now: i64) -> i64 {
    now - now.rem_euclid(WINDOW_SECONDS)
}

/// Failures recorded for `client` in the current minute.
pub async fn failures(db: &Database, client: &str, now: i64) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "SELECT failures FROM pairing_failures WHERE client = $1 AND window_start = $2",
    )
    .bind(client)
    .bind(window(now))
    .fetch_optional(db.pool())
    .await?;
    Ok(match row {
        Some(r) => r.try_get("failures")?,
        None => 0,
    })
}

/// Counts one failure for `client`.
pub async fn record_failure(db: &Database, client: &str, now: i64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO pairing_failures (client, window_start, failures) VALUES ($1, $2, 1) \
         ON CONFLICT (client, window_start) DO UPDATE SET failures = pairing_failures.failures + 1",
    )
    .bind(client)
    .bind(window(now))
    .execute(db.writer())
    .await?;
    if rand::random::<u8>() < 8 {
        sqlx::query("DELETE FROM pairing_failures WHERE window_start < $1")
            .bind(window(now) - 3600)
            .execute(db.writer())
            .await?;
    }
    Ok(())
}
