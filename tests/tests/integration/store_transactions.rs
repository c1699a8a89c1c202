//! End to end: each request of the approval cycle that writes does so in one transaction, so a
//! change and its audit record (and its announcement to other instances) commit together or
//! not at all. Shown by making the database refuse one audit record kind for a while: the
//! request that would write it fails and leaves nothing behind (no request created, no answer
//! recorded), and succeeds once the database accepts it again, with exactly one record. Before,
//! the change committed first and the audit record was a separate write whose failure was only
//! logged: the authentication ended with no record of it. On SQLite and PostgreSQL.

use sqlx::AnyPool;
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState};
use tessera_tests::{Backend, TestServer, ask, on_each_backend};

on_each_backend! {
    a_new_request_and_its_audit_record_commit_together => create_and_audit;
    an_answer_and_its_audit_record_commit_together => answer_and_audit;
}

/// A connection pool on the test server's own database (its own schema on PostgreSQL).
async fn database(server: &TestServer) -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPool::connect(&server.config().database_url)
        .await
        .expect("database")
}

/// Makes the database refuse audit records of `kind` (a trigger on SQLite, a constraint on
/// PostgreSQL: both hold for statements the server prepared before).
async fn refuse_audit_kind(server: &TestServer, db: &AnyPool, kind: &str) {
    let statement = match server.backend {
        Backend::Sqlite => format!(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log WHEN NEW.kind = '{kind}' \
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        ),
        Backend::Postgres(_) => format!(
            "ALTER TABLE audit_log ADD CONSTRAINT refuse_audit CHECK (kind <> '{kind}') NOT VALID"
        ),
    };
    sqlx::query(&statement).execute(db).await.expect("refuse");
}

async fn accept_audit_again(server: &TestServer, db: &AnyPool) {
    let statement = match server.backend {
        Backend::Sqlite => "DROP TRIGGER refuse_audit",
        Backend::Postgres(_) => "ALTER TABLE audit_log DROP CONSTRAINT refuse_audit",
    };
    sqlx::query(statement).execute(db).await.expect("accept");
}

/// The application's audit records of `kind` about `authentication_id`.
async fn records(server: &TestServer, kind: &str, authentication_id: &str) -> usize {
    let page = server.audit("limit=200").await;
    page.records
        .iter()
        .filter(|r| r.kind == kind && r.subject.as_deref() == Some(authentication_id))
        .count()
}

async fn create_and_audit(backend: Backend) {
    let server = TestServer::start_isolated_with(backend, |_| {}).await;
    let device = server.paired_user("alice").await;
    let db = database(&server).await;

    refuse_audit_kind(&server, &db, "authentication.created").await;
    let refused = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await;
    assert!(
        refused.is_err(),
        "created without its audit record: {refused:?}"
    );
    // Nothing of it was stored: the device has nothing to pull.
    assert!(
        device
            .auth
            .pending_requests()
            .await
            .expect("pull")
            .is_empty(),
        "a request was stored though its audit record was refused"
    );

    accept_audit_again(&server, &db).await;
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .expect("create");
    let pending = device.auth.pending_requests().await.expect("pull");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].request_id, created.authentication_id);
    assert_eq!(
        records(
            &server,
            "authentication.created",
            created.authentication_id.as_str()
        )
        .await,
        1
    );
    db.close().await;
}

async fn answer_and_audit(backend: Backend) {
    let server = TestServer::start_isolated_with(backend, |_| {}).await;
    let device = server.paired_user("alice").await;
    let db = database(&server).await;
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .expect("create");
    let enrollment = device.auth.enrollments().await.remove(0).enrollment_id;
    let request = device
        .pull_request(&enrollment, &created.authentication_id)
        .await;

    refuse_audit_kind(&server, &db, "authentication.approved").await;
    let refused = device.auth.approve(&request, vec![], None).await;
    assert!(refused.is_err(), "approved without its audit record");
    let status = server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .expect("status");
    assert_eq!(
        status.state,
        AuthenticationState::Pending,
        "the answer was recorded though its audit record was refused"
    );

    accept_audit_again(&server, &db).await;
    device
        .auth
        .approve(&request, vec![], None)
        .await
        .expect("approve");
    let status = server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .expect("status");
    assert_eq!(status.state, AuthenticationState::Approved);
    assert_eq!(
        records(
            &server,
            "authentication.approved",
            created.authentication_id.as_str()
        )
        .await,
        1
    );
    db.close().await;
}
