//! End to end: the server as an OpenID CIBA provider with a real relying party over HTTP, the
//! user's paired device (the real core) as the authentication device, and local notification
//! receivers for ping and push; on SQLite and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::Digest;
use tessera_core::{AuthenticationKind, CoreError, IncomingRequest};
use tessera_examples::notification_receiver::{NotificationReceiver, Reply};
use tessera_examples::relying_party::{ClientCredentials, RelyingParty, RpError, RpSigningKey};
use tessera_protocol::ciba::{
    ACR_MOBILE_USER_VERIFIED, AUTH_REQ_ID_CLAIM, CIBA_GRANT_TYPE, ClientAuthMethod, DeliveryMode,
    RegisterCibaClient,
};
use tessera_protocol::error::ErrorCode;
use tessera_server::ManualClock;
use tessera_tests::{Backend, TestDevice, TestServer, on_each_backend};

on_each_backend! {
    discovery_metadata_and_key_rotation => discovery_and_rotation;
    poll_mode_with_each_client_authentication_method => poll_with_each_auth_method;
    backchannel_errors_and_statuses => backchannel_errors;
    hints_by_id_token_and_login_hint_token => other_hints;
    user_codes_are_required_checked_and_locked => user_codes;
    token_endpoint_errors_and_single_use => token_errors;
    slow_down_is_enforced => slow_down;
    expiry_on_the_device_and_at_the_token_endpoint => expiry;
    signed_requests_are_checked_claim_by_claim => signed_requests;
    ping_mode_notifies_then_the_client_fetches => ping_mode;
    push_mode_delivers_tokens_and_errors => push_mode;
    notifications_retry_with_backoff_and_never_follow_redirects => retries_and_redirects;
    notification_endpoints_are_checked_against_ssrf => ssrf_refusals;
    refresh_tokens_rotate_once => refresh_tokens;
    no_token_outlives_the_last_device_whatever_races_its_unpairing => refresh_racing_unpairing;
}

const WAIT: Duration = Duration::from_secs(10);

async fn start(backend: Backend) -> (TestServer, TestDevice) {
    start_with_clock(backend, None).await
}

/// Like [`start`], with the server reading `clock` (tests move it instead of sleeping).
async fn start_with_clock(
    backend: Backend,
    clock: Option<ManualClock>,
) -> (TestServer, TestDevice) {
    let server = TestServer::start_with(backend, |c| {
        if let Some(clock) = clock {
            c.clock = Arc::new(clock);
        }
        c.ciba_poll_interval = 1;
        c.ciba_allow_loopback_notifications = true;
        c.ciba_notification_retry_base = Duration::from_millis(50);
        c.ciba_notification_sweep = Duration::from_millis(100);
    })
    .await;
    server
        .customer
        .create_user("alice", Some("Alice Example"))
        .await
        .unwrap();
    let device = TestDevice::new().await;
    device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    (server, device)
}

fn registration(mode: DeliveryMode, method: ClientAuthMethod) -> RegisterCibaClient {
    RegisterCibaClient::new("Call Centre", mode, method)
}

/// Registers a client and returns a relying party authenticated as it.
async fn client(
    server: &TestServer,
    mut reg: RegisterCibaClient,
    key: Option<RpSigningKey>,
) -> RelyingParty {
    if let Some(key) = &key {
        reg.jwks = Some(key.jwks());
    }
    let method = reg.token_endpoint_auth_method;
    let registered = server.customer.register_ciba_client(&reg).await.unwrap();
    let credentials = match method {
        ClientAuthMethod::ClientSecretBasic => {
            ClientCredentials::SecretBasic(registered.client_secret.clone().unwrap())
        }
        ClientAuthMethod::ClientSecretPost => {
            ClientCredentials::SecretPost(registered.client_secret.clone().unwrap())
        }
        ClientAuthMethod::PrivateKeyJwt => {
            assert!(registered.client_secret.is_none());
            ClientCredentials::PrivateKeyJwt(key.expect("a key for private_key_jwt"))
        }
    };
    RelyingParty::discover(&server.base_url, &registered.client_id, credentials)
        .await
        .unwrap()
}

async fn poll_client(server: &TestServer) -> RelyingParty {
    client(
        server,
        registration(DeliveryMode::Poll, ClientAuthMethod::ClientSecretBasic),
        None,
    )
    .await
}

async fn only_request(device: &TestDevice) -> IncomingRequest {
    let mut pending = device.auth.pending_requests().await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    pending.remove(0)
}

fn oauth_error(result: Result<impl std::fmt::Debug, RpError>) -> (u16, String) {
    match result {
        Err(RpError::OAuth { status, error, .. }) => (status, error),
        other => panic!("expected an OAuth error, got {other:?}"),
    }
}

const ALICE: &[(&str, &str)] = &[("scope", "openid profile"), ("login_hint", "alice")];

async fn discovery_and_rotation(backend: Backend) {
    let (server, device) = start(backend).await;
    let rp = poll_client(&server).await;
    let doc = &rp.provider.document;
    assert_eq!(doc["issuer"], json!(server.base_url));
    assert_eq!(
        doc["backchannel_token_delivery_modes_supported"],
        json!(["poll", "ping", "push"])
    );
    assert_eq!(
        doc["backchannel_user_code_parameter_supported"],
        json!(true)
    );
    assert!(
        doc["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(CIBA_GRANT_TYPE))
    );
    let algs = doc["backchannel_authentication_request_signing_alg_values_supported"]
        .as_array()
        .unwrap();
    assert!(algs.contains(&json!("ES256")) && algs.contains(&json!("PS256")));
    assert!(
        !algs
            .iter()
            .any(|a| a == "none" || a.as_str().unwrap().starts_with("HS"))
    );
    for method in [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    ] {
        assert!(
            doc["token_endpoint_auth_methods_supported"]
                .as_array()
                .unwrap()
                .contains(&json!(method))
        );
    }

    let first = approved_tokens(&rp, &device).await;
    let first_kid = jsonwebtoken::decode_header(&first.id_token)
        .unwrap()
        .kid
        .unwrap();
    let new_kid = tessera_server::oidc::keys::rotate(
        server.server.database(),
        tessera_protocol::time::now(),
        3600,
    )
    .await
    .unwrap();
    assert_ne!(first_kid, new_kid);
    let jwks: Value = reqwest::get(&rp.provider.jwks_uri)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(kids.contains(&first_kid.as_str()) && kids.contains(&new_kid.as_str()));
    // Tokens signed before the rotation still verify; new ones carry the new key.
    rp.verify_id_token(&first.id_token).await.unwrap();
    let second = approved_tokens(&rp, &device).await;
    assert_eq!(
        jsonwebtoken::decode_header(&second.id_token).unwrap().kid,
        Some(new_kid)
    );
    rp.verify_id_token(&second.id_token).await.unwrap();
}

/// One full poll-mode flow for alice: request, device approval with a fingerprint, tokens.
async fn approved_tokens(
    rp: &RelyingParty,
    device: &TestDevice,
) -> tessera_protocol::ciba::TokenResponse {
    approved_tokens_for(rp, device, ALICE).await
}

/// [`approved_tokens`] for the backchannel request `params`.
async fn approved_tokens_for(
    rp: &RelyingParty,
    device: &TestDevice,
    params: &[(&str, &str)],
) -> tessera_protocol::ciba::TokenResponse {
    let ack = rp.backchannel(params).await.unwrap();
    let request = only_request(device).await;
    device
        .auth
        .approve(&request, vec!["fpt".into()], None)
        .await
        .unwrap();
    rp.poll(&ack).await.unwrap()
}

fn at_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(&sha2::Sha256::digest(token.as_bytes())[..16])
}

async fn poll_with_each_auth_method(backend: Backend) {
    let (server, device) = start(backend).await;
    for method in [
        ClientAuthMethod::ClientSecretBasic,
        ClientAuthMethod::ClientSecretPost,
        ClientAuthMethod::PrivateKeyJwt,
    ] {
        let key = (method == ClientAuthMethod::PrivateKeyJwt).then(RpSigningKey::generate);
        let rp = client(&server, registration(DeliveryMode::Poll, method), key).await;
        let ack = rp
            .backchannel(&[
                ("scope", "openid profile"),
                ("login_hint", "alice"),
                ("binding_message", "Ticket 4711 for Alice"),
                ("acr_values", "urn:unknown:acr"),
            ])
            .await
            .unwrap();
        // The time in milliseconds (12 hex digits), then 256 random bits in base64url.
        assert_eq!(ack.auth_req_id.len(), 12 + 43, "{}", ack.auth_req_id);
        let minted_ms = i64::from_str_radix(&ack.auth_req_id[..12], 16).expect("hex time");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        assert!(
            (now_ms - 60_000..=now_ms).contains(&minted_ms),
            "{minted_ms}"
        );
        assert_eq!(ack.interval, 1);
        assert_eq!(ack.expires_in, 120);

        // The device shows the client, the binding message and the scopes, as a CIBA request.
        let request = only_request(&device).await;
        assert_eq!(request.kind, AuthenticationKind::Ciba);
        assert_eq!(request.message, "Ticket 4711 for Alice");
        let details = request.ciba.clone().unwrap();
        assert_eq!(details.client_name, "Call Centre");
        assert_eq!(details.scopes, ["openid", "profile"]);
        assert!(request.require_user_verification);
        // Approving needs user verification.
        assert!(matches!(
            device.auth.approve(&request, vec![], None).await,
            Err(CoreError::InvalidInput(_))
        ));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            oauth_error(rp.token(&ack.auth_req_id).await),
            (400, "authorization_pending".into()),
            "{method:?}"
        );
        device
            .auth
            .approve(&request, vec!["fpt".into()], None)
            .await
            .unwrap();
        let tokens = rp.poll(&ack).await.unwrap();
        assert_eq!(tokens.token_type, "Bearer");
        assert!(tokens.refresh_token.is_none(), "no offline_access asked");
        let claims = rp.verify_id_token(&tokens.id_token).await.unwrap();
        assert_eq!(
            claims["sub"],
            format!("{}:alice", server.app.application_id)
        );
        assert_eq!(claims["aud"], json!(rp.client_id));
        assert_eq!(claims["acr"], ACR_MOBILE_USER_VERIFIED);
        assert_eq!(claims["amr"], json!(["fpt", "mfa"]));
        assert!(claims["auth_time"].as_i64().unwrap() <= claims["iat"].as_i64().unwrap());
        assert_eq!(claims["at_hash"], json!(at_hash(&tokens.access_token)));
        assert!(claims.get(AUTH_REQ_ID_CLAIM).is_none(), "push mode only");

        // Single use.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            oauth_error(rp.token(&ack.auth_req_id).await),
            (400, "invalid_grant".into())
        );
        // The access token reads userinfo.
        let userinfo = reqwest::Client::new()
            .get(format!("{}/oidc/userinfo", server.base_url))
            .bearer_auth(&tokens.access_token)
            .send()
            .await
            .unwrap();
        assert_eq!(userinfo.status(), 200);
        let userinfo: Value = userinfo.json().await.unwrap();
        assert_eq!(
            userinfo,
            json!({"sub": format!("{}:alice", server.app.application_id), "name": "Alice Example"})
        );
    }
    let bad = reqwest::Client::new()
        .get(format!("{}/oidc/userinfo", server.base_url))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
}

async fn backchannel_errors(backend: Backend) {
    let (server, _device) = start(backend).await;
    server.user("nodevice").await;
    let rp = poll_client(&server).await;
    let endpoint = rp.provider.backchannel_authentication_endpoint.clone();
    let expect = |result: Result<(u16, Value), RpError>, status: u16, error: &str| {
        let (got_status, body) = result.unwrap();
        assert_eq!(
            (got_status, body["error"].as_str().unwrap_or_default()),
            (status, error),
            "{body}"
        );
        assert!(body["error_description"].is_string());
    };
    // Client authentication.
    expect(
        rp.post_form(&endpoint, ALICE, false).await,
        401,
        "invalid_client",
    );
    let wrong = RelyingParty::discover(
        &server.base_url,
        &rp.client_id,
        ClientCredentials::SecretBasic("wrong".into()),
    )
    .await
    .unwrap();
    let response = reqwest::Client::new()
        .post(&endpoint)
        .basic_auth(&rp.client_id, Some("wrong"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("scope=openid&login_hint=alice")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    assert_eq!(
        response.headers()["cache-control"].to_str().unwrap(),
        "no-store"
    );
    assert_eq!(
        oauth_error(wrong.backchannel(ALICE).await),
        (401, "invalid_client".into())
    );
    // A basic-auth client using client_secret_post is refused: one registered method only.
    let as_post = RelyingParty::discover(
        &server.base_url,
        &rp.client_id,
        ClientCredentials::SecretPost("whatever".into()),
    )
    .await
    .unwrap();
    assert_eq!(oauth_error(as_post.backchannel(ALICE).await).0, 401);

    // Parameters.
    for (params, status, error) in [
        (vec![("login_hint", "alice")], 400, "invalid_request"),
        (
            vec![("scope", "profile"), ("login_hint", "alice")],
            400,
            "invalid_scope",
        ),
        (
            vec![("scope", "openid admin"), ("login_hint", "alice")],
            400,
            "invalid_scope",
        ),
        (vec![("scope", "openid")], 400, "invalid_request"),
        (
            vec![
                ("scope", "openid"),
                ("login_hint", "alice"),
                ("id_token_hint", "x.y.z"),
            ],
            400,
            "invalid_request",
        ),
        (
            vec![("scope", "openid"), ("login_hint", "mallory")],
            400,
            "unknown_user_id",
        ),
        (
            vec![("scope", "openid"), ("login_hint", "nodevice")],
            403,
            "access_denied",
        ),
        (
            vec![
                ("scope", "openid"),
                ("login_hint", "alice"),
                ("binding_message", "two\nlines"),
            ],
            400,
            "invalid_binding_message",
        ),
        (
            vec![
                ("scope", "openid"),
                ("login_hint", "alice"),
                ("binding_message", "Call 47\u{202E}11"),
            ],
            400,
            "invalid_binding_message",
        ),
        (
            vec![
                ("scope", "openid"),
                ("login_hint", "alice"),
                ("binding_message", "Call\u{200B}4711"),
            ],
            400,
            "invalid_binding_message",
        ),
        (
            vec![
                ("scope", "openid"),
                ("login_hint", "alice"),
                ("binding_message", &"x".repeat(101)),
            ],
            400,
            "invalid_binding_message",
        ),
        (
            vec![
                ("scope", "openid"),
                ("login_hint", "alice"),
                ("requested_expiry", "soon"),
            ],
            400,
            "invalid_request",
        ),
        (
            vec![
                ("scope", "openid"),
                ("login_hint", "alice"),
                ("requested_expiry", "0"),
            ],
            400,
            "invalid_request",
        ),
        (
            vec![
                ("scope", "openid"),
                ("login_hint", "alice"),
                ("id_token_hint", "not.a.jwt"),
            ],
            400,
            "invalid_request",
        ),
        (
            vec![("scope", "openid"), ("id_token_hint", "not.a.jwt")],
            400,
            "invalid_request",
        ),
        (
            vec![("scope", "openid"), ("login_hint_token", "not.a.jwt")],
            400,
            "invalid_request",
        ),
    ] {
        expect(rp.post_form(&endpoint, &params, true).await, status, error);
    }
    // A repeated parameter and another content type.
    expect(
        rp.post_form(
            &endpoint,
            &[
                ("scope", "openid"),
                ("login_hint", "alice"),
                ("login_hint", "bob"),
            ],
            true,
        )
        .await,
        400,
        "invalid_request",
    );
    let response = reqwest::Client::new()
        .post(&endpoint)
        .basic_auth(&rp.client_id, Some("irrelevant"))
        .json(&json!({"scope": "openid", "login_hint": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // Spaces (and non-ASCII) are fine in binding messages; requested_expiry is honoured.
    let ack = rp
        .backchannel(&[
            ("scope", "openid"),
            ("login_hint", "alice"),
            ("binding_message", "Überweisung 120 EUR an ACME GmbH"),
            ("requested_expiry", "30"),
        ])
        .await
        .unwrap();
    assert_eq!(ack.expires_in, 30);
    assert_eq!(ack.interval, 1);
    // A ping/push-only parameter is not needed in poll mode.
    let ack_long = rp
        .backchannel(&[
            ("scope", "openid"),
            ("login_hint", "alice"),
            ("requested_expiry", "99999"),
        ])
        .await
        .unwrap();
    assert_eq!(ack_long.expires_in, 600, "capped at the server's maximum");
    // Push bombing: the user has 2 pending, the third is still allowed, the fourth refused.
    rp.backchannel(ALICE).await.unwrap();
    assert_eq!(
        oauth_error(rp.backchannel(ALICE).await),
        (403, "access_denied".into())
    );
}

async fn other_hints(backend: Backend) {
    let (server, device) = start(backend).await;
    let key = RpSigningKey::generate();
    let rp = client(
        &server,
        registration(DeliveryMode::Poll, ClientAuthMethod::PrivateKeyJwt),
        Some(key.clone()),
    )
    .await;
    let other = poll_client(&server).await;
    let tokens = approved_tokens(&rp, &device).await;

    // The ID token this client received names the user; another client cannot use it.
    rp.backchannel(&[("scope", "openid"), ("id_token_hint", &tokens.id_token)])
        .await
        .unwrap();
    assert_eq!(
        only_request(&device).await.ciba.unwrap().client_name,
        "Call Centre"
    );
    assert_eq!(
        oauth_error(
            other
                .backchannel(&[("scope", "openid"), ("id_token_hint", &tokens.id_token)])
                .await
        ),
        (400, "invalid_request".into())
    );
    // An ID token signed by someone else.
    let forged = key
        .sign(&json!({"iss": server.base_url, "sub": "alice", "aud": rp.client_id}))
        .unwrap();
    assert_eq!(
        oauth_error(
            rp.backchannel(&[("scope", "openid"), ("id_token_hint", &forged)])
                .await
        ),
        (400, "invalid_request".into())
    );
    // A login hint token signed by the client.
    let now = tessera_protocol::time::now();
    let hint = key.sign(&json!({"sub": "alice", "exp": now + 60})).unwrap();
    rp.backchannel(&[("scope", "openid"), ("login_hint_token", &hint)])
        .await
        .unwrap();
    let expired = key.sign(&json!({"sub": "alice", "exp": now - 1})).unwrap();
    assert_eq!(
        oauth_error(
            rp.backchannel(&[("scope", "openid"), ("login_hint_token", &expired)])
                .await
        ),
        (400, "expired_login_hint_token".into())
    );
    let unknown = key
        .sign(&json!({"sub": "mallory", "exp": now + 60}))
        .unwrap();
    assert_eq!(
        oauth_error(
            rp.backchannel(&[("scope", "openid"), ("login_hint_token", &unknown)])
                .await
        ),
        (400, "unknown_user_id".into())
    );
    let by_stranger = RpSigningKey::generate()
        .sign(&json!({"sub": "alice", "exp": now + 60}))
        .unwrap();
    assert_eq!(
        oauth_error(
            rp.backchannel(&[("scope", "openid"), ("login_hint_token", &by_stranger)])
                .await
        ),
        (400, "invalid_request".into())
    );
}

async fn user_codes(backend: Backend) {
    let (server, device) = start(backend).await;
    let mut reg = registration(DeliveryMode::Poll, ClientAuthMethod::ClientSecretPost);
    reg.backchannel_user_code_parameter = true;
    let rp = client(&server, reg, None).await;
    let with_code = |code: &'static str| {
        [
            ("scope", "openid"),
            ("login_hint", "alice"),
            ("user_code", code),
        ]
    };
    assert_eq!(
        oauth_error(rp.backchannel(ALICE).await),
        (400, "missing_user_code".into())
    );
    // No code set yet.
    assert_eq!(
        oauth_error(rp.backchannel(&with_code("2468")).await),
        (400, "invalid_user_code".into())
    );
    let short = server.customer.set_ciba_user_code("alice", "12").await;
    assert_eq!(short.unwrap_err().code(), Some(ErrorCode::InvalidRequest));
    server
        .customer
        .set_ciba_user_code("alice", "2468")
        .await
        .unwrap();
    assert_eq!(
        oauth_error(rp.backchannel(&with_code("1357")).await),
        (400, "invalid_user_code".into())
    );
    let ack = rp.backchannel(&with_code("2468")).await.unwrap();
    let request = only_request(&device).await;
    device.auth.deny(&request, false).await.unwrap();
    assert_eq!(
        oauth_error(rp.poll(&ack).await),
        (403, "access_denied".into())
    );
    // Five wrong codes lock the code, even against the right one, until it is set again.
    for _ in 0..5 {
        assert_eq!(
            oauth_error(rp.backchannel(&with_code("0000")).await).1,
            "invalid_user_code"
        );
    }
    assert_eq!(
        oauth_error(rp.backchannel(&with_code("2468")).await).1,
        "invalid_user_code"
    );
    server
        .customer
        .set_ciba_user_code("alice", "2468")
        .await
        .unwrap();
    rp.backchannel(&with_code("2468")).await.unwrap();
    // 20 wrong codes at once: each attempt is counted before its code is compared, so no more
    // than the five allowed are ever compared ("not valid"); the others are refused as locked.
    let rp = std::sync::Arc::new(rp);
    let mut guesses = Vec::new();
    for _ in 0..20 {
        let rp = rp.clone();
        guesses.push(tokio::spawn(async move {
            match rp.backchannel(&with_code("0000")).await {
                Err(RpError::OAuth {
                    error, description, ..
                }) => (error, description),
                other => panic!("expected an OAuth error, got {other:?}"),
            }
        }));
    }
    let mut compared = 0;
    for guess in guesses {
        let (error, description) = guess.await.unwrap();
        assert_eq!(error, "invalid_user_code");
        if !description.contains("too many") {
            compared += 1;
        }
    }
    assert!(
        compared <= 5,
        "{compared} user codes were compared against a limit of 5"
    );
}

async fn token_errors(backend: Backend) {
    let (server, device) = start(backend).await;
    let rp = poll_client(&server).await;
    let other = poll_client(&server).await;
    let endpoint = rp.provider.token_endpoint.clone();
    let ack = rp.backchannel(ALICE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (params, status, error) in [
        (
            vec![("auth_req_id", ack.auth_req_id.as_str())],
            400,
            "invalid_request",
        ),
        (
            // A grant this (CIBA-only) client is not registered for.
            vec![("grant_type", "authorization_code"), ("code", "x")],
            400,
            "unauthorized_client",
        ),
        (
            vec![("grant_type", "password"), ("username", "alice")],
            400,
            "unsupported_grant_type",
        ),
        (
            vec![("grant_type", CIBA_GRANT_TYPE)],
            400,
            "invalid_request",
        ),
        (
            vec![("grant_type", CIBA_GRANT_TYPE), ("auth_req_id", "unknown")],
            400,
            "invalid_grant",
        ),
    ] {
        let (got, body) = rp.post_form(&endpoint, &params, true).await.unwrap();
        assert_eq!((got, body["error"].as_str().unwrap()), (status, error));
    }
    // Another client's auth_req_id.
    assert_eq!(
        oauth_error(other.token(&ack.auth_req_id).await),
        (400, "invalid_grant".into())
    );
    let (status, body) = rp
        .post_form(
            &endpoint,
            &[
                ("grant_type", CIBA_GRANT_TYPE),
                ("auth_req_id", &ack.auth_req_id),
            ],
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (401, "invalid_client")
    );

    // Denial on the device.
    let request = only_request(&device).await;
    device.auth.deny(&request, false).await.unwrap();
    assert_eq!(
        oauth_error(rp.poll(&ack).await),
        (403, "access_denied".into())
    );

    // A push-mode client may not use the token endpoint.
    let receiver = NotificationReceiver::start().await.unwrap();
    let mut reg = registration(DeliveryMode::Push, ClientAuthMethod::ClientSecretBasic);
    reg.backchannel_client_notification_endpoint = Some(receiver.url("/cb"));
    let push = client(&server, reg, None).await;
    let ack = push
        .backchannel(&[
            ("scope", "openid"),
            ("login_hint", "alice"),
            ("client_notification_token", "nt-123"),
        ])
        .await
        .unwrap();
    assert_eq!(
        oauth_error(push.token(&ack.auth_req_id).await),
        (400, "unauthorized_client".into())
    );
}

async fn slow_down(backend: Backend) {
    let clock = ManualClock::new();
    let (server, device) = start_with_clock(backend, Some(clock.clone())).await;
    let rp = poll_client(&server).await;
    let ack = rp.backchannel(ALICE).await.unwrap();
    assert_eq!(ack.interval, 1);
    // Only token requests count toward the interval: the first one, at once after the
    // acknowledgement, is answered.
    assert_eq!(
        oauth_error(rp.token(&ack.auth_req_id).await),
        (400, "authorization_pending".into())
    );
    // The next one too soon is told to slow down, with the interval now in force (1 + 5 s).
    let too_soon = rp.token(&ack.auth_req_id).await;
    assert_eq!(oauth_error(too_soon), (400, "slow_down".into()));
    let (_, body) = rp
        .post_form(
            &rp.provider.token_endpoint.clone(),
            &[
                ("grant_type", CIBA_GRANT_TYPE),
                ("auth_req_id", &ack.auth_req_id),
            ],
            true,
        )
        .await
        .unwrap();
    assert_eq!(body["error"], "slow_down");
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.contains("now 11 seconds"),
        "the description states the current interval: {description}"
    );
    // A client that honours the interval (11 s now) is answered.
    clock.advance(Duration::from_millis(10_900));
    assert_eq!(
        oauth_error(rp.token(&ack.auth_req_id).await),
        (400, "slow_down".into())
    );
    let request = only_request(&device).await;
    device
        .auth
        .approve(&request, vec!["face".into()], None)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(16));
    let tokens = rp.token(&ack.auth_req_id).await.unwrap();
    let claims = rp.verify_id_token(&tokens.id_token).await.unwrap();
    assert_eq!(claims["amr"], json!(["face", "mfa"]));
}

async fn expiry(backend: Backend) {
    let clock = ManualClock::new();
    let (server, device) = start_with_clock(backend, Some(clock.clone())).await;
    let rp = poll_client(&server).await;
    let receiver = NotificationReceiver::start().await.unwrap();
    let mut reg = registration(DeliveryMode::Push, ClientAuthMethod::ClientSecretBasic);
    reg.backchannel_client_notification_endpoint = Some(receiver.url("/push"));
    let push = client(&server, reg, None).await;
    let ack = rp
        .backchannel(&[
            ("scope", "openid"),
            ("login_hint", "alice"),
            ("requested_expiry", "10"),
        ])
        .await
        .unwrap();
    let pushed = push
        .backchannel(&[
            ("scope", "openid"),
            ("login_hint", "alice"),
            ("requested_expiry", "10"),
            ("client_notification_token", "push-token"),
        ])
        .await
        .unwrap();
    assert_eq!(ack.expires_in, 10);
    let pending = device.auth.pending_requests().await.unwrap();
    assert_eq!(pending.len(), 2);
    // The server's time moves on; the device's does not, so the server refuses the answer.
    clock.advance(Duration::from_secs(11));
    assert!(matches!(
        device
            .auth
            .approve(&pending[0], vec!["fpt".into()], None)
            .await,
        Err(CoreError::Server {
            code: ErrorCode::AuthenticationExpired,
            ..
        })
    ));
    assert_eq!(
        oauth_error(rp.token(&ack.auth_req_id).await),
        (400, "expired_token".into())
    );
    let notification = receiver.next(WAIT).await.expect("an expiry push");
    assert_eq!(
        notification.authorization.as_deref(),
        Some("Bearer push-token")
    );
    assert_eq!(
        notification.body,
        json!({
            "auth_req_id": pushed.auth_req_id,
            "error": "expired_token",
            "error_description": "the request expired before the user answered"
        })
    );
}

async fn signed_requests(backend: Backend) {
    let (server, device) = start(backend).await;
    let key = RpSigningKey::generate();
    let mut reg = registration(DeliveryMode::Poll, ClientAuthMethod::PrivateKeyJwt);
    reg.backchannel_authentication_request_signing_alg = Some("ES256".into());
    let rp = client(&server, reg, Some(key.clone())).await;
    let params = json!({"scope": "openid", "login_hint": "alice", "binding_message": "Signed 42", "requested_expiry": 60});

    let ack = rp.backchannel_signed(&key, params.clone()).await.unwrap();
    assert_eq!(ack.expires_in, 60);
    let request = only_request(&device).await;
    assert_eq!(request.message, "Signed 42");
    device
        .auth
        .approve(&request, vec!["pin".into()], None)
        .await
        .unwrap();
    rp.poll(&ack).await.unwrap();

    let now = tessera_protocol::time::now();
    let full = |tweak: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut claims = params.as_object().unwrap().clone();
        for (k, v) in [
            ("iss", json!(rp.client_id)),
            ("aud", json!(server.base_url)),
            ("iat", json!(now)),
            ("nbf", json!(now)),
            ("exp", json!(now + 300)),
            ("jti", json!(format!("jti-{}", rand::random::<u64>()))),
        ] {
            claims.insert(k.into(), v);
        }
        tweak(&mut claims);
        Value::Object(claims)
    };
    let refused = |jwt: String| {
        let rp = &rp;
        async move {
            assert_eq!(
                oauth_error(rp.backchannel(&[("request", &jwt)]).await),
                (400, "invalid_request".into())
            );
        }
    };
    for claim in ["aud", "iss", "exp", "iat", "nbf", "jti"] {
        refused(
            key.sign(&full(&|c| {
                c.remove(claim);
            }))
            .unwrap(),
        )
        .await;
    }
    refused(
        key.sign(&full(&|c| {
            c.insert("exp".into(), json!(now - 1));
        }))
        .unwrap(),
    )
    .await;
    refused(
        key.sign(&full(&|c| {
            c.insert("nbf".into(), json!(now + 600));
        }))
        .unwrap(),
    )
    .await;
    refused(
        key.sign(&full(&|c| {
            c.insert("nbf".into(), json!(now - 10));
            c.insert("exp".into(), json!(now + 3600));
        }))
        .unwrap(),
    )
    .await;
    refused(
        key.sign(&full(&|c| {
            c.insert("aud".into(), json!("https://another.example"));
        }))
        .unwrap(),
    )
    .await;
    refused(
        key.sign(&full(&|c| {
            c.insert("iss".into(), json!("cli_someone_else"));
        }))
        .unwrap(),
    )
    .await;
    // alg none, and a symmetric algorithm.
    let body = URL_SAFE_NO_PAD.encode(full(&|_| {}).to_string());
    refused(format!(
        "{}.{body}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#)
    ))
    .await;
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &full(&|_| {}),
        &jsonwebtoken::EncodingKey::from_secret(b"shared secret"),
    )
    .unwrap();
    refused(hs).await;
    // Signed by another registered client's key, and by a key nobody registered.
    let other_key = RpSigningKey::generate();
    let mut other = registration(DeliveryMode::Poll, ClientAuthMethod::PrivateKeyJwt);
    other.backchannel_authentication_request_signing_alg = Some("ES256".into());
    client(&server, other, Some(other_key.clone())).await;
    refused(other_key.sign(&full(&|_| {})).unwrap()).await;
    refused(RpSigningKey::generate().sign(&full(&|_| {})).unwrap()).await;
    // A jti used twice.
    let once = key.sign(&full(&|_| {})).unwrap();
    rp.backchannel(&[("request", &once)]).await.unwrap();
    refused(once).await;
    // Parameters outside the signed request, and an unsigned request from this client.
    let outside = key.sign(&full(&|_| {})).unwrap();
    assert_eq!(
        oauth_error(
            rp.backchannel(&[("request", &outside), ("binding_message", "unsigned")])
                .await
        ),
        (400, "invalid_request".into())
    );
    assert_eq!(
        oauth_error(rp.backchannel(ALICE).await),
        (400, "invalid_request".into())
    );
    // Registration refuses none and symmetric algorithms.
    for alg in ["none", "HS256"] {
        let mut reg = registration(DeliveryMode::Poll, ClientAuthMethod::PrivateKeyJwt);
        reg.jwks = Some(key.jwks());
        reg.backchannel_authentication_request_signing_alg = Some(alg.into());
        let refused = server
            .customer
            .register_ciba_client(&reg)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::InvalidRequest), "{alg}");
    }
}

async fn ping_mode(backend: Backend) {
    let (server, device) = start(backend).await;
    let receiver = NotificationReceiver::start().await.unwrap();
    let mut reg = registration(DeliveryMode::Ping, ClientAuthMethod::ClientSecretPost);
    reg.backchannel_client_notification_endpoint = Some(receiver.url("/ciba/ping"));
    let rp = client(&server, reg, None).await;
    assert_eq!(
        oauth_error(rp.backchannel(ALICE).await),
        (400, "invalid_request".into()),
        "client_notification_token is required"
    );
    let ack = rp
        .backchannel(&[
            ("scope", "openid"),
            ("login_hint", "alice"),
            ("client_notification_token", "ping-8f14e45f"),
        ])
        .await
        .unwrap();
    let request = only_request(&device).await;
    device
        .auth
        .approve(&request, vec!["fpt".into()], None)
        .await
        .unwrap();
    let ping = receiver.next(WAIT).await.expect("a ping");
    assert_eq!(ping.path, "/ciba/ping");
    assert_eq!(ping.authorization.as_deref(), Some("Bearer ping-8f14e45f"));
    assert!(ping.content_type.unwrap().starts_with("application/json"));
    assert_eq!(ping.body, json!({"auth_req_id": ack.auth_req_id}));
    // After the ping, the client fetches the tokens at once (no interval to wait).
    let tokens = rp.token(&ack.auth_req_id).await.unwrap();
    rp.verify_id_token(&tokens.id_token).await.unwrap();

    // Denied: a ping, then access_denied.
    let ack = rp
        .backchannel(&[
            ("scope", "openid"),
            ("login_hint", "alice"),
            ("client_notification_token", "ping-2"),
        ])
        .await
        .unwrap();
    let request = only_request(&device).await;
    device.auth.deny(&request, true).await.unwrap();
    let ping = receiver.next(WAIT).await.expect("a ping");
    assert_eq!(ping.body, json!({"auth_req_id": ack.auth_req_id}));
    assert_eq!(
        oauth_error(rp.token(&ack.auth_req_id).await),
        (403, "access_denied".into())
    );
    assert!(
        receiver.next(Duration::from_millis(500)).await.is_none(),
        "one ping each"
    );
}

async fn push_mode(backend: Backend) {
    let (server, device) = start(backend).await;
    let receiver = NotificationReceiver::start().await.unwrap();
    let mut reg = registration(DeliveryMode::Push, ClientAuthMethod::ClientSecretBasic);
    reg.backchannel_client_notification_endpoint = Some(receiver.url("/push"));
    let rp = client(&server, reg, None).await;
    let start_push = |token: &'static str, scope: &'static str| {
        let rp = &rp;
        async move {
            rp.backchannel(&[
                ("scope", scope),
                ("login_hint", "alice"),
                ("client_notification_token", token),
            ])
            .await
            .unwrap()
        }
    };
    let ack = start_push("push-1", "openid offline_access").await;
    let request = only_request(&device).await;
    device
        .auth
        .approve(&request, vec!["fpt".into()], None)
        .await
        .unwrap();
    let pushed = receiver.next(WAIT).await.expect("a token push");
    assert_eq!(pushed.authorization.as_deref(), Some("Bearer push-1"));
    assert_eq!(pushed.body["auth_req_id"], json!(ack.auth_req_id));
    assert_eq!(pushed.body["token_type"], "Bearer");
    let access_token = pushed.body["access_token"].as_str().unwrap();
    let refresh_token = pushed.body["refresh_token"].as_str().unwrap();
    let claims = rp
        .verify_id_token(pushed.body["id_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(claims[AUTH_REQ_ID_CLAIM], json!(ack.auth_req_id));
    assert_eq!(claims["at_hash"], json!(at_hash(access_token)));
    assert_eq!(claims["rt_hash"], json!(at_hash(refresh_token)));

    // Denied: the error is pushed.
    let ack = start_push("push-2", "openid").await;
    let request = only_request(&device).await;
    device.auth.deny(&request, false).await.unwrap();
    let pushed = receiver.next(WAIT).await.expect("an error push");
    assert_eq!(pushed.authorization.as_deref(), Some("Bearer push-2"));
    assert_eq!(pushed.body["error"], "access_denied");
    assert_eq!(pushed.body["auth_req_id"], json!(ack.auth_req_id));

    // The device is removed while the request waits: transaction_failed.
    let ack = start_push("push-3", "openid").await;
    let devices = server.customer.list_devices("alice").await.unwrap();
    server
        .customer
        .remove_device("alice", &devices.devices[0].enrollment_id)
        .await
        .unwrap();
    let pushed = receiver.next(WAIT).await.expect("a failure push");
    assert_eq!(pushed.body["error"], "transaction_failed");
    assert_eq!(pushed.body["auth_req_id"], json!(ack.auth_req_id));
}

async fn retries_and_redirects(backend: Backend) {
    let (server, device) = start(backend).await;
    let receiver = NotificationReceiver::start().await.unwrap();
    let elsewhere = NotificationReceiver::start().await.unwrap();
    let mut reg = registration(DeliveryMode::Ping, ClientAuthMethod::ClientSecretBasic);
    reg.backchannel_client_notification_endpoint = Some(receiver.url("/ping"));
    let rp = client(&server, reg, None).await;
    let ping_params = [
        ("scope", "openid"),
        ("login_hint", "alice"),
        ("client_notification_token", "retry-token"),
    ];

    // Two failures, then success: three attempts.
    receiver.reply_with([Reply::Status(503), Reply::Status(500)]);
    let ack = rp.backchannel(&ping_params).await.unwrap();
    device
        .auth
        .approve(&only_request(&device).await, vec!["fpt".into()], None)
        .await
        .unwrap();
    for _ in 0..3 {
        let ping = receiver.next(WAIT).await.expect("an attempt");
        assert_eq!(ping.body, json!({"auth_req_id": ack.auth_req_id}));
    }
    assert!(receiver.next(Duration::from_millis(800)).await.is_none());
    rp.token(&ack.auth_req_id).await.unwrap();

    // A redirect is a failure, never followed: every attempt (5) hits the endpoint, none the
    // redirect's target.
    receiver.reply_with((0..5).map(|_| Reply::Redirect(elsewhere.url("/stolen"))));
    let ack = rp.backchannel(&ping_params).await.unwrap();
    device
        .auth
        .deny(&only_request(&device).await, false)
        .await
        .unwrap();
    for _ in 0..5 {
        receiver.next(WAIT).await.expect("an attempt");
    }
    assert!(
        receiver.next(Duration::from_secs(2)).await.is_none(),
        "5 attempts only"
    );
    assert!(elsewhere.next(Duration::from_millis(100)).await.is_none());
    let stored = tessera_server::store::ciba::request(server.server.database(), &ack.auth_req_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.notify_state,
        tessera_server::store::ciba::NotifyState::Failed
    );
    assert_eq!(stored.notify_attempts, 5);
}

async fn ssrf_refusals(backend: Backend) {
    // A server with the production defaults: no loopback, no private ranges.
    let server = TestServer::start(backend).await;
    for endpoint in [
        "http://rp.example.com/cb",
        "https://10.0.0.8/cb",
        "https://192.168.1.20/cb",
        "https://169.254.169.254/latest/meta-data",
        "https://[fd00::5]/cb",
        "https://localhost/cb",
        "https://127.0.0.1:8443/cb",
        "http://127.0.0.1:8080/cb",
        "https://user:pass@rp.example.com/cb",
        "not a url",
    ] {
        let mut reg = registration(DeliveryMode::Ping, ClientAuthMethod::ClientSecretBasic);
        reg.backchannel_client_notification_endpoint = Some(endpoint.into());
        let refused = server
            .customer
            .register_ciba_client(&reg)
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Some(ErrorCode::InvalidRequest),
            "{endpoint}"
        );
    }
    let mut reg = registration(DeliveryMode::Push, ClientAuthMethod::ClientSecretBasic);
    reg.backchannel_client_notification_endpoint = Some("https://rp.example.com/cb".into());
    let registered = server.customer.register_ciba_client(&reg).await.unwrap();
    assert_eq!(
        registered
            .client
            .backchannel_client_notification_endpoint
            .as_deref(),
        Some("https://rp.example.com/cb")
    );
    // Ping without an endpoint, poll with one, private_key_jwt without keys.
    let mut reg = registration(DeliveryMode::Ping, ClientAuthMethod::ClientSecretBasic);
    assert!(server.customer.register_ciba_client(&reg).await.is_err());
    reg.backchannel_token_delivery_mode = DeliveryMode::Poll;
    reg.backchannel_client_notification_endpoint = Some("https://rp.example.com/cb".into());
    assert!(server.customer.register_ciba_client(&reg).await.is_err());
    let reg = registration(DeliveryMode::Poll, ClientAuthMethod::PrivateKeyJwt);
    assert!(server.customer.register_ciba_client(&reg).await.is_err());
    let mut reg = registration(DeliveryMode::Poll, ClientAuthMethod::PrivateKeyJwt);
    reg.jwks = Some(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}));
    assert!(server.customer.register_ciba_client(&reg).await.is_err());
    // Listed without secrets; removable.
    let listed = server.customer.ciba_clients().await.unwrap();
    assert_eq!(listed.clients.len(), 1);
    server
        .customer
        .remove_ciba_client(&registered.client_id)
        .await
        .unwrap();
    assert!(
        server
            .customer
            .ciba_clients()
            .await
            .unwrap()
            .clients
            .is_empty()
    );
    assert!(
        server
            .customer
            .remove_ciba_client(&registered.client_id)
            .await
            .is_err()
    );
}

async fn refresh_tokens(backend: Backend) {
    let (server, device) = start(backend).await;
    let rp = poll_client(&server).await;
    let offline = [("scope", "openid offline_access"), ("login_hint", "alice")];
    let tokens = approved_tokens_for(&rp, &device, &offline).await;
    let refresh = tokens.refresh_token.clone().unwrap();
    let renewed = rp.refresh(&refresh).await.unwrap();
    assert_ne!(renewed.access_token, tokens.access_token);
    let claims = rp.verify_id_token(&renewed.id_token).await.unwrap();
    assert_eq!(
        claims["sub"],
        format!("{}:alice", server.app.application_id)
    );
    let other = poll_client(&server).await;
    assert_eq!(
        oauth_error(
            other
                .refresh(renewed.refresh_token.as_deref().unwrap())
                .await
        ),
        (400, "invalid_grant".into()),
        "another client cannot use it (and does not revoke it)"
    );
    let renewed_again = rp
        .refresh(renewed.refresh_token.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(
        oauth_error(rp.refresh(&refresh).await),
        (400, "invalid_grant".into()),
        "a refresh token is used once"
    );
    assert_eq!(
        oauth_error(
            rp.refresh(renewed_again.refresh_token.as_deref().unwrap())
                .await
        ),
        (400, "invalid_grant".into()),
        "presenting a used one revokes its successors"
    );
}

/// Over HTTP: a refresh sent at the same moment as the customer unpairs the user's last
/// device. Whichever comes first, nothing
/// the grant issued works afterwards: what was issued before the unpairing was revoked with it,
/// and what came after was refused.
async fn refresh_racing_unpairing(backend: Backend) {
    let (server, _alice) = start(backend).await;
    let rp = poll_client(&server).await;
    for round in 0..6 {
        let user = format!("rhea-{round}");
        let device = server.paired_user(&user).await;
        let offline = [
            ("scope", "openid offline_access"),
            ("login_hint", user.as_str()),
        ];
        let tokens = approved_tokens_for(&rp, &device, &offline).await;
        let refresh = tokens.refresh_token.clone().unwrap();
        let devices = server.customer.list_devices(&user).await.unwrap();
        let enrollment = devices.devices[0].enrollment_id.clone();
        let (refreshed, removed) = tokio::join!(
            rp.refresh(&refresh),
            server.customer.remove_device(&user, &enrollment)
        );
        removed.unwrap();
        assert_eq!(
            oauth_error(rp.userinfo(&tokens.access_token).await).0,
            401,
            "round {round}: the first access token is revoked"
        );
        match refreshed {
            Ok(renewed) => {
                assert_eq!(
                    oauth_error(rp.userinfo(&renewed.access_token).await).0,
                    401,
                    "round {round}: the refreshed access token went with the device"
                );
                assert_eq!(
                    oauth_error(rp.refresh(renewed.refresh_token.as_deref().unwrap()).await),
                    (400, "invalid_grant".into()),
                    "round {round}: so did its refresh token"
                );
            }
            Err(refused) => assert_eq!(
                oauth_error(Err::<(), _>(refused)),
                (400, "invalid_grant".into()),
                "round {round}"
            ),
        }
    }
}
