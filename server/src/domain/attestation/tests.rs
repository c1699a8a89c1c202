//! Unit tests of the verifiers: chains and objects built under a test root (fixtures), run
//! through the real parsing and verification.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tessera_protocol::api::{
    AndroidAppIdentity, AppleAppIdentity, AttestationMode, AttestationPlatform,
    AttestationSecurityLevel, AttestationSettings, BootState,
};
use tessera_protocol::envelope::SoftwareSigningKey;
use tessera_protocol::jwk::PublicJwk;

use super::fixtures::{self, AppAttestSpec, KeySpec, TestCa};
use super::*;
use crate::config::ServerConfig;

const CHALLENGE: [u8; 32] = [42; 32];

fn trust_with(root: &TestCa, revocation: Option<&str>) -> AttestationTrust {
    let config = ServerConfig {
        attestation_extra_roots: vec![root.pem.clone()],
        attestation_revocation_status: revocation.map(str::to_string),
        ..ServerConfig::default()
    };
    AttestationTrust::from_config(&config).unwrap()
}

fn settings() -> AttestationSettings {
    AttestationSettings {
        mode: AttestationMode::Require,
        android_apps: vec![AndroidAppIdentity {
            package_name: fixtures::TEST_PACKAGE.into(),
            signing_cert_digests: vec![hex::encode(fixtures::test_signing_digest())],
        }],
        apple_apps: vec![AppleAppIdentity {
            team_id: "ABCDE12345".into(),
            bundle_id: "com.example.tessera".into(),
            development: false,
        }],
    }
}

struct Keys {
    possession: PublicJwk,
    user_verification: PublicJwk,
}

fn keys() -> Keys {
    Keys {
        possession: SoftwareSigningKey::generate().public_jwk().clone(),
        user_verification: SoftwareSigningKey::generate().public_jwk().clone(),
    }
}

fn point(key: &PublicJwk) -> Vec<u8> {
    key.verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec()
}

fn b64(chain: &[Vec<u8>]) -> Vec<String> {
    chain.iter().map(|c| STANDARD.encode(c)).collect()
}

/// Both chains under `root`, the user-verification key's from `uv_spec`.
fn verify_android(
    trust: &AttestationTrust,
    root: &TestCa,
    possession_spec: &KeySpec,
    uv_spec: &KeySpec,
) -> Result<EnrollmentAttestation, AttestationError> {
    let keys = keys();
    let p = fixtures::android_chain(root, &point(&keys.possession), possession_spec, 10);
    let u = fixtures::android_chain(root, &point(&keys.user_verification), uv_spec, 11);
    android::verify_registration_keys(
        trust,
        &settings(),
        &CHALLENGE,
        &b64(&p),
        &b64(&u),
        &keys.possession,
        &keys.user_verification,
    )
}

#[test]
fn a_genuine_android_attestation_proves_hardware_keys_user_binding_app_and_boot() {
    let root = TestCa::root("Test Root");
    let trust = trust_with(&root, None);
    let record = verify_android(
        &trust,
        &root,
        &KeySpec::hardware(&CHALLENGE, false),
        &KeySpec::hardware(&CHALLENGE, true),
    )
    .unwrap();
    assert_eq!(record.platform, AttestationPlatform::Android);
    assert_eq!(
        record.security_level,
        AttestationSecurityLevel::TrustedEnvironment
    );
    assert!(record.user_verification_bound);
    assert!(record.app_verified);
    assert_eq!(record.boot_state, Some(BootState::Verified));
    assert!(record.attested);
    assert_eq!(shortfall(&record), None);
}

#[test]
fn a_chain_for_another_challenge_is_refused() {
    let root = TestCa::root("Test Root");
    let trust = trust_with(&root, None);
    let other = [7u8; 32];
    let err = verify_android(
        &trust,
        &root,
        &KeySpec::hardware(&other, false),
        &KeySpec::hardware(&other, true),
    )
    .unwrap_err();
    assert_eq!(err, AttestationError::ChallengeMismatch);
}

#[test]
fn a_chain_to_an_unknown_root_is_refused() {
    let root = TestCa::root("Test Root");
    let stranger = TestCa::root("Stranger Root");
    let trust = trust_with(&root, None);
    let err = verify_android(
        &trust,
        &stranger,
        &KeySpec::hardware(&CHALLENGE, false),
        &KeySpec::hardware(&CHALLENGE, true),
    )
    .unwrap_err();
    assert_eq!(err, AttestationError::UnknownRoot);
    // Nor do the shipped roots alone trust a test chain.
    let shipped = AttestationTrust::from_config(&ServerConfig::default()).unwrap();
    let err = verify_android(
        &shipped,
        &root,
        &KeySpec::hardware(&CHALLENGE, false),
        &KeySpec::hardware(&CHALLENGE, true),
    )
    .unwrap_err();
    assert_eq!(err, AttestationError::UnknownRoot);
}

#[test]
fn a_revoked_certificate_is_refused() {
    let root = TestCa::root("Test Root");
    // The leaf of the user-verification chain has serial 11 (0x0b); Google's list names
    // serials in hex.
    let trust = trust_with(
        &root,
        Some(r#"{"entries": {"0b": {"status": "REVOKED", "reason": "KEY_COMPROMISE"}}}"#),
    );
    let err = verify_android(
        &trust,
        &root,
        &KeySpec::hardware(&CHALLENGE, false),
        &KeySpec::hardware(&CHALLENGE, true),
    )
    .unwrap_err();
    assert_eq!(err, AttestationError::Revoked);
}

#[test]
fn a_tampered_chain_is_refused() {
    let root = TestCa::root("Test Root");
    let trust = trust_with(&root, None);
    let keys = keys();
    let mut chain = fixtures::android_chain(
        &root,
        &point(&keys.possession),
        &KeySpec::hardware(&CHALLENGE, false),
        10,
    );
    // Another intermediate (same name, other key) in place of the leaf's issuer.
    chain[1] = root.intermediate("Test Attestation Intermediate", 2).der;
    let err = android::verify_key_chain(
        &trust,
        &settings(),
        &CHALLENGE,
        &b64(&chain),
        &keys.possession,
    )
    .unwrap_err();
    assert_eq!(err, AttestationError::BadSignature);
}

#[test]
fn a_chain_of_another_key_is_refused() {
    let root = TestCa::root("Test Root");
    let trust = trust_with(&root, None);
    let keys = keys();
    let chain = fixtures::android_chain(
        &root,
        &point(&keys.user_verification),
        &KeySpec::hardware(&CHALLENGE, false),
        10,
    );
    let err = android::verify_key_chain(
        &trust,
        &settings(),
        &CHALLENGE,
        &b64(&chain),
        &keys.possession,
    )
    .unwrap_err();
    assert_eq!(err, AttestationError::KeyMismatch);
}

#[test]
fn a_key_that_is_not_an_ec_signing_key_is_refused() {
    let root = TestCa::root("Test Root");
    let trust = trust_with(&root, None);
    let mut spec = KeySpec::hardware(&CHALLENGE, false);
    spec.purposes = vec![0, 1]; // encrypt, decrypt
    let err =
        verify_android(&trust, &root, &spec, &KeySpec::hardware(&CHALLENGE, true)).unwrap_err();
    assert_eq!(err, AttestationError::WrongKeyKind);
}

#[test]
fn a_wrong_package_or_signing_digest_leaves_the_app_unverified() {
    let root = TestCa::root("Test Root");
    let trust = trust_with(&root, None);
    let mut wrong_package = KeySpec::hardware(&CHALLENGE, true);
    wrong_package.package = "com.evil.clone".into();
    let record = verify_android(
        &trust,
        &root,
        &KeySpec::hardware(&CHALLENGE, false),
        &wrong_package,
    )
    .unwrap();
    assert!(!record.app_verified);
    assert!(!record.attested);
    assert_eq!(
        shortfall(&record),
        Some("the attested app is not one the application registered")
    );
    let mut wrong_digest = KeySpec::hardware(&CHALLENGE, true);
    wrong_digest.signature_digests = vec![vec![0u8; 32]];
    let record = verify_android(
        &trust,
        &root,
        &KeySpec::hardware(&CHALLENGE, false),
        &wrong_digest,
    )
    .unwrap();
    assert!(!record.app_verified);
}

#[test]
fn a_software_key_falls_short_of_require() {
    let root = TestCa::root("Test Root");
    let trust = trust_with(&root, None);
    let mut software = KeySpec::hardware(&CHALLENGE, true);
    software.security_level = 0;
    let record = verify_android(
        &trust,
        &root,
        &KeySpec::hardware(&CHALLENGE, false),
        &software,
    )
    .unwrap();
    assert_eq!(record.security_level, AttestationSecurityLevel::Software);
    // A software key store's claim of user authentication proves nothing.
    assert!(!record.user_verification_bound);
    assert_eq!(shortfall(&record), Some("the keys are not hardware-backed"));
}

#[test]
fn a_user_verification_key_without_user_authentication_falls_short() {
    let root = TestCa::root("Test Root");
    let trust = trust_with(&root, None);
    let record = verify_android(
        &trust,
        &root,
        &KeySpec::hardware(&CHALLENGE, false),
        &KeySpec::hardware(&CHALLENGE, false),
    )
    .unwrap();
    assert!(!record.user_verification_bound);
    assert!(!record.attested);
    assert!(!user_verification_proven(Some(&record)));
}

#[test]
fn an_unlocked_bootloader_falls_short() {
    let root = TestCa::root("Test Root");
    let trust = trust_with(&root, None);
    let mut unlocked = KeySpec::hardware(&CHALLENGE, false);
    unlocked.root_of_trust = Some((false, 2));
    let mut unlocked_uv = KeySpec::hardware(&CHALLENGE, true);
    unlocked_uv.root_of_trust = Some((false, 2));
    let record = verify_android(&trust, &root, &unlocked, &unlocked_uv).unwrap();
    assert_eq!(record.boot_state, Some(BootState::Unverified));
    assert_eq!(
        shortfall(&record),
        Some("the device's bootloader is unlocked or its boot is not verified")
    );
}

fn apple_spec() -> AppAttestSpec {
    AppAttestSpec {
        app_id: "ABCDE12345.com.example.tessera".into(),
        aaguid: *fixtures::AAGUID_PRODUCTION,
        counter: 0,
        client_data_hash: CHALLENGE.to_vec(),
    }
}

fn verify_apple(
    trust: &AttestationTrust,
    root: &TestCa,
    spec: &AppAttestSpec,
) -> Result<apple::VerifiedAppAttest, AttestationError> {
    let (key_id, object) = fixtures::app_attest_object(root, spec);
    apple::verify_attestation(
        trust,
        &settings(),
        &CHALLENGE,
        &STANDARD.encode(key_id),
        &STANDARD.encode(object),
    )
}

#[test]
fn a_genuine_app_attest_object_proves_the_app() {
    let root = TestCa::root("Test Apple Root");
    let trust = trust_with(&root, None);
    let verified = verify_apple(&trust, &root, &apple_spec()).unwrap();
    assert_eq!(verified.record.platform, AttestationPlatform::Ios);
    assert!(verified.record.app_verified);
    assert!(!verified.record.user_verification_bound);
    assert!(verified.record.attested);
    assert_eq!(verified.public_key.len(), 65);
}

#[test]
fn app_attest_refusals() {
    let root = TestCa::root("Test Apple Root");
    let trust = trust_with(&root, None);
    // Another registration's challenge.
    let mut other = apple_spec();
    other.client_data_hash = vec![1; 32];
    assert_eq!(
        verify_apple(&trust, &root, &other).unwrap_err(),
        AttestationError::ChallengeMismatch
    );
    // Another app's id hash: not the application's app.
    let mut wrong_app = apple_spec();
    wrong_app.app_id = "ZZZZZ99999.com.evil.clone".into();
    let verified = verify_apple(&trust, &root, &wrong_app).unwrap();
    assert!(!verified.record.app_verified);
    assert!(!verified.record.attested);
    // A used key (counter not zero).
    let mut used = apple_spec();
    used.counter = 3;
    assert_eq!(
        verify_apple(&trust, &root, &used).unwrap_err(),
        AttestationError::CounterNotZero
    );
    // The development environment for a production app.
    let mut development = apple_spec();
    development.aaguid = *fixtures::AAGUID_DEVELOPMENT;
    assert_eq!(
        verify_apple(&trust, &root, &development).unwrap_err(),
        AttestationError::WrongEnvironment
    );
    // Another root.
    let stranger = TestCa::root("Stranger");
    assert_eq!(
        verify_apple(&trust, &stranger, &apple_spec()).unwrap_err(),
        AttestationError::UnknownRoot
    );
    // Garbage.
    assert!(matches!(
        apple::verify_attestation(&trust, &settings(), &CHALLENGE, "AAAA", "not base64!"),
        Err(AttestationError::Malformed(_))
    ));
}

const APP_ID: &str = "ABCDE12345.com.example.tessera";

fn app_hashes() -> Vec<[u8; 32]> {
    settings()
        .apple_apps
        .iter()
        .map(apple::app_id_hash)
        .collect()
}

/// The attested key of a genuine attestation, as the server keeps it.
fn attested(key: &fixtures::AppAttestKey) -> Vec<u8> {
    let root = TestCa::root("Test Apple Root");
    let trust = trust_with(&root, None);
    let (key_id, object) = key.attestation_object(&root, &apple_spec());
    apple::verify_attestation(
        &trust,
        &settings(),
        &CHALLENGE,
        &STANDARD.encode(key_id),
        &STANDARD.encode(object),
    )
    .unwrap()
    .public_key
}

#[test]
fn an_assertion_with_a_greater_counter_is_accepted() {
    let key = fixtures::AppAttestKey::new();
    let public_key = attested(&key);
    let hash = [7u8; 32];
    let assertion = STANDARD.encode(key.assertion(APP_ID, 1, &hash));
    let verified =
        apple::verify_assertion(&public_key, &app_hashes(), &hash, &assertion, 0).unwrap();
    assert_eq!(verified.counter, 1);
    // The next one, with a counter that jumped (the device made assertions elsewhere).
    let next = STANDARD.encode(key.assertion(APP_ID, 9, &hash));
    assert_eq!(
        apple::verify_assertion(&public_key, &app_hashes(), &hash, &next, 1)
            .unwrap()
            .counter,
        9
    );
}

#[test]
fn assertion_refusals() {
    let key = fixtures::AppAttestKey::new();
    let public_key = attested(&key);
    let hash = [7u8; 32];
    let verify = |assertion: &str, stored: u32| {
        apple::verify_assertion(&public_key, &app_hashes(), &hash, assertion, stored)
    };
    // A replayed (same) or lower counter.
    let assertion = STANDARD.encode(key.assertion(APP_ID, 5, &hash));
    assert_eq!(
        verify(&assertion, 5).unwrap_err(),
        AttestationError::CounterReplay
    );
    assert_eq!(
        verify(&assertion, 6).unwrap_err(),
        AttestationError::CounterReplay
    );
    // Another key's assertion.
    let other = STANDARD.encode(fixtures::AppAttestKey::new().assertion(APP_ID, 6, &hash));
    assert_eq!(
        verify(&other, 5).unwrap_err(),
        AttestationError::AssertionSignature
    );
    // Over other client data (another answer).
    let elsewhere = STANDARD.encode(key.assertion(APP_ID, 6, &[8u8; 32]));
    assert_eq!(
        verify(&elsewhere, 5).unwrap_err(),
        AttestationError::AssertionSignature
    );
    // Another app.
    let clone = STANDARD.encode(key.assertion("ZZZZZ99999.com.evil.clone", 6, &hash));
    assert_eq!(
        verify(&clone, 5).unwrap_err(),
        AttestationError::AssertionWrongApp
    );
    // A counter changed after signing.
    let mut parsed =
        apple::ParsedAssertion::parse(&STANDARD.encode(key.assertion(APP_ID, 6, &hash))).unwrap();
    parsed.authenticator_data[36] = 7;
    let tampered = {
        use ciborium::Value;
        let object = Value::Map(vec![
            (
                Value::Text("signature".into()),
                Value::Bytes(parsed.signature),
            ),
            (
                Value::Text("authenticatorData".into()),
                Value::Bytes(parsed.authenticator_data),
            ),
        ]);
        let mut bytes = Vec::new();
        ciborium::ser::into_writer(&object, &mut bytes).unwrap();
        STANDARD.encode(bytes)
    };
    assert_eq!(
        verify(&tampered, 5).unwrap_err(),
        AttestationError::AssertionSignature
    );
}

#[test]
fn the_assertion_parser_reads_apples_layout_and_refuses_garbage() {
    let key = fixtures::AppAttestKey::new();
    let parsed = apple::ParsedAssertion::parse(&STANDARD.encode(key.assertion(
        APP_ID,
        0x0102_0304,
        &[1; 32],
    )))
    .unwrap();
    assert_eq!(parsed.counter(), 0x0102_0304);
    assert_eq!(parsed.rp_id_hash(), &app_hashes()[0][..]);
    assert_eq!(parsed.authenticator_data.len(), 37);
    let cbor = |value: ciborium::Value| {
        let mut bytes = Vec::new();
        ciborium::ser::into_writer(&value, &mut bytes).unwrap();
        STANDARD.encode(bytes)
    };
    use ciborium::Value;
    for bad in [
        "not base64!".to_string(),
        STANDARD.encode(b"\xff\xff"),
        cbor(Value::Array(vec![])),
        cbor(Value::Map(vec![(
            Value::Text("signature".into()),
            Value::Bytes(vec![1]),
        )])),
        cbor(Value::Map(vec![
            (Value::Text("signature".into()), Value::Bytes(vec![1])),
            (
                Value::Text("authenticatorData".into()),
                Value::Bytes(vec![0; 36]),
            ),
        ])),
        "A".repeat(8 * 1024),
    ] {
        assert!(
            matches!(
                apple::ParsedAssertion::parse(&bad),
                Err(AttestationError::Malformed(_))
            ),
            "{bad:.40}"
        );
    }
}

#[test]
fn the_shipped_roots_parse_and_a_bad_revocation_list_is_refused() {
    let trust = AttestationTrust::from_config(&ServerConfig::default()).unwrap();
    assert_eq!(trust.android_roots.len(), 3);
    assert_eq!(trust.apple_roots.len(), 1);
    assert!(parse_revocation_status("{}").is_err());
    assert!(parse_revocation_status(r#"{"entries": {"xyz": {"status": "REVOKED"}}}"#).is_err());
    let serials =
        parse_revocation_status(r#"{"entries": {"00Ab": {"status": "SUSPENDED"}}}"#).unwrap();
    assert!(serials.contains("ab"));
    let config = ServerConfig {
        attestation_extra_roots: vec!["not a certificate".into()],
        ..ServerConfig::default()
    };
    assert_eq!(
        AttestationTrust::from_config(&config).unwrap_err(),
        TrustConfigError::BadRoot
    );
}

#[test]
fn malformed_key_descriptions_are_refused_not_panicking() {
    for bytes in [
        &b""[..],
        &[0x30, 0x03, 0x02, 0x01][..],
        &[0x30, 0x00][..],
        &[0xff; 40][..],
    ] {
        assert!(android::parse_key_description(bytes).is_err());
    }
}

#[test]
fn settings_are_checked() {
    assert!(settings::check(&settings()).is_ok());
    let mut bad = settings();
    bad.android_apps[0].signing_cert_digests = vec!["abc".into()];
    assert!(settings::check(&bad).is_err());
    let mut bad = settings();
    bad.apple_apps[0].team_id = "short".into();
    assert!(settings::check(&bad).is_err());
    let require_nothing = AttestationSettings {
        mode: AttestationMode::Require,
        ..AttestationSettings::default()
    };
    assert!(settings::check(&require_nothing).is_err());
}
