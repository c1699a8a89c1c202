//! Customer API keys: the application a presented key belongs to.
//!
//! A customer call is authenticated by its API key's digest, looked up in the database
//! ([`authenticate`]): one statement (on PostgreSQL a round trip) before the call's own. A call
//! that reads one thing can instead check the key in the statement that reads it
//! (`authentication::status_by_key`): [`ApiKeyHints`] names the application a digest belonged
//! to when it was last found, and the read returns a row only while that application still has
//! that digest. The hint is never trusted alone: a rotated key or a deleted application finds
//! nothing, at once and on every instance, and a read that finds nothing is answered the long
//! way ([`authenticate`], then the read), so its answer (401, or 404) is the one it would have
//! been without the hint.

use std::collections::HashMap;
use std::sync::Mutex;

use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::ApplicationId;

use super::{Ctx, DomainError};
use crate::store::applications::{self, Application};

/// An API key as a call presented it: its digest, computed once (the key itself is not kept).
#[derive(Debug, Clone, Default)]
pub(crate) struct PresentedKey {
    /// The digest of the bearer token, as stored and looked up (`None`: missing, empty or
    /// longer than 256 bytes).
    digest: Option<String>,
    /// The caller's address, for the audit record of a refused key.
    client_ip: Option<String>,
}

impl PresentedKey {
    /// The bearer token `key` (`None`: missing or unusable), from `client_ip`.
    pub(crate) fn new(key: Option<&str>, client_ip: Option<String>) -> Self {
        PresentedKey {
            digest: key.map(applications::api_key_digest),
            client_ip,
        }
    }

    /// The key's digest (`None` without a key).
    pub(crate) fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
}

/// The refusal of a call without a valid API key.
pub(crate) fn unauthorized() -> DomainError {
    DomainError::new(ErrorCode::Unauthorized, "a valid API key is required")
}

/// The application `presented` authenticates, looked up by the key's digest (remembered in the
/// hints when found). A missing or unknown key is refused and recorded in the audit log (at
/// most once a minute per address).
pub(crate) async fn authenticate(
    ctx: &Ctx,
    presented: &PresentedKey,
) -> Result<Application, DomainError> {
    let Some(digest) = presented.digest() else {
        super::applications::api_key_rejected(ctx, presented.client_ip.as_deref(), false).await;
        return Err(unauthorized());
    };
    match applications::by_api_key_digest(&ctx.db, digest).await? {
        Some(app) => {
            ctx.api_key_hints.remember(digest.to_string(), app.clone());
            Ok(app)
        }
        None => {
            super::applications::api_key_rejected(ctx, presented.client_ip.as_deref(), true).await;
            Err(unauthorized())
        }
    }
}

/// Runs `read` under the application `presented`'s key was last found for ([`ApiKeyHints`]),
/// given that application and the key's digest: a read that checks the key itself (its row only
/// while the application still has that digest). `None` without a key or a hint, and when
/// `read` finds nothing (the hint is then forgotten): the caller then goes the long way
/// ([`authenticate`], then its own read), so its answer (401, or 404) is the one it would have
/// been without the hint.
pub(crate) async fn read_under_hint<T, F, Fut>(
    ctx: &Ctx,
    presented: &PresentedKey,
    read: F,
) -> Result<Option<T>, DomainError>
where
    F: FnOnce(ApplicationId, String) -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, DomainError>>,
{
    act_under_hint(ctx, presented, |application, digest| {
        read(application.id, digest)
    })
    .await
}

/// [`read_under_hint`], given the application as it was when its key was last found (its name
/// too): for a write that checks the key, and the name it uses, in its own statement.
pub(crate) async fn act_under_hint<T, F, Fut>(
    ctx: &Ctx,
    presented: &PresentedKey,
    act: F,
) -> Result<Option<T>, DomainError>
where
    F: FnOnce(Application, String) -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, DomainError>>,
{
    let Some(digest) = presented.digest() else {
        return Ok(None);
    };
    let Some(application) = ctx.api_key_hints.remembered(digest) else {
        return Ok(None);
    };
    let found = act(application, digest.to_string()).await?;
    if found.is_none() {
        ctx.api_key_hints.forget(digest);
    }
    Ok(found)
}

/// The most digests remembered; when reached, the hints are emptied (and refilled by the keys
/// in use as they are found again).
pub const CAPACITY: usize = 4096;

/// The application each API key digest belonged to when it was last found, as it was then
/// (see the module documentation): only keys that were found are kept, so a flood of wrong
/// keys adds nothing.
#[derive(Debug, Default)]
pub struct ApiKeyHints {
    kept: Mutex<HashMap<String, Application>>,
}

impl ApiKeyHints {
    /// The application `digest` belonged to when last found, as it was then.
    pub fn remembered(&self, digest: &str) -> Option<Application> {
        self.kept.lock().ok()?.get(digest).cloned()
    }

    /// Remembers that `digest` was found as `application`'s key.
    pub fn remember(&self, digest: String, application: Application) {
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        if kept.len() >= CAPACITY && !kept.contains_key(&digest) {
            kept.clear();
        }
        kept.insert(digest, application);
    }

    /// Forgets `digest` (a read under its hint found nothing).
    pub fn forget(&self, digest: &str) {
        if let Ok(mut kept) = self.kept.lock() {
            kept.remove(digest);
        }
    }

    /// How many digests are remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.kept.lock().map(|k| k.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An application named `name`, as a key's look-up finds it.
    fn application(name: &str) -> Application {
        Application {
            id: ApplicationId::generate(),
            name: name.into(),
            created_at: 0,
        }
    }

    #[test]
    fn hints_are_bounded_and_name_the_last_application_found() {
        let hints = ApiKeyHints::default();
        let (a, b) = (application("Shop"), application("Bank"));
        assert_eq!(hints.remembered("d1"), None);
        hints.remember("d1".into(), a.clone());
        assert_eq!(hints.remembered("d1"), Some(a));
        // The same digest found for another application (a restored database): the last one.
        hints.remember("d1".into(), b.clone());
        assert_eq!(hints.remembered("d1"), Some(b.clone()));
        hints.forget("d1");
        assert_eq!(hints.remembered("d1"), None);
        for n in 0..CAPACITY + 10 {
            hints.remember(format!("digest {n}"), b.clone());
            assert!(hints.len() <= CAPACITY);
        }
        assert_eq!(
            hints.remembered(&format!("digest {}", CAPACITY + 9)),
            Some(b)
        );
    }

    /// A hinted read runs only for a key whose digest was remembered, under the application
    /// remembered for it and with that digest; a read that finds nothing forgets the hint, so
    /// the next call goes the long way.
    #[tokio::test]
    async fn a_hinted_read_runs_only_under_a_remembered_key_and_forgets_a_hint_that_found_nothing()
    {
        let domain = crate::domain::testing::TestDomain::sqlite().await;
        let ctx = &domain.ctx;
        let remembered = application("Shop");
        let app = remembered.id.clone();
        let key = PresentedKey::new(Some("tsk_a key"), None);
        let digest = key.digest().expect("digest").to_string();
        let read = |found: bool| {
            let (app, digest) = (app.clone(), digest.clone());
            move |hinted_app: ApplicationId, hinted_digest: String| async move {
                assert_eq!((&hinted_app, &hinted_digest), (&app, &digest));
                Ok::<_, DomainError>(found.then_some(hinted_app))
            }
        };
        // No key, or a key never found: nothing is read.
        let no_read = |_: ApplicationId, _: String| async {
            panic!("read without a remembered key");
            #[allow(unreachable_code)]
            Ok::<Option<()>, DomainError>(None)
        };
        let without = PresentedKey::new(None, None);
        assert!(
            read_under_hint(ctx, &without, no_read)
                .await
                .unwrap()
                .is_none()
        );
        assert!(read_under_hint(ctx, &key, no_read).await.unwrap().is_none());
        // Remembered: read under its application, kept while the read finds something.
        ctx.api_key_hints.remember(digest.clone(), remembered);
        assert_eq!(
            read_under_hint(ctx, &key, read(true)).await.unwrap(),
            Some(app.clone())
        );
        assert_eq!(
            ctx.api_key_hints.remembered(&digest).map(|a| a.id),
            Some(app.clone())
        );
        // A read that finds nothing (the key rotated): answered `None` and forgotten.
        assert_eq!(read_under_hint(ctx, &key, read(false)).await.unwrap(), None);
        assert_eq!(ctx.api_key_hints.remembered(&digest), None);
        assert!(read_under_hint(ctx, &key, no_read).await.unwrap().is_none());
    }
}
