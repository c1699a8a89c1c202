//! Running `tessera-server serve` as an operator would: settings from flags, environment and a
//! config file; `--check-config`; a refused SMTP URL; the TLS listener and its reload on SIGHUP;
//! `/livez` and `/readyz`; request ids; the drain on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera-server"));
    // The settings under test come from the test only.
    for (name, _) in std::env::vars() {
        if name.starts_with("TESSERA_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
}

/// A `serve` process: its address, and its log lines as they come.
struct Served {
    child: Child,
    addr: String,
    scheme: String,
    logs: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Served {
    /// Starts `serve` with `args` (JSON logs) and waits for its address.
    fn start(mut command: Command) -> Served {
        command
            .args(["--log-format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (send, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let rest: Vec<String> = logs.try_iter().collect();
        let (scheme, addr) = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|url| url.split_once("://"))
            .unwrap_or_else(|| panic!("no address announced: {line:?}; logs: {rest:?}"));
        Served {
            addr: addr.to_string(),
            scheme: scheme.to_string(),
            child,
            logs,
            seen: rest,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// Waits for a log line containing `needle` (at most 30 s) and returns it.
    fn wait_log(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no log line with {needle:?}; logs: {:#?}", self.seen),
            }
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &std::path::Path) -> Command {
    let mut command = bin();
    command.args([
        "serve",
        "--database",
        &format!("sqlite://{}", dir.join("t.db").display()),
    ]);
    command
}

fn error_of(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn issuer(served: &Served) -> String {
    let (_, discovery) =
        get_json(&client(), &served.url("/.well-known/openid-configuration")).await;
    discovery["issuer"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_flags_then_environment_then_file_then_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tessera.toml");
    std::fs::write(
        &file,
        "# every setting is a flag's name in snake case\n\
         listen = \"127.0.0.1:0\"\n\
         public_url = \"https://file.example\"\n\
         retention_days = 7\n\
         trusted_proxies = [\"10.0.0.0/8\", \"192.0.2.1\"]\n",
    )
    .unwrap();
    let config = file.to_str().unwrap();

    // Defaults alone: the identity is the bound address.
    let served = Served::start({
        let mut c = serve(dir.path());
        c.args(["--listen", "127.0.0.1:0"]);
        c
    });
    assert_eq!(issuer(&served).await, format!("http://{}", served.addr));
    drop(served);

    // The file: its listen address (port 0) and public URL are used.
    let served = Served::start({
        let mut c = serve(dir.path());
        c.args(["--config", config]);
        c
    });
    assert_eq!(issuer(&served).await, "https://file.example");
    drop(served);

    // The file named by TESSERA_CONFIG, overridden by the environment.
    let served = Served::start({
        let mut c = serve(dir.path());
        c.env("TESSERA_CONFIG", config)
            .env("TESSERA_PUBLIC_URL", "https://env.example");
        c
    });
    assert_eq!(issuer(&served).await, "https://env.example");
    drop(served);

    // A flag wins over both.
    let served = Served::start({
        let mut c = serve(dir.path());
        c.args(["--config", config, "--public-url", "https://flag.example"])
            .env("TESSERA_PUBLIC_URL", "https://env.example");
        c
    });
    assert_eq!(issuer(&served).await, "https://flag.example");
    drop(served);

    // A setting that had no variable of its own before has one now (TESSERA_<NAME>), and a
    // bad value from it is refused like the flag's.
    let out = serve(dir.path())
        .args(["--config", config, "--check-config"])
        .env("TESSERA_CIBA_POLL_INTERVAL", "soon")
        .output()
        .unwrap();
    let e = error_of(&out);
    assert!(e.contains("ciba-poll-interval"), "{e}");
}

#[test]
fn an_unknown_key_in_the_config_file_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tessera.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nretention_dayz = 7\n").unwrap();
    for extra in [&[][..], &["--check-config"][..]] {
        let out = serve(dir.path())
            .args(["--config", file.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        let e = error_of(&out);
        assert!(e.contains("unknown key `retention_dayz`"), "{e}");
        assert!(e.contains("invalid_config"), "{e}");
        assert!(out.stdout.is_empty(), "never listened");
    }
    // A value of the wrong type names its key, not the value.
    std::fs::write(&file, "smtp_url = 25\nretention_days = \"s3cr3t\"\n").unwrap();
    let e = error_of(
        &serve(dir.path())
            .args(["--config", file.to_str().unwrap(), "--check-config"])
            .output()
            .unwrap(),
    );
    assert!(e.contains("key `retention_days`"), "{e}");
    assert!(!e.contains("s3cr3t"), "{e}");
}

#[test]
fn check_config_accepts_a_good_configuration_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_certificate(dir.path(), "good", &authority("Test CA"));
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "listen = \"127.0.0.1:0\"\n\
             public_url = \"https://auth.example\"\n\
             smtp_url = \"smtp://localhost:25\"\n\
             tls_cert = {cert:?}\n\
             tls_key = {key:?}\n\
             shutdown_grace_seconds = 5\n\
             commit_durability = \"flushed\"\n"
        ),
    )
    .unwrap();
    let out = serve(dir.path())
        .args(["--config", good.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["config"], "valid");
    assert!(
        !dir.path().join("t.db").exists(),
        "checking does not create the database"
    );

    let missing = dir.path().join("missing.pem");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--public-url".into(), "not a url".into()],
            "invalid_input",
        ),
        (
            vec!["--ip-table".into(), missing.display().to_string()],
            "invalid_input",
        ),
        (
            vec!["--tls-key".into(), missing.display().to_string()],
            "--tls-key",
        ),
        (
            vec!["--smtp-url".into(), "smtps//mail".into()],
            "--smtp-url",
        ),
        (
            vec!["--fcm-endpoint".into(), "fcm".into()],
            "--fcm-endpoint",
        ),
        (
            vec!["--master-key-file".into(), missing.display().to_string()],
            "master",
        ),
        (
            vec!["--commit-durability".into(), "sometimes".into()],
            "--commit-durability",
        ),
    ];
    for (args, expected) in cases {
        let out = serve(dir.path())
            .args(["--config", good.to_str().unwrap(), "--check-config"])
            .args(&args)
            .output()
            .unwrap();
        let e = error_of(&out);
        assert!(e.contains(expected), "{args:?}: {e}");
        assert!(
            serde_json::from_str::<Value>(e.trim()).is_ok(),
            "one JSON error: {e}"
        );
    }
    // A database that is neither SQLite nor PostgreSQL.
    let e = error_of(
        &bin()
            .args(["serve", "--check-config", "--database", "mysql://x"])
            .output()
            .unwrap(),
    );
    assert!(e.contains("unsupported_database"), "{e}");
    // A certificate without its key.
    let e = error_of(
        &serve(dir.path())
            .args(["--check-config", "--tls-cert", &cert])
            .output()
            .unwrap(),
    );
    assert!(e.contains("go together"), "{e}");
    // A key file that is not a key.
    std::fs::write(&missing, "not a key").unwrap();
    let e = error_of(
        &serve(dir.path())
            .args(["--config", good.to_str().unwrap(), "--check-config"])
            .args(["--tls-key", missing.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    assert!(e.contains("\"tls\""), "{e}");
}

#[test]
fn a_mistyped_smtp_url_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        "smtp//mail.example:25",
        "smtps://mail.example:notaport",
        "mail.example",
    ] {
        let out = serve(dir.path())
            .args(["--listen", "127.0.0.1:0", "--smtp-url", url])
            .output()
            .unwrap();
        let e = error_of(&out);
        assert!(e.contains("--smtp-url"), "{url}: {e}");
        assert!(
            !e.contains("mail.example"),
            "the URL may hold a password: {e}"
        );
        assert!(out.stdout.is_empty(), "{url}: it never listened");
    }
    // A sender that is not an address, too.
    let e = error_of(
        &serve(dir.path())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--smtp-url",
                "smtp://localhost:25",
            ])
            .args(["--smtp-from", "nobody"])
            .output()
            .unwrap(),
    );
    assert!(e.contains("--smtp-from"), "{e}");
}

// --- TLS ------------------------------------------------------------------------------------

/// A certificate authority of the test.
struct Authority {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

fn authority(name: &str) -> Authority {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    Authority {
        issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
    }
}

/// Writes a certificate for `localhost` signed by `authority`, and its key; returns the paths.
fn write_certificate(dir: &std::path::Path, name: &str, authority: &Authority) -> (String, String) {
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &authority.issuer).unwrap();
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem() + &authority.issuer.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

/// A client that trusts only `authority` and reaches `localhost` at `addr`.
fn tls_client(authority: &Authority, addr: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([
            reqwest::Certificate::from_pem(authority.issuer.pem().as_bytes()).unwrap(),
        ])
        .resolve("localhost", addr.parse().unwrap())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_and_reloads_its_certificate_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let first = authority("First CA");
    let second = authority("Second CA");
    let (cert, key) = write_certificate(dir.path(), "server", &first);
    let mut served = Served::start({
        let mut c = serve(dir.path());
        c.args([
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ]);
        c
    });
    assert_eq!(served.scheme, "https");
    let url = format!(
        "https://localhost:{}/livez",
        served.addr.rsplit(':').next().unwrap()
    );
    let trusts_first = tls_client(&first, &served.addr);
    let trusts_second = tls_client(&second, &served.addr);
    let answer = trusts_first.get(&url).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(
        trusts_second.get(&url).send().await.is_err(),
        "signed by the first authority only"
    );
    // Plain HTTP is not spoken on the TLS port.
    assert!(
        client()
            .get(format!("http://{}/livez", served.addr))
            .send()
            .await
            .map(|r| !r.status().is_success())
            .unwrap_or(true)
    );

    // The container health check: the probe reaches the TLS listener on loopback.
    let probe = |extra: &[&str]| {
        bin()
            .args(["probe", &format!("https://{}/livez", served.addr)])
            .args(extra)
            .output()
            .unwrap()
    };
    assert!(probe(&["--insecure-loopback"]).status.success());
    assert!(
        !probe(&[]).status.success(),
        "the certificate is checked by default"
    );

    // A new certificate and SIGHUP: new connections get it; the open one keeps working.
    write_certificate(dir.path(), "server", &second);
    served.signal("HUP");
    served.wait_log("TLS certificate reloaded");
    assert_eq!(trusts_second.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(
        trusts_first.get(&url).send().await.unwrap().status(),
        200,
        "the connection opened before the reload is not dropped"
    );
    let fresh_first = tls_client(&first, &served.addr);
    assert!(
        fresh_first.get(&url).send().await.is_err(),
        "new connections get the new certificate"
    );

    // A broken key on reload: the error is logged, the current certificate stays.
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    served.signal("HUP");
    let line = served.wait_log("the TLS certificate in use is kept");
    assert!(line.contains("ERROR"), "{line}");
    let fresh_second = tls_client(&second, &served.addr);
    assert_eq!(fresh_second.get(&url).send().await.unwrap().status(), 200);

    served.signal("TERM");
    assert!(served.child.wait().unwrap().success());
}

// --- Health ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_schema_on_sqlite() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let served = Served::start({
        let mut c = serve(dir.path());
        c.args(["--listen", "127.0.0.1:0"]);
        c
    });
    let http = client();
    let (status, body) = get_json(&http, &served.url("/readyz")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    // The newest migration is not applied any more (a restore from an older backup): not
    // ready, with the reason; alive and healthy as before.
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let (version,): (i64,) = sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE _sqlx_migrations SET version = -version WHERE version = $1")
        .bind(version)
        .execute(&mut db)
        .await
        .unwrap();
    let (status, body) = get_json(&http, &served.url("/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["reason"], "migrations_pending");
    assert!(body["message"].as_str().unwrap().contains('1'), "{body}");
    assert_eq!(get_json(&http, &served.url("/livez")).await.0, 200);
    assert_eq!(get_json(&http, &served.url("/healthz")).await.0, 200);
    let probe = |path: &str| {
        bin()
            .args(["probe", &served.url(path)])
            .output()
            .unwrap()
            .status
    };
    assert!(probe("/livez").success());
    assert_eq!(probe("/readyz").code(), Some(1));

    // Migrated again: ready.
    sqlx::query("UPDATE _sqlx_migrations SET version = -version WHERE version = $1")
        .bind(-version)
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(get_json(&http, &served.url("/readyz")).await.0, 200);
}

/// A TCP relay the test can cut: the server reaches PostgreSQL through it.
struct Relay {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(bind: std::net::SocketAddr, upstream: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay { addr, task }
    }

    /// Closes the listener and every relayed connection.
    async fn cut(self) -> std::net::SocketAddr {
        self.task.abort();
        let _ = self.task.await;
        self.addr
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_an_unreachable_postgres() {
    let Ok(database_url) = std::env::var("DATABASE_URL") else {
        assert!(
            std::env::var("TESSERA_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "TESSERA_REQUIRE_POSTGRES=1 but DATABASE_URL is not set"
        );
        eprintln!("DATABASE_URL not set: the PostgreSQL variant is skipped");
        return;
    };
    let mut url = url::Url::parse(&database_url).unwrap();
    let upstream = tokio::net::lookup_host((
        url.host_str().unwrap().to_string(),
        url.port().unwrap_or(5432),
    ))
    .await
    .unwrap()
    .next()
    .unwrap();
    let relay = Relay::start("127.0.0.1:0".parse().unwrap(), upstream).await;
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(relay.addr.port())).unwrap();
    let mut config = tessera_server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: url.to_string(),
        readiness_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    config.database_acquire_timeout = Duration::from_secs(1);
    let server = tessera_server::Server::start(config).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let http = client();
    assert_eq!(get_json(&http, &format!("{base}/readyz")).await.0, 200);

    let addr = relay.cut().await;
    let (status, body) = get_json(&http, &format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "database_unavailable");
    assert_eq!(get_json(&http, &format!("{base}/livez")).await.0, 200);

    // The database is back: ready again once the pool has replaced the connections that died
    // with the relay (each failed check drops the dead connection it used).
    let _relay = Relay::start(addr, upstream).await;
    let mut answers = Vec::new();
    for _ in 0..40 {
        let (status, body) = get_json(&http, &format!("{base}/readyz")).await;
        answers.push(body);
        if status == 200 {
            break;
        }
    }
    assert_eq!(answers.last().unwrap()["status"], "ok", "{answers:?}");
    server.shutdown().await;
}

// --- Request ids ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_generated_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = Served::start({
        let mut c = serve(dir.path());
        c.args(["--listen", "127.0.0.1:0"]);
        c
    });
    let http = client();
    let id_of = |r: &reqwest::Response| {
        r.headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_string())
    };

    // A caller's well-formed id is kept, answered and logged.
    let r = http
        .get(served.url("/livez"))
        .header("x-request-id", "caller-7f3a.1")
        .send()
        .await
        .unwrap();
    assert_eq!(id_of(&r).as_deref(), Some("caller-7f3a.1"));
    let line = served.wait_log("caller-7f3a.1");
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["span"]["request_id"], "caller-7f3a.1", "{line}");
    assert_eq!(line["fields"]["route"], "/livez", "{line}");

    // None, or a malformed one: a fresh id, answered and logged; errors carry one too.
    let mut ids = std::collections::HashSet::new();
    let too_long = "x".repeat(65);
    for header in [None, Some("has space"), Some(too_long.as_str())] {
        let mut request = http.get(served.url("/v1/nowhere"));
        if let Some(h) = header {
            request = request.header("x-request-id", h);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 404);
        let id = id_of(&r).unwrap();
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        let line = served.wait_log(&id);
        assert!(line.contains("\"status\":404"), "{line}");
        ids.insert(id);
    }
    assert_eq!(ids.len(), 3, "every request its own id");
    assert!(!served.seen.iter().any(|l| l.contains("has space")));
}

// --- Drain ----------------------------------------------------------------------------------

/// Creates an application with the admin command; returns its API key.
fn api_key(dir: &std::path::Path) -> String {
    let out = bin()
        .args([
            "admin",
            "--database",
            &format!("sqlite://{}", dir.join("t.db").display()),
            "create-app",
            "Drain",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    created["api_key"].as_str().unwrap().to_string()
}

/// Starts a long-poll on a new QR session (`wait` seconds) and waits until the server holds
/// it (the `waiting_topics` gauge).
async fn long_poll(
    served: &Served,
    key: &str,
    wait: u32,
) -> tokio::task::JoinHandle<Result<reqwest::Response, reqwest::Error>> {
    let http = client();
    let session: Value = http
        .post(served.url("/v1/qr-sessions"))
        .bearer_auth(key)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = session["session_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{session}"));
    let poll = http
        .get(served.url(&format!("/v1/qr-sessions/{id}?wait={wait}")))
        .bearer_auth(key);
    let task = tokio::spawn(poll.send());
    let metrics = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics
            .get(served.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let waiting = text
            .lines()
            .find(|l| l.contains("waiting_topics") && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if waiting >= 1.0 {
            return task;
        }
        assert!(
            Instant::now() < deadline,
            "the long-poll never reached the server"
        );
        tokio::task::yield_now().await;
    }
}

/// Waits until the listener refuses connections (it stops accepting once the drain begins).
async fn refused(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "new connections are still accepted"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_long_poll_finish_and_refuses_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let key = api_key(dir.path());
    let mut served = Served::start({
        let mut c = serve(dir.path());
        c.args(["--listen", "127.0.0.1:0", "--shutdown-grace-seconds", "30"]);
        c
    });
    let poll = long_poll(&served, &key, 3).await;
    let signalled = Instant::now();
    served.signal("TERM");
    served.wait_log("shutting down");
    refused(&served.addr).await;
    let answer = poll.await.unwrap().expect("the long-poll is answered");
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["state"], "created", "{body}");
    let status = served.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(25));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_ends_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let key = api_key(dir.path());
    let mut served = Served::start({
        let mut c = serve(dir.path());
        c.args(["--listen", "127.0.0.1:0", "--shutdown-grace-seconds", "1"]);
        c
    });
    let poll = long_poll(&served, &key, 30).await;
    let signalled = Instant::now();
    served.signal("TERM");
    let status = served.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "stopped at the grace deadline, not at the long-poll's end"
    );
    assert!(poll.await.unwrap().is_err(), "the connection was closed");
    served.wait_log("cut off");
}

#[test]
fn the_shipped_config_file_checks() {
    let dir = tempfile::tempdir().unwrap();
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/tessera.toml");
    let out = serve(dir.path())
        .args(["--config", file, "--check-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_sqlite_database_is_backed_up_with_one_command() {
    let dir = tempfile::tempdir().unwrap();
    let key = api_key(dir.path());
    let served = Served::start({
        let mut c = serve(dir.path());
        c.args(["--listen", "127.0.0.1:0"]);
        c
    });
    // A write in flight on the running server while the copy is taken.
    let http = client();
    let created = http
        .post(served.url("/v1/users"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"user_id": "alice"}))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{}", created.status());
    let copy = dir.path().join("backup.db");
    let out = bin()
        .args([
            "admin",
            "--database",
            &format!("sqlite://{}", dir.path().join("t.db").display()),
            "backup",
            copy.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(answer["bytes"].as_u64().unwrap() > 0);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the copy is its owner's only: {mode:o}");
    }
    // The copy is a whole database: the admin commands read the application and the user.
    let listed = bin()
        .args([
            "admin",
            "--database",
            &format!("sqlite://{}", copy.display()),
            "list-apps",
        ])
        .output()
        .unwrap();
    let apps: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let app = apps["applications"][0]["application_id"]
        .as_str()
        .unwrap()
        .to_string();
    let users = bin()
        .args([
            "admin",
            "--database",
            &format!("sqlite://{}", copy.display()),
            "list-users",
            &app,
        ])
        .output()
        .unwrap();
    let users: Value = serde_json::from_slice(&users.stdout).unwrap();
    assert_eq!(users["users"][0]["user_id"], "alice", "{users}");
    // An existing file is never overwritten.
    let again = bin()
        .args([
            "admin",
            "--database",
            &format!("sqlite://{}", dir.path().join("t.db").display()),
            "backup",
            copy.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    drop(served);
}

#[test]
fn webhook_and_openid_lifetimes_come_from_flags_then_environment_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tessera.toml");
    std::fs::write(
        &file,
        "webhook_allow_loopback = true\n\
         webhook_allow_private = false\n\
         webhook_attempts = 3\n\
         webhook_retry_base_seconds = 2\n\
         webhook_sweep_seconds = 10\n\
         webhook_lease_margin_seconds = 15\n\
         oidc_code_ttl = 30\n\
         oidc_authorization_ttl = 300\n",
    )
    .unwrap();
    let config = file.to_str().unwrap();
    // The file's keys are settings (an unknown key would be refused by name).
    let out = serve(dir.path())
        .args(["--config", config, "--check-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A value out of range in the file is refused naming its key.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "oidc_code_ttl = 0\n").unwrap();
    let e = error_of(
        &serve(dir.path())
            .args(["--config", bad.to_str().unwrap(), "--check-config"])
            .output()
            .unwrap(),
    );
    assert!(e.contains("oidc_code_ttl"), "{e}");
    // The environment wins over the file: its bad value is the one refused.
    for (var, flag) in [
        ("TESSERA_OIDC_CODE_TTL", "oidc-code-ttl"),
        ("TESSERA_OIDC_AUTHORIZATION_TTL", "oidc-authorization-ttl"),
        ("TESSERA_WEBHOOK_ATTEMPTS", "webhook-attempts"),
        (
            "TESSERA_WEBHOOK_RETRY_BASE_SECONDS",
            "webhook-retry-base-seconds",
        ),
        ("TESSERA_WEBHOOK_SWEEP_SECONDS", "webhook-sweep-seconds"),
        (
            "TESSERA_WEBHOOK_LEASE_MARGIN_SECONDS",
            "webhook-lease-margin-seconds",
        ),
    ] {
        environment_then_flag_win(dir.path(), config, var, flag, "0", "60");
    }
}

/// With the file at `config`: the environment wins over it (`var` set to `bad` is refused,
/// naming `flag`), and a flag wins over the environment (`--flag good` passes, `var` unread).
fn environment_then_flag_win(
    dir: &std::path::Path,
    config: &str,
    var: &str,
    flag: &str,
    bad: &str,
    good: &str,
) {
    let e = error_of(
        &serve(dir)
            .args(["--config", config, "--check-config"])
            .env(var, bad)
            .output()
            .unwrap(),
    );
    assert!(e.contains(flag), "{var}: {e}");
    let out = serve(dir)
        .args([
            "--config",
            config,
            "--check-config",
            &format!("--{flag}"),
            good,
        ])
        .env(var, bad)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{flag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn http_timeouts_and_the_proxy_header_come_from_flags_then_environment_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tessera.toml");
    std::fs::write(
        &file,
        "trusted_proxies = [\"10.0.0.0/8\"]\n\
         trusted_proxy_header = \"forwarded\"\n\
         http_header_timeout_seconds = 10\n\
         http_request_timeout_seconds = 45\n",
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let out = serve(dir.path())
        .args(["--config", config, "--check-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Values the settings refuse, in the file: named by key. A request timeout must exceed the
    // 30 s a long-poll waits; the proxy header is one of two.
    for (text, key) in [
        (
            "http_request_timeout_seconds = 30\n",
            "http_request_timeout_seconds",
        ),
        (
            "http_header_timeout_seconds = 0\n",
            "http_header_timeout_seconds",
        ),
        (
            "trusted_proxy_header = \"x-real-ip\"\n",
            "trusted_proxy_header",
        ),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let e = error_of(
            &serve(dir.path())
                .args(["--config", bad.to_str().unwrap(), "--check-config"])
                .output()
                .unwrap(),
        );
        assert!(e.contains(key), "{text}: {e}");
    }
    // The environment wins over the file, a flag over the environment.
    for (var, flag, bad, good) in [
        (
            "TESSERA_HTTP_REQUEST_TIMEOUT_SECONDS",
            "http-request-timeout-seconds",
            "5",
            "60",
        ),
        (
            "TESSERA_HTTP_HEADER_TIMEOUT_SECONDS",
            "http-header-timeout-seconds",
            "0",
            "30",
        ),
        (
            "TESSERA_TRUSTED_PROXY_HEADER",
            "trusted-proxy-header",
            "both",
            "x-forwarded-for",
        ),
    ] {
        environment_then_flag_win(dir.path(), config, var, flag, bad, good);
    }
}

#[test]
fn a_silent_connection_is_closed_after_the_header_timeout() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start({
        let mut c = serve(dir.path());
        c.args([
            "--listen",
            "127.0.0.1:0",
            "--http-header-timeout-seconds",
            "1",
        ]);
        c
    });
    let mut stream = std::net::TcpStream::connect(&served.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let opened = Instant::now();
    let mut buffer = [0u8; 64];
    match stream.read(&mut buffer) {
        Ok(0) => {}
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the silent connection is still open"
        ),
        Ok(n) => panic!("{n} bytes from a silent connection"),
    }
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "closed too early"
    );
}
