//! Device-side CPU of answering an authentication, without the network: verifying a signed
//! transaction request against the pinned key (what `handle_push` does before anything is
//! shown), and signing the answer through the key store (what `approve` does before posting it).
//!
//! `cargo bench -p tessera-core --bench requests`

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tessera_core::{
    KeyPurpose, KeyStore, KeyStoreSigner, SoftwareKeyStore, verify_authentication_request,
};
use tessera_protocol::authentication::{
    AccessContext, AuthenticationId, AuthenticationKind, AuthenticationRequest,
    AuthenticationResponse, Decision, DisplayField, DynamicParameters,
};
use tessera_protocol::envelope::{self, MessageType, SoftwareSigningKey};
use tessera_protocol::ids::{ApplicationId, EnrollmentId};
use tessera_protocol::jwk::JwkSet;
use tessera_protocol::pairing::{ApplicationInfo, DeviceSignals, ServerUrl};

fn bench(c: &mut Criterion) {
    let server_key = SoftwareSigningKey::generate();
    let server = ServerUrl::parse("https://auth.example.com").unwrap();
    let enrollment = EnrollmentId::generate();
    let user = "alice".parse().unwrap();
    let app = ApplicationInfo {
        id: ApplicationId::generate(),
        name: "Bank".into(),
    };
    let field = |l: &str, v: &str| DisplayField {
        label: l.into(),
        value: v.into(),
    };
    let parameters = DynamicParameters {
        message: "Pay 120.00 EUR to ACME GmbH?".into(),
        fields: vec![
            field("Amount", "120.00 EUR"),
            field("Payee", "ACME GmbH"),
            field("IBAN", "DE89 3704 0044 0532 0130 00"),
        ],
        hidden_fields: vec![field("Reference", "order-4711")],
    };
    let request = AuthenticationRequest {
        v: 1,
        request_id: AuthenticationId::generate(),
        issuer: server.clone(),
        enrollment_id: enrollment.clone(),
        user_id: "alice".parse().unwrap(),
        kind: AuthenticationKind::Transaction,
        parameters_digest: parameters.digest().unwrap(),
        parameters,
        context: AccessContext::default(),
        number_choices: None,
        number_matching: None,
        require_user_verification: true,
        ciba: None,
        locale: None,
        nonce: "AAECAwQFBgcICQoLDA0ODw".into(),
        issued_at: 1,
        expires_at: 4_000_000_000,
    };
    let signed = envelope::sign(MessageType::AuthenticationRequest, &request, &server_key).unwrap();
    let pinned = JwkSet {
        keys: vec![server_key.public_jwk()],
    };

    let ks: Arc<dyn KeyStore> = Arc::new(SoftwareKeyStore::in_memory());
    ks.generate_signing_key("uv", KeyPurpose::UserVerification)
        .unwrap();
    let signer = KeyStoreSigner::new(Arc::clone(&ks), "uv").unwrap();
    let response = AuthenticationResponse {
        v: 1,
        request_id: request.request_id.clone(),
        enrollment_id: enrollment.clone(),
        request_nonce: request.nonce.clone(),
        decision: Decision::Approve,
        parameters_digest: request.parameters_digest,
        selected_number: None,
        amr: vec!["fpt".into()],
        signals: DeviceSignals::default(),
        location: Some(tessera_protocol::authentication::DeviceLocation {
            latitude: 52.520008,
            longitude: 13.404954,
            altitude: Some(34.0),
            accuracy: Some(12.5),
        }),
        device: None,
        issued_at: 1,
        app_attest_assertion: None,
    };

    let mut group = c.benchmark_group("authentication (device CPU)");
    group.bench_function("handle_push: verify a signed transaction request", |b| {
        b.iter(|| {
            verify_authentication_request(&signed, &server, &pinned, &enrollment, &user, &app, 2)
                .unwrap()
        })
    });
    group.bench_function("approve: sign the answer through the key store", |b| {
        b.iter(|| envelope::sign(MessageType::AuthenticationResponse, &response, &signer).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
