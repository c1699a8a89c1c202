//! End to end: the application's authentication policy (`docs/policy.md`) — versioned rules
//! managed through the customer API, each condition and action on push authentications, the
//! decision on every other path (QR after the scan, CIBA, flows, passcodes and backup codes,
//! pairing), the dry run agreeing with real decisions, and failing closed. On SQLite and
//! PostgreSQL.
//!
//! Grouped: `management` (versions, groups, invalid policies), `conditions` (one test per
//! condition, on push and transaction requests), `actions`, `paths`, `dry_run`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tessera_examples::customer::CustomerApiError;
use tessera_protocol::api::{AuthenticationStatus, CreateAuthenticationRequest};
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState, DisplayField};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::EnrollmentId;
use tessera_protocol::policy::{
    EvaluatePolicyRequest, PolicyDocument, PolicyEffect, PolicyOutcome, RequestKind,
};
use tessera_server::{IpTable, ManualClock};
use tessera_tests::{Backend, TestDevice, TestServer, ask, device_config};

/// The IP table every test that needs one runs with: an office block, a high-risk block in
/// another country, Berlin and New York with their locations.
const IP_TABLE: &str = "\
203.0.113.0/24,DE,Low,52.52,13.40\n\
198.51.100.0/24,RU,High\n\
192.0.2.0/25,DE,Low,52.52,13.40\n\
192.0.2.128/25,US,Medium,40.71,-74.01\n";

const OFFICE_IP: &str = "203.0.113.10";
const HIGH_RISK_IP: &str = "198.51.100.66";
const BERLIN_IP: &str = "192.0.2.10";
const NEW_YORK_IP: &str = "192.0.2.200";

async fn start(backend: Backend) -> TestServer {
    // No log subscriber here: the test binary's one global subscriber is `logs::capture`'s,
    // which the log-secrecy tests need to see every line.
    TestServer::start_with(backend, |c| {
        c.accessing_ip_table = IpTable::from_csv(IP_TABLE).unwrap();
    })
    .await
}

/// [`start`] on a clock the test moves.
async fn start_on_a_clock(backend: Backend) -> (TestServer, ManualClock) {
    let clock = ManualClock::new();
    let server = TestServer::start_with(backend, |c| {
        c.accessing_ip_table = IpTable::from_csv(IP_TABLE).unwrap();
        c.clock = Arc::new(clock.clone());
    })
    .await;
    (server, clock)
}

async fn paired(server: &TestServer, user: &str) -> (TestDevice, EnrollmentId) {
    server.user(user).await;
    let device = TestDevice::new().await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri(user).await, None)
        .await
        .unwrap();
    (device, enrollment.enrollment_id)
}

fn document(value: Value) -> PolicyDocument {
    serde_json::from_value(value).unwrap()
}

/// Saves a policy with the office network, `rules`, and a default that asks for a push.
async fn set_rules(server: &TestServer, rules: Value) -> u32 {
    server
        .customer
        .set_policy(&document(json!({
            "networks": {"office": ["203.0.113.0/24"]},
            "rules": rules,
            "default": {"action": "require", "methods": ["mobile_push"]}
        })))
        .await
        .unwrap()
        .version
}

fn from(ip: &str) -> CreateAuthenticationRequest {
    CreateAuthenticationRequest {
        accessing_ip: Some(ip.into()),
        ..ask(AuthenticationKind::Approval)
    }
}

async fn push(
    server: &TestServer,
    user: &str,
    body: &CreateAuthenticationRequest,
) -> AuthenticationStatus {
    server
        .customer
        .create_authentication(user, body)
        .await
        .unwrap()
}

fn policy_of(status: &AuthenticationStatus) -> &PolicyOutcome {
    status.policy.as_ref().expect("a policy decision")
}

/// The request was ended by the policy's `deny` of `rule`.
fn assert_denied(status: &AuthenticationStatus, rule: &str) {
    assert_eq!(status.state, AuthenticationState::Failed, "{status:?}");
    assert_eq!(status.failure_reason.as_deref(), Some("policy_denied"));
    let p = policy_of(status);
    assert_eq!(
        (p.rule.as_str(), p.effect),
        (rule, PolicyEffect::Deny),
        "{p:?}"
    );
}

/// The request went to the device (no rule of `denied_rules` stopped it).
fn assert_asked(status: &AuthenticationStatus) {
    assert_eq!(status.state, AuthenticationState::Pending, "{status:?}");
    assert_eq!(policy_of(status).effect, PolicyEffect::Require);
}

fn refused_with(result: Result<impl std::fmt::Debug, CustomerApiError>, code: ErrorCode) -> String {
    match result {
        Err(e) => {
            assert_eq!(e.code(), Some(code), "{e}");
            e.to_string()
        }
        Ok(v) => panic!("expected {code}, got {v:?}"),
    }
}

mod management {
    use super::*;
    use tessera_tests::on_each_backend;

    on_each_backend! {
        every_change_is_a_new_version_and_decisions_name_theirs => versions;
        invalid_policies_are_refused_naming_the_rule_and_save_nothing => invalid;
        groups_come_from_the_customer_api_and_unknown_groups_fail_closed => groups;
        the_first_matching_rule_wins => rule_order;
        concurrent_saves_each_get_their_own_version => concurrent_saves;
    }

    async fn concurrent_saves(backend: Backend) {
        let server = start(backend).await;
        let saves = (0..8).map(|n| {
            let customer = server.customer.clone();
            tokio::spawn(async move {
                customer
                    .set_policy(&document(json!({
                        "rules": [{"name": format!("save {n}"), "then": {"action": "approve"}}],
                        "default": {"action": "approve"}
                    })))
                    .await
                    .unwrap()
                    .version
            })
        });
        let mut versions = Vec::new();
        for save in saves {
            versions.push(save.await.unwrap());
        }
        versions.sort_unstable();
        assert_eq!(versions, (1..=8).collect::<Vec<u32>>());
        assert_eq!(
            server
                .customer
                .policy_versions()
                .await
                .unwrap()
                .versions
                .len(),
            8
        );
    }

    async fn versions(backend: Backend) {
        let server = start(backend).await;
        paired(&server, "alice").await;
        assert_eq!(
            server.customer.policy().await.unwrap_err().code(),
            Some(ErrorCode::NotFound)
        );
        // Without a policy nothing is decided.
        assert!(
            push(&server, "alice", &from(OFFICE_IP))
                .await
                .policy
                .is_none()
        );
        let v1 = set_rules(&server, json!([])).await;
        let first = push(&server, "alice", &from(OFFICE_IP)).await;
        let v2 = set_rules(
            &server,
            json!([{"name": "office", "when": {"networks": ["office"]}, "then": {"action": "approve"}}]),
        )
        .await;
        assert_eq!((v1, v2), (1, 2));
        let second = push(&server, "alice", &from(OFFICE_IP)).await;
        assert_eq!(
            (policy_of(&first).version, policy_of(&first).rule.as_str()),
            (1, "default")
        );
        assert_eq!(
            (policy_of(&second).version, policy_of(&second).rule.as_str()),
            (2, "office")
        );
        // The first request reads as decided by version 1 still.
        let again = server
            .customer
            .authentication(&first.authentication_id, 0)
            .await
            .unwrap();
        assert_eq!(policy_of(&again).version, 1);
        let versions = server.customer.policy_versions().await.unwrap().versions;
        assert_eq!(
            versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(versions[0].policy.rules.is_empty());
        assert_eq!(server.customer.policy().await.unwrap().version, 2);
    }

    async fn invalid(backend: Backend) {
        let server = start(backend).await;
        set_rules(&server, json!([])).await;
        for (rule, says) in [
            (
                json!({"name": "home", "when": {"networks": ["home"]}, "then": {"action": "approve"}}),
                "home",
            ),
            (
                json!({"name": "tz", "when": {"time_of_day": {"from": "09:00", "to": "17:00", "time_zone": "Nowhere/City"}}, "then": {"action": "approve"}}),
                "time zone",
            ),
            (
                json!({"name": "fido", "then": {"action": "require", "methods": ["fido2", "fido2"]}}),
                "twice",
            ),
            (
                json!({"name": "mute", "then": {"action": "deny", "reason": ""}}),
                "reason",
            ),
        ] {
            let name = rule["name"].as_str().unwrap().to_string();
            let message = refused_with(
                server
                    .customer
                    .set_policy(&document(json!({
                        "networks": {"office": ["203.0.113.0/24"]},
                        "rules": [rule],
                        "default": {"action": "approve"}
                    })))
                    .await,
                ErrorCode::InvalidRequest,
            );
            assert!(message.contains(&format!("rule \"{name}\"")), "{message}");
            assert!(message.contains(says), "{message}");
        }
        // Nothing was saved.
        assert_eq!(
            server
                .customer
                .policy_versions()
                .await
                .unwrap()
                .versions
                .len(),
            1
        );
    }

    async fn groups(backend: Backend) {
        let server = start(backend).await;
        paired(&server, "alice").await;
        paired(&server, "bob").await;
        set_rules(
            &server,
            json!([{"name": "admins", "when": {"groups": ["admins"]}, "then": {"action": "deny", "reason": "admins use the hardware key"}}]),
        )
        .await;
        // No user is in `admins` yet: the group is unknown, and the policy fails closed.
        let status = push(&server, "bob", &from(BERLIN_IP)).await;
        assert_denied(&status, "admins");
        assert!(
            policy_of(&status).reason.contains("no user has"),
            "{status:?}"
        );
        let set = server
            .customer
            .set_user_groups("alice", &["admins", "staff", "admins"])
            .await
            .unwrap();
        assert_eq!(set.groups, vec!["admins", "staff"]);
        assert_denied(&push(&server, "alice", &from(BERLIN_IP)).await, "admins");
        assert_eq!(
            policy_of(&push(&server, "alice", &from(BERLIN_IP)).await).reason,
            "admins use the hardware key"
        );
        assert_asked(&push(&server, "bob", &from(BERLIN_IP)).await);
        assert_eq!(
            server
                .customer
                .set_user_groups("nobody", &["x"])
                .await
                .unwrap_err()
                .code(),
            Some(ErrorCode::UserNotFound)
        );
    }

    async fn rule_order(backend: Backend) {
        let server = start(backend).await;
        paired(&server, "alice").await;
        let approve = json!({"name": "office", "when": {"networks": ["office"]}, "then": {"action": "approve"}});
        let deny = json!({"name": "all push", "when": {"requests": ["push"]}, "then": {"action": "deny", "reason": "no pushes"}});
        set_rules(&server, json!([approve, deny])).await;
        let status = push(&server, "alice", &from(OFFICE_IP)).await;
        assert_eq!(status.state, AuthenticationState::Approved);
        assert_eq!(policy_of(&status).rule, "office");
        set_rules(&server, json!([deny, approve])).await;
        assert_denied(&push(&server, "alice", &from(OFFICE_IP)).await, "all push");
    }
}

mod conditions {
    use super::*;
    use tessera_tests::on_each_backend;

    on_each_backend! {
        request_kind => request_kind;
        named_networks => named_networks;
        accessing_country => country;
        ip_reputation => reputation;
        device_platform_os_and_app_versions => versions;
        rooted_screen_lock_and_mdm => posture;
        attested_key_is_false_until_attestation_exists => attested;
        recent_authentication_from_the_office => recent_authentication;
        push_requests_in_a_window => push_count;
        time_of_day_in_a_time_zone => time_of_day;
        geovelocity_between_two_sign_ins => geovelocity;
        transactions_over_a_threshold_require_biometrics => threshold;
        one_rule_sees_every_fact_read_from_the_database => every_fact;
    }

    fn deny_when(name: &str, when: Value) -> Value {
        json!([{"name": name, "when": when, "then": {"action": "deny", "reason": format!("{name} refused")}}])
    }

    async fn request_kind(backend: Backend) {
        let server = start(backend).await;
        paired(&server, "alice").await;
        set_rules(
            &server,
            deny_when("no transactions", json!({"requests": ["transaction"]})),
        )
        .await;
        assert_asked(&push(&server, "alice", &from(BERLIN_IP)).await);
        assert_denied(
            &push(&server, "alice", &tessera_tests::payment()).await,
            "no transactions",
        );
    }

    async fn named_networks(backend: Backend) {
        let server = start(backend).await;
        paired(&server, "alice").await;
        set_rules(
            &server,
            deny_when("outside", json!({"outside_networks": ["office"]})),
        )
        .await;
        assert_asked(&push(&server, "alice", &from(OFFICE_IP)).await);
        assert_denied(&push(&server, "alice", &from(BERLIN_IP)).await, "outside");
    }

    async fn country(backend: Backend) {
        let server = start(backend).await;
        paired(&server, "alice").await;
        set_rules(
            &server,
            deny_when("abroad", json!({"countries": ["US", "RU"]})),
        )
        .await;
        assert_asked(&push(&server, "alice", &from(BERLIN_IP)).await);
        let status = push(&server, "alice", &from(NEW_YORK_IP)).await;
        assert_denied(&status, "abroad");
    }

    async fn reputation(backend: Backend) {
        let server = start(backend).await;
        paired(&server, "alice").await;
        set_rules(
            &server,
            deny_when("high risk", json!({"ip_reputation": ["High"]})),
        )
        .await;
        assert_asked(&push(&server, "alice", &from(NEW_YORK_IP)).await);
        let status = push(&server, "alice", &from(HIGH_RISK_IP)).await;
        assert_denied(&status, "high risk");
        assert_eq!(status.attributes.len(), 0, "nothing was answered");
        // Without an IP table the same policy cannot be evaluated: it denies.
        let bare = TestServer::start(server.backend.clone()).await;
        paired(&bare, "alice").await;
        set_rules(
            &bare,
            deny_when("high risk", json!({"ip_reputation": ["High"]})),
        )
        .await;
        let status = push(&bare, "alice", &from(BERLIN_IP)).await;
        assert_denied(&status, "high risk");
        assert!(
            policy_of(&status).reason.contains("no IP table"),
            "{status:?}"
        );
    }

    async fn versions(backend: Backend) {
        let server = start(backend).await;
        paired(&server, "alice").await; // Android 15, app 1.0.0
        for (when, denied) in [
            (json!({"platforms": ["ios"]}), false),
            (json!({"platforms": ["android"]}), true),
            (json!({"os_version_below": "15"}), false),
            (json!({"os_version_below": "15.1"}), true),
            (json!({"app_version_below": "1.0.0"}), false),
            (json!({"app_version_below": "1.2"}), true),
        ] {
            set_rules(&server, deny_when("device", when.clone())).await;
            let status = push(&server, "alice", &from(BERLIN_IP)).await;
            if denied {
                assert_denied(&status, "device");
            } else {
                assert_asked(&status);
            }
        }
    }

    async fn posture(backend: Backend) {
        let server = start(backend).await;
        paired(&server, "alice").await; // not rooted, screen lock, no MDM
        for (when, denied) in [
            (json!({"rooted": true}), false),
            (json!({"rooted": false}), true),
            (json!({"screen_lock": false}), false),
            (json!({"screen_lock": true}), true),
            (json!({"mdm": true}), false),
            (json!({"mdm": false}), true),
        ] {
            set_rules(&server, deny_when("posture", when.clone())).await;
            let status = push(&server, "alice", &from(BERLIN_IP)).await;
            if denied {
                assert_denied(&status, "posture");
            } else {
                assert_asked(&status);
            }
        }
    }

    async fn attested(backend: Backend) {
        let server = start(backend).await;
        paired(&server, "alice").await;
        set_rules(
            &server,
            deny_when("attested", json!({"attested_key": true})),
        )
        .await;
        assert_asked(&push(&server, "alice", &from(BERLIN_IP)).await);
        set_rules(
            &server,
            deny_when("unattested", json!({"attested_key": false})),
        )
        .await;
        assert_denied(
            &push(&server, "alice", &from(BERLIN_IP)).await,
            "unattested",
        );
    }

    async fn recent_authentication(backend: Backend) {
        let server = start(backend).await;
        let (device, enrollment) = paired(&server, "alice").await;
        set_rules(
            &server,
            json!([{"name": "recently in the office",
                    "when": {"recent_authentication": {"network": "office", "within_minutes": 30}},
                    "then": {"action": "approve"}}]),
        )
        .await;
        // Nothing recent: the push goes out; approved from the office.
        let first = push(&server, "alice", &from(OFFICE_IP)).await;
        assert_asked(&first);
        let request = device
            .pull_request(&enrollment, &first.authentication_id)
            .await;
        device.auth.approve(&request, vec![], None).await.unwrap();
        // Now a sign-in from home is approved by the policy.
        let second = push(&server, "alice", &from(BERLIN_IP)).await;
        assert_eq!(second.state, AuthenticationState::Approved);
        assert_eq!(policy_of(&second).rule, "recently in the office");
    }

    async fn push_count(backend: Backend) {
        let server = start(backend).await;
        paired(&server, "alice").await;
        set_rules(
            &server,
            deny_when(
                "busy",
                json!({"push_requests": {"at_least": 2, "window_seconds": 600}}),
            ),
        )
        .await;
        assert_asked(&push(&server, "alice", &from(BERLIN_IP)).await);
        assert_asked(&push(&server, "alice", &from(BERLIN_IP)).await);
        assert_denied(&push(&server, "alice", &from(BERLIN_IP)).await, "busy");
    }

    /// `HH:MM` of now, `offset` minutes on, in a zone `zone_offset_minutes` from UTC.
    fn clock_at(now: i64, zone_offset_minutes: i64, offset: i64) -> String {
        let minute = (now.div_euclid(60) + zone_offset_minutes + offset).rem_euclid(1440);
        format!("{:02}:{:02}", minute / 60, minute % 60)
    }

    async fn time_of_day(backend: Backend) {
        let server = start(backend).await;
        paired(&server, "alice").await;
        let now = tessera_protocol::time::now();
        // Asia/Kolkata is UTC+5:30 all year: the window around its local time holds; the same
        // hours read as UTC do not.
        for (zone, offset, denied) in [("Asia/Kolkata", 330, true), ("UTC", 330, false)] {
            set_rules(
                &server,
                deny_when(
                    "night",
                    json!({"time_of_day": {"from": clock_at(now, offset, -20), "to": clock_at(now, offset, 20), "time_zone": zone}}),
                ),
            )
            .await;
            let status = push(&server, "alice", &from(BERLIN_IP)).await;
            if denied {
                assert_denied(&status, "night");
            } else {
                assert_asked(&status);
            }
        }
    }

    async fn geovelocity(backend: Backend) {
        let (server, clock) = start_on_a_clock(backend).await;
        paired(&server, "alice").await;
        set_rules(
            &server,
            deny_when(
                "impossible travel",
                json!({"geovelocity": {"max_kmh": 900}}),
            ),
        )
        .await;
        // Berlin first (its location is recorded with the decision), New York a minute later.
        assert_asked(&push(&server, "alice", &from(BERLIN_IP)).await);
        clock.advance(Duration::from_secs(60));
        let status = push(&server, "alice", &from(NEW_YORK_IP)).await;
        assert_denied(&status, "impossible travel");
        // Two days later the same trip is possible.
        clock.advance(Duration::from_secs(2 * 86_400));
        assert_asked(&push(&server, "alice", &from(BERLIN_IP)).await);
    }

    /// A rule that holds only when each fact read from the database (the user's groups, a
    /// recent approval, the push count, the previous location) is there: the facts are read
    /// side by side, and each one missing would let the request through.
    async fn every_fact(backend: Backend) {
        let (server, clock) = start_on_a_clock(backend).await;
        let (device, enrollment) = paired(&server, "alice").await;
        server
            .customer
            .set_user_groups("alice", &["admins"])
            .await
            .unwrap();
        set_rules(
            &server,
            deny_when(
                "everything",
                json!({
                    "groups": ["admins"],
                    "recent_authentication": {"network": "office", "within_minutes": 30},
                    "push_requests": {"at_least": 2, "window_seconds": 600},
                    "geovelocity": {"max_kmh": 900}
                }),
            ),
        )
        .await;
        // An approval from the office (in Berlin), then one more push from there.
        let first = push(&server, "alice", &from(OFFICE_IP)).await;
        assert_asked(&first);
        // The decision is recorded with the request it let through, and audited before it.
        let audit = server.audit("user_id=alice").await;
        let subject = first.authentication_id.to_string();
        let kinds: Vec<&str> = audit
            .records
            .iter()
            .rev()
            .filter(|r| r.subject.as_deref() == Some(subject.as_str()))
            .map(|r| r.kind.as_str())
            .collect();
        assert_eq!(kinds, ["policy.decided", "authentication.created"]);
        let request = device
            .pull_request(&enrollment, &first.authentication_id)
            .await;
        device.auth.approve(&request, vec![], None).await.unwrap();
        assert_asked(&push(&server, "alice", &from(OFFICE_IP)).await);
        // New York a minute later: every condition holds.
        clock.advance(Duration::from_secs(60));
        let dry_run = || async {
            server
                .customer
                .evaluate_policy(&EvaluatePolicyRequest {
                    user_id: "alice".parse().unwrap(),
                    request: Some(RequestKind::Push),
                    accessing_ip: Some(NEW_YORK_IP.into()),
                    device: None,
                    fields: Vec::new(),
                    version: None,
                })
                .await
                .unwrap()
        };
        let dry = dry_run().await;
        assert_eq!(dry.policy.rule, "everything", "{:?}", dry.inputs);
        assert_eq!(dry.inputs["groups"], json!(["admins"]));
        assert_eq!(dry.inputs["recent_authentication_from_office"], json!(true));
        assert_eq!(dry.inputs["push_requests_last_600s"], json!(2));
        assert!(
            dry.inputs["geovelocity_kmh"].as_f64().unwrap_or(0.0) > 900.0,
            "{:?}",
            dry.inputs
        );
        // Out of the group (which another user still has), the rule does not hold.
        server.user("bob").await;
        let customer = &server.customer;
        let set_groups = |user: &'static str, groups: &'static [&'static str]| async move {
            customer.set_user_groups(user, groups).await.unwrap()
        };
        set_groups("bob", &["admins"]).await;
        set_groups("alice", &["staff"]).await;
        let outside = dry_run().await;
        assert_eq!(outside.policy.rule, tessera_protocol::policy::DEFAULT_RULE);
        assert_eq!(outside.inputs["groups"], json!(["staff"]));
        // Back in it, the real request is denied.
        set_groups("alice", &["admins"]).await;
        assert_denied(
            &push(&server, "alice", &from(NEW_YORK_IP)).await,
            "everything",
        );
    }

    async fn threshold(backend: Backend) {
        let server = start(backend).await;
        let (device, enrollment) = paired(&server, "alice").await;
        set_rules(
            &server,
            json!([{"name": "large payments",
                    "when": {"requests": ["transaction"], "transaction_field_above": {"field": "Amount", "above": 1000}},
                    "then": {"action": "require", "methods": ["mobile_biometrics"]}}]),
        )
        .await;
        let payment = |amount: &str| CreateAuthenticationRequest {
            message: Some(format!("Pay {amount}?")),
            fields: vec![DisplayField {
                label: "Amount".into(),
                value: amount.into(),
            }],
            ..ask(AuthenticationKind::Transaction)
        };
        let small = push(&server, "alice", &payment("120.00 EUR")).await;
        let large = push(&server, "alice", &payment("1,500.00 EUR")).await;
        assert_eq!(policy_of(&small).rule, "default");
        assert_eq!(policy_of(&large).rule, "large payments");
        let small = device
            .pull_request(&enrollment, &small.authentication_id)
            .await;
        let large = device
            .pull_request(&enrollment, &large.authentication_id)
            .await;
        assert!(!small.require_user_verification);
        assert!(large.require_user_verification, "biometrics asked for");
    }
}

mod actions {
    use super::*;
    use tessera_tests::on_each_backend;

    on_each_backend! {
        approve_ends_with_policy_approve_and_no_device_attributes => approve;
        deny_returns_the_reason_and_asks_nobody => deny;
        require_naming_other_methods_ends_the_push => require_other;
        limit_push_caps_pushes_per_window => limit_push;
    }

    async fn approve(backend: Backend) {
        let server = start(backend).await;
        let (device, enrollment) = paired(&server, "alice").await;
        set_rules(
            &server,
            json!([{"name": "office", "when": {"networks": ["office"]}, "then": {"action": "approve"}}]),
        )
        .await;
        let status = push(&server, "alice", &from(OFFICE_IP)).await;
        assert_eq!(status.state, AuthenticationState::Approved);
        let p = "pingid.authentication.";
        assert_eq!(status.attributes[&format!("{p}type")], "POLICY_APPROVE");
        assert_eq!(
            status.attributes[&format!("{p}accessing.device.ip")],
            OFFICE_IP
        );
        assert!(
            !status
                .attributes
                .keys()
                .any(|k| k.contains("authenticating.device")),
            "{:?}",
            status.attributes
        );
        assert_eq!(policy_of(&status).action, "approve");
        // Nothing was sent to the device.
        let pending = device
            .auth
            .wait_for_requests(&enrollment, Duration::ZERO)
            .await
            .unwrap();
        assert!(pending.is_empty());
    }

    async fn deny(backend: Backend) {
        let server = start(backend).await;
        let (device, enrollment) = paired(&server, "alice").await;
        set_rules(
            &server,
            json!([{"name": "high risk", "when": {"ip_reputation": ["High"]},
                    "then": {"action": "deny", "reason": "Sign-ins from this network are blocked"}}]),
        )
        .await;
        let status = push(&server, "alice", &from(HIGH_RISK_IP)).await;
        assert_denied(&status, "high risk");
        assert_eq!(
            policy_of(&status).reason,
            "Sign-ins from this network are blocked"
        );
        let read = server
            .customer
            .authentication(&status.authentication_id, 0)
            .await
            .unwrap();
        assert_eq!(read.policy, status.policy);
        let pending = device
            .auth
            .wait_for_requests(&enrollment, Duration::ZERO)
            .await
            .unwrap();
        assert!(pending.is_empty());
    }

    async fn require_other(backend: Backend) {
        let server = start(backend).await;
        paired(&server, "alice").await;
        set_rules(
            &server,
            json!([{"name": "codes only", "then": {"action": "require", "methods": ["sms", "oath"]}}]),
        )
        .await;
        let status = push(&server, "alice", &from(BERLIN_IP)).await;
        assert_eq!(status.state, AuthenticationState::Failed);
        assert_eq!(
            status.failure_reason.as_deref(),
            Some("policy_requires_other_method")
        );
        let p = policy_of(&status);
        assert_eq!(p.effect, PolicyEffect::Require);
        assert_eq!(
            p.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            vec!["sms", "oath"]
        );
    }

    async fn limit_push(backend: Backend) {
        let server = start(backend).await;
        paired(&server, "alice").await;
        server
            .customer
            .set_policy(&document(json!({
                "rules": [],
                "default": {"action": "limit_push", "max": 2, "window_seconds": 600}
            })))
            .await
            .unwrap();
        // A burst: exactly two go out however they race... the limit is read per request, so
        // send them one after another and check the third.
        assert_asked(&push(&server, "alice", &from(BERLIN_IP)).await);
        assert_asked(&push(&server, "alice", &from(BERLIN_IP)).await);
        let third = push(&server, "alice", &from(BERLIN_IP)).await;
        assert_denied(&third, "default");
        assert!(
            policy_of(&third).reason.contains("too many push requests"),
            "{third:?}"
        );
        assert_eq!(policy_of(&third).action, "limit_push");
    }
}

mod paths {
    use super::*;
    use tessera_protocol::api::{CreateOtpChallenge, CreateQrSession};
    use tessera_protocol::flows::{CreateFlowRequest, FlowAction, FlowResultStatus, FlowStatus};
    use tessera_tests::on_each_backend;

    on_each_backend! {
        qr_logins_are_decided_after_the_scan_before_the_user_is_asked => qr;
        ciba_requests_are_refused_naming_the_policy => ciba;
        flows_end_failed_or_approved_or_offer_the_required_methods => flows;
        passcodes_and_backup_codes_are_decided => passcodes;
        pairing_refuses_rooted_devices => pairing;
        mandatory_methods_hold_on_qr_and_backup_codes => mandatory;
    }

    async fn qr(backend: Backend) {
        let server = start(backend).await;
        let (device, _) = paired(&server, "alice").await;
        set_rules(
            &server,
            json!([{"name": "high risk", "when": {"requests": ["qr"], "ip_reputation": ["High"]},
                    "then": {"action": "deny", "reason": "blocked network"}}]),
        )
        .await;
        // From a high-risk address the scan is refused and nobody is asked.
        let risky = server
            .customer
            .create_qr_session(&CreateQrSession {
                accessing_ip: Some(HIGH_RISK_IP.into()),
                ..CreateQrSession::default()
            })
            .await
            .unwrap();
        let err = device
            .auth
            .authenticate_with_qr(&risky.qr_uri)
            .await
            .unwrap_err();
        assert_eq!(err.server_code(), Some(ErrorCode::PolicyDenied), "{err}");
        let status = server
            .customer
            .qr_session(&risky.session_id, 0)
            .await
            .unwrap();
        let p = status.policy.expect("the decision");
        assert_eq!(
            (p.rule.as_str(), p.effect, p.reason.as_str()),
            ("high risk", PolicyEffect::Deny, "blocked network")
        );
        // From elsewhere the user is asked as usual.
        let fine = server
            .customer
            .create_qr_session(&CreateQrSession {
                accessing_ip: Some(BERLIN_IP.into()),
                ..CreateQrSession::default()
            })
            .await
            .unwrap();
        let qr = device
            .auth
            .authenticate_with_qr(&fine.qr_uri)
            .await
            .unwrap();
        assert_eq!(qr.users.len(), 1);
        let status = server
            .customer
            .qr_session(&fine.session_id, 0)
            .await
            .unwrap();
        assert_eq!(status.policy.unwrap().effect, PolicyEffect::Require);
    }

    async fn ciba(backend: Backend) {
        use tessera_examples::relying_party::RpError;
        let server = start(backend).await;
        paired(&server, "alice").await;
        let rp = server.poll_mode_relying_party("Call Centre").await;
        let params = [("scope", "openid"), ("login_hint", "alice")];
        set_rules(
            &server,
            json!([{"name": "no call centre", "when": {"requests": ["ciba"]},
                    "then": {"action": "deny", "reason": "call the branch instead"}}]),
        )
        .await;
        match rp.backchannel(&params).await {
            Err(RpError::OAuth {
                error, description, ..
            }) => {
                assert_eq!(error, "access_denied");
                assert!(
                    description.contains("rule \"no call centre\""),
                    "{description}"
                );
                assert!(description.contains("version 1"), "{description}");
                assert!(
                    description.contains("call the branch instead"),
                    "{description}"
                );
            }
            other => panic!("expected access_denied, got {other:?}"),
        }
        set_rules(&server, json!([])).await;
        rp.backchannel(&params).await.unwrap();
    }

    async fn flows(backend: Backend) {
        let server = start(backend).await;
        paired(&server, "alice").await;
        let flow_from = |ip: &str| CreateFlowRequest {
            accessing_ip: Some(ip.into()),
            ..CreateFlowRequest::new("alice".parse().unwrap())
        };
        let authenticate = FlowAction::Authenticate {
            mobile_payload: None,
            authorization_payload: None,
        };
        set_rules(
            &server,
            json!([
                {"name": "office", "when": {"networks": ["office"]}, "then": {"action": "approve"}},
                {"name": "high risk", "when": {"ip_reputation": ["High"]}, "then": {"action": "deny", "reason": "blocked network"}},
                {"name": "abroad", "when": {"countries": ["US"]}, "then": {"action": "require", "methods": ["oath", "mobile_push"]}}
            ]),
        )
        .await;
        let act = |flow: String| {
            let customer = server.customer.clone();
            let action = authenticate.clone();
            async move { customer.flow_action(&flow, &action).await.unwrap() }
        };
        // deny: MFA_FAILED with the reason.
        let flow = server
            .customer
            .create_flow(&flow_from(HIGH_RISK_IP))
            .await
            .unwrap();
        let done = act(flow.id.to_string()).await;
        assert_eq!(done.status, FlowStatus::MfaFailed);
        let result = done.result.unwrap();
        assert_eq!(result.status, FlowResultStatus::Denied);
        assert_eq!(result.policy.unwrap().reason, "blocked network");
        // approve: completed with POLICY_APPROVE.
        let flow = server
            .customer
            .create_flow(&flow_from(OFFICE_IP))
            .await
            .unwrap();
        let done = act(flow.id.to_string()).await;
        assert_eq!(done.status, FlowStatus::MfaCompleted);
        let result = done.result.unwrap();
        assert_eq!(
            result.attributes["pingid.authentication.type"],
            "POLICY_APPROVE"
        );
        assert_eq!(result.policy.unwrap().rule, "office");
        // require: an OATH token first, then the phone.
        server
            .customer
            .register_otp_token(
                "alice",
                &tessera_protocol::api::RegisterOtpToken {
                    kind: tessera_protocol::api::OtpTokenKind::Yubikey,
                    secret: "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ".into(),
                    algorithm: tessera_protocol::api::OtpAlgorithm::Sha1,
                    digits: None,
                    period: None,
                    counter: Some(0),
                },
            )
            .await
            .unwrap();
        let flow = server
            .customer
            .create_flow(&flow_from(NEW_YORK_IP))
            .await
            .unwrap();
        let asked = act(flow.id.to_string()).await;
        let kinds: Vec<_> = asked.devices.iter().map(|d| d.device_type).collect();
        assert_eq!(
            kinds,
            vec![
                tessera_protocol::flows::FlowDeviceType::OathToken,
                tessera_protocol::flows::FlowDeviceType::Mobile
            ]
        );
    }

    async fn passcodes(backend: Backend) {
        let server = start(backend).await;
        paired(&server, "alice").await;
        set_rules(
            &server,
            json!([
                {"name": "no codes", "when": {"requests": ["passcode"]}, "then": {"action": "deny", "reason": "use the app"}},
                {"name": "email only", "when": {"requests": ["backup_code"]}, "then": {"action": "require", "methods": ["email"]}}
            ]),
        )
        .await;
        let message = refused_with(
            server.customer.verify_otp("alice", "123456").await,
            ErrorCode::PolicyDenied,
        );
        assert!(message.contains("use the app"), "{message}");
        let message = refused_with(
            server
                .customer
                .create_otp_challenge(
                    "alice",
                    &CreateOtpChallenge {
                        channel: tessera_protocol::api::BackupChannel::Sms,
                        phone: Some("+4915112345678".into()),
                        email: None,
                    },
                )
                .await,
            ErrorCode::PolicyDenied,
        );
        assert!(message.contains("email"), "{message}");
        // Without the rule the passcode is checked as usual (it is not the policy that refuses).
        set_rules(&server, json!([])).await;
        let e = server
            .customer
            .verify_otp("alice", "000000")
            .await
            .unwrap_err();
        assert_ne!(e.code(), Some(ErrorCode::PolicyDenied), "{e}");
    }

    async fn pairing(backend: Backend) {
        let server = start(backend).await;
        set_rules(
            &server,
            json!([{"name": "rooted", "when": {"requests": ["pairing"], "rooted": true},
                    "then": {"action": "deny", "reason": "rooted phones cannot be paired"}}]),
        )
        .await;
        server.user("alice").await;
        let mut config = device_config("Rooted");
        config.signals.rooted = Some(true);
        let rooted = TestDevice::with_config(config).await;
        let uri = server.pairing_uri("alice").await;
        let err = rooted.auth.pair(&uri, None).await.unwrap_err();
        assert_eq!(err.server_code(), Some(ErrorCode::PolicyDenied), "{err}");
        assert!(
            server
                .customer
                .list_devices("alice")
                .await
                .unwrap()
                .devices
                .is_empty()
        );
        // The code was not used up: a healthy phone pairs with it.
        let fine = TestDevice::new().await;
        fine.auth.pair(&uri, None).await.unwrap();
        assert_eq!(
            server
                .customer
                .list_devices("alice")
                .await
                .unwrap()
                .devices
                .len(),
            1
        );
    }

    async fn mandatory(backend: Backend) {
        use tessera_protocol::api::AuthenticationMethod;
        let server = start(backend).await;
        let (device, _) = paired(&server, "alice").await;
        tessera_server::admin::set_mandatory_methods(
            server.server.database(),
            &server.app.application_id,
            &[
                AuthenticationMethod::PingidMobile,
                AuthenticationMethod::Sms,
            ],
        )
        .await
        .unwrap();
        let session = server
            .customer
            .create_qr_session(&CreateQrSession::default())
            .await
            .unwrap();
        let err = device
            .auth
            .authenticate_with_qr(&session.qr_uri)
            .await
            .unwrap_err();
        assert_eq!(
            err.server_code(),
            Some(ErrorCode::MandatoryMethodsMissing),
            "{err}"
        );
        refused_with(
            server
                .customer
                .create_otp_challenge(
                    "alice",
                    &CreateOtpChallenge {
                        channel: tessera_protocol::api::BackupChannel::Email,
                        phone: None,
                        email: Some("alice@example.com".into()),
                    },
                )
                .await,
            ErrorCode::MandatoryMethodsMissing,
        );
    }
}

mod dry_run {
    use super::*;
    use tessera_tests::on_each_backend;

    on_each_backend! {
        the_dry_run_agrees_with_real_decisions_and_sends_nothing => agrees;
    }

    async fn agrees(backend: Backend) {
        let server = start(backend).await;
        let (device, enrollment) = paired(&server, "alice").await;
        set_rules(
            &server,
            json!([
                {"name": "office", "when": {"networks": ["office"]}, "then": {"action": "approve"}},
                {"name": "high risk", "when": {"ip_reputation": ["High"]}, "then": {"action": "deny", "reason": "blocked"}},
                {"name": "android", "when": {"platforms": ["android"], "requests": ["transaction"]}, "then": {"action": "require", "methods": ["mobile_biometrics"]}}
            ]),
        )
        .await;
        for (ip, kind) in [
            (OFFICE_IP, AuthenticationKind::Approval),
            (HIGH_RISK_IP, AuthenticationKind::Approval),
            (BERLIN_IP, AuthenticationKind::Approval),
            (BERLIN_IP, AuthenticationKind::Transaction),
        ] {
            let dry = server
                .customer
                .evaluate_policy(&EvaluatePolicyRequest {
                    user_id: "alice".parse().unwrap(),
                    request: Some(if kind == AuthenticationKind::Transaction {
                        RequestKind::Transaction
                    } else {
                        RequestKind::Push
                    }),
                    accessing_ip: Some(ip.into()),
                    device: None,
                    fields: Vec::new(),
                    version: None,
                })
                .await
                .unwrap();
            let body = if kind == AuthenticationKind::Transaction {
                CreateAuthenticationRequest {
                    accessing_ip: Some(ip.into()),
                    ..tessera_tests::payment()
                }
            } else {
                from(ip)
            };
            let real = push(&server, "alice", &body).await;
            assert_eq!(&dry.policy, policy_of(&real), "{ip} {kind:?}");
            if dry.policy.rule == "high risk" {
                assert_eq!(dry.inputs["ip_reputation"], "High");
            }
        }
        // The dry runs themselves sent nothing: the device holds only the real requests that
        // were asked (Berlin approval and transaction).
        let pending = device
            .auth
            .wait_for_requests(&enrollment, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(pending.len(), 2);
        // An older version can be asked for; a missing one is not found.
        let mut old = EvaluatePolicyRequest {
            user_id: "alice".parse().unwrap(),
            request: Some(RequestKind::Push),
            accessing_ip: Some(OFFICE_IP.into()),
            device: None,
            fields: Vec::new(),
            version: Some(9),
        };
        assert_eq!(
            server
                .customer
                .evaluate_policy(&old)
                .await
                .unwrap_err()
                .code(),
            Some(ErrorCode::NotFound)
        );
        set_rules(&server, json!([])).await;
        old.version = Some(1);
        assert_eq!(
            server
                .customer
                .evaluate_policy(&old)
                .await
                .unwrap()
                .policy
                .rule,
            "office"
        );
        old.version = None;
        assert_eq!(
            server
                .customer
                .evaluate_policy(&old)
                .await
                .unwrap()
                .policy
                .rule,
            "default"
        );
    }
}
