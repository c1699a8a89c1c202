//! The `tessera-device` command line against a real server started in-process.

use std::process::Command;

use tessera_examples::customer::CustomerApi;
use tessera_server::{Server, ServerConfig};

fn device(state: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera-device"))
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .expect("run tessera-device")
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_list_status_relay_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.path().join("t.db").display()),
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let base = format!("http://{}", server.local_addr());
    let app = server.create_application("CLI Bank").await.unwrap();
    let api = CustomerApi::new(&base, &app.api_key);
    api.create_user("alice", None).await.unwrap();
    api.create_user("bob", None).await.unwrap();
    let state = dir.path().join("device");

    // Pair with a URI, and with a typed code plus --server.
    let uri = api.start_pairing("alice", None).await.unwrap().pairing_uri;
    let paired = json(&device(&state, &["--json", "pair", &uri]));
    assert_eq!(paired["user_id"], "alice");
    let enrollment = paired["enrollment_id"].as_str().unwrap().to_string();
    let code = api.start_pairing("bob", None).await.unwrap().pairing_code;
    let out = device(&state, &["pair", &code, "--server", &base]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("paired with CLI Bank as \"bob\""));

    let list = json(&device(&state, &["--json", "list"]));
    assert_eq!(list["enrollments"].as_array().unwrap().len(), 2);
    let status = json(&device(&state, &["--json", "status", &enrollment]));
    assert_eq!(status["status"], "active");

    // Relay: mobile payload out, server payload in.
    api.create_user("carol", None).await.unwrap();
    let mobile = json(&device(
        &state,
        &["--json", "mobile-payload", "--server", &base],
    ));
    let relayed = api
        .relay_pairing("carol", mobile["mobile_payload"].as_str().unwrap())
        .await
        .unwrap();
    let done = json(&device(
        &state,
        &["--json", "complete-relay", &relayed.server_payload],
    ));
    assert_eq!(done["user_id"], "carol");

    // Remove.
    json(&device(&state, &["--json", "remove", &enrollment]));
    assert!(api.list_devices("alice").await.unwrap().devices.is_empty());

    // Errors: a clear code, non-zero exit, nothing secret echoed.
    let out = device(&state, &["--json", "pair", &code, "--server", &base]);
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["code"], "server");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&code));
    let out = device(&state, &["pair", "not a code", "--server", &base]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_input"));
    let out = device(
        &state,
        &["pair", &code, "--server", "http://auth.example.com"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("insecure_server_url"));
    let out = device(&state, &["status", "enr_nope"]);
    assert!(!out.status.success());

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_approve_deny_and_watch() {
    use tessera_protocol::api::CreateAuthenticationRequest;
    use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState, DisplayField};

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.path().join("t.db").display()),
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let base = format!("http://{}", server.local_addr());
    let app = server.create_application("CLI Bank").await.unwrap();
    let api = CustomerApi::new(&base, &app.api_key);
    api.create_user("alice", None).await.unwrap();
    let state = dir.path().join("device");
    let uri = api.start_pairing("alice", None).await.unwrap().pairing_uri;
    json(&device(&state, &["--json", "pair", &uri]));

    let ask = CreateAuthenticationRequest {
        kind: AuthenticationKind::Transaction,
        enrollment_id: None,
        message: Some("Pay 120.00 EUR to ACME GmbH?".into()),
        fields: vec![DisplayField {
            label: "Amount".into(),
            value: "120.00 EUR".into(),
        }],
        hidden_fields: vec![],
        accessing_ip: None,
        accessing_location: None,
        application_icon_url: None,
        expires_in: None,
        number_matching: None,
        require_user_verification: true,
        ..CreateAuthenticationRequest::new(AuthenticationKind::Approval)
    };
    let created = api.create_authentication("alice", &ask).await.unwrap();
    let pending = json(&device(&state, &["--json", "pending"]));
    assert_eq!(
        pending["requests"][0]["request_id"],
        created.authentication_id.as_str()
    );
    assert_eq!(pending["requests"][0]["fields"][0]["value"], "120.00 EUR");
    let text = device(&state, &["pending"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("Amount       120.00 EUR"));
    // User verification required: a plain approve is refused, with a fingerprint it passes.
    let out = device(&state, &["approve", created.authentication_id.as_str()]);
    assert!(!out.status.success());
    let approved = json(&device(
        &state,
        &[
            "--json",
            "approve",
            created.authentication_id.as_str(),
            "--amr",
            "fpt",
        ],
    ));
    assert_eq!(approved["state"], "approved");

    let created = api
        .create_authentication(
            "alice",
            &CreateAuthenticationRequest {
                require_user_verification: false,
                ..ask.clone()
            },
        )
        .await
        .unwrap();
    let denied = json(&device(
        &state,
        &[
            "--json",
            "deny",
            created.authentication_id.as_str(),
            "--reason",
            "fraud",
        ],
    ));
    assert_eq!(denied["state"], "denied");
    let status = api
        .authentication(&created.authentication_id, 0)
        .await
        .unwrap();
    assert_eq!(
        status.decision,
        Some(tessera_protocol::authentication::Decision::ReportFraud)
    );

    // watch --auto-approve: picks up a request created while it waits.
    let watcher = tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera-device"))
        .arg("--state")
        .arg(&state)
        .args(["watch", "--auto-approve", "--count", "1"])
        .output();
    let api2 = api.clone();
    let ask2 = CreateAuthenticationRequest {
        require_user_verification: false,
        ..ask
    };
    let creator = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        api2.create_authentication("alice", &ask2).await.unwrap()
    });
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), watcher)
        .await
        .unwrap()
        .unwrap();
    let created = creator.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("-> approved"));
    let status = api
        .authentication(&created.authentication_id, 5)
        .await
        .unwrap();
    assert_eq!(status.state, AuthenticationState::Approved);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_waits_for_the_primary_device() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.path().join("t.db").display()),
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let base = format!("http://{}", server.local_addr());
    let app = server.create_application("CLI Bank").await.unwrap();
    tessera_server::admin::set_additional_device_policy(
        server.database(),
        &app.application_id,
        tessera_server::store::applications::AdditionalDevicePolicy::VerifyWithPrimary,
    )
    .await
    .unwrap();
    let api = CustomerApi::new(&base, &app.api_key);
    api.create_user("alice", None).await.unwrap();
    let phone = dir.path().join("phone");
    let tablet = dir.path().join("tablet");
    let uri = api.start_pairing("alice", None).await.unwrap().pairing_uri;
    let paired = json(&device(&phone, &["--json", "pair", &uri]));
    assert_eq!(paired["status"], "active");

    // Without waiting: paired, pending.
    let uri = api.start_pairing("alice", None).await.unwrap().pairing_uri;
    let pending = json(&device(
        &tablet,
        &["--json", "pair", &uri, "--wait-verification", "0"],
    ));
    assert_eq!(pending["status"], "pending_verification");
    // The phone denies it; a second try, waiting, is approved by the phone meanwhile.
    let asked = json(&device(&phone, &["--json", "pending"]));
    let id = asked["requests"][0]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    json(&device(&phone, &["--json", "deny", &id]));
    let uri = api.start_pairing("alice", None).await.unwrap().pairing_uri;
    let tablet_dir = tablet.clone();
    let waiting = std::thread::spawn(move || {
        device(
            &tablet_dir,
            &["--json", "pair", &uri, "--wait-verification", "20"],
        )
    });
    let mut approved = false;
    for _ in 0..100 {
        let asked = json(&device(&phone, &["--json", "pending"]));
        if let Some(id) = asked["requests"][0]["request_id"].as_str() {
            json(&device(&phone, &["--json", "approve", id]));
            approved = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(approved);
    let paired = json(&waiting.join().unwrap());
    assert_eq!(paired["status"], "active");
    let list = json(&device(&tablet, &["--json", "list"]));
    assert_eq!(
        list["enrollments"].as_array().unwrap().len(),
        1,
        "the approved enrollment replaced the denied one: {list}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_login_for_one_of_two_users() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.path().join("t.db").display()),
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let base = format!("http://{}", server.local_addr());
    let app = server.create_application("CLI Bank").await.unwrap();
    let api = CustomerApi::new(&base, &app.api_key);
    let state = dir.path().join("device");
    for user in ["alice", "bob"] {
        api.create_user(user, None).await.unwrap();
        let uri = api.start_pairing(user, None).await.unwrap().pairing_uri;
        json(&device(&state, &["--json", "pair", &uri]));
    }
    let created = api
        .create_qr_session(&tessera_protocol::api::CreateQrSession::default())
        .await
        .unwrap();
    // Two users may answer: the command asks which.
    let out = device(&state, &["--json", "qr", &created.qr_uri]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("alice, bob"), "{err}");
    // Scanning again from the same device is allowed; bob approves.
    let done = json(&device(
        &state,
        &[
            "--json",
            "qr",
            &created.qr_uri,
            "--user",
            "bob",
            "--amr",
            "face",
        ],
    ));
    assert_eq!(done["state"], "approved");
    let status = api.qr_session(&created.session_id, 0).await.unwrap();
    assert_eq!(status.user_id.unwrap().as_str(), "bob");
    server.shutdown().await;
}

#[test]
fn otp_accounts_from_otpauth_uris() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("device");
    // RFC 6238's SHA-1 test secret ("12345678901234567890").
    let uri = "otpauth://totp/Example:alice@example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Example";
    let imported = json(&device(&state, &["--json", "otp", "import", uri]));
    assert_eq!(imported["issuer"], "Example");
    assert_eq!(imported["kind"], "totp");
    let id = imported["id"].as_str().unwrap().to_string();
    let code = json(&device(&state, &["--json", "otp", "code", &id]));
    let text = code["code"].as_str().unwrap();
    assert_eq!(text.len(), 6);
    assert!(text.bytes().all(|b| b.is_ascii_digit()));
    assert!(code["valid_for"].as_u64().unwrap() <= 30);
    let list = json(&device(&state, &["--json", "otp", "list"]));
    assert_eq!(list["accounts"].as_array().unwrap().len(), 1);
    let listed = list.to_string();
    assert!(!listed.contains("GEZDGNBV"), "no secret in the listing");
    // A malformed URI: a clear error, no secret echoed.
    let out = device(
        &state,
        &[
            "--json",
            "otp",
            "import",
            "otpauth://totp/x?secret=GEZDGNBV!!",
        ],
    );
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("GEZDGNBV"));
    json(&device(&state, &["--json", "otp", "remove", &id]));
    let list = json(&device(&state, &["--json", "otp", "list"]));
    assert!(list["accounts"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shows_and_answers_a_ciba_request() {
    use tessera_examples::relying_party::{ClientCredentials, RelyingParty};
    use tessera_protocol::ciba::{ClientAuthMethod, DeliveryMode, RegisterCibaClient};

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.path().join("t.db").display()),
        ciba_poll_interval: 1,
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let base = format!("http://{}", server.local_addr());
    let app = server.create_application("CLI Bank").await.unwrap();
    let api = CustomerApi::new(&base, &app.api_key);
    api.create_user("alice", None).await.unwrap();
    let state = dir.path().join("device");
    let uri = api.start_pairing("alice", None).await.unwrap().pairing_uri;
    json(&device(&state, &["--json", "pair", &uri]));

    let registered = api
        .register_ciba_client(&RegisterCibaClient::new(
            "Branch Office",
            DeliveryMode::Poll,
            ClientAuthMethod::ClientSecretBasic,
        ))
        .await
        .unwrap();
    let rp = RelyingParty::discover(
        &base,
        &registered.client_id,
        ClientCredentials::SecretBasic(registered.client_secret.unwrap()),
    )
    .await
    .unwrap();
    let ack = rp
        .backchannel(&[
            ("scope", "openid profile"),
            ("login_hint", "alice"),
            ("binding_message", "Counter 3"),
        ])
        .await
        .unwrap();
    let pending = json(&device(&state, &["--json", "pending"]));
    let request = &pending["requests"][0];
    assert_eq!(request["kind"], "ciba");
    assert_eq!(request["ciba"]["client_name"], "Branch Office");
    assert_eq!(request["ciba"]["binding_message"], "Counter 3");
    assert_eq!(
        request["ciba"]["scopes"],
        serde_json::json!(["openid", "profile"])
    );
    let text = String::from_utf8_lossy(&device(&state, &["pending"]).stdout).to_string();
    assert!(text.contains("backchannel sign-in asked by Branch Office (scopes: openid profile)"));
    let id = request["request_id"].as_str().unwrap();
    assert!(
        !device(&state, &["approve", id]).status.success(),
        "needs --amr"
    );
    let approved = json(&device(&state, &["--json", "approve", id, "--amr", "face"]));
    assert_eq!(approved["state"], "approved");
    let tokens = rp.poll(&ack).await.unwrap();
    let claims = rp.verify_id_token(&tokens.id_token).await.unwrap();
    // The subject is namespaced by the application: one person per issuer and subject.
    assert_eq!(
        claims["sub"],
        format!("{}:alice", app.application_id.as_str())
    );
    server.shutdown().await;
}
