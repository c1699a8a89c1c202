//! End to end: `/metrics` on its own listen address (`--metrics-listen`).

use tessera_tests::{Backend, TestServer, on_each_backend};

on_each_backend! {
    metrics_on_their_own_listener_are_not_served_on_the_main_one => own_listener;
    without_a_metrics_listener_the_main_one_serves_metrics => main_listener;
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("get");
    let status = response.status().as_u16();
    (status, response.text().await.expect("text"))
}

async fn own_listener(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let metrics_addr = server.server.metrics_addr().expect("a metrics listener");
    assert_ne!(metrics_addr, server.server.local_addr());
    server.user("alice").await;

    let (status, body) = get(&format!("{}/metrics", server.base_url)).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not_found"), "{body}");

    let (status, body) = get(&format!("http://{metrics_addr}/metrics")).await;
    assert_eq!(status, 200);
    assert!(body.contains("tessera_http_requests"), "{body}");
    // The metrics listener serves nothing else.
    let (status, _) = get(&format!("http://{metrics_addr}/healthz")).await;
    assert_eq!(status, 404);
    let (status, _) = get(&format!("http://{metrics_addr}/v1/users/alice")).await;
    assert_eq!(status, 404);
    server.server.shutdown().await;
}

async fn main_listener(backend: Backend) {
    let server = TestServer::start(backend).await;
    assert_eq!(server.server.metrics_addr(), None);
    server.user("alice").await;
    let (status, body) = get(&format!("{}/metrics", server.base_url)).await;
    assert_eq!(status, 200);
    assert!(body.contains("tessera_http_requests"), "{body}");
}
