//! Device-signed calls checked directly, without HTTP, on a real database with a clock the tests
//! move.

use std::time::Duration;

use tessera_protocol::device_auth::DEVICE_REQUEST_WINDOW_SECONDS;
use tessera_protocol::envelope::SoftwareSigningKey;
use tessera_protocol::error::ErrorCode;

use super::{DeviceCall, authenticate};
use crate::clock::Clock;
use crate::domain::testing::{TestDevice, TestDomain};

fn requests_path(device: &TestDevice) -> String {
    format!(
        "/v1/device/enrollments/{}/requests",
        device.enrollment.enrollment_id
    )
}

/// A `GET` of `path` with `authorization` and no body.
fn get<'a>(authorization: &'a str, path: &'a str) -> DeviceCall<'a> {
    DeviceCall {
        authorization: Some(authorization),
        method: "GET",
        path,
        body: b"",
    }
}

async fn code_of(domain: &TestDomain, call: DeviceCall<'_>) -> ErrorCode {
    authenticate(&domain.ctx, call)
        .await
        .expect_err("refused")
        .code()
        .expect("a refusal with a code")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_call_is_accepted_once() {
    for domain in TestDomain::each_engine().await {
        let (_, phone) = domain.user_with_device("alice").await;
        let path = requests_path(&phone);
        let authorization = phone.call("GET", &path, b"", domain.clock.now());
        let call = get(&authorization, &path);
        let enrollment = authenticate(&domain.ctx, call).await.expect("accepted");
        assert_eq!(enrollment.enrollment_id, phone.enrollment.enrollment_id);
        assert_eq!(code_of(&domain, call).await, ErrorCode::ReplayedMessage);

        // Two copies sent at once: one is accepted, the other is a replay.
        let authorization = phone.call("GET", &path, b"", domain.clock.now());
        let send = || {
            let (ctx, authorization, path) =
                (domain.ctx.clone(), authorization.clone(), path.clone());
            tokio::spawn(async move {
                authenticate(&ctx, get(&authorization, &path))
                    .await
                    .err()
                    .map(|e| e.code())
            })
        };
        let (first, second) = tokio::join!(send(), send());
        let codes = [first.expect("ran"), second.expect("ran")];
        assert!(
            codes == [None, Some(Some(ErrorCode::ReplayedMessage))]
                || codes == [Some(Some(ErrorCode::ReplayedMessage)), None],
            "{codes:?}"
        );
    }
}

#[tokio::test]
async fn a_device_call_signed_outside_its_window_is_stale() {
    for domain in TestDomain::each_engine().await {
        let (_, phone) = domain.user_with_device("bob").await;
        let path = requests_path(&phone);
        let window = DEVICE_REQUEST_WINDOW_SECONDS;
        let signed_at = domain.clock.now();
        let early = phone.call("GET", &path, b"", signed_at + window + 1);
        let late = phone.call("GET", &path, b"", signed_at);
        let call = |authorization| get(authorization, &path);
        assert_eq!(
            code_of(&domain, call(&early)).await,
            ErrorCode::StaleMessage,
            "from the future"
        );
        domain.clock.advance(Duration::from_secs(
            u64::try_from(window + 1).expect("window"),
        ));
        assert_eq!(
            code_of(&domain, call(&late)).await,
            ErrorCode::StaleMessage,
            "too old"
        );
        // At the edge of the window it is still fresh.
        let at_edge = phone.call("GET", &path, b"", domain.clock.now() - window);
        authenticate(&domain.ctx, call(&at_edge))
            .await
            .expect("within the window");
    }
}

#[tokio::test]
async fn a_device_call_is_bound_to_its_method_path_and_body() {
    for domain in TestDomain::each_engine().await {
        let (_, phone) = domain.user_with_device("carol").await;
        let path = requests_path(&phone);
        let now = domain.clock.now();
        let get = phone.call("GET", &path, b"", now);
        let other_path = format!("/v1/device/enrollments/{}", phone.enrollment.enrollment_id);
        for (method, path, body) in [
            ("DELETE", path.as_str(), &b""[..]),
            ("GET", other_path.as_str(), &b""[..]),
            ("GET", path.as_str(), &b"{}"[..]),
        ] {
            let call = DeviceCall {
                authorization: Some(&get),
                method,
                path,
                body,
            };
            assert_eq!(
                code_of(&domain, call).await,
                ErrorCode::InvalidSignature,
                "{method} {path} {body:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_call_signed_by_another_key_or_for_no_device_is_unauthorized() {
    for domain in TestDomain::each_engine().await {
        let (_, phone) = domain.user_with_device("dave").await;
        let path = requests_path(&phone);
        let now = domain.clock.now();

        // Another key, claiming to be the phone's enrollment.
        let forged = TestDevice {
            enrollment: phone.enrollment.clone(),
            possession: SoftwareSigningKey::generate(),
            user_verification: SoftwareSigningKey::generate(),
        };
        let impostor = forged.call("GET", &path, b"", now);
        let call = |authorization| get(authorization, &path);
        assert_eq!(
            code_of(&domain, call(&impostor)).await,
            ErrorCode::Unauthorized
        );
        for missing in ["", "Bearer abc", "Tessera-Device not-a-jws"] {
            assert_eq!(
                code_of(&domain, call(missing)).await,
                ErrorCode::Unauthorized
            );
        }
        assert_eq!(
            authenticate(
                &domain.ctx,
                DeviceCall {
                    authorization: None,
                    ..call("")
                }
            )
            .await
            .expect_err("refused")
            .code(),
            Some(ErrorCode::Unauthorized)
        );
    }
}
