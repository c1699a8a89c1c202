//! Apple Push Notification service, token-based authentication, over HTTP/2.
//!
//! The provider token is an ES256 JWT (`kid` the key id, `iss` the team id, `iat`) signed with
//! the application's `.p8` key and reused for 50 minutes (Apple refuses tokens older than an
//! hour and refreshing more than once per 20 minutes). Each push is
//! `POST {base}/3/device/{token}` with the `apns-*` headers and a JSON payload of at most 4 KiB:
//! an alert for approvals and transactions, `content-available` for silent verifications, and
//! the push data under `tessera`.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationRequest};
use tessera_protocol::ids::ApplicationId;
use zeroize::Zeroizing;

use super::{PushCredentialsError, PushError, device_data, network, small_json};
use crate::domain::Ctx;
use crate::store::authentications::Authentication;

/// APNs production.
const PRODUCTION: &str = "https://api.push.apple.com";
/// APNs sandbox (development builds).
const SANDBOX: &str = "https://api.sandbox.push.apple.com";
/// APNs's payload limit.
const PAYLOAD_LIMIT: usize = 4096;
/// How long one provider token is used.
const PROVIDER_TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

/// Which APNs environment an application's pushes go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApnsEnvironment {
    /// `https://api.push.apple.com`: App Store, TestFlight and ad-hoc builds.
    Production,
    /// `https://api.sandbox.push.apple.com`: development builds.
    Sandbox,
}

/// An application's APNs token-auth credentials.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct ApnsCredentials {
    /// The Apple developer team id (the provider token's `iss`).
    pub team_id: String,
    /// The key's id (the provider token's `kid`).
    pub key_id: String,
    /// The `.p8` key: PKCS#8 PEM, P-256.
    pub private_key: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// Production or sandbox.
    pub environment: ApnsEnvironment,
}

impl std::fmt::Debug for ApnsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsCredentials")
            .field("team_id", &self.team_id)
            .field("key_id", &self.key_id)
            .field("topic", &self.topic)
            .field("environment", &self.environment)
            .finish_non_exhaustive()
    }
}

impl ApnsCredentials {
    /// Checks and assembles credentials: ids of letters and digits, a bundle-id topic, a `.p8`
    /// key that parses and signs.
    pub(crate) fn new(
        team_id: &str,
        key_id: &str,
        private_key: &str,
        topic: &str,
        environment: ApnsEnvironment,
    ) -> Result<Self, PushCredentialsError> {
        let ok = |v: &str, max: usize, allowed: fn(char) -> bool| {
            !v.is_empty() && v.len() <= max && v.chars().all(allowed)
        };
        if !ok(team_id, 32, |c| c.is_ascii_alphanumeric()) {
            return Err(PushCredentialsError::Field("team id"));
        }
        if !ok(key_id, 32, |c| c.is_ascii_alphanumeric()) {
            return Err(PushCredentialsError::Field("key id"));
        }
        if !ok(topic, 255, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
        }) {
            return Err(PushCredentialsError::Field("topic (the app's bundle id)"));
        }
        let credentials = ApnsCredentials {
            team_id: team_id.to_string(),
            key_id: key_id.to_string(),
            private_key: private_key.trim().to_string(),
            topic: topic.to_string(),
            environment,
        };
        credentials.provider_token(0)?;
        Ok(credentials)
    }

    /// Reads credentials as stored by [`crate::admin::set_apns`].
    pub(crate) fn from_stored(json: &str) -> Result<Self, PushCredentialsError> {
        serde_json::from_str(json).map_err(|_| PushCredentialsError::Field("stored credentials"))
    }

    /// The provider token: ES256, `kid` the key id; `iss` the team id, `iat`.
    fn provider_token(&self, now: i64) -> Result<Zeroizing<String>, PushCredentialsError> {
        let key = p256::SecretKey::from_pkcs8_pem(&self.private_key)
            .map_err(|_| PushCredentialsError::EcKey)?;
        let der = key
            .to_pkcs8_der()
            .map_err(|_| PushCredentialsError::EcKey)?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = json!({"iss": self.team_id, "iat": now});
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(der.as_bytes()))
            .map(Zeroizing::new)
            .map_err(|_| PushCredentialsError::EcKey)
    }
}

/// One push's headers and payload (the same for every attempt).
pub(super) struct Push {
    push_type: &'static str,
    priority: &'static str,
    expiration: String,
    apns_id: String,
    payload: Value,
}

impl Push {
    pub(super) fn new(record: &Authentication, max_bytes: usize) -> Push {
        let silent = record.kind == AuthenticationKind::Silent;
        let aps = if silent {
            json!({"content-available": 1})
        } else {
            let (title, body) = alert_text(record);
            json!({
                "alert": {"title": title, "body": body},
                "sound": "default",
                "mutable-content": 1,
            })
        };
        let build = |data: Value| json!({"aps": aps, "tessera": data});
        let mut payload = build(device_data(record, max_bytes));
        if payload.to_string().len() > PAYLOAD_LIMIT {
            payload = build(device_data(record, 0));
        }
        Push {
            push_type: if silent { "background" } else { "alert" },
            priority: if silent { "5" } else { "10" },
            expiration: record.expires_at.to_string(),
            apns_id: apns_id(record.id.as_str()),
            payload,
        }
    }
}

/// The alert's title (the application's name) and body (the request's message, or what kind of
/// request it is).
fn alert_text(record: &Authentication) -> (String, String) {
    let request: Option<AuthenticationRequest> =
        tessera_protocol::envelope::unverified_payload(&record.signed_request).ok();
    let title = request
        .as_ref()
        .map(|r| r.context.application_name.clone())
        .unwrap_or_default();
    let message = request
        .map(|r| r.parameters.message)
        .filter(|m| !m.trim().is_empty());
    let body = match message {
        Some(m) => m.chars().take(200).collect(),
        None if record.kind == AuthenticationKind::Transaction => "Transaction to confirm".into(),
        None => "Sign-in request".into(),
    };
    (title, body)
}

/// A UUID-formatted `apns-id` derived from the authentication id (RFC 9562 version 8 layout), so
/// retries of one push carry the same id.
fn apns_id(authentication_id: &str) -> String {
    let digest = Sha256::digest(authentication_id.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Sends one push. `403 ExpiredProviderToken`/`InvalidProviderToken` makes a new provider token
/// once and sends again.
pub(super) async fn send(
    state: &Ctx,
    clients: &super::PushClients,
    application: &ApplicationId,
    credentials: &ApnsCredentials,
    device_token: &str,
    device_sandbox: bool,
    push: &Push,
) -> Result<(), PushError> {
    if !device_token.bytes().all(|b| b.is_ascii_alphanumeric()) {
        // Not an APNs device token: Apple would answer BadDeviceToken.
        return Err(PushError::TokenInvalid);
    }
    let base = match &state.config.apns_endpoint {
        Some(base) => base.as_str(),
        None if device_sandbox || credentials.environment == ApnsEnvironment::Sandbox => SANDBOX,
        None => PRODUCTION,
    };
    let client = if base.starts_with("http://") {
        clients.h2c()?
    } else {
        clients.http()?
    };
    let url = format!("{}/3/device/{device_token}", base.trim_end_matches('/'));
    let cache_key = format!(
        "{application}:{}:{}",
        credentials.team_id, credentials.key_id
    );
    let mut refreshed = false;
    loop {
        let token = clients
            .apns_tokens
            .get(&cache_key, || async {
                credentials
                    .provider_token(state.now())
                    .map(|t| (t, PROVIDER_TOKEN_LIFETIME))
                    .map_err(|_| PushError::Permanent("the APNs key is unusable".into()))
            })
            .await?;
        let response = client
            .post(&url)
            .header("authorization", format!("bearer {}", token.as_str()))
            .header("apns-topic", &credentials.topic)
            .header("apns-push-type", push.push_type)
            .header("apns-priority", push.priority)
            .header("apns-expiration", &push.expiration)
            .header("apns-id", &push.apns_id)
            .json(&push.payload)
            .send()
            .await
            .map_err(|e| network(&e))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let reason = small_json(response).await["reason"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if status == 403
            && matches!(
                reason.as_str(),
                "ExpiredProviderToken" | "InvalidProviderToken"
            )
            && !refreshed
        {
            clients.apns_tokens.invalidate(&cache_key, &token).await;
            // ES256 signing here is deterministic (RFC 6979): a token made in the same second
            // would be the refused token again.
            tokio::time::sleep(until_next_second()).await;
            refreshed = true;
            continue;
        }
        return Err(match (status, reason.as_str()) {
            (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => {
                PushError::TokenInvalid
            }
            (429 | 500..=599, _) => PushError::Transient(format!("APNs HTTP {status} {reason}")),
            _ => PushError::Permanent(format!("APNs HTTP {status} {reason}")),
        });
    }
}

/// The time left until the next whole second.
fn until_next_second() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_nanos(u64::from(1_000_000_000 - nanos.min(999_999_999)))
        + Duration::from_millis(5)
}

#[cfg(test)]
mod tests {
    use super::apns_id;

    #[test]
    fn apns_id_is_a_stable_uuid() {
        let id = apns_id("aut_example");
        assert_eq!(id, apns_id("aut_example"));
        assert_ne!(id, apns_id("aut_other"));
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('8'));
    }
}
