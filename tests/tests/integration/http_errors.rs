//! End to end: bad input at the HTTP boundary gets a typed JSON error with the right status, no
//! panic, and writes nothing. Driven with raw HTTP, as a hostile or buggy client would.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tessera_protocol::error::ErrorBody;
use tessera_protocol::pairing::{MobilePayload, PairingUri};
use tessera_tests::{Backend, TestDevice, TestServer, on_each_backend};

on_each_backend! {
    malformed_bodies_get_typed_errors_and_write_nothing => malformed_bodies;
    an_invalid_p256_point_is_refused_and_the_code_survives => invalid_point;
    the_customer_api_needs_a_valid_api_key => api_key_required;
}

async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> ErrorBody {
    let got = response.status().as_u16();
    let ct = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.unwrap();
    assert_eq!(got, status, "status for {code}: body {text}");
    assert!(
        ct.starts_with("application/json"),
        "{code}: content-type {ct}"
    );
    let body: ErrorBody = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(body.error.code.as_str(), code, "{text}");
    assert!(!body.error.message.is_empty());
    body
}

async fn malformed_bodies(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let http = reqwest::Client::new();
    let key = &server.app.api_key;
    let users = format!("{}/v1/users", server.base_url);
    let device_pairings = format!("{}/v1/device/pairings", server.base_url);

    // Not JSON.
    let r = http
        .post(&users)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body("{\"user_id\": ")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "malformed_json").await;
    // Wrong content type.
    let r = http
        .post(&users)
        .bearer_auth(key)
        .header("content-type", "text/plain")
        .body("{\"user_id\":\"x\"}")
        .send()
        .await
        .unwrap();
    expect_error(r, 415, "unsupported_media_type").await;
    let r = http.post(&device_pairings).body("{}").send().await.unwrap();
    expect_error(r, 415, "unsupported_media_type").await;
    // JSON of the wrong shape.
    for body in [
        json!({"user_id": 42}),
        json!({"user_id": ""}),
        json!({"user_id": "x", "unexpected": true}),
        json!([]),
    ] {
        let r = http
            .post(&users)
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        expect_error(r, 400, "invalid_request").await;
    }
    let r = http
        .post(&device_pairings)
        .json(&json!({"pairing_code": "ABCD-EFGH-JKMN"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "invalid_request").await;
    // Oversized bodies, with and without a content length.
    let huge = json!({"user_id": "x", "display_name": "a".repeat(2 * 1024 * 1024)});
    let r = http
        .post(&users)
        .bearer_auth(key)
        .json(&huge)
        .send()
        .await
        .unwrap();
    expect_error(r, 413, "payload_too_large").await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..64).map(|_| Ok(vec![b' '; 64 * 1024])).collect();
    let streamed = http
        .post(&device_pairings)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    // The server answers 413 as soon as the limit is crossed and stops reading; the client may
    // see that answer, or a broken pipe if it was still writing. Either way nothing was read
    // past the limit, and the server stays healthy (checked below).
    if let Ok(r) = streamed {
        expect_error(r, 413, "payload_too_large").await;
    }
    // The server closes that connection after its answer; a pooled client could hand the next
    // request to it before it sees the close. The requests below are about the server, so
    // they use fresh connections.
    let http = reqwest::Client::new();
    // Unknown route, wrong method.
    let r = http
        .get(format!("{}/v1/nothing-here", server.base_url))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "not_found").await;
    let r = http.delete(&users).bearer_auth(key).send().await.unwrap();
    expect_error(r, 405, "method_not_allowed").await;
    // Garbage signed messages in an otherwise valid pairing request.
    let uri = server.pairing_uri("alice").await;
    let code = PairingUri::parse(&uri)
        .unwrap()
        .code
        .display_form()
        .to_string();
    for (registration, proof) in [
        ("x.y.z", "x.y.z"),
        ("", ""),
        ("a.b", "a.b.c.d"),
        (&*"A".repeat(40_000), "x"),
    ] {
        let r = http
            .post(&device_pairings)
            .json(&json!({"pairing_code": code, "registration": registration, "user_verification_proof": proof}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert!((400..500).contains(&status), "{status}");
        let body: ErrorBody = r.json().await.unwrap();
        assert!(
            [
                "invalid_signature",
                "invalid_registration",
                "invalid_request"
            ]
            .contains(&body.error.code.as_str()),
            "{body:?}"
        );
    }
    // Nothing was written: alice has no device and her code still pairs a real device.
    assert!(
        server
            .customer
            .list_devices("alice")
            .await
            .unwrap()
            .devices
            .is_empty()
    );
    assert_eq!(
        server
            .customer
            .get_user("alice")
            .await
            .unwrap()
            .device_count,
        0
    );
    let device = TestDevice::new().await;
    device
        .auth
        .pair(&uri, None)
        .await
        .expect("the code was not consumed");
    // The server is still healthy.
    let health = http
        .get(format!("{}/healthz", server.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

/// Replaces the possession key in a real registration with a point that is not on P-256.
fn with_off_curve_key(registration_jws: &str, member: &str) -> String {
    let parts: Vec<&str> = registration_jws.split('.').collect();
    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let y = payload[member]["y"].as_str().unwrap().to_string();
    let mut y_bytes = URL_SAFE_NO_PAD.decode(y).unwrap();
    y_bytes[31] ^= 0x01;
    payload[member]["y"] = URL_SAFE_NO_PAD.encode(y_bytes).into();
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap()),
        parts[2]
    )
}

async fn invalid_point(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let device = TestDevice::new().await;
    let http = reqwest::Client::new();
    let uri = server.pairing_uri("alice").await;
    let code = PairingUri::parse(&uri)
        .unwrap()
        .code
        .display_form()
        .to_string();
    // A genuine registration from the real core, with one key bent off the curve.
    let genuine = MobilePayload::decode(
        &device
            .auth
            .create_mobile_payload(&server.base_url)
            .await
            .unwrap(),
    )
    .unwrap();
    for member in ["possession_key", "user_verification_key"] {
        let registration = with_off_curve_key(&genuine.registration, member);
        let r = http
            .post(format!("{}/v1/device/pairings", server.base_url))
            .json(&json!({
                "pairing_code": code,
                "registration": registration,
                "user_verification_proof": genuine.user_verification_proof,
            }))
            .send()
            .await
            .unwrap();
        expect_error(r, 400, "invalid_public_key").await;
        // The same through the relay.
        let relayed = MobilePayload {
            registration,
            ..genuine.clone()
        };
        let r = http
            .post(format!("{}/v1/users/alice/relay-pairings", server.base_url))
            .bearer_auth(&server.app.api_key)
            .json(&json!({"mobile_payload": relayed.encode().unwrap()}))
            .send()
            .await
            .unwrap();
        let body: ErrorBody = r.json().await.unwrap();
        assert!(
            ["invalid_public_key", "invalid_mobile_payload"].contains(&body.error.code.as_str()),
            "{body:?}"
        );
    }
    assert!(
        server
            .customer
            .list_devices("alice")
            .await
            .unwrap()
            .devices
            .is_empty()
    );
    device
        .auth
        .pair(&uri, None)
        .await
        .expect("the code was not consumed");
}

async fn api_key_required(backend: Backend) {
    let server = TestServer::start(backend).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/users", server.base_url);
    let body = json!({"user_id": "eve"});
    let r = http.post(&url).json(&body).send().await.unwrap();
    expect_error(r, 401, "unauthorized").await;
    let r = http
        .post(&url)
        .bearer_auth("tsk_wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "unauthorized").await;
    let r = http
        .post(&url)
        .header("authorization", "Basic Zm9vOmJhcg==")
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "unauthorized").await;
    // Another application's key sees nothing of this one.
    server.user("alice").await;
    let other = server.server.create_application("Other").await.unwrap();
    let other_api = tessera_examples::customer::CustomerApi::new(&server.base_url, &other.api_key);
    let err = other_api.get_user("alice").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.as_str()), Some("user_not_found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pairing_code_guessing_is_throttled() {
    // SQLite only: the throttle counts per client address in the database, and on a shared
    // PostgreSQL database every test's client is 127.0.0.1.
    // A clock that stands still: all the guesses fall in one throttle minute (a run crossing
    // into the next one would find fresh counters).
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.clock = std::sync::Arc::new(tessera_server::ManualClock::new());
        c.pairing_failures_per_ip_per_minute = 5;
    })
    .await;
    server.user("alice").await;
    let uri = server.pairing_uri("alice").await;
    let code = tessera_protocol::pairing::PairingUri::parse(&uri)
        .unwrap()
        .code;
    // The guesses share a code bucket (the first two characters) other than the right code's.
    let prefix = if code.display_form().starts_with("ZZ") {
        "YYYY"
    } else {
        "ZZZZ"
    };
    let device = TestDevice::new().await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let guess = format!("{prefix}-ZZZZ-{:04}", i);
        let err = device
            .auth
            .pair(&guess, Some(&server.base_url))
            .await
            .unwrap_err();
        statuses.push(match err {
            tessera_core::CoreError::Server { code, .. } => code.as_str().to_string(),
            other => panic!("{other:?}"),
        });
    }
    assert_eq!(&statuses[..5], ["invalid_pairing_code"; 5], "{statuses:?}");
    assert_eq!(&statuses[5..], ["rate_limited"; 3], "{statuses:?}");
    // While throttled, even the right code in the guessed bucket would be refused: guessing
    // there gains nothing. A right code in another bucket pairs (a neighbour behind the same
    // address is not locked out).
    device.auth.pair(&uri, None).await.unwrap();
}

/// 40 guesses at once from one address against a limit of 10: each takes its attempt atomically
/// before its code is compared, so no more than 10 codes are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrent_burst_of_pairing_guesses_checks_no_more_codes_than_the_limit() {
    // SQLite only, as above: the throttle counts per client address.
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.clock = std::sync::Arc::new(tessera_server::ManualClock::new());
        c.pairing_failures_per_ip_per_minute = 10;
    })
    .await;
    server.user("alice").await;
    let mut guesses = Vec::new();
    for i in 0..40 {
        let base_url = server.base_url.clone();
        guesses.push(tokio::spawn(async move {
            let device = TestDevice::new().await;
            let guess = format!("ZZZZ-ZZZZ-{:04}", i);
            match device.auth.pair(&guess, Some(&base_url)).await.unwrap_err() {
                tessera_core::CoreError::Server { code, .. } => code.as_str().to_string(),
                other => panic!("{other:?}"),
            }
        }));
    }
    let mut checked = 0;
    for guess in guesses {
        match guess.await.unwrap().as_str() {
            "invalid_pairing_code" => checked += 1,
            "rate_limited" => {}
            other => panic!("unexpected answer {other}"),
        }
    }
    assert!(
        checked <= 10,
        "{checked} codes were checked against a limit of 10"
    );
    assert!(checked >= 1, "some guesses were checked");
}
