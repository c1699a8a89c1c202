//! Users' bypasses (authentications complete without a device until a time) and recovery codes
//! (single-use codes, stored as salted SHA-256 digests only).

use sqlx::Row;
use tessera_protocol::ids::{ApplicationId, UserId};

use super::Database;
use crate::store::StoreError;

/// A user's bypass as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bypass {
    /// When it was granted (seconds since the epoch).
    pub granted_at: i64,
    /// When it ends (seconds since the epoch; it lasts while now is before it).
    pub until: i64,
    /// Why it was granted, as the administrator wrote it.
    pub reason: String,
    /// Who granted it (`api` or `admin`).
    pub granted_by: String,
}

/// Grants (or replaces) the user's bypass.
pub async fn set(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    bypass: &Bypass,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO user_bypasses (application_id, user_id, granted_at, until, reason, granted_by) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (application_id, user_id) DO UPDATE SET granted_at = $3, until = $4, \
         reason = $5, granted_by = $6",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .bind(bypass.granted_at)
    .bind(bypass.until)
    .bind(&bypass.reason)
    .bind(&bypass.granted_by)
    .execute(db.writer())
    .await?;
    Ok(())
}

/// The user's bypass, if one was granted (it may have ended: compare `until` with now).
pub async fn get(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Option<Bypass>, StoreError> {
    let row = sqlx::query(
        "SELECT granted_at, until, reason, granted_by FROM user_bypasses \
         WHERE application_id = $1 AND user_id = $2",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .fetch_optional(db.pool())
    .await?;
    row.map(|r| {
        Ok(Bypass {
            granted_at: r.try_get("granted_at")?,
            until: r.try_get("until")?,
            reason: r.try_get("reason")?,
            granted_by: r.try_get("granted_by")?,
        })
    })
    .transpose()
}

/// Ends the user's bypass; whether there was one.
pub async fn clear(db: &Database, app: &ApplicationId, user: &UserId) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM user_bypasses WHERE application_id = $1 AND user_id = $2")
        .bind(app.as_str())
        .bind(user.as_str())
        .execute(db.writer())
        .await?;
    Ok(done.rows_affected() > 0)
}

/// A recovery code as stored: its digest, never the code.
#[derive(Debug, Clone)]
pub struct RecoveryCode {
    /// Its id (`rc_…`).
    pub id: String,
    /// Random salt of the digest.
    pub salt: String,
    /// SHA-256 over salt, id and code (hex).
    pub digest: String,
}

/// Replaces the user's recovery codes with `codes`, in one transaction: the old ones (used or
/// not) stop working at the moment the new ones start.
pub async fn replace_codes(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    codes: &[RecoveryCode],
    now: i64,
) -> Result<(), StoreError> {
    let mut tx = db.write().await?;
    sqlx::query("DELETE FROM recovery_codes WHERE application_id = $1 AND user_id = $2")
        .bind(app.as_str())
        .bind(user.as_str())
        .execute(&mut *tx)
        .await?;
    for code in codes {
        sqlx::query(
            "INSERT INTO recovery_codes (id, application_id, user_id, salt, digest, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&code.id)
        .bind(app.as_str())
        .bind(user.as_str())
        .bind(&code.salt)
        .bind(&code.digest)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The user's unused recovery codes.
pub async fn unused_codes(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Vec<RecoveryCode>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, salt, digest FROM recovery_codes \
         WHERE application_id = $1 AND user_id = $2 AND used_at IS NULL ORDER BY id",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(RecoveryCode {
                id: r.try_get("id")?,
                salt: r.try_get("salt")?,
                digest: r.try_get("digest")?,
            })
        })
        .collect()
}

/// Spends the code if it is still unused (one conditional update: of racing uses of one code,
/// exactly one wins). Returns whether this use won.
pub async fn spend_code(db: &Database, id: &str, now: i64) -> Result<bool, StoreError> {
    let done =
        sqlx::query("UPDATE recovery_codes SET used_at = $1 WHERE id = $2 AND used_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(db.writer())
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Revokes all of the user's recovery codes; how many were unused.
pub async fn revoke_codes(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<u64, StoreError> {
    let mut tx = db.write().await?;
    let unused = sqlx::query(
        "DELETE FROM recovery_codes WHERE application_id = $1 AND user_id = $2 AND used_at IS NULL",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM recovery_codes WHERE application_id = $1 AND user_id = $2")
        .bind(app.as_str())
        .bind(user.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(unused)
}
