//! End to end over HTTP: QR login as the alternative on a hosted flow (`useQrCode`). The flow
//! shows a QR session bound to it; the flow's user's app scans and approves it, the page's
//! event-driven long poll sees the flow complete with the QR step's attributes, and the push
//! still on the phone is withdrawn. Another user's phone scanning the code cannot complete the
//! flow; the code is answered once; a fresh code retires the old one; the code expires with the
//! flow; a burst of racing `useQrCode` actions leaves one code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tessera_core::QrSessionState;
use tessera_protocol::authentication::AuthenticationState;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::flows::{
    FlowAction, FlowActionName, FlowBrowserState, FlowResultStatus, FlowState, FlowStatus,
};
use tessera_server::ManualClock;
use tessera_tests::{Backend, TestDevice, TestServer, on_each_backend};

use crate::hosted::{hosted_request, paired, token_of};

on_each_backend! {
    a_hosted_flow_completes_by_its_users_qr_scan_followed_live => qr_completes_flow;
    another_users_phone_cannot_complete_the_flow_by_its_qr_code => other_user_refused;
    a_fresh_code_retires_the_old_one_and_codes_expire_with_the_flow => fresh_and_expiry;
    racing_qr_code_requests_leave_one_code => racing_codes;
}

async fn act(server: &TestServer, flow: &FlowState, action: FlowAction) -> FlowState {
    server
        .customer
        .flow_action(flow.id.as_str(), &action)
        .await
        .unwrap()
}

/// The page's view of its flow (`GET /v1/flow-browser`), waiting for a version after `seen`.
async fn page_view(server: &TestServer, token: &str, seen: Option<i64>) -> FlowBrowserState {
    let query = match seen {
        Some(v) => format!("?wait=25&seen={v}"),
        None => String::new(),
    };
    let response = reqwest::Client::new()
        .get(format!("{}/v1/flow-browser{query}", server.base_url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// The page asks for the QR alternative (`POST /v1/flow-browser`, same origin).
async fn page_use_qr(server: &TestServer, token: &str) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/flow-browser", server.base_url))
        .bearer_auth(token)
        .header("origin", &server.base_url)
        .header("sec-fetch-site", "same-origin")
        .json(&serde_json::json!({"action": "useQrCode"}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn qr_completes_flow(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (device, enrollment) = paired(&server, "alice").await;
    let flow = server
        .customer
        .create_flow(&hosted_request("alice", "https://rp.example/cb", &["en"]))
        .await
        .unwrap();
    let token = token_of(&flow);
    // The QR alternative is offered once the user is being asked, not before.
    assert!(!flow.actions.contains(&FlowActionName::UseQrCode));
    let waiting = act(
        &server,
        &flow,
        FlowAction::Authenticate {
            mobile_payload: None,
            authorization_payload: None,
        },
    )
    .await;
    assert_eq!(waiting.status, FlowStatus::PushConfirmationWaiting);
    assert!(waiting.actions.contains(&FlowActionName::UseQrCode));
    let push = waiting.push.clone().unwrap();

    // The page switches to the QR code: it gets the code as text and as an SVG image.
    let (status, body) = page_use_qr(&server, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let shown: FlowBrowserState = serde_json::from_value(body).unwrap();
    assert_eq!(shown.status, FlowStatus::PushConfirmationWaiting);
    let qr = shown.qr.clone().expect("a QR code is shown");
    assert_eq!(qr.state, QrSessionState::Created);
    assert!(qr.qr_svg.as_deref().is_some_and(|s| s.contains("<svg")));
    let uri = qr.qr_uri.clone().expect("a scannable code");
    // The customer API shows the same session, without the image.
    let api_view = server.customer.flow(flow.id.as_str()).await.unwrap();
    let api_qr = api_view.qr.expect("the flow's QR code");
    assert_eq!(api_qr.session_id, qr.session_id);
    assert!(api_qr.qr_svg.is_none());

    // The page waits (event driven) while the phone scans and approves.
    let waiter = {
        let base = server.base_url.clone();
        let token = token.clone();
        let seen = shown.version;
        tokio::spawn(async move {
            let started = Instant::now();
            let response = reqwest::Client::new()
                .get(format!("{base}/v1/flow-browser?wait=25&seen={seen}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            let state: FlowBrowserState = response.json().await.unwrap();
            (state, started.elapsed())
        })
    };
    let scanned = device.auth.authenticate_with_qr(&uri).await.unwrap();
    assert_eq!(scanned.users.len(), 1);
    assert_eq!(scanned.users[0].user_id.as_str(), "alice");
    device
        .auth
        .approve_qr(&scanned, &scanned.users[0].user_id, vec![])
        .await
        .unwrap();
    let (woken, waited) = waiter.await.unwrap();
    assert_eq!(woken.status, FlowStatus::MfaCompleted);
    assert_eq!(woken.result, Some(FlowResultStatus::Authenticated));
    assert!(
        waited < Duration::from_secs(20),
        "the page is woken by the flow's move, not its deadline ({waited:?})"
    );

    // The flow's result carries the QR step's attributes and the approving enrollment.
    let done = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(done.status, FlowStatus::MfaCompleted);
    let result = done.result.unwrap();
    assert_eq!(result.status, FlowResultStatus::Authenticated);
    assert_eq!(result.enrollment_id.as_ref(), Some(&enrollment));
    assert_eq!(
        result.attributes["pingid.authentication.type"],
        "MOBILE_APP_SWIPE"
    );
    assert!(done.qr.is_none(), "a finished flow shows no code");
    let page = page_view(&server, &token, None).await;
    assert_eq!(page.status, FlowStatus::MfaCompleted);
    assert!(page.qr.is_none());
    let history = server.customer.flow_events(flow.id.as_str()).await.unwrap();
    assert!(
        history
            .events
            .iter()
            .any(|e| e.action == "qrAnswered" && e.to_status == FlowStatus::MfaCompleted),
        "{history:?}"
    );

    // The push still on the phone was withdrawn: the phone cannot answer it any more.
    let withdrawn = server
        .customer
        .authentication(&push.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(withdrawn.state, AuthenticationState::Failed);
    assert_eq!(withdrawn.failure_reason.as_deref(), Some("canceled"));

    // Single use: the same code cannot be scanned again.
    let err = device.auth.authenticate_with_qr(&uri).await.unwrap_err();
    assert!(
        matches!(
            err.server_code(),
            Some(ErrorCode::QrAlreadyScanned | ErrorCode::QrSessionExpired)
        ),
        "{err:?}"
    );
}

async fn other_user_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_alice_device, _) = paired(&server, "alice").await;
    let (bob_device, _) = paired(&server, "bob").await;
    let flow = server
        .customer
        .create_flow(&hosted_request("alice", "https://rp.example/cb", &[]))
        .await
        .unwrap();
    act(
        &server,
        &flow,
        FlowAction::Authenticate {
            mobile_payload: None,
            authorization_payload: None,
        },
    )
    .await;
    let shown = act(&server, &flow, FlowAction::UseQrCode {}).await;
    let uri = shown.qr.unwrap().qr_uri.unwrap();

    // Bob's phone scans Alice's code: none of its users may answer it.
    let err = bob_device
        .auth
        .authenticate_with_qr(&uri)
        .await
        .unwrap_err();
    assert_eq!(
        err.server_code(),
        Some(ErrorCode::NoEligibleUser),
        "{err:?}"
    );
    let still = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(still.status, FlowStatus::PushConfirmationWaiting);
    assert_eq!(
        still.qr.unwrap().state,
        QrSessionState::Created,
        "the refused scan claimed nothing"
    );

    // A phone that holds both users offers only Alice.
    let shared = TestDevice::new().await;
    for user in ["bob", "alice"] {
        shared
            .auth
            .pair(&server.pairing_uri(user).await, None)
            .await
            .unwrap();
    }
    let scanned = shared.auth.authenticate_with_qr(&uri).await.unwrap();
    let users: Vec<&str> = scanned.users.iter().map(|u| u.user_id.as_str()).collect();
    assert_eq!(users, ["alice"]);
    // Answering as Bob is refused (his enrollment is no candidate) and completes nothing.
    let bob: tessera_protocol::ids::UserId = "bob".parse().unwrap();
    assert!(
        shared
            .auth
            .approve_qr(&scanned, &bob, vec![])
            .await
            .is_err()
    );
    let still = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert!(!still.status.is_final());
    // Alice's answer completes it.
    shared
        .auth
        .approve_qr(&scanned, &scanned.users[0].user_id, vec![])
        .await
        .unwrap();
    let done = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(done.status, FlowStatus::MfaCompleted);
}

async fn fresh_and_expiry(backend: Backend) {
    let clock = ManualClock::new();
    let server = TestServer::start_with(backend, |c| c.clock = Arc::new(clock.clone())).await;
    let (device, _) = paired(&server, "alice").await;
    let mut request = hosted_request("alice", "https://rp.example/cb", &[]);
    request.expires_in = Some(120);
    let flow = server.customer.create_flow(&request).await.unwrap();
    act(
        &server,
        &flow,
        FlowAction::Authenticate {
            mobile_payload: None,
            authorization_payload: None,
        },
    )
    .await;
    let first = act(&server, &flow, FlowAction::UseQrCode {})
        .await
        .qr
        .unwrap();
    let second = act(&server, &flow, FlowAction::UseQrCode {})
        .await
        .qr
        .unwrap();
    assert_ne!(first.session_id, second.session_id);
    // The old code stopped working; the new one lives no longer than the flow.
    let err = device
        .auth
        .authenticate_with_qr(first.qr_uri.as_deref().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        err.server_code(),
        Some(ErrorCode::QrSessionExpired),
        "{err:?}"
    );
    assert!(second.code_expires_at.unwrap() <= flow.expires_at);

    // The flow expires (manual clock): so does its code.
    clock.advance(Duration::from_secs(121));
    let expired = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(expired.status, FlowStatus::MfaFailed);
    assert_eq!(expired.result.unwrap().status, FlowResultStatus::Expired);
    let err = device
        .auth
        .authenticate_with_qr(second.qr_uri.as_deref().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        err.server_code(),
        Some(ErrorCode::QrSessionExpired),
        "{err:?}"
    );
    let err = server
        .customer
        .flow_action(flow.id.as_str(), &FlowAction::UseQrCode {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FlowExpired));
}

async fn racing_codes(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (device, _) = paired(&server, "alice").await;
    let flow = server
        .customer
        .create_flow(&hosted_request("alice", "https://rp.example/cb", &[]))
        .await
        .unwrap();
    act(
        &server,
        &flow,
        FlowAction::Authenticate {
            mobile_payload: None,
            authorization_payload: None,
        },
    )
    .await;
    let burst = (0..8).map(|_| {
        let customer = server.customer.clone();
        let id = flow.id.to_string();
        tokio::spawn(async move { customer.flow_action(&id, &FlowAction::UseQrCode {}).await })
    });
    let mut shown = Vec::new();
    for answer in futures::future::join_all(burst).await {
        match answer.unwrap() {
            Ok(state) => shown.push(state.qr.unwrap()),
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::Conflict), "{e:?}"),
        }
    }
    assert!(!shown.is_empty());
    // Whatever won last is the flow's code; every other code shown is retired.
    let current = server
        .customer
        .flow(flow.id.as_str())
        .await
        .unwrap()
        .qr
        .unwrap();
    for qr in shown.iter().filter(|q| q.session_id != current.session_id) {
        // A code replaced by a racing request before this answer was rendered is shown
        // without a URI: there is nothing left to scan.
        let Some(uri) = qr.qr_uri.as_deref() else {
            continue;
        };
        let err = device.auth.authenticate_with_qr(uri).await.unwrap_err();
        assert_eq!(
            err.server_code(),
            Some(ErrorCode::QrSessionExpired),
            "{err:?}"
        );
    }
    let scanned = device
        .auth
        .authenticate_with_qr(current.qr_uri.as_deref().unwrap())
        .await
        .unwrap();
    device
        .auth
        .approve_qr(&scanned, &scanned.users[0].user_id, vec![])
        .await
        .unwrap();
    let done = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(done.status, FlowStatus::MfaCompleted);
}
