//! How a request ends: one path for every ending.
//!
//! A signed answer, a passcode or backup code, and a follow-up that settles a pending
//! enrollment all end an authentication through [`record`]: one conditional update records the
//! outcome (of racing endings exactly one wins), then [`ended`] announces it once — waiters on
//! the authentication and on its device are woken (here and, on PostgreSQL, in every instance)
//! and the follow-ups registered at start (device verification, QR follow-up, CIBA ping/push)
//! each receive the event. A follow-up that fails is logged and repaired by its own sweep or
//! on read; it never undoes the recorded outcome. The update and its audit records commit
//! together: one transaction, or on PostgreSQL, for a device's answer, one statement on the
//! answering request's own connection (`write_answer_at_once`); once it committed,
//! this process's waiters are woken, the other instances are told (`domain::events`), and the
//! other follow-ups run. Expiry needs no write: a pending request past
//! its expiry reads as expired, and waiters' deadlines never pass its expiry.

use std::future::Future;
use std::pin::Pin;

use tessera_protocol::authentication::{
    AuthenticationId, AuthenticationKind, Decision, DenialReason,
};

use super::events::Topic;
use super::{Ctx, DomainError};
use crate::metrics::{EndLabels, ReasonLabels};
use crate::store::authentications::{self, AnsweredRequest, Authentication};
use crate::store::enrollments;
use crate::store::flows::StoredFlow;
use crate::store::follow_ups::Waiting;
use crate::store::otp::PasscodeSpend;
use crate::store::{Committed, Engine, Write};
use tessera_protocol::ids::EnrollmentId;

/// Something that happened, announced after it was stored.
#[derive(Debug, Clone)]
pub(crate) enum DomainEvent {
    /// An authentication left `pending` (approved, denied, failed).
    AuthenticationEnded {
        /// The record as stored after it.
        record: Authentication,
        /// Which follow-ups have something waiting for it (read in the ending's transaction;
        /// [`Waiting::UNKNOWN`] where the ending was not written here).
        waiting: Waiting,
        /// The flow waiting for it as its push, where the ending's own statement read it
        /// (PostgreSQL's one-statement answer); `None`: not read (the flow's follow-up reads
        /// it, if one waits).
        waiting_flow: Option<Box<StoredFlow>>,
    },
}

impl DomainEvent {
    /// The ended authentication and what waits for it.
    pub(crate) fn ended(&self) -> (&Authentication, Waiting) {
        let DomainEvent::AuthenticationEnded {
            record, waiting, ..
        } = self;
        (record, *waiting)
    }

    /// The flow waiting for the ended authentication, as the ending's statement read it (if it
    /// did).
    pub(crate) fn waiting_flow(&self) -> Option<&StoredFlow> {
        let DomainEvent::AuthenticationEnded { waiting_flow, .. } = self;
        waiting_flow.as_deref()
    }
}

/// The future a follow-up returns.
pub(crate) type FollowUpFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(), DomainError>> + Send + 'a>>;

/// A follow-up: reacts to domain events (registered once, when the server starts).
pub(crate) type FollowUp = for<'a> fn(&'a Ctx, &'a DomainEvent) -> FollowUpFuture<'a>;

/// How an authentication ends.
#[derive(Debug)]
pub(crate) enum Ending<'a> {
    /// The device's signed answer.
    Signed(SignedAnswer<'a>),
    /// A one-time passcode (the app's, or a backup code) or a recovery code approved it.
    Passcode {
        /// The attributes it yields (JSON).
        attributes: &'a str,
        /// The passcode's digest over the authentication's id (`otp::passcode_digest`, or
        /// `bypass::recovery_digest` for a recovery code), by which a copy of it is answered
        /// with this approval.
        code_digest: Option<&'a str>,
    },
    /// Whoever asked withdrew it (its flow was cancelled): it fails with reason `canceled`.
    Canceled,
}

/// A device's signed answer, as checked against the authentication it answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SignedAnswer<'a> {
    /// The authentication as the answer was checked against it: the answer is recorded only
    /// while it is still pending, addressed to the same device with the same nonce.
    pub answered: &'a Authentication,
    /// What the answer does.
    pub verdict: Verdict,
    /// The signed answer as received (kept as evidence, also for a wrong number).
    pub signed_response: &'a str,
    /// The attributes it yields (JSON).
    pub attributes: &'a str,
}

/// What a signed answer does to the authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Approve, deny or report fraud, as the device decided.
    Decided(Decision),
    /// The device approved with another number than the one shown (number matching): the
    /// authentication ends denied, reason `wrong_number`, and counts as a fraud signal.
    WrongNumber,
}

impl<'a> SignedAnswer<'a> {
    /// The answer as its conditional update records it at `now`.
    fn recorded_at(&self, now: i64) -> authentications::Answer<'a> {
        let request = AnsweredRequest::of(self.answered);
        match self.verdict {
            Verdict::Decided(decision) => authentications::Answer::decided(
                request,
                decision,
                self.signed_response,
                self.attributes,
                now,
            ),
            Verdict::WrongNumber => authentications::Answer::wrong_number(
                request,
                self.signed_response,
                self.attributes,
                now,
            ),
        }
    }
}

/// What an ending takes with it, in its transaction: taken first, conditionally, so that of
/// two racing uses one takes it; if the ending is then not recorded, the take rolls back with
/// it and nothing is used up.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Take<'a> {
    /// A signed answer's App Attest assertion counter
    /// (`UPDATE … SET counter = $new WHERE … AND counter < $new`).
    AppAttestCounter {
        /// The enrollment whose counter it is.
        enrollment: &'a EnrollmentId,
        /// The assertion's counter.
        counter: u32,
    },
    /// The passcode that answers it (its time step, counter or backup challenge).
    Passcode(&'a PasscodeSpend),
    /// The user's recovery code that answers it
    /// (`UPDATE recovery_codes SET used_at = $now WHERE id = $id AND used_at IS NULL`).
    RecoveryCode {
        /// The code's id (`rc_…`), as its digest matched.
        id: &'a str,
        /// When it is used (seconds since the epoch).
        now: i64,
    },
}

/// What [`record_taking`] did.
#[derive(Debug)]
pub(crate) enum Taken {
    /// The ending and what it takes were recorded; the record as stored after it.
    Recorded(Box<Authentication>),
    /// Another ending won (or it expired): nothing was written, nothing taken.
    NotRecorded,
    /// Another use took it first (an App Attest counter not greater than the stored one: a
    /// replay, or a racing answer with the same counter; a passcode or recovery code already
    /// spent): nothing was written.
    UsedUp,
}

/// Records `ending` together with what it takes ([`Take`]), in one transaction: the take
/// first, then the ending's own conditional update; if either finds nothing to change, the
/// transaction rolls back and nothing is written. Announces a recorded ending as [`record`]
/// does.
pub(crate) async fn record_taking(
    ctx: &Ctx,
    id: &AuthenticationId,
    take: Take<'_>,
    ending: Ending<'_>,
) -> Result<Taken, DomainError> {
    let mut w = ctx.db.write().await?;
    let taken = match take {
        Take::AppAttestCounter {
            enrollment,
            counter,
        } => enrollments::take_app_attest_counter(w.conn().await?, enrollment, counter).await?,
        Take::Passcode(spend) => spend.take(w.conn().await?).await?,
        Take::RecoveryCode { id, now } => {
            crate::store::bypass::take_code(w.conn().await?, id, now).await?
        }
    };
    if !taken {
        // The caller reads whether the same answer took it (a retry): see [`write_ending`].
        w.rollback_after_others().await?;
        return Ok(Taken::UsedUp);
    }
    // The ending's own write rolls the whole transaction back (the take with it) when another
    // ending won.
    Ok(match write_ending(ctx, w, id, ending).await? {
        Some((record, announced, waits)) => {
            Taken::Recorded(Box::new(after_ending(ctx, record, announced, waits).await))
        }
        None => Taken::NotRecorded,
    })
}

/// Records `ending` if the authentication is still pending and unexpired, then announces it.
/// Returns the record as stored after it, or `None` when another ending won (or it expired).
pub(crate) async fn record(
    ctx: &Ctx,
    id: &AuthenticationId,
    ending: Ending<'_>,
) -> Result<Option<Authentication>, DomainError> {
    let w = ctx.db.write().await?;
    let written = write_ending(ctx, w, id, ending).await?;
    Ok(match written {
        Some((record, announced, waits)) => Some(after_ending(ctx, record, announced, waits).await),
        None => None,
    })
}

/// [`record`] for a request that holds `conn` (its reads ran on it): on PostgreSQL the
/// ending runs on that same connection, so the whole request is one connection — a device's
/// answer as one statement with its audit records ([`write_answer_at_once`]), another ending as
/// its transaction; on SQLite it runs on the writer, as every write does. The connection is
/// given back to the pool before the follow-ups run (they take their own).
pub(crate) async fn record_on(
    ctx: &Ctx,
    mut conn: crate::store::ReadConn,
    id: &AuthenticationId,
    ending: Ending<'_>,
) -> Result<Option<Authentication>, DomainError> {
    let written = if ctx.db.engine() == Engine::Postgres {
        let written = match (&ending, conn.held_connection()) {
            (Ending::Signed(signed), Some(pooled)) => {
                let answer = signed.recorded_at(ctx.now());
                write_answer_at_once(ctx, pooled, signed.answered, &answer).await?
            }
            _ => {
                let w = ctx.db.write_on(&mut conn).await?;
                write_ending(ctx, w, id, ending).await?
            }
        };
        drop(conn);
        written
    } else {
        // SQLite writes on its one writer: the reader is given back before queueing for it.
        drop(conn);
        write_ending(ctx, ctx.db.write().await?, id, ending).await?
    };
    Ok(match written {
        Some((record, announced, waits)) => Some(after_ending(ctx, record, announced, waits).await),
        None => None,
    })
}

/// The one transaction of an ending: the conditional update and the audit records (with their
/// webhook deliveries) commit together; waiters here and in other instances are told after. `None`
/// (nothing written) when another ending won or the authentication expired. On SQLite that is
/// two hand-offs to the writer: `BEGIN IMMEDIATE` with the update, then the records with the
/// `COMMIT`.
async fn write_ending(
    ctx: &Ctx,
    mut w: Write<'_>,
    id: &AuthenticationId,
    ending: Ending<'_>,
) -> Result<Option<(Authentication, Announced, Waits)>, DomainError> {
    let now = ctx.now();
    let recorded = match ending {
        Ending::Signed(signed) => {
            authentications::record_answer(&mut w, &signed.recorded_at(now)).await?
        }
        Ending::Passcode {
            attributes,
            code_digest,
        } => {
            authentications::record_passcode_answer(&mut w, id, attributes, code_digest, now)
                .await?
        }
        Ending::Canceled => authentications::record_cancellation(&mut w, id, now).await?,
    };
    let Some((record, waiting)) = recorded else {
        // Another ending won (or it expired). On SQLite the winner may be an earlier member of
        // this write's group, not committed yet (`store/writer.rs`): the caller's read of the
        // request, outside the transaction, must find it.
        w.rollback_after_others().await?;
        return Ok(None);
    };
    let topics = ended_topics(&record).to_vec();
    let webhooks =
        super::audit::append_deferred(ctx, &mut w, super::audit::ending_events(&record)).await?;
    let committed = w.commit().await?;
    Ok(Some((
        record,
        Announced {
            topics,
            webhooks_queued: false,
            webhooks,
        }
        .resolved(&committed),
        Waits {
            waiting,
            flow: None,
        },
    )))
}

/// PostgreSQL: a device's answer and its audit records (with their webhook deliveries) as one
/// statement on `conn`, committed on its own: no `BEGIN` or `COMMIT`, one round trip where a
/// transaction takes four. The records are those of `answered` as the answer's update stores
/// it ([`authentications::Answer::applied_to`]): everything they hold is either set by the
/// update or never changes while the request is pending (its device and nonce are conditions of
/// the update), so they are the records [`write_ending`] writes from the returned row. `None`
/// when another ending won (or it expired): then nothing is written.
async fn write_answer_at_once(
    ctx: &Ctx,
    conn: &mut crate::store::HeldConnection,
    answered: &Authentication,
    answer: &authentications::Answer<'_>,
) -> Result<Option<(Authentication, Announced, Waits)>, DomainError> {
    let stored = answer.applied_to(answered);
    let records = super::audit::appended(ctx, super::audit::ending_events(&stored))?;
    let Some(recorded) = authentications::record_answer_with_audit(conn, answer, &records).await?
    else {
        return Ok(None);
    };
    let topics = ended_topics(&recorded.record).to_vec();
    Ok(Some((
        recorded.record,
        Announced {
            topics,
            webhooks_queued: recorded.webhooks_queued,
            webhooks: super::audit::Queued::default(),
        },
        Waits {
            waiting: recorded.waiting,
            flow: recorded.waiting_flow.map(Box::new),
        },
    )))
}

/// What waits for an ending, as its write found it: which follow-ups, and the waiting flow
/// where the write read it too.
#[derive(Debug)]
struct Waits {
    waiting: Waiting,
    flow: Option<Box<StoredFlow>>,
}

/// After an ending committed: wakes this process's waiters, then runs the follow-ups (the
/// audit records are written already).
async fn after_ending(
    ctx: &Ctx,
    record: Authentication,
    announced: Announced,
    waits: Waits,
) -> Authentication {
    announced.committed(ctx);
    tracing::info!(
        authentication_id = %record.id,
        state = record.state.as_str(),
        denial_reason = record.denial_reason.map(DenialReason::as_str),
        "authentication ended"
    );
    let event = DomainEvent::AuthenticationEnded {
        record,
        waiting: waits.waiting,
        waiting_flow: waits.flow,
    };
    dispatch_to(ctx, &event, Audit::Recorded).await;
    let DomainEvent::AuthenticationEnded { record, .. } = event;
    record
}

/// The topics an ended authentication wakes: its own and its device's.
fn ended_topics(record: &Authentication) -> [Topic; 2] {
    [
        Topic::Authentication(record.id.to_string()),
        Topic::Enrollment(record.enrollment_id.to_string()),
    ]
}

/// Whether an event's audit records are still to be written by the `audit` follow-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audit {
    /// The `audit` follow-up records it.
    ByFollowUp,
    /// Already recorded, in the transaction that made the change: the `audit` follow-up is
    /// skipped.
    Recorded,
}

/// What ended a request as it was made, before anyone was asked ([`record_made_ending`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MadeEnding {
    /// The application's policy: approved without user action (`POLICY_APPROVE`), or refused
    /// (failed with `policy_denied`).
    Policy,
    /// The user's bypass, stored only while it is in force
    /// (`authentications::insert_while_bypassed`).
    Bypass,
}

/// Stores `record`, ended as it was made (`made`), with its ending's audit records and the
/// policy's decision `decided` (recorded for it, with its own audit record), in one
/// transaction: a request never stands without the decision that ended it, nor a decision
/// without its request. Then announces it like any other ending; nothing is pushed to the
/// device. False (nothing stored) when the bypass was cleared, or ended, since it was read.
pub(crate) async fn record_made_ending(
    ctx: &Ctx,
    record: &Authentication,
    made: MadeEnding,
    decided: Option<&super::policy::Decided>,
) -> Result<bool, DomainError> {
    let mut w = ctx.db.write().await?;
    match made {
        MadeEnding::Policy => authentications::insert(w.conn().await?, record).await?,
        MadeEnding::Bypass => {
            if !authentications::insert_while_bypassed(&mut w, record, ctx.now()).await? {
                w.rollback_after_others().await?;
                return Ok(false);
            }
        }
    }
    let mut webhooks =
        super::audit::append_deferred(ctx, &mut w, super::audit::ending_events(record)).await?;
    if let Some(decided) = decided {
        let subject = Some(record.id.as_str());
        let decision = super::policy::recorded_with(
            ctx,
            &record.application_id,
            &record.user_id,
            subject,
            decided,
        )?;
        webhooks = webhooks.and(super::policy::record_in(&mut w, &[decision]).await?);
    }
    let committed = w.commit().await?;
    tracing::info!(
        authentication_id = %record.id,
        failure_reason = record.failure_reason.as_deref(),
        ended_by = ?made,
        "authentication ended as it was made"
    );
    let announced = Announced {
        topics: ended_topics(record).to_vec(),
        webhooks_queued: false,
        webhooks,
    }
    .resolved(&committed);
    let waits = Waits {
        waiting: Waiting::UNKNOWN,
        flow: None,
    };
    after_ending(ctx, record.clone(), announced, waits).await;
    Ok(true)
}

/// Announces an ended authentication: wakes its waiters and its device's, then runs each
/// follow-up once.
pub(crate) async fn ended(ctx: &Ctx, record: &Authentication) {
    ctx.events.announce(&ended_topics(record));
    let event = DomainEvent::AuthenticationEnded {
        record: record.clone(),
        waiting: Waiting::UNKNOWN,
        waiting_flow: None,
    };
    dispatch(ctx, &event).await;
}

/// Announces authentications a change in storage failed (their device was unpaired while they
/// waited), each once, like any other ending.
pub(crate) async fn failed(ctx: &Ctx, ids: &[AuthenticationId]) -> Result<(), DomainError> {
    let now = ctx.now();
    for id in ids {
        if let Some(record) = authentications::get(&ctx.db, id, now).await? {
            tracing::info!(authentication_id = %id, "authentication failed: its device was unpaired");
            ended(ctx, &record).await;
        }
    }
    Ok(())
}

/// Hands `event` to every follow-up, in registration order.
pub(crate) async fn dispatch(ctx: &Ctx, event: &DomainEvent) {
    dispatch_to(ctx, event, Audit::ByFollowUp).await;
}

/// [`dispatch`], skipping the `audit` follow-up when the event's audit records were written in
/// the transaction that made the change.
async fn dispatch_to(ctx: &Ctx, event: &DomainEvent, audit: Audit) {
    let (record, _) = event.ended();
    ctx.metrics
        .authentications_ended
        .get_or_create(&EndLabels {
            kind: kind_label(record.kind),
            state: record.state.as_str(),
        })
        .inc();
    // Fraud signals: what a push-bombing attacker's target does (a wrong number, a report).
    if let Some(reason @ (DenialReason::WrongNumber | DenialReason::ReportedFraud)) =
        record.denial_reason
    {
        ctx.metrics
            .fraud_signals
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }
    for (name, follow_up) in ctx.follow_ups.iter() {
        if audit == Audit::Recorded && *name == AUDIT_FOLLOW_UP {
            continue;
        }
        if let Err(e) = follow_up(ctx, event).await {
            tracing::warn!(follow_up = name, error = %e, "follow-up failed; its sweep or the next read repairs it");
        }
    }
}

/// The name the audit follow-up is registered under (`domain::follow_ups`).
pub(crate) const AUDIT_FOLLOW_UP: &str = "audit";

/// A new request's audit record (with its webhook deliveries) and the announcement that its
/// device has a request to pull. The record is written by the insert that stores the request
/// (`applications::admit`), exactly when it is stored; the announcement
/// ([`NewRequest::announced`]) is made once that write committed.
pub(crate) struct NewRequest {
    records: Vec<crate::store::audit::Appended>,
    topics: Vec<Topic>,
}

impl NewRequest {
    /// The request `record` for its device.
    pub(crate) fn of(ctx: &Ctx, record: &Authentication) -> Result<NewRequest, DomainError> {
        Ok(NewRequest {
            records: super::audit::appended(
                ctx,
                vec![super::audit::authentication_created_event(record)],
            )?,
            topics: vec![Topic::Enrollment(record.enrollment_id.to_string())],
        })
    }

    /// A request that is neither recorded nor announced when stored (one that ends at once).
    pub(crate) fn unannounced() -> NewRequest {
        NewRequest {
            records: Vec::new(),
            topics: Vec::new(),
        }
    }

    /// The audit records to write with the request.
    pub(crate) fn records(&self) -> &[crate::store::audit::Appended] {
        &self.records
    }

    /// What the write that stored the request announces once committed (`queued`: what its
    /// records queued).
    pub(crate) fn announced(&self, queued: super::audit::Queued) -> Announced {
        Announced {
            topics: self.topics.clone(),
            webhooks_queued: false,
            webhooks: queued,
        }
    }
}

/// What a transaction announced ([`NewRequest::announced`]): woken once it committed.
#[must_use = "wake the waiters once the transaction committed"]
pub(crate) struct Announced {
    topics: Vec<Topic>,
    webhooks_queued: bool,
    /// Deliveries deferred in the write, known once it committed.
    webhooks: super::audit::Queued,
}

impl Announced {
    /// Reads, from the write that `committed`, whether its deferred audit records queued
    /// webhook deliveries.
    pub(crate) fn resolved(mut self, committed: &Committed) -> Announced {
        self.webhooks_queued |= self.webhooks.any(committed);
        self
    }

    /// Wakes the waiters of this process and of the other instances, and the webhook workers
    /// when deliveries were queued (call [`Announced::resolved`] first when the write deferred
    /// audit records).
    pub(crate) fn committed(mut self, ctx: &Ctx) {
        if self.webhooks_queued {
            self.topics.push(Topic::WebhookOutbox);
        }
        ctx.events.announce(&self.topics);
    }
}

/// Writes the audit record (with its webhook deliveries) of request `record`, stored by the
/// write `w`, inside that write: the creation is recorded exactly when the request is, so
/// nothing that ends the request (which needs it committed) is recorded before it. The returned
/// announcement (the device has a request to pull) is made once `w` committed.
pub(crate) async fn request_created_in(
    ctx: &Ctx,
    w: &mut Write<'_>,
    record: &Authentication,
) -> Result<Announced, DomainError> {
    let webhooks = super::audit::append_deferred(
        ctx,
        w,
        vec![super::audit::authentication_created_event(record)],
    )
    .await?;
    Ok(Announced {
        topics: vec![Topic::Enrollment(record.enrollment_id.to_string())],
        webhooks_queued: false,
        webhooks,
    })
}

fn kind_label(kind: AuthenticationKind) -> &'static str {
    match kind {
        AuthenticationKind::Approval => "approval",
        AuthenticationKind::Transaction => "transaction",
        AuthenticationKind::Silent => "silent",
        AuthenticationKind::Ciba => "ciba",
    }
}
