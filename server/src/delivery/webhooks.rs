//! Signed event webhooks on the wire: one POST to the customer's endpoint, connecting only to
//! the addresses its name resolved to after they were checked against the SSRF policy
//! (`domain::ssrf`), never through a proxy, never following a redirect. The outbox, the
//! signature and the retries are `domain::webhooks`'s.

use url::Url;

use crate::domain::ports::{NotificationError, WebhookAnswer, WebhookFuture, WebhookSender};
use crate::domain::ssrf::{self, TargetPolicy};
use crate::domain::webhooks::DELIVERY_TIMEOUT;

/// Posts webhooks under a target policy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpsWebhookSender {
    policy: TargetPolicy,
}

impl HttpsWebhookSender {
    /// A sender allowing the targets `policy` allows.
    pub(crate) fn new(policy: TargetPolicy) -> Self {
        Self { policy }
    }
}

impl WebhookSender for HttpsWebhookSender {
    fn post<'a>(
        &'a self,
        endpoint: &'a Url,
        headers: Vec<(&'static str, String)>,
        body: String,
    ) -> WebhookFuture<'a> {
        Box::pin(post(endpoint, headers, body, self.policy))
    }
}

/// One POST, the name's lookup (at most `ssrf::RESOLVE_TIMEOUT`) included, within
/// [`DELIVERY_TIMEOUT`]: the request has what the lookup left of it.
async fn post(
    endpoint: &Url,
    headers: Vec<(&'static str, String)>,
    body: String,
    policy: TargetPolicy,
) -> Result<WebhookAnswer, NotificationError> {
    let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
    let addrs = ssrf::resolve_endpoint(endpoint, policy)
        .await
        .map_err(|e| NotificationError::Refused(e.to_string()))?;
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    if left.is_zero() {
        return Err(NotificationError::TimedOut);
    }
    let host = endpoint
        .host_str()
        .ok_or_else(|| NotificationError::Refused("no host".into()))?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(left)
        .redirect(reqwest::redirect::Policy::none())
        .resolve_to_addrs(host, &addrs)
        .no_proxy()
        .user_agent(concat!("tessera-server/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|_| NotificationError::Client)?;
    let mut request = client
        .post(endpoint.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.body(body).send().await.map_err(|e| {
        if e.is_timeout() {
            NotificationError::TimedOut
        } else {
            NotificationError::Connection
        }
    })?;
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok(WebhookAnswer {
        status: response.status().as_u16(),
        retry_after,
    })
}
