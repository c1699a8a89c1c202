//! End to end in a real browser (headless Chromium, `tests/browser/prompt_page.mjs`), starting
//! where a user starts:
//! - at a relying party's `/oidc/authorize` link (a request object signed by the client with
//!   `login_hint`, PKCE S256, `state`, `nonce`): the browser is sent to the hosted prompt, the
//!   page shows the number, the real core approves the push with it, the browser lands on the
//!   redirect URI with a code the test exchanges for tokens it verifies (signature against the
//!   JWKS, nonce, acr, amr). The time from the link to the code is printed
//!   (`OIDC BROWSER SIGN-IN`).
//! - on the hosted prompt, the QR alternative: "scan a QR code with the app instead", the real
//!   core scans and approves it, and the page follows the flow to the end.
//!
//! Skipped (with a note) without node, Chromium and playwright-core, unless
//! `TESSERA_REQUIRE_BROWSER=1`.

use std::time::{Duration, Instant};

use serde_json::json;
use tessera_examples::relying_party::{ClientCredentials, RelyingParty, RpSigningKey};
use tessera_protocol::api::AuthenticationSettings;
use tessera_protocol::authentication::NumberMatching;
use tessera_protocol::ciba::{ClientAuthMethod, DeliveryMode, RegisterCibaClient};
use tessera_protocol::flows::{FlowResultStatus, FlowStatus};
use tessera_tests::{Backend, TestServer};

use crate::hosted::{hosted_request, paired};
use crate::hosted_browser::{PromptPage, browser_available, return_url};

/// A query parameter of a URL.
fn param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relying_partys_authorize_link_runs_the_prompt_and_yields_verified_tokens() {
    if !browser_available() {
        return;
    }
    let server = TestServer::start(Backend::Sqlite).await;
    server
        .customer
        .set_authentication_settings(&AuthenticationSettings {
            number_matching: NumberMatching::Choice,
            ..AuthenticationSettings::default()
        })
        .await
        .unwrap();
    let (device, enrollment) = paired(&server, "alice").await;
    // The relying party's redirect URI: a page of the test server, so the browser lands.
    let redirect = format!("{}/healthz", server.base_url);
    let key = RpSigningKey::generate();
    let registered = server
        .customer
        .register_ciba_client(&RegisterCibaClient {
            client_name: "Example Portal".into(),
            backchannel_token_delivery_mode: DeliveryMode::Poll,
            backchannel_client_notification_endpoint: None,
            token_endpoint_auth_method: ClientAuthMethod::PrivateKeyJwt,
            jwks: Some(key.jwks()),
            backchannel_authentication_request_signing_alg: None,
            backchannel_user_code_parameter: false,
            redirect_uris: vec![redirect.clone()],
            grant_types: Vec::new(),
        })
        .await
        .unwrap();
    let rp = RelyingParty::discover(
        &server.base_url,
        &registered.client_id,
        ClientCredentials::PrivateKeyJwt(key.clone()),
    )
    .await
    .unwrap();
    let start = rp
        .authorization_url(
            &key,
            &redirect,
            "alice",
            json!({"scope": "openid profile", "acr_values": "mfa"}),
        )
        .unwrap();

    let started = Instant::now();
    let mut page = PromptPage::open(&start.url, &["--return-prefix", &redirect]);
    let shown = page.state("PUSH_CONFIRMATION_WAITING").await;
    let number: u32 = shown["number"]
        .as_str()
        .expect("the page shows the number")
        .trim()
        .parse()
        .expect("a number");
    // The phone (the real core) pulls the push and picks the number the page shows.
    let incoming = device
        .auth
        .wait_for_requests(&enrollment, Duration::from_secs(10))
        .await
        .unwrap()
        .into_iter()
        .next()
        .expect("the push");
    assert_eq!(incoming.number_matching, NumberMatching::Choice);
    device
        .auth
        .approve(&incoming, vec!["fpt".into()], Some(number))
        .await
        .unwrap();
    let (text, landed) = page.finish("MFA_COMPLETED").await;
    let elapsed = started.elapsed();
    println!(
        "OIDC BROWSER SIGN-IN: link to code {} ms (debug build, shared machine, includes Chromium's start and the test's approval)",
        elapsed.as_millis()
    );
    assert!(text.contains("You are verified"), "{text}");
    assert!(landed.starts_with(&format!("{redirect}?")), "{landed}");
    assert_eq!(
        param(&landed, "state").as_deref(),
        Some(start.state.as_str())
    );
    assert_eq!(
        param(&landed, "iss").as_deref(),
        Some(server.base_url.as_str())
    );
    let code = param(&landed, "code").expect("a code");

    let tokens = rp
        .exchange_code(&code, &redirect, &start.code_verifier)
        .await
        .unwrap();
    // Signature (ES256, against the server's JWKS), issuer, audience, expiry.
    let claims = rp.verify_id_token(&tokens.id_token).await.unwrap();
    assert_eq!(claims["iss"], json!(server.base_url));
    assert_eq!(claims["aud"], json!(rp.client_id));
    assert_eq!(claims["nonce"], json!(start.nonce));
    assert_eq!(claims["acr"], json!("mfa"));
    let amr: Vec<String> = serde_json::from_value(claims["amr"].clone()).unwrap();
    assert!(
        amr.contains(&"mfa".to_string()) && amr.contains(&"fpt".to_string()),
        "{amr:?}"
    );
    assert_eq!(claims["flow_status"], json!("MFA_COMPLETED"));
    assert_eq!(claims["auth_context"]["factor"], json!("push"));
    // The code was for once.
    assert!(
        rp.exchange_code(&code, &redirect, &start.code_verifier)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_qr_alternative_on_the_page_is_scanned_and_approved_by_the_app() {
    if !browser_available() {
        return;
    }
    let server = TestServer::start(Backend::Sqlite).await;
    let (device, enrollment) = paired(&server, "alice").await;
    let back = return_url(&server, "qr");
    let flow = server
        .customer
        .create_flow(&hosted_request("alice", &back, &[]))
        .await
        .unwrap();
    let prompt = flow.prompt_url.clone().unwrap();
    let mut page = PromptPage::open(&prompt, &["--return-prefix", &back, "--click", "useQrCode"]);
    // The page offers the QR code; the driver presses it; the code is shown.
    loop {
        let shown = page.state("PUSH_CONFIRMATION_WAITING").await;
        if shown["qr"] == json!(true) {
            break;
        }
    }
    let qr = server
        .customer
        .flow(flow.id.as_str())
        .await
        .unwrap()
        .qr
        .expect("the flow shows a QR code");
    let scanned = device
        .auth
        .authenticate_with_qr(qr.qr_uri.as_deref().unwrap())
        .await
        .unwrap();
    device
        .auth
        .approve_qr(&scanned, &scanned.users[0].user_id, vec![])
        .await
        .unwrap();
    let (text, url) = page.finish("MFA_COMPLETED").await;
    assert!(text.contains("You are verified"), "{text}");
    assert_eq!(url, back);
    let done = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(done.status, FlowStatus::MfaCompleted);
    let result = done.result.unwrap();
    assert_eq!(result.status, FlowResultStatus::Authenticated);
    assert_eq!(result.enrollment_id, Some(enrollment));
}
