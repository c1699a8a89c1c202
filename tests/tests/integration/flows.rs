//! End to end: authentication flows (`/v1/flows`), the state machine a customer backend steps a
//! user through. Push approval with number matching followed live by a poll; denial, retry and
//! cancellation (the pending push is withdrawn from the phone); "use code" with a wrong and a
//! right passcode; device selection with an email code and a resend; mandatory methods and
//! automatic device registration with the real core's mobile payload; expiry of the push and
//! of the flow on a manual clock; racing actions; wrong actions; another application's flow.

use std::sync::Arc;
use std::time::Duration;

use tessera_examples::customer::CustomerApi;
use tessera_protocol::api::{AuthenticationMethod, BackupContacts};
use tessera_protocol::authentication::{
    AuthenticationKind, AuthenticationState, DisplayField, NumberMatching,
};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::flows::{
    CreateFlowRequest, DeviceSelection, FlowAction, FlowActionName, FlowDeviceType, FlowOtpSource,
    FlowResultStatus, FlowState, FlowStatus,
};
use tessera_protocol::ids::UserId;
use tessera_server::{Clock, ManualClock};
use tessera_tests::{Backend, TestDevice, TestServer, on_each_backend};

use crate::otp_backup::{code_in, smtp_server, wait_for_mail, with_smtp};

on_each_backend! {
    a_push_flow_completes_when_the_phone_approves_the_number => push_approved;
    a_denied_push_can_be_retried_and_a_cancel_withdraws_the_push => denied_retry_cancel;
    use_code_takes_the_apps_passcode_and_records_wrong_ones => use_code;
    device_selection_sends_an_email_code_and_resends_it => selection_and_email;
    mandatory_methods_lead_to_automatic_device_registration => setup_and_registration;
    a_timed_out_push_falls_back_to_the_passcode_and_the_flow_expires => expiry;
    racing_actions_move_a_flow_once_and_send_one_push => racing;
    a_flow_is_invisible_to_other_applications => other_application;
    a_trusted_device_authorizes_a_flow_seamlessly_once => seamless;
}

fn user(id: &str) -> UserId {
    id.parse().unwrap()
}

/// `authenticate` with nothing: push to the default device (or let the user pick).
fn plain() -> FlowAction {
    FlowAction::Authenticate {
        mobile_payload: None,
        authorization_payload: None,
    }
}

fn flow_for(id: &str) -> CreateFlowRequest {
    CreateFlowRequest::new(user(id))
}

async fn act(server: &TestServer, flow: &FlowState, action: FlowAction) -> FlowState {
    server
        .customer
        .flow_action(flow.id.as_str(), &action)
        .await
        .unwrap_or_else(|e| panic!("{action:?}: {e}"))
}

async fn paired(
    server: &TestServer,
    id: &str,
) -> (TestDevice, tessera_protocol::ids::EnrollmentId) {
    server.user(id).await;
    let device = TestDevice::new().await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri(id).await, None)
        .await
        .unwrap();
    (device, enrollment.enrollment_id)
}

async fn push_approved(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (device, enrollment) = paired(&server, "alice").await;
    let mut request = flow_for("alice");
    request.number_matching = Some(NumberMatching::Choice);
    request.message = Some("Pay 42.00 EUR to ACME?".into());
    request.fields = vec![DisplayField {
        label: "Amount".into(),
        value: "42.00 EUR".into(),
    }];
    request.admin_message = Some("Approve on your phone".into());
    request.accessing_ip = Some("203.0.113.9".into());
    let flow = server.customer.create_flow(&request).await.unwrap();
    assert_eq!(flow.status, FlowStatus::AuthenticationRequired);
    assert_eq!(
        flow.actions,
        vec![
            FlowActionName::Authenticate,
            FlowActionName::CancelAuthentication
        ]
    );
    assert_eq!(flow.admin_message.as_deref(), Some("Approve on your phone"));

    let waiting = act(&server, &flow, plain()).await;
    assert_eq!(waiting.status, FlowStatus::PushConfirmationWaiting);
    let push = waiting.push.clone().expect("the push");
    assert_eq!(push.enrollment_id, enrollment);
    let number = push.number_to_show.expect("number matching");
    assert_eq!(
        waiting.selected_device.as_deref(),
        Some(format!("mobile:{enrollment}").as_str())
    );

    // A poll is answered the moment the phone approves, not at its deadline.
    let poller = {
        let customer = server.customer.clone();
        let id = flow.id.to_string();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let state = customer
                .flow_action(&id, &FlowAction::Poll { wait: Some(20) })
                .await
                .unwrap();
            (state, started.elapsed())
        })
    };
    let incoming = device
        .pull_request(&enrollment, &push.authentication_id)
        .await;
    assert_eq!(incoming.kind, AuthenticationKind::Transaction);
    assert_eq!(incoming.message, "Pay 42.00 EUR to ACME?");
    device
        .auth
        .approve(&incoming, vec![], Some(number))
        .await
        .unwrap();
    let (done, waited) = poller.await.unwrap();
    assert!(waited < Duration::from_secs(10), "woken late: {waited:?}");
    assert_eq!(done.status, FlowStatus::MfaCompleted);
    assert!(done.actions.is_empty());
    let result = done.result.expect("a result");
    assert_eq!(result.status, FlowResultStatus::Authenticated);
    assert_eq!(
        result.authentication_id,
        Some(push.authentication_id.clone())
    );
    assert_eq!(
        result.attributes["pingid.authentication.type"],
        serde_json::json!("MOBILE_APP_SWIPE")
    );
    assert_eq!(
        result.attributes["pingid.authentication.accessing.device.ip"],
        serde_json::json!("203.0.113.9")
    );

    // Over: every action is refused, naming none.
    let err = server
        .customer
        .flow_action(flow.id.as_str(), &FlowAction::CancelAuthentication {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ActionNotAllowed));
    assert!(err.allowed_actions().is_empty());

    // Every transition is recorded.
    let history = server.customer.flow_events(flow.id.as_str()).await.unwrap();
    let moves: Vec<(&str, FlowStatus)> = history
        .events
        .iter()
        .map(|e| (e.action.as_str(), e.to_status))
        .collect();
    assert_eq!(
        moves,
        vec![
            ("create", FlowStatus::AuthenticationRequired),
            ("authenticate", FlowStatus::PushConfirmationWaiting),
            ("pushAnswered", FlowStatus::MfaCompleted),
        ]
    );
}

async fn denied_retry_cancel(backend: Backend) {
    let server =
        TestServer::start_with(backend, |c| c.max_pending_authentications_per_user = 10).await;
    let (device, enrollment) = paired(&server, "alice").await;
    let flow = server
        .customer
        .create_flow(&flow_for("alice"))
        .await
        .unwrap();

    // A wrong action names the allowed ones.
    let err = server
        .customer
        .flow_action(
            flow.id.as_str(),
            &FlowAction::CheckOtp {
                otp: "123456".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ActionNotAllowed));
    assert_eq!(
        err.allowed_actions(),
        [
            FlowActionName::Authenticate,
            FlowActionName::CancelAuthentication
        ]
    );

    let waiting = act(&server, &flow, plain()).await;
    let push = waiting.push.unwrap();
    let incoming = device
        .pull_request(&enrollment, &push.authentication_id)
        .await;
    device.auth.deny(&incoming, false).await.unwrap();
    let rejected = act(&server, &flow, FlowAction::Poll { wait: Some(10) }).await;
    assert_eq!(rejected.status, FlowStatus::PushConfirmationRejected);
    assert_eq!(
        rejected.actions,
        vec![
            FlowActionName::Authenticate,
            FlowActionName::CancelAuthentication
        ]
    );

    // Retry: a new push to the same phone.
    let again = act(&server, &flow, plain()).await;
    assert_eq!(again.status, FlowStatus::PushConfirmationWaiting);
    let second = again.push.unwrap();
    assert_ne!(second.authentication_id, push.authentication_id);
    device
        .pull_request(&enrollment, &second.authentication_id)
        .await;

    // Cancel: the flow ends and the phone no longer lists the push.
    let canceled = act(&server, &flow, FlowAction::CancelAuthentication {}).await;
    assert_eq!(canceled.status, FlowStatus::Canceled);
    assert_eq!(canceled.result.unwrap().status, FlowResultStatus::Canceled);
    let status = server
        .customer
        .authentication(&second.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Failed);
    assert_eq!(status.failure_reason.as_deref(), Some("canceled"));
    let pending = device.auth.pending_requests().await.unwrap();
    assert!(
        pending
            .iter()
            .all(|r| r.request_id != second.authentication_id)
    );
    // A poll is a read: it answers the flow as it stands, whatever that is.
    let read = act(&server, &flow, FlowAction::Poll { wait: Some(1) }).await;
    assert_eq!(read.status, FlowStatus::Canceled);
}

async fn use_code(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (device, enrollment) = paired(&server, "alice").await;
    let account = device.enrollment_otp_account(&enrollment).await;
    let mut request = flow_for("alice");
    request.use_code = Some(true);
    let flow = server.customer.create_flow(&request).await.unwrap();
    let waiting = act(&server, &flow, plain()).await;
    assert!(waiting.actions.contains(&FlowActionName::UseCode));
    let push = waiting.push.clone().unwrap();
    let typing = act(&server, &flow, FlowAction::UseCode {}).await;
    assert_eq!(typing.status, FlowStatus::OtpRequired);
    assert_eq!(typing.otp.as_ref().unwrap().source, FlowOtpSource::App);
    assert_eq!(
        typing.actions,
        vec![
            FlowActionName::CheckOtp,
            FlowActionName::Poll,
            FlowActionName::CancelAuthentication
        ]
    );

    let t = tessera_protocol::time::now();
    let right = device.otp_code_at(&account, t).await;
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    let err = server
        .customer
        .flow_action(
            flow.id.as_str(),
            &FlowAction::CheckOtp { otp: wrong.into() },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpInvalid));
    assert_eq!(
        server.customer.flow(flow.id.as_str()).await.unwrap().status,
        FlowStatus::OtpRequired
    );
    let done = act(&server, &flow, FlowAction::CheckOtp { otp: right }).await;
    assert_eq!(done.status, FlowStatus::MfaCompleted);
    let result = done.result.unwrap();
    assert_eq!(result.status, FlowResultStatus::Authenticated);
    assert_eq!(
        result.authentication_id,
        Some(push.authentication_id.clone())
    );
    // The passcode answered the push itself.
    let status = server
        .customer
        .authentication(&push.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);

    let history = server.customer.flow_events(flow.id.as_str()).await.unwrap();
    let refused: Vec<_> = history
        .events
        .iter()
        .filter(|e| e.error.is_some())
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].action, "checkOtp");
    assert_eq!(refused[0].error, Some(ErrorCode::OtpInvalid));
    assert_eq!(refused[0].to_status, FlowStatus::OtpRequired);
}

async fn selection_and_email(backend: Backend) {
    let (smtp_url, mails) = smtp_server().await;
    let server = TestServer::start_with(backend, with_smtp(smtp_url)).await;
    let (_device, enrollment) = paired(&server, "alice").await;
    server
        .customer
        .set_backup_contacts(
            "alice",
            &BackupContacts {
                phone: None,
                email: Some("alice@example.com".into()),
            },
        )
        .await
        .unwrap();
    let mut request = flow_for("alice");
    request.email_backup = Some(true);
    request.device_selection = Some(DeviceSelection::PromptUserToSelect);
    let flow = server.customer.create_flow(&request).await.unwrap();
    let choosing = act(&server, &flow, plain()).await;
    assert_eq!(choosing.status, FlowStatus::DeviceSelectionRequired);
    let kinds: Vec<(String, FlowDeviceType, bool)> = choosing
        .devices
        .iter()
        .map(|d| (d.id.clone(), d.device_type, d.default))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (format!("mobile:{enrollment}"), FlowDeviceType::Mobile, true),
            ("email".to_string(), FlowDeviceType::Email, false),
        ]
    );
    assert_eq!(choosing.devices[1].nickname, "a****@example.com");

    let err = server
        .customer
        .flow_action(
            flow.id.as_str(),
            &FlowAction::SelectDevice {
                device_id: "sms".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DeviceNotFound));

    let typing = act(
        &server,
        &flow,
        FlowAction::SelectDevice {
            device_id: "email".into(),
        },
    )
    .await;
    assert_eq!(typing.status, FlowStatus::OtpRequired);
    let otp = typing.otp.clone().unwrap();
    assert_eq!(otp.source, FlowOtpSource::Email);
    assert_eq!(otp.destination.as_deref(), Some("a****@example.com"));
    assert!(typing.actions.contains(&FlowActionName::ResendOtp));
    wait_for_mail(&mails, 1).await;
    let first = code_in(&mails.lock().unwrap()[0].1);

    // Resent: the first code no longer counts for the flow.
    act(&server, &flow, FlowAction::ResendOtp {}).await;
    wait_for_mail(&mails, 2).await;
    let second = code_in(&mails.lock().unwrap()[1].1);
    if first != second {
        let err = server
            .customer
            .flow_action(flow.id.as_str(), &FlowAction::CheckOtp { otp: first })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::OtpInvalid));
    }
    let done = act(&server, &flow, FlowAction::CheckOtp { otp: second }).await;
    assert_eq!(done.status, FlowStatus::MfaCompleted);
    let result = done.result.unwrap();
    assert_eq!(result.status, FlowResultStatus::Authenticated);
    assert_eq!(
        result.attributes["pingid.authentication.type"],
        serde_json::json!("EMAIL")
    );
}

async fn setup_and_registration(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("carol").await;
    let mut request = flow_for("carol");
    request.mandatory_methods = vec![AuthenticationMethod::PingidMobile];
    let flow = server.customer.create_flow(&request).await.unwrap();
    let setup = act(&server, &flow, plain()).await;
    assert_eq!(setup.status, FlowStatus::MfaSetupRequired);
    let mfa = setup.mfa_setup.clone().unwrap();
    assert_eq!(mfa.missing, vec![AuthenticationMethod::PingidMobile]);
    assert!(mfa.done.is_empty());
    // Nothing registered yet: going on finds the same.
    let still = act(&server, &flow, FlowAction::ContinueAuthentication {}).await;
    assert_eq!(still.status, FlowStatus::MfaSetupRequired);

    // Automatic device registration: the app's mobile payload through the flow.
    let phone = TestDevice::new().await;
    let payload = phone
        .auth
        .create_mobile_payload(&server.base_url)
        .await
        .unwrap();
    let pairing = act(
        &server,
        &flow,
        FlowAction::Authenticate {
            mobile_payload: Some(payload.clone()),
            authorization_payload: None,
        },
    )
    .await;
    assert_eq!(pairing.status, FlowStatus::MobilePairingRequired);
    let p = pairing.pairing.clone().unwrap();
    assert_eq!(p.state, "active");
    let enrollment = phone
        .auth
        .complete_relay_pairing(&p.server_payload)
        .await
        .unwrap();
    assert_eq!(enrollment.enrollment_id, p.enrollment_id);
    let done = act(&server, &flow, FlowAction::ContinueAuthentication {}).await;
    assert_eq!(done.status, FlowStatus::MfaCompleted);
    let result = done.result.unwrap();
    assert_eq!(result.status, FlowResultStatus::DevicePaired);
    assert_eq!(result.enrollment_id, Some(p.enrollment_id.clone()));

    // The same payload in another user's flow is a replay.
    server.user("mallory").await;
    let other = server
        .customer
        .create_flow(&flow_for("mallory"))
        .await
        .unwrap();
    let err = server
        .customer
        .flow_action(
            other.id.as_str(),
            &FlowAction::Authenticate {
                mobile_payload: Some(payload),
                authorization_payload: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ReplayedMessage));
    assert_eq!(
        server
            .customer
            .flow(other.id.as_str())
            .await
            .unwrap()
            .status,
        FlowStatus::AuthenticationRequired
    );

    // Now registered, a new flow for carol goes straight to the push.
    let next = server.customer.create_flow(&request).await.unwrap();
    let waiting = act(&server, &next, plain()).await;
    assert_eq!(waiting.status, FlowStatus::PushConfirmationWaiting);
}

async fn expiry(backend: Backend) {
    let clock = ManualClock::new();
    let server = TestServer::start_with(backend, |c| c.clock = Arc::new(clock.clone())).await;
    let (device, enrollment) = paired(&server, "alice").await;
    let account = device.enrollment_otp_account(&enrollment).await;
    let mut request = flow_for("alice");
    request.otp_fallback = Some(true);
    request.expires_in = Some(300);
    let flow = server.customer.create_flow(&request).await.unwrap();
    let waiting = act(&server, &flow, plain()).await;
    assert_eq!(waiting.status, FlowStatus::PushConfirmationWaiting);
    assert!(!waiting.actions.contains(&FlowActionName::UseCode));

    // The push (two minutes) goes unanswered.
    clock.advance(Duration::from_secs(121));
    let timed_out = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(timed_out.status, FlowStatus::PushConfirmationTimedOut);
    assert!(timed_out.actions.contains(&FlowActionName::UseCode));
    let typing = act(&server, &flow, FlowAction::UseCode {}).await;
    assert_eq!(typing.status, FlowStatus::OtpRequired);
    assert!(!typing.actions.contains(&FlowActionName::Poll));
    let code = device.otp_code_at(&account, clock.now()).await;
    let done = act(&server, &flow, FlowAction::CheckOtp { otp: code }).await;
    assert_eq!(done.status, FlowStatus::MfaCompleted);

    // A flow nobody finishes expires.
    let idle = server.customer.create_flow(&request).await.unwrap();
    clock.advance(Duration::from_secs(301));
    let expired = server.customer.flow(idle.id.as_str()).await.unwrap();
    assert_eq!(expired.status, FlowStatus::MfaFailed);
    assert_eq!(expired.result.unwrap().status, FlowResultStatus::Expired);
    let err = server
        .customer
        .flow_action(idle.id.as_str(), &plain())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FlowExpired));
}

async fn racing(backend: Backend) {
    let server =
        TestServer::start_with(backend, |c| c.max_pending_authentications_per_user = 50).await;
    let (device, enrollment) = paired(&server, "alice").await;
    let flow = server
        .customer
        .create_flow(&flow_for("alice"))
        .await
        .unwrap();
    let attempts: Vec<_> = (0..12)
        .map(|_| {
            let customer: CustomerApi = server.customer.clone();
            let id = flow.id.to_string();
            tokio::spawn(async move { customer.flow_action(&id, &plain()).await })
        })
        .collect();
    let mut moved = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(state) => {
                assert_eq!(state.status, FlowStatus::PushConfirmationWaiting);
                moved += 1;
            }
            Err(e) => assert!(
                matches!(
                    e.code(),
                    Some(ErrorCode::Conflict | ErrorCode::ActionNotAllowed)
                ),
                "{e}"
            ),
        }
    }
    assert_eq!(moved, 1, "exactly one authenticate moves the flow");
    let requests = device
        .auth
        .wait_for_requests(&enrollment, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(requests.len(), 1, "exactly one push reached the phone");
    let history = server.customer.flow_events(flow.id.as_str()).await.unwrap();
    assert_eq!(
        history
            .events
            .iter()
            .filter(|e| e.action == "authenticate" && e.error.is_none())
            .count(),
        1
    );
}

async fn other_application(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let flow = server
        .customer
        .create_flow(&flow_for("alice"))
        .await
        .unwrap();
    let other = server
        .server
        .create_application("Another App")
        .await
        .unwrap();
    let stranger = CustomerApi::new(&server.base_url, &other.api_key);
    let err = stranger.flow(flow.id.as_str()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FlowNotFound));
    let err = stranger
        .flow_action(flow.id.as_str(), &FlowAction::CancelAuthentication {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FlowNotFound));
    let err = server.customer.flow("flw_nonsense").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FlowNotFound));
    // A user that does not exist cannot have a flow.
    let err = server
        .customer
        .create_flow(&flow_for("nobody"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UserNotFound));
}

fn authorized(payload: String) -> FlowAction {
    FlowAction::Authenticate {
        mobile_payload: None,
        authorization_payload: Some(payload),
    }
}

/// Submits `payload` to `flow`, checks the flow fell back to a push, and returns the error
/// codes of its refused attempts, in order.
async fn refused_and_asked(
    server: &TestServer,
    flow: &FlowState,
    payload: String,
) -> Vec<ErrorCode> {
    let asked = act(server, flow, authorized(payload)).await;
    assert_eq!(asked.status, FlowStatus::PushConfirmationWaiting);
    server
        .customer
        .flow_events(flow.id.as_str())
        .await
        .unwrap()
        .events
        .into_iter()
        .filter_map(|e| e.error)
        .collect()
}

async fn seamless(backend: Backend) {
    let clock = ManualClock::new();
    let server = TestServer::start_with(backend, |c| {
        c.clock = Arc::new(clock.clone());
        c.max_pending_authentications_per_user = 20;
    })
    .await;
    let (phone, enrollment) = paired(&server, "alice").await;
    let (other, other_enrollment) = paired(&server, "bob").await;

    // The app signs the flow's nonce with its enrollment: done, nothing is pushed.
    let flow = server
        .customer
        .create_flow(&flow_for("alice"))
        .await
        .unwrap();
    let payload = phone
        .auth
        .create_authorization_payload(&enrollment, &flow.authorization_nonce)
        .await
        .unwrap();
    let done = act(&server, &flow, authorized(payload.clone())).await;
    assert_eq!(done.status, FlowStatus::MfaCompleted);
    let result = done.result.unwrap();
    assert_eq!(result.status, FlowResultStatus::Authenticated);
    assert_eq!(result.enrollment_id, Some(enrollment.clone()));
    assert_eq!(result.authentication_id, None);
    assert_eq!(
        result.attributes["pingid.authentication.type"],
        serde_json::json!("DEVICE_AUTHORIZATION")
    );
    assert!(phone.auth.pending_requests().await.unwrap().is_empty());

    // The same payload in another flow is bound to the first one: the flow falls back to a push.
    let second = server
        .customer
        .create_flow(&flow_for("alice"))
        .await
        .unwrap();
    assert_eq!(
        refused_and_asked(&server, &second, payload).await,
        vec![ErrorCode::ResponseMismatch]
    );

    // Another user's device cannot authorize alice's flow.
    let third = server
        .customer
        .create_flow(&flow_for("alice"))
        .await
        .unwrap();
    let foreign = other
        .auth
        .create_authorization_payload(&other_enrollment, &third.authorization_nonce)
        .await
        .unwrap();
    assert_eq!(
        refused_and_asked(&server, &third, foreign).await,
        vec![ErrorCode::DeviceNotFound]
    );

    // A payload whose signature was altered is refused.
    let fourth = server
        .customer
        .create_flow(&flow_for("alice"))
        .await
        .unwrap();
    let genuine = phone
        .auth
        .create_authorization_payload(&enrollment, &fourth.authorization_nonce)
        .await
        .unwrap();
    let mut forged = genuine.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        refused_and_asked(&server, &fourth, String::from_utf8(forged).unwrap()).await,
        vec![ErrorCode::InvalidSignature]
    );

    // A payload past its minute is stale (the server's clock moves on; the phone signs with the
    // real time, which has run on since the server started: two minutes is past it either way).
    let fifth = server
        .customer
        .create_flow(&flow_for("alice"))
        .await
        .unwrap();
    let late = phone
        .auth
        .create_authorization_payload(&enrollment, &fifth.authorization_nonce)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(120));
    assert_eq!(
        refused_and_asked(&server, &fifth, late).await,
        vec![ErrorCode::StaleMessage]
    );
}
