//! Connections that send slowly or not at all do not hold the server's connections and file
//! descriptors: a request's head must arrive within `--http-header-timeout-seconds` (which also closes
//! idle keep-alive connections), and a whole request, its body included, must be done within
//! `--http-request-timeout-seconds` (answered `408`). Long-polls shorter than the request timeout are
//! answered as usual. Each is checked on plain HTTP with short settings; the head's timeout
//! also on the TLS listener and on the metrics listener.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tessera_tests::{Backend, TestServer};

const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long past a timeout a test waits for the server to act on it.
const SLACK: Duration = Duration::from_secs(4);

/// A server (SQLite) with the short timeouts, adjusted further by `adjust`.
async fn server_with(adjust: impl FnOnce(&mut tessera_server::ServerConfig)) -> TestServer {
    TestServer::start_with(Backend::Sqlite, |c| {
        c.http_header_timeout = HEADER_TIMEOUT;
        c.http_request_timeout = REQUEST_TIMEOUT;
        adjust(c)
    })
    .await
}

/// Reads from `stream` until the server closes the connection (end of stream or reset), for at
/// most `within`; returns what was read and when the connection was closed, or `None` if it was
/// still open at the end.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<(String, Instant)> {
    let mut received = Vec::new();
    let deadline = Instant::now() + within;
    loop {
        let mut buffer = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some((
                    String::from_utf8_lossy(&received).into_owned(),
                    Instant::now(),
                ));
            }
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Asserts that a connection to `addr` that sends only part of a request's head is closed
/// within the header timeout (and some slack), answered at most `408`.
async fn a_partial_head_is_cut_off(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let sent = Instant::now();
    stream
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut stream, HEADER_TIMEOUT + SLACK)
        .await
        .expect("the connection with an unfinished head is still open");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(
        closed.duration_since(sent) >= HEADER_TIMEOUT - Duration::from_millis(100),
        "closed before the header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_that_never_finishes_its_head_is_closed() {
    let server = server_with(|_| {}).await;
    a_partial_head_is_cut_off(server.server.local_addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_that_sends_nothing_is_closed() {
    let server = server_with(|_| {}).await;
    let mut stream = TcpStream::connect(server.server.local_addr())
        .await
        .unwrap();
    let opened = Instant::now();
    let (answer, closed) = read_until_closed(&mut stream, HEADER_TIMEOUT + SLACK)
        .await
        .expect("the silent connection is still open");
    assert!(answer.is_empty(), "{answer}");
    assert!(
        closed.duration_since(opened) >= HEADER_TIMEOUT - Duration::from_millis(100),
        "closed before the header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let server = server_with(|_| {}).await;
    let mut stream = TcpStream::connect(server.server.local_addr())
        .await
        .unwrap();
    stream
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The whole answer: its head and its (JSON) body.
    let mut received = Vec::new();
    let answered = loop {
        let mut buffer = [0u8; 4096];
        let n = tokio::time::timeout(SLACK, stream.read(&mut buffer))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before answering");
        received.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&received);
        if text.starts_with("HTTP/1.1 200") && text.ends_with('}') {
            break Instant::now();
        }
    };
    let (rest, closed) = read_until_closed(&mut stream, HEADER_TIMEOUT + SLACK)
        .await
        .expect("the idle keep-alive connection is still open");
    assert!(
        rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
        "{rest}"
    );
    assert!(
        closed.duration_since(answered) >= HEADER_TIMEOUT - Duration::from_millis(100),
        "closed before the header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_trickled_byte_by_byte_is_cut_off_by_the_request_timeout() {
    let server = server_with(|_| {}).await;
    let stream = TcpStream::connect(server.server.local_addr())
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(
            b"POST /v1/device/pairings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if writer.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut received = Vec::new();
    let outcome = tokio::time::timeout(REQUEST_TIMEOUT + SLACK, async {
        loop {
            let mut buffer = [0u8; 4096];
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    trickle.abort();
    let answer = String::from_utf8_lossy(&received);
    assert!(
        outcome.is_ok() || answer.starts_with("HTTP/1.1 408"),
        "the trickled request is still being read after {:?}: {answer:?}",
        started.elapsed()
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(
        started.elapsed() >= REQUEST_TIMEOUT - Duration::from_millis(100),
        "cut off before the request timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_poll_shorter_than_the_request_timeout_is_answered_as_usual() {
    // A request timeout well past the 2 s wait, so a slow machine's final read cannot meet it.
    let server = server_with(|c| c.http_request_timeout = Duration::from_secs(8)).await;
    let http = reqwest::Client::new();
    let bearer = format!("Bearer {}", server.app.api_key);
    let session: serde_json::Value = http
        .post(format!("{}/v1/qr-sessions", server.base_url))
        .header("Authorization", &bearer)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = session["session_id"].as_str().expect("a session id");
    // Waits 2 s: longer than the header timeout (which does not run while a request is
    // handled), shorter than the request timeout.
    let started = Instant::now();
    let polled = http
        .get(format!("{}/v1/qr-sessions/{id}?wait=2", server.base_url))
        .header("Authorization", &bearer)
        .send()
        .await
        .expect("the long-poll is answered");
    assert_eq!(polled.status(), 200);
    let body: serde_json::Value = polled.json().await.unwrap();
    assert_eq!(body["state"], "created", "{body}");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "the long-poll did not wait"
    );
    // The connection it used stays usable for the next request.
    let next = http
        .get(format!("{}/livez", server.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(next.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_metrics_listener_closes_a_connection_that_never_finishes_its_head() {
    let server = server_with(|c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let metrics = server.server.metrics_addr().expect("a metrics listener");
    a_partial_head_is_cut_off(metrics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tls_listener_closes_a_connection_that_never_finishes_its_head() {
    let _ = tessera_tests::install_crypto_provider();
    let dir = tempfile::TempDir::new().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let files = tessera_server::TlsFiles {
        cert_chain: dir.path().join("server.crt"),
        private_key: dir.path().join("server.key"),
    };
    std::fs::write(&files.cert_chain, leaf.pem()).unwrap();
    std::fs::write(&files.private_key, leaf_key.serialize_pem()).unwrap();
    let server = server_with(|c| c.tls = Some(files)).await;
    assert!(server.server.is_tls());
    let addr = server.server.local_addr();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let outcome = tokio::task::spawn_blocking(move || {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(HEADER_TIMEOUT + SLACK)).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let connection = rustls::ClientConnection::new(config, name).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        tls.write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n")
            .unwrap();
        let sent = Instant::now();
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match tls.read(&mut buffer) {
                Ok(0) => return Ok((received, sent.elapsed())),
                Ok(n) => received.extend_from_slice(&buffer[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err("the TLS connection with an unfinished head is still open");
                }
                // Closed without close_notify, or reset: closed all the same.
                Err(_) => return Ok((received, sent.elapsed())),
            }
        }
    })
    .await
    .unwrap();
    let (received, after) = outcome.unwrap();
    let answer = String::from_utf8_lossy(&received);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(
        after >= HEADER_TIMEOUT - Duration::from_millis(100),
        "closed before the header timeout"
    );
}
