//! Form bodies, client authentication (`client_secret_basic`, `client_secret_post`,
//! `private_key_jwt`) and the verification of JWTs a client signs (client assertions, signed
//! requests, login hint tokens) with the keys it registered.

use axum::http::{HeaderMap, header};
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use tessera_protocol::ciba::{ClientAuthMethod, JWT_BEARER_ASSERTION_TYPE};

use super::error::{OAuthCode, OAuthError, invalid_request};
use crate::domain::Ctx;
use crate::store::ciba::{self, CibaClient};
use crate::store::{applications, nonces};

/// Longest lifetime accepted for a client assertion or a signed request (`exp` − `nbf`/now).
pub(crate) const MAX_JWT_LIFETIME: i64 = 3600;
/// Clock skew tolerated on `iat` and `nbf`.
pub(crate) const CLOCK_SKEW: i64 = 30;
const MAX_PARAM_BYTES: usize = 8 * 1024;

/// An `application/x-www-form-urlencoded` body: every parameter at most once.
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    /// Parses a body; refuses another content type, a repeated parameter or an oversized value.
    pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Self, OAuthError> {
        let form_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !form_type {
            return Err(invalid_request(
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        for (i, (name, value)) in pairs.iter().enumerate() {
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(invalid_request(format!(
                    "the parameter {} is given more than once",
                    safe_name(name)
                )));
            }
            if value.len() > MAX_PARAM_BYTES {
                return Err(invalid_request(format!(
                    "the parameter {} is too long",
                    safe_name(name)
                )));
            }
        }
        Ok(Self(pairs))
    }

    /// A parameter's value; an empty value counts as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The names of the parameters present.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }
}

/// A parameter name fit to echo in a message: known names only.
fn safe_name(name: &str) -> &str {
    if name.len() <= 40 && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        name
    } else {
        "(unnamed)"
    }
}

/// Client-authentication parameters: allowed beside a signed `request`.
pub(crate) const CLIENT_AUTH_PARAMS: &[&str] = &[
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
];

fn invalid_client(basic: bool) -> OAuthError {
    OAuthError {
        code: OAuthCode::InvalidClient,
        description: "client authentication failed".into(),
        basic_challenge: basic,
    }
}

fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| invalid_client(true))?;
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return Err(invalid_client(true));
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| invalid_client(true))?;
    let decoded = String::from_utf8(decoded).map_err(|_| invalid_client(true))?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or_else(|| invalid_client(true))?;
    // RFC 6749 §2.3.1: both parts are form-urlencoded before joining.
    let id = percent_decode(id).ok_or_else(|| invalid_client(true))?;
    let secret = percent_decode(secret).ok_or_else(|| invalid_client(true))?;
    Ok(Some((id, secret)))
}

fn percent_decode(text: &str) -> Option<String> {
    let plus = text.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

fn secret_matches(client: &CibaClient, secret: &str) -> bool {
    client.secret_digest.as_deref().is_some_and(|digest| {
        bool::from(
            applications::api_key_digest(secret)
                .as_bytes()
                .ct_eq(digest.as_bytes()),
        )
    })
}

/// Authenticates the calling client with the one method it registered. `audiences` are the
/// values a client assertion's `aud` may hold (the issuer and this endpoint's URL).
pub(crate) async fn authenticate_client(
    state: &Ctx,
    headers: &HeaderMap,
    form: &Form,
    audiences: &[String],
) -> Result<CibaClient, OAuthError> {
    let basic = basic_credentials(headers)?;
    let assertion = form.get("client_assertion");
    let post_secret = form.get("client_secret");
    let methods = usize::from(basic.is_some())
        + usize::from(assertion.is_some())
        + usize::from(post_secret.is_some());
    if methods > 1 {
        return Err(invalid_request(
            "use exactly one client authentication method",
        ));
    }
    let now = tessera_protocol::time::now();
    if let Some((id, secret)) = basic {
        if form.get("client_id").is_some_and(|form_id| form_id != id) {
            return Err(invalid_client(true));
        }
        let client = ciba::client(&state.db, &id)
            .await?
            .ok_or_else(|| invalid_client(true))?;
        if client.auth_method != ClientAuthMethod::ClientSecretBasic
            || !secret_matches(&client, &secret)
        {
            return Err(invalid_client(true));
        }
        return Ok(client);
    }
    if let Some(secret) = post_secret {
        let id = form.get("client_id").ok_or_else(|| invalid_client(false))?;
        let client = ciba::client(&state.db, id)
            .await?
            .ok_or_else(|| invalid_client(false))?;
        if client.auth_method != ClientAuthMethod::ClientSecretPost
            || !secret_matches(&client, secret)
        {
            return Err(invalid_client(false));
        }
        return Ok(client);
    }
    if let Some(assertion) = assertion {
        if form.get("client_assertion_type") != Some(JWT_BEARER_ASSERTION_TYPE) {
            return Err(invalid_client(false));
        }
        let unverified = jsonwebtoken::dangerous::insecure_decode::<Map<String, Value>>(assertion)
            .map_err(|_| invalid_client(false))?
            .claims;
        let id = unverified
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid_client(false))?;
        if form.get("client_id").is_some_and(|form_id| form_id != id) {
            return Err(invalid_client(false));
        }
        let client = ciba::client(&state.db, id)
            .await?
            .ok_or_else(|| invalid_client(false))?;
        if client.auth_method != ClientAuthMethod::PrivateKeyJwt {
            return Err(invalid_client(false));
        }
        let claims =
            verify_client_jwt(&client, assertion, None).map_err(|_| invalid_client(false))?;
        let exp = claims.get("exp").and_then(Value::as_i64);
        let jti = claims.get("jti").and_then(Value::as_str);
        let valid = claims.get("iss").and_then(Value::as_str) == Some(client.client_id.as_str())
            && claims.get("sub").and_then(Value::as_str) == Some(client.client_id.as_str())
            && audience_matches(claims.get("aud"), audiences)
            && exp.is_some_and(|exp| exp > now && exp <= now + MAX_JWT_LIFETIME)
            && jti.is_some_and(|j| !j.is_empty() && j.len() <= 256);
        let (Some(exp), Some(jti), true) = (exp, jti, valid) else {
            return Err(invalid_client(false));
        };
        if !nonces::record_once(&state.db, &jti_key(&client.client_id, jti), exp, now).await? {
            return Err(invalid_client(false));
        }
        return Ok(client);
    }
    Err(invalid_client(false))
}

/// The replay-store key of a JWT id a client used.
pub(crate) fn jti_key(client_id: &str, jti: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{client_id}\n{jti}").as_bytes());
    format!(
        "jti:{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

/// Whether `aud` (a string or an array) holds one of `expected`.
pub(crate) fn audience_matches(aud: Option<&Value>, expected: &[String]) -> bool {
    match aud {
        Some(Value::String(a)) => expected.iter().any(|e| e == a),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .any(|a| expected.iter().any(|e| e == a)),
        _ => false,
    }
}

/// Why a client-signed JWT was refused (the message is safe to show).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ClientJwtError {
    #[error("the JWT is malformed")]
    Malformed,
    #[error("the JWT's algorithm is none, symmetric, or not the one registered")]
    Algorithm,
    #[error("the client registered no key that can verify this JWT")]
    NoKey,
    #[error("the JWT's signature does not verify with the client's keys")]
    Signature,
}

const ASYMMETRIC: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

/// Parses an algorithm name, accepting asymmetric algorithms only.
pub(crate) fn asymmetric_algorithm(name: &str) -> Option<Algorithm> {
    let alg: Algorithm = name.parse().ok()?;
    ASYMMETRIC.contains(&alg).then_some(alg)
}

/// Verifies a JWT signed by `client` with one of its registered keys (asymmetric algorithms
/// only; `required_alg` pins one) and returns its claims. Time claims are the caller's to check.
pub(crate) fn verify_client_jwt(
    client: &CibaClient,
    jwt: &str,
    required_alg: Option<&str>,
) -> Result<Map<String, Value>, ClientJwtError> {
    // `decode_header` refuses `none` and unknown algorithms.
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::Json(_) | jsonwebtoken::errors::ErrorKind::Base64(_) => {
            if jwt_alg_is_none(jwt) {
                ClientJwtError::Algorithm
            } else {
                ClientJwtError::Malformed
            }
        }
        _ => ClientJwtError::Algorithm,
    })?;
    if !ASYMMETRIC.contains(&header.alg) {
        return Err(ClientJwtError::Algorithm);
    }
    if let Some(required) = required_alg
        && asymmetric_algorithm(required) != Some(header.alg)
    {
        return Err(ClientJwtError::Algorithm);
    }
    let set: JwkSet = client
        .jwks
        .as_deref()
        .and_then(|j| serde_json::from_str(j).ok())
        .ok_or(ClientJwtError::NoKey)?;
    let candidates: Vec<_> = match &header.kid {
        Some(kid) => set
            .keys
            .iter()
            .filter(|k| k.common.key_id.as_deref() == Some(kid.as_str()))
            .collect(),
        None => set.keys.iter().collect(),
    };
    if candidates.is_empty() {
        return Err(ClientJwtError::NoKey);
    }
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    for jwk in candidates {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        if let Ok(data) = jsonwebtoken::decode::<Map<String, Value>>(jwt, &key, &validation) {
            return Ok(data.claims);
        }
    }
    Err(ClientJwtError::Signature)
}

fn jwt_alg_is_none(jwt: &str) -> bool {
    jwt.split('.')
        .next()
        .and_then(|h| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .ok()
        })
        .and_then(|h| serde_json::from_slice::<Map<String, Value>>(&h).ok())
        .and_then(|h| {
            h.get("alg")
                .and_then(Value::as_str)
                .map(|a| a.eq_ignore_ascii_case("none"))
        })
        .unwrap_or(false)
}
