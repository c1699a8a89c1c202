//! Backup codes for a push authentication, called directly without HTTP: a code sent to the
//! user's registered email address approves the request through the one outcome path, once,
//! and wrong codes use up its attempts; codes sent by SMS and by voice call (through the
//! application's provider webhook, recorded by the test context) go to the registered phone
//! number, approve their request once as that channel, and a channel the request (or its
//! policy's `require`) does not offer sends nothing. Codes sent outside an authentication are checked with `verify_challenge`; for
//! both, wrong codes sent at once are compared no more times than a code allows, and a right code
//! is still accepted with the last attempt.

use serde_json::json;
use tessera_protocol::api::{BackupChannel, BackupContacts, CreateOtpChallenge};
use tessera_protocol::authentication::AuthenticationState;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::UserId;

use super::{create_challenge, send_for_authentication, set_contacts, verify_challenge};
use crate::domain::otp::answer_authentication;
use crate::domain::testing::{TestDomain, endings_announced, sent_at_once};

/// A user with a device and a registered email address.
async fn user_with_email(domain: &TestDomain, name: &str) -> UserId {
    let (user, _phone) = domain.user_with_device(name).await;
    set_contacts(
        &domain.ctx,
        &domain.app.id,
        &user,
        BackupContacts {
            phone: None,
            email: Some(format!("{name}@example.com")),
        },
    )
    .await
    .expect("contacts");
    user
}

/// Sends the email code for `id`: the code the user received.
async fn emailed_code(domain: &TestDomain, id: &str) -> String {
    let before = domain.emails.all().len();
    send_for_authentication(&domain.ctx, &domain.app, id, BackupChannel::Email)
        .await
        .expect("sent");
    let sent = domain.emails.all();
    assert_eq!(sent.len(), before + 1, "one message");
    sent[before].1.clone()
}

#[tokio::test]
async fn an_emailed_code_approves_its_request_once() {
    for domain in TestDomain::each_engine().await {
        let alice = user_with_email(&domain, "alice").await;
        let created = domain
            .ask(&alice, json!({"backup_channels": ["email"]}))
            .await;
        let id = created.authentication_id.clone();
        let code = emailed_code(&domain, id.as_str()).await;
        assert_eq!(
            domain.emails.all().last().map(|(to, _)| to.as_str()),
            Some("alice@example.com")
        );
        let approved = answer_authentication(&domain.ctx, &domain.app.id, id.as_str(), &code)
            .await
            .expect("approved");
        assert_eq!(approved.state, AuthenticationState::Approved);
        assert_eq!(endings_announced(&id), 1);

        // The code belongs to its request: another request does not take it.
        let next = domain
            .ask(&alice, json!({"backup_channels": ["email"]}))
            .await;
        let _ = emailed_code(&domain, next.authentication_id.as_str()).await;
        assert!(
            answer_authentication(
                &domain.ctx,
                &domain.app.id,
                next.authentication_id.as_str(),
                &code
            )
            .await
            .is_err()
        );
    }
}

#[tokio::test]
async fn wrong_codes_use_up_the_codes_attempts() {
    for domain in TestDomain::each_engine().await {
        let bob = user_with_email(&domain, "bob").await;
        let created = domain
            .ask(&bob, json!({"backup_channels": ["email"]}))
            .await;
        let id = created.authentication_id.clone();
        let code = emailed_code(&domain, id.as_str()).await;
        let wrong = if code == "00000000" {
            "11111111"
        } else {
            "00000000"
        };
        let wrong = &wrong[..code.len()];
        for _ in 0..domain.ctx.config.backup_code_attempts {
            assert!(
                answer_authentication(&domain.ctx, &domain.app.id, id.as_str(), wrong)
                    .await
                    .is_err()
            );
        }
        assert!(
            answer_authentication(&domain.ctx, &domain.app.id, id.as_str(), &code)
                .await
                .is_err(),
            "the right code after the attempts are used up"
        );
        assert_eq!(endings_announced(&id), 0);
    }
}

#[tokio::test]
async fn a_channel_the_request_does_not_offer_sends_nothing() {
    for domain in TestDomain::each_engine().await {
        let carol = user_with_email(&domain, "carol").await;
        let created = domain
            .ask(&carol, json!({"backup_channels": ["sms"]}))
            .await;
        assert!(
            send_for_authentication(
                &domain.ctx,
                &domain.app,
                created.authentication_id.as_str(),
                BackupChannel::Email
            )
            .await
            .is_err()
        );
        assert!(domain.emails.all().is_empty(), "no message sent");
    }
}

/// The phone number the tests register first.
const PHONE: &str = "+15551234567";

/// A user with a device and a registered phone number `phone`, in an application whose SMS and
/// voice provider webhook is set (the messages are recorded in `domain.sms`).
async fn user_with_phone(domain: &TestDomain, name: &str, phone: &str) -> UserId {
    let (user, _device) = domain.user_with_device(name).await;
    set_contacts(
        &domain.ctx,
        &domain.app.id,
        &user,
        BackupContacts {
            phone: Some(phone.into()),
            email: None,
        },
    )
    .await
    .expect("contacts");
    crate::store::applications::set_sms_webhook(
        &domain.ctx.db,
        &domain.app.id,
        Some(("https://sms.example/send", "webhook signing secret")),
    )
    .await
    .expect("webhook set");
    user
}

#[tokio::test]
async fn codes_by_sms_and_by_voice_go_to_the_phone_and_approve_their_request_once() {
    for domain in TestDomain::each_engine().await {
        let grace = user_with_phone(&domain, "grace", PHONE).await;
        for (n, (channel, kind, amr)) in [
            (BackupChannel::Sms, "SMS", json!(["sms", "otp"])),
            (BackupChannel::Voice, "VOICE", json!(["tel", "otp"])),
        ]
        .into_iter()
        .enumerate()
        {
            let created = domain
                .ask(&grace, json!({"backup_channels": ["sms", "voice"]}))
                .await;
            let id = created.authentication_id.clone();
            let challenge = send_for_authentication(&domain.ctx, &domain.app, id.as_str(), channel)
                .await
                .expect("sent");
            assert_eq!(challenge.channel, channel);
            assert_eq!(challenge.destination, "+*******4567", "shown masked");
            assert_eq!(challenge.authentication_id.as_ref(), Some(&id));
            let sent = domain.sms.sent();
            assert_eq!(sent.len(), n + 1, "one message per code");
            let (through, to, code) = sent[n].clone();
            assert_eq!((through, to.as_str()), (channel, PHONE));

            let approved = answer_authentication(&domain.ctx, &domain.app.id, id.as_str(), &code)
                .await
                .expect("approved");
            assert_eq!(approved.state, AuthenticationState::Approved);
            assert_eq!(
                approved.attributes["pingid.authentication.type"],
                json!(kind)
            );
            assert_eq!(approved.attributes["pingid.authentication.amr"], amr);
            assert_eq!(endings_announced(&id), 1);
            // The same code again (a retry): told the same approval; the request ended once.
            let again = answer_authentication(&domain.ctx, &domain.app.id, id.as_str(), &code)
                .await
                .expect("the approval, again");
            assert_eq!(
                (again.state, &again.attributes),
                (approved.state, &approved.attributes)
            );
            // Another code now: the request is answered.
            let other = if code == "000000" { "111111" } else { "000000" };
            assert_eq!(
                answer_authentication(&domain.ctx, &domain.app.id, id.as_str(), other)
                    .await
                    .expect_err("answered")
                    .code(),
                Some(ErrorCode::AlreadyAnswered)
            );
            assert_eq!(endings_announced(&id), 1);
        }
        assert!(domain.emails.all().is_empty(), "nothing went by email");

        // A new number replaces the old one: the next code goes there, not to the old number.
        set_contacts(
            &domain.ctx,
            &domain.app.id,
            &grace,
            BackupContacts {
                phone: Some("+442071234999".into()),
                email: None,
            },
        )
        .await
        .expect("contacts");
        let created = domain
            .ask(&grace, json!({"backup_channels": ["sms"]}))
            .await;
        let challenge = send_for_authentication(
            &domain.ctx,
            &domain.app,
            created.authentication_id.as_str(),
            BackupChannel::Sms,
        )
        .await
        .expect("sent");
        assert_eq!(challenge.destination, "+********4999");
        assert_eq!(
            domain.sms.sent().last().map(|(_, to, _)| to.clone()),
            Some("+442071234999".to_string())
        );
    }
}

#[tokio::test]
async fn an_sms_or_voice_channel_the_request_does_not_offer_sends_nothing() {
    for domain in TestDomain::each_engine().await {
        for (n, (offered, refused)) in [
            (json!(["email"]), BackupChannel::Sms),
            (json!(["email"]), BackupChannel::Voice),
            (json!(["sms"]), BackupChannel::Voice),
            (json!(["voice"]), BackupChannel::Sms),
        ]
        .into_iter()
        .enumerate()
        {
            // A user per request: a user has few pending requests at a time.
            let heidi = user_with_phone(&domain, &format!("heidi-{n}"), PHONE).await;
            let created = domain
                .ask(&heidi, json!({ "backup_channels": offered }))
                .await;
            let refusal = send_for_authentication(
                &domain.ctx,
                &domain.app,
                created.authentication_id.as_str(),
                refused,
            )
            .await
            .expect_err("refused");
            assert_eq!(
                refusal.code(),
                Some(ErrorCode::BackupChannelUnavailable),
                "{refused:?} when {offered} is offered"
            );
        }
        assert!(domain.sms.sent().is_empty(), "no message sent");
        assert!(domain.emails.all().is_empty(), "no message sent");
    }
}

/// Codes asked for at once (a script hammering "send me a code", each message a cost) are sent
/// no more than the user's limit per channel: the limit is taken with each code's insert, so
/// the sends cannot all pass one count made before any of them was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn codes_asked_for_at_once_are_sent_no_more_than_the_limit() {
    for domain in TestDomain::each_engine().await {
        let limit = usize::try_from(domain.ctx.config.backup_codes_per_window).expect("small");
        for round in 0..4 {
            let user = user_with_email(&domain, &format!("frank-{round}")).await;
            let created = domain
                .ask(&user, json!({"backup_channels": ["email"]}))
                .await;
            let id = created.authentication_id.to_string();
            let before = domain.emails.all().len();
            let sends = sent_at_once(10, || {
                let (ctx, app, id) = (domain.ctx.clone(), domain.app.clone(), id.clone());
                async move {
                    send_for_authentication(&ctx, &app, &id, BackupChannel::Email)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.code())
                }
            })
            .await;
            let sent = sends.iter().filter(|s| s.is_ok()).count();
            assert_eq!(sent, limit, "round {round}: {sends:?}");
            assert!(
                sends
                    .iter()
                    .all(|s| s.is_ok() || *s == Err(Some(ErrorCode::RateLimited))),
                "{sends:?}"
            );
            assert_eq!(domain.emails.all().len() - before, limit, "messages sent");
        }
    }
}

/// Both engines, with a user's passcode lockout far above a challenge's attempts: what limits
/// the guesses below is the challenge alone.
async fn each_engine_without_lockout() -> Vec<TestDomain> {
    TestDomain::each_engine_with(|| crate::config::ServerConfig {
        otp_max_failures: 100,
        ..crate::config::ServerConfig::default()
    })
    .await
}

/// A code other than `code`, of its length.
fn wrong_for(code: &str) -> String {
    let wrong = if code.starts_with('0') {
        "11111111"
    } else {
        "00000000"
    };
    wrong[..code.len()].to_string()
}

/// The attempts counted on challenge `id`.
async fn attempts_of(domain: &TestDomain, id: &str) -> i64 {
    crate::store::otp_challenges::get(&domain.ctx.db, id)
        .await
        .expect("read")
        .expect("the challenge")
        .attempts
}

/// A code sent to `user` outside an authentication (to an email address given for this one
/// sign-in): the challenge's id and the code.
async fn challenge_for(domain: &TestDomain, user: &UserId) -> (String, String) {
    let before = domain.emails.all().len();
    let sent = create_challenge(
        &domain.ctx,
        &domain.app,
        user.clone(),
        CreateOtpChallenge {
            channel: BackupChannel::Email,
            phone: None,
            email: Some(format!("{user}@example.com")),
        },
    )
    .await
    .expect("sent");
    let messages = domain.emails.all();
    assert_eq!(messages.len(), before + 1, "one message");
    (sent.challenge_id, messages[before].1.clone())
}

/// Checks `code` for challenge `id`: the error's code when refused.
async fn verified(
    ctx: &crate::domain::Ctx,
    app: &tessera_protocol::ids::ApplicationId,
    id: &str,
    code: &str,
) -> Result<(), Option<ErrorCode>> {
    verify_challenge(ctx, app, id, code)
        .await
        .map(|_| ())
        .map_err(|e| e.code())
}

/// Wrong codes sent at once for one challenge are compared no more times than the challenge
/// allows: each takes one of its attempts (a conditional update) before it is compared, so
/// they cannot all pass a count of attempts read before any of them was counted. The right code
/// then finds no attempt left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guesses_at_once_at_a_challenge_compare_no_more_codes_than_it_allows() {
    for domain in each_engine_without_lockout().await {
        let engine = domain.ctx.db.engine();
        let max = i64::from(domain.ctx.config.backup_code_attempts);
        for round in 0..8 {
            let user = domain.user(&format!("ivan-{round}")).await;
            let (id, code) = challenge_for(&domain, &user).await;
            let wrong = wrong_for(&code);
            let guesses = sent_at_once(8, || {
                let (ctx, app, id, wrong) = (
                    domain.ctx.clone(),
                    domain.app.id.clone(),
                    id.clone(),
                    wrong.clone(),
                );
                async move { verified(&ctx, &app, &id, &wrong).await }
            })
            .await;
            assert!(
                guesses
                    .iter()
                    .all(|g| *g == Err(Some(ErrorCode::OtpInvalid))),
                "{engine:?}, round {round}: {guesses:?}"
            );
            assert_eq!(
                attempts_of(&domain, &id).await,
                max,
                "{engine:?}, round {round}: codes compared"
            );
            assert_eq!(
                verified(&domain.ctx, &domain.app.id, &id, &code).await,
                Err(Some(ErrorCode::OtpInvalid)),
                "{engine:?}, round {round}: the right code finds the challenge used up"
            );
        }
    }
}

/// The attempt a right code takes before it is compared is given back as it is used: after one
/// wrong code fewer than the challenge allows, the right code is accepted (once); after as many
/// wrong codes as it allows, it is refused.
#[tokio::test]
async fn a_right_code_is_accepted_while_its_challenge_has_an_attempt_left() {
    for domain in TestDomain::each_engine().await {
        let max = i64::from(domain.ctx.config.backup_code_attempts);
        let judy = domain.user("judy").await;
        let (id, code) = challenge_for(&domain, &judy).await;
        for _ in 1..max {
            assert_eq!(
                verified(&domain.ctx, &domain.app.id, &id, &wrong_for(&code)).await,
                Err(Some(ErrorCode::OtpInvalid))
            );
        }
        verified(&domain.ctx, &domain.app.id, &id, &code)
            .await
            .expect("accepted with the last attempt");
        assert_eq!(attempts_of(&domain, &id).await, max - 1, "wrong codes only");
        assert!(
            verified(&domain.ctx, &domain.app.id, &id, &code)
                .await
                .is_err(),
            "accepted once"
        );

        let ken = domain.user("ken").await;
        let (id, code) = challenge_for(&domain, &ken).await;
        for _ in 0..max {
            assert!(
                verified(&domain.ctx, &domain.app.id, &id, &wrong_for(&code))
                    .await
                    .is_err()
            );
        }
        assert!(
            verified(&domain.ctx, &domain.app.id, &id, &code)
                .await
                .is_err(),
            "no attempt left"
        );
        assert_eq!(attempts_of(&domain, &id).await, max);
    }
}

/// Sends the email code for authentication `id`: the challenge's id and the code.
async fn emailed_challenge(domain: &TestDomain, id: &str) -> (String, String) {
    let before = domain.emails.all().len();
    let sent = send_for_authentication(&domain.ctx, &domain.app, id, BackupChannel::Email)
        .await
        .expect("sent");
    let messages = domain.emails.all();
    assert_eq!(messages.len(), before + 1, "one message");
    (sent.challenge_id, messages[before].1.clone())
}

/// Wrong codes sent at once for a push authentication's emailed code are compared with it no
/// more times than it allows, as for a challenge outside an authentication; the right code then
/// finds no code to compare with, and the request stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guesses_at_once_at_a_requests_code_compare_no_more_codes_than_it_allows() {
    for domain in each_engine_without_lockout().await {
        let engine = domain.ctx.db.engine();
        let max = i64::from(domain.ctx.config.backup_code_attempts);
        for round in 0..8 {
            let user = user_with_email(&domain, &format!("leo-{round}")).await;
            let created = domain
                .ask(&user, json!({"backup_channels": ["email"]}))
                .await;
            let id = created.authentication_id.clone();
            let (challenge, code) = emailed_challenge(&domain, id.as_str()).await;
            let wrong = wrong_for(&code);
            let guesses = sent_at_once(8, || {
                let (ctx, app, id, wrong) = (
                    domain.ctx.clone(),
                    domain.app.id.clone(),
                    id.clone(),
                    wrong.clone(),
                );
                async move {
                    answer_authentication(&ctx, &app, id.as_str(), &wrong)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.code())
                }
            })
            .await;
            assert!(
                guesses.iter().all(|g| matches!(
                    g,
                    Err(Some(ErrorCode::OtpInvalid | ErrorCode::OtpNotAllowed))
                )),
                "{engine:?}, round {round}: {guesses:?}"
            );
            assert_eq!(
                attempts_of(&domain, &challenge).await,
                max,
                "{engine:?}, round {round}: codes compared"
            );
            assert_eq!(
                answer_authentication(&domain.ctx, &domain.app.id, id.as_str(), &code)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.code()),
                Err(Some(ErrorCode::OtpNotAllowed)),
                "{engine:?}, round {round}: the right code finds the code used up"
            );
            assert_eq!(endings_announced(&id), 0);
        }
    }
}

/// A push authentication's emailed code is accepted with its last attempt, as a challenge's is.
#[tokio::test]
async fn a_requests_code_is_accepted_with_its_last_attempt() {
    for domain in TestDomain::each_engine().await {
        let max = domain.ctx.config.backup_code_attempts;
        let mia = user_with_email(&domain, "mia").await;
        let created = domain
            .ask(&mia, json!({"backup_channels": ["email"]}))
            .await;
        let id = created.authentication_id.clone();
        let (challenge, code) = emailed_challenge(&domain, id.as_str()).await;
        for _ in 1..max {
            assert!(
                answer_authentication(&domain.ctx, &domain.app.id, id.as_str(), &wrong_for(&code))
                    .await
                    .is_err()
            );
        }
        let approved = answer_authentication(&domain.ctx, &domain.app.id, id.as_str(), &code)
            .await
            .expect("approved with the last attempt");
        assert_eq!(approved.state, AuthenticationState::Approved);
        assert_eq!(endings_announced(&id), 1);
        assert_eq!(
            attempts_of(&domain, &challenge).await,
            i64::from(max) - 1,
            "wrong codes only"
        );
    }
}

/// Copies of one backup code sent at once (the form sent twice) are each told the approval the
/// first made, whichever step of it they reached when it committed: the request ends once. As
/// many copies as the challenge allows attempts: each takes one before comparing, and a copy
/// beyond them finds none left until the first gives its own back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_of_a_backup_code_sent_at_once_are_told_its_approval() {
    for domain in TestDomain::each_engine().await {
        let user = user_with_email(&domain, "iris").await;
        let copies = usize::try_from(domain.ctx.config.backup_code_attempts).expect("small");
        for round in 0..6 {
            let created = domain
                .ask(&user, json!({"backup_channels": ["email"]}))
                .await;
            let id = created.authentication_id.clone();
            let code = emailed_code(&domain, id.as_str()).await;
            let told = domain.passcode_sent_at_once(&id, &code, copies).await;
            for status in &told {
                let status = status.as_ref().expect("every copy is told the approval");
                assert_eq!(status.state, AuthenticationState::Approved, "round {round}");
            }
            assert_eq!(endings_announced(&id), 1, "round {round}");
            // A fresh window for the next round's message.
            domain.clock.advance(std::time::Duration::from_secs(
                u64::from(domain.ctx.config.backup_code_window) + 1,
            ));
        }
    }
}

/// Saves the application's policy: `default` for every request.
async fn policy_requiring(domain: &TestDomain, default: serde_json::Value) {
    let policy =
        serde_json::from_value(json!({"rules": [], "default": default})).expect("a policy");
    crate::domain::policy::save(&domain.ctx, &domain.app.id, &policy)
        .await
        .expect("saved");
}

/// A policy that requires methods without a backup channel is applied to the push's backup
/// codes, as to backup challenges: the push asked to offer email does not offer it, no code is
/// sent for it (`policy_denied`), and the push stays pending. A policy naming `email` keeps
/// that channel only: SMS is refused the same way, and the emailed code approves the push.
#[tokio::test]
async fn a_require_without_the_channel_sends_no_code_through_it() {
    for domain in TestDomain::each_engine().await {
        let engine = domain.ctx.db.engine();
        let judy = user_with_email(&domain, "judy").await;
        policy_requiring(
            &domain,
            json!({"action": "require", "methods": ["mobile_biometrics"]}),
        )
        .await;
        let created = domain
            .ask(&judy, json!({"backup_channels": ["email"]}))
            .await;
        let id = created.authentication_id.clone();
        let refused =
            send_for_authentication(&domain.ctx, &domain.app, id.as_str(), BackupChannel::Email)
                .await
                .expect_err("the policy requires biometrics");
        assert_eq!(refused.code(), Some(ErrorCode::PolicyDenied), "{engine:?}");
        assert!(
            domain.emails.all().is_empty(),
            "{engine:?}: no message sent"
        );
        assert!(
            created.backup_channels.is_empty(),
            "{engine:?}: no channel offered"
        );
        assert_eq!(created.state, AuthenticationState::Pending);
        assert_eq!(endings_announced(&id), 0);

        policy_requiring(
            &domain,
            json!({"action": "require", "methods": ["mobile_push", "email"]}),
        )
        .await;
        let created = domain
            .ask(&judy, json!({"backup_channels": ["sms", "email"]}))
            .await;
        let id = created.authentication_id.clone();
        assert_eq!(
            created.backup_channels,
            vec![BackupChannel::Email],
            "{engine:?}"
        );
        let refused =
            send_for_authentication(&domain.ctx, &domain.app, id.as_str(), BackupChannel::Sms)
                .await
                .expect_err("the policy names email only");
        assert_eq!(refused.code(), Some(ErrorCode::PolicyDenied), "{engine:?}");
        let code = emailed_code(&domain, id.as_str()).await;
        let approved = answer_authentication(&domain.ctx, &domain.app.id, id.as_str(), &code)
            .await
            .expect("approved");
        assert_eq!(approved.state, AuthenticationState::Approved, "{engine:?}");
    }
}
