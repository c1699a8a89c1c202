//! Webhook endpoints (their signing secrets sealed with the data key) and the outbox of
//! deliveries: one row per event and endpoint, claimed by one instance at a time with a lease
//! (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: one conditional update, its writes being
//! serialised), so any instance resumes what another left.

use sqlx::Row;
use sqlx::any::AnyRow;
use tessera_protocol::ids::ApplicationId;
use zeroize::Zeroizing;

use super::secrets::{open_text, place, seal_text};
use super::{Database, Engine, StoreError};

/// A registered endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its id.
    pub id: String,
    /// Its application.
    pub application_id: String,
    /// Where to POST.
    pub url: String,
    /// Comma-separated event types; empty: all.
    pub event_types: String,
    /// When it was registered (seconds).
    pub created_at: i64,
}

impl Endpoint {
    /// Whether this endpoint receives events of type `event_type`.
    pub fn wants(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.split(',').any(|t| t == event_type)
    }
}

/// Registers an endpoint, its secret sealed (no cap: [`insert_endpoint_within_limit`] is what
/// the customer API uses).
pub async fn insert_endpoint(
    db: &Database,
    endpoint: &Endpoint,
    secret: &str,
) -> Result<(), StoreError> {
    insert_endpoint_with(db.writer(), db, endpoint, secret).await
}

/// The number of endpoints [`insert_endpoint_within_limit`] checks.
const ENDPOINTS_OF_APPLICATION: &str =
    "SELECT COUNT(*) FROM webhook_endpoints WHERE application_id = $1";

/// Registers `endpoint` for application `app` (its `application_id`) unless the application
/// has `limit` endpoints already; returns false then (nothing stored). The count and the
/// insert are one write that first takes the application's quota lock
/// ([`super::applications::lock_for_quota`]: a row lock on PostgreSQL, where concurrent
/// transactions would each miss the others' uncommitted inserts; SQLite's one writer runs the
/// writes one at a time), so registrations at once count one after the other and never go
/// past the cap.
pub async fn insert_endpoint_within_limit(
    db: &Database,
    app: &ApplicationId,
    endpoint: &Endpoint,
    secret: &str,
    limit: i64,
) -> Result<bool, StoreError> {
    let mut w = db.write().await?;
    super::applications::lock_for_quota(&mut *w, db.engine(), app).await?;
    let registered: i64 = sqlx::query_scalar(ENDPOINTS_OF_APPLICATION)
        .bind(app.as_str())
        .fetch_one(&mut *w)
        .await?;
    if registered >= limit {
        w.rollback().await?;
        return Ok(false);
    }
    insert_endpoint_with(&mut *w, db, endpoint, secret).await?;
    w.commit().await?;
    Ok(true)
}

async fn insert_endpoint_with<'e, E>(
    executor: E,
    db: &Database,
    endpoint: &Endpoint,
    secret: &str,
) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sealed = seal_text(
        db.secrets()?,
        place("webhook_endpoints", "secret", &endpoint.id),
        Some(secret),
    )?;
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, application_id, url, secret, event_types, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&endpoint.id)
    .bind(&endpoint.application_id)
    .bind(&endpoint.url)
    .bind(sealed)
    .bind(&endpoint.event_types)
    .bind(endpoint.created_at)
    .execute(executor)
    .await?;
    Ok(())
}

fn row_to_endpoint(row: &AnyRow) -> Result<Endpoint, StoreError> {
    Ok(Endpoint {
        id: row.try_get("id")?,
        application_id: row.try_get("application_id")?,
        url: row.try_get("url")?,
        event_types: row.try_get("event_types")?,
        created_at: row.try_get("created_at")?,
    })
}

/// The application's endpoints, oldest first.
pub async fn endpoints(db: &Database, application_id: &str) -> Result<Vec<Endpoint>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, application_id, url, event_types, created_at FROM webhook_endpoints \
         WHERE application_id = $1 ORDER BY created_at, id",
    )
    .bind(application_id)
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(row_to_endpoint).collect()
}

/// One endpoint of the application.
pub async fn endpoint(
    db: &Database,
    application_id: &str,
    id: &str,
) -> Result<Option<Endpoint>, StoreError> {
    let row = sqlx::query(
        "SELECT id, application_id, url, event_types, created_at FROM webhook_endpoints \
         WHERE application_id = $1 AND id = $2",
    )
    .bind(application_id)
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(row_to_endpoint).transpose()
}

/// The endpoint's signing secret.
pub async fn endpoint_secret(
    db: &Database,
    id: &str,
) -> Result<Option<Zeroizing<String>>, StoreError> {
    let row = sqlx::query("SELECT secret FROM webhook_endpoints WHERE id = $1")
        .bind(id)
        .fetch_optional(db.pool())
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    open_text(
        db.secrets()?,
        place("webhook_endpoints", "secret", id),
        row.try_get("secret")?,
    )
}

/// Removes an endpoint and its deliveries. False if the application has no such endpoint.
pub async fn delete_endpoint(
    db: &Database,
    application_id: &str,
    id: &str,
) -> Result<bool, StoreError> {
    let mut tx = db.write().await?;
    sqlx::query(
        "DELETE FROM webhook_deliveries WHERE endpoint_id IN \
         (SELECT id FROM webhook_endpoints WHERE application_id = $1 AND id = $2)",
    )
    .bind(application_id)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let done = sqlx::query("DELETE FROM webhook_endpoints WHERE application_id = $1 AND id = $2")
        .bind(application_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// One event's deliveries: a row for each endpoint of its application that wants its type,
/// queued by one statement (`enqueue_statement`) without reading the endpoints first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDeliveries {
    /// The start of each delivery's id; the endpoint's id (without its `whe_`) completes it.
    pub id_prefix: String,
    /// The application.
    pub application_id: String,
    /// The event's id.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// The body to POST.
    pub payload: String,
    /// When they were queued (ms), and first due.
    pub created_at_ms: i64,
}

/// The `INSERT … SELECT` queuing an [`EventDeliveries`] on `engine`, its values bound from
/// `$first`: one row per endpoint of the application whose types are empty (every type) or
/// name the event's type between commas: the same test as [`Endpoint::wants`] (exact and
/// case-sensitive: SQLite's `instr`, PostgreSQL's `strpos`).
pub(crate) fn enqueue_statement(first: usize, engine: Engine) -> String {
    enqueue_statement_when(first, engine, None)
}

/// [`enqueue_statement`], queuing only when `condition` (an SQL expression) holds.
///
/// On PostgreSQL the endpoints are read `FOR KEY SHARE`, as the deliveries' foreign key would
/// lock them anyway: an endpoint being deleted by a transaction not yet committed is waited
/// for and then, deleted, skipped. Read without the lock, it would be in the statement's
/// snapshot, and the foreign key's own check, after the wait, would fail the whole statement:
/// the device's answer or the request the event records would fail with it.
pub(crate) fn enqueue_statement_when(
    first: usize,
    engine: Engine,
    condition: Option<&str>,
) -> String {
    let p = |n: usize| format!("${}", first + n);
    let (position, lock) = match engine {
        Engine::Sqlite => ("instr", ""),
        Engine::Postgres => ("strpos", " FOR KEY SHARE OF webhook_endpoints"),
    };
    let condition = condition.map(|c| format!(" AND {c}")).unwrap_or_default();
    format!(
        "INSERT INTO webhook_deliveries (id, endpoint_id, application_id, event_id, event_type, \
         payload, state, attempts, next_attempt_at, created_at) \
         SELECT {id} || substr(webhook_endpoints.id, 5), webhook_endpoints.id, {app}, {event}, \
         {kind}, {payload}, 'pending', 0, {at}, {at} FROM webhook_endpoints \
         WHERE webhook_endpoints.application_id = {app} AND (webhook_endpoints.event_types = '' \
         OR {position}(',' || webhook_endpoints.event_types || ',', {delimited}) > 0){condition}{lock}",
        id = p(0),
        app = p(1),
        event = p(2),
        kind = p(3),
        payload = p(4),
        at = p(5),
        delimited = p(6),
    )
}

/// How many values [`enqueue_statement`] binds.
pub(crate) const ENQUEUE_VALUES: usize = 7;

/// Binds an [`EventDeliveries`]' seven values ([`ENQUEUE_VALUES`]) after what `query` bound.
pub(crate) fn bind_enqueue<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    d: &'q EventDeliveries,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    query
        .bind(d.id_prefix.as_str())
        .bind(d.application_id.as_str())
        .bind(d.event_id.as_str())
        .bind(d.event_type.as_str())
        .bind(d.payload.as_str())
        .bind(d.created_at_ms)
        .bind(format!(",{},", d.event_type))
}

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Its id.
    pub id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The endpoint's application.
    pub application_id: String,
    /// The event's id.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// The body.
    pub payload: String,
    /// `pending`, `delivered`, `failed`.
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// When the next attempt is due (ms).
    pub next_attempt_at: i64,
    /// The last attempt's HTTP status.
    pub last_status: Option<i64>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// When the last attempt was made (ms).
    pub last_attempt_at: Option<i64>,
    /// When it was delivered (ms).
    pub delivered_at: Option<i64>,
    /// When it was queued (ms).
    pub created_at: i64,
}

const DELIVERY_COLUMNS: &str = "id, endpoint_id, application_id, event_id, event_type, payload, \
     state, attempts, next_attempt_at, last_status, last_error, last_attempt_at, delivered_at, created_at";

fn row_to_delivery(row: &AnyRow) -> Result<Delivery, StoreError> {
    Ok(Delivery {
        id: row.try_get("id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        application_id: row.try_get("application_id")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        payload: row.try_get("payload")?,
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_status: row.try_get("last_status")?,
        last_error: row.try_get("last_error")?,
        last_attempt_at: row.try_get("last_attempt_at")?,
        delivered_at: row.try_get("delivered_at")?,
        created_at: row.try_get("created_at")?,
    })
}

/// What a claim may take: how many deliveries, how many of one application, and which
/// applications to leave alone.
#[derive(Debug, Clone, Copy)]
pub struct ClaimLimits<'a> {
    /// The most deliveries claimed.
    pub limit: i64,
    /// The most deliveries of one application claimed.
    pub per_application: i64,
    /// Applications none of whose deliveries are claimed (the claimer has as many of theirs in
    /// flight as it allows).
    pub skip_applications: &'a [&'a str],
}

/// The statement of [`claim_due`] on `engine`: the earliest due deliveries (`$4` at most,
/// through the `(state, next_attempt_at)` index) of the applications not named in `$5`
/// (`,app,app,`), at most `$6` of each application, leased to `$1` until `$2`.
///
/// On PostgreSQL the candidates are locked `FOR UPDATE SKIP LOCKED` (one claimer per row; the
/// window that ranks them by application is a level above, where a lock may not be) and the
/// update checks them again. On SQLite the statement runs whole on the one writer, so what
/// the candidates' query read still holds, and the update finds them by their key alone: with
/// the check repeated there, its planner reads every pending row through the `state` index
/// instead.
pub(crate) fn claim_statement(engine: Engine) -> String {
    let (lock, position, recheck) = match engine {
        Engine::Postgres => (
            " FOR UPDATE SKIP LOCKED",
            "strpos",
            " AND state = 'pending' AND (lease_until IS NULL OR lease_until <= $3)",
        ),
        Engine::Sqlite => ("", "instr", ""),
    };
    format!(
        "UPDATE webhook_deliveries SET lease_owner = $1, lease_until = $2 \
         WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER \
               (PARTITION BY application_id ORDER BY next_attempt_at, id) AS place \
             FROM (SELECT id, application_id, next_attempt_at FROM webhook_deliveries \
               WHERE state = 'pending' AND next_attempt_at <= $3 \
               AND (lease_until IS NULL OR lease_until <= $3) \
               AND {position}($5, ',' || application_id || ',') = 0 \
               ORDER BY next_attempt_at LIMIT $4{lock}) AS due) AS ranked \
           WHERE place <= $6){recheck} \
         RETURNING {DELIVERY_COLUMNS}"
    )
}

/// Claims due deliveries for `owner` until `lease_until` (ms): pending, due, and not leased
/// by anyone else (or their lease lapsed), the earliest first, within `limits`. Each row goes
/// to one claimer only.
pub async fn claim_due(
    db: &Database,
    owner: &str,
    now_ms: i64,
    lease_until: i64,
    limits: ClaimLimits<'_>,
) -> Result<Vec<Delivery>, StoreError> {
    let skipped = if limits.skip_applications.is_empty() {
        String::new()
    } else {
        format!(",{},", limits.skip_applications.join(","))
    };
    let rows = sqlx::query(&claim_statement(db.engine()))
        .bind(owner)
        .bind(lease_until)
        .bind(now_ms)
        .bind(limits.limit)
        .bind(skipped)
        .bind(limits.per_application)
        .fetch_all(db.writer())
        .await?;
    rows.iter().map(row_to_delivery).collect()
}

/// What an attempt ended as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// Delivered.
    Delivered {
        /// The answer's status.
        status: i64,
    },
    /// Failed; try again at `next_attempt_at` (ms).
    Retry {
        /// The answer's status, if any.
        status: Option<i64>,
        /// Why.
        error: String,
        /// When to try again.
        next_attempt_at: i64,
    },
    /// Failed for the last time.
    GiveUp {
        /// The answer's status, if any.
        status: Option<i64>,
        /// Why.
        error: String,
    },
}

/// Records an attempt by `owner` and releases its lease. False if the lease was lost (another
/// instance took the delivery over): nothing is written then.
pub async fn record_attempt(
    db: &Database,
    id: &str,
    owner: &str,
    now_ms: i64,
    result: &AttemptResult,
) -> Result<bool, StoreError> {
    let (state, status, error, next, delivered) = match result {
        AttemptResult::Delivered { status } => {
            ("delivered", Some(*status), None, None, Some(now_ms))
        }
        AttemptResult::Retry {
            status,
            error,
            next_attempt_at,
        } => (
            "pending",
            *status,
            Some(error.as_str()),
            Some(*next_attempt_at),
            None,
        ),
        AttemptResult::GiveUp { status, error } => {
            ("failed", *status, Some(error.as_str()), None, None)
        }
    };
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, last_status = $2, \
         last_error = $3, last_attempt_at = $4, next_attempt_at = COALESCE($5, next_attempt_at), \
         delivered_at = $6, lease_owner = NULL, lease_until = NULL \
         WHERE id = $7 AND lease_owner = $8 AND state = 'pending'",
    )
    .bind(state)
    .bind(status)
    .bind(error)
    .bind(now_ms)
    .bind(next)
    .bind(delivered)
    .bind(id)
    .bind(owner)
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The statement of [`next_due`].
const NEXT_DUE: &str = "SELECT MIN(due) AS due FROM (SELECT CASE WHEN lease_until IS NOT NULL \
     AND lease_until > next_attempt_at THEN lease_until ELSE next_attempt_at END AS due \
     FROM webhook_deliveries WHERE state = 'pending') AS pending WHERE due > $1";

/// The earliest time (ms) after `now_ms` a pending delivery becomes due or its lease lapses,
/// if any. (Deliveries due already are the claimer's to take when it has room.)
pub async fn next_due(db: &Database, now_ms: i64) -> Result<Option<i64>, StoreError> {
    let row = sqlx::query(NEXT_DUE)
        .bind(now_ms)
        .fetch_one(db.pool())
        .await?;
    Ok(row.try_get::<Option<i64>, _>("due")?)
}

/// The endpoint's deliveries, newest first, up to `limit`.
pub async fn deliveries(
    db: &Database,
    application_id: &str,
    endpoint_id: &str,
    limit: i64,
) -> Result<Vec<Delivery>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
         WHERE application_id = $1 AND endpoint_id = $2 ORDER BY created_at DESC, id DESC LIMIT $3"
    ))
    .bind(application_id)
    .bind(endpoint_id)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(row_to_delivery).collect()
}

/// One endpoint, whatever its application.
pub async fn endpoint_by_id(db: &Database, id: &str) -> Result<Option<Endpoint>, StoreError> {
    let row = sqlx::query(
        "SELECT id, application_id, url, event_types, created_at FROM webhook_endpoints WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(row_to_endpoint).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Up to `limit` deliveries, of any application.
    fn any(limit: i64) -> ClaimLimits<'static> {
        ClaimLimits {
            limit,
            per_application: limit,
            skip_applications: &[],
        }
    }

    async fn database_with_deliveries(n: usize) -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
        let mut db = Database::connect(&url, 4).await.expect("database");
        db.open_secrets(None, 0).await.expect("data key");
        sqlx::query(
            "INSERT INTO applications (id, name, api_key_digest, created_at) VALUES ('app', 'A', 'd', 0)",
        )
        .execute(db.writer())
        .await
        .expect("application");
        let endpoint = Endpoint {
            id: "whe_1".into(),
            application_id: "app".into(),
            url: "https://hooks.example.com/x".into(),
            event_types: String::new(),
            created_at: 0,
        };
        insert_endpoint(&db, &endpoint, "whsec_x")
            .await
            .expect("endpoint");
        let mut tx = db.write().await.expect("tx");
        for i in 0..n {
            sqlx::query(
                "INSERT INTO webhook_deliveries (id, endpoint_id, application_id, event_id, \
                 event_type, payload, state, attempts, next_attempt_at, created_at) \
                 VALUES ($1, 'whe_1', 'app', $2, 'pairing.completed', '{}', 'pending', 0, 1000, 1000)",
            )
            .bind(format!("whd_{i}"))
            .bind(format!("evt_{i}"))
            .execute(&mut *tx)
            .await
            .expect("delivery");
        }
        tx.commit().await.expect("commit");
        (dir, db)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_claimers_each_get_distinct_rows_and_leases_hold_until_they_lapse() {
        let (_dir, db) = database_with_deliveries(50).await;
        let claimers: Vec<_> = (0..8)
            .map(|i| {
                let db = db.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    loop {
                        let got = claim_due(&db, &format!("w{i}"), 2_000, 60_000, any(5))
                            .await
                            .expect("claim");
                        if got.is_empty() {
                            return mine;
                        }
                        mine.extend(got.into_iter().map(|d| d.id));
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for claimer in claimers {
            all.extend(claimer.await.expect("claimer"));
        }
        assert_eq!(all.len(), 50, "every row claimed");
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), 50, "each once");
        // Leased: nobody else gets them before the lease lapses, everybody after.
        assert!(
            claim_due(&db, "late", 59_999, 120_000, any(100))
                .await
                .unwrap()
                .is_empty()
        );
        let resumed = claim_due(&db, "late", 60_000, 120_000, any(100))
            .await
            .unwrap();
        assert_eq!(resumed.len(), 50);
        // Only the lease holder records an attempt.
        let retry = AttemptResult::Retry {
            status: Some(500),
            error: "answered 500".into(),
            next_attempt_at: 70_000,
        };
        assert!(
            !record_attempt(&db, "whd_0", "w0", 60_001, &retry)
                .await
                .unwrap()
        );
        assert!(
            record_attempt(&db, "whd_0", "late", 60_001, &retry)
                .await
                .unwrap()
        );
        let listed = deliveries(&db, "app", "whe_1", 100).await.unwrap();
        let d0 = listed.iter().find(|d| d.id == "whd_0").unwrap();
        assert_eq!((d0.attempts, d0.next_attempt_at), (1, 70_000));
        assert_eq!(d0.last_status, Some(500));
        // Not due yet, then due.
        assert!(
            claim_due(&db, "x", 69_999, 200_000, any(100))
                .await
                .unwrap()
                .iter()
                .all(|d| d.id != "whd_0")
        );
        let due = claim_due(&db, "x", 130_000, 200_000, any(100))
            .await
            .unwrap();
        assert!(due.iter().any(|d| d.id == "whd_0"));
        // The secret is stored sealed and opens to what was stored.
        assert_eq!(
            endpoint_secret(&db, "whe_1")
                .await
                .unwrap()
                .unwrap()
                .as_str(),
            "whsec_x"
        );
    }

    /// Adds application `app` with one endpoint and `n` deliveries due at `due`.
    async fn add_application(db: &Database, app: &str, n: usize, due: i64) {
        sqlx::query(
            "INSERT INTO applications (id, name, api_key_digest, created_at) VALUES ($1, $1, $1, 0)",
        )
        .bind(app)
        .execute(db.writer())
        .await
        .expect("application");
        let endpoint = Endpoint {
            id: format!("whe_{app}"),
            application_id: app.into(),
            url: "https://hooks.example.com/x".into(),
            event_types: String::new(),
            created_at: 0,
        };
        insert_endpoint(db, &endpoint, "whsec_x")
            .await
            .expect("endpoint");
        for i in 0..n {
            sqlx::query(
                "INSERT INTO webhook_deliveries (id, endpoint_id, application_id, event_id, \
                 event_type, payload, state, attempts, next_attempt_at, created_at) \
                 VALUES ($1, $2, $3, $4, 'pairing.completed', '{}', 'pending', 0, $5, $5)",
            )
            .bind(format!("whd_{app}_{i}"))
            .bind(&endpoint.id)
            .bind(app)
            .bind(format!("evt_{app}_{i}"))
            .bind(due)
            .execute(db.writer())
            .await
            .expect("delivery");
        }
    }

    fn applications_of(claimed: &[Delivery]) -> Vec<&str> {
        let mut apps: Vec<&str> = claimed.iter().map(|d| d.application_id.as_str()).collect();
        apps.sort_unstable();
        apps
    }

    /// A claim takes at most its share of each application, the earliest first, and none of
    /// the applications it skips: an application with a long queue of earlier deliveries
    /// does not fill the claim.
    #[tokio::test]
    async fn a_claim_takes_a_share_of_each_application_and_skips_the_full_ones() {
        // 50 deliveries of `app` due at 1 000; then 2 of `b` and 6 of `c`, due later.
        let (_dir, db) = database_with_deliveries(50).await;
        add_application(&db, "b", 2, 1_500).await;
        add_application(&db, "c", 6, 1_600).await;
        let share = |limit, skip_applications| ClaimLimits {
            limit,
            per_application: 4,
            skip_applications,
        };
        let first = claim_due(&db, "w", 2_000, 60_000, share(32, &[]))
            .await
            .expect("claim");
        assert_eq!(
            applications_of(&first),
            ["app", "app", "app", "app"],
            "the candidates are the 32 earliest, all of `app`: its share of them"
        );
        assert!(first.iter().all(|d| d.endpoint_id == "whe_1"));
        let second = claim_due(&db, "w", 2_000, 60_000, share(28, &["app"]))
            .await
            .expect("claim");
        assert_eq!(
            applications_of(&second),
            ["b", "b", "c", "c", "c", "c"],
            "`app` skipped: the others' deliveries, a share of each"
        );
        let third = claim_due(&db, "w", 2_000, 60_000, share(22, &["app", "c"]))
            .await
            .expect("claim");
        assert!(third.is_empty(), "{third:?}");
        let last = claim_due(&db, "w", 2_000, 60_000, share(2, &["app", "b"]))
            .await
            .expect("claim");
        assert_eq!(applications_of(&last), ["c", "c"], "at most the limit");
        db.close().await;
    }

    /// The claim reads the due deliveries through their index and updates the claimed ones by
    /// their key: it never reads the whole outbox, nor every pending delivery.
    #[tokio::test]
    async fn the_claim_reads_the_outbox_through_its_index() {
        let (_dir, db) = database_with_deliveries(0).await;
        let plan =
            super::super::query_plans::sqlite_plan(&db, &claim_statement(Engine::Sqlite)).await;
        let reads: Vec<&str> = plan
            .iter()
            .map(String::as_str)
            .filter(|line| line.contains("webhook_deliveries"))
            .collect();
        assert_eq!(
            reads,
            [
                "SEARCH webhook_deliveries USING COVERING INDEX \
                 sqlite_autoindex_webhook_deliveries_1 (id=?)",
                "SEARCH webhook_deliveries USING INDEX webhook_deliveries_due \
                 (state=? AND next_attempt_at<?)",
            ],
            "{plan:?}"
        );
        let plan = super::super::query_plans::sqlite_plan(&db, NEXT_DUE).await;
        assert!(
            plan.iter()
                .all(|line| !line.starts_with("SCAN webhook_deliveries")),
            "{plan:?}"
        );
        db.close().await;
    }

    /// The same on PostgreSQL, over an outbox of many deliveries (most delivered), analyzed.
    #[tokio::test]
    async fn the_claim_reads_the_outbox_through_its_index_on_postgres() {
        let Some(url) = crate::store::postgres_url_for_tests("check the claim's plan") else {
            return;
        };
        let plan = super::super::query_plans::in_fresh_pg_schema(&url, |schema_url| async move {
            let db = Database::connect(&schema_url, 1).await.expect("database");
            for sql in [
                "INSERT INTO applications (id, name, api_key_digest, created_at) \
                 VALUES ('app', 'A', 'd', 0)",
                "INSERT INTO webhook_endpoints (id, application_id, url, secret, event_types, \
                 created_at) VALUES ('whe_1', 'app', 'https://hooks.example.com/x', 's', '', 0)",
                "INSERT INTO webhook_deliveries (id, endpoint_id, application_id, event_id, \
                 event_type, payload, state, attempts, next_attempt_at, created_at) \
                 SELECT 'whd_' || n, 'whe_1', 'app', 'evt_' || n, 'pairing.completed', '{}', \
                 CASE WHEN n % 100 = 0 THEN 'pending' ELSE 'delivered' END, 1, n, n \
                 FROM generate_series(1, 20000) AS n",
                "ANALYZE webhook_deliveries",
            ] {
                sqlx::query(sql).execute(db.pool()).await.expect(sql);
            }
            let explain = format!("EXPLAIN {}", claim_statement(Engine::Postgres));
            let rows = sqlx::query(&explain)
                .bind("w")
                .bind(60_000i64)
                .bind(30_000i64)
                .bind(32i64)
                .bind(",other,")
                .bind(4i64)
                .fetch_all(db.pool())
                .await
                .expect("plan");
            db.close().await;
            rows.iter()
                .map(|row| row.try_get::<String, _>(0).expect("plan line"))
                .collect::<Vec<String>>()
        })
        .await;
        eprintln!("{}", plan.join("\n"));
        assert!(
            plan.iter().all(|line| !line.contains("Seq Scan")),
            "{plan:#?}"
        );
        assert!(
            plan.iter()
                .any(|line| line.contains("webhook_deliveries_due")),
            "{plan:#?}"
        );
    }
}
