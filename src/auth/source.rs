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
    /// Basic auth's user name; the password it must come with ("" for
    /// none).
    Basic(Box<str>),
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

    /// `Authorization: Basic base64(<key>:)`: the key as Basic auth's user
    /// name with an empty password, as Stripe takes it (`curl -u
    /// sk_live_…:`). Opt-in: add it to
    /// [`AuthLayer::sources`](super::AuthLayer::sources).
    ///
    /// The scheme is matched case-insensitively; the credentials are
    /// decoded with the standard base64 alphabet (padding optional), and
    /// must be `<key>:` exactly: anything else under `Basic` — base64 that
    /// does not decode, no `:`, a password, a value that is not visible
    /// ASCII, more than [`MAX_BASIC_LEN`] characters — is refused as a
    /// malformed key (`401`), an empty user name as a malformed request
    /// (`400`). A password-holding client: see
    /// [`basic_user_with_password`](Self::basic_user_with_password).
    ///
    /// `Authorization` holds one credential: with both `bearer()` and
    /// `basic_user()` among the sources, `Bearer <key>` is read by the one
    /// and `Basic …` by the other, and the header sent twice is refused
    /// (`400`). The header is removed before the inner service sees the
    /// request (unless credentials are kept).
    ///
    /// ```
    /// use keyward::auth::{AuthLayer, KeySource};
    /// use keyward::{KeyFormat, MemoryStore};
    ///
    /// let layer = AuthLayer::new(MemoryStore::new(), KeyFormat::new("sk_live")?)
    ///     .sources([KeySource::bearer(), KeySource::x_api_key(), KeySource::basic_user()]);
    /// # let _ = layer;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn basic_user() -> Self {
        Self(Source::Basic("".into()))
    }

    /// Like [`basic_user`](Self::basic_user), for clients that always send a
    /// password: the key as the user name, and `password` — a fixed,
    /// public value the service documents (some APIs ask for `X`) — as the
    /// password; any other password is refused as a malformed key. The
    /// password adds no secret: the key is the credential.
    pub fn basic_user_with_password(password: &str) -> Self {
        Self(Source::Basic(password.into()))
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
            // The configured password is no secret, but shown as whether one
            // is set.
            Source::Basic(password) if password.is_empty() => f.write_str("BasicUser"),
            Source::Basic(_) => f.write_str("BasicUser(with password)"),
            Source::Header(name) => write!(f, "Header({name})"),
            Source::Query(param) => write!(f, "InsecureQuery({param})"),
            Source::Cookie(name) => write!(f, "InsecureCookie({name})"),
        }
    }
}

/// The most characters of base64 [`KeySource::basic_user`] decodes: 1024
/// (768 bytes of `key:password`, far more than any key).
pub const MAX_BASIC_LEN: usize = 1024;

/// The key a request presents, and which sources held it.
pub(crate) struct Presented<'a> {
    pub(crate) key: KeyText<'a>,
    pub(crate) sources: SourceMask,
}

/// A presented key: borrowed from the request, or decoded from it (Basic
/// auth), then wiped on drop.
pub(crate) enum KeyText<'a> {
    Borrowed(&'a str),
    Decoded(zeroize::Zeroizing<String>),
}

impl std::ops::Deref for KeyText<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            KeyText::Borrowed(key) => key,
            KeyText::Decoded(key) => key.as_str(),
        }
    }
}

/// A bit per source (sources beyond the 64th are never used: see
/// `AuthLayer::sources`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SourceMask(u64);

pub(crate) const MAX_SOURCES: usize = 64;

/// A layer's key sources, with the header names they read: what one pass
/// over a request's headers looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeySources {
    list: Vec<KeySource>,
    /// The distinct header names the sources read, in the order of the
    /// first source that reads each (`Authorization` once for `bearer()`
    /// and `basic_user()`).
    names: Vec<HeaderName>,
    /// For each source, the index in `names` of the header it reads
    /// (unused for a query parameter).
    name_of: Vec<u8>,
}

/// How many header names are found at once, before the sources judge
/// them; the names of sources beyond (a layer that reads more than four
/// headers) are looked up one by one, with the same answers.
const SCANNED: usize = 4;

/// A request with at most this many header values per watched name is
/// read in one pass over its headers; a larger one by a look-up per name.
/// Measured (callgrind, `examples/profile`): a look-up costs about as much
/// as passing over two headers, hashing the name included.
const SCAN_PER_NAME: usize = 2;

impl KeySources {
    /// At most [`MAX_SOURCES`] of `sources`, in order.
    pub(crate) fn new(sources: impl IntoIterator<Item = KeySource>) -> Self {
        let list: Vec<KeySource> = sources.into_iter().take(MAX_SOURCES).collect();
        let mut names: Vec<HeaderName> = Vec::new();
        let name_of = list
            .iter()
            .map(|source| {
                let name = match &source.0 {
                    Source::Bearer | Source::Basic(_) => AUTHORIZATION,
                    Source::Header(name) => name.clone(),
                    Source::Cookie(_) => COOKIE,
                    Source::Query(_) => return 0,
                };
                let index = names.iter().position(|n| *n == name).unwrap_or_else(|| {
                    names.push(name);
                    names.len() - 1
                });
                // At most 64 sources, so at most 64 names.
                u8::try_from(index).unwrap_or(u8::MAX)
            })
            .collect();
        Self {
            list,
            names,
            name_of,
        }
    }

    /// The sources, in order.
    pub(crate) fn list(&self) -> &[KeySource] {
        &self.list
    }
}

/// What a request holds under one header name: its first value, and
/// whether there are more.
#[derive(Clone, Copy, Default)]
struct Seen<'a> {
    first: Option<&'a HeaderValue>,
    more: bool,
}

impl<'a> Seen<'a> {
    #[inline]
    fn of(values: http::header::GetAll<'a, HeaderValue>) -> Self {
        let mut values = values.iter();
        Self {
            first: values.next(),
            more: values.next().is_some(),
        }
    }

    /// The only value: `Err(InvalidRequest)` if there are two or more.
    #[inline]
    fn only(self) -> Result<Option<&'a HeaderValue>, RejectReason> {
        if self.more {
            return Err(RejectReason::InvalidRequest);
        }
        Ok(self.first)
    }
}

/// Finds the presented key.
///
/// `Ok(None)`: no key anywhere. `Err(InvalidRequest)`: one source holds two
/// values, two sources hold different keys, or a value is empty.
/// `Err(MalformedKey)`: a value that cannot be a key (not visible ASCII).
///
/// The headers the sources read are found first, each distinct name once
/// (in one pass over a small request's headers, by look-ups in a larger
/// one); then each source, in order, judges what it was given, as if it
/// had looked its header up alone (so the first source to refuse decides
/// the answer).
pub(crate) fn extract<'a, B>(
    sources: &KeySources,
    request: &'a Request<B>,
) -> Result<Option<Presented<'a>>, RejectReason> {
    let headers = request.headers();
    let mut scanned = [Seen::default(); SCANNED];
    if headers.len() <= SCAN_PER_NAME * sources.names.len() {
        scan(&sources.names, headers, &mut scanned);
    } else {
        for (seen, name) in scanned.iter_mut().zip(&sources.names) {
            *seen = Seen::of(headers.get_all(name));
        }
    }
    // What the request holds under the header a source reads: scanned,
    // or (beyond the first four names) looked up.
    let seen = |header: u8| -> Seen<'a> {
        match scanned.get(usize::from(header)) {
            Some(seen) => *seen,
            None => look_up(&sources.names, header, headers),
        }
    };
    let mut found: Option<Presented<'a>> = None;
    for (i, (source, &header)) in sources.list.iter().zip(&sources.name_of).enumerate() {
        let value = match &source.0 {
            Source::Bearer => bearer(seen(header))?.map(KeyText::Borrowed),
            Source::Basic(password) => basic(seen(header), password)?.map(KeyText::Decoded),
            Source::Header(_) => single_header(seen(header))?.map(KeyText::Borrowed),
            Source::Query(param) => query(request.uri(), param)?.map(KeyText::Borrowed),
            Source::Cookie(name) => cookie(headers, seen(header), name)?.map(KeyText::Borrowed),
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
            Some(first) if *first.key == *key => first.sources.0 |= 1 << i,
            Some(_) => return Err(RejectReason::InvalidRequest),
        }
    }
    Ok(found)
}

/// What `headers` hold under the `index`th of `names`, by look-up.
#[cold]
fn look_up<'a>(names: &[HeaderName], index: u8, headers: &'a HeaderMap) -> Seen<'a> {
    names
        .get(usize::from(index))
        .map(|name| Seen::of(headers.get_all(name)))
        .unwrap_or_default()
}

/// One pass over `headers`: the first value, and whether there are more,
/// under each of the first [`SCANNED`] of `names`, into `seen`.
#[inline]
fn scan<'a>(names: &[HeaderName], headers: &'a HeaderMap, seen: &mut [Seen<'a>; SCANNED]) {
    let names = &names[..names.len().min(SCANNED)];
    if names.is_empty() {
        return;
    }
    for (name, value) in headers {
        if let Some(index) = names.iter().position(|watched| watched == name) {
            if let Some(slot) = seen.get_mut(index) {
                if slot.first.is_none() {
                    slot.first = Some(value);
                } else {
                    slot.more = true;
                }
            }
        }
    }
}

fn visible_ascii(value: &HeaderValue) -> Result<&str, RejectReason> {
    value.to_str().map_err(|_| RejectReason::MalformedKey)
}

/// `value` without the spaces (not tabs) at either end.
fn trim_spaces(value: &str) -> &str {
    let bytes = value.as_bytes();
    let start = bytes.iter().position(|&b| b != b' ').unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |last| last + 1);
    // Both ends are next to an ASCII space or at an end of the string:
    // character boundaries.
    value.get(start..end).unwrap_or_default()
}

/// Whether the scheme of an `Authorization` value (up to its first space)
/// is `scheme`, a lowercase word of at most eight letters, in any case:
/// the value begins with it and ends or goes on with a space there. Read
/// as one word: for a letter, `b | 0x20` is its lowercase, and no other
/// byte becomes a letter that way.
fn scheme_is(value: &[u8], scheme: &[u8]) -> bool {
    debug_assert!(scheme.len() <= 8, "a scheme of at most eight letters");
    let len = scheme.len().min(8);
    let Some(head) = value.get(..len) else {
        return false;
    };
    let word = |bytes: &[u8]| {
        let mut word = [0u8; 8];
        word[..bytes.len()].copy_from_slice(bytes);
        u64::from_le_bytes(word)
    };
    let letters = word(&[0x20; 8][..len]);
    (word(head) | letters) == word(&scheme[..len]) && value.get(len).is_none_or(|&b| b == b' ')
}

fn bearer(authorization: Seen<'_>) -> Result<Option<&str>, RejectReason> {
    let Some(value) = authorization.only()? else {
        return Ok(None);
    };
    if !scheme_is(value.as_bytes(), b"bearer") {
        // Another scheme: not ours to judge.
        return Ok(None);
    }
    let value = visible_ascii(value)?;
    Ok(Some(trim_spaces(&value[b"bearer".len()..])))
}

/// The key in `Authorization: Basic base64(<key>:<password>)`, if the
/// scheme is Basic; see [`KeySource::basic_user`].
fn basic(
    authorization: Seen<'_>,
    password: &str,
) -> Result<Option<zeroize::Zeroizing<String>>, RejectReason> {
    let Some(value) = authorization.only()? else {
        return Ok(None);
    };
    if !scheme_is(value.as_bytes(), b"basic") {
        return Ok(None);
    }
    let value = visible_ascii(value)?;
    parse_basic(trim_spaces(&value[b"basic".len()..]), password).map(Some)
}

/// Decodes Basic credentials (the base64 after the scheme) and returns the
/// user name, when the password is `password`.
pub(crate) fn parse_basic(
    encoded: &str,
    password: &str,
) -> Result<zeroize::Zeroizing<String>, RejectReason> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine as _;
    const STANDARD_PADDING_OPTIONAL: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    if encoded.is_empty() {
        return Err(RejectReason::InvalidRequest);
    }
    if encoded.len() > MAX_BASIC_LEN {
        return Err(RejectReason::MalformedKey);
    }
    let decoded = zeroize::Zeroizing::new(
        STANDARD_PADDING_OPTIONAL
            .decode(encoded)
            .map_err(|_| RejectReason::MalformedKey)?,
    );
    // A key is visible ASCII; so is the password a service documents.
    if !decoded.iter().all(|b| b.is_ascii_graphic()) {
        return Err(RejectReason::MalformedKey);
    }
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or(RejectReason::MalformedKey)?;
    let (user, rest) = decoded.split_at(colon);
    // The configured password is a secret too: compared in constant time.
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        &rest[1..],
        password.as_bytes(),
    )) {
        return Err(RejectReason::MalformedKey);
    }
    if user.is_empty() {
        return Err(RejectReason::InvalidRequest);
    }
    // Visible ASCII, so UTF-8.
    let user = std::str::from_utf8(user).map_err(|_| RejectReason::MalformedKey)?;
    Ok(zeroize::Zeroizing::new(user.to_owned()))
}

fn single_header(header: Seen<'_>) -> Result<Option<&str>, RejectReason> {
    match header.only()? {
        Some(value) => Ok(Some(trim_spaces(visible_ascii(value)?))),
        None => Ok(None),
    }
}

fn query<'a>(uri: &'a Uri, param: &str) -> Result<Option<&'a str>, RejectReason> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    one_pair(query.split('&'), param)
}

/// The cookie `name`, from the `Cookie` headers (`seen`, or all of them
/// if there are several).
fn cookie<'a>(
    headers: &'a HeaderMap,
    seen: Seen<'a>,
    name: &str,
) -> Result<Option<&'a str>, RejectReason> {
    if seen.more {
        cookie_in(headers.get_all(COOKIE), name)
    } else {
        cookie_in(seen.first, name)
    }
}

fn cookie_in<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
    name: &str,
) -> Result<Option<&'a str>, RejectReason> {
    let mut found = None;
    for value in values {
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
        let pair = trim_spaces(pair);
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
            Source::Bearer | Source::Basic(_) => {
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
        extract(&KeySources::new(sources()), request).map(|p| {
            p.map(|p| match p.key {
                KeyText::Borrowed(key) => key,
                KeyText::Decoded(_) => panic!("no Basic source here"),
            })
        })
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
        let presented = extract(&KeySources::new(sources()), &request)
            .unwrap()
            .unwrap();
        assert_eq!(&*presented.key, "k1");
        let mask = presented.sources;
        strip(&sources(), mask, &mut request);
        assert_eq!(request.uri(), "/pets?a=1&b=2");
        assert_eq!(request.headers()["cookie"], "theme=dark");

        let mut only_key = Request::builder().uri("/pets?api_key=k1").body(()).unwrap();
        let mask = extract(&KeySources::new(sources()), &only_key)
            .unwrap()
            .unwrap()
            .sources;
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
        assert!(extract(&KeySources::new(defaults), &request)
            .unwrap()
            .is_none());
    }

    fn basic_sources() -> Vec<KeySource> {
        vec![
            KeySource::bearer(),
            KeySource::x_api_key(),
            KeySource::basic_user(),
        ]
    }

    fn presented(
        sources: &[KeySource],
        request: &Request<()>,
    ) -> Result<Option<String>, RejectReason> {
        extract(&KeySources::new(sources.iter().cloned()), request)
            .map(|p| p.map(|p| p.key.to_string()))
    }

    fn with_authorization(value: &str) -> Request<()> {
        Request::builder()
            .header("authorization", value)
            .body(())
            .unwrap()
    }

    fn encode(credentials: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(credentials)
    }

    #[test]
    fn basic_user_and_bearer_share_the_authorization_header() {
        let sources = basic_sources();
        let basic = with_authorization(&format!("Basic {}", encode("sk_live_k1:")));
        assert_eq!(presented(&sources, &basic), Ok(Some("sk_live_k1".into())));
        let lower = with_authorization(&format!("basic   {}", encode("sk_live_k1:")));
        assert_eq!(presented(&sources, &lower), Ok(Some("sk_live_k1".into())));
        let bearer = with_authorization("Bearer sk_live_k1");
        assert_eq!(presented(&sources, &bearer), Ok(Some("sk_live_k1".into())));
        // Without the Basic source, Basic is not a key.
        let defaults = [KeySource::bearer(), KeySource::x_api_key()];
        assert_eq!(presented(&defaults, &basic), Ok(None));
        // The header twice: refused, whatever the schemes.
        let twice = Request::builder()
            .header("authorization", "Bearer sk_live_k1")
            .header("authorization", format!("Basic {}", encode("sk_live_k1:")))
            .body(())
            .unwrap();
        assert_eq!(
            presented(&sources, &twice),
            Err(RejectReason::InvalidRequest)
        );
        // The same key in Basic and X-API-Key is one key; two keys are not.
        let same = Request::builder()
            .header("authorization", format!("Basic {}", encode("sk_live_k1:")))
            .header("x-api-key", "sk_live_k1")
            .body(())
            .unwrap();
        assert_eq!(presented(&sources, &same), Ok(Some("sk_live_k1".into())));
        let two = Request::builder()
            .header("authorization", format!("Basic {}", encode("sk_live_k1:")))
            .header("x-api-key", "sk_live_k2")
            .body(())
            .unwrap();
        assert_eq!(presented(&sources, &two), Err(RejectReason::InvalidRequest));
    }

    #[test]
    fn basic_credentials_must_be_exactly_key_colon() {
        let sources = basic_sources();
        let refused = |value: String| presented(&sources, &with_authorization(&value));
        assert_eq!(refused("Basic !!!".into()), Err(RejectReason::MalformedKey));
        assert_eq!(
            refused(format!("Basic {}", encode("sk_live_k1"))),
            Err(RejectReason::MalformedKey)
        );
        assert_eq!(
            refused(format!("Basic {}", encode("sk_live_k1:pw"))),
            Err(RejectReason::MalformedKey)
        );
        assert_eq!(
            refused(format!("Basic {}", encode("sk live:"))),
            Err(RejectReason::MalformedKey)
        );
        assert_eq!(
            refused(format!("Basic {}", encode(":"))),
            Err(RejectReason::InvalidRequest)
        );
        assert_eq!(refused("Basic ".into()), Err(RejectReason::InvalidRequest));
        let long = "A".repeat(MAX_BASIC_LEN + 4);
        assert_eq!(
            refused(format!("Basic {long}")),
            Err(RejectReason::MalformedKey)
        );
        // Padding is optional.
        let unpadded = encode("sk_live_k1:").trim_end_matches('=').to_owned();
        assert_eq!(
            refused(format!("Basic {unpadded}")),
            Ok(Some("sk_live_k1".into()))
        );

        // A configured password is required, exactly.
        let with_password = [KeySource::basic_user_with_password("X")];
        let ask = |credentials: &str| {
            presented(
                &with_password,
                &with_authorization(&format!("Basic {}", encode(credentials))),
            )
        };
        assert_eq!(ask("sk_live_k1:X"), Ok(Some("sk_live_k1".into())));
        assert_eq!(ask("sk_live_k1:"), Err(RejectReason::MalformedKey));
        assert_eq!(ask("sk_live_k1:x"), Err(RejectReason::MalformedKey));
    }

    #[test]
    fn basic_is_stripped_like_bearer() {
        let sources = basic_sources();
        let mut request = with_authorization(&format!("Basic {}", encode("sk_live_k1:")));
        let mask = extract(&KeySources::new(sources.clone()), &request)
            .unwrap()
            .unwrap()
            .sources;
        strip(&sources, mask, &mut request);
        assert!(request.headers().get("authorization").is_none());
    }

    /// Extraction as it was before the headers were found in one pass: a
    /// look-up per source. The model the one-pass extraction must agree with.
    mod by_lookups {
        use super::super::*;

        pub(super) fn extract<'a, B>(
            sources: &[KeySource],
            request: &'a Request<B>,
        ) -> Result<Option<Presented<'a>>, RejectReason> {
            let mut found: Option<Presented<'a>> = None;
            for (i, source) in sources.iter().enumerate().take(MAX_SOURCES) {
                let headers = request.headers();
                let value = match &source.0 {
                    Source::Bearer => {
                        bearer(Seen::of(headers.get_all(AUTHORIZATION)))?.map(KeyText::Borrowed)
                    }
                    Source::Basic(password) => {
                        basic(Seen::of(headers.get_all(AUTHORIZATION)), password)?
                            .map(KeyText::Decoded)
                    }
                    Source::Header(name) => {
                        single_header(Seen::of(headers.get_all(name)))?.map(KeyText::Borrowed)
                    }
                    Source::Query(param) => query(request.uri(), param)?.map(KeyText::Borrowed),
                    Source::Cookie(name) => {
                        cookie_in(headers.get_all(COOKIE), name)?.map(KeyText::Borrowed)
                    }
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
                    Some(first) if *first.key == *key => first.sources.0 |= 1 << i,
                    Some(_) => return Err(RejectReason::InvalidRequest),
                }
            }
            Ok(found)
        }
    }

    /// Every kind of source, some reading the same header.
    fn any_source() -> impl proptest::strategy::Strategy<Value = KeySource> {
        proptest::sample::select(vec![
            KeySource::bearer(),
            KeySource::x_api_key(),
            KeySource::header(HeaderName::from_static("x-key")),
            KeySource::header(HeaderName::from_static("x-other")),
            KeySource::header(AUTHORIZATION),
            KeySource::basic_user(),
            KeySource::basic_user_with_password("X"),
            KeySource::insecure_query("api_key"),
            KeySource::insecure_cookie("api_key"),
            KeySource::insecure_cookie("other"),
        ])
    }

    /// A header value made of pieces that matter to some source.
    fn any_value() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::strategy::Strategy;
        let piece = proptest::sample::select(vec![
            b"Bearer ".to_vec(),
            b"bearer".to_vec(),
            b"Basic ".to_vec(),
            encode("k1:").into_bytes(),
            encode("k2:X").into_bytes(),
            b"k1".to_vec(),
            b"k2".to_vec(),
            b" ".to_vec(),
            b"\t".to_vec(),
            b"\xff".to_vec(),
            b"api_key=".to_vec(),
            b"other=".to_vec(),
            b"; ".to_vec(),
            b":".to_vec(),
        ]);
        proptest::collection::vec(piece, 0..5).prop_map(|pieces| pieces.concat())
    }

    fn any_name() -> impl proptest::strategy::Strategy<Value = HeaderName> {
        proptest::sample::select(vec![
            AUTHORIZATION,
            COOKIE,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-key"),
            HeaderName::from_static("x-other"),
            http::header::HOST,
            HeaderName::from_static("x-request-id"),
        ])
    }

    type Answer = Result<Option<(String, SourceMask)>, RejectReason>;

    fn answer(presented: Result<Option<Presented<'_>>, RejectReason>) -> Answer {
        presented.map(|p| p.map(|p| (p.key.to_string(), p.sources)))
    }

    proptest::proptest! {
        /// Any key of visible ASCII without `:`, sent as `key:`, is found
        /// as itself, padded or not.
        #[test]
        fn basic_round_trips(key in "[!-9;-~]{1,200}", padded in proptest::bool::ANY) {
            let mut encoded = encode(&format!("{key}:"));
            if !padded {
                encoded = encoded.trim_end_matches('=').to_owned();
            }
            let request = with_authorization(&format!("Basic {encoded}"));
            proptest::prop_assert_eq!(presented(&basic_sources(), &request), Ok(Some(key)));
        }

        /// Any password other than the configured one is refused.
        #[test]
        fn basic_passwords_must_match(key in "[!-9;-~]{1,50}", password in "[!-~]{1,20}") {
            let request = with_authorization(&format!("Basic {}", encode(&format!("{key}:{password}"))));
            proptest::prop_assert_eq!(
                presented(&basic_sources(), &request),
                Err(RejectReason::MalformedKey)
            );
        }

        /// The scheme is matched as before: the bytes up to the first
        /// space, equal to the scheme's whatever their case.
        #[test]
        fn schemes_are_matched_as_before(
            word in proptest::sample::select(vec!["bearer", "basic", "beare", "bearerx", "basi", "", "b\u{e9}arer"]),
            case in proptest::num::u8::ANY,
            tail in proptest::collection::vec(proptest::sample::select(b"bBeErR \t@`[{_x\x80\xc2".to_vec()), 0..6),
        ) {
            // The word in a mixed case, then anything.
            let mut value: Vec<u8> = word
                .bytes()
                .enumerate()
                .map(|(i, b)| if case >> (i % 8) & 1 == 1 { b.to_ascii_uppercase() } else { b })
                .collect();
            value.extend(tail);
            for scheme in [b"bearer".as_slice(), b"basic"] {
                let scheme_len = value.iter().position(|&b| b == b' ').unwrap_or(value.len());
                let before = value[..scheme_len].eq_ignore_ascii_case(scheme);
                proptest::prop_assert_eq!(scheme_is(&value, scheme), before, "{:?}", value);
            }
        }

        /// Spaces are trimmed as `str::trim_matches(' ')` trims them.
        #[test]
        fn spaces_are_trimmed_as_before(value in "[ a\t\u{e9}]{0,8}") {
            proptest::prop_assert_eq!(trim_spaces(&value), value.trim_matches(' '));
        }

        /// Finding the headers first (in one pass or by a look-up per
        /// name), then judging them source by source, answers what a
        /// look-up per source answered: the same key, sources and
        /// refusals, whatever the sources (more than four header names
        /// too), their order, and the headers (repeated, empty, not ASCII).
        #[test]
        fn finding_headers_once_agrees_with_a_look_up_per_source(
            sources in proptest::collection::vec(any_source(), 0..8),
            headers in proptest::collection::vec((any_name(), any_value()), 0..12),
            query in proptest::option::of("(api_key=k[12]|a=1|api_key=)(&(api_key=k[12]|b=2))?"),
        ) {
            let uri = match &query {
                Some(query) => format!("/pets?{query}"),
                None => "/pets".to_owned(),
            };
            let mut request = Request::builder().uri(uri).body(()).unwrap();
            for (name, value) in headers {
                if let Ok(value) = HeaderValue::from_bytes(&value) {
                    request.headers_mut().append(name, value);
                }
            }
            let once = answer(extract(&KeySources::new(sources.clone()), &request));
            let by_source = answer(by_lookups::extract(&sources, &request));
            proptest::prop_assert_eq!(once, by_source);
        }

        /// Whatever follows `Basic `, the answer is a key, or a refusal as
        /// a malformed key or request; never a panic.
        #[test]
        fn basic_never_panics(credentials in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let Ok(value) = HeaderValue::from_bytes(&[b"Basic ".as_slice(), &credentials].concat()) else {
                return Ok(());
            };
            let request = Request::builder().header("authorization", value).body(()).unwrap();
            match presented(&basic_sources(), &request) {
                Ok(Some(key)) => proptest::prop_assert!(!key.is_empty() && !key.contains(':')),
                Ok(None) => {}
                Err(reason) => proptest::prop_assert!(matches!(
                    reason,
                    RejectReason::MalformedKey | RejectReason::InvalidRequest
                )),
            }
        }
    }
}
