//! Notification endpoints are URLs a client chose: the server must not be talked into calling
//! its own network. Endpoints are checked when registered (scheme, literal addresses, loopback
//! names) and again at every delivery, after resolving the name, against the addresses the
//! connection will use. Redirects are never followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

/// What the server allows for notification endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TargetPolicy {
    /// Loopback targets (and then plain `http://`), for development.
    pub allow_loopback: bool,
    /// Private, link-local, shared and other non-public ranges.
    pub allow_private: bool,
}

/// Why an endpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TargetError {
    /// Not a URL, or with credentials or a fragment.
    #[error(
        "the notification endpoint is not a valid absolute URL without credentials or fragment"
    )]
    Malformed,
    /// Not `https://` (plain `http://` is allowed to loopback only, when loopback is allowed).
    #[error("the notification endpoint must use https")]
    NotHttps,
    /// A loopback address or name.
    #[error("the notification endpoint is on loopback")]
    Loopback,
    /// A private, link-local or otherwise non-public address.
    #[error("the notification endpoint is in a non-public address range")]
    NonPublic,
    /// The name did not resolve.
    #[error("the notification endpoint's host name does not resolve")]
    Unresolvable,
    /// The name server did not answer in time.
    #[error("the notification endpoint's host name did not resolve in time")]
    ResolutionTimedOut,
}

/// The longest a delivery waits for its endpoint's name to resolve: well within the POST's
/// own timeout, so that a slow name server cannot keep an attempt past its claim.
pub(crate) const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn is_non_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (RFC 6598)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

/// The IPv4 addresses an IPv6 address carries and that a relay or the stack may end up
/// connecting to: IPv4-compatible `::a.b.c.d` (deprecated), 6to4 `2002:AABB:CCDD::/48` and
/// Teredo `2001:0:SSSS:SSSS:…:CCCC:CCCC` (the server, and the client stored inverted).
fn embedded_ipv4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    if s[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback() {
        vec![v4(s[6], s[7])]
    } else if s[0] == 0x2002 {
        vec![v4(s[1], s[2])]
    } else if s[0] == 0x2001 && s[1] == 0 {
        vec![v4(s[2], s[3]), v4(!s[6], !s[7])]
    } else {
        Vec::new()
    }
}

fn is_non_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_non_public_v4(v4);
    }
    if embedded_ipv4(ip)
        .into_iter()
        .any(|v4| v4.is_loopback() || is_non_public_v4(v4))
    {
        return true;
    }
    let first = ip.segments()[0];
    ip.is_unspecified()
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || ip.segments()[..4] == [0x0100, 0, 0, 0] // discard-only (RFC 6666)
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || (first == 0x0064 && ip.segments()[1] == 0xff9b) // NAT64
}

/// Checks one address the connection may use.
pub(crate) fn check_address(ip: IpAddr, policy: TargetPolicy) -> Result<(), TargetError> {
    if is_loopback(ip) {
        return if policy.allow_loopback {
            Ok(())
        } else {
            Err(TargetError::Loopback)
        };
    }
    let non_public = match ip {
        IpAddr::V4(v4) => is_non_public_v4(v4),
        IpAddr::V6(v6) => is_non_public_v6(v6),
    };
    if non_public && !policy.allow_private {
        return Err(TargetError::NonPublic);
    }
    Ok(())
}

fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// Checks an endpoint when it is registered: everything that can be known without resolving.
pub(crate) fn check_endpoint(raw: &str, policy: TargetPolicy) -> Result<Url, TargetError> {
    let url = Url::parse(raw).map_err(|_| TargetError::Malformed)?;
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(TargetError::Malformed);
    }
    let loopback = match url.host() {
        None => return Err(TargetError::Malformed),
        Some(Host::Domain(name)) => {
            if is_loopback_name(name) {
                check_address(IpAddr::V4(Ipv4Addr::LOCALHOST), policy)?;
                true
            } else {
                false
            }
        }
        Some(Host::Ipv4(v4)) => {
            check_address(IpAddr::V4(v4), policy)?;
            v4.is_loopback()
        }
        Some(Host::Ipv6(v6)) => {
            check_address(IpAddr::V6(v6), policy)?;
            is_loopback(IpAddr::V6(v6))
        }
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(TargetError::NotHttps),
    }
}

/// Resolves an endpoint for one delivery and checks every address it resolves to; the caller
/// connects to the returned addresses only (no second lookup an attacker could answer
/// differently). The lookup is given up after [`RESOLVE_TIMEOUT`].
pub(crate) async fn resolve_endpoint(
    url: &Url,
    policy: TargetPolicy,
) -> Result<Vec<SocketAddr>, TargetError> {
    resolve_with(url, policy, |name, port| async move {
        tokio::net::lookup_host((name.as_str(), port))
            .await
            .map(Iterator::collect)
    })
    .await
}

/// [`resolve_endpoint`] with the name looked up by `lookup`.
async fn resolve_with<L, F>(
    url: &Url,
    policy: TargetPolicy,
    lookup: L,
) -> Result<Vec<SocketAddr>, TargetError>
where
    L: FnOnce(String, u16) -> F,
    F: std::future::Future<Output = std::io::Result<Vec<SocketAddr>>>,
{
    let url = check_endpoint(url.as_str(), policy)?;
    let port = url.port_or_known_default().ok_or(TargetError::Malformed)?;
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(Host::Ipv4(v4)) => vec![SocketAddr::new(IpAddr::V4(v4), port)],
        Some(Host::Ipv6(v6)) => vec![SocketAddr::new(IpAddr::V6(v6), port)],
        Some(Host::Domain(name)) => {
            tokio::time::timeout(RESOLVE_TIMEOUT, lookup(name.to_string(), port))
                .await
                .map_err(|_| TargetError::ResolutionTimedOut)?
                .map_err(|_| TargetError::Unresolvable)?
        }
        None => return Err(TargetError::Malformed),
    };
    if addrs.is_empty() {
        return Err(TargetError::Unresolvable);
    }
    for addr in &addrs {
        check_address(addr.ip(), policy)?;
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const STRICT: TargetPolicy = TargetPolicy {
        allow_loopback: false,
        allow_private: false,
    };
    const DEV: TargetPolicy = TargetPolicy {
        allow_loopback: true,
        allow_private: false,
    };

    #[test]
    fn registration_refuses_what_is_known_to_be_inside() {
        assert!(check_endpoint("https://rp.example.com/cb", STRICT).is_ok());
        assert_eq!(
            check_endpoint("http://rp.example.com/cb", STRICT),
            Err(TargetError::NotHttps)
        );
        assert_eq!(
            check_endpoint("http://rp.example.com/cb", DEV),
            Err(TargetError::NotHttps),
            "plain http only to loopback"
        );
        for inside in [
            "https://10.1.2.3/cb",
            "https://172.16.0.1/cb",
            "https://192.168.1.1/cb",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/cb",
            "https://0.0.0.0/cb",
            "https://[fd00::1]/cb",
            "https://[fe80::1]/cb",
            "https://[::ffff:10.0.0.1]/cb",
        ] {
            assert_eq!(
                check_endpoint(inside, DEV),
                Err(TargetError::NonPublic),
                "{inside}"
            );
        }
        for lo in [
            "https://127.0.0.1/cb",
            "https://localhost/cb",
            "https://api.localhost./cb",
            "https://[::1]/cb",
        ] {
            assert_eq!(
                check_endpoint(lo, STRICT),
                Err(TargetError::Loopback),
                "{lo}"
            );
        }
        assert!(check_endpoint("http://127.0.0.1:8080/cb", DEV).is_ok());
        assert_eq!(
            check_endpoint("https://user:pw@rp.example.com/cb", STRICT),
            Err(TargetError::Malformed)
        );
        assert_eq!(
            check_endpoint("not a url", STRICT),
            Err(TargetError::Malformed)
        );
        assert_eq!(
            check_endpoint("ftp://rp.example.com/cb", STRICT),
            Err(TargetError::NotHttps)
        );
    }

    #[test]
    fn resolved_addresses_are_checked_too() {
        assert_eq!(
            check_address("10.0.0.7".parse().unwrap(), DEV),
            Err(TargetError::NonPublic)
        );
        assert!(
            check_address(
                "10.0.0.7".parse().unwrap(),
                TargetPolicy {
                    allow_loopback: false,
                    allow_private: true
                }
            )
            .is_ok()
        );
        assert!(check_address("93.184.216.34".parse().unwrap(), STRICT).is_ok());
        assert!(check_address("2606:2800:220:1::1".parse().unwrap(), STRICT).is_ok());
        assert_eq!(
            check_address("::ffff:127.0.0.1".parse().unwrap(), STRICT),
            Err(TargetError::Loopback)
        );
    }

    #[test]
    fn ipv6_forms_embedding_a_refused_ipv4_address_are_refused() {
        let refused = |addr: &str| check_address(addr.parse().unwrap(), DEV);
        for inside in [
            // IPv4-compatible.
            "::10.0.0.1",
            "::127.0.0.1",
            "::169.254.169.254",
            // IPv4-mapped.
            "::ffff:192.168.0.1",
            "::ffff:169.254.169.254",
            // 6to4 with a private, loopback or metadata address.
            "2002:0a00:0001::1",
            "2002:7f00:0001::",
            "2002:a9fe:a9fe::1",
            // Teredo with a private server, or a client (stored inverted) that is private.
            "2001:0:0a00:0001::1",
            "2001:0:5ef5:79fb:0:0:f5ff:fffe", // client 10.0.0.1
            "2001:0:5ef5:79fb:0:0:80ff:fffe", // client 127.0.0.1
        ] {
            assert_eq!(refused(inside), Err(TargetError::NonPublic), "{inside}");
        }
        assert_eq!(
            check_address("::ffff:127.0.0.1".parse().unwrap(), STRICT),
            Err(TargetError::Loopback)
        );
        // The same forms embedding public addresses are fine.
        for outside in [
            "::93.184.216.34",
            "::ffff:93.184.216.34",
            "2002:5db8:d822::1",
            "2001:0:5db8:d822:0:0:a247:27dd", // server 93.184.216.34, client 93.184.216.34
        ] {
            assert!(refused(outside).is_ok(), "{outside}");
        }
    }

    #[test]
    fn site_local_and_discard_ranges_are_refused() {
        for inside in [
            "fec0::1",
            "feff::1",
            "fed0:1::1",
            "100::",
            "100::ffff:ffff:ffff:ffff",
        ] {
            assert_eq!(
                check_address(inside.parse().unwrap(), DEV),
                Err(TargetError::NonPublic),
                "{inside}"
            );
            assert_eq!(
                check_endpoint(&format!("https://[{inside}]/cb"), DEV),
                Err(TargetError::NonPublic),
                "{inside}"
            );
        }
        assert!(check_address("100:0:0:1::".parse().unwrap(), STRICT).is_ok());
        assert!(check_address("ff00::1".parse().unwrap(), STRICT).is_err());
    }

    /// A name server that never answers does not hold a delivery past its lease: the lookup
    /// is given up after `RESOLVE_TIMEOUT`, well within the delivery's own timeout.
    #[tokio::test(start_paused = true)]
    async fn a_lookup_that_never_answers_is_given_up_in_time() {
        let url = Url::parse("https://hooks.example.com/cb").unwrap();
        let started = tokio::time::Instant::now();
        let resolved = tokio::time::timeout(
            Duration::from_secs(60),
            resolve_with(&url, STRICT, |_, _| std::future::pending()),
        )
        .await
        .expect("the lookup is given up before a minute");
        assert_eq!(resolved, Err(TargetError::ResolutionTimedOut));
        assert_eq!(started.elapsed(), RESOLVE_TIMEOUT);
        assert!(RESOLVE_TIMEOUT < crate::domain::webhooks::DELIVERY_TIMEOUT);
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_delivery() {
        let url = Url::parse("https://localhost:9/cb").unwrap();
        assert_eq!(
            resolve_endpoint(&url, STRICT).await,
            Err(TargetError::Loopback)
        );
        let addrs = resolve_endpoint(&Url::parse("http://127.0.0.1:9/cb").unwrap(), DEV)
            .await
            .unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:9".parse().unwrap()]);
    }
}
