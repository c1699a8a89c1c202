//! Authentication flows: a state machine a customer backend (or a PingFederate-style adapter)
//! steps through with `POST /v1/flows`, `GET /v1/flows/{id}` and `POST /v1/flows/{id}`.
//!
//! A flow authenticates one user of one application. Each answer carries the flow's
//! [`FlowStatus`], the data that status needs (the devices to pick from, the number to show, the
//! server payload to hand to the app) and the [`FlowAction`]s allowed next. The names follow the
//! PingFederate Authentication API and the PingID SDK adapter: `AUTHENTICATION_REQUIRED`,
//! `DEVICE_SELECTION_REQUIRED`, `PUSH_CONFIRMATION_WAITING`, … and `authenticate`,
//! `selectDevice`, `useCode`, `checkOtp`, ….

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::{AuthenticationMethod, BackupChannel};
use crate::authentication::{AuthenticationId, DisplayField};
pub use crate::ids::FlowId;
use crate::ids::{EnrollmentId, UserId};
use crate::time::UnixSeconds;

/// Where a flow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum FlowStatus {
    /// Created: `authenticate` starts it (with a mobile payload, it pairs the app's device).
    AuthenticationRequired,
    /// The user has several devices: `selectDevice` picks one (`devices` lists them).
    DeviceSelectionRequired,
    /// A push is on its way to the user's phone; `poll` waits for the answer (`push` says
    /// which request and, with number matching, the number to show).
    PushConfirmationWaiting,
    /// The user denied the push.
    PushConfirmationRejected,
    /// Nobody answered the push in time.
    PushConfirmationTimedOut,
    /// A one-time passcode is expected: `checkOtp` (`otp` says from where).
    OtpRequired,
    /// The app's device is being paired: hand `pairing.server_payload` to the app, then
    /// `continueAuthentication`.
    MobilePairingRequired,
    /// The user lacks methods the application makes mandatory (`mfa_setup` lists them).
    MfaSetupRequired,
    /// Done: the user is authenticated (or the device paired); `result` says how.
    MfaCompleted,
    /// Done: the user is not authenticated; `result` says why.
    MfaFailed,
    /// Done: the flow was cancelled.
    Canceled,
    /// A FIDO authenticator is asked: pass `fido.request_options` to
    /// `navigator.credentials.get`, then `checkAssertion` with the credential.
    AssertionRequired,
}

impl FlowStatus {
    /// Every status.
    pub const ALL: [FlowStatus; 12] = [
        Self::AuthenticationRequired,
        Self::DeviceSelectionRequired,
        Self::PushConfirmationWaiting,
        Self::PushConfirmationRejected,
        Self::PushConfirmationTimedOut,
        Self::OtpRequired,
        Self::MobilePairingRequired,
        Self::MfaSetupRequired,
        Self::MfaCompleted,
        Self::MfaFailed,
        Self::Canceled,
        Self::AssertionRequired,
    ];

    /// The wire text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthenticationRequired => "AUTHENTICATION_REQUIRED",
            Self::DeviceSelectionRequired => "DEVICE_SELECTION_REQUIRED",
            Self::PushConfirmationWaiting => "PUSH_CONFIRMATION_WAITING",
            Self::PushConfirmationRejected => "PUSH_CONFIRMATION_REJECTED",
            Self::PushConfirmationTimedOut => "PUSH_CONFIRMATION_TIMED_OUT",
            Self::OtpRequired => "OTP_REQUIRED",
            Self::MobilePairingRequired => "MOBILE_PAIRING_REQUIRED",
            Self::MfaSetupRequired => "MFA_SETUP_REQUIRED",
            Self::MfaCompleted => "MFA_COMPLETED",
            Self::MfaFailed => "MFA_FAILED",
            Self::Canceled => "CANCELED",
            Self::AssertionRequired => "ASSERTION_REQUIRED",
        }
    }

    /// Parses the wire text.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Whether the flow is over (no action moves it any more).
    pub fn is_final(self) -> bool {
        matches!(self, Self::MfaCompleted | Self::MfaFailed | Self::Canceled)
    }
}

/// What a client can do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum FlowActionName {
    /// Start (or retry) the authentication; with `mobile_payload`, pair the app's device.
    Authenticate,
    /// Pick one of `devices`.
    SelectDevice,
    /// Type the app's passcode instead of waiting for the push.
    UseCode,
    /// Check a one-time passcode.
    CheckOtp,
    /// Send the SMS, voice or email passcode again.
    ResendOtp,
    /// Wait for the push answer (or the pairing's verification).
    Poll,
    /// Cancel the flow.
    CancelAuthentication,
    /// Go on after the app paired, after a timed-out push, or after setting up methods.
    ContinueAuthentication,
    /// Complete the flow with one of the user's single-use recovery codes.
    CheckRecoveryCode,
    /// Check a FIDO assertion (`ASSERTION_REQUIRED`).
    CheckAssertion,
    /// Start registering a FIDO authenticator for a missing mandatory method
    /// (`MFA_SETUP_REQUIRED`).
    StartRegistration,
    /// Check the new FIDO credential (`MFA_SETUP_REQUIRED`, after `startRegistration`).
    CheckRegistration,
    /// Sign in by scanning a QR code with the app instead (a QR login session bound to the
    /// flow's user); again, a fresh code.
    UseQrCode,
}

impl FlowActionName {
    /// The wire text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authenticate => "authenticate",
            Self::SelectDevice => "selectDevice",
            Self::UseCode => "useCode",
            Self::CheckOtp => "checkOtp",
            Self::ResendOtp => "resendOtp",
            Self::Poll => "poll",
            Self::CancelAuthentication => "cancelAuthentication",
            Self::ContinueAuthentication => "continueAuthentication",
            Self::CheckRecoveryCode => "checkRecoveryCode",
            Self::CheckAssertion => "checkAssertion",
            Self::StartRegistration => "startRegistration",
            Self::CheckRegistration => "checkRegistration",
            Self::UseQrCode => "useQrCode",
        }
    }
}

/// `POST /v1/flows/{id}`: one action with its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum FlowAction {
    /// Start the authentication; with the app's mobile payload, pair its device instead
    /// (automatic device registration).
    Authenticate {
        /// The core's mobile payload (automatic device registration in a web view).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mobile_payload: Option<String>,
        /// A trusted device's signed authorization of this flow
        /// (`Authenticator::create_authorization_payload`): seamless device authorization.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        authorization_payload: Option<String>,
    },
    /// Pick a device from `devices`.
    SelectDevice {
        /// The `id` of one of the flow's `devices`.
        device_id: String,
    },
    /// Switch to typing the app's passcode.
    UseCode {},
    /// Check a one-time passcode.
    CheckOtp {
        /// The passcode as typed.
        otp: String,
    },
    /// Send the passcode again (SMS, voice, email).
    ResendOtp {},
    /// Wait up to `wait` seconds (at most 30) for the flow to move.
    Poll {
        /// Seconds to wait.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait: Option<u64>,
    },
    /// Cancel.
    CancelAuthentication {},
    /// Go on.
    ContinueAuthentication {},
    /// Complete the flow with one of the user's single-use recovery codes.
    CheckRecoveryCode {
        /// The recovery code as typed (dashes, spaces and case are ignored).
        recovery_code: String,
    },
    /// Check a FIDO assertion: the credential `navigator.credentials.get` returned, as JSON
    /// (`id`, `rawId`, `type`, `response` with `authenticatorData`, `clientDataJSON`,
    /// `signature`, `userHandle`, all base64url).
    CheckAssertion {
        /// The credential, as JSON.
        #[cfg_attr(feature = "openapi", schema(value_type = Object))]
        credential: serde_json::Value,
    },
    /// Start registering a FIDO authenticator for a missing mandatory method: `SECURITY_KEY`
    /// (a roaming key) or `PLATFORM` (the device's own authenticator).
    StartRegistration {
        /// Which method.
        method: AuthenticationMethod,
    },
    /// Check the new credential `navigator.credentials.create` returned, as JSON.
    CheckRegistration {
        /// The credential, as JSON.
        #[cfg_attr(feature = "openapi", schema(value_type = Object))]
        credential: serde_json::Value,
        /// A name for it (default: the kind of authenticator).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nickname: Option<String>,
    },
    /// Show a QR code the flow's user scans with the app (a fresh one if one is shown).
    UseQrCode {},
}

impl FlowAction {
    /// The action's name.
    pub fn name(&self) -> FlowActionName {
        match self {
            Self::Authenticate { .. } => FlowActionName::Authenticate,
            Self::SelectDevice { .. } => FlowActionName::SelectDevice,
            Self::UseCode {} => FlowActionName::UseCode,
            Self::CheckOtp { .. } => FlowActionName::CheckOtp,
            Self::ResendOtp {} => FlowActionName::ResendOtp,
            Self::Poll { .. } => FlowActionName::Poll,
            Self::CancelAuthentication {} => FlowActionName::CancelAuthentication,
            Self::ContinueAuthentication {} => FlowActionName::ContinueAuthentication,
            Self::CheckRecoveryCode { .. } => FlowActionName::CheckRecoveryCode,
            Self::CheckAssertion { .. } => FlowActionName::CheckAssertion,
            Self::StartRegistration { .. } => FlowActionName::StartRegistration,
            Self::CheckRegistration { .. } => FlowActionName::CheckRegistration,
            Self::UseQrCode {} => FlowActionName::UseQrCode,
        }
    }
}

/// `POST /v1/flows`: start a flow for a user the customer's first factor authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateFlowRequest {
    /// The customer's id for the user (the one the customer's first factor authenticated).
    /// Required, unless `passkey` starts a sign-in without a user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// The application name shown on the phone (default: the application's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
    /// An icon URL for the application, shown on the phone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_icon_url: Option<String>,
    /// The accessing device's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accessing_ip: Option<String>,
    /// The accessing device's user agent (recorded with the flow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The headline shown on the phone; with `fields`, the push is a transaction approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Transaction fields shown on the phone, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<DisplayField>,
    /// Number matching on the push: `choice`, `typed` or `off` (or, as for authentications, a
    /// boolean); by default the application's mode.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::api::number_matching_or_bool"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::authentication::NumberMatching>))]
    pub number_matching: Option<crate::authentication::NumberMatching>,
    /// `useCode`: the user may type the app's passcode instead of waiting (default: the
    /// application's setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_code: Option<bool>,
    /// `otp_fallback`: after a push times out, the app's passcode is accepted (default: the
    /// application's setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp_fallback: Option<bool>,
    /// `SMSBackup`: offer a passcode by SMS to the user's phone (default: the application's
    /// backup channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms_backup: Option<bool>,
    /// `phoneBackup`: offer a passcode by voice call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice_backup: Option<bool>,
    /// `emailBackup`: offer a passcode by email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_backup: Option<bool>,
    /// `AdminMessage`: a message from the administrator, shown by the client with the flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_message: Option<String>,
    /// `mandatoryAuthenticationMethods`: methods the user must have registered, added to the
    /// application's list (a flow can ask for more, never for less).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mandatory_methods: Vec<AuthenticationMethod>,
    /// Seconds the flow lives (60 to 3600; default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u32>,
    /// Whether `authenticate` pushes to the primary phone straight away or lets the user pick
    /// a device first (default: `default_to_primary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_selection: Option<DeviceSelection>,
    /// Run the flow on the server's hosted prompt page: the answer's `prompt_url` is where to
    /// send the user's browser; the page goes back to `return_url` once the flow is over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosted: Option<HostedPrompt>,
    /// Sign in with a passkey, without a user name: with no `user_id`, the flow starts in
    /// `ASSERTION_REQUIRED` with an empty allow list and user verification required; the
    /// passkey the user picks names the user (`user_id` of the flow once completed). Only for
    /// applications whose FIDO settings have `discoverable_credentials` (else
    /// `passkeys_not_enabled`); never together with `user_id`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passkey: bool,
}

/// The longest `return_url` a hosted prompt accepts, in bytes.
pub const HOSTED_RETURN_URL_MAX_BYTES: usize = 2048;

/// A flow run by the user's browser on the hosted prompt page (`{public_url}/prompt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostedPrompt {
    /// Where the page sends the browser once the flow is over, exactly as given (nothing is
    /// appended): an absolute `https` URL (`http` only on a loopback host), no fragment, at most
    /// [`HOSTED_RETURN_URL_MAX_BYTES`] bytes. The caller checks the flow's status server-side.
    pub return_url: String,
    /// The languages to show the page in (BCP 47 tags, preferred first); without them, the
    /// browser's `Accept-Language`; English when none is shipped.
    #[serde(default)]
    pub ui_locales: Vec<String>,
    /// The page is opened in an app's web view and speaks the web-view contract with the app
    /// (automatic device registration, seamless device authorization): see [`WebViewPrompt`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_view: Option<WebViewPrompt>,
}

/// The longest private-use URI scheme a web-view flow accepts, in bytes.
pub const WEB_VIEW_SCHEME_MAX_BYTES: usize = 64;

/// The longest an app may take to answer the page, in seconds (and the default).
pub const WEB_VIEW_TIMEOUT_MAX_SECONDS: u32 = 120;
/// How long the page waits for the app's answer by default, in seconds.
pub const WEB_VIEW_TIMEOUT_DEFAULT_SECONDS: u32 = 15;

/// How the hosted page and the app that shows it in its web view exchange payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum WebViewMode {
    /// A JavaScript bridge: the page posts to `window.TesseraBridge` (Android
    /// `addWebMessageListener`) or `window.webkit.messageHandlers.tessera` (iOS); the app
    /// answers through `TesseraBridge.onmessage` or `window.TesseraPrompt.receive(…)`.
    Bridge,
    /// A redirect to the app's own private-use scheme (`<scheme>://tessera/<name>?…`); the
    /// app answers by loading the page's return URL with the result in the fragment.
    Scheme,
}

/// A hosted flow opened in an app's web view (`hosted.web_view`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebViewPrompt {
    /// How the page talks to the app.
    pub mode: WebViewMode,
    /// `scheme` mode only (and then required): the app's private-use URI scheme in reverse
    /// domain name form (RFC 8252 §7.1), e.g. `com.example.bank`: lowercase letters, digits,
    /// `+`, `-`, `.`, with at least one `.`, at most [`WEB_VIEW_SCHEME_MAX_BYTES`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Seconds the page waits for each answer of the app before it falls back to the normal
    /// prompt (1 to [`WEB_VIEW_TIMEOUT_MAX_SECONDS`]; default
    /// [`WEB_VIEW_TIMEOUT_DEFAULT_SECONDS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

/// What the hosted page needs to speak the web-view contract (`FlowBrowserState::web_view`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlowBrowserWebView {
    /// How the page talks to the app.
    pub mode: WebViewMode,
    /// The app's scheme (`scheme` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Seconds the page waits for each answer of the app.
    pub timeout_seconds: u32,
    /// This server's URL, as the app's core names it (`createMobilePayload(server)`, the
    /// enrollment to authorize with).
    pub server: String,
    /// The flow's nonce a seamless device authorization signs.
    pub authorization_nonce: String,
}

impl CreateFlowRequest {
    /// A flow for `user_id` with every option at its default.
    pub fn new(user_id: UserId) -> Self {
        Self {
            user_id: Some(user_id),
            passkey: false,
            ..Self::passkey()
        }
    }

    /// A passkey sign-in without a user name (`passkey`, no `user_id`), every other option at
    /// its default.
    pub fn passkey() -> Self {
        Self {
            user_id: None,
            application_name: None,
            application_icon_url: None,
            accessing_ip: None,
            user_agent: None,
            message: None,
            fields: Vec::new(),
            number_matching: None,
            use_code: None,
            otp_fallback: None,
            sms_backup: None,
            voice_backup: None,
            email_backup: None,
            admin_message: None,
            mandatory_methods: Vec::new(),
            expires_in: None,
            device_selection: None,
            hosted: None,
            passkey: true,
        }
    }
}

/// PingID's device selection setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DeviceSelection {
    /// Push to the primary phone; the user may switch devices while it waits.
    #[default]
    DefaultToPrimary,
    /// Ask the user to pick a device whenever they have more than one.
    PromptUserToSelect,
}

/// What kind of device a flow may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum FlowDeviceType {
    /// A paired phone: push (and its passcode).
    Mobile,
    /// A passcode by SMS to the user's phone number.
    Sms,
    /// A passcode by voice call.
    Voice,
    /// A passcode by email.
    Email,
    /// A registered OATH token (TOTP app, YubiKey, hardware token, desktop).
    OathToken,
    /// A FIDO security key (roaming authenticator).
    SecurityKey,
    /// A FIDO platform authenticator registered without user verification.
    Platform,
    /// A FIDO platform authenticator registered with user verification (biometrics or PIN).
    Fido2Biometrics,
}

/// One device the user can pick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlowDevice {
    /// What `selectDevice` names.
    pub id: String,
    /// Its kind.
    #[serde(rename = "type")]
    pub device_type: FlowDeviceType,
    /// A name to show: the phone's description, the token's label, or the masked number or
    /// address.
    pub nickname: String,
    /// Whether it is the user's default (the primary phone).
    #[serde(default)]
    pub default: bool,
}

/// The push a flow waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlowPush {
    /// The authentication request sent to the phone.
    pub authentication_id: AuthenticationId,
    /// The phone asked.
    pub enrollment_id: EnrollmentId,
    /// Number matching: the number to show next to the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_to_show: Option<u32>,
    /// When the push expires.
    pub expires_at: UnixSeconds,
}

/// Where the passcode a flow expects comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum FlowOtpSource {
    /// The passcode the Tessera app (or any of the user's passcode makers) shows.
    App,
    /// A registered OATH token.
    OathToken,
    /// A code sent by SMS.
    Sms,
    /// A code told by a voice call.
    Voice,
    /// A code sent by email.
    Email,
}

impl From<BackupChannel> for FlowOtpSource {
    fn from(c: BackupChannel) -> Self {
        match c {
            BackupChannel::Sms => Self::Sms,
            BackupChannel::Voice => Self::Voice,
            BackupChannel::Email => Self::Email,
        }
    }
}

/// The passcode a flow expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlowOtp {
    /// Where it comes from.
    pub source: FlowOtpSource,
    /// Where a sent code went (masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

/// The pairing of the app's device (automatic device registration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlowPairing {
    /// The new enrollment.
    pub enrollment_id: EnrollmentId,
    /// Hand this to the app's core (`Authenticator::complete_relay_pairing`).
    pub server_payload: String,
    /// `active`, or `pending_verification` while the primary device is asked.
    pub state: String,
}

/// The mandatory methods and which of them the user has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlowMfaSetup {
    /// Every mandatory method.
    pub mandatory: Vec<AuthenticationMethod>,
    /// Those still to register.
    pub missing: Vec<AuthenticationMethod>,
    /// Those registered.
    pub done: Vec<AuthenticationMethod>,
}

/// How a flow ended, in the style of `pingid.sdk.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum FlowResultStatus {
    /// The user was authenticated (push approved or passcode accepted).
    Authenticated,
    /// The app's device was paired (automatic device registration).
    DevicePaired,
    /// The app's device was not paired (the primary device refused, or it was removed).
    DeviceNotPaired,
    /// The pairing could not be completed.
    PairingError,
    /// The user denied the push.
    Denied,
    /// Too many wrong passcodes.
    OtpLocked,
    /// The flow expired.
    Expired,
    /// The flow was cancelled.
    Canceled,
    /// The push could not be completed (its device was unpaired).
    Failed,
    /// The user has an administrator's bypass: the flow completed without a device (type
    /// `BYPASS`; not a second factor).
    Bypassed,
}

/// A finished flow's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlowResult {
    /// How it ended.
    pub status: FlowResultStatus,
    /// The `pingid.authentication.*` attributes of the step that completed it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// The authentication that completed it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_id: Option<AuthenticationId>,
    /// The device paired, for `device_paired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_id: Option<EnrollmentId>,
    /// The application's policy decision for the flow, when the application has a policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::PolicyOutcome>,
}

/// A flow as a client sees it: its status, the data that status needs, and what to do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlowState {
    /// Its id.
    pub id: FlowId,
    /// Where it stands.
    pub status: FlowStatus,
    /// The actions allowed now.
    pub actions: Vec<FlowActionName>,
    /// The user; none while a passkey sign-in (started without a user) waits for the passkey
    /// that names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// When it expires.
    pub expires_at: UnixSeconds,
    /// The nonce a trusted device signs to authorize this flow seamlessly
    /// ([`DeviceAuthorization::flow_nonce`]); hand it to the app.
    pub authorization_nonce: String,
    /// The administrator's message, if the flow was given one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_message: Option<String>,
    /// The devices the user can pick (`DEVICE_SELECTION_REQUIRED`, and to switch later).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<FlowDevice>,
    /// The device picked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_device: Option<String>,
    /// The push waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<FlowPush>,
    /// The passcode expected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp: Option<FlowOtp>,
    /// The pairing of the app's device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairing: Option<FlowPairing>,
    /// The mandatory methods (`MFA_SETUP_REQUIRED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa_setup: Option<FlowMfaSetup>,
    /// How it ended, once final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<FlowResult>,
    /// The WebAuthn ceremony waited for (`ASSERTION_REQUIRED`, or `MFA_SETUP_REQUIRED` after
    /// `startRegistration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fido: Option<FlowFido>,
    /// A hosted flow's page: `{public_url}/prompt#<browser token>` (the token, the page's only
    /// credential, in the fragment so it never reaches a `Referer` or an access log). Only in
    /// the creation answer: the server keeps the token's hash, not the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_url: Option<String>,
    /// The QR code the flow's user may scan with the app instead (after `useQrCode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr: Option<FlowQr>,
}

/// A QR login session bound to a flow (`useQrCode`): only the flow's user's app can answer it,
/// it is answered once and it expires with the flow; its approval completes the flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlowQr {
    /// The QR session.
    pub session_id: crate::qr::QrSessionId,
    /// Where it stands (`created`, `scanned`, `verifying`, `approved`, `denied`, `expired`).
    pub state: crate::qr::QrSessionState,
    /// The code's text (`tessera-qr://…`), while it can be scanned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr_uri: Option<String>,
    /// The code as an SVG image (the hosted prompt only), while it can be scanned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr_svg: Option<String>,
    /// When the code stops working (`useQrCode` again shows a fresh one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_expires_at: Option<UnixSeconds>,
    /// With number matching on the follow-up approval: the number to pick on the phone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_to_show: Option<u32>,
}

/// The hosted prompt's view of its flow (`GET /v1/flow-browser`, with the browser token):
/// what the page shows, no secret and nothing about any other flow or user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlowBrowserState {
    /// The flow's id, for support and for the customer's own records. It opens nothing by
    /// itself: the customer API needs the application's API key, this API the browser token.
    pub flow_id: FlowId,
    /// Changes with every move of the flow; `?seen=` waits for another.
    pub version: i64,
    /// Where the flow stands.
    pub status: FlowStatus,
    /// The actions allowed now.
    pub actions: Vec<FlowActionName>,
    /// When the flow expires.
    pub expires_at: UnixSeconds,
    /// The application's name as shown on the phone.
    pub application_name: String,
    /// The headline shown on the phone, if the flow has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The administrator's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_message: Option<String>,
    /// The devices the user can pick.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<FlowDevice>,
    /// The device picked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_device: Option<String>,
    /// Number matching: the number to show next to the prompt while the push waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_to_show: Option<u32>,
    /// When the push waited for expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_expires_at: Option<UnixSeconds>,
    /// The passcode expected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp: Option<FlowOtp>,
    /// `MOBILE_PAIRING_REQUIRED`: what the app's core completes, as text and as a QR code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairing: Option<FlowBrowserPairing>,
    /// `MFA_SETUP_REQUIRED`: the mandatory methods and which are done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa_setup: Option<FlowMfaSetup>,
    /// How the flow ended, once final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<FlowResultStatus>,
    /// The WebAuthn ceremony the page runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fido: Option<FlowFido>,
    /// Where the page goes once the flow is over.
    pub return_url: String,
    /// The language of `texts` (a BCP 47 tag).
    pub lang: String,
    /// The page's texts in that language, by message id.
    pub texts: BTreeMap<String, String>,
    /// The QR code to scan with the app instead (after `useQrCode`), with its SVG image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr: Option<FlowQr>,
    /// A flow opened in an app's web view: how the page talks to the app and what it hands
    /// over (while the flow is not final).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_view: Option<FlowBrowserWebView>,
}

/// The pairing of the app's device as the hosted prompt shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlowBrowserPairing {
    /// Hand this to the app's core (`Authenticator::complete_relay_pairing`).
    pub server_payload: String,
    /// `server_payload` as an SVG QR code (none when it is too long for one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr_svg: Option<String>,
    /// `active`, or `pending_verification` while the primary device is asked.
    pub state: String,
}

/// The longest a [`DeviceAuthorization`] may live, in seconds.
pub const DEVICE_AUTHORIZATION_MAX_LIFETIME: i64 = 120;

/// What a trusted device signs, with its enrollment's possession key and no user interaction,
/// to authorize one flow (seamless device authorization): the server completes the flow when the
/// signature, the enrollment and the flow's nonce check out, once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceAuthorization {
    /// Protocol version.
    pub v: u32,
    /// The server it is meant for (its identity).
    pub audience: crate::pairing::ServerUrl,
    /// The enrollment whose possession key signs it.
    pub enrollment_id: EnrollmentId,
    /// That enrollment's user.
    pub user_id: UserId,
    /// The flow's `authorization_nonce`.
    pub flow_nonce: String,
    /// 128 random bits, base64url: the server accepts each authorization once.
    pub jti: String,
    /// When the device signed it.
    pub issued_at: UnixSeconds,
    /// When it stops being accepted (at most [`DEVICE_AUTHORIZATION_MAX_LIFETIME`] after
    /// `issued_at`).
    pub expires_at: UnixSeconds,
}

/// One entry of a flow's history (`GET /v1/flows/{id}/events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlowEventRecord {
    /// When.
    pub at: UnixSeconds,
    /// The action (`create`, an action name, or the server's own `expire`, `pushAnswered`,
    /// `pairingVerified`).
    pub action: String,
    /// The status before (none at creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_status: Option<FlowStatus>,
    /// The status after.
    pub to_status: FlowStatus,
    /// For a refused attempt (the status did not change): its error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::error::ErrorCode>,
}

/// A flow's history, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlowHistory {
    /// The events.
    pub events: Vec<FlowEventRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_actions_use_the_authentication_api_names() {
        for s in FlowStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(FlowStatus::parse(s.as_str()), Some(s));
        }
        let action: FlowAction =
            serde_json::from_str(r#"{"action":"selectDevice","device_id":"sms"}"#).unwrap();
        assert_eq!(action.name().as_str(), "selectDevice");
        assert_eq!(
            serde_json::to_value(FlowActionName::ContinueAuthentication).unwrap(),
            "continueAuthentication"
        );
        let unknown = serde_json::from_str::<FlowAction>(r#"{"action":"approveEverything"}"#);
        assert!(unknown.is_err());
        let extra = serde_json::from_str::<FlowAction>(r#"{"action":"useCode","otp":"1"}"#);
        assert!(extra.is_err(), "unknown members are refused");
    }
}

/// A WebAuthn ceremony a flow waits for: exactly one of the two option sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlowFido {
    /// `ASSERTION_REQUIRED`: `{"publicKey": …}` for `navigator.credentials.get` (binary
    /// members base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub request_options: Option<serde_json::Value>,
    /// After `startRegistration`: `{"publicKey": …}` for `navigator.credentials.create`
    /// (binary members base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub creation_options: Option<serde_json::Value>,
    /// The method being registered (`SECURITY_KEY` or `PLATFORM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registering: Option<AuthenticationMethod>,
}
