//! A policy's facts read in one statement (`store::policies::facts`) are what the statements of
//! each kind of fact read alone, on a real database (SQLite, and PostgreSQL when `DATABASE_URL`
//! names one): every combination of the five kinds, with rows of each and without.

use std::collections::BTreeMap;
use std::time::Duration;

use tessera_protocol::authentication::Decision;

use crate::domain::testing::TestDomain;
use crate::store::policies::{self, DecisionRecord, FactsRead, FactsWanted};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_in_one_statement_are_the_facts_read_apart() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let (db, app) = (&domain.ctx.db, &domain.app.id);
        let (alice, phone) = domain.user_with_device("alice").await;
        let (bob, _) = domain.user_with_device("bob").await;
        let carol = domain.user("carol").await;
        for (user, groups) in [(&alice, vec!["staff", "admins"]), (&bob, vec!["ops"])] {
            let groups: Vec<String> = groups.into_iter().map(String::from).collect();
            assert!(
                policies::set_groups(db, app, user, &groups)
                    .await
                    .expect("set")
            );
        }
        // Alice approved from two addresses, one of them twice, and was sent a push she did
        // not answer; the clock moves between them so that their times differ.
        for ip in ["203.0.113.5", "198.51.100.9", "203.0.113.5"] {
            let created = domain
                .ask(&alice, serde_json::json!({"accessing_ip": ip}))
                .await;
            let request = domain.pulled(&phone, &created.authentication_id).await;
            domain
                .answered_by(&phone, &request, Decision::Approve)
                .await
                .expect("approved");
            domain.clock.advance(Duration::from_secs(7));
        }
        domain.ask(&alice, serde_json::json!({})).await;
        // Two decisions with a location; the later one is the previous location.
        let now = domain.ctx.now();
        for (n, at, location) in [(1, now - 50, (48.85, 2.35)), (2, now - 20, (52.52, 13.4))] {
            // Keys of this application's own: on PostgreSQL the tests share one schema.
            let id = format!("pd_{app}_{n}");
            let record = DecisionRecord {
                id: &id,
                application_id: app,
                user_id: &alice,
                request_kind: "push",
                subject_id: None,
                policy_version: 1,
                rule: "r",
                action: "require",
                effect: "require",
                reason: "",
                inputs: "{}",
                methods: "[]",
                location: Some(location),
                created_at: at,
            };
            let mut write = db.write().await.expect("write");
            policies::record_decision_deferred(&mut write, &record)
                .await
                .expect("recorded");
            write.commit().await.expect("committed");
        }

        let named: Vec<String> = ["admins", "ops", "nobody"].map(String::from).to_vec();
        let windows: BTreeMap<u32, u32> = [(60, 1), (600, 100)].into();
        for user in [&alice, &bob, &carol] {
            for mask in 0..16u8 {
                let wanted = FactsWanted {
                    named_groups: if mask & 1 != 0 { &named } else { &[] },
                    approvals_since: (mask & 2 != 0).then_some(now - 3_600),
                    push_windows: &if mask & 4 != 0 {
                        windows.clone()
                    } else {
                        BTreeMap::new()
                    },
                    previous_location: mask & 8 != 0,
                };
                let mut apart = FactsRead::default();
                if mask & 1 != 0 {
                    apart.groups = policies::groups(db, app, user).await.expect("groups");
                    apart.known_groups = policies::known_groups(db, app, &named)
                        .await
                        .expect("known");
                }
                if let Some(since) = wanted.approvals_since {
                    apart.recent_successes = policies::recent_successes(db, app, user, since)
                        .await
                        .expect("approvals");
                }
                apart.push_counts = policies::push_counts(db, app, user, now, wanted.push_windows)
                    .await
                    .expect("counts");
                if wanted.previous_location {
                    apart.previous_location = policies::previous_location(db, app, user)
                        .await
                        .expect("location");
                }
                let together = policies::facts(db, app, user, now, &wanted)
                    .await
                    .expect("facts");
                assert_eq!(together, apart, "{engine:?}, {user:?}, parts {mask:04b}");
            }
        }
        // What the rows hold, so that the comparison above compared something.
        let all = FactsWanted {
            named_groups: &named,
            approvals_since: Some(now - 3_600),
            push_windows: &windows,
            previous_location: true,
        };
        let alices = policies::facts(db, app, &alice, now, &all)
            .await
            .expect("facts");
        assert_eq!(alices.groups, ["admins", "staff"], "{engine:?}");
        assert_eq!(alices.known_groups, ["admins", "ops"], "{engine:?}");
        let addresses: Vec<&str> = alices
            .recent_successes
            .iter()
            .map(|(ip, _)| ip.as_str())
            .collect();
        assert_eq!(addresses, ["203.0.113.5", "198.51.100.9"], "{engine:?}");
        assert_eq!(alices.push_counts, [(60, 1), (600, 4)].into(), "{engine:?}");
        assert_eq!(
            alices.previous_location,
            Some((52.52, 13.4, now - 20)),
            "{engine:?}"
        );
    }
}
