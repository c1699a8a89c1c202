//! A user's deletion (`store::users::delete`) through the domain: nothing of the user it
//! removed is inherited by a user re-created with the same id, and a request made at the same
//! moment is removed with them or refused.

use std::time::Duration;

use tessera_protocol::api::CreateAuthenticationRequest;
use tessera_protocol::ciba::{ClientAuthMethod, DeliveryMode, RegisterCibaClient};

use crate::clock::Clock;
use crate::domain::testing::{TestDomain, yields};
use crate::store::oidc_authorizations::{self, StoredAuthorization};

/// An authorization request of `client` for `user` whose code was issued (its digest is
/// set once stored), and redeemed at `used_at` if given.
fn authorization(
    domain: &TestDomain,
    client: &str,
    user: &str,
    used_at: Option<i64>,
) -> StoredAuthorization {
    StoredAuthorization {
        id: format!("azr_{}", rand::random::<u64>()),
        client_id: client.into(),
        application_id: domain.app.id.to_string(),
        user_id: user.into(),
        flow_id: "flow".into(),
        redirect_uri: "https://rp.example/cb".into(),
        state: None,
        nonce: None,
        code_challenge: "challenge".into(),
        scope: "openid".into(),
        acr_values: None,
        browser_digest: "browser".into(),
        family_id: format!("family {}", rand::random::<u64>()),
        created_at: 0,
        expires_at: i64::MAX,
        resumed_at: Some(0),
        claims: None,
        code_expires_at: Some(i64::MAX),
        code_used_at: used_at,
    }
}

/// A user deleted and re-created with the same id inherits nothing of the one deleted: no
/// last location a geovelocity rule would measure the new user's first request against, and
/// no authorization code issued and not redeemed (it would be redeemed for the new user).
/// A redeemed code stays, redeemable no more.
#[tokio::test]
async fn a_user_re_created_with_the_same_id_inherits_no_location_and_no_unredeemed_code() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let user = domain.user("olga").await;
        sqlx::query(
            "INSERT INTO policy_decisions (id, application_id, user_id, request_kind, \
             subject_id, policy_version, rule, action, effect, reason, inputs, latitude, \
             longitude, created_at) \
             VALUES ($1, $2, $3, 'authentication', NULL, 1, 'r', 'approve', 'approve', 'r', \
             '{}', 48.2, 16.4, $4)",
        )
        .bind(format!("pd_{}", rand::random::<u64>()))
        .bind(domain.app.id.as_str())
        .bind(user.as_str())
        .bind(domain.clock.now())
        .execute(domain.ctx.db.writer())
        .await
        .expect("a located decision");
        let (client, _) = domain
            .client(RegisterCibaClient::new(
                "Portal",
                DeliveryMode::Poll,
                ClientAuthMethod::ClientSecretBasic,
            ))
            .await;
        let unredeemed = format!("unredeemed {}", rand::random::<u64>());
        let redeemed = format!("redeemed {}", rand::random::<u64>());
        for (stored, code_digest) in [
            (
                authorization(&domain, &client, user.as_str(), None),
                &unredeemed,
            ),
            (
                authorization(&domain, &client, user.as_str(), Some(1)),
                &redeemed,
            ),
        ] {
            oidc_authorizations::insert(&domain.ctx.db, &stored)
                .await
                .expect("an authorization");
            sqlx::query("UPDATE oidc_authorizations SET code_digest = $1 WHERE id = $2")
                .bind(code_digest)
                .bind(&stored.id)
                .execute(domain.ctx.db.writer())
                .await
                .expect("its code");
        }
        let located =
            crate::store::policies::previous_location(&domain.ctx.db, &domain.app.id, &user)
                .await
                .expect("read");
        assert!(located.is_some(), "{engine:?}: the deleted user's location");

        crate::domain::devices::remove_user(&domain.ctx, &domain.app.id, &user)
            .await
            .expect("removed");
        let again = domain.user("olga").await;
        let located =
            crate::store::policies::previous_location(&domain.ctx.db, &domain.app.id, &again)
                .await
                .expect("read");
        assert_eq!(located, None, "{engine:?}: no location inherited");
        assert!(
            oidc_authorizations::by_code(&domain.ctx.db, &unredeemed)
                .await
                .expect("read")
                .is_none(),
            "{engine:?}: the unredeemed code went with the user"
        );
        let kept = oidc_authorizations::by_code(&domain.ctx.db, &redeemed)
            .await
            .expect("read")
            .expect("kept");
        assert!(kept.code_used_at.is_some(), "{engine:?}");
    }
}

/// A new request for a user's device at the moment the user is deleted: its admission locks
/// the device's row (PostgreSQL), and the deletion removes the user's devices before it
/// reads and removes their requests. The request is stored before and removed with the
/// user, or refused: never left pending for a device that is gone (counted against a user
/// re-created with the same id).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_made_as_its_user_is_deleted_is_removed_with_them_or_refused() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (mut removed, mut refused) = (0, 0);
        for round in 0..24u64 {
            let (user, _phone) = domain.user_with_device(&format!("pia-{round}")).await;
            let request = {
                let (ctx, app, user) = (domain.ctx.clone(), domain.app.clone(), user.clone());
                tokio::spawn(async move {
                    let request: CreateAuthenticationRequest =
                        serde_json::from_value(serde_json::json!({"kind": "approval"}))
                            .expect("a request");
                    crate::domain::authentication::create(&ctx, &app, &user, request).await
                })
            };
            let deletion = {
                let (ctx, app, user) = (domain.ctx.clone(), domain.app.id.clone(), user.clone());
                tokio::spawn(async move {
                    // Started a little later in some rounds, so that either side comes first.
                    if round % 2 == 0 {
                        yields(round % 8).await;
                    } else {
                        tokio::time::sleep(Duration::from_micros(150 * (round % 8))).await;
                    }
                    crate::domain::devices::remove_user(&ctx, &app, &user).await
                })
            };
            let (requested, deleted) = tokio::join!(request, deletion);
            deleted.expect("ran").expect("the user was removed");
            match requested.expect("ran") {
                Ok(_) => removed += 1,
                Err(_) => refused += 1,
            }
            for table in ["authentications", "enrollments"] {
                assert_eq!(
                    domain.rows_of(table, &user).await,
                    0,
                    "{engine:?}, round {round}: {table} left behind"
                );
            }
        }
        println!(
            "{engine:?}: {removed} requests stored before the deletion, {refused} refused after it"
        );
    }
}

/// A user's CIBA requests go with them: the deletion finds them by their authentications (it
/// reads the user's rows through an index, never a whole table), and so do QR sessions
/// restricted to the user and flows of the user.
#[tokio::test]
async fn a_deleted_users_ciba_requests_qr_sessions_and_flows_go_with_them() {
    use crate::domain::ciba::{BasicCredentials, Form};
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (user, _phone) = domain.user_with_device("quinn").await;
        let (id, secret) = domain
            .client(RegisterCibaClient::new(
                "Portal",
                DeliveryMode::Poll,
                ClientAuthMethod::ClientSecretBasic,
            ))
            .await;
        let form = Form::new(vec![
            ("scope".to_string(), "openid".to_string()),
            ("login_hint".to_string(), user.to_string()),
        ])
        .expect("a form");
        crate::domain::ciba::backchannel::authenticate(
            &domain.ctx,
            Some(BasicCredentials { id, secret }),
            &form,
        )
        .await
        .expect("acknowledged");
        let flow: tessera_protocol::flows::CreateFlowRequest =
            serde_json::from_value(serde_json::json!({"user_id": user})).expect("a flow request");
        crate::domain::flows::create(&domain.ctx, &domain.app, flow)
            .await
            .expect("a flow");
        sqlx::query(
            "INSERT INTO qr_sessions (id, application_id, token_digest, code_expires_at, \
             browser_token_digest, context, state, version, expires_at, restricted_user_id, \
             created_at) VALUES ($1, $2, $3, 0, $3, '{}', 'created', 1, 0, $4, 0)",
        )
        .bind(format!("qrs_{}", rand::random::<u64>()))
        .bind(domain.app.id.as_str())
        .bind(format!("digest {}", rand::random::<u64>()))
        .bind(user.as_str())
        .execute(domain.ctx.db.writer())
        .await
        .expect("a session restricted to the user");
        let restricted = || {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM qr_sessions WHERE application_id = $1 \
                 AND restricted_user_id = $2",
            )
            .bind(domain.app.id.as_str())
            .bind(user.as_str())
            .fetch_one(domain.ctx.db.pool())
        };
        assert_eq!(
            domain.rows_of("ciba_requests", &user).await,
            1,
            "{engine:?}"
        );
        assert_eq!(domain.rows_of("flows", &user).await, 1, "{engine:?}");
        assert_eq!(restricted().await.expect("count"), 1, "{engine:?}");

        crate::domain::devices::remove_user(&domain.ctx, &domain.app.id, &user)
            .await
            .expect("removed");
        for table in ["ciba_requests", "flows", "authentications"] {
            assert_eq!(
                domain.rows_of(table, &user).await,
                0,
                "{engine:?}: {table} left behind"
            );
        }
        assert_eq!(restricted().await.expect("count"), 0, "{engine:?}");
    }
}

/// A user's deletion fails the requests still waiting for an answer, each recorded once as
/// failed; a request that expired unanswered, its expiry recorded by the sweep, keeps that one
/// ending and is not recorded failed besides.
#[tokio::test]
async fn a_deletion_fails_the_waiting_requests_once_and_leaves_a_recorded_expiry_as_it_was() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (user, _phone) = domain.user_with_device("rita").await;
        let expired = domain
            .ask(&user, serde_json::json!({"expires_in": 30}))
            .await
            .authentication_id;
        domain.clock.advance(Duration::from_secs(31));
        assert_eq!(domain.sweep_expired().await, 1, "the expiry is recorded");
        let waiting = domain
            .ask(&user, serde_json::json!({}))
            .await
            .authentication_id;

        crate::domain::devices::remove_user(&domain.ctx, &domain.app.id, &user)
            .await
            .expect("removed");
        let kinds = |id: tessera_protocol::ids::AuthenticationId| {
            let db = domain.ctx.db.clone();
            async move {
                sqlx::query_scalar::<_, String>(
                    "SELECT kind FROM audit_log WHERE subject = $1 ORDER BY seq",
                )
                .bind(id.as_str())
                .fetch_all(db.pool())
                .await
                .expect("the audit log")
            }
        };
        assert_eq!(
            kinds(expired).await,
            ["authentication.created", "authentication.expired"],
            "{engine:?}: the expiry is the one ending"
        );
        assert_eq!(
            kinds(waiting).await,
            ["authentication.created", "authentication.failed"],
            "{engine:?}: failed with the user, once"
        );
    }
}
