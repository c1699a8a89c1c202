//! The OpenID Provider's ID token signing keys (ES256): one signs, the ones it replaced stay
//! published until no token they signed can still be valid. Rotation adds a key and retires
//! the signing one in one transaction, so every instance signs with the newest key the next
//! time it reads them.

use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Value, json};
use tessera_protocol::envelope::SoftwareSigningKey;

use crate::domain::DomainError;
use crate::store::ciba::{self, StoredSigningKey};
use crate::store::{Database, StoreError};

/// A loaded key and when it was retired.
struct LoadedKey {
    key: SoftwareSigningKey,
    retired_at: Option<i64>,
}

fn load(stored: StoredSigningKey) -> Result<LoadedKey, DomainError> {
    Ok(LoadedKey {
        key: SoftwareSigningKey::from_pkcs8_der(&stored.private_key)
            .map_err(|_| DomainError::Internal("ID token signing key"))?,
        retired_at: stored.retired_at,
    })
}

/// Every key still published (the signing key first), creating the first one if there is none.
async fn published(
    db: &Database,
    now: i64,
    max_token_ttl: i64,
) -> Result<Vec<LoadedKey>, DomainError> {
    let mut stored = ciba::signing_keys(db).await?;
    if !stored.iter().any(|k| k.retired_at.is_none()) {
        match add_key(db, now).await {
            // Another instance created the first key at the same moment: use theirs.
            Ok(_) | Err(AddKeyError::Store(StoreError::AlreadyExists(_))) => {}
            Err(e) => return Err(e.into()),
        }
        stored = ciba::signing_keys(db).await?;
    }
    let mut keys: Vec<LoadedKey> = stored
        .into_iter()
        .filter(|k| k.retired_at.is_none_or(|at| at + max_token_ttl > now))
        .map(load)
        .collect::<Result<_, _>>()?;
    keys.sort_by_key(|k| k.retired_at.is_some());
    Ok(keys)
}

/// Why a key could not be added: kept apart so a concurrent first key is recognised.
enum AddKeyError {
    Store(StoreError),
    Encoding(&'static str),
}

impl From<AddKeyError> for DomainError {
    fn from(e: AddKeyError) -> Self {
        match e {
            AddKeyError::Store(e) => DomainError::from(e),
            AddKeyError::Encoding(what) => DomainError::Internal(what),
        }
    }
}

async fn add_key(db: &Database, now: i64) -> Result<String, AddKeyError> {
    let key = SoftwareSigningKey::generate();
    let der = key
        .to_pkcs8_der()
        .map_err(|_| AddKeyError::Encoding("key encoding"))?;
    let jwk = serde_json::to_string(&public_jwk(&key)).map_err(|_| AddKeyError::Encoding("jwk"))?;
    ciba::add_signing_key(db, key.kid(), &der, &jwk, now)
        .await
        .map_err(AddKeyError::Store)?;
    Ok(key.kid().to_string())
}

/// Adds a new signing key and retires the current one (still published until its tokens
/// expire). Returns the new key's id.
pub async fn rotate(db: &Database, now: i64, max_token_ttl: i64) -> Result<String, DomainError> {
    let kid = add_key(db, now).await.map_err(|e| match e {
        AddKeyError::Store(e) => DomainError::from(e),
        AddKeyError::Encoding(what) => DomainError::Internal(what),
    })?;
    ciba::drop_retired_keys(db, now - max_token_ttl).await?;
    Ok(kid)
}

fn public_jwk(key: &SoftwareSigningKey) -> Value {
    let jwk = key.public_jwk();
    json!({
        "kty": "EC",
        "crv": "P-256",
        "x": jwk.x(),
        "y": jwk.y(),
        "kid": key.kid(),
        "use": "sig",
        "alg": "ES256",
    })
}

/// The JWK Set published at the JWKS endpoint.
pub(crate) async fn jwks(
    db: &Database,
    now: i64,
    max_token_ttl: i64,
) -> Result<Value, DomainError> {
    let keys = published(db, now, max_token_ttl).await?;
    Ok(json!({ "keys": keys.iter().map(|k| public_jwk(&k.key)).collect::<Vec<_>>() }))
}

/// Signs claims as a JWT with the current key.
pub(crate) async fn sign(
    db: &Database,
    claims: &Value,
    now: i64,
    max_token_ttl: i64,
) -> Result<String, DomainError> {
    let keys = published(db, now, max_token_ttl).await?;
    let current = keys
        .first()
        .filter(|k| k.retired_at.is_none())
        .ok_or(DomainError::Internal("no ID token signing key"))?;
    sign_jwt(&current.key, claims)
}

/// A compact JWS (`alg` ES256, `typ` JWT, `kid`) over `claims`, signed with `ring`.
fn sign_jwt(key: &SoftwareSigningKey, claims: &Value) -> Result<String, DomainError> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use tessera_protocol::envelope::{EnvelopeSigner, RingSigningKey};
    let signer =
        RingSigningKey::from_software(key).map_err(|_| DomainError::Internal("ID token key"))?;
    let header = json!({"alg": "ES256", "kid": key.kid(), "typ": "JWT"});
    let header =
        serde_json::to_vec(&header).map_err(|_| DomainError::Internal("ID token header"))?;
    let claims =
        serde_json::to_vec(claims).map_err(|_| DomainError::Internal("ID token claims"))?;
    let mut jwt = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = signer
        .sign(jwt.as_bytes())
        .map_err(|_| DomainError::Internal("ID token signing"))?;
    jwt.push('.');
    jwt.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
    Ok(jwt)
}

/// Verifies the signature of a JWT this provider signed (with any published key) and returns
/// its claims; `None` if it is not one. Expiry is not checked: an ID token is a valid
/// `id_token_hint` after it expires.
pub(crate) async fn verify_own(
    db: &Database,
    jwt: &str,
    now: i64,
    max_token_ttl: i64,
) -> Result<Option<Value>, DomainError> {
    let Ok(header) = jsonwebtoken::decode_header(jwt) else {
        return Ok(None);
    };
    if header.alg != Algorithm::ES256 {
        return Ok(None);
    }
    let keys = published(db, now, max_token_ttl).await?;
    let Some(key) = keys
        .iter()
        .find(|k| Some(k.key.kid()) == header.kid.as_deref())
    else {
        return Ok(None);
    };
    let jwk = key.key.public_jwk();
    let Ok(decoding) = DecodingKey::from_ec_components(jwk.x(), jwk.y()) else {
        return Ok(None);
    };
    let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    Ok(jsonwebtoken::decode::<Value>(jwt, &decoding, &validation)
        .ok()
        .map(|data| data.claims))
}

#[cfg(test)]
mod ring_tests {
    use super::*;

    #[test]
    fn an_id_token_signed_with_ring_verifies_as_es256() {
        let key = SoftwareSigningKey::generate();
        let claims = json!({"iss": "https://op.example", "sub": "alice", "exp": 2_000_000_000_u64});
        let jwt = sign_jwt(&key, &claims).expect("sign");
        let jwk = key.public_jwk();
        let decoding = DecodingKey::from_ec_components(jwk.x(), jwk.y()).expect("key");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Value>(&jwt, &decoding, &validation).expect("verify");
        assert_eq!(data.claims, claims);
        assert_eq!(data.header.kid.as_deref(), Some(key.kid()));
        assert_eq!(data.header.typ.as_deref(), Some("JWT"));
    }
}
