//! OTP seeds of enrollments, their last accepted time step, and each user's failure count.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sqlx::{AnyConnection, Row};
use tessera_protocol::ids::{ApplicationId, EnrollmentId, UserId};
use zeroize::Zeroizing;

use super::Database;
use crate::error::ServerError;

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
    conn: &mut AnyConnection,
    enrollment: &EnrollmentId,
    seed: &[u8],
) -> Result<(), ServerError> {
    let encoded = Zeroizing::new(URL_SAFE_NO_PAD.encode(seed));
    sqlx::query("UPDATE enrollments SET otp_seed = $1 WHERE enrollment_id = $2")
        .bind(encoded.as_str())
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
) -> Result<Vec<EnrollmentSeed>, ServerError> {
    let rows = sqlx::query(
        "SELECT enrollment_id, otp_seed, otp_last_step FROM enrollments \
         WHERE application_id = $1 AND user_id = $2 AND status = 'active' AND otp_seed IS NOT NULL \
         ORDER BY paired_at, enrollment_id",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let seed: Zeroizing<String> = Zeroizing::new(r.try_get("otp_seed")?);
            Ok(EnrollmentSeed {
                enrollment_id: r
                    .try_get::<String, _>("enrollment_id")?
                    .parse()
                    .map_err(|_| ServerError::Corrupted("enrollment id"))?,
                seed: Zeroizing::new(
                    URL_SAFE_NO_PAD
                        .decode(seed.as_bytes())
                        .map_err(|_| ServerError::Corrupted("otp seed"))?,
                ),
                last_step: r.try_get("otp_last_step")?,
            })
        })
        .collect()
}

/// Accepts time step `step` for the enrollment if it is later than the last one accepted (one
/// conditional update: of two racing uses of a code, one wins).
pub async fn accept_step(
    db: &Database,
    enrollment: &EnrollmentId,
    step: i64,
) -> Result<bool, ServerError> {
    let done = sqlx::query(
        "UPDATE enrollments SET otp_last_step = $1 WHERE enrollment_id = $2 AND otp_last_step < $1",
    )
    .bind(step)
    .bind(enrollment.as_str())
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The user's consecutive OTP failures.
pub async fn failures(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<i64, ServerError> {
    let row =
        sqlx::query("SELECT otp_failures FROM users WHERE application_id = $1 AND user_id = $2")
            .bind(app.as_str())
            .bind(user.as_str())
            .fetch_optional(db.pool())
            .await?;
    Ok(match row {
        Some(r) => r.try_get("otp_failures")?,
        None => 0,
    })
}

/// Counts one more failure; returns the new count.
pub async fn record_failure(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<i64, ServerError> {
    sqlx::query(
        "UPDATE users SET otp_failures = otp_failures + 1 WHERE application_id = $1 AND user_id = $2",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .execute(db.pool())
    .await?;
    failures(db, app, user).await
}

/// Clears the user's failure count (after a success, or the customer's reset).
pub async fn reset_failures(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<(), ServerError> {
    sqlx::query("UPDATE users SET otp_failures = 0 WHERE application_id = $1 AND user_id = $2")
        .bind(app.as_str())
        .bind(user.as_str())
        .execute(db.pool())
        .await?;
    Ok(())
}
