//! A user's bypass called directly, without HTTP: while it lasts, a push or transaction
//! completes at once and nothing reaches the device; once it ends (by the clock, or cleared),
//! requests are pushed again; a silent verification never bypasses. Recovery codes issued and
//! revoked at once take turns (one set of codes works, never a mix), and neither a bypass nor
//! codes written while their user is deleted outlive the user. A recovery code answers a push,
//! never a silent verification or a CIBA request; it is spent only by the approval it makes,
//! and copies of it sent at once approve their request once.

use std::time::Duration;

use serde_json::json;
use tessera_protocol::authentication::AuthenticationState;
use tessera_protocol::bypass::SetBypassRequest;

use tessera_protocol::bypass::RecoveryCodesIssued;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::UserId;

use super::{
    RECOVERY_CODE_COUNT, answer_authentication, clear, code_matches, codes_status, grant,
    issue_codes, normalize_code, revoke_codes,
};
use crate::domain::testing::{TestDomain, endings_announced, sent_at_once};
use crate::store::bypass as store;

fn for_seconds(seconds: u32) -> SetBypassRequest {
    SetBypassRequest {
        duration_seconds: Some(seconds),
        until: None,
        reason: "lost phone".into(),
    }
}

#[tokio::test]
async fn a_bypass_approves_without_the_device_until_it_ends() {
    for domain in TestDomain::each_engine().await {
        let (alice, phone) = domain.user_with_device("alice").await;
        grant(&domain.ctx, &domain.app.id, &alice, &for_seconds(60))
            .await
            .expect("granted");

        for body in [
            json!({}),
            json!({"kind": "transaction", "message": "Pay 20 EUR", "fields": [{"label": "To", "value": "Shop"}]}),
        ] {
            let bypassed = domain.ask(&alice, body).await;
            assert_eq!(bypassed.state, AuthenticationState::Approved);
            assert_eq!(endings_announced(&bypassed.authentication_id), 1);
        }
        // A silent verification proves the device: never bypassed.
        let silent = domain.ask(&alice, json!({"kind": "silent"})).await;
        assert_eq!(silent.state, AuthenticationState::Pending);
        let pulled = domain.pull(&phone).await;
        assert_eq!(
            pulled.len(),
            1,
            "only the silent verification reached the device"
        );
        assert_eq!(pulled[0].request_id, silent.authentication_id);
        assert!(
            domain
                .pushes
                .at_least(1)
                .await
                .iter()
                .all(|(id, _)| *id == silent.authentication_id),
            "nothing pushed for the bypassed requests"
        );

        domain.clock.advance(Duration::from_secs(61));
        let after = domain.ask(&alice, json!({})).await;
        assert_eq!(
            after.state,
            AuthenticationState::Pending,
            "the bypass ended"
        );
    }
}

#[tokio::test]
async fn a_cleared_bypass_bypasses_nothing() {
    for domain in TestDomain::each_engine().await {
        let (bob, _phone) = domain.user_with_device("bob").await;
        grant(&domain.ctx, &domain.app.id, &bob, &for_seconds(3600))
            .await
            .expect("granted");
        clear(&domain.ctx, &domain.app.id, &bob)
            .await
            .expect("cleared");
        let asked = domain.ask(&bob, json!({})).await;
        assert_eq!(asked.state, AuthenticationState::Pending);
        assert_eq!(domain.pushes.at_least(1).await.len(), 1, "pushed");
    }
}

/// How many of the codes `issued` shows are among the user's unused codes as stored.
async fn working(domain: &TestDomain, user: &UserId, issued: &RecoveryCodesIssued) -> usize {
    let stored = store::unused_codes(&domain.ctx.db, &domain.app.id, user)
        .await
        .expect("codes");
    issued
        .codes
        .iter()
        .filter(|code| {
            let code = normalize_code(code);
            stored.iter().any(|s| code_matches(s, &code))
        })
        .count()
}

/// The user's unused codes as `codes_status` counts them.
async fn remaining(domain: &TestDomain, user: &UserId) -> usize {
    let status = codes_status(&domain.ctx, &domain.app.id, user)
        .await
        .expect("status");
    usize::try_from(status.remaining).expect("small")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovery_codes_issued_at_once_leave_one_set_that_works() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        for round in 0..4 {
            let user = domain.user(&format!("carol-{round}")).await;
            let issues = sent_at_once(8, || {
                let (ctx, app, user) = (domain.ctx.clone(), domain.app.id.clone(), user.clone());
                async move { issue_codes(&ctx, &app, &user).await.expect("issued") }
            })
            .await;
            // On PostgreSQL each issue's DELETE would miss the others' uncommitted codes: up to
            // eight sets would work. Taking turns, the last one's codes replace all the others.
            assert_eq!(
                remaining(&domain, &user).await,
                RECOVERY_CODE_COUNT,
                "{engine:?} round {round}"
            );
            let mut sets_working = 0;
            for issued in &issues {
                assert_eq!(issued.codes.len(), RECOVERY_CODE_COUNT);
                match working(&domain, &user, issued).await {
                    0 => {}
                    n if n == RECOVERY_CODE_COUNT => sets_working += 1,
                    n => panic!("{engine:?} round {round}: {n} codes of one set work"),
                }
            }
            assert_eq!(sets_working, 1, "{engine:?} round {round}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoke_racing_an_issue_revokes_the_codes_before_it() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        for round in 0..10 {
            let user = domain.user(&format!("dave-{round}")).await;
            issue_codes(&domain.ctx, &domain.app.id, &user)
                .await
                .expect("first codes");
            let issue = tokio::spawn({
                let (ctx, app, user) = (domain.ctx.clone(), domain.app.id.clone(), user.clone());
                async move { issue_codes(&ctx, &app, &user).await.expect("issued") }
            });
            let revoke = tokio::spawn({
                let (db, app, user) = (domain.ctx.db.clone(), domain.app.id.clone(), user.clone());
                async move {
                    store::revoke_codes(&db, &app, &user)
                        .await
                        .expect("revoked")
                }
            });
            let issued = issue.await.expect("issue ran");
            let revoked = revoke.await.expect("revoke ran");
            // Before or after the issue, the revoke finds a whole set unused: the first codes,
            // or the issue's. On PostgreSQL without turns, a revoke that waited for the issue's
            // delete found the first codes gone and missed the new ones: it revoked nothing
            // and the new codes stayed.
            assert_eq!(
                revoked,
                Some(u64::try_from(RECOVERY_CODE_COUNT).expect("small")),
                "{engine:?} round {round}"
            );
            let left = remaining(&domain, &user).await;
            assert_eq!(
                left,
                working(&domain, &user, &issued).await,
                "{engine:?} round {round}"
            );
            assert!(
                left == 0 || left == RECOVERY_CODE_COUNT,
                "{engine:?} round {round}: {left}"
            );
        }
    }
}

#[tokio::test]
async fn a_missing_user_gets_no_bypass_and_no_codes() {
    for domain in TestDomain::each_engine().await {
        let nobody: UserId = "nobody".parse().expect("user id");
        let (ctx, app) = (&domain.ctx, &domain.app.id);
        let refused = [
            grant(ctx, app, &nobody, &for_seconds(60)).await.err(),
            issue_codes(ctx, app, &nobody).await.err(),
            revoke_codes(ctx, app, &nobody).await.err(),
        ];
        for error in refused {
            assert_eq!(error.and_then(|e| e.code()), Some(ErrorCode::UserNotFound));
        }
        for table in ["user_bypasses", "recovery_codes"] {
            assert_eq!(domain.rows_of(table, &nobody).await, 0, "{table}");
        }
    }
}

/// Runs `write` (for the round's new user) and the user's deletion at once, `rounds` times,
/// and checks after each that the write either found no user or that the deletion removed
/// what it wrote: `table` holds nothing of the deleted user's.
async fn raced_with_deletion<F, Fut>(domain: &TestDomain, rounds: usize, table: &str, write: F)
where
    F: Fn(crate::domain::Ctx, tessera_protocol::ids::ApplicationId, UserId) -> Fut,
    Fut: std::future::Future<Output = Result<(), super::DomainError>> + Send + 'static,
{
    let engine = domain.ctx.db.engine();
    for round in 0..rounds {
        let user = domain.user(&format!("erin-{round}")).await;
        let (ctx, app) = (domain.ctx.clone(), domain.app.id.clone());
        let written = tokio::spawn(write(ctx.clone(), app.clone(), user.clone()));
        let removed = tokio::spawn({
            let user = user.clone();
            async move { crate::domain::devices::remove_user(&ctx, &app, &user).await }
        });
        let written = written.await.expect("the write ran");
        removed
            .await
            .expect("the deletion ran")
            .expect("the user was there to remove");
        match written {
            Ok(()) => {}
            Err(e) => assert_eq!(
                e.code(),
                Some(ErrorCode::UserNotFound),
                "{engine:?} round {round}"
            ),
        }
        assert_eq!(
            domain.rows_of(table, &user).await,
            0,
            "{engine:?} round {round}: {table} outlived the user"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bypass_granted_while_the_user_is_deleted_does_not_outlive_them() {
    for domain in TestDomain::each_engine().await {
        raced_with_deletion(&domain, 30, "user_bypasses", |ctx, app, user| async move {
            grant(&ctx, &app, &user, &for_seconds(60)).await.map(drop)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn codes_issued_while_the_user_is_deleted_do_not_outlive_them() {
    for domain in TestDomain::each_engine().await {
        raced_with_deletion(&domain, 30, "recovery_codes", |ctx, app, user| async move {
            issue_codes(&ctx, &app, &user).await.map(drop)
        })
        .await;
    }
}

/// A request the bypass ends is recorded only while the bypass stands
/// (`authentications::insert_while_bypassed`): a bypass cleared since the request read it ends
/// nothing, and a clearing in flight is waited for, then ends nothing either. Before, the
/// request was stored approved from the bypass it had read, after its clearing was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bypass_cleared_since_a_request_read_it_ends_no_request() {
    use crate::store::authentications;
    use tessera_protocol::ids::AuthenticationId;
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (bob, _phone) = domain.user_with_device("bob").await;
        grant(&domain.ctx, &domain.app.id, &bob, &for_seconds(3600))
            .await
            .expect("granted");
        let asked = domain.ask(&bob, json!({})).await;
        assert_eq!(asked.state, AuthenticationState::Approved, "{engine:?}");
        // Copies of that request as `create` makes it, each ended by the bypass it read.
        let bypassed =
            authentications::get(&domain.ctx.db, &asked.authentication_id, domain.ctx.now())
                .await
                .expect("read")
                .expect("stored");
        let copy = || {
            let mut copy = bypassed.clone();
            copy.id = AuthenticationId::generate_ordered(domain.ctx.now_ms());
            copy
        };
        let now = domain.ctx.now();
        assert!(
            insert_while_bypassed(&domain.ctx.db, &copy(), now)
                .await
                .expect("ran"),
            "{engine:?}: recorded while the bypass stands"
        );

        // A clearing in flight: the request waits for it, then records nothing.
        let clearing = domain.clearing_bypass_in_flight(&bob).await;
        let request = {
            let (db, copy) = (domain.ctx.db.clone(), copy());
            tokio::spawn(async move { insert_while_bypassed(&db, &copy, now).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !request.is_finished(),
            "{engine:?}: the request waits for the clearing in flight"
        );
        clearing.commit().await.expect("cleared");
        assert!(
            !request.await.expect("ran").expect("ran"),
            "{engine:?}: nothing recorded once the clearing committed"
        );
        // And one read before a clearing that has committed records nothing.
        assert!(
            !insert_while_bypassed(&domain.ctx.db, &copy(), now)
                .await
                .expect("ran"),
            "{engine:?}"
        );
        // The request made now asks the device.
        let asked = domain.ask(&bob, json!({})).await;
        assert_eq!(asked.state, AuthenticationState::Pending, "{engine:?}");
    }
}

/// `authentications::insert_while_bypassed` in a write of its own, committed when it stored the
/// request.
async fn insert_while_bypassed(
    db: &crate::store::Database,
    a: &crate::store::authentications::Authentication,
    now: i64,
) -> Result<bool, crate::store::StoreError> {
    let mut w = db.write().await?;
    if crate::store::authentications::insert_while_bypassed(&mut w, a, now).await? {
        w.commit().await?;
        Ok(true)
    } else {
        w.rollback().await?;
        Ok(false)
    }
}

/// The user's count of wrong passcodes (recovery codes count towards it).
async fn failures_of(domain: &TestDomain, user: &UserId) -> i64 {
    sqlx::query_scalar("SELECT otp_failures FROM users WHERE application_id = $1 AND user_id = $2")
        .bind(domain.app.id.as_str())
        .bind(user.as_str())
        .fetch_one(domain.ctx.db.pool())
        .await
        .expect("the user")
}

/// The state of authentication `id` as stored.
async fn state_of(
    domain: &TestDomain,
    id: &tessera_protocol::ids::AuthenticationId,
) -> AuthenticationState {
    crate::store::authentications::get(&domain.ctx.db, id, domain.ctx.now())
        .await
        .expect("read")
        .expect("stored")
        .state
}

/// `refused` is `otp_not_allowed`, and it left everything as it was: request `id` pending,
/// every one of `user`'s codes unused and no failure counted.
async fn refused_untouched(
    domain: &TestDomain,
    user: &UserId,
    id: &tessera_protocol::ids::AuthenticationId,
    refused: &crate::domain::DomainError,
) {
    let engine = domain.ctx.db.engine();
    assert_eq!(refused.code(), Some(ErrorCode::OtpNotAllowed), "{engine:?}");
    assert_eq!(
        state_of(domain, id).await,
        AuthenticationState::Pending,
        "{engine:?}"
    );
    assert_eq!(
        remaining(domain, user).await,
        RECOVERY_CODE_COUNT,
        "{engine:?}"
    );
    assert_eq!(failures_of(domain, user).await, 0, "{engine:?}");
}

/// A recovery code stands in for a push or a transaction, never for what proves the phone: a
/// silent verification and a CIBA request (whose ID token would claim a device's user
/// verification) refuse it with `otp_not_allowed` before anything is counted or spent, and stay
/// pending. The code then still completes a push.
#[tokio::test]
async fn a_recovery_code_answers_no_silent_verification_and_no_ciba_request() {
    for domain in TestDomain::each_engine().await {
        let (kate, phone) = domain.user_with_device("kate").await;
        let issued = issue_codes(&domain.ctx, &domain.app.id, &kate)
            .await
            .expect("issued");
        let code = &issued.codes[0];

        let silent = domain.ask(&kate, json!({"kind": "silent"})).await;
        let refused = answer_authentication(
            &domain.ctx,
            &domain.app.id,
            silent.authentication_id.as_str(),
            code,
        )
        .await
        .expect_err("a silent verification proves the phone");
        refused_untouched(&domain, &kate, &silent.authentication_id, &refused).await;

        // A CIBA request, as a relying party makes it at the backchannel endpoint.
        crate::domain::ciba::flow_tests::Client::registered(&domain)
            .await
            .ask(&domain, kate.as_str())
            .await
            .expect("acknowledged");
        let ciba = domain
            .pull(&phone)
            .await
            .into_iter()
            .find(|r| r.kind == tessera_protocol::authentication::AuthenticationKind::Ciba)
            .expect("the CIBA request reached the phone");
        let refused =
            answer_authentication(&domain.ctx, &domain.app.id, ciba.request_id.as_str(), code)
                .await
                .expect_err("a CIBA request needs the phone's user verification");
        refused_untouched(&domain, &kate, &ciba.request_id, &refused).await;

        let push = domain.ask(&kate, json!({})).await;
        let approved = answer_authentication(
            &domain.ctx,
            &domain.app.id,
            push.authentication_id.as_str(),
            code,
        )
        .await
        .expect("the code was not spent");
        assert_eq!(approved.state, AuthenticationState::Approved);
        assert_eq!(remaining(&domain, &kate).await, RECOVERY_CODE_COUNT - 1);
    }
}

/// A recovery code is spent only by the write that records the approval it makes: a request
/// that ends while the code is checked (here, canceled in a write that commits once the code's
/// use has read the request pending) keeps the code unspent, and counts no failure. A request
/// that ended before keeps it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recovery_code_whose_request_ends_meanwhile_is_not_spent() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (liam, _phone) = domain.user_with_device("liam").await;
        let issued = issue_codes(&domain.ctx, &domain.app.id, &liam)
            .await
            .expect("issued");
        let push = domain.ask(&liam, json!({})).await;
        let id = push.authentication_id.clone();

        // The cancellation, in a write left open.
        let mut canceling = domain.ctx.db.write().await.expect("write");
        crate::store::authentications::record_cancellation(&mut canceling, &id, domain.ctx.now())
            .await
            .expect("ran")
            .expect("canceled");
        let answer = {
            let (ctx, app, id, code) = (
                domain.ctx.clone(),
                domain.app.id.clone(),
                id.clone(),
                issued.codes[0].clone(),
            );
            tokio::spawn(async move { answer_authentication(&ctx, &app, id.as_str(), &code).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        canceling.commit().await.expect("canceled");
        let refused = answer.await.expect("ran").expect_err("canceled meanwhile");
        assert_eq!(
            refused.code(),
            Some(ErrorCode::AlreadyAnswered),
            "{engine:?}"
        );
        assert_eq!(
            remaining(&domain, &liam).await,
            RECOVERY_CODE_COUNT,
            "{engine:?}: the code is not spent"
        );
        assert_eq!(failures_of(&domain, &liam).await, 0, "{engine:?}");

        // Ended before: nothing spent either.
        let refused =
            answer_authentication(&domain.ctx, &domain.app.id, id.as_str(), &issued.codes[0])
                .await
                .expect_err("canceled");
        assert_eq!(
            refused.code(),
            Some(ErrorCode::AlreadyAnswered),
            "{engine:?}"
        );
        assert_eq!(
            remaining(&domain, &liam).await,
            RECOVERY_CODE_COUNT,
            "{engine:?}"
        );

        let next = domain.ask(&liam, json!({})).await;
        answer_authentication(
            &domain.ctx,
            &domain.app.id,
            next.authentication_id.as_str(),
            &issued.codes[0],
        )
        .await
        .expect("the code still works");
    }
}

/// Copies of one recovery code sent at once for one push (a double tap, a retry): the push is
/// approved once, one code is spent, and every copy is told that approval, none counted as a
/// wrong code.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_of_one_recovery_code_at_once_approve_their_request_once() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        for round in 0..6 {
            let (user, _phone) = domain.user_with_device(&format!("mia-{round}")).await;
            let issued = issue_codes(&domain.ctx, &domain.app.id, &user)
                .await
                .expect("issued");
            let push = domain.ask(&user, json!({})).await;
            let id = push.authentication_id.clone();
            let told = sent_at_once(4, || {
                let (ctx, app, id, code) = (
                    domain.ctx.clone(),
                    domain.app.id.clone(),
                    id.clone(),
                    issued.codes[0].clone(),
                );
                async move { answer_authentication(&ctx, &app, id.as_str(), &code).await }
            })
            .await;
            assert_eq!(endings_announced(&id), 1, "{engine:?} round {round}");
            assert_eq!(
                remaining(&domain, &user).await,
                RECOVERY_CODE_COUNT - 1,
                "{engine:?} round {round}"
            );
            for status in &told {
                let status = status
                    .as_ref()
                    .unwrap_or_else(|e| panic!("{engine:?} round {round}: {e}"));
                assert_eq!(status.state, AuthenticationState::Approved);
                assert_eq!(
                    status.attributes["pingid.authentication.type"],
                    json!("RECOVERY_CODE")
                );
            }
            assert_eq!(
                failures_of(&domain, &user).await,
                0,
                "{engine:?} round {round}"
            );
        }
    }
}
