//! End to end: every signed answer carries the device's model, OS version and app version; the
//! server keeps the enrollment current from them, and the attributes and the customer API
//! report the current values (an OS update after pairing shows in the next answer).

use tessera_protocol::authentication::{AuthenticationKind, AuthenticationResponse};
use tessera_protocol::envelope;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::EnrollmentId;
use tessera_protocol::pairing::{DeviceSignals, DeviceVersions};
use tessera_tests::{Backend, TestDevice, TestServer, ask, on_each_backend};

on_each_backend! {
    an_os_update_shows_in_the_next_answer_and_the_device_record => os_update;
    concurrent_answers_after_an_update_all_report_it => concurrent;
    unreadable_versions_are_refused_and_change_nothing => refused;
    a_qr_login_answer_reports_and_records_the_current_versions => qr_login;
}

async fn paired(backend: Backend) -> (TestServer, TestDevice, EnrollmentId) {
    paired_with(TestServer::start(backend).await).await
}

async fn paired_with(server: TestServer) -> (TestServer, TestDevice, EnrollmentId) {
    server.user("alice").await;
    let device = TestDevice::new().await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap()
        .enrollment_id;
    (server, device, enrollment)
}

/// Asks alice's device, approves with a swipe, and returns the attributes and the signed answer.
async fn approve_once(
    server: &TestServer,
    device: &TestDevice,
    enrollment: &EnrollmentId,
) -> (serde_json::Map<String, serde_json::Value>, String) {
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    let request = device
        .pull_request(enrollment, &created.authentication_id)
        .await;
    device.auth.approve(&request, vec![], None).await.unwrap();
    let status = server
        .customer
        .authentication(&created.authentication_id, 10)
        .await
        .unwrap();
    let attributes = serde_json::to_value(&status.attributes)
        .unwrap()
        .as_object()
        .cloned()
        .unwrap();
    (attributes, status.signed_response.unwrap())
}

const D: &str = "pingid.authentication.authenticating.device.";

async fn os_update(backend: Backend) {
    let (server, device, enrollment) = paired(backend).await;
    let (a, signed) = approve_once(&server, &device, &enrollment).await;
    assert_eq!(a[&format!("{D}os.version")], "15");
    assert_eq!(a[&format!("{D}app.version")], "1.0.0");
    let answer: AuthenticationResponse = envelope::unverified_payload(&signed).unwrap();
    assert_eq!(
        answer.device,
        Some(DeviceVersions {
            model: "Pixel 8".into(),
            os_version: "15".into(),
            app_version: "1.0.0".into(),
        }),
        "the signed answer carries the versions"
    );

    // The phone updates its OS and the app; the device is rooted meanwhile.
    device.auth.set_device_versions(DeviceVersions {
        model: "Pixel 8".into(),
        os_version: "16".into(),
        app_version: "1.1.0".into(),
    });
    device.auth.set_signals(DeviceSignals {
        rooted: Some(true),
        screen_lock: Some(true),
        mdm: Some(false),
        emulator: Some(true),
    });
    let (a, _) = approve_once(&server, &device, &enrollment).await;
    assert_eq!(a[&format!("{D}os.version")], "16");
    assert_eq!(a[&format!("{D}app.version")], "1.1.0");
    assert_eq!(a[&format!("{D}model")], "Pixel 8");
    assert_eq!(a[&format!("{D}is.rooted")], true);
    assert_eq!(a[&format!("{D}is.emulator")], true);

    let devices = server.customer.list_devices("alice").await.unwrap();
    let record = devices
        .devices
        .iter()
        .find(|d| d.enrollment_id == enrollment)
        .unwrap();
    assert_eq!(record.device.os_version, "16");
    assert_eq!(record.device.app_version, "1.1.0");
    assert_eq!(
        record.device.os_name, "Android",
        "what answers do not carry is kept"
    );
    assert_eq!(record.signals.rooted, Some(true));

    // An app restart reports the versions of its configuration again (the state survives).
    let device = device.reopen().await;
    let (a, _) = approve_once(&server, &device, &enrollment).await;
    assert_eq!(a[&format!("{D}os.version")], "15");
}

async fn concurrent(backend: Backend) {
    // Six requests pending at once: above the default push-bombing limit of three.
    let server =
        TestServer::start_with(backend, |c| c.max_pending_authentications_per_user = 10).await;
    let (server, device, enrollment) = paired_with(server).await;
    device.auth.set_device_versions(DeviceVersions {
        model: "Pixel 8".into(),
        os_version: "16".into(),
        app_version: "2.0.0".into(),
    });
    let answers = (0..6).map(|_| approve_once(&server, &device, &enrollment));
    for (a, _) in futures::future::join_all(answers).await {
        assert_eq!(a[&format!("{D}os.version")], "16");
        assert_eq!(a[&format!("{D}app.version")], "2.0.0");
    }
    let devices = server.customer.list_devices("alice").await.unwrap();
    assert_eq!(devices.devices[0].device.os_version, "16");
    assert_eq!(devices.devices[0].device.app_version, "2.0.0");
}

async fn refused(backend: Backend) {
    let (server, device, enrollment) = paired(backend).await;
    for bad in ["x".repeat(129), "16\u{202e}".to_string()] {
        device.auth.set_device_versions(DeviceVersions {
            model: "Pixel 8".into(),
            os_version: bad,
            app_version: "1.0.0".into(),
        });
        let created = server
            .customer
            .create_authentication("alice", &ask(AuthenticationKind::Approval))
            .await
            .unwrap();
        let request = device
            .pull_request(&enrollment, &created.authentication_id)
            .await;
        let err = device
            .auth
            .approve(&request, vec![], None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, tessera_core::CoreError::Server { code, .. } if *code == ErrorCode::ResponseMismatch),
            "{err:?}"
        );
    }
    let devices = server.customer.list_devices("alice").await.unwrap();
    assert_eq!(devices.devices[0].device.os_version, "15");
}

async fn qr_login(backend: Backend) {
    let (server, device, enrollment) = paired(backend).await;
    device.auth.set_device_versions(DeviceVersions {
        model: "Pixel 8".into(),
        os_version: "16".into(),
        app_version: "3.0.0".into(),
    });
    let created = server
        .customer
        .create_qr_session(&tessera_protocol::api::CreateQrSession::default())
        .await
        .unwrap();
    let qr = device
        .auth
        .authenticate_with_qr(&created.qr_uri)
        .await
        .unwrap();
    device
        .auth
        .approve_qr(&qr, &qr.users[0].user_id, vec![])
        .await
        .unwrap();
    let status = server
        .customer
        .qr_session(&created.session_id, 0)
        .await
        .unwrap();
    assert_eq!(status.attributes[&format!("{D}os.version")], "16");
    assert_eq!(status.attributes[&format!("{D}app.version")], "3.0.0");
    let devices = server.customer.list_devices("alice").await.unwrap();
    let record = devices
        .devices
        .iter()
        .find(|d| d.enrollment_id == enrollment)
        .unwrap();
    assert_eq!(record.device.app_version, "3.0.0");
}
