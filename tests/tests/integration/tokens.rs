//! End to end: what an OpenID subject names and how long CIBA tokens live. `iss` + `sub` name one
//! person (the same user id in two applications gets two subjects, which the hints accept
//! back); access and refresh tokens die with the user's last device and with the user; a
//! refresh token presented twice (also twice at once) revokes its whole family. On SQLite and
//! PostgreSQL.

use serde_json::{Value, json};
use tessera_examples::customer::CustomerApi;
use tessera_examples::relying_party::{ClientCredentials, RelyingParty, RpError};
use tessera_protocol::ciba::{ClientAuthMethod, DeliveryMode, RegisterCibaClient, TokenResponse};
use tessera_tests::{Backend, TestDevice, TestServer, on_each_backend};

on_each_backend! {
    the_same_user_id_in_two_applications_gets_two_subjects => subjects_per_application;
    tokens_are_revoked_when_the_last_device_is_unpaired => revoked_on_last_unpair;
    tokens_are_revoked_when_the_device_unpairs_itself => revoked_on_self_unpair;
    tokens_are_revoked_when_the_user_is_removed => revoked_on_user_removal;
    a_reused_refresh_token_revokes_its_family => reuse_revokes_family;
    a_refresh_token_used_twice_at_once_revokes_its_family => concurrent_reuse_revokes_family;
}

/// A poll-mode client of the application `customer` speaks for.
async fn poll_client(base_url: &str, customer: &CustomerApi) -> RelyingParty {
    let registered = customer
        .register_ciba_client(&RegisterCibaClient::new(
            "Call Centre",
            DeliveryMode::Poll,
            ClientAuthMethod::ClientSecretBasic,
        ))
        .await
        .unwrap();
    RelyingParty::discover(
        base_url,
        &registered.client_id,
        ClientCredentials::SecretBasic(registered.client_secret.unwrap()),
    )
    .await
    .unwrap()
}

async fn start(backend: Backend) -> TestServer {
    TestServer::start_with(backend, |c| c.ciba_poll_interval = 1).await
}

/// A device paired with `user` of the application `customer` speaks for.
async fn paired(customer: &CustomerApi, user: &str) -> TestDevice {
    customer.create_user(user, None).await.unwrap();
    let uri = customer
        .start_pairing(user, None)
        .await
        .unwrap()
        .pairing_uri;
    let device = TestDevice::new().await;
    device.auth.pair(&uri, None).await.unwrap();
    device
}

/// One approved CIBA flow for `hint` (`login_hint` unless given otherwise).
async fn tokens(rp: &RelyingParty, device: &TestDevice, params: &[(&str, &str)]) -> TokenResponse {
    let ack = rp.backchannel(params).await.unwrap();
    let mut pending = device.auth.pending_requests().await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    device
        .auth
        .approve(&pending.remove(0), vec!["fpt".into()], None)
        .await
        .unwrap();
    rp.poll(&ack).await.unwrap()
}

async fn offline_tokens(rp: &RelyingParty, device: &TestDevice, user: &str) -> TokenResponse {
    let t = tokens(
        rp,
        device,
        &[("scope", "openid offline_access"), ("login_hint", user)],
    )
    .await;
    assert!(t.refresh_token.is_some());
    t
}

/// The userinfo status an access token gets.
async fn userinfo(base_url: &str, access_token: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{base_url}/oidc/userinfo"))
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn oauth_error<T: std::fmt::Debug>(result: Result<T, RpError>) -> String {
    match result {
        Err(RpError::OAuth { error, .. }) => error,
        other => panic!("expected an OAuth error, got {other:?}"),
    }
}

/// Both tokens of a grant still work (the refresh token is not used: only the access token is
/// checked through userinfo, the refresh token by its absence of errors later).
async fn assert_access_works(base_url: &str, t: &TokenResponse) {
    assert_eq!(userinfo(base_url, &t.access_token).await.0, 200);
}

async fn assert_revoked(base_url: &str, rp: &RelyingParty, t: &TokenResponse) {
    assert_eq!(
        userinfo(base_url, &t.access_token).await.0,
        401,
        "the access token is revoked"
    );
    assert_eq!(
        oauth_error(rp.refresh(t.refresh_token.as_deref().unwrap()).await),
        "invalid_grant",
        "the refresh token is revoked"
    );
}

async fn subjects_per_application(backend: Backend) {
    let server = start(backend).await;
    let other_app = server
        .server
        .create_application("Second Application")
        .await
        .unwrap();
    let other = CustomerApi::new(&server.base_url, &other_app.api_key);
    let device_a = paired(&server.customer, "alice").await;
    let device_b = paired(&other, "alice").await;
    let rp_a = poll_client(&server.base_url, &server.customer).await;
    let rp_b = poll_client(&server.base_url, &other).await;
    assert_eq!(
        rp_a.provider.document["subject_types_supported"],
        json!(["pairwise"])
    );

    let alice = [("scope", "openid"), ("login_hint", "alice")];
    let in_a = tokens(&rp_a, &device_a, &alice).await;
    let in_b = tokens(&rp_b, &device_b, &alice).await;
    let claims_a = rp_a.verify_id_token(&in_a.id_token).await.unwrap();
    let claims_b = rp_b.verify_id_token(&in_b.id_token).await.unwrap();
    assert_eq!(claims_a["iss"], claims_b["iss"]);
    assert_ne!(
        claims_a["sub"], claims_b["sub"],
        "one issuer, two applications, two people: two subjects"
    );
    let sub_a = claims_a["sub"].as_str().unwrap().to_string();
    let sub_b = claims_b["sub"].as_str().unwrap().to_string();
    assert_eq!(sub_a, format!("{}:alice", server.app.application_id));
    // userinfo names the same subject as the ID token.
    assert_eq!(
        userinfo(&server.base_url, &in_a.access_token).await.1["sub"],
        json!(sub_a)
    );
    assert_eq!(
        userinfo(&server.base_url, &in_b.access_token).await.1["sub"],
        json!(sub_b)
    );

    // The hints take the subject back: an ID token as id_token_hint, the subject as login_hint.
    let by_id_token = tokens(
        &rp_a,
        &device_a,
        &[("scope", "openid"), ("id_token_hint", &in_a.id_token)],
    )
    .await;
    assert_eq!(
        rp_a.verify_id_token(&by_id_token.id_token).await.unwrap()["sub"],
        json!(sub_a)
    );
    tokens(
        &rp_a,
        &device_a,
        &[("scope", "openid"), ("login_hint", &sub_a)],
    )
    .await;
    // Another application's subject names nobody here.
    assert_eq!(
        oauth_error(
            rp_a.backchannel(&[("scope", "openid"), ("login_hint", &sub_b)])
                .await
        ),
        "unknown_user_id"
    );
}

async fn revoked_on_last_unpair(backend: Backend) {
    let server = start(backend).await;
    let alice = paired(&server.customer, "alice").await;
    let bob = paired(&server.customer, "bob").await;
    let rp = poll_client(&server.base_url, &server.customer).await;
    let alice_tokens = offline_tokens(&rp, &alice, "alice").await;
    let bob_tokens = offline_tokens(&rp, &bob, "bob").await;
    assert_access_works(&server.base_url, &alice_tokens).await;

    let enrollment = alice.auth.enrollments().await.remove(0);
    server
        .customer
        .remove_device("alice", &enrollment.enrollment_id)
        .await
        .unwrap();
    assert_revoked(&server.base_url, &rp, &alice_tokens).await;
    // Another user's tokens are untouched.
    assert_access_works(&server.base_url, &bob_tokens).await;
    rp.refresh(bob_tokens.refresh_token.as_deref().unwrap())
        .await
        .unwrap();
}

async fn revoked_on_self_unpair(backend: Backend) {
    let server = start(backend).await;
    let alice = paired(&server.customer, "alice").await;
    let rp = poll_client(&server.base_url, &server.customer).await;
    let alice_tokens = offline_tokens(&rp, &alice, "alice").await;
    let enrollment = alice.auth.enrollments().await.remove(0);
    alice
        .auth
        .remove_enrollment(&enrollment.enrollment_id)
        .await
        .unwrap();
    assert_revoked(&server.base_url, &rp, &alice_tokens).await;
}

async fn revoked_on_user_removal(backend: Backend) {
    let server = start(backend).await;
    let alice = paired(&server.customer, "alice").await;
    let bob = paired(&server.customer, "bob").await;
    let rp = poll_client(&server.base_url, &server.customer).await;
    let alice_tokens = offline_tokens(&rp, &alice, "alice").await;
    let bob_tokens = offline_tokens(&rp, &bob, "bob").await;

    server.customer.remove_user("alice").await.unwrap();
    assert_revoked(&server.base_url, &rp, &alice_tokens).await;
    assert!(server.customer.get_user("alice").await.is_err());
    assert!(
        server.customer.remove_user("alice").await.is_err(),
        "a removed user is not found"
    );
    // A new user with the same id does not inherit anything.
    server.customer.create_user("alice", None).await.unwrap();
    assert_revoked(&server.base_url, &rp, &alice_tokens).await;
    assert!(
        server
            .customer
            .list_devices("alice")
            .await
            .unwrap()
            .devices
            .is_empty()
    );
    assert_access_works(&server.base_url, &bob_tokens).await;
}

async fn reuse_revokes_family(backend: Backend) {
    let server = start(backend).await;
    let alice = paired(&server.customer, "alice").await;
    let rp = poll_client(&server.base_url, &server.customer).await;
    let first = offline_tokens(&rp, &alice, "alice").await;
    let unrelated = offline_tokens(&rp, &alice, "alice").await;
    let renewed = rp
        .refresh(first.refresh_token.as_deref().unwrap())
        .await
        .unwrap();
    let renewed_again = rp
        .refresh(renewed.refresh_token.as_deref().unwrap())
        .await
        .unwrap();
    assert_access_works(&server.base_url, &renewed_again).await;

    // The first refresh token, used already, comes back (stolen, or replayed).
    assert_eq!(
        oauth_error(rp.refresh(first.refresh_token.as_deref().unwrap()).await),
        "invalid_grant"
    );
    // Every descendant is revoked, access tokens included.
    for t in [&first, &renewed, &renewed_again] {
        assert_eq!(userinfo(&server.base_url, &t.access_token).await.0, 401);
    }
    assert_eq!(
        oauth_error(
            rp.refresh(renewed_again.refresh_token.as_deref().unwrap())
                .await
        ),
        "invalid_grant"
    );
    // Another grant's family lives on.
    assert_access_works(&server.base_url, &unrelated).await;
    rp.refresh(unrelated.refresh_token.as_deref().unwrap())
        .await
        .unwrap();
}

async fn concurrent_reuse_revokes_family(backend: Backend) {
    let server = start(backend).await;
    let alice = paired(&server.customer, "alice").await;
    let rp = std::sync::Arc::new(poll_client(&server.base_url, &server.customer).await);
    for round in 0..3 {
        let granted = offline_tokens(&rp, &alice, "alice").await;
        let refresh = granted.refresh_token.clone().unwrap();
        let attempts: Vec<_> = (0..6)
            .map(|_| {
                let rp = rp.clone();
                let refresh = refresh.clone();
                tokio::spawn(async move { rp.refresh(&refresh).await })
            })
            .collect();
        let mut winners = Vec::new();
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(t) => winners.push(t),
                Err(e) => assert_eq!(oauth_error::<()>(Err(e)), "invalid_grant"),
            }
        }
        assert!(
            winners.len() <= 1,
            "round {round}: one use at most, got {}",
            winners.len()
        );
        // Whoever won, the others presented a used token: the winner's tokens are revoked too.
        for winner in &winners {
            assert_revoked(&server.base_url, &rp, winner).await;
        }
        assert_eq!(
            userinfo(&server.base_url, &granted.access_token).await.0,
            401
        );
    }
}
