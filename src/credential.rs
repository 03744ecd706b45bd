//! Credentials other than the API key: the [`Verifier`] trait that
//! [`AuthLayer`](crate::AuthLayer) tries, and the [`CredentialKind`] every
//! [`Principal`] carries.
//!
//! A key is one credential among several: key pairs that sign each request
//! ([`signature`](crate::signature), feature `signatures`), JWT-based keys,
//! publishable keys, keys in Basic auth
//! ([`KeySource::basic_user`](crate::auth::KeySource::basic_user)) and
//! imported legacy keys ([`LegacyFormat`](crate::key::LegacyFormat)). Every
//! one ends in the same [`Principal`], so scopes, limits, usage and gRPC
//! work unchanged behind it, and [`Principal::credential`] says which kind
//! it was.
//!
//! # The order credentials are tried in
//!
//! For each request [`AuthLayer`](crate::AuthLayer):
//!
//! 1. reads its key sources (`Authorization: Bearer`, `X-API-Key`, …) as it
//!    always did; a source holding two values, or two sources holding
//!    different values, is refused (`400`, reason
//!    [`InvalidRequest`](RejectReason::InvalidRequest));
//! 2. asks every verifier added with
//!    [`AuthLayer::credential`](crate::AuthLayer::credential), in the order
//!    they were added, whether it [`recognises`](Verifier::recognises) its
//!    credential in the request — without I/O, by a header's presence or
//!    shape (a `Signature-Input` field, a JWT's three segments). When no
//!    verifier was added, this step costs nothing;
//! 3. decides:
//!    - the value found in step 1 is the API key's when it looks like one (it
//!      begins with the format's prefix and `_`, or matches the
//!      [`LegacyFormat`](crate::key::LegacyFormat) of imported keys the
//!      layer accepts), or when no verifier
//!      recognised anything (so junk in `Authorization: Bearer` is still
//!      refused as a malformed key);
//!    - **two credentials** (an API key and a recognised verifier, or two
//!      verifiers) are refused with `400`, reason
//!      [`TwoCredentials`](RejectReason::TwoCredentials), whether or not
//!      either is valid: which one should count is not for the server to
//!      guess;
//!    - exactly one: it is verified. An API key goes through the built-in
//!      [`Authenticator`](crate::auth::Authenticator) (looked up by id, or
//!      by hash for an imported key); anything else through its verifier's
//!      [`verify`](Verifier::verify);
//!    - none: `401` without an error code (reason
//!      [`MissingKey`](RejectReason::MissingKey));
//! 4. checks the principal's restrictions, whatever its kind: the
//!    record's environment against the service's, and the client address
//!    against the record's allowed networks (`403`,
//!    [`Restricted`](RejectReason::Restricted)), and, for a publishable key
//!    or one with allowed origins, the request's `Origin` (or `Referer`)
//!    against them (`403`, [`OriginNotAllowed`](RejectReason::OriginNotAllowed);
//!    see [`auth::origin`](crate::auth::origin));
//! 5. removes the credential (the key sources' headers, or what the
//!    verifier's [`strip`](Verifier::strip) removes) unless told to keep
//!    credentials, and hands the [`Principal`] to the inner service.
//!
//! Refusals stay uniform: every bad credential is the same `401
//! invalid_token` (the exact reason in the [`Rejection`] and the logs), a
//! verifier may refuse with `403` for restrictions of its own, and the
//! [`FailureThrottle`](crate::auth::FailureThrottle) counts every kind's
//! invalid credentials.
//!
//! # How to plug a verifier in
//!
//! Implement [`Verifier`]: say which [`CredentialKind`] it makes, recognise
//! the credential cheaply, and verify it to a [`Principal`] — at once
//! ([`Verification::Ready`]: no allocation) or after I/O
//! ([`Verification::pending`]: one boxed future). A verifier that finds a
//! [`KeyRecord`] in a store builds its principal with
//! [`Principal::with_credential`]; one that trusts claims (a JWT) builds
//! the record from them.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::SystemTime;
//! use http::{HeaderName, Request, Response, StatusCode};
//! use http_body_util::BodyExt;
//! use keyward::credential::{CredentialKind, RequestView, Verification, Verifier};
//! use keyward::reject::{RejectReason, Rejection};
//! use keyward::{AuthLayer, KeyFormat, KeyHash, KeyId, KeyRecord, MemoryStore, Principal};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! /// A toy credential: `X-Partner: <name>`, trusted for partners it knows.
//! /// (Never do this in earnest: a name is no secret.)
//! #[derive(Debug)]
//! struct PartnerHeader {
//!     partners: Vec<(&'static str, Arc<KeyRecord>)>,
//! }
//!
//! const X_PARTNER: HeaderName = HeaderName::from_static("x-partner");
//!
//! impl Verifier for PartnerHeader {
//!     fn kind(&self) -> CredentialKind {
//!         CredentialKind::Jwt // the kind it stands for; a toy borrows one
//!     }
//!
//!     fn recognises(&self, request: &RequestView<'_>) -> bool {
//!         request.headers().contains_key(X_PARTNER)
//!     }
//!
//!     fn verify(&self, request: &RequestView<'_>) -> Verification {
//!         let name = request.headers().get(X_PARTNER).and_then(|v| v.to_str().ok());
//!         let found = self.partners.iter().find(|(partner, _)| Some(*partner) == name);
//!         Verification::Ready(match found {
//!             Some((_, record)) => Ok(Principal::with_credential(Arc::clone(record), self.kind())),
//!             None => Err(Rejection::new(RejectReason::UnknownKey)),
//!         })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let id: KeyId = "partnerAcme1".parse()?;
//! let record = KeyRecord::new(id, KeyHash::from_bytes([0; 32]), "acme", SystemTime::now());
//! let verifier = PartnerHeader { partners: vec![("acme", Arc::new(record))] };
//!
//! let service = ServiceBuilder::new()
//!     .layer(AuthLayer::new(MemoryStore::new(), KeyFormat::new("sk_live")?).credential(verifier))
//!     .service_fn(|request: Request<String>| async move {
//!         let who = request.extensions().get::<Principal>().unwrap();
//!         let answer = format!("{} by {}", who.owner(), who.credential());
//!         Ok::<_, std::convert::Infallible>(Response::new(answer))
//!     });
//!
//! let request = Request::get("/").header("x-partner", "acme").body(String::new())?;
//! let response = service.clone().oneshot(request).await?;
//! let body = response.into_body().collect().await?.to_bytes();
//! assert_eq!(body, "acme by jwt");
//!
//! let stranger = Request::get("/").header("x-partner", "mallory").body(String::new())?;
//! assert_eq!(service.clone().oneshot(stranger).await?.status(), StatusCode::UNAUTHORIZED);
//!
//! // A partner header and an API key: two credentials, refused.
//! let both = Request::get("/")
//!     .header("x-partner", "acme")
//!     .header("x-api-key", "sk_live_anything")
//!     .body(String::new())?;
//! assert_eq!(service.oneshot(both).await?.status(), StatusCode::BAD_REQUEST);
//! # Ok(())
//! # }
//! ```
//!
//! A verifier runs inside [`AuthLayer`](crate::AuthLayer), so the
//! [`RequestView`] is all it sees: method, URI, headers, extensions and
//! the client's address — never the body. A credential that covers the
//! body (a signature's `Content-Digest`) relies on a layer outside that
//! checks the body as it streams and leaves its verdict in the extensions
//! ([`content_digest`](crate::content_digest) does).

use std::cell::OnceCell;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use http::{Extensions, HeaderMap, Method, Request, Uri};

use crate::auth::client::TrustedProxies;
use crate::auth::Principal;
#[allow(unused_imports)] // doc links
use crate::record::KeyRecord;
use crate::reject::{RejectReason, Rejection};

/// Which kind of credential authenticated a request: see
/// [`Principal::credential`].
///
/// Serialized (feature `serde`) as its [`as_str`](Self::as_str) name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[non_exhaustive]
pub enum CredentialKind {
    /// A keyward API key (`sk_live_…`), from any key source: a header,
    /// `Authorization: Bearer`, Basic auth, or an opt-in query parameter or
    /// cookie.
    #[default]
    ApiKey,
    /// A publishable key: identifies the caller (quotas, usage) from a
    /// browser or an app, holds no secret power.
    Publishable,
    /// An old-format key imported by its hash
    /// ([`KeyManager::import_legacy`](crate::KeyManager::import_legacy)).
    Imported,
    /// A request signed with a key pair or a shared secret (HTTP Message
    /// Signatures, RFC 9421).
    Signature,
    /// A JSON Web Token the service, or an issuer it trusts, signed.
    Jwt,
}

impl CredentialKind {
    /// Every kind, in declaration order.
    pub const ALL: [CredentialKind; 5] = [
        CredentialKind::ApiKey,
        CredentialKind::Publishable,
        CredentialKind::Imported,
        CredentialKind::Signature,
        CredentialKind::Jwt,
    ];

    /// A stable `snake_case` name: `api_key`, `publishable`, `imported`,
    /// `signature`, `jwt`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CredentialKind::ApiKey => "api_key",
            CredentialKind::Publishable => "publishable",
            CredentialKind::Imported => "imported",
            CredentialKind::Signature => "signature",
            CredentialKind::Jwt => "jwt",
        }
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a [`CredentialKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a credential kind is api_key, publishable, imported, signature or jwt")]
pub struct InvalidCredentialKind;

impl std::str::FromStr for CredentialKind {
    type Err = InvalidCredentialKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CredentialKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or(InvalidCredentialKind)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for CredentialKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for CredentialKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a [`Verifier`] sees of a request: method, URI, headers,
/// extensions and the client's address, borrowed. Never the body.
///
/// The client address is resolved on first use (and at most once), the way
/// [`AuthLayer`](crate::AuthLayer) resolves it for allowed networks: from
/// a [`ClientAddr`](crate::auth::client::ClientAddr) or axum's
/// `ConnectInfo` in the extensions, through the layer's
/// [`TrustedProxies`].
pub struct RequestView<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
    proxies: &'a TrustedProxies,
    client: OnceCell<Option<IpAddr>>,
}

/// Trusts no proxy: what a view made outside a layer resolves with.
static NO_PROXIES: std::sync::LazyLock<TrustedProxies> =
    std::sync::LazyLock::new(TrustedProxies::none);

impl<'a> RequestView<'a> {
    /// A view of `request`, trusting no proxy's forwarding headers (for
    /// verifying outside [`AuthLayer`](crate::AuthLayer), and in tests).
    pub fn new<B>(request: &'a Request<B>) -> Self {
        Self::with_proxies(request, &NO_PROXIES, None)
    }

    /// A view of the parts of a request, trusting no proxy.
    pub fn from_parts(parts: &'a http::request::Parts) -> Self {
        Self {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            extensions: &parts.extensions,
            proxies: &NO_PROXIES,
            client: OnceCell::new(),
        }
    }

    /// A view resolving the client through `proxies`, with the client
    /// already resolved if `client` is `Some`.
    pub(crate) fn with_proxies<B>(
        request: &'a Request<B>,
        proxies: &'a TrustedProxies,
        client: Option<Option<IpAddr>>,
    ) -> Self {
        let cell = OnceCell::new();
        if let Some(client) = client {
            let _ = cell.set(client);
        }
        Self {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
            proxies,
            client: cell,
        }
    }

    /// The request's method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The request's URI.
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The request's headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The request's extensions.
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }

    /// The client's address, if known (see
    /// [`auth::client`](crate::auth::client)).
    pub fn client_addr(&self) -> Option<IpAddr> {
        *self
            .client
            .get_or_init(|| self.proxies.client_addr_of(self.headers, self.extensions))
    }

    /// The client address if it was resolved already.
    pub(crate) fn resolved_client(&self) -> Option<Option<IpAddr>> {
        self.client.get().copied()
    }
}

impl fmt::Debug for RequestView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Headers may hold credentials: only their names.
        f.debug_struct("RequestView")
            .field("method", self.method)
            .field("path", &self.uri.path())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The future of a [`Verification::Pending`].
pub type VerifyFuture = Pin<Box<dyn Future<Output = Result<Principal, Rejection>> + Send>>;

/// The outcome of [`Verifier::verify`]: decided at once, or after I/O.
#[must_use]
pub enum Verification {
    /// Decided without waiting: no allocation on this path.
    Ready(Result<Principal, Rejection>),
    /// Waiting for a store, a key set, …: the future holds no borrow of
    /// the request (copy what it needs out of the [`RequestView`]).
    Pending(VerifyFuture),
}

impl Verification {
    /// A pending verification of `future`.
    pub fn pending(
        future: impl Future<Output = Result<Principal, Rejection>> + Send + 'static,
    ) -> Self {
        Self::Pending(Box::pin(future))
    }

    /// Refused at once for `reason`.
    pub fn refuse(reason: RejectReason) -> Self {
        Self::Ready(Err(Rejection::new(reason)))
    }

    /// Awaits the outcome (for verifying outside a layer).
    pub async fn outcome(self) -> Result<Principal, Rejection> {
        match self {
            Self::Ready(result) => result,
            Self::Pending(future) => future.await,
        }
    }
}

impl fmt::Debug for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready(result) => f.debug_tuple("Ready").field(result).finish(),
            Self::Pending(_) => f.write_str("Pending(..)"),
        }
    }
}

/// A credential [`AuthLayer`](crate::AuthLayer) can verify, besides its
/// built-in API keys: see [how to plug a verifier in](self#how-to-plug-a-verifier-in).
///
/// Object-safe; the layer keeps verifiers as `Arc<dyn Verifier>`.
pub trait Verifier: fmt::Debug + Send + Sync + 'static {
    /// The kind of the principals this verifier makes.
    fn kind(&self) -> CredentialKind;

    /// Whether the request carries this verifier's credential, by its
    /// presence and shape alone: no I/O, no cryptography, and cheap, since
    /// every request (API keys included) asks every verifier. A credential
    /// that is recognised and then fails verification is refused; one that
    /// is not recognised is "not this kind".
    fn recognises(&self, request: &RequestView<'_>) -> bool;

    /// Verifies the credential of a request this verifier
    /// [recognised](Self::recognises). Refuse with the uniform reasons
    /// (`UnknownKey`, `Expired`, `Revoked`, … answer `401 invalid_token`;
    /// `Restricted` answers `403`; `StoreUnavailable` answers `503`).
    fn verify(&self, request: &RequestView<'_>) -> Verification;

    /// Removes the credential from a request that passed, before the inner
    /// service sees it (unless the layer keeps credentials:
    /// [`AuthLayer::strip_credentials`](crate::AuthLayer::strip_credentials)).
    /// The default removes nothing, right for credentials that are no
    /// secret (a signature).
    fn strip(&self, headers: &mut HeaderMap, uri: &mut Uri) {
        let _ = (headers, uri);
    }
}

/// A shared verifier (`Arc<dyn Verifier>` too) is a verifier.
impl<T: Verifier + ?Sized> Verifier for std::sync::Arc<T> {
    fn kind(&self) -> CredentialKind {
        (**self).kind()
    }

    fn recognises(&self, request: &RequestView<'_>) -> bool {
        (**self).recognises(request)
    }

    fn verify(&self, request: &RequestView<'_>) -> Verification {
        (**self).verify(request)
    }

    fn strip(&self, headers: &mut HeaderMap, uri: &mut Uri) {
        (**self).strip(headers, uri);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_stable_names() {
        for kind in CredentialKind::ALL {
            assert_eq!(kind.as_str().parse::<CredentialKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(
            "API_KEY".parse::<CredentialKind>(),
            Err(InvalidCredentialKind)
        );
    }

    #[test]
    fn the_view_resolves_the_client_once_and_shows_no_header_value() {
        use crate::auth::client::ClientAddr;
        let request = Request::get("/pets?x=1")
            .header("authorization", "Bearer sk_live_secret")
            .extension(ClientAddr("192.0.2.7".parse().unwrap()))
            .body(())
            .unwrap();
        let view = RequestView::new(&request);
        assert_eq!(view.resolved_client(), None);
        assert_eq!(view.client_addr(), Some("192.0.2.7".parse().unwrap()));
        assert_eq!(
            view.resolved_client(),
            Some(Some("192.0.2.7".parse().unwrap()))
        );
        assert!(!format!("{view:?}").contains("secret"));
    }
}
