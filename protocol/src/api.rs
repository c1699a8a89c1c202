//! Request and response bodies of the server's HTTP APIs.
//!
//! - **Customer API** (`/v1/users/...`): called by the customer's backend or a PingFederate-style
//!   adapter with `Authorization: Bearer <API key>`.
//! - **Device API** (`/v1/device/...`, `/v1/server-keys`): called by the device core.

use serde::{Deserialize, Serialize};

use crate::authentication::{
    AuthenticationId, AuthenticationKind, AuthenticationState, Decision, DenialReason,
    DisplayField, NumberMatching,
};
use crate::ids::{ApplicationId, DeviceId, EnrollmentId, UserId};
use crate::jwk::JwkSet;
use crate::pairing::{DeviceInfo, DeviceSignals, PushRegistration, ServerUrl};
use crate::time::UnixSeconds;

/// `POST /v1/users`: create a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateUserRequest {
    /// The customer's id for the user.
    pub user_id: UserId,
    /// A name to show, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The user's preferred language for the server's own texts (push headline, SMS, voice and
    /// email messages), a BCP 47 tag such as `de` or `fr-CA`. Absent: English unless a request
    /// names another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
}

/// `PATCH /v1/users/{user_id}`: change a user's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateUserRequest {
    /// The user's preferred language (BCP 47); `null` removes it (English unless a request names
    /// another).
    pub locale: Option<String>,
}

/// A user of an application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    /// The customer's id for the user.
    pub user_id: UserId,
    /// A name to show, if any.
    pub display_name: Option<String>,
    /// When the user was created.
    pub created_at: UnixSeconds,
    /// How many devices are paired.
    pub device_count: u32,
    /// The user's preferred language (BCP 47), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
}

/// `POST /v1/users/{user_id}/pairings`: start a pairing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StartPairingRequest {
    /// How long the code stays valid, in seconds (60 to 86,400; default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u32>,
}

/// A started pairing: give the code (or the URI as a QR code) to the user's device.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StartPairingResponse {
    /// Single-use code a person can type, `XXXX-XXXX-XXXX`.
    pub pairing_code: String,
    /// `tessera://pair?server=...&code=...`, for a QR code.
    pub pairing_uri: String,
    /// When the code expires.
    pub expires_at: UnixSeconds,
}

impl std::fmt::Debug for StartPairingResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StartPairingResponse(code <redacted>, expires_at {})",
            self.expires_at
        )
    }
}

/// `POST /v1/users/{user_id}/relay-pairings`: complete a relay pairing with the app's mobile payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelayPairingRequest {
    /// The opaque mobile payload the app produced.
    pub mobile_payload: String,
}

/// The relay pairing's result: hand `server_payload` back to the app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelayPairingResponse {
    /// The signed pairing reply, opaque to the backend.
    pub server_payload: String,
    /// The paired device.
    pub device: DeviceRecord,
}

/// A device paired with a user (one enrollment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceRecord {
    /// The enrollment: this device's pairing with this user.
    pub enrollment_id: EnrollmentId,
    /// The installation.
    pub device_id: DeviceId,
    /// The user.
    pub user_id: UserId,
    /// What the device says about itself.
    pub device: DeviceInfo,
    /// Posture signals at pairing or last contact.
    pub signals: DeviceSignals,
    /// `none`, `fcm` or `apns`.
    pub push_provider: String,
    /// `true` when FCM or APNs said the device's push token is no longer valid: it is not pushed
    /// to until the device registers a fresh token (it still pulls its requests).
    #[serde(default)]
    pub push_token_stale: bool,
    /// Whether this is the user's primary device.
    pub primary: bool,
    /// `active`, or `pending_verification` while the user's primary device has not yet
    /// approved it (application policy "verify new devices with the primary device").
    pub status: EnrollmentState,
    /// When it was paired.
    pub paired_at: UnixSeconds,
    /// When the device last called the server.
    pub last_seen_at: UnixSeconds,
    /// What the pairing's platform attestation proved; absent when none was verified
    /// (attestation off, or the device sent none or an invalid one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<EnrollmentAttestation>,
}

/// `GET /v1/users/{user_id}/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceList {
    /// The user's devices, oldest first.
    pub devices: Vec<DeviceRecord>,
}

/// `POST /v1/device/pairings`: a device pairs with a code.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DevicePairingRequest {
    /// The pairing code as the user typed it.
    pub pairing_code: String,
    /// The signed [`crate::pairing::DeviceRegistration`].
    pub registration: String,
    /// The signed [`crate::pairing::KeyProof`].
    pub user_verification_proof: String,
}

impl std::fmt::Debug for DevicePairingRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevicePairingRequest(code <redacted>)")
    }
}

/// The answer to a device pairing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DevicePairingResponse {
    /// The signed [`crate::pairing::PairingReply`].
    pub server_payload: String,
}

/// `GET /v1/server-keys`: the server's current keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerKeysResponse {
    /// The server's identity.
    pub issuer: ServerUrl,
    /// The keys, as a plain JWK set.
    pub keys: JwkSet,
    /// The same set as a signed [`crate::pairing::ServerKeySet`] (the newest of
    /// `key_set_chain`).
    pub signed_key_set: String,
    /// Every signed [`crate::pairing::ServerKeySet`] the server still publishes, oldest first,
    /// each signed by a key of an earlier one: a device that pinned an older set follows them
    /// ([`crate::key_set::advance`]). Empty from servers before key rotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_set_chain: Vec<String>,
}

/// `GET /v1/device/enrollments/{enrollment_id}` (device-authenticated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollmentStatus {
    /// The enrollment.
    pub enrollment_id: EnrollmentId,
    /// The user it pairs.
    pub user_id: UserId,
    /// The application.
    pub application_id: ApplicationId,
    /// Whether it can be used.
    pub status: EnrollmentState,
}

/// Where an enrollment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EnrollmentState {
    /// Paired and usable.
    Active,
    /// Waiting for the user's primary device to approve it.
    PendingVerification,
    /// The primary device denied it, or nobody approved it in time; it will never be usable.
    Rejected,
}

impl std::fmt::Display for EnrollmentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EnrollmentState {
    /// The state's wire text.
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollmentState::Active => "active",
            EnrollmentState::PendingVerification => "pending_verification",
            EnrollmentState::Rejected => "rejected",
        }
    }

    /// Parses the wire text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "pending_verification" => Some(Self::PendingVerification),
            "rejected" => Some(Self::Rejected),
            _ => None,
        }
    }
}

/// The admin CLI's answer to `create-app`. The API key is shown once; the server keeps only
/// its digest.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedApplication {
    /// The application's id.
    pub application_id: ApplicationId,
    /// Its display name.
    pub name: String,
    /// The API key for the customer API (`Authorization: Bearer ...`).
    pub api_key: String,
}

impl std::fmt::Debug for CreatedApplication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CreatedApplication({}, {:?}, api key <redacted>)",
            self.application_id, self.name
        )
    }
}

/// `POST /v1/users/{user_id}/authentications`: ask the user's device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateAuthenticationRequest {
    /// Approval, transaction or silent verification.
    pub kind: AuthenticationKind,
    /// The device to ask; by default the user's primary device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_id: Option<EnrollmentId>,
    /// The headline shown (transactions; approvals default to "Sign in to `<app>`?").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Ordered fields shown to the user (transactions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<DisplayField>,
    /// Fields bound but not shown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hidden_fields: Vec<DisplayField>,
    /// The accessing device's IP address, shown to the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accessing_ip: Option<String>,
    /// A location text for the accessing device, shown to the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accessing_location: Option<String>,
    /// An icon URL for the application, shown to the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_icon_url: Option<String>,
    /// Seconds until it expires (10 to 900; default 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u32>,
    /// Number matching: the answer must carry the number the web page shows
    /// (`number_to_show` in the status). `"choice"` (the device offers three numbers),
    /// `"typed"` (the user types the number on the device) or `"off"`; the older booleans are
    /// still accepted (`true` is `"choice"`, `false` is `"off"`). Absent: the application's
    /// setting.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "number_matching_or_bool"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<NumberMatching>))]
    pub number_matching: Option<NumberMatching>,
    /// The answer must be signed with the user-verification key (biometrics or device PIN).
    #[serde(default)]
    pub require_user_verification: bool,
    /// "Use code": the user may answer straight away with a one-time passcode from the app
    /// instead of waiting for the push (`POST /v1/authentications/{id}/otp`). Overrides the
    /// application's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_code: Option<bool>,
    /// OTP fallback: once the push cannot be delivered, or is not answered within
    /// `otp_fallback_after` seconds, the user may answer with a one-time passcode from the app.
    /// Overrides the application's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp_fallback: Option<bool>,
    /// Seconds without an answer after which OTP fallback accepts a passcode (1 to 900).
    /// Overrides the application's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp_fallback_after: Option<u32>,
    /// Backup channels (SMS, voice, email) through which a one-time passcode may be sent for
    /// this authentication (`POST /v1/authentications/{id}/backup-codes`). Overrides the
    /// application's list (the connector's `SMSBackup`, `phoneBackup`, `emailBackup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_channels: Option<Vec<BackupChannel>>,
    /// The language (BCP 47) for the server's own texts in this request (the default headline,
    /// backup-code messages); before the user's preferred language. Customer texts
    /// (`message`, fields) are never translated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
}

impl CreateAuthenticationRequest {
    /// A request of `kind` with every option at its default.
    pub fn new(kind: AuthenticationKind) -> Self {
        Self {
            kind,
            enrollment_id: None,
            message: None,
            fields: Vec::new(),
            hidden_fields: Vec::new(),
            accessing_ip: None,
            accessing_location: None,
            application_icon_url: None,
            expires_in: None,
            number_matching: None,
            require_user_verification: false,
            use_code: None,
            otp_fallback: None,
            otp_fallback_after: None,
            backup_channels: None,
            locale: None,
        }
    }
}

/// `number_matching` as a mode word or, as before the typed mode, a boolean.
pub(crate) fn number_matching_or_bool<'de, D>(
    deserializer: D,
) -> Result<Option<NumberMatching>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ModeOrBool {
        Bool(bool),
        Mode(NumberMatching),
    }
    Ok(
        match Option::<ModeOrBool>::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(
                "number_matching must be \"choice\", \"typed\", \"off\" or a boolean",
            )
        })? {
            None => None,
            Some(ModeOrBool::Bool(true)) => Some(NumberMatching::Choice),
            Some(ModeOrBool::Bool(false)) => Some(NumberMatching::Off),
            Some(ModeOrBool::Mode(mode)) => Some(mode),
        },
    )
}

/// A channel that carries a one-time passcode to the user when no device can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum BackupChannel {
    /// A text message to the user's phone (through the application's SMS provider webhook).
    Sms,
    /// A voice call to the user's phone (through the same provider webhook).
    Voice,
    /// An email (SMTP).
    Email,
}

impl BackupChannel {
    /// Every channel.
    pub const ALL: [BackupChannel; 3] = [Self::Sms, Self::Voice, Self::Email];

    /// The wire text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Voice => "voice",
            Self::Email => "email",
        }
    }

    /// Parses the wire text.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// `pingid.authentication.type` of a passcode received this way.
    pub fn authentication_type(self) -> &'static str {
        match self {
            Self::Sms => "SMS",
            Self::Voice => "VOICE",
            Self::Email => "EMAIL",
        }
    }
}

/// An authentication method an application can make mandatory (PingID's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AuthenticationMethod {
    /// A paired mobile device (an active enrollment).
    PingidMobile,
    /// A desktop OTP token (`desktop_otp`).
    PingidDesktop,
    /// A phone number for SMS.
    Sms,
    /// A phone number for voice calls.
    Voice,
    /// An email address.
    Email,
    /// An authenticator app (`totp` token).
    Totp,
    /// A FIDO security key (not registrable on this server yet).
    SecurityKey,
    /// A FIDO platform authenticator (not registrable on this server yet).
    Platform,
    /// A YubiKey in OATH mode (`yubikey` token).
    Yubikey,
    /// A hardware OATH token (`oath_token`).
    OathToken,
}

impl AuthenticationMethod {
    /// Every method.
    pub const ALL: [AuthenticationMethod; 10] = [
        Self::PingidMobile,
        Self::PingidDesktop,
        Self::Sms,
        Self::Voice,
        Self::Email,
        Self::Totp,
        Self::SecurityKey,
        Self::Platform,
        Self::Yubikey,
        Self::OathToken,
    ];

    /// The wire text (`PINGID_MOBILE`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PingidMobile => "PINGID_MOBILE",
            Self::PingidDesktop => "PINGID_DESKTOP",
            Self::Sms => "SMS",
            Self::Voice => "VOICE",
            Self::Email => "EMAIL",
            Self::Totp => "TOTP",
            Self::SecurityKey => "SECURITY_KEY",
            Self::Platform => "PLATFORM",
            Self::Yubikey => "YUBIKEY",
            Self::OathToken => "OATH_TOKEN",
        }
    }

    /// Parses the wire text (case-insensitive, `-` and `_` alike).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_uppercase().replace('-', "_");
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// Why an authentication accepts a one-time passcode now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OtpReason {
    /// "Use code": accepted from the start.
    UseCode,
    /// OTP fallback: the push could not be delivered to any of the user's devices.
    PushUndelivered,
    /// OTP fallback: the push was not answered in time.
    PushUnanswered,
}

/// An authentication as the customer sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuthenticationStatus {
    /// Its id.
    pub authentication_id: AuthenticationId,
    /// The user asked.
    pub user_id: UserId,
    /// The device asked.
    pub enrollment_id: EnrollmentId,
    /// The kind.
    pub kind: AuthenticationKind,
    /// The state.
    pub state: AuthenticationState,
    /// The device's decision, once answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// Number matching: the number to show on the web page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_to_show: Option<u32>,
    /// Number matching: how the user gives the number (`choice` or `typed`; `off` without
    /// number matching).
    #[serde(default)]
    pub number_matching: NumberMatching,
    /// Why it was denied, when its state is `denied`: `declined`, `reported_fraud`, or
    /// `wrong_number` (the device answered with another number than the one shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denial_reason: Option<DenialReason>,
    /// When it expires.
    pub expires_at: UnixSeconds,
    /// When it was answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<UnixSeconds>,
    /// The authentication attributes (`pingid.authentication.*`), once answered.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub attributes: std::collections::BTreeMap<String, serde_json::Value>,
    /// The server-signed request, for the relying party to verify itself.
    pub signed_request: String,
    /// The device-signed answer, once answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_response: Option<String>,
    /// Why it failed (`device_unpaired`), when its state is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Whether a one-time passcode from the user's app answers it now
    /// (`POST /v1/authentications/{id}/otp`): "use code", or OTP fallback in force.
    #[serde(default)]
    pub otp_accepted: bool,
    /// Why a passcode is accepted, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp_reason: Option<OtpReason>,
    /// The backup channels a passcode may be sent through for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backup_channels: Vec<BackupChannel>,
    /// The application's policy decision for it, when the application has a policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::PolicyOutcome>,
}

/// `GET /v1/device/enrollments/{enrollment_id}/requests`: the device's pending requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PendingRequests {
    /// Signed [`crate::authentication::AuthenticationRequest`]s, oldest first.
    pub requests: Vec<String>,
}

/// `POST /v1/device/authentications/{authentication_id}/response`: the device's signed answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubmitResponse {
    /// The signed [`crate::authentication::AuthenticationResponse`].
    pub response: String,
}

/// `PUT /v1/device/enrollments/{enrollment_id}/push` (device-signed): the device's new push
/// registration, e.g. after FCM or APNs issued a fresh token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdatePushRequest {
    /// How the server can push to this device from now on.
    pub push: PushRegistration,
}

/// The outcome recorded for a submitted answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResponseRecorded {
    /// The authentication.
    pub authentication_id: AuthenticationId,
    /// Its state after the answer.
    pub state: AuthenticationState,
    /// Why it is denied, when it is: `wrong_number` when an approval carried another number
    /// than the one shown (the request ended; it cannot be answered again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denial_reason: Option<DenialReason>,
}

/// `POST /v1/qr-sessions`: a QR login session for a web page. Every field is optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateQrSession {
    /// Only this user may answer (the page knows who is signing in); otherwise whoever scans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// The browser's IP address, shown on the device and reported in the attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accessing_ip: Option<String>,
    /// A location text for the browser, shown on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accessing_location: Option<String>,
    /// The application's icon URL, shown on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_icon_url: Option<String>,
    /// Seconds until the session expires (30 to 900; default 300). The QR code inside it is
    /// renewed every minute while nobody has scanned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u32>,
    /// Where the login page goes once approved (`http(s)://`; `?qr_session=<id>` is appended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
}

/// The answer to `POST /v1/qr-sessions`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QrSessionCreated {
    /// The session.
    pub session_id: crate::qr::QrSessionId,
    /// The QR code's content (`tessera://qr?server=…&token=…`), for a page that draws it itself.
    pub qr_uri: String,
    /// The browser's secret for the session: it reads the session's progress and renews the code
    /// with it, and can do nothing else. Give it to the page only.
    pub browser_token: String,
    /// The server's login page for this session (the browser token travels in the fragment,
    /// which browsers never send to a server).
    pub login_page_url: String,
    /// When the session expires.
    pub expires_at: UnixSeconds,
}

impl std::fmt::Debug for QrSessionCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QrSessionCreated")
            .field("session_id", &self.session_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A QR session as the customer sees it (`GET /v1/qr-sessions/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QrSessionStatus {
    /// The session.
    pub session_id: crate::qr::QrSessionId,
    /// Where it stands.
    pub state: crate::qr::QrSessionState,
    /// The device that scanned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    /// The user who answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// The enrollment that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_id: Option<EnrollmentId>,
    /// The decision, once answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// When it expires.
    pub expires_at: UnixSeconds,
    /// When it was answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<UnixSeconds>,
    /// The follow-up the application's QR policy asked for (a silent verification or a push
    /// approval), once the user approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_up: Option<crate::ids::AuthenticationId>,
    /// The authentication attributes (`pingid.authentication.*`), once approved.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub attributes: std::collections::BTreeMap<String, serde_json::Value>,
    /// The server-signed context the device was shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_context: Option<String>,
    /// The device-signed answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_response: Option<String>,
    /// Number matching of the follow-up approval (state `verifying`): the number the page
    /// shows; the user picks or types it on the phone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_to_show: Option<u32>,
    /// Why it was denied (state `denied`): `declined` or `reported_fraud` on the QR answer or
    /// the follow-up, `wrong_number` when the follow-up was answered with another number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denial_reason: Option<DenialReason>,
    /// The application's latest policy decision for the session (made when it was scanned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::PolicyOutcome>,
}

/// `POST /v1/device/qr-sessions/claim` (device-signed): the scanning device claims the session
/// named by the QR token, listing its enrollments on this server.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimQrSession {
    /// The token from the QR code.
    pub token: String,
    /// The device's enrollments on this server (the users who might answer).
    pub enrollment_ids: Vec<EnrollmentId>,
}

impl std::fmt::Debug for ClaimQrSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimQrSession")
            .field("enrollment_ids", &self.enrollment_ids)
            .finish_non_exhaustive()
    }
}

/// The answer to a claim: the signed [`crate::qr::QrSessionContext`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QrSessionClaimed {
    /// The signed context.
    pub context: String,
}

/// `POST /v1/device/qr-sessions/{id}/response`: the device's signed answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubmitQrResponse {
    /// The signed [`crate::qr::QrResponse`].
    pub response: String,
}

/// The outcome recorded for a QR answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QrAnswerRecorded {
    /// The session.
    pub session_id: crate::qr::QrSessionId,
    /// Its state after the answer (`verifying` while a follow-up is pending).
    pub state: crate::qr::QrSessionState,
    /// The follow-up request sent to the device, if the policy asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_up: Option<crate::ids::AuthenticationId>,
}

/// What the login page reads (`GET /v1/qr-browser?wait=N&seen=V`, with the browser token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QrBrowserStatus {
    /// Where the session stands.
    pub state: crate::qr::QrSessionState,
    /// Changes whenever anything the page shows changes (state or code).
    pub version: i64,
    /// The current QR content, while it can still be scanned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr_uri: Option<String>,
    /// The current QR code as an SVG document, while it can still be scanned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr_svg: Option<String>,
    /// When the current code stops working (the page renews it before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_expires_at: Option<UnixSeconds>,
    /// When the session expires.
    pub expires_at: UnixSeconds,
    /// The application's name.
    pub application_name: String,
    /// Where to go once approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
    /// Number matching of the follow-up approval (state `verifying`): the number to show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_to_show: Option<u32>,
    /// Why it was denied (state `denied`), e.g. `wrong_number`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denial_reason: Option<DenialReason>,
}

/// `POST /v1/users/{user_id}/otp/verify`: check a one-time passcode from one of the user's
/// devices (`MOBILE_APP_OTP`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VerifyOtpRequest {
    /// The code the user typed (6 to 8 digits; spaces are ignored).
    pub code: String,
}

impl std::fmt::Debug for VerifyOtpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifyOtpRequest { code: <redacted> }")
    }
}

/// A passcode was accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OtpVerified {
    /// The user.
    pub user_id: UserId,
    /// The enrollment whose seed produced the code (`MOBILE_APP_OTP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_id: Option<EnrollmentId>,
    /// The OATH token that produced the code (`DESKTOP_OTP`, `OATH_TOKEN`, `YUBIKEY`,
    /// `AUTHENTICATOR_APP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// The authentication attributes (`pingid.authentication.type` = `MOBILE_APP_OTP`, the
    /// authenticating device's id, model, OS and app version).
    pub attributes: std::collections::BTreeMap<String, serde_json::Value>,
}

/// `PUT /v1/users/{user_id}/backup-contacts`: the phone number (E.164, `+` and 8 to 15 digits)
/// and email address backup passcodes go to. An absent field removes that contact. The answer
/// shows them masked.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupContacts {
    /// The phone number for SMS and voice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// The email address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl std::fmt::Debug for BackupContacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupContacts")
            .field("phone", &self.phone.is_some())
            .field("email", &self.email.is_some())
            .finish()
    }
}

/// `POST /v1/authentications/{id}/backup-codes`: send a one-time passcode for this
/// authentication through a backup channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendBackupCode {
    /// The channel.
    pub channel: BackupChannel,
}

/// `POST /v1/users/{user_id}/otp-challenges`: send a one-time passcode outside any push
/// authentication. Without `phone`/`email` it goes to the user's registered contact for the
/// channel (a backup sign-in; the channel must be one of the application's backup channels).
/// With one, it is a *one-time device authentication*: the code goes to the number or address
/// given, which is not registered and not kept (only a masked form is).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateOtpChallenge {
    /// The channel.
    pub channel: BackupChannel,
    /// One-time device: the phone number (E.164) for `sms` or `voice`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// One-time device: the email address for `email`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl std::fmt::Debug for CreateOtpChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateOtpChallenge")
            .field("channel", &self.channel)
            .field(
                "one_time_device",
                &(self.phone.is_some() || self.email.is_some()),
            )
            .finish()
    }
}

/// A one-time passcode was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OtpChallenge {
    /// The challenge (`otc_…`): verify a standalone one at
    /// `POST /v1/otp-challenges/{challenge_id}/verify`.
    pub challenge_id: String,
    /// The channel it went through.
    pub channel: BackupChannel,
    /// Where it went, masked (`+*******4567`, `a****@example.com`).
    pub destination: String,
    /// The authentication it answers, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_id: Option<AuthenticationId>,
    /// Whether the destination was given for this one authentication (one-time device).
    #[serde(default)]
    pub one_time_device: bool,
    /// When the code expires.
    pub expires_at: UnixSeconds,
}

/// A standalone challenge's code was accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OtpChallengeVerified {
    /// The challenge.
    pub challenge_id: String,
    /// The user.
    pub user_id: UserId,
    /// The authentication attributes (`pingid.authentication.type` = `SMS`, `VOICE` or `EMAIL`).
    pub attributes: std::collections::BTreeMap<String, serde_json::Value>,
}

/// The kind of an OATH token registered for a user (which `pingid.authentication.type` its
/// codes report, and which mandatory method it satisfies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OtpTokenKind {
    /// A desktop OTP app (`DESKTOP_OTP`, method `PINGID_DESKTOP`).
    DesktopOtp,
    /// A hardware OATH token (`OATH_TOKEN`).
    OathToken,
    /// A YubiKey in OATH-HOTP or OATH-TOTP mode (`YUBIKEY`).
    Yubikey,
    /// An authenticator app (`AUTHENTICATOR_APP`, method `TOTP`).
    Totp,
}

impl OtpTokenKind {
    /// Every kind.
    pub const ALL: [OtpTokenKind; 4] =
        [Self::DesktopOtp, Self::OathToken, Self::Yubikey, Self::Totp];

    /// The wire text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DesktopOtp => "desktop_otp",
            Self::OathToken => "oath_token",
            Self::Yubikey => "yubikey",
            Self::Totp => "totp",
        }
    }

    /// Parses the wire text.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// `pingid.authentication.type` of its codes.
    pub fn authentication_type(self) -> &'static str {
        match self {
            Self::DesktopOtp => "DESKTOP_OTP",
            Self::OathToken => "OATH_TOKEN",
            Self::Yubikey => "YUBIKEY",
            Self::Totp => "AUTHENTICATOR_APP",
        }
    }

    /// The mandatory method it satisfies.
    pub fn method(self) -> AuthenticationMethod {
        match self {
            Self::DesktopOtp => AuthenticationMethod::PingidDesktop,
            Self::OathToken => AuthenticationMethod::OathToken,
            Self::Yubikey => AuthenticationMethod::Yubikey,
            Self::Totp => AuthenticationMethod::Totp,
        }
    }
}

/// The HMAC of an OATH token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OtpAlgorithm {
    /// HMAC-SHA-1.
    #[default]
    Sha1,
    /// HMAC-SHA-256.
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
}

impl OtpAlgorithm {
    /// The wire text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
            Self::Sha512 => "SHA512",
        }
    }

    /// Parses the wire text.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Sha1, Self::Sha256, Self::Sha512]
            .into_iter()
            .find(|a| a.as_str() == s)
    }

    /// The hash [`crate::otp::hotp`] takes.
    pub fn hash(self) -> crate::otp::OtpHash {
        match self {
            Self::Sha1 => crate::otp::OtpHash::Sha1,
            Self::Sha256 => crate::otp::OtpHash::Sha256,
            Self::Sha512 => crate::otp::OtpHash::Sha512,
        }
    }
}

/// `POST /v1/users/{user_id}/otp-tokens`: register an OATH token whose seed is known. TOTP
/// unless `counter` is given (then HOTP). The seed is never returned or logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterOtpToken {
    /// The kind.
    pub kind: OtpTokenKind,
    /// The seed, base32 (RFC 4648, padding and spaces optional), 16 to 64 bytes.
    pub secret: String,
    /// The HMAC (default SHA1).
    #[serde(default)]
    pub algorithm: OtpAlgorithm,
    /// Digits per code (6 to 8; default 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digits: Option<u32>,
    /// TOTP period in seconds (default 30; not with `counter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<u32>,
    /// HOTP: the token's next counter value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter: Option<u64>,
}

impl std::fmt::Debug for RegisterOtpToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterOtpToken")
            .field("kind", &self.kind)
            .field("secret", &"<redacted>")
            .field("algorithm", &self.algorithm)
            .field("digits", &self.digits)
            .field("period", &self.period)
            .field("counter", &self.counter)
            .finish()
    }
}

/// A registered OATH token (never its seed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OtpToken {
    /// Its id (`otk_…`).
    pub token_id: String,
    /// The kind.
    pub kind: OtpTokenKind,
    /// The HMAC.
    pub algorithm: OtpAlgorithm,
    /// Digits per code.
    pub digits: u32,
    /// TOTP period in seconds (absent for HOTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<u32>,
    /// Whether it is counter based (HOTP).
    pub hotp: bool,
    /// When it was registered.
    pub created_at: UnixSeconds,
}

/// `GET /v1/users/{user_id}/otp-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OtpTokenList {
    /// The user's tokens, oldest first.
    pub tokens: Vec<OtpToken>,
}

/// `GET` / `PUT /v1/application/authentication-settings`: the calling application's number
/// matching mode and push-bombing limits. A limit left out (or `null`) uses the server-wide
/// value (`--max-pending-authentications-per-user` and the like).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuthenticationSettings {
    /// The number matching mode of push authentications, QR follow-up approvals and CIBA
    /// requests that do not choose one (`off`, `choice` or `typed`).
    #[serde(default)]
    pub number_matching: NumberMatching,
    /// How many user-facing requests one user may have pending at once (1 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_per_user: Option<u32>,
    /// How many unanswered or denied user-facing requests one user may have had in the window
    /// before more are refused (1 to 1000). Approved requests do not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unapproved_per_user: Option<u32>,
    /// The window of `max_unapproved_per_user`, in seconds (60 to 86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_bombing_window_seconds: Option<u32>,
}

/// The application's authentication settings as stored, and the limits in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuthenticationSettingsView {
    /// The settings as stored (a limit left out uses the server-wide value).
    pub settings: AuthenticationSettings,
    /// The limits in force: the application's where set, else the server-wide values.
    pub effective: PushBombingLimits,
}

/// The push-bombing limits in force for an application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushBombingLimits {
    /// User-facing requests one user may have pending at once.
    pub max_pending_per_user: u32,
    /// Unanswered or denied user-facing requests one user may have had in the window.
    pub max_unapproved_per_user: u32,
    /// The window, in seconds.
    pub window_seconds: u32,
}

/// What an application asks of platform attestation at pairing
/// (`GET` / `PUT /v1/application/attestation-settings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AttestationMode {
    /// Attestations are ignored (not verified, nothing recorded).
    #[default]
    Off,
    /// Attestations are verified and what they prove is recorded; a pairing without a valid one
    /// is still accepted (and recorded as not attested).
    Report,
    /// A pairing is refused (`attestation_required`) unless it carries a valid attestation of
    /// hardware-backed keys (Android: TEE or StrongBox, user-verification key bound to user
    /// authentication, verified boot) or of the app (Apple App Attest) by a registered app.
    Require,
}

/// An Android app whose key attestations an application accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AndroidAppIdentity {
    /// The package name, e.g. `com.example.bank`.
    pub package_name: String,
    /// SHA-256 digests of the app's signing certificates, lowercase hex (64 characters); the
    /// attested app must be signed by one of them.
    pub signing_cert_digests: Vec<String>,
}

/// An iOS app whose App Attest attestations an application accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppleAppIdentity {
    /// The Apple developer team id (10 characters).
    pub team_id: String,
    /// The bundle id, e.g. `com.example.bank`.
    pub bundle_id: String,
    /// `true`: the app uses the App Attest development environment (`appattestdevelop`);
    /// `false`: production (`appattest`). Only the configured one is accepted.
    #[serde(default)]
    pub development: bool,
}

/// An application's attestation settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttestationSettings {
    /// `off`, `report` or `require`.
    #[serde(default)]
    pub mode: AttestationMode,
    /// The Android apps (package and signing certificate digests) accepted.
    #[serde(default)]
    pub android_apps: Vec<AndroidAppIdentity>,
    /// The iOS apps (team and bundle id) accepted.
    #[serde(default)]
    pub apple_apps: Vec<AppleAppIdentity>,
}

/// The platform whose attestation an enrollment carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AttestationPlatform {
    /// Android Key Attestation of the two enrollment keys.
    Android,
    /// Apple App Attest of the app.
    Ios,
}

/// Where attested keys live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AttestationSecurityLevel {
    /// Android software key store: no hardware protection.
    Software,
    /// Android Trusted Execution Environment.
    TrustedEnvironment,
    /// Android StrongBox (a separate secure element).
    StrongBox,
    /// The Apple Secure Enclave (App Attest keys).
    SecureEnclave,
}

/// The verified-boot state an Android attestation reports (its RootOfTrust).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum BootState {
    /// Locked bootloader, verified boot with the manufacturer's key.
    Verified,
    /// Locked bootloader, boot verified with a user-installed key.
    SelfSigned,
    /// Unlocked bootloader, or boot not verified.
    Unverified,
    /// Verification failed.
    Failed,
}

/// What a pairing's platform attestation proved, as recorded on the enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollmentAttestation {
    /// The attestation's platform.
    pub platform: AttestationPlatform,
    /// Where the attested keys live (the lower of the two Android keys).
    pub security_level: AttestationSecurityLevel,
    /// The user-verification key is proven to require user authentication (Android:
    /// `userAuthType` set and `noAuthRequired` absent). App Attest does not prove it.
    pub user_verification_bound: bool,
    /// The attested app is one the application registered (package and signing certificate,
    /// or team and bundle id).
    pub app_verified: bool,
    /// The verified-boot state (Android only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_state: Option<BootState>,
    /// Everything `require` asks for holds: hardware keys, a verified app, and on Android a
    /// user-verification key bound to user authentication and a verified boot.
    pub attested: bool,
}
