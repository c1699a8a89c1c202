//! FIDO2 / WebAuthn storage: an application's relying-party settings, its users' credentials,
//! and the ceremonies under way (taken once, atomically, by the response that answers them).

use sqlx::Row;
use tessera_protocol::fido::{FidoCredentialType, FidoSettings};
use tessera_protocol::ids::{ApplicationId, UserId};

use super::users::{self, UserLock};
use super::{Database, is_unique_violation};
use crate::store::StoreError;

/// A credential as stored.
#[derive(Debug, Clone)]
pub struct StoredCredential {
    /// Its id on this server (`fido_…`).
    pub id: String,
    /// The application.
    pub application_id: ApplicationId,
    /// The user.
    pub user_id: UserId,
    /// The WebAuthn credential id (base64url).
    pub credential_id: String,
    /// The credential as the WebAuthn library serialises it (JSON).
    pub credential: String,
    /// Its type.
    pub kind: FidoCredentialType,
    /// The authenticator model, when attested.
    pub aaguid: Option<String>,
    /// The last signature counter accepted.
    pub counter: i64,
    /// Backup eligible (may be synced).
    pub backup_eligible: bool,
    /// Backed up or synced now.
    pub backup_state: bool,
    /// Registered as discoverable (a passkey).
    pub discoverable: bool,
    /// Its name.
    pub nickname: String,
    /// When a counter regression flagged it.
    pub compromised_at: Option<i64>,
    /// When it was registered.
    pub created_at: i64,
    /// When it last signed in.
    pub last_used_at: Option<i64>,
}

const COLUMNS: &str = "id, application_id, user_id, credential_id, credential, kind, aaguid, \
    counter, backup_eligible, backup_state, discoverable, nickname, compromised_at, created_at, \
    last_used_at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<StoredCredential, StoreError> {
    Ok(StoredCredential {
        id: r.try_get("id")?,
        application_id: r
            .try_get::<String, _>("application_id")?
            .parse()
            .map_err(|_| StoreError::Corrupted("application id"))?,
        user_id: r
            .try_get::<String, _>("user_id")?
            .parse()
            .map_err(|_| StoreError::Corrupted("user id"))?,
        credential_id: r.try_get("credential_id")?,
        credential: r.try_get("credential")?,
        kind: FidoCredentialType::parse(&r.try_get::<String, _>("kind")?)
            .ok_or(StoreError::Corrupted("fido credential kind"))?,
        aaguid: r.try_get("aaguid")?,
        counter: r.try_get("counter")?,
        backup_eligible: r.try_get::<i64, _>("backup_eligible")? != 0,
        backup_state: r.try_get::<i64, _>("backup_state")? != 0,
        discoverable: r.try_get::<i64, _>("discoverable")? != 0,
        nickname: r.try_get("nickname")?,
        compromised_at: r.try_get("compromised_at")?,
        created_at: r.try_get("created_at")?,
        last_used_at: r.try_get("last_used_at")?,
    })
}

/// The application's FIDO settings (defaults when never set).
pub async fn settings(db: &Database, app: &ApplicationId) -> Result<FidoSettings, StoreError> {
    let row = sqlx::query("SELECT settings FROM fido_settings WHERE application_id = $1")
        .bind(app.as_str())
        .fetch_optional(db.pool())
        .await?;
    match row {
        Some(r) => serde_json::from_str(&r.try_get::<String, _>("settings")?)
            .map_err(|_| StoreError::Corrupted("fido_settings")),
        None => Ok(FidoSettings::default()),
    }
}

/// Replaces the application's FIDO settings, in one upsert: two replaces at once on
/// PostgreSQL each write in turn (a delete then an insert would let both delete nothing and the
/// second insert fail on the primary key).
pub async fn set_settings(
    db: &Database,
    app: &ApplicationId,
    settings: &FidoSettings,
) -> Result<(), StoreError> {
    let text =
        serde_json::to_string(settings).map_err(|_| StoreError::Corrupted("fido_settings"))?;
    sqlx::query(
        "INSERT INTO fido_settings (application_id, settings) VALUES ($1, $2) \
         ON CONFLICT (application_id) DO UPDATE SET settings = $2",
    )
    .bind(app.as_str())
    .bind(text)
    .execute(db.writer())
    .await?;
    Ok(())
}

/// What [`insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The credential is stored.
    Stored,
    /// The application already has a credential with this WebAuthn credential id (registered
    /// again, or to someone else): nothing stored.
    Duplicate,
    /// The credential's user does not exist (deleted while the registration ran): nothing
    /// stored.
    NoSuchUser,
}

/// Stores a new credential, unless the application already has one with this WebAuthn
/// credential id ([`Inserted::Duplicate`]) or its user does not exist
/// ([`Inserted::NoSuchUser`]).
///
/// The user is looked up in the insert's own transaction under [`users::lock`]
/// ([`UserLock::KeepsUser`]): a deletion of the user racing the registration either waits for
/// the insert to commit (and then removes the credential with the user) or has removed the
/// user first, and the insert then stores nothing. The duplicate check is the statement's
/// `NOT EXISTS`; two inserts of one credential at once on PostgreSQL both pass it, and the
/// second then fails on the unique index: the same duplicate.
pub async fn insert(db: &Database, c: &StoredCredential) -> Result<Inserted, StoreError> {
    let mut w = db.write().await?;
    let found = users::lock(
        &mut *w,
        db.engine(),
        &c.application_id,
        &c.user_id,
        UserLock::KeepsUser,
    )
    .await?;
    if !found {
        w.rollback().await?;
        return Ok(Inserted::NoSuchUser);
    }
    let done = sqlx::query(&format!(
        "INSERT INTO fido_credentials ({COLUMNS}) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15 \
         WHERE NOT EXISTS (SELECT 1 FROM fido_credentials WHERE application_id = $2 AND credential_id = $4)"
    ))
    .bind(&c.id)
    .bind(c.application_id.as_str())
    .bind(c.user_id.as_str())
    .bind(&c.credential_id)
    .bind(&c.credential)
    .bind(c.kind.as_str())
    .bind(&c.aaguid)
    .bind(c.counter)
    .bind(i64::from(c.backup_eligible))
    .bind(i64::from(c.backup_state))
    .bind(i64::from(c.discoverable))
    .bind(&c.nickname)
    .bind(c.compromised_at)
    .bind(c.created_at)
    .bind(c.last_used_at)
    .execute(&mut *w)
    .await;
    match done {
        Ok(done) if done.rows_affected() == 1 => {
            w.commit().await?;
            Ok(Inserted::Stored)
        }
        Ok(_) => {
            w.rollback().await?;
            Ok(Inserted::Duplicate)
        }
        Err(e) if is_unique_violation(&e) => {
            w.rollback().await?;
            Ok(Inserted::Duplicate)
        }
        Err(e) => Err(e.into()),
    }
}

/// A user's credentials, oldest first.
pub async fn list_for_user(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Vec<StoredCredential>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM fido_credentials WHERE application_id = $1 AND user_id = $2 \
         ORDER BY created_at, id"
    ))
    .bind(app.as_str())
    .bind(user.as_str())
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(from_row).collect()
}

/// The application's credential with this WebAuthn credential id, whoever's it is.
pub async fn by_credential_id(
    db: &Database,
    app: &ApplicationId,
    credential_id: &str,
) -> Result<Option<StoredCredential>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM fido_credentials WHERE application_id = $1 AND credential_id = $2"
    ))
    .bind(app.as_str())
    .bind(credential_id)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Records a sign-in: the counter only ever rises (a conditional update, so two racing
/// assertions with the same counter cannot both pass). False when the stored counter is
/// already at or above `counter` (a regression: cloned) or the credential is flagged.
pub async fn record_use(
    db: &Database,
    id: &str,
    counter: i64,
    backup_state: bool,
    credential: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE fido_credentials SET counter = $1, backup_state = $2, credential = $3, \
         last_used_at = $4 WHERE id = $5 AND compromised_at IS NULL AND (counter < $1 OR ($1 = 0 AND counter = 0))",
    )
    .bind(counter)
    .bind(i64::from(backup_state))
    .bind(credential)
    .bind(now)
    .bind(id)
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Flags a credential whose counter went backwards.
pub async fn flag_compromised(db: &Database, id: &str, now: i64) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE fido_credentials SET compromised_at = $1 WHERE id = $2 AND compromised_at IS NULL",
    )
    .bind(now)
    .bind(id)
    .execute(db.writer())
    .await?;
    Ok(())
}

/// Renames a user's credential. False when the user has no such credential.
pub async fn rename(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    id: &str,
    nickname: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE fido_credentials SET nickname = $1 WHERE application_id = $2 AND user_id = $3 AND id = $4",
    )
    .bind(nickname)
    .bind(app.as_str())
    .bind(user.as_str())
    .bind(id)
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes a user's credential. False when the user has no such credential.
pub async fn remove(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    id: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "DELETE FROM fido_credentials WHERE application_id = $1 AND user_id = $2 AND id = $3",
    )
    .bind(app.as_str())
    .bind(user.as_str())
    .bind(id)
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A ceremony under way.
#[derive(Debug, Clone)]
pub struct Ceremony {
    /// Its id.
    pub id: String,
    /// The application.
    pub application_id: ApplicationId,
    /// The user; none for a passkey sign-in (the credential names the user).
    pub user_id: Option<UserId>,
    /// The flow it belongs to.
    pub flow_id: String,
    /// `registration` or `authentication`.
    pub purpose: String,
    /// The library's state (JSON).
    pub state: String,
    /// When it expires.
    pub expires_at: i64,
}

/// The housekeeping of [`insert_ceremony`]: the expired ceremonies (`expires_at <= $2`) of
/// the new ceremony's application (`$1`), read from `fido_ceremonies_by_application_expiry`.
/// Scoped to the application, so a clock that reads later than another's (an instance's, or a
/// test's that advanced its own) deletes nothing that other application still waits on.
pub(crate) const FORGET_EXPIRED_CEREMONIES: &str =
    "DELETE FROM fido_ceremonies WHERE application_id = $1 AND expires_at <= $2";

/// Stores a ceremony and drops its application's expired ones
/// (`FORGET_EXPIRED_CEREMONIES`).
pub async fn insert_ceremony(db: &Database, c: &Ceremony, now: i64) -> Result<(), StoreError> {
    let mut tx = db.write().await?;
    sqlx::query(
        "INSERT INTO fido_ceremonies (id, application_id, user_id, flow_id, purpose, state, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&c.id)
    .bind(c.application_id.as_str())
    .bind(c.user_id.as_ref().map_or("", UserId::as_str))
    .bind(&c.flow_id)
    .bind(&c.purpose)
    .bind(&c.state)
    .bind(c.expires_at)
    .execute(&mut *tx)
    .await?;
    sqlx::query(FORGET_EXPIRED_CEREMONIES)
        .bind(c.application_id.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Takes a ceremony of `flow_id` for `purpose` once: deletes it and returns its state; `None`
/// when it is gone (already answered), expired, belongs to another flow, or was started for
/// another application or user than `app` and `user` (`None` for a passkey sign-in's, which
/// names no user).
///
/// All of these are matched in the one `DELETE`, so a ceremony is taken only by an answer in
/// its own application, flow and user's name, and an answer that does not match takes
/// nothing: the ceremony stays for its own user (someone answering in another user's name
/// cannot spend it), and the caller sees the same `None` as for an unknown or expired one.
pub async fn take_ceremony(
    db: &Database,
    id: &str,
    app: &ApplicationId,
    user: Option<&UserId>,
    flow_id: &str,
    purpose: &str,
    now: i64,
) -> Result<Option<String>, StoreError> {
    let row = sqlx::query(
        "DELETE FROM fido_ceremonies WHERE id = $1 AND application_id = $2 AND user_id = $3 \
         AND flow_id = $4 AND purpose = $5 AND expires_at > $6 RETURNING state",
    )
    .bind(id)
    .bind(app.as_str())
    // As `insert_ceremony` stores it: empty when the ceremony names no user.
    .bind(user.map_or("", UserId::as_str))
    .bind(flow_id)
    .bind(purpose)
    .bind(now)
    .fetch_optional(db.writer())
    .await?;
    row.map(|r| r.try_get::<String, _>("state").map_err(StoreError::from))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn db_with_app() -> (tempfile::TempDir, Database, ApplicationId) {
        crate::store::test_db_with_app().await
    }

    /// SQLite always, and PostgreSQL when `DATABASE_URL` names it: each with a new application
    /// (the folder keeps the SQLite file while the test runs).
    async fn each_engine() -> Vec<(Option<tempfile::TempDir>, Database, ApplicationId)> {
        let (dir, db, app) = db_with_app().await;
        let mut engines = vec![(Some(dir), db, app)];
        if let Some(url) =
            crate::store::postgres_url_for_tests("keep FIDO credentials on PostgreSQL")
        {
            let db = Database::connect(&url, 8).await.expect("database");
            let app = crate::store::test_application(&db).await;
            engines.push((None, db, app.id));
        }
        engines
    }

    /// A new user `name` of `app`.
    async fn user(db: &Database, app: &ApplicationId, name: &str) -> UserId {
        let user: UserId = name.parse().expect("user id");
        crate::store::users::insert(db, app, &user, None, None, 1)
            .await
            .expect("user");
        user
    }

    /// How many credentials `user` of `app` has, read directly.
    async fn credential_rows(db: &Database, app: &ApplicationId, user: &UserId) -> i64 {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM fido_credentials WHERE application_id = $1 AND user_id = $2",
        )
        .bind(app.as_str())
        .bind(user.as_str())
        .fetch_one(db.pool())
        .await
        .expect("count")
    }

    /// A credential id on this server no earlier run left in a shared PostgreSQL database
    /// (the `id` column is unique across applications).
    fn fresh_id() -> String {
        format!("fido_{:032x}", rand::random::<u128>())
    }

    fn credential(app: &ApplicationId, id: &str, credential_id: &str) -> StoredCredential {
        credential_of(app, "alice", id, credential_id)
    }

    fn credential_of(
        app: &ApplicationId,
        user: &str,
        id: &str,
        credential_id: &str,
    ) -> StoredCredential {
        StoredCredential {
            id: id.into(),
            application_id: app.clone(),
            user_id: user.parse().expect("user"),
            credential_id: credential_id.into(),
            credential: "{}".into(),
            kind: FidoCredentialType::SecurityKey,
            aaguid: None,
            counter: 5,
            backup_eligible: false,
            backup_state: false,
            discoverable: false,
            nickname: "Key".into(),
            compromised_at: None,
            created_at: 1,
            last_used_at: None,
        }
    }

    /// A ceremony of `app` for alice, expiring at `expires_at`, under an id no earlier run
    /// left in a shared PostgreSQL database.
    fn ceremony_of(app: &ApplicationId, expires_at: i64) -> Ceremony {
        Ceremony {
            id: format!("fcr_{:032x}", rand::random::<u128>()),
            application_id: app.clone(),
            user_id: Some("alice".parse().expect("user")),
            flow_id: "flw_1".into(),
            purpose: "registration".into(),
            state: "{}".into(),
            expires_at,
        }
    }

    /// Takes `c` as its own answer would, at `now`: whether it was still there.
    async fn taken(db: &Database, c: &Ceremony, now: i64) -> bool {
        take_ceremony(
            db,
            &c.id,
            &c.application_id,
            c.user_id.as_ref(),
            &c.flow_id,
            &c.purpose,
            now,
        )
        .await
        .expect("take")
        .is_some()
    }

    /// A new ceremony's housekeeping deletes its own application's expired ceremonies, and
    /// nothing of another application, even when the clock it is stored by reads far later
    /// than the one the other application's ceremony was started by.
    #[tokio::test]
    async fn a_new_ceremony_forgets_only_its_own_applications_expired_ones() {
        for (_dir, db, app) in each_engine().await {
            let other = crate::store::test_application(&db).await.id;

            let waiting = ceremony_of(&app, 1_300);
            insert_ceremony(&db, &waiting, 1_000).await.expect("insert");
            let others_expired = ceremony_of(&other, 2_000);
            insert_ceremony(&db, &others_expired, 1_700)
                .await
                .expect("insert");
            // The other application's next ceremony, stored by a clock an hour later.
            insert_ceremony(&db, &ceremony_of(&other, 4_900), 4_600)
                .await
                .expect("insert");

            let left: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM fido_ceremonies WHERE id = $1")
                    .bind(&others_expired.id)
                    .fetch_one(db.pool())
                    .await
                    .expect("count");
            assert_eq!(
                left, 0,
                "the other application's expired ceremony is forgotten"
            );
            assert!(
                taken(&db, &waiting, 1_100).await,
                "this application's ceremony waits for its answer"
            );
        }
    }

    #[tokio::test]
    async fn a_ceremony_is_taken_once_by_a_burst_of_answers() {
        let (_dir, db, app) = db_with_app().await;
        let ceremony = Ceremony {
            id: "fca_1".into(),
            application_id: app.clone(),
            user_id: Some("alice".parse().expect("user")),
            flow_id: "flw_1".into(),
            purpose: "authentication".into(),
            state: "{\"s\":1}".into(),
            expires_at: 200,
        };
        insert_ceremony(&db, &ceremony, 100).await.expect("insert");
        let alice: UserId = "alice".parse().expect("user");
        let bob: UserId = "bob".parse().expect("user");
        let other_app = ApplicationId::generate();
        // Another flow, another purpose, an expired one, another user, no user, another
        // application: nothing, and the ceremony stays.
        for (app, user, flow, purpose, now) in [
            (&app, Some(&alice), "flw_2", "authentication", 100),
            (&app, Some(&alice), "flw_1", "registration", 100),
            (&app, Some(&alice), "flw_1", "authentication", 200),
            (&app, Some(&bob), "flw_1", "authentication", 100),
            (&app, None, "flw_1", "authentication", 100),
            (&other_app, Some(&alice), "flw_1", "authentication", 100),
        ] {
            assert!(
                take_ceremony(&db, "fca_1", app, user, flow, purpose, now)
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (db, app, alice) = (db.clone(), app.clone(), alice.clone());
            tasks.push(tokio::spawn(async move {
                take_ceremony(
                    &db,
                    "fca_1",
                    &app,
                    Some(&alice),
                    "flw_1",
                    "authentication",
                    100,
                )
                .await
            }));
        }
        let mut taken = 0;
        for t in tasks {
            if t.await.expect("join").expect("take").is_some() {
                taken += 1;
            }
        }
        assert_eq!(taken, 1, "exactly one answer takes the ceremony");
    }

    #[tokio::test]
    async fn the_counter_only_rises_and_one_of_a_burst_wins() {
        let (_dir, db, app) = db_with_app().await;
        let alice: UserId = "alice".parse().expect("user");
        crate::store::users::insert(&db, &app, &alice, None, None, 1)
            .await
            .expect("user");
        assert_eq!(
            insert(&db, &credential(&app, "fido_a", "cid"))
                .await
                .unwrap(),
            Inserted::Stored
        );
        assert_eq!(
            insert(&db, &credential(&app, "fido_b", "cid"))
                .await
                .unwrap(),
            Inserted::Duplicate,
            "the same credential id twice"
        );
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                record_use(&db, "fido_a", 6, false, "{}", 10).await
            }));
        }
        let mut won = 0;
        for t in tasks {
            if t.await.expect("join").expect("record") {
                won += 1;
            }
        }
        assert_eq!(won, 1, "one assertion with counter 6 passes");
        assert!(!record_use(&db, "fido_a", 4, false, "{}", 11).await.unwrap());
        flag_compromised(&db, "fido_a", 12).await.unwrap();
        assert!(
            !record_use(&db, "fido_a", 9, false, "{}", 13).await.unwrap(),
            "flagged"
        );
        let user: UserId = "alice".parse().unwrap();
        let listed = list_for_user(&db, &app, &user).await.unwrap();
        assert_eq!(listed[0].counter, 6);
        assert_eq!(listed[0].compromised_at, Some(12));
    }

    #[tokio::test]
    async fn a_credential_is_stored_only_for_a_user_that_exists() {
        for (_dir, db, app) in each_engine().await {
            let nobody: UserId = "nobody".parse().expect("user id");
            let refused = insert(&db, &credential_of(&app, "nobody", &fresh_id(), "cid_n"))
                .await
                .expect("insert");
            assert_eq!(refused, Inserted::NoSuchUser);
            assert_eq!(credential_rows(&db, &app, &nobody).await, 0);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_credential_stored_while_its_user_is_deleted_does_not_outlive_them() {
        for (_dir, db, app) in each_engine().await {
            let engine = db.engine();
            for round in 0..30 {
                let name = format!("ivan-{round}");
                let user = user(&db, &app, &name).await;
                let stored = tokio::spawn({
                    let (db, c) = (db.clone(), credential_of(&app, &name, &fresh_id(), &name));
                    async move { insert(&db, &c).await.expect("insert") }
                });
                let removed = tokio::spawn({
                    let (db, app, user) = (db.clone(), app.clone(), user.clone());
                    async move { crate::store::users::delete(&db, &app, &user).await }
                });
                let stored = stored.await.expect("the insert ran");
                let removed = removed.await.expect("the deletion ran").expect("deleted");
                assert!(
                    removed.is_some(),
                    "{engine:?} round {round}: the user was there"
                );
                assert!(
                    matches!(stored, Inserted::Stored | Inserted::NoSuchUser),
                    "{engine:?} round {round}: {stored:?}"
                );
                assert_eq!(
                    credential_rows(&db, &app, &user).await,
                    0,
                    "{engine:?} round {round}: a credential outlived its user"
                );
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn of_one_credential_registered_at_once_one_is_stored_and_the_others_are_duplicates() {
        for (_dir, db, app) in each_engine().await {
            let judy = user(&db, &app, "judy").await;
            let engine = db.engine();
            for round in 0..4 {
                let mut tasks = Vec::new();
                for _ in 0..8 {
                    let (db, c) = (
                        db.clone(),
                        credential_of(&app, "judy", &fresh_id(), &format!("cid_{round}")),
                    );
                    tasks.push(tokio::spawn(async move { insert(&db, &c).await }));
                }
                let mut outcomes = Vec::new();
                for task in tasks {
                    // On PostgreSQL copies that all passed the NOT EXISTS meet the unique
                    // index: a duplicate all the same, not a failed statement.
                    outcomes.push(task.await.expect("the insert ran").expect("inserted"));
                }
                let stored = outcomes.iter().filter(|o| **o == Inserted::Stored).count();
                assert_eq!(stored, 1, "{engine:?} round {round}: {outcomes:?}");
                assert!(
                    outcomes
                        .iter()
                        .all(|o| matches!(o, Inserted::Stored | Inserted::Duplicate)),
                    "{engine:?} round {round}: {outcomes:?}"
                );
            }
            assert_eq!(credential_rows(&db, &app, &judy).await, 4);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn settings_replaced_at_once_all_succeed_and_one_stands() {
        for (_dir, db, app) in each_engine().await {
            let engine = db.engine();
            for round in 0..4 {
                let asked: Vec<FidoSettings> = (0..8)
                    .map(|copy| FidoSettings {
                        rp_id: Some(format!("rp{round}-{copy}.example.com")),
                        ..FidoSettings::default()
                    })
                    .collect();
                let mut tasks = Vec::new();
                for wanted in &asked {
                    let (db, app, wanted) = (db.clone(), app.clone(), wanted.clone());
                    tasks.push(tokio::spawn(async move {
                        set_settings(&db, &app, &wanted).await
                    }));
                }
                for task in tasks {
                    // A delete and an insert at once on PostgreSQL met on the primary key.
                    task.await.expect("the write ran").expect("replaced");
                }
                let now = settings(&db, &app).await.expect("settings");
                assert!(asked.contains(&now), "{engine:?} round {round}: {now:?}");
            }
        }
    }
}
