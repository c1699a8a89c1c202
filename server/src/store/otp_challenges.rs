//! Backup and one-time-device passcode challenges: a code sent by SMS, voice or email. Only a
//! salted SHA-256 digest of the code is stored (never the code), with a masked destination;
//! codes expire, are single use, and allow a few attempts each.

use sqlx::Row;
use tessera_protocol::api::BackupChannel;
use tessera_protocol::authentication::AuthenticationId;
use tessera_protocol::ids::{ApplicationId, UserId};

use super::Database;
use crate::store::StoreError;

/// A challenge as stored.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// Its id (`otc_…`).
    pub id: String,
    /// The application.
    pub application_id: ApplicationId,
    /// The user.
    pub user_id: UserId,
    /// The authentication it answers, if any.
    pub authentication_id: Option<AuthenticationId>,
    /// The channel.
    pub channel: BackupChannel,
    /// The masked destination.
    pub destination_hint: String,
    /// Whether the destination was given for this one authentication.
    pub one_time_device: bool,
    /// Random salt of the digest (base64url).
    pub code_salt: String,
    /// SHA-256 over salt, id and code (hex).
    pub code_digest: String,
    /// Attempts taken: the wrong codes tried, and the codes being compared right now (a right
    /// one gives its attempt back when it is used, [`mark_used`]).
    pub attempts: i64,
    /// When it was sent.
    pub created_at: i64,
    /// When it expires.
    pub expires_at: i64,
    /// When its code was accepted.
    pub used_at: Option<i64>,
}

const COLUMNS: &str = "id, application_id, user_id, authentication_id, channel, destination_hint, \
    one_time_device, code_salt, code_digest, attempts, created_at, expires_at, used_at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<Challenge, StoreError> {
    let auth: Option<String> = r.try_get("authentication_id")?;
    Ok(Challenge {
        id: r.try_get("id")?,
        application_id: r
            .try_get::<String, _>("application_id")?
            .parse()
            .map_err(|_| StoreError::Corrupted("application id"))?,
        user_id: r
            .try_get::<String, _>("user_id")?
            .parse()
            .map_err(|_| StoreError::Corrupted("user id"))?,
        authentication_id: auth
            .map(|a| a.parse())
            .transpose()
            .map_err(|_| StoreError::Corrupted("authentication id"))?,
        channel: BackupChannel::parse(&r.try_get::<String, _>("channel")?)
            .ok_or(StoreError::Corrupted("channel"))?,
        destination_hint: r.try_get("destination_hint")?,
        one_time_device: r.try_get::<i64, _>("one_time_device")? != 0,
        code_salt: r.try_get("code_salt")?,
        code_digest: r.try_get("code_digest")?,
        attempts: r.try_get("attempts")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        used_at: r.try_get("used_at")?,
    })
}

/// The first key of the advisory lock that makes the sends of one user's codes through one
/// channel take turns (PostgreSQL; [`super::lock_key`] of the application, user and channel is
/// the second).
const USER_CHANNEL_SENDS: i32 = 0x7E55_B001;

/// Stores `c` only if fewer than `limit` codes were sent to its user through its channel since
/// `since`: the count and the insert are one statement (an `INSERT … SELECT` kept only while the
/// count is under the limit), so sends at once cannot all pass a count read before any of them
/// was stored. On PostgreSQL, whose concurrent statements would each miss the others'
/// uncommitted inserts, the sends to one user and channel first take turns on an advisory lock
/// (held until the commit); the insert's own snapshot, taken once the lock is granted, sees
/// what the send before committed. `false` when the limit is reached (nothing stored).
pub async fn insert_within_limit(
    db: &Database,
    c: &Challenge,
    since: i64,
    limit: i64,
) -> Result<bool, StoreError> {
    let mut w = db.write().await?;
    if db.engine() == super::Engine::Postgres {
        let key = super::lock_key(&[
            c.application_id.as_str(),
            c.user_id.as_str(),
            c.channel.as_str(),
        ]);
        sqlx::query("SELECT 1 AS locked FROM pg_advisory_xact_lock($1, $2)")
            .bind(USER_CHANNEL_SENDS)
            .bind(key)
            .fetch_one(&mut *w)
            .await?;
    }
    let done = sqlx::query(&format!(
        "INSERT INTO otp_challenges ({COLUMNS}) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 \
         WHERE (SELECT COUNT(*) FROM otp_challenges \
                WHERE application_id = $2 AND user_id = $3 AND channel = $5 AND created_at >= $14) < $15"
    ))
    .bind(&c.id)
    .bind(c.application_id.as_str())
    .bind(c.user_id.as_str())
    .bind(c.authentication_id.as_ref().map(|a| a.as_str().to_string()))
    .bind(c.channel.as_str())
    .bind(&c.destination_hint)
    .bind(i64::from(c.one_time_device))
    .bind(&c.code_salt)
    .bind(&c.code_digest)
    .bind(c.attempts)
    .bind(c.created_at)
    .bind(c.expires_at)
    .bind(c.used_at)
    .bind(since)
    .bind(limit)
    .execute(&mut *w)
    .await?;
    if done.rows_affected() != 1 {
        w.rollback().await?;
        return Ok(false);
    }
    w.commit().await?;
    Ok(true)
}

/// Removes a challenge whose code could not be delivered.
pub async fn delete(db: &Database, id: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM otp_challenges WHERE id = $1")
        .bind(id)
        .execute(db.writer())
        .await?;
    Ok(())
}

/// One challenge.
pub async fn get(db: &Database, id: &str) -> Result<Option<Challenge>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM otp_challenges WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// The challenges sent for an authentication that can still be answered at `now` (unused,
/// unexpired, attempts left), newest first.
pub async fn open_for_authentication(
    db: &Database,
    authentication: &AuthenticationId,
    now: i64,
    max_attempts: i64,
) -> Result<Vec<Challenge>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM otp_challenges WHERE authentication_id = $1 AND used_at IS NULL \
         AND expires_at > $2 AND attempts < $3 ORDER BY created_at DESC, id"
    ))
    .bind(authentication.as_str())
    .bind(now)
    .bind(max_attempts)
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(from_row).collect()
}

/// Takes one attempt at the challenge's code, before the code is compared: one conditional
/// update counts it only while the challenge is unused, unexpired at `now` and has fewer than
/// `max_attempts` attempts counted. Returns whether this attempt was taken; a code whose attempt
/// was not taken must not be compared. Guesses sent at once each take their own attempt, so no
/// more than `max_attempts` codes are ever compared with one challenge (a check of `attempts`
/// read before comparing would let them all through). A right code gives its attempt back when
/// it is used ([`mark_used`]), or with [`give_back_attempt`] when it could not be used.
pub async fn take_attempt(
    db: &Database,
    id: &str,
    now: i64,
    max_attempts: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE otp_challenges SET attempts = attempts + 1 \
         WHERE id = $1 AND used_at IS NULL AND expires_at > $2 AND attempts < $3",
    )
    .bind(id)
    .bind(now)
    .bind(max_attempts)
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives back an attempt [`take_attempt`] took for a code that was right but not used (what it
/// would have approved ended first): `attempts` counts wrong codes only.
pub async fn give_back_attempt(db: &Database, id: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE otp_challenges SET attempts = attempts - 1 WHERE id = $1 AND attempts > 0")
        .bind(id)
        .execute(db.writer())
        .await?;
    Ok(())
}

/// Marks the challenge used by a right code whose attempt was taken ([`take_attempt`]), if it
/// still can be (one conditional update: of two racing uses of a code, one wins), and gives
/// that attempt back in the same update: `attempts` counts wrong codes only. Returns whether
/// this use won.
///
/// The attempt taken for this code is among the `attempts` counted, so the condition is
/// `attempts <= max_attempts`, not `<`: a right code that took the last attempt (after
/// `max_attempts - 1` wrong ones) is accepted; after `max_attempts` wrong ones no attempt is
/// left to take, and the code is never compared.
pub async fn mark_used<'e, E>(
    executor: E,
    id: &str,
    now: i64,
    max_attempts: i64,
) -> Result<bool, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let done = sqlx::query(
        "UPDATE otp_challenges SET used_at = $1, attempts = attempts - 1 \
         WHERE id = $2 AND used_at IS NULL AND expires_at > $1 AND attempts > 0 \
         AND attempts <= $3",
    )
    .bind(now)
    .bind(id)
    .bind(max_attempts)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}
