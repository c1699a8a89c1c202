//! Passkey sign-in without a user name (`POST /v1/flows` with `passkey` and no `user_id`): the
//! flow starts in `ASSERTION_REQUIRED` with an empty allow list and user verification
//! required; the passkey the authenticator offers names the user (its user handle checked
//! against the credential's), and only then is the flow bound to them. In headless Chromium
//! with a virtual CTAP2 authenticator that holds resident keys and verifies the user, one
//! browser per test (`prompt_page.mjs --stay`): a passkey registered, then a sign-in with no
//! user name completes for its user; refused on the page: the passkey at another application
//! (same RP id), a deleted user's, a credential that is not a passkey. Over HTTP on both
//! backends: the opt-in and its refusals, options that name nobody, what the flow offers, a
//! refused or replayed answer, a burst of answers at once.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tessera_examples::customer::{CustomerApi, CustomerApiError};
use tessera_examples::relying_party::{ClientCredentials, RelyingParty, RpSigningKey};
use tessera_protocol::api::AuthenticationMethod;
use tessera_protocol::ciba::{ClientAuthMethod, DeliveryMode, RegisterCibaClient};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::flows::{
    CreateFlowRequest, FlowAction, FlowActionName, FlowResultStatus, FlowStatus, HostedPrompt,
};
use tessera_tests::{Backend, TestServer, on_each_backend};

use crate::fido::{api, credentials, localhost_server};
use crate::hosted::hosted_request;
use crate::hosted_browser::{PromptPage, browser_available};

fn back_to(server: &TestServer, tag: &str) -> String {
    format!("{}/healthz?rp={tag}", server.base_url)
}

/// A hosted passkey sign-in (no user name) returning to `back`.
fn passkey_request(back: &str) -> CreateFlowRequest {
    let mut request = CreateFlowRequest::passkey();
    request.hosted = Some(HostedPrompt {
        return_url: back.to_string(),
        ui_locales: Vec::new(),
        web_view: None,
    });
    request
}

async fn set_fido(server: &TestServer, settings: Value) {
    let (status, body) = api(
        server,
        reqwest::Method::PUT,
        "/v1/application/fido-settings",
        Some(settings),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn refused<T: std::fmt::Debug>(result: Result<T, CustomerApiError>, code: ErrorCode) {
    match result {
        Err(e) => assert_eq!(e.code(), Some(code), "{e:?}"),
        Ok(v) => panic!("expected {code:?}, got {v:?}"),
    }
}

/// Registers a credential for `user` on a hosted flow that makes `method` mandatory, in the
/// page's browser (`--stay`); the flow signs in with it and the page returns.
async fn register_on(
    page: &mut PromptPage,
    server: &TestServer,
    user: &str,
    method: AuthenticationMethod,
) {
    let back = back_to(server, "register");
    let mut request = hosted_request(user, &back, &[]);
    request.mandatory_methods = vec![method];
    let flow = server.customer.create_flow(&request).await.unwrap();
    page.goto(flow.prompt_url.as_deref().unwrap());
    page.state("MFA_SETUP_REQUIRED").await;
    page.send("click startRegistration");
    page.state("ASSERTION_REQUIRED").await;
    let (_, url) = page.finish_and_stay("MFA_COMPLETED").await;
    assert_eq!(url, back);
}

/// The page of a fresh passkey sign-in of `customer`'s application shows a refusal; the flow
/// is still waiting, bound to nobody, with the refused `checkAssertion` in its history.
async fn refused_on_the_page(page: &mut PromptPage, customer: &CustomerApi, back: &str) {
    let flow = customer.create_flow(&passkey_request(back)).await.unwrap();
    page.goto(flow.prompt_url.as_deref().unwrap());
    loop {
        let shown = page.error_in("ASSERTION_REQUIRED").await;
        assert!(
            shown["error"].as_str().unwrap().contains("did not work"),
            "{shown}"
        );
        if shown["code"] == "fido_verification_failed" {
            break;
        }
        // The browser's own ceremony failed before any answer reached the server: a new
        // challenge, as the user's "Try again" asks.
        page.send("click authenticate");
    }
    let after = customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(after.status, FlowStatus::AssertionRequired);
    assert!(after.user_id.is_none(), "bound to nobody: {after:?}");
    assert!(after.result.is_none());
    // The refusal is recorded before the page's call is answered; on SQLite a read through
    // another pooled connection may see it a moment later, so read again for up to 2 s.
    let mut history = customer.flow_events(flow.id.as_str()).await.unwrap();
    for _ in 0..100 {
        if history.events.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        history = customer.flow_events(flow.id.as_str()).await.unwrap();
    }
    assert!(
        history
            .events
            .iter()
            .any(|e| e.action == "checkAssertion"
                && e.error == Some(ErrorCode::FidoVerificationFailed)),
        "{history:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_passkey_signs_in_without_a_user_name() {
    if !browser_available() {
        return;
    }
    let server = localhost_server(Backend::Sqlite).await;
    set_fido(
        &server,
        json!({"discoverable_credentials": true, "user_verification": "required"}),
    )
    .await;
    server.user("pia").await;
    server.user("quinn").await;
    // One browser for the whole test; its authenticator keeps resident keys and verifies the
    // user.
    let prefix = format!("{}/healthz?rp=", server.base_url);
    let mut page = PromptPage::open(
        &format!("{}/healthz", server.base_url),
        &[
            "--authenticator",
            "internal:uv",
            "--stay",
            "--timeout",
            "300",
            "--return-prefix",
            &prefix,
        ],
    );
    register_on(&mut page, &server, "pia", AuthenticationMethod::Platform).await;
    let listed = credentials(&server, "pia").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["discoverable"], true);

    // A sign-in with no user name: the options name nobody.
    let back = back_to(&server, "passkey");
    let flow = server
        .customer
        .create_flow(&passkey_request(&back))
        .await
        .unwrap();
    assert_eq!(flow.status, FlowStatus::AssertionRequired);
    assert!(flow.user_id.is_none());
    assert!(flow.devices.is_empty());
    let options = flow.fido.clone().unwrap().request_options.unwrap();
    assert_eq!(options["publicKey"]["allowCredentials"], json!([]));
    assert_eq!(options["publicKey"]["userVerification"], "required");
    page.goto(flow.prompt_url.as_deref().unwrap());
    let started = std::time::Instant::now();
    let (text, url) = page.finish_and_stay("MFA_COMPLETED").await;
    println!(
        "PASSKEY FIGURES: hosted passkey sign-in, page load to final state, {} ms",
        started.elapsed().as_millis()
    );
    assert!(text.contains("You are verified"), "{text}");
    assert_eq!(url, back);
    let done = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(done.user_id.as_ref().map(|u| u.as_str()), Some("pia"));
    let result = done.result.unwrap();
    assert_eq!(result.status, FlowResultStatus::Authenticated);
    assert_eq!(
        result.attributes["pingid.authentication.type"],
        "FIDO2_BIOMETRICS"
    );
    assert_eq!(
        result.attributes["pingid.authentication.fido.credential_id"],
        listed[0]["id"]
    );
    let amr = result.attributes["pingid.authentication.amr"]
        .as_array()
        .unwrap();
    assert!(amr.contains(&json!("user")), "{amr:?}");

    // The OpenID redirect without login_hint: the prompt runs a passkey sign-in, and the ID
    // token names the user the passkey named.
    let oidc_back = format!("{}/healthz?rp=oidc", server.base_url);
    let (rp, key) = redirect_client(&server, &oidc_back).await;
    let start = rp
        .authorization_url(
            &key,
            &oidc_back,
            "",
            json!({"login_hint": null, "scope": "openid profile"}),
        )
        .unwrap();
    page.goto(&start.url);
    let (_, landed) = page.finish_and_stay("MFA_COMPLETED").await;
    assert!(landed.starts_with(&format!("{oidc_back}&")), "{landed}");
    let landed = url::Url::parse(&landed).unwrap();
    let code = landed
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.to_string())
        .expect("a code");
    let tokens = rp
        .exchange_code(&code, &oidc_back, &start.code_verifier)
        .await
        .unwrap();
    let claims = rp.verify_id_token(&tokens.id_token).await.unwrap();
    assert_eq!(claims["preferred_username"], "pia", "{claims}");
    assert_eq!(claims["auth_context"]["user"]["name"], "pia", "{claims}");
    assert_eq!(claims["auth_context"]["factor"], "webauthn", "{claims}");

    // The same authenticator at another application (same RP id, passkeys on): its passkey
    // names nobody there.
    let other = server.server.create_application("Other App").await.unwrap();
    let other_customer = CustomerApi::new(&server.base_url, &other.api_key);
    let (status, body) = reqwest::Client::new()
        .put(format!("{}/v1/application/fido-settings", server.base_url))
        .bearer_auth(&other.api_key)
        .json(&json!({"discoverable_credentials": true}))
        .send()
        .await
        .map(|r| (r.status(), r))
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{:?}", body.text().await);
    refused_on_the_page(&mut page, &other_customer, &back).await;

    // A deleted user's passkey (still on the authenticator) signs nobody in.
    let (status, _) = api(&server, reqwest::Method::DELETE, "/v1/users/pia", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    refused_on_the_page(&mut page, &server.customer, &back).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_credential_that_is_not_a_passkey_is_not_offered() {
    if !browser_available() {
        return;
    }
    let server = localhost_server(Backend::Sqlite).await;
    server.user("rene").await;
    let prefix = format!("{}/healthz?rp=", server.base_url);
    let mut page = PromptPage::open(
        &format!("{}/healthz", server.base_url),
        &[
            "--authenticator",
            "usb:uv",
            "--stay",
            "--timeout",
            "300",
            "--return-prefix",
            &prefix,
        ],
    );
    // The OpenID redirect without login_hint, while passkeys are off: refused as
    // invalid_request, back at the client.
    let oidc_back = format!("{}/healthz?rp=oidc", server.base_url);
    let (rp, key) = redirect_client(&server, &oidc_back).await;
    let start = rp
        .authorization_url(&key, &oidc_back, "", json!({"login_hint": null}))
        .unwrap();
    let answer = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(&start.url)
        .send()
        .await
        .unwrap();
    let location = answer
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        location.starts_with(&oidc_back),
        "{} {location}",
        answer.status()
    );
    let error = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "error")
        .map(|(_, v)| v.to_string());
    assert_eq!(error.as_deref(), Some("invalid_request"), "{location}");

    // Registered while the application did not ask for discoverable credentials.
    register_on(
        &mut page,
        &server,
        "rene",
        AuthenticationMethod::SecurityKey,
    )
    .await;
    assert_eq!(credentials(&server, "rene").await[0]["discoverable"], false);
    set_fido(&server, json!({"discoverable_credentials": true})).await;
    let back = back_to(&server, "not-a-passkey");
    refused_on_the_page_or_not_offered(&mut page, &server, &back).await;
}

/// A passkey sign-in the authenticator cannot answer (it has no passkey for this RP id), or
/// whose answer the server refuses: either way the page says it did not work and the flow is
/// not completed nor bound.
async fn refused_on_the_page_or_not_offered(
    page: &mut PromptPage,
    server: &TestServer,
    back: &str,
) {
    let flow = server
        .customer
        .create_flow(&passkey_request(back))
        .await
        .unwrap();
    page.goto(flow.prompt_url.as_deref().unwrap());
    let shown = page.error_in("ASSERTION_REQUIRED").await;
    assert!(
        shown["error"].as_str().unwrap().contains("did not work"),
        "{shown}"
    );
    let after = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(after.status, FlowStatus::AssertionRequired);
    assert!(after.user_id.is_none());
    assert!(after.result.is_none());
}

/// A redirect MFA client of the server's application returning to `redirect`.
async fn redirect_client(server: &TestServer, redirect: &str) -> (RelyingParty, RpSigningKey) {
    let key = RpSigningKey::generate();
    let registered = server
        .customer
        .register_ciba_client(&RegisterCibaClient {
            client_name: "Passkey Portal".into(),
            backchannel_token_delivery_mode: DeliveryMode::Poll,
            backchannel_client_notification_endpoint: None,
            token_endpoint_auth_method: ClientAuthMethod::PrivateKeyJwt,
            jwks: Some(key.jwks()),
            backchannel_authentication_request_signing_alg: None,
            backchannel_user_code_parameter: false,
            redirect_uris: vec![redirect.to_string()],
            grant_types: Vec::new(),
        })
        .await
        .unwrap();
    let issuer = server.config().public_url.clone().unwrap();
    let rp = RelyingParty::discover(
        issuer.as_str().trim_end_matches('/'),
        &registered.client_id,
        ClientCredentials::PrivateKeyJwt(key.clone()),
    )
    .await
    .unwrap();
    (rp, key)
}

on_each_backend! {
    passkey_flows_over_http => passkey_http;
}

/// A credential as a browser would post it, for a credential id nobody registered.
fn forged_assertion(id: &str) -> Value {
    json!({
        "id": id,
        "rawId": id,
        "type": "public-key",
        "response": {
            "authenticatorData": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAFAAAAAQ",
            "clientDataJSON": "eyJ0eXBlIjoid2ViYXV0aG4uZ2V0In0",
            "signature": "AAAAAAAAAAA",
            "userHandle": "cGlh"
        },
        "extensions": {}
    })
}

async fn passkey_http(backend: Backend) {
    let server = localhost_server(backend).await;
    server.user("sam").await;
    let c = &server.customer;

    // The opt-in: passkeys off → typed refusal; user_id with passkey, or neither → invalid.
    refused(
        c.create_flow(&CreateFlowRequest::passkey()).await,
        ErrorCode::PasskeysNotEnabled,
    );
    set_fido(&server, json!({"discoverable_credentials": true})).await;
    let mut both = CreateFlowRequest::passkey();
    both.user_id = Some("sam".parse().unwrap());
    refused(c.create_flow(&both).await, ErrorCode::InvalidRequest);
    let mut neither = CreateFlowRequest::passkey();
    neither.passkey = false;
    refused(c.create_flow(&neither).await, ErrorCode::InvalidRequest);
    let mut mandatory = CreateFlowRequest::passkey();
    mandatory.mandatory_methods = vec![AuthenticationMethod::Platform];
    refused(c.create_flow(&mandatory).await, ErrorCode::InvalidRequest);
    let (status, body) = api(
        &server,
        reqwest::Method::POST,
        "/v1/flows",
        Some(json!({"application_name": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Options that name nobody: an empty allow list, user verification required, a fresh
    // challenge each time, nothing else differing between two sign-ins.
    let one = c.create_flow(&CreateFlowRequest::passkey()).await.unwrap();
    let two = c.create_flow(&CreateFlowRequest::passkey()).await.unwrap();
    let options = |f: &tessera_protocol::flows::FlowState| {
        f.fido.clone().unwrap().request_options.unwrap()["publicKey"].clone()
    };
    let (o1, o2) = (options(&one), options(&two));
    assert_eq!(o1["allowCredentials"], json!([]));
    assert_eq!(o1["userVerification"], "required");
    assert_ne!(o1["challenge"], o2["challenge"]);
    let mut same1 = o1.clone();
    let mut same2 = o2.clone();
    same1["challenge"] = Value::Null;
    same2["challenge"] = Value::Null;
    assert_eq!(same1, same2, "the options carry nothing but the challenge");
    let text = serde_json::to_string(&one).unwrap();
    assert!(!text.contains("sam"), "{text}");
    assert!(one.user_id.is_none());

    // Only the passkey is offered: no push, no passcode, no recovery code, no QR.
    assert_eq!(
        one.actions,
        vec![
            FlowActionName::CheckAssertion,
            FlowActionName::Authenticate,
            FlowActionName::CancelAuthentication
        ]
    );
    refused(
        c.flow_action(one.id.as_str(), &FlowAction::UseCode {})
            .await,
        ErrorCode::ActionNotAllowed,
    );
    refused(
        c.flow_action(
            one.id.as_str(),
            &FlowAction::CheckRecoveryCode {
                recovery_code: "aaaa-bbbb".into(),
            },
        )
        .await,
        ErrorCode::ActionNotAllowed,
    );

    // An unknown credential: refused, recorded, nothing bound; the challenge is spent (a
    // replay finds nothing) and authenticate asks for a new one.
    let check = |id: &str| FlowAction::CheckAssertion {
        credential: forged_assertion(id),
    };
    refused(
        c.flow_action(one.id.as_str(), &check("AAECAwQFBgcICQoLDA0ODw"))
            .await,
        ErrorCode::FidoVerificationFailed,
    );
    let err = c
        .flow_action(one.id.as_str(), &check("AAECAwQFBgcICQoLDA0ODw"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FidoVerificationFailed));
    assert!(format!("{err:?}").contains("already answered"), "{err:?}");
    let after = c.flow(one.id.as_str()).await.unwrap();
    assert_eq!(after.status, FlowStatus::AssertionRequired);
    assert!(after.user_id.is_none());
    let renewed = c
        .flow_action(
            one.id.as_str(),
            &FlowAction::Authenticate {
                mobile_payload: None,
                authorization_payload: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(renewed.status, FlowStatus::AssertionRequired);
    assert_ne!(options(&renewed)["challenge"], o1["challenge"]);
    let history = c.flow_events(one.id.as_str()).await.unwrap();
    let refusals = history
        .events
        .iter()
        .filter(|e| {
            e.action == "checkAssertion" && e.error == Some(ErrorCode::FidoVerificationFailed)
        })
        .count();
    assert_eq!(refusals, 2, "{history:?}");
    // A burst of answers at once on a fresh challenge: none completes, none binds.
    let answers = (0..8).map(|_| {
        let c = c.clone();
        let id = two.id.to_string();
        async move { c.flow_action(&id, &check("AAECAwQFBgcICQoLDA0ODw")).await }
    });
    for answer in futures::future::join_all(answers).await {
        let e = answer.unwrap_err();
        assert!(
            matches!(
                e.code(),
                Some(ErrorCode::FidoVerificationFailed | ErrorCode::Conflict)
            ),
            "{e:?}"
        );
    }
    let after = c.flow(two.id.as_str()).await.unwrap();
    assert_eq!(after.status, FlowStatus::AssertionRequired);
    assert!(after.user_id.is_none());

    // Cancelled without a user: over, bound to nobody.
    let cancelled = c
        .flow_action(two.id.as_str(), &FlowAction::CancelAuthentication {})
        .await
        .unwrap();
    assert_eq!(cancelled.status, FlowStatus::Canceled);
    assert!(cancelled.user_id.is_none());
}
