//! What the domain asks of the outside world, as traits the domain owns and `delivery/`
//! implements: pushing a request to a device, sending a passcode to a person.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tessera_protocol::api::BackupChannel;
use tessera_protocol::ids::{ApplicationId, UserId};
use zeroize::Zeroizing;

use super::Ctx;
use crate::store::applications::SealedPushSettings;
use crate::store::authentications::Authentication;
use crate::store::enrollments::Enrollment;

/// What a push attempt ended as: the outcome recorded on the authentication (`none`, `sent`,
/// `failed`, `token_invalid`, `stale_token`), or `None` when the push settings were unreadable.
pub(crate) type PushFuture = Pin<Box<dyn Future<Output = Option<&'static str>> + Send>>;

/// Pushes a request to a device (FCM, APNs, the application's webhook, or nothing for a device
/// that only pulls), retrying transient failures and recording the outcome.
pub(crate) trait DevicePush: Send + Sync {
    /// Pushes `record` to `device`, through the application's `settings` when the request
    /// already read them (`None`: the push reads them).
    fn push(
        &self,
        ctx: Ctx,
        record: Authentication,
        device: Enrollment,
        settings: Option<SealedPushSettings>,
    ) -> PushFuture;
}

/// One passcode to deliver.
pub struct Notice {
    /// The channel.
    pub channel: BackupChannel,
    /// The phone number or email address.
    pub to: String,
    /// The code.
    pub code: Zeroizing<String>,
    /// The application's name (shown in the message).
    pub application_name: String,
    /// The application.
    pub application_id: ApplicationId,
    /// The user.
    pub user_id: UserId,
    /// When the code expires.
    pub expires_at: i64,
    /// Minutes until it expires (shown in the message).
    pub valid_minutes: i64,
    /// The shipped language the message is written in (`en`, `de`, `fr`; see docs/i18n.md).
    pub locale: String,
}

impl std::fmt::Debug for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notice")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Notice {
    /// The text the person receives (SMS, voice call, email body), in [`Notice::locale`].
    pub fn text(&self) -> String {
        use crate::i18n::Arg;
        self.localized(
            "code-text",
            &[
                ("application", Arg::Text(&self.application_name)),
                ("code", Arg::Text(self.code.as_str())),
                ("minutes", Arg::Number(self.valid_minutes)),
            ],
        )
        .unwrap_or_else(|| {
            format!(
                "{}: your sign-in code is {}. It expires in {} minute{}. Never share it.",
                self.application_name,
                self.code.as_str(),
                self.valid_minutes,
                if self.valid_minutes == 1 { "" } else { "s" }
            )
        })
    }

    /// The email's subject, in [`Notice::locale`].
    pub fn subject(&self) -> String {
        self.localized(
            "code-email-subject",
            &[(
                "application",
                crate::i18n::Arg::Text(&self.application_name),
            )],
        )
        .unwrap_or_else(|| format!("{} sign-in code", self.application_name))
    }

    fn localized(&self, id: &str, args: &[(&str, crate::i18n::Arg<'_>)]) -> Option<String> {
        crate::i18n::Catalog::shipped()
            .ok()?
            .format(&self.locale, id, args)
    }
}

/// A provider refused or could not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// The destination is not usable by the provider.
    #[error("the destination is not usable")]
    BadDestination,
    /// The provider refused or could not be reached.
    #[error("the provider did not accept the message: {0}")]
    Provider(String),
}

/// The boxed future a notifier returns.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), NotifyError>> + Send + 'a>>;

/// Delivers passcodes through one provider.
pub trait Notifier: Send + Sync {
    /// Sends `notice`; resolves once the provider accepted it.
    fn send<'a>(&'a self, notice: &'a Notice) -> SendFuture<'a>;
}

/// Builds the notifiers whose provider depends on the application (its SMS and voice provider
/// webhook).
pub trait MessageSender: Send + Sync {
    /// A notifier for SMS and voice posting to the provider webhook at `url`, each call signed
    /// with `secret`; `None` when this server cannot make outgoing HTTP calls.
    fn sms_voice(&self, url: String, secret: Zeroizing<String>) -> Option<Arc<dyn Notifier>>;
}

/// Why a CIBA notification was not delivered (safe to log: no token, no body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotificationError {
    /// The endpoint is not a target this server may call (or does not resolve).
    #[error("{0}")]
    Refused(String),
    /// The endpoint did not answer in time.
    #[error("timed out")]
    TimedOut,
    /// No connection could be made, or it broke.
    #[error("connection failed")]
    Connection,
    /// The endpoint answered with a status other than 2xx (a redirect included).
    #[error("answered {0}")]
    Status(u16),
    /// The HTTP client could not be set up.
    #[error("HTTP client unavailable")]
    Client,
}

/// The boxed future a notification sender returns.
pub type NotificationFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(), NotificationError>> + Send + 'a>>;

/// Posts CIBA ping and push notifications to clients' notification endpoints.
pub trait CibaNotificationSender: Send + Sync {
    /// POSTs `body` as JSON to `endpoint` with `Authorization: Bearer <bearer>`; resolves once
    /// the endpoint answered 2xx.
    fn post<'a>(
        &'a self,
        endpoint: &'a url::Url,
        bearer: &'a str,
        body: &'a serde_json::Value,
    ) -> NotificationFuture<'a>;
}

/// What a webhook endpoint answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WebhookAnswer {
    /// The HTTP status.
    pub status: u16,
    /// Its `Retry-After` header, if any.
    pub retry_after: Option<String>,
}

/// The boxed future a webhook sender returns.
pub(crate) type WebhookFuture<'a> =
    Pin<Box<dyn Future<Output = Result<WebhookAnswer, NotificationError>> + Send + 'a>>;

/// Posts signed event webhooks.
pub(crate) trait WebhookSender: Send + Sync {
    /// POSTs `body` (JSON) with `headers` to `endpoint`, under the SSRF policy; resolves with
    /// the answer's status, whatever it is, or why no answer came.
    fn post<'a>(
        &'a self,
        endpoint: &'a url::Url,
        headers: Vec<(&'static str, String)>,
        body: String,
    ) -> WebhookFuture<'a>;
}
