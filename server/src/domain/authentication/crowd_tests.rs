//! A crowd of requests ended every way at once.
//!
//! Many users' requests run side by side. Each is ended by a race that a seeded generator
//! picks: one approval, copies of one approval, an approval against a denial, against the
//! relying party's cancellation, against a passcode, against the unpairing of the device
//! asked, or no answer at all until it expires. On SQLite the racing writes of different
//! users share group commits (`store/writer.rs`); on PostgreSQL they run on connections of
//! their own. Whatever the interleaving, every request must end exactly once:
//! - of its racing endings one wins, and every ending told an outcome was told the same one
//!   (copies of one answer are all told it, and so is an approval that lost to a passcode's:
//!   an answer with the decision recorded is accepted again);
//! - the relying party reads that outcome, and so does a waiter that was waiting before the
//!   race began;
//! - a device waiting for its next request is woken by it;
//! - the follow-ups hear of the ending once;
//! - the audit log holds one record of its creation and one of its ending;
//! - its device has nothing left to pull.
//!
//! The pairwise races are tested one by one in `flow_tests`; this test mixes them, many at a
//! time. `TESSERA_CROWD_SEED` replays a failing run (the seed is printed).

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::json;
use tessera_protocol::authentication::{
    AuthenticationId, AuthenticationRequest, AuthenticationState, Decision,
};
use tessera_protocol::envelope::{self, MessageType};
use tessera_protocol::ids::UserId;

use super::super::device_auth::DeviceCall;
use super::super::events::Topic;
use super::super::outcome::{self, Ending};
use super::super::testing::{
    TestDevice, TestDomain, WAITER_WAIT, crowd_seed, endings_announced, joined, until_waited, woken,
};
use super::{answer, pull, status};
use crate::clock::Clock;
use crate::store::audit::{self, Filter};

/// Users whose requests run side by side.
const USERS: usize = 12;
/// Requests each user makes, one after the other.
const ROUNDS: usize = 6;
/// Every request's lifetime (seconds).
const EXPIRES_IN: u64 = 60;
/// Where the answers come from.
const CLIENT: &str = "198.51.100.7";

/// How a request is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Race {
    /// One approval.
    Approval,
    /// Three copies of one approval at once (a retry while the first is under way).
    Copies,
    /// An approval and a denial at once.
    ApprovalAndDenial,
    /// An approval and the relying party's cancellation at once.
    ApprovalAndCancellation,
    /// An approval and a passcode at once.
    ApprovalAndPasscode,
    /// An approval from a second device while the user unpairs it.
    ApprovalAndUnpairing,
    /// Nobody answers: the request expires.
    Unanswered,
}

const RACES: [Race; 7] = [
    Race::Approval,
    Race::Copies,
    Race::ApprovalAndDenial,
    Race::ApprovalAndCancellation,
    Race::ApprovalAndPasscode,
    Race::ApprovalAndUnpairing,
    Race::Unanswered,
];

/// What one of the racing endings was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    /// The request ended with this state (recorded by it, or the same answer recorded before).
    Ended(AuthenticationState),
    /// Refused, or found the request ended by another.
    Lost,
}

/// One request of the crowd, once its race was run.
#[derive(Debug)]
struct Ran {
    id: AuthenticationId,
    race: Race,
    told: Vec<Told>,
    /// What the waiter that was waiting before the race read, if one waited.
    waited: Option<AuthenticationState>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crowd_of_requests_ended_every_way_at_once_each_end_once() {
    let seed = crowd_seed();
    for domain in TestDomain::each_engine_for_crowds().await {
        let users = domain
            .crowd(USERS, seed, |domain, user, phone, rng| async move {
                run_user(&domain, &user, &phone, rng).await
            })
            .await;
        let ran: Vec<Ran> = users.into_iter().flat_map(|(_, ran)| ran).collect();
        assert_eq!(ran.len(), USERS * ROUNDS);

        for r in &ran {
            let read = status(&domain.ctx, &domain.app.id, r.id.as_str(), Duration::ZERO)
                .await
                .expect("status");
            check_race(r, read.state, seed);
        }

        // The unanswered ones expire; the sweep records each expiry once.
        domain.clock.advance(Duration::from_secs(EXPIRES_IN + 1));
        domain.sweep_expired().await;
        let records = audit::query(
            &domain.ctx.db,
            &Filter {
                application_id: Some(domain.app.id.to_string()),
                ..Filter::default()
            },
            100_000,
            true,
        )
        .await
        .expect("the audit log");
        let mut kinds: HashMap<&str, Vec<&str>> = HashMap::new();
        for stored in &records {
            if let Some(subject) = &stored.record.subject {
                kinds
                    .entry(subject.as_str())
                    .or_default()
                    .push(stored.record.kind.as_str());
            }
        }
        for r in &ran {
            let read = status(&domain.ctx, &domain.app.id, r.id.as_str(), Duration::ZERO)
                .await
                .expect("status");
            if r.race == Race::Unanswered {
                assert_eq!(
                    read.state,
                    AuthenticationState::Expired,
                    "seed {seed}: {r:?}"
                );
            }
            // Oldest first: the creation, then the ending.
            let of_it = kinds.get(r.id.as_str()).cloned().unwrap_or_default();
            let ending = format!("authentication.{}", read.state.as_str());
            assert_eq!(
                of_it,
                vec!["authentication.created", ending.as_str()],
                "seed {seed}: one record of the creation and one of the ending: {r:?}"
            );
        }
    }
}

/// One user's requests, one after the other, each ended by a race `rng` picks.
async fn run_user(
    domain: &TestDomain,
    user: &UserId,
    phone: &TestDevice,
    mut rng: StdRng,
) -> Vec<Ran> {
    let mut ran = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let race = RACES[rng.gen_range(0..RACES.len())];
        let second = match race {
            Race::ApprovalAndUnpairing => Some(domain.device_of(user, false).await),
            _ => None,
        };
        let device = second.as_ref().unwrap_or(phone);
        // A device with nothing pending waits for its next request before it is made: the new
        // request must wake it (and be there to read once it is woken).
        let nothing_pending =
            second.is_some() || !ran.iter().any(|r: &Ran| r.race == Race::Unanswered);
        let puller = nothing_pending.then(|| waiting_pull(domain, device));
        if puller.is_some() {
            let topic = Topic::Enrollment(device.enrollment.enrollment_id.to_string());
            until_waited(&domain.ctx, &topic).await;
        }
        let created = domain
            .ask(
                user,
                json!({
                    "expires_in": EXPIRES_IN,
                    "enrollment_id": device.enrollment.enrollment_id,
                }),
            )
            .await;
        let id = created.authentication_id.clone();
        if let Some(puller) = puller {
            let woken = woken(puller).await;
            assert!(
                woken.iter().any(|r| r.request_id == id),
                "the waiting pull is woken with the new request"
            );
        }
        let request = domain.pulled(device, &id).await;
        let now = domain.clock.now();
        let approval = device.answer(&request, Decision::Approve, created.number_to_show, now);
        let waiter = (race != Race::Unanswered).then(|| {
            let (ctx, app, id) = (domain.ctx.clone(), domain.app.id.clone(), id.clone());
            tokio::spawn(async move {
                status(&ctx, &app, id.as_str(), WAITER_WAIT)
                    .await
                    .expect("the waiter's status")
                    .state
            })
        });
        if waiter.is_some() {
            until_waited(&domain.ctx, &Topic::Authentication(id.to_string())).await;
        }
        let told = match race {
            Race::Approval => joined(vec![spawn_answer(domain, &id, approval)]).await,
            Race::Copies => {
                let copies = (0..3)
                    .map(|_| spawn_answer(domain, &id, approval.clone()))
                    .collect();
                joined(copies).await
            }
            Race::ApprovalAndDenial => {
                let denial = device.answer(&request, Decision::Deny, None, now);
                joined(vec![
                    spawn_answer(domain, &id, approval),
                    spawn_answer(domain, &id, denial),
                ])
                .await
            }
            Race::ApprovalAndCancellation => {
                let approved = spawn_answer(domain, &id, approval);
                let canceled = spawn_ending(domain, &id, false);
                joined(vec![approved, canceled]).await
            }
            Race::ApprovalAndPasscode => {
                let approved = spawn_answer(domain, &id, approval);
                let passcode = spawn_ending(domain, &id, true);
                joined(vec![approved, passcode]).await
            }
            Race::ApprovalAndUnpairing => {
                let approved = spawn_answer(domain, &id, approval);
                let (ctx, enrollment) = (domain.ctx.clone(), device.enrollment.clone());
                let unpaired = tokio::spawn(async move {
                    crate::domain::devices::unpair(&ctx, &enrollment)
                        .await
                        .expect("unpaired");
                });
                let told = approved.await.expect("the answer ran");
                unpaired.await.expect("the unpairing ran");
                vec![told]
            }
            Race::Unanswered => Vec::new(),
        };
        let waited = match waiter {
            Some(waiter) => Some(woken(waiter).await),
            None => None,
        };
        ran.push(Ran {
            id,
            race,
            told,
            waited,
        });
    }
    // Whatever ended how, nothing is left for the phone but the requests nobody answered.
    let left = domain.pull(phone).await;
    let unanswered = ran.iter().filter(|r| r.race == Race::Unanswered).count();
    assert_eq!(
        left.len(),
        unanswered,
        "only the unanswered are left to pull"
    );
    ran
}

/// `device`'s pull of its pending requests, waiting up to 20 seconds for one, on a task of its
/// own: the requests, verified with the server's published keys as a device verifies them.
fn waiting_pull(
    domain: &TestDomain,
    device: &TestDevice,
) -> tokio::task::JoinHandle<Vec<AuthenticationRequest>> {
    let enrollment = device.enrollment.enrollment_id.to_string();
    let path = format!("/v1/device/enrollments/{enrollment}/requests");
    let authorization = device.call("GET", &path, b"", domain.clock.now());
    let (ctx, keys) = (domain.ctx.clone(), domain.ctx.keys.public_set());
    tokio::spawn(async move {
        let call = DeviceCall {
            authorization: Some(&authorization),
            method: "GET",
            path: &path,
            body: b"",
        };
        let pending = pull(&ctx, call, &enrollment, WAITER_WAIT)
            .await
            .expect("pulled");
        pending
            .requests
            .iter()
            .map(|jws| {
                envelope::verify_with_set(jws, MessageType::AuthenticationRequest, &keys)
                    .expect("signed by a published key")
                    .payload
            })
            .collect()
    })
}

/// The device's signed answer `signed` to `id`, as told, on a task of its own, so that racing
/// endings run in parallel.
fn spawn_answer(
    domain: &TestDomain,
    id: &AuthenticationId,
    signed: String,
) -> tokio::task::JoinHandle<Told> {
    let (ctx, id) = (domain.ctx.clone(), id.to_string());
    tokio::spawn(async move {
        match answer(&ctx, &id, &signed, CLIENT).await {
            Ok(recorded) => Told::Ended(recorded.state),
            Err(_) => Told::Lost,
        }
    })
}

/// The relying party's cancellation of `id`, or (`passcode`) a passcode's approval of it, on a
/// task of its own.
fn spawn_ending(
    domain: &TestDomain,
    id: &AuthenticationId,
    passcode: bool,
) -> tokio::task::JoinHandle<Told> {
    let (ctx, id) = (domain.ctx.clone(), id.clone());
    tokio::spawn(async move {
        let ending = if passcode {
            Ending::Passcode {
                attributes: "{}",
                code_digest: None,
            }
        } else {
            Ending::Canceled
        };
        match outcome::record(&ctx, &id, ending)
            .await
            .expect("recorded or not")
        {
            Some(record) => Told::Ended(record.state),
            None => Told::Lost,
        }
    })
}

/// Checks what `r`'s racing endings and its waiter were told against the state read after.
fn check_race(r: &Ran, read: AuthenticationState, seed: u64) {
    let context = format!("seed {seed}: {r:?}, read {read:?}");
    let ended: Vec<AuthenticationState> = r
        .told
        .iter()
        .filter_map(|t| match t {
            Told::Ended(state) => Some(*state),
            Told::Lost => None,
        })
        .collect();
    assert!(
        ended.iter().all(|s| *s == read),
        "told another outcome: {context}"
    );
    match r.race {
        Race::Unanswered => {
            assert_eq!(read, AuthenticationState::Pending, "{context}");
            assert_eq!(endings_announced(&r.id), 0, "{context}");
            return;
        }
        Race::Approval | Race::Copies => {
            assert_eq!(read, AuthenticationState::Approved, "{context}");
            assert_eq!(ended.len(), r.told.len(), "every copy is told: {context}");
        }
        Race::ApprovalAndDenial | Race::ApprovalAndCancellation => {
            assert_eq!(ended.len(), 1, "exactly one ending wins: {context}");
        }
        Race::ApprovalAndPasscode => {
            // Both approve: whichever wins, the device's approval is told the approval it
            // asked for (an answer with the decision recorded is accepted again).
            assert_eq!(read, AuthenticationState::Approved, "{context}");
            assert!(!ended.is_empty(), "one of them wins: {context}");
        }
        Race::ApprovalAndUnpairing => {
            let expected = if ended.is_empty() {
                AuthenticationState::Failed
            } else {
                AuthenticationState::Approved
            };
            assert_eq!(read, expected, "{context}");
        }
    }
    assert_eq!(
        r.waited,
        Some(read),
        "the waiter reads the outcome: {context}"
    );
    assert_eq!(endings_announced(&r.id), 1, "announced once: {context}");
}
