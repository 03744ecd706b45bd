//! The usage page: static HTML with one inline script and one inline
//! style, allowed by their hashes in a strict Content-Security-Policy.

use std::sync::OnceLock;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64ct::{Base64, Encoding};
use sha2::{Digest, Sha256};

const PAGE: &str = include_str!("page.html");

/// The text between `open` and `close` in the page.
fn inline(open: &str, close: &str) -> &'static str {
    PAGE.split_once(open)
        .and_then(|(_, rest)| rest.split_once(close))
        .map_or("", |(inner, _)| inner)
}

fn hash(text: &str) -> String {
    format!("'sha256-{}'", Base64::encode_string(&Sha256::digest(text)))
}

/// The page's policy: nothing but its own script and style (by hash), and
/// requests to its own origin; no forms sent natively, no framing.
pub(crate) fn content_security_policy() -> &'static HeaderValue {
    static CSP: OnceLock<HeaderValue> = OnceLock::new();
    CSP.get_or_init(|| {
        let policy = format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             img-src 'none'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
            hash(inline("<script>", "</script>")),
            hash(inline("<style>", "</style>")),
        );
        HeaderValue::try_from(policy)
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
    })
}

/// The page, with its security headers.
pub(crate) fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                content_security_policy().clone(),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (header::VARY, HeaderValue::from_static("accept")),
        ],
        PAGE,
    )
        .into_response()
}

/// Whether the client asks for HTML rather than JSON: a browser's
/// navigation (`Accept: text/html,...`), not the page's own `fetch`
/// (`Accept: application/json`) or a client that takes anything.
pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    let mut html = false;
    for accept in headers.get_all(header::ACCEPT) {
        let Ok(accept) = accept.to_str() else {
            continue;
        };
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                let p = p.trim();
                p == "q=0" || p == "q=0.0" || p == "q=0.00" || p == "q=0.000"
            });
            if media.eq_ignore_ascii_case("application/json") && !refused {
                return false;
            }
            html |= media.eq_ignore_ascii_case("text/html") && !refused;
        }
    }
    html
}

/// In front of `GET /usage`'s authentication: a browser gets the page,
/// which needs no key; everyone else goes on to the JSON answer.
pub(crate) async fn page_for_browsers(request: Request, next: Next) -> Response {
    if request.method() == Method::GET && wants_html(request.headers()) {
        return page();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn browsers_get_html_and_clients_json() {
        assert!(wants_html(&accept(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(!wants_html(&accept("application/json")));
        assert!(!wants_html(&accept("*/*")));
        assert!(!wants_html(&accept("text/html;q=0")));
        assert!(!wants_html(&accept("text/html, application/json")));
        assert!(!wants_html(&HeaderMap::new()));
    }

    #[test]
    fn the_policy_names_the_inline_script_and_style() {
        let script = inline("<script>", "</script>");
        assert!(script.contains("X-API-Key"));
        assert!(inline("<style>", "</style>").contains(".chart"));
        let policy = content_security_policy().to_str().unwrap();
        assert!(policy.contains(&hash(script)));
        assert!(!policy.contains("unsafe"));
    }

    proptest::proptest! {
        #[test]
        fn any_accept_header_is_read_without_a_panic(value in "[ -~]{0,80}") {
            if let Ok(value) = HeaderValue::from_str(&value) {
                let mut headers = HeaderMap::new();
                headers.insert(header::ACCEPT, value);
                let _ = wants_html(&headers);
            }
        }
    }
}
