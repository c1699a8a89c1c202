use super::*;

fn policy(json: serde_json::Value) -> CompiledPolicy {
    let doc: PolicyDocument = serde_json::from_value(json).unwrap();
    CompiledPolicy::compile(7, &doc).unwrap()
}

fn refusal(json: serde_json::Value) -> PolicyError {
    let doc: PolicyDocument = serde_json::from_value(json).unwrap();
    CompiledPolicy::compile(1, &doc).unwrap_err()
}

fn inputs(kind: RequestKind) -> PolicyInputs {
    PolicyInputs {
        now: 1_750_000_000,
        request: Some(kind),
        ip_table_loaded: true,
        ..PolicyInputs::default()
    }
}

fn ip(text: &str) -> Option<IpAddr> {
    Some(text.parse().unwrap())
}

/// One rule with `when`, approving when it matches; the default requires a push.
fn one_rule(when: serde_json::Value) -> CompiledPolicy {
    policy(json!({
        "networks": {"office": ["203.0.113.0/24"], "vpn": ["10.0.0.0/8"]},
        "rules": [{"name": "r", "when": when, "then": {"action": "approve"}}],
        "default": {"action": "require", "methods": ["mobile_push"]}
    }))
}

fn matched(p: &CompiledPolicy, i: &PolicyInputs) -> bool {
    let d = p.evaluate(i);
    assert_ne!(d.effect, PolicyEffect::Deny, "{d:?}");
    d.rule == "r"
}

#[test]
fn the_first_matching_rule_wins_and_the_default_applies_otherwise() {
    let p = policy(json!({
        "networks": {"office": ["203.0.113.0/24"]},
        "rules": [
            {"name": "office", "when": {"networks": ["office"]}, "then": {"action": "approve"}},
            {"name": "push", "when": {"requests": ["push"]}, "then": {"action": "deny", "reason": "no"}},
        ],
        "default": {"action": "require", "methods": ["sms", "email"]}
    }));
    let mut i = inputs(RequestKind::Push);
    i.accessing_ip = ip("203.0.113.9");
    let d = p.evaluate(&i);
    assert_eq!(
        (d.rule.as_str(), d.effect, d.version),
        ("office", PolicyEffect::Approve, 7)
    );
    assert_eq!(d.looked_at["accessing_ip"], json!("203.0.113.9"));
    i.accessing_ip = ip("198.51.100.1");
    let d = p.evaluate(&i);
    assert_eq!(
        (d.rule.as_str(), d.effect, d.reason.as_str()),
        ("push", PolicyEffect::Deny, "no")
    );
    let d = p.evaluate(&inputs(RequestKind::Qr));
    assert_eq!((d.rule.as_str(), d.action), (DEFAULT_RULE, "require"));
    assert_eq!(d.methods, vec![PolicyMethod::Sms, PolicyMethod::Email]);
    assert!(d.allows(PolicyMethod::Sms) && !d.allows(PolicyMethod::MobilePush));
    assert_eq!(d.outcome().rule, DEFAULT_RULE);
}

#[test]
fn groups_request_kinds_and_networks() {
    let p = one_rule(json!({"groups": ["admins"], "requests": ["push", "qr"]}));
    let mut i = inputs(RequestKind::Push);
    i.known_groups = ["admins".to_string()].into();
    assert!(!matched(&p, &i));
    i.groups = vec!["admins".into()];
    assert!(matched(&p, &i));
    i.request = Some(RequestKind::Ciba);
    assert!(!matched(&p, &i));

    let p = one_rule(json!({"outside_networks": ["office", "vpn"]}));
    let mut i = inputs(RequestKind::Push);
    i.accessing_ip = ip("10.1.2.3");
    assert!(!matched(&p, &i));
    i.accessing_ip = ip("192.0.2.1");
    assert!(matched(&p, &i));
    i.accessing_ip = None;
    assert!(matched(&p, &i), "no accessing IP is not inside a network");
}

#[test]
fn an_unknown_group_fails_closed() {
    let p = one_rule(json!({"groups": ["ghosts"]}));
    let d = p.evaluate(&inputs(RequestKind::Push));
    assert_eq!((d.effect, d.rule.as_str()), (PolicyEffect::Deny, "r"));
    assert!(d.reason.contains("ghosts"), "{}", d.reason);
}

#[test]
fn country_and_reputation_need_the_ip_table() {
    let p = one_rule(json!({"countries": ["de"], "ip_reputation": ["High", "Medium"]}));
    let mut i = inputs(RequestKind::Push);
    i.accessing_ip = ip("198.51.100.7");
    i.accessing = AccessingFacts {
        country: Some("DE".into()),
        reputation: Some(IpReputation::High),
        location: None,
    };
    assert!(matched(&p, &i));
    assert_eq!(p.evaluate(&i).looked_at["ip_reputation"], json!("High"));
    i.accessing.reputation = Some(IpReputation::Low);
    assert!(!matched(&p, &i));
    i.ip_table_loaded = false;
    let d = p.evaluate(&i);
    assert_eq!(d.effect, PolicyEffect::Deny);
    assert!(d.reason.contains("no IP table"), "{}", d.reason);
}

#[test]
fn device_platform_versions_and_posture() {
    let p = one_rule(json!({"platforms": ["android"], "os_version_below": "14", "rooted": true}));
    let mut i = inputs(RequestKind::Pairing);
    assert!(!matched(&p, &i), "no device: device conditions do not hold");
    i.device = Some(DeviceFacts {
        platform: Some("android".into()),
        os_version: Some("13.1".into()),
        app_version: Some("2.0".into()),
        rooted: Some(true),
        screen_lock: Some(true),
        mdm: None,
        attested: None,
    });
    assert!(matched(&p, &i));
    i.device.as_mut().unwrap().os_version = Some("14.0.1".into());
    assert!(!matched(&p, &i));
    i.device.as_mut().unwrap().os_version = Some("garbled".into());
    assert!(matched(&p, &i), "an unreadable version counts as old");

    let p = one_rule(json!({"app_version_below": "2.1", "screen_lock": true, "mdm": false}));
    i.device.as_mut().unwrap().mdm = Some(false);
    assert!(matched(&p, &i));
    i.device.as_mut().unwrap().app_version = Some("2.1.0".into());
    assert!(!matched(&p, &i));
}

#[test]
fn attested_key_is_false_until_attestation_exists() {
    let i = inputs(RequestKind::Push);
    assert!(!matched(&one_rule(json!({"attested_key": true})), &i));
    assert!(matched(&one_rule(json!({"attested_key": false})), &i));
}

#[test]
fn recent_authentication_from_a_network() {
    let p = one_rule(json!({"recent_authentication": {"network": "office", "within_minutes": 30}}));
    let mut i = inputs(RequestKind::Push);
    i.recent_successes = vec![("203.0.113.5".parse().unwrap(), i.now - 31 * 60)];
    assert!(!matched(&p, &i));
    i.recent_successes
        .push(("198.51.100.1".parse().unwrap(), i.now - 60));
    assert!(!matched(&p, &i));
    i.recent_successes
        .push(("203.0.113.5".parse().unwrap(), i.now - 29 * 60));
    assert!(matched(&p, &i));
    assert_eq!(p.recent_lookback_seconds(), 1800);
}

/// Each window is counted up to the largest number a rule compares its count with, whether a
/// condition (`at_least`) or a limit (`max`, of a rule or the default).
#[test]
fn push_windows_keep_the_largest_number_compared() {
    let p = policy(json!({
        "rules": [
            {"name": "a", "when": {"push_requests": {"at_least": 3, "window_seconds": 60}},
             "then": {"action": "limit_push", "max": 7, "window_seconds": 600}},
            {"name": "b", "when": {"push_requests": {"at_least": 9, "window_seconds": 600}},
             "then": {"action": "deny", "reason": "too many"}},
            {"name": "c", "when": {"push_requests": {"at_least": 2, "window_seconds": 60}},
             "then": {"action": "limit_push", "max": 1, "window_seconds": 30}}
        ],
        "default": {"action": "limit_push", "max": 5, "window_seconds": 60}
    }));
    assert_eq!(
        p.push_windows(),
        BTreeMap::from([(30, 1), (60, 5), (600, 9)])
    );
}

#[test]
fn push_counts_and_limit_push() {
    let p = one_rule(json!({"push_requests": {"at_least": 3, "window_seconds": 60}}));
    let mut i = inputs(RequestKind::Push);
    assert_eq!(p.push_windows(), BTreeMap::from([(60, 3)]));
    i.push_counts = BTreeMap::from([(60, 2)]);
    assert!(!matched(&p, &i));
    i.push_counts = BTreeMap::from([(60, 3)]);
    assert!(matched(&p, &i));

    let p = policy(json!({
        "rules": [],
        "default": {"action": "limit_push", "max": 2, "window_seconds": 300}
    }));
    assert_eq!(p.push_windows(), BTreeMap::from([(300, 2)]));
    let mut i = inputs(RequestKind::Push);
    i.push_counts = BTreeMap::from([(300, 1)]);
    let d = p.evaluate(&i);
    assert_eq!((d.action, d.effect), ("limit_push", PolicyEffect::Require));
    assert!(d.methods.is_empty() && d.allows(PolicyMethod::MobilePush));
    // The limit goes with the decision, to be taken again atomically where the request is
    // stored.
    assert_eq!(
        d.push_limit,
        Some(super::PushLimit {
            max: 2,
            window_seconds: 300
        })
    );
    i.push_counts = BTreeMap::from([(300, 2)]);
    let d = p.evaluate(&i);
    assert_eq!((d.action, d.effect), ("limit_push", PolicyEffect::Deny));
    assert!(d.reason.contains("too many push requests"), "{}", d.reason);
    assert_eq!(d.push_limit, None);
}

#[test]
fn time_of_day_in_a_time_zone_follows_daylight_saving() {
    let p = one_rule(
        json!({"time_of_day": {"from": "09:00", "to": "17:00", "time_zone": "Europe/Berlin"}}),
    );
    let mut i = inputs(RequestKind::Push);
    // 2025-01-15 08:30 UTC is 09:30 in Berlin (CET, +1).
    i.now = 1_736_929_800;
    assert!(matched(&p, &i));
    // 2025-07-15 15:30 UTC is 17:30 in Berlin (CEST, +2): outside.
    i.now = 1_752_593_400;
    assert!(!matched(&p, &i));
    // Across midnight.
    let p = one_rule(json!({"time_of_day": {"from": "22:00", "to": "06:00", "time_zone": "UTC"}}));
    i.now = 1_752_537_600 + 23 * 3600; // 2025-07-15 23:00 UTC
    assert!(matched(&p, &i));
    i.now = 1_752_537_600 + 12 * 3600;
    assert!(!matched(&p, &i));
}

#[test]
fn geovelocity_compares_with_the_previous_location() {
    let p = one_rule(json!({"geovelocity": {"max_kmh": 900.0}}));
    let mut i = inputs(RequestKind::Push);
    i.accessing_ip = ip("198.51.100.7");
    i.accessing.location = Some((52.52, 13.40)); // Berlin
    assert!(!matched(&p, &i), "no previous location");
    // New York an hour ago: about 6400 km/h.
    i.previous_location = Some((40.71, -74.01, i.now - 3600));
    assert!(matched(&p, &i));
    // A day ago: about 266 km/h.
    i.previous_location = Some((40.71, -74.01, i.now - 86_400));
    assert!(!matched(&p, &i));
    i.ip_table_loaded = false;
    assert_eq!(p.evaluate(&i).effect, PolicyEffect::Deny);
    let km = distance_km((52.52, 13.40), (48.86, 2.35));
    assert!((870.0..890.0).contains(&km), "{km}");
}

#[test]
fn transaction_field_thresholds() {
    let p = one_rule(json!({"transaction_field_above": {"field": "amount", "above": 1000.0}}));
    let mut i = inputs(RequestKind::Transaction);
    assert!(!matched(&p, &i), "no such field");
    i.fields = vec![("Amount".into(), "1,200.50 EUR".into())];
    assert!(matched(&p, &i));
    i.fields = vec![("Amount".into(), "EUR 999".into())];
    assert!(!matched(&p, &i));
    i.fields = vec![("Amount".into(), "a lot".into())];
    assert_eq!(
        p.evaluate(&i).effect,
        PolicyEffect::Deny,
        "not a number: fails closed"
    );
}

#[test]
fn invalid_policies_name_the_rule_at_fault() {
    let base = |rule: serde_json::Value| {
        json!({"networks": {"office": ["203.0.113.0/24"]}, "rules": [
            {"name": "fine", "then": {"action": "approve"}}, rule],
            "default": {"action": "approve"}})
    };
    for (rule, says) in [
        (
            json!({"name": "bad net", "when": {"networks": ["home"]}, "then": {"action": "approve"}}),
            "home",
        ),
        (
            json!({"name": "bad tz", "when": {"time_of_day": {"from": "09:00", "to": "17:00", "time_zone": "Mars/Olympus"}}, "then": {"action": "approve"}}),
            "time zone",
        ),
        (
            json!({"name": "bad clock", "when": {"time_of_day": {"from": "9", "to": "17:00", "time_zone": "UTC"}}, "then": {"action": "approve"}}),
            "HH:MM",
        ),
        (
            json!({"name": "empty", "then": {"action": "require", "methods": []}}),
            "no method",
        ),
        (
            json!({"name": "fido", "then": {"action": "require", "methods": ["fido2", "fido2"]}}),
            "twice",
        ),
        (
            json!({"name": "silent deny", "then": {"action": "deny", "reason": " "}}),
            "deny reason",
        ),
        (
            json!({"name": "hidden", "then": {"action": "deny", "reason": "ok\u{202e}"}}),
            "bidirectional",
        ),
        (
            json!({"name": "limit", "then": {"action": "limit_push", "max": 0, "window_seconds": 60}}),
            "limit_push",
        ),
        (
            json!({"name": "version", "when": {"os_version_below": "new"}, "then": {"action": "approve"}}),
            "os_version_below",
        ),
        (
            json!({"name": "country", "when": {"countries": ["Germany"]}, "then": {"action": "approve"}}),
            "country",
        ),
        (
            json!({"name": "fine", "then": {"action": "approve"}}),
            "two rules",
        ),
        (
            json!({"name": "default", "then": {"action": "approve"}}),
            "default",
        ),
        (
            json!({"name": "speed", "when": {"geovelocity": {"max_kmh": 0.0}}, "then": {"action": "approve"}}),
            "geovelocity",
        ),
    ] {
        let name = rule["name"].as_str().unwrap().to_string();
        let e = refusal(base(rule));
        assert_eq!(e.place, format!("rule \"{name}\""), "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
    let e = refusal(
        json!({"networks": {"office": ["not a block"]}, "rules": [], "default": {"action": "approve"}}),
    );
    assert_eq!(e.place, "network \"office\"");
    let e = refusal(json!({"rules": [], "default": {"action": "require", "methods": []}}));
    assert_eq!(e.place, "default");
    // Unknown fields are refused when the document is read.
    assert!(
        serde_json::from_value::<PolicyDocument>(
            json!({"rules": [], "default": {"action": "approve"}, "extra": 1})
        )
        .is_err()
    );
}

#[test]
fn versions_compare_numerically() {
    assert!(version_below(
        &parse_version("9.3").unwrap(),
        &parse_version("10").unwrap()
    ));
    assert!(!version_below(
        &parse_version("10.0.0").unwrap(),
        &parse_version("10").unwrap()
    ));
    assert!(version_below(
        &parse_version("16.4").unwrap(),
        &parse_version("16.4.1").unwrap()
    ));
    assert_eq!(parse_version("2.0-beta"), Some(vec![2, 0]));
    assert_eq!(parse_version(""), None);
}

#[test]
fn a_fifty_rule_policy_decides_by_the_last_rule() {
    let mut rules: Vec<serde_json::Value> = (0..49)
        .map(|n| json!({"name": format!("r{n}"), "when": {"countries": ["FR"], "requests": ["push"]}, "then": {"action": "deny", "reason": "x"}}))
        .collect();
    rules.push(
        json!({"name": "last", "when": {"requests": ["push"]}, "then": {"action": "approve"}}),
    );
    let p = policy(json!({"rules": rules, "default": {"action": "approve"}}));
    let mut i = inputs(RequestKind::Push);
    i.accessing_ip = ip("198.51.100.7");
    i.accessing.country = Some("DE".into());
    assert_eq!(p.evaluate(&i).rule, "last");
}
