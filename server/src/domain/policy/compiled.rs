//! Compiled policies, kept by application and version.
//!
//! A saved policy version never changes (every change is a new version), so a version compiled
//! once can serve every later decision under it: a request that a policy decides reads the
//! version with its settings as before, and parses and compiles the document only the first
//! time this process meets that version. A kept version is used only for the same document
//! text (compared by its SHA-256 digest): should a database ever give a version number another
//! document (restored from a backup while servers run, and saved again), the new text is
//! compiled, never the old one's rules applied. The map is bounded by versions and by the
//! documents' size; when either is reached it is emptied, and the versions in use are compiled
//! again as they are met.
//!
//! The map also remembers, for each application, the version its last decision under its
//! current policy used ([`CompiledPolicies::current`]): a hint, never an authority. A request
//! reads the facts that version's rules look at beside its other reads
//! (`super::read_ahead`), and the decision uses them only when the policy it finds in force
//! looks at the same facts; otherwise it reads them again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tessera_protocol::canonical::Sha256Digest;
use tessera_protocol::ids::ApplicationId;
use tessera_protocol::policy::PolicyDocument;

use super::evaluate::CompiledPolicy;
use crate::store::policies::StoredPolicy;

/// The most versions kept.
pub const CAPACITY: usize = 1024;

/// The most document text (bytes) the kept versions were compiled from: about what they hold.
pub const CAPACITY_BYTES: usize = 16 * 1024 * 1024;

/// Compiled policy versions of this process, by application and version.
#[derive(Debug, Default)]
pub struct CompiledPolicies {
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    versions: HashMap<(ApplicationId, u32), Entry>,
    /// The sum of the kept versions' document lengths.
    bytes: usize,
    /// By application, the version its last decision under its current policy used.
    current: HashMap<ApplicationId, u32>,
}

#[derive(Debug)]
struct Entry {
    /// The digest of the document text it was compiled from.
    digest: Sha256Digest,
    bytes: usize,
    policy: Arc<CompiledPolicy>,
}

impl CompiledPolicies {
    /// `stored`, the application's policy version, compiled: from the map when this version
    /// was compiled from the same text before, else parsed and compiled now (and kept). A
    /// document that does not compile (a time zone gone from the database, ...) is not kept:
    /// why, as text.
    pub fn get_or_compile(
        &self,
        app: &ApplicationId,
        stored: &StoredPolicy,
    ) -> Result<Arc<CompiledPolicy>, String> {
        let key = (app.clone(), stored.version);
        let digest = Sha256Digest::of_bytes(stored.document.as_bytes());
        if let Some(entry) = self.lock().versions.get(&key)
            && entry.digest == digest
        {
            return Ok(Arc::clone(&entry.policy));
        }
        // Compiled without the lock held: two requests meeting a new version at once each
        // compile it, and the same policy is kept.
        let policy = Arc::new(
            serde_json::from_str::<PolicyDocument>(&stored.document)
                .map_err(|e| e.to_string())
                .and_then(|doc| {
                    CompiledPolicy::compile(stored.version, &doc).map_err(|e| e.to_string())
                })?,
        );
        let bytes = stored.document.len();
        let mut kept = self.lock();
        if let Some(replaced) = kept.versions.remove(&key) {
            kept.bytes -= replaced.bytes;
        }
        if kept.versions.len() >= CAPACITY || kept.bytes + bytes > CAPACITY_BYTES {
            kept.versions.clear();
            kept.current.clear();
            kept.bytes = 0;
        }
        kept.bytes += bytes;
        kept.versions.insert(
            key,
            Entry {
                digest,
                bytes,
                policy: Arc::clone(&policy),
            },
        );
        Ok(policy)
    }

    /// [`Self::get_or_compile`] for the application's current policy as a decision just read
    /// it: the version is remembered as the application's current ([`Self::current`]).
    pub fn get_current_or_compile(
        &self,
        app: &ApplicationId,
        stored: &StoredPolicy,
    ) -> Result<Arc<CompiledPolicy>, String> {
        let compiled = self.get_or_compile(app, stored);
        let mut kept = self.lock();
        if compiled.is_ok() {
            kept.current.insert(app.clone(), stored.version);
        } else {
            kept.current.remove(app);
        }
        compiled
    }

    /// Forgets the application's current version: a decision found it without a policy.
    pub fn forget_current(&self, app: &ApplicationId) {
        self.lock().current.remove(app);
    }

    /// The version the application's last decision under its current policy used, compiled,
    /// if it is still kept: what its next decision most likely finds in force.
    pub fn current(&self, app: &ApplicationId) -> Option<Arc<CompiledPolicy>> {
        let kept = self.lock();
        let version = *kept.current.get(app)?;
        kept.versions
            .get(&(app.clone(), version))
            .map(|entry| Arc::clone(&entry.policy))
    }

    /// How many versions are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().versions.len()
    }

    /// Whether none is kept.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        // A panic while holding the lock leaves a plain map behind: keep using it.
        self.kept
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
        // The same version again is the same compiled policy.
        let again = cache.get_or_compile(&app, &stored(1, "first")).unwrap();
        assert!(Arc::ptr_eq(&one, &again));
        assert_eq!(first_rule(&again), "first");
        // The same version number with another text (a database restored and saved again) is
        // compiled from that text.
        let other_text = cache.get_or_compile(&app, &stored(1, "restored")).unwrap();
        assert_eq!(first_rule(&other_text), "restored");
        let kept = cache.get_or_compile(&app, &stored(1, "restored")).unwrap();
        assert!(Arc::ptr_eq(&other_text, &kept));
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
    fn the_map_stays_bounded_by_versions_and_by_size() {
        let cache = CompiledPolicies::default();
        let app = ApplicationId::generate();
        for version in 1..=u32::try_from(CAPACITY).unwrap() + 10 {
            cache.get_or_compile(&app, &stored(version, "r")).unwrap();
            assert!(cache.len() <= CAPACITY);
        }
        // Large documents: far fewer fit.
        let cache = CompiledPolicies::default();
        let long_reason = "x".repeat(200);
        let large = |version: u32| {
            let rules: Vec<_> = (0..200)
                .map(|n| serde_json::json!({"name": format!("rule {n}"), "when": {"requests": ["transaction"]},
                                            "then": {"action": "deny", "reason": long_reason}}))
                .collect();
            StoredPolicy {
                version,
                document: serde_json::json!({"rules": rules, "default": {"action": "approve"}})
                    .to_string(),
                created_at: 0,
            }
        };
        let size = large(1).document.len();
        for version in 1..=u32::try_from(CAPACITY_BYTES / size).unwrap() + 5 {
            cache.get_or_compile(&app, &large(version)).unwrap();
            let kept = cache.lock();
            assert!(kept.bytes <= CAPACITY_BYTES);
            assert_eq!(
                kept.bytes,
                kept.versions.values().map(|e| e.bytes).sum::<usize>()
            );
        }
    }

    #[test]
    fn an_application_s_current_version_is_the_one_last_decided_under_while_it_is_kept() {
        let cache = CompiledPolicies::default();
        let (app, other) = (ApplicationId::generate(), ApplicationId::generate());
        assert!(cache.current(&app).is_none());
        // A dry run under a saved version does not make it current.
        cache.get_or_compile(&app, &stored(1, "one")).unwrap();
        assert!(cache.current(&app).is_none());
        cache
            .get_current_or_compile(&app, &stored(2, "two"))
            .unwrap();
        assert_eq!(first_rule(&cache.current(&app).unwrap()), "two");
        assert!(cache.current(&other).is_none());
        // An older version decided under again is current again.
        cache
            .get_current_or_compile(&app, &stored(1, "one"))
            .unwrap();
        assert_eq!(first_rule(&cache.current(&app).unwrap()), "one");
        // A current version that does not compile, or none at all, leaves no hint.
        let broken = StoredPolicy {
            version: 3,
            document: "{\"rules\": 3}".into(),
            created_at: 0,
        };
        assert!(cache.get_current_or_compile(&app, &broken).is_err());
        assert!(cache.current(&app).is_none());
        cache
            .get_current_or_compile(&app, &stored(1, "one"))
            .unwrap();
        cache.forget_current(&app);
        assert!(cache.current(&app).is_none());
        // Emptied when full: the hint goes with the versions.
        cache
            .get_current_or_compile(&app, &stored(1, "one"))
            .unwrap();
        for version in 10..10 + u32::try_from(CAPACITY).unwrap() {
            cache.get_or_compile(&other, &stored(version, "r")).unwrap();
        }
        assert!(cache.current(&app).is_none());
        assert!(cache.lock().current.is_empty());
    }
}
