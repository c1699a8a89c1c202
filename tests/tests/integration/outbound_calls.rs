//! End to end: calls the server makes to URLs others chose. CIBA notification endpoints are
//! refused when an IPv6 form embeds a refused IPv4 address or lies in a site-local or discard
//! range; SMS and voice provider webhooks are signed (HMAC-SHA256 over a timestamp and the exact
//! body) and must be https:// outside loopback development.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::HeaderMap;
use hmac::Mac;
use tessera_protocol::api::{BackupChannel, CreateOtpChallenge};
use tessera_protocol::ciba::{ClientAuthMethod, DeliveryMode, RegisterCibaClient};
use tessera_protocol::error::ErrorCode;
use tessera_server::{ServerError, admin};
use tessera_tests::{Backend, TestServer, on_each_backend};

on_each_backend! {
    notification_endpoints_embedding_refused_addresses_are_refused => embedded_addresses;
    sms_webhook_calls_are_signed_over_the_timestamp_and_the_body => signed_webhook;
    plain_http_sms_webhooks_are_refused_outside_loopback_development => http_webhook_refused;
}

async fn embedded_addresses(backend: Backend) {
    let server = TestServer::start(backend).await;
    for endpoint in [
        "https://[::10.0.0.8]/cb",                  // IPv4-compatible
        "https://[::ffff:169.254.169.254]/cb",      // IPv4-mapped
        "https://[2002:a9fe:a9fe::1]/cb",           // 6to4 of the metadata address
        "https://[2002:c0a8:0114::1]/cb",           // 6to4 of 192.168.1.20
        "https://[2001:0:0a00:8::1]/cb",            // Teredo, private server
        "https://[2001:0:5ef5:79fb::f5ff:fff7]/cb", // Teredo, client 10.0.0.8
        "https://[fec0::1]/cb",                     // site-local
        "https://[100::1]/cb",                      // discard-only
    ] {
        let reg = RegisterCibaClient {
            client_name: "Call Centre".into(),
            backchannel_token_delivery_mode: DeliveryMode::Ping,
            backchannel_client_notification_endpoint: Some(endpoint.into()),
            token_endpoint_auth_method: ClientAuthMethod::ClientSecretBasic,
            jwks: None,
            backchannel_authentication_request_signing_alg: None,
            backchannel_user_code_parameter: false,
            redirect_uris: Vec::new(),
            grant_types: Vec::new(),
        };
        let refused = server
            .customer
            .register_ciba_client(&reg)
            .await
            .expect_err(endpoint);
        assert_eq!(
            refused.code(),
            Some(ErrorCode::InvalidRequest),
            "{endpoint}"
        );
    }
}

/// A provider webhook that keeps each call's headers and exact body bytes.
struct Receiver {
    calls: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    url: String,
}

async fn receiver() -> Receiver {
    let calls: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let kept = Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/sms",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let kept = Arc::clone(&kept);
            async move {
                kept.lock().unwrap().push((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sms", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Receiver { calls, url }
}

/// What a provider does with `Tessera-Signature` (docs/operations.md): recompute the HMAC over
/// `"<t>." + body` with the secret, compare in constant time, and refuse old timestamps.
fn verify(secret: &str, header: &str, body: &[u8], now: i64) -> bool {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => signatures.push(v.to_string()),
            _ => {}
        }
    }
    let Some(t) = timestamp else { return false };
    if (now - t).abs() > 300 {
        return false;
    }
    signatures.iter().any(|hex_signature| {
        let Ok(expected) = (0..hex_signature.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex_signature.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
        else {
            return false;
        };
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    })
}

async fn signed_webhook(backend: Backend) {
    let provider = receiver().await;
    let server = TestServer::start(backend).await;
    let app = server.app.application_id.clone();
    let db = server.server.database();
    server.user("dave").await;
    admin::set_backup_channels(db, &app, &[BackupChannel::Sms])
        .await
        .unwrap();
    let secret = admin::set_sms_webhook(db, &app, Some(&provider.url), true)
        .await
        .unwrap()
        .expect("a signing secret, shown once");
    assert!(secret.starts_with("whsec_") && secret.len() > 40);
    server
        .customer
        .create_otp_challenge(
            "dave",
            &CreateOtpChallenge {
                channel: BackupChannel::Sms,
                phone: Some("+15550001111".into()),
                email: None,
            },
        )
        .await
        .unwrap();
    let (headers, body) = provider
        .calls
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("a call");
    let signature = headers["tessera-signature"].to_str().unwrap().to_string();
    let now = tessera_protocol::time::now();
    assert!(verify(&secret, &signature, &body, now), "{signature}");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["to"], "+15550001111");

    // A tampered body, another secret or a replay long after: verification fails.
    let tampered = String::from_utf8(body.to_vec())
        .unwrap()
        .replace("+15550001111", "+15559999999");
    assert!(!verify(&secret, &signature, tampered.as_bytes(), now));
    assert!(!verify("whsec_other", &signature, &body, now));
    assert!(!verify(&secret, &signature, &body, now + 3600));

    // Setting the webhook again issues a new secret; the old one no longer verifies.
    let renewed = admin::set_sms_webhook(db, &app, Some(&provider.url), true)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(renewed.as_str(), secret.as_str());
    server
        .customer
        .create_otp_challenge(
            "dave",
            &CreateOtpChallenge {
                channel: BackupChannel::Sms,
                phone: Some("+15550001111".into()),
                email: None,
            },
        )
        .await
        .unwrap();
    let (headers, body) = provider.calls.lock().unwrap().last().cloned().unwrap();
    let signature = headers["tessera-signature"].to_str().unwrap().to_string();
    assert!(verify(&renewed, &signature, &body, now));
    assert!(!verify(&secret, &signature, &body, now));
}

async fn http_webhook_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let app = server.app.application_id.clone();
    let db = server.server.database();
    for (url, allow_loopback) in [
        ("http://sms.example.com/hook", false),
        ("http://sms.example.com/hook", true),
        ("http://10.0.0.1/hook", true),
        ("http://127.0.0.1:9000/hook", false),
        ("ftp://sms.example.com/hook", true),
    ] {
        assert!(
            matches!(
                admin::set_sms_webhook(db, &app, Some(url), allow_loopback).await,
                Err(ServerError::InvalidInput(_))
            ),
            "{url} (allow loopback: {allow_loopback})"
        );
    }
    assert!(
        admin::set_sms_webhook(db, &app, Some("https://sms.example.com/hook"), false)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        admin::set_sms_webhook(db, &app, Some("http://127.0.0.1:9000/hook"), true)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        admin::set_sms_webhook(db, &app, None, false)
            .await
            .unwrap()
            .is_none()
    );
}
