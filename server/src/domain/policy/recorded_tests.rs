//! A decision is stored with what it was made for, or not at all, on a real database (SQLite,
//! and PostgreSQL when `DATABASE_URL` names one): a request that its policy or the user's bypass
//! ends as it is made is one write with its ending's audit records and the decision (with its
//! own), so a decision that cannot be stored leaves no request, no audit record and no decision.

use serde_json::json;
use tessera_protocol::api::{AuthenticationStatus, CreateAuthenticationRequest};
use tessera_protocol::authentication::AuthenticationState;
use tessera_protocol::ids::UserId;

use crate::domain::DomainError;
use crate::domain::testing::TestDomain;
use crate::store::Engine;

/// The user whose decisions the database refuses.
const REFUSED: &str = "decision-refused";

/// Makes the database refuse every row inserted into `table` for `user`: a trigger named
/// `trigger` (the tests share PostgreSQL's database, so only that user's rows fail). Removed by
/// [`accept_again`].
async fn refuse_rows_of(domain: &TestDomain, table: &str, user: &str, trigger: &str) {
    let statements = match domain.ctx.db.engine() {
        Engine::Sqlite => vec![format!(
            "CREATE TRIGGER IF NOT EXISTS {trigger} BEFORE INSERT ON {table} \
             WHEN NEW.user_id = '{user}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )],
        Engine::Postgres => vec![
            format!(
                "CREATE OR REPLACE FUNCTION {trigger}() RETURNS trigger AS $$ \
                 BEGIN IF NEW.user_id = '{user}' THEN RAISE EXCEPTION 'refused'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql"
            ),
            format!(
                "CREATE OR REPLACE TRIGGER {trigger} BEFORE INSERT ON {table} \
                 FOR EACH ROW EXECUTE FUNCTION {trigger}()"
            ),
        ],
    };
    for statement in statements {
        sqlx::query(&statement)
            .execute(domain.ctx.db.pool())
            .await
            .expect("trigger");
    }
}

/// Removes [`refuse_rows_of`]'s trigger from PostgreSQL's shared database (a SQLite test
/// database is the test's own).
async fn accept_again(domain: &TestDomain, table: &str, trigger: &str) {
    if domain.ctx.db.engine() == Engine::Postgres {
        for statement in [
            format!("DROP TRIGGER IF EXISTS {trigger} ON {table}"),
            format!("DROP FUNCTION IF EXISTS {trigger}()"),
        ] {
            sqlx::query(&statement)
                .execute(domain.ctx.db.pool())
                .await
                .expect("dropped");
        }
    }
}

async fn ask(domain: &TestDomain, user: &UserId) -> Result<AuthenticationStatus, DomainError> {
    let body: CreateAuthenticationRequest =
        serde_json::from_value(json!({"kind": "approval"})).expect("a request");
    crate::domain::authentication::create(&domain.ctx, &domain.app, user, body).await
}

/// What is stored for `user`: requests, decisions, audit records.
async fn stored_for(domain: &TestDomain, user: &UserId) -> [i64; 3] {
    [
        domain.rows_of("authentications", user).await,
        domain.rows_of("policy_decisions", user).await,
        domain.rows_of("audit_log", user).await,
    ]
}

async fn save(domain: &TestDomain, policy: serde_json::Value) {
    let policy = serde_json::from_value(policy).expect("a policy");
    super::save(&domain.ctx, &domain.app.id, &policy)
        .await
        .expect("saved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_its_policy_or_bypass_ends_is_stored_with_its_decision_or_not_at_all() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        refuse_rows_of(&domain, "policy_decisions", REFUSED, "refuse_decisions").await;
        let (alice, _phone) = domain.user_with_device("alice").await;
        let refused: UserId = REFUSED.parse().expect("user id");
        domain.device_of(&domain.user(REFUSED).await, true).await;

        // Denied by the policy: the request, its decision, and their audit records.
        save(
            &domain,
            json!({"rules": [{"name": "no", "when": {"requests": ["push"]},
                              "then": {"action": "deny", "reason": "closed"}}],
                   "default": {"action": "require", "methods": ["mobile_push"]}}),
        )
        .await;
        let denied = ask(&domain, &alice).await.expect("answered");
        assert_eq!(denied.state, AuthenticationState::Failed, "{engine:?}");
        let [requests, decisions, audit] = stored_for(&domain, &alice).await;
        assert_eq!((requests, decisions), (1, 1), "{engine:?}");
        assert!(audit >= 2, "{engine:?}: {audit} audit records");
        // A decision that cannot be stored: the request is not either, nor any audit record.
        assert!(ask(&domain, &refused).await.is_err(), "{engine:?}");
        assert_eq!(stored_for(&domain, &refused).await, [0, 0, 0], "{engine:?}");

        // Ended by the user's bypass, under a policy that asks for a push: the same.
        save(
            &domain,
            json!({"rules": [], "default": {"action": "require", "methods": ["mobile_push"]}}),
        )
        .await;
        for user in [&alice, &refused] {
            let grant = tessera_protocol::bypass::SetBypassRequest {
                duration_seconds: Some(600),
                until: None,
                reason: "lost phone".into(),
            };
            crate::domain::bypass::grant(&domain.ctx, &domain.app.id, user, &grant)
                .await
                .expect("granted");
        }
        let bypassed = ask(&domain, &alice).await.expect("answered");
        assert_eq!(bypassed.state, AuthenticationState::Approved, "{engine:?}");
        let [requests, decisions, _] = stored_for(&domain, &alice).await;
        assert_eq!((requests, decisions), (2, 2), "{engine:?}");
        let audit_before = domain.rows_of("audit_log", &refused).await;
        assert!(ask(&domain, &refused).await.is_err(), "{engine:?}");
        assert_eq!(
            stored_for(&domain, &refused).await,
            [0, 0, audit_before],
            "{engine:?}: nothing but the bypass's own audit record"
        );
        accept_again(&domain, "policy_decisions", "refuse_decisions").await;
    }
}

/// A decision recorded alone (nothing else is stored for it: a refused pairing or CIBA
/// request) is one write with its audit record: an audit record that cannot be stored leaves no
/// decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_recorded_alone_is_stored_with_its_audit_record_or_not_at_all() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        refuse_rows_of(&domain, "audit_log", "audit-refused", "refuse_audit").await;
        save(
            &domain,
            json!({"rules": [], "default": {"action": "deny", "reason": "closed"}}),
        )
        .await;
        let (app, ctx) = (&domain.app.id, &domain.ctx);
        let request = super::Request {
            kind: tessera_protocol::policy::RequestKind::Pairing,
            accessing_ip: None,
            device: None,
            fields: &[],
        };
        for (name, stored) in [("bob", true), ("audit-refused", false)] {
            let user = domain.user(name).await;
            let decided = super::decide(ctx, app, &user, &request)
                .await
                .expect("decided")
                .expect("a policy");
            let recorded = super::record(ctx, app, &user, None, &decided).await;
            assert_eq!(recorded.is_ok(), stored, "{engine:?} {name}");
            let rows = [
                domain.rows_of("policy_decisions", &user).await,
                domain.rows_of("audit_log", &user).await,
            ];
            let expected = if stored { [1, 1] } else { [0, 0] };
            assert_eq!(rows, expected, "{engine:?} {name}");
        }
        accept_again(&domain, "audit_log", "refuse_audit").await;
    }
}
