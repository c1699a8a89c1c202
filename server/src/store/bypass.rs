//! Users' bypasses (authentications complete without a device until a time) and recovery codes
//! (single-use codes, stored as salted SHA-256 digests only).

use sqlx::Row;
use tessera_protocol::ids::{ApplicationId, UserId};

use super::Database;
use super::users::{self, UserLock};
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

/// Grants (or replaces) the user's bypass. False, and nothing written, when there is no such
/// user: the user is looked up in the same write, under [`users::lock`], so a deletion racing
/// the grant either waits for it (and then removes the bypass with the user) or has removed the
/// user first, and no bypass is left for a user of the same id created later.
pub async fn set(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    bypass: &Bypass,
) -> Result<bool, StoreError> {
    let mut w = db.write().await?;
    // One row per user, upserted: concurrent grants need not take turns, only keep the user.
    if !users::lock(&mut *w, db.engine(), app, user, UserLock::KeepsUser).await? {
        w.rollback().await?;
        return Ok(false);
    }
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
    .execute(&mut *w)
    .await?;
    w.commit().await?;
    Ok(true)
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

/// The statement that finds the user's bypass while it is in force: the bypass of application
/// `$app` and user `$user` whose `until` is after `$now` (the arguments are the placeholders'
/// numbers). The one condition every write checks that ends a request or a flow by a bypass
/// (`authentications::insert_while_bypassed`, a bypassed admission, a flow's bypassed move).
pub(crate) fn standing(app: usize, user: usize, now: usize) -> String {
    format!(
        "SELECT 1 FROM user_bypasses WHERE application_id = ${app} AND user_id = ${user} \
         AND until > ${now}"
    )
}

/// Whether the bypass of `user` of `app` is in force at `now`, read in `w` (after an admission
/// under `authentications::AdmissionCondition::BypassInForce` that stored nothing: the bypass
/// was cleared, or ended, since it was read).
pub async fn in_force(
    w: &mut super::Write<'_>,
    app: &ApplicationId,
    user: &UserId,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(&standing(1, 2, 3))
        .bind(app.as_str())
        .bind(user.as_str())
        .bind(now)
        .fetch_optional(&mut **w)
        .await?
        .is_some())
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
/// not) stop working at the moment the new ones start. False, and nothing written, when there
/// is no such user.
///
/// The write first takes its turn on the user ([`UserLock::TakesTurns`]): on PostgreSQL a
/// `DELETE` does not see the rows another transaction inserted and has not committed, so two
/// replaces at once (or a replace and a [`revoke_codes`]) would each delete only the codes
/// committed before them and leave both new sets valid. Taking turns, the second one's
/// `DELETE` runs after the first committed and removes its codes. The same lock keeps the user
/// from being deleted meanwhile (a deletion after it removes these codes with the user).
pub async fn replace_codes(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    codes: &[RecoveryCode],
    now: i64,
) -> Result<bool, StoreError> {
    let mut tx = db.write().await?;
    if !users::lock(&mut *tx, db.engine(), app, user, UserLock::TakesTurns).await? {
        tx.rollback().await?;
        return Ok(false);
    }
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
    Ok(true)
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

/// How many unused recovery codes the user has (counted over the codes' index by user, none of
/// their salts or digests read).
pub async fn unused_code_count(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<usize, StoreError> {
    let count: i64 = sqlx::query_scalar(UNUSED_CODE_COUNT)
        .bind(app.as_str())
        .bind(user.as_str())
        .fetch_one(db.pool())
        .await?;
    Ok(usize::try_from(count).unwrap_or(0))
}

/// The statement of [`unused_code_count`].
pub(crate) const UNUSED_CODE_COUNT: &str = "SELECT COUNT(*) FROM recovery_codes \
    WHERE application_id = $1 AND user_id = $2 AND used_at IS NULL";

/// Spends the code if it is still unused (one conditional update: of racing uses of one code,
/// exactly one wins), in a write of its own. Returns whether this use won.
pub async fn spend_code(db: &Database, id: &str, now: i64) -> Result<bool, StoreError> {
    take_code(db.writer(), id, now).await
}

/// [`spend_code`] on `executor`: inside the write that records what the code approves, so
/// that the code is spent only if that write commits (`domain::outcome::record_taking`).
pub async fn take_code<'e, E>(executor: E, id: &str, now: i64) -> Result<bool, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let done =
        sqlx::query("UPDATE recovery_codes SET used_at = $1 WHERE id = $2 AND used_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(executor)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Revokes all of the user's recovery codes; how many were unused, or `None` (nothing
/// written) when there is no such user. Takes its turn on the user as [`replace_codes`] does,
/// so a revoke that commits after a replace also removes the codes that replace issued.
pub async fn revoke_codes(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Option<u64>, StoreError> {
    let mut tx = db.write().await?;
    if !users::lock(&mut *tx, db.engine(), app, user, UserLock::TakesTurns).await? {
        tx.rollback().await?;
        return Ok(None);
    }
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
    Ok(Some(unused))
}
