use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::credential::CredentialKind;
use crate::key::KeyId;
use crate::record::KeyRecord;
use crate::scope::ScopeSet;

/// Who is calling: the authenticated key's id, owner, scopes and metadata,
/// and the [kind of credential](CredentialKind) that proved it.
///
/// [`AuthLayer`](super::AuthLayer) puts it into the request's extensions,
/// and into the [`PrincipalSlot`] an outer layer planted there, if any.
/// Read it with the axum extractor (feature `axum`) or
/// `request.extensions().get::<Principal>()` in the service, and through a
/// [`PrincipalSlot`] in middleware outside `AuthLayer`. It never holds the key;
/// cloning it is one reference-count increment. With feature `serde` it
/// serializes as `{"key_id", "owner", "name", "scopes", "metadata",
/// "credential"}`, what a `/me` route answers.
///
/// Every kind of credential ends in a [`KeyRecord`]: the one the store
/// holds (API keys, key pairs, publishable and imported keys), or one a
/// verifier built from what it trusts (a JWT's claims). Its owner, scopes,
/// limits and restrictions count alike for every kind.
#[derive(Clone)]
pub struct Principal {
    record: Arc<KeyRecord>,
    credential: CredentialKind,
}

impl Principal {
    /// The principal of an authenticated API key's record.
    pub fn new(record: Arc<KeyRecord>) -> Self {
        Self::with_credential(record, CredentialKind::ApiKey)
    }

    /// The principal of `record`, authenticated by a credential of kind
    /// `credential`: what a [`Verifier`](crate::credential::Verifier)
    /// returns.
    pub fn with_credential(record: Arc<KeyRecord>, credential: CredentialKind) -> Self {
        Self { record, credential }
    }

    /// The kind of credential that authenticated the request.
    pub fn credential(&self) -> CredentialKind {
        self.credential
    }

    /// The key's public id.
    pub fn key_id(&self) -> KeyId {
        self.record.id
    }

    /// The key's owner.
    pub fn owner(&self) -> &str {
        &self.record.owner
    }

    /// The key's human name.
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// The key's scopes.
    pub fn scopes(&self) -> &ScopeSet {
        &self.record.scopes
    }

    /// The key's metadata.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        self.record.metadata()
    }

    /// The whole record, as the store returned it.
    pub fn record(&self) -> &Arc<KeyRecord> {
        &self.record
    }
}

/// Where middleware outside [`AuthLayer`](super::AuthLayer) receives the
/// caller's [`Principal`]: take the request's slot with
/// [`plant`](Self::plant) on the way in, and read it once the response is
/// back. `AuthLayer`
/// fills it when the request authenticates, before the inner service runs,
/// so it holds the principal also when an inner layer refused the request
/// (`403`, `429`). Empty when authentication refused the request (read the
/// [`Rejection`](crate::reject::Rejection) in the response's extensions
/// then) or when no `AuthLayer` saw it. [`UsageLayer`](crate::usage::UsageLayer)
/// plants one itself.
///
/// A request has one slot, shared by every layer that asks (a request's
/// extensions hold one value of a type: inserting a second slot would
/// take the first one's away from the layer that planted it).
///
/// The principal is not copied into the response's extensions: a slot is
/// one small allocation, where a copy in the response made the response's
/// extension map (a map, its table and a box) for every request.
///
/// ```
/// use std::convert::Infallible;
/// use std::time::SystemTime;
/// use http::{Request, Response};
/// use keyward::auth::{AuthLayer, PrincipalSlot};
/// use keyward::key::{KeyFormat, KeyGenerator, KeyHasher};
/// use keyward::record::KeyRecord;
/// use keyward::store::{KeyStore, MemoryStore};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let format = KeyFormat::new("sk_live")?;
/// let key = KeyGenerator::new(format.clone()).generate()?;
/// let store = MemoryStore::new();
/// let hash = KeyHasher::sha256().hash(key.secret());
/// store.insert(KeyRecord::new(key.id(), hash, "acme", SystemTime::now())).await?;
/// let service = AuthLayer::new(store, format)
///     .layer(service_fn(|_| async { Ok::<_, Infallible>(Response::new(String::new())) }));
///
/// // In your logging middleware, before calling the next service:
/// let mut request = Request::get("/pets")
///     .header("authorization", format!("Bearer {}", key.expose_secret()))
///     .body(String::new())?;
/// let slot = PrincipalSlot::plant(&mut request);
/// let response = service.oneshot(request).await?;
/// // ... and after:
/// assert_eq!(slot.get().map(|who| who.owner()), Some("acme"));
/// assert_eq!(response.status(), 200);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PrincipalSlot(Arc<OnceLock<Principal>>);

impl PrincipalSlot {
    /// The request's slot: the one an outer layer planted, or an empty
    /// one planted now.
    pub fn plant<B>(request: &mut http::Request<B>) -> Self {
        if let Some(slot) = request.extensions().get::<Self>() {
            return slot.clone();
        }
        let slot = Self(SPARE.with(Cell::take).unwrap_or_default());
        request.extensions_mut().insert(slot.clone());
        slot
    }

    /// The principal of the request, once `AuthLayer` authenticated it.
    pub fn get(&self) -> Option<&Principal> {
        self.0.get()
    }

    /// The principal, moved out when this is the slot's last copy (the
    /// request that held the other is gone by then), cloned otherwise.
    ///
    /// The last copy, emptied, is kept for the thread's next
    /// [`plant`](Self::plant): a slot is an allocation and a free on every
    /// request otherwise. Only a copy nobody else holds is kept, and only
    /// empty, so a slot never shows one request's principal to another.
    pub(crate) fn take(mut self) -> Option<Principal> {
        let Some(cell) = Arc::get_mut(&mut self.0) else {
            return self.0.get().cloned();
        };
        let principal = cell.take();
        let spare = self.0;
        // Not kept while the thread exits (its spare is gone already).
        let _ = SPARE.try_with(move |kept| kept.set(Some(spare)));
        principal
    }

    /// Leaves the principal (the first `AuthLayer` to authenticate the
    /// request fills the slot; later ones leave it).
    pub(crate) fn fill(&self, principal: &Principal) {
        let _ = self.0.set(principal.clone());
    }
}

thread_local! {
    /// An empty slot the thread's last request under a planting layer left,
    /// for its next request.
    static SPARE: Cell<Option<Arc<OnceLock<Principal>>>> = const { Cell::new(None) };
}

impl fmt::Debug for PrincipalSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PrincipalSlot").field(&self.get()).finish()
    }
}

/// `{"key_id", "owner", "name", "scopes", "metadata", "credential"}`
/// (`credential`: [`CredentialKind::as_str`]): who is calling,
/// for a `/me` route or an export. Never the key or its hash, nor the
/// record's limits and restrictions (read [`record`](Principal::record)
/// for those).
#[cfg(feature = "serde")]
impl serde::Serialize for Principal {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("Principal", 6)?;
        out.serialize_field("key_id", &self.record.id)?;
        out.serialize_field("owner", &*self.record.owner)?;
        out.serialize_field("name", &self.record.name)?;
        out.serialize_field("scopes", &self.record.scopes)?;
        out.serialize_field("metadata", self.record.metadata())?;
        out.serialize_field("credential", &self.credential)?;
        out.end()
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("key_id", &self.record.id)
            .field("owner", &self.record.owner)
            .field("scopes", &self.record.scopes)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "axum")]
mod extract {
    use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
    use axum_core::response::{IntoResponse, Response};
    use http::request::Parts;

    use super::Principal;
    use crate::reject::{RejectReason, Rejection, Responder};

    /// The axum rejection when no [`Principal`] is in the request: the route
    /// is not behind [`AuthLayer`](crate::auth::AuthLayer). Answers `401`,
    /// never lets the request through.
    #[derive(Debug, Clone, Copy, Default)]
    #[non_exhaustive]
    pub struct MissingPrincipal;

    impl IntoResponse for MissingPrincipal {
        fn into_response(self) -> Response {
            let rejection = Rejection::new(RejectReason::MissingKey);
            let mut response = Responder::default()
                .respond(&rejection)
                .map(axum_core::body::Body::from);
            response.extensions_mut().insert(rejection);
            response
        }
    }

    impl<S: Send + Sync> FromRequestParts<S> for Principal {
        type Rejection = MissingPrincipal;

        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
            match parts.extensions.get::<Principal>() {
                Some(principal) => Ok(principal.clone()),
                None => {
                    tracing::warn!(
                        target: "keyward::auth",
                        "Principal extracted on a route without AuthLayer; answering 401"
                    );
                    Err(MissingPrincipal)
                }
            }
        }
    }

    impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
        type Rejection = std::convert::Infallible;

        async fn from_request_parts(
            parts: &mut Parts,
            _: &S,
        ) -> Result<Option<Self>, Self::Rejection> {
            Ok(parts.extensions.get::<Principal>().cloned())
        }
    }
}

#[cfg(feature = "axum")]
pub use extract::MissingPrincipal;

#[cfg(test)]
mod slot_tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::{Principal, PrincipalSlot};
    use crate::key::KeyHasher;
    use crate::record::KeyRecord;

    fn principal() -> Principal {
        let id = "abcdefABCDEF".parse().unwrap();
        let hash = KeyHasher::sha256().hash("not a real secret");
        Principal::new(Arc::new(KeyRecord::new(
            id,
            hash,
            "acme",
            SystemTime::now(),
        )))
    }

    fn planted() -> (PrincipalSlot, http::Request<()>) {
        let mut request = http::Request::new(());
        let slot = PrincipalSlot::plant(&mut request);
        (slot, request)
    }

    #[test]
    fn a_slot_is_reused_on_its_thread_only_empty() {
        let (slot, request) = planted();
        slot.fill(&principal());
        let first = Arc::as_ptr(&slot.0);
        drop(request);
        assert_eq!(
            slot.take().map(|p| p.owner().to_owned()),
            Some("acme".to_owned())
        );

        let (again, request) = planted();
        assert_eq!(
            Arc::as_ptr(&again.0),
            first,
            "the emptied slot is planted again"
        );
        assert!(again.get().is_none());
        assert!(request
            .extensions()
            .get::<PrincipalSlot>()
            .unwrap()
            .get()
            .is_none());
    }

    #[test]
    fn a_slot_still_shared_is_not_reused() {
        let (slot, request) = planted();
        slot.fill(&principal());
        let first = Arc::as_ptr(&slot.0);
        // The request still holds its copy: the principal is cloned, and the
        // slot stays where it is, filled.
        assert!(slot.take().is_some());
        let kept = request.extensions().get::<PrincipalSlot>().unwrap();
        assert_eq!(kept.get().map(Principal::owner), Some("acme"));

        let (other, _request) = planted();
        assert_ne!(Arc::as_ptr(&other.0), first);
        assert!(other.get().is_none());
    }
}
