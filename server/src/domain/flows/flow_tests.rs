//! Authentication flows called directly, without HTTP: the customer steps a user through a
//! flow, the flow follows its push (through the `flows` follow-up of the one outcome path), and
//! racing actions cannot both send a push.

use std::time::Duration;

use serde_json::json;
use tessera_protocol::authentication::{AuthenticationRequest, Decision};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::flows::{CreateFlowRequest, FlowAction, FlowState, FlowStatus};
use tessera_protocol::ids::UserId;

use super::{act, create, get};
use crate::clock::Clock;
use crate::domain::testing::{TestDevice, TestDomain, joined};

fn authenticate() -> FlowAction {
    FlowAction::Authenticate {
        mobile_payload: None,
        authorization_payload: None,
    }
}

async fn flow_for(domain: &TestDomain, user: &UserId) -> FlowState {
    let body: CreateFlowRequest =
        serde_json::from_value(json!({"user_id": user})).expect("a flow request");
    let flow = create(&domain.ctx, &domain.app, body)
        .await
        .expect("created");
    assert_eq!(flow.status, FlowStatus::AuthenticationRequired);
    flow
}

/// A flow for a new user `name` with a phone, moved by `authenticate` to wait for its push:
/// the phone, the flow's id and its state.
async fn waiting_for_push(domain: &TestDomain, name: &str) -> (TestDevice, String, FlowState) {
    let (user, phone) = domain.user_with_device(name).await;
    let flow = flow_for(domain, &user).await;
    let id = flow.id.to_string();
    let waiting = act(&domain.ctx, &domain.app, &id, authenticate())
        .await
        .expect("pushed");
    assert_eq!(waiting.status, FlowStatus::PushConfirmationWaiting);
    (phone, id, waiting)
}

/// The flow's push as the device pulls it.
async fn pushed(domain: &TestDomain, device: &TestDevice) -> AuthenticationRequest {
    let mut pulled = domain.pull(device).await;
    assert_eq!(pulled.len(), 1, "one push");
    pulled.remove(0)
}

#[tokio::test]
async fn a_flow_follows_its_push_to_completed_or_rejected() {
    for domain in TestDomain::each_engine().await {
        for (name, decision, end) in [
            ("alice", Decision::Approve, FlowStatus::MfaCompleted),
            ("bob", Decision::Deny, FlowStatus::PushConfirmationRejected),
        ] {
            let (user, phone) = domain.user_with_device(name).await;
            let flow = flow_for(&domain, &user).await;
            let id = flow.id.to_string();
            let waiting = act(&domain.ctx, &domain.app, &id, authenticate())
                .await
                .expect("pushed");
            assert_eq!(waiting.status, FlowStatus::PushConfirmationWaiting);
            let request = pushed(&domain, &phone).await;
            domain
                .answered_by(&phone, &request, decision)
                .await
                .expect("recorded");
            // The follow-up moved the flow when the push ended.
            let stored = crate::store::flows::get(&domain.ctx.db, &flow.id)
                .await
                .expect("read")
                .expect("stored");
            assert_eq!(stored.status, end.as_str(), "{name}");
            let read = get(&domain.ctx, &domain.app.id, &id).await.expect("read");
            assert_eq!(read.status, end);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_actions_sent_at_once_one_moves_the_flow_and_one_push_is_sent() {
    for domain in TestDomain::each_engine().await {
        for n in 0..4 {
            let (carol, phone) = domain.user_with_device(&format!("carol-{n}")).await;
            let flow = flow_for(&domain, &carol).await;
            let id = flow.id.to_string();
            let tasks: Vec<_> = (0..4)
                .map(|_| {
                    let (ctx, app, id) = (domain.ctx.clone(), domain.app.clone(), id.clone());
                    tokio::spawn(async move { act(&ctx, &app, &id, authenticate()).await })
                })
                .collect();
            let results = joined(tasks).await;
            assert_eq!(
                results.iter().filter(|r| r.is_ok()).count(),
                1,
                "{results:?}"
            );
            for refused in results.iter().filter_map(|r| r.as_ref().err()) {
                assert!(
                    matches!(
                        refused.code(),
                        Some(ErrorCode::Conflict | ErrorCode::ActionNotAllowed)
                    ),
                    "{refused:?}"
                );
            }
            assert_eq!(domain.pull(&phone).await.len(), 1, "one push");
        }
    }
}

#[tokio::test]
async fn an_unanswered_push_times_the_flow_out_and_a_canceled_flow_takes_no_answer() {
    for domain in TestDomain::each_engine().await {
        let (phone, id, _) = waiting_for_push(&domain, "dave").await;
        let _ = pushed(&domain, &phone).await;
        domain.clock.advance(Duration::from_secs(121));
        let read = get(&domain.ctx, &domain.app.id, &id).await.expect("read");
        assert_eq!(read.status, FlowStatus::PushConfirmationTimedOut);

        let (erin, tablet) = domain.user_with_device("erin").await;
        let flow = flow_for(&domain, &erin).await;
        let id = flow.id.to_string();
        act(&domain.ctx, &domain.app, &id, authenticate())
            .await
            .expect("pushed");
        let request = pushed(&domain, &tablet).await;
        let canceled = act(
            &domain.ctx,
            &domain.app,
            &id,
            FlowAction::CancelAuthentication {},
        )
        .await
        .expect("canceled");
        assert_eq!(canceled.status, FlowStatus::Canceled);
        let signed = tablet.answer(&request, Decision::Approve, None, domain.clock.now());
        assert!(
            crate::domain::authentication::answer(
                &domain.ctx,
                request.request_id.as_str(),
                &signed,
                "198.51.100.7"
            )
            .await
            .is_err(),
            "the push was withdrawn with its flow"
        );
        let read = get(&domain.ctx, &domain.app.id, &id).await.expect("read");
        assert_eq!(read.status, FlowStatus::Canceled);
    }
}

/// The flow `id` as it stands once it holds `held` (a new device of its user) for a passcode
/// sent by email, as `authenticate` with a mobile payload leaves it, while it shows the QR code
/// of `qr` (if any).
async fn holding_for_a_passcode(
    domain: &TestDomain,
    id: &str,
    held: &TestDevice,
    qr: Option<tessera_protocol::qr::QrSessionId>,
) {
    sqlx::query("UPDATE enrollments SET status = 'pending_verification' WHERE enrollment_id = $1")
        .bind(held.enrollment.enrollment_id.as_str())
        .execute(domain.ctx.db.writer())
        .await
        .expect("held");
    let flow = super::load(&domain.ctx, &domain.app.id, id)
        .await
        .expect("loaded");
    let mut data = flow.data.clone();
    data.pairing = Some(tessera_protocol::flows::FlowPairing {
        enrollment_id: held.enrollment.enrollment_id.clone(),
        server_payload: String::new(),
        state: "pending_verification".into(),
    });
    data.otp = Some(super::OtpStep {
        source: tessera_protocol::flows::FlowOtpSource::Email,
        destination: None,
        authentication_id: None,
        challenge_id: Some("a challenge".into()),
    });
    data.qr = qr;
    super::move_to(
        &domain.ctx,
        &flow,
        "authenticate",
        FlowStatus::MobilePairingRequired,
        data,
        None,
    )
    .await
    .expect("moved")
    .expect("not raced");
}

/// The status of `device`'s enrollment as stored.
async fn enrollment_status(
    domain: &TestDomain,
    device: &TestDevice,
) -> tessera_protocol::api::EnrollmentState {
    crate::store::enrollments::by_id(&domain.ctx.db, &device.enrollment.enrollment_id)
        .await
        .expect("read")
        .expect("stored")
        .status
}

/// A flow holds a new device for a passcode while it shows a QR code, and the user's phone
/// approves the code: the flow completes, and the device held for the passcode nobody will
/// check any more is rejected (the QR approval's move drops the passcode step from the flow).
#[tokio::test]
async fn a_qr_approval_ending_a_flow_rejects_the_device_it_held_for_a_passcode() {
    use tessera_protocol::qr::{QrResponse, QrSessionContext, QrUri};
    for domain in TestDomain::each_engine().await {
        let (user, phone) = domain.user_with_device("mia").await;
        let held = domain.device_of(&user, false).await;
        let flow = flow_for(&domain, &user).await;
        let id = flow.id.to_string();
        let qr = crate::domain::qr::create_for_flow(
            &domain.ctx,
            crate::domain::qr::FlowQrRequest {
                application_id: &domain.app.id,
                flow_id: &flow.id,
                user_id: &user,
                context: tessera_protocol::authentication::AccessContext {
                    application_name: domain.app.name.clone(),
                    ..Default::default()
                },
                expires_at: flow.expires_at,
            },
        )
        .await
        .expect("a QR session");
        holding_for_a_passcode(&domain, &id, &held, Some(qr.clone())).await;
        let shown = crate::domain::qr::flow_view(&domain.ctx, &flow.id, &qr, false)
            .await
            .expect("read")
            .expect("shown");
        let uri = QrUri::parse(&shown.qr_uri.expect("a code")).expect("a QR URI");
        let claimed = crate::domain::qr::claim(
            &domain.ctx,
            &phone.enrollment,
            tessera_protocol::api::ClaimQrSession {
                token: uri.token.expose().to_string(),
                enrollment_ids: vec![phone.enrollment.enrollment_id.clone()],
            },
        )
        .await
        .expect("claimed");
        let context: QrSessionContext = domain.verified(
            &claimed.context,
            tessera_protocol::envelope::MessageType::QrSessionContext,
        );
        let response = QrResponse {
            v: tessera_protocol::PROTOCOL_VERSION,
            session_id: context.session_id.clone(),
            enrollment_id: phone.enrollment.enrollment_id.clone(),
            session_nonce: context.nonce.clone(),
            decision: Decision::Approve,
            context_digest: tessera_protocol::canonical::Sha256Digest::of_canonical(
                &context.context,
            )
            .expect("digest"),
            amr: vec!["fpt".into()],
            signals: Default::default(),
            location: None,
            device: None,
            issued_at: domain.clock.now(),
            app_attest_assertion: None,
        };
        let signed = tessera_protocol::envelope::sign(
            tessera_protocol::envelope::MessageType::QrResponse,
            &response,
            &phone.user_verification,
        )
        .expect("signed");
        crate::domain::qr::answer(&domain.ctx, qr.as_str(), &signed, "198.51.100.7")
            .await
            .expect("approved");
        let read = get(&domain.ctx, &domain.app.id, &id).await.expect("read");
        assert_eq!(read.status, FlowStatus::MfaCompleted);
        assert_eq!(
            enrollment_status(&domain, &held).await,
            tessera_protocol::api::EnrollmentState::Rejected,
            "the held device is rejected with the flow's end"
        );
    }
}

/// A flow for `user` that offers a passcode by email as the new device's approval.
async fn emailing_flow_for(domain: &TestDomain, user: &UserId) -> FlowState {
    crate::domain::backup::set_contacts(
        &domain.ctx,
        &domain.app.id,
        user,
        tessera_protocol::api::BackupContacts {
            phone: None,
            email: Some(format!("{user}@example.com")),
        },
    )
    .await
    .expect("contacts");
    let body: CreateFlowRequest =
        serde_json::from_value(json!({"user_id": user, "email_backup": true}))
            .expect("a flow request");
    create(&domain.ctx, &domain.app, body)
        .await
        .expect("created")
}

/// `authenticate` on `flow` with the mobile payload of a new device, on a task of its own.
fn pairing_through(
    domain: &TestDomain,
    flow: &FlowState,
) -> tokio::task::JoinHandle<Result<FlowState, crate::domain::DomainError>> {
    let mobile_payload = domain.relayed_payload().mobile_payload;
    let (ctx, app, id) = (domain.ctx.clone(), domain.app.clone(), flow.id.to_string());
    tokio::spawn(async move {
        let action = FlowAction::Authenticate {
            mobile_payload: Some(mobile_payload),
            authorization_payload: None,
        };
        act(&ctx, &app, &id, action).await
    })
}

/// Under "verify new devices with the primary device", a flow pairs a new device for a user
/// whose only device is unpaired at the same moment. Whether the new device waits for the
/// primary device or for a passcode is decided in the pairing's own write: a flow that read
/// the user's devices first and chose "the primary device verifies it" would store it, in a
/// write that found no primary device any more, active at once: unverified, and no passcode
/// asked. However the two fall, the new device is never active.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flow_pairing_a_device_as_the_user_s_only_device_is_unpaired_never_pairs_it_unverified() {
    use tessera_protocol::api::EnrollmentState;
    for domain in TestDomain::each_engine().await {
        domain.verify_new_devices_with_primary().await;
        let engine = domain.ctx.db.engine();
        let (mut held, mut asked) = (0, 0);
        for round in 0..24u64 {
            let (user, phone) = domain.user_with_device(&format!("lea-{round}")).await;
            let flow = emailing_flow_for(&domain, &user).await;
            let emails = domain.emails.all().len();
            let pairing = pairing_through(&domain, &flow);
            let pause = Duration::from_micros(round % 12 * 400);
            domain
                .unpairing_after(&user, &phone.enrollment.enrollment_id, async move {
                    tokio::time::sleep(pause).await;
                })
                .await
                .expect("unpaired");
            let moved = pairing.await.expect("the action ran");
            let moved = match moved {
                Ok(moved) => moved,
                Err(e) => panic!("{engine:?}, round {round}: the pairing failed: {e:?}"),
            };
            let pairing = moved.pairing.as_ref().expect("the flow pairs a device");
            let new = crate::store::enrollments::by_id(&domain.ctx.db, &pairing.enrollment_id)
                .await
                .expect("read")
                .expect("stored");
            assert_ne!(
                new.status,
                EnrollmentState::Active,
                "{engine:?}, round {round}: the new device paired unverified ({moved:?})"
            );
            if new.verification_id.is_none() && new.status == EnrollmentState::PendingVerification {
                held += 1;
                assert_eq!(
                    domain.emails.all().len(),
                    emails + 1,
                    "{engine:?}, round {round}: the passcode was sent"
                );
                assert!(
                    moved.otp.is_some(),
                    "{engine:?}, round {round}: the flow asks for it"
                );
            } else {
                asked += 1;
                assert_eq!(
                    domain.emails.all().len(),
                    emails,
                    "{engine:?}, round {round}: no passcode"
                );
            }
        }
        println!("{engine:?}: {held} held for a passcode, {asked} asked of the primary device");
    }
}

/// The user types a recovery code as their phone says no to the flow's push. The code is
/// spent (and the push withdrawn) before the flow moves; the denial's move can come between
/// the action's claim and its move. Then the flow still completes by the code: a code spent
/// on a `conflict` would be lost, and the flow left waiting on the push the code withdrew.
/// However the two fall, the action either completes the flow or is refused before it spent
/// anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recovery_code_typed_as_the_phone_says_no_is_never_spent_for_nothing() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (mut completed, mut refused_unspent) = (0, 0);
        for round in 0..48u64 {
            let (user, phone) = domain.user_with_device(&format!("noor-{round}")).await;
            let codes = crate::domain::bypass::issue_codes(&domain.ctx, &domain.app.id, &user)
                .await
                .expect("issued")
                .codes;
            let flow = flow_for(&domain, &user).await;
            let id = flow.id.to_string();
            act(&domain.ctx, &domain.app, &id, authenticate())
                .await
                .expect("pushed");
            let request = pushed(&domain, &phone).await;
            let typed = tokio::spawn({
                let (ctx, app, id) = (domain.ctx.clone(), domain.app.clone(), id.clone());
                let recovery_code = codes[0].clone();
                async move {
                    act(
                        &ctx,
                        &app,
                        &id,
                        FlowAction::CheckRecoveryCode { recovery_code },
                    )
                    .await
                }
            });
            tokio::time::sleep(Duration::from_micros(round % 8 * 25)).await;
            // Refused when the code withdrew the push first.
            let _ = domain.answered_by(&phone, &request, Decision::Deny).await;
            let typed = typed.await.expect("the action ran");
            let remaining = crate::domain::bypass::codes_status(&domain.ctx, &domain.app.id, &user)
                .await
                .expect("read")
                .remaining;
            match typed {
                Ok(state) => {
                    assert_eq!(
                        state.status,
                        FlowStatus::MfaCompleted,
                        "{engine:?}, round {round}"
                    );
                    assert_eq!(remaining, 9, "{engine:?}, round {round}: one code spent");
                    let read = get(&domain.ctx, &domain.app.id, &id).await.expect("read");
                    assert_eq!(
                        read.status,
                        FlowStatus::MfaCompleted,
                        "{engine:?}, round {round}"
                    );
                    completed += 1;
                }
                Err(e) => {
                    assert_eq!(
                        e.code(),
                        Some(ErrorCode::Conflict),
                        "{engine:?}, round {round}: {e:?}"
                    );
                    assert_eq!(
                        remaining, 10,
                        "{engine:?}, round {round}: refused after the code was spent"
                    );
                    // The denial moved the flow first; the code is still offered.
                    let read = get(&domain.ctx, &domain.app.id, &id).await.expect("read");
                    assert_eq!(
                        read.status,
                        FlowStatus::PushConfirmationRejected,
                        "{engine:?}, round {round}"
                    );
                    refused_unspent += 1;
                }
            }
        }
        println!(
            "{engine:?}: {completed} completed by the code, {refused_unspent} refused before spending it"
        );
    }
}

/// A flow ends by the user's bypass only while the bypass stands: the move that ends it checks
/// the bypass in its own write (PostgreSQL reads it `FOR KEY SHARE`, so a clearing in flight
/// is waited for). A bypass cleared as the flow read it makes the flow take its step again,
/// and the user's device is asked, as it would have been had the clearing come first. Before,
/// the flow completed `bypassed` from the bypass it had read, after its clearing was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bypass_cleared_as_a_flow_reads_it_ends_no_flow() {
    use tessera_protocol::flows::FlowResultStatus;
    let for_an_hour = || tessera_protocol::bypass::SetBypassRequest {
        duration_seconds: Some(3600),
        until: None,
        reason: "lost phone".into(),
    };
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        // A policy, decided (and recorded) once per flow, before the bypass is looked at.
        let policy = serde_json::from_value(json!({
            "rules": [],
            "default": {"action": "require", "methods": ["mobile_push"]}
        }))
        .expect("a policy");
        crate::domain::policy::save(&domain.ctx, &domain.app.id, &policy)
            .await
            .expect("saved");
        let (user, phone) = domain.user_with_device("olga").await;
        crate::domain::bypass::grant(&domain.ctx, &domain.app.id, &user, &for_an_hour())
            .await
            .expect("granted");
        // While the bypass stands, it ends the flow.
        let flow = flow_for(&domain, &user).await;
        let ended = act(&domain.ctx, &domain.app, flow.id.as_str(), authenticate())
            .await
            .expect("ended");
        assert_eq!(ended.status, FlowStatus::MfaCompleted, "{engine:?}");
        assert_eq!(
            ended.result.map(|r| r.status),
            Some(FlowResultStatus::Bypassed),
            "{engine:?}"
        );

        // A clearing in flight as the next flow acts: the flow's move waits for it (on SQLite
        // the flow's claim waits for the writer), then the device is asked.
        let flow = flow_for(&domain, &user).await;
        let clearing = domain.clearing_bypass_in_flight(&user).await;
        let acting = tokio::spawn({
            let (ctx, app, id) = (domain.ctx.clone(), domain.app.clone(), flow.id.to_string());
            async move { act(&ctx, &app, &id, authenticate()).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !acting.is_finished(),
            "{engine:?}: the flow waits for the clearing in flight"
        );
        clearing.commit().await.expect("cleared");
        let acted = acting.await.expect("ran").expect("acted");
        assert_eq!(
            acted.status,
            FlowStatus::PushConfirmationWaiting,
            "{engine:?}: the device is asked once the clearing committed ({:?})",
            acted.result
        );
        assert_eq!(domain.pull(&phone).await.len(), 1, "{engine:?}: one push");
        // The step taken again keeps the decision made before the bypass was found cleared.
        assert_eq!(
            domain.rows_of("policy_decisions", &user).await,
            2,
            "{engine:?}: one policy decision for each flow"
        );
    }
}

/// A flow pairs a new device for a user with none and holds it for a passcode, as the flow
/// expires: the expiry's move comes between the action's claim and its own move, which is then
/// lost. Nothing would ever approve or reject the held device after that, so the action rejects
/// it. PostgreSQL: the user's row, held locked here, stops the pairing's write (which takes
/// turns on it) after the claim, while the flow expires. SQLite's one writer would run the
/// expiry's move after the pairing's write, never between the claim and the move, so it runs
/// there without the interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_held_by_an_action_that_lost_its_move_is_rejected() {
    use tessera_protocol::api::EnrollmentState;
    for domain in TestDomain::each_engine().await {
        domain.verify_new_devices_with_primary().await;
        let engine = domain.ctx.db.engine();
        let postgres = engine == crate::store::Engine::Postgres;
        let user = domain.user("rosa").await;
        let flow = emailing_flow_for(&domain, &user).await;
        let hold = if postgres {
            let mut hold = domain.ctx.db.write().await.expect("a write");
            crate::store::users::lock(
                &mut *hold,
                engine,
                &domain.app.id,
                &user,
                crate::store::users::UserLock::TakesTurns,
            )
            .await
            .expect("locked");
            Some(hold)
        } else {
            None
        };
        let pairing = pairing_through(&domain, &flow);
        if let Some(hold) = hold {
            // Long enough for the action to claim the flow and reach the pairing's write.
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                !pairing.is_finished(),
                "the pairing waits for the user's row"
            );
            let left = u64::try_from(flow.expires_at - domain.clock.now()).unwrap_or(0);
            domain.clock.advance(Duration::from_secs(left + 1));
            let expired = get(&domain.ctx, &domain.app.id, flow.id.as_str())
                .await
                .expect("read");
            assert_eq!(expired.status, FlowStatus::MfaFailed);
            hold.rollback().await.expect("released");
        }
        let paired = pairing.await.expect("the action ran").expect("answered");
        let state = paired
            .pairing
            .as_ref()
            .map(|p| p.state.as_str())
            .unwrap_or_default();
        let stored = sqlx::query_scalar::<_, String>(
            "SELECT status FROM enrollments WHERE application_id = $1 AND user_id = $2",
        )
        .bind(domain.app.id.as_str())
        .bind(user.as_str())
        .fetch_all(domain.ctx.db.pool())
        .await
        .expect("read");
        if postgres {
            // The action answers the flow as it ended (expired), and the device it held is
            // rejected for good.
            assert_eq!(paired.status, FlowStatus::MfaFailed, "{engine:?}");
            assert_eq!(stored, [EnrollmentState::Rejected.as_str()], "{engine:?}");
        } else {
            assert_eq!(
                paired.status,
                FlowStatus::MobilePairingRequired,
                "{engine:?}"
            );
            assert_eq!(
                state,
                EnrollmentState::PendingVerification.as_str(),
                "{engine:?}"
            );
            assert_eq!(
                stored,
                [EnrollmentState::PendingVerification.as_str()],
                "{engine:?}"
            );
        }
    }
}

/// An action that spent something (here a recovery code's action, its move beaten by the
/// server's when the phone said no) ends the flow on its latest version, but never from under
/// another action that claimed the flow since: it waits for that action, then ends the flow if
/// that action let it go, or leaves it as that action ended it. Before, it moved the flow while
/// the other action held it, and what that action was spending went to a flow already ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_ending_a_flow_on_its_latest_version_waits_for_another_actions_claim() {
    use tessera_protocol::flows::FlowResultStatus;
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        for other_ends_it in [false, true] {
            let (user, phone) = domain
                .user_with_device(&format!("opal-{other_ends_it}"))
                .await;
            let id = flow_for(&domain, &user).await.id.to_string();
            act(&domain.ctx, &domain.app, &id, authenticate())
                .await
                .expect("pushed");
            let request = pushed(&domain, &phone).await;
            // The code's action claims the flow...
            let flow = super::load(&domain.ctx, &domain.app.id, &id)
                .await
                .expect("read");
            let first = super::Claim::take(&domain.ctx, &flow)
                .await
                .expect("claim")
                .expect("claimed");
            let mut claimed = flow.clone();
            claimed.stored.version = first.version;
            // ...the phone says no, and the server's move ends that claim...
            domain
                .answered_by(&phone, &request, Decision::Deny)
                .await
                .expect("denied");
            let latest = super::reload(&domain.ctx, &flow).await.expect("read");
            let rejected = super::refresh(&domain.ctx, latest).await.expect("moved");
            assert_eq!(rejected.status, FlowStatus::PushConfirmationRejected);
            first.ended_by_move();
            // ...and another action claims the flow before the code's action ends it.
            let second = super::Claim::take(&domain.ctx, &rejected)
                .await
                .expect("claim")
                .expect("claimed");
            let ending = tokio::spawn({
                let ctx = domain.ctx.clone();
                async move {
                    let completed = |latest: &super::Flow| {
                        super::finished(
                            latest.data.clone(),
                            super::result(FlowResultStatus::Authenticated),
                        )
                    };
                    super::end_on_latest(
                        &ctx,
                        &claimed,
                        "checkRecoveryCode",
                        FlowStatus::MfaCompleted,
                        completed,
                        super::OtherClaims::WaitFor,
                        None,
                    )
                    .await
                }
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            let read = get(&domain.ctx, &domain.app.id, &id).await.expect("read");
            assert_eq!(
                read.status,
                FlowStatus::PushConfirmationRejected,
                "{engine:?}: the flow is left to the action holding it"
            );
            assert!(
                !ending.is_finished(),
                "{engine:?}: it waits for that action"
            );
            let ended = if other_ends_it {
                let mut held = rejected.clone();
                held.stored.version = second.version;
                let canceled =
                    super::finished(held.data.clone(), super::result(FlowResultStatus::Canceled));
                super::move_to(
                    &domain.ctx,
                    &held,
                    "cancelAuthentication",
                    FlowStatus::Canceled,
                    canceled,
                    None,
                )
                .await
                .expect("moved")
                .expect("the holder's move");
                second.ended_by_move();
                FlowStatus::Canceled
            } else {
                second.release().await;
                FlowStatus::MfaCompleted
            };
            let moved = tokio::time::timeout(Duration::from_secs(10), ending)
                .await
                .expect("woken by the other action's move or release")
                .expect("ran")
                .expect("ended");
            assert_eq!(
                moved.map(|f| f.status),
                (!other_ends_it).then_some(FlowStatus::MfaCompleted),
                "{engine:?}"
            );
            let read = get(&domain.ctx, &domain.app.id, &id).await.expect("read");
            assert_eq!(read.status, ended, "{engine:?}");
        }
    }
}

/// A flow's `flow.completed` record is written by its final move, all or nothing: racing final
/// moves (cancellations sent at once) end the flow once and leave exactly one record, naming
/// the flow and the status it ended in, and a refused action after it adds none.
#[tokio::test]
async fn a_flow_s_completion_is_recorded_once_by_its_final_move() {
    for domain in TestDomain::each_engine().await {
        let (gus, _phone) = domain.user_with_device("gus").await;
        let flow = flow_for(&domain, &gus).await;
        let id = flow.id.to_string();
        let cancels = crate::domain::testing::sent_at_once(4, || {
            let (ctx, app, id) = (domain.ctx.clone(), domain.app.clone(), id.clone());
            async move { act(&ctx, &app, &id, FlowAction::CancelAuthentication {}).await }
        })
        .await;
        assert!(
            cancels.iter().any(Result::is_ok),
            "one cancellation ends it"
        );
        assert!(
            act(&domain.ctx, &domain.app, &id, authenticate())
                .await
                .is_err(),
            "an ended flow takes no action"
        );
        let filter = crate::store::audit::Filter {
            application_id: Some(domain.app.id.to_string()),
            kind: Some("flow.completed".into()),
            ..Default::default()
        };
        let records = crate::store::audit::query(&domain.ctx.db, &filter, 10, true)
            .await
            .expect("records");
        assert_eq!(records.len(), 1, "{records:?}");
        let record = &records[0].record;
        assert_eq!(record.subject.as_deref(), Some(id.as_str()));
        assert_eq!(record.user_id.as_deref(), Some(gus.as_str()));
        assert!(
            record.details.contains("\"CANCELED\""),
            "{}",
            record.details
        );
        // The flow's history has the cancellation once.
        let history = super::history(&domain.ctx, &domain.app.id, &id)
            .await
            .expect("history");
        let canceled = history
            .events
            .iter()
            .filter(|e| e.to_status == FlowStatus::Canceled)
            .count();
        assert_eq!(canceled, 1, "{history:?}");
    }
}

/// A backend polling a flow that waits for its push is woken by the push's ending itself: here
/// the push is ended as an answer whose write could not see the flow would end it (its state
/// written, its topic announced, no follow-up run), and the poll still answers at once with
/// the flow moved, not at its deadline.
#[tokio::test]
async fn a_poll_wakes_when_its_push_ends_even_without_the_flow_s_follow_up() {
    use crate::domain::events::Topic;
    use crate::domain::testing::{WAITER_WAIT, until_waited, woken};
    for domain in TestDomain::each_engine().await {
        let (_phone, id, waiting) = waiting_for_push(&domain, "dora").await;
        let push = waiting.push.expect("a push").authentication_id;
        let poller = {
            let (ctx, app, id) = (domain.ctx.clone(), domain.app.clone(), id.clone());
            let wait = FlowAction::Poll {
                wait: Some(WAITER_WAIT.as_secs()),
            };
            tokio::spawn(async move { act(&ctx, &app, &id, wait).await })
        };
        let topic = Topic::Authentication(push.to_string());
        until_waited(&domain.ctx, &topic).await;
        sqlx::query(
            "UPDATE authentications SET state = 'denied', decision = 'deny', answered_at = $2 \
             WHERE id = $1",
        )
        .bind(push.as_str())
        .bind(domain.clock.now())
        .execute(domain.ctx.db.pool())
        .await
        .expect("ended");
        domain.ctx.events.announce(&[topic]);
        let polled = woken(poller).await.expect("polled");
        assert_eq!(polled.status, FlowStatus::PushConfirmationRejected);
    }
}

/// A flow's claim is a lease: on PostgreSQL its commit does not wait for the WAL flush (its own
/// transaction turns `synchronous_commit` off, and only its own: the connection it ran on
/// commits the next write as the database says), and it still claims exactly as before.
#[tokio::test]
async fn a_claim_commits_without_waiting_for_the_flush_and_leaves_its_connection_as_it_was() {
    use crate::store::flows::{claim_statement, release_statement};
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let user = domain.user("quill").await;
        let id = flow_for(&domain, &user).await.id.to_string();
        let flow = super::load(&domain.ctx, &domain.app.id, &id)
            .await
            .expect("read");
        let mut conn = domain.ctx.db.reader().await.expect("a connection");
        let setting = "current_setting('synchronous_commit')";
        let in_force = |statement: &str| match engine {
            crate::store::Engine::Postgres => format!("{statement} RETURNING {setting}"),
            crate::store::Engine::Sqlite => format!("{statement} RETURNING 'no such setting'"),
        };
        let now = domain.ctx.now_ms();
        let claimed: Option<String> = sqlx::query_scalar(&in_force(claim_statement(engine)))
            .bind(flow.stored.id.as_str())
            .bind(flow.stored.version)
            .bind(now + 30_000)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await
            .expect("claim");
        let released: Option<String> = sqlx::query_scalar(&in_force(release_statement(engine)))
            .bind(flow.stored.id.as_str())
            .bind(flow.stored.version + 1)
            .fetch_optional(&mut *conn)
            .await
            .expect("release");
        if engine == crate::store::Engine::Postgres {
            assert_eq!(claimed.as_deref(), Some("off"), "the claim's own setting");
            assert_eq!(
                released.as_deref(),
                Some("off"),
                "the release's own setting"
            );
            let after: String = sqlx::query_scalar(&format!("SELECT {setting}"))
                .fetch_one(&mut *conn)
                .await
                .expect("the connection's setting");
            assert_ne!(
                after, "off",
                "the setting stayed with the claim's transaction"
            );
        } else {
            assert!(
                claimed.is_some() && released.is_some(),
                "claimed and released"
            );
        }
        drop(conn);
        // The claim moved the version and the release let it go: the next claim is taken at
        // the claimed version, and one at the version read before is refused.
        let latest = super::reload(&domain.ctx, &flow).await.expect("read");
        assert_eq!(latest.stored.version, flow.stored.version + 1);
        assert!(
            super::Claim::take(&domain.ctx, &flow)
                .await
                .expect("claim")
                .is_none(),
            "a claim at the version read before the first one"
        );
        let next = super::Claim::take(&domain.ctx, &latest)
            .await
            .expect("claim")
            .expect("claimed once released");
        next.release().await;
    }
}

/// A push a flow's action makes is written with the flow's move, all or nothing: with the flow
/// moved by another since the action's claim, no push is stored (nothing would ever show it, so
/// nothing would ever answer it); with the claim standing, the push and the move are stored
/// together, and the move is the action's. The policy decision the step made goes with them:
/// recorded by the push's write, or by the action's move when the step ends the flow, and not
/// at all when the move is lost.
#[tokio::test]
async fn a_push_is_stored_only_with_its_flow_s_move() {
    /// The policy decisions recorded about flow `id`, and their audit records.
    async fn decisions_about(domain: &TestDomain, id: &str) -> [i64; 2] {
        let decisions = sqlx::query_scalar(
            "SELECT COUNT(*) FROM policy_decisions WHERE application_id = $1 AND subject_id = $2",
        )
        .bind(domain.app.id.as_str())
        .bind(id)
        .fetch_one(domain.ctx.db.pool())
        .await
        .expect("count");
        let audit = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_log WHERE application_id = $1 AND kind = 'policy.decided' \
             AND subject = $2",
        )
        .bind(domain.app.id.as_str())
        .bind(id)
        .fetch_one(domain.ctx.db.pool())
        .await
        .expect("count");
        [decisions, audit]
    }
    async fn save_policy(domain: &TestDomain, policy: serde_json::Value) {
        let policy = serde_json::from_value(policy).expect("a policy");
        crate::domain::policy::save(&domain.ctx, &domain.app.id, &policy)
            .await
            .expect("saved");
    }
    /// Flow `id` read and claimed: the claim, and the flow as its action holds it.
    async fn claimed(domain: &TestDomain, id: &str) -> (super::Claim, super::Flow) {
        let loaded = super::load(&domain.ctx, &domain.app.id, id)
            .await
            .expect("read");
        let claim = super::Claim::take(&domain.ctx, &loaded)
            .await
            .expect("claim")
            .expect("claimed");
        let mut claimed = loaded;
        claimed.stored.version = claim.version;
        (claim, claimed)
    }
    /// `authenticate`'s step on `claimed`: what it returned, and what its push's write did.
    async fn authenticate_step(
        domain: &TestDomain,
        claimed: &mut super::Flow,
    ) -> ((FlowStatus, super::Data), Option<super::PushWritten>) {
        let mut mover = super::StepWrites::new("authenticate");
        let step = super::take_step(
            &domain.ctx,
            &domain.app,
            claimed,
            authenticate(),
            None,
            &mover,
        )
        .await
        .expect("the step");
        (step, mover.written.take())
    }
    for domain in TestDomain::each_engine().await {
        save_policy(
            &domain,
            json!({"rules": [], "default": {"action": "require", "methods": ["mobile_push"]}}),
        )
        .await;
        let (user, _phone) = domain.user_with_device("rook").await;
        let id = flow_for(&domain, &user).await.id.to_string();

        // The action claims the flow, and another move comes before its push (as one does once
        // a claim lapsed): the push finds the flow moved.
        let (claim, mut flow) = claimed(&domain, &id).await;
        let (status, data) = super::cancel(&domain.ctx, &flow)
            .await
            .expect("a cancellation's step");
        super::move_to(
            &domain.ctx,
            &flow,
            "cancelAuthentication",
            status,
            data,
            None,
        )
        .await
        .expect("move")
        .expect("moved");
        claim.ended_by_move();
        let (_, written) = authenticate_step(&domain, &mut flow).await;
        assert!(
            matches!(written, Some(super::PushWritten::FlowLost)),
            "the push's write found its flow moved"
        );
        assert_eq!(
            domain.rows_of("authentications", &user).await,
            0,
            "no push without its flow's move"
        );
        let latest = super::load(&domain.ctx, &domain.app.id, &id)
            .await
            .expect("read");
        assert_eq!(latest.status, FlowStatus::Canceled, "the other move stands");
        assert_eq!(
            decisions_about(&domain, &id).await,
            [0, 0],
            "no decision for a step whose move was lost"
        );

        // A standing claim: the push and the action's move, together.
        let id = flow_for(&domain, &user).await.id.to_string();
        let (claim, mut claimed) = claimed(&domain, &id).await;
        let ((status, data), written) = authenticate_step(&domain, &mut claimed).await;
        claim.ended_by_move();
        assert_eq!(status, FlowStatus::PushConfirmationWaiting);
        let Some(super::PushWritten::Moved(moved)) = written else {
            panic!("the push's write moved its flow");
        };
        let push = data.push.as_ref().expect("the push shown");
        assert_eq!(domain.rows_of("authentications", &user).await, 1);
        let stored = super::load(&domain.ctx, &domain.app.id, &id)
            .await
            .expect("read");
        assert_eq!(stored.status, FlowStatus::PushConfirmationWaiting);
        assert_eq!(stored.stored.version, claimed.stored.version + 1);
        assert_eq!(stored.stored.version, moved.stored.version);
        assert_eq!(
            stored.stored.authentication_id.as_ref(),
            Some(&push.authentication_id),
            "the flow waits for the push stored with it"
        );
        let history = super::history(&domain.ctx, &domain.app.id, &id)
            .await
            .expect("history");
        let last = history.events.last().expect("an event");
        assert_eq!(
            (last.action.as_str(), last.to_status),
            ("authenticate", FlowStatus::PushConfirmationWaiting)
        );
        assert_eq!(
            decisions_about(&domain, &id).await,
            [1, 1],
            "the decision recorded with the push's write"
        );

        // A policy that ends the flow: its decision is recorded by the action's move.
        save_policy(
            &domain,
            json!({"rules": [], "default": {"action": "deny", "reason": "closed"}}),
        )
        .await;
        let id = flow_for(&domain, &user).await.id.to_string();
        let ended = act(&domain.ctx, &domain.app, &id, authenticate())
            .await
            .expect("ended");
        assert_eq!(ended.status, FlowStatus::MfaFailed);
        assert_eq!(decisions_about(&domain, &id).await, [1, 1]);
    }
}

/// A policy is never decided on a device list that could not be read: the seamless step
/// (a policy decided before its payload is looked at) fails with the read's error, and the flow
/// stays where it was, instead of deciding as if the user had no device.
#[tokio::test]
async fn a_policy_is_not_decided_without_the_users_devices() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let policy = serde_json::from_value(json!({
            "rules": [],
            "default": {"action": "approve"}
        }))
        .expect("a policy");
        crate::domain::policy::save(&domain.ctx, &domain.app.id, &policy)
            .await
            .expect("saved");
        let (user, _phone) = domain.user_with_device("quinn").await;
        let flow = flow_for(&domain, &user).await;
        // The user's device cannot be read: its stored signals are not JSON.
        sqlx::query(
            "UPDATE enrollments SET signals = 'not json' \
             WHERE application_id = $1 AND user_id = $2",
        )
        .bind(domain.app.id.as_str())
        .bind(user.as_str())
        .execute(domain.ctx.db.writer())
        .await
        .expect("device spoiled");
        let seamless = FlowAction::Authenticate {
            mobile_payload: None,
            authorization_payload: Some("a-payload-never-read".into()),
        };
        let refused = act(&domain.ctx, &domain.app, flow.id.as_str(), seamless).await;
        assert!(
            refused.is_err(),
            "{engine:?}: decided without the devices: {refused:?}"
        );
        let stored = crate::store::flows::get(&domain.ctx.db, &flow.id)
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(
            stored.status,
            FlowStatus::AuthenticationRequired.as_str(),
            "{engine:?}"
        );
    }
}
