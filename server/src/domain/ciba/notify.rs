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
//! revokes the earlier delivery's tokens (`oidc_tokens::Spend::CibaPush`). Tokens go out only
//! before the request's expiry: past it, a delivery sends `expired_token`, and the write that
//! refuses to mint revokes what earlier attempts minted.

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
use crate::store::StoreError;
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

/// Whether a delivery that failed with `e` may succeed if tried again later: the database
/// failed (unavailable, or a statement refused: a deadlock broken, a transaction cut off),
/// rather than something no retry changes (data that does not decode, a signing failure).
fn worth_retrying(e: &DomainError) -> bool {
    match e {
        DomainError::Unavailable(_) => true,
        DomainError::Store(e) => matches!(e, StoreError::Query(_) | StoreError::Unavailable(_)),
        DomainError::Refused { .. } | DomainError::Internal(_) => false,
    }
}

/// Delivers one notification claimed under `lease`, retrying with backoff. A database failure
/// on the way (reading the client, minting a push delivery's tokens, renewing the lease) puts
/// the delivery back among the due ones after a backoff, as a failed POST is retried, until
/// the attempts run out: a sweep never resumes a failed delivery, and a failure for a moment
/// must not lose the user's answer.
async fn deliver(state: Ctx, request: CibaRequest, lease: Lease) {
    let mut held = lease;
    let final_state = match deliver_with_retries(&state, &request, &mut held).await {
        Ok(Delivery::Delivered) => NotifyState::Done,
        Ok(Delivery::GaveUp) => NotifyState::Failed,
        Ok(Delivery::TakenOver) => {
            tracing::info!("CIBA notification taken over by another instance");
            return;
        }
        Err(e) if worth_retrying(&e) && held.attempts < max_attempts(&state) => {
            retry_later(&state, &request, held, &e).await;
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

/// How many attempts a delivery gets (at least one).
fn max_attempts(state: &Ctx) -> i64 {
    i64::from(state.config.ciba_notification_attempts.max(1))
}

/// Puts the delivery held under `held`, which failed with `e`, back among the due ones after
/// the backoff of the attempts made. Were this write to fail too, the lease would lapse and a
/// sweep would resume the delivery all the same.
async fn retry_later(state: &Ctx, request: &CibaRequest, held: Lease, e: &DomainError) {
    let wait = backoff(state.config.ciba_notification_retry_base, held.attempts);
    let due_at_ms = state
        .now_ms()
        .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2));
    let attempt = held.attempts;
    match ciba::retry_notification_at(&state.db, &request.auth_req_id, held, due_at_ms).await {
        Ok(true) => tracing::warn!(
            error = %e,
            attempt,
            "CIBA notification not delivered: the database failed, tried again later"
        ),
        Ok(false) => tracing::info!("CIBA notification taken over by another instance"),
        Err(again) => tracing::warn!(
            error = %again,
            attempt,
            "CIBA notification not delivered: the database failed, resumed once the lease lapses"
        ),
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
    let Some(mut body) = payload(state, &client, request, *held).await? else {
        return Ok(Delivery::TakenOver);
    };
    let base = state.config.ciba_notification_retry_base;
    let max = max_attempts(state);
    // The claim counted the first attempt.
    loop {
        let attempt = held.attempts;
        // Tokens go out only while the request lives: a retry past its expiry sends the error
        // instead, and the write that would have minted revokes the tokens already minted.
        if body.carries_tokens && state.now() >= request.expires_at {
            let Some(expired) = payload(state, &client, request, *held).await? else {
                return Ok(Delivery::TakenOver);
            };
            body = expired;
        }
        let delivered = state.ciba_sender.post(&endpoint, token, &body.json).await;
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

/// What a delivery posts.
struct Payload {
    /// The JSON body.
    json: Value,
    /// Whether it holds tokens (push mode, approved), which go out only before the request's
    /// expiry.
    carries_tokens: bool,
}

impl Payload {
    /// A body without tokens: a ping, or a push delivery's error.
    fn without_tokens(json: Value) -> Self {
        Self {
            json,
            carries_tokens: false,
        }
    }
}

/// The body to send under `lease`: a ping, or (push) the tokens or the error; `None` if
/// another instance took the delivery over before the tokens were minted. Past the request's
/// expiry, a push delivery's approval is `expired_token` (and the tokens an earlier attempt
/// minted are revoked by the write that refuses to mint more).
async fn payload(
    state: &Ctx,
    client: &CibaClient,
    request: &CibaRequest,
    lease: Lease,
) -> Result<Option<Payload>, DomainError> {
    if client.delivery_mode != DeliveryMode::Push {
        return Ok(Some(Payload::without_tokens(
            json!({ "auth_req_id": request.auth_req_id }),
        )));
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
    let json = match record.state {
        AuthenticationState::Approved => {
            // Push clients never call the token endpoint: the tokens are minted for this
            // delivery, under its lease (a delivery taken over mints afresh, revoking these),
            // before the request's expiry (checked in the write that mints).
            match tokens_for(state, client, request, &record, RequestGrant::Push(lease)).await? {
                Ok(tokens) => {
                    return Ok(Some(Payload {
                        json: serde_json::to_value(tokens)
                            .map_err(|_| DomainError::Internal("token response"))?,
                        carries_tokens: true,
                    }));
                }
                Err(NotIssued::Spent) => return Ok(None),
                Err(NotIssued::DeviceGone) => error("access_denied", DEVICE_GONE),
                Err(NotIssued::Expired) => error(
                    "expired_token",
                    "the request expired before its tokens were delivered",
                ),
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
    };
    Ok(Some(Payload::without_tokens(json)))
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

    use std::sync::Mutex;

    use tessera_protocol::authentication::Decision;
    use tessera_protocol::ciba::{ClientAuthMethod, RegisterCibaClient};

    use super::super::client_auth::{BasicCredentials, Form};
    use crate::domain::CtxParts;
    use crate::domain::ports::NotificationFuture;
    use crate::domain::testing::TestDomain;
    use crate::store::Engine;

    /// A relying party's notification endpoint that takes every notification: the bodies it
    /// was sent, in order.
    #[derive(Default)]
    struct TakenNotifications(Mutex<Vec<Value>>);

    impl TakenNotifications {
        fn all(&self) -> Vec<Value> {
            self.0.lock().map(|t| t.clone()).unwrap_or_default()
        }

        /// Records `body`; how many were sent, this one included.
        fn record(&self, body: &Value) -> usize {
            self.0
                .lock()
                .map(|mut taken| {
                    taken.push(body.clone());
                    taken.len()
                })
                .unwrap_or(0)
        }
    }

    impl crate::domain::ports::CibaNotificationSender for TakenNotifications {
        fn post<'a>(
            &'a self,
            _endpoint: &'a Url,
            _bearer: &'a str,
            body: &'a Value,
        ) -> NotificationFuture<'a> {
            self.record(body);
            Box::pin(async { Ok(()) })
        }
    }

    /// A relying party's notification endpoint that is down for the first notification (it
    /// answers 503), for as long as `down_for` on the server's clock, then takes every one:
    /// the bodies it was sent, in order, the refused one first.
    struct DownAtFirst {
        sent: TakenNotifications,
        clock: crate::clock::ManualClock,
        down_for: Duration,
    }

    impl crate::domain::ports::CibaNotificationSender for DownAtFirst {
        fn post<'a>(
            &'a self,
            _endpoint: &'a Url,
            _bearer: &'a str,
            body: &'a Value,
        ) -> NotificationFuture<'a> {
            let first = self.sent.record(body) == 1;
            if first {
                self.clock.advance(self.down_for);
            }
            Box::pin(async move {
                if first {
                    Err(crate::domain::ports::NotificationError::Status(503))
                } else {
                    Ok(())
                }
            })
        }
    }

    /// `ctx` posting its notifications through `sender`.
    fn posting_through(
        ctx: &Ctx,
        sender: Arc<dyn crate::domain::ports::CibaNotificationSender>,
    ) -> Ctx {
        Ctx::new(CtxParts {
            db: ctx.db.clone(),
            keys: ctx.keys.clone(),
            config: ctx.config.clone(),
            public_url: ctx.public_url.clone(),
            clock: ctx.clock.clone(),
            events: ctx.events.clone(),
            metrics: ctx.metrics.clone(),
            device_push: ctx.device_push.clone(),
            ciba_notifier: ctx.ciba_notifier.clone(),
            ciba_sender: sender,
            email: ctx.email.clone(),
            messages: ctx.messages.clone(),
            follow_ups: ctx.follow_ups.clone(),
            webhook_sender: ctx.webhook_sender.clone(),
            attestation: ctx.attestation.clone(),
            compiled_policies: Default::default(),
            api_key_hints: Default::default(),
            ciba_client_hints: Default::default(),
        })
    }

    /// Makes the database refuse to store tokens for `client_id` (a trigger raising an error),
    /// as a database failing for a moment refuses the write that mints a push delivery's tokens.
    async fn refuse_tokens_for(db: &crate::store::Database, client_id: &str, refuse: bool) {
        assert!(
            client_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "a client id to name in a statement: {client_id}"
        );
        let name = format!("refuse_{}", client_id.replace('-', "_"));
        let statements = match (db.engine(), refuse) {
            (Engine::Sqlite, true) => vec![format!(
                "CREATE TRIGGER {name} BEFORE INSERT ON oidc_tokens \
                 WHEN NEW.client_id = '{client_id}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )],
            (Engine::Sqlite, false) => vec![format!("DROP TRIGGER {name}")],
            (Engine::Postgres, true) => vec![
                format!(
                    "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS \
                     $body$ BEGIN RAISE EXCEPTION 'refused'; END $body$"
                ),
                format!(
                    "CREATE TRIGGER {name} BEFORE INSERT ON oidc_tokens FOR EACH ROW \
                     WHEN (NEW.client_id = '{client_id}') EXECUTE FUNCTION {name}()"
                ),
            ],
            (Engine::Postgres, false) => vec![
                format!("DROP TRIGGER {name} ON oidc_tokens"),
                format!("DROP FUNCTION {name}()"),
            ],
        };
        for statement in statements {
            sqlx::query(&statement)
                .execute(db.writer())
                .await
                .expect("the trigger");
        }
    }

    /// What a sweep does for the request `auth_req_id` once its notification is due: claims
    /// it and delivers it (here awaited, and only this request: tests share the database).
    /// Whether it was due.
    async fn swept(ctx: &Ctx, auth_req_id: &str) -> bool {
        let due = ciba::due_notifications(&ctx.db, ctx.now_ms(), i64::MAX / 2)
            .await
            .expect("the due notifications")
            .into_iter()
            .find(|r| r.auth_req_id == auth_req_id);
        let Some(request) = due else {
            return false;
        };
        let until = ctx.now_ms() + lease_ms(ctx.config.ciba_notification_retry_base, 0);
        let lease = ciba::claim_notification(&ctx.db, &request, until)
            .await
            .expect("claimed")
            .expect("not claimed by another instance");
        deliver(ctx.clone(), request, lease).await;
        true
    }

    /// A push-mode relying party's request for a new user `name`, approved on their device:
    /// the client's id, the `auth_req_id` and the user.
    async fn approved_push_request(
        domain: &TestDomain,
        ctx: &Ctx,
        name: &str,
    ) -> (String, String, tessera_protocol::ids::UserId) {
        let (client_id, secret) = domain
            .client(RegisterCibaClient {
                backchannel_client_notification_endpoint: Some(
                    "https://rp.example.com/ciba".into(),
                ),
                ..RegisterCibaClient::new(
                    "Shop",
                    DeliveryMode::Push,
                    ClientAuthMethod::ClientSecretBasic,
                )
            })
            .await;
        let (user, phone) = domain.user_with_device(name).await;
        let form = Form::new(
            [
                ("scope", "openid"),
                ("login_hint", user.as_str()),
                ("client_notification_token", "notification-token-0123456789"),
            ]
            .iter()
            .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
            .collect(),
        )
        .expect("a form");
        let basic = BasicCredentials {
            id: client_id.clone(),
            secret,
        };
        let ack = super::super::backchannel::authenticate(ctx, Some(basic), &form)
            .await
            .expect("acknowledged");
        let request = domain.pull(&phone).await.remove(0);
        domain
            .answered_by(&phone, &request, Decision::Approve)
            .await
            .expect("approved");
        (client_id, ack.auth_req_id, user)
    }

    /// A push request for a new user `name`, approved, whose first delivery (due at once) the
    /// database failed: the endpoint's notifications (none yet), the context posting to it,
    /// the `auth_req_id` and the user.
    async fn push_failed_once(
        domain: &TestDomain,
        name: &str,
    ) -> (
        Arc<TakenNotifications>,
        Ctx,
        String,
        tessera_protocol::ids::UserId,
    ) {
        let taken = Arc::new(TakenNotifications::default());
        let ctx = posting_through(&domain.ctx, taken.clone());
        let (client_id, auth_req_id, user) = approved_push_request(domain, &ctx, name).await;
        refuse_tokens_for(&ctx.db, &client_id, true).await;
        assert!(swept(&ctx, &auth_req_id).await, "due at once");
        refuse_tokens_for(&ctx.db, &client_id, false).await;
        assert!(taken.all().is_empty(), "nothing was sent");
        (taken, ctx, auth_req_id, user)
    }

    /// A push delivery whose tokens could not be minted because the database failed for a
    /// moment is tried again after a backoff, and the relying party gets the tokens from a
    /// later sweep: the failure is not the end of the delivery (the sweep never resumes a
    /// failed one, and the user's approval would be lost).
    #[tokio::test]
    async fn a_push_delivery_the_database_failed_once_is_delivered_on_a_later_sweep() {
        for domain in TestDomain::each_engine().await {
            let engine = domain.ctx.db.engine();
            let (taken, ctx, auth_req_id, user) = push_failed_once(&domain, "wanda").await;
            let stored = ciba::request(&ctx.db, &auth_req_id)
                .await
                .expect("read")
                .expect("the request");
            assert_eq!(
                (stored.notify_state, stored.notify_attempts),
                (NotifyState::Due, 1),
                "{engine:?}: the delivery waits for another attempt"
            );
            assert!(taken.all().is_empty(), "{engine:?}: nothing was sent");

            // Not before the backoff; then the next sweep delivers the tokens.
            assert!(
                !swept(&ctx, &auth_req_id).await,
                "{engine:?}: not due before the backoff"
            );
            domain
                .clock
                .advance(backoff(ctx.config.ciba_notification_retry_base, 1));
            assert!(swept(&ctx, &auth_req_id).await, "{engine:?}: due again");
            let sent = taken.all();
            assert_eq!(sent.len(), 1, "{engine:?}: {sent:?}");
            assert!(
                sent[0].get("access_token").is_some(),
                "{engine:?}: the tokens: {}",
                sent[0]
            );
            let stored = ciba::request(&ctx.db, &auth_req_id)
                .await
                .expect("read")
                .expect("the request");
            assert_eq!(stored.notify_state, NotifyState::Done, "{engine:?}");
            assert_eq!(
                domain.tokens_of(&user).await,
                1,
                "{engine:?}: one access token"
            );
        }
    }

    /// A database failing at every attempt does not keep a delivery due for ever: once the
    /// attempts run out, it ends failed.
    #[tokio::test]
    async fn a_push_delivery_the_database_fails_at_every_attempt_ends_failed() {
        for domain in TestDomain::each_engine().await {
            let engine = domain.ctx.db.engine();
            let taken = Arc::new(TakenNotifications::default());
            let ctx = posting_through(&domain.ctx, taken.clone());
            let (client_id, auth_req_id, _user) =
                approved_push_request(&domain, &ctx, "xena").await;
            refuse_tokens_for(&ctx.db, &client_id, true).await;
            let mut sweeps = 0;
            while swept(&ctx, &auth_req_id).await {
                sweeps += 1;
                domain
                    .clock
                    .advance(backoff(ctx.config.ciba_notification_retry_base, sweeps));
            }
            refuse_tokens_for(&ctx.db, &client_id, false).await;
            let stored = ciba::request(&ctx.db, &auth_req_id)
                .await
                .expect("read")
                .expect("the request");
            assert_eq!(
                (stored.notify_state, sweeps),
                (NotifyState::Failed, max_attempts(&ctx)),
                "{engine:?}: failed after every attempt"
            );
            assert!(taken.all().is_empty(), "{engine:?}: nothing was sent");
        }
    }

    /// The request's expiry passes while the endpoint is down: the retry sends `expired_token`
    /// instead of the tokens the first attempt carried, and those tokens are revoked (the
    /// endpoint never took them). Without the check, the retry sent the tokens after the
    /// `auth_req_id` had expired, and they stayed valid.
    #[tokio::test]
    async fn a_push_delivery_retried_past_the_requests_expiry_sends_expired_token_and_revokes_its_tokens()
     {
        let config = || crate::config::ServerConfig {
            ciba_notification_retry_base: Duration::from_millis(10),
            ..crate::config::ServerConfig::default()
        };
        for domain in TestDomain::each_engine_with(config).await {
            let engine = domain.ctx.db.engine();
            let endpoint = Arc::new(DownAtFirst {
                sent: TakenNotifications::default(),
                clock: domain.clock.clone(),
                down_for: Duration::from_secs(u64::from(domain.ctx.config.ciba_default_expiry)),
            });
            let ctx = posting_through(&domain.ctx, endpoint.clone());
            let (_client_id, auth_req_id, user) =
                approved_push_request(&domain, &ctx, "yara").await;
            assert!(swept(&ctx, &auth_req_id).await, "{engine:?}: due at once");
            let sent = endpoint.sent.all();
            assert_eq!(sent.len(), 2, "{engine:?}: {sent:?}");
            assert!(
                sent[0].get("access_token").is_some(),
                "{engine:?}: the first attempt carried the tokens: {}",
                sent[0]
            );
            assert_eq!(
                sent[1],
                json!({
                    "auth_req_id": auth_req_id,
                    "error": "expired_token",
                    "error_description": "the request expired before its tokens were delivered",
                }),
                "{engine:?}"
            );
            assert_eq!(
                domain.tokens_of(&user).await,
                0,
                "{engine:?}: the tokens the endpoint never took are revoked"
            );
            let stored = ciba::request(&ctx.db, &auth_req_id)
                .await
                .expect("read")
                .expect("the request");
            assert_eq!(stored.notify_state, NotifyState::Done, "{engine:?}");
        }
    }

    /// A delivery the database failed resumes on a sweep after the request expired: it mints
    /// nothing and sends `expired_token`. Without the check in the write that mints, the
    /// resumed delivery minted and sent tokens for an expired `auth_req_id`.
    #[tokio::test]
    async fn a_push_delivery_resumed_past_the_requests_expiry_mints_nothing() {
        for domain in TestDomain::each_engine().await {
            let engine = domain.ctx.db.engine();
            let (taken, ctx, auth_req_id, user) = push_failed_once(&domain, "zelda").await;
            domain.clock.advance(Duration::from_secs(u64::from(
                ctx.config.ciba_default_expiry,
            )));
            assert!(swept(&ctx, &auth_req_id).await, "{engine:?}: due again");
            let sent = taken.all();
            assert_eq!(sent.len(), 1, "{engine:?}: {sent:?}");
            assert_eq!(sent[0]["error"], "expired_token", "{engine:?}: {}", sent[0]);
            assert!(sent[0].get("access_token").is_none(), "{engine:?}");
            assert_eq!(domain.tokens_of(&user).await, 0, "{engine:?}: no tokens");
        }
    }
}
