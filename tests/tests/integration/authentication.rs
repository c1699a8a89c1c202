//! End to end: authentications (approval, transaction with dynamic parameters, silent
//! verification) from the customer API to the device core and back, on SQLite and PostgreSQL.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tessera_core::{CoreError, PushOutcome};
use tessera_protocol::authentication::{
    AuthenticationKind, AuthenticationResponse, AuthenticationState, Decision,
};
use tessera_protocol::envelope::{self, MessageType};
use tessera_protocol::error::{ErrorBody, ErrorCode};
use tessera_protocol::time::now;
use tessera_tests::{Backend, RawDevice, TestDevice, TestServer, ask, on_each_backend, payment};

on_each_backend! {
    approval_swipe_and_biometrics => approvals;
    transaction_shows_and_signs_exactly_the_fields => transaction;
    silent_verification_is_answered_without_the_user => silent;
    deny_and_report_fraud => deny;
    tampered_requests_are_refused_by_the_core => tampered_request;
    forged_replayed_and_mismatched_answers_are_refused => forged_answers;
    expired_requests_are_refused_on_both_sides => expired;
    one_outcome_approve_then_deny_and_idempotent_repeats => one_outcome;
    racing_answers_record_exactly_one_outcome => racing;
    poll_only_device_long_polls => long_poll;
    number_matching => number_matching;
    push_bombing_is_capped => push_bombing;
    the_primary_device_is_asked_by_default_and_can_change => primary_device;
}

async fn paired(backend: Backend, user: &str) -> (TestServer, TestDevice) {
    let server = TestServer::start(backend).await;
    let device = server.paired_user(user).await;
    (server, device)
}

async fn only_request(device: &TestDevice) -> tessera_core::IncomingRequest {
    let mut pending = device.auth.pending_requests().await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    pending.remove(0)
}

fn payload<T: serde::de::DeserializeOwned>(jws: &str) -> T {
    envelope::unverified_payload(jws).unwrap()
}

async fn approvals(backend: Backend) {
    let (server, device) = paired(backend, "alice").await;
    let created = server
        .customer
        .create_authentication(
            "alice",
            &tessera_protocol::api::CreateAuthenticationRequest {
                accessing_ip: Some("203.0.113.7".into()),
                accessing_location: Some("Berlin, DE".into()),
                ..ask(AuthenticationKind::Approval)
            },
        )
        .await
        .unwrap();
    assert_eq!(created.state, AuthenticationState::Pending);
    let request = only_request(&device).await;
    assert_eq!(request.message, "Sign in to End-to-end Test App?");
    assert_eq!(request.context.ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(request.context.location.as_deref(), Some("Berlin, DE"));
    assert_eq!(request.user_id.as_str(), "alice");
    let recorded = device.auth.approve(&request, vec![], None).await.unwrap();
    assert_eq!(recorded.state, AuthenticationState::Approved);

    let status = server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);
    assert_eq!(status.decision, Some(Decision::Approve));
    let a = &status.attributes;
    assert_eq!(a["pingid.authentication.type"], "MOBILE_APP_SWIPE");
    assert_eq!(
        a["pingid.authentication.authenticating.device.id"],
        device.auth.device_id().as_str()
    );
    assert_eq!(
        a["pingid.authentication.authenticating.device.model"],
        "Pixel 8"
    );
    assert_eq!(
        a["pingid.authentication.authenticating.device.is.rooted"],
        false
    );
    assert_eq!(
        a["pingid.authentication.authenticating.device.is.locked"],
        true
    );
    assert_eq!(
        a["pingid.authentication.authenticating.device.ip"],
        "127.0.0.1"
    );
    assert_eq!(
        a["pingid.authentication.accessing.device.ip"],
        "203.0.113.7"
    );

    // The relying party can verify the device's answer itself with the device's key.
    let signed = status.signed_response.unwrap();
    let response: AuthenticationResponse = payload(&signed);
    assert_eq!(response.request_id, created.authentication_id);
    assert_eq!(response.decision, Decision::Approve);

    // Biometrics required: a swipe is refused by the core, a fingerprint approves and is
    // signed with the user-verification key.
    let created = server
        .customer
        .create_authentication(
            "alice",
            &tessera_protocol::api::CreateAuthenticationRequest {
                require_user_verification: true,
                ..ask(AuthenticationKind::Approval)
            },
        )
        .await
        .unwrap();
    let request = only_request(&device).await;
    assert!(request.require_user_verification);
    let err = device
        .auth
        .approve(&request, vec![], None)
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::InvalidInput(_)), "{err:?}");
    device
        .auth
        .approve(&request, vec!["fpt".into()], None)
        .await
        .unwrap();
    let status = server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .unwrap();
    // A software key store's user-verification key is not proven to need the user: the
    // biometric claim is reported apart, as unverified (attestation.rs covers proven keys).
    assert_eq!(
        status.attributes["pingid.authentication.type"],
        "MOBILE_APP_SWIPE"
    );
    assert_eq!(
        status.attributes["pingid.authentication.unverified.type"],
        "MOBILE_APP_BIOMETRICS"
    );
    // Swipe answers are signed with the possession key, biometric ones with the other key.
    let biometric_kid = envelope::inspect(status.signed_response.as_deref().unwrap())
        .unwrap()
        .kid;
    let swipe_kid = envelope::inspect(&signed).unwrap().kid;
    assert_ne!(biometric_kid, swipe_kid);
}

async fn transaction(backend: Backend) {
    let (server, device) = paired(backend, "alice").await;
    let created = server
        .customer
        .create_authentication("alice", &payment())
        .await
        .unwrap();
    let request = only_request(&device).await;
    assert_eq!(request.kind, AuthenticationKind::Transaction);
    assert_eq!(request.message, "Pay 120.00 EUR to ACME GmbH?");
    let shown: Vec<(String, String)> = request
        .fields
        .iter()
        .map(|f| (f.label.clone(), f.value.clone()))
        .collect();
    assert_eq!(
        shown,
        [
            ("Amount".to_string(), "120.00 EUR".to_string()),
            ("Payee".to_string(), "ACME GmbH".to_string()),
            (
                "IBAN".to_string(),
                "DE89 3704 0044 0532 0130 00".to_string()
            ),
        ],
        "exactly the fields, in order; the hidden reference is not shown"
    );
    device
        .auth
        .approve(&request, vec!["face".into()], None)
        .await
        .unwrap();
    let status = server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);
    // The relying party recomputes the digest of what it asked for and finds it in the answer.
    let asked = tessera_protocol::authentication::DynamicParameters {
        message: "Pay 120.00 EUR to ACME GmbH?".into(),
        fields: payment().fields,
        hidden_fields: payment().hidden_fields,
    };
    let response: AuthenticationResponse = payload(status.signed_response.as_deref().unwrap());
    assert_eq!(response.parameters_digest, asked.digest().unwrap());
    let mut other = asked.clone();
    other.fields[0].value = "1200.00 EUR".into();
    assert_ne!(response.parameters_digest, other.digest().unwrap());

    // A transaction needs a message and fields.
    let err = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Transaction))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest));
}

async fn silent(backend: Backend) {
    let (server, device) = paired(backend, "alice").await;
    // Delivered by push: answered inside handle_push, reported as an event.
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Silent))
        .await
        .unwrap();
    let outcome = device
        .auth
        .handle_push(&created.signed_request)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        PushOutcome::SilentVerificationAnswered {
            request_id: created.authentication_id.clone(),
            enrollment_id: created.enrollment_id.clone(),
        }
    );
    let status = server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);
    assert_eq!(
        status.attributes["pingid.authentication.type"],
        "POLICY_APPROVE"
    );
    // Pulled: answered on the way, never shown to the app.
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Silent))
        .await
        .unwrap();
    assert!(device.auth.pending_requests().await.unwrap().is_empty());
    let status = server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);
    // By id only (a push too large for the provider).
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Silent))
        .await
        .unwrap();
    let hint = serde_json::json!({"request_id": created.authentication_id, "enrollment_id": created.enrollment_id}).to_string();
    assert!(matches!(
        device.auth.handle_push(&hint).await.unwrap(),
        PushOutcome::SilentVerificationAnswered { .. }
    ));
    // A silent verification asks nothing of the user.
    let err = server
        .customer
        .create_authentication(
            "alice",
            &tessera_protocol::api::CreateAuthenticationRequest {
                number_matching: Some(tessera_protocol::authentication::NumberMatching::Choice),
                ..ask(AuthenticationKind::Silent)
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest));
}

async fn deny(backend: Backend) {
    let (server, device) = paired(backend, "alice").await;
    for (fraud, decision) in [(false, Decision::Deny), (true, Decision::ReportFraud)] {
        let created = server
            .customer
            .create_authentication("alice", &ask(AuthenticationKind::Approval))
            .await
            .unwrap();
        let outcome = device
            .auth
            .handle_push(&serde_json::json!({"request": created.signed_request}).to_string())
            .await
            .unwrap();
        let PushOutcome::Request(request) = outcome else {
            panic!("{outcome:?}")
        };
        let recorded = device.auth.deny(&request, fraud).await.unwrap();
        assert_eq!(recorded.state, AuthenticationState::Denied);
        let status = server
            .customer
            .authentication(&created.authentication_id, 0)
            .await
            .unwrap();
        assert_eq!(
            (status.state, status.decision),
            (AuthenticationState::Denied, Some(decision))
        );
    }
}

async fn tampered_request(backend: Backend) {
    let (server, device) = paired(backend, "alice").await;
    let created = server
        .customer
        .create_authentication("alice", &payment())
        .await
        .unwrap();
    let parts: Vec<&str> = created.signed_request.split('.').collect();
    let mut body: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    // Anywhere between the server and the device: the amount, the payee, a hidden field, the digest.
    let mut variants = Vec::new();
    for (pointer, value) in [
        ("/parameters/fields/0/value", "12000.00 EUR"),
        ("/parameters/fields/1/value", "EVIL Ltd"),
        ("/parameters/hidden_fields/0/value", "order-666"),
        ("/parameters/message", "Pay 1 EUR?"),
    ] {
        let mut b = body.clone();
        *b.pointer_mut(pointer).unwrap() = value.into();
        variants.push(format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&b).unwrap()),
            parts[2]
        ));
    }
    // Re-signed by an attacker with consistent digest: not a pinned key.
    let attacker = tessera_protocol::envelope::SoftwareSigningKey::generate();
    *body.pointer_mut("/parameters/fields/0/value").unwrap() = "12000.00 EUR".into();
    let params: tessera_protocol::authentication::DynamicParameters =
        serde_json::from_value(body["parameters"].clone()).unwrap();
    body["parameters_digest"] = serde_json::to_value(params.digest().unwrap()).unwrap();
    variants.push(envelope::sign(MessageType::AuthenticationRequest, &body, &attacker).unwrap());
    for tampered in variants {
        let err = device.auth.handle_push(&tampered).await.unwrap_err();
        assert!(
            matches!(
                err,
                CoreError::UntrustedServerKey | CoreError::ReplyMismatch(_)
            ),
            "{err:?}"
        );
    }
    // Nothing was answered.
    let status = server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Pending);
}

async fn post_response(server: &TestServer, id: &str, jws: &str) -> (u16, Option<ErrorCode>) {
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1/device/authentications/{id}/response",
            server.base_url
        ))
        .json(&serde_json::json!({"response": jws}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status == 200 {
        (status, None)
    } else {
        (
            status,
            Some(r.json::<ErrorBody>().await.unwrap().error.code),
        )
    }
}

fn answer(
    request: &tessera_protocol::authentication::AuthenticationRequest,
) -> AuthenticationResponse {
    AuthenticationResponse {
        v: 1,
        request_id: request.request_id.clone(),
        enrollment_id: request.enrollment_id.clone(),
        request_nonce: request.nonce.clone(),
        decision: Decision::Approve,
        parameters_digest: request.parameters_digest,
        selected_number: None,
        amr: vec![],
        signals: Default::default(),
        location: None,
        device: None,
        issued_at: now(),
        app_attest_assertion: None,
    }
}

async fn forged_answers(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    server.user("bob").await;
    let alice = RawDevice::new();
    let bob = RawDevice::new();
    alice.pair(&server.pairing_uri("alice").await).await;
    let bob_enrollment = bob
        .pair(&server.pairing_uri("bob").await)
        .await
        .enrollment_id;
    let first = server
        .customer
        .create_authentication("alice", &payment())
        .await
        .unwrap();
    let request: tessera_protocol::authentication::AuthenticationRequest =
        payload(&first.signed_request);
    let id = first.authentication_id.to_string();
    let sign = |r: &AuthenticationResponse,
                key: &tessera_protocol::envelope::SoftwareSigningKey| {
        envelope::sign(MessageType::AuthenticationResponse, r, key).unwrap()
    };

    // Signed by another device (bob's), or another user's key.
    assert_eq!(
        post_response(&server, &id, &sign(&answer(&request), &bob.possession)).await,
        (400, Some(ErrorCode::InvalidSignature))
    );
    // Naming bob's enrollment: read beside the authentication, it is still alice's device
    // that must have signed, and the response must name it.
    let mut named_bob = answer(&request);
    named_bob.enrollment_id = bob_enrollment.clone();
    assert_eq!(
        post_response(&server, &id, &sign(&named_bob, &bob.possession)).await,
        (400, Some(ErrorCode::InvalidSignature))
    );
    assert_eq!(
        post_response(&server, &id, &sign(&named_bob, &alice.possession)).await,
        (400, Some(ErrorCode::ResponseMismatch))
    );
    // Other parameters than the ones sent (a device showing 12000 EUR).
    let mut other = answer(&request);
    other.parameters_digest = tessera_protocol::canonical::Sha256Digest::of_bytes(b"12000 EUR");
    assert_eq!(
        post_response(&server, &id, &sign(&other, &alice.possession)).await,
        (400, Some(ErrorCode::ResponseMismatch))
    );
    // Another nonce.
    let mut other = answer(&request);
    other.request_nonce = "AAAAAAAAAAAAAAAAAAAAAA".into();
    assert_eq!(
        post_response(&server, &id, &sign(&other, &alice.possession)).await,
        (400, Some(ErrorCode::ResponseMismatch))
    );
    // Not an RFC 8176 method.
    let mut other = answer(&request);
    other.amr = vec!["magic".into()];
    assert_eq!(
        post_response(&server, &id, &sign(&other, &alice.possession)).await,
        (400, Some(ErrorCode::ResponseMismatch))
    );
    // A location that cannot be.
    let mut other = answer(&request);
    other.location = Some(tessera_protocol::authentication::DeviceLocation {
        latitude: 91.0,
        longitude: 13.4,
        altitude: None,
        accuracy: None,
    });
    assert_eq!(
        post_response(&server, &id, &sign(&other, &alice.possession)).await,
        (400, Some(ErrorCode::ResponseMismatch))
    );
    // Stale.
    let mut other = answer(&request);
    other.issued_at = now() - 3600;
    assert_eq!(
        post_response(&server, &id, &sign(&other, &alice.possession)).await,
        (400, Some(ErrorCode::StaleMessage))
    );
    // The genuine answer.
    let approval = sign(&answer(&request), &alice.possession);
    assert_eq!(post_response(&server, &id, &approval).await, (200, None));

    // That old approval replayed for a new request.
    let second = server
        .customer
        .create_authentication("alice", &payment())
        .await
        .unwrap();
    assert_eq!(
        post_response(&server, second.authentication_id.as_str(), &approval).await,
        (400, Some(ErrorCode::ResponseMismatch))
    );
    // Bob's device answering alice's request with a response naming alice's enrollment.
    let second_request: tessera_protocol::authentication::AuthenticationRequest =
        payload(&second.signed_request);
    assert_eq!(
        post_response(
            &server,
            second.authentication_id.as_str(),
            &sign(&answer(&second_request), &bob.user_verification)
        )
        .await,
        (400, Some(ErrorCode::InvalidSignature))
    );
    // Requiring user verification: the possession key is not enough.
    let third = server
        .customer
        .create_authentication(
            "alice",
            &tessera_protocol::api::CreateAuthenticationRequest {
                require_user_verification: true,
                ..payment()
            },
        )
        .await
        .unwrap();
    let third_request: tessera_protocol::authentication::AuthenticationRequest =
        payload(&third.signed_request);
    let mut with_pin = answer(&third_request);
    with_pin.amr = vec!["pin".into()];
    assert_eq!(
        post_response(
            &server,
            third.authentication_id.as_str(),
            &sign(&with_pin, &alice.possession)
        )
        .await,
        (400, Some(ErrorCode::ResponseMismatch))
    );
    assert_eq!(
        post_response(
            &server,
            third.authentication_id.as_str(),
            &sign(&with_pin, &alice.user_verification)
        )
        .await,
        (200, None)
    );
    let status = server
        .customer
        .authentication(&second.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Pending);
}

async fn expired(backend: Backend) {
    let (server, device) = paired(backend, "alice").await;
    let created = server
        .customer
        .create_authentication(
            "alice",
            &tessera_protocol::api::CreateAuthenticationRequest {
                expires_in: Some(10),
                ..payment()
            },
        )
        .await
        .unwrap();
    let request = only_request(&device).await;
    // Time passes: age the request in the database.
    sqlx::query("UPDATE authentications SET expires_at = $1 WHERE id = $2")
        .bind(now() - 1)
        .bind(created.authentication_id.as_str())
        .execute(server.server.database().pool())
        .await
        .unwrap();
    let err = device
        .auth
        .approve(&request, vec![], None)
        .await
        .unwrap_err();
    assert_eq!(
        err.server_code(),
        Some(ErrorCode::AuthenticationExpired),
        "{err:?}"
    );
    let status = server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Expired);
    assert!(device.auth.pending_requests().await.unwrap().is_empty());
    // A late push of it still verifies on the device (its signed expiry is ahead), and answering
    // it is refused by the server all the same.
    let PushOutcome::Request(late) = device
        .auth
        .handle_push(&created.signed_request)
        .await
        .unwrap()
    else {
        panic!("expected a request")
    };
    let err = device.auth.deny(&late, false).await.unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::AuthenticationExpired));
}

async fn one_outcome(backend: Backend) {
    let (server, device) = paired(backend, "alice").await;
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    let request = only_request(&device).await;
    device.auth.approve(&request, vec![], None).await.unwrap();
    // The same answer again: fine.
    let again = device.auth.approve(&request, vec![], None).await.unwrap();
    assert_eq!(again.state, AuthenticationState::Approved);
    // A different second answer: refused.
    let err = device.auth.deny(&request, true).await.unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::AlreadyAnswered));
    let status = server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(status.decision, Some(Decision::Approve));
}

async fn racing(backend: Backend) {
    let (server, device) = paired(backend, "alice").await;
    for _ in 0..3 {
        let created = server
            .customer
            .create_authentication("alice", &ask(AuthenticationKind::Approval))
            .await
            .unwrap();
        let request = Arc::new(only_request(&device).await);
        let mut tasks = Vec::new();
        for i in 0..12 {
            let auth = Arc::clone(&device.auth);
            let request = Arc::clone(&request);
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    auth.approve(&request, vec![], None).await.map(|r| r.state)
                } else {
                    auth.deny(&request, false).await.map(|r| r.state)
                }
            }));
        }
        let mut states = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(s) => states.push(s),
                Err(e) => assert_eq!(e.server_code(), Some(ErrorCode::AlreadyAnswered), "{e:?}"),
            }
        }
        let status = server
            .customer
            .authentication(&created.authentication_id, 0)
            .await
            .unwrap();
        assert_ne!(status.state, AuthenticationState::Pending);
        assert!(!states.is_empty());
        assert!(
            states.iter().all(|s| *s == status.state),
            "every accepted answer agrees with the one recorded: {states:?} vs {:?}",
            status.state
        );
    }
}

async fn long_poll(backend: Backend) {
    let (server, device) = paired(backend, "alice").await;
    let enrollment = device.auth.enrollments().await.remove(0);
    let auth = Arc::clone(&device.auth);
    let id = enrollment.enrollment_id.clone();
    let poll = tokio::spawn(async move {
        auth.wait_for_requests(&id, std::time::Duration::from_secs(10))
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let created = server
        .customer
        .create_authentication("alice", &payment())
        .await
        .unwrap();
    let got = poll.await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].request_id, created.authentication_id);
    // The relying party long-polls the outcome while the device approves.
    let customer = server.customer.clone();
    let id = created.authentication_id.clone();
    let waiting = tokio::spawn(async move { customer.authentication(&id, 10).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    device.auth.approve(&got[0], vec![], None).await.unwrap();
    let status = waiting.await.unwrap().unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);
    // Nothing pending: the wait returns empty after its time.
    let started = std::time::Instant::now();
    let none = device
        .auth
        .wait_for_requests(&enrollment.enrollment_id, std::time::Duration::from_secs(1))
        .await
        .unwrap();
    assert!(none.is_empty());
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
}

async fn number_matching(backend: Backend) {
    let (server, device) = paired(backend, "alice").await;
    let created = server
        .customer
        .create_authentication(
            "alice",
            &tessera_protocol::api::CreateAuthenticationRequest {
                number_matching: Some(tessera_protocol::authentication::NumberMatching::Choice),
                ..ask(AuthenticationKind::Approval)
            },
        )
        .await
        .unwrap();
    let shown = created.number_to_show.expect("a number for the web page");
    let request = only_request(&device).await;
    let choices = request
        .number_choices
        .clone()
        .expect("choices on the device");
    assert_eq!(choices.len(), 3);
    assert!(choices.contains(&shown));
    // No number, or one that was not offered: the core refuses.
    assert!(matches!(
        device.auth.approve(&request, vec![], None).await,
        Err(CoreError::InvalidInput(_))
    ));
    assert!(matches!(
        device.auth.approve(&request, vec![], Some(5)).await,
        Err(CoreError::InvalidInput(_))
    ));
    // (An offered but wrong number ends the request: see `number_matching::`.)
    device
        .auth
        .approve(&request, vec![], Some(shown))
        .await
        .unwrap();
    let status = server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);
}

async fn push_bombing(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.max_pending_authentications_per_user = 3;
        c.max_recent_authentications_per_user = 5;
    })
    .await;
    server.user("alice").await;
    let device = TestDevice::new().await;
    device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    for _ in 0..3 {
        server
            .customer
            .create_authentication("alice", &ask(AuthenticationKind::Approval))
            .await
            .unwrap();
    }
    // A fourth outstanding request is refused with a clear error.
    let err = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooManyAuthentications));
    assert!(matches!(
        err,
        tessera_examples::customer::CustomerApiError::Api { status: 429, .. }
    ));
    // Silent verifications are not user-facing and not capped.
    server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Silent))
        .await
        .unwrap();
    // Answering one makes room for one more.
    let pending = device.auth.pending_requests().await.unwrap();
    assert_eq!(pending.len(), 3);
    device.auth.deny(&pending[0], false).await.unwrap();
    server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    // Five user-facing requests in ten minutes: the sixth is refused even with room.
    for r in device.auth.pending_requests().await.unwrap() {
        device.auth.deny(&r, false).await.unwrap();
    }
    server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    let err = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooManyAuthentications));
    // Another user is not affected.
    server.user("bob").await;
    let bob = TestDevice::new().await;
    bob.auth
        .pair(&server.pairing_uri("bob").await, None)
        .await
        .unwrap();
    server
        .customer
        .create_authentication("bob", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
}

async fn primary_device(backend: Backend) {
    let (server, phone) = paired(backend, "alice").await;
    let tablet = TestDevice::new().await;
    let tablet_enrollment = tablet
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    let devices = server.customer.list_devices("alice").await.unwrap().devices;
    assert_eq!(devices.iter().filter(|d| d.primary).count(), 1);
    assert!(
        !devices
            .iter()
            .find(|d| d.enrollment_id == tablet_enrollment.enrollment_id)
            .unwrap()
            .primary
    );

    // By default the primary device (the first paired) is asked.
    server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert_eq!(phone.auth.pending_requests().await.unwrap().len(), 1);
    assert!(tablet.auth.pending_requests().await.unwrap().is_empty());
    // A chosen device is asked instead.
    server
        .customer
        .create_authentication(
            "alice",
            &tessera_protocol::api::CreateAuthenticationRequest {
                enrollment_id: Some(tablet_enrollment.enrollment_id.clone()),
                ..ask(AuthenticationKind::Approval)
            },
        )
        .await
        .unwrap();
    assert_eq!(tablet.auth.pending_requests().await.unwrap().len(), 1);

    // The tablet becomes primary: exactly one primary, and new requests go there.
    let after = server
        .customer
        .set_primary("alice", &tablet_enrollment.enrollment_id)
        .await
        .unwrap()
        .devices;
    let primaries: Vec<_> = after
        .iter()
        .filter(|d| d.primary)
        .map(|d| d.enrollment_id.clone())
        .collect();
    assert_eq!(
        primaries,
        std::slice::from_ref(&tablet_enrollment.enrollment_id)
    );
    for r in tablet.auth.pending_requests().await.unwrap() {
        tablet.auth.deny(&r, false).await.unwrap();
    }
    server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert_eq!(tablet.auth.pending_requests().await.unwrap().len(), 1);

    // Unknown or foreign enrollment ids change nothing.
    server.user("bob").await;
    let err = server
        .customer
        .set_primary("bob", &tablet_enrollment.enrollment_id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DeviceNotFound));
    let devices = server.customer.list_devices("alice").await.unwrap().devices;
    assert_eq!(devices.iter().filter(|d| d.primary).count(), 1);
    // Removing the primary device promotes the oldest remaining one.
    server
        .customer
        .remove_device("alice", &tablet_enrollment.enrollment_id)
        .await
        .unwrap();
    let devices = server.customer.list_devices("alice").await.unwrap().devices;
    assert_eq!(devices.len(), 1);
    assert!(devices[0].primary);
}

on_each_backend! {
    text_that_renders_differently_than_it_reads_is_refused => hidden_or_reordering_text;
}

/// A message or field with a bidirectional override, an isolate or a zero-width character
/// would show the user something other than what the device signs: refused before anything is
/// sent.
async fn hidden_or_reordering_text(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/users/alice/authentications", server.base_url);
    for (message, label, value) in [
        ("Pay 10\u{202E}00.1 EUR to ACME?", "Amount", "10.00 EUR"),
        ("Pay ACME?", "Pay\u{200B}ee", "ACME"),
        ("Pay ACME?", "Payee", "AC\u{2066}ME\u{2069}"),
        ("Pay\u{FEFF} ACME?", "Payee", "ACME"),
    ] {
        let response = http
            .post(&url)
            .bearer_auth(&server.app.api_key)
            .json(&serde_json::json!({
                "kind": "transaction",
                "message": message,
                "fields": [{"label": label, "value": value}],
            }))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 400, "{message:?} {label:?} {value:?}");
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
}
