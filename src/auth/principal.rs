use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::credential::CredentialKind;
use crate::key::KeyId;
use crate::record::KeyRecord;
use crate::scope::ScopeSet;

/// Who is calling: the authenticated key's id, owner, scopes and metadata,
/// and the [kind of credential](CredentialKind) that proved it.
///
/// [`AuthLayer`](super::AuthLayer) puts it into the request's extensions
/// (and the response's). Read it with the axum extractor (feature `axum`)
/// or `request.extensions().get::<Principal>()`. It never holds the key;
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
