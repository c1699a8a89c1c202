//! The hosted prompt in an app's web view (docs/flows.md, "The hosted page in an app's web
//! view"), end to end in headless Chromium (`tests/browser/prompt_page.mjs`): the driver plays
//! the app's native side (it injects the Android bridge object, or watches the navigations to
//! the app's scheme) and forwards every question of the page here, where the REAL core answers
//! it (`Authenticator::handle_web_view_message` / `handle_web_view_url`, what the Kotlin and
//! Swift wrappers call); the driver hands the answer back into the page.
//!
//! - automatic device registration: the page asks for an authorization (the app is not paired),
//!   then for the mobile payload, pairs it through the flow, hands the server payload to the
//!   app and continues: `device_paired`; the new device then approves a push;
//! - seamless device authorization: completes with `DEVICE_AUTHORIZATION` and no user
//!   interaction (the time from opening the page to the end is printed, `WEB VIEW SEAMLESS`);
//! - an answer for another question (a forged `request_id`) is ignored; a replayed authorization
//!   payload is refused by the server and the page falls back to the push;
//! - an app that answers with an error: the page falls back to the push;
//! - a registration the application verifies: the new device is held until the passcode sent
//!   by SMS is typed on the page, then the page continues by itself (`device_paired`);
//! - the scheme mode: the page navigates to `<scheme>://tessera/authorization?…`, the app loads
//!   the return URL with the answer in the fragment.
//!
//! Over HTTP (both backends): `hosted.web_view` is checked at creation, and the page's state
//! carries what the page hands the app.

use std::time::Instant;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tessera_protocol::flows::{
    CreateFlowRequest, FlowAction, FlowResultStatus, FlowStatus, WebViewMode, WebViewPrompt,
};
use tessera_protocol::ids::EnrollmentId;
use tessera_tests::{Backend, TestDevice, TestServer, on_each_backend};

use crate::hosted::{hosted_request, paired, token_of};
use crate::hosted_browser::{PromptPage, browser_available, return_url};

on_each_backend! {
    web_view_settings_are_checked_and_the_page_gets_what_it_hands_the_app => settings;
}

const SCHEME: &str = "com.example.tessera-test";

/// A hosted flow for `user` opened in an app's web view (`mode`).
fn web_view_request(
    server: &TestServer,
    user: &str,
    tag: &str,
    mode: WebViewMode,
) -> CreateFlowRequest {
    let mut request = hosted_request(user, &return_url(server, tag), &[]);
    if let Some(hosted) = request.hosted.as_mut() {
        hosted.web_view = Some(WebViewPrompt {
            mode,
            scheme: (mode == WebViewMode::Scheme).then(|| SCHEME.to_string()),
            timeout_seconds: None,
        });
    }
    request
}

/// The page's origin (the server's), as the app's web view reports it.
fn origin(server: &TestServer) -> String {
    server.base_url.trim_end_matches('/').to_string()
}

/// Plays the app once: the page's next bridge question, answered by the real core and handed
/// back. Returns (question, answer).
async fn answer_next(page: &mut PromptPage, device: &TestDevice, origin: &str) -> (Value, Value) {
    let (_, question) = page.expect(&["APP"]).await;
    let answer = device
        .auth
        .handle_web_view_message(&question, origin, None)
        .await
        .expect("the page's question is a Tessera question");
    page.send(&format!("deliver {answer}"));
    (
        serde_json::from_str(&question).expect("the question's JSON"),
        serde_json::from_str(&answer).expect("the answer's JSON"),
    )
}

fn plain() -> FlowAction {
    FlowAction::Authenticate {
        mobile_payload: None,
        authorization_payload: None,
    }
}

/// The flow's completing step type (`pingid.authentication.type`).
async fn completed_by(server: &TestServer, flow_id: &str) -> (FlowResultStatus, Option<String>) {
    let done = server.customer.flow(flow_id).await.unwrap();
    let result = done.result.expect("a final flow has a result");
    let kind = result
        .attributes
        .get("pingid.authentication.type")
        .and_then(Value::as_str)
        .map(str::to_string);
    (result.status, kind)
}

/// The device approves the push the flow (on the page or not) is waiting for.
async fn approve_the_push(
    server: &TestServer,
    flow_id: &str,
    device: &TestDevice,
    enrollment: &EnrollmentId,
) {
    let push = server
        .customer
        .flow(flow_id)
        .await
        .unwrap()
        .push
        .expect("the flow sent a push");
    let incoming = device
        .pull_request(enrollment, &push.authentication_id)
        .await;
    device.auth.approve(&incoming, vec![], None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_web_view_registration_ends_device_paired_and_the_device_then_approves_a_push() {
    if !browser_available() {
        return;
    }
    let server = TestServer::start(Backend::Sqlite).await;
    server.user("alice").await;
    let device = TestDevice::new().await;
    let origin = origin(&server);
    let flow = server
        .customer
        .create_flow(&web_view_request(
            &server,
            "alice",
            "register",
            WebViewMode::Bridge,
        ))
        .await
        .unwrap();
    let back = return_url(&server, "register");
    let mut page = PromptPage::open(
        flow.prompt_url.as_deref().unwrap(),
        &["--return-prefix", &back, "--web-view-bridge"],
    );

    // Not paired yet: the app says so, and the page asks it to register instead.
    let (question, answer) = answer_next(&mut page, &device, &origin).await;
    assert_eq!(question["type"], "tessera.authorization");
    assert_eq!(question["flow_id"], flow.id.as_str());
    assert_eq!(
        question["authorization_nonce"],
        flow.authorization_nonce.as_str()
    );
    assert_eq!(answer["error"], "not_paired");
    let (question, answer) = answer_next(&mut page, &device, &origin).await;
    assert_eq!(question["type"], "tessera.register");
    assert!(answer["mobile_payload"].is_string(), "{answer}");
    // The page paired the payload through the flow and hands the server payload to the app.
    let (question, answer) = answer_next(&mut page, &device, &origin).await;
    assert_eq!(question["type"], "tessera.register.complete");
    let enrollment: EnrollmentId = answer["enrollment_id"]
        .as_str()
        .expect("the app completed the pairing")
        .parse()
        .unwrap();
    let (_, url) = page.finish("MFA_COMPLETED").await;
    assert_eq!(url, back);
    let (status, _) = completed_by(&server, flow.id.as_str()).await;
    assert_eq!(status, FlowResultStatus::DevicePaired);

    // The device registered on the page answers the next push.
    let next = server
        .customer
        .create_flow(&CreateFlowRequest::new("alice".parse().unwrap()))
        .await
        .unwrap();
    let waiting = server
        .customer
        .flow_action(next.id.as_str(), &plain())
        .await
        .unwrap();
    assert_eq!(waiting.status, FlowStatus::PushConfirmationWaiting);
    assert_eq!(
        waiting.push.as_ref().map(|p| &p.enrollment_id),
        Some(&enrollment),
        "the push goes to the device registered on the page"
    );
    approve_the_push(&server, next.id.as_str(), &device, &enrollment).await;
    let done = server.customer.flow(next.id.as_str()).await.unwrap();
    assert_eq!(done.status, FlowStatus::MfaCompleted);
    assert_eq!(done.result.unwrap().status, FlowResultStatus::Authenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_web_view_registration_approved_by_a_passcode_sent_by_sms() {
    if !browser_available() {
        return;
    }
    let (provider, sent) = crate::new_device_passcode::sms_provider().await;
    let server = TestServer::start(Backend::Sqlite).await;
    // The application verifies new devices; carol has a phone number and no device.
    crate::new_device_passcode::setup(&server, &provider, true).await;
    let device = TestDevice::new().await;
    let origin = origin(&server);
    let mut request = web_view_request(&server, "carol", "held", WebViewMode::Bridge);
    request.sms_backup = Some(true);
    let flow = server.customer.create_flow(&request).await.unwrap();
    let back = return_url(&server, "held");
    let mut page = PromptPage::open(
        flow.prompt_url.as_deref().unwrap(),
        &["--return-prefix", &back, "--web-view-bridge"],
    );
    let (_, answer) = answer_next(&mut page, &device, &origin).await;
    assert_eq!(answer["error"], "not_paired");
    let (question, _) = answer_next(&mut page, &device, &origin).await;
    assert_eq!(question["type"], "tessera.register");
    let (question, answer) = answer_next(&mut page, &device, &origin).await;
    assert_eq!(question["type"], "tessera.register.complete");
    assert!(answer["enrollment_id"].is_string(), "{answer}");
    // The new device is held until the passcode sent by SMS is typed on the page; then the
    // page continues by itself.
    let held = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(held.status, FlowStatus::MobilePairingRequired);
    assert_eq!(held.pairing.unwrap().state, "pending_verification");
    let code = crate::new_device_passcode::last_code(&sent);
    page.send(&format!("type {code}"));
    page.finish("MFA_COMPLETED").await;
    let (status, _) = completed_by(&server, flow.id.as_str()).await;
    assert_eq!(status, FlowResultStatus::DevicePaired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seamless_device_authorization_in_a_web_view_needs_no_user() {
    if !browser_available() {
        return;
    }
    let server = TestServer::start(Backend::Sqlite).await;
    let (device, enrollment) = paired(&server, "alice").await;
    let origin = origin(&server);
    let flow = server
        .customer
        .create_flow(&web_view_request(
            &server,
            "alice",
            "seamless",
            WebViewMode::Bridge,
        ))
        .await
        .unwrap();
    let back = return_url(&server, "seamless");
    let started = Instant::now();
    let mut page = PromptPage::open(
        flow.prompt_url.as_deref().unwrap(),
        &["--return-prefix", &back, "--web-view-bridge"],
    );
    let (question, answer) = answer_next(&mut page, &device, &origin).await;
    assert_eq!(question["type"], "tessera.authorization");
    assert!(answer["authorization_payload"].is_string(), "{answer}");
    let (_, url) = page.finish("MFA_COMPLETED").await;
    println!(
        "WEB VIEW SEAMLESS: page opened -> flow completed and returned in {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(url, back);
    let (status, kind) = completed_by(&server, flow.id.as_str()).await;
    assert_eq!(status, FlowResultStatus::Authenticated);
    assert_eq!(kind.as_deref(), Some("DEVICE_AUTHORIZATION"));
    let done = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(done.result.unwrap().enrollment_id, Some(enrollment));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_or_replayed_authorization_falls_back_to_the_push() {
    if !browser_available() {
        return;
    }
    let server = TestServer::start(Backend::Sqlite).await;
    let (device, enrollment) = paired(&server, "alice").await;

    // An authorization payload used once already, for another flow.
    let earlier = server
        .customer
        .create_flow(&CreateFlowRequest::new("alice".parse().unwrap()))
        .await
        .unwrap();
    let used = device
        .auth
        .create_authorization_payload(&enrollment, &earlier.authorization_nonce)
        .await
        .unwrap();
    let accepted = server
        .customer
        .flow_action(
            earlier.id.as_str(),
            &FlowAction::Authenticate {
                mobile_payload: None,
                authorization_payload: Some(used.clone()),
            },
        )
        .await
        .unwrap();
    assert_eq!(accepted.status, FlowStatus::MfaCompleted);

    let flow = server
        .customer
        .create_flow(&web_view_request(
            &server,
            "alice",
            "replay",
            WebViewMode::Bridge,
        ))
        .await
        .unwrap();
    let back = return_url(&server, "replay");
    let mut page = PromptPage::open(
        flow.prompt_url.as_deref().unwrap(),
        &["--return-prefix", &back, "--web-view-bridge"],
    );
    let (_, question) = page.expect(&["APP"]).await;
    let question: Value = serde_json::from_str(&question).unwrap();
    assert_eq!(question["type"], "tessera.authorization");
    // A genuine payload for THIS flow, but answering a question the page did not ask: ignored.
    let genuine = device
        .auth
        .create_authorization_payload(&enrollment, &flow.authorization_nonce)
        .await
        .unwrap();
    let forged = json!({
        "type": "tessera.authorization.result",
        "flow_id": flow.id.as_str(),
        "request_id": "not-the-pages-request",
        "authorization_payload": genuine,
    });
    page.send(&format!("deliver {forged}"));
    // The replayed payload, answering the page's question: the server refuses it and the flow
    // falls back to the push.
    let replayed = json!({
        "type": "tessera.authorization.result",
        "flow_id": flow.id.as_str(),
        "request_id": question["request_id"],
        "authorization_payload": used,
    });
    page.send(&format!("deliver {replayed}"));
    page.state("PUSH_CONFIRMATION_WAITING").await;
    approve_the_push(&server, flow.id.as_str(), &device, &enrollment).await;
    page.finish("MFA_COMPLETED").await;
    let (status, kind) = completed_by(&server, flow.id.as_str()).await;
    assert_eq!(status, FlowResultStatus::Authenticated);
    assert_ne!(
        kind.as_deref(),
        Some("DEVICE_AUTHORIZATION"),
        "neither the forged answer nor the replayed payload authorized the flow"
    );
    let history = server.customer.flow_events(flow.id.as_str()).await.unwrap();
    assert!(
        history.events.iter().any(|e| e.error.is_some()),
        "the refused payload is recorded: {history:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_answering_an_error_gets_the_normal_prompt() {
    if !browser_available() {
        return;
    }
    let server = TestServer::start(Backend::Sqlite).await;
    let (device, enrollment) = paired(&server, "alice").await;
    let flow = server
        .customer
        .create_flow(&web_view_request(
            &server,
            "alice",
            "error",
            WebViewMode::Bridge,
        ))
        .await
        .unwrap();
    let back = return_url(&server, "error");
    let mut page = PromptPage::open(
        flow.prompt_url.as_deref().unwrap(),
        &["--return-prefix", &back, "--web-view-bridge"],
    );
    // The question comes from a page the app does not trust: the core refuses to sign.
    let (_, question) = page.expect(&["APP"]).await;
    let answer = device
        .auth
        .handle_web_view_message(&question, "https://elsewhere.example", None)
        .await
        .unwrap();
    let parsed: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(parsed["error"], "origin_mismatch");
    assert!(parsed.get("authorization_payload").is_none());
    page.send(&format!("deliver {answer}"));
    page.state("PUSH_CONFIRMATION_WAITING").await;
    approve_the_push(&server, flow.id.as_str(), &device, &enrollment).await;
    page.finish("MFA_COMPLETED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_scheme_mode_answers_in_the_return_urls_fragment() {
    if !browser_available() {
        return;
    }
    let server = TestServer::start(Backend::Sqlite).await;
    let (device, _) = paired(&server, "alice").await;
    let origin = origin(&server);
    let flow = server
        .customer
        .create_flow(&web_view_request(
            &server,
            "alice",
            "scheme",
            WebViewMode::Scheme,
        ))
        .await
        .unwrap();
    let back = return_url(&server, "scheme");
    let mut page = PromptPage::open(
        flow.prompt_url.as_deref().unwrap(),
        &["--return-prefix", &back, "--web-view-scheme", SCHEME],
    );
    let (_, asked) = page.expect(&["APP_URL"]).await;
    assert!(
        asked.starts_with(&format!("{SCHEME}://tessera/authorization?")),
        "{asked}"
    );
    let parsed = url::Url::parse(&asked).unwrap();
    let query: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
    assert_eq!(query["flow_id"], flow.id.as_str());
    assert_eq!(
        query["authorization_nonce"],
        flow.authorization_nonce.as_str()
    );
    assert_eq!(query["return_url"], format!("{origin}/prompt"));
    assert!(
        !asked.contains(&token_of(&flow)),
        "the browser token stays in the page"
    );
    let load = device
        .auth
        .handle_web_view_url(&asked, &origin, None)
        .await
        .expect("the app answers the page's question");
    assert!(
        load.starts_with(&format!(
            "{origin}/prompt#type=tessera.authorization.result&"
        )),
        "{load}"
    );
    page.send(&format!("load {load}"));
    page.finish("MFA_COMPLETED").await;
    let (status, kind) = completed_by(&server, flow.id.as_str()).await;
    assert_eq!(status, FlowResultStatus::Authenticated);
    assert_eq!(kind.as_deref(), Some("DEVICE_AUTHORIZATION"));
}

/// `hosted.web_view` is checked at creation (nothing is created otherwise), and the page's
/// state carries the mode, the scheme, this server and the flow's nonce, only for such flows.
async fn settings(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let bad = [
        json!({"mode": "scheme"}),
        json!({"mode": "scheme", "scheme": "javascript"}),
        json!({"mode": "scheme", "scheme": "http"}),
        json!({"mode": "scheme", "scheme": "myapp"}),
        json!({"mode": "bridge", "scheme": "com.example.app"}),
        json!({"mode": "bridge", "timeout_seconds": 0}),
        json!({"mode": "iframe"}),
    ];
    for web_view in bad {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/flows", server.base_url))
            .bearer_auth(&server.app.api_key)
            .json(&json!({"user_id": "alice", "hosted": {
                "return_url": "https://rp.example/cb", "web_view": web_view}}))
            .send()
            .await
            .unwrap();
        assert!(
            matches!(
                response.status(),
                StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
            ),
            "{web_view}: {}",
            response.status()
        );
    }

    let flow = server
        .customer
        .create_flow(&web_view_request(
            &server,
            "alice",
            "s",
            WebViewMode::Scheme,
        ))
        .await
        .unwrap();
    let state = page_state(&server, &token_of(&flow)).await;
    assert_eq!(state["web_view"]["mode"], "scheme");
    assert_eq!(state["web_view"]["scheme"], SCHEME);
    assert_eq!(
        state["web_view"]["server"],
        server.base_url.trim_end_matches('/')
    );
    assert_eq!(
        state["web_view"]["authorization_nonce"],
        flow.authorization_nonce.as_str()
    );
    assert_eq!(state["web_view"]["timeout_seconds"], 15);

    let plain_hosted = server
        .customer
        .create_flow(&hosted_request("alice", "https://rp.example/cb", &[]))
        .await
        .unwrap();
    let state = page_state(&server, &token_of(&plain_hosted)).await;
    assert!(state.get("web_view").is_none(), "{state}");
}

async fn page_state(server: &TestServer, token: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}/v1/flow-browser", server.base_url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
