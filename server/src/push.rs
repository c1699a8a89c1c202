//! Push delivery: a hint that a request is waiting. Pull is the truth: a push that cannot be
//! delivered never loses the request, the device can always fetch it.
//!
//! Providers: **none** (poll-only devices and applications) and **webhook** (the application's
//! own URL receives every push for its devices and relays it by its own channel). The payload
//! carries the signed request itself when it fits [`crate::ServerConfig::push_max_payload_bytes`],
//! otherwise only the request's id, and the device core's `handle_push` accepts both. Transient
//! failures (network, 429, 5xx) are retried with exponential backoff.

use std::time::Duration;

use serde_json::{Value, json};
use tessera_protocol::authentication::AuthenticationId;

use crate::api::AppState;
use crate::db::authentications::{self, Authentication};
use crate::db::enrollments::Enrollment;
use crate::metrics::PushLabels;

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PushError {
    /// Worth retrying: network failure, 429, 5xx.
    Transient(String),
    /// The receiver says the device can no longer be reached (404 / 410).
    TokenInvalid,
    /// Refused for good (other 4xx).
    Permanent(String),
}

/// Where pushes for an application go.
pub(crate) enum PushProvider {
    /// No push: the device pulls.
    None,
    /// The application's webhook.
    Webhook { url: String },
}

impl PushProvider {
    fn name(&self) -> &'static str {
        match self {
            PushProvider::None => "none",
            PushProvider::Webhook { .. } => "webhook",
        }
    }
}

/// The data a push carries to the device: the signed request, or its id when too large.
pub(crate) fn device_data(record: &Authentication, max_bytes: usize) -> Value {
    let full = json!({"request": record.signed_request});
    if full.to_string().len() <= max_bytes {
        full
    } else {
        json!({"request_id": record.id, "enrollment_id": record.enrollment_id})
    }
}

fn http_client() -> Option<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tessera-server/", env!("CARGO_PKG_VERSION")))
        .build()
        .ok()
}

async fn send_once(client: &reqwest::Client, url: &str, body: &Value) -> Result<(), PushError> {
    let response = client.post(url).json(body).send().await.map_err(|e| {
        PushError::Transient(if e.is_timeout() {
            "timed out".into()
        } else {
            "connection failed".into()
        })
    })?;
    let status = response.status().as_u16();
    match status {
        200..=299 => Ok(()),
        404 | 410 => Err(PushError::TokenInvalid),
        429 | 500..=599 => Err(PushError::Transient(format!("HTTP {status}"))),
        _ => Err(PushError::Permanent(format!("HTTP {status}"))),
    }
}

/// Delivers the push for a new authentication, retrying transient failures, and records the
/// outcome (`none`, `sent`, `failed`, `token_invalid`) on the authentication.
pub(crate) async fn deliver(state: AppState, record: Authentication, device: Enrollment) {
    let provider =
        match crate::db::applications::push_webhook(&state.db, &record.application_id).await {
            Ok(Some(url)) => PushProvider::Webhook { url },
            Ok(None) => PushProvider::None,
            Err(e) => {
                tracing::warn!(error = %e, "push: could not read the application's provider");
                return;
            }
        };
    let (outcome, attempts) = match &provider {
        PushProvider::None => ("none", 0),
        PushProvider::Webhook { url } => {
            let body = json!({
                "application_id": record.application_id,
                "user_id": record.user_id,
                "enrollment_id": record.enrollment_id,
                "device_id": device.device_id,
                "push": device.push,
                "kind": record.kind,
                "data": device_data(&record, state.config.push_max_payload_bytes),
            });
            webhook_with_retries(&state, url, &body, &record.id).await
        }
    };
    state
        .metrics
        .pushes
        .get_or_create(&PushLabels {
            provider: provider.name(),
            outcome,
        })
        .inc();
    if let Err(e) = authentications::set_push_state(&state.db, &record.id, outcome, attempts).await
    {
        tracing::warn!(error = %e, "push: could not record the outcome");
    }
}

async fn webhook_with_retries(
    state: &AppState,
    url: &str,
    body: &Value,
    id: &AuthenticationId,
) -> (&'static str, u32) {
    let Some(client) = http_client() else {
        return ("failed", 0);
    };
    let attempts = state.config.push_attempts.max(1);
    let mut delay = state.config.push_retry_base;
    for attempt in 1..=attempts {
        match send_once(&client, url, body).await {
            Ok(()) => return ("sent", attempt),
            Err(PushError::TokenInvalid) => {
                tracing::info!(authentication_id = %id, "push: the receiver no longer reaches this device");
                return ("token_invalid", attempt);
            }
            Err(PushError::Permanent(reason)) => {
                tracing::warn!(authentication_id = %id, %reason, "push refused; the device can still pull");
                return ("failed", attempt);
            }
            Err(PushError::Transient(reason)) => {
                tracing::info!(authentication_id = %id, attempt, %reason, "push failed; retrying");
                if attempt < attempts {
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(4);
                }
            }
        }
    }
    ("failed", attempts)
}
