//! A decision's facts read ahead (`read_ahead`), on a real database (SQLite, and PostgreSQL when
//! `DATABASE_URL` names one): read for the version the application's last decision used, they
//! serve a decision only under a policy that looks at the same facts; under any other the
//! decision reads its own.

use std::collections::BTreeMap;

use tessera_protocol::policy::{PolicyDocument, PolicyEffect, RequestKind};

use super::{FactNeeds, Facts, FactsAhead, Request, decide_as_read, read_ahead};
use crate::domain::testing::TestDomain;

/// A policy that denies a user sent at least `at_least` pushes in the last `window` seconds,
/// and otherwise asks for a push.
fn counting(at_least: u64, window: u32) -> PolicyDocument {
    serde_json::from_value(serde_json::json!({
        "rules": [{
            "name": "bombed",
            "when": {"push_requests": {"at_least": at_least, "window_seconds": window}},
            "then": {"action": "deny", "reason": "too many pushes"}
        }],
        "default": {"action": "require", "methods": ["mobile_push"]}
    }))
    .expect("a policy")
}

fn push() -> Request<'static> {
    Request {
        kind: RequestKind::Push,
        accessing_ip: None,
        device: None,
        fields: &[],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_read_ahead_serve_only_a_policy_that_looks_at_the_same_facts() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (ctx, app) = (&domain.ctx, &domain.app.id);
        let (alice, _phone) = domain.user_with_device("alice").await;
        let bob = domain.user("bob").await;
        super::save(ctx, app, &counting(2, 600))
            .await
            .expect("saved");
        // Nothing is read ahead before a decision was made under the policy.
        assert!(
            read_ahead(ctx, app, &alice).await.expect("read").is_none(),
            "{engine:?}"
        );
        // Two approvals, each decided (the second with the facts read ahead: one push then).
        for _ in 0..2 {
            domain.ask(&alice, serde_json::json!({})).await;
        }
        let ahead = read_ahead(ctx, app, &alice)
            .await
            .expect("read")
            .expect("read ahead for the version decided under");
        assert_eq!(
            ahead.needs.windows,
            BTreeMap::from([(600, 2)]),
            "{engine:?}"
        );
        assert_eq!(ahead.facts.push_counts.get(&600), Some(&2), "{engine:?}");
        assert_eq!(ahead.now, ctx.now(), "{engine:?}");
        let first = crate::store::policies::current(&ctx.db, app)
            .await
            .expect("read")
            .expect("a policy");

        // Under the same policy the facts read ahead decide, with no read of their own: bob
        // has sent no push, but facts that say five deny him.
        let policy = ctx
            .compiled_policies
            .get_or_compile(app, &first)
            .expect("compiled");
        let said = FactsAhead {
            needs: FactNeeds::of(&policy),
            now: ctx.now(),
            facts: Facts {
                groups: Vec::new(),
                known_groups: Default::default(),
                recent_successes: Vec::new(),
                push_counts: BTreeMap::from([(600, 5)]),
                previous_location: None,
            },
        };
        let decided = decide_as_read(ctx, app, &bob, &push(), Some(&first), Some(said))
            .await
            .expect("decided")
            .expect("a policy");
        assert_eq!(decided.decision.effect, PolicyEffect::Deny, "{engine:?}");
        let decided = decide_as_read(ctx, app, &bob, &push(), Some(&first), None)
            .await
            .expect("decided")
            .expect("a policy");
        assert_eq!(decided.decision.effect, PolicyEffect::Require, "{engine:?}");

        // A new version that counts another window: alice's facts read ahead for the first
        // version (no count for that window) are not used, its own count denies her.
        super::save(ctx, app, &counting(1, 60))
            .await
            .expect("saved");
        let second = crate::store::policies::current(&ctx.db, app)
            .await
            .expect("read")
            .expect("a policy");
        let decided = decide_as_read(ctx, app, &alice, &push(), Some(&second), Some(ahead))
            .await
            .expect("decided")
            .expect("a policy");
        assert_eq!(decided.decision.version, second.version, "{engine:?}");
        assert_eq!(
            (decided.decision.effect, decided.decision.rule.as_str()),
            (PolicyEffect::Deny, "bombed"),
            "{engine:?}"
        );
        // And the next read ahead is for the version decided under last.
        let ahead = read_ahead(ctx, app, &alice)
            .await
            .expect("read")
            .expect("read ahead");
        assert_eq!(ahead.needs.windows, BTreeMap::from([(60, 1)]), "{engine:?}");
        assert_eq!(ahead.facts.push_counts.get(&60), Some(&1), "{engine:?}");
    }
}
