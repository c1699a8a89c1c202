//! Passcodes answering a push authentication, called directly without HTTP: a registered OATH
//! token's code ends the request through the one outcome path, once, and a code is used once;
//! a policy's `require` accepts codes only from the sources it names.

use std::time::Duration;

use serde_json::json;
use tessera_protocol::api::{OtpAlgorithm, OtpTokenKind, RegisterOtpToken};
use tessera_protocol::authentication::{AuthenticationState, Decision};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::UserId;
use tessera_protocol::otp::{OtpHash, decode_base32, hotp};

use super::{DeviceMatch, answer_authentication, find_device_code, register_token};
use crate::clock::Clock;
use crate::domain::outcome::{self, Ending, Take, Taken};
use crate::domain::testing::{TestDomain, endings_announced, joined, sent_at_once};

/// The token's seed (20 bytes, base32).
const SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

/// A registration of a token of `kind` with [`SECRET`] (SHA-1, six digits, thirty seconds).
fn token_of(kind: OtpTokenKind) -> RegisterOtpToken {
    RegisterOtpToken {
        kind,
        secret: SECRET.into(),
        algorithm: OtpAlgorithm::default(),
        digits: None,
        period: None,
        counter: None,
    }
}

/// Registers an authenticator app (TOTP, SHA-1, six digits, thirty seconds) for `user`.
async fn authenticator_app(domain: &TestDomain, user: &UserId) {
    register_token(
        &domain.ctx,
        &domain.app.id,
        user,
        token_of(OtpTokenKind::Totp),
    )
    .await
    .expect("registered");
}

/// The app's code now, by the domain's clock.
fn code_now(domain: &TestDomain) -> String {
    let seed = decode_base32(SECRET).expect("base32");
    let step = u64::try_from(domain.clock.now() / 30).expect("after 1970");
    hotp(&seed, OtpHash::Sha1, 6, step)
        .expect("a code")
        .to_string()
}

#[tokio::test]
async fn a_token_code_approves_a_request_that_takes_codes_and_is_used_once() {
    for domain in TestDomain::each_engine().await {
        let (alice, _phone) = domain.user_with_device("alice").await;
        authenticator_app(&domain, &alice).await;

        let without = domain.ask(&alice, json!({})).await;
        assert_eq!(
            answer_authentication(
                &domain.ctx,
                &domain.app.id,
                without.authentication_id.as_str(),
                &code_now(&domain)
            )
            .await
            .expect_err("no code taken")
            .code(),
            Some(ErrorCode::OtpNotAllowed)
        );

        let first = domain.ask(&alice, json!({"use_code": true})).await;
        let id = first.authentication_id.clone();
        let wrong = if code_now(&domain) == "000000" {
            "111111"
        } else {
            "000000"
        };
        assert!(
            answer_authentication(&domain.ctx, &domain.app.id, id.as_str(), wrong)
                .await
                .is_err()
        );
        let code = code_now(&domain);
        let approved = answer_authentication(&domain.ctx, &domain.app.id, id.as_str(), &code)
            .await
            .expect("approved");
        assert_eq!(approved.state, AuthenticationState::Approved);
        assert_eq!(endings_announced(&id), 1);

        // The same code on the next request: its time step is used up.
        let second = domain.ask(&alice, json!({"use_code": true})).await;
        assert!(
            answer_authentication(
                &domain.ctx,
                &domain.app.id,
                second.authentication_id.as_str(),
                &code
            )
            .await
            .is_err(),
            "a code is accepted once"
        );
        // The next step's code is accepted.
        domain.clock.advance(Duration::from_secs(30));
        let next = answer_authentication(
            &domain.ctx,
            &domain.app.id,
            second.authentication_id.as_str(),
            &code_now(&domain),
        )
        .await
        .expect("approved");
        assert_eq!(next.state, AuthenticationState::Approved);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_and_a_denial_from_the_device_at_once_end_the_request_once() {
    for domain in TestDomain::each_engine().await {
        let (bob, phone) = domain.user_with_device("bob").await;
        authenticator_app(&domain, &bob).await;
        for _ in 0..6 {
            let created = domain.ask(&bob, json!({"use_code": true})).await;
            let id = created.authentication_id.clone();
            let request = domain.pulled(&phone, &id).await;
            let deny = phone.answer(&request, Decision::Deny, None, domain.clock.now());
            let code = code_now(&domain);
            let by_code = {
                let (ctx, app, id) = (domain.ctx.clone(), domain.app.id.clone(), id.clone());
                tokio::spawn(
                    async move { answer_authentication(&ctx, &app, id.as_str(), &code).await },
                )
            };
            let by_device = {
                let (ctx, id) = (domain.ctx.clone(), id.clone());
                tokio::spawn(async move {
                    crate::domain::authentication::answer(&ctx, id.as_str(), &deny, "198.51.100.7")
                        .await
                })
            };
            let (by_code, by_device) = tokio::join!(by_code, by_device);
            let (by_code, by_device) = (by_code.expect("ran"), by_device.expect("ran"));
            match (&by_code, &by_device) {
                (Ok(status), Err(_)) => assert_eq!(status.state, AuthenticationState::Approved),
                (Err(_), Ok(recorded)) => assert_eq!(recorded.state, AuthenticationState::Denied),
                _ => panic!("exactly one ending wins: {by_code:?} / {by_device:?}"),
            }
            assert_eq!(endings_announced(&id), 1);
            // Each round's code is another step's.
            domain.clock.advance(Duration::from_secs(30));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_code_sent_for_several_requests_at_once_is_accepted_once() {
    for domain in TestDomain::each_engine().await {
        for n in 0..6 {
            // A user of their own each round: three requests is as many as a user may have
            // pending (the push-bombing limit), and the unused ones stay pending.
            let (carol, _phone) = domain.user_with_device(&format!("carol-{n}")).await;
            authenticator_app(&domain, &carol).await;
            let mut ids = Vec::new();
            for _ in 0..3 {
                let created = domain.ask(&carol, json!({"use_code": true})).await;
                ids.push(created.authentication_id);
            }
            let code = code_now(&domain);
            let tasks: Vec<_> = ids
                .iter()
                .map(|id| {
                    let (ctx, app, id, code) = (
                        domain.ctx.clone(),
                        domain.app.id.clone(),
                        id.clone(),
                        code.clone(),
                    );
                    tokio::spawn(async move {
                        answer_authentication(&ctx, &app, id.as_str(), &code).await
                    })
                })
                .collect();
            let accepted = joined(tasks).await.iter().filter(|r| r.is_ok()).count();
            assert_eq!(
                accepted, 1,
                "a code is used once, however many requests it is sent for"
            );
        }
    }
}

/// The user's count of wrong passcodes.
async fn failures_of(domain: &TestDomain, user: &UserId) -> i64 {
    use sqlx::Row;
    sqlx::query("SELECT otp_failures FROM users WHERE application_id = $1 AND user_id = $2")
        .bind(domain.app.id.as_str())
        .bind(user.as_str())
        .fetch_one(domain.ctx.db.pool())
        .await
        .expect("the user")
        .try_get("otp_failures")
        .expect("a count")
}

/// The same passcode form sent several times at once (a double tap), and again later (a retry
/// after a lost answer): every copy is told the one approval, the request ends once, and no
/// copy counts as a wrong passcode. Another code for the answered request is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_of_the_passcode_that_approved_a_request_are_told_its_approval() {
    for domain in TestDomain::each_engine().await {
        let (dave, _phone) = domain.user_with_device("dave").await;
        authenticator_app(&domain, &dave).await;
        for round in 0..8 {
            let created = domain.ask(&dave, json!({"use_code": true})).await;
            let id = created.authentication_id.clone();
            let code = code_now(&domain);
            let told = domain.passcode_sent_at_once(&id, &code, 4).await;
            for status in &told {
                let status = status.as_ref().expect("every copy is told the approval");
                assert_eq!(status.state, AuthenticationState::Approved, "round {round}");
                assert_eq!(
                    status.attributes["pingid.authentication.type"],
                    json!("AUTHENTICATOR_APP")
                );
            }
            assert_eq!(endings_announced(&id), 1, "round {round}");
            assert_eq!(failures_of(&domain, &dave).await, 0, "round {round}");

            let retried = answer_authentication(&domain.ctx, &domain.app.id, id.as_str(), &code)
                .await
                .expect("a retry is told the approval");
            assert_eq!(retried.state, AuthenticationState::Approved);
            let other = if code == "000000" { "111111" } else { "000000" };
            assert_eq!(
                answer_authentication(&domain.ctx, &domain.app.id, id.as_str(), other)
                    .await
                    .expect_err("another code")
                    .code(),
                Some(ErrorCode::AlreadyAnswered)
            );
            assert_eq!(endings_announced(&id), 1, "round {round}");
            domain.clock.advance(Duration::from_secs(30));
        }
    }
}

/// A passcode is spent only by the write that records its approval: when another ending came
/// first, nothing is used up, and the same code still approves another request.
#[tokio::test]
async fn a_passcode_whose_request_ended_first_is_not_spent() {
    for domain in TestDomain::each_engine().await {
        let (erin, _phone) = domain.user_with_device("erin").await;
        authenticator_app(&domain, &erin).await;
        let first = domain.ask(&erin, json!({"use_code": true})).await;
        let code = code_now(&domain);
        let DeviceMatch::Accepted(_, spend) =
            find_device_code(&domain.ctx, &domain.app.id, &erin, &code)
                .await
                .expect("checked")
        else {
            panic!("the code matches");
        };
        // The request is withdrawn after the code was checked, before its approval is written.
        outcome::record(&domain.ctx, &first.authentication_id, Ending::Canceled)
            .await
            .expect("recorded")
            .expect("canceled");
        let ending = Ending::Passcode {
            attributes: "{}",
            code_digest: None,
        };
        let taken = outcome::record_taking(
            &domain.ctx,
            &first.authentication_id,
            Take::Passcode(&spend),
            ending,
        )
        .await
        .expect("written or not");
        assert!(matches!(taken, Taken::NotRecorded), "{taken:?}");

        let second = domain.ask(&erin, json!({"use_code": true})).await;
        let approved = answer_authentication(
            &domain.ctx,
            &domain.app.id,
            second.authentication_id.as_str(),
            &code,
        )
        .await
        .expect("the code was not spent");
        assert_eq!(approved.state, AuthenticationState::Approved);
    }
}

/// Registers an OATH hardware token for `user`: the registration's result.
async fn register(
    ctx: &crate::domain::Ctx,
    app: &tessera_protocol::ids::ApplicationId,
    user: &UserId,
) -> Result<(), Option<ErrorCode>> {
    register_token(ctx, app, user, token_of(OtpTokenKind::OathToken))
        .await
        .map(|_| ())
        .map_err(|e| e.code())
}

/// Registrations sent at once for a user three tokens short of the cap store three tokens: the
/// count and the insert are one write that takes its turn on the user, so the registrations
/// cannot all pass a count read before any of them was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_registered_at_once_stop_at_the_cap() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        for round in 0..5 {
            let user = domain.user(&format!("frank-{round}")).await;
            for _ in 0..super::MAX_TOKENS_PER_USER - 3 {
                register(&domain.ctx, &domain.app.id, &user)
                    .await
                    .expect("registered");
            }
            let results = sent_at_once(10, || {
                let (ctx, app, user) = (domain.ctx.clone(), domain.app.id.clone(), user.clone());
                async move { register(&ctx, &app, &user).await }
            })
            .await;
            let stored = results.iter().filter(|r| r.is_ok()).count();
            assert_eq!(stored, 3, "{engine:?}, round {round}: {results:?}");
            assert!(
                results
                    .iter()
                    .all(|r| r.is_ok() || *r == Err(Some(ErrorCode::Conflict))),
                "{engine:?}, round {round}: {results:?}"
            );
            assert_eq!(
                domain.rows_of("otp_tokens", &user).await,
                super::MAX_TOKENS_PER_USER,
                "{engine:?}, round {round}"
            );
        }
    }
}

/// A token registered while the user is being deleted is refused as for an unknown user, and
/// no token is left behind (a user created later with the same id would inherit it): the user
/// is looked up inside the registration's write, under the user's row lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_registered_during_the_users_deletion_is_not_left_behind() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let user = domain.user("grace").await;
        register(&domain.ctx, &domain.app.id, &user)
            .await
            .expect("registered");
        let registered = crate::domain::testing::racing_a_deletion(&domain, &user, {
            let (ctx, app, user) = (domain.ctx.clone(), domain.app.id.clone(), user.clone());
            async move { register(&ctx, &app, &user).await }
        })
        .await;
        assert_eq!(
            (registered, domain.rows_of("otp_tokens", &user).await),
            (Err(Some(ErrorCode::UserNotFound)), 0),
            "{engine:?}: refused, and no token left"
        );
        // A user created again with the id starts with no token.
        let again = domain.user("grace").await;
        assert_eq!(domain.rows_of("otp_tokens", &again).await, 0);
    }
}

/// Saves the application's policy: `default` for every request.
async fn policy_requiring(domain: &TestDomain, default: serde_json::Value) {
    let policy =
        serde_json::from_value(json!({"rules": [], "default": default})).expect("a policy");
    crate::domain::policy::save(&domain.ctx, &domain.app.id, &policy)
        .await
        .expect("saved");
}

/// The state of authentication `id` as stored.
async fn state_of(
    domain: &TestDomain,
    id: &tessera_protocol::authentication::AuthenticationId,
) -> AuthenticationState {
    crate::store::authentications::get(&domain.ctx.db, id, domain.clock.now())
        .await
        .expect("read")
        .expect("stored")
        .state
}

/// A policy that requires methods none of which is a passcode's source is applied to a
/// passcode answering a push, as to `otp/verify`: the push asked to take codes takes none (its
/// status does not offer them), the code is refused with `policy_denied` before anything is
/// counted or spent, and the push stays pending. A request stored as taking codes is refused
/// the same way. The unspent code then approves a push whose policy names its source.
#[tokio::test]
async fn a_require_without_the_codes_source_refuses_its_code_and_spends_nothing() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (hana, _phone) = domain.user_with_device("hana").await;
        authenticator_app(&domain, &hana).await;
        policy_requiring(
            &domain,
            json!({"action": "require", "methods": ["mobile_biometrics"]}),
        )
        .await;
        let created = domain.ask(&hana, json!({"use_code": true})).await;
        let id = created.authentication_id.clone();
        assert_eq!(created.state, AuthenticationState::Pending, "{engine:?}");
        let code = code_now(&domain);
        let refused = answer_authentication(&domain.ctx, &domain.app.id, id.as_str(), &code)
            .await
            .expect_err("the policy requires biometrics");
        assert_eq!(refused.code(), Some(ErrorCode::PolicyDenied), "{engine:?}");
        assert_eq!(state_of(&domain, &id).await, AuthenticationState::Pending);
        assert_eq!(failures_of(&domain, &hana).await, 0, "{engine:?}");
        assert!(!created.otp_accepted, "{engine:?}: no code offered");

        // A request stored as taking codes (as it was before the policy was applied to them).
        sqlx::query(
            "UPDATE authentications SET otp_mode = 'use_code', otp_after = created_at WHERE id = $1",
        )
        .bind(id.as_str())
        .execute(domain.ctx.db.pool())
        .await
        .expect("updated");
        let refused = answer_authentication(&domain.ctx, &domain.app.id, id.as_str(), &code)
            .await
            .expect_err("the stored policy requires biometrics");
        assert_eq!(refused.code(), Some(ErrorCode::PolicyDenied), "{engine:?}");
        assert_eq!(state_of(&domain, &id).await, AuthenticationState::Pending);
        assert_eq!(failures_of(&domain, &hana).await, 0, "{engine:?}");
        assert_eq!(endings_announced(&id), 0);

        policy_requiring(
            &domain,
            json!({"action": "require", "methods": ["mobile_push", "oath"]}),
        )
        .await;
        let allowed = domain.ask(&hana, json!({"use_code": true})).await;
        assert!(allowed.otp_accepted, "{engine:?}");
        let approved = answer_authentication(
            &domain.ctx,
            &domain.app.id,
            allowed.authentication_id.as_str(),
            &code,
        )
        .await
        .expect("the code was not spent, and its source is allowed");
        assert_eq!(approved.state, AuthenticationState::Approved);
    }
}

/// A `require` that names the app's own passcodes (`mobile_passcode`) and not `oath` refuses a
/// registered token's code with `policy_denied`, counting and spending nothing; naming `oath`,
/// it is accepted.
#[tokio::test]
async fn a_require_accepts_a_code_only_from_a_source_it_names() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (ivan, _phone) = domain.user_with_device("ivan").await;
        authenticator_app(&domain, &ivan).await;
        policy_requiring(
            &domain,
            json!({"action": "require", "methods": ["mobile_push", "mobile_passcode"]}),
        )
        .await;
        let created = domain.ask(&ivan, json!({"use_code": true})).await;
        let id = created.authentication_id.clone();
        let code = code_now(&domain);
        let refused = answer_authentication(&domain.ctx, &domain.app.id, id.as_str(), &code)
            .await
            .expect_err("a token's code is not the app's passcode");
        assert_eq!(refused.code(), Some(ErrorCode::PolicyDenied), "{engine:?}");
        assert_eq!(state_of(&domain, &id).await, AuthenticationState::Pending);
        assert_eq!(failures_of(&domain, &ivan).await, 0, "{engine:?}");

        policy_requiring(
            &domain,
            json!({"action": "require", "methods": ["mobile_push", "oath"]}),
        )
        .await;
        let allowed = domain.ask(&ivan, json!({"use_code": true})).await;
        let approved = answer_authentication(
            &domain.ctx,
            &domain.app.id,
            allowed.authentication_id.as_str(),
            &code,
        )
        .await
        .expect("approved");
        assert_eq!(approved.state, AuthenticationState::Approved, "{engine:?}");
    }
}
