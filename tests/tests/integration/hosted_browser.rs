//! End to end in a real browser: the hosted prompt (`/prompt#<browser token>`) in headless
//! Chromium at a phone's width (360 px), driven by `tests/browser/prompt_page.mjs`
//! (playwright-core). A flow created through the customer API with `hosted` is run on the page:
//! push with number matching (the test reads the number off the page and the real core picks
//! it), the app's passcode typed on the page, a backup code by email (local SMTP), a denial, a
//! cancel from the page, a bad link, German texts; each time the page shows the result and goes
//! back to the `return_url` exactly as given. The page's size and time to interactive are
//! printed (`HOSTED PROMPT FIGURES`).
//!
//! Needs `node`, `/usr/bin/chromium` and `tests/browser/node_modules`; without them the cases
//! are skipped with a note, unless `TESSERA_REQUIRE_BROWSER=1`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use tessera_protocol::api::BackupContacts;
use tessera_protocol::authentication::NumberMatching;
use tessera_protocol::flows::{DeviceSelection, FlowResultStatus, FlowStatus};
use tessera_tests::{Backend, TestServer};
use tokio::sync::mpsc;

use crate::hosted::{hosted_request, paired};
use crate::otp_backup::{code_in, smtp_server, wait_for_mail, with_smtp};

const CHROMIUM: &str = "/usr/bin/chromium";
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Whether the browser cases can run; panics when they must (`TESSERA_REQUIRE_BROWSER=1`).
pub(crate) fn browser_available() -> bool {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let modules = browser_dir().join("node_modules").join("playwright-core");
    let ok = node && Path::new(CHROMIUM).exists() && modules.exists();
    if !ok {
        assert!(
            std::env::var("TESSERA_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "TESSERA_REQUIRE_BROWSER=1 but node, {CHROMIUM} or {} is missing",
            modules.display()
        );
        eprintln!("hosted prompt browser test skipped: node, chromium or playwright-core missing");
    }
    ok
}

/// The page in headless Chromium: `prompt_page.mjs`'s output, one `KIND rest` line at a time,
/// and its stdin for commands.
pub(crate) struct PromptPage {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    log: Vec<String>,
}

impl PromptPage {
    pub(crate) fn open(url: &str, flags: &[&str]) -> PromptPage {
        let mut child = Command::new("node")
            .arg(browser_dir().join("prompt_page.mjs"))
            .arg(url)
            .args(flags)
            .current_dir(browser_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take().expect("stdin");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        PromptPage {
            child,
            stdin,
            lines,
            log: Vec::new(),
        }
    }

    /// Sends one command (`pick N`, `click ACTION`, `type CODE`).
    pub(crate) fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("write a command");
        self.stdin.flush().expect("flush");
    }

    /// The next line of one of `kinds` (others are logged and skipped); fails on `ERROR`.
    pub(crate) async fn expect(&mut self, kinds: &[&str]) -> (String, String) {
        loop {
            let line = tokio::time::timeout(STEP_TIMEOUT, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no {kinds:?} from the page in time: {:#?}", self.log))
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

    /// Waits for `STATE <status> …` and answers what the page shows with it.
    pub(crate) async fn state(&mut self, status: &str) -> serde_json::Value {
        loop {
            let (_, rest) = self.expect(&["STATE"]).await;
            let (got, info) = rest.split_once(' ').unwrap_or((rest.as_str(), "{}"));
            if got == status {
                return serde_json::from_str(info).expect("the state's JSON");
            }
            assert!(
                !["MFA_COMPLETED", "MFA_FAILED", "CANCELED", "INVALID"].contains(&got),
                "the page ended in {got} while waiting for {status}: {:#?}",
                self.log
            );
        }
    }

    /// Waits for the final state, its text, and (unless `INVALID`) the URL the page went to.
    pub(crate) async fn finish(mut self, status: &str) -> (String, String) {
        let (_, got) = self.expect(&["FINAL"]).await;
        assert_eq!(got, status, "{:#?}", self.log);
        let (_, text) = self.expect(&["TEXT"]).await;
        let url = if status == "INVALID" {
            String::new()
        } else {
            self.expect(&["RETURNED"]).await.1
        };
        let exit = tokio::task::spawn_blocking(move || self.child.wait())
            .await
            .expect("join")
            .expect("wait for node");
        assert!(exit.success(), "prompt_page.mjs exited with {exit}");
        (text, url)
    }
}

impl PromptPage {
    /// With `--stay`: waits for the final state, its text and the URL the page went to, then
    /// for the driver to be ready for [`PromptPage::goto`] (the browser stays open).
    pub(crate) async fn finish_and_stay(&mut self, status: &str) -> (String, String) {
        let (_, got) = self.expect(&["FINAL"]).await;
        assert_eq!(got, status, "{:#?}", self.log);
        let (_, text) = self.expect(&["TEXT"]).await;
        let url = self.expect(&["RETURNED"]).await.1;
        self.expect(&["READY"]).await;
        (text, url)
    }

    /// With `--stay`: loads `url` in the same page (the same browser and virtual
    /// authenticator, with its credentials).
    pub(crate) fn goto(&mut self, url: &str) {
        self.send(&format!("open {url}"));
    }

    /// Waits until the page, in `status`, shows an error; answers what it shows.
    pub(crate) async fn error_in(&mut self, status: &str) -> serde_json::Value {
        loop {
            let shown = self.state(status).await;
            if shown["error"]
                .as_str()
                .is_some_and(|e| !e.trim().is_empty())
            {
                return shown;
            }
        }
    }
}

impl Drop for PromptPage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the page returns to: a page of the test server itself, so the navigation lands.
pub(crate) fn return_url(server: &TestServer, tag: &str) -> String {
    format!("{}/healthz?rp={tag}&state=x%2Fy", server.base_url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_with_number_matching_on_the_page() {
    if !browser_available() {
        return;
    }
    let server = TestServer::start(Backend::Sqlite).await;
    let (device, enrollment) = paired(&server, "alice").await;
    let back = return_url(&server, "push");
    let mut request = hosted_request("alice", &back, &[]);
    request.number_matching = Some(NumberMatching::Choice);
    let flow = server.customer.create_flow(&request).await.unwrap();
    let prompt = flow.prompt_url.clone().unwrap();
    let mut page = PromptPage::open(&prompt, &["--return-prefix", &back]);
    let (_, metrics) = page.expect(&["METRICS"]).await;
    println!("HOSTED PROMPT FIGURES: {metrics}");
    let shown = page.state("PUSH_CONFIRMATION_WAITING").await;
    let number: u32 = shown["number"]
        .as_str()
        .expect("the page shows the number")
        .trim()
        .parse()
        .expect("a number");
    assert_eq!(shown["lang"], "en");

    let push = server
        .customer
        .flow(flow.id.as_str())
        .await
        .unwrap()
        .push
        .unwrap();
    assert_eq!(
        push.number_to_show,
        Some(number),
        "the page shows the flow's number"
    );
    let incoming = device
        .pull_request(&enrollment, &push.authentication_id)
        .await;
    device
        .auth
        .approve(&incoming, vec![], Some(number))
        .await
        .unwrap();
    let (text, url) = page.finish("MFA_COMPLETED").await;
    assert!(text.contains("You are verified"), "{text}");
    assert_eq!(url, back, "the page returns to return_url exactly as given");
    let done = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(done.result.unwrap().status, FlowResultStatus::Authenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_typed_passcode_on_the_page() {
    if !browser_available() {
        return;
    }
    let server = TestServer::start(Backend::Sqlite).await;
    let (device, enrollment) = paired(&server, "alice").await;
    let account = device.enrollment_otp_account(&enrollment).await;
    let back = return_url(&server, "otp");
    let mut request = hosted_request("alice", &back, &[]);
    request.use_code = Some(true);
    let flow = server.customer.create_flow(&request).await.unwrap();
    let mut page = PromptPage::open(
        flow.prompt_url.as_deref().unwrap(),
        &["--return-prefix", &back, "--use-code"],
    );
    let shown = page.state("OTP_REQUIRED").await;
    assert!(
        shown["text"]
            .as_str()
            .unwrap()
            .contains("authenticator app"),
        "{shown}"
    );
    let right = device
        .otp_code_at(&account, tessera_protocol::time::now())
        .await;
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    page.send(&format!("type {wrong}"));
    loop {
        let (_, rest) = page.expect(&["STATE"]).await;
        if rest.contains("not right") {
            break;
        }
    }
    page.send(&format!("type {right}"));
    let (text, url) = page.finish("MFA_COMPLETED").await;
    assert!(text.contains("You are verified"), "{text}");
    assert_eq!(url, back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_email_code_picked_on_the_page() {
    if !browser_available() {
        return;
    }
    let (smtp_url, mails) = smtp_server().await;
    let server = TestServer::start_with(Backend::Sqlite, with_smtp(smtp_url)).await;
    paired(&server, "alice").await;
    server
        .customer
        .set_backup_contacts(
            "alice",
            &BackupContacts {
                phone: None,
                email: Some("alice@example.com".into()),
            },
        )
        .await
        .unwrap();
    let back = return_url(&server, "email");
    let mut request = hosted_request("alice", &back, &[]);
    request.email_backup = Some(true);
    request.device_selection = Some(DeviceSelection::PromptUserToSelect);
    let flow = server.customer.create_flow(&request).await.unwrap();
    let mut page = PromptPage::open(
        flow.prompt_url.as_deref().unwrap(),
        &["--return-prefix", &back, "--pick-device", "1"],
    );
    let choosing = page.state("DEVICE_SELECTION_REQUIRED").await;
    assert_eq!(choosing["devices"], 2);
    let typing = page.state("OTP_REQUIRED").await;
    assert!(
        typing["text"]
            .as_str()
            .unwrap()
            .contains("a****@example.com"),
        "{typing}"
    );
    wait_for_mail(&mails, 1).await;
    let code = code_in(&mails.lock().unwrap()[0].1);
    page.send(&format!("type {code}"));
    let (text, url) = page.finish("MFA_COMPLETED").await;
    assert!(text.contains("You are verified"), "{text}");
    assert_eq!(url, back);
    let done = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(
        done.result.unwrap().attributes["pingid.authentication.type"],
        serde_json::json!("EMAIL")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_denial_is_shown_and_the_page_returns() {
    if !browser_available() {
        return;
    }
    let server = TestServer::start(Backend::Sqlite).await;
    let (device, enrollment) = paired(&server, "alice").await;
    let back = return_url(&server, "deny");
    let flow = server
        .customer
        .create_flow(&hosted_request("alice", &back, &[]))
        .await
        .unwrap();
    let mut page = PromptPage::open(
        flow.prompt_url.as_deref().unwrap(),
        &["--return-prefix", &back],
    );
    page.state("PUSH_CONFIRMATION_WAITING").await;
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
    let (text, url) = page.finish("MFA_FAILED").await;
    assert!(text.contains("You denied the request"), "{text}");
    assert_eq!(url, back);
    let over = server.customer.flow(flow.id.as_str()).await.unwrap();
    assert_eq!(over.status, FlowStatus::MfaFailed);
    assert_eq!(over.result.unwrap().status, FlowResultStatus::Denied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_on_a_german_page() {
    if !browser_available() {
        return;
    }
    let server = TestServer::start(Backend::Sqlite).await;
    paired(&server, "alice").await;
    let back = return_url(&server, "cancel");
    let flow = server
        .customer
        .create_flow(&hosted_request("alice", &back, &["de"]))
        .await
        .unwrap();
    let mut page = PromptPage::open(
        flow.prompt_url.as_deref().unwrap(),
        &["--return-prefix", &back, "--accept-language", "fr"],
    );
    let waiting = page.state("PUSH_CONFIRMATION_WAITING").await;
    assert_eq!(waiting["lang"], "de", "ui_locales win over Accept-Language");
    assert_eq!(waiting["heading"], "Anmeldung bestätigen");
    assert!(
        waiting["text"]
            .as_str()
            .unwrap()
            .contains("Wir haben eine Anfrage"),
        "{waiting}"
    );
    page.send("click cancelAuthentication");
    let (text, url) = page.finish("CANCELED").await;
    assert!(text.contains("Anmeldung abgebrochen"), "{text}");
    assert_eq!(url, back);
    assert_eq!(
        server.customer.flow(flow.id.as_str()).await.unwrap().status,
        FlowStatus::Canceled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_or_wrong_link_says_so() {
    if !browser_available() {
        return;
    }
    let server = TestServer::start(Backend::Sqlite).await;
    let forged = format!("{}/prompt#{}", server.base_url, "A".repeat(43));
    let (text, _) = PromptPage::open(&forged, &["--accept-language", "fr"])
        .finish("INVALID")
        .await;
    assert!(text.contains("lien de connexion"), "{text}");
    // Another server's token opens nothing here.
    let other = TestServer::start(Backend::Sqlite).await;
    paired(&other, "alice").await;
    let flow = other
        .customer
        .create_flow(&hosted_request("alice", "https://rp.example/cb", &[]))
        .await
        .unwrap();
    let token = flow
        .prompt_url
        .unwrap()
        .split_once('#')
        .unwrap()
        .1
        .to_string();
    let (text, _) = PromptPage::open(&format!("{}/prompt#{token}", server.base_url), &[])
        .finish("INVALID")
        .await;
    assert!(text.contains("not valid"), "{text}");
}
