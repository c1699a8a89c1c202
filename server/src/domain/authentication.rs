//! Authentications: asking a user's device, and the rules every answer must satisfy.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};
use tessera_protocol::PROTOCOL_VERSION;
use tessera_protocol::api::{
    AuthenticationMethod, AuthenticationStatus, CreateAuthenticationRequest, EnrollmentState,
    PendingRequests, ResponseRecorded,
};
use tessera_protocol::authentication::{
    AccessContext, AuthenticationId, AuthenticationKind, AuthenticationRequest,
    AuthenticationResponse, AuthenticationState, CibaDetails, Decision, DeviceLocation,
    DisplayField, DynamicParameters, NUMBER_MATCHING_MAX, NUMBER_MATCHING_MIN, NumberMatching,
};
use tessera_protocol::envelope::{self, MessageType};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::{ApplicationId, EnrollmentId, UserId};
use tessera_protocol::pairing::{DeviceRegistration, DeviceSignals, DeviceVersions};
use tessera_protocol::policy::{PolicyEffect, PolicyMethod, PolicyOutcome, RequestKind};

use super::attestation::assertions::{self, AnswerAssertion, AssertionCheck};
use super::events::{Topic, wait_for, wait_subscribed};
use super::outcome::{self, Ending, MadeEnding, SignedAnswer, Take, Taken, Verdict};
use super::{Ctx, DomainError};
use crate::store::applications::Application;
use crate::store::authentications::{self, Authentication};
use crate::store::enrollments::{self, Enrollment};

/// The longest a long-poll waits, in seconds.
pub(crate) const MAX_WAIT_SECONDS: u64 = 30;
const MAX_FIELDS: usize = 20;
/// RFC 8176 authentication method reference values.
const AMR_VALUES: &[&str] = &[
    "face", "fpt", "geo", "hwk", "iris", "kba", "mca", "mfa", "otp", "pin", "pop", "pwd", "rba",
    "retina", "sc", "sms", "swk", "tel", "user", "vbm", "wia",
];
/// Methods that verify the user (not just their presence).
pub(crate) const USER_VERIFICATION_AMR: &[&str] = &["face", "fpt", "iris", "retina", "pin", "pwd"];
const BIOMETRIC_AMR: &[&str] = &["face", "fpt", "iris", "retina"];

pub(crate) fn invalid(message: &str) -> DomainError {
    DomainError::invalid(message)
}

pub(crate) fn check_text(text: &str, max: usize, what: &str) -> Result<(), DomainError> {
    if text.chars().count() > max {
        return Err(invalid(&format!("{what} is too long")));
    }
    if !tessera_protocol::display::is_displayable(text) {
        return Err(invalid(&format!(
            "{what} has control, bidirectional or invisible format characters"
        )));
    }
    Ok(())
}

pub(crate) fn check_fields(fields: &[DisplayField]) -> Result<(), DomainError> {
    if fields.len() > MAX_FIELDS {
        return Err(invalid("too many fields"));
    }
    for f in fields {
        if f.label.trim().is_empty() {
            return Err(invalid("a field has an empty label"));
        }
        check_text(&f.label, 64, "a field label")?;
        check_text(&f.value, 256, "a field value")?;
    }
    Ok(())
}

/// Number matching: the number the page shows and, in mode `choice`, three distinct choices
/// for the device (shuffled, the right one among them). In mode `typed` the device gets no
/// choices: the user types the number. `None` for mode `off`.
fn number_matching(mode: NumberMatching) -> Option<(u32, Option<Vec<u32>>)> {
    let mut rng = rand::rngs::OsRng;
    let mut pick = || rng.gen_range(NUMBER_MATCHING_MIN..=NUMBER_MATCHING_MAX);
    match mode {
        NumberMatching::Off => None,
        NumberMatching::Typed => Some((pick(), None)),
        NumberMatching::Choice => {
            let mut choices: Vec<u32> = Vec::with_capacity(3);
            while choices.len() < 3 {
                let n = pick();
                if !choices.contains(&n) {
                    choices.push(n);
                }
            }
            let correct = choices[0];
            choices.shuffle(&mut rand::rngs::OsRng);
            Some((correct, Some(choices)))
        }
    }
}

/// Requests live at most this long (`expires_in` up to 900 seconds), so a look-back this long
/// sees every pending one.
pub(crate) const LONGEST_REQUEST_SECONDS: i64 = 900;

/// Push bombing: why one more user-facing request to this user is refused (too many pending,
/// or too many unapproved ones — unanswered, expired or denied, `wrong_number` included — in
/// the application's window), or `None` when it is allowed. Approved requests and silent
/// verifications do not count, so a user who signs in often is never locked out by their own
/// approvals. The `limits` are the application's settings (as its caller read them, once per
/// request), else the server-wide values. Used for every user-facing request, whoever asks
/// (customer API, flows or CIBA), on the `counts` taken in the transaction that inserts the
/// request, after the admission's locks (see `applications::admit`), so
/// two requests at once cannot both pass the last free place.
pub(crate) fn push_bombing_refusal(
    limits: &tessera_protocol::api::PushBombingLimits,
    counts: &authentications::AdmissionCounts,
) -> Option<String> {
    if counts.user_pending >= i64::from(limits.max_pending_per_user) {
        return Some(
            "this user already has the most pending requests allowed; wait for an answer or for them to expire".into(),
        );
    }
    if counts.user_recent >= i64::from(limits.max_unapproved_per_user) {
        return Some(format!(
            "too many unanswered or denied requests to this user in the last {} seconds",
            limits.window_seconds
        ));
    }
    None
}

/// What a new request asks.
pub(crate) struct Question {
    /// The kind.
    pub kind: AuthenticationKind,
    /// What to show.
    pub parameters: DynamicParameters,
    /// Where the sign-in comes from.
    pub context: AccessContext,
    /// How the device user gives the number the page shows (or `Off`).
    pub number_matching: NumberMatching,
    /// Whether the answer must be signed with the user-verification key.
    pub require_user_verification: bool,
    /// Seconds until it expires.
    pub expires_in: u32,
    /// For a CIBA request: what it shows (`parameters` must be its display parameters).
    pub ciba: Option<CibaDetails>,
    /// The shipped language the server's own texts in `parameters` are written in (signed into
    /// the request as its `locale`), if the server chose one.
    pub locale: Option<String>,
}

/// Signs a request to `device` and builds its pending record (not stored yet).
pub(crate) fn new_authentication(
    ctx: &Ctx,
    application_id: &ApplicationId,
    user_id: &UserId,
    device: &Enrollment,
    question: Question,
) -> Result<Authentication, DomainError> {
    let (number_to_show, number_choices) = match number_matching(question.number_matching) {
        Some((n, choices)) => (Some(n), choices),
        None => (None, None),
    };
    let now = ctx.now();
    let parameters_digest = question
        .parameters
        .digest()
        .map_err(|_| invalid("parameters cannot be encoded"))?;
    let accessing_ip = question.context.ip.clone();
    let request = AuthenticationRequest {
        v: PROTOCOL_VERSION,
        request_id: AuthenticationId::generate_ordered(ctx.now_ms()),
        issuer: ctx.public_url.clone(),
        enrollment_id: device.enrollment_id.clone(),
        user_id: user_id.clone(),
        kind: question.kind,
        parameters: question.parameters,
        parameters_digest,
        context: question.context,
        number_choices,
        number_matching: question
            .number_matching
            .is_on()
            .then_some(question.number_matching),
        require_user_verification: question.require_user_verification,
        ciba: question.ciba,
        locale: question.locale,
        nonce: DeviceRegistration::new_nonce(),
        issued_at: now,
        expires_at: now + i64::from(question.expires_in),
    };
    let signed_request = ctx
        .keys
        .sign(MessageType::AuthenticationRequest, &request)
        .map_err(|_| DomainError::new(ErrorCode::InternalError, "internal error"))?;
    Ok(Authentication {
        id: request.request_id.clone(),
        application_id: application_id.clone(),
        user_id: user_id.clone(),
        enrollment_id: device.enrollment_id.clone(),
        kind: question.kind,
        signed_request,
        parameters_digest: parameters_digest.to_string(),
        nonce: request.nonce,
        number_to_show,
        number_matching: question.number_matching,
        require_user_verification: question.require_user_verification,
        accessing_ip,
        state: AuthenticationState::Pending,
        decision: None,
        signed_response: None,
        attributes: None,
        created_at: now,
        expires_at: request.expires_at,
        answered_at: None,
        failure_reason: None,
        denial_reason: None,
        otp_mode: authentications::OtpMode::None,
        otp_after: None,
        backup_channels: Vec::new(),
        push_state: "none".into(),
        policy: None,
    })
}

/// A request's user and their bypass as stored, `None` when the application has no such user.
type RequestUser = Option<(
    tessera_protocol::api::User,
    Option<crate::store::bypass::Bypass>,
)>;

/// What a new request reads before it decides: the user (with their language and bypass as
/// stored; `None` when the application has no such user), the application's settings (with its
/// current policy), the user's devices, and the facts its policy most likely looks at.
pub(crate) struct RequestReads {
    /// The user and their bypass as stored.
    pub(crate) user: RequestUser,
    /// The application's settings.
    pub(crate) settings: crate::store::applications::RequestSettings,
    /// The user's devices, as `enrollments::list_for_user_on` lists them.
    pub(crate) devices: Vec<Enrollment>,
    /// The facts of the policy the application's last decision was made under, read for the
    /// user ([`super::policy::read_ahead`]): `None` when not asked for, or when nothing is
    /// to read.
    pub(crate) policy_facts: Option<super::policy::FactsAhead>,
}

/// Whether a request's reads also read its policy's facts ahead
/// ([`super::policy::read_ahead`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PolicyFacts {
    /// The request is decided by the application's policy: read them beside the rest.
    ReadAhead,
    /// It is not, or was decided already: nothing is read for it.
    Skip,
}

/// Reads [`RequestReads`] for `user_id` of `application_id`. The reads need nothing but the two
/// ids, so they go out side by side, each on a connection of its own: on PostgreSQL the request
/// waits for one round trip instead of three or four in a row; on SQLite each runs on the
/// calling thread, one after the other, as before. They never shared a snapshot (no
/// transaction held them together), so reading them apart changes nothing they can see.
pub(crate) async fn read_for_request(
    ctx: &Ctx,
    application_id: &ApplicationId,
    user_id: &UserId,
    policy_facts: PolicyFacts,
) -> Result<RequestReads, DomainError> {
    let settings = crate::store::applications::request_settings_on(ctx.db.pool(), application_id);
    let (user_reads, settings) =
        read_beside(ctx, application_id, user_id, policy_facts, settings).await?;
    Ok(user_reads.with(settings))
}

/// [`read_for_request`] under the application `application_id` an API key was last found for
/// (`super::api_keys`), its settings read only while its key has the digest `key_digest`:
/// `None` when the key is no longer the application's (the user's reads, made beside it, are
/// then dropped unseen).
async fn read_for_request_by_key(
    ctx: &Ctx,
    application_id: &ApplicationId,
    key_digest: &str,
    user_id: &UserId,
    policy_facts: PolicyFacts,
) -> Result<Option<RequestReads>, DomainError> {
    let settings = crate::store::applications::request_settings_with_key_on(
        ctx.db.pool(),
        application_id,
        key_digest,
    );
    let (user_reads, settings) =
        read_beside(ctx, application_id, user_id, policy_facts, settings).await?;
    Ok(settings.map(|settings| user_reads.with(settings)))
}

/// The user's half of [`RequestReads`], read beside the application's settings
/// ([`read_beside`]).
struct UserReads {
    user: RequestUser,
    devices: Vec<Enrollment>,
    policy_facts: Option<super::policy::FactsAhead>,
}

impl UserReads {
    /// The request's reads, with the application's `settings`.
    fn with(self, settings: crate::store::applications::RequestSettings) -> RequestReads {
        RequestReads {
            user: self.user,
            settings,
            devices: self.devices,
            policy_facts: self.policy_facts,
        }
    }
}

/// The user's reads (and the policy's facts when `policy_facts` asks for them) side by side
/// with `settings`, a read of the application's settings, and what that read gave.
async fn read_beside<S>(
    ctx: &Ctx,
    application_id: &ApplicationId,
    user_id: &UserId,
    policy_facts: PolicyFacts,
    settings: impl std::future::Future<Output = Result<S, crate::store::StoreError>>,
) -> Result<(UserReads, S), DomainError> {
    let ((user, devices), settings, policy_facts) = tokio::try_join!(
        user_and_devices(ctx, application_id, user_id),
        async { settings.await.map_err(DomainError::from) },
        facts_ahead(ctx, application_id, user_id, policy_facts),
    )?;
    let user_reads = UserReads {
        user,
        devices,
        policy_facts,
    };
    Ok((user_reads, settings))
}

/// The policy's facts read ahead for `user_id` when `policy_facts` asks for them.
async fn facts_ahead(
    ctx: &Ctx,
    application_id: &ApplicationId,
    user_id: &UserId,
    policy_facts: PolicyFacts,
) -> Result<Option<super::policy::FactsAhead>, DomainError> {
    match policy_facts {
        PolicyFacts::ReadAhead => super::policy::read_ahead(ctx, application_id, user_id).await,
        PolicyFacts::Skip => Ok(None),
    }
}

impl RequestReads {
    /// These reads for another user of the same application: the settings are kept, the user,
    /// their devices and (when these reads had them) the policy's facts are read (side by
    /// side).
    pub(crate) async fn for_user(
        mut self,
        ctx: &Ctx,
        application_id: &ApplicationId,
        user_id: &UserId,
    ) -> Result<RequestReads, DomainError> {
        let policy_facts = if self.policy_facts.is_some() {
            PolicyFacts::ReadAhead
        } else {
            PolicyFacts::Skip
        };
        let ((user, devices), facts) = tokio::try_join!(
            user_and_devices(ctx, application_id, user_id),
            facts_ahead(ctx, application_id, user_id, policy_facts),
        )?;
        (self.user, self.devices, self.policy_facts) = (user, devices, facts);
        Ok(self)
    }
}

/// The user-dependent half of [`RequestReads`]: the user with their bypass, and their devices,
/// in one read (no user: no devices).
async fn user_and_devices(
    ctx: &Ctx,
    application_id: &ApplicationId,
    user_id: &UserId,
) -> Result<(RequestUser, Vec<Enrollment>), DomainError> {
    Ok(
        crate::store::users::get_with_devices_for_request_on(
            ctx.db.pool(),
            application_id,
            user_id,
        )
        .await?
        .map_or((None, Vec::new()), |(user, devices)| (Some(user), devices)),
    )
}

/// The device to ask: `wanted`, or the user's primary (else first) active device.
pub(crate) async fn pick_device(
    ctx: &Ctx,
    application_id: &ApplicationId,
    user_id: &tessera_protocol::ids::UserId,
    wanted: Option<&EnrollmentId>,
) -> Result<Enrollment, DomainError> {
    let devices = super::device_verification::user_devices(ctx, application_id, user_id).await?;
    pick_from(devices, wanted)
}

/// [`pick_device`] among the user's `devices` as read on the request's connection
/// (`enrollments::list_for_user_on`); those pending verification are settled first.
pub(crate) async fn pick_device_among(
    ctx: &Ctx,
    application_id: &ApplicationId,
    user_id: &tessera_protocol::ids::UserId,
    devices: Vec<Enrollment>,
    wanted: Option<&EnrollmentId>,
) -> Result<Enrollment, DomainError> {
    let devices =
        super::device_verification::settled_devices(ctx, application_id, user_id, devices).await?;
    pick_from(devices, wanted)
}

/// [`pick_device`] among the user's `devices` (as `device_verification::user_devices` lists
/// them: settled).
pub(crate) fn pick_from(
    mut devices: Vec<Enrollment>,
    wanted: Option<&EnrollmentId>,
) -> Result<Enrollment, DomainError> {
    let at = pick_position(&devices, wanted)?;
    Ok(devices.swap_remove(at))
}

/// [`pick_from`] without taking the list: the device to ask among `devices`.
pub(crate) fn pick_among<'d>(
    devices: &'d [Enrollment],
    wanted: Option<&EnrollmentId>,
) -> Result<&'d Enrollment, DomainError> {
    let at = pick_position(devices, wanted)?;
    devices
        .get(at)
        .ok_or(DomainError::Internal("a picked device out of its list"))
}

/// Where in `devices` the device to ask is: `wanted` if active, else the primary active device,
/// else the first active one.
fn pick_position(
    devices: &[Enrollment],
    wanted: Option<&EnrollmentId>,
) -> Result<usize, DomainError> {
    let active = |d: &Enrollment| d.status == EnrollmentState::Active;
    match wanted {
        Some(id) => devices
            .iter()
            .position(|d| active(d) && &d.enrollment_id == id)
            .ok_or_else(|| {
                DomainError::new(ErrorCode::DeviceNotFound, "no such device for this user")
            }),
        None => devices
            .iter()
            .position(|d| active(d) && d.is_primary)
            .or_else(|| devices.iter().position(active))
            .ok_or_else(|| DomainError::new(ErrorCode::NoDevice, "the user has no paired device")),
    }
}

async fn load(ctx: &Ctx, id: &AuthenticationId) -> Result<Authentication, DomainError> {
    authentications::get(&ctx.db, id, ctx.now())
        .await?
        .ok_or_else(|| {
            DomainError::new(ErrorCode::AuthenticationNotFound, "no such authentication")
        })
}

/// The application's authentication `raw` (another application's reads as not found).
pub(crate) async fn load_for(
    ctx: &Ctx,
    application_id: &ApplicationId,
    raw: &str,
) -> Result<Authentication, DomainError> {
    let record = load(ctx, &parse_id(raw)?).await?;
    if &record.application_id != application_id {
        return Err(DomainError::new(
            ErrorCode::AuthenticationNotFound,
            "no such authentication",
        ));
    }
    Ok(record)
}

/// Refuses anything but a pending, unexpired authentication.
pub(crate) fn require_pending(record: &Authentication) -> Result<(), DomainError> {
    match pending_error(record.state) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn parse_id(raw: &str) -> Result<AuthenticationId, DomainError> {
    raw.parse()
        .map_err(|_| DomainError::new(ErrorCode::AuthenticationNotFound, "no such authentication"))
}

pub(crate) fn mismatch(message: &str) -> DomainError {
    DomainError::new(ErrorCode::ResponseMismatch, message)
}

/// Verifies a device-signed answer with the key its `kid` names: the enrollment's
/// user-verification key or its possession key (any other is refused with `not_its_key`).
/// Returns the payload and whether the user-verification key signed it.
pub(crate) fn verify_answer<T: serde::de::DeserializeOwned>(
    signed: &str,
    message_type: MessageType,
    device: &Enrollment,
    not_its_key: &str,
) -> Result<(T, bool), DomainError> {
    let header = envelope::inspect(signed).map_err(|_| {
        DomainError::new(
            ErrorCode::InvalidSignature,
            "the response is not a valid signed message",
        )
    })?;
    let (key, with_uv) = if header.kid == device.user_verification_key.thumbprint() {
        (&device.user_verification_key, true)
    } else if header.kid == device.possession_key.thumbprint() {
        (&device.possession_key, false)
    } else {
        return Err(DomainError::new(ErrorCode::InvalidSignature, not_its_key));
    };
    let payload = envelope::verify::<T>(signed, message_type, key)
        .map_err(|_| {
            DomainError::new(
                ErrorCode::InvalidSignature,
                "the response's signature does not verify",
            )
        })?
        .payload;
    Ok((payload, with_uv))
}

/// What every device answer must satisfy: signed within 5 minutes of `now`, at most 8
/// RFC 8176 `amr` values, a location (if any) in range, and device versions (if any) that are
/// short, displayable texts (as at pairing).
pub(crate) fn check_answer(
    issued_at: i64,
    amr: &[String],
    location: Option<DeviceLocation>,
    versions: Option<&DeviceVersions>,
    now: i64,
) -> Result<(), DomainError> {
    if (issued_at - now).abs() > 300 {
        return Err(DomainError::new(
            ErrorCode::StaleMessage,
            "the response is too old or from the future",
        ));
    }
    if amr.len() > 8 || amr.iter().any(|m| !AMR_VALUES.contains(&m.as_str())) {
        return Err(mismatch("amr holds a value that is not an RFC 8176 method"));
    }
    if location.is_some_and(|l| !l.is_valid()) {
        return Err(mismatch("the location is out of range"));
    }
    if let Some(v) = versions {
        let bad = |s: &String| {
            s.chars().count() > super::pairing::MAX_INFO_CHARS
                || !tessera_protocol::display::is_displayable(s)
        };
        if [&v.model, &v.os_version, &v.app_version]
            .into_iter()
            .any(bad)
        {
            return Err(mismatch(
                "the device's model, OS version or app version is too long or not displayable",
            ));
        }
    }
    Ok(())
}

/// The enrollment as the device describes itself in a signed answer: the model, OS version and
/// app version it reports now (when it does; devices built before answers carried them keep
/// the enrollment's) and its current signals.
pub(crate) fn as_answered(
    device: &Enrollment,
    versions: Option<&DeviceVersions>,
    signals: DeviceSignals,
) -> Enrollment {
    let mut current = device.clone();
    if let Some(v) = versions {
        current.device_info = v.applied_to(&device.device_info);
    }
    current.signals = signals;
    current
}

/// Keeps the enrollment's device info and signals as the device's recorded answer describes
/// them (`as_answered`), writing only when something changed. The answer is already recorded:
/// a failure here is logged, not returned (the device would otherwise retry an answer the
/// server holds).
pub(crate) async fn remember_answered_device(ctx: &Ctx, before: &Enrollment, now: &Enrollment) {
    if before.device_info == now.device_info && before.signals == now.signals {
        return;
    }
    if let Err(e) = enrollments::set_reported_state(
        &ctx.db,
        &before.enrollment_id,
        &before.device_info,
        &now.device_info,
        &now.signals,
    )
    .await
    {
        tracing::warn!(enrollment_id = %before.enrollment_id, error = %e, "could not record the device's reported versions");
    }
}

/// What a signed answer says that the attributes report.
pub(crate) struct AnswerFacts<'a> {
    /// The RFC 8176 methods.
    pub amr: &'a [String],
    /// The posture signals.
    pub signals: DeviceSignals,
    /// The location, if reported.
    pub location: Option<DeviceLocation>,
}

/// The authentication attributes a relying party evaluates, named as PingID names them. As in
/// PingID, a `POLICY_APPROVE` (silent verification: nobody acted on the device) carries no
/// authenticating-device attributes; the device's signed answer still names the enrollment.
fn attributes(
    ctx: &Ctx,
    record: &Authentication,
    device: &Enrollment,
    response: &AuthenticationResponse,
    signed_with_user_verification: bool,
    device_ip: &str,
) -> BTreeMap<String, Value> {
    attributes_for(
        ctx,
        record.kind,
        record.accessing_ip.as_deref(),
        device,
        &AnswerFacts {
            amr: &response.amr,
            signals: response.signals,
            location: response.location,
        },
        signed_with_user_verification,
        device_ip,
    )
}

/// The `pingid.authentication.authenticating.device.*` attributes of `device`, the device that
/// authenticated.
pub(crate) fn insert_device_attributes(
    attributes: &mut BTreeMap<String, Value>,
    device: &Enrollment,
) {
    let d = "pingid.authentication.authenticating.device.";
    attributes.insert(format!("{d}id"), json!(device.device_id));
    attributes.insert(format!("{d}model"), json!(device.device_info.model));
    attributes.insert(
        format!("{d}os.version"),
        json!(device.device_info.os_version),
    );
    attributes.insert(
        format!("{d}app.version"),
        json!(device.device_info.app_version),
    );
    attributes.insert(
        format!("{d}attested"),
        json!(super::attestation::enrollment_attested(
            device.attestation.as_ref()
        )),
    );
}

/// The accessing device's attributes (its IP, and the country and reputation the IP table
/// gives it).
pub(crate) fn accessing_attributes(
    ctx: &Ctx,
    accessing_ip: Option<&str>,
    a: &mut BTreeMap<String, Value>,
) {
    let Some(ip) = accessing_ip else {
        return;
    };
    let a_dev = "pingid.authentication.accessing.device.";
    a.insert(format!("{a_dev}ip"), json!(ip));
    if let Some(facts) = ctx.config.accessing_ip_table.lookup(ip) {
        if let Some(country) = &facts.country {
            a.insert(format!("{a_dev}country"), json!(country));
        }
        if let Some(reputation) = facts.reputation {
            a.insert(format!("{a_dev}ip.reputation"), json!(reputation.as_str()));
        }
    }
}

/// The attributes of an answer of `kind` (QR logins report as approvals).
pub(crate) fn attributes_for(
    ctx: &Ctx,
    kind: AuthenticationKind,
    accessing_ip: Option<&str>,
    device: &Enrollment,
    response: &AnswerFacts<'_>,
    signed_with_user_verification: bool,
    device_ip: &str,
) -> BTreeMap<String, Value> {
    let p = "pingid.authentication.";
    let mut a = BTreeMap::new();
    accessing_attributes(ctx, accessing_ip, &mut a);
    if kind == AuthenticationKind::Silent {
        a.insert(format!("{p}type"), json!("POLICY_APPROVE"));
        return a;
    }
    // The device's claim of biometrics counts only when its user-verification key is proven
    // (attested) to require user authentication; otherwise it is kept apart, as unverified.
    let claims_biometrics = signed_with_user_verification
        && response
            .amr
            .iter()
            .any(|m| BIOMETRIC_AMR.contains(&m.as_str()));
    let proven = super::attestation::user_verification_proven(device.attestation.as_ref());
    let auth_type = if claims_biometrics && proven {
        "MOBILE_APP_BIOMETRICS"
    } else {
        "MOBILE_APP_SWIPE"
    };
    a.insert(format!("{p}type"), json!(auth_type));
    if claims_biometrics && !proven {
        a.insert(
            format!("{p}unverified.type"),
            json!("MOBILE_APP_BIOMETRICS"),
        );
    }
    insert_device_attributes(&mut a, device);
    let d = format!("{p}authenticating.device.");
    a.insert(format!("{d}ip"), json!(device_ip));
    a.insert(format!("{d}is.rooted"), json!(response.signals.rooted));
    a.insert(format!("{d}is.locked"), json!(response.signals.screen_lock));
    a.insert(format!("{d}is.mdm"), json!(response.signals.mdm));
    if let Some(emulator) = response.signals.emulator {
        a.insert(format!("{d}is.emulator"), json!(emulator));
    }
    if let Some(location) = &response.location {
        a.insert(format!("{d}latitude"), json!(location.latitude));
        a.insert(format!("{d}longitude"), json!(location.longitude));
        if let Some(altitude) = location.altitude {
            a.insert(format!("{d}altitude"), json!(altitude));
        }
        if let Some(accuracy) = location.accuracy {
            a.insert(format!("{d}accuracy"), json!(accuracy));
        }
    }
    a.insert(format!("{p}amr"), json!(response.amr));
    a
}

/// Refuses anything but a pending, unexpired authentication.
pub(crate) fn pending_error(state: AuthenticationState) -> Option<DomainError> {
    match state {
        AuthenticationState::Pending => None,
        AuthenticationState::Expired => Some(DomainError::new(
            ErrorCode::AuthenticationExpired,
            "the authentication expired",
        )),
        _ => Some(DomainError::new(
            ErrorCode::AlreadyAnswered,
            "the authentication was already answered",
        )),
    }
}

/// How the application's policy ends a request before anyone is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PolicyEnding {
    /// Approved without user action (`POLICY_APPROVE`).
    Approved,
    /// Refused (`failed`, `policy_denied`).
    Denied,
    /// The policy requires methods a push cannot satisfy (`failed`,
    /// `policy_requires_other_method`): the relying party offers one of them instead.
    OtherMethodRequired,
}

/// What a decision means for a push: the ending it imposes, if any, and whether the answer
/// must be signed with user verification (a `require` that prefers `mobile_biometrics` to
/// `mobile_push`).
pub(crate) fn policy_shape(
    decided: Option<&super::policy::Decided>,
    require_user_verification: bool,
) -> (Option<PolicyEnding>, bool) {
    let Some(decided) = decided else {
        return (None, require_user_verification);
    };
    match decided.decision.effect {
        PolicyEffect::Approve => (Some(PolicyEnding::Approved), require_user_verification),
        PolicyEffect::Deny => (Some(PolicyEnding::Denied), require_user_verification),
        PolicyEffect::Require => {
            let methods = &decided.decision.methods;
            match methods
                .iter()
                .find(|m| matches!(m, PolicyMethod::MobilePush | PolicyMethod::MobileBiometrics))
            {
                Some(PolicyMethod::MobileBiometrics) => (None, true),
                Some(_) => (None, require_user_verification),
                None if methods.is_empty() => (None, require_user_verification),
                None => (
                    Some(PolicyEnding::OtherMethodRequired),
                    require_user_verification,
                ),
            }
        }
    }
}

/// Ends a not yet stored `record` as the policy says: approved with `POLICY_APPROVE` and no
/// authenticating-device attributes (seed 003), or failed with the policy's reason code.
pub(crate) fn end_by_policy(ctx: &Ctx, record: &mut Authentication, ending: PolicyEnding) {
    let now = ctx.now();
    record.answered_at = Some(now);
    record.otp_mode = authentications::OtpMode::None;
    record.otp_after = None;
    record.backup_channels = Vec::new();
    match ending {
        PolicyEnding::Approved => {
            let mut a = BTreeMap::new();
            accessing_attributes(ctx, record.accessing_ip.as_deref(), &mut a);
            a.insert("pingid.authentication.type".into(), json!("POLICY_APPROVE"));
            record.state = AuthenticationState::Approved;
            record.decision = Some(Decision::Approve);
            record.attributes = serde_json::to_string(&a).ok();
        }
        PolicyEnding::Denied => {
            record.state = AuthenticationState::Failed;
            record.failure_reason = Some("policy_denied".into());
        }
        PolicyEnding::OtherMethodRequired => {
            record.state = AuthenticationState::Failed;
            record.failure_reason = Some("policy_requires_other_method".into());
        }
    }
}

/// Asks a user's device: checks the request, the application's mandatory methods and the
/// push-bombing limits, signs the request to the chosen device, stores it for pulling, and
/// pushes it in the background.
pub(crate) async fn create(
    ctx: &Ctx,
    app: &Application,
    user_id: &UserId,
    body: CreateAuthenticationRequest,
) -> Result<AuthenticationStatus, DomainError> {
    // The request's reads that need nothing else (the user with its language and bypass, the
    // application's settings with its current policy, the user's devices), side by side.
    let reads = read_for_request(ctx, &app.id, user_id, policy_facts_for(&body)).await?;
    create_from(ctx, (&app.id, &app.name), user_id, body, reads, None)
        .await?
        .for_caller()
}

/// Whether a customer's new request `body` is decided by the application's policy (an approval
/// or a transaction), so its reads read the policy's facts ahead.
fn policy_facts_for(body: &CreateAuthenticationRequest) -> PolicyFacts {
    match body.kind {
        AuthenticationKind::Approval | AuthenticationKind::Transaction => PolicyFacts::ReadAhead,
        _ => PolicyFacts::Skip,
    }
}

/// [`create`] for a customer call that presents its API key unchecked (`presented`): under the
/// application the key was last found for (`super::api_keys`), the key is checked by the read
/// of the application's settings, which goes out beside the user's reads, so the request reads
/// in one round trip where it took two. Without a hint, or when that read finds the key no
/// longer the application's, the long way: the key looked up (401 when unknown), then
/// [`create`].
pub(crate) async fn create_by_key(
    ctx: &Ctx,
    presented: &super::api_keys::PresentedKey,
    user_id: &UserId,
    body: CreateAuthenticationRequest,
) -> Result<AuthenticationStatus, DomainError> {
    let policy_facts = policy_facts_for(&body);
    let hinted = super::api_keys::read_under_hint(ctx, presented, |app_id, digest| async move {
        let reads = read_for_request_by_key(ctx, &app_id, &digest, user_id, policy_facts).await?;
        Ok(reads.map(|reads| (app_id, reads)))
    })
    .await?;
    if let Some((app_id, reads)) = hinted {
        let name = reads.settings.name.clone();
        return create_from(ctx, (&app_id, &name), user_id, body, reads, None)
            .await?
            .for_caller();
    }
    let app = super::api_keys::authenticate(ctx, presented).await?;
    create(ctx, &app, user_id, body).await
}

/// The move of the flow a new push is made for, from the push's status (its id, number and
/// expiry): what [`create_for_flow`] writes with the push.
pub(crate) type FlowMoveFor<'a> = &'a (
        dyn Fn(&AuthenticationStatus) -> Result<crate::store::flows::MoveWithRequest, DomainError>
            + Send
            + Sync
    );

/// What [`create_for_flow`] made.
#[derive(Debug)]
pub(crate) enum MadeForFlow {
    /// The push, stored pending, and the flow moved with it in the same write: nothing could
    /// answer the push before the flow showed it. With the move as written.
    Moved(
        AuthenticationStatus,
        Box<crate::store::flows::MoveWithRequest>,
    ),
    /// The request, and no flow moved with it: without a flow, the request as made; with one,
    /// the request ended as it was made (by the user's bypass or by the policy), and the flow's
    /// action moves the flow.
    Made(AuthenticationStatus),
    /// Nothing: the flow moved since its action's claim.
    FlowLost,
}

impl MadeForFlow {
    /// The status a caller without a flow is answered.
    fn for_caller(self) -> Result<AuthenticationStatus, DomainError> {
        match self {
            Self::Moved(status, _) | Self::Made(status) => Ok(status),
            Self::FlowLost => Err(DomainError::Internal(
                "a flow lost by a request without one",
            )),
        }
    }
}

/// [`create`] for a flow's action, its reads made beside the flow's own (`reads`, as
/// [`read_for_request`] makes them) and the policy decided for the whole flow already: a push
/// stored pending is written with the flow's move `moved` makes from its status, all or nothing
/// (`applications::MadeFor::Flow`).
pub(crate) async fn create_for_flow(
    ctx: &Ctx,
    app: &Application,
    user_id: &UserId,
    body: CreateAuthenticationRequest,
    reads: RequestReads,
    moved: FlowMoveFor<'_>,
    decided: Option<&super::policy::Decided>,
) -> Result<MadeForFlow, DomainError> {
    let flow = ForFlow { moved, decided };
    create_from(ctx, (&app.id, &app.name), user_id, body, reads, Some(flow)).await
}

/// A push made for a flow's action ([`create_for_flow`]): what is written with it when it is
/// stored pending.
#[derive(Clone, Copy)]
struct ForFlow<'a> {
    /// The flow's move, from the push's status.
    moved: FlowMoveFor<'a>,
    /// The policy decision the flow's step made, recorded with the move (its subject the flow).
    decided: Option<&'a super::policy::Decided>,
}

/// [`create`] for the application `(id, name)`, once its reads are made; with `flow`, for a
/// flow's action ([`create_for_flow`]), whose policy was decided for the whole flow already
/// (the request is not decided on its own).
async fn create_from(
    ctx: &Ctx,
    (app_id, app_name): (&ApplicationId, &str),
    user_id: &UserId,
    body: CreateAuthenticationRequest,
    reads: RequestReads,
    flow: Option<ForFlow<'_>>,
) -> Result<MadeForFlow, DomainError> {
    let RequestReads {
        user,
        settings: app_settings,
        devices: user_devices,
        policy_facts,
    } = reads;
    let (user, stored_bypass) = user.ok_or_else(|| {
        DomainError::new(ErrorCode::UserNotFound, "no such user in this application")
    })?;
    let expires_in = body.expires_in.unwrap_or(120);
    if !(10..=900).contains(&expires_in) {
        return Err(invalid("expires_in must be between 10 and 900 seconds"));
    }
    check_fields(&body.fields)?;
    check_fields(&body.hidden_fields)?;
    for (text, what) in [
        (&body.message, "message"),
        (&body.accessing_ip, "accessing_ip"),
        (&body.accessing_location, "accessing_location"),
        (&body.application_icon_url, "application_icon_url"),
    ] {
        if let Some(t) = text {
            check_text(t, 256, what)?;
        }
    }
    super::users::check_locale(body.locale.as_deref())?;
    let app_name = app_name.to_string();
    // The server's own texts: the request's language, then the user's, then English.
    // The user's language came with the user (no second read).
    let wanted = super::users::wanted_languages_of(&user, body.locale.as_deref());
    let (default_prompt, lang) = super::users::localized(
        &wanted,
        "sign-in-prompt",
        &[("application", crate::i18n::Arg::Text(&app_name))],
    )?;
    let parameters = match body.kind {
        AuthenticationKind::Approval => DynamicParameters {
            message: body.message.clone().unwrap_or(default_prompt),
            fields: body.fields.clone(),
            hidden_fields: body.hidden_fields.clone(),
        },
        AuthenticationKind::Transaction => {
            let message = body
                .message
                .clone()
                .filter(|m| !m.trim().is_empty())
                .ok_or_else(|| invalid("a transaction needs a message"))?;
            if body.fields.is_empty() {
                return Err(invalid("a transaction needs at least one field"));
            }
            DynamicParameters {
                message,
                fields: body.fields.clone(),
                hidden_fields: body.hidden_fields.clone(),
            }
        }
        AuthenticationKind::Ciba => {
            return Err(invalid(
                "CIBA requests are made by relying parties at the backchannel authentication endpoint",
            ));
        }
        AuthenticationKind::Silent => {
            if body.number_matching.is_some_and(NumberMatching::is_on)
                || body.require_user_verification
                || body.message.is_some()
                || !body.fields.is_empty()
            {
                return Err(invalid(
                    "a silent verification shows nothing: no message, fields, number matching or user verification",
                ));
            }
            DynamicParameters::default()
        }
    };
    // One read of the application's settings (above) serves the whole request.
    let policy = &app_settings.otp;
    if !policy.mandatory_methods.is_empty() {
        let registered = super::methods::registered_methods(ctx, app_id, user_id).await?;
        let missing: Vec<AuthenticationMethod> = policy
            .mandatory_methods
            .iter()
            .copied()
            .filter(|m| !registered.contains(m))
            .collect();
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|m| m.as_str()).collect();
            return Err(DomainError::new(
                ErrorCode::MandatoryMethodsMissing,
                format!(
                    "the user must register these authentication methods first: {}",
                    names.join(", ")
                ),
            )
            .with_missing_methods(missing));
        }
    }
    if body
        .otp_fallback_after
        .is_some_and(|s| !(1..=900).contains(&s))
    {
        return Err(invalid(
            "otp_fallback_after must be between 1 and 900 seconds",
        ));
    }
    let silent = body.kind == AuthenticationKind::Silent;
    let use_code = body.use_code.unwrap_or(policy.use_code) && !silent;
    let otp_fallback = body.otp_fallback.unwrap_or(policy.otp_fallback) && !silent;
    let mut backup_channels = if silent {
        Vec::new()
    } else {
        body.backup_channels
            .clone()
            .unwrap_or_else(|| policy.backup_channels.clone())
    };
    backup_channels.sort();
    backup_channels.dedup();
    // A silent verification shows nothing and is not capped: no settings to read.
    let settings = if silent {
        None
    } else {
        Some(app_settings.authentication)
    };
    let number_matching = match &settings {
        None => NumberMatching::Off,
        Some(settings) => body.number_matching.unwrap_or(settings.number_matching),
    };
    let device = pick_device_among(
        ctx,
        app_id,
        user_id,
        user_devices,
        body.enrollment_id.as_ref(),
    )
    .await?;
    let decided = match body.kind {
        AuthenticationKind::Approval | AuthenticationKind::Transaction if flow.is_none() => {
            let kind = if body.kind == AuthenticationKind::Transaction {
                RequestKind::Transaction
            } else {
                RequestKind::Push
            };
            super::policy::decide_as_read(
                ctx,
                app_id,
                user_id,
                &super::policy::Request {
                    kind,
                    accessing_ip: body.accessing_ip.as_deref(),
                    device: Some(super::policy::device_facts(&device)),
                    fields: &body.fields,
                },
                app_settings.policy.as_ref(),
                policy_facts,
            )
            .await?
        }
        _ => None,
    };
    let (policy_ending, require_user_verification) =
        policy_shape(decided.as_ref(), body.require_user_verification);
    // A bypass (docs/bypass-and-recovery.md): a push or transaction the policy neither denies
    // nor approves completes at once, with nothing sent to the device.
    let bypass = match (body.kind, policy_ending) {
        (
            AuthenticationKind::Approval | AuthenticationKind::Transaction,
            None | Some(PolicyEnding::OtherMethodRequired),
        ) => super::bypass::in_force(ctx, stored_bypass),
        _ => None,
    };
    let record = new_authentication(
        ctx,
        app_id,
        user_id,
        &device,
        Question {
            kind: body.kind,
            parameters,
            context: AccessContext {
                application_name: app_name,
                application_icon_url: body.application_icon_url.clone(),
                ip: body.accessing_ip.clone(),
                location: body.accessing_location.clone(),
            },
            number_matching,
            require_user_verification,
            expires_in,
            ciba: None,
            locale: (body.kind != AuthenticationKind::Silent).then_some(lang),
        },
    )?;
    let mut record = record;
    record.policy = decided
        .as_ref()
        .and_then(super::policy::Decided::outcome_json);
    if let Some(bypass) = &bypass {
        let mut bypassed = record.clone();
        super::bypass::end_by_bypass(ctx, &mut bypassed, bypass);
        if outcome::record_made_ending(ctx, &bypassed, MadeEnding::Bypass, decided.as_ref()).await?
        {
            return Ok(MadeForFlow::Made(bypassed.status_at(ctx.now())));
        }
        // The bypass was cleared as the request was made: the device is asked, as it would
        // have been had the clearing come first.
        tracing::info!(authentication_id = %record.id, "bypass cleared meanwhile: device asked");
    }
    if let (Some(ending), Some(decided)) = (policy_ending, &decided) {
        end_by_policy(ctx, &mut record, ending);
        outcome::record_made_ending(ctx, &record, MadeEnding::Policy, Some(decided)).await?;
        return Ok(MadeForFlow::Made(record.status_at(ctx.now())));
    }
    // A `require` that names methods limits the codes the push takes to those it names
    // (docs/policy.md): the app's passcodes need `mobile_passcode` or `oath`, a backup channel
    // its own method. What it leaves out is not offered; an answer with it is refused
    // (`otp::answer_authentication`, `backup::send_for_authentication`).
    let allowed = |method| {
        decided
            .as_ref()
            .is_none_or(|d| d.check_method(method).is_ok())
    };
    let app_codes = allowed(PolicyMethod::MobilePasscode) || allowed(PolicyMethod::Oath);
    if use_code && app_codes {
        record.otp_mode = authentications::OtpMode::UseCode;
        record.otp_after = Some(record.created_at);
    } else if otp_fallback && app_codes {
        record.otp_mode = authentications::OtpMode::Fallback;
        let after = body.otp_fallback_after.unwrap_or(policy.otp_fallback_after);
        record.otp_after = Some(record.created_at + i64::from(after));
    }
    backup_channels.retain(|c| allowed(super::backup::policy_method(*c)));
    record.backup_channels = backup_channels;
    let quota = super::applications::quotas_in_force(ctx, app_settings.quotas).pending_requests;
    let limits = super::applications::UserLimits {
        push_bombing: settings
            .as_ref()
            .map(|s| super::applications::push_bombing_limits(&ctx.config, s)),
        push_limit: decided.as_ref().and_then(|d| d.decision.push_limit),
    };
    // One atomic write (`applications::admit`): the counts and the request, with its audit
    // record and the policy decision with its own, under the admission's locks (on PostgreSQL
    // one statement). The device's waiters are told once it committed.
    let created = outcome::NewRequest::of(ctx, &record)?;
    let flow_move = match flow {
        Some(flow) => Some(((flow.moved)(&record.status_at(ctx.now()))?, flow.decided)),
        None => None,
    };
    let made_for = match &flow_move {
        Some((moved, decided)) => super::applications::MadeFor::Flow(moved, *decided),
        None => super::applications::MadeFor::Caller,
    };
    let announced = match super::applications::admit(
        ctx,
        &record,
        quota,
        &limits,
        decided.as_ref(),
        &created,
        made_for,
    )
    .await?
    {
        super::applications::Admitted::Stored(announced) => announced,
        super::applications::Admitted::FlowLost => return Ok(MadeForFlow::FlowLost),
        super::applications::Admitted::PushLimited(reason) => {
            // Other requests took the last places of the policy's limit since it was
            // decided: the policy denies this one, as it would have had they come first.
            let Some(mut decided) = decided else {
                return Err(DomainError::Internal(
                    "a push limit without a policy decision",
                ));
            };
            decided.limit_reached(reason);
            record.policy = decided.outcome_json();
            end_by_policy(ctx, &mut record, PolicyEnding::Denied);
            outcome::record_made_ending(ctx, &record, MadeEnding::Policy, Some(&decided)).await?;
            return Ok(MadeForFlow::Made(record.status_at(ctx.now())));
        }
        // Only a request the bypass ended is admitted while the bypass stands: this one is
        // recorded by `outcome::record_made_ending` above.
        super::applications::Admitted::BypassCleared => {
            return Err(DomainError::Internal(
                "a request not ended by a bypass was refused for its bypass",
            ));
        }
    };
    announced.committed(ctx);
    tracing::info!(authentication_id = %record.id, kind = ?record.kind, "authentication created");
    // Push is a hint, delivered in the background; the request is already stored for pulling.
    // Without a chosen device, the user's other devices are the fallback.
    let fall_back = body.enrollment_id.is_none();
    tokio::spawn(super::fallback::deliver(
        ctx.clone(),
        record.clone(),
        device,
        fall_back,
        app_settings.push,
    ));
    let status = record.status_at(ctx.now());
    Ok(match flow_move {
        Some((moved, _)) => MadeForFlow::Moved(status, Box::new(moved)),
        None => MadeForFlow::Made(status),
    })
}

/// An authentication of `application_id`; with `wait`, answers once it leaves `pending`, when
/// it expires, or when `wait` has passed, whichever comes first. Waiting reads the database
/// only when the authentication is announced as changed (and once at the deadline).
pub(crate) async fn status(
    ctx: &Ctx,
    application_id: &ApplicationId,
    id: &str,
    wait: Duration,
) -> Result<AuthenticationStatus, DomainError> {
    let record = load_for(ctx, application_id, id).await?;
    status_of(ctx, record, wait).await
}

/// [`status`] for a customer call that presents its API key unchecked (`presented`): the key is
/// checked in the statement that reads the authentication, under the application it was last
/// found for (`super::api_keys`), so the call reads once where it would read twice. Without a
/// hint, or when that read finds nothing (the key rotated, another application's request, no
/// such request), the long way: the key looked up (refused with 401 when unknown), then
/// [`status`] (404 when not the application's).
pub(crate) async fn status_by_key(
    ctx: &Ctx,
    presented: &super::api_keys::PresentedKey,
    id: &str,
    wait: Duration,
) -> Result<AuthenticationStatus, DomainError> {
    if let Ok(parsed) = parse_id(id) {
        let hinted = super::api_keys::read_under_hint(ctx, presented, |app, digest| async move {
            Ok(authentications::get_with_key(&ctx.db, &parsed, &app, &digest, ctx.now()).await?)
        })
        .await?;
        if let Some(record) = hinted {
            return status_of(ctx, record, wait).await;
        }
    }
    let app = super::api_keys::authenticate(ctx, presented).await?;
    status(ctx, &app.id, id, wait).await
}

/// The status of `record` as read; with `wait`, once it leaves `pending` (see [`status`]).
async fn status_of(
    ctx: &Ctx,
    record: Authentication,
    wait: Duration,
) -> Result<AuthenticationStatus, DomainError> {
    if record.state != AuthenticationState::Pending || wait.is_zero() {
        return Ok(record.status_at(ctx.now()));
    }
    let wait = wait.min(ctx.until(record.expires_at));
    let id = record.id.clone();
    let record = wait_for(
        &ctx.events,
        Topic::Authentication(id.to_string()),
        wait,
        || load(ctx, &id),
        |r| r.state != AuthenticationState::Pending,
    )
    .await?;
    Ok(record.status_at(ctx.now()))
}

/// A device's pull (`GET /v1/device/enrollments/{enrollment_id}/requests`): authenticates the
/// device-signed `call` for the enrollment the path names (`enrollment_raw`), then answers the
/// signed requests pending for it; with `wait`, once there is one (or `wait` has passed),
/// reading again only when the device is announced as having a new request (and once at the
/// deadline). The enrollment is read with the requests pending for it in one statement
/// (`device_auth::authenticate_reading_with`), then the call's nonce is written; only a call
/// whose signature verified and whose nonce was new sees what was read. Every connection is
/// given back before any wait (a waiting pull holds none).
pub(crate) async fn pull(
    ctx: &Ctx,
    call: super::device_auth::DeviceCall<'_>,
    enrollment_raw: &str,
    wait: Duration,
) -> Result<PendingRequests, DomainError> {
    // The first read of the signing device's pending requests is made with its enrollment's.
    // A waiting pull subscribes to its device's announcements before that read: a request made
    // after the subscription wakes it, one made before is in the first read.
    let now = ctx.now();
    let (device, (subscription, first)) =
        super::device_auth::authenticate_reading_with(ctx, call, |enrollment| async move {
            let subscription = (!wait.is_zero()).then(|| {
                ctx.events
                    .subscribe(Topic::Enrollment(enrollment.to_string()))
            });
            let read = authentications::pending_with_enrollment(&ctx.db, &enrollment, now).await?;
            Ok(read.map(|(device, first)| (device, (subscription, first))))
        })
        .await?;
    let enrollment = super::device_auth::same_enrollment(&device, enrollment_raw)?;
    // The first read is the one made with the enrollment; later ones (after a wake-up) read again.
    let first = std::sync::Mutex::new(Some(first));
    let requests = wait_subscribed(
        subscription,
        wait,
        || {
            let first = first.lock().ok().and_then(|mut first| first.take());
            let enrollment = &enrollment;
            async move {
                match first {
                    Some(requests) => Ok(requests),
                    None => authentications::pending_for(&ctx.db, enrollment, ctx.now()).await,
                }
            }
        },
        |requests| !requests.is_empty(),
    )
    .await?;
    Ok(PendingRequests { requests })
}

/// One request still pending for the calling device, by id (a tapped notification): the signed
/// request, verified by the device as pulled ones are. `authentication_not_found` for an unknown
/// id or one asked of another enrollment (indistinguishable), `authentication_expired` and
/// `already_answered` for ended ones.
pub(crate) async fn pending_request(
    ctx: &Ctx,
    enrollment: &EnrollmentId,
    raw_id: &str,
) -> Result<PendingRequests, DomainError> {
    let record = load(ctx, &parse_id(raw_id)?).await?;
    if &record.enrollment_id != enrollment {
        return Err(DomainError::new(
            ErrorCode::AuthenticationNotFound,
            "no such authentication",
        ));
    }
    require_pending(&record)?;
    Ok(PendingRequests {
        requests: vec![record.signed_request],
    })
}

/// Records a device's signed answer to an authentication: the signature by the device asked,
/// the request, nonce and parameters it answers, its freshness, user verification and number
/// matching where required. An approval with another number than the one shown ends the
/// authentication as denied (`wrong_number`): a number cannot be guessed by trying again. Of
/// racing answers (and expiry) exactly one outcome is recorded; the same answer again is
/// accepted, a different one refused.
pub(crate) async fn answer(
    ctx: &Ctx,
    id: &str,
    signed_response: &str,
    client: &str,
) -> Result<ResponseRecorded, DomainError> {
    let id = parse_id(id)?;
    // The authentication and the device it asks (the one whose signature counts), in one read
    // on a pooled connection given back once read.
    let now = ctx.now();
    let read = authentications::get_with_device_on(ctx.db.pool(), &id, now).await?;
    // The request's connection, taken only now (a request never holds one connection while it
    // waits for another): the ending, on PostgreSQL.
    let mut conn = ctx.db.reader().await?;
    let (record, device) = read.ok_or_else(|| {
        DomainError::new(ErrorCode::AuthenticationNotFound, "no such authentication")
    })?;
    let device = device
        .filter(|d| d.status == EnrollmentState::Active)
        .ok_or_else(|| {
            DomainError::new(ErrorCode::Unauthorized, "the device is no longer paired")
        })?;
    let (response, with_uv) = match verify_answer::<AuthenticationResponse>(
        signed_response,
        MessageType::AuthenticationResponse,
        &device,
        "the response is not signed by the device asked",
    ) {
        Ok(verified) => verified,
        Err(e) => {
            // Given back first: the audit record takes connections of its own.
            drop(conn);
            super::audit::signature_failed(ctx, &device, Some(client), "authentication_response")
                .await;
            return Err(e);
        }
    };
    if response.v != PROTOCOL_VERSION
        || response.request_id != record.id
        || response.enrollment_id != record.enrollment_id
        || response.request_nonce != record.nonce
    {
        return Err(mismatch("the response answers another request"));
    }
    if response.parameters_digest.to_string() != record.parameters_digest {
        return Err(mismatch(
            "the response approves other parameters than the ones sent",
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
    if response.decision == Decision::Approve {
        if record.kind == AuthenticationKind::Silent && with_uv {
            return Err(mismatch(
                "a silent verification is answered with the possession key",
            ));
        }
        if record.require_user_verification
            && (!with_uv
                || !response
                    .amr
                    .iter()
                    .any(|m| USER_VERIFICATION_AMR.contains(&m.as_str())))
        {
            return Err(mismatch("this approval requires user verification"));
        }
    } else if record.kind == AuthenticationKind::Silent {
        return Err(mismatch("a silent verification cannot be denied"));
    }
    // Checked last, once the answer is otherwise valid: a wrong number (or none) ends the
    // request, so a second answer with another number is refused as already answered.
    let wrong_number = response.decision == Decision::Approve
        && record.number_to_show.is_some()
        && response.selected_number != record.number_to_show;
    let attrs = attributes(ctx, &record, &answered_device, &response, with_uv, client);
    let attrs_json = serde_json::to_string(&attrs).unwrap_or_else(|_| "{}".into());
    let signed = SignedAnswer {
        answered: &record,
        verdict: if wrong_number {
            Verdict::WrongNumber
        } else {
            Verdict::Decided(response.decision)
        },
        signed_response,
        attributes: &attrs_json,
    };
    // App Attest: an App Attested iOS enrollment proves the answer with an assertion (when it
    // sends one, or the application or the request's policy asks for one). Its counter is taken
    // in the answer's own write below.
    let assertion = AnswerAssertion {
        device: &device,
        assertion: response.app_attest_assertion.as_deref(),
        client_data_hash: response.app_attest_client_data_hash().ok(),
        required_by_policy: record
            .policy
            .as_deref()
            .and_then(|p| serde_json::from_str::<PolicyOutcome>(p).ok())
            .is_some_and(|p| p.app_attest_assertion),
        answered_id: id.as_str(),
        client_ip: client,
    };
    let counter = match assertions::check_answer(&mut conn, &assertion).await? {
        AssertionCheck::Nothing => None,
        AssertionCheck::Take(counter) => Some(counter),
        AssertionCheck::Refused(code, check) => {
            // Given back first: the look-up of a retry and the audit record take their own.
            drop(conn);
            if code == ErrorCode::AppAttestCounterReplay
                && let Some(again) = recorded_again(ctx, &id, signed_response).await?
            {
                return Ok(again);
            }
            return Err(assertions::refuse(ctx, &assertion, code, &check).await);
        }
    };
    let recorded = match counter {
        None => outcome::record_on(ctx, conn, &id, Ending::Signed(signed)).await?,
        Some(counter) => {
            // The counter's transaction takes its own connection: give this one back first.
            drop(conn);
            let take = Take::AppAttestCounter {
                enrollment: &device.enrollment_id,
                counter,
            };
            match outcome::record_taking(ctx, &id, take, Ending::Signed(signed)).await? {
                Taken::Recorded(recorded) => Some(*recorded),
                Taken::NotRecorded => None,
                Taken::UsedUp => {
                    if let Some(again) = recorded_again(ctx, &id, signed_response).await? {
                        return Ok(again);
                    }
                    return Err(assertions::refuse(
                        ctx,
                        &assertion,
                        ErrorCode::AppAttestCounterReplay,
                        "the App Attest assertion's counter was taken by another answer",
                    )
                    .await);
                }
            }
        }
    };
    if let Some(recorded) = recorded {
        remember_answered_device(ctx, &device, &answered_device).await;
        if wrong_number {
            tracing::warn!(authentication_id = %id, "number matching answered with another number: denied");
        }
        return Ok(ResponseRecorded {
            authentication_id: id,
            state: recorded.state,
            denial_reason: recorded.denial_reason,
        });
    }
    // Not recorded: expired, or answered before.
    let current = load(ctx, &id).await?;
    if current.signed_response.as_deref() == Some(signed_response) {
        // The very answer recorded (a retry after a lost reply): the same outcome again.
        return Ok(ResponseRecorded {
            authentication_id: id,
            state: current.state,
            denial_reason: current.denial_reason,
        });
    }
    if wrong_number {
        return Err(DomainError::new(
            ErrorCode::AlreadyAnswered,
            "the authentication was already answered",
        ));
    }
    match (current.state, current.decision) {
        (AuthenticationState::Expired, _) => Err(DomainError::new(
            ErrorCode::AuthenticationExpired,
            "the authentication expired",
        )),
        (AuthenticationState::Failed, _) => Err(DomainError::new(
            ErrorCode::AuthenticationNotFound,
            "the authentication can no longer be answered",
        )),
        (_, Some(previous))
            if previous == response.decision
                && current.denial_reason
                    != Some(tessera_protocol::authentication::DenialReason::WrongNumber) =>
        {
            Ok(ResponseRecorded {
                authentication_id: id,
                state: current.state,
                denial_reason: current.denial_reason,
            })
        }
        _ => Err(DomainError::new(
            ErrorCode::AlreadyAnswered,
            "the authentication was already answered",
        )),
    }
}

/// The outcome recorded for `id` when it was recorded with exactly `signed_response` (a retry
/// of an answer whose reply was lost): its App Attest counter was taken then.
async fn recorded_again(
    ctx: &Ctx,
    id: &AuthenticationId,
    signed_response: &str,
) -> Result<Option<ResponseRecorded>, DomainError> {
    let current = load(ctx, id).await?;
    Ok(
        (current.signed_response.as_deref() == Some(signed_response)).then(|| ResponseRecorded {
            authentication_id: id.clone(),
            state: current.state,
            denial_reason: current.denial_reason,
        }),
    )
}

#[cfg(test)]
mod crowd_tests;
#[cfg(test)]
mod flow_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(os_version: &str) -> DeviceVersions {
        DeviceVersions {
            model: "Pixel 8".into(),
            os_version: os_version.into(),
            app_version: "1.0".into(),
        }
    }

    #[test]
    fn answers_with_readable_versions_pass_and_others_are_mismatches() {
        let now = 1_767_225_600;
        assert!(
            check_answer(now, &[], None, None, now).is_ok(),
            "no versions"
        );
        assert!(check_answer(now, &[], None, Some(&versions("16")), now).is_ok());
        let at_limit = "9".repeat(super::super::pairing::MAX_INFO_CHARS);
        assert!(check_answer(now, &[], None, Some(&versions(&at_limit)), now).is_ok());
        for bad in [
            "9".repeat(super::super::pairing::MAX_INFO_CHARS + 1),
            "16\u{202e}".into(),
            "1\u{200b}6".into(),
        ] {
            let err = check_answer(now, &[], None, Some(&versions(&bad)), now).unwrap_err();
            assert_eq!(err.code(), Some(ErrorCode::ResponseMismatch), "{bad:?}");
        }
    }

    /// A new request reads its user, their bypass and their devices in one statement, and the
    /// devices are exactly those the user's device list holds (`list_for_user_on`: not a
    /// rejected one, oldest first, every column read alike); no user, no devices.
    #[tokio::test]
    async fn a_request_s_user_and_devices_are_read_together_as_the_device_list_holds_them() {
        use crate::store::users::get_with_devices_for_request_on;
        for domain in crate::domain::testing::TestDomain::each_engine().await {
            let (ctx, app) = (&domain.ctx, &domain.app.id);
            let nobody: UserId = "nobody".parse().expect("user id");
            let none = get_with_devices_for_request_on(ctx.db.pool(), app, &nobody)
                .await
                .expect("read");
            assert!(none.is_none(), "no such user");

            let lonely = domain.user("lonely").await;
            let ((user, bypass), devices) =
                get_with_devices_for_request_on(ctx.db.pool(), app, &lonely)
                    .await
                    .expect("read")
                    .expect("the user");
            assert_eq!((&user.user_id, user.device_count), (&lonely, 0));
            assert!(bypass.is_none() && devices.is_empty());

            let alice = domain.user("alice").await;
            let first = domain.device_of(&alice, true).await;
            domain.clock.advance(Duration::from_secs(5));
            let rejected = domain.device_of(&alice, false).await;
            domain.clock.advance(Duration::from_secs(5));
            let last = domain.device_of(&alice, false).await;
            // Another user's device is not hers.
            domain.device_of(&lonely, true).await;
            sqlx::query("UPDATE enrollments SET status = 'rejected' WHERE enrollment_id = $1")
                .bind(rejected.enrollment.enrollment_id.as_str())
                .execute(ctx.db.pool())
                .await
                .expect("rejected");
            sqlx::query(
                "INSERT INTO user_bypasses (application_id, user_id, granted_at, until, reason, \
                 granted_by) VALUES ($1, $2, 100, 200, 'lost phone', 'api')",
            )
            .bind(app.as_str())
            .bind(alice.as_str())
            .execute(ctx.db.pool())
            .await
            .expect("bypass");

            let ((user, bypass), devices) =
                get_with_devices_for_request_on(ctx.db.pool(), app, &alice)
                    .await
                    .expect("read")
                    .expect("the user");
            assert_eq!(user.user_id, alice);
            assert_eq!(user.device_count, 3, "the count is of every device");
            let bypass = bypass.expect("the bypass");
            assert_eq!((bypass.granted_at, bypass.until), (100, 200));
            assert_eq!(bypass.reason, "lost phone");
            let ids: Vec<_> = devices.iter().map(|d| d.enrollment_id.clone()).collect();
            assert_eq!(
                ids,
                [
                    first.enrollment.enrollment_id.clone(),
                    last.enrollment.enrollment_id.clone()
                ]
            );
            let listed = enrollments::list_for_user_on(ctx.db.pool(), app, &alice)
                .await
                .expect("list");
            assert_eq!(format!("{devices:?}"), format!("{listed:?}"));
        }
    }

    /// A device's answer reads the authentication and the device it asks in one statement: the
    /// same as the two read apart (every column alike), no device once its enrollment is gone,
    /// nothing for no such authentication.
    #[tokio::test]
    async fn an_answer_reads_its_authentication_with_the_device_it_asks() {
        use crate::store::authentications as stored;
        for domain in crate::domain::testing::TestDomain::each_engine().await {
            let (ctx, now) = (&domain.ctx, domain.ctx.now());
            let (user, device) = domain.user_with_device("alice").await;
            // Another device of hers, not the one asked.
            domain.device_of(&user, false).await;
            let asked = domain.ask(&user, serde_json::json!({})).await;
            let id = asked.authentication_id;
            assert_eq!(asked.enrollment_id, device.enrollment.enrollment_id);

            let (record, with_device) = stored::get_with_device_on(ctx.db.pool(), &id, now)
                .await
                .expect("read")
                .expect("the authentication");
            let apart = stored::get_on(ctx.db.pool(), &id, now)
                .await
                .expect("read")
                .expect("the authentication");
            assert_eq!(format!("{record:?}"), format!("{apart:?}"));
            let device_apart =
                enrollments::by_id_on(ctx.db.pool(), &device.enrollment.enrollment_id)
                    .await
                    .expect("read");
            assert_eq!(format!("{with_device:?}"), format!("{device_apart:?}"));
            assert!(with_device.is_some());

            sqlx::query("DELETE FROM enrollments WHERE enrollment_id = $1")
                .bind(device.enrollment.enrollment_id.as_str())
                .execute(ctx.db.pool())
                .await
                .expect("enrollment gone");
            let (record, with_device) = stored::get_with_device_on(ctx.db.pool(), &id, now)
                .await
                .expect("read")
                .expect("the authentication stays");
            assert_eq!(record.id, id);
            assert!(with_device.is_none(), "no device once it is gone");

            let unknown = AuthenticationId::generate();
            assert!(
                stored::get_with_device_on(ctx.db.pool(), &unknown, now)
                    .await
                    .expect("read")
                    .is_none()
            );
        }
    }

    /// A device's pull reads its enrollment with the requests pending for it in one statement:
    /// the enrollment as read alone, the requests as `pending_for` lists them (oldest first, not
    /// an ended or expired one, not another device's), none for a device with nothing pending,
    /// nothing for no such enrollment.
    #[tokio::test]
    async fn a_pull_reads_its_enrollment_with_what_is_pending_for_it() {
        use crate::store::authentications as stored;
        for domain in crate::domain::testing::TestDomain::each_engine().await {
            let ctx = &domain.ctx;
            let (user, device) = domain.user_with_device("alice").await;
            let enrollment = &device.enrollment.enrollment_id;
            let read = stored::pending_with_enrollment(&ctx.db, enrollment, ctx.now())
                .await
                .expect("read")
                .expect("the enrollment");
            assert!(read.1.is_empty(), "nothing pending yet");

            let first = domain.ask(&user, serde_json::json!({})).await;
            domain.clock.advance(Duration::from_secs(2));
            let second = domain.ask(&user, serde_json::json!({})).await;
            // Another user's request is not hers.
            let (bob, _) = domain.user_with_device("bob").await;
            domain.ask(&bob, serde_json::json!({})).await;
            let now = ctx.now();
            let (with, pending) = stored::pending_with_enrollment(&ctx.db, enrollment, now)
                .await
                .expect("read")
                .expect("the enrollment");
            let alone = enrollments::by_id_on(ctx.db.pool(), enrollment)
                .await
                .expect("read");
            assert_eq!(format!("{:?}", Some(with)), format!("{alone:?}"));
            let listed = stored::pending_for(&ctx.db, enrollment, now)
                .await
                .expect("list");
            assert_eq!(pending, listed);
            assert_eq!(pending.len(), 2);
            let signed_first = stored::get_on(ctx.db.pool(), &first.authentication_id, now)
                .await
                .expect("read")
                .expect("first")
                .signed_request;
            let signed_second = stored::get_on(ctx.db.pool(), &second.authentication_id, now)
                .await
                .expect("read")
                .expect("second")
                .signed_request;
            assert_eq!(pending, [signed_first, signed_second], "oldest first");

            // Past the requests' expiry nothing is pending.
            let later = now + 3600;
            let (_, pending) = stored::pending_with_enrollment(&ctx.db, enrollment, later)
                .await
                .expect("read")
                .expect("the enrollment");
            assert!(pending.is_empty(), "expired requests are not pending");

            let unknown = EnrollmentId::generate();
            assert!(
                stored::pending_with_enrollment(&ctx.db, &unknown, now)
                    .await
                    .expect("read")
                    .is_none()
            );
        }
    }
}
