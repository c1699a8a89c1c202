//! Backup codes for a push authentication, called directly without HTTP: a code sent to the
//! user's registered email address approves the request through the one outcome path, once,
//! and wrong codes use up its attempts.

use serde_json::json;
use tessera_protocol::api::{BackupChannel, BackupContacts};
use tessera_protocol::authentication::AuthenticationState;
use tessera_protocol::ids::UserId;

use super::{send_for_authentication, set_contacts};
use crate::domain::otp::answer_authentication;
use crate::domain::testing::{TestDomain, endings_announced};

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
