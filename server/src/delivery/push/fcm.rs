//! Firebase Cloud Messaging, HTTP v1 API.
//!
//! The server signs an RS256 JWT with the application's service-account key and trades it for an
//! OAuth2 access token at the account's `token_uri` (JWT-bearer grant, RFC 7523), caches the
//! token until shortly before it expires, and POSTs
//! `{endpoint}/v1/projects/{project_id}/messages:send` with a data-only message: FCM `data`
//! values are strings; there is never a `notification` block (the app shows what the core
//! returns).

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tessera_protocol::ids::ApplicationId;
use zeroize::Zeroizing;

use super::{PushCredentialsError, PushError, device_data, network, small_json};
use crate::domain::Ctx;
use crate::store::authentications::Authentication;

/// FCM's base URL.
/// The OAuth2 scope for sending messages.
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// RFC 7523's grant type.
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// FCM's limit on a message's `data`.
const DATA_LIMIT: usize = 4096;
/// Lifetime of the signed assertion (Google accepts at most one hour).
const ASSERTION_SECONDS: i64 = 3600;

/// What the server keeps of a Google service account: enough to sign assertions and send.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct FcmCredentials {
    /// The Firebase project.
    pub project_id: String,
    /// The key's id (the assertion's `kid`).
    pub private_key_id: String,
    /// The PKCS#8 PEM RSA private key.
    pub private_key: String,
    /// The service account (the assertion's `iss`).
    pub client_email: String,
    /// Google's OAuth2 token endpoint (the assertion's `aud`).
    pub token_uri: String,
}

impl std::fmt::Debug for FcmCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmCredentials")
            .field("project_id", &self.project_id)
            .field("private_key_id", &self.private_key_id)
            .field("client_email", &self.client_email)
            .finish_non_exhaustive()
    }
}

fn field_ok(value: &str, max: usize, allowed: impl Fn(char) -> bool) -> bool {
    !value.is_empty() && value.len() <= max && value.chars().all(allowed)
}

impl FcmCredentials {
    /// Reads and checks a service-account JSON file (as Google's console downloads it): `type`
    /// `service_account`, the fields the server needs, a usable RSA key, an https `token_uri`
    /// (plain http only to loopback, for tests).
    pub(crate) fn from_service_account(json: &str) -> Result<Self, PushCredentialsError> {
        let value: Value = serde_json::from_str(json)
            .map_err(|_| PushCredentialsError::ServiceAccount("not a JSON object"))?;
        let text = |name: &'static str| -> Result<String, PushCredentialsError> {
            match value.get(name) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                _ => Err(PushCredentialsError::ServiceAccount(name)),
            }
        };
        if text("type")? != "service_account" {
            return Err(PushCredentialsError::ServiceAccount(
                "type is not service_account",
            ));
        }
        let credentials = FcmCredentials {
            project_id: text("project_id")?,
            private_key_id: text("private_key_id")?,
            private_key: text("private_key")?,
            client_email: text("client_email")?,
            token_uri: text("token_uri")?,
        };
        credentials.check()?;
        Ok(credentials)
    }

    /// Reads credentials as stored by [`crate::admin::set_fcm`].
    pub(crate) fn from_stored(json: &str) -> Result<Self, PushCredentialsError> {
        serde_json::from_str(json).map_err(|_| PushCredentialsError::ServiceAccount("stored"))
    }

    fn check(&self) -> Result<(), PushCredentialsError> {
        if !field_ok(&self.project_id, 128, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_')
        }) {
            return Err(PushCredentialsError::Field("project_id"));
        }
        if !field_ok(&self.private_key_id, 128, |c| c.is_ascii_alphanumeric()) {
            return Err(PushCredentialsError::Field("private_key_id"));
        }
        if !field_ok(&self.client_email, 320, |c| c.is_ascii_graphic()) {
            return Err(PushCredentialsError::Field("client_email"));
        }
        let token_uri = tessera_protocol::pairing::ServerUrl::parse(&self.token_uri)
            .map_err(|_| PushCredentialsError::Field("token_uri"))?;
        if !(token_uri.is_https() || token_uri.is_loopback()) {
            return Err(PushCredentialsError::Field("token_uri (must be https)"));
        }
        // Signing proves the key is a whole RSA key, not just well-formed PEM.
        self.assertion(0)
            .map(|_| ())
            .map_err(|_| PushCredentialsError::RsaKey)
    }

    fn encoding_key(&self) -> Result<EncodingKey, PushCredentialsError> {
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(self.private_key.trim())
            .map_err(|_| PushCredentialsError::RsaKey)?;
        let der = key
            .to_pkcs1_der()
            .map_err(|_| PushCredentialsError::RsaKey)?;
        Ok(EncodingKey::from_rsa_der(der.as_bytes()))
    }

    /// The RFC 7523 assertion: RS256, `kid` the key id; `iss` the account, `scope`, `aud` the
    /// token endpoint, one hour of validity from `now`.
    fn assertion(&self, now: i64) -> Result<Zeroizing<String>, PushCredentialsError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.private_key_id.clone());
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + ASSERTION_SECONDS,
        });
        jsonwebtoken::encode(&header, &claims, &self.encoding_key()?)
            .map(Zeroizing::new)
            .map_err(|_| PushCredentialsError::RsaKey)
    }
}

/// The FCM message for an authentication: data only (string values), high priority.
pub(super) fn message(record: &Authentication, token: &str, max_bytes: usize) -> Value {
    let data: Map<String, Value> = match device_data(record, max_bytes.min(DATA_LIMIT)) {
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, Value::String(text))
            })
            .collect(),
        _ => Map::new(),
    };
    json!({
        "message": {
            "token": token,
            "data": data,
            "android": {"priority": "high"},
        }
    })
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

/// Trades a fresh assertion for an access token; returns it and how long to use it (until five
/// minutes before it expires).
async fn fetch_access_token(
    client: &reqwest::Client,
    credentials: &FcmCredentials,
    now: i64,
) -> Result<(Zeroizing<String>, Duration), PushError> {
    let assertion = credentials
        .assertion(now)
        .map_err(|_| PushError::Permanent("the service account key is unusable".into()))?;
    let form = Zeroizing::new(
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", JWT_BEARER)
            .append_pair("assertion", &assertion)
            .finish(),
    );
    let response = client
        .post(&credentials.token_uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.as_bytes().to_vec())
        .send()
        .await
        .map_err(|e| network(&e))?;
    let status = response.status().as_u16();
    match status {
        200 => {}
        429 | 500..=599 => {
            return Err(PushError::Transient(format!(
                "OAuth token endpoint: HTTP {status}"
            )));
        }
        _ => {
            return Err(PushError::Permanent(format!(
                "OAuth token endpoint refused the service account: HTTP {status}"
            )));
        }
    }
    let answer: TokenAnswer = response
        .json()
        .await
        .map_err(|_| PushError::Transient("OAuth token endpoint: unexpected answer".into()))?;
    if answer.access_token.is_empty() {
        return Err(PushError::Transient(
            "OAuth token endpoint: empty token".into(),
        ));
    }
    let expires_in = answer.expires_in.unwrap_or(3600);
    let use_for = if expires_in > 600 {
        expires_in - 300
    } else {
        expires_in / 2
    };
    Ok((
        Zeroizing::new(answer.access_token),
        Duration::from_secs(use_for),
    ))
}

/// Sends one message. A `401` makes a new access token once and sends again.
pub(super) async fn send(
    state: &Ctx,
    clients: &super::PushClients,
    application: &ApplicationId,
    credentials: &FcmCredentials,
    message: &Value,
) -> Result<(), PushError> {
    let client = clients.http()?;
    let url = format!(
        "{}/v1/projects/{}/messages:send",
        state.config.fcm_endpoint.trim_end_matches('/'),
        credentials.project_id
    );
    let cache_key = format!(
        "{application}:{}:{}",
        credentials.client_email, credentials.private_key_id
    );
    let mut refreshed = false;
    loop {
        let token = clients
            .fcm_tokens
            .get(&cache_key, || {
                fetch_access_token(client, credentials, state.now())
            })
            .await?;
        let response = client
            .post(&url)
            .bearer_auth(token.as_str())
            .json(message)
            .send()
            .await
            .map_err(|e| network(&e))?;
        let status = response.status().as_u16();
        if status == 401 && !refreshed {
            clients.fcm_tokens.invalidate(&cache_key, &token).await;
            refreshed = true;
            continue;
        }
        if (200..300).contains(&status) {
            return Ok(());
        }
        return Err(classify(status, &small_json(response).await));
    }
}

/// Maps an FCM error answer. `UNREGISTERED` (404) and an `INVALID_ARGUMENT` (400) naming the
/// token mean the token is no longer valid.
fn classify(status: u16, body: &Value) -> PushError {
    let error = &body["error"];
    let details = error["details"].as_array().cloned().unwrap_or_default();
    let error_code = |code: &str| details.iter().any(|d| d["errorCode"] == code);
    match status {
        404 if error_code("UNREGISTERED") || error["status"] == "NOT_FOUND" => {
            PushError::TokenInvalid
        }
        400 if error["status"] == "INVALID_ARGUMENT" && names_the_token(error, &details) => {
            PushError::TokenInvalid
        }
        429 | 500..=599 => PushError::Transient(format!("FCM HTTP {status}")),
        _ => {
            let status_text = error["status"].as_str().unwrap_or("");
            PushError::Permanent(format!("FCM HTTP {status} {status_text}"))
        }
    }
}

fn names_the_token(error: &Value, details: &[Value]) -> bool {
    let field_is_token = details.iter().any(|d| {
        d["fieldViolations"]
            .as_array()
            .is_some_and(|v| v.iter().any(|f| f["field"] == "message.token"))
    });
    let message = error["message"].as_str().unwrap_or("").to_ascii_lowercase();
    field_is_token || message.contains("registration token")
}

#[cfg(test)]
mod tests {
    use super::{PushError, classify};
    use serde_json::json;

    #[test]
    fn fcm_errors_are_classified() {
        let unregistered = json!({"error": {"code": 404, "message": "Requested entity was not found.",
            "status": "NOT_FOUND", "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": "UNREGISTERED"}]}});
        assert_eq!(classify(404, &unregistered), PushError::TokenInvalid);
        let bad_token = json!({"error": {"code": 400,
            "message": "The registration token is not a valid FCM registration token",
            "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]}]}});
        assert_eq!(classify(400, &bad_token), PushError::TokenInvalid);
        let bad_data = json!({"error": {"code": 400, "message": "Invalid value at 'message.data'",
            "status": "INVALID_ARGUMENT"}});
        assert!(matches!(classify(400, &bad_data), PushError::Permanent(_)));
        assert!(matches!(
            classify(503, &json!(null)),
            PushError::Transient(_)
        ));
        assert!(matches!(
            classify(429, &json!(null)),
            PushError::Transient(_)
        ));
        assert!(matches!(
            classify(403, &json!(null)),
            PushError::Permanent(_)
        ));
    }
}
