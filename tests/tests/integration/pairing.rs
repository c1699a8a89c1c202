//! End to end: device pairing between the real device core and the real server, over HTTP on
//! loopback, on SQLite and (with `DATABASE_URL`) PostgreSQL.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tessera_core::CoreError;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::pairing::{MobilePayload, PairingUri};
use tessera_tests::{TestDevice, TestServer, on_each_backend};

on_each_backend! {
    direct_pairing_with_uri_and_with_code => direct_pairing;
    relay_pairing_through_the_customer_backend => relay_pairing;
    used_wrong_and_malformed_codes_are_refused_alike => codes_refused_alike;
    tampered_server_payload_is_refused_by_the_core => tampered_server_payload;
    tampered_mobile_payload_is_refused_by_the_server => tampered_mobile_payload;
    device_state_survives_an_app_restart => device_restart;
    server_restart_keeps_enrollments => server_restart;
    two_users_on_one_device => two_users_one_device;
    racing_devices_with_one_code_exactly_one_wins => racing_devices_one_code;
    concurrent_pairings_on_one_device_keep_both => concurrent_pairings_one_device;
    re_pairing_the_same_user_replaces_the_enrollment => re_pairing_replaces;
    unpairing_from_the_device_and_from_the_backend => unpairing;
}

fn server_code(err: &CoreError) -> Option<ErrorCode> {
    match err {
        CoreError::Server { code, .. } => Some(*code),
        _ => None,
    }
}

async fn direct_pairing(backend: tessera_tests::Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice@example.com").await;
    let device = TestDevice::new().await;

    // With the URI from the QR code.
    let uri = server.pairing_uri("alice@example.com").await;
    let enrollment = device.auth.pair(&uri, None).await.expect("pair with URI");
    assert_eq!(enrollment.user_id.as_str(), "alice@example.com");
    assert_eq!(enrollment.application.id, server.app.application_id);
    assert_eq!(enrollment.device_id, device.auth.device_id());
    assert_eq!(enrollment.server.as_str(), server.base_url);

    let devices = server
        .customer
        .list_devices("alice@example.com")
        .await
        .unwrap()
        .devices;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].enrollment_id, enrollment.enrollment_id);
    assert_eq!(devices[0].device_id, device.auth.device_id());
    assert_eq!(devices[0].device.model, "Pixel 8");
    assert_eq!(devices[0].signals.rooted, Some(false));
    assert!(devices[0].primary, "the first device is primary");
    assert_eq!(devices[0].push_provider, "none");

    // With a typed code and the server URL, on a second device.
    server.user("carol").await;
    let typed = server
        .customer
        .start_pairing("carol", Some(300))
        .await
        .unwrap();
    let other = TestDevice::new().await;
    let lower = typed.pairing_code.to_lowercase().replace('-', " ");
    let e2 = other
        .auth
        .pair(&lower, Some(&server.base_url))
        .await
        .expect("pair with a typed code");
    assert_eq!(e2.user_id.as_str(), "carol");

    // A code alone, without a server, is an input error; a URI and a different server too.
    let code_only = server.customer.start_pairing("carol", None).await.unwrap();
    let err = other
        .auth
        .pair(&code_only.pairing_code, None)
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::InvalidInput(_)), "{err:?}");
    let uri = server.pairing_uri("carol").await;
    let err = other
        .auth
        .pair(&uri, Some("http://127.0.0.1:1"))
        .await
        .unwrap_err();
    assert!(!matches!(err, CoreError::Server { .. }), "{err:?}");
    assert_eq!(device.auth.enrollments().await.len(), 1);
}

async fn relay_pairing(backend: tessera_tests::Backend) {
    let server = TestServer::start(backend).await;
    server.user("bob").await;
    let device = TestDevice::new().await;

    let mobile_payload = device
        .auth
        .create_mobile_payload(&server.base_url)
        .await
        .unwrap();
    // Nothing is enrolled until the server payload comes back.
    assert!(device.auth.enrollments().await.is_empty());
    // The app may restart between the two halves.
    let device = device.reopen().await;

    let relayed = server
        .customer
        .relay_pairing("bob", &mobile_payload)
        .await
        .unwrap();
    assert_eq!(relayed.device.user_id.as_str(), "bob");
    assert_eq!(relayed.device.device_id, device.auth.device_id());

    let enrollment = device
        .auth
        .complete_relay_pairing(&relayed.server_payload)
        .await
        .expect("complete relay pairing");
    assert_eq!(enrollment.enrollment_id, relayed.device.enrollment_id);
    assert_eq!(enrollment.user_id.as_str(), "bob");
    assert_eq!(device.auth.enrollments().await.len(), 1);

    // The same server payload again does not create a second enrollment.
    let again = device
        .auth
        .complete_relay_pairing(&relayed.server_payload)
        .await;
    assert!(again.is_err() || again.unwrap().enrollment_id == enrollment.enrollment_id);
    assert_eq!(device.auth.enrollments().await.len(), 1);

    // The same mobile payload relayed for another user is a replay.
    server.user("mallory").await;
    let err = server
        .customer
        .relay_pairing("mallory", &mobile_payload)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ReplayedMessage));
    assert!(
        server
            .customer
            .list_devices("mallory")
            .await
            .unwrap()
            .devices
            .is_empty()
    );

    // An unknown user.
    let fresh = device
        .auth
        .create_mobile_payload(&server.base_url)
        .await
        .unwrap();
    let err = server
        .customer
        .relay_pairing("nobody", &fresh)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UserNotFound));

    // The device-signed call works with the relayed enrollment.
    let status = device
        .auth
        .enrollment_status(&enrollment.enrollment_id)
        .await
        .unwrap();
    assert_eq!(
        status.status,
        tessera_protocol::api::EnrollmentState::Active
    );
}

async fn codes_refused_alike(backend: tessera_tests::Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let first = TestDevice::new().await;
    let uri = server.pairing_uri("alice").await;
    first.auth.pair(&uri, None).await.unwrap();

    let second = TestDevice::new().await;
    // Used code.
    let used = second.auth.pair(&uri, None).await.unwrap_err();
    // Wrong (well-formed, never issued) code.
    let parsed = PairingUri::parse(&uri).unwrap();
    let wrong = second
        .auth
        .pair("ZZZZ-ZZZZ-ZZZZ", Some(parsed.server.as_str()))
        .await
        .unwrap_err();
    for err in [&used, &wrong] {
        assert_eq!(
            server_code(err),
            Some(ErrorCode::InvalidPairingCode),
            "{err:?}"
        );
    }
    // The same message: nothing tells a used code from a wrong one.
    assert_eq!(used.to_string(), wrong.to_string());
    assert!(!used.to_string().contains(parsed.code.normalized()));
    assert!(second.auth.enrollments().await.is_empty());
    // A malformed code never reaches the server.
    let err = second
        .auth
        .pair("not-a-code", Some(&server.base_url))
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::InvalidInput(_)), "{err:?}");
}

async fn tampered_server_payload(backend: tessera_tests::Backend) {
    let server = TestServer::start(backend).await;
    server.user("bob").await;
    let device = TestDevice::new().await;
    let mobile_payload = device
        .auth
        .create_mobile_payload(&server.base_url)
        .await
        .unwrap();
    let relayed = server
        .customer
        .relay_pairing("bob", &mobile_payload)
        .await
        .unwrap();
    let jws = relayed.server_payload.clone();
    let parts: Vec<&str> = jws.split('.').collect();

    // Change the user inside the signed reply (a backend trying to pair the device to someone else).
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["user_id"] = "mallory".into();
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap()),
        parts[2]
    );
    // Flip one character of the signature.
    let mut sig = parts[2].to_string();
    let c = if sig.starts_with('A') { "B" } else { "A" };
    sig.replace_range(0..1, c);
    let bad_sig = format!("{}.{}.{}", parts[0], parts[1], sig);
    // Re-sign with a key of the attacker's own, claiming it is the server's.
    let attacker = tessera_protocol::envelope::SoftwareSigningKey::generate();
    let mut forged_reply = payload.clone();
    forged_reply["user_id"] = "bob".into();
    forged_reply["server_keys"] = serde_json::json!({"keys": [attacker.public_jwk()]});
    let forged = tessera_protocol::envelope::sign(
        tessera_protocol::envelope::MessageType::PairingReply,
        &forged_reply,
        &attacker,
    )
    .unwrap();

    for (case, tampered) in [
        ("user swapped", swapped),
        ("signature flipped", bad_sig),
        ("forged with attacker key", forged),
        ("garbage", "not a payload".to_string()),
    ] {
        let err = device
            .auth
            .complete_relay_pairing(&tampered)
            .await
            .expect_err(case);
        assert!(!matches!(err, CoreError::Server { .. }), "{case}: {err:?}");
        assert!(
            device.auth.enrollments().await.is_empty(),
            "{case}: nothing enrolled"
        );
    }
    // The genuine payload still completes afterwards.
    device
        .auth
        .complete_relay_pairing(&relayed.server_payload)
        .await
        .unwrap();
    assert_eq!(device.auth.enrollments().await.len(), 1);
}

async fn tampered_mobile_payload(backend: tessera_tests::Backend) {
    let server = TestServer::start(backend).await;
    server.user("bob").await;
    let device = TestDevice::new().await;
    let genuine = device
        .auth
        .create_mobile_payload(&server.base_url)
        .await
        .unwrap();
    let decoded = MobilePayload::decode(&genuine).unwrap();
    let reg_parts: Vec<&str> = decoded.registration.split('.').collect();

    let mut reg_payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(reg_parts[1]).unwrap()).unwrap();
    reg_payload["device"]["model"] = "Evil Phone".into();
    let altered_registration = format!(
        "{}.{}.{}",
        reg_parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&reg_payload).unwrap()),
        reg_parts[2]
    );
    let other_device = TestDevice::new().await;
    let other = MobilePayload::decode(
        &other_device
            .auth
            .create_mobile_payload(&server.base_url)
            .await
            .unwrap(),
    )
    .unwrap();

    let variants = [
        (
            "registration altered",
            MobilePayload {
                registration: altered_registration,
                ..decoded.clone()
            },
        ),
        (
            "proof from another device",
            MobilePayload {
                user_verification_proof: other.user_verification_proof.clone(),
                ..decoded.clone()
            },
        ),
        (
            "proof swapped for the registration",
            MobilePayload {
                user_verification_proof: decoded.registration.clone(),
                ..decoded.clone()
            },
        ),
    ];
    for (case, variant) in variants {
        let err = server
            .customer
            .relay_pairing("bob", &variant.encode().unwrap())
            .await
            .expect_err(case);
        assert_eq!(
            err.code(),
            Some(ErrorCode::InvalidMobilePayload),
            "{case}: {err:?}"
        );
    }
    for garbage in ["", "!!!", &URL_SAFE_NO_PAD.encode(b"{\"v\":1}")] {
        let err = server
            .customer
            .relay_pairing("bob", garbage)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err.code(),
                Some(ErrorCode::InvalidMobilePayload | ErrorCode::InvalidRequest)
            ),
            "{err:?}"
        );
    }
    // Nothing was written.
    assert!(
        server
            .customer
            .list_devices("bob")
            .await
            .unwrap()
            .devices
            .is_empty()
    );
    // The genuine payload still works.
    server
        .customer
        .relay_pairing("bob", &genuine)
        .await
        .unwrap();
}

async fn device_restart(backend: tessera_tests::Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let device = TestDevice::new().await;
    let device_id = device.auth.device_id();
    let e = device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();

    let device = device.reopen().await;
    assert_eq!(device.auth.device_id(), device_id);
    let list = device.auth.enrollments().await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].enrollment_id, e.enrollment_id);
    // The reloaded keys still sign: a device-authenticated call succeeds.
    device
        .auth
        .enrollment_status(&e.enrollment_id)
        .await
        .unwrap();

    // The state on disk is encrypted: no user id, no enrollment id in clear.
    for entry in walk(&device.state_dir()) {
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        if entry.to_string_lossy().contains("state") {
            assert!(!text.contains("alice"), "{entry:?} holds plaintext");
            assert!(
                !text.contains(e.enrollment_id.as_str()),
                "{entry:?} holds plaintext"
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

async fn server_restart(backend: tessera_tests::Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let device = TestDevice::new().await;
    let e = device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();

    let server = server.restart().await;
    let devices = server.customer.list_devices("alice").await.unwrap().devices;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].enrollment_id, e.enrollment_id);
    // The server kept its signing keys: the device's pinned keys still verify a new pairing.
    server.user("alice2").await;
    device
        .auth
        .pair(&server.pairing_uri("alice2").await, None)
        .await
        .unwrap();
    device
        .auth
        .enrollment_status(&e.enrollment_id)
        .await
        .unwrap();
}

async fn two_users_one_device(backend: tessera_tests::Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    server.user("bob").await;
    let device = TestDevice::new().await;
    let a = device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    let b = device
        .auth
        .pair(&server.pairing_uri("bob").await, None)
        .await
        .unwrap();
    assert_ne!(a.enrollment_id, b.enrollment_id);
    let mut users: Vec<String> = device
        .auth
        .enrollments()
        .await
        .into_iter()
        .map(|e| e.user_id.as_str().to_string())
        .collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
    for user in ["alice", "bob"] {
        let d = server.customer.list_devices(user).await.unwrap().devices;
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].device_id, device.auth.device_id());
    }
    // A second server on the same device.
    let other = TestServer::start(tessera_tests::Backend::Sqlite).await;
    other.user("alice").await;
    let c = device
        .auth
        .pair(&other.pairing_uri("alice").await, None)
        .await
        .unwrap();
    assert_eq!(c.server.as_str(), other.base_url);
    assert_eq!(device.auth.enrollments().await.len(), 3);
}

async fn racing_devices_one_code(backend: tessera_tests::Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let uri = server.pairing_uri("alice").await;
    let mut devices = Vec::new();
    for _ in 0..6 {
        devices.push(TestDevice::new().await);
    }
    let mut tasks = Vec::new();
    for d in &devices {
        let auth = Arc::clone(&d.auth);
        let uri = uri.clone();
        tasks.push(tokio::spawn(async move { auth.pair(&uri, None).await }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(e) => assert_eq!(
                server_code(&e),
                Some(ErrorCode::InvalidPairingCode),
                "{e:?}"
            ),
        }
    }
    assert_eq!(wins, 1, "exactly one device pairs");
    assert_eq!(
        server
            .customer
            .list_devices("alice")
            .await
            .unwrap()
            .devices
            .len(),
        1
    );
    let enrolled: usize = {
        let mut n = 0;
        for d in &devices {
            n += d.auth.enrollments().await.len();
        }
        n
    };
    assert_eq!(enrolled, 1, "losers hold no enrollment");
}

async fn concurrent_pairings_one_device(backend: tessera_tests::Backend) {
    let server = TestServer::start(backend).await;
    let device = TestDevice::new().await;
    let mut uris = Vec::new();
    for i in 0..5 {
        let user = server.user(&format!("user{i}")).await;
        uris.push(server.pairing_uri(&user).await);
    }
    // Plus the same code twice at once.
    uris.push(uris[0].clone());
    let mut tasks = Vec::new();
    for uri in uris {
        let auth = Arc::clone(&device.auth);
        tasks.push(tokio::spawn(async move { auth.pair(&uri, None).await }));
    }
    let mut ok = 0;
    let mut refused = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => refused.push(format!("{e:?}")),
        }
    }
    assert!(
        ok >= 5,
        "every distinct code pairs ({ok}); refused: {refused:?}"
    );
    let device = device.reopen().await;
    let mut users: Vec<String> = device
        .auth
        .enrollments()
        .await
        .into_iter()
        .map(|e| e.user_id.as_str().to_string())
        .collect();
    users.sort();
    assert_eq!(
        users,
        ["user0", "user1", "user2", "user3", "user4"],
        "no enrollment lost or doubled"
    );
}

async fn re_pairing_replaces(backend: tessera_tests::Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let device = TestDevice::new().await;
    let first = device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    let second = device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    assert_ne!(first.enrollment_id, second.enrollment_id);
    let list = device.auth.enrollments().await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].enrollment_id, second.enrollment_id);
    let devices = server.customer.list_devices("alice").await.unwrap().devices;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].enrollment_id, second.enrollment_id);
}

async fn unpairing(backend: tessera_tests::Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    server.user("bob").await;
    let device = TestDevice::new().await;
    let a = device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    let b = device
        .auth
        .pair(&server.pairing_uri("bob").await, None)
        .await
        .unwrap();

    // The device unpairs itself.
    device
        .auth
        .remove_enrollment(&a.enrollment_id)
        .await
        .unwrap();
    assert!(
        server
            .customer
            .list_devices("alice")
            .await
            .unwrap()
            .devices
            .is_empty()
    );
    assert_eq!(device.auth.enrollments().await.len(), 1);

    // The backend unpairs bob's device: the device learns it on its next signed call.
    server
        .customer
        .remove_device("bob", &b.enrollment_id)
        .await
        .unwrap();
    let err = device
        .auth
        .enrollment_status(&b.enrollment_id)
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(ErrorCode::Unauthorized), "{err:?}");
    let err = server
        .customer
        .remove_device("bob", &b.enrollment_id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DeviceNotFound));
    // Removing locally still works when the server no longer knows the enrollment.
    device
        .auth
        .remove_enrollment(&b.enrollment_id)
        .await
        .unwrap();
    assert!(device.auth.enrollments().await.is_empty());
}
