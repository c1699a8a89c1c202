//! Writes the protocol test vectors to `protocol/vectors/`.
//!
//! Run with `cargo run -p tessera-protocol --example generate_vectors`. The output is
//! deterministic (fixed keys, RFC 6979 deterministic ECDSA), so running it again must leave the
//! checked-in files unchanged; `tests/vectors.rs` checks them.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tessera_protocol::authentication::{
    AuthenticationId, AuthenticationResponse, Decision, DisplayField, DynamicParameters,
};
use tessera_protocol::canonical::{Sha256Digest, to_canonical_vec};
use tessera_protocol::envelope::{self, MessageType, SoftwareSigningKey};
use tessera_protocol::ids::{ApplicationId, DeviceId, EnrollmentId, QrSessionId, UserId};
use tessera_protocol::jwk::JwkSet;
use tessera_protocol::pairing::{
    ApplicationInfo, DeviceInfo, DeviceRegistration, DeviceSignals, DeviceVersions, KeyProof,
    MobilePayload, PairingCode, PairingReply, PushRegistration, ServerUrl,
};
use tessera_protocol::qr::QrResponse;

fn key(label: &str) -> (SoftwareSigningKey, String) {
    let scalar: [u8; 32] = Sha256::digest(format!("tessera test vector key: {label}")).into();
    let key = SoftwareSigningKey::from_scalar_bytes(&scalar).expect("valid scalar");
    (key, URL_SAFE_NO_PAD.encode(scalar))
}

fn key_json(label: &str, key: &SoftwareSigningKey, d: &str) -> Value {
    json!({"label": label, "d": d, "public_jwk": key.public_jwk()})
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("canonical JSON is UTF-8")
}

fn part(jws: &str, i: usize) -> &str {
    jws.split('.').nth(i).expect("three parts")
}

/// Flips one character of the given part, keeping it valid base64url.
fn flip(jws: &str, i: usize) -> String {
    let mut parts: Vec<String> = jws.split('.').map(str::to_string).collect();
    let p = &mut parts[i];
    let mid = p.len() / 2;
    let c = p.as_bytes()[mid];
    let replacement = if c == b'A' { 'B' } else { 'A' };
    p.replace_range(mid..mid + 1, &replacement.to_string());
    parts.join(".")
}

fn with_header(jws: &str, header: Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(to_canonical_vec(&header).expect("header"));
    format!("{h}.{}.{}", part(jws, 1), part(jws, 2))
}

fn envelope_vector(
    name: &str,
    typ: MessageType,
    signer: &SoftwareSigningKey,
    d: &str,
    payload: &Value,
) -> Value {
    let jws = envelope::sign(typ, payload, signer).expect("sign");
    let (other, _) = key("an unrelated key");
    let other_signed = envelope::sign(typ, payload, &other).expect("sign");
    let other_signed_same_kid = format!(
        "{}.{}.{}",
        part(&jws, 0),
        part(&jws, 1),
        part(&other_signed, 2)
    );
    let header = json!({"alg": "ES256", "kid": signer.kid(), "typ": typ.as_str()});
    json!({
        "name": name,
        "typ": typ.as_str(),
        "signing_key": key_json(name, signer, d),
        "payload": payload,
        "canonical_header": text(to_canonical_vec(&header).expect("header")),
        "canonical_payload": text(to_canonical_vec(payload).expect("payload")),
        "signing_input": jws.rsplit_once('.').expect("dot").0,
        "envelope_digest": envelope::digest_of(&jws).expect("digest"),
        "jws": jws,
        "tampered": [
            {"case": "payload_modified", "jws": flip(&jws, 1), "error": "BadSignature"},
            {"case": "signature_modified", "jws": flip(&jws, 2), "error": "BadSignature"},
            {"case": "signed_by_another_key_with_this_kid", "jws": other_signed_same_kid, "error": "BadSignature"},
            {"case": "typ_changed", "jws": with_header(&jws, json!({"alg":"ES256","kid":signer.kid(),"typ":"tessera-other+jws"})), "error": "WrongType"},
            {"case": "alg_none", "jws": format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"x","typ":"x"}"#), part(&jws, 1)), "error": "Malformed"},
            {"case": "alg_hs256", "jws": with_header(&jws, json!({"alg":"HS256","kid":signer.kid(),"typ":typ.as_str()})), "error": "UnsupportedAlgorithm"},
            {"case": "not_three_parts", "jws": format!("{}.{}", part(&jws, 0), part(&jws, 1)), "error": "Malformed"}
        ]
    })
}

/// Apple's assertion format, CBOR `{"signature": bytes, "authenticatorData": bytes}` (written
/// out by hand: two definite-length byte strings in a two-entry map), by the key with scalar `d`
/// (base64url) for the app `app_id` (`teamId.bundleId`) at `counter`.
fn app_attest_assertion(d: &str, app_id: &str, counter: u32, client_data_hash: &[u8]) -> Vec<u8> {
    use p256::ecdsa::signature::Signer;
    let scalar = URL_SAFE_NO_PAD.decode(d).expect("scalar");
    let signing = p256::ecdsa::SigningKey::from_slice(&scalar).expect("key");
    let mut authenticator_data = Sha256::digest(app_id.as_bytes()).to_vec();
    authenticator_data.push(0);
    authenticator_data.extend_from_slice(&counter.to_be_bytes());
    let mut nonce_input = authenticator_data.clone();
    nonce_input.extend_from_slice(client_data_hash);
    let nonce = Sha256::digest(&nonce_input);
    let signature: p256::ecdsa::Signature = signing.sign(&nonce);
    let signature = signature.to_der();
    let byte_string = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.push(0x58);
        out.push(u8::try_from(bytes.len()).expect("short"));
        out.extend_from_slice(bytes);
    };
    let mut cbor = vec![0xa2, 0x69];
    cbor.extend_from_slice(b"signature");
    byte_string(&mut cbor, signature.as_bytes());
    cbor.push(0x71);
    cbor.extend_from_slice(b"authenticatorData");
    byte_string(&mut cbor, &authenticator_data);
    cbor
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors");
    std::fs::create_dir_all(&dir).expect("vectors dir");

    // 1. Canonical JSON (RFC 8785).
    let canonical_inputs = vec![
        (
            "key_order",
            json!({"b": 2, "a": 1, "c": {"y": true, "x": null}}),
        ),
        (
            "whitespace_and_arrays",
            serde_json::from_str::<Value>("{ \"list\" : [ 3 , 1 , 2 ] }").expect("json"),
        ),
        (
            "numbers",
            json!({"int": 120, "neg": -0.0, "float": 120.50, "exp": 1e21, "small": 1e-7}),
        ),
        (
            "strings",
            json!({"quote": "\"", "ctrl": "\u{0001}\n", "unicode": "€ é 😀", "slash": "/"}),
        ),
        (
            "utf16_key_order",
            json!({"\u{20ac}": "euro", "\r": "cr", "1": "one", "\u{1f600}": "emoji", "\u{00e9}": "e-acute"}),
        ),
        (
            "dynamic_parameters",
            json!({"message": "Pay 120.00 EUR to ACME GmbH", "fields": [{"label": "Amount", "value": "120.00 EUR"}, {"label": "Payee", "value": "ACME GmbH"}]}),
        ),
    ];
    let canonical: Vec<Value> = canonical_inputs
        .into_iter()
        .map(|(name, input)| {
            let bytes = to_canonical_vec(&input).expect("canonical");
            json!({
                "name": name,
                "input": input,
                "canonical": text(bytes.clone()),
                "sha256": Sha256Digest::of_bytes(&bytes),
            })
        })
        .collect();
    write(
        &dir.join("canonical.json"),
        &json!({
            "description": "RFC 8785 canonical JSON: `canonical` is the exact UTF-8 text of `input` canonicalized; `sha256` its SHA-256, unpadded base64url.",
            "vectors": canonical,
        }),
    );

    // 2. Envelopes and the pairing exchange, with fixed keys.
    let (possession, possession_d) = key("device possession key");
    let (user_verification, uv_d) = key("device user-verification key");
    let (server, server_d) = key("server signing key");
    let (device_key, device_key_d) = key("device key");
    let server_url = ServerUrl::parse("https://auth.example.com").expect("url");
    let mut registration = DeviceRegistration {
        v: 1,
        audience: server_url.clone(),
        device_id: DeviceId::of_device_key(&device_key.public_jwk()),
        nonce: "AAECAwQFBgcICQoLDA0ODw".into(),
        issued_at: 1_767_225_600,
        possession_key: possession.public_jwk(),
        user_verification_key: user_verification.public_jwk(),
        device: DeviceInfo {
            model: "Pixel 8".into(),
            os_name: "Android".into(),
            os_version: "15".into(),
            app_version: "2.3.0".into(),
            sdk_version: "0.1.0".into(),
            name: None,
        },
        signals: DeviceSignals {
            rooted: Some(false),
            screen_lock: Some(true),
            mdm: None,
            emulator: None,
        },
        push: PushRegistration::Fcm {
            token: "fcm-registration-token-example".into(),
        },
        otp_transport_key: None,
        device_key: device_key.public_jwk(),
        device_key_proof: String::new(),
        attestation: None,
    };
    let device_key_proof_vector = envelope_vector(
        "device_key_proof",
        MessageType::DeviceKeyProof,
        &device_key,
        &device_key_d,
        &serde_json::to_value(registration.device_key_claims()).expect("value"),
    );
    registration.device_key_proof = device_key_proof_vector["jws"]
        .as_str()
        .expect("jws")
        .to_string();
    let registration_value = serde_json::to_value(&registration).expect("value");
    let registration_vector = envelope_vector(
        "device_registration",
        MessageType::Registration,
        &possession,
        &possession_d,
        &registration_value,
    );
    let registration_jws = registration_vector["jws"]
        .as_str()
        .expect("jws")
        .to_string();
    let registration_digest = envelope::digest_of(&registration_jws).expect("digest");
    let proof = KeyProof {
        v: 1,
        registration_digest,
    };
    let proof_vector = envelope_vector(
        "user_verification_key_proof",
        MessageType::KeyProof,
        &user_verification,
        &uv_d,
        &serde_json::to_value(&proof).expect("value"),
    );
    let reply = PairingReply {
        v: 1,
        issuer: server_url.clone(),
        application: ApplicationInfo {
            id: "app_0123456789abcdef0123456789abcdef"
                .parse::<ApplicationId>()
                .expect("id"),
            name: "Example Bank".into(),
        },
        user_id: "alice@example.com".parse::<UserId>().expect("user"),
        enrollment_id: "enr_fedcba9876543210fedcba9876543210"
            .parse::<EnrollmentId>()
            .expect("id"),
        device_id: registration.device_id.clone(),
        registration_digest,
        server_keys: JwkSet {
            keys: vec![server.public_jwk()],
        },
        pending_verification: false,
        otp: None,
        issued_at: 1_767_225_601,
    };
    let reply_vector = envelope_vector(
        "pairing_reply",
        MessageType::PairingReply,
        &server,
        &server_d,
        &serde_json::to_value(&reply).expect("value"),
    );
    let mobile_payload = MobilePayload {
        v: 1,
        registration: registration_jws,
        user_verification_proof: proof_vector["jws"].as_str().expect("jws").to_string(),
    }
    .encode()
    .expect("encode");
    write(
        &dir.join("envelopes.json"),
        &json!({
            "description": "Signed envelopes: compact JWS, ES256 (RFC 6979 deterministic ECDSA, so `jws` is reproducible from `signing_key.d`), header and payload in RFC 8785 canonical JSON. `envelope_digest` is SHA-256 over `signing_input`. Every `tampered` JWS must be refused; `error` names the refusal of the reference implementation.",
            "vectors": [registration_vector, proof_vector, reply_vector, device_key_proof_vector],
            "pairing": {
                "description": "The envelopes above form one pairing: the device key proof names the registration's audience, device id, possession key thumbprint and nonce and is carried inside the registration as `device_key_proof`, whose `device_id` is the device key's id (`dev_` + the first 16 bytes of its RFC 7638 thumbprint, hex); the user-verification proof binds the registration's envelope digest, the reply binds it too and is signed by a key in its own server_keys. `mobile_payload` is the relay form of registration + proof.",
                "server_url": server_url,
                "mobile_payload": mobile_payload,
            }
        }),
    );

    // 3. Pairing codes and thumbprints.
    let codes: Vec<Value> = ["ABCD-EFGH-JKMN", "abcd efgh jkmn", "0OIL-1234-5678", "ZZZZ-ZZZZ-ZZZZ"]
        .iter()
        .map(|typed| {
            let code = PairingCode::parse(typed).expect("code");
            json!({"typed": typed, "normalized": code.normalized(), "display": *code.display_form(), "digest": code.digest()})
        })
        .collect();
    let invalid_codes = [
        "ABCD-EFGH-JKM",
        "ABCD-EFGH-JKMNP",
        "ABCD-EFGH-JKMU",
        "ABCD_EFGH_JKMN",
        "",
    ];
    let thumbprints: Vec<Value> = [(&possession, "device possession key"), (&server, "server signing key"), (&device_key, "device key")]
        .iter()
        .map(|(k, label)| json!({"label": label, "public_jwk": k.public_jwk(), "thumbprint": k.public_jwk().thumbprint(), "device_id": DeviceId::of_device_key(&k.public_jwk())}))
        .collect();
    write(
        &dir.join("pairing_codes.json"),
        &json!({
            "description": "Pairing codes: Crockford base32, 12 characters, case-insensitive, '-' and ' ' ignored, O→0, I/L→1. `digest` is SHA-256 of `normalized`, unpadded base64url. `thumbprints` are RFC 7638 JWK thumbprints, each with the device id a device key with that thumbprint has (`dev_` + the thumbprint's first 16 bytes in lowercase hex).",
            "valid": codes,
            "invalid": invalid_codes,
            "thumbprints": thumbprints,
        }),
    );
    // 4. Signed answers: every answer carries the device's current model, OS and app version.
    let answer_parameters = DynamicParameters {
        message: "Pay 120.00 EUR to ACME GmbH?".into(),
        fields: vec![DisplayField {
            label: "Amount".into(),
            value: "120.00 EUR".into(),
        }],
        hidden_fields: Vec::new(),
    };
    let versions = DeviceVersions {
        model: "Pixel 8".into(),
        os_version: "16".into(),
        app_version: "2.4.0".into(),
    };
    let answer_signals = DeviceSignals {
        rooted: Some(false),
        screen_lock: Some(true),
        mdm: Some(false),
        emulator: Some(false),
    };
    let authentication_response = AuthenticationResponse {
        v: 1,
        request_id: "aut_00112233445566778899aabbccddeeff"
            .parse::<AuthenticationId>()
            .expect("id"),
        enrollment_id: reply.enrollment_id.clone(),
        request_nonce: "CAkKCwwNDg8QERITFBUWFw".into(),
        decision: Decision::Approve,
        parameters_digest: answer_parameters.digest().expect("digest"),
        selected_number: Some(42),
        amr: vec!["fpt".into()],
        signals: answer_signals,
        location: None,
        device: Some(versions.clone()),
        issued_at: 1_767_225_700,
        app_attest_assertion: None,
    };
    // The same approval from an iOS device whose pairing was App Attested: the assertion is made
    // over the answer's canonical JSON without it, then signed into the answer.
    let (app_attest_key, app_attest_d) = key("app attest key");
    let app_attest_client_data_hash = authentication_response
        .app_attest_client_data_hash()
        .expect("client data hash");
    let assertion = app_attest_assertion(
        &app_attest_d,
        "ABCDE12345.com.example.bank",
        1,
        app_attest_client_data_hash.as_bytes(),
    );
    let mut attested_response = authentication_response.clone();
    attested_response.app_attest_assertion = Some(URL_SAFE_NO_PAD.encode(&assertion));
    let qr_response = QrResponse {
        v: 1,
        session_id: "qrs_00112233445566778899aabbccddeeff"
            .parse::<QrSessionId>()
            .expect("id"),
        enrollment_id: reply.enrollment_id.clone(),
        session_nonce: "GBkaGxwdHh8gISIjJCUmJw".into(),
        decision: Decision::Approve,
        context_digest: Sha256Digest::of_bytes(b"the canonical JSON of the access context shown"),
        amr: Vec::new(),
        signals: answer_signals,
        location: None,
        device: Some(versions),
        issued_at: 1_767_225_800,
        app_attest_assertion: None,
    };
    // The same QR approval from the App Attested iOS device (the next counter): the same rule,
    // the assertion over the QR answer's canonical JSON without it.
    let qr_client_data_hash = qr_response
        .app_attest_client_data_hash()
        .expect("client data hash");
    let qr_assertion = app_attest_assertion(
        &app_attest_d,
        "ABCDE12345.com.example.bank",
        2,
        qr_client_data_hash.as_bytes(),
    );
    let mut attested_qr_response = qr_response.clone();
    attested_qr_response.app_attest_assertion = Some(URL_SAFE_NO_PAD.encode(&qr_assertion));
    let mut attested_qr_vector = envelope_vector(
        "qr_response_with_app_attest_assertion",
        MessageType::QrResponse,
        &possession,
        &possession_d,
        &serde_json::to_value(&attested_qr_response).expect("value"),
    );
    attested_qr_vector["app_attest"] = json!({
        "description": "client_data_hash is SHA-256 of the canonical JSON of the payload without app_attest_assertion (that is, of the qr_response vector's canonical_payload); the assertion is by the same App Attest key as authentication_response_with_app_attest_assertion, app id ABCDE12345.com.example.bank, counter 2 (one counter for push and QR answers).",
        "client_data_hash": qr_client_data_hash,
        "app_id": "ABCDE12345.com.example.bank",
        "counter": 2,
        "key": key_json("app attest key", &app_attest_key, &app_attest_d),
    });
    let mut attested_vector = envelope_vector(
        "authentication_response_with_app_attest_assertion",
        MessageType::AuthenticationResponse,
        &user_verification,
        &uv_d,
        &serde_json::to_value(&attested_response).expect("value"),
    );
    attested_vector["app_attest"] = json!({
        "description": "client_data_hash is SHA-256 of the canonical JSON of the payload without app_attest_assertion (that is, of the authentication_response vector's canonical_payload); the assertion (CBOR {signature, authenticatorData}) is by the App Attest key below, app id ABCDE12345.com.example.bank, counter 1: signature = ECDSA P-256 SHA-256 (DER) over SHA-256(authenticatorData || client_data_hash).",
        "client_data_hash": app_attest_client_data_hash,
        "app_id": "ABCDE12345.com.example.bank",
        "counter": 1,
        "key": key_json("app attest key", &app_attest_key, &app_attest_d),
    });
    write(
        &dir.join("answers.json"),
        &json!({
            "description": "Signed answers of the device paired in envelopes.json (same keys): an approval signed with the user-verification key and a QR login approval signed with the possession key. Each carries `device`, the model, OS version and app version as the device is now (the server keeps the enrollment current from it); `device` is optional for devices built before it existed. The third and fourth are the first two from an App Attested iOS device (a push answer, then a QR answer): each carries `app_attest_assertion`, made over SHA-256 of the answer's canonical JSON without it (see its `app_attest`). Checked like envelopes.json, plus: the payload parses as the answer type.",
            "vectors": [
                envelope_vector(
                    "authentication_response",
                    MessageType::AuthenticationResponse,
                    &user_verification,
                    &uv_d,
                    &serde_json::to_value(&authentication_response).expect("value"),
                ),
                envelope_vector(
                    "qr_response",
                    MessageType::QrResponse,
                    &possession,
                    &possession_d,
                    &serde_json::to_value(&qr_response).expect("value"),
                ),
                attested_vector,
                attested_qr_vector,
            ],
        }),
    );
    println!("wrote vectors to {}", dir.display());
}

fn write(path: &Path, value: &Value) {
    let mut text = serde_json::to_string_pretty(value).expect("json");
    text.push('\n');
    std::fs::write(path, text).expect("write vector file");
}
