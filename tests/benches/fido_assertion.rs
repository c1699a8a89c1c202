//! Server time to verify one FIDO2 assertion (a P-256 / ES256 credential, as security keys and
//! platform authenticators use): parsing the browser's JSON and verifying client data, RP id
//! hash, flags, counter and signature, as `checkAssertion` does before its one conditional
//! update. The authenticator is a software one built here (P-256 key, authenticator data, client
//! data, DER signature). Run: `cargo bench -p tessera-tests --bench fido_assertion`.

use std::hint::black_box;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};
use serde_json::json;
use sha2::{Digest, Sha256};
use tessera_server::fido::AssertionCheck;

const RP_ID: &str = "login.example.com";
const ORIGIN: &str = "https://login.example.com";

/// A software authenticator with one credential.
struct Authenticator {
    key: SigningKey,
    credential_id: Vec<u8>,
    counter: u32,
}

impl Authenticator {
    fn new() -> Self {
        Self {
            key: SigningKey::random(&mut rand::rngs::OsRng),
            credential_id: (0u8..32).collect(),
            counter: 0,
        }
    }

    /// The credential as the server stores it (the WebAuthn library's JSON).
    fn stored_credential(&self) -> String {
        let point = self.key.verifying_key().to_encoded_point(false);
        json!({
            "cred_id": URL_SAFE_NO_PAD.encode(&self.credential_id),
            "cred": {"type_": "ES256", "key": {"EC_EC2": {
                "curve": "SECP256R1",
                "x": point.x().unwrap().to_vec(),
                "y": point.y().unwrap().to_vec(),
            }}},
            "counter": self.counter,
            "transports": null,
            "user_verified": false,
            "backup_eligible": false,
            "backup_state": false,
            "registration_policy": "preferred",
            "extensions": {"cred_protect": "NotRequested", "hmac_create_secret": "NotRequested"},
            "attestation": {"data": "None", "metadata": "None"},
            "attestation_format": "none",
        })
        .to_string()
    }

    /// Signs `challenge` (base64url) as `navigator.credentials.get` would answer it.
    fn assert(&mut self, challenge: &str) -> String {
        self.counter += 1;
        let mut auth_data = Sha256::digest(RP_ID.as_bytes()).to_vec();
        auth_data.push(0x01); // user present
        auth_data.extend_from_slice(&self.counter.to_be_bytes());
        let client_data = json!({
            "type": "webauthn.get",
            "challenge": challenge,
            "origin": ORIGIN,
            "crossOrigin": false,
        })
        .to_string();
        let mut signed = auth_data.clone();
        signed.extend_from_slice(&Sha256::digest(client_data.as_bytes()));
        let signature: DerSignature = self.key.sign(&signed);
        json!({
            "id": URL_SAFE_NO_PAD.encode(&self.credential_id),
            "rawId": URL_SAFE_NO_PAD.encode(&self.credential_id),
            "type": "public-key",
            "response": {
                "authenticatorData": URL_SAFE_NO_PAD.encode(&auth_data),
                "clientDataJSON": URL_SAFE_NO_PAD.encode(client_data.as_bytes()),
                "signature": URL_SAFE_NO_PAD.encode(signature.as_bytes()),
                "userHandle": null,
            },
            "extensions": {},
        })
        .to_string()
    }
}

fn bench(c: &mut Criterion) {
    let mut authenticator = Authenticator::new();
    let stored = authenticator.stored_credential();
    // Once outside the loop: the software authenticator's answer verifies.
    let (check, challenge) = AssertionCheck::begin(RP_ID, ORIGIN, &stored).expect("a challenge");
    let answer = authenticator.assert(&challenge);
    assert_eq!(check.verify(&answer).expect("verifies"), 1);
    let mut tampered: serde_json::Value = serde_json::from_str(&answer).unwrap();
    tampered["response"]["signature"] =
        json!(URL_SAFE_NO_PAD.encode([0x30, 0x06, 2, 1, 1, 2, 1, 1]));
    assert!(
        check.verify(&tampered.to_string()).is_err(),
        "a bad signature is refused"
    );

    c.bench_function("fido_verify_assertion", |b| {
        b.iter_batched(
            || {
                let (check, challenge) = AssertionCheck::begin(RP_ID, ORIGIN, &stored).unwrap();
                let answer = authenticator.assert(&challenge);
                (check, answer)
            },
            |(check, answer)| black_box(check.verify(&answer).expect("verifies")),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
