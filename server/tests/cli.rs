//! The `tessera-server` binary: `serve` announces its address, answers, and stops cleanly on
//! SIGTERM; `admin` prints JSON.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera-server"))
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

#[test]
fn admin_commands_print_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let created = json_of(
        &bin()
            .args(["admin", "--database", &db, "create-app", "Example Bank"])
            .output()
            .unwrap(),
    );
    let app = created["application_id"].as_str().unwrap().to_string();
    assert!(app.starts_with("app_"));
    assert!(created["api_key"].as_str().unwrap().starts_with("tsk_"));
    assert_eq!(created["name"], "Example Bank");

    let apps = json_of(
        &bin()
            .args(["admin", "--database", &db, "list-apps"])
            .output()
            .unwrap(),
    );
    assert_eq!(apps["applications"][0]["application_id"], app.as_str());
    assert!(
        apps.to_string().find("tsk_").is_none(),
        "API keys are never listed"
    );

    let user = json_of(
        &bin()
            .args([
                "admin",
                "--database",
                &db,
                "create-user",
                &app,
                "alice",
                "--display-name",
                "Alice",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(user["user_id"], "alice");
    let users = json_of(
        &bin()
            .args(["admin", "--database", &db, "list-users", &app])
            .output()
            .unwrap(),
    );
    assert_eq!(users["users"][0]["device_count"], 0);
    let devices = json_of(
        &bin()
            .args(["admin", "--database", &db, "list-devices", &app, "alice"])
            .output()
            .unwrap(),
    );
    assert_eq!(devices["devices"], serde_json::json!([]));
    let hook = json_of(
        &bin()
            .args([
                "admin",
                "--database",
                &db,
                "set-push-webhook",
                &app,
                "https://push.example.com/tessera",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(hook["push_webhook"], "https://push.example.com/tessera");
    let cleared = json_of(
        &bin()
            .args([
                "admin",
                "--database",
                &db,
                "set-push-webhook",
                &app,
                "--clear",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(cleared["push_webhook"], serde_json::Value::Null);
    let out = bin()
        .args([
            "admin",
            "--database",
            &db,
            "set-push-webhook",
            &app,
            "ftp://x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let rotated = json_of(
        &bin()
            .args(["admin", "--database", &db, "rotate-api-key", &app])
            .output()
            .unwrap(),
    );
    assert_ne!(rotated["api_key"], created["api_key"]);

    // Errors: JSON on stderr, non-zero exit.
    let out = bin()
        .args([
            "admin",
            "--database",
            &db,
            "create-user",
            "not-an-app",
            "bob",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["code"], "invalid_input");
    let out = bin()
        .args(["admin", "--database", "mysql://x", "list-apps"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn serve_announces_answers_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("s.db").display());
    let mut child = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            &db,
            "--log-format",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();

    // It answers at once.
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // SIGTERM: a clean exit.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(logs.lines().any(|l| l.contains("shutting down")), "{logs}");
    let mut started = None;
    for l in logs.lines() {
        let line = serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|_| panic!("log line is not JSON: {l}"));
        if line["fields"]["message"] == "server started" {
            started = Some(line);
        }
    }
    // It says when its commits return (SQLite's default: written, not flushed).
    let started = started.unwrap_or_else(|| panic!("no `server started` line: {logs}"));
    assert_eq!(started["fields"]["commits"], "written", "{started}");
}

#[test]
fn openapi_command_prints_the_document() {
    let out = bin().arg("openapi").output().unwrap();
    let doc = json_of(&out);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/users",
        "/v1/users/{user_id}/pairings",
        "/v1/users/{user_id}/relay-pairings",
        "/v1/device/pairings",
        "/v1/server-keys",
        "/v1/device/enrollments/{enrollment_id}",
        "/healthz",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "missing {path}");
    }
}

#[test]
fn admin_push_provider_commands_check_keys_and_print_no_secret() {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};

    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let created = json_of(
        &bin()
            .args(["admin", "--database", &db, "create-app", "Example Bank"])
            .output()
            .unwrap(),
    );
    let app = created["application_id"].as_str().unwrap().to_string();
    let admin = |args: &[&str]| {
        let mut all = vec!["admin", "--database", &db];
        all.extend_from_slice(args);
        bin().args(all).output().unwrap()
    };
    let no_secret = |out: &std::process::Output| {
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!printed.contains("PRIVATE KEY"), "{printed}");
    };

    // FCM: a service-account file as the Firebase console downloads it.
    let rsa_key = include_str!("../../tests/fixtures/test-only-fcm-rsa-key.pem");
    let service_account = serde_json::json!({
        "type": "service_account", "project_id": "example-bank", "private_key_id": "abc123",
        "private_key": rsa_key, "client_email": "push@example-bank.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token",
    });
    let sa_file = dir.path().join("sa.json");
    std::fs::write(&sa_file, service_account.to_string()).unwrap();
    let out = admin(&[
        "set-fcm",
        &app,
        "--service-account",
        sa_file.to_str().unwrap(),
    ]);
    no_secret(&out);
    let fcm = json_of(&out);
    assert_eq!(fcm["provider"], "fcm");
    assert_eq!(fcm["project_id"], "example-bank");
    assert_eq!(fcm["private_key_id"], "abc123");
    let mut broken = service_account.clone();
    broken["private_key"] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
    std::fs::write(&sa_file, broken.to_string()).unwrap();
    let out = admin(&[
        "set-fcm",
        &app,
        "--service-account",
        sa_file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    no_secret(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_push_credentials"));

    // APNs: a .p8 key.
    let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let p8 = dir.path().join("AuthKey.p8");
    std::fs::write(&p8, key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
    let out = admin(&[
        "set-apns",
        &app,
        "--team-id",
        "TEAM123456",
        "--key-id",
        "KEY1234567",
        "--key-file",
        p8.to_str().unwrap(),
        "--topic",
        "com.example.bank",
        "--sandbox",
    ]);
    no_secret(&out);
    let apns = json_of(&out);
    assert_eq!(apns["provider"], "apns");
    assert_eq!(apns["environment"], "sandbox");
    assert_eq!(apns["topic"], "com.example.bank");
    // An RSA key is not an APNs key.
    let rsa_file = dir.path().join("rsa.pem");
    std::fs::write(&rsa_file, rsa_key).unwrap();
    let out = admin(&[
        "set-apns",
        &app,
        "--team-id",
        "TEAM123456",
        "--key-id",
        "KEY1234567",
        "--key-file",
        rsa_file.to_str().unwrap(),
        "--topic",
        "com.example.bank",
    ]);
    assert!(!out.status.success());
    no_secret(&out);
    let cleared = json_of(&admin(&["clear-push-provider", &app, "apns"]));
    assert_eq!(cleared["cleared"], "apns");
}

#[test]
fn admin_ciba_client_commands() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let admin = |args: &[&str]| {
        let mut command = bin();
        command.args(["admin", "--database", &db]).args(args);
        command.output().unwrap()
    };
    let app = json_of(&admin(&["create-app", "Example Bank"]))["application_id"]
        .as_str()
        .unwrap()
        .to_string();
    let poll = json_of(&admin(&[
        "register-ciba-client",
        &app,
        "--name",
        "Call Centre",
        "--mode",
        "poll",
        "--auth-method",
        "client-secret-basic",
    ]));
    let client_id = poll["client_id"].as_str().unwrap().to_string();
    assert!(client_id.starts_with("cli_"));
    assert_eq!(poll["client_secret"].as_str().unwrap().len(), 43);
    assert_eq!(poll["client"]["backchannel_token_delivery_mode"], "poll");

    // A private-network endpoint is refused unless allowed; loopback needs its own flag.
    let ping = |endpoint: &str, extra: &[&str]| {
        let mut args = vec![
            "register-ciba-client",
            app.as_str(),
            "--name",
            "Branch",
            "--mode",
            "ping",
            "--auth-method",
            "client-secret-post",
            "--endpoint",
            endpoint,
        ];
        args.extend_from_slice(extra);
        admin(&args)
    };
    let refused = ping("https://10.1.2.3/cb", &[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("invalid_input"));
    json_of(&ping(
        "https://10.1.2.3/cb",
        &["--allow-private-notifications"],
    ));
    assert!(!ping("http://127.0.0.1:9/cb", &[]).status.success());
    json_of(&ping(
        "http://127.0.0.1:9/cb",
        &["--allow-loopback-notifications"],
    ));

    // private_key_jwt with a JWKS file; a symmetric signing algorithm is refused.
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#,
    )
    .unwrap();
    let jwks = jwks.to_str().unwrap();
    let signed = [
        "register-ciba-client",
        app.as_str(),
        "--name",
        "Back Office",
        "--mode",
        "poll",
        "--auth-method",
        "private-key-jwt",
        "--jwks",
        jwks,
        "--signing-alg",
    ];
    let registered = json_of(&admin(&[&signed[..], &["ES256"]].concat()));
    assert!(registered.get("client_secret").is_none());
    assert!(!admin(&[&signed[..], &["HS256"]].concat()).status.success());

    let listed = json_of(&admin(&["list-ciba-clients", &app]));
    assert_eq!(listed["clients"].as_array().unwrap().len(), 4);
    assert!(
        !listed.to_string().contains("secret\":"),
        "no secret is listed"
    );
    json_of(&admin(&["remove-ciba-client", &app, &client_id]));
    assert!(
        !admin(&["remove-ciba-client", &app, &client_id])
            .status
            .success()
    );

    let first = json_of(&admin(&["rotate-id-token-key"]))["signing_kid"]
        .as_str()
        .unwrap()
        .to_string();
    let second = json_of(&admin(&["rotate-id-token-key"]))["signing_kid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(first, second);
}

#[test]
fn master_key_commands_protect_rotate_and_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    let key_file = |name: &str| {
        let out = bin()
            .args(["admin", "generate-master-key"])
            .output()
            .unwrap();
        let key = json_of(&out)["master_key"].as_str().unwrap().to_string();
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{key}\n")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        (path.display().to_string(), key)
    };
    let (first, _) = key_file("first.key");
    let (second, second_text) = key_file("second.key");
    let admin = |key: Option<&str>, args: &[&str]| {
        let mut command = bin();
        command.args(["admin", "--database", &db]);
        if let Some(key) = key {
            command.args(["--master-key-file", key]);
        }
        command
            .args(args)
            .env_remove("TESSERA_MASTER_KEY")
            .env_remove("TESSERA_MASTER_KEY_FILE")
            .output()
            .unwrap()
    };
    let error_code = |out: &std::process::Output| -> String {
        assert!(!out.status.success());
        let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
        err["error"]["code"].as_str().unwrap().to_string()
    };

    // Production mode without a master key does not start.
    let out = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            &db,
            "--production",
        ])
        .env_remove("TESSERA_MASTER_KEY")
        .env_remove("TESSERA_MASTER_KEY_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("master_key_required"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let created = json_of(&admin(Some(&first), &["create-app", "Example Bank"]));
    let app = created["application_id"].as_str().unwrap().to_string();
    assert_eq!(
        error_code(&admin(None, &["list-apps"])),
        "master_key_required"
    );
    assert_eq!(
        error_code(&admin(Some(&second), &["list-apps"])),
        "wrong_master_key"
    );
    json_of(&admin(Some(&first), &["list-apps"]));

    // Rotation: after rewrap only the new key opens the database.
    let rewrapped = json_of(&admin(
        Some(&first),
        &["rewrap", "--new-master-key-file", &second],
    ));
    assert!(
        rewrapped["master_key"]
            .as_str()
            .unwrap()
            .starts_with("local:")
    );
    assert_eq!(
        error_code(&admin(Some(&first), &["list-apps"])),
        "wrong_master_key"
    );
    json_of(&admin(Some(&second), &["list-apps"]));
    // The key itself in TESSERA_MASTER_KEY (containers).
    let out = bin()
        .args(["admin", "--database", &db, "list-apps"])
        .env_remove("TESSERA_MASTER_KEY_FILE")
        .env("TESSERA_MASTER_KEY", &second_text)
        .output()
        .unwrap();
    json_of(&out);

    let quotas = json_of(&admin(
        Some(&second),
        &["set-quotas", &app, "--open-qr-sessions", "50"],
    ));
    assert_eq!(quotas["quotas"]["max_open_qr_sessions"], 50);
    assert_eq!(
        quotas["quotas"]["max_pending_requests"],
        serde_json::Value::Null
    );
    let purged = json_of(&admin(Some(&second), &["purge", "--retention-days", "30"]));
    assert_eq!(purged["authentications"], 0);
}

#[test]
fn admin_attestation_commands_and_serve_attestation_flags() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("a.db").display());
    let created = json_of(
        &bin()
            .args(["admin", "--database", &db, "create-app", "Bank"])
            .output()
            .unwrap(),
    );
    let app = created["application_id"].as_str().unwrap().to_string();
    let digest = "ab".repeat(32);
    let set = json_of(
        &bin()
            .args([
                "admin",
                "--database",
                &db,
                "set-attestation",
                &app,
                "--mode",
                "require",
                "--android-app",
                &format!("com.example.bank={}", digest.to_uppercase()),
                "--apple-app",
                "ABCDE12345.com.example.bank",
                "--apple-development-app",
                "ABCDE12345.com.example.bank.beta",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(set["attestation"]["mode"], "require");
    assert_eq!(
        set["attestation"]["android_apps"][0]["signing_cert_digests"][0],
        digest.as_str(),
        "digests are stored lowercase"
    );
    assert_eq!(set["attestation"]["apple_apps"][1]["development"], true);
    let shown = json_of(
        &bin()
            .args(["admin", "--database", &db, "attestation", &app])
            .output()
            .unwrap(),
    );
    assert_eq!(shown["attestation"], set["attestation"]);
    // A malformed digest or `require` without an app is refused, and nothing changes.
    for args in [
        vec!["--mode", "report", "--android-app", "com.example.bank=xyz"],
        vec!["--mode", "require"],
    ] {
        let out = bin()
            .args(["admin", "--database", &db, "set-attestation", &app])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
    }
    let shown = json_of(
        &bin()
            .args(["admin", "--database", &db, "attestation", &app])
            .output()
            .unwrap(),
    );
    assert_eq!(shown["attestation"], set["attestation"]);

    // `--check-config` finds an attestation root that is not a certificate, a revocation list
    // that is not Google's format, and either file missing, as a configuration error; `serve`
    // refuses them too, before listening.
    let missing = dir.path().join("missing.pem");
    let not_a_certificate = dir.path().join("text.pem");
    std::fs::write(&not_a_certificate, "not a certificate").unwrap();
    let not_a_list = dir.path().join("list.json");
    std::fs::write(&not_a_list, "{\"nothing\": 1}").unwrap();
    for (flag, file, says) in [
        ("--attestation-root", &not_a_certificate, "attestation root"),
        ("--attestation-root", &missing, "--attestation-root"),
        (
            "--attestation-revocation-list",
            &not_a_list,
            "revocation status list",
        ),
        (
            "--attestation-revocation-list",
            &missing,
            "--attestation-revocation-list",
        ),
    ] {
        let out = bin()
            .args(["serve", "--database", &db, "--check-config", flag])
            .arg(file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{flag} {}", file.display());
        let error: serde_json::Value =
            serde_json::from_slice(&out.stderr).expect("one JSON line on stderr");
        assert_eq!(error["error"]["code"], "invalid_config", "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("attestation-roots/apple-app-attestation-root-ca.pem");
    let out = bin()
        .args([
            "serve",
            "--database",
            &db,
            "--check-config",
            "--attestation-root",
        ])
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(json_of(&out), serde_json::json!({"config": "valid"}));

    // `serve` refuses an attestation root that is not a certificate, and a revocation list
    // that is not Google's format, before listening.
    let not_a_root = dir.path().join("root.pem");
    std::fs::write(&not_a_root, "not a certificate").unwrap();
    let out = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &db])
        .arg("--attestation-root")
        .arg(&not_a_root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("attestation root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad_list = dir.path().join("status.json");
    std::fs::write(&bad_list, "{\"nothing\": 1}").unwrap();
    let out = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &db])
        .arg("--attestation-revocation-list")
        .arg(&bad_list)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revocation status list"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
