//! End to end: OIDC redirect MFA. A relying party sends the browser to `/oidc/authorize` with a
//! request object it signed (carrying `login_hint`, PKCE S256, `state`, `nonce`); the server
//! starts a flow bound to the browser by a cookie; the flow is approved by push through the real
//! device core (driven with the customer API's flow actions, which the hosted prompt will do);
//! the browser comes back to the resume URL and is sent to the redirect URI with a code; the
//! relying party exchanges it for tokens and verifies the ID token against the JWKS. Plus:
//! denial, a code used twice (and twice at once), PKCE, unregistered redirect URIs, request
//! objects not signed by the client, `prompt=none`, `max_age`, other browsers, a pending flow,
//! expired codes on a manual clock. SQLite and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tessera_examples::relying_party::{
    AuthorizationStart, ClientCredentials, RelyingParty, RpError, RpSigningKey,
};
use tessera_protocol::ciba::{ClientAuthMethod, DeliveryMode, GrantType, RegisterCibaClient};
use tessera_protocol::flows::{FlowAction, FlowState, FlowStatus};
use tessera_server::ManualClock;
use tessera_tests::{Backend, TestDevice, TestServer, on_each_backend};

on_each_backend! {
    a_redirect_sign_in_approved_by_push_yields_a_verified_id_token => sign_in;
    a_denied_push_goes_back_as_access_denied_with_the_state => denial;
    a_code_used_twice_is_refused_and_revokes_its_tokens => code_twice;
    one_code_redeemed_twice_at_once_issues_tokens_once => concurrent_redemption;
    pkce_is_s256_only_and_the_verifier_must_match => pkce;
    an_unregistered_redirect_uri_gets_a_plain_page_never_a_redirect => unregistered_redirect;
    request_objects_must_be_signed_by_the_client => unsigned_requests;
    prompt_max_age_and_parameter_conflicts => prompt_and_max_age;
    the_resume_needs_the_browser_that_started_and_a_finished_flow => other_browser;
    codes_expire_after_a_minute => expired_code;
    clients_use_only_their_registered_grants => grants;
    a_client_with_a_secret_signs_its_request_objects_with_hmac => hmac_request_objects;
}

const REDIRECT: &str = "https://rp.example/callback";

/// The browser: follows nothing by itself, keeps the cookies it is given.
struct Browser {
    http: reqwest::Client,
    cookies: Vec<(String, String)>,
}

/// One answer: status, `Location`, `Set-Cookie` headers, body.
struct Answer {
    status: u16,
    location: Option<String>,
    set_cookies: Vec<String>,
    body: String,
}

impl Browser {
    fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: Vec::new(),
        }
    }

    async fn get(&mut self, url: &str) -> Answer {
        let request = self.http.get(url);
        self.send(request).await
    }

    /// A form post (an authorization request sent by an auto-submitting form).
    async fn post_form(&mut self, url: &str, body: String) -> Answer {
        let request = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.send(request).await
    }

    async fn send(&mut self, mut request: reqwest::RequestBuilder) -> Answer {
        if !self.cookies.is_empty() {
            let header: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            request = request.header("cookie", header.join("; "));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        let set_cookies: Vec<String> = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        for cookie in &set_cookies {
            let pair = cookie.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            self.cookies.retain(|(name, _)| name != k);
            self.cookies.push((k.to_string(), v.to_string()));
        }
        let body = response.text().await.unwrap();
        Answer {
            status,
            location,
            set_cookies,
            body,
        }
    }
}

/// The query parameters of a URL.
fn query(url: &str) -> Vec<(String, String)> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param(url: &str, name: &str) -> Option<String> {
    query(url)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The flow id and return URL of the hosted prompt the browser was sent to, as the page reads
/// them: `GET /v1/flow-browser` with the browser token from the location's fragment.
async fn prompt_parts(location: &str) -> (String, String) {
    let (page, token) = location.split_once('#').unwrap();
    let base = page.strip_suffix("/prompt").unwrap();
    let state: Value = reqwest::Client::new()
        .get(format!("{base}/v1/flow-browser"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        state["flow_id"].as_str().unwrap().to_string(),
        state["return_url"].as_str().unwrap().to_string(),
    )
}

struct Setup {
    server: TestServer,
    device: TestDevice,
    enrollment: tessera_protocol::ids::EnrollmentId,
    rp: RelyingParty,
    key: RpSigningKey,
}

fn registration(key: &RpSigningKey) -> RegisterCibaClient {
    registration_with(key, ClientAuthMethod::PrivateKeyJwt)
}

fn registration_with(key: &RpSigningKey, method: ClientAuthMethod) -> RegisterCibaClient {
    RegisterCibaClient {
        client_name: "Example Portal".into(),
        backchannel_token_delivery_mode: DeliveryMode::Poll,
        backchannel_client_notification_endpoint: None,
        token_endpoint_auth_method: method,
        jwks: Some(key.jwks()),
        backchannel_authentication_request_signing_alg: None,
        backchannel_user_code_parameter: false,
        redirect_uris: vec![REDIRECT.into(), "http://127.0.0.1:9/cb".into()],
        grant_types: Vec::new(),
    }
}

async fn register(server: &TestServer, key: &RpSigningKey) -> RelyingParty {
    register_with(server, key, ClientAuthMethod::PrivateKeyJwt).await
}

/// Registers a redirect MFA client authenticating at the token endpoint with `method`.
async fn register_with(
    server: &TestServer,
    key: &RpSigningKey,
    method: ClientAuthMethod,
) -> RelyingParty {
    let registered = server
        .customer
        .register_ciba_client(&registration_with(key, method))
        .await
        .unwrap();
    assert!(
        registered
            .client
            .grant_types
            .contains(&GrantType::AuthorizationCode)
    );
    assert_eq!(registered.client.redirect_uris[0], REDIRECT);
    let credentials = match method {
        ClientAuthMethod::PrivateKeyJwt => ClientCredentials::PrivateKeyJwt(key.clone()),
        ClientAuthMethod::ClientSecretBasic => {
            ClientCredentials::SecretBasic(registered.client_secret.unwrap())
        }
        ClientAuthMethod::ClientSecretPost => {
            ClientCredentials::SecretPost(registered.client_secret.unwrap())
        }
    };
    RelyingParty::discover(&server.base_url, &registered.client_id, credentials)
        .await
        .unwrap()
}

async fn setup_with(backend: Backend, clock: Option<ManualClock>) -> Setup {
    let server = TestServer::start_with(backend, |c| {
        if let Some(clock) = clock {
            c.clock = Arc::new(clock);
        }
        c.max_pending_authentications_per_user = 20;
    })
    .await;
    server
        .customer
        .create_user("alice", Some("Alice Example"))
        .await
        .unwrap();
    let device = TestDevice::new().await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap()
        .enrollment_id;
    let key = RpSigningKey::generate();
    // A secret (not a client assertion, which is dated by the relying party's own clock): tests
    // on a manual clock move the server's time only.
    let rp = register_with(&server, &key, ClientAuthMethod::ClientSecretBasic).await;
    Setup {
        server,
        device,
        enrollment,
        rp,
        key,
    }
}

async fn setup(backend: Backend) -> Setup {
    setup_with(backend, None).await
}

/// The authorize step: the browser is sent to the prompt with the binding cookie.
async fn authorize(
    s: &Setup,
    browser: &mut Browser,
    extra: Value,
) -> (AuthorizationStart, String, String) {
    let start =
        s.rp.authorization_url(&s.key, REDIRECT, "alice", extra)
            .unwrap();
    let answer = browser.get(&start.url).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    let location = answer.location.unwrap();
    assert!(location.starts_with(&format!("{}/prompt#", s.server.base_url)));
    let (flow_id, return_url) = prompt_parts(&location).await;
    (start, flow_id, return_url)
}

/// Drives the flow as the prompt would: `authenticate` (a push), then the phone answers.
async fn answer_push(s: &Setup, flow_id: &str, approve: bool) -> FlowState {
    let waiting = s
        .server
        .customer
        .flow_action(
            flow_id,
            &FlowAction::Authenticate {
                mobile_payload: None,
                authorization_payload: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(waiting.status, FlowStatus::PushConfirmationWaiting);
    let push = waiting.push.unwrap();
    let incoming = s
        .device
        .pull_request(&s.enrollment, &push.authentication_id)
        .await;
    if approve {
        s.device
            .auth
            .approve(&incoming, vec!["fpt".into()], push.number_to_show)
            .await
            .unwrap();
    } else {
        s.device.auth.deny(&incoming, false).await.unwrap();
    }
    let done = s
        .server
        .customer
        .flow_action(flow_id, &FlowAction::Poll { wait: Some(10) })
        .await
        .unwrap();
    assert!(
        matches!(
            done.status,
            FlowStatus::MfaCompleted | FlowStatus::MfaFailed
        ),
        "{done:?}"
    );
    done
}

/// Authorize, approve, resume: the redirect to the client with the code.
async fn signed_in(
    s: &Setup,
    browser: &mut Browser,
    extra: Value,
) -> (AuthorizationStart, String, String) {
    let (start, flow_id, return_url) = authorize(s, browser, extra).await;
    answer_push(s, &flow_id, true).await;
    let back = browser.get(&return_url).await;
    assert_eq!(back.status, 303, "{}", back.body);
    let location = back.location.unwrap();
    assert!(location.starts_with(&format!("{REDIRECT}?")), "{location}");
    let code = param(&location, "code").expect("a code");
    (start, code, flow_id)
}

fn oauth_error<T: std::fmt::Debug>(result: Result<T, RpError>) -> (u16, String, String) {
    match result {
        Err(RpError::OAuth {
            status,
            error,
            description,
        }) => (status, error, description),
        other => panic!("expected an OAuth error, got {other:?}"),
    }
}

/// An error sent back to the redirect URI: (error, description), with `state` and `iss`.
fn redirected_error(s: &Setup, answer: &Answer, state: Option<&str>) -> (String, String) {
    assert_eq!(answer.status, 303, "{}", answer.body);
    let location = answer.location.clone().unwrap();
    assert!(location.starts_with(&format!("{REDIRECT}?")), "{location}");
    assert_eq!(param(&location, "state").as_deref(), state);
    assert_eq!(
        param(&location, "iss").as_deref(),
        Some(s.server.base_url.as_str())
    );
    assert_eq!(param(&location, "code"), None);
    (
        param(&location, "error").unwrap(),
        param(&location, "error_description").unwrap(),
    )
}

/// A plain error page: no redirect anywhere.
fn plain_page(answer: &Answer, status: u16) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert!(answer.location.is_none());
    assert!(
        answer.body.contains("<h1>Sign-in error</h1>"),
        "{}",
        answer.body
    );
}

async fn sign_in(backend: Backend) {
    let s = setup(backend).await;
    let doc = &s.rp.provider.document;
    assert_eq!(
        doc["authorization_endpoint"],
        json!(format!("{}/oidc/authorize", s.server.base_url))
    );
    assert_eq!(doc["response_types_supported"], json!(["code"]));
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(doc["request_parameter_supported"], json!(true));
    assert_eq!(
        doc["authorization_response_iss_parameter_supported"],
        json!(true)
    );
    assert!(
        doc["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("authorization_code"))
    );
    assert!(
        doc["acr_values_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("mfa"))
    );
    assert!(
        doc["claims_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("auth_context"))
    );
    assert!(
        doc["ui_locales_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("en"))
    );
    let algs = doc["request_object_signing_alg_values_supported"]
        .as_array()
        .unwrap();
    assert!(algs.contains(&json!("ES256")) && !algs.contains(&json!("none")));

    let mut browser = Browser::new();
    let start = s
        .rp
        .authorization_url(
            &s.key,
            REDIRECT,
            "alice",
            json!({"scope": "openid profile", "acr_values": "mfa", "ui_locales": "fr en", "max_age": 300}),
        )
        .unwrap();
    let first = browser.get(&start.url).await;
    assert_eq!(first.status, 303, "{}", first.body);
    // The binding cookie: __Host- prefixed, HttpOnly, Secure (loopback counts as secure),
    // SameSite=Lax, the whole site's path.
    assert_eq!(first.set_cookies.len(), 1);
    let cookie = &first.set_cookies[0];
    assert!(cookie.starts_with("__Host-tessera-authorize="), "{cookie}");
    for attribute in ["Path=/", "HttpOnly", "SameSite=Lax", "Secure"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    let (flow_id, return_url) = prompt_parts(&first.location.unwrap()).await;
    assert!(return_url.starts_with(&format!(
        "{}/oidc/authorize/resume?request=",
        s.server.base_url
    )));

    // The flow is the section 1 flow, for alice, named after the client.
    let flow = s.server.customer.flow(&flow_id).await.unwrap();
    assert_eq!(flow.status, FlowStatus::AuthenticationRequired);
    assert_eq!(flow.user_id.as_ref().map(|u| u.as_str()), Some("alice"));

    // Coming back before the flow ends: a page, nothing issued.
    let early = browser.get(&return_url).await;
    plain_page(&early, 409);

    answer_push(&s, &flow_id, true).await;
    let back = browser.get(&return_url).await;
    assert_eq!(back.status, 303, "{}", back.body);
    let location = back.location.unwrap();
    assert!(location.starts_with(&format!("{REDIRECT}?")));
    assert_eq!(
        param(&location, "state").as_deref(),
        Some(start.state.as_str())
    );
    assert_eq!(
        param(&location, "iss").as_deref(),
        Some(s.server.base_url.as_str())
    );
    let code = param(&location, "code").unwrap();

    // Once: the same browser coming back again gets a page, not a second code.
    let again = browser.get(&return_url).await;
    plain_page(&again, 409);

    let tokens =
        s.rp.exchange_code(&code, REDIRECT, &start.code_verifier)
            .await
            .unwrap();
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.scope, "openid profile");
    let claims = s.rp.verify_id_token(&tokens.id_token).await.unwrap();
    let app = s.server.app.application_id.as_str();
    assert_eq!(claims["iss"], json!(s.server.base_url));
    assert_eq!(claims["aud"], json!(s.rp.client_id));
    assert_eq!(claims["sub"], json!(format!("{app}:alice")));
    assert_eq!(claims["nonce"], json!(start.nonce));
    assert_eq!(claims["acr"], json!("mfa"));
    let amr: Vec<String> = serde_json::from_value(claims["amr"].clone()).unwrap();
    assert!(
        amr.contains(&"mfa".to_string()) && amr.contains(&"fpt".to_string()),
        "{amr:?}"
    );
    let now = tessera_protocol::time::now();
    let auth_time = claims["auth_time"].as_i64().unwrap();
    assert!(
        (now - 60..=now + 1).contains(&auth_time),
        "{auth_time} vs {now}"
    );
    assert!(claims["exp"].as_i64().unwrap() > now);
    assert!(claims["at_hash"].is_string());
    assert_eq!(claims["preferred_username"], json!("alice"));
    assert_eq!(claims["flow_status"], json!("MFA_COMPLETED"));
    assert_eq!(claims["flow_result"], json!("authenticated"));
    assert_eq!(
        claims["auth_result"],
        json!({"result": "allow", "status": "allow", "status_msg": "Login Successful"})
    );
    let context = &claims["auth_context"];
    assert_eq!(context["txid"], json!(flow_id));
    assert_eq!(context["timestamp"], json!(auth_time));
    assert_eq!(
        context["user"],
        json!({"name": "alice", "key": format!("{app}:alice")})
    );
    assert_eq!(
        context["application"],
        json!({"name": "Example Portal", "key": s.rp.client_id})
    );
    assert_eq!(context["factor"], json!("push"));
    assert_eq!(context["reason"], json!("user_approved"));
    assert_eq!(context["result"], json!("success"));
    assert_eq!(context["event_type"], json!("authentication"));
    assert_eq!(context["access_device"]["ip"], json!("127.0.0.1"));
    assert_eq!(context["auth_device"]["ip"], json!("127.0.0.1"));
    assert!(context["auth_device"]["name"].is_string());
    assert!(context["auth_device"]["location"].is_object());

    // userinfo agrees with the ID token.
    let info = s.rp.userinfo(&tokens.access_token).await.unwrap();
    for name in [
        "sub",
        "acr",
        "amr",
        "auth_time",
        "auth_result",
        "auth_context",
        "flow_status",
    ] {
        assert_eq!(info[name], claims[name], "{name}");
    }
    assert_eq!(info["name"], json!("Alice Example"));
}

async fn denial(backend: Backend) {
    let s = setup(backend).await;
    let mut browser = Browser::new();
    let (start, flow_id, return_url) = authorize(&s, &mut browser, json!({})).await;
    let rejected = answer_push(&s, &flow_id, false).await;
    // A hosted flow ends with the denial, so the page can take the answer back at once.
    assert_eq!(rejected.status, FlowStatus::MfaFailed);
    let back = browser.get(&return_url).await;
    let (error, description) = redirected_error(&s, &back, Some(&start.state));
    assert_eq!(error, "access_denied");
    assert!(description.starts_with("denied:"), "{description}");
    // Once.
    plain_page(&browser.get(&return_url).await, 409);

    // A sign-in canceled at the prompt goes back as canceled; before it ends, the resume
    // says the sign-in is not over.
    let (start, flow_id, return_url) = authorize(&s, &mut browser, json!({})).await;
    plain_page(&browser.get(&return_url).await, 409);
    let canceled = s
        .server
        .customer
        .flow_action(&flow_id, &FlowAction::CancelAuthentication {})
        .await
        .unwrap();
    assert_eq!(canceled.status, FlowStatus::Canceled);
    let back = browser.get(&return_url).await;
    let (error, description) = redirected_error(&s, &back, Some(&start.state));
    assert_eq!(error, "access_denied");
    assert!(description.starts_with("canceled:"), "{description}");
}

async fn code_twice(backend: Backend) {
    let s = setup(backend).await;
    let mut browser = Browser::new();
    let (start, code, _) =
        signed_in(&s, &mut browser, json!({"scope": "openid offline_access"})).await;
    let tokens =
        s.rp.exchange_code(&code, REDIRECT, &start.code_verifier)
            .await
            .unwrap();
    let refresh = tokens.refresh_token.clone().expect("offline_access");
    s.rp.userinfo(&tokens.access_token).await.unwrap();
    let (status, error, description) = oauth_error(
        s.rp.exchange_code(&code, REDIRECT, &start.code_verifier)
            .await,
    );
    assert_eq!((status, error.as_str()), (400, "invalid_grant"));
    assert!(description.contains("already used"), "{description}");
    // Everything issued from the code is revoked.
    let (status, error, _) = oauth_error(s.rp.userinfo(&tokens.access_token).await);
    assert_eq!((status, error.as_str()), (401, "invalid_token"));
    let (_, error, _) = oauth_error(s.rp.refresh(&refresh).await);
    assert_eq!(error, "invalid_grant");
}

async fn concurrent_redemption(backend: Backend) {
    let s = setup(backend).await;
    let mut browser = Browser::new();
    let (start, code, _) = signed_in(&s, &mut browser, json!({})).await;
    let rp = Arc::new(s.rp);
    let attempts: Vec<_> = (0..6)
        .map(|_| {
            let rp = rp.clone();
            let code = code.clone();
            let verifier = start.code_verifier.clone();
            tokio::spawn(async move { rp.exchange_code(&code, REDIRECT, &verifier).await })
        })
        .collect();
    let mut won = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => assert_eq!(e.error(), Some("invalid_grant"), "{e}"),
        }
    }
    assert_eq!(won, 1, "exactly one redemption wins");
}

async fn pkce(backend: Backend) {
    let s = setup(backend).await;
    let mut browser = Browser::new();
    // `plain` and a missing challenge are refused at the authorization endpoint.
    let plain =
        s.rp.authorization_url(
            &s.key,
            REDIRECT,
            "alice",
            json!({"code_challenge": "x".repeat(43), "code_challenge_method": "plain"}),
        )
        .unwrap();
    let answer = browser.get(&plain.url).await;
    let (error, description) = redirected_error(&s, &answer, Some(&plain.state));
    assert_eq!(error, "invalid_request");
    assert!(description.contains("plain"), "{description}");
    let missing =
        s.rp.authorization_url(&s.key, REDIRECT, "alice", json!({"code_challenge": null}))
            .unwrap();
    let (error, _) = redirected_error(&s, &browser.get(&missing.url).await, Some(&missing.state));
    assert_eq!(error, "invalid_request");

    // A verifier that does not match is refused; the right one still works.
    let (start, code, _) = signed_in(&s, &mut browser, json!({})).await;
    let wrong = format!("{}x", start.code_verifier);
    let (_, error, description) = oauth_error(s.rp.exchange_code(&code, REDIRECT, &wrong).await);
    assert_eq!(error, "invalid_grant");
    assert!(description.contains("code_verifier"), "{description}");
    let (_, error, _) = oauth_error(
        s.rp.exchange_code(&code, "http://127.0.0.1:9/cb", &start.code_verifier)
            .await,
    );
    assert_eq!(error, "invalid_grant", "another registered redirect URI");
    s.rp.exchange_code(&code, REDIRECT, &start.code_verifier)
        .await
        .unwrap();
}

async fn unregistered_redirect(backend: Backend) {
    let s = setup(backend).await;
    let mut browser = Browser::new();
    for uri in [
        "https://evil.example/callback",
        "https://rp.example/callback/",
        "https://rp.example/callback?x=1",
        "https://RP.example/callback",
    ] {
        let start =
            s.rp.authorization_url(&s.key, uri, "alice", json!({}))
                .unwrap();
        let answer = browser.get(&start.url).await;
        plain_page(&answer, 400);
        assert!(answer.body.contains("not registered"), "{}", answer.body);
        assert!(answer.set_cookies.is_empty());
    }
    // A redirect_uri outside the request object that differs from the inside one.
    let start =
        s.rp.authorization_url(&s.key, REDIRECT, "alice", json!({}))
            .unwrap();
    let tampered = format!(
        "{}&redirect_uri={}",
        start.url, "https%3A%2F%2Fevil.example%2Fcb"
    );
    plain_page(&browser.get(&tampered).await, 400);
}

async fn unsigned_requests(backend: Backend) {
    let s = setup(backend).await;
    let mut browser = Browser::new();
    let endpoint = s.rp.authorization_endpoint().unwrap();
    // No request object at all: the plain parameters are not accepted.
    let bare = format!(
        "{endpoint}?client_id={}&response_type=code&scope=openid&redirect_uri={}&login_hint=alice",
        s.rp.client_id,
        url::form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>()
    );
    plain_page(&browser.get(&bare).await, 400);
    // Signed with a key the client did not register.
    let stranger = RpSigningKey::generate();
    let forged =
        s.rp.authorization_url(&stranger, REDIRECT, "alice", json!({}))
            .unwrap();
    let answer = browser.get(&forged.url).await;
    plain_page(&answer, 400);
    assert!(
        answer.body.contains("not signed by this client"),
        "{}",
        answer.body
    );
    // Signed by another registered client, presented as this one.
    let other_key = RpSigningKey::generate();
    let other = register(&s.server, &other_key).await;
    let borrowed =
        s.rp.authorization_url(&other_key, REDIRECT, "alice", json!({}))
            .unwrap();
    plain_page(&browser.get(&borrowed.url).await, 400);
    // The other client's own request naming this client inside.
    let confused = other
        .authorization_url(
            &other_key,
            REDIRECT,
            "alice",
            json!({"client_id": s.rp.client_id}),
        )
        .unwrap();
    plain_page(&browser.get(&confused.url).await, 400);
    // alg none.
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none"})),
        b64(&json!({"iss": s.rp.client_id, "client_id": s.rp.client_id, "redirect_uri": REDIRECT}))
    );
    let url = format!("{endpoint}?client_id={}&request={none}", s.rp.client_id);
    plain_page(&browser.get(&url).await, 400);
    // A request object replayed (same jti) is refused at the redirect URI.
    let start =
        s.rp.authorization_url(&s.key, REDIRECT, "alice", json!({}))
            .unwrap();
    assert_eq!(browser.get(&start.url).await.status, 303);
    let (error, _) = redirected_error(&s, &browser.get(&start.url).await, Some(&start.state));
    assert_eq!(error, "invalid_request_object");
    // Expired, or for another audience.
    for extra in [
        json!({"exp": tessera_protocol::time::now() - 1}),
        json!({"aud": "https://other.example"}),
    ] {
        let start =
            s.rp.authorization_url(&s.key, REDIRECT, "alice", extra)
                .unwrap();
        let (error, _) = redirected_error(&s, &browser.get(&start.url).await, Some(&start.state));
        assert_eq!(error, "invalid_request_object");
    }
}

async fn prompt_and_max_age(backend: Backend) {
    let s = setup(backend).await;
    let mut browser = Browser::new();
    let none =
        s.rp.authorization_url(&s.key, REDIRECT, "alice", json!({"prompt": "none"}))
            .unwrap();
    let (error, _) = redirected_error(&s, &browser.get(&none.url).await, Some(&none.state));
    assert_eq!(error, "login_required");
    let bad_age =
        s.rp.authorization_url(&s.key, REDIRECT, "alice", json!({"max_age": "soon"}))
            .unwrap();
    let (error, _) = redirected_error(&s, &browser.get(&bad_age.url).await, Some(&bad_age.state));
    assert_eq!(error, "invalid_request");
    let no_openid =
        s.rp.authorization_url(&s.key, REDIRECT, "alice", json!({"scope": "profile"}))
            .unwrap();
    let (error, _) = redirected_error(
        &s,
        &browser.get(&no_openid.url).await,
        Some(&no_openid.state),
    );
    assert_eq!(error, "invalid_scope");
    let token =
        s.rp.authorization_url(&s.key, REDIRECT, "alice", json!({"response_type": "token"}))
            .unwrap();
    let (error, _) = redirected_error(&s, &browser.get(&token.url).await, Some(&token.state));
    assert_eq!(error, "unsupported_response_type");
    let nobody =
        s.rp.authorization_url(&s.key, REDIRECT, "mallory", json!({}))
            .unwrap();
    let (error, _) = redirected_error(&s, &browser.get(&nobody.url).await, Some(&nobody.state));
    assert_eq!(error, "invalid_request");
    // A parameter outside the request object that conflicts with it.
    let start =
        s.rp.authorization_url(&s.key, REDIRECT, "alice", json!({}))
            .unwrap();
    let conflict = format!("{}&login_hint=bob", start.url);
    let (error, description) =
        redirected_error(&s, &browser.get(&conflict).await, Some(&start.state));
    assert_eq!(error, "invalid_request");
    assert!(description.contains("login_hint"), "{description}");

    // The same request as a POST form (OpenID Connect Core §3.1.2.1) is accepted; a POST
    // that is not a form is a plain page.
    let start =
        s.rp.authorization_url(&s.key, REDIRECT, "alice", json!({}))
            .unwrap();
    let (endpoint, form) = start.url.split_once('?').unwrap();
    let posted = browser.post_form(endpoint, form.to_string()).await;
    assert_eq!(posted.status, 303, "{}", posted.body);
    assert!(posted.location.unwrap().contains("/prompt#"));
    let mut not_form = Browser::new();
    let answer = not_form
        .send(not_form.http.post(endpoint).body(form.to_string()))
        .await;
    plain_page(&answer, 400);

    // prompt=login and max_age=0 are honoured: every sign-in asks afresh, auth_time is given.
    let (start, code, _) =
        signed_in(&s, &mut browser, json!({"prompt": "login", "max_age": 0})).await;
    let tokens =
        s.rp.exchange_code(&code, REDIRECT, &start.code_verifier)
            .await
            .unwrap();
    let claims = s.rp.verify_id_token(&tokens.id_token).await.unwrap();
    assert!(claims["auth_time"].as_i64().unwrap() >= tessera_protocol::time::now() - 60);

    // acr_values asking for the device key: the flow offers no passcode fallback, and the
    // push approval reaches that class.
    let (start, code, flow_id) = signed_in(
        &s,
        &mut browser,
        json!({"acr_values": "urn:tessera:acr:device-key mfa"}),
    )
    .await;
    let flow = s.server.customer.flow(&flow_id).await.unwrap();
    assert_eq!(flow.status, FlowStatus::MfaCompleted);
    let tokens =
        s.rp.exchange_code(&code, REDIRECT, &start.code_verifier)
            .await
            .unwrap();
    let claims = s.rp.verify_id_token(&tokens.id_token).await.unwrap();
    assert_eq!(claims["acr"], json!("urn:tessera:acr:device-key"));
}

async fn other_browser(backend: Backend) {
    let s = setup(backend).await;
    let mut browser = Browser::new();
    let (start, flow_id, return_url) = authorize(&s, &mut browser, json!({})).await;
    answer_push(&s, &flow_id, true).await;
    // Without the cookie.
    let mut stranger = Browser::new();
    plain_page(&stranger.get(&return_url).await, 403);
    // With another browser's cookie (one that started a sign-in of its own).
    let mut attacker = Browser::new();
    authorize(&s, &mut attacker, json!({})).await;
    assert_eq!(attacker.cookies.len(), 1);
    plain_page(&attacker.get(&return_url).await, 403);
    // Unknown request ids.
    let unknown = format!("{}/oidc/authorize/resume?request=azr_0", s.server.base_url);
    plain_page(&browser.get(&unknown).await, 400);
    // None of that consumed the sign-in: the right browser, many times at once, gets one code.
    let browsers: Vec<_> = (0..5)
        .map(|_| {
            let mut copy = Browser::new();
            copy.cookies = browser.cookies.clone();
            let url = return_url.clone();
            tokio::spawn(async move {
                let mut copy = copy;
                copy.get(&url).await
            })
        })
        .collect();
    let mut codes = Vec::new();
    for b in browsers {
        let answer = b.await.unwrap();
        match answer.status {
            303 => codes.push(param(&answer.location.unwrap(), "code").unwrap()),
            409 => {}
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    assert_eq!(codes.len(), 1, "one resume wins");
    s.rp.exchange_code(&codes[0], REDIRECT, &start.code_verifier)
        .await
        .unwrap();
}

async fn expired_code(backend: Backend) {
    let clock = ManualClock::new();
    let s = setup_with(backend, Some(clock.clone())).await;
    let mut browser = Browser::new();
    let (start, code, _) = signed_in(&s, &mut browser, json!({})).await;
    clock.advance(Duration::from_secs(61));
    let (_, error, description) = oauth_error(
        s.rp.exchange_code(&code, REDIRECT, &start.code_verifier)
            .await,
    );
    assert_eq!(error, "invalid_grant");
    assert!(description.contains("expired"), "{description}");
    // Within the minute, a code works.
    let (start, code, _) = signed_in(&s, &mut browser, json!({})).await;
    clock.advance(Duration::from_secs(59));
    s.rp.exchange_code(&code, REDIRECT, &start.code_verifier)
        .await
        .unwrap();
}

async fn grants(backend: Backend) {
    let s = setup(backend).await;
    // A client registered for the authorization code grant only cannot start CIBA requests.
    let key = RpSigningKey::generate();
    let mut reg = registration(&key);
    reg.grant_types = vec![GrantType::AuthorizationCode];
    let registered = s.server.customer.register_ciba_client(&reg).await.unwrap();
    let rp = RelyingParty::discover(
        &s.server.base_url,
        &registered.client_id,
        ClientCredentials::PrivateKeyJwt(key.clone()),
    )
    .await
    .unwrap();
    let (_, error, _) = oauth_error(
        rp.backchannel(&[("scope", "openid"), ("login_hint", "alice")])
            .await,
    );
    assert_eq!(error, "unauthorized_client");
    // Registrations that ask for the code grant without redirect URIs (or the reverse), or
    // with redirect URIs that are not https, are refused.
    let mut bad = registration(&key);
    bad.redirect_uris = Vec::new();
    bad.grant_types = vec![GrantType::AuthorizationCode];
    assert!(s.server.customer.register_ciba_client(&bad).await.is_err());
    let mut bad = registration(&key);
    bad.grant_types = vec![GrantType::Ciba];
    assert!(s.server.customer.register_ciba_client(&bad).await.is_err());
    let mut bad = registration(&key);
    bad.redirect_uris = vec!["http://rp.example/cb".into()];
    assert!(s.server.customer.register_ciba_client(&bad).await.is_err());
    // A CIBA-only client (registered the old way) has no redirect URI to be sent to.
    let mut old = registration(&key);
    old.redirect_uris = Vec::new();
    let old = s.server.customer.register_ciba_client(&old).await.unwrap();
    assert_eq!(
        old.client.grant_types,
        vec![GrantType::Ciba, GrantType::RefreshToken]
    );
    let old_rp = RelyingParty::discover(
        &s.server.base_url,
        &old.client_id,
        ClientCredentials::PrivateKeyJwt(key.clone()),
    )
    .await
    .unwrap();
    let start = old_rp
        .authorization_url(&key, REDIRECT, "alice", json!({}))
        .unwrap();
    plain_page(&Browser::new().get(&start.url).await, 400);
    let (_, error, _) = oauth_error(old_rp.exchange_code("x", REDIRECT, "y").await);
    assert_eq!(error, "unauthorized_client");
}

async fn hmac_request_objects(backend: Backend) {
    let s = setup(backend).await;
    // Registered with a secret and no keys, like a Duo client: its request objects are HS512.
    let key = RpSigningKey::generate();
    let mut reg = registration_with(&key, ClientAuthMethod::ClientSecretPost);
    reg.jwks = None;
    let registered = s.server.customer.register_ciba_client(&reg).await.unwrap();
    let secret = registered.client_secret.clone().unwrap();
    let rp = RelyingParty::discover(
        &s.server.base_url,
        &registered.client_id,
        ClientCredentials::SecretPost(secret.clone()),
    )
    .await
    .unwrap();
    let mut browser = Browser::new();
    let start = rp
        .authorization_url_with_secret(&secret, REDIRECT, "alice", json!({}))
        .unwrap();
    let first = browser.get(&start.url).await;
    assert_eq!(first.status, 303, "{}", first.body);
    let (flow_id, return_url) = prompt_parts(&first.location.unwrap()).await;
    answer_push(&s, &flow_id, true).await;
    let back = browser.get(&return_url).await;
    let code = param(&back.location.unwrap(), "code").unwrap();
    let tokens = rp
        .exchange_code(&code, REDIRECT, &start.code_verifier)
        .await
        .unwrap();
    let claims = rp.verify_id_token(&tokens.id_token).await.unwrap();
    assert_eq!(claims["nonce"], json!(start.nonce));
    // Another secret (this client's former one, or another client's) does not sign for it.
    let forged = rp
        .authorization_url_with_secret(&format!("{secret}x"), REDIRECT, "alice", json!({}))
        .unwrap();
    let answer = browser.get(&forged.url).await;
    plain_page(&answer, 400);
    assert!(
        answer.body.contains("not signed by this client"),
        "{}",
        answer.body
    );
    // A client without a secret (private_key_jwt) cannot be impersonated with HMAC: the
    // server holds nothing to verify one with (and never uses a public key as a secret).
    let pk_key = RpSigningKey::generate();
    let pk = register(&s.server, &pk_key).await;
    let hs = pk
        .authorization_url_with_secret("guess", REDIRECT, "alice", json!({}))
        .unwrap();
    plain_page(&browser.get(&hs.url).await, 400);
}
