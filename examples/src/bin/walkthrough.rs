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
use tessera_protocol::pairing::{DeviceInfo, DeviceSignals, PushRegistration};
use tessera_server::{Server, ServerConfig};

fn step(n: u32, title: &str) {
    println!("\n── {n}. {title}");
}

fn say(line: impl AsRef<str>) {
    println!("   {}", line.as_ref());
}

async fn open_device(dir: &std::path::Path) -> Result<Authenticator> {
    let key_store: Arc<dyn KeyStore> = Arc::new(SoftwareKeyStore::open(dir.join("keys"))?);
    let storage: Arc<dyn SecureStorage> = Arc::new(FileStorage::new(dir.join("state"))?);
    let config = AuthenticatorConfig {
        device: DeviceInfo {
            model: "Pixel 8 (simulated)".into(),
            os_name: "Android".into(),
            os_version: "15".into(),
            app_version: "2.3.0".into(),
            sdk_version: env!("CARGO_PKG_VERSION").into(),
            name: Some("Alice's phone".into()),
        },
        signals: DeviceSignals {
            rooted: Some(false),
            screen_lock: Some(true),
            mdm: Some(false),
        },
        push: PushRegistration::None,
        ..AuthenticatorConfig::default()
    };
    Ok(Authenticator::open(config, key_store, storage).await?)
}

#[tokio::main]
async fn main() -> Result<()> {
    println!("Tessera walkthrough");
    let workdir = tempfile::tempdir().context("temporary folder")?;
    let database_url = format!("sqlite://{}", workdir.path().join("tessera.db").display());

    step(1, "Start the server (embedded SQLite, free loopback port)");
    let server = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        database_url: database_url.clone(),
        ..ServerConfig::default()
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
        "The app restarts: state is reloaded from encrypted storage",
    );
    drop(device);
    let device = open_device(&device_dir).await?;
    say(format!(
        "{} enrollments after restart",
        device.enrollments().await.len()
    ));

    step(11, "The server restarts: enrollments survive");
    let addr = server.local_addr();
    server.shutdown().await;
    let server = Server::start(ServerConfig {
        listen: addr,
        database_url: database_url.clone(),
        ..ServerConfig::default()
    })
    .await?;
    let status = device.enrollment_status(&bob.enrollment_id).await?;
    say(format!(
        "{} is still {}",
        status.enrollment_id, status.status
    ));

    step(12, "Bob unpairs from the device");
    device.remove_enrollment(&bob.enrollment_id).await?;
    let left = backend.list_devices("bob").await?.devices.len();
    say(format!(
        "bob has {left} device(s) on the server; the device keeps {} enrollment(s)",
        device.enrollments().await.len()
    ));

    server.shutdown().await;
    println!("\nDone: direct and relay pairing, two users on one device, restarts on both sides.");
    Ok(())
}
