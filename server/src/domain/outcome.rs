//! How a request ends: one path for every ending.
//!
//! A signed answer, a passcode or backup code, and a follow-up that settles a pending
//! enrollment all end an authentication through [`record`]: one conditional update records the
//! outcome (of racing endings exactly one wins), then [`ended`] announces it once — waiters on
//! the authentication and on its device are woken (here and, on PostgreSQL, in every instance)
//! and the follow-ups registered at start (device verification, QR follow-up, CIBA ping/push)
//! each receive the event. A follow-up that fails is logged and repaired by its own sweep or
//! on read; it never undoes the recorded outcome. Expiry needs no write: a pending request past
//! its expiry reads as expired, and waiters' deadlines never pass its expiry.

use std::future::Future;
use std::pin::Pin;

use tessera_protocol::authentication::{
    AuthenticationId, AuthenticationKind, Decision, DenialReason,
};

use super::events::Topic;
use super::{Ctx, DomainError};
use crate::metrics::{EndLabels, ReasonLabels};
use crate::store::authentications::{self, Authentication};
use crate::store::enrollments;
use tessera_protocol::ids::EnrollmentId;

/// Something that happened, announced after it was stored.
#[derive(Debug, Clone)]
pub(crate) enum DomainEvent {
    /// An authentication left `pending` (approved, denied, failed); the record as stored after
    /// it.
    AuthenticationEnded(Authentication),
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
    Answer {
        /// Approve, deny or report fraud.
        decision: Decision,
        /// The signed answer as received.
        signed_response: &'a str,
        /// The attributes it yields (JSON).
        attributes: &'a str,
    },
    /// The device approved with another number than the one shown (number matching): the
    /// authentication ends denied, reason `wrong_number`, and counts as a fraud signal.
    WrongNumber {
        /// The signed answer as received (kept as evidence).
        signed_response: &'a str,
        /// The attributes it yields (JSON).
        attributes: &'a str,
    },
    /// A one-time passcode (the app's, or a backup code) approved it.
    Passcode {
        /// The attributes it yields (JSON).
        attributes: &'a str,
    },
    /// Whoever asked withdrew it (its flow was cancelled): it fails with reason `canceled`.
    Canceled,
}

/// What [`record_taking_counter`] did.
#[derive(Debug)]
pub(crate) enum Taken {
    /// The answer and the counter were recorded; the record as stored after it.
    Recorded(Box<Authentication>),
    /// Another ending won (or it expired): nothing was written.
    NotRecorded,
    /// The App Attest counter was not greater than the stored one (a replay, or a racing answer
    /// with the same counter took it first): nothing was written.
    CounterReplay,
}

/// Records a signed answer (`Ending::Answer` or `Ending::WrongNumber`) together with its App
/// Attest assertion's counter, in one transaction: the counter is taken first, conditionally
/// (`UPDATE … SET counter = $new WHERE … AND counter < $new`), then the answer's own conditional
/// update; if either finds nothing to change, the transaction rolls back and nothing is written.
/// Announces a recorded ending as [`record`] does.
pub(crate) async fn record_taking_counter(
    ctx: &Ctx,
    id: &AuthenticationId,
    ending: Ending<'_>,
    enrollment: &EnrollmentId,
    counter: u32,
) -> Result<Taken, DomainError> {
    let now = ctx.now();
    let mut tx = ctx.db.begin_write().await?;
    if !enrollments::take_app_attest_counter(&mut tx, enrollment, counter).await? {
        tx.rollback().await?;
        return Ok(Taken::CounterReplay);
    }
    let recorded = match ending {
        Ending::Answer {
            decision,
            signed_response,
            attributes,
        } => {
            authentications::record_answer_in(
                &mut tx,
                id,
                decision,
                signed_response,
                attributes,
                now,
            )
            .await?
        }
        Ending::WrongNumber {
            signed_response,
            attributes,
        } => {
            authentications::record_wrong_number_in(&mut tx, id, signed_response, attributes, now)
                .await?
        }
        Ending::Passcode { .. } | Ending::Canceled => {
            return Err(DomainError::Internal(
                "only a signed answer carries an App Attest counter",
            ));
        }
    };
    let Some(record) = recorded else {
        tx.rollback().await?;
        return Ok(Taken::NotRecorded);
    };
    tx.commit().await?;
    announce_recorded(ctx, id, &record).await;
    Ok(Taken::Recorded(Box::new(record)))
}

/// Records `ending` if the authentication is still pending and unexpired, then announces it.
/// Returns the record as stored after it, or `None` when another ending won (or it expired).
pub(crate) async fn record(
    ctx: &Ctx,
    id: &AuthenticationId,
    ending: Ending<'_>,
) -> Result<Option<Authentication>, DomainError> {
    let now = ctx.now();
    let recorded = match ending {
        Ending::Answer {
            decision,
            signed_response,
            attributes,
        } => {
            authentications::record_answer(&ctx.db, id, decision, signed_response, attributes, now)
                .await?
        }
        Ending::WrongNumber {
            signed_response,
            attributes,
        } => {
            authentications::record_wrong_number(&ctx.db, id, signed_response, attributes, now)
                .await?
        }
        Ending::Passcode { attributes } => {
            authentications::record_passcode_answer(&ctx.db, id, attributes, now).await?
        }
        Ending::Canceled => authentications::record_cancellation(&ctx.db, id, now).await?,
    };
    let Some(record) = recorded else {
        return Ok(None);
    };
    announce_recorded(ctx, id, &record).await;
    Ok(Some(record))
}

async fn announce_recorded(ctx: &Ctx, id: &AuthenticationId, record: &Authentication) {
    tracing::info!(
        authentication_id = %id,
        state = record.state.as_str(),
        denial_reason = record.denial_reason.map(DenialReason::as_str),
        "authentication ended"
    );
    ended(ctx, record).await;
}

/// Stores an authentication the application's policy ended before anyone was asked (approved
/// without user action, `POLICY_APPROVE`, or refused: failed with `policy_denied`), then
/// announces it like any other ending. Nothing is pushed to the device.
pub(crate) async fn record_policy_ending(
    ctx: &Ctx,
    record: &Authentication,
) -> Result<(), DomainError> {
    authentications::insert(ctx.db.writer(), record).await?;
    tracing::info!(
        authentication_id = %record.id,
        state = record.state.as_str(),
        failure_reason = record.failure_reason.as_deref(),
        "authentication ended by policy"
    );
    ended(ctx, record).await;
    Ok(())
}

/// Announces an ended authentication: wakes its waiters and its device's, then runs each
/// follow-up once.
pub(crate) async fn ended(ctx: &Ctx, record: &Authentication) {
    ctx.events
        .announce(
            &ctx.db,
            &[
                Topic::Authentication(record.id.to_string()),
                Topic::Enrollment(record.enrollment_id.to_string()),
            ],
        )
        .await;
    let event = DomainEvent::AuthenticationEnded(record.clone());
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
    let DomainEvent::AuthenticationEnded(record) = event;
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
        if let Err(e) = follow_up(ctx, event).await {
            tracing::warn!(follow_up = name, error = %e, "follow-up failed; its sweep or the next read repairs it");
        }
    }
}

/// Announces that a device has a new request to pull.
pub(crate) async fn request_created(ctx: &Ctx, record: &Authentication) {
    ctx.events
        .announce(
            &ctx.db,
            &[Topic::Enrollment(record.enrollment_id.to_string())],
        )
        .await;
    super::audit::authentication_created(ctx, record).await;
}

fn kind_label(kind: AuthenticationKind) -> &'static str {
    match kind {
        AuthenticationKind::Approval => "approval",
        AuthenticationKind::Transaction => "transaction",
        AuthenticationKind::Silent => "silent",
        AuthenticationKind::Ciba => "ciba",
    }
}
