//! The immutable records and enums the foreign languages see, converted from the device core's
//! types. Conversions only: no logic.

use std::sync::Arc;

use tessera_core::{
    AccessContext as CoreAccessContext, AuthenticationKind, AuthenticationState, DisplayField,
    Enrollment as CoreEnrollment, EnrollmentStatus as CoreEnrollmentStatus,
    IncomingRequest as CoreIncomingRequest, OneTimePasscode as CoreOneTimePasscode,
    OtpAccount as CoreOtpAccount, OtpAccountSource, OtpAlgorithm, OtpKind,
    QrAnswerRecorded as CoreQrAnswerRecorded, QrAuthentication as CoreQrAuthentication,
    QrSessionState, ResponseRecorded as CoreRecorded,
};
use tessera_protocol::api::EnrollmentState as CoreEnrollmentState;
use tessera_protocol::authentication::{
    DenialReason as CoreDenialReason, DeviceLocation as CoreLocation,
    NumberMatching as CoreNumberMatching,
};
use tessera_protocol::pairing::{
    DeviceInfo as CoreDeviceInfo, DeviceSignals as CoreSignals,
    PushRegistration as CorePushRegistration,
};

/// How the SDK is set up.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct AuthenticatorConfig {
    /// What the device says about itself.
    pub device: DeviceInfo,
    /// Posture signals at start (see `Authenticator.set_signals`).
    pub signals: DeviceSignals,
    /// How the server can push to this device; new pairings register it.
    pub push: PushRegistration,
    /// Allow plain `http://` to servers not on loopback (never in production).
    #[uniffi(default = false)]
    pub allow_insecure_http: bool,
    /// Timeout of each HTTP call, in seconds.
    #[uniffi(default = 30)]
    pub http_timeout_seconds: u32,
}

/// What the device says about itself at pairing (shown to the user's other devices and the
/// customer's support).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DeviceInfo {
    /// Model, e.g. `Pixel 8`.
    pub model: String,
    /// OS name, e.g. `Android`.
    pub os_name: String,
    /// OS version, e.g. `15`.
    pub os_version: String,
    /// The app's version.
    pub app_version: String,
    /// A name the user gave the device.
    #[uniffi(default)]
    pub name: Option<String>,
}

/// Device posture as the platform reports it; `None` where unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, uniffi::Record)]
pub struct DeviceSignals {
    /// Rooted or jailbroken.
    #[uniffi(default)]
    pub rooted: Option<bool>,
    /// A screen lock is set.
    #[uniffi(default)]
    pub screen_lock: Option<bool>,
    /// Managed by an MDM.
    #[uniffi(default)]
    pub mdm: Option<bool>,
    /// Running in an emulator or simulator.
    #[uniffi(default)]
    pub emulator: Option<bool>,
}

/// Where the device is.
#[derive(Debug, Clone, Copy, PartialEq, uniffi::Record)]
pub struct DeviceLocation {
    /// Degrees, -90 to 90.
    pub latitude: f64,
    /// Degrees, -180 to 180.
    pub longitude: f64,
    /// Meters.
    #[uniffi(default)]
    pub altitude: Option<f64>,
    /// Meters, at least 0.
    #[uniffi(default)]
    pub accuracy: Option<f64>,
}

/// How the server can reach the device with a push.
#[derive(Clone, PartialEq, Eq, Default, uniffi::Enum)]
pub enum PushRegistration {
    /// No push: the app pulls (`pending_requests`, `wait_for_requests`).
    #[default]
    None,
    /// A Firebase Cloud Messaging registration token.
    Fcm {
        /// The token.
        token: String,
    },
    /// An APNs device token (hex).
    Apns {
        /// The token.
        token: String,
        /// Development builds: the APNs sandbox.
        sandbox: bool,
    },
}

impl std::fmt::Debug for PushRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are credentials for pushing to this device: never printed.
        let provider = match self {
            PushRegistration::None => "none",
            PushRegistration::Fcm { .. } => "fcm",
            PushRegistration::Apns { .. } => "apns",
        };
        write!(f, "PushRegistration({provider}, token <redacted>)")
    }
}

/// One pairing of this device with one user of one application on one server.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Enrollment {
    /// The enrollment's id (`enr_…`).
    pub enrollment_id: String,
    /// The server's URL.
    pub server: String,
    /// The application's id.
    pub application_id: String,
    /// The application's name.
    pub application_name: String,
    /// The user.
    pub user_id: String,
    /// This device's id.
    pub device_id: String,
    /// When the pairing completed (Unix seconds).
    pub paired_at: i64,
    /// `Active`, or `PendingVerification` until the user's primary device approves it.
    pub status: EnrollmentState,
    /// The server no longer knows it (the backend or an administrator unpaired it): show it as
    /// unpaired and remove it; its requests are no longer pulled.
    pub removed: bool,
}

/// Where an enrollment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum EnrollmentState {
    /// Paired and usable.
    Active,
    /// Waiting for the user's primary device to approve it.
    PendingVerification,
    /// Refused by the primary device, or not approved in time.
    Rejected,
}

/// What the server says about an enrollment.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct EnrollmentStatus {
    /// The enrollment.
    pub enrollment_id: String,
    /// The user.
    pub user_id: String,
    /// The application.
    pub application_id: String,
    /// Where it stands.
    pub status: EnrollmentState,
}

/// What kind of question a request asks.
///
/// New kinds are added as variants (with their details as an optional field of
/// [`IncomingRequest`]), so the foreign `when` / `switch` over it is exhaustive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum RequestKind {
    /// "Sign in to `<app>`?" with where the sign-in comes from.
    Approval,
    /// A transaction: a message and ordered fields, signed exactly as shown.
    Transaction,
    /// A silent verification: answered by the SDK, never shown (apps only see it in
    /// [`PushOutcome::SilentVerificationAnswered`]).
    Silent,
    /// An OpenID CIBA request: a relying party asks the user to sign in through the
    /// backchannel ([`IncomingRequest::ciba`] says who, with what binding message and scopes).
    /// Always approved with user verification.
    Ciba,
}

/// What a CIBA request shows: the relying party, its binding message and the scopes it asks
/// for. The request's `message` and `fields` are derived from these, and the device signs them.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct CibaDetails {
    /// The relying party's registered name.
    pub client_name: String,
    /// The binding message the relying party also shows the user, if any.
    pub binding_message: Option<String>,
    /// The scopes asked for (`openid` first).
    pub scopes: Vec<String>,
}

/// One label/value line to show.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Field {
    /// E.g. `Amount`.
    pub label: String,
    /// E.g. `120.00 EUR`.
    pub value: String,
}

/// Where a sign-in comes from.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct RequestContext {
    /// The application's name.
    pub application_name: String,
    /// The application's icon.
    pub application_icon_url: Option<String>,
    /// The accessing device's IP address.
    pub ip: Option<String>,
    /// A location text for the accessing device.
    pub location: Option<String>,
}

/// The checked request behind an [`IncomingRequest`]: what the SDK signs. Opaque.
#[derive(Debug, uniffi::Object)]
pub struct RequestHandle(pub(crate) CoreIncomingRequest);

/// A request the server signed and this device checked, with exactly what to show. Answering
/// it signs the request held by `handle`, whatever the app displays.
#[derive(Debug, Clone, uniffi::Record)]
pub struct IncomingRequest {
    /// The request's id (`aut_…`).
    pub request_id: String,
    /// The enrollment asked.
    pub enrollment_id: String,
    /// The user asked (on a device with several users: whom to show it to).
    pub user_id: String,
    /// The server's URL.
    pub server: String,
    /// The application's id.
    pub application_id: String,
    /// The application's name.
    pub application_name: String,
    /// Approval or transaction.
    pub kind: RequestKind,
    /// The headline to show.
    pub message: String,
    /// The fields to show, in order.
    pub fields: Vec<Field>,
    /// Context the signature binds besides `fields` (the request's hidden fields), in order.
    /// The user's approval covers them too: show them, or at least surface them (e.g. under
    /// "Details"), labelled as additional context.
    pub hidden_fields: Vec<Field>,
    /// Where the sign-in comes from.
    pub context: RequestContext,
    /// Number matching: `Choice` (the user picks one of `number_choices`), `Typed` (the user
    /// types the 2-digit number the web page shows; no choices) or `Off`. Pass the number to
    /// `approve`; a wrong number ends the request as denied.
    pub number_matching: NumberMatching,
    /// Number matching (`Choice`): the numbers to offer; the user picks the one the web page
    /// shows.
    pub number_choices: Option<Vec<u32>>,
    /// Approving needs biometrics or the device PIN.
    pub require_user_verification: bool,
    /// For a [`RequestKind::Ciba`] request: the relying party, binding message and scopes.
    pub ciba: Option<CibaDetails>,
    /// When it expires (Unix seconds).
    pub expires_at: i64,
    /// The language (BCP 47, e.g. `de`) the server wrote its own texts of this request in, as
    /// signed; `None` from older servers. The app may show its own labels in it.
    pub locale: Option<String>,
    /// The checked request, passed back to `approve` / `deny`.
    pub handle: Arc<RequestHandle>,
}

impl From<CoreIncomingRequest> for IncomingRequest {
    fn from(r: CoreIncomingRequest) -> Self {
        Self {
            request_id: r.request_id.to_string(),
            enrollment_id: r.enrollment_id.to_string(),
            user_id: r.user_id.to_string(),
            server: r.server.to_string(),
            application_id: r.application.id.to_string(),
            application_name: r.application.name.clone(),
            kind: r.kind.into(),
            message: r.message.clone(),
            fields: r.fields.iter().map(Field::from).collect(),
            hidden_fields: r.hidden_fields.iter().map(Field::from).collect(),
            context: RequestContext::from(&r.context),
            number_matching: r.number_matching.into(),
            number_choices: r.number_choices.clone(),
            require_user_verification: r.require_user_verification,
            ciba: r.ciba.as_ref().map(|c| CibaDetails {
                client_name: c.client_name.clone(),
                binding_message: c.binding_message.clone(),
                scopes: c.scopes.clone(),
            }),
            expires_at: r.expires_at,
            locale: r.locale.clone(),
            handle: Arc::new(RequestHandle(r)),
        }
    }
}

/// What `handle_push` did with a push.
// Crosses the FFI by value once (uniffi has no boxed enum fields); never kept in Rust.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, uniffi::Enum)]
pub enum PushOutcome {
    /// A request to show to the user.
    Request {
        /// The request.
        request: IncomingRequest,
    },
    /// A silent verification, answered already; nothing to show.
    SilentVerificationAnswered {
        /// The request answered.
        request_id: String,
        /// The enrollment that answered.
        enrollment_id: String,
    },
    /// The push named a request that is no longer pending.
    NothingPending,
}

/// How the user gives the number the web page shows (number matching).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum NumberMatching {
    /// No number matching.
    Off,
    /// The user picks one of the request's `number_choices`.
    Choice,
    /// The user types the 2-digit number; no choices are offered.
    Typed,
}

impl From<CoreNumberMatching> for NumberMatching {
    fn from(m: CoreNumberMatching) -> Self {
        match m {
            CoreNumberMatching::Off => NumberMatching::Off,
            CoreNumberMatching::Choice => NumberMatching::Choice,
            CoreNumberMatching::Typed => NumberMatching::Typed,
        }
    }
}

/// Why the server denied a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum DenialReason {
    /// The user declined.
    Declined,
    /// The user reported it as fraud.
    ReportedFraud,
    /// The approval carried another number than the one shown: the request ended.
    WrongNumber,
}

impl From<CoreDenialReason> for DenialReason {
    fn from(r: CoreDenialReason) -> Self {
        match r {
            CoreDenialReason::Declined => DenialReason::Declined,
            CoreDenialReason::ReportedFraud => DenialReason::ReportedFraud,
            CoreDenialReason::WrongNumber => DenialReason::WrongNumber,
        }
    }
}

/// What the server recorded for an answer.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ResponseRecorded {
    /// The authentication.
    pub authentication_id: String,
    /// Its state after the answer.
    pub state: RequestState,
    /// Why it is denied, when it is (`WrongNumber`: the number did not match; show the user
    /// that the sign-in was refused).
    pub denial_reason: Option<DenialReason>,
}

/// An authentication's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum RequestState {
    /// Waiting for the device.
    Pending,
    /// Approved.
    Approved,
    /// Denied.
    Denied,
    /// Nobody answered in time.
    Expired,
    /// Could not be completed.
    Failed,
}

/// One of this device's users who may answer a scanned QR code.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct QrUser {
    /// The user.
    pub user_id: String,
    /// A name to show, if the customer gave one.
    pub display_name: Option<String>,
    /// The user's enrollment on this device.
    pub enrollment_id: String,
}

/// The checked QR session behind a [`QrAuthentication`]. Opaque.
#[derive(Debug, uniffi::Object)]
pub struct QrHandle(pub(crate) CoreQrAuthentication);

/// A scanned QR login, checked: what to show, and which of this device's users may answer.
#[derive(Debug, Clone, uniffi::Record)]
pub struct QrAuthentication {
    /// The session (`qrs_…`).
    pub session_id: String,
    /// The server's URL.
    pub server: String,
    /// The application's id.
    pub application_id: String,
    /// The application's name.
    pub application_name: String,
    /// Where the sign-in comes from (the browser).
    pub context: RequestContext,
    /// Who may answer: one user to confirm, or several to choose from.
    pub users: Vec<QrUser>,
    /// When the session expires (Unix seconds).
    pub expires_at: i64,
    /// The checked session, passed back to `approve_qr` / `deny_qr`.
    pub handle: Arc<QrHandle>,
}

impl From<CoreQrAuthentication> for QrAuthentication {
    fn from(q: CoreQrAuthentication) -> Self {
        Self {
            session_id: q.session_id.to_string(),
            server: q.server.to_string(),
            application_id: q.application.id.to_string(),
            application_name: q.application.name.clone(),
            context: RequestContext::from(&q.context),
            users: q
                .users
                .iter()
                .map(|u| QrUser {
                    user_id: u.user_id.to_string(),
                    display_name: u.display_name.clone(),
                    enrollment_id: u.enrollment_id.to_string(),
                })
                .collect(),
            expires_at: q.expires_at,
            handle: Arc::new(QrHandle(q)),
        }
    }
}

/// Where a QR session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum QrState {
    /// Shown, not scanned.
    Created,
    /// Scanned, not answered.
    Scanned,
    /// Approved; the server waits for the follow-up the application's policy asks for.
    Verifying,
    /// Approved.
    Approved,
    /// Denied.
    Denied,
    /// Nobody answered in time.
    Expired,
}

/// What the server recorded for a QR answer.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct QrAnswerRecorded {
    /// The session.
    pub session_id: String,
    /// Its state after the answer.
    pub state: QrState,
    /// The follow-up request, if the application's policy asks for one.
    pub follow_up: Option<String>,
}

/// An offline OTP account: labels and parameters, never the seed.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct OtpAccount {
    /// The account's id on this device (`otp_…`).
    pub id: String,
    /// The service.
    pub issuer: Option<String>,
    /// The user's account at the service.
    pub account_name: String,
    /// `totp` or `hotp`.
    pub kind: OtpAccountKind,
    /// Digits per code.
    pub digits: u8,
    /// `SHA1`, `SHA256` or `SHA512`.
    pub algorithm: String,
    /// The seed is shorter than 128 bits; the app may warn.
    pub short_secret: bool,
    /// The enrollment that provisioned it, or none if the user imported it.
    pub enrollment_id: Option<String>,
}

/// Time- or counter-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum OtpAccountKind {
    /// TOTP with its period in seconds.
    Totp {
        /// Seconds per code.
        period: u32,
    },
    /// HOTP with the counter value the next code uses.
    Hotp {
        /// The next counter value.
        counter: u64,
    },
}

/// A one-time passcode.
#[derive(Clone, PartialEq, Eq, uniffi::Record)]
pub struct OneTimePasscode {
    /// The code (6 to 8 digits, leading zeros kept).
    pub code: String,
    /// TOTP: seconds left in its period; HOTP: none.
    pub valid_for_seconds: Option<u64>,
}

impl std::fmt::Debug for OneTimePasscode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneTimePasscode")
            .field("code", &"redacted")
            .field("valid_for_seconds", &self.valid_for_seconds)
            .finish()
    }
}

// Conversions.

impl From<DeviceInfo> for CoreDeviceInfo {
    fn from(d: DeviceInfo) -> Self {
        CoreDeviceInfo {
            model: d.model,
            os_name: d.os_name,
            os_version: d.os_version,
            app_version: d.app_version,
            sdk_version: env!("CARGO_PKG_VERSION").to_string(),
            name: d.name,
        }
    }
}

impl From<DeviceSignals> for CoreSignals {
    fn from(s: DeviceSignals) -> Self {
        CoreSignals {
            rooted: s.rooted,
            screen_lock: s.screen_lock,
            mdm: s.mdm,
            emulator: s.emulator,
        }
    }
}

impl From<DeviceLocation> for CoreLocation {
    fn from(l: DeviceLocation) -> Self {
        CoreLocation {
            latitude: l.latitude,
            longitude: l.longitude,
            altitude: l.altitude,
            accuracy: l.accuracy,
        }
    }
}

impl From<PushRegistration> for CorePushRegistration {
    fn from(p: PushRegistration) -> Self {
        match p {
            PushRegistration::None => CorePushRegistration::None,
            PushRegistration::Fcm { token } => CorePushRegistration::Fcm { token },
            PushRegistration::Apns { token, sandbox } => {
                CorePushRegistration::Apns { token, sandbox }
            }
        }
    }
}

impl From<CoreEnrollmentState> for EnrollmentState {
    fn from(s: CoreEnrollmentState) -> Self {
        match s {
            CoreEnrollmentState::Active => EnrollmentState::Active,
            CoreEnrollmentState::PendingVerification => EnrollmentState::PendingVerification,
            CoreEnrollmentState::Rejected => EnrollmentState::Rejected,
        }
    }
}

impl From<CoreEnrollment> for Enrollment {
    fn from(e: CoreEnrollment) -> Self {
        Self {
            enrollment_id: e.enrollment_id.to_string(),
            server: e.server.to_string(),
            application_id: e.application.id.to_string(),
            application_name: e.application.name,
            user_id: e.user_id.to_string(),
            device_id: e.device_id.to_string(),
            paired_at: e.paired_at,
            status: e.status.into(),
            removed: e.removed,
        }
    }
}

impl From<CoreEnrollmentStatus> for EnrollmentStatus {
    fn from(s: CoreEnrollmentStatus) -> Self {
        Self {
            enrollment_id: s.enrollment_id.to_string(),
            user_id: s.user_id.to_string(),
            application_id: s.application_id.to_string(),
            status: s.status.into(),
        }
    }
}

impl From<AuthenticationKind> for RequestKind {
    fn from(k: AuthenticationKind) -> Self {
        // Exhaustive on purpose: a new kind in the core fails to compile here until it has its
        // variant.
        match k {
            AuthenticationKind::Approval => RequestKind::Approval,
            AuthenticationKind::Transaction => RequestKind::Transaction,
            AuthenticationKind::Silent => RequestKind::Silent,
            AuthenticationKind::Ciba => RequestKind::Ciba,
        }
    }
}

impl From<&DisplayField> for Field {
    fn from(f: &DisplayField) -> Self {
        Self {
            label: f.label.clone(),
            value: f.value.clone(),
        }
    }
}

impl From<&CoreAccessContext> for RequestContext {
    fn from(c: &CoreAccessContext) -> Self {
        Self {
            application_name: c.application_name.clone(),
            application_icon_url: c.application_icon_url.clone(),
            ip: c.ip.clone(),
            location: c.location.clone(),
        }
    }
}

impl From<AuthenticationState> for RequestState {
    fn from(s: AuthenticationState) -> Self {
        match s {
            AuthenticationState::Pending => RequestState::Pending,
            AuthenticationState::Approved => RequestState::Approved,
            AuthenticationState::Denied => RequestState::Denied,
            AuthenticationState::Expired => RequestState::Expired,
            AuthenticationState::Failed => RequestState::Failed,
        }
    }
}

impl From<CoreRecorded> for ResponseRecorded {
    fn from(r: CoreRecorded) -> Self {
        Self {
            authentication_id: r.authentication_id.to_string(),
            state: r.state.into(),
            denial_reason: r.denial_reason.map(DenialReason::from),
        }
    }
}

impl From<QrSessionState> for QrState {
    fn from(s: QrSessionState) -> Self {
        match s {
            QrSessionState::Created => QrState::Created,
            QrSessionState::Scanned => QrState::Scanned,
            QrSessionState::Verifying => QrState::Verifying,
            QrSessionState::Approved => QrState::Approved,
            QrSessionState::Denied => QrState::Denied,
            QrSessionState::Expired => QrState::Expired,
        }
    }
}

impl From<CoreQrAnswerRecorded> for QrAnswerRecorded {
    fn from(r: CoreQrAnswerRecorded) -> Self {
        Self {
            session_id: r.session_id.to_string(),
            state: r.state.into(),
            follow_up: r.follow_up.map(|f| f.to_string()),
        }
    }
}

impl From<CoreOtpAccount> for OtpAccount {
    fn from(a: CoreOtpAccount) -> Self {
        Self {
            id: a.id.as_str().to_string(),
            issuer: a.issuer,
            account_name: a.account_name,
            kind: match a.kind {
                OtpKind::Totp { period } => OtpAccountKind::Totp { period },
                OtpKind::Hotp { counter } => OtpAccountKind::Hotp { counter },
            },
            digits: a.digits.get(),
            algorithm: match a.algorithm {
                OtpAlgorithm::Sha1 => "SHA1",
                OtpAlgorithm::Sha256 => "SHA256",
                OtpAlgorithm::Sha512 => "SHA512",
            }
            .to_string(),
            short_secret: a.short_secret,
            enrollment_id: match a.source {
                OtpAccountSource::Imported => None,
                OtpAccountSource::Enrollment { enrollment_id } => Some(enrollment_id.to_string()),
                _ => None,
            },
        }
    }
}

impl From<CoreOneTimePasscode> for OneTimePasscode {
    fn from(p: CoreOneTimePasscode) -> Self {
        Self {
            code: p.code.clone(),
            valid_for_seconds: p.valid_for.map(|d| d.as_secs()),
        }
    }
}
