//! End to end: per-user push limits are taken atomically. A burst of requests at once against
//! the push-bombing cap or a policy's `limit_push` creates at most the limit, on the customer
//! API's push path and on CIBA (the count and the insert are one step in the transaction that
//! stores the request). Also what the policy decision keeps: a QR login's decision returns its
//! methods like every other path, and decisions are purged with retention. On SQLite and
//! PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use serde_json::json;
use tessera_examples::relying_party::{RelyingParty, RpError};
use tessera_protocol::api::CreateQrSession;
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::policy::{PolicyDocument, PolicyEffect, PolicyMethod};
use tessera_server::store::applications::Quotas;
use tessera_server::{Clock, ManualClock, admin};
use tessera_tests::{Backend, TestDevice, TestServer, ask, on_each_backend};

on_each_backend! {
    a_burst_never_passes_the_push_bombing_cap => cap_burst;
    without_an_application_quota_a_burst_never_passes_the_push_bombing_cap => cap_burst_without_quota;
    a_burst_never_passes_a_policy_limit_push => limit_push_burst;
    a_ciba_burst_never_passes_the_push_bombing_cap => ciba_cap_burst;
    a_ciba_burst_never_passes_a_policy_limit_push => ciba_limit_push_burst;
    a_qr_decision_returns_the_methods_it_requires => qr_methods;
    policy_decisions_are_purged_past_retention => decisions_purged;
}

/// Requests sent at once in each burst.
const BURST: usize = 30;
/// The limit each burst is held to.
const LIMIT: u32 = 3;

/// A server whose per-user cap is `pending` (and whose other limits are out of the way), with
/// alice paired.
async fn start(backend: Backend, pending: u32) -> (TestServer, TestDevice) {
    let server = TestServer::start_with(backend, move |c| {
        c.max_pending_authentications_per_user = pending;
        c.max_recent_authentications_per_user = 1000;
    })
    .await;
    admin::set_quotas(
        server.server.database(),
        &server.app.application_id,
        Quotas {
            max_open_qr_sessions: None,
            max_pending_requests: Some(1000),
        },
    )
    .await
    .expect("quota");
    server.user("alice").await;
    let device = TestDevice::new().await;
    device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .expect("pair");
    (server, device)
}

async fn limit_pushes(server: &TestServer) {
    let policy: PolicyDocument = serde_json::from_value(json!({
        "rules": [],
        "default": {"action": "limit_push", "max": LIMIT, "window_seconds": 600}
    }))
    .expect("policy");
    server.customer.set_policy(&policy).await.expect("saved");
}

/// A burst of requests for alice at once, each created pending or refused as push bombing.
/// How many were created.
async fn cap_burst_created(server: &TestServer) -> u32 {
    let body = ask(AuthenticationKind::Approval);
    let results =
        join_all((0..BURST).map(|_| server.customer.create_authentication("alice", &body))).await;
    let mut created = 0;
    for result in results {
        match result {
            Ok(status) => {
                assert_eq!(status.state, AuthenticationState::Pending, "{status:?}");
                created += 1;
            }
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::TooManyAuthentications), "{e}"),
        }
    }
    created
}

async fn cap_burst(backend: Backend) {
    let (server, _device) = start(backend, LIMIT).await;
    let created = cap_burst_created(&server).await;
    assert_eq!(created, LIMIT, "requests created by a burst of {BURST}");
}

/// With the application's quota off, only the user's counts are taken (on PostgreSQL under the
/// user's lock alone, no application lock): the burst still creates exactly the cap.
async fn cap_burst_without_quota(backend: Backend) {
    let (server, _device) = start(backend, LIMIT).await;
    admin::set_quotas(
        server.server.database(),
        &server.app.application_id,
        Quotas {
            max_open_qr_sessions: None,
            max_pending_requests: Some(u32::MAX),
        },
    )
    .await
    .expect("no quota");
    let created = cap_burst_created(&server).await;
    assert_eq!(created, LIMIT, "requests created by a burst of {BURST}");
}

async fn limit_push_burst(backend: Backend) {
    let (server, _device) = start(backend, 1000).await;
    limit_pushes(&server).await;
    let body = ask(AuthenticationKind::Approval);
    let results =
        join_all((0..BURST).map(|_| server.customer.create_authentication("alice", &body))).await;
    let (mut asked, mut denied) = (0, 0);
    for result in results {
        let status = result.expect("answered with a status");
        let policy = status.policy.clone().expect("a policy decision");
        assert_eq!(policy.action, "limit_push", "{policy:?}");
        match status.state {
            AuthenticationState::Pending => {
                assert_eq!(policy.effect, PolicyEffect::Require, "{policy:?}");
                asked += 1;
            }
            AuthenticationState::Failed => {
                assert_eq!(status.failure_reason.as_deref(), Some("policy_denied"));
                assert_eq!(policy.effect, PolicyEffect::Deny, "{policy:?}");
                assert!(
                    policy.reason.contains("too many push requests"),
                    "{policy:?}"
                );
                denied += 1;
            }
            other => panic!("unexpected state {other:?}"),
        }
    }
    assert_eq!(
        (asked, denied),
        (LIMIT, BURST as u32 - LIMIT),
        "pushes sent by a burst of {BURST}"
    );
    // A later request within the window is denied as well.
    let again = server
        .customer
        .create_authentication("alice", &body)
        .await
        .expect("status");
    assert_eq!(again.state, AuthenticationState::Failed);
}

/// Sends a burst of CIBA requests for alice; returns how many were accepted, checking that the
/// others were refused with `access_denied` and a description containing `refusal`.
async fn ciba_burst(rp: &RelyingParty, refusal: &str) -> u32 {
    let params = [("scope", "openid"), ("login_hint", "alice")];
    let results = join_all((0..BURST).map(|_| rp.backchannel(&params))).await;
    let mut accepted = 0;
    for result in results {
        match result {
            Ok(_) => accepted += 1,
            Err(RpError::OAuth {
                error, description, ..
            }) => {
                assert_eq!(error, "access_denied");
                assert!(description.contains(refusal), "{description}");
            }
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    accepted
}

async fn ciba_cap_burst(backend: Backend) {
    let (server, _device) = start(backend, LIMIT).await;
    let rp = server.poll_mode_relying_party("Call Centre").await;
    let accepted = ciba_burst(&rp, "too many pending requests").await;
    assert_eq!(
        accepted, LIMIT,
        "CIBA requests accepted from a burst of {BURST}"
    );
}

async fn ciba_limit_push_burst(backend: Backend) {
    let (server, _device) = start(backend, 1000).await;
    limit_pushes(&server).await;
    let rp = server.poll_mode_relying_party("Call Centre").await;
    let accepted = ciba_burst(&rp, "too many push requests").await;
    assert_eq!(
        accepted, LIMIT,
        "CIBA requests accepted from a burst of {BURST}"
    );
}

async fn qr_methods(backend: Backend) {
    let (server, device) = start(backend, LIMIT).await;
    let policy: PolicyDocument = serde_json::from_value(json!({
        "rules": [{"name": "qr", "when": {"requests": ["qr"]},
                   "then": {"action": "require", "methods": ["mobile_biometrics", "mobile_push"]}}],
        "default": {"action": "require", "methods": ["mobile_push"]}
    }))
    .expect("policy");
    server.customer.set_policy(&policy).await.expect("saved");
    let session = server
        .customer
        .create_qr_session(&CreateQrSession::default())
        .await
        .expect("session");
    device
        .auth
        .authenticate_with_qr(&session.qr_uri)
        .await
        .expect("scanned");
    let status = server
        .customer
        .qr_session(&session.session_id, 0)
        .await
        .expect("status");
    let decided = status.policy.expect("the decision");
    assert_eq!(
        (decided.rule.as_str(), decided.effect),
        ("qr", PolicyEffect::Require)
    );
    assert_eq!(
        decided.methods,
        vec![PolicyMethod::MobileBiometrics, PolicyMethod::MobilePush]
    );
    // The administrators' record of the decision lists them too.
    let recorded = admin::policy_decisions(
        server.server.database(),
        &server.app.application_id,
        &"alice".parse().expect("user"),
        10,
    )
    .await
    .expect("decisions");
    assert_eq!(recorded[0]["request"], "qr");
    assert_eq!(
        recorded[0]["methods"],
        json!(["mobile_biometrics", "mobile_push"])
    );
}

async fn decisions_purged(backend: Backend) {
    const DAY: Duration = Duration::from_secs(86_400);
    let clock = ManualClock::new();
    let server = TestServer::start_isolated_with(backend, {
        let clock = clock.clone();
        move |c| {
            c.clock = Arc::new(clock);
            c.retention_days = 30;
            c.retention_sweep = Duration::from_secs(3600);
        }
    })
    .await;
    server.user("alice").await;
    let device = TestDevice::new().await;
    device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .expect("pair");
    limit_pushes(&server).await;
    let alice = "alice".parse().expect("user");
    let decisions = || {
        admin::policy_decisions(
            server.server.database(),
            &server.app.application_id,
            &alice,
            100,
        )
    };
    // Day 0: one decision.
    server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .expect("create");
    // Day 29: another; neither is past retention yet.
    clock.advance(29 * DAY);
    server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .expect("create");
    let purged = admin::purge(server.server.database(), 30, clock.now())
        .await
        .expect("purge");
    assert_eq!(purged.policy_decisions, 0, "{purged:?}");
    assert_eq!(decisions().await.expect("decisions").len(), 2);
    // Day 31: the first is past retention, the second is not.
    clock.advance(2 * DAY);
    let purged = admin::purge(server.server.database(), 30, clock.now())
        .await
        .expect("purge");
    assert_eq!(purged.policy_decisions, 1, "{purged:?}");
    let left = decisions().await.expect("decisions");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["at"], json!(clock.now() - 2 * 86_400));
}
