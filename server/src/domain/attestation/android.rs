//! Android Key Attestation: the chain of each enrollment key, its KeyDescription extension
//! (OID 1.3.6.1.4.1.11129.2.1.17), and what it proves.
//!
//! The extension is read with `asn1-rs` (through `x509-parser`); the walk below only maps the
//! AuthorizationList's context tags to the fields Tessera checks, as Android's schema defines them.

use x509_parser::der_parser::asn1_rs::{Any, Class, FromDer, Tag};
use x509_parser::oid_registry::Oid;

use tessera_protocol::api::{
    AttestationPlatform, AttestationSecurityLevel, AttestationSettings, BootState,
    EnrollmentAttestation,
};
use tessera_protocol::jwk::PublicJwk;

use super::chain;
use super::{AttestationError, AttestationTrust};

/// The KeyDescription extension's OID.
pub const KEY_DESCRIPTION_OID: &str = "1.3.6.1.4.1.11129.2.1.17";

// AuthorizationList tags (Android's KeyDescription schema).
const TAG_PURPOSE: u32 = 1;
const TAG_ALGORITHM: u32 = 2;
const TAG_EC_CURVE: u32 = 10;
const TAG_NO_AUTH_REQUIRED: u32 = 503;
const TAG_USER_AUTH_TYPE: u32 = 504;
const TAG_ROOT_OF_TRUST: u32 = 704;
const TAG_ATTESTATION_APPLICATION_ID: u32 = 709;

const PURPOSE_SIGN: u32 = 2;
const ALGORITHM_EC: u32 = 3;
const CURVE_P256: u32 = 1;

/// The fields of an AuthorizationList Tessera reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorizations {
    /// `purpose`.
    pub purposes: Vec<u32>,
    /// `algorithm`.
    pub algorithm: Option<u32>,
    /// `ecCurve`.
    pub ec_curve: Option<u32>,
    /// `noAuthRequired` is present.
    pub no_auth_required: bool,
    /// `userAuthType`.
    pub user_auth_type: Option<u32>,
    /// `rootOfTrust`: device locked, verified boot state.
    pub root_of_trust: Option<(bool, u32)>,
    /// `attestationApplicationId`, still DER.
    pub application_id: Option<Vec<u8>>,
}

/// A parsed KeyDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDescription {
    /// `attestationSecurityLevel`: 0 software, 1 TEE, 2 StrongBox.
    pub attestation_security_level: u32,
    /// `keyMintSecurityLevel` (`keymasterSecurityLevel`).
    pub key_security_level: u32,
    /// `attestationChallenge`.
    pub challenge: Vec<u8>,
    /// `softwareEnforced`.
    pub software_enforced: Authorizations,
    /// `hardwareEnforced` (`teeEnforced`).
    pub hardware_enforced: Authorizations,
}

/// The attestation application id: package names and signing certificate digests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplicationId {
    /// The package names.
    pub packages: Vec<String>,
    /// SHA-256 digests of the signing certificates.
    pub signature_digests: Vec<Vec<u8>>,
}

fn malformed(what: &'static str) -> AttestationError {
    AttestationError::Malformed(what)
}

/// The elements of a constructed value's content.
fn elements<'a>(content: &'a [u8]) -> Result<Vec<Any<'a>>, AttestationError> {
    let mut rest = content;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (next, any) =
            Any::from_der(rest).map_err(|_| malformed("bad DER in KeyDescription"))?;
        out.push(any);
        rest = next;
        if out.len() > 256 {
            return Err(malformed("too many elements"));
        }
    }
    Ok(out)
}

fn sequence_elements<'a>(any: &Any<'a>) -> Result<Vec<Any<'a>>, AttestationError> {
    if any.header.tag() != Tag::Sequence && any.header.tag() != Tag::Set {
        return Err(malformed("expected a SEQUENCE or SET"));
    }
    elements(any.data)
}

fn small_int(any: &Any<'_>) -> Result<u32, AttestationError> {
    if any.header.tag() == Tag::Enumerated {
        return any
            .as_enumerated()
            .map(|e| e.0)
            .map_err(|_| malformed("bad ENUMERATED"));
    }
    any.as_u32().map_err(|_| malformed("bad INTEGER"))
}

fn octets(any: &Any<'_>) -> Result<Vec<u8>, AttestationError> {
    any.as_octetstring()
        .map(|o| o.as_cow().to_vec())
        .map_err(|_| malformed("bad OCTET STRING"))
}

/// The single value inside an EXPLICIT context tag.
fn explicit_inner<'a>(any: &Any<'a>) -> Result<Any<'a>, AttestationError> {
    let (rest, inner) = Any::from_der(any.data).map_err(|_| malformed("bad tagged value"))?;
    if !rest.is_empty() {
        return Err(malformed("trailing data in a tagged value"));
    }
    Ok(inner)
}

fn authorizations(any: &Any<'_>) -> Result<Authorizations, AttestationError> {
    let mut list = Authorizations::default();
    for field in sequence_elements(any)? {
        if field.header.class() != Class::ContextSpecific {
            return Err(malformed(
                "an AuthorizationList field is not context tagged",
            ));
        }
        let inner = explicit_inner(&field)?;
        match field.header.tag().0 {
            TAG_PURPOSE => {
                list.purposes = sequence_elements(&inner)?
                    .iter()
                    .map(small_int)
                    .collect::<Result<_, _>>()?;
            }
            TAG_ALGORITHM => list.algorithm = Some(small_int(&inner)?),
            TAG_EC_CURVE => list.ec_curve = Some(small_int(&inner)?),
            TAG_NO_AUTH_REQUIRED => list.no_auth_required = true,
            TAG_USER_AUTH_TYPE => list.user_auth_type = Some(small_int(&inner)?),
            TAG_ROOT_OF_TRUST => {
                let fields = sequence_elements(&inner)?;
                let (Some(locked), Some(state)) = (fields.get(1), fields.get(2)) else {
                    return Err(malformed("RootOfTrust is incomplete"));
                };
                let locked = locked
                    .as_bool()
                    .map_err(|_| malformed("bad deviceLocked"))?;
                list.root_of_trust = Some((locked, small_int(state)?));
            }
            TAG_ATTESTATION_APPLICATION_ID => list.application_id = Some(octets(&inner)?),
            _ => {}
        }
    }
    Ok(list)
}

/// Parses a KeyDescription (the extension's value).
pub fn parse_key_description(der: &[u8]) -> Result<KeyDescription, AttestationError> {
    let (rest, any) = Any::from_der(der).map_err(|_| malformed("KeyDescription is not DER"))?;
    if !rest.is_empty() {
        return Err(malformed("trailing data after KeyDescription"));
    }
    let fields = sequence_elements(&any)?;
    if fields.len() < 8 {
        return Err(malformed("KeyDescription is incomplete"));
    }
    Ok(KeyDescription {
        attestation_security_level: small_int(&fields[1])?,
        key_security_level: small_int(&fields[3])?,
        challenge: octets(&fields[4])?,
        software_enforced: authorizations(&fields[6])?,
        hardware_enforced: authorizations(&fields[7])?,
    })
}

/// Parses an AttestationApplicationId.
pub fn parse_application_id(der: &[u8]) -> Result<ApplicationId, AttestationError> {
    let (rest, any) = Any::from_der(der).map_err(|_| malformed("the application id is not DER"))?;
    if !rest.is_empty() {
        return Err(malformed("trailing data after the application id"));
    }
    let fields = sequence_elements(&any)?;
    let (Some(infos), Some(digests)) = (fields.first(), fields.get(1)) else {
        return Err(malformed("the application id is incomplete"));
    };
    let mut id = ApplicationId::default();
    for info in sequence_elements(infos)? {
        let parts = sequence_elements(&info)?;
        let name = parts
            .first()
            .ok_or(malformed("a package info has no name"))?;
        let name = String::from_utf8(octets(name)?)
            .map_err(|_| malformed("a package name is not UTF-8"))?;
        id.packages.push(name);
    }
    for digest in sequence_elements(digests)? {
        id.signature_digests.push(octets(&digest)?);
    }
    Ok(id)
}

/// What one key's chain proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFacts {
    /// The key's security level.
    pub security_level: AttestationSecurityLevel,
    /// `userAuthType` set and `noAuthRequired` absent.
    pub user_auth_bound: bool,
    /// The verified-boot state, when the attestation has a RootOfTrust.
    pub boot_state: Option<BootState>,
    /// The attested app is one of the registered apps.
    pub app_verified: bool,
}

fn security_level(level: u32) -> Result<AttestationSecurityLevel, AttestationError> {
    match level {
        0 => Ok(AttestationSecurityLevel::Software),
        1 => Ok(AttestationSecurityLevel::TrustedEnvironment),
        2 => Ok(AttestationSecurityLevel::StrongBox),
        _ => Err(malformed("unknown security level")),
    }
}

fn boot_state(locked: bool, state: u32) -> BootState {
    match (locked, state) {
        (true, 0) => BootState::Verified,
        (true, 1) => BootState::SelfSigned,
        (_, 3) => BootState::Failed,
        _ => BootState::Unverified,
    }
}

fn app_registered(settings: &AttestationSettings, app: &ApplicationId) -> bool {
    settings.android_apps.iter().any(|registered| {
        app.packages.iter().any(|p| p == &registered.package_name)
            && app.signature_digests.iter().any(|digest| {
                let hex = hex::encode(digest);
                registered
                    .signing_cert_digests
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(&hex))
            })
    })
}

/// Verifies one key's chain: to a trusted root, not revoked, the leaf's key is `expected_key`,
/// the challenge is `challenge`, the key is an EC P-256 signing key; returns what it proves.
pub fn verify_key_chain(
    trust: &AttestationTrust,
    settings: &AttestationSettings,
    challenge: &[u8],
    chain_b64: &[String],
    expected_key: &PublicJwk,
) -> Result<KeyFacts, AttestationError> {
    let ders = chain::decode_base64_chain(chain_b64)?;
    let certs = chain::parse_all(&ders)?;
    chain::verify_to_roots(&certs, &trust.android_roots, &trust.revoked_serials)?;
    let leaf = &certs[0];
    let attested = PublicJwk::from_sec1_bytes(&leaf.public_key().subject_public_key.data)
        .map_err(|_| AttestationError::WrongKeyKind)?;
    if !attested.same_key(expected_key) {
        return Err(AttestationError::KeyMismatch);
    }
    let oid: Oid<'static> = KEY_DESCRIPTION_OID
        .parse()
        .map_err(|_| malformed("KeyDescription OID"))?;
    let extension = leaf
        .extensions()
        .iter()
        .find(|e| e.oid == oid)
        .ok_or(malformed("the leaf has no KeyDescription"))?;
    let description = parse_key_description(extension.value)?;
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        description.challenge.as_slice(),
        challenge,
    )) {
        return Err(AttestationError::ChallengeMismatch);
    }
    let level = security_level(description.key_security_level)?
        .min_level(security_level(description.attestation_security_level)?);
    // What the hardware enforces counts only when the key lives in hardware; a software key's
    // properties are in softwareEnforced.
    let enforced = if level == AttestationSecurityLevel::Software {
        &description.software_enforced
    } else {
        &description.hardware_enforced
    };
    if enforced.algorithm != Some(ALGORITHM_EC)
        || enforced.ec_curve.is_some_and(|c| c != CURVE_P256)
        || !enforced.purposes.contains(&PURPOSE_SIGN)
    {
        return Err(AttestationError::WrongKeyKind);
    }
    let application_id = description
        .software_enforced
        .application_id
        .as_ref()
        .or(description.hardware_enforced.application_id.as_ref());
    let app_verified = match application_id {
        Some(der) => app_registered(settings, &parse_application_id(der)?),
        None => false,
    };
    Ok(KeyFacts {
        security_level: level,
        // A software key store's claims prove nothing.
        user_auth_bound: level != AttestationSecurityLevel::Software
            && enforced.user_auth_type.is_some_and(|t| t != 0)
            && !enforced.no_auth_required,
        boot_state: enforced
            .root_of_trust
            .map(|(locked, state)| boot_state(locked, state)),
        app_verified,
    })
}

trait MinLevel {
    fn rank(self) -> u8;
    fn min_level(self, other: Self) -> Self;
}

impl MinLevel for AttestationSecurityLevel {
    fn rank(self) -> u8 {
        match self {
            AttestationSecurityLevel::Software => 0,
            AttestationSecurityLevel::TrustedEnvironment => 1,
            AttestationSecurityLevel::StrongBox | AttestationSecurityLevel::SecureEnclave => 2,
        }
    }
    fn min_level(self, other: Self) -> Self {
        if other.rank() < self.rank() {
            other
        } else {
            self
        }
    }
}

/// Verifies both enrollment keys' chains and combines what they prove: the lower security
/// level, the user-verification key's binding, the boot state and app of both.
pub fn verify_registration_keys(
    trust: &AttestationTrust,
    settings: &AttestationSettings,
    challenge: &[u8],
    possession_chain: &[String],
    user_verification_chain: &[String],
    possession_key: &PublicJwk,
    user_verification_key: &PublicJwk,
) -> Result<EnrollmentAttestation, AttestationError> {
    let possession =
        verify_key_chain(trust, settings, challenge, possession_chain, possession_key)?;
    let user_verification = verify_key_chain(
        trust,
        settings,
        challenge,
        user_verification_chain,
        user_verification_key,
    )?;
    let boot_state = match (possession.boot_state, user_verification.boot_state) {
        (Some(a), Some(b)) if a == b => Some(a),
        (Some(_), Some(_)) => Some(BootState::Unverified),
        (a, b) => a.or(b),
    };
    let mut record = EnrollmentAttestation {
        platform: AttestationPlatform::Android,
        security_level: possession
            .security_level
            .min_level(user_verification.security_level),
        user_verification_bound: user_verification.user_auth_bound,
        app_verified: possession.app_verified && user_verification.app_verified,
        boot_state,
        attested: false,
    };
    record.attested = super::meets_requirements(&record);
    Ok(record)
}
