//! Apple App Attest: the attestation object a new App Attest key produced over the
//! registration's attestation challenge, verified per Apple's documented steps
//! ("Validating apps that connect to your server").

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ciborium::Value;
use sha2::{Digest, Sha256};
use x509_parser::der_parser::asn1_rs::{Any, FromDer};
use x509_parser::oid_registry::Oid;

use tessera_protocol::api::{
    AppleAppIdentity, AttestationPlatform, AttestationSecurityLevel, AttestationSettings,
    EnrollmentAttestation,
};

use super::chain;
use super::{AttestationError, AttestationTrust};

/// The credential certificate extension holding the nonce.
pub const NONCE_EXTENSION_OID: &str = "1.2.840.113635.100.8.2";
/// The production environment's aaguid.
pub const AAGUID_PRODUCTION: &[u8; 16] = b"appattest\0\0\0\0\0\0\0";
/// The development environment's aaguid.
pub const AAGUID_DEVELOPMENT: &[u8; 16] = b"appattestdevelop";
/// The largest attestation object accepted, in bytes.
const MAX_OBJECT_BYTES: usize = 32 * 1024;

/// A verified App Attest attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAppAttest {
    /// What it proves.
    pub record: EnrollmentAttestation,
    /// The App Attest key (uncompressed SEC1 point), for later assertions.
    pub public_key: Vec<u8>,
}

fn malformed(what: &'static str) -> AttestationError {
    AttestationError::Malformed(what)
}

fn map_get<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

/// SHA-256 of `teamId.bundleId`: the rpIdHash an app's attestations carry.
pub fn app_id_hash(app: &AppleAppIdentity) -> [u8; 32] {
    Sha256::digest(format!("{}.{}", app.team_id, app.bundle_id).as_bytes()).into()
}

/// Verifies an attestation object (`attestation_object_b64`, standard base64 CBOR) of the key
/// `key_id_b64` made over `client_data_hash`.
pub fn verify_attestation(
    trust: &AttestationTrust,
    settings: &AttestationSettings,
    client_data_hash: &[u8],
    key_id_b64: &str,
    attestation_object_b64: &str,
) -> Result<VerifiedAppAttest, AttestationError> {
    if attestation_object_b64.len() > MAX_OBJECT_BYTES * 4 / 3 + 4 {
        return Err(malformed("the attestation object is too large"));
    }
    let key_id = STANDARD
        .decode(key_id_b64)
        .map_err(|_| malformed("the key id is not base64"))?;
    let object = STANDARD
        .decode(attestation_object_b64)
        .map_err(|_| malformed("the attestation object is not base64"))?;
    let value: Value = ciborium::de::from_reader(object.as_slice())
        .map_err(|_| malformed("the attestation object is not CBOR"))?;
    let map = value
        .as_map()
        .ok_or(malformed("the attestation object is not a map"))?;
    if map_get(map, "fmt").and_then(Value::as_text) != Some("apple-appattest") {
        return Err(malformed("the format is not apple-appattest"));
    }
    let statement = map_get(map, "attStmt")
        .and_then(Value::as_map)
        .ok_or(malformed("no attStmt"))?;
    let auth_data = map_get(map, "authData")
        .and_then(Value::as_bytes)
        .ok_or(malformed("no authData"))?;
    let x5c = map_get(statement, "x5c")
        .and_then(Value::as_array)
        .ok_or(malformed("no x5c"))?;
    let ders = x5c
        .iter()
        .map(|c| {
            c.as_bytes()
                .cloned()
                .ok_or(malformed("an x5c entry is not bytes"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ders.is_empty() || ders.len() > 4 {
        return Err(malformed("x5c has no or too many certificates"));
    }
    // 1. The chain leads to Apple's App Attestation root.
    let certs = chain::parse_all(&ders)?;
    chain::verify_to_roots(&certs, &trust.apple_roots, &trust.revoked_serials)?;
    let credential = &certs[0];
    // 2-4. nonce = SHA256(authData || clientDataHash) is the credential certificate's extension.
    let mut hasher = Sha256::new();
    hasher.update(auth_data);
    hasher.update(client_data_hash);
    let nonce = hasher.finalize();
    let oid: Oid<'static> = NONCE_EXTENSION_OID
        .parse()
        .map_err(|_| malformed("nonce OID"))?;
    let extension = credential
        .extensions()
        .iter()
        .find(|e| e.oid == oid)
        .ok_or(malformed("the credential certificate has no nonce"))?;
    if nonce_of_extension(extension.value)?.as_slice() != &nonce[..] {
        return Err(AttestationError::ChallengeMismatch);
    }
    // 5. The key id is SHA-256 of the credential's public key.
    let public_key = credential.public_key().subject_public_key.data.to_vec();
    if public_key.len() != 65 || Sha256::digest(&public_key)[..] != key_id[..] {
        return Err(AttestationError::KeyMismatch);
    }
    // 6-9. authData: rpIdHash (32) | flags (1) | counter (4) | aaguid (16) | credIdLen (2) | credId.
    if auth_data.len() < 55 {
        return Err(malformed("authData is too short"));
    }
    let rp_id_hash = &auth_data[0..32];
    let counter = u32::from_be_bytes([auth_data[33], auth_data[34], auth_data[35], auth_data[36]]);
    let aaguid = &auth_data[37..53];
    let credential_id_len = usize::from(u16::from_be_bytes([auth_data[53], auth_data[54]]));
    let credential_id = auth_data
        .get(55..55 + credential_id_len)
        .ok_or(malformed("authData's credential id is truncated"))?;
    if counter != 0 {
        return Err(AttestationError::CounterNotZero);
    }
    if credential_id != key_id.as_slice() {
        return Err(AttestationError::KeyMismatch);
    }
    let app = settings
        .apple_apps
        .iter()
        .find(|app| app_id_hash(app).as_slice() == rp_id_hash);
    if let Some(app) = app {
        let expected: &[u8] = if app.development {
            AAGUID_DEVELOPMENT
        } else {
            AAGUID_PRODUCTION
        };
        if aaguid != expected {
            return Err(AttestationError::WrongEnvironment);
        }
    } else if aaguid != AAGUID_PRODUCTION && aaguid != AAGUID_DEVELOPMENT {
        return Err(AttestationError::WrongEnvironment);
    }
    let mut record = EnrollmentAttestation {
        platform: AttestationPlatform::Ios,
        security_level: AttestationSecurityLevel::SecureEnclave,
        user_verification_bound: false,
        app_verified: app.is_some(),
        boot_state: None,
        attested: false,
    };
    record.attested = super::meets_requirements(&record);
    Ok(VerifiedAppAttest { record, public_key })
}

/// The largest assertion accepted, in bytes.
const MAX_ASSERTION_BYTES: usize = 4 * 1024;

/// A verified App Attest assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedAssertion {
    /// The assertion's counter: greater than the one stored, and to be stored in its place
    /// (conditionally: only where the stored one is still lower, so of two answers with one
    /// counter only one is accepted).
    pub counter: u32,
}

/// The parts of an assertion (`{"signature": bytes, "authenticatorData": bytes}`, CBOR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAssertion {
    /// The signature (ECDSA P-256, ASN.1 DER).
    pub signature: Vec<u8>,
    /// The authenticator data: rpIdHash (32) | flags (1) | counter (4, big-endian) | ...
    pub authenticator_data: Vec<u8>,
}

impl ParsedAssertion {
    /// Parses an assertion (standard base64 of its CBOR).
    pub fn parse(assertion_b64: &str) -> Result<Self, AttestationError> {
        if assertion_b64.len() > MAX_ASSERTION_BYTES * 4 / 3 + 4 {
            return Err(malformed("the assertion is too large"));
        }
        let bytes = STANDARD
            .decode(assertion_b64)
            .map_err(|_| malformed("the assertion is not base64"))?;
        Self::from_cbor(&bytes)
    }

    /// Parses an assertion's CBOR bytes (as `generateAssertion` returns them).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, AttestationError> {
        if bytes.len() > MAX_ASSERTION_BYTES {
            return Err(malformed("the assertion is too large"));
        }
        let value: Value =
            ciborium::de::from_reader(bytes).map_err(|_| malformed("the assertion is not CBOR"))?;
        let map = value
            .as_map()
            .ok_or(malformed("the assertion is not a map"))?;
        let signature = map_get(map, "signature")
            .and_then(Value::as_bytes)
            .ok_or(malformed("the assertion has no signature"))?
            .clone();
        let authenticator_data = map_get(map, "authenticatorData")
            .and_then(Value::as_bytes)
            .ok_or(malformed("the assertion has no authenticatorData"))?
            .clone();
        if authenticator_data.len() < 37 {
            return Err(malformed("the assertion's authenticatorData is too short"));
        }
        Ok(Self {
            signature,
            authenticator_data,
        })
    }

    /// The RP id hash (SHA-256 of `teamId.bundleId`).
    pub fn rp_id_hash(&self) -> &[u8] {
        &self.authenticator_data[0..32]
    }

    /// The counter.
    pub fn counter(&self) -> u32 {
        let d = &self.authenticator_data;
        u32::from_be_bytes([d[33], d[34], d[35], d[36]])
    }
}

/// Verifies an App Attest assertion per Apple's steps ("Validating apps that connect to your
/// server", assertions): the signature by the attested key (`public_key`, uncompressed SEC1, as
/// the attestation gave it) over `nonce = SHA-256(authenticatorData || clientDataHash)`, the RP
/// id hash (one of `app_id_hashes`, the application's registered apps), and a counter strictly
/// greater than `stored_counter`. `client_data_hash` is SHA-256 of what the assertion vouches
/// for (for an answer: its signed form, as sent).
pub fn verify_assertion(
    public_key: &[u8],
    app_id_hashes: &[[u8; 32]],
    client_data_hash: &[u8],
    assertion_b64: &str,
    stored_counter: u32,
) -> Result<VerifiedAssertion, AttestationError> {
    let assertion = ParsedAssertion::parse(assertion_b64)?;
    verify_parsed_assertion(
        public_key,
        app_id_hashes,
        client_data_hash,
        &assertion,
        stored_counter,
    )
}

/// [`verify_assertion`] of an assertion's CBOR bytes (an answer's `app_attest_assertion`, once
/// its base64url is decoded).
pub fn verify_assertion_cbor(
    public_key: &[u8],
    app_id_hashes: &[[u8; 32]],
    client_data_hash: &[u8],
    assertion_cbor: &[u8],
    stored_counter: u32,
) -> Result<VerifiedAssertion, AttestationError> {
    let assertion = ParsedAssertion::from_cbor(assertion_cbor)?;
    verify_parsed_assertion(
        public_key,
        app_id_hashes,
        client_data_hash,
        &assertion,
        stored_counter,
    )
}

fn verify_parsed_assertion(
    public_key: &[u8],
    app_id_hashes: &[[u8; 32]],
    client_data_hash: &[u8],
    assertion: &ParsedAssertion,
    stored_counter: u32,
) -> Result<VerifiedAssertion, AttestationError> {
    let mut hasher = Sha256::new();
    hasher.update(&assertion.authenticator_data);
    hasher.update(client_data_hash);
    let nonce = hasher.finalize();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, public_key)
        .verify(&nonce, &assertion.signature)
        .map_err(|_| AttestationError::AssertionSignature)?;
    if !app_id_hashes
        .iter()
        .any(|h| h.as_slice() == assertion.rp_id_hash())
    {
        return Err(AttestationError::AssertionWrongApp);
    }
    let counter = assertion.counter();
    if counter <= stored_counter {
        return Err(AttestationError::CounterReplay);
    }
    Ok(VerifiedAssertion { counter })
}

/// The nonce inside the credential certificate's extension: `SEQUENCE { [1] EXPLICIT OCTET STRING }`.
fn nonce_of_extension(der: &[u8]) -> Result<Vec<u8>, AttestationError> {
    let (_, sequence) =
        Any::from_der(der).map_err(|_| malformed("the nonce extension is not DER"))?;
    let (_, tagged) =
        Any::from_der(sequence.data).map_err(|_| malformed("the nonce extension is empty"))?;
    if tagged.header.tag().0 != 1 {
        return Err(malformed("the nonce extension has no [1]"));
    }
    let (_, octets) = Any::from_der(tagged.data).map_err(|_| malformed("the nonce is not DER"))?;
    octets
        .as_octetstring()
        .map(|o| o.as_cow().to_vec())
        .map_err(|_| malformed("the nonce is not an OCTET STRING"))
}
