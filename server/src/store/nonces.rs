//! Nonces of device-signed calls: each accepted once.

use sqlx::Any;
use tessera_protocol::ids::EnrollmentId;

use super::{Database, Engine, is_unique_violation};
use crate::store::StoreError;

/// The insert of [`record_once`].
pub(crate) const RECORD: &str = "INSERT INTO device_nonces (nonce_key, expires_at) VALUES ($1, $2)";

/// The housekeeping of [`record_once`]: nonces that can no longer be fresh.
pub(crate) const FORGET_EXPIRED: &str = "DELETE FROM device_nonces WHERE expires_at < $1";

/// Records a nonce; `false` if it was seen before (a replay).
pub async fn record_once(
    db: &Database,
    key: &str,
    expires_at: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let result = sqlx::query(RECORD)
        .bind(key)
        .bind(expires_at)
        .execute(db.writer())
        .await;
    match result {
        Ok(_) => {
            // Cheap housekeeping: forget nonces that could no longer be fresh.
            if rand::random::<u8>() < 8 {
                sqlx::query(FORGET_EXPIRED)
                    .bind(now)
                    .execute(db.writer())
                    .await?;
            }
            Ok(true)
        }
        Err(e) if is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e.into()),
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
    // Now and then, the housekeeping: a statement of its own, after the call's.
    if fresh && rand::random::<u8>() < 8 {
        sqlx::query(FORGET_EXPIRED)
            .bind(now)
            .execute(db.writer())
            .await?;
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
