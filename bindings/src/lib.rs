//! Tessera's device SDK for Kotlin, Swift and Python: a thin uniffi layer over `tessera-core`.
//!
//! Everything here adapts: ids become strings, core types become immutable records, errors
//! become [`TesseraError`] with stable codes, the platform comes in through foreign traits
//! ([`PlatformKeyStore`], [`PlatformStorage`], [`UserVerifier`]). Async methods run on a tokio
//! runtime (uniffi's `tokio` support) and appear as `suspend` functions in Kotlin, `async` in
//! Swift and coroutines in Python. The flows themselves live in the core; see
//! `docs/android.md` and `docs/ios.md`.

#![warn(missing_docs)]

#[cfg(target_os = "android")]
mod android;
mod error;
mod logging;
mod platform;
mod records;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tessera_core::{Authenticator as CoreAuthenticator, PushOutcome as CorePushOutcome};
use tessera_protocol::ids::{EnrollmentId, UserId};

pub use error::{PlatformError, TesseraError};
pub use logging::{LogLevel, LogRecord, Logger, set_logger};
pub use platform::{
    AppAttestAsserter, AppAttestationResult, KeyKind, PlatformKeyStore, PlatformStorage,
    UserVerifier, VerificationReason, file_storage, software_key_store,
};
pub use records::*;

uniffi::setup_scaffolding!("tessera");

/// The SDK's version.
#[uniffi::export]
pub fn sdk_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// The device SDK: one per app, shared by every screen. Owns the device's encrypted state and
/// exposes the flows. Every method may be called concurrently.
#[derive(uniffi::Object)]
pub struct Authenticator {
    core: CoreAuthenticator,
    verifier: Option<Arc<dyn UserVerifier>>,
    verify_every_approval: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.core)
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl Authenticator {
    /// Opens the device: loads (or creates) the encrypted state.
    ///
    /// `user_verifier` is the biometric / device-PIN prompt; without it, requests that require
    /// user verification fail with `user_verification_unavailable`. With
    /// `verify_every_approval`, every approval (not only those the server marks) asks the user
    /// and is signed with the user-verification key.
    #[uniffi::constructor]
    pub async fn open(
        config: AuthenticatorConfig,
        key_store: Arc<dyn PlatformKeyStore>,
        storage: Arc<dyn PlatformStorage>,
        user_verifier: Option<Arc<dyn UserVerifier>>,
        verify_every_approval: bool,
    ) -> Result<Arc<Self>, TesseraError> {
        let core_config = tessera_core::AuthenticatorConfig {
            device: config.device.into(),
            signals: config.signals.into(),
            push: config.push.into(),
            allow_insecure_http: config.allow_insecure_http,
            http_timeout: Duration::from_secs(u64::from(config.http_timeout_seconds.max(1))),
        };
        let core = CoreAuthenticator::open(
            core_config,
            Arc::new(platform::ForeignKeyStore(key_store)),
            Arc::new(platform::ForeignStorage(storage)),
        )
        .await?;
        Ok(Arc::new(Self {
            core,
            verifier: user_verifier,
            verify_every_approval,
        }))
    }

    /// This installation's device id (`dev_…`).
    pub fn device_id(&self) -> String {
        self.core.device_id().to_string()
    }

    /// Reports the device's posture; every later answer carries it, signed.
    pub fn set_signals(&self, signals: DeviceSignals) {
        self.core.set_signals(signals.into());
    }

    /// Sets (or with none removes) the app's App Attest asserter (iOS: the wrapper's
    /// `AppAttestService`): answers of enrollments whose pairing was App Attested then carry an
    /// assertion over the answer (`docs/attestation.md`).
    pub fn set_app_attest_asserter(&self, asserter: Option<Arc<dyn AppAttestAsserter>>) {
        self.core.set_app_attest_asserter(asserter.map(|a| {
            Arc::new(platform::ForeignAppAttestAsserter(a))
                as Arc<dyn tessera_core::AppAttestAsserter>
        }));
    }

    /// Reports the device's model, OS version and app version as they are now (e.g. after an
    /// OS update while the app runs); every later answer carries them, signed, and the server
    /// keeps the enrollment current. `open` starts from `AuthenticatorConfig.device`.
    pub fn set_device_versions(&self, model: String, os_version: String, app_version: String) {
        self.core
            .set_device_versions(tessera_protocol::pairing::DeviceVersions {
                model,
                os_version,
                app_version,
            });
    }

    /// Reports where the device is (none: no fix or no permission); every later answer carries
    /// it, signed. Out-of-range values are `invalid_input`.
    pub fn set_location(&self, location: Option<DeviceLocation>) -> Result<(), TesseraError> {
        Ok(self.core.set_location(location.map(Into::into))?)
    }

    /// The completed enrollments, oldest first.
    pub async fn enrollments(&self) -> Vec<Enrollment> {
        self.core
            .enrollments()
            .await
            .into_iter()
            .map(Enrollment::from)
            .collect()
    }

    /// Pairs with a pairing URI (`tessera://pair?…`, from a QR code) or a typed pairing code
    /// plus the server's URL. Safe to retry after a network error.
    pub async fn pair(
        &self,
        code_or_uri: String,
        server: Option<String>,
    ) -> Result<Enrollment, TesseraError> {
        Ok(self
            .core
            .pair(&code_or_uri, server.as_deref())
            .await?
            .into())
    }

    /// Relay pairing, step 1: the *mobile payload* for the app's backend to forward to the
    /// server.
    pub async fn create_mobile_payload(&self, server: String) -> Result<String, TesseraError> {
        Ok(self.core.create_mobile_payload(&server).await?)
    }

    /// Seamless device authorization: signs the server flow's `authorization_nonce` with the
    /// enrollment's possession key (no user interaction). The app hands the result to its web
    /// view or backend for the flow's `authenticate` action; it is bound to that flow, lives 60
    /// seconds and is accepted once.
    pub async fn create_authorization_payload(
        &self,
        enrollment_id: String,
        flow_nonce: String,
    ) -> Result<String, TesseraError> {
        let id = enrollment_id_from(&enrollment_id)?;
        Ok(self
            .core
            .create_authorization_payload(&id, &flow_nonce)
            .await?)
    }

    /// The hosted page in the app's web view asked something (a JavaScript bridge message, as
    /// JSON): answers it with the core (seamless authorization, registration, its completion)
    /// and returns the answer to deliver to the page, as JSON. `source_origin` is the origin of
    /// the page that asked (questions from another origin than the server's are refused);
    /// `user_id` picks the signed-in user's enrollment when the device holds several.
    pub async fn handle_web_view_message(
        &self,
        message: String,
        source_origin: String,
        user_id: Option<String>,
    ) -> Result<String, TesseraError> {
        Ok(self
            .core
            .handle_web_view_message(&message, &source_origin, user_id.as_deref())
            .await?)
    }

    /// The scheme mode: answers the page's navigation to `<scheme>://tessera/<name>?…` and
    /// returns the URL to load in the web view (the page's return URL with the answer in the
    /// fragment). `source_origin` is the origin of the web view's current page.
    pub async fn handle_web_view_url(
        &self,
        url: String,
        source_origin: String,
        user_id: Option<String>,
    ) -> Result<String, TesseraError> {
        Ok(self
            .core
            .handle_web_view_url(&url, &source_origin, user_id.as_deref())
            .await?)
    }

    /// Relay pairing, step 2: completes the pairing with the *server payload* the backend got.
    pub async fn complete_relay_pairing(
        &self,
        server_payload: String,
    ) -> Result<Enrollment, TesseraError> {
        Ok(self
            .core
            .complete_relay_pairing(&server_payload)
            .await?
            .into())
    }

    /// Asks the server whether an enrollment is still active.
    pub async fn enrollment_status(
        &self,
        enrollment_id: String,
    ) -> Result<EnrollmentStatus, TesseraError> {
        let id = enrollment_id_from(&enrollment_id)?;
        Ok(self.core.enrollment_status(&id).await?.into())
    }

    /// Waits (at most `timeout_seconds`) until the user's primary device approves or refuses
    /// this enrollment; returns where it stands.
    pub async fn wait_for_verification(
        &self,
        enrollment_id: String,
        timeout_seconds: u32,
    ) -> Result<EnrollmentState, TesseraError> {
        let id = enrollment_id_from(&enrollment_id)?;
        Ok(self
            .core
            .wait_for_verification(&id, Duration::from_secs(u64::from(timeout_seconds)))
            .await?
            .into())
    }

    /// Unpairs: tells the server, then deletes the enrollment and its keys.
    pub async fn remove_enrollment(&self, enrollment_id: String) -> Result<(), TesseraError> {
        let id = enrollment_id_from(&enrollment_id)?;
        Ok(self.core.remove_enrollment(&id).await?)
    }

    /// Deletes an enrollment and its keys on this device only.
    pub async fn forget_enrollment(&self, enrollment_id: String) -> Result<(), TesseraError> {
        let id = enrollment_id_from(&enrollment_id)?;
        Ok(self.core.forget_enrollment(&id).await?)
    }

    /// Registers a fresh push token for an enrollment (call it for each enrollment when FCM or
    /// APNs issues a new token).
    pub async fn update_push_token(
        &self,
        enrollment_id: String,
        push: PushRegistration,
    ) -> Result<(), TesseraError> {
        let id = enrollment_id_from(&enrollment_id)?;
        Ok(self.core.update_push_token(&id, &push.into()).await?)
    }

    /// Pending requests of every enrollment, checked. Silent verifications are answered on the
    /// way and not returned.
    pub async fn pending_requests(&self) -> Result<Vec<IncomingRequest>, TesseraError> {
        Ok(self
            .core
            .pending_requests()
            .await?
            .into_iter()
            .map(IncomingRequest::from)
            .collect())
    }

    /// One pending request of `enrollment_id` by its id (`aut_…`, from a tapped notification),
    /// checked exactly as pulled requests are. Unknown, expired and answered requests are
    /// `Server` errors with the codes `authentication_not_found`, `authentication_expired` and
    /// `already_answered`.
    pub async fn request(
        &self,
        enrollment_id: String,
        request_id: String,
    ) -> Result<IncomingRequest, TesseraError> {
        let id = enrollment_id_from(&enrollment_id)?;
        let request_id = tessera_protocol::authentication::AuthenticationId::from_str(&request_id)
            .map_err(|_| TesseraError::invalid_input("malformed request id"))?;
        Ok(IncomingRequest::from(
            self.core.request(&id, &request_id).await?,
        ))
    }

    /// Long-polls one enrollment: returns as soon as a request is pending, or after
    /// `wait_seconds` (at most 30) with none.
    pub async fn wait_for_requests(
        &self,
        enrollment_id: String,
        wait_seconds: u32,
    ) -> Result<Vec<IncomingRequest>, TesseraError> {
        let id = enrollment_id_from(&enrollment_id)?;
        Ok(self
            .core
            .wait_for_requests(&id, Duration::from_secs(u64::from(wait_seconds)))
            .await?
            .into_iter()
            .map(IncomingRequest::from)
            .collect())
    }

    /// Handles a push: an FCM message's `data` map as JSON, a whole APNs payload, or the signed
    /// request itself. Silent verifications are answered here.
    pub async fn handle_push(&self, payload: String) -> Result<PushOutcome, TesseraError> {
        Ok(match self.core.handle_push(&payload).await? {
            CorePushOutcome::Request(request) => PushOutcome::Request {
                request: IncomingRequest::from(*request),
            },
            CorePushOutcome::SilentVerificationAnswered {
                request_id,
                enrollment_id,
            } => PushOutcome::SilentVerificationAnswered {
                request_id: request_id.to_string(),
                enrollment_id: enrollment_id.to_string(),
            },
            CorePushOutcome::NothingPending => PushOutcome::NothingPending,
        })
    }

    /// Approves a request. `selected_number` is the number the user picked (number matching
    /// `Choice`, one of `number_choices`) or typed (`Typed`); a wrong number ends the request as
    /// denied (`ResponseRecorded.denial_reason` is `WrongNumber`). When the request requires user verification (or the SDK was
    /// opened with `verify_every_approval`), the [`UserVerifier`] prompts first and the answer
    /// is signed with the user-verification key; otherwise it is a swipe, signed with the
    /// possession key.
    pub async fn approve(
        &self,
        request: IncomingRequest,
        selected_number: Option<u32>,
    ) -> Result<ResponseRecorded, TesseraError> {
        let core = &request.handle.0;
        let amr = if core.require_user_verification || self.verify_every_approval {
            self.verify_user(VerificationReason {
                application_name: core.application.name.clone(),
                message: core.message.clone(),
                user_id: core.user_id.to_string(),
                required_by_server: core.require_user_verification,
                key_alias: self
                    .core
                    .user_verification_key_alias(&core.enrollment_id)
                    .await?,
            })
            .await?
        } else {
            Vec::new()
        };
        Ok(self.core.approve(core, amr, selected_number).await?.into())
    }

    /// Approves a request the app verified the user for itself (e.g. a `BiometricPrompt` with a
    /// `CryptoObject`): `amr` lists the RFC 8176 methods used (`fpt`, `face`, `pin`, …); with
    /// one, the answer is signed with the user-verification key.
    pub async fn approve_verified(
        &self,
        request: IncomingRequest,
        amr: Vec<String>,
        selected_number: Option<u32>,
    ) -> Result<ResponseRecorded, TesseraError> {
        Ok(self
            .core
            .approve(&request.handle.0, amr, selected_number)
            .await?
            .into())
    }

    /// Denies a request; `report_fraud` says the user did not start it.
    pub async fn deny(
        &self,
        request: IncomingRequest,
        report_fraud: bool,
    ) -> Result<ResponseRecorded, TesseraError> {
        Ok(self
            .core
            .deny(&request.handle.0, report_fraud)
            .await?
            .into())
    }

    /// QR login, step 1: checks the scanned text (`tessera://qr?…`), claims the session for
    /// this device and returns what to show and which users may answer.
    pub async fn authenticate_with_qr(
        &self,
        scanned: String,
    ) -> Result<QrAuthentication, TesseraError> {
        Ok(self.core.authenticate_with_qr(&scanned).await?.into())
    }

    /// QR login, step 2: `user_id` (one of the QR authentication's users) approves. Verifies the
    /// user first as [`Authenticator::approve`] does when the SDK was opened with
    /// `verify_every_approval`.
    pub async fn approve_qr(
        &self,
        qr: QrAuthentication,
        user_id: String,
    ) -> Result<QrAnswerRecorded, TesseraError> {
        let user = user_id_from(&user_id)?;
        let core = &qr.handle.0;
        let amr = if self.verify_every_approval {
            let enrollment = core
                .users
                .iter()
                .find(|u| u.user_id == user)
                .map(|u| u.enrollment_id.clone())
                .ok_or_else(|| TesseraError::invalid_input("this user may not answer"))?;
            self.verify_user(VerificationReason {
                application_name: core.application.name.clone(),
                message: format!("Sign in to {}?", core.application.name),
                user_id: user_id.clone(),
                required_by_server: false,
                key_alias: self.core.user_verification_key_alias(&enrollment).await?,
            })
            .await?
        } else {
            Vec::new()
        };
        Ok(self.core.approve_qr(core, &user, amr).await?.into())
    }

    /// QR login, step 2: `user_id` denies; `report_fraud` says the user did not start it.
    pub async fn deny_qr(
        &self,
        qr: QrAuthentication,
        user_id: String,
        report_fraud: bool,
    ) -> Result<QrAnswerRecorded, TesseraError> {
        let user = user_id_from(&user_id)?;
        Ok(self
            .core
            .deny_qr(&qr.handle.0, &user, report_fraud)
            .await?
            .into())
    }

    /// Imports an offline OTP account from its `otpauth://` URI.
    pub async fn import_otp_account(&self, uri: String) -> Result<OtpAccount, TesseraError> {
        Ok(self.core.import_otp_account(&uri).await?.into())
    }

    /// The OTP accounts on this device, oldest first. No seeds.
    pub async fn otp_accounts(&self) -> Vec<OtpAccount> {
        self.core
            .otp_accounts()
            .await
            .into_iter()
            .map(OtpAccount::from)
            .collect()
    }

    /// Deletes an OTP account and its seed.
    pub async fn remove_otp_account(&self, id: String) -> Result<(), TesseraError> {
        let id = otp_id_from(id)?;
        Ok(self.core.remove_otp_account(&id).await?)
    }

    /// The account's current code (TOTP: with the seconds left; HOTP: the next code).
    pub async fn one_time_passcode(&self, id: String) -> Result<OneTimePasscode, TesseraError> {
        let id = otp_id_from(id)?;
        Ok(self.core.one_time_passcode(&id).await?.into())
    }
}

impl Authenticator {
    async fn verify_user(&self, reason: VerificationReason) -> Result<Vec<String>, TesseraError> {
        let verifier = self
            .verifier
            .as_ref()
            .ok_or_else(TesseraError::user_verification_unavailable)?;
        let amr = verifier.verify_user(reason).await?;
        if amr.is_empty() {
            // A prompt that verified nobody cannot sign with the user-verification key.
            return Err(TesseraError::user_verification_unavailable());
        }
        Ok(amr)
    }
}

fn enrollment_id_from(text: &str) -> Result<EnrollmentId, TesseraError> {
    EnrollmentId::from_str(text).map_err(|_| TesseraError::invalid_input("malformed enrollment id"))
}

fn user_id_from(text: &str) -> Result<UserId, TesseraError> {
    UserId::from_str(text).map_err(|_| TesseraError::invalid_input("malformed user id"))
}

fn otp_id_from(text: String) -> Result<tessera_core::OtpAccountId, TesseraError> {
    tessera_core::OtpAccountId::try_from(text)
        .map_err(|_| TesseraError::invalid_input("malformed OTP account id"))
}
