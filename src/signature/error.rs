use http::HeaderName;

use crate::reject::RejectReason;

/// Why a signed request was refused, exactly: for logs and tests.
///
/// The client learns only the coarse class (see [`reason`](Self::reason)):
/// every bad signature answers the same `401`. No variant holds a
/// signature, a key or a covered value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// `Signature-Input` without `Signature`, or the other way round.
    #[error("Signature-Input and Signature must come together")]
    MissingField,
    /// A field is no valid structured-field dictionary (RFC 9651) of the
    /// expected shape, or is too long.
    #[error("the {0} field is malformed")]
    Malformed(HeaderName),
    /// No signature names a key id of this service (or the configured
    /// label is absent).
    #[error("no signature by a key of this service")]
    NoSignature,
    /// Two signatures name keys of this service: which one counts?
    #[error("more than one signature by a key of this service")]
    TwoSignatures,
    /// A signature parameter (`created`, `keyid`) is missing.
    #[error("the signature has no `{0}` parameter")]
    MissingParameter(&'static str),
    /// A signature parameter has the wrong type or an unusable value.
    #[error("the signature's `{0}` parameter is invalid")]
    InvalidParameter(&'static str),
    /// A covered component that keyward cannot compute (`@status`,
    /// `@query-param`, a component with parameters, an unknown derived
    /// component, `@signature-params` itself).
    #[error("the covered component {0:?} is not supported")]
    UnsupportedComponent(String),
    /// A component is covered twice.
    #[error("the component {0:?} is covered twice")]
    DuplicateComponent(String),
    /// A covered header field is absent from the request.
    #[error("the covered field {0:?} is absent")]
    MissingComponent(String),
    /// A component the verifier requires is not covered.
    #[error("the signature does not cover {0:?}")]
    NotCovered(String),
    /// The request has a body, and the signature does not cover a
    /// `Content-Digest` of it.
    #[error("the request has a body, and the signature covers no content-digest")]
    BodyNotCovered,
    /// The signature's `alg` is not the algorithm of the key.
    #[error("the signature's algorithm is not its key's")]
    AlgorithmMismatch,
    /// The key is not a signing key (an API key, or a record without a
    /// verification key).
    #[error("the key does not sign requests")]
    NotASigningKey,
    /// The signature does not verify.
    #[error("the signature does not verify")]
    Invalid,
    /// `created` is outside the window around now.
    #[error("the signature was created outside the accepted window")]
    Stale,
    /// `expires` has passed.
    #[error("the signature has expired")]
    Expired,
    /// This signature was accepted before.
    #[error("the signature was seen before (a replay)")]
    Replayed,
    /// [`ContentDigestLayer`](crate::content_digest::ContentDigestLayer)
    /// is not stacked outside the layer that verifies signatures.
    #[error("no ContentDigestLayer runs before signature verification")]
    DigestUnchecked,
}

impl SignatureError {
    /// The [`RejectReason`] a request refused for this is recorded with.
    pub fn reason(&self) -> RejectReason {
        match self {
            Self::TwoSignatures => RejectReason::InvalidRequest,
            Self::Stale | Self::Expired => RejectReason::StaleSignature,
            Self::Replayed => RejectReason::ReplayedSignature,
            Self::DigestUnchecked => RejectReason::Misconfigured,
            _ => RejectReason::BadSignature,
        }
    }
}

/// Why [`RequestSigner`](super::RequestSigner) could not sign a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// A component to cover cannot be computed (see
    /// [`SignatureError::UnsupportedComponent`]).
    #[error("the component {0:?} is not supported")]
    UnsupportedComponent(String),
    /// A header field to cover is absent from the request.
    #[error("the field {0:?} to cover is absent")]
    MissingComponent(String),
    /// A component is listed twice.
    #[error("the component {0:?} is listed twice")]
    DuplicateComponent(String),
    /// The label, key id, nonce or tag cannot be written as a structured
    /// field (a label is lowercase letters, digits, `_-.*`; the others
    /// printable ASCII).
    #[error("the signature's {0} cannot be written as a structured field")]
    InvalidParameter(&'static str),
    /// The clock stands before 1970, or `created` plus the expiry
    /// overflows.
    #[error("the clock's time cannot be written as a signature time")]
    Time,
    /// The operating system's random number generator failed (for the
    /// nonce).
    #[error("could not generate a nonce")]
    Random(#[from] crate::key::GenerateError),
}
