//! Which follow-ups wait for an authentication's ending: one indexed read (each count uses its
//! table's index on the authentication id) instead of one look-up per follow-up.

use sqlx::{AnyConnection, Row};
use tessera_protocol::authentication::AuthenticationId;

use super::StoreError;

/// What [`waiting_on`] runs: how many enrollments wait for the authentication as their device
/// verification, QR sessions as their follow-up, and flows as their push.
pub(crate) const WAITING_ON: &str = "SELECT \
    (SELECT COUNT(*) FROM enrollments WHERE verification_id = $1) AS device_verifications, \
    (SELECT COUNT(*) FROM qr_sessions WHERE follow_up_id = $1) AS qr_follow_ups, \
    (SELECT COUNT(*) FROM flows WHERE authentication_id = $1) AS flows";

/// Which follow-ups have something waiting for one authentication. A `false` is final for an
/// ended authentication: whatever waits for one is stored before the authentication is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// An enrollment waits for it as its device verification.
    pub device_verification: bool,
    /// A QR session waits for it as its follow-up.
    pub qr_follow_up: bool,
    /// A flow waits for it as its push.
    pub flow: bool,
}

impl Waiting {
    /// Not known: every follow-up looks for itself.
    pub const UNKNOWN: Waiting = Waiting {
        device_verification: true,
        qr_follow_up: true,
        flow: true,
    };
}

/// Which follow-ups wait for `id`, read on `conn` (inside the ending's transaction).
pub async fn waiting_on(
    conn: &mut AnyConnection,
    id: &AuthenticationId,
) -> Result<Waiting, StoreError> {
    let row = sqlx::query(WAITING_ON)
        .bind(id.as_str())
        .fetch_one(conn)
        .await?;
    Ok(Waiting {
        device_verification: row.try_get::<i64, _>("device_verifications")? > 0,
        qr_follow_up: row.try_get::<i64, _>("qr_follow_ups")? > 0,
        flow: row.try_get::<i64, _>("flows")? > 0,
    })
}
