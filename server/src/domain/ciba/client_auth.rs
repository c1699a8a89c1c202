//! Form parameters, client authentication (`client_secret_basic`, `client_secret_post`,
//! `private_key_jwt`) and the verification of JWTs a client signs (client assertions, signed
//! requests, login hint tokens) with the keys it registered.

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
/// Most parameters a form may have: an OAuth request has a dozen or two.
pub(crate) const MAX_PARAMS: usize = 100;

/// A form body's parameters (`application/x-www-form-urlencoded`): every parameter at most
/// once, none oversized.
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    /// Checks decoded parameters; refuses more than [`MAX_PARAMS`] of them, a repeated
    /// parameter or an oversized value. Before any client is authenticated: the checks are
    /// linear in the body (a body of thousands of short names compared each with all the
    /// others would hold a worker for a while).
    pub fn new(pairs: Vec<(String, String)>) -> Result<Self, OAuthError> {
        if pairs.len() > MAX_PARAMS {
            return Err(invalid_request(format!(
                "at most {MAX_PARAMS} parameters are accepted"
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(pairs.len());
        for (name, value) in &pairs {
            if !seen.insert(name.as_str()) {
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

/// HTTP Basic client credentials (RFC 6749 §2.3.1), already decoded.
pub(crate) struct BasicCredentials {
    /// The client id.
    pub id: String,
    /// The client secret.
    pub secret: String,
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

/// `invalid_client`; `basic`: the client tried HTTP Basic (answer with a challenge).
pub(crate) fn invalid_client(basic: bool) -> OAuthError {
    OAuthError {
        code: OAuthCode::InvalidClient,
        description: "client authentication failed".into(),
        basic_challenge: basic,
    }
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
    basic: Option<BasicCredentials>,
    form: &Form,
    audiences: &[String],
) -> Result<CibaClient, OAuthError> {
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
    let now = state.now();
    if let Some(BasicCredentials { id, secret }) = basic {
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

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use tessera_protocol::ciba::DeliveryMode;
    use tessera_protocol::envelope::SoftwareSigningKey;
    use tessera_protocol::ids::ApplicationId;

    use super::*;

    fn client_with(key: &SoftwareSigningKey) -> CibaClient {
        let jwk = key.public_jwk();
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": jwk.x(), "y": jwk.y(), "kid": key.kid(),
        }]});
        CibaClient {
            client_id: "cli_test".into(),
            application_id: ApplicationId::generate(),
            name: "Test".into(),
            delivery_mode: DeliveryMode::Poll,
            notification_endpoint: None,
            auth_method: ClientAuthMethod::PrivateKeyJwt,
            secret_digest: None,
            jwks: Some(jwks.to_string()),
            request_signing_alg: None,
            user_code_required: false,
            created_at: 0,
            redirect_uris: Vec::new(),
            grant_types: crate::store::ciba::LEGACY_GRANT_TYPES.to_vec(),
        }
    }

    fn signed(key: &SoftwareSigningKey, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_string);
        let der = key.to_pkcs8_der().unwrap();
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&der)).unwrap()
    }

    fn b64(value: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    }

    #[test]
    fn a_jwt_signed_with_a_registered_key_verifies() {
        let key = SoftwareSigningKey::generate();
        let client = client_with(&key);
        let jwt = signed(&key, Some(key.kid()), &json!({"sub": "u1"}));
        let claims = verify_client_jwt(&client, &jwt, None).unwrap();
        assert_eq!(claims.get("sub"), Some(&json!("u1")));
        // Without a kid, every registered key is tried.
        let jwt = signed(&key, None, &json!({"sub": "u1"}));
        assert!(verify_client_jwt(&client, &jwt, Some("ES256")).is_ok());
    }

    #[test]
    fn other_keys_algorithms_and_garbage_are_refused() {
        let key = SoftwareSigningKey::generate();
        let client = client_with(&key);
        let other = SoftwareSigningKey::generate();
        let jwt = signed(&other, None, &json!({"sub": "u1"}));
        assert_eq!(
            verify_client_jwt(&client, &jwt, None),
            Err(ClientJwtError::Signature)
        );
        let jwt = signed(&other, Some(other.kid()), &json!({"sub": "u1"}));
        assert_eq!(
            verify_client_jwt(&client, &jwt, None),
            Err(ClientJwtError::NoKey)
        );
        let jwt = signed(&key, Some(key.kid()), &json!({"sub": "u1"}));
        assert_eq!(
            verify_client_jwt(&client, &jwt, Some("RS256")),
            Err(ClientJwtError::Algorithm)
        );
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "u1"}),
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(
            verify_client_jwt(&client, &hs, None),
            Err(ClientJwtError::Algorithm)
        );
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none"})),
            b64(&json!({"sub": "u1"}))
        );
        assert_eq!(
            verify_client_jwt(&client, &none, None),
            Err(ClientJwtError::Algorithm)
        );
        let no_alg = format!(
            "{}.{}.x",
            b64(&json!({"typ": "JWT"})),
            b64(&json!({"sub": "u1"}))
        );
        assert_eq!(
            verify_client_jwt(&client, &no_alg, None),
            Err(ClientJwtError::Malformed)
        );
        let mut keyless = client.clone();
        keyless.jwks = None;
        assert_eq!(
            verify_client_jwt(&keyless, &jwt, None),
            Err(ClientJwtError::NoKey)
        );
    }

    #[test]
    fn audiences_may_be_a_string_or_an_array() {
        let expected = ["https://op".to_string()];
        assert!(audience_matches(Some(&json!("https://op")), &expected));
        assert!(audience_matches(
            Some(&json!(["x", "https://op"])),
            &expected
        ));
        assert!(!audience_matches(Some(&json!(["x"])), &expected));
        assert!(!audience_matches(Some(&json!(1)), &expected));
        assert!(!audience_matches(None, &expected));
    }

    #[test]
    fn only_asymmetric_algorithms_are_accepted() {
        assert_eq!(asymmetric_algorithm("ES256"), Some(Algorithm::ES256));
        assert_eq!(asymmetric_algorithm("EdDSA"), Some(Algorithm::EdDSA));
        assert_eq!(asymmetric_algorithm("HS256"), None);
        assert_eq!(asymmetric_algorithm("none"), None);
    }

    #[test]
    fn form_parameters_are_given_once_and_empty_ones_are_absent() {
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        let form = Form::new(vec![pair("scope", "openid"), pair("user_code", "")]).unwrap();
        assert_eq!(form.get("scope"), Some("openid"));
        assert_eq!(form.get("user_code"), None);
        assert_eq!(form.names().count(), 2);
        let e = Form::new(vec![pair("scope", "a"), pair("scope", "b")])
            .err()
            .unwrap();
        assert_eq!(e.description, "the parameter scope is given more than once");
        let e = Form::new(vec![pair("Weird<name>", "a"), pair("Weird<name>", "b")])
            .err()
            .unwrap();
        assert_eq!(
            e.description,
            "the parameter (unnamed) is given more than once"
        );
        assert!(Form::new(vec![pair("scope", &"x".repeat(MAX_PARAM_BYTES + 1))]).is_err());
        let many = |n: usize| {
            (0..n)
                .map(|i| pair(&format!("p{i}"), "v"))
                .collect::<Vec<_>>()
        };
        assert!(Form::new(many(MAX_PARAMS)).is_ok());
        let e = Form::new(many(MAX_PARAMS + 1)).err().expect("too many");
        assert!(e.description.contains("at most"), "{}", e.description);
        assert!(
            Form::new(many(20_000)).is_err(),
            "refused before any comparison"
        );
    }

    #[test]
    fn replay_keys_do_not_reveal_the_jti() {
        let key = jti_key("cli_a", "secret-jti");
        assert!(key.starts_with("jti:"));
        assert!(!key.contains("secret"));
        assert_ne!(key, jti_key("cli_b", "secret-jti"));
    }
}
