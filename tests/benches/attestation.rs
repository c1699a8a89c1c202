//! Server time to verify an Android key attestation (both enrollment keys' chains) and an Apple
//! App Attest object, built under a test root (EC P-256 certificates; Google's real chains end
//! in an RSA-4096 or P-384 root, so measure those separately if they matter), and the size of a
//! registration carrying chains. Run: `cargo bench -p tessera-tests --bench attestation`.

use std::hint::black_box;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use criterion::{Criterion, criterion_group, criterion_main};
use tessera_protocol::api::{
    AndroidAppIdentity, AppleAppIdentity, AttestationMode, AttestationSettings,
};
use tessera_protocol::envelope::{self, MessageType, SoftwareSigningKey};
use tessera_protocol::pairing::{
    DeviceInfo, DeviceRegistration, DeviceSignals, PushRegistration, RegistrationAttestation,
    ServerUrl,
};
use tessera_server::ServerConfig;
use tessera_server::attestation::{
    AttestationTrust, verify_android_registration_keys, verify_app_attest,
    verify_app_attest_assertion,
};
use tessera_tests::attestation::{self, AppAttestSpec, KeySpec, TestCa};

fn settings() -> AttestationSettings {
    AttestationSettings {
        mode: AttestationMode::Require,
        android_apps: vec![AndroidAppIdentity {
            package_name: attestation::TEST_PACKAGE.into(),
            signing_cert_digests: vec![
                attestation::test_signing_digest()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
            ],
        }],
        apple_apps: vec![AppleAppIdentity {
            team_id: "ABCDE12345".into(),
            bundle_id: attestation::TEST_PACKAGE.into(),
            development: false,
        }],
    }
}

fn point(key: &SoftwareSigningKey) -> Vec<u8> {
    key.public_jwk()
        .verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec()
}

fn b64(chain: &[Vec<u8>]) -> Vec<String> {
    chain.iter().map(|c| STANDARD.encode(c)).collect()
}

/// A signed registration with `attestation`, and its size.
fn registration_size(
    possession: &SoftwareSigningKey,
    user_verification: &SoftwareSigningKey,
    attestation: Option<RegistrationAttestation>,
) -> usize {
    let device_key = SoftwareSigningKey::generate();
    let mut registration = DeviceRegistration {
        v: 1,
        audience: ServerUrl::parse("https://auth.example.com").unwrap(),
        device_id: tessera_protocol::ids::DeviceId::of_device_key(&device_key.public_jwk()),
        nonce: DeviceRegistration::new_nonce(),
        issued_at: 1_800_000_000,
        possession_key: possession.public_jwk(),
        user_verification_key: user_verification.public_jwk(),
        device: DeviceInfo {
            model: "Pixel 8".into(),
            os_name: "Android".into(),
            os_version: "15".into(),
            app_version: "1.0.0".into(),
            sdk_version: "0.1.0".into(),
            name: None,
        },
        signals: DeviceSignals::default(),
        push: PushRegistration::Fcm {
            token: "f".repeat(163),
        },
        otp_transport_key: Some(SoftwareSigningKey::generate().public_jwk()),
        device_key: device_key.public_jwk(),
        device_key_proof: String::new(),
        attestation,
    };
    registration.device_key_proof = envelope::sign(
        MessageType::DeviceKeyProof,
        &registration.device_key_claims(),
        &device_key,
    )
    .unwrap();
    envelope::sign(MessageType::Registration, &registration, possession)
        .unwrap()
        .len()
}

fn bench(c: &mut Criterion) {
    let root = TestCa::root("Bench Root");
    let config = ServerConfig {
        attestation_extra_roots: vec![root.pem.clone()],
        ..ServerConfig::default()
    };
    let trust = AttestationTrust::from_config(&config).unwrap();
    let settings = settings();
    let challenge = [5u8; 32];
    let possession = SoftwareSigningKey::generate();
    let user_verification = SoftwareSigningKey::generate();
    let p_chain = b64(&attestation::android_chain(
        &root,
        &point(&possession),
        &KeySpec::hardware(&challenge, false),
        1,
    ));
    let u_chain = b64(&attestation::android_chain(
        &root,
        &point(&user_verification),
        &KeySpec::hardware(&challenge, true),
        2,
    ));
    let (key_id, object) = attestation::app_attest_object(
        &root,
        &AppAttestSpec {
            app_id: format!("ABCDE12345.{}", attestation::TEST_PACKAGE),
            aaguid: *attestation::AAGUID_PRODUCTION,
            counter: 0,
            client_data_hash: challenge.to_vec(),
        },
    );
    let (key_id, object) = (STANDARD.encode(key_id), STANDARD.encode(object));

    let plain = registration_size(&possession, &user_verification, None);
    let android = registration_size(
        &possession,
        &user_verification,
        Some(RegistrationAttestation::AndroidKey {
            possession_chain: p_chain.clone(),
            user_verification_chain: u_chain.clone(),
        }),
    );
    let apple = registration_size(
        &possession,
        &user_verification,
        Some(RegistrationAttestation::AppleAppAttest {
            key_id: key_id.clone(),
            attestation_object: object.clone(),
        }),
    );
    println!(
        "registration size (signed JWS, bytes): none {plain}, android chains {android} \
         (2 x 3 test certificates), app attest {apple}"
    );

    c.bench_function("attestation/android_two_chains", |b| {
        b.iter(|| {
            verify_android_registration_keys(
                &trust,
                &settings,
                &challenge,
                black_box(&p_chain),
                black_box(&u_chain),
                &possession.public_jwk(),
                &user_verification.public_jwk(),
            )
            .unwrap()
        })
    });
    c.bench_function("attestation/app_attest_object", |b| {
        b.iter(|| {
            verify_app_attest(&trust, &settings, &challenge, &key_id, black_box(&object)).unwrap()
        })
    });
    // A later answer's assertion: CBOR, one P-256 signature, the RP id hash and the counter.
    let app_key = attestation::AppAttestKey::new();
    let app_id = format!("ABCDE12345.{}", attestation::TEST_PACKAGE);
    let app_hashes = [tessera_server::attestation::app_id_hash(
        &settings.apple_apps[0],
    )];
    let client_data_hash = [9u8; 32];
    let assertion = STANDARD.encode(app_key.assertion(&app_id, 2, &client_data_hash));
    let public_key = app_key.public_key();
    println!(
        "app attest assertion size (base64, bytes): {}",
        assertion.len()
    );
    c.bench_function("attestation/app_attest_assertion", |b| {
        b.iter(|| {
            verify_app_attest_assertion(
                &public_key,
                &app_hashes,
                &client_data_hash,
                black_box(&assertion),
                1,
            )
            .unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
