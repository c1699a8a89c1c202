//! CIBA clients, backchannel requests, issued tokens, user codes and the ID token signing keys.

use sqlx::Row;
use tessera_protocol::ciba::{CibaClientInfo, ClientAuthMethod, DeliveryMode, GrantType};
use tessera_protocol::ids::{ApplicationId, UserId};

use super::secrets::{open_text, place, seal_text};
use super::users::{self, UserLock};
use super::{Database, is_unique_violation};
use crate::secrets::DataKey;
use crate::store::StoreError;

/// A registered client.
#[derive(Debug, Clone)]
pub struct CibaClient {
    /// Its id.
    pub client_id: String,
    /// The application whose users it may ask.
    pub application_id: ApplicationId,
    /// The name shown on devices.
    pub name: String,
    /// The delivery mode.
    pub delivery_mode: DeliveryMode,
    /// The notification endpoint (ping and push).
    pub notification_endpoint: Option<String>,
    /// How it authenticates.
    pub auth_method: ClientAuthMethod,
    /// SHA-256 of its secret (secret-based methods).
    pub secret_digest: Option<String>,
    /// Its public JWK Set (JSON).
    pub jwks: Option<String>,
    /// The algorithm its signed requests must use.
    pub request_signing_alg: Option<String>,
    /// Whether its requests must carry a user code.
    pub user_code_required: bool,
    /// When it was registered.
    pub created_at: i64,
    /// Its redirect URIs (authorization code grant), compared exactly.
    pub redirect_uris: Vec<String>,
    /// The grant types it may use.
    pub grant_types: Vec<GrantType>,
}

/// The grants of a registration made before clients chose theirs.
pub const LEGACY_GRANT_TYPES: &[GrantType] = &[GrantType::Ciba, GrantType::RefreshToken];

impl CibaClient {
    /// Whether the client may use `grant`.
    pub fn allows(&self, grant: GrantType) -> bool {
        self.grant_types.contains(&grant)
    }

    /// The client as listed (no secret).
    pub fn info(&self) -> CibaClientInfo {
        CibaClientInfo {
            client_id: self.client_id.clone(),
            client_name: self.name.clone(),
            backchannel_token_delivery_mode: self.delivery_mode,
            backchannel_client_notification_endpoint: self.notification_endpoint.clone(),
            token_endpoint_auth_method: self.auth_method,
            backchannel_authentication_request_signing_alg: self.request_signing_alg.clone(),
            backchannel_user_code_parameter: self.user_code_required,
            created_at: self.created_at,
            redirect_uris: self.redirect_uris.clone(),
            grant_types: self.grant_types.clone(),
        }
    }
}

const CLIENT_COLUMNS: &str = "client_id, application_id, name, delivery_mode, notification_endpoint, \
    auth_method, secret_digest, jwks, request_signing_alg, user_code_required, created_at, \
    redirect_uris, grant_types";

fn client_from_row(row: &sqlx::any::AnyRow) -> Result<CibaClient, StoreError> {
    Ok(CibaClient {
        client_id: row.try_get("client_id")?,
        application_id: row
            .try_get::<String, _>("application_id")?
            .parse()
            .map_err(|_| StoreError::Corrupted("application id"))?,
        name: row.try_get("name")?,
        delivery_mode: DeliveryMode::parse(&row.try_get::<String, _>("delivery_mode")?)
            .ok_or(StoreError::Corrupted("delivery mode"))?,
        notification_endpoint: row.try_get("notification_endpoint")?,
        auth_method: ClientAuthMethod::parse(&row.try_get::<String, _>("auth_method")?)
            .ok_or(StoreError::Corrupted("auth method"))?,
        secret_digest: row.try_get("secret_digest")?,
        jwks: row.try_get("jwks")?,
        request_signing_alg: row.try_get("request_signing_alg")?,
        user_code_required: row.try_get::<i64, _>("user_code_required")? != 0,
        created_at: row.try_get("created_at")?,
        redirect_uris: match row.try_get::<Option<String>, _>("redirect_uris")? {
            Some(json) => {
                serde_json::from_str(&json).map_err(|_| StoreError::Corrupted("redirect uris"))?
            }
            None => Vec::new(),
        },
        grant_types: match row.try_get::<Option<String>, _>("grant_types")? {
            Some(json) => {
                serde_json::from_str(&json).map_err(|_| StoreError::Corrupted("grant types"))?
            }
            None => LEGACY_GRANT_TYPES.to_vec(),
        },
    })
}

/// Stores a new client.
pub async fn insert_client(db: &Database, client: &CibaClient) -> Result<(), StoreError> {
    insert_client_with_secret(db, client, None).await
}

/// Stores a new client with the secret its request objects are signed with (HMAC, redirect MFA
/// clients with a secret-based method), sealed with the data key in the same statement.
pub async fn insert_client_with_secret(
    db: &Database,
    client: &CibaClient,
    request_object_secret: Option<&str>,
) -> Result<(), StoreError> {
    let sealed = match request_object_secret {
        Some(secret) => seal_text(
            db.secrets()?,
            place("ciba_clients", "request_object_secret", &client.client_id),
            Some(secret),
        )?,
        None => None,
    };
    sqlx::query(&format!(
        "INSERT INTO ciba_clients ({CLIENT_COLUMNS}, request_object_secret) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    ))
    .bind(&client.client_id)
    .bind(client.application_id.as_str())
    .bind(&client.name)
    .bind(client.delivery_mode.as_str())
    .bind(client.notification_endpoint.as_deref())
    .bind(client.auth_method.as_str())
    .bind(client.secret_digest.as_deref())
    .bind(client.jwks.as_deref())
    .bind(client.request_signing_alg.as_deref())
    .bind(i64::from(client.user_code_required))
    .bind(client.created_at)
    .bind(
        serde_json::to_string(&client.redirect_uris)
            .map_err(|_| StoreError::Corrupted("redirect uris"))?,
    )
    .bind(
        serde_json::to_string(&client.grant_types)
            .map_err(|_| StoreError::Corrupted("grant types"))?,
    )
    .bind(sealed)
    .execute(db.writer())
    .await?;
    Ok(())
}

/// The secret a client's request objects may be signed with (HMAC), if it has one.
pub async fn request_object_secret(
    db: &Database,
    client_id: &str,
) -> Result<Option<zeroize::Zeroizing<String>>, StoreError> {
    let row = sqlx::query("SELECT request_object_secret FROM ciba_clients WHERE client_id = $1")
        .bind(client_id)
        .fetch_optional(db.pool())
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    open_text(
        db.secrets()?,
        place("ciba_clients", "request_object_secret", client_id),
        row.try_get("request_object_secret")?,
    )
}

/// What [`client`] selects from (its statement: the columns, then this).
pub(crate) const CLIENT_BY_ID: &str = "FROM ciba_clients WHERE client_id = $1";

/// One client.
pub async fn client(db: &Database, client_id: &str) -> Result<Option<CibaClient>, StoreError> {
    let row = sqlx::query(&format!("SELECT {CLIENT_COLUMNS} {CLIENT_BY_ID}"))
        .bind(client_id)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(client_from_row).transpose()
}

/// An application's clients, oldest first.
pub async fn clients(db: &Database, app: &ApplicationId) -> Result<Vec<CibaClient>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {CLIENT_COLUMNS} FROM ciba_clients WHERE application_id = $1 ORDER BY created_at, client_id"
    ))
    .bind(app.as_str())
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(client_from_row).collect()
}

/// Removes a client with its requests and tokens; `false` if there was none.
pub async fn delete_client(
    db: &Database,
    app: &ApplicationId,
    client_id: &str,
) -> Result<bool, StoreError> {
    let mut tx = db.write().await?;
    let done = sqlx::query("DELETE FROM ciba_clients WHERE client_id = $1 AND application_id = $2")
        .bind(client_id)
        .bind(app.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if done {
        for table in ["ciba_requests", "oidc_tokens", "oidc_authorizations"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE client_id = $1"))
                .bind(client_id)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(done)
}

/// Where a request's notification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyState {
    /// Poll mode: nothing to notify.
    None,
    /// The device has not answered yet.
    Waiting,
    /// Finished: deliver at `notify_due_at_ms`.
    Due,
    /// Delivered.
    Done,
    /// Every attempt failed.
    Failed,
}

impl NotifyState {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyState::None => "none",
            NotifyState::Waiting => "waiting",
            NotifyState::Due => "due",
            NotifyState::Done => "done",
            NotifyState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Self::None,
            "waiting" => Self::Waiting,
            "due" => Self::Due,
            "done" => Self::Done,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// A backchannel authentication request.
#[derive(Debug, Clone)]
pub struct CibaRequest {
    /// Its id, as given to the client.
    pub auth_req_id: String,
    /// The client.
    pub client_id: String,
    /// The device authentication it drives.
    pub authentication_id: String,
    /// The application.
    pub application_id: ApplicationId,
    /// The user.
    pub user_id: UserId,
    /// The granted scopes (space-separated).
    pub scope: String,
    /// The authentication context class.
    pub acr: String,
    /// The client's bearer token for its notification endpoint.
    pub client_notification_token: Option<String>,
    /// Seconds between token requests.
    pub poll_interval: i64,
    /// The last token request (milliseconds).
    pub last_polled_at_ms: Option<i64>,
    /// When it was acknowledged.
    pub created_at: i64,
    /// When it expires.
    pub expires_at: i64,
    /// When tokens were issued (once).
    pub tokens_issued_at: Option<i64>,
    /// The notification's state.
    pub notify_state: NotifyState,
    /// Delivery attempts so far.
    pub notify_attempts: i64,
    /// When the next delivery is due.
    pub notify_due_at_ms: Option<i64>,
}

const REQUEST_COLUMNS: &str = "auth_req_id, client_id, authentication_id, application_id, user_id, \
    scope, acr, client_notification_token, poll_interval, last_polled_at_ms, created_at, expires_at, \
    tokens_issued_at, notify_state, notify_attempts, notify_due_at_ms";

fn request_from_row(secrets: &DataKey, row: &sqlx::any::AnyRow) -> Result<CibaRequest, StoreError> {
    let auth_req_id: String = row.try_get("auth_req_id")?;
    let client_notification_token = open_text(
        secrets,
        place("ciba_requests", "client_notification_token", &auth_req_id),
        row.try_get("client_notification_token")?,
    )?
    .map(|t| t.as_str().to_string());
    Ok(CibaRequest {
        auth_req_id,
        client_id: row.try_get("client_id")?,
        authentication_id: row.try_get("authentication_id")?,
        application_id: row
            .try_get::<String, _>("application_id")?
            .parse()
            .map_err(|_| StoreError::Corrupted("application id"))?,
        user_id: row
            .try_get::<String, _>("user_id")?
            .parse()
            .map_err(|_| StoreError::Corrupted("user id"))?,
        scope: row.try_get("scope")?,
        acr: row.try_get("acr")?,
        client_notification_token,
        poll_interval: row.try_get("poll_interval")?,
        last_polled_at_ms: row.try_get("last_polled_at_ms")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        tokens_issued_at: row.try_get("tokens_issued_at")?,
        notify_state: NotifyState::parse(&row.try_get::<String, _>("notify_state")?)
            .ok_or(StoreError::Corrupted("notify state"))?,
        notify_attempts: row.try_get("notify_attempts")?,
        notify_due_at_ms: row.try_get("notify_due_at_ms")?,
    })
}

/// Stores a new request (its notification token sealed with `secrets`).
pub async fn insert_request<'e, E>(
    executor: E,
    secrets: &DataKey,
    r: &CibaRequest,
) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let notification_token = sealed_notification_token(secrets, r)?;
    bind_request(r, notification_token)
        .execute(executor)
        .await?;
    Ok(())
}

/// A new request with its notification token sealed, to be written with the authentication it
/// belongs to, exactly when that is stored (`store::authentications::admit_at_once` on
/// PostgreSQL, [`insert_sealed_deferred`] in the admission's write on SQLite).
#[derive(Debug)]
pub struct SealedRequest<'a> {
    request: &'a CibaRequest,
    notification_token: Option<String>,
}

/// `r` with its notification token sealed with `secrets`.
pub fn sealed<'a>(secrets: &DataKey, r: &'a CibaRequest) -> Result<SealedRequest<'a>, StoreError> {
    Ok(SealedRequest {
        request: r,
        notification_token: sealed_notification_token(secrets, r)?,
    })
}

/// [`insert_request`] of a [`SealedRequest`], deferred in `w` (sent with its next statement or
/// its commit).
pub async fn insert_sealed_deferred(
    w: &mut super::Write<'_>,
    sealed: &SealedRequest<'_>,
) -> Result<(), StoreError> {
    w.defer(bind_request_values(
        sqlx::query(&INSERT_REQUEST),
        sealed.request,
        sealed.notification_token.clone(),
    ))
    .await?;
    Ok(())
}

/// How many values [`bind_sealed`] binds.
pub(crate) const REQUEST_VALUES: usize = 16;

/// PostgreSQL: the request as a data-modifying `WITH` item named `requested`, inserted once for
/// every row of `source` (an item named before it, returning zero or one row), its
/// placeholders numbered from `first` in the order [`bind_sealed`] binds them.
pub(crate) fn request_item(source: &str, first: usize) -> String {
    let values = (first..first + REQUEST_VALUES)
        .map(|p| format!("${p}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "requested AS (INSERT INTO ciba_requests ({REQUEST_COLUMNS}) SELECT {values} FROM {source})"
    )
}

/// Binds the values of [`request_item`] after what `query` bound.
pub(crate) fn bind_sealed<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    sealed: &'q SealedRequest<'_>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    bind_request_values(query, sealed.request, sealed.notification_token.clone())
}

fn sealed_notification_token(
    secrets: &DataKey,
    r: &CibaRequest,
) -> Result<Option<String>, StoreError> {
    seal_text(
        secrets,
        place("ciba_requests", "client_notification_token", &r.auth_req_id),
        r.client_notification_token.as_deref(),
    )
}

/// The insert of a request, written once.
static INSERT_REQUEST: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO ciba_requests ({REQUEST_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
    )
});

fn bind_request(
    r: &CibaRequest,
    notification_token: Option<String>,
) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    bind_request_values(sqlx::query(&INSERT_REQUEST), r, notification_token)
}

/// Binds `r`'s [`REQUEST_COLUMNS`] ([`REQUEST_VALUES`] values) after what `query` bound.
fn bind_request_values<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    r: &'q CibaRequest,
    notification_token: Option<String>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    query
        .bind(&r.auth_req_id)
        .bind(&r.client_id)
        .bind(&r.authentication_id)
        .bind(r.application_id.as_str())
        .bind(r.user_id.as_str())
        .bind(&r.scope)
        .bind(&r.acr)
        .bind(notification_token)
        .bind(r.poll_interval)
        .bind(r.last_polled_at_ms)
        .bind(r.created_at)
        .bind(r.expires_at)
        .bind(r.tokens_issued_at)
        .bind(r.notify_state.as_str())
        .bind(r.notify_attempts)
        .bind(r.notify_due_at_ms)
}

/// What [`request`] selects from (its statement: the columns, then this).
pub(crate) const REQUEST_BY_ID: &str = "FROM ciba_requests WHERE auth_req_id = $1";

/// One request by its id.
pub async fn request(db: &Database, auth_req_id: &str) -> Result<Option<CibaRequest>, StoreError> {
    let row = sqlx::query(&format!("SELECT {REQUEST_COLUMNS} {REQUEST_BY_ID}"))
        .bind(auth_req_id)
        .fetch_optional(db.pool())
        .await?;
    let secrets = db.secrets()?;
    row.as_ref()
        .map(|row| request_from_row(secrets, row))
        .transpose()
}

/// What [`record_poll`] made of a token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollRecorded {
    /// The first token request, or one at least the interval after the previous one.
    Accepted,
    /// Sooner than the interval after the previous token request: "slow down". The interval
    /// grew by 5 seconds, as the client's must; this is the interval now in force.
    TooSoon {
        /// The interval now in force, in seconds.
        interval_seconds: i64,
    },
}

/// The conditional update of [`record_poll`].
pub(crate) const RECORD_POLL: &str = "UPDATE ciba_requests SET last_polled_at_ms = $2 WHERE auth_req_id = $1 \
    AND (last_polled_at_ms IS NULL OR last_polled_at_ms + poll_interval * 1000 <= $2)";

/// Records a token request unless it comes sooner than the interval after the previous token
/// request (only token requests count: the acknowledgement does not); a request too soon makes
/// the interval grow by 5 seconds.
pub async fn record_poll(
    db: &Database,
    auth_req_id: &str,
    now_ms: i64,
) -> Result<PollRecorded, StoreError> {
    let polled = sqlx::query(RECORD_POLL)
        .bind(auth_req_id)
        .bind(now_ms)
        .execute(db.writer())
        .await?
        .rows_affected()
        == 1;
    if polled {
        return Ok(PollRecorded::Accepted);
    }
    let interval: Option<i64> = sqlx::query_scalar(
        "UPDATE ciba_requests SET poll_interval = poll_interval + 5, last_polled_at_ms = $2 \
         WHERE auth_req_id = $1 RETURNING poll_interval",
    )
    .bind(auth_req_id)
    .bind(now_ms)
    .fetch_optional(db.writer())
    .await?;
    Ok(PollRecorded::TooSoon {
        interval_seconds: interval.unwrap_or(5),
    })
}

/// The conditional update that marks a request's tokens issued (at `$2`, now), once and only
/// before the request expires: an `auth_req_id` is single use, and one past its `expires_at` is
/// exchanged for nothing (CIBA Core §11, `expired_token`). `oidc_tokens::issue` runs it with the
/// tokens it stores, so no exchange that loses a race with the expiry stores any.
pub(crate) const MARK_TOKENS_ISSUED: &str = "UPDATE ciba_requests SET tokens_issued_at = $2 \
    WHERE auth_req_id = $1 AND tokens_issued_at IS NULL AND expires_at > $2";

/// Why [`MARK_TOKENS_ISSUED`] changed nothing, read in the same write: whether the request is
/// still unexchanged and past its expiry at `$2`.
pub(crate) const EXPIRED_UNEXCHANGED: &str = "SELECT 1 AS one FROM ciba_requests \
    WHERE auth_req_id = $1 AND tokens_issued_at IS NULL AND expires_at <= $2";

// The statements below that read requests by their notification state name the state as a
// literal (`notify_state = 'waiting'`, `notify_state = 'due'`): `ciba_requests_notify` holds the
// waiting and due requests only (migration 0047), and SQLite uses a partial index only for a
// WHERE that contains its terms. `store::query_plans` checks their plans.

/// The update of [`notification_due_for`].
pub(crate) const NOTIFICATION_DUE_FOR: &str = "UPDATE ciba_requests SET notify_state = 'due', \
    notify_due_at_ms = $2 WHERE authentication_id = $1 AND notify_state = 'waiting'";

/// Makes the notification of the request driving `authentication_id` due now (if it waits).
pub async fn notification_due_for(
    db: &Database,
    authentication_id: &str,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(NOTIFICATION_DUE_FOR)
        .bind(authentication_id)
        .bind(now)
        .execute(db.writer())
        .await?
        .rows_affected()
        == 1)
}

/// The update of [`promote_finished`]: it visits the waiting requests only, through
/// `ciba_requests_notify`, and looks up each one's authentication by its key. The state is read
/// by a scalar subquery, not `EXISTS (… AND a.state <> 'pending')` (the same answer: one row or
/// none, and no row is not finished either way): PostgreSQL may answer an `EXISTS` under an `OR`
/// by hashing every finished authentication, a read of the whole table, which it cannot do with
/// a scalar subquery.
pub(crate) const PROMOTE_FINISHED: &str = "UPDATE ciba_requests SET notify_state = 'due', \
    notify_due_at_ms = $2 WHERE notify_state = 'waiting' AND (expires_at <= $1 OR \
    (SELECT a.state FROM authentications a WHERE a.id = ciba_requests.authentication_id) \
    <> 'pending')";

/// Makes every waiting notification whose request finished (answered elsewhere, failed or
/// expired) due now.
pub async fn promote_finished(db: &Database, now: i64, now_ms: i64) -> Result<u64, StoreError> {
    Ok(sqlx::query(PROMOTE_FINISHED)
        .bind(now)
        .bind(now_ms)
        .execute(db.writer())
        .await?
        .rows_affected())
}

/// What [`due_notifications`] selects from (its statement: the columns, then this), in the
/// order of `ciba_requests_notify`.
pub(crate) const DUE_NOTIFICATIONS: &str = "FROM ciba_requests WHERE notify_state = 'due' \
    AND notify_due_at_ms <= $1 ORDER BY notify_due_at_ms LIMIT $2";

/// Notifications due at `now`, oldest first.
pub async fn due_notifications(
    db: &Database,
    now: i64,
    limit: i64,
) -> Result<Vec<CibaRequest>, StoreError> {
    let rows = sqlx::query(&format!("SELECT {REQUEST_COLUMNS} {DUE_NOTIFICATIONS}"))
        .bind(now)
        .bind(limit)
        .fetch_all(db.pool())
        .await?;
    let secrets = db.secrets()?;
    rows.iter()
        .map(|row| request_from_row(secrets, row))
        .collect()
}

/// The hold of the instance delivering a request's notification: the attempts counted when it
/// last claimed or renewed it, and the time (milliseconds) its claim holds until. Each later
/// write for the delivery holds only while the row still carries both: an instance that claimed
/// the delivery after this lease lapsed changed them, and the lapsed holder then writes nothing
/// (it stops, and mints no tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The attempts counted, this one included.
    pub attempts: i64,
    /// When the claim lapses (milliseconds).
    pub until_ms: i64,
}

/// The conditional update of [`claim_notification`].
pub(crate) const CLAIM_NOTIFICATION: &str = "UPDATE ciba_requests SET notify_due_at_ms = $2, \
    notify_attempts = notify_attempts + 1 WHERE auth_req_id = $1 AND notify_state = 'due' \
    AND notify_due_at_ms = $3 AND notify_attempts = $4";

/// Claims one due delivery for this instance until `lease_until` (so no other instance sends
/// it meanwhile), counting one more attempt; `None` if another instance claimed it first.
pub async fn claim_notification(
    db: &Database,
    r: &CibaRequest,
    lease_until: i64,
) -> Result<Option<Lease>, StoreError> {
    let claimed = sqlx::query(CLAIM_NOTIFICATION)
        .bind(&r.auth_req_id)
        .bind(lease_until)
        .bind(r.notify_due_at_ms)
        .bind(r.notify_attempts)
        .execute(db.writer())
        .await?
        .rows_affected()
        == 1;
    Ok(claimed.then_some(Lease {
        attempts: r.notify_attempts + 1,
        until_ms: lease_until,
    }))
}

/// The condition that a delivery's row still carries `held` (placeholders `$first` and the
/// next).
pub(crate) fn held_by(first: usize) -> String {
    format!(
        "notify_state = 'due' AND notify_attempts = ${first} AND notify_due_at_ms = ${}",
        first + 1
    )
}

/// The conditional update of [`renew_lease`].
pub(crate) static RENEW_LEASE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "UPDATE ciba_requests SET notify_attempts = $2, notify_due_at_ms = $3 \
         WHERE auth_req_id = $1 AND {}",
        held_by(4)
    )
});

/// Counts one more attempt by the instance holding the delivery under `held`, and extends its
/// lease to `next`; `false` (and nothing written) if another instance took the delivery over.
pub async fn renew_lease(
    db: &Database,
    auth_req_id: &str,
    held: Lease,
    next: Lease,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(&RENEW_LEASE)
        .bind(auth_req_id)
        .bind(next.attempts)
        .bind(next.until_ms)
        .bind(held.attempts)
        .bind(held.until_ms)
        .execute(db.writer())
        .await?
        .rows_affected()
        == 1)
}

/// The conditional update of [`retry_notification_at`].
pub(crate) static RETRY_NOTIFICATION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| {
        format!(
            "UPDATE ciba_requests SET notify_due_at_ms = $2 WHERE auth_req_id = $1 AND {}",
            held_by(3)
        )
    });

/// Puts a delivery held under `held` back among the due ones, to be claimed again from
/// `due_at_ms` (the attempt it made stays counted), after a failure the instance holding it
/// cannot get past now (the database failing for a moment); `false` (and nothing written) if
/// another instance took the delivery over.
pub async fn retry_notification_at(
    db: &Database,
    auth_req_id: &str,
    held: Lease,
    due_at_ms: i64,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(&RETRY_NOTIFICATION)
        .bind(auth_req_id)
        .bind(due_at_ms)
        .bind(held.attempts)
        .bind(held.until_ms)
        .execute(db.writer())
        .await?
        .rows_affected()
        == 1)
}

/// The conditional update of [`finish_notification`].
pub(crate) static FINISH_NOTIFICATION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| {
        format!(
            "UPDATE ciba_requests SET notify_state = $2, notify_due_at_ms = NULL \
             WHERE auth_req_id = $1 AND {}",
            held_by(3)
        )
    });

/// Records a delivery's final outcome (done, or failed after every attempt) by the instance
/// holding it under `held`, which retried in-process before; `false` (and nothing written) if
/// another instance took the delivery over.
pub async fn finish_notification(
    db: &Database,
    auth_req_id: &str,
    held: Lease,
    state: NotifyState,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(&FINISH_NOTIFICATION)
        .bind(auth_req_id)
        .bind(state.as_str())
        .bind(held.attempts)
        .bind(held.until_ms)
        .execute(db.writer())
        .await?
        .rows_affected()
        == 1)
}

/// A user's stored user code: salt, digest, consecutive failures.
pub async fn user_code(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Option<(String, String, i64)>, StoreError> {
    let row = sqlx::query(
        "SELECT salt, code_digest, failures FROM ciba_user_codes WHERE application_id = $1 AND user_id = $2",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .fetch_optional(db.pool())
    .await?;
    row.map(|r| {
        Ok((
            r.try_get("salt")?,
            r.try_get("code_digest")?,
            r.try_get("failures")?,
        ))
    })
    .transpose()
}

/// Sets (or replaces) a user's code, clearing its failures. False, and nothing written, when
/// there is no such user: the user is looked up inside the write, under [`users::lock`]
/// ([`UserLock::KeepsUser`]), so a deletion racing it either waits for it (and then removes the
/// code with the user) or came first, and no code is left for a later user of the same id.
pub async fn set_user_code(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    salt: &str,
    digest: &str,
) -> Result<bool, StoreError> {
    let mut w = db.write().await?;
    // One row per user, upserted: codes set at once need not take turns (the last one
    // committed is the code), only keep the user.
    if !users::lock(&mut *w, db.engine(), app, user, UserLock::KeepsUser).await? {
        w.rollback().await?;
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO ciba_user_codes (application_id, user_id, salt, code_digest, failures) \
         VALUES ($1, $2, $3, $4, 0) ON CONFLICT (application_id, user_id) \
         DO UPDATE SET salt = $3, code_digest = $4, failures = 0",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .bind(salt)
    .bind(digest)
    .execute(&mut *w)
    .await?;
    w.commit().await?;
    Ok(true)
}

/// Replaces the user's code digest `legacy` (with salt `salt`), as it was read before the code
/// was compared, with `keyed`, the same code's digest in the current form; its failures are
/// left as they are. One conditional update: when the code was set again (or removed) since it
/// was read, nothing is written (an unconditional write would put the old code back over the
/// new one). Returns whether it was replaced.
pub async fn upgrade_user_code_digest(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    salt: &str,
    legacy: &str,
    keyed: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE ciba_user_codes SET code_digest = $5 \
         WHERE application_id = $1 AND user_id = $2 AND salt = $3 AND code_digest = $4",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .bind(salt)
    .bind(legacy)
    .bind(keyed)
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Counts a wrong user code (`true`) or clears the count after a right one (`false`).
/// Takes one user-code attempt atomically, before the code is compared: counts it and returns
/// the user's salt and code digest if fewer than `max` wrong codes are counted, else `None`
/// (nothing counted; also when the user has no code). A right code then clears the count with
/// [`record_user_code_attempt`].
pub async fn take_user_code_attempt(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    max: i64,
) -> Result<Option<(String, String)>, StoreError> {
    let row = sqlx::query(
        "UPDATE ciba_user_codes SET failures = failures + 1 \
         WHERE application_id = $1 AND user_id = $2 AND failures < $3 RETURNING salt, code_digest",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .bind(max)
    .fetch_optional(db.writer())
    .await?;
    row.map(|r| Ok((r.try_get("salt")?, r.try_get("code_digest")?)))
        .transpose()
}

/// Records the outcome of a user-code check: a wrong code counts one failure, a right one
/// clears them.
pub async fn record_user_code_attempt(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    failed: bool,
) -> Result<(), StoreError> {
    let sql = if failed {
        "UPDATE ciba_user_codes SET failures = failures + 1 WHERE application_id = $1 AND user_id = $2"
    } else {
        "UPDATE ciba_user_codes SET failures = 0 WHERE application_id = $1 AND user_id = $2"
    };
    sqlx::query(sql)
        .bind(app.as_str())
        .bind(user.as_str())
        .execute(db.writer())
        .await?;
    Ok(())
}

/// An ID token signing key as stored.
pub struct StoredSigningKey {
    /// Its key id.
    pub kid: String,
    /// PKCS#8 DER of the private key.
    pub private_key: zeroize::Zeroizing<Vec<u8>>,
    /// When it was created.
    pub created_at: i64,
    /// When it stopped signing.
    pub retired_at: Option<i64>,
}

/// Every signing key, newest first.
pub async fn signing_keys(db: &Database) -> Result<Vec<StoredSigningKey>, StoreError> {
    let rows = sqlx::query(
        "SELECT kid, private_key, created_at, retired_at FROM oidc_signing_keys ORDER BY created_at DESC, kid",
    )
    .fetch_all(db.pool())
    .await?;
    let secrets = db.secrets()?;
    rows.iter()
        .map(|row| {
            let kid: String = row.try_get("kid")?;
            let sealed = zeroize::Zeroizing::new(row.try_get::<Vec<u8>, _>("private_key")?);
            let private_key =
                secrets.open(place("oidc_signing_keys", "private_key", &kid), &sealed)?;
            Ok(StoredSigningKey {
                kid,
                private_key,
                created_at: row.try_get("created_at")?,
                retired_at: row.try_get("retired_at")?,
            })
        })
        .collect()
}

/// Adds a signing key and retires every other active one at `now` (in one transaction).
pub async fn add_signing_key(
    db: &Database,
    kid: &str,
    private_key: &[u8],
    public_jwk: &str,
    now: i64,
) -> Result<(), StoreError> {
    let sealed = db
        .secrets()?
        .seal(place("oidc_signing_keys", "private_key", kid), private_key)?;
    let mut tx = db.write().await?;
    sqlx::query("UPDATE oidc_signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO oidc_signing_keys (kid, private_key, public_jwk, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(kid)
    .bind(sealed.into_bytes())
    .bind(public_jwk)
    .bind(now)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => return Err(StoreError::AlreadyExists("signing key")),
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;
    Ok(())
}

/// Forgets retired keys retired before `before` (no token they signed is still valid).
pub async fn drop_retired_keys(db: &Database, before: i64) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "DELETE FROM oidc_signing_keys WHERE retired_at IS NOT NULL AND retired_at < $1",
    )
    .bind(before)
    .execute(db.writer())
    .await?
    .rows_affected())
}
