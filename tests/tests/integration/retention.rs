//! End to end: retention and quotas. What finished or expired longer ago than the retention
//! period is purged (by `admin purge` and by the background task, both timed by the server's
//! clock), and nothing pending or recent is; per-application quotas on open QR sessions and
//! pending requests hold under concurrent bursts and answer `429 quota_exceeded`.

use std::sync::Arc;
use std::time::Duration;

use tessera_protocol::api::CreateQrSession;
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::ApplicationId;
use tessera_server::store::applications::Quotas;
use tessera_server::store::fido_credentials;
use tessera_server::{Clock, ManualClock, admin};
use tessera_tests::{Backend, TestDevice, TestServer, ask, on_each_backend};

on_each_backend! {
    purge_removes_exactly_what_is_old_and_finished => purge_old_and_finished;
    the_background_task_purges_by_the_server_clock => background_purge;
    open_qr_sessions_never_exceed_the_quota_in_a_burst => qr_quota_burst;
    pending_requests_never_exceed_the_quota_in_a_burst => pending_quota_burst;
    a_burst_of_several_users_across_the_shared_margin_holds_the_quota => pending_quota_margin_burst;
    ciba_requests_count_against_the_pending_quota => ciba_quota;
    the_pending_count_follows_every_way_a_request_ends => pending_count_follows_endings;
}

const DAY: Duration = Duration::from_secs(86_400);

/// The device pulls `created` and approves it.
async fn approve(device: &TestDevice, created: &tessera_protocol::api::AuthenticationStatus) {
    let request = device
        .pull_request(&created.enrollment_id, &created.authentication_id)
        .await;
    device
        .auth
        .approve(&request, vec![], None)
        .await
        .expect("approve");
}

/// Sets the application's own quotas (`None`: the server's default).
async fn set_quotas(server: &TestServer, open_qr_sessions: Option<u32>, pending: Option<u32>) {
    admin::set_quotas(
        server.server.database(),
        &server.app.application_id,
        Quotas {
            max_open_qr_sessions: open_qr_sessions,
            max_pending_requests: pending,
        },
    )
    .await
    .expect("quota");
}

async fn start(backend: Backend, clock: &ManualClock, sweep: Duration) -> (TestServer, TestDevice) {
    let clock = clock.clone();
    let server = TestServer::start_isolated_with(backend, move |c| {
        c.clock = Arc::new(clock);
        c.retention_days = 30;
        c.retention_sweep = sweep;
        c.max_pending_authentications_per_user = 1000;
        c.max_recent_authentications_per_user = 1000;
    })
    .await;
    server.user("alice").await;
    let device = TestDevice::new().await;
    device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .expect("pair");
    (server, device)
}

/// A passkey sign-in ceremony `id` of `app` (no user), expiring at `expires_at`.
fn ceremony(app: &ApplicationId, id: &str, expires_at: i64) -> fido_credentials::Ceremony {
    fido_credentials::Ceremony {
        id: id.into(),
        application_id: app.clone(),
        user_id: None,
        flow_id: format!("flw_{id}"),
        purpose: "authentication".into(),
        state: "{}".into(),
        expires_at,
    }
}

fn gone(
    result: Result<impl std::fmt::Debug, tessera_examples::customer::CustomerApiError>,
) -> bool {
    match result {
        Err(e) => matches!(
            e.code(),
            Some(
                ErrorCode::AuthenticationNotFound
                    | ErrorCode::NotFound
                    | ErrorCode::QrSessionNotFound
            )
        ),
        Ok(_) => false,
    }
}

async fn purge_old_and_finished(backend: Backend) {
    let clock = ManualClock::new();
    let (server, device) = start(backend, &clock, Duration::from_secs(3600)).await;
    let customer = &server.customer;
    // Day 0: one approved request, one left pending (it expires), one QR session.
    let approved = customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .expect("create");
    approve(&device, &approved).await;
    let unanswered = customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .expect("create");
    let old_qr = customer
        .create_qr_session(&CreateQrSession::default())
        .await
        .expect("qr");
    // A FIDO ceremony left unanswered by an application that starts no other, so nothing of
    // its own forgets it.
    let db = server.server.database();
    let idle = admin::create_application(db, "Idle")
        .await
        .expect("application")
        .application_id;
    let old_ceremony = ceremony(&idle, "fca_old", clock.now() + 120);
    fido_credentials::insert_ceremony(db, &old_ceremony, clock.now())
        .await
        .expect("ceremony");
    // Day 31: a pending request, a request that expired a moment ago, an open QR session, a
    // ceremony under way.
    clock.advance(31 * DAY);
    let app = &server.app.application_id;
    let new_ceremony = ceremony(app, "fca_new", clock.now() + 120);
    fido_credentials::insert_ceremony(db, &new_ceremony, clock.now())
        .await
        .expect("ceremony");
    let pending = customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .expect("create");
    let mut short = ask(AuthenticationKind::Approval);
    short.expires_in = Some(10);
    let recently_expired = customer
        .create_authentication("alice", &short)
        .await
        .expect("create");
    let new_qr = customer
        .create_qr_session(&CreateQrSession::default())
        .await
        .expect("qr");
    clock.advance(Duration::from_secs(20));

    let purged = admin::purge(server.server.database(), 30, clock.now())
        .await
        .expect("purge");
    assert_eq!(purged.authentications, 2, "{purged:?}");
    assert_eq!(purged.qr_sessions, 1, "{purged:?}");
    assert_eq!(purged.fido_ceremonies, 1, "{purged:?}");
    assert!(
        fido_credentials::take_ceremony(
            db,
            "fca_new",
            app,
            None,
            &new_ceremony.flow_id,
            &new_ceremony.purpose,
            clock.now()
        )
        .await
        .expect("take")
        .is_some(),
        "the ceremony under way stays"
    );
    assert!(gone(
        customer
            .authentication(&approved.authentication_id, 0)
            .await
    ));
    assert!(gone(
        customer
            .authentication(&unanswered.authentication_id, 0)
            .await
    ));
    assert!(gone(customer.qr_session(&old_qr.session_id, 0).await));
    let still = customer
        .authentication(&pending.authentication_id, 0)
        .await
        .expect("the pending request stays");
    assert_eq!(still.state, AuthenticationState::Pending);
    let expired = customer
        .authentication(&recently_expired.authentication_id, 0)
        .await
        .expect("a recently expired request stays");
    assert_eq!(expired.state, AuthenticationState::Expired);
    customer
        .qr_session(&new_qr.session_id, 0)
        .await
        .expect("the open QR session stays");
    // Nothing more is old: a second purge deletes nothing.
    let again = admin::purge(server.server.database(), 30, clock.now())
        .await
        .expect("purge");
    assert_eq!(again, Default::default());
}

async fn background_purge(backend: Backend) {
    let clock = ManualClock::new();
    let (server, _device) = start(backend, &clock, Duration::from_millis(100)).await;
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .expect("create");
    // Well within retention (a day later): kept.
    clock.advance(DAY);
    tokio::time::sleep(Duration::from_millis(500)).await;
    server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .expect("kept within retention");
    // Past retention by the server's clock: the background task purges it.
    clock.advance(31 * DAY);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if gone(
            server
                .customer
                .authentication(&created.authentication_id, 0)
                .await,
        ) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not purged by the background task"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn qr_quota_burst(backend: Backend) {
    let clock = ManualClock::new();
    let (server, _device) = start(backend, &clock, Duration::from_secs(3600)).await;
    set_quotas(&server, Some(5), None).await;
    let customer = Arc::new(server.customer.clone());
    let burst: Vec<_> = (0..30)
        .map(|_| {
            let customer = customer.clone();
            tokio::spawn(async move {
                customer
                    .create_qr_session(&CreateQrSession::default())
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for attempt in burst {
        match attempt.await.expect("task") {
            Ok(_) => created += 1,
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded), "{e:?}");
                assert_eq!(ErrorCode::QuotaExceeded.http_status(), 429);
            }
        }
    }
    assert_eq!(
        created, 5,
        "{created} QR sessions opened against a quota of 5"
    );
    // Once the open sessions have expired, new ones fit again.
    clock.advance(Duration::from_secs(600));
    customer
        .create_qr_session(&CreateQrSession::default())
        .await
        .expect("room again");
}

/// Sends `count` requests at once, taking the users in turn; each is created or refused with
/// `quota_exceeded`. How many were created.
async fn pending_burst(server: &TestServer, users: &[&'static str], count: usize) -> u32 {
    let customer = Arc::new(server.customer.clone());
    let burst: Vec<_> = (0..count)
        .map(|i| {
            let customer = customer.clone();
            let user = users[i % users.len()];
            tokio::spawn(async move {
                customer
                    .create_authentication(user, &ask(AuthenticationKind::Approval))
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for attempt in burst {
        match attempt.await.expect("task") {
            Ok(_) => created += 1,
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded), "{e:?}"),
        }
    }
    created
}

async fn pending_quota_burst(backend: Backend) {
    let clock = ManualClock::new();
    let (server, _device) = start(backend, &clock, Duration::from_secs(3600)).await;
    set_quotas(&server, None, Some(4)).await;
    let created = pending_burst(&server, &["alice"], 30).await;
    assert_eq!(
        created, 4,
        "{created} requests pending against a quota of 4"
    );
    clock.advance(Duration::from_secs(900));
    server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .expect("room again once they expired");
}

/// The margin a shared admission checks the application's quota with: PostgreSQL's
/// `max_connections` (SQLite admits one request at a time, exactly: 0).
async fn admission_margin(server: &TestServer) -> u32 {
    let db = server.server.database();
    match db.engine() {
        tessera_server::store::Engine::Sqlite => 0,
        tessera_server::store::Engine::Postgres => {
            let margin: i64 =
                sqlx::query_scalar("SELECT current_setting('max_connections')::BIGINT")
                    .fetch_one(db.pool())
                    .await
                    .expect("max_connections");
            u32::try_from(margin).expect("margin")
        }
    }
}

/// A quota just above the margin: the first requests of the burst are admitted side by side
/// under the application's shared lock, the ones that find the quota within the margin run
/// again under the exclusive lock, and those past the quota are refused. Four users, so the
/// shared admissions do not queue on one user's lock.
async fn pending_quota_margin_burst(backend: Backend) {
    let clock = ManualClock::new();
    let (server, _alice) = start(backend, &clock, Duration::from_secs(3600)).await;
    let users = ["alice", "bob", "carol", "dave"];
    let mut devices = Vec::new();
    for user in &users[1..] {
        devices.push(server.paired_user(user).await);
    }
    let quota = admission_margin(&server).await + 12;
    set_quotas(&server, None, Some(quota)).await;
    let created = pending_burst(&server, &users, quota as usize + 24).await;
    assert_eq!(
        created, quota,
        "{created} requests pending against a quota of {quota}"
    );
}

async fn ciba_quota(backend: Backend) {
    use tessera_examples::relying_party::{ClientCredentials, RelyingParty, RpError};
    use tessera_protocol::ciba::{ClientAuthMethod, DeliveryMode, RegisterCibaClient};
    let clock = ManualClock::new();
    let (server, _device) = start(backend, &clock, Duration::from_secs(3600)).await;
    set_quotas(&server, None, Some(1)).await;
    let registered = server
        .customer
        .register_ciba_client(&RegisterCibaClient::new(
            "Call Centre",
            DeliveryMode::Poll,
            ClientAuthMethod::ClientSecretPost,
        ))
        .await
        .expect("client");
    let rp = RelyingParty::discover(
        &server.base_url,
        &registered.client_id,
        ClientCredentials::SecretPost(registered.client_secret.clone().expect("secret")),
    )
    .await
    .expect("discover");
    let hint = [("scope", "openid"), ("login_hint", "alice")];
    rp.backchannel(&hint).await.expect("within the quota");
    // The CIBA request is pending: neither another CIBA request nor a customer request fits.
    match rp.backchannel(&hint).await {
        Err(RpError::OAuth {
            error, description, ..
        }) => {
            assert_eq!(error, "access_denied");
            assert!(description.contains("quota"), "{description}");
        }
        other => panic!("expected access_denied, got {other:?}"),
    }
    let err = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .expect_err("over quota");
    assert_eq!(err.code(), Some(ErrorCode::QuotaExceeded));
}

/// The pending requests the quota sums (`pending_expiries`, kept by the database's triggers)
/// against a count of the requests themselves, at the server's time; and no row is left for
/// requests that all ended.
async fn assert_pending_counted(server: &TestServer, clock: &ManualClock, expected: i64) {
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&server.config().database_url)
        .await
        .expect("database");
    let app = server.app.application_id.to_string();
    let now = clock.now();
    let summed: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(pending), 0) FROM pending_expiries \
         WHERE application_id = $1 AND expires_at > $2",
    )
    .bind(&app)
    .bind(now)
    .fetch_one(&db)
    .await
    .expect("sum");
    let counted: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM authentications \
         WHERE application_id = $1 AND state = 'pending' AND expires_at > $2",
    )
    .bind(&app)
    .bind(now)
    .fetch_one(&db)
    .await
    .expect("count");
    let empty_rows: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM pending_expiries WHERE pending <= 0")
            .fetch_one(&db)
            .await
            .expect("empty rows");
    db.close().await;
    assert_eq!((summed, counted, empty_rows), (expected, expected, 0));
}

async fn pending_count_follows_endings(backend: Backend) {
    let clock = ManualClock::new();
    let (server, device) = start(backend, &clock, Duration::from_secs(3600)).await;
    set_quotas(&server, None, Some(3)).await;
    let approval = ask(AuthenticationKind::Approval);
    let create = || server.customer.create_authentication("alice", &approval);
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(create().await.expect("within the quota"));
    }
    assert_eq!(
        create().await.unwrap_err().code(),
        Some(ErrorCode::QuotaExceeded)
    );
    assert_pending_counted(&server, &clock, 3).await;

    // An answer makes room for exactly one more.
    let enrollment = created[0].enrollment_id.clone();
    approve(&device, &created[0]).await;
    assert_pending_counted(&server, &clock, 2).await;
    create().await.expect("room after an answer");
    assert_eq!(
        create().await.unwrap_err().code(),
        Some(ErrorCode::QuotaExceeded)
    );

    // Unpairing the device ends its pending requests.
    server
        .customer
        .remove_device("alice", &enrollment)
        .await
        .expect("unpair");
    assert_pending_counted(&server, &clock, 0).await;

    // Deleting the user removes theirs.
    let pair = || async {
        device
            .auth
            .pair(&server.pairing_uri("alice").await, None)
            .await
            .expect("pair again");
    };
    pair().await;
    for _ in 0..3 {
        create().await.expect("room after the unpairing");
    }
    assert_pending_counted(&server, &clock, 3).await;
    server.customer.remove_user("alice").await.expect("remove");
    assert_pending_counted(&server, &clock, 0).await;

    // Expiry writes nothing, yet expired requests no longer count.
    server.user("alice").await;
    pair().await;
    for _ in 0..3 {
        create().await.expect("room after the user went");
    }
    assert_eq!(
        create().await.unwrap_err().code(),
        Some(ErrorCode::QuotaExceeded)
    );
    clock.advance(Duration::from_secs(900));
    assert_pending_counted(&server, &clock, 0).await;
    create().await.expect("room once they expired");
    assert_pending_counted(&server, &clock, 1).await;
}
