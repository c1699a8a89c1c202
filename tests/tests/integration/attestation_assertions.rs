//! App Attest assertions on answers, end to end: an iOS device App Attested at pairing (under a
//! TEST root, as an operator's `--attestation-root`) proves each answer with an assertion of its
//! App Attest key (the test asserter makes real ones: CBOR, ECDSA P-256), the server verifies it
//! and takes its counter atomically with the answer; replays, other keys, garbage and missing
//! assertions are refused with typed errors, audited, and leave the request pending.

use std::sync::Arc;

use serde_json::{Value, json};
use tessera_protocol::api::{AppleAppIdentity, AttestationMode, AttestationSettings};
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::events::AuditPage;
use tessera_protocol::ids::EnrollmentId;
use tessera_protocol::policy::PolicyDocument;
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
    let response = reqwest::Client::new()
        .get(format!(
            "{}/v1/audit?kind=app_attest.assertion_refused&limit=200",
            server.base_url
        ))
        .bearer_auth(&server.app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let page: AuditPage = response.json().await.unwrap();
    page.records.into_iter().map(|r| r.details).collect()
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
    let refused = refusals(&server).await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|d| d["code"] == json!("app_attest_counter_replay"))
    );
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
    let refused = refusals(&server).await;
    assert_eq!(refused.len(), 2);
    assert!(
        refused
            .iter()
            .all(|d| d["code"] == json!("app_attest_assertion_invalid"))
    );
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
