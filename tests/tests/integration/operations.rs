//! Operations: health, metrics, the OpenAPI document, and logs that never carry a secret.

use tessera_protocol::pairing::{MobilePayload, PairingUri, PushRegistration};
use tessera_tests::{Backend, TestDevice, TestServer, device_config};

/// Every flow at TRACE level, then a search of everything logged for every secret involved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_never_contain_secrets() {
    crate::logs::capture();

    let server = TestServer::start(Backend::Sqlite).await;
    server.user("alice").await;
    server.user("bob").await;
    let push_token = "fcm-token-SECRET-0123456789";
    let mut config = device_config("Pixel 8");
    config.push = PushRegistration::Fcm {
        token: push_token.into(),
    };
    let device = TestDevice::with_config(config).await;

    let uri = server.pairing_uri("alice").await;
    let code = PairingUri::parse(&uri).unwrap().code;
    let alice = device.auth.pair(&uri, None).await.unwrap();
    // A failed attempt with the used code, and a wrong one.
    let _ = device.auth.pair(&uri, None).await;
    let _ = device
        .auth
        .pair("ZZZZ-ZZZZ-ZZZZ", Some(&server.base_url))
        .await;
    let mobile = device
        .auth
        .create_mobile_payload(&server.base_url)
        .await
        .unwrap();
    let relayed = server.customer.relay_pairing("bob", &mobile).await.unwrap();
    device
        .auth
        .complete_relay_pairing(&relayed.server_payload)
        .await
        .unwrap();
    device
        .auth
        .enrollment_status(&alice.enrollment_id)
        .await
        .unwrap();
    device
        .auth
        .remove_enrollment(&alice.enrollment_id)
        .await
        .unwrap();

    let logs = crate::logs::captured();
    assert!(
        logs.contains("\"route\":\"/v1/device/pairings\""),
        "requests are logged"
    );
    let registration = MobilePayload::decode(&mobile).unwrap().registration;
    let secrets = [
        ("API key", server.app.api_key.as_str()),
        ("pairing code", code.normalized()),
        ("pairing code (display form)", &*code.display_form()),
        ("push token", push_token),
        ("mobile payload", &mobile[..40]),
        (
            "registration signature",
            registration.rsplit('.').next().unwrap(),
        ),
        (
            "server payload signature",
            relayed.server_payload.rsplit('.').next().unwrap(),
        ),
        ("authorization scheme", "Tessera-Device ey"),
        ("bearer", "Bearer tsk_"),
    ];
    for (what, secret) in secrets {
        assert!(!logs.contains(secret), "the logs contain the {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_metrics_and_openapi() {
    let server = TestServer::start(Backend::Sqlite).await;
    server.user("alice").await;
    let device = TestDevice::new().await;
    device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    let _ = device
        .auth
        .pair("ZZZZ-ZZZZ-ZZZZ", Some(&server.base_url))
        .await;
    let http = reqwest::Client::new();

    let health: serde_json::Value = http
        .get(format!("{}/healthz", server.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    let metrics = http
        .get(format!("{}/metrics", server.base_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "tessera_pairings_total{mode=\"direct\"} 1",
        "tessera_pairing_failures_total{reason=\"invalid_code\"} 1",
        "tessera_http_requests_total{route=\"/v1/device/pairings\",method=\"POST\",status=\"201\"} 1",
        "tessera_http_request_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    assert!(!metrics.contains("alice"), "no user ids in metric labels");

    let doc: serde_json::Value = http
        .get(format!("{}/openapi.json", server.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10, "{:?}", paths.keys().collect::<Vec<_>>());
    assert!(
        doc["components"]["schemas"]
            .get("DevicePairingRequest")
            .is_some()
    );
    assert!(doc["components"]["schemas"].get("ErrorBody").is_some());
}

tessera_tests::on_each_backend! {
    live_and_ready_probes_and_request_ids => probes_and_request_ids;
}

/// `/livez` and `/readyz` answer on a healthy server; every answer, error or not, carries a
/// request id: the caller's when well formed, else a fresh one, distinct under a burst.
async fn probes_and_request_ids(backend: Backend) {
    let server = TestServer::start(backend).await;
    let http = reqwest::Client::new();
    for path in ["/livez", "/readyz", "/healthz"] {
        let answer = http
            .get(format!("{}{path}", server.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{path}");
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["status"], "ok", "{path}");
    }
    let echoed = http
        .get(format!("{}/v1/users/alice", server.base_url))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), 401);
    assert_eq!(echoed.headers()["x-request-id"], "trace-42");

    let burst = (0..32).map(|i| {
        let http = http.clone();
        let url = format!("{}/livez", server.base_url);
        async move {
            let mut request = http.get(url);
            if i % 2 == 0 {
                request = request.header("x-request-id", "not well formed!");
            }
            let answer = request.send().await.unwrap();
            answer.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_string()
        }
    });
    let ids: std::collections::HashSet<String> =
        futures::future::join_all(burst).await.into_iter().collect();
    assert_eq!(ids.len(), 32, "every request its own id");
    assert!(ids.iter().all(|id| id.len() == 32));
}

/// Sends `request` (raw bytes) on a new connection to `addr` and returns everything the server
/// writes back until it closes the connection.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the server answers and closes")
    .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Request methods outside the standard ones are counted and logged as `other`: a client
/// inventing a new method on every request cannot grow the metrics (and the server's memory)
/// without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn custom_methods_are_counted_and_logged_as_other() {
    use rand::Rng;
    crate::logs::capture();
    let server = TestServer::start(Backend::Sqlite).await;
    let addr = server.server.local_addr();
    let mut rng = rand::thread_rng();
    let methods: Vec<String> = (0..3)
        .map(|_| {
            (0..40)
                .map(|_| char::from(rng.gen_range(b'A'..=b'Z')))
                .collect()
        })
        .collect();
    for method in &methods {
        let answer = raw_exchange(
            addr,
            format!("{method} /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    }
    let metrics = tessera_tests::scrape_metrics(&server.base_url).await;
    for method in &methods {
        assert!(!metrics.contains(method.as_str()), "{method} in\n{metrics}");
    }
    assert!(
        metrics.contains(
            "tessera_http_requests_total{route=\"/livez\",method=\"other\",status=\"405\"} 3"
        ),
        "no requests counted with method=\"other\" in\n{metrics}"
    );
    let logs = crate::logs::captured();
    for method in &methods {
        assert!(!logs.contains(method.as_str()), "{method} was logged");
    }
    assert!(
        logs.lines().any(|l| l.contains("\"route\":\"/livez\"")
            && l.contains("\"method\":\"other\"")
            && l.contains("\"status\":405")),
        "no request line with method other"
    );
}
