//! QR login: the customer creates a session, a web page shows its code (renewed every minute
//! while nobody has scanned it), one trusted device claims it and one of that device's users
//! answers with a signed response bound to the session, its nonce and the context shown.
//! By application policy an approval is completed by a follow-up: a silent verification of the
//! device, or a push approval to the user.
//!
//! Three kinds of caller: the customer (API key) creates sessions and reads results; the device
//! (its enrollment keys) claims and answers; the browser (the session's browser token, sent in
//! an `Authorization: TesseraBrowser` header) reads progress and renews the code, nothing else.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::Deserialize;
use tessera_protocol::api::{
    ClaimQrSession, CreateQrSession, EnrollmentState, QrAnswerRecorded, QrBrowserStatus,
    QrSessionClaimed, QrSessionCreated, QrSessionStatus, SubmitQrResponse,
};
use tessera_protocol::authentication::{
    AccessContext, AuthenticationKind, AuthenticationState, Decision, DynamicParameters,
};
use tessera_protocol::canonical::Sha256Digest;
use tessera_protocol::envelope::{self, MessageType};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::pairing::{ApplicationInfo, DeviceRegistration};
use tessera_protocol::qr::{
    QrCandidate, QrResponse, QrSessionContext, QrSessionId, QrSessionState, QrToken, QrUri,
};
use tessera_protocol::{PROTOCOL_VERSION, time};
use zeroize::Zeroizing;

use crate::domain::Ctx;
use crate::domain::authentication::{
    AnswerFacts, MAX_WAIT_SECONDS, Question, USER_VERIFICATION_AMR, attributes_for, check_answer,
    check_text, new_authentication, verify_answer,
};

fn invalid(message: &str) -> ApiError {
    crate::domain::authentication::invalid(message).into()
}

fn mismatch(message: &str) -> ApiError {
    crate::domain::authentication::mismatch(message).into()
}
const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
use super::errors::ApiError;
use super::extract::authenticate_device;
use super::extract::{ApiJson, AppAuth, ClientAddr, OptionalJson, parse_json};
use super::users::require_user;
use crate::store::applications::{self, QrPolicy};
use crate::store::authentications::{self, Authentication};
use crate::store::enrollments::{self, Enrollment};
use crate::store::qr_sessions::{self, NewQrSession, QrAnswer, QrSession};
use crate::store::users;

const DEFAULT_SESSION_SECONDS: u32 = 300;
const BROWSER_SCHEME: &str = "TesseraBrowser";
/// Most users a claim may list (a device with more enrollments on one server is unusual).
const MAX_CLAIMED_ENROLLMENTS: usize = 32;
/// Pixels of the rendered code (at least).
const QR_PIXELS: u32 = 320;

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::QrSessionNotFound, "no such QR session")
}

fn expired() -> ApiError {
    ApiError::new(ErrorCode::QrSessionExpired, "the QR session has expired")
}

fn new_browser_token() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    Zeroizing::new(URL_SAFE_NO_PAD.encode(bytes.as_ref()))
}

fn qr_uri(state: &Ctx, token: &str) -> Result<Zeroizing<String>, ApiError> {
    let token = QrToken::parse(token)
        .map_err(|_| ApiError::from(crate::error::ServerError::Corrupted("qr token")))?;
    Ok(QrUri {
        server: state.public_url.clone(),
        token,
    }
    .to_uri_string())
}

/// Creates a QR login session.
#[utoipa::path(post, path = "/v1/qr-sessions", tag = "customer",
    request_body(content = CreateQrSession, description = "Optional"),
    responses((status = 201, body = QrSessionCreated),
              (status = 400, body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn create_session(
    State(state): State<Ctx>,
    auth: AppAuth,
    OptionalJson(body): OptionalJson<CreateQrSession>,
) -> Result<(StatusCode, Json<QrSessionCreated>), ApiError> {
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
    if let Some(user) = &body.user_id {
        require_user(&state, &auth, user).await?;
    }
    let now = time::now();
    let id = QrSessionId::generate();
    let token = QrToken::generate();
    let browser_token = new_browser_token();
    let context = AccessContext {
        application_name: auth.0.name.clone(),
        application_icon_url: body.application_icon_url.clone(),
        ip: body.accessing_ip.clone(),
        location: body.accessing_location.clone(),
    };
    let expires_at = now + i64::from(expires_in);
    qr_sessions::insert(
        &state.db,
        &NewQrSession {
            id: &id,
            application_id: &auth.0.id,
            restricted_user_id: body.user_id.as_ref(),
            token: token.expose(),
            token_digest: &token.digest().to_string(),
            code_expires_at: (now + i64::from(state.config.qr_code_ttl)).min(expires_at),
            browser_token_digest: &Sha256Digest::of_bytes(browser_token.as_bytes()).to_string(),
            context: &context,
            redirect_url: body.redirect_url.as_deref(),
            created_at: now,
            expires_at,
        },
    )
    .await?;
    tracing::info!(qr_session_id = %id, "QR session created");
    let uri = QrUri {
        server: state.public_url.clone(),
        token,
    };
    Ok((
        StatusCode::CREATED,
        Json(QrSessionCreated {
            session_id: id,
            qr_uri: uri.to_uri_string().to_string(),
            login_page_url: format!(
                "{}#{}",
                state.public_url.endpoint("/qr-login"),
                browser_token.as_str()
            ),
            browser_token: browser_token.to_string(),
            expires_at,
        }),
    ))
}

/// `?wait=SECONDS` (and, for the browser, `&seen=VERSION`).
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
pub(crate) struct QrWaitQuery {
    /// Seconds to wait for a change (at most 30).
    #[serde(default)]
    pub wait: Option<u64>,
    /// The version the caller already shows; the answer waits for another.
    #[serde(default)]
    pub seen: Option<i64>,
}

/// A session, with a pending follow-up settled if it has been answered meanwhile.
async fn load(state: &Ctx, id: &QrSessionId) -> Result<Option<QrSession>, ApiError> {
    match qr_sessions::get(&state.db, id, time::now()).await? {
        Some(session) => Ok(Some(settled(state, session).await?)),
        None => Ok(None),
    }
}

/// The session as it stands once a follow-up answered (or expired) meanwhile is applied.
async fn settled(state: &Ctx, session: QrSession) -> Result<QrSession, ApiError> {
    let now = time::now();
    if session.state == QrSessionState::Verifying
        && let Some(follow_up) = &session.follow_up_id
        && let Some(a) = authentications::get(&state.db, follow_up, now).await?
        && a.state != AuthenticationState::Pending
    {
        settle_follow_up(state, &a).await?;
        return qr_sessions::get(&state.db, &session.id, time::now())
            .await?
            .ok_or_else(not_found);
    }
    Ok(session)
}

/// Waits (up to `wait`) until the session differs from `first` (or, given `seen`, from that
/// version).
async fn wait_for_change(
    state: &Ctx,
    first: QrSession,
    wait: Option<u64>,
    seen: Option<i64>,
) -> Result<QrSession, ApiError> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(wait.unwrap_or(0).min(MAX_WAIT_SECONDS));
    let start = (seen.unwrap_or(first.version), first.state);
    if seen.is_some_and(|v| v != first.version) {
        return Ok(first);
    }
    let mut current = first;
    while (current.version, current.state) == start
        && !current.state.is_final()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(POLL_INTERVAL).await;
        current = load(state, &current.id).await?.ok_or_else(not_found)?;
    }
    Ok(current)
}

/// A QR session's state and, once approved, the user, the attributes and the signed answer.
/// `?wait=N` holds the answer until the state changes (at most 30 seconds).
#[utoipa::path(get, path = "/v1/qr-sessions/{session_id}", tag = "customer",
    params(("session_id" = String, Path, description = "The session"), QrWaitQuery),
    responses((status = 200, body = QrSessionStatus), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn get_session(
    State(state): State<Ctx>,
    auth: AppAuth,
    Path(id): Path<String>,
    Query(query): Query<QrWaitQuery>,
) -> Result<Json<QrSessionStatus>, ApiError> {
    let id: QrSessionId = id.parse().map_err(|_| not_found())?;
    let session = load(&state, &id).await?.ok_or_else(not_found)?;
    if session.application_id != auth.0.id {
        return Err(not_found());
    }
    let session = wait_for_change(&state, session, query.wait, None).await?;
    Ok(Json(session.status()))
}

fn image_response(content_type: &'static str, body: Vec<u8>) -> Response {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-store")],
        body,
    )
        .into_response()
}

async fn scannable_uri(
    state: &Ctx,
    auth: &AppAuth,
    id: &str,
) -> Result<Zeroizing<String>, ApiError> {
    let id: QrSessionId = id.parse().map_err(|_| not_found())?;
    let session = load(state, &id).await?.ok_or_else(not_found)?;
    if session.application_id != auth.0.id {
        return Err(not_found());
    }
    match (&session.token, session.scannable(time::now())) {
        (Some(token), true) => qr_uri(state, token),
        _ if session.state == QrSessionState::Expired => Err(expired()),
        _ => Err(ApiError::new(
            ErrorCode::Conflict,
            "the code can no longer be scanned (scanned, answered or due for renewal)",
        )),
    }
}

/// The session's current code as a PNG image.
#[utoipa::path(get, path = "/v1/qr-sessions/{session_id}/qr.png", tag = "customer",
    params(("session_id" = String, Path, description = "The session")),
    responses((status = 200, content_type = "image/png", description = "The QR code"),
              (status = 409, body = tessera_protocol::error::ErrorBody),
              (status = 410, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn qr_png(
    State(state): State<Ctx>,
    auth: AppAuth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let uri = scannable_uri(&state, &auth, &id).await?;
    let png = crate::qr_render::png(&uri, QR_PIXELS)?;
    Ok(image_response("image/png", png))
}

/// The session's current code as an SVG image.
#[utoipa::path(get, path = "/v1/qr-sessions/{session_id}/qr.svg", tag = "customer",
    params(("session_id" = String, Path, description = "The session")),
    responses((status = 200, content_type = "image/svg+xml", description = "The QR code"),
              (status = 409, body = tessera_protocol::error::ErrorBody),
              (status = 410, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn qr_svg(
    State(state): State<Ctx>,
    auth: AppAuth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let uri = scannable_uri(&state, &auth, &id).await?;
    let svg = crate::qr_render::svg(&uri, QR_PIXELS)?;
    Ok(image_response("image/svg+xml", svg.into_bytes()))
}

/// The device claims the session its scanned code names (device-signed with any of its
/// enrollments on this server), listing its enrollments; it gets the signed context to show.
#[utoipa::path(post, path = "/v1/device/qr-sessions/claim", tag = "device",
    request_body = ClaimQrSession,
    responses((status = 200, body = QrSessionClaimed),
              (status = 401, body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "qr_session_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "qr_already_scanned, no_eligible_user", body = tessera_protocol::error::ErrorBody),
              (status = 410, description = "qr_session_expired", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn claim(
    State(state): State<Ctx>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<QrSessionClaimed>, ApiError> {
    let caller = authenticate_device(&state, &headers, &method, uri.path(), &body).await?;
    let request: ClaimQrSession = parse_json(&body)?;
    if request.enrollment_ids.is_empty() || request.enrollment_ids.len() > MAX_CLAIMED_ENROLLMENTS {
        return Err(invalid("list between 1 and 32 enrollments"));
    }
    let token = QrToken::parse(&request.token).map_err(|_| not_found())?;
    let digest = token.digest().to_string();
    let now = time::now();
    let session = qr_sessions::by_token_digest(&state.db, &digest, now)
        .await?
        .ok_or_else(not_found)?;
    // The same device scanning again (a retry after a lost answer) gets the same context.
    if session.state == QrSessionState::Scanned
        && session.device_id.as_ref() == Some(&caller.device_id)
        && let Some(context) = session.signed_context
    {
        return Ok(Json(QrSessionClaimed { context }));
    }
    match session.state {
        QrSessionState::Created if now < session.code_expires_at => {}
        QrSessionState::Created | QrSessionState::Expired => return Err(expired()),
        _ => {
            return Err(ApiError::new(
                ErrorCode::QrAlreadyScanned,
                "this QR code was already scanned by another device",
            ));
        }
    }
    // The caller's users for this session: active enrollments of this application on the same
    // device (and of the given user, if the session names one).
    let mut candidates = Vec::new();
    for id in &request.enrollment_ids {
        let Some(e) = enrollments::by_id(&state.db, id).await? else {
            continue;
        };
        let eligible = e.status == EnrollmentState::Active
            && e.device_id == caller.device_id
            && e.application_id == session.application_id
            && session
                .restricted_user_id
                .as_ref()
                .is_none_or(|u| u == &e.user_id);
        if eligible
            && !candidates
                .iter()
                .any(|c: &Enrollment| c.enrollment_id == e.enrollment_id)
        {
            candidates.push(e);
        }
    }
    if candidates.is_empty() {
        return Err(ApiError::new(
            ErrorCode::NoEligibleUser,
            "none of this device's users may answer this QR code",
        ));
    }
    let app = applications::get(&state.db, &session.application_id)
        .await?
        .ok_or_else(not_found)?;
    let mut listed = Vec::with_capacity(candidates.len());
    for e in &candidates {
        let display_name = users::get(&state.db, &session.application_id, &e.user_id)
            .await?
            .and_then(|u| u.display_name);
        listed.push(QrCandidate {
            user_id: e.user_id.clone(),
            enrollment_id: e.enrollment_id.clone(),
            display_name,
        });
    }
    let context = QrSessionContext {
        v: PROTOCOL_VERSION,
        session_id: session.id.clone(),
        issuer: state.public_url.clone(),
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
    let signed = state
        .keys
        .sign(MessageType::QrSessionContext, &context)
        .map_err(|_| ApiError::new(ErrorCode::InternalError, "internal error"))?;
    let ids: Vec<_> = candidates.iter().map(|c| c.enrollment_id.clone()).collect();
    if !qr_sessions::claim(
        &state.db,
        &session.id,
        &digest,
        &caller.device_id,
        &ids,
        &context.nonce,
        &signed,
        now,
    )
    .await?
    {
        // Another device won the race (or the code was renewed or expired meanwhile).
        return Err(ApiError::new(
            ErrorCode::QrAlreadyScanned,
            "this QR code was already scanned by another device",
        ));
    }
    tracing::info!(qr_session_id = %session.id, candidates = ids.len(), "QR session scanned");
    Ok(Json(QrSessionClaimed { context: signed }))
}

/// The device answers a QR session with a response signed by the chosen user's enrollment.
#[utoipa::path(post, path = "/v1/device/qr-sessions/{session_id}/response", tag = "device",
    params(("session_id" = String, Path, description = "The session answered")),
    request_body = SubmitQrResponse,
    responses((status = 200, body = QrAnswerRecorded),
              (status = 400, description = "invalid_signature, response_mismatch, stale_message", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "already_answered", body = tessera_protocol::error::ErrorBody),
              (status = 410, description = "qr_session_expired", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn submit_response(
    State(state): State<Ctx>,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SubmitQrResponse>,
) -> Result<Json<QrAnswerRecorded>, ApiError> {
    let id: QrSessionId = id.parse().map_err(|_| not_found())?;
    let session = load(&state, &id).await?.ok_or_else(not_found)?;
    let claimed: QrResponse = envelope::unverified_payload(&body.response).map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidSignature,
            "the response is not a valid signed message",
        )
    })?;
    if !session.candidates.contains(&claimed.enrollment_id) {
        return Err(ApiError::new(
            ErrorCode::InvalidSignature,
            "the response is not signed by a user of the device that scanned",
        ));
    }
    let device = enrollments::by_id(&state.db, &claimed.enrollment_id)
        .await?
        .filter(|d| d.status == EnrollmentState::Active)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "the device is no longer paired"))?;
    let (response, with_uv) = verify_answer::<QrResponse>(
        &body.response,
        MessageType::QrResponse,
        &device,
        "the response is not signed by the chosen user's device keys",
    )?;
    let context_digest = Sha256Digest::of_canonical(&session.context)
        .map_err(|_| ApiError::new(ErrorCode::InternalError, "internal error"))?;
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
    let now = time::now();
    check_answer(response.issued_at, &response.amr, response.location, now)?;
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
        return match session.state {
            QrSessionState::Expired => Err(expired()),
            QrSessionState::Created => Err(mismatch("the session was not scanned")),
            _ if session.decision == Some(response.decision)
                && session.enrollment_id.as_ref() == Some(&response.enrollment_id) =>
            {
                Ok(Json(QrAnswerRecorded {
                    session_id: session.id.clone(),
                    state: session.state,
                    follow_up: session.follow_up_id.clone(),
                }))
            }
            _ => Err(ApiError::new(
                ErrorCode::AlreadyAnswered,
                "the QR session was already answered",
            )),
        };
    }
    let attrs = attributes_for(
        &state,
        AuthenticationKind::Approval,
        session.context.ip.as_deref(),
        &device,
        &AnswerFacts {
            amr: &response.amr,
            signals: response.signals,
            location: response.location,
        },
        with_uv,
        &client,
    );
    let attrs_json = serde_json::to_string(&attrs).unwrap_or_else(|_| "{}".into());
    let policy = applications::qr_policy(&state.db, &session.application_id).await?;
    let follow_up = if response.decision == Decision::Approve {
        follow_up_request(&state, &session, &device, policy, now)?
    } else {
        None
    };
    let next_state = match (response.decision, &follow_up) {
        (Decision::Approve, Some(_)) => QrSessionState::Verifying,
        (Decision::Approve, None) => QrSessionState::Approved,
        (Decision::Deny | Decision::ReportFraud, _) => QrSessionState::Denied,
    };
    let mut tx = state.db.begin_write().await?;
    let recorded = qr_sessions::record_answer(
        &mut *tx,
        &session.id,
        &QrAnswer {
            enrollment_id: &device.enrollment_id,
            user_id: &device.user_id,
            decision: response.decision,
            signed_response: &body.response,
            attributes: &attrs_json,
            state: next_state,
            follow_up_id: follow_up.as_ref().map(|f| &f.id),
        },
        now,
    )
    .await?;
    if !recorded {
        drop(tx);
        let current = load(&state, &id).await?.ok_or_else(not_found)?;
        return if current.state == QrSessionState::Expired {
            Err(expired())
        } else if current.decision == Some(response.decision)
            && current.enrollment_id.as_ref() == Some(&response.enrollment_id)
        {
            Ok(Json(QrAnswerRecorded {
                session_id: current.id.clone(),
                state: current.state,
                follow_up: current.follow_up_id.clone(),
            }))
        } else {
            Err(ApiError::new(
                ErrorCode::AlreadyAnswered,
                "the QR session was already answered",
            ))
        };
    }
    if let Some(f) = &follow_up {
        authentications::insert(&mut *tx, f).await?;
    }
    tx.commit().await?;
    tracing::info!(qr_session_id = %session.id, state = next_state.as_str(), "QR session answered");
    if let Some(f) = &follow_up {
        tokio::spawn(crate::delivery::push::deliver(
            state.clone(),
            f.clone(),
            device.clone(),
        ));
    }
    Ok(Json(QrAnswerRecorded {
        session_id: session.id.clone(),
        state: next_state,
        follow_up: follow_up.map(|f| f.id),
    }))
}

/// The follow-up the application's QR policy asks for after an approval.
fn follow_up_request(
    state: &Ctx,
    session: &QrSession,
    device: &Enrollment,
    policy: QrPolicy,
    now: i64,
) -> Result<Option<Authentication>, ApiError> {
    let left = u32::try_from((session.expires_at - now).clamp(10, 900)).unwrap_or(120);
    let question = match policy {
        QrPolicy::None => return Ok(None),
        QrPolicy::ExtraVerification => Question {
            kind: AuthenticationKind::Silent,
            parameters: DynamicParameters::default(),
            context: session.context.clone(),
            number_matching: false,
            require_user_verification: false,
            ciba: None,
            expires_in: left.min(120),
        },
        QrPolicy::UserApproval => Question {
            kind: AuthenticationKind::Approval,
            parameters: DynamicParameters {
                message: format!(
                    "Sign in to {} in your browser?",
                    session.context.application_name
                ),
                fields: Vec::new(),
                hidden_fields: vec![tessera_protocol::authentication::DisplayField {
                    label: "qr_session".into(),
                    value: session.id.to_string(),
                }],
            },
            context: session.context.clone(),
            number_matching: false,
            require_user_verification: false,
            ciba: None,
            expires_in: left.min(300),
        },
    };
    new_authentication(
        state,
        &session.application_id,
        &device.user_id,
        device,
        question,
    )
    .map(Some)
    .map_err(ApiError::from)
}

/// Completes the QR session waiting for this follow-up, if any.
pub(crate) async fn settle_follow_up(
    state: &Ctx,
    authentication: &Authentication,
) -> Result<(), ApiError> {
    let next = match authentication.state {
        AuthenticationState::Pending => return Ok(()),
        AuthenticationState::Approved => QrSessionState::Approved,
        AuthenticationState::Denied => QrSessionState::Denied,
        AuthenticationState::Expired | AuthenticationState::Failed => QrSessionState::Expired,
    };
    if qr_sessions::settle_follow_up(&state.db, &authentication.id, next).await? {
        tracing::info!(authentication_id = %authentication.id, state = next.as_str(), "QR follow-up settled");
    }
    Ok(())
}

/// The browser's session, from its `Authorization: TesseraBrowser <token>` header.
async fn browser_session(state: &Ctx, headers: &HeaderMap) -> Result<QrSession, ApiError> {
    let unauthorized = || ApiError::new(ErrorCode::Unauthorized, "this sign-in link is not valid");
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix(BROWSER_SCHEME))
        .and_then(|v| v.strip_prefix(' '))
        .filter(|t| t.len() == 43)
        .ok_or_else(unauthorized)?;
    let digest = Sha256Digest::of_bytes(token.as_bytes()).to_string();
    qr_sessions::by_browser_digest(&state.db, &digest, time::now())
        .await?
        .ok_or_else(unauthorized)
}

fn browser_status(state: &Ctx, session: &QrSession) -> Result<QrBrowserStatus, ApiError> {
    let now = time::now();
    let (qr_uri, qr_svg) = match &session.token {
        Some(token) if session.scannable(now) => {
            let uri = qr_uri(state, token)?;
            let svg = crate::qr_render::svg(&uri, QR_PIXELS)?;
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
        redirect_url: session.redirect_url.as_ref().map(|u| {
            let sep = if u.contains('?') { '&' } else { '?' };
            format!("{u}{sep}qr_session={}", session.id)
        }),
    })
}

/// The login page's view of its session (`Authorization: TesseraBrowser <browser token>`);
/// `?wait=N&seen=V` holds the answer while the version is still V (at most 30 seconds).
#[utoipa::path(get, path = "/v1/qr-browser", tag = "browser",
    params(QrWaitQuery),
    responses((status = 200, body = QrBrowserStatus), (status = 401, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn browser_get(
    State(state): State<Ctx>,
    headers: HeaderMap,
    Query(query): Query<QrWaitQuery>,
) -> Result<Response, ApiError> {
    let session = settled(&state, browser_session(&state, &headers).await?).await?;
    let session = wait_for_change(&state, session, query.wait, query.seen).await?;
    Ok((
        [(CACHE_CONTROL, "no-store")],
        Json(browser_status(&state, &session)?),
    )
        .into_response())
}

/// The login page renews its code before it expires (only while nobody has scanned it); the
/// old code stops working.
#[utoipa::path(post, path = "/v1/qr-browser/renew", tag = "browser",
    responses((status = 200, body = QrBrowserStatus),
              (status = 401, body = tessera_protocol::error::ErrorBody),
              (status = 409, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn browser_renew(
    State(state): State<Ctx>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = browser_session(&state, &headers).await?;
    let now = time::now();
    let token = QrToken::generate();
    let renewed = session.state == QrSessionState::Created
        && qr_sessions::renew_code(
            &state.db,
            &session.id,
            token.expose(),
            &token.digest().to_string(),
            (now + i64::from(state.config.qr_code_ttl)).min(session.expires_at),
            now,
        )
        .await?;
    let current = load(&state, &session.id).await?.ok_or_else(not_found)?;
    if !renewed {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "the code cannot be renewed: the session is {}",
                current.state
            ),
        ));
    }
    Ok((
        [(CACHE_CONTROL, "no-store")],
        Json(browser_status(&state, &current)?),
    )
        .into_response())
}
