//! The device core's error type.

use tessera_protocol::error::ErrorCode;

/// Everything that can go wrong in the device core. Messages are safe to show: they never hold a
/// pairing code, a key, a token or a signed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// The caller's input is malformed (a code, a URI, a URL, an id).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A pairing URI names one server and the caller another.
    #[error("the pairing URI is for another server than the one given")]
    ServerMismatch,
    /// Plain http to a host that is not on loopback.
    #[error("refusing plain http to a server that is not on loopback; use https")]
    InsecureServerUrl,
    /// The server could not be reached or the connection failed.
    #[error("network error: {0}")]
    Network(String),
    /// The server refused the request.
    #[error("server refused: {message} ({code})")]
    Server {
        /// The server's stable error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server's answer is not what the protocol says.
    #[error("invalid server response: {0}")]
    InvalidServerResponse(String),
    /// A signed server message does not verify with a key this device trusts for that server.
    #[error("the server's signature is not from a key this device trusts")]
    UntrustedServerKey,
    /// A signed server message verifies but does not answer what this device asked.
    #[error("the server's reply does not match this device's request: {0}")]
    ReplyMismatch(&'static str),
    /// No pending pairing matches this server payload.
    #[error("no pending pairing matches this server payload")]
    UnknownPendingPairing,
    /// The request expired before it was answered.
    #[error("the request has expired")]
    RequestExpired,
    /// No enrollment with this id on this device.
    #[error("no such enrollment on this device")]
    EnrollmentNotFound,
    /// The server no longer knows this enrollment (the backend or an administrator unpaired
    /// it); the device keeps it marked removed ([`crate::Enrollment::removed`]) until the app
    /// removes it.
    #[error("the server no longer knows this enrollment (it was unpaired)")]
    EnrollmentRemoved,
    /// A scanned code names a server this device is not paired with.
    #[error("this device is not paired with the server that showed this code")]
    NotPairedWithServer,
    /// The platform key store failed.
    #[error("key store: {0}")]
    KeyStore(String),
    /// The platform storage failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The stored state cannot be decrypted or parsed. It is never silently reset.
    #[error("device state is corrupted or was encrypted with another key")]
    StateCorrupted,
    /// An `otpauth://` URI was refused; the reason never holds the secret.
    #[error("invalid otpauth URI: {0}")]
    InvalidOtpUri(#[from] crate::otp::OtpUriError),
    /// No OTP account with this id on this device.
    #[error("no such OTP account on this device")]
    OtpAccountNotFound,
    /// An OTP account with the same issuer and account name is already on this device (remove
    /// it first to replace it).
    #[error("an OTP account with this issuer and account name already exists")]
    OtpAccountExists,
}

impl CoreError {
    /// A stable code for the error kind, for apps and bindings to match on.
    pub fn code(&self) -> &'static str {
        match self {
            CoreError::InvalidInput(_) => "invalid_input",
            CoreError::ServerMismatch => "server_mismatch",
            CoreError::InsecureServerUrl => "insecure_server_url",
            CoreError::Network(_) => "network",
            CoreError::Server { .. } => "server",
            CoreError::InvalidServerResponse(_) => "invalid_server_response",
            CoreError::UntrustedServerKey => "untrusted_server_key",
            CoreError::ReplyMismatch(_) => "reply_mismatch",
            CoreError::UnknownPendingPairing => "unknown_pending_pairing",
            CoreError::EnrollmentNotFound => "enrollment_not_found",
            CoreError::EnrollmentRemoved => "enrollment_removed",
            CoreError::NotPairedWithServer => "not_paired_with_server",
            CoreError::RequestExpired => "request_expired",
            CoreError::KeyStore(_) => "key_store",
            CoreError::Storage(_) => "storage",
            CoreError::StateCorrupted => "state_corrupted",
            CoreError::InvalidOtpUri(_) => "invalid_otp_uri",
            CoreError::OtpAccountNotFound => "otp_account_not_found",
            CoreError::OtpAccountExists => "otp_account_exists",
        }
    }

    /// The server's error code, when the server refused.
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            CoreError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the same call may succeed if retried later: a network failure, or a refusal for
    /// now rather than of the request itself (a server error code answered with `429`, such as
    /// `rate_limited`, or with a `5xx` status, such as `service_unavailable` and
    /// `internal_error`; a code this version does not know counts as one). Such a refusal says
    /// nothing of what the server did with an earlier, identical call.
    pub fn is_transient(&self) -> bool {
        match self {
            CoreError::Network(_) => true,
            CoreError::Server { code, .. } => {
                let status = code.http_status();
                status == 429 || status >= 500
            }
            _ => false,
        }
    }
}

impl From<crate::key_store::KeyStoreError> for CoreError {
    fn from(e: crate::key_store::KeyStoreError) -> Self {
        CoreError::KeyStore(e.to_string())
    }
}

impl From<crate::storage::StorageError> for CoreError {
    fn from(e: crate::storage::StorageError) -> Self {
        CoreError::Storage(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: ErrorCode) -> CoreError {
        CoreError::Server {
            code,
            message: String::new(),
        }
    }

    #[test]
    fn refusals_for_now_are_transient_and_refusals_of_the_request_are_not() {
        for code in [
            ErrorCode::ServiceUnavailable,
            ErrorCode::InternalError,
            ErrorCode::RateLimited,
            ErrorCode::DeliveryFailed,
            ErrorCode::Unknown,
        ] {
            assert!(refused(code).is_transient(), "{code}");
        }
        for code in [
            ErrorCode::InvalidPairingCode,
            ErrorCode::InvalidRegistration,
            ErrorCode::StaleMessage,
            ErrorCode::AudienceMismatch,
            ErrorCode::AttestationRequired,
            ErrorCode::ReplayedMessage,
            ErrorCode::PolicyDenied,
        ] {
            assert!(!refused(code).is_transient(), "{code}");
        }
        assert!(CoreError::Network("timed out".into()).is_transient());
        assert!(!CoreError::UntrustedServerKey.is_transient());
    }
}
