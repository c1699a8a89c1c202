//! Authentication policies: saving them (validated, every version kept), users' groups, and
//! deciding for a request — the facts are gathered here (groups, recent authentications, push
//! counts, the IP table, the previous location) and handed to the pure [`evaluate`] module;
//! every decision is recorded with the values it looked at. See `docs/policy.md`.

pub mod compiled;
pub mod evaluate;

use std::collections::BTreeSet;
use std::net::IpAddr;

use tessera_protocol::authentication::DisplayField;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::{ApplicationId, UserId};
use tessera_protocol::policy::{
    DeviceFacts, EvaluatePolicyRequest, PolicyDocument, PolicyEffect, PolicyEvaluation,
    PolicyMethod, PolicyVersion, PolicyVersionList, RequestKind, UserGroups,
};

use super::users::user_not_found;
use super::{Ctx, DomainError};
use crate::store::enrollments::Enrollment;
use crate::store::policies::{self, StoredPolicy};
use evaluate::{AccessingFacts, CompiledPolicy, PolicyDecision, PolicyInputs};

/// Most groups a user may have.
const MAX_GROUPS: usize = 50;
/// The largest policy document accepted, in bytes of JSON.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

fn to_version(stored: StoredPolicy) -> Result<PolicyVersion, DomainError> {
    let policy: PolicyDocument = serde_json::from_str(&stored.document)
        .map_err(|_| DomainError::Internal("a stored policy cannot be read"))?;
    Ok(PolicyVersion {
        version: stored.version,
        created_at: stored.created_at,
        policy,
    })
}

/// Validates `document` and saves it as the application's next version. An invalid policy is
/// refused (`invalid_request`) with the offending rule named, and nothing is saved.
pub(crate) async fn save(
    ctx: &Ctx,
    app: &ApplicationId,
    document: &PolicyDocument,
) -> Result<PolicyVersion, DomainError> {
    save_in(&ctx.db, app, document, ctx.now()).await
}

/// [`save`] on `db` at `now` (the admin command line).
pub(crate) async fn save_in(
    db: &crate::store::Database,
    app: &ApplicationId,
    document: &PolicyDocument,
    now: i64,
) -> Result<PolicyVersion, DomainError> {
    CompiledPolicy::compile(0, document)
        .map_err(|e| DomainError::invalid(format!("the policy is invalid: {e}")))?;
    let text = serde_json::to_string(document)
        .map_err(|_| DomainError::Internal("a policy cannot be encoded"))?;
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(DomainError::invalid("the policy is too large"));
    }
    let stored = policies::save(db, app, &text, now).await?;
    tracing::info!(application_id = %app, version = stored.version, "policy saved");
    to_version(stored)
}

/// The current version.
pub(crate) async fn current(ctx: &Ctx, app: &ApplicationId) -> Result<PolicyVersion, DomainError> {
    current_in(&ctx.db, app).await
}

/// [`current`] on `db`.
pub(crate) async fn current_in(
    db: &crate::store::Database,
    app: &ApplicationId,
) -> Result<PolicyVersion, DomainError> {
    let stored = policies::current(db, app)
        .await?
        .ok_or_else(|| DomainError::new(ErrorCode::NotFound, "the application has no policy"))?;
    to_version(stored)
}

/// Every version, oldest first.
pub(crate) async fn versions(
    ctx: &Ctx,
    app: &ApplicationId,
) -> Result<PolicyVersionList, DomainError> {
    versions_in(&ctx.db, app).await
}

/// [`versions`] on `db`.
pub(crate) async fn versions_in(
    db: &crate::store::Database,
    app: &ApplicationId,
) -> Result<PolicyVersionList, DomainError> {
    let versions = policies::versions(db, app)
        .await?
        .into_iter()
        .map(to_version)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PolicyVersionList { versions })
}

/// Replaces the user's groups.
pub(crate) async fn set_groups(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    body: &UserGroups,
) -> Result<UserGroups, DomainError> {
    set_groups_in(&ctx.db, app, user, body).await
}

/// [`set_groups`] on `db`.
pub(crate) async fn set_groups_in(
    db: &crate::store::Database,
    app: &ApplicationId,
    user: &UserId,
    body: &UserGroups,
) -> Result<UserGroups, DomainError> {
    // Read first so that an unknown user is told so before the groups are judged; the write
    // below looks again under the user's lock, which is what keeps a deletion in between from
    // leaving the groups to a later user of the same id.
    if crate::store::users::get(db, app, user).await?.is_none() {
        return Err(user_not_found());
    }
    if body.groups.len() > MAX_GROUPS {
        return Err(DomainError::invalid(format!(
            "a user has at most {MAX_GROUPS} groups"
        )));
    }
    let mut groups: Vec<String> = Vec::with_capacity(body.groups.len());
    for group in &body.groups {
        if group.trim().is_empty() || group.chars().count() > 64 {
            return Err(DomainError::invalid("a group name is 1 to 64 characters"));
        }
        if !tessera_protocol::display::is_displayable(group) {
            return Err(DomainError::invalid(
                "a group name has control, bidirectional or invisible format characters",
            ));
        }
        groups.push(group.clone());
    }
    groups.sort();
    groups.dedup();
    // Replaces take turns on the user's row (`store::policies::set_groups`): of replaces at
    // once, the last to commit stands alone, within MAX_GROUPS.
    if !policies::set_groups(db, app, user, &groups).await? {
        return Err(user_not_found());
    }
    Ok(UserGroups { groups })
}

/// The user's groups.
pub(crate) async fn groups(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
) -> Result<UserGroups, DomainError> {
    super::users::require_user(ctx, app, user).await?;
    Ok(UserGroups {
        groups: policies::groups(&ctx.db, app, user).await?,
    })
}

/// Where a decision's facts come from: the store, the IP table and the time.
pub(crate) struct Env<'a> {
    /// The database.
    pub db: &'a crate::store::Database,
    /// The accessing-IP table.
    pub ip_table: &'a crate::ip_table::IpTable,
    /// Now, seconds since the epoch.
    pub now: i64,
    /// The policy versions compiled so far.
    pub compiled: &'a compiled::CompiledPolicies,
}

impl<'a> Env<'a> {
    /// The running server's.
    pub fn of(ctx: &'a Ctx) -> Self {
        Self {
            db: &ctx.db,
            ip_table: &ctx.config.accessing_ip_table,
            now: ctx.now(),
            compiled: &ctx.compiled_policies,
        }
    }
}

/// What a path asks the policy about.
pub(crate) struct Request<'a> {
    /// The kind of request.
    pub kind: RequestKind,
    /// The accessing IP, if known.
    pub accessing_ip: Option<&'a str>,
    /// The authenticating device's facts, if there is one.
    pub device: Option<DeviceFacts>,
    /// Transaction fields.
    pub fields: &'a [DisplayField],
}

/// A device's facts as the policy reads them.
pub(crate) fn device_facts(device: &Enrollment) -> DeviceFacts {
    DeviceFacts {
        platform: Some(device.device_info.os_name.to_ascii_lowercase()),
        os_version: Some(device.device_info.os_version.clone()),
        app_version: Some(device.device_info.app_version.clone()),
        rooted: device.signals.rooted,
        screen_lock: device.signals.screen_lock,
        mdm: device.signals.mdm,
        attested: Some(crate::domain::attestation::enrollment_attested(
            device.attestation.as_ref(),
        )),
    }
}

/// A decision with what is recorded beside it.
#[derive(Debug, Clone)]
pub(crate) struct Decided {
    /// The decision.
    pub decision: PolicyDecision,
    /// The accessing location (recorded for later geovelocity checks).
    pub location: Option<(f64, f64)>,
    kind: RequestKind,
}

impl Decided {
    /// The wire summary, as JSON text (stored with an authentication).
    pub fn outcome_json(&self) -> Option<String> {
        serde_json::to_string(&self.decision.outcome()).ok()
    }

    /// Turns a `limit_push` that let the request through into the denial it becomes once the
    /// limit, taken again when the request is stored, is found reached (`reason` says how).
    pub fn limit_reached(&mut self, reason: String) {
        self.decision.effect = PolicyEffect::Deny;
        self.decision.reason = reason;
        self.decision.methods.clear();
        self.decision.push_limit = None;
        self.decision.looked_at.insert(
            "push_limit_reached_when_stored".into(),
            serde_json::json!(true),
        );
    }

    /// The refusal of a denied request (`policy_denied`, with the rule's reason).
    pub fn refusal(&self) -> DomainError {
        DomainError::new(ErrorCode::PolicyDenied, self.decision.reason.clone())
    }

    /// Refuses a request the decision does not let through with `method`: a denial, or a
    /// `require` that names other methods. An `approve` lets any method through.
    pub fn check_method(&self, method: PolicyMethod) -> Result<(), DomainError> {
        method_check(
            self.decision.effect,
            &self.decision.methods,
            &self.decision.reason,
            method,
        )
    }
}

/// Whether a decision with `effect`, `methods` and `reason` lets a request through with
/// `method` ([`Decided::check_method`], [`StoredDecision::check_method`]): a denial refuses
/// it with its reason, a `require` naming other methods with the methods it names, both as
/// `policy_denied`; an `approve`, or a `require` naming no method, lets any method through.
fn method_check(
    effect: PolicyEffect,
    methods: &[PolicyMethod],
    reason: &str,
    method: PolicyMethod,
) -> Result<(), DomainError> {
    match effect {
        PolicyEffect::Deny => Err(DomainError::new(ErrorCode::PolicyDenied, reason)),
        PolicyEffect::Approve => Ok(()),
        PolicyEffect::Require if methods.is_empty() || methods.contains(&method) => Ok(()),
        PolicyEffect::Require => Err(DomainError::new(
            ErrorCode::PolicyDenied,
            format!(
                "the policy requires {}: {} is not allowed here",
                methods
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(" or "),
                method.as_str()
            ),
        )),
    }
}

/// The policy's decision as stored with an authentication (`Authentication::policy`, a JSON
/// [`PolicyOutcome`](tessera_protocol::policy::PolicyOutcome)), read back to judge the methods
/// that answer it: a passcode or backup code answering a push must be one of the methods its
/// `require` names, as on the standalone passcode and backup-code paths ([`check_path`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct StoredDecision(Option<tessera_protocol::policy::PolicyOutcome>);

impl StoredDecision {
    /// The decision stored as `policy` (`None`: none was made, and every method may answer).
    /// A stored decision that does not read back is an internal error: its methods are not
    /// known, so none is let through.
    pub fn of(policy: Option<&str>) -> Result<Self, DomainError> {
        policy
            .map(|text| {
                serde_json::from_str(text).map_err(|_| {
                    DomainError::Internal("an authentication's policy decision cannot be read")
                })
            })
            .transpose()
            .map(Self)
    }

    /// Refuses `method` where the stored decision does not let it through (as
    /// [`Decided::check_method`] does).
    pub fn check_method(&self, method: PolicyMethod) -> Result<(), DomainError> {
        match &self.0 {
            None => Ok(()),
            Some(o) => method_check(o.effect, &o.methods, &o.reason, method),
        }
    }

    /// Whether the stored decision lets `method` through.
    pub fn allows(&self, method: PolicyMethod) -> bool {
        self.check_method(method).is_ok()
    }
}

/// Which policy a decision is made under.
enum Under<'a> {
    /// The application's current policy, read now.
    Current,
    /// The application's current policy as its caller read it (with the request's settings),
    /// or `None`: the application has no policy.
    Read(Option<&'a policies::StoredPolicy>),
    /// A saved version (a dry run).
    Version(u32),
}

async fn load_compiled(
    env: &Env<'_>,
    app: &ApplicationId,
    under: Under<'_>,
) -> Result<Option<Result<std::sync::Arc<CompiledPolicy>, PolicyDecision>>, DomainError> {
    let read;
    let (stored, current) = match under {
        Under::Current => {
            read = policies::current(env.db, app).await?;
            (read.as_ref(), true)
        }
        Under::Read(stored) => (stored, true),
        Under::Version(v) => {
            read = Some(policies::version(env.db, app, v).await?.ok_or_else(|| {
                DomainError::new(
                    ErrorCode::NotFound,
                    "the application has no such policy version",
                )
            })?);
            (read.as_ref(), false)
        }
    };
    let Some(stored) = stored else {
        if current {
            env.compiled.forget_current(app);
        }
        return Ok(None);
    };
    // A stored policy that no longer compiles (a time zone gone from the database, ...)
    // denies: it fails closed.
    let compiled = if current {
        env.compiled.get_current_or_compile(app, stored)
    } else {
        env.compiled.get_or_compile(app, stored)
    };
    let compiled = compiled.map_err(|why| {
        PolicyDecision::denied(
            stored.version,
            tessera_protocol::policy::DEFAULT_RULE,
            format!("the policy cannot be evaluated: {why}"),
        )
    });
    Ok(Some(compiled))
}

struct Gathered {
    inputs: PolicyInputs,
    location: Option<(f64, f64)>,
}

async fn gather(
    env: &Env<'_>,
    app: &ApplicationId,
    user: &UserId,
    policy: &CompiledPolicy,
    request: &Request<'_>,
    ahead: Option<FactsAhead>,
) -> Result<Result<Gathered, String>, DomainError> {
    // The facts read ahead serve when this policy looks at the same ones; the decision is
    // then made as of their reading.
    let needs = FactNeeds::of(policy);
    let (now, facts) = match ahead {
        Some(ahead) if ahead.needs == needs => (ahead.now, ahead.facts),
        _ => (
            env.now,
            read_facts(env.db, app, user, env.now, &needs).await?,
        ),
    };
    let accessing_ip = match request.accessing_ip.map(str::trim) {
        None | Some("") => None,
        Some(text) => match text.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)),
            Ok(ip) => Some(ip),
            // An accessing IP that is not an address cannot be judged: fail closed.
            Err(_) => return Ok(Err("the accessing IP is not an IP address".into())),
        },
    };
    let table = env.ip_table;
    let accessing = accessing_ip
        .and_then(|ip| table.lookup(&ip.to_string()))
        .map(|facts| AccessingFacts {
            country: facts.country.clone(),
            reputation: facts.reputation,
            location: facts.location,
        })
        .unwrap_or_default();
    let Facts {
        groups,
        known_groups,
        recent_successes,
        push_counts,
        previous_location,
    } = facts;
    Ok(Ok(Gathered {
        location: accessing.location,
        inputs: PolicyInputs {
            now,
            request: Some(request.kind),
            groups,
            known_groups,
            accessing_ip,
            ip_table_loaded: !table.is_empty(),
            accessing,
            device: request.device.clone(),
            attested_key: request
                .device
                .as_ref()
                .and_then(|d| d.attested)
                .unwrap_or(false),
            recent_successes,
            push_counts,
            previous_location,
            fields: request
                .fields
                .iter()
                .map(|f| (f.label.clone(), f.value.clone()))
                .collect(),
        },
    }))
}

/// The facts of a decision that come from the database ([`read_facts`]).
#[derive(Debug)]
struct Facts {
    /// The user's groups.
    groups: Vec<String>,
    /// The groups the policy names that some user of the application has.
    known_groups: BTreeSet<String>,
    /// The user's recent approvals: accessing IP, when (stored addresses that do not parse
    /// are left out).
    recent_successes: Vec<(IpAddr, i64)>,
    /// The user's push requests by window (seconds).
    push_counts: std::collections::BTreeMap<u32, u64>,
    /// The user's previous accessing location: latitude, longitude, when.
    previous_location: Option<(f64, f64, i64)>,
}

/// Which [`Facts`] a policy's rules look at: two policies with the same needs read the same
/// facts for a user at a given time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FactNeeds {
    /// The groups the rules name (none: no groups are read).
    named_groups: Vec<String>,
    /// How far back the rules look at the user's approvals, in seconds (0: not read).
    lookback: i64,
    /// The push-count windows with the largest number each is compared with.
    windows: std::collections::BTreeMap<u32, u32>,
    /// Whether a rule compares the previous location.
    geovelocity: bool,
}

impl FactNeeds {
    fn of(policy: &CompiledPolicy) -> Self {
        Self {
            named_groups: policy.named_groups().to_vec(),
            lookback: policy.recent_lookback_seconds(),
            windows: policy.push_windows(),
            geovelocity: policy.uses_geovelocity(),
        }
    }

    /// Whether nothing is read for them.
    fn are_none(&self) -> bool {
        self.named_groups.is_empty()
            && self.lookback == 0
            && self.windows.is_empty()
            && !self.geovelocity
    }
}

/// A decision's facts read ahead, beside a request's other reads, for the policy the
/// application's last decision was made under ([`read_ahead`]). A decision uses them only when
/// the policy in force looks at the same facts, and is then made as of their reading.
#[derive(Debug)]
pub(crate) struct FactsAhead {
    needs: FactNeeds,
    /// When they were read, seconds since the epoch.
    now: i64,
    facts: Facts,
}

/// Reads the facts the application's policy most likely looks at for `user` (the version its
/// last decision used, `CompiledPolicies::current`), so that a request that reads them beside
/// its own reads waits for one round trip on PostgreSQL where a decision made after those
/// reads waited for two. `None` without a remembered version, or when its rules look at
/// nothing in the database: no statement runs.
pub(crate) async fn read_ahead(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Option<FactsAhead>, DomainError> {
    let Some(policy) = ctx.compiled_policies.current(app) else {
        return Ok(None);
    };
    let needs = FactNeeds::of(&policy);
    if needs.are_none() {
        return Ok(None);
    }
    let now = ctx.now();
    let facts = read_facts(&ctx.db, app, user, now, &needs).await?;
    Ok(Some(FactsAhead { needs, now, facts }))
}

/// The facts `needs` names, read from the database for `user` as of `now`; only those its
/// rules use (a policy that names no group reads no groups, one without a geovelocity rule no
/// previous location, ...), all in one statement (`store::policies::facts`): one round trip on
/// PostgreSQL and one statement on SQLite, however many kinds of fact the rules look at.
async fn read_facts(
    db: &crate::store::Database,
    app: &ApplicationId,
    user: &UserId,
    now: i64,
    needs: &FactNeeds,
) -> Result<Facts, DomainError> {
    let wanted = policies::FactsWanted {
        named_groups: &needs.named_groups,
        approvals_since: (needs.lookback != 0).then(|| now - needs.lookback),
        push_windows: &needs.windows,
        previous_location: needs.geovelocity,
    };
    let read = policies::facts(db, app, user, now, &wanted).await?;
    Ok(Facts {
        groups: read.groups,
        known_groups: read.known_groups.into_iter().collect(),
        recent_successes: read
            .recent_successes
            .into_iter()
            .filter_map(|(ip, at)| ip.trim().parse::<IpAddr>().ok().map(|ip| (ip, at)))
            .collect(),
        push_counts: read.push_counts,
        previous_location: read.previous_location,
    })
}

async fn decide_with(
    env: &Env<'_>,
    app: &ApplicationId,
    user: &UserId,
    request: &Request<'_>,
    under: Under<'_>,
    ahead: Option<FactsAhead>,
) -> Result<Option<Decided>, DomainError> {
    let Some(compiled) = load_compiled(env, app, under).await? else {
        return Ok(None);
    };
    let (decision, location) = match compiled {
        Err(denied) => (denied, None),
        Ok(policy) => match gather(env, app, user, &policy, request, ahead).await? {
            Err(why) => (
                PolicyDecision::denied(
                    policy.version(),
                    tessera_protocol::policy::DEFAULT_RULE,
                    format!("the policy cannot be evaluated: {why}"),
                ),
                None,
            ),
            Ok(gathered) => (policy.evaluate(&gathered.inputs), gathered.location),
        },
    };
    Ok(Some(Decided {
        decision,
        location,
        kind: request.kind,
    }))
}

/// What the application's current policy decides for `request` by `user`, or `None` when the
/// application has no policy. Not recorded yet: [`record`] it once its subject exists.
pub(crate) async fn decide(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    request: &Request<'_>,
) -> Result<Option<Decided>, DomainError> {
    decide_under(ctx, app, user, request, Under::Current, None).await
}

/// [`decide`] under `current`, the application's current policy as the caller read it with the
/// request's settings (`store::applications::request_settings`; `None`: it has none), without
/// reading it again, and with the facts the caller read ahead ([`read_ahead`]) when that
/// policy looks at the same ones.
pub(crate) async fn decide_as_read(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    request: &Request<'_>,
    current: Option<&policies::StoredPolicy>,
    ahead: Option<FactsAhead>,
) -> Result<Option<Decided>, DomainError> {
    decide_under(ctx, app, user, request, Under::Read(current), ahead).await
}

async fn decide_under(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    request: &Request<'_>,
    under: Under<'_>,
    ahead: Option<FactsAhead>,
) -> Result<Option<Decided>, DomainError> {
    let decided = decide_with(&Env::of(ctx), app, user, request, under, ahead).await?;
    if let Some(d) = &decided {
        tracing::info!(
            application_id = %app,
            request = request.kind.as_str(),
            policy_version = d.decision.version,
            rule = %d.decision.rule,
            effect = ?d.decision.effect,
            "policy decided"
        );
    }
    Ok(decided)
}

/// Records a decision for `subject` (an authentication, QR session, flow or CIBA request id)
/// with its audit record, in one write.
pub(crate) async fn record(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    subject: Option<&str>,
    decided: &Decided,
) -> Result<(), DomainError> {
    let decision = recorded_with(ctx, app, user, subject, decided)?;
    let mut w = ctx.db.write().await?;
    let queued = record_in(&mut w, std::slice::from_ref(&decision)).await?;
    let committed = w.commit().await?;
    if queued.any(&committed) {
        ctx.events
            .announce(&[crate::domain::events::Topic::WebhookOutbox]);
    }
    Ok(())
}

/// A decision to record with the request it was made for, in the write that stores the
/// request ([`recorded_with`]; `domain::applications::admit`).
pub(crate) struct RecordedWith<'a> {
    recorded: Recorded<'a>,
    /// Its audit record, to append with the request's own.
    pub audit: Vec<crate::store::audit::Appended>,
}

impl RecordedWith<'_> {
    /// The decision's row.
    pub(crate) fn row(&self) -> policies::DecisionRecord<'_> {
        self.recorded.row()
    }
}

/// `decided` for `subject`, as the write that stores the subject records it: its row and its
/// audit record, both written exactly when the subject is (on PostgreSQL in the subject's own
/// statement).
pub(crate) fn recorded_with<'a>(
    ctx: &Ctx,
    app: &'a ApplicationId,
    user: &'a UserId,
    subject: Option<&'a str>,
    decided: &'a Decided,
) -> Result<RecordedWith<'a>, DomainError> {
    recorded_with_id(
        ctx,
        app,
        user,
        subject,
        decided,
        new_decision_id(ctx.now_ms()),
    )
}

/// [`recorded_with`] under the id `id`, which the caller derives from what the decision is
/// bound to (a QR claim's decisions are found again by their claim: see `domain::qr`). The id
/// must be unique: it is the row's key.
pub(crate) fn recorded_with_id<'a>(
    ctx: &Ctx,
    app: &'a ApplicationId,
    user: &'a UserId,
    subject: Option<&'a str>,
    decided: &'a Decided,
    id: String,
) -> Result<RecordedWith<'a>, DomainError> {
    let recorded = Recorded::of(ctx, app, user, subject, decided, id);
    let event = crate::domain::audit::policy_decided_event(&recorded.audit());
    let audit = crate::domain::audit::appended(ctx, vec![event])?;
    Ok(RecordedWith { recorded, audit })
}

/// Records `decisions` (each row and its audit record) inside the caller's write `w`, so they
/// commit or roll back with the change they were made for. Whether webhook deliveries were
/// queued is known once `w` committed ([`crate::domain::audit::Queued::any`]).
pub(crate) async fn record_in(
    w: &mut crate::store::Write<'_>,
    decisions: &[RecordedWith<'_>],
) -> Result<crate::domain::audit::Queued, DomainError> {
    let mut tickets = Vec::new();
    for decision in decisions {
        policies::record_decision_deferred(w, &decision.row()).await?;
        for appended in &decision.audit {
            tickets.extend(
                crate::store::audit::append_deferred(
                    w,
                    &appended.record,
                    appended.deliveries.as_ref(),
                )
                .await?,
            );
        }
    }
    Ok(crate::store::audit::AppendedQueue {
        tickets,
        queued: false,
    }
    .into())
}

/// A new decision id minted at `unix_ms`: `pd_` then [`tessera_protocol::ids::ordered_hex`] (the
/// millisecond's 12 hex digits, then 80 random bits in 20 hex digits), the shape (32 lowercase
/// hex digits) of a random one.
///
/// The id is the table's key, and a store keeps its keys in order: a random one lands on a
/// random page of that index, which each decision then writes on its own (on SQLite a log
/// frame, on PostgreSQL a full page image after each checkpoint); ordered ones land on its last
/// page, which the decisions committed together share, as authentications' ids do. A decision
/// id is no credential (reading a decision takes the application's API key), and the later of
/// two decisions made in one second for one subject is now also the later id, which the
/// reads' `ORDER BY created_at DESC, id DESC` take as the latest.
fn new_decision_id(unix_ms: i64) -> String {
    format!("pd_{}", tessera_protocol::ids::ordered_hex(unix_ms))
}

/// A decision as it is recorded: its row and its audit record.
struct Recorded<'a> {
    id: String,
    app: &'a ApplicationId,
    user: &'a UserId,
    subject: Option<&'a str>,
    decided: &'a Decided,
    inputs: String,
    effect: &'static str,
    methods: String,
    now: i64,
}

impl<'a> Recorded<'a> {
    fn of(
        ctx: &Ctx,
        app: &'a ApplicationId,
        user: &'a UserId,
        subject: Option<&'a str>,
        decided: &'a Decided,
        id: String,
    ) -> Self {
        Recorded {
            id,
            app,
            user,
            subject,
            decided,
            inputs: serde_json::to_string(&decided.decision.looked_at)
                .unwrap_or_else(|_| "{}".into()),
            effect: match decided.decision.effect {
                PolicyEffect::Approve => "approve",
                PolicyEffect::Require => "require",
                PolicyEffect::Deny => "deny",
            },
            methods: decided
                .decision
                .methods
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(","),
            now: ctx.now(),
        }
    }

    fn row(&self) -> policies::DecisionRecord<'_> {
        let decision = &self.decided.decision;
        policies::DecisionRecord {
            id: &self.id,
            application_id: self.app,
            user_id: self.user,
            request_kind: self.decided.kind.as_str(),
            subject_id: self.subject,
            policy_version: decision.version,
            rule: &decision.rule,
            action: decision.action,
            effect: self.effect,
            reason: &decision.reason,
            inputs: &self.inputs,
            methods: &self.methods,
            location: self.decided.location,
            created_at: self.now,
        }
    }

    fn audit(&self) -> crate::domain::audit::PolicyDecision {
        let decision = &self.decided.decision;
        crate::domain::audit::PolicyDecision {
            application_id: self.app.to_string(),
            user_id: self.user.to_string(),
            subject: self.subject.unwrap_or_default().to_string(),
            policy: format!("version {}, rule \"{}\"", decision.version, decision.rule),
            decision: self.effect.to_string(),
            reason: Some(decision.reason.clone()),
        }
    }
}

/// Decides and records at once, for paths whose subject exists already (or has none).
pub(crate) async fn decide_and_record(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    subject: Option<&str>,
    request: &Request<'_>,
) -> Result<Option<Decided>, DomainError> {
    let decided = decide(ctx, app, user, request).await?;
    if let Some(d) = &decided {
        record(ctx, app, user, subject, d).await?;
    }
    Ok(decided)
}

/// A dry run: what the policy (the current version, or the one asked) would decide for the
/// given facts, and the values it looked at. Nothing is sent and nothing is recorded. Facts not
/// given are gathered as a real request would gather them (the user's primary device, groups,
/// recent authentications, push counts).
pub(crate) async fn evaluate(
    ctx: &Ctx,
    app: &ApplicationId,
    body: &EvaluatePolicyRequest,
) -> Result<PolicyEvaluation, DomainError> {
    evaluate_in(&Env::of(ctx), app, body).await
}

/// [`evaluate`] with its facts from `env` (the admin command line has no running server).
pub(crate) async fn evaluate_in(
    env: &Env<'_>,
    app: &ApplicationId,
    body: &EvaluatePolicyRequest,
) -> Result<PolicyEvaluation, DomainError> {
    if crate::store::users::get(env.db, app, &body.user_id)
        .await?
        .is_none()
    {
        return Err(user_not_found());
    }
    let kind = body
        .request
        .ok_or_else(|| DomainError::invalid("request (the kind of request) is required"))?;
    if let Some(ip) = &body.accessing_ip {
        super::authentication::check_text(ip, 256, "accessing_ip")?;
    }
    super::authentication::check_fields(&body.fields)?;
    let device = match &body.device {
        Some(d) => Some(d.clone()),
        None => {
            let devices: Vec<Enrollment> =
                crate::store::enrollments::list_for_user(env.db, app, &body.user_id)
                    .await?
                    .into_iter()
                    .filter(|d| d.status == tessera_protocol::api::EnrollmentState::Active)
                    .collect();
            devices
                .iter()
                .find(|d| d.is_primary)
                .or(devices.first())
                .map(device_facts)
        }
    };
    let request = Request {
        kind,
        accessing_ip: body.accessing_ip.as_deref(),
        device,
        fields: &body.fields,
    };
    let under = body.version.map_or(Under::Current, Under::Version);
    let decided = decide_with(env, app, &body.user_id, &request, under, None)
        .await?
        .ok_or_else(|| DomainError::new(ErrorCode::NotFound, "the application has no policy"))?;
    Ok(PolicyEvaluation {
        policy: decided.decision.outcome(),
        inputs: decided.decision.looked_at,
    })
}

/// The user's recorded decisions, newest first (for administrators).
pub(crate) async fn decisions(
    db: &crate::store::Database,
    app: &ApplicationId,
    user: &UserId,
    limit: i64,
) -> Result<Vec<serde_json::Value>, DomainError> {
    Ok(policies::decisions(db, app, user, limit.clamp(1, 1000))
        .await?
        .into_iter()
        .map(|d| {
            serde_json::json!({
                "request": d.request_kind,
                "subject_id": d.subject_id,
                "version": d.policy_version,
                "rule": d.rule,
                "action": d.action,
                "effect": d.effect,
                "reason": d.reason,
                "methods": stored_methods(&d.methods),
                "inputs": serde_json::from_str::<serde_json::Value>(&d.inputs).unwrap_or_default(),
                "at": d.created_at,
            })
        })
        .collect())
}

/// Whether the decision recorded for `user` on `subject` (a QR session: one is recorded per
/// user offered at the scan) asks answers for an App Attest assertion: its effect was `require`
/// by a rule whose action, in the policy version decided under, says
/// `"app_attest_assertion": true`. Recorded decisions do not keep the flag itself; the rule and
/// the version do, and versions are never changed once saved.
pub(crate) async fn recorded_asks_app_attest_assertion(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    subject: &str,
) -> Result<bool, DomainError> {
    match policies::latest_for_subject_and_user(&ctx.db, subject, user).await? {
        Some(d) => asks_app_attest_assertion(ctx, app, &d).await,
        None => Ok(false),
    }
}

/// Whether the decision recorded under `id` asks answers for an App Attest assertion (as
/// [`recorded_asks_app_attest_assertion`] judges one), or `None` when no decision has that id.
pub(crate) async fn decision_asks_app_attest_assertion(
    ctx: &Ctx,
    app: &ApplicationId,
    id: &str,
) -> Result<Option<bool>, DomainError> {
    match policies::decision_by_id(&ctx.db, id).await? {
        Some(d) => Ok(Some(asks_app_attest_assertion(ctx, app, &d).await?)),
        None => Ok(None),
    }
}

/// Whether the recorded decision `d` asks for an App Attest assertion.
async fn asks_app_attest_assertion(
    ctx: &Ctx,
    app: &ApplicationId,
    d: &policies::StoredDecision,
) -> Result<bool, DomainError> {
    if d.effect != "require" {
        return Ok(false);
    }
    let stored = policies::version(&ctx.db, app, d.policy_version)
        .await?
        .ok_or(DomainError::Internal(
            "a decision's policy version is missing",
        ))?;
    let document = to_version(stored)?.policy;
    Ok(rule_asks_app_attest_assertion(&document, &d.rule))
}

/// Whether `rule` of `document` (or its default, named [`tessera_protocol::policy::DEFAULT_RULE`])
/// requires with `app_attest_assertion`.
fn rule_asks_app_attest_assertion(document: &PolicyDocument, rule: &str) -> bool {
    let action = if rule == tessera_protocol::policy::DEFAULT_RULE {
        Some(&document.default)
    } else {
        document
            .rules
            .iter()
            .find(|r| r.name == rule)
            .map(|r| &r.then)
    };
    matches!(
        action,
        Some(tessera_protocol::policy::PolicyAction::Require {
            app_attest_assertion: true,
            ..
        })
    )
}

/// The latest decision recorded for `subject`, as answered with it.
pub(crate) async fn outcome_for(
    ctx: &Ctx,
    subject: &str,
) -> Result<Option<tessera_protocol::policy::PolicyOutcome>, DomainError> {
    Ok(policies::latest_for_subject(&ctx.db, subject)
        .await?
        .map(outcome_of))
}

/// The decision recorded under `id`, if any, as answered with its subject.
pub(crate) async fn outcome_by_id(
    ctx: &Ctx,
    id: &str,
) -> Result<Option<tessera_protocol::policy::PolicyOutcome>, DomainError> {
    Ok(policies::decision_by_id(&ctx.db, id).await?.map(outcome_of))
}

/// A recorded decision as answered with its subject.
fn outcome_of(d: policies::StoredDecision) -> tessera_protocol::policy::PolicyOutcome {
    let effect = match d.effect.as_str() {
        "approve" => PolicyEffect::Approve,
        "require" => PolicyEffect::Require,
        _ => PolicyEffect::Deny,
    };
    tessera_protocol::policy::PolicyOutcome {
        version: d.policy_version,
        rule: d.rule,
        action: d.action,
        effect,
        reason: d.reason,
        methods: stored_methods(&d.methods),
        // Not kept with recorded decisions: it acts on the request's own copy of the outcome.
        app_attest_assertion: false,
    }
}

/// The methods of a recorded decision, as stored (comma-separated names; a name this build
/// does not know is skipped).
fn stored_methods(text: &str) -> Vec<PolicyMethod> {
    text.split(',')
        .filter(|name| !name.is_empty())
        .filter_map(|name| serde_json::from_value(serde_json::Value::from(name)).ok())
        .collect()
}

/// Refuses `user` on a path answered with the mobile app (QR, CIBA) when the decision denies,
/// or requires methods none of which is the app's.
pub(crate) fn check_mobile(decided: &Decided) -> Result<(), DomainError> {
    match decided.decision.effect {
        PolicyEffect::Deny => Err(decided.refusal()),
        PolicyEffect::Approve => Ok(()),
        PolicyEffect::Require => decided
            .check_method(PolicyMethod::MobilePush)
            .or_else(|_| decided.check_method(PolicyMethod::MobileBiometrics))
            .or_else(|_| decided.check_method(PolicyMethod::MobilePasscode)),
    }
}

/// Decides and records the policy for a passcode or backup-code path, and refuses the request
/// the decision does not let through with `method` (any method when `None`: only a denial
/// refuses; the caller checks the method once it knows it). The user's primary device, if any,
/// is the authenticating device. Returns the decision (`None` without a policy).
pub(crate) async fn check_path(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    kind: RequestKind,
    method: Option<PolicyMethod>,
    subject: Option<&str>,
) -> Result<Option<Decided>, DomainError> {
    if policies::current(&ctx.db, app).await?.is_none() {
        return Ok(None);
    }
    let device = super::authentication::pick_device(ctx, app, user, None)
        .await
        .ok()
        .map(|d| device_facts(&d));
    let request = Request {
        kind,
        accessing_ip: None,
        device,
        fields: &[],
    };
    let Some(decided) = decide_and_record(ctx, app, user, subject, &request).await? else {
        return Ok(None);
    };
    match method {
        Some(m) => decided.check_method(m)?,
        None if decided.decision.effect == PolicyEffect::Deny => return Err(decided.refusal()),
        None => {}
    }
    Ok(Some(decided))
}

#[cfg(test)]
mod ahead_tests;
#[cfg(test)]
mod facts_tests;
#[cfg(test)]
mod groups_tests;
#[cfg(test)]
mod recorded_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_ids_sort_by_their_millisecond_and_keep_80_random_bits() {
        let early = new_decision_id(1_764_000_000_000);
        let late = new_decision_id(1_764_000_000_001);
        let twin = new_decision_id(1_764_000_000_001);
        for id in [&early, &late, &twin] {
            let hex = id.strip_prefix("pd_").expect("prefix");
            assert_eq!(hex.len(), 32, "{id}");
            assert!(
                hex.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
        }
        assert!(early < late && early < twin, "{early} {late} {twin}");
        assert_eq!(late[..15], twin[..15], "one millisecond, one prefix");
        assert_ne!(late, twin, "the random part tells two apart");
        assert!(new_decision_id(-1).starts_with("pd_000000000000"));
    }

    #[test]
    fn a_recorded_rule_asks_for_assertions_only_when_its_require_says_so() {
        let document: PolicyDocument = serde_json::from_value(serde_json::json!({
            "rules": [
                {"name": "ios", "then": {"action": "require", "methods": ["mobile_push"], "app_attest_assertion": true}},
                {"name": "plain", "then": {"action": "require", "methods": ["mobile_push"]}},
                {"name": "open", "then": {"action": "approve"}}
            ],
            "default": {"action": "require", "methods": [], "app_attest_assertion": true}
        }))
        .expect("policy");
        assert!(rule_asks_app_attest_assertion(&document, "ios"));
        assert!(rule_asks_app_attest_assertion(
            &document,
            tessera_protocol::policy::DEFAULT_RULE
        ));
        assert!(!rule_asks_app_attest_assertion(&document, "plain"));
        assert!(!rule_asks_app_attest_assertion(&document, "open"));
        assert!(!rule_asks_app_attest_assertion(&document, "gone"));
    }
}
