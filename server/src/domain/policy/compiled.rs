//! Compiled policies, kept by application and version.
//!
//! A saved policy version never changes (every change is a new version), so a version compiled
//! once can serve every later decision under it: a request that a policy decides reads the
//! version with its settings as before, and parses and compiles the document only the first
//! time this process meets that version. Nothing can go stale, in this instance or another: a
//! new version has a new key. The map is bounded; when full it is emptied, and the versions in
//! use are compiled again as they are met.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tessera_protocol::ids::ApplicationId;
use tessera_protocol::policy::PolicyDocument;

use super::evaluate::CompiledPolicy;
use crate::store::policies::StoredPolicy;

/// The most versions kept (each a few kilobytes for a large policy).
pub const CAPACITY: usize = 1024;

/// Compiled policy versions of this process, by application and version.
#[derive(Debug, Default)]
pub struct CompiledPolicies {
    versions: Mutex<HashMap<(ApplicationId, u32), Arc<CompiledPolicy>>>,
}

impl CompiledPolicies {
    /// `stored`, the application's policy version, compiled: from the map when this version
    /// was compiled before, else parsed and compiled now (and kept). A document that does not
    /// compile (a time zone gone from the database, ...) is not kept: why, as text.
    pub fn get_or_compile(
        &self,
        app: &ApplicationId,
        stored: &StoredPolicy,
    ) -> Result<Arc<CompiledPolicy>, String> {
        let key = (app.clone(), stored.version);
        if let Some(compiled) = self.lock().get(&key) {
            return Ok(Arc::clone(compiled));
        }
        // Compiled without the lock held: two requests meeting a new version at once each
        // compile it, and the same policy is kept.
        let compiled = Arc::new(
            serde_json::from_str::<PolicyDocument>(&stored.document)
                .map_err(|e| e.to_string())
                .and_then(|doc| {
                    CompiledPolicy::compile(stored.version, &doc).map_err(|e| e.to_string())
                })?,
        );
        let mut versions = self.lock();
        if versions.len() >= CAPACITY {
            versions.clear();
        }
        versions.insert(key, Arc::clone(&compiled));
        Ok(compiled)
    }

    /// How many versions are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is kept.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(ApplicationId, u32), Arc<CompiledPolicy>>> {
        // A panic while holding the lock leaves a plain map behind: keep using it.
        self.versions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(version: u32, rule: &str) -> StoredPolicy {
        StoredPolicy {
            version,
            document: serde_json::json!({
                "rules": [{"name": rule, "then": {"action": "approve"}}],
                "default": {"action": "deny", "reason": "no rule matched"}
            })
            .to_string(),
            created_at: 0,
        }
    }

    fn first_rule(policy: &CompiledPolicy) -> String {
        let inputs = super::super::evaluate::PolicyInputs::default();
        policy.evaluate(&inputs).rule
    }

    #[test]
    fn a_version_is_compiled_once_and_each_version_and_application_is_its_own() {
        let cache = CompiledPolicies::default();
        let app = ApplicationId::generate();
        let other = ApplicationId::generate();
        let one = cache.get_or_compile(&app, &stored(1, "first")).unwrap();
        // The same version again is the same compiled policy, whatever the text read with it.
        let again = cache.get_or_compile(&app, &stored(1, "ignored")).unwrap();
        assert!(Arc::ptr_eq(&one, &again));
        assert_eq!(first_rule(&again), "first");
        // A new version, and another application's version 1, are compiled from their own text.
        let two = cache.get_or_compile(&app, &stored(2, "second")).unwrap();
        assert_eq!(first_rule(&two), "second");
        let theirs = cache.get_or_compile(&other, &stored(1, "theirs")).unwrap();
        assert_eq!(first_rule(&theirs), "theirs");
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn a_document_that_does_not_compile_is_refused_and_not_kept() {
        let cache = CompiledPolicies::default();
        let app = ApplicationId::generate();
        let broken = StoredPolicy {
            version: 1,
            document: "{\"rules\": 3}".into(),
            created_at: 0,
        };
        assert!(cache.get_or_compile(&app, &broken).is_err());
        assert!(cache.is_empty());
    }

    #[test]
    fn the_map_stays_bounded() {
        let cache = CompiledPolicies::default();
        let app = ApplicationId::generate();
        for version in 1..=u32::try_from(CAPACITY).unwrap() + 10 {
            cache.get_or_compile(&app, &stored(version, "r")).unwrap();
            assert!(cache.len() <= CAPACITY);
        }
    }
}
