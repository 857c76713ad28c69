//! The recipient: an email pusher's pushkey is the address, and it is untrusted input.
//!
//! A pushkey that is not a plain address (`user@domain`, nothing else) or whose domain is not
//! allowed can never be delivered through this app, so the backend rejects it (the homeserver
//! deletes the pusher). Refused on purpose, beyond what RFC 5321 allows: IP-literal domains
//! (`user@[10.0.0.1]`) and single-label domains (`root@localhost`), which would make the relay
//! deliver to itself or to internal hosts.

use herald_core::Glob;
use lettre::Address;

/// A recipient that passed every check.
#[derive(Debug, Clone)]
pub(crate) struct Recipient {
    /// The address as given (Unicode domains stay Unicode: the relay's SMTPUTF8 decides).
    pub(crate) address: Address,
    /// The address lower-cased, with the domain in ASCII: one key per mailbox for the rate
    /// limit, whatever case or domain spelling a pusher used.
    pub(crate) key: String,
}

/// Why a pushkey cannot be a recipient: a reason code from a fixed set (a metric label).
pub(crate) type Refusal = &'static str;

/// The longest address SMTP carries (RFC 5321 §4.5.3.1.3: a 256-octet path minus `<>`).
const MAX_ADDRESS: usize = 254;

/// Reads a pushkey as a recipient address.
pub(crate) fn parse(pushkey: &str) -> Result<Recipient, Refusal> {
    if pushkey.is_empty() || pushkey.len() > MAX_ADDRESS {
        return Err("invalid_address");
    }
    // No display names, comments, quoted spaces or line breaks: a pusher registers an address.
    if pushkey.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>')) {
        return Err("invalid_address");
    }
    let address: Address = pushkey.parse().map_err(|_| "invalid_address")?;
    let domain = address.domain();
    if domain.starts_with('[') || domain.parse::<std::net::IpAddr>().is_ok() {
        return Err("invalid_address");
    }
    let ascii = idna::domain_to_ascii(domain).map_err(|_| "invalid_address")?;
    let labels: Vec<&str> = ascii.split('.').collect();
    let tld = labels.last().copied().unwrap_or_default();
    if labels.len() < 2
        || labels.iter().any(|l| l.is_empty())
        || tld.bytes().all(|b| b.is_ascii_digit())
    {
        return Err("invalid_address");
    }
    let key = format!("{}@{ascii}", address.user().to_lowercase());
    Ok(Recipient { address, key })
}

/// `allowed_domains`: globs over the ASCII form of the recipient's domain.
#[derive(Debug, Clone, Default)]
pub(crate) struct DomainPolicy {
    globs: Vec<Glob>,
}

impl DomainPolicy {
    /// From the configured patterns; an empty list allows any domain.
    pub(crate) fn new(patterns: &[String]) -> Result<Self, String> {
        let mut globs = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            let pattern = pattern.trim().trim_end_matches('.');
            if pattern.is_empty() || pattern.contains(['@', '/', ' ']) {
                return Err(format!("`{pattern}` is not a domain pattern like `*.example.org`"));
            }
            // Unicode labels as the ASCII form recipients are compared in; wildcards stay.
            let ascii = pattern
                .split('.')
                .map(|label| {
                    if label.is_ascii() {
                        Ok(label.to_ascii_lowercase())
                    } else {
                        idna::domain_to_ascii(label)
                            .map_err(|_| format!("`{pattern}` is not a valid domain"))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(".");
            globs.push(Glob::ascii_case_insensitive(&ascii));
        }
        Ok(DomainPolicy { globs })
    }

    /// True when the list is empty: any domain may receive mail.
    pub(crate) fn allows_any(&self) -> bool {
        self.globs.is_empty()
    }

    /// Whether `recipient`'s domain may receive mail.
    pub(crate) fn allows(&self, recipient: &Recipient) -> bool {
        let domain = recipient.key.rsplit_once('@').map_or("", |(_, d)| d);
        self.allows_any() || self.globs.iter().any(|g| g.matches(domain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_addresses_parse_and_key_by_mailbox() {
        let r = parse("Alice.Smith@Example.ORG").unwrap();
        assert_eq!(r.address.to_string(), "Alice.Smith@Example.ORG");
        assert_eq!(r.key, "alice.smith@example.org");
        let r = parse("bob+matrix@bücher.de").unwrap();
        assert_eq!(r.key, "bob+matrix@xn--bcher-kva.de");
        assert_eq!(r.address.domain(), "bücher.de");
    }

    #[test]
    fn anything_but_a_plain_address_is_refused() {
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.org",
            "Alice <alice@example.org>",
            "alice@example.org\r\nBcc: all@example.org",
            "alice@example.org ",
            "\"a b\"@example.org",
            "alice@[127.0.0.1]",
            "alice@127.0.0.1",
            "root@localhost",
            "alice@example..org",
            "alice@example.123",
            "a@b@example.org",
            &format!("{}@example.org", "a".repeat(250)),
        ] {
            assert_eq!(parse(bad).map(|r| r.key), Err("invalid_address"), "{bad:?}");
        }
    }

    #[test]
    fn domains_are_allowed_by_glob_in_ascii() {
        let policy = DomainPolicy::new(&["example.org".into(), "*.Corp.example".into()]).unwrap();
        let allows = |a: &str| policy.allows(&parse(a).unwrap());
        assert!(allows("a@example.org"));
        assert!(allows("a@EXAMPLE.org"));
        assert!(allows("a@mail.corp.example"));
        assert!(!allows("a@corp.example"));
        assert!(!allows("a@example.org.evil.test"));
        assert!(!allows("a@notexample.org"));
        let unicode = DomainPolicy::new(&["bücher.de".into()]).unwrap();
        assert!(unicode.allows(&parse("a@BÜCHER.de").unwrap()));
        assert!(unicode.allows(&parse("a@xn--bcher-kva.de").unwrap()));
        assert!(DomainPolicy::new(&[]).unwrap().allows(&parse("a@any.test").unwrap()));
        assert!(DomainPolicy::new(&["a@b.c".into()]).is_err());
        assert!(DomainPolicy::new(&[" ".into()]).is_err());
    }
}
