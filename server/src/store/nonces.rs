//! Nonces of device-signed calls: each accepted once.

use sqlx::Any;
use tessera_protocol::ids::EnrollmentId;

use super::{Database, Engine, is_unique_violation};
use crate::store::StoreError;

/// The insert of [`record_once`].
pub(crate) const RECORD: &str = "INSERT INTO device_nonces (nonce_key, expires_at) VALUES ($1, $2)";

/// The housekeeping of [`record_once`]: nonces that can no longer be fresh (those that expired
/// before `$1`, [`forget_expired`]'s cutoff).
pub(crate) const FORGET_EXPIRED: &str = "DELETE FROM device_nonces WHERE expires_at < $1";

/// The key a device call's nonce is recorded under: `<enrollment id>:<nonce>`, so that one
/// enrollment's keys are a range ([`enrollment_range`]).
pub(crate) fn call_key(enrollment: &str, nonce: &str) -> String {
    format!("{enrollment}:{nonce}")
}

/// Forgets the nonces of one enrollment's calls (keyed by [`call_key`],
/// [`enrollment_range`]): the keys from `$1` up to `$2`, a range of the primary key compared
/// byte by byte (SQLite's `BINARY`; on PostgreSQL the key's collation is `C`, migration
/// `0049_nonce_keys_in_byte_order.sql`), so a user's deletion reads only those nonces.
pub(crate) const FORGET_ENROLLMENT: &str =
    "DELETE FROM device_nonces WHERE nonce_key >= $1 AND nonce_key < $2";

/// The keys [`FORGET_ENROLLMENT`] deletes for `enrollment`: from `<enrollment id>:` up to, not
/// including, `<enrollment id>;` (`;` follows `:` in byte order), which holds exactly the keys
/// that begin with `<enrollment id>:`.
pub(crate) fn enrollment_range(enrollment: &str) -> (String, String) {
    (format!("{enrollment}:"), format!("{enrollment};"))
}

/// How long after its expiry a nonce is kept (seconds): the clock difference between instances
/// the server tolerates, as large as the largest skew it allows on a message's times (60 s on
/// request objects and flow authorizations, 30 s on client assertions). A message is accepted
/// until its expiry by the clock of the instance that checks it; an instance whose clock is
/// behind another's still accepts it after the other's clock passed its expiry, and must then
/// still find its nonce, or it would accept a replay. Device calls' nonces already expire a
/// minute after their window; this margin comes on top.
pub(crate) const KEPT_AFTER_EXPIRY: i64 = 60;

/// Forgets, on `executor`, the nonces expired more than [`KEPT_AFTER_EXPIRY`] before `now`:
/// those no instance can take for fresh any more.
async fn forget_expired<'c>(
    executor: impl sqlx::Executor<'c, Database = Any>,
    now: i64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(FORGET_EXPIRED)
        .bind(now.saturating_sub(KEPT_AFTER_EXPIRY))
        .execute(executor)
        .await?
        .rows_affected())
}

/// Records a nonce; `false` if it was seen before (a replay).
pub async fn record_once(
    db: &Database,
    key: &str,
    expires_at: i64,
    now: i64,
) -> Result<bool, StoreError> {
    record_once_then(db, key, expires_at, now, housekeeping_due()).await
}

/// [`record_once`], with the housekeeping after it when `housekeeping`.
async fn record_once_then(
    db: &Database,
    key: &str,
    expires_at: i64,
    now: i64,
    housekeeping: bool,
) -> Result<bool, StoreError> {
    let result = sqlx::query(RECORD)
        .bind(key)
        .bind(expires_at)
        .execute(db.writer())
        .await;
    match result {
        Ok(_) => {
            if housekeeping {
                forget_expired_after_recording(db.writer(), now).await;
            }
            Ok(true)
        }
        Err(e) if is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether a call that recorded its nonce also does the housekeeping: about one in 32.
fn housekeeping_due() -> bool {
    rand::random::<u8>() < 8
}

/// The housekeeping after a nonce was recorded ([`forget_expired`]). Its failure is logged and
/// not the call's: the nonce is already recorded, so a call answered with an error here could
/// not be retried (its retry would be refused as a replay). Expired nonces left behind are
/// forgotten by a later call.
async fn forget_expired_after_recording<'c>(
    executor: impl sqlx::Executor<'c, Database = Any>,
    now: i64,
) {
    if let Err(error) = forget_expired(executor, now).await {
        tracing::warn!(%error, "expired nonces not forgotten this time");
    }
}

/// Records a device call made on `conn` (a request's connection, from [`Database::reader`]):
/// its nonce once (`false`: seen before, a replay) and, with `touch`, the enrollment's last
/// seen time. On PostgreSQL the writes run on `conn` itself; on SQLite on the writer. The two
/// writes, when both are due, are one transaction; a nonce alone is one statement.
pub async fn record_call(
    db: &Database,
    conn: &mut crate::store::ReadConn,
    key: &str,
    expires_at: i64,
    now: i64,
    touch: Option<&EnrollmentId>,
) -> Result<bool, StoreError> {
    record_call_then(db, conn, key, expires_at, now, touch, housekeeping_due()).await
}

/// [`record_call`], with the housekeeping after it when `housekeeping`.
async fn record_call_then(
    db: &Database,
    conn: &mut crate::store::ReadConn,
    key: &str,
    expires_at: i64,
    now: i64,
    touch: Option<&EnrollmentId>,
    housekeeping: bool,
) -> Result<bool, StoreError> {
    let fresh = if let Some(enrollment) = touch {
        let mut tx = db.write_on(conn).await?;
        if !insert_nonce(&mut *tx, key, expires_at).await? {
            // The transaction is rolled back as it is dropped: nothing was written.
            return Ok(false);
        }
        super::enrollments::touch_on(&mut *tx, enrollment, now).await?;
        tx.commit().await?;
        true
    } else {
        match db.engine() {
            Engine::Postgres => insert_nonce(&mut **conn, key, expires_at).await?,
            Engine::Sqlite => insert_nonce(db.writer(), key, expires_at).await?,
        }
    };
    // Now and then, the housekeeping: a statement of its own, after the call's, on the same
    // connection. Taking another one from the pool while the request holds `conn` could, with
    // as many such calls at once as the pool has connections, leave every connection held by a
    // call waiting for one (until the pool's acquire timeout failed them all).
    if fresh && housekeeping {
        match db.engine() {
            Engine::Postgres => forget_expired_after_recording(&mut **conn, now).await,
            Engine::Sqlite => forget_expired_after_recording(db.writer(), now).await,
        };
    }
    Ok(fresh)
}

/// The nonce insert on `executor`: `false` if the nonce was seen before.
async fn insert_nonce<'c>(
    executor: impl sqlx::Executor<'c, Database = Any>,
    key: &str,
    expires_at: i64,
) -> Result<bool, StoreError> {
    let result = sqlx::query(RECORD)
        .bind(key)
        .bind(expires_at)
        .execute(executor)
        .await;
    match result {
        Ok(_) => Ok(true),
        Err(e) if is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Enough calls that the housekeeping (one call in 32) runs many times over.
    const CALLS: usize = 600;

    /// Records `CALLS` calls on the one connection of a one-connection pool: a call that took
    /// a second connection (its housekeeping) would wait for the one it holds itself and fail
    /// once the acquire timeout passed.
    async fn calls_hold_only_their_own_connection(url: &str) {
        let db = Database::connect_with(url, 1, Duration::from_secs(1), None)
            .await
            .expect("database");
        let now = 1_000_000;
        // Expired ones, for the housekeeping to forget.
        for n in 0..8 {
            let key = format!("old-{n}-{}", rand::random::<u64>());
            assert!(
                record_once(&db, &key, now - 100, now - 200)
                    .await
                    .expect("record")
            );
        }
        let mut conn = db.reader().await.expect("the pool's one connection");
        for n in 0..CALLS {
            let key = format!("call-{n}-{}", rand::random::<u64>());
            let fresh = record_call(&db, &mut conn, &key, now + 300, now, None)
                .await
                .expect("recorded on the call's own connection");
            assert!(fresh);
            let replayed = record_call(&db, &mut conn, &key, now + 300, now, None)
                .await
                .expect("replay checked");
            assert!(!replayed, "a nonce is accepted once");
        }
    }

    #[tokio::test]
    async fn a_device_call_holds_only_its_own_connection_on_sqlite() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        calls_hold_only_their_own_connection(&url).await;
    }

    #[tokio::test]
    async fn a_device_call_holds_only_its_own_connection_on_postgres() {
        let Some(url) = crate::store::postgres_url_for_tests("run it on PostgreSQL") else {
            return;
        };
        // A schema of its own: its housekeeping, on a clock of its own, forgets (and keeps)
        // only its own nonces, whatever the tests sharing the database do.
        let (schema_url, schema) = crate::store::postgres_fresh_schema(&url, "nonces").await;
        calls_hold_only_their_own_connection(&schema_url).await;
        crate::store::postgres_drop_schema(&url, &schema).await;
    }

    /// A nonce expired by this instance's clock, but not by the clock of an instance up to
    /// [`KEPT_AFTER_EXPIRY`] behind, survives the housekeeping, and a replay of it is still
    /// refused; one expired longer ago is forgotten.
    async fn housekeeping_keeps_nonces_another_instance_still_takes_for_fresh(db: &Database) {
        let now = 2_000_000;
        let key = |what: &str| format!("{what}-{}", rand::random::<u64>());
        let (just_expired, long_expired) = (key("just-expired"), key("long-expired"));
        for (nonce, expires_at) in [
            (&just_expired, now - KEPT_AFTER_EXPIRY + 1),
            (&long_expired, now - KEPT_AFTER_EXPIRY - 1),
        ] {
            assert!(
                record_once(db, nonce, expires_at, expires_at - 300)
                    .await
                    .expect("record")
            );
        }
        forget_expired(db.writer(), now)
            .await
            .expect("housekeeping");
        assert!(
            !record_once(db, &just_expired, now + 300, now - KEPT_AFTER_EXPIRY)
                .await
                .expect("replay checked"),
            "a replay on an instance whose clock is behind is refused"
        );
        assert!(
            record_once(db, &long_expired, now + 300, now)
                .await
                .expect("recorded again"),
            "a nonce long expired is forgotten"
        );
    }

    /// A recorded nonce whose housekeeping then fails still answers `true`: the call is not
    /// failed after its nonce was taken (its retry would be a replay), and a replay of it is
    /// still refused. The housekeeping is made to fail by a trigger refusing every delete.
    #[tokio::test]
    async fn a_failed_housekeeping_does_not_fail_the_call_that_recorded_its_nonce() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let db = Database::connect(&url, 2).await.expect("database");
        let now = 3_000_000;
        // An expired nonce for every housekeeping to try to forget (the trigger keeps it).
        assert!(
            record_once_then(&db, "expired", now - 600, now - 900, false)
                .await
                .expect("record")
        );
        sqlx::query(
            "CREATE TRIGGER refuse_forgetting BEFORE DELETE ON device_nonces \
             BEGIN SELECT RAISE(ABORT, 'deletes refused'); END",
        )
        .execute(db.writer())
        .await
        .expect("trigger");
        forget_expired(db.writer(), now)
            .await
            .expect_err("the housekeeping fails");
        let key = format!("once-{}", rand::random::<u64>());
        assert!(
            record_once_then(&db, &key, now + 300, now, true)
                .await
                .expect("recorded, whatever the housekeeping did")
        );
        assert!(
            !record_once_then(&db, &key, now + 300, now, true)
                .await
                .expect("replay checked")
        );
        let mut conn = db.reader().await.expect("connection");
        let enrollment = EnrollmentId::generate();
        for touch in [None, Some(&enrollment)] {
            let key = format!("call-{}", rand::random::<u64>());
            assert!(
                record_call_then(&db, &mut conn, &key, now + 300, now, touch, true)
                    .await
                    .expect("recorded, whatever the housekeeping did")
            );
            assert!(
                !record_call_then(&db, &mut conn, &key, now + 300, now, touch, true)
                    .await
                    .expect("replay checked")
            );
        }
    }

    /// A SQLite database in `dir`, and the PostgreSQL one `DATABASE_URL` names, if any.
    fn engine_urls(dir: &tempfile::TempDir) -> Vec<String> {
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let mut urls = vec![url];
        urls.extend(crate::store::postgres_url_for_tests(
            "keep and forget nonces on PostgreSQL",
        ));
        urls
    }

    #[tokio::test]
    async fn nonces_are_kept_for_the_clock_skew_after_they_expire() {
        let dir = tempfile::tempdir().expect("temporary folder");
        for url in engine_urls(&dir) {
            // On PostgreSQL a schema of its own: another test's housekeeping, on another
            // clock, would forget the nonce this one expects kept (and this one's, theirs).
            let fresh = match url.starts_with("postgres") {
                true => Some(crate::store::postgres_fresh_schema(&url, "nonces").await),
                false => None,
            };
            let at = fresh.as_ref().map_or(url.as_str(), |(at, _)| at.as_str());
            let db = Database::connect(at, 2).await.expect("database");
            housekeeping_keeps_nonces_another_instance_still_takes_for_fresh(&db).await;
            db.close().await;
            if let Some((_, schema)) = fresh {
                crate::store::postgres_drop_schema(&url, &schema).await;
            }
        }
    }

    /// One enrollment's nonces go by the range of their keys, and only theirs: not those of an
    /// enrollment whose id extends it, nor keys beside the range's ends. On PostgreSQL the key
    /// compares byte by byte whatever the database's collation (migration 0049).
    #[tokio::test]
    async fn an_enrollments_nonces_go_by_the_range_of_their_keys_and_only_theirs() {
        let dir = tempfile::tempdir().expect("temporary folder");
        for url in engine_urls(&dir) {
            let db = Database::connect(&url, 2).await.expect("database");
            let enrollment = format!("enr_{:032x}", rand::random::<u128>());
            let keys = [
                call_key(&enrollment, "nonce-1"),
                call_key(&enrollment, "Nonce_2-x"),
                call_key(&enrollment, ""),
                format!("{enrollment}a:nonce-1"),
                format!("{enrollment}_:nonce-1"),
                format!("{enrollment};"),
                enrollment.clone(),
            ];
            // Unexpired by any clock: the housekeeping of other tests sharing the database
            // leaves them.
            for key in &keys {
                assert!(
                    record_once(&db, key, i64::MAX / 2, 1_000)
                        .await
                        .expect("record")
                );
            }
            let (from, to) = enrollment_range(&enrollment);
            let forgotten = sqlx::query(FORGET_ENROLLMENT)
                .bind(from)
                .bind(to)
                .execute(db.writer())
                .await
                .expect("forget")
                .rows_affected();
            assert_eq!(forgotten, 3, "{url}");
            for (n, key) in keys.iter().enumerate() {
                let kept: Option<String> =
                    sqlx::query_scalar("SELECT nonce_key FROM device_nonces WHERE nonce_key = $1")
                        .bind(key)
                        .fetch_optional(db.pool())
                        .await
                        .expect("read");
                assert_eq!(kept.is_some(), n >= 3, "{url}: {key}");
                sqlx::query("DELETE FROM device_nonces WHERE nonce_key = $1")
                    .bind(key)
                    .execute(db.writer())
                    .await
                    .expect("cleaned up");
            }
            if db.engine() == Engine::Postgres {
                let collation: Option<String> = sqlx::query_scalar(
                    "SELECT collation_name::text FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = 'device_nonces' \
                     AND column_name = 'nonce_key'",
                )
                .fetch_one(db.pool())
                .await
                .expect("the key's collation");
                assert_eq!(collation.as_deref(), Some("C"));
            }
            db.close().await;
        }
    }
}
