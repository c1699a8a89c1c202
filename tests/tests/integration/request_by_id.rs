//! End to end: `request(id)`, one pending request fetched by id (a tapped notification),
//! checked by the core as pulled requests are; unknown, other devices', answered and expired
//! requests are typed errors.

use std::sync::Arc;

use tessera_core::CoreError;
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState};
use tessera_protocol::error::ErrorCode;
use tessera_server::ManualClock;
use tessera_tests::{Backend, TestDevice, TestServer, ask, on_each_backend};

on_each_backend! {
    a_tapped_notification_fetches_its_request_by_id => by_id;
}

fn server_code(e: CoreError) -> ErrorCode {
    match e {
        CoreError::Server { code, .. } => code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

async fn by_id(backend: Backend) {
    let clock = ManualClock::new();
    let server = TestServer::start_with(backend, |c| {
        c.clock = Arc::new(clock.clone());
        c.max_pending_authentications_per_user = 20;
    })
    .await;
    server.user("alice").await;
    server.user("bob").await;
    let device = TestDevice::new().await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap()
        .enrollment_id;
    let other = TestDevice::new().await;
    let bobs = other
        .auth
        .pair(&server.pairing_uri("bob").await, None)
        .await
        .unwrap()
        .enrollment_id;

    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    let request = device
        .auth
        .request(&enrollment, &created.authentication_id)
        .await
        .unwrap();
    assert_eq!(request.request_id, created.authentication_id);
    assert_eq!(request.locale.as_deref(), Some("en"));
    // Another device cannot read it: not found, like an unknown id.
    assert_eq!(
        server_code(
            other
                .auth
                .request(&bobs, &created.authentication_id)
                .await
                .unwrap_err()
        ),
        ErrorCode::AuthenticationNotFound
    );
    let unknown = tessera_protocol::authentication::AuthenticationId::generate();
    assert_eq!(
        server_code(
            device
                .auth
                .request(&enrollment, &unknown)
                .await
                .unwrap_err()
        ),
        ErrorCode::AuthenticationNotFound
    );
    // Answered: approving what request(id) returned works once; then it is answered.
    device.auth.approve(&request, vec![], None).await.unwrap();
    assert_eq!(
        server
            .customer
            .authentication(&created.authentication_id, 0)
            .await
            .unwrap()
            .state,
        AuthenticationState::Approved
    );
    assert_eq!(
        server_code(
            device
                .auth
                .request(&enrollment, &created.authentication_id)
                .await
                .unwrap_err()
        ),
        ErrorCode::AlreadyAnswered
    );
    // Expired (the server's clock moves past it).
    let mut short = ask(AuthenticationKind::Approval);
    short.expires_in = Some(10);
    let created = server
        .customer
        .create_authentication("alice", &short)
        .await
        .unwrap();
    clock.advance(std::time::Duration::from_secs(11));
    assert_eq!(
        server_code(
            device
                .auth
                .request(&enrollment, &created.authentication_id)
                .await
                .unwrap_err()
        ),
        ErrorCode::AuthenticationExpired
    );
}
