//! Platform attestation end to end: devices whose key store attests under a TEST root (given to
//! the server with its extra-roots setting, as an operator's `--attestation-root`), paired over
//! HTTP with the application's attestation `off`, `report` or `require`.

use std::sync::Arc;

use tessera_core::KeyPurpose;
use tessera_protocol::api::{
    AndroidAppIdentity, AppleAppIdentity, AttestationMode, AttestationPlatform,
    AttestationSecurityLevel, AttestationSettings, BootState,
};
use tessera_protocol::authentication::AuthenticationKind;
use tessera_protocol::error::ErrorCode;
use tessera_tests::attestation::{self, AppAttestSpec, KeySpec, TestCa};
use tessera_tests::{AttestationKind, TEST_TEAM_ID, TestDevice, TestServer, ask, on_each_backend};

fn settings(mode: AttestationMode) -> AttestationSettings {
    AttestationSettings {
        mode,
        android_apps: vec![AndroidAppIdentity {
            package_name: attestation::TEST_PACKAGE.into(),
            signing_cert_digests: vec![hex_lower(&attestation::test_signing_digest())],
        }],
        apple_apps: vec![AppleAppIdentity {
            team_id: TEST_TEAM_ID.into(),
            bundle_id: attestation::TEST_PACKAGE.into(),
            development: false,
        }],
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn android(adjust: impl Fn(KeyPurpose, &mut KeySpec) + Send + Sync + 'static) -> AttestationKind {
    AttestationKind::Android {
        adjust: Box::new(adjust),
    }
}

fn genuine() -> AttestationKind {
    android(|_, _| {})
}

/// A server trusting `root`, with `revocation` as its revocation status list, and the
/// application's attestation set to `mode`.
async fn server_with(
    backend: tessera_tests::Backend,
    root: &TestCa,
    revocation: Option<String>,
    mode: AttestationMode,
) -> TestServer {
    let pem = root.pem.clone();
    let server = TestServer::start_with(backend, move |config| {
        config.attestation_extra_roots = vec![pem];
        config.attestation_revocation_status = revocation;
    })
    .await;
    let stored = server
        .customer
        .set_attestation_settings(&settings(mode))
        .await
        .expect("set attestation settings");
    assert_eq!(stored.mode, mode);
    server
}

/// Answers one approval from `device` with a fingerprint and returns the attributes.
async fn biometric_approval(
    server: &TestServer,
    user: &str,
    device: &TestDevice,
    enrollment: &tessera_protocol::ids::EnrollmentId,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let created = server
        .customer
        .create_authentication(
            user,
            &tessera_protocol::api::CreateAuthenticationRequest {
                require_user_verification: true,
                ..ask(AuthenticationKind::Approval)
            },
        )
        .await
        .expect("create");
    let request = device
        .pull_request(enrollment, &created.authentication_id)
        .await;
    device
        .auth
        .approve(&request, vec!["fpt".into()], None)
        .await
        .expect("approve");
    server
        .customer
        .authentication(&created.authentication_id, 10)
        .await
        .expect("status")
        .attributes
}

async fn an_attested_android_device_pairs_under_require_and_reports_biometrics(
    backend: tessera_tests::Backend,
) {
    let root = Arc::new(TestCa::root("Test Attestation Root"));
    let server = server_with(backend, &root, None, AttestationMode::Require).await;
    let user = server.user("alice").await;
    let device = TestDevice::attesting(root.clone(), genuine(), 100).await;
    let uri = server.pairing_uri(&user).await;
    let enrollment = device.auth.pair(&uri, None).await.expect("pair");

    let devices = server.customer.list_devices(&user).await.unwrap().devices;
    let recorded = devices[0]
        .attestation
        .clone()
        .expect("attestation recorded");
    assert_eq!(recorded.platform, AttestationPlatform::Android);
    assert_eq!(
        recorded.security_level,
        AttestationSecurityLevel::TrustedEnvironment
    );
    assert!(recorded.user_verification_bound);
    assert!(recorded.app_verified);
    assert_eq!(recorded.boot_state, Some(BootState::Verified));
    assert!(recorded.attested);

    let a = biometric_approval(&server, &user, &device, &enrollment.enrollment_id).await;
    assert_eq!(a["pingid.authentication.type"], "MOBILE_APP_BIOMETRICS");
    assert_eq!(
        a["pingid.authentication.authenticating.device.attested"],
        true
    );
    assert!(!a.contains_key("pingid.authentication.unverified.type"));
}

async fn require_refuses_each_failed_check_and_keeps_the_code(backend: tessera_tests::Backend) {
    let root = Arc::new(TestCa::root("Test Attestation Root"));
    // The leaf serial 666 is revoked.
    let revocation = r#"{"entries": {"29a": {"status": "REVOKED", "reason": "KEY_COMPROMISE"}}}"#;
    let server = server_with(
        backend,
        &root,
        Some(revocation.to_string()),
        AttestationMode::Require,
    )
    .await;
    let user = server.user("bob").await;
    let stranger = Arc::new(TestCa::root("Unknown Root"));
    let cases: Vec<(&str, Arc<TestCa>, AttestationKind, u64, &str)> = vec![
        (
            "wrong challenge",
            root.clone(),
            android(|_, s| s.challenge = vec![0; 32]),
            200,
            "challenge",
        ),
        (
            "wrong package",
            root.clone(),
            android(|_, s| s.package = "com.evil.clone".into()),
            210,
            "app",
        ),
        (
            "wrong signing digest",
            root.clone(),
            android(|_, s| s.signature_digests = vec![vec![1; 32]]),
            220,
            "app",
        ),
        (
            "software key",
            root.clone(),
            android(|_, s| s.security_level = 0),
            230,
            "hardware",
        ),
        (
            "no user-authentication binding",
            root.clone(),
            android(|purpose, s| {
                if purpose == KeyPurpose::UserVerification {
                    s.user_auth_type = None;
                    s.no_auth_required = true;
                }
            }),
            240,
            "user authentication",
        ),
        (
            "unlocked bootloader",
            root.clone(),
            android(|_, s| s.root_of_trust = Some((false, 2))),
            250,
            "bootloader",
        ),
        (
            "revoked certificate",
            root.clone(),
            genuine(),
            666,
            "revoked",
        ),
        ("unknown root", stranger, genuine(), 270, "trusted root"),
    ];
    let uri = server.pairing_uri(&user).await;
    for (case, device_root, kind, serial, message) in cases {
        let device = TestDevice::attesting(device_root, kind, serial).await;
        let err = device.auth.pair(&uri, None).await.unwrap_err();
        assert_eq!(
            err.server_code(),
            Some(ErrorCode::AttestationRequired),
            "{case}: {err:?}"
        );
        assert!(err.to_string().contains(message), "{case}: {err}");
    }
    // A device without any attestation is refused too.
    let plain = TestDevice::new().await;
    let err = plain.auth.pair(&uri, None).await.unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::AttestationRequired));
    // Nothing was written: no enrollment, and the code still pairs a genuine device.
    assert!(
        server
            .customer
            .list_devices(&user)
            .await
            .unwrap()
            .devices
            .is_empty()
    );
    let genuine_device = TestDevice::attesting(root.clone(), genuine(), 300).await;
    genuine_device
        .auth
        .pair(&uri, None)
        .await
        .expect("the code is still usable");
}

async fn report_records_what_was_proven_and_keeps_unproven_biometrics_apart(
    backend: tessera_tests::Backend,
) {
    let root = Arc::new(TestCa::root("Test Attestation Root"));
    let server = server_with(backend, &root, None, AttestationMode::Report).await;
    // A software-only device pairs; nothing is recorded; its biometric claim is unverified.
    let user = server.user("carol").await;
    let plain = TestDevice::new().await;
    let enrollment = plain
        .auth
        .pair(&server.pairing_uri(&user).await, None)
        .await
        .expect("pair without attestation");
    let devices = server.customer.list_devices(&user).await.unwrap().devices;
    assert_eq!(devices[0].attestation, None);
    let a = biometric_approval(&server, &user, &plain, &enrollment.enrollment_id).await;
    assert_eq!(a["pingid.authentication.type"], "MOBILE_APP_SWIPE");
    assert_eq!(
        a["pingid.authentication.unverified.type"],
        "MOBILE_APP_BIOMETRICS"
    );
    assert_eq!(
        a["pingid.authentication.authenticating.device.attested"],
        false
    );
    // A device whose user-verification key needs no user authentication: recorded, not
    // attested, and its biometric claim stays unverified.
    let user = server.user("dave").await;
    let unbound = TestDevice::attesting(
        root.clone(),
        android(|purpose, s| {
            if purpose == KeyPurpose::UserVerification {
                s.user_auth_type = None;
                s.no_auth_required = true;
            }
        }),
        400,
    )
    .await;
    let enrollment = unbound
        .auth
        .pair(&server.pairing_uri(&user).await, None)
        .await
        .expect("pair");
    let devices = server.customer.list_devices(&user).await.unwrap().devices;
    let recorded = devices[0].attestation.clone().expect("recorded");
    assert!(!recorded.user_verification_bound);
    assert!(!recorded.attested);
    let a = biometric_approval(&server, &user, &unbound, &enrollment.enrollment_id).await;
    assert_eq!(a["pingid.authentication.type"], "MOBILE_APP_SWIPE");
    assert_eq!(
        a["pingid.authentication.unverified.type"],
        "MOBILE_APP_BIOMETRICS"
    );
}

async fn app_attest_pairs_a_registered_ios_app_and_refuses_another(
    backend: tessera_tests::Backend,
) {
    let root = Arc::new(TestCa::root("Test App Attestation Root"));
    let server = server_with(backend, &root, None, AttestationMode::Require).await;
    let user = server.user("erin").await;
    let uri = server.pairing_uri(&user).await;
    let other_app = TestDevice::attesting(
        root.clone(),
        AttestationKind::Apple {
            adjust: Box::new(|s: &mut AppAttestSpec| s.app_id = "ZZZZZ99999.com.evil.clone".into()),
        },
        0,
    )
    .await;
    let err = other_app.auth.pair(&uri, None).await.unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::AttestationRequired));
    let iphone = TestDevice::attesting(
        root.clone(),
        AttestationKind::Apple {
            adjust: Box::new(|_| {}),
        },
        0,
    )
    .await;
    iphone.auth.pair(&uri, None).await.expect("pair");
    let devices = server.customer.list_devices(&user).await.unwrap().devices;
    let recorded = devices[0].attestation.clone().expect("recorded");
    assert_eq!(recorded.platform, AttestationPlatform::Ios);
    assert_eq!(
        recorded.security_level,
        AttestationSecurityLevel::SecureEnclave
    );
    assert!(recorded.app_verified);
    assert!(recorded.attested);
    // App Attest proves the app, not that the user-verification key needs the user.
    assert!(!recorded.user_verification_bound);
}

async fn off_ignores_attestations_and_settings_are_validated(backend: tessera_tests::Backend) {
    let root = Arc::new(TestCa::root("Test Attestation Root"));
    let server = server_with(backend, &root, None, AttestationMode::Off).await;
    let user = server.user("frank").await;
    let device = TestDevice::attesting(root.clone(), genuine(), 500).await;
    device
        .auth
        .pair(&server.pairing_uri(&user).await, None)
        .await
        .expect("pair");
    let devices = server.customer.list_devices(&user).await.unwrap().devices;
    assert_eq!(devices[0].attestation, None);
    // `require` without a registered app, or a malformed digest, is refused.
    let err = server
        .customer
        .set_attestation_settings(&AttestationSettings {
            mode: AttestationMode::Require,
            ..AttestationSettings::default()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid_request"), "{err}");
    let mut bad = settings(AttestationMode::Report);
    bad.android_apps[0].signing_cert_digests = vec!["xyz".into()];
    assert!(
        server
            .customer
            .set_attestation_settings(&bad)
            .await
            .is_err()
    );
    assert_eq!(
        server.customer.attestation_settings().await.unwrap().mode,
        AttestationMode::Off
    );
}

async fn concurrent_attested_pairings_with_one_code_pair_once(backend: tessera_tests::Backend) {
    let root = Arc::new(TestCa::root("Test Attestation Root"));
    let server = server_with(backend, &root, None, AttestationMode::Require).await;
    let user = server.user("gina").await;
    let uri = server.pairing_uri(&user).await;
    let mut devices = Vec::new();
    for i in 0..6 {
        devices.push(TestDevice::attesting(root.clone(), genuine(), 600 + i * 10).await);
    }
    let attempts = devices.iter().map(|d| d.auth.pair(&uri, None));
    let results = futures::future::join_all(attempts).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert_eq!(
        server
            .customer
            .list_devices(&user)
            .await
            .unwrap()
            .devices
            .len(),
        1
    );
}

on_each_backend! {
    attested_android_device_under_require => an_attested_android_device_pairs_under_require_and_reports_biometrics;
    require_refusals => require_refuses_each_failed_check_and_keeps_the_code;
    report_mode => report_records_what_was_proven_and_keeps_unproven_biometrics_apart;
    app_attest => app_attest_pairs_a_registered_ios_app_and_refuses_another;
    off_mode_and_settings => off_ignores_attestations_and_settings_are_validated;
    concurrent_pairings => concurrent_attested_pairings_with_one_code_pair_once;
}
