//! Checks the JSON test vectors in `protocol/vectors/` against this implementation: canonical
//! bytes, digests, deterministic signatures, verification, and refusal of every tampered variant.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tessera_protocol::authentication::AuthenticationResponse;
use tessera_protocol::canonical::{Sha256Digest, to_canonical_vec};
use tessera_protocol::envelope::{self, EnvelopeError, MessageType, SoftwareSigningKey};
use tessera_protocol::jwk::PublicJwk;
use tessera_protocol::pairing::{
    DeviceRegistration, KeyProof, MobilePayload, PairingCode, PairingReply,
};
use tessera_protocol::qr::QrResponse;

fn load(name: &str) -> Value {
    let path = format!("{}/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn message_type(typ: &str) -> MessageType {
    [
        MessageType::Registration,
        MessageType::KeyProof,
        MessageType::DeviceKeyProof,
        MessageType::PairingReply,
        MessageType::ServerKeySet,
        MessageType::DeviceRequest,
        MessageType::AuthenticationResponse,
        MessageType::QrResponse,
    ]
    .into_iter()
    .find(|t| t.as_str() == typ)
    .unwrap_or_else(|| panic!("unknown typ {typ}"))
}

#[test]
fn canonical_json_vectors() {
    let file = load("canonical.json");
    let vectors = file["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 6);
    for v in vectors {
        let bytes = to_canonical_vec(&v["input"]).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            v["canonical"].as_str().unwrap(),
            "{}",
            v["name"]
        );
        assert_eq!(
            String::from(Sha256Digest::of_bytes(&bytes)),
            v["sha256"].as_str().unwrap()
        );
    }
}

#[test]
fn envelope_vectors_sign_verify_and_refuse_tampering() {
    check_envelopes("envelopes.json");
}

#[test]
fn answer_vectors_verify_and_carry_the_device_versions() {
    check_envelopes("answers.json");
    let file = load("answers.json");
    let vectors = file["vectors"].as_array().unwrap();
    let by_name = |n: &str| vectors.iter().find(|v| v["name"] == n).unwrap();
    let answer: AuthenticationResponse =
        serde_json::from_value(by_name("authentication_response")["payload"].clone()).unwrap();
    let qr: QrResponse = serde_json::from_value(by_name("qr_response")["payload"].clone()).unwrap();
    for versions in [answer.device.unwrap(), qr.device.unwrap()] {
        assert_eq!(versions.os_version, "16");
        assert_eq!(versions.app_version, "2.4.0");
        assert_eq!(versions.model, "Pixel 8");
    }
    // Signed by the keys of the device the pairing vectors register.
    let pairing = load("envelopes.json");
    let registration = pairing["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "device_registration")
        .unwrap();
    assert_eq!(
        by_name("authentication_response")["signing_key"]["public_jwk"],
        registration["payload"]["user_verification_key"]
    );
    assert_eq!(
        by_name("qr_response")["signing_key"]["public_jwk"],
        registration["payload"]["possession_key"]
    );
    // An answer of a device built before `device` existed still parses; an unknown member does not.
    let mut old = by_name("authentication_response")["payload"].clone();
    old.as_object_mut().unwrap().remove("device");
    let parsed: AuthenticationResponse = serde_json::from_value(old.clone()).unwrap();
    assert_eq!(parsed.device, None);
    old["device"] =
        serde_json::json!({"model": "x", "os_version": "1", "app_version": "1", "extra": 1});
    assert!(serde_json::from_value::<AuthenticationResponse>(old).is_err());
}

#[test]
fn the_app_attest_answer_vector_binds_its_assertion_to_the_answer_without_it() {
    let file = load("answers.json");
    let vectors = file["vectors"].as_array().unwrap();
    let by_name = |n: &str| vectors.iter().find(|v| v["name"] == n).unwrap();
    let plain = by_name("authentication_response");
    let attested = by_name("authentication_response_with_app_attest_assertion");
    let answer: AuthenticationResponse =
        serde_json::from_value(attested["payload"].clone()).unwrap();
    let expected = attested["app_attest"]["client_data_hash"].as_str().unwrap();
    // The hash is over the answer without the assertion: the plain vector's canonical payload.
    assert_eq!(
        String::from(answer.app_attest_client_data_hash().unwrap()),
        expected
    );
    assert_eq!(
        String::from(Sha256Digest::of_bytes(
            plain["canonical_payload"].as_str().unwrap().as_bytes()
        )),
        expected
    );
    // The assertion: CBOR {"signature": bytes, "authenticatorData": bytes}, by the App Attest key.
    let cbor = URL_SAFE_NO_PAD
        .decode(answer.app_attest_assertion.as_deref().unwrap())
        .unwrap();
    assert_eq!(&cbor[..11], b"\xa2\x69signature");
    let signature_len = usize::from(cbor[12]);
    let signature = &cbor[13..13 + signature_len];
    let rest = &cbor[13 + signature_len..];
    assert_eq!(&rest[..18], b"\x71authenticatorData");
    let authenticator_data = &rest[20..20 + usize::from(rest[19])];
    assert_eq!(authenticator_data[33..37], 1u32.to_be_bytes());
    let jwk: PublicJwk =
        serde_json::from_value(attested["app_attest"]["key"]["public_jwk"].clone()).unwrap();
    let mut nonce_input = authenticator_data.to_vec();
    nonce_input.extend_from_slice(answer.app_attest_client_data_hash().unwrap().as_bytes());
    let nonce = Sha256Digest::of_bytes(&nonce_input);
    use p256::ecdsa::signature::Verifier;
    jwk.verifying_key()
        .verify(
            nonce.as_bytes(),
            &p256::ecdsa::Signature::from_der(signature).unwrap(),
        )
        .unwrap();
    // A device without App Attest sends no member, and its answer hashes the same.
    let mut without = answer.clone();
    without.app_attest_assertion = None;
    assert!(
        !serde_json::to_string(&without)
            .unwrap()
            .contains("app_attest")
    );
}

#[test]
fn the_app_attest_qr_answer_vector_binds_its_assertion_to_the_qr_answer_without_it() {
    let file = load("answers.json");
    let vectors = file["vectors"].as_array().unwrap();
    let by_name = |n: &str| vectors.iter().find(|v| v["name"] == n).unwrap();
    let plain = by_name("qr_response");
    let attested = by_name("qr_response_with_app_attest_assertion");
    let answer: QrResponse = serde_json::from_value(attested["payload"].clone()).unwrap();
    let expected = attested["app_attest"]["client_data_hash"].as_str().unwrap();
    // The hash is over the QR answer without the assertion: the plain vector's canonical payload.
    assert_eq!(
        String::from(answer.app_attest_client_data_hash().unwrap()),
        expected
    );
    assert_eq!(
        String::from(Sha256Digest::of_bytes(
            plain["canonical_payload"].as_str().unwrap().as_bytes()
        )),
        expected
    );
    // The assertion: CBOR {"signature", "authenticatorData"}, by the push vector's App Attest
    // key, at the next counter.
    let cbor = URL_SAFE_NO_PAD
        .decode(answer.app_attest_assertion.as_deref().unwrap())
        .unwrap();
    assert_eq!(&cbor[..11], b"\xa2\x69signature");
    let signature_len = usize::from(cbor[12]);
    let signature = &cbor[13..13 + signature_len];
    let rest = &cbor[13 + signature_len..];
    assert_eq!(&rest[..18], b"\x71authenticatorData");
    let authenticator_data = &rest[20..20 + usize::from(rest[19])];
    assert_eq!(authenticator_data[33..37], 2u32.to_be_bytes());
    assert_eq!(
        attested["app_attest"]["key"]["public_jwk"],
        by_name("authentication_response_with_app_attest_assertion")["app_attest"]["key"]["public_jwk"]
    );
    let jwk: PublicJwk =
        serde_json::from_value(attested["app_attest"]["key"]["public_jwk"].clone()).unwrap();
    let mut nonce_input = authenticator_data.to_vec();
    nonce_input.extend_from_slice(answer.app_attest_client_data_hash().unwrap().as_bytes());
    let nonce = Sha256Digest::of_bytes(&nonce_input);
    use p256::ecdsa::signature::Verifier;
    jwk.verifying_key()
        .verify(
            nonce.as_bytes(),
            &p256::ecdsa::Signature::from_der(signature).unwrap(),
        )
        .unwrap();
    // Another QR answer (another session nonce) does not hash the same.
    let mut other = answer.clone();
    other.session_nonce = "AAAAAAAAAAAAAAAAAAAAAA".into();
    assert_ne!(
        other.app_attest_client_data_hash().unwrap(),
        answer.app_attest_client_data_hash().unwrap()
    );
    // A device without App Attest sends no member.
    let mut without = answer.clone();
    without.app_attest_assertion = None;
    assert!(
        !serde_json::to_string(&without)
            .unwrap()
            .contains("app_attest")
    );
}

fn check_envelopes(name: &str) {
    let file = load(name);
    for v in file["vectors"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let typ = message_type(v["typ"].as_str().unwrap());
        let d = URL_SAFE_NO_PAD
            .decode(v["signing_key"]["d"].as_str().unwrap())
            .unwrap();
        let key = SoftwareSigningKey::from_scalar_bytes(&d).unwrap();
        let jwk: PublicJwk =
            serde_json::from_value(v["signing_key"]["public_jwk"].clone()).unwrap();
        assert!(jwk.same_key(&key.public_jwk()), "{name}: public key");
        assert_eq!(
            jwk.kid(),
            Some(jwk.thumbprint().as_str()),
            "{name}: kid is the thumbprint"
        );

        // Canonical header and payload, and the deterministic signature.
        let jws = v["jws"].as_str().unwrap();
        let expected_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(v["canonical_header"].as_str().unwrap()),
            URL_SAFE_NO_PAD.encode(v["canonical_payload"].as_str().unwrap())
        );
        assert_eq!(
            v["signing_input"].as_str().unwrap(),
            expected_input,
            "{name}"
        );
        assert!(jws.starts_with(&expected_input), "{name}");
        assert_eq!(
            to_canonical_vec(&v["payload"]).unwrap(),
            v["canonical_payload"].as_str().unwrap().as_bytes()
        );
        let resigned = envelope::sign(typ, &v["payload"], &key).unwrap();
        assert_eq!(
            resigned, jws,
            "{name}: RFC 6979 signatures are reproducible"
        );

        let verified = envelope::verify::<Value>(jws, typ, &jwk).unwrap();
        assert_eq!(verified.payload, v["payload"]);
        assert_eq!(
            String::from(verified.digest),
            v["envelope_digest"].as_str().unwrap()
        );

        for t in v["tampered"].as_array().unwrap() {
            let case = t["case"].as_str().unwrap();
            let err = envelope::verify::<Value>(t["jws"].as_str().unwrap(), typ, &jwk)
                .expect_err(&format!("{name}/{case} must be refused"));
            let expected = t["error"].as_str().unwrap();
            let matches = match expected {
                "BadSignature" => err == EnvelopeError::BadSignature,
                "WrongType" => matches!(err, EnvelopeError::WrongType { .. }),
                "Malformed" => err == EnvelopeError::Malformed,
                "UnsupportedAlgorithm" => err == EnvelopeError::UnsupportedAlgorithm,
                other => panic!("unknown expected error {other}"),
            };
            assert!(matches, "{name}/{case}: expected {expected}, got {err:?}");
        }
    }
}

#[test]
fn pairing_vector_bindings_hold() {
    let file = load("envelopes.json");
    let vectors = file["vectors"].as_array().unwrap();
    let by_name = |n: &str| vectors.iter().find(|v| v["name"] == n).unwrap();
    let reg = by_name("device_registration");
    let proof = by_name("user_verification_key_proof");
    let reply = by_name("pairing_reply");
    let device_key_proof = by_name("device_key_proof");

    let registration: DeviceRegistration = serde_json::from_value(reg["payload"].clone()).unwrap();
    let key_proof: KeyProof = serde_json::from_value(proof["payload"].clone()).unwrap();
    let pairing_reply: PairingReply = serde_json::from_value(reply["payload"].clone()).unwrap();
    let reg_digest = String::from(key_proof.registration_digest);
    assert_eq!(reg_digest, reg["envelope_digest"].as_str().unwrap());
    assert_eq!(String::from(pairing_reply.registration_digest), reg_digest);
    assert_eq!(pairing_reply.device_id, registration.device_id);
    // The registration carries the device key proof and names the device by its key.
    assert_eq!(
        registration.device_key_proof,
        device_key_proof["jws"].as_str().unwrap()
    );
    assert_eq!(registration.check_device_key(), Ok(()));
    assert_eq!(
        serde_json::to_value(registration.device_key_claims()).unwrap(),
        device_key_proof["payload"]
    );
    assert_eq!(pairing_reply.issuer, registration.audience);
    // The reply verifies against its own key set.
    envelope::verify_with_set::<PairingReply>(
        reply["jws"].as_str().unwrap(),
        MessageType::PairingReply,
        &pairing_reply.server_keys,
    )
    .unwrap();

    let mobile =
        MobilePayload::decode(file["pairing"]["mobile_payload"].as_str().unwrap()).unwrap();
    assert_eq!(mobile.registration, reg["jws"].as_str().unwrap());
    assert_eq!(
        mobile.user_verification_proof,
        proof["jws"].as_str().unwrap()
    );
}

#[test]
fn pairing_code_vectors() {
    let file = load("pairing_codes.json");
    for v in file["valid"].as_array().unwrap() {
        let code = PairingCode::parse(v["typed"].as_str().unwrap()).unwrap();
        assert_eq!(code.normalized(), v["normalized"].as_str().unwrap());
        assert_eq!(code.display_form().as_str(), v["display"].as_str().unwrap());
        assert_eq!(String::from(code.digest()), v["digest"].as_str().unwrap());
    }
    for v in file["invalid"].as_array().unwrap() {
        assert!(PairingCode::parse(v.as_str().unwrap()).is_err(), "{v}");
    }
    for t in file["thumbprints"].as_array().unwrap() {
        let jwk: PublicJwk = serde_json::from_value(t["public_jwk"].clone()).unwrap();
        assert_eq!(jwk.thumbprint(), t["thumbprint"].as_str().unwrap());
        assert_eq!(
            tessera_protocol::ids::DeviceId::of_device_key(&jwk).as_str(),
            t["device_id"].as_str().unwrap()
        );
    }
}

#[test]
fn generator_is_deterministic() {
    // The checked-in files must be what the generator writes today: re-derive one signature.
    let file = load("envelopes.json");
    let v = &file["vectors"][0];
    let d = URL_SAFE_NO_PAD
        .decode(v["signing_key"]["d"].as_str().unwrap())
        .unwrap();
    let key = SoftwareSigningKey::from_scalar_bytes(&d).unwrap();
    let again = envelope::sign(MessageType::Registration, &v["payload"], &key).unwrap();
    assert_eq!(again, v["jws"].as_str().unwrap());
}
