//! The client's address, for keys restricted to networks
//! ([`KeyRecord::allowed_networks`](crate::record::KeyRecord::allowed_networks)).
//!
//! [`AuthLayer`](super::AuthLayer) takes the address of the connection's
//! peer from, in order:
//!
//! 1. a [`ClientAddr`] in the request's extensions (insert one from your own
//!    middleware or server glue);
//! 2. axum's `ConnectInfo<SocketAddr>` (feature `axum`; serve with
//!    `into_make_service_with_connect_info::<SocketAddr>()`), or, as axum's
//!    extractor does, its test double `MockConnectInfo<SocketAddr>`.
//!
//! Forwarding headers are believed only when that peer lies in one of the
//! [`TrustedProxies`] given to
//! [`AuthLayer::trusted_proxies`](super::AuthLayer::trusted_proxies); by
//! default none is trusted and `X-Forwarded-For` / `Forwarded` are ignored,
//! since any client can send them. When the peer is trusted, the client is
//! found by walking `X-Forwarded-For` (or, if absent, the `for=` elements of
//! `Forwarded`) from the right, skipping trusted hops: the first untrusted
//! address is the client. (The leftmost entry is whatever the client
//! claimed; trusting it, as some limiters do, lets anyone pick an address.)
//! An entry that is not an IP address, where the walk must read one, leaves
//! the client unknown (never the proxy in front of it).
//!
//! A key with allowed networks is refused (`403`, reason
//! [`Restricted`](crate::reject::RejectReason::Restricted)) when the client
//! address is unknown or outside them.
//!
//! # Example
//!
//! ```
//! use std::net::IpAddr;
//! use http::Request;
//! use keyward::auth::client::{ClientAddr, TrustedProxies};
//!
//! let proxies = TrustedProxies::new(["10.0.0.0/8".parse()?]);
//! let request = Request::get("/")
//!     .header("x-forwarded-for", "198.51.100.7, 203.0.113.9, 10.0.0.2")
//!     .extension(ClientAddr("10.0.0.1".parse()?))
//!     .body(())?;
//! // 10.0.0.1 and 10.0.0.2 are trusted proxies; 203.0.113.9 is the client.
//! assert_eq!(proxies.client_addr(&request), Some("203.0.113.9".parse::<IpAddr>()?));
//!
//! // Without trusted proxies the header is ignored.
//! assert_eq!(TrustedProxies::none().client_addr(&request), Some("10.0.0.1".parse::<IpAddr>()?));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::{HeaderName, FORWARDED};
use http::{Extensions, HeaderMap, Request};
use ipnet::IpNet;

use super::layer::AuthConfig;
use super::Principal;
use crate::reject::{RejectReason, Rejection};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The address of the connection's peer, inserted into the request's
/// extensions by you (or by glue code for a server other than axum).
///
/// Takes precedence over axum's `ConnectInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

impl From<IpAddr> for ClientAddr {
    fn from(addr: IpAddr) -> Self {
        Self(addr)
    }
}

impl From<SocketAddr> for ClientAddr {
    fn from(addr: SocketAddr) -> Self {
        Self(addr.ip())
    }
}

/// The networks of the reverse proxies whose forwarding headers are
/// believed. Empty by default: no header is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Arc<[IpNet]>);

impl TrustedProxies {
    /// Trusts no proxy: forwarding headers are ignored.
    pub fn none() -> Self {
        Self::default()
    }

    /// Trusts peers in `networks`.
    pub fn new(networks: impl IntoIterator<Item = IpNet>) -> Self {
        Self(networks.into_iter().collect())
    }

    /// The trusted networks.
    pub fn networks(&self) -> &[IpNet] {
        &self.0
    }

    /// Whether `addr` is a trusted proxy.
    pub fn trusts(&self, addr: IpAddr) -> bool {
        in_any(&self.0, addr)
    }

    /// The client's address for `request`: the peer's (see the
    /// [module docs](self)), or, when the peer is a trusted proxy, the first
    /// untrusted hop of its forwarding headers. `None` when the peer is
    /// unknown, or when a forwarding hop that must be read is not an
    /// address (`unknown`, junk).
    pub fn client_addr<B>(&self, request: &Request<B>) -> Option<IpAddr> {
        self.client_addr_of(request.headers(), request.extensions())
    }

    /// [`client_addr`](Self::client_addr) from a request's headers and
    /// extensions.
    pub fn client_addr_of(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<IpAddr> {
        let peer = peer_addr(extensions)?;
        if self.0.is_empty() || !self.trusts(peer) {
            return Some(peer);
        }
        self.walk(peer, headers)
    }

    /// `None` when a hop that must be read is not an address: the client
    /// is then unknown, never taken to be the proxy in front of it. Reads
    /// the headers from the right, in place.
    fn walk(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        let xff = headers.get_all(X_FORWARDED_FOR);
        if xff.iter().any(|v| v.to_str().is_ok()) {
            let hops = xff
                .iter()
                .rev()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.rsplit(','))
                .map(|hop| parse_xff_hop(hop.trim()));
            return self.first_untrusted(peer, hops);
        }
        let hops = headers
            .get_all(FORWARDED)
            .iter()
            .rev()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.rsplit(','))
            .filter_map(forwarded_for);
        self.first_untrusted(peer, hops)
    }

    /// Walks `hops`, nearest first, past the trusted ones.
    fn first_untrusted(
        &self,
        peer: IpAddr,
        hops: impl Iterator<Item = Option<IpAddr>>,
    ) -> Option<IpAddr> {
        let mut client = peer;
        for hop in hops {
            client = hop?;
            if !self.trusts(client) {
                break;
            }
        }
        Some(client)
    }
}

impl FromIterator<IpNet> for TrustedProxies {
    fn from_iter<I: IntoIterator<Item = IpNet>>(iter: I) -> Self {
        Self::new(iter)
    }
}

/// Whether `addr` may use a key restricted to `networks` (empty: anywhere).
pub(crate) fn allowed(networks: &[IpNet], addr: Option<IpAddr>) -> bool {
    if networks.is_empty() {
        return true;
    }
    addr.is_some_and(|addr| in_any(networks, addr))
}

fn in_any(networks: &[IpNet], addr: IpAddr) -> bool {
    let canonical = canonical(addr);
    networks
        .iter()
        .any(|net| net.contains(&addr) || net.contains(&canonical))
}

/// Checks the restrictions of an authenticated key against the request:
/// the service's environment, then the client's network.
///
/// `client` is the client address if the caller already resolved it
/// (`Some(None)`: resolved, unknown), so that it is worked out once.
pub(crate) fn restrict<B>(
    config: &AuthConfig,
    request: &Request<B>,
    principal: &Principal,
    client: Option<Option<IpAddr>>,
) -> Result<(), Rejection> {
    let record = principal.record();
    let refuse = |restriction: &str| {
        tracing::info!(
            target: "keyward::auth",
            key_id = %record.id,
            restriction,
            "API key refused: restricted"
        );
        Err(Rejection::new(RejectReason::Restricted).with_key_id(record.id))
    };
    if let (Some(service), Some(key)) = (config.environment, record.environment()) {
        if service != key {
            return refuse("environment");
        }
    }
    if !record.allowed_networks().is_empty()
        && !allowed(
            record.allowed_networks(),
            client.unwrap_or_else(|| config.trusted_proxies.client_addr(request)),
        )
    {
        return refuse("network");
    }
    if record.checks_origin() {
        check_origin(record, request.headers())?;
    }
    Ok(())
}

/// Whether the request comes from one of the key's allowed origins (see
/// [`origin`](super::origin)).
fn check_origin(record: &crate::record::KeyRecord, headers: &HeaderMap) -> Result<(), Rejection> {
    // Borrowed from the header and compared without regard to case: no
    // allocation for a key used from where it may be.
    let origin = super::origin::OriginRef::of(headers);
    let allowed = origin.as_ref().is_some_and(|origin| {
        record
            .allowed_origins()
            .iter()
            .any(|allowed| allowed.matches_ref(origin))
    });
    if allowed {
        return Ok(());
    }
    // The origin is the browser's claim, not a secret: logged (in its
    // canonical form) to explain the refusal, bounded in length by the
    // parser.
    let none: &dyn std::fmt::Display = &"(none)";
    tracing::info!(
        target: "keyward::auth",
        key_id = %record.id,
        origin = %origin.as_ref().map_or(none, |o| o as &dyn std::fmt::Display),
        "API key refused: origin not allowed"
    );
    Err(Rejection::new(RejectReason::OriginNotAllowed).with_key_id(record.id))
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`, as dual-stack sockets
/// report IPv4 peers) are compared as the IPv4 address they carry.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn peer_addr(extensions: &Extensions) -> Option<IpAddr> {
    if let Some(ClientAddr(addr)) = extensions.get::<ClientAddr>() {
        return Some(*addr);
    }
    #[cfg(feature = "axum")]
    {
        use axum::extract::connect_info::{ConnectInfo, MockConnectInfo};
        // As axum's own `ConnectInfo` extractor: the real one, else the
        // test double.
        if let Some(ConnectInfo(addr)) = extensions.get::<ConnectInfo<SocketAddr>>() {
            return Some(addr.ip());
        }
        if let Some(MockConnectInfo(addr)) = extensions.get::<MockConnectInfo<SocketAddr>>() {
            return Some(addr.ip());
        }
    }
    None
}

/// One `X-Forwarded-For` entry: an address, possibly with a port
/// (`1.2.3.4:80`, `[::1]:80`).
fn parse_xff_hop(hop: &str) -> Option<IpAddr> {
    parse_node(hop.trim_matches('"'))
}

fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(addr) = node.parse::<IpAddr>() {
        return Some(addr);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    // `[v6]` without a port.
    node.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<IpAddr>().ok())
}

/// The `for=` node of one `Forwarded` element (RFC 7239): `Some(None)` for
/// a node that is not an address (`unknown`, `_hidden`), `None` when the
/// element has no `for=`.
fn forwarded_for(element: &str) -> Option<Option<IpAddr>> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        Some(parse_node(value.trim().trim_matches('"')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn request(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::get("/").extension(ClientAddr(ip(peer)));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let proxies = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
        let r = request("192.0.2.1", &[("x-forwarded-for", "10.1.2.3")]);
        assert_eq!(proxies.client_addr(&r), Some(ip("192.0.2.1")));
        assert_eq!(
            TrustedProxies::none().client_addr(&r),
            Some(ip("192.0.2.1"))
        );
    }

    #[test]
    fn walks_from_the_right_skipping_trusted_hops() {
        let proxies = TrustedProxies::new(["127.0.0.1/32".parse().unwrap()]);
        let r = request("127.0.0.1", &[("x-forwarded-for", "6.6.6.6, 10.1.2.3")]);
        assert_eq!(proxies.client_addr(&r), Some(ip("10.1.2.3")));
        let r = request(
            "127.0.0.1",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "10.1.2.3, 127.0.0.1"),
            ],
        );
        assert_eq!(proxies.client_addr(&r), Some(ip("10.1.2.3")));
        // Only trusted hops: the leftmost is the client.
        let r = request("127.0.0.1", &[("x-forwarded-for", "127.0.0.1")]);
        assert_eq!(proxies.client_addr(&r), Some(ip("127.0.0.1")));
        // Junk where the client should be: the client is unknown, never
        // taken to be the trusted proxy (which a key may be allowed from).
        let r = request("127.0.0.1", &[("x-forwarded-for", "10.1.2.3, junk")]);
        assert_eq!(proxies.client_addr(&r), None);
        // Junk left of the first untrusted hop is never read.
        let r = request("127.0.0.1", &[("x-forwarded-for", "junk, 10.1.2.3")]);
        assert_eq!(proxies.client_addr(&r), Some(ip("10.1.2.3")));
        let r = request("127.0.0.1", &[("x-forwarded-for", "[2001:db8::1]:443")]);
        assert_eq!(proxies.client_addr(&r), Some(ip("2001:db8::1")));
    }

    #[test]
    fn forwarded_header() {
        let proxies = TrustedProxies::new(["127.0.0.0/8".parse().unwrap()]);
        let r = request(
            "127.0.0.1",
            &[(
                "forwarded",
                r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, by=127.0.0.2;for=127.0.0.3"#,
            )],
        );
        assert_eq!(proxies.client_addr(&r), Some(ip("2001:db8:cafe::17")));
        let r = request("127.0.0.1", &[("forwarded", "for=unknown")]);
        assert_eq!(proxies.client_addr(&r), None);
        // X-Forwarded-For wins when both are present.
        let r = request(
            "127.0.0.1",
            &[("forwarded", "for=1.1.1.1"), ("x-forwarded-for", "2.2.2.2")],
        );
        assert_eq!(proxies.client_addr(&r), Some(ip("2.2.2.2")));
    }

    #[test]
    fn networks_and_mapped_addresses() {
        let nets = ["10.0.0.0/8".parse().unwrap()];
        assert!(allowed(&nets, Some(ip("10.1.2.3"))));
        assert!(allowed(&nets, Some(ip("::ffff:10.1.2.3"))));
        assert!(!allowed(&nets, Some(ip("127.0.0.1"))));
        assert!(!allowed(&nets, None));
        assert!(allowed(&[], None));
        assert_eq!(request_without_peer(), None);
    }

    fn request_without_peer() -> Option<IpAddr> {
        TrustedProxies::none().client_addr(&Request::get("/").body(()).unwrap())
    }
}
