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
//! Schemes and hosts are compared without regard to case (an allowed
//! origin is lower-cased once, when parsed; the request's is read in place,
//! so the check allocates nothing); internationalised names are matched in
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

use std::fmt::{self, Write as _};
use std::net::Ipv6Addr;
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
    /// This host name (or IPv4 address) and no other, in lower case.
    Exact(Box<str>),
    /// This IPv6 address, however the request writes it.
    V6(Ipv6Addr),
    /// Any host that ends in `.` + this suffix (the suffix itself
    /// excluded), in lower case.
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

/// A request's origin borrowed from its header: checked as
/// [`RequestOrigin`] is, but neither lower-cased nor copied, so that the
/// check on the request path allocates nothing ([`AllowedOrigin`]s are
/// lower-cased once, when parsed, and compared without regard to case).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OriginRef<'a> {
    /// A valid scheme, in the case it was sent.
    scheme: &'a str,
    host: HostRef<'a>,
    /// `None` for the scheme's default port.
    port: Option<u16>,
}

/// A valid host, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostRef<'a> {
    /// A host name or an IPv4 address, in the case it was sent.
    Name(&'a str),
    /// A bracketed IPv6 address: compared as an address, as it may be
    /// written many ways (`[::1]`, `[0:0::1]`).
    V6(Ipv6Addr),
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
        origin
            .borrowed()
            .is_some_and(|origin| self.matches_ref(&origin))
    }

    /// Whether a request from `origin` is allowed: the request path's
    /// check, comparing bytes without regard to ASCII case (both sides
    /// were checked to be ASCII).
    pub(crate) fn matches_ref(&self, origin: &OriginRef<'_>) -> bool {
        if !self.scheme.eq_ignore_ascii_case(origin.scheme) || self.port != origin.port {
            return false;
        }
        match (&self.host, origin.host) {
            (Host::Exact(host), HostRef::Name(name)) => host.eq_ignore_ascii_case(name),
            (Host::V6(addr), HostRef::V6(other)) => *addr == other,
            (Host::Under(suffix), HostRef::Name(name)) => is_under(name, suffix),
            _ => false,
        }
    }

    /// Whether this is a wildcard (`scheme://*.domain`).
    pub fn is_wildcard(&self) -> bool {
        matches!(self.host, Host::Under(_))
    }
}

/// Whether `host` ends in `.` + `suffix` (any case) with something before
/// the dot. `host` was parsed, so what is before the dot is one or more
/// whole labels.
fn is_under(host: &str, suffix: &str) -> bool {
    let (host, suffix) = (host.as_bytes(), suffix.as_bytes());
    let Some(dot) = host.len().checked_sub(suffix.len() + 1) else {
        return false;
    };
    dot > 0 && host[dot] == b'.' && host[dot + 1..].eq_ignore_ascii_case(suffix)
}

impl FromStr for AllowedOrigin {
    type Err = InvalidOrigin;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, authority) = split_origin(s).ok_or(InvalidOrigin::Malformed)?;
        let (host, port) = split_port(authority).ok_or(InvalidOrigin::Malformed)?;
        let port = port.filter(|&p| Some(p) != default_port(scheme));
        let host = if let Some(suffix) = host.strip_prefix("*.") {
            match parse_host(suffix).ok_or(InvalidOrigin::BadWildcard)? {
                HostRef::Name(suffix) if suffix.split('.').count() >= 2 && !is_ipv4(suffix) => {
                    Host::Under(suffix.to_ascii_lowercase().into())
                }
                _ => return Err(InvalidOrigin::BadWildcard),
            }
        } else if host.contains('*') {
            return Err(InvalidOrigin::BadWildcard);
        } else {
            // Normalised here, once, so that requests are compared as sent.
            match parse_host(host).ok_or(InvalidOrigin::Malformed)? {
                HostRef::Name(name) => Host::Exact(name.to_ascii_lowercase().into()),
                HostRef::V6(addr) => Host::V6(addr),
            }
        };
        Ok(Self {
            scheme: scheme.to_ascii_lowercase().into(),
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
            Host::V6(addr) => write!(f, "[{addr}]")?,
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
        OriginRef::parse_origin(value).map(OriginRef::canonical)
    }

    /// The origin of a `Referer` URL (`scheme://host[:port]/...`): its
    /// scheme, host and port. `None` for a relative or malformed URL, or
    /// one with user info.
    pub fn parse_referer(value: &str) -> Option<Self> {
        OriginRef::parse_referer(value).map(OriginRef::canonical)
    }

    /// The request's origin: `Origin` if present (exactly once), else the
    /// origin of `Referer` (exactly once). `None` when neither gives one.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        OriginRef::of(headers).map(OriginRef::canonical)
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

    /// The borrowed form; `None` only if the fields were not made by the
    /// parser (they always are).
    fn borrowed(&self) -> Option<OriginRef<'_>> {
        let host = match self.host.strip_prefix('[') {
            Some(v6) => HostRef::V6(v6.strip_suffix(']')?.parse().ok()?),
            None => HostRef::Name(&self.host),
        };
        Some(OriginRef {
            scheme: &self.scheme,
            host,
            port: self.port,
        })
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

impl<'a> OriginRef<'a> {
    /// See [`RequestOrigin::parse_origin`].
    pub(crate) fn parse_origin(value: &'a str) -> Option<Self> {
        let (scheme, authority) = split_origin(value)?;
        Self::from_parts(scheme, authority)
    }

    /// See [`RequestOrigin::parse_referer`].
    pub(crate) fn parse_referer(value: &'a str) -> Option<Self> {
        if value.len() > MAX_ORIGIN_LEN * 4 {
            return None;
        }
        let (scheme, rest) = value.split_once("://")?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let prefix = &value[..scheme.len() + 3 + end];
        let (scheme, authority) = split_origin(prefix)?;
        Self::from_parts(scheme, authority)
    }

    /// See [`RequestOrigin::of`].
    pub(crate) fn of(headers: &'a HeaderMap) -> Option<Self> {
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

    fn from_parts(scheme: &'a str, authority: &'a str) -> Option<Self> {
        let (host, port) = split_port(authority)?;
        let port = port.filter(|&p| Some(p) != default_port(scheme));
        Some(Self {
            scheme,
            host: parse_host(host)?,
            port,
        })
    }

    /// The canonical, owned form.
    fn canonical(self) -> RequestOrigin {
        RequestOrigin {
            scheme: self.scheme.to_ascii_lowercase().into(),
            host: match self.host {
                HostRef::Name(name) => name.to_ascii_lowercase().into(),
                HostRef::V6(addr) => format!("[{addr}]").into(),
            },
            port: self.port,
        }
    }
}

/// The canonical form (as [`RequestOrigin`] displays), written without a
/// copy: for logs.
impl fmt::Display for OriginRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lower = |f: &mut fmt::Formatter<'_>, s: &str| {
            s.chars()
                .try_for_each(|c| f.write_char(c.to_ascii_lowercase()))
        };
        lower(f, self.scheme)?;
        f.write_str("://")?;
        match self.host {
            HostRef::Name(name) => lower(f, name)?,
            HostRef::V6(addr) => write!(f, "[{addr}]")?,
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// `scheme://authority` with a valid scheme (in the case it was sent) and
/// nothing after the authority.
fn split_origin(s: &str) -> Option<(&str, &str)> {
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
    Some((scheme, authority))
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
/// with `-`, at most 63 characters each) or an IPv4 address, as sent, or a
/// bracketed IPv6 address. A trailing dot is refused: browsers drop it.
fn parse_host(host: &str) -> Option<HostRef<'_>> {
    if host.is_empty() || host.len() > 253 + 2 {
        return None;
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse().ok().map(HostRef::V6);
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
    Some(HostRef::Name(host))
}

fn is_ipv4(host: &str) -> bool {
    host.parse::<std::net::Ipv4Addr>().is_ok()
}

/// The scheme's default port, the scheme in any case.
fn default_port(scheme: &str) -> Option<u16> {
    let is = |name: &str| scheme.eq_ignore_ascii_case(name);
    if is("https") || is("wss") {
        Some(443)
    } else if is("http") || is("ws") {
        Some(80)
    } else {
        None
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

    /// The rule as it was before the request path stopped allocating:
    /// both sides lower-cased into new strings, then compared. Kept as
    /// the model the allocation-free matcher is checked against.
    mod model {
        use http::header::{ORIGIN, REFERER};
        use http::HeaderMap;

        // Splitting the port did not change: the model shares it.
        use super::super::{split_port, InvalidOrigin, MAX_ORIGIN_LEN};

        #[derive(Debug, PartialEq)]
        enum Host {
            Exact(String),
            Under(String),
        }

        #[derive(Debug, PartialEq)]
        pub(super) struct Allowed {
            scheme: String,
            host: Host,
            port: Option<u16>,
        }

        #[derive(Debug, PartialEq)]
        pub(super) struct Origin {
            scheme: String,
            host: String,
            port: Option<u16>,
        }

        impl Allowed {
            pub(super) fn parse(s: &str) -> Result<Self, InvalidOrigin> {
                let (scheme, authority) = split_origin(s).ok_or(InvalidOrigin::Malformed)?;
                let (host, port) = split_port(authority).ok_or(InvalidOrigin::Malformed)?;
                let port = port.filter(|&p| Some(p) != default_port(&scheme));
                let host = if let Some(suffix) = host.strip_prefix("*.") {
                    let suffix = parse_host(suffix).ok_or(InvalidOrigin::BadWildcard)?;
                    if suffix.starts_with('[')
                        || suffix.split('.').count() < 2
                        || suffix.parse::<std::net::Ipv4Addr>().is_ok()
                    {
                        return Err(InvalidOrigin::BadWildcard);
                    }
                    Host::Under(suffix)
                } else if host.contains('*') {
                    return Err(InvalidOrigin::BadWildcard);
                } else {
                    Host::Exact(parse_host(host).ok_or(InvalidOrigin::Malformed)?)
                };
                Ok(Self { scheme, host, port })
            }

            pub(super) fn matches(&self, origin: &Origin) -> bool {
                if self.scheme != origin.scheme || self.port != origin.port {
                    return false;
                }
                match &self.host {
                    Host::Exact(host) => *host == origin.host,
                    Host::Under(suffix) => origin
                        .host
                        .strip_suffix(&**suffix)
                        .and_then(|rest| rest.strip_suffix('.'))
                        .is_some_and(|rest| !rest.is_empty()),
                }
            }

            pub(super) fn display(&self) -> String {
                let host = match &self.host {
                    Host::Exact(host) => host.clone(),
                    Host::Under(suffix) => format!("*.{suffix}"),
                };
                with_port(format!("{}://{host}", self.scheme), self.port)
            }
        }

        impl Origin {
            pub(super) fn parse_origin(value: &str) -> Option<Self> {
                let (scheme, authority) = split_origin(value)?;
                Self::from_parts(scheme, authority)
            }

            pub(super) fn parse_referer(value: &str) -> Option<Self> {
                if value.len() > MAX_ORIGIN_LEN * 4 {
                    return None;
                }
                let (scheme, rest) = value.split_once("://")?;
                let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                let prefix = &value[..scheme.len() + 3 + end];
                let (scheme, authority) = split_origin(prefix)?;
                Self::from_parts(scheme, authority)
            }

            pub(super) fn of(headers: &HeaderMap) -> Option<Self> {
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
                    host: parse_host(host)?,
                    scheme,
                    port,
                })
            }

            pub(super) fn display(&self) -> String {
                with_port(format!("{}://{}", self.scheme, self.host), self.port)
            }
        }

        fn with_port(s: String, port: Option<u16>) -> String {
            match port {
                Some(port) => format!("{s}:{port}"),
                None => s,
            }
        }

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

        fn default_port(scheme: &str) -> Option<u16> {
            match scheme {
                "https" | "wss" => Some(443),
                "http" | "ws" => Some(80),
                _ => None,
            }
        }
    }

    /// A scheme as a browser, a typo or an attacker may write it.
    fn any_scheme() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "https", "HTTPS", "Https", "http", "HTTP", "ws", "WSS", "wss", "ftp", "a+b.c-d",
                "1http", "ht tp", "",
            ])
            .prop_map(str::to_owned),
            "[a-zA-Z][a-zA-Z0-9+.-]{0,6}",
        ]
    }

    /// A host name in mixed case (sometimes invalid), an IPv4 or IPv6
    /// address in its many spellings, or junk.
    fn any_host() -> impl Strategy<Value = String> {
        let label = "[a-zA-Z0-9]([a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?";
        prop_oneof![
            4 => prop::collection::vec(label, 1..4).prop_map(|l| l.join(".")),
            1 => prop::sample::select(vec![
                "[::1]", "[0:0::1]", "[0:0:0:0:0:0:0:1]", "[::FFFF:1.2.3.4]", "[::ffff:102:304]",
                "[fe80::1]", "[FE80::1]", "[::1", "[zz::1]", "1.2.3.4", "01.2.3.4", "-a.b",
                "a-.b", "a..b", "a.b.", ".a.b", "*", "*.", "a*.b.c", "xn--bcher-kva.example",
                "XN--BCHER-KVA.example", "ex ample.com", "\u{212a}.example.com",
            ])
            .prop_map(str::to_owned),
            1 => "\\PC{0,12}",
        ]
    }

    fn any_port() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "", "", "", ":", ":443", ":80", ":8080", ":0", ":65535", ":65536", ":00443", ":x",
        ])
        .prop_map(str::to_owned)
    }

    /// `scheme://host[:port]`, sometimes a wildcard, sometimes with a tail.
    fn any_origin() -> impl Strategy<Value = String> {
        (
            any_scheme(),
            prop::sample::select(vec!["", "", "", "*.", "*"]),
            any_host(),
            any_port(),
            prop::sample::select(vec!["", "", "", "/", "/path?q#f", "?x", "@evil"]),
        )
            .prop_map(|(scheme, star, host, port, tail)| {
                format!("{scheme}://{star}{host}{port}{tail}")
            })
    }

    /// Flips the case of the ASCII letters `flips` picks.
    fn recase(s: &str, flips: &[bool]) -> String {
        s.chars()
            .zip(flips.iter().cycle())
            .map(|(c, &flip)| match (flip, c.is_ascii_lowercase()) {
                (false, _) => c,
                (true, true) => c.to_ascii_uppercase(),
                (true, false) => c.to_ascii_lowercase(),
            })
            .collect()
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

        /// The allocation-free matcher decides as the old rule did, for
        /// patterns and origins of every shape: parsing (the same patterns
        /// refused, for the same reason, and the same canonical forms) and
        /// matching, with `Origin` or `Referer`, in any case.
        #[test]
        fn the_matcher_decides_as_the_old_rule(
            pattern in any_origin(),
            origin in any_origin(),
            related in (any_scheme(), any_host(), any_port()),
            flips in prop::collection::vec(any::<bool>(), 1..8),
        ) {
            let parsed = pattern.parse::<AllowedOrigin>();
            let old = model::Allowed::parse(&pattern);
            prop_assert_eq!(parsed.as_ref().err(), old.as_ref().err());
            if let (Ok(new), Ok(old)) = (&parsed, &old) {
                prop_assert_eq!(new.to_string(), old.display());
            }
            // Origins made from the pattern's own parts match often; a
            // host put under the pattern's domain exercises wildcards.
            let (scheme, host, port) = related;
            let domain = pattern.split_once("://").map_or("", |(_, rest)| rest).trim_start_matches("*.");
            let mut origins = vec![
                origin.clone(),
                recase(&pattern, &flips),
                recase(&pattern.replacen("*.", "a.", 1), &flips),
                recase(&pattern.replacen("*.", "A.b-c.", 1), &flips),
                format!("{scheme}://{host}{port}"),
                format!("{scheme}://{host}.{domain}"),
                format!("{scheme}://{domain}{port}"),
                format!("{}://x{domain}", pattern.split("://").next().unwrap_or("")),
            ];
            let referers: Vec<String> = origins.iter().map(|o| format!("{o}/a/b?c#d")).collect();
            origins.extend(referers);
            for origin in &origins {
                let new = OriginRef::parse_origin(origin);
                let old_origin = model::Origin::parse_origin(origin);
                prop_assert_eq!(new.map(|o| o.to_string()), old_origin.as_ref().map(|o| o.display()));
                prop_assert_eq!(
                    RequestOrigin::parse_origin(origin).map(|o| o.to_string()),
                    old_origin.as_ref().map(|o| o.display())
                );
                let new_referer = OriginRef::parse_referer(origin);
                let old_referer = model::Origin::parse_referer(origin);
                prop_assert_eq!(
                    new_referer.map(|o| o.to_string()),
                    old_referer.as_ref().map(|o| o.display())
                );
                if let (Ok(allowed), Ok(model)) = (&parsed, &old) {
                    for (new, old) in [(new, &old_origin), (new_referer, &old_referer)] {
                        let expected = old.as_ref().is_some_and(|o| model.matches(o));
                        prop_assert_eq!(
                            new.is_some_and(|o| allowed.matches_ref(&o)),
                            expected,
                            "{} against {}", origin, pattern
                        );
                        // The public, owned path agrees too.
                        let owned = new.map(OriginRef::canonical);
                        prop_assert_eq!(owned.is_some_and(|o| allowed.matches(&o)), expected);
                    }
                }
            }
        }

        /// Reading the headers picks the same origin as the old rule.
        #[test]
        fn the_headers_are_read_as_before(
            origins in prop::collection::vec(any_origin(), 0..3),
            referers in prop::collection::vec(any_origin().prop_map(|o| format!("{o}/p")), 0..3),
        ) {
            let mut headers = HeaderMap::new();
            for (name, values) in [(ORIGIN, &origins), (REFERER, &referers)] {
                for value in values {
                    if let Ok(value) = http::HeaderValue::from_str(value) {
                        headers.append(name.clone(), value);
                    }
                }
            }
            prop_assert_eq!(
                OriginRef::of(&headers).map(|o| o.to_string()),
                model::Origin::of(&headers).map(|o| o.display())
            );
        }
    }
}
