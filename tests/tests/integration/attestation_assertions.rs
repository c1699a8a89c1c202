//! App Attest assertions on answers, end to end: an iOS device App Attested at pairing (under a
//! TEST root, as an operator's `--attestation-root`) proves each answer with an assertion of its
//! App Attest key (the test asserter makes real ones: CBOR, ECDSA P-256), the server verifies it
//! and takes its counter atomically with the answer; replays, other keys, garbage and missing
//! assertions are refused with typed errors, audited, and leave the request pending.

use std::sync::Arc;

use serde_json::{Value, json};
use tessera_protocol::api::{
    AppleAppIdentity, AttestationMode, AttestationSettings, CreateQrSession,
};
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::EnrollmentId;
use tessera_protocol::policy::PolicyDocument;
use tessera_protocol::qr::QrSessionState;
use tessera_tests::attestation::{self, TestCa};
use tessera_tests::{
    AssertionMode, TEST_TEAM_ID, TestAppAttester, TestDevice, TestServer, ask, on_each_backend,
};

on_each_backend! {
    an_assertion_is_accepted_and_its_counter_rises => accepted_and_rising;
    a_replayed_counter_is_refused_and_nothing_is_written => replay_refused;
    another_keys_assertion_and_garbage_are_refused_with_typed_errors => other_key_and_garbage;
    require_refuses_an_answer_without_an_assertion => missing_under_require;
    a_policy_asks_for_assertions_under_report => policy_asks_for_it;
    of_two_answers_with_one_counter_exactly_one_is_accepted => concurrent_same_counter;
    a_qr_answer_with_an_assertion_is_accepted_and_shares_the_counter_with_push_answers => qr_shared_counter;
    require_refuses_a_qr_answer_without_an_assertion => qr_missing_under_require;
    a_replayed_counter_on_a_qr_answer_is_refused_and_nothing_is_written => qr_replay_refused;
    a_policy_asks_qr_answers_for_assertions_under_report => qr_policy_asks_for_it;
    of_qr_and_push_answers_with_one_counter_exactly_one_is_accepted => qr_concurrent_same_counter;
    require_refuses_a_seamless_authorization_and_the_flow_asks_by_push => seamless_under_require;
}

fn settings(mode: AttestationMode) -> AttestationSettings {
    AttestationSettings {
        mode,
        android_apps: Vec::new(),
        apple_apps: vec![AppleAppIdentity {
            team_id: TEST_TEAM_ID.into(),
            bundle_id: attestation::TEST_PACKAGE.into(),
            development: false,
        }],
    }
}

/// A server trusting `root` with the application's attestation `mode`, and a user with an App
/// Attested iPhone paired.
async fn paired(
    backend: tessera_tests::Backend,
    mode: AttestationMode,
) -> (
    TestServer,
    String,
    TestDevice,
    Arc<TestAppAttester>,
    EnrollmentId,
) {
    let root = Arc::new(TestCa::root("Test App Attestation Root"));
    let pem = root.pem.clone();
    let server = TestServer::start_with(backend, move |config| {
        config.attestation_extra_roots = vec![pem];
    })
    .await;
    server
        .customer
        .set_attestation_settings(&settings(mode))
        .await
        .expect("set attestation settings");
    let user = server.user("ios-user").await;
    let uri = server.pairing_uri(&user).await;
    let (device, attester) = TestDevice::app_attesting(root).await;
    let enrollment = device.auth.pair(&uri, None).await.expect("pair");
    let devices = server.customer.list_devices(&user).await.unwrap().devices;
    assert!(
        devices[0].attestation.as_ref().is_some_and(|a| a.attested),
        "the pairing was App Attested"
    );
    (server, user, device, attester, enrollment.enrollment_id)
}

/// Asks `user` for an approval and has `device` approve it; the result of the answer and the
/// authentication's id.
async fn approve(
    server: &TestServer,
    user: &str,
    device: &TestDevice,
    enrollment: &EnrollmentId,
) -> (
    Result<tessera_core::ResponseRecorded, tessera_core::CoreError>,
    tessera_protocol::authentication::AuthenticationId,
) {
    let created = server
        .customer
        .create_authentication(user, &ask(AuthenticationKind::Approval))
        .await
        .expect("create");
    let request = device
        .pull_request(enrollment, &created.authentication_id)
        .await;
    (
        device.auth.approve(&request, Vec::new(), None).await,
        created.authentication_id,
    )
}

async fn state_of(
    server: &TestServer,
    id: &tessera_protocol::authentication::AuthenticationId,
) -> AuthenticationState {
    server
        .customer
        .authentication(id, 0)
        .await
        .expect("status")
        .state
}

async fn refusals(server: &TestServer) -> Vec<Value> {
    let page = server
        .audit("kind=app_attest.assertion_refused&limit=200")
        .await;
    page.records.into_iter().map(|r| r.details).collect()
}

/// Asserts that exactly `count` answers were refused so far, each with `code`.
async fn assert_refused(server: &TestServer, count: usize, code: &str) {
    let refused = refusals(server).await;
    assert_eq!(refused.len(), count, "{refused:?}");
    assert!(
        refused.iter().all(|d| d["code"] == json!(code)),
        "{refused:?}"
    );
}

async fn accepted_and_rising(backend: tessera_tests::Backend) {
    let (server, user, device, attester, enrollment) =
        paired(backend, AttestationMode::Require).await;
    for expected_counter in 1..=3 {
        let (answered, id) = approve(&server, &user, &device, &enrollment).await;
        let recorded = answered.expect("an asserted answer is accepted");
        assert_eq!(recorded.state, AuthenticationState::Approved);
        assert_eq!(attester.last_counter(), expected_counter);
        let status = server.customer.authentication(&id, 0).await.unwrap();
        assert_eq!(
            status.attributes["pingid.authentication.authenticating.device.attested"],
            json!(true)
        );
    }
    assert!(refusals(&server).await.is_empty());
}

async fn replay_refused(backend: tessera_tests::Backend) {
    let (server, user, device, attester, enrollment) =
        paired(backend, AttestationMode::Require).await;
    let (answered, _) = approve(&server, &user, &device, &enrollment).await;
    answered.expect("counter 1");
    let (answered, _) = approve(&server, &user, &device, &enrollment).await;
    answered.expect("counter 2");
    // The same counter again, and a lower one: refused, and the request stays pending.
    for replayed in [2, 1] {
        attester.set_mode(AssertionMode::FixedCounter(replayed));
        let (answered, id) = approve(&server, &user, &device, &enrollment).await;
        let err = answered.expect_err("a replayed counter is refused");
        assert_eq!(
            err.server_code(),
            Some(ErrorCode::AppAttestCounterReplay),
            "{err}"
        );
        assert_eq!(state_of(&server, &id).await, AuthenticationState::Pending);
        // The genuine next assertion still answers it: nothing was taken by the refusal.
        attester.set_mode(AssertionMode::Genuine);
        let request = device.pull_request(&enrollment, &id).await;
        let recorded = device
            .auth
            .approve(&request, Vec::new(), None)
            .await
            .expect("the next counter is accepted");
        assert_eq!(recorded.state, AuthenticationState::Approved);
    }
    assert_refused(&server, 2, "app_attest_counter_replay").await;
}

async fn other_key_and_garbage(backend: tessera_tests::Backend) {
    let (server, user, device, attester, enrollment) =
        paired(backend, AttestationMode::Report).await;
    for mode in [AssertionMode::OtherKey, AssertionMode::Garbage] {
        attester.set_mode(mode);
        let (answered, id) = approve(&server, &user, &device, &enrollment).await;
        let err = answered.expect_err("refused");
        assert_eq!(
            err.server_code(),
            Some(ErrorCode::AppAttestAssertionInvalid),
            "{mode:?}: {err}"
        );
        assert_eq!(state_of(&server, &id).await, AuthenticationState::Pending);
    }
    assert_refused(&server, 2, "app_attest_assertion_invalid").await;
    // Back to genuine assertions: accepted.
    attester.set_mode(AssertionMode::Genuine);
    let (answered, _) = approve(&server, &user, &device, &enrollment).await;
    answered.expect("genuine");
}

async fn missing_under_require(backend: tessera_tests::Backend) {
    let (server, user, device, _attester, enrollment) =
        paired(backend, AttestationMode::Require).await;
    device.auth.set_app_attest_asserter(None);
    let (answered, id) = approve(&server, &user, &device, &enrollment).await;
    let err = answered.expect_err("refused without an assertion");
    assert_eq!(
        err.server_code(),
        Some(ErrorCode::AppAttestAssertionRequired),
        "{err}"
    );
    assert_eq!(state_of(&server, &id).await, AuthenticationState::Pending);
    let refused = refusals(&server).await;
    assert_eq!(refused[0]["code"], json!("app_attest_assertion_required"));
}

async fn policy_asks_for_it(backend: tessera_tests::Backend) {
    let (server, user, device, attester, enrollment) =
        paired(backend, AttestationMode::Report).await;
    // Under `report` an answer without an assertion is accepted...
    device.auth.set_app_attest_asserter(None);
    let (answered, _) = approve(&server, &user, &device, &enrollment).await;
    answered.expect("report does not demand assertions");
    // ...until the policy's `require` asks for one.
    let policy: PolicyDocument = serde_json::from_value(json!({
        "rules": [],
        "default": {"action": "require", "methods": ["mobile_push"], "app_attest_assertion": true}
    }))
    .unwrap();
    server.customer.set_policy(&policy).await.expect("policy");
    let (answered, id) = approve(&server, &user, &device, &enrollment).await;
    let err = answered.expect_err("the policy asks for an assertion");
    assert_eq!(
        err.server_code(),
        Some(ErrorCode::AppAttestAssertionRequired),
        "{err}"
    );
    let status = server.customer.authentication(&id, 0).await.unwrap();
    assert_eq!(status.state, AuthenticationState::Pending);
    assert!(
        status
            .policy
            .as_ref()
            .is_some_and(|p| p.app_attest_assertion)
    );
    // With the asserter back, the same request is answered.
    device.auth.set_app_attest_asserter(Some(attester.clone()));
    let request = device.pull_request(&enrollment, &id).await;
    device
        .auth
        .approve(&request, Vec::new(), None)
        .await
        .expect("asserted");
    // A device without App Attest (a plain software key store) is unaffected by the policy.
    let plain = TestDevice::new().await;
    let other_user = server.user("android-user").await;
    plain
        .auth
        .pair(&server.pairing_uri(&other_user).await, None)
        .await
        .expect("pair");
    let enrollment = plain.auth.enrollments().await[0].enrollment_id.clone();
    let (answered, _) = approve(&server, &other_user, &plain, &enrollment).await;
    answered.expect("no App Attest key: no assertion asked");
}

async fn concurrent_same_counter(backend: tessera_tests::Backend) {
    let (server, user, device, attester, enrollment) =
        paired(backend, AttestationMode::Require).await;
    let mut requests = Vec::new();
    for _ in 0..2 {
        let created = server
            .customer
            .create_authentication(&user, &ask(AuthenticationKind::Approval))
            .await
            .expect("create");
        requests.push(
            device
                .pull_request(&enrollment, &created.authentication_id)
                .await,
        );
    }
    // Both answers carry counter 7: each verifies against the stored 0, only one may take it.
    attester.set_mode(AssertionMode::FixedCounter(7));
    let (first, second) = tokio::join!(
        device.auth.approve(&requests[0], Vec::new(), None),
        device.auth.approve(&requests[1], Vec::new(), None),
    );
    let results = [first, second];
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(accepted, 1, "{results:?}");
    let refused = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert_eq!(
        refused.server_code(),
        Some(ErrorCode::AppAttestCounterReplay)
    );
    let mut states = Vec::new();
    for request in &requests {
        states.push(state_of(&server, &request.request_id).await);
    }
    states.sort_by_key(|s| s.as_str());
    assert_eq!(
        states,
        vec![AuthenticationState::Approved, AuthenticationState::Pending]
    );
}

// ---------------------------------------------------------------------------------------------
// QR login answers: the same assertions, the same counter as push answers.

/// A QR session the device has scanned, and the session's id.
async fn scanned_qr(
    server: &TestServer,
    device: &TestDevice,
) -> (
    tessera_core::QrAuthentication,
    tessera_protocol::qr::QrSessionId,
) {
    let created = server
        .customer
        .create_qr_session(&CreateQrSession::default())
        .await
        .expect("create a QR session");
    let qr = device
        .auth
        .authenticate_with_qr(&created.qr_uri)
        .await
        .expect("scan");
    (qr, created.session_id)
}

async fn qr_state(server: &TestServer, id: &tessera_protocol::qr::QrSessionId) -> QrSessionState {
    server
        .customer
        .qr_session(id, 0)
        .await
        .expect("QR status")
        .state
}

async fn approve_qr(
    device: &TestDevice,
    qr: &tessera_core::QrAuthentication,
) -> Result<tessera_core::QrAnswerRecorded, tessera_core::CoreError> {
    device
        .auth
        .approve_qr(qr, &qr.users[0].user_id, Vec::new())
        .await
}

async fn qr_shared_counter(backend: tessera_tests::Backend) {
    let (server, user, device, attester, enrollment) =
        paired(backend, AttestationMode::Require).await;
    // A push answer, then a QR answer, then a push answer: one counter, each one higher.
    let (answered, _) = approve(&server, &user, &device, &enrollment).await;
    answered.expect("push answer, counter 1");
    assert_eq!(attester.last_counter(), 1);
    let (qr, session) = scanned_qr(&server, &device).await;
    let recorded = approve_qr(&device, &qr)
        .await
        .expect("an asserted QR answer is accepted");
    assert_eq!(recorded.state, QrSessionState::Approved);
    assert_eq!(attester.last_counter(), 2);
    assert_eq!(qr_state(&server, &session).await, QrSessionState::Approved);
    let (answered, _) = approve(&server, &user, &device, &enrollment).await;
    answered.expect("push answer, counter 3");
    assert_eq!(attester.last_counter(), 3);
    // The QR answer's counter was stored: a QR answer with it again is a replay.
    attester.set_mode(AssertionMode::FixedCounter(2));
    let (qr, session) = scanned_qr(&server, &device).await;
    let err = approve_qr(&device, &qr).await.expect_err("counter 2 again");
    assert_eq!(
        err.server_code(),
        Some(ErrorCode::AppAttestCounterReplay),
        "{err}"
    );
    assert_eq!(qr_state(&server, &session).await, QrSessionState::Scanned);
    let refused = refusals(&server).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
}

async fn qr_missing_under_require(backend: tessera_tests::Backend) {
    let (server, _user, device, attester, _enrollment) =
        paired(backend, AttestationMode::Require).await;
    device.auth.set_app_attest_asserter(None);
    let (qr, session) = scanned_qr(&server, &device).await;
    let err = approve_qr(&device, &qr)
        .await
        .expect_err("refused without an assertion");
    assert_eq!(
        err.server_code(),
        Some(ErrorCode::AppAttestAssertionRequired),
        "{err}"
    );
    assert_eq!(qr_state(&server, &session).await, QrSessionState::Scanned);
    assert_refused(&server, 1, "app_attest_assertion_required").await;
    // A denial is an answer too: it needs the assertion as well.
    let err = device
        .auth
        .deny_qr(&qr, &qr.users[0].user_id, false)
        .await
        .expect_err("a denial without an assertion is refused too");
    assert_eq!(
        err.server_code(),
        Some(ErrorCode::AppAttestAssertionRequired)
    );
    // With the asserter back, the same session is answered.
    device.auth.set_app_attest_asserter(Some(attester.clone()));
    let recorded = approve_qr(&device, &qr).await.expect("asserted");
    assert_eq!(recorded.state, QrSessionState::Approved);
}

async fn qr_replay_refused(backend: tessera_tests::Backend) {
    let (server, user, device, attester, enrollment) =
        paired(backend, AttestationMode::Require).await;
    let (answered, _) = approve(&server, &user, &device, &enrollment).await;
    answered.expect("counter 1");
    let (qr, _) = scanned_qr(&server, &device).await;
    approve_qr(&device, &qr).await.expect("counter 2");
    // The same counter again, and a lower one: refused, and the session stays scanned.
    for replayed in [2, 1] {
        attester.set_mode(AssertionMode::FixedCounter(replayed));
        let (qr, session) = scanned_qr(&server, &device).await;
        let err = approve_qr(&device, &qr)
            .await
            .expect_err("a replayed counter is refused");
        assert_eq!(
            err.server_code(),
            Some(ErrorCode::AppAttestCounterReplay),
            "{err}"
        );
        assert_eq!(qr_state(&server, &session).await, QrSessionState::Scanned);
        // The genuine next assertion still answers it: nothing was taken by the refusal.
        attester.set_mode(AssertionMode::Genuine);
        let recorded = approve_qr(&device, &qr)
            .await
            .expect("the next counter is accepted");
        assert_eq!(recorded.state, QrSessionState::Approved);
    }
    assert_refused(&server, 2, "app_attest_counter_replay").await;
}

async fn qr_policy_asks_for_it(backend: tessera_tests::Backend) {
    let (server, _user, device, attester, _enrollment) =
        paired(backend, AttestationMode::Report).await;
    // Under `report` a QR answer without an assertion is accepted...
    device.auth.set_app_attest_asserter(None);
    let (qr, _) = scanned_qr(&server, &device).await;
    approve_qr(&device, &qr)
        .await
        .expect("report does not demand assertions");
    // ...until the policy's `require` asks for one (decided at the scan).
    let policy: PolicyDocument = serde_json::from_value(json!({
        "rules": [],
        "default": {"action": "require", "methods": ["mobile_push"], "app_attest_assertion": true}
    }))
    .unwrap();
    server.customer.set_policy(&policy).await.expect("policy");
    let (qr, session) = scanned_qr(&server, &device).await;
    let err = approve_qr(&device, &qr)
        .await
        .expect_err("the policy asks for an assertion");
    assert_eq!(
        err.server_code(),
        Some(ErrorCode::AppAttestAssertionRequired),
        "{err}"
    );
    assert_eq!(qr_state(&server, &session).await, QrSessionState::Scanned);
    device.auth.set_app_attest_asserter(Some(attester.clone()));
    approve_qr(&device, &qr).await.expect("asserted");
    // A rule without `app_attest_assertion` asks nothing.
    let policy: PolicyDocument = serde_json::from_value(json!({
        "rules": [],
        "default": {"action": "require", "methods": ["mobile_push"]}
    }))
    .unwrap();
    server.customer.set_policy(&policy).await.expect("policy");
    device.auth.set_app_attest_asserter(None);
    let (qr, _) = scanned_qr(&server, &device).await;
    approve_qr(&device, &qr)
        .await
        .expect("this policy does not ask for an assertion");
}

async fn qr_concurrent_same_counter(backend: tessera_tests::Backend) {
    let (server, user, device, attester, enrollment) =
        paired(backend, AttestationMode::Require).await;
    let (first_qr, first_session) = scanned_qr(&server, &device).await;
    let (second_qr, second_session) = scanned_qr(&server, &device).await;
    let created = server
        .customer
        .create_authentication(&user, &ask(AuthenticationKind::Approval))
        .await
        .expect("create");
    let request = device
        .pull_request(&enrollment, &created.authentication_id)
        .await;
    // Three answers carry counter 7: each verifies against the stored 0, only one may take it.
    attester.set_mode(AssertionMode::FixedCounter(7));
    let (first, second, push) = tokio::join!(
        approve_qr(&device, &first_qr),
        approve_qr(&device, &second_qr),
        device.auth.approve(&request, Vec::new(), None),
    );
    let accepted = [first.is_ok(), second.is_ok(), push.is_ok()];
    let codes = [
        first.as_ref().err().and_then(|e| e.server_code()),
        second.as_ref().err().and_then(|e| e.server_code()),
        push.as_ref().err().and_then(|e| e.server_code()),
    ];
    assert_eq!(
        accepted.iter().filter(|a| **a).count(),
        1,
        "{first:?} {second:?} {push:?}"
    );
    for (ok, code) in accepted.iter().zip(codes) {
        if !ok {
            assert_eq!(code, Some(ErrorCode::AppAttestCounterReplay));
        }
    }
    // Exactly the accepted one was written.
    let written = [
        qr_state(&server, &first_session).await == QrSessionState::Approved,
        qr_state(&server, &second_session).await == QrSessionState::Approved,
        state_of(&server, &created.authentication_id).await == AuthenticationState::Approved,
    ];
    assert_eq!(written, accepted);
    assert_eq!(refusals(&server).await.len(), 2);
}

/// A device authorization payload carries no App Attest assertion: under `require` an App
/// Attested device's payload is refused (typed, in the flow's history) and the flow falls back
/// to a push, whose answer carries one; under `report` the same payload completes the flow.
async fn seamless_under_require(backend: tessera_tests::Backend) {
    use tessera_protocol::flows::{CreateFlowRequest, FlowAction, FlowStatus};
    use tessera_protocol::ids::UserId;

    let (server, user, device, _attester, enrollment) =
        paired(backend, AttestationMode::Require).await;
    let authorize = |flow: tessera_protocol::flows::FlowState| {
        let device = &device;
        let enrollment = &enrollment;
        let server = &server;
        async move {
            let payload = device
                .auth
                .create_authorization_payload(enrollment, &flow.authorization_nonce)
                .await
                .expect("authorization payload");
            server
                .customer
                .flow_action(
                    flow.id.as_str(),
                    &FlowAction::Authenticate {
                        mobile_payload: None,
                        authorization_payload: Some(payload),
                    },
                )
                .await
                .expect("the flow answers")
        }
    };
    let request = CreateFlowRequest::new(user.parse::<UserId>().expect("user id"));
    let flow = server.customer.create_flow(&request).await.unwrap();
    let id = flow.id.clone();
    let asked = authorize(flow).await;
    assert_eq!(asked.status, FlowStatus::PushConfirmationWaiting);
    let codes: Vec<ErrorCode> = server
        .customer
        .flow_events(id.as_str())
        .await
        .unwrap()
        .events
        .into_iter()
        .filter_map(|e| e.error)
        .collect();
    assert_eq!(codes, vec![ErrorCode::AppAttestAssertionRequired]);

    // Under `report` the same kind of payload completes a flow with no push.
    server
        .customer
        .set_attestation_settings(&settings(AttestationMode::Report))
        .await
        .expect("set attestation settings");
    let flow = server.customer.create_flow(&request).await.unwrap();
    let done = authorize(flow).await;
    assert_eq!(done.status, FlowStatus::MfaCompleted);
}
