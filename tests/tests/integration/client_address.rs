//! End to end: the client address behind a reverse proxy (`--trusted-proxy`), and the pairing
//! throttle keyed on the address and on the code space, seen through the throttle itself (a
//! counted guess answers `invalid_pairing_code`, a refused one `rate_limited`) and through the
//! request log line.

use rand::Rng;
use tessera_server::TrustedProxyHeader;
use tessera_tests::{Backend, RawDevice, TestServer, on_each_backend};

on_each_backend! {
    forwarding_headers_from_an_untrusted_peer_are_ignored => untrusted_peer;
    a_trusted_proxys_forwarding_header_names_the_client => trusted_proxy;
    a_spoofed_left_most_hop_resolves_to_the_right_most_untrusted_one => spoofed_chain;
    ipv6_and_quoted_forwarded_forms_name_the_same_client => ipv6_forms;
    only_the_header_the_proxy_writes_names_the_client => only_the_named_header;
    a_noisy_address_does_not_lock_out_a_valid_code_in_another_bucket => noisy_neighbour;
    guesses_from_many_addresses_at_once_check_no_more_codes_than_the_bucket_limit => many_addresses_burst;
    the_primary_device_is_shown_the_resolved_address_of_a_new_device => verification_shows_client;
}

/// A random code bucket (two characters of the code alphabet), so tests sharing a PostgreSQL
/// database within one minute do not count into each other's buckets.
fn random_bucket() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut rng = rand::thread_rng();
    (0..2)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A random documentation-range IPv6 prefix, so each test run has addresses of its own.
fn random_v6_prefix() -> String {
    let mut rng = rand::thread_rng();
    format!("2001:db8:{:x}:{:x}", rng.r#gen::<u16>(), rng.r#gen::<u16>())
}

/// A well-formed code in `bucket` that no server issued.
fn guess_in(bucket: &str, n: usize) -> String {
    format!("{bucket}ZZ-ZZZZ-{n:04}")
}

/// One pairing attempt with a valid registration and `code`, with extra request headers;
/// returns the error code (or `paired`).
async fn attempt(server: &TestServer, code: &str, headers: &[(&str, &str)]) -> String {
    attempt_through(
        &reqwest::Client::new(),
        &server.base_url,
        &server.base_url,
        code,
        headers,
    )
    .await
}

/// [`attempt`] sent by `client` to `base` (a proxy in front of the server, say), with a
/// registration signed for `audience` (the server's public URL).
pub(crate) async fn attempt_through(
    client: &reqwest::Client,
    base: &str,
    audience: &str,
    code: &str,
    headers: &[(&str, &str)],
) -> String {
    let (registration, proof) =
        RawDevice::new().registration(audience, tessera_protocol::time::now());
    let mut request = client
        .post(format!("{base}/v1/device/pairings"))
        .json(&serde_json::json!({
            "pairing_code": code,
            "registration": registration,
            "user_verification_proof": proof,
        }));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("send");
    if response.status().as_u16() == 201 {
        return "paired".into();
    }
    let body: serde_json::Value = response.json().await.expect("json");
    body["error"]["code"].as_str().expect("code").to_string()
}

/// A server whose clock stands still, so that a test's attempts all fall in one throttle minute
/// (a slow run would otherwise cross into the next one and find fresh counters). Its trusted
/// proxies write `X-Forwarded-For` (the default).
async fn server_with(backend: Backend, trusted: &[&str], per_ip: u32) -> TestServer {
    server_reading(backend, trusted, per_ip, TrustedProxyHeader::XForwardedFor).await
}

/// [`server_with`] whose trusted proxies write `header`.
async fn server_reading(
    backend: Backend,
    trusted: &[&str],
    per_ip: u32,
    header: TrustedProxyHeader,
) -> TestServer {
    let trusted: Vec<_> = trusted.iter().map(|n| n.parse().unwrap()).collect();
    TestServer::start_with(backend, move |c| {
        c.clock = std::sync::Arc::new(tessera_server::ManualClock::new());
        c.trusted_proxies = trusted;
        c.trusted_proxy_header = header;
        c.pairing_failures_per_ip_per_minute = per_ip;
    })
    .await
}

async fn untrusted_peer(backend: Backend) {
    // No trusted proxy: every guess counts against the TCP peer, whatever the headers say.
    let server = server_with(backend, &[], 3).await;
    let bucket = random_bucket();
    let prefix = random_v6_prefix();
    let mut answers = Vec::new();
    for i in 0..5 {
        let spoofed = format!("{prefix}::{i}");
        let forwarded = format!("for=\"[{prefix}::{i}]\"");
        answers.push(
            attempt(
                &server,
                &guess_in(&bucket, i),
                &[
                    ("x-forwarded-for", spoofed.as_str()),
                    ("forwarded", forwarded.as_str()),
                ],
            )
            .await,
        );
    }
    // On PostgreSQL, other tests may share 127.0.0.1 and this bucket's minute: at most 3 in all.
    let checked = answers
        .iter()
        .filter(|a| *a == "invalid_pairing_code")
        .count();
    assert!(checked <= 3, "{answers:?}");
    assert_eq!(
        answers[3..],
        ["rate_limited", "rate_limited"],
        "{answers:?}"
    );
}

async fn trusted_proxy(backend: Backend) {
    let server = server_with(backend, &["127.0.0.0/8"], 3).await;
    let bucket = random_bucket();
    let prefix = random_v6_prefix();
    let noisy = format!("{prefix}::5");
    let other = format!("{prefix}::6");
    for i in 0..3 {
        assert_eq!(
            attempt(
                &server,
                &guess_in(&bucket, i),
                &[("x-forwarded-for", &noisy)]
            )
            .await,
            "invalid_pairing_code"
        );
    }
    assert_eq!(
        attempt(
            &server,
            &guess_in(&bucket, 3),
            &[("x-forwarded-for", &noisy)]
        )
        .await,
        "rate_limited"
    );
    // Another client behind the same proxy is counted on its own.
    assert_eq!(
        attempt(
            &server,
            &guess_in(&bucket, 4),
            &[("x-forwarded-for", &other)]
        )
        .await,
        "invalid_pairing_code"
    );
    // The request log line carries the resolved address.
    crate::logs::capture();
    let logged = format!("{prefix}::7");
    attempt(
        &server,
        &guess_in(&bucket, 5),
        &[("x-forwarded-for", &logged)],
    )
    .await;
    let logs = crate::logs::captured();
    assert!(
        logs.lines()
            .any(|l| l.contains("\"route\":\"/v1/device/pairings\"")
                && l.contains(&format!("\"client\":\"{logged}\""))),
        "no request line with client {logged}"
    );
}

async fn spoofed_chain(backend: Backend) {
    let server = server_with(backend, &["127.0.0.0/8", "10.0.0.0/8"], 2).await;
    let bucket = random_bucket();
    let prefix = random_v6_prefix();
    let client = format!("{prefix}::9");
    for i in 0..2 {
        // The client wrote a random left-most entry; the proxies appended the real hops.
        let chain = format!("{prefix}::{:x}, {client}, 10.1.2.3", 100 + i);
        assert_eq!(
            attempt(
                &server,
                &guess_in(&bucket, i),
                &[("x-forwarded-for", &chain)]
            )
            .await,
            "invalid_pairing_code"
        );
    }
    let chain = format!("{prefix}::ffff, {client}");
    assert_eq!(
        attempt(
            &server,
            &guess_in(&bucket, 2),
            &[("x-forwarded-for", &chain)]
        )
        .await,
        "rate_limited",
        "a new left-most entry does not make a new client"
    );
    // The same behind proxies that write `Forwarded`.
    let server = server_reading(
        server.backend.clone(),
        &["127.0.0.0/8", "10.0.0.0/8"],
        2,
        TrustedProxyHeader::Forwarded,
    )
    .await;
    let bucket = random_bucket();
    let client = format!("{}::9", random_v6_prefix());
    for i in 0..2 {
        let forwarded = format!(
            "for=\"[{prefix}::{:x}]\", for=\"[{client}]:443\";proto=https, for=10.1.2.3",
            200 + i
        );
        assert_eq!(
            attempt(&server, &guess_in(&bucket, i), &[("forwarded", &forwarded)]).await,
            "invalid_pairing_code"
        );
    }
    let forwarded = format!("for=\"[{prefix}::eeee]\", for=\"[{client}]:443\";proto=https");
    assert_eq!(
        attempt(&server, &guess_in(&bucket, 2), &[("forwarded", &forwarded)]).await,
        "rate_limited",
        "a new left-most element does not make a new client"
    );
}

async fn ipv6_forms(backend: Backend) {
    // Behind proxies that write `Forwarded`: the quoted forms of one address name one client.
    let server = server_reading(
        backend.clone(),
        &["127.0.0.1/32"],
        2,
        TrustedProxyHeader::Forwarded,
    )
    .await;
    let bucket = random_bucket();
    let prefix = random_v6_prefix();
    let quoted = format!("for=\"[{prefix}::1]:443\"");
    let bracketed = format!("for=\"[{prefix}::1]\"");
    let written_out = format!("for=\"[{prefix}:0:0:0:1]:8443\"");
    assert_eq!(
        attempt(&server, &guess_in(&bucket, 0), &[("forwarded", &quoted)]).await,
        "invalid_pairing_code"
    );
    assert_eq!(
        attempt(&server, &guess_in(&bucket, 1), &[("forwarded", &bracketed)]).await,
        "invalid_pairing_code"
    );
    assert_eq!(
        attempt(
            &server,
            &guess_in(&bucket, 2),
            &[("forwarded", &written_out)]
        )
        .await,
        "rate_limited"
    );
    let neighbour = format!("for=\"[{prefix}::2]\"");
    assert_eq!(
        attempt(&server, &guess_in(&bucket, 3), &[("forwarded", &neighbour)]).await,
        "invalid_pairing_code"
    );
    // A malformed header from the trusted proxy: the proxy's own address is the client.
    assert_ne!(
        attempt(
            &server,
            &guess_in(&bucket, 4),
            &[("forwarded", "for=\"[::1")]
        )
        .await,
        "paired"
    );

    // Behind proxies that write `X-Forwarded-For`: its forms of one address name one client.
    let server = server_with(backend, &["127.0.0.1/32"], 2).await;
    let bucket = random_bucket();
    let prefix = random_v6_prefix();
    let bare = format!("{prefix}::1");
    let with_port = format!("[{prefix}:0:0:0:1]:8443");
    let bracketed = format!("[{prefix}::1]");
    assert_eq!(
        attempt(
            &server,
            &guess_in(&bucket, 0),
            &[("x-forwarded-for", &bare)]
        )
        .await,
        "invalid_pairing_code"
    );
    assert_eq!(
        attempt(
            &server,
            &guess_in(&bucket, 1),
            &[("x-forwarded-for", &with_port)]
        )
        .await,
        "invalid_pairing_code"
    );
    assert_eq!(
        attempt(
            &server,
            &guess_in(&bucket, 2),
            &[("x-forwarded-for", &bracketed)]
        )
        .await,
        "rate_limited"
    );
    let neighbour = format!("{prefix}::2");
    assert_eq!(
        attempt(
            &server,
            &guess_in(&bucket, 3),
            &[("x-forwarded-for", &neighbour)]
        )
        .await,
        "invalid_pairing_code"
    );
}

async fn only_the_named_header(backend: Backend) {
    // A proxy passes the header it does not write through from the client untouched: a client
    // forging a new address in it on every guess is still counted as the address the named
    // header gives.
    for (header, forged_name, named_name) in [
        (
            TrustedProxyHeader::XForwardedFor,
            "forwarded",
            "x-forwarded-for",
        ),
        (
            TrustedProxyHeader::Forwarded,
            "x-forwarded-for",
            "forwarded",
        ),
    ] {
        let server = server_reading(backend.clone(), &["127.0.0.1/32"], 2, header).await;
        let bucket = random_bucket();
        let prefix = random_v6_prefix();
        let client = format!("{prefix}::1");
        let named = match header {
            TrustedProxyHeader::Forwarded => format!("for=\"[{client}]\""),
            TrustedProxyHeader::XForwardedFor => client.clone(),
        };
        let mut answers = Vec::new();
        for i in 0..3 {
            let forged = match header {
                TrustedProxyHeader::Forwarded => format!("{prefix}::{:x}", 100 + i),
                TrustedProxyHeader::XForwardedFor => format!("for=\"[{prefix}::{:x}]\"", 100 + i),
            };
            answers.push(
                attempt(
                    &server,
                    &guess_in(&bucket, i),
                    &[(forged_name, &forged), (named_name, &named)],
                )
                .await,
            );
        }
        assert_eq!(
            answers,
            [
                "invalid_pairing_code",
                "invalid_pairing_code",
                "rate_limited"
            ],
            "reading {header:?}: the forged {forged_name} escaped the throttle"
        );
    }
}

async fn noisy_neighbour(backend: Backend) {
    // Two colleagues behind one NAT address (a trusted proxy names it): one types bad codes
    // until refused, the other then pairs with a valid code.
    let server = server_with(backend, &["127.0.0.1/32"], 10).await;
    let nat = format!("{}::1", random_v6_prefix());
    server.user("carol").await;
    let uri = server.pairing_uri("carol").await;
    let code = tessera_protocol::pairing::PairingUri::parse(&uri)
        .unwrap()
        .code;
    let valid = code.display_form().to_string();
    let noisy_bucket = loop {
        let bucket = random_bucket();
        if !valid.starts_with(&bucket) {
            break bucket;
        }
    };
    let mut answers = Vec::new();
    for i in 0..11 {
        answers.push(
            attempt(
                &server,
                &guess_in(&noisy_bucket, i),
                &[("x-forwarded-for", &nat)],
            )
            .await,
        );
    }
    assert_eq!(answers[10], "rate_limited", "{answers:?}");
    assert_eq!(
        attempt(&server, &valid, &[("x-forwarded-for", &nat)]).await,
        "paired",
        "a colleague's valid code is not locked out by the neighbour's bad ones"
    );
}

async fn many_addresses_burst(backend: Backend) {
    // 40 guesses at once in one code bucket, each from its own address behind a trusted proxy,
    // against a bucket limit of 5: no more than 5 codes are checked, however many addresses.
    let server = TestServer::start_with(backend, |c| {
        c.clock = std::sync::Arc::new(tessera_server::ManualClock::new());
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.pairing_failures_per_ip_per_minute = 100;
        c.pairing_failures_per_code_bucket_per_minute = 5;
    })
    .await;
    let server = std::sync::Arc::new(server);
    let bucket = random_bucket();
    let prefix = random_v6_prefix();
    let mut guesses = Vec::new();
    for i in 0..40 {
        let server = server.clone();
        let bucket = bucket.clone();
        let address = format!("{prefix}::{:x}", i + 1);
        guesses.push(tokio::spawn(async move {
            attempt(
                &server,
                &guess_in(&bucket, i),
                &[("x-forwarded-for", &address)],
            )
            .await
        }));
    }
    let mut checked = 0;
    for guess in guesses {
        match guess.await.unwrap().as_str() {
            "invalid_pairing_code" => checked += 1,
            "rate_limited" => {}
            other => panic!("unexpected answer {other}"),
        }
    }
    eprintln!("{checked} of 40 guesses from 40 addresses were checked (bucket limit 5)");
    assert!(
        checked <= 5,
        "{checked} codes were checked against a bucket limit of 5"
    );
    assert!(checked >= 1, "some guesses were checked");
    // Another bucket is not affected.
    let other = loop {
        let b = random_bucket();
        if b != bucket {
            break b;
        }
    };
    let address = format!("{prefix}::ffff");
    assert_eq!(
        attempt(
            &server,
            &guess_in(&other, 0),
            &[("x-forwarded-for", &address)]
        )
        .await,
        "invalid_pairing_code"
    );
}

async fn verification_shows_client(backend: Backend) {
    // Under "verify new devices with the primary device", the primary device is asked about a
    // new device and shown its address: the client behind the trusted proxy, not the proxy, and
    // never what the client wrote at the left of its header.
    let server = server_with(backend, &["127.0.0.1/32"], 10).await;
    tessera_server::admin::set_additional_device_policy(
        server.server.database(),
        &server.app.application_id,
        tessera_server::store::applications::AdditionalDevicePolicy::VerifyWithPrimary,
    )
    .await
    .unwrap();
    server.user("erin").await;
    let phone = tessera_tests::TestDevice::new().await;
    phone
        .auth
        .pair(&server.pairing_uri("erin").await, None)
        .await
        .unwrap();
    let uri = server.pairing_uri("erin").await;
    let code = tessera_protocol::pairing::PairingUri::parse(&uri)
        .unwrap()
        .code;
    assert_eq!(
        attempt(
            &server,
            &code.display_form(),
            &[("x-forwarded-for", "198.51.100.1, 203.0.113.77")]
        )
        .await,
        "paired"
    );
    let request = phone.auth.pending_requests().await.unwrap().remove(0);
    assert_eq!(request.context.ip.as_deref(), Some("203.0.113.77"));
}
