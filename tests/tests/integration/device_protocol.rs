//! End to end at the protocol level: what a hostile or broken device might send, and what a
//! lost reply or a second server instance must not break.

use std::time::Duration;

use tessera_protocol::error::{ErrorBody, ErrorCode};
use tessera_protocol::pairing::PairingUri;
use tessera_protocol::time::now;
use tessera_tests::{Backend, RawDevice, TestDevice, TestServer, on_each_backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

on_each_backend! {
    device_signed_calls_refuse_replays_and_mismatches => device_signed_calls;
    expired_codes_are_refused_like_wrong_ones => expired_codes;
    stale_and_foreign_registrations_are_refused => stale_and_foreign_registrations;
    a_lost_pairing_reply_is_recovered_by_retrying => lost_reply_retry;
    a_refused_second_send_keeps_the_first_sends_pairing => refused_second_send;
    a_retry_refused_for_now_keeps_the_pairing_the_server_completed => retry_refused_for_now;
    two_server_instances_share_one_database => two_instances;
}

async fn error_code(response: reqwest::Response) -> (u16, ErrorCode) {
    let status = response.status().as_u16();
    let body: ErrorBody = response.json().await.expect("error body");
    (status, body.error.code)
}

async fn device_signed_calls(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    server.user("bob").await;
    let alice_device = RawDevice::new();
    let bob_device = RawDevice::new();
    let alice = alice_device.pair(&server.pairing_uri("alice").await).await;
    let bob = bob_device.pair(&server.pairing_uri("bob").await).await;
    let http = reqwest::Client::new();
    let path = format!("/v1/device/enrollments/{}", alice.enrollment_id);
    let url = format!("{}{}", server.base_url, path);
    let call = |auth: String| http.get(&url).header("authorization", auth).send();

    // A good call.
    let good = alice_device.authorization(&alice.enrollment_id, "GET", &path, b"", now(), "n1");
    assert_eq!(call(good.clone()).await.unwrap().status().as_u16(), 200);
    // The same signed call again: a replay.
    assert_eq!(
        error_code(call(good).await.unwrap()).await,
        (409, ErrorCode::ReplayedMessage)
    );
    // Signed for another method, path or body.
    for (method, p, body) in [
        ("DELETE", path.as_str(), &b""[..]),
        ("GET", "/v1/device/enrollments/other", &b""[..]),
        ("GET", path.as_str(), &b"{}"[..]),
    ] {
        let auth = alice_device.authorization(
            &alice.enrollment_id,
            method,
            p,
            body,
            now(),
            &format!("n-{method}-{}", body.len()),
        );
        let (status, code) = error_code(call(auth).await.unwrap()).await;
        assert_eq!(
            (status, code),
            (400, ErrorCode::InvalidSignature),
            "{method} {p}"
        );
    }
    // Too old, and from the future.
    for (t, n) in [(now() - 3600, "old"), (now() + 3600, "future")] {
        let auth = alice_device.authorization(&alice.enrollment_id, "GET", &path, b"", t, n);
        assert_eq!(
            error_code(call(auth).await.unwrap()).await,
            (400, ErrorCode::StaleMessage)
        );
    }
    // Bob's device claiming to be alice's enrollment, and bob's enrollment on alice's path.
    let forged = bob_device.authorization(&alice.enrollment_id, "GET", &path, b"", now(), "n2");
    assert_eq!(
        error_code(call(forged).await.unwrap()).await,
        (401, ErrorCode::Unauthorized)
    );
    let other = bob_device.authorization(&bob.enrollment_id, "GET", &path, b"", now(), "n3");
    let (status, _) = error_code(call(other).await.unwrap()).await;
    assert!(status == 400 || status == 401, "{status}");
    // No header, a garbage header, an unknown enrollment.
    assert_eq!(
        error_code(http.get(&url).send().await.unwrap()).await,
        (401, ErrorCode::Unauthorized)
    );
    assert_eq!(
        error_code(call("Tessera-Device x.y.z".into()).await.unwrap()).await,
        (401, ErrorCode::Unauthorized)
    );
    let ghost = tessera_protocol::ids::EnrollmentId::generate();
    let auth = alice_device.authorization(
        &ghost,
        "GET",
        &format!("/v1/device/enrollments/{ghost}"),
        b"",
        now(),
        "n4",
    );
    let r = http
        .get(format!("{}/v1/device/enrollments/{ghost}", server.base_url))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (401, ErrorCode::Unauthorized));

    // A pull reads the device's pending requests beside its nonce: they reach a fresh call
    // only. A replay gets the refusal and nothing read, and alice's device pulling on bob's
    // path is refused though alice's own requests were read beside its nonce.
    let created = server
        .customer
        .create_authentication(
            "alice",
            &tessera_tests::ask(tessera_protocol::authentication::AuthenticationKind::Approval),
        )
        .await
        .unwrap();
    let pull_path = format!("/v1/device/enrollments/{}/requests", alice.enrollment_id);
    let pull_at = |path: &str, auth: String| {
        http.get(format!("{}{path}", server.base_url))
            .header("authorization", auth)
            .send()
    };
    let pull = |auth: String| pull_at(&pull_path, auth);
    let good =
        alice_device.authorization(&alice.enrollment_id, "GET", &pull_path, b"", now(), "p1");
    let fresh = pull(good.clone()).await.unwrap();
    assert_eq!(fresh.status().as_u16(), 200);
    let pending: tessera_protocol::api::PendingRequests = fresh.json().await.unwrap();
    assert_eq!(pending.requests.len(), 1);
    let replayed = pull(good).await.unwrap();
    let status = replayed.status().as_u16();
    let body = replayed.text().await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(
        !body.contains(&pending.requests[0]) && !body.contains(created.authentication_id.as_str()),
        "a replayed pull must carry nothing it read: {body}"
    );
    let bob_path = format!("/v1/device/enrollments/{}/requests", bob.enrollment_id);
    let crossed =
        alice_device.authorization(&alice.enrollment_id, "GET", &bob_path, b"", now(), "p2");
    let r = pull_at(&bob_path, crossed).await.unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains(&pending.requests[0]), "{body}");
}

async fn expired_codes(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let uri = server.pairing_uri("alice").await;
    let code = PairingUri::parse(&uri).unwrap().code;
    // Age the code in the database, as if its ten minutes had passed.
    sqlx::query("UPDATE pairing_codes SET expires_at = $1 WHERE code_digest = $2")
        .bind(now() - 1)
        .bind(code.digest().to_string())
        .execute(server.server.database().pool())
        .await
        .unwrap();
    let device = TestDevice::new().await;
    let expired = device.auth.pair(&uri, None).await.unwrap_err();
    let wrong = device
        .auth
        .pair("ZZZZ-ZZZZ-ZZZZ", Some(&server.base_url))
        .await
        .unwrap_err();
    assert_eq!(expired.server_code(), Some(ErrorCode::InvalidPairingCode));
    assert_eq!(
        expired.to_string(),
        wrong.to_string(),
        "expired and wrong codes look the same"
    );
    assert!(device.auth.enrollments().await.is_empty());
    assert!(
        server
            .customer
            .list_devices("alice")
            .await
            .unwrap()
            .devices
            .is_empty()
    );
}

async fn stale_and_foreign_registrations(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let http = reqwest::Client::new();
    let device = RawDevice::new();
    for (audience, issued_at, expected) in [
        (
            server.base_url.clone(),
            now() - 3600,
            ErrorCode::StaleMessage,
        ),
        (
            server.base_url.clone(),
            now() + 3600,
            ErrorCode::StaleMessage,
        ),
        (
            "https://another-server.example".to_string(),
            now(),
            ErrorCode::AudienceMismatch,
        ),
    ] {
        let uri = server.pairing_uri("alice").await;
        let code = PairingUri::parse(&uri).unwrap().code;
        let (registration, proof) = device.registration(&audience, issued_at);
        let r = http
            .post(format!("{}/v1/device/pairings", server.base_url))
            .json(&serde_json::json!({"pairing_code": code.display_form().as_str(), "registration": registration, "user_verification_proof": proof}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(r).await, (400, expected));
    }
    // A proof from another registration of the same keys.
    let uri = server.pairing_uri("alice").await;
    let code = PairingUri::parse(&uri).unwrap().code;
    let (registration, _) = device.registration(&server.base_url, now());
    let (_, other_proof) = device.registration(&server.base_url, now());
    let r = http
        .post(format!("{}/v1/device/pairings", server.base_url))
        .json(&serde_json::json!({"pairing_code": code.display_form().as_str(), "registration": registration, "user_verification_proof": other_proof}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, ErrorCode::InvalidRegistration));
    assert!(
        server
            .customer
            .list_devices("alice")
            .await
            .unwrap()
            .devices
            .is_empty()
    );
    // The code was not consumed by any of that.
    device.pair(&uri).await;
}

/// A TCP proxy that forwards requests to `target` but, for the first `drop_replies`
/// connections, swallows the server's answer and closes the connection: the request was
/// processed, the reply was lost.
async fn lossy_proxy(listener: TcpListener, target: std::net::SocketAddr, drop_replies: usize) {
    scripted_proxy(listener, target, vec![Fate::LoseReply; drop_replies]).await;
}

/// What [`scripted_proxy`] does with one connection.
#[derive(Debug, Clone, Copy)]
enum Fate {
    /// Forward the request, wait for the server's answer, then close the connection without it:
    /// the request was processed, the reply was lost.
    LoseReply,
    /// Answer the error itself, in the server's error body, without forwarding the request: a
    /// refusal for now (`503 service_unavailable` while the database is unreachable, `429
    /// rate_limited`, `500 internal_error`).
    Refuse(u16, ErrorCode),
}

/// A TCP proxy in front of `target` that deals with its n-th connection as `script[n]` says;
/// connections past the script pass through.
async fn scripted_proxy(listener: TcpListener, target: std::net::SocketAddr, script: Vec<Fate>) {
    let mut script = script.into_iter();
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        let fate = script.next();
        tokio::spawn(async move {
            match fate {
                Some(Fate::LoseReply) => {
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let Some(request) = read_message(&mut client).await else {
                        return;
                    };
                    let _ = upstream.write_all(&request).await;
                    let _ = read_message(&mut upstream).await;
                    drop(client);
                }
                Some(Fate::Refuse(status, code)) => {
                    let Some(_request) = read_message(&mut client).await else {
                        return;
                    };
                    let body =
                        serde_json::to_vec(&ErrorBody::new(code, "retry shortly")).expect("json");
                    let head = format!(
                        "HTTP/1.1 {status} Refused\r\ncontent-type: application/json\r\nretry-after: 2\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = client.write_all(head.as_bytes()).await;
                    let _ = client.write_all(&body).await;
                    let _ = client.flush().await;
                }
                None => {
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            }
        });
    }
}

/// Reads one HTTP message (its head, then a body of its `Content-Length`) from `stream`;
/// `None` if the stream ends first.
async fn read_message(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(buf);
            }
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A proxy in front of `target` for two pairing requests sent at once, each on a connection of
/// its own: the first goes to the server, and its answer is held until the second has been
/// refused with `429 rate_limited` (what the server answers a send from an address over its
/// limit). Later connections pass through.
async fn refuse_second_proxy(listener: TcpListener, target: std::net::SocketAddr) {
    let (second_refused, refused) = tokio::sync::watch::channel(false);
    let second_refused = std::sync::Arc::new(second_refused);
    let mut accepted = 0;
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        accepted += 1;
        let first = accepted == 1;
        if accepted > 2 {
            // Later calls (after the app restarts) pass through.
            tokio::spawn(async move {
                if let Ok(mut upstream) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
            continue;
        }
        let (second_refused, mut refused) = (second_refused.clone(), refused.clone());
        tokio::spawn(async move {
            let Some(request) = read_message(&mut client).await else {
                return;
            };
            if first {
                let Ok(mut upstream) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = upstream.write_all(&request).await;
                let Some(answer) = read_message(&mut upstream).await else {
                    return;
                };
                let _ = refused.wait_for(|done| *done).await;
                let _ = client.write_all(&answer).await;
            } else {
                let body = serde_json::to_vec(&ErrorBody::new(
                    ErrorCode::RateLimited,
                    "too many failed pairing attempts; retry in a minute",
                ))
                .expect("json");
                let head = format!(
                    "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = client.write_all(head.as_bytes()).await;
                let _ = client.write_all(&body).await;
                let _ = client.flush().await;
                second_refused.send_replace(true);
            }
            // Keep the connection open until the client is done with it.
            let mut rest = [0u8; 1024];
            while matches!(client.read(&mut rest).await, Ok(n) if n > 0) {}
        });
    }
}

async fn refused_second_send(backend: Backend) {
    // The app sends the pairing twice at once (a double tap). The first send pairs; the second
    // is refused before the first's answer arrives. The refusal must not take the first's
    // pending pairing, and its keys, away: the server holds an enrollment with those keys.
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let public = tessera_protocol::pairing::ServerUrl::parse(&proxy_url).unwrap();
    let server = TestServer::start_with(backend, |c| c.public_url = Some(public)).await;
    tokio::spawn(refuse_second_proxy(proxy, server.server.local_addr()));
    server.user("alice").await;
    let uri = server.pairing_uri("alice").await;

    let device = TestDevice::new().await;
    let (a, b) = tokio::join!(device.auth.pair(&uri, None), device.auth.pair(&uri, None));
    let (paired, refused) = match (a, b) {
        (Ok(paired), Err(refused)) | (Err(refused), Ok(paired)) => (paired, refused),
        other => panic!("one send pairs, one is refused: {other:?}"),
    };
    assert!(
        matches!(
            refused,
            tessera_core::CoreError::Server {
                code: ErrorCode::RateLimited,
                ..
            }
        ),
        "{refused:?}"
    );
    let enrollments = device.auth.enrollments().await;
    assert_eq!(enrollments.len(), 1);
    assert_eq!(enrollments[0].enrollment_id, paired.enrollment_id);
    // Its keys are still there: a call signed with them is accepted, after a restart too.
    let device = device.reopen().await;
    device
        .auth
        .enrollment_status(&paired.enrollment_id)
        .await
        .expect("the enrollment's keys sign");
}

async fn lost_reply_retry(backend: Backend) {
    // The server's public URL is the proxy's, so that registrations name it as their audience.
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let public = tessera_protocol::pairing::ServerUrl::parse(&proxy_url).unwrap();
    let server = TestServer::start_with(backend, |c| c.public_url = Some(public)).await;
    tokio::spawn(lossy_proxy(proxy, server.server.local_addr(), 1));
    server.user("alice").await;
    let uri = server.pairing_uri("alice").await;
    assert!(uri.contains(&proxy_url.replace(':', "%3A").replace('/', "%2F")));

    let device = TestDevice::new().await;
    let first = device.auth.pair(&uri, None).await.unwrap_err();
    assert!(
        matches!(first, tessera_core::CoreError::Network(_)),
        "{first:?}"
    );
    assert!(
        device.auth.enrollments().await.is_empty(),
        "no enrollment without a verified reply"
    );
    // The server did pair the device: the code is consumed.
    assert_eq!(
        server
            .customer
            .list_devices("alice")
            .await
            .unwrap()
            .devices
            .len(),
        1
    );
    // The app restarts and the user taps "retry": the identical registration gets the same reply.
    let device = device.reopen().await;
    let enrollment = device
        .auth
        .pair(&uri, None)
        .await
        .expect("retry after a lost reply");
    let devices = server.customer.list_devices("alice").await.unwrap().devices;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].enrollment_id, enrollment.enrollment_id);
    tokio::time::sleep(Duration::from_millis(10)).await;
    device
        .auth
        .enrollment_status(&enrollment.enrollment_id)
        .await
        .unwrap();
}

async fn retry_refused_for_now(backend: Backend) {
    // The first send pairs but its reply is lost; the retries then meet a database blip (503),
    // the pairing throttle (429) and a server fault (500). None of them is a final refusal: the
    // pending pairing, and the keys the server already holds, must stay for the next retry.
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let public = tessera_protocol::pairing::ServerUrl::parse(&proxy_url).unwrap();
    let server = TestServer::start_with(backend, |c| c.public_url = Some(public)).await;
    let refusals = [
        (503, ErrorCode::ServiceUnavailable),
        (429, ErrorCode::RateLimited),
        (500, ErrorCode::InternalError),
    ];
    let mut script = vec![Fate::LoseReply];
    script.extend(
        refusals
            .iter()
            .map(|&(status, code)| Fate::Refuse(status, code)),
    );
    tokio::spawn(scripted_proxy(proxy, server.server.local_addr(), script));
    server.user("alice").await;
    let uri = server.pairing_uri("alice").await;

    let device = TestDevice::new().await;
    let first = device.auth.pair(&uri, None).await.unwrap_err();
    assert!(
        matches!(first, tessera_core::CoreError::Network(_)),
        "{first:?}"
    );
    for (_, expected) in refusals {
        let refused = device.auth.pair(&uri, None).await.unwrap_err();
        assert_eq!(refused.server_code(), Some(expected), "{refused:?}");
        assert!(device.auth.enrollments().await.is_empty());
    }
    // The server still holds the one enrollment it made for the first send.
    let devices = server.customer.list_devices("alice").await.unwrap().devices;
    assert_eq!(devices.len(), 1);

    // The next retry, after a restart too, sends the identical registration and gets it.
    let device = device.reopen().await;
    let enrollment = device
        .auth
        .pair(&uri, None)
        .await
        .expect("a retry after refusals for now");
    assert_eq!(devices[0].enrollment_id, enrollment.enrollment_id);
    let devices = server.customer.list_devices("alice").await.unwrap().devices;
    assert_eq!(devices.len(), 1);
    device
        .auth
        .enrollment_status(&enrollment.enrollment_id)
        .await
        .expect("the enrollment's keys sign");
}

async fn two_instances(backend: Backend) {
    let first = TestServer::start(backend.clone()).await;
    let database_url = first.config().database_url.clone();
    let second = tessera_server::Server::start(tessera_server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url,
        public_url: Some(first.server.public_url().clone()),
        ..tessera_server::ServerConfig::default()
    })
    .await
    .unwrap();
    // Both instances sign with the same key.
    let keys = |addr: std::net::SocketAddr| async move {
        let r: tessera_protocol::api::ServerKeysResponse =
            reqwest::get(format!("http://{addr}/v1/server-keys"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        r.keys
    };
    assert_eq!(
        keys(first.server.local_addr()).await,
        keys(second.local_addr()).await
    );
    // A code issued by one instance is consumed through the other, once.
    first.user("alice").await;
    let uri = first.pairing_uri("alice").await;
    let code = PairingUri::parse(&uri).unwrap().code;
    let raw = RawDevice::new();
    let (registration, proof) = raw.registration(first.server.public_url().as_str(), now());
    let body = serde_json::json!({"pairing_code": code.display_form().as_str(), "registration": registration, "user_verification_proof": proof});
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/device/pairings", second.local_addr()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let other = RawDevice::new();
    let (registration, proof) = other.registration(first.server.public_url().as_str(), now());
    let body = serde_json::json!({"pairing_code": code.display_form().as_str(), "registration": registration, "user_verification_proof": proof});
    let r = reqwest::Client::new()
        .post(format!("{}/v1/device/pairings", first.base_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, ErrorCode::InvalidPairingCode));
    assert_eq!(
        first
            .customer
            .list_devices("alice")
            .await
            .unwrap()
            .devices
            .len(),
        1
    );
    second.shutdown().await;
}
