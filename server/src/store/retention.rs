//! Retention: deleting what finished or expired longer ago than the retention period.

use super::Database;
use crate::store::StoreError;

/// Rows deleted per statement, so no purge holds the write lock for long.
const BATCH: i64 = 500;

/// How many rows a purge deleted, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Purged {
    /// Authentications (answered, failed or expired).
    pub authentications: u64,
    /// QR login sessions.
    pub qr_sessions: u64,
    /// Backup and one-time-device passcode challenges.
    pub otp_challenges: u64,
    /// CIBA backchannel requests.
    pub ciba_requests: u64,
    /// Access and refresh tokens.
    pub oidc_tokens: u64,
    /// Enrollments the user's primary device rejected (or let expire).
    pub rejected_enrollments: u64,
    /// Authentication flows (with their events).
    pub flows: u64,
    /// OIDC authorization requests (redirect MFA) whose tokens are gone.
    pub oidc_authorizations: u64,
    /// Policy decisions (their subjects are purged by their own expiry).
    pub policy_decisions: u64,
    /// FIDO ceremonies that expired unanswered and were left behind: storing a ceremony forgets
    /// only its own application's expired ones, so an application that starts no more
    /// ceremonies keeps its last ones until this purge.
    pub fido_ceremonies: u64,
}

/// What is purged: each table with the condition that makes a row old and finished, given the
/// cutoff as `$1`. Every row of these tables is finished once it has expired (a pending
/// authentication, a QR session, a challenge, a CIBA request and a token all have an expiry);
/// a rejected enrollment is final when it is rejected.
/// A CIBA request goes before its authentication (they expire together), so no request is ever
/// left without one: a user's deletion finds the user's requests by their authentications
/// (`users::DELETION`).
const PURGES: &[(&str, &str, &str)] = &[
    ("ciba_requests", "auth_req_id", "expires_at < $1"),
    ("authentications", "id", "expires_at < $1"),
    ("qr_sessions", "id", "expires_at < $1"),
    ("otp_challenges", "id", "expires_at < $1"),
    ("oidc_tokens", "token_digest", "expires_at < $1"),
    ("flows", "id", "expires_at < $1"),
    // Kept while a token issued from it lives: userinfo and refreshed ID tokens read its claims.
    (
        "oidc_authorizations",
        "id",
        "expires_at < $1 AND NOT EXISTS (SELECT 1 FROM oidc_tokens t \
         WHERE t.family_id = oidc_authorizations.family_id)",
    ),
    (
        "enrollments",
        "enrollment_id",
        "status = 'rejected' AND paired_at < $1",
    ),
    // A decision is final when it is made; geovelocity reads only the latest location, which
    // is of no use once older than the retention period.
    ("policy_decisions", "id", "created_at < $1"),
    // A ceremony is worth nothing once expired (its answer is refused); the live ones of an
    // application are a few minutes' worth, so this reads the whole small table.
    ("fido_ceremonies", "id", "expires_at < $1"),
];

/// Deletes what finished or expired before `now - retention_days` days. Nothing is deleted
/// when `retention_days` is 0.
pub async fn purge(db: &Database, retention_days: u32, now: i64) -> Result<Purged, StoreError> {
    let mut purged = Purged::default();
    if retention_days == 0 {
        return Ok(purged);
    }
    let before = now.saturating_sub(i64::from(retention_days) * 86_400);
    for (table, id, condition) in PURGES {
        let statement = format!(
            "DELETE FROM {table} WHERE {id} IN (SELECT {id} FROM {table} WHERE {condition} LIMIT $2)"
        );
        let mut deleted = 0u64;
        loop {
            let done = sqlx::query(&statement)
                .bind(before)
                .bind(BATCH)
                .execute(db.writer())
                .await?
                .rows_affected();
            deleted += done;
            if done < BATCH as u64 {
                break;
            }
        }
        match *table {
            "authentications" => purged.authentications = deleted,
            "qr_sessions" => purged.qr_sessions = deleted,
            "otp_challenges" => purged.otp_challenges = deleted,
            "ciba_requests" => purged.ciba_requests = deleted,
            "oidc_tokens" => purged.oidc_tokens = deleted,
            "flows" => purged.flows = deleted,
            "oidc_authorizations" => purged.oidc_authorizations = deleted,
            "policy_decisions" => purged.policy_decisions = deleted,
            "fido_ceremonies" => purged.fido_ceremonies = deleted,
            _ => purged.rejected_enrollments = deleted,
        }
    }
    Ok(purged)
}
