//! Authentication flows: the state machine a customer backend (or a PingFederate-style adapter)
//! steps a user through, composed of the building blocks the other modules own (push
//! authentications, the app's passcode, OATH tokens, SMS/voice/email codes, relay pairing).
//!
//! Rules:
//! - Every move is taken with a conditional update on the flow's version and recorded with the
//!   action that caused it ([`crate::store::flows`]); an action first *claims* the flow (bumps
//!   its version), so two racing actions cannot both send a push or a code: the second is
//!   refused with `conflict` before it does anything.
//! - The flow follows its push: when the push ends (approved, denied, failed), the follow-up
//!   [`follow_up`] moves the flow and wakes its pollers; reads also derive what changed (an
//!   expired push or flow) so a missed event never loses an outcome.
//! - An action not allowed in the current status is `action_not_allowed`, listing the allowed
//!   ones; a refused attempt (a wrong passcode) is recorded without moving the flow.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tessera_protocol::api::{
    AuthenticationMethod, AuthenticationStatus, BackupChannel, CreateAuthenticationRequest,
    EnrollmentState, RelayPairingRequest,
};
use tessera_protocol::authentication::{
    AuthenticationId, AuthenticationKind, AuthenticationState, DisplayField, NumberMatching,
};
use tessera_protocol::envelope::{self, MessageType};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::fido::FidoCredentialType;
use tessera_protocol::flows::{
    CreateFlowRequest, DEVICE_AUTHORIZATION_MAX_LIFETIME, DeviceAuthorization, DeviceSelection,
    FlowAction, FlowActionName, FlowDevice, FlowDeviceType, FlowEventRecord, FlowFido, FlowHistory,
    FlowId, FlowMfaSetup, FlowOtp, FlowOtpSource, FlowPairing, FlowPush, FlowResult,
    FlowResultStatus, FlowState, FlowStatus, HostedPrompt,
};
use tessera_protocol::ids::{ApplicationId, EnrollmentId, UserId};
use tessera_protocol::pairing::DeviceRegistration;
use tessera_protocol::qr::{QrSessionId, QrSessionState};

use super::attestation::assertions::{self, AnswerAssertion, AssertionCheck};
use super::authentication::MadeForFlow;
use super::authentication::{MAX_WAIT_SECONDS, check_fields, check_text};
use super::device_auth::verify_possession_signed;
use super::events::{Topic, wait_for};
use super::outcome::{self, DomainEvent, Ending, FollowUpFuture};
use super::{
    Ctx, DomainError, authentication, backup, bypass, device_verification, fido, hosted, methods,
    otp, pairing, policy,
};
use crate::store::applications::{self, Application};
use crate::store::authentications::{self, Authentication};
use crate::store::enrollments::{self, Enrollment};
use crate::store::flows::{self as store, FlowEvent, StoredFlow};
use crate::store::policies::StoredPolicy;
use crate::store::{nonces, otp as otp_store};
use tessera_protocol::policy::{PolicyEffect, PolicyMethod, PolicyOutcome, RequestKind};

/// A flow's lifetime when the request does not say, in seconds.
const DEFAULT_TTL: u32 = 600;
/// How long an action's claim on a flow holds if the action never ends it (its process
/// stopped): longer than any action takes, the slowest being a passcode sent with the message
/// gateway's 10 s timeout.
const CLAIM_LEASE_MS: i64 = 30_000;

/// What the flow was asked to do, resolved against the application's settings at creation.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Options {
    application_name: String,
    application_icon_url: Option<String>,
    accessing_ip: Option<String>,
    user_agent: Option<String>,
    message: Option<String>,
    fields: Vec<DisplayField>,
    number_matching: Option<NumberMatching>,
    use_code: bool,
    otp_fallback: bool,
    backup_channels: Vec<BackupChannel>,
    admin_message: Option<String>,
    mandatory_methods: Vec<AuthenticationMethod>,
    device_selection: DeviceSelection,
    /// A flow run on the hosted prompt page.
    #[serde(default)]
    hosted: Option<HostedPrompt>,
    /// A passkey sign-in: started without a user, bound to the one its passkey names.
    #[serde(default)]
    passkey: bool,
}

/// The passcode a flow waits for, with what only the server may know (the challenge id).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OtpStep {
    source: FlowOtpSource,
    destination: Option<String>,
    /// The pending push the app's passcode answers ("use code").
    authentication_id: Option<AuthenticationId>,
    /// The SMS, voice or email challenge.
    challenge_id: Option<String>,
}

/// The WebAuthn ceremony a flow waits for, with what only the server may know (its id).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FidoStep {
    /// The stored ceremony (taken once by the response).
    ceremony_id: String,
    /// `ASSERTION_REQUIRED`: the options for `navigator.credentials.get`.
    #[serde(default)]
    request_options: Option<serde_json::Value>,
    /// After `startRegistration`: the options for `navigator.credentials.create`.
    #[serde(default)]
    creation_options: Option<serde_json::Value>,
    /// The method being registered.
    #[serde(default)]
    registering: Option<AuthenticationMethod>,
}

/// The flow's model, stored as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Data {
    options: Options,
    /// What a trusted device signs to authorize this flow seamlessly.
    authorization_nonce: String,
    #[serde(default)]
    devices: Vec<FlowDevice>,
    #[serde(default)]
    selected_device: Option<String>,
    #[serde(default)]
    push: Option<FlowPush>,
    #[serde(default)]
    otp: Option<OtpStep>,
    #[serde(default)]
    pairing: Option<FlowPairing>,
    #[serde(default)]
    mfa_setup: Option<FlowMfaSetup>,
    #[serde(default)]
    result: Option<FlowResult>,
    /// The application's policy decision for the flow, once made.
    #[serde(default)]
    policy: Option<PolicyOutcome>,
    /// The user had unused recovery codes when the flow started: `checkRecoveryCode` is offered.
    #[serde(default)]
    recovery_codes: bool,
    /// The WebAuthn ceremony waited for.
    #[serde(default)]
    fido: Option<FidoStep>,
    /// The QR login session shown as the alternative (`useQrCode`), while it may complete the
    /// flow.
    #[serde(default)]
    qr: Option<QrSessionId>,
}

/// A flow as loaded.
#[derive(Debug, Clone)]
struct Flow {
    stored: StoredFlow,
    status: FlowStatus,
    data: Data,
}

impl Flow {
    /// The flow's user: every step past a passkey sign-in's assertion has one.
    fn user(&self) -> Result<&UserId, DomainError> {
        self.stored.user_id.as_ref().ok_or(DomainError::Internal(
            "a step needing a user reached a flow without one",
        ))
    }

    /// A passkey sign-in still waiting for the passkey that names its user.
    fn awaits_passkey(&self) -> bool {
        self.stored.user_id.is_none()
    }

    fn from_stored(stored: StoredFlow) -> Result<Self, DomainError> {
        let status = FlowStatus::parse(&stored.status)
            .ok_or(DomainError::Internal("a stored flow has an unknown status"))?;
        let data: Data = serde_json::from_str(&stored.data)
            .map_err(|_| DomainError::Internal("a stored flow's data does not parse"))?;
        Ok(Self {
            stored,
            status,
            data,
        })
    }

    /// What the client sees.
    fn state(&self) -> FlowState {
        let d = &self.data;
        FlowState {
            id: self.stored.id.clone(),
            status: self.status,
            actions: allowed_actions(self),
            user_id: self.stored.user_id.clone(),
            expires_at: self.stored.expires_at,
            authorization_nonce: d.authorization_nonce.clone(),
            admin_message: d.options.admin_message.clone(),
            devices: d.devices.clone(),
            selected_device: d.selected_device.clone(),
            push: d.push.clone(),
            otp: d.otp.as_ref().map(|o| FlowOtp {
                source: o.source,
                destination: o.destination.clone(),
            }),
            pairing: d.pairing.clone(),
            mfa_setup: d.mfa_setup.clone(),
            result: d.result.clone(),
            fido: d.fido.as_ref().map(|f| FlowFido {
                request_options: f.request_options.clone(),
                creation_options: f.creation_options.clone(),
                registering: f.registering,
            }),
            prompt_url: None,
            qr: None,
        }
    }

    /// The push whose answer moves the flow now, if any.
    fn watched_push(&self) -> Option<&AuthenticationId> {
        match self.status {
            FlowStatus::PushConfirmationWaiting => {
                self.data.push.as_ref().map(|p| &p.authentication_id)
            }
            FlowStatus::OtpRequired => self
                .data
                .otp
                .as_ref()
                .and_then(|o| o.authentication_id.as_ref()),
            _ => None,
        }
    }
}

fn flow_not_found() -> DomainError {
    DomainError::new(ErrorCode::FlowNotFound, "no such flow")
}

fn conflict() -> DomainError {
    DomainError::new(
        ErrorCode::Conflict,
        "the flow moved meanwhile; read it again",
    )
}

async fn load(ctx: &Ctx, app: &ApplicationId, id: &str) -> Result<Flow, DomainError> {
    let id: FlowId = id.parse().map_err(|_| flow_not_found())?;
    let stored = store::get(&ctx.db, &id)
        .await?
        .filter(|f| &f.application_id == app)
        .ok_or_else(flow_not_found)?;
    Flow::from_stored(stored)
}

/// The application the API key `presented` authenticates and its flow `id`, in one read while
/// the key's last application is remembered (`super::api_keys`). `None` without a key, a hint
/// or an id that parses, and when the read finds nothing (the key rotated, or no such flow of
/// that application): the caller then goes the long way (the key looked up, then the flow), so
/// its answer (401, or 404) is the one it would have been without the hint.
async fn load_by_key(
    ctx: &Ctx,
    presented: &super::api_keys::PresentedKey,
    id: &str,
) -> Result<Option<(Application, Flow)>, DomainError> {
    let Ok(id) = id.parse::<FlowId>() else {
        return Ok(None);
    };
    let found = super::api_keys::read_under_hint(ctx, presented, |app_id, digest| async move {
        Ok(store::get_with_key(&ctx.db, &id, &app_id, &digest).await?)
    })
    .await?;
    found
        .map(|(app, stored)| Ok((app, Flow::from_stored(stored)?)))
        .transpose()
}

async fn reload(ctx: &Ctx, flow: &Flow) -> Result<Flow, DomainError> {
    let stored = store::get(&ctx.db, &flow.stored.id)
        .await?
        .ok_or_else(flow_not_found)?;
    Flow::from_stored(stored)
}

/// The actions `flow` allows now.
fn allowed_actions(flow: &Flow) -> Vec<FlowActionName> {
    use FlowActionName::*;
    let options = &flow.data.options;
    let switch = flow.data.devices.len() > 1;
    let mut actions = Vec::new();
    let mut add = |ok: bool, action| {
        if ok {
            actions.push(action);
        }
    };
    match flow.status {
        FlowStatus::AuthenticationRequired => add(true, Authenticate),
        FlowStatus::DeviceSelectionRequired => add(true, SelectDevice),
        FlowStatus::PushConfirmationWaiting => {
            add(true, Poll);
            add(switch, SelectDevice);
            add(options.use_code, UseCode);
        }
        FlowStatus::PushConfirmationRejected => {
            add(true, Authenticate);
            add(switch, SelectDevice);
        }
        FlowStatus::PushConfirmationTimedOut => {
            add(true, Authenticate);
            add(switch, SelectDevice);
            add(options.otp_fallback, UseCode);
        }
        FlowStatus::OtpRequired => {
            let otp = flow.data.otp.as_ref();
            add(true, CheckOtp);
            add(otp.is_some_and(|o| o.challenge_id.is_some()), ResendOtp);
            add(switch, SelectDevice);
            add(otp.is_some_and(|o| o.authentication_id.is_some()), Poll);
        }
        FlowStatus::MobilePairingRequired => {
            add(true, Poll);
            add(true, ContinueAuthentication);
            let held = held_for_passcode(&flow.data);
            add(held, CheckOtp);
            add(held, ResendOtp);
        }
        FlowStatus::MfaSetupRequired => {
            add(true, Authenticate);
            add(true, ContinueAuthentication);
            let missing_fido = flow.data.mfa_setup.as_ref().is_some_and(|s| {
                s.missing.iter().any(|m| {
                    matches!(
                        m,
                        AuthenticationMethod::SecurityKey | AuthenticationMethod::Platform
                    )
                })
            });
            add(missing_fido, StartRegistration);
            add(
                flow.data
                    .fido
                    .as_ref()
                    .is_some_and(|f| f.creation_options.is_some()),
                CheckRegistration,
            );
        }
        FlowStatus::AssertionRequired => {
            add(true, CheckAssertion);
            add(true, Authenticate);
            add(switch, SelectDevice);
        }
        FlowStatus::MfaCompleted | FlowStatus::MfaFailed | FlowStatus::Canceled => {}
    }
    if recovery_code_allowed(flow) {
        actions.push(CheckRecoveryCode);
    }
    if offers_qr(flow) {
        if flow.data.qr.is_some() && !actions.contains(&Poll) {
            actions.push(Poll);
        }
        actions.push(UseQrCode);
    }
    if !flow.status.is_final() {
        actions.push(CancelAuthentication);
    }
    actions
}

/// Whether `checkRecoveryCode` is offered: the user had recovery codes when the flow started,
/// and the flow waits for the user's device (a choice, a push or a passcode).
fn recovery_code_allowed(flow: &Flow) -> bool {
    flow.data.recovery_codes && waits_for_the_users_device(flow.status)
}

/// Whether the flow is asking the user for their device: a choice, a push or a passcode.
fn waits_for_the_users_device(status: FlowStatus) -> bool {
    matches!(
        status,
        FlowStatus::DeviceSelectionRequired
            | FlowStatus::PushConfirmationWaiting
            | FlowStatus::PushConfirmationRejected
            | FlowStatus::PushConfirmationTimedOut
            | FlowStatus::OtpRequired
    )
}

/// Whether the flow offers a QR login as the alternative (`useQrCode`): on the hosted prompt,
/// while the user is being asked, when they have a phone with the app.
fn offers_qr(flow: &Flow) -> bool {
    flow.data.options.hosted.is_some()
        && waits_for_the_users_device(flow.status)
        && flow
            .data
            .devices
            .iter()
            .any(|d| d.device_type == FlowDeviceType::Mobile)
}

fn not_allowed(flow: &Flow) -> DomainError {
    let allowed = allowed_actions(flow);
    let names: Vec<&str> = allowed.iter().map(|a| a.as_str()).collect();
    let message = if names.is_empty() {
        format!("the flow is {} and allows no action", flow.status.as_str())
    } else {
        format!(
            "not allowed while the flow is {}; allowed: {}",
            flow.status.as_str(),
            names.join(", ")
        )
    };
    DomainError::new(ErrorCode::ActionNotAllowed, message).with_allowed_actions(allowed)
}

fn event(ctx: &Ctx, action: &str, from: Option<FlowStatus>, to: FlowStatus) -> FlowEvent {
    FlowEvent {
        at: ctx.now(),
        action: action.to_string(),
        from_status: from.map(|s| s.as_str().to_string()),
        to_status: to.as_str().to_string(),
        error: None,
    }
}

/// Moves `flow` (at its loaded version) to `status` with `data`, recording `action`, and wakes
/// its pollers. `None` when another move came first, or when the move ends the flow by the
/// user's bypass and the bypass is no longer in force ([`try_move`] tells the two apart). The
/// policy decision the action's step made (`decided`) is recorded with the move.
async fn move_to(
    ctx: &Ctx,
    flow: &Flow,
    action: &str,
    status: FlowStatus,
    data: Data,
    decided: Option<&policy::Decided>,
) -> Result<Option<Flow>, DomainError> {
    let moved = try_move(ctx, flow, action, status, data, decided).await?;
    Ok(match moved {
        Move::Moved(moved) => Some(*moved),
        Move::Lost | Move::BypassCleared => None,
    })
}

/// What [`try_move`] did.
enum Move {
    /// The flow moved: as it now stands (boxed: a flow is large beside the other variants).
    Moved(Box<Flow>),
    /// Another move came first.
    Lost,
    /// The move ended the flow by the user's bypass, which was cleared since the action read
    /// it: the flow did not move.
    BypassCleared,
}

/// [`move_to`], telling a lost move from a bypass cleared since it was read. A move that ends
/// the flow by the user's bypass is made only while that bypass is in force, checked by the
/// move's own write, so no flow ends by a bypass once its clearing has been answered. The
/// policy decision the action's step made (`decided`) is recorded by the move's write, with its
/// audit record: only a move that is made records it.
async fn try_move(
    ctx: &Ctx,
    flow: &Flow,
    action: &str,
    status: FlowStatus,
    data: Data,
    decided: Option<&policy::Decided>,
) -> Result<Move, DomainError> {
    let by_bypass = data
        .result
        .as_ref()
        .is_some_and(|r| r.status == FlowResultStatus::Bypassed);
    let stored = next_stored(ctx, flow, status, &data)?;
    let while_bypassed = match (by_bypass, &stored.user_id) {
        (true, Some(user_id)) => Some(store::WhileBypassed {
            application_id: &stored.application_id,
            user_id,
            now: stored.updated_at,
        }),
        (true, None) => return Err(DomainError::Internal("a bypassed flow without its user")),
        (false, _) => None,
    };
    // A final move writes its `flow.completed` record with it, all or nothing.
    let completed = if status.is_final() {
        super::audit::appended(
            ctx,
            vec![super::audit::flow_completed(
                stored.application_id.as_str(),
                stored.user_id.as_ref().map_or("", UserId::as_str),
                &stored.id.to_string(),
                status.as_str(),
            )],
        )?
    } else {
        Vec::new()
    };
    let decision = match (decided, &stored.user_id) {
        (Some(decided), Some(user)) => Some(policy::recorded_with(
            ctx,
            &stored.application_id,
            user,
            Some(stored.id.as_str()),
            decided,
        )?),
        (Some(_), None) => return Err(DomainError::Internal("a flow decided without its user")),
        (None, _) => None,
    };
    let records: Vec<_> = completed
        .into_iter()
        .chain(decision.iter().flat_map(|d| d.audit.iter().cloned()))
        .collect();
    let row = decision.as_ref().map(policy::RecordedWith::row);
    let (moved, queued) = store::transition_recording(
        &ctx.db,
        &stored,
        flow.stored.version,
        &event(ctx, action, Some(flow.status), status),
        while_bypassed,
        &records,
        row.as_ref(),
    )
    .await?;
    match moved {
        store::Transitioned::Moved => {}
        store::Transitioned::Lost => return Ok(Move::Lost),
        store::Transitioned::BypassCleared => return Ok(Move::BypassCleared),
    }
    if queued {
        ctx.events.announce(&[Topic::WebhookOutbox]);
    }
    announce_moved(ctx, &stored, action, flow.status, status);
    if status.is_final() {
        // A device held for a passcode is rejected however the flow ends: also by a move whose
        // own data no longer shows the hold (a QR approval drops the passcode step), so the
        // flow as it stood before the move is looked at too.
        for held in held_pairings(&flow.data, &data) {
            if let Err(e) = pairing::reject_held(ctx, held).await {
                tracing::warn!(error = %e, flow_id = %stored.id, "could not reject the flow's held device");
            }
        }
    }
    if status.is_final()
        && let Some(qr_session) = &data.qr
        && let Err(e) = super::qr::withdraw_for_flow(ctx, qr_session).await
    {
        tracing::warn!(error = %e, flow_id = %stored.id, "could not withdraw the flow's QR code");
    }
    Ok(Move::Moved(Box::new(Flow {
        stored,
        status,
        data,
    })))
}

/// The flow `flow` (as loaded) as it moves to `status` with `data`: its next version.
fn next_stored(
    ctx: &Ctx,
    flow: &Flow,
    status: FlowStatus,
    data: &Data,
) -> Result<StoredFlow, DomainError> {
    let mut stored = flow.stored.clone();
    stored.status = status.as_str().to_string();
    stored.version = flow.stored.version + 1;
    stored.data =
        serde_json::to_string(data).map_err(|_| DomainError::Internal("encoding a flow's data"))?;
    stored.authentication_id = match status {
        FlowStatus::PushConfirmationWaiting | FlowStatus::OtpRequired => data
            .otp
            .as_ref()
            .and_then(|o| o.authentication_id.clone())
            .or_else(|| data.push.as_ref().map(|p| p.authentication_id.clone())),
        _ => None,
    };
    stored.updated_at = ctx.now();
    Ok(stored)
}

/// Logs a move just committed and wakes the flow's pollers.
fn announce_moved(ctx: &Ctx, stored: &StoredFlow, action: &str, from: FlowStatus, to: FlowStatus) {
    tracing::info!(
        flow_id = %stored.id,
        action,
        from = from.as_str(),
        to = to.as_str(),
        "flow moved"
    );
    ctx.events.announce(&[Topic::Flow(stored.id.to_string())]);
}

fn finished(mut data: Data, result: FlowResult) -> Data {
    data.result = Some(result);
    data
}

fn result(status: FlowResultStatus) -> FlowResult {
    FlowResult {
        status,
        attributes: BTreeMap::new(),
        authentication_id: None,
        enrollment_id: None,
        policy: None,
    }
}

fn attributes_of(record: &Authentication) -> BTreeMap<String, serde_json::Value> {
    record
        .attributes
        .as_deref()
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default()
}

/// What the flow's push ending means for the flow, if it moves it.
fn after_push(flow: &Flow, record: &Authentication) -> Option<(&'static str, FlowStatus, Data)> {
    let data = flow.data.clone();
    match record.state {
        AuthenticationState::Pending => None,
        AuthenticationState::Approved => {
            let mut done = result(FlowResultStatus::Authenticated);
            done.attributes = attributes_of(record);
            done.authentication_id = Some(record.id.clone());
            Some((
                "pushAnswered",
                FlowStatus::MfaCompleted,
                finished(data, done),
            ))
        }
        // On the hosted prompt a denial ends the flow: the user said no on their phone, and
        // the page returns to the application with that answer.
        AuthenticationState::Denied if flow.data.options.hosted.is_some() => {
            let mut done = result(FlowResultStatus::Denied);
            done.authentication_id = Some(record.id.clone());
            let mut data = data;
            data.otp = None;
            Some(("pushAnswered", FlowStatus::MfaFailed, finished(data, done)))
        }
        AuthenticationState::Denied => {
            let mut data = data;
            data.otp = None;
            Some(("pushAnswered", FlowStatus::PushConfirmationRejected, data))
        }
        AuthenticationState::Expired => {
            let mut data = data;
            data.otp = None;
            Some(("pushExpired", FlowStatus::PushConfirmationTimedOut, data))
        }
        // A push this flow withdrew ends the flow by the action that withdrew it.
        AuthenticationState::Failed if record.failure_reason.as_deref() == Some("canceled") => None,
        AuthenticationState::Failed => {
            let mut done = result(FlowResultStatus::Failed);
            done.authentication_id = Some(record.id.clone());
            Some(("pushFailed", FlowStatus::MfaFailed, finished(data, done)))
        }
    }
}

/// The move the server makes on its own, if one is due: the flow expired, its push ended, or
/// the primary device decided on the device it pairs.
async fn due_move(
    ctx: &Ctx,
    flow: &Flow,
    ended: Option<&Authentication>,
) -> Result<Option<(&'static str, FlowStatus, Data)>, DomainError> {
    if flow.status.is_final() {
        return Ok(None);
    }
    let now = ctx.now();
    if now >= flow.stored.expires_at {
        let data = finished(flow.data.clone(), result(FlowResultStatus::Expired));
        return Ok(Some(("expire", FlowStatus::MfaFailed, data)));
    }
    if let Some(due) = after_qr(ctx, flow).await? {
        return Ok(Some(due));
    }
    if let Some(push) = flow.watched_push() {
        if let Some(record) = ended.filter(|e| &e.id == push) {
            return Ok(after_push(flow, record));
        }
        if let Some(record) = authentications::get(&ctx.db, push, now).await? {
            return Ok(after_push(flow, &record));
        }
        return Ok(None);
    }
    if flow.status == FlowStatus::MobilePairingRequired
        && let Some(pairing) = &flow.data.pairing
        && pairing.state == EnrollmentState::PendingVerification.as_str()
    {
        let state = pairing_state(ctx, &pairing.enrollment_id).await?;
        if state != EnrollmentState::PendingVerification {
            let mut data = flow.data.clone();
            if let Some(p) = data.pairing.as_mut() {
                p.state = state.as_str().to_string();
            }
            return Ok(Some((
                "pairingVerified",
                FlowStatus::MobilePairingRequired,
                data,
            )));
        }
    }
    Ok(None)
}

/// Where the enrollment a flow pairs stands (a decided verification settled first; a removed
/// enrollment counts as rejected).
async fn pairing_state(ctx: &Ctx, id: &EnrollmentId) -> Result<EnrollmentState, DomainError> {
    Ok(match enrollments::by_id(&ctx.db, id).await? {
        Some(e) => device_verification::settled(ctx, e).await?.status,
        None => EnrollmentState::Rejected,
    })
}

/// Applies the moves that are due, then answers the flow as it stands.
async fn refresh(ctx: &Ctx, flow: Flow) -> Result<Flow, DomainError> {
    refresh_knowing(ctx, flow, None).await
}

/// [`refresh`], told of `ended`, a push that has just ended as stored (the follow-up's event):
/// the first look at the flow's push takes it instead of reading it again.
async fn refresh_knowing(
    ctx: &Ctx,
    mut flow: Flow,
    mut ended: Option<&Authentication>,
) -> Result<Flow, DomainError> {
    // A lost race means someone else moved it: read again and re-derive (bounded).
    for _ in 0..4 {
        let due = due_move(ctx, &flow, ended.take()).await?;
        let Some((action, status, data)) = due else {
            return Ok(flow);
        };
        let pending_push = flow.watched_push().cloned();
        match move_to(ctx, &flow, action, status, data, None).await? {
            Some(next) => {
                // Signed in by the QR code: the push still on the phone is withdrawn.
                if action == QR_ANSWERED
                    && next.status.is_final()
                    && let Some(push) = pending_push
                {
                    outcome::record(ctx, &push, Ending::Canceled).await?;
                }
                flow = next;
            }
            None => flow = reload(ctx, &flow).await?,
        }
    }
    Ok(flow)
}

/// The flow's own move recording its QR session's answer.
const QR_ANSWERED: &str = "qrAnswered";

/// What the flow's QR session ending means for the flow, if it moves it: approved by the
/// flow's user, the flow completes with the QR step's attributes; denied on the hosted prompt,
/// it ends `denied`; expired or withdrawn, the code is no longer shown.
async fn after_qr(
    ctx: &Ctx,
    flow: &Flow,
) -> Result<Option<(&'static str, FlowStatus, Data)>, DomainError> {
    let Some(session) = &flow.data.qr else {
        return Ok(None);
    };
    let Some(ended) = super::qr::flow_outcome(ctx, &flow.stored.id, session).await? else {
        return Ok(None);
    };
    let mut data = flow.data.clone();
    data.qr = None;
    match ended {
        Ok(approval) if flow.stored.user_id.as_ref() == Some(&approval.user_id) => {
            data.otp = None;
            let mut done = result(FlowResultStatus::Authenticated);
            done.attributes = approval.attributes;
            done.authentication_id = approval.follow_up_id;
            done.enrollment_id = Some(approval.enrollment_id);
            done.policy = data.policy.clone();
            Ok(Some((
                QR_ANSWERED,
                FlowStatus::MfaCompleted,
                finished(data, done),
            )))
        }
        // The session is restricted to the flow's user; anyone else never completes the flow.
        Ok(_) => {
            tracing::warn!(flow_id = %flow.stored.id, "a QR approval by another user was ignored");
            Ok(Some(("qrExpired", flow.status, data)))
        }
        Err(QrSessionState::Denied) if flow.data.options.hosted.is_some() => {
            let mut done = result(FlowResultStatus::Denied);
            done.policy = data.policy.clone();
            Ok(Some((
                QR_ANSWERED,
                FlowStatus::MfaFailed,
                finished(data, done),
            )))
        }
        Err(QrSessionState::Denied) => Ok(Some((QR_ANSWERED, flow.status, data))),
        Err(_) => Ok(Some(("qrExpired", flow.status, data))),
    }
}

/// `useQrCode`: shows a QR code the flow's user scans with the app instead; again, a fresh one
/// (the previous code stops working unless it was already answered, which the flow applies
/// first).
async fn use_qr_code(ctx: &Ctx, flow: &Flow) -> Result<(FlowStatus, Data), DomainError> {
    // The code shown so far is withdrawn by `act` once the new one is stored: withdrawn
    // earlier, a racing read would see the flow name a withdrawn code and drop it.
    let mut data = flow.data.clone();
    let options = &data.options;
    let session = super::qr::create_for_flow(
        ctx,
        super::qr::FlowQrRequest {
            application_id: &flow.stored.application_id,
            flow_id: &flow.stored.id,
            user_id: flow.user()?,
            context: tessera_protocol::authentication::AccessContext {
                application_name: options.application_name.clone(),
                application_icon_url: options.application_icon_url.clone(),
                ip: options.accessing_ip.clone(),
                location: None,
            },
            expires_at: flow.stored.expires_at,
        },
    )
    .await?;
    data.qr = Some(session);
    Ok((flow.status, data))
}

/// The flow as shown: its state and, while one is shown, its QR code (`with_image`: as SVG).
async fn shown(ctx: &Ctx, flow: &Flow, with_image: bool) -> Result<FlowState, DomainError> {
    let mut state = flow.state();
    if let Some(session) = &flow.data.qr
        && !flow.status.is_final()
    {
        state.qr = super::qr::flow_view(ctx, &flow.stored.id, session, with_image).await?;
    }
    Ok(state)
}

/// The flow's QR session moved (answered, or its follow-up settled): the flow follows it and
/// its waiters wake. Failures are logged: reads derive the same move.
/// (Boxed: the QR module calls it while settling, and the flow reads its QR session.)
pub(crate) fn qr_session_moved<'a>(
    ctx: &'a Ctx,
    id: &'a FlowId,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        let moved = async {
            if let Some(stored) = store::get(&ctx.db, id).await? {
                refresh(ctx, Flow::from_stored(stored)?).await?;
            }
            Ok::<(), DomainError>(())
        };
        if let Err(e) = moved.await {
            tracing::warn!(error = %e, flow_id = %id, "a flow could not follow its QR session");
        }
    })
}

/// Starts a flow for a user the customer's first factor authenticated, or (with `passkey`
/// and no user) a passkey sign-in that the passkey binds to its user.
pub(crate) async fn create(
    ctx: &Ctx,
    app: &Application,
    body: CreateFlowRequest,
) -> Result<FlowState, DomainError> {
    // The user and the application's passcode options are read side by side (on PostgreSQL
    // one round trip where there were two); the user is checked first, as before.
    let (user_known, policy) = tokio::join!(
        user_known(ctx, &app.id, &body),
        applications::otp_policy(&ctx.db, &app.id),
    );
    create_as_read(
        ctx,
        app,
        body,
        user_known,
        policy.map_err(DomainError::from),
    )
    .await
}

/// [`create`] for the application the API key `presented` authenticates. While the key's last
/// application is remembered (`super::api_keys`), the key is checked by the read of the
/// application's passcode options, made beside the user's: on PostgreSQL the call waits for one
/// round trip before its write where it waited for two. A read that finds nothing (the key
/// rotated) is answered the long way, so the answer is the one it would have been.
pub(crate) async fn create_by_key(
    ctx: &Ctx,
    presented: &super::api_keys::PresentedKey,
    body: CreateFlowRequest,
) -> Result<FlowState, DomainError> {
    let body_ref = &body;
    let hinted = super::api_keys::read_under_hint(ctx, presented, |app_id, digest| async move {
        let (user_known, found) = tokio::join!(
            user_known(ctx, &app_id, body_ref),
            applications::otp_policy_with_key(&ctx.db, &app_id, &digest),
        );
        Ok(found?.map(|(app, policy)| (app, policy, user_known)))
    })
    .await?;
    if let Some((app, policy, user_known)) = hinted {
        return create_as_read(ctx, &app, body, user_known, Ok(policy)).await;
    }
    let app = super::api_keys::authenticate(ctx, presented).await?;
    create(ctx, &app, body).await
}

/// Whether the user a new flow names (if it names one) is the application's.
async fn user_known(
    ctx: &Ctx,
    app: &ApplicationId,
    body: &CreateFlowRequest,
) -> Result<(), DomainError> {
    match (&body.user_id, body.passkey) {
        (Some(user), false) => super::users::require_user(ctx, app, user).await.map(drop),
        _ => Ok(()),
    }
}

/// [`create`] once the user was looked up (`user_known`) and the application's passcode
/// options read (`policy`).
async fn create_as_read(
    ctx: &Ctx,
    app: &Application,
    body: CreateFlowRequest,
    user_known: Result<(), DomainError>,
    policy: Result<applications::OtpPolicy, DomainError>,
) -> Result<FlowState, DomainError> {
    match (&body.user_id, body.passkey) {
        (Some(_), false) => user_known?,
        (None, true) => {
            if !body.mandatory_methods.is_empty() {
                return Err(DomainError::invalid(
                    "a passkey sign-in has no user to register methods for: leave mandatory_methods out",
                ));
            }
        }
        (Some(_), true) => {
            return Err(DomainError::invalid(
                "passkey starts a sign-in without a user name: leave user_id out",
            ));
        }
        (None, false) => {
            return Err(DomainError::invalid(
                "user_id is required (or passkey: true for a passkey sign-in without a user name)",
            ));
        }
    }
    let ttl = body.expires_in.unwrap_or(DEFAULT_TTL);
    if !(60..=3600).contains(&ttl) {
        return Err(DomainError::invalid(
            "expires_in must be between 60 and 3600 seconds",
        ));
    }
    check_fields(&body.fields)?;
    for (text, max, what) in [
        (&body.message, 256, "message"),
        (&body.application_name, 128, "application_name"),
        (&body.application_icon_url, 256, "application_icon_url"),
        (&body.accessing_ip, 256, "accessing_ip"),
        (&body.user_agent, 512, "user_agent"),
        (&body.admin_message, 256, "admin_message"),
    ] {
        if let Some(t) = text {
            check_text(t, max, what)?;
        }
    }
    if let Some(prompt) = &body.hosted {
        hosted::check_prompt(prompt)?;
    }
    let policy = policy?;
    let mut channels = policy.backup_channels.clone();
    for (channel, choice) in [
        (BackupChannel::Sms, body.sms_backup),
        (BackupChannel::Voice, body.voice_backup),
        (BackupChannel::Email, body.email_backup),
    ] {
        match choice {
            Some(true) => channels.push(channel),
            Some(false) => channels.retain(|c| *c != channel),
            None => {}
        }
    }
    channels.sort();
    channels.dedup();
    let mandatory = merged(&policy.mandatory_methods, &body.mandatory_methods);
    let options = Options {
        application_name: body.application_name.unwrap_or_else(|| app.name.clone()),
        application_icon_url: body.application_icon_url,
        accessing_ip: body.accessing_ip,
        user_agent: body.user_agent,
        message: body.message,
        fields: body.fields,
        number_matching: body.number_matching,
        use_code: body.use_code.unwrap_or(policy.use_code),
        otp_fallback: body.otp_fallback.unwrap_or(policy.otp_fallback),
        backup_channels: channels,
        admin_message: body.admin_message,
        mandatory_methods: mandatory,
        device_selection: body.device_selection.unwrap_or_default(),
        hosted: body.hosted,
        passkey: body.passkey,
    };
    let mut data = Data {
        options,
        authorization_nonce: DeviceRegistration::new_nonce(),
        devices: Vec::new(),
        selected_device: None,
        push: None,
        otp: None,
        pairing: None,
        mfa_setup: None,
        result: None,
        policy: None,
        recovery_codes: false,
        fido: None,
        qr: None,
    };
    let now = ctx.now();
    let id = FlowId::generate();
    let status = if body.passkey {
        // Nothing to choose without a user: the passkey ceremony starts straight away.
        let (options, ceremony_id) =
            fido::authentication::start_passkey(ctx, app, id.as_str()).await?;
        data.fido = Some(FidoStep {
            ceremony_id,
            request_options: Some(options),
            creation_options: None,
            registering: None,
        });
        FlowStatus::AssertionRequired
    } else {
        FlowStatus::AuthenticationRequired
    };
    let stored = StoredFlow {
        id,
        application_id: app.id.clone(),
        user_id: body.user_id,
        status: status.as_str().to_string(),
        version: 1,
        data: serde_json::to_string(&data)
            .map_err(|_| DomainError::Internal("encoding a flow's data"))?,
        authentication_id: None,
        created_at: now,
        updated_at: now,
        expires_at: now + i64::from(ttl),
    };
    let browser_token = data
        .options
        .hosted
        .is_some()
        .then(hosted::new_browser_token);
    let digest = browser_token.as_ref().map(|t| hosted::token_digest(t));
    let token_row = match (&browser_token, &digest) {
        (Some(token), Some(digest)) => Some(store::BrowserToken {
            digest,
            token: token.as_str(),
        }),
        _ => None,
    };
    store::insert_with_browser_token(
        &ctx.db,
        &stored,
        &event(ctx, "create", None, status),
        token_row,
    )
    .await?;
    tracing::info!(flow_id = %stored.id, hosted = browser_token.is_some(), "flow created");
    let mut state = Flow {
        stored,
        status,
        data,
    }
    .state();
    state.prompt_url = browser_token.map(|t| hosted::prompt_url(ctx, &t));
    Ok(state)
}

/// A flow as it stands (moves that are due are applied first).
pub(crate) async fn get(
    ctx: &Ctx,
    app: &ApplicationId,
    id: &str,
) -> Result<FlowState, DomainError> {
    get_loaded(ctx, load(ctx, app, id).await?).await
}

/// [`get`] for the application the API key `presented` authenticates, the key checked by the
/// flow's read while its application is remembered ([`load_by_key`]).
pub(crate) async fn get_by_key(
    ctx: &Ctx,
    presented: &super::api_keys::PresentedKey,
    id: &str,
) -> Result<FlowState, DomainError> {
    if let Some((_, flow)) = load_by_key(ctx, presented, id).await? {
        return get_loaded(ctx, flow).await;
    }
    let app = super::api_keys::authenticate(ctx, presented).await?;
    get(ctx, &app.id, id).await
}

/// [`get`] once the flow was read.
async fn get_loaded(ctx: &Ctx, flow: Flow) -> Result<FlowState, DomainError> {
    let flow = refresh(ctx, flow).await?;
    let mut state = shown(ctx, &flow, false).await?;
    if flow.data.options.hosted.is_some() {
        state.prompt_url = store::browser_token(&ctx.db, &flow.stored.id)
            .await?
            .map(|t| hosted::prompt_url(ctx, &t));
    }
    Ok(state)
}

/// What the hosted prompt page may see of a flow (before it is put into words).
pub(crate) struct HostedView {
    /// The flow as the customer API answers it (without its `prompt_url`).
    pub state: FlowState,
    /// Its version (changes with every move).
    pub version: i64,
    /// The application's name as shown on the phone.
    pub application_name: String,
    /// The headline shown on the phone.
    pub message: Option<String>,
    /// The hosted prompt's settings.
    pub prompt: HostedPrompt,
}

/// A hosted flow as it stands; with `seen` equal to its version, waits up to `wait` for it to
/// move (event driven: the flow's announcements, or its pairing's while the app's device
/// pairs), bounded by the flow's and its push's expiry so their moves are seen on time.
pub(crate) async fn hosted_view(
    ctx: &Ctx,
    app: &ApplicationId,
    id: &FlowId,
    seen: Option<i64>,
    wait: Duration,
) -> Result<HostedView, DomainError> {
    let id = id.to_string();
    let flow = refresh(ctx, load(ctx, app, &id).await?).await?;
    let flow = match seen {
        Some(version) if version == flow.stored.version && !flow.status.is_final() => {
            let mut wait = wait
                .min(Duration::from_secs(MAX_WAIT_SECONDS))
                .min(ctx.until(flow.stored.expires_at));
            if let Some(push) = flow.watched_push().and(flow.data.push.as_ref()) {
                wait = wait.min(ctx.until(push.expires_at));
            }
            let topic = match (&flow.status, &flow.data.pairing) {
                (FlowStatus::MobilePairingRequired, Some(p)) => {
                    Topic::Enrollment(p.enrollment_id.to_string())
                }
                _ => Topic::Flow(id.clone()),
            };
            wait_for(
                &ctx.events,
                topic,
                wait,
                || async { refresh(ctx, load(ctx, app, &id).await?).await },
                |f| f.stored.version != version,
            )
            .await?
        }
        _ => flow,
    };
    let prompt = flow
        .data
        .options
        .hosted
        .clone()
        .ok_or_else(flow_not_found)?;
    Ok(HostedView {
        state: shown(ctx, &flow, true).await?,
        version: flow.stored.version,
        application_name: flow.data.options.application_name.clone(),
        message: flow.data.options.message.clone(),
        prompt,
    })
}

/// The flow's history, oldest first.
pub(crate) async fn history(
    ctx: &Ctx,
    app: &ApplicationId,
    id: &str,
) -> Result<FlowHistory, DomainError> {
    let flow = load(ctx, app, id).await?;
    let parse = |s: &str| {
        FlowStatus::parse(s).ok_or(DomainError::Internal("a flow event has an unknown status"))
    };
    let events = store::events(&ctx.db, &flow.stored.id)
        .await?
        .into_iter()
        .map(|e| {
            Ok(FlowEventRecord {
                at: e.at,
                action: e.action,
                from_status: e.from_status.as_deref().map(parse).transpose()?,
                to_status: parse(&e.to_status)?,
                error: e
                    .error
                    .map(|c| serde_json::from_value(serde_json::Value::String(c)))
                    .transpose()
                    .map_err(|_| DomainError::Internal("a flow event has an unknown error"))?,
            })
        })
        .collect::<Result<_, DomainError>>()?;
    Ok(FlowHistory { events })
}

/// Applies one action to a flow.
pub(crate) async fn act(
    ctx: &Ctx,
    app: &Application,
    id: &str,
    action: FlowAction,
) -> Result<FlowState, DomainError> {
    act_on(ctx, app, load(ctx, &app.id, id).await?, action).await
}

/// [`act`] for the application the API key `presented` authenticates, the key checked by the
/// flow's read while its application is remembered ([`load_by_key`]).
pub(crate) async fn act_by_key(
    ctx: &Ctx,
    presented: &super::api_keys::PresentedKey,
    id: &str,
    action: FlowAction,
) -> Result<FlowState, DomainError> {
    if let Some((app, flow)) = load_by_key(ctx, presented, id).await? {
        return act_on(ctx, &app, flow, action).await;
    }
    let app = super::api_keys::authenticate(ctx, presented).await?;
    act(ctx, &app, id, action).await
}

/// [`act`] on the flow as read (`loaded`).
async fn act_on(
    ctx: &Ctx,
    app: &Application,
    loaded: Flow,
    action: FlowAction,
) -> Result<FlowState, DomainError> {
    let flow = refresh(ctx, loaded).await?;
    // A poll is a read: it answers the flow as it stands, waiting only where a wait can end.
    if let FlowAction::Poll { wait } = action {
        if !allowed_actions(&flow).contains(&FlowActionName::Poll) {
            return shown(ctx, &flow, false).await;
        }
        return poll(ctx, flow, wait.unwrap_or(0)).await;
    }
    if flow.status.is_final() {
        if flow
            .data
            .result
            .as_ref()
            .is_some_and(|r| r.status == FlowResultStatus::Expired)
        {
            return Err(DomainError::new(ErrorCode::FlowExpired, "the flow expired"));
        }
        return Err(not_allowed(&flow));
    }
    if !allowed_actions(&flow).contains(&action.name()) {
        return Err(not_allowed(&flow));
    }
    let name = action.name().as_str();
    // Claim the flow before any side effect: a racing action on it is refused here. An
    // `authenticate` that starts a push reads what the start decides from beside the claim (on
    // PostgreSQL one round trip fewer): reads only, which count only once the claim is won.
    let (claim, read_early) = match starts_push_for(&flow, &action) {
        Some(user) => {
            let policy_facts = policy_facts_of(&flow.data);
            let (claim, read) = tokio::join!(
                Claim::take(ctx, &flow),
                read_for_start(ctx, &app.id, user, policy_facts)
            );
            (claim?, Some(read))
        }
        None => (Claim::take(ctx, &flow).await?, None),
    };
    let Some(claim) = claim else {
        return Err(conflict());
    };
    let mut claimed = flow.clone();
    claimed.stored.version = claim.version;
    let mut mover = StepWrites::new(name);
    let mut step = take_step(ctx, app, &mut claimed, action.clone(), read_early, &mover).await;
    let mut reruns = 0;
    loop {
        // A push the step made moved the flow in its own write (or found it moved first):
        // that write answers, whatever the step said after it.
        if let Some(written) = mover.written.take() {
            claim.ended_by_move();
            return push_written(ctx, &claimed, name, written).await;
        }
        let (status, data) = match step {
            Ok(next) => next,
            Err(e) => {
                let e = refused(ctx, &claimed, name, e).await;
                claim.release().await;
                return Err(e);
            }
        };
        let new_qr = data.qr.clone().filter(|q| flow.data.qr.as_ref() != Some(q));
        // A device this action paired and holds for a passcode (`authenticate` with a mobile
        // payload): rejected if the move is lost, as nothing would ever approve or reject it.
        let new_held = data
            .pairing
            .as_ref()
            .filter(|p| {
                held_for_passcode(&data)
                    && flow.data.pairing.as_ref().map(|q| &q.enrollment_id)
                        != Some(&p.enrollment_id)
            })
            .map(|p| p.enrollment_id.clone());
        let ending = status.is_final().then(|| data.clone());
        let policy_outcome = data.policy.clone();
        let decision = mover.decision();
        let moved = match try_move(ctx, &claimed, name, status, data, decision.as_ref()).await? {
            Move::Moved(moved) => Some(*moved),
            // The step ended the flow by the user's bypass, cleared since the step read it: the
            // step is taken again, as it would have been had the clearing come first (the device
            // is asked). The policy decided before the bypass counts for it, and its decision is
            // recorded by the move the step makes then.
            Move::BypassCleared if reruns < MAX_BYPASS_RERUNS => {
                reruns += 1;
                tracing::info!(flow_id = %claimed.stored.id, "bypass cleared meanwhile: the step is taken again");
                claimed.data.policy = policy_outcome;
                step = take_step(ctx, app, &mut claimed, action.clone(), None, &mover).await;
                continue;
            }
            // An action that ends the flow (a recovery code, a passcode or a passkey spent, a
            // cancellation) ends it also when the server moved it meanwhile to a step that does
            // not (its push answered no, its QR code expired): what the user spent is not wasted
            // on a `conflict`, and a flow whose push this action withdrew is not left waiting on it.
            Move::Lost | Move::BypassCleared => match ending {
                Some(data) => {
                    let data = |_: &Flow| data.clone();
                    let others = OtherClaims::WaitFor;
                    let decision = decision.as_ref();
                    end_on_latest(ctx, &claimed, name, status, data, others, decision).await?
                }
                None => None,
            },
        };
        claim.ended_by_move();
        return match moved {
            Some(moved) => {
                // A code this action replaced is no longer shown: it stops working now.
                if new_qr.is_some()
                    && let Some(previous) = &flow.data.qr
                {
                    super::qr::withdraw_for_flow(ctx, previous).await?;
                }
                // The push may have been answered before the flow recorded it.
                shown(ctx, &refresh(ctx, moved).await?, false).await
            }
            None => {
                // Someone moved it between the claim and now (its push was answered): withdraw a
                // QR code or a held device this action made (a push it sent to a phone was
                // written with its own move, [`StepWrites`]; one it made ended already), then
                // answer the flow as it stands.
                if let Some(qr) = &new_qr {
                    super::qr::withdraw_for_flow(ctx, qr).await?;
                }
                if let Some(held) = &new_held {
                    pairing::reject_held(ctx, held).await?;
                }
                after_lost_move(ctx, &claimed).await
            }
        };
    }
}

/// What a step writes with the flow's move, so that it stands exactly when the move does.
///
/// - A new push moves its flow in the push's own write, from the version its action claimed,
///   recorded under the action's name (`authentication::create_for_flow`). Nothing can then
///   answer the push before its flow shows it. What that write did is kept for [`act_on`],
///   which then makes no move of its own.
/// - The policy's decision for the flow ([`apply_policy_as_read`]) is recorded by whichever
///   write moves the flow: that push's write, or [`act_on`]'s move. A step whose move is lost
///   leaves no decision the flow does not show.
struct StepWrites<'a> {
    action: &'a str,
    written: std::sync::OnceLock<PushWritten>,
    /// The decision the step's policy made, to record with the move.
    decided: std::sync::Mutex<Option<policy::Decided>>,
}

/// What a push's write did with its flow ([`StepWrites`]).
enum PushWritten {
    /// The push was stored and the flow moved with it: the flow as it now stands.
    Moved(Box<Flow>),
    /// The flow moved first (its claim lapsed and another move came): no push was made.
    FlowLost,
}

impl<'a> StepWrites<'a> {
    fn new(action: &'a str) -> Self {
        Self {
            action,
            written: std::sync::OnceLock::new(),
            decided: std::sync::Mutex::new(None),
        }
    }

    /// Keeps what the push's write did (once: a step makes one push).
    fn wrote(&self, written: PushWritten) {
        if self.written.set(written).is_err() {
            tracing::warn!(action = self.action, "a step wrote a second push");
        }
    }

    /// Keeps the decision the step's policy made, for the write that moves the flow.
    fn decided(&self, decided: policy::Decided) {
        if let Ok(mut kept) = self.decided.lock() {
            *kept = Some(decided);
        }
    }

    /// The decision the step's policy made, if it made one.
    fn decision(&self) -> Option<policy::Decided> {
        self.decided.lock().ok().and_then(|kept| kept.clone())
    }
}

/// [`act_on`]'s answer once the step's push was written ([`PushWritten`]), the flow claimed as
/// `claimed`.
async fn push_written(
    ctx: &Ctx,
    claimed: &Flow,
    action: &str,
    written: PushWritten,
) -> Result<FlowState, DomainError> {
    match written {
        PushWritten::Moved(moved) => {
            announce_moved(ctx, &moved.stored, action, claimed.status, moved.status);
            // Its push was written with the move: nothing answered it before the flow showed
            // it, so nothing is to be read again.
            shown(ctx, &moved, false).await
        }
        PushWritten::FlowLost => after_lost_move(ctx, claimed).await,
    }
}

/// The answer to an action on `claimed` whose move another move came before: the flow as it
/// now stands if that move ended it, else `conflict`.
async fn after_lost_move(ctx: &Ctx, claimed: &Flow) -> Result<FlowState, DomainError> {
    let latest = refresh(ctx, reload(ctx, claimed).await?).await?;
    if latest.status.is_final() {
        shown(ctx, &latest, false).await
    } else {
        Err(conflict())
    }
}

/// The user whose push `action` starts on `flow`, if it starts one: an `authenticate` with
/// neither payload, on a flow with a user that is not waiting for a passkey or for its methods'
/// setup ([`authenticate`] then goes to [`start`]).
fn starts_push_for<'f>(flow: &'f Flow, action: &FlowAction) -> Option<&'f UserId> {
    let FlowAction::Authenticate {
        mobile_payload: None,
        authorization_payload: None,
    } = action
    else {
        return None;
    };
    if flow.awaits_passkey() || flow.status == FlowStatus::MfaSetupRequired {
        return None;
    }
    flow.stored.user_id.as_ref()
}

/// The step `action` takes on the flow `claimed` (claimed by it): where the flow moves and
/// with what. A passkey sign-in binds its user in `claimed`, which its move then records.
/// `read_early`: what a push's start decides from, read beside the claim ([`act_on`]).
async fn take_step(
    ctx: &Ctx,
    app: &Application,
    claimed: &mut Flow,
    action: FlowAction,
    read_early: Option<Result<StartReads, DomainError>>,
    mover: &StepWrites<'_>,
) -> Result<(FlowStatus, Data), DomainError> {
    match action {
        FlowAction::CheckAssertion { credential } if claimed.awaits_passkey() => {
            match check_passkey(ctx, app, claimed, credential).await {
                Ok((user, status, data)) => {
                    // Bound by the move below, which only the claim's version can make.
                    claimed.stored.user_id = Some(user);
                    Ok((status, data))
                }
                Err(e) => Err(e),
            }
        }
        FlowAction::Authenticate {
            mobile_payload,
            authorization_payload,
        } => {
            authenticate(
                ctx,
                app,
                claimed,
                mobile_payload,
                authorization_payload,
                read_early,
                mover,
            )
            .await
        }
        FlowAction::SelectDevice { device_id } => {
            let data = claimed.data.clone();
            use_device(ctx, app, claimed, data, &device_id, None, mover).await
        }
        FlowAction::UseCode {} => Ok(use_code(claimed)),
        FlowAction::CheckOtp { otp } => check_otp(ctx, app, claimed, &otp).await,
        FlowAction::ResendOtp {} => resend_otp(ctx, app, claimed).await,
        FlowAction::CancelAuthentication {} => cancel(ctx, claimed).await,
        FlowAction::ContinueAuthentication {} => {
            continue_authentication(ctx, app, claimed, mover).await
        }
        FlowAction::CheckRecoveryCode { recovery_code } => {
            check_recovery_code(ctx, app, claimed, &recovery_code).await
        }
        FlowAction::CheckAssertion { credential } => {
            check_assertion(ctx, app, claimed, credential).await
        }
        FlowAction::StartRegistration { method } => {
            start_registration(ctx, app, claimed, method).await
        }
        FlowAction::CheckRegistration {
            credential,
            nickname,
        } => check_registration(ctx, app, claimed, credential, nickname, mover).await,
        FlowAction::UseQrCode {} => use_qr_code(ctx, claimed).await,
        FlowAction::Poll { .. } => Err(not_allowed(claimed)),
    }
}

/// How many times an action's step is taken again because a bypass it ended the flow by was
/// cleared before its move (each time, another bypass granted meanwhile would have to be
/// cleared again before the move).
const MAX_BYPASS_RERUNS: u32 = 2;

/// Moves the flow `claimed` was claimed from to `status` (final) with `data` made from the flow
/// as it stands now (read again, its due moves applied): another move (the server's own,
/// [`due_move`], or a racing action's) may have come since the action's claim. The server's
/// move ends the action's claim, so another action may have claimed the flow since: `others`
/// says whether this waits for that action to move the flow or let it go. `None` when the flow
/// has ended meanwhile (or other actions kept holding it). A passkey sign-in's user, bound by
/// the claimed action, is bound by this move, and the policy decision its step made
/// (`decided`) is recorded with it.
async fn end_on_latest(
    ctx: &Ctx,
    claimed: &Flow,
    action: &str,
    status: FlowStatus,
    data: impl Fn(&Flow) -> Data,
    others: OtherClaims,
    decided: Option<&policy::Decided>,
) -> Result<Option<Flow>, DomainError> {
    let topic = Topic::Flow(claimed.stored.id.to_string());
    let mut current = claimed.clone();
    let mut waits = 0;
    // Bounded, as `refresh` is: each round lost to yet another move reads the flow again.
    let mut lost = 0;
    while lost < 4 {
        // Subscribed before the read: a claim released after it still wakes the wait below.
        let mut announced = ctx.events.subscribe(topic.clone());
        let mut latest = refresh(ctx, reload(ctx, &current).await?).await?;
        if latest.status.is_final() {
            return Ok(None);
        }
        // A claim at a version other than the one this action's claim made is another
        // action's (a move ends every claim, and a claim needs the flow unclaimed): it moves
        // the flow or is released first. Taken after this read, it changed the version, and
        // the move below is lost.
        if others == OtherClaims::WaitFor
            && latest.stored.version != claimed.stored.version
            && let Some(until_ms) = store::claim_held_until(
                &ctx.db,
                &latest.stored.id,
                latest.stored.version,
                ctx.now_ms(),
            )
            .await?
        {
            if waits == MAX_CLAIM_WAITS {
                tracing::info!(flow_id = %latest.stored.id, action, "flow held by other actions: not ended");
                return Ok(None);
            }
            waits += 1;
            let left = u64::try_from(until_ms.saturating_sub(ctx.now_ms())).unwrap_or(0);
            announced
                .wait(tokio::time::Instant::now() + Duration::from_millis(left))
                .await;
            current = latest;
            continue;
        }
        if claimed.stored.user_id.is_some() {
            latest.stored.user_id = claimed.stored.user_id.clone();
        }
        let ending = data(&latest);
        if let Some(moved) = move_to(ctx, &latest, action, status, ending, decided).await? {
            tracing::info!(flow_id = %moved.stored.id, action, "flow ended on its latest version");
            return Ok(Some(moved));
        }
        lost += 1;
        current = latest;
    }
    Ok(None)
}

/// What [`end_on_latest`] does when another action holds the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OtherClaims {
    /// Waits for that action's move or release (or for its claim to lapse), then ends the flow
    /// if that action did not: an action that spent something (a recovery code, a passkey
    /// assertion) never moves the flow from under another that is spending its own.
    WaitFor,
    /// Ends the flow all the same: a passcode locked out ends the flow whatever holds it.
    Override,
}

/// How many other actions' claims [`end_on_latest`] waits out before it leaves the flow to
/// them.
const MAX_CLAIM_WAITS: u32 = 4;

/// One action's hold on a flow, from its claim to its move or refusal. While it holds, other
/// actions on the flow are refused with `conflict`, also those that read the flow after the
/// claim; without it, each racing action could claim the flow from the one before and make
/// its move fail, and all of them be refused.
struct Claim {
    db: crate::store::Database,
    events: super::events::EventHub,
    id: FlowId,
    version: i64,
    held: bool,
}

impl Claim {
    /// Claims `flow` at the version it was read at; `None` when another action holds it or it
    /// moved since.
    async fn take(ctx: &Ctx, flow: &Flow) -> Result<Option<Self>, DomainError> {
        let now = ctx.now_ms();
        let taken = store::claim(
            &ctx.db,
            &flow.stored.id,
            flow.stored.version,
            now,
            now.saturating_add(CLAIM_LEASE_MS),
        )
        .await?;
        Ok(taken.then(|| Self {
            db: ctx.db.clone(),
            events: ctx.events.clone(),
            id: flow.stored.id.clone(),
            version: flow.stored.version + 1,
            held: true,
        }))
    }

    /// The action moved the flow, or the flow moved under it: a move ends the claim.
    fn ended_by_move(mut self) {
        self.held = false;
    }

    /// Ends the claim without a move (the action was refused).
    async fn release(mut self) {
        self.held = false;
        release_claim(&self.db, &self.events, &self.id, self.version).await;
    }
}

/// Ends the claim that moved flow `id` to `version`, and tells an action waiting for it
/// ([`end_on_latest`]); a failure leaves it to lapse.
async fn release_claim(
    db: &crate::store::Database,
    events: &super::events::EventHub,
    id: &FlowId,
    version: i64,
) {
    match store::release(db, id, version).await {
        Ok(()) => events.announce(&[Topic::Flow(id.to_string())]),
        Err(e) => tracing::warn!(error = %e, flow_id = %id, "could not release a flow's claim"),
    }
}

impl Drop for Claim {
    /// An action that stopped before its move (an error on the way, or its caller gone)
    /// releases its claim in the background; if even that cannot run, the claim lapses.
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (db, events) = (self.db.clone(), self.events.clone());
            let (id, version) = (self.id.clone(), self.version);
            runtime.spawn(async move { release_claim(&db, &events, &id, version).await });
        }
    }
}

/// Records a refused action; a locked passcode check also ends the flow.
async fn refused(ctx: &Ctx, flow: &Flow, action: &str, e: DomainError) -> DomainError {
    let Some(code) = e.code() else {
        return e;
    };
    if code == ErrorCode::OtpLocked {
        // A racing action may have claimed the flow meanwhile (its passcode taken before or
        // after this one): the lock ends the flow whatever moved since, unless that ended it.
        let locked =
            |latest: &Flow| finished(latest.data.clone(), result(FlowResultStatus::OtpLocked));
        if let Err(store_error) = end_on_latest(
            ctx,
            flow,
            action,
            FlowStatus::MfaFailed,
            locked,
            OtherClaims::Override,
            None,
        )
        .await
        {
            tracing::warn!(error = %store_error, "could not end a locked flow");
        }
        return e;
    }
    if let Err(store_error) = record_refusal(ctx, flow, action, code).await {
        tracing::warn!(error = %store_error, "could not record a refused flow action");
    }
    e
}

/// Records that `action` was refused with `code` (the flow stays where it is).
async fn record_refusal(
    ctx: &Ctx,
    flow: &Flow,
    action: &str,
    code: ErrorCode,
) -> Result<(), DomainError> {
    let mut refusal = event(ctx, action, Some(flow.status), flow.status);
    refusal.error = Some(code.as_str().to_string());
    store::record_refusal(&ctx.db, &flow.stored.id, &refusal).await?;
    Ok(())
}

/// `authenticate`: pairs the app's device (with a mobile payload), completes the flow with a
/// trusted device's authorization (seamless; a refused one is recorded and the flow falls back
/// to asking), or checks the mandatory methods and asks the default device (or the user to pick
/// one).
async fn authenticate(
    ctx: &Ctx,
    app: &Application,
    flow: &Flow,
    mobile_payload: Option<String>,
    authorization_payload: Option<String>,
    read_early: Option<Result<StartReads, DomainError>>,
    mover: &StepWrites<'_>,
) -> Result<(FlowStatus, Data), DomainError> {
    let mut data = flow.data.clone();
    if flow.awaits_passkey() {
        if mobile_payload.is_some() || authorization_payload.is_some() {
            return Err(DomainError::invalid(
                "a passkey sign-in has no user yet: authenticate asks for a new passkey challenge only",
            ));
        }
        let (options, ceremony_id) =
            fido::authentication::start_passkey(ctx, app, flow.stored.id.as_str()).await?;
        data.fido = Some(FidoStep {
            ceremony_id,
            request_options: Some(options),
            creation_options: None,
            registering: None,
        });
        return Ok((FlowStatus::AssertionRequired, data));
    }
    if mobile_payload.is_some() && authorization_payload.is_some() {
        return Err(DomainError::invalid(
            "send a mobile_payload or an authorization_payload, not both",
        ));
    }
    if let Some(jws) = authorization_payload {
        if flow.status == FlowStatus::MfaSetupRequired {
            return Err(DomainError::invalid(
                "while methods are missing, authenticate pairs the app's device: send its mobile_payload",
            ));
        }
        if let Some(ended) = apply_policy(ctx, app, flow, &mut data, mover).await? {
            return Ok(ended);
        }
        if !data
            .policy
            .as_ref()
            .is_none_or(|p| p.methods.is_empty() || p.methods.iter().any(|m| mobile_method(*m)))
        {
            return Err(DomainError::new(
                ErrorCode::PolicyDenied,
                "the policy does not allow the mobile app for this sign-in",
            ));
        }
        let flow = &Flow {
            data: data.clone(),
            ..flow.clone()
        };
        match seamless(ctx, flow, &jws).await {
            Ok(done) => return Ok((FlowStatus::MfaCompleted, finished(data, done))),
            Err(DomainError::Refused { code, message, .. }) => {
                tracing::info!(flow_id = %flow.stored.id, %code, message, "device authorization refused; asking instead");
                record_refusal(ctx, flow, "authenticate", code).await?;
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(mobile_payload) = mobile_payload {
        let user = flow.user()?;
        // Whether the device is held for the passcode (the user has no active device to verify
        // it) is decided in the pairing's own write, not from a read made before it.
        let approve_by = passcode_channel(ctx, app, user, &data.options).await?;
        let relayed = pairing::relay_with(
            ctx,
            app,
            user,
            &RelayPairingRequest { mobile_payload },
            approve_by.is_some(),
        )
        .await?;
        let reply = relayed.response;
        data.push = None;
        data.otp = None;
        if let Some(channel) = approve_by
            && relayed.held
        {
            // The new device is approved by a passcode sent to the user's phone or email.
            match backup::send_to_contact(ctx, app, user, channel).await {
                Ok(challenge) => {
                    data.otp = Some(OtpStep {
                        source: channel.into(),
                        destination: Some(challenge.destination),
                        authentication_id: None,
                        challenge_id: Some(challenge.challenge_id),
                    });
                }
                Err(e) => {
                    // Nothing half done: the held device is rejected with the refused action.
                    pairing::reject_held(ctx, &reply.device.enrollment_id).await?;
                    return Err(e);
                }
            }
        }
        data.pairing = Some(FlowPairing {
            enrollment_id: reply.device.enrollment_id.clone(),
            server_payload: reply.server_payload,
            state: reply.device.status.as_str().to_string(),
        });
        return Ok((FlowStatus::MobilePairingRequired, data));
    }
    if flow.status == FlowStatus::MfaSetupRequired {
        return Err(DomainError::invalid(
            "while methods are missing, authenticate pairs the app's device: send its mobile_payload",
        ));
    }
    start(ctx, app, flow, data, read_early, mover).await
}

/// The devices held for a passcode by a flow that moves from `before` to `after`: each once.
fn held_pairings<'a>(before: &'a Data, after: &'a Data) -> Vec<&'a EnrollmentId> {
    let mut held: Vec<&EnrollmentId> = Vec::new();
    for data in [before, after] {
        if held_for_passcode(data)
            && let Some(pairing) = &data.pairing
            && !held.contains(&&pairing.enrollment_id)
        {
            held.push(&pairing.enrollment_id);
        }
    }
    held
}

/// Whether the flow's new device waits for a passcode sent to the user's phone or email.
fn held_for_passcode(data: &Data) -> bool {
    data.pairing
        .as_ref()
        .is_some_and(|p| p.state == EnrollmentState::PendingVerification.as_str())
        && data.otp.as_ref().is_some_and(|o| o.challenge_id.is_some())
}

/// The channel a new device pairing through this flow is approved by (seed 001: SMS, voice and
/// email devices may approve a new device pairing): when the application verifies new devices,
/// the first of the flow's backup channels that reaches a registered contact. It is used only
/// if the user has no active device to ask, which the pairing's write decides
/// ([`pairing::Relayed::held`]). `None`: the pairing goes as it would anyway (verified by the
/// primary device, or active at once).
async fn passcode_channel(
    ctx: &Ctx,
    app: &Application,
    user: &UserId,
    options: &Options,
) -> Result<Option<BackupChannel>, DomainError> {
    if applications::additional_device_policy(ctx.db.pool(), &app.id).await?
        != applications::AdditionalDevicePolicy::VerifyWithPrimary
    {
        return Ok(None);
    }
    let contacts = backup::get_contacts(ctx, &app.id, user).await?;
    Ok(options
        .backup_channels
        .iter()
        .copied()
        .find(|channel| match channel {
            BackupChannel::Sms | BackupChannel::Voice => contacts.phone.is_some(),
            BackupChannel::Email => contacts.email.is_some(),
        }))
}

/// Seamless device authorization: the flow's user's active device signed this flow's nonce with
/// its possession key, recently, for this server, and never before.
async fn seamless(ctx: &Ctx, flow: &Flow, jws: &str) -> Result<FlowResult, DomainError> {
    let bad = || {
        DomainError::new(
            ErrorCode::InvalidSignature,
            "the authorization payload is malformed or its signature does not verify",
        )
    };
    if jws.len() > tessera_protocol::MAX_ENVELOPE_BYTES {
        return Err(bad());
    }
    let claimed: DeviceAuthorization = envelope::unverified_payload(jws).map_err(|_| bad())?;
    let not_theirs = || {
        DomainError::new(
            ErrorCode::DeviceNotFound,
            "the authorizing device is not an active device of this flow's user",
        )
    };
    let enrollment = enrollments::by_id(&ctx.db, &claimed.enrollment_id)
        .await?
        .filter(|e| {
            e.application_id == flow.stored.application_id
                && flow.stored.user_id.as_ref() == Some(&e.user_id)
                && e.status == EnrollmentState::Active
        })
        .ok_or_else(not_theirs)?;
    let claims: DeviceAuthorization =
        verify_possession_signed(jws, MessageType::DeviceAuthorization, &enrollment)
            .ok_or_else(bad)?;
    if claims.v != tessera_protocol::PROTOCOL_VERSION
        || claims.enrollment_id != enrollment.enrollment_id
        || claims.user_id != enrollment.user_id
    {
        return Err(bad());
    }
    if claims.audience != ctx.public_url {
        return Err(DomainError::new(
            ErrorCode::AudienceMismatch,
            format!(
                "the authorization is meant for another server, not {}",
                ctx.public_url
            ),
        ));
    }
    let nonce_matches: bool = claims
        .flow_nonce
        .as_bytes()
        .ct_eq(flow.data.authorization_nonce.as_bytes())
        .into();
    if !nonce_matches {
        return Err(DomainError::new(
            ErrorCode::ResponseMismatch,
            "the authorization is bound to another flow",
        ));
    }
    let now = ctx.now();
    let lifetime = claims.expires_at - claims.issued_at;
    if claims.issued_at > now + CLOCK_SKEW_SECONDS
        || now >= claims.expires_at
        || !(1..=DEVICE_AUTHORIZATION_MAX_LIFETIME).contains(&lifetime)
    {
        return Err(DomainError::new(
            ErrorCode::StaleMessage,
            "the authorization expired or is from the future",
        ));
    }
    if claims.jti.is_empty() || claims.jti.len() > 64 {
        return Err(bad());
    }
    // An App Attested device proves its answers with App Attest assertions where the
    // application (attestation `require`) or the flow's policy asks for them. An authorization
    // payload carries none, so there it is refused and the flow asks the device by push, whose
    // answer carries one. The rule is the answers' own (`assertions::check_answer`).
    let mut conn = ctx.db.reader().await?;
    let check = assertions::check_answer(
        &mut conn,
        &AnswerAssertion {
            device: &enrollment,
            assertion: None,
            client_data_hash: None,
            required_by_policy: flow
                .data
                .policy
                .as_ref()
                .is_some_and(|p| p.app_attest_assertion),
            answered_id: flow.stored.id.as_str(),
            client_ip: flow
                .data
                .options
                .accessing_ip
                .as_deref()
                .unwrap_or_default(),
        },
    )
    .await?;
    drop(conn);
    if let AssertionCheck::Refused(code, _) = check {
        return Err(DomainError::new(
            code,
            "an App Attested device must answer with an App Attest assertion: an \
             authorization payload carries none",
        ));
    }
    let key = format!("authz:{}:{}", enrollment.enrollment_id, claims.jti);
    if !nonces::record_once(&ctx.db, &key, claims.expires_at + CLOCK_SKEW_SECONDS, now).await? {
        return Err(DomainError::new(
            ErrorCode::ReplayedMessage,
            "this authorization was already used",
        ));
    }
    // The device's attributes from the enrollment read above, not read again.
    let p = "pingid.authentication.";
    let mut attributes = BTreeMap::new();
    authentication::accessing_attributes(
        ctx,
        flow.data.options.accessing_ip.as_deref(),
        &mut attributes,
    );
    authentication::insert_device_attributes(&mut attributes, &enrollment);
    attributes.insert(
        format!("{p}type"),
        serde_json::json!("DEVICE_AUTHORIZATION"),
    );
    attributes.insert(format!("{p}amr"), serde_json::json!(["pop"]));
    tracing::info!(flow_id = %flow.stored.id, enrollment_id = %enrollment.enrollment_id, "flow authorized by a trusted device");
    Ok(FlowResult {
        status: FlowResultStatus::Authenticated,
        attributes,
        authentication_id: None,
        enrollment_id: Some(enrollment.enrollment_id),
        policy: flow.data.policy.clone(),
    })
}

/// Seconds a device's clock may run ahead of the server's.
const CLOCK_SKEW_SECONDS: i64 = 60;

/// Whether `method` is answered with the mobile app.
fn mobile_method(method: PolicyMethod) -> bool {
    matches!(
        method,
        PolicyMethod::MobilePush | PolicyMethod::MobileBiometrics | PolicyMethod::MobilePasscode
    )
}

fn device_method_rank(device: &FlowDevice, methods: &[PolicyMethod]) -> Option<usize> {
    methods.iter().position(|m| match device.device_type {
        FlowDeviceType::Mobile => mobile_method(*m),
        FlowDeviceType::Sms => *m == PolicyMethod::Sms,
        FlowDeviceType::Voice => *m == PolicyMethod::Voice,
        FlowDeviceType::Email => *m == PolicyMethod::Email,
        FlowDeviceType::OathToken => *m == PolicyMethod::Oath,
        FlowDeviceType::SecurityKey
        | FlowDeviceType::Platform
        | FlowDeviceType::Fido2Biometrics => *m == PolicyMethod::Fido2,
    })
}

/// The devices a `require` lets the flow offer, most preferred method first (all, in their
/// order, when it names no method).
fn shaped_devices(devices: Vec<FlowDevice>, methods: &[PolicyMethod]) -> Vec<FlowDevice> {
    if methods.is_empty() {
        return devices;
    }
    let mut ranked: Vec<(usize, FlowDevice)> = devices
        .into_iter()
        .filter_map(|d| device_method_rank(&d, methods).map(|rank| (rank, d)))
        .collect();
    ranked.sort_by_key(|(rank, _)| *rank);
    ranked.into_iter().map(|(_, d)| d).collect()
}

/// Decides the application's policy for the flow (once; recorded with the flow's id): a
/// `deny` ends it `MFA_FAILED` (result `denied`, with the reason), an `approve` completes it
/// with `POLICY_APPROVE`; a `require` is kept in `data` to shape the offered methods.
async fn apply_policy(
    ctx: &Ctx,
    app: &Application,
    flow: &Flow,
    data: &mut Data,
    writes: &StepWrites<'_>,
) -> Result<Option<(FlowStatus, Data)>, DomainError> {
    if data.policy.is_some() {
        return Ok(None);
    }
    let user = flow.user()?;
    // The devices the policy looks at and the policy in force are read side by side (on
    // PostgreSQL one round trip where there were two); without a policy nothing is decided.
    let (devices, current) = tokio::join!(
        device_verification::user_devices(ctx, &app.id, user),
        crate::store::policies::current(&ctx.db, &app.id),
    );
    // Devices that cannot be read fail the step: decided without them, a rule about devices
    // (a rooted one denied, say) would be passed over as if the user had none.
    let devices = devices?;
    let current = current?;
    let read = PolicyReads {
        devices: &devices,
        current: current.as_ref(),
        facts: None,
    };
    apply_policy_as_read(ctx, app, flow, data, read, writes).await
}

/// What [`apply_policy_as_read`] decides from, read by its caller.
struct PolicyReads<'a> {
    /// The user's devices, settled (as `device_verification::settled_devices` leaves them).
    devices: &'a [Enrollment],
    /// The policy in force.
    current: Option<&'a StoredPolicy>,
    /// Its facts read ahead, if they were (`policy::read_ahead`).
    facts: Option<policy::FactsAhead>,
}

impl<'a> PolicyReads<'a> {
    /// From a request's reads; their facts read ahead are taken (a decision uses them once).
    fn of(reads: &'a mut authentication::RequestReads) -> Self {
        Self {
            facts: reads.policy_facts.take(),
            devices: &reads.devices,
            current: reads.settings.policy.as_ref(),
        }
    }
}

/// [`apply_policy`] with what it decides from already read (`read`): no read of its own unless
/// the policy's rules count something that the facts read ahead do not hold. The decision is
/// kept in `writes`, recorded by the write that moves the flow.
async fn apply_policy_as_read(
    ctx: &Ctx,
    app: &Application,
    flow: &Flow,
    data: &mut Data,
    read: PolicyReads<'_>,
    writes: &StepWrites<'_>,
) -> Result<Option<(FlowStatus, Data)>, DomainError> {
    if data.policy.is_some() {
        return Ok(None);
    }
    let PolicyReads {
        devices,
        current,
        facts,
    } = read;
    let Some(current) = current else {
        return Ok(None);
    };
    let device = authentication::pick_among(devices, None).ok();
    let user = flow.user()?;
    let request = policy::Request {
        kind: RequestKind::Flow,
        accessing_ip: data.options.accessing_ip.as_deref(),
        device: device.map(policy::device_facts),
        fields: &data.options.fields,
    };
    let Some(decided) =
        policy::decide_as_read(ctx, &app.id, user, &request, Some(current), facts).await?
    else {
        return Ok(None);
    };
    let outcome = decided.decision.outcome();
    let effect = decided.decision.effect;
    writes.decided(decided);
    data.policy = Some(outcome.clone());
    match effect {
        PolicyEffect::Require => Ok(None),
        PolicyEffect::Deny => {
            let mut done = result(FlowResultStatus::Denied);
            done.policy = Some(outcome);
            Ok(Some((FlowStatus::MfaFailed, finished(data.clone(), done))))
        }
        PolicyEffect::Approve => {
            let mut done = result(FlowResultStatus::Authenticated);
            authentication::accessing_attributes(
                ctx,
                data.options.accessing_ip.as_deref(),
                &mut done.attributes,
            );
            done.attributes.insert(
                "pingid.authentication.type".into(),
                serde_json::json!("POLICY_APPROVE"),
            );
            done.policy = Some(outcome);
            Ok(Some((
                FlowStatus::MfaCompleted,
                finished(data.clone(), done),
            )))
        }
    }
}

/// What a flow's first step reads about its user, all in one round (on PostgreSQL one round
/// trip where there were five in a row, and each table read once where the user was read three
/// times and their phones three times): what the push it may send reads
/// ([`authentication::read_for_request`]: the user with their bypass, the application's
/// settings with its policy, the user's phones), and the user's unused recovery codes, OATH
/// tokens, FIDO credentials and backup contacts. The reads never shared a snapshot before
/// either; what must hold when the push is created (the bypass, the limits) is checked again in
/// its admission's write.
struct StartReads {
    /// The user, the application's settings and the user's phones, settled.
    request: authentication::RequestReads,
    /// How many unused recovery codes the user has.
    recovery_codes: usize,
    /// The user's OATH tokens.
    tokens: Vec<otp_store::OathToken>,
    /// The user's FIDO credentials.
    credentials: Vec<crate::store::fido_credentials::StoredCredential>,
    /// The user's backup contacts.
    contacts: crate::store::users::Contacts,
}

/// Whether a flow's start reads its policy's facts ahead: only while its policy is undecided.
fn policy_facts_of(data: &Data) -> authentication::PolicyFacts {
    if data.policy.is_none() {
        authentication::PolicyFacts::ReadAhead
    } else {
        authentication::PolicyFacts::Skip
    }
}

/// Reads [`StartReads`] for `user` (side by side); `user_not_found` when the application has no
/// such user. Reads only: [`start`] settles the phones afterwards.
async fn read_for_start(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    policy_facts: authentication::PolicyFacts,
) -> Result<StartReads, DomainError> {
    let (request, codes, tokens, credentials, contacts) = tokio::try_join!(
        authentication::read_for_request(ctx, app, user, policy_facts),
        async {
            crate::store::bypass::unused_code_count(&ctx.db, app, user)
                .await
                .map_err(DomainError::from)
        },
        async {
            otp_store::tokens_for_user(&ctx.db, app, user)
                .await
                .map_err(DomainError::from)
        },
        async {
            crate::store::fido_credentials::list_for_user(&ctx.db, app, user)
                .await
                .map_err(DomainError::from)
        },
        async {
            crate::store::users::contacts(&ctx.db, app, user)
                .await
                .map_err(DomainError::from)
        },
    )?;
    if request.user.is_none() {
        return Err(super::users::user_not_found());
    }
    Ok(StartReads {
        request,
        recovery_codes: codes,
        tokens,
        credentials,
        contacts: contacts.unwrap_or_default(),
    })
}

/// Checks the mandatory methods, lists the devices, and asks the one to ask. `read_early`: the
/// user's [`StartReads`], when the action read them beside its claim ([`act_on`]); otherwise
/// they are read here.
async fn start(
    ctx: &Ctx,
    app: &Application,
    flow: &Flow,
    mut data: Data,
    read_early: Option<Result<StartReads, DomainError>>,
    mover: &StepWrites<'_>,
) -> Result<(FlowStatus, Data), DomainError> {
    let user = flow.user()?;
    let mut reads = match read_early {
        Some(read) => read?,
        None => read_for_start(ctx, &app.id, user, policy_facts_of(&data)).await?,
    };
    // Phones pending a verification already decided are settled first, as a request's pick of
    // its device settles them (a write, so only now that the flow is claimed).
    reads.request.devices = device_verification::settled_devices(
        ctx,
        &app.id,
        user,
        std::mem::take(&mut reads.request.devices),
    )
    .await?;
    let stored_bypass = reads.request.user.as_ref().and_then(|(_, b)| b.clone());
    // A bypass in force ends the flow before the codes count.
    let active = bypass::in_force(ctx, stored_bypass);
    if let Some(ended) =
        bypassed(ctx, app, flow, &mut data, active, &mut reads.request, mover).await?
    {
        return Ok(ended);
    }
    data.recovery_codes = reads.recovery_codes > 0;
    if !data.options.mandatory_methods.is_empty() {
        let setup = mfa_setup(ctx, &app.id, user, data.options.mandatory_methods.clone()).await?;
        if !setup.missing.is_empty() {
            data.mfa_setup = Some(setup);
            return Ok((FlowStatus::MfaSetupRequired, data));
        }
    }
    data.mfa_setup = None;
    let read = PolicyReads::of(&mut reads.request);
    if let Some(ended) = apply_policy_as_read(ctx, app, flow, &mut data, read, mover).await? {
        return Ok(ended);
    }
    data.devices = list_devices(&reads, &data.options);
    if let Some(policy) = &data.policy {
        data.devices = shaped_devices(std::mem::take(&mut data.devices), &policy.methods);
    }
    if data.devices.is_empty() {
        let data = finished(data, result(FlowResultStatus::DeviceNotPaired));
        return Ok((FlowStatus::MfaFailed, data));
    }
    let chosen = data
        .selected_device
        .clone()
        .filter(|id| data.devices.iter().any(|d| &d.id == id))
        .or_else(|| match data.options.device_selection {
            DeviceSelection::DefaultToPrimary => data
                .devices
                .iter()
                .find(|d| d.default)
                .map(|d| d.id.clone()),
            DeviceSelection::PromptUserToSelect => None,
        })
        .or_else(|| (data.devices.len() == 1).then(|| data.devices[0].id.clone()));
    match chosen {
        Some(device) => use_device(ctx, app, flow, data, &device, Some(reads.request), mover).await,
        None => Ok((FlowStatus::DeviceSelectionRequired, data)),
    }
}

/// The user's devices a flow may use, from what its first step read: active phones, OATH
/// tokens, usable FIDO credentials, and the backup channels the flow offers that reach a
/// registered contact.
fn list_devices(reads: &StartReads, options: &Options) -> Vec<FlowDevice> {
    let contacts = backup::masked(&reads.contacts);
    let mut devices = Vec::new();
    for e in &reads.request.devices {
        if e.status != EnrollmentState::Active {
            continue;
        }
        devices.push(FlowDevice {
            id: format!("mobile:{}", e.enrollment_id),
            device_type: FlowDeviceType::Mobile,
            nickname: e
                .device_info
                .name
                .clone()
                .unwrap_or_else(|| e.device_info.model.clone()),
            default: e.is_primary,
        });
    }
    for token in &reads.tokens {
        let token = token.record();
        devices.push(FlowDevice {
            id: format!("oath:{}", token.token_id),
            device_type: FlowDeviceType::OathToken,
            nickname: token.kind.as_str().to_string(),
            default: false,
        });
    }
    for credential in &reads.credentials {
        if !fido::authentication::usable(credential) {
            continue;
        }
        devices.push(FlowDevice {
            id: format!("fido:{}", credential.id),
            device_type: match credential.kind {
                FidoCredentialType::SecurityKey => FlowDeviceType::SecurityKey,
                FidoCredentialType::Platform => FlowDeviceType::Platform,
                FidoCredentialType::Fido2Biometrics => FlowDeviceType::Fido2Biometrics,
            },
            nickname: credential.nickname.clone(),
            default: false,
        });
    }
    for channel in &options.backup_channels {
        let (device_type, to) = match channel {
            BackupChannel::Sms => (FlowDeviceType::Sms, &contacts.phone),
            BackupChannel::Voice => (FlowDeviceType::Voice, &contacts.phone),
            BackupChannel::Email => (FlowDeviceType::Email, &contacts.email),
        };
        if let Some(to) = to {
            devices.push(FlowDevice {
                id: channel.as_str().to_string(),
                device_type,
                nickname: to.clone(),
                default: false,
            });
        }
    }
    devices
}

/// Asks `device_id` (one of the flow's devices): a push to a phone, a code by SMS, voice or
/// email, or a passcode from an OATH token. A push is created from `reads` when the caller
/// made them ([`read_for_start`]), else from its own.
async fn use_device(
    ctx: &Ctx,
    app: &Application,
    flow: &Flow,
    mut data: Data,
    device_id: &str,
    reads: Option<authentication::RequestReads>,
    mover: &StepWrites<'_>,
) -> Result<(FlowStatus, Data), DomainError> {
    let device = data
        .devices
        .iter()
        .find(|d| d.id == device_id)
        .cloned()
        .ok_or_else(|| {
            DomainError::new(ErrorCode::DeviceNotFound, "no such device in this flow")
        })?;
    data.selected_device = Some(device.id.clone());
    data.push = None;
    data.otp = None;
    data.fido = None;
    let user = flow.user()?;
    match device.device_type {
        FlowDeviceType::Mobile => {
            let enrollment: EnrollmentId = device
                .id
                .strip_prefix("mobile:")
                .and_then(|e| e.parse().ok())
                .ok_or(DomainError::Internal("a flow's phone id does not parse"))?;
            let options = &data.options;
            let kind = if options.fields.is_empty() {
                AuthenticationKind::Approval
            } else {
                AuthenticationKind::Transaction
            };
            let mut body = CreateAuthenticationRequest::new(kind);
            body.enrollment_id = Some(enrollment.clone());
            body.message = options.message.clone();
            body.fields = options.fields.clone();
            body.accessing_ip = options.accessing_ip.clone();
            body.application_icon_url = options.application_icon_url.clone();
            body.number_matching = options.number_matching;
            body.use_code = Some(options.use_code);
            body.otp_fallback = Some(false);
            body.backup_channels = Some(Vec::new());
            body.expires_in = Some(expires_in(ctx, flow));
            // The flow's policy decided already; a preference for biometrics asks for user
            // verification.
            if let Some(policy) = &data.policy
                && policy.methods.iter().find(|m| mobile_method(**m))
                    == Some(&PolicyMethod::MobileBiometrics)
            {
                body.require_user_verification = true;
            }
            let shown_as = Application {
                name: options.application_name.clone(),
                ..app.clone()
            };
            let reads = match reads {
                Some(reads) => reads,
                None => {
                    authentication::read_for_request(
                        ctx,
                        &app.id,
                        user,
                        authentication::PolicyFacts::Skip,
                    )
                    .await?
                }
            };
            let waiting = FlowStatus::PushConfirmationWaiting;
            let with_push = |mut data: Data, status: &AuthenticationStatus| {
                data.push = Some(FlowPush {
                    authentication_id: status.authentication_id.clone(),
                    enrollment_id: enrollment.clone(),
                    number_to_show: status.number_to_show,
                    expires_at: status.expires_at,
                });
                data
            };
            // The flow moves to show the push in the push's own write.
            let moved = |status: &AuthenticationStatus| {
                Ok(store::MoveWithRequest {
                    next: next_stored(ctx, flow, waiting, &with_push(data.clone(), status))?,
                    expected_version: flow.stored.version,
                    event: event(ctx, mover.action, Some(flow.status), waiting),
                })
            };
            let decided = mover.decision();
            let decided = decided.as_ref();
            let created =
                authentication::create_for_flow(ctx, &shown_as, user, body, reads, &moved, decided)
                    .await;
            let made = match created {
                Err(e) if e.code() == Some(ErrorCode::MandatoryMethodsMissing) => {
                    // The application's list changed since the flow checked it.
                    return start_setup(ctx, &app.id, user, data).await;
                }
                other => other?,
            };
            Ok(match made {
                MadeForFlow::Moved(status, moved) => {
                    let data = with_push(data, &status);
                    mover.wrote(PushWritten::Moved(Box::new(Flow {
                        stored: moved.next,
                        status: waiting,
                        data: data.clone(),
                    })));
                    (waiting, data)
                }
                // Ended as it was made (by the bypass or the policy): the action's move shows it.
                MadeForFlow::Made(status) => (waiting, with_push(data, &status)),
                MadeForFlow::FlowLost => {
                    mover.wrote(PushWritten::FlowLost);
                    (waiting, data)
                }
            })
        }
        FlowDeviceType::SecurityKey
        | FlowDeviceType::Platform
        | FlowDeviceType::Fido2Biometrics => {
            let only = device.id.strip_prefix("fido:");
            let (options, ceremony_id) =
                fido::authentication::start(ctx, app, user, flow.stored.id.as_str(), only).await?;
            data.fido = Some(FidoStep {
                ceremony_id,
                request_options: Some(options),
                creation_options: None,
                registering: None,
            });
            Ok((FlowStatus::AssertionRequired, data))
        }
        FlowDeviceType::OathToken => {
            data.otp = Some(OtpStep {
                source: FlowOtpSource::OathToken,
                destination: None,
                authentication_id: None,
                challenge_id: None,
            });
            Ok((FlowStatus::OtpRequired, data))
        }
        FlowDeviceType::Sms | FlowDeviceType::Voice | FlowDeviceType::Email => {
            let channel = match device.device_type {
                FlowDeviceType::Sms => BackupChannel::Sms,
                FlowDeviceType::Voice => BackupChannel::Voice,
                _ => BackupChannel::Email,
            };
            let challenge = backup::send_to_contact(ctx, app, user, channel).await?;
            data.otp = Some(OtpStep {
                source: channel.into(),
                destination: Some(challenge.destination),
                authentication_id: None,
                challenge_id: Some(challenge.challenge_id),
            });
            Ok((FlowStatus::OtpRequired, data))
        }
    }
}

/// A push lives as long as the flow has left, within what a push may (10 to 120 seconds).
fn expires_in(ctx: &Ctx, flow: &Flow) -> u32 {
    let left = flow.stored.expires_at - ctx.now();
    u32::try_from(left.clamp(10, 120)).unwrap_or(120)
}

async fn start_setup(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    mut data: Data,
) -> Result<(FlowStatus, Data), DomainError> {
    let policy = applications::otp_policy(&ctx.db, app).await?;
    let mandatory = merged(&data.options.mandatory_methods, &policy.mandatory_methods);
    data.push = None;
    data.mfa_setup = Some(mfa_setup(ctx, app, user, mandatory).await?);
    Ok((FlowStatus::MfaSetupRequired, data))
}

/// The methods of both lists, once each, in order.
fn merged(a: &[AuthenticationMethod], b: &[AuthenticationMethod]) -> Vec<AuthenticationMethod> {
    let mut all: Vec<AuthenticationMethod> = a.iter().chain(b).copied().collect();
    all.sort();
    all.dedup();
    all
}

/// The `mandatory` methods, split into those `user` has registered and those still missing.
async fn mfa_setup(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    mandatory: Vec<AuthenticationMethod>,
) -> Result<FlowMfaSetup, DomainError> {
    let registered = methods::registered_methods(ctx, app, user).await?;
    let (done, missing) = mandatory.iter().partition(|m| registered.contains(m));
    Ok(FlowMfaSetup {
        mandatory,
        missing,
        done,
    })
}

/// `useCode`: type the app's passcode instead of waiting for the push (which stays pending and
/// still completes the flow if answered), or after it timed out (OTP fallback).
fn use_code(flow: &Flow) -> (FlowStatus, Data) {
    let mut data = flow.data.clone();
    let pending_push = match flow.status {
        FlowStatus::PushConfirmationWaiting => {
            data.push.as_ref().map(|p| p.authentication_id.clone())
        }
        _ => None,
    };
    data.otp = Some(OtpStep {
        source: FlowOtpSource::App,
        destination: None,
        authentication_id: pending_push,
        challenge_id: None,
    });
    (FlowStatus::OtpRequired, data)
}

/// A user's bypass ends the flow before any device is asked: `MFA_COMPLETED` with result
/// `bypassed` and type `BYPASS` (docs/bypass-and-recovery.md). The application's policy is
/// decided first: its `deny` still ends the flow `MFA_FAILED`, its `approve` completes it with
/// `POLICY_APPROVE`. The user's devices, the policy in force and its facts read ahead come from
/// `reads` ([`PolicyReads::of`]).
async fn bypassed(
    ctx: &Ctx,
    app: &Application,
    flow: &Flow,
    data: &mut Data,
    active: Option<crate::store::bypass::Bypass>,
    reads: &mut authentication::RequestReads,
    writes: &StepWrites<'_>,
) -> Result<Option<(FlowStatus, Data)>, DomainError> {
    let Some(active) = active else {
        return Ok(None);
    };
    let read = PolicyReads::of(reads);
    if let Some(ended) = apply_policy_as_read(ctx, app, flow, data, read, writes).await? {
        return Ok(Some(ended));
    }
    let mut done = result(FlowResultStatus::Bypassed);
    done.attributes = bypass::bypass_attributes(ctx, data.options.accessing_ip.as_deref(), &active);
    done.policy = data.policy.clone();
    tracing::info!(flow_id = %flow.stored.id, "flow bypassed");
    Ok(Some((
        FlowStatus::MfaCompleted,
        finished(data.clone(), done),
    )))
}

/// `checkRecoveryCode`: one of the user's recovery codes completes the flow (type
/// `RECOVERY_CODE`); a push the flow waits for is withdrawn.
async fn check_recovery_code(
    ctx: &Ctx,
    app: &Application,
    flow: &Flow,
    code: &str,
) -> Result<(FlowStatus, Data), DomainError> {
    bypass::spend(ctx, &app.id, flow.user()?, code).await?;
    if let Some(push) = flow.watched_push() {
        outcome::record(ctx, push, Ending::Canceled).await?;
    }
    let mut data = flow.data.clone();
    let mut done = result(FlowResultStatus::Authenticated);
    done.attributes = bypass::recovery_code_attributes(ctx, data.options.accessing_ip.as_deref());
    done.policy = data.policy.clone();
    data.otp = None;
    Ok((FlowStatus::MfaCompleted, finished(data, done)))
}

/// `checkOtp`: the passcode the flow waits for.
async fn check_otp(
    ctx: &Ctx,
    app: &Application,
    flow: &Flow,
    code: &str,
) -> Result<(FlowStatus, Data), DomainError> {
    let otp = flow.data.otp.clone().ok_or(DomainError::Internal(
        "a flow waits for a passcode it lacks",
    ))?;
    if flow.status == FlowStatus::MobilePairingRequired {
        return approve_pairing_by_passcode(ctx, app, flow, &otp, code).await;
    }
    let mut done = result(FlowResultStatus::Authenticated);
    if let Some(push) = &otp.authentication_id {
        // The app's passcode answers the pending push (and ends it as approved).
        let status = otp::answer_authentication(ctx, &app.id, push.as_str(), code).await?;
        done.attributes = status.attributes;
        done.authentication_id = Some(status.authentication_id);
    } else if let Some(challenge) = &otp.challenge_id {
        let verified = backup::verify_challenge(ctx, &app.id, challenge, code).await?;
        done.attributes = verified.attributes;
    } else {
        let verified = otp::verify(ctx, &app.id, flow.user()?.clone(), code).await?;
        done.attributes = verified.attributes;
    }
    let mut data = flow.data.clone();
    data.otp = None;
    Ok((FlowStatus::MfaCompleted, finished(data, done)))
}

/// `checkOtp` while a new device waits for its approval: the right passcode (attempts bounded
/// by the challenge and by the user's OTP failure limit, expiry by the clock) activates it; the
/// flow then ends `device_paired` with `continueAuthentication`.
async fn approve_pairing_by_passcode(
    ctx: &Ctx,
    app: &Application,
    flow: &Flow,
    otp: &OtpStep,
    code: &str,
) -> Result<(FlowStatus, Data), DomainError> {
    let challenge = otp
        .challenge_id
        .as_deref()
        .ok_or(DomainError::Internal("a held pairing lacks its challenge"))?;
    let mut data = flow.data.clone();
    let pairing = data
        .pairing
        .as_mut()
        .ok_or(DomainError::Internal("a pairing flow lacks its pairing"))?;
    backup::verify_challenge(ctx, &app.id, challenge, code).await?;
    pairing::approve_held(ctx, &pairing.enrollment_id).await?;
    pairing.state = pairing_state(ctx, &pairing.enrollment_id)
        .await?
        .as_str()
        .to_string();
    data.otp = None;
    Ok((FlowStatus::MobilePairingRequired, data))
}

/// `resendOtp`: a new SMS, voice or email code (the old one stops counting for the flow).
async fn resend_otp(
    ctx: &Ctx,
    app: &Application,
    flow: &Flow,
) -> Result<(FlowStatus, Data), DomainError> {
    let mut data = flow.data.clone();
    let Some(otp) = data.otp.as_mut() else {
        return Err(DomainError::Internal(
            "a flow waits for a passcode it lacks",
        ));
    };
    let channel = match otp.source {
        FlowOtpSource::Sms => BackupChannel::Sms,
        FlowOtpSource::Voice => BackupChannel::Voice,
        FlowOtpSource::Email => BackupChannel::Email,
        FlowOtpSource::App | FlowOtpSource::OathToken => return Err(not_allowed(flow)),
    };
    let challenge = backup::send_to_contact(ctx, app, flow.user()?, channel).await?;
    otp.destination = Some(challenge.destination);
    otp.challenge_id = Some(challenge.challenge_id);
    // Where it was: OTP_REQUIRED, or MOBILE_PAIRING_REQUIRED for a new device held for it.
    Ok((flow.status, data))
}

/// `cancelAuthentication`: ends the flow, withdrawing a push still pending on the phone. A push
/// the flow waits for that ended first in a way that ends the flow (approved, say) wins: the
/// flow follows it (its follow-up moves it), and the cancellation is refused with `conflict`.
async fn cancel(ctx: &Ctx, flow: &Flow) -> Result<(FlowStatus, Data), DomainError> {
    if let Some(push) = &flow.data.push {
        let withdrawn = outcome::record(ctx, &push.authentication_id, Ending::Canceled).await?;
        if withdrawn.is_none()
            && flow.watched_push() == Some(&push.authentication_id)
            && let Some(ended) =
                authentications::get(&ctx.db, &push.authentication_id, ctx.now()).await?
            && after_push(flow, &ended).is_some_and(|(_, status, _)| status.is_final())
        {
            return Err(conflict());
        }
    }
    let data = finished(flow.data.clone(), result(FlowResultStatus::Canceled));
    Ok((FlowStatus::Canceled, data))
}

/// `continueAuthentication`: after the app completed its pairing (the flow ends with
/// `device_paired` or `device_not_paired`), or after the user registered the missing methods.
async fn continue_authentication(
    ctx: &Ctx,
    app: &Application,
    flow: &Flow,
    mover: &StepWrites<'_>,
) -> Result<(FlowStatus, Data), DomainError> {
    if flow.status == FlowStatus::MfaSetupRequired {
        return start(ctx, app, flow, flow.data.clone(), None, mover).await;
    }
    let pairing = flow
        .data
        .pairing
        .clone()
        .ok_or(DomainError::Internal("a pairing flow lacks its pairing"))?;
    let state = pairing_state(ctx, &pairing.enrollment_id).await?;
    match state {
        EnrollmentState::Active => {
            let mut done = result(FlowResultStatus::DevicePaired);
            done.enrollment_id = Some(pairing.enrollment_id);
            Ok((FlowStatus::MfaCompleted, finished(flow.data.clone(), done)))
        }
        EnrollmentState::PendingVerification if held_for_passcode(&flow.data) => {
            Err(DomainError::new(
                ErrorCode::Conflict,
                "the new device is approved by the passcode sent to the user; checkOtp first",
            ))
        }
        EnrollmentState::PendingVerification => Err(DomainError::new(
            ErrorCode::Conflict,
            "the user's primary device has not approved the new device yet; poll",
        )),
        _ => Ok((
            FlowStatus::MfaFailed,
            finished(flow.data.clone(), result(FlowResultStatus::DeviceNotPaired)),
        )),
    }
}

/// `checkAssertion`: the FIDO assertion the flow waits for (its ceremony is taken once: a
/// replayed answer, or one to an older challenge, is refused).
async fn check_assertion(
    ctx: &Ctx,
    app: &Application,
    flow: &Flow,
    credential: serde_json::Value,
) -> Result<(FlowStatus, Data), DomainError> {
    let step = flow
        .data
        .fido
        .as_ref()
        .filter(|f| f.request_options.is_some())
        .ok_or(DomainError::Internal(
            "a flow waits for an assertion it lacks",
        ))?;
    let attributes = fido::authentication::finish(
        ctx,
        app,
        flow.user()?,
        flow.stored.id.as_str(),
        &step.ceremony_id,
        credential,
    )
    .await?;
    Ok(assertion_verified(ctx, flow, attributes))
}

/// `checkAssertion` on a passkey sign-in: the passkey names the user (checked against its
/// user handle), answered with the move that binds the flow to them.
async fn check_passkey(
    ctx: &Ctx,
    app: &Application,
    flow: &Flow,
    credential: serde_json::Value,
) -> Result<(UserId, FlowStatus, Data), DomainError> {
    let step = flow
        .data
        .fido
        .as_ref()
        .filter(|f| f.request_options.is_some())
        .ok_or(DomainError::Internal(
            "a passkey sign-in waits for an assertion it lacks",
        ))?;
    let (user, attributes) = fido::authentication::finish_passkey(
        ctx,
        app,
        flow.stored.id.as_str(),
        &step.ceremony_id,
        credential,
    )
    .await?;
    let (status, data) = assertion_verified(ctx, flow, attributes);
    tracing::info!(flow_id = %flow.stored.id, "passkey sign-in verified; the flow is bound to its user");
    Ok((user, status, data))
}

/// The flow completed by a verified assertion with its result `attributes`.
fn assertion_verified(
    ctx: &Ctx,
    flow: &Flow,
    attributes: BTreeMap<String, serde_json::Value>,
) -> (FlowStatus, Data) {
    let mut done = result(FlowResultStatus::Authenticated);
    done.attributes = attributes;
    authentication::accessing_attributes(
        ctx,
        flow.data.options.accessing_ip.as_deref(),
        &mut done.attributes,
    );
    done.policy = flow.data.policy.clone();
    let mut data = flow.data.clone();
    data.fido = None;
    (FlowStatus::MfaCompleted, finished(data, done))
}

/// `startRegistration`: asks the browser to create a credential for a missing mandatory FIDO
/// method (`SECURITY_KEY` or `PLATFORM`); the flow stays in `MFA_SETUP_REQUIRED` with the
/// creation options.
async fn start_registration(
    ctx: &Ctx,
    app: &Application,
    flow: &Flow,
    method: AuthenticationMethod,
) -> Result<(FlowStatus, Data), DomainError> {
    let missing = flow
        .data
        .mfa_setup
        .as_ref()
        .is_some_and(|s| s.missing.contains(&method));
    if !missing {
        return Err(DomainError::invalid(
            "startRegistration registers a missing mandatory method: SECURITY_KEY or PLATFORM",
        ));
    }
    let (options, ceremony_id) =
        fido::registration::start(ctx, app, flow.user()?, flow.stored.id.as_str(), method).await?;
    let mut data = flow.data.clone();
    data.fido = Some(FidoStep {
        ceremony_id,
        request_options: None,
        creation_options: Some(options),
        registering: Some(method),
    });
    Ok((FlowStatus::MfaSetupRequired, data))
}

/// `checkRegistration`: stores the new credential; once no mandatory method is missing, the
/// flow goes on as `continueAuthentication` would (usually asking the new credential).
async fn check_registration(
    ctx: &Ctx,
    app: &Application,
    flow: &Flow,
    credential: serde_json::Value,
    nickname: Option<String>,
    mover: &StepWrites<'_>,
) -> Result<(FlowStatus, Data), DomainError> {
    let step = flow
        .data
        .fido
        .as_ref()
        .filter(|f| f.creation_options.is_some())
        .ok_or(DomainError::Internal(
            "a flow waits for a registration it lacks",
        ))?;
    let user = flow.user()?;
    fido::registration::finish(
        ctx,
        app,
        user,
        flow.stored.id.as_str(),
        &step.ceremony_id,
        credential,
        nickname,
    )
    .await?;
    let mut data = flow.data.clone();
    data.fido = None;
    let mandatory = data
        .mfa_setup
        .as_ref()
        .map(|s| s.mandatory.clone())
        .unwrap_or_default();
    let setup = mfa_setup(ctx, &app.id, user, mandatory).await?;
    if setup.missing.is_empty() {
        return start(ctx, app, flow, data, None, mover).await;
    }
    data.mfa_setup = Some(setup);
    Ok((FlowStatus::MfaSetupRequired, data))
}

/// `poll`: waits up to `wait` seconds (at most 30) for the flow to move. Waiting reads nothing
/// until the flow (or the pairing's enrollment) is announced as changed, and once at the end.
async fn poll(ctx: &Ctx, flow: Flow, wait: u64) -> Result<FlowState, DomainError> {
    let wait = Duration::from_secs(wait.min(MAX_WAIT_SECONDS));
    if wait.is_zero() {
        return shown(ctx, &flow, false).await;
    }
    let mut wait = wait.min(ctx.until(flow.stored.expires_at));
    if let Some(push) = &flow.data.push {
        wait = wait.min(ctx.until(push.expires_at));
    }
    let topic = match (&flow.status, &flow.data.pairing) {
        (FlowStatus::MobilePairingRequired, Some(p)) => {
            Topic::Enrollment(p.enrollment_id.to_string())
        }
        _ => Topic::Flow(flow.stored.id.to_string()),
    };
    // A flow that waits for its push is also woken by the push's ending itself, not only by
    // the follow-up's move: an answer whose write could not yet see the flow waiting for it
    // (on PostgreSQL, its statement begun before the flow's move committed) leaves the move to
    // the next read, which this wake-up makes at once.
    let subscription = match (&topic, flow.watched_push()) {
        (Topic::Flow(_), Some(push)) => ctx
            .events
            .subscribe_either(topic, Topic::Authentication(push.to_string())),
        _ => ctx.events.subscribe(topic),
    };
    let version = flow.stored.version;
    let app = flow.stored.application_id.clone();
    let id = flow.stored.id.to_string();
    let latest = super::events::wait_subscribed(
        Some(subscription),
        wait,
        || async { refresh(ctx, load(ctx, &app, &id).await?).await },
        |f| f.stored.version != version,
    )
    .await?;
    shown(ctx, &latest, false).await
}

/// Follow-up: a push a flow waits for ended; the flow moves and its pollers wake.
pub(crate) fn follow_up<'a>(ctx: &'a Ctx, event: &'a DomainEvent) -> FollowUpFuture<'a> {
    Box::pin(async move {
        let (record, waiting) = event.ended();
        if !waiting.flow {
            return Ok(());
        }
        // As the ending's statement read it, where it did (before the ending: a move since is
        // a lost race, read again and re-derived like any other); else read now.
        let stored = match event.waiting_flow() {
            Some(flow) => Some(flow.clone()),
            None => store::by_authentication(&ctx.db, &record.id).await?,
        };
        if let Some(stored) = stored {
            refresh_knowing(ctx, Flow::from_stored(stored)?, Some(record)).await?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod crowd_tests;

#[cfg(test)]
mod flow_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(status: FlowStatus, devices: usize, use_code: bool) -> Flow {
        let options = Options {
            application_name: "Shop".into(),
            application_icon_url: None,
            accessing_ip: None,
            user_agent: None,
            message: None,
            fields: Vec::new(),
            number_matching: None,
            use_code,
            otp_fallback: false,
            backup_channels: Vec::new(),
            admin_message: None,
            mandatory_methods: Vec::new(),
            device_selection: DeviceSelection::DefaultToPrimary,
            hosted: None,
            passkey: false,
        };
        let device = |i: usize| FlowDevice {
            id: format!("d{i}"),
            device_type: FlowDeviceType::Sms,
            nickname: "x".into(),
            default: false,
        };
        let data = Data {
            options,
            authorization_nonce: "n".into(),
            devices: (0..devices).map(device).collect(),
            selected_device: None,
            push: None,
            otp: None,
            pairing: None,
            mfa_setup: None,
            result: None,
            policy: None,
            recovery_codes: false,
            fido: None,
            qr: None,
        };
        Flow {
            stored: StoredFlow {
                id: FlowId::generate(),
                application_id: ApplicationId::generate(),
                user_id: Some(UserId::try_from("alice".to_string()).unwrap()),
                status: status.as_str().into(),
                version: 1,
                data: serde_json::to_string(&data).unwrap(),
                authentication_id: None,
                created_at: 0,
                updated_at: 0,
                expires_at: 600,
            },
            status,
            data,
        }
    }

    #[test]
    fn each_status_allows_its_actions_and_final_ones_none() {
        use FlowActionName::*;
        assert_eq!(
            allowed_actions(&flow(FlowStatus::AuthenticationRequired, 0, false)),
            vec![Authenticate, CancelAuthentication]
        );
        assert_eq!(
            allowed_actions(&flow(FlowStatus::PushConfirmationWaiting, 1, false)),
            vec![Poll, CancelAuthentication]
        );
        assert_eq!(
            allowed_actions(&flow(FlowStatus::PushConfirmationWaiting, 2, true)),
            vec![Poll, SelectDevice, UseCode, CancelAuthentication]
        );
        for status in [
            FlowStatus::MfaCompleted,
            FlowStatus::MfaFailed,
            FlowStatus::Canceled,
        ] {
            assert!(allowed_actions(&flow(status, 2, true)).is_empty());
        }
    }

    #[test]
    fn the_qr_alternative_is_offered_on_hosted_flows_of_users_with_a_phone() {
        use FlowActionName::*;
        let mut f = flow(FlowStatus::PushConfirmationWaiting, 1, false);
        f.data.devices[0].device_type = FlowDeviceType::Mobile;
        assert!(!allowed_actions(&f).contains(&UseQrCode), "not hosted");
        f.data.options.hosted = Some(HostedPrompt {
            return_url: "https://rp.example/cb".into(),
            ui_locales: Vec::new(),
            web_view: None,
        });
        assert_eq!(
            allowed_actions(&f),
            vec![Poll, UseQrCode, CancelAuthentication]
        );
        f.data.devices[0].device_type = FlowDeviceType::Sms;
        assert!(!allowed_actions(&f).contains(&UseQrCode), "no phone");
        f.data.devices[0].device_type = FlowDeviceType::Mobile;
        for status in [
            FlowStatus::AuthenticationRequired,
            FlowStatus::MobilePairingRequired,
            FlowStatus::MfaSetupRequired,
            FlowStatus::MfaCompleted,
        ] {
            f.status = status;
            assert!(!allowed_actions(&f).contains(&UseQrCode), "{status:?}");
        }
        // While a code is shown, the flow can be polled where it otherwise could not.
        f.status = FlowStatus::PushConfirmationTimedOut;
        assert!(!allowed_actions(&f).contains(&Poll));
        f.data.qr = Some(QrSessionId::generate());
        assert_eq!(
            allowed_actions(&f),
            vec![Authenticate, Poll, UseQrCode, CancelAuthentication]
        );
    }

    #[test]
    fn a_new_device_held_for_a_passcode_expects_it() {
        use FlowActionName::*;
        let mut f = flow(FlowStatus::MobilePairingRequired, 0, false);
        assert_eq!(
            allowed_actions(&f),
            vec![Poll, ContinueAuthentication, CancelAuthentication]
        );
        f.data.pairing = Some(FlowPairing {
            enrollment_id: EnrollmentId::generate(),
            server_payload: "payload".into(),
            state: EnrollmentState::PendingVerification.as_str().into(),
        });
        // Verified by the primary device: no passcode.
        assert!(!held_for_passcode(&f.data));
        f.data.otp = Some(OtpStep {
            source: FlowOtpSource::Sms,
            destination: Some("+*******4321".into()),
            authentication_id: None,
            challenge_id: Some("challenge".into()),
        });
        assert!(held_for_passcode(&f.data));
        assert_eq!(
            allowed_actions(&f),
            vec![
                Poll,
                ContinueAuthentication,
                CheckOtp,
                ResendOtp,
                CancelAuthentication
            ]
        );
        if let Some(p) = f.data.pairing.as_mut() {
            p.state = EnrollmentState::Active.as_str().into();
        }
        assert!(!held_for_passcode(&f.data));
        assert!(!allowed_actions(&f).contains(&CheckOtp));
    }

    #[test]
    fn a_refusal_names_the_allowed_actions() {
        let e = not_allowed(&flow(FlowStatus::DeviceSelectionRequired, 2, false));
        assert_eq!(e.code(), Some(ErrorCode::ActionNotAllowed));
        let DomainError::Refused {
            message,
            allowed_actions,
            ..
        } = e
        else {
            panic!("a refusal")
        };
        assert!(
            message.contains("selectDevice, cancelAuthentication"),
            "{message}"
        );
        assert_eq!(
            allowed_actions,
            vec![
                FlowActionName::SelectDevice,
                FlowActionName::CancelAuthentication
            ]
        );
    }
}
