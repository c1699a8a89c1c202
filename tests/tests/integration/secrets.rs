//! End to end: secrets at rest. Every secret column is sealed under the database's data key,
//! which the master key wraps: the raw database (SQLite file bytes, PostgreSQL rows read with
//! plain SQL) holds none of the seeds and private keys; a wrong or missing master key is a
//! clear startup error; a sealed value copied to another row does not open; production mode
//! refuses to start without a master key; values written in clear by an older server are sealed
//! at start; CIBA user codes are stored as keyed digests.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use sha2::Digest;
use tessera_examples::relying_party::{ClientCredentials, RelyingParty, RpError};
use tessera_protocol::api::{OtpAlgorithm, OtpTokenKind, RegisterOtpToken};
use tessera_protocol::ciba::{ClientAuthMethod, DeliveryMode, RegisterCibaClient};
use tessera_protocol::ids::{ApplicationId, UserId};
use tessera_server::store::StoreError;
use tessera_server::{
    ApnsEnvironment, KeyEncryptionKey, MasterKey, SecretsError, ServerError, admin,
};
use tessera_tests::{Backend, StoppedServer, TestDevice, TestServer, on_each_backend};

on_each_backend! {
    the_raw_database_holds_no_seed_or_private_key => raw_database_holds_no_secret;
    a_wrong_or_missing_master_key_is_refused_and_rewrap_rotates_it => wrong_master_key;
    production_mode_refuses_to_start_without_a_master_key => production_needs_a_key;
    a_sealed_secret_copied_to_another_row_does_not_open => copied_secret;
    secrets_stored_in_clear_are_sealed_at_start => clear_values_sealed_at_start;
    ciba_user_codes_are_keyed_digests_and_old_digests_keep_working => ciba_user_codes;
}

/// RFC 4226's test seed.
const RFC_SEED: &[u8] = b"12345678901234567890";

/// RFC 4226's seed as an HOTP token at counter 0 (codes 755224, 287082, 359152, …).
fn rfc_hotp() -> RegisterOtpToken {
    RegisterOtpToken {
        kind: OtpTokenKind::Yubikey,
        secret: "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ".into(),
        algorithm: OtpAlgorithm::Sha1,
        digits: None,
        period: None,
        counter: Some(0),
    }
}

/// Another seed ("abcdefghijklmnopqrst") as an HOTP token.
fn other_hotp() -> RegisterOtpToken {
    RegisterOtpToken {
        secret: "MFRGGZDFMZTWQ2LKNNWG23TPOBYXE43U".into(),
        ..rfc_hotp()
    }
}

fn new_master_key() -> Arc<dyn KeyEncryptionKey> {
    Arc::new(MasterKey::generate().expect("master key").0)
}

fn user(id: &str) -> UserId {
    id.parse().expect("user id")
}

/// Everything the database holds, as bytes: the SQLite files, or every row of every table of
/// the test's PostgreSQL schema as text (`bytea` as hex).
async fn raw_database(stopped: &StoppedServer) -> Vec<u8> {
    match &stopped.backend {
        Backend::Sqlite => {
            // A connection a finished task dropped late may close now, checkpointing the log
            // into the database file and deleting it: read every file again then, so that what
            // moved from the log is read in the database file.
            for _ in 0..50 {
                let mut bytes = Vec::new();
                let mut vanished = false;
                for file in stopped.sqlite_files() {
                    match std::fs::read(&file) {
                        Ok(read) => bytes.extend(read),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vanished = true,
                        Err(e) => panic!("read the database file {}: {e}", file.display()),
                    }
                }
                if !vanished {
                    return bytes;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            panic!("the database files kept changing while they were read")
        }
        Backend::Postgres(_) => {
            let pool = sqlx::PgPool::connect(&stopped.config.database_url)
                .await
                .expect("postgres");
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()",
            )
            .fetch_all(&pool)
            .await
            .expect("tables");
            assert!(tables.iter().any(|t| t == "enrollments"), "{tables:?}");
            let mut bytes = Vec::new();
            for table in tables {
                let rows: Vec<String> =
                    sqlx::query_scalar(&format!("SELECT CAST(t AS TEXT) FROM {table} AS t"))
                        .fetch_all(&pool)
                        .await
                        .expect("rows");
                for row in rows {
                    bytes.extend(row.into_bytes());
                    bytes.push(b'\n');
                }
            }
            pool.close().await;
            bytes
        }
    }
}

/// The forms a secret could be stored in: raw, hex, base64, base64url.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    vec![
        secret.to_vec(),
        hex_lower(secret).into_bytes(),
        STANDARD.encode(secret).into_bytes(),
        URL_SAFE_NO_PAD.encode(secret).into_bytes(),
    ]
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn assert_absent(raw: &[u8], what: &str, secret: &[u8]) {
    for form in forms(secret) {
        assert!(
            !contains(raw, &form),
            "the raw database holds {what} ({} bytes of it)",
            form.len()
        );
    }
}

async fn raw_database_holds_no_secret(backend: Backend) {
    let server = TestServer::start_isolated_with(backend, |c| {
        c.master_key = Some(new_master_key());
    })
    .await;
    let app: ApplicationId = server.app.application_id.clone();
    server.user("alice").await;
    let device = TestDevice::new().await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .expect("pair")
        .enrollment_id;
    server
        .customer
        .register_otp_token("alice", &rfc_hotp())
        .await
        .expect("token");
    let apns_key = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let apns_pem = apns_key.to_pkcs8_pem(LineEnding::LF).expect("pem");
    let apns_der = apns_key.to_pkcs8_der().expect("der");
    admin::set_apns(
        server.server.database(),
        &app,
        "TEAM123456",
        "KEY1234567",
        &apns_pem,
        "com.example.app",
        ApnsEnvironment::Production,
    )
    .await
    .expect("set apns");
    // A redirect MFA client with a secret: the secret is kept (sealed) to verify its HMAC
    // request objects.
    let mut client = RegisterCibaClient::new(
        "Portal",
        DeliveryMode::Poll,
        ClientAuthMethod::ClientSecretBasic,
    );
    client.redirect_uris = vec!["https://portal.example/callback".into()];
    let client_secret = server
        .customer
        .register_ciba_client(&client)
        .await
        .expect("register a redirect MFA client")
        .client_secret
        .expect("a secret");
    let db = server.server.database();
    // What the server holds, read through it (the data key opens them).
    let enrollment_seeds = tessera_server::store::otp::seeds_for_user(db, &app, &user("alice"))
        .await
        .expect("seeds");
    assert_eq!(enrollment_seeds.len(), 1);
    let server_keys = tessera_server::store::server_keys::all_from_pool(db)
        .await
        .expect("server keys");
    let server_key_ders: Vec<Vec<u8>> = server_keys
        .iter()
        .filter_map(|k| k.key.as_ref())
        .map(|k| k.to_pkcs8_der().expect("der").to_vec())
        .collect();
    assert!(!server_key_ders.is_empty(), "the server's key was read");
    // The secrets work: the device's TOTP code and the token's HOTP code are accepted.
    let account = device.enrollment_otp_account(&enrollment).await;
    let code = device
        .otp_code_at(&account, tessera_protocol::time::now())
        .await;
    server
        .customer
        .verify_otp("alice", &code)
        .await
        .expect("totp");
    server
        .customer
        .verify_otp("alice", "755224")
        .await
        .expect("hotp");
    let stopped = server.stop().await;
    let raw = raw_database(&stopped).await;
    assert!(contains(&raw, b"alice"), "the raw database was not read");
    assert!(
        contains(&raw, b"tsx1:"),
        "no sealed value in the raw database"
    );
    assert_absent(&raw, "the OATH token's seed", RFC_SEED);
    assert_absent(
        &raw,
        "the OATH token's seed (base32)",
        b"GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ",
    );
    assert_absent(
        &raw,
        "the enrollment's TOTP seed",
        &enrollment_seeds[0].seed,
    );
    for der in &server_key_ders {
        assert_absent(&raw, "the server's private key", der);
    }
    assert_absent(&raw, "the APNs key", apns_der.as_bytes());
    assert_absent(
        &raw,
        "a redirect MFA client's secret",
        client_secret.as_bytes(),
    );
    assert!(!contains(&raw, b"PRIVATE KEY"), "a PEM key in the database");
    for line in apns_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!contains(&raw, line.as_bytes()), "the APNs PEM is stored");
    }
}

async fn wrong_master_key(backend: Backend) {
    let first = new_master_key();
    let second = new_master_key();
    let server = TestServer::start_isolated_with(backend, |c| {
        c.master_key = Some(first.clone());
    })
    .await;
    server.user("alice").await;
    server
        .customer
        .register_otp_token("alice", &rfc_hotp())
        .await
        .expect("token");
    let stopped = server.stop().await;

    let refused = stopped
        .try_start(|c| c.master_key = Some(second.clone()))
        .await
        .err()
        .expect("a wrong master key is refused");
    match &refused {
        ServerError::Store(StoreError::Secrets(SecretsError::WrongMasterKey {
            expected,
            given,
        })) => {
            assert_eq!(expected, &first.id());
            assert_eq!(given, &second.id());
        }
        other => panic!("expected a wrong master key, got {other:?}"),
    }
    assert!(refused.to_string().contains("does not open"), "{refused}");
    let refused = stopped
        .try_start(|c| c.master_key = None)
        .await
        .err()
        .expect("a protected database needs its master key");
    assert!(
        matches!(
            &refused,
            ServerError::Store(StoreError::Secrets(SecretsError::MasterKeyMissing { kek_id }))
                if kek_id == &first.id()
        ),
        "{refused:?}"
    );

    // The right key opens it, and the secrets are intact.
    let server = stopped.try_start(|_| {}).await.expect("the right key");
    server
        .customer
        .verify_otp("alice", "755224")
        .await
        .expect("hotp");
    // Rotating the master key: the data key is wrapped by the second key; the first no longer
    // opens the database.
    let rewrapped = admin::rewrap(
        server.server.database(),
        Some(first.as_ref()),
        second.as_ref(),
    )
    .await
    .expect("rewrap");
    assert_eq!(rewrapped.master_key, second.id());
    let stopped = server.stop().await;
    let refused = stopped.try_start(|_| {}).await.err().expect("the old key");
    assert!(
        matches!(
            refused,
            ServerError::Store(StoreError::Secrets(SecretsError::WrongMasterKey { .. }))
        ),
        "{refused:?}"
    );
    let server = stopped
        .try_start(|c| c.master_key = Some(second.clone()))
        .await
        .expect("the new key");
    server
        .customer
        .verify_otp("alice", "287082")
        .await
        .expect("hotp after the rotation");
    server.server.shutdown().await;
}

async fn production_needs_a_key(backend: Backend) {
    let server = TestServer::start_isolated_with(backend, |_| {}).await;
    server.user("alice").await;
    server
        .customer
        .register_otp_token("alice", &rfc_hotp())
        .await
        .expect("token");
    let stopped = server.stop().await;
    let refused = stopped
        .try_start(|c| c.production = true)
        .await
        .err()
        .expect("production without a master key");
    assert!(
        matches!(
            refused,
            ServerError::Store(StoreError::Secrets(SecretsError::MasterKeyRequired))
        ),
        "{refused:?}"
    );
    // With a key, production starts, and the database started without one is protected now.
    let key = new_master_key();
    let server = stopped
        .try_start(|c| {
            c.production = true;
            c.master_key = Some(key.clone());
        })
        .await
        .expect("production with a master key");
    server
        .customer
        .verify_otp("alice", "755224")
        .await
        .expect("hotp");
    let stopped = server.stop().await;
    let refused = stopped
        .try_start(|c| {
            c.production = false;
            c.master_key = None;
        })
        .await
        .err()
        .expect("now protected");
    assert!(
        matches!(
            refused,
            ServerError::Store(StoreError::Secrets(SecretsError::MasterKeyMissing { .. }))
        ),
        "{refused:?}"
    );
}

async fn copied_secret(backend: Backend) {
    let server = TestServer::start_isolated_with(backend, |c| {
        c.master_key = Some(new_master_key());
    })
    .await;
    server.user("alice").await;
    server.user("bob").await;
    let alice = server
        .customer
        .register_otp_token("alice", &rfc_hotp())
        .await
        .expect("alice's token");
    let bob = server
        .customer
        .register_otp_token("bob", &other_hotp())
        .await
        .expect("bob's token");
    // Whoever can write the database copies alice's sealed seed onto bob's token.
    sqlx::query(
        "UPDATE otp_tokens SET seed = (SELECT seed FROM otp_tokens WHERE token_id = $1) WHERE token_id = $2",
    )
    .bind(&alice.token_id)
    .bind(&bob.token_id)
    .execute(server.server.database().pool())
    .await
    .expect("copy");
    // Alice's code does not pass for bob: the copied value does not open in bob's row.
    let refused = server.customer.verify_otp("bob", "755224").await;
    assert!(refused.is_err(), "alice's seed worked for bob: {refused:?}");
    server
        .customer
        .verify_otp("alice", "755224")
        .await
        .expect("alice's own token still works");
}

async fn clear_values_sealed_at_start(backend: Backend) {
    let server = TestServer::start_isolated_with(backend, |c| {
        c.master_key = Some(new_master_key());
    })
    .await;
    server.user("alice").await;
    let token = server
        .customer
        .register_otp_token("alice", &rfc_hotp())
        .await
        .expect("token");
    // The row as a server without sealing wrote it: the seed in clear (base64url).
    let clear = URL_SAFE_NO_PAD.encode(RFC_SEED);
    sqlx::query("UPDATE otp_tokens SET seed = $1 WHERE token_id = $2")
        .bind(&clear)
        .bind(&token.token_id)
        .execute(server.server.database().pool())
        .await
        .expect("write in clear");
    let stored = |server: &TestServer| {
        let db = server.server.database().clone();
        let token_id = token.token_id.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT seed FROM otp_tokens WHERE token_id = $1")
                .bind(token_id)
                .fetch_one(db.pool())
                .await
                .expect("seed")
        }
    };
    let server = server.restart().await;
    let sealed = stored(&server).await;
    assert!(sealed.starts_with("tsx1:"), "not sealed at start");
    assert!(!sealed.contains(&clear));
    server
        .customer
        .verify_otp("alice", "755224")
        .await
        .expect("the sealed seed works");
    // Sealing is idempotent: another start leaves the sealed value as it is.
    let server = server.restart().await;
    assert_eq!(stored(&server).await, sealed);
}

async fn ciba_user_codes(backend: Backend) {
    let server = TestServer::start_isolated_with(backend, |c| {
        c.master_key = Some(new_master_key());
    })
    .await;
    server.user("alice").await;
    let device = TestDevice::new().await;
    device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .expect("pair");
    let registered = server
        .customer
        .register_ciba_client(&RegisterCibaClient {
            client_name: "Call Centre".into(),
            backchannel_token_delivery_mode: DeliveryMode::Poll,
            backchannel_client_notification_endpoint: None,
            token_endpoint_auth_method: ClientAuthMethod::ClientSecretPost,
            jwks: None,
            backchannel_authentication_request_signing_alg: None,
            backchannel_user_code_parameter: true,
            redirect_uris: Vec::new(),
            grant_types: Vec::new(),
        })
        .await
        .expect("client");
    let rp = RelyingParty::discover(
        &server.base_url,
        &registered.client_id,
        ClientCredentials::SecretPost(registered.client_secret.clone().expect("secret")),
    )
    .await
    .expect("discover");
    let with_code = |code: &'static str| {
        [
            ("scope", "openid"),
            ("login_hint", "alice"),
            ("user_code", code),
        ]
    };
    server
        .customer
        .set_ciba_user_code("alice", "2468")
        .await
        .expect("set code");
    let stored = || {
        let db = server.server.database().clone();
        let app = server.app.application_id.to_string();
        async move {
            sqlx::query_as::<_, (String, String)>(
                "SELECT salt, code_digest FROM ciba_user_codes WHERE application_id = $1 AND user_id = 'alice'",
            )
            .bind(app)
            .fetch_one(db.pool())
            .await
            .expect("user code")
        }
    };
    let legacy = |salt: &str, code: &str| {
        URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(format!("{salt}\n{code}").as_bytes()))
    };
    let (salt, digest) = stored().await;
    assert!(digest.starts_with("mac1:"), "not a keyed digest: {digest}");
    assert_ne!(digest, legacy(&salt, "2468"));
    rp.backchannel(&with_code("2468"))
        .await
        .expect("the right code");
    // A code stored by an older server (salted SHA-256) keeps working and is re-stored keyed.
    sqlx::query("UPDATE ciba_user_codes SET code_digest = $1 WHERE user_id = 'alice' AND application_id = $2")
        .bind(legacy(&salt, "1357"))
        .bind(server.app.application_id.to_string())
        .execute(server.server.database().pool())
        .await
        .expect("legacy digest");
    match rp.backchannel(&with_code("2468")).await {
        Err(RpError::OAuth { error, .. }) => assert_eq!(error, "invalid_user_code"),
        other => panic!("expected invalid_user_code, got {other:?}"),
    }
    rp.backchannel(&with_code("1357"))
        .await
        .expect("the legacy code");
    let (_, digest) = stored().await;
    assert!(
        digest.starts_with("mac1:"),
        "the legacy digest stayed: {digest}"
    );
}
