//! The device-facing signing keys' life: creation, rotation, the grace period, retirement and
//! revocation, and the signed key sets that announce each change.
//!
//! Every change of the published keys is one write transaction that also stores the new
//! [`ServerKeySet`] with the next `sequence`, signed once, by a key of the previous set (for a
//! rotation: the key that was signing until then, so a device can chain trust). Changes take
//! turns (`server_keys::take_turns_changing_keys`, first in their write), so each reads the keys
//! as the change before left them. Servers reload the ring every `server_key_reload_interval`
//! ([`load`]); nothing is signed per request.

use tessera_protocol::envelope::{self, MessageType, SoftwareSigningKey};
use tessera_protocol::jwk::JwkSet;
use tessera_protocol::pairing::{ServerKeySet, ServerUrl};

use super::DomainError;
use crate::keys::KeyRingState;
use crate::store::server_keys::{self, StoredKey, StoredKeySet};
use crate::store::{Database, StoreError};

/// Why a key operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyOperationError {
    /// No published key has that id (or it is revoked already).
    #[error("no such published server key")]
    UnknownKey,
    /// Revoking it would leave no key to sign with: rotate first.
    #[error("this is the only published server key: rotate to a new key first, then revoke it")]
    LastKey,
    /// No key set was ever published (the server was never started on this database).
    #[error("no key set has been published yet: start the server once first")]
    NoKeySet,
    /// Another change took the same key set number: try again.
    #[error("another key change happened at the same time: try again")]
    Concurrent,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing or decoding failed.
    #[error("key set: {0}")]
    Internal(&'static str),
}

impl From<KeyOperationError> for DomainError {
    fn from(e: KeyOperationError) -> Self {
        match e {
            KeyOperationError::Store(e) => DomainError::from(e),
            _ => DomainError::Internal("server key operation failed"),
        }
    }
}

/// The signer among stored keys: the published key that became signer last; for keys from
/// before rotation, the oldest published key.
fn signer_of(keys: &[StoredKey]) -> Option<&StoredKey> {
    let published = keys.iter().filter(|k| k.is_published());
    published
        .clone()
        .filter(|k| k.signer_since.is_some())
        .max_by_key(|k| (k.signer_since, k.created_at))
        .or_else(|| published.min_by_key(|k| k.created_at))
}

/// When a key that becomes the signer at `now` starts signing: strictly after every earlier
/// signer's start (times are in seconds, and a rotation within the second a key started signing
/// must still name one signer).
fn next_signer_since(keys: &[StoredKey], now: i64) -> i64 {
    keys.iter()
        .filter_map(|k| k.signer_since)
        .max()
        .map_or(now, |latest| now.max(latest + 1))
}

fn published_set(keys: &[StoredKey]) -> JwkSet {
    JwkSet {
        keys: keys
            .iter()
            .filter(|k| k.is_published())
            .filter_map(|k| k.key.as_ref().map(SoftwareSigningKey::public_jwk))
            .collect(),
    }
}

fn revoked_kids(keys: &[StoredKey]) -> Vec<String> {
    keys.iter()
        .filter(|k| k.revoked_at.is_some())
        .map(|k| k.kid.clone())
        .collect()
}

/// Signs and stores the set of the keys published now, numbered after `previous`, with `signer`.
async fn announce(
    tx: &mut crate::store::Write<'static>,
    keys: &[StoredKey],
    signer: &SoftwareSigningKey,
    issuer: &ServerUrl,
    previous: i64,
    now: i64,
) -> Result<(), KeyOperationError> {
    let sequence = previous + 1;
    let set = ServerKeySet {
        v: tessera_protocol::PROTOCOL_VERSION,
        issuer: issuer.clone(),
        keys: published_set(keys),
        issued_at: now,
        sequence: u64::try_from(sequence).map_err(|_| KeyOperationError::Internal("sequence"))?,
        revoked: revoked_kids(keys),
    };
    let signed = envelope::sign(MessageType::ServerKeySet, &set, signer)
        .map_err(|_| KeyOperationError::Internal("signing"))?;
    let stored = StoredKeySet {
        issuer: issuer.as_str().to_string(),
        sequence,
        signer_kid: signer.kid().to_string(),
        signed,
    };
    if !server_keys::insert_key_set(tx, &stored, now).await? {
        return Err(KeyOperationError::Concurrent);
    }
    Ok(())
}

/// Announces the keys published now to every issuer that has key sets (instances on one
/// database normally share one public URL; each URL has its own chain), signed by `signer`.
/// `NoKeySet` if there is none yet.
async fn announce_everywhere(
    tx: &mut crate::store::Write<'static>,
    keys: &[StoredKey],
    signer: &SoftwareSigningKey,
    now: i64,
) -> Result<(), KeyOperationError> {
    let issuers = server_keys::issuers(tx).await?;
    if issuers.is_empty() {
        return Err(KeyOperationError::NoKeySet);
    }
    for issuer in issuers {
        let latest = server_keys::latest_key_set(tx, &issuer)
            .await?
            .map_or(0, |l| l.sequence);
        let url =
            ServerUrl::parse(&issuer).map_err(|_| KeyOperationError::Internal("stored issuer"))?;
        announce(tx, keys, signer, &url, latest, now).await?;
    }
    Ok(())
}

/// Makes the stored keys current, as a server does at start and on every reload: creates the
/// first key if there is none, retires keys whose grace period has ended, publishes the first
/// key set if none was, and returns what the ring should hold.
pub(crate) async fn load(
    db: &Database,
    issuer: &ServerUrl,
    now: i64,
) -> Result<KeyRingState, KeyOperationError> {
    // The usual case, read only: keys published, a set announced, no grace period over.
    let stored = server_keys::all_from_pool(db).await?;
    let due = stored
        .iter()
        .any(|k| k.is_published() && k.retire_at.is_some_and(|at| at <= now));
    if !due
        && stored.iter().any(StoredKey::is_published)
        && !server_keys::key_sets(db, issuer.as_str()).await?.is_empty()
    {
        return state(db, issuer).await;
    }
    let mut tx = db.write().await?;
    server_keys::take_turns_changing_keys(&mut tx).await?;
    if !server_keys::all(&mut tx, db.secrets()?)
        .await?
        .iter()
        .any(StoredKey::is_published)
    {
        let key = SoftwareSigningKey::generate();
        server_keys::insert(&mut tx, db.secrets()?, &key, true, now).await?;
    }
    let latest = server_keys::latest_key_set(&mut tx, issuer.as_str()).await?;
    let retired = server_keys::retire_due(&mut tx, now).await?;
    if latest.is_none() || !retired.is_empty() {
        let keys = server_keys::all(&mut tx, db.secrets()?).await?;
        let signer = signer_of(&keys)
            .and_then(|k| k.key.clone())
            .ok_or(KeyOperationError::Internal("no signer"))?;
        let announced = match latest {
            // This issuer's first set.
            None => announce(&mut tx, &keys, &signer, issuer, 0, now).await,
            Some(_) => Ok(()),
        };
        let announced = match announced {
            Ok(()) if !retired.is_empty() => {
                announce_everywhere(&mut tx, &keys, &signer, now).await
            }
            other => other,
        };
        match announced {
            // Another instance announced first: read what it wrote (a retirement left undone is
            // retried at the next reload).
            Err(KeyOperationError::Concurrent) => {
                tx.rollback().await?;
                return state(db, issuer).await;
            }
            other => other?,
        }
        if !retired.is_empty() {
            tracing::info!(retired = ?retired, "server keys retired after their grace period");
        }
    }
    tx.commit().await?;
    state(db, issuer).await
}

/// What the ring should hold, as stored (no changes).
async fn state(db: &Database, issuer: &ServerUrl) -> Result<KeyRingState, KeyOperationError> {
    // Keys, sets, keys again: every change writes the keys and its set in one transaction, so
    // when both reads of the keys agree, the sets read between them belong to those keys.
    let fingerprint = |keys: &[StoredKey]| {
        keys.iter()
            .map(|k| {
                format!(
                    "{}:{:?}:{:?}:{:?}:{:?}",
                    k.kid, k.signer_since, k.retire_at, k.retired_at, k.revoked_at
                )
            })
            .collect::<Vec<_>>()
    };
    let mut attempts = 0;
    let (keys, stored_sets) = loop {
        let before = server_keys::all_from_pool(db).await?;
        let sets = server_keys::key_sets(db, issuer.as_str()).await?;
        let after = server_keys::all_from_pool(db).await?;
        attempts += 1;
        if fingerprint(&before) == fingerprint(&after) || attempts >= 5 {
            break (after, sets);
        }
    };
    let signer = signer_of(&keys)
        .and_then(|k| k.key.clone())
        .ok_or(KeyOperationError::Internal("no signer"))?;
    let revoked = revoked_kids(&keys);
    // A set signed by a revoked key is never published again. The signer is read from the
    // signed set itself, not from the stored column.
    let sets: Vec<StoredKeySet> = stored_sets
        .into_iter()
        .filter(|s| envelope::inspect(&s.signed).is_ok_and(|h| !revoked.contains(&h.kid)))
        .collect();
    let sequence = sets
        .last()
        .map(|s| u64::try_from(s.sequence).unwrap_or(0))
        .unwrap_or(0);
    Ok(KeyRingState {
        keys: keys
            .into_iter()
            .filter(StoredKey::is_published)
            .filter_map(|k| k.key)
            .collect(),
        signer,
        chain: sets.into_iter().map(|s| s.signed).collect(),
        sequence,
    })
}

/// Rotates: a new key becomes the signer; the new set is announced signed by the key that was
/// signing until now, which keeps verifying (stays published) for `grace_seconds` and is then
/// retired by the next reload. Returns the new key's id.
pub(crate) async fn rotate(
    db: &Database,
    now: i64,
    grace_seconds: i64,
) -> Result<String, KeyOperationError> {
    let mut tx = db.write().await?;
    server_keys::take_turns_changing_keys(&mut tx).await?;
    let keys = server_keys::all(&mut tx, db.secrets()?).await?;
    let previous = signer_of(&keys)
        .and_then(|k| k.key.clone())
        .ok_or(KeyOperationError::NoKeySet)?;
    let key = SoftwareSigningKey::generate();
    server_keys::insert(&mut tx, db.secrets()?, &key, true, now).await?;
    server_keys::make_signer(&mut tx, key.kid(), next_signer_since(&keys, now)).await?;
    server_keys::set_retire_at(&mut tx, previous.kid(), now + grace_seconds.max(0)).await?;
    let keys = server_keys::all(&mut tx, db.secrets()?).await?;
    announce_everywhere(&mut tx, &keys, &previous, now).await?;
    tx.commit().await?;
    tracing::info!(
        kid = key.kid(),
        previous = previous.kid(),
        grace_seconds,
        "server key rotated"
    );
    Ok(key.kid().to_string())
}

/// Revokes a key at once: unpublished, its private half wiped, never trusted again (devices drop
/// it from their pins with the next set, and no set it signed is published any more). If it was
/// the signer, the newest other published key signs from now on. The new set is signed by the
/// signer after the revocation. Refused for the only published key.
pub(crate) async fn revoke(db: &Database, kid: &str, now: i64) -> Result<(), KeyOperationError> {
    let mut tx = db.write().await?;
    server_keys::take_turns_changing_keys(&mut tx).await?;
    let keys = server_keys::all(&mut tx, db.secrets()?).await?;
    if !keys.iter().any(|k| k.kid == kid && k.is_published()) {
        return Err(KeyOperationError::UnknownKey);
    }
    let Some(successor) = keys
        .iter()
        .filter(|k| k.kid != kid && k.is_published())
        .max_by_key(|k| (k.signer_since, k.created_at))
    else {
        return Err(KeyOperationError::LastKey);
    };
    let was_signer = signer_of(&keys).is_some_and(|k| k.kid == kid);
    let successor_kid = successor.kid.clone();
    if !server_keys::revoke(&mut tx, kid, now).await? {
        return Err(KeyOperationError::UnknownKey);
    }
    if was_signer {
        server_keys::make_signer(&mut tx, &successor_kid, next_signer_since(&keys, now)).await?;
    }
    let keys = server_keys::all(&mut tx, db.secrets()?).await?;
    let signer = signer_of(&keys)
        .and_then(|k| k.key.clone())
        .ok_or(KeyOperationError::Internal("no signer"))?;
    announce_everywhere(&mut tx, &keys, &signer, now).await?;
    tx.commit().await?;
    tracing::warn!(kid, "server key revoked");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::key_set::{TrustedKeys, advance};

    async fn database() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite://{}", dir.path().join("keys.db").display());
        let mut db = Database::connect(&url, 2).await.expect("database");
        db.open_secrets(None, 0).await.expect("secrets");
        (dir, db)
    }

    fn issuer() -> ServerUrl {
        ServerUrl::parse("https://auth.example.com").expect("url")
    }

    fn kids(state: &KeyRingState) -> Vec<String> {
        state.keys.iter().map(|k| k.kid().to_string()).collect()
    }

    #[tokio::test]
    async fn a_key_lives_rotates_retires_and_is_revoked_and_each_change_is_one_chained_set() {
        let (_dir, db) = database().await;
        assert!(matches!(
            rotate(&db, 100, 10).await,
            Err(KeyOperationError::NoKeySet)
        ));
        let first = load(&db, &issuer(), 100).await.expect("load");
        assert_eq!((first.sequence, first.chain.len()), (1, 1));
        let k1 = first.signer.kid().to_string();
        // Loading again changes nothing (no write, no new set).
        assert_eq!(load(&db, &issuer(), 101).await.expect("load").sequence, 1);
        assert!(matches!(
            revoke(&db, &k1, 100).await,
            Err(KeyOperationError::LastKey)
        ));

        let k2 = rotate(&db, 200, 50).await.expect("rotate");
        let rotated = load(&db, &issuer(), 200).await.expect("load");
        assert_eq!(rotated.sequence, 2);
        assert_eq!(kids(&rotated), vec![k1.clone(), k2.clone()]);
        assert_eq!(rotated.signer.kid(), k2);
        assert_eq!(
            envelope::inspect(rotated.chain.last().expect("set"))
                .expect("header")
                .kid,
            k1,
            "announced by the key that was signing"
        );
        // The grace period ends at 250: the next load retires k1 with a set signed by k2.
        assert_eq!(load(&db, &issuer(), 249).await.expect("load").sequence, 2);
        let retired = load(&db, &issuer(), 250).await.expect("load");
        assert_eq!((retired.sequence, kids(&retired)), (3, vec![k2.clone()]));

        // A device that pinned the first set follows the chain to the current one.
        let pinned = TrustedKeys {
            keys: JwkSet {
                keys: vec![first.signer.public_jwk()],
            },
            sequence: 1,
            revoked: Vec::new(),
        };
        let followed = advance(&pinned, &issuer(), &retired.chain).expect("chain");
        assert_eq!(followed.sequence, 3);

        let k3 = rotate(&db, 300, 1000).await.expect("rotate");
        assert!(matches!(
            revoke(&db, "no-such-key", 300).await,
            Err(KeyOperationError::UnknownKey)
        ));
        // Revoking the signer hands signing to the newest other key; the sets k3 signed are no
        // longer published.
        revoke(&db, &k3, 301).await.expect("revoke");
        let after = load(&db, &issuer(), 301).await.expect("load");
        assert_eq!(after.signer.kid(), k2);
        assert_eq!(kids(&after), vec![k2.clone()]);
        assert!(
            after
                .chain
                .iter()
                .all(|s| envelope::inspect(s).expect("header").kid != k3)
        );
        let newest: ServerKeySet =
            envelope::unverified_payload(after.chain.last().expect("set")).expect("set");
        assert_eq!(newest.revoked, vec![k3.clone()]);
        assert!(matches!(
            revoke(&db, &k3, 302).await,
            Err(KeyOperationError::UnknownKey)
        ));
    }

    #[tokio::test]
    async fn every_issuer_on_a_database_gets_its_own_chain() {
        let (_dir, db) = database().await;
        let other = ServerUrl::parse("https://login.example.com").expect("url");
        load(&db, &issuer(), 100).await.expect("load");
        let first_other = load(&db, &other, 100).await.expect("load");
        assert_eq!(first_other.sequence, 1);
        rotate(&db, 200, 0).await.expect("rotate");
        for url in [issuer(), other] {
            let state = load(&db, &url, 200).await.expect("load");
            assert_eq!(state.sequence, 3, "rotated and retired for {url:?}");
            let newest: ServerKeySet =
                envelope::unverified_payload(state.chain.last().expect("set")).expect("set");
            assert_eq!(newest.issuer, url);
        }
    }

    /// The keys' ids in a signed key set.
    fn kids_in(set: &str) -> Vec<String> {
        let set: ServerKeySet = envelope::unverified_payload(set).expect("a key set");
        let mut kids: Vec<String> = set
            .keys
            .keys
            .iter()
            .filter_map(|k| k.kid().map(str::to_string))
            .collect();
        kids.sort();
        kids
    }

    /// The announced chain of `issuer` as stored, checked: numbered 1, 2, 3…; each set signed
    /// by a key of the set before it (what a device pinned then trusts); the newest announcing
    /// exactly the keys published now, the signer among them. How many sets there are.
    async fn checked_chain(db: &Database, issuer: &ServerUrl, at: &str) -> usize {
        let sets = server_keys::key_sets(db, issuer.as_str())
            .await
            .expect("the key sets");
        for (index, set) in sets.iter().enumerate() {
            assert_eq!(set.sequence, index as i64 + 1, "{at}: the sets' numbers");
        }
        for pair in sets.windows(2) {
            let signer = envelope::inspect(&pair[1].signed).expect("a header").kid;
            assert!(
                kids_in(&pair[0].signed).contains(&signer),
                "{at}: set {} is signed by {signer}, which set {} does not announce ({:?})",
                pair[1].sequence,
                pair[0].sequence,
                kids_in(&pair[0].signed)
            );
        }
        let keys = server_keys::all_from_pool(db).await.expect("the keys");
        let mut published: Vec<String> = keys
            .iter()
            .filter(|k| k.is_published())
            .map(|k| k.kid.clone())
            .collect();
        published.sort();
        let newest = sets.last().expect("a set");
        assert_eq!(
            kids_in(&newest.signed),
            published,
            "{at}: the newest set (number {}) announces the keys published now",
            newest.sequence
        );
        let signer = signer_of(&keys).expect("a signer");
        assert!(
            published.contains(&signer.kid),
            "{at}: the signer is published"
        );
        sets.len()
    }

    /// Rounds of key changes at once, on two instances of the database at `url`: rotations,
    /// reloads that retire the keys rotated out (no grace period) and revocations, 8 at once.
    /// After each round the announced chain must hold together ([`checked_chain`]). What
    /// happened, to print.
    async fn key_changes_at_once(url: String) -> String {
        const ROUNDS: i64 = 6;
        const AT_ONCE: usize = 8;
        let mut instances = Vec::new();
        for _ in 0..2 {
            let mut db = Database::connect(&url, 4).await.expect("database");
            db.open_secrets(None, 0).await.expect("secrets");
            instances.push(db);
        }
        let engine = instances[0].engine();
        load(&instances[0], &issuer(), 100).await.expect("load");
        let (mut changed, mut refused, mut concurrent) = (0, 0, 0);
        for round in 0..ROUNDS {
            let now = 1_000 + round * 10;
            let at = format!("{engine:?}, round {round}");
            let published: Vec<String> = server_keys::all_from_pool(&instances[0])
                .await
                .expect("the keys")
                .into_iter()
                .filter(StoredKey::is_published)
                .map(|k| k.kid)
                .collect();
            let tasks = (0..AT_ONCE).map(|i| {
                let db = instances[i % instances.len()].clone();
                let kid = published[i % published.len()].clone();
                tokio::spawn(async move {
                    match i % 3 {
                        0 => rotate(&db, now, 0).await.map(|_| ()),
                        1 => load(&db, &issuer(), now).await.map(|_| ()),
                        _ => revoke(&db, &kid, now).await,
                    }
                })
            });
            for done in crate::domain::testing::joined(tasks.collect()).await {
                match done {
                    Ok(()) => changed += 1,
                    Err(KeyOperationError::Concurrent) => concurrent += 1,
                    Err(KeyOperationError::UnknownKey | KeyOperationError::LastKey) => refused += 1,
                    Err(e) => panic!("{at}: {e}"),
                }
            }
            checked_chain(&instances[0], &issuer(), &at).await;
            // A reload after the round retires what the round rotated out: its set too must
            // be signed by a key of the set before it.
            load(&instances[1], &issuer(), now + 5).await.expect("load");
            checked_chain(&instances[0], &issuer(), &format!("{at}, reloaded")).await;
        }
        let sets = checked_chain(&instances[0], &issuer(), "at the end").await;
        for db in instances {
            db.close().await;
        }
        format!(
            "{engine:?}: {changed} changes done, {refused} refused (the key was gone), \
             {concurrent} told to try again; {sets} sets announced"
        )
    }

    /// Key changes at once (an administrator's rotations and revocations, instances' reloads
    /// retiring keys) are announced one after the other, each from the keys as the change
    /// before left them: on PostgreSQL they take turns on one lock before they read the keys.
    /// Without it, a change that read the keys before another committed would announce the
    /// next number with stale keys (a set without the key that signs).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn key_changes_at_once_announce_a_chain_that_holds_together() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let sqlite = format!("sqlite://{}", dir.path().join("keys.db").display());
        println!("{}", key_changes_at_once(sqlite).await);
        if let Some(url) =
            crate::store::postgres_url_for_tests("change the keys at once on PostgreSQL")
        {
            let figures = server_keys::in_fresh_postgres_schema(&url, key_changes_at_once).await;
            println!("{figures}");
        }
    }
}
