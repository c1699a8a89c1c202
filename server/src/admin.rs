//! Administration, used by the `tessera-server admin` command and by tests and examples.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use tessera_protocol::api::{
    AuthenticationMethod, AuthenticationSettings, BackupChannel, CreatedApplication, DeviceRecord,
    User,
};
use tessera_protocol::ids::{ApplicationId, UserId};
use zeroize::Zeroizing;

use crate::delivery::push::{ApnsCredentials, ApnsEnvironment, FcmCredentials};
use crate::error::ServerError;
use crate::secrets::{KeyEncryptionKey, MasterKey};
use crate::store::applications::{self, Application, api_key_digest};
use crate::store::{Database, StoreError, enrollments, users};

fn new_api_key() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    Zeroizing::new(format!("tsk_{}", URL_SAFE_NO_PAD.encode(bytes.as_ref())))
}

/// Registers an application. Its API key is returned once; only its digest is stored.
pub async fn create_application(
    db: &Database,
    name: &str,
) -> Result<CreatedApplication, ServerError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(ServerError::InvalidInput(
            "application name must be 1 to 128 characters".into(),
        ));
    }
    let app = Application {
        id: ApplicationId::generate(),
        name: name.to_string(),
        created_at: crate::clock::Clock::now(&crate::clock::SystemClock),
    };
    let api_key = new_api_key();
    applications::insert(db, &app, &api_key_digest(&api_key)).await?;
    Ok(CreatedApplication {
        application_id: app.id,
        name: app.name,
        api_key: api_key.to_string(),
    })
}

/// All applications.
pub async fn list_applications(db: &Database) -> Result<Vec<Application>, ServerError> {
    Ok(applications::list(db).await?)
}

/// Issues a new API key for an application; the old one stops working at once.
pub async fn rotate_api_key(
    db: &Database,
    id: &ApplicationId,
) -> Result<CreatedApplication, ServerError> {
    let app = applications::get(db, id)
        .await?
        .ok_or(ServerError::NotFound("application"))?;
    let api_key = new_api_key();
    if !applications::set_api_key_digest(db, id, &api_key_digest(&api_key)).await? {
        return Err(ServerError::NotFound("application"));
    }
    Ok(CreatedApplication {
        application_id: app.id,
        name: app.name,
        api_key: api_key.to_string(),
    })
}

/// Creates a user in an application. The id and display name are held to the rules of
/// `POST /v1/users` (both must read as they render): [`ServerError::InvalidInput`] otherwise.
pub async fn create_user(
    db: &Database,
    app: &ApplicationId,
    user_id: &UserId,
    display_name: Option<&str>,
) -> Result<User, ServerError> {
    crate::domain::devices::check_new_user(user_id, display_name)
        .map_err(|e| crate::error::admin_error(e, "user"))?;
    applications::get(db, app)
        .await?
        .ok_or(ServerError::NotFound("application"))?;
    Ok(users::insert(
        db,
        app,
        user_id,
        display_name,
        None,
        crate::clock::Clock::now(&crate::clock::SystemClock),
    )
    .await?)
}

/// An application's users.
pub async fn list_users(db: &Database, app: &ApplicationId) -> Result<Vec<User>, ServerError> {
    Ok(users::list(db, app).await?)
}

/// A user's devices.
pub async fn list_devices(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Vec<DeviceRecord>, ServerError> {
    Ok(enrollments::list_for_user(db, app, user)
        .await?
        .iter()
        .map(enrollments::Enrollment::record)
        .collect())
}

/// Sets or clears the application's push webhook (`http(s)://…`): every push for its devices is
/// POSTed there as JSON, for the customer to relay to the app.
pub async fn set_push_webhook(
    db: &Database,
    app: &ApplicationId,
    url: Option<&str>,
) -> Result<(), ServerError> {
    if let Some(url) = url {
        tessera_protocol::pairing::ServerUrl::parse(url).map_err(|_| {
            ServerError::InvalidInput(
                "the webhook must be an http(s) URL without query or credentials".into(),
            )
        })?;
    }
    if applications::set_push_webhook(db, app, url).await? {
        Ok(())
    } else {
        Err(ServerError::NotFound("application"))
    }
}

/// Sets how the application pairs a user's further devices: each on its own, or verified by the
/// user's primary device.
pub async fn set_additional_device_policy(
    db: &Database,
    app: &ApplicationId,
    policy: applications::AdditionalDevicePolicy,
) -> Result<(), ServerError> {
    if applications::set_additional_device_policy(db, app, policy).await? {
        Ok(())
    } else {
        Err(ServerError::NotFound("application"))
    }
}

/// Sets what the application asks after a QR login is approved: nothing more, a silent
/// verification of the device, or a push approval to the user.
pub async fn set_qr_policy(
    db: &Database,
    app: &ApplicationId,
    policy: applications::QrPolicy,
) -> Result<(), ServerError> {
    if applications::set_qr_policy(db, app, policy).await? {
        Ok(())
    } else {
        Err(ServerError::NotFound("application"))
    }
}

/// What `set-fcm` stored (no secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FcmConfigured {
    /// The application.
    pub application_id: ApplicationId,
    /// `fcm`.
    pub provider: &'static str,
    /// The Firebase project pushes go to.
    pub project_id: String,
    /// The service account.
    pub client_email: String,
    /// The id of the service account's key.
    pub private_key_id: String,
}

/// What `set-apns` stored (no secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApnsConfigured {
    /// The application.
    pub application_id: ApplicationId,
    /// `apns`.
    pub provider: &'static str,
    /// The Apple developer team.
    pub team_id: String,
    /// The id of the `.p8` key.
    pub key_id: String,
    /// The app's bundle id.
    pub topic: String,
    /// Production or sandbox.
    pub environment: ApnsEnvironment,
}

/// Stores the application's FCM HTTP v1 credentials from a Google service-account JSON file's
/// contents. The file is checked (type, fields, a usable RSA key) before anything is stored.
pub async fn set_fcm(
    db: &Database,
    app: &ApplicationId,
    service_account_json: &str,
) -> Result<FcmConfigured, ServerError> {
    let credentials = FcmCredentials::from_service_account(service_account_json)?;
    let stored = Zeroizing::new(
        serde_json::to_string(&credentials).map_err(|_| ServerError::Corrupted("encode"))?,
    );
    if !applications::set_push_fcm(db, app, Some(&stored)).await? {
        return Err(ServerError::NotFound("application"));
    }
    Ok(FcmConfigured {
        application_id: app.clone(),
        provider: "fcm",
        project_id: credentials.project_id.clone(),
        client_email: credentials.client_email.clone(),
        private_key_id: credentials.private_key_id.clone(),
    })
}

/// Stores the application's APNs token-auth credentials: team id, key id, the `.p8` key's PEM
/// contents, the topic (bundle id) and the environment. The key is checked before anything is
/// stored.
pub async fn set_apns(
    db: &Database,
    app: &ApplicationId,
    team_id: &str,
    key_id: &str,
    private_key_pem: &str,
    topic: &str,
    environment: ApnsEnvironment,
) -> Result<ApnsConfigured, ServerError> {
    let credentials = ApnsCredentials::new(team_id, key_id, private_key_pem, topic, environment)?;
    let stored = Zeroizing::new(
        serde_json::to_string(&credentials).map_err(|_| ServerError::Corrupted("encode"))?,
    );
    if !applications::set_push_apns(db, app, Some(&stored)).await? {
        return Err(ServerError::NotFound("application"));
    }
    Ok(ApnsConfigured {
        application_id: app.clone(),
        provider: "apns",
        team_id: credentials.team_id.clone(),
        key_id: credentials.key_id.clone(),
        topic: credentials.topic.clone(),
        environment,
    })
}

/// Removes the application's FCM or APNs credentials (`provider` is `fcm` or `apns`).
pub async fn clear_push_provider(
    db: &Database,
    app: &ApplicationId,
    provider: &str,
) -> Result<(), ServerError> {
    let done = match provider {
        "fcm" => applications::set_push_fcm(db, app, None).await?,
        "apns" => applications::set_push_apns(db, app, None).await?,
        _ => {
            return Err(ServerError::InvalidInput(
                "the provider is fcm or apns".into(),
            ));
        }
    };
    if done {
        Ok(())
    } else {
        Err(ServerError::NotFound("application"))
    }
}

/// Sets the application's passcode options for push authentications: "use code" (a passcode
/// from the app is accepted from the start), OTP fallback (accepted once the push cannot be
/// delivered or is not answered within `fallback_after` seconds, 1 to 900).
pub async fn set_otp_policy(
    db: &Database,
    app: &ApplicationId,
    use_code: bool,
    otp_fallback: bool,
    fallback_after: u32,
) -> Result<(), ServerError> {
    if !(1..=900).contains(&fallback_after) {
        return Err(ServerError::InvalidInput(
            "the fallback delay must be 1 to 900 seconds".into(),
        ));
    }
    if applications::set_otp_options(db, app, use_code, otp_fallback, fallback_after).await? {
        Ok(())
    } else {
        Err(ServerError::NotFound("application"))
    }
}

/// Sets the application's backup channels (SMS, voice, email; empty: none).
pub async fn set_backup_channels(
    db: &Database,
    app: &ApplicationId,
    channels: &[BackupChannel],
) -> Result<(), ServerError> {
    let mut channels = channels.to_vec();
    channels.sort();
    channels.dedup();
    if applications::set_backup_channels(db, app, &channels).await? {
        Ok(())
    } else {
        Err(ServerError::NotFound("application"))
    }
}

/// Sets the authentication methods every user of the application must have registered before
/// a push authentication is created (empty: none).
pub async fn set_mandatory_methods(
    db: &Database,
    app: &ApplicationId,
    methods: &[AuthenticationMethod],
) -> Result<(), ServerError> {
    let mut methods = methods.to_vec();
    methods.sort();
    methods.dedup();
    if applications::set_mandatory_methods(db, app, &methods).await? {
        Ok(())
    } else {
        Err(ServerError::NotFound("application"))
    }
}

/// A new SMS and voice webhook signing secret: `whsec_` and 32 random bytes, base64url.
fn new_webhook_secret() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    Zeroizing::new(format!("whsec_{}", URL_SAFE_NO_PAD.encode(bytes.as_ref())))
}

/// Whether a webhook URL's host is a loopback address or name.
fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(v4)) => v4.is_loopback(),
        Some(url::Host::Ipv6(v6)) => v6.is_loopback(),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        None => false,
    }
}

/// Checks an SMS and voice webhook URL: `https://`, or `http://` to a loopback host when
/// `allow_loopback` (development only); no query or credentials.
pub fn check_sms_webhook_url(url: &str, allow_loopback: bool) -> Result<(), ServerError> {
    let invalid = || {
        ServerError::InvalidInput(
            "the webhook must be an http(s) URL without query or credentials".into(),
        )
    };
    tessera_protocol::pairing::ServerUrl::parse(url).map_err(|_| invalid())?;
    let parsed = url::Url::parse(url.trim()).map_err(|_| invalid())?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if allow_loopback && is_loopback_host(&parsed) => Ok(()),
        "http" if is_loopback_host(&parsed) => Err(ServerError::InvalidInput(
            "a plain http:// webhook on loopback needs --allow-loopback (development only)".into(),
        )),
        _ => Err(ServerError::InvalidInput(
            "the webhook must use https:// (the passcodes it receives are secrets)".into(),
        )),
    }
}

/// Sets or clears the application's SMS and voice provider webhook: every SMS or voice passcode
/// is POSTed there as JSON, signed with HMAC-SHA256 (`Tessera-Signature`, see
/// docs/network-security.md). The URL must be `https://` (`http://` to loopback only with
/// `allow_loopback`, for development). Setting a webhook generates a new signing secret, which is
/// returned here once (the server keeps it to sign with); clearing returns `None`.
pub async fn set_sms_webhook(
    db: &Database,
    app: &ApplicationId,
    url: Option<&str>,
    allow_loopback: bool,
) -> Result<Option<Zeroizing<String>>, ServerError> {
    let secret = match url {
        Some(url) => {
            check_sms_webhook_url(url, allow_loopback)?;
            Some(new_webhook_secret())
        }
        None => None,
    };
    let webhook = url.zip(secret.as_ref().map(|s| s.as_str()));
    if applications::set_sms_webhook(db, app, webhook).await? {
        Ok(secret)
    } else {
        Err(ServerError::NotFound("application"))
    }
}

/// The application's passcode settings (no secret).
pub async fn otp_policy(
    db: &Database,
    app: &ApplicationId,
) -> Result<applications::OtpPolicy, ServerError> {
    Ok(applications::otp_policy(db, app).await?)
}

/// Reads the master key: from the file at `path` if given, otherwise from the environment
/// variable `TESSERA_MASTER_KEY` (its base64 text, for containers), otherwise none.
pub fn master_key_from(
    path: Option<&std::path::Path>,
) -> Result<Option<std::sync::Arc<dyn KeyEncryptionKey>>, ServerError> {
    let key = match path {
        Some(path) => MasterKey::from_file(path).map_err(StoreError::from)?,
        None => match std::env::var("TESSERA_MASTER_KEY") {
            Ok(text) if !text.trim().is_empty() => {
                let text = Zeroizing::new(text);
                MasterKey::from_base64(&text).map_err(StoreError::from)?
            }
            _ => return Ok(None),
        },
    };
    Ok(Some(std::sync::Arc::new(key)))
}

/// Connects to the database for administration and opens its data key with the master key
/// (required once the database is protected by one), sealing any secret still stored in clear.
pub async fn open_database(
    url: &str,
    master_key: Option<&dyn KeyEncryptionKey>,
) -> Result<Database, ServerError> {
    let mut db = Database::connect(url, 2).await?;
    // Quietly: admin commands print JSON only (the server's start says how secrets are kept).
    db.open_secrets(
        master_key,
        crate::clock::Clock::now(&crate::clock::SystemClock),
    )
    .await?;
    Ok(db)
}

/// A new master key (base64 text, shown once): store it outside the database and its backups.
pub fn generate_master_key() -> Result<Zeroizing<String>, ServerError> {
    let (key, text) = MasterKey::generate().map_err(StoreError::from)?;
    drop(key);
    Ok(text)
}

/// What `rewrap` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rewrapped {
    /// The id of the master key that now wraps the data key.
    pub master_key: String,
}

/// Wraps the database's data key with `new` instead of `current` (the master key it is wrapped
/// with now; `None` for a database started without one). Secret columns are not rewritten:
/// after this only `new` opens the database. Keep `current` until every instance runs with
/// `new`.
pub async fn rewrap(
    db: &Database,
    current: Option<&dyn KeyEncryptionKey>,
    new: &dyn KeyEncryptionKey,
) -> Result<Rewrapped, ServerError> {
    let master_key = crate::store::secrets::rewrap(
        db,
        current,
        new,
        crate::clock::Clock::now(&crate::clock::SystemClock),
    )
    .await?;
    Ok(Rewrapped { master_key })
}

/// Purges what finished or expired more than `retention_days` days before `now` (0: nothing).
pub async fn purge(
    db: &Database,
    retention_days: u32,
    now: i64,
) -> Result<crate::store::retention::Purged, ServerError> {
    Ok(crate::store::retention::purge(db, retention_days, now).await?)
}

/// Sets the application's quotas of open QR sessions and pending requests (`None`: the
/// server's default).
pub async fn set_quotas(
    db: &Database,
    app: &ApplicationId,
    quotas: applications::Quotas,
) -> Result<(), ServerError> {
    if quotas.max_open_qr_sessions == Some(0) || quotas.max_pending_requests == Some(0) {
        return Err(ServerError::InvalidInput(
            "a quota is at least 1 (leave it out for the server's default)".into(),
        ));
    }
    if applications::set_quotas(db, app, quotas).await? {
        Ok(())
    } else {
        Err(ServerError::NotFound("application"))
    }
}

/// The application's number matching mode and push-bombing limits as stored (a limit of `null`
/// uses the server-wide value of the running server).
pub async fn authentication_settings(
    db: &Database,
    app: &ApplicationId,
) -> Result<AuthenticationSettings, ServerError> {
    let view = crate::domain::applications::authentication_settings(
        db,
        &crate::ServerConfig::default(),
        app,
    )
    .await
    .map_err(|e| crate::error::admin_error(e, "application"))?;
    Ok(view.settings)
}

/// Replaces the application's number matching mode and push-bombing limits (each limit checked
/// against its range); returns them as stored.
pub async fn set_authentication_settings(
    db: &Database,
    app: &ApplicationId,
    settings: AuthenticationSettings,
) -> Result<AuthenticationSettings, ServerError> {
    let view = crate::domain::applications::set_authentication_settings(
        db,
        &crate::ServerConfig::default(),
        app,
        settings,
    )
    .await
    .map_err(|e| crate::error::admin_error(e, "application"))?;
    Ok(view.settings)
}

/// Rotates the device-facing server key: a new key signs from now on, announced in a key set
/// signed by the key that was signing, which keeps verifying for `grace_seconds` and is then
/// retired. Running servers pick it up within their `server_key_reload_interval`. Returns the
/// new key's id.
pub async fn rotate_server_key(
    db: &Database,
    now: i64,
    grace_seconds: i64,
) -> Result<String, ServerError> {
    crate::domain::server_keys::rotate(db, now, grace_seconds)
        .await
        .map_err(key_operation_error)
}

/// Revokes a device-facing server key at once: unpublished, never trusted again, not even as a
/// link of a chain of key sets. Refused for the only published key (rotate first).
pub async fn revoke_server_key(db: &Database, kid: &str, now: i64) -> Result<(), ServerError> {
    crate::domain::server_keys::revoke(db, kid, now)
        .await
        .map_err(key_operation_error)
}

fn key_operation_error(e: crate::domain::server_keys::KeyOperationError) -> ServerError {
    use crate::domain::server_keys::KeyOperationError;
    match e {
        KeyOperationError::Store(e) => ServerError::Store(e),
        KeyOperationError::UnknownKey => ServerError::NotFound("published server key"),
        other => ServerError::InvalidInput(other.to_string()),
    }
}

/// Copies a running SQLite database to `target` (a new file, readable by its owner only) with
/// `VACUUM INTO`: consistent, without stopping the server. PostgreSQL is backed up with
/// `pg_dump` (docs/operations.md). The copy holds the secrets as sealed in the database: keep
/// the master key apart from it.
pub async fn backup(db: &Database, target: &std::path::Path) -> Result<u64, ServerError> {
    if db.engine() != crate::store::Engine::Sqlite {
        return Err(ServerError::InvalidInput(
            "only SQLite databases are copied by this command; back up PostgreSQL with pg_dump"
                .into(),
        ));
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(target).map_err(|e| {
        ServerError::InvalidInput(format!(
            "the backup file {} cannot be created: {e}",
            target.display()
        ))
    })?;
    let path = target
        .to_str()
        .ok_or_else(|| ServerError::InvalidInput("the backup path is not UTF-8".into()))?;
    if let Err(e) = db.backup_into(path).await {
        let _ = std::fs::remove_file(target);
        return Err(e.into());
    }
    std::fs::metadata(target)
        .map(|m| m.len())
        .map_err(|e| ServerError::InvalidInput(format!("the backup file: {e}")))
}

/// Records an admin command in the audit log (`kind`: `admin.command`, or the key change it
/// made), with the command's name, its application if one was named, and whether it succeeded.
/// A failure to record is reported on standard error: the command already ran.
pub async fn record_command(
    db: &Database,
    kind: &'static str,
    command: &str,
    application_id: Option<&str>,
    succeeded: bool,
) {
    use crate::domain::audit::{Actor, Event, append};
    let outcome = if succeeded { "success" } else { "failed" };
    let mut event =
        Event::new(kind, Actor::Admin, outcome).details(serde_json::json!({ "command": command }));
    if let Some(app) = application_id {
        event = event.app(app);
    }
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    if let Err(e) = append(db, &crate::ip_table::IpTable::default(), now, event).await {
        eprintln!("warning: the command could not be recorded in the audit log: {e}");
    }
}

/// Writes the audit log (of `application`, or all of it) as JSON lines, oldest first, to `out`.
/// Returns how many records were written.
pub async fn export_audit(
    db: &Database,
    application: Option<&ApplicationId>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    out: &mut impl std::io::Write,
) -> Result<u64, ServerError> {
    let filter = crate::store::audit::Filter {
        application_id: application.map(ToString::to_string),
        since_ms,
        until_ms,
        ..Default::default()
    };
    let (sender, mut lines) = tokio::sync::mpsc::channel(4);
    let export = crate::domain::audit::export(db, filter, sender);
    let write = async {
        while let Some(batch) = lines.recv().await {
            out.write_all(batch.as_bytes())
                .map_err(|e| ServerError::InvalidInput(format!("cannot write the export: {e}")))?;
        }
        out.flush()
            .map_err(|e| ServerError::InvalidInput(format!("cannot write the export: {e}")))
    };
    let (exported, written) = tokio::join!(export, write);
    written?;
    Ok(exported?)
}

/// Saves a new version of the application's authentication policy (validated: an invalid
/// policy is refused with the offending rule named). See `docs/policy.md`.
pub async fn set_policy(
    db: &Database,
    app: &ApplicationId,
    document: &tessera_protocol::policy::PolicyDocument,
    now: i64,
) -> Result<tessera_protocol::policy::PolicyVersion, ServerError> {
    crate::domain::policy::save_in(db, app, document, now)
        .await
        .map_err(|e| crate::error::admin_error(e, "application"))
}

/// Attestation settings from the admin CLI's arguments: Android apps as
/// `PACKAGE=DIGEST[,DIGEST...]`, iOS apps as `TEAMID.BUNDLEID` (production or development).
pub fn attestation_settings_from_args(
    mode: tessera_protocol::api::AttestationMode,
    android_apps: &[String],
    apple_apps: &[String],
    apple_development_apps: &[String],
) -> Result<tessera_protocol::api::AttestationSettings, ServerError> {
    use tessera_protocol::api::{AndroidAppIdentity, AppleAppIdentity, AttestationSettings};
    let android_apps = android_apps
        .iter()
        .map(|arg| {
            let (package, digests) = arg.split_once('=').ok_or_else(|| {
                ServerError::InvalidInput("--android-app is PACKAGE=DIGEST[,DIGEST...]".into())
            })?;
            Ok(AndroidAppIdentity {
                package_name: package.to_string(),
                signing_cert_digests: digests.split(',').map(str::to_string).collect(),
            })
        })
        .collect::<Result<Vec<_>, ServerError>>()?;
    let apple = |arg: &String, development: bool| {
        let (team_id, bundle_id) = arg
            .split_once('.')
            .ok_or_else(|| ServerError::InvalidInput("an iOS app is TEAMID.BUNDLEID".into()))?;
        Ok(AppleAppIdentity {
            team_id: team_id.to_string(),
            bundle_id: bundle_id.to_string(),
            development,
        })
    };
    let apple_apps = apple_apps
        .iter()
        .map(|a| apple(a, false))
        .chain(apple_development_apps.iter().map(|a| apple(a, true)))
        .collect::<Result<Vec<_>, ServerError>>()?;
    Ok(AttestationSettings {
        mode,
        android_apps,
        apple_apps,
    })
}

/// The application's attestation settings.
pub async fn attestation_settings(
    db: &Database,
    app: &ApplicationId,
) -> Result<tessera_protocol::api::AttestationSettings, ServerError> {
    crate::domain::attestation::settings::get(db, app)
        .await
        .map_err(|e| crate::error::admin_error(e, "application"))
}

/// The application's current policy.
pub async fn policy(
    db: &Database,
    app: &ApplicationId,
) -> Result<tessera_protocol::policy::PolicyVersion, ServerError> {
    crate::domain::policy::current_in(db, app)
        .await
        .map_err(|e| crate::error::admin_error(e, "policy"))
}

/// Every version of the application's policy, oldest first.
pub async fn policy_versions(
    db: &Database,
    app: &ApplicationId,
) -> Result<tessera_protocol::policy::PolicyVersionList, ServerError> {
    crate::domain::policy::versions_in(db, app)
        .await
        .map_err(|e| crate::error::admin_error(e, "application"))
}

/// Replaces a user's groups.
pub async fn set_user_groups(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    groups: Vec<String>,
) -> Result<tessera_protocol::policy::UserGroups, ServerError> {
    crate::domain::policy::set_groups_in(
        db,
        app,
        user,
        &tessera_protocol::policy::UserGroups { groups },
    )
    .await
    .map_err(|e| crate::error::admin_error(e, "user"))
}

/// A dry run of the application's policy (nothing sent, nothing recorded), with `ip_table` as
/// the accessing-IP table.
pub async fn evaluate_policy(
    db: &Database,
    ip_table: &crate::IpTable,
    app: &ApplicationId,
    request: &tessera_protocol::policy::EvaluatePolicyRequest,
    now: i64,
) -> Result<tessera_protocol::policy::PolicyEvaluation, ServerError> {
    crate::domain::policy::evaluate_in(
        &crate::domain::policy::Env {
            db,
            ip_table,
            now,
            compiled: &Default::default(),
        },
        app,
        request,
    )
    .await
    .map_err(|e| crate::error::admin_error(e, "policy"))
}

/// A user's recorded policy decisions, newest first (the values each looked at included).
pub async fn policy_decisions(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    limit: i64,
) -> Result<Vec<serde_json::Value>, ServerError> {
    crate::domain::policy::decisions(db, app, user, limit)
        .await
        .map_err(|e| crate::error::admin_error(e, "user"))
}

/// Replaces the application's attestation settings (checked as the customer API checks them);
/// returns them as stored.
pub async fn set_attestation_settings(
    db: &Database,
    app: &ApplicationId,
    settings: tessera_protocol::api::AttestationSettings,
) -> Result<tessera_protocol::api::AttestationSettings, ServerError> {
    crate::domain::attestation::settings::set(db, app, settings)
        .await
        .map_err(|e| crate::error::admin_error(e, "application"))
}

/// Grants (or replaces) a user's bypass from the admin command line: recorded in the audit log
/// with the admin as actor, at most `max_seconds` long. See `docs/bypass-and-recovery.md`.
pub async fn set_bypass(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    request: &tessera_protocol::bypass::SetBypassRequest,
    max_seconds: u32,
    now_ms: i64,
) -> Result<tessera_protocol::bypass::BypassStatus, ServerError> {
    crate::domain::bypass::grant_in(
        db,
        &crate::ip_table::IpTable::default(),
        max_seconds,
        app,
        user,
        request,
        crate::domain::bypass::Granter::Admin,
        now_ms,
    )
    .await
    .map_err(|e| crate::error::admin_error(e, "user"))
}

/// A user's bypass as it stands at `now`.
pub async fn bypass(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    now: i64,
) -> Result<tessera_protocol::bypass::BypassStatus, ServerError> {
    crate::domain::bypass::status_in(db, app, user, now)
        .await
        .map_err(|e| crate::error::admin_error(e, "user"))
}

/// Ends a user's bypass now (recorded in the audit log).
pub async fn clear_bypass(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    now_ms: i64,
) -> Result<tessera_protocol::bypass::BypassStatus, ServerError> {
    crate::domain::bypass::clear_in(
        db,
        &crate::ip_table::IpTable::default(),
        app,
        user,
        crate::domain::bypass::Granter::Admin,
        now_ms,
    )
    .await
    .map_err(|e| crate::error::admin_error(e, "user"))
}

/// Issues ten new recovery codes for a user (shown once), revoking the old ones.
pub async fn issue_recovery_codes(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    now_ms: i64,
) -> Result<tessera_protocol::bypass::RecoveryCodesIssued, ServerError> {
    crate::domain::bypass::issue_codes_in(
        db,
        &crate::ip_table::IpTable::default(),
        app,
        user,
        crate::domain::bypass::Granter::Admin,
        now_ms,
    )
    .await
    .map_err(|e| crate::error::admin_error(e, "user"))
}

/// FIDO2 settings from the command line's words (`required`/`preferred`, `none`/`direct`).
pub fn fido_settings_from_args(
    rp_id: Option<String>,
    allowed_origins: Vec<String>,
    user_verification: &str,
    attestation: &str,
    allowed_aaguids: Vec<String>,
    discoverable_credentials: bool,
) -> Result<tessera_protocol::fido::FidoSettings, ServerError> {
    use tessera_protocol::fido::{FidoAttestation, FidoUserVerification};
    let user_verification = match user_verification {
        "required" => FidoUserVerification::Required,
        "preferred" => FidoUserVerification::Preferred,
        _ => {
            return Err(ServerError::InvalidInput(
                "--user-verification must be required or preferred".into(),
            ));
        }
    };
    let attestation = match attestation {
        "none" => FidoAttestation::None,
        "direct" => FidoAttestation::Direct,
        _ => {
            return Err(ServerError::InvalidInput(
                "--attestation must be none or direct".into(),
            ));
        }
    };
    Ok(tessera_protocol::fido::FidoSettings {
        rp_id,
        allowed_origins,
        user_verification,
        attestation,
        allowed_aaguids,
        discoverable_credentials,
    })
}

/// The application's FIDO2 settings.
pub async fn fido_settings(
    db: &Database,
    app: &ApplicationId,
) -> Result<tessera_protocol::fido::FidoSettings, ServerError> {
    crate::domain::fido::settings::get(db, app)
        .await
        .map_err(|e| crate::error::admin_error(e, "application"))
}

/// Replaces the application's FIDO2 settings (checked as the customer API checks them).
pub async fn set_fido_settings(
    db: &Database,
    app: &ApplicationId,
    settings: tessera_protocol::fido::FidoSettings,
) -> Result<tessera_protocol::fido::FidoSettings, ServerError> {
    crate::domain::fido::settings::set(db, app, settings)
        .await
        .map_err(|e| crate::error::admin_error(e, "application"))
}

#[cfg(test)]
mod tests {
    use tessera_protocol::ids::UserId;

    use crate::domain::testing::TestDomain;
    use crate::error::ServerError;

    /// `tessera-server admin create-user` holds a new user to the same rule.
    #[tokio::test]
    async fn the_admin_command_refuses_the_same_users() {
        let domain = TestDomain::sqlite().await;
        let app = &domain.app.id;
        let db = &domain.ctx.db;
        let rlo: UserId = "a\u{202E}b".parse().expect("user id");
        let alice: UserId = "alice".parse().expect("user id");
        for (id, name) in [(&rlo, None), (&alice, Some("Alice \u{202E}nimda"))] {
            assert!(
                matches!(
                    super::create_user(db, app, id, name).await,
                    Err(ServerError::InvalidInput(_))
                ),
                "{id:?} {name:?}"
            );
        }
        assert!(
            crate::store::users::list(db, app)
                .await
                .expect("listed")
                .is_empty()
        );
        super::create_user(db, app, &alice, Some("Alice Müller"))
            .await
            .expect("created");
    }
}
