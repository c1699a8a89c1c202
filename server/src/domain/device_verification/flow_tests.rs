//! A new device verified by the user's primary device, called directly without HTTP: the
//! pairing holds the new enrollment, the primary device is asked, and its answer (through the
//! one outcome path and the `device_verification` follow-up) activates or rejects it.

use std::time::Duration;

use tessera_protocol::api::EnrollmentState;
use tessera_protocol::authentication::{AuthenticationRequest, AuthenticationState, Decision};
use tessera_protocol::ids::UserId;

use crate::clock::Clock;
use crate::domain::events::Topic;
use crate::domain::pairing::{pair_device, start};
use crate::domain::testing::{
    Registering, TestDevice, TestDomain, WAITER_WAIT, endings_announced, until_waited, woken,
};
use crate::store::enrollments::{self, Enrollment};

const CLIENT: &str = "203.0.113.9";

/// An application whose further devices pair only once the primary device approves, and one of
/// its users with a primary device.
async fn verifying_domains(name: &str) -> Vec<(TestDomain, UserId, TestDevice)> {
    let mut out = Vec::new();
    for domain in TestDomain::each_engine().await {
        domain.verify_new_devices_with_primary().await;
        let (user, phone) = domain.user_with_device(name).await;
        out.push((domain, user, phone));
    }
    out
}

/// A new device pairs with a fresh code for `user`: its enrollment as stored (held for the
/// primary device's approval).
pub(super) async fn new_device_pairs(domain: &TestDomain, user: &UserId) -> Enrollment {
    let code = start(&domain.ctx, &domain.app.id, user, None)
        .await
        .expect("a code")
        .pairing_code;
    let tablet = Registering::new(&domain.ctx.public_url, &code, domain.clock.now(), false);
    pair_device(&domain.ctx, CLIENT, &tablet.request)
        .await
        .expect("held for verification");
    enrollments::by_registration_digest(&domain.ctx.db, &tablet.digest.to_string())
        .await
        .expect("read")
        .expect("stored")
}

/// The verification request the primary device pulls.
async fn verification_for(
    domain: &TestDomain,
    phone: &TestDevice,
    held: &Enrollment,
) -> AuthenticationRequest {
    let verification = held
        .verification_id
        .clone()
        .expect("a verification request");
    // The primary device is asked.
    domain.pulled(phone, &verification).await
}

async fn stored(domain: &TestDomain, enrollment: &Enrollment) -> Enrollment {
    enrollments::by_id(&domain.ctx.db, &enrollment.enrollment_id)
        .await
        .expect("read")
        .expect("stored")
}

#[tokio::test]
async fn the_primary_devices_approval_activates_the_new_device() {
    for (domain, alice, phone) in verifying_domains("alice").await {
        let held = new_device_pairs(&domain, &alice).await;
        assert_eq!(held.status, EnrollmentState::PendingVerification);
        assert!(!held.is_primary);
        let request = verification_for(&domain, &phone, &held).await;
        assert!(
            request.parameters.message.contains("(new)"),
            "{:?}",
            request.parameters.message
        );
        domain
            .answered_by(&phone, &request, Decision::Approve)
            .await
            .expect("recorded");
        // The follow-up ran on the answer's event: nothing needed reading it again.
        let now = stored(&domain, &held).await;
        assert_eq!(now.status, EnrollmentState::Active);
    }
}

#[tokio::test]
async fn the_primary_devices_denial_rejects_the_new_device() {
    for (domain, bob, phone) in verifying_domains("bob").await {
        let held = new_device_pairs(&domain, &bob).await;
        let request = verification_for(&domain, &phone, &held).await;
        domain
            .answered_by(&phone, &request, Decision::Deny)
            .await
            .expect("recorded");
        let now = stored(&domain, &held).await;
        assert_eq!(now.status, EnrollmentState::Rejected);
    }
}

#[tokio::test]
async fn an_unanswered_verification_rejects_the_new_device_once_it_expired() {
    for (domain, carol, phone) in verifying_domains("carol").await {
        let held = new_device_pairs(&domain, &carol).await;
        let _ = verification_for(&domain, &phone, &held).await;
        domain.clock.advance(Duration::from_secs(24 * 3600));
        // Expiry writes nothing: the enrollment is settled when it is read.
        let settled =
            crate::domain::device_verification::settled(&domain.ctx, stored(&domain, &held).await)
                .await
                .expect("settled");
        assert_eq!(settled.status, EnrollmentState::Rejected);
        assert_eq!(
            stored(&domain, &held).await.status,
            EnrollmentState::Rejected
        );
    }
}

/// A new device pairing at the moment the user's primary device is unpaired. The pairing picks
/// the primary device that will verify it inside its write, under the user's lock, which the
/// unpairing takes too: it comes first, and the unpairing then fails its verification request;
/// or it comes after, and finds no primary device to ask. Never is a verification request left
/// pending for a primary device that is gone (the new device would wait until it expired).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pairing_racing_the_primary_devices_unpairing_leaves_nothing_pending_for_it() {
    for domain in TestDomain::each_engine().await {
        domain.verify_new_devices_with_primary().await;
        let engine = domain.ctx.db.engine();
        let (mut asked, mut not_asked) = (0, 0);
        for round in 0..24u64 {
            let (user, phone) = domain.user_with_device(&format!("yara-{round}")).await;
            let code = start(&domain.ctx, &domain.app.id, &user, None)
                .await
                .expect("a code")
                .pairing_code;
            let tablet = Registering::new(&domain.ctx.public_url, &code, domain.clock.now(), false);
            let pairing = tokio::spawn({
                let (ctx, request) = (domain.ctx.clone(), tablet.request.clone());
                async move { pair_device(&ctx, CLIENT, &request).await }
            });
            let primary = phone.enrollment.enrollment_id.clone();
            // Started later in most rounds, so that either side comes first.
            let pause = tokio::time::sleep(Duration::from_micros(500 * (round % 6)));
            let unpairing = domain.unpairing_after(&user, &primary, pause);
            let (paired, unpaired) = tokio::join!(pairing, unpairing);
            unpaired.expect("ran");
            paired.expect("ran").expect("paired");
            let pending: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM authentications WHERE enrollment_id = $1 AND state = 'pending'",
            )
            .bind(primary.as_str())
            .fetch_one(domain.ctx.db.pool())
            .await
            .expect("count");
            assert_eq!(
                pending, 0,
                "{engine:?}, round {round}: a verification request waits for a removed device"
            );
            let tablet =
                enrollments::by_registration_digest(&domain.ctx.db, &tablet.digest.to_string())
                    .await
                    .expect("read")
                    .expect("stored");
            // Asked, the new device was rejected with its verification (the device that was
            // to verify it is gone); not asked, it is the user's device now.
            match tablet.status {
                EnrollmentState::Rejected => asked += 1,
                EnrollmentState::Active => not_asked += 1,
                other => panic!("{engine:?}, round {round}: {other:?}"),
            }
        }
        println!(
            "{engine:?}: {asked} asked the primary device before it went, {not_asked} paired after it"
        );
    }
}

/// How many audit records tell the ending of authentication `id` (approved or expired).
async fn endings_recorded(
    domain: &TestDomain,
    id: &tessera_protocol::ids::AuthenticationId,
) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE subject = $1 \
         AND kind IN ('authentication.approved', 'authentication.expired')",
    )
    .bind(id.as_str())
    .fetch_one(domain.ctx.db.pool())
    .await
    .expect("count")
}

/// The primary device approves a device pairing again (its earlier enrollment, same device key,
/// is replaced on approval) a second before the verification expires, while the new device's
/// status poll runs with the clock moved past the expiry. The poll may read the request still
/// pending after its expiry and settle it as expired while the approval, its time read before
/// the expiry, is being recorded. Whichever comes first, the request's outcome and the device's
/// agree: approved, the new enrollment is active and the earlier one replaced; expired, the new
/// one is rejected and the earlier one kept (never both lost), and the ending is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approval_at_the_expiry_racing_a_status_poll_is_applied_whole_or_not_at_all() {
    for (domain, user, phone) in verifying_domains("mara").await {
        let engine = domain.ctx.db.engine();
        let (mut approved, mut expired) = (0, 0);
        for round in 0..24u64 {
            let held = new_device_pairs(&domain, &user).await;
            let verification = held.verification_id.clone().expect("a verification");
            // The same device's earlier enrollment, which the approval replaces.
            let earlier = earlier_enrollment_of(&domain, &held).await;
            let request = verification_for(&domain, &phone, &held).await;
            let expires_at = crate::store::authentications::get(
                &domain.ctx.db,
                &verification,
                domain.clock.now(),
            )
            .await
            .expect("read")
            .expect("stored")
            .expires_at;
            let to_last_second = expires_at - 1 - domain.clock.now();
            domain.clock.advance(Duration::from_secs(
                u64::try_from(to_last_second).expect("ahead"),
            ));
            let signed = phone.answer(&request, Decision::Approve, None, domain.clock.now());
            let approval = {
                let (ctx, id) = (domain.ctx.clone(), verification.clone());
                tokio::spawn(async move {
                    crate::domain::authentication::answer(&ctx, id.as_str(), &signed, CLIENT).await
                })
            };
            // The clock passes the expiry while the approval is under way (before it read the
            // time in some rounds: it is then refused as expired).
            crate::domain::testing::yields(round % 6).await;
            domain.clock.advance(Duration::from_secs(2));
            let poll = {
                let ctx = domain.ctx.clone();
                let id = held.enrollment_id.clone();
                tokio::spawn(async move {
                    let current = enrollments::by_id(&ctx.db, &id)
                        .await
                        .expect("read")
                        .expect("stored");
                    crate::domain::device_verification::settled(&ctx, current)
                        .await
                        .expect("settled")
                })
            };
            let (answered, polled) = tokio::join!(approval, poll);
            let _ = answered.expect("ran");
            polled.expect("ran");
            domain.sweep_expired().await;
            let outcome = crate::store::authentications::get(
                &domain.ctx.db,
                &verification,
                domain.clock.now(),
            )
            .await
            .expect("read")
            .expect("stored")
            .state;
            let new = stored(&domain, &held).await.status;
            let earlier_kept = enrollments::by_id(&domain.ctx.db, &earlier.enrollment_id)
                .await
                .expect("read")
                .is_some();
            match outcome {
                AuthenticationState::Approved => {
                    approved += 1;
                    assert_eq!(
                        (new, earlier_kept),
                        (EnrollmentState::Active, false),
                        "{engine:?}, round {round}: approved, the new enrollment replaces the earlier one"
                    );
                }
                AuthenticationState::Expired => {
                    expired += 1;
                    assert_eq!(
                        (new, earlier_kept),
                        (EnrollmentState::Rejected, true),
                        "{engine:?}, round {round}: expired, the new enrollment is rejected and the earlier one kept"
                    );
                }
                other => panic!("{engine:?}, round {round}: {other:?}"),
            }
            assert_eq!(
                endings_recorded(&domain, &verification).await,
                1,
                "{engine:?}, round {round}: the ending is recorded once"
            );
        }
        println!(
            "{engine:?}: the approval came first {approved} times, the expiry {expired} times"
        );
    }
}

/// An earlier enrollment of the same device as `held` (the same device id and device key),
/// active and stored: the one the primary device's approval of `held` replaces.
async fn earlier_enrollment_of(domain: &TestDomain, held: &Enrollment) -> Enrollment {
    let earlier = Enrollment {
        enrollment_id: tessera_protocol::ids::EnrollmentId::generate(),
        registration_digest: format!("earlier {}", rand::random::<u64>()),
        status: EnrollmentState::Active,
        verification_id: None,
        is_primary: false,
        paired_at: held.paired_at - 1,
        ..held.clone()
    };
    let mut w = domain.ctx.db.write().await.expect("write");
    enrollments::insert(w.conn().await.expect("connection"), &earlier)
        .await
        .expect("inserted");
    w.commit().await.expect("committed");
    earlier
}

/// The primary device approves a device pairing again: its earlier enrollment (same device key)
/// is replaced, and the request still waiting for that enrollment can no longer be answered.
/// It ends failed (`device_unpaired`) through the one outcome path, as when a device pairs
/// again directly: its waiter is woken at once, and its ending is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_re_pairing_fails_the_replaced_devices_requests_once_waking_their_waiters() {
    for (domain, user, phone) in verifying_domains("nina").await {
        let engine = domain.ctx.db.engine();
        let held = new_device_pairs(&domain, &user).await;
        let earlier = earlier_enrollment_of(&domain, &held).await;
        let push = domain
            .ask(
                &user,
                serde_json::json!({"enrollment_id": earlier.enrollment_id}),
            )
            .await;
        let id = push.authentication_id.clone();
        assert_eq!(push.enrollment_id, earlier.enrollment_id);
        let waiter = {
            let (ctx, app, id) = (domain.ctx.clone(), domain.app.id.clone(), id.clone());
            tokio::spawn(async move {
                crate::domain::authentication::status(&ctx, &app, id.as_str(), WAITER_WAIT).await
            })
        };
        until_waited(&domain.ctx, &Topic::Authentication(id.to_string())).await;

        let request = verification_for(&domain, &phone, &held).await;
        domain
            .answered_by(&phone, &request, Decision::Approve)
            .await
            .expect("recorded");
        assert_eq!(stored(&domain, &held).await.status, EnrollmentState::Active);

        let read = woken(waiter).await.expect("status");
        assert_eq!(
            (read.state, read.failure_reason.as_deref()),
            (AuthenticationState::Failed, Some("device_unpaired")),
            "{engine:?}"
        );
        let failed: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_log WHERE subject = $1 \
             AND kind = 'authentication.failed'",
        )
        .bind(id.as_str())
        .fetch_one(domain.ctx.db.pool())
        .await
        .expect("count");
        assert_eq!(failed, 1, "{engine:?}: the failure is recorded once");
        assert_eq!(endings_announced(&id), 1, "{engine:?}: announced once");
    }
}

/// A request of the replaced enrollment that expired unanswered, its expiry recorded by the
/// sweep, is not ended a second time when the primary device approves the same device pairing
/// again: it stays expired, with its one ending recorded.
#[tokio::test]
async fn an_approved_re_pairing_leaves_an_expiry_already_recorded_as_it_was() {
    for (domain, user, phone) in verifying_domains("olga").await {
        let engine = domain.ctx.db.engine();
        let held = new_device_pairs(&domain, &user).await;
        let earlier = earlier_enrollment_of(&domain, &held).await;
        let push = domain
            .ask(
                &user,
                serde_json::json!({"enrollment_id": earlier.enrollment_id, "expires_in": 30}),
            )
            .await;
        let id = push.authentication_id.clone();
        domain.clock.advance(Duration::from_secs(31));
        assert_eq!(domain.sweep_expired().await, 1, "the expiry is recorded");

        let request = verification_for(&domain, &phone, &held).await;
        domain
            .answered_by(&phone, &request, Decision::Approve)
            .await
            .expect("recorded");
        assert_eq!(stored(&domain, &held).await.status, EnrollmentState::Active);

        let read = crate::domain::authentication::status(
            &domain.ctx,
            &domain.app.id,
            id.as_str(),
            Duration::ZERO,
        )
        .await
        .expect("status");
        assert_eq!(read.state, AuthenticationState::Expired, "{engine:?}");
        let kinds: Vec<String> =
            sqlx::query_scalar("SELECT kind FROM audit_log WHERE subject = $1 ORDER BY seq")
                .bind(id.as_str())
                .fetch_all(domain.ctx.db.pool())
                .await
                .expect("the audit log");
        assert_eq!(
            kinds,
            ["authentication.created", "authentication.expired"],
            "{engine:?}: one ending"
        );
        assert_eq!(endings_announced(&id), 0, "{engine:?}: no ending announced");
    }
}
