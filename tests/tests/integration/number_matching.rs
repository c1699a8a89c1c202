//! End to end: number matching that cannot be guessed. A wrong number ends the request as
//! denied (`wrong_number`), visible to the relying party (customer status, CIBA token error)
//! and counted as a fraud signal; the typed mode sends the device no choices; the mode is chosen
//! per request (the old boolean still works) or by the application's setting. On SQLite and
//! PostgreSQL.

use serde_json::{Value, json};
use tessera_core::CoreError;
use tessera_examples::relying_party::RpError;
use tessera_protocol::api::{AuthenticationSettings, AuthenticationStatus};
use tessera_protocol::authentication::{
    AuthenticationKind, AuthenticationState, Decision, DenialReason, NumberMatching,
};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::qr::QrSessionState;
use tessera_server::store::applications::QrPolicy;
use tessera_tests::{Backend, TestDevice, TestServer, ask, on_each_backend};

on_each_backend! {
    a_wrong_pick_ends_the_request_as_denied_and_a_second_answer_is_refused => wrong_pick;
    typed_mode_sends_no_choices_and_ends_on_a_wrong_number => typed_mode;
    the_mode_comes_from_the_request_the_old_boolean_or_the_application => mode_choice;
    ciba_relying_parties_see_the_number_and_the_wrong_number_reason => ciba_wrong_number;
    qr_follow_up_shows_the_number_and_the_session_the_wrong_number_reason => qr_wrong_number;
}

async fn paired(backend: Backend) -> (TestServer, TestDevice) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let device = TestDevice::new().await;
    device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    (server, device)
}

async fn only_request(device: &TestDevice) -> tessera_core::IncomingRequest {
    let mut pending = device.auth.pending_requests().await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    pending.remove(0)
}

fn with_mode(mode: NumberMatching) -> tessera_protocol::api::CreateAuthenticationRequest {
    tessera_protocol::api::CreateAuthenticationRequest {
        number_matching: Some(mode),
        ..ask(AuthenticationKind::Approval)
    }
}

/// `POST /v1/users/alice/authentications` with a raw JSON body (to send the wire forms).
async fn create_raw(server: &TestServer, body: Value) -> AuthenticationStatus {
    let response = reqwest::Client::new()
        .post(format!(
            "{}/v1/users/alice/authentications",
            server.base_url
        ))
        .bearer_auth(&server.app.api_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{body}");
    response.json().await.unwrap()
}

async fn wrong_number_signals(server: &TestServer) -> u64 {
    let metrics = reqwest::get(format!("{}/metrics", server.base_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find(|l| {
            l.starts_with("tessera_authentication_fraud_signals_total{")
                && l.contains("reason=\"wrong_number\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(|n| n.parse().unwrap())
        .unwrap_or(0)
}

async fn wrong_pick(backend: Backend) {
    let (server, device) = paired(backend).await;
    let created = server
        .customer
        .create_authentication("alice", &with_mode(NumberMatching::Choice))
        .await
        .unwrap();
    assert_eq!(created.number_matching, NumberMatching::Choice);
    let shown = created.number_to_show.expect("a number for the web page");
    let request = only_request(&device).await;
    assert_eq!(request.number_matching, NumberMatching::Choice);
    let choices = request.number_choices.clone().expect("three choices");
    assert_eq!(choices.len(), 3);
    assert!(choices.contains(&shown));
    let wrong = *choices.iter().find(|n| **n != shown).unwrap();
    assert_eq!(wrong_number_signals(&server).await, 0);

    // The wrong pick is recorded: the request ends, denied, reason wrong_number.
    let recorded = device
        .auth
        .approve(&request, vec![], Some(wrong))
        .await
        .unwrap();
    assert_eq!(recorded.state, AuthenticationState::Denied);
    assert_eq!(recorded.denial_reason, Some(DenialReason::WrongNumber));
    // The right number afterwards (the attacker's second try) is refused.
    let err = device
        .auth
        .approve(&request, vec![], Some(shown))
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::AlreadyAnswered), "{err}");
    // And so is a denial: the request has ended.
    let err = device.auth.deny(&request, false).await.unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::AlreadyAnswered), "{err}");
    assert!(device.auth.pending_requests().await.unwrap().is_empty());

    // The relying party sees the reason.
    let status = server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Denied);
    assert_eq!(status.decision, Some(Decision::Deny));
    assert_eq!(status.denial_reason, Some(DenialReason::WrongNumber));
    assert!(status.signed_response.is_some(), "the wrong answer is kept");
    // Counted as a fraud signal.
    assert_eq!(wrong_number_signals(&server).await, 1);

    // A plain denial reads as declined; the right pick still approves.
    server
        .customer
        .create_authentication("alice", &with_mode(NumberMatching::Choice))
        .await
        .unwrap();
    let declined = device
        .auth
        .deny(&only_request(&device).await, false)
        .await
        .unwrap();
    assert_eq!(declined.denial_reason, Some(DenialReason::Declined));
    let created = server
        .customer
        .create_authentication("alice", &with_mode(NumberMatching::Choice))
        .await
        .unwrap();
    let recorded = device
        .auth
        .approve(&only_request(&device).await, vec![], created.number_to_show)
        .await
        .unwrap();
    assert_eq!(recorded.state, AuthenticationState::Approved);
    assert_eq!(recorded.denial_reason, None);
    assert_eq!(wrong_number_signals(&server).await, 1);
}

async fn typed_mode(backend: Backend) {
    let (server, device) = paired(backend).await;
    // The wire form: "typed".
    let created = create_raw(
        &server,
        json!({"kind": "approval", "number_matching": "typed"}),
    )
    .await;
    assert_eq!(created.number_matching, NumberMatching::Typed);
    let shown = created.number_to_show.expect("a number for the web page");
    assert!((10..=99).contains(&shown));
    let request = only_request(&device).await;
    assert_eq!(request.number_matching, NumberMatching::Typed);
    assert_eq!(request.number_choices, None, "nothing to pick from");
    // Nothing typed, or not two digits: the core refuses before sending anything.
    assert!(matches!(
        device.auth.approve(&request, vec![], None).await,
        Err(CoreError::InvalidInput(_))
    ));
    assert!(matches!(
        device.auth.approve(&request, vec![], Some(100)).await,
        Err(CoreError::InvalidInput(_))
    ));
    let recorded = device
        .auth
        .approve(&request, vec![], Some(shown))
        .await
        .unwrap();
    assert_eq!(recorded.state, AuthenticationState::Approved);

    // A wrong typed number ends the next request.
    let created = create_raw(
        &server,
        json!({"kind": "approval", "number_matching": "typed"}),
    )
    .await;
    let shown = created.number_to_show.unwrap();
    let wrong = if shown == 99 { 10 } else { shown + 1 };
    let request = only_request(&device).await;
    let recorded = device
        .auth
        .approve(&request, vec![], Some(wrong))
        .await
        .unwrap();
    assert_eq!(recorded.state, AuthenticationState::Denied);
    assert_eq!(recorded.denial_reason, Some(DenialReason::WrongNumber));
    let err = device
        .auth
        .approve(&request, vec![], Some(shown))
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::AlreadyAnswered));
    let status = server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Denied);
    assert_eq!(status.denial_reason, Some(DenialReason::WrongNumber));
    assert_eq!(wrong_number_signals(&server).await, 1);
}

async fn mode_choice(backend: Backend) {
    let (server, device) = paired(backend).await;
    let mode_of =
        |status: &AuthenticationStatus| (status.number_matching, status.number_to_show.is_some());
    // The old boolean keeps working.
    let old_true = create_raw(
        &server,
        json!({"kind": "approval", "number_matching": true}),
    )
    .await;
    assert_eq!(mode_of(&old_true), (NumberMatching::Choice, true));
    device
        .auth
        .deny(&only_request(&device).await, false)
        .await
        .unwrap();
    let old_false = create_raw(
        &server,
        json!({"kind": "approval", "number_matching": false}),
    )
    .await;
    assert_eq!(mode_of(&old_false), (NumberMatching::Off, false));
    device
        .auth
        .deny(&only_request(&device).await, false)
        .await
        .unwrap();
    // A word that is not a mode is refused clearly.
    let refused = reqwest::Client::new()
        .post(format!(
            "{}/v1/users/alice/authentications",
            server.base_url
        ))
        .bearer_auth(&server.app.api_key)
        .json(&json!({"kind": "approval", "number_matching": "maybe"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);

    // The application's setting applies when the request does not choose.
    let view = server
        .customer
        .set_authentication_settings(&AuthenticationSettings {
            number_matching: NumberMatching::Typed,
            ..AuthenticationSettings::default()
        })
        .await
        .unwrap();
    assert_eq!(view.settings.number_matching, NumberMatching::Typed);
    assert_eq!(
        server
            .customer
            .authentication_settings()
            .await
            .unwrap()
            .settings
            .number_matching,
        NumberMatching::Typed
    );
    let by_app = create_raw(&server, json!({"kind": "approval"})).await;
    assert_eq!(mode_of(&by_app), (NumberMatching::Typed, true));
    assert_eq!(
        only_request(&device).await.number_matching,
        NumberMatching::Typed
    );
    device
        .auth
        .deny(&only_request(&device).await, false)
        .await
        .unwrap();
    // The request's own choice wins, "off" included.
    let off = create_raw(
        &server,
        json!({"kind": "approval", "number_matching": "off"}),
    )
    .await;
    assert_eq!(mode_of(&off), (NumberMatching::Off, false));
    device
        .auth
        .deny(&only_request(&device).await, false)
        .await
        .unwrap();
    // Silent verifications never match numbers, whatever the application says.
    let silent = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Silent))
        .await
        .unwrap();
    assert_eq!(mode_of(&silent), (NumberMatching::Off, false));
}

async fn ciba_wrong_number(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.ciba_poll_interval = 1).await;
    server.user("alice").await;
    let device = TestDevice::new().await;
    device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    server
        .customer
        .set_authentication_settings(&AuthenticationSettings {
            number_matching: NumberMatching::Typed,
            ..AuthenticationSettings::default()
        })
        .await
        .unwrap();
    let rp = server.poll_mode_relying_party("Call Centre").await;
    let params: &[(&str, &str)] = &[("scope", "openid"), ("login_hint", "alice")];

    // The acknowledgement carries the number the consumption device shows.
    let ack = rp.backchannel(params).await.unwrap();
    let shown = ack.number_to_show.expect("a number to show");
    let request = only_request(&device).await;
    assert_eq!(request.kind, AuthenticationKind::Ciba);
    assert_eq!(request.number_matching, NumberMatching::Typed);
    let wrong = if shown == 99 { 10 } else { shown + 1 };
    let recorded = device
        .auth
        .approve(&request, vec!["fpt".into()], Some(wrong))
        .await
        .unwrap();
    assert_eq!(recorded.denial_reason, Some(DenialReason::WrongNumber));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    match rp.token(&ack.auth_req_id).await {
        Err(RpError::OAuth {
            error, description, ..
        }) => {
            assert_eq!(error, "access_denied");
            assert!(description.contains("wrong_number"), "{description}");
        }
        other => panic!("expected access_denied, got {other:?}"),
    }

    // The right number approves the next one.
    let ack = rp.backchannel(params).await.unwrap();
    let request = only_request(&device).await;
    device
        .auth
        .approve(&request, vec!["fpt".into()], ack.number_to_show)
        .await
        .unwrap();
    rp.poll(&ack).await.unwrap();
}

/// The login page's view of its session (`GET /v1/qr-browser` with its browser token).
async fn browser_view(server: &TestServer, token: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}/v1/qr-browser", server.base_url))
        .header("authorization", format!("TesseraBrowser {token}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn qr_wrong_number(backend: Backend) {
    let (server, device) = paired(backend).await;
    tessera_server::admin::set_qr_policy(
        server.server.database(),
        &server.app.application_id,
        QrPolicy::UserApproval,
    )
    .await
    .unwrap();
    server
        .customer
        .set_authentication_settings(&AuthenticationSettings {
            number_matching: NumberMatching::Typed,
            ..AuthenticationSettings::default()
        })
        .await
        .unwrap();
    let created = server
        .customer
        .create_qr_session(&Default::default())
        .await
        .unwrap();
    let qr = device
        .auth
        .authenticate_with_qr(&created.qr_uri)
        .await
        .unwrap();
    let recorded = device
        .auth
        .approve_qr(&qr, &qr.users[0].user_id, vec![])
        .await
        .unwrap();
    assert_eq!(recorded.state, QrSessionState::Verifying);
    // The customer and the login page both have the number to show.
    let status = server
        .customer
        .qr_session(&created.session_id, 0)
        .await
        .unwrap();
    let shown = status.number_to_show.expect("a number while verifying");
    let page = browser_view(&server, &created.browser_token).await;
    assert_eq!(page["state"], "verifying");
    assert_eq!(page["number_to_show"], json!(shown));
    let request = only_request(&device).await;
    assert_eq!(Some(&request.request_id), recorded.follow_up.as_ref());
    assert_eq!(request.number_matching, NumberMatching::Typed);
    let wrong = if shown == 99 { 10 } else { shown + 1 };
    let answer = device
        .auth
        .approve(&request, vec![], Some(wrong))
        .await
        .unwrap();
    assert_eq!(answer.denial_reason, Some(DenialReason::WrongNumber));
    // The session ends denied, with the reason, for the customer and for the page.
    let status = server
        .customer
        .qr_session(&created.session_id, 5)
        .await
        .unwrap();
    assert_eq!(status.state, QrSessionState::Denied);
    assert_eq!(status.denial_reason, Some(DenialReason::WrongNumber));
    assert_eq!(status.number_to_show, None);
    let page = browser_view(&server, &created.browser_token).await;
    assert_eq!(page["state"], "denied");
    assert_eq!(page["denial_reason"], "wrong_number");
}
