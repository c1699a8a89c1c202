//! Sending one-time passcodes to people: the [`Notifier`] interface and its two providers.
//!
//! - **Email** ([`SmtpNotifier`]): a plain-text message over SMTP (`smtp://` plain, for a local
//!   relay; `smtp://…?tls=required` STARTTLS; `smtps://` implicit TLS), configured for the
//!   whole server ([`crate::ServerConfig::smtp`]).
//! - **SMS and voice** ([`WebhookNotifier`]): a JSON `POST` to the application's SMS provider
//!   webhook (`set-sms-webhook`), which sends the text or places the call. The body is
//!   `{"channel", "to", "code", "message", "application_id", "user_id", "expires_at", "locale"}`. Every
//!   call is signed: `Tessera-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over
//!   `"<t>." + body` with the webhook's secret ([`webhook_signature`]; the receiver's check is in
//!   docs/network-security.md). Only `https://` webhooks are called, or `http://` on loopback
//!   (development), and never through a proxy from the environment.
//!
//! Errors never carry the code, the destination or the provider's credentials.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::json;
use zeroize::Zeroizing;

pub use crate::config::SmtpConfig;
use crate::domain::ports::{MessageSender, Notice, Notifier, NotifyError, SendFuture};

/// Email over SMTP.
pub struct SmtpNotifier {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

/// Why the SMTP settings cannot be used. Never carries the URL (it may hold credentials).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmtpConfigError {
    /// `--smtp-from` is not an email address.
    #[error("--smtp-from is not a valid sender address (Name <user@example.com>)")]
    InvalidSender,
    /// `--smtp-url` has a scheme other than `smtp` or `smtps`.
    #[error("--smtp-url must start with smtp:// or smtps://")]
    UnknownScheme,
    /// `--smtp-url` does not parse as an SMTP URL.
    #[error(
        "--smtp-url is not a valid SMTP URL (smtp://HOST:PORT, smtp://HOST:PORT?tls=required or smtps://USER:PASS@HOST:PORT)"
    )]
    InvalidUrl,
}

impl SmtpNotifier {
    /// A notifier for `config`, or why its URL or sender cannot be used: a mistyped setting
    /// stops the server instead of silently turning email off.
    pub fn new(config: &SmtpConfig) -> Result<Self, SmtpConfigError> {
        let from = config
            .from
            .parse::<Mailbox>()
            .map_err(|_| SmtpConfigError::InvalidSender)?;
        let scheme = config.url.split_once("://").map(|(scheme, _)| scheme);
        if !matches!(scheme, Some("smtp") | Some("smtps")) {
            return Err(SmtpConfigError::UnknownScheme);
        }
        let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.url)
            .map_err(|_| SmtpConfigError::InvalidUrl)?;
        Ok(Self {
            transport: builder.timeout(Some(Duration::from_secs(10))).build(),
            from,
        })
    }
}

impl Notifier for SmtpNotifier {
    fn send<'a>(&'a self, notice: &'a Notice) -> SendFuture<'a> {
        Box::pin(async move {
            let to: Mailbox = notice.to.parse().map_err(|_| NotifyError::BadDestination)?;
            let message = lettre::Message::builder()
                .from(self.from.clone())
                .to(to)
                .subject(notice.subject())
                .header(ContentType::TEXT_PLAIN)
                .body(notice.text())
                .map_err(|_| NotifyError::BadDestination)?;
            self.transport.send(message).await.map(|_| ()).map_err(|e| {
                NotifyError::Provider(if e.is_permanent() {
                    "the SMTP server refused the message".into()
                } else {
                    "the SMTP server could not be reached".into()
                })
            })
        })
    }
}

/// The header carrying a webhook call's signature.
pub const SIGNATURE_HEADER: &str = "Tessera-Signature";

/// The `Tessera-Signature` value of a webhook call with `body` at `timestamp` (unix seconds):
/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`. The key is the secret's
/// text as shown (`whsec_…`). `None` only if the MAC cannot be keyed (HMAC takes keys of any
/// length, so never in practice).
pub fn webhook_signature(secret: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    use hmac::Mac;
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// Whether a stored webhook URL may be called: `https://`, or `http://` to loopback.
fn callable(url: &str) -> bool {
    match url::Url::parse(url) {
        Ok(u) if u.scheme() == "https" => true,
        Ok(u) if u.scheme() == "http" => match u.host() {
            Some(url::Host::Ipv4(v4)) => v4.is_loopback(),
            Some(url::Host::Ipv6(v6)) => v6.is_loopback(),
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                name == "localhost" || name.ends_with(".localhost")
            }
            None => false,
        },
        _ => false,
    }
}

/// SMS and voice through the application's provider webhook.
pub struct WebhookNotifier {
    client: reqwest::Client,
    url: String,
    secret: Zeroizing<String>,
}

impl WebhookNotifier {
    /// A notifier posting to `url` with `client`, signing each call with `secret`.
    pub fn new(client: reqwest::Client, url: String, secret: Zeroizing<String>) -> Self {
        Self {
            client,
            url,
            secret,
        }
    }

    /// The JSON body posted for `notice`.
    pub fn body(notice: &Notice) -> serde_json::Value {
        json!({
            "channel": notice.channel,
            "to": notice.to,
            "code": notice.code.as_str(),
            "message": notice.text(),
            "application_id": notice.application_id,
            "user_id": notice.user_id,
            "expires_at": notice.expires_at,
            "locale": notice.locale,
        })
    }
}

impl Notifier for WebhookNotifier {
    fn send<'a>(&'a self, notice: &'a Notice) -> SendFuture<'a> {
        Box::pin(async move {
            if !callable(&self.url) {
                return Err(NotifyError::Provider(
                    "the webhook is not https:// (set it again)".into(),
                ));
            }
            // The exact bytes signed are the bytes sent.
            let body = Zeroizing::new(
                serde_json::to_vec(&Self::body(notice))
                    .map_err(|_| NotifyError::Provider("the body could not be encoded".into()))?,
            );
            let signature =
                webhook_signature(&self.secret, tessera_protocol::time::now(), &body)
                    .ok_or_else(|| NotifyError::Provider("the call could not be signed".into()))?;
            let response = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, signature)
                .body(body.to_vec())
                .send()
                .await
                .map_err(|e| {
                    NotifyError::Provider(if e.is_timeout() {
                        "timed out".into()
                    } else {
                        "connection failed".into()
                    })
                })?;
            match response.status().as_u16() {
                200..=299 => Ok(()),
                400 | 422 => Err(NotifyError::BadDestination),
                status => Err(NotifyError::Provider(format!("HTTP {status}"))),
            }
        })
    }
}

/// Builds [`WebhookNotifier`]s for applications' SMS and voice provider webhooks.
pub struct WebhookSender {
    client: Option<reqwest::Client>,
}

impl WebhookSender {
    /// A sender posting with `client` (`None`: this server makes no outgoing HTTP calls). The
    /// client must not use a proxy ([`crate::delivery::push::PushClients::client`]).
    pub fn new(client: Option<reqwest::Client>) -> Self {
        Self { client }
    }
}

impl MessageSender for WebhookSender {
    fn sms_voice(&self, url: String, secret: Zeroizing<String>) -> Option<Arc<dyn Notifier>> {
        let client = self.client.clone()?;
        Some(Arc::new(WebhookNotifier::new(client, url, secret)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_the_timestamp_and_the_body() {
        // RFC 4231 does not cover this layout; the value is pinned so that a change is noticed
        // (receivers compute the same with any HMAC-SHA256).
        let signature = webhook_signature("whsec_test", 1_800_000_000, b"{\"a\":1}").unwrap();
        let expected = {
            use hmac::Mac;
            let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(b"whsec_test").unwrap();
            mac.update(b"1800000000.{\"a\":1}");
            hex::encode(mac.finalize().into_bytes())
        };
        assert_eq!(signature, format!("t=1800000000,v1={expected}"));
        assert_ne!(
            webhook_signature("whsec_test", 1_800_000_000, b"{\"a\":2}").unwrap(),
            signature
        );
        assert_ne!(
            webhook_signature("whsec_test", 1_800_000_001, b"{\"a\":1}").unwrap(),
            signature
        );
        assert_ne!(
            webhook_signature("whsec_other", 1_800_000_000, b"{\"a\":1}").unwrap(),
            signature
        );
    }

    #[test]
    fn only_https_or_loopback_http_webhooks_are_called() {
        assert!(callable("https://sms.example.com/hook"));
        assert!(callable("http://127.0.0.1:9000/hook"));
        assert!(callable("http://[::1]:9000/hook"));
        assert!(callable("http://localhost:9000/hook"));
        assert!(!callable("http://sms.example.com/hook"));
        assert!(!callable("http://10.0.0.1/hook"));
        assert!(!callable("ftp://sms.example.com/hook"));
        assert!(!callable("not a url"));
    }
}
