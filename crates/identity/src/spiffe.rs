//! Workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Parsing is strict on purpose: an identity is compared byte for byte against
//! certificates and allow-lists, so two spellings of one workload must not exist.

use std::fmt;
use std::str::FromStr;

/// The identity of one Kubernetes service account in one trust domain.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    // Byte offsets into `uri`, so accessors borrow instead of allocating.
    trust_domain_end: usize,
    namespace: (usize, usize),
    service_account_start: usize,
}

const SCHEME: &str = "spiffe://";
/// SPIFFE caps the whole ID at 2048 bytes; the parts below are far tighter.
const MAX_URI_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// A namespace is a DNS label (RFC 1123).
const MAX_NAMESPACE_LEN: usize = 63;
/// A service account name is a DNS subdomain (RFC 1123).
const MAX_SERVICE_ACCOUNT_LEN: usize = 253;

/// Why a string is not a Plexus SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("a SPIFFE ID must start with `spiffe://` (lowercase)")]
    Scheme,
    #[error("a SPIFFE ID is at most {MAX_URI_LEN} bytes")]
    TooLong,
    #[error("trust domain {0:?} must be 1-255 characters of a-z, 0-9, `.`, `-`, `_`")]
    TrustDomain(String),
    #[error("path must be exactly /ns/<namespace>/sa/<service-account>, got {0:?}")]
    Path(String),
    #[error(
        "namespace {0:?} must be a DNS label: 1-63 of a-z, 0-9, `-`, starting and ending alphanumeric"
    )]
    Namespace(String),
    #[error(
        "service account {0:?} must be a DNS subdomain: 1-253 of a-z, 0-9, `-`, `.` in non-empty labels"
    )]
    ServiceAccount(String),
}

impl SpiffeId {
    /// Builds the identity of `namespace/service_account` in `trust_domain`.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    /// The whole URI, as it appears in a certificate's URI SAN.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.trust_domain_end]
    }

    pub fn namespace(&self) -> &str {
        &self.uri[self.namespace.0..self.namespace.1]
    }

    pub fn service_account(&self) -> &str {
        &self.uri[self.service_account_start..]
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_URI_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::Scheme)?;
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !is_trust_domain(trust_domain) {
            return Err(SpiffeIdError::TrustDomain(trust_domain.to_owned()));
        }
        // Any character outside the segment charsets (`?`, `#`, `%`, `:`, `@`,
        // whitespace, uppercase) fails below, so queries, fragments, ports,
        // userinfo and percent-encoding are all refused.
        let segments: Vec<&str> = path.split('/').collect();
        let [ns_key, namespace, sa_key, service_account] = segments[..] else {
            return Err(SpiffeIdError::Path(format!("/{path}")));
        };
        if ns_key != "ns" || sa_key != "sa" {
            return Err(SpiffeIdError::Path(format!("/{path}")));
        }
        if !is_dns_label(namespace, MAX_NAMESPACE_LEN) {
            return Err(SpiffeIdError::Namespace(namespace.to_owned()));
        }
        if !is_dns_subdomain(service_account) {
            return Err(SpiffeIdError::ServiceAccount(service_account.to_owned()));
        }
        let trust_domain_end = SCHEME.len() + trust_domain.len();
        let namespace_start = trust_domain_end + "/ns/".len();
        let namespace_end = namespace_start + namespace.len();
        Ok(Self {
            uri: s.to_owned(),
            trust_domain_end,
            namespace: (namespace_start, namespace_end),
            service_account_start: namespace_end + "/sa/".len(),
        })
    }
}

fn is_trust_domain(s: &str) -> bool {
    (1..=MAX_TRUST_DOMAIN_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
        // `.` and `..` alone would read as path traversal in logs and configs.
        && s.bytes().any(|b| b != b'.')
}

fn is_dns_label(s: &str, max: usize) -> bool {
    let bytes = s.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=max).contains(&bytes.len())
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
}

fn is_dns_subdomain(s: &str) -> bool {
    // Empty labels (`a..b`, leading or trailing `.`) are refused, so `.` and
    // `..` can never be a service account.
    s.len() <= MAX_SERVICE_ACCOUNT_LEN
        && s.split('.')
            .all(|label| is_dns_label(label, MAX_SERVICE_ACCOUNT_LEN))
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_a_canonical_id() {
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "web");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(
            SpiffeId::new("cluster.local", "shop", "web").unwrap(),
            id,
            "new and parse agree"
        );
    }

    #[test]
    fn accepts_dotted_service_accounts_and_odd_trust_domains() {
        let id: SpiffeId = "spiffe://prod_eu-1.example/ns/a-b/sa/x.y-z"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "prod_eu-1.example");
        assert_eq!(id.service_account(), "x.y-z");
    }

    #[test]
    fn refuses_nasty_inputs() {
        let long_td = format!("spiffe://{}/ns/a/sa/b", "a".repeat(256));
        let long_ns = format!("spiffe://td/ns/{}/sa/b", "a".repeat(64));
        let long_sa = format!("spiffe://td/ns/a/sa/{}", "a".repeat(254));
        let huge = format!("spiffe://td/ns/a/sa/{}", "a".repeat(3000));
        let nasty = [
            "",
            "spiffe://",
            "spiffe:/cluster.local/ns/a/sa/b",
            "SPIFFE://cluster.local/ns/a/sa/b",
            "https://cluster.local/ns/a/sa/b",
            " spiffe://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b ",
            "spiffe://cluster.local/ns/a/sa/b\n",
            "spiffe:///ns/a/sa/b",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://cluster.local:443/ns/a/sa/b",
            "spiffe://user@cluster.local/ns/a/sa/b",
            "spiffe://./ns/a/sa/b",
            "spiffe://../ns/a/sa/b",
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe://cluster.local/ns/a/sa/",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/ns/a/sa/b/",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local//ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b?x=1",
            "spiffe://cluster.local/ns/a/sa/b#frag",
            "spiffe://cluster.local/ns/a/sa/b%2F",
            "spiffe://cluster.local/ns/../sa/b",
            "spiffe://cluster.local/ns/a/sa/..",
            "spiffe://cluster.local/ns/a/sa/.",
            "spiffe://cluster.local/ns/a/sa/a..b",
            "spiffe://cluster.local/ns/a/sa/.b",
            "spiffe://cluster.local/ns/a.b/sa/c",
            "spiffe://cluster.local/ns/-a/sa/b",
            "spiffe://cluster.local/ns/a-/sa/b",
            "spiffe://cluster.local/ns/A/sa/b",
            "spiffe://cluster.local/ns/a/sa/B",
            "spiffe://cluster.local/sa/b/ns/a",
            "spiffe://cluster.local/NS/a/SA/b",
            "spiffe://cluster.local/ns/a/sa/b\0",
            "spiffe://cluster.local/ns/a/sa/ü",
            "spiffe://clüster/ns/a/sa/b",
            "spiffe://cluster.local\\ns\\a\\sa\\b",
            &long_td,
            &long_ns,
            &long_sa,
            &huge,
        ];
        for input in nasty {
            assert!(
                input.parse::<SpiffeId>().is_err(),
                "{input:?} must be refused"
            );
        }
    }

    #[test]
    fn errors_name_the_bad_part() {
        assert_eq!(
            "spiffe://td/ns/a/sa/".parse::<SpiffeId>(),
            Err(SpiffeIdError::ServiceAccount(String::new()))
        );
        assert_eq!(
            "spiffe://td/ns/A/sa/b".parse::<SpiffeId>(),
            Err(SpiffeIdError::Namespace("A".into()))
        );
        assert_eq!(
            "spiffe://TD/ns/a/sa/b".parse::<SpiffeId>(),
            Err(SpiffeIdError::TrustDomain("TD".into()))
        );
        assert_eq!(
            "http://td/ns/a/sa/b".parse::<SpiffeId>(),
            Err(SpiffeIdError::Scheme)
        );
    }

    #[test]
    fn limits_are_inclusive() {
        let td = "a".repeat(255);
        let ns = "b".repeat(63);
        let sa = format!("{}.{}", "c".repeat(63), "d".repeat(189));
        assert_eq!(sa.len(), 253);
        let id = SpiffeId::new(&td, &ns, &sa).unwrap();
        assert_eq!(id.service_account(), sa);
        assert_eq!(id.namespace(), ns);
        assert_eq!(id.trust_domain(), td);
    }
}
