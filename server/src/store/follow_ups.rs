//! Which follow-ups wait for an authentication's ending: counted in the ending's own conditional
//! update (each count uses its table's index on the authentication id) instead of one look-up
//! per follow-up.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::StoreError;

/// The columns an ending's conditional update returns beside the record (`RETURNING …,
/// {WAITING_COLUMNS}`): how many enrollments wait for the ended authentication as their device
/// verification, QR sessions as their follow-up, and flows as their push, each counted over its
/// table's index on the authentication id, in the ending's own statement.
pub(crate) const WAITING_COLUMNS: &str = "\
    (SELECT COUNT(*) FROM enrollments WHERE verification_id = authentications.id) AS device_verifications, \
    (SELECT COUNT(*) FROM qr_sessions WHERE follow_up_id = authentications.id) AS qr_follow_ups, \
    (SELECT COUNT(*) FROM flows WHERE authentication_id = authentications.id) AS flows";

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

/// Which follow-ups wait, from a row that holds the [`WAITING_COLUMNS`].
pub(crate) fn waiting_of(row: &AnyRow) -> Result<Waiting, StoreError> {
    Ok(Waiting {
        device_verification: row.try_get::<i64, _>("device_verifications")? > 0,
        qr_follow_up: row.try_get::<i64, _>("qr_follow_ups")? > 0,
        flow: row.try_get::<i64, _>("flows")? > 0,
    })
}
