//! Sending one-time passcodes to people: the [`Notifier`] interface and its two providers.
//!
//! - **Email** ([`SmtpNotifier`]): a plain-text message over SMTP (`smtp://` plain, for a local
//!   relay; `smtp://…?tls=required` STARTTLS; `smtps://` implicit TLS), configured for the
//!   whole server ([`crate::ServerConfig::smtp`]).
//! - **SMS and voice** ([`WebhookNotifier`]): a JSON `POST` to the application's SMS provider
//!   webhook (`set-sms-webhook`), which sends the text or places the call. The body is
//!   `{"channel", "to", "code", "message", "application_id", "user_id", "expires_at"}`.
//!
//! Errors never carry the code, the destination or the provider's credentials.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::json;

pub use crate::config::SmtpConfig;
use crate::domain::ports::{MessageSender, Notice, Notifier, NotifyError, SendFuture};

/// Email over SMTP.
pub struct SmtpNotifier {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpNotifier {
    /// A notifier for `config`; `None` (with the reason logged, no secret) if the URL or the
    /// sender is not usable.
    pub fn new(config: &SmtpConfig) -> Option<Self> {
        let from = match config.from.parse::<Mailbox>() {
            Ok(from) => from,
            Err(_) => {
                tracing::error!("smtp: the sender address is not valid; email is off");
                return None;
            }
        };
        match AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.url) {
            Ok(builder) => Some(Self {
                transport: builder.timeout(Some(Duration::from_secs(10))).build(),
                from,
            }),
            Err(_) => {
                tracing::error!("smtp: the server URL is not valid; email is off");
                None
            }
        }
    }
}

impl Notifier for SmtpNotifier {
    fn send<'a>(&'a self, notice: &'a Notice) -> SendFuture<'a> {
        Box::pin(async move {
            let to: Mailbox = notice.to.parse().map_err(|_| NotifyError::BadDestination)?;
            let message = lettre::Message::builder()
                .from(self.from.clone())
                .to(to)
                .subject(format!("{} sign-in code", notice.application_name))
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

/// SMS and voice through the application's provider webhook.
pub struct WebhookNotifier {
    client: reqwest::Client,
    url: String,
}

impl WebhookNotifier {
    /// A notifier posting to `url` with `client`.
    pub fn new(client: reqwest::Client, url: String) -> Self {
        Self { client, url }
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
        })
    }
}

impl Notifier for WebhookNotifier {
    fn send<'a>(&'a self, notice: &'a Notice) -> SendFuture<'a> {
        Box::pin(async move {
            let response = self
                .client
                .post(&self.url)
                .json(&Self::body(notice))
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
    /// A sender posting with `client` (`None`: this server makes no outgoing HTTP calls).
    pub fn new(client: Option<reqwest::Client>) -> Self {
        Self { client }
    }
}

impl MessageSender for WebhookSender {
    fn sms_voice(&self, url: String) -> Option<Arc<dyn Notifier>> {
        let client = self.client.clone()?;
        Some(Arc::new(WebhookNotifier::new(client, url)))
    }
}
