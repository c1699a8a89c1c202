//! The audit log and the events that feed the webhooks.
//!
//! Every security-relevant event goes through [`record`] or, inside the write that makes the
//! change, [`append_deferred`]: the audit record is appended and, for the event types webhooks
//! carry, one `INSERT … SELECT` queues an outbox row for each endpoint of the application that
//! wants the type (`store::webhooks`), without reading the endpoints first. The event hub then
//! wakes the webhook worker of every instance ([`Topic::WebhookOutbox`]).
//!
//! A new request and an ending are recorded inside their own write, so the change and its record
//! commit together. Other events are recorded right after the change they describe commits: a
//! crash between the two loses the record of that one change; the change itself is never undone
//! by a failing record. Expiries, which write nothing, are found by the webhook worker's sweep
//! and recorded once (`authentications.expiry_reported`).
//!
//! Records are never changed or deleted: the schema refuses `UPDATE` and `DELETE` on
//! `audit_log`. They keep the user id even after the user is deleted (the record of the
//! deletion itself names them).

use base64::Engine as _;
use rand::RngCore;
use serde_json::{Value, json};
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState, DenialReason};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::events::{
    AuditPage, AuditRecord, AuthenticationHistory, AuthenticationHistoryEntry, EventType,
    WebhookEvent,
};
use tessera_protocol::ids::ApplicationId;

use super::events::Topic;
use super::{Ctx, DomainError};
use crate::store::audit::{self as store, Filter, NewRecord};
use crate::store::authentications::Authentication;
use crate::store::enrollments::Enrollment;
use crate::store::webhooks::EventDeliveries;
use crate::store::{Committed, Database, StoreError, Ticket, Write};

/// The most records one page answers.
pub(crate) const MAX_PAGE: u32 = 200;

/// Who did what an audit record records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Actor {
    /// The customer's backend, with its API key.
    Customer,
    /// A device, with its possession key.
    Device,
    /// The person, answering on their device.
    User,
    /// An operator, through the admin command line.
    Admin,
    /// The server itself (expiry, sweeps).
    Server,
    /// Someone who did not authenticate.
    Anonymous,
}

impl Actor {
    fn as_str(self) -> &'static str {
        match self {
            Actor::Customer => "customer",
            Actor::Device => "device",
            Actor::User => "user",
            Actor::Admin => "admin",
            Actor::Server => "server",
            Actor::Anonymous => "anonymous",
        }
    }
}

/// Something security-relevant that happened.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// What happened (the webhook type's name for webhook events).
    pub kind: &'static str,
    /// The webhook type, when endpoints receive this event.
    pub webhook: Option<EventType>,
    /// Who did it.
    pub actor: Actor,
    /// The application.
    pub application_id: Option<String>,
    /// The user.
    pub user_id: Option<String>,
    /// The device (enrollment id).
    pub device_id: Option<String>,
    /// The object concerned.
    pub subject: Option<String>,
    /// The caller's address.
    pub client_ip: Option<String>,
    /// The person's address.
    pub accessing_ip: Option<String>,
    /// How it ended.
    pub outcome: &'static str,
    /// More (never a secret).
    pub details: Value,
}

impl Event {
    /// An event of `kind` by `actor` ending in `outcome`, with nothing else known yet.
    pub(crate) fn new(kind: &'static str, actor: Actor, outcome: &'static str) -> Self {
        Self {
            kind,
            webhook: None,
            actor,
            application_id: None,
            user_id: None,
            device_id: None,
            subject: None,
            client_ip: None,
            accessing_ip: None,
            outcome,
            details: json!({}),
        }
    }

    /// A webhook event of type `event_type`.
    pub(crate) fn webhook(event_type: EventType, actor: Actor, outcome: &'static str) -> Self {
        Self {
            webhook: Some(event_type),
            ..Self::new(event_type.as_str(), actor, outcome)
        }
    }

    /// In application `app`.
    pub(crate) fn app(mut self, app: impl ToString) -> Self {
        self.application_id = Some(app.to_string());
        self
    }

    /// Concerning user `user`.
    pub(crate) fn user(mut self, user: impl ToString) -> Self {
        self.user_id = Some(user.to_string());
        self
    }

    /// Concerning device `device`.
    pub(crate) fn device(mut self, device: impl ToString) -> Self {
        self.device_id = Some(device.to_string());
        self
    }

    /// Concerning `subject`.
    pub(crate) fn subject(mut self, subject: impl ToString) -> Self {
        self.subject = Some(subject.to_string());
        self
    }

    /// Made from `ip`.
    pub(crate) fn client_ip(mut self, ip: Option<&str>) -> Self {
        self.client_ip = ip.map(str::to_string);
        self
    }

    /// With these details.
    pub(crate) fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// About authentication `record`: its application, user, device, id and accessing address.
    pub(crate) fn about(mut self, record: &Authentication) -> Self {
        self.application_id = Some(record.application_id.to_string());
        self.user_id = Some(record.user_id.to_string());
        self.device_id = Some(record.enrollment_id.to_string());
        self.subject = Some(record.id.to_string());
        self.accessing_ip = record.accessing_ip.clone();
        self.details = authentication_details(record);
        self
    }
}

/// How often an unauthenticated caller's failures of one kind are recorded: at most once per
/// key (caller address, device) per this many milliseconds, so a flood of forged calls cannot
/// turn into a flood of writes.
const UNAUTHENTICATED_RECORD_INTERVAL_MS: i64 = 60_000;
/// The most keys remembered; past it, the memory is cleared (and a record may be repeated).
const UNAUTHENTICATED_KEYS: usize = 10_000;
/// The most unauthenticated failures of one kind a server records in a minute, whatever their
/// keys: a caller rotating its address (an IPv6 /64 has plenty) would otherwise write a
/// permanent row to the append-only log per request. Past it, failures are counted and the
/// count logged.
const UNAUTHENTICATED_RECORDS_PER_MINUTE: u32 = 60;

/// What a server remembers of unauthenticated failures: when each key was last recorded, and
/// how many of each kind were recorded (or only counted) in the current minute.
#[derive(Debug, Default)]
struct FailureMemory {
    /// When each key (server, kind, key) was last recorded.
    last: std::collections::HashMap<String, i64>,
    /// The current minute of each kind (server, kind).
    minutes: std::collections::HashMap<String, Minute>,
}

/// The unauthenticated failures of one kind in one minute.
#[derive(Debug, Clone, Copy)]
struct Minute {
    /// When the minute started.
    started_at: i64,
    /// How many were recorded.
    recorded: u32,
    /// How many were over the cap: counted, not recorded.
    counted: u64,
}

impl Minute {
    /// A minute starting at `now`, with nothing in it yet.
    fn starting(now: i64) -> Self {
        Self {
            started_at: now,
            recorded: 0,
            counted: 0,
        }
    }
}

impl FailureMemory {
    /// Whether a failure of `kind` (the server's, as `scope`) under `key` is to be recorded at
    /// `now`: not recorded for that key within the last minute, and under the kind's cap for
    /// the minute. Notes it if so; counts it if only the cap stopped it.
    fn due(&mut self, scope: &str, kind: &str, key: &str, now: i64) -> bool {
        if self.last.len() >= UNAUTHENTICATED_KEYS {
            self.last.clear();
        }
        let key = format!("{scope}|{kind}|{key}");
        if self
            .last
            .get(&key)
            .is_some_and(|at| now.saturating_sub(*at) < UNAUTHENTICATED_RECORD_INTERVAL_MS)
        {
            return false;
        }
        let minute = self
            .minutes
            .entry(format!("{scope}|{kind}"))
            .or_insert(Minute::starting(now));
        if now.saturating_sub(minute.started_at) >= UNAUTHENTICATED_RECORD_INTERVAL_MS {
            if minute.counted > 0 {
                tracing::warn!(
                    kind,
                    counted = minute.counted,
                    "unauthenticated failures over the cap were counted, not recorded, in the \
                     last minute"
                );
            }
            *minute = Minute::starting(now);
        }
        if minute.recorded >= UNAUTHENTICATED_RECORDS_PER_MINUTE {
            minute.counted += 1;
            if minute.counted == 1 {
                tracing::warn!(
                    kind,
                    cap = UNAUTHENTICATED_RECORDS_PER_MINUTE,
                    "unauthenticated failures reached the audit log's cap for this minute: \
                     the next ones are counted, not recorded"
                );
            }
            return false;
        }
        minute.recorded += 1;
        self.last.insert(key, now);
        true
    }
}

/// Whether a failure by an unauthenticated caller, under `key`, should be recorded now: at
/// most once per key per minute, and at most [`UNAUTHENTICATED_RECORDS_PER_MINUTE`] of `kind`
/// a minute whatever the keys (the others are counted, and the count logged). Each server (by
/// its public URL) keeps its own memory.
pub(crate) fn unauthenticated_failure_due(ctx: &Ctx, kind: &str, key: &str) -> bool {
    use std::sync::{Mutex, OnceLock};
    static MEMORY: OnceLock<Mutex<FailureMemory>> = OnceLock::new();
    let now = ctx.now_ms();
    let mut memory = MEMORY
        .get_or_init(|| Mutex::new(FailureMemory::default()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    memory.due(ctx.public_url.as_str(), kind, key, now)
}

/// A random id with `prefix`.
pub(crate) fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// An id with `prefix` that sorts by `unix_ms`: the time's 12 hex digits
/// ([`tessera_protocol::ids::time_prefix`]), then `RANDOM_BYTES` random bytes in base64url. An
/// index of such ids grows at its end, where the rows committed together share a page, instead
/// of on a random page per row.
pub(crate) fn new_ordered_id<const RANDOM_BYTES: usize>(prefix: &str, unix_ms: i64) -> String {
    let mut bytes = [0u8; RANDOM_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "{prefix}{}{}",
        tessera_protocol::ids::time_prefix(unix_ms),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Why an event could not be recorded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    /// The database refused or was unavailable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The event's body could not be encoded.
    #[error("the event could not be encoded")]
    Encoding,
}

/// Appends `event` to the audit log and queues its webhook deliveries, in one transaction;
/// wakes the webhook workers when something was queued. A failure is logged, never returned:
/// the change it records is already committed.
pub(crate) async fn record(ctx: &Ctx, event: Event) {
    let kind = event.kind;
    match append(&ctx.db, &ctx.config.accessing_ip_table, ctx.now_ms(), event).await {
        Ok(true) => ctx.events.announce(&[Topic::WebhookOutbox]),
        Ok(false) => {}
        Err(e) => tracing::error!(kind, error = %e, "an audit record could not be written"),
    }
}

/// [`record`]'s write, for callers without a [`Ctx`] (the admin command line): the record and
/// its deliveries in one write (on SQLite one hand-off to the writer; on PostgreSQL one
/// statement). Returns whether webhook deliveries were queued.
pub(crate) async fn append(
    db: &Database,
    ip_table: &crate::ip_table::IpTable,
    now_ms: i64,
    event: Event,
) -> Result<bool, RecordError> {
    let record = new_record(ip_table, now_ms, &event);
    let deliveries = deliveries_of(&event, now_ms)?;
    Ok(store::append(db, &record, deliveries.as_ref()).await?)
}

/// Appends `events` to the audit log inside the caller's write `w` (with their webhook
/// deliveries), so they commit or roll back with the change they record. They are deferred:
/// sent with the write's next statement or its commit. Whether deliveries were queued is known
/// once it committed ([`Queued::any`]); the caller then wakes the webhook workers
/// (`Topic::WebhookOutbox`).
pub(crate) async fn append_deferred(
    ctx: &Ctx,
    w: &mut Write<'_>,
    events: Vec<Event>,
) -> Result<Queued, DomainError> {
    let tickets = store::append_all_deferred(w, &appended(ctx, events)?).await?;
    Ok(Queued {
        tickets,
        queued: false,
    })
}

/// `events` as the audit records (with their webhook deliveries) a storage function appends in
/// the same statement as the change they record (`store::authentications::record_answer_with_audit`).
pub(crate) fn appended(ctx: &Ctx, events: Vec<Event>) -> Result<Vec<store::Appended>, DomainError> {
    let now_ms = ctx.now_ms();
    events
        .iter()
        .map(|event| {
            Ok(store::Appended {
                record: new_record(&ctx.config.accessing_ip_table, now_ms, event),
                deliveries: deliveries_of(event, now_ms).map_err(RecordError::into_domain)?,
            })
        })
        .collect()
}

/// The webhook deliveries [`append_deferred`] (or a storage function appending [`appended`]
/// records with its change) queued, known once the transaction committed.
#[derive(Debug, Default)]
pub(crate) struct Queued {
    tickets: Vec<Ticket>,
    /// Known queued already (a PostgreSQL statement that counted them).
    queued: bool,
}

impl From<store::AppendedQueue> for Queued {
    fn from(appended: store::AppendedQueue) -> Self {
        Queued {
            tickets: appended.tickets,
            queued: appended.queued,
        }
    }
}

impl Queued {
    /// These deliveries and `other`'s, deferred in the same write.
    pub(crate) fn and(mut self, other: Queued) -> Queued {
        self.tickets.extend(other.tickets);
        self.queued |= other.queued;
        self
    }

    /// Whether any delivery was queued.
    pub(crate) fn any(&self, committed: &Committed) -> bool {
        self.queued || self.tickets.iter().any(|t| committed.changes(*t) > 0)
    }
}

impl RecordError {
    fn into_domain(self) -> DomainError {
        match self {
            RecordError::Store(e) => DomainError::from(e),
            RecordError::Encoding => DomainError::Internal("an audit record could not be encoded"),
        }
    }
}

/// The webhook event type and application of `event`, when it is one a webhook may want.
fn webhook_of(event: &Event) -> Option<(EventType, &str)> {
    match (event.webhook, event.application_id.as_deref()) {
        (Some(event_type), Some(app)) => Some((event_type, app)),
        _ => None,
    }
}

/// The audit record of `event` at `now_ms`.
fn new_record(ip_table: &crate::ip_table::IpTable, now_ms: i64, event: &Event) -> NewRecord {
    let location = event
        .accessing_ip
        .as_deref()
        .and_then(|ip| ip_table.lookup(ip))
        .and_then(|facts| facts.country.clone());
    NewRecord {
        id: new_ordered_id::<10>("aud_", now_ms),
        at_ms: now_ms,
        kind: event.kind.to_string(),
        actor: event.actor.as_str().to_string(),
        application_id: event.application_id.clone(),
        user_id: event.user_id.clone(),
        device_id: event.device_id.clone(),
        subject: event.subject.clone(),
        client_ip: event.client_ip.clone(),
        accessing_ip: event.accessing_ip.clone(),
        location,
        outcome: event.outcome.to_string(),
        details: event.details.to_string(),
    }
}

/// The webhook deliveries of `event`, when it is of a type webhooks carry: one body for every
/// endpoint of its application that wants the type (the endpoints are chosen by the statement
/// that queues them).
fn deliveries_of(event: &Event, now_ms: i64) -> Result<Option<EventDeliveries>, RecordError> {
    let Some((event_type, app)) = webhook_of(event) else {
        return Ok(None);
    };
    let event_id = new_id("evt_");
    let mut data = event.details.clone();
    if let Value::Object(map) = &mut data {
        for (key, value) in [
            ("user_id", &event.user_id),
            ("device_id", &event.device_id),
            ("subject", &event.subject),
        ] {
            if let Some(value) = value {
                map.entry(key).or_insert_with(|| json!(value));
            }
        }
        map.entry("outcome").or_insert_with(|| json!(event.outcome));
    }
    let payload = serde_json::to_string(&WebhookEvent {
        id: event_id.clone(),
        event_type,
        created_at_ms: now_ms,
        application_id: app.to_string(),
        data,
    })
    .map_err(|_| RecordError::Encoding)?;
    Ok(Some(EventDeliveries {
        id_prefix: format!("{}_", new_id("whd_")),
        application_id: app.to_string(),
        event_id,
        event_type: event_type.as_str().to_string(),
        payload,
        created_at_ms: now_ms,
    }))
}

fn kind_str(kind: AuthenticationKind) -> &'static str {
    match kind {
        AuthenticationKind::Approval => "approval",
        AuthenticationKind::Transaction => "transaction",
        AuthenticationKind::Silent => "silent",
        AuthenticationKind::Ciba => "ciba",
    }
}

fn authentication_details(record: &Authentication) -> Value {
    json!({
        "authentication_id": record.id.to_string(),
        "kind": kind_str(record.kind),
        "status": record.state.as_str(),
        "denial_reason": record.denial_reason.map(DenialReason::as_str),
        "failure_reason": record.failure_reason,
    })
}

/// The audit event of a request created for a device.
pub(crate) fn authentication_created_event(record: &Authentication) -> Event {
    Event::webhook(EventType::AuthenticationCreated, Actor::Customer, "pending").about(record)
}

/// Follow-up: an ended authentication is recorded (approved, denied, failed), with a fraud
/// report when the person reported it or approved with the wrong number, and a CIBA completion
/// for CIBA requests.
pub(crate) fn follow_up<'a>(
    ctx: &'a Ctx,
    event: &'a super::outcome::DomainEvent,
) -> super::outcome::FollowUpFuture<'a> {
    Box::pin(async move {
        let (record, _) = event.ended();
        authentication_ended(ctx, record).await;
        Ok(())
    })
}

async fn authentication_ended(ctx: &Ctx, record: &Authentication) {
    let Some((event_type, outcome, actor)) = ending_of(record) else {
        return;
    };
    record_ending(ctx, record, event_type, outcome, actor).await;
}

/// The webhook event, outcome and actor of an ended authentication (`None`: still pending).
fn ending_of(record: &Authentication) -> Option<(EventType, &'static str, Actor)> {
    Some(match record.state {
        AuthenticationState::Approved => {
            (EventType::AuthenticationApproved, "approved", Actor::User)
        }
        AuthenticationState::Denied => (EventType::AuthenticationDenied, "denied", Actor::User),
        AuthenticationState::Expired => {
            (EventType::AuthenticationExpired, "expired", Actor::Server)
        }
        AuthenticationState::Failed => (EventType::AuthenticationFailed, "failed", Actor::Server),
        AuthenticationState::Pending => return None,
    })
}

async fn record_ending(
    ctx: &Ctx,
    record: &Authentication,
    event_type: EventType,
    outcome: &'static str,
    actor: Actor,
) {
    for event in ending_events_as(record, event_type, outcome, actor) {
        self::record(ctx, event).await;
    }
}

/// The audit events of an ended authentication (what [`follow_up`] records): its ending, a
/// fraud report when the person reported it or approved with the wrong number, and a CIBA
/// completion for CIBA requests. None for a pending one.
pub(crate) fn ending_events(record: &Authentication) -> Vec<Event> {
    match ending_of(record) {
        Some((event_type, outcome, actor)) => ending_events_as(record, event_type, outcome, actor),
        None => Vec::new(),
    }
}

fn ending_events_as(
    record: &Authentication,
    event_type: EventType,
    outcome: &'static str,
    actor: Actor,
) -> Vec<Event> {
    let mut events = vec![Event::webhook(event_type, actor, outcome).about(record)];
    if let Some(reason @ (DenialReason::ReportedFraud | DenialReason::WrongNumber)) =
        record.denial_reason
    {
        events.push(
            Event::webhook(EventType::FraudReported, Actor::User, "reported")
                .about(record)
                .details(json!({
                    "authentication_id": record.id.to_string(),
                    "reason": reason.as_str(),
                })),
        );
    }
    if record.kind == AuthenticationKind::Ciba {
        events.push(Event::webhook(EventType::CibaCompleted, actor, outcome).about(record));
    }
    events
}

/// Records the authentications that expired unanswered since the last sweep, each once
/// (whichever instance marks it first records it).
pub(crate) async fn sweep_expired(ctx: &Ctx) -> Result<usize, DomainError> {
    sweep_expired_of(ctx, None).await
}

/// [`sweep_expired`] for one `application` only, or (`None`) for every one. Tests that share a
/// database and each move a clock of their own sweep their own application: a sweep by another
/// test's clock would find their requests expired.
pub(crate) async fn sweep_expired_of(
    ctx: &Ctx,
    application: Option<&ApplicationId>,
) -> Result<usize, DomainError> {
    // The claim and the records in one write: a crash or an error before the commit leaves the
    // requests unclaimed for the next sweep, never claimed without their records.
    let mut w = ctx.db.write().await?;
    let expired =
        store::claim_unreported_expired(&mut w, ctx.now(), 256, application.map(|a| a.as_str()))
            .await?;
    let events = expired
        .iter()
        .flat_map(|record| {
            ending_events_as(
                record,
                EventType::AuthenticationExpired,
                "expired",
                Actor::Server,
            )
        })
        .collect();
    let queued = append_deferred(ctx, &mut w, events).await?;
    let committed = w.commit().await?;
    if queued.any(&committed) {
        ctx.events.announce(&[Topic::WebhookOutbox]);
    }
    Ok(expired.len())
}

/// A device completed its pairing (active, or waiting for the primary device's approval).
pub(crate) async fn pairing_completed(ctx: &Ctx, enrollment: &Enrollment) {
    let event = Event::webhook(EventType::PairingCompleted, Actor::Device, "success")
        .app(&enrollment.application_id)
        .user(&enrollment.user_id)
        .device(&enrollment.enrollment_id)
        .details(json!({
            "enrollment_id": enrollment.enrollment_id.to_string(),
            "status": enrollment.status,
        }));
    record(ctx, event).await;
}

/// A signature by `device` did not verify (`what`: the message it was on).
pub(crate) async fn signature_failed(
    ctx: &Ctx,
    device: &Enrollment,
    client_ip: Option<&str>,
    what: &'static str,
) {
    let key = format!("{}|{}", device.enrollment_id, client_ip.unwrap_or(""));
    if !unauthenticated_failure_due(ctx, "signature.failed", &key) {
        return;
    }
    let event = Event::new("signature.failed", Actor::Anonymous, "refused")
        .app(&device.application_id)
        .user(&device.user_id)
        .device(&device.enrollment_id)
        .client_ip(client_ip)
        .details(json!({ "message": what }));
    record(ctx, event).await;
}

/// An answer's App Attest assertion was refused (`code`: `app_attest_counter_replay`,
/// `app_attest_assertion_invalid` or `app_attest_assertion_required`; `check`: which check,
/// never a submitted value). The answer is signed by the enrollment's key, so this is recorded
/// every time (a replay is worth seeing each time it happens).
pub(crate) async fn app_attest_assertion_refused(
    ctx: &Ctx,
    device: &Enrollment,
    authentication_id: &str,
    client_ip: Option<&str>,
    code: &'static str,
    check: &str,
) {
    let event = Event::new("app_attest.assertion_refused", Actor::Device, "refused")
        .app(&device.application_id)
        .user(&device.user_id)
        .device(&device.enrollment_id)
        .subject(authentication_id)
        .client_ip(client_ip)
        .details(json!({ "code": code, "check": check }));
    record(ctx, event).await;
}

/// A device was removed: by the customer, by itself, or with its user.
pub(crate) async fn device_removed(
    ctx: &Ctx,
    app: &str,
    user: &str,
    enrollment_id: &str,
    actor: Actor,
) {
    let event = Event::webhook(EventType::DeviceRemoved, actor, "success")
        .app(app)
        .user(user)
        .device(enrollment_id)
        .details(json!({ "enrollment_id": enrollment_id }));
    record(ctx, event).await;
}

/// A flow reached a final status: the event its final move writes with it
/// (`store::flows::transition_recording`).
pub(crate) fn flow_completed(app: &str, user: &str, flow_id: &str, status: &str) -> Event {
    Event::webhook(EventType::FlowCompleted, Actor::Server, "completed")
        .app(app)
        .user(user)
        .subject(flow_id)
        .details(json!({ "flow_id": flow_id, "status": status }))
}

/// What the policy engine decided for one authentication (or flow).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(dead_code)] // Built by the policy engine, which is built separately.
pub(crate) struct PolicyDecision {
    /// The application.
    pub application_id: String,
    /// The user.
    pub user_id: String,
    /// What was decided on (an authentication or flow id).
    pub subject: String,
    /// The policy version and rule that decided (`version 3, rule "office"`).
    pub policy: String,
    /// What it decided: the rule's effect (`approve`, `require`, `deny`).
    pub decision: String,
    /// Why, in words safe to show the customer.
    pub reason: Option<String>,
}

/// The audit record of a policy decision, to append inside the transaction that stores its
/// subject ([`append_deferred`]).
pub(crate) fn policy_decided_event(decision: &PolicyDecision) -> Event {
    let outcome = match decision.decision.as_str() {
        "approve" => "approved",
        "require" => "required",
        "deny" => "denied",
        _ => "decided",
    };
    Event::webhook(EventType::PolicyDecided, Actor::Server, outcome)
        .app(&decision.application_id)
        .user(&decision.user_id)
        .subject(&decision.subject)
        .details(json!({
            "policy": decision.policy,
            "decision": decision.decision,
            "reason": decision.reason,
        }))
}

/// What a customer asks of the audit log.
#[derive(Debug, Clone, Default)]
pub(crate) struct Query {
    /// Only this user's.
    pub user_id: Option<String>,
    /// Only of this kind.
    pub kind: Option<String>,
    /// At or after (ms).
    pub since_ms: Option<i64>,
    /// Before (ms).
    pub until_ms: Option<i64>,
    /// The cursor of the previous page.
    pub cursor: Option<String>,
    /// How many (at most [`MAX_PAGE`]).
    pub limit: Option<u32>,
}

const CURSOR_PREFIX: &str = "a1.";

fn encode_cursor(seq: i64) -> String {
    format!(
        "{CURSOR_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seq.to_be_bytes())
    )
}

fn decode_cursor(cursor: &str) -> Result<i64, DomainError> {
    let bad = || DomainError::new(ErrorCode::InvalidRequest, "the cursor is not valid");
    let bytes = cursor
        .strip_prefix(CURSOR_PREFIX)
        .and_then(|c| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
        })
        .ok_or_else(bad)?;
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| bad())?;
    Ok(i64::from_be_bytes(bytes))
}

fn to_wire(stored: store::StoredRecord) -> AuditRecord {
    let r = stored.record;
    AuditRecord {
        id: r.id,
        at_ms: r.at_ms,
        kind: r.kind,
        actor: r.actor,
        application_id: r.application_id,
        user_id: r.user_id,
        device_id: r.device_id,
        subject: r.subject,
        client_ip: r.client_ip,
        accessing_ip: r.accessing_ip,
        location: r.location,
        outcome: r.outcome,
        details: serde_json::from_str(&r.details).unwrap_or(Value::Null),
    }
}

/// One page of the application's audit log, newest first. The cursor names the last record
/// answered, so records appended meanwhile never shift the pages that follow.
pub(crate) async fn page(
    ctx: &Ctx,
    app: &tessera_protocol::ids::ApplicationId,
    query: &Query,
) -> Result<AuditPage, DomainError> {
    let limit = i64::from(query.limit.unwrap_or(50).clamp(1, MAX_PAGE));
    let filter = Filter {
        application_id: Some(app.to_string()),
        user_id: query.user_id.clone(),
        kind: query.kind.clone(),
        since_ms: query.since_ms,
        until_ms: query.until_ms,
        before_seq: query.cursor.as_deref().map(decode_cursor).transpose()?,
        after_seq: None,
    };
    let mut rows = store::query(&ctx.db, &filter, limit + 1, false).await?;
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = more
        .then(|| rows.last().map(|r| encode_cursor(r.seq)))
        .flatten();
    Ok(AuditPage {
        records: rows.into_iter().map(to_wire).collect(),
        next_cursor,
    })
}

/// How many records one batch of an export reads.
const EXPORT_BATCH: i64 = 500;

/// The next batch of the records matching `filter` as JSON lines, oldest first, and how many
/// records it holds; `filter` then starts after them. `None` once all were read. A record
/// that cannot be encoded fails the batch: an export never leaves one out silently.
async fn next_batch(
    db: &Database,
    filter: &mut Filter,
) -> Result<Option<(String, u64)>, StoreError> {
    let rows = store::query(db, filter, EXPORT_BATCH, true).await?;
    let Some(last) = rows.last() else {
        return Ok(None);
    };
    filter.after_seq = Some(last.seq);
    let mut batch = String::new();
    let mut records = 0u64;
    for row in rows {
        let line = serde_json::to_string(&to_wire(row))
            .map_err(|_| StoreError::Corrupted("an audit record could not be encoded"))?;
        batch.push_str(&line);
        batch.push('\n');
        records += 1;
    }
    Ok(Some((batch, records)))
}

/// Sends the records matching `filter` as JSON lines, oldest first, in batches, until all are
/// sent or the receiver is gone. Returns how many records were sent; an error means the
/// export stopped before its end.
pub(crate) async fn export(
    db: &Database,
    mut filter: Filter,
    lines: tokio::sync::mpsc::Sender<String>,
) -> Result<u64, StoreError> {
    let mut written = 0u64;
    while let Some((batch, records)) = next_batch(db, &mut filter).await? {
        written += records;
        if lines.send(batch).await.is_err() {
            break;
        }
    }
    Ok(written)
}

/// An audit export that stopped before its end: the lines sent before it are not the whole
/// export.
#[derive(Debug, thiserror::Error)]
#[error("the audit export stopped before its end")]
pub(crate) struct ExportInterrupted(#[source] StoreError);

/// The batches of an export as [`export_stream`] sends them: JSON lines, or, last, why the
/// export stopped before its end.
pub(crate) type ExportBatches = tokio::sync::mpsc::Receiver<Result<String, ExportInterrupted>>;

/// The application's audit log as JSON lines (oldest first, filtered like [`page`] but
/// without a cursor), streamed as it is read. The first batch is read before this returns, so
/// a database that fails at once fails the call (an unavailable one is `Unavailable`); one
/// that fails later ends the stream with an error, never with a clean end.
pub(crate) async fn export_stream(
    ctx: &Ctx,
    app: &tessera_protocol::ids::ApplicationId,
    query: &Query,
) -> Result<ExportBatches, DomainError> {
    let mut filter = Filter {
        application_id: Some(app.to_string()),
        user_id: query.user_id.clone(),
        kind: query.kind.clone(),
        since_ms: query.since_ms,
        until_ms: query.until_ms,
        before_seq: None,
        after_seq: None,
    };
    let first = next_batch(&ctx.db, &mut filter).await?;
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let db = ctx.db.clone();
    tokio::spawn(async move {
        let mut next = first;
        while let Some((batch, _)) = next {
            if sender.send(Ok(batch)).await.is_err() {
                return;
            }
            next = match next_batch(&db, &mut filter).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "audit export stopped before its end");
                    let _ = sender.send(Err(ExportInterrupted(e))).await;
                    return;
                }
            };
        }
    });
    Ok(receiver)
}

const HISTORY_CURSOR_PREFIX: &str = "h1.";

fn encode_history_cursor(created_at: i64, id: &str) -> String {
    let text = format!("{created_at}:{id}");
    format!(
        "{HISTORY_CURSOR_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    )
}

fn decode_history_cursor(cursor: &str) -> Result<(i64, String), DomainError> {
    let bad = || DomainError::new(ErrorCode::InvalidRequest, "the cursor is not valid");
    let bytes = cursor
        .strip_prefix(HISTORY_CURSOR_PREFIX)
        .and_then(|c| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
        })
        .ok_or_else(bad)?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (at, id) = text.split_once(':').ok_or_else(bad)?;
    let at = at.parse::<i64>().map_err(|_| bad())?;
    if id.is_empty() || id.len() > 128 {
        return Err(bad());
    }
    Ok((at, id.to_string()))
}

/// One page of the user's authentications, newest first (`user_not_found` for an unknown
/// user). The cursor names the last authentication answered, so authentications created
/// meanwhile never shift the pages that follow.
pub(crate) async fn authentication_history(
    ctx: &Ctx,
    app: &tessera_protocol::ids::ApplicationId,
    user_id: &tessera_protocol::ids::UserId,
    cursor: Option<&str>,
    limit: Option<u32>,
) -> Result<AuthenticationHistory, DomainError> {
    super::users::require_user(ctx, app, user_id).await?;
    let before = cursor.map(decode_history_cursor).transpose()?;
    let limit = i64::from(limit.unwrap_or(50).clamp(1, MAX_PAGE));
    let mut rows =
        store::authentication_history(&ctx.db, app.as_str(), user_id.as_str(), before, limit + 1)
            .await?;
    let page = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > page;
    rows.truncate(page);
    let now = ctx.now();
    let next_cursor = more
        .then(|| {
            rows.last()
                .map(|r| encode_history_cursor(r.created_at, &r.id))
        })
        .flatten();
    Ok(AuthenticationHistory {
        authentications: rows
            .into_iter()
            .map(|r| {
                let status = if r.state == "pending" && now >= r.expires_at {
                    "expired".to_string()
                } else {
                    r.state
                };
                let answer_type = match (r.signed, r.decision.is_some(), status.as_str()) {
                    (true, _, _) => Some("device".to_string()),
                    (false, true, "approved" | "denied") => Some("passcode".to_string()),
                    _ => None,
                };
                AuthenticationHistoryEntry {
                    authentication_id: r.id,
                    kind: r.kind,
                    status,
                    answer_type,
                    denial_reason: r.denial_reason,
                    failure_reason: r.failure_reason,
                    created_at: r.created_at,
                    answered_at: r.answered_at,
                    expires_at: r.expires_at,
                    device_id: r.enrollment_id,
                    accessing_ip: r.accessing_ip,
                }
            })
            .collect(),
        next_cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_ids_sort_by_their_millisecond_and_differ_within_one() {
        let early = new_ordered_id::<10>("aud_", 1_764_000_000_000);
        let late = new_ordered_id::<10>("aud_", 1_764_000_000_001);
        let twin = new_ordered_id::<10>("aud_", 1_764_000_000_001);
        assert!(early < late && early < twin);
        assert_ne!(late, twin);
        assert!(late.starts_with("aud_019ab697e801"));
        assert_eq!(late.len(), 4 + 12 + 14);
        assert!(new_ordered_id::<10>("aud_", -1).starts_with("aud_000000000000"));
        assert!(new_ordered_id::<10>("aud_", i64::MAX).starts_with("aud_ffffffffffff"));
    }

    async fn count(db: &Database, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(db.pool())
            .await
            .expect("count")
    }

    #[tokio::test]
    async fn an_event_no_endpoint_wants_is_one_insert_and_a_wanted_one_queues_deliveries() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        let mut db = Database::connect(&url, 2).await.expect("database");
        db.open_secrets(None, 0).await.expect("data key");
        sqlx::query(
            "INSERT INTO applications (id, name, api_key_digest, created_at) VALUES ('app', 'A', 'd', 0)",
        )
        .execute(db.writer())
        .await
        .expect("application");
        let ip_table = crate::ip_table::IpTable::from_csv("").expect("empty table");
        let event = || {
            Event::webhook(EventType::AuthenticationCreated, Actor::Customer, "pending").app("app")
        };
        // No endpoint: recorded, nothing queued.
        assert!(
            !append(&db, &ip_table, 1_000, event())
                .await
                .expect("append")
        );
        assert_eq!(count(&db, "audit_log").await, 1);
        let id: String = sqlx::query_scalar("SELECT id FROM audit_log")
            .fetch_one(db.pool())
            .await
            .expect("record id");
        assert!(
            id.starts_with("aud_0000000003e8"),
            "ordered by its time: {id}"
        );
        // An endpoint for another type only: still nothing queued.
        let endpoint = |id: &str, types: &str| crate::store::webhooks::Endpoint {
            id: id.into(),
            application_id: "app".into(),
            url: "https://hooks.example.com/x".into(),
            event_types: types.into(),
            created_at: 0,
        };
        crate::store::webhooks::insert_endpoint(
            &db,
            &endpoint("whe_1", "pairing.completed"),
            "whsec_x",
        )
        .await
        .expect("endpoint");
        assert!(
            !append(&db, &ip_table, 2_000, event())
                .await
                .expect("append")
        );
        assert_eq!(count(&db, "audit_log").await, 2);
        assert_eq!(count(&db, "webhook_deliveries").await, 0);
        // An endpoint for every type: the record and its delivery, together.
        crate::store::webhooks::insert_endpoint(&db, &endpoint("whe_2", ""), "whsec_y")
            .await
            .expect("endpoint");
        assert!(
            append(&db, &ip_table, 3_000, event())
                .await
                .expect("append")
        );
        assert_eq!(count(&db, "audit_log").await, 3);
        assert_eq!(count(&db, "webhook_deliveries").await, 1);
        // An event without a webhook type queues nothing.
        let plain = Event::new("api_key.rejected", Actor::Anonymous, "refused").app("app");
        assert!(!append(&db, &ip_table, 4_000, plain).await.expect("append"));
        assert_eq!(count(&db, "audit_log").await, 4);
        assert_eq!(count(&db, "webhook_deliveries").await, 1);
        // Endpoints naming the type among others, or a type it only starts, ends or contains.
        for (id, types) in [
            ("whe_3", "pairing.completed,authentication.created"),
            ("whe_4", "authentication.created.x"),
            ("whe_5", "authentication.create"),
            ("whe_6", "x.authentication.created,AUTHENTICATION.CREATED"),
        ] {
            crate::store::webhooks::insert_endpoint(&db, &endpoint(id, types), "whsec_z")
                .await
                .expect("endpoint");
        }
        assert!(
            append(&db, &ip_table, 5_000, event())
                .await
                .expect("append")
        );
        let queued: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT id, endpoint_id, payload FROM webhook_deliveries WHERE created_at = 5000 \
             ORDER BY endpoint_id",
        )
        .fetch_all(db.pool())
        .await
        .expect("deliveries");
        let endpoints: Vec<&str> = queued.iter().map(|(_, e, _)| e.as_str()).collect();
        assert_eq!(
            endpoints,
            ["whe_2", "whe_3"],
            "the same endpoints as Endpoint::wants"
        );
        let stored = crate::store::webhooks::endpoints(&db, "app")
            .await
            .expect("endpoints");
        let wanting: Vec<&str> = stored
            .iter()
            .filter(|e| e.wants("authentication.created"))
            .map(|e| e.id.as_str())
            .collect();
        assert_eq!(wanting, endpoints);
        // One event: one body and event id for both, a delivery id of its own for each.
        assert_eq!(queued[0].2, queued[1].2);
        assert_ne!(queued[0].0, queued[1].0);
        assert!(queued.iter().all(|(id, _, _)| id.starts_with("whd_")));
        db.close().await;
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        for seq in [0, 1, 42, i64::MAX] {
            assert_eq!(decode_cursor(&encode_cursor(seq)).unwrap(), seq);
        }
        for bad in ["", "a1.", "a1.!!!", "b1.AAAAAAAAAAE", "a1.AAAA"] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
        let cursor = encode_history_cursor(1_700_000_000, "aut_x:y");
        assert_eq!(
            decode_history_cursor(&cursor).unwrap(),
            (1_700_000_000, "aut_x:y".to_string())
        );
        for bad in ["", "h1.", "h1.!!", &encode_cursor(3), "h1.YWJj"] {
            assert!(decode_history_cursor(bad).is_err(), "{bad}");
        }
    }

    /// Appends `n` records to the application's audit log in one statement.
    async fn many_records(db: &Database, app: &ApplicationId, n: i64) {
        sqlx::query(
            "INSERT INTO audit_log (id, at_ms, kind, actor, application_id, outcome, details) \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) \
             SELECT 'aud_' || $1 || '_' || i, i, 'test.record', 'server', $1, 'success', '{}' \
             FROM n",
        )
        .bind(app.as_str())
        .bind(n)
        .execute(db.writer())
        .await
        .expect("records");
    }

    /// An export whose reads fail midway (here the table is renamed under it after its first
    /// batch) ends in an error, never in a clean end that looks complete.
    #[tokio::test]
    async fn an_export_that_fails_midway_ends_in_an_error() {
        let domain = crate::domain::testing::TestDomain::sqlite().await;
        many_records(&domain.ctx.db, &domain.app.id, 4_000).await;
        let total: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE application_id = $1")
                .bind(domain.app.id.as_str())
                .fetch_one(domain.ctx.db.pool())
                .await
                .expect("count");
        let mut batches = export_stream(&domain.ctx, &domain.app.id, &Query::default())
            .await
            .expect("the export starts");
        let first = batches.recv().await.expect("a first batch").expect("read");
        // The export is at most a few batches ahead of its reader (its channel is bounded):
        // what it reads from now on fails.
        sqlx::query("ALTER TABLE audit_log RENAME TO audit_log_moved")
            .execute(domain.ctx.db.writer())
            .await
            .expect("rename");
        let mut lines = first.lines().count();
        let mut errored = false;
        while let Some(batch) = batches.recv().await {
            match batch {
                Ok(batch) => {
                    assert!(!errored, "nothing follows the error");
                    lines += batch.lines().count();
                }
                Err(ExportInterrupted(e)) => {
                    assert!(matches!(e, StoreError::Query(_)), "{e:?}");
                    errored = true;
                }
            }
        }
        assert!(
            errored,
            "the export ended cleanly after {lines} of {total} records"
        );
        assert!(i64::try_from(lines).expect("small") < total);
        // Failing before its first batch, the export fails the call itself.
        let refused = export_stream(&domain.ctx, &domain.app.id, &Query::default()).await;
        assert!(
            matches!(refused, Err(DomainError::Store(_))),
            "{:?}",
            refused.map(|_| ())
        );
    }

    /// Failures from ever new addresses (an IPv6 /64 has plenty) are recorded up to a cap a
    /// minute for each kind, then only counted: the append-only log does not get a row per
    /// request. The next minute they are recorded again.
    #[tokio::test]
    async fn unauthenticated_failures_from_many_addresses_stop_at_a_cap_a_minute() {
        let domain = crate::domain::testing::TestDomain::sqlite().await;
        // A kind of this test's own: the memory is the server's, shared by the tests in
        // this process.
        let kind = "test.rotating_addresses";
        let due =
            |i: u32| unauthenticated_failure_due(&domain.ctx, kind, &format!("2001:db8::{i:x}"));
        let recorded = (0..1_000).filter(|i| due(*i)).count();
        assert_eq!(recorded, 60, "{recorded} recorded in one minute");
        domain.clock.advance(std::time::Duration::from_secs(30));
        assert_eq!(
            (1_000..2_000).filter(|i| due(*i)).count(),
            0,
            "the same minute"
        );
        domain.clock.advance(std::time::Duration::from_secs(30));
        assert_eq!(
            (2_000..3_000).filter(|i| due(*i)).count(),
            60,
            "the next minute"
        );
    }

    #[test]
    fn unauthenticated_failures_are_recorded_once_a_minute_per_key() {
        let mut memory = FailureMemory::default();
        let mut due = |key: &str, now| memory.due("server", "kind", key, now);
        assert!(due("a", 1_000));
        assert!(!due("a", 60_999));
        assert!(due("b", 2_000));
        assert!(due("a", 61_000));
        let mut memory = FailureMemory::default();
        for i in 0..UNAUTHENTICATED_KEYS {
            // A minute apart each, so the cap of each minute is not reached.
            memory.due(
                "server",
                "kind",
                &format!("k{i}"),
                i64::try_from(i).expect("small") * 60_000,
            );
        }
        assert!(
            memory.last.len() <= UNAUTHENTICATED_KEYS,
            "the memory stays bounded"
        );
    }

    #[test]
    fn the_cap_of_a_minute_is_of_each_kind_and_each_server() {
        let mut memory = FailureMemory::default();
        let cap = usize::try_from(UNAUTHENTICATED_RECORDS_PER_MINUTE).expect("small");
        let recorded = |memory: &mut FailureMemory, scope: &str, kind: &str, now: i64| {
            (0..1_000)
                .filter(|i| memory.due(scope, kind, &format!("{kind}{now}|{i}"), now))
                .count()
        };
        assert_eq!(recorded(&mut memory, "server", "api_key.rejected", 0), cap);
        assert_eq!(
            recorded(&mut memory, "server", "api_key.rejected", 59_999),
            0
        );
        assert_eq!(
            recorded(&mut memory, "server", "signature.failed", 59_999),
            cap
        );
        assert_eq!(
            recorded(&mut memory, "other", "api_key.rejected", 59_999),
            cap
        );
        assert_eq!(
            recorded(&mut memory, "server", "api_key.rejected", 60_000),
            cap
        );
        let minute = memory.minutes["server|api_key.rejected"];
        assert_eq!((minute.recorded, minute.counted), (60, 940));
    }
}
