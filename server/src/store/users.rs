//! Users of an application.

use std::sync::LazyLock;

use sqlx::Row;
use tessera_protocol::api::User;
use tessera_protocol::ids::{ApplicationId, UserId};

use super::{Database, is_unique_violation};
use crate::store::StoreError;

/// Creates a user; `AlreadyExists` if the id is taken in this application.
pub async fn insert(
    db: &Database,
    app: &ApplicationId,
    user_id: &UserId,
    display_name: Option<&str>,
    locale: Option<&str>,
    now: i64,
) -> Result<User, StoreError> {
    let result = sqlx::query(
        "INSERT INTO users (application_id, user_id, display_name, created_at, locale) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(app.as_str())
    .bind(user_id.as_str())
    .bind(display_name)
    .bind(now)
    .bind(locale)
    .execute(db.writer())
    .await;
    match result {
        Ok(_) => Ok(User {
            user_id: user_id.clone(),
            display_name: display_name.map(str::to_string),
            created_at: now,
            device_count: 0,
            locale: locale.map(str::to_string),
        }),
        Err(e) if is_unique_violation(&e) => Err(StoreError::AlreadyExists("user")),
        Err(e) => Err(e.into()),
    }
}

/// The statement of [`get`].
pub(crate) const GET: &str = "SELECT u.user_id, u.display_name, u.created_at, u.locale, \
    (SELECT COUNT(*) FROM enrollments e WHERE e.application_id = u.application_id \
    AND e.user_id = u.user_id) AS devices \
    FROM users u WHERE u.application_id = $1 AND u.user_id = $2";

/// One user with their device count.
pub async fn get(
    db: &Database,
    app: &ApplicationId,
    user_id: &UserId,
) -> Result<Option<User>, StoreError> {
    get_on(db.pool(), app, user_id).await
}

/// [`get`] on `executor` (a request's connection).
pub async fn get_on<'e, E>(
    executor: E,
    app: &ApplicationId,
    user_id: &UserId,
) -> Result<Option<User>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(GET)
        .bind(app.as_str())
        .bind(user_id.as_str())
        .fetch_optional(executor)
        .await?;
    row.as_ref().map(row_to_user).transpose()
}

/// The statement of [`get_with_devices_for_request_on`]: [`GET`] with the user's bypass, if one
/// is stored, and their devices as `enrollments::list_for_user_on` lists them (the conditions and
/// order of `enrollments::FOR_USER`): one row per device, the user's columns on each; one row
/// without a device for a user who has none; no row for no such user.
pub(crate) static GET_WITH_DEVICES_FOR_REQUEST: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT u.user_id, u.application_id, u.display_name, u.created_at, u.locale, \
         (SELECT COUNT(*) FROM enrollments e WHERE e.application_id = u.application_id \
         AND e.user_id = u.user_id) AS devices, b.granted_at AS bypass_granted_at, \
         b.until AS bypass_until, b.reason AS bypass_reason, b.granted_by AS bypass_granted_by, \
         {devices} \
         FROM users u LEFT JOIN user_bypasses b \
         ON b.application_id = u.application_id AND b.user_id = u.user_id \
         LEFT JOIN enrollments d ON d.application_id = u.application_id \
         AND d.user_id = u.user_id AND d.status <> 'rejected' \
         WHERE u.application_id = $1 AND u.user_id = $2 \
         ORDER BY d.paired_at, d.enrollment_id",
        devices = super::enrollments::columns_of("d", &["application_id", "user_id"]),
    )
});

/// What a new request needs of its user, in one read: the user with their device count, their
/// bypass as stored (whether it is still in force is the caller's to judge), and their devices,
/// active and pending verification, oldest first (as `enrollments::list_for_user_on` lists
/// them). `None` when the application has no such user. On PostgreSQL one round trip where the
/// user and the devices were two statements, read in one snapshot.
pub async fn get_with_devices_for_request_on<'e, E>(
    executor: E,
    app: &ApplicationId,
    user_id: &UserId,
) -> Result<Option<(UserForRequest, Vec<super::enrollments::Enrollment>)>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(&GET_WITH_DEVICES_FOR_REQUEST)
        .bind(app.as_str())
        .bind(user_id.as_str())
        .fetch_all(executor)
        .await?;
    super::one_with_joined(
        &rows,
        "enrollment_id",
        |first| {
            let bypass = match first.try_get::<Option<i64>, _>("bypass_until")? {
                None => None,
                Some(until) => Some(super::bypass::Bypass {
                    granted_at: first.try_get("bypass_granted_at")?,
                    until,
                    reason: first.try_get("bypass_reason")?,
                    granted_by: first.try_get("bypass_granted_by")?,
                }),
            };
            Ok((row_to_user(first)?, bypass))
        },
        super::enrollments::from_row,
    )
}

/// A user and their bypass as stored.
pub type UserForRequest = (User, Option<super::bypass::Bypass>);

/// All users of an application.
pub async fn list(db: &Database, app: &ApplicationId) -> Result<Vec<User>, StoreError> {
    let rows = sqlx::query(
        "SELECT u.user_id, u.display_name, u.created_at, u.locale, \
         (SELECT COUNT(*) FROM enrollments e WHERE e.application_id = u.application_id AND e.user_id = u.user_id) AS devices \
         FROM users u WHERE u.application_id = $1 ORDER BY u.created_at, u.user_id",
    )
    .bind(app.as_str())
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(row_to_user).collect()
}

fn row_to_user(row: &sqlx::any::AnyRow) -> Result<User, StoreError> {
    let user_id: String = row.try_get("user_id")?;
    let devices: i64 = row.try_get("devices")?;
    Ok(User {
        user_id: user_id
            .parse()
            .map_err(|_| StoreError::Corrupted("user id"))?,
        display_name: row.try_get("display_name")?,
        created_at: row.try_get("created_at")?,
        device_count: u32::try_from(devices).unwrap_or(u32::MAX),
        locale: row.try_get("locale")?,
    })
}

/// Sets (or with `None` removes) the user's preferred language. Returns false if there is no
/// such user.
pub async fn set_locale(
    db: &Database,
    app: &ApplicationId,
    user_id: &UserId,
    locale: Option<&str>,
) -> Result<bool, StoreError> {
    let done =
        sqlx::query("UPDATE users SET locale = $1 WHERE application_id = $2 AND user_id = $3")
            .bind(locale)
            .bind(app.as_str())
            .bind(user_id.as_str())
            .execute(db.writer())
            .await?;
    Ok(done.rows_affected() == 1)
}

/// The user's preferred language, if the user exists and has one (read through `executor`: the
/// pool, or a connection inside a transaction).
pub async fn locale<'c, E>(
    executor: E,
    app: &ApplicationId,
    user_id: &UserId,
) -> Result<Option<String>, StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let row = sqlx::query("SELECT locale FROM users WHERE application_id = $1 AND user_id = $2")
        .bind(app.as_str())
        .bind(user_id.as_str())
        .fetch_optional(executor)
        .await?;
    Ok(match row {
        Some(r) => r.try_get("locale")?,
        None => None,
    })
}

/// The language of the user `enrollment` belongs to (`None` without such an enrollment, or
/// without a language): [`locale`] by the enrollment's key, for a read that goes out before the
/// enrollment is read.
pub async fn locale_of_enrollment(
    db: &Database,
    enrollment: &str,
) -> Result<Option<String>, StoreError> {
    let row = sqlx::query(LOCALE_OF_ENROLLMENT)
        .bind(enrollment)
        .fetch_optional(db.pool())
        .await?;
    Ok(match row {
        Some(r) => r.try_get("locale")?,
        None => None,
    })
}

/// The statement of [`locale_of_enrollment`] (the enrollment by its primary key, the user by
/// theirs).
pub(crate) const LOCALE_OF_ENROLLMENT: &str = "SELECT u.locale FROM enrollments e \
    JOIN users u ON u.application_id = e.application_id AND u.user_id = e.user_id \
    WHERE e.enrollment_id = $1";

/// Whether the user exists.
pub async fn exists(
    db: &Database,
    app: &ApplicationId,
    user_id: &UserId,
) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT 1 AS one FROM users WHERE application_id = $1 AND user_id = $2")
        .bind(app.as_str())
        .bind(user_id.as_str())
        .fetch_optional(db.pool())
        .await?;
    Ok(row.is_some())
}

/// A user's backup contacts: the phone number (SMS, voice) and the email address.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Contacts {
    /// The phone number (E.164).
    pub phone: Option<String>,
    /// The email address.
    pub email: Option<String>,
}

impl std::fmt::Debug for Contacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contacts")
            .field("phone", &self.phone.is_some())
            .field("email", &self.email.is_some())
            .finish()
    }
}

/// The user's backup contacts (`None` if there is no such user).
pub async fn contacts(
    db: &Database,
    app: &ApplicationId,
    user_id: &UserId,
) -> Result<Option<Contacts>, StoreError> {
    let row =
        sqlx::query("SELECT phone, email FROM users WHERE application_id = $1 AND user_id = $2")
            .bind(app.as_str())
            .bind(user_id.as_str())
            .fetch_optional(db.pool())
            .await?;
    row.map(|r| {
        Ok(Contacts {
            phone: r.try_get("phone")?,
            email: r.try_get("email")?,
        })
    })
    .transpose()
}

/// Replaces the user's backup contacts. Returns false if there is no such user.
pub async fn set_contacts(
    db: &Database,
    app: &ApplicationId,
    user_id: &UserId,
    contacts: &Contacts,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE users SET phone = $1, email = $2 WHERE application_id = $3 AND user_id = $4",
    )
    .bind(contacts.phone.as_deref())
    .bind(contacts.email.as_deref())
    .bind(app.as_str())
    .bind(user_id.as_str())
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A request still waiting for an answer when its user was removed (pending, its expiry not
/// recorded): it failed with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRequest {
    /// The authentication.
    pub id: String,
    /// The device it was for.
    pub enrollment_id: String,
}

/// What removing a user took with them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// Their requests that were still waiting for an answer.
    pub failed: Vec<FailedRequest>,
    /// Their devices (enrollment ids).
    pub enrollment_ids: Vec<String>,
    /// How many authentications (of any state) were removed.
    pub authentications: u64,
}

/// How a write holds the user it writes for, until it commits ([`lock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserLock {
    /// The user is not deleted while the write runs; other writes for them go on (PostgreSQL
    /// `FOR KEY SHARE`). For a write that adds a record of the user's.
    KeepsUser,
    /// As [`UserLock::KeepsUser`], and the other writes for the user that take this lock wait
    /// for this one to commit (PostgreSQL `FOR NO KEY UPDATE`). For a write that replaces a set
    /// of the user's records, or checks a cap by counting them.
    TakesTurns,
}

/// Locks user `user_id` of `app` for the rest of the write `executor` runs in, and tells
/// whether the user exists. [`delete`] removes the user's row first, so a write that found the
/// user holds the deletion off until it commits (and the deletion then removes what it wrote),
/// and a write that comes after finds no user. On PostgreSQL a row lock; SQLite's one writer
/// runs writes one at a time, so the read inside the write is enough.
pub async fn lock<'e, E>(
    executor: E,
    engine: super::Engine,
    app: &ApplicationId,
    user_id: &UserId,
    how: UserLock,
) -> Result<bool, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    const FIND: &str = "SELECT 1 AS one FROM users WHERE application_id = $1 AND user_id = $2";
    const KEEPS: &str =
        "SELECT 1 AS one FROM users WHERE application_id = $1 AND user_id = $2 FOR KEY SHARE";
    const TURNS: &str =
        "SELECT 1 AS one FROM users WHERE application_id = $1 AND user_id = $2 FOR NO KEY UPDATE";
    let statement = match (engine, how) {
        (super::Engine::Sqlite, _) => FIND,
        (super::Engine::Postgres, UserLock::KeepsUser) => KEEPS,
        (super::Engine::Postgres, UserLock::TakesTurns) => TURNS,
    };
    let row = sqlx::query(statement)
        .bind(app.as_str())
        .bind(user_id.as_str())
        .fetch_optional(executor)
        .await?;
    Ok(row.is_some())
}

/// The statement of [`DELETION`] that removes the user's requests still waiting for an answer,
/// returning each (`id`, `enrollment_id`): they fail with the user. A request whose expiry the
/// sweep recorded (`expiry_reported`) has ended: it goes with the others, its ending recorded
/// once already. Their rows are read as they are removed, not before: on PostgreSQL an expiry
/// the sweep is recording meanwhile is waited for, and its request is then left to the next
/// statement, which removes it without failing it.
pub(crate) const REMOVE_WAITING: &str = "DELETE FROM authentications \
    WHERE application_id = $1 AND user_id = $2 AND state = 'pending' AND expiry_reported = 0 \
    RETURNING id, enrollment_id";

/// The statements [`delete`] removes a user's rows with once their user row and enrollments are
/// gone, in order, each with the table it deletes from (`$1` the application, `$2` the user).
/// Each reads the user's rows through an index, never a whole table (`store::query_plans`
/// checks them): the deletion is one transaction, which on SQLite holds the only writer.
/// - A CIBA request is found by its authentication (before those go): every request has one,
///   stored with it, and retention purges requests before authentications.
/// - The requests still waiting for an answer go first of the authentications
///   ([`REMOVE_WAITING`]): they fail with the user, and the deletion returns them.
/// - `fido_ceremonies` goes last (`domain::testing::racing_a_deletion` holds that table to
///   pause a deletion once everything else is removed).
///
/// The nonces of the user's devices' calls go before these, by a range of their keys
/// (`nonces::FORGET_ENROLLMENT`, one statement per device).
pub(crate) static DELETION: LazyLock<Vec<(&'static str, String)>> = LazyLock::new(|| {
    let of_user =
        |table: &str| format!("DELETE FROM {table} WHERE application_id = $1 AND user_id = $2");
    let mut statements = vec![(
        "flow_events",
        "DELETE FROM flow_events WHERE flow_id IN \
         (SELECT id FROM flows WHERE application_id = $1 AND user_id = $2)"
            .to_string(),
    )];
    statements.push(("flows", of_user("flows")));
    statements.push((
        "ciba_requests",
        "DELETE FROM ciba_requests WHERE authentication_id IN \
         (SELECT id FROM authentications WHERE application_id = $1 AND user_id = $2)"
            .to_string(),
    ));
    statements.push(("otp_challenges", of_user("otp_challenges")));
    statements.push(("authentications", REMOVE_WAITING.to_string()));
    for table in [
        "authentications",
        "pairing_codes",
        "otp_tokens",
        "ciba_user_codes",
        "user_groups",
        "user_bypasses",
        "recovery_codes",
        "fido_credentials",
        "policy_decisions",
    ] {
        statements.push((table, of_user(table)));
    }
    statements.extend([
        // A code issued and not redeemed would be redeemed for a user re-created with the same
        // id.
        (
            "oidc_authorizations",
            "DELETE FROM oidc_authorizations WHERE application_id = $1 AND user_id = $2 \
             AND code_used_at IS NULL"
                .to_string(),
        ),
        // Sessions claimed by the user, and those restricted to them: one statement each, so
        // each reads its own index.
        ("qr_sessions", of_user("qr_sessions")),
        (
            "qr_sessions",
            "DELETE FROM qr_sessions WHERE application_id = $1 AND restricted_user_id = $2"
                .to_string(),
        ),
        (
            "oidc_tokens",
            "DELETE FROM oidc_tokens WHERE user_id = $2 \
             AND client_id IN (SELECT client_id FROM ciba_clients WHERE application_id = $1)"
                .to_string(),
        ),
        ("fido_ceremonies", of_user("fido_ceremonies")),
    ]);
    statements
});

/// Removes a user of `app` and everything stored about them, in one transaction: their
/// enrollments and the nonces of their devices' calls, pairing codes, OATH tokens, CIBA user
/// code and requests, every access and refresh token the application's OpenID clients issued
/// for them and the authorization codes not redeemed yet, their authentications (those still
/// waiting for an answer are returned: they failed with the user; one whose expiry was recorded
/// had ended before), passcode challenges, QR sessions, flows and policy decisions (a
/// geovelocity rule would otherwise read their last location for a user re-created with the
/// same id). Only the audit log (append-only), the webhook outbox (events already sent, or to be
/// sent, to the customer) and redeemed authorization codes (whose tokens go with the user; a
/// code is redeemed once) keep their id. Returns `None` if there was no such user.
///
/// The user's row goes first, so that every write that locks the user ([`lock`]) either came
/// before and is removed here, or finds no user. Their enrollments go next, before their
/// requests are read and removed: a new request's admission locks its device's row (on
/// PostgreSQL), so it was stored before and is removed here, or finds no device. `fido_ceremonies`
/// goes last (`domain::testing::racing_a_deletion` holds that table to pause a deletion once
/// everything else is removed).
pub async fn delete(
    db: &Database,
    app: &ApplicationId,
    user_id: &UserId,
) -> Result<Option<Removed>, StoreError> {
    let mut tx = db.write().await?;
    let removed = sqlx::query("DELETE FROM users WHERE application_id = $1 AND user_id = $2")
        .bind(app.as_str())
        .bind(user_id.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if removed == 0 {
        tx.rollback().await?;
        return Ok(None);
    }
    let enrollment_ids = sqlx::query(
        "DELETE FROM enrollments WHERE application_id = $1 AND user_id = $2 \
         RETURNING enrollment_id",
    )
    .bind(app.as_str())
    .bind(user_id.as_str())
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| r.try_get::<String, _>("enrollment_id"))
    .collect::<Result<Vec<_>, _>>()?;
    for enrollment_id in &enrollment_ids {
        let (from, to) = super::nonces::enrollment_range(enrollment_id);
        sqlx::query(super::nonces::FORGET_ENROLLMENT)
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?;
    }
    let mut failed = Vec::new();
    let mut authentications = 0;
    for (table, statement) in DELETION.iter() {
        let query = sqlx::query(statement)
            .bind(app.as_str())
            .bind(user_id.as_str());
        if statement == REMOVE_WAITING {
            let rows = query.fetch_all(&mut *tx).await?;
            for r in &rows {
                failed.push(FailedRequest {
                    id: r.try_get("id")?,
                    enrollment_id: r.try_get("enrollment_id")?,
                });
            }
            authentications += u64::try_from(rows.len()).unwrap_or(u64::MAX);
            continue;
        }
        let done = query.execute(&mut *tx).await?;
        if *table == "authentications" {
            authentications += done.rows_affected();
        }
    }
    tx.commit().await?;
    Ok(Some(Removed {
        failed,
        enrollment_ids,
        authentications,
    }))
}
