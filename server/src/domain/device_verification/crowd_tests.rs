//! A crowd of new devices, each held for its user's primary device, settled every way at once.
//!
//! Many users side by side (an application whose further devices pair only once the primary
//! device approves) pair new devices one after another. Each new device's verification request
//! is ended by a race a seeded generator picks: one approval, copies of one approval, an
//! approval against a denial, an approval or a denial while the new device reads its own status
//! (a read settles a verification answered meanwhile, racing the follow-up that settles it on
//! the answer's event), or no answer until it expires. Whatever the interleaving, on either
//! engine:
//! - the new device ends active exactly when its verification was approved, and rejected
//!   otherwise, and never becomes primary (its user has one);
//! - every racing answer told an outcome was told the verification's;
//! - the new device's own status read, waiting since before the race, reads how it ended;
//! - the verification's ending is announced once;
//! - each user keeps exactly one primary device.
//!
//! `TESSERA_CROWD_SEED` replays a failing run (the seed is printed).

use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use tessera_protocol::api::EnrollmentState;
use tessera_protocol::authentication::{AuthenticationState, Decision};
use tessera_protocol::ids::UserId;

use super::flow_tests::new_device_pairs;
use crate::clock::Clock;
use crate::domain::events::Topic;
use crate::domain::testing::{
    TestDevice, TestDomain, WAITER_WAIT, crowd_seed, endings_announced, joined, until_waited, woken,
};
use crate::store::authentications;
use crate::store::enrollments::{self, Enrollment};

/// Users pairing new devices side by side.
const USERS: usize = 8;
/// New devices each user pairs, one after the other.
const ROUNDS: usize = 5;
/// Where the new devices pair from, and the answers come from.
const CLIENT: &str = "203.0.113.9";

/// How a new device's verification request is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Race {
    /// The primary device approves.
    Approval,
    /// Three copies of one approval at once.
    Copies,
    /// An approval and a denial at once.
    ApprovalAndDenial,
    /// An approval while the new device reads its status.
    ApprovalAndRead,
    /// A denial while the new device reads its status.
    DenialAndRead,
    /// Nobody answers: the request expires, and the new device is rejected when next read.
    Unanswered,
}

const RACES: [Race; 6] = [
    Race::Approval,
    Race::Copies,
    Race::ApprovalAndDenial,
    Race::ApprovalAndRead,
    Race::DenialAndRead,
    Race::Unanswered,
];

/// One new device of the crowd, once its race was run.
#[derive(Debug)]
struct Ran {
    held: Enrollment,
    race: Race,
    /// What each racing answer was told: the verification's state, or `None` when refused.
    told: Vec<Option<AuthenticationState>>,
    /// What the new device's status read, waiting since before the race, read.
    waited: Option<EnrollmentState>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crowd_of_new_devices_settled_every_way_at_once_each_settle_once() {
    let seed = crowd_seed();
    for domain in TestDomain::each_engine_for_crowds().await {
        domain.verify_new_devices_with_primary().await;
        let users = domain
            .crowd(USERS, seed, |domain, user, phone, rng| async move {
                run_user(&domain, &user, &phone, rng).await
            })
            .await;
        assert_eq!(
            users.iter().map(|(_, ran)| ran.len()).sum::<usize>(),
            USERS * ROUNDS
        );

        for ran in users.iter().flat_map(|(_, ran)| ran) {
            if ran.race != Race::Unanswered {
                check_settled(&domain, ran, seed).await;
            }
        }
        // The unanswered ones expire; each new device is rejected when it is next read.
        domain.clock.advance(Duration::from_secs(
            u64::from(domain.ctx.config.device_verification_ttl) + 1,
        ));
        for ran in users.iter().flat_map(|(_, ran)| ran) {
            if ran.race == Race::Unanswered {
                check_settled(&domain, ran, seed).await;
            }
        }
        for (user, _) in &users {
            let devices = enrollments::list_for_user(&domain.ctx.db, &domain.app.id, user)
                .await
                .expect("the user's devices");
            let primaries = devices.iter().filter(|d| d.is_primary).count();
            assert_eq!(primaries, 1, "seed {seed}: {user}: one primary device");
        }
    }
}

/// One user's new devices, one after the other, each settled by a race `rng` picks.
async fn run_user(
    domain: &TestDomain,
    user: &UserId,
    phone: &TestDevice,
    mut rng: StdRng,
) -> Vec<Ran> {
    let mut ran = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let race = RACES[rng.gen_range(0..RACES.len())];
        let held = new_device_pairs(domain, user).await;
        assert_eq!(held.status, EnrollmentState::PendingVerification);
        assert!(!held.is_primary, "a held device is not primary");
        let verification = held.verification_id.clone().expect("a verification");
        let request = domain.pulled(phone, &verification).await;
        let waiter = (race != Race::Unanswered).then(|| {
            let (ctx, held) = (domain.ctx.clone(), held.clone());
            tokio::spawn(async move {
                crate::domain::devices::enrollment_status(&ctx, held, WAITER_WAIT)
                    .await
                    .expect("the new device's status")
                    .status
            })
        });
        if waiter.is_some() {
            until_waited(
                &domain.ctx,
                &Topic::Enrollment(held.enrollment_id.to_string()),
            )
            .await;
        }
        let now = domain.clock.now();
        let approval = phone.answer(&request, Decision::Approve, None, now);
        let denial = phone.answer(&request, Decision::Deny, None, now);
        let told = match race {
            Race::Approval => joined(vec![spawn_answer(domain, &verification, approval)]).await,
            Race::Copies => {
                let copies = (0..3)
                    .map(|_| spawn_answer(domain, &verification, approval.clone()))
                    .collect();
                joined(copies).await
            }
            Race::ApprovalAndDenial => {
                joined(vec![
                    spawn_answer(domain, &verification, approval),
                    spawn_answer(domain, &verification, denial),
                ])
                .await
            }
            Race::ApprovalAndRead | Race::DenialAndRead => {
                let signed = if race == Race::ApprovalAndRead {
                    approval
                } else {
                    denial
                };
                let answered = spawn_answer(domain, &verification, signed);
                let reads: Vec<_> = (0..2).map(|_| spawn_read(domain, &held)).collect();
                let told = answered.await.expect("the answer ran");
                joined(reads).await;
                vec![told]
            }
            Race::Unanswered => Vec::new(),
        };
        let waited = match waiter {
            Some(waiter) => Some(woken(waiter).await),
            None => None,
        };
        ran.push(Ran {
            held,
            race,
            told,
            waited,
        });
    }
    ran
}

/// The primary device's signed answer `signed` to the verification `id`, on a task of its own:
/// the state it was told, or `None` when refused.
fn spawn_answer(
    domain: &TestDomain,
    id: &tessera_protocol::authentication::AuthenticationId,
    signed: String,
) -> tokio::task::JoinHandle<Option<AuthenticationState>> {
    let (ctx, id) = (domain.ctx.clone(), id.to_string());
    tokio::spawn(async move {
        crate::domain::authentication::answer(&ctx, &id, &signed, CLIENT)
            .await
            .ok()
            .map(|recorded| recorded.state)
    })
}

/// The new device's read of its own status (no wait), on a task of its own: a read settles a
/// verification answered meanwhile.
fn spawn_read(domain: &TestDomain, held: &Enrollment) -> tokio::task::JoinHandle<()> {
    let (ctx, held) = (domain.ctx.clone(), held.clone());
    tokio::spawn(async move {
        crate::domain::devices::enrollment_status(&ctx, held, Duration::ZERO)
            .await
            .expect("the new device's status");
    })
}

/// Checks how `ran`'s new device ended against its verification request.
async fn check_settled(domain: &TestDomain, ran: &Ran, seed: u64) {
    let context = format!("seed {seed}: {ran:?}");
    let verification = ran.held.verification_id.clone().expect("a verification");
    // Read as the device reads it (settling an expired verification).
    let read =
        crate::domain::devices::enrollment_status(&domain.ctx, ran.held.clone(), Duration::ZERO)
            .await
            .expect("the new device's status")
            .status;
    let asked = authentications::get(&domain.ctx.db, &verification, domain.clock.now())
        .await
        .expect("read")
        .expect("the verification request");
    let expected = match asked.state {
        AuthenticationState::Approved => EnrollmentState::Active,
        AuthenticationState::Pending => panic!("still pending: {context}"),
        _ => EnrollmentState::Rejected,
    };
    assert_eq!(read, expected, "{context}, verification {:?}", asked.state);
    let stored = enrollments::by_id(&domain.ctx.db, &ran.held.enrollment_id)
        .await
        .expect("read");
    match expected {
        EnrollmentState::Active => {
            let stored = stored.expect("an active device is stored");
            assert_eq!(stored.status, EnrollmentState::Active, "{context}");
            assert!(
                !stored.is_primary,
                "the user has a primary device: {context}"
            );
            assert_eq!(stored.verification_id, None, "{context}");
        }
        _ => assert!(
            stored
                .as_ref()
                .is_none_or(|s| s.status == EnrollmentState::Rejected),
            "{context}"
        ),
    }
    for told in ran.told.iter().flatten() {
        assert_eq!(*told, asked.state, "told another outcome: {context}");
    }
    if ran.race == Race::Unanswered {
        assert_eq!(asked.state, AuthenticationState::Expired, "{context}");
        return;
    }
    assert!(
        ran.told.iter().any(Option::is_some),
        "one answer is recorded: {context}"
    );
    if ran.race == Race::Copies {
        assert!(
            ran.told.iter().all(Option::is_some),
            "every copy is told: {context}"
        );
    }
    assert_eq!(
        ran.waited,
        Some(read),
        "the waiter reads the outcome: {context}"
    );
    assert_eq!(
        endings_announced(&verification),
        1,
        "announced once: {context}"
    );
}
