//! FIDO2 / WebAuthn end to end: the hosted prompt in headless Chromium with a virtual CTAP2
//! authenticator (the DevTools WebAuthn domain, driven by `tests/browser/prompt_page.mjs`)
//! registers a credential for a mandatory method (`MFA_SETUP_REQUIRED`, `startRegistration`,
//! `checkRegistration`) and signs in with it (`ASSERTION_REQUIRED`, `checkAssertion`): a
//! roaming key (`SECURITY_KEY`), a platform authenticator that verifies the user
//! (`FIDO2_BIOMETRICS`); refused: a cloned authenticator (its counter), another user's
//! credential, a wrong origin, an AAGUID outside the allow-list. Over HTTP: the settings and
//! credential API, the flow's FIDO actions and their single-use ceremonies.
//!
//! WebAuthn needs a secure context with a domain as RP id: the server's public URL is
//! `http://localhost:PORT` (a potentially trustworthy origin), its listener 127.0.0.1:PORT.

use std::path::PathBuf;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tessera_examples::customer::CustomerApiError;
use tessera_protocol::api::AuthenticationMethod;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::flows::{
    CreateFlowRequest, FlowAction, FlowActionName, FlowResultStatus, FlowStatus,
};
use tessera_tests::{Backend, TestServer, on_each_backend};

use crate::hosted::hosted_request;
use crate::hosted_browser::{PromptPage, browser_available};

/// The virtual authenticator's model (Chromium's virtual CTAP2 device).
const VIRTUAL_AAGUID: &str = "01020304-0506-0708-0102-030405060708";

/// A server whose public URL is `http://localhost:PORT`.
pub(crate) async fn localhost_server(backend: Backend) -> TestServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let public =
        tessera_protocol::pairing::ServerUrl::parse(&format!("http://localhost:{port}")).unwrap();
    TestServer::start_with(backend, |c| {
        c.listen = format!("127.0.0.1:{port}").parse().unwrap();
        c.public_url = Some(public);
    })
    .await
}

pub(crate) async fn api(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", server.base_url))
        .bearer_auth(&server.app.api_key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub(crate) async fn credentials(server: &TestServer, user: &str) -> Vec<Value> {
    let (status, body) = api(
        server,
        reqwest::Method::GET,
        &format!("/v1/users/{user}/fido-credentials"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["credentials"].as_array().unwrap().clone()
}

/// Starts a flow for `request` and asks it to authenticate: the state the user meets first.
async fn authenticate(
    server: &TestServer,
    request: &CreateFlowRequest,
) -> tessera_protocol::flows::FlowState {
    let flow = server.customer.create_flow(request).await.unwrap();
    server
        .customer
        .flow_action(
            flow.id.as_str(),
            &FlowAction::Authenticate {
                mobile_payload: None,
                authorization_payload: None,
            },
        )
        .await
        .unwrap()
}

fn return_url(server: &TestServer, tag: &str) -> String {
    format!("{}/healthz?rp={tag}", server.base_url)
}

/// A hosted flow for `user` that needs `mandatory` (none: an ordinary sign-in).
async fn hosted_flow(
    server: &TestServer,
    user: &str,
    back: &str,
    mandatory: &[AuthenticationMethod],
) -> (String, String) {
    let mut request = hosted_request(user, back, &[]);
    request.mandatory_methods = mandatory.to_vec();
    let flow = server.customer.create_flow(&request).await.unwrap();
    (flow.id.to_string(), flow.prompt_url.unwrap())
}

fn temp_file(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join(name);
    (dir, path)
}

/// Registers a credential for `method` on the page and signs in with it; answers the flow's
/// result attributes. `extra` are more driver flags.
async fn register_and_sign_in(
    server: &TestServer,
    user: &str,
    method: AuthenticationMethod,
    authenticator: &str,
    extra: &[&str],
) -> serde_json::Map<String, Value> {
    let back = return_url(server, "register");
    let (flow_id, prompt) = hosted_flow(server, user, &back, &[method]).await;
    let mut flags = vec![
        "--return-prefix",
        back.as_str(),
        "--authenticator",
        authenticator,
        "--click",
        "startRegistration",
    ];
    flags.extend_from_slice(extra);
    let mut page = PromptPage::open(&prompt, &flags);
    page.state("MFA_SETUP_REQUIRED").await;
    page.state("ASSERTION_REQUIRED").await;
    let (text, url) = page.finish("MFA_COMPLETED").await;
    assert!(text.contains("You are verified"), "{text}");
    assert_eq!(url, back);
    let done = server.customer.flow(&flow_id).await.unwrap();
    let result = done.result.unwrap();
    assert_eq!(result.status, FlowResultStatus::Authenticated);
    result.attributes.into_iter().collect()
}

/// Signs in on the page with the credentials in `file` (a copy of an authenticator); answers
/// the page's last state (the test reads what it shows).
async fn sign_in_expecting_refusal(
    server: &TestServer,
    user: &str,
    file: &str,
    extra: &[&str],
) -> Value {
    let back = return_url(server, "refused");
    let (flow_id, prompt) = hosted_flow(server, user, &back, &[]).await;
    let mut flags = vec![
        "--return-prefix",
        back.as_str(),
        "--authenticator",
        "usb",
        "--import-credentials",
        file,
    ];
    flags.extend_from_slice(extra);
    let mut page = PromptPage::open(&prompt, &flags);
    page.state("ASSERTION_REQUIRED").await;
    let shown = loop {
        let shown = page.state("ASSERTION_REQUIRED").await;
        if shown["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not work"))
        {
            break shown;
        }
    };
    drop(page);
    let flow = server.customer.flow(&flow_id).await.unwrap();
    assert_eq!(flow.status, FlowStatus::AssertionRequired, "not signed in");
    assert!(flow.result.is_none());
    shown
}

async fn a_roaming_key_registers_and_signs_in(backend: Backend) {
    if !browser_available() {
        return;
    }
    let server = localhost_server(backend).await;
    server.user("alice").await;
    let attributes = register_and_sign_in(
        &server,
        "alice",
        AuthenticationMethod::SecurityKey,
        "usb",
        &[],
    )
    .await;
    assert_eq!(attributes["pingid.authentication.type"], "SECURITY_KEY");
    assert_eq!(attributes["pingid.authentication.amr"], json!(["hwk"]));
    let listed = credentials(&server, "alice").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["type"], "SECURITY_KEY");
    assert!(listed[0]["last_used_at"].is_number());
    assert!(listed[0].get("aaguid").is_none(), "no attestation asked");

    // An ordinary sign-in now offers the key, and the mandatory method is satisfied.
    let id = listed[0]["id"].as_str().unwrap().to_string();
    let mut request = CreateFlowRequest::new("alice".parse().unwrap());
    request.mandatory_methods = vec![AuthenticationMethod::SecurityKey];
    let flow = authenticate(&server, &request).await;
    assert_eq!(flow.status, FlowStatus::AssertionRequired);
    assert!(flow.actions.contains(&FlowActionName::CheckAssertion));
    assert_eq!(flow.devices.len(), 1);
    assert_eq!(flow.devices[0].id, format!("fido:{id}"));
    let options = flow.fido.unwrap().request_options.unwrap();
    assert_eq!(options["publicKey"]["rpId"], "localhost");
    assert_eq!(
        options["publicKey"]["allowCredentials"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A policy may require FIDO: with a phone paired too, only the key is offered.
    let phone = tessera_tests::TestDevice::new().await;
    phone
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    let policy: tessera_protocol::policy::PolicyDocument = serde_json::from_value(json!({
        "default": {"action": "require", "methods": ["fido2"]}
    }))
    .unwrap();
    server.customer.set_policy(&policy).await.unwrap();
    let flow = authenticate(&server, &CreateFlowRequest::new("alice".parse().unwrap())).await;
    assert_eq!(flow.status, FlowStatus::AssertionRequired, "{flow:?}");
    let offered: Vec<&str> = flow.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(offered, vec![format!("fido:{id}").as_str()]);
    let policy: tessera_protocol::policy::PolicyDocument = serde_json::from_value(json!({
        "default": {"action": "require", "methods": ["mobile_push", "fido2"]}
    }))
    .unwrap();
    server.customer.set_policy(&policy).await.unwrap();

    // Rename, then remove: the key is gone from the list and from the mandatory methods.
    let (status, renamed) = api(
        &server,
        reqwest::Method::PATCH,
        &format!("/v1/users/alice/fido-credentials/{id}"),
        Some(json!({"nickname": "Blue key"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_eq!(renamed["nickname"], "Blue key");
    let (status, _) = api(
        &server,
        reqwest::Method::PATCH,
        &format!("/v1/users/alice/fido-credentials/{id}"),
        Some(json!({"nickname": "  "})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api(
        &server,
        reqwest::Method::DELETE,
        &format!("/v1/users/alice/fido-credentials/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(credentials(&server, "alice").await.is_empty());
    let (status, body) = api(
        &server,
        reqwest::Method::DELETE,
        &format!("/v1/users/alice/fido-credentials/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "fido_credential_not_found");
    let mut request = CreateFlowRequest::new("alice".parse().unwrap());
    request.mandatory_methods = vec![AuthenticationMethod::SecurityKey];
    let flow = authenticate(&server, &request).await;
    assert_eq!(flow.status, FlowStatus::MfaSetupRequired);
}

async fn a_platform_authenticator_with_user_verification(backend: Backend) {
    if !browser_available() {
        return;
    }
    let server = localhost_server(backend).await;
    server.user("bea").await;
    let (status, _) = api(
        &server,
        reqwest::Method::PUT,
        "/v1/application/fido-settings",
        Some(json!({"user_verification": "required"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let attributes = register_and_sign_in(
        &server,
        "bea",
        AuthenticationMethod::Platform,
        "internal:uv",
        &[],
    )
    .await;
    assert_eq!(attributes["pingid.authentication.type"], "FIDO2_BIOMETRICS");
    let amr = attributes["pingid.authentication.amr"].as_array().unwrap();
    assert!(amr.contains(&json!("user")), "{amr:?}");
    assert!(
        !amr.contains(&json!("fpt")) && !amr.contains(&json!("face")),
        "the authenticator never said which biometric: {amr:?}"
    );
    assert_eq!(
        credentials(&server, "bea").await[0]["type"],
        "FIDO2_BIOMETRICS"
    );
    // Deleting the user deletes their credentials: a new user of that id has none.
    let (status, _) = api(&server, reqwest::Method::DELETE, "/v1/users/bea", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    server.user("bea").await;
    assert!(credentials(&server, "bea").await.is_empty());
}

on_each_backend! {
    roaming_key => a_roaming_key_registers_and_signs_in;
    platform_biometrics => a_platform_authenticator_with_user_verification;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cloned_authenticator_is_caught_by_its_counter() {
    if !browser_available() {
        return;
    }
    let server = localhost_server(Backend::Sqlite).await;
    server.user("carl").await;
    let (_dir, copy) = temp_file("carl.json");
    let copy = copy.to_str().unwrap().to_string();
    let started = std::time::Instant::now();
    register_and_sign_in(
        &server,
        "carl",
        AuthenticationMethod::SecurityKey,
        "usb",
        &["--export-credentials", &copy],
    )
    .await;
    // One copy signs in (its counter rises past the stored one)…
    let back = return_url(&server, "first-copy");
    let (_, prompt) = hosted_flow(&server, "carl", &back, &[]).await;
    let page = PromptPage::open(
        &prompt,
        &[
            "--return-prefix",
            &back,
            "--authenticator",
            "usb",
            "--import-credentials",
            &copy,
        ],
    );
    page.finish("MFA_COMPLETED").await;
    // …the other copy then shows a counter the server has already seen.
    let shown = sign_in_expecting_refusal(&server, "carl", &copy, &[]).await;
    println!("cloned authenticator refused: {shown}");
    let listed = credentials(&server, "carl").await;
    assert!(
        listed[0]["compromised_at"].is_number(),
        "the credential is flagged: {listed:?}"
    );
    // A flagged credential is no device any more and counts for no mandatory method.
    let mut request = CreateFlowRequest::new("carl".parse().unwrap());
    request.mandatory_methods = vec![AuthenticationMethod::SecurityKey];
    let flow = authenticate(&server, &request).await;
    assert_eq!(flow.status, FlowStatus::MfaSetupRequired);
    let (status, audit) = api(&server, reqwest::Method::GET, "/v1/audit?limit=200", None).await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    assert!(
        audit.to_string().contains("fido.counter_regression"),
        "recorded in the audit log: {audit}"
    );
    println!("FIDO clone test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_users_credential_is_refused() {
    if !browser_available() {
        return;
    }
    let server = localhost_server(Backend::Sqlite).await;
    server.user("dora").await;
    server.user("eve").await;
    let (_dir, doras) = temp_file("dora.json");
    let doras = doras.to_str().unwrap().to_string();
    register_and_sign_in(
        &server,
        "dora",
        AuthenticationMethod::SecurityKey,
        "usb",
        &["--export-credentials", &doras],
    )
    .await;
    register_and_sign_in(
        &server,
        "eve",
        AuthenticationMethod::SecurityKey,
        "usb",
        &[],
    )
    .await;
    // Eve's browser holds Dora's key and offers it whatever the server allows.
    sign_in_expecting_refusal(&server, "eve", &doras, &["--drop-allow-credentials"]).await;
    assert!(credentials(&server, "dora").await[0]["compromised_at"].is_null());
}

/// Registration on the page is refused by the settings; answers the error the page shows.
async fn registration_refused(settings: Value) {
    let server = localhost_server(Backend::Sqlite).await;
    server.user("finn").await;
    let (status, body) = api(
        &server,
        reqwest::Method::PUT,
        "/v1/application/fido-settings",
        Some(settings),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let back = return_url(&server, "refused");
    let (flow_id, prompt) =
        hosted_flow(&server, "finn", &back, &[AuthenticationMethod::SecurityKey]).await;
    let mut page = PromptPage::open(
        &prompt,
        &[
            "--return-prefix",
            &back,
            "--authenticator",
            "usb",
            "--click",
            "startRegistration",
        ],
    );
    loop {
        let shown = page.state("MFA_SETUP_REQUIRED").await;
        if shown["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not work"))
        {
            break;
        }
    }
    drop(page);
    assert!(credentials(&server, "finn").await.is_empty());
    let flow = server.customer.flow(&flow_id).await.unwrap();
    assert_eq!(flow.status, FlowStatus::MfaSetupRequired);
    let history = server.customer.flow_events(&flow_id).await.unwrap();
    assert!(
        history
            .events
            .iter()
            .any(|e| e.action == "checkRegistration"
                && e.error == Some(ErrorCode::FidoVerificationFailed)),
        "{history:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_origin_is_refused() {
    if !browser_available() {
        return;
    }
    // The page runs on http://localhost:PORT; the application allows another origin only.
    registration_refused(json!({"rp_id": "localhost", "allowed_origins": ["http://localhost:1"]}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aaguid_outside_the_allow_list_is_refused() {
    if !browser_available() {
        return;
    }
    registration_refused(json!({
        "attestation": "direct",
        "allowed_aaguids": ["00000000-0000-0000-0000-0000000000aa"],
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_allowed_aaguid_is_recorded() {
    if !browser_available() {
        return;
    }
    let server = localhost_server(Backend::Sqlite).await;
    server.user("gus").await;
    let (status, _) = api(
        &server,
        reqwest::Method::PUT,
        "/v1/application/fido-settings",
        Some(json!({"attestation": "direct", "allowed_aaguids": [VIRTUAL_AAGUID]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let attributes = register_and_sign_in(
        &server,
        "gus",
        AuthenticationMethod::SecurityKey,
        "usb",
        &[],
    )
    .await;
    assert_eq!(
        attributes["pingid.authentication.fido.aaguid"],
        VIRTUAL_AAGUID
    );
    assert_eq!(
        credentials(&server, "gus").await[0]["aaguid"],
        VIRTUAL_AAGUID
    );
}

async fn settings_api(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, body) = api(
        &server,
        reqwest::Method::GET,
        "/v1/application/fido-settings",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user_verification"], "preferred");
    assert_eq!(body["attestation"], "none");
    let wanted = json!({
        "rp_id": "example.com",
        "allowed_origins": ["https://login.example.com"],
        "user_verification": "required",
        "attestation": "direct",
        "allowed_aaguids": ["CB69481E-8FF7-4039-93EC-0A2729A154A8"],
        "discoverable_credentials": true,
    });
    let (status, stored) = api(
        &server,
        reqwest::Method::PUT,
        "/v1/application/fido-settings",
        Some(wanted),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(
        stored["allowed_aaguids"][0], "cb69481e-8ff7-4039-93ec-0a2729a154a8",
        "normalised"
    );
    let (_, read) = api(
        &server,
        reqwest::Method::GET,
        "/v1/application/fido-settings",
        None,
    )
    .await;
    assert_eq!(read, stored);
    for bad in [
        json!({"allowed_origins": ["http://evil.example"]}),
        json!({"rp_id": "example.com", "allowed_origins": ["https://example.org"]}),
        json!({"attestation": "direct"}),
        json!({"allowed_aaguids": ["not-an-aaguid"]}),
        json!({"user_verification": "sometimes"}),
    ] {
        let (status, body) = api(
            &server,
            reqwest::Method::PUT,
            "/v1/application/fido-settings",
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} → {body}");
    }
    let (_, unchanged) = api(
        &server,
        reqwest::Method::GET,
        "/v1/application/fido-settings",
        None,
    )
    .await;
    assert_eq!(unchanged, stored, "a refused change loses nothing");

    // Credentials of an unknown user, an unknown credential.
    let (status, body) = api(
        &server,
        reqwest::Method::GET,
        "/v1/users/nobody/fido-credentials",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    server.user("hana").await;
    assert!(credentials(&server, "hana").await.is_empty());
    let (status, body) = api(
        &server,
        reqwest::Method::PATCH,
        "/v1/users/hana/fido-credentials/fido_nothing",
        Some(json!({"nickname": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "fido_credential_not_found");
}

fn refused_code(e: CustomerApiError) -> ErrorCode {
    match e {
        CustomerApiError::Api { code, .. } => code,
        other => panic!("{other}"),
    }
}

async fn flow_registration_ceremony(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("ida").await;
    let mut request = CreateFlowRequest::new("ida".parse().unwrap());
    request.mandatory_methods = vec![AuthenticationMethod::SecurityKey];
    let flow = server.customer.create_flow(&request).await.unwrap();
    let id = flow.id.to_string();
    let act = |action: FlowAction| {
        let customer = &server.customer;
        let id = id.clone();
        async move { customer.flow_action(&id, &action).await }
    };
    let setup = act(FlowAction::Authenticate {
        mobile_payload: None,
        authorization_payload: None,
    })
    .await
    .unwrap();
    assert_eq!(setup.status, FlowStatus::MfaSetupRequired);
    assert!(setup.actions.contains(&FlowActionName::StartRegistration));
    assert!(!setup.actions.contains(&FlowActionName::CheckRegistration));
    // A method that is not missing, and one that is no FIDO method, are refused.
    let e = act(FlowAction::StartRegistration {
        method: AuthenticationMethod::Platform,
    })
    .await
    .unwrap_err();
    assert_eq!(refused_code(e), ErrorCode::InvalidRequest);
    let e = act(FlowAction::CheckAssertion {
        credential: json!({}),
    })
    .await
    .unwrap_err();
    assert_eq!(refused_code(e), ErrorCode::ActionNotAllowed);
    let started = act(FlowAction::StartRegistration {
        method: AuthenticationMethod::SecurityKey,
    })
    .await
    .unwrap();
    let options = started.fido.unwrap().creation_options.unwrap();
    let public_key = &options["publicKey"];
    assert_eq!(
        public_key["authenticatorSelection"]["authenticatorAttachment"],
        "cross-platform"
    );
    assert_eq!(public_key["attestation"], "none");
    assert_eq!(public_key["rp"]["id"], "127.0.0.1");
    assert!(
        !public_key["user"]["id"].as_str().unwrap().contains("ida"),
        "the user handle does not carry the user id"
    );
    // Not a registration response at all; then a well-formed one that does not verify (it
    // takes the ceremony); then the same again: the ceremony is gone.
    let e = act(FlowAction::CheckRegistration {
        credential: json!({"nonsense": true}),
        nickname: None,
    })
    .await
    .unwrap_err();
    assert_eq!(refused_code(e), ErrorCode::InvalidRequest);
    let forged = json!({
        "id": "AAAA",
        "rawId": "AAAA",
        "type": "public-key",
        "response": {"attestationObject": "oA", "clientDataJSON": "e30"},
    });
    let e = act(FlowAction::CheckRegistration {
        credential: forged.clone(),
        nickname: None,
    })
    .await
    .unwrap_err();
    assert_eq!(refused_code(e), ErrorCode::FidoVerificationFailed);
    let e = act(FlowAction::CheckRegistration {
        credential: forged,
        nickname: None,
    })
    .await
    .unwrap_err();
    let CustomerApiError::Api { code, message, .. } = e else {
        panic!("a refusal")
    };
    assert_eq!(code, ErrorCode::FidoVerificationFailed);
    assert!(message.contains("already answered"), "{message}");
    assert!(credentials(&server, "ida").await.is_empty());
}

on_each_backend! {
    fido_settings_api => settings_api;
    fido_flow_registration => flow_registration_ceremony;
}
