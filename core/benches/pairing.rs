//! Device-side CPU of one pairing, without the network: create the two keys, sign the
//! registration (with its device key proof) and the key proof, then verify the server's signed reply, all through the
//! software key store.
//!
//! `cargo bench -p tessera-core --bench pairing`

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tessera_core::{KeyStore, ReplyTrust, SoftwareKeyStore, verify_pairing_reply};
use tessera_protocol::envelope::{self, MessageType, SoftwareSigningKey};
use tessera_protocol::ids::{ApplicationId, DeviceId, EnrollmentId};
use tessera_protocol::jwk::{JwkSet, PublicJwk};
use tessera_protocol::pairing::{
    ApplicationInfo, DeviceInfo, DeviceRegistration, DeviceSignals, KeyProof, PairingReply,
    PushRegistration, ServerUrl,
};

fn sign_registration(ks: &Arc<dyn KeyStore>, server: &ServerUrl, device_id: &DeviceId) -> String {
    use tessera_core::{KeyPurpose, KeyStoreSigner};
    // The installation's device key exists already (created once per installation).
    let d = KeyStoreSigner::new(Arc::clone(ks), "d").unwrap();
    ks.generate_signing_key("p", KeyPurpose::Possession)
        .unwrap();
    ks.generate_signing_key("u", KeyPurpose::UserVerification)
        .unwrap();
    let p = KeyStoreSigner::new(Arc::clone(ks), "p").unwrap();
    let u = KeyStoreSigner::new(Arc::clone(ks), "u").unwrap();
    let mut registration = DeviceRegistration {
        v: 1,
        audience: server.clone(),
        device_id: device_id.clone(),
        nonce: DeviceRegistration::new_nonce(),
        issued_at: 1,
        possession_key: p.public_jwk().clone(),
        user_verification_key: u.public_jwk().clone(),
        device: DeviceInfo::default(),
        signals: DeviceSignals::default(),
        push: PushRegistration::None,
        otp_transport_key: None,
        device_key: d.public_jwk().clone(),
        device_key_proof: String::new(),
        attestation: None,
    };
    registration.device_key_proof = envelope::sign(
        MessageType::DeviceKeyProof,
        &registration.device_key_claims(),
        &d,
    )
    .unwrap();
    let jws = envelope::sign(MessageType::Registration, &registration, &p).unwrap();
    let proof = KeyProof {
        v: 1,
        registration_digest: envelope::digest_of(&jws).unwrap(),
    };
    envelope::sign(MessageType::KeyProof, &proof, &u).unwrap();
    jws
}

fn bench(c: &mut Criterion) {
    let server = ServerUrl::parse("https://auth.example.com").unwrap();
    let server_key = SoftwareSigningKey::generate();
    let ks: Arc<dyn KeyStore> = Arc::new(SoftwareKeyStore::in_memory());
    let device_key = ks
        .generate_signing_key("d", tessera_core::KeyPurpose::Possession)
        .unwrap();
    let device_id = DeviceId::of_device_key(&PublicJwk::from_sec1_bytes(&device_key).unwrap());
    let registration = sign_registration(&ks, &server, &device_id);
    let digest = envelope::digest_of(&registration).unwrap();
    let reply = PairingReply {
        v: 1,
        issuer: server.clone(),
        application: ApplicationInfo {
            id: ApplicationId::generate(),
            name: "Bank".into(),
        },
        user_id: "alice".parse().unwrap(),
        enrollment_id: EnrollmentId::generate(),
        device_id: device_id.clone(),
        registration_digest: digest,
        server_keys: JwkSet {
            keys: vec![server_key.public_jwk()],
        },
        pending_verification: false,
        otp: None,
        issued_at: 1,
    };
    let reply_jws = envelope::sign(MessageType::PairingReply, &reply, &server_key).unwrap();
    let _: &PublicJwk = &reply.server_keys.keys[0];

    let mut group = c.benchmark_group("pairing (device CPU)");
    group.bench_function("keys + signed registration + key proof", |b| {
        b.iter(|| sign_registration(&ks, &server, &device_id))
    });
    group.bench_function("verify server payload", |b| {
        b.iter(|| {
            verify_pairing_reply(
                &reply_jws,
                &server,
                &digest,
                &device_id,
                ReplyTrust::FirstUseDirect,
            )
            .unwrap()
        })
    });
    group.bench_function("whole device side of a pairing", |b| {
        b.iter(|| {
            sign_registration(&ks, &server, &device_id);
            verify_pairing_reply(
                &reply_jws,
                &server,
                &digest,
                &device_id,
                ReplyTrust::FirstUseDirect,
            )
            .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
