//! End to end: OTP seeds provisioned at pairing (sealed to the device, direct and relayed) and
//! checked by the server: drift window, single use, lockout and reset.

use tessera_protocol::error::ErrorCode;
use tessera_protocol::time::now;
use tessera_tests::{Backend, TestDevice, TestServer, on_each_backend};

on_each_backend! {
    provisioned_codes_are_accepted_once_within_the_drift_window => single_use_and_drift;
    wrong_codes_lock_passcode_sign_in_until_reset => lockout;
    relayed_pairing_provisions_a_seed_the_backend_cannot_read => relayed;
    a_concurrent_burst_of_guesses_checks_no_more_codes_than_the_limit => concurrent_burst;
}

/// 40 wrong codes at once against a limit of 5: each attempt is taken atomically before its
/// code is compared, so at most 4 are answered "wrong" (the 5th locks) and every other one is
/// refused as locked without being checked.
async fn concurrent_burst(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.otp_max_failures = 5).await;
    server.user("alice").await;
    let device = TestDevice::new().await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    let account = device
        .enrollment_otp_account(&enrollment.enrollment_id)
        .await;
    let good = device.otp_code_at(&account, now()).await;
    let wrong = if good == "000000" { "111111" } else { "000000" };
    let mut guesses = Vec::new();
    for _ in 0..40 {
        let customer = server.customer.clone();
        let wrong = wrong.to_string();
        guesses.push(tokio::spawn(async move {
            customer
                .verify_otp("alice", &wrong)
                .await
                .unwrap_err()
                .code()
        }));
    }
    let mut invalid = 0;
    let mut locked = 0;
    for guess in guesses {
        match guess.await.unwrap() {
            Some(ErrorCode::OtpInvalid) => invalid += 1,
            Some(ErrorCode::OtpLocked) => locked += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(
        invalid <= 4,
        "{invalid} wrong codes were checked against a limit of 5"
    );
    assert_eq!(invalid + locked, 40);
    // The limit is reached: the right code is refused until the backend resets the count.
    let err = server
        .customer
        .verify_otp("alice", &good)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpLocked));
}

async fn single_use_and_drift(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let device = TestDevice::new().await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    let account = device
        .enrollment_otp_account(&enrollment.enrollment_id)
        .await;
    let listed = device.auth.otp_accounts().await;
    assert_eq!(listed[0].issuer.as_deref(), Some("End-to-end Test App"));
    assert_eq!(listed[0].account_name, "alice");

    // Start well inside a 30-second step, so the test never straddles a step boundary.
    while now() % 30 > 24 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // One step behind (clock drift) is accepted.
    let t = now();
    let verified = server
        .customer
        .verify_otp("alice", &device.otp_code_at(&account, t - 30).await)
        .await
        .unwrap();
    assert_eq!(
        verified.enrollment_id,
        Some(enrollment.enrollment_id.clone())
    );
    assert_eq!(
        verified.attributes["pingid.authentication.type"],
        "MOBILE_APP_OTP"
    );
    assert_eq!(
        verified.attributes["pingid.authentication.authenticating.device.id"],
        device.auth.device_id().as_str()
    );
    // The current code: accepted once, refused again.
    let current = device.otp_code_at(&account, t).await;
    server.customer.verify_otp("alice", &current).await.unwrap();
    let err = server
        .customer
        .verify_otp("alice", &current)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpInvalid));
    // An older step than one already used is refused too; three steps away is outside the window.
    let err = server
        .customer
        .verify_otp("alice", &device.otp_code_at(&account, t - 30).await)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpInvalid));
    let err = server
        .customer
        .verify_otp("alice", &device.otp_code_at(&account, t + 120).await)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpInvalid));
    // The next step (a device clock slightly ahead) is accepted, spaces and all.
    let next = device.otp_code_at(&account, t + 30).await;
    let spaced = format!("{} {}", &next[..3], &next[3..]);
    server.customer.verify_otp("alice", &spaced).await.unwrap();
    // Unpairing removes the seed on both sides.
    device
        .auth
        .remove_enrollment(&enrollment.enrollment_id)
        .await
        .unwrap();
    assert!(device.auth.otp_accounts().await.is_empty());
    let err = server
        .customer
        .verify_otp("alice", "123456")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoDevice));
}

async fn lockout(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.otp_max_failures = 3).await;
    server.user("alice").await;
    let device = TestDevice::new().await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    let account = device
        .enrollment_otp_account(&enrollment.enrollment_id)
        .await;
    let t = now();
    let good = device.otp_code_at(&account, t).await;
    let wrong = if good == "000000" { "111111" } else { "000000" };
    for _ in 0..2 {
        let err = server
            .customer
            .verify_otp("alice", wrong)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::OtpInvalid));
    }
    for bad in ["12345", "abcdef", ""] {
        let err = server.customer.verify_otp("alice", bad).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::OtpLocked), "{bad}");
    }
    // Locked: even the right code is refused, and not used up.
    let err = server
        .customer
        .verify_otp("alice", &good)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpLocked));
    server.customer.reset_otp_failures("alice").await.unwrap();
    server.customer.verify_otp("alice", &good).await.unwrap();
    // A success clears the count.
    let err = server
        .customer
        .verify_otp("alice", wrong)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OtpInvalid));
    let err = server
        .customer
        .verify_otp("nobody", "123456")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UserNotFound));
}

async fn relayed(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("bob").await;
    let device = TestDevice::new().await;
    let mobile = device
        .auth
        .create_mobile_payload(&server.base_url)
        .await
        .unwrap();
    let relayed = server.customer.relay_pairing("bob", &mobile).await.unwrap();
    // The backend relays a sealed seed: the reply holds no plaintext seed.
    let reply: tessera_protocol::pairing::PairingReply =
        tessera_protocol::envelope::unverified_payload(&relayed.server_payload).unwrap();
    let sealed = reply.otp.expect("a sealed seed");
    assert_eq!(sealed.scheme, "TOTP-SHA1");
    let enrollment = device
        .auth
        .complete_relay_pairing(&relayed.server_payload)
        .await
        .unwrap();
    let account = device
        .enrollment_otp_account(&enrollment.enrollment_id)
        .await;
    let code = device.otp_code_at(&account, now()).await;
    server.customer.verify_otp("bob", &code).await.unwrap();
}
