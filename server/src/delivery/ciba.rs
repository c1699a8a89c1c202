//! CIBA ping and push notifications on the wire (CIBA Core §10.2 and §10.3): one HTTPS POST
//! to the client's notification endpoint, connecting only to the addresses the endpoint
//! resolved to after they were checked against the SSRF policy (`domain::ssrf`), never through
//! a proxy (`HTTPS_PROXY` in the environment is ignored); redirects are never followed. The queue, the retries and the payload are `domain::ciba::notify`'s.

use serde_json::Value;
use url::Url;

use crate::domain::ciba::notify::DELIVERY_TIMEOUT;
use crate::domain::ports::{CibaNotificationSender, NotificationError, NotificationFuture};
use crate::domain::ssrf::{self, TargetPolicy};

/// Posts notifications over HTTPS under a target policy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpsNotificationSender {
    policy: TargetPolicy,
}

impl HttpsNotificationSender {
    /// A sender allowing the targets `policy` allows.
    pub(crate) fn new(policy: TargetPolicy) -> Self {
        Self { policy }
    }
}

impl CibaNotificationSender for HttpsNotificationSender {
    fn post<'a>(
        &'a self,
        endpoint: &'a Url,
        bearer: &'a str,
        body: &'a Value,
    ) -> NotificationFuture<'a> {
        Box::pin(post(endpoint, bearer, body, self.policy))
    }
}

/// One POST; success is any 2xx. Redirects are failures, never followed.
async fn post(
    endpoint: &Url,
    token: &str,
    body: &Value,
    policy: TargetPolicy,
) -> Result<(), NotificationError> {
    let addrs = ssrf::resolve_endpoint(endpoint, policy)
        .await
        .map_err(|e| NotificationError::Refused(e.to_string()))?;
    let host = endpoint
        .host_str()
        .ok_or_else(|| NotificationError::Refused("no host".into()))?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(DELIVERY_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .resolve_to_addrs(host, &addrs)
        // A proxy from the environment would resolve the name again on its side, past the
        // addresses just checked.
        .no_proxy()
        .user_agent(concat!("tessera-server/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|_| NotificationError::Client)?;
    let response = client
        .post(endpoint.clone())
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                NotificationError::TimedOut
            } else {
                NotificationError::Connection
            }
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(NotificationError::Status(status.as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the child process of [`deliveries_ignore_a_proxy_in_the_environment`].
    const CHILD: &str = "TESSERA_TEST_PROXY_CHILD";
    const TEST_NAME: &str = "delivery::ciba::tests::deliveries_ignore_a_proxy_in_the_environment";

    /// Proxy variables are read when a client is built, so the deliveries run in a child process
    /// of this test binary whose environment names a "proxy" the parent listens on: a delivery
    /// must reach its receiver directly and the proxy must never see a connection.
    #[test]
    fn deliveries_ignore_a_proxy_in_the_environment() {
        if std::env::var_os(CHILD).is_some() {
            return deliver_in_child();
        }
        let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        proxy.set_nonblocking(true).unwrap();
        let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env("HTTP_PROXY", &proxy_url)
            .env("http_proxy", &proxy_url)
            .env("HTTPS_PROXY", &proxy_url)
            .env("https_proxy", &proxy_url)
            .env("ALL_PROXY", &proxy_url)
            .env("all_proxy", &proxy_url)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "child failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("1 passed"),
            "the child ran the test"
        );
        assert!(
            proxy.accept().is_err(),
            "a delivery connected to the proxy from the environment"
        );
    }

    #[tokio::main(flavor = "current_thread")]
    async fn deliver_in_child() {
        use axum::routing::post as post_route;
        let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = receiver.local_addr().unwrap();
        let app = axum::Router::new().route("/cb", post_route(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(receiver, app).await.unwrap() });
        let endpoint = Url::parse(&format!("http://{addr}/cb")).unwrap();
        let policy = TargetPolicy {
            allow_loopback: true,
            allow_private: false,
        };
        // A CIBA ping notification, pinned to the checked address.
        post(
            &endpoint,
            "token",
            &serde_json::json!({"auth_req_id": "x"}),
            policy,
        )
        .await
        .expect("the notification reaches its receiver directly");
        // The client of push and SMS/voice webhooks.
        let client = crate::delivery::push::PushClients::new()
            .client()
            .expect("client");
        let response = client.post(endpoint).json(&1).send().await.expect("sent");
        assert!(response.status().is_success());
    }
}
