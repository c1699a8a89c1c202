//! End to end: passcodes beyond the offline OTP check. "Use code" and OTP fallback on push
//! authentications (after a push that cannot be delivered, and after one that goes unanswered);
//! backup codes by email through a real SMTP server started here, and by SMS and voice through
//! a local provider webhook that checks the exact request; expired, reused and rate-limited
//! codes; one-time device authentication; mandatory authentication methods; OATH tokens
//! (HOTP look-ahead and resync, TOTP) registered with a known seed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use tessera_core::OtpAccountId;
use tessera_protocol::api::{
    AuthenticationMethod, BackupChannel, BackupContacts, CreateOtpChallenge, OtpAlgorithm,
    OtpReason, OtpTokenKind, RegisterOtpToken,
};
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::time::now;
use tessera_server::{Clock, ManualClock, ServerConfig, SmtpConfig, admin};
use tessera_tests::{Backend, TestDevice, TestServer, ask, on_each_backend};

on_each_backend! {
    use_code_and_otp_fallback_accept_the_apps_passcode => use_code_and_fallback;
    email_backup_codes_arrive_through_a_real_smtp_server => email_backup;
    sms_and_voice_codes_go_to_the_provider_webhook => sms_and_voice;
    backup_codes_expire_are_single_use_and_rate_limited => expiry_reuse_rate_limit;
    one_time_device_authentication_registers_nothing => one_time_device;
    mandatory_methods_must_be_registered_first => mandatory_methods;
    oath_tokens_verify_with_look_ahead_and_drift => oath_tokens;
}

// ---------------------------------------------------------------------------------------------
// A real SMTP server on a loopback port: the `mailin` SMTP state machine driven over tokio
// sockets, keeping every message it receives (recipients, raw message).

pub(crate) type Mails = Arc<Mutex<Vec<(Vec<String>, String)>>>;

#[derive(Clone, Default)]
struct MailSink {
    mails: Mails,
    to: Vec<String>,
    data: Vec<u8>,
}

impl mailin::Handler for MailSink {
    fn data_start(
        &mut self,
        _domain: &str,
        _from: &str,
        _is8bit: bool,
        to: &[String],
    ) -> mailin::Response {
        self.to = to.to_vec();
        self.data.clear();
        mailin::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> mailin::Response {
        let text = String::from_utf8_lossy(&self.data).into_owned();
        self.mails
            .lock()
            .unwrap()
            .push((std::mem::take(&mut self.to), text));
        mailin::response::OK
    }
}

/// Starts the SMTP server; returns its URL and the mails it receives.
pub(crate) async fn smtp_server() -> (String, Mails) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mails = Mails::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sink = MailSink {
        mails: Arc::clone(&mails),
        ..MailSink::default()
    };
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let handler = sink.clone();
            tokio::spawn(async move {
                let mut session =
                    mailin::SessionBuilder::new("mail.test").build(peer.ip(), handler);
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                let greeting = session.greeting().buffer().unwrap();
                write.write_all(&greeting).await.unwrap();
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if read.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let response = session.process(&line);
                    match response.action {
                        mailin::Action::NoReply => {}
                        mailin::Action::Reply => {
                            write.write_all(&response.buffer().unwrap()).await.unwrap();
                        }
                        mailin::Action::Close | mailin::Action::UpgradeTls => {
                            let _ = write.write_all(&response.buffer().unwrap()).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (format!("smtp://127.0.0.1:{port}"), mails)
}

/// The six-digit code in a message ("… your sign-in code is 123456. …").
pub(crate) fn code_in(text: &str) -> String {
    let at = text.find("code is ").expect("a code in the message") + "code is ".len();
    let code: String = text[at..].chars().take(6).collect();
    assert!(code.chars().all(|c| c.is_ascii_digit()), "{text}");
    code
}

pub(crate) async fn wait_for_mail(mails: &Mails, n: usize) {
    for _ in 0..100 {
        if mails.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no mail arrived");
}

// ---------------------------------------------------------------------------------------------
// A local SMS and voice provider: records each request; answers with the status set.

#[derive(Clone)]
struct Provider {
    requests: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    status: Arc<Mutex<u16>>,
    url: String,
}

async fn provider() -> Provider {
    let requests: Arc<Mutex<Vec<(HeaderMap, Value)>>> = Arc::default();
    let status = Arc::new(Mutex::new(200u16));
    let (r, s) = (Arc::clone(&requests), Arc::clone(&status));
    let app = axum::Router::new().route(
        "/sms",
        axum::routing::post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let (r, s) = (Arc::clone(&r), Arc::clone(&s));
            async move {
                r.lock().unwrap().push((headers, body));
                StatusCode::from_u16(*s.lock().unwrap()).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sms", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Provider {
        requests,
        status,
        url,
    }
}

// ---------------------------------------------------------------------------------------------

/// Waits until the current 30-second step has at least 10 seconds left.
async fn early_in_a_step() {
    while now() % 30 > 20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn paired(server: &TestServer, user: &str) -> (TestDevice, OtpAccountId) {
    server.user(user).await;
    let device = TestDevice::new().await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri(user).await, None)
        .await
        .unwrap();
    let account = device
        .enrollment_otp_account(&enrollment.enrollment_id)
        .await;
    (device, account)
}

fn db(server: &TestServer) -> &tessera_server::Database {
    server.server.database()
}

async fn use_code_and_fallback(backend: Backend) {
    // The server's time moves only when the test says so: the fallback delays pass without
    // waiting for them (the devices keep the real time, well inside their signatures' window).
    let clock = ManualClock::new();
    let server = TestServer::start_with(backend, |c| {
        c.push_attempts = 1;
        c.max_pending_authentications_per_user = 10;
        c.clock = Arc::new(clock.clone());
    })
    .await;
    let app = server.app.application_id.clone();
    let (device, account) = paired(&server, "alice").await;
    early_in_a_step().await;
    let t = now();
    // The server reads the time `t` was taken at (it stays in `t`'s 30-second step: the test
    // moves it 3.2 s at most).
    clock.advance(Duration::from_millis(
        u64::try_from(t * 1000 - clock.now_ms()).unwrap_or(0),
    ));

    // By default an authentication accepts no passcode, not even the right one.
    let plain = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert!(!plain.otp_accepted);
    let err = server
        .customer
        .answer_with_otp(
            &plain.authentication_id,
            &device.otp_code_at(&account, t).await,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpNotAllowed));

    // "Use code" in the request: answerable at once with the app's passcode.
    let mut request = ask(AuthenticationKind::Approval);
    request.use_code = Some(true);
    request.accessing_ip = Some("203.0.113.7".into());
    let created = server
        .customer
        .create_authentication("alice", &request)
        .await
        .unwrap();
    assert!(created.otp_accepted);
    assert_eq!(created.otp_reason, Some(OtpReason::UseCode));
    let wrong = if device.otp_code_at(&account, t - 30).await == "000000" {
        "111111"
    } else {
        "000000"
    };
    let err = server
        .customer
        .answer_with_otp(&created.authentication_id, wrong)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpInvalid));
    let first = device.otp_code_at(&account, t - 30).await;
    let done = server
        .customer
        .answer_with_otp(&created.authentication_id, &first)
        .await
        .unwrap();
    assert_eq!(done.state, AuthenticationState::Approved);
    assert!(!done.otp_accepted);
    assert_eq!(
        done.attributes["pingid.authentication.type"],
        "MOBILE_APP_OTP"
    );
    assert_eq!(
        done.attributes["pingid.authentication.authenticating.device.id"],
        device.auth.device_id().as_str()
    );
    assert_eq!(
        done.attributes["pingid.authentication.accessing.device.ip"],
        "203.0.113.7"
    );
    assert_eq!(
        server
            .customer
            .authentication(&created.authentication_id, 0)
            .await
            .unwrap()
            .state,
        AuthenticationState::Approved
    );
    // The device can no longer answer it; the passcode cannot be used again.
    assert!(
        device
            .auth
            .pending_requests()
            .await
            .unwrap()
            .iter()
            .all(|r| r.request_id != created.authentication_id)
    );
    let again = server
        .customer
        .create_authentication("alice", &request)
        .await
        .unwrap();
    let err = server
        .customer
        .answer_with_otp(&again.authentication_id, &first)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpInvalid));
    let err = server
        .customer
        .answer_with_otp(
            &created.authentication_id,
            &device.otp_code_at(&account, t).await,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AlreadyAnswered));

    // OTP fallback after a push that cannot be delivered (the webhook's port is closed).
    admin::set_push_webhook(db(&server), &app, Some("http://127.0.0.1:1/push"))
        .await
        .unwrap();
    let mut request = ask(AuthenticationKind::Approval);
    request.otp_fallback = Some(true);
    request.otp_fallback_after = Some(900);
    let created = server
        .customer
        .create_authentication("alice", &request)
        .await
        .unwrap();
    let mut status = created.clone();
    for _ in 0..100 {
        status = server
            .customer
            .authentication(&created.authentication_id, 0)
            .await
            .unwrap();
        if status.otp_accepted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status.otp_reason, Some(OtpReason::PushUndelivered));
    assert_eq!(status.state, AuthenticationState::Pending);
    let done = server
        .customer
        .answer_with_otp(
            &created.authentication_id,
            &device.otp_code_at(&account, t).await,
        )
        .await
        .unwrap();
    assert_eq!(done.state, AuthenticationState::Approved);
    assert_eq!(
        done.attributes["pingid.authentication.type"],
        "MOBILE_APP_OTP"
    );

    // OTP fallback from the application's settings, after a push that goes unanswered.
    admin::set_push_webhook(db(&server), &app, None)
        .await
        .unwrap();
    admin::set_otp_policy(db(&server), &app, false, true, 1)
        .await
        .unwrap();
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert!(!created.otp_accepted);
    clock.advance(Duration::from_millis(2100));
    let status = server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(status.otp_reason, Some(OtpReason::PushUnanswered));
    // The request overrides the application: no fallback for this one.
    let mut request = ask(AuthenticationKind::Approval);
    request.otp_fallback = Some(false);
    let no_fallback = server
        .customer
        .create_authentication("alice", &request)
        .await
        .unwrap();
    clock.advance(Duration::from_millis(1100));
    let err = server
        .customer
        .answer_with_otp(
            &no_fallback.authentication_id,
            &device.otp_code_at(&account, t + 30).await,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpNotAllowed));
    server
        .customer
        .answer_with_otp(
            &created.authentication_id,
            &device.otp_code_at(&account, t + 30).await,
        )
        .await
        .unwrap();
}

pub(crate) fn with_smtp(url: String) -> impl FnOnce(&mut ServerConfig) {
    move |c| {
        c.smtp = Some(SmtpConfig {
            url: url.into(),
            from: "Tessera <no-reply@tessera.test>".into(),
        })
    }
}

async fn email_backup(backend: Backend) {
    let (smtp_url, mails) = smtp_server().await;
    let server = TestServer::start_with(backend, with_smtp(smtp_url)).await;
    let app = server.app.application_id.clone();
    let (_device, _account) = paired(&server, "alice").await;
    let masked = server
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
    assert_eq!(masked.email.as_deref(), Some("a****@example.com"));

    // The channel must be allowed: by the application or the request.
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert!(created.backup_channels.is_empty());
    let err = server
        .customer
        .send_backup_code(&created.authentication_id, BackupChannel::Email)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BackupChannelUnavailable));
    admin::set_backup_channels(db(&server), &app, &[BackupChannel::Email])
        .await
        .unwrap();
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    assert_eq!(created.backup_channels, vec![BackupChannel::Email]);
    // No phone registered: no SMS (and SMS is not allowed here anyway).
    let err = server
        .customer
        .send_backup_code(&created.authentication_id, BackupChannel::Sms)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BackupChannelUnavailable));
    let sent = server
        .customer
        .send_backup_code(&created.authentication_id, BackupChannel::Email)
        .await
        .unwrap();
    assert_eq!(sent.destination, "a****@example.com");
    assert_eq!(
        sent.authentication_id.as_ref(),
        Some(&created.authentication_id)
    );
    wait_for_mail(&mails, 1).await;
    let (to, text) = mails.lock().unwrap()[0].clone();
    assert_eq!(to, vec!["alice@example.com".to_string()]);
    assert!(
        text.contains("From: Tessera <no-reply@tessera.test>"),
        "{text}"
    );
    assert!(
        text.contains("Subject: End-to-end Test App sign-in code"),
        "{text}"
    );
    let code = code_in(&text);
    // Stored hashed: the code is nowhere in the database row.
    let row: (String, String) =
        sqlx::query_as("SELECT code_digest, code_salt FROM otp_challenges WHERE id = $1")
            .bind(&sent.challenge_id)
            .fetch_one(db(&server).pool())
            .await
            .unwrap();
    assert!(!row.0.is_empty() && !row.0.contains(&code) && row.0.len() == 64);

    let done = server
        .customer
        .answer_with_otp(&created.authentication_id, &code)
        .await
        .unwrap();
    assert_eq!(done.state, AuthenticationState::Approved);
    assert_eq!(done.attributes["pingid.authentication.type"], "EMAIL");
    assert_eq!(
        done.attributes["pingid.authentication.amr"],
        serde_json::json!(["otp"])
    );

    // A backup sign-in without any push: the code to the registered address.
    let challenge = server
        .customer
        .create_otp_challenge(
            "alice",
            &CreateOtpChallenge {
                channel: BackupChannel::Email,
                phone: None,
                email: None,
            },
        )
        .await
        .unwrap();
    assert!(!challenge.one_time_device);
    wait_for_mail(&mails, 2).await;
    let code = code_in(&mails.lock().unwrap()[1].1);
    let verified = server
        .customer
        .verify_otp_challenge(&challenge.challenge_id, &code)
        .await
        .unwrap();
    assert_eq!(verified.attributes["pingid.authentication.type"], "EMAIL");
    assert_eq!(verified.user_id.as_str(), "alice");
}

async fn sms_and_voice(backend: Backend) {
    let provider = provider().await;
    let server = TestServer::start(backend).await;
    let app = server.app.application_id.clone();
    let (_device, _account) = paired(&server, "bob").await;
    server
        .customer
        .set_backup_contacts(
            "bob",
            &BackupContacts {
                phone: Some("+15551234567".into()),
                email: None,
            },
        )
        .await
        .unwrap();
    let mut request = ask(AuthenticationKind::Approval);
    request.backup_channels = Some(vec![BackupChannel::Voice, BackupChannel::Sms]);
    let created = server
        .customer
        .create_authentication("bob", &request)
        .await
        .unwrap();
    assert_eq!(
        created.backup_channels,
        vec![BackupChannel::Sms, BackupChannel::Voice]
    );
    // No provider configured yet.
    let err = server
        .customer
        .send_backup_code(&created.authentication_id, BackupChannel::Sms)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BackupChannelUnavailable));
    admin::set_sms_webhook(db(&server), &app, Some(&provider.url), true)
        .await
        .unwrap();
    // The provider fails: a clear error, and nothing half-done (no code is left to answer).
    *provider.status.lock().unwrap() = 503;
    let err = server
        .customer
        .send_backup_code(&created.authentication_id, BackupChannel::Sms)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DeliveryFailed));
    let err = server
        .customer
        .answer_with_otp(&created.authentication_id, "123456")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpNotAllowed));
    *provider.status.lock().unwrap() = 200;

    let sent = server
        .customer
        .send_backup_code(&created.authentication_id, BackupChannel::Sms)
        .await
        .unwrap();
    assert_eq!(sent.destination, "+*******4567");
    let (headers, body) = provider.requests.lock().unwrap().last().unwrap().clone();
    assert_eq!(headers["content-type"], "application/json");
    let code = body["code"].as_str().unwrap().to_string();
    assert_eq!(code.len(), 6);
    assert_eq!(
        body,
        serde_json::json!({
            "channel": "sms",
            "to": "+15551234567",
            "code": code,
            "message": format!("End-to-end Test App: your sign-in code is {code}. It expires in 5 minutes. Never share it."),
            "application_id": app.as_str(),
            "user_id": "bob",
            "expires_at": sent.expires_at,
            "locale": "en",
        })
    );
    let done = server
        .customer
        .answer_with_otp(&created.authentication_id, &code)
        .await
        .unwrap();
    assert_eq!(done.attributes["pingid.authentication.type"], "SMS");
    assert_eq!(
        done.attributes["pingid.authentication.amr"],
        serde_json::json!(["sms", "otp"])
    );

    // Voice: the same provider, channel "voice".
    let created = server
        .customer
        .create_authentication("bob", &request)
        .await
        .unwrap();
    server
        .customer
        .send_backup_code(&created.authentication_id, BackupChannel::Voice)
        .await
        .unwrap();
    let (_, body) = provider.requests.lock().unwrap().last().unwrap().clone();
    assert_eq!(body["channel"], "voice");
    assert_eq!(body["to"], "+15551234567");
    let done = server
        .customer
        .answer_with_otp(&created.authentication_id, body["code"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(done.attributes["pingid.authentication.type"], "VOICE");
}

async fn expiry_reuse_rate_limit(backend: Backend) {
    let provider = provider().await;
    // The code expires when the test moves the server's clock, without waiting.
    let clock = ManualClock::new();
    let server = TestServer::start_with(backend, |c| {
        c.clock = Arc::new(clock.clone());
        c.backup_code_ttl = 1;
        c.backup_codes_per_window = 3;
        c.backup_code_attempts = 2;
        c.otp_max_failures = 20;
    })
    .await;
    let app = server.app.application_id.clone();
    server.user("carol").await;
    admin::set_sms_webhook(db(&server), &app, Some(&provider.url), true)
        .await
        .unwrap();
    admin::set_backup_channels(db(&server), &app, &[BackupChannel::Sms])
        .await
        .unwrap();
    let sms = CreateOtpChallenge {
        channel: BackupChannel::Sms,
        phone: None,
        email: None,
    };
    // No phone registered yet.
    let err = server
        .customer
        .create_otp_challenge("carol", &sms)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BackupChannelUnavailable));
    server
        .customer
        .set_backup_contacts(
            "carol",
            &BackupContacts {
                phone: Some("+447700900123".into()),
                email: None,
            },
        )
        .await
        .unwrap();
    let last_code = || {
        provider.requests.lock().unwrap().last().unwrap().1["code"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // Expired.
    let expiring = server
        .customer
        .create_otp_challenge("carol", &sms)
        .await
        .unwrap();
    let code = last_code();
    clock.advance(Duration::from_millis(2100));
    let err = server
        .customer
        .verify_otp_challenge(&expiring.challenge_id, &code)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpInvalid));

    // Too many wrong tries void the code, even the right one afterwards.
    let guessed = server
        .customer
        .create_otp_challenge("carol", &sms)
        .await
        .unwrap();
    let code = last_code();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..2 {
        let err = server
            .customer
            .verify_otp_challenge(&guessed.challenge_id, wrong)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::OtpInvalid));
    }
    let err = server
        .customer
        .verify_otp_challenge(&guessed.challenge_id, &code)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpInvalid));

    // Single use.
    let once = server
        .customer
        .create_otp_challenge("carol", &sms)
        .await
        .unwrap();
    let code = last_code();
    server
        .customer
        .verify_otp_challenge(&once.challenge_id, &code)
        .await
        .unwrap();
    let err = server
        .customer
        .verify_otp_challenge(&once.challenge_id, &code)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpInvalid));

    // Three codes per window per user and channel.
    let err = server
        .customer
        .create_otp_challenge("carol", &sms)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RateLimited));
    assert_eq!(provider.requests.lock().unwrap().len(), 3);
    let err = server
        .customer
        .verify_otp_challenge("otc_unknown", "123456")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpChallengeNotFound));
}

async fn one_time_device(backend: Backend) {
    let provider = provider().await;
    let (smtp_url, mails) = smtp_server().await;
    let server = TestServer::start_with(backend, with_smtp(smtp_url)).await;
    let app = server.app.application_id.clone();
    admin::set_sms_webhook(db(&server), &app, Some(&provider.url), true)
        .await
        .unwrap();
    // A user with no device and no contacts.
    server.user("dave").await;
    let challenge = server
        .customer
        .create_otp_challenge(
            "dave",
            &CreateOtpChallenge {
                channel: BackupChannel::Sms,
                phone: Some("+4915112345678".into()),
                email: None,
            },
        )
        .await
        .unwrap();
    assert!(challenge.one_time_device);
    assert_eq!(challenge.destination, "+*********5678");
    let (_, body) = provider.requests.lock().unwrap().last().unwrap().clone();
    assert_eq!(body["to"], "+4915112345678");
    let verified = server
        .customer
        .verify_otp_challenge(&challenge.challenge_id, body["code"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(verified.attributes["pingid.authentication.type"], "SMS");
    assert_eq!(
        verified.attributes["pingid.authentication.one.time.device"],
        true
    );
    // By email too.
    let challenge = server
        .customer
        .create_otp_challenge(
            "dave",
            &CreateOtpChallenge {
                channel: BackupChannel::Email,
                phone: None,
                email: Some("dave@example.org".into()),
            },
        )
        .await
        .unwrap();
    wait_for_mail(&mails, 1).await;
    let code = code_in(&mails.lock().unwrap()[0].1);
    server
        .customer
        .verify_otp_challenge(&challenge.challenge_id, &code)
        .await
        .unwrap();
    // Nothing stays registered.
    let user = server.customer.get_user("dave").await.unwrap();
    assert_eq!(user.device_count, 0);
    assert_eq!(
        server.customer.backup_contacts("dave").await.unwrap(),
        BackupContacts::default()
    );
    // Bad details are refused before anything is sent.
    for (channel, phone, email) in [
        (BackupChannel::Sms, Some("5551234"), None),
        (BackupChannel::Email, Some("+15551234567"), None),
        (BackupChannel::Email, None, Some("not an address")),
        (BackupChannel::Voice, None, Some("dave@example.org")),
    ] {
        let err = server
            .customer
            .create_otp_challenge(
                "dave",
                &CreateOtpChallenge {
                    channel,
                    phone: phone.map(str::to_string),
                    email: email.map(str::to_string),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidRequest));
    }
    assert_eq!(provider.requests.lock().unwrap().len(), 1);
    // Registered contacts are not used without the application's backup channels.
    let err = server
        .customer
        .create_otp_challenge(
            "dave",
            &CreateOtpChallenge {
                channel: BackupChannel::Sms,
                phone: None,
                email: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BackupChannelUnavailable));
}

async fn mandatory_methods(backend: Backend) {
    let server = TestServer::start(backend).await;
    let app = server.app.application_id.clone();
    server.user("erin").await;
    admin::set_mandatory_methods(
        db(&server),
        &app,
        &[
            AuthenticationMethod::Yubikey,
            AuthenticationMethod::PingidMobile,
            AuthenticationMethod::Sms,
        ],
    )
    .await
    .unwrap();
    let approval = ask(AuthenticationKind::Approval);
    let err = server
        .customer
        .create_authentication("erin", &approval)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::MandatoryMethodsMissing));
    assert_eq!(
        err.missing_methods(),
        &[
            AuthenticationMethod::PingidMobile,
            AuthenticationMethod::Sms,
            AuthenticationMethod::Yubikey
        ]
    );
    let device = TestDevice::new().await;
    device
        .auth
        .pair(&server.pairing_uri("erin").await, None)
        .await
        .unwrap();
    server
        .customer
        .set_backup_contacts(
            "erin",
            &BackupContacts {
                phone: Some("+15557654321".into()),
                email: None,
            },
        )
        .await
        .unwrap();
    let err = server
        .customer
        .create_authentication("erin", &approval)
        .await
        .unwrap_err();
    assert_eq!(err.missing_methods(), &[AuthenticationMethod::Yubikey]);
    assert!(err.to_string().contains("YUBIKEY"));
    server
        .customer
        .register_otp_token("erin", &yubikey_hotp())
        .await
        .unwrap();
    let created = server
        .customer
        .create_authentication("erin", &approval)
        .await
        .unwrap();
    assert_eq!(created.state, AuthenticationState::Pending);
    // Methods this server cannot register yet stay missing.
    admin::set_mandatory_methods(db(&server), &app, &[AuthenticationMethod::SecurityKey])
        .await
        .unwrap();
    let err = server
        .customer
        .create_authentication("erin", &approval)
        .await
        .unwrap_err();
    assert_eq!(err.missing_methods(), &[AuthenticationMethod::SecurityKey]);
}

/// RFC 4226's test seed ("12345678901234567890") as an HOTP YubiKey at counter 0.
fn yubikey_hotp() -> RegisterOtpToken {
    RegisterOtpToken {
        kind: OtpTokenKind::Yubikey,
        secret: "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ".into(),
        algorithm: OtpAlgorithm::Sha1,
        digits: None,
        period: None,
        counter: Some(0),
    }
}

async fn oath_tokens(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.otp_max_failures = 50).await;
    server.user("frank").await;
    let token = server
        .customer
        .register_otp_token("frank", &yubikey_hotp())
        .await
        .unwrap();
    assert!(token.hotp);
    // RFC 4226 appendix D: counters 0..9.
    let verified = server.customer.verify_otp("frank", "755224").await.unwrap();
    assert_eq!(verified.token_id.as_deref(), Some(token.token_id.as_str()));
    assert_eq!(verified.enrollment_id, None);
    assert_eq!(verified.attributes["pingid.authentication.type"], "YUBIKEY");
    let err = server
        .customer
        .verify_otp("frank", "755224")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpInvalid));
    // Presses not used (counters 1..4) are skipped: counter 5 is within the look-ahead and
    // resynchronises; an older counter is then refused.
    server.customer.verify_otp("frank", "254676").await.unwrap();
    let err = server
        .customer
        .verify_otp("frank", "969429")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpInvalid));
    server.customer.verify_otp("frank", "287922").await.unwrap();

    // A TOTP desktop token, SHA-256, 8 digits (RFC 6238's SHA-256 seed).
    let seed = b"12345678901234567890123456789012";
    let totp = server
        .customer
        .register_otp_token(
            "frank",
            &RegisterOtpToken {
                kind: OtpTokenKind::DesktopOtp,
                secret: "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZA====".into(),
                algorithm: OtpAlgorithm::Sha256,
                digits: Some(8),
                period: Some(30),
                counter: None,
            },
        )
        .await
        .unwrap();
    early_in_a_step().await;
    let at = |t: i64| {
        tessera_protocol::otp::hotp(
            seed,
            tessera_protocol::otp::OtpHash::Sha256,
            8,
            (t / 30) as u64,
        )
        .unwrap()
        .to_string()
    };
    let t = now();
    let verified = server
        .customer
        .verify_otp("frank", &at(t - 30))
        .await
        .unwrap();
    assert_eq!(verified.token_id.as_deref(), Some(totp.token_id.as_str()));
    assert_eq!(
        verified.attributes["pingid.authentication.type"],
        "DESKTOP_OTP"
    );
    server.customer.verify_otp("frank", &at(t)).await.unwrap();
    for refused in [at(t), at(t + 90)] {
        let err = server
            .customer
            .verify_otp("frank", &refused)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::OtpInvalid));
    }

    // Seeds are never returned.
    let listed = reqwest::Client::new()
        .get(format!("{}/v1/users/frank/otp-tokens", server.base_url))
        .bearer_auth(&server.app.api_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listed.contains(&token.token_id) && listed.contains(&totp.token_id));
    assert!(!listed.contains("GEZDGNBV") && !listed.to_lowercase().contains("secret"));

    // Bad registrations are refused.
    for bad in [
        RegisterOtpToken {
            secret: "not base32!".into(),
            ..yubikey_hotp()
        },
        RegisterOtpToken {
            secret: "GEZDGNBVGY3TQOJQ".into(),
            ..yubikey_hotp()
        },
        RegisterOtpToken {
            digits: Some(9),
            ..yubikey_hotp()
        },
        RegisterOtpToken {
            period: Some(30),
            ..yubikey_hotp()
        },
    ] {
        let err = server
            .customer
            .register_otp_token("frank", &bad)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidRequest));
    }
    assert_eq!(
        server
            .customer
            .otp_tokens("frank")
            .await
            .unwrap()
            .tokens
            .len(),
        2
    );
}
