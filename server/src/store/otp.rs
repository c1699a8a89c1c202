//! OTP seeds of enrollments, their last accepted time step, and each user's failure count.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sqlx::Row;
use tessera_protocol::api::{OtpAlgorithm, OtpToken, OtpTokenKind};
use tessera_protocol::ids::{ApplicationId, EnrollmentId, UserId};
use zeroize::Zeroizing;

use super::Database;
use super::secrets::place;
use super::users::{self, UserLock};
use crate::secrets::DataKey;
use crate::store::StoreError;

/// An active enrollment's seed, as the server checks codes against it.
pub struct EnrollmentSeed {
    /// The enrollment.
    pub enrollment_id: EnrollmentId,
    /// The seed.
    pub seed: Zeroizing<Vec<u8>>,
    /// The last time step a code was accepted for.
    pub last_step: i64,
}

/// Stores an enrollment's seed (inside the pairing transaction).
pub async fn set_seed(
    conn: &mut crate::store::WriteConn<'_>,
    secrets: &DataKey,
    enrollment: &EnrollmentId,
    seed: &[u8],
) -> Result<(), StoreError> {
    let encoded = Zeroizing::new(URL_SAFE_NO_PAD.encode(seed));
    let sealed = secrets.seal(
        place("enrollments", "otp_seed", enrollment.as_str()),
        encoded.as_bytes(),
    )?;
    sqlx::query("UPDATE enrollments SET otp_seed = $1 WHERE enrollment_id = $2")
        .bind(sealed)
        .bind(enrollment.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The seeds of a user's active enrollments, oldest first.
pub async fn seeds_for_user(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Vec<EnrollmentSeed>, StoreError> {
    let rows = sqlx::query(
        "SELECT enrollment_id, otp_seed, otp_last_step FROM enrollments \
         WHERE application_id = $1 AND user_id = $2 AND status = 'active' AND otp_seed IS NOT NULL \
         ORDER BY paired_at, enrollment_id",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .fetch_all(db.pool())
    .await?;
    let secrets = db.secrets()?;
    rows.iter()
        .map(|r| {
            let id: String = r.try_get("enrollment_id")?;
            let sealed: Zeroizing<String> = Zeroizing::new(r.try_get("otp_seed")?);
            let seed = secrets.open(place("enrollments", "otp_seed", &id), sealed.as_bytes())?;
            Ok(EnrollmentSeed {
                enrollment_id: id
                    .parse()
                    .map_err(|_| StoreError::Corrupted("enrollment id"))?,
                seed: Zeroizing::new(
                    URL_SAFE_NO_PAD
                        .decode(seed.as_slice())
                        .map_err(|_| StoreError::Corrupted("otp seed"))?,
                ),
                last_step: r.try_get("otp_last_step")?,
            })
        })
        .collect()
}

/// Accepts time step `step` for the enrollment if it is later than the last one accepted (one
/// conditional update: of two racing uses of a code, one wins).
pub async fn accept_step<'e, E>(
    executor: E,
    enrollment: &EnrollmentId,
    step: i64,
) -> Result<bool, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let done = sqlx::query(
        "UPDATE enrollments SET otp_last_step = $1 WHERE enrollment_id = $2 AND otp_last_step < $1",
    )
    .bind(step)
    .bind(enrollment.as_str())
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Takes one passcode attempt for the user, atomically: counts it if fewer than `max` are
/// counted already and returns the new count, or `None` (nothing counted) when the limit is
/// reached. Concurrent attempts each take their own slot, so at most `max` codes are ever
/// checked between resets.
pub async fn take_attempt(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    max: i64,
) -> Result<Option<i64>, StoreError> {
    let row = sqlx::query(
        "UPDATE users SET otp_failures = otp_failures + 1 \
         WHERE application_id = $1 AND user_id = $2 AND otp_failures < $3 RETURNING otp_failures",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .bind(max)
    .fetch_optional(db.writer())
    .await?;
    row.map(|r| r.try_get::<i64, _>("otp_failures"))
        .transpose()
        .map_err(StoreError::from)
}

/// Gives back an attempt taken for a check that could not happen (no code to compare with).
pub async fn refund_attempt(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE users SET otp_failures = otp_failures - 1 \
         WHERE application_id = $1 AND user_id = $2 AND otp_failures > 0",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .execute(db.writer())
    .await?;
    Ok(())
}

/// Clears the user's failure count (after a success, or the customer's reset).
pub async fn reset_failures(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET otp_failures = 0 WHERE application_id = $1 AND user_id = $2")
        .bind(app.as_str())
        .bind(user.as_str())
        .execute(db.writer())
        .await?;
    Ok(())
}

/// An OATH token registered with a known seed.
pub struct OathToken {
    /// Its id (`otk_…`).
    pub token_id: String,
    /// The kind.
    pub kind: OtpTokenKind,
    /// The seed.
    pub seed: Zeroizing<Vec<u8>>,
    /// The HMAC.
    pub algorithm: OtpAlgorithm,
    /// Digits per code.
    pub digits: u32,
    /// TOTP period (absent for HOTP).
    pub period: Option<u32>,
    /// HOTP: the next counter value expected.
    pub counter: Option<i64>,
    /// TOTP: the last time step accepted.
    pub last_step: i64,
    /// When it was registered.
    pub created_at: i64,
}

impl std::fmt::Debug for OathToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OathToken")
            .field("token_id", &self.token_id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl OathToken {
    /// The customer API's view (no seed).
    pub fn record(&self) -> OtpToken {
        OtpToken {
            token_id: self.token_id.clone(),
            kind: self.kind,
            algorithm: self.algorithm,
            digits: self.digits,
            period: self.period,
            hotp: self.counter.is_some(),
            created_at: self.created_at,
        }
    }
}

/// How [`insert_token_within_limit`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenInsert {
    /// The token is stored.
    Stored,
    /// There is no such user (or a deletion of theirs came first): nothing stored.
    NoUser,
    /// The user already has the most tokens allowed: nothing stored.
    AtLimit,
}

/// Registers a token for `user` unless they have `limit` tokens already, in one write that
/// first takes its turn on the user ([`super::users::lock`], [`UserLock::TakesTurns`]): the
/// user is looked up, their tokens counted and the token inserted under that lock, so
/// registrations at once count one after the other (a burst at `limit - 1` stores one token,
/// not one per request), and a deletion of the user either waits for the registration (and
/// then removes its token with the user) or came first (the registration finds no user, and no
/// token is left for a later user of the same id). On SQLite the one writer already runs the
/// writes one at a time; the read inside the write sees the ones before it.
pub async fn insert_token_within_limit(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    token: &OathToken,
    limit: i64,
) -> Result<TokenInsert, StoreError> {
    let encoded = Zeroizing::new(URL_SAFE_NO_PAD.encode(token.seed.as_slice()));
    let sealed = db.secrets()?.seal(
        place("otp_tokens", "seed", &token.token_id),
        encoded.as_bytes(),
    )?;
    let mut w = db.write().await?;
    if !users::lock(&mut *w, db.engine(), app, user, UserLock::TakesTurns).await? {
        w.rollback().await?;
        return Ok(TokenInsert::NoUser);
    }
    let held: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM otp_tokens WHERE application_id = $1 AND user_id = $2",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .fetch_one(&mut *w)
    .await?;
    if held >= limit {
        w.rollback().await?;
        return Ok(TokenInsert::AtLimit);
    }
    sqlx::query(
        "INSERT INTO otp_tokens (token_id, application_id, user_id, kind, seed, algorithm, digits, \
         period, counter, last_step, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&token.token_id)
    .bind(app.as_str())
    .bind(user.as_str())
    .bind(token.kind.as_str())
    .bind(sealed)
    .bind(token.algorithm.as_str())
    .bind(i64::from(token.digits))
    .bind(token.period.map(i64::from))
    .bind(token.counter)
    .bind(token.last_step)
    .bind(token.created_at)
    .execute(&mut *w)
    .await?;
    w.commit().await?;
    Ok(TokenInsert::Stored)
}

/// The user's tokens, oldest first.
pub async fn tokens_for_user(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Vec<OathToken>, StoreError> {
    let rows = sqlx::query(
        "SELECT token_id, kind, seed, algorithm, digits, period, counter, last_step, created_at \
         FROM otp_tokens WHERE application_id = $1 AND user_id = $2 ORDER BY created_at, token_id",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .fetch_all(db.pool())
    .await?;
    let secrets = db.secrets()?;
    rows.iter()
        .map(|r| {
            let token_id: String = r.try_get("token_id")?;
            let sealed: Zeroizing<String> = Zeroizing::new(r.try_get("seed")?);
            let seed = secrets.open(place("otp_tokens", "seed", &token_id), sealed.as_bytes())?;
            let period: Option<i64> = r.try_get("period")?;
            Ok(OathToken {
                token_id,
                kind: OtpTokenKind::parse(&r.try_get::<String, _>("kind")?)
                    .ok_or(StoreError::Corrupted("token kind"))?,
                seed: Zeroizing::new(
                    URL_SAFE_NO_PAD
                        .decode(seed.as_slice())
                        .map_err(|_| StoreError::Corrupted("token seed"))?,
                ),
                algorithm: OtpAlgorithm::parse(&r.try_get::<String, _>("algorithm")?)
                    .ok_or(StoreError::Corrupted("token algorithm"))?,
                digits: u32::try_from(r.try_get::<i64, _>("digits")?)
                    .map_err(|_| StoreError::Corrupted("token digits"))?,
                period: period
                    .map(u32::try_from)
                    .transpose()
                    .map_err(|_| StoreError::Corrupted("token period"))?,
                counter: r.try_get("counter")?,
                last_step: r.try_get("last_step")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

/// Removes a token. Returns false if the user has no such token.
pub async fn delete_token(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    token_id: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "DELETE FROM otp_tokens WHERE application_id = $1 AND user_id = $2 AND token_id = $3",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .bind(token_id)
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How an accepted passcode is used up: the one conditional update that takes it, run inside
/// the write that records what the passcode approved (so a passcode is spent only when it
/// approves something, and of two racing uses of it one takes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasscodeSpend {
    /// An enrollment seed's time step ([`accept_step`]).
    EnrollmentStep {
        /// The enrollment.
        enrollment: EnrollmentId,
        /// The step the code was made at.
        step: i64,
    },
    /// A TOTP token's time step ([`accept_token_step`]).
    TokenStep {
        /// The token.
        token_id: String,
        /// The step the code was made at.
        step: i64,
    },
    /// An HOTP token's counter ([`advance_counter`]).
    TokenCounter {
        /// The token.
        token_id: String,
        /// The counter as it was read.
        expected: i64,
        /// The counter after the one the code was made with.
        next: i64,
    },
    /// A backup code's challenge, whose attempt the code took before it was compared
    /// ([`super::otp_challenges::take_attempt`]); using it gives that attempt back
    /// ([`super::otp_challenges::mark_used`]).
    Challenge {
        /// The challenge.
        id: String,
        /// When (seconds since the epoch).
        now: i64,
        /// The attempts a challenge allows.
        max_attempts: i64,
    },
}

impl PasscodeSpend {
    /// Takes the passcode; `false` when another use took it first (or its challenge expired
    /// or ran out of attempts).
    pub async fn take<'e, E>(&self, executor: E) -> Result<bool, StoreError>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        match self {
            Self::EnrollmentStep { enrollment, step } => {
                accept_step(executor, enrollment, *step).await
            }
            Self::TokenStep { token_id, step } => {
                accept_token_step(executor, token_id, *step).await
            }
            Self::TokenCounter {
                token_id,
                expected,
                next,
            } => advance_counter(executor, token_id, *expected, *next).await,
            Self::Challenge {
                id,
                now,
                max_attempts,
            } => super::otp_challenges::mark_used(executor, id, *now, *max_attempts).await,
        }
    }
}

/// TOTP: accepts `step` if later than the token's last accepted one (one conditional update).
pub async fn accept_token_step<'e, E>(
    executor: E,
    token_id: &str,
    step: i64,
) -> Result<bool, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let done =
        sqlx::query("UPDATE otp_tokens SET last_step = $1 WHERE token_id = $2 AND last_step < $1")
            .bind(step)
            .bind(token_id)
            .execute(executor)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// HOTP: moves the token's counter from `expected` to `next` (the counter after the matching
/// one: look-ahead resynchronisation). False if another use moved it first.
pub async fn advance_counter<'e, E>(
    executor: E,
    token_id: &str,
    expected: i64,
    next: i64,
) -> Result<bool, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let done =
        sqlx::query("UPDATE otp_tokens SET counter = $1 WHERE token_id = $2 AND counter = $3")
            .bind(next)
            .bind(token_id)
            .bind(expected)
            .execute(executor)
            .await?;
    Ok(done.rows_affected() == 1)
}
