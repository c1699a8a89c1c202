//! Attestation at pairing, called directly without HTTP, on a real database (SQLite, and
//! PostgreSQL when `DATABASE_URL` names one), with Android Key Attestation chains built under a
//! test root the context trusts (`fixtures`): an application that requires attestation refuses
//! a registration without one, with one under an unknown root, and with one that falls short of
//! its requirements, each with `attestation_required`, and leaves the pairing code usable, so
//! that the device pairs with it once attested; under `report` the same registration without an
//! attestation pairs, unattested.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tessera_protocol::api::{
    AndroidAppIdentity, AttestationMode, AttestationPlatform, AttestationSettings,
};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::UserId;
use tessera_protocol::jwk::PublicJwk;
use tessera_protocol::pairing::{DeviceRegistration, RegistrationAttestation};

use super::fixtures::{self, KeySpec, TestCa};
use crate::clock::Clock;
use crate::domain::pairing::{pair_device, start};
use crate::domain::testing::{Registering, TestDomain};
use crate::store::enrollments::{self, Enrollment};

/// Where the devices pair from.
const CLIENT: &str = "203.0.113.9";

/// The application's attestation settings in `mode`, with the fixtures' Android app registered.
fn settings(mode: AttestationMode) -> AttestationSettings {
    AttestationSettings {
        mode,
        android_apps: vec![AndroidAppIdentity {
            package_name: fixtures::TEST_PACKAGE.into(),
            signing_cert_digests: vec![hex::encode(fixtures::test_signing_digest())],
        }],
        apple_apps: Vec::new(),
    }
}

fn point(key: &PublicJwk) -> Vec<u8> {
    key.verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec()
}

/// An Android Key Attestation of the registration's two keys under `root`, for its own
/// attestation challenge; the user-verification key bound to user authentication when
/// `user_verification_bound`.
fn android(
    root: &TestCa,
    registration: &DeviceRegistration,
    user_verification_bound: bool,
) -> RegistrationAttestation {
    let challenge = registration.own_attestation_challenge();
    let chain = |key: &PublicJwk, spec: &KeySpec, serial: u64| {
        fixtures::android_chain(root, &point(key), spec, serial)
            .iter()
            .map(|der| STANDARD.encode(der))
            .collect()
    };
    RegistrationAttestation::AndroidKey {
        possession_chain: chain(
            &registration.possession_key,
            &KeySpec::hardware(challenge.as_bytes(), false),
            10,
        ),
        user_verification_chain: chain(
            &registration.user_verification_key,
            &KeySpec::hardware(challenge.as_bytes(), user_verification_bound),
            11,
        ),
    }
}

/// A user `name` of an application whose attestation setting is `mode`, and a pairing code
/// for them.
async fn code_for(domain: &TestDomain, name: &str, mode: AttestationMode) -> (UserId, String) {
    super::settings::set(&domain.ctx.db, &domain.app.id, settings(mode))
        .await
        .expect("settings");
    let user = domain.user(name).await;
    let code = start(&domain.ctx, &domain.app.id, &user, None)
        .await
        .expect("a code")
        .pairing_code;
    (user, code)
}

async fn devices_of(domain: &TestDomain, user: &UserId) -> Vec<Enrollment> {
    enrollments::list_for_user(&domain.ctx.db, &domain.app.id, user)
        .await
        .expect("devices")
}

#[tokio::test]
async fn required_attestation_refuses_what_is_not_attested_and_leaves_the_code_usable() {
    let root = TestCa::root("Test Root");
    let stranger = TestCa::root("Stranger Root");
    for domain in TestDomain::each_engine_trusting(&root.pem).await {
        let (olivia, code) = code_for(&domain, "olivia", AttestationMode::Require).await;
        let now = domain.clock.now();
        let audience = domain.ctx.public_url.clone();
        let refused = [
            ("none", Registering::new(&audience, &code, now, false)),
            (
                "an unknown root",
                Registering::attested(&audience, &code, now, |r| android(&stranger, r, true)),
            ),
            (
                "a user-verification key without user authentication",
                Registering::attested(&audience, &code, now, |r| android(&root, r, false)),
            ),
        ];
        for (what, device) in refused {
            let refusal = pair_device(&domain.ctx, CLIENT, &device.request)
                .await
                .expect_err("refused");
            assert_eq!(
                refusal.code(),
                Some(ErrorCode::AttestationRequired),
                "{what}: {refusal:?}"
            );
        }
        assert!(devices_of(&domain, &olivia).await.is_empty());

        // The code was not used up: the attested device pairs with it.
        let attested = Registering::attested(&audience, &code, now, |r| android(&root, r, true));
        pair_device(&domain.ctx, CLIENT, &attested.request)
            .await
            .expect("paired");
        let devices = devices_of(&domain, &olivia).await;
        assert_eq!(devices.len(), 1);
        let record = devices[0].attestation.as_ref().expect("recorded");
        assert_eq!(record.platform, AttestationPlatform::Android);
        assert!(record.attested && record.user_verification_bound);
    }
}

#[tokio::test]
async fn reported_attestation_pairs_a_device_without_one_unattested() {
    let root = TestCa::root("Test Root");
    for domain in TestDomain::each_engine_trusting(&root.pem).await {
        let (peggy, code) = code_for(&domain, "peggy", AttestationMode::Report).await;
        let device = Registering::new(&domain.ctx.public_url, &code, domain.clock.now(), false);
        pair_device(&domain.ctx, CLIENT, &device.request)
            .await
            .expect("paired");
        let devices = devices_of(&domain, &peggy).await;
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].attestation, None, "nothing to record");
    }
}
