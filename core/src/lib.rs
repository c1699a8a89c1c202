//! Tessera's device SDK core.
//!
//! One entry object, the [`Authenticator`], owns the device's state and exposes the flows:
//! pairing (with a code or URI, or relayed through the customer's backend as a mobile payload and
//! a server payload), listing, checking and removing enrollments, and offline one-time passcodes
//! for third-party accounts imported from `otpauth://` URIs (see [`OtpKey`]). It does no platform work
//! itself; the platform comes in through two traits:
//!
//! - [`KeyStore`]: P-256 keys by alias (private keys never leave it) and sealing of the state key;
//! - [`SecureStorage`]: a few named blobs written atomically.
//!
//! [`SoftwareKeyStore`] and [`FileStorage`] are the defaults for tests, desktop and the examples.
//! All device state is encrypted at rest under a key the key store seals.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod aead;
mod authenticator;
mod config;
mod error;
mod key_store;
mod otp;
mod pairing;
mod qr;
mod requests;
mod secret;
mod signer;
mod state;
mod storage;
mod transport;
pub mod web_view;

pub use authenticator::{Authenticator, Enrollment, PushOutcome};
pub use config::AuthenticatorConfig;
pub use error::CoreError;
pub use key_store::{
    AppAttestAsserter, AppAttestation, KeyPurpose, KeyStore, KeyStoreError, SoftwareKeyStore,
};
pub use otp::{
    MAX_PERIOD_SECONDS, MAX_SECRET_BITS, MIN_SECRET_BITS, OneTimePasscode, OtpAccount,
    OtpAccountId, OtpAccountSource, OtpAlgorithm, OtpDigits, OtpKey, OtpKind, OtpSeed, OtpUriError,
    RFC_MIN_SECRET_BITS, hotp, totp,
};
pub use pairing::{ReplyTrust, verify_pairing_reply};
pub use qr::{QrAuthentication, QrUser};
pub use requests::{IncomingRequest, verify_request as verify_authentication_request};
pub use signer::KeyStoreSigner;
pub use storage::{FileStorage, SecureStorage, StorageError};
pub use tessera_protocol::api::EnrollmentStatus;
pub use tessera_protocol::api::{QrAnswerRecorded, ResponseRecorded};
pub use tessera_protocol::authentication::{
    AccessContext, AuthenticationKind, AuthenticationState, CibaDetails, Decision, DisplayField,
};
pub use tessera_protocol::qr::QrSessionState;
