//! End to end: push delivery through the webhook provider into the device core and back, with
//! a local receiver that checks the exact requests and answers as scripted (retries, failures).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tessera_core::PushOutcome;
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState, DisplayField};
use tessera_protocol::pairing::PushRegistration;
use tessera_tests::{
    Backend, TestDevice, TestServer, ask, device_config, on_each_backend, payment,
};

on_each_backend! {
    webhook_push_reaches_the_device_and_the_answer_comes_back => webhook_round_trip;
    transient_failures_are_retried_and_failed_pushes_lose_nothing => retries_and_failures;
    an_undeliverable_primary_device_falls_back_to_the_next_device => fallback;
}

#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<(HeaderMap, serde_json::Value)>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
}

async fn receive(
    State(r): State<Receiver>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> StatusCode {
    r.received.lock().unwrap().push((headers, body));
    let status = r.script.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

async fn start_receiver(script: &[u16]) -> (Receiver, String) {
    let receiver = Receiver::default();
    receiver
        .script
        .lock()
        .unwrap()
        .extend(script.iter().copied());
    let app = axum::Router::new()
        .route("/push", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (receiver, url)
}

async fn wait_for_pushes(receiver: &Receiver, n: usize) -> Vec<(HeaderMap, serde_json::Value)> {
    for _ in 0..100 {
        let got = receiver.received.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "expected {n} pushes, got {}",
        receiver.received.lock().unwrap().len()
    );
}

async fn push_state(
    server: &TestServer,
    id: &tessera_protocol::authentication::AuthenticationId,
) -> (String, i64) {
    for _ in 0..100 {
        let state =
            tessera_server::store::authentications::push_state(server.server.database(), id)
                .await
                .unwrap()
                .unwrap();
        if state.0 != "none" || state.1 > 0 {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tessera_server::store::authentications::push_state(server.server.database(), id)
        .await
        .unwrap()
        .unwrap()
}

async fn webhook_round_trip(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (receiver, url) = start_receiver(&[]).await;
    tessera_server::admin::set_push_webhook(
        server.server.database(),
        &server.app.application_id,
        Some(&url),
    )
    .await
    .unwrap();
    server.user("alice").await;
    let mut config = device_config("Pixel 8");
    config.push = PushRegistration::Fcm {
        token: "fcm-token-123".into(),
    };
    let device = TestDevice::with_config(config).await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();

    // A transaction: the push carries the signed request itself.
    let created = server
        .customer
        .create_authentication("alice", &payment())
        .await
        .unwrap();
    let pushes = wait_for_pushes(&receiver, 1).await;
    let (headers, body) = &pushes[0];
    assert_eq!(headers["content-type"], "application/json");
    assert!(
        headers["user-agent"]
            .to_str()
            .unwrap()
            .starts_with("tessera-server/")
    );
    assert_eq!(body["enrollment_id"], enrollment.enrollment_id.as_str());
    assert_eq!(body["device_id"], device.auth.device_id().as_str());
    assert_eq!(body["user_id"], "alice");
    assert_eq!(body["kind"], "transaction");
    assert_eq!(
        body["push"],
        serde_json::json!({"provider": "fcm", "token": "fcm-token-123"})
    );
    assert_eq!(body["data"]["request"], created.signed_request.as_str());
    // The customer relays `data` to the app, which hands it to the core.
    let PushOutcome::Request(request) = device
        .auth
        .handle_push(&body["data"].to_string())
        .await
        .unwrap()
    else {
        panic!("expected a request")
    };
    assert_eq!(request.fields[0].value, "120.00 EUR");
    device
        .auth
        .approve(&request, vec!["fpt".into()], None)
        .await
        .unwrap();
    let status = server
        .customer
        .authentication(&created.authentication_id, 5)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);
    assert_eq!(
        push_state(&server, &created.authentication_id).await,
        ("sent".to_string(), 1)
    );

    // A silent verification pushed: answered by handle_push alone.
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Silent))
        .await
        .unwrap();
    let pushes = wait_for_pushes(&receiver, 2).await;
    let outcome = device
        .auth
        .handle_push(&pushes[1].1["data"].to_string())
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        PushOutcome::SilentVerificationAnswered { .. }
    ));
    let status = server
        .customer
        .authentication(&created.authentication_id, 5)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);

    // A request too large for a push goes as its id; the core pulls it.
    let mut big = payment();
    big.fields = (0..20)
        .map(|i| DisplayField {
            label: format!("Line {i}"),
            value: "x".repeat(200),
        })
        .collect();
    let created = server
        .customer
        .create_authentication("alice", &big)
        .await
        .unwrap();
    let pushes = wait_for_pushes(&receiver, 3).await;
    let data = &pushes[2].1["data"];
    assert!(data.get("request").is_none());
    assert_eq!(data["request_id"], created.authentication_id.as_str());
    let PushOutcome::Request(request) = device.auth.handle_push(&data.to_string()).await.unwrap()
    else {
        panic!("expected a request")
    };
    assert_eq!(request.fields.len(), 20);
    device.auth.deny(&request, false).await.unwrap();
}

async fn retries_and_failures(backend: Backend) {
    let server =
        TestServer::start_with(backend, |c| c.push_retry_base = Duration::from_millis(20)).await;
    // Two transient failures, then success; then four failures in a row; then "gone".
    let (receiver, url) = start_receiver(&[503, 429, 200, 500, 502, 503, 504, 410]).await;
    tessera_server::admin::set_push_webhook(
        server.server.database(),
        &server.app.application_id,
        Some(&url),
    )
    .await
    .unwrap();
    server.user("alice").await;
    let device = TestDevice::new().await;
    device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();

    let first = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert_eq!(
        push_state(&server, &first.authentication_id).await,
        ("sent".to_string(), 3)
    );
    let pushes = wait_for_pushes(&receiver, 3).await;
    assert!(
        pushes
            .iter()
            .all(|(_, b)| b["data"]["request"] == first.signed_request.as_str()),
        "retries send the same push"
    );

    let second = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert_eq!(
        push_state(&server, &second.authentication_id).await,
        ("failed".to_string(), 4)
    );
    let third = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Silent))
        .await
        .unwrap();
    assert_eq!(
        push_state(&server, &third.authentication_id).await,
        ("token_invalid".to_string(), 1)
    );

    // Nothing was lost: the device pulls what the pushes did not deliver.
    let pending = device.auth.pending_requests().await.unwrap();
    let ids: Vec<_> = pending.iter().map(|r| r.request_id.clone()).collect();
    assert!(ids.contains(&first.authentication_id) && ids.contains(&second.authentication_id));
    let status = server
        .customer
        .authentication(&third.authentication_id, 5)
        .await
        .unwrap();
    assert_eq!(
        status.state,
        AuthenticationState::Approved,
        "the silent one was answered on the pull"
    );
    let metrics = reqwest::get(format!("{}/metrics", server.base_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tessera_pushes_total{provider=\"webhook\",outcome=\"failed\"} 1"),
        "{metrics}"
    );
}

async fn fallback(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.push_attempts = 1).await;
    // The phone's push token is gone (410); the tablet's push goes through.
    let (receiver, url) = start_receiver(&[410, 200, 410]).await;
    tessera_server::admin::set_push_webhook(
        server.server.database(),
        &server.app.application_id,
        Some(&url),
    )
    .await
    .unwrap();
    server.user("alice").await;
    let with_token = |model: &str, token: &str| {
        let mut config = device_config(model);
        config.push = PushRegistration::Fcm {
            token: token.into(),
        };
        config
    };
    let phone = TestDevice::with_config(with_token("Pixel 8", "phone-token")).await;
    let phone_enrollment = phone
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    let tablet = TestDevice::with_config(with_token("Pixel Tablet", "tablet-token")).await;
    let tablet_enrollment = tablet
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();

    let created = server
        .customer
        .create_authentication(
            "alice",
            &tessera_protocol::api::CreateAuthenticationRequest {
                number_matching: Some(tessera_protocol::authentication::NumberMatching::Choice),
                ..payment()
            },
        )
        .await
        .unwrap();
    assert_eq!(created.enrollment_id, phone_enrollment.enrollment_id);
    let pushes = wait_for_pushes(&receiver, 2).await;
    assert_eq!(pushes[0].1["push"]["token"], "phone-token");
    assert_eq!(pushes[1].1["push"]["token"], "tablet-token");
    assert_eq!(
        pushes[1].1["enrollment_id"],
        tablet_enrollment.enrollment_id.as_str()
    );
    // Re-signed for the tablet: its core accepts it; the phone no longer has it.
    let PushOutcome::Request(request) = tablet
        .auth
        .handle_push(&pushes[1].1["data"].to_string())
        .await
        .unwrap()
    else {
        panic!("expected a request")
    };
    assert_eq!(request.enrollment_id, tablet_enrollment.enrollment_id);
    assert_eq!(request.request_id, created.authentication_id);
    assert!(phone.auth.pending_requests().await.unwrap().is_empty());
    // The old request (signed for the phone) cannot be used by the tablet.
    assert!(
        tablet
            .auth
            .handle_push(&created.signed_request)
            .await
            .is_err()
    );
    let number = created.number_to_show.unwrap();
    tablet
        .auth
        .approve(&request, vec![], Some(number))
        .await
        .unwrap();
    let status = server
        .customer
        .authentication(&created.authentication_id, 5)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);
    assert_eq!(status.enrollment_id, tablet_enrollment.enrollment_id);
    assert_eq!(
        push_state(&server, &created.authentication_id).await,
        ("sent".to_string(), 1)
    );

    // A device chosen by the customer has no fallback: the request stays with it for pulling.
    let chosen = server
        .customer
        .create_authentication(
            "alice",
            &tessera_protocol::api::CreateAuthenticationRequest {
                enrollment_id: Some(phone_enrollment.enrollment_id.clone()),
                ..ask(AuthenticationKind::Approval)
            },
        )
        .await
        .unwrap();
    assert_eq!(
        push_state(&server, &chosen.authentication_id).await,
        ("token_invalid".to_string(), 1)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(wait_for_pushes(&receiver, 3).await.len(), 3);
    assert_eq!(phone.auth.pending_requests().await.unwrap().len(), 1);
    assert!(tablet.auth.pending_requests().await.unwrap().is_empty());
}
