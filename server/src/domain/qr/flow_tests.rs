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
use tessera_protocol::ids::UserId;

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

/// A new phone of `user` reporting `os_name`, holding an App Attest key (as a pairing App
/// Attested by a registered app leaves it; whether the key is genuine does not matter here:
/// answers carry no assertion, and only whether one is asked for is looked at).
async fn app_attest_phone(domain: &TestDomain, user: &UserId, os_name: &str) -> TestDevice {
    let mut phone = domain.device_of(user, false).await;
    let device_info = tessera_protocol::pairing::DeviceInfo {
        os_name: os_name.into(),
        ..phone.enrollment.device_info.clone()
    };
    sqlx::query(
        "UPDATE enrollments SET device_info = $1, app_attest_public_key = $2, \
         app_attest_counter = 0 WHERE enrollment_id = $3",
    )
    .bind(serde_json::to_string(&device_info).expect("encoded"))
    .bind("BAECAwQF")
    .bind(phone.enrollment.enrollment_id.as_str())
    .execute(domain.ctx.db.writer())
    .await
    .expect("updated");
    phone.enrollment =
        crate::store::enrollments::by_id(&domain.ctx.db, &phone.enrollment.enrollment_id)
            .await
            .expect("read")
            .expect("stored");
    phone
}

/// The application asks App Attested iOS phones' answers for an App Attest assertion by policy
/// (rule `ios`), and other phones' for none (its attestation mode `report` asks for none).
async fn assertions_asked_of_iphones(domain: &TestDomain) {
    let policy = serde_json::from_value(serde_json::json!({
        "rules": [{
            "name": "ios",
            "when": {"platforms": ["ios"]},
            "then": {"action": "require", "methods": ["mobile_push"], "app_attest_assertion": true}
        }],
        "default": {"action": "require", "methods": ["mobile_push"]}
    }))
    .expect("a policy");
    crate::domain::policy::save(&domain.ctx, &domain.app.id, &policy)
        .await
        .expect("saved");
    let settings = tessera_protocol::api::AttestationSettings {
        mode: tessera_protocol::api::AttestationMode::Report,
        ..Default::default()
    };
    assert!(
        crate::store::applications::set_attestation_settings(
            &domain.ctx.db,
            &domain.app.id,
            &settings
        )
        .await
        .expect("set")
    );
}

/// One user's iPhone and Android phone scan one code at once (the clock stands still: every
/// decision is recorded in the same second). Each scan is decided for its own phone; whichever
/// claims the session, its answer needs an App Attest assertion exactly when its own decision
/// asked for one, and the session reports that decision: the losing scan's decision is not the
/// session's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_one_user_s_phones_scanning_at_once_the_winner_s_own_decision_holds() {
    for domain in TestDomain::each_engine().await {
        assertions_asked_of_iphones(&domain).await;
        let user = domain.user("ivy").await;
        let iphone = app_attest_phone(&domain, &user, "iOS").await;
        let android = app_attest_phone(&domain, &user, "Android").await;
        let phones = [&iphone, &android];
        let mut wins = [0usize; 2];
        for round in 0..24 {
            let created = session(&domain).await;
            // Each phone goes first in every other round.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            let claims: Vec<_> = order
                .iter()
                .map(|&n| {
                    let phone = phones[n];
                    let (ctx, enrollment, request) = (
                        domain.ctx.clone(),
                        phone.enrollment.clone(),
                        scanned(&created, phone),
                    );
                    tokio::spawn(async move { claim(&ctx, &enrollment, request).await })
                })
                .collect();
            let claims = joined(claims).await;
            assert_eq!(
                claims.iter().filter(|c| c.is_ok()).count(),
                1,
                "round {round}: {claims:?}"
            );
            let first = claims.iter().position(Result::is_ok).expect("a winner");
            let winner = order[first];
            wins[winner] += 1;
            let signed = claims[first].as_ref().expect("claimed").context.clone();
            let context: QrSessionContext = domain.verified(&signed, MessageType::QrSessionContext);
            let id = created.session_id.to_string();
            let scanned_status = status(&domain.ctx, &domain.app.id, &id, Duration::ZERO)
                .await
                .expect("status");
            let recorded: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM policy_decisions WHERE subject_id = $1")
                    .bind(&id)
                    .fetch_one(domain.ctx.db.pool())
                    .await
                    .expect("counted");
            assert_eq!(
                recorded, 1,
                "round {round}: only the claim's decision is recorded"
            );
            let asks_assertion = winner == 0;
            assert_eq!(
                scanned_status.policy.map(|p| p.rule),
                Some(if asks_assertion { "ios" } else { "default" }.to_string()),
                "round {round}: the session reports its claim's decision"
            );
            let answer_signed = answered(
                phones[winner],
                &context,
                Decision::Approve,
                &context.context,
                domain.clock.now(),
            );
            let answered = answer(&domain.ctx, &id, &answer_signed, CLIENT).await;
            if asks_assertion {
                assert_eq!(
                    answered.expect_err("an assertion is asked for").code(),
                    Some(ErrorCode::AppAttestAssertionRequired),
                    "round {round}: the iPhone claimed"
                );
            } else {
                assert_eq!(
                    answered.expect("no assertion is asked for").state,
                    QrSessionState::Approved,
                    "round {round}: the Android phone claimed"
                );
            }
        }
        println!(
            "{:?}: the iPhone claimed {} rounds, the Android phone {}",
            domain.ctx.db.engine(),
            wins[0],
            wins[1]
        );
    }
}

/// A session's read notes whether the policy decided anything about it, so that a status
/// without a decision reads nothing more. A relying party that started waiting before the scan
/// read that note before the scan: woken by the scan, it reads the scan's decision all the
/// same, and so does the answer that follows (the decision asks the iPhone for an assertion).
#[tokio::test]
async fn a_status_woken_by_the_scan_reports_the_decision_the_scan_recorded() {
    for domain in TestDomain::each_engine().await {
        assertions_asked_of_iphones(&domain).await;
        let user = domain.user("uma").await;
        let iphone = app_attest_phone(&domain, &user, "iOS").await;
        let created = session(&domain).await;
        let id = created.session_id.to_string();
        let before = status(&domain.ctx, &domain.app.id, &id, Duration::ZERO)
            .await
            .expect("status before the scan");
        assert_eq!(before.state, QrSessionState::Created);
        assert_eq!(before.policy, None, "nothing is decided before the scan");
        let waiter = {
            let (ctx, app, id) = (domain.ctx.clone(), domain.app.id.clone(), id.clone());
            tokio::spawn(async move { status(&ctx, &app, &id, Duration::from_secs(10)).await })
        };
        let topic = crate::domain::events::Topic::QrSession(id.clone());
        tokio::time::timeout(Duration::from_secs(5), async {
            while domain.ctx.events.waiters_on(&topic) < 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the relying party waits");
        let signed = claim(&domain.ctx, &iphone.enrollment, scanned(&created, &iphone))
            .await
            .expect("claimed")
            .context;
        let woken = waiter.await.expect("joined").expect("the waiter's status");
        assert_eq!(woken.state, QrSessionState::Scanned);
        assert_eq!(
            woken.policy.map(|p| p.rule),
            Some("ios".to_string()),
            "the woken status reports the scan's decision"
        );
        let context: QrSessionContext = domain.verified(&signed, MessageType::QrSessionContext);
        let answer_signed = answered(
            &iphone,
            &context,
            Decision::Approve,
            &context.context,
            domain.clock.now(),
        );
        assert_eq!(
            answer(&domain.ctx, &id, &answer_signed, CLIENT)
                .await
                .expect_err("the decision asks for an assertion")
                .code(),
            Some(ErrorCode::AppAttestAssertionRequired)
        );
    }
}

/// Under user approval the push that follows an approval never outlives its session: answered
/// 15 seconds before the session's end it lasts as long as the session; 5 seconds before,
/// there is no time for a push and the answer is refused as expired. A session read as
/// expired (final) stays expired, however its push is answered afterwards.
#[tokio::test]
async fn a_follow_up_never_outlives_its_session() {
    for domain in TestDomain::each_engine().await {
        ask_users_after_the_scan(&domain).await;
        for (n, left) in [15u64, 5].into_iter().enumerate() {
            let (_, phone) = domain.user_with_device(&format!("lena-{n}")).await;
            let created = create_session(
                &domain.ctx,
                &domain.app,
                CreateQrSession {
                    expires_in: Some(30),
                    ..CreateQrSession::default()
                },
            )
            .await
            .expect("a session");
            let id = created.session_id.to_string();
            let context = claimed(&domain, &created, &phone).await;
            domain.clock.advance(Duration::from_secs(30 - left));
            let signed = answered(
                &phone,
                &context,
                Decision::Approve,
                &context.context,
                domain.clock.now(),
            );
            let follow_up = match answer(&domain.ctx, &id, &signed, CLIENT).await {
                Ok(recorded) => recorded.follow_up.expect("a push follows"),
                Err(refused) => {
                    assert_eq!(refused.code(), Some(ErrorCode::QrSessionExpired), "{left}");
                    assert_eq!(left, 5, "only an answer too late for a push is refused");
                    continue;
                }
            };
            let request = domain.pulled(&phone, &follow_up).await;
            domain.clock.advance(Duration::from_secs(left));
            let read = status(&domain.ctx, &domain.app.id, &id, Duration::ZERO)
                .await
                .expect("status");
            assert_eq!(
                read.state,
                QrSessionState::Expired,
                "{left}: the session ended"
            );
            // The push answered once the session ended (refused if it ended with it).
            let _ = domain
                .answered_by(&phone, &request, Decision::Approve)
                .await;
            let read = status(&domain.ctx, &domain.app.id, &id, Duration::ZERO)
                .await
                .expect("status");
            assert_eq!(
                read.state,
                QrSessionState::Expired,
                "{left}: an expired session stays expired"
            );
        }
    }
}

#[tokio::test]
async fn an_answer_is_checked_session_first_then_its_signature_then_its_device() {
    for domain in TestDomain::each_engine().await {
        let (_, phone, id, context) = scanned_by_new_user(&domain, "erin").await;
        let now = domain.clock.now();
        let signed = answered(&phone, &context, Decision::Approve, &context.context, now);
        let code =
            |result: Result<_, crate::domain::DomainError>| result.expect_err("refused").code();

        // An unknown session is not found, whatever the response: malformed, or well formed
        // and naming a device (read beside the session, and not looked at).
        let unknown = tessera_protocol::ids::QrSessionId::generate().to_string();
        for response in ["not a signed message", signed.as_str()] {
            assert_eq!(
                code(answer(&domain.ctx, &unknown, response, CLIENT).await),
                Some(ErrorCode::QrSessionNotFound),
                "{response}"
            );
        }
        // A known session with a malformed response: its signature is refused.
        assert_eq!(
            code(answer(&domain.ctx, &id, "not a signed message", CLIENT).await),
            Some(ErrorCode::InvalidSignature)
        );
        // The device that scanned, unpaired since: its answer is refused, and the session
        // still waits.
        crate::domain::devices::unpair(&domain.ctx, &phone.enrollment)
            .await
            .expect("unpaired");
        assert_eq!(
            code(answer(&domain.ctx, &id, &signed, CLIENT).await),
            Some(ErrorCode::Unauthorized)
        );
        let read = status(&domain.ctx, &domain.app.id, &id, Duration::ZERO)
            .await
            .expect("status");
        assert_eq!(read.state, QrSessionState::Scanned);
    }
}

/// A new session counts against the application's own quota when it sets one, else against the
/// server's default; a quota set meanwhile applies to the next session at once, and the refusal
/// names the quota in force. On PostgreSQL the quota is read inside the insert's admission.
#[tokio::test]
async fn new_sessions_count_against_the_application_s_own_quota_else_the_server_s() {
    use crate::store::applications::{Quotas, set_quotas};
    /// Sets the application's own quota (`None`: the server's default), opens `open` more
    /// sessions and checks that the next is refused, naming `named`.
    async fn with_quota(domain: &TestDomain, own: Option<u32>, open: usize, named: u32) {
        let quotas = Quotas {
            max_open_qr_sessions: own,
            max_pending_requests: None,
        };
        let set = set_quotas(&domain.ctx.db, &domain.app.id, quotas).await;
        assert!(set.expect("quota set"));
        for _ in 0..open {
            session(domain).await;
        }
        let over = create_session(&domain.ctx, &domain.app, CreateQrSession::default())
            .await
            .expect_err("over the quota");
        assert_eq!(over.code(), Some(ErrorCode::QuotaExceeded), "{over}");
        let named = format!("already has {named} open");
        assert!(over.to_string().contains(&named), "{over}");
    }
    for domain in TestDomain::each_engine_with(|| crate::config::ServerConfig {
        max_open_qr_sessions_per_application: 2,
        ..crate::config::ServerConfig::default()
    })
    .await
    {
        with_quota(&domain, None, 2, 2).await;
        with_quota(&domain, Some(3), 1, 3).await;
        with_quota(&domain, Some(5), 2, 5).await;
        // Back to the default: the five open are over it.
        with_quota(&domain, None, 0, 2).await;
        // Sessions that expired count no more.
        domain.clock.advance(Duration::from_secs(3600));
        session(&domain).await;
    }
}

/// The scan as the device API takes it: the call is authenticated first (an unsigned call is
/// `unauthorized` whatever its body), a body that did not parse is refused only then, and the
/// session read beside the call's nonce reaches only a call whose nonce is new: the same call
/// again is `replayed_message`, not the context.
#[tokio::test]
async fn a_signed_scan_is_authenticated_before_its_body_and_its_session_are_looked_at() {
    use super::claim_signed;
    use crate::domain::device_auth::DeviceCall;
    const PATH: &str = "/v1/device/qr-sessions/claim";
    for domain in TestDomain::each_engine().await {
        let (_, phone) = domain.user_with_device("frank").await;
        let created = session(&domain).await;
        let body = serde_json::to_vec(&scanned(&created, &phone)).expect("body");
        let request = || Ok(scanned(&created, &phone));
        let not_json = || {
            Err(crate::domain::DomainError::new(
                ErrorCode::MalformedJson,
                "request body is not valid JSON",
            ))
        };
        let code = |result: Result<_, crate::domain::DomainError>| {
            result.map(drop).expect_err("refused").code()
        };
        fn call<'a>(authorization: Option<&'a str>, body: &'a [u8]) -> DeviceCall<'a> {
            DeviceCall {
                authorization,
                method: "POST",
                path: PATH,
                body,
            }
        }

        // Unsigned: unauthorized, with a good body or one that did not parse.
        assert_eq!(
            code(claim_signed(&domain.ctx, call(None, &body), request()).await),
            Some(ErrorCode::Unauthorized)
        );
        assert_eq!(
            code(claim_signed(&domain.ctx, call(None, b"{"), not_json()).await),
            Some(ErrorCode::Unauthorized)
        );
        // Signed, with a body that did not parse: the parse error.
        let now = domain.clock.now();
        let signed = phone.call("POST", PATH, b"{", now);
        assert_eq!(
            code(claim_signed(&domain.ctx, call(Some(&signed), b"{"), not_json()).await),
            Some(ErrorCode::MalformedJson)
        );
        // Signed, naming no session: not found.
        let mut unknown = scanned(&created, &phone);
        unknown.token = "not-a-token".into();
        let unknown_body = serde_json::to_vec(&unknown).expect("body");
        let signed = phone.call("POST", PATH, &unknown_body, now);
        assert_eq!(
            code(
                claim_signed(
                    &domain.ctx,
                    call(Some(&signed), &unknown_body),
                    Ok(unknown.clone())
                )
                .await
            ),
            Some(ErrorCode::QrSessionNotFound)
        );
        // Signed, the code scanned: the signed context; the session is scanned.
        let signed = phone.call("POST", PATH, &body, now);
        let claimed = claim_signed(&domain.ctx, call(Some(&signed), &body), request())
            .await
            .expect("claimed");
        let context: QrSessionContext =
            domain.verified(&claimed.context, MessageType::QrSessionContext);
        assert_eq!(context.session_id, created.session_id);
        let read = status(
            &domain.ctx,
            &domain.app.id,
            created.session_id.as_str(),
            Duration::ZERO,
        )
        .await
        .expect("status");
        assert_eq!(read.state, QrSessionState::Scanned);
        // The same call again: replayed, and nothing read is answered.
        assert_eq!(
            code(claim_signed(&domain.ctx, call(Some(&signed), &body), request()).await),
            Some(ErrorCode::ReplayedMessage)
        );
        // A replayed call whose claim would be refused anyway (no such session, a body that
        // did not parse): the replay is what it is told, not what its reads found.
        let signed_unknown = phone.call("POST", PATH, &unknown_body, now);
        assert_eq!(
            code(
                claim_signed(
                    &domain.ctx,
                    call(Some(&signed_unknown), &unknown_body),
                    Ok(unknown.clone())
                )
                .await
            ),
            Some(ErrorCode::QrSessionNotFound)
        );
        assert_eq!(
            code(
                claim_signed(
                    &domain.ctx,
                    call(Some(&signed_unknown), &unknown_body),
                    Ok(unknown)
                )
                .await
            ),
            Some(ErrorCode::ReplayedMessage)
        );
        let signed_bad = phone.call("POST", PATH, b"{", now);
        assert_eq!(
            code(claim_signed(&domain.ctx, call(Some(&signed_bad), b"{"), not_json()).await),
            Some(ErrorCode::MalformedJson)
        );
        assert_eq!(
            code(claim_signed(&domain.ctx, call(Some(&signed_bad), b"{"), not_json()).await),
            Some(ErrorCode::ReplayedMessage)
        );
    }
}
