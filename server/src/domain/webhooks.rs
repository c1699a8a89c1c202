//! Signed event webhooks: the customer registers endpoints (the signing secret is shown once
//! and stored sealed), events are queued in the outbox by [`super::audit::record`], and the
//! worker of every instance delivers them.
//!
//! The worker is woken by the event hub ([`Topic::WebhookOutbox`], across instances through the
//! database's notifications) and otherwise sweeps every `webhook_sweep`, or sooner when a retry
//! falls due. It claims due rows with a lease (one claimer per row; a crashed instance's lease
//! lapses and another instance resumes), keeping up to [`SLOTS`] in flight, at most
//! [`PER_APPLICATION`] of one application, and claiming again whenever one finishes, so one
//! application's slow endpoints cannot hold up the others'. It posts each through the
//! [`WebhookSender`](super::ports::WebhookSender) (the SSRF guard of `domain::ssrf`, no
//! redirects, no proxy), and records the attempt: delivered on 2xx, else retried with
//! exponential backoff and jitter (never sooner than the receiver's `Retry-After`), and given up
//! after `webhook_attempts` attempts.
//!
//! Each delivery is signed: `Tessera-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over
//! `"<t>.<body>"` with the endpoint's secret.

use std::collections::HashMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::events::{
    CreateWebhookEndpoint, CreatedWebhookEndpoint, EVENT_ID_HEADER, EVENT_TYPE_HEADER, EventType,
    SIGNATURE_HEADER, WebhookDelivery, WebhookDeliveryList, WebhookEndpoint, WebhookEndpointList,
};
use tessera_protocol::ids::ApplicationId;
use tokio::time::Instant;

use super::audit::{self, Actor, Event, new_id};
use super::events::Topic;
use super::ports::{NotificationError, WebhookAnswer};
use super::ssrf::{self, TargetPolicy};
use super::{Ctx, DomainError};
use crate::store::webhooks::{self as store, AttemptResult, Delivery, Endpoint};

/// The longest one POST may take.
pub(crate) const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The most endpoints one application may register.
const MAX_ENDPOINTS: i64 = 16;
/// The most deliveries one instance has in flight at once.
const SLOTS: usize = 32;
/// The most deliveries of one application one instance has in flight at once: an application
/// whose endpoints are slow (each attempt may take [`DELIVERY_TIMEOUT`]) holds that many slots
/// at most, and the others keep flowing.
const PER_APPLICATION: usize = 4;
/// The longest wait between retries, whatever the backoff or `Retry-After` says.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(6 * 3600);

type HmacSha256 = Hmac<Sha256>;

/// The policy outbound webhook calls are checked against.
pub(crate) fn target_policy(ctx: &Ctx) -> TargetPolicy {
    TargetPolicy {
        allow_loopback: ctx.config.webhook_allow_loopback,
        allow_private: ctx.config.webhook_allow_private,
    }
}

/// The `Tessera-Signature` value for `body` sent at `timestamp` (Unix seconds).
pub(crate) fn signature(secret: &str, timestamp: i64, body: &str) -> String {
    // HMAC accepts keys of any length: this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill(&mut bytes);
    format!("whsec_{}", hex::encode(bytes))
}

fn to_wire(endpoint: &Endpoint) -> WebhookEndpoint {
    WebhookEndpoint {
        id: endpoint.id.clone(),
        url: endpoint.url.clone(),
        event_types: endpoint
            .event_types
            .split(',')
            .filter_map(EventType::parse)
            .collect(),
        created_at: endpoint.created_at,
    }
}

fn endpoint_not_found() -> DomainError {
    DomainError::new(ErrorCode::NotFound, "no such webhook endpoint")
}

/// Registers an endpoint for `app`; the answer carries the signing secret, shown this once.
pub(crate) async fn create_endpoint(
    ctx: &Ctx,
    app: &ApplicationId,
    body: &CreateWebhookEndpoint,
) -> Result<CreatedWebhookEndpoint, DomainError> {
    if body.url.len() > 2048 {
        return Err(DomainError::new(
            ErrorCode::InvalidRequest,
            "the webhook URL is longer than 2048 characters",
        ));
    }
    let url = ssrf::check_endpoint(&body.url, target_policy(ctx)).map_err(|e| {
        DomainError::new(
            ErrorCode::InvalidRequest,
            e.to_string()
                .replace("notification endpoint", "webhook URL"),
        )
    })?;
    let mut types: Vec<&str> = body.event_types.iter().map(|t| t.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    let endpoint = Endpoint {
        id: new_id("whe_"),
        application_id: app.to_string(),
        url: url.to_string(),
        event_types: types.join(","),
        created_at: ctx.now(),
    };
    let secret = new_secret();
    // The cap is checked by the insert's own write (a count read before it would let
    // registrations sent at once all pass it).
    if !store::insert_endpoint_within_limit(&ctx.db, app, &endpoint, &secret, MAX_ENDPOINTS).await?
    {
        return Err(DomainError::new(
            ErrorCode::InvalidRequest,
            format!("an application may register at most {MAX_ENDPOINTS} webhook endpoints"),
        ));
    }
    let event = Event::new("webhook.created", Actor::Customer, "success")
        .app(app)
        .subject(&endpoint.id)
        .details(serde_json::json!({ "url": endpoint.url, "event_types": types }));
    audit::record(ctx, event).await;
    Ok(CreatedWebhookEndpoint {
        endpoint: to_wire(&endpoint),
        secret,
    })
}

/// The application's endpoints (without their secrets).
pub(crate) async fn list_endpoints(
    ctx: &Ctx,
    app: &ApplicationId,
) -> Result<WebhookEndpointList, DomainError> {
    let endpoints = store::endpoints(&ctx.db, app.as_str()).await?;
    Ok(WebhookEndpointList {
        endpoints: endpoints.iter().map(to_wire).collect(),
    })
}

/// Removes an endpoint and its queued deliveries.
pub(crate) async fn remove_endpoint(
    ctx: &Ctx,
    app: &ApplicationId,
    id: &str,
) -> Result<(), DomainError> {
    if !store::delete_endpoint(&ctx.db, app.as_str(), id).await? {
        return Err(endpoint_not_found());
    }
    let event = Event::new("webhook.removed", Actor::Customer, "success")
        .app(app)
        .subject(id);
    audit::record(ctx, event).await;
    Ok(())
}

/// The endpoint's latest deliveries (at most `limit`, newest first).
pub(crate) async fn deliveries(
    ctx: &Ctx,
    app: &ApplicationId,
    endpoint_id: &str,
    limit: Option<u32>,
) -> Result<WebhookDeliveryList, DomainError> {
    if store::endpoint(&ctx.db, app.as_str(), endpoint_id)
        .await?
        .is_none()
    {
        return Err(endpoint_not_found());
    }
    let limit = i64::from(limit.unwrap_or(50).clamp(1, audit::MAX_PAGE));
    let rows = store::deliveries(&ctx.db, app.as_str(), endpoint_id, limit).await?;
    Ok(WebhookDeliveryList {
        deliveries: rows.iter().filter_map(delivery_to_wire).collect(),
    })
}

fn delivery_to_wire(d: &Delivery) -> Option<WebhookDelivery> {
    Some(WebhookDelivery {
        id: d.id.clone(),
        endpoint_id: d.endpoint_id.clone(),
        event_id: d.event_id.clone(),
        event_type: EventType::parse(&d.event_type)?,
        state: d.state.clone(),
        attempts: u32::try_from(d.attempts).unwrap_or(u32::MAX),
        next_attempt_at_ms: (d.state == "pending").then_some(d.next_attempt_at),
        last_status: d.last_status.and_then(|s| u16::try_from(s).ok()),
        last_error: d.last_error.clone(),
        last_attempt_at_ms: d.last_attempt_at,
        delivered_at_ms: d.delivered_at,
        created_at_ms: d.created_at,
    })
}

/// The wait before attempt `attempts_made + 1`: `base` doubling with each attempt, capped, with
/// "equal jitter" (between half and all of it), and never less than the receiver's
/// `Retry-After`.
pub(crate) fn retry_wait(
    base: Duration,
    attempts_made: i64,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let exponent = u32::try_from(attempts_made.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let backoff = base
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(MAX_RETRY_WAIT);
    let jittered = backoff.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    match retry_after {
        Some(after) => jittered.max(after.min(MAX_RETRY_WAIT)),
        None => jittered,
    }
}

/// `Retry-After` as a number of seconds (an HTTP date is not honoured: the backoff applies).
fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// The worker: keeps up to [`SLOTS`] deliveries in flight, at most [`PER_APPLICATION`] of one
/// application, and claims again as soon as a slot frees. It sweeps (the expired
/// authentications, then the outbox) when woken through the event hub, when a retry falls
/// due, and at least every `webhook_sweep`. Runs until its task is aborted.
pub(crate) async fn run(ctx: Ctx) {
    let mut woken = ctx.events.subscribe(Topic::WebhookOutbox);
    let mut worker = Worker::new(ctx.clone(), new_id("wrk_"));
    loop {
        if let Err(e) = audit::sweep_expired(&ctx).await {
            tracing::warn!(error = %e, "expiry sweep failed");
        }
        let mut next_due = match worker.fill().await {
            Ok(()) => store::next_due(&ctx.db, ctx.now_ms())
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "webhook sweep failed");
                    None
                }),
            Err(e) => {
                tracing::warn!(error = %e, "webhook sweep failed");
                None
            }
        };
        let deadline = |due: Option<i64>| {
            let mut wait = ctx.config.webhook_sweep;
            if let Some(due) = due {
                let until = Duration::from_millis(u64::try_from(due - ctx.now_ms()).unwrap_or(0));
                wait = wait.min(until.max(Duration::from_millis(20)));
            }
            Instant::now() + wait
        };
        let mut until = deadline(next_due);
        // Between sweeps: each finished attempt frees a slot, which is filled at once.
        loop {
            tokio::select! {
                finished = worker.next_finished(), if worker.busy() => {
                    if let Some(retry_at) = finished.retry_at {
                        next_due = Some(next_due.map_or(retry_at, |due| due.min(retry_at)));
                        until = deadline(next_due);
                    }
                    if finished.refill
                        && let Err(e) = worker.fill().await
                    {
                        tracing::warn!(error = %e, "webhook claim failed");
                    }
                }
                _ = woken.wait(until) => break,
            }
        }
    }
}

/// The deliveries one instance has in flight, and what it knows of the outbox between sweeps.
struct Worker {
    ctx: Ctx,
    /// The lease owner this worker claims as.
    owner: String,
    attempts: tokio::task::JoinSet<Option<i64>>,
    /// The application of each attempt in flight.
    applications: HashMap<tokio::task::Id, String>,
    /// The last claim found nothing more to take (for the applications it did not skip).
    drained: bool,
}

/// What one finished attempt means for the worker.
struct Finished {
    /// When the delivery is to be tried again, if it is.
    retry_at: Option<i64>,
    /// Whether to claim again: the outbox may hold due deliveries the worker can now take.
    refill: bool,
}

impl Worker {
    fn new(ctx: Ctx, owner: String) -> Self {
        Self {
            ctx,
            owner,
            attempts: tokio::task::JoinSet::new(),
            applications: HashMap::new(),
            drained: false,
        }
    }

    /// Whether any attempt is in flight.
    fn busy(&self) -> bool {
        !self.attempts.is_empty()
    }

    /// How many attempts of each application are in flight.
    fn in_flight(&self) -> HashMap<&str, usize> {
        let mut counts = HashMap::new();
        for application in self.applications.values() {
            *counts.entry(application.as_str()).or_default() += 1;
        }
        counts
    }

    /// Claims due deliveries while slots are free, and starts an attempt at each.
    async fn fill(&mut self) -> Result<(), DomainError> {
        self.drained = false;
        while self.attempts.len() < SLOTS {
            let in_flight = self.in_flight();
            let full: Vec<&str> = in_flight
                .iter()
                .filter(|(_, n)| **n >= PER_APPLICATION)
                .map(|(app, _)| *app)
                .collect();
            // A claim takes no more of any application than the one with the least room
            // left can take, so none goes past its share.
            let room = in_flight
                .values()
                .filter(|n| **n < PER_APPLICATION)
                .map(|n| PER_APPLICATION - n)
                .min()
                .unwrap_or(PER_APPLICATION);
            let now = self.ctx.now_ms();
            let lease_until = now + ms(DELIVERY_TIMEOUT) + ms(self.ctx.config.webhook_lease_margin);
            let limits = store::ClaimLimits {
                limit: count(SLOTS - self.attempts.len()),
                per_application: count(room),
                skip_applications: &full,
            };
            let claimed =
                store::claim_due(&self.ctx.db, &self.owner, now, lease_until, limits).await?;
            if claimed.is_empty() {
                self.drained = true;
                return Ok(());
            }
            for delivery in claimed {
                let application = delivery.application_id.clone();
                let (ctx, owner) = (self.ctx.clone(), self.owner.clone());
                let task = self.attempts.spawn(async move {
                    match attempt(&ctx, &owner, delivery).await {
                        Ok(retry_at) => retry_at,
                        Err(e) => {
                            tracing::warn!(error = %e, "a webhook attempt could not be recorded");
                            None
                        }
                    }
                });
                self.applications.insert(task.id(), application);
            }
        }
        Ok(())
    }

    /// Waits for the next attempt to finish (pending while none is in flight) and frees its
    /// slot.
    async fn next_finished(&mut self) -> Finished {
        let (task, retry_at) = match self.attempts.join_next_with_id().await {
            Some(Ok((task, retry_at))) => (Some(task), retry_at),
            Some(Err(e)) => {
                tracing::error!(error = %e, "a webhook attempt failed");
                (Some(e.id()), None)
            }
            None => (None, None),
        };
        // Its application had its share in flight before this one finished.
        let was_full = task
            .and_then(|task| self.applications.remove(&task))
            .is_some_and(|application| {
                self.applications
                    .values()
                    .filter(|a| **a == application)
                    .count()
                    >= PER_APPLICATION - 1
            });
        Finished {
            retry_at,
            // Nothing was left to claim but the deliveries of applications at their share,
            // and this one was not: the outbox has nothing new for the freed slot until the
            // next sweep.
            refill: !self.drained || was_full,
        }
    }
}

/// A number of deliveries as a statement binds it.
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One attempt at one claimed delivery. Returns when it is to be tried again, if it is.
///
/// The POST (the name's lookup included) is given up after [`DELIVERY_TIMEOUT`], so an attempt
/// never outlives its claim, which holds that long and `webhook_lease_margin` more.
async fn attempt(ctx: &Ctx, owner: &str, delivery: Delivery) -> Result<Option<i64>, DomainError> {
    let Some(endpoint) = store::endpoint_by_id(&ctx.db, &delivery.endpoint_id).await? else {
        return Ok(None);
    };
    let Some(secret) = store::endpoint_secret(&ctx.db, &endpoint.id).await? else {
        return Ok(None);
    };
    let url = url::Url::parse(&endpoint.url).map_err(|_| DomainError::Internal("webhook URL"))?;
    let signed = signature(&secret, ctx.now(), &delivery.payload);
    let headers = vec![
        (SIGNATURE_HEADER, signed),
        (EVENT_ID_HEADER, delivery.event_id.clone()),
        (EVENT_TYPE_HEADER, delivery.event_type.clone()),
    ];
    let answer = tokio::time::timeout(
        DELIVERY_TIMEOUT,
        ctx.webhook_sender
            .post(&url, headers, delivery.payload.clone()),
    )
    .await
    .unwrap_or(Err(NotificationError::TimedOut));
    let attempts_made = delivery.attempts + 1;
    let (status, error, retry_after) = match answer {
        Ok(WebhookAnswer { status, .. }) if (200..300).contains(&status) => {
            let result = AttemptResult::Delivered {
                status: i64::from(status),
            };
            tracing::info!(event_type = %delivery.event_type, attempt = attempts_made, "webhook delivered");
            store::record_attempt(&ctx.db, &delivery.id, owner, ctx.now_ms(), &result).await?;
            return Ok(None);
        }
        Ok(WebhookAnswer {
            status,
            retry_after,
        }) => (
            Some(i64::from(status)),
            format!("answered {status}"),
            parse_retry_after(retry_after.as_deref()),
        ),
        Err(e) => (None, e.to_string(), None),
    };
    tracing::warn!(event_type = %delivery.event_type, attempt = attempts_made, %error, "webhook not delivered");
    let mut retry_at = None;
    let result = if attempts_made >= i64::from(ctx.config.webhook_attempts.max(1)) {
        AttemptResult::GiveUp { status, error }
    } else {
        let jitter: f64 = rand::thread_rng().r#gen();
        let wait = retry_wait(
            ctx.config.webhook_retry_base,
            attempts_made,
            retry_after,
            jitter,
        );
        let next_attempt_at = ctx.now_ms() + ms(wait);
        retry_at = Some(next_attempt_at);
        AttemptResult::Retry {
            status,
            error,
            next_attempt_at,
        }
    };
    if !store::record_attempt(&ctx.db, &delivery.id, owner, ctx.now_ms(), &result).await? {
        tracing::info!("a webhook delivery's lease lapsed: another instance took it over");
        return Ok(None);
    }
    Ok(retry_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_over_timestamp_and_body() {
        // RFC 4231-style check against an independent computation.
        let sig = signature("whsec_test", 1_700_000_000, "{\"a\":1}");
        let mut mac = HmacSha256::new_from_slice(b"whsec_test").unwrap();
        mac.update(b"1700000000.{\"a\":1}");
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(sig, format!("t=1700000000,v1={expected}"));
        assert_ne!(sig, signature("whsec_other", 1_700_000_000, "{\"a\":1}"));
        assert_ne!(sig, signature("whsec_test", 1_700_000_001, "{\"a\":1}"));
    }

    #[test]
    fn retry_waits_double_with_jitter_and_honour_retry_after() {
        let base = Duration::from_secs(2);
        assert_eq!(retry_wait(base, 1, None, 1.0), base);
        assert_eq!(retry_wait(base, 1, None, 0.0), base / 2);
        assert_eq!(retry_wait(base, 3, None, 1.0), base * 4);
        assert_eq!(retry_wait(base, 100, None, 1.0), MAX_RETRY_WAIT);
        assert_eq!(
            retry_wait(base, 1, Some(Duration::from_secs(30)), 1.0),
            Duration::from_secs(30)
        );
        assert_eq!(
            retry_wait(base, 3, Some(Duration::from_secs(1)), 1.0),
            base * 4,
            "a short Retry-After does not shorten the backoff"
        );
        assert_eq!(
            retry_wait(base, 1, Some(Duration::from_secs(u64::MAX / 4)), 1.0),
            MAX_RETRY_WAIT
        );
    }

    /// The results of `copies` registrations sent at once for the application of `domain`.
    async fn registered_at_once(
        domain: &crate::domain::testing::TestDomain,
        app: &ApplicationId,
        copies: usize,
    ) -> Vec<Result<(), Option<ErrorCode>>> {
        crate::domain::testing::sent_at_once(copies, || {
            let (ctx, app) = (domain.ctx.clone(), app.clone());
            async move {
                let body = CreateWebhookEndpoint {
                    url: "https://hooks.example/tessera".into(),
                    event_types: Vec::new(),
                };
                create_endpoint(&ctx, &app, &body)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.code())
            }
        })
        .await
    }

    /// Endpoints registered at once for one application stop at the cap: the count and the
    /// insert are one write under the application's quota lock, so the registrations cannot all
    /// pass a count read before any of them was stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn endpoints_registered_at_once_stop_at_the_cap() {
        for domain in crate::domain::testing::TestDomain::each_engine().await {
            let engine = domain.ctx.db.engine();
            for round in 0..3 {
                // An application per round: the cap is the application's.
                let app = crate::store::applications::Application {
                    id: ApplicationId::generate(),
                    name: format!("Shop {round}"),
                    created_at: domain.ctx.now(),
                };
                crate::store::applications::insert(
                    &domain.ctx.db,
                    &app,
                    &format!("digest {}", app.id),
                )
                .await
                .expect("application");
                let results = registered_at_once(&domain, &app.id, 20).await;
                let cap = usize::try_from(MAX_ENDPOINTS).expect("small");
                assert_eq!(
                    results.iter().filter(|r| r.is_ok()).count(),
                    cap,
                    "{engine:?}, round {round}: {results:?}"
                );
                assert!(
                    results
                        .iter()
                        .all(|r| r.is_ok() || *r == Err(Some(ErrorCode::InvalidRequest))),
                    "{engine:?}, round {round}: {results:?}"
                );
                let stored = store::endpoints(&domain.ctx.db, app.id.as_str())
                    .await
                    .expect("endpoints");
                assert_eq!(stored.len(), cap, "{engine:?}, round {round}");
            }
        }
    }

    /// Requests made while the application's webhook endpoint is deleted all succeed: their
    /// statements queue a delivery for the endpoint when it still stands and skip it once it
    /// is gone. On PostgreSQL a statement that read the endpoint in its snapshot while the
    /// deletion was uncommitted failed on the deliveries' foreign key, and the request with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn requests_made_while_an_endpoint_is_deleted_all_succeed() {
        for domain in crate::domain::testing::TestDomain::each_engine_for_crowds().await {
            let engine = domain.ctx.db.engine();
            let (user, _phone) = domain.user_with_device("ann").await;
            for round in 0..24u64 {
                let body = CreateWebhookEndpoint {
                    url: "https://hooks.example/tessera".into(),
                    event_types: Vec::new(),
                };
                let endpoint = create_endpoint(&domain.ctx, &domain.app.id, &body)
                    .await
                    .expect("endpoint")
                    .endpoint
                    .id;
                let asks: Vec<_> = (0..4)
                    .map(|_| {
                        let (ctx, app, user) =
                            (domain.ctx.clone(), domain.app.clone(), user.clone());
                        tokio::spawn(async move {
                            let request =
                                serde_json::from_value(serde_json::json!({"kind": "approval"}))
                                    .expect("a request");
                            crate::domain::authentication::create(&ctx, &app, &user, request)
                                .await
                                .map(|created| created.authentication_id)
                                .map_err(|e| e.to_string())
                        })
                    })
                    .collect();
                let removal = {
                    let (ctx, app, endpoint) =
                        (domain.ctx.clone(), domain.app.id.clone(), endpoint.clone());
                    tokio::spawn(async move {
                        crate::domain::testing::yields(round % 4).await;
                        remove_endpoint(&ctx, &app, &endpoint).await
                    })
                };
                for ask in asks {
                    let created = ask.await.expect("ran");
                    assert!(created.is_ok(), "{engine:?}, round {round}: {created:?}");
                }
                removal.await.expect("ran").expect("removed");
                // Deliveries queued before the deletion went with the endpoint.
                let left =
                    store::deliveries(&domain.ctx.db, domain.app.id.as_str(), &endpoint, 100)
                        .await
                        .expect("deliveries");
                assert!(left.is_empty(), "{engine:?}, round {round}: {left:?}");
                let stored = store::endpoints(&domain.ctx.db, domain.app.id.as_str())
                    .await
                    .expect("endpoints");
                assert!(stored.is_empty(), "{engine:?}, round {round}");
            }
        }
    }

    #[test]
    fn retry_after_is_read_as_seconds() {
        assert_eq!(parse_retry_after(Some("7")), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(Some(" 7 ")), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(Some("soon")), None);
        assert_eq!(parse_retry_after(None), None);
    }
}
