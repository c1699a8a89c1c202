//! A crowd of flows stepped every way at once.
//!
//! Many users' flows run side by side, each stepped through by the customer while its push is
//! answered on the user's phone. A seeded generator picks the race each flow runs: copies of
//! `authenticate` sent at once, an approval against the customer's `cancelAuthentication`, a
//! denial while a `poll` waits (sent once it waits), an approval against `useCode`, or no
//! answer until the push expires. On SQLite the racing writes of different users share group
//! commits (`store/writer.rs`); on PostgreSQL they run on connections of their own. Whatever
//! the interleaving:
//! - each flow ends one way, the way its push's stored state says: completed with the push
//!   approved, canceled with it withdrawn, rejected with it denied, timed out with it expired;
//! - every racing call that was told a state of the flow was told one the flow passed through,
//!   naming the flow's push;
//! - the flow's history starts at its creation and each move leaves the status the move before
//!   it reached: no two moves leave the same one, and none leaves a final status;
//! - one push stands per flow: of copies of `authenticate` one moves the flow, and a push made
//!   by a copy that lost is withdrawn;
//! - every push that ended is announced to the follow-ups once;
//! - the phone has nothing left to pull but the pushes nobody answered.
//!
//! The pairwise races are tested one by one in `flow_tests`; this test mixes them, many at a
//! time. `TESSERA_CROWD_SEED` replays a failing run (the seed is printed).

use std::collections::HashSet;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::json;
use tessera_protocol::authentication::{AuthenticationId, AuthenticationState, Decision};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::flows::{
    CreateFlowRequest, FlowAction, FlowEventRecord, FlowState, FlowStatus,
};
use tessera_protocol::ids::UserId;

use super::{act, create, get, history};
use crate::clock::Clock;
use crate::domain::DomainError;
use crate::domain::authentication::{answer, status};
use crate::domain::events::Topic;
use crate::domain::testing::{
    TestDevice, TestDomain, crowd_seed, endings_announced, joined, until_waited,
};

/// Users whose flows run side by side.
const USERS: usize = 10;
/// Flows each user runs, one after the other.
const ROUNDS: usize = 4;
/// Every flow's lifetime (seconds): far longer than the one move of the clock.
const FLOW_LIFETIME: u32 = 3600;
/// The lifetime of a flow's push (seconds): the most a push may live, which a flow with more
/// time left asks for.
const PUSH_LIFETIME: u64 = 120;
/// How long a racing `poll` waits (seconds): far longer than the race takes.
const POLL_WAIT: u64 = 20;
/// Where the device's answers come from.
const CLIENT: &str = "198.51.100.7";

/// How a flow is stepped through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Race {
    /// Two or three copies of `authenticate` at once, then the device approves.
    AuthenticateCopies,
    /// The device approves while the customer cancels the flow.
    ApprovalAndCancellation,
    /// The device denies once the customer's poll waits.
    DenialWhilePolling,
    /// The device approves while the customer switches to the app's passcode (`useCode`).
    ApprovalAndUseCode,
    /// Nobody answers: the push expires.
    Unanswered,
}

/// Every race, for the generator to pick from.
const RACES: [Race; 5] = [
    Race::AuthenticateCopies,
    Race::ApprovalAndCancellation,
    Race::DenialWhilePolling,
    Race::ApprovalAndUseCode,
    Race::Unanswered,
];

/// What one of the customer's racing calls was told.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Told {
    /// The flow as it stood.
    State {
        /// The flow's status.
        status: FlowStatus,
        /// The push it named.
        push: Option<AuthenticationId>,
    },
    /// Refused, with this code.
    Refused(Option<ErrorCode>),
}

impl Told {
    /// What an action's `result` tells its caller.
    fn of(result: Result<FlowState, DomainError>) -> Told {
        match result {
            Ok(state) => Told::State {
                status: state.status,
                push: state.push.map(|p| p.authentication_id),
            },
            Err(e) => Told::Refused(e.code()),
        }
    }
}

/// One flow of the crowd, once its race was run.
#[derive(Debug)]
struct Ran {
    /// The flow's id.
    flow: String,
    /// The race it ran.
    race: Race,
    /// What the customer's racing calls were told (the copies of `authenticate`, the
    /// cancellation, the poll, `useCode`).
    told: Vec<Told>,
    /// Whether the device's answer was recorded (none when nobody answered).
    answered: Option<bool>,
    /// The pushes made for the user while the flow ran: the flow's, and any a losing copy of
    /// `authenticate` made.
    pushes: Vec<AuthenticationId>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crowd_of_flows_stepped_every_way_at_once_each_end_one_way() {
    let seed = crowd_seed();
    for domain in TestDomain::each_engine_for_crowds().await {
        let users = domain
            .crowd(USERS, seed, move |domain, user, phone, rng| async move {
                run_user(&domain, &user, &phone, rng, seed).await
            })
            .await;
        let ran: Vec<Ran> = users.into_iter().flat_map(|(_, ran)| ran).collect();
        assert_eq!(ran.len(), USERS * ROUNDS);

        // Before the clock moves, nobody answered the unanswered ones: they still wait.
        for r in ran.iter().filter(|r| r.race == Race::Unanswered) {
            let read = get(&domain.ctx, &domain.app.id, &r.flow)
                .await
                .expect("read");
            assert_eq!(
                read.status,
                FlowStatus::PushConfirmationWaiting,
                "seed {seed}: {r:?}"
            );
        }
        // Their pushes expire; no flow expires.
        domain.clock.advance(Duration::from_secs(PUSH_LIFETIME + 1));
        for r in &ran {
            check_flow(&domain, r, seed).await;
        }
    }
}

/// One user's flows, one after the other, each stepped through by a race `rng` picks.
async fn run_user(
    domain: &TestDomain,
    user: &UserId,
    phone: &TestDevice,
    mut rng: StdRng,
    seed: u64,
) -> Vec<Ran> {
    let mut ran = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let race = RACES[rng.gen_range(0..RACES.len())];
        let before = pushes_of(domain, user).await;
        let flow = flow_for(domain, user).await;
        let id = flow.id.to_string();
        let copies = match race {
            Race::AuthenticateCopies => rng.gen_range(2..=3),
            _ => 1,
        };
        let authenticated: Vec<Told> = joined(
            (0..copies)
                .map(|_| spawn_act(domain, &id, authenticate()))
                .collect(),
        )
        .await;
        let mut told = Vec::new();
        if race == Race::AuthenticateCopies {
            told = authenticated;
        } else {
            assert!(
                matches!(
                    authenticated.as_slice(),
                    [Told::State {
                        status: FlowStatus::PushConfirmationWaiting,
                        push: Some(_)
                    }]
                ),
                "seed {seed}: one authenticate pushes: {authenticated:?}"
            );
        }
        let waiting = get(&domain.ctx, &domain.app.id, &id).await.expect("read");
        assert_eq!(
            waiting.status,
            FlowStatus::PushConfirmationWaiting,
            "seed {seed}: {race:?}"
        );
        let push = waiting.push.expect("the flow's push");
        let request = domain.pulled(phone, &push.authentication_id).await;
        let now = domain.clock.now();
        let approval = phone.answer(&request, Decision::Approve, push.number_to_show, now);
        let denial = phone.answer(&request, Decision::Deny, None, now);
        let push_id = push.authentication_id;
        let answered = match race {
            Race::AuthenticateCopies => Some(
                spawn_answer(domain, &push_id, approval)
                    .await
                    .expect("the answer ran"),
            ),
            Race::ApprovalAndCancellation => {
                let approved = spawn_answer(domain, &push_id, approval);
                let canceled = spawn_act(domain, &id, FlowAction::CancelAuthentication {});
                told.push(canceled.await.expect("the cancellation ran"));
                Some(approved.await.expect("the answer ran"))
            }
            Race::DenialWhilePolling => {
                let polled = spawn_act(
                    domain,
                    &id,
                    FlowAction::Poll {
                        wait: Some(POLL_WAIT),
                    },
                );
                until_waited(&domain.ctx, &Topic::Flow(id.clone())).await;
                let denied = spawn_answer(domain, &push_id, denial);
                told.push(polled.await.expect("the poll ran"));
                Some(denied.await.expect("the answer ran"))
            }
            Race::ApprovalAndUseCode => {
                let approved = spawn_answer(domain, &push_id, approval);
                let switched = spawn_act(domain, &id, FlowAction::UseCode {});
                told.push(switched.await.expect("useCode ran"));
                Some(approved.await.expect("the answer ran"))
            }
            Race::Unanswered => None,
        };
        let after = pushes_of(domain, user).await;
        ran.push(Ran {
            flow: id,
            race,
            told,
            answered,
            pushes: after.difference(&before).cloned().collect(),
        });
    }
    // Whatever ended how, nothing is left for the phone but the pushes nobody answered.
    let left: HashSet<AuthenticationId> = domain
        .pull(phone)
        .await
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    let mut unanswered = HashSet::new();
    for r in ran.iter().filter(|r| r.race == Race::Unanswered) {
        let read = get(&domain.ctx, &domain.app.id, &r.flow)
            .await
            .expect("read");
        unanswered.insert(read.push.expect("the flow's push").authentication_id);
    }
    assert_eq!(
        left, unanswered,
        "seed {seed}: only the unanswered pushes are left to pull"
    );
    ran
}

/// `authenticate`, asking the user's default device.
fn authenticate() -> FlowAction {
    FlowAction::Authenticate {
        mobile_payload: None,
        authorization_payload: None,
    }
}

/// A new flow for `user` that offers the app's passcode while the push waits.
async fn flow_for(domain: &TestDomain, user: &UserId) -> FlowState {
    let body: CreateFlowRequest = serde_json::from_value(json!({
        "user_id": user,
        "use_code": true,
        "expires_in": FLOW_LIFETIME,
    }))
    .expect("a flow request");
    create(&domain.ctx, &domain.app, body)
        .await
        .expect("created")
}

/// The ids of every push made for `user` so far.
async fn pushes_of(domain: &TestDomain, user: &UserId) -> HashSet<AuthenticationId> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM authentications WHERE application_id = $1 AND user_id = $2",
    )
    .bind(domain.app.id.as_str())
    .bind(user.as_str())
    .fetch_all(domain.ctx.db.pool())
    .await
    .expect("the user's pushes");
    ids.into_iter()
        .map(|id| id.parse().expect("an authentication id"))
        .collect()
}

/// The customer's `action` on flow `id`, on a task of its own, so that racing calls run in
/// parallel.
fn spawn_act(domain: &TestDomain, id: &str, action: FlowAction) -> tokio::task::JoinHandle<Told> {
    let (ctx, app, id) = (domain.ctx.clone(), domain.app.clone(), id.to_string());
    tokio::spawn(async move { Told::of(act(&ctx, &app, &id, action).await) })
}

/// The device's signed answer `signed` to the push `id`, on a task of its own: whether it was
/// recorded.
fn spawn_answer(
    domain: &TestDomain,
    id: &AuthenticationId,
    signed: String,
) -> tokio::task::JoinHandle<bool> {
    let (ctx, id) = (domain.ctx.clone(), id.to_string());
    tokio::spawn(async move { answer(&ctx, &id, &signed, CLIENT).await.is_ok() })
}

/// Checks `r`'s flow, its history, its pushes and what its racing calls were told.
async fn check_flow(domain: &TestDomain, r: &Ran, seed: u64) {
    let read = get(&domain.ctx, &domain.app.id, &r.flow)
        .await
        .expect("read");
    let events = history(&domain.ctx, &domain.app.id, &r.flow)
        .await
        .expect("history")
        .events;
    let context = format!(
        "seed {seed} on {:?}: {r:?}\nread {read:?}\nhistory {events:#?}",
        domain.ctx.db.engine()
    );

    // The history starts at the creation; each move leaves the status the one before reached.
    let moves: Vec<&FlowEventRecord> = events.iter().filter(|e| e.error.is_none()).collect();
    let created = moves.first().expect("the creation");
    assert_eq!(created.action, "create", "{context}");
    assert_eq!(created.from_status, None, "{context}");
    assert_eq!(
        created.to_status,
        FlowStatus::AuthenticationRequired,
        "{context}"
    );
    for pair in moves.windows(2) {
        assert!(
            !pair[0].to_status.is_final(),
            "a move out of a final status: {context}"
        );
        assert_eq!(
            pair[1].from_status,
            Some(pair[0].to_status),
            "two moves out of one status: {context}"
        );
    }
    assert_eq!(
        moves.last().map(|m| m.to_status),
        Some(read.status),
        "{context}"
    );
    let passed: Vec<FlowStatus> = moves.iter().map(|m| m.to_status).collect();
    for refusal in events.iter().filter(|e| e.error.is_some()) {
        assert_eq!(
            refusal.from_status,
            Some(refusal.to_status),
            "a refusal moved nothing: {context}"
        );
        assert!(passed.contains(&refusal.to_status), "{context}");
    }
    assert_eq!(
        moves.iter().filter(|m| m.action == "authenticate").count(),
        1,
        "one authenticate moved the flow: {context}"
    );

    // One push stands: the flow's; any other made for it was withdrawn, and announced once.
    let push = read
        .push
        .as_ref()
        .expect("the flow's push")
        .authentication_id
        .clone();
    assert!(r.pushes.contains(&push), "{context}");
    for other in r.pushes.iter().filter(|p| **p != push) {
        let withdrawn = status(&domain.ctx, &domain.app.id, other.as_str(), Duration::ZERO)
            .await
            .expect("status");
        assert_eq!(
            (withdrawn.state, withdrawn.failure_reason.as_deref()),
            (AuthenticationState::Failed, Some("canceled")),
            "a losing copy's push is withdrawn: {context}"
        );
        assert_eq!(endings_announced(other), 1, "{context}");
    }

    // The racing calls were told states the flow passed through, naming its push.
    for told in &r.told {
        match told {
            Told::State {
                status,
                push: named,
            } => {
                assert!(passed.contains(status), "told {told:?}: {context}");
                if let Some(named) = named {
                    assert_eq!(named, &push, "told {told:?}: {context}");
                }
            }
            Told::Refused(code) => assert!(
                matches!(
                    code,
                    Some(ErrorCode::Conflict | ErrorCode::ActionNotAllowed)
                ),
                "told {told:?}: {context}"
            ),
        }
    }

    // The flow ended the way its push says.
    let stored = status(&domain.ctx, &domain.app.id, push.as_str(), Duration::ZERO)
        .await
        .expect("status");
    let pushed = (stored.state, stored.failure_reason.as_deref());
    match read.status {
        FlowStatus::MfaCompleted => {
            assert_eq!(pushed, (AuthenticationState::Approved, None), "{context}");
            assert_eq!(
                read.result
                    .as_ref()
                    .and_then(|r| r.authentication_id.as_ref()),
                Some(&push),
                "{context}"
            );
        }
        FlowStatus::Canceled => assert_eq!(
            pushed,
            (AuthenticationState::Failed, Some("canceled")),
            "{context}"
        ),
        FlowStatus::PushConfirmationRejected => {
            assert_eq!(pushed, (AuthenticationState::Denied, None), "{context}");
        }
        FlowStatus::PushConfirmationTimedOut => {
            assert_eq!(pushed, (AuthenticationState::Expired, None), "{context}");
        }
        other => panic!("the flow ended {other:?}: {context}"),
    }
    let ended = matches!(
        stored.state,
        AuthenticationState::Approved | AuthenticationState::Denied | AuthenticationState::Failed
    );
    assert_eq!(
        endings_announced(&push),
        usize::from(ended),
        "announced once if it ended: {context}"
    );

    let states: Vec<FlowStatus> = r
        .told
        .iter()
        .filter_map(|t| match t {
            Told::State { status, .. } => Some(*status),
            Told::Refused(_) => None,
        })
        .collect();
    match r.race {
        Race::AuthenticateCopies => {
            assert_eq!(
                states,
                vec![FlowStatus::PushConfirmationWaiting],
                "one copy moves the flow: {context}"
            );
            assert_eq!(read.status, FlowStatus::MfaCompleted, "{context}");
            assert_eq!(r.answered, Some(true), "{context}");
        }
        Race::ApprovalAndCancellation => match read.status {
            FlowStatus::MfaCompleted => {
                assert_eq!(r.answered, Some(true), "{context}");
                assert!(
                    !states.contains(&FlowStatus::Canceled),
                    "the cancellation lost: {context}"
                );
            }
            FlowStatus::Canceled => {
                assert_eq!(r.answered, Some(false), "{context}");
                assert_eq!(states, vec![FlowStatus::Canceled], "{context}");
            }
            other => panic!("ended {other:?}: {context}"),
        },
        Race::DenialWhilePolling => {
            assert_eq!(
                read.status,
                FlowStatus::PushConfirmationRejected,
                "{context}"
            );
            assert_eq!(
                states,
                vec![FlowStatus::PushConfirmationRejected],
                "the poll reads the denial: {context}"
            );
            assert_eq!(r.answered, Some(true), "{context}");
        }
        Race::ApprovalAndUseCode => {
            assert_eq!(read.status, FlowStatus::MfaCompleted, "{context}");
            assert_eq!(r.answered, Some(true), "{context}");
        }
        Race::Unanswered => {
            assert_eq!(
                read.status,
                FlowStatus::PushConfirmationTimedOut,
                "{context}"
            );
            assert_eq!(r.answered, None, "{context}");
        }
    }
}
