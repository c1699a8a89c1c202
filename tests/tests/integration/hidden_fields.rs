//! End to end: everything the signature binds reaches the app. A transaction's hidden fields
//! (context bound but not part of the headline display) arrive in the core's request,
//! separately from the displayed fields, so an app can show "Amount 10.00 EUR" and still
//! surface that the bound context says 10000.00. On SQLite and PostgreSQL.

use tessera_protocol::api::CreateAuthenticationRequest;
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState, DisplayField};
use tessera_tests::{Backend, TestDevice, TestServer, ask, on_each_backend};

on_each_backend! {
    hidden_fields_reach_the_core_request_separately_and_labelled => hidden_fields_reach_the_app;
}

fn field(label: &str, value: &str) -> DisplayField {
    DisplayField {
        label: label.into(),
        value: value.into(),
    }
}

async fn hidden_fields_reach_the_app(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("alice").await;
    let device = TestDevice::new().await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri("alice").await, None)
        .await
        .unwrap();
    let created = server
        .customer
        .create_authentication(
            "alice",
            &CreateAuthenticationRequest {
                message: Some("Pay 10.00 EUR to ACME GmbH?".into()),
                fields: vec![field("Amount", "10.00 EUR"), field("Payee", "ACME GmbH")],
                hidden_fields: vec![
                    field("Amount (booked)", "10000.00 EUR"),
                    field("Reference", "order-4711"),
                ],
                ..ask(AuthenticationKind::Transaction)
            },
        )
        .await
        .unwrap();
    let request = device
        .pull_request(&enrollment.enrollment_id, &created.authentication_id)
        .await;
    assert_eq!(
        request.fields,
        [field("Amount", "10.00 EUR"), field("Payee", "ACME GmbH")]
    );
    assert_eq!(
        request.hidden_fields,
        [
            field("Amount (booked)", "10000.00 EUR"),
            field("Reference", "order-4711")
        ],
        "the bound context reaches the app, in order"
    );
    // The approval covers both, as signed.
    device.auth.approve(&request, vec![], None).await.unwrap();
    let status = server
        .customer
        .authentication(&created.authentication_id, 5)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);
}
