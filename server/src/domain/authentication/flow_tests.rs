//! The approval flow's rules called directly, without HTTP: on a real database (SQLite, and
//! PostgreSQL when `DATABASE_URL` names one), with a clock the tests move instead of sleeping,
//! and pushes recorded instead of sent.

use std::time::Duration;

use serde_json::json;
use tessera_protocol::authentication::{AuthenticationState, Decision};
use tessera_protocol::error::ErrorCode;

use super::super::outcome::{self, Ending};
use super::super::testing::{TestDevice, TestDomain, endings_announced, sent_at_once, yields};
use super::{answer, status};
use crate::clock::Clock;

/// Where the answers come from (the device's address as the server saw it).
const CLIENT: &str = "198.51.100.7";

/// Sends `signed` as the answer to `id` from a task of its own, so that answers sent side by
/// side run in parallel on the test's worker threads.
async fn spawn_answer(
    domain: &TestDomain,
    id: &tessera_protocol::authentication::AuthenticationId,
    signed: String,
) -> Result<tessera_protocol::api::ResponseRecorded, super::DomainError> {
    let (ctx, id) = (domain.ctx.clone(), id.to_string());
    tokio::spawn(async move { answer(&ctx, &id, &signed, CLIENT).await })
        .await
        .expect("the answer ran")
}

/// Asks `user`'s `device` for an approval and pulls it: the request as created and as the
/// device verified it.
async fn asked_and_pulled(
    domain: &TestDomain,
    user: &tessera_protocol::ids::UserId,
    device: &super::super::testing::TestDevice,
) -> (
    tessera_protocol::api::AuthenticationStatus,
    tessera_protocol::authentication::AuthenticationRequest,
) {
    let created = domain.ask(user, json!({})).await;
    let request = domain.pulled(device, &created.authentication_id).await;
    (created, request)
}

fn code_of<T: std::fmt::Debug>(result: Result<T, super::DomainError>) -> ErrorCode {
    result
        .expect_err("refused")
        .code()
        .expect("a refusal with a code")
}

#[tokio::test]
async fn an_approval_is_pushed_pulled_answered_and_announced_once() {
    for domain in TestDomain::each_engine().await {
        let (alice, phone) = domain.user_with_device("alice").await;
        let created = domain.ask(&alice, json!({})).await;
        let id = created.authentication_id.clone();
        assert_eq!(created.state, AuthenticationState::Pending);
        assert_eq!(created.enrollment_id, phone.enrollment.enrollment_id);
        // The id starts with the clock's millisecond, so the store's index of ids grows at its
        // end (docs/architecture.md, group commit).
        assert_eq!(
            &id.as_str()[4..16],
            format!("{:012x}", domain.clock.now_ms())
        );
        assert_eq!(
            domain.pushes.at_least(1).await,
            vec![(id.clone(), phone.enrollment.enrollment_id.clone())],
            "one push, to the device asked"
        );

        let pulled = domain.pull(&phone).await;
        assert_eq!(pulled.len(), 1);
        let request = &pulled[0];
        assert_eq!(request.request_id, id);
        assert_eq!(request.enrollment_id, phone.enrollment.enrollment_id);
        assert_eq!(request.user_id, alice);

        let signed = phone.answer(
            request,
            Decision::Approve,
            created.number_to_show,
            domain.clock.now(),
        );
        let recorded = answer(&domain.ctx, id.as_str(), &signed, CLIENT)
            .await
            .expect("recorded");
        assert_eq!(recorded.state, AuthenticationState::Approved);
        assert_eq!(endings_announced(&id), 1);

        let read = status(&domain.ctx, &domain.app.id, id.as_str(), Duration::ZERO)
            .await
            .expect("status");
        assert_eq!(read.state, AuthenticationState::Approved);
        assert_eq!(read.decision, Some(Decision::Approve));
        assert!(
            domain.pull(&phone).await.is_empty(),
            "nothing left to answer"
        );

        // The same answer again (a retry after a lost reply) gets the same outcome, and the
        // ending is not announced a second time.
        let again = answer(&domain.ctx, id.as_str(), &signed, CLIENT)
            .await
            .expect("the same outcome");
        assert_eq!(again.state, AuthenticationState::Approved);
        assert_eq!(endings_announced(&id), 1);
    }
}

#[tokio::test]
async fn a_request_expires_when_the_clock_passes_its_expiry() {
    for domain in TestDomain::each_engine().await {
        let (bob, phone) = domain.user_with_device("bob").await;
        let created = domain.ask(&bob, json!({"expires_in": 30})).await;
        let id = created.authentication_id.clone();
        let pulled = domain.pull(&phone).await;
        assert_eq!(pulled.len(), 1);

        domain.clock.advance(Duration::from_secs(29));
        let read = status(&domain.ctx, &domain.app.id, id.as_str(), Duration::ZERO)
            .await
            .expect("status");
        assert_eq!(read.state, AuthenticationState::Pending, "not yet");

        domain.clock.advance(Duration::from_secs(2));
        let read = status(&domain.ctx, &domain.app.id, id.as_str(), Duration::ZERO)
            .await
            .expect("status");
        assert_eq!(read.state, AuthenticationState::Expired);
        assert!(
            domain.pull(&phone).await.is_empty(),
            "an expired request is not pulled"
        );
        let late = phone.answer(
            &pulled[0],
            Decision::Approve,
            created.number_to_show,
            domain.clock.now(),
        );
        assert_eq!(
            code_of(answer(&domain.ctx, id.as_str(), &late, CLIENT).await),
            ErrorCode::AuthenticationExpired
        );
        assert_eq!(
            endings_announced(&id),
            0,
            "expiry writes and announces nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_an_approval_and_a_denial_sent_at_once_exactly_one_is_recorded() {
    for domain in TestDomain::each_engine().await {
        let (carol, phone) = domain.user_with_device("carol").await;
        for _ in 0..8 {
            let (created, request) = asked_and_pulled(&domain, &carol, &phone).await;
            let id = created.authentication_id.clone();
            let request = &request;
            let now = domain.clock.now();
            let approve = phone.answer(request, Decision::Approve, created.number_to_show, now);
            let deny = phone.answer(request, Decision::Deny, None, now);
            let (approved, denied) = tokio::join!(
                spawn_answer(&domain, &id, approve),
                spawn_answer(&domain, &id, deny),
            );
            let winner = match (approved, denied) {
                (Ok(a), Err(e)) => {
                    assert_eq!(e.code(), Some(ErrorCode::AlreadyAnswered));
                    a.state
                }
                (Err(e), Ok(d)) => {
                    assert_eq!(e.code(), Some(ErrorCode::AlreadyAnswered));
                    d.state
                }
                (a, d) => panic!("exactly one answer wins: {a:?} / {d:?}"),
            };
            let read = status(&domain.ctx, &domain.app.id, id.as_str(), Duration::ZERO)
                .await
                .expect("status");
            assert_eq!(read.state, winner, "the state is the winner's");
            assert_eq!(endings_announced(&id), 1);
        }
    }
}

/// A phone that sends its answer again while the first send is under way (a retry after a
/// timeout): every copy gets the recorded outcome. On SQLite the copies that find the request
/// answered may run in the winner's group, before its commit: the read that answers them must
/// wait for that commit, or it finds the request still pending and calls it answered before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_of_one_answer_sent_at_once_all_get_its_outcome() {
    for domain in TestDomain::each_engine().await {
        let (frank, phone) = domain.user_with_device("frank").await;
        for _ in 0..12 {
            let (created, request) = asked_and_pulled(&domain, &frank, &phone).await;
            let id = created.authentication_id.clone();
            let signed = phone.answer(
                &request,
                Decision::Approve,
                created.number_to_show,
                domain.clock.now(),
            );
            let copies = sent_at_once(5, || {
                let (ctx, id, signed) = (domain.ctx.clone(), id.to_string(), signed.clone());
                async move { answer(&ctx, &id, &signed, CLIENT).await }
            })
            .await;
            for copy in copies {
                let recorded = copy.expect("every copy gets the outcome");
                assert_eq!(recorded.state, AuthenticationState::Approved);
            }
            assert_eq!(endings_announced(&id), 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_and_an_answer_at_once_end_the_request_once() {
    for domain in TestDomain::each_engine().await {
        let (dave, phone) = domain.user_with_device("dave").await;
        for _ in 0..8 {
            let (created, request) = asked_and_pulled(&domain, &dave, &phone).await;
            let id = created.authentication_id.clone();
            let request = &request;
            let approve = phone.answer(
                request,
                Decision::Approve,
                created.number_to_show,
                domain.clock.now(),
            );
            let cancel = {
                let (ctx, id) = (domain.ctx.clone(), id.clone());
                tokio::spawn(async move { outcome::record(&ctx, &id, Ending::Canceled).await })
            };
            let (answered, canceled) = tokio::join!(spawn_answer(&domain, &id, approve), cancel);
            let canceled = canceled
                .expect("the cancellation ran")
                .expect("the cancellation was checked");
            let read = status(&domain.ctx, &domain.app.id, id.as_str(), Duration::ZERO)
                .await
                .expect("status");
            match (answered, canceled) {
                (Ok(recorded), None) => {
                    assert_eq!(recorded.state, AuthenticationState::Approved);
                    assert_eq!(read.state, AuthenticationState::Approved);
                }
                (Err(_), Some(ended)) => {
                    assert_eq!(ended.state, AuthenticationState::Failed);
                    assert_eq!(read.state, AuthenticationState::Failed);
                }
                (a, c) => panic!("exactly one ending wins: {a:?} / {c:?}"),
            }
            assert_eq!(endings_announced(&id), 1);
        }
    }
}

#[tokio::test]
async fn an_answer_the_device_asked_did_not_sign_changes_nothing() {
    for domain in TestDomain::each_engine().await {
        let (erin, phone) = domain.user_with_device("erin").await;
        let tablet = domain.device_of(&erin, false).await;
        let created = domain.ask(&erin, json!({})).await;
        let id = created.authentication_id.clone();
        let request = domain.pull(&phone).await.remove(0);
        let now = domain.clock.now();

        // The user's other device signs an answer naming the request and the phone.
        let by_tablet = tablet.answer(&request, Decision::Approve, created.number_to_show, now);
        assert!(
            answer(&domain.ctx, id.as_str(), &by_tablet, CLIENT)
                .await
                .is_err()
        );

        // The phone approves other parameters than the ones it was sent.
        let mut other = request.clone();
        other.parameters_digest =
            tessera_protocol::canonical::Sha256Digest::of_bytes(b"pay 10,000 EUR to Mallory");
        let other = phone.answer(&other, Decision::Approve, created.number_to_show, now);
        assert_eq!(
            code_of(answer(&domain.ctx, id.as_str(), &other, CLIENT).await),
            ErrorCode::ResponseMismatch
        );

        // The phone answers with the nonce of another request.
        let mut replayed = request.clone();
        replayed.nonce = "another request's nonce".into();
        let replayed = phone.answer(&replayed, Decision::Approve, created.number_to_show, now);
        assert_eq!(
            code_of(answer(&domain.ctx, id.as_str(), &replayed, CLIENT).await),
            ErrorCode::ResponseMismatch
        );

        let read = status(&domain.ctx, &domain.app.id, id.as_str(), Duration::ZERO)
            .await
            .expect("status");
        assert_eq!(read.state, AuthenticationState::Pending, "still unanswered");
        assert_eq!(endings_announced(&id), 0);
    }
}

#[tokio::test]
async fn a_waiting_status_read_answers_when_the_device_does() {
    for domain in TestDomain::each_engine().await {
        let (frank, phone) = domain.user_with_device("frank").await;
        let created = domain.ask(&frank, json!({})).await;
        let id = created.authentication_id.clone();
        let request = domain.pull(&phone).await.remove(0);
        let waiter = {
            let (ctx, app, id) = (domain.ctx.clone(), domain.app.id.clone(), id.clone());
            tokio::spawn(
                async move { status(&ctx, &app, id.as_str(), Duration::from_secs(60)).await },
            )
        };
        // The waiter is subscribed before the answer (it returns only on an ending or at its
        // deadline, sixty seconds away).
        while domain.ctx.events.waited_topics() == 0 {
            tokio::task::yield_now().await;
        }
        let signed = phone.answer(
            &request,
            Decision::Approve,
            created.number_to_show,
            domain.clock.now(),
        );
        answer(&domain.ctx, id.as_str(), &signed, CLIENT)
            .await
            .expect("recorded");
        let read = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken by the answer, not its deadline")
            .expect("the waiter ran")
            .expect("status");
        assert_eq!(read.state, AuthenticationState::Approved);
    }
}

#[tokio::test]
async fn an_approval_that_needs_user_verification_refuses_the_possession_key() {
    for domain in TestDomain::each_engine().await {
        let (grace, phone) = domain.user_with_device("grace").await;
        let created = domain
            .ask(&grace, json!({"require_user_verification": true}))
            .await;
        let id = created.authentication_id.clone();
        let request = domain.pull(&phone).await.remove(0);
        let now = domain.clock.now();
        let without = phone.answer_with_possession_key(
            &request,
            Decision::Approve,
            created.number_to_show,
            now,
        );
        assert_eq!(
            code_of(answer(&domain.ctx, id.as_str(), &without, CLIENT).await),
            ErrorCode::ResponseMismatch
        );
        let with = phone.answer(&request, Decision::Approve, created.number_to_show, now);
        let recorded = answer(&domain.ctx, id.as_str(), &with, CLIENT)
            .await
            .expect("recorded");
        assert_eq!(recorded.state, AuthenticationState::Approved);
    }
}

#[tokio::test]
async fn a_request_of_a_device_that_unpairs_fails_once_and_takes_no_answer() {
    for domain in TestDomain::each_engine().await {
        let (heidi, phone) = domain.user_with_device("heidi").await;
        let created = domain.ask(&heidi, json!({})).await;
        let id = created.authentication_id.clone();
        let request = domain.pull(&phone).await.remove(0);

        crate::domain::devices::unpair(&domain.ctx, &phone.enrollment)
            .await
            .expect("unpaired");
        let read = status(&domain.ctx, &domain.app.id, id.as_str(), Duration::ZERO)
            .await
            .expect("status");
        assert_eq!(read.state, AuthenticationState::Failed);
        assert_eq!(endings_announced(&id), 1, "the failure is announced once");

        let late = phone.answer(
            &request,
            Decision::Approve,
            created.number_to_show,
            domain.clock.now(),
        );
        assert!(
            answer(&domain.ctx, id.as_str(), &late, CLIENT)
                .await
                .is_err(),
            "an unpaired device's answer is refused"
        );
        let read = status(&domain.ctx, &domain.app.id, id.as_str(), Duration::ZERO)
            .await
            .expect("status");
        assert_eq!(read.state, AuthenticationState::Failed);
        assert_eq!(endings_announced(&id), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_made_while_a_waiting_pull_starts_wakes_it() {
    for domain in TestDomain::each_engine().await {
        let domain = std::sync::Arc::new(domain);
        for n in 0..40 {
            let (user, phone) = domain.user_with_device(&format!("ivan-{n}")).await;
            let path = format!(
                "/v1/device/enrollments/{}/requests",
                phone.enrollment.enrollment_id
            );
            let authorization = phone.call("GET", &path, b"", domain.clock.now());
            let enrollment = phone.enrollment.enrollment_id.to_string();
            let pulling = {
                let ctx = domain.ctx.clone();
                tokio::spawn(async move {
                    let call = super::super::device_auth::DeviceCall {
                        authorization: Some(&authorization),
                        method: "GET",
                        path: &path,
                        body: b"",
                    };
                    super::pull(&ctx, call, &enrollment, Duration::from_secs(30))
                        .await
                        .expect("pulled")
                        .requests
                        .len()
                })
            };
            let asking = {
                let domain = domain.clone();
                tokio::spawn(async move { domain.ask(&user, json!({})).await })
            };
            asking.await.expect("asked");
            let pulled = tokio::time::timeout(Duration::from_secs(10), pulling)
                .await
                .unwrap_or_else(|_| panic!("round {n}: the new request did not wake the pull"))
                .expect("the pull ran");
            assert_eq!(pulled, 1, "round {n}");
        }
    }
}

#[tokio::test]
async fn an_ending_timed_before_the_expiry_but_written_after_its_sweep_is_not_recorded() {
    use crate::store::authentications::{self, Answer, AnsweredRequest};
    for domain in TestDomain::each_engine().await {
        let (judy, phone) = domain.user_with_device("judy").await;
        let created = domain.ask(&judy, json!({"expires_in": 30})).await;
        let id = created.authentication_id.clone();
        let _ = domain.pulled(&phone, &id).await;
        // The time an ending reads first, before the request expired.
        let before = domain.clock.now();
        let record = authentications::get(&domain.ctx.db, &id, before)
            .await
            .expect("read")
            .expect("stored");
        domain.clock.advance(Duration::from_secs(31));
        assert_eq!(domain.sweep_expired().await, 1, "the expiry is recorded");

        // Each ending, written now with the time it read before the expiry, finds the expiry
        // recorded and writes nothing.
        let mut w = domain.ctx.db.write().await.expect("write");
        let answer = Answer::decided(
            AnsweredRequest::of(&record),
            Decision::Approve,
            "signed",
            "{}",
            before,
        );
        assert!(
            authentications::record_answer(&mut w, &answer)
                .await
                .expect("ran")
                .is_none(),
            "the device's answer"
        );
        w.rollback().await.expect("rolled back");
        let passcode = authentications::record_passcode_answer(
            domain.ctx.db.writer(),
            &id,
            "{}",
            None,
            before,
        )
        .await
        .expect("ran");
        assert!(passcode.is_none(), "a passcode");
        let canceled = authentications::record_cancellation(domain.ctx.db.writer(), &id, before)
            .await
            .expect("ran");
        assert!(canceled.is_none(), "a cancellation");
        crate::domain::devices::unpair(&domain.ctx, &phone.enrollment)
            .await
            .expect("unpaired");
        assert_eq!(endings_announced(&id), 0, "no ending after the expiry");

        let read = status(&domain.ctx, &domain.app.id, id.as_str(), Duration::ZERO)
            .await
            .expect("status");
        assert_eq!(read.state, AuthenticationState::Expired);
        let kinds = kinds_recorded_for(&domain, &id).await;
        assert_eq!(
            kinds,
            ["authentication.created", "authentication.expired"],
            "one ending"
        );
    }
}

#[tokio::test]
async fn an_expiry_claimed_by_a_sweep_that_does_not_commit_is_recorded_by_the_next() {
    for domain in TestDomain::each_engine().await {
        let (kim, _phone) = domain.user_with_device("kim").await;
        let created = domain.ask(&kim, json!({"expires_in": 30})).await;
        let id = created.authentication_id.clone();
        domain.clock.advance(Duration::from_secs(31));

        // A sweep that claims the request, then stops before its commit (a crash, an error
        // while writing the records).
        let mut w = domain.ctx.db.write().await.expect("write");
        let claimed = crate::store::audit::claim_unreported_expired(
            &mut w,
            domain.clock.now(),
            256,
            Some(domain.app.id.as_str()),
        )
        .await
        .expect("claimed");
        assert_eq!(
            claimed.len(),
            1,
            "{:?}: the sweep claims it",
            domain.ctx.db.engine()
        );
        assert_eq!(claimed[0].state, AuthenticationState::Expired);
        w.rollback().await.expect("rolled back");

        // The next sweep finds it still unreported and records it, once.
        assert_eq!(
            domain.sweep_expired().await,
            1,
            "{:?}",
            domain.ctx.db.engine()
        );
        assert_eq!(
            domain.sweep_expired().await,
            0,
            "{:?}",
            domain.ctx.db.engine()
        );
        let kinds = kinds_recorded_for(&domain, &id).await;
        assert_eq!(
            kinds,
            ["authentication.created", "authentication.expired"],
            "{:?}: recorded once",
            domain.ctx.db.engine()
        );
    }
}

/// The kinds of the audit records about authentication `id`, oldest first.
async fn kinds_recorded_for(
    domain: &TestDomain,
    id: &tessera_protocol::authentication::AuthenticationId,
) -> Vec<String> {
    let records = crate::store::audit::query(
        &domain.ctx.db,
        &crate::store::audit::Filter {
            application_id: Some(domain.app.id.to_string()),
            ..Default::default()
        },
        100,
        true,
    )
    .await
    .expect("the audit log");
    records
        .into_iter()
        .filter(|r| r.record.subject.as_deref() == Some(id.as_str()))
        .map(|r| r.record.kind)
        .collect()
}

/// The request `status` names, as stored now.
async fn stored_request(
    domain: &TestDomain,
    status: &tessera_protocol::api::AuthenticationStatus,
) -> crate::store::authentications::Authentication {
    crate::store::authentications::get(
        &domain.ctx.db,
        &status.authentication_id,
        domain.clock.now(),
    )
    .await
    .expect("read")
    .expect("stored")
}

/// A request whose push could not be delivered falls back to the user's next device; one
/// unpaired since it was chosen is not moved to (the request would wait there, pending, until it
/// expired), and the next is tried.
#[tokio::test]
async fn a_request_is_not_moved_to_a_device_unpaired_since_it_was_chosen() {
    use crate::store::authentications::{Readdressed, readdress};
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (user, primary) = domain.user_with_device("vera").await;
        let second = domain.device_of(&user, false).await;
        let third = domain.device_of(&user, false).await;
        let asked = domain.ask(&user, json!({})).await;
        let from = stored_request(&domain, &asked).await.enrollment_id;
        assert_eq!(
            from, primary.enrollment.enrollment_id,
            "the primary is asked first"
        );
        crate::domain::devices::remove_device(
            &domain.ctx,
            &domain.app.id,
            &user,
            second.enrollment.enrollment_id.as_str(),
        )
        .await
        .expect("unpaired");
        let move_to = |to: &TestDevice| {
            let (db, id, from) = (
                domain.ctx.db.clone(),
                asked.authentication_id.clone(),
                from.clone(),
            );
            let to = to.enrollment.enrollment_id.clone();
            async move {
                readdress(&db, &id, &from, &to, "signed", "nonce")
                    .await
                    .expect("readdress")
            }
        };
        assert_eq!(
            move_to(&second).await,
            Readdressed::DeviceGone,
            "{engine:?}"
        );
        assert_eq!(stored_request(&domain, &asked).await.enrollment_id, from);
        assert_eq!(move_to(&third).await, Readdressed::Moved, "{engine:?}");
        assert_eq!(
            move_to(&third).await,
            Readdressed::NotPendingThere,
            "{engine:?}: moved already"
        );
    }
}

/// The same race run at once: a move to a device and that device's unpairing. The move waits
/// for the unpairing (and is refused) or the unpairing for the move (and fails the request it
/// finds there); never is a request left pending for a device that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_racing_the_unpairing_of_its_device_leaves_nothing_pending_there() {
    use crate::store::authentications::{Readdressed, readdress};
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (mut moved, mut refused) = (0, 0);
        for round in 0..24u64 {
            let (user, _primary) = domain.user_with_device(&format!("wes-{round}")).await;
            let second = domain.device_of(&user, false).await;
            let asked = domain.ask(&user, json!({})).await;
            let from = stored_request(&domain, &asked).await.enrollment_id;
            let to = second.enrollment.enrollment_id.clone();
            let move_ = tokio::spawn({
                let (db, id, to) = (
                    domain.ctx.db.clone(),
                    asked.authentication_id.clone(),
                    to.clone(),
                );
                async move {
                    // Started a little later in some rounds, so that either side comes first.
                    tokio::time::sleep(Duration::from_millis(round % 3)).await;
                    readdress(&db, &id, &from, &to, "signed", "nonce").await
                }
            });
            let unpairing = domain.unpairing_after(&user, &to, yields(round % 4));
            let (move_, unpairing) = tokio::join!(move_, unpairing);
            unpairing.expect("ran");
            match move_.expect("ran").expect("readdress") {
                Readdressed::Moved => moved += 1,
                Readdressed::DeviceGone => refused += 1,
                Readdressed::NotPendingThere => {
                    panic!("{engine:?}, round {round}: nothing else moved it")
                }
            }
            let stored = stored_request(&domain, &asked).await;
            assert!(
                stored.enrollment_id != second.enrollment.enrollment_id
                    || stored.state != AuthenticationState::Pending,
                "{engine:?}, round {round}: left pending for the unpaired device"
            );
        }
        println!("{engine:?}: {moved} moved before the unpairing, {refused} refused after it");
    }
}

/// A request made for a device at the moment it is unpaired. The request's admission locks the
/// device's row (PostgreSQL) or runs alone (SQLite) and requires it active: it comes before the
/// unpairing, which then fails it, or after, and is refused. Never is a request stored pending
/// for a device that is gone (it would wait there until it expired).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_made_as_its_device_is_unpaired_is_not_left_pending_for_it() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (mut failed, mut refused, mut gone) = (0, 0, 0);
        for round in 0..24u64 {
            let (user, phone) = domain.user_with_device(&format!("xena-{round}")).await;
            let create = tokio::spawn({
                let (ctx, app, user) = (domain.ctx.clone(), domain.app.clone(), user.clone());
                async move {
                    let request =
                        serde_json::from_value(json!({"kind": "approval"})).expect("a request");
                    super::create(&ctx, &app, &user, request).await
                }
            });
            // Started later in most rounds: a request's creation takes longer than an
            // unpairing, and either must come first in some rounds.
            let pause = tokio::time::sleep(Duration::from_micros(500 * (round % 6)));
            let unpairing = domain.unpairing_after(&user, &phone.enrollment.enrollment_id, pause);
            let (created, unpairing) = tokio::join!(create, unpairing);
            unpairing.expect("ran");
            match created.expect("ran") {
                Ok(status) => {
                    let stored = stored_request(&domain, &status).await;
                    assert_eq!(
                        (stored.state, stored.failure_reason.as_deref()),
                        (AuthenticationState::Failed, Some("device_unpaired")),
                        "{engine:?}, round {round}: stored before the unpairing, failed by it"
                    );
                    failed += 1;
                }
                Err(super::DomainError::Refused { code, .. }) => {
                    assert!(
                        matches!(code, ErrorCode::NoDevice | ErrorCode::DeviceNotFound),
                        "{engine:?}, round {round}: {code:?}"
                    );
                    refused += 1;
                    gone += usize::from(code == ErrorCode::DeviceNotFound);
                }
                Err(other) => panic!("{engine:?}, round {round}: {other:?}"),
            }
        }
        println!(
            "{engine:?}: {failed} stored and failed by the unpairing, {refused} refused \
             ({gone} of them picked before it and refused at admission)"
        );
    }
}
