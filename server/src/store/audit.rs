//! The audit log: appended to, never changed (the schema's triggers refuse `UPDATE` and
//! `DELETE`). Records are numbered by `seq`, which only grows, so a cursor on it is stable
//! under inserts. On SQLite `seq` is a plain `INTEGER PRIMARY KEY` (max + 1, migration 0046):
//! no record is ever deleted, so no number is given twice, and no `sqlite_sequence` row is
//! written with each append. Nothing here may depend on `sqlite_sequence`.

use sqlx::Row;
use sqlx::any::AnyRow;

use std::sync::LazyLock;

use super::webhooks::{self, EventDeliveries};
use super::{Database, Engine, StoreError, Ticket, Write};

/// One record to append.
#[derive(Debug, Clone, Default)]
pub struct NewRecord {
    /// The record's id.
    pub id: String,
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// What happened.
    pub kind: String,
    /// Who did it.
    pub actor: String,
    /// The application.
    pub application_id: Option<String>,
    /// The user.
    pub user_id: Option<String>,
    /// The device (enrollment id).
    pub device_id: Option<String>,
    /// The object concerned.
    pub subject: Option<String>,
    /// The caller's address.
    pub client_ip: Option<String>,
    /// The person's address.
    pub accessing_ip: Option<String>,
    /// The location of the person's address.
    pub location: Option<String>,
    /// How it ended.
    pub outcome: String,
    /// More (JSON).
    pub details: String,
}

/// A stored record with its sequence number.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    /// Its place in the log.
    pub seq: i64,
    /// The record.
    pub record: NewRecord,
}

/// The columns an audit record is inserted with.
const APPEND_COLUMNS: &str = "id, at_ms, kind, actor, application_id, user_id, device_id, \
     subject, client_ip, accessing_ip, location, outcome, details";

/// The insert of an audit record.
const APPEND: &str = "INSERT INTO audit_log (id, at_ms, kind, actor, application_id, user_id, \
     device_id, subject, client_ip, accessing_ip, location, outcome, details) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";

/// How many values [`APPEND`] binds.
const APPEND_VALUES: usize = 13;

/// The queuing of an event's deliveries on SQLite, the statement after [`APPEND`].
pub(crate) static ENQUEUE: LazyLock<String> =
    LazyLock::new(|| webhooks::enqueue_statement(1, Engine::Sqlite));

/// PostgreSQL: [`APPEND`] and the queuing of the event's deliveries as one statement (the
/// insert as a data-modifying `WITH`, which runs whether or not anything reads it).
pub(crate) static APPEND_AND_ENQUEUE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH recorded AS ({APPEND}) {}",
        webhooks::enqueue_statement(APPEND_VALUES + 1, Engine::Postgres)
    )
});

fn bind_record<'q>(
    sql: &'q str,
    record: &'q NewRecord,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    bind_values(sqlx::query(sql), record)
}

/// Binds `record`'s [`APPEND_VALUES`] values after what `query` bound.
fn bind_values<'q>(query: Statement<'q>, record: &'q NewRecord) -> Statement<'q> {
    query
        .bind(&record.id)
        .bind(record.at_ms)
        .bind(&record.kind)
        .bind(&record.actor)
        .bind(record.application_id.as_deref())
        .bind(record.user_id.as_deref())
        .bind(record.device_id.as_deref())
        .bind(record.subject.as_deref())
        .bind(record.client_ip.as_deref())
        .bind(record.accessing_ip.as_deref())
        .bind(record.location.as_deref())
        .bind(&record.outcome)
        .bind(&record.details)
}

type Statement<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// The statements appending `record` and queuing `deliveries`: the last one changes as many
/// rows as deliveries were queued (when there are `deliveries`). No endpoint is read first: the
/// queuing selects the endpoints that want the event itself.
fn statements<'q>(
    engine: Engine,
    record: &'q NewRecord,
    deliveries: Option<&'q EventDeliveries>,
) -> Vec<Statement<'q>> {
    match (deliveries, engine) {
        (None, _) => vec![bind_record(APPEND, record)],
        (Some(d), Engine::Sqlite) => vec![
            bind_record(APPEND, record),
            webhooks::bind_enqueue(sqlx::query(&ENQUEUE), d),
        ],
        (Some(_), Engine::Postgres) => vec![postgres_statement(record, deliveries)],
    }
}

/// PostgreSQL: the one statement appending `record` and queuing `deliveries` (with them, it
/// changes as many rows as deliveries were queued).
fn postgres_statement<'q>(
    record: &'q NewRecord,
    deliveries: Option<&'q EventDeliveries>,
) -> Statement<'q> {
    match deliveries {
        None => bind_record(APPEND, record),
        Some(d) => webhooks::bind_enqueue(bind_record(&APPEND_AND_ENQUEUE, record), d),
    }
}

/// Appends `record` and queues `deliveries` as a write of their own. On SQLite one turn of the
/// writer (a write transaction of its statements); on PostgreSQL one statement committed on its
/// own, without a `BEGIN` and a `COMMIT` around it (a statement is all or nothing by itself): one
/// round trip where a transaction took three. Whether deliveries were queued.
pub async fn append(
    db: &Database,
    record: &NewRecord,
    deliveries: Option<&EventDeliveries>,
) -> Result<bool, StoreError> {
    if db.engine() == Engine::Postgres {
        let done = postgres_statement(record, deliveries)
            .execute(db.writer())
            .await?;
        return Ok(deliveries.is_some() && done.rows_affected() > 0);
    }
    let mut w = db.write().await?;
    let ticket = append_deferred(&mut w, record, deliveries).await?;
    let committed = w.commit().await?;
    Ok(ticket.is_some_and(|t| committed.changes(t) > 0))
}

/// Appends `record` and queues `deliveries` in `w`, deferred (sent with its next statement or
/// its commit). Returns the ticket whose changes, once committed, are the deliveries queued.
pub async fn append_deferred(
    w: &mut Write<'_>,
    record: &NewRecord,
    deliveries: Option<&EventDeliveries>,
) -> Result<Option<Ticket>, StoreError> {
    let mut last = None;
    for statement in statements(w.engine(), record, deliveries) {
        last = Some(w.defer(statement).await?);
    }
    Ok(last.filter(|_| deliveries.is_some()))
}

/// Appends each of `records` (with its deliveries) in `w`, deferred, in their order
/// ([`append_deferred`]). Returns the tickets whose changes, once committed, are the deliveries
/// queued.
pub async fn append_all_deferred(
    w: &mut Write<'_>,
    records: &[Appended],
) -> Result<Vec<Ticket>, StoreError> {
    let mut tickets = Vec::new();
    for appended in records {
        tickets.extend(append_deferred(w, &appended.record, appended.deliveries.as_ref()).await?);
    }
    Ok(tickets)
}

/// An audit record with its event's webhook deliveries, to append in one statement with the
/// change it records (`appended_items`).
#[derive(Debug, Clone)]
pub struct Appended {
    /// The record.
    pub record: NewRecord,
    /// Its deliveries, for an event webhooks may want.
    pub deliveries: Option<EventDeliveries>,
}

/// PostgreSQL: `records` as data-modifying `WITH` items of a statement, each inserted once for
/// every row of `source` (an item named before them, returning zero or one row): the record and
/// the queuing of its deliveries. Placeholders are numbered from `first`, in the order
/// [`bind_appended`] binds them. Returns the items, the names of those whose rows count the
/// deliveries queued, and the first placeholder after theirs.
///
/// The records are written in their order (their sequence numbers follow it): each record's
/// insert reads the row the one before it returned. Items that nothing reads would run in no
/// order the statement promises (PostgreSQL finishes them last one first).
pub(crate) fn appended_items(
    records: &[Appended],
    source: &str,
    first: usize,
) -> (Vec<String>, Vec<String>, usize) {
    let mut next = first;
    let mut items = Vec::new();
    let mut queued = Vec::new();
    for (n, appended) in records.iter().enumerate() {
        let values = (next..next + APPEND_VALUES)
            .map(|p| format!("${p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let after = match n {
            0 => source.to_string(),
            _ => format!("recorded_{}", n - 1),
        };
        items.push(format!(
            "recorded_{n} AS (INSERT INTO audit_log ({APPEND_COLUMNS}) SELECT {values} FROM {after} \
             RETURNING 1)"
        ));
        next += APPEND_VALUES;
        if appended.deliveries.is_some() {
            items.push(format!(
                "queued_{n} AS ({} RETURNING 1)",
                webhooks::enqueue_statement_when(
                    next,
                    Engine::Postgres,
                    Some(&format!("EXISTS (SELECT 1 FROM {source})"))
                )
            ));
            queued.push(format!("queued_{n}"));
            next += webhooks::ENQUEUE_VALUES;
        }
    }
    (items, queued, next)
}

/// The expression counting the deliveries the [`appended_items`] named `queued` queued.
pub(crate) fn queued_count(queued: &[String]) -> String {
    if queued.is_empty() {
        return "0".to_string();
    }
    queued
        .iter()
        .map(|name| format!("(SELECT COUNT(*) FROM {name})"))
        .collect::<Vec<_>>()
        .join(" + ")
}

/// What records appended with a change queued: on SQLite the tickets of their deliveries' deferred
/// statements (read once the write committed), on PostgreSQL whether the statement queued any.
#[derive(Debug, Default)]
pub struct AppendedQueue {
    /// The deliveries' deferred statements.
    pub tickets: Vec<Ticket>,
    /// Whether a delivery was queued (known from the statement itself).
    pub queued: bool,
}

/// Binds the values of [`appended_items`] after what `query` bound.
pub(crate) fn bind_appended<'q>(
    mut query: Statement<'q>,
    records: &'q [Appended],
) -> Statement<'q> {
    for appended in records {
        query = bind_values(query, &appended.record);
        if let Some(d) = &appended.deliveries {
            query = webhooks::bind_enqueue(query, d);
        }
    }
    query
}

/// Which records a query wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this application's (`None`: every application, for the admin export).
    pub application_id: Option<String>,
    /// Only this user's.
    pub user_id: Option<String>,
    /// Only of this kind.
    pub kind: Option<String>,
    /// At or after (ms).
    pub since_ms: Option<i64>,
    /// Before (ms).
    pub until_ms: Option<i64>,
    /// Older than this sequence number (a cursor).
    pub before_seq: Option<i64>,
    /// Newer than this sequence number (the export's position).
    pub after_seq: Option<i64>,
}

const COLUMNS: &str = "seq, id, at_ms, kind, actor, application_id, user_id, device_id, subject, \
                       client_ip, accessing_ip, location, outcome, details";

/// Up to `limit` records matching `filter`: newest first, or oldest first with `oldest_first`.
pub async fn query(
    db: &Database,
    filter: &Filter,
    limit: i64,
    oldest_first: bool,
) -> Result<Vec<StoredRecord>, StoreError> {
    let mut sql = format!("SELECT {COLUMNS} FROM audit_log WHERE 1 = 1");
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    let mut texts: Vec<String> = Vec::new();
    let mut ints: Vec<(usize, i64)> = Vec::new();
    // Binds are positional: keep the order of the text and integer conditions explicit.
    let mut order: Vec<Bind> = Vec::new();
    if let Some(app) = &filter.application_id {
        sql.push_str(&format!(" AND application_id = ${}", next()));
        texts.push(app.clone());
        order.push(Bind::Text(texts.len() - 1));
    }
    if let Some(user) = &filter.user_id {
        sql.push_str(&format!(" AND user_id = ${}", next()));
        texts.push(user.clone());
        order.push(Bind::Text(texts.len() - 1));
    }
    if let Some(kind) = &filter.kind {
        sql.push_str(&format!(" AND kind = ${}", next()));
        texts.push(kind.clone());
        order.push(Bind::Text(texts.len() - 1));
    }
    for (value, condition) in [
        (filter.since_ms, "at_ms >="),
        (filter.until_ms, "at_ms <"),
        (filter.before_seq, "seq <"),
        (filter.after_seq, "seq >"),
    ] {
        if let Some(value) = value {
            sql.push_str(&format!(" AND {condition} ${}", next()));
            ints.push((ints.len(), value));
            order.push(Bind::Int(ints.len() - 1));
        }
    }
    sql.push_str(if oldest_first {
        " ORDER BY seq ASC"
    } else {
        " ORDER BY seq DESC"
    });
    sql.push_str(&format!(" LIMIT ${}", next()));
    let mut q = sqlx::query(&sql);
    for bind in order {
        q = match bind {
            Bind::Text(i) => q.bind(texts[i].clone()),
            Bind::Int(i) => q.bind(ints[i].1),
        };
    }
    let rows = q.bind(limit).fetch_all(db.pool()).await?;
    rows.iter().map(row_to_record).collect()
}

enum Bind {
    Text(usize),
    Int(usize),
}

fn row_to_record(row: &AnyRow) -> Result<StoredRecord, StoreError> {
    Ok(StoredRecord {
        seq: row.try_get("seq")?,
        record: NewRecord {
            id: row.try_get("id")?,
            at_ms: row.try_get("at_ms")?,
            kind: row.try_get("kind")?,
            actor: row.try_get("actor")?,
            application_id: row.try_get("application_id")?,
            user_id: row.try_get("user_id")?,
            device_id: row.try_get("device_id")?,
            subject: row.try_get("subject")?,
            client_ip: row.try_get("client_ip")?,
            accessing_ip: row.try_get("accessing_ip")?,
            location: row.try_get("location")?,
            outcome: row.try_get("outcome")?,
            details: row.try_get("details")?,
        },
    })
}

/// The statement of [`claim_unreported_expired`] on `engine` (`$1` now, `$2` the limit and, for
/// `of_application`, `$3` the application): the expiry sweep's, run every second, which reads
/// the partial index `authentications_unreported_expiry`.
pub(crate) fn claim_unreported_expired_statement(
    engine: super::Engine,
    of_application: bool,
) -> String {
    let lock = match engine {
        super::Engine::Postgres => " FOR UPDATE SKIP LOCKED",
        super::Engine::Sqlite => "",
    };
    let of_application = if of_application {
        " AND application_id = $3"
    } else {
        ""
    };
    let unreported = super::authentications::unreported_expired(1);
    format!(
        "UPDATE authentications SET expiry_reported = 1 WHERE id IN \
         (SELECT id FROM authentications WHERE {unreported}{of_application} \
          ORDER BY expires_at LIMIT $2{lock}) AND {unreported} RETURNING {}",
        super::authentications::READ_COLUMNS
    )
}

/// Marks up to `limit` authentications that expired unanswered (and were not yet reported) as
/// reported, inside the write `w`, and returns them as they stand at `now`. Each is returned to
/// one caller only. `application` limits it to one application's (`None`: every application's).
/// The caller appends their records in the same write, so a crash or an error before its commit
/// leaves them unreported for the next sweep: they are never marked without their records.
pub async fn claim_unreported_expired(
    w: &mut Write<'_>,
    now: i64,
    limit: i64,
    application: Option<&str>,
) -> Result<Vec<super::authentications::Authentication>, StoreError> {
    let sql = claim_unreported_expired_statement(w.engine(), application.is_some());
    let mut query = sqlx::query(&sql).bind(now).bind(limit);
    if let Some(application) = application {
        query = query.bind(application);
    }
    let rows = query.fetch_all(&mut **w).await?;
    let mut expired = rows
        .iter()
        .map(|row| super::authentications::from_row(row, now))
        .collect::<Result<Vec<_>, _>>()?;
    // In the order they expired (`RETURNING` promises none), so their records follow it.
    expired.sort_by(|a, b| (a.expires_at, a.id.as_str()).cmp(&(b.expires_at, b.id.as_str())));
    Ok(expired)
}

/// One authentication as a user's history shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// The authentication.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Its stored state (`pending` may have expired: see `expires_at`).
    pub state: String,
    /// Whether a signed answer was recorded.
    pub signed: bool,
    /// The decision recorded, if any.
    pub decision: Option<String>,
    /// Why it was denied.
    pub denial_reason: Option<String>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// Created (seconds).
    pub created_at: i64,
    /// Answered (seconds).
    pub answered_at: Option<i64>,
    /// Expires (seconds).
    pub expires_at: i64,
    /// The device asked.
    pub enrollment_id: String,
    /// The person's address.
    pub accessing_ip: Option<String>,
}

/// Up to `limit` of the user's authentications, newest first, older than `before` (the
/// `(created_at, id)` of the last row of the previous page).
pub async fn authentication_history(
    db: &Database,
    application_id: &str,
    user_id: &str,
    before: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<HistoryRow>, StoreError> {
    let columns = "id, kind, state, signed_response IS NOT NULL AS signed, decision, denial_reason, \
                   failure_reason, created_at, answered_at, expires_at, enrollment_id, accessing_ip";
    let rows =
        match before {
            Some((created_at, id)) => sqlx::query(&format!(
                "SELECT {columns} FROM authentications WHERE application_id = $1 AND user_id = $2 \
                 AND (created_at < $3 OR (created_at = $3 AND id < $4)) \
                 ORDER BY created_at DESC, id DESC LIMIT $5"
            ))
            .bind(application_id)
            .bind(user_id)
            .bind(created_at)
            .bind(id)
            .bind(limit)
            .fetch_all(db.pool())
            .await?,
            None => sqlx::query(&format!(
                "SELECT {columns} FROM authentications WHERE application_id = $1 AND user_id = $2 \
                 ORDER BY created_at DESC, id DESC LIMIT $3"
            ))
            .bind(application_id)
            .bind(user_id)
            .bind(limit)
            .fetch_all(db.pool())
            .await?,
        };
    rows.iter()
        .map(|row| {
            let signed: bool = match row.try_get::<bool, _>("signed") {
                Ok(b) => b,
                Err(_) => row.try_get::<i64, _>("signed")? != 0,
            };
            Ok(HistoryRow {
                id: row.try_get("id")?,
                kind: row.try_get("kind")?,
                state: row.try_get("state")?,
                signed,
                decision: row.try_get("decision")?,
                denial_reason: row.try_get("denial_reason")?,
                failure_reason: row.try_get("failure_reason")?,
                created_at: row.try_get("created_at")?,
                answered_at: row.try_get("answered_at")?,
                expires_at: row.try_get("expires_at")?,
                enrollment_id: row.try_get("enrollment_id")?,
                accessing_ip: row.try_get("accessing_ip")?,
            })
        })
        .collect()
}
