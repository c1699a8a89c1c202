//! The policy evaluator: pure (no I/O, no clock), so it can be unit tested and benchmarked.
//!
//! [`CompiledPolicy::compile`] validates a [`PolicyDocument`] (refusing it with the offending
//! rule named) and prepares it (networks parsed, time zones resolved, versions split);
//! [`CompiledPolicy::evaluate`] takes the [`PolicyInputs`] the domain gathered and answers a
//! [`PolicyDecision`]: the rule that matched, what it does, why, and the values it looked at.
//! A rule's conditions are checked in a fixed order (request kind and groups first) and stop
//! at the first that does not hold. A condition that cannot be evaluated (an unknown group, a
//! country or reputation without an IP table, a transaction amount that is not a number) ends
//! the evaluation with a denial that says why: the evaluator fails closed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};
use tessera_protocol::policy::{
    DEFAULT_RULE, DeviceFacts, PolicyAction, PolicyConditions, PolicyDocument, PolicyEffect,
    PolicyMethod, PolicyOutcome, Reputation, RequestKind,
};

use crate::ip_table::IpReputation;

/// Most rules a policy may have.
pub const MAX_RULES: usize = 200;
/// Most named networks, and most blocks in one.
pub const MAX_NETWORKS: usize = 64;
const MAX_BLOCKS: usize = 1024;
const MAX_NAME: usize = 64;
const MAX_REASON: usize = 256;
const MAX_WINDOW_SECONDS: u32 = 86_400;
const MAX_RECENT_MINUTES: u32 = 10_080;

/// A policy refused when saved: the rule at fault (or `networks`, `default`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {message}")]
pub struct PolicyError {
    /// Where: `rule "NAME"`, `rule #N`, `network "NAME"` or `default`.
    pub place: String,
    /// What is wrong.
    pub message: String,
}

fn refused(place: &str, message: impl Into<String>) -> PolicyError {
    PolicyError {
        place: place.to_string(),
        message: message.into(),
    }
}

/// What the table says of the accessing IP.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccessingFacts {
    /// ISO 3166-1 alpha-2 country.
    pub country: Option<String>,
    /// Reputation.
    pub reputation: Option<IpReputation>,
    /// (latitude, longitude).
    pub location: Option<(f64, f64)>,
}

/// Everything a decision may look at, gathered by the domain.
#[derive(Debug, Clone, Default)]
pub struct PolicyInputs {
    /// Now, seconds since the epoch.
    pub now: i64,
    /// The kind of request.
    pub request: Option<RequestKind>,
    /// The user's groups.
    pub groups: Vec<String>,
    /// The groups named by the policy that some user of the application has.
    pub known_groups: BTreeSet<String>,
    /// The accessing IP, when given.
    pub accessing_ip: Option<IpAddr>,
    /// Whether an IP table is loaded (country, reputation and geovelocity need one).
    pub ip_table_loaded: bool,
    /// What the IP table says of the accessing IP.
    pub accessing: AccessingFacts,
    /// The authenticating device, when there is one.
    pub device: Option<DeviceFacts>,
    /// Whether the authenticating device's keys were attested at pairing (false without a
    /// device, or for a pairing itself: the attestation is verified after the policy).
    pub attested_key: bool,
    /// The user's successful authentications: (accessing IP, when), any order.
    pub recent_successes: Vec<(IpAddr, i64)>,
    /// How many of the user's push requests were created in each window the policy names
    /// (window in seconds → count; [`CompiledPolicy::push_windows`]), counted when gathered, up
    /// to the largest number a rule compares one with: a count at or above it means at least
    /// that many.
    pub push_counts: BTreeMap<u32, u64>,
    /// The user's previous accessing location: (latitude, longitude, when).
    pub previous_location: Option<(f64, f64, i64)>,
    /// Transaction fields (label, value).
    pub fields: Vec<(String, String)>,
}

/// A decision: the rule, what it does, why, and the values looked at.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDecision {
    /// The policy version.
    pub version: u32,
    /// The rule that matched (`default` when none did).
    pub rule: String,
    /// The rule's action name.
    pub action: &'static str,
    /// What it does.
    pub effect: PolicyEffect,
    /// Why.
    pub reason: String,
    /// With `require`: the methods, most preferred first.
    pub methods: Vec<PolicyMethod>,
    /// With `require`: answers from an App Attested iOS enrollment must carry an App Attest
    /// assertion.
    pub app_attest_assertion: bool,
    /// The values the decision looked at.
    pub looked_at: BTreeMap<String, Value>,
    /// With a `limit_push` that let the request through: the limit, which the path takes again
    /// atomically when it stores the request (the count here was read before: two requests at
    /// once would both pass it).
    pub push_limit: Option<PushLimit>,
}

/// A `limit_push` action's limit: at most `max` push requests in `window_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushLimit {
    /// The most push requests in the window.
    pub max: u32,
    /// The window, in seconds.
    pub window_seconds: u32,
}

impl PushLimit {
    /// The refusal's reason once `count` requests are in the window.
    pub fn exceeded(&self, count: u64) -> String {
        format!(
            "too many push requests: {count} in the last {} seconds (limit {})",
            self.window_seconds, self.max
        )
    }
}

impl PolicyDecision {
    /// The wire summary.
    pub fn outcome(&self) -> PolicyOutcome {
        PolicyOutcome {
            version: self.version,
            rule: self.rule.clone(),
            action: self.action.to_string(),
            effect: self.effect,
            reason: self.reason.clone(),
            methods: self.methods.clone(),
            app_attest_assertion: self.app_attest_assertion,
        }
    }

    /// A denial that is not a rule's (a policy that cannot be read, a refused method).
    pub fn denied(version: u32, rule: &str, reason: impl Into<String>) -> Self {
        Self {
            version,
            rule: rule.to_string(),
            action: "deny",
            effect: PolicyEffect::Deny,
            reason: reason.into(),
            methods: Vec::new(),
            app_attest_assertion: false,
            looked_at: BTreeMap::new(),
            push_limit: None,
        }
    }

    /// Whether `method` may be used: the effect is `require` and the method is among those
    /// named (no methods named: any).
    pub fn allows(&self, method: PolicyMethod) -> bool {
        self.effect == PolicyEffect::Require
            && (self.methods.is_empty() || self.methods.contains(&method))
    }
}

#[derive(Debug, Clone)]
struct TimeRange {
    from: u32,
    to: u32,
    zone: jiff::tz::TimeZone,
    zone_name: String,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    name: String,
    when: PolicyConditions,
    os_below: Option<Vec<u64>>,
    app_below: Option<Vec<u64>>,
    time: Option<TimeRange>,
    then: PolicyAction,
}

/// A validated policy, ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    version: u32,
    networks: BTreeMap<String, Vec<IpNet>>,
    rules: Vec<CompiledRule>,
    default: PolicyAction,
    groups: Vec<String>,
}

fn check_name(place: &str, what: &str, name: &str) -> Result<(), PolicyError> {
    if name.trim().is_empty() || name.chars().count() > MAX_NAME {
        return Err(refused(
            place,
            format!("{what} must be 1 to {MAX_NAME} characters"),
        ));
    }
    if !tessera_protocol::display::is_displayable(name) {
        return Err(refused(
            place,
            format!("{what} has control, bidirectional or invisible format characters"),
        ));
    }
    Ok(())
}

/// Splits a dotted version (`16.4.1`, `2.0-beta` reads as 2.0) into numbers.
pub fn parse_version(text: &str) -> Option<Vec<u64>> {
    let parts: Vec<u64> = text
        .trim()
        .split('.')
        .map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect::<Option<Vec<u64>>>()?;
    (!parts.is_empty()).then_some(parts)
}

fn version_below(have: &[u64], minimum: &[u64]) -> bool {
    let len = have.len().max(minimum.len());
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    for i in 0..len {
        match at(have, i).cmp(&at(minimum, i)) {
            std::cmp::Ordering::Less => return true,
            std::cmp::Ordering::Greater => return false,
            std::cmp::Ordering::Equal => {}
        }
    }
    false
}

fn parse_clock(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn check_action(place: &str, action: &PolicyAction) -> Result<(), PolicyError> {
    match action {
        PolicyAction::Approve => Ok(()),
        PolicyAction::Require { methods, .. } => {
            if methods.is_empty() {
                return Err(refused(place, "require names no method"));
            }
            let distinct: BTreeSet<&str> = methods.iter().map(|m| m.as_str()).collect();
            if distinct.len() != methods.len() {
                return Err(refused(place, "require names a method twice"));
            }
            Ok(())
        }
        PolicyAction::Deny { reason } => {
            if reason.trim().is_empty() || reason.chars().count() > MAX_REASON {
                return Err(refused(
                    place,
                    format!("a deny reason must be 1 to {MAX_REASON} characters"),
                ));
            }
            if !tessera_protocol::display::is_displayable(reason) {
                return Err(refused(
                    place,
                    "the deny reason has control, bidirectional or invisible format characters",
                ));
            }
            Ok(())
        }
        PolicyAction::LimitPush {
            max,
            window_seconds,
        } => {
            if *max == 0 || !(1..=MAX_WINDOW_SECONDS).contains(window_seconds) {
                return Err(refused(
                    place,
                    format!(
                        "limit_push needs max of at least 1 and window_seconds from 1 to {MAX_WINDOW_SECONDS}"
                    ),
                ));
            }
            Ok(())
        }
    }
}

impl CompiledPolicy {
    /// Validates and prepares `document` as `version`; a refusal names the rule at fault.
    pub fn compile(version: u32, document: &PolicyDocument) -> Result<Self, PolicyError> {
        if document.rules.len() > MAX_RULES {
            return Err(refused("rules", format!("at most {MAX_RULES} rules")));
        }
        if document.networks.len() > MAX_NETWORKS {
            return Err(refused(
                "networks",
                format!("at most {MAX_NETWORKS} networks"),
            ));
        }
        let mut networks = BTreeMap::new();
        for (name, blocks) in &document.networks {
            let place = format!("network \"{name}\"");
            check_name(&place, "a network name", name)?;
            if blocks.is_empty() || blocks.len() > MAX_BLOCKS {
                return Err(refused(
                    &place,
                    format!("a network has 1 to {MAX_BLOCKS} CIDR blocks"),
                ));
            }
            let parsed = blocks
                .iter()
                .map(|b| {
                    b.trim()
                        .parse::<IpNet>()
                        .map(|n| n.trunc())
                        .map_err(|_| refused(&place, "a block is not CIDR, such as 203.0.113.0/24"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            networks.insert(name.clone(), parsed);
        }
        let mut names = BTreeSet::new();
        let mut rules = Vec::with_capacity(document.rules.len());
        let mut groups = BTreeSet::new();
        for (index, rule) in document.rules.iter().enumerate() {
            let place = if rule.name.trim().is_empty() {
                format!("rule #{}", index + 1)
            } else {
                format!("rule \"{}\"", rule.name)
            };
            check_name(&place, "a rule name", &rule.name)?;
            if rule.name == DEFAULT_RULE {
                return Err(refused(&place, "the name `default` is the default rule's"));
            }
            if !names.insert(rule.name.as_str()) {
                return Err(refused(&place, "two rules have this name"));
            }
            let when = &rule.when;
            for group in &when.groups {
                check_name(&place, "a group name", group)?;
                groups.insert(group.clone());
            }
            for network in when
                .networks
                .iter()
                .chain(&when.outside_networks)
                .chain(when.recent_authentication.as_ref().map(|r| &r.network))
            {
                if !networks.contains_key(network) {
                    return Err(refused(
                        &place,
                        format!("names the network \"{network}\", which is not defined"),
                    ));
                }
            }
            for country in &when.countries {
                if country.len() != 2 || !country.chars().all(|c| c.is_ascii_alphabetic()) {
                    return Err(refused(&place, "a country is a two-letter ISO 3166-1 code"));
                }
            }
            for platform in &when.platforms {
                check_name(&place, "a platform", platform)?;
            }
            let version_of = |text: &Option<String>, what: &str| {
                text.as_deref()
                    .map(|t| {
                        parse_version(t).ok_or_else(|| {
                            refused(
                                &place,
                                format!("{what} is not a dotted version such as 16.4"),
                            )
                        })
                    })
                    .transpose()
            };
            let os_below = version_of(&when.os_version_below, "os_version_below")?;
            let app_below = version_of(&when.app_version_below, "app_version_below")?;
            if let Some(recent) = &when.recent_authentication
                && !(1..=MAX_RECENT_MINUTES).contains(&recent.within_minutes)
            {
                return Err(refused(
                    &place,
                    format!("recent_authentication.within_minutes is 1 to {MAX_RECENT_MINUTES}"),
                ));
            }
            if let Some(count) = &when.push_requests
                && (count.at_least == 0
                    || !(1..=MAX_WINDOW_SECONDS).contains(&count.window_seconds))
            {
                return Err(refused(
                    &place,
                    format!(
                        "push_requests needs at_least of 1 or more and window_seconds from 1 to {MAX_WINDOW_SECONDS}"
                    ),
                ));
            }
            let time = match &when.time_of_day {
                None => None,
                Some(t) => {
                    let (Some(from), Some(to)) = (parse_clock(&t.from), parse_clock(&t.to)) else {
                        return Err(refused(&place, "time_of_day from and to are HH:MM"));
                    };
                    if from == to {
                        return Err(refused(&place, "time_of_day from and to are the same"));
                    }
                    let zone = jiff::tz::TimeZone::get(&t.time_zone).map_err(|_| {
                        refused(
                            &place,
                            format!("\"{}\" is not a known IANA time zone", t.time_zone),
                        )
                    })?;
                    Some(TimeRange {
                        from,
                        to,
                        zone,
                        zone_name: t.time_zone.clone(),
                    })
                }
            };
            if let Some(g) = &when.geovelocity
                && !(g.max_kmh.is_finite() && g.max_kmh > 0.0)
            {
                return Err(refused(&place, "geovelocity.max_kmh must be above 0"));
            }
            if let Some(f) = &when.transaction_field_above {
                check_name(&place, "a field name", &f.field)?;
                if !f.above.is_finite() {
                    return Err(refused(
                        &place,
                        "transaction_field_above.above must be a number",
                    ));
                }
            }
            check_action(&place, &rule.then)?;
            rules.push(CompiledRule {
                name: rule.name.clone(),
                when: rule.when.clone(),
                os_below,
                app_below,
                time,
                then: rule.then.clone(),
            });
        }
        check_action("default", &document.default)?;
        Ok(Self {
            version,
            networks,
            rules,
            default: document.default.clone(),
            groups: groups.into_iter().collect(),
        })
    }

    /// The version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The groups the rules name (to check which are known).
    pub fn named_groups(&self) -> &[String] {
        &self.groups
    }

    /// The longest look-back the rules need for recent authentications, in seconds.
    pub fn recent_lookback_seconds(&self) -> i64 {
        self.rules
            .iter()
            .filter_map(|r| r.when.recent_authentication.as_ref())
            .map(|r| i64::from(r.within_minutes) * 60)
            .max()
            .unwrap_or(0)
    }

    /// The push-count windows the rules name, in seconds (what [`PolicyInputs::push_counts`]
    /// must hold), each with the largest number a rule compares its count with
    /// (`push_requests.at_least`, `limit_push.max`): a count that reached it decides every
    /// comparison, so it need not be counted further.
    pub fn push_windows(&self) -> BTreeMap<u32, u32> {
        let mut windows = BTreeMap::new();
        let limit = |action: &PolicyAction| match action {
            PolicyAction::LimitPush {
                max,
                window_seconds,
            } => Some((*window_seconds, *max)),
            _ => None,
        };
        let named = self
            .rules
            .iter()
            .flat_map(|r| {
                r.when
                    .push_requests
                    .as_ref()
                    .map(|c| (c.window_seconds, c.at_least))
                    .into_iter()
                    .chain(limit(&r.then))
            })
            .chain(limit(&self.default));
        for (window, compared_with) in named {
            let most = windows.entry(window).or_insert(0);
            *most = (*most).max(compared_with);
        }
        windows
    }

    /// Whether any rule checks geovelocity (the previous location is then read).
    pub fn uses_geovelocity(&self) -> bool {
        self.rules.iter().any(|r| r.when.geovelocity.is_some())
    }

    fn in_network(&self, name: &str, ip: &IpAddr) -> bool {
        self.networks
            .get(name)
            .is_some_and(|blocks| blocks.iter().any(|b| b.contains(ip)))
    }

    /// Decides for `inputs`: the first rule whose conditions all hold, else the default.
    pub fn evaluate(&self, inputs: &PolicyInputs) -> PolicyDecision {
        let mut looked_at = BTreeMap::new();
        if let Some(request) = inputs.request {
            looked_at.insert("request".into(), json!(request.as_str()));
        }
        for rule in &self.rules {
            match self.matches(rule, inputs, &mut looked_at) {
                Ok(false) => {}
                Ok(true) => return self.decide(&rule.name, &rule.then, inputs, looked_at),
                Err(why) => {
                    let mut decision = PolicyDecision::denied(
                        self.version,
                        &rule.name,
                        format!("the policy cannot be evaluated: {why}"),
                    );
                    decision.looked_at = looked_at;
                    return decision;
                }
            }
        }
        self.decide(DEFAULT_RULE, &self.default, inputs, looked_at)
    }

    fn decide(
        &self,
        rule: &str,
        action: &PolicyAction,
        inputs: &PolicyInputs,
        mut looked_at: BTreeMap<String, Value>,
    ) -> PolicyDecision {
        let mut push_limit = None;
        let (effect, reason, methods) = match action {
            PolicyAction::Approve => (
                PolicyEffect::Approve,
                format!("approved by rule \"{rule}\" without user action"),
                Vec::new(),
            ),
            PolicyAction::Require { methods, .. } => (
                PolicyEffect::Require,
                format!(
                    "rule \"{rule}\" requires {}",
                    methods
                        .iter()
                        .map(|m| m.as_str())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
                methods.clone(),
            ),
            PolicyAction::Deny { reason } => (PolicyEffect::Deny, reason.clone(), Vec::new()),
            PolicyAction::LimitPush {
                max,
                window_seconds,
            } => {
                let count = inputs.push_count(*window_seconds);
                looked_at.insert(
                    format!("push_requests_last_{window_seconds}s"),
                    json!(count),
                );
                let limit = PushLimit {
                    max: *max,
                    window_seconds: *window_seconds,
                };
                if count >= u64::from(*max) {
                    (PolicyEffect::Deny, limit.exceeded(count), Vec::new())
                } else {
                    push_limit = Some(limit);
                    (
                        PolicyEffect::Require,
                        format!(
                            "within the push limit: {count} of {max} in the last {window_seconds} seconds"
                        ),
                        Vec::new(),
                    )
                }
            }
        };
        let app_attest_assertion = effect == PolicyEffect::Require
            && matches!(
                action,
                PolicyAction::Require {
                    app_attest_assertion: true,
                    ..
                }
            );
        PolicyDecision {
            version: self.version,
            rule: rule.to_string(),
            action: action.name(),
            effect,
            reason,
            methods,
            app_attest_assertion,
            looked_at,
            push_limit,
        }
    }

    fn matches(
        &self,
        rule: &CompiledRule,
        inputs: &PolicyInputs,
        seen: &mut BTreeMap<String, Value>,
    ) -> Result<bool, String> {
        let w = &rule.when;
        if !w.requests.is_empty() {
            match inputs.request {
                Some(kind) if w.requests.contains(&kind) => {}
                _ => return Ok(false),
            }
        }
        if !w.groups.is_empty() {
            if let Some(unknown) = w.groups.iter().find(|g| !inputs.known_groups.contains(*g)) {
                return Err(format!(
                    "rule \"{}\" names the group \"{unknown}\", which no user has",
                    rule.name
                ));
            }
            seen.insert("groups".into(), json!(inputs.groups));
            if !w.groups.iter().any(|g| inputs.groups.contains(g)) {
                return Ok(false);
            }
        }
        let ip = inputs.accessing_ip;
        if !w.networks.is_empty() || !w.outside_networks.is_empty() {
            seen.insert("accessing_ip".into(), json!(ip.map(|i| i.to_string())));
        }
        if !w.networks.is_empty() {
            let Some(ip) = ip else { return Ok(false) };
            if !w.networks.iter().any(|n| self.in_network(n, &ip)) {
                return Ok(false);
            }
        }
        if !w.outside_networks.is_empty()
            && ip.is_some_and(|ip| w.outside_networks.iter().any(|n| self.in_network(n, &ip)))
        {
            return Ok(false);
        }
        let needs_table = !w.countries.is_empty() || !w.ip_reputation.is_empty();
        if needs_table {
            let Some(ip) = ip else { return Ok(false) };
            if !inputs.ip_table_loaded {
                return Err(format!(
                    "rule \"{}\" needs the accessing country or IP reputation, and no IP table is loaded",
                    rule.name
                ));
            }
            seen.insert("accessing_ip".into(), json!(ip.to_string()));
        }
        if !w.countries.is_empty() {
            seen.insert("accessing_country".into(), json!(inputs.accessing.country));
            match &inputs.accessing.country {
                Some(c) if w.countries.iter().any(|x| x.eq_ignore_ascii_case(c)) => {}
                _ => return Ok(false),
            }
        }
        if !w.ip_reputation.is_empty() {
            let reputation = inputs.accessing.reputation.map(|r| match r {
                IpReputation::Low => Reputation::Low,
                IpReputation::Medium => Reputation::Medium,
                IpReputation::High => Reputation::High,
            });
            seen.insert(
                "ip_reputation".into(),
                json!(inputs.accessing.reputation.map(IpReputation::as_str)),
            );
            match reputation {
                Some(r) if w.ip_reputation.contains(&r) => {}
                _ => return Ok(false),
            }
        }
        let device_conditions = !w.platforms.is_empty()
            || rule.os_below.is_some()
            || rule.app_below.is_some()
            || w.rooted.is_some()
            || w.screen_lock.is_some()
            || w.mdm.is_some();
        if device_conditions {
            let Some(device) = &inputs.device else {
                seen.insert("device".into(), Value::Null);
                return Ok(false);
            };
            if !w.platforms.is_empty() {
                seen.insert("device_platform".into(), json!(device.platform));
                match &device.platform {
                    Some(p) if w.platforms.iter().any(|x| x.eq_ignore_ascii_case(p)) => {}
                    _ => return Ok(false),
                }
            }
            // An unknown or unreadable version counts as below any minimum.
            for (minimum, have, name) in [
                (&rule.os_below, &device.os_version, "device_os_version"),
                (&rule.app_below, &device.app_version, "device_app_version"),
            ] {
                if let Some(minimum) = minimum {
                    seen.insert(name.into(), json!(have));
                    let below = have
                        .as_deref()
                        .and_then(parse_version)
                        .is_none_or(|v| version_below(&v, minimum));
                    if !below {
                        return Ok(false);
                    }
                }
            }
            for (wanted, have, name) in [
                (w.rooted, device.rooted, "device_rooted"),
                (w.screen_lock, device.screen_lock, "device_screen_lock"),
                (w.mdm, device.mdm, "device_mdm"),
            ] {
                if let Some(wanted) = wanted {
                    seen.insert(name.into(), json!(have));
                    if have != Some(wanted) {
                        return Ok(false);
                    }
                }
            }
        }
        if let Some(wanted) = w.attested_key {
            seen.insert("attested_key".into(), json!(inputs.attested_key));
            if inputs.attested_key != wanted {
                return Ok(false);
            }
        }
        if let Some(recent) = &w.recent_authentication {
            let since = inputs.now - i64::from(recent.within_minutes) * 60;
            let found = inputs
                .recent_successes
                .iter()
                .any(|(ip, at)| *at >= since && self.in_network(&recent.network, ip));
            seen.insert(
                format!("recent_authentication_from_{}", recent.network),
                json!(found),
            );
            if !found {
                return Ok(false);
            }
        }
        if let Some(count) = &w.push_requests {
            let n = inputs.push_count(count.window_seconds);
            seen.insert(
                format!("push_requests_last_{}s", count.window_seconds),
                json!(n),
            );
            if n < u64::from(count.at_least) {
                return Ok(false);
            }
        }
        if let Some(range) = &rule.time {
            let Ok(at) = jiff::Timestamp::from_second(inputs.now) else {
                return Err("the time is out of range".into());
            };
            let local = range.zone.to_datetime(at);
            let minute = u32::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute()))
                .unwrap_or(0);
            seen.insert(
                format!("local_time_{}", range.zone_name),
                json!(format!("{:02}:{:02}", local.hour(), local.minute())),
            );
            let inside = if range.from < range.to {
                (range.from..range.to).contains(&minute)
            } else {
                minute >= range.from || minute < range.to
            };
            if !inside {
                return Ok(false);
            }
        }
        if let Some(g) = &w.geovelocity {
            if ip.is_some() && !inputs.ip_table_loaded {
                return Err(format!(
                    "rule \"{}\" needs locations for geovelocity, and no IP table is loaded",
                    rule.name
                ));
            }
            let (Some(here), Some(before)) = (inputs.accessing.location, inputs.previous_location)
            else {
                seen.insert("geovelocity_kmh".into(), Value::Null);
                return Ok(false);
            };
            let km = distance_km(here, (before.0, before.1));
            let seconds = (inputs.now - before.2).max(1);
            #[allow(clippy::cast_precision_loss)]
            let kmh = km / (seconds as f64 / 3600.0);
            seen.insert("geovelocity_kmh".into(), json!(kmh.round()));
            if kmh <= g.max_kmh {
                return Ok(false);
            }
        }
        if let Some(f) = &w.transaction_field_above {
            let Some((_, value)) = inputs
                .fields
                .iter()
                .find(|(label, _)| label.eq_ignore_ascii_case(&f.field))
            else {
                seen.insert(format!("field_{}", f.field), Value::Null);
                return Ok(false);
            };
            let Some(number) = leading_number(value) else {
                return Err(format!(
                    "rule \"{}\": the field \"{}\" is not a number",
                    rule.name, f.field
                ));
            };
            seen.insert(format!("field_{}", f.field), json!(number));
            if number <= f.above {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl PolicyInputs {
    /// The user's push requests in the last `window_seconds`, as gathered (none gathered for a
    /// window the policy does not name).
    fn push_count(&self, window_seconds: u32) -> u64 {
        self.push_counts.get(&window_seconds).copied().unwrap_or(0)
    }
}

/// The great-circle distance between two (latitude, longitude) points, in km.
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// The number a field value starts with (`"1,200.50 EUR"` → 1200.5; `"EUR 30"` → 30).
fn leading_number(value: &str) -> Option<f64> {
    let start = value.find(|c: char| c.is_ascii_digit() || c == '-')?;
    let digits: String = value[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ',' || *c == '-')
        .filter(|c| *c != ',')
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests;
