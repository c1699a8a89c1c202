//! Stable error codes and the JSON error body every Tessera API answers with.
//!
//! Codes are part of the protocol: they never change meaning, and clients match on them, never on
//! messages. Messages are safe to show to a person and never contain secrets or submitted values.

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code (`snake_case` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request is well-formed JSON but a field is missing or invalid.
    InvalidRequest,
    /// The body is not valid JSON.
    MalformedJson,
    /// The `Content-Type` is not `application/json`.
    UnsupportedMediaType,
    /// The body is larger than the server accepts.
    PayloadTooLarge,
    /// No valid API key or device signature.
    Unauthorized,
    /// No such route or resource.
    NotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// The user does not exist in this application.
    UserNotFound,
    /// A user with this id already exists.
    UserAlreadyExists,
    /// The device (enrollment) does not exist.
    DeviceNotFound,
    /// The pairing code is wrong, expired or already used (deliberately not told apart).
    InvalidPairingCode,
    /// Too many attempts; retry later.
    RateLimited,
    /// A public key is not a valid P-256 key.
    InvalidPublicKey,
    /// A signature does not verify, or a signed message is malformed.
    InvalidSignature,
    /// A registration is inconsistent (key ids, proofs, versions).
    InvalidRegistration,
    /// The mobile payload is malformed or its signatures do not verify.
    InvalidMobilePayload,
    /// A signed message is too old or from the future.
    StaleMessage,
    /// A signed message was already used.
    ReplayedMessage,
    /// A signed message was meant for another server.
    AudienceMismatch,
    /// The request conflicts with the current state.
    Conflict,
    /// No such authentication.
    AuthenticationNotFound,
    /// The authentication expired before it was answered.
    AuthenticationExpired,
    /// The authentication was already answered differently.
    AlreadyAnswered,
    /// A signed answer does not match the request (nonce, parameters, number, key).
    ResponseMismatch,
    /// The user has no paired device to ask.
    NoDevice,
    /// Too many outstanding or recent requests to this user's devices (push-bombing limit).
    TooManyAuthentications,
    /// No QR session matches (an unknown or renewed-away code, or another application's).
    QrSessionNotFound,
    /// The QR session expired.
    QrSessionExpired,
    /// Another device already scanned this QR code.
    QrAlreadyScanned,
    /// None of the scanning device's users may answer this QR session (not paired with this
    /// application, or the session is for another user).
    NoEligibleUser,
    /// The one-time passcode is wrong, outside the clock-drift window, or already used.
    OtpInvalid,
    /// Too many wrong passcodes: OTP checks for this user are locked until the customer resets
    /// the failure count.
    OtpLocked,
    /// The authentication accepts no one-time passcode (neither "use code" nor OTP fallback,
    /// the fallback is not yet in force, and no backup code was sent for it).
    OtpNotAllowed,
    /// The backup channel (SMS, voice, email) is not allowed here, the user has no phone or
    /// email registered for it, or no provider is configured for it.
    BackupChannelUnavailable,
    /// The SMS, voice or email provider did not accept the message.
    DeliveryFailed,
    /// No such one-time passcode challenge (or another application's).
    OtpChallengeNotFound,
    /// No such OATH token for this user.
    OtpTokenNotFound,
    /// The user lacks authentication methods the application makes mandatory; the error lists
    /// them in `missing_methods`.
    MandatoryMethodsMissing,
    /// No such flow (or another application's).
    FlowNotFound,
    /// The flow expired.
    FlowExpired,
    /// The action is not allowed in the flow's status; the error lists the allowed ones in
    /// `allowed_actions`.
    ActionNotAllowed,
    /// An unexpected server error.
    InternalError,
    /// The server cannot serve now (database unavailable).
    ServiceUnavailable,
    /// The application has as many open QR sessions or pending requests as its quota allows.
    QuotaExceeded,
    /// The application's policy refused the request; the message says why (the rule's reason).
    PolicyDenied,
    /// A browser request came from another site (its `Origin` or `Sec-Fetch-Site` names
    /// another origin): the hosted prompt's API refuses cross-origin writes.
    CrossOriginRefused,
    /// The application requires a valid platform attestation at pairing and the registration
    /// carried none, or one that failed a check (the message says which).
    AttestationRequired,
    /// A WebAuthn ceremony response did not verify (wrong origin, challenge, signature, user
    /// verification, attestation or AAGUID, or a credential of someone else); the message says
    /// which.
    FidoVerificationFailed,
    /// The FIDO credential's signature counter went backwards (a cloned authenticator): the
    /// credential is flagged and refused until an administrator removes it.
    FidoCredentialCompromised,
    /// No such FIDO credential for this user.
    FidoCredentialNotFound,
    /// A `locale` is not a well-formed BCP 47 language tag (`de`, `fr-CA`). A well-formed tag
    /// of a language the server does not ship is accepted and falls back to English.
    InvalidLocale,
    /// The answer comes from an App Attested iOS enrollment without an App Attest assertion,
    /// and the application (attestation `require`) or its policy asks for one.
    AppAttestAssertionRequired,
    /// The answer's App Attest assertion does not verify: malformed, not by the enrollment's
    /// App Attest key, over other client data, or for another app (the message says which).
    AppAttestAssertionInvalid,
    /// The answer's App Attest assertion counter is not greater than the last one accepted (a
    /// replayed assertion, or a racing answer took the counter first).
    AppAttestCounterReplay,
    /// A flow was asked to start without a user (a passkey sign-in) for an application whose
    /// FIDO settings do not register discoverable credentials (`discoverable_credentials`).
    PasskeysNotEnabled,
    /// A code this client does not know (a newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code's wire text.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UserNotFound => "user_not_found",
            ErrorCode::UserAlreadyExists => "user_already_exists",
            ErrorCode::DeviceNotFound => "device_not_found",
            ErrorCode::InvalidPairingCode => "invalid_pairing_code",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InvalidPublicKey => "invalid_public_key",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::InvalidRegistration => "invalid_registration",
            ErrorCode::InvalidMobilePayload => "invalid_mobile_payload",
            ErrorCode::StaleMessage => "stale_message",
            ErrorCode::ReplayedMessage => "replayed_message",
            ErrorCode::AudienceMismatch => "audience_mismatch",
            ErrorCode::Conflict => "conflict",
            ErrorCode::AuthenticationNotFound => "authentication_not_found",
            ErrorCode::AuthenticationExpired => "authentication_expired",
            ErrorCode::AlreadyAnswered => "already_answered",
            ErrorCode::ResponseMismatch => "response_mismatch",
            ErrorCode::NoDevice => "no_device",
            ErrorCode::TooManyAuthentications => "too_many_authentications",
            ErrorCode::QrSessionNotFound => "qr_session_not_found",
            ErrorCode::QrSessionExpired => "qr_session_expired",
            ErrorCode::QrAlreadyScanned => "qr_already_scanned",
            ErrorCode::NoEligibleUser => "no_eligible_user",
            ErrorCode::OtpInvalid => "otp_invalid",
            ErrorCode::OtpLocked => "otp_locked",
            ErrorCode::OtpNotAllowed => "otp_not_allowed",
            ErrorCode::BackupChannelUnavailable => "backup_channel_unavailable",
            ErrorCode::DeliveryFailed => "delivery_failed",
            ErrorCode::OtpChallengeNotFound => "otp_challenge_not_found",
            ErrorCode::OtpTokenNotFound => "otp_token_not_found",
            ErrorCode::MandatoryMethodsMissing => "mandatory_methods_missing",
            ErrorCode::FlowNotFound => "flow_not_found",
            ErrorCode::FlowExpired => "flow_expired",
            ErrorCode::ActionNotAllowed => "action_not_allowed",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::ServiceUnavailable => "service_unavailable",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::PolicyDenied => "policy_denied",
            ErrorCode::CrossOriginRefused => "cross_origin_refused",
            ErrorCode::AttestationRequired => "attestation_required",
            ErrorCode::FidoVerificationFailed => "fido_verification_failed",
            ErrorCode::FidoCredentialCompromised => "fido_credential_compromised",
            ErrorCode::FidoCredentialNotFound => "fido_credential_not_found",
            ErrorCode::InvalidLocale => "invalid_locale",
            ErrorCode::AppAttestAssertionRequired => "app_attest_assertion_required",
            ErrorCode::AppAttestAssertionInvalid => "app_attest_assertion_invalid",
            ErrorCode::AppAttestCounterReplay => "app_attest_counter_replay",
            ErrorCode::PasskeysNotEnabled => "passkeys_not_enabled",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// The HTTP status the server answers this code with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest
            | ErrorCode::MalformedJson
            | ErrorCode::InvalidPublicKey
            | ErrorCode::InvalidSignature
            | ErrorCode::InvalidRegistration
            | ErrorCode::InvalidMobilePayload
            | ErrorCode::StaleMessage
            | ErrorCode::AudienceMismatch
            | ErrorCode::InvalidPairingCode
            | ErrorCode::ResponseMismatch
            | ErrorCode::OtpInvalid
            | ErrorCode::AttestationRequired
            | ErrorCode::FidoVerificationFailed
            | ErrorCode::InvalidLocale
            | ErrorCode::AppAttestAssertionRequired
            | ErrorCode::AppAttestAssertionInvalid => 400,
            ErrorCode::AppAttestCounterReplay => 409,
            ErrorCode::Unauthorized => 401,
            ErrorCode::PolicyDenied => 403,
            ErrorCode::CrossOriginRefused => 403,
            ErrorCode::FidoCredentialCompromised => 403,
            ErrorCode::PasskeysNotEnabled => 403,
            ErrorCode::FidoCredentialNotFound => 404,
            ErrorCode::NotFound
            | ErrorCode::UserNotFound
            | ErrorCode::DeviceNotFound
            | ErrorCode::AuthenticationNotFound
            | ErrorCode::QrSessionNotFound
            | ErrorCode::OtpChallengeNotFound
            | ErrorCode::OtpTokenNotFound
            | ErrorCode::FlowNotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::UserAlreadyExists
            | ErrorCode::Conflict
            | ErrorCode::ReplayedMessage
            | ErrorCode::AlreadyAnswered
            | ErrorCode::NoDevice
            | ErrorCode::QrAlreadyScanned
            | ErrorCode::NoEligibleUser
            | ErrorCode::OtpNotAllowed
            | ErrorCode::BackupChannelUnavailable
            | ErrorCode::MandatoryMethodsMissing
            | ErrorCode::ActionNotAllowed => 409,
            ErrorCode::AuthenticationExpired
            | ErrorCode::QrSessionExpired
            | ErrorCode::FlowExpired => 410,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::OtpLocked => 423,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::RateLimited
            | ErrorCode::TooManyAuthentications
            | ErrorCode::QuotaExceeded => 429,
            ErrorCode::InternalError | ErrorCode::Unknown => 500,
            ErrorCode::DeliveryFailed => 502,
            ErrorCode::ServiceUnavailable => 503,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The code and a message safe to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// The stable code.
    pub code: ErrorCode,
    /// A human-readable message holding no secret and no submitted value.
    pub message: String,
    /// `mandatory_methods_missing`: the methods the user must register first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_methods: Vec<crate::api::AuthenticationMethod>,
    /// `action_not_allowed`: the actions the flow allows now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_actions: Vec<crate::flows::FlowActionName>,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
                missing_methods: Vec::new(),
                allowed_actions: Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_text_and_unknown_codes_parse() {
        for code in [
            ErrorCode::InvalidPairingCode,
            ErrorCode::RateLimited,
            ErrorCode::MalformedJson,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        let parsed: ErrorCode = serde_json::from_str("\"something_new\"").unwrap();
        assert_eq!(parsed, ErrorCode::Unknown);
        assert_eq!(ErrorCode::PayloadTooLarge.http_status(), 413);
    }
}
