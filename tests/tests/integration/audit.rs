//! End to end: the audit log records every security-relevant event kind with who, where and
//! how it ended, is append-only, and is queried with filters and cursors that stay stable under
//! inserts, and exported as JSON lines; deleting a user leaves nothing of them behind in any
//! table (checked in the database) and their devices learn it on their next call; a user's
//! authentication history pages newest first with a cursor. On SQLite and PostgreSQL.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tessera_protocol::api::{AuthenticationSettings, CreateAuthenticationRequest};
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState};
use tessera_protocol::events::{AuditPage, AuditRecord, AuthenticationHistory};
use tessera_server::{Database, ManualClock};
use tessera_tests::{Backend, TestDevice, TestServer, ask, on_each_backend};

on_each_backend! {
    every_event_kind_is_recorded_with_its_context => each_event_kind;
    the_audit_log_is_append_only => append_only;
    queries_filter_and_page_with_cursors_stable_under_inserts_and_export_json_lines => queries_and_export;
    deleting_a_user_leaves_nothing_behind_and_their_devices_learn_it => user_deletion;
    the_authentication_history_pages_newest_first_with_a_cursor => history;
    a_finished_ciba_request_is_recorded_as_ciba_completed => ciba_completed;
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get_json(server: &TestServer, path: &str) -> (u16, Value) {
    let response = http()
        .get(format!("{}{path}", server.base_url))
        .bearer_auth(&server.app.api_key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every record of the application matching `query`, all pages.
async fn all_records(server: &TestServer, query: &str) -> Vec<AuditRecord> {
    let mut records = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("{query}&limit=200&cursor={c}"),
            None => format!("{query}&limit=200"),
        };
        let page = server.audit(&q).await;
        records.extend(page.records);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return records,
        }
    }
}

/// Waits (reading again) until a record of `kind` for the application exists.
async fn record_of(server: &TestServer, kind: &str) -> AuditRecord {
    for _ in 0..400 {
        if let Some(r) = server.audit(&format!("kind={kind}")).await.records.pop() {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no {kind} record");
}

async fn pair(server: &TestServer, user: &str) -> (TestDevice, String) {
    let device = TestDevice::new().await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri(user).await, None)
        .await
        .expect("pair");
    (device, enrollment.enrollment_id.to_string())
}

fn from(ip: &str) -> CreateAuthenticationRequest {
    CreateAuthenticationRequest {
        accessing_ip: Some(ip.into()),
        ..ask(AuthenticationKind::Approval)
    }
}

async fn each_event_kind(backend: Backend) {
    let clock = ManualClock::new();
    let server = TestServer::start_isolated_with(backend, |c| {
        c.clock = Arc::new(clock.clone());
        c.otp_max_failures = 2;
        c.webhook_sweep = Duration::from_millis(100);
    })
    .await;
    let customer = &server.customer;
    customer
        .set_authentication_settings(&AuthenticationSettings::default())
        .await
        .unwrap();
    server.user("alice").await;
    let (device, enrollment) = pair(&server, "alice").await;

    // Approved, from a known address.
    let approved = customer
        .create_authentication("alice", &from("203.0.113.7"))
        .await
        .unwrap();
    let request = device
        .pull_request(&enrollment.parse().unwrap(), &approved.authentication_id)
        .await;
    device.auth.approve(&request, vec![], None).await.unwrap();
    // Denied as fraud.
    let denied = customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    let request = device
        .pull_request(&enrollment.parse().unwrap(), &denied.authentication_id)
        .await;
    device.auth.deny(&request, true).await.unwrap();
    // A forged device signature.
    let header = URL_SAFE_NO_PAD
        .encode(r#"{"alg":"ES256","typ":"tessera-device-request+jws","kid":"forged"}"#);
    let claims = json!({
        "v": 1, "enrollment_id": enrollment, "method": "GET",
        "path": format!("/v1/device/enrollments/{enrollment}"),
        "body_digest": URL_SAFE_NO_PAD.encode([0u8; 32]),
        "issued_at": tessera_server::Clock::now(&clock), "nonce": "n1",
    });
    let forged = format!(
        "{header}.{}.{}",
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode([7u8; 64])
    );
    let response = http()
        .get(format!(
            "{}/v1/device/enrollments/{enrollment}",
            server.base_url
        ))
        .header("authorization", format!("Tessera-Device {forged}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // Wrong passcodes until locked out.
    for _ in 0..2 {
        assert!(customer.verify_otp("alice", "000000").await.is_err());
    }
    // A rejected API key.
    let response = http()
        .get(format!("{}/v1/users/alice", server.base_url))
        .bearer_auth("tsk_not-a-key")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // Pending when the device is removed: failed.
    let failed = customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    // One left to expire.
    let expiring = customer
        .create_authentication(
            "alice",
            &CreateAuthenticationRequest {
                expires_in: Some(60),
                ..ask(AuthenticationKind::Approval)
            },
        )
        .await
        .unwrap();
    clock.advance(Duration::from_secs(61));
    let expired = record_of(&server, "authentication.expired").await;
    assert_eq!(
        expired.subject.as_deref(),
        Some(expiring.authentication_id.as_str())
    );
    assert_eq!(expired.actor, "server");
    // A flow, cancelled: completed.
    let flow = customer
        .create_flow(&tessera_protocol::flows::CreateFlowRequest::new(
            "alice".parse().unwrap(),
        ))
        .await
        .unwrap();
    customer
        .flow_action(
            flow.id.as_str(),
            &tessera_protocol::flows::FlowAction::CancelAuthentication {},
        )
        .await
        .unwrap();
    let completed = record_of(&server, "flow.completed").await;
    assert_eq!(completed.subject.as_deref(), Some(flow.id.as_str()));
    assert_eq!(completed.details["status"], "CANCELED");
    customer
        .remove_device("alice", &enrollment.parse().unwrap())
        .await
        .unwrap();
    customer.remove_user("alice").await.unwrap();

    let records = all_records(&server, "user_id=alice").await;
    let kinds: HashSet<&str> = records.iter().map(|r| r.kind.as_str()).collect();
    for kind in [
        "pairing.completed",
        "authentication.created",
        "authentication.approved",
        "authentication.denied",
        "fraud.reported",
        "authentication.expired",
        "authentication.failed",
        "signature.failed",
        "lockout",
        "device.removed",
        "user.deleted",
    ] {
        assert!(kinds.contains(kind), "no {kind} record: {kinds:?}");
    }
    let approval = records
        .iter()
        .find(|r| r.kind == "authentication.approved")
        .unwrap();
    assert_eq!(
        approval.subject.as_deref(),
        Some(approved.authentication_id.as_str())
    );
    assert_eq!(approval.device_id.as_deref(), Some(enrollment.as_str()));
    assert_eq!(approval.accessing_ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(approval.actor, "user");
    assert_eq!(approval.outcome, "approved");
    assert_eq!(
        approval.application_id.as_deref(),
        Some(server.app.application_id.as_str())
    );
    let fraud = records.iter().find(|r| r.kind == "fraud.reported").unwrap();
    assert_eq!(
        fraud.subject.as_deref(),
        Some(denied.authentication_id.as_str())
    );
    assert!(records.iter().any(|r| r.kind == "authentication.failed"
        && r.subject.as_deref() == Some(failed.authentication_id.as_str())));
    let signature = records
        .iter()
        .find(|r| r.kind == "signature.failed")
        .unwrap();
    assert_eq!(signature.device_id.as_deref(), Some(enrollment.as_str()));
    assert_eq!(signature.outcome, "refused");
    // Application-level records.
    let policy = record_of(&server, "policy.changed").await;
    assert_eq!(policy.actor, "customer");
    // A rejected key names no application: it is in the server-wide log, with the caller's
    // address.
    let rejected: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE kind = 'api_key.rejected' AND client_ip = '127.0.0.1'",
    )
    .fetch_one(server.server.database().pool())
    .await
    .unwrap();
    assert!(rejected >= 1);
    // One record per event, never merged: each request has its own creation record.
    let created: HashSet<&str> = records
        .iter()
        .filter(|r| r.kind == "authentication.created")
        .filter_map(|r| r.subject.as_deref())
        .collect();
    for id in [&approved, &denied, &failed, &expiring] {
        assert!(created.contains(id.authentication_id.as_str()));
    }
    assert!(kinds.contains("flow.completed"));
}

async fn append_only(backend: Backend) {
    let server = TestServer::start_isolated_with(backend, |_| {}).await;
    server
        .customer
        .set_authentication_settings(&AuthenticationSettings::default())
        .await
        .unwrap();
    let db = server.server.database();
    for statement in [
        "UPDATE audit_log SET outcome = 'rewritten'",
        "UPDATE audit_log SET user_id = 'someone-else'",
        "DELETE FROM audit_log",
    ] {
        assert!(
            sqlx::query(statement).execute(db.writer()).await.is_err(),
            "{statement} was allowed"
        );
    }
    let page = server.audit("kind=policy.changed").await;
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].outcome, "success");
}

async fn change_setting(server: &TestServer) {
    server
        .customer
        .set_authentication_settings(&AuthenticationSettings::default())
        .await
        .unwrap();
}

async fn queries_and_export(backend: Backend) {
    let clock = ManualClock::new();
    let server = TestServer::start_with(backend, |c| c.clock = Arc::new(clock.clone())).await;
    for _ in 0..3 {
        change_setting(&server).await;
    }
    clock.advance(Duration::from_secs(10));
    let later = tessera_server::Clock::now_ms(&clock);
    for _ in 0..4 {
        change_setting(&server).await;
    }
    server.user("dora").await;
    pair(&server, "dora").await;
    // Kind and time filters.
    assert_eq!(all_records(&server, "kind=policy.changed").await.len(), 7);
    assert_eq!(
        all_records(&server, "kind=pairing.completed").await.len(),
        1
    );
    assert_eq!(
        all_records(&server, &format!("kind=policy.changed&since_ms={later}"))
            .await
            .len(),
        4
    );
    assert_eq!(
        all_records(&server, &format!("kind=policy.changed&until_ms={later}"))
            .await
            .len(),
        3
    );
    assert_eq!(all_records(&server, "user_id=dora").await.len(), 1);
    assert_eq!(all_records(&server, "user_id=nobody").await.len(), 0);

    // Pages of 3, newest first; records appended between pages never shift them.
    let original: Vec<String> = all_records(&server, "kind=policy.changed")
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    let first = server.audit("kind=policy.changed&limit=3").await;
    assert_eq!(first.records.len(), 3);
    for _ in 0..2 {
        change_setting(&server).await;
    }
    let mut seen: Vec<String> = first.records.iter().map(|r| r.id.clone()).collect();
    let mut cursor = first.next_cursor.clone();
    while let Some(c) = cursor {
        let page = server
            .audit(&format!("kind=policy.changed&limit=3&cursor={c}"))
            .await;
        seen.extend(page.records.iter().map(|r| r.id.clone()));
        cursor = page.next_cursor;
    }
    assert_eq!(seen, original, "every record once, newest first");
    // Newest first means descending time.
    let all = all_records(&server, "kind=policy.changed").await;
    assert!(all.windows(2).all(|w| w[0].at_ms >= w[1].at_ms));

    // A cursor that is not one is refused.
    for bad in ["garbage", "a1.AAAA", "h1.MTox"] {
        let (status, body) = get_json(&server, &format!("/v1/audit?cursor={bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
    // Another application sees none of it.
    let other = server.server.create_application("Other").await.unwrap();
    let response = http()
        .get(format!("{}/v1/audit", server.base_url))
        .bearer_auth(&other.api_key)
        .send()
        .await
        .unwrap();
    let page: AuditPage = response.json().await.unwrap();
    assert!(page.records.is_empty(), "{:?}", page.records);

    // The export: every record as one JSON line, oldest first.
    let response = http()
        .get(format!("{}/v1/audit/export", server.base_url))
        .bearer_auth(&server.app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let text = response.text().await.unwrap();
    let lines: Vec<AuditRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one record per line"))
        .collect();
    let everything = all_records(&server, "").await;
    assert_eq!(lines.len(), everything.len());
    let mut newest_first: Vec<String> = lines.iter().map(|r| r.id.clone()).collect();
    newest_first.reverse();
    assert_eq!(
        newest_first,
        everything.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
    );
}

/// How many rows of every table (but the append-only audit log) mention `needle` in any
/// column, by table.
async fn rows_mentioning(db: &Database, needle: &str) -> Vec<(String, i64)> {
    let pool = db.pool();
    let tables: Vec<String> = match db.engine() {
        tessera_server::store::Engine::Sqlite => sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
        tessera_server::store::Engine::Postgres => sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
    };
    assert!(tables.iter().any(|t| t == "authentications"), "{tables:?}");
    let mut found = Vec::new();
    for table in tables {
        if table == "audit_log" || table == "_sqlx_migrations" {
            continue;
        }
        let columns: Vec<String> = match db.engine() {
            tessera_server::store::Engine::Sqlite => {
                sqlx::query_scalar(&format!("SELECT name FROM pragma_table_info('{table}')"))
                    .fetch_all(pool)
                    .await
                    .unwrap()
            }
            tessera_server::store::Engine::Postgres => sqlx::query_scalar(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1",
            )
            .bind(&table)
            .fetch_all(pool)
            .await
            .unwrap(),
        };
        let condition = columns
            .iter()
            .map(|c| format!("CAST({c} AS TEXT) LIKE $1"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let count: i64 =
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE {condition}"))
                .bind(format!("%{needle}%"))
                .fetch_one(pool)
                .await
                .unwrap();
        if count > 0 {
            found.push((table, count));
        }
    }
    found
}

async fn user_deletion(backend: Backend) {
    let server = TestServer::start_isolated_with(backend, |_| {}).await;
    let customer = &server.customer;
    let user = format!("erin-{:08x}", rand::random::<u32>());
    server.user(&user).await;
    let (device, enrollment) = pair(&server, &user).await;
    let (second, second_enrollment) = pair(&server, &user).await;
    tessera_tests::approval_cycle(customer, &user, &device, &enrollment.parse().unwrap()).await;
    let pending = customer
        .create_authentication(&user, &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    customer
        .set_backup_contacts(
            &user,
            &tessera_protocol::api::BackupContacts {
                phone: Some("+41790000000".into()),
                email: Some("erin@example.com".into()),
            },
        )
        .await
        .unwrap();
    // An unused pairing code and a flow.
    server.pairing_uri(&user).await;
    customer
        .create_flow(&tessera_protocol::flows::CreateFlowRequest::new(
            user.parse().unwrap(),
        ))
        .await
        .unwrap();
    let before = rows_mentioning(server.server.database(), &user).await;
    assert!(
        before.iter().any(|(t, _)| t == "enrollments")
            && before.iter().any(|(t, _)| t == "authentications"),
        "the scan finds the user before: {before:?}"
    );

    customer.remove_user(&user).await.unwrap();

    for needle in [
        user.as_str(),
        enrollment.as_str(),
        second_enrollment.as_str(),
    ] {
        let left = rows_mentioning(server.server.database(), needle).await;
        assert!(left.is_empty(), "{needle} is left in {left:?}");
    }
    // The pending request reads as gone; the devices learn it on their next call.
    let status = customer.authentication(&pending.authentication_id, 0).await;
    assert!(status.is_err(), "{status:?}");
    for (d, e) in [(&device, &enrollment), (&second, &second_enrollment)] {
        let next = d
            .auth
            .wait_for_requests(&e.parse().unwrap(), Duration::ZERO)
            .await;
        assert!(
            matches!(next, Err(tessera_core::CoreError::EnrollmentRemoved)),
            "{next:?}"
        );
    }
    // And an audit record says who deleted whom.
    let deleted = server
        .audit(&format!("kind=user.deleted&user_id={user}"))
        .await;
    assert_eq!(deleted.records.len(), 1);
    assert_eq!(deleted.records[0].actor, "customer");
    assert_eq!(deleted.records[0].details["devices"], 2);
}

async fn read_history(server: &TestServer, query: String) -> AuthenticationHistory {
    let (status, body) = get_json(server, &format!("/v1/users/hank/authentications{query}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

async fn history(backend: Backend) {
    let server = TestServer::start(backend).await;
    let customer = &server.customer;
    server.user("hank").await;
    let (device, enrollment) = pair(&server, "hank").await;
    let enrollment_id = enrollment.parse().unwrap();
    let mut created = Vec::new();
    for i in 0..5 {
        let c = customer
            .create_authentication("hank", &from(&format!("198.51.100.{i}")))
            .await
            .unwrap();
        let request = device
            .pull_request(&enrollment_id, &c.authentication_id)
            .await;
        if i == 3 {
            device.auth.deny(&request, false).await.unwrap();
        } else {
            device.auth.approve(&request, vec![], None).await.unwrap();
        }
        created.push(c.authentication_id.to_string());
    }
    let first = read_history(&server, "?limit=2".into()).await;
    assert_eq!(first.authentications.len(), 2);
    // New requests between pages do not shift the next pages.
    customer
        .create_authentication("hank", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    let mut seen: Vec<_> = first.authentications.clone();
    let mut cursor = first.next_cursor.clone();
    while let Some(c) = cursor {
        let page = read_history(&server, format!("?limit=2&cursor={c}")).await;
        seen.extend(page.authentications);
        cursor = page.next_cursor;
    }
    // Newest first (by creation time, then id), each once; the request created between pages
    // may show up on a later page (it was created in the same second), never twice.
    assert!(
        seen.windows(2)
            .all(|w| (w[0].created_at, &w[0].authentication_id)
                > (w[1].created_at, &w[1].authentication_id)),
        "{seen:?}"
    );
    let ids: HashSet<String> = seen.iter().map(|a| a.authentication_id.clone()).collect();
    assert_eq!(ids.len(), seen.len(), "each once");
    assert!(created.iter().all(|c| ids.contains(c)), "every one of them");
    let denied = seen
        .iter()
        .find(|a| a.authentication_id == created[3])
        .unwrap();
    assert_eq!(denied.status, AuthenticationState::Denied.as_str());
    assert_eq!(denied.answer_type.as_deref(), Some("device"));
    assert_eq!(denied.accessing_ip.as_deref(), Some("198.51.100.3"));
    assert_eq!(denied.device_id, enrollment);
    assert_eq!(denied.kind, "approval");
    assert!(
        seen.iter()
            .filter(|a| a.authentication_id != created[3] && created.contains(&a.authentication_id))
            .all(|a| a.status == "approved")
    );
    // The newest, still pending, is in a fresh read.
    let fresh = read_history(&server, String::new()).await;
    assert_eq!(fresh.authentications.len(), 6);
    let pending: Vec<_> = fresh
        .authentications
        .iter()
        .filter(|a| a.status == "pending")
        .collect();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].answer_type, None);
    // Errors.
    let (status, body) = get_json(&server, "/v1/users/nobody/authentications").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "user_not_found");
    let (status, body) = get_json(&server, "/v1/users/hank/authentications?cursor=zzz").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_request");
}

async fn ciba_completed(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("ivy").await;
    let (device, enrollment) = pair(&server, "ivy").await;
    let rp = server.poll_mode_relying_party("Call Centre").await;
    rp.backchannel(&[("scope", "openid"), ("login_hint", "ivy")])
        .await
        .unwrap();
    let requests = device
        .auth
        .wait_for_requests(&enrollment.parse().unwrap(), Duration::from_secs(10))
        .await
        .unwrap();
    device
        .auth
        .approve(&requests[0], vec!["fpt".into()], None)
        .await
        .unwrap();
    let completed = record_of(&server, "ciba.completed").await;
    assert_eq!(completed.user_id.as_deref(), Some("ivy"));
    assert_eq!(completed.outcome, "approved");
    assert_eq!(
        completed.subject.as_deref(),
        Some(requests[0].request_id.as_str())
    );
    assert_eq!(completed.details["kind"], "ciba");
}
