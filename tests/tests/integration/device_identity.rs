//! End to end: the device identity is bound to a key the device proves at registration. A
//! device that names another device's id (with or without a key of its own) replaces nothing
//! and inherits nothing; the same device (same key) pairing again still replaces its earlier
//! enrollment; the primary device is asked what approving will do; and one unpaired user of a
//! shared phone does not hide the other users' requests.

use serde_json::{Value, json};
use tessera_core::{CoreError, Enrollment, IncomingRequest};
use tessera_protocol::api::EnrollmentState;
use tessera_protocol::authentication::AuthenticationKind;
use tessera_protocol::envelope::{self, MessageType, SoftwareSigningKey};
use tessera_protocol::ids::{DeviceId, EnrollmentId};
use tessera_protocol::pairing::{KeyProof, MobilePayload, PairingUri};
use tessera_server::store::applications::AdditionalDevicePolicy;
use tessera_tests::{
    Backend, RawDevice, TestDevice, TestServer, approval_cycle, ask, device_config, on_each_backend,
};

on_each_backend! {
    a_device_claiming_another_devices_id_replaces_nothing => claimed_id_replaces_nothing;
    a_claimed_id_is_refused_in_relay_pairing_too => claimed_id_relay;
    the_same_device_pairing_again_still_replaces_its_enrollment => same_key_replaces;
    the_primary_device_is_asked_what_approving_will_do => verification_prompt;
    an_unpaired_user_of_a_shared_phone_hides_nobodys_requests => shared_phone_one_unpaired;
    a_new_device_key_pairing_again_keeps_the_enrollment_the_server_keeps => new_key_keeps;
    an_approved_new_device_key_keeps_the_enrollment_the_server_keeps => new_key_approved_keeps;
}

/// Posts a pairing with raw signed messages; returns the status and the error code, if any.
async fn post_pairing(uri: &str, registration: &str, proof: &str) -> (u16, Option<String>) {
    let parsed = PairingUri::parse(uri).expect("uri");
    let response = reqwest::Client::new()
        .post(parsed.server.endpoint("/v1/device/pairings"))
        .json(&json!({
            "pairing_code": parsed.code.display_form().as_str(),
            "registration": registration,
            "user_verification_proof": proof,
        }))
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().map(str::to_string))
}

/// A registration signed by `raw`, its device identity changed by `adjust` (which may sign its
/// own device key proof), and the user-verification proof for it.
fn registration_with(
    raw: &RawDevice,
    audience: &str,
    adjust: impl FnOnce(&mut Value),
) -> (String, String) {
    let (genuine, _) = raw.registration(audience, tessera_protocol::time::now());
    let mut payload: Value = envelope::unverified_payload(&genuine).expect("payload");
    payload["nonce"] = json!(tessera_protocol::pairing::DeviceRegistration::new_nonce());
    adjust(&mut payload);
    let jws = envelope::sign(MessageType::Registration, &payload, &raw.possession).expect("sign");
    let proof = envelope::sign(
        MessageType::KeyProof,
        &KeyProof {
            v: 1,
            registration_digest: envelope::digest_of(&jws).expect("digest"),
        },
        &raw.user_verification,
    )
    .expect("sign");
    (jws, proof)
}

/// Signs a device key proof for `payload` (a registration) with `key`.
fn prove(payload: &mut Value, key: &SoftwareSigningKey) {
    let registration: tessera_protocol::pairing::DeviceRegistration = {
        let mut p = payload.clone();
        p["device_key_proof"] = json!("");
        serde_json::from_value(p).expect("registration")
    };
    payload["device_key_proof"] = json!(
        envelope::sign(
            MessageType::DeviceKeyProof,
            &registration.device_key_claims(),
            key
        )
        .expect("sign")
    );
}

/// Every way a second device can name the first one's `victim` id (and key) without holding
/// the first one's device key; each is refused with the code given.
fn impostor_registrations(
    raw: &RawDevice,
    audience: &str,
    victim: &DeviceId,
    victim_key: &Value,
) -> Vec<(&'static str, (String, String), &'static str)> {
    let own_key = raw.device_key.clone();
    vec![
        (
            "the id alone, as registrations were before device keys (no key, no proof)",
            registration_with(raw, audience, |p| {
                p["device_id"] = json!(victim);
                let o = p.as_object_mut().expect("object");
                o.remove("device_key");
                o.remove("device_key_proof");
            }),
            "invalid_registration",
        ),
        (
            "the id with its own key and a genuine proof of that key",
            registration_with(raw, audience, |p| {
                p["device_id"] = json!(victim);
                prove(p, &own_key);
            }),
            "invalid_registration",
        ),
        (
            "the id and the victim's public device key, 'proven' with its own key",
            registration_with(raw, audience, |p| {
                p["device_id"] = json!(victim);
                p["device_key"] = victim_key.clone();
                prove(p, &own_key);
            }),
            "invalid_signature",
        ),
        (
            "its own id with a proof whose signature was tampered with",
            registration_with(raw, audience, |p| {
                prove(p, &own_key);
                let proof = p["device_key_proof"].as_str().expect("proof").to_string();
                let (input, signature) = proof.rsplit_once('.').expect("jws");
                let flipped = if signature.starts_with('A') { "B" } else { "A" };
                p["device_key_proof"] = json!(format!("{input}.{flipped}{}", &signature[1..]));
            }),
            "invalid_signature",
        ),
    ]
}

/// The victim's device key as its registration carried it (read from the server payload's
/// registration digest is not possible; the key store holds it): the public key of the core's
/// device key.
async fn device_key_of(device: &TestDevice) -> Value {
    use tessera_core::KeyStore;
    let keys = tessera_core::SoftwareKeyStore::open(device.state_dir().join("keys")).unwrap();
    let point = keys
        .public_key("tessera.device-key")
        .unwrap()
        .expect("the device key");
    let jwk = tessera_protocol::jwk::PublicJwk::from_sec1_bytes(&point).unwrap();
    assert_eq!(
        DeviceId::of_device_key(&jwk),
        device.auth.device_id(),
        "the device id is the device key's"
    );
    serde_json::to_value(jwk).unwrap()
}

async fn claimed_id_replaces_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("carol").await;
    let phone = TestDevice::new().await;
    let paired = phone
        .auth
        .pair(&server.pairing_uri("carol").await, None)
        .await
        .unwrap();
    let victim = phone.auth.device_id();
    let victim_key = device_key_of(&phone).await;

    let impostor = RawDevice::new();
    for (case, (registration, proof), code) in
        impostor_registrations(&impostor, &server.base_url, &victim, &victim_key)
    {
        let (status, got) =
            post_pairing(&server.pairing_uri("carol").await, &registration, &proof).await;
        assert_eq!((status, got.as_deref()), (400, Some(code)), "{case}");
    }

    // Carol's phone is still paired, still primary, and still answers.
    let devices = server.customer.list_devices("carol").await.unwrap().devices;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].enrollment_id, paired.enrollment_id);
    assert!(devices[0].primary);
    approval_cycle(&server.customer, "carol", &phone, &paired.enrollment_id).await;

    // The impostor pairing as itself is a second device: not primary, and the phone stays.
    let own = impostor.pair(&server.pairing_uri("carol").await).await;
    assert_ne!(own.device_id, victim);
    let devices = server.customer.list_devices("carol").await.unwrap().devices;
    assert_eq!(devices.len(), 2);
    let phone_record = devices
        .iter()
        .find(|d| d.enrollment_id == paired.enrollment_id)
        .expect("the phone's enrollment");
    assert!(phone_record.primary);
    let impostor_record = devices
        .iter()
        .find(|d| d.enrollment_id == own.enrollment_id)
        .expect("the second device");
    assert!(!impostor_record.primary);
}

async fn claimed_id_relay(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("carol").await;
    let phone = TestDevice::new().await;
    let paired = phone
        .auth
        .pair(&server.pairing_uri("carol").await, None)
        .await
        .unwrap();
    let victim = phone.auth.device_id();
    let victim_key = device_key_of(&phone).await;
    let impostor = RawDevice::new();
    for (case, (registration, proof), _) in
        impostor_registrations(&impostor, &server.base_url, &victim, &victim_key)
    {
        let payload = MobilePayload {
            v: 1,
            registration,
            user_verification_proof: proof,
        }
        .encode()
        .unwrap();
        let err = server
            .customer
            .relay_pairing("carol", &payload)
            .await
            .unwrap_err();
        assert_eq!(
            err.code().map(|c| c.as_str()),
            Some("invalid_mobile_payload"),
            "{case}"
        );
    }
    let devices = server.customer.list_devices("carol").await.unwrap().devices;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].enrollment_id, paired.enrollment_id);
    assert!(devices[0].primary);
}

async fn same_key_replaces(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("carol").await;
    let phone = TestDevice::new().await;
    let first = phone
        .auth
        .pair(&server.pairing_uri("carol").await, None)
        .await
        .unwrap();
    let tablet = TestDevice::with_config(device_config("Galaxy Tab S9")).await;
    let tablet_enrollment = tablet
        .auth
        .pair(&server.pairing_uri("carol").await, None)
        .await
        .unwrap();
    // A request waiting on the phone's first enrollment when it pairs again.
    let waiting = server
        .customer
        .create_authentication("carol", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();

    let id_before = phone.auth.device_id();
    let phone = phone.reopen().await;
    let second = phone
        .auth
        .pair(&server.pairing_uri("carol").await, None)
        .await
        .unwrap();
    assert_eq!(phone.auth.device_id(), id_before, "the same device");
    assert_eq!(second.device_id, first.device_id);
    let devices = server.customer.list_devices("carol").await.unwrap().devices;
    let mut ids: Vec<&EnrollmentId> = devices.iter().map(|d| &d.enrollment_id).collect();
    ids.sort();
    let mut expected = vec![&second.enrollment_id, &tablet_enrollment.enrollment_id];
    expected.sort();
    assert_eq!(ids, expected, "the earlier enrollment was replaced");
    let replaced = devices
        .iter()
        .find(|d| d.enrollment_id == second.enrollment_id)
        .unwrap();
    assert!(replaced.primary, "it inherits its own primary flag");
    let status = server
        .customer
        .authentication(&waiting.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(
        status.state,
        tessera_protocol::authentication::AuthenticationState::Failed
    );
    approval_cycle(&server.customer, "carol", &phone, &second.enrollment_id).await;
}

/// The phone loses its device key (a key store that dropped it): after a restart its next
/// pairing makes a new one, and with it a new device id.
async fn lose_device_key(phone: TestDevice) -> TestDevice {
    use tessera_core::KeyStore;
    let before = phone.auth.device_id();
    let keys = tessera_core::SoftwareKeyStore::open(phone.state_dir().join("keys")).unwrap();
    keys.delete_key("tessera.device-key").unwrap();
    drop(keys);
    let phone = phone.reopen().await;
    assert_eq!(
        phone.auth.device_id(),
        before,
        "kept until the next pairing"
    );
    phone
}

/// Carol's phone pairs, loses its device key, and pairs again: the phone, then the first and
/// the second enrollment.
async fn paired_then_paired_with_a_new_key(
    server: &TestServer,
) -> (TestDevice, Enrollment, Enrollment) {
    server.user("carol").await;
    let phone = TestDevice::new().await;
    let first = phone
        .auth
        .pair(&server.pairing_uri("carol").await, None)
        .await
        .unwrap();
    let phone = lose_device_key(phone).await;
    let second = phone
        .auth
        .pair(&server.pairing_uri("carol").await, None)
        .await
        .unwrap();
    (phone, first, second)
}

/// The phone unpairs `first`: the server then lists `second` alone.
async fn unpaired_leaving(
    server: &TestServer,
    phone: &TestDevice,
    first: &Enrollment,
    second: &Enrollment,
) {
    phone
        .auth
        .remove_enrollment(&first.enrollment_id)
        .await
        .unwrap();
    let devices = server.customer.list_devices("carol").await.unwrap().devices;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].enrollment_id, second.enrollment_id);
}

async fn new_key_keeps(backend: Backend) {
    // The server replaces an earlier enrollment only for the same device key; the device must
    // not drop (and delete the keys of) one the server keeps.
    let server = TestServer::start(backend).await;
    let (phone, first, second) = paired_then_paired_with_a_new_key(&server).await;
    assert_ne!(
        second.device_id, first.device_id,
        "a new device key, a new id"
    );

    let mut on_server: Vec<EnrollmentId> = server
        .customer
        .list_devices("carol")
        .await
        .unwrap()
        .devices
        .into_iter()
        .map(|d| d.enrollment_id)
        .collect();
    on_server.sort();
    let mut local: Vec<EnrollmentId> = phone
        .auth
        .enrollments()
        .await
        .into_iter()
        .map(|e| e.enrollment_id)
        .collect();
    local.sort();
    let mut expected = vec![first.enrollment_id.clone(), second.enrollment_id.clone()];
    expected.sort();
    assert_eq!(on_server, expected, "the server keeps both");
    assert_eq!(local, expected, "and so does the device");

    // The first still signs: the device can unpair it, and the second stays.
    phone
        .auth
        .enrollment_status(&first.enrollment_id)
        .await
        .expect("the first enrollment's keys sign");
    unpaired_leaving(&server, &phone, &first, &second).await;
    let local = phone.auth.enrollments().await;
    assert_eq!(local.len(), 1);
    assert_eq!(local[0].enrollment_id, second.enrollment_id);
    approval_cycle(&server.customer, "carol", &phone, &second.enrollment_id).await;
}

async fn new_key_approved_keeps(backend: Backend) {
    // As above, with "verify new devices with the primary device": the phone's earlier
    // enrollment approves the pairing of its new device key, and the server adds a device
    // rather than replacing one; the device keeps both too.
    let server = TestServer::start(backend).await;
    with_policy(&server).await;
    let (phone, first, second) = paired_then_paired_with_a_new_key(&server).await;
    assert_eq!(second.status, EnrollmentState::PendingVerification);
    let request = the_only_request(&phone).await;
    assert_eq!(request.enrollment_id, first.enrollment_id);
    phone.auth.approve(&request, vec![], None).await.unwrap();
    assert_eq!(
        phone
            .auth
            .wait_for_verification(&second.enrollment_id, std::time::Duration::from_secs(10))
            .await
            .unwrap(),
        EnrollmentState::Active
    );
    let devices = server.customer.list_devices("carol").await.unwrap().devices;
    assert_eq!(devices.len(), 2, "a second device, not a replacement");
    let local = phone.auth.enrollments().await;
    assert_eq!(local.len(), 2, "{local:?}");
    assert!(local.iter().any(|e| e.enrollment_id == first.enrollment_id));
    unpaired_leaving(&server, &phone, &first, &second).await;
}

async fn with_policy(server: &TestServer) {
    tessera_server::admin::set_additional_device_policy(
        server.server.database(),
        &server.app.application_id,
        AdditionalDevicePolicy::VerifyWithPrimary,
    )
    .await
    .unwrap();
}

async fn the_only_request(device: &TestDevice) -> IncomingRequest {
    let mut requests = device.auth.pending_requests().await.unwrap();
    assert_eq!(requests.len(), 1, "{requests:?}");
    requests.remove(0)
}

async fn verification_prompt(backend: Backend) {
    let server = TestServer::start(backend).await;
    with_policy(&server).await;
    server.user("carol").await;
    let mut phone_config = device_config("Pixel 9");
    phone_config.device.name = Some("Carol's Pixel".into());
    let phone = TestDevice::with_config(phone_config.clone()).await;
    let primary = phone
        .auth
        .pair(&server.pairing_uri("carol").await, None)
        .await
        .unwrap();

    // A new device, whatever it calls itself, is announced as new and as what it will be.
    let mut iphone_config = device_config("iPhone 16");
    iphone_config.device.name = Some("Carol's iPhone".into());
    let iphone = TestDevice::with_config(iphone_config).await;
    let pending = iphone
        .auth
        .pair(&server.pairing_uri("carol").await, None)
        .await
        .unwrap();
    assert_eq!(pending.status, EnrollmentState::PendingVerification);
    let request = the_only_request(&phone).await;
    assert_eq!(
        request.message,
        "Add Carol's iPhone (new) as a second device"
    );
    phone.auth.deny(&request, false).await.unwrap();

    // A device naming itself exactly like the phone is still "new", and approving it adds a
    // device: the phone's own enrollment stays, and stays primary.
    let lookalike = TestDevice::with_config(phone_config).await;
    let pending = lookalike
        .auth
        .pair(&server.pairing_uri("carol").await, None)
        .await
        .unwrap();
    let request = the_only_request(&phone).await;
    assert_eq!(
        request.message,
        "Add Carol's Pixel (new) as a second device"
    );
    phone.auth.approve(&request, vec![], None).await.unwrap();
    assert_eq!(
        lookalike
            .auth
            .wait_for_verification(&pending.enrollment_id, std::time::Duration::from_secs(10))
            .await
            .unwrap(),
        EnrollmentState::Active
    );
    let devices = server.customer.list_devices("carol").await.unwrap().devices;
    assert_eq!(devices.len(), 2);
    let phone_record = devices
        .iter()
        .find(|d| d.enrollment_id == primary.enrollment_id)
        .expect("the phone's enrollment survives the approval");
    assert!(phone_record.primary);

    // A third device is announced as the third.
    let laptop = TestDevice::with_config(device_config("ThinkPad X1")).await;
    laptop
        .auth
        .pair(&server.pairing_uri("carol").await, None)
        .await
        .unwrap();
    let request = the_only_request(&phone).await;
    assert_eq!(request.message, "Add ThinkPad X1 (new) as a third device");
    phone.auth.deny(&request, false).await.unwrap();

    // The phone itself pairing again (same device key) is told apart: it replaces itself.
    let again = phone
        .auth
        .pair(&server.pairing_uri("carol").await, None)
        .await
        .unwrap();
    let request = phone
        .auth
        .pending_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.enrollment_id == primary.enrollment_id)
        .expect("asked on its earlier enrollment");
    assert_eq!(
        request.message,
        "Pair this device again (replaces its current pairing)"
    );
    phone.auth.approve(&request, vec![], None).await.unwrap();
    assert_eq!(
        phone
            .auth
            .wait_for_verification(&again.enrollment_id, std::time::Duration::from_secs(10))
            .await
            .unwrap(),
        EnrollmentState::Active
    );
    let devices = server.customer.list_devices("carol").await.unwrap().devices;
    assert_eq!(
        devices.len(),
        2,
        "the phone replaced itself, the lookalike stays"
    );
    assert!(
        devices
            .iter()
            .any(|d| d.enrollment_id == again.enrollment_id && d.primary)
    );
}

async fn shared_phone_one_unpaired(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    server.user("bob").await;
    let phone = TestDevice::new().await;
    let alice = phone
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    let bob = phone
        .auth
        .pair(&server.pairing_uri("bob").await, None)
        .await
        .unwrap();
    let for_bob = server
        .customer
        .create_authentication("bob", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    // The backend unpairs Alice (listed first on the phone).
    server
        .customer
        .remove_device("alice", &alice.enrollment_id)
        .await
        .unwrap();

    let requests = phone.auth.pending_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].request_id, for_bob.authentication_id);
    assert_eq!(requests[0].enrollment_id, bob.enrollment_id);
    let enrollments = phone.auth.enrollments().await;
    let marked = enrollments
        .iter()
        .find(|e| e.enrollment_id == alice.enrollment_id)
        .expect("kept for the app to show");
    assert!(marked.removed);
    assert!(
        !enrollments
            .iter()
            .find(|e| e.enrollment_id == bob.enrollment_id)
            .unwrap()
            .removed
    );
    // Polling the dead one directly says so; Bob's requests still come, and he still answers.
    assert_eq!(
        phone
            .auth
            .wait_for_requests(&alice.enrollment_id, std::time::Duration::ZERO)
            .await
            .unwrap_err(),
        CoreError::EnrollmentRemoved
    );
    phone
        .auth
        .approve(&requests[0], vec![], None)
        .await
        .unwrap();
    // The mark survives a restart, and the app removes the enrollment.
    let phone = phone.reopen().await;
    assert!(phone.auth.pending_requests().await.unwrap().is_empty());
    assert!(
        phone
            .auth
            .enrollments()
            .await
            .iter()
            .any(|e| e.enrollment_id == alice.enrollment_id && e.removed)
    );
    phone
        .auth
        .remove_enrollment(&alice.enrollment_id)
        .await
        .unwrap();
    assert_eq!(phone.auth.enrollments().await.len(), 1);
}
