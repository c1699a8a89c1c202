//! End to end: "verify new devices with the primary device", requests that fail when their
//! device is unpaired, and the location and accessing-device attributes.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::CoreError;
use tessera_protocol::api::{CreateAuthenticationRequest, EnrollmentState};
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState, DeviceLocation};
use tessera_protocol::error::ErrorCode;
use tessera_server::store::applications::AdditionalDevicePolicy;
use tessera_server::{IpTable, ManualClock};
use tessera_tests::{Backend, TestDevice, TestServer, ask, device_config, on_each_backend};

on_each_backend! {
    a_new_device_waits_for_the_primary_device_to_approve_it => verified_by_primary;
    a_denied_or_expired_new_device_is_rejected_and_forgotten => rejected;
    the_same_device_re_pairing_is_approved_by_its_earlier_enrollment => same_device_repairs;
    relay_pairing_is_verified_by_the_primary_device_too => relay_verified;
    a_request_whose_device_is_unpaired_fails => failed_when_unpaired;
    location_country_and_ip_reputation_reach_the_attributes => location_and_ip_attributes;
}

async fn with_policy(server: &TestServer) {
    tessera_server::admin::set_additional_device_policy(
        server.server.database(),
        &server.app.application_id,
        AdditionalDevicePolicy::VerifyWithPrimary,
    )
    .await
    .unwrap();
}

async fn device(model: &str) -> TestDevice {
    TestDevice::with_config(device_config(model)).await
}

async fn verified_by_primary(backend: Backend) {
    let server = TestServer::start(backend).await;
    with_policy(&server).await;
    server.user("alice").await;
    let phone = device("Pixel 9").await;
    let first = phone
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    assert_eq!(
        first.status,
        EnrollmentState::Active,
        "the first device needs nobody's approval"
    );

    let tablet = device("Galaxy Tab S9").await;
    let pending = tablet
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    assert_eq!(pending.status, EnrollmentState::PendingVerification);
    assert_eq!(
        tablet.auth.enrollments().await[0].status,
        EnrollmentState::PendingVerification
    );
    let devices = server.customer.list_devices("alice").await.unwrap().devices;
    let listed = devices
        .iter()
        .find(|d| d.enrollment_id == pending.enrollment_id)
        .unwrap();
    assert_eq!(listed.status, EnrollmentState::PendingVerification);
    assert!(!listed.primary);
    // Not usable yet: it cannot be asked, made primary, or answer anything.
    let err = server
        .customer
        .create_authentication(
            "alice",
            &CreateAuthenticationRequest {
                enrollment_id: Some(pending.enrollment_id.clone()),
                ..ask(AuthenticationKind::Approval)
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DeviceNotFound));
    let err = server
        .customer
        .set_primary("alice", &pending.enrollment_id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DeviceNotFound));
    assert!(tablet.auth.pending_requests().await.unwrap().is_empty());
    assert_eq!(
        tablet
            .auth
            .wait_for_verification(&pending.enrollment_id, Duration::ZERO)
            .await
            .unwrap(),
        EnrollmentState::PendingVerification
    );

    // The primary device is asked, and sees which device.
    let requests = phone.auth.pending_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.kind, AuthenticationKind::Approval);
    assert_eq!(
        request.message,
        "Add Galaxy Tab S9 (new) as a second device"
    );
    assert!(
        request
            .fields
            .iter()
            .any(|f| f.label == "Device" && f.value == "Galaxy Tab S9"),
        "{:?}",
        request.fields
    );

    // The tablet long-polls while the phone approves.
    let waiting = {
        let tablet = tablet.auth.clone();
        let id = pending.enrollment_id.clone();
        tokio::spawn(async move {
            tablet
                .wait_for_verification(&id, Duration::from_secs(20))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    phone.auth.approve(request, vec![], None).await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), EnrollmentState::Active);
    assert_eq!(
        tablet.auth.enrollments().await[0].status,
        EnrollmentState::Active
    );
    let devices = server.customer.list_devices("alice").await.unwrap().devices;
    assert_eq!(devices.len(), 2);
    assert!(devices.iter().all(|d| d.status == EnrollmentState::Active));
    assert_eq!(devices.iter().filter(|d| d.primary).count(), 1);
    // Now it works like any device.
    server
        .customer
        .create_authentication(
            "alice",
            &CreateAuthenticationRequest {
                enrollment_id: Some(pending.enrollment_id.clone()),
                ..ask(AuthenticationKind::Approval)
            },
        )
        .await
        .unwrap();
    assert_eq!(tablet.auth.pending_requests().await.unwrap().len(), 1);

    // With the default policy a further device is active at once.
    tessera_server::admin::set_additional_device_policy(
        server.server.database(),
        &server.app.application_id,
        AdditionalDevicePolicy::Individual,
    )
    .await
    .unwrap();
    let laptop = device("ThinkPad").await;
    let enrollment = laptop
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    assert_eq!(enrollment.status, EnrollmentState::Active);
}

async fn rejected(backend: Backend) {
    // The server's time moves only when the test says so: the request expires without waiting
    // for it. The devices keep the real time, so the time to live is long enough for them to
    // answer in time, and the jump past it stays well inside the window of signed device calls.
    let clock = ManualClock::new();
    let server = TestServer::start_with(backend, |c| {
        c.device_verification_ttl = 60;
        c.clock = Arc::new(clock.clone());
    })
    .await;
    with_policy(&server).await;
    server.user("alice").await;
    let phone = device("Pixel 9").await;
    phone
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();

    // Denied: the new device learns it, and forgets the enrollment and its keys.
    let thief = device("Unknown phone").await;
    let pending = thief
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    let request = phone.auth.pending_requests().await.unwrap().remove(0);
    phone.auth.deny(&request, true).await.unwrap();
    assert_eq!(
        thief
            .auth
            .wait_for_verification(&pending.enrollment_id, Duration::from_secs(5))
            .await
            .unwrap(),
        EnrollmentState::Rejected
    );
    assert!(thief.auth.enrollments().await.is_empty());
    let devices = server.customer.list_devices("alice").await.unwrap().devices;
    assert_eq!(devices.len(), 1, "a rejected device is not listed");

    // Nobody answers: after the request expires the device is rejected.
    let late = device("Late phone").await;
    let pending = late
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        late.auth
            .wait_for_verification(&pending.enrollment_id, Duration::from_secs(5))
            .await
            .unwrap(),
        EnrollmentState::Rejected
    );
    assert_eq!(
        late.auth
            .wait_for_verification(&pending.enrollment_id, Duration::ZERO)
            .await
            .unwrap_err(),
        CoreError::EnrollmentNotFound
    );
    assert_eq!(
        server
            .customer
            .list_devices("alice")
            .await
            .unwrap()
            .devices
            .len(),
        1
    );
}

async fn same_device_repairs(backend: Backend) {
    let server = TestServer::start(backend).await;
    with_policy(&server).await;
    server.user("alice").await;
    let phone = device("Pixel 9").await;
    let old = phone
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    // Pairing again (say, after a reset of the app's settings) waits for approval, and the
    // earlier enrollment stays until then: it is the one that approves.
    let new = phone
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    assert_eq!(new.status, EnrollmentState::PendingVerification);
    assert_eq!(phone.auth.enrollments().await.len(), 2);
    let request = phone.auth.pending_requests().await.unwrap().remove(0);
    assert_eq!(request.enrollment_id, old.enrollment_id);
    phone.auth.approve(&request, vec![], None).await.unwrap();
    assert_eq!(
        phone
            .auth
            .wait_for_verification(&new.enrollment_id, Duration::from_secs(5))
            .await
            .unwrap(),
        EnrollmentState::Active
    );
    let local = phone.auth.enrollments().await;
    assert_eq!(local.len(), 1);
    assert_eq!(local[0].enrollment_id, new.enrollment_id);
    let devices = server.customer.list_devices("alice").await.unwrap().devices;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].enrollment_id, new.enrollment_id);
    assert!(devices[0].primary, "it replaced the primary device");
}

async fn relay_verified(backend: Backend) {
    let server = TestServer::start(backend).await;
    with_policy(&server).await;
    server.user("alice").await;
    let phone = device("Pixel 9").await;
    phone
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    let tablet = device("iPad").await;
    let mobile_payload = tablet
        .auth
        .create_mobile_payload(&server.base_url)
        .await
        .unwrap();
    let relayed = server
        .customer
        .relay_pairing("alice", &mobile_payload)
        .await
        .unwrap();
    assert_eq!(relayed.device.status, EnrollmentState::PendingVerification);
    let enrollment = tablet
        .auth
        .complete_relay_pairing(&relayed.server_payload)
        .await
        .unwrap();
    assert_eq!(enrollment.status, EnrollmentState::PendingVerification);
    let request = phone.auth.pending_requests().await.unwrap().remove(0);
    phone.auth.approve(&request, vec![], None).await.unwrap();
    assert_eq!(
        tablet
            .auth
            .wait_for_verification(&enrollment.enrollment_id, Duration::from_secs(5))
            .await
            .unwrap(),
        EnrollmentState::Active
    );
}

async fn failed_when_unpaired(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let phone = device("Pixel 9").await;
    let enrollment = phone
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    let created = server
        .customer
        .create_authentication("alice", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    let request = phone.auth.pending_requests().await.unwrap().remove(0);
    server
        .customer
        .remove_device("alice", &enrollment.enrollment_id)
        .await
        .unwrap();
    let status = server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Failed);
    assert_eq!(status.failure_reason.as_deref(), Some("device_unpaired"));
    // The unpaired device's late answer is refused and changes nothing.
    assert!(phone.auth.approve(&request, vec![], None).await.is_err());
    let status = server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Failed);
}

async fn location_and_ip_attributes(backend: Backend) {
    let table = IpTable::from_csv(
        "# cidr,country,reputation\n203.0.113.0/24,DE,Low\n198.51.100.0/24,NL,High\n",
    )
    .unwrap();
    let server = TestServer::start_with(backend, |c| c.accessing_ip_table = table).await;
    server.user("alice").await;
    let phone = device("Pixel 9").await;
    phone
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    let berlin = DeviceLocation {
        latitude: 52.520008,
        longitude: 13.404954,
        altitude: Some(34.5),
        accuracy: Some(12.0),
    };
    assert!(matches!(
        phone.auth.set_location(Some(DeviceLocation {
            longitude: 181.0,
            ..berlin
        })),
        Err(CoreError::InvalidInput(_))
    ));
    phone.auth.set_location(Some(berlin)).unwrap();

    let from = |ip: &str| CreateAuthenticationRequest {
        accessing_ip: Some(ip.into()),
        ..ask(AuthenticationKind::Approval)
    };
    let created = server
        .customer
        .create_authentication("alice", &from("198.51.100.23"))
        .await
        .unwrap();
    let request = phone.auth.pending_requests().await.unwrap().remove(0);
    phone.auth.approve(&request, vec![], None).await.unwrap();
    let a = server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .unwrap()
        .attributes;
    let p = "pingid.authentication.";
    assert_eq!(a[&format!("{p}accessing.device.ip")], "198.51.100.23");
    assert_eq!(a[&format!("{p}accessing.device.country")], "NL");
    assert_eq!(a[&format!("{p}accessing.device.ip.reputation")], "High");
    assert_eq!(a[&format!("{p}authenticating.device.latitude")], 52.520008);
    assert_eq!(a[&format!("{p}authenticating.device.longitude")], 13.404954);
    assert_eq!(a[&format!("{p}authenticating.device.altitude")], 34.5);
    assert_eq!(a[&format!("{p}authenticating.device.accuracy")], 12.0);

    // An address outside the table: no country, no reputation. No location: no coordinates.
    phone.auth.set_location(None).unwrap();
    let created = server
        .customer
        .create_authentication("alice", &from("192.0.2.1"))
        .await
        .unwrap();
    let request = phone.auth.pending_requests().await.unwrap().remove(0);
    phone.auth.approve(&request, vec![], None).await.unwrap();
    let a = server
        .customer
        .authentication(&created.authentication_id, 0)
        .await
        .unwrap()
        .attributes;
    assert_eq!(a[&format!("{p}accessing.device.ip")], "192.0.2.1");
    assert!(!a.contains_key(&format!("{p}accessing.device.country")));
    assert!(!a.contains_key(&format!("{p}accessing.device.ip.reputation")));
    assert!(!a.contains_key(&format!("{p}authenticating.device.latitude")));
    assert_eq!(a[&format!("{p}type")], "MOBILE_APP_SWIPE");

    // A silent verification is POLICY_APPROVE: as in PingID, no authenticating-device
    // attributes, but the accessing device's are there.
    let created = server
        .customer
        .create_authentication(
            "alice",
            &CreateAuthenticationRequest {
                accessing_ip: Some("203.0.113.9".into()),
                ..ask(AuthenticationKind::Silent)
            },
        )
        .await
        .unwrap();
    assert!(phone.auth.pending_requests().await.unwrap().is_empty());
    let status = server
        .customer
        .authentication(&created.authentication_id, 5)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);
    let a = status.attributes;
    assert_eq!(a[&format!("{p}type")], "POLICY_APPROVE");
    assert_eq!(a[&format!("{p}accessing.device.country")], "DE");
    assert_eq!(a[&format!("{p}accessing.device.ip.reputation")], "Low");
    assert!(
        !a.keys()
            .any(|k| k.starts_with(&format!("{p}authenticating.device."))),
        "{a:?}"
    );
}
