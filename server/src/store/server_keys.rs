//! The server's signing keys (private keys sealed with the data key).

use sqlx::Row;
use tessera_protocol::envelope::SoftwareSigningKey;

use super::Database;
use super::secrets::place;
use crate::store::StoreError;

/// All stored keys, the signing one (the oldest) first. Creates one if there is none; two
/// instances starting at once may each add one, and then both sign with the same oldest key.
pub async fn load_or_create(
    db: &Database,
    now: i64,
) -> Result<Vec<SoftwareSigningKey>, StoreError> {
    let keys = load(db).await?;
    if !keys.is_empty() {
        return Ok(keys);
    }
    let key = SoftwareSigningKey::generate();
    let der = key
        .to_pkcs8_der()
        .map_err(|_| StoreError::Corrupted("key encoding"))?;
    let jwk = serde_json::to_string(&key.public_jwk()).map_err(|_| StoreError::Corrupted("jwk"))?;
    let sealed = db.secrets()?.seal(
        place("server_keys", "private_key", key.kid()),
        der.as_slice(),
    )?;
    sqlx::query(
        "INSERT INTO server_keys (kid, private_key, public_jwk, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (kid) DO NOTHING",
    )
    .bind(key.kid())
    .bind(sealed.into_bytes())
    .bind(jwk)
    .bind(now)
    .execute(db.writer())
    .await?;
    load(db).await
}

async fn load(db: &Database) -> Result<Vec<SoftwareSigningKey>, StoreError> {
    let rows = sqlx::query("SELECT kid, private_key FROM server_keys ORDER BY created_at, kid")
        .fetch_all(db.pool())
        .await?;
    let secrets = db.secrets()?;
    rows.iter()
        .map(|row| {
            let kid: String = row.try_get("kid")?;
            let sealed = zeroize::Zeroizing::new(row.try_get::<Vec<u8>, _>("private_key")?);
            let der = secrets.open(place("server_keys", "private_key", &kid), &sealed)?;
            SoftwareSigningKey::from_pkcs8_der(&der)
                .map_err(|_| StoreError::Corrupted("server key"))
        })
        .collect()
}
