//! A crowd of CIBA requests raced every way at once.
//!
//! Many users' backchannel requests, all from one poll-mode relying party, run side by side.
//! Each is raced in a way a seeded generator picks: the device's approval, then two or three
//! token requests at once; the approval against one or two token requests; the denial against
//! a token request; copies of one approval; the approval against the relying party's
//! cancellation (and maybe a token request); the approval against the denial and a token
//! request; or no answer at all until it expires. On SQLite the racing writes of different
//! users share group commits (`store/writer.rs`); on PostgreSQL they run on connections of
//! their own. Whatever the interleaving:
//! - of the racing endings one wins, and every ending told an outcome was told the one stored
//!   (copies of one approval are all told it);
//! - tokens are issued once per approved request and never for another: of every token request
//!   for an `auth_req_id`, at most one gets tokens, and one does once it is approved; their ID
//!   token and userinfo name the user who approved, at the time they approved;
//! - a token request racing the answer is told to wait (`authorization_pending`), to slow down
//!   (another request of the race took the poll), that the tokens are taken (`invalid_grant`),
//!   `access_denied` once denied or canceled, or gets the tokens once approved; the next one, an
//!   interval later, gets what the stored outcome says;
//! - the follow-ups hear of each ending once; the audit log holds, per request, one record of its
//!   creation, one of its ending and one of its CIBA completion;
//! - past its expiry, an exchanged request is `invalid_grant`, and every other one (unanswered,
//!   denied or canceled) `expired_token` (CIBA Core §11).
//!
//! The pairwise races are tested one by one in `flow_tests`; this test mixes them, many at a
//! time. `TESSERA_CROWD_SEED` replays a failing run (the seed is printed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::json;
use tessera_protocol::authentication::{AuthenticationId, AuthenticationState, Decision};
use tessera_protocol::ciba::{BackchannelAcknowledgement, CIBA_GRANT_TYPE, TokenResponse};
use tessera_protocol::ids::UserId;

use super::OAuthCode;
use super::flow_tests::form;
use crate::clock::Clock;
use crate::domain::Ctx;
use crate::domain::outcome::{self, Ending};
use crate::domain::testing::{TestDevice, TestDomain, crowd_seed, endings_announced, joined};
use crate::store::audit::{self, Filter};
use crate::store::authentications::{self, Authentication};
use crate::store::ciba::{self, CibaRequest};

/// Users whose requests run side by side.
const USERS: usize = 10;
/// Requests each user's relying party makes, one after the other.
const ROUNDS: usize = 5;
/// Every request's lifetime (seconds): long beside the clock's moves during the rounds (each a
/// poll interval of one request, a few seconds), so that no request expires before its end.
const REQUESTED_EXPIRY: u64 = 600;
/// Seconds between token requests for one `auth_req_id` (each `slow_down` adds 5): short, so
/// that the clock's moves stay small.
const POLL_INTERVAL: u32 = 1;
/// Where the device's answers come from.
const DEVICE_IP: &str = "198.51.100.7";

/// How a request is raced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Race {
    /// The device approves; then the relying party sends two or three token requests at once.
    RedemptionsAtOnce,
    /// The device's approval and one or two token requests at once.
    ApprovalAndTokens,
    /// The device's denial and a token request at once.
    DenialAndToken,
    /// Three copies of the device's approval at once (a retry while the first is under way).
    Copies,
    /// The device's approval and the relying party's cancellation at once, with or without a
    /// token request.
    ApprovalAndCancellation,
    /// The device's approval, its denial and a token request at once.
    ApprovalDenialAndToken,
    /// Nobody answers: a token request is told to wait, and the request expires.
    Unanswered,
}

const RACES: [Race; 7] = [
    Race::RedemptionsAtOnce,
    Race::ApprovalAndTokens,
    Race::DenialAndToken,
    Race::Copies,
    Race::ApprovalAndCancellation,
    Race::ApprovalDenialAndToken,
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

/// What a token request was told.
#[derive(Debug)]
enum Polled {
    /// The tokens.
    Tokens(Box<TokenResponse>),
    /// An OAuth error, with its description.
    Refused(OAuthCode, String),
}

impl Polled {
    /// The tokens, if it got them.
    fn tokens(&self) -> Option<&TokenResponse> {
        match self {
            Polled::Tokens(tokens) => Some(tokens),
            Polled::Refused(..) => None,
        }
    }

    /// The error code, if it was refused.
    fn code(&self) -> Option<OAuthCode> {
        match self {
            Polled::Tokens(_) => None,
            Polled::Refused(code, _) => Some(*code),
        }
    }
}

/// An ending sent in a race.
enum Start {
    /// The device's signed answer.
    Answer(String),
    /// The relying party's cancellation.
    Cancellation,
}

/// One request of the crowd, once its race was run.
#[derive(Debug)]
struct Ran {
    race: Race,
    user: UserId,
    auth_req_id: String,
    id: AuthenticationId,
    /// What the racing endings were told, in the order they were sent.
    told: Vec<Told>,
    /// What the token requests sent in the race were told (the first of the `auth_req_id`).
    racing: Vec<Polled>,
    /// What the token requests sent after the race were told, in order: one a poll interval
    /// after the race, and one more at once if that one got the tokens.
    after: Vec<Polled>,
}

impl Ran {
    /// Every token response this request's token requests got.
    fn tokens(&self) -> impl Iterator<Item = &TokenResponse> {
        self.racing
            .iter()
            .chain(&self.after)
            .filter_map(Polled::tokens)
    }
}

/// The relying party every request comes from: one poll-mode client authenticating with
/// `client_secret_basic`.
type RelyingParty = super::flow_tests::Client;

/// `shop`'s backchannel authentication request for `user`, living [`REQUESTED_EXPIRY`] seconds.
async fn ask(shop: &RelyingParty, ctx: &Ctx, user: &UserId) -> BackchannelAcknowledgement {
    let expiry = REQUESTED_EXPIRY.to_string();
    let form = form(&[
        ("scope", "openid"),
        ("login_hint", user.as_str()),
        ("requested_expiry", &expiry),
    ]);
    super::backchannel::authenticate(ctx, shop.basic(), &form)
        .await
        .expect("acknowledged")
}

/// `shop`'s token request for `auth_req_id`.
async fn token(shop: &RelyingParty, ctx: &Ctx, auth_req_id: &str) -> Polled {
    let form = form(&[
        ("grant_type", CIBA_GRANT_TYPE),
        ("auth_req_id", auth_req_id),
    ]);
    match super::token::exchange(ctx, shop.basic(), &form).await {
        Ok(tokens) => Polled::Tokens(Box::new(tokens)),
        Err(e) => Polled::Refused(e.code, e.description),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crowd_of_ciba_requests_raced_every_way_gets_tokens_once_per_approval() {
    let seed = crowd_seed();
    let domains = TestDomain::each_engine_for_crowds_with(|config| {
        config.ciba_poll_interval = POLL_INTERVAL;
    })
    .await;
    for domain in domains {
        let run: Arc<str> = format!("seed {seed} on {:?}", domain.ctx.db.engine()).into();
        let shop = Arc::new(RelyingParty::registered(&domain).await);
        let users = {
            let (shop, run) = (shop.clone(), run.clone());
            domain
                .crowd(USERS, seed, move |domain, user, phone, rng| {
                    let (shop, run) = (shop.clone(), run.clone());
                    async move { run_user(&domain, &shop, &user, &phone, rng, &run).await }
                })
                .await
        };
        let ran: Vec<Ran> = users.into_iter().flat_map(|(_, ran)| ran).collect();
        assert_eq!(ran.len(), USERS * ROUNDS);

        // Once every race is over: what each request was told still holds, and the tokens
        // stored are one set per approved request, of its user.
        let mut approved_of: HashMap<&str, i64> = HashMap::new();
        for r in &ran {
            let record = read(&domain, &r.id).await;
            check_ran(&domain, &shop, r, &record, &run).await;
            if record.state == AuthenticationState::Approved {
                *approved_of.entry(r.user.as_str()).or_default() += 1;
            }
        }
        for u in 0..USERS {
            let user = format!("crowd-{u}");
            assert_eq!(
                access_tokens_stored(&domain, &shop, &user).await,
                approved_of.get(user.as_str()).copied().unwrap_or(0),
                "{run}: one access token per approved request of {user}"
            );
        }

        // Past every request's expiry: the exchanged ones (every approved one) stay spent, every
        // other one is expired whatever its ending, and none gets tokens now.
        domain
            .clock
            .advance(Duration::from_secs(REQUESTED_EXPIRY + 1));
        for r in &ran {
            let late = token(&shop, &domain.ctx, &r.auth_req_id).await;
            let record = read(&domain, &r.id).await;
            let expected = match record.state {
                AuthenticationState::Approved => OAuthCode::InvalidGrant,
                AuthenticationState::Denied
                | AuthenticationState::Failed
                | AuthenticationState::Expired
                | AuthenticationState::Pending => OAuthCode::ExpiredToken,
            };
            assert_eq!(late.code(), Some(expected), "{run}: {late:?}, {r:?}");
            if r.race == Race::Unanswered {
                assert_eq!(record.state, AuthenticationState::Expired, "{run}: {r:?}");
            }
        }

        // The sweep records each expiry once.
        let swept_at_ms = domain.clock.now_ms();
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
        let mut foreign_expiries: HashMap<&str, i64> = HashMap::new();
        for stored in &records {
            if let Some(subject) = &stored.record.subject {
                let kind = stored.record.kind.as_str();
                kinds.entry(subject.as_str()).or_default().push(kind);
                if kind == "authentication.expired" && stored.record.at_ms != swept_at_ms {
                    foreign_expiries.insert(subject.as_str(), stored.record.at_ms);
                }
            }
        }
        for r in &ran {
            let state = read(&domain, &r.id).await.state;
            // Oldest first: the creation, then the ending with its CIBA completion.
            let of_it = kinds.get(r.id.as_str()).cloned().unwrap_or_default();
            let ending = format!("authentication.{}", state.as_str());
            // An expiry recorded at another time than this test's sweep was recorded by a sweep
            // reading another clock: another test's, on the same PostgreSQL database.
            let foreign = foreign_expiries
                .get(r.id.as_str())
                .map(|at_ms| {
                    format!(
                        " (its expiry was recorded at {at_ms} ms, not at this test's sweep at \
                         {swept_at_ms} ms: by another test's sweep on the same database)"
                    )
                })
                .unwrap_or_default();
            assert_eq!(
                of_it,
                vec!["authentication.created", ending.as_str(), "ciba.completed"],
                "{run}: one record of the creation, one of the ending and one of the \
                 completion{foreign}: {r:?}"
            );
        }
    }
}

/// One user's requests, one after the other, each raced as `rng` picks, and checked once its
/// race is over.
async fn run_user(
    domain: &TestDomain,
    shop: &Arc<RelyingParty>,
    user: &UserId,
    phone: &TestDevice,
    mut rng: StdRng,
    run: &str,
) -> Vec<Ran> {
    let ctx = &domain.ctx;
    let mut ran = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let race = RACES[rng.gen_range(0..RACES.len())];
        let ack = ask(shop, ctx, user).await;
        let auth_req_id = ack.auth_req_id.clone();
        let id: AuthenticationId = stored_request(domain, &auth_req_id)
            .await
            .authentication_id
            .parse()
            .expect("an authentication id");
        let request = domain.pulled(phone, &id).await;
        let now = domain.clock.now();
        let approval = phone.answer(&request, Decision::Approve, ack.number_to_show, now);
        let denial = phone.answer(&request, Decision::Deny, None, now);
        let polls_first = rng.gen_bool(0.5);
        let (told, racing) = match race {
            Race::RedemptionsAtOnce => {
                let told = vec![ending(ctx, &id, Start::Answer(approval)).await];
                let copies = rng.gen_range(2..=3);
                let (_, racing) =
                    at_once(domain, shop, &id, Vec::new(), &auth_req_id, copies, false).await;
                (told, racing)
            }
            Race::ApprovalAndTokens => {
                let polls = rng.gen_range(1..=2);
                let endings = vec![Start::Answer(approval)];
                at_once(domain, shop, &id, endings, &auth_req_id, polls, polls_first).await
            }
            Race::DenialAndToken => {
                let endings = vec![Start::Answer(denial)];
                at_once(domain, shop, &id, endings, &auth_req_id, 1, polls_first).await
            }
            Race::Copies => {
                let copies = (0..3).map(|_| Start::Answer(approval.clone())).collect();
                at_once(domain, shop, &id, copies, &auth_req_id, 0, false).await
            }
            Race::ApprovalAndCancellation => {
                let polls = rng.gen_range(0..=1);
                let mut endings = vec![Start::Answer(approval), Start::Cancellation];
                if rng.gen_bool(0.5) {
                    endings.reverse();
                }
                at_once(domain, shop, &id, endings, &auth_req_id, polls, polls_first).await
            }
            Race::ApprovalDenialAndToken => {
                let mut endings = vec![Start::Answer(approval), Start::Answer(denial)];
                if rng.gen_bool(0.5) {
                    endings.reverse();
                }
                at_once(domain, shop, &id, endings, &auth_req_id, 1, polls_first).await
            }
            Race::Unanswered => {
                at_once(domain, shop, &id, Vec::new(), &auth_req_id, 1, false).await
            }
        };
        // The next token request, once the interval since the last one has passed: what the
        // stored outcome says (checked in `check_ran`); if it got the tokens, one more at once.
        wait_out_the_interval(domain, &auth_req_id).await;
        let mut after = vec![token(shop, ctx, &auth_req_id).await];
        if after[0].tokens().is_some() {
            after.push(token(shop, ctx, &auth_req_id).await);
        }
        let r = Ran {
            race,
            user: user.clone(),
            auth_req_id,
            id,
            told,
            racing,
            after,
        };
        let record = read(domain, &r.id).await;
        check_ran(domain, shop, &r, &record, run).await;
        ran.push(r);
    }
    // Whatever ended how, nothing is left for the phone but the requests nobody answered.
    let left = domain.pull(phone).await;
    let unanswered = ran.iter().filter(|r| r.race == Race::Unanswered).count();
    assert_eq!(
        left.len(),
        unanswered,
        "{run}: only the unanswered are left to pull"
    );
    ran
}

/// Sends `endings` of `id` and `polls` token requests for `auth_req_id` at once, each on a task
/// of its own (the token requests spawned first when `polls_first`): what each was told, in
/// the order they were sent.
async fn at_once(
    domain: &TestDomain,
    shop: &Arc<RelyingParty>,
    id: &AuthenticationId,
    endings: Vec<Start>,
    auth_req_id: &str,
    polls: usize,
    polls_first: bool,
) -> (Vec<Told>, Vec<Polled>) {
    let spawn_polls = || -> Vec<_> {
        (0..polls)
            .map(|_| {
                let (ctx, shop, auth_req_id) =
                    (domain.ctx.clone(), shop.clone(), auth_req_id.to_string());
                tokio::spawn(async move { token(&shop, &ctx, &auth_req_id).await })
            })
            .collect()
    };
    let early_polls = polls_first.then(spawn_polls);
    let endings: Vec<_> = endings
        .into_iter()
        .map(|start| {
            let (ctx, id) = (domain.ctx.clone(), id.clone());
            tokio::spawn(async move { ending(&ctx, &id, start).await })
        })
        .collect();
    let polls = early_polls.unwrap_or_else(spawn_polls);
    (joined(endings).await, joined(polls).await)
}

/// Sends `start`: what it was told.
async fn ending(ctx: &Ctx, id: &AuthenticationId, start: Start) -> Told {
    match start {
        Start::Answer(signed) => {
            match crate::domain::authentication::answer(ctx, id.as_str(), &signed, DEVICE_IP).await
            {
                Ok(recorded) => Told::Ended(recorded.state),
                Err(_) => Told::Lost,
            }
        }
        Start::Cancellation => match outcome::record(ctx, id, Ending::Canceled)
            .await
            .expect("recorded or not")
        {
            Some(record) => Told::Ended(record.state),
            None => Told::Lost,
        },
    }
}

/// Moves the clock on until a token request for `auth_req_id` is no longer too soon after the
/// last one (not at all when none is). Every user's requests see the move: it is at most the
/// request's interval, a few seconds.
async fn wait_out_the_interval(domain: &TestDomain, auth_req_id: &str) {
    let stored = stored_request(domain, auth_req_id).await;
    if stored.tokens_issued_at.is_some() {
        // Refused before the interval is looked at.
        return;
    }
    if let Some(last) = stored.last_polled_at_ms {
        let due = last + stored.poll_interval * 1000;
        let early = due - domain.clock.now_ms();
        if early > 0 {
            domain
                .clock
                .advance(Duration::from_millis(early.unsigned_abs()));
        }
    }
}

/// The stored CIBA request `auth_req_id`.
async fn stored_request(domain: &TestDomain, auth_req_id: &str) -> CibaRequest {
    ciba::request(&domain.ctx.db, auth_req_id)
        .await
        .expect("read")
        .expect("the request is stored")
}

/// The authentication `id` as stored, read now.
async fn read(domain: &TestDomain, id: &AuthenticationId) -> Authentication {
    authentications::get(&domain.ctx.db, id, domain.clock.now())
        .await
        .expect("read")
        .expect("the authentication is stored")
}

/// The access tokens stored for `user` by the relying party.
async fn access_tokens_stored(domain: &TestDomain, shop: &RelyingParty, user: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM oidc_tokens WHERE client_id = $1 AND user_id = $2 AND kind = 'access'",
    )
    .bind(&shop.id)
    .bind(user)
    .fetch_one(domain.ctx.db.pool())
    .await
    .expect("counted")
}

/// Checks what `r`'s racing endings and token requests were told against `record`, the
/// authentication as stored after the race, and the tokens issued against its user.
async fn check_ran(
    domain: &TestDomain,
    shop: &RelyingParty,
    r: &Ran,
    record: &Authentication,
    run: &str,
) {
    let read = record.state;
    let context = format!("{run}: {r:?}, read {read:?}");
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
        Race::RedemptionsAtOnce | Race::ApprovalAndTokens | Race::Copies => {
            assert_eq!(read, AuthenticationState::Approved, "{context}");
            assert_eq!(ended.len(), r.told.len(), "every copy is told: {context}");
        }
        Race::DenialAndToken => {
            assert_eq!(read, AuthenticationState::Denied, "{context}");
            assert_eq!(ended.len(), 1, "{context}");
        }
        Race::ApprovalAndCancellation | Race::ApprovalDenialAndToken => {
            assert_eq!(ended.len(), 1, "exactly one ending wins: {context}");
        }
        Race::Unanswered => {
            assert_eq!(read, AuthenticationState::Pending, "{context}");
        }
    }
    let announced = if read == AuthenticationState::Pending {
        0
    } else {
        1
    };
    assert_eq!(endings_announced(&r.id), announced, "announced: {context}");

    // The token requests raced with the answer were the first for this auth_req_id.
    let tokens_in_race = r.racing.iter().filter(|p| p.tokens().is_some()).count();
    assert!(tokens_in_race <= 1, "one set of tokens: {context}");
    for polled in &r.racing {
        let allowed = match polled {
            Polled::Tokens(_) => read == AuthenticationState::Approved,
            Polled::Refused(code, _) => match code {
                // Only the approval came first.
                OAuthCode::AuthorizationPending => r.race != Race::RedemptionsAtOnce,
                // Another token request of the race took the poll.
                OAuthCode::SlowDown => r.racing.len() > 1,
                // Another token request of the race took the tokens.
                OAuthCode::InvalidGrant => tokens_in_race == 1,
                OAuthCode::AccessDenied => matches!(
                    read,
                    AuthenticationState::Denied | AuthenticationState::Failed
                ),
                _ => false,
            },
        };
        assert!(allowed, "a racing token request told {polled:?}: {context}");
    }
    if r.race == Race::RedemptionsAtOnce {
        assert_eq!(tokens_in_race, 1, "one of them gets the tokens: {context}");
    }
    // An interval after the race: what the stored outcome says.
    let expected = match read {
        AuthenticationState::Approved if tokens_in_race == 1 => Some(OAuthCode::InvalidGrant),
        AuthenticationState::Approved => None,
        AuthenticationState::Denied | AuthenticationState::Failed => Some(OAuthCode::AccessDenied),
        AuthenticationState::Pending => Some(OAuthCode::AuthorizationPending),
        AuthenticationState::Expired => Some(OAuthCode::ExpiredToken),
    };
    assert_eq!(r.after[0].code(), expected, "the next request: {context}");
    // An `access_denied` says why: the user's denial, or a request that could not complete
    // (canceled).
    for polled in r.racing.iter().chain(&r.after) {
        if let Polled::Refused(OAuthCode::AccessDenied, description) = polled {
            let why = match read {
                AuthenticationState::Denied => super::denial_description(record.denial_reason),
                _ => "the request could not be completed on the user's device",
            };
            assert_eq!(description, why, "{context}");
        }
    }
    if r.after[0].tokens().is_some() {
        assert_eq!(
            r.after.get(1).and_then(Polled::code),
            Some(OAuthCode::InvalidGrant),
            "no second set: {context}"
        );
    }

    // Tokens once per approved request, after its approval, for its user.
    let tokens: Vec<&TokenResponse> = r.tokens().collect();
    let stored = stored_request(domain, &r.auth_req_id).await;
    if read == AuthenticationState::Approved {
        assert_eq!(tokens.len(), 1, "tokens once: {context}");
        let answered_at = record.answered_at.expect("an approval's time");
        let issued_at = stored.tokens_issued_at.expect("marked issued");
        assert!(issued_at >= answered_at, "issued after approval: {context}");
        check_tokens(domain, shop, r, tokens[0], answered_at, &context).await;
    } else {
        assert!(tokens.is_empty(), "no tokens: {context}");
        assert_eq!(stored.tokens_issued_at, None, "{context}");
    }
}

/// Checks that `tokens` are `r`'s user's, for the relying party, issued for an approval at
/// `answered_at`.
async fn check_tokens(
    domain: &TestDomain,
    shop: &RelyingParty,
    r: &Ran,
    tokens: &TokenResponse,
    answered_at: i64,
    context: &str,
) {
    let ctx = &domain.ctx;
    let subject = super::subject(&domain.app.id, r.user.as_str());
    let ttl = i64::from(ctx.config.oidc_token_ttl);
    let claims = super::keys::verify_own(&ctx.db, &tokens.id_token, domain.clock.now(), ttl)
        .await
        .expect("verified")
        .expect("signed by a published key");
    assert_eq!(claims["sub"], json!(subject), "{context}");
    assert_eq!(claims["aud"], json!(shop.id), "{context}");
    assert_eq!(claims["auth_time"], json!(answered_at), "{context}");
    let info = super::token::userinfo(ctx, Some(&tokens.access_token))
        .await
        .expect("the access token is valid");
    assert_eq!(info["sub"], json!(subject), "{context}");
}
