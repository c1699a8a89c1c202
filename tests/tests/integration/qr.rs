//! End to end: QR login. A device with several users scans, one of them answers; bad, expired,
//! reused and foreign codes are refused with clear errors and record nothing; the browser's view
//! and code renewal; the extra-verification and user-approval policies.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::{CoreError, QrSessionState};
use tessera_protocol::api::{CreateQrSession, QrBrowserStatus};
use tessera_protocol::authentication::Decision;
use tessera_protocol::envelope::{self, MessageType};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::qr::QrResponse;
use tessera_server::ManualClock;
use tessera_server::store::applications::QrPolicy;
use tessera_tests::{Backend, TestDevice, TestServer, device_config, on_each_backend};

on_each_backend! {
    a_device_with_two_users_scans_and_answers_for_the_second => two_users;
    denial_and_fraud_reports_are_recorded => denied;
    bad_expired_reused_and_foreign_codes_are_refused_and_record_nothing => refused;
    a_session_for_one_user_refuses_other_users => restricted;
    the_browser_follows_progress_and_renews_the_code => browser;
    extra_verification_and_user_approval_follow_the_scan => policies;
    users_whose_names_render_differently_cannot_be_created => misleading_users;
}

/// A user id or display name the QR user picker would show differently than it reads (a
/// right-to-left override) is refused when the user is created: 400 `invalid_request`.
async fn misleading_users(backend: Backend) {
    let server = TestServer::start(backend).await;
    for (id, name) in [
        ("mallory", Some("Alice \u{202E}nimda")),
        ("a\u{202E}b", None),
    ] {
        match server.customer.create_user(id, name).await {
            Err(tessera_examples::customer::CustomerApiError::Api { status, code, .. }) => {
                assert_eq!((status, code), (400, ErrorCode::InvalidRequest), "{id:?}");
            }
            other => panic!("{id:?} {name:?}: expected a refusal, got {other:?}"),
        }
    }
    server
        .customer
        .create_user("alice", Some("Alice Müller"))
        .await
        .unwrap();
}

async fn device_with(server: &TestServer, users: &[&str]) -> TestDevice {
    let device = TestDevice::with_config(device_config("Pixel 9")).await;
    for user in users {
        server.user(user).await;
        device
            .auth
            .pair(&server.pairing_uri(user).await, None)
            .await
            .unwrap();
    }
    device
}

fn from_browser() -> CreateQrSession {
    CreateQrSession {
        accessing_ip: Some("203.0.113.7".into()),
        accessing_location: Some("Berlin, DE".into()),
        ..CreateQrSession::default()
    }
}

fn server_code(err: &CoreError) -> Option<ErrorCode> {
    err.server_code()
}

async fn two_users(backend: Backend) {
    let server = TestServer::start(backend).await;
    let device = device_with(&server, &["alice", "bob"]).await;
    let created = server
        .customer
        .create_qr_session(&from_browser())
        .await
        .unwrap();
    assert!(created.qr_uri.starts_with("tessera://qr?server="));
    assert!(created.login_page_url.contains("/qr-login#"));
    assert!(!created.login_page_url.contains(&created.qr_uri));

    // The PNG and the SVG both carry exactly the QR URI.
    let png = server
        .customer
        .qr_image(&created.session_id, "png")
        .await
        .unwrap();
    let image = image::load_from_memory(&png).unwrap().to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare(image);
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1);
    let (_, decoded) = grids[0].decode().unwrap();
    assert_eq!(decoded, created.qr_uri);
    let svg = server
        .customer
        .qr_image(&created.session_id, "svg")
        .await
        .unwrap();
    assert!(String::from_utf8(svg).unwrap().contains("<svg"));

    let qr = device.auth.authenticate_with_qr(&decoded).await.unwrap();
    assert_eq!(qr.application.name, "End-to-end Test App");
    assert_eq!(qr.context.ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(qr.context.location.as_deref(), Some("Berlin, DE"));
    let users: Vec<&str> = qr.users.iter().map(|u| u.user_id.as_str()).collect();
    assert_eq!(users, ["alice", "bob"]);
    let status = server
        .customer
        .qr_session(&created.session_id, 0)
        .await
        .unwrap();
    assert_eq!(status.state, QrSessionState::Scanned);
    assert_eq!(status.device_id.as_ref(), Some(&device.auth.device_id()));
    // Once scanned the code is spent: no image any more.
    assert!(
        server
            .customer
            .qr_image(&created.session_id, "png")
            .await
            .is_err()
    );

    // The second user answers, with a fingerprint.
    let bob = qr.users[1].user_id.clone();
    let recorded = device
        .auth
        .approve_qr(&qr, &bob, vec!["fpt".into()])
        .await
        .unwrap();
    assert_eq!(recorded.state, QrSessionState::Approved);
    let status = server
        .customer
        .qr_session(&created.session_id, 0)
        .await
        .unwrap();
    assert_eq!(status.state, QrSessionState::Approved);
    assert_eq!(status.user_id.as_ref(), Some(&bob));
    assert_eq!(status.decision, Some(Decision::Approve));
    let a = &status.attributes;
    // Not attested: the biometric claim is the device's, reported apart.
    assert_eq!(a["pingid.authentication.type"], "MOBILE_APP_SWIPE");
    assert_eq!(
        a["pingid.authentication.unverified.type"],
        "MOBILE_APP_BIOMETRICS"
    );
    assert_eq!(
        a["pingid.authentication.accessing.device.ip"],
        "203.0.113.7"
    );
    assert_eq!(
        a["pingid.authentication.authenticating.device.model"],
        "Pixel 9"
    );
    // The relying party can check the answer itself: bound to this session and what was shown.
    let response: QrResponse =
        envelope::unverified_payload(status.signed_response.as_deref().unwrap()).unwrap();
    assert_eq!(response.session_id, created.session_id);
    assert_eq!(response.enrollment_id, qr.users[1].enrollment_id);
    assert_eq!(
        envelope::inspect(status.signed_response.as_deref().unwrap())
            .unwrap()
            .typ,
        MessageType::QrResponse.as_str()
    );
    // The same answer again is idempotent; another answer is refused.
    device
        .auth
        .approve_qr(&qr, &bob, vec!["fpt".into()])
        .await
        .unwrap();
    let err = device.auth.deny_qr(&qr, &bob, false).await.unwrap_err();
    assert_eq!(server_code(&err), Some(ErrorCode::AlreadyAnswered));
    // A user the device was not offered cannot answer.
    let err = device
        .auth
        .approve_qr(&qr, &"carol".parse().unwrap(), vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::InvalidInput(_)));
}

async fn denied(backend: Backend) {
    let server = TestServer::start(backend).await;
    let device = device_with(&server, &["alice"]).await;
    for (fraud, decision) in [(false, Decision::Deny), (true, Decision::ReportFraud)] {
        let created = server
            .customer
            .create_qr_session(&from_browser())
            .await
            .unwrap();
        let qr = device
            .auth
            .authenticate_with_qr(&created.qr_uri)
            .await
            .unwrap();
        let recorded = device
            .auth
            .deny_qr(&qr, &qr.users[0].user_id, fraud)
            .await
            .unwrap();
        assert_eq!(recorded.state, QrSessionState::Denied);
        let status = server
            .customer
            .qr_session(&created.session_id, 0)
            .await
            .unwrap();
        assert_eq!(status.state, QrSessionState::Denied);
        assert_eq!(status.decision, Some(decision));
        assert!(status.attributes.is_empty());
    }
}

async fn refused(backend: Backend) {
    // The server's clock moves only when told: a code expires exactly when the test says, not
    // when a slow run happens to cross a second boundary.
    let clock = ManualClock::new();
    let server = TestServer::start_with(backend, |c| {
        c.qr_code_ttl = 30;
        c.clock = Arc::new(clock.clone());
    })
    .await;
    let device = device_with(&server, &["alice"]).await;

    // Malformed text.
    for bad in [
        "",
        "hello",
        "tessera://pair?server=x&code=y",
        "tessera://qr?token=abc",
    ] {
        let err = device.auth.authenticate_with_qr(bad).await.unwrap_err();
        assert!(matches!(err, CoreError::InvalidInput(_)), "{bad}: {err:?}");
    }
    // A server this device is not paired with.
    let other = TestServer::start(server.backend.clone()).await;
    let foreign = other
        .customer
        .create_qr_session(&from_browser())
        .await
        .unwrap();
    let err = device
        .auth
        .authenticate_with_qr(&foreign.qr_uri)
        .await
        .unwrap_err();
    assert_eq!(err, CoreError::NotPairedWithServer);
    // A guessed token.
    let guessed = format!(
        "tessera://qr?server={}&token={}",
        url_encode(&server.base_url),
        "A".repeat(43)
    );
    let err = device
        .auth
        .authenticate_with_qr(&guessed)
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(ErrorCode::QrSessionNotFound));

    // A code past its lifetime (here 30 seconds): refused, and the session is still waiting.
    let created = server
        .customer
        .create_qr_session(&from_browser())
        .await
        .unwrap();
    clock.advance(Duration::from_secs(31));
    let err = device
        .auth
        .authenticate_with_qr(&created.qr_uri)
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(ErrorCode::QrSessionExpired));
    let status = server
        .customer
        .qr_session(&created.session_id, 0)
        .await
        .unwrap();
    assert_eq!(status.state, QrSessionState::Created);
    assert!(status.device_id.is_none());

    // Scanned by one device: another device cannot use it; the same device may scan again.
    let created = server
        .customer
        .create_qr_session(&from_browser())
        .await
        .unwrap();
    let qr = device
        .auth
        .authenticate_with_qr(&created.qr_uri)
        .await
        .unwrap();
    let intruder = device_with(&server, &["mallory"]).await;
    let err = intruder
        .auth
        .authenticate_with_qr(&created.qr_uri)
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(ErrorCode::QrAlreadyScanned));
    let again = device
        .auth
        .authenticate_with_qr(&created.qr_uri)
        .await
        .unwrap();
    assert_eq!(again.session_id, qr.session_id);
    // The session expires (moved into the past here): the answer is refused, nothing recorded.
    sqlx::query("UPDATE qr_sessions SET expires_at = $1 WHERE id = $2")
        .bind(tessera_protocol::time::now() - 1)
        .bind(created.session_id.as_str())
        .execute(server.server.database().pool())
        .await
        .unwrap();
    let err = device
        .auth
        .approve_qr(&qr, &qr.users[0].user_id, vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(err, CoreError::RequestExpired)
            || server_code(&err) == Some(ErrorCode::QrSessionExpired),
        "{err:?}"
    );
    let status = server
        .customer
        .qr_session(&created.session_id, 0)
        .await
        .unwrap();
    assert_eq!(status.state, QrSessionState::Expired);
    assert!(status.decision.is_none() && status.signed_response.is_none());
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn restricted(backend: Backend) {
    let server = TestServer::start(backend).await;
    let bobs_phone = device_with(&server, &["bob"]).await;
    server.user("alice").await;
    let created = server
        .customer
        .create_qr_session(&CreateQrSession {
            user_id: Some("alice".parse().unwrap()),
            ..from_browser()
        })
        .await
        .unwrap();
    let err = bobs_phone
        .auth
        .authenticate_with_qr(&created.qr_uri)
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(ErrorCode::NoEligibleUser));
    // Nothing recorded: alice's own device can still use the code.
    let alices_phone = TestDevice::with_config(device_config("iPhone 16")).await;
    alices_phone
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    let qr = alices_phone
        .auth
        .authenticate_with_qr(&created.qr_uri)
        .await
        .unwrap();
    assert_eq!(qr.users.len(), 1);
    assert_eq!(qr.users[0].user_id.as_str(), "alice");
    // A multi-user device holding alice among others offers only alice.
    let shared = device_with(&server, &["carol"]).await;
    shared
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    let created = server
        .customer
        .create_qr_session(&CreateQrSession {
            user_id: Some("alice".parse().unwrap()),
            ..from_browser()
        })
        .await
        .unwrap();
    let qr = shared
        .auth
        .authenticate_with_qr(&created.qr_uri)
        .await
        .unwrap();
    let users: Vec<&str> = qr.users.iter().map(|u| u.user_id.as_str()).collect();
    assert_eq!(users, ["alice"]);
    // Unknown users and bad options are refused at creation.
    let err = server
        .customer
        .create_qr_session(&CreateQrSession {
            user_id: Some("nobody".parse().unwrap()),
            ..CreateQrSession::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UserNotFound));
    for bad in [
        CreateQrSession {
            expires_in: Some(5),
            ..CreateQrSession::default()
        },
        CreateQrSession {
            redirect_url: Some("javascript:alert(1)".into()),
            ..CreateQrSession::default()
        },
    ] {
        let err = server.customer.create_qr_session(&bad).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidRequest));
    }
}

async fn browser_call(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    token: &str,
) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .request(method, format!("{}{path}", server.base_url))
        .header("authorization", format!("TesseraBrowser {token}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The server's `tessera_waiting_topics` gauge: the topics some request waits on now.
async fn waiting_topics(server: &TestServer) -> i64 {
    let text = reqwest::get(format!("{}/metrics", server.base_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("tessera_waiting_topics "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no waiting_topics gauge in {text}"))
}

/// Returns once at least `topics` topics have waiters in the server (the gauge is read as the
/// server reports it; a poll that never arrives fails the test after 10 s).
async fn until_waiting(server: &TestServer, topics: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while waiting_topics(server).await < topics {
        assert!(
            std::time::Instant::now() < deadline,
            "the long-poll never started waiting"
        );
        tokio::task::yield_now().await;
    }
}

async fn browser(backend: Backend) {
    let server = TestServer::start(backend).await;
    let device = device_with(&server, &["alice"]).await;
    let created = server
        .customer
        .create_qr_session(&CreateQrSession {
            redirect_url: Some("https://app.example/after-login?x=1".into()),
            ..from_browser()
        })
        .await
        .unwrap();
    let token = created.browser_token.clone();
    assert!(created.login_page_url.ends_with(&format!("#{token}")));
    let (status, _) = browser_call(&server, reqwest::Method::GET, "/v1/qr-browser", "x").await;
    assert_eq!(status, 401);
    let (status, body) =
        browser_call(&server, reqwest::Method::GET, "/v1/qr-browser", &token).await;
    assert_eq!(status, 200);
    let first: QrBrowserStatus = serde_json::from_value(body).unwrap();
    assert_eq!(first.state, QrSessionState::Created);
    assert_eq!(first.qr_uri.as_deref(), Some(created.qr_uri.as_str()));
    assert!(first.qr_svg.as_deref().unwrap().contains("<svg"));
    assert_eq!(first.application_name, "End-to-end Test App");

    // Renewal: a new code; the old one no longer works.
    let (status, body) = browser_call(
        &server,
        reqwest::Method::POST,
        "/v1/qr-browser/renew",
        &token,
    )
    .await;
    assert_eq!(status, 200);
    let renewed: QrBrowserStatus = serde_json::from_value(body).unwrap();
    assert!(renewed.version > first.version);
    let new_uri = renewed.qr_uri.clone().unwrap();
    assert_ne!(new_uri, created.qr_uri);
    let err = device
        .auth
        .authenticate_with_qr(&created.qr_uri)
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(ErrorCode::QrSessionNotFound));

    // A long-poll returns as soon as the code is scanned.
    let waiting_before = waiting_topics(&server).await;
    let poll = {
        let url = format!(
            "{}/v1/qr-browser?wait=20&seen={}",
            server.base_url, renewed.version
        );
        let token = token.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let body: QrBrowserStatus = reqwest::Client::new()
                .get(url)
                .header("authorization", format!("TesseraBrowser {token}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (body, started.elapsed())
        })
    };
    // Scanned once the poll waits on the session (so the wake-up is what answers it).
    until_waiting(&server, waiting_before + 1).await;
    let qr = device.auth.authenticate_with_qr(&new_uri).await.unwrap();
    let (scanned, waited) = poll.await.unwrap();
    assert_eq!(scanned.state, QrSessionState::Scanned);
    assert!(waited < Duration::from_secs(10));
    assert!(scanned.qr_uri.is_none() && scanned.qr_svg.is_none());
    // No renewal once scanned.
    let (status, body) = browser_call(
        &server,
        reqwest::Method::POST,
        "/v1/qr-browser/renew",
        &token,
    )
    .await;
    assert_eq!(status, 409, "{body}");

    device
        .auth
        .approve_qr(&qr, &qr.users[0].user_id, vec![])
        .await
        .unwrap();
    let (_, body) = browser_call(
        &server,
        reqwest::Method::GET,
        &format!("/v1/qr-browser?wait=5&seen={}", scanned.version),
        &token,
    )
    .await;
    let done: QrBrowserStatus = serde_json::from_value(body).unwrap();
    assert_eq!(done.state, QrSessionState::Approved);
    assert_eq!(
        done.redirect_url.as_deref(),
        Some(
            format!(
                "https://app.example/after-login?x=1&qr_session={}",
                created.session_id
            )
            .as_str()
        )
    );
}

async fn policies(backend: Backend) {
    let server = TestServer::start(backend).await;
    let device = device_with(&server, &["alice"]).await;
    let set = |policy| {
        let db = server.server.database().clone();
        let app = server.app.application_id.clone();
        async move {
            tessera_server::admin::set_qr_policy(&db, &app, policy)
                .await
                .unwrap()
        }
    };

    // Extra verification: the silent request that follows is answered by the core.
    set(QrPolicy::ExtraVerification).await;
    let created = server
        .customer
        .create_qr_session(&from_browser())
        .await
        .unwrap();
    let qr = device
        .auth
        .authenticate_with_qr(&created.qr_uri)
        .await
        .unwrap();
    let recorded = device
        .auth
        .approve_qr(&qr, &qr.users[0].user_id, vec![])
        .await
        .unwrap();
    assert_eq!(recorded.state, QrSessionState::Verifying);
    let follow_up = recorded.follow_up.clone().unwrap();
    let status = server
        .customer
        .qr_session(&created.session_id, 5)
        .await
        .unwrap();
    assert_eq!(status.state, QrSessionState::Approved);
    assert_eq!(status.follow_up.as_ref(), Some(&follow_up));
    let silent = server.customer.authentication(&follow_up, 0).await.unwrap();
    assert_eq!(
        silent.attributes["pingid.authentication.type"],
        "POLICY_APPROVE"
    );

    // User approval: a push approval follows; the session completes with its answer.
    set(QrPolicy::UserApproval).await;
    for approve in [true, false] {
        let created = server
            .customer
            .create_qr_session(&from_browser())
            .await
            .unwrap();
        let qr = device
            .auth
            .authenticate_with_qr(&created.qr_uri)
            .await
            .unwrap();
        let recorded = device
            .auth
            .approve_qr(&qr, &qr.users[0].user_id, vec![])
            .await
            .unwrap();
        assert_eq!(recorded.state, QrSessionState::Verifying);
        let status = server
            .customer
            .qr_session(&created.session_id, 0)
            .await
            .unwrap();
        assert_eq!(status.state, QrSessionState::Verifying);
        assert!(
            status.attributes.is_empty(),
            "no result before the follow-up"
        );
        let request = device.auth.pending_requests().await.unwrap().remove(0);
        assert_eq!(request.request_id, recorded.follow_up.clone().unwrap());
        assert_eq!(
            request.message,
            "Sign in to End-to-end Test App in your browser?"
        );
        assert_eq!(request.context.ip.as_deref(), Some("203.0.113.7"));
        if approve {
            device.auth.approve(&request, vec![], None).await.unwrap();
        } else {
            device.auth.deny(&request, false).await.unwrap();
        }
        let status = server
            .customer
            .qr_session(&created.session_id, 5)
            .await
            .unwrap();
        let expected = if approve {
            QrSessionState::Approved
        } else {
            QrSessionState::Denied
        };
        assert_eq!(status.state, expected);
    }
}
