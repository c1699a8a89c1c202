//! QR login called directly, without HTTP: the customer creates a session, a trusted device
//! claims it with the code it scanned and answers with a response bound to the session, its
//! nonce and the context shown; on a real database (SQLite, and PostgreSQL when `DATABASE_URL`
//! names one), with a clock the tests move instead of sleeping.

use std::time::Duration;

use tessera_protocol::PROTOCOL_VERSION;
use tessera_protocol::api::{ClaimQrSession, CreateQrSession, QrSessionCreated};
use tessera_protocol::authentication::Decision;
use tessera_protocol::canonical::Sha256Digest;
use tessera_protocol::envelope::{self, MessageType};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::pairing::DeviceSignals;
use tessera_protocol::qr::{QrResponse, QrSessionContext, QrSessionState, QrUri};

use super::{answer, claim, create_session, status};
use crate::clock::Clock;
use crate::domain::testing::{TestDevice, TestDomain, joined, sent_at_once};

const CLIENT: &str = "198.51.100.7";

async fn session(domain: &TestDomain) -> QrSessionCreated {
    create_session(&domain.ctx, &domain.app, CreateQrSession::default())
        .await
        .expect("a session")
}

/// What the device sends after scanning `created`'s code: the token and its enrollments.
fn scanned(created: &QrSessionCreated, device: &TestDevice) -> ClaimQrSession {
    let uri = QrUri::parse(&created.qr_uri).expect("a QR URI");
    ClaimQrSession {
        token: uri.token.expose().to_string(),
        enrollment_ids: vec![device.enrollment.enrollment_id.clone()],
    }
}

/// The device claims `created` and verifies the signed context it gets with the server's keys.
async fn claimed(
    domain: &TestDomain,
    created: &QrSessionCreated,
    device: &TestDevice,
) -> QrSessionContext {
    let signed = claim(&domain.ctx, &device.enrollment, scanned(created, device))
        .await
        .expect("claimed")
        .context;
    domain.verified(&signed, MessageType::QrSessionContext)
}

/// The device's answer to `context` after biometrics, as the core makes it.
pub(super) fn answered(
    device: &TestDevice,
    context: &QrSessionContext,
    decision: Decision,
    shown: &tessera_protocol::authentication::AccessContext,
    now: i64,
) -> String {
    let response = QrResponse {
        v: PROTOCOL_VERSION,
        session_id: context.session_id.clone(),
        enrollment_id: device.enrollment.enrollment_id.clone(),
        session_nonce: context.nonce.clone(),
        decision,
        context_digest: Sha256Digest::of_canonical(shown).expect("digest"),
        amr: vec!["fpt".into()],
        signals: DeviceSignals::default(),
        location: None,
        device: None,
        issued_at: now,
        app_attest_assertion: None,
    };
    envelope::sign(
        MessageType::QrResponse,
        &response,
        &device.user_verification,
    )
    .expect("signed")
}

/// A new user `name` with a device, and a new session that device scanned: the session, its id
/// and the context the device verified.
async fn scanned_by_new_user(
    domain: &TestDomain,
    name: &str,
) -> (
    tessera_protocol::ids::UserId,
    TestDevice,
    String,
    QrSessionContext,
) {
    let (user, phone) = domain.user_with_device(name).await;
    let created = session(domain).await;
    let context = claimed(domain, &created, &phone).await;
    (user, phone, created.session_id.to_string(), context)
}

/// The device approves the session `id` it scanned, showing `context` as it was sent: the
/// signed answer and what was recorded.
async fn approved(
    domain: &TestDomain,
    phone: &TestDevice,
    id: &str,
    context: &QrSessionContext,
) -> (String, tessera_protocol::api::QrAnswerRecorded) {
    let signed = answered(
        phone,
        context,
        Decision::Approve,
        &context.context,
        domain.clock.now(),
    );
    let recorded = answer(&domain.ctx, id, &signed, CLIENT)
        .await
        .expect("recorded");
    (signed, recorded)
}

/// Sets the application's QR policy to user approval: an approval is followed by a push.
async fn ask_users_after_the_scan(domain: &TestDomain) {
    assert!(
        crate::store::applications::set_qr_policy(
            &domain.ctx.db,
            &domain.app.id,
            crate::store::applications::QrPolicy::UserApproval,
        )
        .await
        .expect("set")
    );
}

#[tokio::test]
async fn a_scanned_code_approved_on_the_device_signs_the_user_in() {
    for domain in TestDomain::each_engine().await {
        let (alice, phone, id, context) = scanned_by_new_user(&domain, "alice").await;
        assert_eq!(context.device_id, phone.enrollment.device_id);
        assert_eq!(context.candidates.len(), 1);
        assert_eq!(context.candidates[0].user_id, alice);
        let scanned = status(&domain.ctx, &domain.app.id, &id, Duration::ZERO)
            .await
            .expect("status");
        assert_eq!(scanned.state, QrSessionState::Scanned);

        let (signed, recorded) = approved(&domain, &phone, &id, &context).await;
        assert_eq!(recorded.state, QrSessionState::Approved);
        let done = status(&domain.ctx, &domain.app.id, &id, Duration::ZERO)
            .await
            .expect("status");
        assert_eq!(done.state, QrSessionState::Approved);
        assert_eq!(done.user_id.as_ref(), Some(&alice));
        assert_eq!(done.decision, Some(Decision::Approve));
        // The same answer again: the same outcome.
        let again = answer(&domain.ctx, &id, &signed, CLIENT)
            .await
            .expect("the same outcome");
        assert_eq!(again.state, QrSessionState::Approved);
    }
}

#[tokio::test]
async fn an_answer_for_another_context_or_nonce_changes_nothing() {
    for domain in TestDomain::each_engine().await {
        let (_, phone, id, context) = scanned_by_new_user(&domain, "bob").await;
        let now = domain.clock.now();

        // The context the device would have shown had an attacker changed what it displays,
        // and the nonce of another scan.
        let mut other = context.context.clone();
        other.application_name = "Bank (secure)".into();
        let mut replayed = context.clone();
        replayed.nonce = "another scan's nonce".into();
        for signed in [
            answered(&phone, &context, Decision::Approve, &other, now),
            answered(&phone, &replayed, Decision::Approve, &context.context, now),
        ] {
            assert_eq!(
                answer(&domain.ctx, &id, &signed, CLIENT)
                    .await
                    .expect_err("refused")
                    .code(),
                Some(ErrorCode::ResponseMismatch)
            );
        }
        let read = status(&domain.ctx, &domain.app.id, &id, Duration::ZERO)
            .await
            .expect("status");
        assert_eq!(read.state, QrSessionState::Scanned, "still unanswered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_devices_scanning_one_code_at_once_one_claims_it() {
    for domain in TestDomain::each_engine().await {
        let mut devices = Vec::new();
        for n in 0..6 {
            devices.push(domain.user_with_device(&format!("carol-{n}")).await.1);
        }
        for _ in 0..4 {
            let created = session(&domain).await;
            let tasks: Vec<_> = devices
                .iter()
                .map(|device| {
                    let (ctx, enrollment, request) = (
                        domain.ctx.clone(),
                        device.enrollment.clone(),
                        scanned(&created, device),
                    );
                    tokio::spawn(async move { claim(&ctx, &enrollment, request).await })
                })
                .collect();
            let results = joined(tasks).await;
            assert_eq!(
                results.iter().filter(|r| r.is_ok()).count(),
                1,
                "{results:?}"
            );
        }
    }
}

/// The phone sends its claim again while the first is under way (a retry after a timeout):
/// every copy gets the one context the session was claimed with, as a later retry does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_of_one_device_s_claim_sent_at_once_all_get_its_context() {
    for domain in TestDomain::each_engine().await {
        let (_, phone) = domain.user_with_device("kim").await;
        for _ in 0..10 {
            let created = session(&domain).await;
            let claimed: Vec<_> = sent_at_once(5, || {
                let (ctx, enrollment, request) = (
                    domain.ctx.clone(),
                    phone.enrollment.clone(),
                    scanned(&created, &phone),
                );
                async move { claim(&ctx, &enrollment, request).await }
            })
            .await
            .into_iter()
            .map(|r| r.expect("every copy gets the context").context)
            .collect();
            assert!(claimed.iter().all(|c| *c == claimed[0]));
        }
    }
}

#[tokio::test]
async fn a_code_not_scanned_in_time_is_refused() {
    for domain in TestDomain::each_engine().await {
        let (_, phone) = domain.user_with_device("dave").await;
        let created = session(&domain).await;
        domain.clock.advance(Duration::from_secs(
            u64::from(domain.ctx.config.qr_code_ttl) + 1,
        ));
        assert_eq!(
            claim(&domain.ctx, &phone.enrollment, scanned(&created, &phone))
                .await
                .expect_err("the code's minute is over")
                .code(),
            Some(ErrorCode::QrSessionExpired)
        );
    }
}

#[tokio::test]
async fn under_user_approval_the_push_that_follows_completes_the_session() {
    for domain in TestDomain::each_engine().await {
        ask_users_after_the_scan(&domain).await;
        for (name, decision, end) in [
            ("erin", Decision::Approve, QrSessionState::Approved),
            ("frank", Decision::Deny, QrSessionState::Denied),
        ] {
            let (_, phone, id, context) = scanned_by_new_user(&domain, name).await;
            let (_, recorded) = approved(&domain, &phone, &id, &context).await;
            assert_eq!(recorded.state, QrSessionState::Verifying);
            let follow_up = recorded.follow_up.expect("a push follows");

            // The push that follows.
            let request = domain.pulled(&phone, &follow_up).await;
            domain
                .answered_by(&phone, &request, decision)
                .await
                .expect("recorded");
            // The `qr` follow-up completed the session when the push ended: stored so, before
            // any read could settle it.
            let session_id = id.parse().expect("a session id");
            let stored =
                crate::store::qr_sessions::get(&domain.ctx.db, &session_id, domain.clock.now())
                    .await
                    .expect("read")
                    .expect("stored");
            assert_eq!(stored.state, end, "{name}");
        }
    }
}

/// Under user approval an answer is stored in one transaction with the push that follows. The
/// same answer sent again while the first is under way gets the recorded outcome and the one
/// follow-up; on SQLite the copies that find the session answered may run in the winner's
/// group, before its commit, and must wait for it before they read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_of_one_answer_with_a_follow_up_all_get_its_outcome() {
    for domain in TestDomain::each_engine().await {
        ask_users_after_the_scan(&domain).await;
        for n in 0..10 {
            let (_, phone, id, context) = scanned_by_new_user(&domain, &format!("gina-{n}")).await;
            let signed = answered(
                &phone,
                &context,
                Decision::Approve,
                &context.context,
                domain.clock.now(),
            );
            let recorded: Vec<_> = sent_at_once(5, || {
                let (ctx, id, signed) = (domain.ctx.clone(), id.clone(), signed.clone());
                async move { answer(&ctx, &id, &signed, CLIENT).await }
            })
            .await
            .into_iter()
            .map(|r| r.expect("every copy gets the outcome"))
            .collect();
            assert!(recorded.iter().all(|r| *r == recorded[0]), "{recorded:?}");
            assert_eq!(recorded[0].state, QrSessionState::Verifying);
            assert!(recorded[0].follow_up.is_some());
        }
    }
}
