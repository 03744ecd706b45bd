//! Origins, for keys meant to sit in a browser: a record's allowed origins
//! ([`KeyRecord::allowed_origins`](crate::record::KeyRecord::allowed_origins))
//! and the origin a request comes from.
//!
//! An [`AllowedOrigin`] is either exact, `https://app.example.com` (a
//! scheme, a host and an optional port), or a wildcard,
//! `https://*.example.com`: any host *under* `example.com`, at any depth
//! (`app.example.com`, `eu.app.example.com`), never `example.com` itself
//! (list it too if it is allowed) and never a host that merely contains
//! it (`example.com.evil.io`, `evilexample.com`). The scheme and the port
//! must match as well; a default port (`:443` for `https`, `:80` for
//! `http`) is the same as none, as browsers write origins without it.
//! Hosts are compared in lower case; internationalised names are matched in
//! their ASCII (`xn--`) form, which is what browsers send. A wildcard
//! needs at least two labels after `*.` (`https://*.com` is refused), but
//! keyward knows no public-suffix list: `https://*.co.uk` is accepted and
//! means every site there.
//!
//! [`AuthLayer`](super::AuthLayer) reads the request's origin from
//! `Origin`, or, when the request has none, from the scheme, host and port
//! of `Referer` (browsers leave `Origin` off same-origin `GET`s). A
//! missing, empty or `null` origin (sandboxed frames, `file:` pages,
//! privacy-minded redirects), one sent twice, or one that does not parse
//! is refused like a wrong one.
//!
//! **What an origin check is worth.** A browser sets `Origin` and `Referer`
//! itself and a page's script cannot change them, so the check stops
//! *another website* from using a key copied out of your pages. It does not
//! stop a *script*: curl, a server or a browser extension sends any header
//! it likes. A publishable key is an identifier for quotas and usage, never
//! a secret; give it only scopes that are harmless in anyone's hands.
//!
//! # Example
//!
//! ```
//! use keyward::auth::origin::{AllowedOrigin, RequestOrigin};
//!
//! let allowed: AllowedOrigin = "https://*.example.com".parse()?;
//! let origin = |s: &str| RequestOrigin::parse_origin(s).unwrap();
//! assert!(allowed.matches(&origin("https://app.example.com")));
//! assert!(allowed.matches(&origin("https://eu.app.example.com:443")));
//! assert!(!allowed.matches(&origin("https://example.com")));
//! assert!(!allowed.matches(&origin("https://example.com.evil.io")));
//! assert!(!allowed.matches(&origin("https://evilexample.com")));
//! assert!(!allowed.matches(&origin("http://app.example.com")));
//! assert!(RequestOrigin::parse_origin("null").is_none());
//!
//! // Referer: only its scheme, host and port count.
//! let from_referer = RequestOrigin::parse_referer("https://app.example.com/cart?id=7").unwrap();
//! assert_eq!(from_referer.to_string(), "https://app.example.com");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::str::FromStr;

use http::header::{ORIGIN, REFERER};
use http::HeaderMap;

/// The longest origin (or `Referer` prefix) read; longer is refused.
pub const MAX_ORIGIN_LEN: usize = 512;

/// An origin a key may be used from: exact or `scheme://*.domain[:port]`;
/// see the [module docs](self).
///
/// Parsed from and displayed as its string; with feature `serde` it is
/// that string too.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AllowedOrigin {
    scheme: Box<str>,
    host: Host,
    port: Option<u16>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Host {
    /// This host and no other.
    Exact(Box<str>),
    /// Any host that ends in `.` + this suffix (the suffix itself excluded).
    Under(Box<str>),
}

/// The origin a request came from: a scheme, a host and a port, in the
/// canonical form browsers send (lower case, no default port).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestOrigin {
    scheme: Box<str>,
    host: Box<str>,
    port: Option<u16>,
}

/// Why a string is not an [`AllowedOrigin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidOrigin {
    /// Not `scheme://host[:port]`: a path, a query, user info, a bad port,
    /// characters a host cannot have, or longer than [`MAX_ORIGIN_LEN`].
    #[error(
        "an allowed origin is `scheme://host[:port]` or `scheme://*.domain[:port]`, with no path"
    )]
    Malformed,
    /// A wildcard other than a whole first label before two or more labels
    /// (`https://*.example.com`).
    #[error("a wildcard origin is `scheme://*.domain.tld`: `*` as the whole first label, then at least two labels")]
    BadWildcard,
}

impl AllowedOrigin {
    /// Whether a request from `origin` is allowed.
    pub fn matches(&self, origin: &RequestOrigin) -> bool {
        if self.scheme != origin.scheme || self.port != origin.port {
            return false;
        }
        match &self.host {
            Host::Exact(host) => **host == *origin.host,
            Host::Under(suffix) => origin
                .host
                .strip_suffix(&**suffix)
                .and_then(|rest| rest.strip_suffix('.'))
                // The request's host was parsed: a non-empty rest is one or
                // more whole labels.
                .is_some_and(|rest| !rest.is_empty()),
        }
    }

    /// Whether this is a wildcard (`scheme://*.domain`).
    pub fn is_wildcard(&self) -> bool {
        matches!(self.host, Host::Under(_))
    }
}

impl FromStr for AllowedOrigin {
    type Err = InvalidOrigin;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, authority) = split_origin(s).ok_or(InvalidOrigin::Malformed)?;
        let (host, port) = split_port(authority).ok_or(InvalidOrigin::Malformed)?;
        let port = port.filter(|&p| Some(p) != default_port(&scheme));
        let host = if let Some(suffix) = host.strip_prefix("*.") {
            let suffix = parse_host(suffix).ok_or(InvalidOrigin::BadWildcard)?;
            if suffix.starts_with('[') || suffix.split('.').count() < 2 || is_ipv4(&suffix) {
                return Err(InvalidOrigin::BadWildcard);
            }
            Host::Under(suffix.into())
        } else if host.contains('*') {
            return Err(InvalidOrigin::BadWildcard);
        } else {
            Host::Exact(parse_host(host).ok_or(InvalidOrigin::Malformed)?.into())
        };
        Ok(Self {
            scheme: scheme.into(),
            host,
            port,
        })
    }
}

impl TryFrom<&str> for AllowedOrigin {
    type Error = InvalidOrigin;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for AllowedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        match &self.host {
            Host::Exact(host) => f.write_str(host)?,
            Host::Under(suffix) => write!(f, "*.{suffix}")?,
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for AllowedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AllowedOrigin({self})")
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for AllowedOrigin {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for AllowedOrigin {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl RequestOrigin {
    /// The value of an `Origin` header; `None` for `null` and anything
    /// that is not `scheme://host[:port]`.
    pub fn parse_origin(value: &str) -> Option<Self> {
        let (scheme, authority) = split_origin(value)?;
        Self::from_parts(scheme, authority)
    }

    /// The origin of a `Referer` URL (`scheme://host[:port]/...`): its
    /// scheme, host and port. `None` for a relative or malformed URL, or
    /// one with user info.
    pub fn parse_referer(value: &str) -> Option<Self> {
        if value.len() > MAX_ORIGIN_LEN * 4 {
            return None;
        }
        let (scheme, rest) = value.split_once("://")?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let prefix = &value[..scheme.len() + 3 + end];
        let (scheme, authority) = split_origin(prefix)?;
        Self::from_parts(scheme, authority)
    }

    /// The request's origin: `Origin` if present (exactly once), else the
    /// origin of `Referer` (exactly once). `None` when neither gives one.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let mut origins = headers.get_all(ORIGIN).iter();
        if let Some(origin) = origins.next() {
            if origins.next().is_some() {
                return None;
            }
            return Self::parse_origin(origin.to_str().ok()?);
        }
        let mut referers = headers.get_all(REFERER).iter();
        let referer = referers.next()?;
        if referers.next().is_some() {
            return None;
        }
        Self::parse_referer(referer.to_str().ok()?)
    }

    fn from_parts(scheme: String, authority: &str) -> Option<Self> {
        let (host, port) = split_port(authority)?;
        let port = port.filter(|&p| Some(p) != default_port(&scheme));
        Some(Self {
            host: parse_host(host)?.into(),
            scheme: scheme.into(),
            port,
        })
    }

    /// The scheme, in lower case.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The host, in lower case.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, `None` for the scheme's default.
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

impl fmt::Display for RequestOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// `scheme://authority` with a valid scheme (lower-cased) and nothing
/// after the authority.
fn split_origin(s: &str) -> Option<(String, &str)> {
    if s.len() > MAX_ORIGIN_LEN {
        return None;
    }
    let (scheme, authority) = s.split_once("://")?;
    let mut chars = scheme.chars();
    if !chars.next()?.is_ascii_alphabetic()
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', '\\']) {
        return None;
    }
    Some((scheme.to_ascii_lowercase(), authority))
}

/// `host[:port]`, the port 1 to 65535 in decimal (an empty port is none).
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    // A bracketed IPv6 address holds colons of its own.
    let colon = match authority.rfind(']') {
        Some(close) => authority[close..].find(':').map(|i| close + i),
        None => authority.rfind(':'),
    };
    let Some(colon) = colon else {
        return Some((authority, None));
    };
    let (host, port) = (&authority[..colon], &authority[colon + 1..]);
    if port.is_empty() {
        return Some((host, None));
    }
    if port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
    Some((host, Some(port)))
}

/// A host name (labels of letters, digits and `-`, not starting or ending
/// with `-`, at most 63 characters each), an IPv4 address, or a bracketed
/// IPv6 address; lower-cased. A trailing dot is refused: browsers drop it.
fn parse_host(host: &str) -> Option<String> {
    if host.is_empty() || host.len() > 253 + 2 {
        return None;
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let addr: std::net::Ipv6Addr = inner.parse().ok()?;
        return Some(format!("[{addr}]"));
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !host.split('.').all(valid_label) {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

fn is_ipv4(host: &str) -> bool {
    host.parse::<std::net::Ipv4Addr>().is_ok()
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "https" | "wss" => Some(443),
        "http" | "ws" => Some(80),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn allowed(s: &str) -> AllowedOrigin {
        s.parse().unwrap()
    }

    fn origin(s: &str) -> RequestOrigin {
        RequestOrigin::parse_origin(s).unwrap()
    }

    #[test]
    fn exact_origins() {
        let a = allowed("https://App.Example.com");
        assert_eq!(a.to_string(), "https://app.example.com");
        assert!(a.matches(&origin("https://app.example.com")));
        assert!(a.matches(&origin("HTTPS://APP.EXAMPLE.COM:443")));
        assert!(!a.matches(&origin("https://app.example.com:8443")));
        assert!(!a.matches(&origin("http://app.example.com")));
        assert!(!a.matches(&origin("https://app.example.co")));
        assert!(!a.matches(&origin("https://x.app.example.com")));
        let local = allowed("http://localhost:3000");
        assert!(local.matches(&origin("http://localhost:3000")));
        assert!(!local.matches(&origin("http://localhost")));
        let v6 = allowed("http://[::1]:8080");
        assert!(v6.matches(&origin("http://[0:0::1]:8080")));
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let a = allowed("https://*.example.com");
        assert!(a.is_wildcard());
        assert!(a.matches(&origin("https://a.example.com")));
        assert!(a.matches(&origin("https://a.b.example.com")));
        for refused in [
            "https://example.com",
            "https://example.com.evil.io",
            "https://evilexample.com",
            "https://a.evilexample.com",
            "https://a.example.com.evil.io",
            "http://a.example.com",
            "https://a.example.com:444",
        ] {
            assert!(!a.matches(&origin(refused)), "{refused}");
        }
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in [
            "example.com",
            "https://",
            "https://example.com/",
            "https://example.com/path",
            "https://user@example.com",
            "https://example.com:0",
            "https://example.com:65536",
            "https://exa mple.com",
            "https://-a.example.com",
            "https://a..example.com",
            "https://example.com.",
            "1https://example.com",
        ] {
            assert_eq!(
                bad.parse::<AllowedOrigin>(),
                Err(InvalidOrigin::Malformed),
                "{bad}"
            );
        }
        for bad in [
            "https://*",
            "https://*.com",
            "https://a.*.com",
            "https://*example.com",
            "https://*.*.example.com",
            "https://*.1.2.3.4",
            "https://*.[::1]",
        ] {
            assert_eq!(
                bad.parse::<AllowedOrigin>(),
                Err(InvalidOrigin::BadWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn request_origins() {
        assert!(RequestOrigin::parse_origin("null").is_none());
        assert!(RequestOrigin::parse_origin("").is_none());
        assert!(RequestOrigin::parse_origin("https://a.com/").is_none());
        let r = RequestOrigin::parse_referer("https://A.com:443/x/y?z#w").unwrap();
        assert_eq!(r.to_string(), "https://a.com");
        assert_eq!(
            RequestOrigin::parse_referer("https://a.com")
                .unwrap()
                .to_string(),
            "https://a.com"
        );
        assert!(RequestOrigin::parse_referer("/relative").is_none());
        assert!(RequestOrigin::parse_referer("https://u:p@a.com/").is_none());

        let headers = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            map
        };
        let of = |pairs: &[(&str, &str)]| RequestOrigin::of(&headers(pairs)).map(|o| o.to_string());
        assert_eq!(
            of(&[("origin", "https://a.com")]).as_deref(),
            Some("https://a.com")
        );
        assert_eq!(
            of(&[("referer", "https://b.com/p")]).as_deref(),
            Some("https://b.com")
        );
        // Origin wins; a null Origin is not replaced by the Referer.
        assert_eq!(
            of(&[("origin", "https://a.com"), ("referer", "https://b.com/")]).as_deref(),
            Some("https://a.com")
        );
        assert_eq!(
            of(&[("origin", "null"), ("referer", "https://b.com/")]),
            None
        );
        assert_eq!(
            of(&[("origin", "https://a.com"), ("origin", "https://a.com")]),
            None
        );
        assert_eq!(of(&[]), None);
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
    }

    fn domain() -> impl Strategy<Value = String> {
        prop::collection::vec(label(), 1..4).prop_map(|labels| labels.join("."))
    }

    proptest! {
        /// A wildcard matches exactly the hosts that end in `.` + its
        /// domain, whatever else the host holds.
        #[test]
        fn wildcard_matches_iff_strict_subdomain(
            suffix in prop::collection::vec(label(), 2..4).prop_map(|l| l.join(".")),
            host in domain(),
        ) {
            let pattern = allowed(&format!("https://*.{suffix}"));
            let under = format!(".{suffix}");
            let matches = |host: String| pattern.matches(&origin(&format!("https://{host}")));
            prop_assert_eq!(matches(host.clone()), host.ends_with(&under));
            // Hosts built to look like the domain never match.
            let glued = format!("x{suffix}");
            prop_assert!(!matches(glued.clone()));
            let appended = format!("{host}.x{suffix}");
            prop_assert!(!matches(appended));
            let lookalike = format!("{suffix}.{host}");
            prop_assert_eq!(matches(lookalike.clone()), lookalike.ends_with(&under));
            prop_assert!(!matches(suffix.clone()));
            let sub = format!("{host}.{suffix}");
            prop_assert!(matches(sub));
        }

        /// An exact origin matches only itself (up to case and default port).
        #[test]
        fn exact_matches_only_itself(a in domain(), b in domain(), port in proptest::option::of(1u16..)) {
            let with_port = |h: &str| match port {
                Some(p) => format!("https://{h}:{p}"),
                None => format!("https://{h}"),
            };
            let pattern = allowed(&with_port(&a));
            let upper = origin(&with_port(&a.to_uppercase()));
            prop_assert!(pattern.matches(&upper));
            let other = origin(&with_port(&b));
            prop_assert_eq!(pattern.matches(&other), a == b);
        }

        /// Parsing never panics, and what parses displays as something
        /// that parses to the same pattern.
        #[test]
        fn parse_round_trips(s in "\\PC{0,40}", t in "[a-z*.:/\\[\\]0-9@-]{0,40}") {
            for input in [s, t] {
                if let Ok(pattern) = input.parse::<AllowedOrigin>() {
                    prop_assert_eq!(pattern.to_string().parse::<AllowedOrigin>(), Ok(pattern));
                }
                let _ = RequestOrigin::parse_origin(&input);
                let _ = RequestOrigin::parse_referer(&input);
            }
        }
    }
}
