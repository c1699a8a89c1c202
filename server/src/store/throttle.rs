//! The pairing-code guessing throttle: failed attempts per client address per minute, in the
//! database so that every instance behind a load balancer counts together.

use super::Database;
use crate::store::StoreError;

const WINDOW_SECONDS: i64 = 60;

fn window(now: i64) -> i64 {
    now - now.rem_euclid(WINDOW_SECONDS)
}

/// Takes one pairing attempt for `client` in the current minute, atomically, before its code
/// is compared: counts it and returns `true` if fewer than `limit` are counted, else `false`
/// (counting nothing). Concurrent attempts each take their own slot, so no more than `limit`
/// codes are checked per address and minute. An attempt that pairs is given back.
pub async fn take_attempt(
    db: &Database,
    client: &str,
    now: i64,
    limit: i64,
) -> Result<bool, StoreError> {
    let taken = sqlx::query(
        "INSERT INTO pairing_failures (client, window_start, failures) VALUES ($1, $2, 1) \
         ON CONFLICT (client, window_start) DO UPDATE SET failures = pairing_failures.failures + 1 \
         WHERE pairing_failures.failures < $3 RETURNING failures",
    )
    .bind(client)
    .bind(window(now))
    .bind(limit)
    .fetch_optional(db.writer())
    .await?
    .is_some();
    if rand::random::<u8>() < 8 {
        sqlx::query("DELETE FROM pairing_failures WHERE window_start < $1")
            .bind(window(now) - 3600)
            .execute(db.writer())
            .await?;
    }
    Ok(taken)
}

/// Gives back an attempt taken at `now` that did not guess (it paired, or its registration was
/// refused before any code was compared).
pub async fn refund_attempt(db: &Database, client: &str, now: i64) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE pairing_failures SET failures = failures - 1 \
         WHERE client = $1 AND window_start = $2 AND failures > 0",
    )
    .bind(client)
    .bind(window(now))
    .execute(db.writer())
    .await?;
    Ok(())
}
