//! Writes the key set chain vectors to `protocol/vectors/key_sets.json`.
//!
//! Run with `cargo run -p tessera-protocol --example generate_key_set_vectors`. The output is
//! deterministic (fixed keys, RFC 6979 deterministic ECDSA), so running it again must leave the
//! checked-in file unchanged; `tests/key_set_vectors.rs` checks it.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tessera_protocol::envelope::{self, MessageType, SoftwareSigningKey};
use tessera_protocol::jwk::JwkSet;
use tessera_protocol::key_set::{TrustedKeys, advance};
use tessera_protocol::pairing::{ServerKeySet, ServerUrl};

const ISSUER: &str = "https://auth.example.com";

fn key(label: &str) -> (SoftwareSigningKey, String) {
    let scalar: [u8; 32] = Sha256::digest(format!("tessera key set vector key: {label}")).into();
    let key = SoftwareSigningKey::from_scalar_bytes(&scalar).expect("valid scalar");
    (key, URL_SAFE_NO_PAD.encode(scalar))
}

fn set_of(keys: &[&SoftwareSigningKey]) -> JwkSet {
    JwkSet {
        keys: keys.iter().map(|k| k.public_jwk()).collect(),
    }
}

fn statement(
    sequence: u64,
    keys: &[&SoftwareSigningKey],
    revoked: &[&SoftwareSigningKey],
    signer: &SoftwareSigningKey,
) -> String {
    envelope::sign(
        MessageType::ServerKeySet,
        &ServerKeySet {
            v: 1,
            issuer: ServerUrl::parse(ISSUER).expect("issuer"),
            keys: set_of(keys),
            issued_at: 1_767_225_600 + i64::try_from(sequence).expect("small") * 86_400,
            sequence,
            revoked: revoked.iter().map(|k| k.kid().to_string()).collect(),
        },
        signer,
    )
    .expect("sign")
}

fn pinned_json(keys: &[&SoftwareSigningKey], sequence: u64) -> Value {
    json!({"keys": set_of(keys), "sequence": sequence, "revoked": []})
}

fn case(
    name: &str,
    description: &str,
    pinned: (&[&SoftwareSigningKey], u64),
    chain: Vec<String>,
) -> Value {
    let trusted = TrustedKeys {
        keys: set_of(pinned.0),
        sequence: pinned.1,
        revoked: Vec::new(),
    };
    let issuer = ServerUrl::parse(ISSUER).expect("issuer");
    let expected = match advance(&trusted, &issuer, &chain) {
        Ok(after) => json!({
            "keys": after.keys.keys.iter().map(|k| k.kid()).collect::<Vec<_>>(),
            "sequence": after.sequence,
            "revoked": after.revoked,
        }),
        Err(e) => json!({"error": format!("{e:?}")}),
    };
    json!({
        "name": name,
        "description": description,
        "pinned": pinned_json(pinned.0, pinned.1),
        "chain": chain,
        "expected": expected,
    })
}

fn main() {
    let (k1, d1) = key("k1");
    let (k2, d2) = key("k2");
    let (k3, d3) = key("k3");
    let (attacker, da) = key("attacker");
    let rotations = vec![
        statement(1, &[&k1], &[], &k1),
        statement(2, &[&k1, &k2], &[], &k1),
        statement(3, &[&k2], &[], &k2),
        statement(4, &[&k2, &k3], &[], &k2),
        statement(5, &[&k3], &[], &k3),
    ];
    let revocation = statement(3, &[&k2], &[&k1], &k2);
    let cases = vec![
        case(
            "two_rotations",
            "pinned k1 at set 1; two rotations, each announced by the key before it",
            (&[&k1], 1),
            rotations.clone(),
        ),
        case(
            "paired_later",
            "pinned k2 at pairing (sequence unknown): sets signed by k1 are skipped",
            (&[&k2], 0),
            rotations.clone(),
        ),
        case(
            "unknown_signer",
            "the newest set is signed by a key never trusted",
            (&[&k1], 1),
            vec![
                statement(1, &[&k1], &[], &k1),
                statement(2, &[&attacker], &[], &attacker),
            ],
        ),
        case(
            "revocation_online",
            "pinned k1 and k2 at set 2; set 3 signed by k2 revokes k1",
            (&[&k1, &k2], 2),
            vec![revocation.clone()],
        ),
        case(
            "revoked_link",
            "pinned only k1: set 2 (signed by k1) is a link that set 3 revokes",
            (&[&k1], 1),
            vec![statement(2, &[&k1, &k2], &[], &k1), revocation.clone()],
        ),
        case(
            "revoked_signer",
            "after k1 was revoked, a set signed by k1 introduces a key",
            (&[&k1, &k2], 2),
            vec![revocation, statement(4, &[&k2, &attacker], &[], &k1)],
        ),
        case(
            "out_of_order",
            "sequences must increase",
            (&[&k1], 1),
            vec![
                statement(3, &[&k1], &[], &k1),
                statement(2, &[&k1], &[], &k1),
            ],
        ),
    ];
    let file = json!({
        "description": "Chains of signed server key sets (typ tessera-key-set+jws) and what a device that pinned `pinned` trusts after following `chain` (protocol::key_set::advance), or the refusal. Keys are deterministic; signatures RFC 6979.",
        "issuer": ISSUER,
        "keys": [
            {"label": "k1", "d": d1, "public_jwk": k1.public_jwk()},
            {"label": "k2", "d": d2, "public_jwk": k2.public_jwk()},
            {"label": "k3", "d": d3, "public_jwk": k3.public_jwk()},
            {"label": "attacker", "d": da, "public_jwk": attacker.public_jwk()},
        ],
        "cases": cases,
    });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors/key_sets.json");
    let mut text = serde_json::to_string_pretty(&file).expect("json");
    text.push('\n');
    std::fs::write(&path, text).expect("write vectors");
    println!("wrote {}", path.display());
}
