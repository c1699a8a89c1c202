//! End to end: signed event webhooks. A local receiver (axum on loopback) checks each delivery's
//! signature, answers as scripted (500, then 429 with `Retry-After`, then 200) and the delivery
//! is retried with backoff and recovers; a receiver that always fails is given up on after the
//! configured attempts; a delivery in flight when its instance stops is resumed by the next
//! instance once the lease lapses. Time moves on a manual clock; the tests wait for the
//! receiver's requests, never for time. On SQLite and PostgreSQL (each test on a schema of its
//! own, so no other test's worker claims its deliveries).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tessera_protocol::events::{CreatedWebhookEndpoint, WebhookDelivery, WebhookDeliveryList};
use tessera_server::{ManualClock, ServerConfig};
use tessera_tests::{Backend, TestDevice, TestServer, on_each_backend};
use tokio::sync::mpsc;

on_each_backend! {
    deliveries_are_signed_retried_with_backoff_honouring_retry_after_and_recover => retried_and_recovered;
    a_delivery_is_given_up_after_the_configured_attempts => given_up;
    a_delivery_in_flight_is_resumed_by_the_next_instance => resumed_by_next_instance;
    endpoints_are_listed_without_secrets_removed_and_checked_against_the_outbound_policy => endpoint_management;
    an_application_whose_endpoints_never_answer_does_not_hold_up_another => slow_application_isolated;
}

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// This status, with this `Retry-After` (seconds).
    Status(u16, Option<u64>),
    /// Never answers.
    Hang,
}

/// One request the receiver got.
#[derive(Debug)]
struct Hit {
    headers: HeaderMap,
    body: String,
}

struct Receiver {
    url: String,
    hits: mpsc::UnboundedReceiver<Hit>,
}

impl Receiver {
    /// A receiver answering `script` in order, then 200.
    async fn start(script: Vec<Reply>) -> Receiver {
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let (sender, hits) = mpsc::unbounded_channel();
        let handler = move |headers: HeaderMap, body: String| {
            let script = script.clone();
            let sender = sender.clone();
            async move {
                let _ = sender.send(Hit { headers, body });
                let reply = script
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or(Reply::Status(200, None));
                match reply {
                    Reply::Status(status, retry_after) => {
                        let mut headers = HeaderMap::new();
                        if let Some(seconds) = retry_after {
                            headers.insert("retry-after", seconds.to_string().parse().unwrap());
                        }
                        (StatusCode::from_u16(status).unwrap(), headers, "").into_response()
                    }
                    Reply::Hang => {
                        std::future::pending::<()>().await;
                        unreachable!()
                    }
                }
            }
        };
        let app = axum::Router::new().route("/hook", axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, hits }
    }

    /// The next request (waiting up to 20 s for it).
    async fn next(&mut self) -> Hit {
        tokio::time::timeout(Duration::from_secs(20), self.hits.recv())
            .await
            .expect("a delivery within 20 s")
            .expect("receiver running")
    }
}

/// An endpoint that accepts every connection and never answers (it keeps the connections
/// open): each attempt at it holds its delivery until the POST's timeout.
struct Silent {
    /// `http://127.0.0.1:PORT` (any path).
    url: String,
    /// The connections accepted so far.
    accepted: Arc<AtomicUsize>,
}

impl Silent {
    async fn start() -> Silent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        Silent { url, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Checks `Tessera-Signature` as a receiver would (see docs/events.md): HMAC-SHA256 with the
/// secret over `"<t>.<body>"`, compared in constant time. Returns `t`.
fn verify_signature(hit: &Hit, secret: &str) -> i64 {
    let header = hit.headers["tessera-signature"].to_str().unwrap();
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = Some(value.to_string()),
            Some(("v1", value)) => v1 = Some(value.to_string()),
            _ => {}
        }
    }
    let (t, v1) = (t.expect("t"), v1.expect("v1"));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", hit.body).as_bytes());
    let expected: Vec<u8> = (0..v1.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&v1[i..i + 2], 16).unwrap())
        .collect();
    mac.verify_slice(&expected)
        .expect("the signature verifies with the endpoint's secret");
    t.parse().unwrap()
}

fn configure(c: &mut ServerConfig, clock: &ManualClock) {
    c.clock = Arc::new(clock.clone());
    c.webhook_allow_loopback = true;
    c.webhook_retry_base = Duration::from_secs(10);
    c.webhook_attempts = 5;
    // The fallback sweep that picks up retries once the manual clock moved past them.
    c.webhook_sweep = Duration::from_millis(100);
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn register(server: &TestServer, url: &str, types: &[&str]) -> CreatedWebhookEndpoint {
    register_for(server, &server.app.api_key, url, types).await
}

/// Registers an endpoint for the application of `api_key`.
async fn register_for(
    server: &TestServer,
    api_key: &str,
    url: &str,
    types: &[&str],
) -> CreatedWebhookEndpoint {
    let response = http()
        .post(format!("{}/v1/webhooks", server.base_url))
        .bearer_auth(api_key)
        .json(&json!({"url": url, "event_types": types}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn deliveries(server: &TestServer, endpoint: &str) -> Vec<WebhookDelivery> {
    let response = http()
        .get(format!(
            "{}/v1/webhooks/{endpoint}/deliveries",
            server.base_url
        ))
        .bearer_auth(&server.app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
        .json::<WebhookDeliveryList>()
        .await
        .unwrap()
        .deliveries
}

/// The endpoint's only delivery once `done` holds for it (the attempt is recorded right after
/// the receiver answered: read again until it is).
async fn delivery_when(
    server: &TestServer,
    endpoint: &str,
    done: impl Fn(&WebhookDelivery) -> bool,
) -> WebhookDelivery {
    for _ in 0..400 {
        let list = deliveries(server, endpoint).await;
        assert_eq!(list.len(), 1, "{list:?}");
        if done(&list[0]) {
            return list.into_iter().next().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the delivery never reached the expected state");
}

async fn retried_and_recovered(backend: Backend) {
    let clock = ManualClock::new();
    let server = TestServer::start_isolated_with(backend, |c| configure(c, &clock)).await;
    let mut receiver = Receiver::start(vec![
        Reply::Status(500, None),
        Reply::Status(429, Some(120)),
    ])
    .await;
    let created = register(&server, &receiver.url, &["pairing.completed"]).await;
    assert!(created.secret.starts_with("whsec_"));
    let endpoint = created.endpoint.id.clone();
    server.paired_user("alice").await;

    // First attempt: signed, answered 500.
    let first = receiver.next().await;
    let t = verify_signature(&first, &created.secret);
    assert_eq!(t, tessera_server::Clock::now(&clock));
    let event: Value = serde_json::from_str(&first.body).unwrap();
    assert_eq!(event["type"], "pairing.completed");
    assert_eq!(
        event["application_id"],
        server.app.application_id.to_string()
    );
    assert_eq!(event["data"]["user_id"], "alice");
    assert_eq!(
        first.headers["tessera-event-id"].to_str().unwrap(),
        event["id"]
    );
    let after_500 = delivery_when(&server, &endpoint, |d| d.attempts == 1).await;
    assert_eq!(after_500.state, "pending");
    assert_eq!(after_500.last_status, Some(500));
    assert_eq!(after_500.last_error.as_deref(), Some("answered 500"));
    // Backoff 10 s with equal jitter: between 5 and 10 s after the attempt.
    let wait = after_500.next_attempt_at_ms.unwrap() - after_500.last_attempt_at_ms.unwrap();
    assert!(
        (5_000..=10_000).contains(&wait),
        "first retry after {wait} ms"
    );

    // Second attempt once the clock passed it: the same event, signed again; answered 429 with
    // Retry-After: 120.
    clock.advance(Duration::from_secs(11));
    let second = receiver.next().await;
    verify_signature(&second, &created.secret);
    assert_eq!(second.body, first.body, "a retry carries the same event");
    let after_429 = delivery_when(&server, &endpoint, |d| d.attempts == 2).await;
    assert_eq!(after_429.last_status, Some(429));
    let wait = after_429.next_attempt_at_ms.unwrap() - after_429.last_attempt_at_ms.unwrap();
    assert!(
        wait >= 120_000,
        "Retry-After: 120 is honoured (next attempt after {wait} ms)"
    );

    // Third attempt after Retry-After: delivered.
    clock.advance(Duration::from_secs(121));
    let third = receiver.next().await;
    verify_signature(&third, &created.secret);
    let delivered = delivery_when(&server, &endpoint, |d| d.state == "delivered").await;
    assert_eq!(delivered.attempts, 3);
    assert_eq!(delivered.last_status, Some(200));
    assert!(delivered.delivered_at_ms.is_some());
    assert_eq!(delivered.next_attempt_at_ms, None);
}

async fn given_up(backend: Backend) {
    let clock = ManualClock::new();
    let server = TestServer::start_isolated_with(backend, |c| {
        configure(c, &clock);
        c.webhook_attempts = 3;
    })
    .await;
    let mut receiver = Receiver::start(vec![Reply::Status(503, None); 10]).await;
    let created = register(&server, &receiver.url, &[]).await;
    let endpoint = created.endpoint.id.clone();
    // This endpoint wants every type; pairing sends exactly one event.
    server.paired_user("bob").await;
    for attempt in 1..=3 {
        let hit = receiver.next().await;
        verify_signature(&hit, &created.secret);
        let d = delivery_when(&server, &endpoint, |d| d.attempts == attempt).await;
        assert_eq!(d.last_status, Some(503));
        if attempt < 3 {
            assert_eq!(d.state, "pending");
            clock.advance(Duration::from_secs(3600));
        }
    }
    let d = delivery_when(&server, &endpoint, |d| d.state == "failed").await;
    assert_eq!(d.attempts, 3);
    assert_eq!(d.last_error.as_deref(), Some("answered 503"));
    assert_eq!(d.next_attempt_at_ms, None, "nothing more is tried");
}

async fn resumed_by_next_instance(backend: Backend) {
    let clock = ManualClock::new();
    let server = TestServer::start_isolated_with(backend, |c| configure(c, &clock)).await;
    let mut receiver = Receiver::start(vec![Reply::Hang]).await;
    let created = register(&server, &receiver.url, &["pairing.completed"]).await;
    let endpoint = created.endpoint.id.clone();
    server.paired_user("carol").await;
    // The first instance's POST is in flight (the receiver never answers) when it stops.
    let first = receiver.next().await;
    let server = server.restart().await;
    // Its claim holds for the POST's timeout plus the margin; past it, the new instance resumes.
    let pending = deliveries(&server, &endpoint).await;
    assert_eq!(pending[0].state, "pending");
    assert_eq!(
        pending[0].attempts, 0,
        "the interrupted attempt recorded nothing"
    );
    clock.advance(Duration::from_secs(31));
    let second = receiver.next().await;
    verify_signature(&second, &created.secret);
    assert_eq!(second.body, first.body);
    let d = delivery_when(&server, &endpoint, |d| d.state == "delivered").await;
    assert_eq!(d.attempts, 1);
}

async fn endpoint_management(backend: Backend) {
    let clock = ManualClock::new();
    let server = TestServer::start_isolated_with(backend, |c| {
        configure(c, &clock);
        c.webhook_allow_loopback = false;
    })
    .await;
    // Loopback and private targets are refused unless allowed; plain http too.
    for url in [
        "http://127.0.0.1:9/hook",
        "https://10.0.0.1/hook",
        "https://localhost/hook",
        "http://example.com/hook",
        "not a url",
    ] {
        let response = http()
            .post(format!("{}/v1/webhooks", server.base_url))
            .bearer_auth(&server.app.api_key)
            .json(&json!({"url": url}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{url}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request", "{url}");
    }
    let unknown_type = http()
        .post(format!("{}/v1/webhooks", server.base_url))
        .bearer_auth(&server.app.api_key)
        .json(&json!({"url": "https://hooks.example.com/x", "event_types": ["nope"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_type.status(), 400);
    let created = register(
        &server,
        "https://hooks.example.com/tessera",
        &["authentication.approved", "device.removed"],
    )
    .await;
    let list: Value = http()
        .get(format!("{}/v1/webhooks", server.base_url))
        .bearer_auth(&server.app.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["endpoints"].as_array().unwrap().len(), 1);
    assert_eq!(list["endpoints"][0]["id"], created.endpoint.id);
    assert!(
        !list.to_string().contains(&created.secret),
        "the secret is shown only once"
    );
    // The secret is stored sealed, never in clear.
    let stored: String = sqlx::query_scalar("SELECT secret FROM webhook_endpoints WHERE id = $1")
        .bind(&created.endpoint.id)
        .fetch_one(server.server.database().pool())
        .await
        .unwrap();
    assert!(!stored.contains(&created.secret));
    // Another application cannot see or remove it.
    let other = server.server.create_application("Other").await.unwrap();
    let response = http()
        .delete(format!(
            "{}/v1/webhooks/{}",
            server.base_url, created.endpoint.id
        ))
        .bearer_auth(&other.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = http()
        .delete(format!(
            "{}/v1/webhooks/{}",
            server.base_url, created.endpoint.id
        ))
        .bearer_auth(&server.app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let response = http()
        .get(format!(
            "{}/v1/webhooks/{}/deliveries",
            server.base_url, created.endpoint.id
        ))
        .bearer_auth(&server.app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

/// One application whose 16 endpoints accept connections and never answer, with a stream of
/// events for them, does not hold up another application's delivery: an instance has at most
/// a few deliveries of one application in flight, and claims again as soon as a slot frees
/// instead of waiting for the slowest attempt of a batch (each held one lasts the POST's
/// 10 s timeout).
async fn slow_application_isolated(backend: Backend) {
    let clock = ManualClock::new();
    let server = TestServer::start_isolated_with(backend, |c| configure(c, &clock)).await;
    let silent = Silent::start().await;
    for i in 0..16 {
        register(&server, &format!("{}/hook/{i}", silent.url), &[]).await;
    }
    // Each pairing is one event, queued for each of the 16 endpoints: 64 deliveries.
    for i in 0..4 {
        server.paired_user(&format!("slow-{i}")).await;
    }
    for _ in 0..400 {
        if silent.accepted() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        silent.accepted() > 0,
        "the silent endpoints are being called"
    );

    // Another application, whose receiver answers at once.
    let other = server.server.create_application("Other").await.unwrap();
    let mut receiver = Receiver::start(Vec::new()).await;
    let created = register_for(
        &server,
        &other.api_key,
        &receiver.url,
        &["pairing.completed"],
    )
    .await;
    let customer = tessera_examples::customer::CustomerApi::new(&server.base_url, &other.api_key);
    customer.create_user("quick", None).await.unwrap();
    let uri = customer
        .start_pairing("quick", None)
        .await
        .unwrap()
        .pairing_uri;
    TestDevice::new().await.auth.pair(&uri, None).await.unwrap();
    let hit = tokio::time::timeout(Duration::from_secs(5), receiver.hits.recv())
        .await
        .expect("the other application's delivery is not held up behind the silent endpoints")
        .expect("receiver running");
    verify_signature(&hit, &created.secret);
    let held = silent.accepted();
    assert!(
        held <= 4,
        "at most 4 deliveries of one application in flight on one instance ({held})"
    );
}
