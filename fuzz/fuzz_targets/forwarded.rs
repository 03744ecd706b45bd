//! `TrustedProxies::client_addr`: the walk of `X-Forwarded-For` and
//! `Forwarded` from the right, against a plain model of the module docs
//! (every header value collected, joined, split and walked), and the
//! properties a user relies on: an untrusted peer is the client, headers
//! name the client only through trusted hops, a trusted proxy is never
//! taken for the client while an unreadable hop stands before it.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::Arbitrary;
use http::header::{HeaderName, HeaderValue, FORWARDED};
use http::Request;
use ipnet::IpNet;
use keyward::auth::client::{ClientAddr, TrustedProxies};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
    Mapped([u8; 4]),
}

impl Addr {
    fn ip(&self) -> IpAddr {
        match *self {
            Addr::V4(b) => IpAddr::V4(Ipv4Addr::from(b)),
            Addr::V6(b) => IpAddr::V6(Ipv6Addr::from(b)),
            Addr::Mapped(b) => IpAddr::V6(Ipv4Addr::from(b).to_ipv6_mapped()),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Header<'a> {
    XForwardedFor(Vec<Hop<'a>>),
    Forwarded(Vec<Hop<'a>>),
    /// Raw bytes, for anything the shapes above miss.
    RawXff(&'a [u8]),
    RawForwarded(&'a [u8]),
}

/// One hop, written in one of the ways the headers allow.
#[derive(Debug, Arbitrary)]
enum Hop<'a> {
    Plain(Addr),
    WithPort(Addr, u16),
    Bracketed(Addr),
    Quoted(Addr),
    Junk(&'a str),
}

impl Hop<'_> {
    fn write(&self, out: &mut String, forwarded: bool) {
        if forwarded {
            out.push_str("for=");
        }
        match self {
            Hop::Plain(a) => out.push_str(&a.ip().to_string()),
            Hop::WithPort(a, port) => out.push_str(&SocketAddr::new(a.ip(), *port).to_string()),
            Hop::Bracketed(a) => match a.ip() {
                IpAddr::V6(v6) => out.push_str(&format!("[{v6}]")),
                v4 => out.push_str(&v4.to_string()),
            },
            Hop::Quoted(a) => out.push_str(&format!("\"{}\"", a.ip())),
            Hop::Junk(s) => out.push_str(s),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    trusted: Vec<(Addr, u8)>,
    peer: Option<Addr>,
    headers: Vec<Header<'a>>,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// One `X-Forwarded-For` entry: an address, with or without a port.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    node.parse::<IpAddr>()
        .ok()
        .or_else(|| node.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| node.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// The model: all values joined, split into hops, walked from the right.
fn model(proxies: &TrustedProxies, peer: Option<IpAddr>, request: &Request<()>) -> Option<IpAddr> {
    let peer = peer?;
    if proxies.networks().is_empty() || !proxies.trusts(peer) {
        return Some(peer);
    }
    let text = |name: &HeaderName| -> Vec<String> {
        request
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    };
    let xff = text(&X_FORWARDED_FOR);
    let hops: Vec<Option<IpAddr>> = if !xff.is_empty() {
        xff.join(",").split(',').map(parse_node).collect()
    } else {
        text(&FORWARDED)
            .join(",")
            .split(',')
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (name, value) = pair.trim().split_once('=')?;
                    name.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| parse_node(value))
                })
            })
            .collect()
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        client = hop?;
        if !proxies.trusts(client) {
            break;
        }
    }
    Some(client)
}

fuzz_target!(|input: Input<'_>| {
    let networks: Vec<IpNet> = input
        .trusted
        .iter()
        .filter_map(|(addr, len)| IpNet::new(addr.ip(), *len).ok())
        .collect();
    let proxies = TrustedProxies::new(networks);
    let peer = input.peer.as_ref().map(Addr::ip);

    let mut builder = Request::get("/");
    if let Some(peer) = peer {
        builder = builder.extension(ClientAddr(peer));
    }
    let mut request = builder.body(()).unwrap();
    for header in &input.headers {
        let (name, value) = match header {
            Header::XForwardedFor(hops) | Header::Forwarded(hops) => {
                let forwarded = matches!(header, Header::Forwarded(_));
                let mut value = String::new();
                for (i, hop) in hops.iter().enumerate() {
                    if i > 0 {
                        value.push_str(", ");
                    }
                    hop.write(&mut value, forwarded);
                }
                let name = if forwarded {
                    FORWARDED
                } else {
                    X_FORWARDED_FOR
                };
                (name, HeaderValue::from_str(&value).ok())
            }
            Header::RawXff(bytes) => (X_FORWARDED_FOR, HeaderValue::from_bytes(bytes).ok()),
            Header::RawForwarded(bytes) => (FORWARDED, HeaderValue::from_bytes(bytes).ok()),
        };
        if let Some(value) = value {
            request.headers_mut().append(name, value);
        }
    }

    let client = proxies.client_addr(&request);
    assert_eq!(client, model(&proxies, peer, &request), "{request:?}");
    assert_eq!(TrustedProxies::none().client_addr(&request), peer);
    match (peer, client) {
        (None, client) => assert_eq!(client, None),
        (Some(peer), _) if !proxies.trusts(peer) => assert_eq!(client, Some(peer)),
        _ => {}
    }
});
