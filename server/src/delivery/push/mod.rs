//! Push delivery: a hint that a request is waiting. Pull is the truth: a push that cannot be
//! delivered never loses the request, the device can always fetch it.
//!
//! Providers:
//! - **webhook** ([`webhook`]): when the application has a webhook URL, it receives every push
//!   for its devices and relays it by its own channel;
//! - **FCM HTTP v1** ([`fcm`]) and **APNs token auth** ([`apns`]): otherwise the device's push
//!   registration picks FCM or APNs, when the application has credentials for it;
//! - **none**: the device pulls.
//!
//! The payload carries the signed request itself when it fits
//! [`crate::ServerConfig::push_max_payload_bytes`] and the provider's limit, otherwise only the
//! request's id, and the device core's `handle_push` accepts both. Transient failures (network,
//! 429, 5xx) are retried with exponential backoff. When FCM or APNs says a token is no longer
//! valid the enrollment is marked stale and not pushed to until the device registers a new token.

mod apns;
mod fcm;
mod webhook;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tessera_protocol::authentication::AuthenticationId;
use tessera_protocol::pairing::PushRegistration;
use zeroize::Zeroizing;

pub(crate) use apns::ApnsCredentials;
pub use apns::ApnsEnvironment;
pub(crate) use fcm::FcmCredentials;

use crate::domain::Ctx;
use crate::domain::ports::{DevicePush, PushFuture};
use crate::metrics::PushLabels;
use crate::store::StoreError;
use crate::store::applications::SealedPushSettings;
use crate::store::authentications::{self, Authentication};
use crate::store::enrollments::{self, Enrollment};

/// Push credentials an administrator gave are unusable. The messages name the problem, never
/// the submitted values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushCredentialsError {
    /// The service-account file is not JSON, not of `type` `service_account`, or misses a field.
    #[error("the service account is not usable: {0}")]
    ServiceAccount(&'static str),
    /// The service account's `private_key` is not a PKCS#8 PEM RSA private key.
    #[error("the service account's private_key is not a PKCS#8 PEM RSA private key")]
    RsaKey,
    /// The APNs key is not a PKCS#8 PEM P-256 private key (an Apple `.p8` file).
    #[error("the APNs key is not a PKCS#8 PEM P-256 private key (.p8)")]
    EcKey,
    /// A field is empty, too long or has characters it may not have.
    #[error("invalid {0}")]
    Field(&'static str),
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PushError {
    /// Worth retrying: network failure, 429, 5xx.
    #[error("transient failure: {0}")]
    Transient(String),
    /// The receiver says the device can no longer be reached with this token.
    #[error("the push token is no longer valid")]
    TokenInvalid,
    /// Refused for good.
    #[error("refused: {0}")]
    Permanent(String),
}

/// HTTP clients and the per-application caches of provider credentials (FCM access tokens,
/// APNs provider tokens). Shared by every push of one server process.
pub(crate) struct PushClients {
    /// HTTP/1.1 or HTTP/2 by ALPN: webhooks, FCM, OAuth token endpoints, APNs over TLS.
    http: Option<reqwest::Client>,
    /// HTTP/2 with prior knowledge: APNs at a plain `http://` endpoint (local test receivers).
    h2c: Option<reqwest::Client>,
    /// Customer URLs (push and SMS/voice webhooks): never through a proxy from the environment
    /// (`HTTPS_PROXY` and the like), which would resolve the name again on its side.
    webhook: Option<reqwest::Client>,
    fcm_tokens: TokenCache,
    apns_tokens: TokenCache,
}

impl PushClients {
    pub(crate) fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = || {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("tessera-server/", env!("CARGO_PKG_VERSION")))
        };
        Self {
            http: builder().build().ok(),
            h2c: builder().http2_prior_knowledge().build().ok(),
            webhook: builder().no_proxy().build().ok(),
            fcm_tokens: TokenCache::default(),
            apns_tokens: TokenCache::default(),
        }
    }

    /// The HTTP client for customer URLs (push webhooks, SMS and voice provider webhooks): no
    /// proxy.
    pub(crate) fn client(&self) -> Option<reqwest::Client> {
        self.webhook.clone()
    }

    fn webhook(&self) -> Result<&reqwest::Client, PushError> {
        self.webhook
            .as_ref()
            .ok_or_else(|| PushError::Permanent("no HTTP client".into()))
    }

    fn http(&self) -> Result<&reqwest::Client, PushError> {
        self.http
            .as_ref()
            .ok_or_else(|| PushError::Permanent("no HTTP client".into()))
    }

    fn h2c(&self) -> Result<&reqwest::Client, PushError> {
        self.h2c
            .as_ref()
            .ok_or_else(|| PushError::Permanent("no HTTP/2 client".into()))
    }
}

/// A bearer token and until when it may be used.
struct CachedToken {
    token: Zeroizing<String>,
    use_until: Instant,
}

/// Tokens by key (application and credential ids). One async lock per key: concurrent pushes of
/// one application wait for a single fetch instead of each fetching a token.
#[derive(Default)]
struct TokenCache {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<CachedToken>>>>>,
}

impl TokenCache {
    fn slot(&self, key: &str) -> Arc<tokio::sync::Mutex<Option<CachedToken>>> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(slots.entry(key.to_string()).or_default())
    }

    /// The cached token for `key`, or a new one from `fetch` (the token and how long to use it).
    async fn get<F, Fut>(&self, key: &str, fetch: F) -> Result<Zeroizing<String>, PushError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Zeroizing<String>, Duration), PushError>>,
    {
        let slot = self.slot(key);
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| c.use_until > Instant::now()) {
            return Ok(c.token.clone());
        }
        let (token, lifetime) = fetch().await?;
        *cached = Some(CachedToken {
            token: token.clone(),
            use_until: Instant::now() + lifetime,
        });
        Ok(token)
    }

    /// Forgets `token` (the provider refused it), unless another task already replaced it.
    async fn invalidate(&self, key: &str, token: &str) {
        let slot = self.slot(key);
        let mut cached = slot.lock().await;
        if cached.as_ref().is_some_and(|c| c.token.as_str() == token) {
            *cached = None;
        }
    }
}

/// Where one push goes.
enum Route {
    /// No push: the device pulls.
    None,
    /// The provider said the device's token is no longer valid; not pushed until it registers a
    /// new one.
    Stale(&'static str),
    /// The application's webhook.
    Webhook { url: String },
    /// Firebase Cloud Messaging.
    Fcm {
        credentials: Box<FcmCredentials>,
        token: String,
    },
    /// Apple Push Notification service.
    Apns {
        credentials: Box<ApnsCredentials>,
        token: String,
        sandbox: bool,
    },
}

impl Route {
    fn provider(&self) -> &'static str {
        match self {
            Route::None => "none",
            Route::Stale(provider) => provider,
            Route::Webhook { .. } => "webhook",
            Route::Fcm { .. } => "fcm",
            Route::Apns { .. } => "apns",
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

/// Picks the provider: the webhook if the application has one; otherwise FCM or APNs as the
/// device registered, if the application has credentials for it; otherwise none.
async fn route(
    state: &Ctx,
    device: &Enrollment,
    settings: Option<SealedPushSettings>,
) -> Result<Route, StoreError> {
    let settings = match settings {
        Some(sealed) => sealed.open(&state.db)?,
        None => crate::store::applications::push_settings(&state.db, &device.application_id)
            .await?
            .unwrap_or_default(),
    };
    if let Some(url) = settings.webhook_url {
        return Ok(Route::Webhook { url });
    }
    let stale = device.push_stale_at.is_some();
    Ok(match (&device.push, settings.fcm, settings.apns) {
        (PushRegistration::Fcm { .. }, Some(_), _) if stale => Route::Stale("fcm"),
        (PushRegistration::Fcm { token }, Some(stored), _) => Route::Fcm {
            credentials: Box::new(
                FcmCredentials::from_stored(&stored)
                    .map_err(|_| StoreError::Corrupted("push_fcm"))?,
            ),
            token: token.clone(),
        },
        (PushRegistration::Apns { .. }, _, Some(_)) if stale => Route::Stale("apns"),
        (PushRegistration::Apns { token, sandbox }, _, Some(stored)) => Route::Apns {
            credentials: Box::new(
                ApnsCredentials::from_stored(&stored)
                    .map_err(|_| StoreError::Corrupted("push_apns"))?,
            ),
            token: token.clone(),
            sandbox: *sandbox,
        },
        _ => Route::None,
    })
}

/// Pushes through this process's clients; implements the domain's [`DevicePush`].
pub(crate) struct PushDelivery {
    clients: Arc<PushClients>,
}

impl PushDelivery {
    /// Delivery over `clients`.
    pub(crate) fn new(clients: Arc<PushClients>) -> Self {
        Self { clients }
    }
}

impl DevicePush for PushDelivery {
    fn push(
        &self,
        ctx: Ctx,
        record: Authentication,
        device: Enrollment,
        settings: Option<SealedPushSettings>,
    ) -> PushFuture {
        let clients = Arc::clone(&self.clients);
        Box::pin(async move { deliver_with(ctx, &clients, record, device, settings).await })
    }
}

async fn deliver_with(
    state: Ctx,
    clients: &PushClients,
    record: Authentication,
    device: Enrollment,
    settings: Option<SealedPushSettings>,
) -> Option<&'static str> {
    let route = match route(&state, &device, settings).await {
        Ok(route) => route,
        Err(e) => {
            tracing::warn!(error = %e, "push: could not read the application's provider");
            return None;
        }
    };
    let (outcome, attempts) = match &route {
        Route::None => ("none", 0),
        Route::Stale(_) => ("stale_token", 0),
        Route::Webhook { url } => {
            let body = webhook::body(&record, &device, state.config.push_max_payload_bytes);
            with_retries(&state, &record.id, || webhook::send(clients, url, &body)).await
        }
        Route::Fcm { credentials, token } => {
            let message = fcm::message(&record, token, state.config.push_max_payload_bytes);
            with_retries(&state, &record.id, || {
                fcm::send(
                    &state,
                    clients,
                    &record.application_id,
                    credentials,
                    &message,
                )
            })
            .await
        }
        Route::Apns {
            credentials,
            token,
            sandbox,
        } => {
            let push = apns::Push::new(&record, state.config.push_max_payload_bytes);
            with_retries(&state, &record.id, || {
                apns::send(
                    &state,
                    clients,
                    &record.application_id,
                    credentials,
                    token,
                    *sandbox,
                    &push,
                )
            })
            .await
        }
    };
    state
        .metrics
        .pushes
        .get_or_create(&PushLabels {
            provider: route.provider(),
            outcome,
        })
        .inc();
    // The stale mark first: once the outcome is visible, later pushes already skip the token.
    if outcome == "token_invalid" && matches!(route, Route::Fcm { .. } | Route::Apns { .. }) {
        let marked = enrollments::mark_push_stale(
            &state.db,
            &device.enrollment_id,
            &device.push,
            state.now(),
        )
        .await;
        match marked {
            Ok(()) => tracing::info!(
                enrollment_id = %device.enrollment_id,
                provider = route.provider(),
                "push token marked stale until the device registers a new one"
            ),
            Err(e) => tracing::warn!(error = %e, "push: could not mark the token stale"),
        }
    }
    // A request is stored with push state "none" and no attempts: a device reached only by
    // pulling leaves it as it is (no write that changes nothing, on every such request).
    let unchanged = outcome == "none" && attempts == 0 && record.push_state == "none";
    if !unchanged
        && let Err(e) =
            authentications::set_push_state(&state.db, &record.id, outcome, attempts).await
    {
        tracing::warn!(error = %e, "push: could not record the outcome");
    }
    Some(outcome)
}

/// Runs `send` until it succeeds, fails for good, or the attempts are spent; waits
/// `push_retry_base × 4ⁿ` between attempts. Returns the outcome and the attempts made.
async fn with_retries<F, Fut>(
    state: &Ctx,
    id: &AuthenticationId,
    mut send: F,
) -> (&'static str, u32)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), PushError>>,
{
    let attempts = state.config.push_attempts.max(1);
    let mut delay = state.config.push_retry_base;
    for attempt in 1..=attempts {
        match send().await {
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

/// Maps a network failure without naming the URL (an APNs URL carries the device token).
fn network(e: &reqwest::Error) -> PushError {
    PushError::Transient(if e.is_timeout() {
        "timed out".into()
    } else {
        "connection failed".into()
    })
}

/// Reads a small JSON answer body (error details); anything else reads as `null`.
async fn small_json(response: reqwest::Response) -> Value {
    if response.content_length().is_some_and(|n| n > 64 * 1024) {
        return Value::Null;
    }
    match response.bytes().await {
        Ok(bytes) if bytes.len() <= 64 * 1024 => {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        }
        _ => Value::Null,
    }
}
