//! A crowd of QR logins, each step of each one raced every way at once.
//!
//! Many users sign in with QR codes side by side, several times each, one login after the
//! other, under the three QR policies (none, extra verification, user approval: one application
//! each). Each step of a login is a race a seeded generator picks:
//! - the scan: one claim, copies of one device's claim sent at once, two devices (the user's
//!   second phone, or another user's) claiming at once (the phone's claim sent once or twice),
//!   or nobody scans;
//! - the answer: one approval, copies of it, an approval (sent once or twice) against a denial,
//!   an approval against the withdrawal of the session (the one ending of a session other than
//!   its answer: a flow withdraws its code when it moves on), an approval from a spare phone
//!   against the user unpairing that phone, or nobody answers;
//! - under a policy with a follow-up, the request that follows: one approval, copies of it, an
//!   approval against a denial (a silent verification cannot be denied), or nobody answers.
//!
//! On SQLite the racing writes of different users share group commits (`store/writer.rs`); on
//! PostgreSQL they run on connections of their own. Whatever the interleaving:
//! - of devices claiming at once one wins and the others are told `qr_already_scanned`; copies
//!   of one device's claim all get the context it won with;
//! - of racing endings one wins, and every caller told an outcome was told the one the session
//!   records (copies of one answer are all told it); a loser is told why it lost
//!   (`already_answered`, `qr_session_expired`);
//! - an approval racing the unpairing of its phone is either refused (`unauthorized`) or
//!   recorded; recorded with a follow-up, the unpairing fails that follow-up and the session
//!   with it: no follow-up is left pending for a device that is gone;
//! - reads racing a step see the session as it was before or after it, never anything else; the
//!   relying party's waiter and the login page's, both waiting from before the step, are woken
//!   and read the state after it; reads sent at once after it agree in every field (the result
//!   is a read the relying party may repeat: nothing in it is redeemed once);
//! - a follow-up completes its session by its own outcome, is announced ended once, and a
//!   device has nothing left to pull but the follow-ups nobody answered;
//! - once time passes, a session whose follow-up expired reads expired (the reads that notice it
//!   settle it, racing each other), then every session that had not ended reads expired, and a
//!   late scan of a code nobody scanned is told so;
//! - the audit log holds one record of each follow-up's creation and then one of its ending,
//!   also when the unpairing of its device ends it (the creation is recorded in the answer's
//!   write), and no record twice for a session (QR sessions write none of their own:
//!   `domain/audit.rs`).
//!
//! Session lifetimes are the longest allowed, and the clock moves only once every login ran,
//! since all users share it. The pairwise races are tested one by one in `flow_tests`; this
//! test mixes them, many at a time. `TESSERA_CROWD_SEED` replays a run (the seed is printed).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_protocol::api::{
    ClaimQrSession, CreateQrSession, QrAnswerRecorded, QrBrowserStatus, QrSessionClaimed,
    QrSessionCreated, QrSessionStatus, ResponseRecorded,
};
use tessera_protocol::authentication::{
    AuthenticationId, AuthenticationKind, AuthenticationRequest, AuthenticationState, Decision,
};
use tessera_protocol::envelope::MessageType;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::{ApplicationId, EnrollmentId};
use tessera_protocol::qr::{QrSessionContext, QrSessionId, QrSessionState, QrUri};
use tokio::task::JoinHandle;

use super::{
    after_follow_up, answer, browser_status, claim, create_session, status, withdraw_for_flow,
};
use crate::clock::Clock;
use crate::domain::DomainError;
use crate::domain::events::Topic;
use crate::domain::testing::{
    TestDevice, TestDomain, WAITER_WAIT, crowd_seed, endings_announced, joined, sent_at_once,
};
use crate::store::applications::{self, Application, QrPolicy};
use crate::store::audit::{self, Filter};
use crate::store::authentications;

/// Users signing in side by side.
const USERS: usize = 10;
/// Logins each user makes, one after the other.
const ROUNDS: usize = 5;
/// Every session's lifetime (seconds): the longest allowed, far beyond the time a run takes.
const SESSION_SECONDS: u32 = 900;
/// The longest a follow-up lives (a push approval's; a silent verification's is shorter).
const FOLLOW_UP_SECONDS: u64 = 300;
/// How soon after its step a waiter (waiting [`WAITER_WAIT`]) must have answered: well before
/// its deadline, so that a waiter that was never woken (and answered only at its deadline)
/// fails, as [`crate::domain::testing::woken`] checks.
const WOKEN_WITHIN: Duration = Duration::from_secs(WAITER_WAIT.as_secs() / 2);
/// The longest the unpairing racing an approval starts after it (microseconds).
const UNPAIRING_DELAY_MICROS: u64 = 6_000;
/// Where the answers come from.
const CLIENT: &str = "198.51.100.7";
/// The QR policies, one application each; user `u` signs in to application `u % 3`.
const POLICIES: [QrPolicy; 3] = [
    QrPolicy::None,
    QrPolicy::ExtraVerification,
    QrPolicy::UserApproval,
];

/// How the code is scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// One claim by the user's phone.
    Once,
    /// Copies of the phone's claim at once (a retry while the first is under way).
    Copies,
    /// The phone (its claim sent once, or twice) and another device claim at once.
    TwoDevices,
    /// Nobody scans: the session expires.
    Nobody,
}

const SCANS: [Scan; 4] = [Scan::Once, Scan::Copies, Scan::TwoDevices, Scan::Nobody];

/// How the device that scanned answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// One approval.
    Approval,
    /// Copies of one approval at once.
    Copies,
    /// An approval (sent once, or twice) and a denial at once.
    ApprovalAndDenial,
    /// An approval and the session's withdrawal at once.
    ApprovalAndWithdrawal,
    /// An approval from a spare phone while the user unpairs it.
    ApprovalAndUnpairing,
    /// Nobody answers: the session expires.
    Unanswered,
}

const ANSWERS: [Answer; 6] = [
    Answer::Approval,
    Answer::Copies,
    Answer::ApprovalAndDenial,
    Answer::ApprovalAndWithdrawal,
    Answer::ApprovalAndUnpairing,
    Answer::Unanswered,
];

/// How the request that follows an approval is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FollowUpAnswer {
    /// One approval.
    Approval,
    /// Copies of one approval at once.
    Copies,
    /// An approval and a denial at once.
    ApprovalAndDenial,
    /// Nobody answers: the follow-up expires, and with it the session.
    Unanswered,
    /// The device it was sent to was unpaired: not drawn, the end of a follow-up started by
    /// [`Answer::ApprovalAndUnpairing`].
    DeviceUnpaired,
}

const FOLLOW_UP_ANSWERS: [FollowUpAnswer; 4] = [
    FollowUpAnswer::Approval,
    FollowUpAnswer::Copies,
    FollowUpAnswer::ApprovalAndDenial,
    FollowUpAnswer::Unanswered,
];

/// The follow-up a login's approval started.
#[derive(Debug)]
struct FollowUp {
    id: AuthenticationId,
    /// The device it was sent to.
    device: EnrollmentId,
    race: FollowUpAnswer,
}

/// One login of the crowd, once its races were run.
#[derive(Debug)]
struct Login {
    /// Who ran it and how, for the failure messages.
    label: String,
    app: ApplicationId,
    id: QrSessionId,
    browser_token: String,
    scan: Scan,
    answer: Option<Answer>,
    follow_up: Option<FollowUp>,
    /// The state read once its races were run.
    state: QrSessionState,
    /// What the phone would send, scanning the code late (for a code nobody scanned).
    late_scan: Option<ClaimQrSession>,
}

/// One user signing in again and again.
struct Player {
    domain: Arc<TestDomain>,
    app: Application,
    policy: QrPolicy,
    phone: Arc<TestDevice>,
    /// The other device that scans the phone's codes in [`Scan::TwoDevices`].
    rival: Arc<TestDevice>,
    /// A phone for each login, to scan and be unpaired in [`Answer::ApprovalAndUnpairing`].
    spares: Vec<Arc<TestDevice>>,
    name: String,
    seed: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crowd_of_qr_logins_raced_at_every_step_each_end_once() {
    let seed = crowd_seed();
    for mut domain in TestDomain::each_engine().await {
        let apps = applications_by_policy(&domain).await;
        let home = domain.app.clone();
        // The helpers make users (and their devices) in `domain.app`: it names each user's
        // application while the user is made.
        let mut users = Vec::with_capacity(USERS);
        let mut devices = Vec::new();
        for u in 0..USERS {
            domain.app = apps[u % POLICIES.len()].clone();
            let (user, phone) = domain.user_with_device(&format!("qr-crowd-{u}")).await;
            let phone = Arc::new(phone);
            // The first user of each application has a second phone.
            let second = if u < POLICIES.len() {
                Some(Arc::new(domain.device_of(&user, false).await))
            } else {
                None
            };
            let mut spares = Vec::with_capacity(ROUNDS);
            for _ in 0..ROUNDS {
                spares.push(Arc::new(domain.device_of(&user, false).await));
            }
            devices.push(phone.clone());
            devices.extend(second.clone());
            users.push((phone, second, spares));
        }
        domain.app = home;
        let domain = Arc::new(domain);

        let mut players = Vec::with_capacity(USERS);
        for (u, (phone, second, spares)) in users.iter().enumerate() {
            // The second phone, or else the phone of the next user of the same application.
            let rival = second.clone().unwrap_or_else(|| {
                let next = u + POLICIES.len();
                let next = if next < USERS {
                    next
                } else {
                    u % POLICIES.len()
                };
                users[next].0.clone()
            });
            let player = Player {
                domain: domain.clone(),
                app: apps[u % POLICIES.len()].clone(),
                policy: POLICIES[u % POLICIES.len()],
                phone: phone.clone(),
                rival,
                spares: spares.clone(),
                name: format!("qr-crowd-{u} on {:?}", domain.ctx.db.engine()),
                seed,
            };
            let rng = StdRng::seed_from_u64(seed.wrapping_add(u as u64));
            players.push(tokio::spawn(player.logins(rng)));
        }
        let logins: Vec<Login> = joined(players).await.into_iter().flatten().collect();
        assert_eq!(logins.len(), USERS * ROUNDS);
        the_crowd_ends_as_time_passes(&domain, &devices, &logins, seed).await;
    }
}

/// The application of each of [`POLICIES`], in order: the test domain's own (policy none), and
/// one more for each other policy.
async fn applications_by_policy(domain: &TestDomain) -> Vec<Application> {
    let mut apps = Vec::with_capacity(POLICIES.len());
    for policy in POLICIES {
        if policy == QrPolicy::None {
            apps.push(domain.app.clone());
            continue;
        }
        let app = Application {
            id: ApplicationId::generate(),
            name: format!("Bank ({})", policy.as_str()),
            created_at: domain.clock.now(),
        };
        applications::insert(&domain.ctx.db, &app, &format!("digest {}", app.id))
            .await
            .expect("application");
        assert!(
            applications::set_qr_policy(&domain.ctx.db, &app.id, policy)
                .await
                .expect("set")
        );
        apps.push(app);
    }
    apps
}

/// After every login ran: nothing moved on by itself, the devices have only the unanswered
/// follow-ups to pull; once those expire their sessions read expired; once the sessions expire,
/// everything not ended reads expired; and the audit log holds each record once.
async fn the_crowd_ends_as_time_passes(
    domain: &TestDomain,
    devices: &[Arc<TestDevice>],
    logins: &[Login],
    seed: u64,
) {
    for login in logins {
        let read = rp_status(domain, login).await;
        assert_eq!(read.state, login.state, "seed {seed}: {login:?}");
    }
    let unanswered = |device: &TestDevice| -> BTreeSet<AuthenticationId> {
        logins
            .iter()
            .filter_map(|l| l.follow_up.as_ref())
            .filter(|f| {
                f.race == FollowUpAnswer::Unanswered && f.device == device.enrollment.enrollment_id
            })
            .map(|f| f.id.clone())
            .collect()
    };
    for device in devices {
        let left: BTreeSet<AuthenticationId> = domain
            .pull(device)
            .await
            .into_iter()
            .map(|r| r.request_id)
            .collect();
        assert_eq!(
            left,
            unanswered(device),
            "seed {seed}: only the follow-ups nobody answered are left to pull"
        );
    }

    // The follow-ups expire, the sessions not yet: the sessions waiting for an unanswered one
    // read expired, settled by whichever read notices first (the relying party's and the
    // login page's, at once).
    domain
        .clock
        .advance(Duration::from_secs(FOLLOW_UP_SECONDS + 1));
    let mut reads = Vec::new();
    for login in logins {
        let (ctx, app, id) = (domain.ctx.clone(), login.app.clone(), login.id.to_string());
        let token = login.browser_token.clone();
        reads.push(tokio::spawn(async move {
            let (a, b, page) = tokio::join!(
                status(&ctx, &app, &id, Duration::ZERO),
                status(&ctx, &app, &id, Duration::ZERO),
                browser_status(&ctx, Some(&token), Duration::ZERO, None),
            );
            [
                a.expect("status").state,
                b.expect("status").state,
                page.expect("the login page's status").state,
            ]
        }));
    }
    for (login, read) in logins.iter().zip(joined(reads).await) {
        let expected = match &login.follow_up {
            Some(f) if f.race == FollowUpAnswer::Unanswered => QrSessionState::Expired,
            _ => login.state,
        };
        assert_eq!(
            read, [expected; 3],
            "seed {seed}: the follow-ups expired: {login:?}"
        );
    }
    for device in devices {
        assert!(
            domain.pull(device).await.is_empty(),
            "seed {seed}: nothing left to pull once the follow-ups expired"
        );
    }

    // The sessions expire: whatever had not ended reads expired; a late scan is told so.
    domain.clock.advance(Duration::from_secs(
        u64::from(SESSION_SECONDS) - FOLLOW_UP_SECONDS,
    ));
    for login in logins {
        let read = rp_status(domain, login).await;
        let expected = if login.state.is_final() {
            login.state
        } else {
            QrSessionState::Expired
        };
        assert_eq!(read.state, expected, "seed {seed}: expired: {login:?}");
        if let Some(late) = &login.late_scan {
            let phone = devices
                .iter()
                .find(|d| late.enrollment_ids.contains(&d.enrollment.enrollment_id))
                .expect("the phone");
            assert_eq!(
                claim(&domain.ctx, &phone.enrollment, late.clone())
                    .await
                    .expect_err("too late")
                    .code(),
                Some(ErrorCode::QrSessionExpired),
                "seed {seed}: {login:?}"
            );
        }
    }

    // The audit log: each follow-up's creation and ending once, in that order; nothing of a
    // session twice. The expiries are swept for this test's applications only (tests sharing a
    // database each move a clock of their own).
    let mut kinds: HashMap<String, Vec<String>> = HashMap::new();
    for app in logins.iter().map(|l| &l.app).collect::<BTreeSet<_>>() {
        while crate::domain::audit::sweep_expired_of(&domain.ctx, Some(app))
            .await
            .expect("swept")
            > 0
        {}
        let records = audit::query(
            &domain.ctx.db,
            &Filter {
                application_id: Some(app.to_string()),
                ..Filter::default()
            },
            100_000,
            true,
        )
        .await
        .expect("the audit log");
        for stored in records {
            if let Some(subject) = stored.record.subject {
                kinds.entry(subject).or_default().push(stored.record.kind);
            }
        }
    }
    for login in logins {
        let of_session = kinds.get(login.id.as_str()).cloned().unwrap_or_default();
        let distinct: BTreeSet<&String> = of_session.iter().collect();
        assert_eq!(
            distinct.len(),
            of_session.len(),
            "seed {seed}: no record of the session twice: {of_session:?} {login:?}"
        );
        if let Some(f) = &login.follow_up {
            let ended = authentications::get(&domain.ctx.db, &f.id, domain.clock.now())
                .await
                .expect("read")
                .expect("stored")
                .state;
            let ending = format!("authentication.{}", ended.as_str());
            let of_follow_up = kinds.get(f.id.as_str()).cloned().unwrap_or_default();
            assert_eq!(
                of_follow_up,
                vec!["authentication.created".to_string(), ending],
                "seed {seed}: one record of the follow-up's creation and one of its ending: \
                 {login:?}"
            );
        }
    }
}

/// The relying party's read of `login`'s session, now.
async fn rp_status(domain: &TestDomain, login: &Login) -> QrSessionStatus {
    status(&domain.ctx, &login.app, login.id.as_str(), Duration::ZERO)
        .await
        .expect("status")
}

impl Player {
    /// The user's logins, one after the other, each step raced as `rng` picks.
    async fn logins(self, mut rng: StdRng) -> Vec<Login> {
        let mut logins = Vec::with_capacity(ROUNDS);
        for round in 0..ROUNDS {
            logins.push(self.login(round, &mut rng).await);
        }
        logins
    }

    /// One login: the session created, then its scan, answer and follow-up, each raced.
    async fn login(&self, round: usize, rng: &mut StdRng) -> Login {
        let domain = &self.domain;
        let created = create_session(
            &domain.ctx,
            &self.app,
            CreateQrSession {
                expires_in: Some(SESSION_SECONDS),
                ..CreateQrSession::default()
            },
        )
        .await
        .expect("a session");
        let mut scan = SCANS[rng.gen_range(0..SCANS.len())];
        let race = ANSWERS[rng.gen_range(0..ANSWERS.len())];
        // The spare phone the user unpairs scans the code alone.
        let phone = if race == Answer::ApprovalAndUnpairing {
            if scan == Scan::TwoDevices {
                scan = Scan::Copies;
            }
            self.spares[round].clone()
        } else {
            self.phone.clone()
        };
        let mut login = Login {
            label: format!(
                "seed {}: {} ({}), login {round}",
                self.seed,
                self.name,
                self.policy.as_str()
            ),
            app: self.app.id.clone(),
            id: created.session_id.clone(),
            browser_token: created.browser_token.clone(),
            scan,
            answer: None,
            follow_up: None,
            state: QrSessionState::Created,
            late_scan: None,
        };
        let Some((device, context)) = self.scanned(&login, &created, scan, &phone, rng).await
        else {
            login.late_scan = Some(scanned(&created, &self.phone));
            return login;
        };
        login.state = QrSessionState::Scanned;

        login.answer = Some(race);
        if race == Answer::ApprovalAndUnpairing {
            let (state, follow_up) = self
                .approved_while_unpaired(&login, &device, &context, rng)
                .await;
            login.state = state;
            login.follow_up = follow_up.map(|id| FollowUp {
                id,
                device: device.enrollment.enrollment_id.clone(),
                race: FollowUpAnswer::DeviceUnpaired,
            });
            return login;
        }
        let answered = self.answered(&login, &device, &context, race, rng).await;
        login.state = answered.state;
        let Some(follow_up) = answered.follow_up else {
            return login;
        };
        let race = FOLLOW_UP_ANSWERS[rng.gen_range(0..FOLLOW_UP_ANSWERS.len())];
        login.follow_up = Some(FollowUp {
            id: follow_up.clone(),
            device: device.enrollment.enrollment_id.clone(),
            race,
        });
        login.state = self
            .followed_up(&login, &device, &follow_up, race, rng)
            .await;
        login
    }

    /// The scan `race`: the device that claimed the session and the context it verified, or
    /// `None` when nobody scans.
    async fn scanned(
        &self,
        login: &Login,
        created: &QrSessionCreated,
        race: Scan,
        phone: &Arc<TestDevice>,
        rng: &mut StdRng,
    ) -> Option<(Arc<TestDevice>, QrSessionContext)> {
        let ctx = &self.domain.ctx;
        let spawn_claim = |device: &TestDevice| {
            let (ctx, enrollment, request) = (
                ctx.clone(),
                device.enrollment.clone(),
                scanned(created, device),
            );
            tokio::spawn(async move { claim(&ctx, &enrollment, request).await })
        };
        let watch = match race {
            Scan::Nobody => return None,
            _ => self.watch(login).await,
        };
        let label = format!("{}: {race:?}", login.label);
        let (device, signed) = match race {
            Scan::Once => {
                let claimed = spawn_claim(phone).await.expect("the claim ran");
                (phone.clone(), claimed.expect("claimed").context)
            }
            Scan::Copies => {
                let copies = (0..rng.gen_range(2..=3))
                    .map(|_| spawn_claim(phone))
                    .collect();
                let claimed: Vec<QrSessionClaimed> = joined(copies)
                    .await
                    .into_iter()
                    .map(|r| r.expect("every copy gets the context"))
                    .collect();
                assert!(
                    claimed.iter().all(|c| *c == claimed[0]),
                    "{label}: every copy gets the one context"
                );
                (phone.clone(), claimed[0].context.clone())
            }
            Scan::TwoDevices => {
                // The phone's claim (once, or a copy too) and the rival's.
                let mut claims: Vec<_> = (0..rng.gen_range(1..=2))
                    .map(|_| spawn_claim(phone))
                    .collect();
                claims.push(spawn_claim(&self.rival));
                let mut told = joined(claims).await;
                let rival_told = told.pop().expect("the rival's claim");
                let (winner, won, lost) = match rival_told {
                    Ok(won) => (self.rival.clone(), vec![won], told),
                    Err(lost) => {
                        let phone_told = told
                            .into_iter()
                            .collect::<Result<Vec<_>, _>>()
                            .unwrap_or_else(|e| {
                                panic!("{label}: one device claims the code: {e:?}, {lost:?}")
                            });
                        (phone.clone(), phone_told, vec![Err(lost)])
                    }
                };
                assert!(
                    won.iter().all(|c| *c == won[0]),
                    "{label}: every copy of the winner's claim gets the one context"
                );
                for lost in lost {
                    assert_eq!(
                        lost.expect_err("one device claims the code").code(),
                        Some(ErrorCode::QrAlreadyScanned),
                        "{label}"
                    );
                }
                (winner, won[0].context.clone())
            }
            Scan::Nobody => unreachable!("returned above"),
        };
        let context: QrSessionContext =
            self.domain.verified(&signed, MessageType::QrSessionContext);
        assert_eq!(context.session_id, login.id, "{label}");
        assert_eq!(context.device_id, device.enrollment.device_id, "{label}");
        let read = self.seen(watch, &label).await;
        assert_eq!(read.state, QrSessionState::Scanned, "{label}");
        assert_eq!(
            read.device_id.as_ref(),
            Some(&device.enrollment.device_id),
            "{label}"
        );
        assert_eq!(read.signed_context.as_ref(), Some(&signed), "{label}");
        Some((device, context))
    }

    /// The answer `race` of `device`, which scanned the session and verified `context`: what
    /// the session records once it ran (its state, and the follow-up an approval started).
    async fn answered(
        &self,
        login: &Login,
        device: &TestDevice,
        context: &QrSessionContext,
        race: Answer,
        rng: &mut StdRng,
    ) -> QrAnswerRecorded {
        let label = format!("{}: {:?}, {race:?}", login.label, login.scan);
        if race == Answer::Unanswered {
            let read = rp_status(&self.domain, login).await;
            assert_eq!(read.state, QrSessionState::Scanned, "{label}");
            return QrAnswerRecorded {
                session_id: login.id.clone(),
                state: read.state,
                follow_up: None,
            };
        }
        let now = self.domain.clock.now();
        let approval = qr_answer(device, context, Decision::Approve, now);
        let watch = self.watch(login).await;
        let spawn_answer = |decision: Decision, signed: &str| {
            let (ctx, id, signed) = (
                self.domain.ctx.clone(),
                login.id.to_string(),
                signed.to_string(),
            );
            tokio::spawn(async move { (decision, answer(&ctx, &id, &signed, CLIENT).await) })
        };
        let told: Vec<(Decision, Result<QrAnswerRecorded, DomainError>)> = match race {
            Answer::Approval => joined(vec![spawn_answer(Decision::Approve, &approval)]).await,
            Answer::Copies => {
                let copies = (0..rng.gen_range(2..=3))
                    .map(|_| spawn_answer(Decision::Approve, &approval))
                    .collect();
                joined(copies).await
            }
            Answer::ApprovalAndDenial => {
                // The approval (once, or a copy too) and the denial.
                let denial = qr_answer(device, context, Decision::Deny, now);
                let mut answers: Vec<_> = (0..rng.gen_range(1..=2))
                    .map(|_| spawn_answer(Decision::Approve, &approval))
                    .collect();
                answers.push(spawn_answer(Decision::Deny, &denial));
                joined(answers).await
            }
            Answer::ApprovalAndWithdrawal => {
                let approved = spawn_answer(Decision::Approve, &approval);
                let (ctx, id) = (self.domain.ctx.clone(), login.id.clone());
                let withdrawn = tokio::spawn(async move { withdraw_for_flow(&ctx, &id).await });
                let told = approved.await.expect("the answer ran");
                withdrawn
                    .await
                    .expect("the withdrawal ran")
                    .expect("withdrawn or not");
                vec![told]
            }
            Answer::ApprovalAndUnpairing | Answer::Unanswered => unreachable!("run apart"),
        };
        let read = self.seen(watch, &label).await;
        let recorded = QrAnswerRecorded {
            session_id: login.id.clone(),
            state: read.state,
            follow_up: read.follow_up.clone(),
        };
        // Every caller told an outcome was told the one recorded.
        let won: Vec<Decision> = told
            .iter()
            .filter_map(|(decision, r)| r.as_ref().ok().map(|_| *decision))
            .collect();
        for (decision, r) in &told {
            if let Ok(outcome) = r {
                assert_eq!(
                    outcome, &recorded,
                    "{label}: {decision:?} told another outcome"
                );
            }
        }
        let lost = |code: ErrorCode| {
            told.iter()
                .filter_map(|(_, r)| r.as_ref().err())
                .all(|e| e.code() == Some(code))
        };
        match race {
            Answer::Approval | Answer::Copies => {
                assert_eq!(won.len(), told.len(), "{label}: every copy is told");
            }
            Answer::ApprovalAndDenial => {
                // One decision wins, with every copy of it.
                let approvals = told.len() - 1;
                assert!(
                    won == [Decision::Deny] || won == vec![Decision::Approve; approvals],
                    "{label}: exactly one decision wins: {told:?}"
                );
                assert!(lost(ErrorCode::AlreadyAnswered), "{label}: {told:?}");
            }
            Answer::ApprovalAndWithdrawal => {
                if won.is_empty() {
                    assert_eq!(read.state, QrSessionState::Expired, "{label}");
                    assert!(lost(ErrorCode::QrSessionExpired), "{label}: {told:?}");
                }
            }
            Answer::ApprovalAndUnpairing | Answer::Unanswered => unreachable!("run apart"),
        }
        match won.first() {
            Some(Decision::Approve) => {
                let expected = match self.policy {
                    QrPolicy::None => QrSessionState::Approved,
                    QrPolicy::ExtraVerification | QrPolicy::UserApproval => {
                        QrSessionState::Verifying
                    }
                };
                assert_eq!(read.state, expected, "{label}");
                assert_eq!(read.decision, Some(Decision::Approve), "{label}");
                assert_eq!(
                    read.user_id.as_ref(),
                    Some(&device.enrollment.user_id),
                    "{label}"
                );
                assert_eq!(
                    read.enrollment_id.as_ref(),
                    Some(&device.enrollment.enrollment_id),
                    "{label}"
                );
                assert_eq!(read.signed_response.as_ref(), Some(&approval), "{label}");
                assert_eq!(
                    read.follow_up.is_some(),
                    expected == QrSessionState::Verifying,
                    "{label}"
                );
            }
            Some(_) => {
                assert_eq!(read.state, QrSessionState::Denied, "{label}");
                assert_eq!(read.decision, Some(Decision::Deny), "{label}");
                assert_eq!(read.follow_up, None, "{label}");
            }
            None => assert_eq!(read.follow_up, None, "{label}"),
        }
        recorded
    }

    /// `device` (a spare phone, which scanned the session and verified `context`) approves it
    /// while the user unpairs it: the session's state once both ran, and the follow-up the
    /// approval started, if it was recorded and the policy asks for one. Either the unpairing
    /// came first and the approval is refused (the session waits for an answer that can no
    /// longer come), or the approval was recorded first: under policy none the login is
    /// approved; with a follow-up, the unpairing fails the follow-up sent to the device and the
    /// session with it. Never is a follow-up left pending for a device that is gone.
    async fn approved_while_unpaired(
        &self,
        login: &Login,
        device: &TestDevice,
        context: &QrSessionContext,
        rng: &mut StdRng,
    ) -> (QrSessionState, Option<AuthenticationId>) {
        let domain = &self.domain;
        let label = format!("{}: {:?}, {:?}", login.label, login.scan, login.answer);
        let approval = qr_answer(device, context, Decision::Approve, domain.clock.now());
        let approved = {
            let (ctx, id) = (domain.ctx.clone(), login.id.to_string());
            tokio::spawn(async move { answer(&ctx, &id, &approval, CLIENT).await })
        };
        // The answer reads the device, checks its signature and reads more before it writes;
        // the unpairing only writes. Sent at once, the unpairing mostly lands before the answer
        // reads the device or while it checks; started a moment later, on either side of the
        // answer's write.
        let head_start = if rng.gen_bool(0.5) {
            Duration::ZERO
        } else {
            Duration::from_micros(rng.gen_range(0..UNPAIRING_DELAY_MICROS))
        };
        let unpaired = {
            let (ctx, enrollment) = (domain.ctx.clone(), device.enrollment.clone());
            tokio::spawn(async move {
                if !head_start.is_zero() {
                    tokio::time::sleep(head_start).await;
                }
                crate::domain::devices::unpair(&ctx, &enrollment)
                    .await
                    .expect("unpaired");
            })
        };
        let told = approved.await.expect("the answer ran");
        unpaired.await.expect("the unpairing ran");
        let read = rp_status(domain, login).await;
        let recorded = match told {
            Err(refused) => {
                assert_eq!(refused.code(), Some(ErrorCode::Unauthorized), "{label}");
                assert_eq!(read.state, QrSessionState::Scanned, "{label}: {read:?}");
                assert_eq!(read.decision, None, "{label}");
                return (read.state, None);
            }
            Ok(recorded) => recorded,
        };
        assert_eq!(read.decision, Some(Decision::Approve), "{label}");
        assert_eq!(read.follow_up, recorded.follow_up, "{label}");
        let Some(follow_up) = &recorded.follow_up else {
            assert_eq!(self.policy, QrPolicy::None, "{label}");
            assert_eq!(recorded.state, QrSessionState::Approved, "{label}");
            assert_eq!(read.state, QrSessionState::Approved, "{label}");
            return (read.state, None);
        };
        assert_eq!(recorded.state, QrSessionState::Verifying, "{label}");
        let sent = authentications::get(&domain.ctx.db, follow_up, domain.clock.now())
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(
            (sent.state, read.state),
            (AuthenticationState::Failed, QrSessionState::Expired),
            "{label}: the unpairing fails the follow-up sent to the device, and the session \
             with it"
        );
        (read.state, Some(follow_up.clone()))
    }

    /// The follow-up `race` on `follow_up`, sent to `device`: the session's state once it ran.
    async fn followed_up(
        &self,
        login: &Login,
        device: &TestDevice,
        follow_up: &AuthenticationId,
        race: FollowUpAnswer,
        rng: &mut StdRng,
    ) -> QrSessionState {
        let domain = &self.domain;
        let label = format!(
            "{}: {:?}, {:?}, follow-up {race:?}",
            login.label, login.scan, login.answer
        );
        let request = domain.pulled(device, follow_up).await;
        let silent = self.policy == QrPolicy::ExtraVerification;
        assert_eq!(
            request.kind,
            if silent {
                AuthenticationKind::Silent
            } else {
                AuthenticationKind::Approval
            },
            "{label}"
        );
        if race == FollowUpAnswer::Unanswered {
            let read = rp_status(domain, login).await;
            assert_eq!(read.state, QrSessionState::Verifying, "{label}");
            return read.state;
        }
        let watch = self.watch(login).await;
        let approval = follow_up_answer(domain, device, &request, Decision::Approve).await;
        let spawn_answer = |decision: Decision, signed: &str| {
            let (ctx, id, signed) = (
                domain.ctx.clone(),
                follow_up.to_string(),
                signed.to_string(),
            );
            tokio::spawn(async move {
                let told = crate::domain::authentication::answer(&ctx, &id, &signed, CLIENT).await;
                (decision, told)
            })
        };
        let told: Vec<(Decision, Result<ResponseRecorded, DomainError>)> = match race {
            FollowUpAnswer::Approval => {
                joined(vec![spawn_answer(Decision::Approve, &approval)]).await
            }
            FollowUpAnswer::Copies => {
                let copies = (0..rng.gen_range(2..=3))
                    .map(|_| spawn_answer(Decision::Approve, &approval))
                    .collect();
                joined(copies).await
            }
            FollowUpAnswer::ApprovalAndDenial => {
                let denial = follow_up_answer(domain, device, &request, Decision::Deny).await;
                joined(vec![
                    spawn_answer(Decision::Approve, &approval),
                    spawn_answer(Decision::Deny, &denial),
                ])
                .await
            }
            FollowUpAnswer::Unanswered | FollowUpAnswer::DeviceUnpaired => {
                unreachable!("run apart")
            }
        };
        let read = self.seen(watch, &label).await;
        let ended = authentications::get(&domain.ctx.db, follow_up, domain.clock.now())
            .await
            .expect("read")
            .expect("stored")
            .state;
        assert_eq!(
            Some(read.state),
            after_follow_up(ended),
            "{label}: the session ends as its follow-up did"
        );
        let won: Vec<Decision> = told
            .iter()
            .filter_map(|(decision, r)| r.as_ref().ok().map(|_| *decision))
            .collect();
        for (decision, r) in &told {
            if let Ok(outcome) = r {
                assert_eq!(
                    outcome.state, ended,
                    "{label}: {decision:?} told another outcome"
                );
            }
        }
        match (race, silent) {
            (FollowUpAnswer::Approval | FollowUpAnswer::Copies, _) => {
                assert_eq!(won.len(), told.len(), "{label}: every copy is told");
            }
            (FollowUpAnswer::ApprovalAndDenial, true) => {
                // A silent verification cannot be denied: the approval wins.
                assert_eq!(won, [Decision::Approve], "{label}: {told:?}");
                assert_eq!(
                    told[1].1.as_ref().err().and_then(DomainError::code),
                    Some(ErrorCode::ResponseMismatch),
                    "{label}"
                );
            }
            (FollowUpAnswer::ApprovalAndDenial, false) => {
                assert_eq!(won.len(), 1, "{label}: exactly one answer wins: {told:?}");
                assert!(
                    told.iter()
                        .filter_map(|(_, r)| r.as_ref().err())
                        .all(|e| e.code() == Some(ErrorCode::AlreadyAnswered)),
                    "{label}: {told:?}"
                );
            }
            (FollowUpAnswer::Unanswered | FollowUpAnswer::DeviceUnpaired, _) => {
                unreachable!("run apart")
            }
        }
        let expected = match won.first() {
            Some(Decision::Approve) => AuthenticationState::Approved,
            _ => AuthenticationState::Denied,
        };
        assert_eq!(ended, expected, "{label}");
        assert_eq!(
            endings_announced(follow_up),
            1,
            "{label}: the follow-up's ending is announced once"
        );
        read.state
    }

    /// Starts watching `login`'s session before a step: its state read, the relying party's
    /// waiter and the login page's from now, and two reads racing the step.
    async fn watch(&self, login: &Login) -> Watch {
        let ctx = &self.domain.ctx;
        let page = browser_status(ctx, Some(&login.browser_token), Duration::ZERO, None)
            .await
            .expect("the login page's status");
        let waiter = {
            let (ctx, app, id) = (ctx.clone(), login.app.clone(), login.id.to_string());
            tokio::spawn(async move {
                status(&ctx, &app, &id, WAITER_WAIT)
                    .await
                    .expect("the waiter's status")
            })
        };
        let page_waiter = {
            let (ctx, token) = (ctx.clone(), login.browser_token.clone());
            tokio::spawn(async move {
                browser_status(&ctx, Some(&token), WAITER_WAIT, Some(page.version))
                    .await
                    .expect("the login page's wait")
            })
        };
        // The step starts once both wait: a waiter that first read the session after the step
        // would wait for the change after it.
        let topic = Topic::QrSession(login.id.to_string());
        tokio::time::timeout(WOKEN_WITHIN, async {
            while ctx.events.waiters_on(&topic) < 2 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the waiters wait");
        let racing = (0..1)
            .map(|_| {
                let (ctx, app, id) = (ctx.clone(), login.app.clone(), login.id.to_string());
                tokio::spawn(async move {
                    status(&ctx, &app, &id, Duration::ZERO)
                        .await
                        .expect("a racing status")
                        .state
                })
            })
            .collect();
        Watch {
            app: login.app.clone(),
            id: login.id.to_string(),
            before: page.state,
            waiter,
            page_waiter,
            racing,
        }
    }

    /// What was seen of the step `watch` watched, once it ran: reads sent at once after it
    /// agree, and the state they read is new; the waiters were woken and read it; the reads
    /// racing the step read it or the state before. The state read after.
    async fn seen(&self, watch: Watch, label: &str) -> QrSessionStatus {
        let ctx = &self.domain.ctx;
        let reads = sent_at_once(2, || {
            let (ctx, app, id) = (ctx.clone(), watch.app.clone(), watch.id.clone());
            async move { status(&ctx, &app, &id, Duration::ZERO).await }
        })
        .await;
        let reads: Vec<QrSessionStatus> = reads
            .into_iter()
            .map(|r| r.expect("status after the step"))
            .collect();
        assert!(
            reads.iter().all(|r| *r == reads[0]),
            "{label}: reads at once after the step agree: {reads:?}"
        );
        let after = reads[0].clone();
        assert_ne!(
            after.state, watch.before,
            "{label}: the step moved the session"
        );
        let waited: QrSessionStatus = tokio::time::timeout(WOKEN_WITHIN, watch.waiter)
            .await
            .unwrap_or_else(|_| panic!("{label}: the relying party's waiter was not woken"))
            .expect("the waiter ran");
        assert_eq!(
            waited.state, after.state,
            "{label}: the waiter reads the step"
        );
        let page: QrBrowserStatus = tokio::time::timeout(WOKEN_WITHIN, watch.page_waiter)
            .await
            .unwrap_or_else(|_| panic!("{label}: the login page's waiter was not woken"))
            .expect("the login page's waiter ran");
        assert_eq!(
            page.state, after.state,
            "{label}: the login page reads the step"
        );
        for racing in joined(watch.racing).await {
            assert!(
                racing == watch.before || racing == after.state,
                "{label}: a read racing the step read {racing:?}, neither {:?} nor {:?}",
                watch.before,
                after.state
            );
        }
        after
    }
}

/// What is watched of a session during one step ([`Player::watch`]).
struct Watch {
    app: ApplicationId,
    id: String,
    /// The state before the step.
    before: QrSessionState,
    /// The relying party's waiting read, from before the step.
    waiter: JoinHandle<QrSessionStatus>,
    /// The login page's waiting read, from before the step.
    page_waiter: JoinHandle<QrBrowserStatus>,
    /// The states read by the relying party while the step ran.
    racing: Vec<JoinHandle<QrSessionState>>,
}

/// What `device` sends after scanning `created`'s code: the token and its enrollment.
fn scanned(created: &QrSessionCreated, device: &TestDevice) -> ClaimQrSession {
    let uri = QrUri::parse(&created.qr_uri).expect("a QR URI");
    ClaimQrSession {
        token: uri.token.expose().to_string(),
        enrollment_ids: vec![device.enrollment.enrollment_id.clone()],
    }
}

/// `device`'s `decision` on the session it scanned, showing `context` as sent, signed after
/// biometrics at `now`.
fn qr_answer(
    device: &TestDevice,
    context: &QrSessionContext,
    decision: Decision,
    now: i64,
) -> String {
    super::flow_tests::answered(device, context, decision, &context.context, now)
}

/// `device`'s `decision` on the follow-up `request`, as the app makes it: a silent verification
/// with the possession key, an approval after biometrics choosing the number shown.
async fn follow_up_answer(
    domain: &TestDomain,
    device: &TestDevice,
    request: &AuthenticationRequest,
    decision: Decision,
) -> String {
    let now = domain.clock.now();
    if request.kind == AuthenticationKind::Silent {
        return device.answer_with_possession_key(request, decision, None, now);
    }
    let number = authentications::get(&domain.ctx.db, &request.request_id, now)
        .await
        .expect("read")
        .and_then(|a| a.number_to_show);
    device.answer(request, decision, number, now)
}
