//! End to end over HTTP: the hosted prompt's flow API (`/v1/flow-browser`, authenticated by
//! the flow's browser token only) and its page (`/prompt`). A hosted flow answers a
//! `prompt_url` with the token in the fragment; the page's calls see the flow in the language
//! asked for, follow the push live with an event-driven long poll, apply actions with the
//! customer API's typed errors, refuse other sites' writes and unknown tokens, and bound typed
//! passcodes by the user's OTP failure limit. The page itself carries a strict CSP.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tessera_protocol::authentication::NumberMatching;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::flows::{
    CreateFlowRequest, FlowBrowserState, FlowResultStatus, FlowState, FlowStatus, HostedPrompt,
};
use tessera_protocol::ids::EnrollmentId;
use tessera_tests::{Backend, TestDevice, TestServer, on_each_backend};

on_each_backend! {
    a_hosted_flow_is_run_by_its_browser_token_and_follows_the_push_live => push_approved;
    a_denied_push_ends_a_hosted_flow_and_the_page_can_cancel => denied_and_cancel;
    other_sites_and_unknown_tokens_are_refused => refusals;
    return_urls_and_languages_are_checked_at_creation => creation_checks;
    a_burst_of_wrong_passcodes_is_bounded_by_the_otp_limit => passcode_burst;
}

/// A hosted flow request for `user` returning to `return_url`.
pub(crate) fn hosted_request(
    user: &str,
    return_url: &str,
    ui_locales: &[&str],
) -> CreateFlowRequest {
    let mut request = CreateFlowRequest::new(user.parse().unwrap());
    request.hosted = Some(HostedPrompt {
        return_url: return_url.to_string(),
        ui_locales: ui_locales.iter().map(|s| s.to_string()).collect(),
        web_view: None,
    });
    request
}

/// The browser token in a `prompt_url`.
pub(crate) fn token_of(flow: &FlowState) -> String {
    let url = flow.prompt_url.as_deref().expect("a prompt_url");
    url.split_once('#').expect("a fragment").1.to_string()
}

pub(crate) async fn paired(server: &TestServer, id: &str) -> (TestDevice, EnrollmentId) {
    server.user(id).await;
    let device = TestDevice::new().await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri(id).await, None)
        .await
        .unwrap();
    (device, enrollment.enrollment_id)
}

/// One call of the page's API: (status, body).
async fn browser(
    server: &TestServer,
    method: reqwest::Method,
    query: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().request(
        method,
        format!("{}/v1/flow-browser{query}", server.base_url),
    );
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("send");
    let status = response.status();
    if status.is_success() {
        assert_eq!(
            response.headers()["cache-control"],
            "no-store",
            "browser answers are never cached"
        );
    }
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn view(server: &TestServer, token: &str, query: &str) -> FlowBrowserState {
    let (status, body) = browser(server, reqwest::Method::GET, query, Some(token), &[], None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_value(body).expect("a FlowBrowserState")
}

async fn page_act(server: &TestServer, token: &str, action: Value) -> (StatusCode, Value) {
    let origin = server.base_url.clone();
    browser(
        server,
        reqwest::Method::POST,
        "",
        Some(token),
        &[("origin", &origin), ("sec-fetch-site", "same-origin")],
        Some(action),
    )
    .await
}

fn code_of(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

async fn push_approved(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (device, enrollment) = paired(&server, "alice").await;
    let mut request = hosted_request("alice", "https://rp.example/cb?rid=42", &["de"]);
    request.number_matching = Some(NumberMatching::Choice);
    request.admin_message = Some("<b>Hallo</b>".into());
    let flow = server.customer.create_flow(&request).await.unwrap();
    let prompt_url = flow
        .prompt_url
        .clone()
        .expect("a hosted flow has a prompt_url");
    assert!(
        prompt_url.starts_with(&format!("{}/prompt#", server.base_url)),
        "{prompt_url}"
    );
    let token = token_of(&flow);
    assert_eq!(token.len(), 43, "256 random bits, base64url");
    assert!(!prompt_url.contains(flow.id.as_str()));
    // The customer's GET repeats it; a flow without `hosted` has none.
    let again = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(again.prompt_url.as_deref(), Some(prompt_url.as_str()));
    let plain = server
        .customer
        .create_flow(&CreateFlowRequest::new("alice".parse().unwrap()))
        .await
        .unwrap();
    assert!(plain.prompt_url.is_none());

    // The page's view: in German, nothing secret, nothing of the customer API's.
    let (status, raw) = browser(&server, reqwest::Method::GET, "", Some(&token), &[], None).await;
    assert_eq!(status, StatusCode::OK);
    for secret in ["authorization_nonce", "user_id", "id", "prompt_url"] {
        assert!(
            raw.get(secret).is_none(),
            "{secret} is not for the page: {raw}"
        );
    }
    let first: FlowBrowserState = serde_json::from_value(raw).unwrap();
    assert_eq!(first.status, FlowStatus::AuthenticationRequired);
    assert_eq!(first.lang, "de");
    assert_eq!(first.texts["cancel"], "Abbrechen");
    assert_eq!(first.return_url, "https://rp.example/cb?rid=42");
    assert_eq!(first.admin_message.as_deref(), Some("<b>Hallo</b>"));
    assert_eq!(first.application_name, "End-to-end Test App");

    // The page starts the push; it shows the number to pick.
    let (status, body) = page_act(&server, &token, json!({"action": "authenticate"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let waiting: FlowBrowserState = serde_json::from_value(body).unwrap();
    assert_eq!(waiting.status, FlowStatus::PushConfirmationWaiting);
    let number = waiting.number_to_show.expect("number matching");
    assert!(waiting.version > first.version);

    // The long poll wakes when the phone answers, not at its deadline.
    let poller = {
        let base = server.base_url.clone();
        let token = token.clone();
        let seen = waiting.version;
        tokio::spawn(async move {
            let started = Instant::now();
            let state: FlowBrowserState = reqwest::Client::new()
                .get(format!("{base}/v1/flow-browser?wait=25&seen={seen}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (state, started.elapsed())
        })
    };
    let customer_view = server.customer.flow(flow.id.as_str()).await.unwrap();
    let push = customer_view.push.expect("the push");
    let incoming = device
        .pull_request(&enrollment, &push.authentication_id)
        .await;
    device
        .auth
        .approve(&incoming, vec![], Some(number))
        .await
        .unwrap();
    let (done, waited) = poller.await.unwrap();
    assert!(waited < Duration::from_secs(15), "woken late: {waited:?}");
    assert_eq!(done.status, FlowStatus::MfaCompleted);
    assert_eq!(done.result, Some(FlowResultStatus::Authenticated));
    assert!(done.actions.is_empty());
    // The customer (or the OpenID endpoint) reads the outcome server-side.
    let over = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(over.status, FlowStatus::MfaCompleted);

    // A long poll on a final flow answers at once.
    let started = Instant::now();
    let still = view(&server, &token, &format!("?wait=25&seen={}", done.version)).await;
    assert_eq!(still.status, FlowStatus::MfaCompleted);
    assert!(started.elapsed() < Duration::from_secs(5));
    // Over: the page's actions get the customer API's typed refusal.
    let (status, body) = page_act(&server, &token, json!({"action": "cancelAuthentication"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code_of(&body), "action_not_allowed");
}

async fn denied_and_cancel(backend: Backend) {
    let server =
        TestServer::start_with(backend, |c| c.max_pending_authentications_per_user = 10).await;
    let (device, enrollment) = paired(&server, "bob").await;
    let flow = server
        .customer
        .create_flow(&hosted_request("bob", "http://127.0.0.1:9/back", &[]))
        .await
        .unwrap();
    let token = token_of(&flow);
    let (status, body) = page_act(&server, &token, json!({"action": "authenticate"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let waiting: FlowBrowserState = serde_json::from_value(body).unwrap();
    let push = server
        .customer
        .flow(flow.id.as_str())
        .await
        .unwrap()
        .push
        .unwrap();
    let incoming = device
        .pull_request(&enrollment, &push.authentication_id)
        .await;
    device.auth.deny(&incoming, false).await.unwrap();
    let denied = view(
        &server,
        &token,
        &format!("?wait=20&seen={}", waiting.version),
    )
    .await;
    assert_eq!(
        denied.status,
        FlowStatus::MfaFailed,
        "a denial ends a hosted flow"
    );
    assert_eq!(denied.result, Some(FlowResultStatus::Denied));
    assert_eq!(denied.lang, "en");

    // Cancel from the page: the pending push is withdrawn.
    let flow = server
        .customer
        .create_flow(&hosted_request("bob", "http://localhost/back", &[]))
        .await
        .unwrap();
    let token = token_of(&flow);
    let (status, _) = page_act(&server, &token, json!({"action": "authenticate"})).await;
    assert_eq!(status, StatusCode::OK);
    let push = server
        .customer
        .flow(flow.id.as_str())
        .await
        .unwrap()
        .push
        .unwrap();
    let (status, body) = page_act(&server, &token, json!({"action": "cancelAuthentication"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "CANCELED");
    assert_eq!(body["result"], "canceled");
    let withdrawn = server
        .customer
        .authentication(&push.authentication_id, 0)
        .await
        .unwrap();
    assert_ne!(
        withdrawn.state,
        tessera_protocol::authentication::AuthenticationState::Pending
    );
    assert_eq!(
        server.customer.flow(flow.id.as_str()).await.unwrap().status,
        FlowStatus::Canceled
    );
}

async fn refusals(backend: Backend) {
    let server = TestServer::start(backend).await;
    paired(&server, "carol").await;
    let flow = server
        .customer
        .create_flow(&hosted_request("carol", "https://rp.example/cb", &[]))
        .await
        .unwrap();
    let token = token_of(&flow);

    // No token, a wrong one, the flow id, the API key: unauthorized, the same answer each time.
    // The last character changed (to one that can end a 256-bit token: never the same).
    let last = if token.ends_with('A') { 'Q' } else { 'A' };
    let forged = format!("{}{last}", &token[..42]);
    let api_key = server.app.api_key.clone();
    for bad in [
        None,
        Some(forged.as_str()),
        Some(flow.id.as_str()),
        Some(api_key.as_str()),
    ] {
        let (status, body) = browser(&server, reqwest::Method::GET, "", bad, &[], None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad:?}");
        assert_eq!(code_of(&body), "unauthorized");
        let (status, _) = browser(
            &server,
            reqwest::Method::POST,
            "",
            bad,
            &[],
            Some(json!({"action": "cancelAuthentication"})),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Another application's flow is not reachable with its token through the customer API
    // either; and the customer API does not take the browser token.
    let err = reqwest::Client::new()
        .get(format!("{}/v1/flows/{}", server.base_url, flow.id))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(err.status(), StatusCode::UNAUTHORIZED);

    // Writes from another site are refused and change nothing.
    for headers in [
        vec![("origin", "https://evil.example")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
        vec![("origin", "null")],
    ] {
        let (status, body) = browser(
            &server,
            reqwest::Method::POST,
            "",
            Some(&token),
            &headers,
            Some(json!({"action": "cancelAuthentication"})),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
        assert_eq!(code_of(&body), "cross_origin_refused");
    }
    let unchanged = view(&server, &token, "").await;
    assert_eq!(unchanged.status, FlowStatus::AuthenticationRequired);
    assert_eq!(unchanged.version, 1);

    // Wrong actions get the customer API's typed errors.
    let (status, body) = page_act(&server, &token, json!({"action": "checkOtp", "otp": "1"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code_of(&body), "action_not_allowed");
    assert_eq!(
        body["error"]["allowed_actions"],
        json!(["authenticate", "cancelAuthentication"])
    );
    let (status, body) = page_act(&server, &token, json!({"action": "approveAll"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

async fn creation_checks(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("dave").await;
    for (url, locales) in [
        ("http://rp.example/cb", vec![]),
        ("https://rp.example/cb#x", vec![]),
        ("javascript:alert(1)", vec![]),
        ("/cb", vec![]),
        ("https://rp.example/cb", vec!["not a tag"]),
    ] {
        let err = server
            .customer
            .create_flow(&hosted_request("dave", url, &locales))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(ErrorCode::InvalidRequest),
            "{url} {locales:?}"
        );
    }
    let long = format!("https://rp.example/{}", "a".repeat(2100));
    let err = server
        .customer
        .create_flow(&hosted_request("dave", &long, &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest));

    // The flow's languages come first, then the browser's, then English.
    let flow = server
        .customer
        .create_flow(&hosted_request(
            "dave",
            "https://rp.example/cb",
            &["fr-CA", "de"],
        ))
        .await
        .unwrap();
    let token = token_of(&flow);
    assert_eq!(view(&server, &token, "").await.lang, "fr");
    let flow = server
        .customer
        .create_flow(&hosted_request("dave", "https://rp.example/cb", &[]))
        .await
        .unwrap();
    let token = token_of(&flow);
    let (_, body) = browser(
        &server,
        reqwest::Method::GET,
        "",
        Some(&token),
        &[("accept-language", "de-DE,de;q=0.9,en;q=0.5")],
        None,
    )
    .await;
    assert_eq!(body["lang"], "de");
    assert_eq!(view(&server, &token, "").await.lang, "en");

    // The page and its files: strict CSP, no framing, no referrer, never cached.
    let client = reqwest::Client::new();
    for (path, kind) in [
        ("/prompt", "text/html"),
        ("/prompt.js", "text/javascript"),
        ("/prompt.css", "text/css"),
    ] {
        let response = client
            .get(format!("{}{path}", server.base_url))
            .header("accept-language", "fr")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let h = response.headers();
        assert!(h["content-type"].to_str().unwrap().starts_with(kind));
        let csp = h["content-security-policy"].to_str().unwrap();
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ] {
            assert!(csp.contains(part), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["x-content-type-options"], "nosniff");
        if path == "/prompt" {
            let html = response.text().await.unwrap();
            assert!(html.contains("<html lang=\"fr\">"), "{html}");
            assert!(html.contains("<title>Vérification de connexion</title>"));
            // Its only scripts: its own file and a JSON data block (never executed).
            let scripts: Vec<&str> = html
                .match_indices("<script")
                .map(|(i, _)| &html[i..i + 40])
                .collect();
            assert_eq!(scripts.len(), 2, "{scripts:?}");
            assert!(html.contains("<script src=\"/prompt.js\" defer></script>"));
            assert!(html.contains("<script type=\"application/json\" id=\"tessera-texts\">"));
            assert!(
                !html.contains("http://") && !html.contains("https://"),
                "no external assets"
            );
        }
    }
}

async fn passcode_burst(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (device, enrollment) = paired(&server, "erin").await;
    let account = device.enrollment_otp_account(&enrollment).await;
    let mut request = hosted_request("erin", "https://rp.example/cb", &[]);
    request.use_code = Some(true);
    let flow = server.customer.create_flow(&request).await.unwrap();
    let token = token_of(&flow);
    let (status, _) = page_act(&server, &token, json!({"action": "authenticate"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = page_act(&server, &token, json!({"action": "useCode"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "OTP_REQUIRED");
    assert_eq!(body["otp"]["source"], "app");

    let right = device
        .otp_code_at(&account, tessera_protocol::time::now())
        .await;
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    // Twenty wrong passcodes at once: each is refused, the flow moves at most once, and the
    // user's OTP failure limit (5) locks it.
    let attempts = (0..20).map(|_| {
        let server = &server;
        let token = token.clone();
        async move { page_act(server, &token, json!({"action": "checkOtp", "otp": wrong})).await }
    });
    let answers = futures::future::join_all(attempts).await;
    let mut codes: Vec<String> = answers
        .iter()
        .map(|(status, body)| {
            assert!(!status.is_success(), "a wrong passcode passed: {body}");
            code_of(body).to_string()
        })
        .collect();
    codes.sort();
    let invalid = codes.iter().filter(|c| *c == "otp_invalid").count();
    assert!(
        invalid <= 5,
        "more wrong guesses counted than the limit: {codes:?}"
    );
    for code in &codes {
        assert!(
            [
                "otp_invalid",
                "otp_locked",
                "conflict",
                "action_not_allowed"
            ]
            .contains(&code.as_str()),
            "{codes:?}"
        );
    }
    // Whatever the interleaving, the right passcode no longer opens it once locked; if the
    // burst did not reach the limit, the flow still waits and the right code completes it.
    let state = view(&server, &token, "").await;
    let (status, body) =
        page_act(&server, &token, json!({"action": "checkOtp", "otp": right})).await;
    if state.status == FlowStatus::MfaFailed {
        assert_eq!(state.result, Some(FlowResultStatus::OtpLocked));
        assert!(!status.is_success(), "{body}");
    } else {
        assert!(invalid < 5, "{codes:?}");
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}
