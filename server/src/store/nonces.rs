//! Nonces of device-signed calls: each accepted once.

use super::{Database, is_unique_violation};
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
