//! A user's bypass called directly, without HTTP: while it lasts, a push or transaction
//! completes at once and nothing reaches the device; once it ends (by the clock, or cleared),
//! requests are pushed again; a silent verification never bypasses. Recovery codes issued and
//! revoked at once take turns (one set of codes works, never a mix), and neither a bypass nor
//! codes written while their user is deleted outlive the user.

use std::time::Duration;

use serde_json::json;
use tessera_protocol::authentication::AuthenticationState;
use tessera_protocol::bypass::SetBypassRequest;

use tessera_protocol::bypass::RecoveryCodesIssued;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::UserId;

use super::{
    RECOVERY_CODE_COUNT, clear, code_matches, codes_status, grant, issue_codes, normalize_code,
    revoke_codes,
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
