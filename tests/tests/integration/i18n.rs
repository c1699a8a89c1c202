//! End to end: languages. The server's own texts (the default push headline, the new-device
//! prompt, passcode SMS and email) come in the language the request names, else the user's
//! preferred one, else English; the signed request carries the language it was written in and
//! the device core hands it to the app; customer texts are never translated; a tag that is not
//! BCP 47 is refused with `invalid_locale` and changes nothing.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::http::StatusCode;
use serde_json::Value;
use tessera_protocol::api::{BackupChannel, BackupContacts, CreateUserRequest, UpdateUserRequest};
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState};
use tessera_protocol::error::ErrorCode;
use tessera_server::admin;
use tessera_server::store::applications::AdditionalDevicePolicy;
use tessera_tests::{Backend, TestDevice, TestServer, ask, device_config, on_each_backend};

use crate::otp_backup::{smtp_server, wait_for_mail, with_smtp};

on_each_backend! {
    a_german_user_gets_a_german_default_push_text_signed_in_the_request => german_push;
    the_request_locale_comes_before_the_users_and_unknown_ones_fall_back_to_english => precedence;
    invalid_locales_are_refused_with_a_typed_error_and_change_nothing => invalid_locales;
    french_sms_and_email_codes_reach_the_local_receivers => french_messages;
    the_new_device_prompt_is_in_the_users_language => german_device_verification;
    a_burst_of_requests_in_several_languages_each_keeps_its_own => burst;
}

async fn user_with_locale(server: &TestServer, user: &str, locale: Option<&str>) {
    server
        .customer
        .create_user_with(&CreateUserRequest {
            user_id: user.parse().unwrap(),
            display_name: None,
            locale: locale.map(str::to_string),
        })
        .await
        .unwrap();
}

async fn paired(
    server: &TestServer,
    user: &str,
) -> (TestDevice, tessera_protocol::ids::EnrollmentId) {
    let device = TestDevice::new().await;
    let enrollment = device
        .auth
        .pair(&server.pairing_uri(user).await, None)
        .await
        .unwrap();
    (device, enrollment.enrollment_id)
}

/// Asks `user` for an approval (with `locale`, no message), pulls it on the device, and
/// returns what the core verified: (headline, signed locale).
async fn default_prompt(
    server: &TestServer,
    user: &str,
    device: &TestDevice,
    enrollment: &tessera_protocol::ids::EnrollmentId,
    locale: Option<&str>,
) -> (String, Option<String>) {
    let mut request = ask(AuthenticationKind::Approval);
    request.locale = locale.map(str::to_string);
    let created = server
        .customer
        .create_authentication(user, &request)
        .await
        .unwrap();
    let incoming = device
        .pull_request(enrollment, &created.authentication_id)
        .await;
    device.auth.deny(&incoming, false).await.unwrap();
    (incoming.message, incoming.locale)
}

async fn german_push(backend: Backend) {
    let server =
        TestServer::start_with(backend, |c| c.max_pending_authentications_per_user = 20).await;
    let app = server.app.name.clone();
    user_with_locale(&server, "greta", Some("de-DE")).await;
    assert_eq!(
        server
            .customer
            .get_user("greta")
            .await
            .unwrap()
            .locale
            .as_deref(),
        Some("de-DE")
    );
    let (device, enrollment) = paired(&server, "greta").await;
    let (message, locale) = default_prompt(&server, "greta", &device, &enrollment, None).await;
    assert_eq!(message, format!("Bei {app} anmelden?"));
    assert_eq!(locale.as_deref(), Some("de"));

    // The whole cycle still works: approved in German.
    let created = server
        .customer
        .create_authentication("greta", &ask(AuthenticationKind::Approval))
        .await
        .unwrap();
    let incoming = device
        .pull_request(&enrollment, &created.authentication_id)
        .await;
    device.auth.approve(&incoming, vec![], None).await.unwrap();
    let status = server
        .customer
        .authentication(&created.authentication_id, 10)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);

    // A customer's own text is never translated; the request still says which language the
    // server's texts are in.
    let mut own = ask(AuthenticationKind::Approval);
    own.message = Some("Sign in to the staff portal?".into());
    let created = server
        .customer
        .create_authentication("greta", &own)
        .await
        .unwrap();
    let incoming = device
        .pull_request(&enrollment, &created.authentication_id)
        .await;
    assert_eq!(incoming.message, "Sign in to the staff portal?");
    assert_eq!(incoming.locale.as_deref(), Some("de"));
}

async fn precedence(backend: Backend) {
    let server =
        TestServer::start_with(backend, |c| c.max_pending_authentications_per_user = 20).await;
    let app = server.app.name.clone();
    user_with_locale(&server, "greta", Some("de")).await;
    let (device, enrollment) = paired(&server, "greta").await;
    // The request's language wins over the user's.
    let (message, locale) =
        default_prompt(&server, "greta", &device, &enrollment, Some("fr-CA")).await;
    assert_eq!(message, format!("Se connecter à {app} ?"));
    assert_eq!(locale.as_deref(), Some("fr"));
    // A well-formed tag of a language not shipped: the user's language next.
    let (message, _) = default_prompt(&server, "greta", &device, &enrollment, Some("ja")).await;
    assert_eq!(message, format!("Bei {app} anmelden?"));
    // The user's language changed through the API, then removed: English.
    let updated = server
        .customer
        .update_user(
            "greta",
            &UpdateUserRequest {
                locale: Some("fr".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.locale.as_deref(), Some("fr"));
    let (message, _) = default_prompt(&server, "greta", &device, &enrollment, None).await;
    assert_eq!(message, format!("Se connecter à {app} ?"));
    let updated = server
        .customer
        .update_user("greta", &UpdateUserRequest { locale: None })
        .await
        .unwrap();
    assert_eq!(updated.locale, None);
    let (message, locale) = default_prompt(&server, "greta", &device, &enrollment, None).await;
    assert_eq!(message, format!("Sign in to {app}?"));
    assert_eq!(locale.as_deref(), Some("en"));
    // Unknown everywhere: English.
    user_with_locale(&server, "yuki", Some("ja-JP")).await;
    let (phone, yuki) = paired(&server, "yuki").await;
    let (message, locale) = default_prompt(&server, "yuki", &phone, &yuki, Some("zh")).await;
    assert_eq!(message, format!("Sign in to {app}?"));
    assert_eq!(locale.as_deref(), Some("en"));
}

async fn invalid_locales(backend: Backend) {
    let server = TestServer::start(backend).await;
    for bad in ["<b>", "de_DE", "deutsch!", "", "de\u{202e}"] {
        let err = server
            .customer
            .create_user_with(&CreateUserRequest {
                user_id: "mallory".parse().unwrap(),
                display_name: None,
                locale: Some(bad.into()),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidLocale), "{bad:?}");
    }
    // Nothing was created.
    assert_eq!(
        server
            .customer
            .get_user("mallory")
            .await
            .unwrap_err()
            .code(),
        Some(ErrorCode::UserNotFound)
    );
    user_with_locale(&server, "greta", Some("de")).await;
    let err = server
        .customer
        .update_user(
            "greta",
            &UpdateUserRequest {
                locale: Some("x-<script>".into()),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidLocale));
    assert_eq!(
        server
            .customer
            .get_user("greta")
            .await
            .unwrap()
            .locale
            .as_deref(),
        Some("de"),
        "a refused update changes nothing"
    );
    let err = server
        .customer
        .update_user(
            "nobody",
            &UpdateUserRequest {
                locale: Some("fr".into()),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UserNotFound));
    let (_device, _enrollment) = paired(&server, "greta").await;
    let mut request = ask(AuthenticationKind::Approval);
    request.locale = Some("fr;q=1".into());
    let err = server
        .customer
        .create_authentication("greta", &request)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidLocale));
}

/// A local SMS and voice provider keeping every body it receives.
async fn sms_provider() -> (String, Arc<Mutex<Vec<Value>>>) {
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let kept = Arc::clone(&bodies);
    let app = axum::Router::new().route(
        "/sms",
        axum::routing::post(move |Json(body): Json<Value>| {
            let kept = Arc::clone(&kept);
            async move {
                kept.lock().unwrap().push(body);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sms", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, bodies)
}

async fn french_messages(backend: Backend) {
    let (smtp_url, mails) = smtp_server().await;
    let server = TestServer::start_with(backend, with_smtp(smtp_url)).await;
    let app = server.app.name.clone();
    let (sms_url, bodies) = sms_provider().await;
    admin::set_sms_webhook(
        server.server.database(),
        &server.app.application_id,
        Some(&sms_url),
        true,
    )
    .await
    .unwrap();
    user_with_locale(&server, "amelie", Some("fr-FR")).await;
    let (_device, _enrollment) = paired(&server, "amelie").await;
    server
        .customer
        .set_backup_contacts(
            "amelie",
            &BackupContacts {
                phone: Some("+33612345678".into()),
                email: Some("amelie@example.com".into()),
            },
        )
        .await
        .unwrap();
    let mut request = ask(AuthenticationKind::Approval);
    request.backup_channels = Some(vec![
        BackupChannel::Sms,
        BackupChannel::Voice,
        BackupChannel::Email,
    ]);
    let created = server
        .customer
        .create_authentication("amelie", &request)
        .await
        .unwrap();
    for channel in [BackupChannel::Sms, BackupChannel::Voice] {
        server
            .customer
            .send_backup_code(&created.authentication_id, channel)
            .await
            .unwrap();
    }
    {
        let bodies = bodies.lock().unwrap();
        assert_eq!(bodies.len(), 2);
        for body in bodies.iter() {
            let text = body["message"].as_str().unwrap();
            assert!(
                text.starts_with(&format!("{app} : votre code de connexion est ")),
                "{text}"
            );
            assert!(text.contains(body["code"].as_str().unwrap()), "{text}");
            assert!(text.ends_with("Ne le communiquez jamais."), "{text}");
            assert_eq!(body["locale"], "fr");
        }
    }
    server
        .customer
        .send_backup_code(&created.authentication_id, BackupChannel::Email)
        .await
        .unwrap();
    wait_for_mail(&mails, 1).await;
    let (_, mail) = mails.lock().unwrap()[0].clone();
    assert!(
        mail.contains(&format!("Subject: {app} : code de connexion")),
        "{mail}"
    );
    assert!(mail.contains("votre code de connexion est"), "{mail}");

    // The request's language is the message's: an English request for the same user.
    let mut request = ask(AuthenticationKind::Approval);
    request.backup_channels = Some(vec![BackupChannel::Sms]);
    request.locale = Some("en".into());
    let created = server
        .customer
        .create_authentication("amelie", &request)
        .await
        .unwrap();
    server
        .customer
        .send_backup_code(&created.authentication_id, BackupChannel::Sms)
        .await
        .unwrap();
    let last = bodies.lock().unwrap().last().cloned().unwrap();
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{app}: your sign-in code is ")),
        "{last}"
    );
    assert_eq!(last["locale"], "en");
}

async fn german_device_verification(backend: Backend) {
    let server = TestServer::start(backend).await;
    admin::set_additional_device_policy(
        server.server.database(),
        &server.app.application_id,
        AdditionalDevicePolicy::VerifyWithPrimary,
    )
    .await
    .unwrap();
    user_with_locale(&server, "greta", Some("de")).await;
    let phone = TestDevice::with_config(device_config("Pixel 9")).await;
    phone
        .auth
        .pair(&server.pairing_uri("greta").await, None)
        .await
        .unwrap();
    let tablet = TestDevice::with_config(device_config("Galaxy Tab")).await;
    tablet
        .auth
        .pair(&server.pairing_uri("greta").await, None)
        .await
        .unwrap();
    let request = phone.auth.pending_requests().await.unwrap().remove(0);
    assert!(
        request
            .message
            .ends_with("(neu) hinzufügen als zweites Gerät"),
        "{}",
        request.message
    );
    assert_eq!(request.fields[0].label, "Gerät");
    assert_eq!(request.locale.as_deref(), Some("de"));
}

async fn burst(backend: Backend) {
    let server =
        TestServer::start_with(backend, |c| c.max_pending_authentications_per_user = 20).await;
    let app = server.app.name.clone();
    user_with_locale(&server, "greta", Some("de")).await;
    let (device, enrollment) = paired(&server, "greta").await;
    let languages = [
        Some("fr"),
        None,
        Some("en"),
        Some("de-CH"),
        Some("fr-BE"),
        None,
    ];
    let created = futures::future::join_all(languages.iter().map(|locale| {
        let mut request = ask(AuthenticationKind::Approval);
        request.locale = locale.map(str::to_string);
        let customer = server.customer.clone();
        async move {
            customer
                .create_authentication("greta", &request)
                .await
                .unwrap()
        }
    }))
    .await;
    for (locale, created) in languages.iter().zip(created) {
        let incoming = device
            .pull_request(&enrollment, &created.authentication_id)
            .await;
        let expected = match locale.map(|l| &l[..2]) {
            Some("fr") => format!("Se connecter à {app} ?"),
            Some("en") => format!("Sign in to {app}?"),
            _ => format!("Bei {app} anmelden?"),
        };
        assert_eq!(incoming.message, expected, "{locale:?}");
    }
}
