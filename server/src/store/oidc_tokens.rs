//! Issued OpenID tokens (access and refresh tokens, stored as SHA-256 digests only), and the
//! one write that issues them.
//!
//! [`issue`] spends what a grant uses up (a refresh token, an authorization code, a CIBA
//! request, a push delivery's lease) and stores the grant's tokens in one transaction, under
//! the user's lock. Tokens stand for the user's device: a grant that needs one finds the user's
//! active device inside that transaction. An unpairing locks the user too, and revokes the
//! tokens in its own transaction when it removes the last device
//! (`revoke_without_device_in`, called by `enrollments::delete`), so tokens are either issued
//! before it (and revoked with it) or refused after it; a user's deletion likewise.

use sqlx::Row;
use tessera_protocol::ids::{ApplicationId, UserId};

use super::ciba::{EXPIRED_UNEXCHANGED, Lease, MARK_TOKENS_ISSUED, held_by};
use super::users::{self, UserLock};
use super::{Database, Engine, StoreError};

/// An access or refresh token, as stored.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// `access` or `refresh`.
    pub kind: String,
    /// The client.
    pub client_id: String,
    /// The user.
    pub user_id: String,
    /// The granted scopes.
    pub scope: String,
    /// The authentication context class.
    pub acr: String,
    /// The methods (JSON array).
    pub amr: String,
    /// When the user authenticated.
    pub auth_time: i64,
    /// When it expires.
    pub expires_at: i64,
    /// When a refresh token was used.
    pub used_at: Option<i64>,
    /// The grant the token descends from (tokens stored before families existed have none).
    pub family_id: Option<String>,
}

/// The statement that stores a token by its digest, to run on the pool or in a transaction.
fn insert_token_statement<'q>(
    digest: &'q str,
    token: &'q IssuedToken,
    now: i64,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(
        "INSERT INTO oidc_tokens (token_digest, kind, client_id, user_id, scope, acr, amr, auth_time, \
         created_at, expires_at, used_at, family_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(digest)
    .bind(&token.kind)
    .bind(&token.client_id)
    .bind(&token.user_id)
    .bind(&token.scope)
    .bind(&token.acr)
    .bind(&token.amr)
    .bind(token.auth_time)
    .bind(now)
    .bind(token.expires_at)
    .bind(token.used_at)
    .bind(&token.family_id)
}

/// Stores tokens by their digests inside `tx` (a grant's tokens land together or not at all).
async fn insert_tokens(
    tx: &mut crate::store::Write<'static>,
    tokens: &[(String, IssuedToken)],
    now: i64,
) -> Result<(), StoreError> {
    for (digest, token) in tokens {
        insert_token_statement(digest, token, now)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Stores a token by its digest, on its own (tests that need a token at hand).
#[cfg(test)]
pub(crate) async fn insert_token(
    db: &Database,
    digest: &str,
    token: &IssuedToken,
    now: i64,
) -> Result<(), StoreError> {
    insert_token_statement(digest, token, now)
        .execute(db.writer())
        .await?;
    Ok(())
}

/// A token by its digest.
pub async fn token(db: &Database, digest: &str) -> Result<Option<IssuedToken>, StoreError> {
    let row = sqlx::query(
        "SELECT kind, client_id, user_id, scope, acr, amr, auth_time, expires_at, used_at, family_id \
         FROM oidc_tokens WHERE token_digest = $1",
    )
    .bind(digest)
    .fetch_optional(db.pool())
    .await?;
    row.map(|row| {
        Ok(IssuedToken {
            kind: row.try_get("kind")?,
            client_id: row.try_get("client_id")?,
            user_id: row.try_get("user_id")?,
            scope: row.try_get("scope")?,
            acr: row.try_get("acr")?,
            amr: row.try_get("amr")?,
            auth_time: row.try_get("auth_time")?,
            expires_at: row.try_get("expires_at")?,
            used_at: row.try_get("used_at")?,
            family_id: row.try_get("family_id")?,
        })
    })
    .transpose()
}

/// Revokes (deletes) every token of a family, the access tokens with the refresh tokens, issued
/// to `user` of `app` (the family's user, whose lock [`issue`] takes); returns how many there
/// were.
///
/// The user is locked first ([`UserLock::TakesTurns`], as a rotation locks them), so a rotation
/// of the family under way commits before the deletion reads the family, and its successors
/// are deleted with it; a rotation after it finds its refresh token gone. (A bare `DELETE` on
/// PostgreSQL would wait for the rotated token's row, then skip the successors inserted by a
/// transaction that had not committed when it began.) A user who is gone has no rotation to
/// wait for: the family is deleted all the same.
pub async fn revoke_family(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    family_id: &str,
) -> Result<u64, StoreError> {
    let mut tx = db.write().await?;
    users::lock(&mut *tx, db.engine(), app, user, UserLock::TakesTurns).await?;
    let revoked = sqlx::query("DELETE FROM oidc_tokens WHERE family_id = $1")
        .bind(family_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(revoked)
}

/// What issuing a grant's tokens spends, in the write that stores them. Each can be spent once.
#[derive(Debug, Clone, Copy)]
pub enum Spend<'a> {
    /// A refresh token (by its digest), rotated: marked used.
    RefreshToken {
        /// The refresh token's digest.
        digest: &'a str,
    },
    /// An authorization code (by its digest), redeemed.
    Code {
        /// The code's digest.
        digest: &'a str,
    },
    /// A CIBA request in poll or ping mode, exchanged at the token endpoint: marked issued,
    /// only before its `expires_at` ([`Issued::Expired`] after it).
    CibaRequest {
        /// The request's `auth_req_id`.
        auth_req_id: &'a str,
    },
    /// A push-mode CIBA request's tokens, minted for the delivery held under `lease`. The
    /// request is marked issued (if it was not yet), and the tokens an earlier delivery of it
    /// minted (an instance whose lease lapsed after it sent them, or died) are revoked: one
    /// family per request is ever valid, `family_id`. Only before the request's `expires_at`:
    /// after it ([`Issued::Expired`]) nothing is minted, and the earlier tokens are revoked
    /// all the same (the delivery never ended, so the endpoint never took them).
    CibaPush {
        /// The request's `auth_req_id`.
        auth_req_id: &'a str,
        /// The delivering instance's lease.
        lease: Lease,
        /// The family the tokens belong to.
        family_id: &'a str,
    },
}

impl Spend<'_> {
    /// Whether the grant needs the user's active device: every grant but the authorization
    /// code's, whose sign-in may have used another factor (a passkey, a code by SMS).
    fn needs_device(&self) -> bool {
        !matches!(self, Spend::Code { .. })
    }
}

/// What [`issue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issued {
    /// The tokens are stored, and what they spend is spent.
    Stored,
    /// What they would spend was spent before (a refresh token or code used, a CIBA request
    /// exchanged, a push delivery's lease taken over): nothing stored.
    Spent,
    /// The user is gone (or being deleted): nothing stored.
    NoUser,
    /// The grant needs the user's active device, and they have none (the last one was
    /// unpaired): nothing stored.
    NoActiveDevice,
    /// A CIBA request exchanged at the token endpoint ([`Spend::CibaRequest`]) was past its
    /// `expires_at`, and not exchanged before: nothing stored. For a push delivery
    /// ([`Spend::CibaPush`]): past its `expires_at`, nothing stored and the tokens earlier
    /// attempts minted revoked.
    Expired,
}

/// Issues `tokens` for `user` of `app`, spending `spend`, in one transaction (see the module
/// documentation). The user is locked first ([`UserLock::TakesTurns`] for a grant that needs a
/// device, as the unpairing does, [`UserLock::KeepsUser`] otherwise), then their device is
/// checked, then `spend` is spent, then the tokens are stored.
pub async fn issue(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    spend: Spend<'_>,
    tokens: &[(String, IssuedToken)],
    now: i64,
) -> Result<Issued, StoreError> {
    let mut tx = db.write().await?;
    let how = if spend.needs_device() {
        UserLock::TakesTurns
    } else {
        UserLock::KeepsUser
    };
    if !users::lock(&mut *tx, db.engine(), app, user, how).await? {
        tx.rollback().await?;
        return Ok(Issued::NoUser);
    }
    if spend.needs_device() {
        let device = sqlx::query(
            "SELECT 1 AS one FROM enrollments WHERE application_id = $1 AND user_id = $2 \
             AND status = 'active' LIMIT 1",
        )
        .bind(app.as_str())
        .bind(user.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if device.is_none() {
            tx.rollback().await?;
            return Ok(Issued::NoActiveDevice);
        }
    }
    if let Err(refused) = spent(&mut tx, db.engine(), spend, now).await? {
        // A push delivery past its request's expiry revoked what earlier attempts minted: that
        // stands. Any other refusal wrote nothing.
        if matches!((spend, refused), (Spend::CibaPush { .. }, Issued::Expired)) {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        return Ok(refused);
    }
    insert_tokens(&mut tx, tokens, now).await?;
    tx.commit().await?;
    Ok(Issued::Stored)
}

/// Spends `spend` inside `tx` at `now`; why not when it was not: [`Issued::Spent`] (spent
/// before), or [`Issued::Expired`] (a CIBA request past its expiry, not exchanged; a push
/// delivery past its request's expiry, whose earlier tokens this revoked).
async fn spent(
    tx: &mut crate::store::Write<'static>,
    engine: Engine,
    spend: Spend<'_>,
    now: i64,
) -> Result<Result<(), Issued>, StoreError> {
    let once =
        |statement: &'static str, key: &str| sqlx::query(statement).bind(key.to_string()).bind(now);
    let changed = match spend {
        Spend::RefreshToken { digest } => once(
            "UPDATE oidc_tokens SET used_at = $2 WHERE token_digest = $1 AND kind = 'refresh' \
             AND used_at IS NULL",
            digest,
        )
        .execute(&mut **tx)
        .await?
        .rows_affected(),
        Spend::Code { digest } => once(
            "UPDATE oidc_authorizations SET code_used_at = $2 WHERE code_digest = $1 \
             AND code_used_at IS NULL",
            digest,
        )
        .execute(&mut **tx)
        .await?
        .rows_affected(),
        Spend::CibaRequest { auth_req_id } => {
            let marked = once(MARK_TOKENS_ISSUED, auth_req_id)
                .execute(&mut **tx)
                .await?
                .rows_affected();
            if marked != 1
                && once(EXPIRED_UNEXCHANGED, auth_req_id)
                    .fetch_optional(&mut **tx)
                    .await?
                    .is_some()
            {
                return Ok(Err(Issued::Expired));
            }
            marked
        }
        Spend::CibaPush {
            auth_req_id,
            lease,
            family_id,
        } => {
            // The row is locked (PostgreSQL) so that a delivery taking the lease over waits.
            let lock = match engine {
                Engine::Postgres => " FOR UPDATE",
                Engine::Sqlite => "",
            };
            let held = sqlx::query(&format!(
                "SELECT push_token_family, expires_at FROM ciba_requests \
                 WHERE auth_req_id = $1 AND {}{lock}",
                held_by(2)
            ))
            .bind(auth_req_id)
            .bind(lease.attempts)
            .bind(lease.until_ms)
            .fetch_optional(&mut **tx)
            .await?;
            let Some(held) = held else {
                return Ok(Err(Issued::Spent));
            };
            let earlier = held.try_get::<Option<String>, _>("push_token_family")?;
            if let Some(earlier) = &earlier {
                sqlx::query("DELETE FROM oidc_tokens WHERE family_id = $1")
                    .bind(earlier)
                    .execute(&mut **tx)
                    .await?;
            }
            // Past the request's expiry a delivery mints nothing, and what an earlier attempt
            // minted (the endpoint never took it, or the delivery would have ended) is revoked.
            if held.try_get::<i64, _>("expires_at")? <= now {
                if earlier.is_some() {
                    sqlx::query(
                        "UPDATE ciba_requests SET push_token_family = NULL WHERE auth_req_id = $1",
                    )
                    .bind(auth_req_id)
                    .execute(&mut **tx)
                    .await?;
                }
                return Ok(Err(Issued::Expired));
            }
            sqlx::query(
                "UPDATE ciba_requests SET push_token_family = $2, \
                 tokens_issued_at = COALESCE(tokens_issued_at, $3) WHERE auth_req_id = $1",
            )
            .bind(auth_req_id)
            .bind(family_id)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected()
        }
    };
    Ok(if changed == 1 {
        Ok(())
    } else {
        Err(Issued::Spent)
    })
}

/// The statement of [`revoke_without_device_in`].
const REVOKE_WITHOUT_DEVICE: &str = "DELETE FROM oidc_tokens WHERE user_id = $1 \
     AND client_id IN (SELECT client_id FROM ciba_clients WHERE application_id = $2) \
     AND NOT EXISTS (SELECT 1 FROM enrollments WHERE application_id = $2 AND user_id = $1 \
                     AND status = 'active')";

/// Revokes (deletes) every token issued to `user` by the clients of `app`, if the user has no
/// active device left in `app` (checked in the same statement), in the write `executor` runs
/// (an unpairing's, after it locked the user); returns how many there were.
pub(crate) async fn revoke_without_device_in<'e, E>(
    executor: E,
    app: &ApplicationId,
    user: &UserId,
) -> Result<u64, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    Ok(sqlx::query(REVOKE_WITHOUT_DEVICE)
        .bind(user.as_str())
        .bind(app.as_str())
        .execute(executor)
        .await?
        .rows_affected())
}

/// A fresh SQLite database with an application, its poll-mode client `client` (with
/// `redirect_uris`) and users alice and bob, for the store's token tests.
#[cfg(test)]
pub(crate) async fn with_client(
    redirect_uris: Vec<String>,
) -> (tempfile::TempDir, Database, ApplicationId) {
    use tessera_protocol::ciba::{ClientAuthMethod, DeliveryMode};

    use super::ciba::{CibaClient, LEGACY_GRANT_TYPES, insert_client};

    let dir = tempfile::tempdir().expect("temporary folder");
    let url = format!("sqlite://{}", dir.path().join("tokens.db").display());
    let db = Database::connect(&url, 4).await.expect("database");
    let app = ApplicationId::generate();
    sqlx::query(
        "INSERT INTO applications (id, name, api_key_digest, created_at) VALUES ($1, 'A', 'd', 0)",
    )
    .bind(app.as_str())
    .execute(db.writer())
    .await
    .expect("application");
    for user in ["alice", "bob"] {
        let user: UserId = user.parse().expect("user id");
        users::insert(&db, &app, &user, None, None, 0)
            .await
            .expect("user");
    }
    insert_client(
        &db,
        &CibaClient {
            client_id: "client".into(),
            application_id: app.clone(),
            name: "Portal".into(),
            delivery_mode: DeliveryMode::Poll,
            notification_endpoint: None,
            auth_method: ClientAuthMethod::ClientSecretBasic,
            secret_digest: Some("x".into()),
            jwks: None,
            request_signing_alg: None,
            user_code_required: false,
            created_at: 0,
            redirect_uris,
            grant_types: LEGACY_GRANT_TYPES.to_vec(),
        },
    )
    .await
    .expect("client");
    (dir, db, app)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An application with a client, users alice (one active device) and bob (none).
    async fn database() -> (tempfile::TempDir, Database, ApplicationId) {
        let (dir, db, app) = with_client(Vec::new()).await;
        sqlx::query(
            "INSERT INTO enrollments (enrollment_id, application_id, user_id, device_id, possession_key, \
             user_verification_key, device_info, signals, push, push_provider, is_primary, \
             registration_digest, server_payload, paired_at, last_seen_at, status) \
             VALUES ('enr', $1, 'alice', 'dev', 'k', 'k', '{}', '{}', '{}', 'none', 1, 'digest', 'p', 0, 0, 'active')",
        )
        .bind(app.as_str())
        .execute(db.writer())
        .await
        .expect("enrollment");
        (dir, db, app)
    }

    fn user_id(name: &str) -> UserId {
        name.parse().expect("user id")
    }

    fn issued(kind: &str, user: &str, family: &str) -> IssuedToken {
        IssuedToken {
            kind: kind.into(),
            client_id: "client".into(),
            user_id: user.into(),
            scope: "openid offline_access".into(),
            acr: "acr".into(),
            amr: "[]".into(),
            auth_time: 0,
            expires_at: 10_000,
            used_at: None,
            family_id: Some(family.into()),
        }
    }

    async fn stored(db: &Database) -> Vec<String> {
        sqlx::query_scalar("SELECT token_digest FROM oidc_tokens ORDER BY token_digest")
            .fetch_all(db.pool())
            .await
            .expect("tokens")
    }

    #[tokio::test]
    async fn a_refresh_token_rotates_once_even_when_used_concurrently() {
        let (_dir, db, app) = database().await;
        insert_token(&db, "r0", &issued("refresh", "alice", "f"), 1)
            .await
            .expect("insert");
        let uses = (0..8).map(|i| {
            let (db, app) = (db.clone(), app.clone());
            tokio::spawn(async move {
                let next = vec![(format!("r1-{i}"), issued("refresh", "alice", "f"))];
                let spend = Spend::RefreshToken { digest: "r0" };
                issue(&db, &app, &user_id("alice"), spend, &next, 2)
                    .await
                    .expect("rotate")
            })
        });
        let mut won = 0;
        for use_ in uses {
            match use_.await.expect("task") {
                Issued::Stored => won += 1,
                other => assert_eq!(other, Issued::Spent),
            }
        }
        assert_eq!(won, 1);
        assert_eq!(
            stored(&db).await.len(),
            2,
            "the used token and one successor: losers stored nothing"
        );
        assert_eq!(
            revoke_family(&db, &app, &user_id("alice"), "f")
                .await
                .expect("revoke"),
            2
        );
        assert!(token(&db, "r0").await.expect("read").is_none());
    }

    /// A grant that needs a device stores nothing, and spends nothing, for a user without an
    /// active one, or for a user who is gone; a code needs only the user.
    #[tokio::test]
    async fn tokens_are_issued_only_while_the_user_and_their_device_are_there() {
        let (_dir, db, app) = database().await;
        insert_token(&db, "bob-r0", &issued("refresh", "bob", "fb"), 1)
            .await
            .expect("insert");
        let next = vec![("bob-r1".to_string(), issued("refresh", "bob", "fb"))];
        let rotate = Spend::RefreshToken { digest: "bob-r0" };
        assert_eq!(
            issue(&db, &app, &user_id("bob"), rotate, &next, 2)
                .await
                .expect("issue"),
            Issued::NoActiveDevice
        );
        assert_eq!(
            token(&db, "bob-r0").await.expect("read").map(|t| t.used_at),
            Some(None),
            "the refresh token was not spent"
        );
        assert_eq!(
            issue(&db, &app, &user_id("carol"), rotate, &next, 2)
                .await
                .expect("issue"),
            Issued::NoUser
        );
        assert_eq!(stored(&db).await, vec!["bob-r0".to_string()]);
        // A device pending verification is not an active device.
        sqlx::query("UPDATE enrollments SET status = 'pending_verification'")
            .execute(db.writer())
            .await
            .expect("update");
        insert_token(&db, "alice-r0", &issued("refresh", "alice", "fa"), 1)
            .await
            .expect("insert");
        let next = vec![("alice-r1".to_string(), issued("refresh", "alice", "fa"))];
        let rotate = Spend::RefreshToken { digest: "alice-r0" };
        assert_eq!(
            issue(&db, &app, &user_id("alice"), rotate, &next, 2)
                .await
                .expect("issue"),
            Issued::NoActiveDevice
        );
        sqlx::query("UPDATE enrollments SET status = 'active'")
            .execute(db.writer())
            .await
            .expect("update");
        assert_eq!(
            issue(&db, &app, &user_id("alice"), rotate, &next, 2)
                .await
                .expect("issue"),
            Issued::Stored
        );
    }

    /// A CIBA request of `user` in push mode, whose delivery is claimed under `lease`.
    async fn push_request(db: &Database, app: &ApplicationId, id: &str, lease: Lease) {
        sqlx::query(
            "INSERT INTO ciba_requests (auth_req_id, client_id, authentication_id, application_id, \
             user_id, scope, acr, client_notification_token, poll_interval, created_at, expires_at, \
             notify_state, notify_attempts, notify_due_at_ms) \
             VALUES ($1, 'client', $1, $2, 'alice', 'openid', 'acr', NULL, 5, 0, 600, 'due', $3, $4)",
        )
        .bind(id)
        .bind(app.as_str())
        .bind(lease.attempts)
        .bind(lease.until_ms)
        .execute(db.writer())
        .await
        .expect("request");
    }

    /// A push delivery of alice's request `req` under `lease` at `now`, minting the access
    /// token `<family>-access` of `family`.
    async fn mint_pushed(
        db: &Database,
        app: &ApplicationId,
        family: &'static str,
        lease: Lease,
        now: i64,
    ) -> Issued {
        let tokens = vec![(
            format!("{family}-access"),
            issued("access", "alice", family),
        )];
        let spend = Spend::CibaPush {
            auth_req_id: "req",
            lease,
            family_id: family,
        };
        issue(db, app, &user_id("alice"), spend, &tokens, now)
            .await
            .expect("issue")
    }

    /// Only the instance holding a push delivery's lease mints its tokens; a delivery that took
    /// the lease over from one that minted (and lapsed, or died) revokes the earlier family.
    #[tokio::test]
    async fn a_push_delivery_mints_under_its_lease_and_one_family_stands() {
        let (_dir, db, app) = database().await;
        let first = Lease {
            attempts: 1,
            until_ms: 1_000,
        };
        push_request(&db, &app, "req", first).await;
        let mint = |family: &'static str, lease: Lease| mint_pushed(&db, &app, family, lease, 5);
        assert_eq!(mint("f1", first).await, Issued::Stored);
        let issued_at: Option<i64> = sqlx::query_scalar(
            "SELECT tokens_issued_at FROM ciba_requests WHERE auth_req_id = 'req'",
        )
        .fetch_one(db.pool())
        .await
        .expect("read");
        assert_eq!(issued_at, Some(5));
        // The first instance's lease lapsed; another claimed the delivery.
        let second = Lease {
            attempts: 2,
            until_ms: 9_000,
        };
        sqlx::query("UPDATE ciba_requests SET notify_attempts = 2, notify_due_at_ms = 9000")
            .execute(db.writer())
            .await
            .expect("taken over");
        assert_eq!(
            mint("f0", first).await,
            Issued::Spent,
            "the lapsed lease mints nothing"
        );
        assert_eq!(mint("f2", second).await, Issued::Stored);
        assert_eq!(
            stored(&db).await,
            vec!["f2-access".to_string()],
            "the earlier delivery's family is revoked"
        );
        // The lapsed holder can neither renew nor finish what it no longer holds.
        let later = Lease {
            attempts: 2,
            until_ms: 20_000,
        };
        let ciba = crate::store::ciba::NotifyState::Done;
        assert!(
            !crate::store::ciba::renew_lease(&db, "req", first, later)
                .await
                .expect("renew")
        );
        assert!(
            !crate::store::ciba::finish_notification(&db, "req", first, ciba)
                .await
                .expect("finish")
        );
        assert!(
            crate::store::ciba::renew_lease(&db, "req", second, later)
                .await
                .expect("renew")
        );
        assert!(
            crate::store::ciba::finish_notification(&db, "req", later, ciba)
                .await
                .expect("finish")
        );
    }

    /// Past its request's `expires_at` a push delivery mints nothing, even under the lease it
    /// holds, and the tokens an earlier attempt minted (the endpoint never took them) are
    /// revoked in the same write; a lapsed lease is still refused first.
    #[tokio::test]
    async fn a_push_delivery_past_its_requests_expiry_mints_nothing_and_revokes_earlier_tokens() {
        let (_dir, db, app) = database().await;
        let held = Lease {
            attempts: 1,
            until_ms: 1_000,
        };
        push_request(&db, &app, "req", held).await;
        let mint = |family: &'static str, lease: Lease, now: i64| {
            mint_pushed(&db, &app, family, lease, now)
        };
        // The request expires at 600: a second before it, the delivery mints.
        assert_eq!(mint("f1", held, 599).await, Issued::Stored);
        assert_eq!(stored(&db).await, vec!["f1-access".to_string()]);
        let lapsed = Lease {
            attempts: 0,
            until_ms: 1_000,
        };
        assert_eq!(
            mint("f0", lapsed, 600).await,
            Issued::Spent,
            "a lease not held is refused before the expiry is looked at"
        );
        assert_eq!(stored(&db).await, vec!["f1-access".to_string()]);
        assert_eq!(
            mint("f2", held, 600).await,
            Issued::Expired,
            "at its expiry, nothing is minted"
        );
        assert!(
            stored(&db).await.is_empty(),
            "the tokens minted before the expiry are revoked"
        );
        let family: Option<String> = sqlx::query_scalar(
            "SELECT push_token_family FROM ciba_requests WHERE auth_req_id = 'req'",
        )
        .fetch_one(db.pool())
        .await
        .expect("read");
        assert_eq!(family, None, "no family is left standing");
        assert_eq!(mint("f3", held, 601).await, Issued::Expired);
        assert!(stored(&db).await.is_empty());
    }

    #[tokio::test]
    async fn a_users_tokens_go_only_with_their_last_active_device() {
        let (_dir, db, app) = database().await;
        insert_token(&db, "a", &issued("access", "alice", "f1"), 1)
            .await
            .expect("insert");
        insert_token(&db, "b", &issued("access", "bob", "f2"), 1)
            .await
            .expect("insert");
        let revoke = |user: &'static str, app: ApplicationId| {
            let db = db.clone();
            async move {
                revoke_without_device_in(db.writer(), &app, &user_id(user))
                    .await
                    .expect("revoke")
            }
        };
        assert_eq!(
            revoke("alice", app.clone()).await,
            0,
            "alice still has an active device"
        );
        assert_eq!(revoke("bob", app.clone()).await, 1);
        sqlx::query("UPDATE enrollments SET status = 'pending_verification'")
            .execute(db.writer())
            .await
            .expect("update");
        assert_eq!(
            revoke("alice", app.clone()).await,
            1,
            "a device waiting for verification does not keep tokens alive"
        );
        // Another application's user of the same id keeps theirs.
        insert_token(&db, "c", &issued("access", "alice", "f3"), 1)
            .await
            .expect("insert");
        assert_eq!(revoke("alice", ApplicationId::generate()).await, 0);
        assert!(token(&db, "c").await.expect("read").is_some());
    }
}
