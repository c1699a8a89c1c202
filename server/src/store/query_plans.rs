//! The statements on the server's hot paths, in one place, and a check of each one's SQLite
//! query plan: none may scan a whole table. A statement added to a hot path belongs in
//! [`hot_statements`]; a full scan that shows up here needs an index (a migration on both
//! engines).
//!
//! The hot paths: the approval cycle (create an authentication, the device's pull, the signed
//! answer and its follow-ups, the status read), the CIBA backchannel request and token poll, and
//! the QR login. PostgreSQL's plans are not checked here: with a few rows in a fresh database its
//! planner rightly prefers sequential scans, and `enable_seqscan = off` only makes them costly,
//! so a plan test there would say more about the statistics than about the indexes
//! (see docs/benchmarks.md). The indexes are the same on both engines (same migrations).

use sqlx::Row;

use super::{
    Database, applications, authentications, ciba, enrollments, flows, nonces, policies,
    qr_sessions, users, webhooks,
};

/// Every hot statement, named by what runs it. Statements that select a long column list are
/// planned with `SELECT *` and the same `FROM … WHERE …` tail their function uses.
pub(crate) fn hot_statements() -> Vec<(String, String)> {
    let named: Vec<(&str, String)> = vec![
        (
            "API key look-up (every customer call)",
            applications::BY_API_KEY.into(),
        ),
        (
            "application settings of a new request",
            applications::REQUEST_SETTINGS.into(),
        ),
        ("user look-up with its device count", users::GET.into()),
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
            "authentication by id",
            format!("SELECT * {}", authentications::BY_ID),
        ),
        (
            "requests pending for a device (every pull)",
            authentications::PENDING_FOR.into(),
        ),
        (
            "pending requests of the application (quota)",
            authentications::PENDING_FOR_APPLICATION.into(),
        ),
        (
            "push-bombing count",
            authentications::USER_FACING_COUNTS.into(),
        ),
        ("recording an answer", authentications::END_WITH.into()),
        (
            "flow waiting on an authentication",
            format!("SELECT * {}", flows::BY_AUTHENTICATION),
        ),
        ("the application's policy", policies::CURRENT.into()),
        (
            "webhook endpoints of an audited event",
            webhooks::ENDPOINTS_OF.into(),
        ),
        ("CIBA client", format!("SELECT * {}", ciba::CLIENT_BY_ID)),
        ("CIBA request", format!("SELECT * {}", ciba::REQUEST_BY_ID)),
        ("CIBA token poll", ciba::RECORD_POLL.into()),
        ("CIBA tokens issued", ciba::MARK_TOKENS_ISSUED.into()),
        (
            "open QR sessions of the application (quota)",
            qr_sessions::OPEN_FOR_APPLICATION.into(),
        ),
        ("QR claim", qr_sessions::CLAIM.into()),
        ("QR answer", qr_sessions::RECORD_ANSWER.into()),
        ("QR follow-up settled", qr_sessions::SETTLE_FOLLOW_UP.into()),
    ];
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
async fn sqlite_plan(db: &Database, sql: &str) -> Vec<String> {
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

/// Whether a plan line reads a whole table (or a whole index, in order): `SCAN t`, `SCAN t
/// USING [COVERING] INDEX i`. A constant row or a subquery's result is not a table.
fn is_full_scan(detail: &str) -> bool {
    detail.starts_with("SCAN ") && !detail.starts_with("SCAN CONSTANT ROW")
}

#[tokio::test]
async fn no_hot_statement_scans_a_whole_table() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let url = format!("sqlite://{}", dir.path().join("plans.db").display());
    let db = Database::connect(&url, 2).await.expect("database");
    let mut scans = Vec::new();
    for (name, sql) in hot_statements() {
        let plan = sqlite_plan(&db, &sql).await;
        if plan.iter().any(|d| is_full_scan(d)) {
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
    assert!(plan.iter().any(|d| is_full_scan(d)), "{plan:?}");
    let plan = sqlite_plan(&db, &format!("SELECT * {}", authentications::BY_ID)).await;
    assert!(!plan.iter().any(|d| is_full_scan(d)), "{plan:?}");
    db.close().await;
}

#[test]
fn placeholders_are_counted_by_their_highest_number() {
    assert_eq!(placeholders("SELECT 1"), 0);
    assert_eq!(placeholders("WHERE a = $2 AND b = $1 AND c > $10"), 10);
    assert_eq!(hot_statements().len(), 29);
}
