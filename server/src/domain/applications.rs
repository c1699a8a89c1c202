//! Applications: the customer's API key identifies one.

use tessera_protocol::api::{
    AuthenticationSettings, AuthenticationSettingsView, PushBombingLimits,
};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::ApplicationId;

use super::{Ctx, DomainError};
use crate::config::ServerConfig;
use crate::store::Database;
use crate::store::applications;
use crate::store::authentications::AdmissionCondition;
pub(crate) use crate::store::authentications::AdmissionLock;

pub(crate) use crate::store::applications::Application;

/// A call with a missing or unknown API key, from `client_ip`: recorded in the audit log (at
/// most once a minute per address, and at most 60 a minute on this server whatever the
/// addresses: past that, counted and logged; see `audit::unauthenticated_failure_due`).
pub(crate) async fn api_key_rejected(ctx: &Ctx, client_ip: Option<&str>, presented: bool) {
    if !super::audit::unauthenticated_failure_due(ctx, "api_key.rejected", client_ip.unwrap_or(""))
    {
        return;
    }
    let event = super::audit::Event::new(
        "api_key.rejected",
        super::audit::Actor::Anonymous,
        "refused",
    )
    .client_ip(client_ip)
    .details(serde_json::json!({ "key_presented": presented }));
    super::audit::record(ctx, event).await;
}

/// The application's quotas in force: its own, or the server's defaults.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QuotasInForce {
    /// QR sessions open at once.
    pub open_qr_sessions: u32,
    /// Authentication requests pending at once.
    pub pending_requests: u32,
}

/// The quotas in force for `app`.
pub(crate) async fn quotas(ctx: &Ctx, app: &ApplicationId) -> Result<QuotasInForce, DomainError> {
    let own = applications::quotas(&ctx.db, app).await?;
    Ok(quotas_in_force(ctx, own))
}

/// The quotas in force given the application's own (`own`, as read).
pub(crate) fn quotas_in_force(ctx: &Ctx, own: applications::Quotas) -> QuotasInForce {
    QuotasInForce {
        open_qr_sessions: own
            .max_open_qr_sessions
            .unwrap_or(ctx.config.max_open_qr_sessions_per_application),
        pending_requests: own
            .max_pending_requests
            .unwrap_or(ctx.config.max_pending_requests_per_application),
    }
}

/// The refusal of a request over the application's quota of `what`.
pub(crate) fn over_quota(what: &str, quota: u32) -> DomainError {
    DomainError::new(
        ErrorCode::QuotaExceeded,
        format!(
            "the application already has {quota} {what}, its quota; retry when some have ended"
        ),
    )
}

/// The limits a request is admitted under, as the admission counts take them.
fn admission_limits(
    quota: u32,
    limits: &UserLimits,
) -> crate::store::authentications::AdmissionLimits {
    crate::store::authentications::AdmissionLimits {
        application_pending: counted(quota),
        user_pending: limits
            .push_bombing
            .and_then(|l| counted(l.max_pending_per_user)),
        user_recent: limits
            .push_bombing
            .and_then(|l| counted(l.max_unapproved_per_user)),
        pushes: limits.push_limit.and_then(|l| counted(l.max)),
    }
}

/// The lock a request's admission first tries under `quota` and `limits`
/// (`store::authentications::AdmissionLock`): nothing when no limit is counted, the user's
/// lock alone without an application quota, the application's lock shared when the quota is
/// above the margin a shared lock checks it with, else exclusive.
fn admission_lock(ctx: &Ctx, quota: u32, limits: &UserLimits) -> AdmissionLock {
    let most = admission_limits(quota, limits);
    let user = most.user_pending.is_some() || most.user_recent.is_some() || most.pushes.is_some();
    match most.application_pending {
        None if user => AdmissionLock::User,
        None => AdmissionLock::Nothing,
        Some(quota) if quota > ctx.db.admission_margin() => AdmissionLock::Shared { user },
        Some(_) => AdmissionLock::Exclusive,
    }
}

/// The lock an admission [`Admission::Contended`] under `lock` runs again with: the exclusive
/// one, which counts exactly and is never contended (an error if it was).
fn after_contention(lock: AdmissionLock) -> Result<AdmissionLock, DomainError> {
    match lock {
        AdmissionLock::Exclusive => Err(DomainError::Internal(
            "an exclusive admission found its quota contended",
        )),
        _ => Ok(AdmissionLock::Exclusive),
    }
}

/// What [`admit`] did with a new request.
pub(crate) enum Admitted {
    /// Stored and committed, with everything written with it; what its commit announces
    /// ([`super::outcome::Announced::committed`]).
    Stored(super::outcome::Announced),
    /// Not stored: other requests took the last places of the policy's `limit_push` since it
    /// was decided (the reason given). Nothing was written.
    PushLimited(String),
    /// Not stored: the request was ended by the user's bypass, and that bypass is no longer in
    /// force (cleared, or ended, since it was read). Nothing was written; the request is to be
    /// made again without the bypass, as it would have been had the clearing come first.
    BypassCleared,
    /// Not stored: the request was made by a flow's action ([`MadeFor::Flow`]), and the flow
    /// moved since that action's claim. Nothing was written.
    FlowLost,
}

/// What a new request is made for, written with it exactly when it is stored.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MadeFor<'a> {
    /// Its caller alone (a customer's call).
    Caller,
    /// A relying party's CIBA request, stored with it.
    Ciba(&'a crate::store::ciba::CibaRequest),
    /// A flow's action: the flow's move to show the request, made with it, and the policy
    /// decision the flow's step made, recorded with the move (its subject the flow).
    Flow(
        &'a crate::store::flows::MoveWithRequest,
        Option<&'a super::policy::Decided>,
    ),
}

/// Admits a new request `record` in one atomic write: the counts of its limits and its insert,
/// with what goes with it (the policy decision it was made under and that decision's audit
/// record, its own audit record `created`, and what it is made for, [`MadeFor`]), all written
/// exactly when it is stored, under the admission's locks ([`admission_lock`]). On PostgreSQL
/// that is one statement committed on its own (`store::authentications::admit_at_once`); on
/// SQLite, whose one writer runs each write alone, a write of its own. One the quota's margin
/// refused under a shared lock runs again, once, under the exclusive one.
///
/// A `record` ended by the user's bypass ([`super::bypass::end_by_bypass`]) is stored only while
/// that bypass is in force, checked in the same statement
/// (`store::authentications::AdmissionCondition::BypassInForce`; on PostgreSQL a clearing in
/// flight is waited for): one cleared since it was read stores nothing, and is
/// [`Admitted::BypassCleared`].
pub(crate) async fn admit(
    ctx: &Ctx,
    record: &crate::store::authentications::Authentication,
    quota: u32,
    limits: &UserLimits,
    decided: Option<&super::policy::Decided>,
    created: &super::outcome::NewRequest,
    made_for: MadeFor<'_>,
) -> Result<Admitted, DomainError> {
    // The request's own decision, or the decision of the flow it is made for: a flow's request
    // is not decided on its own (the flow's step decided for the whole flow).
    let subject = match (decided, made_for) {
        (Some(_), MadeFor::Flow(_, Some(_))) => {
            return Err(DomainError::Internal(
                "a flow's request decided on its own as well as by its flow",
            ));
        }
        (Some(decided), _) => Some((decided, record.id.as_str())),
        (None, MadeFor::Flow(moved, Some(decided))) => Some((decided, moved.next.id.as_str())),
        (None, _) => None,
    };
    let decision = subject
        .map(|(decided, subject)| {
            super::policy::recorded_with(
                ctx,
                &record.application_id,
                &record.user_id,
                Some(subject),
                decided,
            )
        })
        .transpose()?;
    let records: std::borrow::Cow<'_, [crate::store::audit::Appended]> = match &decision {
        Some(decision) => decision
            .audit
            .iter()
            .chain(created.records())
            .cloned()
            .collect(),
        None => created.records().into(),
    };
    let row = decision.as_ref().map(|d| d.row());
    let sealed = match made_for {
        MadeFor::Ciba(request) => Some(crate::store::ciba::sealed(ctx.db.secrets()?, request)?),
        MadeFor::Caller | MadeFor::Flow(..) => None,
    };
    let with = crate::store::authentications::WrittenWith {
        records: &records,
        decision: row.as_ref(),
        ciba: sealed.as_ref(),
        flow: match made_for {
            MadeFor::Flow(moved, _) => Some(moved),
            MadeFor::Caller | MadeFor::Ciba(_) => None,
        },
    };
    let condition = if super::bypass::is_bypass(record.attributes.as_deref()) {
        AdmissionCondition::BypassInForce
    } else {
        AdmissionCondition::Unconditional
    };
    let mut offer = Offer {
        record,
        quota,
        limits,
        lock: admission_lock(ctx, quota, limits),
        condition,
        with,
        created,
    };
    loop {
        let offered = match ctx.db.engine() {
            crate::store::Engine::Postgres => offer_at_once(ctx, offer).await?,
            crate::store::Engine::Sqlite => offer_in_write(ctx, offer).await?,
        };
        match offered {
            Admission::Inserted(announced) => return Ok(Admitted::Stored(announced)),
            Admission::Contended => offer.lock = after_contention(offer.lock)?,
            Admission::PushLimited(reason) => return Ok(Admitted::PushLimited(reason)),
            Admission::BypassCleared => return Ok(Admitted::BypassCleared),
            Admission::FlowLost => return Ok(Admitted::FlowLost),
            Admission::DeviceGone => {
                return Err(DomainError::new(
                    ErrorCode::DeviceNotFound,
                    "the device was unpaired as the request was made",
                ));
            }
        }
    }
}

/// A request offered for admission under `lock`, with what is written `with` it.
#[derive(Clone, Copy)]
struct Offer<'a> {
    record: &'a crate::store::authentications::Authentication,
    quota: u32,
    limits: &'a UserLimits,
    lock: AdmissionLock,
    condition: AdmissionCondition,
    with: crate::store::authentications::WrittenWith<'a>,
    created: &'a super::outcome::NewRequest,
}

impl Offer<'_> {
    /// The windows counted in and the limits counted against, now; under a shared lock the
    /// application's quota is lowered by the margin (the transactions that may not have
    /// committed), which is returned too.
    fn counted_now(
        &self,
        ctx: &Ctx,
    ) -> (
        crate::store::authentications::AdmissionWindows,
        crate::store::authentications::AdmissionLimits,
        i64,
    ) {
        let margin = match self.lock {
            AdmissionLock::Shared { .. } => ctx.db.admission_margin(),
            _ => 0,
        };
        let now = ctx.now();
        let windows = crate::store::authentications::AdmissionWindows {
            now,
            pending_since: now - super::authentication::LONGEST_REQUEST_SECONDS,
            recent_since: now
                - self
                    .limits
                    .push_bombing
                    .map_or(0, |l| i64::from(l.window_seconds)),
            push_limit_since: self
                .limits
                .push_limit
                .map(|l| now - i64::from(l.window_seconds)),
        };
        let mut most = admission_limits(self.quota, self.limits);
        most.application_pending = most.application_pending.map(|q| q - margin);
        (windows, most, margin)
    }

    /// Which limit the `counts` of a refused offer refused it under: an error (the quota, push
    /// bombing), the policy's push limit, or the quota's margin under a shared lock; `None`
    /// when no count refuses it (any more).
    fn refused_by(
        &self,
        counts: &crate::store::authentications::AdmissionCounts,
        margin: i64,
    ) -> Option<Result<Admission, DomainError>> {
        if counts.application_pending >= i64::from(self.quota) {
            return Some(Err(over_quota("pending requests", self.quota)));
        }
        if let Some(push_bombing) = &self.limits.push_bombing
            && let Some(reason) = super::authentication::push_bombing_refusal(push_bombing, counts)
        {
            return Some(Err(DomainError::new(
                ErrorCode::TooManyAuthentications,
                reason,
            )));
        }
        if let Some(limit) = &self.limits.push_limit
            && counts.pushes >= i64::from(limit.max)
        {
            return Some(Ok(Admission::PushLimited(
                limit.exceeded(counts.pushes.unsigned_abs()),
            )));
        }
        if margin > 0 && counts.application_pending + margin >= i64::from(self.quota) {
            // Under the quota, but within the margin of admissions that may not have committed.
            return Some(Ok(Admission::Contended));
        }
        None
    }
}

/// PostgreSQL: offers the request in one statement that takes the locks, counts, and stores it
/// with what goes with it when every count is below its limit, committed on its own
/// (`store::authentications::admit_at_once`); a refusal is explained by the counts the
/// statement read under its locks.
async fn offer_at_once(ctx: &Ctx, offer: Offer<'_>) -> Result<Admission, DomainError> {
    for _ in 0..ADMISSION_ATTEMPTS {
        let (windows, most, margin) = offer.counted_now(ctx);
        let verdict = crate::store::authentications::admit_at_once(
            &ctx.db,
            offer.record,
            windows,
            most,
            offer.lock,
            offer.condition,
            offer.with,
        )
        .await?;
        if let Some(queued) = verdict.stored {
            return Ok(Admission::Inserted(offer.created.announced(queued.into())));
        }
        // The flow's action lost its flow: whatever else refused the request, nothing is made.
        if verdict.flow_lost {
            return Ok(Admission::FlowLost);
        }
        // Without its bypass the request is another one, whose own limits then decide.
        if verdict.bypass_gone {
            return Ok(Admission::BypassCleared);
        }
        if verdict.device_gone {
            return Ok(Admission::DeviceGone);
        }
        if let Some(refused) = offer.refused_by(&verdict.counts, margin) {
            return refused;
        }
    }
    Err(DomainError::Internal(
        "a request was refused admission under none of its limits",
    ))
}

/// SQLite: offers the request in a write of its own (the one writer runs it alone: no lock is
/// taken): the counts and the insert are one statement, what goes with it the write's next
/// statements. A refusal is explained by the counts read again in the same write; requests
/// that end meanwhile cannot lower them there (nothing else writes), so the loop only guards.
async fn offer_in_write(ctx: &Ctx, offer: Offer<'_>) -> Result<Admission, DomainError> {
    use crate::store::authentications;
    let mut w = ctx.db.write().await?;
    // The flow's move first: a refusal below rolls it back with the rest.
    if let Some(moved) = offer.with.flow
        && !crate::store::flows::move_in_write(&mut w, moved).await?
    {
        w.rollback_after_others().await?;
        return Ok(Admission::FlowLost);
    }
    for _ in 0..ADMISSION_ATTEMPTS {
        let (windows, most, margin) = offer.counted_now(ctx);
        if let Some(queued) = authentications::insert_if_admitted_deciding(
            &mut w,
            offer.record,
            windows,
            most,
            offer.condition,
            offer.with.records,
            offer.with.decision,
        )
        .await?
        {
            if let Some(ciba) = offer.with.ciba {
                crate::store::ciba::insert_sealed_deferred(&mut w, ciba).await?;
            }
            let committed = w.commit().await?;
            let announced = offer.created.announced(queued.into()).resolved(&committed);
            return Ok(Admission::Inserted(announced));
        }
        // Without its bypass the request is another one, whose own limits then decide.
        if offer.condition == AdmissionCondition::BypassInForce
            && !crate::store::bypass::in_force(
                &mut w,
                &offer.record.application_id,
                &offer.record.user_id,
                windows.now,
            )
            .await?
        {
            w.rollback().await?;
            return Ok(Admission::BypassCleared);
        }
        let counts = authentications::admission_counts(
            &mut w,
            &offer.record.application_id,
            &offer.record.user_id,
            windows,
        )
        .await?;
        if let Some(refused) = offer.refused_by(&counts, margin) {
            w.rollback().await?;
            return refused;
        }
        if !authentications::device_active(&mut w, &offer.record.enrollment_id).await? {
            w.rollback().await?;
            return Ok(Admission::DeviceGone);
        }
    }
    w.rollback().await?;
    Err(DomainError::Internal(
        "a request was refused admission under none of its limits",
    ))
}

/// How many times a request is offered while the counts read after its refusal no longer
/// refuse it.
const ADMISSION_ATTEMPTS: usize = 3;

/// A limit as the admission counts take it: `u32::MAX` ([`NO_LIMIT`]) is none, and nothing is
/// counted for it (no count of stored requests reaches it).
fn counted(limit: u32) -> Option<i64> {
    (limit != NO_LIMIT).then(|| i64::from(limit))
}

/// The value of a server setting that turns a per-user or per-application request limit off.
pub(crate) const NO_LIMIT: u32 = u32::MAX;

/// The per-user limits a new request is taken under, checked in the transaction that inserts
/// it after the admission's locks (PostgreSQL: the user's advisory lock, [`admission_lock`];
/// SQLite has one writer): count and insert are one atomic step, so a burst of requests at once
/// never creates more than the limit.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UserLimits {
    /// The push-bombing limits (user-facing requests; `None` for a silent verification).
    pub push_bombing: Option<PushBombingLimits>,
    /// A policy's `limit_push` that let the request through at decision time.
    pub push_limit: Option<crate::domain::policy::evaluate::PushLimit>,
}

/// What became of a request offered for admission.
enum Admission {
    /// Stored and committed; what its commit announces.
    Inserted(super::outcome::Announced),
    /// Not stored: the policy's `limit_push` was reached meanwhile (the reason given).
    PushLimited(String),
    /// Not stored: under a shared lock the application's quota was within its margin; the
    /// transaction is to be rolled back and run again under [`AdmissionLock::Exclusive`].
    Contended,
    /// Not stored: the device asked was unpaired since it was picked.
    DeviceGone,
    /// Not stored: the bypass that ended the request is no longer in force.
    BypassCleared,
    /// Not stored: the flow whose move goes with it moved first.
    FlowLost,
}

/// Inclusive bounds of the push-bombing settings.
const MAX_PENDING_RANGE: std::ops::RangeInclusive<u32> = 1..=100;
const MAX_UNAPPROVED_RANGE: std::ops::RangeInclusive<u32> = 1..=1000;
const WINDOW_RANGE: std::ops::RangeInclusive<u32> = 60..=86_400;

/// The push-bombing limits in force: the application's where it set them, else the server's.
pub(crate) fn push_bombing_limits(
    config: &ServerConfig,
    stored: &applications::AuthenticationSettings,
) -> PushBombingLimits {
    PushBombingLimits {
        max_pending_per_user: stored
            .max_pending_per_user
            .unwrap_or(config.max_pending_authentications_per_user),
        max_unapproved_per_user: stored
            .max_unapproved_per_user
            .unwrap_or(config.max_recent_authentications_per_user),
        window_seconds: stored
            .push_bombing_window_seconds
            .unwrap_or(config.push_bombing_window_seconds),
    }
}

fn check_range(
    value: Option<u32>,
    range: &std::ops::RangeInclusive<u32>,
    what: &str,
) -> Result<(), DomainError> {
    match value {
        Some(n) if !range.contains(&n) => Err(DomainError::invalid(format!(
            "{what} must be between {} and {}",
            range.start(),
            range.end()
        ))),
        _ => Ok(()),
    }
}

fn view(
    config: &ServerConfig,
    stored: &applications::AuthenticationSettings,
) -> AuthenticationSettingsView {
    AuthenticationSettingsView {
        settings: AuthenticationSettings {
            number_matching: stored.number_matching,
            max_pending_per_user: stored.max_pending_per_user,
            max_unapproved_per_user: stored.max_unapproved_per_user,
            push_bombing_window_seconds: stored.push_bombing_window_seconds,
        },
        effective: push_bombing_limits(config, stored),
    }
}

/// The application's number matching mode and push-bombing limits, and the limits in force.
pub(crate) async fn authentication_settings(
    db: &Database,
    config: &ServerConfig,
    app: &ApplicationId,
) -> Result<AuthenticationSettingsView, DomainError> {
    let stored = applications::authentication_settings(db, app).await?;
    Ok(view(config, &stored))
}

/// Replaces the application's number matching mode and push-bombing limits (each limit
/// checked against its range; one left out uses the server-wide value).
pub(crate) async fn set_authentication_settings(
    db: &Database,
    config: &ServerConfig,
    app: &ApplicationId,
    settings: AuthenticationSettings,
) -> Result<AuthenticationSettingsView, DomainError> {
    check_range(
        settings.max_pending_per_user,
        &MAX_PENDING_RANGE,
        "max_pending_per_user",
    )?;
    check_range(
        settings.max_unapproved_per_user,
        &MAX_UNAPPROVED_RANGE,
        "max_unapproved_per_user",
    )?;
    check_range(
        settings.push_bombing_window_seconds,
        &WINDOW_RANGE,
        "push_bombing_window_seconds",
    )?;
    let stored = applications::AuthenticationSettings {
        number_matching: settings.number_matching,
        max_pending_per_user: settings.max_pending_per_user,
        max_unapproved_per_user: settings.max_unapproved_per_user,
        push_bombing_window_seconds: settings.push_bombing_window_seconds,
    };
    if !applications::set_authentication_settings(db, app, &stored).await? {
        return Err(DomainError::new(ErrorCode::NotFound, "no such application"));
    }
    let event =
        super::audit::Event::new("policy.changed", super::audit::Actor::Customer, "success")
            .app(app)
            .details(serde_json::json!({
                "number_matching": stored.number_matching,
                "max_pending_per_user": stored.max_pending_per_user,
                "max_unapproved_per_user": stored.max_unapproved_per_user,
                "push_bombing_window_seconds": stored.push_bombing_window_seconds,
            }));
    if let Err(e) =
        super::audit::append(db, &config.accessing_ip_table, config.clock.now_ms(), event).await
    {
        tracing::error!(error = %e, "an audit record could not be written");
    }
    Ok(view(config, &stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_largest_setting_turns_a_limit_off() {
        assert_eq!(counted(NO_LIMIT), None);
        assert_eq!(counted(NO_LIMIT - 1), Some(i64::from(u32::MAX - 1)));
        assert_eq!(counted(0), Some(0));
        assert_eq!(counted(3), Some(3));
    }

    #[test]
    fn an_application_limit_replaces_the_server_value_and_none_keeps_it() {
        let config = ServerConfig::default();
        let server = push_bombing_limits(&config, &applications::AuthenticationSettings::default());
        assert_eq!(
            server,
            PushBombingLimits {
                max_pending_per_user: config.max_pending_authentications_per_user,
                max_unapproved_per_user: config.max_recent_authentications_per_user,
                window_seconds: config.push_bombing_window_seconds,
            }
        );
        let own = push_bombing_limits(
            &config,
            &applications::AuthenticationSettings {
                max_unapproved_per_user: Some(4),
                push_bombing_window_seconds: Some(120),
                ..Default::default()
            },
        );
        assert_eq!(own.max_pending_per_user, server.max_pending_per_user);
        assert_eq!(own.max_unapproved_per_user, 4);
        assert_eq!(own.window_seconds, 120);
    }

    #[test]
    fn limits_out_of_range_are_refused() {
        assert!(check_range(Some(0), &MAX_PENDING_RANGE, "x").is_err());
        assert!(check_range(Some(101), &MAX_PENDING_RANGE, "x").is_err());
        assert!(check_range(Some(59), &WINDOW_RANGE, "x").is_err());
        assert!(check_range(None, &WINDOW_RANGE, "x").is_ok());
        assert!(check_range(Some(600), &WINDOW_RANGE, "x").is_ok());
    }
}
