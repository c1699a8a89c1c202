//! Pairing: codes for the customer, direct pairing for the device, relay pairing for the
//! customer's backend. See docs/protocol.md for what each check protects.
//!
//! A registration is checked (signatures, keys, audience, freshness, descriptions, push token)
//! before anything is stored; a code is consumed with one conditional update inside the
//! transaction that inserts the enrollment, so of racing attempts exactly one pairs. Failed
//! attempts are throttled per client address and code bucket, and per code bucket. Under the policy "verify new devices with the
//! primary device" a further device is inserted pending verification, next to the request that
//! asks the primary device (see [`super::device_verification`]).

use serde_json::Value;
use tessera_protocol::PROTOCOL_VERSION;
use tessera_protocol::api::{
    DevicePairingRequest, DevicePairingResponse, EnrollmentState, RelayPairingRequest,
    RelayPairingResponse, StartPairingResponse,
};
use tessera_protocol::canonical::Sha256Digest;
use tessera_protocol::envelope::{self, MessageType};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::{ApplicationId, EnrollmentId, UserId};
use tessera_protocol::jwk::PublicJwk;
use tessera_protocol::pairing::{
    ApplicationInfo, DeviceKeyError, DeviceRegistration, KeyProof, MAX_CLOCK_SKEW_SECONDS,
    MAX_REGISTRATION_AGE_SECONDS, MobilePayload, PairingCode, PairingReply, PairingUri,
    PushRegistration, ServerUrl,
};

use super::{Ctx, DomainError, device_verification, outcome};
use crate::metrics::{ModeLabels, ReasonLabels};
use crate::store::Committed;
use crate::store::applications::{self, Application};
use crate::store::authentications::{self, Authentication};
use crate::store::enrollments::{self, Enrollment};
use crate::store::users::UserLock;
use crate::store::{is_unique_violation, pairing_codes, throttle};

pub(crate) const MAX_INFO_CHARS: usize = 128;
const MAX_PUSH_TOKEN_CHARS: usize = 4096;
const BAD_CODE: &str = "pairing code is invalid, expired or already used";

/// Starts a pairing for a user: a single-use code (stored as its digest) and a URI for a QR
/// code. `ttl_seconds` defaults to the configured lifetime and must be 60 to 86,400.
pub(crate) async fn start(
    ctx: &Ctx,
    app: &ApplicationId,
    user_id: &UserId,
    ttl_seconds: Option<u32>,
) -> Result<StartPairingResponse, DomainError> {
    let ttl = ttl_seconds.unwrap_or(ctx.config.pairing_code_ttl_default);
    if !(60..=86_400).contains(&ttl) {
        return Err(DomainError::new(
            ErrorCode::InvalidRequest,
            "ttl_seconds must be between 60 and 86400",
        ));
    }
    let now = ctx.now();
    let code = PairingCode::generate();
    let expires_at = now + i64::from(ttl);
    // The code is stored only for a user who exists, and kept from a deletion until stored: a
    // code left behind by a deletion would pair a device to a user re-created with the same id.
    let mut w = ctx.db.write().await?;
    super::users::lock_in(&mut w, app, user_id, UserLock::KeepsUser).await?;
    pairing_codes::insert(
        &mut *w,
        &code.digest().to_string(),
        app,
        user_id,
        now,
        expires_at,
    )
    .await?;
    w.commit().await?;
    if rand::random::<u8>() < 4 {
        pairing_codes::purge_expired(&ctx.db, now).await?;
    }
    let uri = PairingUri {
        server: ctx.public_url.clone(),
        code: code.clone(),
    };
    Ok(StartPairingResponse {
        pairing_code: code.display_form().to_string(),
        pairing_uri: uri.to_uri_string().to_string(),
        expires_at,
    })
}

/// A registration whose signatures and claims all checked out.
pub(crate) struct VerifiedRegistration {
    /// The registration.
    pub registration: DeviceRegistration,
    /// The envelope digest of the signed registration.
    pub digest: Sha256Digest,
}

fn fail(code: ErrorCode, message: &str) -> DomainError {
    DomainError::new(code, message)
}

/// Verifies a device-signed envelope whose `kid` must be the thumbprint of `key`.
fn verify_signed<T: serde::de::DeserializeOwned>(
    jws: &str,
    typ: MessageType,
    key: &PublicJwk,
    what: &str,
) -> Result<envelope::Verified<T>, DomainError> {
    let header = envelope::inspect(jws).map_err(|_| {
        DomainError::new(
            ErrorCode::InvalidSignature,
            format!("the {what} is not a valid signed message"),
        )
    })?;
    if header.kid != key.thumbprint() {
        return Err(DomainError::new(
            ErrorCode::InvalidRegistration,
            format!("the {what} is not signed by the key it should be"),
        ));
    }
    envelope::verify::<T>(jws, typ, key).map_err(|_| {
        DomainError::new(
            ErrorCode::InvalidSignature,
            format!("the {what}'s signature does not verify"),
        )
    })
}

/// Checks a device registration and its user-verification key proof against this server.
pub(crate) fn verify_registration(
    ctx: &Ctx,
    registration_jws: &str,
    proof_jws: &str,
    now: i64,
) -> Result<VerifiedRegistration, DomainError> {
    check_registration(&ctx.public_url, registration_jws, proof_jws, now)
}

/// Checks a device registration and its user-verification key proof: both signatures, the two
/// keys (valid, distinct), the protocol version, the audience `server`, the age at `now`, the
/// device's descriptions and its push token.
fn check_registration(
    server: &ServerUrl,
    registration_jws: &str,
    proof_jws: &str,
    now: i64,
) -> Result<VerifiedRegistration, DomainError> {
    let raw: Value = envelope::unverified_payload(registration_jws).map_err(|_| {
        fail(
            ErrorCode::InvalidSignature,
            "the registration is not a valid signed message",
        )
    })?;
    for member in ["possession_key", "user_verification_key", "device_key"] {
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
    // The device identity: `device_id` is the id of the device key, and the registration proves
    // that key (a proof signed with it, naming this registration).
    registration.check_device_key().map_err(|e| match e {
        DeviceKeyError::IdNotOfKey => fail(
            ErrorCode::InvalidRegistration,
            "the device id is not the id of the registration's device key",
        ),
        DeviceKeyError::SharedKey => fail(
            ErrorCode::InvalidRegistration,
            "the device key must differ from the enrollment's keys",
        ),
        DeviceKeyError::BadSignature => fail(
            ErrorCode::InvalidSignature,
            "the device key proof's signature does not verify",
        ),
        DeviceKeyError::Mismatch => fail(
            ErrorCode::InvalidRegistration,
            "the device key proof belongs to another registration",
        ),
    })?;
    if registration.v != PROTOCOL_VERSION || proof.payload.v != PROTOCOL_VERSION {
        return Err(fail(
            ErrorCode::InvalidRegistration,
            "unsupported protocol version",
        ));
    }
    if &registration.audience != server {
        // Names the URL the server answers to (its identity, never the submitted one): a device
        // that reached it under another name (`localhost` for `127.0.0.1`, a proxy's host) knows
        // what to pair with instead.
        return Err(fail(
            ErrorCode::AudienceMismatch,
            &format!(
                "the registration is meant for another server: this server's URL is {server}; pair using that URL"
            ),
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
    let too_long = |s: &String| {
        s.chars().count() > MAX_INFO_CHARS || !tessera_protocol::display::is_displayable(s)
    };
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

fn count_failure(ctx: &Ctx, reason: &'static str) {
    ctx.metrics
        .pairing_failures
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

fn count_pairing(ctx: &Ctx, mode: &'static str) {
    ctx.metrics
        .pairings
        .get_or_create(&ModeLabels { mode })
        .inc();
}

/// A new enrollment, and the verification request sent to the user's primary device when the
/// application verifies new devices with it.
struct Created {
    enrollment: Enrollment,
    verification: Option<(Authentication, Enrollment)>,
    /// The verification request's announcement, made once the write that stored it committed.
    verification_created: Option<outcome::Announced>,
    /// Requests the replaced enrollment of the same device could no longer answer.
    failed: Vec<tessera_protocol::authentication::AuthenticationId>,
}

impl Created {
    /// Announces the verification request, if any, to the primary device and pushes it there
    /// (after the write that stored it `committed`).
    async fn push_verification(self, ctx: &Ctx, committed: &Committed) -> Enrollment {
        if let Err(e) = outcome::failed(ctx, &self.failed).await {
            tracing::warn!(error = %e, "the replaced enrollment's requests could not be announced");
        }
        super::audit::pairing_completed(ctx, &self.enrollment).await;
        if let Some((request, primary)) = self.verification {
            tracing::info!(authentication_id = %request.id, enrollment_id = %self.enrollment.enrollment_id, "new device awaits the primary device's approval");
            if let Some(created) = self.verification_created {
                created.resolved(committed).committed(ctx);
            }
            let push = ctx.device_push.push(ctx.clone(), request, primary, None);
            tokio::spawn(push);
        }
        self.enrollment
    }
}

/// How a registration arrives: the device's address (a direct pairing), and whether a flow
/// holds the new device for a passcode approval (a relay pairing, see [`relay_with`]).
#[derive(Debug, Clone, Copy, Default)]
struct How<'a> {
    client_ip: Option<&'a str>,
    hold_for_passcode: bool,
}

/// Builds, signs and inserts the enrollment inside `tx` (whose first statement was a write).
/// Under the policy "verify new devices with the primary device", a user's further device is
/// inserted pending verification, next to the request that asks the primary device, and the
/// device's earlier enrollments stay until that is approved. The inner error is the insert's,
/// so that a replay (unique violation) can be told apart.
async fn create_enrollment(
    ctx: &Ctx,
    w: &mut crate::store::Write<'_>,
    app: &ApplicationInfo,
    user_id: &UserId,
    verified: &VerifiedRegistration,
    how: How<'_>,
    now: i64,
) -> Result<Result<Created, sqlx::Error>, DomainError> {
    let How {
        client_ip,
        hold_for_passcode,
    } = how;
    let reg = &verified.registration;
    // The platform attestation, as the application's setting asks: under `require` a pairing
    // without a valid one is refused here, before anything is written (the transaction, and
    // with it the code's consumption, rolls back).
    let attestation_settings = applications::attestation_settings_on(&mut **w, &app.id).await?;
    let checked_attestation =
        super::attestation::check_registration(&ctx.attestation, &attestation_settings, reg)?;
    let (attestation, app_attest_key) = match checked_attestation {
        Some(checked) => (Some(checked.record), checked.app_attest_key),
        None => (None, None),
    };
    let device_key_thumbprint = reg.device_key.thumbprint();
    let registration_digest = verified.digest.to_string();
    let enrollment_id = EnrollmentId::generate();
    let verifier = device_verification::verifier(w, &app.id, user_id).await?;
    let mut failed = Vec::new();
    let (is_primary, verification) = match &verifier {
        Some(primary) => {
            let facts =
                device_verification::facts(w, &app.id, user_id, primary, &device_key_thumbprint)
                    .await?;
            let wanted: Vec<String> = crate::store::users::locale(&mut **w, &app.id, user_id)
                .await?
                .into_iter()
                .collect();
            let question =
                device_verification::question(ctx, &app.name, reg, &facts, client_ip, &wanted)?;
            let request = super::authentication::new_authentication(
                ctx, &app.id, user_id, primary, question,
            )?;
            (false, Some(request))
        }
        None => {
            // Only the same proven device key replaces an earlier enrollment (and inherits its
            // primary flag): a registration that merely names a device replaces nothing.
            let (was_primary, replaced_requests) = enrollments::delete_same_device(
                w,
                &app.id,
                user_id,
                &reg.device_id,
                &device_key_thumbprint,
                &registration_digest,
            )
            .await?;
            failed = replaced_requests;
            // A device held for a passcode is not active, so never primary: it would keep the
            // flag if the flow rejected it, and the user's later devices would find a primary
            // device, none active to verify them, and pair unverified. Whether it becomes
            // primary is decided when it is activated (`enrollments::set_held_status`).
            let is_primary = !hold_for_passcode
                && (was_primary || !enrollments::has_primary(w, &app.id, user_id).await?);
            (is_primary, None)
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
                DomainError::new(
                    ErrorCode::InvalidRegistration,
                    "the OTP transport key is not usable",
                )
            })?,
        ),
        _ => None,
    };
    let reply = PairingReply {
        v: PROTOCOL_VERSION,
        issuer: ctx.public_url.clone(),
        application: app.clone(),
        user_id: user_id.clone(),
        enrollment_id: enrollment_id.clone(),
        device_id: reg.device_id.clone(),
        registration_digest: verified.digest,
        server_keys: ctx.keys.public_set(),
        pending_verification: verification.is_some() || hold_for_passcode,
        otp: sealed_otp,
        issued_at: now,
    };
    let server_payload = ctx
        .keys
        .sign(MessageType::PairingReply, &reply)
        .map_err(|_| DomainError::Internal("signing the pairing reply failed"))?;
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
        registration_digest,
        server_payload,
        paired_at: now,
        last_seen_at: now,
        status: if verification.is_some() || hold_for_passcode {
            EnrollmentState::PendingVerification
        } else {
            EnrollmentState::Active
        },
        verification_id: verification.as_ref().map(|v| v.id.clone()),
        push_stale_at: None,
        device_key_thumbprint: Some(device_key_thumbprint),
        attestation,
        app_attest: app_attest_key.map(|public_key| enrollments::AppAttestKey {
            public_key,
            counter: 0,
        }),
    };
    if let Err(e) = enrollments::insert(w, &enrollment).await {
        return Ok(Err(e));
    }
    if let Some(seed) = &otp_seed {
        crate::store::otp::set_seed(w, ctx.db.secrets()?, &enrollment.enrollment_id, seed).await?;
    }
    let mut verification_created = None;
    if let Some(request) = &verification {
        authentications::insert(&mut **w, request).await?;
        // Recorded in the write that stores it: an unpairing of the primary device right after
        // (which fails the request) cannot record its ending first.
        verification_created = Some(outcome::request_created_in(ctx, w, request).await?);
    }
    Ok(Ok(Created {
        enrollment,
        verification: verification.zip(verifier),
        verification_created,
        failed,
    }))
}

async fn application_info(ctx: &Ctx, id: &ApplicationId) -> Result<ApplicationInfo, DomainError> {
    let app = applications::get(&ctx.db, id)
        .await?
        .ok_or(DomainError::Internal(
            "a pairing code's application vanished",
        ))?;
    Ok(ApplicationInfo {
        id: app.id,
        name: app.name,
    })
}

/// The throttle's code bucket of a code: its first two characters (uniformly random, so live
/// codes spread evenly over the 1,024 buckets).
fn code_bucket(code: &PairingCode) -> String {
    code.display_form().chars().take(2).collect()
}

/// The throttle keys of an attempt: the client address within the code bucket, and the code
/// bucket across all addresses.
fn throttle_keys(client: &str, bucket: &str) -> (String, String) {
    (format!("{client}#code:{bucket}"), format!("code:{bucket}"))
}

/// Takes one attempt from both throttle keys, each with one conditional statement before any
/// code is compared; if the second is full, the first is given back. `true` if both were taken.
async fn take_attempt(ctx: &Ctx, keys: &(String, String), now: i64) -> Result<bool, DomainError> {
    let per_client = i64::from(ctx.config.pairing_failures_per_ip_per_minute.max(1));
    let per_bucket = i64::from(
        ctx.config
            .pairing_failures_per_code_bucket_per_minute
            .max(1),
    );
    if !throttle::take_attempt(&ctx.db, &keys.0, now, per_client).await? {
        return Ok(false);
    }
    if !throttle::take_attempt(&ctx.db, &keys.1, now, per_bucket).await? {
        throttle::refund_attempt(&ctx.db, &keys.0, now).await?;
        return Ok(false);
    }
    Ok(true)
}

/// A device pairs with a code, from the client address `client`. The throttle counts failed
/// attempts per minute under two keys taken before the code is compared: the client address
/// *within the code's bucket* (its first two characters), and the bucket across all addresses.
/// So the codes checked per minute stay below 1,024 × the bucket limit however many addresses
/// guess, and a neighbour's bad codes behind the same NAT address fill other buckets than a
/// colleague's valid code (see docs/network-security.md, "Pairing-code guessing"). A refused attempt is
/// `rate_limited`; a bad or used code counts as a failure; what was not a guess (it paired, or
/// the registration was refused first) is given back. A code that is not even well-formed is
/// compared with nothing and takes no attempt. The identical registration retried after a lost
/// reply gets the same answer.
pub(crate) async fn pair_device(
    ctx: &Ctx,
    client: &str,
    request: &DevicePairingRequest,
) -> Result<DevicePairingResponse, DomainError> {
    let now = ctx.now();
    let Ok(code) = PairingCode::parse(&request.pairing_code) else {
        return pair_with_code(ctx, client, request, now).await;
    };
    let keys = throttle_keys(client, &code_bucket(&code));
    // The attempt is taken before anything is checked, so concurrent guesses cannot all pass a
    // limit read before any of them counted; what turns out not to be a guess is given back.
    if !take_attempt(ctx, &keys, now).await? {
        count_failure(ctx, "rate_limited");
        return Err(DomainError::new(
            ErrorCode::RateLimited,
            "too many failed pairing attempts; retry in a minute",
        ));
    }
    let result = pair_with_code(ctx, client, request, now).await;
    let guessed_wrong = matches!(
        &result,
        Err(DomainError::Refused {
            code: ErrorCode::InvalidPairingCode,
            ..
        })
    );
    if !guessed_wrong {
        throttle::refund_attempt(&ctx.db, &keys.0, now).await?;
        throttle::refund_attempt(&ctx.db, &keys.1, now).await?;
    }
    result
}

/// [`pair_device`] once its attempt is taken.
async fn pair_with_code(
    ctx: &Ctx,
    client: &str,
    request: &DevicePairingRequest,
    now: i64,
) -> Result<DevicePairingResponse, DomainError> {
    let verified = verify_registration(
        ctx,
        &request.registration,
        &request.user_verification_proof,
        now,
    )
    .inspect_err(|_| count_failure(ctx, "invalid_registration"))?;
    let bad_code = || DomainError::new(ErrorCode::InvalidPairingCode, BAD_CODE);
    let Ok(code) = PairingCode::parse(&request.pairing_code) else {
        count_failure(ctx, "invalid_code");
        return Err(bad_code());
    };
    let code_digest = code.digest().to_string();
    let registration_digest = verified.digest.to_string();

    // What the pairing needs to read (the application, the policy's decision) is read before
    // the transaction that takes the code, for the application and user of the code while it is
    // unused: a request never holds its transaction's connection while it waits for another
    // (docs/architecture.md). The take itself stays the one conditional update in the
    // transaction, and it must find the code of that same application and user.
    let prepared = match pairing_codes::unused_holder(&ctx.db, &code_digest, now).await? {
        Some((app_id, user_id)) => {
            let app = application_info(ctx, &app_id).await?;
            // The policy (kind `pairing`) may refuse the device (rooted, an old OS): the code is
            // then not consumed, and the decision is recorded.
            let decided = pairing_policy(ctx, &app_id, &user_id, &verified, Some(client)).await?;
            if let Some(decided) = decided.as_ref().filter(|d| refuses_pairing(d)) {
                super::policy::record(ctx, &app_id, &user_id, None, decided).await?;
                count_failure(ctx, "policy_denied");
                return Err(decided.refusal());
            }
            Some((app_id, user_id, app, decided))
        }
        None => None,
    };
    let Some((app_id, user_id, app, decided)) = prepared else {
        return not_consumable(ctx, &code_digest, &registration_digest).await;
    };
    let mut tx = ctx.db.write().await?;
    // The user first, then the code: the pairing's choice of primary device takes turns with
    // every other write that makes one for the user (`store::users::lock`), and a user deleted
    // meanwhile (their codes with them) gets nothing paired. Only a user not found makes the
    // code not consumable: any other error is the storage's, passed up as it is, and no failed
    // guess is counted for it (`pair_device` gives the attempt back).
    match super::users::lock_in(&mut tx, &app_id, &user_id, UserLock::TakesTurns).await {
        Ok(()) => {}
        Err(e) if e.code() == Some(ErrorCode::UserNotFound) => {
            drop(tx);
            return not_consumable(ctx, &code_digest, &registration_digest).await;
        }
        Err(e) => return Err(e),
    }
    let consumed = pairing_codes::consume(&mut tx, &code_digest, &registration_digest, now).await?;
    if let Some(taken) = consumed {
        if taken != (app_id.clone(), user_id.clone()) {
            return Err(DomainError::Internal(
                "a pairing code changed its application or user",
            ));
        }
        match create_enrollment(
            ctx,
            &mut tx,
            &app,
            &user_id,
            &verified,
            How {
                client_ip: Some(client),
                hold_for_passcode: false,
            },
            now,
        )
        .await?
        {
            Ok(created) => {
                let committed = tx.commit().await?;
                let enrollment = created.push_verification(ctx, &committed).await;
                if let Some(decided) = &decided {
                    super::policy::record(
                        ctx,
                        &app_id,
                        &user_id,
                        Some(enrollment.enrollment_id.as_str()),
                        decided,
                    )
                    .await?;
                }
                count_pairing(ctx, "direct");
                tracing::info!(enrollment_id = %enrollment.enrollment_id, application_id = %app.id, "device paired");
                return Ok(DevicePairingResponse {
                    server_payload: enrollment.server_payload,
                });
            }
            Err(e) if is_unique_violation(&e) => {
                drop(tx);
                count_failure(ctx, "replayed");
                return Err(DomainError::new(
                    ErrorCode::ReplayedMessage,
                    "this registration was already used",
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Another attempt took the code. On SQLite it may be an earlier member of this write's
    // group, not committed yet (`store/writer.rs`): the reads below, outside the transaction,
    // would still find the code unused and refuse the same registration sent twice at once.
    tx.rollback_after_others().await?;
    not_consumable(ctx, &code_digest, &registration_digest).await
}

/// A pairing whose code could not be taken: the identical registration retried after a lost
/// reply gets the same answer; anything else `invalid_pairing_code`.
async fn not_consumable(
    ctx: &Ctx,
    code_digest: &str,
    registration_digest: &str,
) -> Result<DevicePairingResponse, DomainError> {
    if pairing_codes::consumed_by(&ctx.db, code_digest)
        .await?
        .as_deref()
        == Some(registration_digest)
        && let Some(existing) =
            enrollments::by_registration_digest(&ctx.db, registration_digest).await?
    {
        return Ok(DevicePairingResponse {
            server_payload: existing.server_payload,
        });
    }
    count_failure(ctx, "invalid_code");
    Err(DomainError::new(ErrorCode::InvalidPairingCode, BAD_CODE))
}

/// What the application's policy decides for pairing the registered device (kind `pairing`),
/// not recorded yet.
async fn pairing_policy(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    verified: &VerifiedRegistration,
    client: Option<&str>,
) -> Result<Option<super::policy::Decided>, DomainError> {
    let reg = &verified.registration;
    super::policy::decide(
        ctx,
        app,
        user,
        &super::policy::Request {
            kind: tessera_protocol::policy::RequestKind::Pairing,
            accessing_ip: client,
            device: Some(tessera_protocol::policy::DeviceFacts {
                platform: Some(reg.device.os_name.to_ascii_lowercase()),
                os_version: Some(reg.device.os_version.clone()),
                app_version: Some(reg.device.app_version.clone()),
                rooted: reg.signals.rooted,
                screen_lock: reg.signals.screen_lock,
                mdm: reg.signals.mdm,
                attested: None,
            }),
            fields: &[],
        },
    )
    .await
}

/// Whether a decision refuses a pairing: only a denial does (`approve` and `require` let the
/// device pair; what it may then be used for is decided when it authenticates).
fn refuses_pairing(decided: &super::policy::Decided) -> bool {
    decided.decision.effect == tessera_protocol::policy::PolicyEffect::Deny
}

/// The customer's backend completes a relay pairing for its user with the app's mobile payload.
/// The same payload again for the same user answers the same enrollment; for anyone else it is
/// a replay.
pub(crate) async fn relay(
    ctx: &Ctx,
    app: &Application,
    user_id: &UserId,
    request: &RelayPairingRequest,
) -> Result<RelayPairingResponse, DomainError> {
    relay_with(ctx, app, user_id, request, false)
        .await
        .map(|relayed| relayed.response)
}

/// What [`relay_with`] paired: the customer's answer, and whether the device is held for a
/// passcode (stored `pending_verification` with no primary device asked).
#[derive(Debug)]
pub(crate) struct Relayed {
    /// The answer the customer backend relays to the device.
    pub response: RelayPairingResponse,
    /// Whether the device waits for a flow's passcode ([`approve_held`], [`reject_held`]):
    /// only then does the flow send one. A device the user's primary device is asked to verify
    /// is pending too, but not held.
    pub held: bool,
}

impl Relayed {
    fn of(enrollment: Enrollment) -> Self {
        let held = enrollment.status == EnrollmentState::PendingVerification
            && enrollment.verification_id.is_none();
        Self {
            response: RelayPairingResponse {
                device: enrollment.record(),
                server_payload: enrollment.server_payload,
            },
            held,
        }
    }
}

/// [`relay`], for a flow whose new device is approved by a passcode sent to the user's phone
/// or email (`hold_for_passcode`): when no primary device verifies it, the enrollment is
/// stored `pending_verification` with no verification request, until the flow activates it
/// ([`approve_held`]) or rejects it ([`reject_held`]). Whether a primary device verifies it is
/// decided inside the write that stores it, under the user's lock: a flow that read the user's
/// devices before cannot pair a device active, unverified and without its passcode because the
/// user's only device was unpaired meanwhile. [`Relayed::held`] says which it was.
pub(crate) async fn relay_with(
    ctx: &Ctx,
    app: &Application,
    user_id: &UserId,
    request: &RelayPairingRequest,
    hold_for_passcode: bool,
) -> Result<Relayed, DomainError> {
    let now = ctx.now();
    let invalid = || {
        DomainError::new(
            ErrorCode::InvalidMobilePayload,
            "the mobile payload is malformed or does not verify",
        )
    };
    let payload = MobilePayload::decode(&request.mobile_payload).map_err(|_| invalid())?;
    let verified = verify_registration(
        ctx,
        &payload.registration,
        &payload.user_verification_proof,
        now,
    )
    .map_err(|e| match e.code() {
        Some(ErrorCode::InvalidSignature | ErrorCode::InvalidRegistration) => invalid(),
        _ => e,
    })
    .inspect_err(|_| count_failure(ctx, "invalid_mobile_payload"))?;
    super::users::require_user(ctx, &app.id, user_id).await?;
    let digest = verified.digest.to_string();
    if let Some(again) = relayed_before(ctx, app, user_id, &digest).await? {
        return again.map(Relayed::of);
    }
    let info = ApplicationInfo {
        id: app.id.clone(),
        name: app.name.clone(),
    };
    let decided = pairing_policy(ctx, &app.id, user_id, &verified, None).await?;
    if let Some(decided) = &decided {
        let subject = verified.registration.device_id.to_string();
        super::policy::record(ctx, &app.id, user_id, Some(subject.as_str()), decided).await?;
        if refuses_pairing(decided) {
            count_failure(ctx, "policy_denied");
            return Err(decided.refusal());
        }
    }
    let mut tx = ctx.db.write().await?;
    // The user's check above is made again inside the write, which keeps them from a deletion
    // until it commits, and takes turns with the other writes that choose a primary device.
    super::users::lock_in(&mut tx, &app.id, user_id, UserLock::TakesTurns).await?;
    match create_enrollment(
        ctx,
        &mut tx,
        &info,
        user_id,
        &verified,
        How {
            client_ip: None,
            hold_for_passcode,
        },
        now,
    )
    .await?
    {
        Ok(created) => {
            let committed = tx.commit().await?;
            let enrollment = created.push_verification(ctx, &committed).await;
            count_pairing(ctx, "relay");
            tracing::info!(enrollment_id = %enrollment.enrollment_id, application_id = %info.id, "device paired (relay)");
            Ok(Relayed::of(enrollment))
        }
        Err(e) if is_unique_violation(&e) => {
            // A copy of this payload relayed at the same time paired it first (on SQLite
            // possibly an earlier member of this write's group): its answer once committed.
            tx.rollback_after_others().await?;
            match relayed_before(ctx, app, user_id, &digest).await? {
                Some(again) => again.map(Relayed::of),
                None => {
                    count_failure(ctx, "replayed");
                    Err(payload_replayed())
                }
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The answer to a mobile payload already paired (`digest`, its registration's): for the same
/// application and user the pairing's own answer (a retry, or a copy sent at the same time),
/// for anyone else `replayed_message`. `None` if it is not paired.
async fn relayed_before(
    ctx: &Ctx,
    app: &Application,
    user_id: &UserId,
    digest: &str,
) -> Result<Option<Result<Enrollment, DomainError>>, DomainError> {
    let Some(existing) = enrollments::by_registration_digest(&ctx.db, digest).await? else {
        return Ok(None);
    };
    if existing.application_id == app.id && &existing.user_id == user_id {
        return Ok(Some(Ok(existing)));
    }
    count_failure(ctx, "replayed");
    Ok(Some(Err(payload_replayed())))
}

fn payload_replayed() -> DomainError {
    DomainError::new(
        ErrorCode::ReplayedMessage,
        "this mobile payload was already used",
    )
}

/// Activates a new device a flow held for passcode approval (the passcode was right); false if
/// it is no longer held (rejected, or activated meanwhile). It becomes the user's primary device
/// if they have no active one by then. Wakes whoever waits on it.
pub(crate) async fn approve_held(ctx: &Ctx, id: &EnrollmentId) -> Result<bool, DomainError> {
    let done = enrollments::set_held_status(&ctx.db, id, EnrollmentState::Active).await?;
    if done {
        tracing::info!(enrollment_id = %id, "new device approved by passcode");
        ctx.events
            .announce(&[super::events::Topic::Enrollment(id.to_string())]);
    }
    Ok(done)
}

/// Rejects, for good, a new device a flow held for passcode approval (the flow ended without
/// the passcode). Wakes whoever waits on it.
pub(crate) async fn reject_held(ctx: &Ctx, id: &EnrollmentId) -> Result<bool, DomainError> {
    let done = enrollments::set_held_status(&ctx.db, id, EnrollmentState::Rejected).await?;
    if done {
        tracing::info!(enrollment_id = %id, "new device held for a passcode rejected");
        ctx.events
            .announce(&[super::events::Topic::Enrollment(id.to_string())]);
    }
    Ok(done)
}

#[cfg(test)]
mod flow_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::envelope::SoftwareSigningKey;
    use tessera_protocol::ids::DeviceId;
    use tessera_protocol::pairing::{DeviceInfo, DeviceSignals};

    const NOW: i64 = 1_800_000_000;

    fn server() -> ServerUrl {
        ServerUrl::parse("https://auth.example.com").unwrap()
    }

    struct Device {
        possession: SoftwareSigningKey,
        user_verification: SoftwareSigningKey,
        device_key: SoftwareSigningKey,
    }

    impl Device {
        fn new() -> Self {
            Self {
                possession: SoftwareSigningKey::generate(),
                user_verification: SoftwareSigningKey::generate(),
                device_key: SoftwareSigningKey::generate(),
            }
        }

        fn registration(&self) -> DeviceRegistration {
            DeviceRegistration {
                v: PROTOCOL_VERSION,
                audience: server(),
                device_id: DeviceId::of_device_key(&self.device_key.public_jwk()),
                nonce: DeviceRegistration::new_nonce(),
                issued_at: NOW,
                possession_key: self.possession.public_jwk(),
                user_verification_key: self.user_verification.public_jwk(),
                device: DeviceInfo {
                    model: "Pixel 9".into(),
                    os_name: "Android".into(),
                    os_version: "15".into(),
                    app_version: "1.0".into(),
                    sdk_version: "0.1".into(),
                    name: None,
                },
                signals: DeviceSignals::default(),
                push: PushRegistration::None,
                otp_transport_key: None,
                device_key: self.device_key.public_jwk(),
                device_key_proof: String::new(),
                attestation: None,
            }
        }

        /// The device key proof for `registration`, filled in.
        fn prove_device_key(&self, registration: &mut DeviceRegistration) {
            registration.device_key_proof = envelope::sign(
                MessageType::DeviceKeyProof,
                &registration.device_key_claims(),
                &self.device_key,
            )
            .unwrap();
        }

        /// The signed registration (its device key proof filled in unless one is set) and the
        /// key proof for it.
        fn sign(&self, registration: &DeviceRegistration) -> (String, String) {
            let mut registration = registration.clone();
            if registration.device_key_proof.is_empty() {
                self.prove_device_key(&mut registration);
            }
            let registration = &registration;
            let jws =
                envelope::sign(MessageType::Registration, registration, &self.possession).unwrap();
            let digest = envelope::verify::<DeviceRegistration>(
                &jws,
                MessageType::Registration,
                &registration.possession_key,
            )
            .unwrap()
            .digest;
            let proof = envelope::sign(
                MessageType::KeyProof,
                &KeyProof {
                    v: PROTOCOL_VERSION,
                    registration_digest: digest,
                },
                &self.user_verification,
            )
            .unwrap();
            (jws, proof)
        }
    }

    fn refusal(registration: &str, proof: &str, server: &ServerUrl, now: i64) -> Option<ErrorCode> {
        check_registration(server, registration, proof, now)
            .err()
            .and_then(|e| e.code())
    }

    #[test]
    fn push_tokens_are_printable_ascii_of_bounded_length() {
        assert!(push_token_ok(&PushRegistration::None));
        assert!(push_token_ok(&PushRegistration::Fcm {
            token: "abc:DEF-123_x".into()
        }));
        assert!(push_token_ok(&PushRegistration::Apns {
            token: "a".repeat(MAX_PUSH_TOKEN_CHARS),
            sandbox: true,
        }));
        for bad in [
            String::new(),
            "with space".into(),
            "new\nline".into(),
            "é".into(),
            "a".repeat(MAX_PUSH_TOKEN_CHARS + 1),
        ] {
            assert!(!push_token_ok(&PushRegistration::Fcm {
                token: bad.clone()
            }));
            assert!(!push_token_ok(&PushRegistration::Apns {
                token: bad,
                sandbox: false
            }));
        }
    }

    #[test]
    fn a_well_formed_registration_checks_out() {
        let device = Device::new();
        let registration = device.registration();
        let (jws, proof) = device.sign(&registration);
        let verified = check_registration(&server(), &jws, &proof, NOW).unwrap();
        let mut expected = registration;
        device.prove_device_key(&mut expected);
        assert_eq!(verified.registration.device_id, expected.device_id);
        assert_eq!(verified.registration.device_key, expected.device_key);
        assert_eq!(verified.registration.nonce, expected.nonce);
    }

    #[test]
    fn a_registration_for_another_server_or_time_is_refused() {
        let device = Device::new();
        let (jws, proof) = device.sign(&device.registration());
        let elsewhere = ServerUrl::parse("https://other.example.com").unwrap();
        assert_eq!(
            refusal(&jws, &proof, &elsewhere, NOW),
            Some(ErrorCode::AudienceMismatch)
        );
        assert_eq!(
            refusal(
                &jws,
                &proof,
                &server(),
                NOW + MAX_REGISTRATION_AGE_SECONDS + 1
            ),
            Some(ErrorCode::StaleMessage)
        );
        assert_eq!(
            refusal(&jws, &proof, &server(), NOW - MAX_CLOCK_SKEW_SECONDS - 1),
            Some(ErrorCode::StaleMessage)
        );
    }

    #[test]
    fn a_proof_of_another_registration_or_key_is_refused() {
        let device = Device::new();
        let (jws, _) = device.sign(&device.registration());
        let (_, other_proof) = device.sign(&device.registration());
        assert_eq!(
            refusal(&jws, &other_proof, &server(), NOW),
            Some(ErrorCode::InvalidRegistration)
        );
        let stranger = Device::new();
        let (_, strangers_proof) = stranger.sign(&stranger.registration());
        assert_eq!(
            refusal(&jws, &strangers_proof, &server(), NOW),
            Some(ErrorCode::InvalidRegistration)
        );
        assert_eq!(
            refusal("not a jws", &other_proof, &server(), NOW),
            Some(ErrorCode::InvalidSignature)
        );
    }

    #[test]
    fn a_claimed_device_id_or_an_unproven_device_key_is_refused() {
        let device = Device::new();
        // Another device's id, with this device's own key and a genuine proof over that id.
        let mut claimed = device.registration();
        claimed.device_id = DeviceId::of_device_key(&Device::new().device_key.public_jwk());
        let (jws, proof) = device.sign(&claimed);
        assert_eq!(
            refusal(&jws, &proof, &server(), NOW),
            Some(ErrorCode::InvalidRegistration)
        );
        // Another device's key and id, "proven" with this device's key.
        let victim = Device::new();
        let mut borrowed = device.registration();
        borrowed.device_key = victim.device_key.public_jwk();
        borrowed.device_id = DeviceId::of_device_key(&borrowed.device_key);
        device.prove_device_key(&mut borrowed);
        let (jws, proof) = device.sign(&borrowed);
        assert_eq!(
            refusal(&jws, &proof, &server(), NOW),
            Some(ErrorCode::InvalidSignature)
        );
        // A genuine proof lifted from another registration of the same device.
        let mut earlier = device.registration();
        device.prove_device_key(&mut earlier);
        let mut lifted = device.registration();
        lifted.device_key_proof = earlier.device_key_proof;
        let (jws, proof) = device.sign(&lifted);
        assert_eq!(
            refusal(&jws, &proof, &server(), NOW),
            Some(ErrorCode::InvalidRegistration)
        );
    }

    #[test]
    fn equal_keys_bad_descriptions_and_bad_push_tokens_are_refused() {
        let device = Device::new();
        let same = Device {
            possession: device.possession.clone(),
            user_verification: device.possession.clone(),
            device_key: SoftwareSigningKey::generate(),
        };
        let (jws, proof) = same.sign(&same.registration());
        assert_eq!(
            refusal(&jws, &proof, &server(), NOW),
            Some(ErrorCode::InvalidRegistration)
        );

        let mut long_model = device.registration();
        long_model.device.model = "x".repeat(MAX_INFO_CHARS + 1);
        let mut control_name = device.registration();
        control_name.device.name = Some("evil\u{7}".into());
        let mut bad_push = device.registration();
        bad_push.push = PushRegistration::Fcm {
            token: "has space".into(),
        };
        for registration in [long_model, control_name, bad_push] {
            let (jws, proof) = device.sign(&registration);
            assert_eq!(
                refusal(&jws, &proof, &server(), NOW),
                Some(ErrorCode::InvalidRegistration)
            );
        }
    }
}

#[cfg(test)]
mod throttle_key_tests {
    use super::*;

    #[test]
    fn the_code_bucket_is_the_codes_first_two_characters_however_typed() {
        let code = PairingCode::parse("ab7q-efgh-jkmn").unwrap();
        assert_eq!(code_bucket(&code), "AB");
        let same = PairingCode::parse("AB7QEFGHJKMN").unwrap();
        assert_eq!(code_bucket(&same), "AB");
        let read_aloud = PairingCode::parse("o1xx-xxxx-xxxx").unwrap();
        assert_eq!(code_bucket(&read_aloud), "01");
        let (client_key, bucket_key) = throttle_keys("203.0.113.9", "AB");
        assert_eq!(client_key, "203.0.113.9#code:AB");
        assert_eq!(bucket_key, "code:AB");
    }
}
