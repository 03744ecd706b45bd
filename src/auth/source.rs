use std::fmt;

use http::header::{HeaderName, AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderValue, Request, Uri};

use crate::reject::RejectReason;

/// Where a request may carry its key. Sources are tried in the order given
/// to [`AuthLayer::sources`](super::AuthLayer::sources).
///
/// The default is `[KeySource::bearer(), KeySource::x_api_key()]`. Query
/// parameters and cookies are weaker places for a key and are only used when
/// you name them with [`insecure_query`](KeySource::insecure_query) or
/// [`insecure_cookie`](KeySource::insecure_cookie).
#[derive(Clone, PartialEq, Eq)]
pub struct KeySource(Source);

#[derive(Clone, PartialEq, Eq)]
enum Source {
    Bearer,
    Header(HeaderName),
    Query(Box<str>),
    Cookie(Box<str>),
}

impl KeySource {
    /// `Authorization: Bearer <key>`; the scheme is matched case-insensitively.
    /// Other schemes (`Basic`, ...) are not a key and are left alone.
    pub fn bearer() -> Self {
        Self(Source::Bearer)
    }

    /// `X-API-Key: <key>`.
    pub fn x_api_key() -> Self {
        Self(Source::Header(HeaderName::from_static("x-api-key")))
    }

    /// Any header holding the bare key.
    pub fn header(name: HeaderName) -> Self {
        Self(Source::Header(name))
    }

    /// A query-string parameter, such as `?api_key=<key>`.
    ///
    /// **Insecure**: URLs end up in proxy logs, browser history and
    /// `Referer` headers (OWASP ASVS 14.2.1). Use it only for clients that
    /// cannot send headers. The parameter is removed from the URI before the
    /// inner service sees it (unless credentials are kept).
    pub fn insecure_query(param: &str) -> Self {
        Self(Source::Query(param.into()))
    }

    /// A cookie, such as `Cookie: api_key=<key>`.
    ///
    /// **Insecure**: browsers send cookies on cross-site requests, so a
    /// cookie-borne key needs CSRF protection that keyward does not give.
    /// The cookie is removed before the inner service sees it (unless
    /// credentials are kept).
    pub fn insecure_cookie(name: &str) -> Self {
        Self(Source::Cookie(name.into()))
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::Bearer => f.write_str("Bearer"),
            Source::Header(name) => write!(f, "Header({name})"),
            Source::Query(param) => write!(f, "InsecureQuery({param})"),
            Source::Cookie(name) => write!(f, "InsecureCookie({name})"),
        }
    }
}

/// The key a request presents, borrowed from it, and which sources held it.
#[derive(Clone, Copy)]
pub(crate) struct Presented<'a> {
    pub(crate) key: &'a str,
    pub(crate) sources: SourceMask,
}

/// A bit per source (sources beyond the 64th are never used: see
/// `AuthLayer::sources`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SourceMask(u64);

pub(crate) const MAX_SOURCES: usize = 64;

/// Finds the presented key.
///
/// `Ok(None)`: no key anywhere. `Err(InvalidRequest)`: one source holds two
/// values, two sources hold different keys, or a value is empty.
/// `Err(MalformedKey)`: a value that cannot be a key (not visible ASCII).
pub(crate) fn extract<'a, B>(
    sources: &[KeySource],
    request: &'a Request<B>,
) -> Result<Option<Presented<'a>>, RejectReason> {
    let mut found: Option<Presented<'a>> = None;
    for (i, source) in sources.iter().enumerate().take(MAX_SOURCES) {
        let value = match &source.0 {
            Source::Bearer => bearer(request.headers())?,
            Source::Header(name) => single_header(request.headers(), name)?,
            Source::Query(param) => query(request.uri(), param)?,
            Source::Cookie(name) => cookie(request.headers(), name)?,
        };
        let Some(key) = value else { continue };
        if key.is_empty() {
            return Err(RejectReason::InvalidRequest);
        }
        match &mut found {
            None => {
                found = Some(Presented {
                    key,
                    sources: SourceMask(1 << i),
                })
            }
            Some(first) if first.key == key => first.sources.0 |= 1 << i,
            Some(_) => return Err(RejectReason::InvalidRequest),
        }
    }
    Ok(found)
}

fn only<'a>(
    mut values: impl Iterator<Item = &'a HeaderValue>,
) -> Result<Option<&'a HeaderValue>, RejectReason> {
    let first = values.next();
    if values.next().is_some() {
        return Err(RejectReason::InvalidRequest);
    }
    Ok(first)
}

fn visible_ascii(value: &HeaderValue) -> Result<&str, RejectReason> {
    value.to_str().map_err(|_| RejectReason::MalformedKey)
}

fn bearer(headers: &HeaderMap) -> Result<Option<&str>, RejectReason> {
    let Some(value) = only(headers.get_all(AUTHORIZATION).iter())? else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let scheme_len = bytes.iter().position(|&b| b == b' ').unwrap_or(bytes.len());
    if !bytes[..scheme_len].eq_ignore_ascii_case(b"bearer") {
        // Another scheme: not ours to judge.
        return Ok(None);
    }
    let value = visible_ascii(value)?;
    Ok(Some(value[scheme_len..].trim_matches(' ')))
}

fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a str>, RejectReason> {
    match only(headers.get_all(name).iter())? {
        Some(value) => Ok(Some(visible_ascii(value)?.trim_matches(' '))),
        None => Ok(None),
    }
}

fn query<'a>(uri: &'a Uri, param: &str) -> Result<Option<&'a str>, RejectReason> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    one_pair(query.split('&'), param)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, RejectReason> {
    let mut found = None;
    for value in headers.get_all(COOKIE) {
        // A cookie header that is not visible ASCII cannot hold our key.
        let Ok(value) = value.to_str() else { continue };
        if let Some(key) = one_pair(value.split(';'), name)? {
            if found.replace(key).is_some() {
                return Err(RejectReason::InvalidRequest);
            }
        }
    }
    Ok(found)
}

/// The value of the only `name=value` pair named `name`.
fn one_pair<'a>(
    pairs: impl Iterator<Item = &'a str>,
    name: &str,
) -> Result<Option<&'a str>, RejectReason> {
    let mut found = None;
    for pair in pairs {
        let pair = pair.trim_matches(' ');
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        if key == name && found.replace(value).is_some() {
            return Err(RejectReason::InvalidRequest);
        }
    }
    Ok(found)
}

/// Removes the credentials that `mask` says were found.
pub(crate) fn strip<B>(sources: &[KeySource], mask: SourceMask, request: &mut Request<B>) {
    for (i, source) in sources.iter().enumerate().take(MAX_SOURCES) {
        if mask.0 & (1 << i) == 0 {
            continue;
        }
        match &source.0 {
            Source::Bearer => {
                request.headers_mut().remove(AUTHORIZATION);
            }
            Source::Header(name) => {
                request.headers_mut().remove(name);
            }
            Source::Query(param) => strip_query(request.uri_mut(), param),
            Source::Cookie(name) => strip_cookie(request.headers_mut(), name),
        }
    }
}

fn strip_query(uri: &mut Uri, param: &str) {
    let Some(query) = uri.query() else { return };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split_once('=').is_none_or(|(k, _)| k != param))
        .collect();
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    if let Ok(stripped) = Uri::from_parts(parts) {
        *uri = stripped;
    }
}

fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .map(|pair| pair.trim_matches(' '))
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split_once('=').is_none_or(|(k, _)| k != name))
        .map(str::to_owned)
        .collect();
    headers.remove(COOKIE);
    if !kept.is_empty() {
        if let Ok(value) = HeaderValue::try_from(kept.join("; ")) {
            headers.insert(COOKIE, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Vec<KeySource> {
        vec![
            KeySource::bearer(),
            KeySource::x_api_key(),
            KeySource::insecure_query("api_key"),
            KeySource::insecure_cookie("api_key"),
        ]
    }

    fn key_of(request: &Request<()>) -> Result<Option<&str>, RejectReason> {
        extract(&sources(), request).map(|p| p.map(|p| p.key))
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let request = Request::builder()
                .header("authorization", format!("{scheme} k1"))
                .body(())
                .unwrap();
            assert_eq!(key_of(&request), Ok(Some("k1")));
        }
        let basic = Request::builder()
            .header("authorization", "Basic dTpw")
            .body(())
            .unwrap();
        assert_eq!(key_of(&basic), Ok(None));
    }

    #[test]
    fn duplicates_and_conflicts_are_refused() {
        let twice = Request::builder()
            .header("x-api-key", "k1")
            .header("x-api-key", "k1")
            .body(())
            .unwrap();
        assert_eq!(key_of(&twice), Err(RejectReason::InvalidRequest));
        let two_keys = Request::builder()
            .header("authorization", "Bearer k1")
            .header("x-api-key", "k2")
            .body(())
            .unwrap();
        assert_eq!(key_of(&two_keys), Err(RejectReason::InvalidRequest));
        let same_key = Request::builder()
            .header("authorization", "Bearer k1")
            .header("x-api-key", "k1")
            .body(())
            .unwrap();
        assert_eq!(key_of(&same_key), Ok(Some("k1")));
        let empty = Request::builder()
            .header("authorization", "Bearer ")
            .body(())
            .unwrap();
        assert_eq!(key_of(&empty), Err(RejectReason::InvalidRequest));
        let query_twice = Request::builder()
            .uri("/?api_key=a&api_key=b")
            .body(())
            .unwrap();
        assert_eq!(key_of(&query_twice), Err(RejectReason::InvalidRequest));
    }

    #[test]
    fn non_ascii_is_malformed() {
        let request = Request::builder()
            .header("x-api-key", HeaderValue::from_bytes(b"k\xff1").unwrap())
            .body(())
            .unwrap();
        assert_eq!(key_of(&request), Err(RejectReason::MalformedKey));
    }

    #[test]
    fn query_and_cookie_are_found_and_stripped() {
        let mut request = Request::builder()
            .uri("/pets?a=1&api_key=k1&b=2")
            .header("cookie", "theme=dark; api_key=k1")
            .body(())
            .unwrap();
        let presented = extract(&sources(), &request).unwrap().unwrap();
        assert_eq!(presented.key, "k1");
        let mask = presented.sources;
        strip(&sources(), mask, &mut request);
        assert_eq!(request.uri(), "/pets?a=1&b=2");
        assert_eq!(request.headers()["cookie"], "theme=dark");

        let mut only_key = Request::builder().uri("/pets?api_key=k1").body(()).unwrap();
        let mask = extract(&sources(), &only_key).unwrap().unwrap().sources;
        strip(&sources(), mask, &mut only_key);
        assert_eq!(only_key.uri(), "/pets");
    }

    #[test]
    fn query_and_cookie_are_ignored_unless_enabled() {
        let request = Request::builder()
            .uri("/pets?api_key=k1")
            .header("cookie", "api_key=k1")
            .body(())
            .unwrap();
        let defaults = [KeySource::bearer(), KeySource::x_api_key()];
        assert!(extract(&defaults, &request).unwrap().is_none());
    }
}
