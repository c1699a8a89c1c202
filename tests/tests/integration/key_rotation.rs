//! End to end: rotating and revoking the server's device-facing signing key with real devices.
//! The running server picks each change up by itself (its reload interval is short here); the
//! real core follows the server's chain of signed key sets on its next signed exchange: online
//! through a rotation, offline through one and through two, refusing a revoked key and a set
//! signed by a key it never trusted; a QR login right after a rotation verifies at the first
//! scan. On SQLite and PostgreSQL (each test in a database of its own: the keys are global to a
//! database).

use std::time::Duration;

use serde_json::Value;
use sqlx::Connection;
use tessera_core::CoreError;
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState};
use tessera_protocol::envelope::{self, MessageType, SoftwareSigningKey};
use tessera_protocol::ids::EnrollmentId;
use tessera_protocol::pairing::{ServerKeySet, ServerUrl};
use tessera_server::admin;
use tessera_tests::{Backend, TestDevice, TestServer, approval_cycle, ask, on_each_backend};

on_each_backend! {
    a_device_online_through_a_rotation_follows_it_and_the_old_key_retires => online_rotation;
    devices_offline_through_one_and_two_rotations_catch_up => offline_rotations;
    a_revoked_key_is_refused_by_the_device_even_in_a_chain => revocation;
    a_key_set_signed_by_an_unknown_key_is_refused => unknown_signer;
    the_first_qr_login_after_a_rotation_verifies => qr_after_rotation;
}

/// A server on a database of its own, reloading its keys every 100 ms. The guard drops the
/// PostgreSQL database afterwards.
async fn start(backend: Backend) -> (TestServer, Option<DropDatabase>) {
    let (backend, guard) = match backend {
        Backend::Sqlite => (Backend::Sqlite, None),
        Backend::Postgres(url) => {
            let name = format!("tessera_keys_{}", rand::random::<u32>());
            let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await
                .unwrap();
            let (prefix, _) = url.rsplit_once('/').unwrap();
            (
                Backend::Postgres(format!("{prefix}/{name}")),
                Some(DropDatabase { url, name }),
            )
        }
    };
    let server = TestServer::start_with(backend, |c| {
        c.server_key_reload_interval = Duration::from_millis(100);
        // Requests re-signed by the tests stay pending.
        c.max_pending_authentications_per_user = 100;
        c.max_recent_authentications_per_user = 1000;
    })
    .await;
    (server, guard)
}

struct DropDatabase {
    url: String,
    name: String,
}

impl DropDatabase {
    async fn drop_now(self, server: TestServer) {
        server.server.shutdown().await;
        let mut admin = sqlx::PgConnection::connect(&self.url).await.unwrap();
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await;
    }
}

async fn finish(server: TestServer, guard: Option<DropDatabase>) {
    match guard {
        Some(guard) => guard.drop_now(server).await,
        None => server.server.shutdown().await,
    }
}

/// A device paired with `user`, and its enrollment.
async fn paired(server: &TestServer, user: &str) -> (TestDevice, EnrollmentId) {
    server.user(user).await;
    let device = TestDevice::new().await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri(user).await, None)
        .await
        .unwrap();
    (device, enrollment.enrollment_id)
}

/// The server's published key set, as served (`keys` kids, `sequence`, signer of the set).
async fn published(server: &TestServer) -> (Vec<String>, u64, String, Value) {
    let body: Value = reqwest::get(format!("{}/v1/server-keys", server.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let signed = body["signed_key_set"].as_str().unwrap();
    let set: ServerKeySet = envelope::unverified_payload(signed).unwrap();
    let signer = envelope::inspect(signed).unwrap().kid;
    let kids = set
        .keys
        .keys
        .iter()
        .map(|k| k.kid().unwrap().to_string())
        .collect();
    (kids, set.sequence, signer, body)
}

/// Waits until the running server serves key set `sequence` (its reload picked the change up).
async fn wait_for_sequence(server: &TestServer, sequence: u64) {
    for _ in 0..100 {
        if published(server).await.1 == sequence {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server never published key set {sequence}");
}

/// Key ids in a stable order (keys created within one second are listed in no fixed order).
fn sorted(mut kids: Vec<String>) -> Vec<String> {
    kids.sort();
    kids
}

fn db(server: &TestServer) -> &tessera_server::Database {
    server.server.database()
}

fn now() -> i64 {
    tessera_protocol::time::now()
}

async fn pins(server: &TestServer, device: &TestDevice) -> (Vec<String>, u64) {
    device
        .auth
        .pinned_server_keys(&server.base_url)
        .await
        .expect("paired with the server")
}

/// The private key of `kid`, read from the database and opened with its data key (what an
/// attacker who stole both holds).
async fn stolen_key(server: &TestServer, kid: &str) -> SoftwareSigningKey {
    tessera_server::store::server_keys::all_from_pool(db(server))
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.kid == kid)
        .and_then(|k| k.key)
        .expect("the key, not yet revoked")
}

/// A genuine request for `user` re-signed by `key`: what a holder of `key` could push.
async fn request_signed_by(server: &TestServer, user: &str, key: &SoftwareSigningKey) -> String {
    let created = server
        .customer
        .create_authentication(user, &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    let row: (String,) = sqlx::query_as("SELECT signed_request FROM authentications WHERE id = $1")
        .bind(created.authentication_id.to_string())
        .fetch_one(db(server).pool())
        .await
        .unwrap();
    let payload: Value = envelope::unverified_payload(&row.0).unwrap();
    envelope::sign(MessageType::AuthenticationRequest, &payload, key).unwrap()
}

async fn online_rotation(backend: Backend) {
    let (server, guard) = start(backend).await;
    let (device, enrollment) = paired(&server, "alice").await;
    approval_cycle(&server.customer, "alice", &device, &enrollment).await;
    let (first_kids, first_sequence, _, _) = published(&server).await;
    assert_eq!(first_kids.len(), 1);
    let k1 = first_kids[0].clone();

    let k2 = admin::rotate_server_key(db(&server), now(), 3600)
        .await
        .unwrap();
    wait_for_sequence(&server, first_sequence + 1).await;
    let (kids, _, signer, body) = published(&server).await;
    assert_eq!(
        sorted(kids),
        sorted(vec![k1.clone(), k2.clone()]),
        "the old key stays for its grace"
    );
    assert_eq!(
        signer, k1,
        "the new set is announced signed by the current key"
    );
    assert!(body["key_set_chain"].as_array().unwrap().len() >= 2);

    // The device's next signed exchange brings a request signed by the new key: it verifies,
    // and the pins now hold both keys.
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    let request = device
        .pull_request(&enrollment, &created.authentication_id)
        .await;
    device.auth.approve(&request, vec![], None).await.unwrap();
    assert_eq!(
        server
            .customer
            .authentication(&created.authentication_id, 10)
            .await
            .unwrap()
            .state,
        AuthenticationState::Approved
    );
    let (pinned, sequence) = pins(&server, &device).await;
    assert_eq!(sequence, first_sequence + 1);
    assert_eq!(sorted(pinned), sorted(vec![k1.clone(), k2.clone()]));

    // The grace period ends (moved into the past in the database, as time passing would).
    sqlx::query("UPDATE server_keys SET retire_at = $1 WHERE kid = $2")
        .bind(now() - 1)
        .bind(&k1)
        .execute(db(&server).writer())
        .await
        .unwrap();
    wait_for_sequence(&server, first_sequence + 2).await;
    let (kids, _, signer, _) = published(&server).await;
    assert_eq!(kids, vec![k2.clone()], "retired after its grace");
    assert_eq!(signer, k2);
    approval_cycle(&server.customer, "alice", &device, &enrollment).await;
    assert_eq!(pins(&server, &device).await, (vec![k2], first_sequence + 2));
    // A message signed by the retired key no longer verifies on the device.
    let old = stolen_key(&server, &k1).await;
    let forged = request_signed_by(&server, "alice", &old).await;
    assert!(matches!(
        device.auth.handle_push(&forged).await,
        Err(CoreError::UntrustedServerKey)
    ));
    finish(server, guard).await;
}

/// Rotates with no grace and waits for the reload that retires the previous key.
async fn rotate_and_retire(server: &TestServer) -> String {
    let (_, sequence, _, _) = published(server).await;
    let kid = admin::rotate_server_key(db(server), now(), 0)
        .await
        .unwrap();
    wait_for_sequence(server, sequence + 2).await;
    kid
}

async fn offline_rotations(backend: Backend) {
    let (server, guard) = start(backend).await;
    let (once, once_enrollment) = paired(&server, "alice").await;
    let (twice, twice_enrollment) = paired(&server, "bob").await;
    let (_, first_sequence, _, _) = published(&server).await;

    let k2 = rotate_and_retire(&server).await;
    assert_eq!(published(&server).await.0, vec![k2.clone()]);
    // Offline through one rotation (its pinned key is gone from the server).
    approval_cycle(&server.customer, "alice", &once, &once_enrollment).await;
    assert_eq!(pins(&server, &once).await, (vec![k2], first_sequence + 2));

    let k3 = rotate_and_retire(&server).await;
    // Offline through two rotations: follows k1 -> k2 -> k3.
    approval_cycle(&server.customer, "bob", &twice, &twice_enrollment).await;
    assert_eq!(
        pins(&server, &twice).await,
        (vec![k3.clone()], first_sequence + 4)
    );
    // And a request pushed to a device that has not refreshed yet verifies too.
    let (third, third_enrollment) = paired(&server, "carol").await;
    let k4 = rotate_and_retire(&server).await;
    let created = server
        .customer
        .create_authentication("carol", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    let row: (String,) = sqlx::query_as("SELECT signed_request FROM authentications WHERE id = $1")
        .bind(created.authentication_id.to_string())
        .fetch_one(db(&server).pool())
        .await
        .unwrap();
    match third.auth.handle_push(&row.0).await.unwrap() {
        tessera_core::PushOutcome::Request(request) => {
            assert_eq!(request.enrollment_id, third_enrollment);
        }
        other => panic!("expected the request, got {other:?}"),
    }
    assert_eq!(pins(&server, &third).await.0, vec![k4]);
    finish(server, guard).await;
}

async fn revocation(backend: Backend) {
    let (server, guard) = start(backend).await;
    let (device, enrollment) = paired(&server, "alice").await;
    let (stale, stale_enrollment) = paired(&server, "bob").await;
    let (kids, first_sequence, _, _) = published(&server).await;
    let k1 = kids[0].clone();
    let stolen = stolen_key(&server, &k1).await;

    let k2 = admin::rotate_server_key(db(&server), now(), 3600)
        .await
        .unwrap();
    wait_for_sequence(&server, first_sequence + 1).await;
    approval_cycle(&server.customer, "alice", &device, &enrollment).await;
    assert_eq!(
        sorted(pins(&server, &device).await.0),
        sorted(vec![k1.clone(), k2.clone()])
    );
    // Before revocation, a message signed with k1 is still accepted (grace period).
    let during_grace = request_signed_by(&server, "alice", &stolen).await;
    assert!(device.auth.handle_push(&during_grace).await.is_ok());

    // The only published key cannot be revoked; k1 can, at once.
    admin::revoke_server_key(db(&server), &k1, now())
        .await
        .unwrap();
    assert!(
        admin::revoke_server_key(db(&server), &k2, now())
            .await
            .is_err(),
        "revoking the last key is refused"
    );
    wait_for_sequence(&server, first_sequence + 2).await;
    let (kids, _, signer, body) = published(&server).await;
    assert_eq!(kids, vec![k2.clone()]);
    assert_eq!(signer, k2);
    // No set signed by the revoked key is published any more.
    for set in body["key_set_chain"].as_array().unwrap() {
        assert_ne!(envelope::inspect(set.as_str().unwrap()).unwrap().kid, k1);
    }
    approval_cycle(&server.customer, "alice", &device, &enrollment).await;
    assert_eq!(
        pins(&server, &device).await,
        (vec![k2.clone()], first_sequence + 2)
    );
    // A message signed by the revoked key is refused.
    let forged = request_signed_by(&server, "alice", &stolen).await;
    assert!(matches!(
        device.auth.handle_push(&forged).await,
        Err(CoreError::UntrustedServerKey)
    ));
    // The revoked key cannot introduce a key either: a set it signs, even slipped into the
    // database under another signer's name, is not published, and the pins stay.
    let attacker = SoftwareSigningKey::generate();
    let issuer = ServerUrl::parse(&server.base_url).unwrap();
    let introduced = envelope::sign(
        MessageType::ServerKeySet,
        &ServerKeySet {
            v: 1,
            issuer,
            keys: tessera_protocol::jwk::JwkSet {
                keys: vec![attacker.public_jwk()],
            },
            issued_at: now(),
            sequence: first_sequence + 3,
            revoked: Vec::new(),
        },
        &stolen,
    )
    .unwrap();
    sqlx::query(
        "INSERT INTO server_key_sets (issuer, sequence, signer_kid, signed, created_at) \
         VALUES ($5, $1, $2, $3, $4)",
    )
    .bind(i64::try_from(first_sequence + 3).unwrap())
    .bind(&k2) // the column lies; the signature does not
    .bind(&introduced)
    .bind(now())
    .bind(&server.base_url)
    .execute(db(&server).writer())
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(published(&server).await.1, first_sequence + 2);
    device
        .auth
        .refresh_server_keys(&server.base_url)
        .await
        .unwrap();
    assert_eq!(
        pins(&server, &device).await,
        (vec![k2.clone()], first_sequence + 2)
    );
    let by_attacker = request_signed_by(&server, "alice", &attacker).await;
    assert!(matches!(
        device.auth.handle_push(&by_attacker).await,
        Err(CoreError::UntrustedServerKey)
    ));
    // A device that only ever pinned the revoked key cannot chain through it: it must pair
    // again.
    assert!(matches!(
        stale.auth.refresh_server_keys(&server.base_url).await,
        Err(CoreError::UntrustedServerKey)
    ));
    assert!(
        stale
            .auth
            .pinned_server_keys(&server.base_url)
            .await
            .unwrap()
            .0
            .contains(&k1)
    );
    let _ = stale_enrollment;
    finish(server, guard).await;
}

async fn unknown_signer(backend: Backend) {
    let (server, guard) = start(backend).await;
    let (device, enrollment) = paired(&server, "alice").await;
    let (kids, first_sequence, _, _) = published(&server).await;
    let before = pins(&server, &device).await;
    // A set signed by a key the device never trusted appears (a compromised database).
    let attacker = SoftwareSigningKey::generate();
    let forged = envelope::sign(
        MessageType::ServerKeySet,
        &ServerKeySet {
            v: 1,
            issuer: ServerUrl::parse(&server.base_url).unwrap(),
            keys: tessera_protocol::jwk::JwkSet {
                keys: vec![attacker.public_jwk()],
            },
            issued_at: now(),
            sequence: first_sequence + 1,
            revoked: kids.clone(),
        },
        &attacker,
    )
    .unwrap();
    sqlx::query(
        "INSERT INTO server_key_sets (issuer, sequence, signer_kid, signed, created_at) \
         VALUES ($5, $1, $2, $3, $4)",
    )
    .bind(i64::try_from(first_sequence + 1).unwrap())
    .bind(attacker.kid())
    .bind(&forged)
    .bind(now())
    .bind(&server.base_url)
    .execute(db(&server).writer())
    .await
    .unwrap();
    wait_for_sequence(&server, first_sequence + 1).await;
    // The device's next exchange announces it; the device refuses it and keeps its pins.
    approval_cycle(&server.customer, "alice", &device, &enrollment).await;
    assert_eq!(pins(&server, &device).await, before);
    assert!(matches!(
        device.auth.refresh_server_keys(&server.base_url).await,
        Err(CoreError::UntrustedServerKey)
    ));
    let by_attacker = request_signed_by(&server, "alice", &attacker).await;
    assert!(matches!(
        device.auth.handle_push(&by_attacker).await,
        Err(CoreError::UntrustedServerKey)
    ));
    assert_eq!(pins(&server, &device).await, before);
    finish(server, guard).await;
}

/// The first QR scan after a rotation: the claim's answer announces the new set, the device
/// follows the chain, and the context (signed by the new key) verifies at once.
async fn qr_after_rotation(backend: Backend) {
    let (server, guard) = start(backend).await;
    let (device, _) = paired(&server, "alice").await;
    let (kids, first_sequence, _, _) = published(&server).await;
    let k1 = kids[0].clone();
    let k2 = admin::rotate_server_key(db(&server), now(), 3600)
        .await
        .unwrap();
    wait_for_sequence(&server, first_sequence + 1).await;
    assert_eq!(
        pins(&server, &device).await.0,
        vec![k1.clone()],
        "not refreshed yet"
    );

    let created = server
        .customer
        .create_qr_session(&tessera_protocol::api::CreateQrSession::default())
        .await
        .unwrap();
    let qr = device
        .auth
        .authenticate_with_qr(&created.qr_uri)
        .await
        .expect("the first scan after a rotation verifies");
    assert_eq!(sorted(pins(&server, &device).await.0), sorted(vec![k1, k2]));
    let alice = qr.users[0].user_id.clone();
    let recorded = device.auth.approve_qr(&qr, &alice, vec![]).await.unwrap();
    assert_eq!(recorded.state, tessera_core::QrSessionState::Approved);
    finish(server, guard).await;
}
