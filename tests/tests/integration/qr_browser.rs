//! End to end in a real browser: the server's QR login page (`/qr-login#<browser token>`) in
//! headless Chromium, driven by `tests/browser/qr_page.mjs` (playwright-core). The test reads
//! the QR code off a screenshot of the page (rqrr), scans it with the real device core, answers
//! on the device, and watches the page follow: approved, denied, renewed codes, a bad link.
//!
//! Needs `node`, `/usr/bin/chromium` and `tests/browser/node_modules` (`npm ci` there); without
//! them the browser cases are skipped with a note, unless `TESSERA_REQUIRE_BROWSER=1` (as in CI),
//! which makes a missing browser a failure.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tessera_protocol::api::{CreateQrSession, QrSessionCreated};
use tessera_protocol::qr::QrUri;
use tessera_server::ServerConfig;
use tessera_tests::{Backend, TestDevice, TestServer};
use tokio::sync::mpsc;

const CHROMIUM: &str = "/usr/bin/chromium";
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Whether the browser cases can run; panics when they must (`TESSERA_REQUIRE_BROWSER=1`).
fn browser_available() -> bool {
    let mut missing = Vec::new();
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !node {
        missing.push("node".to_string());
    }
    if !Path::new(CHROMIUM).exists() {
        missing.push(CHROMIUM.to_string());
    }
    let modules = browser_dir().join("node_modules").join("playwright-core");
    if !modules.exists() {
        missing.push(format!("{} (run npm ci there)", modules.display()));
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("TESSERA_REQUIRE_BROWSER").as_deref() != Ok("1"),
        "TESSERA_REQUIRE_BROWSER=1 but the browser test cannot run: missing {}",
        missing.join(", ")
    );
    eprintln!("QR browser test skipped: missing {}", missing.join(", "));
    false
}

/// The page in headless Chromium: `qr_page.mjs`'s output, one `KIND rest` line at a time.
struct BrowserPage {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    _shots: tempfile::TempDir,
    log: Vec<String>,
}

impl BrowserPage {
    /// Opens `url`. With `TESSERA_QR_PAGE_SHOTS=DIR`, screenshots of the whole page in every
    /// state it shows are kept in `DIR/<name>/`.
    fn open(name: &str, url: &str, flags: &[&str]) -> BrowserPage {
        let shots = tempfile::TempDir::new().expect("temp dir");
        let mut out = shots.path().to_path_buf();
        let mut flags = flags.to_vec();
        if let Some(dir) = std::env::var_os("TESSERA_QR_PAGE_SHOTS") {
            out = PathBuf::from(dir).join(name);
            std::fs::create_dir_all(&out).expect("create the screenshot folder");
            flags.push("--page-shots");
        }
        let mut child = Command::new("node")
            .arg(browser_dir().join("qr_page.mjs"))
            .arg(url)
            .arg("--out")
            .arg(&out)
            .args(&flags)
            .current_dir(browser_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        BrowserPage {
            child,
            lines,
            _shots: shots,
            log: Vec::new(),
        }
    }

    /// The next line of one of `kinds` (others are logged and skipped); fails on `ERROR`.
    async fn expect(&mut self, kinds: &[&str]) -> (String, String) {
        loop {
            let line = tokio::time::timeout(STEP_TIMEOUT, self.lines.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {kinds:?} from the page in time; so far: {:#?}",
                        self.log
                    )
                })
                .unwrap_or_else(|| {
                    panic!("the page script ended before {kinds:?}: {:#?}", self.log)
                });
            println!("page: {line}");
            self.log.push(line.clone());
            let (kind, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            assert_ne!(kind, "ERROR", "the page script failed: {:#?}", self.log);
            if kinds.contains(&kind) {
                return (kind.to_string(), rest.to_string());
            }
        }
    }

    /// Waits for `STATE <state>`.
    async fn state(&mut self, state: &str) {
        let (_, got) = self.expect(&["STATE"]).await;
        assert_eq!(got, state, "{:#?}", self.log);
    }

    /// Waits for the QR code's screenshot and returns the text decoded from it.
    async fn code(&mut self) -> String {
        let (_, path) = self.expect(&["SHOT"]).await;
        decode_qr(Path::new(&path))
    }

    /// Waits for the final state and its visible text, then for the script to exit.
    async fn finish(self, state: &str) -> String {
        self.finish_with_redirect(state, false).await.0
    }

    /// [`Self::finish`], and with `redirect` also the page the browser went to next.
    async fn finish_with_redirect(mut self, state: &str, redirect: bool) -> (String, String) {
        let (_, got) = self.expect(&["FINAL"]).await;
        assert_eq!(got, state, "{:#?}", self.log);
        let (_, text) = self.expect(&["TEXT"]).await;
        let url = if redirect {
            self.expect(&["REDIRECT"]).await.1
        } else {
            String::new()
        };
        let status = tokio::task::spawn_blocking(move || self.child.wait())
            .await
            .expect("join")
            .expect("wait for node");
        assert!(status.success(), "qr_page.mjs exited with {status}");
        (text, url)
    }
}

impl Drop for BrowserPage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the QR code in a PNG screenshot.
fn decode_qr(path: &Path) -> String {
    let image = image::open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        .to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare(image);
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in {}", path.display());
    let (_, text) = grids[0].decode().expect("decode the QR code");
    text
}

async fn create_session(server: &TestServer, body: &CreateQrSession) -> QrSessionCreated {
    server
        .customer
        .create_qr_session(body)
        .await
        .expect("POST /v1/qr-sessions")
}

async fn paired_alice() -> (TestServer, TestDevice) {
    paired_alice_with(|_| {}).await
}

async fn paired_alice_with(adjust: impl FnOnce(&mut ServerConfig)) -> (TestServer, TestDevice) {
    let server = TestServer::start_with(Backend::Sqlite, adjust).await;
    server.user("alice").await;
    let device = TestDevice::new().await;
    device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .expect("pair");
    (server, device)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approve_in_the_browser() {
    if !browser_available() {
        return;
    }
    let (server, device) = paired_alice().await;
    let redirect = format!("{}/healthz", server.base_url);
    let session = create_session(
        &server,
        &CreateQrSession {
            redirect_url: Some(redirect.clone()),
            ..CreateQrSession::default()
        },
    )
    .await;
    assert!(
        session
            .login_page_url
            .ends_with(&format!("/qr-login#{}", session.browser_token))
    );
    let mut page = BrowserPage::open("approve", &session.login_page_url, &["--expect-redirect"]);
    let scanned = page.code().await;
    assert_eq!(scanned, session.qr_uri, "the page shows the session's code");
    assert!(QrUri::parse(&scanned).is_ok());
    page.expect(&["A11Y"]).await;

    let qr = device
        .auth
        .authenticate_with_qr(&scanned)
        .await
        .expect("scan");
    page.state("scanned").await;
    let alice = qr
        .users
        .iter()
        .find(|c| c.user_id.as_str() == "alice")
        .expect("alice may answer")
        .user_id
        .clone();
    device
        .auth
        .approve_qr(&qr, &alice, vec!["fpt".into()])
        .await
        .expect("approve");
    let (text, url) = page.finish_with_redirect("approved", true).await;
    assert!(text.contains("Signed in"), "{text}");
    assert!(url.starts_with(&format!("{redirect}?qr_session=")), "{url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deny_in_the_browser() {
    if !browser_available() {
        return;
    }
    let (server, device) = paired_alice().await;
    let session = create_session(&server, &CreateQrSession::default()).await;
    let mut page = BrowserPage::open("deny", &session.login_page_url, &[]);
    let scanned = page.code().await;
    assert_eq!(scanned, session.qr_uri);
    let qr = device
        .auth
        .authenticate_with_qr(&scanned)
        .await
        .expect("scan");
    page.state("scanned").await;
    let alice = qr.users[0].user_id.clone();
    device.auth.deny_qr(&qr, &alice, false).await.expect("deny");
    let text = page.finish("denied").await;
    assert!(text.contains("denied"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewed_code_replaces_the_old_one() {
    if !browser_available() {
        return;
    }
    let (server, device) = paired_alice().await;
    let session = create_session(&server, &CreateQrSession::default()).await;
    // The script presses "New code" with the keyboard once the first code is shown.
    let mut page = BrowserPage::open("renew", &session.login_page_url, &["--renew"]);
    let old = page.code().await;
    assert_eq!(old, session.qr_uri);
    let new = page.code().await;
    assert_ne!(new, old, "the page shows a new code");
    assert!(QrUri::parse(&new).is_ok());

    assert!(
        device.auth.authenticate_with_qr(&old).await.is_err(),
        "the old code no longer works"
    );
    let qr = device
        .auth
        .authenticate_with_qr(&new)
        .await
        .expect("the new code works");
    page.state("scanned").await;
    let alice = qr.users[0].user_id.clone();
    device
        .auth
        .approve_qr(&qr, &alice, vec!["user".into()])
        .await
        .expect("approve");
    let text = page.finish("approved").await;
    assert!(text.contains("Signed in"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_renews_its_code_before_it_expires() {
    if !browser_available() {
        return;
    }
    // Codes last 16 s: the page renews each about 6 s after it was issued. (A slow browser
    // start may see the session's first code renewed already: the first code shown is "old".)
    let (server, device) = paired_alice_with(|c| c.qr_code_ttl = 16).await;
    let session = create_session(&server, &CreateQrSession::default()).await;
    let mut page = BrowserPage::open("auto-renew", &session.login_page_url, &["--await-renewal"]);
    let old = page.code().await;
    assert!(QrUri::parse(&old).is_ok());
    let new = page.code().await;
    assert_ne!(new, old, "the page renewed the code by itself");
    assert!(device.auth.authenticate_with_qr(&old).await.is_err());
    let qr = device.auth.authenticate_with_qr(&new).await.expect("scan");
    page.state("scanned").await;
    let alice = qr.users[0].user_id.clone();
    device
        .auth
        .deny_qr(&qr, &alice, true)
        .await
        .expect("report fraud");
    let text = page.finish("denied").await;
    assert!(text.contains("denied"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unanswered_session_expires_on_the_page() {
    if !browser_available() {
        return;
    }
    // The shortest session the API allows (30 s); nobody scans it.
    let server = TestServer::start(Backend::Sqlite).await;
    let session = create_session(
        &server,
        &CreateQrSession {
            expires_in: Some(30),
            ..CreateQrSession::default()
        },
    )
    .await;
    let mut page = BrowserPage::open("expiry", &session.login_page_url, &[]);
    assert_eq!(page.code().await, session.qr_uri);
    let text = page.finish("expired").await;
    assert!(text.contains("expired"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_link_says_so() {
    if !browser_available() {
        return;
    }
    let server = TestServer::start(Backend::Sqlite).await;
    let page = BrowserPage::open(
        "bad-link",
        &format!("{}/qr-login#not-a-browser-token", server.base_url),
        &[],
    );
    let text = page.finish("invalid").await;
    assert!(text.contains("This sign-in link is not valid"), "{text}");
}

/// The page and its script are served with a strict policy (no browser needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn page_and_script_headers() {
    let server = TestServer::start(Backend::Sqlite).await;
    let http = reqwest::Client::new();
    for (path, content_type, needle) in [
        (
            "/qr-login",
            "text/html; charset=utf-8",
            "<script src=\"/qr-login.js\">",
        ),
        (
            "/qr-login.js",
            "text/javascript; charset=utf-8",
            "window.TesseraQrLogin",
        ),
    ] {
        let response = http
            .get(format!("{}{path}", server.base_url))
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(header("content-type"), content_type, "{path}");
        assert_eq!(header("cache-control"), "no-store", "{path}");
        let csp = header("content-security-policy");
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-eval"), "{path}: {csp}");
        let body = response.text().await.expect("body");
        assert!(body.contains(needle), "{path}");
        // Nothing from elsewhere: no CDN, no fonts.
        for outside in ["src=\"http", "href=\"http", "url(", "@import", "//cdn"] {
            assert!(
                !body.contains(outside),
                "{path} loads nothing from elsewhere"
            );
        }
    }
}
