//! End to end over HTTP with the real core: automatic device registration in a flow when the
//! application verifies new devices but the user's other factor is a phone number or an email
//! address, not a paired device (seed 001: SMS, voice and email devices may approve a new
//! device pairing). The flow holds the new device `pending_verification`, sends a passcode
//! (here by SMS to a local provider webhook), and `checkOtp` approves the device; wrong
//! passcodes, even in a concurrent burst, are bounded by the user's OTP failure limit, and a
//! locked, cancelled or expired flow rejects the held device for good.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use serde_json::Value;
use tessera_protocol::api::{BackupContacts, EnrollmentState};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::flows::{
    CreateFlowRequest, FlowAction, FlowActionName, FlowOtpSource, FlowResultStatus, FlowState,
    FlowStatus,
};
use tessera_server::ManualClock;
use tessera_server::store::applications::AdditionalDevicePolicy;
use tessera_tests::{Backend, TestDevice, TestServer, on_each_backend};

on_each_backend! {
    a_new_device_is_approved_by_a_passcode_sent_by_sms => approved_by_sms;
    wrong_passcodes_are_bounded_and_a_lock_rejects_the_new_device => bounded_and_locked;
    a_held_new_device_is_rejected_when_the_flow_expires => expires_with_flow;
    without_a_phone_or_email_the_first_device_pairs_as_before => no_contact;
}

/// A local SMS provider: keeps the body of every request (the code is in `code`).
pub(crate) async fn sms_provider() -> (String, Arc<Mutex<Vec<Value>>>) {
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let kept = Arc::clone(&bodies);
    let app = axum::Router::new().route(
        "/sms",
        axum::routing::post(move |Json(body): Json<Value>| {
            let kept = Arc::clone(&kept);
            async move {
                kept.lock().unwrap().push(body);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sms", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, bodies)
}

/// A server whose application verifies new devices and sends SMS codes to `provider`; the
/// user `carol` has a phone number and no device.
pub(crate) async fn setup(server: &TestServer, provider: &str, phone: bool) {
    let db = server.server.database();
    let app = &server.app.application_id;
    tessera_server::admin::set_additional_device_policy(
        db,
        app,
        AdditionalDevicePolicy::VerifyWithPrimary,
    )
    .await
    .unwrap();
    tessera_server::admin::set_sms_webhook(db, app, Some(provider), true)
        .await
        .unwrap();
    server.user("carol").await;
    if phone {
        server
            .customer
            .set_backup_contacts(
                "carol",
                &BackupContacts {
                    phone: Some("+15557654321".into()),
                    email: None,
                },
            )
            .await
            .unwrap();
    }
}

fn flow_request(expires_in: Option<u32>) -> CreateFlowRequest {
    let mut request = CreateFlowRequest::new("carol".parse().unwrap());
    request.sms_backup = Some(true);
    request.expires_in = expires_in;
    request
}

async fn act(server: &TestServer, flow: &FlowState, action: FlowAction) -> FlowState {
    server
        .customer
        .flow_action(flow.id.as_str(), &action)
        .await
        .unwrap()
}

/// The app's mobile payload through the flow (automatic device registration).
async fn register(server: &TestServer, flow: &FlowState) -> (TestDevice, FlowState) {
    let phone = TestDevice::new().await;
    let payload = phone
        .auth
        .create_mobile_payload(&server.base_url)
        .await
        .unwrap();
    let pairing = act(
        server,
        flow,
        FlowAction::Authenticate {
            mobile_payload: Some(payload),
            authorization_payload: None,
        },
    )
    .await;
    (phone, pairing)
}

pub(crate) fn last_code(sent: &Arc<Mutex<Vec<Value>>>) -> String {
    let sent = sent.lock().unwrap();
    sent.last().expect("a code was sent")["code"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn device_state(server: &TestServer, flow: &FlowState) -> Option<EnrollmentState> {
    let enrollment = flow.pairing.as_ref().unwrap().enrollment_id.clone();
    server
        .customer
        .list_devices("carol")
        .await
        .unwrap()
        .devices
        .into_iter()
        .find(|d| d.enrollment_id == enrollment)
        .map(|d| d.status)
}

async fn approved_by_sms(backend: Backend) {
    let (provider, sent) = sms_provider().await;
    let server = TestServer::start(backend).await;
    setup(&server, &provider, true).await;
    let flow = server
        .customer
        .create_flow(&flow_request(None))
        .await
        .unwrap();
    let (phone, pairing) = register(&server, &flow).await;
    assert_eq!(pairing.status, FlowStatus::MobilePairingRequired);
    let p = pairing.pairing.clone().unwrap();
    assert_eq!(p.state, "pending_verification");
    let otp = pairing.otp.clone().expect("a passcode is expected");
    assert_eq!(otp.source, FlowOtpSource::Sms);
    assert_eq!(otp.destination.as_deref(), Some("+*******4321"));
    for action in [FlowActionName::CheckOtp, FlowActionName::ResendOtp] {
        assert!(pairing.actions.contains(&action), "{:?}", pairing.actions);
    }
    assert_eq!(sent.lock().unwrap().len(), 1);
    assert_eq!(sent.lock().unwrap()[0]["to"], "+15557654321");
    // The core completes its side; the device stays held until the passcode.
    phone
        .auth
        .complete_relay_pairing(&p.server_payload)
        .await
        .unwrap();
    assert_eq!(
        device_state(&server, &pairing).await,
        Some(EnrollmentState::PendingVerification)
    );
    let err = server
        .customer
        .flow_action(flow.id.as_str(), &FlowAction::ContinueAuthentication {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Conflict));

    // A wrong passcode: typed error, recorded, nothing moves.
    let err = server
        .customer
        .flow_action(
            flow.id.as_str(),
            &FlowAction::CheckOtp {
                otp: "000000".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpInvalid));
    // A new code replaces the first one.
    let first = last_code(&sent);
    act(&server, &flow, FlowAction::ResendOtp {}).await;
    let code = last_code(&sent);
    if first != code {
        let err = server
            .customer
            .flow_action(flow.id.as_str(), &FlowAction::CheckOtp { otp: first })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::OtpInvalid));
    }
    let approved = act(&server, &flow, FlowAction::CheckOtp { otp: code }).await;
    assert_eq!(approved.status, FlowStatus::MobilePairingRequired);
    assert_eq!(approved.pairing.as_ref().unwrap().state, "active");
    assert!(approved.otp.is_none());
    assert!(!approved.actions.contains(&FlowActionName::CheckOtp));
    assert_eq!(
        device_state(&server, &pairing).await,
        Some(EnrollmentState::Active)
    );
    let done = act(&server, &flow, FlowAction::ContinueAuthentication {}).await;
    assert_eq!(done.status, FlowStatus::MfaCompleted);
    let result = done.result.unwrap();
    assert_eq!(result.status, FlowResultStatus::DevicePaired);
    assert_eq!(result.enrollment_id.as_ref(), Some(&p.enrollment_id));
    let history = server.customer.flow_events(flow.id.as_str()).await.unwrap();
    assert!(
        history
            .events
            .iter()
            .any(|e| e.action == "checkOtp" && e.error == Some(ErrorCode::OtpInvalid)),
        "{history:?}"
    );
}

async fn bounded_and_locked(backend: Backend) {
    let (provider, sent) = sms_provider().await;
    let server = TestServer::start(backend).await;
    setup(&server, &provider, true).await;
    let flow = server
        .customer
        .create_flow(&flow_request(None))
        .await
        .unwrap();
    let (_phone, pairing) = register(&server, &flow).await;
    let right = last_code(&sent);
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };

    // Bursts of wrong passcodes until the user is locked out: every try is taken atomically
    // against the user's OTP failure limit before a code is compared, so fewer than the limit
    // are refused as wrong and the one reaching it locks.
    let mut wrong_ones = 0;
    let mut locked = false;
    while !locked {
        let burst = (0..6).map(|_| {
            let customer = server.customer.clone();
            let id = flow.id.to_string();
            tokio::spawn(async move {
                customer
                    .flow_action(&id, &FlowAction::CheckOtp { otp: wrong.into() })
                    .await
            })
        });
        for answer in futures::future::join_all(burst).await {
            let err = answer.unwrap().unwrap_err();
            match err.code() {
                Some(ErrorCode::OtpInvalid) => wrong_ones += 1,
                Some(ErrorCode::OtpLocked) => locked = true,
                Some(ErrorCode::Conflict | ErrorCode::ActionNotAllowed) => {}
                other => panic!("unexpected refusal {other:?}: {err:?}"),
            }
        }
    }
    let limit = server.config().otp_max_failures as usize;
    assert!(
        wrong_ones < limit,
        "{wrong_ones} codes refused as wrong, limit {limit}"
    );
    let ended = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(ended.status, FlowStatus::MfaFailed);
    assert_eq!(ended.result.unwrap().status, FlowResultStatus::OtpLocked);
    assert_eq!(
        device_state(&server, &pairing).await,
        None,
        "the held device is rejected (and no longer listed)"
    );
    // The right code is of no use any more.
    let err = server
        .customer
        .flow_action(flow.id.as_str(), &FlowAction::CheckOtp { otp: right })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ActionNotAllowed));
}

async fn expires_with_flow(backend: Backend) {
    let (provider, sent) = sms_provider().await;
    let clock = ManualClock::new();
    let server = TestServer::start_with(backend, |c| c.clock = Arc::new(clock.clone())).await;
    setup(&server, &provider, true).await;
    let flow = server
        .customer
        .create_flow(&flow_request(Some(120)))
        .await
        .unwrap();
    let (_phone, pairing) = register(&server, &flow).await;
    let code = last_code(&sent);
    clock.advance(Duration::from_secs(121));
    let err = server
        .customer
        .flow_action(flow.id.as_str(), &FlowAction::CheckOtp { otp: code })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FlowExpired));
    let expired = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(expired.result.unwrap().status, FlowResultStatus::Expired);
    assert_eq!(device_state(&server, &pairing).await, None);
}

async fn no_contact(backend: Backend) {
    let (provider, sent) = sms_provider().await;
    let server = TestServer::start(backend).await;
    setup(&server, &provider, false).await;
    let flow = server
        .customer
        .create_flow(&flow_request(None))
        .await
        .unwrap();
    let (_phone, pairing) = register(&server, &flow).await;
    assert_eq!(pairing.pairing.as_ref().unwrap().state, "active");
    assert!(pairing.otp.is_none());
    assert!(sent.lock().unwrap().is_empty());
}
