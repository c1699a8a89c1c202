//! Pairing: codes for the customer, direct pairing for the device, relay pairing for the
//! customer's backend. See docs/protocol.md for what each check protects.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::Value;
use tessera_protocol::api::{
    DevicePairingRequest, DevicePairingResponse, EnrollmentState, RelayPairingRequest,
    RelayPairingResponse, StartPairingRequest, StartPairingResponse,
};
use tessera_protocol::canonical::Sha256Digest;
use tessera_protocol::envelope::{self, MessageType};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::{ApplicationId, EnrollmentId, UserId};
use tessera_protocol::jwk::PublicJwk;
use tessera_protocol::pairing::{
    ApplicationInfo, DeviceRegistration, KeyProof, MAX_CLOCK_SKEW_SECONDS,
    MAX_REGISTRATION_AGE_SECONDS, MobilePayload, PairingCode, PairingReply, PairingUri,
    PushRegistration,
};
use tessera_protocol::{PROTOCOL_VERSION, time};

use super::errors::ApiError;
use super::extract::{ApiJson, AppAuth, ClientAddr, OptionalJson};
use super::users::{parse_user_id, require_user};
use crate::domain::Ctx;
use crate::domain::device_verification;
use crate::metrics::{ModeLabels, ReasonLabels};
use crate::store::authentications::{self, Authentication};
use crate::store::enrollments::{self, Enrollment};
use crate::store::{applications, is_unique_violation, pairing_codes, throttle};

const MAX_INFO_CHARS: usize = 128;
const MAX_PUSH_TOKEN_CHARS: usize = 4096;
const BAD_CODE: &str = "pairing code is invalid, expired or already used";

/// Starts a pairing for a user: a single-use code and a URI for a QR code.
#[utoipa::path(post, path = "/v1/users/{user_id}/pairings", tag = "customer",
    params(("user_id" = String, Path, description = "The customer's id for the user")),
    request_body(content = StartPairingRequest, description = "Optional"),
    responses((status = 201, body = StartPairingResponse), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn start_pairing(
    State(state): State<Ctx>,
    auth: AppAuth,
    Path(user_id): Path<String>,
    OptionalJson(body): OptionalJson<StartPairingRequest>,
) -> Result<(StatusCode, Json<StartPairingResponse>), ApiError> {
    let user_id = parse_user_id(&user_id)?;
    let ttl = body
        .ttl_seconds
        .unwrap_or(state.config.pairing_code_ttl_default);
    if !(60..=86_400).contains(&ttl) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "ttl_seconds must be between 60 and 86400",
        ));
    }
    require_user(&state, &auth, &user_id).await?;
    let now = time::now();
    let code = PairingCode::generate();
    let expires_at = now + i64::from(ttl);
    pairing_codes::insert(
        &state.db,
        &code.digest().to_string(),
        &auth.0.id,
        &user_id,
        now,
        expires_at,
    )
    .await?;
    if rand::random::<u8>() < 4 {
        pairing_codes::purge_expired(&state.db, now).await?;
    }
    let uri = PairingUri {
        server: state.public_url.clone(),
        code: code.clone(),
    };
    Ok((
        StatusCode::CREATED,
        Json(StartPairingResponse {
            pairing_code: code.display_form().to_string(),
            pairing_uri: uri.to_uri_string().to_string(),
            expires_at,
        }),
    ))
}

/// A registration whose signatures and claims all checked out.
pub(crate) struct VerifiedRegistration {
    pub registration: DeviceRegistration,
    pub digest: Sha256Digest,
}

fn fail(code: ErrorCode, message: &str) -> ApiError {
    ApiError::new(code, message)
}

/// Verifies a device-signed envelope whose `kid` must be the thumbprint of `key`.
fn verify_signed<T: serde::de::DeserializeOwned>(
    jws: &str,
    typ: MessageType,
    key: &PublicJwk,
    what: &str,
) -> Result<envelope::Verified<T>, ApiError> {
    let header = envelope::inspect(jws).map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidSignature,
            format!("the {what} is not a valid signed message"),
        )
    })?;
    if header.kid != key.thumbprint() {
        return Err(ApiError::new(
            ErrorCode::InvalidRegistration,
            format!("the {what} is not signed by the key it should be"),
        ));
    }
    envelope::verify::<T>(jws, typ, key).map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidSignature,
            format!("the {what}'s signature does not verify"),
        )
    })
}

/// Checks a device registration and its user-verification key proof.
pub(crate) fn verify_registration(
    state: &Ctx,
    registration_jws: &str,
    proof_jws: &str,
    now: i64,
) -> Result<VerifiedRegistration, ApiError> {
    let raw: Value = envelope::unverified_payload(registration_jws).map_err(|_| {
        fail(
            ErrorCode::InvalidSignature,
            "the registration is not a valid signed message",
        )
    })?;
    for member in ["possession_key", "user_verification_key"] {
        if let Some(key) = raw.get(member)
            && serde_json::from_value::<PublicJwk>(key.clone()).is_err()
        {
            return Err(fail(
                ErrorCode::InvalidPublicKey,
                "a public key is not a valid P-256 key",
            ));
        }
    }
    let claimed: DeviceRegistration = serde_json::from_value(raw).map_err(|_| {
        fail(
            ErrorCode::InvalidRegistration,
            "the registration is incomplete or malformed",
        )
    })?;
    let verified = verify_signed::<DeviceRegistration>(
        registration_jws,
        MessageType::Registration,
        &claimed.possession_key,
        "registration",
    )?;
    let registration = verified.payload;
    let proof = verify_signed::<KeyProof>(
        proof_jws,
        MessageType::KeyProof,
        &registration.user_verification_key,
        "key proof",
    )?;
    if !proof.payload.registration_digest.ct_eq(&verified.digest) {
        return Err(fail(
            ErrorCode::InvalidRegistration,
            "the key proof belongs to another registration",
        ));
    }
    if registration
        .possession_key
        .same_key(&registration.user_verification_key)
    {
        return Err(fail(
            ErrorCode::InvalidRegistration,
            "the two device keys must differ",
        ));
    }
    if registration.v != PROTOCOL_VERSION || proof.payload.v != PROTOCOL_VERSION {
        return Err(fail(
            ErrorCode::InvalidRegistration,
            "unsupported protocol version",
        ));
    }
    if registration.audience != state.public_url {
        return Err(fail(
            ErrorCode::AudienceMismatch,
            "the registration is meant for another server",
        ));
    }
    if registration.issued_at < now - MAX_REGISTRATION_AGE_SECONDS
        || registration.issued_at > now + MAX_CLOCK_SKEW_SECONDS
    {
        return Err(fail(
            ErrorCode::StaleMessage,
            "the registration is too old or from the future",
        ));
    }
    let d = &registration.device;
    let texts = [
        &d.model,
        &d.os_name,
        &d.os_version,
        &d.app_version,
        &d.sdk_version,
    ];
    let too_long =
        |s: &String| s.chars().count() > MAX_INFO_CHARS || s.chars().any(char::is_control);
    if texts.into_iter().any(too_long)
        || d.name.as_ref().is_some_and(too_long)
        || registration.nonce.len() > 64
    {
        return Err(fail(
            ErrorCode::InvalidRegistration,
            "a device description field is too long or invalid",
        ));
    }
    if !push_token_ok(&registration.push) {
        return Err(fail(
            ErrorCode::InvalidRegistration,
            "the push token is invalid",
        ));
    }
    Ok(VerifiedRegistration {
        registration,
        digest: verified.digest,
    })
}

/// Whether a push registration's token is acceptable: non-empty printable ASCII of bounded
/// length (it is used in a URL path by APNs).
pub(crate) fn push_token_ok(push: &PushRegistration) -> bool {
    match push {
        PushRegistration::None => true,
        PushRegistration::Fcm { token } | PushRegistration::Apns { token, .. } => {
            !token.is_empty()
                && token.len() <= MAX_PUSH_TOKEN_CHARS
                && token.bytes().all(|b| b.is_ascii_graphic())
        }
    }
}

fn count_failure(state: &Ctx, reason: &'static str) {
    state
        .metrics
        .pairing_failures
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// A new enrollment, and the verification request sent to the user's primary device when the
/// application verifies new devices with it.
pub(crate) struct Created {
    enrollment: Enrollment,
    verification: Option<(Authentication, Enrollment)>,
}

impl Created {
    /// Pushes the verification request, if any, to the primary device (after the commit).
    fn push_verification(self, state: &Ctx) -> Enrollment {
        if let Some((request, primary)) = self.verification {
            tracing::info!(authentication_id = %request.id, enrollment_id = %self.enrollment.enrollment_id, "new device awaits the primary device's approval");
            tokio::spawn(crate::delivery::push::deliver(
                state.clone(),
                request,
                primary,
            ));
        }
        self.enrollment
    }
}

/// Builds, signs and inserts the enrollment inside `tx` (whose first statement was a write).
/// Under the policy "verify new devices with the primary device", a user's further device is
/// inserted pending verification, next to the request that asks the primary device, and the
/// device's earlier enrollments stay until that is approved.
async fn create_enrollment(
    state: &Ctx,
    tx: &mut sqlx::AnyConnection,
    app: &ApplicationInfo,
    user_id: &UserId,
    verified: &VerifiedRegistration,
    client_ip: Option<&str>,
    now: i64,
) -> Result<Result<Created, sqlx::Error>, ApiError> {
    let reg = &verified.registration;
    let enrollment_id = EnrollmentId::generate();
    let verifier = device_verification::verifier(tx, &app.id, user_id).await?;
    let (is_primary, verification) = match &verifier {
        Some(primary) => {
            let question = device_verification::question(state, &app.name, reg, client_ip);
            let request = crate::domain::authentication::new_authentication(
                state, &app.id, user_id, primary, question,
            )?;
            (false, Some(request))
        }
        None => {
            let was_primary =
                enrollments::delete_same_device(tx, &app.id, user_id, &reg.device_id).await?;
            (
                was_primary || !enrollments::has_primary(tx, &app.id, user_id).await?,
                None,
            )
        }
    };
    // The enrollment's OTP seed, sealed to the device's transport key.
    let otp_seed = reg
        .otp_transport_key
        .as_ref()
        .map(|_| tessera_protocol::otp::new_seed());
    let sealed_otp = match (&reg.otp_transport_key, &otp_seed) {
        (Some(key), Some(seed)) => Some(
            tessera_protocol::otp::seal(seed, key, &enrollment_id).map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidRegistration,
                    "the OTP transport key is not usable",
                )
            })?,
        ),
        _ => None,
    };
    let reply = PairingReply {
        v: PROTOCOL_VERSION,
        issuer: state.public_url.clone(),
        application: app.clone(),
        user_id: user_id.clone(),
        enrollment_id: enrollment_id.clone(),
        device_id: reg.device_id.clone(),
        registration_digest: verified.digest,
        server_keys: state.keys.public_set(),
        pending_verification: verification.is_some(),
        otp: sealed_otp,
        issued_at: now,
    };
    let server_payload = state
        .keys
        .sign(MessageType::PairingReply, &reply)
        .map_err(|_| ApiError::new(ErrorCode::InternalError, "internal error"))?;
    let enrollment = Enrollment {
        enrollment_id,
        application_id: app.id.clone(),
        user_id: user_id.clone(),
        device_id: reg.device_id.clone(),
        possession_key: reg.possession_key.clone(),
        user_verification_key: reg.user_verification_key.clone(),
        device_info: reg.device.clone(),
        signals: reg.signals,
        push: reg.push.clone(),
        is_primary,
        registration_digest: verified.digest.to_string(),
        server_payload,
        paired_at: now,
        last_seen_at: now,
        status: if verification.is_some() {
            EnrollmentState::PendingVerification
        } else {
            EnrollmentState::Active
        },
        verification_id: verification.as_ref().map(|v| v.id.clone()),
        push_stale_at: None,
    };
    if let Err(e) = enrollments::insert(tx, &enrollment).await {
        return Ok(Err(e));
    }
    if let Some(seed) = &otp_seed {
        crate::store::otp::set_seed(tx, &enrollment.enrollment_id, seed).await?;
    }
    if let Some(request) = &verification {
        authentications::insert(&mut *tx, request).await?;
    }
    Ok(Ok(Created {
        enrollment,
        verification: verification.zip(verifier),
    }))
}

async fn application_info(state: &Ctx, id: &ApplicationId) -> Result<ApplicationInfo, ApiError> {
    let app = applications::get(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::InternalError, "internal error"))?;
    Ok(ApplicationInfo {
        id: app.id,
        name: app.name,
    })
}

/// A device pairs with a code.
#[utoipa::path(post, path = "/v1/device/pairings", tag = "device", request_body = DevicePairingRequest,
    responses((status = 201, body = DevicePairingResponse),
              (status = 400, description = "invalid_pairing_code, invalid_signature, invalid_registration, invalid_public_key, audience_mismatch, stale_message", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "replayed_message", body = tessera_protocol::error::ErrorBody),
              (status = 429, description = "rate_limited", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn device_pairing(
    State(state): State<Ctx>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<DevicePairingRequest>,
) -> Result<(StatusCode, Json<DevicePairingResponse>), ApiError> {
    let now = time::now();
    let limit = i64::from(state.config.pairing_failures_per_ip_per_minute);
    if throttle::failures(&state.db, &client, now).await? >= limit {
        count_failure(&state, "rate_limited");
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many failed pairing attempts; retry in a minute",
        ));
    }
    let verified = verify_registration(
        &state,
        &body.registration,
        &body.user_verification_proof,
        now,
    )
    .inspect_err(|_| count_failure(&state, "invalid_registration"))?;
    let bad_code = || ApiError::new(ErrorCode::InvalidPairingCode, BAD_CODE);
    let Ok(code) = PairingCode::parse(&body.pairing_code) else {
        throttle::record_failure(&state.db, &client, now).await?;
        count_failure(&state, "invalid_code");
        return Err(bad_code());
    };
    let code_digest = code.digest().to_string();
    let registration_digest = verified.digest.to_string();

    let mut tx = state.db.begin_write().await?;
    let consumed = pairing_codes::consume(&mut tx, &code_digest, &registration_digest, now).await?;
    if let Some((app_id, user_id)) = consumed {
        let app = application_info(&state, &app_id).await?;
        match create_enrollment(
            &state,
            &mut tx,
            &app,
            &user_id,
            &verified,
            Some(&client),
            now,
        )
        .await?
        {
            Ok(created) => {
                tx.commit().await?;
                let enrollment = created.push_verification(&state);
                state
                    .metrics
                    .pairings
                    .get_or_create(&ModeLabels { mode: "direct" })
                    .inc();
                tracing::info!(enrollment_id = %enrollment.enrollment_id, application_id = %app.id, "device paired");
                return Ok((
                    StatusCode::CREATED,
                    Json(DevicePairingResponse {
                        server_payload: enrollment.server_payload,
                    }),
                ));
            }
            Err(e) if is_unique_violation(&e) => {
                drop(tx);
                count_failure(&state, "replayed");
                return Err(ApiError::new(
                    ErrorCode::ReplayedMessage,
                    "this registration was already used",
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    drop(tx);
    // Not consumable: the identical registration retried after a lost reply gets the same answer.
    if pairing_codes::consumed_by(&state.db, &code_digest)
        .await?
        .as_deref()
        == Some(registration_digest.as_str())
        && let Some(existing) =
            enrollments::by_registration_digest(&state.db, &registration_digest).await?
    {
        return Ok((
            StatusCode::CREATED,
            Json(DevicePairingResponse {
                server_payload: existing.server_payload,
            }),
        ));
    }
    throttle::record_failure(&state.db, &client, now).await?;
    count_failure(&state, "invalid_code");
    Err(bad_code())
}

/// The customer's backend completes a relay pairing with the app's mobile payload.
#[utoipa::path(post, path = "/v1/users/{user_id}/relay-pairings", tag = "customer",
    params(("user_id" = String, Path, description = "The customer's id for the user")),
    request_body = RelayPairingRequest,
    responses((status = 201, body = RelayPairingResponse),
              (status = 400, description = "invalid_mobile_payload, invalid_public_key, audience_mismatch, stale_message", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "replayed_message", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn relay_pairing(
    State(state): State<Ctx>,
    auth: AppAuth,
    Path(user_id): Path<String>,
    ApiJson(body): ApiJson<RelayPairingRequest>,
) -> Result<(StatusCode, Json<RelayPairingResponse>), ApiError> {
    let user_id = parse_user_id(&user_id)?;
    let now = time::now();
    let invalid = || {
        ApiError::new(
            ErrorCode::InvalidMobilePayload,
            "the mobile payload is malformed or does not verify",
        )
    };
    let payload = MobilePayload::decode(&body.mobile_payload).map_err(|_| invalid())?;
    let verified = verify_registration(
        &state,
        &payload.registration,
        &payload.user_verification_proof,
        now,
    )
    .map_err(|e| match e.code {
        ErrorCode::InvalidSignature | ErrorCode::InvalidRegistration => invalid(),
        _ => e,
    })
    .inspect_err(|_| count_failure(&state, "invalid_mobile_payload"))?;
    require_user(&state, &auth, &user_id).await?;
    let digest = verified.digest.to_string();
    if let Some(existing) = enrollments::by_registration_digest(&state.db, &digest).await? {
        if existing.application_id == auth.0.id && existing.user_id == user_id {
            return Ok((
                StatusCode::CREATED,
                Json(RelayPairingResponse {
                    device: existing.record(),
                    server_payload: existing.server_payload,
                }),
            ));
        }
        count_failure(&state, "replayed");
        return Err(ApiError::new(
            ErrorCode::ReplayedMessage,
            "this mobile payload was already used",
        ));
    }
    let app = ApplicationInfo {
        id: auth.0.id.clone(),
        name: auth.0.name.clone(),
    };
    let mut tx = state.db.begin_write().await?;
    match create_enrollment(&state, &mut tx, &app, &user_id, &verified, None, now).await? {
        Ok(created) => {
            tx.commit().await?;
            let enrollment = created.push_verification(&state);
            state
                .metrics
                .pairings
                .get_or_create(&ModeLabels { mode: "relay" })
                .inc();
            tracing::info!(enrollment_id = %enrollment.enrollment_id, application_id = %app.id, "device paired (relay)");
            Ok((
                StatusCode::CREATED,
                Json(RelayPairingResponse {
                    device: enrollment.record(),
                    server_payload: enrollment.server_payload,
                }),
            ))
        }
        Err(e) if is_unique_violation(&e) => {
            drop(tx);
            count_failure(&state, "replayed");
            Err(ApiError::new(
                ErrorCode::ReplayedMessage,
                "this mobile payload was already used",
            ))
        }
        Err(e) => Err(e.into()),
    }
}
