//! End to end: customer API keys on the calls that check them in their own reads
//! (`domain::api_keys`): the status read (the key checked by the statement that reads the
//! authentication) and a new request (by the read of the application's settings). A key that
//! was found and remembered stops working the moment it is rotated; another application's key
//! reads and asks nothing of this one; and the answers keep their order (401 before 400 before
//! 404) whatever was remembered. Across two instances sharing PostgreSQL, a key one instance
//! remembered stops working there the moment it is rotated, with nothing sent between them.

use tessera_protocol::authentication::AuthenticationKind;
use tessera_protocol::ids::AuthenticationId;
use tessera_server::admin;
use tessera_tests::{Backend, TestServer, ask, on_each_backend};

on_each_backend! {
    a_rotated_key_stops_reading_at_once => rotated_key;
    another_application_s_key_reads_nothing_of_this_one => other_application;
    a_status_read_answers_401_before_400_before_404 => answer_order;
    a_new_request_answers_401_before_400 => create_answer_order;
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
