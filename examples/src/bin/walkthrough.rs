//! The Tessera walkthrough: every flow, end to end, in one process.
//!
//! It starts the real server on a free loopback port with an embedded SQLite database in a
//! temporary folder, plays the customer's backend against the customer API over HTTP, and
//! drives a simulated device through the real device core over HTTP. Run it with
//! `cargo run -p tessera-examples --bin walkthrough`.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tessera_core::{
    Authenticator, AuthenticatorConfig, FileStorage, KeyStore, SecureStorage, SoftwareKeyStore,
};
use tessera_examples::customer::CustomerApi;
use tessera_examples::notification_receiver::NotificationReceiver;
use tessera_examples::relying_party::{ClientCredentials, RelyingParty};
use tessera_protocol::api::{CreateAuthenticationRequest, CreateQrSession};
use tessera_protocol::authentication::DeviceLocation;
use tessera_protocol::authentication::{AuthenticationKind, DisplayField};
use tessera_protocol::ciba::{ClientAuthMethod, DeliveryMode, RegisterCibaClient};
use tessera_protocol::flows::{CreateFlowRequest, FlowAction};
use tessera_protocol::pairing::{DeviceInfo, DeviceSignals, PushRegistration};
use tessera_server::store::applications::AdditionalDevicePolicy;
use tessera_server::{IpTable, Server, ServerConfig, admin};

/// Redirect MFA: the walkthrough plays the relying party (a web portal whose own first factor
/// authenticated alice) and her browser. The portal signs an authorization request with
/// `login_hint`; the browser follows it to the prompt (bound by a cookie); the flow is approved
/// on alice's phone (what the hosted prompt drives); the browser follows the resume URL back to
/// the portal with a code; the portal exchanges it and reads the ID token.
async fn redirect_sign_in(base: &str, backend: &CustomerApi, device: &Authenticator) -> Result<()> {
    const REDIRECT: &str = "https://portal.example/callback";
    let key = tessera_examples::relying_party::RpSigningKey::generate();
    let registered = backend
        .register_ciba_client(&RegisterCibaClient {
            client_name: "Example Portal".into(),
            backchannel_token_delivery_mode: DeliveryMode::Poll,
            backchannel_client_notification_endpoint: None,
            token_endpoint_auth_method: ClientAuthMethod::ClientSecretBasic,
            jwks: Some(key.jwks()),
            backchannel_authentication_request_signing_alg: None,
            backchannel_user_code_parameter: false,
            redirect_uris: vec![REDIRECT.into()],
            grant_types: Vec::new(),
        })
        .await?;
    let portal = RelyingParty::discover(
        base,
        &registered.client_id,
        ClientCredentials::SecretBasic(registered.client_secret.context("a client secret")?),
    )
    .await?;
    let start = portal.authorization_url(
        &key,
        REDIRECT,
        "alice",
        serde_json::json!({"scope": "openid profile", "ui_locales": "en"}),
    )?;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let first = browser.get(&start.url).send().await?;
    let header = |r: &reqwest::Response, name: &str| -> Result<String> {
        Ok(r.headers()
            .get(name)
            .with_context(|| format!("no {name}"))?
            .to_str()?
            .to_string())
    };
    let prompt = header(&first, "location")?;
    let cookie = header(&first, "set-cookie")?;
    let cookie = cookie.split(';').next().unwrap_or_default().to_string();
    say(format!(
        "browser: {} → prompt, bound with {}=…",
        first.status(),
        cookie.split('=').next().unwrap_or_default()
    ));
    // The hosted prompt runs the flow with the browser token from its URL's fragment; here the
    // walkthrough calls the page's API as the page does.
    let (page, token) = prompt.split_once('#').context("the prompt's token")?;
    let api = format!(
        "{}/v1/flow-browser",
        page.strip_suffix("/prompt").context("the prompt page")?
    );
    let shown: serde_json::Value = browser
        .get(&api)
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let return_url = shown["return_url"]
        .as_str()
        .context("the prompt's return URL")?
        .to_string();
    let waiting: serde_json::Value = browser
        .post(&api)
        .bearer_auth(token)
        .json(&serde_json::json!({"action": "authenticate"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let number = waiting["number_to_show"]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok());
    say(format!(
        "prompt ({}): {}{}",
        shown["lang"].as_str().unwrap_or("?"),
        waiting["status"].as_str().unwrap_or("?"),
        number.map_or_else(String::new, |n| format!(", showing the number {n}"))
    ));
    let request = device
        .pending_requests()
        .await?
        .into_iter()
        .filter(|r| {
            number.is_none_or(|n| r.number_choices.as_ref().is_some_and(|c| c.contains(&n)))
        })
        .max_by_key(|r| r.expires_at)
        .context("the push on alice's phone")?;
    device.approve(&request, vec!["fpt".into()], number).await?;
    let done: serde_json::Value = browser
        .get(format!(
            "{api}?wait=10&seen={}",
            waiting["version"].as_i64().unwrap_or_default()
        ))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    say(format!(
        "phone: alice approves; the page sees {}",
        done["status"].as_str().unwrap_or("?")
    ));
    let back = browser
        .get(&return_url)
        .header("cookie", &cookie)
        .send()
        .await?;
    let location = header(&back, "location")?;
    let query: std::collections::HashMap<String, String> = url::Url::parse(&location)?
        .query_pairs()
        .into_owned()
        .collect();
    if query.get("state") != Some(&start.state) {
        bail!("the state did not come back");
    }
    let code = query.get("code").context("a code")?;
    say(format!(
        "browser: back at the portal with a code (iss {})",
        query.get("iss").map(String::as_str).unwrap_or("?")
    ));
    let tokens = portal
        .exchange_code(code, REDIRECT, &start.code_verifier)
        .await?;
    let claims = portal.verify_id_token(&tokens.id_token).await?;
    if claims["nonce"] != serde_json::json!(start.nonce) {
        bail!("the nonce did not come back");
    }
    say(format!(
        "portal: ID token for {} (acr {}, amr {}), auth_result {}, factor {}",
        claims["sub"],
        claims["acr"],
        claims["amr"],
        claims["auth_result"],
        claims["auth_context"]["factor"]
    ));
    Ok(())
}

fn step(n: u32, title: &str) {
    println!("\n── {n}. {title}");
}

fn say(line: impl AsRef<str>) {
    println!("   {}", line.as_ref());
}

async fn open_device(dir: &std::path::Path) -> Result<Authenticator> {
    open_named_device(dir, "Pixel 8 (simulated)", "Alice's phone").await
}

async fn open_named_device(
    dir: &std::path::Path,
    model: &str,
    name: &str,
) -> Result<Authenticator> {
    let key_store: Arc<dyn KeyStore> = Arc::new(SoftwareKeyStore::open(dir.join("keys"))?);
    let storage: Arc<dyn SecureStorage> = Arc::new(FileStorage::new(dir.join("state"))?);
    let config = AuthenticatorConfig {
        device: DeviceInfo {
            model: model.into(),
            os_name: "Android".into(),
            os_version: "15".into(),
            app_version: "2.3.0".into(),
            sdk_version: env!("CARGO_PKG_VERSION").into(),
            name: Some(name.into()),
        },
        signals: DeviceSignals {
            rooted: Some(false),
            screen_lock: Some(true),
            mdm: Some(false),
            emulator: None,
        },
        push: PushRegistration::None,
        ..AuthenticatorConfig::default()
    };
    Ok(Authenticator::open(config, key_store, storage).await?)
}

/// The defaults, with CIBA tuned for a local demonstration: a one-second polling interval and
/// notifications to the relying party's endpoint on loopback.
fn walkthrough_config() -> ServerConfig {
    ServerConfig {
        ciba_poll_interval: 1,
        ciba_allow_loopback_notifications: true,
        ..ServerConfig::default()
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    println!("Tessera walkthrough");
    let workdir = tempfile::tempdir().context("temporary folder")?;
    let database_url = format!("sqlite://{}", workdir.path().join("tessera.db").display());

    step(1, "Start the server (embedded SQLite, free loopback port)");
    // Country and IP reputation of accessing devices come from a local table of address blocks.
    let ip_table = IpTable::from_csv("203.0.113.0/24,DE,Low\n198.51.100.0/24,NL,High\n")?;
    let server = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        database_url: database_url.clone(),
        accessing_ip_table: ip_table.clone(),
        // One push attempt: the OTP-fallback step shows an undelivered push without waiting
        // for retries.
        push_attempts: 1,
        ..walkthrough_config()
    })
    .await?;
    let base = format!("http://{}", server.local_addr());
    say(format!("listening on {base}"));
    say(format!("database   {database_url}"));

    step(2, "Register an application (admin)");
    let app = server.create_application("Example Bank").await?;
    say(format!(
        "application {} \"{}\"",
        app.application_id, app.name
    ));
    say("API key issued (shown once to the administrator; the server stores only its digest)");
    let backend = CustomerApi::new(&base, &app.api_key);

    step(3, "The customer backend creates two users");
    for (id, name) in [("alice", "Alice Martin"), ("bob", "Bob Keller")] {
        let user = backend.create_user(id, Some(name)).await?;
        say(format!("user {:?} ({})", user.user_id.as_str(), name));
    }

    step(4, "Direct pairing: the backend starts a pairing for alice");
    let pairing = backend.start_pairing("alice", None).await?;
    say(format!("pairing code  {}", pairing.pairing_code));
    say(format!("pairing URI   {}", pairing.pairing_uri));
    say(format!("expires at    {} (unix time)", pairing.expires_at));

    step(
        5,
        "The device scans the QR code and pairs through the device core",
    );
    let device_dir = workdir.path().join("device");
    let device = open_device(&device_dir).await?;
    say(format!("device id     {}", device.device_id()));
    let alice = device.pair(&pairing.pairing_uri, None).await?;
    say(format!("enrollment    {}", alice.enrollment_id));
    say(format!(
        "paired with   {} as {:?}; the server's signed reply checked and its keys pinned",
        alice.application.name,
        alice.user_id.as_str()
    ));

    step(6, "A second try with the same code is refused (single use)");
    let again = device.pair(&pairing.pairing_uri, None).await;
    match again {
        Err(e) => say(format!("refused: [{}] {e}", e.code())),
        Ok(_) => bail!("a used pairing code was accepted"),
    }

    step(7, "Relay pairing for bob through the customer's backend");
    let mobile_payload = device.create_mobile_payload(&base).await?;
    say(format!(
        "device → app → backend: mobile payload ({} bytes, signed by the device)",
        mobile_payload.len()
    ));
    let relayed = backend.relay_pairing("bob", &mobile_payload).await?;
    say(format!(
        "backend → server → backend: server payload ({} bytes, signed by the server)",
        relayed.server_payload.len()
    ));
    let bob = device
        .complete_relay_pairing(&relayed.server_payload)
        .await?;
    say(format!(
        "enrollment    {} for {:?}",
        bob.enrollment_id,
        bob.user_id.as_str()
    ));

    step(8, "One device, two users");
    for e in device.enrollments().await {
        say(format!(
            "{}  {:<6} {}",
            e.enrollment_id,
            e.user_id.as_str(),
            e.application.name
        ));
    }
    for user in ["alice", "bob"] {
        let devices = backend.list_devices(user).await?;
        for d in devices.devices {
            say(format!(
                "server sees {user}: {} ({} {}, primary: {}, push: {})",
                d.device.model, d.device.os_name, d.device.os_version, d.primary, d.push_provider
            ));
        }
    }

    step(
        9,
        "A device-signed call: is alice's enrollment still active?",
    );
    let status = device.enrollment_status(&alice.enrollment_id).await?;
    say(format!("{} is {}", status.enrollment_id, status.status));

    step(
        10,
        "Push approval with number matching: alice signs in on the web",
    );
    let mut ask = CreateAuthenticationRequest {
        kind: AuthenticationKind::Approval,
        enrollment_id: None,
        message: None,
        fields: vec![],
        hidden_fields: vec![],
        accessing_ip: Some("203.0.113.7".into()),
        accessing_location: Some("Berlin, DE".into()),
        application_icon_url: None,
        expires_in: None,
        number_matching: Some(tessera_protocol::authentication::NumberMatching::Choice),
        require_user_verification: false,
        ..CreateAuthenticationRequest::new(AuthenticationKind::Approval)
    };
    let created = backend.create_authentication("alice", &ask).await?;
    let shown = created.number_to_show.context("number matching")?;
    say(format!(
        "web page shows the number {shown}; request {}",
        created.authentication_id
    ));
    let request = device
        .pending_requests()
        .await?
        .into_iter()
        .next()
        .context("a pending request")?;
    say(format!(
        "device shows: {} (from {} in {}), choices {:?}",
        request.message,
        request.context.ip.as_deref().unwrap_or("?"),
        request.context.location.as_deref().unwrap_or("?"),
        request.number_choices.clone().unwrap_or_default()
    ));
    // The app reports where the phone is; the answer carries it, signed.
    device.set_location(Some(DeviceLocation {
        latitude: 52.5200,
        longitude: 13.4050,
        altitude: Some(34.0),
        accuracy: Some(15.0),
    }))?;
    device.approve(&request, vec![], Some(shown)).await?;
    let status = backend
        .authentication(&created.authentication_id, 5)
        .await?;
    say(format!(
        "relying party sees: {} ({})",
        status.state.as_str(),
        status.attributes["pingid.authentication.type"]
    ));
    let p = "pingid.authentication.";
    for key in [
        "accessing.device.ip",
        "accessing.device.country",
        "accessing.device.ip.reputation",
        "authenticating.device.model",
        "authenticating.device.latitude",
        "authenticating.device.longitude",
        "authenticating.device.is.rooted",
    ] {
        say(format!(
            "    {p}{key} = {}",
            status.attributes[&format!("{p}{key}")]
        ));
    }

    step(
        11,
        "Transaction approval with dynamic parameters, with biometrics",
    );
    let field = |label: &str, value: &str| DisplayField {
        label: label.into(),
        value: value.into(),
    };
    ask.kind = AuthenticationKind::Transaction;
    ask.number_matching = None;
    ask.require_user_verification = true;
    ask.message = Some("Pay 120.00 EUR to ACME GmbH?".into());
    ask.fields = vec![
        field("Amount", "120.00 EUR"),
        field("Payee", "ACME GmbH"),
        field("IBAN", "DE89 3704 0044 0532 0130 00"),
    ];
    ask.hidden_fields = vec![field("Reference", "order-4711")];
    let created = backend.create_authentication("alice", &ask).await?;
    let request = device
        .pending_requests()
        .await?
        .into_iter()
        .next()
        .context("a pending request")?;
    say(format!("device shows: {}", request.message));
    for f in &request.fields {
        say(format!("    {:<8} {}", f.label, f.value));
    }
    device.approve(&request, vec!["fpt".into()], None).await?;
    let status = backend
        .authentication(&created.authentication_id, 5)
        .await?;
    say(format!(
        "relying party sees: {} ({}); the device signed the digest of exactly these fields",
        status.state.as_str(),
        status.attributes["pingid.authentication.type"]
    ));

    step(
        12,
        "Silent verification: the server proves possession, the user sees nothing",
    );
    ask.kind = AuthenticationKind::Silent;
    ask.require_user_verification = false;
    ask.message = None;
    ask.fields.clear();
    ask.hidden_fields.clear();
    let created = backend.create_authentication("alice", &ask).await?;
    // The push payload a provider would deliver: the signed request itself.
    let outcome = device.handle_push(&created.signed_request).await?;
    say(format!(
        "handle_push answered it: {}",
        matches!(
            outcome,
            tessera_core::PushOutcome::SilentVerificationAnswered { .. }
        )
    ));
    let status = backend
        .authentication(&created.authentication_id, 5)
        .await?;
    say(format!(
        "relying party sees: {} ({})",
        status.state.as_str(),
        status.attributes["pingid.authentication.type"]
    ));

    step(
        13,
        "A sign-in alice did not start: denied and reported as fraud",
    );
    ask.kind = AuthenticationKind::Approval;
    let created = backend.create_authentication("alice", &ask).await?;
    let request = device
        .pending_requests()
        .await?
        .into_iter()
        .next()
        .context("a pending request")?;
    device.deny(&request, true).await?;
    let status = backend
        .authentication(&created.authentication_id, 5)
        .await?;
    say(format!(
        "relying party sees: {} ({:?})",
        status.state.as_str(),
        status.decision
    ));

    step(
        14,
        "A second device for alice, verified by her primary device",
    );
    admin::set_additional_device_policy(
        server.database(),
        &app.application_id,
        AdditionalDevicePolicy::VerifyWithPrimary,
    )
    .await?;
    say("policy: verify new devices with the primary device");
    let tablet_dir = workdir.path().join("tablet");
    let tablet =
        open_named_device(&tablet_dir, "Galaxy Tab S9 (simulated)", "Alice's tablet").await?;
    let pairing = backend.start_pairing("alice", None).await?;
    let pending = tablet.pair(&pairing.pairing_uri, None).await?;
    say(format!("tablet paired: {}", pending.status));
    let request = device
        .pending_requests()
        .await?
        .into_iter()
        .next()
        .context("the verification request on the phone")?;
    say(format!("phone shows: {}", request.message));
    for f in &request.fields {
        say(format!("    {:<8} {}", f.label, f.value));
    }
    device.approve(&request, vec!["fpt".into()], None).await?;
    let verified = tablet
        .wait_for_verification(&pending.enrollment_id, std::time::Duration::from_secs(10))
        .await?;
    say(format!("tablet is now {verified}"));
    let devices = backend.list_devices("alice").await?.devices;
    for d in &devices {
        say(format!(
            "    {} {} {}{}",
            d.enrollment_id,
            d.device.model,
            d.status,
            if d.primary { " (primary)" } else { "" }
        ));
    }

    step(
        15,
        "QR login: a web page shows a code; the phone (two users) scans it, alice approves",
    );
    let session = backend
        .create_qr_session(&CreateQrSession {
            accessing_ip: Some("198.51.100.23".into()),
            accessing_location: Some("Amsterdam, NL".into()),
            ..CreateQrSession::default()
        })
        .await?;
    say(format!(
        "login page    {}",
        session.login_page_url.split('#').next().unwrap_or("")
    ));
    let code = qrcode::QrCode::new(session.qr_uri.as_bytes())?;
    let drawn = code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build();
    for line in drawn.lines() {
        say(line);
    }
    let qr = device.authenticate_with_qr(&session.qr_uri).await?;
    say(format!(
        "phone shows: sign in to {} from {} ({})? users on this phone: {}",
        qr.application.name,
        qr.context.ip.as_deref().unwrap_or("?"),
        qr.context.location.as_deref().unwrap_or("?"),
        qr.users
            .iter()
            .map(|u| u.user_id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let alice_user = qr
        .users
        .iter()
        .find(|u| u.user_id.as_str() == "alice")
        .context("alice among the phone's users")?
        .user_id
        .clone();
    device
        .approve_qr(&qr, &alice_user, vec!["face".into()])
        .await?;
    let status = backend.qr_session(&session.session_id, 5).await?;
    say(format!(
        "web app sees: {} by {} ({}; accessing country {})",
        status.state,
        status.user_id.as_ref().map(|u| u.as_str()).unwrap_or("?"),
        status.attributes["pingid.authentication.type"],
        status.attributes["pingid.authentication.accessing.device.country"]
    ));

    step(
        16,
        "Offline passcode: the phone shows alice's code, the web app checks it (once)",
    );
    let account = device
        .otp_accounts()
        .await
        .into_iter()
        .find(|a| {
            a.account_name == "alice"
                && matches!(a.source, tessera_core::OtpAccountSource::Enrollment { .. })
        })
        .context("alice's provisioned OTP account")?;
    let code = device.one_time_passcode(&account.id).await?;
    say(format!(
        "phone shows {} {} (valid {} s more)",
        &code.code[..3],
        &code.code[3..],
        code.valid_for.map(|d| d.as_secs()).unwrap_or(0)
    ));
    let verified = backend.verify_otp("alice", &code.code).await?;
    say(format!(
        "web app: accepted ({})",
        verified.attributes["pingid.authentication.type"]
    ));
    match backend.verify_otp("alice", &code.code).await {
        Ok(_) => bail!("a passcode was accepted twice"),
        Err(e) => say(format!("the same code again: refused ({e})")),
    }

    step(
        17,
        "CIBA, poll mode: a call centre asks alice to sign in through the backchannel",
    );
    let registered = backend
        .register_ciba_client(&RegisterCibaClient::new(
            "Example Bank Call Centre",
            DeliveryMode::Poll,
            ClientAuthMethod::ClientSecretBasic,
        ))
        .await?;
    let call_centre = RelyingParty::discover(
        &base,
        &registered.client_id,
        ClientCredentials::SecretBasic(registered.client_secret.context("a client secret")?),
    )
    .await?;
    say(format!(
        "discovered {} (token delivery: {})",
        call_centre.provider.backchannel_authentication_endpoint,
        call_centre.provider.document["backchannel_token_delivery_modes_supported"]
    ));
    let ack = call_centre
        .backchannel(&[
            ("scope", "openid profile"),
            ("login_hint", "alice"),
            ("binding_message", "Call 4711: confirm it is you"),
        ])
        .await?;
    say(format!(
        "acknowledged: auth_req_id {}…, expires in {} s, poll every {} s",
        &ack.auth_req_id[..8],
        ack.expires_in,
        ack.interval
    ));
    let request = device
        .pending_requests()
        .await?
        .into_iter()
        .find(|r| r.kind == AuthenticationKind::Ciba)
        .context("the CIBA request on alice's phone")?;
    let details = request.ciba.clone().context("CIBA details")?;
    say(format!(
        "phone: {} asks \"{}\" (scopes: {}); alice approves with her fingerprint",
        details.client_name,
        request.message,
        details.scopes.join(" ")
    ));
    device.approve(&request, vec!["fpt".into()], None).await?;
    let tokens = call_centre.poll(&ack).await?;
    let claims = call_centre.verify_id_token(&tokens.id_token).await?;
    say(format!(
        "call centre polled: ID token for {} (acr {}, amr {})",
        claims["sub"], claims["acr"], claims["amr"]
    ));
    match call_centre.token(&ack.auth_req_id).await {
        Ok(_) => bail!("an auth_req_id was exchanged twice"),
        Err(e) => say(format!(
            "the same auth_req_id again: {}",
            e.error().unwrap_or("?")
        )),
    }

    step(
        18,
        "CIBA, ping mode: the server notifies the relying party, which then fetches the tokens",
    );
    let receiver = NotificationReceiver::start().await?;
    let registered = backend
        .register_ciba_client(&RegisterCibaClient {
            client_name: "Example Bank Branch".into(),
            backchannel_token_delivery_mode: DeliveryMode::Ping,
            backchannel_client_notification_endpoint: Some(receiver.url("/ciba/notify")),
            token_endpoint_auth_method: ClientAuthMethod::ClientSecretPost,
            jwks: None,
            backchannel_authentication_request_signing_alg: None,
            backchannel_user_code_parameter: false,
            redirect_uris: Vec::new(),
            grant_types: Vec::new(),
        })
        .await?;
    let branch = RelyingParty::discover(
        &base,
        &registered.client_id,
        ClientCredentials::SecretPost(registered.client_secret.context("a client secret")?),
    )
    .await?;
    let ack = branch
        .backchannel(&[
            ("scope", "openid"),
            ("login_hint", "alice"),
            ("binding_message", "Counter 3"),
            ("client_notification_token", "branch-notify-7f3a"),
        ])
        .await?;
    let request = device
        .pending_requests()
        .await?
        .into_iter()
        .find(|r| r.kind == AuthenticationKind::Ciba)
        .context("the CIBA request on alice's phone")?;
    device.approve(&request, vec!["face".into()], None).await?;
    let ping = receiver
        .next(std::time::Duration::from_secs(10))
        .await
        .context("no ping arrived")?;
    say(format!(
        "ping at {}: {} with {}",
        ping.path,
        ping.authorization.as_deref().unwrap_or("no token"),
        ping.body
    ));
    let tokens = branch.token(&ack.auth_req_id).await?;
    let claims = branch.verify_id_token(&tokens.id_token).await?;
    say(format!(
        "branch fetched its tokens: ID token for {} (amr {})",
        claims["sub"], claims["amr"]
    ));

    step(
        19,
        "OTP fallback: bob's push cannot be delivered, so the web app takes his passcode",
    );
    // The application's push webhook is unreachable: the push fails, bob has no other device,
    // and the authentication (created with OTP fallback) now accepts a passcode.
    admin::set_push_webhook(
        server.database(),
        &app.application_id,
        Some("http://127.0.0.1:1/push"),
    )
    .await?;
    let fallback = backend
        .create_authentication(
            "bob",
            &CreateAuthenticationRequest {
                otp_fallback: Some(true),
                otp_fallback_after: Some(120),
                ..CreateAuthenticationRequest::new(AuthenticationKind::Approval)
            },
        )
        .await?;
    let mut status = fallback.clone();
    for _ in 0..100 {
        status = backend
            .authentication(&fallback.authentication_id, 0)
            .await?;
        if status.otp_accepted {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if !status.otp_accepted {
        bail!("OTP fallback did not come into force");
    }
    say(format!(
        "push undelivered; the status says a passcode is accepted (otp_reason {})",
        serde_json::to_string(&status.otp_reason)?
    ));
    let bobs = device
        .otp_accounts()
        .await
        .into_iter()
        .find(|a| {
            matches!(&a.source, tessera_core::OtpAccountSource::Enrollment { enrollment_id } if *enrollment_id == bob.enrollment_id)
        })
        .context("bob's provisioned OTP account")?;
    let code = device.one_time_passcode(&bobs.id).await?;
    let done = backend
        .answer_with_otp(&fallback.authentication_id, &code.code)
        .await?;
    say(format!(
        "bob types {}: authentication {} ({})",
        code.code,
        done.state.as_str(),
        done.attributes["pingid.authentication.type"]
    ));
    admin::set_push_webhook(server.database(), &app.application_id, None).await?;

    step(
        20,
        "An authentication flow: the backend steps alice through /v1/flows (push, then poll)",
    );
    let flow = backend
        .create_flow(&CreateFlowRequest {
            number_matching: Some(tessera_protocol::authentication::NumberMatching::Choice),
            ..CreateFlowRequest::new("alice".parse()?)
        })
        .await?;
    say(format!("flow {} is {}", flow.id, flow.status.as_str()));
    let plain = FlowAction::Authenticate {
        mobile_payload: None,
        authorization_payload: None,
    };
    let waiting = backend.flow_action(flow.id.as_str(), &plain).await?;
    let push = waiting.push.clone().context("the flow's push")?;
    let actions: Vec<&str> = waiting.actions.iter().map(|a| a.as_str()).collect();
    say(format!(
        "{}: the web page shows {}; actions now: {}",
        waiting.status.as_str(),
        push.number_to_show
            .map(|n| n.to_string())
            .unwrap_or_else(|| "no number".into()),
        actions.join(", ")
    ));
    let request = device
        .pending_requests()
        .await?
        .into_iter()
        .find(|r| r.request_id == push.authentication_id)
        .context("the flow's push on the device")?;
    device
        .approve(&request, vec![], push.number_to_show)
        .await?;
    let done = backend
        .flow_action(flow.id.as_str(), &FlowAction::Poll { wait: Some(10) })
        .await?;
    say(format!(
        "{} ({})",
        done.status.as_str(),
        serde_json::to_string(&done.result.as_ref().map(|r| r.status))?
    ));

    step(
        21,
        "Seamless device authorization: alice's trusted app signs the next flow, no prompt",
    );
    let flow = backend
        .create_flow(&CreateFlowRequest::new("alice".parse()?))
        .await?;
    let signed = device
        .create_authorization_payload(&alice.enrollment_id, &flow.authorization_nonce)
        .await?;
    let done = backend
        .flow_action(
            flow.id.as_str(),
            &FlowAction::Authenticate {
                mobile_payload: None,
                authorization_payload: Some(signed),
            },
        )
        .await?;
    say(format!(
        "{} with {}; nothing was pushed",
        done.status.as_str(),
        done.result
            .as_ref()
            .map(|r| r.attributes["pingid.authentication.type"].to_string())
            .unwrap_or_default()
    ));

    step(
        22,
        "Redirect MFA (OIDC): a web portal sends alice's browser to /oidc/authorize",
    );
    redirect_sign_in(&base, &backend, &device).await?;

    step(
        23,
        "An authentication policy: the office network signs in without a push",
    );
    let policy: tessera_protocol::policy::PolicyDocument =
        serde_json::from_value(serde_json::json!({
            "networks": {"office": ["203.0.113.0/24"]},
            "rules": [
                {"name": "office", "when": {"networks": ["office"]},
                 "then": {"action": "approve"}},
                {"name": "high risk", "when": {"ip_reputation": ["High"]},
                 "then": {"action": "deny", "reason": "Sign-ins from this network are blocked"}}
            ],
            "default": {"action": "require", "methods": ["mobile_push"]}
        }))?;
    let saved = backend.set_policy(&policy).await?;
    say(format!(
        "policy version {} saved (docs/policy.md)",
        saved.version
    ));
    let from = |ip: &str| CreateAuthenticationRequest {
        accessing_ip: Some(ip.into()),
        ..CreateAuthenticationRequest::new(AuthenticationKind::Approval)
    };
    let office = backend
        .create_authentication("alice", &from("203.0.113.20"))
        .await?;
    let decided = office.policy.clone().context("a policy decision")?;
    say(format!(
        "from the office: {} at once, type {}, by rule \"{}\" of version {} (no push sent)",
        office.state.as_str(),
        office.attributes["pingid.authentication.type"],
        decided.rule,
        decided.version
    ));

    step(
        24,
        "A sign-in from a high-risk address is denied by the policy",
    );
    let risky = backend
        .create_authentication("alice", &from("198.51.100.7"))
        .await?;
    let decided = risky.policy.clone().context("a policy decision")?;
    say(format!(
        "from 198.51.100.7 (reputation High): {} ({}), rule \"{}\": {}",
        risky.state.as_str(),
        risky.failure_reason.as_deref().unwrap_or_default(),
        decided.rule,
        decided.reason
    ));

    step(
        25,
        "The app restarts: state is reloaded from encrypted storage",
    );
    drop(device);
    let device = open_device(&device_dir).await?;
    say(format!(
        "{} enrollments after restart",
        device.enrollments().await.len()
    ));

    step(26, "The server restarts: enrollments survive");
    let addr = server.local_addr();
    server.shutdown().await;
    let server = Server::start(ServerConfig {
        listen: addr,
        database_url: database_url.clone(),
        accessing_ip_table: ip_table,
        ..walkthrough_config()
    })
    .await?;
    let status = device.enrollment_status(&bob.enrollment_id).await?;
    say(format!(
        "{} is still {}",
        status.enrollment_id, status.status
    ));

    step(27, "Bob unpairs from the device");
    device.remove_enrollment(&bob.enrollment_id).await?;
    let left = backend.list_devices("bob").await?.devices.len();
    say(format!(
        "bob has {left} device(s) on the server; the device keeps {} enrollment(s)",
        device.enrollments().await.len()
    ));

    server.shutdown().await;
    println!(
        "\nDone: direct and relay pairing, two users on one device, approvals with number matching, \
         a transaction, silent verification, a fraud report, a new device verified by the primary \
         device, a QR login, an offline passcode, OTP fallback after an undelivered push, CIBA in \
         poll and ping modes, an authentication flow and a seamless device authorization, \
         a redirect MFA sign-in, a policy that approves office sign-ins and denies high-risk ones, \
         restarts on both sides."
    );
    Ok(())
}
