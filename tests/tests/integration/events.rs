//! Waits driven by events: a long-poll is answered the moment what it waits for happens (on one
//! instance, and across two instances sharing one PostgreSQL database), not at its deadline.

use std::time::{Duration, Instant};

use tessera_examples::customer::CustomerApi;
use tessera_protocol::authentication::{AuthenticationId, AuthenticationKind, AuthenticationState};
use tessera_tests::{Backend, TestDevice, TestServer, ask, on_each_backend};

/// Far below the 30-second deadline the waits ask for: an answer this fast was woken.
const WOKEN: Duration = Duration::from_secs(5);

on_each_backend! {
    a_waiting_relying_party_is_answered_when_the_device_answers => relying_party_woken;
    a_waiting_device_is_answered_when_a_request_is_created => device_woken;
}

/// The device pulls request `id` and approves it.
async fn approve(device: &TestDevice, id: &AuthenticationId) {
    let enrollment = device.auth.enrollments().await.remove(0).enrollment_id;
    let request = device.pull_request(&enrollment, id).await;
    device
        .auth
        .approve(&request, vec![], None)
        .await
        .expect("approve");
}

async fn relying_party_woken(backend: Backend) {
    let server = TestServer::start(backend).await;
    let device = server.paired_user("alice").await;
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .expect("create");
    let waiter = {
        let customer = server.customer.clone();
        let id = created.authentication_id.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let status = customer.authentication(&id, 30).await.expect("status");
            (status, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    approve(&device, &created.authentication_id).await;
    let (status, waited) = waiter.await.expect("waiter");
    assert_eq!(status.state, AuthenticationState::Approved);
    assert!(waited < WOKEN, "the waiter was answered after {waited:?}");
}

async fn device_woken(backend: Backend) {
    let server = TestServer::start(backend).await;
    let device = server.paired_user("bob").await;
    let enrollment = device.auth.enrollments().await.remove(0).enrollment_id;
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let requests = device
            .auth
            .wait_for_requests(&enrollment, Duration::from_secs(30))
            .await
            .expect("pull");
        (requests.len(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server
        .customer
        .create_authentication("bob", &ask(AuthenticationKind::Approval))
        .await
        .expect("create");
    let (count, waited) = waiting.await.expect("device");
    assert_eq!(count, 1);
    assert!(waited < WOKEN, "the device was answered after {waited:?}");
}

/// A device answers through instance A while the relying party waits on instance B: B's waiter
/// is woken through PostgreSQL's LISTEN/NOTIFY, not by its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_through_one_instance_wakes_a_waiter_on_another() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let a = TestServer::start(backend).await;
    let b = a.second_instance().await;
    let b_customer = CustomerApi::new(&format!("http://{}", b.local_addr()), &a.app.api_key);
    let device = a.paired_user("carol").await;
    let created = a
        .customer
        .create_authentication("carol", &ask(AuthenticationKind::Approval))
        .await
        .expect("create");
    let waiter = {
        let id = created.authentication_id.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let status = b_customer.authentication(&id, 30).await.expect("status");
            (status, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    approve(&device, &created.authentication_id).await;
    let (status, waited) = waiter.await.expect("waiter");
    assert_eq!(status.state, AuthenticationState::Approved);
    assert!(
        waited < WOKEN,
        "instance B's waiter was answered after {waited:?}"
    );
    b.shutdown().await;
}

/// The SQLite database holds seeds and keys: only its owner may read it.
#[cfg(unix)]
#[tokio::test]
async fn the_sqlite_database_file_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start(Backend::Sqlite).await;
    let path = server
        .config()
        .database_url
        .trim_start_matches("sqlite://")
        .to_string();
    let mode = std::fs::metadata(&path)
        .expect("database file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{path} has mode {:o}", mode & 0o777);
}

/// The published key set is signed once, not afresh for every caller: the same signed text
/// comes back, and it still verifies under the published keys.
#[tokio::test]
async fn the_published_key_set_is_signed_once() {
    let server = TestServer::start(Backend::Sqlite).await;
    let fetch = || async {
        reqwest::get(format!("{}/v1/server-keys", server.base_url))
            .await
            .expect("get")
            .json::<tessera_protocol::api::ServerKeysResponse>()
            .await
            .expect("json")
    };
    let first = fetch().await;
    let second = fetch().await;
    assert_eq!(first.signed_key_set, second.signed_key_set);
    let verified =
        tessera_protocol::envelope::verify_with_set::<tessera_protocol::pairing::ServerKeySet>(
            &second.signed_key_set,
            tessera_protocol::envelope::MessageType::ServerKeySet,
            &second.keys,
        )
        .expect("verifies");
    assert_eq!(&verified.payload.issuer, server.server.public_url());
}
