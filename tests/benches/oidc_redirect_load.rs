//! OIDC redirect MFA under load, over loopback: N simulated phones (the real core, each paired
//! with its own user) each complete redirect sign-ins one after another. One sign-in: the
//! relying party signs an authorization request (`login_hint`, PKCE), the browser follows
//! `/oidc/authorize` (a flow is started and bound to it by a cookie), the flow is driven as the
//! hosted prompt drives it (`authenticate`, a push; the phone approves at once; `poll` is woken
//! with `MFA_COMPLETED`), and the browser follows the resume URL to the redirect URI with a code.
//! The latency measured is authorize to code (4 HTTP calls and the phone's pull and answer); the
//! code exchange is not timed.
//!
//! Prints sign-ins per second and p50/p99 latency at each level of concurrent phones, on SQLite
//! and (with `DATABASE_URL=postgres://…`) PostgreSQL.
//!
//! `cargo bench -p tessera-tests --bench oidc_redirect_load` (`SIGN_INS_PER_DEVICE=N`, default
//! 30; `LOAD_LEVELS=1,16,64`); `cargo test -p tessera-tests --bench oidc_redirect_load` runs a
//! small smoke version.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tessera_examples::relying_party::{ClientCredentials, RelyingParty, RpSigningKey};
use tessera_protocol::ciba::{ClientAuthMethod, DeliveryMode, RegisterCibaClient};
use tessera_protocol::ids::EnrollmentId;
use tessera_tests::load::{Latencies, backends, plan, runtime};
use tessera_tests::{Backend, TestDevice, TestServer};

const REDIRECT: &str = "https://rp.example/callback";

struct RelyingPartyWithKey {
    rp: RelyingParty,
    key: RpSigningKey,
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .expect("a redirect")
        .to_str()
        .expect("text")
        .to_string()
}

/// One sign-in, authorize to code.
async fn one_sign_in(
    server: &TestServer,
    client: &RelyingPartyWithKey,
    device: &TestDevice,
    user: &str,
    enrollment: &EnrollmentId,
) {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("browser");
    let start = client
        .rp
        .authorization_url(&client.key, REDIRECT, user, json!({}))
        .expect("authorization URL");
    let first = browser.get(&start.url).send().await.expect("authorize");
    assert_eq!(first.status().as_u16(), 303);
    let cookie = first
        .headers()
        .get("set-cookie")
        .expect("a cookie")
        .to_str()
        .expect("text")
        .split(';')
        .next()
        .expect("a pair")
        .to_string();
    let prompt = location(&first);
    let (page, token) = prompt.split_once('#').expect("the prompt's token");
    let shown: serde_json::Value = browser
        .get(format!(
            "{}/v1/flow-browser",
            page.trim_end_matches("/prompt")
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("the prompt's flow")
        .json()
        .await
        .expect("JSON");
    let flow_id = shown["flow_id"].as_str().expect("flow id");
    let return_url = shown["return_url"]
        .as_str()
        .expect("return URL")
        .to_string();
    tessera_tests::push_flow_steps(&server.customer, flow_id, device, enrollment).await;
    let back = browser
        .get(&return_url)
        .header("cookie", cookie)
        .send()
        .await
        .expect("resume");
    assert_eq!(back.status().as_u16(), 303);
    assert!(location(&back).contains("code="));
}

async fn run(backend: Backend, label: &str, devices: usize, sign_ins_per_device: usize) {
    let server = Arc::new(
        TestServer::start_isolated_with(backend, |c| {
            c.max_connections = tessera_tests::load::pool_size();
            c.max_pending_authentications_per_user = 100;
        })
        .await,
    );
    let key = RpSigningKey::generate();
    let registered = server
        .customer
        .register_ciba_client(&RegisterCibaClient {
            client_name: "Load Portal".into(),
            backchannel_token_delivery_mode: DeliveryMode::Poll,
            backchannel_client_notification_endpoint: None,
            token_endpoint_auth_method: ClientAuthMethod::ClientSecretBasic,
            jwks: Some(key.jwks()),
            backchannel_authentication_request_signing_alg: None,
            backchannel_user_code_parameter: false,
            redirect_uris: vec![REDIRECT.into()],
            grant_types: Vec::new(),
        })
        .await
        .expect("register");
    let rp = RelyingParty::discover(
        &server.base_url,
        &registered.client_id,
        ClientCredentials::SecretBasic(registered.client_secret.expect("secret")),
    )
    .await
    .expect("discover");
    let client = Arc::new(RelyingPartyWithKey { rp, key });
    let mut pool = Vec::new();
    for i in 0..devices {
        let user = format!("redirect-load-{i}");
        server.user(&user).await;
        let device = TestDevice::new().await;
        let enrollment = device
            .auth
            .pair(&server.pairing_uri(&user).await, None)
            .await
            .expect("pair")
            .enrollment_id;
        pool.push((user, device, enrollment));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (user, device, enrollment) in pool {
        let server = Arc::clone(&server);
        let client = Arc::clone(&client);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(sign_ins_per_device);
            for _ in 0..sign_ins_per_device {
                let t0 = Instant::now();
                one_sign_in(&server, &client, &device, &user, &enrollment).await;
                latencies.push(t0.elapsed());
            }
            latencies
        }));
    }
    let all = Latencies::gather(started, tasks).await;
    println!(
        "{label:<9} {devices:>3} phones  {:>6} sign-ins  {:>7.1} sign-ins/s  authorize→code p50 {}  p99 {}",
        all.count(),
        all.per_second(),
        all.p50(),
        all.p99(),
    );
    drop(client);
    if let Ok(server) = Arc::try_unwrap(server) {
        server.server.shutdown().await;
    }
}

fn main() {
    let plan = plan("SIGN_INS_PER_DEVICE", 30, 2);
    let per_device = plan.per_client;
    runtime().block_on(async {
        println!("OIDC redirect MFA sign-ins over loopback ({per_device} per phone)");
        for (backend, label) in backends() {
            for &n in plan.levels {
                run(backend.clone(), label, n, per_device).await;
            }
        }
    });
}
