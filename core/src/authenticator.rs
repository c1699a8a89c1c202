//! The [`Authenticator`]: the device SDK's single entry object.

use std::sync::Arc;

use rand::RngCore;
use std::time::Duration;

use tessera_protocol::api::{
    ClaimQrSession, DevicePairingRequest, DevicePairingResponse, EnrollmentState, EnrollmentStatus,
    PendingRequests, QrAnswerRecorded, QrSessionClaimed, ResponseRecorded, ServerKeysResponse,
    SubmitQrResponse, SubmitResponse, UpdatePushRequest,
};
use tessera_protocol::authentication::{
    AuthenticationId, AuthenticationKind, AuthenticationRequest, AuthenticationResponse, Decision,
    DeviceLocation,
};
use tessera_protocol::envelope::{self, MessageType};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::flows::DeviceAuthorization;
use tessera_protocol::ids::{DeviceId, EnrollmentId, UserId};
use tessera_protocol::jwk::JwkSet;
use tessera_protocol::pairing::{
    ApplicationInfo, DeviceRegistration, DeviceSignals, DeviceVersions,
    MAX_REGISTRATION_AGE_SECONDS, MobilePayload, PairingCode, PairingReply, PairingUri,
    PushRegistration, RegistrationAttestation, ServerKeySet, ServerUrl,
};
use tessera_protocol::qr::{QrSessionState, QrUri};
use tessera_protocol::time::{UnixSeconds, now};
use tokio::sync::Mutex;

use crate::config::AuthenticatorConfig;
use crate::error::CoreError;
use crate::key_store::{AppAttestAsserter, KeyStore};
use crate::otp::{
    OneTimePasscode, OtpAccount, OtpAccountId, OtpAccountSource, OtpAlgorithm, OtpDigits, OtpKey,
    OtpKind, OtpSeed, hotp, totp,
};
use crate::pairing::{ReplyTrust, create_registration, verify_pairing_reply};
use crate::qr::{
    QrAuthentication, response_for as qr_response_for, verify_context as verify_qr_context,
};
use crate::requests::{IncomingRequest, USER_VERIFICATION_AMR, response_for, verify_request};
use crate::signer::KeyStoreSigner;
use crate::state::{
    DeviceState, PendingMode, PendingPairing, StateStore, StoredEnrollment, StoredOtpAccount,
};
use crate::storage::SecureStorage;
use crate::transport::{DeviceCall, Transport};

/// How long a pending pairing is kept: a registration older than this is refused by the server
/// anyway.
const PENDING_TTL_SECONDS: i64 = MAX_REGISTRATION_AGE_SECONDS + 300;

/// One pairing of this device with one user of one application on one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// The enrollment's id (the server's name for this device of this user).
    pub enrollment_id: EnrollmentId,
    /// The server.
    pub server: ServerUrl,
    /// The application.
    pub application: ApplicationInfo,
    /// The user.
    pub user_id: UserId,
    /// This device.
    pub device_id: DeviceId,
    /// When the pairing completed.
    pub paired_at: UnixSeconds,
    /// `Active`, or `PendingVerification` while the user's primary device has not yet approved
    /// this device (see [`Authenticator::wait_for_verification`]).
    pub status: EnrollmentState,
    /// The server no longer knows it: the backend or an administrator unpaired it. Show it as
    /// such (the user may pair again) and remove it with [`Authenticator::forget_enrollment`]
    /// or [`Authenticator::remove_enrollment`]; its requests are no longer pulled.
    pub removed: bool,
}

/// How long a seamless device authorization is accepted, in seconds.
const AUTHORIZATION_LIFETIME_SECONDS: i64 = 60;

impl From<&StoredEnrollment> for Enrollment {
    fn from(e: &StoredEnrollment) -> Self {
        Self {
            enrollment_id: e.enrollment_id.clone(),
            server: e.server.clone(),
            application: e.application.clone(),
            user_id: e.user_id.clone(),
            device_id: e.device_id.clone(),
            paired_at: e.paired_at,
            status: if e.pending_verification {
                EnrollmentState::PendingVerification
            } else {
                EnrollmentState::Active
            },
            removed: e.removed_at.is_some(),
        }
    }
}

/// The device SDK. Owns the device's encrypted state and exposes the flows.
///
/// Cheap to share (`Arc<Authenticator>`); every method may be called concurrently. State changes
/// are serialized and written before a method returns; no lock is held across a network call.
pub struct Authenticator {
    config: AuthenticatorConfig,
    key_store: Arc<dyn KeyStore>,
    store: StateStore,
    state: Mutex<DeviceState>,
    /// The installation's device id as the state holds it (it changes once, when a device
    /// paired before device keys existed gets its device key).
    device_id: std::sync::RwLock<DeviceId>,
    transport: Transport,
    /// Signals and location as the app last reported them; every answer carries them.
    posture: std::sync::RwLock<Posture>,
    /// The app's App Attest assertions, if it makes them (iOS).
    app_attest_asserter: std::sync::RwLock<Option<Arc<dyn AppAttestAsserter>>>,
    /// How many `pair` calls are sending each pending pairing right now (by its id): a refusal
    /// of one call drops the pending pairing only if no other call is still waiting on it.
    /// Changed only while `state` is locked, except when a cancelled call leaves.
    pairings_in_flight: InFlightCalls,
}

/// The `pair` calls sending each pending pairing, by the pending pairing's id.
type InFlightCalls = std::sync::Mutex<std::collections::HashMap<String, usize>>;

/// One `pair` call's claim on a pending pairing it is sending ([`Authenticator::pair`]). Dropped
/// without [`InFlight::leave`] (the call was cancelled), it gives its claim back all the same.
struct InFlight<'a> {
    calls: &'a InFlightCalls,
    id: String,
    left: bool,
}

impl<'a> InFlight<'a> {
    /// Claims `id` (call with the state locked).
    fn enter(calls: &'a InFlightCalls, id: &str) -> Self {
        let mut map = calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry(id.to_string()).or_insert(0) += 1;
        InFlight {
            calls,
            id: id.to_string(),
            left: false,
        }
    }

    /// Gives the claim back (call with the state locked): the number of calls still sending
    /// this pending pairing.
    fn leave(mut self) -> usize {
        self.left = true;
        self.release()
    }

    fn release(&self) -> usize {
        let mut map = self
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let remaining = match map.get_mut(&self.id) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if remaining == 0 {
            map.remove(&self.id);
        }
        remaining
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.left {
            self.release();
        }
    }
}

#[derive(Debug, Clone)]
struct Posture {
    signals: DeviceSignals,
    location: Option<DeviceLocation>,
    /// Model, OS and app version as the app last reported them.
    versions: DeviceVersions,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Authenticator({})", self.device_id())
    }
}

enum Completion {
    Direct,
    Relay,
}

impl Authenticator {
    /// Opens the device: loads (or creates) the encrypted state and cleans stale pending
    /// pairings.
    pub async fn open(
        config: AuthenticatorConfig,
        key_store: Arc<dyn KeyStore>,
        storage: Arc<dyn SecureStorage>,
    ) -> Result<Self, CoreError> {
        let (store, mut state) = StateStore::open(storage, key_store.as_ref())?;
        let stale = state.take_expired_pending(now() - PENDING_TTL_SECONDS);
        if !stale.is_empty() {
            store.save(&state)?;
            delete_keys(key_store.as_ref(), &stale);
        }
        // A device that never paired gets its device key (and so its lasting id) now; one that
        // paired before device keys existed keeps its id until its next pairing.
        if state.device_key_alias.is_none()
            && state.enrollments.is_empty()
            && state.pending.is_empty()
        {
            ensure_device_key(&key_store, &store, &mut state)?;
        }
        let transport = Transport::new(config.http_timeout, config.allow_insecure_http)?;
        let device_id = state.device_id.clone();
        let posture = std::sync::RwLock::new(Posture {
            signals: config.signals,
            location: None,
            versions: DeviceVersions::of(&config.device),
        });
        Ok(Self {
            posture,
            config,
            key_store,
            store,
            state: Mutex::new(state),
            device_id: std::sync::RwLock::new(device_id),
            transport,
            app_attest_asserter: std::sync::RwLock::new(None),
            pairings_in_flight: InFlightCalls::default(),
        })
    }

    /// Sets (or with `None` removes) the app's App Attest asserter: answers of enrollments whose
    /// pairing was App Attested then carry an assertion of that App Attest key over the answer
    /// (`docs/attestation.md`). An application with attestation `require`, or whose policy asks
    /// for assertions, refuses such answers without one.
    pub fn set_app_attest_asserter(&self, asserter: Option<Arc<dyn AppAttestAsserter>>) {
        match self.app_attest_asserter.write() {
            Ok(mut current) => *current = asserter,
            Err(poisoned) => *poisoned.into_inner() = asserter,
        }
    }

    fn app_attest_asserter(&self) -> Option<Arc<dyn AppAttestAsserter>> {
        match self.app_attest_asserter.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts an App Attest assertion into `response` when the enrollment's pairing was App
    /// Attested and the app set an asserter; otherwise leaves it without one.
    fn assert_app(
        &self,
        enrollment: &StoredEnrollment,
        response: &mut AuthenticationResponse,
    ) -> Result<(), CoreError> {
        response.app_attest_assertion = None;
        response.app_attest_assertion =
            self.app_assertion(enrollment, || response.app_attest_client_data_hash())?;
        Ok(())
    }

    /// [`Authenticator::assert_app`] for a QR login answer: the same rule, over
    /// [`tessera_protocol::qr::QrResponse::app_attest_client_data_hash`].
    fn assert_app_qr(
        &self,
        enrollment: &StoredEnrollment,
        response: &mut tessera_protocol::qr::QrResponse,
    ) -> Result<(), CoreError> {
        response.app_attest_assertion = None;
        response.app_attest_assertion =
            self.app_assertion(enrollment, || response.app_attest_client_data_hash())?;
        Ok(())
    }

    /// The App Attest assertion (unpadded base64url) over the `clientDataHash` of an answer
    /// without one, when the enrollment's pairing was App Attested and the app set an asserter.
    fn app_assertion(
        &self,
        enrollment: &StoredEnrollment,
        client_data_hash: impl FnOnce() -> Result<
            tessera_protocol::canonical::Sha256Digest,
            tessera_protocol::canonical::CanonicalError,
        >,
    ) -> Result<Option<String>, CoreError> {
        let (Some(key_id), Some(asserter)) = (
            enrollment.app_attest_key_id.as_deref(),
            self.app_attest_asserter(),
        ) else {
            return Ok(None);
        };
        use base64::Engine;
        let key_id = base64::engine::general_purpose::STANDARD
            .decode(key_id)
            .map_err(|_| {
                CoreError::KeyStore("the stored App Attest key id is not base64".into())
            })?;
        let client_data_hash =
            client_data_hash().map_err(|e| CoreError::KeyStore(e.to_string()))?;
        let assertion = asserter.generate_assertion(&key_id, client_data_hash.as_bytes())?;
        Ok(Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(assertion),
        ))
    }

    /// This installation's device id: derived from its device key (see
    /// [`DeviceId::of_device_key`]). A device paired before device keys existed keeps its
    /// earlier id until its next pairing creates the key; its earlier enrollments keep the id
    /// they were paired with ([`Enrollment::device_id`]).
    pub fn device_id(&self) -> DeviceId {
        match self.device_id.read() {
            Ok(id) => id.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn remember_device_id(&self, id: &DeviceId) {
        match self.device_id.write() {
            Ok(mut current) => *current = id.clone(),
            Err(poisoned) => *poisoned.into_inner() = id.clone(),
        }
    }

    /// Reports the device's current posture (rooted, screen lock, MDM); every later answer
    /// carries it, signed. Starts as [`AuthenticatorConfig::signals`].
    pub fn set_signals(&self, signals: DeviceSignals) {
        if let Ok(mut p) = self.posture.write() {
            p.signals = signals;
        }
    }

    /// Reports where the device is (or `None` when the app has no fix or no permission); every
    /// later answer carries it, signed, and the server reports it as
    /// `pingid.authentication.authenticating.device.latitude` and the like.
    pub fn set_location(&self, location: Option<DeviceLocation>) -> Result<(), CoreError> {
        if location.is_some_and(|l| !l.is_valid()) {
            return Err(CoreError::InvalidInput(
                "the location is out of range (latitude ±90, longitude ±180, accuracy ≥ 0)".into(),
            ));
        }
        if let Ok(mut p) = self.posture.write() {
            p.location = location;
        }
        Ok(())
    }

    /// Reports the device's model, OS version and app version as they are now (after an OS or
    /// app update, when the app does not reopen the authenticator); every later answer carries
    /// them, signed, and the server keeps the enrollment current from them. Starts as
    /// [`AuthenticatorConfig::device`]'s.
    pub fn set_device_versions(&self, versions: DeviceVersions) {
        if let Ok(mut p) = self.posture.write() {
            p.versions = versions;
        }
    }

    fn posture(&self) -> Posture {
        match self.posture.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The completed enrollments, oldest first.
    pub async fn enrollments(&self) -> Vec<Enrollment> {
        self.state
            .lock()
            .await
            .enrollments
            .iter()
            .map(Enrollment::from)
            .collect()
    }

    /// Pairs with a pairing URI (`tessera://pair?...`, from a QR code) or a typed pairing code
    /// plus the server's URL.
    ///
    /// Safe to retry: the keys and the signed registration are kept until the server answers, so
    /// a retry after a lost reply sends the identical registration and gets the same enrollment.
    /// They are kept, too, when the server refuses for now ([`CoreError::is_transient`]: `429`,
    /// `5xx`), and dropped only when it refuses the registration itself.
    pub async fn pair(
        &self,
        code_or_uri: &str,
        server: Option<&str>,
    ) -> Result<Enrollment, CoreError> {
        let (server, code) = parse_pairing_input(code_or_uri, server)?;
        self.transport.check_server(&server)?;
        let code_digest = code.digest();
        let mode = PendingMode::Direct { code_digest };
        // A second call with the same code while the first is under way (a double tap, a retry
        // after a timeout) sends the same registration: the server gives both the one answer.
        let (pending, in_flight) = {
            let mut state = self.state.lock().await;
            self.clean_pending(&mut state)?;
            let pending = match state
                .pending
                .iter()
                .find(|p| p.server == server && p.mode == mode)
            {
                Some(p) => p.clone(),
                None => self.new_pending(&mut state, &server, mode)?,
            };
            let in_flight = InFlight::enter(&self.pairings_in_flight, &pending.id);
            (pending, in_flight)
        };
        let request = DevicePairingRequest {
            pairing_code: code.display_form().to_string(),
            registration: pending.registration.clone(),
            user_verification_proof: pending.user_verification_proof.clone(),
        };
        let response: Result<DevicePairingResponse, CoreError> = self
            .transport
            .post_json(&server, "/v1/device/pairings", &request)
            .await;
        match response {
            Ok(r) => {
                let completed = self
                    .complete(&pending, &r.server_payload, Completion::Direct)
                    .await;
                drop(in_flight);
                completed
            }
            Err(e @ CoreError::Server { .. }) if !e.is_transient() => {
                // A refusal of this registration: this call will not pair with it. Another call
                // still sending it may yet (its answer came first), so the pending pairing, and
                // the keys the server may already hold, go only with the last call.
                self.drop_pending_after(in_flight).await?;
                Err(e)
            }
            // A network failure, or a refusal for now (429, 5xx: the server may have paired
            // this registration on an earlier send whose reply was lost): keep the pending
            // pairing for a retry.
            Err(e) => Err(e),
        }
    }

    /// Relay pairing, step 1: creates keys and a signed registration for `server` and returns the
    /// *mobile payload* for the app to hand to its backend, which forwards it to the server.
    pub async fn create_mobile_payload(&self, server: &str) -> Result<String, CoreError> {
        let server =
            ServerUrl::parse(server).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        self.transport.check_server(&server)?;
        let pending = {
            let mut state = self.state.lock().await;
            self.clean_pending(&mut state)?;
            self.new_pending(&mut state, &server, PendingMode::Relay)?
        };
        MobilePayload {
            v: tessera_protocol::PROTOCOL_VERSION,
            registration: pending.registration,
            user_verification_proof: pending.user_verification_proof,
        }
        .encode()
        .map_err(|_| CoreError::InvalidInput("mobile payload could not be encoded".into()))
    }

    /// Relay pairing, step 2: completes the pairing with the *server payload* the backend got
    /// from the server. Checks it against the server's own published keys (it travelled through
    /// a third party) or the keys already pinned for that server.
    pub async fn complete_relay_pairing(
        &self,
        server_payload: &str,
    ) -> Result<Enrollment, CoreError> {
        let untrusted: PairingReply = envelope::unverified_payload(server_payload)
            .map_err(|_| CoreError::InvalidInput("not a server payload".into()))?;
        let pending = {
            let state = self.state.lock().await;
            if let Some(done) = state
                .enrollments
                .iter()
                .find(|e| e.enrollment_id == untrusted.enrollment_id)
            {
                // Completed already (a retry); re-check it is genuinely that pairing's reply.
                let keys = state
                    .pinned_keys(&done.server)
                    .cloned()
                    .ok_or(CoreError::UntrustedServerKey)?;
                let reply = envelope::verify_with_set::<PairingReply>(
                    server_payload,
                    MessageType::PairingReply,
                    &keys,
                )
                .map_err(|_| CoreError::UntrustedServerKey)?;
                if reply.payload.device_id == done.device_id {
                    return Ok(Enrollment::from(done));
                }
                return Err(CoreError::ReplyMismatch("names another device"));
            }
            state
                .pending
                .iter()
                .find(|p| {
                    p.mode == PendingMode::Relay
                        && p.registration_digest.ct_eq(&untrusted.registration_digest)
                })
                .cloned()
                .ok_or(CoreError::UnknownPendingPairing)?
        };
        self.complete(&pending, server_payload, Completion::Relay)
            .await
    }

    /// Asks the server whether an enrollment is still active (a call signed with the
    /// enrollment's possession key).
    pub async fn enrollment_status(
        &self,
        id: &EnrollmentId,
    ) -> Result<EnrollmentStatus, CoreError> {
        let body = self.enrollment_call(id, reqwest::Method::GET).await?;
        serde_json::from_slice(&body)
            .map_err(|_| CoreError::InvalidServerResponse("unexpected enrollment status".into()))
    }

    /// Waits until the user's primary device approves or refuses this enrollment (application
    /// policy "verify new devices with the primary device"), or `timeout` passes; returns where
    /// it stands. Approved: it becomes usable and replaces this device's earlier enrollment for
    /// the same user with the same device id (the one the server replaced; an earlier one under
    /// another device id stays, as on the server). Rejected (denied or expired): it is deleted
    /// with its keys. An enrollment
    /// that was never pending returns `Active` at once, without a call.
    pub async fn wait_for_verification(
        &self,
        id: &EnrollmentId,
        timeout: Duration,
    ) -> Result<EnrollmentState, CoreError> {
        let enrollment = self.stored_enrollment(id).await?;
        if !enrollment.pending_verification {
            return Ok(EnrollmentState::Active);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let wait = left.min(Duration::from_secs(30));
            let signer =
                KeyStoreSigner::new(Arc::clone(&self.key_store), &enrollment.possession_alias)?;
            let path = format!("/v1/device/enrollments/{id}");
            let query = format!("wait={}", wait.as_secs());
            let mut call = DeviceCall::new(reqwest::Method::GET, &path);
            call.query = Some(&query);
            call.timeout = Some(wait + Duration::from_secs(15));
            let body = self
                .signed_call(&enrollment.server, call, id, &signer)
                .await?;
            let status: EnrollmentStatus = serde_json::from_slice(&body).map_err(|_| {
                CoreError::InvalidServerResponse("unexpected enrollment status".into())
            })?;
            match status.status {
                EnrollmentState::Active => {
                    self.activate(id).await?;
                    return Ok(EnrollmentState::Active);
                }
                EnrollmentState::Rejected => {
                    self.forget_enrollment(id).await?;
                    tracing::info!(enrollment_id = %id, "the primary device did not approve this device");
                    return Ok(EnrollmentState::Rejected);
                }
                EnrollmentState::PendingVerification if left <= wait => {
                    return Ok(EnrollmentState::PendingVerification);
                }
                EnrollmentState::PendingVerification => {}
            }
        }
    }

    /// Marks a verified enrollment usable and drops this device's earlier enrollments for the
    /// same user with the same device id (those the server replaced when it activated this one:
    /// the same device key). Nothing changes unless the result is saved.
    async fn activate(&self, id: &EnrollmentId) -> Result<(), CoreError> {
        let replaced = {
            let mut state = self.state.lock().await;
            let Some(target) = state
                .enrollments
                .iter()
                .find(|e| &e.enrollment_id == id)
                .cloned()
            else {
                return Err(CoreError::EnrollmentNotFound);
            };
            let mut next = state.clone();
            let replaced = take_replaced(&mut next, &target);
            for e in next.enrollments.iter_mut() {
                if &e.enrollment_id == id {
                    e.pending_verification = false;
                }
            }
            next.prune_enrollment_otp();
            self.store.save(&next)?;
            *state = next;
            replaced
        };
        delete_keys(self.key_store.as_ref(), &replaced);
        tracing::info!(enrollment_id = %id, "verified by the primary device");
        Ok(())
    }

    /// Unpairs: tells the server (a signed call), then deletes the enrollment and its keys. If
    /// the server no longer knows the enrollment it is removed all the same; if the server cannot
    /// be reached nothing is removed (see [`Authenticator::forget_enrollment`]).
    pub async fn remove_enrollment(&self, id: &EnrollmentId) -> Result<(), CoreError> {
        let result = self.enrollment_call(id, reqwest::Method::DELETE).await;
        match result {
            Ok(_) => {}
            Err(CoreError::Server {
                code: ErrorCode::Unauthorized | ErrorCode::DeviceNotFound | ErrorCode::NotFound,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
        self.forget_enrollment(id).await
    }

    /// Registers a new push token (or another provider, or none) for an enrollment, in a call
    /// signed with its possession key: for when FCM or APNs issues the app a fresh token. A
    /// server that had marked the old token stale resumes pushing.
    ///
    /// `AuthenticatorConfig::push` is what new pairings register; an app whose token changed
    /// calls this for each of its [`Authenticator::enrollments`].
    pub async fn update_push_token(
        &self,
        id: &EnrollmentId,
        push: &PushRegistration,
    ) -> Result<(), CoreError> {
        let enrollment = self.stored_enrollment(id).await?;
        let signer =
            KeyStoreSigner::new(Arc::clone(&self.key_store), &enrollment.possession_alias)?;
        let path = format!("/v1/device/enrollments/{id}/push");
        let body = serde_json::to_vec(&UpdatePushRequest { push: push.clone() }).map_err(|_| {
            CoreError::InvalidInput("the push registration cannot be encoded".into())
        })?;
        let mut call = DeviceCall::new(reqwest::Method::PUT, &path);
        call.body = Some(body);
        self.signed_call(&enrollment.server, call, id, &signer)
            .await?;
        Ok(())
    }

    /// Seamless device authorization: signs, with the enrollment's possession key and no user
    /// interaction, an authorization of the server's flow whose `authorization_nonce` is
    /// `flow_nonce`. The app hands the result to its web view or backend, which passes it to
    /// the flow's `authenticate` action. It is bound to the flow, lives 60 seconds and is
    /// accepted once.
    pub async fn create_authorization_payload(
        &self,
        id: &EnrollmentId,
        flow_nonce: &str,
    ) -> Result<String, CoreError> {
        if flow_nonce.is_empty() || flow_nonce.len() > 128 {
            return Err(CoreError::InvalidInput(
                "the flow nonce is malformed".into(),
            ));
        }
        let enrollment = self.stored_enrollment(id).await?;
        let issued_at = tessera_protocol::time::now();
        let authorization = DeviceAuthorization {
            v: tessera_protocol::PROTOCOL_VERSION,
            audience: enrollment.server.clone(),
            enrollment_id: enrollment.enrollment_id.clone(),
            user_id: enrollment.user_id.clone(),
            flow_nonce: flow_nonce.to_string(),
            jti: tessera_protocol::pairing::DeviceRegistration::new_nonce(),
            issued_at,
            expires_at: issued_at + AUTHORIZATION_LIFETIME_SECONDS,
        };
        let signer =
            KeyStoreSigner::new(Arc::clone(&self.key_store), &enrollment.possession_alias)?;
        envelope::sign(MessageType::DeviceAuthorization, &authorization, &signer)
            .map_err(|e| CoreError::KeyStore(e.to_string()))
    }

    /// Deletes an enrollment and its keys on this device only, without telling the server.
    pub async fn forget_enrollment(&self, id: &EnrollmentId) -> Result<(), CoreError> {
        let removed = {
            let mut state = self.state.lock().await;
            let before = state.enrollments.len();
            let mut aliases = Vec::new();
            state.enrollments.retain(|e| {
                if &e.enrollment_id == id {
                    aliases.push(e.possession_alias.clone());
                    aliases.push(e.user_verification_alias.clone());
                    false
                } else {
                    true
                }
            });
            if state.enrollments.len() == before {
                return Err(CoreError::EnrollmentNotFound);
            }
            state.prune_enrollment_otp();
            self.store.save(&state)?;
            aliases
        };
        delete_keys(self.key_store.as_ref(), &removed);
        Ok(())
    }

    /// A call on `/v1/device/enrollments/{id}`, signed with that enrollment's possession key.
    async fn enrollment_call(
        &self,
        id: &EnrollmentId,
        method: reqwest::Method,
    ) -> Result<Vec<u8>, CoreError> {
        let enrollment = self.stored_enrollment(id).await?;
        let signer =
            KeyStoreSigner::new(Arc::clone(&self.key_store), &enrollment.possession_alias)?;
        let path = format!("/v1/device/enrollments/{id}");
        self.signed_call(
            &enrollment.server,
            DeviceCall::new(method, &path),
            id,
            &signer,
        )
        .await
    }

    /// A device-signed call. When the answer announces a newer server key set than the one
    /// pinned for that server, the pins are refreshed along the server's key set chain before
    /// returning (a chain that does not verify is logged and changes nothing: the old pins stay).
    async fn signed_call(
        &self,
        server: &ServerUrl,
        call: DeviceCall<'_>,
        enrollment_id: &EnrollmentId,
        signer: &(dyn envelope::EnvelopeSigner + Sync),
    ) -> Result<Vec<u8>, CoreError> {
        let reply = self
            .transport
            .device_call(server, call, enrollment_id, signer)
            .await?;
        if let Some(announced) = reply.key_set_sequence {
            let pinned = self
                .state
                .lock()
                .await
                .pinned_server(server)
                .map(|s| s.sequence);
            if pinned.is_some_and(|p| announced > p)
                && let Err(e) = self.refresh_pins(server).await
            {
                tracing::warn!(error = %e, %server, "the server's new key set was not accepted");
            }
        }
        Ok(reply.body)
    }

    /// Fetches the server's key set chain and follows it from the pinned keys
    /// ([`tessera_protocol::key_set::advance`]): each newer set must be signed by a key trusted
    /// at that point, and none by a revoked key. `true` if the pins moved on.
    async fn refresh_pins(&self, server: &ServerUrl) -> Result<bool, CoreError> {
        let published: ServerKeysResponse =
            self.transport.get_json(server, "/v1/server-keys").await?;
        if &published.issuer != server {
            return Err(CoreError::ReplyMismatch("key set issued by another server"));
        }
        let trusted = self
            .state
            .lock()
            .await
            .pinned_server(server)
            .map(crate::state::PinnedServer::trusted)
            .ok_or(CoreError::NotPairedWithServer)?;
        let chain = if published.key_set_chain.is_empty() {
            vec![published.signed_key_set]
        } else {
            published.key_set_chain
        };
        let advanced =
            tessera_protocol::key_set::advance(&trusted, server, &chain).map_err(|e| {
                tracing::warn!(error = %e, %server, "refused the server's key set chain");
                CoreError::UntrustedServerKey
            })?;
        let mut state = self.state.lock().await;
        let mut next = state.clone();
        if !next.advance_pins(server, advanced, now()) {
            return Ok(false);
        }
        self.store.save(&next)?;
        *state = next;
        tracing::info!(%server, "server keys refreshed along the key set chain");
        Ok(true)
    }

    /// Refreshes the keys pinned for `server` (a paired server's URL) along the key set chain it
    /// publishes, as every signed exchange that announces a newer set does by itself. Errors:
    /// [`CoreError::UntrustedServerKey`] if the chain does not lead from the pinned keys to the
    /// server's current set (a set signed by an unknown or revoked key), so nothing changed;
    /// [`CoreError::NotPairedWithServer`].
    pub async fn refresh_server_keys(&self, server: &str) -> Result<(), CoreError> {
        let server =
            ServerUrl::parse(server).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        self.transport.check_server(&server)?;
        self.refresh_pins(&server).await.map(|_| ())
    }

    /// The key ids this device trusts for `server` and the sequence of the key set they come
    /// from (0: as pinned at pairing); `None` if it is not paired with that server.
    pub async fn pinned_server_keys(&self, server: &str) -> Option<(Vec<String>, u64)> {
        let server = ServerUrl::parse(server).ok()?;
        let state = self.state.lock().await;
        let pinned = state.pinned_server(&server)?;
        Some((
            pinned
                .keys
                .keys
                .iter()
                .filter_map(|k| k.kid().map(str::to_string))
                .collect(),
            pinned.sequence,
        ))
    }

    /// Signs an answer with the enrollment's user-verification key (usable only after
    /// biometrics or the device PIN) or, without user verification, its possession key.
    fn sign_answer<T: serde::Serialize>(
        &self,
        enrollment: &StoredEnrollment,
        with_user_verification: bool,
        message_type: MessageType,
        answer: &T,
    ) -> Result<String, CoreError> {
        let alias = if with_user_verification {
            &enrollment.user_verification_alias
        } else {
            &enrollment.possession_alias
        };
        let signer = KeyStoreSigner::new(Arc::clone(&self.key_store), alias)?;
        envelope::sign(message_type, answer, &signer)
            .map_err(|e| CoreError::KeyStore(e.to_string()))
    }

    /// The key-store alias of an enrollment's user-verification key: the key an approval with
    /// user verification is signed with. Platforms that authorize each signature with its own
    /// prompt (Android `BiometricPrompt.CryptoObject`) prepare the signature for this alias
    /// before prompting.
    pub async fn user_verification_key_alias(
        &self,
        enrollment: &EnrollmentId,
    ) -> Result<String, CoreError> {
        Ok(self
            .stored_enrollment(enrollment)
            .await?
            .user_verification_alias)
    }

    async fn stored_enrollment(&self, id: &EnrollmentId) -> Result<StoredEnrollment, CoreError> {
        self.state
            .lock()
            .await
            .enrollments
            .iter()
            .find(|e| &e.enrollment_id == id)
            .cloned()
            .ok_or(CoreError::EnrollmentNotFound)
    }

    /// Creates keys and a signed registration, records them as pending and saves. Called with
    /// the state lock held; on failure nothing is recorded and the keys are deleted.
    fn new_pending(
        &self,
        state: &mut DeviceState,
        server: &ServerUrl,
        mode: PendingMode,
    ) -> Result<PendingPairing, CoreError> {
        let mut id_bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id_bytes);
        let id: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let possession_alias = format!("tessera.{id}.possession");
        let user_verification_alias = format!("tessera.{id}.user-verification");
        let aliases = [possession_alias.clone(), user_verification_alias.clone()];
        let device_key = ensure_device_key(&self.key_store, &self.store, state)?;
        self.remember_device_id(&state.device_id);
        let built = create_registration(
            &self.key_store,
            &self.config,
            &device_key,
            server,
            &possession_alias,
            &user_verification_alias,
        );
        let signed = match built {
            Ok(s) => s,
            Err(e) => {
                delete_keys(self.key_store.as_ref(), &aliases);
                return Err(e);
            }
        };
        let pending = PendingPairing {
            id,
            server: server.clone(),
            mode,
            registration: signed.registration,
            user_verification_proof: signed.user_verification_proof,
            registration_digest: signed.digest,
            possession_alias,
            user_verification_alias,
            created_at: now(),
            device_id: Some(state.device_id.clone()),
            otp_transport_secret: Some(signed.otp_transport_secret.clone()),
        };
        state.pending.push(pending.clone());
        if let Err(e) = self.store.save(state) {
            state.pending.retain(|p| p.id != pending.id);
            delete_keys(self.key_store.as_ref(), &aliases);
            return Err(e);
        }
        Ok(pending)
    }

    /// Drops the stale pending pairings and deletes their keys, once that is saved.
    fn clean_pending(&self, state: &mut DeviceState) -> Result<(), CoreError> {
        let mut next = state.clone();
        let stale = next.take_expired_pending(now() - PENDING_TTL_SECONDS);
        if !stale.is_empty() {
            self.store.save(&next)?;
            *state = next;
            delete_keys(self.key_store.as_ref(), &stale);
        }
        Ok(())
    }

    /// Drops the pending pairing a refused `pair` call sent, unless another call is still
    /// sending it.
    async fn drop_pending_after(&self, in_flight: InFlight<'_>) -> Result<(), CoreError> {
        let aliases = {
            let mut state = self.state.lock().await;
            let id = in_flight.id.clone();
            if in_flight.leave() > 0 {
                return Ok(());
            }
            let Some(p) = state.pending.iter().find(|p| p.id == id).cloned() else {
                return Ok(());
            };
            let mut next = state.clone();
            next.pending.retain(|p| p.id != id);
            self.store.save(&next)?;
            *state = next;
            p.key_aliases()
        };
        delete_keys(self.key_store.as_ref(), &aliases);
        Ok(())
    }

    /// Fetches and checks the key set a server publishes (for relay pairing).
    async fn published_keys(&self, server: &ServerUrl) -> Result<JwkSet, CoreError> {
        let published: ServerKeysResponse =
            self.transport.get_json(server, "/v1/server-keys").await?;
        let signed = envelope::verify_with_set::<ServerKeySet>(
            &published.signed_key_set,
            MessageType::ServerKeySet,
            &published.keys,
        )
        .map_err(|_| CoreError::UntrustedServerKey)?;
        if &published.issuer != server || &signed.payload.issuer != server {
            return Err(CoreError::ReplyMismatch("key set issued by another server"));
        }
        Ok(signed.payload.keys)
    }

    /// Checks the reply and turns the pending pairing into an enrollment.
    async fn complete(
        &self,
        pending: &PendingPairing,
        server_payload: &str,
        completion: Completion,
    ) -> Result<Enrollment, CoreError> {
        let pinned = self
            .state
            .lock()
            .await
            .pinned_keys(&pending.server)
            .cloned();
        let published = match (&pinned, &completion) {
            (None, Completion::Relay) => Some(self.published_keys(&pending.server).await?),
            _ => None,
        };
        let trust = match (&pinned, &published) {
            (Some(keys), _) => ReplyTrust::Pinned(keys),
            (None, Some(keys)) => ReplyTrust::Published(keys),
            (None, None) => ReplyTrust::FirstUseDirect,
        };
        let device_id = pending
            .device_id
            .clone()
            .unwrap_or_else(|| self.device_id());
        let reply = match verify_pairing_reply(
            server_payload,
            &pending.server,
            &pending.registration_digest,
            &device_id,
            trust,
        ) {
            // Signed by a key not pinned yet: follow the server's key set chain, then retry.
            Err(CoreError::UntrustedServerKey)
                if pinned.is_some() && self.refresh_pins(&pending.server).await? =>
            {
                let keys = self
                    .state
                    .lock()
                    .await
                    .pinned_keys(&pending.server)
                    .cloned()
                    .ok_or(CoreError::UntrustedServerKey)?;
                verify_pairing_reply(
                    server_payload,
                    &pending.server,
                    &pending.registration_digest,
                    &device_id,
                    ReplyTrust::Pinned(&keys),
                )?
            }
            other => other?,
        };

        let (enrollment, replaced) = {
            let mut state = self.state.lock().await;
            if let Some(done) = state
                .enrollments
                .iter()
                .find(|e| e.enrollment_id == reply.enrollment_id)
            {
                // A concurrent retry of the same pairing completed first.
                return Ok(Enrollment::from(done));
            }
            if !state.pending.iter().any(|p| p.id == pending.id) {
                return Err(CoreError::UnknownPendingPairing);
            }
            // The next state is built on a copy and takes the place of the current one only once
            // saved: a step that fails leaves the state, and the replaced keys, as they were.
            let mut next = state.clone();
            next.pending.retain(|p| p.id != pending.id);
            let stored = StoredEnrollment {
                enrollment_id: reply.enrollment_id.clone(),
                server: pending.server.clone(),
                application: reply.application.clone(),
                user_id: reply.user_id.clone(),
                device_id: reply.device_id.clone(),
                paired_at: now(),
                possession_alias: pending.possession_alias.clone(),
                user_verification_alias: pending.user_verification_alias.clone(),
                pending_verification: reply.pending_verification,
                removed_at: None,
                app_attest_key_id: app_attest_key_id(&pending.registration),
            };
            // A pairing waiting for the primary device's approval replaces nothing yet: the
            // earlier enrollment may be the one that approves it.
            let replaced = if reply.pending_verification {
                Vec::new()
            } else {
                take_replaced(&mut next, &stored)
            };
            next.enrollments.push(stored.clone());
            if let Some(account) = provisioned_otp(pending, &reply)? {
                next.otp_accounts.retain(|a| {
                    !matches!(&a.source, OtpAccountSource::Enrollment { enrollment_id } if enrollment_id == &reply.enrollment_id)
                });
                next.otp_accounts.push(account);
            }
            next.prune_enrollment_otp();
            next.pin(&pending.server, reply.server_keys.clone(), now());
            self.store.save(&next)?;
            *state = next;
            (Enrollment::from(&stored), replaced)
        };
        delete_keys(self.key_store.as_ref(), &replaced);
        tracing::info!(
            enrollment_id = %enrollment.enrollment_id,
            server = %enrollment.server,
            "paired"
        );
        Ok(enrollment)
    }
}

/// What [`Authenticator::handle_push`] did with a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// A request to show to the user.
    Request(Box<IncomingRequest>),
    /// A silent verification, answered already; nothing to show.
    SilentVerificationAnswered {
        /// The request answered.
        request_id: AuthenticationId,
        /// The enrollment that answered.
        enrollment_id: EnrollmentId,
    },
    /// The push named a request that is no longer pending.
    NothingPending,
}

impl Authenticator {
    /// Pending requests of every enrollment, checked against the pinned server keys. Silent
    /// verifications are answered on the way and not returned.
    ///
    /// An enrollment the server no longer knows (one user of a shared device unpaired by the
    /// backend) does not hide the others' requests: it is marked removed
    /// ([`Enrollment::removed`]) and skipped, here and from then on.
    pub async fn pending_requests(&self) -> Result<Vec<IncomingRequest>, CoreError> {
        let mut out = Vec::new();
        // Bound first: a guard in the `for` expression would be held for the whole loop.
        let enrollments = self.state.lock().await.enrollments.clone();
        for enrollment in enrollments
            .iter()
            .filter(|e| !e.pending_verification && e.removed_at.is_none())
        {
            match self
                .fetch_requests(&enrollment.enrollment_id, Duration::ZERO)
                .await
            {
                Ok(requests) => out.extend(requests),
                Err(CoreError::EnrollmentRemoved) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Long-polls one enrollment's pending requests: returns as soon as there is one, or after
    /// `wait` (at most 30 seconds) with none. Silent verifications are answered on the way.
    /// [`CoreError::EnrollmentRemoved`] when the server no longer knows the enrollment (it is
    /// then marked removed): stop polling it.
    pub async fn wait_for_requests(
        &self,
        enrollment_id: &EnrollmentId,
        wait: Duration,
    ) -> Result<Vec<IncomingRequest>, CoreError> {
        self.fetch_requests(enrollment_id, wait.min(Duration::from_secs(30)))
            .await
    }

    /// One pending request of `enrollment_id` by its id (for a tapped notification), checked
    /// exactly as pulled requests are (pinned server key, enrollment, user, digest, expiry).
    /// Errors: [`CoreError::Server`] with `authentication_not_found` (unknown, or asked of
    /// another enrollment), `authentication_expired` or `already_answered`;
    /// [`CoreError::ReplyMismatch`] when the server hands back another request; a silent
    /// verification is answered on the way and then reads as `already_answered`.
    pub async fn request(
        &self,
        enrollment_id: &EnrollmentId,
        request_id: &AuthenticationId,
    ) -> Result<IncomingRequest, CoreError> {
        let enrollment = self.stored_enrollment(enrollment_id).await?;
        let signer =
            KeyStoreSigner::new(Arc::clone(&self.key_store), &enrollment.possession_alias)?;
        let path = format!("/v1/device/enrollments/{enrollment_id}/requests/{request_id}");
        let body = self
            .signed_call(
                &enrollment.server,
                DeviceCall::new(reqwest::Method::GET, &path),
                enrollment_id,
                &signer,
            )
            .await?;
        let pending: PendingRequests = serde_json::from_slice(&body)
            .map_err(|_| CoreError::InvalidServerResponse("unexpected pending request".into()))?;
        let [signed] = pending.requests.as_slice() else {
            return Err(CoreError::InvalidServerResponse(
                "expected exactly one request".into(),
            ));
        };
        let request = self.verify_incoming(&enrollment, signed).await?;
        if &request.request_id != request_id {
            return Err(CoreError::ReplyMismatch("the server sent another request"));
        }
        if request.kind == AuthenticationKind::Silent {
            self.answer(&request, Decision::Approve, None, Vec::new())
                .await?;
            return Err(CoreError::Server {
                code: ErrorCode::AlreadyAnswered,
                message: "a silent verification was answered by the SDK".into(),
            });
        }
        Ok(request)
    }

    /// Marks an enrollment removed by the server (or, `false`, present again) and saves.
    async fn mark_removed(&self, id: &EnrollmentId, removed: bool) -> Result<(), CoreError> {
        let mut state = self.state.lock().await;
        let Some(e) = state
            .enrollments
            .iter_mut()
            .find(|e| &e.enrollment_id == id)
        else {
            return Ok(());
        };
        let before = e.removed_at;
        e.removed_at = if removed {
            before.or_else(|| Some(now()))
        } else {
            None
        };
        if e.removed_at == before {
            return Ok(());
        }
        if let Err(err) = self.store.save(&state) {
            if let Some(e) = state
                .enrollments
                .iter_mut()
                .find(|e| &e.enrollment_id == id)
            {
                e.removed_at = before;
            }
            return Err(err);
        }
        if removed {
            tracing::info!(enrollment_id = %id, "the server no longer knows this enrollment");
        }
        Ok(())
    }

    async fn fetch_requests(
        &self,
        enrollment_id: &EnrollmentId,
        wait: Duration,
    ) -> Result<Vec<IncomingRequest>, CoreError> {
        let enrollment = self.stored_enrollment(enrollment_id).await?;
        let signer =
            KeyStoreSigner::new(Arc::clone(&self.key_store), &enrollment.possession_alias)?;
        let path = format!("/v1/device/enrollments/{enrollment_id}/requests");
        let query = format!("wait={}", wait.as_secs());
        let mut call = DeviceCall::new(reqwest::Method::GET, &path);
        call.query = Some(&query);
        call.timeout = Some(wait + Duration::from_secs(15));
        let body = match self
            .signed_call(&enrollment.server, call, enrollment_id, &signer)
            .await
        {
            Ok(body) => body,
            Err(CoreError::Server {
                code: ErrorCode::Unauthorized | ErrorCode::DeviceNotFound,
                ..
            }) => {
                self.mark_removed(enrollment_id, true).await?;
                return Err(CoreError::EnrollmentRemoved);
            }
            Err(e) => return Err(e),
        };
        if enrollment.removed_at.is_some() {
            // The server answers for it again: it was not removed after all.
            self.mark_removed(enrollment_id, false).await?;
        }
        let pending: PendingRequests = serde_json::from_slice(&body)
            .map_err(|_| CoreError::InvalidServerResponse("unexpected pending requests".into()))?;
        let mut out = Vec::new();
        for signed in pending.requests {
            let request = self.verify_incoming(&enrollment, &signed).await?;
            if request.kind == AuthenticationKind::Silent {
                self.answer(&request, Decision::Approve, None, Vec::new())
                    .await?;
            } else {
                out.push(request);
            }
        }
        Ok(out)
    }

    /// Handles a push payload: the signed request itself (a compact JWS, or JSON
    /// `{"request": "<jws>"}`), or just its id (`{"request_id": "aut_…", "enrollment_id": "enr_…"}`),
    /// in which case the request is pulled. An FCM message's `data` map is passed as its JSON;
    /// an APNs payload may be passed whole (its `tessera` member is used). Silent verifications
    /// are answered here and reported as [`PushOutcome::SilentVerificationAnswered`].
    pub async fn handle_push(&self, payload: &str) -> Result<PushOutcome, CoreError> {
        let text = payload.trim();
        let (signed, hint) = if text.starts_with('{') {
            let value: serde_json::Value = serde_json::from_str(text)
                .map_err(|_| CoreError::InvalidInput("the push payload is not JSON".into()))?;
            // A whole APNs payload: `{"aps": {…}, "tessera": {…}}`.
            let value = match value.get("tessera") {
                Some(inner) if inner.is_object() => inner.clone(),
                _ => value,
            };
            let signed = value
                .get("request")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            let hint = match (
                value.get("request_id").and_then(|v| v.as_str()),
                value.get("enrollment_id").and_then(|v| v.as_str()),
            ) {
                (Some(r), Some(e)) => Some((
                    r.parse::<AuthenticationId>()
                        .map_err(|_| CoreError::InvalidInput("malformed request id".into()))?,
                    e.parse::<EnrollmentId>()
                        .map_err(|_| CoreError::InvalidInput("malformed enrollment id".into()))?,
                )),
                _ => None,
            };
            (signed, hint)
        } else {
            (Some(text.to_string()), None)
        };
        let request = match (signed, hint) {
            (Some(signed), _) => {
                let claimed: AuthenticationRequest = envelope::unverified_payload(&signed)
                    .map_err(|_| {
                        CoreError::InvalidInput("the push payload is not a request".into())
                    })?;
                let enrollment = self.stored_enrollment(&claimed.enrollment_id).await?;
                self.verify_incoming(&enrollment, &signed).await?
            }
            (None, Some((request_id, enrollment_id))) => {
                let enrollment = self.stored_enrollment(&enrollment_id).await?;
                let signer =
                    KeyStoreSigner::new(Arc::clone(&self.key_store), &enrollment.possession_alias)?;
                let path = format!("/v1/device/enrollments/{enrollment_id}/requests");
                let body = self
                    .signed_call(
                        &enrollment.server,
                        DeviceCall::new(reqwest::Method::GET, &path),
                        &enrollment_id,
                        &signer,
                    )
                    .await?;
                let pending: PendingRequests = serde_json::from_slice(&body).map_err(|_| {
                    CoreError::InvalidServerResponse("unexpected pending requests".into())
                })?;
                let mut found = None;
                for signed in pending.requests {
                    let r = self.verify_incoming(&enrollment, &signed).await?;
                    if r.request_id == request_id {
                        found = Some(r);
                    }
                }
                match found {
                    Some(r) => r,
                    None => return Ok(PushOutcome::NothingPending),
                }
            }
            (None, None) => {
                return Err(CoreError::InvalidInput(
                    "the push payload names no request".into(),
                ));
            }
        };
        if request.kind == AuthenticationKind::Silent {
            self.answer(&request, Decision::Approve, None, Vec::new())
                .await?;
            return Ok(PushOutcome::SilentVerificationAnswered {
                request_id: request.request_id,
                enrollment_id: request.enrollment_id,
            });
        }
        Ok(PushOutcome::Request(Box::new(request)))
    }

    /// Approves a request. `amr` is what the app reports of how the user was verified (RFC 8176:
    /// `fpt`, `face`, `pin`, …; empty for a plain swipe). With a user-verification method, or
    /// when the request requires one, the answer is signed with the user-verification key (on
    /// platforms usable only after biometrics or the PIN); otherwise with the possession key.
    pub async fn approve(
        &self,
        request: &IncomingRequest,
        amr: Vec<String>,
        selected_number: Option<u32>,
    ) -> Result<ResponseRecorded, CoreError> {
        self.answer(request, Decision::Approve, selected_number, amr)
            .await
    }

    /// Denies a request; `report_fraud` says the user did not start it.
    pub async fn deny(
        &self,
        request: &IncomingRequest,
        report_fraud: bool,
    ) -> Result<ResponseRecorded, CoreError> {
        let decision = if report_fraud {
            Decision::ReportFraud
        } else {
            Decision::Deny
        };
        self.answer(request, decision, None, Vec::new()).await
    }

    async fn verify_incoming(
        &self,
        enrollment: &StoredEnrollment,
        signed: &str,
    ) -> Result<IncomingRequest, CoreError> {
        let verify = |pinned: &JwkSet| {
            verify_request(
                signed,
                &enrollment.server,
                pinned,
                &enrollment.enrollment_id,
                &enrollment.user_id,
                &enrollment.application,
                now(),
            )
        };
        let pinned = self
            .state
            .lock()
            .await
            .pinned_keys(&enrollment.server)
            .cloned()
            .ok_or(CoreError::UntrustedServerKey)?;
        match verify(&pinned) {
            // Signed by a key not pinned (yet): the server may have rotated. Follow its key set
            // chain and try once more with what that leads to.
            Err(CoreError::UntrustedServerKey) => {
                if !self.refresh_pins(&enrollment.server).await? {
                    return Err(CoreError::UntrustedServerKey);
                }
                let pinned = self
                    .state
                    .lock()
                    .await
                    .pinned_keys(&enrollment.server)
                    .cloned()
                    .ok_or(CoreError::UntrustedServerKey)?;
                verify(&pinned)
            }
            other => other,
        }
    }

    async fn answer(
        &self,
        request: &IncomingRequest,
        decision: Decision,
        selected_number: Option<u32>,
        amr: Vec<String>,
    ) -> Result<ResponseRecorded, CoreError> {
        if now() >= request.expires_at {
            return Err(CoreError::RequestExpired);
        }
        let enrollment = self.stored_enrollment(&request.enrollment_id).await?;
        let posture = self.posture();
        let mut response = response_for(
            request,
            decision,
            selected_number,
            amr,
            posture.signals,
            posture.location,
            now(),
        )?;
        response.device = Some(posture.versions);
        self.assert_app(&enrollment, &mut response)?;
        let with_user_verification = decision == Decision::Approve
            && (request.require_user_verification || verifies_user(&response.amr));
        let signed = self.sign_answer(
            &enrollment,
            with_user_verification,
            MessageType::AuthenticationResponse,
            &response,
        )?;
        self.transport
            .post_json(
                &enrollment.server,
                &format!("/v1/device/authentications/{}/response", request.request_id),
                &SubmitResponse { response: signed },
            )
            .await
    }
}

impl Authenticator {
    /// QR login, step 1: checks scanned text (`tessera://qr?server=…&token=…`), claims the
    /// session for this device (a call signed with one of its enrollments on that server, listing
    /// them all) and returns the server-signed context: the application, where the sign-in comes
    /// from, and which of this device's users may answer. Errors: malformed text
    /// ([`CoreError::InvalidInput`]), a server this device is not paired with
    /// ([`CoreError::NotPairedWithServer`]), an expired, renewed or already-scanned code (the
    /// server's `qr_session_expired`, `qr_session_not_found`, `qr_already_scanned`), no user of
    /// this device allowed (`no_eligible_user`).
    pub async fn authenticate_with_qr(&self, scanned: &str) -> Result<QrAuthentication, CoreError> {
        let uri = QrUri::parse(scanned).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        self.transport.check_server(&uri.server)?;
        let (held, has_pins) = {
            let state = self.state.lock().await;
            let held: Vec<StoredEnrollment> = state
                .enrollments
                .iter()
                .filter(|e| {
                    e.server == uri.server && !e.pending_verification && e.removed_at.is_none()
                })
                .cloned()
                .collect();
            let has_pins = state.pinned_keys(&uri.server).is_some();
            (held, has_pins)
        };
        // The server offers the caller's device's users: call as an enrollment of this
        // installation's current identity (a device paired before device keys existed may
        // still hold enrollments under its earlier id).
        let current = self.device_id();
        let caller = held
            .iter()
            .find(|e| e.device_id == current)
            .or_else(|| held.first());
        let (Some(caller), true) = (caller, has_pins) else {
            return Err(CoreError::NotPairedWithServer);
        };
        let claim = ClaimQrSession {
            token: uri.token.expose().to_string(),
            enrollment_ids: held.iter().map(|e| e.enrollment_id.clone()).collect(),
        };
        let body = serde_json::to_vec(&claim)
            .map_err(|_| CoreError::InvalidInput("the claim cannot be encoded".into()))?;
        let signer = KeyStoreSigner::new(Arc::clone(&self.key_store), &caller.possession_alias)?;
        let mut call = DeviceCall::new(reqwest::Method::POST, "/v1/device/qr-sessions/claim");
        call.body = Some(body);
        let answer = self
            .signed_call(&uri.server, call, &caller.enrollment_id, &signer)
            .await?;
        let claimed: QrSessionClaimed = serde_json::from_slice(&answer)
            .map_err(|_| CoreError::InvalidServerResponse("unexpected QR claim answer".into()))?;
        let pairs: Vec<(EnrollmentId, UserId)> = held
            .iter()
            .map(|e| (e.enrollment_id.clone(), e.user_id.clone()))
            .collect();
        let verify = |pinned: &JwkSet| {
            verify_qr_context(
                &claimed.context,
                &uri.server,
                pinned,
                &caller.device_id,
                &pairs,
                now(),
            )
        };
        // The pins as they stand after the call: its answer may have announced a newer key set,
        // which `signed_call` followed.
        match verify(&self.current_pins(&uri.server).await?) {
            // Signed by a key not pinned (yet): the server may have rotated. Follow its key set
            // chain and try once more with what that leads to.
            Err(CoreError::UntrustedServerKey) => {
                if !self.refresh_pins(&uri.server).await? {
                    return Err(CoreError::UntrustedServerKey);
                }
                verify(&self.current_pins(&uri.server).await?)
            }
            other => other,
        }
    }

    /// The server keys pinned for `server` now (after any refresh along its key set chain).
    async fn current_pins(&self, server: &ServerUrl) -> Result<JwkSet, CoreError> {
        self.state
            .lock()
            .await
            .pinned_keys(server)
            .cloned()
            .ok_or(CoreError::UntrustedServerKey)
    }

    /// QR login, step 2: `user` (one of [`QrAuthentication::users`]) approves. `amr` as for
    /// [`Authenticator::approve`]: with a user-verification method the answer is signed with the
    /// user-verification key. If the application asks for extra verification, the silent request
    /// that follows is answered before this returns; if it asks for the user's approval, that
    /// request arrives like any other (push or [`Authenticator::pending_requests`]).
    pub async fn approve_qr(
        &self,
        qr: &QrAuthentication,
        user: &UserId,
        amr: Vec<String>,
    ) -> Result<QrAnswerRecorded, CoreError> {
        let recorded = self.answer_qr(qr, user, Decision::Approve, amr).await?;
        if recorded.state == QrSessionState::Verifying
            && let Some(chosen) = qr.users.iter().find(|u| &u.user_id == user)
        {
            // Silent follow-ups are answered on the way; others are left for the app to show.
            self.fetch_requests(&chosen.enrollment_id, Duration::ZERO)
                .await?;
        }
        Ok(recorded)
    }

    /// QR login, step 2: `user` denies; `report_fraud` says the user did not start this sign-in.
    pub async fn deny_qr(
        &self,
        qr: &QrAuthentication,
        user: &UserId,
        report_fraud: bool,
    ) -> Result<QrAnswerRecorded, CoreError> {
        let decision = if report_fraud {
            Decision::ReportFraud
        } else {
            Decision::Deny
        };
        self.answer_qr(qr, user, decision, Vec::new()).await
    }

    async fn answer_qr(
        &self,
        qr: &QrAuthentication,
        user: &UserId,
        decision: Decision,
        amr: Vec<String>,
    ) -> Result<QrAnswerRecorded, CoreError> {
        let chosen = qr
            .users
            .iter()
            .find(|u| &u.user_id == user)
            .ok_or_else(|| {
                CoreError::InvalidInput("that user may not answer this QR code".into())
            })?;
        if now() >= qr.expires_at {
            return Err(CoreError::RequestExpired);
        }
        let enrollment = self.stored_enrollment(&chosen.enrollment_id).await?;
        let posture = self.posture();
        let mut response = qr_response_for(
            qr,
            &chosen.enrollment_id,
            decision,
            amr,
            posture.signals,
            posture.location,
            now(),
        );
        response.device = Some(posture.versions);
        self.assert_app_qr(&enrollment, &mut response)?;
        let with_user_verification = decision == Decision::Approve && verifies_user(&response.amr);
        let signed = self.sign_answer(
            &enrollment,
            with_user_verification,
            MessageType::QrResponse,
            &response,
        )?;
        self.transport
            .post_json(
                &qr.server,
                &format!("/v1/device/qr-sessions/{}/response", qr.session_id),
                &SubmitQrResponse { response: signed },
            )
            .await
    }
}

/// Offline one-time passcodes for third-party accounts (see [`crate::OtpKey`] for the URI rules).
///
/// Accounts live in the encrypted device state, seeds included; nothing here touches the
/// network. Seeds provisioned by a Tessera server at pairing will arrive later inside the signed
/// pairing reply; today every account is imported by the user.
impl Authenticator {
    /// Imports a third-party account from its `otpauth://` key URI (the text of the service's
    /// "set up an authenticator app" QR code) and stores it, seed included, in the encrypted
    /// state.
    ///
    /// An account with the same issuer and account name is refused with
    /// [`CoreError::OtpAccountExists`] rather than replaced, so that scanning a code can never
    /// silently overwrite a working account's secret; to replace one (after resetting two-factor
    /// authentication at the service), [`Authenticator::remove_otp_account`] it first. A refused
    /// URI is [`CoreError::InvalidOtpUri`] with the reason, never the secret.
    pub async fn import_otp_account(&self, uri: &str) -> Result<OtpAccount, CoreError> {
        let key = OtpKey::from_uri(uri)?;
        let mut state = self.state.lock().await;
        if state
            .otp_accounts
            .iter()
            .any(|a| a.key.issuer == key.issuer && a.key.account_name == key.account_name)
        {
            return Err(CoreError::OtpAccountExists);
        }
        let stored = StoredOtpAccount {
            id: OtpAccountId::generate(),
            key,
            source: OtpAccountSource::Imported,
            added_at: now(),
        };
        let account = OtpAccount::from(&stored);
        state.otp_accounts.push(stored);
        if let Err(e) = self.store.save(&state) {
            state.otp_accounts.retain(|a| a.id != account.id);
            return Err(e);
        }
        tracing::info!(otp_account = %account.id, "OTP account imported");
        Ok(account)
    }

    /// The OTP accounts on this device, in the order they were added. No seeds.
    pub async fn otp_accounts(&self) -> Vec<OtpAccount> {
        self.state
            .lock()
            .await
            .otp_accounts
            .iter()
            .map(OtpAccount::from)
            .collect()
    }

    /// Deletes an OTP account and its seed from this device.
    pub async fn remove_otp_account(&self, id: &OtpAccountId) -> Result<(), CoreError> {
        let mut state = self.state.lock().await;
        let Some(index) = state.otp_accounts.iter().position(|a| &a.id == id) else {
            return Err(CoreError::OtpAccountNotFound);
        };
        let removed = state.otp_accounts.remove(index);
        if let Err(e) = self.store.save(&state) {
            state.otp_accounts.insert(index, removed);
            return Err(e);
        }
        tracing::info!(otp_account = %id, "OTP account removed");
        Ok(())
    }

    /// The account's current code: for TOTP the code of the current period and the seconds
    /// left in it; for HOTP the next code (see [`Authenticator::one_time_passcode_at`]).
    pub async fn one_time_passcode(&self, id: &OtpAccountId) -> Result<OneTimePasscode, CoreError> {
        self.one_time_passcode_at(id, now()).await
    }

    /// As [`Authenticator::one_time_passcode`], with TOTP codes computed at `unix_time`
    /// (seconds) instead of the device clock: for tests, or to show the next period's code.
    ///
    /// HOTP ignores the time. Each HOTP code uses the stored counter value, and the incremented
    /// counter is written to the encrypted state *before* the code is returned: if the write
    /// fails no code is returned, and a crash after it skips a counter value rather than ever
    /// using one twice.
    pub async fn one_time_passcode_at(
        &self,
        id: &OtpAccountId,
        unix_time: UnixSeconds,
    ) -> Result<OneTimePasscode, CoreError> {
        let mut state = self.state.lock().await;
        let account = state
            .otp_accounts
            .iter_mut()
            .find(|a| &a.id == id)
            .ok_or(CoreError::OtpAccountNotFound)?;
        let key = &mut account.key;
        match key.kind {
            OtpKind::Totp { period } => {
                totp(&key.seed, key.algorithm, key.digits, period, unix_time)
            }
            OtpKind::Hotp { counter } => {
                let next = counter.checked_add(1).ok_or_else(|| {
                    CoreError::InvalidInput("the HOTP counter is exhausted".into())
                })?;
                let code = hotp(&key.seed, key.algorithm, key.digits, counter)?;
                // The in-memory counter moves on even if the write fails: a value is never
                // used twice, at worst one is skipped.
                key.kind = OtpKind::Hotp { counter: next };
                self.store.save(&state)?;
                Ok(OneTimePasscode {
                    code,
                    valid_for: None,
                })
            }
        }
    }
}

/// Whether the app reported a method that verifies the user (biometrics, PIN, password).
/// The App Attest key id a registration (a signed JWS this device made) carries, if its pairing
/// was App Attested.
fn app_attest_key_id(registration: &str) -> Option<String> {
    match envelope::unverified_payload::<DeviceRegistration>(registration)
        .ok()?
        .attestation?
    {
        RegistrationAttestation::AppleAppAttest { key_id, .. } => Some(key_id),
        RegistrationAttestation::AndroidKey { .. } => None,
    }
}

fn verifies_user(amr: &[String]) -> bool {
    amr.iter()
        .any(|m| USER_VERIFICATION_AMR.contains(&m.as_str()))
}

/// The enrollment's OTP account, if the reply carries a seed sealed to this pairing's transport
/// key. A seed that does not open is refused (the reply is signed: it cannot be a transmission
/// error).
fn provisioned_otp(
    pending: &PendingPairing,
    reply: &PairingReply,
) -> Result<Option<StoredOtpAccount>, CoreError> {
    let (Some(sealed), Some(secret)) = (&reply.otp, &pending.otp_transport_secret) else {
        return Ok(None);
    };
    use base64::Engine;
    let bytes = zeroize::Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(secret.expose())
            .map_err(|_| CoreError::StateCorrupted)?,
    );
    let transport = p256::SecretKey::from_slice(&bytes).map_err(|_| CoreError::StateCorrupted)?;
    let seed = tessera_protocol::otp::open(sealed, &transport, &reply.enrollment_id)
        .map_err(|_| CoreError::ReplyMismatch("the provisioned OTP seed does not open"))?;
    let digits = u8::try_from(sealed.digits)
        .ok()
        .and_then(OtpDigits::new)
        .ok_or(CoreError::ReplyMismatch("unsupported OTP digits"))?;
    let seed = OtpSeed::new(seed.to_vec())
        .map_err(|_| CoreError::ReplyMismatch("the provisioned OTP seed is too short"))?;
    Ok(Some(StoredOtpAccount {
        id: OtpAccountId::generate(),
        key: OtpKey {
            issuer: Some(reply.application.name.clone()),
            account_name: reply.user_id.as_str().to_string(),
            algorithm: OtpAlgorithm::Sha1,
            digits,
            kind: OtpKind::Totp {
                period: sealed.period,
            },
            seed,
        },
        source: OtpAccountSource::Enrollment {
            enrollment_id: reply.enrollment_id.clone(),
        },
        added_at: now(),
    }))
}

fn parse_pairing_input(
    code_or_uri: &str,
    server: Option<&str>,
) -> Result<(ServerUrl, PairingCode), CoreError> {
    let given = server
        .map(ServerUrl::parse)
        .transpose()
        .map_err(|e| CoreError::InvalidInput(e.to_string()))?;
    let text = code_or_uri.trim();
    if text.contains("://") {
        let uri = PairingUri::parse(text).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        if given.as_ref().is_some_and(|g| g != &uri.server) {
            return Err(CoreError::ServerMismatch);
        }
        Ok((uri.server, uri.code))
    } else {
        let code = PairingCode::parse(text).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        let server = given.ok_or_else(|| {
            CoreError::InvalidInput("a pairing code needs the server's URL".into())
        })?;
        Ok((server, code))
    }
}

/// The key-store alias of the installation's device key.
const DEVICE_KEY_ALIAS: &str = "tessera.device-key";

/// The installation's device key, created (with the device id derived from it, saved in the
/// state) if the state has none yet or the key store lost it. Called with the state lock held
/// (or before the state is shared); on a failed save the state is left as it was.
fn ensure_device_key(
    key_store: &Arc<dyn KeyStore>,
    store: &StateStore,
    state: &mut DeviceState,
) -> Result<KeyStoreSigner, CoreError> {
    if let Some(alias) = &state.device_key_alias
        && key_store.public_key(alias)?.is_some()
    {
        let signer = KeyStoreSigner::new(Arc::clone(key_store), alias)?;
        let id = DeviceId::of_device_key(signer.public_jwk());
        if id != state.device_id {
            // The id follows the key: state that says otherwise is repaired, not trusted.
            let previous = std::mem::replace(&mut state.device_id, id);
            if let Err(e) = store.save(state) {
                state.device_id = previous;
                return Err(e);
            }
        }
        return Ok(signer);
    }
    key_store.generate_signing_key(DEVICE_KEY_ALIAS, crate::key_store::KeyPurpose::Possession)?;
    let signer = KeyStoreSigner::new(Arc::clone(key_store), DEVICE_KEY_ALIAS)?;
    let previous = (
        std::mem::replace(
            &mut state.device_id,
            DeviceId::of_device_key(signer.public_jwk()),
        ),
        state.device_key_alias.replace(DEVICE_KEY_ALIAS.to_string()),
    );
    if let Err(e) = store.save(state) {
        (state.device_id, state.device_key_alias) = previous;
        return Err(e);
    }
    tracing::info!(device_id = %state.device_id, "device key created");
    Ok(signer)
}

/// Removes from `state` the earlier enrollments that `new` replaces and returns their key
/// aliases. It replaces what the server replaces: an enrollment of the same server, application
/// and user with the same device id, that is the same device key (an enrollment paired before
/// device keys existed, or under a device key the key store lost, has another id and stays, as
/// it stays on the server).
fn take_replaced(state: &mut DeviceState, new: &StoredEnrollment) -> Vec<String> {
    let mut replaced = Vec::new();
    state.enrollments.retain(|e| {
        let same = e.enrollment_id != new.enrollment_id
            && e.server == new.server
            && e.application.id == new.application.id
            && e.user_id == new.user_id
            && e.device_id == new.device_id;
        if same {
            replaced.push(e.possession_alias.clone());
            replaced.push(e.user_verification_alias.clone());
        }
        !same
    });
    replaced
}

/// Deletes keys, logging (without the alias' secrets — aliases are not secret) what fails.
fn delete_keys(key_store: &dyn KeyStore, aliases: &[String]) {
    for alias in aliases {
        if let Err(e) = key_store.delete_key(alias) {
            tracing::warn!(%alias, error = %e, "could not delete a key");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_pairing_counts_the_sends_in_flight_and_a_cancelled_one_gives_its_claim_back() {
        let calls = InFlightCalls::default();
        let first = InFlight::enter(&calls, "p1");
        let second = InFlight::enter(&calls, "p1");
        let other = InFlight::enter(&calls, "p2");
        // The second send is cancelled (its future dropped): its claim goes with it.
        drop(second);
        // The first is refused: no other send of p1 is left, so it may drop the pending pairing.
        assert_eq!(first.leave(), 0);
        assert_eq!(other.leave(), 0);
        assert!(calls.lock().unwrap().is_empty(), "nothing left behind");

        // A refusal while another send still waits leaves the pending pairing to that one.
        let waiting = InFlight::enter(&calls, "p3");
        let refused = InFlight::enter(&calls, "p3");
        assert_eq!(refused.leave(), 1);
        drop(waiting);
        assert!(calls.lock().unwrap().is_empty());
    }

    #[test]
    fn pairing_input_is_parsed_strictly() {
        let uri = "tessera://pair?server=https%3A%2F%2Fa.example&code=ABCD-EFGH-JKMN";
        let (server, code) = parse_pairing_input(uri, None).unwrap();
        assert_eq!(server.as_str(), "https://a.example");
        assert_eq!(code.normalized(), "ABCDEFGHJKMN");
        assert!(parse_pairing_input(uri, Some("https://a.example/")).is_ok());
        assert_eq!(
            parse_pairing_input(uri, Some("https://b.example")).unwrap_err(),
            CoreError::ServerMismatch
        );
        assert!(matches!(
            parse_pairing_input("ABCD-EFGH-JKMN", None).unwrap_err(),
            CoreError::InvalidInput(_)
        ));
        assert!(parse_pairing_input("abcd efgh jkmn", Some("https://a.example")).is_ok());
        let err = parse_pairing_input("tessera://pair?code=ABCD-EFGH-JKMN", None).unwrap_err();
        assert!(matches!(err, CoreError::InvalidInput(_)));
        // Errors never echo the code.
        let err = parse_pairing_input("QRST-VWXY-Z123Z", Some("https://a.example")).unwrap_err();
        assert!(!err.to_string().contains("QRST"));
    }
}

#[cfg(test)]
mod device_key_tests {
    use super::*;
    use crate::key_store::SoftwareKeyStore;
    use crate::storage::FileStorage;

    fn platform(dir: &std::path::Path) -> (Arc<dyn KeyStore>, Arc<dyn SecureStorage>) {
        (
            Arc::new(SoftwareKeyStore::open(dir.join("keys")).unwrap()),
            Arc::new(FileStorage::new(dir.join("state")).unwrap()),
        )
    }

    #[tokio::test]
    async fn a_new_device_has_its_device_key_and_keeps_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let (ks, storage) = platform(dir.path());
        let auth = Authenticator::open(AuthenticatorConfig::default(), ks.clone(), storage.clone())
            .await
            .unwrap();
        let id = auth.device_id();
        let public = ks
            .public_key(DEVICE_KEY_ALIAS)
            .unwrap()
            .expect("a device key");
        let jwk = tessera_protocol::jwk::PublicJwk::from_sec1_bytes(&public).unwrap();
        assert_eq!(id, DeviceId::of_device_key(&jwk));
        drop(auth);
        let again = Authenticator::open(AuthenticatorConfig::default(), ks, storage)
            .await
            .unwrap();
        assert_eq!(again.device_id(), id, "the id lasts");
        again
            .create_mobile_payload("https://auth.example.com")
            .await
            .unwrap();
        assert_eq!(again.device_id(), id, "pairing keeps it");
    }

    #[tokio::test]
    async fn state_from_before_device_keys_loads_and_gets_a_key_on_the_next_pairing() {
        let dir = tempfile::tempdir().unwrap();
        let (ks, storage) = platform(dir.path());
        // State as an earlier version wrote it: a random id, no device key, one enrollment.
        let legacy_id = DeviceId::generate();
        let old_enrollment = EnrollmentId::generate();
        {
            let (store, _) = StateStore::open(storage.clone(), ks.as_ref()).unwrap();
            let mut state = DeviceState::new();
            state.device_id = legacy_id.clone();
            state.enrollments.push(StoredEnrollment {
                enrollment_id: old_enrollment.clone(),
                server: ServerUrl::parse("https://auth.example.com").unwrap(),
                application: ApplicationInfo {
                    id: tessera_protocol::ids::ApplicationId::generate(),
                    name: "Bank".into(),
                },
                user_id: "alice".parse().unwrap(),
                device_id: legacy_id.clone(),
                paired_at: 1,
                possession_alias: "old.p".into(),
                user_verification_alias: "old.u".into(),
                pending_verification: false,
                removed_at: None,
                app_attest_key_id: None,
            });
            let mut value = serde_json::to_value(&state).unwrap();
            value.as_object_mut().unwrap().remove("device_key_alias");
            let state: DeviceState = serde_json::from_value(value).unwrap();
            store.save(&state).unwrap();
        }
        let auth = Authenticator::open(AuthenticatorConfig::default(), ks.clone(), storage)
            .await
            .unwrap();
        assert_eq!(auth.device_id(), legacy_id, "kept until the next pairing");
        assert!(ks.public_key(DEVICE_KEY_ALIAS).unwrap().is_none());

        let payload = auth
            .create_mobile_payload("https://auth.example.com")
            .await
            .unwrap();
        let new_id = auth.device_id();
        assert_ne!(new_id, legacy_id);
        let public = ks
            .public_key(DEVICE_KEY_ALIAS)
            .unwrap()
            .expect("a device key");
        let jwk = tessera_protocol::jwk::PublicJwk::from_sec1_bytes(&public).unwrap();
        assert_eq!(new_id, DeviceId::of_device_key(&jwk));
        // The registration names and proves the new identity.
        let mobile = MobilePayload::decode(&payload).unwrap();
        let registration: tessera_protocol::pairing::DeviceRegistration =
            envelope::unverified_payload(&mobile.registration).unwrap();
        assert_eq!(registration.device_id, new_id);
        assert_eq!(registration.check_device_key(), Ok(()));
        // The earlier enrollment is still there, under the id it was paired with.
        let enrollments = auth.enrollments().await;
        assert_eq!(enrollments.len(), 1);
        assert_eq!(enrollments[0].enrollment_id, old_enrollment);
        assert_eq!(enrollments[0].device_id, legacy_id);
    }
}

#[cfg(test)]
mod completion_tests {
    //! `complete` against a small pairing server on loopback that answers like the real one:
    //! a code pairs one registration, the identical registration sent again gets the same
    //! answer, and any other registration with a used code is refused.
    use super::*;
    use crate::key_store::SoftwareKeyStore;
    use crate::storage::{FileStorage, StorageError};
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tessera_protocol::envelope::SoftwareSigningKey;
    use tessera_protocol::error::ErrorBody;

    /// File storage whose next `fail_writes` writes fail.
    struct FlakyStorage {
        inner: FileStorage,
        fail_writes: AtomicUsize,
    }

    impl SecureStorage for FlakyStorage {
        fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
            self.inner.read(name)
        }
        fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
            let failed = self
                .fail_writes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failed {
                return Err(StorageError::Io("disk full".into()));
            }
            self.inner.write(name, bytes)
        }
        fn delete(&self, name: &str) -> Result<(), StorageError> {
            self.inner.delete(name)
        }
    }

    /// A pairing server for user `alice`; while `fail_save_on_answer` is set, it makes the
    /// device's next state write fail as it answers.
    struct PairingServer {
        url: String,
        fail_save_on_answer: Arc<AtomicBool>,
    }

    fn start_server(storage: Arc<FlakyStorage>) -> PairingServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let issuer = ServerUrl::parse(&url).unwrap();
        let fail_save_on_answer = Arc::new(AtomicBool::new(false));
        let arm = Arc::clone(&fail_save_on_answer);
        std::thread::spawn(move || {
            let key = SoftwareSigningKey::generate();
            let application = ApplicationInfo {
                id: tessera_protocol::ids::ApplicationId::generate(),
                name: "Bank".into(),
            };
            // code → (registration digest, enrollment id)
            let mut consumed: HashMap<String, (String, EnrollmentId)> = HashMap::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let body = read_body(&mut stream);
                let request: DevicePairingRequest = serde_json::from_slice(&body).unwrap();
                let digest = envelope::digest_of(&request.registration).unwrap();
                let registration: DeviceRegistration =
                    envelope::unverified_payload(&request.registration).unwrap();
                let code = PairingCode::parse(&request.pairing_code)
                    .unwrap()
                    .normalized()
                    .to_string();
                let (used_by, enrollment_id) = consumed
                    .entry(code)
                    .or_insert_with(|| (digest.to_string(), EnrollmentId::generate()))
                    .clone();
                let (status, answer) = if used_by == digest.to_string() {
                    let reply = PairingReply {
                        v: tessera_protocol::PROTOCOL_VERSION,
                        issuer: issuer.clone(),
                        application: application.clone(),
                        user_id: "alice".parse().unwrap(),
                        enrollment_id,
                        device_id: registration.device_id,
                        registration_digest: digest,
                        server_keys: JwkSet {
                            keys: vec![key.public_jwk()],
                        },
                        pending_verification: false,
                        otp: None,
                        issued_at: now(),
                    };
                    let server_payload =
                        envelope::sign(MessageType::PairingReply, &reply, &key).unwrap();
                    let answer = DevicePairingResponse { server_payload };
                    ("201 Created", serde_json::to_vec(&answer).unwrap())
                } else {
                    let refusal = ErrorBody::new(ErrorCode::InvalidPairingCode, "bad code");
                    ("400 Bad Request", serde_json::to_vec(&refusal).unwrap())
                };
                if arm.swap(false, Ordering::SeqCst) {
                    storage.fail_writes.store(1, Ordering::SeqCst);
                }
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&answer);
            }
        });
        PairingServer {
            url,
            fail_save_on_answer,
        }
    }

    /// The body of one HTTP request (by its `Content-Length`).
    fn read_body(stream: &mut std::net::TcpStream) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse::<usize>().unwrap())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return buf[end + 4..end + 4 + len].to_vec();
                }
            }
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "the request ended early");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    #[tokio::test]
    async fn a_completion_whose_save_fails_changes_nothing_and_a_retry_completes_it() {
        let dir = tempfile::tempdir().unwrap();
        let ks: Arc<dyn KeyStore> =
            Arc::new(SoftwareKeyStore::open(dir.path().join("keys")).unwrap());
        let storage = Arc::new(FlakyStorage {
            inner: FileStorage::new(dir.path().join("state")).unwrap(),
            fail_writes: AtomicUsize::new(0),
        });
        let server = start_server(Arc::clone(&storage));
        let auth = Authenticator::open(
            AuthenticatorConfig::default(),
            Arc::clone(&ks),
            Arc::clone(&storage) as Arc<dyn SecureStorage>,
        )
        .await
        .unwrap();
        // An earlier pairing of the same user on this device, which the next one replaces.
        let earlier = auth
            .pair("ABCD-EFGH-JKMN", Some(&server.url))
            .await
            .unwrap();
        let earlier_keys = {
            let state = auth.state.lock().await;
            let stored = &state.enrollments[0];
            vec![
                stored.possession_alias.clone(),
                stored.user_verification_alias.clone(),
            ]
        };

        // The server pairs, and the device cannot write the result.
        server.fail_save_on_answer.store(true, Ordering::SeqCst);
        let err = auth
            .pair("BCDE-FGHJ-KMNP", Some(&server.url))
            .await
            .unwrap_err();
        assert!(matches!(err, CoreError::Storage(_)), "{err:?}");
        let ids = |list: Vec<Enrollment>| -> Vec<EnrollmentId> {
            list.into_iter().map(|e| e.enrollment_id).collect()
        };
        assert_eq!(
            ids(auth.enrollments().await),
            vec![earlier.enrollment_id.clone()],
            "nothing applied in memory"
        );
        let pending = auth.state.lock().await.pending.clone();
        assert_eq!(pending.len(), 1, "the pending pairing stays for a retry");
        for alias in &earlier_keys {
            assert!(ks.public_key(alias).unwrap().is_some(), "its keys stay");
        }

        // The retry sends the same registration and completes the pairing.
        let again = auth
            .pair("BCDE-FGHJ-KMNP", Some(&server.url))
            .await
            .expect("the retry pairs");
        assert_eq!(
            ids(auth.enrollments().await),
            vec![again.enrollment_id.clone()]
        );
        assert!(auth.state.lock().await.pending.is_empty());
        for alias in &earlier_keys {
            assert!(
                ks.public_key(alias).unwrap().is_none(),
                "replaced, keys deleted"
            );
        }
        // And it was written.
        drop(auth);
        let reopened = Authenticator::open(
            AuthenticatorConfig::default(),
            ks,
            storage as Arc<dyn SecureStorage>,
        )
        .await
        .unwrap();
        assert_eq!(ids(reopened.enrollments().await), vec![again.enrollment_id]);
    }
}
