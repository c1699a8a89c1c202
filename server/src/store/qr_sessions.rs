//! QR login sessions: created by the customer, claimed by one device, answered by one of its
//! users, and (by application policy) completed by a follow-up request.

use sqlx::Row;
use tessera_protocol::api::QrSessionStatus;
use tessera_protocol::authentication::{AccessContext, AuthenticationId, Decision, DenialReason};
use tessera_protocol::ids::{ApplicationId, DeviceId, EnrollmentId, FlowId, UserId};
use tessera_protocol::qr::{QrSessionId, QrSessionState};

use super::secrets::{open_text, place};
use super::{Database, Engine};
use crate::secrets::DataKey;
use crate::store::StoreError;

/// A QR session as stored.
#[derive(Debug, Clone)]
pub struct QrSession {
    /// Its id.
    pub id: QrSessionId,
    /// The application.
    pub application_id: ApplicationId,
    /// Only this user may answer, if set.
    pub restricted_user_id: Option<UserId>,
    /// The current code's token text, while it can be scanned.
    pub token: Option<String>,
    /// When the current code stops working.
    pub code_expires_at: i64,
    /// What the device shows of where the sign-in comes from.
    pub context: AccessContext,
    /// Where the login page goes once approved.
    pub redirect_url: Option<String>,
    /// The state (a session past its expiry that is not final reads as expired).
    pub state: QrSessionState,
    /// Changes whenever the state or the code changes.
    pub version: i64,
    /// The device that claimed it.
    pub device_id: Option<DeviceId>,
    /// The enrollments of that device that may answer.
    pub candidates: Vec<EnrollmentId>,
    /// The nonce of the signed context.
    pub nonce: Option<String>,
    /// The signed context the device was given.
    pub signed_context: Option<String>,
    /// The enrollment that answered.
    pub enrollment_id: Option<EnrollmentId>,
    /// The user who answered.
    pub user_id: Option<UserId>,
    /// The decision.
    pub decision: Option<Decision>,
    /// The device-signed answer.
    pub signed_response: Option<String>,
    /// The attributes (JSON object), once approved.
    pub attributes: Option<String>,
    /// The follow-up request, if the policy asked for one.
    pub follow_up_id: Option<AuthenticationId>,
    /// When it was created.
    pub created_at: i64,
    /// When it expires.
    pub expires_at: i64,
    /// When it was answered.
    pub answered_at: Option<i64>,
    /// The flow this session is the QR alternative of (`useQrCode`), if any.
    pub flow_id: Option<FlowId>,
}

const COLUMNS: &str = "id, application_id, restricted_user_id, token, code_expires_at, context, \
    redirect_url, state, version, device_id, candidates, nonce, signed_context, enrollment_id, \
    user_id, decision, signed_response, attributes, follow_up_id, created_at, expires_at, answered_at, \
    flow_id";

fn parse_opt<T: std::str::FromStr>(
    row: &sqlx::any::AnyRow,
    col: &'static str,
) -> Result<Option<T>, StoreError> {
    row.try_get::<Option<String>, _>(col)?
        .map(|v| v.parse().map_err(|_| StoreError::Corrupted(col)))
        .transpose()
}

fn from_row(secrets: &DataKey, row: &sqlx::any::AnyRow, now: i64) -> Result<QrSession, StoreError> {
    let id: String = row.try_get("id")?;
    let token = open_text(
        secrets,
        place("qr_sessions", "token", &id),
        row.try_get("token")?,
    )?
    .map(|t| t.as_str().to_string());
    let state = QrSessionState::parse(&row.try_get::<String, _>("state")?)
        .ok_or(StoreError::Corrupted("qr state"))?;
    let expires_at: i64 = row.try_get("expires_at")?;
    let state = if !state.is_final() && now >= expires_at {
        QrSessionState::Expired
    } else {
        state
    };
    let context: String = row.try_get("context")?;
    let candidates: Option<String> = row.try_get("candidates")?;
    let decision: Option<String> = row.try_get("decision")?;
    Ok(QrSession {
        id: id.parse().map_err(|_| StoreError::Corrupted("qr id"))?,
        application_id: row
            .try_get::<String, _>("application_id")?
            .parse()
            .map_err(|_| StoreError::Corrupted("application id"))?,
        restricted_user_id: parse_opt(row, "restricted_user_id")?,
        token,
        code_expires_at: row.try_get("code_expires_at")?,
        context: serde_json::from_str(&context).map_err(|_| StoreError::Corrupted("context"))?,
        redirect_url: row.try_get("redirect_url")?,
        state,
        version: row.try_get("version")?,
        device_id: parse_opt(row, "device_id")?,
        candidates: candidates
            .map(|c| serde_json::from_str(&c).map_err(|_| StoreError::Corrupted("candidates")))
            .transpose()?
            .unwrap_or_default(),
        nonce: row.try_get("nonce")?,
        signed_context: row.try_get("signed_context")?,
        enrollment_id: parse_opt(row, "enrollment_id")?,
        user_id: parse_opt(row, "user_id")?,
        decision: decision
            .map(|d| {
                serde_json::from_value(serde_json::Value::String(d))
                    .map_err(|_| StoreError::Corrupted("decision"))
            })
            .transpose()?,
        signed_response: row.try_get("signed_response")?,
        attributes: row.try_get("attributes")?,
        follow_up_id: parse_opt(row, "follow_up_id")?,
        created_at: row.try_get("created_at")?,
        expires_at,
        answered_at: row.try_get("answered_at")?,
        flow_id: parse_opt(row, "flow_id")?,
    })
}

impl QrSession {
    /// The customer API's view.
    pub fn status(&self) -> QrSessionStatus {
        QrSessionStatus {
            session_id: self.id.clone(),
            state: self.state,
            device_id: self.device_id.clone(),
            user_id: self.user_id.clone(),
            enrollment_id: self.enrollment_id.clone(),
            decision: self.decision,
            expires_at: self.expires_at,
            answered_at: self.answered_at,
            follow_up: self.follow_up_id.clone(),
            attributes: if self.state == QrSessionState::Approved {
                self.attributes
                    .as_deref()
                    .and_then(|a| serde_json::from_str(a).ok())
                    .unwrap_or_default()
            } else {
                Default::default()
            },
            signed_context: self.signed_context.clone(),
            signed_response: self.signed_response.clone(),
            number_to_show: None,
            denial_reason: match (self.state, self.decision) {
                (QrSessionState::Denied, Some(Decision::Deny)) => Some(DenialReason::Declined),
                (QrSessionState::Denied, Some(Decision::ReportFraud)) => {
                    Some(DenialReason::ReportedFraud)
                }
                _ => None,
            },
            policy: None,
        }
    }

    /// Whether its code can be scanned now.
    pub fn scannable(&self, now: i64) -> bool {
        self.state == QrSessionState::Created && now < self.code_expires_at && self.token.is_some()
    }
}

/// What a new session stores.
pub struct NewQrSession<'a> {
    /// Its id.
    pub id: &'a QrSessionId,
    /// The application.
    pub application_id: &'a ApplicationId,
    /// Only this user may answer.
    pub restricted_user_id: Option<&'a UserId>,
    /// The first code's token and the digest it is looked up by.
    pub token: &'a str,
    /// Digest of `token`.
    pub token_digest: &'a str,
    /// When the first code stops working.
    pub code_expires_at: i64,
    /// Digest of the browser's secret.
    pub browser_token_digest: &'a str,
    /// What the device will show.
    pub context: &'a AccessContext,
    /// Where the page goes once approved.
    pub redirect_url: Option<&'a str>,
    /// Now.
    pub created_at: i64,
    /// When it expires.
    pub expires_at: i64,
    /// The flow it belongs to, if any.
    pub flow_id: Option<&'a FlowId>,
}

/// The count of open sessions [`insert_within_quota`] checks.
pub(crate) const OPEN_FOR_APPLICATION: &str = "SELECT COUNT(*) FROM qr_sessions WHERE application_id = $1 \
    AND state IN ('created', 'scanned', 'verifying') AND expires_at > $2";

/// The application's own quota of open sessions, read under its lock by [`insert_within_quota`]
/// on SQLite (`NULL`: the server's default).
const OWN_QUOTA: &str = "SELECT max_open_qr_sessions FROM applications WHERE id = $1";

/// Stores a new session unless its application already has as many sessions open (not final
/// and not expired at `s.created_at`) as its quota allows: the application's own
/// (`max_open_qr_sessions`), else `default_quota`. Returns false then. The quota, the count and
/// the insert are one serialised step per application, so a burst never overshoots the quota,
/// and a quota changed meanwhile is the one applied: on PostgreSQL one statement whose
/// `qr_session_admitted` (migrations `0051`, `0052`) takes the application's row lock, reads
/// its quota and counts, the lock held until the statement commits; on SQLite a write
/// transaction on the one writer connection.
///
/// With `key`, the session is also stored only while the application still has that API key
/// digest and that name (`domain::api_keys`: a create under a remembered key, whose context
/// shows the name remembered with it); false otherwise, as over the quota.
pub async fn insert_within_quota(
    db: &Database,
    s: &NewQrSession<'_>,
    default_quota: u32,
    key: Option<KeyCheck<'_>>,
) -> Result<bool, StoreError> {
    if db.engine() == super::Engine::Postgres {
        return insert_as(db.writer(), db.secrets()?, s, Some((default_quota, key))).await;
    }
    let mut tx = db.write().await?;
    super::applications::lock_for_quota(&mut *tx, db.engine(), s.application_id).await?;
    if let Some(key) = key {
        let still: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM applications WHERE id = $1 AND api_key_digest = $2 AND name = $3",
        )
        .bind(s.application_id.as_str())
        .bind(key.digest)
        .bind(key.name)
        .fetch_one(&mut *tx)
        .await?;
        if still == 0 {
            return Ok(false);
        }
        if s.restricted_user_id.is_some() {
            let users: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM users WHERE application_id = $1 AND user_id = $2",
            )
            .bind(s.application_id.as_str())
            .bind(s.restricted_user_id.map(UserId::as_str))
            .fetch_one(&mut *tx)
            .await?;
            if users == 0 {
                return Ok(false);
            }
        }
    }
    let own: Option<i64> = sqlx::query_scalar(OWN_QUOTA)
        .bind(s.application_id.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .flatten();
    let open: i64 = sqlx::query_scalar(OPEN_FOR_APPLICATION)
        .bind(s.application_id.as_str())
        .bind(s.created_at)
        .fetch_one(&mut *tx)
        .await?;
    if open >= own.unwrap_or(i64::from(default_quota)) {
        return Ok(false);
    }
    insert_as(&mut *tx, db.secrets()?, s, None).await?;
    tx.commit().await?;
    Ok(true)
}

/// The condition that the session's named user (`$3`) is its application's (`$2`).
const USER_EXISTS: &str = "EXISTS (SELECT 1 FROM users WHERE application_id = $2 AND user_id = $3)";

/// The API key digest and the application name a new session is stored under
/// ([`insert_within_quota`]); a session that names a user is then stored only while that user
/// is the application's.
#[derive(Debug, Clone, Copy)]
pub struct KeyCheck<'a> {
    /// The digest the application must still have.
    pub digest: &'a str,
    /// The name it must still have.
    pub name: &'a str,
}

/// Stores a new session.
pub async fn insert(db: &Database, s: &NewQrSession<'_>) -> Result<(), StoreError> {
    insert_as(db.writer(), db.secrets()?, s, None)
        .await
        .map(drop)
}

/// The insert of a new session: its values, or (PostgreSQL only, `admitted_within`) the same
/// values only if `qr_session_admitted` lets the application have another open session within
/// its quota (`admitted_within` is the server's default, for an application that sets none).
/// Whether it was stored.
async fn insert_as<'e, E>(
    executor: E,
    secrets: &DataKey,
    s: &NewQrSession<'_>,
    admitted_within: Option<(u32, Option<KeyCheck<'_>>)>,
) -> Result<bool, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let context = serde_json::to_string(s.context).map_err(|_| StoreError::Corrupted("context"))?;
    let token = secrets.seal(
        place("qr_sessions", "token", s.id.as_str()),
        s.token.as_bytes(),
    )?;
    const INSERT: &str = "INSERT INTO qr_sessions (id, application_id, restricted_user_id, token, \
         token_digest, code_expires_at, browser_token_digest, context, redirect_url, state, version, \
         created_at, expires_at, flow_id)";
    const VALUES: &str = "$1, $2, $3, $4, $5, $6, $7, $8, $9, 'created', 1, $10, $11, $12";
    let sql = match admitted_within {
        None => format!("{INSERT} VALUES ({VALUES})"),
        Some((_, None)) => format!(
            "{INSERT} SELECT {VALUES} WHERE qr_session_admitted($2, CAST($10 AS BIGINT), $13)"
        ),
        Some((_, Some(_))) => {
            // A session for a named user only while the user is the application's, their row
            // locked against its deletion until the insert commits (a user's deletion removes
            // their sessions: one that came first is waited for, and the check then finds no
            // user).
            let user = match s.restricted_user_id {
                Some(_) => format!(" AND {}", super::key_share_locked(USER_EXISTS)),
                None => String::new(),
            };
            format!(
                "{INSERT} SELECT {VALUES} WHERE EXISTS (SELECT 1 FROM applications WHERE id = $2 \
                 AND api_key_digest = $14 AND name = $15){user} \
                 AND qr_session_admitted($2, CAST($10 AS BIGINT), $13)"
            )
        }
    };
    let query = sqlx::query(&sql)
        .bind(s.id.as_str())
        .bind(s.application_id.as_str())
        .bind(s.restricted_user_id.map(UserId::as_str))
        .bind(token)
        .bind(s.token_digest)
        .bind(s.code_expires_at)
        .bind(s.browser_token_digest)
        .bind(context)
        .bind(s.redirect_url)
        .bind(s.created_at)
        .bind(s.expires_at)
        .bind(s.flow_id.map(|f| f.to_string()));
    let query = match admitted_within {
        Some((quota, None)) => query.bind(i64::from(quota)),
        Some((quota, Some(key))) => query.bind(i64::from(quota)).bind(key.digest).bind(key.name),
        None => query,
    };
    Ok(query.execute(executor).await?.rows_affected() == 1)
}

/// The columns a session is looked up by (each unique or indexed).
pub(crate) const LOOKUP_COLUMNS: [&str; 4] =
    ["id", "token_digest", "browser_token_digest", "follow_up_id"];

/// The statement looking a session up by `column` (one of [`LOOKUP_COLUMNS`]).
pub(crate) fn lookup_statement(column: &str) -> String {
    format!("SELECT {COLUMNS} FROM qr_sessions WHERE {column} = $1")
}

async fn one(
    db: &Database,
    column: &str,
    value: &str,
    now: i64,
) -> Result<Option<QrSession>, StoreError> {
    debug_assert!(
        LOOKUP_COLUMNS.contains(&column),
        "{column} is not a look-up column"
    );
    let row = sqlx::query(&lookup_statement(column))
        .bind(value)
        .fetch_optional(db.pool())
        .await?;
    let secrets = db.secrets()?;
    row.as_ref().map(|r| from_row(secrets, r, now)).transpose()
}

/// One session by id.
pub async fn get(
    db: &Database,
    id: &QrSessionId,
    now: i64,
) -> Result<Option<QrSession>, StoreError> {
    one(db, "id", id.as_str(), now).await
}

/// A session as read, with whether any policy decision is recorded for it (a scan's: every
/// decision about a session is recorded with the session as its subject), read in the same
/// statement: `false` means the session as read had none, so nothing about its decisions needs
/// reading.
#[derive(Debug, Clone)]
pub struct NotedSession {
    /// The session.
    pub session: QrSession,
    /// Whether a policy decision was recorded for it when it was read.
    pub decisions_recorded: bool,
}

/// The column that tells [`NotedSession::decisions_recorded`] (over `policy_decisions`' index on
/// the subject; it stops at the first decision).
const DECISIONS_RECORDED: &str = "(SELECT COUNT(*) FROM (SELECT 1 FROM policy_decisions \
    WHERE policy_decisions.subject_id = qr_sessions.id LIMIT 1) AS recorded) AS decisions_recorded";

fn noted_from_row(
    secrets: &DataKey,
    row: &sqlx::any::AnyRow,
    now: i64,
) -> Result<NotedSession, StoreError> {
    Ok(NotedSession {
        session: from_row(secrets, row, now)?,
        decisions_recorded: row.try_get::<i64, _>("decisions_recorded")? > 0,
    })
}

/// [`get`], noting whether decisions are recorded for the session ([`NotedSession`]).
pub async fn get_noted(
    db: &Database,
    id: &QrSessionId,
    now: i64,
) -> Result<Option<NotedSession>, StoreError> {
    let row = sqlx::query(&BY_ID_NOTED)
        .bind(id.as_str())
        .fetch_optional(db.pool())
        .await?;
    let secrets = db.secrets()?;
    row.as_ref()
        .map(|r| noted_from_row(secrets, r, now))
        .transpose()
}

/// The statement of [`get_noted`].
pub(crate) static BY_ID_NOTED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("SELECT {COLUMNS}, {DECISIONS_RECORDED} FROM qr_sessions WHERE id = $1")
});

/// [`get_noted`] for the application `app`, made only while its API key has the digest
/// `key_digest` (`domain::api_keys`): the key's check and the read in one statement. `None`
/// when the key is no longer the application's, or when the application has no such session.
pub async fn get_with_key(
    db: &Database,
    id: &QrSessionId,
    app: &ApplicationId,
    key_digest: &str,
    now: i64,
) -> Result<Option<NotedSession>, StoreError> {
    let row =
        super::applications::fetch_with_key(db, &BY_ID_WITH_KEY, id.as_str(), app, key_digest)
            .await?;
    let secrets = db.secrets()?;
    let found = row
        .as_ref()
        .map(|r| noted_from_row(secrets, r, now))
        .transpose()?;
    // Another application's session is not this caller's to read.
    Ok(found.filter(|s| &s.session.application_id == app))
}

/// The statement of [`get_with_key`] (the session by its primary key, the application by its
/// own; the session's application compared after the read, as `authentications::get_with_key`
/// does).
pub(crate) static BY_ID_WITH_KEY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS}, {DECISIONS_RECORDED} FROM qr_sessions WHERE id = $1 AND EXISTS \
         (SELECT 1 FROM applications WHERE id = $2 AND api_key_digest = $3)"
    )
});

/// The session a code's token digest names.
pub async fn by_token_digest(
    db: &Database,
    digest: &str,
    now: i64,
) -> Result<Option<QrSession>, StoreError> {
    one(db, "token_digest", digest, now).await
}

/// The session a browser token's digest names.
pub async fn by_browser_digest(
    db: &Database,
    digest: &str,
    now: i64,
) -> Result<Option<QrSession>, StoreError> {
    one(db, "browser_token_digest", digest, now).await
}

/// The session waiting for a follow-up request.
pub async fn by_follow_up(
    db: &Database,
    id: &AuthenticationId,
    now: i64,
) -> Result<Option<QrSession>, StoreError> {
    one(db, "follow_up_id", id.as_str(), now).await
}

/// Replaces the code of a session nobody has scanned. Returns false if it was scanned, answered
/// or expired meanwhile.
pub async fn renew_code(
    db: &Database,
    id: &QrSessionId,
    token: &str,
    token_digest: &str,
    code_expires_at: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let token = db
        .secrets()?
        .seal(place("qr_sessions", "token", id.as_str()), token.as_bytes())?;
    let done = sqlx::query(
        "UPDATE qr_sessions SET token = $1, token_digest = $2, code_expires_at = $3, version = version + 1 \
         WHERE id = $4 AND state = 'created' AND expires_at > $5",
    )
    .bind(token)
    .bind(token_digest)
    .bind(code_expires_at)
    .bind(id.as_str())
    .bind(now)
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The conditional update of [`claim`].
pub(crate) const CLAIM: &str = "UPDATE qr_sessions SET state = 'scanned', version = version + 1, \
    token = NULL, device_id = $1, candidates = $2, nonce = $3, signed_context = $4 \
    WHERE id = $5 AND token_digest = $6 AND state = 'created' AND expires_at > $7 \
    AND code_expires_at > $7";

/// A device's claim of a session, as [`claim`] records it.
pub struct QrClaim<'a> {
    /// The device that claims.
    pub device: &'a DeviceId,
    /// The enrollments of that device that may answer.
    pub candidates: &'a [EnrollmentId],
    /// The nonce of the signed context.
    pub nonce: &'a str,
    /// The signed context the device is given.
    pub signed_context: &'a str,
}

/// Records the device that claimed the session (one conditional update: of racing devices,
/// one wins), on `executor` (the write that records the claim's policy decisions with it, or
/// the writer). The token text is cleared: the code is spent.
pub async fn claim<'e, E>(
    executor: E,
    id: &QrSessionId,
    token_digest: &str,
    claim: &QrClaim<'_>,
    now: i64,
) -> Result<bool, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let candidates =
        serde_json::to_string(claim.candidates).map_err(|_| StoreError::Corrupted("candidates"))?;
    let done = sqlx::query(CLAIM)
        .bind(claim.device.as_str())
        .bind(candidates)
        .bind(claim.nonce)
        .bind(claim.signed_context)
        .bind(id.as_str())
        .bind(token_digest)
        .bind(now)
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The answer to record.
pub struct QrAnswer<'a> {
    /// The answering enrollment.
    pub enrollment_id: &'a EnrollmentId,
    /// Its user.
    pub user_id: &'a UserId,
    /// The decision.
    pub decision: Decision,
    /// The signed answer.
    pub signed_response: &'a str,
    /// The attributes (JSON).
    pub attributes: &'a str,
    /// The state it leads to: approved, denied, or verifying (with a follow-up).
    pub state: QrSessionState,
    /// The follow-up request.
    pub follow_up_id: Option<&'a AuthenticationId>,
}

/// The conditional update of [`record_answer`] (as SQLite runs it): the session still waits
/// for an answer, and the answering enrollment is still paired. An unpairing deletes the
/// enrollment and fails the requests pending for it in one write; with the enrollment checked
/// in the answer's own statement, either the unpairing comes first and the answer is not
/// recorded, or the answer does, and the follow-up it stores in the same write is pending when
/// the unpairing fails what is pending. (Checked only before, an answer could be recorded after
/// the unpairing, with a follow-up left pending for a device that is gone.)
pub(crate) const RECORD_ANSWER: &str = "UPDATE qr_sessions SET state = $1, version = version + 1, \
    enrollment_id = $2, user_id = $3, decision = $4, signed_response = $5, attributes = $6, \
    follow_up_id = $7, answered_at = $8 WHERE id = $9 AND state = 'scanned' AND expires_at > $8 \
    AND EXISTS (SELECT 1 FROM enrollments WHERE enrollment_id = $2 AND status = 'active')";

/// [`RECORD_ANSWER`] as `engine` runs it. SQLite runs one write at a time. On PostgreSQL the
/// check locks the enrollment's row against its deletion until the answer commits
/// (`FOR KEY SHARE`, which ordinary updates of the row do not wait for): an unpairing that
/// deleted it first is waited for, and the check then finds no row; one that comes after waits
/// for the answer's commit, and then finds its follow-up pending.
fn record_answer_statement(engine: Engine) -> &'static str {
    static POSTGRES: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| super::key_share_locked(RECORD_ANSWER));
    match engine {
        Engine::Sqlite => RECORD_ANSWER,
        Engine::Postgres => POSTGRES.as_str(),
    }
}

/// Records the answer if the session is still waiting for one and the answering enrollment is
/// still paired (one conditional update, on `engine`).
pub async fn record_answer<'e, E>(
    executor: E,
    engine: Engine,
    id: &QrSessionId,
    answer: &QrAnswer<'_>,
    now: i64,
) -> Result<bool, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let decision = match serde_json::to_value(answer.decision) {
        Ok(serde_json::Value::String(s)) => s,
        _ => return Err(StoreError::Corrupted("decision")),
    };
    let done = sqlx::query(record_answer_statement(engine))
        .bind(answer.state.as_str())
        .bind(answer.enrollment_id.as_str())
        .bind(answer.user_id.as_str())
        .bind(decision)
        .bind(answer.signed_response)
        .bind(answer.attributes)
        .bind(answer.follow_up_id.map(AuthenticationId::as_str))
        .bind(now)
        .bind(id.as_str())
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The conditional update of [`settle_follow_up`]: only a session that has not expired, since
/// one past its expiry already reads as expired, a final state.
pub(crate) const SETTLE_FOLLOW_UP: &str = "UPDATE qr_sessions SET state = $1, version = version + 1 \
    WHERE follow_up_id = $2 AND state = 'verifying' AND expires_at > $3";

/// Completes a session that waited for its follow-up, if it has not expired by `now`.
pub async fn settle_follow_up(
    db: &Database,
    follow_up: &AuthenticationId,
    state: QrSessionState,
    now: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(SETTLE_FOLLOW_UP)
        .bind(state.as_str())
        .bind(follow_up.as_str())
        .bind(now)
        .execute(db.writer())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Ends a session nobody has answered yet (its flow showed a fresh code, or ended): it reads
/// as expired from then on and can no longer be scanned or answered. Returns false if it was
/// answered (or had ended) meanwhile.
pub async fn withdraw_unanswered(db: &Database, id: &QrSessionId) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE qr_sessions SET state = 'expired', version = version + 1 \
         WHERE id = $1 AND state IN ('created', 'scanned')",
    )
    .bind(id.as_str())
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::{OPEN_FOR_APPLICATION, OWN_QUOTA};

    #[test]
    fn the_admission_counts_what_the_open_count_counts() {
        // The function as it stands: the latest migration that (re)defines it.
        let function =
            include_str!("../../migrations/postgres/0052_qr_session_quota_in_admission.sql");
        let predicate = |sql: &str, now: &str| {
            let from = sql.find("state IN").expect("the states");
            let text = &sql[from..];
            let end = text.find(now).expect("the time") + now.len();
            text[..end].split_whitespace().collect::<Vec<_>>().join(" ")
        };
        assert_eq!(
            predicate(function, "p_now").replace("p_now", "NOW"),
            predicate(OPEN_FOR_APPLICATION, "$2").replace("$2", "NOW"),
        );
        assert!(function.contains("FOR NO KEY UPDATE"));
        // The application's own quota, read from the locked row, before the server's default.
        let quota = |sql: &str| {
            let from = sql
                .find("SELECT max_open_qr_sessions")
                .expect("the own quota");
            sql[from..]
                .split_whitespace()
                .take(6)
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            quota(function),
            "SELECT max_open_qr_sessions INTO own FROM applications"
        );
        assert_eq!(
            quota(OWN_QUOTA),
            "SELECT max_open_qr_sessions FROM applications WHERE id"
        );
        assert!(function.contains("COALESCE(own, quota)"));
    }
}
