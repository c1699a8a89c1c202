//! The data key (stored wrapped by the master key) and the sealing of secret columns that were
//! written in clear before sealing existed.

use sqlx::Row;
use zeroize::Zeroizing;

use super::Database;
use crate::secrets::{DataKey, KeyEncryptionKey, SecretPlace, SecretsError, UNPROTECTED_KEK_ID};
use crate::store::StoreError;

/// How a secret column's values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnKind {
    /// `TEXT`.
    Text,
    /// `BLOB` / `BYTEA` (the sealed text's bytes).
    Bytes,
}

/// A column holding secrets, and the column naming its row.
#[derive(Debug, Clone, Copy)]
struct SecretColumn {
    table: &'static str,
    column: &'static str,
    id_column: &'static str,
    kind: ColumnKind,
}

/// Every secret column of the schema. A new secret column is added here (so clear rows are
/// sealed when a server starts) and sealed by its store functions with [`place`].
const SECRET_COLUMNS: &[SecretColumn] = &[
    SecretColumn {
        table: "enrollments",
        column: "otp_seed",
        id_column: "enrollment_id",
        kind: ColumnKind::Text,
    },
    SecretColumn {
        table: "otp_tokens",
        column: "seed",
        id_column: "token_id",
        kind: ColumnKind::Text,
    },
    SecretColumn {
        table: "server_keys",
        column: "private_key",
        id_column: "kid",
        kind: ColumnKind::Bytes,
    },
    SecretColumn {
        table: "oidc_signing_keys",
        column: "private_key",
        id_column: "kid",
        kind: ColumnKind::Bytes,
    },
    SecretColumn {
        table: "applications",
        column: "push_fcm",
        id_column: "id",
        kind: ColumnKind::Text,
    },
    SecretColumn {
        table: "applications",
        column: "push_apns",
        id_column: "id",
        kind: ColumnKind::Text,
    },
    SecretColumn {
        table: "applications",
        column: "sms_webhook_secret",
        id_column: "id",
        kind: ColumnKind::Text,
    },
    SecretColumn {
        table: "ciba_requests",
        column: "client_notification_token",
        id_column: "auth_req_id",
        kind: ColumnKind::Text,
    },
    SecretColumn {
        table: "qr_sessions",
        column: "token",
        id_column: "id",
        kind: ColumnKind::Text,
    },
    SecretColumn {
        table: "webhook_endpoints",
        column: "secret",
        id_column: "id",
        kind: ColumnKind::Text,
    },
    SecretColumn {
        table: "ciba_clients",
        column: "request_object_secret",
        id_column: "client_id",
        kind: ColumnKind::Text,
    },
    SecretColumn {
        table: "flow_browser_tokens",
        column: "token",
        id_column: "flow_id",
        kind: ColumnKind::Text,
    },
];

/// Where a secret of `table`.`column` in row `row` is sealed for.
pub(crate) fn place<'a>(
    table: &'static str,
    column: &'static str,
    row: &'a str,
) -> SecretPlace<'a> {
    SecretPlace { table, column, row }
}

/// Seals an optional text secret.
pub(crate) fn seal_text(
    key: &DataKey,
    place: SecretPlace<'_>,
    value: Option<&str>,
) -> Result<Option<String>, StoreError> {
    value
        .map(|v| key.seal(place, v.as_bytes()).map_err(StoreError::from))
        .transpose()
}

/// Opens an optional sealed text secret.
pub(crate) fn open_text(
    key: &DataKey,
    place: SecretPlace<'_>,
    value: Option<String>,
) -> Result<Option<Zeroizing<String>>, StoreError> {
    value
        .map(|v| {
            let v = Zeroizing::new(v);
            key.open_text(place, v.as_bytes()).map_err(StoreError::from)
        })
        .transpose()
}

/// How the data key is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    /// Wrapped by the master key with this id.
    MasterKey(String),
    /// Stored unwrapped: anyone who reads the database can open its secrets.
    Unprotected,
}

/// What opening the data key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// How the data key is protected now.
    pub protection: Protection,
    /// Whether the data key was created now (a new database).
    pub created: bool,
    /// Whether an unprotected data key was wrapped by the given master key now.
    pub protected_now: bool,
    /// How many clear values of secret columns were sealed now.
    pub sealed_rows: u64,
}

const DATA_KEY_ROW: &str = "data";

struct StoredKey {
    kek_id: String,
    wrapped: Zeroizing<Vec<u8>>,
}

async fn stored_key(db: &Database) -> Result<Option<StoredKey>, StoreError> {
    let row = sqlx::query("SELECT kek_id, wrapped_key FROM data_keys WHERE id = $1")
        .bind(DATA_KEY_ROW)
        .fetch_optional(db.writer())
        .await?;
    row.map(|r| {
        let wrapped: Zeroizing<String> = Zeroizing::new(r.try_get("wrapped_key")?);
        Ok(StoredKey {
            kek_id: r.try_get("kek_id")?,
            wrapped: Zeroizing::new(
                hex::decode(wrapped.as_bytes())
                    .map_err(|_| StoreError::Corrupted("wrapped data key"))?,
            ),
        })
    })
    .transpose()
}

async fn wrap(
    kek: Option<&dyn KeyEncryptionKey>,
    key: &DataKey,
) -> Result<(String, Zeroizing<String>), StoreError> {
    Ok(match kek {
        Some(kek) => (
            kek.id(),
            Zeroizing::new(hex::encode(kek.wrap(key.bytes()).await?)),
        ),
        None => (
            UNPROTECTED_KEK_ID.to_string(),
            Zeroizing::new(hex::encode(key.bytes())),
        ),
    })
}

async fn unwrap(
    kek: Option<&dyn KeyEncryptionKey>,
    stored: &StoredKey,
) -> Result<DataKey, StoreError> {
    if stored.kek_id == UNPROTECTED_KEK_ID {
        return Ok(DataKey::from_bytes(&stored.wrapped)?);
    }
    let kek = kek.ok_or_else(|| SecretsError::MasterKeyMissing {
        kek_id: stored.kek_id.clone(),
    })?;
    let bytes = kek.unwrap(&stored.wrapped).await.map_err(|e| match e {
        SecretsError::Undecryptable(_) => SecretsError::WrongMasterKey {
            expected: stored.kek_id.clone(),
            given: kek.id(),
        },
        other => other,
    })?;
    Ok(DataKey::from_bytes(&bytes)?)
}

/// Opens the database's data key with `kek` (the master key, if any): creates it for a new
/// database, wraps an unprotected one when a master key is given, and then seals every clear
/// value of a secret column (one transaction; nothing to do the next time).
///
/// Fails with [`SecretsError::MasterKeyMissing`] when the data key is wrapped and no key is
/// given, and [`SecretsError::WrongMasterKey`] when the given key does not unwrap it: never
/// with a wrong data key.
pub async fn open(
    db: &Database,
    kek: Option<&dyn KeyEncryptionKey>,
    now: i64,
) -> Result<(DataKey, Opened), StoreError> {
    let mut created = false;
    let mut protected_now = false;
    let key = match stored_key(db).await? {
        Some(stored) => {
            let key = unwrap(kek, &stored).await?;
            if stored.kek_id == UNPROTECTED_KEK_ID
                && let Some(kek) = kek
            {
                let (kek_id, wrapped) = wrap(Some(kek), &key).await?;
                let done = sqlx::query(
                    "UPDATE data_keys SET kek_id = $1, wrapped_key = $2, rewrapped_at = $3 \
                     WHERE id = $4 AND kek_id = $5",
                )
                .bind(&kek_id)
                .bind(wrapped.as_str())
                .bind(now)
                .bind(DATA_KEY_ROW)
                .bind(UNPROTECTED_KEK_ID)
                .execute(db.writer())
                .await?;
                protected_now = done.rows_affected() == 1;
            }
            key
        }
        None => {
            let key = DataKey::generate()?;
            let (kek_id, wrapped) = wrap(kek, &key).await?;
            let done = sqlx::query(
                "INSERT INTO data_keys (id, kek_id, wrapped_key, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(DATA_KEY_ROW)
            .bind(&kek_id)
            .bind(wrapped.as_str())
            .bind(now)
            .execute(db.writer())
            .await?;
            if done.rows_affected() == 1 {
                created = true;
                key
            } else {
                // Another instance created it first: use that one.
                let stored = stored_key(db)
                    .await?
                    .ok_or(StoreError::Corrupted("data key"))?;
                unwrap(kek, &stored).await?
            }
        }
    };
    let protection = match stored_key(db).await? {
        Some(stored) if stored.kek_id != UNPROTECTED_KEK_ID => Protection::MasterKey(stored.kek_id),
        _ => Protection::Unprotected,
    };
    let sealed_rows = seal_clear_values(db, &key).await?;
    Ok((
        key,
        Opened {
            protection,
            created,
            protected_now,
            sealed_rows,
        },
    ))
}

/// Wraps the data key with `new` instead of the key it is wrapped with now (`current`, or none
/// for an unprotected one). The secret columns are untouched: only the wrapped data key
/// changes, in one statement. Returns the new key's id.
pub async fn rewrap(
    db: &Database,
    current: Option<&dyn KeyEncryptionKey>,
    new: &dyn KeyEncryptionKey,
    now: i64,
) -> Result<String, StoreError> {
    let stored = stored_key(db)
        .await?
        .ok_or(StoreError::NotFound("data key"))?;
    let key = unwrap(current, &stored).await?;
    let (kek_id, wrapped) = wrap(Some(new), &key).await?;
    let done = sqlx::query(
        "UPDATE data_keys SET kek_id = $1, wrapped_key = $2, rewrapped_at = $3 \
         WHERE id = $4 AND kek_id = $5",
    )
    .bind(&kek_id)
    .bind(wrapped.as_str())
    .bind(now)
    .bind(DATA_KEY_ROW)
    .bind(&stored.kek_id)
    .execute(db.writer())
    .await?;
    if done.rows_affected() != 1 {
        return Err(StoreError::Corrupted("the data key changed meanwhile"));
    }
    Ok(kek_id)
}

/// Seals every clear value of every secret column, in one transaction. Returns how many.
async fn seal_clear_values(db: &Database, key: &DataKey) -> Result<u64, StoreError> {
    let mut tx = db.write().await?;
    let mut sealed = 0u64;
    for c in SECRET_COLUMNS {
        let select = match c.kind {
            ColumnKind::Text => format!(
                "SELECT {id}, {col} FROM {table} WHERE {col} IS NOT NULL AND {col} NOT LIKE 'tsx1:%'",
                id = c.id_column,
                col = c.column,
                table = c.table
            ),
            // Key tables are small: their values are checked here.
            ColumnKind::Bytes => format!(
                "SELECT {id}, {col} FROM {table} WHERE {col} IS NOT NULL",
                id = c.id_column,
                col = c.column,
                table = c.table
            ),
        };
        let rows = sqlx::query(&select).fetch_all(&mut *tx).await?;
        for row in rows {
            let id: String = row.try_get(0)?;
            let value: Zeroizing<Vec<u8>> = Zeroizing::new(match c.kind {
                ColumnKind::Text => row.try_get::<String, _>(1)?.into_bytes(),
                ColumnKind::Bytes => row.try_get::<Vec<u8>, _>(1)?,
            });
            if crate::secrets::is_sealed(&value) {
                continue;
            }
            let sealed_value = key.seal(place(c.table, c.column, &id), &value)?;
            // Only if the value is still the clear one read (another instance's write wins).
            let update = format!(
                "UPDATE {table} SET {col} = $1 WHERE {id} = $2 AND {col} = $3",
                table = c.table,
                col = c.column,
                id = c.id_column
            );
            let query = sqlx::query(&update);
            let query = match c.kind {
                ColumnKind::Text => query
                    .bind(sealed_value)
                    .bind(&id)
                    .bind(String::from_utf8_lossy(&value).into_owned()),
                ColumnKind::Bytes => query
                    .bind(sealed_value.into_bytes())
                    .bind(&id)
                    .bind(value.to_vec()),
            };
            sealed += query.execute(&mut *tx).await?.rows_affected();
        }
    }
    tx.commit().await?;
    Ok(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::MasterKey;

    #[tokio::test]
    async fn a_data_key_is_protected_later_refused_without_its_key_and_rewrapped() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("k.db").display());
        let db = Database::connect(&url, 2).await.expect("database");
        let (first, _) = MasterKey::generate().expect("key");
        let (second, _) = MasterKey::generate().expect("key");

        let (key, opened) = open(&db, None, 1).await.expect("open");
        assert!(opened.created);
        assert_eq!(opened.protection, Protection::Unprotected);
        let sealed = key
            .seal(place("otp_tokens", "seed", "otk_1"), b"seed")
            .expect("seal");

        let (again, opened) = open(&db, Some(&first), 2).await.expect("protect");
        assert!(opened.protected_now);
        assert_eq!(opened.protection, Protection::MasterKey(first.id()));
        assert_eq!(
            again
                .open(place("otp_tokens", "seed", "otk_1"), sealed.as_bytes())
                .expect("the same data key")
                .as_slice(),
            b"seed"
        );
        assert!(matches!(
            open(&db, None, 3).await,
            Err(StoreError::Secrets(SecretsError::MasterKeyMissing { .. }))
        ));
        assert!(matches!(
            open(&db, Some(&second), 3).await,
            Err(StoreError::Secrets(SecretsError::WrongMasterKey { .. }))
        ));
        assert_eq!(
            rewrap(&db, Some(&first), &second, 4).await.expect("rewrap"),
            second.id()
        );
        assert!(open(&db, Some(&first), 5).await.is_err());
        let (last, opened) = open(&db, Some(&second), 5).await.expect("the new key");
        assert!(!opened.created && !opened.protected_now);
        assert!(
            last.open(place("otp_tokens", "seed", "otk_1"), sealed.as_bytes())
                .is_ok()
        );
        db.close().await;
    }
}
