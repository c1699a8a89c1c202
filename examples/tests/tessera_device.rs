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
