use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use sha2::{Digest, Sha256};
use tower_service::Service;

use super::keys::{GithubPublicKeys, SignatureError};
use crate::key::KeyId;
use crate::manager::{KeyManager, ManagerError};
use crate::record::{KeyRecord, KeyStatus};
use crate::usage::{Lifecycle, UsageEvent, UsageTags};

/// The largest payload [`SecretScanning`] reads by default: 1 MiB.
pub const DEFAULT_MAX_BODY_SIZE: usize = 1 << 20;

/// The header naming the key that signed a delivery.
pub const KEY_IDENTIFIER_HEADER: &str = "github-public-key-identifier";

/// The header carrying a delivery's signature.
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";

type BoxError = Box<dyn StdError + Send + Sync>;

/// What to do with a key that GitHub found in public.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum LeakAction {
    /// Revoke it: final, effective on the next request. The default.
    #[default]
    Revoke,
    /// Disable it: refused until someone enables it again (after talking to
    /// its owner). Keys already revoked stay revoked.
    Disable,
}

/// GitHub's secret-scanning partner webhook: checks each delivery's
/// signature, then revokes (or disables) every reported key of this
/// service; see the [module docs](super).
///
/// Cheap to clone: clones share the manager and the public keys, so
/// [`set_public_keys`](Self::set_public_keys) on one reaches all.
///
/// It is a tower `Service` (mount it with axum's `route_service`, or use
/// [`router`](Self::router)); [`process`](Self::process) is the same check
/// without HTTP, for other servers.
#[derive(Clone)]
pub struct SecretScanning {
    manager: KeyManager,
    keys: Arc<RwLock<Arc<GithubPublicKeys>>>,
    action: LeakAction,
    max_body_size: usize,
}

/// Why a delivery was refused: every variant but [`Store`](Self::Store)
/// is the sender's fault (4xx) and was refused before any look-up.
///
/// Messages never hold any part of the payload: a JSON error gives only
/// its position, because the parser's own message can quote the input,
/// tokens included.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// Not a `POST`.
    #[error("deliveries are POST requests")]
    MethodNotAllowed,
    /// The `Github-Public-Key-Identifier` header is missing or not ASCII.
    #[error("the Github-Public-Key-Identifier header is missing")]
    MissingKeyIdentifier,
    /// The `Github-Public-Key-Signature` header is missing or not ASCII.
    #[error("the Github-Public-Key-Signature header is missing")]
    MissingSignature,
    /// The signature is of an unknown key, malformed or wrong.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The body is larger than the configured limit.
    #[error("the payload is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// Reading the body failed.
    #[error("the request body could not be read")]
    UnreadableBody(#[source] BoxError),
    /// The signed payload is not a JSON array of `{"token", "type", "url",
    /// "source"}` objects.
    #[error("the payload is not a JSON array of {{\"token\", \"type\", \"url\", \"source\"}} objects (line {line}, column {column})")]
    MalformedPayload {
        /// The line of the first error (1-based).
        line: usize,
        /// The column of the first error (1-based).
        column: usize,
    },
    /// The key store failed: answered `503` so that GitHub retries, never
    /// with a `false_positive` it did not check.
    #[error("the key store failed")]
    Store(#[source] ManagerError),
}

impl ScanError {
    /// The HTTP status it answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ScanError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ScanError::Signature(SignatureError::UnknownKeyIdentifier)
            | ScanError::Signature(SignatureError::BadSignature) => StatusCode::FORBIDDEN,
            ScanError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ScanError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// A stable `snake_case` name, in the problem body's `reason` member and
    /// the logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ScanError::MethodNotAllowed => "method_not_allowed",
            ScanError::MissingKeyIdentifier => "missing_key_identifier",
            ScanError::MissingSignature => "missing_signature",
            ScanError::Signature(SignatureError::UnknownKeyIdentifier) => "unknown_key_identifier",
            ScanError::Signature(SignatureError::MalformedSignature) => "malformed_signature",
            ScanError::Signature(_) => "bad_signature",
            ScanError::PayloadTooLarge { .. } => "payload_too_large",
            ScanError::UnreadableBody(_) => "unreadable_body",
            ScanError::MalformedPayload { .. } => "malformed_payload",
            ScanError::Store(_) => "store_unavailable",
        }
    }

    /// The RFC 9457 `application/problem+json` body: `type`, `title`,
    /// `status`, `detail` (this error's message) and `reason`.
    pub fn problem_json(&self) -> Bytes {
        let status = self.status();
        let body = serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": self.to_string(),
            "reason": self.reason(),
        });
        Bytes::from(body.to_string())
    }

    /// The whole answer: status, `Content-Type`, `Allow` for a `405`, and
    /// the [problem body](Self::problem_json).
    pub fn to_response(&self) -> Response<Bytes> {
        let mut response = Response::new(self.problem_json());
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(self, ScanError::MethodNotAllowed) {
            headers.insert(ALLOW, HeaderValue::from_static("POST"));
        }
        response
    }
}

/// GitHub's verdict on one reported token: `true_positive` or
/// `false_positive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Label {
    /// A real key of this service.
    TruePositive,
    /// Not a key of this service: malformed, unknown id, or wrong secret.
    FalsePositive,
}

/// What was found, and done, for one reported token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Finding {
    /// A live key: now revoked.
    Revoked(KeyId),
    /// A live key: now disabled ([`LeakAction::Disable`]).
    Disabled(KeyId),
    /// A key that was revoked already: nothing done.
    AlreadyRevoked(KeyId),
    /// A key that was disabled already ([`LeakAction::Disable`]): nothing
    /// done.
    AlreadyDisabled(KeyId),
    /// Not a well-formed key of this service's format (length, prefix,
    /// alphabet or checksum).
    NotAKey,
    /// Well-formed, but no record has its id.
    UnknownKey,
    /// A known id with a secret that does not match: not our key.
    WrongSecret,
}

impl Finding {
    /// `true_positive` for a key of this service, else `false_positive`.
    pub fn label(&self) -> Label {
        match self.key_id() {
            Some(_) => Label::TruePositive,
            None => Label::FalsePositive,
        }
    }

    /// The key, for a true positive.
    pub fn key_id(&self) -> Option<KeyId> {
        match self {
            Finding::Revoked(id)
            | Finding::Disabled(id)
            | Finding::AlreadyRevoked(id)
            | Finding::AlreadyDisabled(id) => Some(*id),
            Finding::NotAKey | Finding::UnknownKey | Finding::WrongSecret => None,
        }
    }

    /// A stable `snake_case` name: the `action` tag of the
    /// [`LeakReported`](Lifecycle::LeakReported) event, and for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Finding::Revoked(_) => "revoked",
            Finding::Disabled(_) => "disabled",
            Finding::AlreadyRevoked(_) => "already_revoked",
            Finding::AlreadyDisabled(_) => "already_disabled",
            Finding::NotAKey => "not_a_key",
            Finding::UnknownKey => "unknown_key",
            Finding::WrongSecret => "wrong_secret",
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SHA-256 of a reported token, as GitHub's feedback format wants it
/// (`token_hash`, 64 lowercase hex digits): the answer never carries the
/// token itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The SHA-256 of `token`'s UTF-8 bytes.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({self})")
    }
}

impl serde::Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One element of the answer to GitHub: `{"token_hash", "token_type",
/// "label"}`, plus what was found (not serialized).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct TokenLabel {
    /// The SHA-256 of the reported token.
    pub token_hash: TokenHash,
    /// The reported `type`, echoed.
    pub token_type: String,
    /// True or false positive.
    pub label: Label,
    /// What was found and done (not sent to GitHub).
    #[serde(skip)]
    pub finding: Finding,
}

/// One reported match. Its `Debug` never shows the token.
#[derive(serde::Deserialize)]
struct Reported {
    token: String,
    #[serde(rename = "type", default)]
    token_type: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

impl SecretScanning {
    /// Revokes leaked keys through `manager` (its format recognises this
    /// service's keys, its hasher checks them, its event sink records the
    /// leaks), trusting deliveries signed by `keys`.
    pub fn new(manager: KeyManager, keys: GithubPublicKeys) -> Self {
        Self {
            manager,
            keys: Arc::new(RwLock::new(Arc::new(keys))),
            action: LeakAction::Revoke,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
        }
    }

    /// Revoke (the default) or disable leaked keys.
    #[must_use]
    pub fn on_leak(mut self, action: LeakAction) -> Self {
        self.action = action;
        self
    }

    /// Refuses bodies larger than `bytes` with `413`, while reading them
    /// (default [`DEFAULT_MAX_BODY_SIZE`]).
    #[must_use]
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// Replaces the trusted public keys, for this value and all its
    /// clones: call it after each refresh of GitHub's document.
    pub fn set_public_keys(&self, keys: GithubPublicKeys) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }

    /// The trusted public keys.
    pub fn public_keys(&self) -> Arc<GithubPublicKeys> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The manager.
    pub fn manager(&self) -> &KeyManager {
        &self.manager
    }

    /// The configured action.
    pub fn action(&self) -> LeakAction {
        self.action
    }

    /// An axum router answering `POST path` (other methods get `405`);
    /// merge it into your app.
    pub fn router<S>(self, path: &str) -> axum::Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        axum::Router::new().route(path, axum::routing::post_service(self))
    }

    /// The check without HTTP: the two headers' values and the raw body
    /// bytes, exactly as received. Refuses missing headers, an unknown key,
    /// a bad signature, an oversized body (your server must still bound
    /// what it reads) and a malformed payload before any look-up; then
    /// labels every reported token, revoking (or disabling) the keys of
    /// this service. Answer GitHub with `serde_json::to_vec(&labels)`, or
    /// with [`ScanError::to_response`].
    pub async fn process(
        &self,
        key_identifier: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<Vec<TokenLabel>, ScanError> {
        let (key_identifier, signature) = required(key_identifier, signature)?;
        if body.len() > self.max_body_size {
            return Err(ScanError::PayloadTooLarge {
                limit: self.max_body_size,
            });
        }
        self.public_keys().verify(key_identifier, signature, body)?;
        self.review(body).await
    }

    /// Answers one HTTP delivery: `200` with the labels as JSON, or the
    /// refusal as a problem document. The headers are checked before the
    /// body is read, and the body is read only up to the limit.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Bytes>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        match self.try_handle(request).await {
            Ok(labels) => {
                let json = serde_json::to_vec(&labels).unwrap_or_else(|_| b"[]".to_vec());
                let mut response = Response::new(Bytes::from(json));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                response
            }
            Err(error) => {
                log_refusal(&error);
                error.to_response()
            }
        }
    }

    async fn try_handle<B>(&self, request: Request<B>) -> Result<Vec<TokenLabel>, ScanError>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        if request.method() != Method::POST {
            return Err(ScanError::MethodNotAllowed);
        }
        let (parts, body) = request.into_parts();
        let (key_identifier, signature) = required(
            header(&parts.headers, KEY_IDENTIFIER_HEADER),
            header(&parts.headers, SIGNATURE_HEADER),
        )?;
        // Cheap refusals first: an unknown key or a declared size over the
        // limit costs no read.
        let keys = self.public_keys();
        if !keys.contains(key_identifier) {
            tracing::warn!(
                target: "keyward::scanning",
                key_identifier = printable(key_identifier),
                "delivery signed by an unknown key: refresh GitHub's public keys if this persists"
            );
            return Err(SignatureError::UnknownKeyIdentifier.into());
        }
        let too_large = ScanError::PayloadTooLarge {
            limit: self.max_body_size,
        };
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let limit = self.max_body_size as u64;
        if declared.is_some_and(|n| n > limit) || body.size_hint().lower() > limit {
            return Err(too_large);
        }
        let body = read_limited(body, self.max_body_size).await?;
        keys.verify(key_identifier, signature, &body)?;
        self.review(&body).await
    }

    /// Labels the tokens of a verified payload.
    async fn review(&self, body: &[u8]) -> Result<Vec<TokenLabel>, ScanError> {
        let reported: Vec<Reported> =
            serde_json::from_slice(body).map_err(|error| ScanError::MalformedPayload {
                line: error.line(),
                column: error.column(),
            })?;
        let mut labels = Vec::with_capacity(reported.len());
        for report in &reported {
            let finding = self.judge(report).await?;
            labels.push(TokenLabel {
                token_hash: TokenHash::of(&report.token),
                token_type: report.token_type.clone().unwrap_or_default(),
                label: finding.label(),
                finding,
            });
        }
        let true_positives = labels
            .iter()
            .filter(|l| l.label == Label::TruePositive)
            .count();
        tracing::info!(
            target: "keyward::scanning",
            reported = labels.len(),
            true_positives,
            false_positives = labels.len() - true_positives,
            "GitHub secret-scanning delivery handled"
        );
        Ok(labels)
    }

    /// Finds what a reported token is, and acts on a leaked key.
    async fn judge(&self, report: &Reported) -> Result<Finding, ScanError> {
        let Ok(parsed) = self.manager.format().parse(&report.token) else {
            return Ok(Finding::NotAKey);
        };
        let Some(record) = self
            .manager
            .find(&parsed.id())
            .await
            .map_err(ScanError::Store)?
        else {
            return Ok(Finding::UnknownKey);
        };
        if !self
            .manager
            .hasher()
            .hash(parsed.secret())
            .verify(&record.hash)
        {
            return Ok(Finding::WrongSecret);
        }
        let id = record.id;
        let finding = match (record.status, self.action) {
            (KeyStatus::Revoked, _) => Finding::AlreadyRevoked(id),
            (KeyStatus::Disabled, LeakAction::Disable) => Finding::AlreadyDisabled(id),
            (_, LeakAction::Revoke) => match self.manager.revoke(&id).await {
                Ok(()) => Finding::Revoked(id),
                Err(error) => settled(id, error)?,
            },
            (_, LeakAction::Disable) => match self.manager.disable(&id).await {
                Ok(_) => Finding::Disabled(id),
                Err(error) => settled(id, error)?,
            },
        };
        self.audit(finding, &record, report);
        Ok(finding)
    }

    /// Logs a leaked key and records its [`Lifecycle::LeakReported`] event.
    fn audit(&self, finding: Finding, record: &KeyRecord, report: &Reported) {
        let url = report.url.as_deref().filter(|s| !s.is_empty());
        let source = report.source.as_deref().filter(|s| !s.is_empty());
        let token_type = report.token_type.as_deref().unwrap_or_default();
        let Some(id) = finding.key_id() else {
            return;
        };
        match finding {
            Finding::Revoked(_) | Finding::Disabled(_) => tracing::warn!(
                target: "keyward::scanning",
                key_id = %id,
                owner = %record.owner,
                action = finding.as_str(),
                url,
                source,
                token_type,
                "leaked key reported by GitHub secret scanning"
            ),
            _ => tracing::info!(
                target: "keyward::scanning",
                key_id = %id,
                owner = %record.owner,
                action = finding.as_str(),
                url,
                source,
                token_type,
                "leaked key reported again by GitHub secret scanning"
            ),
        }
        let mut tags = UsageTags::new()
            .with("action", finding.as_str())
            .with("token_type", token_type.to_owned());
        if let Some(url) = url {
            tags.insert("url", url.to_owned());
        }
        if let Some(source) = source {
            tags.insert("source", source.to_owned());
        }
        self.manager.record_event(
            UsageEvent::lifecycle(
                Lifecycle::LeakReported,
                id,
                Arc::clone(&record.owner),
                self.manager.clock().now(),
            )
            .with_tags(tags),
        );
    }
}

/// The finding when revoking or disabling a matched key failed: a race
/// that already settled it, or a store failure (`Err`, answered `503`).
fn settled(id: KeyId, error: ManagerError) -> Result<Finding, ScanError> {
    match error {
        ManagerError::Revoked(_) => Ok(Finding::AlreadyRevoked(id)),
        // The store has no delete; a record that vanished is no key now.
        ManagerError::NotFound(_) => Ok(Finding::UnknownKey),
        other => Err(ScanError::Store(other)),
    }
}

fn required<'a>(
    key_identifier: Option<&'a str>,
    signature: Option<&'a str>,
) -> Result<(&'a str, &'a str), ScanError> {
    let key_identifier = key_identifier
        .filter(|s| !s.is_empty())
        .ok_or(ScanError::MissingKeyIdentifier)?;
    let signature = signature
        .filter(|s| !s.is_empty())
        .ok_or(ScanError::MissingSignature)?;
    Ok((key_identifier, signature))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A header value fit for a log line: GitHub's identifiers are hex.
fn printable(value: &str) -> &str {
    if value.len() <= 128 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        value
    } else {
        "[not hex]"
    }
}

fn log_refusal(error: &ScanError) {
    match error {
        ScanError::Store(source) => tracing::error!(
            target: "keyward::scanning",
            reason = error.reason(),
            error = source as &dyn StdError,
            "GitHub secret-scanning delivery not handled: key store failed; answered 503 so that GitHub retries"
        ),
        ScanError::Signature(_) | ScanError::MissingKeyIdentifier | ScanError::MissingSignature => {
            tracing::warn!(
                target: "keyward::scanning",
                reason = error.reason(),
                status = error.status().as_u16(),
                "GitHub secret-scanning delivery refused: not signed by GitHub"
            )
        }
        _ => tracing::info!(
            target: "keyward::scanning",
            reason = error.reason(),
            status = error.status().as_u16(),
            "GitHub secret-scanning delivery refused"
        ),
    }
}

/// Reads `body` whole, refusing it as soon as it passes `limit` bytes.
async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, ScanError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut buffer = BytesMut::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|error| ScanError::UnreadableBody(error.into()))?;
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers
        };
        if buffer.len().saturating_add(data.remaining()) > limit {
            return Err(ScanError::PayloadTooLarge { limit });
        }
        while data.has_remaining() {
            let chunk = data.chunk();
            let n = chunk.len();
            buffer.extend_from_slice(chunk);
            data.advance(n);
        }
    }
    Ok(buffer.freeze())
}

impl fmt::Debug for SecretScanning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretScanning")
            .field("manager", &self.manager)
            .field("public_keys", &self.public_keys())
            .field("action", &self.action)
            .field("max_body_size", &self.max_body_size)
            .finish()
    }
}

/// The future of [`SecretScanning`]'s `Service::call`: boxed, because the
/// webhook awaits the store; it is not on the request path.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<Response<axum::body::Body>, Infallible>> + Send>>,
}

impl Future for ResponseFuture {
    type Output = Result<Response<axum::body::Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<B> Service<Request<B>> for SecretScanning
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<axum::body::Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let this = self.clone();
        ResponseFuture {
            inner: Box::pin(
                async move { Ok(this.handle(request).await.map(axum::body::Body::from)) },
            ),
        }
    }
}
