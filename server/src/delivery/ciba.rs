//! CIBA ping and push notifications on the wire (CIBA Core §10.2 and §10.3): one HTTPS POST
//! to the client's notification endpoint, connecting only to the addresses the endpoint
//! resolved to after they were checked against the SSRF policy (`domain::ssrf`); redirects are
//! never followed. The queue, the retries and the payload are `domain::ciba::notify`'s.

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
