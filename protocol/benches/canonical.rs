//! Canonical JSON (RFC 8785): the encoder every signature and digest goes through, against
//! the `serde_json_canonicalizer` formatter it replaced, on the answer a device signs (a typed
//! `AuthenticationResponse`, from the test vectors) and on a CIBA request's parameters
//! rendered as a JSON value.
//!
//! `cargo bench -p tessera-protocol --bench canonical`

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use tessera_protocol::authentication::AuthenticationResponse;
use tessera_protocol::canonical::to_canonical_vec;

fn bench(c: &mut Criterion) {
    let file: serde_json::Value = serde_json::from_str(include_str!("../vectors/answers.json"))
        .expect("the answer vectors are JSON");
    let payload = file["vectors"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "authentication_response"))
        .map(|v| v["payload"].clone())
        .expect("the authentication_response vector");
    let answer: AuthenticationResponse =
        serde_json::from_value(payload).expect("an authentication response");
    let request = json!({
        "v": 1,
        "request_id": "aut_00112233445566778899aabbccddeeff",
        "issuer": "https://auth.example.com",
        "enrollment_id": "enr_fedcba9876543210fedcba9876543210",
        "user_id": "alice@example.com",
        "kind": "ciba",
        "parameters": {"fields": [
            {"label": "Application", "value": "Example Bank"},
            {"label": "Binding message", "value": "W4SCT"},
            {"label": "Scopes", "value": "openid profile"}
        ]},
        "parameters_digest": "r89-3e7oFRJR1U2O_vES9zG9srA3gjCZ_yq9mRJsla8",
        "context": {"application_name": "Example Bank", "ip": null},
        "require_user_verification": true,
        "ciba": {"client_name": "Example Bank", "binding_message": "W4SCT", "scopes": ["openid", "profile"]},
        "nonce": "CAkKCwwNDg8QERITFBUWFw",
        "issued_at": 1767225600,
        "expires_at": 1767225720
    });
    assert_eq!(
        to_canonical_vec(&answer).ok(),
        serde_json_canonicalizer::to_vec(&answer).ok()
    );
    let mut group = c.benchmark_group("canonical JSON");
    group.bench_function("device answer (typed), tessera encoder", |b| {
        b.iter(|| to_canonical_vec(&answer).expect("encodes"))
    });
    group.bench_function("device answer (typed), serde_json_canonicalizer", |b| {
        b.iter(|| serde_json_canonicalizer::to_vec(&answer).expect("encodes"))
    });
    group.bench_function("CIBA request (JSON value), tessera encoder", |b| {
        b.iter(|| to_canonical_vec(&request).expect("encodes"))
    });
    group.bench_function("CIBA request (JSON value), serde_json_canonicalizer", |b| {
        b.iter(|| serde_json_canonicalizer::to_vec(&request).expect("encodes"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
