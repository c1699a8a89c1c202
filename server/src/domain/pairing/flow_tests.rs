//! Pairing by code called directly, without HTTP: on a real database (SQLite, and PostgreSQL
//! when `DATABASE_URL` names one), with a clock the tests move instead of sleeping.

use std::time::Duration;

use tessera_protocol::api::EnrollmentState;
use tessera_protocol::authentication::AuthenticationState;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::UserId;

use super::{pair_device, start};
use crate::clock::Clock;
use crate::domain::testing::{Registering, TestDomain, endings_announced, joined, sent_at_once};
use crate::store::enrollments;

/// Where the devices pair from.
const CLIENT: &str = "203.0.113.9";

/// A pairing code for a new user `name`.
async fn code_for(domain: &TestDomain, name: &str, ttl: Option<u32>) -> String {
    let user = domain.user(name).await;
    start(&domain.ctx, &domain.app.id, &user, ttl)
        .await
        .expect("a code")
        .pairing_code
}

fn registering(domain: &TestDomain, code: &str) -> Registering {
    Registering::new(&domain.ctx.public_url, code, domain.clock.now(), false)
}

#[tokio::test]
async fn a_code_pairs_one_device_and_the_same_registration_again_gets_the_same_answer() {
    for domain in TestDomain::each_engine().await {
        let code = code_for(&domain, "alice", None).await;
        let phone = registering(&domain, &code);
        let paired = pair_device(&domain.ctx, CLIENT, &phone.request)
            .await
            .expect("paired");
        let enrollment =
            enrollments::by_registration_digest(&domain.ctx.db, &phone.digest.to_string())
                .await
                .expect("read")
                .expect("an enrollment");
        assert_eq!(enrollment.status, EnrollmentState::Active);
        assert_eq!(enrollment.user_id.as_str(), "alice");
        assert_eq!(enrollment.possession_key, phone.possession.public_jwk());
        assert!(
            enrollment.is_primary,
            "the user's first device is the primary one"
        );
        assert_eq!(paired.server_payload, enrollment.server_payload);

        // A retry after a lost reply: the same answer, no second enrollment.
        let again = pair_device(&domain.ctx, CLIENT, &phone.request)
            .await
            .expect("the same answer");
        assert_eq!(again, paired);
        // Another device with the used code.
        let other = registering(&domain, &code);
        let refused = pair_device(&domain.ctx, CLIENT, &other.request).await;
        assert_eq!(
            refused.expect_err("refused").code(),
            Some(ErrorCode::InvalidPairingCode)
        );
        let devices =
            enrollments::list_for_user(&domain.ctx.db, &domain.app.id, &enrollment.user_id)
                .await
                .expect("devices");
        assert_eq!(devices.len(), 1);

        // The paired device answers a request with the keys it registered.
        let user = enrollment.user_id.clone();
        let phone = phone.paired(enrollment);
        let created = domain.ask(&user, serde_json::json!({})).await;
        let request = domain.pull(&phone).await.remove(0);
        let signed = phone.answer(
            &request,
            tessera_protocol::authentication::Decision::Approve,
            created.number_to_show,
            domain.clock.now(),
        );
        let recorded = crate::domain::authentication::answer(
            &domain.ctx,
            created.authentication_id.as_str(),
            &signed,
            CLIENT,
        )
        .await
        .expect("recorded");
        assert_eq!(
            recorded.state,
            tessera_protocol::authentication::AuthenticationState::Approved
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_devices_pairing_with_one_code_at_once_one_pairs() {
    for domain in TestDomain::each_engine().await {
        for n in 0..6 {
            let name = format!("bob-{n}");
            let code = code_for(&domain, &name, None).await;
            // Signed first, sent together: each goes through its checks side by side. The seven
            // that lose count as failed guesses of their address; each round comes from an
            // address of its own, so that rounds whose codes share a bucket (or, on a shared
            // PostgreSQL database, earlier runs within the minute) do not add up to the limit.
            let client = format!("2001:db8::{:x}", rand::random::<u32>());
            let devices: Vec<_> = (0..8).map(|_| registering(&domain, &code)).collect();
            let tasks: Vec<_> = devices
                .into_iter()
                .map(|device| {
                    let (ctx, client) = (domain.ctx.clone(), client.clone());
                    tokio::spawn(async move { pair_device(&ctx, &client, &device.request).await })
                })
                .collect();
            let results = joined(tasks).await;
            assert_eq!(
                results.iter().filter(|r| r.is_ok()).count(),
                1,
                "{results:?}"
            );
            assert!(
                results.iter().filter(|r| r.is_err()).all(|r| {
                    r.as_ref()
                        .is_err_and(|e| e.code() == Some(ErrorCode::InvalidPairingCode))
                }),
                "{results:?}"
            );
            let user = name.parse().expect("user");
            let devices = enrollments::list_for_user(&domain.ctx.db, &domain.app.id, &user)
                .await
                .expect("devices");
            assert_eq!(devices.len(), 1);
        }
    }
}

/// A phone that sends its pairing again while the first is still under way (a double tap, a
/// retry after a timeout): every copy of the one registration gets the pairing's answer, and
/// none counts as a failed guess. On SQLite the copies that lose the code's take may run in the
/// winner's group, before its commit: what they read to answer must wait for that commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_of_one_registration_sent_at_once_all_get_its_answer() {
    for domain in TestDomain::each_engine().await {
        let failures = || {
            domain
                .ctx
                .metrics
                .pairing_failures
                .get_or_create(&crate::metrics::ReasonLabels {
                    reason: "invalid_code",
                })
                .get()
        };
        let failed_before = failures();
        for n in 0..12 {
            let name = format!("erin-{n}");
            let code = code_for(&domain, &name, None).await;
            let client = format!("2001:db8::{:x}", rand::random::<u32>());
            let phone = registering(&domain, &code);
            let results = sent_at_once(6, || {
                let (ctx, client) = (domain.ctx.clone(), client.clone());
                let request = phone.request.clone();
                async move { pair_device(&ctx, &client, &request).await }
            })
            .await;
            let answers: Vec<_> = results
                .iter()
                .map(|r| r.as_ref().expect("every copy gets the answer"))
                .collect();
            assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
            let user = name.parse().expect("user");
            let devices = enrollments::list_for_user(&domain.ctx.db, &domain.app.id, &user)
                .await
                .expect("devices");
            assert_eq!(devices.len(), 1);
            assert_eq!(devices[0].server_payload, answers[0].server_payload);
        }
        assert_eq!(failures(), failed_before, "no copy counted as a bad code");
    }
}

/// A customer backend that relays one mobile payload again while the first relay is under way
/// (a retry after a timeout): every copy gets the pairing's answer, as a later retry does, not
/// `replayed_message`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_of_one_relayed_payload_sent_at_once_all_get_its_answer() {
    for domain in TestDomain::each_engine().await {
        for n in 0..12 {
            let user = domain.user(&format!("hana-{n}")).await;
            let relayed = domain.relayed_payload();
            let answers: Vec<_> = sent_at_once(6, || {
                let (ctx, app, user, relayed) = (
                    domain.ctx.clone(),
                    domain.app.clone(),
                    user.clone(),
                    relayed.clone(),
                );
                async move { super::relay(&ctx, &app, &user, &relayed).await }
            })
            .await
            .into_iter()
            .map(|r| r.expect("every copy gets the answer"))
            .collect();
            assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
            let devices = enrollments::list_for_user(&domain.ctx.db, &domain.app.id, &user)
                .await
                .expect("devices");
            assert_eq!(devices.len(), 1);
        }
        // Another user's relay of a payload already paired is still a replay.
        let payload = domain.relayed_payload();
        let ivy = domain.user("ivy").await;
        let jon = domain.user("jon").await;
        super::relay(&domain.ctx, &domain.app, &ivy, &payload)
            .await
            .expect("paired");
        assert_eq!(
            super::relay(&domain.ctx, &domain.app, &jon, &payload)
                .await
                .expect_err("replayed")
                .code(),
            Some(ErrorCode::ReplayedMessage)
        );
    }
}

#[tokio::test]
async fn a_code_expires_by_the_clock() {
    for domain in TestDomain::each_engine().await {
        let code = code_for(&domain, "carol", Some(60)).await;
        domain.clock.advance(Duration::from_secs(61));
        let late = registering(&domain, &code);
        assert_eq!(
            pair_device(&domain.ctx, CLIENT, &late.request)
                .await
                .expect_err("expired")
                .code(),
            Some(ErrorCode::InvalidPairingCode)
        );
    }
}

#[tokio::test]
async fn a_forged_device_key_proof_is_refused_and_leaves_the_code_usable() {
    for domain in TestDomain::each_engine().await {
        let code = code_for(&domain, "dave", None).await;
        let forged = Registering::new(&domain.ctx.public_url, &code, domain.clock.now(), true);
        assert_eq!(
            pair_device(&domain.ctx, CLIENT, &forged.request)
                .await
                .expect_err("refused")
                .code(),
            Some(ErrorCode::InvalidSignature)
        );
        // A registration made for another server.
        let elsewhere = Registering::new(
            &tessera_protocol::pairing::ServerUrl::parse("https://evil.example").expect("url"),
            &code,
            domain.clock.now(),
            false,
        );
        assert_eq!(
            pair_device(&domain.ctx, CLIENT, &elsewhere.request)
                .await
                .expect_err("refused")
                .code(),
            Some(ErrorCode::AudienceMismatch)
        );
        let genuine = registering(&domain, &code);
        pair_device(&domain.ctx, CLIENT, &genuine.request)
            .await
            .expect("the code was not used up");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_sent_at_once_stop_at_the_limit_and_the_limit_passes_with_the_minute() {
    for domain in TestDomain::each_engine().await {
        let limit = domain.ctx.config.pairing_failures_per_ip_per_minute as usize;
        let code = code_for(&domain, "erin", None).await;
        // Well-formed codes of the real code's bucket (its first two characters) that are not
        // the code: each is a guess.
        let guesses: Vec<String> = (0..limit * 2)
            .map(|n| {
                let mut guess = code.clone();
                let last = guess.pop().expect("a code");
                let replacement = ['2', '3', '4', '5', '6', '7', '8', '9']
                    .into_iter()
                    .filter(|c| *c != last)
                    .nth(n % 7)
                    .expect("a character");
                guess.push(replacement);
                guess
            })
            .collect();
        let client = format!("198.51.100.{}", rand::random::<u8>());
        let tasks: Vec<_> = guesses
            .into_iter()
            .map(|guess| {
                let (ctx, client) = (domain.ctx.clone(), client.clone());
                let device = registering(&domain, &guess);
                tokio::spawn(async move { pair_device(&ctx, &client, &device.request).await })
            })
            .collect();
        let codes: Vec<_> = joined(tasks)
            .await
            .into_iter()
            .map(|r| r.expect_err("a guess").code())
            .collect();
        let compared = codes
            .iter()
            .filter(|c| **c == Some(ErrorCode::InvalidPairingCode))
            .count();
        let limited = codes
            .iter()
            .filter(|c| **c == Some(ErrorCode::RateLimited))
            .count();
        assert_eq!((compared, limited), (limit, limit), "{codes:?}");

        // The genuine code is refused from that address until the minute has passed.
        let genuine = registering(&domain, &code);
        assert_eq!(
            pair_device(&domain.ctx, &client, &genuine.request)
                .await
                .expect_err("limited")
                .code(),
            Some(ErrorCode::RateLimited)
        );
        domain.clock.advance(Duration::from_secs(61));
        let genuine = registering(&domain, &code);
        pair_device(&domain.ctx, &client, &genuine.request)
            .await
            .expect("paired once the minute passed");
    }
}

/// A user's deletion racing a pairing by code and the start of another leaves nothing of the
/// user behind: either the pairing (or the new code) came first and the deletion removed it, or
/// the deletion came first and nothing was paired (or stored). A device or code left behind
/// would belong to a user re-created with the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_users_deletion_racing_a_pairing_leaves_nothing_of_them_behind() {
    for domain in TestDomain::each_engine().await {
        for round in 0..12 {
            let name = format!("gone-{round}");
            let code = code_for(&domain, &name, None).await;
            let user: UserId = name.parse().expect("user id");
            let phone = registering(&domain, &code);
            let pairing = {
                let ctx = domain.ctx.clone();
                tokio::spawn(async move { pair_device(&ctx, CLIENT, &phone.request).await })
            };
            let another_code = {
                let (ctx, app, user) = (domain.ctx.clone(), domain.app.id.clone(), user.clone());
                tokio::spawn(async move { start(&ctx, &app, &user, None).await })
            };
            let deletion = {
                let (ctx, app, user) = (domain.ctx.clone(), domain.app.id.clone(), user.clone());
                tokio::spawn(
                    async move { crate::domain::devices::remove_user(&ctx, &app, &user).await },
                )
            };
            let (paired, started, deleted) = tokio::join!(pairing, another_code, deletion);
            deleted.expect("ran").expect("the user was removed");
            if let Err(e) = paired.expect("ran") {
                assert_eq!(
                    e.code(),
                    Some(ErrorCode::InvalidPairingCode),
                    "round {round}"
                );
            }
            if let Err(e) = started.expect("ran") {
                assert_eq!(e.code(), Some(ErrorCode::UserNotFound), "round {round}");
            }
            assert_eq!(
                domain.rows_of("enrollments", &user).await,
                0,
                "round {round}"
            );
            assert_eq!(
                domain.rows_of("pairing_codes", &user).await,
                0,
                "round {round}"
            );
        }
    }
}

/// Two of a user's devices unpaired at once, one of them primary: the device left becomes
/// primary. The choice of the next primary takes turns (`store::users::lock`); each unpairing
/// could otherwise see the other's device still there and promote none (PostgreSQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_devices_unpaired_at_once_leave_the_third_primary() {
    for domain in TestDomain::each_engine().await {
        for round in 0..12 {
            let (user, first) = domain.user_with_device(&format!("hana-{round}")).await;
            let second = domain.device_of(&user, false).await;
            let third = domain.device_of(&user, false).await;
            let unpairings: Vec<_> = [first.enrollment.clone(), second.enrollment.clone()]
                .into_iter()
                .map(|enrollment| {
                    let ctx = domain.ctx.clone();
                    tokio::spawn(
                        async move { crate::domain::devices::unpair(&ctx, &enrollment).await },
                    )
                })
                .collect();
            for unpaired in joined(unpairings).await {
                unpaired.expect("unpaired");
            }
            let left = enrollments::list_for_user(&domain.ctx.db, &domain.app.id, &user)
                .await
                .expect("listed");
            assert_eq!(left.len(), 1, "round {round}");
            assert_eq!(left[0].enrollment_id, third.enrollment.enrollment_id);
            assert!(
                left[0].is_primary,
                "round {round}: the device left is primary"
            );
        }
    }
}

/// A device of `user` pairs with a fresh code: its enrollment as stored.
async fn pairs_by_code(domain: &TestDomain, user: &UserId) -> enrollments::Enrollment {
    let code = start(&domain.ctx, &domain.app.id, user, None)
        .await
        .expect("a code")
        .pairing_code;
    let device = registering(domain, &code);
    pair_device(&domain.ctx, CLIENT, &device.request)
        .await
        .expect("paired");
    enrollments::by_registration_digest(&domain.ctx.db, &device.digest.to_string())
        .await
        .expect("read")
        .expect("stored")
}

/// A device relayed by a flow that holds it for a passcode: its enrollment as stored.
async fn held_for_a_passcode(domain: &TestDomain, user: &UserId) -> enrollments::Enrollment {
    let reply = super::relay_with(
        &domain.ctx,
        &domain.app,
        user,
        &domain.relayed_payload(),
        true,
    )
    .await
    .expect("held");
    enrollments::by_id(&domain.ctx.db, &reply.response.device.enrollment_id)
        .await
        .expect("read")
        .expect("stored")
}

/// Under "verify new devices with the primary device", a device held for a passcode by a flow
/// (the user had no active device) is not primary, neither while held nor once rejected: the
/// next device pairs active and primary (the user's first active device), and the one after it
/// waits for that device's approval. A held device that kept the flag would leave the user with
/// a "primary" device that is not active: no device to verify new ones, and every later device
/// paired without approval.
#[tokio::test]
async fn a_device_held_for_a_passcode_never_takes_the_primary_flag() {
    for domain in TestDomain::each_engine().await {
        domain.verify_new_devices_with_primary().await;
        let engine = domain.ctx.db.engine();
        // Rejected: the flow ended without the passcode.
        let user = domain.user("ines").await;
        let held = held_for_a_passcode(&domain, &user).await;
        assert_eq!(held.status, EnrollmentState::PendingVerification);
        assert!(!held.is_primary, "{engine:?}: a held device is not primary");
        assert!(
            super::reject_held(&domain.ctx, &held.enrollment_id)
                .await
                .expect("rejected")
        );
        let first = pairs_by_code(&domain, &user).await;
        assert_eq!(first.status, EnrollmentState::Active, "{engine:?}");
        assert!(
            first.is_primary,
            "{engine:?}: the first active device is primary"
        );
        let second = pairs_by_code(&domain, &user).await;
        assert_eq!(
            second.status,
            EnrollmentState::PendingVerification,
            "{engine:?}: the next device waits for the primary device's approval"
        );
        assert!(second.verification_id.is_some(), "{engine:?}");

        // Still held while another device pairs: that one is primary, and the held one does not
        // take the flag back when its passcode is approved.
        let user = domain.user("jude").await;
        let held = held_for_a_passcode(&domain, &user).await;
        let first = pairs_by_code(&domain, &user).await;
        assert!(first.is_primary, "{engine:?}: no active primary before it");
        let second = pairs_by_code(&domain, &user).await;
        assert_eq!(
            second.status,
            EnrollmentState::PendingVerification,
            "{engine:?}: verified by the primary device"
        );
        assert!(
            super::approve_held(&domain.ctx, &held.enrollment_id)
                .await
                .expect("approved")
        );
        let approved = enrollments::by_id(&domain.ctx.db, &held.enrollment_id)
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(approved.status, EnrollmentState::Active, "{engine:?}");
        assert!(
            !approved.is_primary,
            "{engine:?}: the user had a primary device"
        );

        // Approved while the user has no active device: it becomes primary then.
        let user = domain.user("kofi").await;
        let held = held_for_a_passcode(&domain, &user).await;
        assert!(
            super::approve_held(&domain.ctx, &held.enrollment_id)
                .await
                .expect("approved")
        );
        let approved = enrollments::by_id(&domain.ctx.db, &held.enrollment_id)
            .await
            .expect("read")
            .expect("stored");
        assert!(approved.is_primary, "{engine:?}: the user's only device");
        let next = pairs_by_code(&domain, &user).await;
        assert_eq!(
            next.status,
            EnrollmentState::PendingVerification,
            "{engine:?}"
        );
    }
}

/// A held device approved by its passcode at the moment another device of the user (who has no
/// active device) pairs by code: both choose whether they become primary, each inside its write
/// under the user's lock, so exactly one of them is primary whichever comes first. Without the
/// lock, on PostgreSQL each could find no active primary and both take the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_device_approved_as_another_pairs_leaves_one_primary() {
    for domain in TestDomain::each_engine().await {
        domain.verify_new_devices_with_primary().await;
        let engine = domain.ctx.db.engine();
        let (mut held_first, mut paired_first) = (0, 0);
        for round in 0..24u64 {
            let user = domain.user(&format!("lena-{round}")).await;
            let held = held_for_a_passcode(&domain, &user).await;
            let code = start(&domain.ctx, &domain.app.id, &user, None)
                .await
                .expect("a code")
                .pairing_code;
            let tablet = registering(&domain, &code);
            let pairing = {
                let (ctx, request) = (domain.ctx.clone(), tablet.request.clone());
                tokio::spawn(async move { pair_device(&ctx, CLIENT, &request).await })
            };
            let approval = {
                let (ctx, id) = (domain.ctx.clone(), held.enrollment_id.clone());
                tokio::spawn(async move {
                    // The pairing checks its registration before it writes: the approval starts
                    // later in most rounds, so that either side comes first.
                    tokio::time::sleep(Duration::from_micros(400 * (round % 8))).await;
                    super::approve_held(&ctx, &id).await
                })
            };
            let (approved, paired) = tokio::join!(approval, pairing);
            assert!(approved.expect("ran").expect("approved"), "round {round}");
            paired.expect("ran").expect("paired");
            let devices = enrollments::list_for_user(&domain.ctx.db, &domain.app.id, &user)
                .await
                .expect("listed");
            let primaries: Vec<_> = devices
                .iter()
                .filter(|d| d.is_primary && d.status == EnrollmentState::Active)
                .collect();
            let flags: Vec<_> = devices.iter().map(|d| (d.status, d.is_primary)).collect();
            assert_eq!(
                primaries.len(),
                1,
                "{engine:?}, round {round}: one active primary device (status, primary): {flags:?}"
            );
            assert!(
                devices
                    .iter()
                    .all(|d| !d.is_primary || d.status == EnrollmentState::Active),
                "{engine:?}, round {round}: only an active device is primary"
            );
            if primaries[0].enrollment_id == held.enrollment_id {
                held_first += 1;
            } else {
                paired_first += 1;
            }
        }
        println!(
            "{engine:?}: the held device was approved first {held_first} times, the other device paired first {paired_first} times"
        );
    }
}

/// A storage error while the pairing locks the code's user (here the `users` table cannot be
/// read) is passed up as the storage's: not `invalid_pairing_code`, so no failed guess is
/// counted against the client, and the code is not used up; it pairs once the storage is back.
/// SQLite only: the table is broken in the test's own database file (the PostgreSQL database
/// is shared with the tests running beside this one).
#[tokio::test]
async fn a_storage_error_while_pairing_is_not_a_bad_code() {
    let domain = TestDomain::sqlite().await;
    let code = code_for(&domain, "sven", None).await;
    let phone = registering(&domain, &code);
    let rename = |from: &str, to: &str| format!("ALTER TABLE {from} RENAME TO {to}");
    sqlx::query(&rename("users", "users_away"))
        .execute(domain.ctx.db.writer())
        .await
        .expect("renamed");
    let refused = pair_device(&domain.ctx, CLIENT, &phone.request).await;
    sqlx::query(&rename("users_away", "users"))
        .execute(domain.ctx.db.writer())
        .await
        .expect("renamed back");
    let refused = refused.expect_err("the storage failed");
    assert_ne!(
        refused.code(),
        Some(ErrorCode::InvalidPairingCode),
        "{refused:?}"
    );
    pair_device(&domain.ctx, CLIENT, &phone.request)
        .await
        .expect("the code still pairs");
}

/// The kinds of the audit records whose subject is authentication `id`, in the order recorded.
async fn recorded_kinds(
    domain: &TestDomain,
    id: &tessera_protocol::ids::AuthenticationId,
) -> Vec<String> {
    sqlx::query_scalar("SELECT kind FROM audit_log WHERE subject = $1 ORDER BY seq")
        .bind(id.as_str())
        .fetch_all(domain.ctx.db.pool())
        .await
        .expect("the audit log")
}

/// A request that expired unanswered, its expiry recorded by the sweep, is not ended a second
/// time when its device pairs again: the re-pairing fails only the requests still waiting for
/// the replaced enrollment. The request stays expired, with its one ending recorded and
/// none announced after it.
#[tokio::test]
async fn a_re_pairing_leaves_an_expiry_already_recorded_as_it_was() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (user, phone) = domain.user_with_device("kira").await;
        let push = domain
            .ask(&user, serde_json::json!({"expires_in": 30}))
            .await;
        let id = push.authentication_id.clone();
        domain.clock.advance(Duration::from_secs(31));
        assert_eq!(domain.sweep_expired().await, 1, "the expiry is recorded");

        // The same device pairs again with a fresh code: its earlier enrollment is the one the
        // request was for (the same device id and the same proven device key).
        let code = start(&domain.ctx, &domain.app.id, &user, None)
            .await
            .expect("a code")
            .pairing_code;
        let again = registering(&domain, &code);
        let registration: tessera_protocol::pairing::DeviceRegistration =
            tessera_protocol::envelope::verify(
                &again.request.registration,
                tessera_protocol::envelope::MessageType::Registration,
                &again.possession.public_jwk(),
            )
            .expect("signed")
            .payload;
        sqlx::query(
            "UPDATE enrollments SET device_id = $1, device_key_thumbprint = $2 \
             WHERE enrollment_id = $3",
        )
        .bind(registration.device_id.as_str())
        .bind(registration.device_key.thumbprint())
        .bind(phone.enrollment.enrollment_id.as_str())
        .execute(domain.ctx.db.writer())
        .await
        .expect("the same device");
        pair_device(&domain.ctx, CLIENT, &again.request)
            .await
            .expect("paired again");
        assert!(
            enrollments::by_id(&domain.ctx.db, &phone.enrollment.enrollment_id)
                .await
                .expect("read")
                .is_none(),
            "{engine:?}: the earlier enrollment is replaced"
        );

        let read = crate::domain::authentication::status(
            &domain.ctx,
            &domain.app.id,
            id.as_str(),
            Duration::ZERO,
        )
        .await
        .expect("status");
        assert_eq!(read.state, AuthenticationState::Expired, "{engine:?}");
        assert_eq!(
            recorded_kinds(&domain, &id).await,
            ["authentication.created", "authentication.expired"],
            "{engine:?}: one ending"
        );
        // An expiry is recorded by the sweep, not announced to the follow-ups: nothing was.
        assert_eq!(endings_announced(&id), 0, "{engine:?}: no ending announced");
    }
}
