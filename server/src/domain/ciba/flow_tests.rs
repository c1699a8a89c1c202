//! CIBA in poll mode called directly, without HTTP: the backchannel request, the device's
//! answer and the token request, on a real database (SQLite, and PostgreSQL when
//! `DATABASE_URL` names one), with a clock the tests move instead of sleeping.

use std::time::Duration;

use tessera_protocol::authentication::{AuthenticationKind, Decision};
use tessera_protocol::ciba::{
    BackchannelAcknowledgement, CIBA_GRANT_TYPE, ClientAuthMethod, DeliveryMode,
    RegisterCibaClient, TokenResponse,
};

use super::OAuthCode;
use super::client_auth::{BasicCredentials, Form};
use super::error::OAuthError;
use crate::clock::Clock;
use crate::domain::testing::{TestDevice, TestDomain, joined, yields};
use crate::store::oidc_tokens::{self, Issued, IssuedToken, Spend};

/// A relying party's credentials (poll mode, `client_secret_basic`).
pub(crate) struct Client {
    pub(super) id: String,
    secret: String,
}

impl Client {
    /// A relying party registered in the test application.
    pub(crate) async fn registered(domain: &TestDomain) -> Self {
        let (id, secret) = domain
            .client(RegisterCibaClient::new(
                "Shop",
                DeliveryMode::Poll,
                ClientAuthMethod::ClientSecretBasic,
            ))
            .await;
        Self { id, secret }
    }

    /// Its credentials, as sent in the `Authorization` header.
    pub(super) fn basic(&self) -> Option<BasicCredentials> {
        Some(BasicCredentials {
            id: self.id.clone(),
            secret: self.secret.clone(),
        })
    }

    /// A backchannel authentication request for `user`.
    pub(crate) async fn ask(
        &self,
        domain: &TestDomain,
        user: &str,
    ) -> Result<BackchannelAcknowledgement, OAuthError> {
        let form = form(&[("scope", "openid"), ("login_hint", user)]);
        super::backchannel::authenticate(&domain.ctx, self.basic(), &form).await
    }

    /// A token request for `auth_req_id`.
    async fn token(
        &self,
        domain: &TestDomain,
        auth_req_id: &str,
    ) -> Result<TokenResponse, OAuthError> {
        let form = form(&[
            ("grant_type", CIBA_GRANT_TYPE),
            ("auth_req_id", auth_req_id),
        ]);
        super::token::exchange(&domain.ctx, self.basic(), &form).await
    }
}

/// The form of `pairs`.
pub(super) fn form(pairs: &[(&str, &str)]) -> Form {
    Form::new(
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
            .collect(),
    )
    .expect("a form")
}

fn code_of<T: std::fmt::Debug>(result: Result<T, OAuthError>) -> OAuthCode {
    result.expect_err("refused").code
}

/// The device pulls the CIBA request and answers it with `decision` after biometrics.
async fn device_answers(domain: &TestDomain, device: &TestDevice, decision: Decision) {
    let request = domain.pull(device).await.remove(0);
    assert_eq!(request.kind, AuthenticationKind::Ciba);
    assert!(request.require_user_verification);
    domain
        .answered_by(device, &request, decision)
        .await
        .expect("recorded");
}

#[tokio::test]
async fn an_approved_request_gets_its_tokens_once() {
    for domain in TestDomain::each_engine().await {
        let (alice, phone) = domain.user_with_device("alice").await;
        let shop = Client::registered(&domain).await;
        let ack = shop
            .ask(&domain, alice.as_str())
            .await
            .expect("acknowledged");
        assert!(ack.expires_in > 0 && ack.interval > 0);
        assert_eq!(
            code_of(shop.token(&domain, &ack.auth_req_id).await),
            OAuthCode::AuthorizationPending
        );

        device_answers(&domain, &phone, Decision::Approve).await;
        domain.clock.advance(Duration::from_secs(ack.interval));
        let tokens = shop.token(&domain, &ack.auth_req_id).await.expect("tokens");
        assert_eq!(tokens.token_type, "Bearer");
        assert!(!tokens.id_token.is_empty() && !tokens.access_token.is_empty());

        // The same auth_req_id again: no second set of tokens.
        domain.clock.advance(Duration::from_secs(ack.interval));
        assert_eq!(
            code_of(shop.token(&domain, &ack.auth_req_id).await),
            OAuthCode::InvalidGrant
        );
        // Another client cannot redeem it either.
        let other = Client::registered(&domain).await;
        assert_eq!(
            code_of(other.token(&domain, &ack.auth_req_id).await),
            OAuthCode::InvalidGrant
        );
    }
}

/// Two guards stand between parallel token requests and a second set of tokens: the poll
/// interval, taken by one conditional update (the other request is told to slow down), and the
/// single-use mark of the `auth_req_id`. This shows the property both keep; the mark alone is
/// tested below (`an_auth_req_id_is_marked_exchanged_once`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_token_requests_at_once_get_one_set_of_tokens() {
    for domain in TestDomain::each_engine().await {
        let (bob, phone) = domain.user_with_device("bob").await;
        let shop = std::sync::Arc::new(Client::registered(&domain).await);
        for _ in 0..4 {
            let ack = shop.ask(&domain, bob.as_str()).await.expect("acknowledged");
            device_answers(&domain, &phone, Decision::Approve).await;
            domain.clock.advance(Duration::from_secs(ack.interval));
            let redeem = || {
                let (ctx, shop, id) = (domain.ctx.clone(), shop.clone(), ack.auth_req_id.clone());
                tokio::spawn(async move {
                    let form = form(&[("grant_type", CIBA_GRANT_TYPE), ("auth_req_id", &id)]);
                    super::token::exchange(&ctx, shop.basic(), &form).await
                })
            };
            let (first, second) = tokio::join!(redeem(), redeem());
            let results = [first.expect("ran"), second.expect("ran")];
            assert_eq!(
                results.iter().filter(|r| r.is_ok()).count(),
                1,
                "{:?}",
                results
                    .iter()
                    .map(|r| r.as_ref().err().map(|e| e.code))
                    .collect::<Vec<_>>()
            );
        }
    }
}

#[tokio::test]
async fn a_denied_request_is_access_denied_and_an_unanswered_one_expires_by_the_clock() {
    for domain in TestDomain::each_engine().await {
        let (carol, phone) = domain.user_with_device("carol").await;
        let shop = Client::registered(&domain).await;

        let denied = shop
            .ask(&domain, carol.as_str())
            .await
            .expect("acknowledged");
        device_answers(&domain, &phone, Decision::Deny).await;
        domain.clock.advance(Duration::from_secs(denied.interval));
        assert_eq!(
            code_of(shop.token(&domain, &denied.auth_req_id).await),
            OAuthCode::AccessDenied
        );

        let unanswered = shop
            .ask(&domain, carol.as_str())
            .await
            .expect("acknowledged");
        domain
            .clock
            .advance(Duration::from_secs(unanswered.expires_in + 1));
        assert_eq!(
            code_of(shop.token(&domain, &unanswered.auth_req_id).await),
            OAuthCode::ExpiredToken
        );
    }
}

/// Past its `expires_at`, an `auth_req_id` not exchanged yet is `expired_token` whatever its
/// request's state (CIBA Core §11: the client makes a new request), an approved one too, and
/// no tokens are stored for it; one exchanged before stays `invalid_grant`. Before, an
/// approved request's tokens were issued until retention purged it.
#[tokio::test]
async fn past_its_expiry_an_auth_req_id_not_exchanged_is_expired_token_whatever_its_state() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (hugo, phone) = domain.user_with_device("hugo").await;
        let shop = Client::registered(&domain).await;
        // Approved, not exchanged: expired once its expiry has come.
        let approved = shop
            .ask(&domain, hugo.as_str())
            .await
            .expect("acknowledged");
        device_answers(&domain, &phone, Decision::Approve).await;
        // Exchanged before its expiry.
        let exchanged = shop
            .ask(&domain, hugo.as_str())
            .await
            .expect("acknowledged");
        device_answers(&domain, &phone, Decision::Approve).await;
        shop.token(&domain, &exchanged.auth_req_id)
            .await
            .expect("tokens");
        // Denied: no longer access_denied once expired.
        let denied = shop
            .ask(&domain, hugo.as_str())
            .await
            .expect("acknowledged");
        device_answers(&domain, &phone, Decision::Deny).await;

        domain
            .clock
            .advance(Duration::from_secs(approved.expires_in));
        for (ack, expected) in [
            (&approved, OAuthCode::ExpiredToken),
            (&denied, OAuthCode::ExpiredToken),
            (&exchanged, OAuthCode::InvalidGrant),
        ] {
            assert_eq!(
                code_of(shop.token(&domain, &ack.auth_req_id).await),
                expected,
                "{engine:?}"
            );
        }
        assert_eq!(
            domain.tokens_of(&hugo).await,
            1,
            "{engine:?}: only the exchange before the expiry stored tokens"
        );
        let stored = crate::store::ciba::request(&domain.ctx.db, &approved.auth_req_id)
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(stored.tokens_issued_at, None, "{engine:?}");
    }
}

/// The expiry is checked by the write that issues the tokens, with the single use: an exchange
/// that read its request before the expiry and writes after it stores nothing
/// (`Issued::Expired`), and one spent before stays spent past its expiry.
#[tokio::test]
async fn the_write_that_issues_a_ciba_requests_tokens_checks_its_expiry() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (ines, phone) = domain.user_with_device("ines").await;
        let shop = Client::registered(&domain).await;
        let issue = |auth_req_id: &str, at: i64| {
            let (db, app, user) = (domain.ctx.db.clone(), domain.app.id.clone(), ines.clone());
            let (id, row) = (auth_req_id.to_string(), access_token_of(&ines, &shop.id));
            async move {
                let tokens = vec![(format!("token-{}", rand::random::<u64>()), row)];
                let spend = Spend::CibaRequest { auth_req_id: &id };
                oidc_tokens::issue(&db, &app, &user, spend, &tokens, at)
                    .await
                    .expect("issued or not")
            }
        };
        let ack = shop
            .ask(&domain, ines.as_str())
            .await
            .expect("acknowledged");
        device_answers(&domain, &phone, Decision::Approve).await;
        let expires_at = crate::store::ciba::request(&domain.ctx.db, &ack.auth_req_id)
            .await
            .expect("read")
            .expect("stored")
            .expires_at;
        assert_eq!(
            issue(&ack.auth_req_id, expires_at).await,
            Issued::Expired,
            "{engine:?}: at its expiry"
        );
        assert_eq!(domain.tokens_of(&ines).await, 0, "{engine:?}");
        // Spent a second before its expiry, then spent past it.
        assert_eq!(
            issue(&ack.auth_req_id, expires_at - 1).await,
            Issued::Stored,
            "{engine:?}"
        );
        assert_eq!(
            issue(&ack.auth_req_id, expires_at + 1).await,
            Issued::Spent,
            "{engine:?}"
        );
        assert_eq!(domain.tokens_of(&ines).await, 1, "{engine:?}");
    }
}

#[tokio::test]
async fn polling_faster_than_the_interval_is_told_to_slow_down() {
    for domain in TestDomain::each_engine().await {
        let (dave, _phone) = domain.user_with_device("dave").await;
        let shop = Client::registered(&domain).await;
        let ack = shop
            .ask(&domain, dave.as_str())
            .await
            .expect("acknowledged");
        assert_eq!(
            code_of(shop.token(&domain, &ack.auth_req_id).await),
            OAuthCode::AuthorizationPending
        );
        assert_eq!(
            code_of(shop.token(&domain, &ack.auth_req_id).await),
            OAuthCode::SlowDown
        );
        domain.clock.advance(Duration::from_secs(ack.interval + 5));
        assert_eq!(
            code_of(shop.token(&domain, &ack.auth_req_id).await),
            OAuthCode::AuthorizationPending
        );
    }
}

#[tokio::test]
async fn a_wrong_secret_or_an_unknown_user_gets_no_request() {
    for domain in TestDomain::each_engine().await {
        let (erin, _phone) = domain.user_with_device("erin").await;
        let shop = Client::registered(&domain).await;
        let impostor = Client {
            id: shop.id.clone(),
            secret: "not-the-secret-not-the-secret-00".into(),
        };
        assert_eq!(
            code_of(impostor.ask(&domain, erin.as_str()).await),
            OAuthCode::InvalidClient
        );
        assert_eq!(
            code_of(shop.ask(&domain, "nobody").await),
            OAuthCode::UnknownUserId
        );
        assert!(
            domain.pushes.all().is_empty(),
            "no device was asked for a refused request"
        );
    }
}

/// An access token row for `user`, to issue in a test.
fn access_token_of(user: &tessera_protocol::ids::UserId, client: &str) -> IssuedToken {
    IssuedToken {
        kind: "access".into(),
        client_id: client.into(),
        user_id: user.as_str().into(),
        scope: "openid".into(),
        acr: "acr".into(),
        amr: "[]".into(),
        auth_time: 0,
        expires_at: i64::MAX / 2,
        used_at: None,
        family_id: Some(format!("family-{}", rand::random::<u64>())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_auth_req_id_is_marked_exchanged_once() {
    for domain in TestDomain::each_engine().await {
        let (frank, _phone) = domain.user_with_device("frank").await;
        let shop = Client::registered(&domain).await;
        let ack = shop
            .ask(&domain, frank.as_str())
            .await
            .expect("acknowledged");
        let now = domain.clock.now();
        let issue = |copy: usize| {
            let (db, app, user) = (domain.ctx.db.clone(), domain.app.id.clone(), frank.clone());
            let (id, client) = (ack.auth_req_id.clone(), shop.id.clone());
            async move {
                let digest = format!("copy-{copy}-{}", rand::random::<u64>());
                let tokens = vec![(digest, access_token_of(&user, &client))];
                let spend = Spend::CibaRequest { auth_req_id: &id };
                oidc_tokens::issue(&db, &app, &user, spend, &tokens, now).await
            }
        };
        let tasks: Vec<_> = (0..8).map(|copy| tokio::spawn(issue(copy))).collect();
        let issued = joined(tasks)
            .await
            .into_iter()
            .map(|issued| issued.expect("issued or not"))
            .collect::<Vec<_>>();
        assert_eq!(
            issued.iter().filter(|i| **i == Issued::Stored).count(),
            1,
            "one of the parallel exchanges wins: {issued:?}"
        );
        assert!(
            issued
                .iter()
                .all(|i| matches!(i, Issued::Stored | Issued::Spent))
        );
        assert_eq!(
            issue(8).await.expect("checked"),
            Issued::Spent,
            "and none after it"
        );
        assert_eq!(domain.tokens_of(&frank).await, 1, "losers stored nothing");
    }
}

#[tokio::test]
async fn one_id_token_signing_key_signs_at_a_time() {
    for domain in TestDomain::each_engine().await {
        let now = domain.clock.now();
        // The first read of the key set makes the first key (or finds the database's).
        let published = super::keys::jwks(&domain.ctx.db, now, 3600)
            .await
            .expect("the key set");
        assert!(!published["keys"].as_array().expect("keys").is_empty());
        // A second signing key beside it, as two first requests at once would each add one, is
        // refused by the store: the one that came second uses the first's.
        let second = sqlx::query(
            "INSERT INTO oidc_signing_keys (kid, private_key, public_jwk, created_at) \
             VALUES ($1, $2, '{}', $3)",
        )
        .bind(format!("second-{}", rand::random::<u64>()))
        .bind(vec![0u8; 8])
        .bind(now)
        .execute(domain.ctx.db.writer())
        .await;
        assert!(second.is_err(), "a second signing key is refused");
        let signing = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM oidc_signing_keys WHERE retired_at IS NULL",
        )
        .fetch_one(domain.ctx.db.pool())
        .await
        .expect("counted");
        assert_eq!(signing, 1, "one key signs");
    }
}

/// The digest user codes were stored as before keyed digests (salted SHA-256, base64url), as an
/// older server wrote it.
fn legacy_digest(salt: &str, code: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(format!("{salt}\n{code}").as_bytes()))
}

/// The user's stored user code: salt, digest and failures.
async fn stored_code(
    domain: &TestDomain,
    user: &tessera_protocol::ids::UserId,
) -> Option<(String, String, i64)> {
    crate::store::ciba::user_code(&domain.ctx.db, &domain.app.id, user)
        .await
        .expect("read")
}

/// Whether `code` is `user`'s user code now.
async fn code_is(domain: &TestDomain, user: &tessera_protocol::ids::UserId, code: &str) -> bool {
    let (salt, digest, _) = stored_code(domain, user).await.expect("a code");
    super::clients::user_code_matches(&domain.ctx, &domain.app.id, user, &salt, &digest, code)
        .await
        .expect("compared")
}

/// A right user code stored under the legacy digest is re-stored under the keyed one (its
/// failures as they were), but only while the digest is the one read: when the customer set a
/// new code between the read and the upgrade, the new code stays and the old one no longer
/// works (an unconditional write would put the old code back).
#[tokio::test]
async fn a_legacy_user_code_upgrade_never_writes_over_a_new_code() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (app, db) = (&domain.app.id, &domain.ctx.db);

        // Nothing raced: the digest is upgraded, the failures left as they were.
        let olga = domain.user("olga").await;
        assert!(
            crate::store::ciba::set_user_code(db, app, &olga, "s1", &legacy_digest("s1", "1234"))
                .await
                .expect("stored")
        );
        let (salt, digest) = crate::store::ciba::take_user_code_attempt(db, app, &olga, 5)
            .await
            .expect("taken")
            .expect("an attempt");
        assert!(
            super::clients::user_code_matches(&domain.ctx, app, &olga, &salt, &digest, "1234")
                .await
                .expect("compared")
        );
        let (_, upgraded, failures) = stored_code(&domain, &olga).await.expect("a code");
        assert!(upgraded.starts_with("mac1:"), "{engine:?}: {upgraded}");
        assert_eq!(failures, 1, "{engine:?}: the upgrade leaves the failures");
        assert!(code_is(&domain, &olga, "1234").await, "{engine:?}");

        // The customer sets a new code after the legacy digest was read, before the upgrade.
        let pete = domain.user("pete").await;
        assert!(
            crate::store::ciba::set_user_code(db, app, &pete, "s2", &legacy_digest("s2", "1234"))
                .await
                .expect("stored")
        );
        let (salt, digest) = crate::store::ciba::take_user_code_attempt(db, app, &pete, 5)
            .await
            .expect("taken")
            .expect("an attempt");
        super::clients::set_user_code(&domain.ctx, app, &pete, "5678")
            .await
            .expect("the new code");
        // The attempt compares the code with the digest it read: right, as it was.
        assert!(
            super::clients::user_code_matches(&domain.ctx, app, &pete, &salt, &digest, "1234")
                .await
                .expect("compared")
        );
        assert!(
            code_is(&domain, &pete, "5678").await,
            "{engine:?}: the new code stays"
        );
        assert!(
            !code_is(&domain, &pete, "1234").await,
            "{engine:?}: the old code is not written back"
        );
        assert_eq!(
            stored_code(&domain, &pete).await.map(|(_, _, f)| f),
            Some(0),
            "{engine:?}: the new code's failures"
        );
    }
}

/// A user code set while the user is being deleted is refused as for an unknown user, and no
/// code is left behind for a later user of the same id: the user is looked up inside the
/// write that stores the code, under the user's row lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_code_set_during_the_users_deletion_is_not_left_behind() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let user = domain.user("quinn").await;
        let set = crate::domain::testing::racing_a_deletion(&domain, &user, {
            let (ctx, app, user) = (domain.ctx.clone(), domain.app.id.clone(), user.clone());
            async move {
                super::clients::set_user_code(&ctx, &app, &user, "2468")
                    .await
                    .map_err(|e| e.code())
            }
        })
        .await;
        assert_eq!(
            (set, stored_code(&domain, &user).await.is_some()),
            (
                Err(Some(tessera_protocol::error::ErrorCode::UserNotFound)),
                false
            ),
            "{engine:?}: refused, and no code left"
        );
    }
}

/// A refresh token of `user` for `shop`'s grant, stored as a grant would have left it.
async fn refresh_token_of(
    domain: &TestDomain,
    shop: &Client,
    user: &tessera_protocol::ids::UserId,
) -> String {
    let token = format!("refresh-{}", rand::random::<u64>());
    let row = IssuedToken {
        kind: "refresh".into(),
        scope: "openid offline_access".into(),
        ..access_token_of(user, &shop.id)
    };
    let digest = crate::store::applications::api_key_digest(&token);
    oidc_tokens::insert_token(&domain.ctx.db, &digest, &row, domain.clock.now())
        .await
        .expect("stored");
    token
}

/// Rounds of a race whose window is a few statements wide.
const RACE_ROUNDS: u64 = 24;

/// Unpairing a user's last device revokes their tokens; a refresh racing it must not leave
/// fresh ones behind. The rotation looks for the device and stores its tokens under the user's
/// lock, and the unpairing revokes in its own write under that lock: the rotation comes first
/// (its tokens are revoked) or finds no device.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_racing_the_unpairing_of_the_last_device_leaves_no_tokens() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let shop = Client::registered(&domain).await;
        for round in 0..RACE_ROUNDS {
            let (user, phone) = domain.user_with_device(&format!("rita-{round}")).await;
            let token = refresh_token_of(&domain, &shop, &user).await;
            let refresh = tokio::spawn({
                let (ctx, basic) = (domain.ctx.clone(), shop.basic());
                async move {
                    let form = form(&[("grant_type", "refresh_token"), ("refresh_token", &token)]);
                    super::token::exchange(&ctx, basic, &form).await
                }
            });
            let unpairing =
                domain.unpairing_after(&user, &phone.enrollment.enrollment_id, yields(round % 4));
            let (refreshed, unpairing) = tokio::join!(refresh, unpairing);
            unpairing.expect("the unpairing ran");
            if let Err(e) = refreshed.expect("the refresh ran") {
                assert_eq!(e.code, OAuthCode::InvalidGrant, "{engine:?}, round {round}");
            }
            assert_eq!(
                domain.tokens_of(&user).await,
                0,
                "{engine:?}, round {round}: tokens outlived the last device"
            );
        }
    }
}

/// The same for an approved CIBA request's token request racing the unpairing: the tokens are
/// issued before it (and revoked with it), or refused `access_denied`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ciba_token_request_racing_the_unpairing_of_the_last_device_leaves_no_tokens() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let shop = std::sync::Arc::new(Client::registered(&domain).await);
        let (mut issued, mut refused) = (0, 0);
        for round in 0..RACE_ROUNDS {
            let (user, phone) = domain.user_with_device(&format!("sam-{round}")).await;
            let ack = shop
                .ask(&domain, user.as_str())
                .await
                .expect("acknowledged");
            device_answers(&domain, &phone, Decision::Approve).await;
            domain.clock.advance(Duration::from_secs(ack.interval));
            let exchange = tokio::spawn({
                let (ctx, shop, id) = (domain.ctx.clone(), shop.clone(), ack.auth_req_id.clone());
                async move {
                    let form = form(&[("grant_type", CIBA_GRANT_TYPE), ("auth_req_id", &id)]);
                    super::token::exchange(&ctx, shop.basic(), &form).await
                }
            });
            let unpairing =
                domain.unpairing_after(&user, &phone.enrollment.enrollment_id, yields(round % 4));
            let (exchanged, unpairing) = tokio::join!(exchange, unpairing);
            unpairing.expect("the unpairing ran");
            match exchanged.expect("the exchange ran") {
                Ok(_) => issued += 1,
                Err(e) => {
                    assert_eq!(e.code, OAuthCode::AccessDenied, "{engine:?}, round {round}");
                    refused += 1;
                }
            }
            assert_eq!(
                domain.tokens_of(&user).await,
                0,
                "{engine:?}, round {round}: tokens outlived the last device"
            );
        }
        println!("{engine:?}: {issued} issued before the unpairing, {refused} refused after it");
    }
}

/// Tokens issued while the user is being deleted do not outlive them: a refresh and an
/// authorization code's redemption are refused, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_issued_while_the_user_is_deleted_do_not_outlive_them() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let shop = Client::registered(&domain).await;
        for (name, code) in [("tess", false), ("uma", true)] {
            let (user, _phone) = domain.user_with_device(name).await;
            let refresh = refresh_token_of(&domain, &shop, &user).await;
            let issued = crate::domain::testing::racing_a_deletion(&domain, &user, {
                let (db, app, user) = (domain.ctx.db.clone(), domain.app.id.clone(), user.clone());
                let row = access_token_of(&user, &shop.id);
                async move {
                    let digest = crate::store::applications::api_key_digest(&refresh);
                    // No code row is needed to show the order: the user is looked up first.
                    let spend = if code {
                        Spend::Code { digest: "code" }
                    } else {
                        Spend::RefreshToken { digest: &digest }
                    };
                    let tokens = vec![(format!("successor-{}", rand::random::<u64>()), row)];
                    oidc_tokens::issue(&db, &app, &user, spend, &tokens, 0)
                        .await
                        .expect("issued or not")
                }
            })
            .await;
            assert_eq!(issued, Issued::NoUser, "{engine:?}, code {code}");
            assert_eq!(domain.tokens_of(&user).await, 0, "{engine:?}: nothing left");
        }
    }
}

/// A refresh token exchanged by `shop` at the token endpoint: the grant's answer.
async fn refreshed(
    ctx: crate::domain::Ctx,
    basic: Option<BasicCredentials>,
    token: String,
) -> Result<TokenResponse, OAuthError> {
    let form = form(&[("grant_type", "refresh_token"), ("refresh_token", &token)]);
    super::token::exchange(&ctx, basic, &form).await
}

/// The tokens of `family` that would still work: access tokens, and refresh tokens not used.
async fn working_tokens_of_family(domain: &TestDomain, family: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM oidc_tokens WHERE family_id = $1 \
         AND (kind = 'access' OR used_at IS NULL)",
    )
    .bind(family)
    .fetch_one(domain.ctx.db.pool())
    .await
    .expect("counted")
}

/// Yields to the runtime until `pause` has passed: a pause finer than a timer's millisecond.
async fn yields_for(pause: Duration) {
    let until = std::time::Instant::now() + pause;
    while std::time::Instant::now() < until {
        tokio::task::yield_now().await;
    }
}

/// A used refresh token presented while the family's current one is being rotated revokes the
/// whole family, the rotation's successors too. The revocation locks the user as the rotation
/// does, so it waits for a rotation under way to commit and then deletes its tokens, or comes
/// first and the rotation finds its refresh token gone; a bare `DELETE` on PostgreSQL would
/// skip the successors a rotation had inserted but not committed when it began.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_used_refresh_token_presented_during_a_rotation_revokes_the_successors_too() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let shop = Client::registered(&domain).await;
        let (mut rotated_first, mut revoked_first) = (0, 0);
        for round in 0..RACE_ROUNDS {
            let (user, _phone) = domain.user_with_device(&format!("vera-{round}")).await;
            let first = refresh_token_of(&domain, &shop, &user).await;
            let family = oidc_tokens::token(
                &domain.ctx.db,
                &crate::store::applications::api_key_digest(&first),
            )
            .await
            .expect("read")
            .and_then(|t| t.family_id)
            .expect("a family");
            // The first rotation, timed: the replay below starts at a point within the length
            // of the next one, later each round, to land in the rotation's write in some.
            let started = std::time::Instant::now();
            let current = refreshed(domain.ctx.clone(), shop.basic(), first.clone())
                .await
                .expect("rotated")
                .refresh_token
                .expect("a successor");
            let pause = started.elapsed() * (12 + (round as u32 % 12)) / 24;
            let rotation = tokio::spawn(refreshed(domain.ctx.clone(), shop.basic(), current));
            let replay = tokio::spawn({
                let (ctx, basic) = (domain.ctx.clone(), shop.basic());
                async move {
                    yields_for(pause).await;
                    refreshed(ctx, basic, first).await
                }
            });
            let (rotation, replay) = tokio::join!(rotation, replay);
            assert_eq!(
                code_of(replay.expect("the replay ran")),
                OAuthCode::InvalidGrant,
                "{engine:?}, round {round}"
            );
            match rotation.expect("the rotation ran") {
                Ok(_) => rotated_first += 1,
                Err(e) => {
                    assert_eq!(e.code, OAuthCode::InvalidGrant, "{engine:?}, round {round}");
                    revoked_first += 1;
                }
            }
            assert_eq!(
                working_tokens_of_family(&domain, &family).await,
                0,
                "{engine:?}, round {round}: a token of the revoked family still works"
            );
        }
        println!(
            "{engine:?}: {rotated_first} rotated before the revocation, {revoked_first} refused after it"
        );
    }
}

/// The `acr` of the ID token in `tokens`.
async fn acr_of(domain: &TestDomain, tokens: &TokenResponse) -> String {
    let ttl = i64::from(domain.ctx.config.oidc_token_ttl);
    let claims = super::keys::verify_own(&domain.ctx.db, &tokens.id_token, domain.clock.now(), ttl)
        .await
        .expect("verified")
        .expect("signed by a published key");
    claims["acr"].as_str().expect("an acr").to_string()
}

/// A CIBA request the user's bypass ends is stored only while the bypass stands, checked in the
/// write that admits it (`store::authentications::AdmissionCondition::BypassInForce`). Here the
/// customer's clearing is under way (deleted, not committed) when the request reads the bypass,
/// so the read still finds it; the admission waits for the clearing (PostgreSQL: the bypass's
/// row is read `FOR KEY SHARE`; SQLite: the clearing holds the one writer) and then finds no
/// bypass, and the request asks the device as an ordinary one, as it would have had the
/// clearing come first. Before, it was stored approved by the bypass it had read, after the
/// clearing was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bypass_cleared_as_a_ciba_request_reads_it_leaves_the_request_to_the_device() {
    use crate::domain::bypass::ACR_BYPASS;
    use tessera_protocol::authentication::AuthenticationState;
    use tessera_protocol::ciba::ACR_MOBILE_USER_VERIFIED;
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (gina, phone) = domain.user_with_device("gina").await;
        let shop = Client::registered(&domain).await;
        let for_an_hour = tessera_protocol::bypass::SetBypassRequest {
            duration_seconds: Some(3600),
            until: None,
            reason: "lost phone".into(),
        };
        crate::domain::bypass::grant(&domain.ctx, &domain.app.id, &gina, &for_an_hour)
            .await
            .expect("granted");
        // While the bypass stands: approved at once, without the device.
        let bypassed = shop
            .ask(&domain, gina.as_str())
            .await
            .expect("acknowledged");
        let tokens = shop
            .token(&domain, &bypassed.auth_req_id)
            .await
            .expect("tokens at once");
        assert_eq!(acr_of(&domain, &tokens).await, ACR_BYPASS, "{engine:?}");
        assert!(domain.pull(&phone).await.is_empty(), "{engine:?}");

        // The clearing, under way as the next request reads the bypass.
        let clearing = domain.clearing_bypass_in_flight(&gina).await;
        let request = tokio::spawn({
            let (ctx, basic, user) = (domain.ctx.clone(), shop.basic(), gina.to_string());
            async move {
                let form = form(&[("scope", "openid"), ("login_hint", &user)]);
                super::backchannel::authenticate(&ctx, basic, &form).await
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let waited = !request.is_finished();
        clearing.commit().await.expect("cleared");
        let ack = request.await.expect("ran").expect("acknowledged");

        // An ordinary request: pending, its device asked, its acr the device's.
        let stored = crate::store::ciba::request(&domain.ctx.db, &ack.auth_req_id)
            .await
            .expect("read")
            .expect("stored");
        let record = crate::store::authentications::get(
            &domain.ctx.db,
            &stored.authentication_id.parse().expect("an id"),
            domain.clock.now(),
        )
        .await
        .expect("read")
        .expect("stored");
        assert_eq!(
            (record.state, stored.acr.as_str()),
            (AuthenticationState::Pending, ACR_MOBILE_USER_VERIFIED),
            "{engine:?}: the request was stored bypassed after the bypass's clearing"
        );
        assert!(
            !crate::domain::bypass::is_bypass(record.attributes.as_deref()),
            "{engine:?}"
        );
        assert_eq!(
            code_of(shop.token(&domain, &ack.auth_req_id).await),
            OAuthCode::AuthorizationPending,
            "{engine:?}"
        );
        assert!(
            waited,
            "{engine:?}: the admission waits for the clearing under way"
        );
        domain.clock.advance(Duration::from_secs(ack.interval));
        device_answers(&domain, &phone, Decision::Approve).await;
        let tokens = shop.token(&domain, &ack.auth_req_id).await.expect("tokens");
        assert_eq!(
            acr_of(&domain, &tokens).await,
            ACR_MOBILE_USER_VERIFIED,
            "{engine:?}"
        );
    }
}

/// A client that authenticated with its secret is remembered with its application, and its
/// next requests read their user beside the client's own read. Those reads count only for the
/// client's own application: under a hint naming another, the request reads its user again
/// and is asked of the right user's phone. A wrong secret is refused, hint or not.
#[tokio::test]
async fn a_client_s_hint_serves_only_its_own_application() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (alice, phone) = domain.user_with_device("alice").await;
        let shop = Client::registered(&domain).await;
        let hints = &domain.ctx.ciba_client_hints;
        assert_eq!(hints.application_for(&shop.id, &shop.secret), None);
        shop.ask(&domain, alice.as_str())
            .await
            .expect("acknowledged");
        assert_eq!(
            hints.application_for(&shop.id, &shop.secret),
            Some(domain.app.id.clone()),
            "{engine:?}"
        );
        // Under its hint.
        shop.ask(&domain, alice.as_str())
            .await
            .expect("acknowledged");
        let wrong = Client {
            id: shop.id.clone(),
            secret: "not the secret".into(),
        };
        assert_eq!(
            code_of(wrong.ask(&domain, alice.as_str()).await),
            OAuthCode::InvalidClient,
            "{engine:?}"
        );
        // A hint naming an application that is not the client's (nothing in it is read as the
        // request's).
        let row = crate::store::ciba::client(&domain.ctx.db, &shop.id)
            .await
            .expect("read")
            .expect("the client");
        let elsewhere = crate::store::ciba::CibaClient {
            application_id: tessera_protocol::ids::ApplicationId::generate(),
            ..row
        };
        hints.remember(&elsewhere);
        shop.ask(&domain, alice.as_str())
            .await
            .expect("acknowledged");
        let asked = domain.pull(&phone).await;
        assert_eq!(asked.len(), 3, "{engine:?}");
        assert!(
            asked.iter().all(|r| r.kind == AuthenticationKind::Ciba),
            "{engine:?}"
        );
        // The client's own read put its application back.
        assert_eq!(
            hints.application_for(&shop.id, &shop.secret),
            Some(domain.app.id.clone()),
            "{engine:?}"
        );
    }
}

/// A hint in the form of the application's subject names the subject's user, even when
/// another user's id is that very text (user ids may contain `:`): a user created as
/// `{application}:bob` does not receive the requests sent for Bob's subject, and is reached
/// by their own subject only.
#[tokio::test]
async fn a_subject_hint_names_its_user_never_a_user_whose_id_is_that_text() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (bob, bobs_phone) = domain.user_with_device("bob").await;
        let bobs_subject = super::subject(&domain.app.id, bob.as_str());
        let (impostor, impostors_phone) = domain.user_with_device(&bobs_subject).await;
        assert_eq!(impostor.as_str(), bobs_subject, "{engine:?}");
        let shop = Client::registered(&domain).await;

        shop.ask(&domain, &bobs_subject)
            .await
            .expect("acknowledged");
        assert_eq!(domain.pull(&bobs_phone).await.len(), 1, "{engine:?}");
        assert!(
            domain.pull(&impostors_phone).await.is_empty(),
            "{engine:?}: the request went to the user whose id is Bob's subject"
        );

        let impostors_subject = super::subject(&domain.app.id, impostor.as_str());
        shop.ask(&domain, &impostors_subject)
            .await
            .expect("acknowledged");
        assert_eq!(domain.pull(&impostors_phone).await.len(), 1, "{engine:?}");
        assert_eq!(domain.pull(&bobs_phone).await.len(), 1, "{engine:?}");
    }
}
