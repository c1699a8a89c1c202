//! End to end: bypass and recovery codes (`docs/bypass-and-recovery.md`). A bypass granted
//! through the customer API completes push and transaction authentications, flows and CIBA
//! requests at once with type `BYPASS` and nothing sent to the device, ends by the clock, is
//! refused without a reason or beyond the server's maximum, and loses to a policy `deny`.
//! Recovery codes: ten issued, each completes one authentication once (on a pending push and
//! as a flow action), re-issue revokes the old ones, a burst on one code lets exactly one use
//! win, and the passcode lockout applies. On SQLite and PostgreSQL.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use tessera_examples::customer::CustomerApiError;
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState};
use tessera_protocol::bypass::SetBypassRequest;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::flows::{
    CreateFlowRequest, FlowAction, FlowActionName, FlowResultStatus, FlowStatus,
};
use tessera_protocol::ids::EnrollmentId;
use tessera_protocol::pairing::PushRegistration;
use tessera_server::{Clock, ManualClock};
use tessera_tests::{
    Backend, TestDevice, TestServer, ask, device_config, on_each_backend, payment,
};

on_each_backend! {
    a_bypass_completes_pushes_without_the_device_until_the_clock_ends_it => bypass_push;
    a_bypass_needs_a_reason_a_bounded_length_and_loses_to_a_policy_deny => bypass_refusals;
    a_bypassed_flow_completes_as_bypassed_even_without_a_device => bypass_flow;
    a_bypassed_ciba_request_gets_tokens_that_do_not_claim_mfa => bypass_ciba;
    recovery_codes_complete_one_authentication_each_and_reissue_revokes => recovery_codes;
    a_burst_on_one_recovery_code_lets_exactly_one_use_win => recovery_burst;
    wrong_recovery_codes_count_towards_the_passcode_lockout => recovery_lockout;
}

/// A push-webhook receiver that records what it is sent.
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<Value>>>,
    arrived: Arc<tokio::sync::Notify>,
}

async fn receive(State(r): State<Receiver>, Json(body): Json<Value>) -> &'static str {
    r.received.lock().unwrap().push(body);
    r.arrived.notify_waiters();
    "ok"
}

impl Receiver {
    async fn start() -> (Receiver, String) {
        let receiver = Receiver::default();
        let app = axum::Router::new()
            .route("/push", post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/push", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, url)
    }

    /// Waits until `n` pushes arrived (woken by each arrival), then answers them all.
    async fn wait_for(&self, n: usize) -> Vec<Value> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let arrived = self.arrived.notified();
                let got = self.received.lock().unwrap().clone();
                if got.len() >= n {
                    return got;
                }
                arrived.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("expected {n} pushes"))
    }
}

async fn start(backend: Backend, clock: Option<ManualClock>) -> TestServer {
    TestServer::start_with(backend, |c| {
        if let Some(clock) = clock {
            c.clock = Arc::new(clock);
        }
        c.max_bypass_seconds = 3600;
        c.max_pending_authentications_per_user = 20;
        c.max_recent_authentications_per_user = 100;
        c.ciba_poll_interval = 1;
    })
    .await
}

async fn paired(server: &TestServer, user: &str) -> (TestDevice, EnrollmentId) {
    server.user(user).await;
    let mut config = device_config("Pixel 8");
    config.push = PushRegistration::Fcm {
        token: format!("fcm-{user}"),
    };
    let device = TestDevice::with_config(config).await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri(user).await, None)
        .await
        .unwrap();
    (device, enrollment.enrollment_id)
}

fn for_seconds(seconds: u32, reason: &str) -> SetBypassRequest {
    SetBypassRequest {
        duration_seconds: Some(seconds),
        until: None,
        reason: reason.into(),
    }
}

fn refused<T: std::fmt::Debug>(result: Result<T, CustomerApiError>, code: ErrorCode) {
    match result {
        Err(e) => assert_eq!(e.code(), Some(code), "{e}"),
        Ok(v) => panic!("expected {code:?}, got {v:?}"),
    }
}

fn attributes_type(attributes: &std::collections::BTreeMap<String, Value>) -> Option<&str> {
    attributes
        .get("pingid.authentication.type")
        .and_then(Value::as_str)
}

async fn audit_kinds(server: &TestServer) -> Vec<Value> {
    let page: Value = reqwest::Client::new()
        .get(format!("{}/v1/audit?limit=200", server.base_url))
        .bearer_auth(&server.app.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["records"]
        .as_array()
        .or_else(|| page["events"].as_array())
        .cloned()
        .unwrap_or_default()
}

async fn bypass_push(backend: Backend) {
    let clock = ManualClock::new();
    let server = start(backend, Some(clock.clone())).await;
    let (receiver, url) = Receiver::start().await;
    tessera_server::admin::set_push_webhook(
        server.server.database(),
        &server.app.application_id,
        Some(&url),
    )
    .await
    .unwrap();
    let (device, enrollment) = paired(&server, "alice").await;

    // Without a bypass the device is asked, and the receiver sees the push.
    let before = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert_eq!(before.state, AuthenticationState::Pending);
    receiver.wait_for(1).await;

    let granted = server
        .customer
        .set_bypass("alice", &for_seconds(600, "lost phone, ticket 4711"))
        .await
        .unwrap();
    assert!(granted.active);
    assert_eq!(granted.reason.as_deref(), Some("lost phone, ticket 4711"));
    assert_eq!(granted.granted_by.as_deref(), Some("api"));
    let until = granted.until.unwrap();
    assert_eq!(until, clock.now() + 600);
    assert_eq!(server.customer.bypass("alice").await.unwrap(), granted);

    let mut bypassed = Vec::new();
    for body in [ask(AuthenticationKind::Approval), payment()] {
        let status = server
            .customer
            .create_authentication("alice", &body)
            .await
            .unwrap();
        assert_eq!(status.state, AuthenticationState::Approved, "{status:?}");
        assert_eq!(attributes_type(&status.attributes), Some("BYPASS"));
        // No factor was used, and no device answered: a relying party cannot mistake it.
        assert!(!status.attributes.contains_key("pingid.authentication.amr"));
        assert!(
            !status
                .attributes
                .keys()
                .any(|k| k.contains("authenticating.device")),
            "{:?}",
            status.attributes
        );
        let read = server
            .customer
            .authentication(&status.authentication_id, 0)
            .await
            .unwrap();
        assert_eq!(read.state, AuthenticationState::Approved);
        bypassed.push(status.authentication_id);
    }
    // Nothing waits on the device but the request made before the bypass.
    let pending = device.auth.pending_requests().await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].request_id, before.authentication_id);

    // The clock ends it: one second before the end it holds, at the end it is over.
    clock.advance(Duration::from_secs(599));
    let last = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert_eq!(last.state, AuthenticationState::Approved);
    bypassed.push(last.authentication_id);
    clock.advance(Duration::from_secs(1));
    assert!(!server.customer.bypass("alice").await.unwrap().active);
    let after = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert_eq!(after.state, AuthenticationState::Pending);
    // The receiver got the push before the bypass and the one after it, none between.
    let pushes = receiver.wait_for(2).await;
    assert_eq!(pushes.len(), 2, "{pushes:?}");
    let sent = serde_json::to_string(&pushes).unwrap();
    for id in &bypassed {
        assert!(!sent.contains(id.as_str()), "a bypassed request was pushed");
    }
    let _ = enrollment;

    // Recorded: the grant with its actor and reason, the approvals with type BYPASS.
    let records = audit_kinds(&server).await;
    let text = serde_json::to_string(&records).unwrap();
    assert!(text.contains("bypass.granted"), "{text}");
    assert!(text.contains("lost phone, ticket 4711"));

    // Cleared by the API: over at once.
    server
        .customer
        .set_bypass("alice", &for_seconds(60, "again"))
        .await
        .unwrap();
    assert!(!server.customer.clear_bypass("alice").await.unwrap().active);
    let cleared = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert_eq!(cleared.state, AuthenticationState::Pending);
}

async fn bypass_refusals(backend: Backend) {
    let clock = ManualClock::new();
    let server = start(backend, Some(clock.clone())).await;
    paired(&server, "bob").await;
    let c = &server.customer;
    refused(
        c.set_bypass("bob", &for_seconds(60, "  ")).await,
        ErrorCode::InvalidRequest,
    );
    refused(
        c.set_bypass("bob", &for_seconds(60, &"x".repeat(257)))
            .await,
        ErrorCode::InvalidRequest,
    );
    refused(
        c.set_bypass("bob", &for_seconds(60, "reason \u{202e}txet"))
            .await,
        ErrorCode::InvalidRequest,
    );
    refused(
        c.set_bypass("bob", &for_seconds(3601, "too long")).await,
        ErrorCode::InvalidRequest,
    );
    refused(
        c.set_bypass(
            "bob",
            &SetBypassRequest {
                duration_seconds: None,
                until: Some(clock.now() + 3601),
                reason: "too long".into(),
            },
        )
        .await,
        ErrorCode::InvalidRequest,
    );
    refused(
        c.set_bypass(
            "bob",
            &SetBypassRequest {
                duration_seconds: None,
                until: Some(clock.now()),
                reason: "past".into(),
            },
        )
        .await,
        ErrorCode::InvalidRequest,
    );
    refused(
        c.set_bypass(
            "bob",
            &SetBypassRequest {
                duration_seconds: Some(60),
                until: Some(clock.now() + 60),
                reason: "both".into(),
            },
        )
        .await,
        ErrorCode::InvalidRequest,
    );
    refused(
        c.set_bypass("nobody", &for_seconds(60, "who")).await,
        ErrorCode::UserNotFound,
    );
    // Nothing refused was stored.
    assert!(!c.bypass("bob").await.unwrap().active);
    assert_eq!(c.bypass("bob").await.unwrap().reason, None);
    let at_most = c
        .set_bypass(
            "bob",
            &SetBypassRequest {
                duration_seconds: None,
                until: Some(clock.now() + 3600),
                reason: "exactly the maximum".into(),
            },
        )
        .await
        .unwrap();
    assert!(at_most.active);

    // A policy deny still wins over a bypass.
    c.set_policy(
        &serde_json::from_value(json!({
            "rules": [],
            "default": {"action": "deny", "reason": "closed for maintenance"}
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let denied = c
        .create_authentication("bob", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert_eq!(denied.state, AuthenticationState::Failed, "{denied:?}");
    assert_eq!(denied.failure_reason.as_deref(), Some("policy_denied"));
    let flow = c
        .create_flow(&CreateFlowRequest::new("bob".parse().unwrap()))
        .await
        .unwrap();
    let flow = c
        .flow_action(
            flow.id.as_str(),
            &FlowAction::Authenticate {
                mobile_payload: None,
                authorization_payload: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(flow.status, FlowStatus::MfaFailed);
    assert_eq!(flow.result.unwrap().status, FlowResultStatus::Denied);
}

async fn bypass_flow(backend: Backend) {
    let server = start(backend, None).await;
    let (device, _) = paired(&server, "carol").await;
    // A user with no device at all.
    server.user("dave").await;
    for user in ["carol", "dave"] {
        server
            .customer
            .set_bypass(user, &for_seconds(300, "helpdesk call"))
            .await
            .unwrap();
        let mut request = CreateFlowRequest::new(user.parse().unwrap());
        request.accessing_ip = Some("203.0.113.9".into());
        let flow = server.customer.create_flow(&request).await.unwrap();
        let done = server
            .customer
            .flow_action(
                flow.id.as_str(),
                &FlowAction::Authenticate {
                    mobile_payload: None,
                    authorization_payload: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(done.status, FlowStatus::MfaCompleted, "{done:?}");
        let result = done.result.unwrap();
        assert_eq!(result.status, FlowResultStatus::Bypassed);
        assert_eq!(attributes_type(&result.attributes), Some("BYPASS"));
        assert_eq!(
            result.attributes["pingid.authentication.accessing.device.ip"],
            json!("203.0.113.9")
        );
        assert!(!result.attributes.contains_key("pingid.authentication.amr"));
    }
    assert!(device.auth.pending_requests().await.unwrap().is_empty());
}

async fn bypass_ciba(backend: Backend) {
    let server = start(backend, None).await;
    let (device, _) = paired(&server, "erin").await;
    let rp = server.poll_mode_relying_party("Call Centre").await;
    server
        .customer
        .set_bypass("erin", &for_seconds(300, "lost phone"))
        .await
        .unwrap();
    let ack = rp
        .backchannel(&[("scope", "openid"), ("login_hint", "erin")])
        .await
        .unwrap();
    // Completed at once: the first token request gets the tokens.
    let tokens = rp.token(&ack.auth_req_id).await.unwrap();
    let claims = rp.verify_id_token(&tokens.id_token).await.unwrap();
    assert_eq!(claims["acr"], json!("urn:tessera:acr:bypass"), "{claims}");
    assert_eq!(claims["amr"], json!([]), "{claims}");
    assert!(device.auth.pending_requests().await.unwrap().is_empty());
}

async fn recovery_codes(backend: Backend) {
    let server = start(backend, None).await;
    let (device, enrollment) = paired(&server, "frank").await;
    let c = &server.customer;
    assert_eq!(c.recovery_codes("frank").await.unwrap().remaining, 0);
    let issued = c.issue_recovery_codes("frank").await.unwrap();
    assert_eq!(issued.codes.len(), 10);
    assert_eq!(issued.remaining, 10);
    let mut unique = issued.codes.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 10);
    assert_eq!(c.recovery_codes("frank").await.unwrap().remaining, 10);
    // Never shown again, and never stored in the clear.
    let shown = serde_json::to_string(&c.recovery_codes("frank").await.unwrap()).unwrap();
    assert!(!shown.contains(&issued.codes[0]));

    // A pending push completed with a code (typed loosely), once.
    let pending = c
        .create_authentication("frank", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    let typed = format!(" {} ", issued.codes[0].to_uppercase().replace('-', " "));
    let done = c
        .answer_with_recovery_code(&pending.authentication_id, &typed)
        .await
        .unwrap();
    assert_eq!(done.state, AuthenticationState::Approved);
    assert_eq!(attributes_type(&done.attributes), Some("RECOVERY_CODE"));
    assert_eq!(c.recovery_codes("frank").await.unwrap().remaining, 9);
    let again = c
        .create_authentication("frank", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    refused(
        c.answer_with_recovery_code(&again.authentication_id, &issued.codes[0])
            .await,
        ErrorCode::OtpInvalid,
    );
    // An answered authentication takes no code (and spends none).
    refused(
        c.answer_with_recovery_code(&pending.authentication_id, &issued.codes[1])
            .await,
        ErrorCode::AlreadyAnswered,
    );
    assert_eq!(c.recovery_codes("frank").await.unwrap().remaining, 9);

    // As a flow action while the flow waits for the push: the push is withdrawn.
    let flow = c
        .create_flow(&CreateFlowRequest::new("frank".parse().unwrap()))
        .await
        .unwrap();
    let waiting = c
        .flow_action(
            flow.id.as_str(),
            &FlowAction::Authenticate {
                mobile_payload: None,
                authorization_payload: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(waiting.status, FlowStatus::PushConfirmationWaiting);
    assert!(
        waiting.actions.contains(&FlowActionName::CheckRecoveryCode),
        "{:?}",
        waiting.actions
    );
    let push = waiting.push.clone().unwrap().authentication_id;
    let done = c
        .flow_action(
            flow.id.as_str(),
            &FlowAction::CheckRecoveryCode {
                recovery_code: issued.codes[1].clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(done.status, FlowStatus::MfaCompleted);
    let result = done.result.unwrap();
    assert_eq!(result.status, FlowResultStatus::Authenticated);
    assert_eq!(attributes_type(&result.attributes), Some("RECOVERY_CODE"));
    assert_eq!(
        c.authentication(&push, 0).await.unwrap().state,
        AuthenticationState::Failed
    );
    assert_eq!(c.recovery_codes("frank").await.unwrap().remaining, 8);
    let _ = (&device, &enrollment);

    // Re-issue: the old unused codes stop working.
    let renewed = c.issue_recovery_codes("frank").await.unwrap();
    assert_eq!(renewed.remaining, 10);
    let next = c
        .create_authentication("frank", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    refused(
        c.answer_with_recovery_code(&next.authentication_id, &issued.codes[2])
            .await,
        ErrorCode::OtpInvalid,
    );
    c.answer_with_recovery_code(&next.authentication_id, &renewed.codes[2])
        .await
        .unwrap();
    // Revoked: none left, none works.
    assert_eq!(c.revoke_recovery_codes("frank").await.unwrap().remaining, 0);
    assert_eq!(c.recovery_codes("frank").await.unwrap().remaining, 0);
    let last = c
        .create_authentication("frank", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    refused(
        c.answer_with_recovery_code(&last.authentication_id, &renewed.codes[3])
            .await,
        ErrorCode::OtpInvalid,
    );

    // Deleting the user removes their codes.
    c.issue_recovery_codes("frank").await.unwrap();
    c.remove_user("frank").await.unwrap();
    server.user("frank").await;
    assert_eq!(c.recovery_codes("frank").await.unwrap().remaining, 0);
}

async fn recovery_burst(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.max_pending_authentications_per_user = 20;
        c.max_recent_authentications_per_user = 100;
        c.otp_max_failures = 20;
    })
    .await;
    paired(&server, "gina").await;
    let c = &server.customer;
    let issued = c.issue_recovery_codes("gina").await.unwrap();
    let code = issued.codes[0].clone();
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(
            c.create_authentication("gina", &ask(AuthenticationKind::Approval))
                .await
                .unwrap()
                .authentication_id,
        );
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(ids.len()));
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let c = c.clone();
            let id = id.clone();
            let code = code.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                c.answer_with_recovery_code(&id, &code).await
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(status) => {
                assert_eq!(status.state, AuthenticationState::Approved);
                wins += 1;
            }
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::OtpInvalid), "{e}"),
        }
    }
    assert_eq!(wins, 1, "one use of one code wins");
    assert_eq!(c.recovery_codes("gina").await.unwrap().remaining, 9);
}

async fn recovery_lockout(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.otp_max_failures = 3;
        c.max_pending_authentications_per_user = 20;
    })
    .await;
    paired(&server, "hank").await;
    let c = &server.customer;
    let issued = c.issue_recovery_codes("hank").await.unwrap();
    let pending = c
        .create_authentication("hank", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    for _ in 0..2 {
        refused(
            c.answer_with_recovery_code(&pending.authentication_id, "2222-2222-2222")
                .await,
            ErrorCode::OtpInvalid,
        );
    }
    refused(
        c.answer_with_recovery_code(&pending.authentication_id, "2222-2222-2222")
            .await,
        ErrorCode::OtpLocked,
    );
    // Locked: even a right code is refused before it is compared, and is not spent.
    refused(
        c.answer_with_recovery_code(&pending.authentication_id, &issued.codes[0])
            .await,
        ErrorCode::OtpLocked,
    );
    assert_eq!(c.recovery_codes("hank").await.unwrap().remaining, 10);
    // Unlocked by the customer, the right code works.
    c.reset_otp_failures("hank").await.unwrap();
    c.answer_with_recovery_code(&pending.authentication_id, &issued.codes[0])
        .await
        .unwrap();
}
