//! The recovery-code entry of the hosted prompt in headless Chromium (one browser for the
//! whole test, `prompt_page.mjs --stay`): recovery codes issued through the customer API, one
//! typed on the page ("use a recovery code") completes the flow and the page lands on the
//! `return_url`; the same code typed on a new flow's page is refused, the page says so and the
//! flow waits on, with the refusal in its history.

use tessera_protocol::error::ErrorCode;
use tessera_protocol::flows::{FlowResultStatus, FlowStatus};
use tessera_tests::{Backend, TestServer};

use crate::hosted::{hosted_request, paired};
use crate::hosted_browser::{PromptPage, browser_available, return_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recovery_code_typed_on_the_page_completes_one_flow_only() {
    if !browser_available() {
        return;
    }
    let server = TestServer::start(Backend::Sqlite).await;
    let (_phone, _) = paired(&server, "rita").await;
    let issued = server.customer.issue_recovery_codes("rita").await.unwrap();
    let code = issued.codes[3].clone();
    let back = return_url(&server, "recovery");

    let first = server
        .customer
        .create_flow(&hosted_request("rita", &back, &[]))
        .await
        .unwrap();
    let mut page = PromptPage::open(
        first.prompt_url.as_deref().unwrap(),
        &["--return-prefix", &back, "--stay"],
    );
    // The push waits on the phone; the page offers the recovery code instead.
    page.state("PUSH_CONFIRMATION_WAITING").await;
    page.send(&format!("recovery {code}"));
    let (text, url) = page.finish_and_stay("MFA_COMPLETED").await;
    assert!(text.contains("You are verified"), "{text}");
    assert_eq!(url, back, "the page returns to return_url exactly as given");
    let done = server.customer.flow(first.id.as_str()).await.unwrap();
    let result = done.result.unwrap();
    assert_eq!(result.status, FlowResultStatus::Authenticated);
    assert_eq!(
        result.attributes["pingid.authentication.type"],
        "RECOVERY_CODE"
    );
    assert_eq!(
        server
            .customer
            .recovery_codes("rita")
            .await
            .unwrap()
            .remaining,
        9
    );

    // The same code on a new flow, in the same browser: refused, shown, nothing spent.
    let second = server
        .customer
        .create_flow(&hosted_request("rita", &back, &[]))
        .await
        .unwrap();
    page.goto(second.prompt_url.as_deref().unwrap());
    page.state("PUSH_CONFIRMATION_WAITING").await;
    page.send(&format!("recovery {code}"));
    let shown = page.error_in("PUSH_CONFIRMATION_WAITING").await;
    assert!(
        shown["error"]
            .as_str()
            .unwrap()
            .contains("That passcode is not right"),
        "{shown}"
    );
    drop(page);
    let waiting = server.customer.flow(second.id.as_str()).await.unwrap();
    assert_eq!(waiting.status, FlowStatus::PushConfirmationWaiting);
    assert!(waiting.result.is_none());
    let history = server
        .customer
        .flow_events(second.id.as_str())
        .await
        .unwrap();
    assert!(
        history
            .events
            .iter()
            .any(|e| e.action == "checkRecoveryCode" && e.error == Some(ErrorCode::OtpInvalid)),
        "{history:?}"
    );
    assert_eq!(
        server
            .customer
            .recovery_codes("rita")
            .await
            .unwrap()
            .remaining,
        9
    );
}
