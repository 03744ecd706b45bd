//! The admin API's errors as RFC 9457 problem documents.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use crate::manager::ManagerError;
use crate::usage::UsageQueryError;

/// One kind of admin API error: its stable `type` URI, status and title.
///
/// The `type` URIs are stable: clients may match on them. Each is
/// `urn:keyward:problem:` followed by the kind's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProblemType {
    /// The `type` member.
    pub uri: &'static str,
    /// The HTTP status.
    pub status: StatusCode,
    /// The `title` member: the same for every occurrence of the kind.
    pub title: &'static str,
}

macro_rules! problem_types {
    ($($(#[$doc:meta])* $name:ident = ($slug:literal, $status:ident, $title:literal);)*) => {
        impl ProblemType {
            $(
                $(#[$doc])*
                pub const $name: ProblemType = ProblemType {
                    uri: concat!("urn:keyward:problem:", $slug),
                    status: StatusCode::$status,
                    title: $title,
                };
            )*

            /// Every kind, in the order documented.
            pub const ALL: &'static [ProblemType] = &[$(ProblemType::$name),*];
        }
    };
}

problem_types! {
    /// 400: the body is not JSON, not an object of the expected shape,
    /// has an unknown field, lacks a required one, or holds a value of
    /// the wrong type or outside its documented range (such as
    /// `expires_in_seconds` beyond 100 years).
    INVALID_BODY = ("invalid-body", BAD_REQUEST, "The request body is invalid");
    /// 400: a query parameter is malformed or out of range (a time that is
    /// not RFC 3339, a range that ends before it starts, a step or limit
    /// out of bounds, a cursor this API did not hand out).
    INVALID_QUERY = ("invalid-query", BAD_REQUEST, "A query parameter is invalid");
    /// 400: a scope is not a valid scope string (see [`Scope`](crate::scope::Scope)).
    INVALID_SCOPE = ("invalid-scope", BAD_REQUEST, "A scope is invalid");
    /// 400: the path holds something that is not a key id.
    INVALID_KEY_ID = ("invalid-key-id", BAD_REQUEST, "That is not a key id");
    /// 403: the caller asked to grant a scope it does not hold itself.
    SCOPE_NOT_HELD = ("scope-not-held", FORBIDDEN, "A scope cannot be granted");
    /// 404: no key has this id.
    KEY_NOT_FOUND = ("key-not-found", NOT_FOUND, "No such key");
    /// 409: the key is revoked; revocation is final.
    KEY_REVOKED = ("key-revoked", CONFLICT, "The key is revoked");
    /// 409: the key has expired and cannot be rotated.
    KEY_EXPIRED = ("key-expired", CONFLICT, "The key has expired");
    /// 409: the key signs requests and is not rotated into a bearer key.
    SIGNING_KEY = ("signing-key", CONFLICT, "The key signs requests");
    /// 422: well-formed limits that cannot apply together (a duplicate
    /// policy name, an invalid policy name, a zero quota, a window out of
    /// range).
    INVALID_LIMITS = ("invalid-limits", UNPROCESSABLE_ENTITY, "The limits are invalid");
    /// 422: a time computed from the request lies beyond what the server
    /// can represent.
    OUT_OF_RANGE = ("out-of-range", UNPROCESSABLE_ENTITY, "A time is out of range");
    /// 503: the key store or the usage source failed; try again.
    UNAVAILABLE = ("unavailable", SERVICE_UNAVAILABLE, "A backend is unavailable");
}

/// An RFC 9457 problem document, answered as `application/problem+json`.
///
/// Its `detail` says what is wrong in words for the caller; it never holds
/// a secret.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct Problem {
    /// A URI that identifies the kind of problem (see [`ProblemType`]);
    /// `about:blank` for authentication and rate-limit refusals.
    #[serde(rename = "type")]
    #[schema(example = "urn:keyward:problem:invalid-body")]
    pub problem_type: Cow<'static, str>,
    /// A short summary of the kind of problem.
    pub title: Cow<'static, str>,
    /// The HTTP status code.
    #[schema(example = 400)]
    pub status: u16,
    /// What is wrong with this request.
    pub detail: String,
}

impl Problem {
    /// A problem of `kind`, saying `detail`.
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            problem_type: Cow::Borrowed(kind.uri),
            title: Cow::Borrowed(kind.title),
            status: kind.status.as_u16(),
            detail: detail.into(),
        }
    }

    /// The 503 for a backend that failed; the error goes to the log, not
    /// to the client.
    pub(crate) fn unavailable(what: &str, error: &dyn std::error::Error) -> Self {
        tracing::error!(target: "keyward::admin", error = %error, "{what} failed");
        Problem::new(
            ProblemType::UNAVAILABLE,
            format!("{what} failed; try again later."),
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

impl From<ManagerError> for Problem {
    fn from(error: ManagerError) -> Self {
        match error {
            ManagerError::NotFound(id) => Problem::new(
                ProblemType::KEY_NOT_FOUND,
                format!("No key has the id {id}."),
            ),
            ManagerError::Revoked(id) => Problem::new(
                ProblemType::KEY_REVOKED,
                format!("The key {id} is revoked; revocation is final."),
            ),
            ManagerError::Expired(id) => Problem::new(
                ProblemType::KEY_EXPIRED,
                format!("The key {id} has expired; issue a new key instead."),
            ),
            ManagerError::SigningKey(id) => Problem::new(
                ProblemType::SIGNING_KEY,
                format!("The key {id} signs requests; register a new signing key instead."),
            ),
            ManagerError::ExpiryOutOfRange => Problem::new(
                ProblemType::OUT_OF_RANGE,
                "The requested time lies beyond what the server can represent.",
            ),
            other => Problem::unavailable("The key store", &other),
        }
    }
}

impl From<UsageQueryError> for Problem {
    fn from(error: UsageQueryError) -> Self {
        Problem::unavailable("The usage source", &error)
    }
}
