//! End to end: the FCM HTTP v1 and APNs push providers against local receivers that check the
//! exact requests (the OAuth2 JWT-bearer assertion, the APNs provider token, HTTP/2, headers,
//! bodies, sizes) and answer as the real services do. What the receivers get is handed to the
//! device core's `handle_push`, and the answer comes back to the server.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use tessera_core::PushOutcome;
use tessera_protocol::authentication::{
    AuthenticationId, AuthenticationKind, AuthenticationState, DisplayField,
};
use tessera_protocol::ids::EnrollmentId;
use tessera_protocol::pairing::PushRegistration;
use tessera_server::ApnsEnvironment;
use tessera_tests::{
    Backend, TestDevice, TestServer, ask, device_config, on_each_backend, payment,
};

on_each_backend! {
    fcm_push_reaches_the_device_and_the_answer_comes_back => fcm_round_trip;
    fcm_unregistered_token_goes_stale_until_the_device_registers_a_new_one => fcm_stale_token;
    fcm_transient_failures_are_retried_and_a_refused_access_token_is_renewed => fcm_retries;
    apns_push_reaches_the_device_and_the_answer_comes_back => apns_round_trip;
    apns_expired_provider_token_is_renewed_and_unregistered_tokens_go_stale => apns_refresh_and_stale;
}

/// A test-only RSA key (see `tests/fixtures/README.md`).
const RSA_KEY: &str = include_str!("../../fixtures/test-only-fcm-rsa-key.pem");
const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const PROJECT: &str = "tessera-test";
const CLIENT_EMAIL: &str = "push@tessera-test.iam.gserviceaccount.com";
const FCM_KEY_ID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0aabbccdd";

fn now() -> i64 {
    tessera_protocol::time::now()
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn push_state(server: &TestServer, id: &AuthenticationId) -> (String, i64) {
    let db = server.server.database();
    for _ in 0..200 {
        let state = tessera_server::store::authentications::push_state(db, id)
            .await
            .unwrap()
            .unwrap();
        if state.0 != "none" || state.1 > 0 {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the push outcome was never recorded");
}

async fn stale_flag(server: &TestServer) -> bool {
    let devices = server.customer.list_devices("alice").await.unwrap().devices;
    devices[0].push_token_stale
}

fn big_transaction() -> tessera_protocol::api::CreateAuthenticationRequest {
    let mut big = payment();
    big.fields = (0..20)
        .map(|i| DisplayField {
            label: format!("Line {i}"),
            value: "x".repeat(200),
        })
        .collect();
    big
}

// ---------------------------------------------------------------------------------------------
// A fake FCM: Google's OAuth2 token endpoint and the FCM HTTP v1 send endpoint.

#[derive(Clone)]
struct Fcm(Arc<FcmInner>);

struct FcmInner {
    token_uri: Mutex<String>,
    public_key: DecodingKey,
    issued: Mutex<Vec<String>>,
    valid: Mutex<HashSet<String>>,
    /// (bearer token, body, size of `data` in bytes).
    sends: Mutex<Vec<(String, Value, usize)>>,
    script: Mutex<VecDeque<u16>>,
    problems: Mutex<Vec<String>>,
}

impl Fcm {
    fn problem(&self, p: impl Into<String>) {
        self.0.problems.lock().unwrap().push(p.into());
    }
    fn sends(&self) -> Vec<(String, Value, usize)> {
        self.0.sends.lock().unwrap().clone()
    }
    fn tokens_issued(&self) -> usize {
        self.0.issued.lock().unwrap().len()
    }
    fn assert_no_problems(&self) {
        let problems = self.0.problems.lock().unwrap().clone();
        assert!(problems.is_empty(), "FCM receiver problems: {problems:?}");
    }
}

async fn fcm_token(
    State(f): State<Fcm>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let refuse = |f: &Fcm, p: String| {
        f.problem(p);
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response()
    };
    if headers["content-type"] != "application/x-www-form-urlencoded" {
        return refuse(&f, "token request is not form-encoded".into());
    }
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return refuse(&f, format!("grant_type {:?}", form.get("grant_type")));
    }
    if form.len() != 2 {
        return refuse(&f, format!("unexpected form fields: {:?}", form.keys()));
    }
    let Some(assertion) = form.get("assertion") else {
        return refuse(&f, "no assertion".into());
    };
    let header = jsonwebtoken::decode_header(assertion).unwrap();
    if header.alg != Algorithm::RS256 || header.kid.as_deref() != Some(FCM_KEY_ID) {
        return refuse(&f, format!("assertion header {header:?}"));
    }
    let token_uri = f.0.token_uri.lock().unwrap().clone();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[&token_uri]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    let claims = match jsonwebtoken::decode::<Value>(assertion, &f.0.public_key, &validation) {
        Ok(data) => data.claims,
        Err(e) => return refuse(&f, format!("assertion does not verify: {e}")),
    };
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap_or(0),
        claims["exp"].as_i64().unwrap_or(0),
    );
    if claims["scope"] != FCM_SCOPE || exp - iat > 3600 || exp <= iat || (iat - now()).abs() > 60 {
        return refuse(&f, format!("assertion claims {claims}"));
    }
    let token = format!(
        "ya29.test-access-token-{}",
        f.0.issued.lock().unwrap().len() + 1
    );
    f.0.issued.lock().unwrap().push(token.clone());
    f.0.valid.lock().unwrap().insert(token.clone());
    Json(json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})).into_response()
}

async fn fcm_send(
    State(f): State<Fcm>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    if !f.0.valid.lock().unwrap().contains(&bearer) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}})),
        )
            .into_response();
    }
    if project != PROJECT {
        f.problem(format!("project {project}"));
    }
    if headers["content-type"] != "application/json" {
        f.problem("send body is not JSON");
    }
    let body: Value = serde_json::from_slice(&body).unwrap();
    let message = &body["message"];
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    if keys != ["message"] {
        f.problem(format!("body keys {keys:?}"));
    }
    let mut keys: Vec<&str> = message
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    if keys != ["android", "data", "token"] {
        f.problem(format!(
            "message keys {keys:?} (never a notification block)"
        ));
    }
    if message["android"] != json!({"priority": "high"}) {
        f.problem(format!("android {}", message["android"]));
    }
    let data = message["data"].as_object().unwrap();
    if !data.values().all(Value::is_string) {
        f.problem(format!("data values must be strings: {}", message["data"]));
    }
    let data_size: usize = data
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    if data_size > 4096 {
        f.problem(format!("data is {data_size} bytes"));
    }
    f.0.sends
        .lock()
        .unwrap()
        .push((bearer.clone(), body.clone(), data_size));
    match f.0.script.lock().unwrap().pop_front().unwrap_or(200) {
        200 => Json(json!({"name": format!("projects/{PROJECT}/messages/0:1234")})).into_response(),
        401 => {
            // The access token was revoked.
            f.0.valid.lock().unwrap().remove(&bearer);
            (StatusCode::UNAUTHORIZED, Json(json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}))).into_response()
        }
        404 => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
                "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}})),
        )
            .into_response(),
        status => (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"error": {"code": status, "message": "The service is currently unavailable.", "status": "UNAVAILABLE"}})),
        )
            .into_response(),
    }
}

fn rsa_public_key() -> DecodingKey {
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(RSA_KEY).unwrap();
    DecodingKey::from_rsa_raw_components(&key.n().to_bytes_be(), &key.e().to_bytes_be())
}

/// A server whose application pushes with FCM to a local receiver, and a device paired with
/// alice registered with an FCM token.
async fn fcm_setup(
    backend: Backend,
    script: &[u16],
) -> (TestServer, Fcm, TestDevice, EnrollmentId) {
    let fcm = Fcm(Arc::new(FcmInner {
        token_uri: Mutex::new(String::new()),
        public_key: rsa_public_key(),
        issued: Mutex::default(),
        valid: Mutex::default(),
        sends: Mutex::default(),
        script: Mutex::new(script.iter().copied().collect()),
        problems: Mutex::default(),
    }));
    let router = axum::Router::new()
        .route("/token", post(fcm_token))
        .route("/v1/projects/{project}/messages:send", post(fcm_send))
        .with_state(fcm.clone());
    let base = serve(router).await;
    let token_uri = format!("{base}/token");
    *fcm.0.token_uri.lock().unwrap() = token_uri.clone();
    let server = TestServer::start_with(backend, |c| {
        c.fcm_endpoint = base.clone();
        c.push_retry_base = Duration::from_millis(20);
    })
    .await;
    let service_account = json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": FCM_KEY_ID,
        "private_key": RSA_KEY,
        "client_email": CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "universe_domain": "googleapis.com",
    });
    let configured = tessera_server::admin::set_fcm(
        server.server.database(),
        &server.app.application_id,
        &service_account.to_string(),
    )
    .await
    .unwrap();
    let printed = serde_json::to_string(&configured).unwrap();
    assert!(printed.contains(PROJECT) && !printed.contains("PRIVATE KEY"));
    server.user("alice").await;
    let mut config = device_config("Pixel 8");
    config.push = PushRegistration::Fcm {
        token: "fcm-device-token-1".into(),
    };
    let device = TestDevice::with_config(config).await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap()
        .enrollment_id;
    (server, fcm, device, enrollment)
}

async fn fcm_round_trip(backend: Backend) {
    let (server, fcm, device, enrollment) = fcm_setup(backend, &[]).await;

    // A transaction: the data carries the signed request itself.
    let created = server
        .customer
        .create_authentication("alice", &payment())
        .await
        .unwrap();
    wait_until("the first FCM message", || !fcm.sends().is_empty()).await;
    let (bearer, body, _) = fcm.sends()[0].clone();
    assert_eq!(bearer, "ya29.test-access-token-1");
    assert_eq!(body["message"]["token"], "fcm-device-token-1");
    let data = &body["message"]["data"];
    assert_eq!(data, &json!({"request": created.signed_request}));
    // The app hands the data map to the core.
    let PushOutcome::Request(request) = device.auth.handle_push(&data.to_string()).await.unwrap()
    else {
        panic!("expected a request")
    };
    assert_eq!(request.fields[0].value, "120.00 EUR");
    device
        .auth
        .approve(&request, vec!["fpt".into()], None)
        .await
        .unwrap();
    let status = server
        .customer
        .authentication(&created.authentication_id, 5)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);
    assert_eq!(
        push_state(&server, &created.authentication_id).await,
        ("sent".to_string(), 1)
    );

    // Too large for FCM's data: the id only, as strings; the core pulls the request.
    let created = server
        .customer
        .create_authentication("alice", &big_transaction())
        .await
        .unwrap();
    wait_until("the second FCM message", || fcm.sends().len() >= 2).await;
    let (bearer, body, size) = fcm.sends()[1].clone();
    assert_eq!(
        bearer, "ya29.test-access-token-1",
        "the access token is reused"
    );
    assert!(size < 200);
    let data = &body["message"]["data"];
    assert_eq!(
        data,
        &json!({"request_id": created.authentication_id.as_str(), "enrollment_id": enrollment.as_str()})
    );
    let PushOutcome::Request(request) = device.auth.handle_push(&data.to_string()).await.unwrap()
    else {
        panic!("expected a request")
    };
    assert_eq!(request.fields.len(), 20);
    device.auth.deny(&request, false).await.unwrap();

    // A silent verification: the same data-only message, answered by handle_push alone.
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Silent))
        .await
        .unwrap();
    wait_until("the third FCM message", || fcm.sends().len() >= 3).await;
    let (_, body, _) = fcm.sends()[2].clone();
    assert_eq!(body["message"]["android"], json!({"priority": "high"}));
    let outcome = device
        .auth
        .handle_push(&body["message"]["data"].to_string())
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        PushOutcome::SilentVerificationAnswered { .. }
    ));
    let status = server
        .customer
        .authentication(&created.authentication_id, 5)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);
    assert_eq!(fcm.tokens_issued(), 1, "one access token for every push");
    fcm.assert_no_problems();
}

async fn fcm_stale_token(backend: Backend) {
    let (server, fcm, device, enrollment) = fcm_setup(backend, &[404]).await;
    let first = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert_eq!(
        push_state(&server, &first.authentication_id).await,
        ("token_invalid".to_string(), 1)
    );
    assert!(
        stale_flag(&server).await,
        "the device record shows the stale token"
    );

    // Not pushed again while the token is stale; the device still pulls.
    let second = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert_eq!(
        push_state(&server, &second.authentication_id).await,
        ("stale_token".to_string(), 0)
    );
    assert_eq!(fcm.sends().len(), 1);
    let pending = device.auth.pending_requests().await.unwrap();
    assert_eq!(pending.len(), 2);

    // The app got a fresh token from FCM and registers it: pushes resume, to the new token.
    device
        .auth
        .update_push_token(
            &enrollment,
            &PushRegistration::Fcm {
                token: "fcm-device-token-2".into(),
            },
        )
        .await
        .unwrap();
    assert!(!stale_flag(&server).await);
    for request in &pending {
        device.auth.deny(request, false).await.unwrap();
    }
    let third = server
        .customer
        .create_authentication("alice", &payment())
        .await
        .unwrap();
    assert_eq!(
        push_state(&server, &third.authentication_id).await,
        ("sent".to_string(), 1)
    );
    let (_, body, _) = fcm.sends()[1].clone();
    assert_eq!(body["message"]["token"], "fcm-device-token-2");
    let PushOutcome::Request(request) = device
        .auth
        .handle_push(&body["message"]["data"].to_string())
        .await
        .unwrap()
    else {
        panic!("expected a request")
    };
    device.auth.approve(&request, vec![], None).await.unwrap();
    let status = server
        .customer
        .authentication(&third.authentication_id, 5)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);
    fcm.assert_no_problems();
}

async fn fcm_retries(backend: Backend) {
    // 503 then 200; then a revoked access token (401) before a 200.
    let (server, fcm, _device, _) = fcm_setup(backend, &[503, 200, 401, 200]).await;
    let first = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert_eq!(
        push_state(&server, &first.authentication_id).await,
        ("sent".to_string(), 2)
    );
    assert_eq!(fcm.tokens_issued(), 1);
    let second = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Silent))
        .await
        .unwrap();
    assert_eq!(
        push_state(&server, &second.authentication_id).await,
        ("sent".to_string(), 1),
        "a refused access token is renewed within the attempt"
    );
    assert_eq!(fcm.tokens_issued(), 2, "one new access token after the 401");
    let sends = fcm.sends();
    assert_eq!(sends.len(), 4);
    assert_eq!(sends[2].0, "ya29.test-access-token-1");
    assert_eq!(sends[3].0, "ya29.test-access-token-2");
    assert_eq!(sends[2].1, sends[3].1, "the retry sends the same message");
    let metrics = reqwest::get(format!("{}/metrics", server.base_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tessera_pushes_total{provider=\"fcm\",outcome=\"sent\"} 2"),
        "{metrics}"
    );
    fcm.assert_no_problems();
}

// ---------------------------------------------------------------------------------------------
// A fake APNs: HTTP/2, token-based provider authentication.

const TEAM_ID: &str = "TEAM123456";
const APNS_KEY_ID: &str = "KEY7654321";
const TOPIC: &str = "com.example.bank";

#[derive(Clone)]
struct Apns(Arc<ApnsInner>);

#[derive(Clone)]
struct ApnsPush {
    device_token: String,
    headers: HeaderMap,
    body: Value,
    jwt: String,
}

struct ApnsInner {
    public_key: DecodingKey,
    received: Mutex<Vec<ApnsPush>>,
    script: Mutex<VecDeque<(u16, &'static str)>>,
    refused: Mutex<HashSet<String>>,
    problems: Mutex<Vec<String>>,
}

impl Apns {
    fn problem(&self, p: impl Into<String>) {
        self.0.problems.lock().unwrap().push(p.into());
    }
    fn received(&self) -> Vec<ApnsPush> {
        self.0.received.lock().unwrap().clone()
    }
    fn assert_no_problems(&self) {
        let problems = self.0.problems.lock().unwrap().clone();
        assert!(problems.is_empty(), "APNs receiver problems: {problems:?}");
    }
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

async fn apns_push(
    State(a): State<Apns>,
    Path(device_token): Path<String>,
    request: Request,
) -> Response {
    if request.version() != Version::HTTP_2 {
        a.problem(format!("not HTTP/2: {:?}", request.version()));
    }
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let jwt = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bearer "))
        .unwrap_or("")
        .to_string();
    let refuse = |status: u16, reason: &str| {
        (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"reason": reason})),
        )
            .into_response()
    };
    // The provider token: ES256 by the .p8 key, kid, iss, a recent iat.
    let header = jsonwebtoken::decode_header(&jwt).ok();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(&jwt, &a.0.public_key, &validation).ok();
    let good = match (&header, &claims) {
        (Some(h), Some(c)) => {
            h.alg == Algorithm::ES256
                && h.kid.as_deref() == Some(APNS_KEY_ID)
                && c.claims["iss"] == TEAM_ID
                && (c.claims["iat"].as_i64().unwrap_or(0) - now()).abs() <= 60
                && c.claims.as_object().unwrap().len() == 2
        }
        _ => false,
    };
    if !good {
        a.problem(format!(
            "provider token {header:?} {:?}",
            claims.map(|c| c.claims)
        ));
        return refuse(403, "InvalidProviderToken");
    }
    if a.0.refused.lock().unwrap().contains(&jwt) {
        a.problem("a refused provider token was used again");
        return refuse(403, "ExpiredProviderToken");
    }
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    if bytes.len() > 4096 {
        a.problem(format!("payload of {} bytes", bytes.len()));
    }
    let header_str = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    if header_str("apns-topic") != TOPIC {
        a.problem("apns-topic");
    }
    let push_type = header_str("apns-push-type");
    let expected_priority = match push_type.as_str() {
        "alert" => "10",
        "background" => "5",
        other => {
            a.problem(format!("apns-push-type {other}"));
            ""
        }
    };
    if header_str("apns-priority") != expected_priority {
        a.problem(format!("apns-priority {}", header_str("apns-priority")));
    }
    if header_str("apns-expiration").parse::<i64>().unwrap_or(0) <= now() {
        a.problem("apns-expiration");
    }
    if !is_uuid(&header_str("apns-id")) {
        a.problem(format!("apns-id {}", header_str("apns-id")));
    }
    let aps = &body["aps"];
    let aps_ok = if push_type == "background" {
        *aps == json!({"content-available": 1})
    } else {
        aps["alert"]["title"].is_string()
            && aps["alert"]["body"].is_string()
            && aps["sound"] == "default"
            && aps["mutable-content"] == 1
            && aps.as_object().unwrap().len() == 3
    };
    if !aps_ok || !body["tessera"].is_object() || body.as_object().unwrap().len() != 2 {
        a.problem(format!("payload shape {body}"));
    }
    a.0.received.lock().unwrap().push(ApnsPush {
        device_token,
        headers: headers.clone(),
        body,
        jwt: jwt.clone(),
    });
    match a.0.script.lock().unwrap().pop_front().unwrap_or((200, "")) {
        (200, _) => {
            let mut response = StatusCode::OK.into_response();
            if let Some(id) = headers.get("apns-id") {
                response.headers_mut().insert("apns-id", id.clone());
            }
            response
        }
        (403, reason) => {
            a.0.refused.lock().unwrap().insert(jwt);
            refuse(403, reason)
        }
        (410, reason) => (
            StatusCode::GONE,
            Json(json!({"reason": reason, "timestamp": now() * 1000})),
        )
            .into_response(),
        (status, reason) => refuse(status, reason),
    }
}

const DEVICE_TOKEN_1: &str = "7b0c2d4e6f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081920";
const DEVICE_TOKEN_2: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

async fn apns_setup(
    backend: Backend,
    script: &[(u16, &'static str)],
) -> (TestServer, Apns, TestDevice, EnrollmentId) {
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let point = secret.public_key().to_encoded_point(false);
    let public_key = DecodingKey::from_ec_components(
        &URL_SAFE_NO_PAD.encode(point.x().unwrap()),
        &URL_SAFE_NO_PAD.encode(point.y().unwrap()),
    )
    .unwrap();
    let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
    let apns = Apns(Arc::new(ApnsInner {
        public_key,
        received: Mutex::default(),
        script: Mutex::new(script.iter().copied().collect()),
        refused: Mutex::default(),
        problems: Mutex::default(),
    }));
    let router = axum::Router::new()
        .route("/3/device/{token}", post(apns_push))
        .with_state(apns.clone());
    let base = serve(router).await;
    let server = TestServer::start_with(backend, |c| {
        c.apns_endpoint = Some(base.clone());
        c.push_retry_base = Duration::from_millis(20);
    })
    .await;
    let configured = tessera_server::admin::set_apns(
        server.server.database(),
        &server.app.application_id,
        TEAM_ID,
        APNS_KEY_ID,
        &pem,
        TOPIC,
        ApnsEnvironment::Production,
    )
    .await
    .unwrap();
    let printed = serde_json::to_string(&configured).unwrap();
    assert!(printed.contains(TOPIC) && !printed.contains("PRIVATE KEY"));
    // Bad input is refused with a typed error and stores nothing.
    let refused = tessera_server::admin::set_apns(
        server.server.database(),
        &server.app.application_id,
        TEAM_ID,
        APNS_KEY_ID,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
        TOPIC,
        ApnsEnvironment::Production,
    )
    .await;
    assert!(matches!(
        refused,
        Err(tessera_server::ServerError::PushCredentials(
            tessera_server::PushCredentialsError::EcKey
        ))
    ));
    server.user("alice").await;
    let mut config = device_config("iPhone 16");
    config.device.os_name = "iOS".into();
    config.push = PushRegistration::Apns {
        token: DEVICE_TOKEN_1.into(),
        sandbox: false,
    };
    let device = TestDevice::with_config(config).await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap()
        .enrollment_id;
    (server, apns, device, enrollment)
}

async fn apns_round_trip(backend: Backend) {
    let (server, apns, device, enrollment) = apns_setup(backend, &[]).await;

    // An approval: an alert, the signed request under `tessera`.
    let created = server
        .customer
        .create_authentication("alice", &payment())
        .await
        .unwrap();
    wait_until("the first APNs push", || !apns.received().is_empty()).await;
    let push = apns.received()[0].clone();
    assert_eq!(push.device_token, DEVICE_TOKEN_1);
    assert_eq!(push.headers["apns-push-type"], "alert");
    assert_eq!(push.headers["apns-priority"], "10");
    assert_eq!(
        push.headers["apns-expiration"],
        created.expires_at.to_string()
    );
    assert_eq!(push.body["aps"]["alert"]["title"], "End-to-end Test App");
    assert_eq!(
        push.body["aps"]["alert"]["body"],
        "Pay 120.00 EUR to ACME GmbH?"
    );
    assert_eq!(
        push.body["tessera"],
        json!({"request": created.signed_request})
    );
    // A notification service extension hands the whole payload to the core.
    let PushOutcome::Request(request) = device
        .auth
        .handle_push(&push.body.to_string())
        .await
        .unwrap()
    else {
        panic!("expected a request")
    };
    device
        .auth
        .approve(&request, vec!["face".into()], None)
        .await
        .unwrap();
    let status = server
        .customer
        .authentication(&created.authentication_id, 5)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);
    assert_eq!(
        push_state(&server, &created.authentication_id).await,
        ("sent".to_string(), 1)
    );

    // A silent verification: a background push, no alert.
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Silent))
        .await
        .unwrap();
    wait_until("the second APNs push", || apns.received().len() >= 2).await;
    let push = apns.received()[1].clone();
    assert_eq!(push.headers["apns-push-type"], "background");
    assert_eq!(push.headers["apns-priority"], "5");
    assert_eq!(push.body["aps"], json!({"content-available": 1}));
    let outcome = device
        .auth
        .handle_push(&push.body["tessera"].to_string())
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        PushOutcome::SilentVerificationAnswered { .. }
    ));
    let status = server
        .customer
        .authentication(&created.authentication_id, 5)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);

    // Too large for APNs's 4 KiB: the id only; the core pulls.
    let created = server
        .customer
        .create_authentication("alice", &big_transaction())
        .await
        .unwrap();
    wait_until("the third APNs push", || apns.received().len() >= 3).await;
    let push = apns.received()[2].clone();
    assert_eq!(
        push.body["tessera"],
        json!({"request_id": created.authentication_id.as_str(), "enrollment_id": enrollment.as_str()})
    );
    let PushOutcome::Request(request) = device
        .auth
        .handle_push(&push.body.to_string())
        .await
        .unwrap()
    else {
        panic!("expected a request")
    };
    assert_eq!(request.fields.len(), 20);
    device.auth.deny(&request, false).await.unwrap();
    let jwts: HashSet<String> = apns.received().into_iter().map(|p| p.jwt).collect();
    assert_eq!(jwts.len(), 1, "one provider token for every push");
    apns.assert_no_problems();
}

async fn apns_refresh_and_stale(backend: Backend) {
    let (server, apns, device, enrollment) = apns_setup(
        backend,
        &[
            (403, "ExpiredProviderToken"),
            (200, ""),
            (410, "Unregistered"),
        ],
    )
    .await;
    // The provider token is refused as expired: a new one, and the push goes through.
    let first = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert_eq!(
        push_state(&server, &first.authentication_id).await,
        ("sent".to_string(), 1)
    );
    let received = apns.received();
    assert_eq!(received.len(), 2);
    assert_ne!(received[0].jwt, received[1].jwt, "a new provider token");
    assert_eq!(
        received[0].headers["apns-id"],
        received[1].headers["apns-id"]
    );

    // Unregistered: the token goes stale and is not pushed to any more.
    let second = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Silent))
        .await
        .unwrap();
    assert_eq!(
        push_state(&server, &second.authentication_id).await,
        ("token_invalid".to_string(), 1)
    );
    assert!(stale_flag(&server).await);
    let third = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert_eq!(
        push_state(&server, &third.authentication_id).await,
        ("stale_token".to_string(), 0)
    );
    assert_eq!(apns.received().len(), 3);

    // A fresh token from iOS: pushes resume.
    device
        .auth
        .update_push_token(
            &enrollment,
            &PushRegistration::Apns {
                token: DEVICE_TOKEN_2.into(),
                sandbox: false,
            },
        )
        .await
        .unwrap();
    assert!(!stale_flag(&server).await);
    let pending = device.auth.pending_requests().await.unwrap();
    for request in &pending {
        device.auth.deny(request, false).await.unwrap();
    }
    let fourth = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert_eq!(
        push_state(&server, &fourth.authentication_id).await,
        ("sent".to_string(), 1)
    );
    let last = apns.received()[3].clone();
    assert_eq!(last.device_token, DEVICE_TOKEN_2);
    let PushOutcome::Request(request) = device
        .auth
        .handle_push(&last.body.to_string())
        .await
        .unwrap()
    else {
        panic!("expected a request")
    };
    device.auth.approve(&request, vec![], None).await.unwrap();
    let status = server
        .customer
        .authentication(&fourth.authentication_id, 5)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);
    apns.assert_no_problems();
}

// ---------------------------------------------------------------------------------------------
// Logs.

/// Both providers' flows at TRACE level (the other tests of this binary log into the same
/// capture while they run, see `crate::logs`), then a search of everything logged for keys, tokens and device
/// tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_provider_logs_never_contain_secrets() {
    crate::logs::capture();
    fcm_stale_token(Backend::Sqlite).await;
    fcm_retries(Backend::Sqlite).await;
    apns_refresh_and_stale(Backend::Sqlite).await;

    let logs = crate::logs::captured();
    assert!(
        logs.contains("push token marked stale"),
        "push events are logged"
    );
    let rsa_body_line = RSA_KEY.lines().nth(5).unwrap();
    let secrets = [
        ("RSA key", rsa_body_line),
        ("PEM armour", "PRIVATE KEY"),
        ("access token", "ya29.test-access-token"),
        ("OAuth assertion / provider token", "eyJ0eXAiOiJKV1Qi"),
        ("OAuth assertion / provider token", "eyJhbGciOi"),
        ("FCM device token", "fcm-device-token"),
        ("APNs device token", &DEVICE_TOKEN_1[..24]),
        ("APNs device token", &DEVICE_TOKEN_2[..24]),
    ];
    for (what, secret) in secrets {
        assert!(!logs.contains(secret), "the logs contain the {what}");
    }
}
