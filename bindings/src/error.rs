//! The errors the foreign languages see.
//!
//! [`TesseraError`] is what every SDK call throws: a few kinds an app reacts to differently, each
//! with a stable `code` to match on and a `detail` safe to show or log. Neither ever holds a
//! pairing code, a key, a token, a seed, a signed message or a foreign stack trace.
//!
//! [`PlatformError`] is what the app's own code (key store, storage, user-verification prompt)
//! throws back into the SDK.

use tessera_core::{CoreError, KeyStoreError, StorageError};

/// An SDK call failed. Every variant carries `code`, a stable snake_case code (the device core's
/// [`CoreError::code`], or for [`TesseraError::Server`] the server's error code such as
/// `invalid_pairing_code` or `already_answered`), and `detail`, a message safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[non_exhaustive]
pub enum TesseraError {
    /// The app passed something malformed: a code, URI, URL, id, number or location
    /// (`invalid_input`, `server_mismatch`, `insecure_server_url`, `invalid_otp_uri`).
    #[error("{code}: {detail}")]
    InvalidInput {
        /// Stable code.
        code: String,
        /// Safe to show.
        detail: String,
    },
    /// The server could not be reached (`network`): retry later; push is a hint, pulling
    /// pending requests later finds what was missed.
    #[error("{code}: {detail}")]
    Network {
        /// Stable code.
        code: String,
        /// Safe to show.
        detail: String,
    },
    /// The server refused; `code` is the server's stable error code (`invalid_pairing_code`,
    /// `authentication_expired`, `already_answered`, `qr_already_scanned`, `no_eligible_user`, …).
    #[error("{code}: {detail}")]
    Server {
        /// The server's stable error code.
        code: String,
        /// The server's message.
        detail: String,
    },
    /// What the server sent does not check out: signature from an unpinned key, a reply that
    /// answers something else, a malformed answer (`untrusted_server_key`, `reply_mismatch`,
    /// `invalid_server_response`). Never shown to the user as an approval.
    #[error("{code}: {detail}")]
    UntrustedServer {
        /// Stable code.
        code: String,
        /// Safe to show.
        detail: String,
    },
    /// Nothing of that name on this device (`enrollment_not_found`, `unknown_pending_pairing`,
    /// `not_paired_with_server`, `otp_account_not_found`), or the server no longer knows the
    /// enrollment (`enrollment_removed`: it was unpaired; it stays listed with `removed`).
    #[error("{code}: {detail}")]
    NotFound {
        /// Stable code.
        code: String,
        /// Safe to show.
        detail: String,
    },
    /// The request or QR code expired before it was answered (`request_expired`).
    #[error("{code}: {detail}")]
    Expired {
        /// Stable code.
        code: String,
        /// Safe to show.
        detail: String,
    },
    /// It conflicts with what is on the device (`otp_account_exists`).
    #[error("{code}: {detail}")]
    Conflict {
        /// Stable code.
        code: String,
        /// Safe to show.
        detail: String,
    },
    /// The user cancelled biometrics or the device PIN (`user_cancelled`), or no way to verify
    /// the user is set up (`user_verification_unavailable`). Nothing was sent.
    #[error("{code}: {detail}")]
    UserVerification {
        /// Stable code.
        code: String,
        /// Safe to show.
        detail: String,
    },
    /// The platform key store or storage failed, or the stored state does not decrypt
    /// (`key_store`, `storage`, `state_corrupted`).
    #[error("{code}: {detail}")]
    Platform {
        /// Stable code.
        code: String,
        /// Safe to show.
        detail: String,
    },
}

impl TesseraError {
    fn user_verification(code: &str, detail: &str) -> Self {
        TesseraError::UserVerification {
            code: code.to_string(),
            detail: detail.to_string(),
        }
    }

    pub(crate) fn user_cancelled() -> Self {
        Self::user_verification("user_cancelled", "user verification was cancelled")
    }

    pub(crate) fn user_verification_unavailable() -> Self {
        Self::user_verification(
            "user_verification_unavailable",
            "this request needs user verification and no user verifier is set up",
        )
    }

    pub(crate) fn invalid_input(detail: impl Into<String>) -> Self {
        TesseraError::InvalidInput {
            code: "invalid_input".into(),
            detail: detail.into(),
        }
    }
}

impl From<CoreError> for TesseraError {
    fn from(e: CoreError) -> Self {
        let code = e.code().to_string();
        let detail = e.to_string();
        match e {
            CoreError::Server { code, message } => TesseraError::Server {
                code: code.as_str().to_string(),
                detail: message,
            },
            CoreError::InvalidInput(_)
            | CoreError::ServerMismatch
            | CoreError::InsecureServerUrl
            | CoreError::InvalidOtpUri(_) => TesseraError::InvalidInput { code, detail },
            CoreError::Network(_) => TesseraError::Network { code, detail },
            CoreError::InvalidServerResponse(_)
            | CoreError::UntrustedServerKey
            | CoreError::ReplyMismatch(_) => TesseraError::UntrustedServer { code, detail },
            CoreError::UnknownPendingPairing
            | CoreError::EnrollmentNotFound
            | CoreError::EnrollmentRemoved
            | CoreError::NotPairedWithServer
            | CoreError::OtpAccountNotFound => TesseraError::NotFound { code, detail },
            CoreError::RequestExpired => TesseraError::Expired { code, detail },
            CoreError::OtpAccountExists => TesseraError::Conflict { code, detail },
            // The key store's cancellation travels through the core as text; it is the one
            // key-store failure an app treats differently.
            CoreError::KeyStore(ref m) if *m == KeyStoreError::UserCancelled.to_string() => {
                TesseraError::user_cancelled()
            }
            CoreError::KeyStore(_) | CoreError::Storage(_) | CoreError::StateCorrupted => {
                TesseraError::Platform { code, detail }
            }
            // A kind added to the core later: still a typed error with its stable code.
            _ => TesseraError::Platform { code, detail },
        }
    }
}

/// What the app's key store, storage or user-verification prompt throws back into the SDK.
/// Kotlin and Swift implementations throw it; any other exception they throw becomes
/// [`PlatformError::Failed`] with a fixed message (the foreign exception's text and stack trace
/// are dropped: they could hold anything).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum PlatformError {
    /// No key (or blob) under this alias.
    #[error("not found")]
    NotFound,
    /// The user cancelled the biometric or device-PIN prompt.
    #[error("user verification was cancelled")]
    UserCancelled,
    /// Sealed data does not open with this key.
    #[error("sealed data does not open with this key")]
    OpenFailed,
    /// The platform cannot verify the user (no biometrics enrolled and no device PIN).
    #[error("user verification is not available on this device")]
    Unavailable,
    /// Anything else; `detail` must not hold secrets.
    #[error("{detail}")]
    Failed {
        /// What failed, safe to log.
        detail: String,
    },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for PlatformError {
    fn from(_: uniffi::UnexpectedUniFFICallbackError) -> Self {
        // The reason is the foreign exception's text: never passed on.
        PlatformError::Failed {
            detail: "the platform code threw an unexpected exception".into(),
        }
    }
}

impl From<PlatformError> for KeyStoreError {
    fn from(e: PlatformError) -> Self {
        match e {
            PlatformError::NotFound => KeyStoreError::NotFound,
            PlatformError::UserCancelled => KeyStoreError::UserCancelled,
            PlatformError::OpenFailed => KeyStoreError::OpenFailed,
            PlatformError::Unavailable => {
                KeyStoreError::Failed("user verification is not available".into())
            }
            PlatformError::Failed { detail } => KeyStoreError::Failed(detail),
        }
    }
}

impl From<KeyStoreError> for PlatformError {
    fn from(e: KeyStoreError) -> Self {
        match e {
            KeyStoreError::NotFound => PlatformError::NotFound,
            KeyStoreError::UserCancelled => PlatformError::UserCancelled,
            KeyStoreError::OpenFailed => PlatformError::OpenFailed,
            KeyStoreError::Failed(detail) => PlatformError::Failed { detail },
        }
    }
}

impl From<PlatformError> for StorageError {
    fn from(e: PlatformError) -> Self {
        StorageError::Io(e.to_string())
    }
}

impl From<StorageError> for PlatformError {
    fn from(e: StorageError) -> Self {
        PlatformError::Failed {
            detail: e.to_string(),
        }
    }
}

impl From<PlatformError> for TesseraError {
    fn from(e: PlatformError) -> Self {
        match e {
            PlatformError::UserCancelled => TesseraError::user_cancelled(),
            PlatformError::Unavailable => TesseraError::user_verification_unavailable(),
            other => TesseraError::Platform {
                code: "platform".into(),
                detail: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::error::ErrorCode;

    #[test]
    fn core_errors_keep_their_stable_codes() {
        let e = TesseraError::from(CoreError::EnrollmentNotFound);
        assert!(
            matches!(&e, TesseraError::NotFound { code, .. } if code == "enrollment_not_found")
        );
        let e = TesseraError::from(CoreError::EnrollmentRemoved);
        assert!(matches!(&e, TesseraError::NotFound { code, .. } if code == "enrollment_removed"));
        let e = TesseraError::from(CoreError::Server {
            code: ErrorCode::InvalidPairingCode,
            message: "the pairing code is invalid".into(),
        });
        assert_eq!(
            e,
            TesseraError::Server {
                code: "invalid_pairing_code".into(),
                detail: "the pairing code is invalid".into()
            }
        );
        let e = TesseraError::from(CoreError::from(KeyStoreError::UserCancelled));
        assert!(
            matches!(&e, TesseraError::UserVerification { code, .. } if code == "user_cancelled")
        );
        let e = TesseraError::from(CoreError::RequestExpired);
        assert!(matches!(&e, TesseraError::Expired { code, .. } if code == "request_expired"));
    }

    #[test]
    fn foreign_exceptions_lose_their_text() {
        let e = PlatformError::from(uniffi::UnexpectedUniFFICallbackError {
            reason: "java.lang.IllegalStateException: secret 1234 at Foo.kt:12".into(),
        });
        assert!(!e.to_string().contains("1234"));
        assert!(!TesseraError::from(e).to_string().contains("Foo.kt"));
    }
}
