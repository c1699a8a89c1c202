//! Platform attestation at pairing: Android Key Attestation of the two enrollment keys and
//! Apple App Attest of the app, verified against configured trust anchors, and what an
//! application's `attestation` setting (`off`, `report`, `require`) makes of the result.
//!
//! X.509 and DER are parsed by `x509-parser` (and its `asn1-rs`), signatures verified by `ring`
//! through it, CBOR decoded by `ciborium`. What is written here is only the walk over the
//! Android KeyDescription's fields (which tag means what) and App Attest's `authData` layout
//! (fixed offsets Apple documents); see docs/attestation.md.

pub mod android;
pub mod apple;
pub(crate) mod assertions;
mod chain;
pub(crate) mod settings;

use std::collections::HashSet;

use tessera_protocol::api::{
    AttestationMode, AttestationPlatform, AttestationSecurityLevel, AttestationSettings, BootState,
    EnrollmentAttestation,
};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::pairing::{DeviceRegistration, RegistrationAttestation};

use super::DomainError;
use crate::config::ServerConfig;

const GOOGLE_ROOTS: &[&str] = &[
    include_str!("../../../attestation-roots/google-hardware-attestation-root-2022-rsa.pem"),
    include_str!("../../../attestation-roots/google-hardware-attestation-root-2016-rsa.pem"),
    include_str!("../../../attestation-roots/google-key-attestation-ca1-2025-ec.pem"),
];
const APPLE_ROOTS: &[&str] = &[include_str!(
    "../../../attestation-roots/apple-app-attestation-root-ca.pem"
)];

/// Why an attestation did not verify. Messages name the check, never a submitted value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    /// The attestation is not well-formed (base64, DER, CBOR, a missing field).
    #[error("the attestation is malformed: {0}")]
    Malformed(&'static str),
    /// The chain does not end at a trusted root.
    #[error("the attestation chain does not lead to a trusted root")]
    UnknownRoot,
    /// A certificate's signature does not verify with its issuer's key.
    #[error("a certificate of the attestation chain is not signed by its issuer")]
    BadSignature,
    /// A certificate of the chain is on the revocation status list.
    #[error("a certificate of the attestation chain is revoked")]
    Revoked,
    /// The attestation was made for another registration.
    #[error("the attestation challenge is not this registration's")]
    ChallengeMismatch,
    /// The attested key is not the registration's key (Android), or the key id does not match
    /// the attested key (App Attest).
    #[error("the attested key is not the registration's key")]
    KeyMismatch,
    /// The attested key is not an EC P-256 signing key.
    #[error("the attested key is not an EC P-256 signing key")]
    WrongKeyKind,
    /// App Attest: the counter of a fresh attestation is not zero.
    #[error("the App Attest counter of a new key is not zero")]
    CounterNotZero,
    /// App Attest: the environment (`appattest` / `appattestdevelop`) is not the application's.
    #[error("the App Attest environment is not the application's")]
    WrongEnvironment,
    /// App Attest: an assertion's signature does not verify with the attested key.
    #[error("the App Attest assertion is not signed by the attested key")]
    AssertionSignature,
    /// App Attest: an assertion is for another app than the application's.
    #[error("the App Attest assertion is for another app")]
    AssertionWrongApp,
    /// App Attest: an assertion's counter is not greater than the last one accepted (a replay).
    #[error("the App Attest assertion's counter is not greater than the last one accepted")]
    CounterReplay,
}

/// Where trust in attestations comes from: the shipped roots plus the operator's, and the
/// revocation status list (serial numbers, lowercase hex).
#[derive(Debug, Clone, Default)]
pub struct AttestationTrust {
    android_roots: Vec<Vec<u8>>,
    apple_roots: Vec<Vec<u8>>,
    revoked_serials: HashSet<String>,
}

/// The trust configuration could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustConfigError {
    /// A root is not a PEM certificate.
    #[error("an attestation root is not a PEM certificate")]
    BadRoot,
    /// The revocation status list is not Google's JSON format.
    #[error("the attestation revocation status list is not valid: {0}")]
    BadRevocationList(&'static str),
}

impl AttestationTrust {
    /// The shipped roots, the configured extra roots (trusted for both platforms) and the
    /// configured revocation status list.
    pub fn from_config(config: &ServerConfig) -> Result<Self, TrustConfigError> {
        let extra = config
            .attestation_extra_roots
            .iter()
            .map(|pem| chain::pem_to_der(pem).ok_or(TrustConfigError::BadRoot))
            .collect::<Result<Vec<_>, _>>()?;
        let shipped = |pems: &[&str]| -> Result<Vec<Vec<u8>>, TrustConfigError> {
            pems.iter()
                .map(|pem| chain::pem_to_der(pem).ok_or(TrustConfigError::BadRoot))
                .collect()
        };
        let mut android_roots = shipped(GOOGLE_ROOTS)?;
        android_roots.extend(extra.iter().cloned());
        let mut apple_roots = shipped(APPLE_ROOTS)?;
        apple_roots.extend(extra);
        let revoked_serials = match &config.attestation_revocation_status {
            Some(json) => parse_revocation_status(json)?,
            None => HashSet::new(),
        };
        Ok(Self {
            android_roots,
            apple_roots,
            revoked_serials,
        })
    }
}

/// Parses Google's revocation status list (`{"entries": {"<serial hex>": {"status": "REVOKED",
/// ...}}}`): the serial numbers of every entry (revoked or suspended), lowercase hex without
/// leading zeros.
pub fn parse_revocation_status(json: &str) -> Result<HashSet<String>, TrustConfigError> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|_| TrustConfigError::BadRevocationList("not JSON"))?;
    let entries = value
        .get("entries")
        .and_then(|e| e.as_object())
        .ok_or(TrustConfigError::BadRevocationList("no \"entries\" object"))?;
    let mut serials = HashSet::with_capacity(entries.len());
    for (serial, entry) in entries {
        let status = entry.get("status").and_then(|s| s.as_str()).ok_or(
            TrustConfigError::BadRevocationList("an entry has no status"),
        )?;
        if !matches!(status, "REVOKED" | "SUSPENDED") {
            return Err(TrustConfigError::BadRevocationList("unknown status"));
        }
        let normalized = serial.trim_start_matches('0').to_ascii_lowercase();
        if normalized.is_empty() || !normalized.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TrustConfigError::BadRevocationList("a serial is not hex"));
        }
        serials.insert(normalized);
    }
    Ok(serials)
}

/// What a pairing's attestation proved, and the App Attest key later answers' assertions are
/// verified with (App Attest by an app the application registered only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckedAttestation {
    /// What is recorded on the enrollment.
    pub record: EnrollmentAttestation,
    /// The attested App Attest key (uncompressed SEC1), to be kept with counter 0.
    pub app_attest_key: Option<Vec<u8>>,
}

/// Verifies the registration's attestation for an application's settings. `Ok(None)`: nothing
/// to record (mode `off`, or `report` and no or an invalid attestation). Under `require` a
/// missing or failed attestation, or one that falls short of [`meets_requirements`], is refused
/// with `attestation_required`.
pub(crate) fn check_registration(
    trust: &AttestationTrust,
    settings: &AttestationSettings,
    registration: &DeviceRegistration,
) -> Result<Option<CheckedAttestation>, DomainError> {
    if settings.mode == AttestationMode::Off {
        return Ok(None);
    }
    let required = settings.mode == AttestationMode::Require;
    let refuse = |why: String| {
        DomainError::new(
            ErrorCode::AttestationRequired,
            format!("the application requires a valid attestation: {why}"),
        )
    };
    let Some(attestation) = &registration.attestation else {
        return if required {
            Err(refuse("the registration carries none".into()))
        } else {
            Ok(None)
        };
    };
    let challenge = registration.own_attestation_challenge();
    let verified = match attestation {
        RegistrationAttestation::AndroidKey {
            possession_chain,
            user_verification_chain,
        } => android::verify_registration_keys(
            trust,
            settings,
            challenge.as_bytes(),
            possession_chain,
            user_verification_chain,
            &registration.possession_key,
            &registration.user_verification_key,
        )
        .map(|record| CheckedAttestation {
            record,
            app_attest_key: None,
        }),
        RegistrationAttestation::AppleAppAttest {
            key_id,
            attestation_object,
        } => apple::verify_attestation(
            trust,
            settings,
            challenge.as_bytes(),
            key_id,
            attestation_object,
        )
        .map(|verified| CheckedAttestation {
            // Assertions name their app by its hash: only a registered app's can be checked.
            app_attest_key: verified.record.app_verified.then_some(verified.public_key),
            record: verified.record,
        }),
    };
    match verified {
        Ok(checked) => match shortfall(&checked.record) {
            Some(why) if required => Err(refuse(why.into())),
            _ => Ok(Some(checked)),
        },
        Err(e) => {
            tracing::info!(error = %e, "a pairing's attestation did not verify");
            if required {
                Err(refuse(e.to_string()))
            } else {
                Ok(None)
            }
        }
    }
}

/// The first requirement of `require` an attestation's record falls short of, if any.
pub fn shortfall(record: &EnrollmentAttestation) -> Option<&'static str> {
    if matches!(record.security_level, AttestationSecurityLevel::Software) {
        return Some("the keys are not hardware-backed");
    }
    if !record.app_verified {
        return Some("the attested app is not one the application registered");
    }
    if record.platform == AttestationPlatform::Android {
        if !record.user_verification_bound {
            return Some("the user-verification key does not require user authentication");
        }
        if record.boot_state != Some(BootState::Verified) {
            return Some("the device's bootloader is unlocked or its boot is not verified");
        }
    }
    None
}

/// Whether an attestation record meets everything `require` asks for.
pub fn meets_requirements(record: &EnrollmentAttestation) -> bool {
    shortfall(record).is_none()
}

/// Whether an enrollment was paired with a valid attestation that meets every requirement
/// (hardware keys, a registered app, and on Android user-authentication binding and verified
/// boot). The `attested` condition of policies reads this.
pub fn enrollment_attested(attestation: Option<&EnrollmentAttestation>) -> bool {
    attestation.is_some_and(|a| a.attested)
}

/// Whether the user-verification key is proven to require user authentication, so that a
/// biometric claim in an answer signed with it may be reported as `MOBILE_APP_BIOMETRICS`.
pub fn user_verification_proven(attestation: Option<&EnrollmentAttestation>) -> bool {
    attestation.is_some_and(|a| a.user_verification_bound)
}

#[cfg(test)]
#[path = "../../../../tests/src/attestation.rs"]
pub(crate) mod fixtures;
#[cfg(test)]
mod flow_tests;
#[cfg(test)]
mod tests;
