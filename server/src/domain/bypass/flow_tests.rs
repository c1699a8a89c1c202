//! A user's bypass called directly, without HTTP: while it lasts, a push or transaction
//! completes at once and nothing reaches the device; once it ends (by the clock, or cleared),
//! requests are pushed again; a silent verification never bypasses.

use std::time::Duration;

use serde_json::json;
use tessera_protocol::authentication::AuthenticationState;
use tessera_protocol::bypass::SetBypassRequest;

use super::{clear, grant};
use crate::domain::testing::{TestDomain, endings_announced};

fn for_seconds(seconds: u32) -> SetBypassRequest {
    SetBypassRequest {
        duration_seconds: Some(seconds),
        until: None,
        reason: "lost phone".into(),
    }
}

#[tokio::test]
async fn a_bypass_approves_without_the_device_until_it_ends() {
    for domain in TestDomain::each_engine().await {
        let (alice, phone) = domain.user_with_device("alice").await;
        grant(&domain.ctx, &domain.app.id, &alice, &for_seconds(60))
            .await
            .expect("granted");

        for body in [
            json!({}),
            json!({"kind": "transaction", "message": "Pay 20 EUR", "fields": [{"label": "To", "value": "Shop"}]}),
        ] {
            let bypassed = domain.ask(&alice, body).await;
            assert_eq!(bypassed.state, AuthenticationState::Approved);
            assert_eq!(endings_announced(&bypassed.authentication_id), 1);
        }
        // A silent verification proves the device: never bypassed.
        let silent = domain.ask(&alice, json!({"kind": "silent"})).await;
        assert_eq!(silent.state, AuthenticationState::Pending);
        let pulled = domain.pull(&phone).await;
        assert_eq!(
            pulled.len(),
            1,
            "only the silent verification reached the device"
        );
        assert_eq!(pulled[0].request_id, silent.authentication_id);
        assert!(
            domain
                .pushes
                .at_least(1)
                .await
                .iter()
                .all(|(id, _)| *id == silent.authentication_id),
            "nothing pushed for the bypassed requests"
        );

        domain.clock.advance(Duration::from_secs(61));
        let after = domain.ask(&alice, json!({})).await;
        assert_eq!(
            after.state,
            AuthenticationState::Pending,
            "the bypass ended"
        );
    }
}

#[tokio::test]
async fn a_cleared_bypass_bypasses_nothing() {
    for domain in TestDomain::each_engine().await {
        let (bob, _phone) = domain.user_with_device("bob").await;
        grant(&domain.ctx, &domain.app.id, &bob, &for_seconds(3600))
            .await
            .expect("granted");
        clear(&domain.ctx, &domain.app.id, &bob)
            .await
            .expect("cleared");
        let asked = domain.ask(&bob, json!({})).await;
        assert_eq!(asked.state, AuthenticationState::Pending);
        assert_eq!(domain.pushes.at_least(1).await.len(), 1, "pushed");
    }
}
