use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;

use ipnet::IpNet;
use tower_layer::Layer;

use super::client::TrustedProxies;
use crate::record::Environment;

use super::source::{KeySource, KeySources};
use super::{AuthService, Authenticator, FailureThrottle};
use crate::clock::Clock;
use crate::credential::{CredentialKind, Verifier};
use crate::key::{KeyFormat, KeyHasher, LegacyFormat};
use crate::reject::{Rejection, Responder};
use crate::store::KeyStore;

/// Authenticates every request by its API key; see the [module docs](super).
///
/// The service it wraps must be `Clone` (put one that is not behind
/// `tower::buffer::Buffer`): see [the inner service must be
/// `Clone`](super#the-inner-service-must-be-clone).
#[derive(Debug, Clone)]
#[must_use]
pub struct AuthLayer {
    config: Arc<AuthConfig>,
}

#[derive(Debug, Clone)]
pub(crate) struct AuthConfig {
    pub(crate) authenticator: Authenticator,
    pub(crate) sources: KeySources,
    pub(crate) strip_credentials: bool,
    pub(crate) responder: Responder,
    pub(crate) throttle: Option<FailureThrottle>,
    pub(crate) environment: Option<Environment>,
    pub(crate) trusted_proxies: TrustedProxies,
    /// The other credentials, in the order they are tried.
    pub(crate) verifiers: Vec<Arc<dyn Verifier>>,
}

impl AuthConfig {
    /// Refuses a request, counting a refused key against its client. Every
    /// refusal of the layer goes through here. `credential` is the kind the
    /// refused credential was presented as, if one could be told (for the
    /// metrics).
    pub(crate) fn refuse(
        &self,
        request_headers: &http::HeaderMap,
        rejection: Rejection,
        client: Option<IpAddr>,
        credential: Option<CredentialKind>,
    ) -> Response<Bytes> {
        #[cfg(feature = "metrics")]
        crate::metrics::auth_rejected(rejection.reason(), credential);
        #[cfg(not(feature = "metrics"))]
        let _ = credential;
        if let (Some(throttle), Some(client)) = (&self.throttle, client) {
            if rejection.reason().is_invalid_key() {
                throttle.record_failure(client);
            }
        }
        self.responder.refuse(request_headers, rejection)
    }
}

impl AuthLayer {
    /// Authenticates keys of `format` against `store`, read from
    /// `Authorization: Bearer` and `X-API-Key`, hashed with plain SHA-256.
    pub fn new(store: impl KeyStore, format: KeyFormat) -> Self {
        Self::from_authenticator(Authenticator::new(store, format))
    }

    /// Uses an [`Authenticator`] you configured.
    pub fn from_authenticator(authenticator: Authenticator) -> Self {
        Self {
            config: Arc::new(AuthConfig {
                authenticator,
                sources: KeySources::new([KeySource::bearer(), KeySource::x_api_key()]),
                strip_credentials: true,
                responder: Responder::default(),
                throttle: None,
                environment: None,
                trusted_proxies: TrustedProxies::none(),
                verifiers: Vec::new(),
            }),
        }
    }

    /// Uses `hasher`: it must be the one that made the stored hashes.
    pub fn hasher(mut self, hasher: KeyHasher) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.authenticator = config.authenticator.clone().with_hasher(hasher);
        self
    }

    /// Uses `clock` for expiry and not-before checks.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.authenticator = config.authenticator.clone().with_clock(clock);
        self
    }

    /// Where to look for the key, in order (at most 64 sources; more are
    /// ignored). A request whose sources hold two different keys is refused.
    pub fn sources(mut self, sources: impl IntoIterator<Item = KeySource>) -> Self {
        Arc::make_mut(&mut self.config).sources = KeySources::new(sources);
        self
    }

    /// Whether to remove the credential (header, query parameter or cookie)
    /// before the inner service sees the request. On by default, so that
    /// the key cannot leak through the service's own logging.
    pub fn strip_credentials(mut self, strip: bool) -> Self {
        Arc::make_mut(&mut self.config).strip_credentials = strip;
        self
    }

    /// Answers rejections with `responder` (default: problem details with
    /// realm `"api"`).
    pub fn responder(mut self, responder: Responder) -> Self {
        Arc::make_mut(&mut self.config).responder = responder;
        self
    }

    /// Slows down key guessing: a client whose keys were refused too
    /// often gets `429` for a while (see [`FailureThrottle`]). Off by
    /// default.
    pub fn failure_throttle(mut self, throttle: FailureThrottle) -> Self {
        Arc::make_mut(&mut self.config).throttle = Some(throttle);
        self
    }

    /// Declares the service's environment: keys tagged with another
    /// environment ([`KeyRecord::environment`](crate::record::KeyRecord::environment))
    /// are refused with `403` (reason `Restricted`). Keys without a tag are
    /// accepted; a layer without an environment accepts every tag.
    pub fn environment(mut self, environment: Environment) -> Self {
        Arc::make_mut(&mut self.config).environment = Some(environment);
        self
    }

    /// Believes `X-Forwarded-For` / `Forwarded` from peers in `networks`,
    /// when checking a key's allowed networks (see
    /// [`client`](super::client)). By default no proxy is trusted and the
    /// headers are ignored.
    pub fn trusted_proxies(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        Arc::make_mut(&mut self.config).trusted_proxies = TrustedProxies::new(networks);
        self
    }

    /// Refuses a request whose key look-up takes longer than `timeout`
    /// (`503`; 5 s unless set, `None` to wait as long as the store):
    /// see [`Authenticator::with_store_timeout`].
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn store_timeout(mut self, timeout: Option<std::time::Duration>) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.authenticator = config.authenticator.clone().with_store_timeout(timeout);
        self
    }

    /// Makes a refused key take at least `floor` from its look-up on (1 µs
    /// unless set, `None` to turn it off, at most 100 µs), so that timing
    /// does not tell which ids exist: see [`Authenticator::with_refusal_floor`].
    pub fn refusal_floor(mut self, floor: Option<std::time::Duration>) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.authenticator = config.authenticator.clone().with_refusal_floor(floor);
        self
    }

    /// Accepts another kind of credential besides API keys, verified by
    /// `verifier` (a [`SignatureVerifier`](crate::signature::SignatureVerifier),
    /// your own [`Verifier`]). Verifiers are asked in the order they are
    /// added; a request with two credentials is refused (`400`). See
    /// [`credential`](crate::credential) for the rules and an example.
    pub fn credential(mut self, verifier: impl Verifier) -> Self {
        let verifier: Arc<dyn Verifier> = Arc::new(verifier);
        Arc::make_mut(&mut self.config).verifiers.push(verifier);
        self
    }

    /// Also accepts imported keys of the old `format` (see
    /// [`Authenticator::with_imported_keys`] and
    /// [`KeyManager::import_legacy`](crate::KeyManager::import_legacy)),
    /// from the same key sources as API keys. Off by default.
    pub fn imported_keys(mut self, format: LegacyFormat) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.authenticator = config.authenticator.clone().with_imported_keys(format);
        self
    }

    /// The authenticator this layer uses.
    pub fn authenticator(&self) -> &Authenticator {
        &self.config.authenticator
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService::new(inner, Arc::clone(&self.config))
    }
}
