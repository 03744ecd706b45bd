use std::fmt;

use http::header::HOST;
use http::{HeaderMap, HeaderName, Method, Uri};

use super::input::Component;
use super::{SignError, SignatureError};

/// How the request's target is seen when the request line does not say:
/// its scheme and authority.
///
/// A server behind HTTP/1.1 receives `/path?query` and a `Host` field; the
/// scheme is not in the request. keyward takes the scheme and authority
/// from the URI when it has them, then from this context (scheme), then
/// from `Host` (authority). Fix the authority to your public host name
/// with [`authority`](Self::authority) when a proxy rewrites `Host`: the
/// signature then also proves the request was meant for you.
///
/// # Example
///
/// ```
/// use keyward::signature::BaseContext;
///
/// let context = BaseContext::new().scheme("https").authority("api.example.com");
/// # let _ = context;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseContext {
    scheme: String,
    authority: Option<String>,
}

impl BaseContext {
    /// Scheme `https` unless the URI says otherwise; authority from the URI
    /// or `Host`.
    pub fn new() -> Self {
        Self {
            scheme: "https".to_owned(),
            authority: None,
        }
    }

    /// The scheme when the URI has none (`@scheme`, `@target-uri`, and
    /// the default port `@authority` leaves out).
    #[must_use]
    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.scheme = scheme.into().to_ascii_lowercase();
        self
    }

    /// The authority, whatever the request says (`api.example.com`, or
    /// `host:port`).
    #[must_use]
    pub fn authority(mut self, authority: impl Into<String>) -> Self {
        self.authority = Some(normalize_authority(&authority.into(), &self.scheme));
        self
    }
}

impl Default for BaseContext {
    fn default() -> Self {
        Self::new()
    }
}

/// The signature base (RFC 9421 §2.5): the exact bytes a signature signs,
/// one line per covered component, then the `@signature-params` line.
///
/// `Debug` shows the covered components' names and the length, never the
/// covered values (a covered `Authorization` or `Cookie` field would be a
/// secret).
#[derive(Clone, PartialEq, Eq)]
pub struct SignatureBase {
    bytes: Vec<u8>,
    covered: Vec<String>,
}

impl SignatureBase {
    /// The bytes that are signed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for SignatureBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureBase")
            .field("covered", &self.covered)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// Why a base could not be built: the caller decides whose error it is.
#[derive(Debug)]
pub(crate) enum BaseError {
    Unsupported(String),
    Missing(String),
}

impl BaseError {
    pub(crate) fn into_verify_error(self) -> SignatureError {
        match self {
            Self::Unsupported(name) => SignatureError::UnsupportedComponent(name),
            Self::Missing(name) => SignatureError::MissingComponent(name),
        }
    }

    pub(crate) fn into_sign_error(self) -> SignError {
        match self {
            Self::Unsupported(name) => SignError::UnsupportedComponent(name),
            Self::Missing(name) => SignError::MissingComponent(name),
        }
    }
}

/// Builds the base: each component's line, then `@signature-params`.
pub(crate) fn build(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    context: &BaseContext,
    components: &[Component],
    serialized_params: &str,
) -> Result<SignatureBase, BaseError> {
    let mut bytes = Vec::with_capacity(256);
    for component in components {
        bytes.extend_from_slice(component.identifier().as_bytes());
        bytes.extend_from_slice(b": ");
        if component.has_parameters() {
            return Err(BaseError::Unsupported(component.name().to_owned()));
        }
        value(method, uri, headers, context, component.name(), &mut bytes)?;
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(b"\"@signature-params\": ");
    bytes.extend_from_slice(serialized_params.as_bytes());
    Ok(SignatureBase {
        bytes,
        covered: components.iter().map(|c| c.name().to_owned()).collect(),
    })
}

/// Appends the value of component `name` (RFC 9421 §2.1, §2.2).
fn value(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    context: &BaseContext,
    name: &str,
    out: &mut Vec<u8>,
) -> Result<(), BaseError> {
    let scheme = || {
        uri.scheme_str()
            .map_or_else(|| context.scheme.clone(), str::to_ascii_lowercase)
    };
    match name {
        "@method" => out.extend_from_slice(method.as_str().as_bytes()),
        "@authority" => {
            out.extend_from_slice(authority(uri, headers, context, &scheme())?.as_bytes())
        }
        "@scheme" => out.extend_from_slice(scheme().as_bytes()),
        "@path" => out.extend_from_slice(path(uri).as_bytes()),
        "@query" => {
            out.push(b'?');
            out.extend_from_slice(uri.query().unwrap_or_default().as_bytes());
        }
        "@request-target" => {
            out.extend_from_slice(path(uri).as_bytes());
            if let Some(query) = uri.query() {
                out.push(b'?');
                out.extend_from_slice(query.as_bytes());
            }
        }
        "@target-uri" => {
            let scheme = scheme();
            out.extend_from_slice(scheme.as_bytes());
            out.extend_from_slice(b"://");
            out.extend_from_slice(authority(uri, headers, context, &scheme)?.as_bytes());
            out.extend_from_slice(path(uri).as_bytes());
            if let Some(query) = uri.query() {
                out.push(b'?');
                out.extend_from_slice(query.as_bytes());
            }
        }
        derived if derived.starts_with('@') => {
            // @status belongs to responses; @query-param needs parameters;
            // @signature-params is never a covered component.
            return Err(BaseError::Unsupported(derived.to_owned()));
        }
        field => {
            // Component names of fields are lowercase (RFC 9421 §2.1).
            if field.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(BaseError::Unsupported(field.to_owned()));
            }
            let header = HeaderName::from_bytes(field.as_bytes())
                .map_err(|_| BaseError::Unsupported(field.to_owned()))?;
            let mut lines = headers.get_all(&header).iter().peekable();
            if lines.peek().is_none() {
                return Err(BaseError::Missing(field.to_owned()));
            }
            for (i, line) in lines.enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(line.as_bytes().trim_ascii());
            }
        }
    }
    Ok(())
}

fn path(uri: &Uri) -> &str {
    match uri.path() {
        "" => "/",
        path => path,
    }
}

/// `@authority`: the context's, the URI's, or the `Host` field's, in
/// lowercase and without the scheme's default port.
fn authority(
    uri: &Uri,
    headers: &HeaderMap,
    context: &BaseContext,
    scheme: &str,
) -> Result<String, BaseError> {
    if let Some(fixed) = &context.authority {
        return Ok(fixed.clone());
    }
    if let Some(authority) = uri.authority() {
        return Ok(normalize_authority(authority.as_str(), scheme));
    }
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) => host
            .to_str()
            .map(|host| normalize_authority(host.trim(), scheme))
            .map_err(|_| BaseError::Missing("@authority".to_owned())),
        _ => Err(BaseError::Missing("@authority".to_owned())),
    }
}

fn normalize_authority(authority: &str, scheme: &str) -> String {
    let authority = authority.to_ascii_lowercase();
    let default = match scheme {
        "https" => Some(":443"),
        "http" => Some(":80"),
        _ => None,
    };
    match default.and_then(|port| authority.strip_suffix(port)) {
        Some(short) => short.to_owned(),
        None => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_is_lowercase_without_the_default_port() {
        assert_eq!(
            normalize_authority("Example.COM:443", "https"),
            "example.com"
        );
        assert_eq!(normalize_authority("example.com:80", "http"), "example.com");
        assert_eq!(
            normalize_authority("example.com:8443", "https"),
            "example.com:8443"
        );
        assert_eq!(
            normalize_authority("example.com:80", "https"),
            "example.com:80"
        );
    }

    #[test]
    fn two_host_fields_are_no_authority() {
        let mut headers = HeaderMap::new();
        headers.append(HOST, "a.example".parse().unwrap());
        headers.append(HOST, "b.example".parse().unwrap());
        let uri: Uri = "/".parse().unwrap();
        assert!(authority(&uri, &headers, &BaseContext::new(), "https").is_err());
    }
}
