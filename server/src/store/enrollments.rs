//! Enrollments: devices paired with users.

use sqlx::Row;
use tessera_protocol::api::{DeviceRecord, EnrollmentState};
use tessera_protocol::ids::{ApplicationId, AuthenticationId, DeviceId, EnrollmentId, UserId};
use tessera_protocol::jwk::PublicJwk;
use tessera_protocol::pairing::{DeviceInfo, DeviceSignals, PushRegistration};

use super::Database;
use super::users::UserLock;
use crate::store::StoreError;

/// An enrollment as stored.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// Its id.
    pub enrollment_id: EnrollmentId,
    /// The application.
    pub application_id: ApplicationId,
    /// The user.
    pub user_id: UserId,
    /// The device installation.
    pub device_id: DeviceId,
    /// The possession key.
    pub possession_key: PublicJwk,
    /// The user-verification key.
    pub user_verification_key: PublicJwk,
    /// What the device says about itself.
    pub device_info: DeviceInfo,
    /// Posture signals.
    pub signals: DeviceSignals,
    /// How to push to it.
    pub push: PushRegistration,
    /// Whether it is the user's primary device.
    pub is_primary: bool,
    /// Envelope digest of the registration that created it.
    pub registration_digest: String,
    /// The signed pairing reply it was given.
    pub server_payload: String,
    /// When it was paired.
    pub paired_at: i64,
    /// When the device last called.
    pub last_seen_at: i64,
    /// Active, waiting for the primary device's approval, or rejected.
    pub status: EnrollmentState,
    /// While pending verification: the authentication sent to the primary device.
    pub verification_id: Option<AuthenticationId>,
    /// When FCM or APNs said the push token is no longer valid; `None` while it is usable.
    /// Cleared when the device registers a new token.
    pub push_stale_at: Option<i64>,
    /// RFC 7638 thumbprint of the device key the registration proved (the device's identity;
    /// `device_id` is derived from it). `None` for enrollments paired before device keys
    /// existed: those are never replaced by a registration.
    pub device_key_thumbprint: Option<String>,
    /// What the pairing's platform attestation proved; `None`: nothing verified.
    pub attestation: Option<tessera_protocol::api::EnrollmentAttestation>,
    /// The App Attest key its pairing attested, with the highest assertion counter accepted as
    /// read; `None` for Android and for enrollments not App Attested. Later counters are taken
    /// by [`take_app_attest_counter`], never by rewriting the enrollment.
    pub app_attest: Option<AppAttestKey>,
}

impl Enrollment {
    /// The customer API's view.
    pub fn record(&self) -> DeviceRecord {
        DeviceRecord {
            enrollment_id: self.enrollment_id.clone(),
            device_id: self.device_id.clone(),
            user_id: self.user_id.clone(),
            device: self.device_info.clone(),
            signals: self.signals,
            push_provider: self.push.provider().to_string(),
            push_token_stale: self.push_stale_at.is_some(),
            primary: self.is_primary,
            status: self.status,
            paired_at: self.paired_at,
            last_seen_at: self.last_seen_at,
            attestation: self.attestation.clone(),
        }
    }
}

const COLUMNS: &str = "enrollment_id, application_id, user_id, device_id, possession_key, \
    user_verification_key, device_info, signals, push, push_provider, is_primary, \
    registration_digest, server_payload, paired_at, last_seen_at, status, verification_id, \
    push_stale_at, device_key_thumbprint, attestation, app_attest_public_key, app_attest_counter";

/// The columns [`from_row`] reads, of the table named `alias` in a join (`alias.column`),
/// leaving out those in `given`: columns the join selects from another table under the same
/// name and value (a user's `application_id` and `user_id`).
pub(crate) fn columns_of(alias: &str, given: &[&str]) -> String {
    super::qualified_columns(COLUMNS, alias, given)
}

fn json<T: serde::de::DeserializeOwned>(
    row: &sqlx::any::AnyRow,
    col: &'static str,
) -> Result<T, StoreError> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|_| StoreError::Corrupted(col))
}

fn parse<T: std::str::FromStr>(
    row: &sqlx::any::AnyRow,
    col: &'static str,
) -> Result<T, StoreError> {
    let text: String = row.try_get(col)?;
    text.parse().map_err(|_| StoreError::Corrupted(col))
}

/// The enrollment a row selecting the columns of [`COLUMNS`] (or [`columns_of`]) holds.
pub(crate) fn from_row(row: &sqlx::any::AnyRow) -> Result<Enrollment, StoreError> {
    Ok(Enrollment {
        enrollment_id: parse(row, "enrollment_id")?,
        application_id: parse(row, "application_id")?,
        user_id: parse(row, "user_id")?,
        device_id: parse(row, "device_id")?,
        possession_key: json(row, "possession_key")?,
        user_verification_key: json(row, "user_verification_key")?,
        device_info: json(row, "device_info")?,
        signals: json(row, "signals")?,
        push: json(row, "push")?,
        is_primary: row.try_get::<i64, _>("is_primary")? != 0,
        registration_digest: row.try_get("registration_digest")?,
        server_payload: row.try_get("server_payload")?,
        paired_at: row.try_get("paired_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        status: EnrollmentState::parse(&row.try_get::<String, _>("status")?)
            .ok_or(StoreError::Corrupted("status"))?,
        verification_id: row
            .try_get::<Option<String>, _>("verification_id")?
            .map(|v| {
                v.parse()
                    .map_err(|_| StoreError::Corrupted("verification_id"))
            })
            .transpose()?,
        push_stale_at: row.try_get("push_stale_at")?,
        device_key_thumbprint: row.try_get("device_key_thumbprint")?,
        attestation: row
            .try_get::<Option<String>, _>("attestation")?
            .map(|text| {
                serde_json::from_str(&text).map_err(|_| StoreError::Corrupted("attestation"))
            })
            .transpose()?,
        app_attest: app_attest_from_row(row)?,
    })
}

/// The App Attest key of a row selecting `app_attest_public_key` and `app_attest_counter`.
fn app_attest_from_row(row: &sqlx::any::AnyRow) -> Result<Option<AppAttestKey>, StoreError> {
    use base64::Engine;
    let Some(encoded) = row.try_get::<Option<String>, _>("app_attest_public_key")? else {
        return Ok(None);
    };
    let counter: Option<i64> = row.try_get("app_attest_counter")?;
    let public_key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| StoreError::Corrupted("an App Attest key is not base64url"))?;
    let counter = u32::try_from(counter.unwrap_or(0))
        .map_err(|_| StoreError::Corrupted("an App Attest counter is out of range"))?;
    Ok(Some(AppAttestKey {
        public_key,
        counter,
    }))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|_| StoreError::Corrupted("encode"))
}

/// Inserts an enrollment (inside the pairing transaction).
pub async fn insert(
    conn: &mut crate::store::WriteConn<'_>,
    e: &Enrollment,
) -> Result<(), sqlx::Error> {
    let encode =
        |r: Result<String, StoreError>| r.map_err(|_| sqlx::Error::Protocol("encode".into()));
    sqlx::query(&format!(
        "INSERT INTO enrollments ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)"
    ))
    .bind(e.enrollment_id.as_str())
    .bind(e.application_id.as_str())
    .bind(e.user_id.as_str())
    .bind(e.device_id.as_str())
    .bind(encode(to_json(&e.possession_key))?)
    .bind(encode(to_json(&e.user_verification_key))?)
    .bind(encode(to_json(&e.device_info))?)
    .bind(encode(to_json(&e.signals))?)
    .bind(encode(to_json(&e.push))?)
    .bind(e.push.provider())
    .bind(i64::from(e.is_primary))
    .bind(&e.registration_digest)
    .bind(&e.server_payload)
    .bind(e.paired_at)
    .bind(e.last_seen_at)
    .bind(e.status.as_str())
    .bind(e.verification_id.as_ref().map(AuthenticationId::as_str))
    .bind(e.push_stale_at)
    .bind(e.device_key_thumbprint.as_deref())
    .bind(
        e.attestation
            .as_ref()
            .map(|a| encode(to_json(a)))
            .transpose()?,
    )
    .bind(e.app_attest.as_ref().map(|k| encode_app_attest_key(&k.public_key)))
    .bind(e.app_attest.as_ref().map(|k| i64::from(k.counter)))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes the user's earlier enrollments of the same device (re-pairing replaces them): the
/// same device id *and* the same proven device key, never a claimed id alone (an enrollment
/// without a device key is never matched). An enrollment of the same registration
/// (`registration_digest`) is not an earlier one: it is the same pairing, made by a copy of the
/// request sent at the same time, and the insert that follows then fails on the unique digest.
/// Returns whether a deleted one was primary, and the pending requests they failed (a request
/// whose expiry was already recorded, `expiry_reported`, has ended and is left as it is).
pub async fn delete_same_device(
    conn: &mut crate::store::WriteConn<'_>,
    app: &ApplicationId,
    user: &UserId,
    device: &DeviceId,
    device_key_thumbprint: &str,
    registration_digest: &str,
) -> Result<(bool, Vec<AuthenticationId>), sqlx::Error> {
    let failed = sqlx::query(
        "UPDATE authentications SET state = 'failed', failure_reason = 'device_unpaired' \
         WHERE state = 'pending' AND expiry_reported = 0 \
         AND enrollment_id IN (SELECT enrollment_id FROM enrollments \
         WHERE application_id = $1 AND user_id = $2 AND device_id = $3 \
         AND device_key_thumbprint = $4 AND registration_digest <> $5) RETURNING id",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .bind(device.as_str())
    .bind(device_key_thumbprint)
    .bind(registration_digest)
    .fetch_all(&mut *conn)
    .await?;
    let failed = failed_ids(&failed);
    let rows = sqlx::query(
        "DELETE FROM enrollments WHERE application_id = $1 AND user_id = $2 AND device_id = $3 \
         AND device_key_thumbprint = $4 AND registration_digest <> $5 \
         RETURNING is_primary, status",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .bind(device.as_str())
    .bind(device_key_thumbprint)
    .bind(registration_digest)
    .fetch_all(&mut *conn)
    .await?;
    Ok((replaced_the_primary(&rows)?, failed))
}

/// The ids of the requests a statement `RETURNING id` failed. Ids this server wrote; one it
/// cannot read is skipped, not fatal to the write that replaced the device.
fn failed_ids(rows: &[sqlx::any::AnyRow]) -> Vec<AuthenticationId> {
    rows.iter()
        .filter_map(|r| r.try_get::<String, _>("id").ok()?.parse().ok())
        .collect()
}

/// The user's active enrollments (in the pairing transaction), oldest first: what a device
/// verification prompt counts and compares against.
pub async fn active_for_user(
    conn: &mut crate::store::WriteConn<'_>,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Vec<Enrollment>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM enrollments WHERE application_id = $1 AND user_id = $2 \
         AND status = 'active' ORDER BY paired_at, enrollment_id"
    ))
    .bind(app.as_str())
    .bind(user.as_str())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Whether deleted enrollments (rows `RETURNING is_primary, status`) held the user's primary
/// device: only an active one counts. A flag left on a device that never became active (stored
/// before non-active devices were kept from it) must not pass to its replacement, or the user
/// would have two primary devices.
fn replaced_the_primary(rows: &[sqlx::any::AnyRow]) -> Result<bool, sqlx::Error> {
    let mut was_primary = false;
    for r in rows {
        let active = r.try_get::<String, _>("status")? == EnrollmentState::Active.as_str();
        was_primary |= active && r.try_get::<i64, _>("is_primary")? != 0;
    }
    Ok(was_primary)
}

/// Whether the user has an active primary device. A device pending verification (by the
/// primary device, or held for a passcode) or rejected is never primary: were it counted, a
/// user whose only "primary" was such a device would have no device to verify new ones, and
/// every later device would pair without approval.
pub async fn has_primary(
    conn: &mut crate::store::WriteConn<'_>,
    app: &ApplicationId,
    user: &UserId,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query(
        "SELECT 1 AS one FROM enrollments WHERE application_id = $1 AND user_id = $2 \
         AND is_primary = 1 AND status = 'active'",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.is_some())
}

/// The user's active primary enrollment, if any.
pub async fn primary(
    conn: &mut crate::store::WriteConn<'_>,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Option<Enrollment>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM enrollments WHERE application_id = $1 AND user_id = $2 \
         AND is_primary = 1 AND status = 'active'"
    ))
    .bind(app.as_str())
    .bind(user.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// The enrollment a registration created.
pub async fn by_registration_digest(
    db: &Database,
    digest: &str,
) -> Result<Option<Enrollment>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM enrollments WHERE registration_digest = $1"
    ))
    .bind(digest)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// What [`by_id`] selects from (its statement: the columns, then this).
pub(crate) const BY_ID: &str = "FROM enrollments WHERE enrollment_id = $1";

/// One enrollment.
pub async fn by_id(db: &Database, id: &EnrollmentId) -> Result<Option<Enrollment>, StoreError> {
    by_id_on(db.pool(), id).await
}

/// [`by_id`] on `executor` (a request's connection, or a transaction).
pub async fn by_id_on<'e, E>(
    executor: E,
    id: &EnrollmentId,
) -> Result<Option<Enrollment>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(&format!("SELECT {COLUMNS} {BY_ID}"))
        .bind(id.as_str())
        .fetch_optional(executor)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// What [`list_for_user`] selects from (its statement: the columns, then this).
pub(crate) const FOR_USER: &str = "FROM enrollments WHERE application_id = $1 AND user_id = $2 \
    AND status <> 'rejected' ORDER BY paired_at, enrollment_id";

/// A user's enrollments, active and pending verification (not rejected), oldest first.
pub async fn list_for_user(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Vec<Enrollment>, StoreError> {
    list_for_user_on(db.pool(), app, user).await
}

/// [`list_for_user`] on `executor` (a request's connection).
pub async fn list_for_user_on<'e, E>(
    executor: E,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Vec<Enrollment>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(&format!("SELECT {COLUMNS} {FOR_USER}"))
        .bind(app.as_str())
        .bind(user.as_str())
        .fetch_all(executor)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Deletes an enrollment of the given application (and user, if given); if it was the user's
/// primary device, the oldest remaining active one becomes primary; requests still pending for
/// it become `failed` (`device_unpaired`); if the user has no active device left, the OpenID
/// tokens issued for them go too. Returns `None` if it did not exist, else what it did.
pub async fn delete(
    db: &Database,
    app: &ApplicationId,
    user: Option<&UserId>,
    id: &EnrollmentId,
) -> Result<Option<Unpaired>, StoreError> {
    let mut tx = db.write().await?;
    // The user is locked before the enrollment: the choice of the next primary device takes
    // turns with every other write that decides one (pairings, activations, a change of
    // primary, another unpairing), which lock the user first too. Two unpairings at once could
    // otherwise each see the other's device still primary and promote none.
    let Some(holder) = sqlx::query(
        "SELECT user_id FROM enrollments WHERE enrollment_id = $1 AND application_id = $2 \
         AND ($3 = '' OR user_id = $3)",
    )
    .bind(id.as_str())
    .bind(app.as_str())
    .bind(user.map(UserId::as_str).unwrap_or(""))
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    let user_id: String = holder.try_get("user_id")?;
    let holder_id =
        UserId::try_from(user_id.clone()).map_err(|_| StoreError::Corrupted("user id"))?;
    super::users::lock(&mut *tx, db.engine(), app, &holder_id, UserLock::TakesTurns).await?;
    let row = sqlx::query(
        "DELETE FROM enrollments WHERE enrollment_id = $1 AND application_id = $2 \
         AND user_id = $3 RETURNING user_id",
    )
    .bind(id.as_str())
    .bind(app.as_str())
    .bind(&user_id)
    .fetch_optional(&mut *tx)
    .await?;
    if row.is_none() {
        // Unpaired by another write meanwhile.
        return Ok(None);
    }
    // Requests still waiting for this device can no longer be answered.
    let failed = sqlx::query(
        "UPDATE authentications SET state = 'failed', failure_reason = 'device_unpaired' \
         WHERE enrollment_id = $1 AND state = 'pending' AND expiry_reported = 0 RETURNING id",
    )
    .bind(id.as_str())
    .fetch_all(&mut *tx)
    .await?;
    let failed = failed
        .iter()
        .map(|r| {
            r.try_get::<String, _>("id")?
                .parse::<AuthenticationId>()
                .map_err(|_| StoreError::Corrupted("authentication id"))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    promote_if_no_primary(&mut tx, app, &holder_id).await?;
    // The user's tokens stood for their devices: with the last active one gone, they go in the
    // same write. A grant issuing tokens locks the user too, so it issued them before (and they
    // go here) or finds no device after.
    let tokens_revoked =
        super::oidc_tokens::revoke_without_device_in(&mut *tx, app, &holder_id).await?;
    tx.commit().await?;
    Ok(Some(Unpaired {
        failed,
        tokens_revoked,
    }))
}

/// Makes the user's oldest active enrollment primary when no active one is (the user's primary
/// device was unpaired, or a device that took its place was rejected). Run it under the user's
/// lock ([`super::users::lock`], [`UserLock::TakesTurns`]), as every write that chooses the
/// primary device does.
async fn promote_if_no_primary(
    conn: &mut crate::store::WriteConn<'_>,
    app: &ApplicationId,
    user: &UserId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE enrollments SET is_primary = 1 WHERE enrollment_id = ( \
           SELECT enrollment_id FROM enrollments WHERE application_id = $1 AND user_id = $2 \
           AND status = 'active' ORDER BY paired_at, enrollment_id LIMIT 1) \
         AND NOT EXISTS (SELECT 1 FROM enrollments WHERE application_id = $1 AND user_id = $2 \
           AND is_primary = 1 AND status = 'active')",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// What an unpairing ([`delete`]) did besides removing the enrollment.
#[derive(Debug, Default)]
pub struct Unpaired {
    /// The pending requests addressed to the device, failed.
    pub failed: Vec<AuthenticationId>,
    /// The OpenID tokens revoked because the user has no active device left.
    pub tokens_revoked: u64,
}

/// How precisely "last seen" is kept: a device calling again within this many seconds writes
/// nothing.
pub const LAST_SEEN_RESOLUTION: i64 = 60;

/// The statement of [`touch`].
pub(crate) const TOUCH: &str =
    "UPDATE enrollments SET last_seen_at = $1 WHERE enrollment_id = $2 AND last_seen_at <= $1 - $3";

/// Records that the device called (at most once per [`LAST_SEEN_RESOLUTION`]: a device's
/// long-polls and answers do not each write).
pub async fn touch(db: &Database, id: &EnrollmentId, now: i64) -> Result<(), StoreError> {
    touch_on(db.writer(), id, now).await
}

/// [`touch`] on `executor` (inside a request's transaction).
pub async fn touch_on<'e, E>(executor: E, id: &EnrollmentId, now: i64) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(TOUCH)
        .bind(now)
        .bind(id.as_str())
        .bind(LAST_SEEN_RESOLUTION)
        .execute(executor)
        .await?;
    Ok(())
}

/// Makes one of the user's active enrollments the primary device (and no other). Returns false
/// if the user has no such active enrollment.
pub async fn set_primary(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    id: &EnrollmentId,
) -> Result<bool, StoreError> {
    let mut tx = db.write().await?;
    // Lock the user first: on PostgreSQL every write that decides the primary device for one
    // user then takes turns (SQLite's one writer already runs them one at a time).
    super::users::lock(&mut *tx, db.engine(), app, user, UserLock::TakesTurns).await?;
    let exists = sqlx::query(
        "SELECT 1 AS one FROM enrollments WHERE application_id = $1 AND user_id = $2 \
         AND enrollment_id = $3 AND status = 'active'",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .bind(id.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    if exists.is_none() {
        // Not the user's device: the transaction is dropped and every flag stays as it was.
        return Ok(false);
    }
    sqlx::query(
        "UPDATE enrollments SET is_primary = CASE WHEN enrollment_id = $3 THEN 1 ELSE 0 END \
         WHERE application_id = $1 AND user_id = $2",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .bind(id.as_str())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// The look-up [`activate_verified`] starts with (every approved authentication runs it).
pub(crate) const VERIFICATION_WAITING: &str = "SELECT application_id, user_id FROM enrollments WHERE verification_id = $1 AND status = 'pending_verification'";

/// Activates the enrollment that the approved authentication `verification` verified: the
/// device's earlier enrollments for the same user (same device id and same proven device key)
/// are replaced (as a re-pairing replaces them), and it becomes primary if it replaced the
/// primary device or the user has none. The requests still pending for the replaced
/// enrollments fail (`device_unpaired`) in the same write, as a re-pairing fails them; a request
/// whose expiry was already recorded (`expiry_reported`) has ended and is left as it is.
/// Returns the enrollment that was waiting for it, if any, with the requests it failed (for the
/// caller to announce once committed).
pub async fn activate_verified(
    db: &Database,
    verification: &AuthenticationId,
) -> Result<Option<Activated>, StoreError> {
    // Every approved authentication comes here, and almost none verifies a device: look on a
    // reader first (indexed), so they cost no write transaction. The pending enrollment is
    // committed before its verification request exists, so a miss here is final.
    let Some(waiting) = sqlx::query(VERIFICATION_WAITING)
        .bind(verification.as_str())
        .fetch_optional(db.pool())
        .await?
    else {
        return Ok(None);
    };
    let app: ApplicationId = waiting
        .try_get::<String, _>("application_id")?
        .parse()
        .map_err(|_| StoreError::Corrupted("application id"))?;
    let user = UserId::try_from(waiting.try_get::<String, _>("user_id")?)
        .map_err(|_| StoreError::Corrupted("user id"))?;
    let mut tx = db.write().await?;
    // Lock the user first: on PostgreSQL a concurrent activation (the follow-up and a lazy
    // settle on read) then waits and finds it active, and the choice of primary below takes
    // turns with every other write that makes one (SQLite's one writer already runs them one
    // at a time).
    super::users::lock(&mut *tx, db.engine(), &app, &user, UserLock::TakesTurns).await?;
    // The pending enrollment is activated first, by one conditional update, and nothing else is
    // written unless it changed: a rejection of the same enrollment (the verification read as
    // expired by a status poll, [`reject_verified`]) takes no user lock, and on PostgreSQL it
    // may commit after a read here and before the writes below. Had the device's earlier
    // enrollments been deleted first, it would be left with neither.
    let row = sqlx::query(&format!(
        "UPDATE enrollments SET status = 'active', verification_id = NULL, is_primary = 0 \
         WHERE verification_id = $1 AND status = 'pending_verification' RETURNING {COLUMNS}"
    ))
    .bind(verification.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(activated) = row.as_ref().map(from_row).transpose()? else {
        // Activated or rejected meanwhile: the transaction is dropped, nothing written.
        return Ok(None);
    };
    let failed = sqlx::query(
        "UPDATE authentications SET state = 'failed', failure_reason = 'device_unpaired' \
         WHERE state = 'pending' AND expiry_reported = 0 \
         AND enrollment_id IN (SELECT enrollment_id FROM enrollments \
         WHERE application_id = $1 AND user_id = $2 AND device_id = $3 AND enrollment_id <> $4 \
         AND device_key_thumbprint = $5) RETURNING id",
    )
    .bind(activated.application_id.as_str())
    .bind(activated.user_id.as_str())
    .bind(activated.device_id.as_str())
    .bind(activated.enrollment_id.as_str())
    .bind(activated.device_key_thumbprint.as_deref())
    .fetch_all(&mut *tx)
    .await?;
    let failed = failed_ids(&failed);
    let replaced = sqlx::query(
        "DELETE FROM enrollments WHERE application_id = $1 AND user_id = $2 AND device_id = $3 \
         AND enrollment_id <> $4 AND device_key_thumbprint = $5 RETURNING is_primary, status",
    )
    .bind(activated.application_id.as_str())
    .bind(activated.user_id.as_str())
    .bind(activated.device_id.as_str())
    .bind(activated.enrollment_id.as_str())
    .bind(activated.device_key_thumbprint.as_deref())
    .fetch_all(&mut *tx)
    .await?;
    // The activated enrollment is not primary yet, so `has_primary` looks at the others only.
    let primary = replaced_the_primary(&replaced)?
        || !has_primary(&mut tx, &activated.application_id, &activated.user_id).await?;
    if primary {
        sqlx::query("UPDATE enrollments SET is_primary = 1 WHERE enrollment_id = $1")
            .bind(activated.enrollment_id.as_str())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Some(Activated {
        enrollment: activated.enrollment_id,
        failed,
    }))
}

/// What [`activate_verified`] did.
#[derive(Debug)]
pub struct Activated {
    /// The enrollment that was waiting for the verification, now active.
    pub enrollment: EnrollmentId,
    /// The requests pending for the device's replaced enrollments, failed (`device_unpaired`).
    pub failed: Vec<AuthenticationId>,
}

/// The statement of [`reject_verified`] and [`reject_verified_in`].
const REJECT_VERIFIED: &str = "UPDATE enrollments SET status = 'rejected', \
    verification_id = NULL, is_primary = 0 \
    WHERE verification_id = $1 AND status = 'pending_verification' RETURNING enrollment_id";

/// Rejects the enrollment waiting for the authentication `verification` (denied, failed, gone,
/// or expired with its expiry claimed: see [`claim_verification_expiry`]). Returns the
/// enrollment that was waiting, if any.
pub async fn reject_verified(
    db: &Database,
    verification: &AuthenticationId,
) -> Result<Option<EnrollmentId>, StoreError> {
    let row = sqlx::query(REJECT_VERIFIED)
        .bind(verification.as_str())
        .fetch_optional(db.writer())
        .await?;
    rejected_enrollment(row)
}

/// [`reject_verified`] inside the write `conn` (the one that claimed the expiry).
pub async fn reject_verified_in(
    conn: &mut crate::store::WriteConn<'_>,
    verification: &AuthenticationId,
) -> Result<Option<EnrollmentId>, StoreError> {
    let row = sqlx::query(REJECT_VERIFIED)
        .bind(verification.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    rejected_enrollment(row)
}

/// The enrollment id a [`REJECT_VERIFIED`] returned.
fn rejected_enrollment(row: Option<sqlx::any::AnyRow>) -> Result<Option<EnrollmentId>, StoreError> {
    row.map(|r| {
        r.try_get::<String, _>("enrollment_id")?
            .parse()
            .map_err(|_| StoreError::Corrupted("enrollment id"))
    })
    .transpose()
}

/// What [`claim_verification_expiry`] found of a verification request that read as expired.
#[derive(Debug)]
pub enum VerificationExpiry {
    /// Its expiry is claimed by this write, which records it (as the expiry sweep records what
    /// it claims): no answer can be recorded any more.
    Claimed(Box<super::authentications::Authentication>),
    /// Final already: its expiry was claimed before (by the sweep, or another read), or the
    /// request is gone. Nothing is left to record.
    AlreadyFinal,
    /// Not expired: it was answered (or ended otherwise) before its expiry could be claimed, or
    /// its expiry is not reached by `now`. What is stored stands.
    NotExpired,
}

/// Claims the expiry of the verification request `verification`, inside the write `conn`, as
/// the expiry sweep claims expiries (`expiry_reported`): a request read as expired (pending,
/// past its expiry) may still be answered by an answer whose time was read before the expiry,
/// and only a claimed expiry keeps every answer from being recorded. Its enrollment is rejected
/// only then; rejected on the read alone, it could be rejected while its request ends approved.
pub async fn claim_verification_expiry(
    conn: &mut crate::store::WriteConn<'_>,
    verification: &AuthenticationId,
    now: i64,
) -> Result<VerificationExpiry, StoreError> {
    let claimed = sqlx::query(&format!(
        "UPDATE authentications SET expiry_reported = 1 WHERE id = $1 AND {} RETURNING {}",
        super::authentications::unreported_expired(2),
        super::authentications::READ_COLUMNS
    ))
    .bind(verification.as_str())
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = claimed {
        return Ok(VerificationExpiry::Claimed(Box::new(
            super::authentications::from_row(&row, now)?,
        )));
    }
    // On PostgreSQL the update above waited for an answer under way and then found it recorded;
    // this read, a statement of its own, sees it committed.
    let stored = sqlx::query("SELECT state, expiry_reported FROM authentications WHERE id = $1")
        .bind(verification.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(stored) = stored else {
        return Ok(VerificationExpiry::AlreadyFinal);
    };
    let state: String = stored.try_get("state")?;
    let expiry_reported: i64 = stored.try_get("expiry_reported")?;
    Ok(if state == "pending" && expiry_reported != 0 {
        VerificationExpiry::AlreadyFinal
    } else {
        VerificationExpiry::NotExpired
    })
}

/// Marks the enrollment's push token stale (FCM or APNs said it is no longer valid), unless the
/// device has registered another one since `push` was read.
pub async fn mark_push_stale(
    db: &Database,
    id: &EnrollmentId,
    push: &PushRegistration,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE enrollments SET push_stale_at = $1 \
         WHERE enrollment_id = $2 AND push = $3 AND push_stale_at IS NULL",
    )
    .bind(now)
    .bind(id.as_str())
    .bind(to_json(push)?)
    .execute(db.writer())
    .await?;
    Ok(())
}

/// Records the device info and signals a device's signed answer reported, if the stored device
/// info is still `expected` (a conditional update: of two answers racing with different
/// versions, the one written first stays until the device's next answer). Returns whether it
/// was written.
pub async fn set_reported_state(
    db: &Database,
    id: &EnrollmentId,
    expected: &DeviceInfo,
    device_info: &DeviceInfo,
    signals: &DeviceSignals,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE enrollments SET device_info = $1, signals = $2 \
         WHERE enrollment_id = $3 AND device_info = $4",
    )
    .bind(to_json(device_info)?)
    .bind(to_json(signals)?)
    .bind(id.as_str())
    .bind(to_json(expected)?)
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Replaces the enrollment's push registration (the device registered a fresh token) and clears
/// the stale mark. Returns false if there is no such enrollment.
pub async fn set_push(
    db: &Database,
    id: &EnrollmentId,
    push: &PushRegistration,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE enrollments SET push = $1, push_provider = $2, push_stale_at = NULL \
         WHERE enrollment_id = $3",
    )
    .bind(to_json(push)?)
    .bind(push.provider())
    .bind(id.as_str())
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Sets the status (`active` or `rejected`) of an enrollment held `pending_verification` with
/// no verification request (a new device a flow approves by passcode). Returns false when it is
/// not held (any more): the one conditional update decides a race.
///
/// A held device is never primary. Activated, it becomes primary if the user has no active
/// primary device then; rejected, it leaves the user's oldest active device primary if none is
/// (its pairing may have replaced the primary device's earlier enrollment). Either choice is
/// made under the user's lock, taking turns with every other write that chooses one.
pub async fn set_held_status(
    db: &Database,
    id: &EnrollmentId,
    status: EnrollmentState,
) -> Result<bool, StoreError> {
    let mut tx = db.write().await?;
    let Some(holder) =
        sqlx::query("SELECT application_id, user_id FROM enrollments WHERE enrollment_id = $1")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?
    else {
        return Ok(false);
    };
    let app: ApplicationId = holder
        .try_get::<String, _>("application_id")?
        .parse()
        .map_err(|_| StoreError::Corrupted("application id"))?;
    let user = UserId::try_from(holder.try_get::<String, _>("user_id")?)
        .map_err(|_| StoreError::Corrupted("user id"))?;
    if !super::users::lock(&mut *tx, db.engine(), &app, &user, UserLock::TakesTurns).await? {
        // The user was deleted, and the enrollment with them.
        return Ok(false);
    }
    let done = sqlx::query(
        "UPDATE enrollments SET status = $1, is_primary = CASE WHEN $1 = 'active' \
           AND NOT EXISTS (SELECT 1 FROM enrollments WHERE application_id = $3 AND user_id = $4 \
             AND is_primary = 1 AND status = 'active') THEN 1 ELSE 0 END \
         WHERE enrollment_id = $2 AND status = 'pending_verification' AND verification_id IS NULL",
    )
    .bind(status.as_str())
    .bind(id.as_str())
    .bind(app.as_str())
    .bind(user.as_str())
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    if status != EnrollmentState::Active {
        promote_if_no_primary(&mut tx, &app, &user).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// The App Attest key an enrollment's pairing attested, and the highest assertion counter
/// accepted for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppAttestKey {
    /// The key, an uncompressed SEC1 point (public).
    pub public_key: Vec<u8>,
    /// The highest assertion counter accepted (0: none yet, as the attestation left it).
    pub counter: u32,
}

/// An App Attest public key as stored (base64url, no padding).
fn encode_app_attest_key(public_key: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public_key)
}

/// Takes an App Attest assertion's counter for enrollment `id`: stores `counter` only where the
/// stored one is lower, in one conditional update (run it inside the answer's transaction).
/// `false`: the stored counter is already `counter` or higher (a replay, or a racing answer
/// with the same counter took it first) and nothing changed.
pub async fn take_app_attest_counter(
    conn: &mut crate::store::WriteConn<'_>,
    id: &EnrollmentId,
    counter: u32,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE enrollments SET app_attest_counter = $1 \
         WHERE enrollment_id = $2 AND app_attest_public_key IS NOT NULL \
         AND app_attest_counter < $1",
    )
    .bind(i64::from(counter))
    .bind(id.as_str())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn enrollment_row(db: &Database, app: &ApplicationId, id: &EnrollmentId) {
        sqlx::query(
            "INSERT INTO enrollments (enrollment_id, application_id, user_id, device_id, \
             possession_key, user_verification_key, device_info, signals, push, push_provider, \
             is_primary, registration_digest, server_payload, paired_at, last_seen_at) \
             VALUES ($1, $2, 'alice', 'dev', '{}', '{}', '{}', '{}', '{}', 'none', 1, $1, 'p', 0, 0)",
        )
        .bind(id.as_str())
        .bind(app.as_str())
        .execute(db.writer())
        .await
        .expect("enrollment");
    }

    async fn take(db: &Database, id: &EnrollmentId, counter: u32) -> bool {
        let mut tx = db.write().await.expect("transaction");
        let taken = take_app_attest_counter(&mut tx, id, counter)
            .await
            .expect("take");
        tx.commit().await.expect("commit");
        taken
    }

    /// Gives a bare row the App Attest key a pairing would have stored, with counter 0.
    async fn set_app_attest_key(db: &Database, id: &EnrollmentId, public_key: &[u8]) {
        sqlx::query(
            "UPDATE enrollments SET app_attest_public_key = $1, app_attest_counter = 0 \
             WHERE enrollment_id = $2",
        )
        .bind(encode_app_attest_key(public_key))
        .bind(id.as_str())
        .execute(db.writer())
        .await
        .expect("set");
    }

    /// The App Attest key of a row, as an enrollment read decodes it (the rows here are bare:
    /// only the columns these tests need).
    async fn app_attest_key(db: &Database, id: &EnrollmentId) -> Option<AppAttestKey> {
        let row = sqlx::query(
            "SELECT app_attest_public_key, app_attest_counter FROM enrollments \
             WHERE enrollment_id = $1",
        )
        .bind(id.as_str())
        .fetch_one(db.pool())
        .await
        .expect("read");
        app_attest_from_row(&row).expect("decode")
    }

    #[tokio::test]
    async fn the_app_attest_counter_is_taken_once_and_only_upwards() {
        let (_dir, db, app_id) = crate::store::test_db_with_app().await;
        let attested = EnrollmentId::generate();
        let plain = EnrollmentId::generate();
        enrollment_row(&db, &app_id, &attested).await;
        enrollment_row(&db, &app_id, &plain).await;
        let key = vec![4u8; 65];
        set_app_attest_key(&db, &attested, &key).await;
        assert_eq!(
            app_attest_key(&db, &attested).await,
            Some(AppAttestKey {
                public_key: key.clone(),
                counter: 0
            })
        );
        // An enrollment without an App Attest key has none, and takes nothing.
        assert_eq!(app_attest_key(&db, &plain).await, None);
        assert!(!take(&db, &plain, 1).await);
        assert!(take(&db, &attested, 3).await);
        assert!(!take(&db, &attested, 3).await, "the same counter again");
        assert!(!take(&db, &attested, 2).await, "a lower counter");
        assert!(take(&db, &attested, 4).await);
        // A burst of takes of one counter: exactly one wins.
        let takes = (0..8).map(|_| take(&db, &attested, 9));
        let won = futures_util::future::join_all(takes)
            .await
            .into_iter()
            .filter(|t| *t)
            .count();
        assert_eq!(won, 1);
        assert_eq!(
            app_attest_key(&db, &attested).await.map(|k| k.counter),
            Some(9)
        );
        db.close().await;
    }
}
