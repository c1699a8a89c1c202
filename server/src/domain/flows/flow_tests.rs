//! Authentication flows called directly, without HTTP: the customer steps a user through a
//! flow, the flow follows its push (through the `flows` follow-up of the one outcome path), and
//! racing actions cannot both send a push.

use std::time::Duration;

use serde_json::json;
use tessera_protocol::authentication::{AuthenticationRequest, Decision};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::flows::{CreateFlowRequest, FlowAction, FlowState, FlowStatus};
use tessera_protocol::ids::UserId;

use super::{act, create, get};
use crate::clock::Clock;
use crate::domain::testing::{TestDevice, TestDomain, joined};

fn authenticate() -> FlowAction {
    FlowAction::Authenticate {
        mobile_payload: None,
        authorization_payload: None,
    }
}

async fn flow_for(domain: &TestDomain, user: &UserId) -> FlowState {
    let body: CreateFlowRequest =
        serde_json::from_value(json!({"user_id": user})).expect("a flow request");
    let flow = create(&domain.ctx, &domain.app, body)
        .await
        .expect("created");
    assert_eq!(flow.status, FlowStatus::AuthenticationRequired);
    flow
}

/// The flow's push as the device pulls it.
async fn pushed(domain: &TestDomain, device: &TestDevice) -> AuthenticationRequest {
    let mut pulled = domain.pull(device).await;
    assert_eq!(pulled.len(), 1, "one push");
    pulled.remove(0)
}

#[tokio::test]
async fn a_flow_follows_its_push_to_completed_or_rejected() {
    for domain in TestDomain::each_engine().await {
        for (name, decision, end) in [
            ("alice", Decision::Approve, FlowStatus::MfaCompleted),
            ("bob", Decision::Deny, FlowStatus::PushConfirmationRejected),
        ] {
            let (user, phone) = domain.user_with_device(name).await;
            let flow = flow_for(&domain, &user).await;
            let id = flow.id.to_string();
            let waiting = act(&domain.ctx, &domain.app, &id, authenticate())
                .await
                .expect("pushed");
            assert_eq!(waiting.status, FlowStatus::PushConfirmationWaiting);
            let request = pushed(&domain, &phone).await;
            domain
                .answered_by(&phone, &request, decision)
                .await
                .expect("recorded");
            // The follow-up moved the flow when the push ended.
            let stored = crate::store::flows::get(&domain.ctx.db, &flow.id)
                .await
                .expect("read")
                .expect("stored");
            assert_eq!(stored.status, end.as_str(), "{name}");
            let read = get(&domain.ctx, &domain.app.id, &id).await.expect("read");
            assert_eq!(read.status, end);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_actions_sent_at_once_one_moves_the_flow_and_one_push_is_sent() {
    for domain in TestDomain::each_engine().await {
        for n in 0..4 {
            let (carol, phone) = domain.user_with_device(&format!("carol-{n}")).await;
            let flow = flow_for(&domain, &carol).await;
            let id = flow.id.to_string();
            let tasks: Vec<_> = (0..4)
                .map(|_| {
                    let (ctx, app, id) = (domain.ctx.clone(), domain.app.clone(), id.clone());
                    tokio::spawn(async move { act(&ctx, &app, &id, authenticate()).await })
                })
                .collect();
            let results = joined(tasks).await;
            assert_eq!(
                results.iter().filter(|r| r.is_ok()).count(),
                1,
                "{results:?}"
            );
            for refused in results.iter().filter_map(|r| r.as_ref().err()) {
                assert!(
                    matches!(
                        refused.code(),
                        Some(ErrorCode::Conflict | ErrorCode::ActionNotAllowed)
                    ),
                    "{refused:?}"
                );
            }
            assert_eq!(domain.pull(&phone).await.len(), 1, "one push");
        }
    }
}

#[tokio::test]
async fn an_unanswered_push_times_the_flow_out_and_a_canceled_flow_takes_no_answer() {
    for domain in TestDomain::each_engine().await {
        let (dave, phone) = domain.user_with_device("dave").await;
        let flow = flow_for(&domain, &dave).await;
        let id = flow.id.to_string();
        act(&domain.ctx, &domain.app, &id, authenticate())
            .await
            .expect("pushed");
        let _ = pushed(&domain, &phone).await;
        domain.clock.advance(Duration::from_secs(121));
        let read = get(&domain.ctx, &domain.app.id, &id).await.expect("read");
        assert_eq!(read.status, FlowStatus::PushConfirmationTimedOut);

        let (erin, tablet) = domain.user_with_device("erin").await;
        let flow = flow_for(&domain, &erin).await;
        let id = flow.id.to_string();
        act(&domain.ctx, &domain.app, &id, authenticate())
            .await
            .expect("pushed");
        let request = pushed(&domain, &tablet).await;
        let canceled = act(
            &domain.ctx,
            &domain.app,
            &id,
            FlowAction::CancelAuthentication {},
        )
        .await
        .expect("canceled");
        assert_eq!(canceled.status, FlowStatus::Canceled);
        let signed = tablet.answer(&request, Decision::Approve, None, domain.clock.now());
        assert!(
            crate::domain::authentication::answer(
                &domain.ctx,
                request.request_id.as_str(),
                &signed,
                "198.51.100.7"
            )
            .await
            .is_err(),
            "the push was withdrawn with its flow"
        );
        let read = get(&domain.ctx, &domain.app.id, &id).await.expect("read");
        assert_eq!(read.status, FlowStatus::Canceled);
    }
}
