//! Policy evaluation time: a 50-rule policy (every kind of condition, the matching rule last)
//! evaluated for one request's inputs by the pure evaluator the server runs on every path that
//! authenticates. Criterion; `cargo bench -p tessera-tests --bench policy_eval` (under
//! `cargo test --benches` it runs each case once).

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use tessera_protocol::policy::{DeviceFacts, PolicyDocument, RequestKind};
use tessera_server::ip_table::IpReputation;
use tessera_server::policy::{AccessingFacts, CompiledPolicy, PolicyInputs};

/// 49 rules that do not match these inputs (each with a different kind of condition) and a
/// last one that does.
fn fifty_rules() -> PolicyDocument {
    let conditions = [
        json!({"networks": ["office"]}),
        json!({"countries": ["FR", "NL"]}),
        json!({"ip_reputation": ["High"]}),
        json!({"platforms": ["ios"]}),
        json!({"os_version_below": "12"}),
        json!({"app_version_below": "0.9"}),
        json!({"rooted": true}),
        json!({"recent_authentication": {"network": "office", "within_minutes": 60}}),
        json!({"push_requests": {"at_least": 50, "window_seconds": 600}}),
        json!({"time_of_day": {"from": "02:00", "to": "02:01", "time_zone": "Europe/Berlin"}}),
        json!({"geovelocity": {"max_kmh": 5000}}),
        json!({"transaction_field_above": {"field": "Amount", "above": 1000000}}),
        json!({"requests": ["ciba"], "outside_networks": ["office"]}),
    ];
    let mut rules: Vec<_> = (0..49)
        .map(|n| {
            json!({"name": format!("rule {n}"), "when": conditions[n % conditions.len()],
                   "then": {"action": "deny", "reason": "refused"}})
        })
        .collect();
    rules.push(json!({"name": "last", "when": {"requests": ["push"]},
                      "then": {"action": "require", "methods": ["mobile_push"]}}));
    serde_json::from_value(json!({
        "networks": {"office": ["203.0.113.0/24", "2001:db8::/48"]},
        "rules": rules,
        "default": {"action": "deny", "reason": "no rule matched"}
    }))
    .expect("the policy")
}

fn inputs() -> PolicyInputs {
    let now = 1_750_000_000;
    PolicyInputs {
        now,
        request: Some(RequestKind::Push),
        accessing_ip: Some("192.0.2.10".parse::<IpAddr>().expect("ip")),
        ip_table_loaded: true,
        accessing: AccessingFacts {
            country: Some("DE".into()),
            reputation: Some(IpReputation::Low),
            location: Some((52.52, 13.40)),
        },
        device: Some(DeviceFacts {
            platform: Some("android".into()),
            os_version: Some("15".into()),
            app_version: Some("1.0.0".into()),
            rooted: Some(false),
            screen_lock: Some(true),
            mdm: Some(false),
            attested: Some(true),
        }),
        recent_successes: (0..20)
            .map(|i| ("198.51.100.1".parse().expect("ip"), now - i * 60))
            .collect(),
        // 20 push requests in the last 10 minutes (below the rules' `at_least: 50`).
        push_counts: [(600, 20)].into_iter().collect(),
        previous_location: Some((48.86, 2.35, now - 7200)),
        ..PolicyInputs::default()
    }
}

fn bench(c: &mut Criterion) {
    let document = fifty_rules();
    let policy = CompiledPolicy::compile(1, &document).expect("compiles");
    let inputs = inputs();
    assert_eq!(policy.evaluate(&inputs).rule, "last");
    c.bench_function("policy: evaluate 50 rules (last matches)", |b| {
        b.iter(|| black_box(policy.evaluate(black_box(&inputs))))
    });
    c.bench_function("policy: compile 50 rules", |b| {
        b.iter(|| black_box(CompiledPolicy::compile(1, black_box(&document))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
