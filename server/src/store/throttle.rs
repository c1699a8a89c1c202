//! The pairing-code guessing throttle: failed attempts per key (the domain's keys: a client
//! address within a code bucket, and a code bucket) per minute, in the database so that every
//! instance behind a load balancer counts together. The `client` column holds the key.

use super::Database;
use crate::store::StoreError;

const WINDOW_SECONDS: i64 = 60;

/// The housekeeping of [`take_attempt`]: the windows older than an hour, read through
/// `pairing_failures_by_window` (a pairing attempt from each of many addresses writes a row,
/// so the table grows with an attack, and the housekeeping must not read it whole).
pub(crate) const FORGET_OLD_WINDOWS: &str = "DELETE FROM pairing_failures WHERE window_start < $1";

fn window(now: i64) -> i64 {
    now - now.rem_euclid(WINDOW_SECONDS)
}

/// Takes one pairing attempt under `client` (a throttle key) in the current minute, atomically,
/// with one conditional statement, before its code is compared: counts it and returns `true`
/// if fewer than `limit` are counted, else `false` (counting nothing). Concurrent attempts each
/// take their own slot, so no more than `limit` codes are checked per key and minute. An
/// attempt that pairs is given back.
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
        sqlx::query(FORGET_OLD_WINDOWS)
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn database(dir: &tempfile::TempDir) -> Database {
        let url = format!("sqlite://{}", dir.path().join("throttle.db").display());
        Database::connect(&url, 4).await.expect("database")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_concurrent_burst_takes_no_more_than_the_limit_per_key() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let db = database(&dir).await;
        let now = 1_800_000_000;
        let mut takes = Vec::new();
        for i in 0..40 {
            let db = db.clone();
            let key = if i % 2 == 0 { "a" } else { "b" };
            takes.push(tokio::spawn(async move {
                take_attempt(&db, key, now, 7).await.expect("take")
            }));
        }
        let mut taken = 0;
        for take in takes {
            taken += usize::from(take.await.expect("task"));
        }
        assert_eq!(taken, 14, "7 for each of the two keys");
        // A refund frees exactly one slot of its key, in its window only.
        refund_attempt(&db, "a", now).await.expect("refund");
        assert!(take_attempt(&db, "a", now, 7).await.expect("take"));
        assert!(!take_attempt(&db, "a", now, 7).await.expect("take"));
        assert!(!take_attempt(&db, "b", now, 7).await.expect("take"));
        // The next minute starts empty.
        assert!(take_attempt(&db, "a", now + 60, 7).await.expect("take"));
    }
}
