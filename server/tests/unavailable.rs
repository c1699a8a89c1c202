//! A database outage under a running server is answered `503` with a retry hint on every
//! surface (customer API, device API, OAuth), never a 4xx that blames the caller; the server
//! recovers by itself when the database is back. Needs PostgreSQL (`DATABASE_URL`), whose
//! connections the test can cut and refuse while the server runs.

use std::time::Duration;

use serde_json::Value;
use sqlx::Connection;
use tessera_protocol::api::CreatedApplication;
use tessera_server::{RunningServer, Server, ServerConfig};

async fn admin_connection(url: &str) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(url)
        .await
        .expect("admin connection")
}

/// Cuts every connection to `db` and refuses new ones (or lets them in again).
async fn set_outage(admin_url: &str, db: &str, down: bool) {
    let mut admin = admin_connection(admin_url).await;
    let allow = if down { "false" } else { "true" };
    sqlx::query(&format!(
        "ALTER DATABASE {db} WITH ALLOW_CONNECTIONS {allow}"
    ))
    .execute(&mut admin)
    .await
    .expect("alter database");
    if down {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(db)
        .execute(&mut admin)
        .await
        .expect("terminate");
    }
}

/// A database of its own under the `DATABASE_URL` server, to cut off without touching any
/// other test: its name and URL. `None` when PostgreSQL is not configured or this role may not
/// create databases (the test is skipped then).
async fn own_database(prefix: &str) -> Option<(String, String, String)> {
    let Ok(base_url) = std::env::var("DATABASE_URL") else {
        assert!(
            std::env::var("TESSERA_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "TESSERA_REQUIRE_POSTGRES=1 but DATABASE_URL is not set"
        );
        eprintln!("DATABASE_URL not set: skipped");
        return None;
    };
    let db = format!("{prefix}_{}", rand::random::<u32>());
    let mut admin = admin_connection(&base_url).await;
    if let Err(e) = sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
    {
        // scripts/start-postgres.sh grants CREATEDB; another database may not.
        eprintln!("cannot create a database to cut off ({e}): skipped");
        return None;
    }
    let (server, _) = base_url.rsplit_once('/').expect("a database URL");
    let url = format!("{server}/{db}");
    Some((base_url, db, url))
}

/// Drops a database [`own_database`] created.
async fn drop_database(base_url: &str, db: &str) {
    let mut admin = admin_connection(base_url).await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
}

/// A server on the database at `url` (a request gives up waiting for a connection after
/// 500 ms), and an application named `name` on it.
async fn server_on(url: &str, name: &str) -> (RunningServer, CreatedApplication) {
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        database_url: url.to_string(),
        database_acquire_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let server = Server::start(config).await.expect("server");
    let app = server.create_application(name).await.expect("app");
    (server, app)
}

/// An audit export the database fails midway is aborted: the client's read of the body fails.
/// It never ends cleanly, as if the records sent were the whole log.
#[tokio::test]
async fn an_audit_export_cut_off_midway_does_not_end_cleanly() {
    let Some((base_url, db, url)) = own_database("tessera_export").await else {
        return;
    };
    let (server, app) = server_on(&url, "Export").await;
    // Far more records than the socket's buffers and the export's channel hold.
    let records = 200_000;
    let mut conn = admin_connection(&url).await;
    sqlx::query(
        "INSERT INTO audit_log (id, at_ms, kind, actor, application_id, outcome, details) \
         SELECT 'aud_export_' || n, n, 'test.record', 'server', $1, 'success', '{}' \
         FROM generate_series(1, $2) AS n",
    )
    .bind(app.application_id.to_string())
    .bind(records)
    .execute(&mut conn)
    .await
    .expect("records");
    drop(conn);
    let base = format!("http://{}", server.local_addr());
    let mut response = reqwest::Client::new()
        .get(format!("{base}/v1/audit/export"))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let mut body = response
        .chunk()
        .await
        .expect("a first chunk")
        .expect("not empty")
        .to_vec();

    set_outage(&base_url, &db, true).await;

    let ended = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let lines = body.iter().filter(|b| **b == b'\n').count();
    assert!(
        ended.is_err(),
        "the export ended cleanly after {lines} of {records} records"
    );
    assert!(lines < usize::try_from(records).expect("small"));

    set_outage(&base_url, &db, false).await;
    server.shutdown().await;
    drop_database(&base_url, &db).await;
}

#[tokio::test]
async fn a_database_outage_is_503_with_retry_after_on_every_surface() {
    // A database of its own, so cutting it off touches no other test.
    let Some((base_url, db, url)) = own_database("tessera_outage").await else {
        return;
    };
    let (server, app) = server_on(&url, "Outage").await;
    let base = format!("http://{}", server.local_addr());
    let http = reqwest::Client::new();
    let create_user = || {
        http.post(format!("{base}/v1/users"))
            .bearer_auth(&app.api_key)
            .json(&serde_json::json!({"user_id": format!("u{}", rand::random::<u32>())}))
            .send()
    };
    assert_eq!(create_user().await.expect("send").status(), 201);

    set_outage(&base_url, &db, true).await;

    let customer = create_user().await.expect("send");
    assert_eq!(customer.status(), 503, "customer API");
    assert!(customer.headers().contains_key("retry-after"));
    let body: Value = customer.json().await.expect("json");
    assert_eq!(body["error"]["code"], "service_unavailable");

    let device = http
        .post(format!("{base}/v1/device/pairings"))
        .json(&serde_json::json!({"pairing_code": "AAAA-BBBB-CCCC", "registration": "x.y.z"}))
        .send()
        .await
        .expect("send");
    assert!(
        device.status() == 503 || device.status() == 400,
        "device API: a malformed registration may be refused before any query; never a database-caused 4xx ({})",
        device.status()
    );

    let oauth = http
        .post(format!("{base}/oidc/token"))
        .basic_auth("cli_unknown", Some("secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=urn%3Aopenid%3Aparams%3Agrant-type%3Aciba&auth_req_id=x")
        .send()
        .await
        .expect("send");
    assert_eq!(oauth.status(), 503, "OAuth token endpoint");
    let body: Value = oauth.json().await.expect("json");
    assert_eq!(body["error"], "temporarily_unavailable");

    let backchannel = http
        .post(format!("{base}/oidc/backchannel"))
        .basic_auth("cli_unknown", Some("secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("scope=openid&login_hint=alice")
        .send()
        .await
        .expect("send");
    assert_eq!(backchannel.status(), 503, "OAuth backchannel endpoint");

    // `/metrics` tells a database that refuses connections from a pool too small: the refused
    // connections are counted as such, not as waits that timed out.
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("metrics");
    let sample = |name: &str| {
        metrics.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(' ')?;
            value.trim().parse::<f64>().ok()
        })
    };
    let refused = sample("tessera_database_connection_open_failures_total{pool=\"requests\"}");
    assert!(
        refused.is_some_and(|n| n >= 1.0),
        "each refused connection is counted ({refused:?}): {metrics}"
    );
    assert_eq!(
        sample("tessera_database_connection_timeouts_total{pool=\"requests\"}"),
        Some(0.0),
        "a refused connection is not a timeout: {metrics}"
    );

    set_outage(&base_url, &db, false).await;
    let mut recovered = false;
    for _ in 0..40 {
        if create_user().await.expect("send").status() == 201 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        recovered,
        "the server serves again once the database is back"
    );

    server.shutdown().await;
    drop_database(&base_url, &db).await;
}
