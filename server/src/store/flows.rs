//! Authentication flows and their event history. The flow's model travels as JSON text the
//! domain owns; this module only stores it, taking every transition with a conditional update
//! on the flow's version.

use sqlx::Row;
use std::sync::{LazyLock, OnceLock};
use tessera_protocol::authentication::AuthenticationId;
use tessera_protocol::flows::FlowId;
use tessera_protocol::ids::{ApplicationId, UserId};

use zeroize::Zeroizing;

use super::secrets::{open_text, place};
use super::{Database, StoreError};

/// A flow as stored.
#[derive(Debug, Clone)]
pub struct StoredFlow {
    /// Its id.
    pub id: FlowId,
    /// The application.
    pub application_id: ApplicationId,
    /// The user; none while a passkey sign-in waits for the passkey that names them (stored
    /// as the empty text, which no user id can be).
    pub user_id: Option<UserId>,
    /// The status' wire text.
    pub status: String,
    /// Changes with every transition.
    pub version: i64,
    /// The flow's model (JSON).
    pub data: String,
    /// The push it waits for, if any.
    pub authentication_id: Option<AuthenticationId>,
    /// When it was created.
    pub created_at: i64,
    /// When it last moved.
    pub updated_at: i64,
    /// When it expires.
    pub expires_at: i64,
}

/// One action applied to a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEvent {
    /// When.
    pub at: i64,
    /// The action's wire name (`create` for the creation, `expire` and `push_answered` for
    /// the server's own moves).
    pub action: String,
    /// The status before (none at creation).
    pub from_status: Option<String>,
    /// The status after.
    pub to_status: String,
    /// The error code of a refused attempt (the status did not change).
    pub error: Option<String>,
}

const COLUMNS: &str = "id, application_id, user_id, status, version, data, authentication_id, \
    created_at, updated_at, expires_at";

fn from_row(row: &sqlx::any::AnyRow) -> Result<StoredFlow, StoreError> {
    from_columns(row, std::borrow::Cow::Borrowed)
}

/// A flow from `row`, each of its columns read under the name `name` gives it.
fn from_columns<'n>(
    row: &sqlx::any::AnyRow,
    name: impl Fn(&'static str) -> std::borrow::Cow<'n, str>,
) -> Result<StoredFlow, StoreError> {
    let authentication_id: Option<String> = row.try_get(&*name("authentication_id"))?;
    Ok(StoredFlow {
        id: row
            .try_get::<String, _>(&*name("id"))?
            .parse()
            .map_err(|_| StoreError::Corrupted("flow id"))?,
        application_id: row
            .try_get::<String, _>(&*name("application_id"))?
            .parse()
            .map_err(|_| StoreError::Corrupted("application id"))?,
        user_id: match row.try_get::<String, _>(&*name("user_id"))? {
            unbound if unbound.is_empty() => None,
            text => Some(UserId::try_from(text).map_err(|_| StoreError::Corrupted("user id"))?),
        },
        status: row.try_get(&*name("status"))?,
        version: row.try_get(&*name("version"))?,
        data: row.try_get(&*name("data"))?,
        authentication_id: authentication_id
            .map(|a| {
                a.parse()
                    .map_err(|_| StoreError::Corrupted("authentication id"))
            })
            .transpose()?,
        created_at: row.try_get(&*name("created_at"))?,
        updated_at: row.try_get(&*name("updated_at"))?,
        expires_at: row.try_get(&*name("expires_at"))?,
    })
}

/// The flow columns a statement selects from `flows` under the alias `waiting_flow` (a `LEFT
/// JOIN` on the push it waits for), each named `waiting_flow_<column>`: read back by
/// [`waiting_flow_of`].
pub(crate) const WAITING_FLOW_COLUMNS: &str = "waiting_flow.id AS waiting_flow_id, \
    waiting_flow.application_id AS waiting_flow_application_id, \
    waiting_flow.user_id AS waiting_flow_user_id, waiting_flow.status AS waiting_flow_status, \
    waiting_flow.version AS waiting_flow_version, waiting_flow.data AS waiting_flow_data, \
    waiting_flow.authentication_id AS waiting_flow_authentication_id, \
    waiting_flow.created_at AS waiting_flow_created_at, \
    waiting_flow.updated_at AS waiting_flow_updated_at, \
    waiting_flow.expires_at AS waiting_flow_expires_at";

/// The flow a row's [`WAITING_FLOW_COLUMNS`] hold, if the join found one.
pub(crate) fn waiting_flow_of(row: &sqlx::any::AnyRow) -> Result<Option<StoredFlow>, StoreError> {
    if row
        .try_get::<Option<String>, _>("waiting_flow_id")?
        .is_none()
    {
        return Ok(None);
    }
    from_columns(row, |column| {
        std::borrow::Cow::Owned(format!("waiting_flow_{column}"))
    })
    .map(Some)
}

async fn add_event<'e, E>(executor: E, flow: &FlowId, event: &FlowEvent) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    bind_event(
        sqlx::query(
            "INSERT INTO flow_events (flow_id, at, action, from_status, to_status, error) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(flow.as_str()),
        event,
    )
    .execute(executor)
    .await?;
    Ok(())
}

type Statement<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds `event`'s five values (its time, action, statuses and error) after what `query` bound.
fn bind_event<'q>(query: Statement<'q>, event: &'q FlowEvent) -> Statement<'q> {
    query
        .bind(event.at)
        .bind(&event.action)
        .bind(event.from_status.as_deref())
        .bind(&event.to_status)
        .bind(event.error.as_deref())
}

/// PostgreSQL: the insert of an event for the flow `source` returns (a data-modifying `WITH`
/// item of the same statement, returning the flow's `id` in zero or one row), its five values
/// bound from placeholder `first` on ([`bind_event`]).
fn event_for_each(source: &str, first: usize) -> String {
    let values = (first..first + 5)
        .map(|p| format!("${p}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO flow_events (flow_id, at, action, from_status, to_status, error) \
         SELECT id, {values} FROM {source}"
    )
}

/// Stores a new flow with its creation event, all or nothing (see [`insert_with_browser_token`]).
pub async fn insert(db: &Database, flow: &StoredFlow, event: &FlowEvent) -> Result<(), StoreError> {
    insert_with_browser_token(db, flow, event, None).await
}

/// A hosted flow's browser token: its SHA-256 digest (how the page's calls find the flow) and
/// the token itself (sealed at rest).
pub struct BrowserToken<'a> {
    /// Hex SHA-256 of the token.
    pub digest: &'a str,
    /// The token.
    pub token: &'a str,
}

/// Stores a new flow with its creation event and, for a hosted flow, its browser token, all or
/// nothing: on SQLite one transaction on the writer, on PostgreSQL one statement committed on its
/// own (the flow a data-modifying `WITH` item the other rows are inserted from).
pub async fn insert_with_browser_token(
    db: &Database,
    flow: &StoredFlow,
    event: &FlowEvent,
    browser_token: Option<BrowserToken<'_>>,
) -> Result<(), StoreError> {
    let sealed = browser_token
        .as_ref()
        .map(|t| {
            db.secrets()?
                .seal(
                    place("flow_browser_tokens", "token", flow.id.as_str()),
                    t.token.as_bytes(),
                )
                .map_err(StoreError::from)
        })
        .transpose()?;
    let insert =
        format!("INSERT INTO flows ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)");
    if db.engine() == super::Engine::Postgres {
        // One statement, committed on its own: the flow, its event and its browser token as
        // data-modifying `WITH` items (one round trip where a transaction took five).
        let mut sql = format!("WITH created AS ({insert} RETURNING id)");
        if browser_token.is_some() {
            sql.push_str(
                ", token AS (INSERT INTO flow_browser_tokens (flow_id, token_digest, token) \
                 SELECT id, $16, $17 FROM created)",
            );
        }
        sql.push(' ');
        sql.push_str(&event_for_each("created", 11));
        let mut query = bind_event(bind_flow(sqlx::query(&sql), flow), event);
        if let (Some(token), Some(sealed)) = (&browser_token, &sealed) {
            query = query.bind(token.digest).bind(sealed.as_str());
        }
        query.execute(db.writer()).await?;
        return Ok(());
    }
    let mut tx = db.write().await?;
    bind_flow(sqlx::query(&insert), flow)
        .execute(&mut *tx)
        .await?;
    add_event(&mut *tx, &flow.id, event).await?;
    if let (Some(token), Some(sealed)) = (&browser_token, sealed) {
        sqlx::query(
            "INSERT INTO flow_browser_tokens (flow_id, token_digest, token) VALUES ($1, $2, $3)",
        )
        .bind(flow.id.as_str())
        .bind(token.digest)
        .bind(sealed)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Binds a new flow's ten values, in the order of the columns it is inserted with.
fn bind_flow<'q>(query: Statement<'q>, flow: &'q StoredFlow) -> Statement<'q> {
    query
        .bind(flow.id.as_str())
        .bind(flow.application_id.as_str())
        .bind(flow.user_id.as_ref().map_or("", UserId::as_str))
        .bind(&flow.status)
        .bind(flow.version)
        .bind(&flow.data)
        .bind(
            flow.authentication_id
                .as_ref()
                .map(AuthenticationId::as_str),
        )
        .bind(flow.created_at)
        .bind(flow.updated_at)
        .bind(flow.expires_at)
}

/// The hosted flow whose browser token has this digest.
pub async fn by_browser_token_digest(
    db: &Database,
    digest: &str,
) -> Result<Option<StoredFlow>, StoreError> {
    let columns: Vec<String> = COLUMNS.split(", ").map(|c| format!("f.{c}")).collect();
    let row = sqlx::query(&format!(
        "SELECT {} FROM flows f JOIN flow_browser_tokens t ON t.flow_id = f.id \
         WHERE t.token_digest = $1",
        columns.join(", ")
    ))
    .bind(digest)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// A hosted flow's browser token (opened), if the flow has one.
pub async fn browser_token(
    db: &Database,
    flow: &FlowId,
) -> Result<Option<Zeroizing<String>>, StoreError> {
    let sealed: Option<String> =
        sqlx::query_scalar("SELECT token FROM flow_browser_tokens WHERE flow_id = $1")
            .bind(flow.as_str())
            .fetch_optional(db.pool())
            .await?;
    open_text(
        db.secrets()?,
        place("flow_browser_tokens", "token", flow.as_str()),
        sealed,
    )
}

/// A flow by id.
pub async fn get(db: &Database, id: &FlowId) -> Result<Option<StoredFlow>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM flows WHERE id = $1"))
        .bind(id.as_str())
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// [`get`] for the application `app`, made only while its API key has the digest `key_digest`
/// (`domain::api_keys`): the key's check, the application's name and the flow in one statement.
/// `None` when the key is no longer the application's, or when the application has no such flow.
pub async fn get_with_key(
    db: &Database,
    id: &FlowId,
    app: &ApplicationId,
    key_digest: &str,
) -> Result<Option<(super::applications::Application, StoredFlow)>, StoreError> {
    let row =
        super::applications::fetch_with_key(db, &BY_ID_WITH_KEY, id.as_str(), app, key_digest)
            .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let flow = from_row(&row)?;
    // Another application's flow is not this caller's to read.
    if &flow.application_id != app {
        return Ok(None);
    }
    let application = super::applications::Application {
        id: app.clone(),
        name: row.try_get("app_name")?,
        created_at: row.try_get("app_created_at")?,
    };
    Ok(Some((application, flow)))
}

/// The statement of [`get_with_key`]: the flow by its primary key, joined to the one row of the
/// application `$2` that still has the key digest `$3` (by the application's primary key). The
/// flow's application is compared after the read, as `authentications::get_with_key` does.
pub(crate) static BY_ID_WITH_KEY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS}, a.app_name, a.app_created_at FROM flows, \
         (SELECT name AS app_name, created_at AS app_created_at FROM applications \
         WHERE id = $2 AND api_key_digest = $3) a WHERE flows.id = $1"
    )
});

/// What [`by_authentication`] selects from (its statement: the columns, then this).
pub(crate) const BY_AUTHENTICATION: &str = "FROM flows WHERE authentication_id = $1";

/// The flow waiting for the push `authentication`, if any.
pub async fn by_authentication(
    db: &Database,
    authentication: &AuthenticationId,
) -> Result<Option<StoredFlow>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} {BY_AUTHENTICATION}"))
        .bind(authentication.as_str())
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Claims a flow for one action until `claimed_until_ms`: bumps its version if it is still at
/// `expected_version` and no other claim holds (one that lapsed before `now_ms` does not), so a
/// racing action is refused before it does anything, also one that read the flow after this
/// claim. `false` when another action or move came first, or another action holds the flow.
/// The claim ends with the action's move ([`transition_recording`]) or with [`release`].
pub async fn claim(
    db: &Database,
    id: &FlowId,
    expected_version: i64,
    now_ms: i64,
    claimed_until_ms: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(claim_statement(db.engine()))
        .bind(id.as_str())
        .bind(expected_version)
        .bind(claimed_until_ms)
        .bind(now_ms)
        .execute(db.writer())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The statement of [`claim`]. A claim is a lease: one lost in a crash is as if it had lapsed,
/// so it commits without waiting for the flush ([`super::unflushed`]).
pub(crate) fn claim_statement(engine: super::Engine) -> &'static str {
    static ON_POSTGRES: OnceLock<String> = OnceLock::new();
    lease_statement(
        engine,
        "UPDATE flows SET version = version + 1, claimed_until = $3 \
         WHERE id = $1 AND version = $2 AND (claimed_until IS NULL OR claimed_until <= $4)",
        &ON_POSTGRES,
    )
}

/// The statement of [`release`]: a lease's end, which a crash makes anyway.
pub(crate) fn release_statement(engine: super::Engine) -> &'static str {
    static ON_POSTGRES: OnceLock<String> = OnceLock::new();
    lease_statement(
        engine,
        "UPDATE flows SET claimed_until = NULL \
         WHERE id = $1 AND version = $2 AND claimed_until IS NOT NULL",
        &ON_POSTGRES,
    )
}

/// `update`, a write to a claim's lease, as `engine` runs it: on PostgreSQL
/// [`super::unflushed`], made once into `on_postgres`.
fn lease_statement(
    engine: super::Engine,
    update: &'static str,
    on_postgres: &'static OnceLock<String>,
) -> &'static str {
    match engine {
        super::Engine::Sqlite => update,
        super::Engine::Postgres => on_postgres.get_or_init(|| super::unflushed(update)),
    }
}

/// When the claim holding flow `id` at `version` ends (milliseconds), if one holds it at
/// `now_ms`: an action claimed it and has neither moved it nor released it yet.
pub async fn claim_held_until(
    db: &Database,
    id: &FlowId,
    version: i64,
    now_ms: i64,
) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT claimed_until FROM flows WHERE id = $1 AND version = $2 AND claimed_until > $3",
    )
    .bind(id.as_str())
    .bind(version)
    .bind(now_ms)
    .fetch_optional(db.pool())
    .await?)
}

/// Ends the claim that moved the flow to `claimed_version`, if the flow has not moved since
/// (a move ends the claim itself).
pub async fn release(db: &Database, id: &FlowId, claimed_version: i64) -> Result<(), StoreError> {
    sqlx::query(release_statement(db.engine()))
        .bind(id.as_str())
        .bind(claimed_version)
        .execute(db.writer())
        .await?;
    Ok(())
}

/// A condition on a move that ends a flow by the user's bypass: the bypass must still be in
/// force (its `until` after `now`) when the move is written.
#[derive(Debug, Clone, Copy)]
pub struct WhileBypassed<'a> {
    /// The flow's application.
    pub application_id: &'a ApplicationId,
    /// The flow's user, whose bypass ends it.
    pub user_id: &'a UserId,
    /// The time the bypass must still be in force at.
    pub now: i64,
}

/// What [`transition_recording`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transitioned {
    /// The flow moved.
    Moved,
    /// Another transition came first: the flow is no longer at the expected version.
    Lost,
    /// The flow is still at the expected version, but the bypass the move required is no longer
    /// in force (cleared, or lapsed, since it was read).
    BypassCleared,
}

/// A flow's move from its expected version, its eight values from placeholder `first` on, in
/// the order [`bind_next`] binds them (without a bypass condition; one may be appended).
fn move_statement(first: usize) -> String {
    let p = |offset: usize| first + offset;
    format!(
        "UPDATE flows SET status = ${}, version = ${}, data = ${}, authentication_id = ${}, \
         updated_at = ${}, user_id = ${}, claimed_until = NULL WHERE id = ${} AND version = ${}",
        p(0),
        p(1),
        p(2),
        p(3),
        p(4),
        p(7),
        p(5),
        p(6)
    )
}

/// [`move_statement`] as a statement of its own.
static MOVE: LazyLock<String> = LazyLock::new(|| move_statement(1));

/// Moves a flow to `next` (its status, data, push and user) if it is still at
/// `expected_version` and, with `while_bypassed`, only while the user's bypass is in force,
/// recording `event` and `records` (audit records and their webhook deliveries, such as a final
/// move's `flow.completed`) with it, all or nothing (on SQLite one transaction on the writer, on
/// PostgreSQL one statement, the update a data-modifying `WITH` item): only a move that is made
/// writes them. Also returns whether a webhook delivery was queued. A passkey sign-in is bound
/// to its user here: once, by the move that wins the version. The move ends any claim on the
/// flow. On PostgreSQL the bypass is read `FOR KEY SHARE`, so a clearing in flight is waited for
/// and no flow ends by a bypass once its clearing has committed; SQLite's one writer runs the
/// move alone. A policy `decision` the move's step made is recorded with it the same way (its
/// audit record among `records`).
pub async fn transition_recording(
    db: &Database,
    next: &StoredFlow,
    expected_version: i64,
    event: &FlowEvent,
    while_bypassed: Option<WhileBypassed<'_>>,
    records: &[super::audit::Appended],
    decision: Option<&super::policies::DecisionRecord<'_>>,
) -> Result<(Transitioned, bool), StoreError> {
    let mut sql = MOVE.clone();
    if while_bypassed.is_some() {
        let bypassed = format!("EXISTS ({})", super::bypass::standing(9, 10, 11));
        sql.push_str(" AND ");
        match db.engine() {
            super::Engine::Sqlite => sql.push_str(&bypassed),
            super::Engine::Postgres => sql.push_str(&super::key_share_locked(&bypassed)),
        }
    }
    if db.engine() == super::Engine::Postgres {
        let moved = Move {
            next,
            expected_version,
            event,
            while_bypassed,
            records,
            decision,
        };
        return transition_at_once(db, sql, moved).await;
    }
    let mut tx = db.write().await?;
    let done = bind_next(
        sqlx::query(&sql),
        next,
        expected_version,
        while_bypassed.as_ref(),
    )
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        let outcome = match while_bypassed {
            None => Transitioned::Lost,
            Some(_) => {
                let version: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM flows WHERE id = $1")
                        .bind(next.id.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                if version == Some(expected_version) {
                    Transitioned::BypassCleared
                } else {
                    Transitioned::Lost
                }
            }
        };
        // The caller reads the flow again: the move that won must be committed by then, also
        // when it ran before this one in the same SQLite group (`store/writer.rs`).
        tx.rollback_after_others().await?;
        return Ok((outcome, false));
    }
    add_event(&mut *tx, &next.id, event).await?;
    if let Some(decision) = decision {
        super::policies::record_decision_deferred(&mut tx, decision).await?;
    }
    let tickets = super::audit::append_all_deferred(&mut tx, records).await?;
    let committed = tx.commit().await?;
    let queued = tickets.iter().any(|t| committed.changes(*t) > 0);
    Ok((Transitioned::Moved, queued))
}

/// A flow's move written with the new request its action made, exactly when the request is
/// stored (`store::authentications::WrittenWith::flow`): the flow at `expected_version` (its
/// action's claim) moves to `next`, recorded by `event`. Nothing can then answer the request
/// before its flow shows it. Only a move that ends nothing: no audit record and no bypass
/// condition go with it.
#[derive(Debug, Clone)]
pub struct MoveWithRequest {
    /// The flow as it moves.
    pub next: StoredFlow,
    /// The version the move is made from.
    pub expected_version: i64,
    /// The move's event.
    pub event: FlowEvent,
}

/// PostgreSQL: the `WITH` items of a [`MoveWithRequest`] in the statement that inserts the
/// request (a data-modifying item named `inserted`, returning one row when stored), values from
/// placeholder `first` on ([`bind_move_with_request`]). The first, `flow_held`, finds the flow
/// at its expected version and locks it until the statement commits (a move in flight is
/// waited for, and the flow then found only if it kept that version): the insert is to require
/// it (`EXISTS (SELECT 1 FROM flow_held)`), and it goes before the insert. The others, after the
/// insert: the move, made only when the request was stored, and its event.
pub(crate) fn move_with_request_items(inserted: &str, first: usize) -> (String, [String; 2]) {
    let p = |offset: usize| first + offset;
    let held = format!(
        "flow_held AS (SELECT id FROM flows WHERE id = ${} AND version = ${} FOR UPDATE)",
        p(5),
        p(6)
    );
    let moved = format!(
        "flow_moved AS ({} AND EXISTS (SELECT 1 FROM {inserted}) RETURNING id)",
        move_statement(first)
    );
    let event = format!(
        "flow_moved_event AS ({} RETURNING 1)",
        event_for_each("flow_moved", first + 8)
    );
    (held, [moved, event])
}

/// Binds a [`MoveWithRequest`]'s thirteen values (the move's eight, [`bind_next`], and its
/// event's five, [`bind_event`]) after what `query` bound.
pub(crate) fn bind_move_with_request<'q>(
    query: Statement<'q>,
    m: &'q MoveWithRequest,
) -> Statement<'q> {
    bind_event(
        bind_next(query, &m.next, m.expected_version, None),
        &m.event,
    )
}

/// SQLite: writes a [`MoveWithRequest`] in the write `w` that is to insert its request (before
/// the insert: a refusal then rolls both back). False when the flow moved since its expected
/// version: nothing was written, and the caller rolls back (after the others of its group, as a
/// lost move does: the caller reads the flow again).
pub(crate) async fn move_in_write(
    w: &mut super::Write<'_>,
    m: &MoveWithRequest,
) -> Result<bool, StoreError> {
    let done = bind_next(sqlx::query(&MOVE), &m.next, m.expected_version, None)
        .execute(&mut **w)
        .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    add_event(&mut **w, &m.next.id, &m.event).await?;
    Ok(true)
}

/// What [`transition_at_once`] writes.
struct Move<'a> {
    next: &'a StoredFlow,
    expected_version: i64,
    event: &'a FlowEvent,
    while_bypassed: Option<WhileBypassed<'a>>,
    records: &'a [super::audit::Appended],
    decision: Option<&'a super::policies::DecisionRecord<'a>>,
}

/// PostgreSQL: [`transition_recording`] as one statement committed on its own, `update` (the
/// conditional update) a data-modifying `WITH` item, and the event and each audit record (with
/// its deliveries, `store::audit::appended_items`) inserted for the row it returns: one round
/// trip where a transaction took four, and the records another three. When nothing moved and the
/// move required a bypass, a read of the flow's version then tells a lost move from a bypass
/// cleared.
async fn transition_at_once(
    db: &Database,
    update: String,
    m: Move<'_>,
) -> Result<(Transitioned, bool), StoreError> {
    let first_event_value = if m.while_bypassed.is_some() { 12 } else { 9 };
    let (mut items, queued, next) =
        super::audit::appended_items(m.records, "moved", first_event_value + 5);
    if let Some(d) = m.decision {
        items.push(super::policies::decision_item(d, "moved", next));
    }
    let mut sql = format!(
        "WITH moved AS ({update} RETURNING id), event AS ({} RETURNING 1)",
        event_for_each("moved", first_event_value)
    );
    for item in &items {
        sql.push_str(", ");
        sql.push_str(item);
    }
    sql.push_str(&format!(
        " SELECT (SELECT COUNT(*) FROM event) AS moved, CAST({} AS BIGINT) AS queued",
        super::audit::queued_count(&queued)
    ));
    let query = bind_next(
        sqlx::query(&sql),
        m.next,
        m.expected_version,
        m.while_bypassed.as_ref(),
    );
    let mut query = super::audit::bind_appended(bind_event(query, m.event), m.records);
    if let Some(d) = m.decision {
        query = super::policies::bind_decision(query, d);
    }
    let row = query.fetch_one(db.writer()).await?;
    if row.try_get::<i64, _>("moved")? == 1 {
        return Ok((Transitioned::Moved, row.try_get::<i64, _>("queued")? > 0));
    }
    if m.while_bypassed.is_none() {
        return Ok((Transitioned::Lost, false));
    }
    let version: Option<i64> = sqlx::query_scalar("SELECT version FROM flows WHERE id = $1")
        .bind(m.next.id.as_str())
        .fetch_optional(db.writer())
        .await?;
    let outcome = if version == Some(m.expected_version) {
        Transitioned::BypassCleared
    } else {
        Transitioned::Lost
    };
    Ok((outcome, false))
}

/// Binds a move's values ([`transition_recording`]'s update: the flow as it moves, its id and the
/// version it must still be at; then, with `while_bypassed`, the bypass's three).
fn bind_next<'q>(
    query: Statement<'q>,
    next: &'q StoredFlow,
    expected_version: i64,
    while_bypassed: Option<&WhileBypassed<'q>>,
) -> Statement<'q> {
    let query = query
        .bind(&next.status)
        .bind(next.version)
        .bind(&next.data)
        .bind(
            next.authentication_id
                .as_ref()
                .map(AuthenticationId::as_str),
        )
        .bind(next.updated_at)
        .bind(next.id.as_str())
        .bind(expected_version)
        .bind(next.user_id.as_ref().map_or("", UserId::as_str));
    match while_bypassed {
        Some(bypass) => query
            .bind(bypass.application_id.as_str())
            .bind(bypass.user_id.as_str())
            .bind(bypass.now),
        None => query,
    }
}

/// Records a refused attempt (the flow did not move).
pub async fn record_refusal(
    db: &Database,
    flow: &FlowId,
    event: &FlowEvent,
) -> Result<(), StoreError> {
    add_event(db.writer(), flow, event).await
}

/// The flow's events, oldest first.
pub async fn events(db: &Database, flow: &FlowId) -> Result<Vec<FlowEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT at, action, from_status, to_status, error FROM flow_events \
         WHERE flow_id = $1 ORDER BY id",
    )
    .bind(flow.as_str())
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|row| {
            Ok(FlowEvent {
                at: row.try_get("at")?,
                action: row.try_get("action")?,
                from_status: row.try_get("from_status")?,
                to_status: row.try_get("to_status")?,
                error: row.try_get("error")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: &str, to: &str) -> FlowEvent {
        FlowEvent {
            at: 10,
            action: action.into(),
            from_status: None,
            to_status: to.into(),
            error: None,
        }
    }

    fn new_flow(
        application_id: ApplicationId,
        user_id: Option<UserId>,
        status: &str,
    ) -> StoredFlow {
        StoredFlow {
            id: FlowId::generate(),
            application_id,
            user_id,
            status: status.into(),
            version: 1,
            data: "{}".into(),
            authentication_id: None,
            created_at: 10,
            updated_at: 10,
            expires_at: 100,
        }
    }

    /// A passkey sign-in is stored without a user and bound to one by the move that wins its
    /// version, once: a racing move at the same version binds nobody else.
    #[tokio::test]
    async fn a_flow_without_a_user_is_bound_once_by_its_winning_move() {
        let (_dir, db, app_id) = crate::store::test_db_with_app().await;
        let flow = new_flow(app_id, None, "ASSERTION_REQUIRED");
        insert(&db, &flow, &event("create", "ASSERTION_REQUIRED"))
            .await
            .expect("insert");
        let stored = get(&db, &flow.id).await.expect("get").expect("stored");
        assert_eq!(stored.user_id, None);

        let bound = |user: &str| StoredFlow {
            user_id: Some(user.parse().expect("user")),
            status: "MFA_COMPLETED".into(),
            version: 2,
            ..flow.clone()
        };
        let moves = futures_util::future::join_all(["pia", "mallory"].map(|user| {
            let db = db.clone();
            let next = bound(user);
            async move {
                transition_recording(
                    &db,
                    &next,
                    1,
                    &event("checkAssertion", "MFA_COMPLETED"),
                    None,
                    &[],
                    None,
                )
                .await
                .expect("transition")
                .0 == Transitioned::Moved
            }
        }))
        .await;
        assert_eq!(moves.iter().filter(|won| **won).count(), 1, "{moves:?}");
        let winner = if moves[0] { "pia" } else { "mallory" };
        let stored = get(&db, &flow.id).await.expect("get").expect("stored");
        assert_eq!(stored.user_id.as_ref().map(UserId::as_str), Some(winner));
        assert_eq!(stored.version, 2);
    }

    /// A move that ends a flow by the user's bypass is made only while the bypass is in force:
    /// with none, or one that lapsed, the flow stays where it is (`BypassCleared`, told apart
    /// from a move that lost its version).
    #[tokio::test]
    async fn a_move_by_a_bypass_is_made_only_while_the_bypass_is_in_force() {
        let (_dir, db, app_id) = crate::store::test_db_with_app().await;
        let pia: UserId = "pia".parse().expect("user");
        let flow = new_flow(app_id.clone(), Some(pia.clone()), "AUTHENTICATION_REQUIRED");
        insert(&db, &flow, &event("create", "AUTHENTICATION_REQUIRED"))
            .await
            .expect("insert");
        let moves = |version: i64, now: i64| {
            let (db, app_id, pia) = (db.clone(), app_id.clone(), pia.clone());
            let next = StoredFlow {
                status: "MFA_COMPLETED".into(),
                version: version + 1,
                ..flow.clone()
            };
            async move {
                let bypassed = WhileBypassed {
                    application_id: &app_id,
                    user_id: &pia,
                    now,
                };
                transition_recording(
                    &db,
                    &next,
                    version,
                    &event("authenticate", "MFA_COMPLETED"),
                    Some(bypassed),
                    &[],
                    None,
                )
                .await
                .expect("transition")
                .0
            }
        };
        assert_eq!(moves(1, 50).await, Transitioned::BypassCleared, "no bypass");
        sqlx::query(
            "INSERT INTO user_bypasses (application_id, user_id, granted_at, until, reason, \
             granted_by) VALUES ($1, $2, 10, 60, 'lost phone', 'api')",
        )
        .bind(app_id.as_str())
        .bind(pia.as_str())
        .execute(db.writer())
        .await
        .expect("granted");
        assert_eq!(
            moves(1, 60).await,
            Transitioned::BypassCleared,
            "lapsed at its end"
        );
        assert_eq!(
            moves(2, 50).await,
            Transitioned::Lost,
            "not at that version"
        );
        assert_eq!(
            get(&db, &flow.id)
                .await
                .expect("get")
                .expect("stored")
                .version,
            1
        );
        assert_eq!(moves(1, 50).await, Transitioned::Moved, "in force");
        let stored = get(&db, &flow.id).await.expect("get").expect("stored");
        assert_eq!(
            (stored.version, stored.status.as_str()),
            (2, "MFA_COMPLETED")
        );
    }

    /// An action's claim holds until its move or its release: another action is refused until
    /// then, also one that read the flow after the claim (at the claimed version); a release
    /// ends only its own claim; a claim whose action never came back lapses at its time.
    #[tokio::test]
    async fn a_claim_refuses_other_actions_until_its_move_or_release() {
        let (_dir, db, app_id) = crate::store::test_db_with_app().await;
        let flow = new_flow(app_id, Some("pia".parse().expect("user")), "OTP_REQUIRED");
        insert(&db, &flow, &event("create", "OTP_REQUIRED"))
            .await
            .expect("insert");
        let id = &flow.id;
        let claim_at = |version: i64, now: i64| {
            let db = db.clone();
            async move {
                claim(&db, id, version, now, now + 30_000)
                    .await
                    .expect("claim")
            }
        };
        assert!(claim_at(1, 1_000).await, "the first claim");
        assert!(!claim_at(1, 1_001).await, "read before the claim");
        assert!(!claim_at(2, 1_001).await, "read after the claim");

        release(&db, id, 2).await.expect("release");
        assert!(claim_at(2, 1_002).await, "claimable once released");
        assert!(!claim_at(3, 1_003).await, "held again");

        let moved = StoredFlow {
            status: "MFA_COMPLETED".into(),
            version: 4,
            ..flow.clone()
        };
        assert_eq!(
            transition_recording(
                &db,
                &moved,
                3,
                &event("checkOtp", "MFA_COMPLETED"),
                None,
                &[],
                None,
            )
            .await
            .expect("transition")
            .0,
            Transitioned::Moved
        );
        assert!(claim_at(4, 1_004).await, "the move ended the claim");

        assert!(!claim_at(5, 31_003).await, "held until its time");
        assert!(claim_at(5, 31_004).await, "lapsed at its time");
        release(&db, id, 5).await.expect("an old claim's release");
        assert!(!claim_at(6, 31_005).await, "the newer claim still holds");
        assert_eq!(get(&db, id).await.expect("get").expect("stored").version, 6);
    }
}
