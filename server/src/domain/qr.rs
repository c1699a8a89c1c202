//! QR login: the customer creates a session, a web page shows its code (renewed every minute
//! while nobody has scanned it), one trusted device claims it and one of that device's users
//! answers with a signed response bound to the session, its nonce and the context shown.
//! By application policy an approval is completed by a follow-up: a silent verification of the
//! device, or a push approval to the user; when the follow-up ends, [`follow_up`] completes the
//! session.
//!
//! Three kinds of caller: the customer (API key) creates sessions and reads results; the device
//! (its enrollment keys) claims and answers; the browser (the session's browser token) reads
//! progress and renews the code, nothing else.
//!
//! Every change of a session (scanned, answered, follow-up settled, code renewed) is announced
//! on [`Topic::QrSession`] once stored; long-polls wait for those announcements and read the
//! database only when woken (and once at their deadline). A follow-up that expires writes
//! nothing when it expires, so reading a session settles a follow-up that ended meanwhile, and
//! a wait on a session never outlasts the next change time alone makes (its expiry, or its
//! follow-up's).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use tessera_protocol::PROTOCOL_VERSION;
use tessera_protocol::api::{
    ClaimQrSession, CreateQrSession, EnrollmentState, QrAnswerRecorded, QrBrowserStatus,
    QrSessionClaimed, QrSessionCreated, QrSessionStatus,
};
use tessera_protocol::authentication::{
    AccessContext, AuthenticationKind, AuthenticationState, Decision, DisplayField,
    DynamicParameters, NumberMatching,
};
use tessera_protocol::canonical::Sha256Digest;
use tessera_protocol::envelope::{self, MessageType};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::ApplicationId;
use tessera_protocol::pairing::{ApplicationInfo, DeviceRegistration};
use tessera_protocol::qr::{
    QrCandidate, QrResponse, QrSessionContext, QrSessionId, QrSessionState, QrToken, QrUri,
};
use zeroize::Zeroizing;

use super::attestation::assertions::{self, AnswerAssertion, AssertionCheck};
use super::authentication::{
    AnswerFacts, Question, USER_VERIFICATION_AMR, as_answered, attributes_for, check_answer,
    check_text, invalid, mismatch, new_authentication, remember_answered_device, verify_answer,
};
use super::events::{Topic, wait_for};
use super::outcome::{self, DomainEvent, FollowUpFuture};
use super::{Ctx, DomainError};
use crate::store::applications::{self, Application, QrPolicy};
use crate::store::authentications::{self, Authentication};
use crate::store::enrollments::{self, Enrollment};
use crate::store::qr_sessions::{self, NewQrSession, NotedSession, QrAnswer, QrSession};
use crate::store::users;

const DEFAULT_SESSION_SECONDS: u32 = 300;
/// Most users a claim may list (a device with more enrollments on one server is unusual).
const MAX_CLAIMED_ENROLLMENTS: usize = 32;
/// The least time a follow-up is given: an approval with less of its session left is refused
/// as expired (the follow-up never outlives its session).
const MIN_FOLLOW_UP_SECONDS: i64 = 10;
/// Pixels of the rendered code (at least).
const QR_PIXELS: u32 = 320;
/// Characters of a browser token (32 random bytes, base64url without padding).
const BROWSER_TOKEN_LENGTH: usize = 43;

fn not_found() -> DomainError {
    DomainError::new(ErrorCode::QrSessionNotFound, "no such QR session")
}

fn expired() -> DomainError {
    DomainError::new(ErrorCode::QrSessionExpired, "the QR session has expired")
}

fn already_scanned() -> DomainError {
    DomainError::new(
        ErrorCode::QrAlreadyScanned,
        "this QR code was already scanned by another device",
    )
}

fn already_answered() -> DomainError {
    DomainError::new(
        ErrorCode::AlreadyAnswered,
        "the QR session was already answered",
    )
}

fn no_longer_paired() -> DomainError {
    DomainError::new(ErrorCode::Unauthorized, "the device is no longer paired")
}

fn internal() -> DomainError {
    DomainError::new(ErrorCode::InternalError, "internal error")
}

fn parse_id(raw: &str) -> Result<QrSessionId, DomainError> {
    raw.parse().map_err(|_| not_found())
}

fn new_browser_token() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    Zeroizing::new(URL_SAFE_NO_PAD.encode(bytes.as_ref()))
}

fn qr_uri(ctx: &Ctx, token: &str) -> Result<Zeroizing<String>, DomainError> {
    let token = QrToken::parse(token).map_err(|_| DomainError::Internal("stored QR token"))?;
    Ok(QrUri {
        server: ctx.public_url.clone(),
        token,
    }
    .to_uri_string())
}

/// Tells waiters (here and in other instances) that the session changed.
async fn announce(ctx: &Ctx, id: &QrSessionId) {
    ctx.events.announce(&[Topic::QrSession(id.to_string())]);
}

/// Checks a session request: its lifetime, its texts and its redirect URL.
fn check_create(body: &CreateQrSession) -> Result<u32, DomainError> {
    let expires_in = body.expires_in.unwrap_or(DEFAULT_SESSION_SECONDS);
    if !(30..=900).contains(&expires_in) {
        return Err(invalid("expires_in must be between 30 and 900 seconds"));
    }
    for (text, what) in [
        (&body.accessing_ip, "accessing_ip"),
        (&body.accessing_location, "accessing_location"),
        (&body.application_icon_url, "application_icon_url"),
    ] {
        if let Some(t) = text {
            check_text(t, 256, what)?;
        }
    }
    if let Some(url) = &body.redirect_url {
        check_text(url, 2048, "redirect_url")?;
        let parsed = url::Url::parse(url).map_err(|_| invalid("redirect_url is not a URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.fragment().is_some() {
            return Err(invalid(
                "redirect_url must be an http(s) URL without a fragment",
            ));
        }
    }
    Ok(expires_in)
}

/// Creates a QR login session for `app`.
pub(crate) async fn create_session(
    ctx: &Ctx,
    app: &Application,
    body: CreateQrSession,
) -> Result<QrSessionCreated, DomainError> {
    let expires_in = check_create(&body)?;
    if let Some(user) = &body.user_id {
        super::users::require_user(ctx, &app.id, user).await?;
    }
    match insert_session(ctx, app, &body, expires_in, None).await? {
        Some(created) => Ok(created),
        None => Err(refused_over_quota(ctx, &app.id).await),
    }
}

/// [`create_session`] for the application the API key `presented` authenticates. While the
/// key's application is remembered (`super::api_keys`), a request that checks out is stored
/// with the key, the application's name its context shows, and the user it names (if any)
/// checked in the insert's own statement (on PostgreSQL one round trip instead of two, or
/// three with a user). An insert that stores nothing (the key rotated, the application
/// renamed, the user unknown, or the quota reached) is made again the long way, so its answer
/// is the one it would have been; so is a request that does not check out (401 comes before
/// 400).
pub(crate) async fn create_session_by_key(
    ctx: &Ctx,
    presented: &super::api_keys::PresentedKey,
    body: CreateQrSession,
) -> Result<QrSessionCreated, DomainError> {
    if let Ok(expires_in) = check_create(&body) {
        let created = super::api_keys::act_under_hint(ctx, presented, |app, digest| {
            let body = &body;
            async move {
                let key = qr_sessions::KeyCheck {
                    digest: &digest,
                    name: &app.name,
                };
                insert_session(ctx, &app, body, expires_in, Some(key)).await
            }
        })
        .await?;
        if let Some(created) = created {
            return Ok(created);
        }
    }
    let app = super::api_keys::authenticate(ctx, presented).await?;
    create_session(ctx, &app, body).await
}

/// Stores a new session for `app` as `body` asks (checked by [`check_create`], which gave
/// `expires_in`), within the application's quota (and with `key`, only while the application
/// still has that key and name): `None` when nothing was stored.
async fn insert_session(
    ctx: &Ctx,
    app: &Application,
    body: &CreateQrSession,
    expires_in: u32,
    key: Option<qr_sessions::KeyCheck<'_>>,
) -> Result<Option<QrSessionCreated>, DomainError> {
    let now = ctx.now();
    let id = QrSessionId::generate();
    let token = QrToken::generate();
    let browser_token = new_browser_token();
    let context = AccessContext {
        application_name: app.name.clone(),
        application_icon_url: body.application_icon_url.clone(),
        ip: body.accessing_ip.clone(),
        location: body.accessing_location.clone(),
    };
    let expires_at = now + i64::from(expires_in);
    // The application's own quota is read where the insert takes its lock; the server's
    // default stands when it sets none.
    let default_quota = ctx.config.max_open_qr_sessions_per_application;
    let inserted = qr_sessions::insert_within_quota(
        &ctx.db,
        &NewQrSession {
            id: &id,
            application_id: &app.id,
            restricted_user_id: body.user_id.as_ref(),
            token: token.expose(),
            token_digest: &token.digest().to_string(),
            code_expires_at: (now + i64::from(ctx.config.qr_code_ttl)).min(expires_at),
            browser_token_digest: &Sha256Digest::of_bytes(browser_token.as_bytes()).to_string(),
            context: &context,
            redirect_url: body.redirect_url.as_deref(),
            created_at: now,
            expires_at,
            flow_id: None,
        },
        default_quota,
        key,
    )
    .await?;
    if !inserted {
        return Ok(None);
    }
    tracing::info!(qr_session_id = %id, "QR session created");
    let uri = QrUri {
        server: ctx.public_url.clone(),
        token,
    };
    Ok(Some(QrSessionCreated {
        session_id: id,
        qr_uri: uri.to_uri_string().to_string(),
        login_page_url: format!(
            "{}#{}",
            ctx.public_url.endpoint("/qr-login"),
            browser_token.as_str()
        ),
        browser_token: browser_token.to_string(),
        expires_at,
    }))
}

/// The refusal of a new session over its application's quota, naming the quota in force (read
/// again: only a refused session pays for it).
async fn refused_over_quota(ctx: &Ctx, app: &ApplicationId) -> DomainError {
    match super::applications::quotas(ctx, app).await {
        Ok(quotas) => super::applications::over_quota("open QR sessions", quotas.open_qr_sessions),
        Err(e) => e,
    }
}

/// A session, with a pending follow-up settled if it has ended meanwhile.
async fn load(ctx: &Ctx, id: &QrSessionId) -> Result<Option<QrSession>, DomainError> {
    match qr_sessions::get(&ctx.db, id, ctx.now()).await? {
        Some(session) => Ok(Some(settled(ctx, session).await?)),
        None => Ok(None),
    }
}

/// A session that must exist.
async fn load_existing(ctx: &Ctx, id: &QrSessionId) -> Result<QrSession, DomainError> {
    load(ctx, id).await?.ok_or_else(not_found)
}

/// The session as it stands once a follow-up answered (or expired) meanwhile is applied.
async fn settled(ctx: &Ctx, session: QrSession) -> Result<QrSession, DomainError> {
    if session.state == QrSessionState::Verifying
        && let Some(follow_up) = &session.follow_up_id
        && let Some(a) = authentications::get(&ctx.db, follow_up, ctx.now()).await?
        && a.state != AuthenticationState::Pending
    {
        settle_follow_up(ctx, &a).await?;
        return qr_sessions::get(&ctx.db, &session.id, ctx.now())
            .await?
            .ok_or_else(not_found);
    }
    Ok(session)
}

/// When the session next changes by time alone: it expires, or its pending follow-up does.
async fn next_timed_change(ctx: &Ctx, session: &QrSession) -> Result<i64, DomainError> {
    let mut at = session.expires_at;
    if session.state == QrSessionState::Verifying
        && let Some(follow_up) = &session.follow_up_id
        && let Some(a) = authentications::get(&ctx.db, follow_up, ctx.now()).await?
    {
        at = at.min(a.expires_at);
    }
    Ok(at)
}

/// Whether a long-poll started at `start` (version and state) may answer with `session`.
fn moved_on(start: (i64, QrSessionState), version: i64, state: QrSessionState) -> bool {
    (version, state) != start || state.is_final()
}

/// Waits (up to `wait`) until the session differs from `first` (or, given `seen`, from that
/// version), reading it again only when it is announced as changed, when time alone changes
/// it, and at the deadline.
async fn wait_for_change(
    ctx: &Ctx,
    first: QrSession,
    wait: Duration,
    seen: Option<i64>,
) -> Result<QrSession, DomainError> {
    let start = (seen.unwrap_or(first.version), first.state);
    if wait.is_zero() || moved_on(start, first.version, first.state) {
        return Ok(first);
    }
    let wait = wait.min(ctx.until(next_timed_change(ctx, &first).await?));
    let id = first.id;
    wait_for(
        &ctx.events,
        Topic::QrSession(id.to_string()),
        wait,
        || load_existing(ctx, &id),
        |s| moved_on(start, s.version, s.state),
    )
    .await
}

/// A session's state and, once approved, the user, the attributes and the signed answer; with
/// `wait`, answers once the state changes (or `wait` has passed). The customer API's read is
/// [`status_by_key`]; tests whose application is already authenticated start here.
#[cfg(test)]
pub(crate) async fn status(
    ctx: &Ctx,
    app: &ApplicationId,
    id: &str,
    wait: Duration,
) -> Result<QrSessionStatus, DomainError> {
    status_of(ctx, load_noted_for(ctx, app, id).await?, wait).await
}

/// [`status`] for the application the API key `presented` authenticates ([`load_by_key`]).
pub(crate) async fn status_by_key(
    ctx: &Ctx,
    presented: &super::api_keys::PresentedKey,
    id: &str,
    wait: Duration,
) -> Result<QrSessionStatus, DomainError> {
    status_of(ctx, load_by_key(ctx, presented, id).await?, wait).await
}

/// The application's session `raw`, for the application the API key `presented`
/// authenticates. While the key's last application is remembered (`super::api_keys`), the key
/// is checked by the session's read: on PostgreSQL one round trip fewer. A read that finds
/// nothing (the key rotated, or no such session of that application) is answered the long way,
/// so the answer (401, or 404) is the one it would have been.
async fn load_by_key(
    ctx: &Ctx,
    presented: &super::api_keys::PresentedKey,
    id: &str,
) -> Result<NotedSession, DomainError> {
    if let Ok(parsed) = parse_id(id) {
        let hinted = super::api_keys::read_under_hint(ctx, presented, |app, digest| async move {
            Ok(qr_sessions::get_with_key(&ctx.db, &parsed, &app, &digest, ctx.now()).await?)
        })
        .await?;
        if let Some(noted) = hinted {
            return settled_noted(ctx, noted).await;
        }
    }
    let app = super::api_keys::authenticate(ctx, presented).await?;
    load_noted_for(ctx, &app.id, id).await
}

/// The application's session `raw` (another application's reads as not found), noting whether
/// decisions are recorded for it.
async fn load_noted_for(
    ctx: &Ctx,
    app: &ApplicationId,
    raw: &str,
) -> Result<NotedSession, DomainError> {
    let noted = load_noted_existing(ctx, &parse_id(raw)?).await?;
    if &noted.session.application_id != app {
        return Err(not_found());
    }
    Ok(noted)
}

/// [`load_existing`], noting whether decisions are recorded for the session.
async fn load_noted_existing(ctx: &Ctx, id: &QrSessionId) -> Result<NotedSession, DomainError> {
    match qr_sessions::get_noted(&ctx.db, id, ctx.now()).await? {
        Some(noted) => settled_noted(ctx, noted).await,
        None => Err(not_found()),
    }
}

/// [`settled`] for a noted session. Settling a follow-up records no decision about the session
/// (only its scans do), so the note still holds.
async fn settled_noted(ctx: &Ctx, noted: NotedSession) -> Result<NotedSession, DomainError> {
    Ok(NotedSession {
        session: settled(ctx, noted.session).await?,
        decisions_recorded: noted.decisions_recorded,
    })
}

/// [`status`] of the session as read; with `wait`, once it changes.
async fn status_of(
    ctx: &Ctx,
    first: NotedSession,
    wait: Duration,
) -> Result<QrSessionStatus, DomainError> {
    let start = (first.session.version, first.session.state);
    // Answered at once, the session is the one read, and so is its note. After a wait it is
    // read again, without one.
    let (session, decisions_recorded) =
        if wait.is_zero() || moved_on(start, first.session.version, first.session.state) {
            (first.session, first.decisions_recorded)
        } else {
            (wait_for_change(ctx, first.session, wait, None).await?, true)
        };
    let mut status = session.status();
    if decisions_recorded {
        status.policy = session_policy(ctx, &session).await?;
    }
    let facts = follow_up_facts(ctx, &session).await?;
    status.number_to_show = facts.number_to_show;
    status.denial_reason = facts.denial_reason.or(status.denial_reason);
    Ok(status)
}

/// What the follow-up approval adds to a session's view: the number the page shows while it
/// waits (number matching), and why it was denied.
#[derive(Debug, Default)]
struct FollowUpFacts {
    number_to_show: Option<u32>,
    denial_reason: Option<tessera_protocol::authentication::DenialReason>,
}

async fn follow_up_facts(ctx: &Ctx, session: &QrSession) -> Result<FollowUpFacts, DomainError> {
    let Some(id) = &session.follow_up_id else {
        return Ok(FollowUpFacts::default());
    };
    if !matches!(
        session.state,
        QrSessionState::Verifying | QrSessionState::Denied
    ) {
        return Ok(FollowUpFacts::default());
    }
    let Some(follow_up) = authentications::get(&ctx.db, id, ctx.now()).await? else {
        return Ok(FollowUpFacts::default());
    };
    Ok(FollowUpFacts {
        number_to_show: (session.state == QrSessionState::Verifying
            && follow_up.state == AuthenticationState::Pending)
            .then_some(follow_up.number_to_show)
            .flatten(),
        denial_reason: (session.state == QrSessionState::Denied)
            .then_some(follow_up.denial_reason)
            .flatten(),
    })
}

/// How a code is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeImage {
    /// A PNG image.
    Png,
    /// An SVG image.
    Svg,
}

/// The session's current code as an image, while it can be scanned, for the application the
/// API key `presented` authenticates ([`load_by_key`]).
pub(crate) async fn code_image_by_key(
    ctx: &Ctx,
    presented: &super::api_keys::PresentedKey,
    id: &str,
    format: CodeImage,
) -> Result<Vec<u8>, DomainError> {
    let session = load_by_key(ctx, presented, id).await?.session;
    let uri = match (&session.token, session.scannable(ctx.now())) {
        (Some(token), true) => qr_uri(ctx, token)?,
        _ if session.state == QrSessionState::Expired => return Err(expired()),
        _ => {
            return Err(DomainError::new(
                ErrorCode::Conflict,
                "the code can no longer be scanned (scanned, answered or due for renewal)",
            ));
        }
    };
    let image = match format {
        CodeImage::Png => crate::qr_render::png(&uri, QR_PIXELS),
        CodeImage::Svg => crate::qr_render::svg(&uri, QR_PIXELS).map(String::into_bytes),
    };
    image.map_err(|_| DomainError::Internal("QR code rendering"))
}

/// The caller's users for `session`: active enrollments of the session's application on the
/// caller's device (and of the session's user, if it names one), each once. "The caller's
/// device" is its proven identity: the same device id and the same device key (the id is
/// derived from the key, which every registration proves; enrollments paired before device
/// keys existed match only each other).
async fn candidates(
    ctx: &Ctx,
    session: &QrSession,
    caller: &Enrollment,
    listed: &[tessera_protocol::ids::EnrollmentId],
) -> Result<Vec<Enrollment>, DomainError> {
    // The calling enrollment was read (and its signature checked) for this very request: it
    // is not read again. The others are read side by side.
    let read = futures_util::future::try_join_all(listed.iter().map(|id| async move {
        if id == &caller.enrollment_id {
            Ok(Some(caller.clone()))
        } else {
            enrollments::by_id(&ctx.db, id).await
        }
    }))
    .await?;
    let mut candidates: Vec<Enrollment> = Vec::new();
    for e in read.into_iter().flatten() {
        let eligible = e.status == EnrollmentState::Active
            && e.device_id == caller.device_id
            && e.device_key_thumbprint == caller.device_key_thumbprint
            && e.application_id == session.application_id
            && session
                .restricted_user_id
                .as_ref()
                .is_none_or(|u| u == &e.user_id);
        if eligible
            && !candidates
                .iter()
                .any(|c| c.enrollment_id == e.enrollment_id)
        {
            candidates.push(e);
        }
    }
    Ok(candidates)
}

/// What the scan made of one of the device's users: the policy's decision for them (`None`
/// without a policy, or when a mandatory method refused them first) and, if they may not be
/// asked, why.
struct Judged {
    enrollment: Enrollment,
    decided: Option<super::policy::Decided>,
    refusal: Option<DomainError>,
}

/// Whether the user of enrollment `e` may be asked to approve `session`: their mandatory
/// methods, then the application's policy (kind `qr`). A QR login is always confirmed on the
/// device: `approve` lets the user confirm like `require`. The decision is not recorded here:
/// the claim records it with the claim itself ([`claim`]), so that a scan that loses the race
/// leaves no decision that could be read as the session's.
async fn judge_candidate(
    ctx: &Ctx,
    session: &QrSession,
    e: Enrollment,
) -> Result<Judged, DomainError> {
    // The two read side by side (the policy's decision records nothing here); a user the
    // mandatory methods refuse gets no decision, as if the policy had not been asked.
    let request = super::policy::Request {
        kind: tessera_protocol::policy::RequestKind::Qr,
        accessing_ip: session.context.ip.as_deref(),
        device: Some(super::policy::device_facts(&e)),
        fields: &[],
    };
    let (mandatory, decided) = tokio::join!(
        super::methods::require_mandatory(ctx, &session.application_id, &e.user_id),
        super::policy::decide(ctx, &session.application_id, &e.user_id, &request),
    );
    if let Err(refused) = mandatory {
        return match refused {
            DomainError::Refused { .. } => Ok(Judged {
                enrollment: e,
                decided: None,
                refusal: Some(refused),
            }),
            other => Err(other),
        };
    }
    let decided = decided?;
    let refusal = match &decided {
        Some(d) => super::policy::check_mobile(d).err(),
        None => None,
    };
    Ok(Judged {
        enrollment: e,
        decided,
        refusal,
    })
}

/// The id of the policy decision that admitted `enrollment` to the claim of `session` made
/// with `nonce`: derived from the three, so that the answer and the status find the decision
/// of the claim that won, never one of a scan that lost (whose nonce differs) or that was
/// refused (recorded under a random id).
fn claim_decision_id(
    session: &QrSessionId,
    nonce: &str,
    enrollment: &tessera_protocol::ids::EnrollmentId,
) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for part in [
        "tessera qr claim decision",
        session.as_str(),
        nonce,
        enrollment.as_str(),
    ] {
        hash.update(part.as_bytes());
        hash.update([0u8]);
    }
    format!("pd_{}", hex::encode(&hash.finalize()[..16]))
}

/// The decision id of the claim of `session` for `enrollment`, once claimed.
fn claimed_decision_id(
    session: &QrSession,
    enrollment: &tessera_protocol::ids::EnrollmentId,
) -> Option<String> {
    session
        .nonce
        .as_deref()
        .map(|nonce| claim_decision_id(&session.id, nonce, enrollment))
}

/// The policy decision `status` reports: once claimed, the one the claim recorded for the user
/// who answered (before an answer, for the first user offered); before any claim, the latest
/// recorded for the session (a scan the policy refused).
async fn session_policy(
    ctx: &Ctx,
    session: &QrSession,
) -> Result<Option<tessera_protocol::policy::PolicyOutcome>, DomainError> {
    let Some(nonce) = session.nonce.as_deref() else {
        return super::policy::outcome_for(ctx, session.id.as_str()).await;
    };
    match session
        .enrollment_id
        .as_ref()
        .or(session.candidates.first())
    {
        Some(enrollment) => {
            super::policy::outcome_by_id(ctx, &claim_decision_id(&session.id, nonce, enrollment))
                .await
        }
        None => Ok(None),
    }
}

/// Records the decisions of a scan the policy refused outright (no user of the device may be
/// asked): nothing is claimed, the refusal is on record.
async fn record_refused_scan(
    ctx: &Ctx,
    session: &QrSession,
    judged: &[Judged],
) -> Result<(), DomainError> {
    for j in judged {
        if let Some(decided) = &j.decided {
            super::policy::record(
                ctx,
                &session.application_id,
                &j.enrollment.user_id,
                Some(session.id.as_str()),
                decided,
            )
            .await?;
        }
    }
    Ok(())
}

/// The device `caller` claims the session its scanned code names, listing its enrollments; it
/// gets the signed context to show. Of racing devices one wins; the same device scanning again
/// gets the same context. The device API's scan is [`claim_signed`], which authenticates the
/// call first; tests whose device is already authenticated start here.
#[cfg(test)]
pub(crate) async fn claim(
    ctx: &Ctx,
    caller: &Enrollment,
    request: ClaimQrSession,
) -> Result<QrSessionClaimed, DomainError> {
    let now = ctx.now();
    let session = match scanned_digest(&request) {
        Some(digest) => qr_sessions::by_token_digest(&ctx.db, &digest, now).await?,
        None => None,
    };
    claim_found(ctx, caller, request, now, session).await
}

/// The scan as a device sends it: authenticates the device-signed `call`, then claims the
/// session its code names for the calling device, listing its enrollments, and answers the
/// signed context to show (`request` is refused after the call is authenticated when its body
/// did not parse). Of racing devices one wins; the same device scanning again gets the same
/// context. The session the scanned code names is read beside the calling enrollment, and what
/// the claim reads of it (the candidates' mandatory methods and policy, the application's name,
/// the users' display names) beside the call's nonce
/// ([`super::device_auth::authenticate_reading_twice`]): on PostgreSQL the scan waits for two
/// round trips before its write where it waited for three, and only a call whose signature
/// verified and whose nonce was new sees what was read.
pub(crate) async fn claim_signed(
    ctx: &Ctx,
    call: super::device_auth::DeviceCall<'_>,
    request: Result<ClaimQrSession, DomainError>,
) -> Result<QrSessionClaimed, DomainError> {
    let now = ctx.now();
    let digest = request.as_ref().ok().and_then(scanned_digest);
    let session = async move {
        match digest {
            Some(digest) => qr_sessions::by_token_digest(&ctx.db, &digest, now).await,
            None => Ok(None),
        }
    };
    let (caller, prepared) = super::device_auth::authenticate_reading_twice(
        ctx,
        call,
        session,
        |caller, session| async move { prepare_claim(ctx, &caller, request?, now, session).await },
    )
    .await?;
    finish_claim(ctx, &caller, now, prepared).await
}

/// The digest a scanned code's token is looked up by, if it is one.
fn scanned_digest(request: &ClaimQrSession) -> Option<String> {
    QrToken::parse(&request.token)
        .ok()
        .map(|token| token.digest().to_string())
}

/// The claim once the session the code names was read (`session`, read at `now`).
#[cfg(test)]
async fn claim_found(
    ctx: &Ctx,
    caller: &Enrollment,
    request: ClaimQrSession,
    now: i64,
    session: Option<QrSession>,
) -> Result<QrSessionClaimed, DomainError> {
    let prepared = prepare_claim(ctx, caller, request, now, session).await?;
    finish_claim(ctx, caller, now, prepared).await
}

/// What a claim read before it decides ([`prepare_claim`]).
enum PreparedClaim {
    /// The same device scanned this session before: its context again.
    Again(QrSessionClaimed),
    /// A session open for a claim, with what was read of it.
    Judged(Box<JudgedClaim>),
}

/// A claim's reads: the session (and the digest its code was looked up by), each candidate
/// judged, the application and the candidates' display names.
struct JudgedClaim {
    digest: String,
    session: QrSession,
    judged: Vec<Judged>,
    app: Application,
    display_names: Vec<(tessera_protocol::ids::EnrollmentId, Option<String>)>,
}

/// The claim's checks of the request and the session (read at `now`), then its reads, which
/// write nothing.
async fn prepare_claim(
    ctx: &Ctx,
    caller: &Enrollment,
    request: ClaimQrSession,
    now: i64,
    session: Option<QrSession>,
) -> Result<PreparedClaim, DomainError> {
    if request.enrollment_ids.is_empty() || request.enrollment_ids.len() > MAX_CLAIMED_ENROLLMENTS {
        return Err(invalid("list between 1 and 32 enrollments"));
    }
    let Some(digest) = scanned_digest(&request) else {
        return Err(not_found());
    };
    let session = session.ok_or_else(not_found)?;
    if let Some(again) = claimed_before(&session, caller) {
        return Ok(PreparedClaim::Again(again));
    }
    match session.state {
        QrSessionState::Created if now < session.code_expires_at => {}
        QrSessionState::Created | QrSessionState::Expired => return Err(expired()),
        _ => return Err(already_scanned()),
    }
    let listed_candidates = candidates(ctx, &session, caller, &request.enrollment_ids).await?;
    if listed_candidates.is_empty() {
        return Err(DomainError::new(
            ErrorCode::NoEligibleUser,
            "none of this device's users may answer this QR code",
        ));
    }
    // After the scan, before the user is asked: each candidate must have the application's
    // mandatory methods and be let through by its policy; the others are not offered. These
    // reads, the application's name and the candidates' display names need nothing but the
    // session and the candidates, so they go out side by side, each on a pooled connection of
    // its own (the request holds none): on PostgreSQL the scan waits for one round trip where
    // it waited for one per read. They never shared a snapshot, so reading them apart changes
    // nothing they can see.
    let names = listed_candidates
        .iter()
        .map(|e| (e.enrollment_id.clone(), e.user_id.clone()))
        .collect::<Vec<_>>();
    let (judged, app, display_names) = tokio::try_join!(
        futures_util::future::try_join_all(
            listed_candidates
                .into_iter()
                .map(|e| judge_candidate(ctx, &session, e)),
        ),
        async {
            applications::get(&ctx.db, &session.application_id)
                .await?
                .ok_or_else(not_found)
        },
        futures_util::future::try_join_all(names.into_iter().map(|(enrollment, user)| {
            let app = &session.application_id;
            async move {
                let name = users::get(&ctx.db, app, &user)
                    .await?
                    .and_then(|u| u.display_name);
                Ok::<_, DomainError>((enrollment, name))
            }
        })),
    )?;
    Ok(PreparedClaim::Judged(Box::new(JudgedClaim {
        digest,
        session,
        judged,
        app,
        display_names,
    })))
}

/// The claim once [`prepare_claim`] read what it decides from: a refused scan is recorded, or
/// the context is signed and the session claimed.
async fn finish_claim(
    ctx: &Ctx,
    caller: &Enrollment,
    now: i64,
    prepared: PreparedClaim,
) -> Result<QrSessionClaimed, DomainError> {
    let JudgedClaim {
        digest,
        session,
        mut judged,
        app,
        display_names,
    } = match prepared {
        PreparedClaim::Again(again) => return Ok(again),
        PreparedClaim::Judged(judged) => *judged,
    };
    let candidates: Vec<&Enrollment> = judged
        .iter()
        .filter(|j| j.refusal.is_none())
        .map(|j| &j.enrollment)
        .collect();
    if candidates.is_empty() {
        record_refused_scan(ctx, &session, &judged).await?;
        let refusal = judged.iter_mut().rev().find_map(|j| j.refusal.take());
        return Err(refusal.unwrap_or_else(|| {
            DomainError::new(
                ErrorCode::NoEligibleUser,
                "none of this device's users may answer this QR code",
            )
        }));
    }
    let mut listed = Vec::with_capacity(candidates.len());
    for e in candidates.iter().copied() {
        let display_name = display_names
            .iter()
            .find(|(enrollment, _)| enrollment == &e.enrollment_id)
            .and_then(|(_, name)| name.clone());
        listed.push(QrCandidate {
            user_id: e.user_id.clone(),
            enrollment_id: e.enrollment_id.clone(),
            display_name,
        });
    }
    let context = QrSessionContext {
        v: PROTOCOL_VERSION,
        session_id: session.id.clone(),
        issuer: ctx.public_url.clone(),
        application: ApplicationInfo {
            id: app.id.clone(),
            name: app.name.clone(),
        },
        context: session.context.clone(),
        device_id: caller.device_id.clone(),
        candidates: listed,
        nonce: DeviceRegistration::new_nonce(),
        issued_at: now,
        expires_at: session.expires_at,
    };
    let signed = ctx
        .keys
        .sign(MessageType::QrSessionContext, &context)
        .map_err(|_| internal())?;
    let ids: Vec<_> = candidates.iter().map(|c| c.enrollment_id.clone()).collect();
    // The scan's decisions are recorded in the claim's own write, exactly when it wins: a scan
    // that loses leaves none. Those that admitted a user are recorded under an id derived from
    // the claim (its nonce) and the user's enrollment: the answer reads its user's by that id
    // (whether it needs an App Attest assertion), the status the answering user's.
    let mut decisions = Vec::new();
    for j in &judged {
        let Some(decided) = &j.decided else {
            continue;
        };
        let (app, user, subject) = (
            &session.application_id,
            &j.enrollment.user_id,
            Some(session.id.as_str()),
        );
        decisions.push(match j.refusal {
            None => super::policy::recorded_with_id(
                ctx,
                app,
                user,
                subject,
                decided,
                claim_decision_id(&session.id, &context.nonce, &j.enrollment.enrollment_id),
            )?,
            Some(_) => super::policy::recorded_with(ctx, app, user, subject, decided)?,
        });
    }
    let recorded_claim = qr_sessions::QrClaim {
        device: &caller.device_id,
        candidates: &ids,
        nonce: &context.nonce,
        signed_context: &signed,
    };
    let claimed = if decisions.is_empty() {
        // One statement, committed when it returns.
        qr_sessions::claim(ctx.db.writer(), &session.id, &digest, &recorded_claim, now).await?
    } else {
        let mut w = ctx.db.write().await?;
        if qr_sessions::claim(&mut *w, &session.id, &digest, &recorded_claim, now).await? {
            let queued = super::policy::record_in(&mut w, &decisions).await?;
            let committed = w.commit().await?;
            if queued.any(&committed) {
                ctx.events.announce(&[Topic::WebhookOutbox]);
            }
            true
        } else {
            // On SQLite the claim that came first may be an earlier member of this write's
            // group, not committed yet (`store/writer.rs`): the read below would not see it.
            w.rollback_after_others().await?;
            false
        }
    };
    if !claimed {
        // Another claim came first: the same device's copy of this one (a retry sent while the
        // first was under way) gets its context; another device, or a code renewed or expired
        // meanwhile, `already_scanned`.
        let now_claimed = qr_sessions::by_token_digest(&ctx.db, &digest, now).await?;
        return now_claimed
            .and_then(|current| claimed_before(&current, caller))
            .ok_or_else(already_scanned);
    }
    tracing::info!(qr_session_id = %session.id, candidates = ids.len(), "QR session scanned");
    announce(ctx, &session.id).await;
    Ok(QrSessionClaimed { context: signed })
}

/// What an answer that was not recorded (the session had moved on) gets: the same answer again
/// is idempotent, anything else is refused.
fn not_recorded(
    session: &QrSession,
    response: &QrResponse,
) -> Result<QrAnswerRecorded, DomainError> {
    match session.state {
        QrSessionState::Expired => Err(expired()),
        QrSessionState::Created => Err(mismatch("the session was not scanned")),
        _ if session.decision == Some(response.decision)
            && session.enrollment_id.as_ref() == Some(&response.enrollment_id) =>
        {
            Ok(QrAnswerRecorded {
                session_id: session.id.clone(),
                state: session.state,
                follow_up: session.follow_up_id.clone(),
            })
        }
        _ => Err(already_answered()),
    }
}

/// The device answers a session with a response signed by the chosen user's enrollment
/// (`client`: the device's address, reported in the attributes). An approval may start the
/// follow-up the application's QR policy asks for, pushed to the same device.
pub(crate) async fn answer(
    ctx: &Ctx,
    id: &str,
    signed_response: &str,
    client: &str,
) -> Result<QrAnswerRecorded, DomainError> {
    let id = parse_id(id)?;
    let claimed: Result<QrResponse, _> = envelope::unverified_payload(signed_response);
    // What the answer needs is read side by side (on PostgreSQL one round trip): the session
    // (noting whether the policy decided anything about it), the enrollment the response
    // names, the settings of the session's application, and for an approval the language of
    // the enrollment's user (for a follow-up's texts). Nothing read counts before the session
    // lists the enrollment and the response's signature is verified, and the checks answer in
    // the order they always did: the session first.
    let named_enrollment = claimed.as_ref().ok().map(|c| &c.enrollment_id);
    let approves = claimed
        .as_ref()
        .is_ok_and(|c| c.decision == Decision::Approve);
    let (noted, named, settings, language) = tokio::join!(
        load_noted_existing(ctx, &id),
        async {
            match named_enrollment {
                Some(enrollment) => enrollments::by_id(&ctx.db, enrollment).await.map(Some),
                None => Ok(None),
            }
        },
        applications::request_settings_of_qr_session(&ctx.db, id.as_str()),
        async {
            match named_enrollment {
                Some(enrollment) if approves => {
                    users::locale_of_enrollment(&ctx.db, enrollment.as_str()).await
                }
                _ => Ok(None),
            }
        },
    );
    let NotedSession {
        session,
        decisions_recorded,
    } = noted?;
    let claimed = claimed.map_err(|_| {
        DomainError::new(
            ErrorCode::InvalidSignature,
            "the response is not a valid signed message",
        )
    })?;
    if !session.candidates.contains(&claimed.enrollment_id) {
        return Err(DomainError::new(
            ErrorCode::InvalidSignature,
            "the response is not signed by a user of the device that scanned",
        ));
    }
    let device = named?
        .flatten()
        .filter(|d| d.status == EnrollmentState::Active)
        .ok_or_else(no_longer_paired)?;
    let (response, with_uv) = verify_answer::<QrResponse>(
        signed_response,
        MessageType::QrResponse,
        &device,
        "the response is not signed by the chosen user's device keys",
    )?;
    let context_digest = Sha256Digest::of_canonical(&session.context).map_err(|_| internal())?;
    if response.v != PROTOCOL_VERSION
        || response.session_id != session.id
        || session.nonce.as_deref() != Some(response.session_nonce.as_str())
    {
        return Err(mismatch("the response answers another session"));
    }
    if response.context_digest != context_digest {
        return Err(mismatch(
            "the response approves another context than the one sent",
        ));
    }
    let now = ctx.now();
    check_answer(
        response.issued_at,
        &response.amr,
        response.location,
        response.device.as_ref(),
        now,
    )?;
    let answered_device = as_answered(&device, response.device.as_ref(), response.signals);
    if with_uv
        && response.decision == Decision::Approve
        && !response
            .amr
            .iter()
            .any(|m| USER_VERIFICATION_AMR.contains(&m.as_str()))
    {
        return Err(mismatch(
            "a user-verification signature needs a user-verification amr",
        ));
    }
    // Already answered, or expired: the same answer again is idempotent.
    if session.state != QrSessionState::Scanned {
        return not_recorded(&session, &response);
    }
    // App Attest, as on the push answer path: an App Attested iOS enrollment proves its answer
    // with an assertion (when it sends one, or the application or the policy decision the
    // claim recorded for this user asks for one). Its counter is taken in the answer's own
    // write below.
    //
    // The decision's two reads (the second speaks only when the first finds none) go out side
    // by side, and only when the session's read noted a decision recorded for it: without, both
    // would find nothing.
    let settings = match settings? {
        Some((app, settings)) if app == session.application_id => settings,
        _ => {
            return Err(DomainError::Internal(
                "a QR session's application is missing",
            ));
        }
    };
    let wanted: Vec<String> = language?.into_iter().collect();
    let decision_id = claimed_decision_id(&session, &device.enrollment_id);
    let (recorded_decision, latest_decision) = if decisions_recorded {
        tokio::try_join!(
            async {
                match &decision_id {
                    Some(id) => {
                        super::policy::decision_asks_app_attest_assertion(
                            ctx,
                            &session.application_id,
                            id,
                        )
                        .await
                    }
                    None => Ok(None),
                }
            },
            // No decision under the claim's id: none was made (no policy at the scan), or the
            // session was claimed by an instance of an earlier build, which recorded the scan's
            // decisions under random ids; the user's latest on the session then speaks for it.
            super::policy::recorded_asks_app_attest_assertion(
                ctx,
                &session.application_id,
                &device.user_id,
                session.id.as_str(),
            ),
        )?
    } else {
        (None, false)
    };
    let required_by_policy = recorded_decision.unwrap_or(latest_decision);
    let assertion = AnswerAssertion {
        device: &device,
        assertion: response.app_attest_assertion.as_deref(),
        client_data_hash: response.app_attest_client_data_hash().ok(),
        required_by_policy,
        answered_id: session.id.as_str(),
        client_ip: client,
    };
    let checked = {
        let mut conn = ctx.db.reader().await?;
        assertions::check_answer(&mut conn, &assertion).await?
    };
    let counter = match checked {
        AssertionCheck::Nothing => None,
        AssertionCheck::Take(counter) => Some(counter),
        AssertionCheck::Refused(code, check) => {
            return refused_assertion(ctx, &id, &response, &assertion, code, &check).await;
        }
    };
    let attrs = attributes_for(
        ctx,
        AuthenticationKind::Approval,
        session.context.ip.as_deref(),
        &answered_device,
        &AnswerFacts {
            amr: &response.amr,
            signals: response.signals,
            location: response.location,
        },
        with_uv,
        client,
    );
    let attrs_json = serde_json::to_string(&attrs).unwrap_or_else(|_| "{}".into());
    let policy = settings.qr_policy;
    let follow_up = if response.decision == Decision::Approve {
        let number_matching = settings.authentication.number_matching;
        follow_up_request(
            ctx,
            &session,
            &device,
            policy,
            number_matching,
            now,
            &wanted,
        )?
    } else {
        None
    };
    let next_state = match (response.decision, &follow_up) {
        (Decision::Approve, Some(_)) => QrSessionState::Verifying,
        (Decision::Approve, None) => QrSessionState::Approved,
        (Decision::Deny | Decision::ReportFraud, _) => QrSessionState::Denied,
    };
    let answer = QrAnswer {
        enrollment_id: &device.enrollment_id,
        user_id: &device.user_id,
        decision: response.decision,
        signed_response,
        attributes: &attrs_json,
        state: next_state,
        follow_up_id: follow_up.as_ref().map(|f| &f.id),
    };
    // With a follow-up or an App Attest counter, the answer, the counter and the follow-up's
    // request are stored together (the counter first, conditionally: a replayed or raced
    // counter writes nothing); without, the answer is one conditional update.
    let mut tx = match (&follow_up, counter) {
        (None, None) => None,
        _ => Some(ctx.db.write().await?),
    };
    if let (Some(open), Some(counter)) = (tx.as_mut(), counter)
        && !enrollments::take_app_attest_counter(open, &device.enrollment_id, counter).await?
    {
        // The refusal reads whether the same answer took it (a retry): see below.
        if let Some(open) = tx {
            open.rollback_after_others().await?;
        }
        return refused_assertion(
            ctx,
            &id,
            &response,
            &assertion,
            ErrorCode::AppAttestCounterReplay,
            "the App Attest assertion's counter was taken by another answer",
        )
        .await;
    }
    let recorded = match tx.as_mut() {
        Some(tx) => {
            qr_sessions::record_answer(&mut **tx, ctx.db.engine(), &session.id, &answer, now)
                .await?
        }
        None => {
            qr_sessions::record_answer(ctx.db.writer(), ctx.db.engine(), &session.id, &answer, now)
                .await?
        }
    };
    if !recorded {
        // Another answer came first, or the device was unpaired since it was read above. On
        // SQLite the other write may be an earlier member of this write's group, not committed
        // yet (`store/writer.rs`): the read below would not see it.
        if let Some(open) = tx {
            open.rollback_after_others().await?;
        }
        let current = load_existing(ctx, &id).await?;
        return if current.state == QrSessionState::Expired {
            Err(expired())
        } else if current.state == QrSessionState::Scanned {
            // Still waiting for an answer: this one's enrollment is gone.
            Err(no_longer_paired())
        } else if current.decision == Some(response.decision)
            && current.enrollment_id.as_ref() == Some(&response.enrollment_id)
        {
            Ok(QrAnswerRecorded {
                session_id: current.id.clone(),
                state: current.state,
                follow_up: current.follow_up_id.clone(),
            })
        } else {
            Err(already_answered())
        };
    }
    // The follow-up's creation is recorded in the write that stores it, so that an unpairing
    // right after (which fails it) cannot record its ending first.
    let mut follow_up_created = None;
    if let Some(mut tx) = tx {
        if let Some(f) = &follow_up {
            authentications::insert(&mut *tx, f).await?;
            follow_up_created = Some(outcome::request_created_in(ctx, &mut tx, f).await?);
        }
        let committed = tx.commit().await?;
        follow_up_created = follow_up_created.map(|created| created.resolved(&committed));
    }
    remember_answered_device(ctx, &device, &answered_device).await;
    tracing::info!(qr_session_id = %session.id, state = next_state.as_str(), "QR session answered");
    announce(ctx, &session.id).await;
    if let Some(flow) = &session.flow_id {
        super::flows::qr_session_moved(ctx, flow).await;
    }
    if let Some(f) = &follow_up {
        if let Some(created) = follow_up_created {
            created.committed(ctx);
        }
        // Push is a hint, delivered in the background; the request is stored for pulling. It
        // goes to the device that answered, with no fallback to others.
        tokio::spawn(super::fallback::deliver(
            ctx.clone(),
            f.clone(),
            device.clone(),
            false,
            settings.push.clone(),
        ));
    }
    Ok(QrAnswerRecorded {
        session_id: session.id.clone(),
        state: next_state,
        follow_up: follow_up.map(|f| f.id),
    })
}

/// What an answer whose App Attest assertion was refused gets: if the session has meanwhile
/// moved on (answered, by this very answer racing itself, or expired), what any answer to it
/// gets then ([`not_recorded`]); otherwise the refusal, audited.
async fn refused_assertion(
    ctx: &Ctx,
    id: &QrSessionId,
    response: &QrResponse,
    assertion: &AnswerAssertion<'_>,
    code: ErrorCode,
    check: &str,
) -> Result<QrAnswerRecorded, DomainError> {
    if code == ErrorCode::AppAttestCounterReplay {
        let current = load_existing(ctx, id).await?;
        if current.state != QrSessionState::Scanned {
            return not_recorded(&current, response);
        }
    }
    Err(assertions::refuse(ctx, assertion, code, check).await)
}

/// The context `session` was claimed with, if the caller's device claimed it: the same device
/// scanning again (a retry after a lost answer, or a copy sent at the same time) gets the same
/// context. The device id is the proven identity here: it is derived from the device key the
/// caller's enrollment proved at registration.
fn claimed_before(session: &QrSession, caller: &Enrollment) -> Option<QrSessionClaimed> {
    if session.state != QrSessionState::Scanned
        || session.device_id.as_ref() != Some(&caller.device_id)
    {
        return None;
    }
    session
        .signed_context
        .clone()
        .map(|context| QrSessionClaimed { context })
}

/// The follow-up the application's QR policy asks for after an approval.
fn follow_up_request(
    ctx: &Ctx,
    session: &QrSession,
    device: &Enrollment,
    policy: QrPolicy,
    number_matching: NumberMatching,
    now: i64,
    wanted: &[String],
) -> Result<Option<Authentication>, DomainError> {
    if policy == QrPolicy::None {
        return Ok(None);
    }
    // The follow-up never outlives its session: the session must not read as expired (a final
    // state) and then turn approved or denied when a follow-up answered later settles it.
    let left = session.expires_at - now;
    if left < MIN_FOLLOW_UP_SECONDS {
        return Err(DomainError::new(
            ErrorCode::QrSessionExpired,
            "the QR session expires before its follow-up could be answered",
        ));
    }
    let left = u32::try_from(left.min(900)).unwrap_or(120);
    let question = match policy {
        QrPolicy::None => return Ok(None),
        QrPolicy::ExtraVerification => Question {
            kind: AuthenticationKind::Silent,
            parameters: DynamicParameters::default(),
            context: session.context.clone(),
            number_matching: NumberMatching::Off,
            require_user_verification: false,
            ciba: None,
            expires_in: left.min(120),
            locale: None,
        },
        QrPolicy::UserApproval => {
            let (message, lang) = super::users::localized(
                wanted,
                "qr-sign-in-prompt",
                &[(
                    "application",
                    crate::i18n::Arg::Text(&session.context.application_name),
                )],
            )?;
            Question {
                kind: AuthenticationKind::Approval,
                parameters: DynamicParameters {
                    message,
                    fields: Vec::new(),
                    hidden_fields: vec![DisplayField {
                        label: "qr_session".into(),
                        value: session.id.to_string(),
                    }],
                },
                context: session.context.clone(),
                // The login page shows the number (QrBrowserStatus::number_to_show).
                number_matching,
                require_user_verification: false,
                ciba: None,
                expires_in: left.min(300),
                locale: Some(lang),
            }
        }
    };
    new_authentication(
        ctx,
        &session.application_id,
        &device.user_id,
        device,
        question,
    )
    .map(Some)
}

/// The session state an ended follow-up leads to (`None` while it is pending).
fn after_follow_up(state: AuthenticationState) -> Option<QrSessionState> {
    match state {
        AuthenticationState::Pending => None,
        AuthenticationState::Approved => Some(QrSessionState::Approved),
        AuthenticationState::Denied => Some(QrSessionState::Denied),
        AuthenticationState::Expired | AuthenticationState::Failed => Some(QrSessionState::Expired),
    }
}

/// Completes the QR session waiting for this follow-up, if any, and announces it.
pub(crate) async fn settle_follow_up(
    ctx: &Ctx,
    authentication: &Authentication,
) -> Result<(), DomainError> {
    let Some(next) = after_follow_up(authentication.state) else {
        return Ok(());
    };
    let Some(session) = qr_sessions::by_follow_up(&ctx.db, &authentication.id, ctx.now()).await?
    else {
        return Ok(());
    };
    if qr_sessions::settle_follow_up(&ctx.db, &authentication.id, next, ctx.now()).await? {
        tracing::info!(authentication_id = %authentication.id, state = next.as_str(), "QR follow-up settled");
        announce(ctx, &session.id).await;
        if let Some(flow) = &session.flow_id {
            super::flows::qr_session_moved(ctx, flow).await;
        }
    }
    Ok(())
}

/// Follow-up: an ended follow-up request completes the QR session waiting for it.
pub(crate) fn follow_up<'a>(ctx: &'a Ctx, event: &'a DomainEvent) -> FollowUpFuture<'a> {
    Box::pin(async move {
        let (record, waiting) = event.ended();
        if !waiting.qr_follow_up {
            return Ok(());
        }
        settle_follow_up(ctx, record).await
    })
}

/// The browser's session, from its browser token.
async fn browser_session(ctx: &Ctx, token: Option<&str>) -> Result<QrSession, DomainError> {
    let unauthorized =
        || DomainError::new(ErrorCode::Unauthorized, "this sign-in link is not valid");
    let token = token
        .filter(|t| t.len() == BROWSER_TOKEN_LENGTH)
        .ok_or_else(unauthorized)?;
    let digest = Sha256Digest::of_bytes(token.as_bytes()).to_string();
    qr_sessions::by_browser_digest(&ctx.db, &digest, ctx.now())
        .await?
        .ok_or_else(unauthorized)
}

/// Where the login page goes once approved: the customer's URL naming the session.
fn redirect_to(url: &str, session: &QrSessionId) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}qr_session={session}")
}

async fn browser_view(ctx: &Ctx, session: &QrSession) -> Result<QrBrowserStatus, DomainError> {
    let facts = follow_up_facts(ctx, session).await?;
    let (qr_uri, qr_svg) = match &session.token {
        Some(token) if session.scannable(ctx.now()) => {
            let uri = qr_uri(ctx, token)?;
            let svg = crate::qr_render::svg(&uri, QR_PIXELS)
                .map_err(|_| DomainError::Internal("QR code rendering"))?;
            (Some(uri.to_string()), Some(svg))
        }
        _ => (None, None),
    };
    Ok(QrBrowserStatus {
        state: session.state,
        version: session.version,
        code_expires_at: qr_uri.as_ref().map(|_| session.code_expires_at),
        qr_uri,
        qr_svg,
        expires_at: session.expires_at,
        application_name: session.context.application_name.clone(),
        redirect_url: session
            .redirect_url
            .as_deref()
            .map(|u| redirect_to(u, &session.id)),
        number_to_show: facts.number_to_show,
        denial_reason: facts
            .denial_reason
            .or(match (session.state, session.decision) {
                (QrSessionState::Denied, Some(Decision::Deny)) => {
                    Some(tessera_protocol::authentication::DenialReason::Declined)
                }
                (QrSessionState::Denied, Some(Decision::ReportFraud)) => {
                    Some(tessera_protocol::authentication::DenialReason::ReportedFraud)
                }
                _ => None,
            }),
    })
}

/// The login page's view of its session (by its browser token); with `wait`, answers once the
/// version differs from `seen` (or the state changes), or `wait` has passed.
pub(crate) async fn browser_status(
    ctx: &Ctx,
    token: Option<&str>,
    wait: Duration,
    seen: Option<i64>,
) -> Result<QrBrowserStatus, DomainError> {
    let session = settled(ctx, browser_session(ctx, token).await?).await?;
    let session = wait_for_change(ctx, session, wait, seen).await?;
    browser_view(ctx, &session).await
}

/// The login page renews its code before it expires (only while nobody has scanned it); the
/// old code stops working.
pub(crate) async fn browser_renew(
    ctx: &Ctx,
    token: Option<&str>,
) -> Result<QrBrowserStatus, DomainError> {
    let session = browser_session(ctx, token).await?;
    let now = ctx.now();
    let token = QrToken::generate();
    let renewed = session.state == QrSessionState::Created
        && qr_sessions::renew_code(
            &ctx.db,
            &session.id,
            token.expose(),
            &token.digest().to_string(),
            (now + i64::from(ctx.config.qr_code_ttl)).min(session.expires_at),
            now,
        )
        .await?;
    if renewed {
        announce(ctx, &session.id).await;
    }
    let current = load_existing(ctx, &session.id).await?;
    if !renewed {
        return Err(DomainError::new(
            ErrorCode::Conflict,
            format!(
                "the code cannot be renewed: the session is {}",
                current.state
            ),
        ));
    }
    browser_view(ctx, &current).await
}

// ---------------------------------------------------------------------------------------------
// QR login as a flow's alternative (`useQrCode`, see `flows`).

/// What a flow needs to show a QR code bound to it.
pub(crate) struct FlowQrRequest<'a> {
    /// The flow's application.
    pub application_id: &'a ApplicationId,
    /// The flow.
    pub flow_id: &'a tessera_protocol::flows::FlowId,
    /// The flow's user: the only one who may answer.
    pub user_id: &'a tessera_protocol::ids::UserId,
    /// What the phone shows of where the sign-in comes from.
    pub context: AccessContext,
    /// The flow's expiry: the session's too.
    pub expires_at: i64,
}

/// Creates the QR session a flow shows (`useQrCode`): restricted to the flow's user (another
/// user's phone scanning it gets `no_eligible_user`), answered once, expiring with the flow,
/// within the application's quota of open QR sessions. Its code renews like any other's (the
/// flow asks for a fresh session instead); there is no login page and no browser token: the
/// flow's page shows the code.
pub(crate) async fn create_for_flow(
    ctx: &Ctx,
    request: FlowQrRequest<'_>,
) -> Result<QrSessionId, DomainError> {
    let now = ctx.now();
    if request.expires_at <= now {
        return Err(expired());
    }
    let id = QrSessionId::generate();
    let token = QrToken::generate();
    // Nobody holds a browser token for it: the digest of one thrown away.
    let unused_browser_token = new_browser_token();
    // The application's own quota is read where the insert takes its lock; the server's
    // default stands when it sets none.
    let default_quota = ctx.config.max_open_qr_sessions_per_application;
    let inserted = qr_sessions::insert_within_quota(
        &ctx.db,
        &NewQrSession {
            id: &id,
            application_id: request.application_id,
            restricted_user_id: Some(request.user_id),
            token: token.expose(),
            token_digest: &token.digest().to_string(),
            code_expires_at: (now + i64::from(ctx.config.qr_code_ttl)).min(request.expires_at),
            browser_token_digest: &Sha256Digest::of_bytes(unused_browser_token.as_bytes())
                .to_string(),
            context: &request.context,
            redirect_url: None,
            created_at: now,
            expires_at: request.expires_at,
            flow_id: Some(request.flow_id),
        },
        default_quota,
        None,
    )
    .await?;
    if !inserted {
        return Err(refused_over_quota(ctx, request.application_id).await);
    }
    tracing::info!(qr_session_id = %id, flow_id = %request.flow_id, "QR session created for a flow");
    Ok(id)
}

/// A flow's QR session as the flow shows it (`with_image`: its SVG too), if it belongs to
/// `flow`.
pub(crate) async fn flow_view(
    ctx: &Ctx,
    flow: &tessera_protocol::flows::FlowId,
    id: &QrSessionId,
    with_image: bool,
) -> Result<Option<tessera_protocol::flows::FlowQr>, DomainError> {
    let Some(session) = load(ctx, id).await? else {
        return Ok(None);
    };
    if session.flow_id.as_ref() != Some(flow) {
        return Ok(None);
    }
    let facts = follow_up_facts(ctx, &session).await?;
    let (qr_uri, qr_svg) = match &session.token {
        Some(token) if session.scannable(ctx.now()) => {
            let uri = qr_uri(ctx, token)?;
            let svg = if with_image {
                Some(
                    crate::qr_render::svg(&uri, QR_PIXELS)
                        .map_err(|_| DomainError::Internal("QR code rendering"))?,
                )
            } else {
                None
            };
            (Some(uri.to_string()), svg)
        }
        _ => (None, None),
    };
    Ok(Some(tessera_protocol::flows::FlowQr {
        session_id: session.id.clone(),
        state: session.state,
        code_expires_at: qr_uri.as_ref().map(|_| session.code_expires_at),
        qr_uri,
        qr_svg,
        number_to_show: facts.number_to_show,
    }))
}

/// How a flow's QR session ended, once it has: the approving user, enrollment and attributes
/// (`Ok(Some(Ok(..)))`), a denial or expiry (`Ok(Some(Err(state)))`), or still open (`None`).
pub(crate) async fn flow_outcome(
    ctx: &Ctx,
    flow: &tessera_protocol::flows::FlowId,
    id: &QrSessionId,
) -> Result<Option<Result<FlowQrApproval, QrSessionState>>, DomainError> {
    let Some(session) = load(ctx, id).await? else {
        return Ok(Some(Err(QrSessionState::Expired)));
    };
    if session.flow_id.as_ref() != Some(flow) {
        return Ok(Some(Err(QrSessionState::Expired)));
    }
    Ok(match session.state {
        QrSessionState::Approved => match (session.user_id, session.enrollment_id) {
            (Some(user_id), Some(enrollment_id)) => Some(Ok(FlowQrApproval {
                user_id,
                enrollment_id,
                attributes: session
                    .attributes
                    .as_deref()
                    .and_then(|a| serde_json::from_str(a).ok())
                    .unwrap_or_default(),
                follow_up_id: session.follow_up_id,
            })),
            _ => {
                return Err(DomainError::Internal(
                    "an approved QR session lacks its user",
                ));
            }
        },
        QrSessionState::Denied | QrSessionState::Expired => Some(Err(session.state)),
        _ => None,
    })
}

/// An approved QR session of a flow.
pub(crate) struct FlowQrApproval {
    /// Who approved (the session was restricted to the flow's user; checked again by the flow).
    pub user_id: tessera_protocol::ids::UserId,
    /// With which enrollment.
    pub enrollment_id: tessera_protocol::ids::EnrollmentId,
    /// The QR step's `pingid.authentication.*` attributes.
    pub attributes: std::collections::BTreeMap<String, serde_json::Value>,
    /// The follow-up approval the application's QR policy asked for, if any.
    pub follow_up_id: Option<tessera_protocol::authentication::AuthenticationId>,
}

/// Ends a flow's QR session nobody answered (the flow moved on or shows a fresh code).
pub(crate) async fn withdraw_for_flow(ctx: &Ctx, id: &QrSessionId) -> Result<(), DomainError> {
    if qr_sessions::withdraw_unanswered(&ctx.db, id).await? {
        announce(ctx, id).await;
    }
    Ok(())
}

#[cfg(test)]
mod crowd_tests;
#[cfg(test)]
mod flow_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn create(expires_in: Option<u32>, redirect_url: Option<&str>) -> CreateQrSession {
        CreateQrSession {
            expires_in,
            redirect_url: redirect_url.map(str::to_string),
            ..CreateQrSession::default()
        }
    }

    #[test]
    fn session_requests_are_checked() {
        assert_eq!(check_create(&create(None, None)).unwrap(), 300);
        assert_eq!(check_create(&create(Some(30), None)).unwrap(), 30);
        assert!(check_create(&create(Some(29), None)).is_err());
        assert!(check_create(&create(Some(901), None)).is_err());
        assert!(check_create(&create(None, Some("https://bank.example/done?x=1"))).is_ok());
        assert!(check_create(&create(None, Some("javascript:alert(1)"))).is_err());
        assert!(check_create(&create(None, Some("https://bank.example/#frag"))).is_err());
        assert!(check_create(&create(None, Some("not a url"))).is_err());
    }

    #[test]
    fn a_follow_up_settles_the_session_by_its_outcome() {
        assert_eq!(after_follow_up(AuthenticationState::Pending), None);
        assert_eq!(
            after_follow_up(AuthenticationState::Approved),
            Some(QrSessionState::Approved)
        );
        assert_eq!(
            after_follow_up(AuthenticationState::Denied),
            Some(QrSessionState::Denied)
        );
        assert_eq!(
            after_follow_up(AuthenticationState::Failed),
            Some(QrSessionState::Expired)
        );
    }

    #[test]
    fn the_redirect_names_the_session_and_browser_tokens_have_their_length() {
        let id = QrSessionId::generate();
        assert_eq!(
            redirect_to("https://bank.example/done", &id),
            format!("https://bank.example/done?qr_session={id}")
        );
        assert_eq!(
            redirect_to("https://bank.example/done?a=1", &id),
            format!("https://bank.example/done?a=1&qr_session={id}")
        );
        assert_eq!(new_browser_token().len(), BROWSER_TOKEN_LENGTH);
    }

    #[test]
    fn a_waiter_answers_on_a_new_version_a_new_state_or_a_final_state() {
        let start = (3, QrSessionState::Created);
        let moved = |version, state| moved_on(start, version, state);
        assert!(!moved(3, QrSessionState::Created));
        assert!(moved(4, QrSessionState::Created));
        assert!(moved(3, QrSessionState::Scanned));
        assert!(moved(3, QrSessionState::Expired));
    }
}
