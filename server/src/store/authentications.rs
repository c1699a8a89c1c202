//! Authentications and their single recorded outcome.

use std::sync::LazyLock;

use sqlx::Row;
use tessera_protocol::api::{AuthenticationStatus, BackupChannel, OtpReason};
use tessera_protocol::authentication::{
    AuthenticationId, AuthenticationKind, AuthenticationState, Decision, DenialReason,
    NumberMatching,
};
use tessera_protocol::ids::{ApplicationId, EnrollmentId, UserId};

use super::follow_ups::Waiting;
use super::lock_key;
use super::{Database, Engine};
use crate::store::StoreError;

/// An authentication as stored.
#[derive(Debug, Clone)]
pub struct Authentication {
    /// Its id.
    pub id: AuthenticationId,
    /// The application.
    pub application_id: ApplicationId,
    /// The user asked.
    pub user_id: UserId,
    /// The device asked.
    pub enrollment_id: EnrollmentId,
    /// The kind.
    pub kind: AuthenticationKind,
    /// The server-signed request.
    pub signed_request: String,
    /// Digest of the parameters (base64url).
    pub parameters_digest: String,
    /// The request's nonce.
    pub nonce: String,
    /// Number matching: the number the web page shows.
    pub number_to_show: Option<u32>,
    /// Number matching: how the device gives the number (`Off` without `number_to_show`).
    pub number_matching: NumberMatching,
    /// Whether the answer must be signed with the user-verification key.
    pub require_user_verification: bool,
    /// The accessing device's IP, if given.
    pub accessing_ip: Option<String>,
    /// The state (an expired pending row reads as expired).
    pub state: AuthenticationState,
    /// The decision, once answered.
    pub decision: Option<Decision>,
    /// The device-signed answer.
    pub signed_response: Option<String>,
    /// The authentication attributes (JSON object), once answered.
    pub attributes: Option<String>,
    /// When it was created.
    pub created_at: i64,
    /// When it expires.
    pub expires_at: i64,
    /// When it was answered.
    pub answered_at: Option<i64>,
    /// Why it failed, when its state is `failed`.
    pub failure_reason: Option<String>,
    /// Why it was denied, when its state is `denied`.
    pub denial_reason: Option<DenialReason>,
    /// Which app passcodes it accepts.
    pub otp_mode: OtpMode,
    /// From when an app passcode is accepted (with `otp_mode` other than `None`).
    pub otp_after: Option<i64>,
    /// The backup channels a passcode may be sent through for it.
    pub backup_channels: Vec<BackupChannel>,
    /// How its push went (`none`, `sent`, `failed`, `token_invalid`, `stale_token`).
    pub push_state: String,
    /// The application's policy decision for it (a JSON `PolicyOutcome`), if any.
    pub policy: Option<String>,
}

/// Which passcodes from the user's app an authentication accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtpMode {
    /// None.
    #[default]
    None,
    /// "Use code": from the start.
    UseCode,
    /// OTP fallback: once the push is undelivered or unanswered.
    Fallback,
}

impl OtpMode {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            OtpMode::None => "none",
            OtpMode::UseCode => "use_code",
            OtpMode::Fallback => "fallback",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "use_code" => Some(Self::UseCode),
            "fallback" => Some(Self::Fallback),
            _ => None,
        }
    }
}

/// The columns [`from_row`] reads.
pub(super) const READ_COLUMNS: &str = "id, application_id, user_id, enrollment_id, kind, signed_request, \
    parameters_digest, nonce, number_to_show, require_user_verification, accessing_ip, state, \
    decision, signed_response, attributes, created_at, expires_at, answered_at, failure_reason, \
    otp_mode, otp_after, backup_channels, push_state, number_matching, denial_reason, policy";

const COLUMNS: &str = "id, application_id, user_id, enrollment_id, kind, signed_request, \
    parameters_digest, nonce, number_to_show, require_user_verification, accessing_ip, state, \
    decision, signed_response, attributes, created_at, expires_at, answered_at, failure_reason, \
    otp_mode, otp_after, backup_channels, number_matching, policy, push_counted";

fn word<T: serde::de::DeserializeOwned>(text: &str, what: &'static str) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| StoreError::Corrupted(what))
}

fn to_word<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// An authentication from a row of [`READ_COLUMNS`], its state as it stands at `now` (a pending
/// one past its expiry reads as expired).
pub(super) fn from_row(row: &sqlx::any::AnyRow, now: i64) -> Result<Authentication, StoreError> {
    let parse =
        |col: &'static str| -> Result<String, StoreError> { Ok(row.try_get::<String, _>(col)?) };
    let state =
        AuthenticationState::parse(&parse("state")?).ok_or(StoreError::Corrupted("state"))?;
    let expires_at: i64 = row.try_get("expires_at")?;
    let state = if state == AuthenticationState::Pending && now >= expires_at {
        AuthenticationState::Expired
    } else {
        state
    };
    let decision: Option<String> = row.try_get("decision")?;
    let number: Option<i64> = row.try_get("number_to_show")?;
    let number_to_show = number.and_then(|n| u32::try_from(n).ok());
    let number_matching = match row.try_get::<Option<String>, _>("number_matching")? {
        Some(mode) => {
            NumberMatching::parse(&mode).ok_or(StoreError::Corrupted("number_matching"))?
        }
        // Stored before the typed mode: choices whenever there is a number.
        None if number_to_show.is_some() => NumberMatching::Choice,
        None => NumberMatching::Off,
    };
    let denial_reason = row
        .try_get::<Option<String>, _>("denial_reason")?
        .map(|r| DenialReason::parse(&r).ok_or(StoreError::Corrupted("denial_reason")))
        .transpose()?;
    Ok(Authentication {
        id: parse("id")?
            .parse()
            .map_err(|_| StoreError::Corrupted("id"))?,
        application_id: parse("application_id")?
            .parse()
            .map_err(|_| StoreError::Corrupted("application id"))?,
        user_id: parse("user_id")?
            .parse()
            .map_err(|_| StoreError::Corrupted("user id"))?,
        enrollment_id: parse("enrollment_id")?
            .parse()
            .map_err(|_| StoreError::Corrupted("enrollment id"))?,
        kind: word(&parse("kind")?, "kind")?,
        signed_request: parse("signed_request")?,
        parameters_digest: parse("parameters_digest")?,
        nonce: parse("nonce")?,
        number_to_show,
        number_matching,
        require_user_verification: row.try_get::<i64, _>("require_user_verification")? != 0,
        accessing_ip: row.try_get("accessing_ip")?,
        state,
        decision: decision.map(|d| word(&d, "decision")).transpose()?,
        signed_response: row.try_get("signed_response")?,
        attributes: row.try_get("attributes")?,
        created_at: row.try_get("created_at")?,
        expires_at,
        answered_at: row.try_get("answered_at")?,
        failure_reason: row.try_get("failure_reason")?,
        denial_reason,
        otp_mode: OtpMode::parse(&parse("otp_mode")?).ok_or(StoreError::Corrupted("otp_mode"))?,
        otp_after: row.try_get("otp_after")?,
        backup_channels: super::applications::parse_channels(&parse("backup_channels")?)?,
        push_state: parse("push_state")?,
        policy: row.try_get("policy")?,
    })
}

impl Authentication {
    /// Why an app passcode answers it at `now`, if one does (only while it is pending).
    pub fn otp_reason(&self, now: i64) -> Option<OtpReason> {
        if self.state != AuthenticationState::Pending || now >= self.expires_at {
            return None;
        }
        match (self.otp_mode, self.otp_after) {
            (OtpMode::UseCode, _) => Some(OtpReason::UseCode),
            (OtpMode::Fallback, Some(after)) if now >= after => {
                if matches!(
                    self.push_state.as_str(),
                    "failed" | "token_invalid" | "stale_token"
                ) {
                    Some(OtpReason::PushUndelivered)
                } else {
                    Some(OtpReason::PushUnanswered)
                }
            }
            _ => None,
        }
    }

    /// The customer API's view at `now`.
    pub fn status_at(&self, now: i64) -> AuthenticationStatus {
        let otp_reason = self.otp_reason(now);
        AuthenticationStatus {
            otp_accepted: otp_reason.is_some(),
            otp_reason,
            backup_channels: if self.state == AuthenticationState::Pending {
                self.backup_channels.clone()
            } else {
                Vec::new()
            },
            authentication_id: self.id.clone(),
            user_id: self.user_id.clone(),
            enrollment_id: self.enrollment_id.clone(),
            kind: self.kind,
            state: self.state,
            decision: self.decision,
            number_to_show: self.number_to_show,
            number_matching: self.number_matching,
            denial_reason: self.denial_reason,
            expires_at: self.expires_at,
            answered_at: self.answered_at,
            attributes: self
                .attributes
                .as_deref()
                .and_then(|a| serde_json::from_str(a).ok())
                .unwrap_or_default(),
            signed_request: self.signed_request.clone(),
            signed_response: self.signed_response.clone(),
            failure_reason: self.failure_reason.clone(),
            policy: self
                .policy
                .as_deref()
                .and_then(|p| serde_json::from_str(p).ok()),
        }
    }
}

/// Records a new pending authentication (on the pool, or inside a transaction).
pub async fn insert<'e, E>(executor: E, a: &Authentication) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    bind_values(sqlx::query(&INSERT), a)
        .execute(executor)
        .await?;
    Ok(())
}

/// Records `a`, ended by the user's bypass, in the write `w`, only while that bypass is in
/// force at `now` (its `until` after it); whether it was recorded. A bypass cleared as the
/// request was made is waited for on PostgreSQL (its row is read `FOR KEY SHARE`, which its
/// deletion must wait for, and which waits for a deletion in flight), so no request ends by a
/// bypass once its clearing has committed. SQLite's one writer runs the write alone.
pub async fn insert_while_bypassed(
    w: &mut super::Write<'_>,
    a: &Authentication,
    now: i64,
) -> Result<bool, StoreError> {
    let bypassed = format!("EXISTS ({})", bypass_standing(INSERTED_VALUES + 1));
    let condition = match w.engine() {
        super::Engine::Sqlite => bypassed,
        super::Engine::Postgres => super::key_share_locked(&bypassed),
    };
    let sql = format!(
        "INSERT INTO authentications ({COLUMNS}) SELECT {} WHERE {condition}",
        placeholders(1, INSERTED_VALUES)
    );
    let done = bind_values(sqlx::query(&sql), a)
        .bind(now)
        .execute(w.conn().await?)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// How many values an insert binds ([`bind_values`]).
const INSERTED_VALUES: usize = 25;

/// The row of the user's bypass while it is in force: the bypass of the inserted request's
/// application (`$2`) and user (`$3`) whose `until` is after now (`$now`, the placeholder's
/// number). What [`insert_while_bypassed`] and an admission under
/// [`AdmissionCondition::BypassInForce`] check.
fn bypass_standing(now: usize) -> String {
    super::bypass::standing(2, 3, now)
}

/// The statement of [`insert`], written once.
static INSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO authentications ({COLUMNS}) VALUES ({})",
        placeholders(1, INSERTED_VALUES)
    )
});

/// `$first, …` for `count` placeholders.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds `a`'s [`COLUMNS`] in order ([`INSERTED_VALUES`] values) after what `query` bound.
fn bind_values<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    a: &'q Authentication,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    query
        .bind(a.id.as_str())
        .bind(a.application_id.as_str())
        .bind(a.user_id.as_str())
        .bind(a.enrollment_id.as_str())
        .bind(to_word(&a.kind))
        .bind(&a.signed_request)
        .bind(&a.parameters_digest)
        .bind(&a.nonce)
        .bind(a.number_to_show.map(i64::from))
        .bind(i64::from(a.require_user_verification))
        .bind(a.accessing_ip.as_deref())
        .bind(a.state.as_str())
        .bind(a.decision.as_ref().map(to_word))
        .bind(a.signed_response.as_deref())
        .bind(a.attributes.as_deref())
        .bind(a.created_at)
        .bind(a.expires_at)
        .bind(a.answered_at)
        .bind(a.failure_reason.as_deref())
        .bind(a.otp_mode.as_str())
        .bind(a.otp_after)
        .bind(super::applications::channels_text(&a.backup_channels))
        .bind(
            a.number_matching
                .is_on()
                .then(|| a.number_matching.as_str()),
        )
        .bind(a.policy.as_deref())
        .bind(i64::from(counts_toward_push_limits(a)))
}

/// Whether `a` counts toward a policy's push counts (`push_requests`, `limit_push`): a push
/// request (approval, transaction, CIBA) that no policy denied or approved outright. Stored
/// with it as `push_counted`; the database's triggers tally those per user and second
/// (`push_tallies`, which the counts read: [`counted_pushes`]).
fn counts_toward_push_limits(a: &Authentication) -> bool {
    let push = match a.kind {
        AuthenticationKind::Approval
        | AuthenticationKind::Transaction
        | AuthenticationKind::Ciba => true,
        AuthenticationKind::Silent => false,
    };
    let decided_outright = a.policy.as_deref().is_some_and(|policy| {
        serde_json::from_str::<serde_json::Value>(policy).is_ok_and(|p| {
            matches!(
                p.get("effect").and_then(|e| e.as_str()),
                Some("deny" | "approve")
            )
        })
    });
    push && !decided_outright
}

/// What [`get`] selects from (its statement: the columns, then this).
pub(crate) const BY_ID: &str = "FROM authentications WHERE id = $1";

/// One authentication.
pub async fn get(
    db: &Database,
    id: &AuthenticationId,
    now: i64,
) -> Result<Option<Authentication>, StoreError> {
    get_on(db.pool(), id, now).await
}

/// [`get`] for the application `app`, made only while its API key has the digest `key_digest`:
/// the key's check and the read in one statement (`domain::api_keys`). `None` when the key is
/// no longer the application's, or when the application has no such authentication.
pub async fn get_with_key(
    db: &Database,
    id: &AuthenticationId,
    app: &ApplicationId,
    key_digest: &str,
    now: i64,
) -> Result<Option<Authentication>, StoreError> {
    let row =
        super::applications::fetch_with_key(db, &BY_ID_WITH_KEY, id.as_str(), app, key_digest)
            .await?;
    let found = row.as_ref().map(|r| from_row(r, now)).transpose()?;
    // Another application's authentication is not this caller's to read.
    Ok(found.filter(|a| &a.application_id == app))
}

/// The statement of [`get_with_key`]. The authentication's application is compared after the
/// read, not in the `WHERE`: with `application_id = $2` there, PostgreSQL's planner, before it
/// has statistics for the table (a new database, or a table growing faster than autovacuum
/// analyzes it), weighed `authentications_by_user` (which starts with the application) against
/// the primary key as equals, took it, and walked the application's requests on every read.
static BY_ID_WITH_KEY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {READ_COLUMNS} {BY_ID} AND EXISTS \
         (SELECT 1 FROM applications WHERE id = $2 AND api_key_digest = $3)"
    )
});

/// [`get`] on `executor` (a request's connection, or a transaction).
pub async fn get_on<'e, E>(
    executor: E,
    id: &AuthenticationId,
    now: i64,
) -> Result<Option<Authentication>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(&format!("SELECT {READ_COLUMNS} {BY_ID}"))
        .bind(id.as_str())
        .fetch_optional(executor)
        .await?;
    row.as_ref().map(|r| from_row(r, now)).transpose()
}

/// The statement of [`get_with_device_on`]: the authentication (its [`READ_COLUMNS`]) with the
/// enrollment it asks (`enrollments`' columns; its id, application and user are the
/// authentication's), or none of those columns once that enrollment is gone.
pub(crate) static WITH_DEVICE_BY_ID: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {authentication}, {device} FROM authentications a \
         LEFT JOIN enrollments e ON e.enrollment_id = a.enrollment_id WHERE a.id = $1",
        authentication = super::qualified_columns(READ_COLUMNS, "a", &[]),
        device =
            super::enrollments::columns_of("e", &["enrollment_id", "application_id", "user_id"]),
    )
});

/// One authentication (its state as it stands at `now`) with the device it asks, in one read:
/// `None` for no such authentication; no device once its enrollment is gone. What a device's
/// answer reads first: on PostgreSQL one round trip and one statement.
pub async fn get_with_device_on<'e, E>(
    executor: E,
    id: &AuthenticationId,
    now: i64,
) -> Result<Option<(Authentication, Option<super::enrollments::Enrollment>)>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let Some(row) = sqlx::query(&WITH_DEVICE_BY_ID)
        .bind(id.as_str())
        .fetch_optional(executor)
        .await?
    else {
        return Ok(None);
    };
    let authentication = from_row(&row, now)?;
    let device = if super::is_joined(&row, "status")? {
        Some(super::enrollments::from_row(&row)?)
    } else {
        None
    };
    Ok(Some((authentication, device)))
}

/// A request still pending past its expiry at `$now`, whose expiry nobody has reported yet:
/// what the expiry sweep claims (`audit::claim_unreported_expired`) and what a device
/// verification's own expiry claims (`enrollments::claim_verification_expiry`), each marking
/// it reported in the same statement, so the expiry is reported once whichever comes first.
/// Its first two terms are those of the partial index `authentications_unreported_expiry`,
/// written as the index writes them for SQLite to use it.
pub(crate) fn unreported_expired(now: usize) -> String {
    format!("state = 'pending' AND expiry_reported = 0 AND expires_at <= ${now}")
}

/// The statement of [`pending_for`] (every device pull runs it).
pub(crate) const PENDING_FOR: &str = "SELECT signed_request FROM authentications \
    WHERE enrollment_id = $1 AND state = 'pending' AND expires_at > $2 ORDER BY created_at, id";

/// The signed requests still pending for a device, oldest first.
pub async fn pending_for(
    db: &Database,
    enrollment: &EnrollmentId,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(PENDING_FOR)
        .bind(enrollment.as_str())
        .bind(now)
        .fetch_all(db.pool())
        .await?;
    rows.iter()
        .map(|r| Ok(r.try_get::<String, _>("signed_request")?))
        .collect()
}

/// The statement of [`pending_with_enrollment`]: [`PENDING_FOR`]'s requests joined to their
/// enrollment's row (`enrollments`' columns): one row per pending request, oldest first, the
/// enrollment's columns on each; one row without a request when none is pending; none without
/// the enrollment.
pub(crate) static PENDING_WITH_ENROLLMENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {device}, a.signed_request FROM enrollments e \
         LEFT JOIN authentications a ON a.enrollment_id = e.enrollment_id \
         AND a.state = 'pending' AND a.expires_at > $2 \
         WHERE e.enrollment_id = $1 ORDER BY a.created_at, a.id",
        device = super::enrollments::columns_of("e", &[]),
    )
});

/// An enrollment with the signed requests still pending for it at `now`, oldest first (as
/// [`pending_for`] reads them), in one read: what a device's pull reads (`None`: no such
/// enrollment).
pub async fn pending_with_enrollment(
    db: &Database,
    enrollment: &EnrollmentId,
    now: i64,
) -> Result<Option<(super::enrollments::Enrollment, Vec<String>)>, StoreError> {
    let rows = sqlx::query(&PENDING_WITH_ENROLLMENT)
        .bind(enrollment.as_str())
        .bind(now)
        .fetch_all(db.pool())
        .await?;
    super::one_with_joined(
        &rows,
        "signed_request",
        super::enrollments::from_row,
        |row| Ok(row.try_get::<String, _>("signed_request")?),
    )
}

/// The request a device's answer was checked against: the answer is recorded only while the
/// authentication is still addressed to that device with that nonce (the ones its signature
/// covers), so a request moved to another device meanwhile (`readdress`) is not ended by an
/// answer to its earlier form.
#[derive(Debug, Clone, Copy)]
pub struct AnsweredRequest<'a> {
    /// The authentication.
    pub id: &'a AuthenticationId,
    /// The device it was addressed to.
    pub enrollment_id: &'a EnrollmentId,
    /// Its nonce.
    pub nonce: &'a str,
}

impl<'a> AnsweredRequest<'a> {
    /// The request as `record` holds it.
    pub fn of(record: &'a Authentication) -> Self {
        AnsweredRequest {
            id: &record.id,
            enrollment_id: &record.enrollment_id,
            nonce: &record.nonce,
        }
    }
}

/// A device's answer as its conditional update records it ([`record_answer`]).
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// The request answered.
    pub request: AnsweredRequest<'a>,
    /// The state it ends in.
    pub state: AuthenticationState,
    /// The decision recorded.
    pub decision: Decision,
    /// Why it was denied.
    pub denial_reason: Option<DenialReason>,
    /// The signed answer as received.
    pub signed_response: &'a str,
    /// The attributes it yields (JSON).
    pub attributes: &'a str,
    /// When (seconds since the epoch).
    pub now: i64,
}

impl<'a> Answer<'a> {
    /// The device's `decision`: approved, or denied as declined or as reported fraud.
    pub fn decided(
        request: AnsweredRequest<'a>,
        decision: Decision,
        signed_response: &'a str,
        attributes: &'a str,
        now: i64,
    ) -> Self {
        let (state, denial_reason) = match decision {
            Decision::Approve => (AuthenticationState::Approved, None),
            Decision::Deny => (AuthenticationState::Denied, Some(DenialReason::Declined)),
            Decision::ReportFraud => (
                AuthenticationState::Denied,
                Some(DenialReason::ReportedFraud),
            ),
        };
        Answer {
            request,
            state,
            decision,
            denial_reason,
            signed_response,
            attributes,
            now,
        }
    }

    /// The device approved with another number than the one shown (number matching): the
    /// authentication ends `denied` (decision `deny`, reason `wrong_number`); the signed answer
    /// is kept as evidence.
    pub fn wrong_number(
        request: AnsweredRequest<'a>,
        signed_response: &'a str,
        attributes: &'a str,
        now: i64,
    ) -> Self {
        Answer {
            request,
            state: AuthenticationState::Denied,
            decision: Decision::Deny,
            denial_reason: Some(DenialReason::WrongNumber),
            signed_response,
            attributes,
            now,
        }
    }

    /// `before` (the record the answer was checked against) as this answer's update stores
    /// it: what the update sets, set; everything else as it was.
    pub fn applied_to(&self, before: &Authentication) -> Authentication {
        let mut after = before.clone();
        after.state = self.state;
        after.decision = Some(self.decision);
        after.signed_response = Some(self.signed_response.to_string());
        after.attributes = Some(self.attributes.to_string());
        after.answered_at = Some(self.now);
        after.denial_reason = self.denial_reason;
        after
    }

    fn bind<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>
    where
        'a: 'q,
    {
        query
            .bind(self.state.as_str())
            .bind(to_word(&self.decision))
            .bind(self.signed_response)
            .bind(self.attributes)
            .bind(self.now)
            .bind(self.request.id.as_str())
            .bind(self.denial_reason.map(DenialReason::as_str))
            .bind(self.request.enrollment_id.as_str())
            .bind(self.request.nonce)
    }
}

/// How many values [`END_WITH`] binds.
const END_WITH_VALUES: usize = 9;

/// The conditional update that records an answer (its statement: this, then `RETURNING` the
/// columns). Like every ending's update, it also requires that the expiry sweep has not claimed
/// the request (`expiry_reported = 0`): an answer whose time was read before the expiry but
/// written after the sweep recorded and announced the expiry is not recorded, so a request
/// never ends twice.
pub(crate) const END_WITH: &str = "UPDATE authentications SET state = $1, decision = $2, \
    signed_response = $3, attributes = $4, answered_at = $5, denial_reason = $7 \
    WHERE id = $6 AND state = 'pending' AND expires_at > $5 AND expiry_reported = 0 \
    AND enrollment_id = $8 AND nonce = $9";

/// Records `answer` if its request is still pending, unexpired and as the device saw it
/// ([`AnsweredRequest`]): one conditional update, so of racing answers (and expiry) exactly
/// one outcome is recorded. Returns the record as stored after it, with which follow-ups wait
/// for it, when this answer was the one recorded (both read back in the same statement).
pub async fn record_answer<'e, E>(
    executor: E,
    answer: &Answer<'_>,
) -> Result<Option<(Authentication, Waiting)>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = answer
        .bind(sqlx::query(&END_WITH_RETURNING))
        .fetch_optional(executor)
        .await?;
    row.as_ref().map(|r| ended_of(r, answer.now)).transpose()
}

/// What [`record_answer_with_audit`] recorded.
#[derive(Debug)]
pub(crate) struct RecordedAnswer {
    /// The record as stored after the answer.
    pub record: Authentication,
    /// Which follow-ups wait for it.
    pub waiting: Waiting,
    /// Whether a webhook delivery was queued.
    pub webhooks_queued: bool,
    /// The flow waiting for it as its push, as the answer's statement read it (its state
    /// before the answer: the flow moves only after it).
    pub waiting_flow: Option<super::flows::StoredFlow>,
}

/// PostgreSQL: [`record_answer`] and the audit `records` of its ending (with their webhook
/// deliveries) as one statement, committed on its own — no `BEGIN` or `COMMIT` around it: the
/// update is a data-modifying `WITH` item, and each record is inserted once for the row it
/// returned, so the records are written exactly when the answer was recorded. Returns what
/// [`record_answer`] returns, whether a webhook delivery was queued, and the flow waiting for
/// the authentication (over `flows`' index on the push it waits for), which the flow's
/// follow-up would otherwise read next.
pub(crate) async fn record_answer_with_audit(
    conn: &mut super::HeldConnection,
    answer: &Answer<'_>,
    records: &[super::audit::Appended],
) -> Result<Option<RecordedAnswer>, StoreError> {
    let (items, queued, _) = super::audit::appended_items(records, "ended", END_WITH_VALUES + 1);
    let mut sql = format!(
        "WITH ended AS ({END_WITH} RETURNING {READ_COLUMNS}, {})",
        super::follow_ups::WAITING_COLUMNS
    );
    for item in &items {
        sql.push_str(", ");
        sql.push_str(item);
    }
    sql.push_str(&format!(
        " SELECT ended.*, {} AS queued, {} FROM ended \
         LEFT JOIN flows waiting_flow ON waiting_flow.authentication_id = ended.id",
        super::audit::queued_count(&queued),
        super::flows::WAITING_FLOW_COLUMNS,
    ));
    let query = super::audit::bind_appended(answer.bind(sqlx::query(&sql)), records);
    let Some(row) = query.fetch_optional(conn).await? else {
        return Ok(None);
    };
    let (record, waiting) = ended_of(&row, answer.now)?;
    Ok(Some(RecordedAnswer {
        record,
        waiting,
        webhooks_queued: row.try_get::<i64, _>("queued")? > 0,
        waiting_flow: super::flows::waiting_flow_of(&row)?,
    }))
}

/// [`END_WITH`] as it runs ([`ending_statement`]), written once.
pub(crate) static END_WITH_RETURNING: LazyLock<String> =
    LazyLock::new(|| ending_statement(END_WITH));

/// An ending's conditional `update`, returning the record and which follow-ups wait for it.
fn ending_statement(update: &str) -> String {
    format!(
        "{update} RETURNING {READ_COLUMNS}, {}",
        super::follow_ups::WAITING_COLUMNS
    )
}

/// The record and the waiting follow-ups an ending's statement returned.
fn ended_of(row: &sqlx::any::AnyRow, now: i64) -> Result<(Authentication, Waiting), StoreError> {
    Ok((from_row(row, now)?, super::follow_ups::waiting_of(row)?))
}

/// The statement of [`admission_counts`]: the user's counts over the
/// `authentications_unapproved_by_user` index (which holds only the requests they can count, with
/// every column they read: migration `0036_unapproved_by_user.sql`), the
/// application's pending requests summed over `pending_expiries` (kept by the database's
/// triggers, migration `0030_pending_counts.sql`: one row per second of expiry and shard, so its
/// cost is bounded by the requests' lifetime, not by how many are pending), and the user's
/// counted pushes summed over `push_tallies` (likewise, one row per second: [`counted_pushes`]).
pub(crate) static ADMISSION_COUNTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT \
         COALESCE(SUM(CASE WHEN {PENDING} AND expires_at > $3 THEN 1 ELSE 0 END), 0) AS user_pending, \
         COALESCE(SUM(CASE WHEN created_at >= $5 AND {UNAPPROVED} THEN 1 ELSE 0 END), 0) AS user_recent, \
         (SELECT COALESCE(SUM(pending), 0) FROM pending_expiries \
          WHERE application_id = $1 AND expires_at > $3) AS application_pending, \
         (SELECT COALESCE(SUM(t.pushes), 0) FROM push_tallies t \
          WHERE t.application_id = $1 AND t.user_id = $2 AND t.created_at > $6) AS pushes \
         FROM authentications \
         WHERE application_id = $1 AND user_id = $2 AND created_at >= $4 AND {USER_FACING} \
         AND {UNAPPROVED}"
    )
});

/// What the admission counts take of a user's requests, shared by [`ADMISSION_COUNTS`] and
/// [`admitted_insert_statement`] so that the two count the same requests: user-facing ones
/// (a silent verification is never seen by the user)…
const USER_FACING: &str = "kind <> 'silent'";
/// …still pending (`user_pending`, with an expiry after now)…
const PENDING: &str = "state = 'pending'";
/// …not approved: pending, expired unanswered or denied (`user_recent`)…
const UNAPPROVED: &str = "state IN ('pending', 'expired', 'denied')";
/// …and the pushes a policy's `limit_push` counts (`pushes`): those the database's triggers
/// tally in `push_tallies` (migration `0045_push_tallies.sql`), which the counts read instead of
/// the requests (a test checks that the triggers tally by this predicate).
#[cfg(test)]
const COUNTED_PUSH: &str = "push_counted = 1";

/// The windows [`admission_counts`] counts in (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionWindows {
    /// Now: what is pending has not expired by then.
    pub now: i64,
    /// The oldest a pending request can have been created (requests live at most that long).
    pub pending_since: i64,
    /// The start of the push-bombing window of unapproved requests.
    pub recent_since: i64,
    /// The start of a policy's `limit_push` window, if one is taken (its requests counted after
    /// it).
    pub push_limit_since: Option<i64>,
}

/// What a new request is admitted by, counted in one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionCounts {
    /// The application's requests pending now (its `max_pending_requests` quota).
    pub application_pending: i64,
    /// The user's user-facing (not silent) requests pending now.
    pub user_pending: i64,
    /// The user's user-facing requests created since `recent_since` and not approved: still
    /// pending, expired unanswered, or denied (including `wrong_number`). Approved ones and
    /// failed ones (their device was unpaired) do not count, so an active user is never locked
    /// out by their own sign-ins.
    pub user_recent: i64,
    /// The user's push requests (approval, transaction, CIBA) created after `push_limit_since`
    /// that a policy neither denied nor approved: what a policy's `limit_push` counts (the same
    /// requests as `store::policies::push_counts`); 0 without a window.
    pub pushes: i64,
}

/// The most of each [`AdmissionCounts`] a new request is admitted under: it is stored only while
/// every count is below its limit. `None`: no limit, and nothing is counted for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// The application's `max_pending_requests` quota.
    pub application_pending: Option<i64>,
    /// The user's pending requests (push bombing).
    pub user_pending: Option<i64>,
    /// The user's recent unapproved requests (push bombing).
    pub user_recent: Option<i64>,
    /// A policy's `limit_push`.
    pub pushes: Option<i64>,
}

/// How a new request's admission is serialised with the other admissions of its application
/// and user on PostgreSQL ([`admit_at_once`], whose statement takes them through
/// `admission_verdict`): counts read and an insert made while another admission's insert is not
/// yet committed would miss it, so admissions whose counts could overtake each other take
/// turns, through advisory locks held until they commit. SQLite's one writer already runs every
/// write transaction alone; there nothing is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionLock {
    /// No limit is counted: there is nothing to overtake, and nothing is taken.
    Nothing,
    /// Only per-user limits are counted: the user's lock alone, so the requests of different
    /// users are admitted side by side.
    User,
    /// The application's quota lock in shared mode (and the user's lock when `user`, a per-user
    /// limit being counted): the admissions of one application run side by side, and its quota
    /// is checked with a margin of every transaction the server could be running at that
    /// moment (`max_connections`), so the ones not yet committed cannot carry it past its
    /// limit. A request the margin refuses is taken again under [`AdmissionLock::Exclusive`].
    Shared {
        /// Whether the user's lock is taken too.
        user: bool,
    },
    /// The application's quota lock in exclusive mode: it waits until every admission of the
    /// application that holds it in either mode has ended, and the quota is checked exactly.
    Exclusive,
}

/// The first key of the advisory locks of a new request's admission, by what they serialise:
/// the application's quota (the second key [`lock_key`] of the application id, bound as numbers
/// by [`bind_verdict`]) and a user's
/// limits (the second key that of the application and user ids). Two keys that collide only
/// make unrelated admissions take turns.
const APPLICATION_ADMISSIONS: i32 = 0x7E55_A001;
const USER_ADMISSIONS: i32 = 0x7E55_A002;

/// What a new request's admission asks of the stored state besides its limits and its device,
/// checked in the statement that stores it ([`admit_at_once`], [`insert_if_admitted_deciding`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdmissionCondition {
    /// Nothing more.
    #[default]
    Unconditional,
    /// The user's bypass, in force at the admission's `now` (its `until` after it): a request
    /// the bypass ended is stored only while the bypass stands, as [`insert_while_bypassed`]
    /// stores one. On PostgreSQL the bypass's row is read `FOR KEY SHARE`, so a clearing in
    /// flight is waited for, and then nothing is stored; SQLite's one writer runs the
    /// admission alone. A clearing that committed before the admission leaves it unstored.
    BypassInForce,
}

/// Stores `a` in the write `w` if the [`admission_counts`] of its application and user are all
/// below `limits`: the counts and the insert are one statement (an `INSERT … SELECT` of one row,
/// kept only while each count in force is under its limit). Only the limits in force are
/// counted, and each of the user's counts stops at its limit: what a request costs is bounded
/// by the limits, not by how many requests the user made. `records` (the request's audit
/// records, with their webhook deliveries) are written with it, exactly when it is stored, as
/// the write's next statements. Returns what they queued when it was stored, `None` when it
/// was not; [`admission_counts`] in the same write then tells which limit refused it. SQLite's
/// admission, in a write of its own (its one writer runs it alone); PostgreSQL's is
/// [`admit_at_once`], which takes the admission's locks.
pub async fn insert_if_admitted(
    w: &mut super::Write<'_>,
    a: &Authentication,
    windows: AdmissionWindows,
    limits: AdmissionLimits,
    records: &[super::audit::Appended],
) -> Result<Option<super::audit::AppendedQueue>, StoreError> {
    let condition = AdmissionCondition::Unconditional;
    insert_if_admitted_deciding(w, a, windows, limits, condition, records, None).await
}

/// [`insert_if_admitted`] under `condition` (checked in the same statement, with `windows.now`
/// as now; [`super::bypass::in_force`] in the same write then tells whether it refused the request),
/// with the policy `decision` that let the request through, written exactly when the request
/// is stored (after it, in the same write).
pub async fn insert_if_admitted_deciding(
    w: &mut super::Write<'_>,
    a: &Authentication,
    windows: AdmissionWindows,
    limits: AdmissionLimits,
    condition: AdmissionCondition,
    records: &[super::audit::Appended],
    decision: Option<&super::policies::DecisionRecord<'_>>,
) -> Result<Option<super::audit::AppendedQueue>, StoreError> {
    let mut query = bind_values(sqlx::query(admitted_insert(&limits, condition)), a);
    let (app, user) = (a.application_id.as_str(), a.user_id.as_str());
    if let Some(quota) = limits.application_pending {
        query = query.bind(app).bind(windows.now).bind(quota);
    }
    if let Some(most) = limits.user_pending {
        query = query
            .bind(app)
            .bind(user)
            .bind(windows.pending_since)
            .bind(windows.now)
            .bind(most);
    }
    if let Some(most) = limits.user_recent {
        query = query
            .bind(app)
            .bind(user)
            .bind(windows.recent_since)
            .bind(most);
    }
    if let Some(most) = limits.pushes {
        query = query
            .bind(app)
            .bind(user)
            .bind(windows.push_limit_since.unwrap_or(i64::MAX))
            .bind(most);
    }
    if condition == AdmissionCondition::BypassInForce {
        query = query.bind(windows.now);
    }
    if query.execute(&mut **w).await?.rows_affected() != 1 {
        return Ok(None);
    }
    if let Some(d) = decision {
        super::policies::record_decision_deferred(w, d).await?;
    }
    let tickets = super::audit::append_all_deferred(w, records).await?;
    Ok(Some(super::audit::AppendedQueue {
        tickets,
        queued: false,
    }))
}

/// What is written with an admitted request, exactly when it is stored: its audit `records`
/// (with their webhook deliveries), the policy `decision` that let it through, and the CIBA
/// request it serves.
#[derive(Debug, Clone, Copy, Default)]
pub struct WrittenWith<'a> {
    /// The audit records.
    pub records: &'a [super::audit::Appended],
    /// The policy decision.
    pub decision: Option<&'a super::policies::DecisionRecord<'a>>,
    /// The CIBA request.
    pub ciba: Option<&'a super::ciba::SealedRequest<'a>>,
    /// The move of the flow whose action made the request: the request is stored only if the
    /// flow still has the move's expected version, and the flow moves only if it is stored.
    pub flow: Option<&'a super::flows::MoveWithRequest>,
}

/// What [`admit_at_once`] found.
#[derive(Debug)]
pub struct AdmissionVerdict {
    /// Whether the request was stored (and committed), and what its records queued.
    pub stored: Option<super::audit::AppendedQueue>,
    /// The counts it was admitted or refused by, read under its locks: the application's
    /// pending requests, and the user's counts each stopped at its limit (0 for a limit not in
    /// force).
    pub counts: AdmissionCounts,
    /// Admitted by every count, but not stored: its device is no longer paired and active.
    pub device_gone: bool,
    /// Not stored: admitted under [`AdmissionCondition::BypassInForce`], the user's bypass was
    /// not in force (cleared, or ended, since it was read).
    pub bypass_gone: bool,
    /// Not stored: the flow whose move goes with it ([`WrittenWith::flow`]) no longer had the
    /// move's expected version (another move came first).
    pub flow_lost: bool,
}

/// PostgreSQL: admits `a` in one statement, committed on its own (one round trip where
/// `BEGIN` with the locks, the insert and `COMMIT` took three). The statement calls
/// `admission_verdict` (migration 0035), which takes the advisory locks of `lock` and then
/// counts in a snapshot of its own, taken once they are granted, so the counts see what the
/// admissions that held them committed; the insert and what goes `with` it are written only
/// when every count is below its limit, and the locks are held until the statement commits.
/// The verdict's counts tell which limit refused a request not stored. Under `condition`
/// [`AdmissionCondition::BypassInForce`] the statement also reads the user's bypass, in force at
/// `windows.now`, locked `FOR KEY SHARE` until it commits (a clearing in flight is waited for,
/// and then finds the request unstored), and stores the request only if it found it.
pub async fn admit_at_once(
    db: &Database,
    a: &Authentication,
    windows: AdmissionWindows,
    limits: AdmissionLimits,
    lock: AdmissionLock,
    condition: AdmissionCondition,
    with: WrittenWith<'_>,
) -> Result<AdmissionVerdict, StoreError> {
    let first = INSERTED_VALUES + 1;
    let verdict = format!(
        "verdict AS (SELECT * FROM admission_verdict({}))",
        placeholders(first, VERDICT_VALUES)
    );
    // The bypass's row (now bound after the verdict's values), read once (a `WITH` item
    // referenced twice is computed once) and locked against its deletion: the insert needs it
    // found, and the answer tells whether it was.
    let (bypass, bypassed, bypass_found, next) = match condition {
        AdmissionCondition::Unconditional => {
            (None, "", "CAST(1 AS BIGINT)", first + VERDICT_VALUES)
        }
        AdmissionCondition::BypassInForce => (
            Some(format!(
                "bypass AS ({} FOR KEY SHARE)",
                bypass_standing(first + VERDICT_VALUES)
            )),
            " AND EXISTS (SELECT 1 FROM bypass)",
            "(SELECT COUNT(*) FROM bypass)",
            first + VERDICT_VALUES + 1,
        ),
    };
    let flow_held = if with.flow.is_some() {
        " AND EXISTS (SELECT 1 FROM flow_held)"
    } else {
        ""
    };
    // The device's row is locked against its deletion until the statement commits (as the QR
    // answer and the fallback's move do): an unpairing that deleted it first is waited for, and
    // the check then finds no row; one that comes after waits, and then fails the request.
    let created = format!(
        "created AS (INSERT INTO authentications ({COLUMNS}) SELECT {} FROM verdict \
         WHERE verdict.admitted AND {}{bypassed}{flow_held} RETURNING 1)",
        placeholders(1, INSERTED_VALUES),
        super::key_share_locked(DEVICE_ACTIVE)
    );
    // What is written with the request, after its insert.
    let (mut with_it, queued, mut next) =
        super::audit::appended_items(with.records, "created", next);
    if let Some(d) = with.decision {
        with_it.push(super::policies::decision_item(d, "created", next));
        next += super::policies::decision_values(d);
    }
    if with.ciba.is_some() {
        with_it.push(super::ciba::request_item("created", next));
        next += super::ciba::REQUEST_VALUES;
    }
    // The flow's row is held before the insert that requires it (an item may name only the
    // items before it); its values are bound last.
    let (held, flow_found) = match with.flow {
        Some(_) => {
            let (held, after) = super::flows::move_with_request_items("created", next);
            with_it.extend(after);
            (Some(held), "(SELECT COUNT(*) FROM flow_held)")
        }
        None => (None, "CAST(1 AS BIGINT)"),
    };
    let items: Vec<String> = [Some(verdict), bypass, held, Some(created)]
        .into_iter()
        .flatten()
        .chain(with_it)
        .collect();
    let sql = format!(
        "WITH {} SELECT verdict.admitted, verdict.application_pending, verdict.user_pending, \
         verdict.user_recent, verdict.pushes, (SELECT COUNT(*) FROM created) AS inserted, \
         {bypass_found} AS bypassed, {flow_found} AS flow_found, {} AS queued FROM verdict",
        items.join(", "),
        super::audit::queued_count(&queued),
    );
    let query = bind_values(sqlx::query(&sql), a);
    let mut query = bind_verdict(query, &a.application_id, &a.user_id, windows, limits, lock);
    if condition == AdmissionCondition::BypassInForce {
        query = query.bind(windows.now);
    }
    let mut query = super::audit::bind_appended(query, with.records);
    if let Some(d) = with.decision {
        query = super::policies::bind_decision(query, d);
    }
    if let Some(ciba) = with.ciba {
        query = super::ciba::bind_sealed(query, ciba);
    }
    if let Some(flow) = with.flow {
        query = super::flows::bind_move_with_request(query, flow);
    }
    let row = query.fetch_one(db.writer()).await?;
    let counts = AdmissionCounts {
        application_pending: row.try_get("application_pending")?,
        user_pending: row.try_get("user_pending")?,
        user_recent: row.try_get("user_recent")?,
        pushes: row.try_get("pushes")?,
    };
    let queued = row.try_get::<i64, _>("queued")? > 0;
    let inserted = row.try_get::<i64, _>("inserted")? == 1;
    let stored = inserted.then(|| super::audit::AppendedQueue {
        tickets: Vec::new(),
        queued,
    });
    let bypass_gone = row.try_get::<i64, _>("bypassed")? == 0;
    let flow_lost = !inserted && row.try_get::<i64, _>("flow_found")? == 0;
    let device_gone =
        !inserted && !bypass_gone && !flow_lost && row.try_get::<bool, _>("admitted")?;
    Ok(AdmissionVerdict {
        stored,
        counts,
        device_gone,
        bypass_gone,
        flow_lost,
    })
}

/// How many values `admission_verdict` takes: the lock's mode and keys, the application and
/// user, now, and each limit with its window.
const VERDICT_VALUES: usize = 15;

/// Binds `admission_verdict`'s [`VERDICT_VALUES`] values after what `query` bound: the mode of
/// `lock` and its keys (numbers computed here: no text of the request decides a lock), `app`
/// and `user`, and each limit of `limits` (NULL when not in force) with its window.
fn bind_verdict<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    app: &'q ApplicationId,
    user: &'q UserId,
    windows: AdmissionWindows,
    limits: AdmissionLimits,
    lock: AdmissionLock,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mode: i32 = match lock {
        AdmissionLock::Nothing => 0,
        AdmissionLock::User => 1,
        AdmissionLock::Shared { user: false } => 2,
        AdmissionLock::Shared { user: true } => 3,
        AdmissionLock::Exclusive => 4,
    };
    let (app, user) = (app.as_str(), user.as_str());
    query
        .bind(mode)
        .bind(APPLICATION_ADMISSIONS)
        .bind(lock_key(&[app]))
        .bind(USER_ADMISSIONS)
        .bind(lock_key(&[app, user]))
        .bind(app)
        .bind(user)
        .bind(windows.now)
        .bind(limits.application_pending)
        .bind(windows.pending_since)
        .bind(limits.user_pending)
        .bind(windows.recent_since)
        .bind(limits.user_recent)
        .bind(windows.push_limit_since.unwrap_or(i64::MAX))
        .bind(limits.pushes)
}

/// The statement of [`insert_if_admitted_deciding`] for the limits in force in `limits` and
/// `condition`, written once for each combination.
fn admitted_insert(limits: &AdmissionLimits, condition: AdmissionCondition) -> &'static str {
    static STATEMENTS: LazyLock<Vec<String>> =
        LazyLock::new(|| (0..32).map(admitted_insert_statement).collect());
    let in_force = usize::from(limits.application_pending.is_some())
        | usize::from(limits.user_pending.is_some()) << 1
        | usize::from(limits.user_recent.is_some()) << 2
        | usize::from(limits.pushes.is_some()) << 3
        | usize::from(condition == AdmissionCondition::BypassInForce) << 4;
    STATEMENTS.get(in_force).map_or("", String::as_str)
}

/// [`admitted_insert`] for the limits and condition whose bits are set in `in_force` (1: the
/// application's quota, 2: the user's pending, 4: the user's recent, 8: a policy's pushes, 16:
/// the user's bypass in force, [`AdmissionCondition::BypassInForce`]). The row binds $1–$25,
/// then each limit in force, in that order, the values [`insert_if_admitted_deciding`] gives
/// it, then now for the bypass.
/// The user's pending and recent counts walk `authentications_unapproved_by_user`, which holds
/// no approved request (migration `0036_unapproved_by_user.sql`; the pending count repeats that
/// index's condition, [`UNAPPROVED`], for SQLite to use it), the pushes the counted pushes'
/// index; each stops at its limit (`LIMIT`): a count that reached it refuses, whatever lies
/// beyond (their query plans are checked).
pub(crate) fn admitted_insert_statement(in_force: usize) -> String {
    let mut next = INSERTED_VALUES;
    let mut take = || {
        next += 1;
        next
    };
    let mut conditions = Vec::new();
    if in_force & 1 != 0 {
        let (app, now, quota) = (take(), take(), take());
        conditions.push(format!(
            "(SELECT COALESCE(SUM(pending), 0) FROM pending_expiries \
             WHERE application_id = ${app} AND expires_at > ${now}) < ${quota}"
        ));
    }
    if in_force & 2 != 0 {
        let (app, user, since, now, most) = (take(), take(), take(), take(), take());
        conditions.push(format!(
            "(SELECT COUNT(*) FROM (SELECT 1 AS counted FROM authentications \
             WHERE application_id = ${app} AND user_id = ${user} AND created_at >= ${since} \
             AND {USER_FACING} AND {UNAPPROVED} AND {PENDING} AND expires_at > ${now} \
             LIMIT ${most}) user_pending) < ${most}"
        ));
    }
    if in_force & 4 != 0 {
        let (app, user, since, most) = (take(), take(), take(), take());
        conditions.push(format!(
            "(SELECT COUNT(*) FROM (SELECT 1 AS counted FROM authentications \
             WHERE application_id = ${app} AND user_id = ${user} AND created_at >= ${since} \
             AND {USER_FACING} AND {UNAPPROVED} LIMIT ${most}) user_recent) < ${most}"
        ));
    }
    if in_force & 8 != 0 {
        let (app, user, since, most) = (take(), take(), take(), take());
        conditions.push(format!(
            "{} < ${most}",
            counted_pushes(app, user, since, most)
        ));
    }
    if in_force & 16 != 0 {
        conditions.push(format!("EXISTS ({})", bypass_standing(take())));
    }
    // The device asked must still be paired and active (`$4` is the request's enrollment):
    // one unpaired since it was picked fails the requests it finds pending, and one inserted
    // after would wait for it until it expired. SQLite's one writer runs this alone.
    conditions.push(DEVICE_ACTIVE.into());
    let values = placeholders(1, INSERTED_VALUES);
    format!(
        "INSERT INTO authentications ({COLUMNS}) SELECT {values} WHERE {}",
        conditions.join(" AND ")
    )
}

/// The admission's condition that the request's device (`$4`) is still paired and active.
const DEVICE_ACTIVE: &str =
    "EXISTS (SELECT 1 FROM enrollments WHERE enrollment_id = $4 AND status = 'active')";

/// Whether enrollment `id` is paired and active, read in `w` (after an admission that stored
/// nothing and that no count refused: its device was unpaired meanwhile).
pub async fn device_active(
    w: &mut super::Write<'_>,
    id: &EnrollmentId,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "SELECT 1 AS one FROM enrollments WHERE enrollment_id = $1 AND status = 'active'",
    )
    .bind(id.as_str())
    .fetch_optional(&mut **w)
    .await?
    .is_some())
}

/// The count of the user's counted pushes (`push_counted = 1`) created after `$since`, stopping
/// at `$most` (a scalar subquery; the arguments are the placeholders' numbers). What a policy's
/// `limit_push` counts, the same in the admission ([`admitted_insert_statement`], and on
/// PostgreSQL `admission_verdict`) and in a policy's look-back (`store::policies::push_counts`).
///
/// Summed from `push_tallies` (migration `0045_push_tallies.sql`): one row per second in which
/// the user was sent counted pushes, kept by the database's triggers. At most `$most` seconds
/// are read, each holding one push or more, so the walk is bounded by the number the count is
/// compared with and by the seconds in the window, whichever is fewer; the sum is capped at
/// `$most`, so a count below it is exact and one at it means at least that many.
pub(crate) fn counted_pushes(app: usize, user: usize, since: usize, most: usize) -> String {
    format!(
        "(SELECT CASE WHEN COALESCE(SUM(tallied.pushes), 0) > ${most} THEN ${most} \
         ELSE COALESCE(SUM(tallied.pushes), 0) END \
         FROM (SELECT t.pushes FROM push_tallies t \
         WHERE t.application_id = ${app} AND t.user_id = ${user} \
         AND t.created_at > ${since} LIMIT ${most}) tallied)"
    )
}

/// Binds [`ADMISSION_COUNTS`]' six values after what `query` bound.
fn bind_admission<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    app: &'q ApplicationId,
    user: &'q UserId,
    windows: AdmissionWindows,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    query
        .bind(app.as_str())
        .bind(user.as_str())
        .bind(windows.now)
        .bind(windows.pending_since.min(windows.recent_since))
        .bind(windows.recent_since)
        .bind(windows.push_limit_since.unwrap_or(i64::MAX))
}

/// The counts a new request is admitted by (the application's pending quota, the user's
/// push-bombing limits, a policy's `limit_push`), in one statement, each counted in full. Run
/// in the write that offered a request ([`insert_if_admitted`]) to tell which limit refused it.
pub async fn admission_counts<'e, E>(
    executor: E,
    app: &ApplicationId,
    user: &UserId,
    windows: AdmissionWindows,
) -> Result<AdmissionCounts, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = bind_admission(sqlx::query(&ADMISSION_COUNTS), app, user, windows)
        .fetch_one(executor)
        .await?;
    Ok(AdmissionCounts {
        application_pending: row.try_get("application_pending")?,
        user_pending: row.try_get("user_pending")?,
        user_recent: row.try_get("user_recent")?,
        pushes: row.try_get("pushes")?,
    })
}

/// Records how the push for an authentication went (`none`, `sent`, `failed`, `token_invalid`).
pub async fn set_push_state(
    db: &Database,
    id: &AuthenticationId,
    state: &str,
    attempts: u32,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE authentications SET push_state = $1, push_attempts = $2 WHERE id = $3")
        .bind(state)
        .bind(i64::from(attempts))
        .bind(id.as_str())
        .execute(db.writer())
        .await?;
    Ok(())
}

/// How the push for an authentication went, and in how many attempts.
pub async fn push_state(
    db: &Database,
    id: &AuthenticationId,
) -> Result<Option<(String, i64)>, StoreError> {
    let row = sqlx::query("SELECT push_state, push_attempts FROM authentications WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(db.pool())
        .await?;
    row.map(|r| Ok((r.try_get("push_state")?, r.try_get("push_attempts")?)))
        .transpose()
}

/// What [`readdress`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readdressed {
    /// The request is now addressed to the new device.
    Moved,
    /// The request is no longer pending for the device it was moved from (answered, ended, or
    /// moved by another instance): nothing changed.
    NotPendingThere,
    /// The new device is no longer paired and active (unpaired since it was chosen): nothing
    /// changed; another device may be tried.
    DeviceGone,
}

/// The statement of [`readdress`]: the new enrollment must still be active. On PostgreSQL its
/// row is locked against deletion until the move commits (`FOR KEY SHARE`, as the QR answer
/// does): an unpairing that deleted it first is waited for, and the check then finds no row; one
/// that comes after waits for the move's commit, and then fails the request it finds pending.
/// (Checked only when the device was chosen, a request could be moved to a device unpaired
/// meanwhile, and wait there, pending, until it expired.)
fn readdress_statement(engine: Engine) -> &'static str {
    const SQLITE: &str = "UPDATE authentications SET enrollment_id = $1, signed_request = $2, \
        nonce = $3, push_state = 'none', push_attempts = 0 \
        WHERE id = $4 AND enrollment_id = $5 AND state = 'pending' \
        AND EXISTS (SELECT 1 FROM enrollments WHERE enrollment_id = $1 AND status = 'active')";
    static POSTGRES: LazyLock<String> = LazyLock::new(|| super::key_share_locked(SQLITE));
    match engine {
        Engine::Sqlite => SQLITE,
        Engine::Postgres => POSTGRES.as_str(),
    }
}

/// Moves a pending request from one enrollment to another with its newly signed form and nonce,
/// if it is still pending for `from` and `to` is still paired and active (one conditional
/// update, see `readdress_statement`).
pub async fn readdress(
    db: &Database,
    id: &AuthenticationId,
    from: &EnrollmentId,
    to: &EnrollmentId,
    signed_request: &str,
    nonce: &str,
) -> Result<Readdressed, StoreError> {
    let done = sqlx::query(readdress_statement(db.engine()))
        .bind(to.as_str())
        .bind(signed_request)
        .bind(nonce)
        .bind(id.as_str())
        .bind(from.as_str())
        .execute(db.writer())
        .await?;
    if done.rows_affected() == 1 {
        return Ok(Readdressed::Moved);
    }
    // Not moved: tell a gone device (another may be tried) from a request no longer there.
    let still_there = sqlx::query(
        "SELECT 1 AS one FROM authentications WHERE id = $1 AND enrollment_id = $2 \
         AND state = 'pending'",
    )
    .bind(id.as_str())
    .bind(from.as_str())
    .fetch_optional(db.pool())
    .await?;
    Ok(if still_there.is_some() {
        Readdressed::DeviceGone
    } else {
        Readdressed::NotPendingThere
    })
}

/// Records an approval by one-time passcode if the authentication is still pending and
/// unexpired (one conditional update, racing the device's answer and expiry). Returns the
/// record as stored after it, with which follow-ups wait for it, when it was recorded.
pub async fn record_passcode_answer<'e, E>(
    executor: E,
    id: &AuthenticationId,
    attributes: &str,
    passcode_digest: Option<&str>,
    now: i64,
) -> Result<Option<(Authentication, Waiting)>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    static STATEMENT: LazyLock<String> = LazyLock::new(|| {
        ending_statement(
            "UPDATE authentications SET state = 'approved', decision = $1, attributes = $2, \
             answered_at = $3, passcode_digest = $5 WHERE id = $4 AND state = 'pending' \
             AND expires_at > $3 AND expiry_reported = 0",
        )
    });
    let row = sqlx::query(&STATEMENT)
        .bind(to_word(&Decision::Approve))
        .bind(attributes)
        .bind(now)
        .bind(id.as_str())
        .bind(passcode_digest)
        .fetch_optional(executor)
        .await?;
    row.as_ref().map(|r| ended_of(r, now)).transpose()
}

/// Whether the authentication was approved by the passcode whose digest is `passcode_digest`
/// (as [`record_passcode_answer`] stored it).
pub async fn approved_by_passcode(
    db: &Database,
    id: &AuthenticationId,
    passcode_digest: &str,
) -> Result<bool, StoreError> {
    let row = sqlx::query(
        "SELECT 1 AS one FROM authentications \
         WHERE id = $1 AND state = 'approved' AND passcode_digest = $2",
    )
    .bind(id.as_str())
    .bind(passcode_digest)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.is_some())
}

/// Ends a pending authentication as `failed` with reason `canceled` (the flow that asked was
/// cancelled). Returns the record as stored after it, with which follow-ups wait for it, or
/// `None` when it was no longer pending.
pub async fn record_cancellation<'e, E>(
    executor: E,
    id: &AuthenticationId,
    now: i64,
) -> Result<Option<(Authentication, Waiting)>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    static STATEMENT: LazyLock<String> = LazyLock::new(|| {
        ending_statement(
            "UPDATE authentications SET state = 'failed', failure_reason = 'canceled', \
             answered_at = $1 WHERE id = $2 AND state = 'pending' AND expires_at > $1 \
             AND expiry_reported = 0",
        )
    });
    let row = sqlx::query(&STATEMENT)
        .bind(now)
        .bind(id.as_str())
        .fetch_optional(executor)
        .await?;
    row.as_ref().map(|r| ended_of(r, now)).transpose()
}

/// OTP fallback: the push could not be delivered, so a passcode is accepted from `now` on (if
/// the authentication has OTP fallback and it was not in force already).
pub async fn offer_passcode_now(
    db: &Database,
    id: &AuthenticationId,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE authentications SET otp_after = $1 \
         WHERE id = $2 AND otp_mode = 'fallback' AND state = 'pending' AND (otp_after IS NULL OR otp_after > $1)",
    )
    .bind(now)
    .bind(id.as_str())
    .execute(db.writer())
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres_url_for_tests;

    /// What the tests here say they skip without a PostgreSQL `DATABASE_URL`.
    const ADVISORY_LOCKS: &str = "take advisory locks";

    /// The one device the tests' requests of `user` of `app` are addressed to (the same id each
    /// time; [`paired`] stores it, as an admission needs it paired and active).
    fn device_of(app: &ApplicationId, user: &UserId) -> EnrollmentId {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{app}/{user}").as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}{hex}", EnrollmentId::PREFIX)
            .parse()
            .expect("an enrollment id")
    }

    /// Stores [`device_of`] `user` of `app` as a paired, active device (once).
    async fn paired(db: &Database, app: &ApplicationId, user: &UserId) {
        sqlx::query(
            "INSERT INTO enrollments (enrollment_id, application_id, user_id, device_id, \
             possession_key, user_verification_key, device_info, signals, push, push_provider, \
             is_primary, registration_digest, server_payload, paired_at, last_seen_at, status) \
             VALUES ($1, $2, $3, 'd', '{}', '{}', '{}', '{}', '{}', 'none', 1, $1, 'x', 0, 0, \
             'active') ON CONFLICT DO NOTHING",
        )
        .bind(device_of(app, user).as_str())
        .bind(app.as_str())
        .bind(user.as_str())
        .execute(db.writer())
        .await
        .expect("a device");
    }

    fn pending(app: &ApplicationId, user: &UserId, created_at: i64) -> Authentication {
        Authentication {
            id: AuthenticationId::generate(),
            application_id: app.clone(),
            user_id: user.clone(),
            enrollment_id: device_of(app, user),
            kind: AuthenticationKind::Approval,
            signed_request: "jws".into(),
            parameters_digest: "digest".into(),
            nonce: "nonce".into(),
            number_to_show: None,
            number_matching: NumberMatching::Off,
            require_user_verification: false,
            accessing_ip: None,
            state: AuthenticationState::Pending,
            decision: None,
            signed_response: None,
            attributes: None,
            created_at,
            expires_at: created_at + 120,
            answered_at: None,
            failure_reason: None,
            denial_reason: None,
            otp_mode: OtpMode::None,
            otp_after: None,
            backup_channels: Vec::new(),
            push_state: "none".into(),
            policy: None,
        }
    }

    /// The windows of the tests: pending requests of the last 900 seconds, push bombing and (if
    /// `push_limit`) a policy's `limit_push` over the last 600.
    fn windows_at(now: i64, push_limit: bool) -> AdmissionWindows {
        AdmissionWindows {
            now,
            pending_since: now - 900,
            recent_since: now - 600,
            push_limit_since: push_limit.then_some(now - 600),
        }
    }

    /// A new SQLite database (in a folder kept while the first value lives) with one
    /// application.
    async fn database_with_application() -> (
        tempfile::TempDir,
        Database,
        super::super::applications::Application,
    ) {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let db = Database::connect(&url, 2).await.expect("database");
        let app = super::super::test_application(&db).await;
        (dir, db, app)
    }

    /// The device's `decision` on `a`, as a test answers it.
    fn decided(a: &Authentication, decision: Decision, now: i64) -> Answer<'_> {
        Answer::decided(AnsweredRequest::of(a), decision, "r", "{}", now)
    }

    /// An approval of `a` with the wrong number, as a test answers it.
    fn wrong_number(a: &Authentication, now: i64) -> Answer<'_> {
        Answer::wrong_number(AnsweredRequest::of(a), "r", "{}", now)
    }

    #[tokio::test]
    async fn the_push_bombing_count_skips_approved_requests() {
        let (_dir, db, app) = database_with_application().await;
        let user: UserId = "alice".parse().expect("user");
        let now = 10_000;
        let mut ids = Vec::new();
        for _ in 0..7 {
            let a = pending(&app.id, &user, now - 30);
            insert(db.writer(), &a).await.expect("insert");
            ids.push(a);
        }
        // 3 approved, 1 declined, 1 wrong number; 2 left pending.
        for a in &ids[..3] {
            let (_, waiting) = record_answer(db.writer(), &decided(a, Decision::Approve, now - 20))
                .await
                .expect("approve")
                .expect("recorded");
            assert_eq!(
                waiting,
                Waiting {
                    device_verification: false,
                    qr_follow_up: false,
                    flow: false,
                }
            );
        }
        record_answer(db.writer(), &decided(&ids[3], Decision::Deny, now - 20))
            .await
            .expect("deny")
            .expect("recorded");
        let (wrong, _) = record_answer(db.writer(), &wrong_number(&ids[4], now - 20))
            .await
            .expect("wrong number")
            .expect("recorded");
        assert_eq!(wrong.state, AuthenticationState::Denied);
        assert_eq!(wrong.decision, Some(Decision::Deny));
        assert_eq!(wrong.denial_reason, Some(DenialReason::WrongNumber));
        // An expired one, long unanswered, and one outside the window.
        let mut expired = pending(&app.id, &user, now - 500);
        expired.expires_at = now - 400;
        insert(db.writer(), &expired).await.expect("insert");
        insert(db.writer(), &pending(&app.id, &user, now - 700))
            .await
            .expect("insert");
        let mut conn = db.write().await.expect("connection");
        let windows = windows_at(now, false);
        let counts = admission_counts(&mut *conn, &app.id, &user, windows)
            .await
            .expect("counts");
        drop(conn);
        assert_eq!(
            counts,
            AdmissionCounts {
                application_pending: 2,
                user_pending: 2,
                user_recent: 5, // 2 pending + 1 declined + 1 wrong number + 1 expired
                pushes: 0,      // no `limit_push` window
            }
        );
        // A second ending loses: the state changes once.
        assert!(
            record_answer(db.writer(), &wrong_number(&ids[0], now))
                .await
                .expect("query")
                .is_none()
        );
        db.close().await;
    }

    /// The application's tallies of pushes as stored, and as counted from its requests: the
    /// two must always agree.
    async fn tallies_and_recount(
        db: &Database,
        app: &ApplicationId,
    ) -> (Vec<(String, i64, i64)>, Vec<(String, i64, i64)>) {
        let rows = |sql: &'static str| async move {
            sqlx::query(sql)
                .bind(app.as_str())
                .fetch_all(db.pool())
                .await
                .expect("read")
                .iter()
                .map(|r| {
                    (
                        r.try_get::<String, _>(0).expect("user"),
                        r.try_get::<i64, _>(1).expect("second"),
                        r.try_get::<i64, _>(2).expect("pushes"),
                    )
                })
                .collect::<Vec<_>>()
        };
        (
            rows(
                "SELECT user_id, created_at, CAST(pushes AS BIGINT) FROM push_tallies \
                 WHERE application_id = $1 ORDER BY user_id, created_at",
            )
            .await,
            rows(
                "SELECT user_id, created_at, COUNT(*) FROM authentications \
                 WHERE application_id = $1 AND push_counted = 1 \
                 GROUP BY user_id, created_at ORDER BY user_id, created_at",
            )
            .await,
        )
    }

    /// The tallies the push counts read (`push_tallies`, kept by triggers) follow every insert,
    /// delete and re-keying of a request, and a count summed from them is the count of the
    /// requests, capped at the number it is compared with.
    #[tokio::test]
    async fn push_tallies_follow_every_stored_and_removed_request() {
        let (dir, db, app) = database_with_application().await;
        let mut engines = vec![(Some(dir), db, app)];
        if let Some(url) = postgres_url_for_tests(ADVISORY_LOCKS) {
            let (db, app) = postgres_with_application(&url, 2).await;
            engines.push((None, db, app));
        }
        for (_dir, db, app) in engines {
            let engine = db.engine();
            let (alice, bob): (UserId, UserId) =
                ("alice".parse().expect("user"), "bob".parse().expect("user"));
            let now = 50_000;
            let mut stored = Vec::new();
            // Five pushes to Alice in one second, three in others, one to Bob; a silent one and
            // one a policy denied outright are not counted.
            for (user, at) in [
                (&alice, now - 5),
                (&alice, now - 5),
                (&alice, now - 5),
                (&alice, now - 5),
                (&alice, now - 5),
                (&alice, now - 50),
                (&alice, now - 400),
                (&alice, now - 700),
                (&bob, now - 5),
            ] {
                stored.push(pending(&app.id, user, at));
            }
            let mut silent = pending(&app.id, &alice, now - 5);
            silent.kind = AuthenticationKind::Silent;
            let mut denied = pending(&app.id, &alice, now - 5);
            denied.policy = Some(r#"{"effect":"deny","action":"limit_push"}"#.into());
            stored.push(silent);
            stored.push(denied);
            for a in &stored {
                insert(db.writer(), a).await.expect("insert");
            }
            let (tallies, recount) = tallies_and_recount(&db, &app.id).await;
            assert_eq!(tallies, recount, "{engine:?}: after the inserts");
            assert_eq!(
                tallies.iter().map(|t| t.2).sum::<i64>(),
                9,
                "{engine:?}: nine counted pushes"
            );
            // The counts: exact below their number, capped at it, also when one second holds
            // more pushes than the number.
            let counts = |windows: &[(u32, u32)]| {
                let windows = windows.iter().copied().collect();
                let (db, app, alice) = (&db, &app, &alice);
                async move {
                    super::super::policies::push_counts(db, &app.id, alice, now, &windows)
                        .await
                        .expect("counts")
                        .into_iter()
                        .collect::<Vec<_>>()
                }
            };
            assert_eq!(
                counts(&[(10, 100), (100, 100), (600, 100), (3_600, 100)]).await,
                [(10, 5), (100, 6), (600, 7), (3_600, 8)],
                "{engine:?}"
            );
            assert_eq!(
                counts(&[(10, 3), (600, 6)]).await,
                [(10, 3), (600, 6)],
                "{engine:?}: capped"
            );
            // Removed one by one (a user's deletion and retention delete rows the same way),
            // and re-keyed: the tallies follow, and a second left empty goes.
            for a in &stored[..4] {
                sqlx::query("DELETE FROM authentications WHERE id = $1")
                    .bind(a.id.as_str())
                    .execute(db.pool())
                    .await
                    .expect("delete");
            }
            sqlx::query("UPDATE authentications SET created_at = created_at + 1 WHERE id = $1")
                .bind(stored[6].id.as_str())
                .execute(db.pool())
                .await
                .expect("re-key");
            sqlx::query("DELETE FROM authentications WHERE id = $1")
                .bind(stored[8].id.as_str())
                .execute(db.pool())
                .await
                .expect("delete");
            let (tallies, recount) = tallies_and_recount(&db, &app.id).await;
            assert_eq!(tallies, recount, "{engine:?}: after the deletes");
            assert!(
                !tallies.iter().any(|(user, _, _)| user == "bob"),
                "{engine:?}: Bob's one second went with his one push"
            );
            assert_eq!(
                counts(&[(10, 100), (600, 100)]).await,
                [(10, 1), (600, 3)],
                "{engine:?}"
            );
            sqlx::query("DELETE FROM authentications WHERE application_id = $1")
                .bind(app.id.as_str())
                .execute(db.pool())
                .await
                .expect("delete all");
            let (tallies, _) = tallies_and_recount(&db, &app.id).await;
            assert!(tallies.is_empty(), "{engine:?}: {tallies:?}");
            db.close().await;
        }
    }

    #[tokio::test]
    async fn push_requests_count_what_limit_push_counts() {
        let (_dir, db, app) = database_with_application().await;
        let user: UserId = "alice".parse().expect("user");
        let now = 10_000;
        // Counted: an approval, a transaction and a CIBA request in the window, one a policy
        // let through with `require`.
        let mut required = pending(&app.id, &user, now - 10);
        required.policy = Some(r#"{"effect":"require","action":"limit_push"}"#.into());
        let mut transaction = pending(&app.id, &user, now - 20);
        transaction.kind = AuthenticationKind::Transaction;
        let mut ciba = pending(&app.id, &user, now - 30);
        ciba.kind = AuthenticationKind::Ciba;
        // Not counted: at the window's edge, silent, ended by a policy's deny or approve,
        // another user's.
        let edge = pending(&app.id, &user, now - 600);
        let mut silent = pending(&app.id, &user, now - 10);
        silent.kind = AuthenticationKind::Silent;
        let mut denied = pending(&app.id, &user, now - 10);
        denied.policy = Some(r#"{"effect":"deny","action":"limit_push"}"#.into());
        let mut approved = pending(&app.id, &user, now - 10);
        approved.policy = Some(r#"{"effect":"approve","action":"approve"}"#.into());
        let other = pending(&app.id, &"bob".parse().expect("user"), now - 10);
        for a in [
            &required,
            &transaction,
            &ciba,
            &edge,
            &silent,
            &denied,
            &approved,
            &other,
        ] {
            insert(db.writer(), a).await.expect("insert");
        }
        let mut conn = db.write().await.expect("connection");
        let windows = windows_at(now, true);
        let counts = admission_counts(&mut *conn, &app.id, &user, windows)
            .await
            .expect("count");
        assert_eq!(counts.pushes, 3);
        drop(conn);
        // A policy's windows are counted over the same requests, each window on its own (below
        // the numbers the rules compare them with: exactly).
        let windows = [(15, 5), (25, 5), (600, 5)].into_iter().collect();
        let counts = super::super::policies::push_counts(&db, &app.id, &user, now, &windows)
            .await
            .expect("counts");
        assert_eq!(counts, [(15, 1), (25, 2), (600, 3)].into_iter().collect());
        assert!(
            super::super::policies::push_counts(&db, &app.id, &user, now, &Default::default())
                .await
                .expect("no windows")
                .is_empty()
        );
        // Recent approvals: each address once, with its latest approval in the window; denied
        // ones and older ones are not approvals to go by.
        let approved = |ip: &str, answered_at: i64, state: AuthenticationState| {
            let mut a = pending(&app.id, &user, now - 5_000);
            a.state = state;
            a.accessing_ip = Some(ip.into());
            a.answered_at = Some(answered_at);
            a
        };
        for a in [
            approved("203.0.113.5", now - 100, AuthenticationState::Approved),
            approved("203.0.113.5", now - 50, AuthenticationState::Approved),
            approved("198.51.100.1", now - 2_000, AuthenticationState::Approved),
            approved("192.0.2.1", now - 10, AuthenticationState::Denied),
        ] {
            insert(db.writer(), &a).await.expect("insert");
        }
        let recent = super::super::policies::recent_successes(&db, &app.id, &user, now - 1_800)
            .await
            .expect("recent");
        assert_eq!(recent, vec![("203.0.113.5".to_string(), now - 50)]);
        db.close().await;
    }

    /// The recent-approvals look-back reads the newest approvals of its window and no more: an
    /// address approved only before the last `RECENT_APPROVALS_READ` of them is not among the
    /// addresses, one approved among them is, with its latest approval.
    #[tokio::test]
    async fn the_recent_approvals_look_back_stops_at_the_newest_approvals() {
        use super::super::policies::{RECENT_APPROVALS_READ, recent_successes};
        let (_dir, db, app) = database_with_application().await;
        let user: UserId = "alice".parse().expect("user");
        let now = 1_000_000;
        let approved = |ip: &str, answered_at: i64| {
            let mut a = pending(&app.id, &user, answered_at - 5);
            a.state = AuthenticationState::Approved;
            a.accessing_ip = Some(ip.into());
            a.answered_at = Some(answered_at);
            a
        };
        let newest = i64::from(RECENT_APPROVALS_READ);
        // Oldest first: one approval from the office, one from home, then the newest ones from
        // a phone network, the first of which is the home address again.
        let phone = (1..newest).map(|i| ("203.0.113.5", now - newest + i));
        for (ip, answered_at) in [
            ("192.0.2.10", now - 1_000 - newest),
            ("198.51.100.7", now - 999 - newest),
            ("198.51.100.7", now - newest),
        ]
        .into_iter()
        .chain(phone)
        {
            insert(db.writer(), &approved(ip, answered_at))
                .await
                .expect("insert");
        }
        let read = || async {
            recent_successes(&db, &app.id, &user, now - 10_000)
                .await
                .expect("recent")
        };
        assert_eq!(
            read().await,
            vec![
                ("203.0.113.5".to_string(), now - 1),
                ("198.51.100.7".to_string(), now - newest),
            ]
        );
        // Two approvals fewer from the phone network: the office is among the newest again.
        sqlx::query("DELETE FROM authentications WHERE answered_at >= $1")
            .bind(now - 2)
            .execute(db.writer())
            .await
            .expect("delete the two newest");
        assert_eq!(
            read().await,
            vec![
                ("203.0.113.5".to_string(), now - 3),
                ("198.51.100.7".to_string(), now - newest),
                ("192.0.2.10".to_string(), now - 1_000 - newest),
            ]
        );
        db.close().await;
    }

    /// Approvals without an address (CIBA's, a customer's request that gives none) are not
    /// among the look-back's approvals: however many are newer, the address of an older
    /// approval is found (the index holds only approvals with an address, migration 0055).
    #[tokio::test]
    async fn approvals_without_an_address_do_not_push_an_address_out_of_the_look_back() {
        use super::super::policies::{RECENT_APPROVALS_READ, recent_successes};
        let (_dir, db, app) = database_with_application().await;
        let user: UserId = "alice".parse().expect("user");
        let now = 1_000_000;
        let approved = |ip: Option<&str>, answered_at: i64| {
            let mut a = pending(&app.id, &user, answered_at - 5);
            a.state = AuthenticationState::Approved;
            a.accessing_ip = ip.map(str::to_string);
            a.answered_at = Some(answered_at);
            a
        };
        let newer = i64::from(RECENT_APPROVALS_READ) + 50;
        insert(db.writer(), &approved(Some("192.0.2.10"), now - newer - 1))
            .await
            .expect("insert");
        for i in 0..newer {
            insert(db.writer(), &approved(None, now - newer + i))
                .await
                .expect("insert");
        }
        assert_eq!(
            recent_successes(&db, &app.id, &user, now - 10_000)
                .await
                .expect("recent"),
            vec![("192.0.2.10".to_string(), now - newer - 1)]
        );
        db.close().await;
    }

    /// A policy's push counts stop, each window on its own, at the largest number a rule
    /// compares that window's count with: below it a count is exact, at it the window holds at
    /// least that many.
    #[tokio::test]
    async fn push_counts_stop_at_the_largest_number_compared() {
        let (_dir, db, app) = database_with_application().await;
        let user: UserId = "alice".parse().expect("user");
        let now = 100_000;
        // One push every 10 seconds over the last 1,000 seconds: 100, the newest at now - 5.
        for i in 0..100 {
            insert(db.writer(), &pending(&app.id, &user, now - 5 - 10 * i))
                .await
                .expect("insert");
        }
        let counts = |windows: &[(u32, u32)]| {
            let windows = windows.iter().copied().collect();
            let db = &db;
            let (app, user) = (&app.id, &user);
            async move {
                super::super::policies::push_counts(db, app, user, now, &windows)
                    .await
                    .expect("counts")
                    .into_iter()
                    .collect::<Vec<_>>()
            }
        };
        // Everything below the numbers compared with: exact (30 seconds hold 3 pushes).
        assert_eq!(
            counts(&[(30, 10), (1_000, 200)]).await,
            [(30, 3), (1_000, 100)]
        );
        // The long window stops at 20 pushes; the short one, below its number, is exact.
        assert_eq!(
            counts(&[(30, 20), (1_000, 20)]).await,
            [(30, 3), (1_000, 20)]
        );
        // Both stop at their own numbers.
        assert_eq!(
            counts(&[(300, 4), (1_000, 6)]).await,
            [(300, 4), (1_000, 6)]
        );
        // A rule comparing with 0 needs no walk at all.
        assert_eq!(counts(&[(1_000, 0)]).await, [(1_000, 0)]);
        db.close().await;
    }

    /// SQLite's query plan of `sql` (each line's detail), in a new migrated database.
    async fn sqlite_plan_of(sql: &str) -> Vec<String> {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite://{}", dir.path().join("plan.db").display());
        let db = Database::connect(&url, 2).await.expect("database");
        let plan = super::super::query_plans::sqlite_plan(&db, sql).await;
        db.close().await;
        plan
    }

    #[tokio::test]
    async fn the_admission_counts_are_one_indexed_query() {
        let details = sqlite_plan_of(&ADMISSION_COUNTS).await;
        for index in [
            // The user's unapproved requests are counted in the index alone, without their rows.
            "USING COVERING INDEX authentications_unapproved_by_user",
            "pending_expiries USING PRIMARY KEY",
            "t USING PRIMARY KEY",
        ] {
            assert!(
                details.iter().any(|d| d.contains(index)),
                "{index}: {details:?}"
            );
        }
        assert!(
            !details.iter().any(|d| d.starts_with("SCAN")),
            "{details:?}"
        );
    }

    /// The user's pending and recent counts of a new request walk the index of unapproved
    /// requests, in the index alone: the approvals of the window are not in it (migration
    /// `0036_unapproved_by_user.sql`; SQLite uses it only when the count repeats its condition).
    #[tokio::test]
    async fn the_push_bombing_counts_read_only_unapproved_requests() {
        // The user's pending count, then the recent count.
        for in_force in [2, 4] {
            let details = sqlite_plan_of(&admitted_insert_statement(in_force)).await;
            assert!(
                details
                    .iter()
                    .any(|d| d.contains("USING COVERING INDEX authentications_unapproved_by_user")),
                "{in_force}: {details:?}"
            );
        }
    }

    /// A device's pull finds its pending requests in `authentications_pending`, which holds
    /// nothing else (migration `0037_pending_by_enrollment.sql`): the pull's condition names the
    /// index's (`state = 'pending'`) as SQLite needs to use it.
    #[tokio::test]
    async fn a_pull_reads_the_index_of_pending_requests() {
        let details = sqlite_plan_of(PENDING_FOR).await;
        assert!(
            details.iter().any(|d| d.contains(
                "SEARCH authentications USING INDEX authentications_pending (enrollment_id=? AND expires_at>?)"
            )),
            "{details:?}"
        );
    }

    #[tokio::test]
    async fn an_ending_returns_which_follow_ups_wait_for_it() {
        let (_dir, db, app) = database_with_application().await;
        let user: UserId = "alice".parse().expect("user");
        let now = 10_000;
        let [all, flow_only, none, canceled] =
            std::array::from_fn(|_| pending(&app.id, &user, now - 30));
        for a in [&all, &flow_only, &none, &canceled] {
            insert(db.writer(), a).await.expect("insert");
        }
        // What waits, stored as the flows, QR sessions and device verifications store it (only
        // the columns the counts read are meaningful).
        let waits_as_verification = |id: &AuthenticationId| {
            format!(
                "INSERT INTO enrollments (enrollment_id, application_id, user_id, device_id, \
                 possession_key, user_verification_key, device_info, signals, push, push_provider, \
                 is_primary, registration_digest, server_payload, paired_at, last_seen_at, status, \
                 verification_id) VALUES ('{}', '{}', 'alice', 'd', '{{}}', '{{}}', '{{}}', '{{}}', \
                 '{{}}', 'none', 0, 'r_{id}', 'x', 0, 0, 'pending_verification', '{id}')",
                EnrollmentId::generate(),
                app.id
            )
        };
        let waits_as_qr_follow_up = |id: &AuthenticationId| {
            format!(
                "INSERT INTO qr_sessions (id, application_id, token_digest, code_expires_at, \
                 browser_token_digest, context, state, version, created_at, expires_at, \
                 follow_up_id) VALUES ('qr_{id}', '{}', 't_{id}', 0, 'b_{id}', '{{}}', 'pending', 0, 0, 0, \
                 '{id}')",
                app.id
            )
        };
        let waits_as_flow = |id: &AuthenticationId| {
            format!(
                "INSERT INTO flows (id, application_id, user_id, status, version, data, created_at, \
                 updated_at, expires_at, authentication_id) VALUES ('flw_{id}', '{}', 'alice', \
                 'PUSH_PENDING', 0, '{{}}', 0, 0, 0, '{id}')",
                app.id
            )
        };
        for sql in [
            waits_as_verification(&all.id),
            waits_as_qr_follow_up(&all.id),
            waits_as_flow(&all.id),
            waits_as_flow(&flow_only.id),
            waits_as_qr_follow_up(&canceled.id),
        ] {
            sqlx::query(&sql).execute(db.writer()).await.expect(&sql);
        }
        let waiting = |device_verification, qr_follow_up, flow| Waiting {
            device_verification,
            qr_follow_up,
            flow,
        };
        let ended = record_answer(db.writer(), &decided(&all, Decision::Approve, now))
            .await
            .expect("answer")
            .expect("recorded");
        assert_eq!(ended.0.state, AuthenticationState::Approved);
        assert_eq!(ended.1, waiting(true, true, true));
        let ended = record_answer(db.writer(), &wrong_number(&flow_only, now))
            .await
            .expect("wrong number")
            .expect("recorded");
        assert_eq!(ended.1, waiting(false, false, true));
        let ended = record_passcode_answer(db.writer(), &none.id, "{}", None, now)
            .await
            .expect("passcode")
            .expect("recorded");
        assert_eq!(ended.1, waiting(false, false, false));
        let ended = record_cancellation(db.writer(), &canceled.id, now)
            .await
            .expect("cancellation")
            .expect("recorded");
        assert_eq!(ended.0.state, AuthenticationState::Failed);
        assert_eq!(ended.1, waiting(false, true, false));
        db.close().await;
    }

    #[tokio::test]
    async fn a_request_is_stored_only_under_every_admission_limit() {
        let (_dir, db, app) = database_with_application().await;
        let user: UserId = "alice".parse().expect("user");
        paired(&db, &app.id, &user).await;
        let now = 10_000;
        for created_at in [now - 30, now - 20] {
            insert(db.writer(), &pending(&app.id, &user, created_at))
                .await
                .expect("insert");
        }
        let windows = windows_at(now, true);
        let open = AdmissionLimits {
            application_pending: Some(3),
            user_pending: Some(3),
            user_recent: Some(3),
            pushes: Some(3),
        };
        // Two pending, recent, counted pushes: a limit of 2 on any one count refuses.
        let mut conn = db.write().await.expect("connection");
        for refusing in [
            AdmissionLimits {
                application_pending: Some(2),
                ..open
            },
            AdmissionLimits {
                user_pending: Some(2),
                ..open
            },
            AdmissionLimits {
                user_recent: Some(2),
                ..open
            },
            AdmissionLimits {
                pushes: Some(2),
                ..open
            },
        ] {
            let refused = pending(&app.id, &user, now);
            assert!(
                insert_if_admitted(&mut conn, &refused, windows, refusing, &[])
                    .await
                    .expect("admission")
                    .is_none(),
                "{refusing:?}"
            );
            assert!(
                get_on(&mut *conn, &refused.id, now)
                    .await
                    .expect("read")
                    .is_none()
            );
        }
        let admitted = pending(&app.id, &user, now);
        assert!(
            insert_if_admitted(&mut conn, &admitted, windows, open, &[])
                .await
                .expect("admission")
                .is_some()
        );
        let stored = get_on(&mut *conn, &admitted.id, now)
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(stored.id, admitted.id);
        // No limit but the quota.
        let unlimited = AdmissionLimits {
            application_pending: Some(4),
            user_pending: None,
            user_recent: None,
            pushes: None,
        };
        assert!(
            insert_if_admitted(
                &mut conn,
                &pending(&app.id, &user, now),
                windows,
                unlimited,
                &[]
            )
            .await
            .expect("admission")
            .is_some()
        );
        assert_eq!(
            admission_counts(&mut *conn, &app.id, &user, windows)
                .await
                .expect("counts")
                .application_pending,
            4
        );
        drop(conn);
        db.close().await;
    }

    #[tokio::test]
    async fn every_combination_of_limits_admits_under_them_and_refuses_at_them() {
        let (_dir, db, app) = database_with_application().await;
        let user: UserId = "alice".parse().expect("user");
        paired(&db, &app.id, &user).await;
        let now = 10_000;
        // Two requests that every count takes (pending, recent, counted pushes).
        for created_at in [now - 30, now - 20] {
            insert(db.writer(), &pending(&app.id, &user, created_at))
                .await
                .expect("insert");
        }
        let windows = windows_at(now, true);
        let mut conn = db.write().await.expect("connection");
        for in_force in 0..16_usize {
            let limit = |bit: usize, most: i64| (in_force & bit != 0).then_some(most);
            let at = |most: i64| AdmissionLimits {
                application_pending: limit(1, most),
                user_pending: limit(2, most),
                user_recent: limit(4, most),
                pushes: limit(8, most),
            };
            // Each limit in force is at the two stored: refused, unless none is in force.
            let refused = pending(&app.id, &user, now);
            let stored = insert_if_admitted(&mut conn, &refused, windows, at(2), &[])
                .await
                .expect("admission")
                .is_some();
            assert_eq!(stored, in_force == 0, "limits {in_force:#06b}");
            if stored {
                delete_for_test(&mut conn, &refused.id).await;
            }
            // Far above the two: stored.
            let admitted = pending(&app.id, &user, now);
            assert!(
                insert_if_admitted(&mut conn, &admitted, windows, at(1_000), &[])
                    .await
                    .expect("admission")
                    .is_some(),
                "limits {in_force:#06b}"
            );
            delete_for_test(&mut conn, &admitted.id).await;
        }
        drop(conn);
        db.close().await;
    }

    #[tokio::test]
    async fn the_user_counts_stop_at_their_limit_and_still_refuse_there() {
        let (_dir, db, app) = database_with_application().await;
        let user: UserId = "bob".parse().expect("user");
        paired(&db, &app.id, &user).await;
        let now = 10_000;
        for n in 0..40 {
            insert(db.writer(), &pending(&app.id, &user, now - 100 + n))
                .await
                .expect("insert");
        }
        let windows = windows_at(now, false);
        let limits = |most: i64| AdmissionLimits {
            application_pending: None,
            user_pending: Some(most),
            user_recent: Some(most),
            pushes: None,
        };
        let mut conn = db.write().await.expect("connection");
        // Forty stored: a limit of 40 (the count stops there) refuses, 41 admits.
        for (most, admitted) in [(1, false), (39, false), (40, false), (41, true)] {
            let a = pending(&app.id, &user, now);
            assert_eq!(
                insert_if_admitted(&mut conn, &a, windows, limits(most), &[])
                    .await
                    .expect("admission")
                    .is_some(),
                admitted,
                "limit {most}"
            );
        }
        drop(conn);
        db.close().await;
    }

    /// Removes a request a test stored, so the next round counts the same rows.
    async fn delete_for_test(conn: &mut crate::store::Write<'_>, id: &AuthenticationId) {
        sqlx::query("DELETE FROM authentications WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut **conn)
            .await
            .expect("delete");
    }

    /// A PostgreSQL transaction that took `lock` for `user` of `app` as an admission does
    /// (`admission_verdict`, bound by [`bind_verdict`], with no limit in force).
    async fn begin_with_admission_locks(
        db: &Database,
        app: &ApplicationId,
        user: &UserId,
        lock: AdmissionLock,
    ) -> crate::store::Write<'static> {
        let mut w = db.write().await.expect("begin");
        let sql = format!(
            "SELECT admitted FROM admission_verdict({})",
            placeholders(1, VERDICT_VALUES)
        );
        let none = AdmissionLimits {
            application_pending: None,
            user_pending: None,
            user_recent: None,
            pushes: None,
        };
        let query = bind_verdict(
            sqlx::query(&sql),
            app,
            user,
            windows_at(0, false),
            none,
            lock,
        );
        let row = query.fetch_one(&mut w).await.expect("locked");
        assert!(row.try_get::<bool, _>("admitted").expect("admitted"));
        w
    }

    /// An admission lock taken in a transaction of its own, held until released.
    struct Holder {
        /// The margin the lock reported, sent once it is taken.
        locked: tokio::sync::oneshot::Receiver<i64>,
        release: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Holder {
        /// Asks for `lock` for `user` of `app`.
        fn start(db: &Database, app: &ApplicationId, user: &str, lock: AdmissionLock) -> Self {
            let (db, app) = (db.clone(), app.clone());
            let user: UserId = user.parse().expect("user id");
            let (locked_tx, locked) = tokio::sync::oneshot::channel();
            let (release, released) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let w = begin_with_admission_locks(&db, &app, &user, lock).await;
                let margin = match lock {
                    AdmissionLock::Shared { .. } => db.admission_margin(),
                    _ => 0,
                };
                locked_tx.send(margin).ok();
                released.await.ok();
                w.commit().await.expect("commit");
            });
            Holder {
                locked,
                release,
                task,
            }
        }

        /// Whether the lock is still not taken after a moment (held elsewhere).
        async fn waits(&mut self) -> bool {
            tokio::time::timeout(std::time::Duration::from_millis(300), &mut self.locked)
                .await
                .is_err()
        }

        /// The margin, once the lock is taken.
        async fn taken(&mut self) -> i64 {
            tokio::time::timeout(std::time::Duration::from_secs(10), &mut self.locked)
                .await
                .expect("the lock was not taken")
                .expect("holder")
        }

        /// Commits its transaction, which releases the lock.
        async fn release(self) {
            self.release.send(()).ok();
            tokio::time::timeout(std::time::Duration::from_secs(10), self.task)
                .await
                .expect("not committed")
                .expect("holder");
        }
    }

    #[tokio::test]
    async fn an_answer_is_recorded_only_on_the_request_it_was_checked_against() {
        let (_dir, db, app) = database_with_application().await;
        let user: UserId = "alice".parse().expect("user");
        let now = 10_000;
        let a = pending(&app.id, &user, now - 10);
        insert(db.writer(), &a).await.expect("insert");
        // Moved to another device, or signed again with another nonce, since the answer was
        // checked: nothing is recorded.
        let mut elsewhere = a.clone();
        elsewhere.enrollment_id = EnrollmentId::generate();
        let mut signed_again = a.clone();
        signed_again.nonce = "another nonce".into();
        for stale in [&elsewhere, &signed_again] {
            let answer = decided(stale, Decision::Approve, now);
            assert!(
                record_answer(db.writer(), &answer)
                    .await
                    .expect("query")
                    .is_none()
            );
        }
        let stored = get(&db, &a.id, now).await.expect("read").expect("stored");
        assert_eq!(stored.state, AuthenticationState::Pending);
        // As checked: recorded, and stored as `applied_to` says.
        let answer = decided(&a, Decision::ReportFraud, now);
        let (after, _) = record_answer(db.writer(), &answer)
            .await
            .expect("query")
            .expect("recorded");
        assert_eq!(
            (after.state, after.denial_reason),
            (
                AuthenticationState::Denied,
                Some(DenialReason::ReportedFraud)
            )
        );
        assert_eq!(format!("{after:?}"), format!("{:?}", answer.applied_to(&a)));
    }

    /// A PostgreSQL database (`url`, a pool of `connections`) with a new application.
    async fn postgres_with_application(
        url: &str,
        connections: u32,
    ) -> (Database, super::super::applications::Application) {
        let db = Database::connect(url, connections).await.expect("database");
        let app = super::super::test_application(&db).await;
        (db, app)
    }

    /// Admits `a` the way the server does on `db`'s engine: on PostgreSQL in one statement
    /// ([`admit_at_once`], under the user's lock), on SQLite in a write of its own. Whether it
    /// was stored.
    async fn admit_as_the_server_does(
        db: &Database,
        a: &Authentication,
        windows: AdmissionWindows,
        limits: AdmissionLimits,
        with: WrittenWith<'_>,
    ) -> bool {
        let condition = AdmissionCondition::Unconditional;
        refused_as_the_server_does(db, a, windows, limits, condition, with)
            .await
            .is_none()
    }

    /// [`admit_as_the_server_does`] under `condition`, answering whether it was refused: `None`
    /// when stored, else whether the bypass the condition asks for was found gone (as the
    /// server tells why it refused).
    async fn refused_as_the_server_does(
        db: &Database,
        a: &Authentication,
        windows: AdmissionWindows,
        limits: AdmissionLimits,
        condition: AdmissionCondition,
        with: WrittenWith<'_>,
    ) -> Option<bool> {
        if db.engine() == super::super::Engine::Postgres {
            let verdict =
                admit_at_once(db, a, windows, limits, AdmissionLock::User, condition, with)
                    .await
                    .expect("admission");
            return verdict.stored.is_none().then_some(verdict.bypass_gone);
        }
        let mut w = db.write().await.expect("write");
        let stored = insert_if_admitted_deciding(
            &mut w,
            a,
            windows,
            limits,
            condition,
            with.records,
            with.decision,
        )
        .await
        .expect("admission");
        if stored.is_some() {
            w.commit().await.expect("commit");
            return None;
        }
        let standing =
            crate::store::bypass::in_force(&mut w, &a.application_id, &a.user_id, windows.now)
                .await
                .expect("read");
        w.rollback().await.expect("rollback");
        Some(condition == AdmissionCondition::BypassInForce && !standing)
    }

    /// A new request's audit record and policy decision are written exactly when the request
    /// is stored.
    async fn check_records_go_with_the_admitted_insert(
        db: &Database,
        app: &super::super::applications::Application,
    ) {
        use super::super::audit::{Appended, NewRecord};
        let user: UserId = "carol".parse().expect("user");
        paired(db, &app.id, &user).await;
        let now = 10_000;
        insert(db.writer(), &pending(&app.id, &user, now - 5))
            .await
            .expect("insert");
        let record = |a: &Authentication| Appended {
            record: NewRecord {
                id: format!("evt_{}", a.id),
                at_ms: now * 1000,
                kind: "authentication.created".into(),
                actor: "customer".into(),
                application_id: Some(app.id.to_string()),
                outcome: "pending".into(),
                details: "{}".into(),
                ..NewRecord::default()
            },
            deliveries: None,
        };
        let records_of = |a: &Authentication| {
            let id = format!("evt_{}", a.id);
            async move {
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM audit_log WHERE id = $1")
                    .bind(id)
                    .fetch_one(db.pool())
                    .await
                    .expect("records")
            }
        };
        let one_pending = AdmissionLimits {
            application_pending: None,
            user_pending: Some(1),
            user_recent: None,
            pushes: None,
        };
        let windows = windows_at(now, false);
        // The policy decision that let a request through, with or without a location.
        let decision = |a: &Authentication, location: Option<(f64, f64)>| {
            let (id, subject) = (format!("pd_{}", a.id), a.id.to_string());
            (id, subject, location)
        };
        fn decision_row<'a>(
            app: &'a ApplicationId,
            user: &'a UserId,
            (id, subject, location): &'a (String, String, Option<(f64, f64)>),
            now: i64,
        ) -> super::super::policies::DecisionRecord<'a> {
            super::super::policies::DecisionRecord {
                id: id.as_str(),
                application_id: app,
                user_id: user,
                request_kind: "push",
                subject_id: Some(subject.as_str()),
                policy_version: 1,
                rule: "push",
                action: "require",
                effect: "require",
                reason: "",
                inputs: "{}",
                methods: "mobile_push",
                location: *location,
                created_at: now,
            }
        }
        let decided = |a: &Authentication| {
            let id = format!("pd_{}", a.id);
            async move {
                sqlx::query_as::<_, (i64, Option<f64>)>(
                    "SELECT COUNT(*), MAX(latitude) FROM policy_decisions WHERE id = $1",
                )
                .bind(id)
                .fetch_one(db.pool())
                .await
                .expect("decisions")
            }
        };
        // Refused (the user has one pending already): neither the request nor its records.
        let refused = pending(&app.id, &user, now);
        let refused_decision = decision(&refused, None);
        let stored = admit_as_the_server_does(
            db,
            &refused,
            windows,
            one_pending,
            WrittenWith {
                records: &[record(&refused)],
                decision: Some(&decision_row(&app.id, &user, &refused_decision, now)),
                ciba: None,
                flow: None,
            },
        )
        .await;
        assert!(!stored);
        assert_eq!(records_of(&refused).await, 0);
        assert_eq!(decided(&refused).await.0, 0);
        // Admitted: all of them, in the same write (with a located decision, then without).
        let mut most = 1;
        for location in [Some((52.52, 13.4)), None] {
            most += 1;
            let admitted = pending(&app.id, &user, now);
            let admitted_decision = decision(&admitted, location);
            let limits = AdmissionLimits {
                user_pending: Some(most),
                ..one_pending
            };
            let stored = admit_as_the_server_does(
                db,
                &admitted,
                windows,
                limits,
                WrittenWith {
                    records: &[record(&admitted)],
                    decision: Some(&decision_row(&app.id, &user, &admitted_decision, now)),
                    ciba: None,
                    flow: None,
                },
            )
            .await;
            assert!(stored);
            assert_eq!(records_of(&admitted).await, 1);
            assert_eq!(decided(&admitted).await, (1, location.map(|l| l.0)));
            assert!(get(db, &admitted.id, now).await.expect("read").is_some());
        }
    }

    #[tokio::test]
    async fn a_new_request_s_audit_record_is_written_exactly_when_it_is_stored() {
        let (_dir, db, app) = database_with_application().await;
        check_records_go_with_the_admitted_insert(&db, &app).await;
        if let Some(url) = postgres_url_for_tests(ADVISORY_LOCKS) {
            let (db, app) = postgres_with_application(&url, 2).await;
            check_records_go_with_the_admitted_insert(&db, &app).await;
        }
    }

    /// A request admitted under [`AdmissionCondition::BypassInForce`] is stored only while the
    /// user's bypass is in force at the admission's now, and the admission tells a missing
    /// bypass from a limit's refusal; a clearing under way is waited for, then stores nothing.
    async fn check_a_bypassed_admission_needs_the_bypass(
        db: &Database,
        app: &super::super::applications::Application,
    ) {
        let engine = db.engine();
        let user: UserId = "dora".parse().expect("user");
        paired(db, &app.id, &user).await;
        let now = 10_000;
        let windows = windows_at(now, false);
        let open = AdmissionLimits {
            application_pending: None,
            user_pending: None,
            user_recent: None,
            pushes: None,
        };
        let bypass_until = |until: i64| {
            sqlx::query(
                "INSERT INTO user_bypasses (application_id, user_id, granted_at, until, reason, \
                 granted_by) VALUES ($1, $2, 0, $3, 'test', 'api') \
                 ON CONFLICT (application_id, user_id) DO UPDATE SET until = $3",
            )
            .bind(app.id.as_str())
            .bind(user.as_str())
            .bind(until)
            .execute(db.writer())
        };
        let bypassed = || Authentication {
            state: AuthenticationState::Approved,
            answered_at: Some(now),
            ..pending(&app.id, &user, now)
        };
        let admitted = |a: Authentication, limits: AdmissionLimits| async move {
            let condition = AdmissionCondition::BypassInForce;
            let gone =
                refused_as_the_server_does(db, &a, windows, limits, condition, Default::default())
                    .await;
            let stored = get(db, &a.id, now).await.expect("read").is_some();
            assert_eq!(stored, gone.is_none(), "{engine:?}");
            gone
        };
        // No bypass, or one that ended: nothing stored, for the bypass.
        assert_eq!(admitted(bypassed(), open).await, Some(true), "{engine:?}");
        bypass_until(now).await.expect("granted");
        assert_eq!(admitted(bypassed(), open).await, Some(true), "{engine:?}");
        // In force: stored; refused by a limit, not for the bypass.
        bypass_until(now + 60).await.expect("granted");
        assert_eq!(admitted(bypassed(), open).await, None, "{engine:?}");
        let none_pending = AdmissionLimits {
            user_pending: Some(0),
            ..open
        };
        assert_eq!(
            admitted(bypassed(), none_pending).await,
            Some(false),
            "{engine:?}"
        );
        // A clearing under way: the admission waits for it, then stores nothing.
        let mut clearing = db.write().await.expect("write");
        sqlx::query("DELETE FROM user_bypasses WHERE application_id = $1 AND user_id = $2")
            .bind(app.id.as_str())
            .bind(user.as_str())
            .execute(&mut *clearing)
            .await
            .expect("deleted");
        let a = bypassed();
        let admission = {
            let (db, a) = (db.clone(), a.clone());
            tokio::spawn(async move {
                let condition = AdmissionCondition::BypassInForce;
                refused_as_the_server_does(&db, &a, windows, open, condition, Default::default())
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !admission.is_finished(),
            "{engine:?}: waits for the clearing"
        );
        clearing.commit().await.expect("cleared");
        assert_eq!(admission.await.expect("ran"), Some(true), "{engine:?}");
        assert!(
            get(db, &a.id, now).await.expect("read").is_none(),
            "{engine:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_admitted_while_bypassed_is_stored_only_while_the_bypass_stands() {
        let (_dir, db, app) = database_with_application().await;
        check_a_bypassed_admission_needs_the_bypass(&db, &app).await;
        if let Some(url) = postgres_url_for_tests(ADVISORY_LOCKS) {
            let (db, app) = postgres_with_application(&url, 4).await;
            check_a_bypassed_admission_needs_the_bypass(&db, &app).await;
        }
    }

    #[tokio::test]
    async fn postgres_records_an_answer_and_its_audit_records_in_one_statement() {
        use super::super::audit::{Appended, NewRecord};
        use super::super::webhooks::EventDeliveries;
        let Some(url) = postgres_url_for_tests(ADVISORY_LOCKS) else {
            return;
        };
        let (db, app) = postgres_with_application(&url, 2).await;
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, application_id, url, secret, event_types, \
             created_at) VALUES ($1, $2, 'https://hooks.example/a', 'sealed', '', 0)",
        )
        .bind(format!("whe_{}", app.id))
        .bind(app.id.as_str())
        .execute(db.pool())
        .await
        .expect("endpoint");
        let user: UserId = "alice".parse().expect("user");
        let now = 10_000;
        let mut a = pending(&app.id, &user, now - 10);
        a.nonce = format!("nonce {}", a.id);
        insert(db.pool(), &a).await.expect("insert");
        let appended = |n: &str| {
            let id = format!("evt_{n}_{}", a.id);
            vec![
                Appended {
                    record: NewRecord {
                        id: id.clone(),
                        at_ms: now * 1000,
                        kind: "authentication.approved".into(),
                        actor: "user".into(),
                        application_id: Some(app.id.to_string()),
                        outcome: "approved".into(),
                        details: "{}".into(),
                        ..NewRecord::default()
                    },
                    deliveries: Some(EventDeliveries {
                        id_prefix: format!("whd_{n}_{}_", a.id),
                        application_id: app.id.to_string(),
                        event_id: id,
                        event_type: "authentication.approved".into(),
                        payload: "{}".into(),
                        created_at_ms: now * 1000,
                    }),
                },
                Appended {
                    record: NewRecord {
                        id: format!("evt_{n}_second_{}", a.id),
                        at_ms: now * 1000,
                        kind: "fraud.reported".into(),
                        actor: "user".into(),
                        outcome: "reported".into(),
                        details: "{}".into(),
                        ..NewRecord::default()
                    },
                    deliveries: None,
                },
            ]
        };
        let written = |n: &'static str| {
            let db = db.clone();
            let id = a.id.clone();
            async move {
                let records: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE id LIKE $1")
                        .bind(format!("evt_{n}_%{id}"))
                        .fetch_one(db.pool())
                        .await
                        .expect("records");
                let deliveries: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE id LIKE $1")
                        .bind(format!("whd_{n}_{id}_%"))
                        .fetch_one(db.pool())
                        .await
                        .expect("deliveries");
                (records, deliveries)
            }
        };
        let mut reader = db.reader().await.expect("connection");
        let conn = reader.held_connection().expect("a held connection");
        // Checked against another nonce: neither the answer nor its records are written.
        let mut signed_again = a.clone();
        signed_again.nonce = "another nonce".into();
        let stale = decided(&signed_again, Decision::Approve, now);
        let records = appended("stale");
        assert!(
            record_answer_with_audit(conn, &stale, &records)
                .await
                .expect("statement")
                .is_none()
        );
        assert_eq!(written("stale").await, (0, 0));
        // As checked: the answer, both records and the delivery, committed together.
        let answer = decided(&a, Decision::Approve, now);
        let records = appended("won");
        let RecordedAnswer {
            record: after,
            waiting,
            webhooks_queued: queued,
            waiting_flow,
        } = record_answer_with_audit(conn, &answer, &records)
            .await
            .expect("statement")
            .expect("recorded");
        assert!(queued);
        assert!(waiting_flow.is_none(), "no flow waits for it");
        assert!(!waiting.flow && !waiting.qr_follow_up && !waiting.device_verification);
        assert_eq!(format!("{after:?}"), format!("{:?}", answer.applied_to(&a)));
        assert_eq!(written("won").await, (2, 1));
        // Answered already: the second answer writes nothing.
        let records = appended("late");
        let late = decided(&a, Decision::Deny, now);
        assert!(
            record_answer_with_audit(conn, &late, &records)
                .await
                .expect("statement")
                .is_none()
        );
        assert_eq!(written("late").await, (0, 0));
        let stored = get(&db, &a.id, now).await.expect("read").expect("stored");
        assert_eq!(stored.state, AuthenticationState::Approved);
        // A push a flow waits for: the statement reads the flow as it stands, for the flow's
        // follow-up.
        let mut b = pending(&app.id, &user, now - 10);
        b.nonce = format!("nonce {}", b.id);
        insert(db.pool(), &b).await.expect("insert");
        let flow = crate::store::flows::StoredFlow {
            id: tessera_protocol::flows::FlowId::generate(),
            application_id: app.id.clone(),
            user_id: Some(user.clone()),
            status: "PUSH_CONFIRMATION_WAITING".into(),
            version: 7,
            data: "{\"kept\":true}".into(),
            authentication_id: Some(b.id.clone()),
            created_at: now - 20,
            updated_at: now - 10,
            expires_at: now + 600,
        };
        let created = crate::store::flows::FlowEvent {
            at: now - 20,
            action: "create".into(),
            from_status: None,
            to_status: flow.status.clone(),
            error: None,
        };
        crate::store::flows::insert(&db, &flow, &created)
            .await
            .expect("flow");
        let answer = decided(&b, Decision::Approve, now);
        let recorded = record_answer_with_audit(conn, &answer, &appended("flow"))
            .await
            .expect("statement")
            .expect("recorded");
        assert!(recorded.waiting.flow);
        assert_eq!(
            recorded.waiting_flow.map(|f| format!("{f:?}")),
            Some(format!("{flow:?}")),
            "the waiting flow, as stored"
        );
        assert_eq!(written("flow").await, (2, 1));
    }

    /// The indexes PostgreSQL's plan of `sql` (parameters declared `text`, or `bigint` where
    /// an argument is a number) reads `relation` through, for `arguments`, with
    /// `plan_cache_mode` as given.
    async fn pg_indexes_read(
        conn: &mut sqlx::PgConnection,
        relation: &str,
        sql: &str,
        arguments: &[&str],
        plan_cache_mode: &str,
    ) -> Vec<String> {
        fn walk(node: &serde_json::Value, relation: &str, found: &mut Vec<String>) {
            if node["Relation Name"] == relation {
                found.push(
                    node["Index Name"]
                        .as_str()
                        .unwrap_or(node["Node Type"].as_str().unwrap_or("?"))
                        .to_string(),
                );
            }
            for child in node["Plans"].as_array().into_iter().flatten() {
                walk(child, relation, found);
            }
        }
        sqlx::query(&format!("SET plan_cache_mode = {plan_cache_mode}"))
            .execute(&mut *conn)
            .await
            .expect("mode");
        let types: Vec<&str> = arguments
            .iter()
            .map(|a| {
                if a.parse::<i64>().is_ok() {
                    "bigint"
                } else {
                    "text"
                }
            })
            .collect();
        let types = types.join(", ");
        let _ = sqlx::query("DEALLOCATE planned").execute(&mut *conn).await;
        sqlx::query(&format!("PREPARE planned({types}) AS {sql}"))
            .execute(&mut *conn)
            .await
            .expect("prepare");
        let values: Vec<String> = arguments.iter().map(|a| format!("'{a}'")).collect();
        let row = sqlx::query(&format!(
            "EXPLAIN (FORMAT JSON) EXECUTE planned({})",
            values.join(", ")
        ))
        .fetch_one(&mut *conn)
        .await
        .expect("explain");
        // `json` arrives as its UTF-8 text; sqlx is built without its JSON types.
        let plan: String = sqlx::Row::try_get_unchecked(&row, 0).expect("plan text");
        let plan: serde_json::Value = serde_json::from_str(&plan).expect("json");
        let mut found = Vec::new();
        walk(&plan[0]["Plan"], relation, &mut found);
        found
    }

    /// On a connection to `schema_url`: asserts that PostgreSQL has not analyzed `relation` yet,
    /// and that it reads `relation` only through `index` for `sql` on `arguments`, with a custom
    /// plan and with a generic one.
    async fn assert_unanalyzed_read_through(
        schema_url: &str,
        relation: &str,
        sql: &str,
        arguments: &[&str],
        index: &str,
    ) {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(schema_url)
            .await
            .expect("postgres");
        let analyzed: Option<i64> = sqlx::query_scalar(
            "SELECT analyze_count + autoanalyze_count FROM pg_stat_user_tables \
             WHERE relname = $1 AND schemaname = current_schema()",
        )
        .bind(relation)
        .fetch_optional(&mut conn)
        .await
        .expect("statistics");
        assert_eq!(
            analyzed.unwrap_or(0),
            0,
            "{relation} must not be analyzed yet"
        );
        for mode in ["force_custom_plan", "force_generic_plan"] {
            assert_eq!(
                pg_indexes_read(&mut conn, relation, sql, arguments, mode).await,
                [index],
                "{mode}"
            );
        }
        let _ = sqlx::Connection::close(conn).await;
    }

    /// Before PostgreSQL has analyzed `authentications` (a new database, or one that grew
    /// faster than autovacuum analyzes it), its planner weighed the primary key against
    /// `authentications_by_user`, which starts with the application, as equals, and picked the
    /// latter for the relying party's status read: each read walked the application's requests
    /// (docs/benchmarks.md). The read must find its row by the key whatever the statistics, and
    /// still only for the application whose key is presented.
    #[tokio::test]
    async fn the_status_read_finds_its_row_by_key_before_any_analyze() {
        let Some(url) = postgres_url_for_tests(ADVISORY_LOCKS) else {
            return;
        };
        super::super::query_plans::in_fresh_pg_schema(&url, |schema_url| async move {
            let (db, app) = postgres_with_application(&schema_url, 2).await;
            let (_, other) = postgres_with_application(&schema_url, 2).await;
            let user: UserId = "alice".parse().expect("user");
            let mut last = None;
            for n in 0..300 {
                let a = pending(&app.id, &user, 10_000 + n);
                insert(db.pool(), &a).await.expect("insert");
                last = Some(a);
            }
            let last = last.expect("rows");
            let digest = format!("digest {}", app.id);
            let read = |id: &AuthenticationId, app: &ApplicationId, digest: &str| {
                let (db, id, app, digest) =
                    (db.clone(), id.clone(), app.clone(), digest.to_string());
                async move {
                    get_with_key(&db, &id, &app, &digest, 10_000)
                        .await
                        .expect("read")
                        .map(|a| a.id)
                }
            };
            assert_eq!(
                read(&last.id, &app.id, &digest).await,
                Some(last.id.clone())
            );
            // Another application's own key does not read this application's request, nor
            // does this application's id with the other's key.
            let other_digest = format!("digest {}", other.id);
            assert_eq!(read(&last.id, &other.id, &other_digest).await, None);
            assert_eq!(read(&last.id, &app.id, &other_digest).await, None);

            let arguments = [last.id.as_str(), app.id.as_str(), digest.as_str()];
            assert_unanalyzed_read_through(
                &schema_url,
                "authentications",
                &BY_ID_WITH_KEY,
                &arguments,
                "authentications_pkey",
            )
            .await;
            db.close().await;
        })
        .await;
    }

    /// The count of an application's open QR sessions (every new session, under its quota
    /// lock) reads only open sessions, before any `ANALYZE` too: through `qr_sessions_by_application`
    /// PostgreSQL kept the states as a filter and walked every unexpired session of the
    /// application, finished ones included (migration 0038).
    #[tokio::test]
    async fn the_open_qr_session_count_reads_only_open_sessions_before_any_analyze() {
        let Some(url) = postgres_url_for_tests(ADVISORY_LOCKS) else {
            return;
        };
        super::super::query_plans::in_fresh_pg_schema(&url, |schema_url| async move {
            let (db, app) = postgres_with_application(&schema_url, 2).await;
            // 300 finished sessions and 2 open ones, none expired at 10,000.
            sqlx::query(
                "INSERT INTO qr_sessions (id, application_id, token_digest, code_expires_at, \
                 browser_token_digest, context, state, version, created_at, expires_at) \
                 SELECT 'qrs_' || n, $1, 'digest ' || n, 10300, 'browser ' || n, '{}', \
                 CASE WHEN n <= 300 THEN 'approved' ELSE 'created' END, 1, 9900, 10300 \
                 FROM generate_series(1, 302) AS n",
            )
            .bind(app.id.as_str())
            .execute(db.pool())
            .await
            .expect("sessions");
            let open: i64 = sqlx::query_scalar(super::super::qr_sessions::OPEN_FOR_APPLICATION)
                .bind(app.id.as_str())
                .bind(10_000_i64)
                .fetch_one(db.pool())
                .await
                .expect("count");
            assert_eq!(open, 2);
            let arguments = [app.id.as_str(), "10000"];
            assert_unanalyzed_read_through(
                &schema_url,
                "qr_sessions",
                super::super::qr_sessions::OPEN_FOR_APPLICATION,
                &arguments,
                "qr_sessions_open",
            )
            .await;
            db.close().await;
        })
        .await;
    }

    #[tokio::test]
    async fn an_answer_on_a_lost_connection_closes_it_for_the_next_request() {
        let Some(url) = postgres_url_for_tests(ADVISORY_LOCKS) else {
            return;
        };
        let (db, app) = postgres_with_application(&url, 2).await;
        let user: UserId = "alice".parse().expect("user");
        let now = 10_000;
        let a = pending(&app.id, &user, now - 10);
        insert(db.pool(), &a).await.expect("insert");
        let mut reader = db.reader().await.expect("connection");
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *reader)
            .await
            .expect("pid");
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(db.pool())
            .await
            .expect("terminated");
        assert!(ended);
        let conn = reader.held_connection().expect("a held connection");
        let answer = decided(&a, Decision::Approve, now);
        record_answer_with_audit(conn, &answer, &[])
            .await
            .expect_err("the session is gone");
        drop(reader);

        // The next request gets a working connection (the lost one was closed, not kept idle),
        // and the answer can still be recorded.
        let mut next = db.reader().await.expect("connection");
        let other: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *next)
            .await
            .expect("the next request's first statement");
        assert_ne!(other, pid);
        let conn = next.held_connection().expect("a held connection");
        assert!(
            record_answer_with_audit(conn, &answer, &[])
                .await
                .expect("statement")
                .is_some()
        );
    }

    #[tokio::test]
    async fn admissions_of_one_application_share_its_lock_and_an_exclusive_one_waits_for_them() {
        let Some(url) = postgres_url_for_tests(ADVISORY_LOCKS) else {
            return;
        };
        let db = Database::connect(&url, 8).await.expect("database");
        let app = ApplicationId::generate();
        let max_connections: i64 =
            sqlx::query_scalar("SELECT current_setting('max_connections')::BIGINT")
                .fetch_one(db.pool())
                .await
                .expect("max_connections");
        let shared = AdmissionLock::Shared { user: true };
        // Two users side by side, each told the margin.
        let mut alice = Holder::start(&db, &app, "alice", shared);
        let mut bob = Holder::start(&db, &app, "bob", shared);
        assert_eq!(alice.taken().await, max_connections);
        assert_eq!(bob.taken().await, max_connections);
        // One user's second admission waits for the first (the user's lock), holding the
        // application's lock shared meanwhile.
        let mut alice_again = Holder::start(&db, &app, "alice", shared);
        assert!(
            alice_again.waits().await,
            "one user, one admission at a time"
        );
        // An exclusive admission waits for every shared one; one of another application does
        // not.
        let mut exclusive = Holder::start(&db, &app, "carol", AdmissionLock::Exclusive);
        assert!(
            exclusive.waits().await,
            "an exclusive admission waits for shared ones"
        );
        let mut other = Holder::start(
            &db,
            &ApplicationId::generate(),
            "carol",
            AdmissionLock::Exclusive,
        );
        assert_eq!(other.taken().await, 0);
        other.release().await;
        // A shared admission asked for while an exclusive one waits queues behind it.
        let mut dave = Holder::start(&db, &app, "dave", shared);
        assert!(
            dave.waits().await,
            "a shared admission does not overtake an exclusive one"
        );
        bob.release().await;
        alice.release().await;
        assert_eq!(alice_again.taken().await, max_connections);
        assert!(
            exclusive.waits().await,
            "alice's second admission holds it shared"
        );
        alice_again.release().await;
        assert_eq!(exclusive.taken().await, 0);
        assert!(dave.waits().await, "the exclusive admission holds it");
        exclusive.release().await;
        assert_eq!(dave.taken().await, max_connections);
        dave.release().await;
    }

    #[tokio::test]
    async fn without_an_application_quota_only_one_user_s_admissions_take_turns() {
        let Some(url) = postgres_url_for_tests(ADVISORY_LOCKS) else {
            return;
        };
        let db = Database::connect(&url, 6).await.expect("database");
        let app = ApplicationId::generate();
        let mut alice = Holder::start(&db, &app, "alice", AdmissionLock::User);
        assert_eq!(alice.taken().await, 0);
        let mut alice_again = Holder::start(&db, &app, "alice", AdmissionLock::User);
        assert!(
            alice_again.waits().await,
            "one user, one admission at a time"
        );
        // Another user, and an exclusive admission of the application: neither waits for
        // alice's (the user's lock is not the application's).
        let mut bob = Holder::start(&db, &app, "bob", AdmissionLock::User);
        assert_eq!(bob.taken().await, 0);
        let mut exclusive = Holder::start(&db, &app, "carol", AdmissionLock::Exclusive);
        assert_eq!(exclusive.taken().await, 0);
        bob.release().await;
        exclusive.release().await;
        assert!(alice_again.waits().await, "still behind alice's first");
        alice.release().await;
        assert_eq!(alice_again.taken().await, 0);
        alice_again.release().await;
    }

    #[tokio::test]
    async fn a_verdict_counts_what_the_admission_that_held_its_locks_committed() {
        let Some(url) = postgres_url_for_tests(ADVISORY_LOCKS) else {
            return;
        };
        let (db, app) = postgres_with_application(&url, 4).await;
        let user: UserId = "alice".parse().expect("user");
        paired(&db, &app.id, &user).await;
        let now = 10_000;
        let windows = windows_at(now, false);
        let one_pending = AdmissionLimits {
            application_pending: None,
            user_pending: Some(1),
            user_recent: None,
            pushes: None,
        };
        // An admission holds alice's lock and has stored her first request, not yet committed.
        let mut first_admission =
            begin_with_admission_locks(&db, &app.id, &user, AdmissionLock::User).await;
        let first = pending(&app.id, &user, now);
        let stored = insert_if_admitted(&mut first_admission, &first, windows, one_pending, &[])
            .await
            .expect("first");
        assert!(stored.is_some());
        // A second one waits for the lock. Its statement began before the first committed: a
        // count read in the statement's own snapshot would miss the first request and store a
        // second one past the limit.
        let second = pending(&app.id, &user, now);
        let task = {
            let (db, second) = (db.clone(), second.clone());
            tokio::spawn(async move {
                admit_at_once(
                    &db,
                    &second,
                    windows,
                    one_pending,
                    AdmissionLock::User,
                    AdmissionCondition::Unconditional,
                    WrittenWith::default(),
                )
                .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !task.is_finished(),
            "the second admission waits for the lock"
        );
        first_admission.commit().await.expect("commit");
        let verdict = tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("admitted after the commit")
            .expect("task")
            .expect("verdict");
        assert!(verdict.stored.is_none(), "one pending request at most");
        assert_eq!(verdict.counts.user_pending, 1);
        assert!(get(&db, &second.id, now).await.expect("read").is_none());
    }

    #[tokio::test]
    async fn a_burst_of_admissions_at_once_stores_no_more_than_each_limit() {
        let Some(url) = postgres_url_for_tests(ADVISORY_LOCKS) else {
            return;
        };
        let (db, app) = postgres_with_application(&url, 8).await;
        let now = 10_000;
        let windows = windows_at(now, false);
        // One user's burst against the user's limit; many users' against the application's
        // quota, exclusive (what the server falls back to under a shared lock).
        let bursts = [
            (
                AdmissionLimits {
                    application_pending: None,
                    user_pending: Some(3),
                    user_recent: None,
                    pushes: None,
                },
                AdmissionLock::User,
                false,
                3,
            ),
            (
                AdmissionLimits {
                    application_pending: Some(3 + 5),
                    user_pending: None,
                    user_recent: None,
                    pushes: None,
                },
                AdmissionLock::Exclusive,
                true,
                5,
            ),
        ];
        for (limits, lock, many_users, expected) in bursts {
            let mut tasks = Vec::new();
            for n in 0..16 {
                let user: UserId = if many_users {
                    format!("user-{n}").parse().expect("user")
                } else {
                    "alice".parse().expect("user")
                };
                paired(&db, &app.id, &user).await;
                let (db, a) = (db.clone(), pending(&app.id, &user, now));
                tasks.push(tokio::spawn(async move {
                    let (condition, with) =
                        (AdmissionCondition::Unconditional, WrittenWith::default());
                    admit_at_once(&db, &a, windows, limits, lock, condition, with)
                        .await
                        .expect("verdict")
                }));
            }
            let mut stored = 0;
            for task in tasks {
                let verdict = task.await.expect("task");
                if verdict.stored.is_some() {
                    stored += 1;
                } else if many_users {
                    assert_eq!(verdict.counts.application_pending, 3 + 5);
                } else {
                    assert_eq!(verdict.counts.user_pending, 3);
                }
            }
            assert_eq!(stored, expected, "{lock:?}");
        }
    }

    /// The buffers PostgreSQL touched to run `admission_verdict` for `user` under the user's
    /// pending and recent limits (no lock, no quota, no push limit) in a session that ran it
    /// before, and the counts it gave.
    async fn verdict_cost(
        url: &str,
        db: &Database,
        app: &ApplicationId,
        user: &UserId,
        windows: AdmissionWindows,
    ) -> (u64, i64, i64) {
        use sqlx::Connection;
        let call = format!(
            "SELECT * FROM admission_verdict(0, 0, 0, 0, 0, '{app}', '{user}', {now}, NULL, \
             {pending_since}, 100, {recent_since}, 100, NULL, NULL)",
            now = windows.now,
            pending_since = windows.pending_since,
            recent_since = windows.recent_since,
        );
        // A session plans the function's statements on its first call (catalog reads, counted
        // as buffers too): the second call is what every later one costs.
        let mut conn = sqlx::PgConnection::connect(url).await.expect("postgres");
        let explain = format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {call}");
        sqlx::query(&explain)
            .fetch_one(&mut conn)
            .await
            .expect("explain");
        let explained = sqlx::query(&explain)
            .fetch_one(&mut conn)
            .await
            .expect("explain");
        let _ = conn.close().await;
        // `json` arrives as its UTF-8 text; sqlx is built without its JSON types.
        let text: String = explained.try_get_unchecked(0).expect("plan text");
        let plan: serde_json::Value = serde_json::from_str(&text).expect("plan JSON");
        let top = &plan[0]["Plan"];
        let buffers = ["Shared Hit Blocks", "Shared Read Blocks"]
            .iter()
            .map(|k| top[*k].as_u64().expect("buffers"))
            .sum();
        let row = sqlx::query(&call)
            .fetch_one(db.pool())
            .await
            .expect("verdict");
        (
            buffers,
            row.try_get("user_pending").expect("pending"),
            row.try_get("user_recent").expect("recent"),
        )
    }

    /// A user who approved thousands of requests within the window (a shared account, a service
    /// user, a busy phone) costs a new request's push-bombing counts nothing of them: the counts
    /// walk `authentications_unapproved_by_user`, which an approval leaves, not every request
    /// of the window. Fails without migration `0036_unapproved_by_user.sql` (an index entry, and
    /// on a page not yet all-visible a visit of its row, for every approval).
    #[tokio::test]
    async fn the_push_bombing_counts_step_over_approved_requests() {
        let Some(shared) = postgres_url_for_tests(ADVISORY_LOCKS) else {
            return;
        };
        // On a database of its own: old index entries are skipped once no transaction of the
        // same database can still see them, so the other tests' transactions (which share
        // theirs) cannot hold the count back.
        let own = OwnDatabase::create(&shared, "tessera_counts").await;
        let url = own.url.clone();
        let (db, app) = postgres_with_application(&url, 2).await;
        let user: UserId = "alice".parse().expect("user");
        let now = 10_000;
        let windows = windows_at(now, false);
        // 3,000 requests of the last five minutes, stored pending and then approved a hundred
        // at a time, each hundred followed by a new request's counts, as the server goes.
        let first = pending(&app.id, &user, now - 300);
        insert(db.writer(), &first).await.expect("insert");
        let copied = format!(
            "id || '-' || $2 || '-' || g, {}",
            COLUMNS
                .strip_prefix("id, ")
                .expect("id first")
                .replace("created_at", "created_at + $2")
        );
        let copies = format!(
            "INSERT INTO authentications ({COLUMNS}) SELECT {copied} \
             FROM authentications, generate_series(1, 100) g WHERE id = $1"
        );
        for batch in 0..30_i64 {
            sqlx::query(&copies)
                .bind(first.id.as_str())
                .bind(batch)
                .execute(db.pool())
                .await
                .expect("copies");
            sqlx::query(
                "UPDATE authentications SET state = 'approved', answered_at = $2 \
                 WHERE application_id = $1 AND state = 'pending' AND id <> $3",
            )
            .bind(app.id.as_str())
            .bind(now - 200)
            .bind(first.id.as_str())
            .execute(db.pool())
            .await
            .expect("approved");
            let _ = verdict_cost(&url, &db, &app.id, &user, windows).await;
        }
        sqlx::query("UPDATE authentications SET state = 'approved' WHERE id = $1")
            .bind(first.id.as_str())
            .execute(db.pool())
            .await
            .expect("approved");
        // Two still pending, one denied: what the counts count.
        for _ in 0..2 {
            insert(db.writer(), &pending(&app.id, &user, now - 100))
                .await
                .expect("pending");
        }
        let denied = pending(&app.id, &user, now - 100);
        insert(db.writer(), &denied).await.expect("denied");
        sqlx::query("UPDATE authentications SET state = 'denied' WHERE id = $1")
            .bind(denied.id.as_str())
            .execute(db.pool())
            .await
            .expect("deny");
        // About 80 here (the plans' look-ups included), about 600 over every request of the
        // window. The approvals' old index entries are skipped once no transaction can still see
        // them, and marked so by the first count that finds them dead: it is measured again
        // until then (the database's own autovacuum can hold them for a moment).
        let mut buffers = u64::MAX;
        for _ in 0..120 {
            let (cost, user_pending, user_recent) =
                verdict_cost(&url, &db, &app.id, &user, windows).await;
            assert_eq!((user_pending, user_recent), (2, 3));
            buffers = cost;
            if buffers < 200 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        assert!(
            buffers < 200,
            "{buffers} buffers to count 3 requests among 3,003"
        );
        db.close().await;
        own.drop_now().await;
    }

    /// A PostgreSQL database of a test's own, beside the one `DATABASE_URL` names (the role may
    /// create databases: `scripts/start-postgres.sh`). Dropped by [`OwnDatabase::drop_now`];
    /// one a failed test left behind is dropped by the next that makes one of that name's kind.
    struct OwnDatabase {
        /// The URL of the database the test was given, to drop this one from.
        shared: String,
        /// This database's name.
        name: String,
        /// This database's URL (the given one's query kept).
        url: String,
    }

    impl OwnDatabase {
        async fn create(shared: &str, kind: &str) -> Self {
            use sqlx::Connection;
            let (base, query) = shared.split_once('?').unwrap_or((shared, ""));
            let (prefix, _) = base.rsplit_once('/').expect("a database name");
            let mut admin = sqlx::PgConnection::connect(shared).await.expect("postgres");
            let left: Vec<String> =
                sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
                    .bind(format!("{kind}\\_%"))
                    .fetch_all(&mut admin)
                    .await
                    .expect("databases");
            for name in left {
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .expect("drop a database left behind");
            }
            let name = format!("{kind}_{}", rand::random::<u32>());
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await
                .expect("create a database");
            let _ = admin.close().await;
            let url = if query.is_empty() {
                format!("{prefix}/{name}")
            } else {
                format!("{prefix}/{name}?{query}")
            };
            Self {
                shared: shared.to_string(),
                name,
                url,
            }
        }

        async fn drop_now(self) {
            use sqlx::Connection;
            let mut admin = sqlx::PgConnection::connect(&self.shared)
                .await
                .expect("postgres");
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await
            .expect("drop the database");
            let _ = admin.close().await;
        }
    }

    #[test]
    fn the_verdict_counts_with_the_predicates_of_the_other_counts() {
        let function = include_str!("../../migrations/postgres/0035_admission_verdict.sql");
        for predicate in [USER_FACING, PENDING, UNAPPROVED] {
            assert!(
                function.contains(&format!("a.{predicate}")),
                "{predicate} is not counted by admission_verdict"
            );
        }
        // The pushes are tallied by what the request stores as `push_counted`, and counted
        // from the tallies (0045 replaces the function).
        for migration in [
            include_str!("../../migrations/postgres/0045_push_tallies.sql"),
            include_str!("../../migrations/sqlite/0045_push_tallies.sql"),
        ] {
            assert!(
                migration.contains(&format!("NEW.{COUNTED_PUSH}")),
                "{COUNTED_PUSH} is not what the tallies count"
            );
        }
        let replaced = include_str!("../../migrations/postgres/0045_push_tallies.sql");
        assert!(replaced.contains("CREATE OR REPLACE FUNCTION admission_verdict("));
        assert!(replaced.contains("FROM push_tallies t"));
    }

    #[test]
    fn admission_lock_keys_are_stable_and_apart() {
        let app: ApplicationId = ApplicationId::generate();
        // One key per application, another per user of it; the same every time.
        assert_eq!(lock_key(&[app.as_str()]), lock_key(&[app.as_str()]));
        assert_ne!(
            lock_key(&[app.as_str(), "alice"]),
            lock_key(&[app.as_str(), "bob"])
        );
        assert_ne!(lock_key(&["ab", "c"]), lock_key(&["a", "bc"]));
    }
}
