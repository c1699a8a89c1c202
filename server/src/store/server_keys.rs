//! The server's device-facing signing keys (private keys sealed with the data key) and the
//! signed key sets that announce them.

use sqlx::Row;
use tessera_protocol::envelope::SoftwareSigningKey;

use super::Database;
use super::secrets::place;
use crate::secrets::DataKey;
use crate::store::StoreError;

/// The first key of the PostgreSQL advisory lock the changes of the server keys take turns on
/// (its second key is 0: there is one set of server keys per database).
const SERVER_KEY_CHANGES: i32 = 0x7E55_C001;

/// Makes the changes of the server keys (an instance's first key and retirements, an
/// administrator's rotations and revocations) take turns, for the rest of the write `tx`: call
/// it first, before the write reads the keys. Each change reads the keys and the newest key
/// set and announces the next set from them; were two to run side by side, one could announce
/// the number after the other's set with the keys it read before that set (dropping the key
/// the other made the signer). On PostgreSQL a transaction-scoped advisory lock (each
/// statement after it sees what the change before committed); SQLite's one writer already
/// runs writes one at a time.
pub async fn take_turns_changing_keys(
    tx: &mut crate::store::Write<'static>,
) -> Result<(), StoreError> {
    if tx.engine() == super::Engine::Postgres {
        sqlx::query("SELECT 1 AS locked FROM pg_advisory_xact_lock($1, 0)")
            .bind(SERVER_KEY_CHANGES)
            .fetch_one(&mut **tx)
            .await?;
    }
    Ok(())
}

/// A stored key and where it is in its life.
#[derive(Debug)]
pub struct StoredKey {
    /// The key (`None` once revoked: its private half is wiped).
    pub key: Option<SoftwareSigningKey>,
    /// Its `kid`.
    pub kid: String,
    /// When it was created.
    pub created_at: i64,
    /// When it became the signer (`None`: never, or a key from before rotation existed).
    pub signer_since: Option<i64>,
    /// When its grace period after a rotation ends.
    pub retire_at: Option<i64>,
    /// When it stopped being published after its grace period.
    pub retired_at: Option<i64>,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
}

impl StoredKey {
    /// Published (and trusted for verifying): neither retired nor revoked.
    pub fn is_published(&self) -> bool {
        self.retired_at.is_none() && self.revoked_at.is_none() && self.key.is_some()
    }
}

/// A signed key set as stored.
#[derive(Debug, Clone)]
pub struct StoredKeySet {
    /// The issuer (public URL) it names.
    pub issuer: String,
    /// Its number (per issuer).
    pub sequence: i64,
    /// The key that signed it.
    pub signer_kid: String,
    /// The compact JWS.
    pub signed: String,
}

/// Every stored key, oldest first. Pass a transaction to read inside it.
pub async fn all(
    tx: &mut crate::store::Write<'static>,
    secrets: &DataKey,
) -> Result<Vec<StoredKey>, StoreError> {
    let rows = sqlx::query(
        "SELECT kid, private_key, created_at, signer_since, retire_at, retired_at, revoked_at \
         FROM server_keys ORDER BY created_at, kid",
    )
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(|r| key_from_row(r, secrets)).collect()
}

/// Every stored key, oldest first, read outside a transaction.
pub async fn all_from_pool(db: &Database) -> Result<Vec<StoredKey>, StoreError> {
    let rows = sqlx::query(
        "SELECT kid, private_key, created_at, signer_since, retire_at, retired_at, revoked_at \
         FROM server_keys ORDER BY created_at, kid",
    )
    .fetch_all(db.pool())
    .await?;
    let secrets = db.secrets()?;
    rows.iter().map(|r| key_from_row(r, secrets)).collect()
}

fn key_from_row(row: &sqlx::any::AnyRow, secrets: &DataKey) -> Result<StoredKey, StoreError> {
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    let kid: String = row.try_get("kid")?;
    let key = if revoked_at.is_some() {
        None
    } else {
        let sealed = zeroize::Zeroizing::new(row.try_get::<Vec<u8>, _>("private_key")?);
        let der = secrets.open(place("server_keys", "private_key", &kid), &sealed)?;
        Some(
            SoftwareSigningKey::from_pkcs8_der(&der)
                .map_err(|_| StoreError::Corrupted("server key"))?,
        )
    };
    Ok(StoredKey {
        key,
        kid,
        created_at: row.try_get("created_at")?,
        signer_since: row.try_get("signer_since")?,
        retire_at: row.try_get("retire_at")?,
        retired_at: row.try_get("retired_at")?,
        revoked_at,
    })
}

/// Stores a new key; `signer` makes it the signer from `now`.
pub async fn insert(
    tx: &mut crate::store::Write<'static>,
    secrets: &DataKey,
    key: &SoftwareSigningKey,
    signer: bool,
    now: i64,
) -> Result<(), StoreError> {
    let der = key
        .to_pkcs8_der()
        .map_err(|_| StoreError::Corrupted("key encoding"))?;
    let sealed = secrets.seal(
        place("server_keys", "private_key", key.kid()),
        der.as_slice(),
    )?;
    let jwk = serde_json::to_string(&key.public_jwk()).map_err(|_| StoreError::Corrupted("jwk"))?;
    sqlx::query(
        "INSERT INTO server_keys (kid, private_key, public_jwk, created_at, signer_since) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(key.kid())
    .bind(sealed.into_bytes())
    .bind(jwk)
    .bind(now)
    .bind(signer.then_some(now))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Makes a key the signer from `now`.
pub async fn make_signer(
    tx: &mut crate::store::Write<'static>,
    kid: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE server_keys SET signer_since = $2 WHERE kid = $1")
        .bind(kid)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Starts a key's grace period: it is retired at `retire_at` (an earlier end is kept).
pub async fn set_retire_at(
    tx: &mut crate::store::Write<'static>,
    kid: &str,
    retire_at: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE server_keys SET retire_at = $2 WHERE kid = $1 AND (retire_at IS NULL OR retire_at > $2)",
    )
    .bind(kid)
    .bind(retire_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Retires the published keys whose grace period has ended (one conditional update: of
/// instances doing this at once, one retires each key). Returns their ids.
pub async fn retire_due(
    tx: &mut crate::store::Write<'static>,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "UPDATE server_keys SET retired_at = $1 \
         WHERE retire_at <= $1 AND retired_at IS NULL AND revoked_at IS NULL RETURNING kid",
    )
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|r| r.try_get::<String, _>("kid").map_err(StoreError::from))
        .collect()
}

/// Revokes a key and wipes its private half; `false` if there is no such key or it was
/// revoked already.
pub async fn revoke(
    tx: &mut crate::store::Write<'static>,
    kid: &str,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "UPDATE server_keys SET revoked_at = $2, private_key = $3 WHERE kid = $1 AND revoked_at IS NULL",
    )
    .bind(kid)
    .bind(now)
    .bind(Vec::<u8>::new())
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1)
}

/// The stored key sets of `issuer`, oldest first.
pub async fn key_sets(db: &Database, issuer: &str) -> Result<Vec<StoredKeySet>, StoreError> {
    let rows = sqlx::query(
        "SELECT issuer, sequence, signer_kid, signed FROM server_key_sets WHERE issuer = $1 \
         ORDER BY sequence",
    )
    .bind(issuer)
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(key_set_from_row).collect()
}

/// The newest stored key set of `issuer`, read inside a transaction.
pub async fn latest_key_set(
    tx: &mut crate::store::Write<'static>,
    issuer: &str,
) -> Result<Option<StoredKeySet>, StoreError> {
    let row = sqlx::query(
        "SELECT issuer, sequence, signer_kid, signed FROM server_key_sets WHERE issuer = $1 \
         ORDER BY sequence DESC LIMIT 1",
    )
    .bind(issuer)
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(key_set_from_row).transpose()
}

/// Every issuer that has key sets.
pub async fn issuers(tx: &mut crate::store::Write<'static>) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query("SELECT DISTINCT issuer FROM server_key_sets ORDER BY issuer")
        .fetch_all(&mut **tx)
        .await?;
    rows.iter()
        .map(|r| r.try_get::<String, _>("issuer").map_err(StoreError::from))
        .collect()
}

fn key_set_from_row(row: &sqlx::any::AnyRow) -> Result<StoredKeySet, StoreError> {
    Ok(StoredKeySet {
        issuer: row.try_get("issuer")?,
        sequence: row.try_get("sequence")?,
        signer_kid: row.try_get("signer_kid")?,
        signed: row.try_get("signed")?,
    })
}

/// Stores a signed key set; `false` if another one took this number first.
pub async fn insert_key_set(
    tx: &mut crate::store::Write<'static>,
    set: &StoredKeySet,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "INSERT INTO server_key_sets (issuer, sequence, signer_kid, signed, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (issuer, sequence) DO NOTHING",
    )
    .bind(&set.issuer)
    .bind(set.sequence)
    .bind(&set.signer_kid)
    .bind(&set.signed)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1)
}

/// Runs `check` with the URL of a fresh, empty schema of the PostgreSQL database at `url`
/// (migrated by the first connection), dropped afterwards: for tests of the server keys, which
/// are the whole database's, not an application's, so that other tests' keys are left alone.
#[cfg(test)]
pub(crate) async fn in_fresh_postgres_schema<F, Fut, T>(url: &str, check: F) -> T
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    super::query_plans::in_fresh_pg_schema(url, check).await
}
