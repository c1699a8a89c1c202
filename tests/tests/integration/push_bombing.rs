//! End to end: the push-bombing cap counts what an attack looks like — unanswered (pending or
//! expired) and denied requests, `wrong_number` included — never the user's own approvals; its
//! limits and window are per-application settings with the server's values as defaults. On
//! SQLite and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use tessera_examples::customer::CustomerApiError;
use tessera_protocol::api::{AuthenticationSettings, CreateAuthenticationRequest};
use tessera_protocol::authentication::{AuthenticationKind, DenialReason, NumberMatching};
use tessera_protocol::error::ErrorCode;
use tessera_server::ManualClock;
use tessera_tests::{Backend, TestDevice, TestServer, approval_cycle, ask, on_each_backend};

on_each_backend! {
    twenty_five_approved_sign_ins_in_a_row_are_never_refused => approvals_never_count;
    denied_expired_and_wrong_number_requests_trip_the_cap => unapproved_trip_the_cap;
    per_application_limits_and_window_apply => per_application;
}

async fn paired(server: &TestServer) -> (TestDevice, tessera_protocol::ids::EnrollmentId) {
    server.user("alice").await;
    let device = TestDevice::new().await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    (device, enrollment.enrollment_id)
}

fn refused(result: Result<impl std::fmt::Debug, CustomerApiError>) {
    match result {
        Err(e) => {
            assert_eq!(e.code(), Some(ErrorCode::TooManyAuthentications), "{e}");
            assert!(matches!(e, CustomerApiError::Api { status: 429, .. }));
        }
        Ok(v) => panic!("expected too_many_authentications, got {v:?}"),
    }
}

fn expiring(seconds: u32) -> CreateAuthenticationRequest {
    CreateAuthenticationRequest {
        expires_in: Some(seconds),
        ..ask(AuthenticationKind::Approval)
    }
}

async fn approvals_never_count(backend: Backend) {
    // The server's defaults: 3 pending at once, 20 unapproved per 10 minutes.
    let server = TestServer::start(backend).await;
    let (device, enrollment) = paired(&server).await;
    for _ in 0..25 {
        approval_cycle(&server.customer, "alice", &device, &enrollment).await;
    }
}

async fn unapproved_trip_the_cap(backend: Backend) {
    let clock = ManualClock::new();
    let server = TestServer::start_with(backend, |c| {
        c.clock = Arc::new(clock.clone());
        c.max_pending_authentications_per_user = 3;
        c.max_recent_authentications_per_user = 5;
        // A short server-wide window (the device's signed calls must stay fresh when the
        // clock moves past it).
        c.push_bombing_window_seconds = 60;
    })
    .await;
    let (device, enrollment) = paired(&server).await;
    // Approvals first: they never count.
    for _ in 0..6 {
        approval_cycle(&server.customer, "alice", &device, &enrollment).await;
    }
    // Two denied.
    for _ in 0..2 {
        let created = server
            .customer
            .create_authentication("alice", &ask(AuthenticationKind::Approval))
            .await
            .unwrap();
        let request = device
            .pull_request(&enrollment, &created.authentication_id)
            .await;
        device.auth.deny(&request, false).await.unwrap();
    }
    // One wrong number.
    let created = server
        .customer
        .create_authentication(
            "alice",
            &CreateAuthenticationRequest {
                number_matching: Some(NumberMatching::Typed),
                ..ask(AuthenticationKind::Approval)
            },
        )
        .await
        .unwrap();
    let shown = created.number_to_show.unwrap();
    let request = device
        .pull_request(&enrollment, &created.authentication_id)
        .await;
    let recorded = device
        .auth
        .approve(
            &request,
            vec![],
            Some(if shown == 99 { 10 } else { shown + 1 }),
        )
        .await
        .unwrap();
    assert_eq!(recorded.denial_reason, Some(DenialReason::WrongNumber));
    // Two left unanswered until they expire.
    for _ in 0..2 {
        server
            .customer
            .create_authentication("alice", &expiring(10))
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(11));
    // Five unapproved in the window: the sixth is refused, though nothing is pending.
    assert!(device.auth.pending_requests().await.unwrap().is_empty());
    refused(
        server
            .customer
            .create_authentication("alice", &ask(AuthenticationKind::Approval))
            .await,
    );
    // Silent verifications are not user-facing and not capped.
    server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Silent))
        .await
        .unwrap();
    // Once the window has passed, the user can be asked again.
    clock.advance(Duration::from_secs(50));
    approval_cycle(&server.customer, "alice", &device, &enrollment).await;

    // Pending ones are capped at once: three unanswered, the fourth is refused.
    for _ in 0..3 {
        server
            .customer
            .create_authentication("alice", &ask(AuthenticationKind::Approval))
            .await
            .unwrap();
    }
    refused(
        server
            .customer
            .create_authentication("alice", &ask(AuthenticationKind::Approval))
            .await,
    );
}

async fn per_application(backend: Backend) {
    let clock = ManualClock::new();
    let server = TestServer::start_with(backend, |c| {
        c.clock = Arc::new(clock.clone());
    })
    .await;
    let (device, enrollment) = paired(&server).await;
    // The server's values are in force until the application sets its own.
    let view = server.customer.authentication_settings().await.unwrap();
    assert_eq!(view.settings, AuthenticationSettings::default());
    assert_eq!(view.effective.max_pending_per_user, 3);
    assert_eq!(view.effective.max_unapproved_per_user, 20);
    assert_eq!(view.effective.window_seconds, 600);
    // Out of range: refused, nothing changed.
    for bad in [
        AuthenticationSettings {
            max_pending_per_user: Some(0),
            ..AuthenticationSettings::default()
        },
        AuthenticationSettings {
            push_bombing_window_seconds: Some(10),
            ..AuthenticationSettings::default()
        },
        AuthenticationSettings {
            max_unapproved_per_user: Some(1001),
            ..AuthenticationSettings::default()
        },
    ] {
        let err = server
            .customer
            .set_authentication_settings(&bad)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidRequest), "{err}");
    }
    assert_eq!(
        server
            .customer
            .authentication_settings()
            .await
            .unwrap()
            .settings,
        AuthenticationSettings::default()
    );

    let view = server
        .customer
        .set_authentication_settings(&AuthenticationSettings {
            number_matching: NumberMatching::Off,
            max_pending_per_user: Some(1),
            max_unapproved_per_user: Some(2),
            push_bombing_window_seconds: Some(60),
        })
        .await
        .unwrap();
    assert_eq!(view.effective.max_pending_per_user, 1);
    assert_eq!(view.effective.max_unapproved_per_user, 2);
    assert_eq!(view.effective.window_seconds, 60);

    // One pending at once.
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    refused(
        server
            .customer
            .create_authentication("alice", &ask(AuthenticationKind::Approval))
            .await,
    );
    let request = device
        .pull_request(&enrollment, &created.authentication_id)
        .await;
    device.auth.deny(&request, false).await.unwrap();
    // Two unapproved within 60 seconds.
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    let request = device
        .pull_request(&enrollment, &created.authentication_id)
        .await;
    device.auth.deny(&request, true).await.unwrap();
    refused(
        server
            .customer
            .create_authentication("alice", &ask(AuthenticationKind::Approval))
            .await,
    );
    // The application's 60-second window, not the server's ten minutes.
    clock.advance(Duration::from_secs(61));
    approval_cycle(&server.customer, "alice", &device, &enrollment).await;
}
