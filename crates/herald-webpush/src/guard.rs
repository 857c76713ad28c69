//! The SSRF guard: which push endpoints Herald may connect to.
//!
//! Endpoints are URLs chosen by whoever registers a pusher, so a gateway that posts anywhere lets
//! clients probe the operator's internal network. Two checks:
//!
//! - [`EndpointPolicy::check_endpoint`], before anything is encrypted, judges what the URL itself
//!   says: the scheme (`https`, or `http` only when allow-listed), no user info, a literal address,
//!   and a host that can be a TLS server name. A refusal here is intrinsic to the subscription (no
//!   network answer can change it), so the caller rejects the pushkey.
//! - [`EndpointPolicy`] as the upstream client's [`ConnectPolicy`] judges what the network says:
//!   the client resolves the name, the policy drops every non-public address the allow-list does
//!   not cover, and the client dials only an address the policy returned. Checking the address
//!   actually connected to defeats DNS rebinding and names such as `localhost`. Its refusal
//!   (`UpstreamError::Refused`) is **not** a dead token: a split-horizon resolver or a brief DNS
//!   hijack must not make Herald reject every web pushkey (and the homeserver delete every web
//!   pusher).
//! - Through an outbound proxy the proxy resolves names, so only the host can be judged
//!   ([`ConnectPolicy::allow_proxied`]): address literals as above, and `localhost` names are
//!   refused; other names pass, and the proxy is where egress to internal networks is stopped.
//!
//! `allowed_endpoints` has two kinds of entries, each optionally with `:port` (`:*` = any):
//!
//! - IP addresses and CIDR blocks (`10.1.2.0/24`, `127.0.0.1:8080`, `[fd00::/8]:443`) are matched
//!   against the address connected to (and an address literal in the URL). They are the only way
//!   to reach a non-public address, and they also allow plain `http://` to a literal address.
//! - Host-name globs (`push.internal`, `*.corp.example:8080`) allow plain `http://` for matching
//!   names. They never unlock a non-public address by themselves: a name is whatever DNS says.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use herald_core::BuildError;
use herald_core::Glob;
use herald_upstream::{ConnectPolicy, Refusal, Target};
use http::Uri;
use ipnet::IpNet;

/// An endpoint URL the policy refuses for what it says itself: no network answer will ever make
/// it deliverable, so the device is rejected.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(pub(crate) String);

/// A push endpoint that passed the pre-check.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// Where to send.
    pub(crate) uri: Uri,
    /// `scheme://host[:port]` (RFC 6454): the VAPID audience, and safe to log.
    pub(crate) origin: String,
}

/// What may be connected to.
#[derive(Debug, Default)]
pub(crate) struct EndpointPolicy {
    /// IP/CIDR entries: matched against addresses.
    nets: Vec<(IpNet, Option<u16>)>,
    /// Host-name globs: allow plain http for matching names.
    hosts: Vec<(Glob, Option<u16>)>,
}

impl EndpointPolicy {
    /// Compiles the `allowed_endpoints` entries; an entry that is neither an address/CIDR block
    /// nor a host-name pattern is refused, naming it.
    pub(crate) fn new(entries: &[String]) -> Result<Self, BuildError> {
        let mut policy = EndpointPolicy::default();
        for entry in entries {
            match parse_entry(entry) {
                Ok(Entry::Net(net, port)) => policy.nets.push((net, port)),
                Ok(Entry::Host(glob, port)) => policy.hosts.push((glob, port)),
                Err(why) => {
                    return Err(BuildError::new(format!(
                        "webpush: `allowed_endpoints` entry `{entry}` {why}"
                    )))
                }
            }
        }
        Ok(policy)
    }

    /// Checks an endpoint URL before anything is done for it.
    pub(crate) fn check_endpoint(&self, endpoint: &str) -> Result<Endpoint, Refused> {
        let uri: Uri = endpoint.parse().map_err(|_| Refused("endpoint is not a URL".into()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(Refused("endpoint scheme is not https".into())),
        };
        let authority = uri.authority().ok_or_else(|| Refused("endpoint has no host".into()))?;
        if authority.as_str().contains('@') {
            return Err(Refused("endpoint carries user info".into()));
        }
        let host = authority.host().to_ascii_lowercase();
        if host.is_empty() {
            return Err(Refused("endpoint has no host".into()));
        }
        let default_port = if https { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default_port);
        if port == 0 {
            return Err(Refused("endpoint port is 0".into()));
        }
        match ip_literal(&host) {
            Some(ip) => {
                let allowed = self.allows_ip(ip, port);
                if !https && !allowed {
                    return Err(Refused(format!(
                        "plain http endpoint {host}:{port} is not in allowed_endpoints"
                    )));
                }
                if let (Some(class), false) = (non_public(ip), allowed) {
                    return Err(Refused(format!("endpoint address {host} is {class}")));
                }
            }
            None => {
                // `127.1`, `0x7f000001`, `2130706433`, `0177.0.0.1`: the resolver reads these as
                // IPv4 addresses (so they would dodge the literal check above), and rustls
                // refuses them as server names, so they could never work over https either.
                if legacy_numeric_host(&host) {
                    return Err(Refused(format!(
                        "endpoint host {host} is a numeric address that is not a dotted-quad \
                         IPv4 address"
                    )));
                }
                if https && rustls::pki_types::ServerName::try_from(host.as_str()).is_err() {
                    return Err(Refused(format!(
                        "endpoint host {host} can never be a TLS server name"
                    )));
                }
                if !https && !self.allows_host(&host, port) {
                    return Err(Refused(format!(
                        "plain http endpoint {host}:{port} is not in allowed_endpoints"
                    )));
                }
            }
        }
        let origin = origin(https, &host, port);
        // One spelling per origin: the VAPID audience, and the upstream client's pool and cap key
        // (the client would rewrite the authority itself; this spares it the work).
        let canonical = &origin[if https { "https://".len() } else { "http://".len() }..];
        let uri = if authority.as_str() == canonical {
            uri
        } else {
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            Uri::builder()
                .scheme(if https { "https" } else { "http" })
                .authority(canonical)
                .path_and_query(path)
                .build()
                .map_err(|_| Refused("endpoint is not a URL".into()))?
        };
        Ok(Endpoint { uri, origin })
    }

    /// Whether a host-name glob allows plain http to `host` on `port`.
    fn allows_host(&self, host: &str, port: u16) -> bool {
        self.hosts.iter().any(|(glob, p)| p.is_none_or(|p| p == port) && glob.matches(host))
    }

    /// Whether an IP/CIDR entry covers `ip` on `port`.
    fn allows_ip(&self, ip: IpAddr, port: u16) -> bool {
        // `::ffff:127.0.0.1` reaches 127.0.0.1: judge the IPv4 address.
        let ip = ip.to_canonical();
        self.nets.iter().any(|(net, p)| p.is_none_or(|p| p == port) && net.contains(&ip))
    }
}

impl ConnectPolicy for EndpointPolicy {
    /// Keeps the resolved addresses that are public or allow-listed (in their canonical form,
    /// which is what gets dialled); refuses, naming the first refused address, when none is left.
    fn allow(
        &self,
        target: &Target<'_>,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        let mut refused = None;
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter_map(|addr| {
                let ip = addr.ip().to_canonical();
                if let Some(class) = non_public(ip) {
                    if !self.allows_ip(ip, target.port) {
                        refused.get_or_insert_with(|| {
                            format!("{} resolves to {ip}, which is {class}", target.host)
                        });
                        return None;
                    }
                }
                Some(SocketAddr::new(ip, addr.port()))
            })
            .collect();
        match (allowed.is_empty(), refused) {
            (true, Some(reason)) => Err(Refusal::new(reason)),
            // No address at all: the client reports that as it would without a policy.
            _ => Ok(allowed),
        }
    }

    fn allow_proxied(&self, target: &Target<'_>) -> Result<(), Refusal> {
        if let Some(ip) = target.ip() {
            let ip = ip.to_canonical();
            if let (Some(class), false) = (non_public(ip), self.allows_ip(ip, target.port)) {
                return Err(Refusal::new(format!("{} is {class}", target.host)));
            }
            return Ok(());
        }
        // RFC 6761: `localhost` names are the proxy's own loopback, whatever its resolver says.
        let host = target.host.strip_suffix('.').unwrap_or(target.host);
        if host == "localhost" || host.ends_with(".localhost") {
            return Err(Refusal::new(format!(
                "{host} is loopback (through the proxy, names are resolved by the proxy)"
            )));
        }
        Ok(())
    }
}

/// `scheme://host[:port]`, the port only when it is not the scheme's default (RFC 6454).
pub(crate) fn origin(https: bool, host: &str, port: u16) -> String {
    let (scheme, default_port) = if https { ("https", 443) } else { ("http", 80) };
    if port == default_port {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

enum Entry {
    Net(IpNet, Option<u16>),
    Host(Glob, Option<u16>),
}

/// Parses one `allowed_endpoints` entry; `Err` completes "entry `…` …".
fn parse_entry(entry: &str) -> Result<Entry, String> {
    let text = entry.trim().to_ascii_lowercase();
    if text.is_empty() {
        return Err("is empty".into());
    }
    if text.contains("://") {
        return Err(
            "must be an address, a CIDR block or a host name, without scheme or path".into()
        );
    }
    // Split off `:port`: `[v6]:port`, `v4:port`, `name:port`; a bare IPv6 address or block has
    // several colons and no port.
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or("has `[` without `]`")?;
        match after {
            "" => (inside.to_owned(), None),
            after => {
                (inside.to_owned(), Some(after.strip_prefix(':').ok_or("has junk after `]`")?))
            }
        }
    } else if text.matches(':').count() == 1 {
        let (host, port) = text.split_once(':').ok_or("cannot happen")?;
        (host.to_owned(), Some(port))
    } else {
        (text.clone(), None)
    };
    let port = match port {
        None | Some("*") => None,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => return Err(format!("has an invalid port `{p}` (a number, or `*` for any)")),
        },
    };
    if let Ok(net) = host.parse::<IpNet>() {
        return Ok(Entry::Net(net.trunc(), port));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Entry::Net(IpNet::from(ip.to_canonical()), port));
    }
    let neither = "is neither an IP address or CIDR block (e.g. `10.1.2.0/24`, `127.0.0.1:8080`, \
                   `[fd00::/8]:443`) nor a host-name pattern (e.g. `push.internal`, \
                   `*.corp.example:8080`)";
    if host.contains('/') || host.contains(':') {
        return Err(neither.into());
    }
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'*' | b'?'))
    {
        return Err(neither.into());
    }
    // `10.1.2.*` used to match a host *name* that merely starts with those digits
    // (`10.1.2.attacker.example`) and unlock whatever it resolved to. Address patterns are CIDR
    // blocks now; a glob that looks like one is refused rather than silently meaning a name.
    let numeric_label =
        |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit() || b == b'*' || b == b'?');
    let labels: Vec<&str> = host.split('.').collect();
    if labels.iter().any(|l| l.bytes().any(|b| b.is_ascii_digit()))
        && labels.iter().all(|l| numeric_label(l) || *l == "*")
    {
        return Err(format!(
            "looks like an address pattern; write addresses as a CIDR block, e.g. `{}`",
            cidr_hint(&labels)
        ));
    }
    Ok(Entry::Host(Glob::ascii_case_insensitive(&host), port))
}

/// `10.1.2.*` → `10.1.2.0/24`, as a migration hint.
fn cidr_hint(labels: &[&str]) -> String {
    let fixed: Vec<&str> =
        labels.iter().take_while(|l| l.bytes().all(|b| b.is_ascii_digit())).copied().collect();
    let mut octets: Vec<String> = fixed.iter().take(4).map(|s| (*s).to_owned()).collect();
    let prefix = octets.len() * 8;
    octets.resize(4, "0".to_owned());
    format!("{}/{prefix}", octets.join("."))
}

/// The address in a URL host, IPv6 in brackets as URLs write it. Only the strict forms: a
/// dotted-quad IPv4 address without leading zeros, or a bracketed IPv6 address.
fn ip_literal(host: &str) -> Option<IpAddr> {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A host whose last label is a number (decimal, or `0x` hex): URL parsers and `getaddrinfo`
/// read it as an IPv4 address in one of the legacy forms (`127.1`, `2130706433`, `0x7f000001`,
/// `0177.0.0.1`). Called only for hosts that are not a strict dotted quad.
fn legacy_numeric_host(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = host.rsplit('.').next().unwrap_or(host);
    let hex = last.strip_prefix("0x").is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
}

/// Why `ip` is not a public unicast address, or `None` when it is.
pub(crate) fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    Some(match ip.octets() {
        [0, ..] => "unspecified",
        [127, ..] => "loopback",
        [10, ..] | [172, 16..=31, ..] | [192, 168, ..] => "private",
        [169, 254, ..] => "link-local",
        [100, 64..=127, ..] => "shared address space (CGNAT)",
        [192, 0, 0, _] | [198, 18..=19, ..] => "reserved",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "reserved for documentation",
        [224..=239, ..] => "multicast",
        [240..=255, ..] => "reserved",
        _ => return None,
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    let s = ip.segments();
    Some(match s {
        [0, 0, 0, 0, 0, 0, 0, 0] => "unspecified",
        [0, 0, 0, 0, 0, 0, 0, 1] => "loopback",
        // NAT64 (RFC 6052): the IPv4 address in the last 32 bits is what gets reached.
        [0x64, 0xff9b, 0, 0, 0, 0, a, b] => {
            return non_public_v4(Ipv4Addr::from((u32::from(a) << 16) | u32::from(b)))
        }
        // 6to4 (RFC 3056): likewise, in bits 16..48.
        [0x2002, a, b, ..] => {
            return non_public_v4(Ipv4Addr::from((u32::from(a) << 16) | u32::from(b)))
        }
        [a, ..] if a & 0xfe00 == 0xfc00 => "private (unique local)",
        [a, ..] if a & 0xffc0 == 0xfe80 => "link-local",
        [a, ..] if a & 0xffc0 == 0xfec0 => "private (site-local)",
        [a, ..] if a & 0xff00 == 0xff00 => "multicast",
        [0x2001, 0xdb8, ..] => "reserved for documentation",
        // 2001::/23: IETF protocol assignments (Teredo, benchmarking, ORCHID …).
        [0x2001, b, ..] if b < 0x200 => "reserved",
        // Global unicast is 2000::/3; everything else (IPv4-compatible, discard …) is special.
        [a, ..] if a & 0xe000 != 0x2000 => "reserved",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(patterns: &[&str]) -> EndpointPolicy {
        EndpointPolicy::new(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>())
            .expect("patterns")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn classifies_addresses() {
        for (addr, class) in [
            ("127.0.0.1", "loopback"),
            ("10.0.0.1", "private"),
            ("172.31.255.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "shared address space (CGNAT)"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.1.2.3", "private"),
            ("fd00::1", "private (unique local)"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:7f00:1::", "loopback"),
            ("2001:db8::1", "reserved for documentation"),
            ("2001::1", "reserved"),
            ("::127.0.0.1", "reserved"),
        ] {
            assert_eq!(non_public(ip(addr)), Some(class), "{addr}");
        }
        for addr in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(non_public(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn pre_check_refuses_with_reasons() {
        let p = policy(&[]);
        let refused = |url: &str| p.check_endpoint(url).expect_err(url).0;
        assert!(refused("ftp://push.example/x").contains("scheme"));
        assert!(refused("/relative").contains("scheme"));
        assert!(refused("not a url").contains("not a URL"));
        assert!(refused("http://push.example/x").contains("plain http"));
        assert!(refused("https://user:pw@push.example/x").contains("user info"));
        assert!(refused("https://127.0.0.1/x").contains("loopback"));
        assert!(refused("https://10.0.0.1/x").contains("private"));
        assert!(refused("https://169.254.169.254/latest").contains("link-local"));
        assert!(refused("https://[::1]:8443/x").contains("loopback"));
        assert!(refused("https://[::ffff:127.0.0.1]/x").contains("loopback"));
        // A name passes the pre-check; the connect policy judges what it resolves to.
        p.check_endpoint("https://localhost/x").expect("names are resolved later");
    }

    #[test]
    fn legacy_numeric_hosts_and_impossible_server_names_are_intrinsic_faults() {
        // Even an allow-list that covers loopback does not make these deliverable: the resolver
        // would read them as addresses, and rustls refuses them as server names.
        let p = policy(&["127.0.0.0/8", "*"]);
        for url in [
            "https://127.1/x",
            "https://0x7f000001/x",
            "https://2130706433/x",
            "https://0177.0.0.1/x",
            "https://0x7f.1/x",
            "https://1.2.3.4.5/x",
            "https://push.example.123/x",
            "http://127.1/x",
        ] {
            let reason = p.check_endpoint(url).expect_err(url).0;
            assert!(reason.contains("numeric address"), "{url}: {reason}");
        }
        let long_label = format!("https://{}.example/x", "a".repeat(64));
        for url in ["https://bad-.example/x", "https://a..example/x", long_label.as_str()] {
            let reason = p.check_endpoint(url).expect_err(url).0;
            assert!(reason.contains("TLS server name"), "{url}: {reason}");
        }
        for ok in ["https://fcm.googleapis.com/x", "https://0x7f.example/x", "https://a1.b2/x"] {
            p.check_endpoint(ok).expect(ok);
        }
        assert!(p.check_endpoint("https://127.0.0.1/x").is_ok(), "dotted quad, allow-listed");
    }

    #[test]
    fn origins_omit_default_ports() {
        let p = policy(&["127.0.0.1:*"]);
        let e = p.check_endpoint("https://Push.Example:443/wpush/v2/abc?x=1").expect("ok");
        assert_eq!(e.origin, "https://push.example");
        assert_eq!(e.uri, "https://push.example/wpush/v2/abc?x=1", "one spelling per origin");
        let e = p.check_endpoint("https://push.example").expect("no path");
        assert_eq!(e.uri, "https://push.example/");
        let e = p.check_endpoint("https://push.example:8443/x").expect("ok");
        assert_eq!(e.origin, "https://push.example:8443");
        let e = p.check_endpoint("http://127.0.0.1:9000/x").expect("allowed");
        assert_eq!(e.origin, "http://127.0.0.1:9000");
    }

    #[test]
    fn address_entries_match_addresses_and_name_entries_only_allow_plain_http() {
        let p = policy(&["127.0.0.1:*", "[::1]:8443", "*.internal", "10.0.0.0/24", "fd00::/8"]);
        assert!(p.check_endpoint("http://127.0.0.1:1234/x").is_ok());
        assert!(p.check_endpoint("http://[::ffff:127.0.0.1]:1234/x").is_ok(), "canonical form");
        assert!(p.check_endpoint("https://[::1]:8443/x").is_ok());
        assert!(p.check_endpoint("https://[::1]:8444/x").is_err(), "other port");
        assert!(p.check_endpoint("http://push.internal/x").is_ok());
        assert!(p.check_endpoint("http://PUSH.INTERNAL:81/x").is_ok());
        assert!(p.check_endpoint("https://10.0.0.7/x").is_ok(), "in the block, any port");
        assert!(p.check_endpoint("https://10.0.1.1/x").is_err());
        assert!(p.check_endpoint("https://[fd00::5]/x").is_ok());
        assert!(p.allows_ip(ip("127.0.0.1"), 80));
        assert!(p.allows_ip(ip("::ffff:127.0.0.1"), 80));
        assert!(!p.allows_ip(ip("127.0.0.2"), 80));
        assert!(p.allows_ip(ip("10.0.0.255"), 1));
        // A host glob never covers an address.
        assert!(!p.allows_ip(ip("192.168.0.1"), 80));
        let p = policy(&["localhost"]);
        assert!(p.check_endpoint("http://localhost/x").is_ok(), "plain http for the name");
        assert!(!p.allows_ip(ip("127.0.0.1"), 80), "but not its loopback address");
    }

    #[test]
    fn entries_that_are_neither_are_refused_naming_them() {
        for (entry, hint) in [
            ("10.1.2.*", "10.1.2.0/24"),
            ("10.*", "10.0.0.0/8"),
            ("192.168.?.1", "192.168.0.0/16"),
            ("https://push.example/", "without scheme"),
            ("10.0.0.0/33", "neither"),
            ("push.example:http", "invalid port"),
            ("push.example:0", "invalid port"),
            ("push example", "neither"),
            ("[::1", "`]`"),
            ("", "empty"),
        ] {
            let e = EndpointPolicy::new(&[entry.to_owned()]).expect_err(entry).to_string();
            assert!(e.contains(&format!("`{entry}`")), "names the entry: {e}");
            assert!(e.contains(hint), "{entry}: {e}");
        }
        // Still fine: names with digits, any-port forms, IPv6 with and without brackets.
        policy(&["push1.example", "*:*", "*", "127.0.0.1:*", "[::1]:*", "::1", "[fd00::/8]:443"]);
    }

    fn target(scheme: &'static str, host: &'static str, port: u16) -> Target<'static> {
        Target { scheme, host, port }
    }

    fn sock(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn the_connect_policy_keeps_public_and_allow_listed_addresses_only() {
        let p = policy(&["10.0.0.0/24:8443"]);
        let t = target("https", "push.example", 8443);
        // Resolver order is kept; refused addresses are dropped; mapped ones are canonical.
        let allowed = p
            .allow(
                &t,
                vec![
                    sock("127.0.0.1:8443"),
                    sock("[::ffff:10.0.0.5]:8443"),
                    sock("8.8.8.8:8443"),
                    sock("[fd00::1]:8443"),
                ],
            )
            .expect("some allowed");
        assert_eq!(allowed, vec![sock("10.0.0.5:8443"), sock("8.8.8.8:8443")]);
        // Only refused addresses: a refusal naming the host, the address and why.
        let refusal =
            p.allow(&t, vec![sock("127.0.0.1:8443"), sock("[::1]:8443")]).expect_err("all refused");
        assert_eq!(refusal.reason(), "push.example resolves to 127.0.0.1, which is loopback");
        // The allow-list is per port.
        let t = target("https", "push.example", 443);
        assert!(p.allow(&t, vec![sock("10.0.0.5:443")]).is_err());
    }

    #[test]
    fn through_a_proxy_literals_and_localhost_names_are_judged() {
        let p = policy(&["10.0.0.0/8"]);
        assert!(p.allow_proxied(&target("https", "push.example", 443)).is_ok());
        assert!(p.allow_proxied(&target("https", "8.8.8.8", 443)).is_ok());
        assert!(p.allow_proxied(&target("https", "10.1.2.3", 443)).is_ok(), "allow-listed");
        for host in ["127.0.0.1", "::1", "169.254.169.254", "localhost", "a.localhost."] {
            let refusal = p.allow_proxied(&target("https", host, 443)).expect_err(host);
            assert!(refusal.reason().contains(host.trim_end_matches('.')), "{refusal}");
        }
    }

    #[test]
    fn globs() {
        let g = Glob::ascii_case_insensitive("*.Example.org");
        assert!(g.matches("push.example.org"));
        assert!(g.matches("a.b.example.org"));
        assert!(!g.matches("example.org"));
        assert!(Glob::ascii_case_insensitive("*").matches("anything"));
        assert!(Glob::ascii_case_insensitive("push?.x").matches("push1.x"));
    }
}
