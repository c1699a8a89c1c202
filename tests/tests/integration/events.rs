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

/// The relying party waits on another instance (`b_customer`) for a request that `a` makes for
/// `user`, whose `device` then approves it through `a`: how long the waiter waited for its
/// answer, which it checks is the approval.
async fn answered_across(
    a: &TestServer,
    b_customer: &CustomerApi,
    device: &TestDevice,
    user: &str,
) -> Duration {
    let created = a
        .customer
        .create_authentication(user, &ask(AuthenticationKind::Approval))
        .await
        .expect("create");
    let waiter = {
        let id = created.authentication_id.clone();
        let b_customer = b_customer.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let status = b_customer.authentication(&id, 30).await.expect("status");
            (status, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    approve(device, &created.authentication_id).await;
    let (status, waited) = waiter.await.expect("waiter");
    assert_eq!(status.state, AuthenticationState::Approved);
    waited
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
    let waited = answered_across(&a, &b_customer, &device, "carol").await;
    assert!(
        waited < WOKEN,
        "instance B's waiter was answered after {waited:?}"
    );
    b.shutdown().await;
}

/// The value of the counter `name` in the `/metrics` exposition served at `base` (0 when it is
/// not there).
async fn counter(base: &str, name: &str) -> u64 {
    let metrics = tessera_tests::scrape_metrics(base).await;
    tessera_tests::metric_sample(&metrics, &format!("{name}_total")).map_or(0, |value| value as u64)
}

/// The backend of the connection named `name` that listens for change notifications.
async fn listening_pid(admin: &mut sqlx::PgConnection, name: &str) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(name)
    .fetch_optional(admin)
    .await
    .expect("pg_stat_activity")
}

/// A device answers through instance A while a relying party waits on instance B (as in
/// [`an_answer_through_one_instance_wakes_a_waiter_on_another`]), once before and once after
/// B's listening connection is cut: A counts what it sent and B what it heard, B counts the cut,
/// listens again by itself, and its waiter is woken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn change_notifications_are_counted_and_a_cut_listener_listens_again() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let a = TestServer::start(backend).await;
    // B's connections carry a name of their own, so the test finds B's listener among every
    // test's instances on the shared database.
    let name = format!("tessera_events_b_{:08x}", rand::random::<u32>());
    let url = &a.config().database_url;
    let separator = if url.contains('?') { '&' } else { '?' };
    let b = tessera_server::Server::start(tessera_server::ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        public_url: Some(a.server.public_url().clone()),
        database_url: format!("{url}{separator}application_name={name}"),
        ..a.config().clone()
    })
    .await
    .expect("instance B");
    let a_base = a.base_url.clone();
    let b_base = format!("http://{}", b.local_addr());
    let b_customer = CustomerApi::new(&b_base, &a.app.api_key);
    let device = a.paired_user("dana").await;
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .expect("admin connection");
    let heard_before = counter(&b_base, "tessera_change_notifications_heard").await;
    let sent_before = counter(&a_base, "tessera_change_notifications_sent").await;

    for round in ["before the cut", "after the cut"] {
        if round == "after the cut" {
            let pid = listening_pid(&mut admin, &name).await.expect("B listens");
            let cut: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .fetch_one(&mut admin)
                .await
                .expect("terminate");
            assert!(cut, "B's listening connection was cut");
            // B counts the cut and listens again on a connection of its own.
            let started = Instant::now();
            loop {
                let interrupted =
                    counter(&b_base, "tessera_change_listener_interruptions").await >= 1;
                let again = listening_pid(&mut admin, &name)
                    .await
                    .is_some_and(|p| p != pid);
                if interrupted && again {
                    break;
                }
                assert!(
                    started.elapsed() < WOKEN,
                    "B did not count the cut ({interrupted}) or listen again ({again})"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let waited = answered_across(&a, &b_customer, &device, "dana").await;
        assert!(
            waited < WOKEN,
            "{round}: instance B's waiter was answered after {waited:?}"
        );
    }
    assert!(counter(&a_base, "tessera_change_notifications_sent").await > sent_before);
    assert!(counter(&b_base, "tessera_change_notifications_heard").await > heard_before);
    assert_eq!(
        counter(&b_base, "tessera_change_listener_interruptions").await,
        1,
        "one cut"
    );
    assert_eq!(
        counter(&a_base, "tessera_change_notification_send_failures").await,
        0
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
