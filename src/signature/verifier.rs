use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Extensions, HeaderMap, Method, Request, Uri};
use sha2::{Digest, Sha256};

use super::base::{BaseContext, SignatureBase};
use super::input::{Fields, SIGNATURE, SIGNATURE_INPUT};
use super::keys::{self, Algorithm};
use super::replay::{Admission, ReplayCache};
use super::SignatureError;
use crate::auth::Principal;
use crate::auth::DEFAULT_STORE_TIMEOUT;
use crate::clock::{Clock, SystemClock};
use crate::content_digest::DigestStatus;
use crate::credential::{CredentialKind, RequestView, Verification, Verifier};
use crate::key::KeyId;
use crate::reject::{RejectReason, Rejection};
use crate::store::{KeyStore, Lookup};

/// The default window around now a signature's `created` must fall in:
/// five minutes either way.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);

/// Verifies signed requests (HTTP Message Signatures, RFC 9421) against
/// the keys of a [`KeyStore`]; see the [module docs](super).
///
/// A request is accepted when exactly one of its signatures names a key id
/// of the store (`keyid`), and:
///
/// - it covers `@method`, `@authority` and `@path` (or the components set
///   with [`require`](Self::require)), `@query` when the request has a
///   query, and `content-digest` when it has a body;
/// - its `created` lies within the window around now (default ±5 min, on
///   the injected clock) and its `expires`, if any, has not passed;
/// - [`ContentDigestLayer`](crate::content_digest::ContentDigestLayer)
///   runs outside, and checks the body against the covered
///   `Content-Digest` (fail closed: a signed request without it is
///   refused with `500`, reason
///   [`Misconfigured`](RejectReason::Misconfigured));
/// - the record holds a [`VerificationKey`](crate::key::VerificationKey),
///   whose algorithm the signature's `alg` (if any) names, and the
///   signature verifies;
/// - the record is active and within its validity times;
/// - the signature was not accepted before (see [`ReplayCache`]).
///
/// Which key ids exist does not show in how long a refusal takes: every
/// refusal after the look-up costs one verification of each algorithm the
/// request names in `alg` (of each algorithm keyward verifies when `alg` is
/// absent), on the key if it has that algorithm, else on a fixed dummy key
/// whose result is thrown away. So an unknown id, a record without a
/// verification key and a key of another algorithm cost what a known key
/// with a bad signature does. (A client that leaves `alg` out and is refused
/// pays for every algorithm: send `alg`.)
///
/// Cheap to clone: clones share the store, the clock and the replay cache.
#[derive(Clone)]
pub struct SignatureVerifier {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    window: Duration,
    required: Vec<String>,
    label: Option<String>,
    context: BaseContext,
    replay: ReplayCache,
    /// Cuts a look-up that takes longer (with the `tokio` feature).
    store_timeout: Option<Duration>,
}

/// The parts of a request the verifier reads (never the body).
#[derive(Clone, Copy)]
pub(crate) struct RequestParts<'a> {
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) extensions: &'a Extensions,
}

impl<'a> RequestParts<'a> {
    pub(crate) fn of<B>(request: &'a Request<B>) -> Self {
        Self {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }
}

/// A request whose signature parsed, is timely and covers enough; its
/// key must still be fetched.
pub(crate) struct Prepared {
    pub(crate) id: KeyId,
    base: SignatureBase,
    signature: Vec<u8>,
    alg: Option<String>,
    now: SystemTime,
    window_end: u64,
}

impl Prepared {
    /// The algorithms whose verification every refusal of this request
    /// costs, whatever its key id names, so that its time tells no known
    /// id from an unknown one: the one `alg` names; every one keyward
    /// verifies when `alg` is absent (the algorithm would be the key's,
    /// and an unknown id has none); none when `alg` names one keyward does
    /// not verify (every id is refused without cryptography then).
    fn refusal_work(&self) -> &'static [Algorithm] {
        match self.alg.as_deref().map(Algorithm::from_name) {
            None => &Algorithm::ALL,
            Some(Some(Algorithm::Ed25519)) => &[Algorithm::Ed25519],
            Some(Some(Algorithm::HmacSha256)) => &[Algorithm::HmacSha256],
            Some(None) => &[],
        }
    }

    /// Before a refusal: runs a dummy verification of each algorithm of
    /// [`refusal_work`](Self::refusal_work) but `done` (the one a
    /// failed verification of the key already ran). Equal work, not equal
    /// nanoseconds: an HMAC secret over 64 bytes is hashed first, and
    /// Ed25519's check takes a time that varies with its inputs, for the
    /// dummy key as for any other.
    fn pad_refusal(&self, done: Option<Algorithm>) {
        for &algorithm in self.refusal_work() {
            if Some(algorithm) != done {
                keys::verify_dummy(algorithm, self.base.as_bytes(), &self.signature);
            }
        }
    }
}

impl SignatureVerifier {
    /// Verifies against the keys of `store`, with the defaults above and
    /// the system clock.
    pub fn new(store: impl KeyStore) -> Self {
        Self::from_shared(Arc::new(store))
    }

    /// Verifies against a store shared as `Arc<dyn KeyStore>`.
    pub fn from_shared(store: Arc<dyn KeyStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                clock: Arc::new(SystemClock),
                window: DEFAULT_WINDOW,
                required: ["@method", "@authority", "@path"]
                    .map(str::to_owned)
                    .to_vec(),
                label: None,
                context: BaseContext::new(),
                replay: ReplayCache::default(),
                store_timeout: cfg!(feature = "tokio").then_some(DEFAULT_STORE_TIMEOUT),
            }),
        }
    }

    /// Uses `clock` for `created`, `expires` and the records' times.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        Arc::make_mut(&mut self.inner).clock = Arc::new(clock);
        self
    }

    /// How far `created` may lie from now, either way (whole seconds;
    /// default [`DEFAULT_WINDOW`]). A replay is refused for as long.
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        Arc::make_mut(&mut self.inner).window = window;
        self
    }

    /// The components every signature must cover, replacing the default
    /// `@method`, `@authority`, `@path`. `@query` (when the request has a
    /// query) and `content-digest` (when it has a body) are required
    /// whatever this says.
    #[must_use]
    pub fn require<I, C>(mut self, components: I) -> Self
    where
        I: IntoIterator<Item = C>,
        C: Into<String>,
    {
        Arc::make_mut(&mut self.inner).required = components.into_iter().map(Into::into).collect();
        self
    }

    /// Reads only the signature labelled `label` (by default, the one
    /// signature whose `keyid` is a key id of this service).
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.inner).label = Some(label.into());
        self
    }

    /// How the request's scheme and authority are seen (see
    /// [`BaseContext`]).
    #[must_use]
    pub fn context(mut self, context: BaseContext) -> Self {
        Arc::make_mut(&mut self.inner).context = context;
        self
    }

    /// Uses `cache` for replays (share one among the verifiers of a
    /// process; default: a cache of [`ReplayCache::DEFAULT_CAPACITY`]).
    #[must_use]
    pub fn replay_cache(mut self, cache: ReplayCache) -> Self {
        Arc::make_mut(&mut self.inner).replay = cache;
        self
    }

    /// Cuts a key look-up that takes longer than `timeout` (`None`: waits
    /// as long as the store takes): the request is refused with `503`,
    /// reason [`StoreUnavailable`](RejectReason::StoreUnavailable), as by
    /// [`Authenticator::with_store_timeout`](crate::auth::Authenticator::with_store_timeout),
    /// whose default ([`DEFAULT_STORE_TIMEOUT`], 5 s) it shares. Needs a
    /// tokio runtime; without one the look-up is awaited as it is.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    #[must_use]
    pub fn store_timeout(mut self, timeout: Option<Duration>) -> Self {
        Arc::make_mut(&mut self.inner).store_timeout = timeout;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.inner.store
    }

    /// The replay cache.
    pub fn replay(&self) -> &ReplayCache {
        &self.inner.replay
    }

    /// Whether the request carries a signature at all (`Signature-Input`
    /// or `Signature`), by the headers' presence alone, without parsing.
    pub fn recognises(headers: &HeaderMap) -> bool {
        headers.contains_key(&SIGNATURE_INPUT) || headers.contains_key(&SIGNATURE)
    }

    /// Verifies a signed request. The future holds no borrow of the
    /// request.
    pub fn verify<B>(
        &self,
        request: &Request<B>,
    ) -> impl Future<Output = Result<Principal, Rejection>> + Send + 'static {
        let begun = self.begin(RequestParts::of(request));
        let this = self.clone();
        async move {
            let prepared = begun?;
            let lookup = match crate::store::find_now(&*this.inner.store, &prepared.id) {
                Some(lookup) => lookup,
                None => this.find_awaited(&prepared.id).await,
            };
            this.finish(prepared, lookup)
        }
    }

    /// The record of `id` from the store, awaited within the timeout (fail
    /// closed: a store that panics or hangs answers an error).
    async fn find_awaited(&self, id: &KeyId) -> Lookup {
        crate::store::find_awaited(&*self.inner.store, id, self.inner.store_timeout).await
    }

    /// Everything that needs no key: parse, choose the signature, check
    /// times and coverage, build the base.
    pub(crate) fn begin(&self, request: RequestParts<'_>) -> Result<Prepared, Rejection> {
        self.prepare(request)
            .map_err(|(error, id)| refuse(error, id))
    }

    fn prepare(
        &self,
        request: RequestParts<'_>,
    ) -> Result<Prepared, (SignatureError, Option<KeyId>)> {
        let inner = &*self.inner;
        let headers = request.headers;
        let fields = Fields::parse(headers)
            .and_then(|fields| fields.ok_or(SignatureError::MissingField))
            .map_err(|e| (e, None))?;

        let mut chosen = None;
        for (label, keyid) in fields.key_ids() {
            if inner.label.as_deref().is_some_and(|want| want != label) {
                continue;
            }
            let Some(id) = keyid.and_then(|k| k.parse::<KeyId>().ok()) else {
                continue;
            };
            if chosen.is_some() {
                return Err((SignatureError::TwoSignatures, None));
            }
            chosen = Some((label, id));
        }
        let (label, id) = chosen.ok_or((SignatureError::NoSignature, None))?;
        let fail = |error| (error, Some(id));
        let signature = fields.signature(label).map_err(fail)?;
        let params = signature.params();

        let now = inner.clock.now();
        let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let created = params
            .created
            .ok_or(fail(SignatureError::MissingParameter("created")))?;
        let window = inner.window.as_secs();
        if created.saturating_add(window) < now_secs || created > now_secs.saturating_add(window) {
            return Err(fail(SignatureError::Stale));
        }
        if params.expires.is_some_and(|expires| expires <= now_secs) {
            return Err(fail(SignatureError::Expired));
        }

        for required in &inner.required {
            if !signature.covers(required) {
                return Err(fail(SignatureError::NotCovered(required.clone())));
            }
        }
        if request.uri.query().is_some() && !signature.covers("@query") {
            return Err(fail(SignatureError::NotCovered("@query".to_owned())));
        }
        let Some(digest) = request.extensions.get::<DigestStatus>() else {
            return Err(fail(SignatureError::DigestUnchecked));
        };
        if digest.has_body() && !(signature.covers("content-digest") && digest.checks(headers)) {
            return Err(fail(SignatureError::BodyNotCovered));
        }

        let base = signature
            .base_of(request.method, request.uri, headers, &inner.context)
            .map_err(fail)?;
        Ok(Prepared {
            id,
            base,
            signature: signature.signature().to_vec(),
            alg: params.alg.clone(),
            now,
            window_end: created.saturating_add(window),
        })
    }

    /// Checks the key the look-up found, the signature, the record's state,
    /// and replays.
    pub(crate) fn finish(
        &self,
        prepared: Prepared,
        lookup: Lookup,
    ) -> Result<Principal, Rejection> {
        let id = prepared.id;
        let fail = |error| Err(refuse(error, Some(id)));
        let record = match lookup {
            Ok(Some(record)) => record,
            Ok(None) => {
                prepared.pad_refusal(None);
                tracing::info!(target: "keyward::signature", key_id = %id, "signed request refused: unknown key");
                return Err(Rejection::new(RejectReason::UnknownKey).with_key_id(id));
            }
            Err(error) => {
                #[cfg(feature = "metrics")]
                crate::metrics::store_error(&error);
                tracing::error!(
                    target: "keyward::signature",
                    key_id = %id,
                    error = &error as &dyn std::error::Error,
                    "key store failed; refusing (fail closed)"
                );
                return Err(Rejection::new(RejectReason::StoreUnavailable).with_key_id(id));
            }
        };
        let Some(key) = record.verification_key() else {
            prepared.pad_refusal(None);
            return fail(SignatureError::NotASigningKey);
        };
        // The algorithm comes from the key; `alg`, if sent, must agree.
        let algorithm = Algorithm::of(key);
        if let Some(alg) = &prepared.alg {
            if algorithm.is_none_or(|a| a.as_str() != alg) {
                prepared.pad_refusal(None);
                return fail(SignatureError::AlgorithmMismatch);
            }
        }
        if !keys::verify(key, prepared.base.as_bytes(), &prepared.signature) {
            prepared.pad_refusal(algorithm);
            return fail(SignatureError::Invalid);
        }
        let refuse_record = |reason: RejectReason| {
            tracing::info!(target: "keyward::signature", key_id = %id, %reason, "signed request refused");
            Err(Rejection::new(reason).with_key_id(id))
        };
        if let Err(invalidity) = record.validity_at(prepared.now) {
            return refuse_record(invalidity.into());
        }
        let now_secs = prepared
            .now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match self.inner.replay.admit(
            fingerprint(&id, &prepared.signature),
            prepared.window_end,
            now_secs,
        ) {
            Admission::Fresh => Ok(Principal::with_credential(
                record,
                CredentialKind::Signature,
            )),
            Admission::Replayed => fail(SignatureError::Replayed),
            Admission::Stale => fail(SignatureError::Stale),
        }
    }
}

/// What the replay cache remembers of a signature: a digest of the key id
/// and the signature's bytes.
fn fingerprint(id: &KeyId, signature: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(id.as_str().as_bytes());
    hasher.update(signature);
    hasher.finalize().into()
}

/// Signed requests through [`AuthLayer`](crate::AuthLayer):
/// `AuthLayer::new(..).credential(signature_verifier)`, with
/// [`ContentDigestLayer`](crate::content_digest::ContentDigestLayer)
/// outside. Recognised by a `Signature-Input` or `Signature` field;
/// principals of kind [`CredentialKind::Signature`]. Nothing is stripped:
/// a signature is no secret.
impl Verifier for SignatureVerifier {
    fn kind(&self) -> CredentialKind {
        CredentialKind::Signature
    }

    fn recognises(&self, request: &RequestView<'_>) -> bool {
        SignatureVerifier::recognises(request.headers())
    }

    fn verify(&self, request: &RequestView<'_>) -> Verification {
        let prepared = match self.begin(RequestParts {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }) {
            Ok(prepared) => prepared,
            Err(rejection) => return Verification::Ready(Err(rejection)),
        };
        match crate::store::find_now(&*self.inner.store, &prepared.id) {
            Some(lookup) => Verification::Ready(self.finish(prepared, lookup)),
            None => {
                let this = self.clone();
                Verification::pending(async move {
                    let lookup = this.find_awaited(&prepared.id).await;
                    this.finish(prepared, lookup)
                })
            }
        }
    }
}

/// Logs a refusal and makes its rejection.
fn refuse(error: SignatureError, id: Option<KeyId>) -> Rejection {
    let reason = error.reason();
    if reason == RejectReason::Misconfigured {
        tracing::error!(
            target: "keyward::signature",
            %error,
            "signed request refused: stack ContentDigestLayer outside the layer that verifies signatures"
        );
    } else {
        match id {
            Some(id) => {
                tracing::info!(target: "keyward::signature", key_id = %id, %error, "signed request refused")
            }
            None => tracing::info!(target: "keyward::signature", %error, "signed request refused"),
        }
    }
    let rejection = Rejection::new(reason);
    match id {
        Some(id) => rejection.with_key_id(id),
        None => rejection,
    }
}

impl fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("SignatureVerifier")
            .field("store", &inner.store)
            .field("clock", &inner.clock)
            .field("window", &inner.window)
            .field("required", &inner.required)
            .field("label", &inner.label)
            .field("context", &inner.context)
            .field("replay", &inner.replay)
            .field("store_timeout", &inner.store_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::clock::FakeClock;
    use crate::key::VerificationKey;
    use crate::signature::keys::work::{self, Work};
    use crate::signature::{RequestSigner, SigningKey};
    use crate::{KeyHasher, KeyRecord, MemoryStore};

    /// What `alg` says in a test request.
    #[derive(Debug, Clone, Copy)]
    enum Alg {
        Named(Algorithm),
        Absent,
        Unsupported,
    }

    /// Who the key id names.
    #[derive(Debug, Clone, Copy)]
    enum Target {
        Unknown,
        ApiKey,
        Key(Algorithm),
    }

    fn record(id: &str, key: Option<VerificationKey>) -> Lookup {
        let record = KeyRecord::new(
            id.parse().unwrap(),
            KeyHasher::sha256().hash("unused"),
            "acme",
            SystemTime::UNIX_EPOCH,
        );
        Ok(Some(Arc::new(match key {
            Some(key) => record.with_verification_key(key),
            None => record,
        })))
    }

    fn signing_key(algorithm: Algorithm) -> SigningKey {
        match algorithm {
            Algorithm::Ed25519 => SigningKey::generate_ed25519().unwrap(),
            Algorithm::HmacSha256 => SigningKey::generate_hmac_sha256().unwrap(),
        }
    }

    /// A bodiless GET by `id`, signed with `key`, its `alg` as `alg` says,
    /// as the digest layer would hand it on.
    fn request(clock: &FakeClock, id: &str, key: SigningKey, alg: Alg) -> Request<&'static str> {
        let signer = RequestSigner::new(id, key)
            .clock(clock.clone())
            .alg(!matches!(alg, Alg::Absent));
        let mut request = Request::get("https://api.example.com/pets")
            .body("")
            .unwrap();
        signer.sign(&mut request).unwrap();
        if let Alg::Unsupported = alg {
            let headers = request.headers_mut();
            let input = headers[&SIGNATURE_INPUT].to_str().unwrap();
            let edited = input
                .replace("\"ed25519\"", "\"rsa-pss-sha512\"")
                .replace("\"hmac-sha256\"", "\"rsa-pss-sha512\"");
            assert_ne!(edited, input);
            headers.insert(&SIGNATURE_INPUT, edited.try_into().unwrap());
        }
        request.extensions_mut().insert(DigestStatus::bodiless());
        request
    }

    /// The work a refusal must do when the request says `alg`: one
    /// verification of each algorithm it names (all, if none).
    fn expected(alg: Alg) -> [usize; 2] {
        match alg {
            Alg::Named(Algorithm::Ed25519) => [1, 0],
            Alg::Named(Algorithm::HmacSha256) => [0, 1],
            Alg::Absent => [1, 1],
            Alg::Unsupported => [0, 0],
        }
    }

    /// Every refusal of a well-formed signed request costs the
    /// verifications of the algorithm the request names, whoever its key
    /// id names: an unknown id, a record without a verification key, a key
    /// of another algorithm (dummies), a key of the same algorithm whose
    /// verification fails (the real one). The reasons stay what they were.
    #[test]
    fn every_refusal_does_the_work_of_the_requests_algorithm() {
        let clock = FakeClock::default();
        let verifier = SignatureVerifier::new(MemoryStore::new()).clock(clock.clone());
        let ed25519 = signing_key(Algorithm::Ed25519);
        let hmac = signing_key(Algorithm::HmacSha256);
        let targets = [
            Target::Unknown,
            Target::ApiKey,
            Target::Key(Algorithm::Ed25519),
            Target::Key(Algorithm::HmacSha256),
        ];
        let algs = [
            Alg::Named(Algorithm::Ed25519),
            Alg::Named(Algorithm::HmacSha256),
            Alg::Absent,
            Alg::Unsupported,
        ];
        let id = "AbCdEf012345";
        for alg in algs {
            // Signed by a stranger's key, so that no key here verifies it.
            let stranger = match alg {
                Alg::Named(Algorithm::HmacSha256) => Algorithm::HmacSha256,
                _ => Algorithm::Ed25519,
            };
            for target in targets {
                let lookup = match target {
                    Target::Unknown => Ok(None),
                    Target::ApiKey => record(id, None),
                    Target::Key(Algorithm::Ed25519) => record(id, Some(ed25519.verification_key())),
                    Target::Key(Algorithm::HmacSha256) => record(id, Some(hmac.verification_key())),
                };
                let request = request(&clock, id, signing_key(stranger), alg);
                let prepared = verifier.begin(RequestParts::of(&request)).unwrap();
                let mut answer = None;
                let done = work::during(|| answer = Some(verifier.finish(prepared, lookup)));
                let rejection = answer.unwrap().expect_err("refused");
                let case = format!("{alg:?} to {target:?}");
                let reason = match target {
                    Target::Unknown => RejectReason::UnknownKey,
                    _ => RejectReason::BadSignature,
                };
                assert_eq!(rejection.reason(), reason, "{case}");
                let [ed, mac] = expected(alg);
                assert_eq!(
                    [done.ed25519.0, done.hmac_sha256.0],
                    [ed, mac],
                    "verifications, {case}"
                );
                // Which of them are dummies: all but the key's own, when
                // the key is of an algorithm the request allows.
                let real = match (target, alg) {
                    (Target::Key(key), Alg::Named(named)) if key == named => Some(key),
                    (Target::Key(key), Alg::Absent) => Some(key),
                    _ => None,
                };
                let dummies = [
                    ed - usize::from(real == Some(Algorithm::Ed25519)),
                    mac - usize::from(real == Some(Algorithm::HmacSha256)),
                ];
                assert_eq!(
                    [done.ed25519.1, done.hmac_sha256.1],
                    dummies,
                    "dummies, {case}"
                );
            }
        }
    }

    /// An admitted request does only its own key's work: the padding is
    /// for refusals.
    #[test]
    fn an_admitted_request_runs_no_dummy() {
        let clock = FakeClock::default();
        let verifier = SignatureVerifier::new(MemoryStore::new()).clock(clock.clone());
        let id = "AbCdEf012345";
        for (algorithm, alg) in [
            (Algorithm::Ed25519, true),
            (Algorithm::HmacSha256, true),
            (Algorithm::Ed25519, false),
            (Algorithm::HmacSha256, false),
        ] {
            let key = signing_key(algorithm);
            let alg = if alg {
                Alg::Named(algorithm)
            } else {
                Alg::Absent
            };
            let request = request(&clock, id, key.clone(), alg);
            let prepared = verifier.begin(RequestParts::of(&request)).unwrap();
            let lookup = record(id, Some(key.verification_key()));
            let mut answer = None;
            let done = work::during(|| answer = Some(verifier.finish(prepared, lookup)));
            assert!(answer.unwrap().is_ok(), "{algorithm} {alg:?}");
            let own = (1, 0);
            let expected = match algorithm {
                Algorithm::Ed25519 => Work {
                    ed25519: own,
                    ..Work::default()
                },
                Algorithm::HmacSha256 => Work {
                    hmac_sha256: own,
                    ..Work::default()
                },
            };
            assert_eq!(done, expected, "{algorithm} {alg:?}");
        }
    }
}
