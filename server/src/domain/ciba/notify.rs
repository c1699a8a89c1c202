//! Ping and push delivery to clients' notification endpoints (CIBA Core §10.2 and §10.3).
//!
//! A finished request's notification becomes due in the database (at once when this instance
//! recorded the answer, otherwise at the next sweep); one instance claims it with a conditional
//! update, posts it with `Authorization: Bearer <client_notification_token>` through the
//! [`CibaNotificationSender`](crate::domain::ports::CibaNotificationSender) (the addresses the
//! endpoint resolves to, each checked against SSRF; redirects never followed), and retries with
//! exponential backoff. A crashed instance's claim lapses and another instance resumes it.
//! The claim is a lease (`store::ciba::Lease`): every later write of the delivery (renewing it,
//! minting push tokens, recording the outcome) holds only while the lease does, so an instance
//! whose lease lapsed stops instead of delivering beside the one that took over. A push
//! delivery's tokens are minted once per delivery; a delivery taken over mints afresh and
//! revokes the earlier delivery's tokens (`oidc_tokens::Spend::CibaPush`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState};
use tessera_protocol::ciba::{DeliveryMode, OAuthErrorResponse};
use tokio::sync::Notify;
use url::Url;

use super::token::{DEVICE_GONE, NotIssued, RequestGrant, tokens_for};
use crate::domain::outcome::{DomainEvent, FollowUpFuture};
use crate::domain::{Ctx, DomainError};
use crate::store::authentications::{self, Authentication};
use crate::store::ciba::{self, CibaClient, CibaRequest, Lease, NotifyState};

/// The longest one notification POST may take (the sender's timeout; the lease covers it).
pub(crate) const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
const BATCH: i64 = 64;

/// Wakes this instance's notifier loop.
#[derive(Clone, Default)]
pub(crate) struct NotifierHandle(Arc<Notify>);

impl NotifierHandle {
    /// Asks the notifier loop to sweep now.
    pub(crate) fn wake(&self) {
        self.0.notify_one();
    }

    /// Resolves at the next wake-up.
    async fn woken(&self) {
        self.0.notified().await;
    }
}

/// After an answer was recorded: if it finishes a ping or push request, its notification is due
/// now.
pub(crate) async fn settle(state: &Ctx, record: &Authentication) -> Result<(), DomainError> {
    if record.kind != AuthenticationKind::Ciba {
        return Ok(());
    }
    if ciba::notification_due_for(&state.db, record.id.as_str(), state.now_ms()).await? {
        state.ciba_notifier.wake();
    }
    Ok(())
}

/// The notifier loop: sweeps every `ciba_notification_sweep`, or at once when woken. Runs until
/// its task is aborted.
pub(crate) async fn run(state: Ctx) {
    loop {
        tokio::select! {
            _ = state.ciba_notifier.woken() => {}
            _ = tokio::time::sleep(state.config.ciba_notification_sweep) => {}
        }
        if let Err(e) = sweep(&state).await {
            tracing::warn!(error = %e, "CIBA notification sweep failed");
        }
    }
}

/// One sweep: finished requests' notifications become due; those due are claimed (one
/// instance each) and delivered in the background.
pub(crate) async fn sweep(state: &Ctx) -> Result<(), DomainError> {
    let now_ms = state.now_ms();
    ciba::promote_finished(&state.db, state.now(), now_ms).await?;
    for request in ciba::due_notifications(&state.db, now_ms, BATCH).await? {
        let lease = now_ms
            + lease_ms(
                state.config.ciba_notification_retry_base,
                request.notify_attempts,
            );
        if let Some(lease) = ciba::claim_notification(&state.db, &request, lease).await? {
            tokio::spawn(deliver(state.clone(), request, lease));
        }
    }
    Ok(())
}

/// The wait after attempt `attempts_made` failed: `base`, doubling with each further attempt
/// (capped at 2^16 × `base`).
fn backoff(base: Duration, attempts_made: i64) -> Duration {
    let exponent = u32::try_from(attempts_made.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    base * 2u32.pow(exponent)
}

/// How long a claim holds after `attempts_made` attempts: one POST, the wait before the next,
/// and a margin. Past it, another instance may resume the delivery.
fn lease_ms(base: Duration, attempts_made: i64) -> i64 {
    let wait = DELIVERY_TIMEOUT + backoff(base, attempts_made + 1) + Duration::from_secs(5);
    i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2)
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// The endpoint took it.
    Delivered,
    /// Every attempt failed (or there is nowhere to deliver).
    GaveUp,
    /// Another instance took the delivery over (this instance's lease lapsed): it records the
    /// outcome.
    TakenOver,
}

/// Delivers one notification claimed under `lease`, retrying with backoff.
async fn deliver(state: Ctx, request: CibaRequest, lease: Lease) {
    let mut held = lease;
    let final_state = match deliver_with_retries(&state, &request, &mut held).await {
        Ok(Delivery::Delivered) => NotifyState::Done,
        Ok(Delivery::GaveUp) => NotifyState::Failed,
        Ok(Delivery::TakenOver) => {
            tracing::info!("CIBA notification taken over by another instance");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "CIBA notification could not be prepared");
            NotifyState::Failed
        }
    };
    match ciba::finish_notification(&state.db, &request.auth_req_id, held, final_state).await {
        Ok(true) => {}
        Ok(false) => tracing::info!("CIBA notification taken over by another instance"),
        Err(e) => tracing::warn!(error = %e, "CIBA notification outcome not recorded"),
    }
}

/// Delivers under the lease `held`, renewing it (in place) before each retry.
async fn deliver_with_retries(
    state: &Ctx,
    request: &CibaRequest,
    held: &mut Lease,
) -> Result<Delivery, DomainError> {
    let Some(client) = ciba::client(&state.db, &request.client_id).await? else {
        return Ok(Delivery::GaveUp);
    };
    let (Some(endpoint), Some(token)) = (
        client.notification_endpoint.as_deref(),
        request.client_notification_token.as_deref(),
    ) else {
        return Ok(Delivery::GaveUp);
    };
    let endpoint =
        Url::parse(endpoint).map_err(|_| DomainError::Internal("notification endpoint"))?;
    let Some(body) = payload(state, &client, request, *held).await? else {
        return Ok(Delivery::TakenOver);
    };
    let base = state.config.ciba_notification_retry_base;
    let max = i64::from(state.config.ciba_notification_attempts.max(1));
    // The claim counted the first attempt.
    loop {
        let attempt = held.attempts;
        let delivered = state.ciba_sender.post(&endpoint, token, &body).await;
        let mode = client.delivery_mode.as_str();
        match delivered {
            Ok(()) => {
                tracing::info!(mode, attempt, "CIBA notification delivered");
                return Ok(Delivery::Delivered);
            }
            Err(reason) => {
                tracing::warn!(mode, attempt, %reason, "CIBA notification not delivered");
            }
        }
        if attempt >= max {
            return Ok(Delivery::GaveUp);
        }
        let wait = backoff(base, attempt);
        let next = Lease {
            attempts: attempt + 1,
            until_ms: state.now_ms() + lease_ms(base, attempt + 1),
        };
        if !ciba::renew_lease(&state.db, &request.auth_req_id, *held, next).await? {
            return Ok(Delivery::TakenOver);
        }
        *held = next;
        tokio::time::sleep(wait).await;
    }
}

/// The body to send under `lease`: a ping, or (push) the tokens or the error; `None` if
/// another instance took the delivery over before the tokens were minted.
async fn payload(
    state: &Ctx,
    client: &CibaClient,
    request: &CibaRequest,
    lease: Lease,
) -> Result<Option<Value>, DomainError> {
    if client.delivery_mode != DeliveryMode::Push {
        return Ok(Some(json!({ "auth_req_id": request.auth_req_id })));
    }
    let id = request
        .authentication_id
        .parse()
        .map_err(|_| DomainError::Internal("authentication id"))?;
    let record = authentications::get(&state.db, &id, state.now())
        .await?
        .ok_or(DomainError::Internal("CIBA authentication"))?;
    let error = |code: &str, description: &str| {
        serde_json::to_value(OAuthErrorResponse {
            error: code.into(),
            error_description: Some(description.into()),
            auth_req_id: Some(request.auth_req_id.clone()),
        })
        .unwrap_or(Value::Null)
    };
    Ok(Some(match record.state {
        AuthenticationState::Approved => {
            // Push clients never call the token endpoint: the tokens are minted for this
            // delivery, under its lease (a delivery taken over mints afresh, revoking these).
            match tokens_for(state, client, request, &record, RequestGrant::Push(lease)).await? {
                Ok(tokens) => serde_json::to_value(tokens)
                    .map_err(|_| DomainError::Internal("token response"))?,
                Err(NotIssued::Spent) => return Ok(None),
                Err(NotIssued::DeviceGone) => error("access_denied", DEVICE_GONE),
            }
        }
        AuthenticationState::Denied => error(
            "access_denied",
            super::denial_description(record.denial_reason),
        ),
        AuthenticationState::Failed => error(
            "transaction_failed",
            "the request could not be completed on the user's device",
        ),
        AuthenticationState::Expired | AuthenticationState::Pending => error(
            "expired_token",
            "the request expired before the user answered",
        ),
    }))
}

/// Follow-up: a finished ping or push request's notification becomes due now.
pub(crate) fn follow_up<'a>(ctx: &'a Ctx, event: &'a DomainEvent) -> FollowUpFuture<'a> {
    Box::pin(async move {
        let (record, _) = event.ended();
        settle(ctx, record).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_is_capped() {
        let base = Duration::from_secs(2);
        assert_eq!(backoff(base, 0), base);
        assert_eq!(backoff(base, 1), base);
        assert_eq!(backoff(base, 2), base * 2);
        assert_eq!(backoff(base, 4), base * 8);
        assert_eq!(backoff(base, 17), base * 65536);
        assert_eq!(backoff(base, 1000), base * 65536);
    }

    #[test]
    fn a_lease_covers_a_post_and_the_next_wait() {
        let base = Duration::from_secs(2);
        // Claimed before the first attempt: 10 s POST + 2 s wait + 5 s margin.
        assert_eq!(lease_ms(base, 0), 17_000);
        // After the first attempt failed: the next wait is 4 s.
        assert_eq!(lease_ms(base, 1), 10_000 + 4_000 + 5_000);
    }
}
