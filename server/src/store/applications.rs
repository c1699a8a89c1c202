//! Applications and their API keys.

use sha2::{Digest, Sha256};
use sqlx::Row;
use tessera_protocol::api::{AuthenticationMethod, BackupChannel};
use tessera_protocol::authentication::NumberMatching;
use tessera_protocol::ids::ApplicationId;

use zeroize::Zeroizing;

use super::Database;
use super::secrets::{open_text, place, seal_text};
use crate::store::StoreError;

/// An application as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    /// Its id.
    pub id: ApplicationId,
    /// Its display name.
    pub name: String,
    /// When it was created.
    pub created_at: i64,
}

/// SHA-256 of an API key, hex: what is stored and looked up.
pub fn api_key_digest(api_key: &str) -> String {
    hex(&Sha256::digest(api_key.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn row_to_application(row: &sqlx::any::AnyRow) -> Result<Application, StoreError> {
    let id: String = row.try_get("id")?;
    Ok(Application {
        id: id
            .parse()
            .map_err(|_| StoreError::Corrupted("application id"))?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Inserts an application with the digest of its API key.
pub async fn insert(
    db: &Database,
    app: &Application,
    api_key_digest: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO applications (id, name, api_key_digest, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(app.id.as_str())
    .bind(&app.name)
    .bind(api_key_digest)
    .bind(app.created_at)
    .execute(db.writer())
    .await?;
    Ok(())
}

/// The statement of [`by_api_key`].
pub(crate) const BY_API_KEY: &str =
    "SELECT id, name, created_at FROM applications WHERE api_key_digest = $1";

/// The application an API key belongs to. The lookup is by digest, so the secret itself is never
/// compared (and never timed).
pub async fn by_api_key(db: &Database, api_key: &str) -> Result<Option<Application>, StoreError> {
    by_api_key_digest(db, &api_key_digest(api_key)).await
}

/// The application whose API key has `digest` ([`api_key_digest`]).
pub async fn by_api_key_digest(
    db: &Database,
    digest: &str,
) -> Result<Option<Application>, StoreError> {
    let row = sqlx::query(BY_API_KEY)
        .bind(digest)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(row_to_application).transpose()
}

/// One application.
pub async fn get(db: &Database, id: &ApplicationId) -> Result<Option<Application>, StoreError> {
    let row = sqlx::query("SELECT id, name, created_at FROM applications WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(row_to_application).transpose()
}

/// All applications, oldest first.
pub async fn list(db: &Database) -> Result<Vec<Application>, StoreError> {
    let rows = sqlx::query("SELECT id, name, created_at FROM applications ORDER BY created_at, id")
        .fetch_all(db.pool())
        .await?;
    rows.iter().map(row_to_application).collect()
}

/// Replaces an application's API key digest. Returns false if there is no such application.
pub async fn set_api_key_digest(
    db: &Database,
    id: &ApplicationId,
    digest: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query("UPDATE applications SET api_key_digest = $1 WHERE id = $2")
        .bind(digest)
        .bind(id.as_str())
        .execute(db.writer())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The application's push webhook URL, if it has one.
pub async fn push_webhook(db: &Database, id: &ApplicationId) -> Result<Option<String>, StoreError> {
    let row = sqlx::query("SELECT push_webhook_url FROM applications WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(db.pool())
        .await?;
    Ok(match row {
        Some(r) => r.try_get::<Option<String>, _>("push_webhook_url")?,
        None => None,
    })
}

/// Sets (or, with `None`, removes) the application's push webhook. Returns false if there is no
/// such application.
pub async fn set_push_webhook(
    db: &Database,
    id: &ApplicationId,
    url: Option<&str>,
) -> Result<bool, StoreError> {
    let done = sqlx::query("UPDATE applications SET push_webhook_url = $1 WHERE id = $2")
        .bind(url)
        .bind(id.as_str())
        .execute(db.writer())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// How an application pairs a user's further devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdditionalDevicePolicy {
    /// Each device pairs on its own with a pairing code (or relay payload).
    #[default]
    Individual,
    /// A further device pairs only once the user's primary device approves it.
    VerifyWithPrimary,
}

impl AdditionalDevicePolicy {
    /// The stored and command-line word: `individual` or `verify_with_primary`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdditionalDevicePolicy::Individual => "individual",
            AdditionalDevicePolicy::VerifyWithPrimary => "verify_with_primary",
        }
    }

    /// Parses the word (`-` and `_` alike).
    pub fn parse(s: &str) -> Option<Self> {
        match s.replace('-', "_").as_str() {
            "individual" => Some(Self::Individual),
            "verify_with_primary" => Some(Self::VerifyWithPrimary),
            _ => None,
        }
    }
}

/// The application's policy for further devices.
pub async fn additional_device_policy<'e, E>(
    executor: E,
    id: &ApplicationId,
) -> Result<AdditionalDevicePolicy, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query("SELECT additional_devices FROM applications WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(executor)
        .await?;
    match row {
        Some(r) => AdditionalDevicePolicy::parse(&r.try_get::<String, _>("additional_devices")?)
            .ok_or(StoreError::Corrupted("additional_devices")),
        None => Err(StoreError::NotFound("application")),
    }
}

/// Sets the application's policy for further devices. Returns false if there is no such
/// application.
pub async fn set_additional_device_policy(
    db: &Database,
    id: &ApplicationId,
    policy: AdditionalDevicePolicy,
) -> Result<bool, StoreError> {
    let done = sqlx::query("UPDATE applications SET additional_devices = $1 WHERE id = $2")
        .bind(policy.as_str())
        .bind(id.as_str())
        .execute(db.writer())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// An application's push settings as stored: the webhook URL and the FCM and APNs credentials
/// (JSON text; see `crate::push`).
#[derive(Clone, Default)]
pub struct PushSettings {
    /// The webhook URL, if any: it receives every push.
    pub webhook_url: Option<String>,
    /// FCM HTTP v1 credentials (JSON), if any.
    pub fcm: Option<Zeroizing<String>>,
    /// APNs token-auth credentials (JSON), if any.
    pub apns: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for PushSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The credentials hold private keys: never printed.
        f.debug_struct("PushSettings")
            .field("webhook_url", &self.webhook_url.is_some())
            .field("fcm", &self.fcm.is_some())
            .field("apns", &self.apns.is_some())
            .finish()
    }
}

/// An application's push settings as stored: the provider credentials still sealed. A new
/// request reads them with its other settings ([`request_settings`]), and the push opens them
/// ([`SealedPushSettings::open`]) only when it uses them.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedPushSettings {
    /// The application.
    application_id: String,
    webhook_url: Option<String>,
    fcm: Option<String>,
    apns: Option<String>,
}

impl std::fmt::Debug for SealedPushSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedPushSettings")
            .field("webhook_url", &self.webhook_url.is_some())
            .field("fcm", &self.fcm.is_some())
            .field("apns", &self.apns.is_some())
            .finish()
    }
}

impl SealedPushSettings {
    /// The settings of the application `id` read from `row` (its `push_webhook_url`,
    /// `push_fcm` and `push_apns` columns).
    fn of(id: &str, row: &sqlx::any::AnyRow) -> Result<Self, StoreError> {
        Ok(Self {
            application_id: id.to_string(),
            webhook_url: row.try_get("push_webhook_url")?,
            fcm: row.try_get("push_fcm")?,
            apns: row.try_get("push_apns")?,
        })
    }

    /// The settings with their credentials opened by `db`'s data key.
    pub fn open(self, db: &Database) -> Result<PushSettings, StoreError> {
        let secrets = db.secrets()?;
        let id = self.application_id.as_str();
        Ok(PushSettings {
            fcm: open_text(secrets, place("applications", "push_fcm", id), self.fcm)?,
            apns: open_text(secrets, place("applications", "push_apns", id), self.apns)?,
            webhook_url: self.webhook_url,
        })
    }
}

/// The application's push settings (`None` if there is no such application).
pub async fn push_settings(
    db: &Database,
    id: &ApplicationId,
) -> Result<Option<PushSettings>, StoreError> {
    let row =
        sqlx::query("SELECT push_webhook_url, push_fcm, push_apns FROM applications WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(db.pool())
            .await?;
    row.map(|r| SealedPushSettings::of(id.as_str(), &r)?.open(db))
        .transpose()
}

/// Stores (or, with `None`, removes) the application's FCM credentials (JSON). Returns false if
/// there is no such application.
pub async fn set_push_fcm(
    db: &Database,
    id: &ApplicationId,
    credentials: Option<&str>,
) -> Result<bool, StoreError> {
    let sealed = seal_text(
        db.secrets()?,
        place("applications", "push_fcm", id.as_str()),
        credentials,
    )?;
    let done = sqlx::query("UPDATE applications SET push_fcm = $1 WHERE id = $2")
        .bind(sealed)
        .bind(id.as_str())
        .execute(db.writer())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// What an application asks after a user approves a QR login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QrPolicy {
    /// The QR approval completes the login.
    #[default]
    None,
    /// A silent push verification of the approving device must be answered too.
    ExtraVerification,
    /// A push approval to the approving user's device must be approved too.
    UserApproval,
}

impl QrPolicy {
    /// The stored and command-line word.
    pub fn as_str(self) -> &'static str {
        match self {
            QrPolicy::None => "none",
            QrPolicy::ExtraVerification => "extra_verification",
            QrPolicy::UserApproval => "user_approval",
        }
    }

    /// Parses the word (`-` and `_` alike).
    pub fn parse(s: &str) -> Option<Self> {
        match s.replace('-', "_").as_str() {
            "none" => Some(Self::None),
            "extra_verification" => Some(Self::ExtraVerification),
            "user_approval" => Some(Self::UserApproval),
            _ => None,
        }
    }
}

/// The application's QR policy.
pub async fn qr_policy(db: &Database, id: &ApplicationId) -> Result<QrPolicy, StoreError> {
    let row = sqlx::query("SELECT qr_policy FROM applications WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(db.pool())
        .await?;
    match row {
        Some(r) => QrPolicy::parse(&r.try_get::<String, _>("qr_policy")?)
            .ok_or(StoreError::Corrupted("qr_policy")),
        None => Err(StoreError::NotFound("application")),
    }
}

/// Sets the application's QR policy. Returns false if there is no such application.
pub async fn set_qr_policy(
    db: &Database,
    id: &ApplicationId,
    policy: QrPolicy,
) -> Result<bool, StoreError> {
    let done = sqlx::query("UPDATE applications SET qr_policy = $1 WHERE id = $2")
        .bind(policy.as_str())
        .bind(id.as_str())
        .execute(db.writer())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Stores (or, with `None`, removes) the application's APNs credentials (JSON). Returns false if
/// there is no such application.
pub async fn set_push_apns(
    db: &Database,
    id: &ApplicationId,
    credentials: Option<&str>,
) -> Result<bool, StoreError> {
    let sealed = seal_text(
        db.secrets()?,
        place("applications", "push_apns", id.as_str()),
        credentials,
    )?;
    let done = sqlx::query("UPDATE applications SET push_apns = $1 WHERE id = $2")
        .bind(sealed)
        .bind(id.as_str())
        .execute(db.writer())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// An application's one-time passcode settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtpPolicy {
    /// "Use code": push authentications accept the app's passcode from the start.
    pub use_code: bool,
    /// OTP fallback: push authentications accept the app's passcode once the push cannot be
    /// delivered or is not answered within `otp_fallback_after` seconds.
    pub otp_fallback: bool,
    /// Seconds without an answer after which OTP fallback is in force.
    pub otp_fallback_after: u32,
    /// The backup channels passcodes may be sent through.
    pub backup_channels: Vec<BackupChannel>,
    /// Methods every user must have registered before a push authentication is created.
    pub mandatory_methods: Vec<AuthenticationMethod>,
    /// The SMS and voice provider's webhook URL, if any.
    pub sms_webhook_url: Option<String>,
}

impl Default for OtpPolicy {
    fn default() -> Self {
        Self {
            use_code: false,
            otp_fallback: false,
            otp_fallback_after: 30,
            backup_channels: Vec::new(),
            mandatory_methods: Vec::new(),
            sms_webhook_url: None,
        }
    }
}

/// Joins channels as stored (`sms,email`).
pub fn channels_text(channels: &[BackupChannel]) -> String {
    channels
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses stored channels.
pub fn parse_channels(text: &str) -> Result<Vec<BackupChannel>, StoreError> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| BackupChannel::parse(s).ok_or(StoreError::Corrupted("backup_channels")))
        .collect()
}

/// The application's OTP settings.
pub async fn otp_policy(db: &Database, id: &ApplicationId) -> Result<OtpPolicy, StoreError> {
    let row = sqlx::query(
        "SELECT use_code, otp_fallback, otp_fallback_after, backup_channels, mandatory_methods, \
         sms_webhook_url FROM applications WHERE id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(db.pool())
    .await?
    .ok_or(StoreError::NotFound("application"))?;
    otp_policy_of(&row)
}

/// Runs `statement`, a read that checks an API key itself (`domain::api_keys`): `$1` is the id
/// of the row read, `$2` the application and `$3` the digest its key must still have.
pub(crate) async fn fetch_with_key(
    db: &Database,
    statement: &str,
    id: &str,
    app: &ApplicationId,
    key_digest: &str,
) -> Result<Option<sqlx::any::AnyRow>, StoreError> {
    Ok(sqlx::query(statement)
        .bind(id)
        .bind(app.as_str())
        .bind(key_digest)
        .fetch_optional(db.pool())
        .await?)
}

/// [`otp_policy`] with the application itself, read only while its API key has the digest
/// `key_digest` (`domain::api_keys`): `None` when the key is no longer the application's.
pub async fn otp_policy_with_key(
    db: &Database,
    id: &ApplicationId,
    key_digest: &str,
) -> Result<Option<(Application, OtpPolicy)>, StoreError> {
    let row = sqlx::query(OTP_POLICY_WITH_KEY)
        .bind(id.as_str())
        .bind(key_digest)
        .fetch_optional(db.pool())
        .await?;
    row.map(|row| Ok((row_to_application(&row)?, otp_policy_of(&row)?)))
        .transpose()
}

/// The statement of [`otp_policy_with_key`] (one row by primary key).
pub(crate) const OTP_POLICY_WITH_KEY: &str = "SELECT id, name, created_at, use_code, otp_fallback, \
    otp_fallback_after, backup_channels, mandatory_methods, sms_webhook_url FROM applications \
    WHERE id = $1 AND api_key_digest = $2";

fn otp_policy_of(row: &sqlx::any::AnyRow) -> Result<OtpPolicy, StoreError> {
    let methods: String = row.try_get("mandatory_methods")?;
    Ok(OtpPolicy {
        use_code: row.try_get::<i64, _>("use_code")? != 0,
        otp_fallback: row.try_get::<i64, _>("otp_fallback")? != 0,
        otp_fallback_after: u32::try_from(row.try_get::<i64, _>("otp_fallback_after")?)
            .map_err(|_| StoreError::Corrupted("otp_fallback_after"))?,
        backup_channels: parse_channels(&row.try_get::<String, _>("backup_channels")?)?,
        mandatory_methods: methods
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                AuthenticationMethod::parse(s).ok_or(StoreError::Corrupted("mandatory_methods"))
            })
            .collect::<Result<_, _>>()?,
        sms_webhook_url: row.try_get("sms_webhook_url")?,
    })
}

/// Sets "use code", OTP fallback and its delay. Returns false if there is no such application.
pub async fn set_otp_options(
    db: &Database,
    id: &ApplicationId,
    use_code: bool,
    otp_fallback: bool,
    otp_fallback_after: u32,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE applications SET use_code = $1, otp_fallback = $2, otp_fallback_after = $3 WHERE id = $4",
    )
    .bind(i64::from(use_code))
    .bind(i64::from(otp_fallback))
    .bind(i64::from(otp_fallback_after))
    .bind(id.as_str())
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Sets the backup channels. Returns false if there is no such application.
pub async fn set_backup_channels(
    db: &Database,
    id: &ApplicationId,
    channels: &[BackupChannel],
) -> Result<bool, StoreError> {
    let done = sqlx::query("UPDATE applications SET backup_channels = $1 WHERE id = $2")
        .bind(channels_text(channels))
        .bind(id.as_str())
        .execute(db.writer())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Sets the mandatory methods. Returns false if there is no such application.
pub async fn set_mandatory_methods(
    db: &Database,
    id: &ApplicationId,
    methods: &[AuthenticationMethod],
) -> Result<bool, StoreError> {
    let text = methods
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let done = sqlx::query("UPDATE applications SET mandatory_methods = $1 WHERE id = $2")
        .bind(text)
        .bind(id.as_str())
        .execute(db.writer())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Sets (or, with `None`, removes) the SMS and voice provider webhook and the secret its calls
/// are signed with. Returns false if there is no such application.
pub async fn set_sms_webhook(
    db: &Database,
    id: &ApplicationId,
    webhook: Option<(&str, &str)>,
) -> Result<bool, StoreError> {
    let sealed = seal_text(
        db.secrets()?,
        place("applications", "sms_webhook_secret", id.as_str()),
        webhook.map(|(_, secret)| secret),
    )?;
    let done = sqlx::query(
        "UPDATE applications SET sms_webhook_url = $1, sms_webhook_secret = $2 WHERE id = $3",
    )
    .bind(webhook.map(|(url, _)| url))
    .bind(sealed)
    .bind(id.as_str())
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The application's SMS and voice provider webhook: its URL and signing secret (`None` for a
/// webhook set before calls were signed).
pub async fn sms_webhook(
    db: &Database,
    id: &ApplicationId,
) -> Result<Option<(String, Option<zeroize::Zeroizing<String>>)>, StoreError> {
    let row =
        sqlx::query("SELECT sms_webhook_url, sms_webhook_secret FROM applications WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(db.pool())
            .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let url: Option<String> = row.try_get("sms_webhook_url")?;
    let secret = open_text(
        db.secrets()?,
        place("applications", "sms_webhook_secret", id.as_str()),
        row.try_get("sms_webhook_secret")?,
    )?;
    Ok(url.map(|url| (url, secret)))
}

/// An application's own quotas (`None`: the server's default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Quotas {
    /// QR sessions open at once.
    pub max_open_qr_sessions: Option<u32>,
    /// Authentication requests pending at once.
    pub max_pending_requests: Option<u32>,
}

/// The application's own quotas.
pub async fn quotas(db: &Database, id: &ApplicationId) -> Result<Quotas, StoreError> {
    let row = sqlx::query(
        "SELECT max_open_qr_sessions, max_pending_requests FROM applications WHERE id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(db.pool())
    .await?
    .ok_or(StoreError::NotFound("application"))?;
    quotas_of(&row)
}

fn quotas_of(row: &sqlx::any::AnyRow) -> Result<Quotas, StoreError> {
    let quota = |column: &'static str| -> Result<Option<u32>, StoreError> {
        row.try_get::<Option<i64>, _>(column)?
            .map(|v| u32::try_from(v).map_err(|_| StoreError::Corrupted(column)))
            .transpose()
    };
    Ok(Quotas {
        max_open_qr_sessions: quota("max_open_qr_sessions")?,
        max_pending_requests: quota("max_pending_requests")?,
    })
}

/// Sets the application's own quotas. Returns false if there is no such application.
pub async fn set_quotas(
    db: &Database,
    id: &ApplicationId,
    quotas: Quotas,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE applications SET max_open_qr_sessions = $1, max_pending_requests = $2 WHERE id = $3",
    )
    .bind(quotas.max_open_qr_sessions.map(i64::from))
    .bind(quotas.max_pending_requests.map(i64::from))
    .bind(id.as_str())
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Serialises quota checks of one application (its open QR sessions on SQLite, its policy
/// versions; new requests take the advisory locks of `authentications::admit_at_once` instead,
/// and a new QR session on PostgreSQL the same row lock inside `qr_session_admitted`, migration
/// `0051`) until the transaction ends, so
/// a count followed by an insert cannot be overtaken by another: on PostgreSQL a `FOR NO KEY UPDATE` row lock on
/// the application (which the foreign-key checks of other inserts do not wait for); on SQLite
/// the write transaction already holds the database's write lock.
pub async fn lock_for_quota<'e, E>(
    executor: E,
    engine: super::Engine,
    id: &ApplicationId,
) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    if engine == super::Engine::Postgres {
        sqlx::query("SELECT id FROM applications WHERE id = $1 FOR NO KEY UPDATE")
            .bind(id.as_str())
            .fetch_optional(executor)
            .await?;
    }
    Ok(())
}

/// An application's number matching mode and push-bombing limits as stored (a limit of `None`
/// uses the server-wide value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthenticationSettings {
    /// The number matching mode of requests that do not choose one.
    pub number_matching: NumberMatching,
    /// User-facing requests one user may have pending at once.
    pub max_pending_per_user: Option<u32>,
    /// Unanswered or denied user-facing requests one user may have had in the window.
    pub max_unapproved_per_user: Option<u32>,
    /// The window of `max_unapproved_per_user`, in seconds.
    pub push_bombing_window_seconds: Option<u32>,
}

fn optional_u32(row: &sqlx::any::AnyRow, column: &'static str) -> Result<Option<u32>, StoreError> {
    row.try_get::<Option<i64>, _>(column)?
        .map(|n| u32::try_from(n).map_err(|_| StoreError::Corrupted(column)))
        .transpose()
}

/// The application's authentication settings.
pub async fn authentication_settings(
    db: &Database,
    id: &ApplicationId,
) -> Result<AuthenticationSettings, StoreError> {
    let row = sqlx::query(
        "SELECT number_matching, max_pending_per_user, max_unapproved_per_user, \
         push_bombing_window_seconds FROM applications WHERE id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(db.pool())
    .await?
    .ok_or(StoreError::NotFound("application"))?;
    authentication_settings_of(&row)
}

fn authentication_settings_of(
    row: &sqlx::any::AnyRow,
) -> Result<AuthenticationSettings, StoreError> {
    Ok(AuthenticationSettings {
        number_matching: NumberMatching::parse(&row.try_get::<String, _>("number_matching")?)
            .ok_or(StoreError::Corrupted("number_matching"))?,
        max_pending_per_user: optional_u32(row, "max_pending_per_user")?,
        max_unapproved_per_user: optional_u32(row, "max_unapproved_per_user")?,
        push_bombing_window_seconds: optional_u32(row, "push_bombing_window_seconds")?,
    })
}

/// What asking a user (an authentication, a CIBA request, a QR answer) reads of its
/// application, as one statement: its name, OTP settings, authentication settings, quotas and
/// QR policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSettings {
    /// The application's name.
    pub name: String,
    /// Its OTP settings ([`otp_policy`]).
    pub otp: OtpPolicy,
    /// Its number matching and push-bombing settings ([`authentication_settings`]).
    pub authentication: AuthenticationSettings,
    /// Its own quotas ([`quotas`]).
    pub quotas: Quotas,
    /// Its QR policy ([`qr_policy`]).
    pub qr_policy: QrPolicy,
    /// Its current authentication policy, if it has one (`super::policies::current`).
    pub policy: Option<super::policies::StoredPolicy>,
    /// Where the request's push goes ([`push_settings`], still sealed).
    pub push: SealedPushSettings,
}

/// What [`request_settings`] and [`request_settings_of_qr_session`] select, before their
/// condition (a hot path: one application row by primary key, with its current policy version
/// by `policies`' primary key).
const REQUEST_SETTINGS_SELECT: &str = "SELECT a.id AS application_id, a.name, a.use_code, a.otp_fallback, \
    a.otp_fallback_after, a.backup_channels, a.mandatory_methods, a.sms_webhook_url, \
    a.number_matching, a.max_pending_per_user, a.max_unapproved_per_user, \
    a.push_bombing_window_seconds, a.max_open_qr_sessions, a.max_pending_requests, a.qr_policy, \
    a.push_webhook_url, a.push_fcm, a.push_apns, p.version AS policy_version, p.document AS policy_document, \
    p.created_at AS policy_created_at \
    FROM applications a LEFT JOIN policies p ON p.application_id = a.id \
    AND p.version = (SELECT MAX(version) FROM policies WHERE application_id = a.id) ";

/// The statement of [`request_settings`].
pub(crate) static REQUEST_SETTINGS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{REQUEST_SETTINGS_SELECT}WHERE a.id = $1"));

/// The application's settings a new request needs, in one read.
pub async fn request_settings(
    db: &Database,
    id: &ApplicationId,
) -> Result<RequestSettings, StoreError> {
    request_settings_on(db.pool(), id).await
}

/// [`request_settings`] on `executor` (a request's connection).
pub async fn request_settings_on<'e, E>(
    executor: E,
    id: &ApplicationId,
) -> Result<RequestSettings, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(&REQUEST_SETTINGS)
        .bind(id.as_str())
        .fetch_optional(executor)
        .await?
        .ok_or(StoreError::NotFound("application"))?;
    request_settings_of(&row, id)
}

/// [`request_settings_on`], read only while the application's API key has the digest
/// `key_digest` (`domain::api_keys`): `None` when it does not (or there is no such application).
pub async fn request_settings_with_key_on<'e, E>(
    executor: E,
    id: &ApplicationId,
    key_digest: &str,
) -> Result<Option<RequestSettings>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    static WITH_KEY: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("{} AND a.api_key_digest = $2", *REQUEST_SETTINGS));
    let row = sqlx::query(&WITH_KEY)
        .bind(id.as_str())
        .bind(key_digest)
        .fetch_optional(executor)
        .await?;
    row.map(|row| request_settings_of(&row, id)).transpose()
}

/// [`request_settings`] of the application that owns the QR session `session` (by the
/// session's primary key, then the application's): `None` without such a session. A QR answer
/// reads it beside the session itself.
pub async fn request_settings_of_qr_session(
    db: &Database,
    session: &str,
) -> Result<Option<(ApplicationId, RequestSettings)>, StoreError> {
    let row = sqlx::query(&REQUEST_SETTINGS_OF_QR_SESSION)
        .bind(session)
        .fetch_optional(db.pool())
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let id: ApplicationId = row
        .try_get::<String, _>("application_id")?
        .parse()
        .map_err(|_| StoreError::Corrupted("application id"))?;
    let settings = request_settings_of(&row, &id)?;
    Ok(Some((id, settings)))
}

/// The statement of [`request_settings_of_qr_session`].
pub(crate) static REQUEST_SETTINGS_OF_QR_SESSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| {
        format!(
            "{REQUEST_SETTINGS_SELECT}WHERE a.id = (SELECT application_id FROM qr_sessions WHERE id = $1)"
        )
    });

fn request_settings_of(
    row: &sqlx::any::AnyRow,
    id: &ApplicationId,
) -> Result<RequestSettings, StoreError> {
    Ok(RequestSettings {
        name: row.try_get("name")?,
        otp: otp_policy_of(row)?,
        authentication: authentication_settings_of(row)?,
        quotas: quotas_of(row)?,
        qr_policy: QrPolicy::parse(&row.try_get::<String, _>("qr_policy")?)
            .ok_or(StoreError::Corrupted("qr_policy"))?,
        policy: match row.try_get::<Option<i64>, _>("policy_version")? {
            None => None,
            Some(version) => Some(super::policies::StoredPolicy {
                version: u32::try_from(version)
                    .map_err(|_| StoreError::Corrupted("policy version"))?,
                document: row.try_get("policy_document")?,
                created_at: row.try_get("policy_created_at")?,
            }),
        },
        push: SealedPushSettings::of(id.as_str(), row)?,
    })
}

/// Replaces the application's authentication settings. Returns false if there is no such
/// application.
pub async fn set_authentication_settings(
    db: &Database,
    id: &ApplicationId,
    settings: &AuthenticationSettings,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE applications SET number_matching = $1, max_pending_per_user = $2, \
         max_unapproved_per_user = $3, push_bombing_window_seconds = $4 WHERE id = $5",
    )
    .bind(settings.number_matching.as_str())
    .bind(settings.max_pending_per_user.map(i64::from))
    .bind(settings.max_unapproved_per_user.map(i64::from))
    .bind(settings.push_bombing_window_seconds.map(i64::from))
    .bind(id.as_str())
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The application's attestation settings (off when never set).
pub async fn attestation_settings(
    db: &Database,
    id: &ApplicationId,
) -> Result<tessera_protocol::api::AttestationSettings, StoreError> {
    attestation_settings_on(db.pool(), id).await
}

/// [`attestation_settings`] on a connection the request already holds.
pub async fn attestation_settings_on<'e, E>(
    executor: E,
    id: &ApplicationId,
) -> Result<tessera_protocol::api::AttestationSettings, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query("SELECT attestation_settings FROM applications WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(executor)
        .await?
        .ok_or(StoreError::NotFound("application"))?;
    match row.try_get::<Option<String>, _>("attestation_settings")? {
        Some(text) => {
            serde_json::from_str(&text).map_err(|_| StoreError::Corrupted("attestation_settings"))
        }
        None => Ok(tessera_protocol::api::AttestationSettings::default()),
    }
}

/// Replaces the application's attestation settings. Returns false if there is no such
/// application.
pub async fn set_attestation_settings(
    db: &Database,
    id: &ApplicationId,
    settings: &tessera_protocol::api::AttestationSettings,
) -> Result<bool, StoreError> {
    let text = serde_json::to_string(settings)
        .map_err(|_| StoreError::Corrupted("attestation_settings"))?;
    let done = sqlx::query("UPDATE applications SET attestation_settings = $1 WHERE id = $2")
        .bind(text)
        .bind(id.as_str())
        .execute(db.writer())
        .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_settings_read_at_once_what_the_separate_reads_read() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite://{}", dir.path().join("settings.db").display());
        let db = Database::connect(&url, 2).await.expect("database");
        let app = Application {
            id: ApplicationId::generate(),
            name: "Shop".into(),
            created_at: 0,
        };
        insert(&db, &app, "digest").await.expect("application");
        assert!(
            set_otp_options(&db, &app.id, true, true, 45)
                .await
                .expect("otp")
        );
        assert!(
            set_backup_channels(&db, &app.id, &[BackupChannel::Sms, BackupChannel::Email])
                .await
                .expect("channels")
        );
        let authentication = AuthenticationSettings {
            number_matching: NumberMatching::Typed,
            max_pending_per_user: Some(3),
            max_unapproved_per_user: None,
            push_bombing_window_seconds: Some(600),
        };
        assert!(
            set_authentication_settings(&db, &app.id, &authentication)
                .await
                .expect("authentication settings")
        );
        let quotas = Quotas {
            max_open_qr_sessions: Some(7),
            max_pending_requests: None,
        };
        assert!(set_quotas(&db, &app.id, quotas).await.expect("quotas"));
        assert!(
            set_qr_policy(&db, &app.id, QrPolicy::UserApproval)
                .await
                .expect("qr policy")
        );

        let all = request_settings(&db, &app.id).await.expect("settings");
        assert_eq!(all.name, "Shop");
        assert_eq!(all.otp, otp_policy(&db, &app.id).await.expect("otp"));
        assert!(all.otp.use_code && all.otp.otp_fallback);
        assert_eq!(all.otp.otp_fallback_after, 45);
        assert_eq!(all.authentication, authentication);
        assert_eq!(
            all.authentication,
            authentication_settings(&db, &app.id).await.expect("read")
        );
        assert_eq!(all.quotas, quotas);
        assert_eq!(all.quotas, super::quotas(&db, &app.id).await.expect("read"));
        assert_eq!(all.qr_policy, QrPolicy::UserApproval);
        assert_eq!(all.qr_policy, qr_policy(&db, &app.id).await.expect("read"));

        let missing = request_settings(&db, &ApplicationId::generate()).await;
        assert!(matches!(missing, Err(StoreError::NotFound("application"))));
        db.close().await;
    }
}
