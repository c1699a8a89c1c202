//! Checks `protocol/vectors/key_sets.json` (chains of signed server key sets) against
//! `key_set::advance`.

use serde_json::Value;
use tessera_protocol::jwk::JwkSet;
use tessera_protocol::key_set::{TrustedKeys, advance};
use tessera_protocol::pairing::ServerUrl;

fn load() -> Value {
    let path = format!("{}/vectors/key_sets.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn key_set_chain_vectors() {
    let file = load();
    let issuer = ServerUrl::parse(file["issuer"].as_str().unwrap()).unwrap();
    let cases = file["cases"].as_array().unwrap();
    assert!(cases.len() >= 7);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let pinned = TrustedKeys {
            keys: serde_json::from_value::<JwkSet>(case["pinned"]["keys"].clone()).unwrap(),
            sequence: case["pinned"]["sequence"].as_u64().unwrap(),
            revoked: Vec::new(),
        };
        let chain: Vec<String> = serde_json::from_value(case["chain"].clone()).unwrap();
        let expected = &case["expected"];
        match advance(&pinned, &issuer, &chain) {
            Ok(after) => {
                assert!(expected.get("error").is_none(), "{name}: accepted");
                let kids: Vec<&str> = after.keys.keys.iter().filter_map(|k| k.kid()).collect();
                assert_eq!(serde_json::json!(kids), expected["keys"], "{name}");
                assert_eq!(
                    after.sequence,
                    expected["sequence"].as_u64().unwrap(),
                    "{name}"
                );
                assert_eq!(
                    serde_json::json!(after.revoked),
                    expected["revoked"],
                    "{name}"
                );
            }
            Err(e) => assert_eq!(
                format!("{e:?}"),
                expected["error"].as_str().unwrap_or("accepted"),
                "{name}"
            ),
        }
    }
    // The interesting outcomes are all there.
    let outcome = |n: &str| {
        cases.iter().find(|c| c["name"] == n).unwrap()["expected"]
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    assert_eq!(outcome("two_rotations"), None);
    assert_eq!(outcome("paired_later"), None);
    assert_eq!(outcome("unknown_signer").as_deref(), Some("Untrusted"));
    assert_eq!(outcome("revocation_online"), None);
    assert_eq!(
        outcome("revoked_link").as_deref(),
        Some("SignedByRevokedKey")
    );
    assert_eq!(
        outcome("revoked_signer").as_deref(),
        Some("SignedByRevokedKey")
    );
    assert_eq!(outcome("out_of_order").as_deref(), Some("OutOfOrder"));
}
