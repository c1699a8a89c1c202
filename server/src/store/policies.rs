//! Policies (every version kept), users' groups, and the record of each policy decision.

use std::collections::BTreeMap;

use sqlx::Row;
use tessera_protocol::ids::{ApplicationId, UserId};

use super::users::{self, UserLock};
use super::{Database, is_unique_violation};
use crate::store::StoreError;

/// One saved version of an application's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    /// The version (1, 2, ...).
    pub version: u32,
    /// The policy document (JSON).
    pub document: String,
    /// When it was saved.
    pub created_at: i64,
}

fn to_policy(row: &sqlx::any::AnyRow) -> Result<StoredPolicy, StoreError> {
    let version: i64 = row.try_get("version")?;
    Ok(StoredPolicy {
        version: u32::try_from(version).map_err(|_| StoreError::Corrupted("policy version"))?,
        document: row.try_get("document")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Saves `document` as the application's next version (one more than the latest). Saves of one
/// application are serialised (its row is locked on PostgreSQL; SQLite has one writer), so two
/// saves at once take two numbers; a unique violation all the same is retried.
pub async fn save(
    db: &Database,
    app: &ApplicationId,
    document: &str,
    now: i64,
) -> Result<StoredPolicy, StoreError> {
    for _ in 0..5 {
        let mut tx = db.write().await?;
        super::applications::lock_for_quota(&mut *tx, db.engine(), app).await?;
        let latest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM policies WHERE application_id = $1")
                .bind(app.as_str())
                .fetch_one(&mut *tx)
                .await?;
        let version = latest.unwrap_or(0) + 1;
        let inserted = sqlx::query(
            "INSERT INTO policies (application_id, version, document, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(app.as_str())
        .bind(version)
        .bind(document)
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {
                tx.commit().await?;
                return Ok(StoredPolicy {
                    version: u32::try_from(version)
                        .map_err(|_| StoreError::Corrupted("policy version"))?,
                    document: document.to_string(),
                    created_at: now,
                });
            }
            Err(e) if is_unique_violation(&e) => {
                tx.rollback().await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::AlreadyExists("policy version"))
}

/// The statement of [`current`].
pub(crate) const CURRENT: &str = "SELECT version, document, created_at FROM policies WHERE application_id = $1 \
    ORDER BY version DESC LIMIT 1";

/// The latest version, if the application has a policy.
pub async fn current(
    db: &Database,
    app: &ApplicationId,
) -> Result<Option<StoredPolicy>, StoreError> {
    let row = sqlx::query(CURRENT)
        .bind(app.as_str())
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(to_policy).transpose()
}

/// One version.
pub async fn version(
    db: &Database,
    app: &ApplicationId,
    version: u32,
) -> Result<Option<StoredPolicy>, StoreError> {
    let row = sqlx::query(
        "SELECT version, document, created_at FROM policies WHERE application_id = $1 AND version = $2",
    )
    .bind(app.as_str())
    .bind(i64::from(version))
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(to_policy).transpose()
}

/// Every version, oldest first.
pub async fn versions(db: &Database, app: &ApplicationId) -> Result<Vec<StoredPolicy>, StoreError> {
    sqlx::query(
        "SELECT version, document, created_at FROM policies WHERE application_id = $1 ORDER BY version",
    )
    .bind(app.as_str())
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(to_policy)
    .collect()
}

/// Replaces the user's groups (in one transaction). False, and nothing written, when there is
/// no such user.
///
/// The write first takes its turn on the user ([`UserLock::TakesTurns`]): on PostgreSQL a
/// `DELETE` does not see the rows another transaction inserted and has not committed, so two
/// replaces at once would each keep the other's groups (their union, past the domain's cap) or
/// collide on the primary key. Taking turns, the second one deletes what the first wrote. The
/// lock also keeps a deletion of the user from running meanwhile (it then removes these groups
/// with the user), and a write after a deletion finds no user.
pub async fn set_groups(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    groups: &[String],
) -> Result<bool, StoreError> {
    let mut tx = db.write().await?;
    if !users::lock(&mut *tx, db.engine(), app, user, UserLock::TakesTurns).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query("DELETE FROM user_groups WHERE application_id = $1 AND user_id = $2")
        .bind(app.as_str())
        .bind(user.as_str())
        .execute(&mut *tx)
        .await?;
    for group in groups {
        sqlx::query(
            "INSERT INTO user_groups (application_id, user_id, group_name) VALUES ($1, $2, $3)",
        )
        .bind(app.as_str())
        .bind(user.as_str())
        .bind(group)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// The user's groups, sorted.
pub async fn groups(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT group_name FROM user_groups WHERE application_id = $1 AND user_id = $2 ORDER BY group_name",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .fetch_all(db.pool())
    .await?)
}

/// The statement of [`known_groups`] for `names` names: one column per name, 1 when some user
/// of the application (`$1`) is in the group (`$2`, `$3`, …), each over the
/// `user_groups_by_group` index.
pub(crate) fn known_groups_statement(names: usize) -> String {
    let columns: Vec<String> = (0..names)
        .map(|i| {
            format!(
                "CAST(CASE WHEN EXISTS (SELECT 1 FROM user_groups WHERE application_id = $1 \
                 AND group_name = ${}) THEN 1 ELSE 0 END AS BIGINT) AS g{i}",
                i + 2
            )
        })
        .collect();
    format!("SELECT {}", columns.join(", "))
}

/// Which of `names` some user of the application belongs to, in one statement.
pub async fn known_groups(
    db: &Database,
    app: &ApplicationId,
    names: &[String],
) -> Result<Vec<String>, StoreError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let sql = known_groups_statement(names.len());
    let mut query = sqlx::query(&sql).bind(app.as_str());
    for name in names {
        query = query.bind(name);
    }
    let row = query.fetch_one(db.pool()).await?;
    let mut known = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if row.try_get::<i64, _>(i)? > 0 {
            known.push(name.clone());
        }
    }
    Ok(known)
}

/// How many of the user's newest approvals in its window [`recent_successes`] reads at most.
///
/// The look-back stops there, as a push count stops at the number it is compared with: a user
/// approved thousands of times within the window (an automated account, a load test) cost a
/// read and a sort of every one of them on each decision, growing with the user's history (on
/// PostgreSQL about half a microsecond an approval). Only someone who approves on the user's
/// device can push an address out of the last 200 approvals.
pub const RECENT_APPROVALS_READ: u32 = 200;

/// The statement of [`recent_successes`]: the newest `$4` ([`RECENT_APPROVALS_READ`]) approvals
/// in the window, read backwards from the `authentications_approvals_by_user` index alone, then
/// each address once with its latest approval.
pub(crate) static RECENT_SUCCESSES: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| recent_successes_statement(3, 4));

/// [`RECENT_SUCCESSES`] with the window's start in `$since` and how many are read in `$most`.
fn recent_successes_statement(since: usize, most: usize) -> String {
    format!(
        "SELECT accessing_ip, MAX(answered_at) AS answered_at \
         FROM (SELECT accessing_ip, answered_at FROM authentications \
         WHERE application_id = $1 AND user_id = $2 AND state = 'approved' \
         AND answered_at >= ${since} AND accessing_ip IS NOT NULL \
         ORDER BY answered_at DESC LIMIT ${most}) newest \
         GROUP BY accessing_ip ORDER BY answered_at DESC LIMIT 100"
    )
}

/// The addresses the user was approved from since `since`, each with its latest approval,
/// newest first: (accessing IP, when). Read from the user's newest [`RECENT_APPROVALS_READ`]
/// approvals in that time, at most 100 addresses.
pub async fn recent_successes(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    since: i64,
) -> Result<Vec<(String, i64)>, StoreError> {
    sqlx::query(&RECENT_SUCCESSES)
        .bind(app.as_str())
        .bind(user.as_str())
        .bind(since)
        .bind(i64::from(RECENT_APPROVALS_READ))
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("accessing_ip")?,
                r.try_get::<Option<i64>, _>("answered_at")?.unwrap_or(0),
            ))
        })
        .collect()
}

/// The statement of [`push_counts`] for `windows` windows: one count per window over the
/// user's tallies of pushes per second (`push_tallies`), each stopping at its own number: `$3`,
/// `$5`.. each window's start, `$4`, `$6`.. how many it counts at most.
pub(crate) fn push_counts_statement(windows: usize) -> String {
    let counts: Vec<String> = (0..windows)
        .map(|i| {
            let (since, most) = (3 + 2 * i, 4 + 2 * i);
            format!(
                "{} AS w{i}",
                super::authentications::counted_pushes(1, 2, since, most)
            )
        })
        .collect();
    format!("SELECT {}", counts.join(", "))
}

/// How many of the user's push requests (approval, transaction, CIBA) that no policy denied
/// or approved outright were created in each of `windows` (seconds) before `now`, each counted
/// up to its number in `windows` (the largest a rule compares that count with): the database
/// sums each window's tallies (one row per second with pushes) and stops at that number of
/// rows, in one statement, so a user sent thousands of pushes costs no more than the rules'
/// numbers or the seconds of the window, whichever is fewer. A count below its number is exact;
/// one at its number means at least that many. The same requests a policy's `limit_push` counts
/// when the request is stored (`store::authentications::admission_counts`).
pub async fn push_counts(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    now: i64,
    windows: &BTreeMap<u32, u32>,
) -> Result<BTreeMap<u32, u64>, StoreError> {
    if windows.is_empty() {
        return Ok(BTreeMap::new());
    }
    let sql = push_counts_statement(windows.len());
    let mut query = sqlx::query(&sql).bind(app.as_str()).bind(user.as_str());
    for (window, most) in windows {
        query = query.bind(now - i64::from(*window)).bind(i64::from(*most));
    }
    let row = query.fetch_one(db.pool()).await?;
    windows
        .keys()
        .enumerate()
        .map(|(i, window)| {
            let count: i64 = row.try_get(i)?;
            Ok((*window, count.unsigned_abs()))
        })
        .collect()
}

/// Which of a user's facts [`facts`] reads, each only when asked for.
#[derive(Debug, Clone, Copy)]
pub struct FactsWanted<'a> {
    /// The groups the rules name: the user's groups and which of these have members are read
    /// when there is one.
    pub named_groups: &'a [String],
    /// The start of the recent approvals' window, if they are read.
    pub approvals_since: Option<i64>,
    /// The push-count windows (their length in seconds) with the number each counts up to.
    pub push_windows: &'a BTreeMap<u32, u32>,
    /// Whether the previous location is read.
    pub previous_location: bool,
}

/// What [`facts`] read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FactsRead {
    /// The user's groups, by name.
    pub groups: Vec<String>,
    /// Which of the named groups some user of the application is in, in the order named.
    pub known_groups: Vec<String>,
    /// As [`recent_successes`] reads them, newest first.
    pub recent_successes: Vec<(String, i64)>,
    /// As [`push_counts`] counts them.
    pub push_counts: BTreeMap<u32, u64>,
    /// As [`previous_location`] reads it.
    pub previous_location: Option<(f64, f64, i64)>,
}

/// The statement of [`facts`]: one row of the counts (`w0`, `w1`.. each window's, `g0`, `g1`..
/// whether each named group has members), joined with the rows of the lists asked for, each
/// tagged by its `kind` (`group`, `approval`, `location`). Its values: `$1` the application,
/// `$2` the user, then the approvals' start and how many are read (when asked for), each
/// window's start and number, the named groups. Each part is the statement [`groups`],
/// [`known_groups`], [`recent_successes`], [`push_counts`] and [`previous_location`] run alone,
/// over the same indexes.
pub(crate) fn facts_statement(
    named_groups: usize,
    approvals: bool,
    windows: usize,
    location: bool,
) -> String {
    let mut next = 3;
    let mut lists = Vec::new();
    if approvals {
        lists.push(format!(
            "SELECT 'approval' AS kind, accessing_ip AS name, answered_at AS at, \
             CAST(NULL AS DOUBLE PRECISION) AS latitude, \
             CAST(NULL AS DOUBLE PRECISION) AS longitude FROM ({}) approvals",
            recent_successes_statement(next, next + 1)
        ));
        next += 2;
    }
    let mut counts = Vec::new();
    for i in 0..windows {
        counts.push(format!(
            "{} AS w{i}",
            super::authentications::counted_pushes(1, 2, next, next + 1)
        ));
        next += 2;
    }
    for i in 0..named_groups {
        counts.push(format!(
            "CAST(CASE WHEN EXISTS (SELECT 1 FROM user_groups WHERE application_id = $1 \
             AND group_name = ${next}) THEN 1 ELSE 0 END AS BIGINT) AS g{i}"
        ));
        next += 1;
    }
    if named_groups > 0 {
        lists.push(
            "SELECT 'group' AS kind, group_name AS name, CAST(0 AS BIGINT) AS at, \
             CAST(NULL AS DOUBLE PRECISION) AS latitude, \
             CAST(NULL AS DOUBLE PRECISION) AS longitude \
             FROM user_groups WHERE application_id = $1 AND user_id = $2"
                .to_string(),
        );
    }
    if location {
        lists.push(format!(
            "SELECT 'location' AS kind, CAST(NULL AS TEXT) AS name, created_at AS at, \
             latitude, longitude FROM ({PREVIOUS_LOCATION}) location"
        ));
    }
    if counts.is_empty() {
        counts.push("CAST(0 AS BIGINT) AS none".to_string());
    }
    let counts = counts.join(", ");
    if lists.is_empty() {
        return format!("SELECT {counts}");
    }
    format!(
        "SELECT * FROM (SELECT {counts}) counts LEFT JOIN ({}) lists ON 1 = 1",
        lists.join(" UNION ALL ")
    )
}

/// The facts `wanted` names for `user` at `now`, in one statement (`facts_statement`): one
/// round trip on PostgreSQL and one statement on SQLite, where reading them apart took one for
/// each.
pub async fn facts(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    now: i64,
    wanted: &FactsWanted<'_>,
) -> Result<FactsRead, StoreError> {
    let sql = facts_statement(
        wanted.named_groups.len(),
        wanted.approvals_since.is_some(),
        wanted.push_windows.len(),
        wanted.previous_location,
    );
    let mut query = sqlx::query(&sql).bind(app.as_str()).bind(user.as_str());
    if let Some(since) = wanted.approvals_since {
        query = query.bind(since).bind(i64::from(RECENT_APPROVALS_READ));
    }
    for (window, most) in wanted.push_windows {
        query = query.bind(now - i64::from(*window)).bind(i64::from(*most));
    }
    for name in wanted.named_groups {
        query = query.bind(name);
    }
    let rows = query.fetch_all(db.pool()).await?;
    let mut read = FactsRead::default();
    let Some(first) = rows.first() else {
        return Ok(read);
    };
    for (i, window) in wanted.push_windows.keys().enumerate() {
        let count: i64 = first.try_get(format!("w{i}").as_str())?;
        read.push_counts.insert(*window, count.unsigned_abs());
    }
    for (i, name) in wanted.named_groups.iter().enumerate() {
        if first.try_get::<i64, _>(format!("g{i}").as_str())? > 0 {
            read.known_groups.push(name.clone());
        }
    }
    let listed = wanted.approvals_since.is_some()
        || !wanted.named_groups.is_empty()
        || wanted.previous_location;
    if !listed {
        return Ok(read);
    }
    for row in &rows {
        let kind: Option<String> = row.try_get("kind")?;
        match kind.as_deref() {
            Some("group") => read.groups.push(row.try_get("name")?),
            Some("approval") => read.recent_successes.push((
                row.try_get("name")?,
                row.try_get::<Option<i64>, _>("at")?.unwrap_or(0),
            )),
            Some("location") => {
                read.previous_location = Some((
                    row.try_get("latitude")?,
                    row.try_get("longitude")?,
                    row.try_get("at")?,
                ));
            }
            _ => {}
        }
    }
    // The lists' own orders do not survive their union: sorted here as each reads alone.
    read.groups.sort();
    read.recent_successes
        .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(read)
}

/// A decision to record.
#[derive(Debug, Clone)]
pub struct DecisionRecord<'a> {
    /// Its id.
    pub id: &'a str,
    /// The application.
    pub application_id: &'a ApplicationId,
    /// The user.
    pub user_id: &'a UserId,
    /// The request kind (`push`, `qr`, ...).
    pub request_kind: &'a str,
    /// What it decided for (an authentication, QR session, flow or CIBA request id).
    pub subject_id: Option<&'a str>,
    /// The policy version.
    pub policy_version: u32,
    /// The rule.
    pub rule: &'a str,
    /// The rule's action.
    pub action: &'a str,
    /// What it did.
    pub effect: &'a str,
    /// Why.
    pub reason: &'a str,
    /// The values looked at (JSON).
    pub inputs: &'a str,
    /// With `require`: the methods, most preferred first (comma-separated; empty otherwise).
    pub methods: &'a str,
    /// The accessing location, if known.
    pub location: Option<(f64, f64)>,
    /// When.
    pub created_at: i64,
}

/// Records a decision in the write `w`, deferred (sent with its next statement or its
/// commit): it commits or rolls back with what `w` stores beside it.
pub async fn record_decision_deferred(
    w: &mut super::Write<'_>,
    d: &DecisionRecord<'_>,
) -> Result<(), StoreError> {
    let sql = decision_sql(d);
    w.defer(bind_decision(sqlx::query(&sql), d)).await?;
    Ok(())
}

/// The columns of a decision's insert and how many values it binds, in the order
/// [`bind_decision`] binds them. A missing location is left out, not bound: PostgreSQL refuses
/// a NULL the `Any` driver binds untyped on a connection that prepared the statement for
/// floats (the column's default NULL is written instead).
fn decision_columns(d: &DecisionRecord<'_>) -> (String, usize) {
    const COLUMNS: &str = "id, application_id, user_id, request_kind, subject_id, \
        policy_version, rule, action, effect, reason, inputs, methods, created_at";
    match d.location {
        Some(_) => (format!("{COLUMNS}, latitude, longitude"), 15),
        None => (COLUMNS.to_string(), 13),
    }
}

/// `$first, …` for `count` placeholders.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|p| format!("${p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The insert of `d`.
fn decision_sql(d: &DecisionRecord<'_>) -> String {
    let (columns, values) = decision_columns(d);
    format!(
        "INSERT INTO policy_decisions ({columns}) VALUES ({})",
        placeholders(1, values)
    )
}

/// PostgreSQL: `d` as a data-modifying `WITH` item named `decided`, inserted once for every row
/// of `source` (an item named before it, returning zero or one row), with its placeholders
/// numbered from `first`, in the order [`bind_decision`] binds them.
pub(crate) fn decision_item(d: &DecisionRecord<'_>, source: &str, first: usize) -> String {
    let (columns, values) = decision_columns(d);
    format!(
        "decided AS (INSERT INTO policy_decisions ({columns}) SELECT {} FROM {source})",
        placeholders(first, values)
    )
}

/// How many values [`bind_decision`] binds for `d`.
pub(crate) fn decision_values(d: &DecisionRecord<'_>) -> usize {
    decision_columns(d).1
}

/// Binds `d`'s values (as [`decision_columns`] lists them) after what `query` bound.
pub(crate) fn bind_decision<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    d: &'q DecisionRecord<'_>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let query = query
        .bind(d.id)
        .bind(d.application_id.as_str())
        .bind(d.user_id.as_str())
        .bind(d.request_kind)
        .bind(d.subject_id)
        .bind(i64::from(d.policy_version))
        .bind(d.rule)
        .bind(d.action)
        .bind(d.effect)
        .bind(d.reason)
        .bind(d.inputs)
        .bind(d.methods)
        .bind(d.created_at);
    match d.location {
        Some((latitude, longitude)) => query.bind(latitude).bind(longitude),
        None => query,
    }
}

/// A recorded decision, as read back.
#[derive(Debug, Clone)]
pub struct StoredDecision {
    /// The request kind.
    pub request_kind: String,
    /// What it decided for.
    pub subject_id: Option<String>,
    /// The policy version.
    pub policy_version: u32,
    /// The rule.
    pub rule: String,
    /// The action.
    pub action: String,
    /// What it did.
    pub effect: String,
    /// Why.
    pub reason: String,
    /// The values looked at (JSON).
    pub inputs: String,
    /// With `require`: the methods, most preferred first (comma-separated; empty otherwise).
    pub methods: String,
    /// When.
    pub created_at: i64,
}

/// The user's decisions, newest first (at most `limit`).
pub async fn decisions(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    limit: i64,
) -> Result<Vec<StoredDecision>, StoreError> {
    sqlx::query(
        "SELECT request_kind, subject_id, policy_version, rule, action, effect, reason, inputs, \
         methods, created_at FROM policy_decisions WHERE application_id = $1 AND user_id = $2 \
         ORDER BY created_at DESC, id LIMIT $3",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .bind(limit)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(decision_from_row)
    .collect()
}

/// The statement of [`previous_location`] (over the `policy_decisions_located_by_user` index).
pub(crate) const PREVIOUS_LOCATION: &str = "SELECT latitude, longitude, created_at \
    FROM policy_decisions WHERE application_id = $1 AND user_id = $2 \
    AND latitude IS NOT NULL AND longitude IS NOT NULL ORDER BY created_at DESC LIMIT 1";

/// The user's latest known accessing location before now: (latitude, longitude, when).
pub async fn previous_location(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Option<(f64, f64, i64)>, StoreError> {
    let row = sqlx::query(PREVIOUS_LOCATION)
        .bind(app.as_str())
        .bind(user.as_str())
        .fetch_optional(db.pool())
        .await?;
    row.map(|r| {
        Ok((
            r.try_get("latitude")?,
            r.try_get("longitude")?,
            r.try_get("created_at")?,
        ))
    })
    .transpose()
}

/// The latest decision recorded for `subject`.
pub async fn latest_for_subject(
    db: &Database,
    subject: &str,
) -> Result<Option<StoredDecision>, StoreError> {
    let row = sqlx::query(
        "SELECT request_kind, subject_id, policy_version, rule, action, effect, reason, inputs, \
         methods, created_at FROM policy_decisions WHERE subject_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(subject)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(decision_from_row).transpose()
}

/// The decision recorded under `id` (its key), if any.
pub async fn decision_by_id(db: &Database, id: &str) -> Result<Option<StoredDecision>, StoreError> {
    let row = sqlx::query(
        "SELECT request_kind, subject_id, policy_version, rule, action, effect, reason, inputs, \
         methods, created_at FROM policy_decisions WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(decision_from_row).transpose()
}

/// The latest decision recorded for `user` on `subject` (a QR session records one per user
/// offered), if any.
pub async fn latest_for_subject_and_user(
    db: &Database,
    subject: &str,
    user: &UserId,
) -> Result<Option<StoredDecision>, StoreError> {
    let row = sqlx::query(
        "SELECT request_kind, subject_id, policy_version, rule, action, effect, reason, inputs, \
         methods, created_at FROM policy_decisions WHERE subject_id = $1 AND user_id = $2 \
         ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(subject)
    .bind(user.as_str())
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(decision_from_row).transpose()
}

fn decision_from_row(r: &sqlx::any::AnyRow) -> Result<StoredDecision, StoreError> {
    let version: i64 = r.try_get("policy_version")?;
    Ok(StoredDecision {
        request_kind: r.try_get("request_kind")?,
        subject_id: r.try_get("subject_id")?,
        policy_version: u32::try_from(version)
            .map_err(|_| StoreError::Corrupted("policy version"))?,
        rule: r.try_get("rule")?,
        action: r.try_get("action")?,
        effect: r.try_get("effect")?,
        reason: r.try_get("reason")?,
        inputs: r.try_get("inputs")?,
        methods: r.try_get("methods")?,
        created_at: r.try_get("created_at")?,
    })
}
