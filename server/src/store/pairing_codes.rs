//! Pairing codes: stored as digests, consumed atomically and once.

use sqlx::Row;
use tessera_protocol::ids::{ApplicationId, UserId};

use super::Database;
use crate::store::StoreError;

/// Records a new code (its digest only).
pub async fn insert<'e, E>(
    executor: E,
    code_digest: &str,
    app: &ApplicationId,
    user_id: &UserId,
    now: i64,
    expires_at: i64,
) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO pairing_codes (code_digest, application_id, user_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(code_digest)
    .bind(app.as_str())
    .bind(user_id.as_str())
    .bind(now)
    .bind(expires_at)
    .execute(executor)
    .await?;
    Ok(())
}

/// Consumes an unused, unexpired code for a registration: one conditional update, so of any
/// number of racing attempts exactly one succeeds. Returns the code's application and user.
pub async fn consume(
    conn: &mut crate::store::WriteConn<'_>,
    code_digest: &str,
    registration_digest: &str,
    now: i64,
) -> Result<Option<(ApplicationId, UserId)>, StoreError> {
    let done = sqlx::query(
        "UPDATE pairing_codes SET consumed_at = $1, registration_digest = $2 \
         WHERE code_digest = $3 AND consumed_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(registration_digest)
    .bind(code_digest)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(None);
    }
    let row =
        sqlx::query("SELECT application_id, user_id FROM pairing_codes WHERE code_digest = $1")
            .bind(code_digest)
            .fetch_one(&mut *conn)
            .await?;
    let app: String = row.try_get("application_id")?;
    let user: String = row.try_get("user_id")?;
    Ok(Some((
        app.parse()
            .map_err(|_| StoreError::Corrupted("application id"))?,
        user.parse().map_err(|_| StoreError::Corrupted("user id"))?,
    )))
}

/// The application and user of the code `code_digest` while it is unused and unexpired, read
/// without taking it ([`consume`] takes it).
pub async fn unused_holder(
    db: &Database,
    code_digest: &str,
    now: i64,
) -> Result<Option<(ApplicationId, UserId)>, StoreError> {
    let row = sqlx::query(
        "SELECT application_id, user_id FROM pairing_codes \
         WHERE code_digest = $1 AND consumed_at IS NULL AND expires_at > $2",
    )
    .bind(code_digest)
    .bind(now)
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let app: String = row.try_get("application_id")?;
    let user: String = row.try_get("user_id")?;
    Ok(Some((
        app.parse()
            .map_err(|_| StoreError::Corrupted("application id"))?,
        user.parse().map_err(|_| StoreError::Corrupted("user id"))?,
    )))
}

/// The registration digest that consumed a code, if it was consumed.
pub async fn consumed_by(db: &Database, code_digest: &str) -> Result<Option<String>, StoreError> {
    let row = sqlx::query(
        "SELECT registration_digest FROM pairing_codes WHERE code_digest = $1 AND consumed_at IS NOT NULL",
    )
    .bind(code_digest)
    .fetch_optional(db.pool())
    .await?;
    Ok(match row {
        Some(r) => r.try_get::<Option<String>, _>("registration_digest")?,
        None => None,
    })
}

/// The statement of [`purge_expired`], which reads `pairing_codes_by_expiry`.
pub(crate) const PURGE_EXPIRED: &str = "DELETE FROM pairing_codes WHERE expires_at < $1";

/// Deletes codes that expired more than a day ago.
pub async fn purge_expired(db: &Database, now: i64) -> Result<(), StoreError> {
    sqlx::query(PURGE_EXPIRED)
        .bind(now - 86_400)
        .execute(db.writer())
        .await?;
    Ok(())
}
