//! End to end: the API contract. Every error, whichever layer produces it (a query string or
//! path parameter that does not parse, a missing or wrong content type, a body too large, an
//! unknown route or method, a JSON body that is not an object), is the documented JSON error
//! body with the documented status; and every route the server answers is in its OpenAPI
//! document.

use serde_json::json;
use tessera_core::CoreError;
use tessera_protocol::error::ErrorBody;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::pairing::PairingUri;
use tessera_tests::{Backend, TestDevice, TestServer, on_each_backend};

on_each_backend! {
    every_error_is_the_json_error_body => every_error_is_json;
    non_object_json_bodies_are_refused_and_write_nothing => non_object_bodies;
    pairing_under_another_name_names_the_servers_url => audience_named;
}

async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> ErrorBody {
    let got = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.expect("body");
    assert_eq!(got, status, "status for {code}: body {text}");
    assert!(
        content_type.starts_with("application/json"),
        "{code}: content-type {content_type}, body {text}"
    );
    let body: ErrorBody = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(body.error.code.as_str(), code, "{text}");
    assert!(!body.error.message.is_empty());
    body
}

async fn every_error_is_json(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let http = reqwest::Client::new();
    let key = &server.app.api_key;
    let base = &server.base_url;

    // A created authentication to poll.
    let created = http
        .post(format!("{base}/v1/qr-sessions"))
        .bearer_auth(key)
        .json(&json!({}))
        .send()
        .await
        .expect("send");
    assert_eq!(created.status(), 201);
    let session: serde_json::Value = created.json().await.expect("json");
    let session_id = session["session_id"]
        .as_str()
        .expect("session id")
        .to_string();

    // Malformed query strings: a value of the wrong type, percent-encoding that is not UTF-8.
    for query in ["wait=soon", "wait=-1", "wait=1&wait=2", "seen=%FF%FE"] {
        let r = http
            .get(format!("{base}/v1/qr-sessions/{session_id}?{query}"))
            .bearer_auth(key)
            .send()
            .await
            .expect("send");
        let body = expect_error(r, 400, "invalid_request").await;
        assert!(
            body.error.message.contains("query string"),
            "{query}: {}",
            body.error.message
        );
        assert!(!body.error.message.contains("soon"), "no submitted value");
    }
    // A path parameter that is not valid percent-encoded UTF-8.
    let r = http
        .get(format!("{base}/v1/users/%FF%FE"))
        .bearer_auth(key)
        .send()
        .await
        .expect("send");
    expect_error(r, 400, "invalid_request").await;
    // A missing content type on a JSON body, and a wrong one.
    let r = http
        .post(format!("{base}/v1/users"))
        .bearer_auth(key)
        .body("{\"user_id\":\"bob\"}")
        .send()
        .await
        .expect("send");
    expect_error(r, 415, "unsupported_media_type").await;
    let r = http
        .post(format!("{base}/v1/qr-sessions"))
        .bearer_auth(key)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("send");
    expect_error(r, 415, "unsupported_media_type").await;
    // Too large a body on a route that reads raw bytes (the device API, the OpenID endpoints).
    // One byte over the limit: small enough that the client has written all of it before the
    // server answers 413 and closes (a far larger body races that close: a broken pipe).
    let huge = "a".repeat(server.config().max_body_bytes + 1);
    // A fresh connection for each: the server closes one whose body it refused to read.
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/device/qr-sessions/claim"))
        .header("content-type", "application/json")
        .body(huge.clone())
        .send()
        .await
        .expect("send");
    expect_error(r, 413, "payload_too_large").await;
    // The OpenID endpoints answer the OAuth error body (RFC 6749 §5.2) instead.
    for path in ["/oidc/token", "/oidc/backchannel"] {
        let r = reqwest::Client::new()
            .post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(huge.clone())
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 413, "{path}");
        let body: tessera_protocol::ciba::OAuthErrorResponse = r.json().await.expect("OAuth error");
        assert_eq!(body.error, "invalid_request", "{path}");
    }
    let r = reqwest::Client::new()
        .delete(format!("{base}/oidc/token"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 405);
    let body: tessera_protocol::ciba::OAuthErrorResponse = r.json().await.expect("OAuth error");
    assert_eq!(body.error, "invalid_request");
    // Unknown routes and methods, with the allowed methods named.
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{base}/v2/anything"))
        .send()
        .await
        .expect("send");
    expect_error(r, 404, "not_found").await;
    let r = http
        .patch(format!("{base}/v1/qr-sessions"))
        .bearer_auth(key)
        .send()
        .await
        .expect("send");
    expect_error(r, 405, "method_not_allowed").await;
    // The customer API without a key.
    let r = http
        .get(format!("{base}/v1/users/alice"))
        .send()
        .await
        .expect("send");
    expect_error(r, 401, "unauthorized").await;
}

async fn non_object_bodies(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let http = reqwest::Client::new();
    let key = &server.app.api_key;
    let base = &server.base_url;
    for body in ["[]", "[\"alice\"]", "null", "\"x\"", "42", "true"] {
        for path in [
            "/v1/qr-sessions",
            "/v1/users",
            "/v1/users/alice/pairings",
            "/v1/users/alice/authentications",
        ] {
            let r = http
                .post(format!("{base}{path}"))
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("send");
            let error = expect_error(r, 400, "invalid_request").await;
            assert!(
                error.error.message.contains("JSON object"),
                "{path} {body}: {}",
                error.error.message
            );
        }
    }
    // Text that is not JSON at all stays `malformed_json`.
    let r = http
        .post(format!("{base}/v1/qr-sessions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body("[1,")
        .send()
        .await
        .expect("send");
    expect_error(r, 400, "malformed_json").await;
    // Nothing was created: no QR session, no user.
    let r = http
        .get(format!("{base}/v1/users/%5B%5D"))
        .bearer_auth(key)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 404);
}

/// A device that reaches the server as `localhost` while the server's identity (the URL devices
/// pin and sign for) is `127.0.0.1` is refused with `audience_mismatch`, and the refusal names
/// the URL to pair with instead, in the protocol error and in the core's error message.
async fn audience_named(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let uri = server.pairing_uri("alice").await;
    let code = PairingUri::parse(&uri)
        .expect("pairing URI")
        .code
        .display_form()
        .to_string();
    let expected = server.base_url.clone();
    assert!(expected.starts_with("http://127.0.0.1:"), "{expected}");
    let localhost = expected.replace("127.0.0.1", "localhost");
    let device = TestDevice::new().await;
    let refused = device
        .auth
        .pair(&code, Some(&localhost))
        .await
        .expect_err("another name for the server");
    match &refused {
        CoreError::Server { code, message } => {
            assert_eq!(*code, ErrorCode::AudienceMismatch);
            assert!(message.contains(&expected), "{message}");
        }
        other => panic!("expected audience_mismatch, got {other:?}"),
    }
    assert!(refused.to_string().contains(&expected), "{refused}");
    // Under the server's own URL the same code pairs.
    let enrollment = device
        .auth
        .pair(&code, Some(&expected))
        .await
        .expect("pairs under the server's URL");
    assert_eq!(enrollment.user_id.as_str(), "alice");
}
