//! The statements on the server's hot paths, in one place, and a check of each one's query
//! plan on both engines: none may scan a whole table. A statement added to a hot path belongs in
//! [`hot_statements`]; a full scan that shows up here needs an index (a migration on both
//! engines).
//!
//! The hot paths: the approval cycle (create an authentication, the device's pull, the signed
//! answer and its follow-ups, the status read), the CIBA backchannel request, token poll and
//! ping/push notification sweep, and the QR login; and a user's deletion, rare but one
//! transaction over every table (on SQLite it holds the only writer while it runs).
//!
//! SQLite's plans are checked on an empty database (its planner picks an index whenever one
//! fits). PostgreSQL's planner rightly prefers a sequential scan of a small table, so its check
//! (run when `DATABASE_URL` names a PostgreSQL database, in a schema of its own that it drops
//! afterwards) first fills every table the statements touch with [`PG_ROWS`] rows shaped like
//! production data (a few rows per user and device, times spread over weeks, most requests
//! ended), runs `ANALYZE`, then plans each statement with `EXPLAIN (FORMAT JSON) EXECUTE` on
//! representative values: the time now for every integer parameter and a value no row holds for
//! every text parameter, as a new request's id, digest or token is. A `Seq Scan` over a table of
//! more than [`PG_TINY_ROWS`] rows fails it, and so does a statement touching a table the fill
//! missed.

use sqlx::Row;

use super::{
    Database, applications, audit, authentications, bypass, ciba, enrollments, fido_credentials,
    flows, nonces, pairing_codes, policies, qr_sessions, throttle, users,
};

/// Every hot statement, named by what runs it. Statements that select a long column list are
/// planned with `SELECT *` and the same `FROM … WHERE …` tail their function uses.
pub(crate) fn hot_statements(engine: super::Engine) -> Vec<(String, String)> {
    let named: Vec<(&str, String)> = vec![
        (
            "API key look-up (every customer call)",
            applications::BY_API_KEY.into(),
        ),
        (
            "application settings of a new request",
            applications::REQUEST_SETTINGS.clone(),
        ),
        (
            "a new flow's passcode options, its API key checked",
            applications::OTP_POLICY_WITH_KEY.into(),
        ),
        (
            "a flow by id, its API key checked (every flow call)",
            flows::BY_ID_WITH_KEY.clone(),
        ),
        (
            "a QR session's status read, its API key checked",
            qr_sessions::BY_ID_WITH_KEY.clone(),
        ),
        (
            "a QR session by id, noting its recorded decisions (an answer's first read)",
            qr_sessions::BY_ID_NOTED.clone(),
        ),
        (
            "the settings of a QR session's application (an answer's first read)",
            applications::REQUEST_SETTINGS_OF_QR_SESSION.clone(),
        ),
        (
            "the language of an enrollment's user (an approved QR answer's first read)",
            users::LOCALE_OF_ENROLLMENT.into(),
        ),
        (
            "a user's unused recovery codes, counted (a push flow's first step)",
            bypass::UNUSED_CODE_COUNT.into(),
        ),
        ("user look-up with its device count", users::GET.into()),
        (
            "an authentication with the device it asks (a device's answer's first read)",
            authentications::WITH_DEVICE_BY_ID.clone(),
        ),
        (
            "an enrollment with the requests pending for it (a device's pull's first read)",
            authentications::PENDING_WITH_ENROLLMENT.clone(),
        ),
        (
            "a new request's user with its bypass and devices",
            users::GET_WITH_DEVICES_FOR_REQUEST.clone(),
        ),
        (
            "enrollment by id (every device call)",
            format!("SELECT * {}", enrollments::BY_ID),
        ),
        (
            "the user's devices",
            format!("SELECT * {}", enrollments::FOR_USER),
        ),
        ("last seen of a device", enrollments::TOUCH.into()),
        (
            "device verification waiting on an answer",
            enrollments::VERIFICATION_WAITING.into(),
        ),
        ("nonce of a device call", nonces::RECORD.into()),
        ("nonce housekeeping", nonces::FORGET_EXPIRED.into()),
        (
            "FIDO ceremony housekeeping (every new ceremony)",
            fido_credentials::FORGET_EXPIRED_CEREMONIES.into(),
        ),
        (
            "pairing code housekeeping (one new code in 64)",
            pairing_codes::PURGE_EXPIRED.into(),
        ),
        (
            "pairing throttle housekeeping (one attempt in 32)",
            throttle::FORGET_OLD_WINDOWS.into(),
        ),
        (
            "a user's deletion: a device's call nonces",
            nonces::FORGET_ENROLLMENT.into(),
        ),
        (
            "authentication by id",
            format!("SELECT * {}", authentications::BY_ID),
        ),
        (
            "requests pending for a device (every pull)",
            authentications::PENDING_FOR.into(),
        ),
        (
            "admission counts: quota, push bombing, limit_push",
            authentications::ADMISSION_COUNTS.clone(),
        ),
        (
            "a new request stored under every limit (quota, push bombing, limit_push)",
            authentications::admitted_insert_statement(15),
        ),
        (
            "recording an answer, with the follow-ups waiting on it",
            authentications::END_WITH_RETURNING.clone(),
        ),
        (
            "flow waiting on an authentication",
            format!("SELECT * {}", flows::BY_AUTHENTICATION),
        ),
        ("the application's policy", policies::CURRENT.into()),
        (
            "policy: push counts in two windows",
            policies::push_counts_statement(2),
        ),
        (
            "policy: whether two named groups have members",
            policies::known_groups_statement(2),
        ),
        (
            "policy: recent approvals by address",
            policies::RECENT_SUCCESSES.to_string(),
        ),
        (
            "policy: every fact in one statement (two groups, approvals, two windows, location)",
            policies::facts_statement(2, true, 2, true),
        ),
        (
            "policy: the 50-rule policy's facts (approvals, one window)",
            policies::facts_statement(0, true, 1, false),
        ),
        (
            "policy: previous location",
            policies::PREVIOUS_LOCATION.into(),
        ),
        (
            "audit record and its webhook deliveries, to the endpoints that want it",
            match engine {
                super::Engine::Sqlite => audit::ENQUEUE.clone(),
                super::Engine::Postgres => audit::APPEND_AND_ENQUEUE.clone(),
            },
        ),
        (
            "expiry sweep: requests expired unreported (every second)",
            audit::claim_unreported_expired_statement(engine, false),
        ),
        (
            "webhook deliveries claimed (a share of each application, every wake-up)",
            super::webhooks::claim_statement(engine),
        ),
        ("CIBA client", format!("SELECT * {}", ciba::CLIENT_BY_ID)),
        ("CIBA request", format!("SELECT * {}", ciba::REQUEST_BY_ID)),
        ("CIBA token poll", ciba::RECORD_POLL.into()),
        ("CIBA tokens issued", ciba::MARK_TOKENS_ISSUED.into()),
        (
            "CIBA notification made due by its request's answer",
            ciba::NOTIFICATION_DUE_FOR.into(),
        ),
        (
            "CIBA notifications of finished requests made due (every sweep)",
            ciba::PROMOTE_FINISHED.into(),
        ),
        (
            "CIBA notifications due (every sweep)",
            format!("SELECT * {}", ciba::DUE_NOTIFICATIONS),
        ),
        ("CIBA notification claimed", ciba::CLAIM_NOTIFICATION.into()),
        ("CIBA notification lease renewed", ciba::RENEW_LEASE.clone()),
        (
            "CIBA notification put back",
            ciba::RETRY_NOTIFICATION.clone(),
        ),
        (
            "CIBA notification finished",
            ciba::FINISH_NOTIFICATION.clone(),
        ),
        (
            "open QR sessions of the application (quota)",
            qr_sessions::OPEN_FOR_APPLICATION.into(),
        ),
        ("QR claim", qr_sessions::CLAIM.into()),
        ("QR answer", qr_sessions::RECORD_ANSWER.into()),
        ("QR follow-up settled", qr_sessions::SETTLE_FOLLOW_UP.into()),
    ];
    // A user's deletion is one transaction (SQLite's only writer): each of its statements
    // reads the user's rows only.
    let deletion = users::DELETION
        .iter()
        .enumerate()
        .map(|(n, (table, sql))| (format!("a user's deletion, {n}: {table}"), sql.clone()));
    let lookups: Vec<(String, String)> = qr_sessions::LOOKUP_COLUMNS
        .iter()
        .map(|column| {
            (
                format!("QR session by {column}"),
                qr_sessions::lookup_statement(column),
            )
        })
        .collect();
    named
        .into_iter()
        .map(|(name, sql)| (name.to_string(), sql))
        .chain(lookups)
        .chain(deletion)
        .collect()
}

/// The highest `$N` placeholder in `sql` (how many values it binds).
fn placeholders(sql: &str) -> usize {
    sql.split('$')
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<usize>().ok()
        })
        .max()
        .unwrap_or(0)
}

/// The lines of SQLite's plan for `sql`.
pub(crate) async fn sqlite_plan(db: &Database, sql: &str) -> Vec<String> {
    let explain = format!("EXPLAIN QUERY PLAN {sql}");
    let mut query = sqlx::query(&explain);
    for _ in 0..placeholders(sql) {
        query = query.bind(None::<String>);
    }
    let rows = query
        .fetch_all(db.pool())
        .await
        .unwrap_or_else(|e| panic!("cannot plan {sql}: {e}"));
    rows.iter()
        .map(|row| row.try_get::<String, _>("detail").expect("detail"))
        .collect()
}

/// The lines of `plan` that read a whole table (or a whole index, in order): `SCAN t`, `SCAN t
/// USING [COVERING] INDEX i`. A constant row is not a table, nor is a subquery's result (the
/// plan names it in a `CO-ROUTINE name` or `MATERIALIZE name` line before scanning it).
fn full_scans(plan: &[String]) -> Vec<&str> {
    let subqueries: Vec<&str> = plan
        .iter()
        .filter_map(|d| {
            d.strip_prefix("CO-ROUTINE ")
                .or_else(|| d.strip_prefix("MATERIALIZE "))
        })
        .collect();
    plan.iter()
        .map(String::as_str)
        .filter(|d| {
            // A subquery's rows scanned as the right side of a `LEFT JOIN` are still its own.
            d.strip_prefix("SCAN ")
                .map(|scanned| scanned.trim_end_matches(" LEFT-JOIN"))
                .is_some_and(|scanned| scanned != "CONSTANT ROW" && !subqueries.contains(&scanned))
        })
        .collect()
}

#[tokio::test]
async fn no_hot_statement_scans_a_whole_table() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let url = format!("sqlite://{}", dir.path().join("plans.db").display());
    let db = Database::connect(&url, 2).await.expect("database");
    let mut scans = Vec::new();
    for (name, sql) in hot_statements(super::Engine::Sqlite) {
        let plan = sqlite_plan(&db, &sql).await;
        if !full_scans(&plan).is_empty() {
            scans.push(format!("{name}: {plan:?}\n    {sql}"));
        }
    }
    db.close().await;
    assert!(
        scans.is_empty(),
        "hot statements that scan a whole table:\n{}",
        scans.join("\n")
    );
}

#[tokio::test]
async fn the_check_sees_a_full_scan() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let url = format!("sqlite://{}", dir.path().join("plans.db").display());
    let db = Database::connect(&url, 2).await.expect("database");
    // `details` has no index: the check must call this a full scan.
    let plan = sqlite_plan(&db, "SELECT * FROM audit_log WHERE details = $1").await;
    assert!(!full_scans(&plan).is_empty(), "{plan:?}");
    let plan = sqlite_plan(&db, &format!("SELECT * {}", authentications::BY_ID)).await;
    assert!(full_scans(&plan).is_empty(), "{plan:?}");
    // A subquery's rows are not a table; a table scanned inside one is.
    let plan = sqlite_plan(
        &db,
        "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM audit_log WHERE seq > $1 LIMIT 3) counted)",
    )
    .await;
    assert!(full_scans(&plan).is_empty(), "{plan:?}");
    let plan = sqlite_plan(
        &db,
        "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM audit_log WHERE details = $1 LIMIT 3) counted)",
    )
    .await;
    assert_eq!(full_scans(&plan), ["SCAN audit_log"], "{plan:?}");
    db.close().await;
}

/// Checks that SQLite's definition of index `index` contains `condition`.
async fn assert_sqlite_index_condition(db: &Database, index: &str, condition: &str) {
    let definition: String =
        sqlx::query_scalar("SELECT sql FROM sqlite_schema WHERE type = 'index' AND name = $1")
            .bind(index)
            .fetch_one(db.pool())
            .await
            .expect("the index");
    assert!(definition.contains(condition), "{definition}");
}

/// A policy's look-backs at the user's history (docs/policy.md, "What a decision reads") may
/// step over every request in their window: they must find what they read in the index, never
/// in the request's row (thousands of row reads a decision for a user approved thousands of
/// times within the hour).
#[tokio::test]
async fn policy_look_backs_read_their_index_alone() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let url = format!("sqlite://{}", dir.path().join("plans.db").display());
    let db = Database::connect(&url, 2).await.expect("database");
    // The look-back's index holds only approvals with an address (migration 0055).
    assert_sqlite_index_condition(
        &db,
        "authentications_approvals_by_user",
        "WHERE state = 'approved' AND accessing_ip IS NOT NULL",
    )
    .await;
    for (sql, index) in [
        (
            policies::RECENT_SUCCESSES.to_string(),
            "USING COVERING INDEX authentications_approvals_by_user",
        ),
        (
            policies::push_counts_statement(2),
            "SEARCH t USING PRIMARY KEY",
        ),
    ] {
        let plan = sqlite_plan(&db, &sql).await;
        assert!(
            plan.iter().any(|line| line.contains(index)),
            "{sql}\n{plan:?}"
        );
    }
    db.close().await;
}

/// The CIBA notification sweep finds the waiting and the due requests through
/// `ciba_requests_notify`, which holds only those (migration 0047): SQLite uses a partial index
/// only for a WHERE that names its terms, so a statement that stopped naming its state as a
/// literal would read the whole table. PostgreSQL's side is
/// [`ciba_notifications_are_read_through_their_partial_index_on_postgres`].
#[tokio::test]
async fn ciba_notifications_are_read_through_their_partial_index() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let url = format!("sqlite://{}", dir.path().join("plans.db").display());
    let db = Database::connect(&url, 2).await.expect("database");
    assert_sqlite_index_condition(
        &db,
        "ciba_requests_notify",
        "WHERE notify_state = 'waiting' OR notify_state = 'due'",
    )
    .await;
    for (sql, searched) in [
        (
            ciba::PROMOTE_FINISHED.to_string(),
            "SEARCH ciba_requests USING INDEX ciba_requests_notify (notify_state=?)",
        ),
        (
            format!("SELECT * {}", ciba::DUE_NOTIFICATIONS),
            "SEARCH ciba_requests USING INDEX ciba_requests_notify \
             (notify_state=? AND notify_due_at_ms<?)",
        ),
    ] {
        let plan = sqlite_plan(&db, &sql).await;
        assert!(plan.iter().any(|line| line == searched), "{sql}\n{plan:?}");
        // Read in the index's order: no sort.
        assert!(
            !plan.iter().any(|line| line.contains("TEMP B-TREE")),
            "{sql}\n{plan:?}"
        );
    }
    // A state the index does not hold, or one not named as a literal, cannot use it.
    for sql in [
        "SELECT * FROM ciba_requests WHERE notify_state = 'none' AND notify_due_at_ms <= $1",
        "SELECT * FROM ciba_requests WHERE notify_state = $2 AND notify_due_at_ms <= $1",
    ] {
        let plan = sqlite_plan(&db, sql).await;
        assert_eq!(full_scans(&plan), ["SCAN ciba_requests"], "{sql}\n{plan:?}");
    }
    db.close().await;
}

#[test]
fn placeholders_are_counted_by_their_highest_number() {
    assert_eq!(placeholders("SELECT 1"), 0);
    assert_eq!(placeholders("WHERE a = $2 AND b = $1 AND c > $10"), 10);
    assert_eq!(
        hot_statements(super::Engine::Sqlite).len(),
        58 + users::DELETION.len()
    );
}

#[test]
fn parameters_in_arithmetic_are_declared_as_integers() {
    assert_eq!(
        pg_declared_types("UPDATE t SET a = $1 WHERE b = $2 AND a <= $1 - $3"),
        ["bigint", "unknown", "bigint"]
    );
    assert!(pg_declared_types("SELECT 1").is_empty());
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL.

/// Rows the PostgreSQL check puts in every table a hot statement touches.
const PG_ROWS: i64 = 5_000;
/// A table with fewer rows than this may be read whole (its few pages cost less than an index).
const PG_TINY_ROWS: f64 = 1_000.0;
/// "Now" for the PostgreSQL check's data and parameters (Unix seconds).
const PG_NOW: i64 = 1_800_000_000;

/// One column of a table, as `information_schema` describes it.
struct PgColumn {
    name: String,
    data_type: String,
    /// Part of the primary key or of a unique constraint.
    unique: bool,
    /// The referenced table and column, for a foreign key.
    references: Option<(String, String)>,
}

async fn pg_columns(conn: &mut sqlx::PgConnection, table: &str) -> Vec<PgColumn> {
    let rows = sqlx::query(
        "SELECT c.column_name::text, c.data_type::text, \
           EXISTS (SELECT 1 FROM information_schema.table_constraints tc \
             JOIN information_schema.key_column_usage k ON k.constraint_name = tc.constraint_name \
               AND k.table_schema = tc.table_schema \
             WHERE tc.table_schema = c.table_schema AND tc.table_name = c.table_name \
               AND k.column_name = c.column_name \
               AND tc.constraint_type IN ('PRIMARY KEY', 'UNIQUE')) AS is_unique, \
           (SELECT u.table_name::text FROM information_schema.table_constraints tc \
             JOIN information_schema.key_column_usage k ON k.constraint_name = tc.constraint_name \
               AND k.table_schema = tc.table_schema \
             JOIN information_schema.constraint_column_usage u \
               ON u.constraint_name = tc.constraint_name AND u.table_schema = tc.table_schema \
             WHERE tc.table_schema = c.table_schema AND tc.table_name = c.table_name \
               AND k.column_name = c.column_name AND tc.constraint_type = 'FOREIGN KEY' \
             LIMIT 1) AS ref_table, \
           (SELECT u.column_name::text FROM information_schema.table_constraints tc \
             JOIN information_schema.key_column_usage k ON k.constraint_name = tc.constraint_name \
               AND k.table_schema = tc.table_schema \
             JOIN information_schema.constraint_column_usage u \
               ON u.constraint_name = tc.constraint_name AND u.table_schema = tc.table_schema \
             WHERE tc.table_schema = c.table_schema AND tc.table_name = c.table_name \
               AND k.column_name = c.column_name AND tc.constraint_type = 'FOREIGN KEY' \
             LIMIT 1) AS ref_column \
         FROM information_schema.columns c \
         WHERE c.table_schema = current_schema() AND c.table_name = $1 \
         ORDER BY c.ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_else(|e| panic!("columns of {table}: {e}"));
    rows.iter()
        .map(|row| {
            let ref_table: Option<String> = row.get(3);
            let ref_column: Option<String> = row.get(4);
            PgColumn {
                name: row.get(0),
                data_type: row.get(1),
                unique: row.get(2),
                references: ref_table.zip(ref_column),
            }
        })
        .collect()
}

/// The value of `column` in row `g` (a SQL expression over `g`): unique where the schema wants
/// it, a few rows per user, device or other id otherwise, the first rows of the referenced table
/// for a foreign key, times spread back over about a month from [`PG_NOW`] (expiries a few
/// minutes after), most requests in an ended state.
fn pg_fill_expression(table: &str, column: &PgColumn) -> String {
    let name = column.name.as_str();
    if let Some((_, ref_column)) = &column.references {
        return format!("'{ref_column}-' || (1 + g % 20)");
    }
    match column.data_type.as_str() {
        "bigint" | "integer" | "smallint" => {
            let expiry = name.contains("expires");
            let housekept = matches!(
                (table, name),
                ("device_nonces" | "pairing_codes", "expires_at")
                    | ("pairing_failures", "window_start")
            );
            if housekept {
                // Housekeeping runs all the time: the rows on the table are fresh, and a
                // cutoff of now finds none of them.
                format!("{PG_NOW} + 1 + g % 300")
            } else if column.unique {
                "g".into()
            } else if name.ends_with("_at_ms") {
                format!(
                    "({PG_NOW} - g * 500 + {}) * 1000",
                    if expiry { 300 } else { 0 }
                )
            } else if name.ends_with("_at") {
                format!("{PG_NOW} - g * 500 + {}", if expiry { 300 } else { 0 })
            } else {
                "g % 2".into()
            }
        }
        "double precision" | "real" | "numeric" => "g * 0.5".into(),
        "bytea" => "decode(md5(g::text), 'hex')".into(),
        "boolean" => "g % 2 = 0".into(),
        _ if column.unique => format!("'{name}-' || g"),
        // A CIBA request's notification: most are poll mode or delivered, few in flight.
        _ if name == "notify_state" => "CASE g % 100 WHEN 0 THEN 'waiting' WHEN 1 THEN 'due' \
             ELSE CASE WHEN g % 2 = 0 THEN 'none' ELSE 'done' END END"
            .into(),
        _ if name == "state" || name == "status" => {
            "CASE WHEN g % 10 = 0 THEN 'pending' ELSE 'approved' END".into()
        }
        _ if name.ends_with("_id") => format!("'{name}-' || (1 + g % 1000)"),
        _ => format!("'{name}-' || g"),
    }
}

/// Fills `tables` (and the tables their foreign keys reference, first) with [`PG_ROWS`] rows.
async fn pg_fill(conn: &mut sqlx::PgConnection, tables: &std::collections::BTreeSet<String>) {
    let mut wanted: Vec<String> = tables.iter().cloned().collect();
    let mut columns = std::collections::BTreeMap::new();
    while let Some(table) = wanted.pop() {
        if columns.contains_key(&table) {
            continue;
        }
        let table_columns = pg_columns(conn, &table).await;
        for column in &table_columns {
            if let Some((parent, _)) = &column.references {
                wanted.push(parent.clone());
            }
        }
        columns.insert(table, table_columns);
    }
    let mut filled = std::collections::BTreeSet::new();
    while filled.len() < columns.len() {
        let ready: Vec<String> = columns
            .iter()
            .filter(|(table, _)| !filled.contains(*table))
            .filter(|(table, cols)| {
                cols.iter().all(|c| match &c.references {
                    Some((parent, _)) => parent == *table || filled.contains(parent),
                    None => true,
                })
            })
            .map(|(table, _)| table.clone())
            .collect();
        assert!(
            !ready.is_empty(),
            "foreign keys in a cycle: {columns:?}",
            columns = columns.keys()
        );
        for table in ready {
            let cols = &columns[&table];
            let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
            let values: Vec<String> = cols.iter().map(|c| pg_fill_expression(&table, c)).collect();
            let insert = format!(
                "INSERT INTO {table} ({}) SELECT {} FROM generate_series(1::bigint, {PG_ROWS}) AS g",
                names.join(", "),
                values.join(", ")
            );
            sqlx::query(&insert)
                .execute(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("filling {table}: {e}\n    {insert}"));
            filled.insert(table);
        }
    }
    // This schema's tables only: a database-wide `ANALYZE` also visits the schemas of tests
    // running beside this one, and fails when one of them drops its schema meanwhile
    // ("relation with OID … does not exist").
    let own: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = current_schema()",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("the schema's tables");
    sqlx::query(&format!("ANALYZE {}", own.join(", ")))
        .execute(&mut *conn)
        .await
        .expect("analyze");
}

/// A representative literal for a parameter of type `parameter_type`.
fn pg_parameter_value(parameter_type: &str) -> String {
    match parameter_type {
        "bigint" | "integer" | "smallint" | "numeric" | "double precision" | "real" => {
            PG_NOW.to_string()
        }
        "boolean" => "false".into(),
        "bytea" => "'\\x00'".into(),
        // text, and types the planner could not infer: a value no row holds.
        _ => "'absent-value'".into(),
    }
}

/// The parameter types to declare when preparing `sql`: `bigint` for a parameter in
/// arithmetic (`$1 - $3`, which PostgreSQL cannot type from context; the server binds an `i64`
/// there), `unknown` (inferred from context) for the others. Without a parameter, nothing.
fn pg_declared_types(sql: &str) -> Vec<&'static str> {
    let tokens: Vec<&str> = sql.split_whitespace().collect();
    (1..=placeholders(sql))
        .map(|n| {
            let name = format!("${n}");
            let in_arithmetic = tokens.iter().enumerate().any(|(i, token)| {
                *token == name
                    && [i.checked_sub(1), Some(i + 1)]
                        .into_iter()
                        .flatten()
                        .filter_map(|j| tokens.get(j))
                        .any(|next| ["+", "-", "*", "/"].contains(next))
            });
            if in_arithmetic { "bigint" } else { "unknown" }
        })
        .collect()
}

/// PostgreSQL's plan of `sql` (as JSON), planned with representative values.
async fn pg_plan(conn: &mut sqlx::PgConnection, sql: &str) -> serde_json::Value {
    let types = pg_declared_types(sql);
    let declared = if types.is_empty() {
        String::new()
    } else {
        format!("({})", types.join(", "))
    };
    sqlx::query(&format!("PREPARE hot_statement {declared} AS {sql}"))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("cannot prepare {sql}: {e}"));
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT t::text FROM pg_prepared_statements, unnest(parameter_types) AS t \
         WHERE name = 'hot_statement'",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("parameter types");
    let values: Vec<String> = types.iter().map(|t| pg_parameter_value(t)).collect();
    let execute = if values.is_empty() {
        "EXECUTE hot_statement".to_string()
    } else {
        format!("EXECUTE hot_statement({})", values.join(", "))
    };
    let row = sqlx::query(&format!("EXPLAIN (FORMAT JSON) {execute}"))
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("cannot plan {sql}: {e}"));
    // `json` arrives as its UTF-8 text; sqlx is built without its JSON types.
    let text: String = row.try_get_unchecked(0).expect("plan text");
    sqlx::query("DEALLOCATE hot_statement")
        .execute(&mut *conn)
        .await
        .expect("deallocate");
    serde_json::from_str(&text).expect("plan JSON")
}

/// Calls `visit` with every node of a plan (the JSON object of each, its sub-plans after it).
fn pg_plan_walk(
    plan: &serde_json::Value,
    visit: &mut impl FnMut(&serde_json::Map<String, serde_json::Value>),
) {
    match plan {
        serde_json::Value::Array(items) => items.iter().for_each(|p| pg_plan_walk(p, visit)),
        serde_json::Value::Object(fields) => {
            if fields.contains_key("Node Type") {
                visit(fields);
            }
            for key in ["Plan", "Plans"] {
                if let Some(inner) = fields.get(key) {
                    pg_plan_walk(inner, visit);
                }
            }
        }
        _ => {}
    }
}

/// The text of `field` in a plan node, if it has one.
fn pg_plan_text(node: &serde_json::Map<String, serde_json::Value>, field: &str) -> Option<String> {
    node.get(field).and_then(|v| v.as_str()).map(str::to_string)
}

/// Every node of a plan: (node type, relation name).
fn pg_plan_nodes(plan: &serde_json::Value, nodes: &mut Vec<(String, Option<String>)>) {
    pg_plan_walk(plan, &mut |node| {
        if let Some(kind) = pg_plan_text(node, "Node Type") {
            nodes.push((kind, pg_plan_text(node, "Relation Name")));
        }
    });
}

/// The indexes a plan reads ("Index Name" of its nodes).
fn pg_plan_indexes(plan: &serde_json::Value, indexes: &mut Vec<String>) {
    pg_plan_walk(plan, &mut |node| {
        indexes.extend(pg_plan_text(node, "Index Name"))
    });
}

/// The rows PostgreSQL's statistics give each table of the current schema.
async fn pg_table_rows(conn: &mut sqlx::PgConnection) -> std::collections::BTreeMap<String, f64> {
    let rows = sqlx::query(
        "SELECT c.relname::text, c.reltuples::float8 FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind = 'r'",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("table sizes");
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// Fills (with [`pg_fill`]) every table `statements` touch, learnt by planning them once on the
/// empty schema.
async fn pg_fill_touched(conn: &mut sqlx::PgConnection, statements: &[(String, String)]) {
    let mut touched = std::collections::BTreeSet::new();
    for (_, sql) in statements {
        let mut nodes = Vec::new();
        pg_plan_nodes(&pg_plan(conn, sql).await, &mut nodes);
        touched.extend(nodes.into_iter().filter_map(|(_, relation)| relation));
    }
    pg_fill(conn, &touched).await;
}

/// What the PostgreSQL check finds: statements reading a large table whole, and tables a
/// statement touches that were not filled (their plans would prove nothing).
async fn pg_scans(conn: &mut sqlx::PgConnection, statements: &[(String, String)]) -> Vec<String> {
    pg_fill_touched(conn, statements).await;
    let rows = pg_table_rows(conn).await;
    let mut problems = Vec::new();
    for (statement, sql) in statements {
        for (kind, mode) in PG_PLAN_KINDS {
            sqlx::query(&format!("SET plan_cache_mode = {mode}"))
                .execute(&mut *conn)
                .await
                .expect("plan cache mode");
            let name = format!("{statement} ({kind} plan)");
            let mut nodes = Vec::new();
            let plan = pg_plan(conn, sql).await;
            pg_plan_nodes(&plan, &mut nodes);
            let summary: Vec<String> = nodes
                .iter()
                .filter_map(|(node, relation)| relation.as_ref().map(|r| format!("{node} on {r}")))
                .collect();
            println!("{name}: {}", summary.join(", "));
            for (node, relation) in nodes {
                let Some(relation) = relation else { continue };
                let size = rows.get(&relation).copied().unwrap_or(0.0);
                if size < PG_TINY_ROWS {
                    problems.push(format!(
                        "{name}: touches {relation}, which the check did not fill"
                    ));
                } else if node == "Seq Scan" {
                    problems.push(format!(
                        "{name}: Seq Scan on {relation} ({size} rows)\n    {sql}\n    {plan}"
                    ));
                }
            }
        }
    }
    problems
}

/// The plans the PostgreSQL check reads for each statement: the one made for its values (a
/// statement's first executions), and the generic one the server's sessions use
/// (`plan_cache_mode = force_generic_plan`, `store::plan_cache`).
const PG_PLAN_KINDS: [(&str, &str); 2] = [
    ("custom", "force_custom_plan"),
    ("generic", "force_generic_plan"),
];

/// Runs `check` with the URL of a fresh schema of the database at `url` (nothing migrated or
/// analyzed in it yet), and drops the schema afterwards, even when `check` panics (the panic
/// is raised again then).
pub(super) async fn in_fresh_pg_schema<F, Fut, T>(url: &str, check: F) -> T
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (schema_url, schema) = super::postgres_fresh_schema(url, "query_plans").await;
    let checked = tokio::spawn(check(schema_url)).await;
    super::postgres_drop_schema(url, &schema).await;
    match checked {
        Ok(result) => result,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Runs the PostgreSQL check on `statements` in a fresh, migrated schema of the `DATABASE_URL`
/// database ([`in_fresh_pg_schema`]). `None` without a PostgreSQL `DATABASE_URL` (the check is
/// skipped).
async fn pg_check(statements: Vec<(String, String)>) -> Option<Vec<String>> {
    in_migrated_pg_schema(|mut conn| async move {
        let problems = pg_scans(&mut conn, &statements).await;
        let _ = sqlx::Connection::close(conn).await;
        problems
    })
    .await
}

/// Runs `check` on a connection to a fresh schema of the `DATABASE_URL` database, migrated
/// ([`in_fresh_pg_schema`]); `None` without a PostgreSQL `DATABASE_URL` (the check is skipped).
async fn in_migrated_pg_schema<F, Fut, T>(check: F) -> Option<T>
where
    F: FnOnce(sqlx::PgConnection) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    use sqlx::Connection;
    let url = crate::store::postgres_url_for_tests("check PostgreSQL's plans")?;
    let checked = in_fresh_pg_schema(&url, |schema_url| async move {
        // Migrates the schema.
        let db = Database::connect(&schema_url, 1).await.expect("database");
        db.close().await;
        let conn = sqlx::PgConnection::connect(&schema_url)
            .await
            .expect("postgres");
        check(conn).await
    })
    .await;
    Some(checked)
}

#[tokio::test]
async fn no_hot_statement_scans_a_large_postgres_table() {
    let Some(problems) = pg_check(hot_statements(super::Engine::Postgres)).await else {
        return;
    };
    assert!(
        problems.is_empty(),
        "hot statements PostgreSQL would answer by reading a whole table:\n{}",
        problems.join("\n")
    );
}

#[tokio::test]
async fn the_postgres_check_sees_a_full_scan() {
    let statements = vec![
        // `details` has no index: a full scan.
        (
            "unindexed".to_string(),
            "SELECT * FROM audit_log WHERE details = $1".to_string(),
        ),
        (
            "by id".to_string(),
            format!("SELECT * {}", authentications::BY_ID),
        ),
    ];
    let Some(problems) = pg_check(statements).await else {
        return;
    };
    assert_eq!(problems.len(), 2, "{problems:#?}");
    for (problem, kind) in problems.iter().zip(["custom", "generic"]) {
        assert!(
            problem.starts_with(&format!("unindexed ({kind} plan): Seq Scan on audit_log")),
            "{problems:#?}"
        );
    }
}

/// PostgreSQL reads the waiting and the due CIBA notifications through `ciba_requests_notify`
/// (which holds only those) in a filled schema, where one request in a hundred waits and one is
/// due: a full scan of the table would be flagged by [`no_hot_statement_scans_a_large_postgres_table`],
/// this checks the index it reads.
#[tokio::test]
async fn ciba_notifications_are_read_through_their_partial_index_on_postgres() {
    pg_reads_through_partial_index(
        vec![
            ("promote".to_string(), ciba::PROMOTE_FINISHED.to_string()),
            (
                "due".to_string(),
                format!("SELECT * {}", ciba::DUE_NOTIFICATIONS),
            ),
        ],
        "ciba_requests_notify",
        "WHERE ((notify_state = 'waiting'::text) OR (notify_state = 'due'::text))",
    )
    .await;
}

/// PostgreSQL reads a policy's recent approvals through `authentications_approvals_by_user`,
/// which holds only approvals with an address (migration 0055), in a filled schema.
#[tokio::test]
async fn the_recent_approvals_are_read_through_their_partial_index_on_postgres() {
    pg_reads_through_partial_index(
        vec![(
            "recent approvals".to_string(),
            policies::RECENT_SUCCESSES.to_string(),
        )],
        "authentications_approvals_by_user",
        "WHERE ((state = 'approved'::text) AND (accessing_ip IS NOT NULL))",
    )
    .await;
}

/// In a migrated, filled PostgreSQL schema: checks that index `index`'s definition contains
/// `condition`, then plans `statements` and checks that each reads `index` and scans no table
/// whole. Nothing is checked without a PostgreSQL database to check on.
async fn pg_reads_through_partial_index(
    statements: Vec<(String, String)>,
    index: &'static str,
    condition: &'static str,
) {
    let Some(plans) = in_migrated_pg_schema(move |mut conn| async move {
        let definition: String = sqlx::query_scalar(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() \
             AND indexname = $1",
        )
        .bind(index)
        .fetch_one(&mut conn)
        .await
        .expect("the index");
        assert!(definition.contains(condition), "{definition}");
        pg_fill_touched(&mut conn, &statements).await;
        let mut plans = Vec::new();
        for (name, sql) in &statements {
            plans.push((name.clone(), pg_plan(&mut conn, sql).await));
        }
        let _ = sqlx::Connection::close(conn).await;
        plans
    })
    .await
    else {
        return;
    };
    for (name, plan) in plans {
        let mut indexes = Vec::new();
        pg_plan_indexes(&plan, &mut indexes);
        assert!(indexes.iter().any(|i| i == index), "{name}: {plan}");
        let mut nodes = Vec::new();
        pg_plan_nodes(&plan, &mut nodes);
        assert!(
            !nodes.iter().any(|(node, _)| node == "Seq Scan"),
            "{name}: {plan}"
        );
    }
}

/// The statements of a PL/pgSQL function's body that read tables (`SELECT … FROM …`, each
/// without its `INTO` target), with its `IN` parameters (`parameters`, in order) as
/// placeholders numbered by first use: what PostgreSQL plans for each of them when the function
/// runs, in a form [`pg_plan`] can plan. The function's inner statements are planned apart from
/// the statement that calls it, so the check of that statement does not see them.
fn plpgsql_selects(body: &str, parameters: &[String]) -> Vec<String> {
    body.split(';')
        .filter_map(|piece| piece.find("SELECT").map(|at| &piece[at..]))
        .filter(|statement| statement.contains(" FROM "))
        .map(|statement| {
            // Drop `INTO target`: the planner sees the query without it.
            let mut words = Vec::new();
            let mut tokens = statement.split_whitespace();
            while let Some(token) = tokens.next() {
                if token == "INTO" {
                    tokens.next();
                } else {
                    words.push(token);
                }
            }
            let statement = words.join(" ");
            // Each parameter, where it stands as a whole identifier, becomes `$N`.
            let mut numbered: Vec<&str> = Vec::new();
            let mut out = String::new();
            let mut word = String::new();
            for c in statement.chars().chain(std::iter::once(' ')) {
                if c.is_ascii_alphanumeric() || c == '_' {
                    word.push(c);
                    continue;
                }
                if let Some(parameter) = parameters.iter().find(|p| **p == word) {
                    let n = match numbered.iter().position(|p| *p == parameter.as_str()) {
                        Some(at) => at + 1,
                        None => {
                            numbered.push(parameter);
                            numbered.len()
                        }
                    };
                    out.push_str(&format!("${n}"));
                } else {
                    out.push_str(&word);
                }
                word.clear();
                out.push(c);
            }
            out.trim_end().to_string()
        })
        .collect()
}

/// The admission functions carry their own plan mode (migration
/// `0053_admission_plans_pinned.sql`): generic plans while they run, even in a session that
/// chose PostgreSQL's default or asked for custom plans (an operator's URL, a pooler that drops
/// the startup options), and the session's own mode everywhere else.
#[tokio::test]
async fn the_admission_functions_plan_generically_whatever_the_session_asks() {
    let Some((functions, after)) = in_migrated_pg_schema(|mut conn| async move {
        // Asked for custom plans, as an operator's URL may: the functions keep their own.
        sqlx::query("SET plan_cache_mode = force_custom_plan")
            .execute(&mut conn)
            .await
            .expect("plan cache mode");
        let rows = sqlx::query(
            "SELECT proname::text, array_to_string(proconfig, ',') FROM pg_proc \
             WHERE proname IN ('admission_verdict', 'qr_session_admitted') \
             AND pronamespace = current_schema()::regnamespace ORDER BY proname",
        )
        .fetch_all(&mut conn)
        .await
        .expect("the admission functions");
        // After a call, the session's own mode is back.
        let after: String = sqlx::query_scalar(
            "SELECT current_setting('plan_cache_mode') \
             FROM (SELECT qr_session_admitted('none', 0, 1)) called",
        )
        .fetch_one(&mut conn)
        .await
        .expect("a call, then the session's mode");
        let _ = sqlx::Connection::close(conn).await;
        let functions = rows
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect::<Vec<(String, Option<String>)>>();
        (functions, after)
    })
    .await
    else {
        return;
    };
    let pinned = Some("plan_cache_mode=force_generic_plan".to_string());
    assert_eq!(
        functions,
        [
            ("admission_verdict".to_string(), pinned.clone()),
            ("qr_session_admitted".to_string(), pinned),
        ]
    );
    assert_eq!(after, "force_custom_plan");
}

#[test]
fn a_function_s_selects_are_planned_without_their_targets_and_with_placeholders() {
    let body = "BEGIN\n IF limit_most IS NOT NULL THEN\n PERFORM pg_advisory_xact_lock(k);\n \
                SELECT COUNT(*) INTO counted FROM (SELECT 1 FROM t WHERE t.user_id = p_user \
                AND t.at > since LIMIT limit_most) c;\n END IF;\n done := counted < limit_most;\nEND";
    let parameters = ["k", "p_user", "since", "limit_most"].map(String::from);
    assert_eq!(
        plpgsql_selects(body, &parameters),
        ["SELECT COUNT(*) FROM (SELECT 1 FROM t WHERE t.user_id = $1 AND t.at > $2 LIMIT $3) c"]
    );
}

/// The admission's counts (`admission_verdict`, migration `0045_push_tallies.sql`) run inside
/// PL/pgSQL, planned apart from the statement that calls the function: read from the function
/// as the database holds it, none scans a large table in a filled schema (custom or generic
/// plan), and under the generic plan the user's counts read an index that starts with the
/// application and the user. A custom plan for a time after every stored expiry may pick the
/// requests' expiry index instead (the statistics then promise almost no unexpired request),
/// which walks every user's unexpired requests: so the function plans generically whatever
/// the session asks for ([`the_admission_functions_plan_generically_whatever_the_session_asks`]).
#[tokio::test]
async fn the_admission_s_counts_read_the_user_s_rows_by_index_on_postgres() {
    let Some((statements, plans)) = in_migrated_pg_schema(|mut conn| async move {
        let row = sqlx::query(
            "SELECT prosrc, array_to_string(proargnames, ','), array_to_string(proargmodes, ',') \
             FROM pg_proc WHERE proname = 'admission_verdict' \
             AND pronamespace = current_schema()::regnamespace",
        )
        .fetch_one(&mut conn)
        .await
        .expect("the admission's function");
        let (body, names, modes): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let parameters: Vec<String> = names
            .split(',')
            .zip(modes.split(','))
            .filter(|(_, mode)| *mode == "i")
            .map(|(name, _)| name.to_string())
            .collect();
        let statements: Vec<(String, String)> = plpgsql_selects(&body, &parameters)
            .into_iter()
            .enumerate()
            .map(|(n, sql)| (format!("admission_verdict's count {n}"), sql))
            .collect();
        let problems = pg_scans(&mut conn, &statements).await;
        assert!(problems.is_empty(), "{problems:#?}");
        sqlx::query("SET plan_cache_mode = force_generic_plan")
            .execute(&mut conn)
            .await
            .expect("plan cache mode");
        let mut plans = Vec::new();
        for (name, sql) in &statements {
            plans.push((format!("{name} (generic)"), pg_plan(&mut conn, sql).await));
        }
        let _ = sqlx::Connection::close(conn).await;
        (statements, plans)
    })
    .await
    else {
        return;
    };
    // The application's pending count, the user's pending and unapproved counts, the pushes.
    assert_eq!(statements.len(), 4, "{statements:#?}");
    for (name, plan) in plans {
        let mut nodes = Vec::new();
        pg_plan_nodes(&plan, &mut nodes);
        let mut indexes = Vec::new();
        pg_plan_indexes(&plan, &mut indexes);
        if nodes
            .iter()
            .any(|(_, relation)| relation.as_deref() == Some("authentications"))
        {
            assert!(
                indexes.iter().any(|index| {
                    [
                        "authentications_by_user",
                        "authentications_unapproved_by_user",
                    ]
                    .contains(&index.as_str())
                }),
                "{name}: {plan}"
            );
        }
        assert!(!indexes.is_empty(), "{name} reads no index: {plan}");
    }
}
