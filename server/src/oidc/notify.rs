//! Ping and push delivery to clients' notification endpoints (CIBA Core §10.2 and §10.3).
//!
//! A finished request's notification becomes due in the database (at once when this instance
//! recorded the answer, otherwise at the next sweep); one instance claims it with a conditional
//! update, posts it with `Authorization: Bearer <client_notification_token>` to the addresses
//! the endpoint resolves to (each checked against SSRF; redirects never followed), and retries
//! with exponential backoff. A crashed instance's claim lapses and another instance resumes it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tessera_protocol::authentication::AuthenticationState;
use tessera_protocol::ciba::{DeliveryMode, OAuthErrorResponse};
use tessera_protocol::time;
use tokio::sync::Notify;
use url::Url;

use super::token::{time_ms, tokens_for};
use crate::domain::Ctx;
use crate::domain::ssrf::{self, TargetPolicy};
use crate::error::ServerError;
use crate::store::authentications::{self, Authentication};
use crate::store::ciba::{self, CibaClient, CibaRequest, NotifyState};

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
const BATCH: i64 = 64;

/// Wakes this instance's notifier.
#[derive(Clone, Default)]
pub(crate) struct NotifierHandle(Arc<Notify>);

impl NotifierHandle {
    fn wake(&self) {
        self.0.notify_one();
    }
}

/// After an answer was recorded: if it finishes a ping or push request, its notification is due
/// now.
pub(crate) async fn settle(state: &Ctx, record: &Authentication) -> Result<(), ServerError> {
    if record.kind != tessera_protocol::authentication::AuthenticationKind::Ciba {
        return Ok(());
    }
    if ciba::notification_due_for(&state.db, record.id.as_str(), time_ms()).await? {
        state.ciba_notifier.wake();
    }
    Ok(())
}

/// The notifier loop: sweeps every `ciba_notification_sweep`, or at once when woken.
pub(crate) async fn run(state: Ctx) {
    loop {
        tokio::select! {
            _ = state.ciba_notifier.0.notified() => {}
            _ = tokio::time::sleep(state.config.ciba_notification_sweep) => {}
        }
        if let Err(e) = sweep(&state).await {
            tracing::warn!(error = %e, "CIBA notification sweep failed");
        }
    }
}

async fn sweep(state: &Ctx) -> Result<(), ServerError> {
    let now_ms = time_ms();
    ciba::promote_finished(&state.db, time::now(), now_ms).await?;
    for request in ciba::due_notifications(&state.db, now_ms, BATCH).await? {
        let lease = now_ms + lease_ms(state, request.notify_attempts);
        if ciba::claim_notification(&state.db, &request, lease).await? {
            tokio::spawn(deliver(state.clone(), request));
        }
    }
    Ok(())
}

fn backoff(state: &Ctx, attempts_made: i64) -> Duration {
    let exponent = u32::try_from(attempts_made.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    state.config.ciba_notification_retry_base * 2u32.pow(exponent)
}

fn lease_ms(state: &Ctx, attempts_made: i64) -> i64 {
    let wait = DELIVERY_TIMEOUT + backoff(state, attempts_made + 1) + Duration::from_secs(5);
    i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2)
}

/// Delivers one claimed notification, retrying with backoff.
async fn deliver(state: Ctx, request: CibaRequest) {
    let outcome = deliver_with_retries(&state, &request).await;
    let final_state = match outcome {
        Ok(true) => NotifyState::Done,
        Ok(false) => NotifyState::Failed,
        Err(e) => {
            tracing::warn!(error = %e, "CIBA notification could not be prepared");
            NotifyState::Failed
        }
    };
    if let Err(e) = ciba::finish_notification(&state.db, &request.auth_req_id, final_state).await {
        tracing::warn!(error = %e, "CIBA notification outcome not recorded");
    }
}

async fn deliver_with_retries(state: &Ctx, request: &CibaRequest) -> Result<bool, ServerError> {
    let Some(client) = ciba::client(&state.db, &request.client_id).await? else {
        return Ok(false);
    };
    let (Some(endpoint), Some(token)) = (
        client.notification_endpoint.as_deref(),
        request.client_notification_token.as_deref(),
    ) else {
        return Ok(false);
    };
    let endpoint =
        Url::parse(endpoint).map_err(|_| ServerError::Corrupted("notification endpoint"))?;
    let body = payload(state, &client, request).await?;
    let policy = TargetPolicy {
        allow_loopback: state.config.ciba_allow_loopback_notifications,
        allow_private: state.config.ciba_allow_private_notifications,
    };
    let max = i64::from(state.config.ciba_notification_attempts.max(1));
    // The claim counted the first attempt.
    let mut attempt = request.notify_attempts + 1;
    loop {
        let delivered = post(&endpoint, token, &body, policy).await;
        let mode = client.delivery_mode.as_str();
        match delivered {
            Ok(()) => {
                tracing::info!(mode, attempt, "CIBA notification delivered");
                return Ok(true);
            }
            Err(reason) => {
                tracing::warn!(mode, attempt, %reason, "CIBA notification not delivered");
            }
        }
        if attempt >= max {
            return Ok(false);
        }
        let wait = backoff(state, attempt);
        ciba::renew_lease(
            &state.db,
            &request.auth_req_id,
            attempt + 1,
            time_ms() + lease_ms(state, attempt + 1),
        )
        .await?;
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

/// The body to send: a ping, or (push) the tokens or the error.
async fn payload(
    state: &Ctx,
    client: &CibaClient,
    request: &CibaRequest,
) -> Result<Value, ServerError> {
    if client.delivery_mode != DeliveryMode::Push {
        return Ok(json!({ "auth_req_id": request.auth_req_id }));
    }
    let id = request
        .authentication_id
        .parse()
        .map_err(|_| ServerError::Corrupted("authentication id"))?;
    let record = authentications::get(&state.db, &id, time::now())
        .await?
        .ok_or(ServerError::Corrupted("CIBA authentication"))?;
    let error = |code: &str, description: &str| {
        serde_json::to_value(OAuthErrorResponse {
            error: code.into(),
            error_description: Some(description.into()),
            auth_req_id: Some(request.auth_req_id.clone()),
        })
        .unwrap_or(Value::Null)
    };
    Ok(match record.state {
        AuthenticationState::Approved => {
            // Push clients never call the token endpoint: the tokens are minted for this
            // delivery (a retry mints fresh ones) and the request is marked exchanged.
            ciba::mark_tokens_issued(&state.db, &request.auth_req_id, time::now()).await?;
            let tokens = tokens_for(state, client, request, &record).await?;
            serde_json::to_value(tokens).map_err(|_| ServerError::Corrupted("token response"))?
        }
        AuthenticationState::Denied => error("access_denied", "the user denied the request"),
        AuthenticationState::Failed => error(
            "transaction_failed",
            "the request could not be completed on the user's device",
        ),
        AuthenticationState::Expired | AuthenticationState::Pending => error(
            "expired_token",
            "the request expired before the user answered",
        ),
    })
}

/// One POST; success is any 2xx. Redirects are failures, never followed.
async fn post(
    endpoint: &Url,
    token: &str,
    body: &Value,
    policy: TargetPolicy,
) -> Result<(), String> {
    let addrs = ssrf::resolve_endpoint(endpoint, policy)
        .await
        .map_err(|e| e.to_string())?;
    let host = endpoint.host_str().ok_or("no host")?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(DELIVERY_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .resolve_to_addrs(host, &addrs)
        .user_agent(concat!("tessera-server/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|_| "HTTP client unavailable".to_string())?;
    let response = client
        .post(endpoint.clone())
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "timed out".to_string()
            } else {
                "connection failed".to_string()
            }
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", status.as_u16()))
    }
}

/// Follow-up: a finished ping or push request's notification becomes due now.
pub(crate) fn follow_up<'a>(
    ctx: &'a Ctx,
    event: &'a crate::domain::outcome::DomainEvent,
) -> crate::domain::outcome::FollowUpFuture<'a> {
    Box::pin(async move {
        let crate::domain::outcome::DomainEvent::AuthenticationEnded(record) = event;
        settle(ctx, record)
            .await
            .map_err(|_| crate::domain::DomainError::Internal("CIBA follow-up failed"))
    })
}
