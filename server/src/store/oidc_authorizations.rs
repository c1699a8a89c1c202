//! OIDC authorization requests (redirect MFA): the flow each one runs, the browser it is bound
//! to, the code issued once when the browser comes back, and the code's single redemption. The
//! race-prone steps are conditional updates: resuming (`resumed_at IS NULL`) and redeeming
//! (`code_used_at IS NULL`, in one transaction with the tokens it issues:
//! `oidc_tokens::issue` with `Spend::Code`).

use sqlx::Row;

use super::{Database, StoreError};

/// An authorization request as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAuthorization {
    /// Its id (the `request` parameter of the resume URL).
    pub id: String,
    /// The client.
    pub client_id: String,
    /// The client's application.
    pub application_id: String,
    /// The user (`login_hint`).
    pub user_id: String,
    /// The flow it runs.
    pub flow_id: String,
    /// The registered redirect URI it answers at.
    pub redirect_uri: String,
    /// The client's `state`, echoed.
    pub state: Option<String>,
    /// The client's `nonce`, put in the ID token.
    pub nonce: Option<String>,
    /// The PKCE S256 challenge.
    pub code_challenge: String,
    /// The granted scopes.
    pub scope: String,
    /// The requested `acr_values` (space separated).
    pub acr_values: Option<String>,
    /// SHA-256 of the browser cookie's value.
    pub browser_digest: String,
    /// The token family of everything issued from its code.
    pub family_id: String,
    /// When it was created.
    pub created_at: i64,
    /// When it (its flow) expires.
    pub expires_at: i64,
    /// When the browser came back (once).
    pub resumed_at: Option<i64>,
    /// The ID token's claims about the authentication (JSON), fixed at the resume.
    pub claims: Option<String>,
    /// When its code expires.
    pub code_expires_at: Option<i64>,
    /// When its code was redeemed.
    pub code_used_at: Option<i64>,
}

const COLUMNS: &str = "id, client_id, application_id, user_id, flow_id, redirect_uri, state, nonce, \
    code_challenge, scope, acr_values, browser_digest, family_id, created_at, expires_at, resumed_at, \
    claims, code_expires_at, code_used_at";

fn from_row(row: &sqlx::any::AnyRow) -> Result<StoredAuthorization, StoreError> {
    Ok(StoredAuthorization {
        id: row.try_get("id")?,
        client_id: row.try_get("client_id")?,
        application_id: row.try_get("application_id")?,
        user_id: row.try_get("user_id")?,
        flow_id: row.try_get("flow_id")?,
        redirect_uri: row.try_get("redirect_uri")?,
        state: row.try_get("state")?,
        nonce: row.try_get("nonce")?,
        code_challenge: row.try_get("code_challenge")?,
        scope: row.try_get("scope")?,
        acr_values: row.try_get("acr_values")?,
        browser_digest: row.try_get("browser_digest")?,
        family_id: row.try_get("family_id")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        resumed_at: row.try_get("resumed_at")?,
        claims: row.try_get("claims")?,
        code_expires_at: row.try_get("code_expires_at")?,
        code_used_at: row.try_get("code_used_at")?,
    })
}

/// Stores a new authorization request.
pub async fn insert(db: &Database, a: &StoredAuthorization) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO oidc_authorizations ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
         $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
    ))
    .bind(&a.id)
    .bind(&a.client_id)
    .bind(&a.application_id)
    .bind(&a.user_id)
    .bind(&a.flow_id)
    .bind(&a.redirect_uri)
    .bind(a.state.as_deref())
    .bind(a.nonce.as_deref())
    .bind(&a.code_challenge)
    .bind(&a.scope)
    .bind(a.acr_values.as_deref())
    .bind(&a.browser_digest)
    .bind(&a.family_id)
    .bind(a.created_at)
    .bind(a.expires_at)
    .bind(a.resumed_at)
    .bind(a.claims.as_deref())
    .bind(a.code_expires_at)
    .bind(a.code_used_at)
    .execute(db.writer())
    .await?;
    Ok(())
}

/// One authorization request by its id.
pub async fn get(db: &Database, id: &str) -> Result<Option<StoredAuthorization>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM oidc_authorizations WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// The authorization request whose code has this digest.
pub async fn by_code(
    db: &Database,
    code_digest: &str,
) -> Result<Option<StoredAuthorization>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM oidc_authorizations WHERE code_digest = $1"
    ))
    .bind(code_digest)
    .fetch_optional(db.writer())
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// The claims of the authorization request that started a token family, if it was one.
pub async fn claims_of_family(
    db: &Database,
    family_id: &str,
) -> Result<Option<String>, StoreError> {
    let row = sqlx::query("SELECT claims FROM oidc_authorizations WHERE family_id = $1")
        .bind(family_id)
        .fetch_optional(db.pool())
        .await?;
    Ok(match row {
        Some(row) => row.try_get("claims")?,
        None => None,
    })
}

/// Takes the resume of an authorization request bound to `browser_digest`, once: stores the
/// claims, the user (a passkey sign-in learns it from its flow) and, when the flow succeeded,
/// the code's digest and expiry. `false` if it was
/// resumed before (or is another browser's): whoever comes second gets nothing.
pub async fn resume(
    db: &Database,
    id: &str,
    browser_digest: &str,
    user_id: &str,
    claims: Option<&str>,
    code: Option<(&str, i64)>,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "UPDATE oidc_authorizations SET resumed_at = $3, claims = $4, code_digest = $5, \
         code_expires_at = $6, user_id = $7 WHERE id = $1 AND browser_digest = $2 AND resumed_at IS NULL",
    )
    .bind(id)
    .bind(browser_digest)
    .bind(now)
    .bind(claims)
    .bind(code.map(|(digest, _)| digest))
    .bind(code.map(|(_, expires_at)| expires_at))
    .bind(user_id)
    .execute(db.writer())
    .await?
    .rows_affected()
        == 1)
}

#[cfg(test)]
mod tests {
    use tessera_protocol::ids::ApplicationId;

    use super::*;
    use crate::store::oidc_tokens::{Issued, IssuedToken, Spend, issue};

    /// Redeems `code` for `tokens`, as the token endpoint does; `true` if it was not used.
    async fn redeem(
        db: &Database,
        code: &str,
        tokens: &[(String, IssuedToken)],
        now: i64,
    ) -> Result<bool, StoreError> {
        let app: String = sqlx::query_scalar("SELECT id FROM applications")
            .fetch_one(db.pool())
            .await?;
        let app: ApplicationId = app.parse().expect("application id");
        let alice = "alice".parse().expect("user id");
        let issued = issue(db, &app, &alice, Spend::Code { digest: code }, tokens, now).await?;
        Ok(issued == Issued::Stored)
    }

    async fn database() -> (tempfile::TempDir, Database) {
        let redirect_uris = vec!["https://rp.example/cb".into()];
        let (dir, db, app) = crate::store::oidc_tokens::with_client(redirect_uris).await;
        insert(
            &db,
            &StoredAuthorization {
                id: "azr_1".into(),
                client_id: "client".into(),
                application_id: app.as_str().into(),
                user_id: "alice".into(),
                flow_id: "flow".into(),
                redirect_uri: "https://rp.example/cb".into(),
                state: Some("s".into()),
                nonce: None,
                code_challenge: "c".into(),
                scope: "openid".into(),
                acr_values: None,
                browser_digest: "browser".into(),
                family_id: "family".into(),
                created_at: 0,
                expires_at: 600,
                resumed_at: None,
                claims: None,
                code_expires_at: None,
                code_used_at: None,
            },
        )
        .await
        .expect("authorization");
        (dir, db)
    }

    fn token(digest_kind: &str) -> IssuedToken {
        IssuedToken {
            kind: digest_kind.into(),
            client_id: "client".into(),
            user_id: "alice".into(),
            scope: "openid".into(),
            acr: "mfa".into(),
            amr: "[]".into(),
            auth_time: 0,
            expires_at: 10_000,
            used_at: None,
            family_id: Some("family".into()),
        }
    }

    #[tokio::test]
    async fn a_request_resumes_once_and_only_in_its_browser() {
        let (_dir, db) = database().await;
        let resumed = resume(
            &db,
            "azr_1",
            "other",
            "alice",
            Some("{}"),
            Some(("code", 60)),
            1,
        )
        .await
        .expect("resume");
        assert!(!resumed, "another browser's digest");
        let attempts = (0..8).map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                let code = format!("code-{i}");
                resume(
                    &db,
                    "azr_1",
                    "browser",
                    "alice",
                    Some("{}"),
                    Some((&code, 60)),
                    1,
                )
                .await
                .expect("resume")
            })
        });
        let mut won = 0;
        for attempt in attempts {
            won += usize::from(attempt.await.expect("task"));
        }
        assert_eq!(won, 1);
        let stored = get(&db, "azr_1").await.expect("read").expect("row");
        assert_eq!(stored.resumed_at, Some(1));
        assert_eq!(stored.code_expires_at, Some(60));
    }

    #[tokio::test]
    async fn a_code_is_redeemed_once_and_losers_store_nothing() {
        let (_dir, db) = database().await;
        assert!(
            resume(
                &db,
                "azr_1",
                "browser",
                "alice",
                Some("{}"),
                Some(("code", 60)),
                1
            )
            .await
            .expect("resume")
        );
        let attempts = (0..8).map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                let tokens = vec![(format!("access-{i}"), token("access"))];
                redeem(&db, "code", &tokens, 2).await.expect("redeem")
            })
        });
        let mut won = 0;
        for attempt in attempts {
            won += usize::from(attempt.await.expect("task"));
        }
        assert_eq!(won, 1);
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM oidc_tokens")
            .fetch_one(db.pool())
            .await
            .expect("count");
        assert_eq!(stored, 1);
        let used = by_code(&db, "code").await.expect("read").expect("row");
        assert_eq!(used.code_used_at, Some(2));
        assert_eq!(
            claims_of_family(&db, "family")
                .await
                .expect("claims")
                .as_deref(),
            Some("{}")
        );
    }

    #[tokio::test]
    async fn authorizations_are_purged_only_once_their_tokens_are_gone() {
        let (_dir, db) = database().await;
        assert!(
            resume(
                &db,
                "azr_1",
                "browser",
                "alice",
                Some("{}"),
                Some(("code", 60)),
                1
            )
            .await
            .expect("resume")
        );
        let tokens = vec![("access".to_string(), token("access"))];
        assert!(redeem(&db, "code", &tokens, 2).await.expect("redeem"));
        let day = 86_400;
        // The request (expired at 600) is past retention, its token (expires at 10,000) lives.
        let purged = crate::store::retention::purge(&db, 1, 600 + day + 1)
            .await
            .expect("purge");
        assert_eq!(purged.oidc_authorizations, 0);
        assert!(get(&db, "azr_1").await.expect("read").is_some());
        let purged = crate::store::retention::purge(&db, 1, 10_000 + day + 1)
            .await
            .expect("purge");
        assert_eq!((purged.oidc_tokens, purged.oidc_authorizations), (1, 1));
        assert!(get(&db, "azr_1").await.expect("read").is_none());
    }
}
