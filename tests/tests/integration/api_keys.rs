//! End to end: customer API keys on the calls that check them in their own reads
//! (`domain::api_keys`): the status read (the key checked by the statement that reads the
//! authentication) and a new request (by the read of the application's settings). A key that
//! was found and remembered stops working the moment it is rotated; another application's key
//! reads and asks nothing of this one; and the answers keep their order (401 before 400 before
//! 404) whatever was remembered. The same holds for the flow calls (create, read, act: the key
//! checked by the read of the flow, or of the application's passcode options) and the QR
//! session's status read. Across two instances sharing PostgreSQL, a key one instance
//! remembered stops working there the moment it is rotated, with nothing sent between them. A
//! rotation racing calls in flight leaves each answered as before it or as after it, stores
//! exactly what was accepted, and refuses every call sent once it returned.

use tessera_protocol::authentication::AuthenticationKind;
use tessera_protocol::ids::AuthenticationId;
use tessera_server::admin;
use tessera_tests::{Backend, TestServer, ask, on_each_backend};

on_each_backend! {
    a_rotated_key_stops_reading_at_once => rotated_key;
    another_application_s_key_reads_nothing_of_this_one => other_application;
    a_status_read_answers_401_before_400_before_404 => answer_order;
    a_new_request_answers_401_before_400 => create_answer_order;
    flow_calls_stop_with_a_rotated_key_and_read_nothing_of_another_application => flow_keys;
    flow_calls_answer_401_before_400_before_404 => flow_answer_order;
    a_qr_status_read_stops_with_a_rotated_key_and_keeps_its_answer_order => qr_status_keys;
    a_qr_session_created_under_a_remembered_key_checks_the_key_the_name_and_the_quota => qr_create_keys;
    a_key_rotated_while_calls_are_in_flight_refuses_every_call_after_and_stores_only_what_it_accepted => rotation_racing_calls;
    a_qr_session_for_a_named_user_under_a_remembered_key_is_stored_only_for_a_user_of_the_application => qr_create_for_user;
}

/// Sends `request` with `key` (none without): the status and the error code, if any.
async fn sent(mut request: reqwest::RequestBuilder, key: Option<&str>) -> (u16, Option<String>) {
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("sent");
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("json");
    let code = body["error"]["code"].as_str().map(str::to_string);
    (status, code)
}

/// `POST /v1/users/{user}/authentications` on the server at `base` with `body` and `key`.
async fn create(base: &str, user: &str, body: &str, key: Option<&str>) -> (u16, Option<String>) {
    let request = reqwest::Client::new()
        .post(format!("{base}/v1/users/{user}/authentications"))
        .header("content-type", "application/json")
        .body(body.to_string());
    sent(request, key).await
}

const APPROVAL: &str = r#"{"kind":"approval"}"#;

/// `GET /v1/authentications/{id}{query}` on the server at `base` with `key`.
async fn status_read(
    base: &str,
    id: &str,
    query: &str,
    key: Option<&str>,
) -> (u16, Option<String>) {
    let request = reqwest::Client::new().get(format!("{base}/v1/authentications/{id}{query}"));
    sent(request, key).await
}

/// A server whose users may have many requests pending (these tests ask often).
async fn start(backend: Backend) -> TestServer {
    TestServer::start_with(backend, |c| {
        c.max_pending_authentications_per_user = 100;
        c.max_recent_authentications_per_user = 1000;
    })
    .await
}

/// A pending request for a paired user of `server`'s application.
async fn pending_request(server: &TestServer) -> AuthenticationId {
    let _device = server.paired_user("alice").await;
    server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .expect("create")
        .authentication_id
}

async fn rotated_key(backend: Backend) {
    let server = start(backend).await;
    let id = pending_request(&server).await;
    let app = server.app.application_id.clone();
    let rotate = || async {
        admin::rotate_api_key(server.server.database(), &app)
            .await
            .expect("rotate")
            .api_key
    };
    let unauthorized = (401, Some("unauthorized".to_string()));
    // The first key, remembered by a read and a request; rotated, its next status read (the
    // first call after the rotation, so under what was remembered) is refused.
    let first = server.app.api_key.clone();
    for _ in 0..2 {
        assert_eq!(
            status_read(&server.base_url, id.as_str(), "", Some(&first)).await,
            (200, None)
        );
        assert_eq!(
            create(&server.base_url, "alice", APPROVAL, Some(&first)).await,
            (201, None)
        );
    }
    let second = rotate().await;
    assert_eq!(
        status_read(&server.base_url, id.as_str(), "", Some(&first)).await,
        unauthorized,
        "the old key still read after its rotation"
    );
    // The second key, remembered the same way; rotated, its next request is refused.
    for _ in 0..2 {
        assert_eq!(
            create(&server.base_url, "alice", APPROVAL, Some(&second)).await,
            (201, None)
        );
        assert_eq!(
            status_read(&server.base_url, id.as_str(), "", Some(&second)).await,
            (200, None)
        );
    }
    let third = rotate().await;
    assert_eq!(
        create(&server.base_url, "alice", APPROVAL, Some(&second)).await,
        unauthorized,
        "the old key still asked after its rotation"
    );
    // Refused again the long way, and the key in force works.
    for old in [&first, &second] {
        assert_eq!(
            status_read(&server.base_url, id.as_str(), "", Some(old)).await,
            unauthorized
        );
        assert_eq!(
            create(&server.base_url, "alice", APPROVAL, Some(old)).await,
            unauthorized
        );
    }
    for _ in 0..2 {
        assert_eq!(
            status_read(&server.base_url, id.as_str(), "", Some(&third)).await,
            (200, None)
        );
        assert_eq!(
            create(&server.base_url, "alice", APPROVAL, Some(&third)).await,
            (201, None)
        );
    }
}

async fn other_application(backend: Backend) {
    let server = start(backend).await;
    let id = pending_request(&server).await;
    let other = admin::create_application(server.server.database(), "Other")
        .await
        .expect("application");
    // Its key is good (a request of its own that does not exist: 404), and remembered; this
    // application's request stays unknown to it, read once or many times.
    let missing = AuthenticationId::generate();
    for _ in 0..2 {
        assert_eq!(
            status_read(&server.base_url, missing.as_str(), "", Some(&other.api_key)).await,
            (404, Some("authentication_not_found".into()))
        );
        assert_eq!(
            status_read(&server.base_url, id.as_str(), "", Some(&other.api_key)).await,
            (404, Some("authentication_not_found".into()))
        );
    }
    // Nor can it ask this application's user.
    for _ in 0..2 {
        assert_eq!(
            create(&server.base_url, "alice", APPROVAL, Some(&other.api_key)).await,
            (404, Some("user_not_found".into()))
        );
    }
    assert_eq!(
        status_read(&server.base_url, id.as_str(), "", Some(&server.app.api_key)).await,
        (200, None)
    );
}

async fn answer_order(backend: Backend) {
    let server = start(backend).await;
    let id = pending_request(&server).await;
    let key = server.app.api_key.clone();
    let missing = AuthenticationId::generate();
    // Before and after the key is remembered.
    for _ in 0..2 {
        let unauthorized = (401, Some("unauthorized".to_string()));
        let invalid = (400, Some("invalid_request".to_string()));
        let not_found = (404, Some("authentication_not_found".to_string()));
        assert_eq!(
            status_read(&server.base_url, id.as_str(), "?wait=soon", None).await,
            unauthorized
        );
        assert_eq!(
            status_read(
                &server.base_url,
                id.as_str(),
                "?wait=soon",
                Some("tsk_wrong")
            )
            .await,
            unauthorized
        );
        assert_eq!(
            status_read(
                &server.base_url,
                missing.as_str(),
                "?wait=soon",
                Some("tsk_wrong")
            )
            .await,
            unauthorized
        );
        assert_eq!(
            status_read(&server.base_url, missing.as_str(), "?wait=soon", Some(&key)).await,
            invalid
        );
        assert_eq!(
            status_read(&server.base_url, "not-an-id", "", Some(&key)).await,
            not_found
        );
        assert_eq!(
            status_read(&server.base_url, missing.as_str(), "", Some(&key)).await,
            not_found
        );
        assert_eq!(
            status_read(&server.base_url, id.as_str(), "?wait=0", Some(&key)).await,
            (200, None)
        );
    }
}

async fn create_answer_order(backend: Backend) {
    let server = start(backend).await;
    let _device = server.paired_user("alice").await;
    let key = server.app.api_key.clone();
    // Before and after the key is remembered (a good request remembers it).
    for round in 0..2 {
        let unauthorized = (401, Some("unauthorized".to_string()));
        for bad_key in [None, Some("tsk_wrong")] {
            assert_eq!(
                create(&server.base_url, "alice", "{not json", bad_key).await,
                unauthorized
            );
            assert_eq!(
                create(&server.base_url, "%20alice", APPROVAL, bad_key).await,
                unauthorized
            );
            assert_eq!(
                create(&server.base_url, "alice", APPROVAL, bad_key).await,
                unauthorized
            );
        }
        assert_eq!(
            create(&server.base_url, "alice", "{not json", Some(&key))
                .await
                .0,
            400
        );
        assert_eq!(
            create(&server.base_url, "%20alice", APPROVAL, Some(&key))
                .await
                .0,
            400
        );
        assert_eq!(
            create(&server.base_url, "nobody", APPROVAL, Some(&key)).await,
            (404, Some("user_not_found".into())),
            "round {round}"
        );
        assert_eq!(
            create(&server.base_url, "alice", APPROVAL, Some(&key)).await,
            (201, None)
        );
    }
}

/// Two instances on one PostgreSQL database: instance B remembers the key (its status reads and
/// requests succeed), the key is rotated in the database (as `tessera-server admin rotate-api-key`
/// does, with no instance told), and B's very next status read and next request are refused,
/// while the new key works on B at once. Each statement checks the key itself: no instance
/// relies on hearing of a rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_rotated_elsewhere_stops_working_on_an_instance_that_remembered_it() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let a = start(backend).await;
    let b = a.second_instance().await;
    let b_url = format!("http://{}", b.local_addr());
    let id = pending_request(&a).await;
    let app = a.app.application_id.clone();
    let unauthorized = (401, Some("unauthorized".to_string()));
    let old = a.app.api_key.clone();
    for _ in 0..2 {
        assert_eq!(
            status_read(&b_url, id.as_str(), "", Some(&old)).await,
            (200, None)
        );
        assert_eq!(
            create(&b_url, "alice", APPROVAL, Some(&old)).await,
            (201, None)
        );
    }
    let new = admin::rotate_api_key(a.server.database(), &app)
        .await
        .expect("rotate")
        .api_key;
    assert_eq!(
        status_read(&b_url, id.as_str(), "", Some(&old)).await,
        unauthorized,
        "instance B still read with the rotated key"
    );
    // The new key, remembered by B the same way; rotated again, B's next request (the first
    // call after the rotation) is refused.
    for base in [&a.base_url, &b_url] {
        for _ in 0..2 {
            assert_eq!(
                status_read(base, id.as_str(), "", Some(&new)).await,
                (200, None)
            );
            assert_eq!(
                create(base, "alice", APPROVAL, Some(&new)).await,
                (201, None)
            );
        }
    }
    let newest = admin::rotate_api_key(a.server.database(), &app)
        .await
        .expect("rotate")
        .api_key;
    assert_eq!(
        create(&b_url, "alice", APPROVAL, Some(&new)).await,
        unauthorized,
        "instance B still asked with the rotated key"
    );
    for base in [&a.base_url, &b_url] {
        for old in [&old, &new] {
            assert_eq!(
                status_read(base, id.as_str(), "", Some(old)).await,
                unauthorized
            );
            assert_eq!(
                create(base, "alice", APPROVAL, Some(old)).await,
                unauthorized
            );
        }
        assert_eq!(
            status_read(base, id.as_str(), "", Some(&newest)).await,
            (200, None)
        );
    }
    b.shutdown().await;
}

/// `POST /v1/flows` on the server at `base` with `body` and `key`: the status, the error code
/// and (created) the flow's id.
async fn create_flow(base: &str, body: &str, key: Option<&str>) -> (u16, Option<String>) {
    let request = reqwest::Client::new()
        .post(format!("{base}/v1/flows"))
        .header("content-type", "application/json")
        .body(body.to_string());
    sent(request, key).await
}

/// A new flow for alice, created with `key`: its id.
async fn new_flow(base: &str, key: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/flows"))
        .bearer_auth(key)
        .json(&serde_json::json!({ "user_id": "alice" }))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 201);
    let body: serde_json::Value = response.json().await.expect("json");
    body["id"].as_str().expect("flow id").to_string()
}

/// `GET /v1/flows/{id}` with `key`.
async fn read_flow(base: &str, id: &str, key: Option<&str>) -> (u16, Option<String>) {
    sent(
        reqwest::Client::new().get(format!("{base}/v1/flows/{id}")),
        key,
    )
    .await
}

/// `POST /v1/flows/{id}` with the action `body` and `key`.
async fn act(base: &str, id: &str, body: &str, key: Option<&str>) -> (u16, Option<String>) {
    let request = reqwest::Client::new()
        .post(format!("{base}/v1/flows/{id}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    sent(request, key).await
}

const ALICE: &str = r#"{"user_id":"alice"}"#;
const POLL: &str = r#"{"action":"poll"}"#;

async fn flow_keys(backend: Backend) {
    let server = start(backend).await;
    let _device = server.paired_user("alice").await;
    let base = server.base_url.clone();
    let app = server.app.application_id.clone();
    let unauthorized = (401, Some("unauthorized".to_string()));
    let mut first = server.app.api_key.clone();
    // Remembered by a create, a read and an action; rotated, each of the three is refused on
    // its first call after the rotation.
    for call in 0..3 {
        let id = new_flow(&base, &first).await;
        for _ in 0..2 {
            assert_eq!(read_flow(&base, &id, Some(&first)).await, (200, None));
            assert_eq!(act(&base, &id, POLL, Some(&first)).await, (200, None));
        }
        let rotated = admin::rotate_api_key(server.server.database(), &app)
            .await
            .expect("rotate")
            .api_key;
        let refused = match call {
            0 => read_flow(&base, &id, Some(&first)).await,
            1 => act(&base, &id, POLL, Some(&first)).await,
            _ => create_flow(&base, ALICE, Some(&first)).await,
        };
        assert_eq!(
            refused, unauthorized,
            "call {call} still worked after its key's rotation"
        );
        // The long way refuses the old key too; the new one works at once.
        assert_eq!(read_flow(&base, &id, Some(&first)).await, unauthorized);
        assert_eq!(act(&base, &id, POLL, Some(&first)).await, unauthorized);
        assert_eq!(create_flow(&base, ALICE, Some(&first)).await, unauthorized);
        assert_eq!(read_flow(&base, &id, Some(&rotated)).await, (200, None));
        assert_eq!(act(&base, &id, POLL, Some(&rotated)).await, (200, None));
        first.clone_from(&rotated);
    }
    // Another application's key, good and remembered (its own flows work), reads and moves
    // nothing of this one's flow, and cannot start one for this application's user.
    let mine = new_flow(&base, &first).await;
    let other = admin::create_application(server.server.database(), "Other")
        .await
        .expect("application");
    let not_found = (404, Some("flow_not_found".to_string()));
    for _ in 0..2 {
        assert_eq!(
            create_flow(&base, ALICE, Some(&other.api_key)).await,
            (404, Some("user_not_found".into()))
        );
        assert_eq!(
            read_flow(&base, &mine, Some(&other.api_key)).await,
            not_found
        );
        assert_eq!(
            act(
                &base,
                &mine,
                r#"{"action":"cancelAuthentication"}"#,
                Some(&other.api_key)
            )
            .await,
            not_found
        );
    }
    // The flow was not moved by the other application's cancellation.
    let response = reqwest::Client::new()
        .get(format!("{base}/v1/flows/{mine}"))
        .bearer_auth(&first)
        .send()
        .await
        .expect("sent");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_ne!(body["status"], "MFA_FAILED", "{body}");
    assert_ne!(body["status"], "AUTHENTICATION_CANCELED", "{body}");
}

async fn flow_answer_order(backend: Backend) {
    let server = start(backend).await;
    let _device = server.paired_user("alice").await;
    let base = server.base_url.clone();
    let key = server.app.api_key.clone();
    let id = new_flow(&base, &key).await;
    let missing = tessera_protocol::ids::FlowId::generate().to_string();
    let missing = missing.as_str();
    let unauthorized = (401, Some("unauthorized".to_string()));
    let not_found = (404, Some("flow_not_found".to_string()));
    // Before and after the key is remembered.
    for round in 0..2 {
        for bad_key in [None, Some("tsk_wrong")] {
            assert_eq!(create_flow(&base, "{not json", bad_key).await, unauthorized);
            assert_eq!(create_flow(&base, ALICE, bad_key).await, unauthorized);
            assert_eq!(read_flow(&base, &id, bad_key).await, unauthorized);
            assert_eq!(read_flow(&base, missing, bad_key).await, unauthorized);
            assert_eq!(act(&base, &id, "{not json", bad_key).await, unauthorized);
            assert_eq!(act(&base, missing, POLL, bad_key).await, unauthorized);
            assert_eq!(act(&base, &id, POLL, bad_key).await, unauthorized);
        }
        assert_eq!(create_flow(&base, "{not json", Some(&key)).await.0, 400);
        assert_eq!(act(&base, &id, "{not json", Some(&key)).await.0, 400);
        assert_eq!(act(&base, missing, "{not json", Some(&key)).await.0, 400);
        assert_eq!(
            create_flow(&base, r#"{"user_id":"nobody"}"#, Some(&key)).await,
            (404, Some("user_not_found".into())),
            "round {round}"
        );
        assert_eq!(read_flow(&base, missing, Some(&key)).await, not_found);
        assert_eq!(read_flow(&base, "not-a-flow", Some(&key)).await, not_found);
        assert_eq!(act(&base, missing, POLL, Some(&key)).await, not_found);
        assert_eq!(read_flow(&base, &id, Some(&key)).await, (200, None));
        assert_eq!(act(&base, &id, POLL, Some(&key)).await, (200, None));
        assert_eq!(create_flow(&base, ALICE, Some(&key)).await, (201, None));
    }
}

/// `GET /v1/qr-sessions/{id}{query}` with `key`.
async fn qr_status(base: &str, id: &str, query: &str, key: Option<&str>) -> (u16, Option<String>) {
    sent(
        reqwest::Client::new().get(format!("{base}/v1/qr-sessions/{id}{query}")),
        key,
    )
    .await
}

/// `GET /v1/qr-sessions/{id}/qr.png` with `key`: the status, and the error code if any (an
/// image has none).
async fn qr_png(base: &str, id: &str, key: Option<&str>) -> (u16, Option<String>) {
    let mut request = reqwest::Client::new().get(format!("{base}/v1/qr-sessions/{id}/qr.png"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("sent");
    let status = response.status().as_u16();
    if status == 200 {
        let body = response.bytes().await.expect("image");
        assert!(body.starts_with(b"\x89PNG"), "a PNG image");
        return (200, None);
    }
    let body: serde_json::Value = response.json().await.expect("json");
    (status, body["error"]["code"].as_str().map(str::to_string))
}

/// The QR session's status read and its code's image each check the API key in the session's
/// own read once the key is remembered.
async fn qr_status_keys(backend: Backend) {
    let server = start(backend).await;
    let base = server.base_url.clone();
    let app = server.app.application_id.clone();
    let session = server
        .customer
        .create_qr_session(&Default::default())
        .await
        .expect("session")
        .session_id
        .to_string();
    let missing = tessera_protocol::ids::QrSessionId::generate().to_string();
    let missing = missing.as_str();
    let key = server.app.api_key.clone();
    let unauthorized = (401, Some("unauthorized".to_string()));
    let not_found = (404, Some("qr_session_not_found".to_string()));
    for _ in 0..2 {
        for bad_key in [None, Some("tsk_wrong")] {
            assert_eq!(
                qr_status(&base, &session, "?wait=soon", bad_key).await,
                unauthorized
            );
            assert_eq!(qr_status(&base, missing, "", bad_key).await, unauthorized);
            assert_eq!(qr_status(&base, &session, "", bad_key).await, unauthorized);
            assert_eq!(qr_png(&base, &session, bad_key).await, unauthorized);
            assert_eq!(qr_png(&base, missing, bad_key).await, unauthorized);
        }
        assert_eq!(
            qr_status(&base, &session, "?wait=soon", Some(&key)).await.0,
            400
        );
        assert_eq!(qr_status(&base, missing, "", Some(&key)).await, not_found);
        assert_eq!(
            qr_status(&base, &session, "", Some(&key)).await,
            (200, None)
        );
        assert_eq!(qr_png(&base, missing, Some(&key)).await, not_found);
        assert_eq!(qr_png(&base, &session, Some(&key)).await, (200, None));
    }
    let other = admin::create_application(server.server.database(), "Other")
        .await
        .expect("application");
    for _ in 0..2 {
        assert_eq!(
            qr_status(&base, missing, "", Some(&other.api_key)).await,
            not_found
        );
        assert_eq!(
            qr_status(&base, &session, "", Some(&other.api_key)).await,
            not_found
        );
        assert_eq!(
            qr_png(&base, &session, Some(&other.api_key)).await,
            not_found
        );
    }
    let rotated = admin::rotate_api_key(server.server.database(), &app)
        .await
        .expect("rotate")
        .api_key;
    assert_eq!(
        qr_png(&base, &session, Some(&key)).await,
        unauthorized,
        "the old key still drew the code after its rotation (its first call since, under the remembered key)"
    );
    assert_eq!(
        qr_status(&base, &session, "", Some(&key)).await,
        unauthorized,
        "the old key still read after its rotation"
    );
    assert_eq!(
        qr_status(&base, &session, "", Some(&rotated)).await,
        (200, None)
    );
    assert_eq!(qr_png(&base, &session, Some(&rotated)).await, (200, None));
}

/// `POST /v1/qr-sessions` with `body` and `key`: the status, the error code if any, and the new
/// session's id.
async fn qr_create(
    base: &str,
    body: &str,
    key: Option<&str>,
) -> (u16, Option<String>, Option<String>) {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/v1/qr-sessions"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("sent");
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("json");
    (
        status,
        body["error"]["code"].as_str().map(str::to_string),
        body["session_id"].as_str().map(str::to_string),
    )
}

/// The application name a stored session's context shows.
async fn shown_name(server: &TestServer, session: &str) -> String {
    let context: String = sqlx::query_scalar("SELECT context FROM qr_sessions WHERE id = $1")
        .bind(session)
        .fetch_one(server.server.database().pool())
        .await
        .expect("context");
    let context: serde_json::Value = serde_json::from_str(&context).expect("JSON");
    context["application_name"]
        .as_str()
        .expect("a name")
        .to_string()
}

/// Sets the application's own quota of open QR sessions (`None`: the server's default).
async fn set_qr_quota(server: &TestServer, quota: Option<i64>) {
    sqlx::query("UPDATE applications SET max_open_qr_sessions = $2 WHERE id = $1")
        .bind(server.app.application_id.as_str())
        .bind(quota)
        .execute(server.server.database().pool())
        .await
        .expect("quota");
}

/// A QR session created under a remembered key is stored only while the application still has
/// that key, under the name it has now; a bad body still answers 401 before 400; a quota
/// reached answers as it would the long way.
async fn qr_create_keys(backend: Backend) {
    let server = start(backend).await;
    let base = server.base_url.clone();
    let app = server.app.application_id.clone();
    let key = server.app.api_key.clone();
    let unauthorized = (401, Some("unauthorized".to_string()));
    let bad_body = r#"{"expires_in": 5}"#;
    for _ in 0..2 {
        for bad_key in [None, Some("tsk_wrong")] {
            let (status, code, _) = qr_create(&base, "{}", bad_key).await;
            assert_eq!((status, code), unauthorized.clone());
            let (status, code, _) = qr_create(&base, bad_body, bad_key).await;
            assert_eq!((status, code), unauthorized.clone(), "401 before 400");
            let (status, code, _) = qr_create(&base, "not JSON", bad_key).await;
            assert_eq!((status, code), unauthorized.clone(), "401 before 400");
        }
        assert_eq!(qr_create(&base, bad_body, Some(&key)).await.0, 400);
        assert_eq!(qr_create(&base, "not JSON", Some(&key)).await.0, 400);
        let (status, _, session) = qr_create(&base, "{}", Some(&key)).await;
        assert_eq!(status, 201);
        let name = shown_name(&server, &session.expect("a session")).await;
        assert_eq!(name, server.app.name);
    }
    // Renamed: the next session, under the key remembered with the old name, shows the new.
    sqlx::query("UPDATE applications SET name = 'Renamed Shop' WHERE id = $1")
        .bind(app.as_str())
        .execute(server.server.database().pool())
        .await
        .expect("renamed");
    for _ in 0..2 {
        let (status, _, session) = qr_create(&base, "{}", Some(&key)).await;
        assert_eq!(status, 201);
        assert_eq!(
            shown_name(&server, &session.expect("a session")).await,
            "Renamed Shop",
            "a session shows the application's name as it is now"
        );
    }
    // The quota reached: the same refusal as the long way, also under the remembered key.
    set_qr_quota(&server, Some(4)).await;
    for _ in 0..2 {
        let (status, code, _) = qr_create(&base, "{}", Some(&key)).await;
        assert_eq!(
            (status, code.as_deref()),
            (429, Some("quota_exceeded")),
            "four sessions are open"
        );
    }
    set_qr_quota(&server, None).await;
    assert_eq!(qr_create(&base, "{}", Some(&key)).await.0, 201);
    // Rotated: the old key, remembered, creates nothing.
    let rotated = admin::rotate_api_key(server.server.database(), &app)
        .await
        .expect("rotate")
        .api_key;
    let (status, code, _) = qr_create(&base, "{}", Some(&key)).await;
    assert_eq!(
        (status, code),
        unauthorized,
        "the old key still created a session after its rotation"
    );
    let open: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM qr_sessions WHERE application_id = $1")
            .bind(app.as_str())
            .fetch_one(server.server.database().pool())
            .await
            .expect("counted");
    assert_eq!(open, 5, "nothing was stored under the old key");
    assert_eq!(qr_create(&base, "{}", Some(&rotated)).await.0, 201);
}

/// A QR session for a named user, created under the remembered key: stored for a user of the
/// application (named in the session), refused as the long way refuses for one it does not
/// have (404 `user_not_found`, nothing stored), also for a user removed since a session was made
/// for them and for another application's user; and 401 before 404 with a wrong key.
async fn qr_create_for_user(backend: Backend) {
    let server = start(backend).await;
    let base = server.base_url.clone();
    let app = server.app.application_id.clone();
    let key = server.app.api_key.clone();
    server
        .customer
        .create_user("alice", Some("Alice"))
        .await
        .expect("alice");
    let other = admin::create_application(server.server.database(), "Other Shop")
        .await
        .expect("application");
    let olga = reqwest::Client::new()
        .post(format!("{base}/v1/users"))
        .bearer_auth(&other.api_key)
        .json(&serde_json::json!({ "user_id": "olga" }))
        .send()
        .await
        .expect("sent");
    assert_eq!(olga.status().as_u16(), 201, "another application's user");
    let for_user = |user: &str| format!(r#"{{"user_id":"{user}"}}"#);
    let not_found = (404, Some("user_not_found".to_string()));
    let sessions_for = |user: &'static str| {
        let (db, app) = (server.server.database().pool(), app.clone());
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM qr_sessions WHERE application_id = $1 \
                 AND restricted_user_id = $2",
            )
            .bind(app.as_str())
            .bind(user)
            .fetch_one(db)
            .await
            .expect("counted")
        }
    };
    // The key remembered by a first session.
    assert_eq!(qr_create(&base, "{}", Some(&key)).await.0, 201);
    for round in 1..=2 {
        let (status, _, _) = qr_create(&base, &for_user("alice"), Some(&key)).await;
        assert_eq!(status, 201);
        assert_eq!(sessions_for("alice").await, round);
        for unknown in ["nobody", "olga"] {
            let (status, code, _) = qr_create(&base, &for_user(unknown), Some(&key)).await;
            assert_eq!((status, code), not_found.clone(), "{unknown}");
        }
        let (status, code, _) = qr_create(&base, &for_user("alice"), Some("tsk_wrong")).await;
        assert_eq!((status, code.as_deref()), (401, Some("unauthorized")));
    }
    assert_eq!(sessions_for("nobody").await, 0);
    assert_eq!(sessions_for("olga").await, 0);
    // Removed: no new session for her, under the remembered key or the long way.
    server.customer.remove_user("alice").await.expect("removed");
    for _ in 0..2 {
        let (status, code, _) = qr_create(&base, &for_user("alice"), Some(&key)).await;
        assert_eq!((status, code), not_found.clone(), "a removed user");
    }
    assert_eq!(sessions_for("alice").await, 0, "her sessions went with her");
}

/// What a call racing a rotation asked for ([`rotation_racing_calls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    Request,
    Flow,
    QrSession,
}

impl Made {
    /// Asks for one with `key` on the server at `base`: the status and the error code.
    async fn asked(self, base: &str, key: &str) -> (u16, Option<String>) {
        match self {
            Made::Request => create(base, "alice", APPROVAL, Some(key)).await,
            Made::Flow => create_flow(base, r#"{"user_id":"alice"}"#, Some(key)).await,
            Made::QrSession => {
                let (status, code, _) = qr_create(base, "{}", Some(key)).await;
                (status, code)
            }
        }
    }

    /// The table what it makes is stored in.
    fn table(self) -> &'static str {
        match self {
            Made::Request => "authentications",
            Made::Flow => "flows",
            Made::QrSession => "qr_sessions",
        }
    }
}

/// A key rotated while calls made with it are in flight, for new requests, flows and QR
/// sessions in turn (each kind alone, so its own check of the remembered key meets the
/// rotation first). Each call is answered as before the rotation (201, and what it made is
/// stored) or as after it (401, and nothing stored), never anything else; every call sent once
/// the rotation has returned is refused; what is stored is exactly what was answered 201; and
/// the new key works at once.
async fn rotation_racing_calls(backend: Backend) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let server = start(backend).await;
    let _device = server.paired_user("alice").await;
    let base = server.base_url.clone();
    let app = server.app.application_id.clone();
    let unauthorized = (401, Some("unauthorized".to_string()));
    let mut key = server.app.api_key.clone();
    for made in [Made::Request, Made::Flow, Made::QrSession] {
        let rotated = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let (base, key) = (base.clone(), key.clone());
                let (rotated, accepted) = (rotated.clone(), accepted.clone());
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    let mut sent_after = 0;
                    // Until three calls were sent after the rotation returned (or a bound).
                    while sent_after < 3 && answers.len() < 400 {
                        let after = rotated.load(Ordering::SeqCst);
                        let answer = made.asked(&base, &key).await;
                        if answer.0 == 201 {
                            accepted.fetch_add(1, Ordering::SeqCst);
                        }
                        sent_after += usize::from(after);
                        answers.push((after, answer));
                    }
                    answers
                })
            })
            .collect();
        // Rotated once the calls are under way: the key is remembered by then.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while accepted.load(Ordering::SeqCst) < 12 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{made:?}: the calls were not accepted before the rotation"
            );
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let new = admin::rotate_api_key(server.server.database(), &app)
            .await
            .expect("rotate")
            .api_key;
        rotated.store(true, Ordering::SeqCst);
        let mut answers = Vec::new();
        for caller in callers {
            answers.extend(caller.await.expect("a caller"));
        }
        for (after, answer) in &answers {
            assert!(
                *answer == (201, None) || *answer == unauthorized,
                "{made:?}: answered {answer:?} as its key was rotated"
            );
            if *after {
                assert_eq!(
                    *answer, unauthorized,
                    "{made:?} sent after the rotation returned"
                );
            }
        }
        let sent_after = answers.iter().filter(|(after, _)| *after).count();
        assert_eq!(
            sent_after, 12,
            "{made:?}: every caller called after the rotation"
        );
        let accepted = answers.iter().filter(|(_, answer)| answer.0 == 201).count();
        let stored: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM {} WHERE application_id = $1",
            made.table()
        ))
        .bind(app.as_str())
        .fetch_one(server.server.database().pool())
        .await
        .expect("count");
        assert_eq!(
            usize::try_from(stored).expect("a count"),
            accepted,
            "{made:?}: stored exactly what was accepted"
        );
        assert_eq!(
            made.asked(&base, &new).await,
            (201, None),
            "{made:?}: the new key at once"
        );
        key = new;
    }
}
