//! End to end behind a real reverse proxy: Debian's nginx (`nginx-light`) in front of the
//! server, configured the way docs/network-security.md ("Behind a reverse proxy") shows it: TLS
//! terminated at the proxy, `X-Forwarded-For` appended with
//! `$proxy_add_x_forwarded_for`, `X-Forwarded-Proto` set, and everything else at nginx's
//! defaults, among them HTTP/1.0 to the server and response buffering on.
//!
//! - the customer API answers over HTTPS through the proxy;
//! - a relying party's long-poll through the proxy is answered as soon as the device approves;
//! - a device (the real core) pairs, pulls and answers through the proxy;
//! - a client that puts a different forged `X-Forwarded-For` on each pairing guess it sends
//!   through the proxy is still counted as its own address by the pairing throttle.
//!
//! Skipped with a note when nginx is missing, unless `TESSERA_REQUIRE_NGINX=1` (CI installs it).

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState};
use tessera_tests::{Backend, TestDevice, TestServer};

use crate::client_address::attempt_through;

const NGINX: &str = "/usr/sbin/nginx";

/// Whether nginx can run here; panics when it must (`TESSERA_REQUIRE_NGINX=1`).
fn nginx_available() -> bool {
    let ok = Path::new(NGINX).exists();
    if !ok {
        assert!(
            std::env::var("TESSERA_REQUIRE_NGINX").as_deref() != Ok("1"),
            "TESSERA_REQUIRE_NGINX=1 but {NGINX} is missing"
        );
        eprintln!("reverse proxy test skipped: {NGINX} missing (apt-get install nginx-light)");
    }
    ok
}

/// A loopback port free at the time of asking.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A test CA and a certificate it issued for `localhost` and 127.0.0.1: (CA PEM, leaf PEM,
/// leaf key PEM).
fn certificates() -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf certificate");
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

/// nginx running in the foreground for one test; stopped when dropped.
struct Nginx {
    child: Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The proxy's `location`: what operators write in front of an application server.
fn location(upstream: u16) -> String {
    format!(
        "location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}"
    )
}

/// Starts nginx in `dir`, terminating TLS on `https` and forwarding plain HTTP on `http`, both to
/// the server at `upstream`; returns once both ports accept connections.
fn start_nginx(dir: &Path, tls: &ProxyCertificates, https: u16, http: u16, upstream: u16) -> Nginx {
    let d = dir.display();
    let config = format!(
        "daemon off;
        master_process off;
        worker_processes 1;
        pid {d}/nginx.pid;
        error_log stderr warn;
        events {{ worker_connections 512; }}
        http {{
            access_log off;
            client_body_temp_path {d}/client_body;
            proxy_temp_path {d}/proxy;
            fastcgi_temp_path {d}/fastcgi;
            uwsgi_temp_path {d}/uwsgi;
            scgi_temp_path {d}/scgi;
            server {{
                listen 127.0.0.1:{https} ssl;
                ssl_certificate {leaf};
                ssl_certificate_key {key};
                {location}
            }}
            server {{
                listen 127.0.0.1:{http};
                {location}
            }}
        }}",
        leaf = tls.certificate.display(),
        key = tls.key.display(),
        location = location(upstream),
    );
    let config_path = dir.join("nginx.conf");
    std::fs::write(&config_path, config).expect("nginx.conf");
    let child = Command::new(NGINX)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg("stderr")
        .arg("-c")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("nginx starts");
    let mut nginx = Nginx { child };
    let deadline = Instant::now() + Duration::from_secs(10);
    while [https, http]
        .iter()
        .any(|port| std::net::TcpStream::connect(("127.0.0.1", *port)).is_err())
    {
        if let Ok(Some(status)) = nginx.child.try_wait() {
            panic!("nginx exited: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "nginx did not listen within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nginx
}

/// The proxy's TLS files, and the CA its clients trust.
struct ProxyCertificates {
    ca_pem: String,
    certificate: PathBuf,
    key: PathBuf,
}

/// Writes the proxy's certificate and key into `dir`.
fn write_certificates(dir: &Path) -> ProxyCertificates {
    let (ca_pem, leaf, key) = certificates();
    let written = ProxyCertificates {
        ca_pem,
        certificate: dir.join("proxy.crt"),
        key: dir.join("proxy.key"),
    };
    std::fs::write(&written.certificate, leaf).expect("proxy.crt");
    std::fs::write(&written.key, key).expect("proxy.key");
    written
}

/// A client that trusts only the test CA, sending from `local` (a loopback address), with
/// `localhost` resolved to the proxy's IPv4 address on `port` (whatever the host's resolver
/// says first).
fn client(ca_pem: &str, local: IpAddr, port: u16) -> reqwest::Client {
    let _ = tessera_tests::install_crypto_provider();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA")])
        .resolve(
            "localhost",
            std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        )
        .local_address(local)
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_works_behind_nginx_and_its_clients_cannot_forge_their_address() {
    if !nginx_available() {
        return;
    }
    let dir = tempfile::TempDir::new().expect("temp dir");
    let (https, http) = (free_port(), free_port());
    let per_ip = 3;
    // The proxy connects from 127.0.0.1, the only trusted peer; the test's own clients send
    // from other loopback addresses. The device learns the proxy's plain-HTTP address from its
    // pairing URI (a device refuses plain HTTP except on loopback).
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.clock = std::sync::Arc::new(tessera_server::ManualClock::new());
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("network")];
        c.pairing_failures_per_ip_per_minute = per_ip;
        c.public_url = Some(
            tessera_protocol::pairing::ServerUrl::parse(&format!("http://127.0.0.1:{http}"))
                .expect("public URL"),
        );
    })
    .await;
    let upstream = server.server.local_addr().port();
    let tls_files = write_certificates(dir.path());
    let _nginx = start_nginx(dir.path(), &tls_files, https, http, upstream);
    let ca_pem = tls_files.ca_pem;
    let relying_party = client(&ca_pem, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), https);
    let tls = format!("https://localhost:{https}");
    let bearer = format!("Bearer {}", server.app.api_key);
    // What devices sign their registrations for: the server's public URL.
    let public = format!("http://127.0.0.1:{http}");

    // The customer API over TLS, through the proxy.
    let user = relying_party
        .post(format!("{tls}/v1/users"))
        .header("Authorization", &bearer)
        .json(&serde_json::json!({"user_id": "alice"}))
        .send()
        .await
        .expect("create a user through the proxy");
    assert!(user.status().is_success(), "{:?}", user.text().await);

    // The device pairs through the proxy's plain-HTTP side (the pairing URI names it).
    let device = TestDevice::new().await;
    let pairing_uri = server.pairing_uri("alice").await;
    assert!(
        pairing_uri.contains(&format!("127.0.0.1%3A{http}"))
            || pairing_uri.contains(&format!("127.0.0.1:{http}")),
        "the pairing URI names the proxy: {pairing_uri}"
    );
    let enrollment = device
        .auth
        .pair(&pairing_uri, None)
        .await
        .expect("pairing through the proxy")
        .enrollment_id;

    // A relying party waits through the proxy; the device answers through it.
    let created: serde_json::Value = relying_party
        .post(format!("{tls}/v1/users/alice/authentications"))
        .header("Authorization", &bearer)
        .json(&serde_json::json!({"kind": AuthenticationKind::Approval}))
        .send()
        .await
        .expect("create an authentication")
        .json()
        .await
        .expect("its JSON");
    let id = created["authentication_id"]
        .as_str()
        .expect("an id")
        .to_string();
    let waiter = {
        let (client, url, bearer) = (
            relying_party.clone(),
            format!("{tls}/v1/authentications/{id}?wait=30"),
            bearer.clone(),
        );
        tokio::spawn(async move {
            let response = client
                .get(url)
                .header("Authorization", bearer)
                .send()
                .await
                .expect("the long-poll");
            let answered = Instant::now();
            let body: serde_json::Value = response.json().await.expect("its JSON");
            (answered, body)
        })
    };
    // The long-poll is waiting at the server before the device answers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "the long-poll returned before any answer"
    );
    let request = device
        .pull_request(&enrollment, &id.parse().expect("an authentication id"))
        .await;
    let recorded = device
        .auth
        .approve(&request, vec![], None)
        .await
        .expect("the answer through the proxy");
    let approved_at = Instant::now();
    assert_eq!(recorded.state, AuthenticationState::Approved);
    let (answered, body) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the long-poll answered through the proxy")
        .expect("the waiter");
    assert_eq!(body["state"], "approved", "{body}");
    assert!(
        answered.saturating_duration_since(approved_at) < Duration::from_secs(2),
        "the proxy held the long-poll's answer back"
    );

    // A guesser behind the proxy forging a new left-most address on every attempt: the proxy
    // appends the address it sees, and the server takes the right-most untrusted one.
    let guesser = client(&ca_pem, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)), https);
    let mut outcomes = Vec::new();
    for n in 0..=per_ip {
        let forged = format!("203.0.113.{}", 10 + n);
        let code = format!("QQZZ-ZZZZ-{n:04}");
        outcomes.push(
            attempt_through(
                &guesser,
                &tls,
                &public,
                &code,
                &[("X-Forwarded-For", &forged)],
            )
            .await,
        );
    }
    let mut expected = vec!["invalid_pairing_code".to_string(); per_ip as usize];
    expected.push("rate_limited".into());
    assert_eq!(
        outcomes, expected,
        "the forged addresses escaped the throttle"
    );
    // nginx passes a client's own `Forwarded` through untouched: with the default
    // `--trusted-proxy-header x-forwarded-for` the server never reads it, so a guesser forging a
    // new `Forwarded` address on every attempt is still counted as its own address.
    let forger = client(&ca_pem, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)), https);
    let mut outcomes = Vec::new();
    for n in 0..=per_ip {
        let forged = format!("for=203.0.113.{}", 10 + n);
        let code = format!("QSZZ-ZZZZ-{n:04}");
        outcomes
            .push(attempt_through(&forger, &tls, &public, &code, &[("Forwarded", &forged)]).await);
    }
    assert_eq!(
        outcomes, expected,
        "the forged Forwarded addresses escaped the throttle"
    );
    // Another client behind the same proxy is not held back by the guesser's count.
    let neighbour = client(&ca_pem, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)), https);
    assert_eq!(
        attempt_through(&neighbour, &tls, &public, "QRZZ-ZZZZ-0001", &[]).await,
        "invalid_pairing_code"
    );
}
