use std::fmt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use base64ct::{Base64, Encoding};
use http::{HeaderValue, Request};
use sfv::{KeyRef, ListSerializer, StringRef};
use sha2::{Digest, Sha256};

use super::base::{self, BaseContext};
use super::input::{Component, SIGNATURE, SIGNATURE_INPUT};
use super::{SignError, SigningKey};
use crate::clock::{Clock, SystemClock};
use crate::content_digest::CONTENT_DIGEST;
use crate::key::random_bytes;

/// Signs requests on the client's side: the counterpart of
/// [`SignatureVerifier`](super::SignatureVerifier), for tests, examples
/// and Rust callers.
///
/// [`sign`](Self::sign) adds `Content-Digest` (SHA-256 of the body) when
/// the body is not empty and the request has none, then `Signature-Input`
/// and `Signature`, covering by default `@method`, `@authority`, `@path`,
/// `@query` (when the URI has a query), `content-digest` (when the body is
/// not empty) and the fields added with [`cover`](Self::cover); with
/// parameters `created` (now, by the injected clock), a random `nonce`,
/// `keyid` and `alg`.
///
/// Sign last: a field added or changed after signing breaks the signature
/// if it is covered.
///
/// # Example
///
/// ```
/// use http::Request;
/// use keyward::signature::{RequestSigner, SigningKey};
///
/// let key = SigningKey::generate_ed25519()?;
/// let signer = RequestSigner::new("AbCdEf012345", key).cover("content-type");
/// let mut request = Request::post("https://api.example.com/pets?kind=cat")
///     .header("content-type", "application/json")
///     .body(r#"{"name":"Tom"}"#)?;
/// signer.sign(&mut request)?;
/// assert!(request.headers()["content-digest"].to_str()?.starts_with("sha-256=:"));
/// let input = request.headers()["signature-input"].to_str()?;
/// assert!(input.starts_with(
///     r#"sig1=("@method" "@authority" "@path" "@query" "content-digest" "content-type");created="#
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct RequestSigner {
    key_id: String,
    key: SigningKey,
    label: String,
    components: Option<Vec<String>>,
    extra: Vec<String>,
    nonce: bool,
    alg: bool,
    expires_in: Option<Duration>,
    tag: Option<String>,
    context: BaseContext,
    clock: Arc<dyn Clock>,
}

impl RequestSigner {
    /// Signs as `key_id` (with keyward, the [`KeyId`](crate::KeyId)'s
    /// string) with `key`, labelled `sig1`.
    pub fn new(key_id: impl Into<String>, key: SigningKey) -> Self {
        Self {
            key_id: key_id.into(),
            key,
            label: "sig1".to_owned(),
            components: None,
            extra: Vec::new(),
            nonce: true,
            alg: true,
            expires_in: None,
            tag: None,
            context: BaseContext::new(),
            clock: Arc::new(SystemClock),
        }
    }

    /// The signature's label (lowercase letters, digits, `_-.*`).
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Also covers header field `name` (when the request has it).
    #[must_use]
    pub fn cover(mut self, name: impl Into<String>) -> Self {
        self.extra.push(name.into().to_ascii_lowercase());
        self
    }

    /// Covers exactly `components`, in this order, instead of the defaults
    /// and [`cover`](Self::cover)'s fields.
    #[must_use]
    pub fn components<I, C>(mut self, components: I) -> Self
    where
        I: IntoIterator<Item = C>,
        C: Into<String>,
    {
        self.components = Some(components.into_iter().map(Into::into).collect());
        self
    }

    /// Whether to add a random `nonce` (default yes: two identical
    /// requests in one second then differ, and the second is not taken
    /// for a replay).
    #[must_use]
    pub fn nonce(mut self, nonce: bool) -> Self {
        self.nonce = nonce;
        self
    }

    /// Whether to name the algorithm in `alg` (default yes).
    #[must_use]
    pub fn alg(mut self, alg: bool) -> Self {
        self.alg = alg;
        self
    }

    /// Adds `expires`: `after` from `created`.
    #[must_use]
    pub fn expires_in(mut self, after: Duration) -> Self {
        self.expires_in = Some(after);
        self
    }

    /// Adds a `tag`.
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// How the request's scheme and authority are seen when its URI lacks
    /// them (see [`BaseContext`]).
    #[must_use]
    pub fn context(mut self, context: BaseContext) -> Self {
        self.context = context;
        self
    }

    /// Uses `clock` for `created`.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Signs `request`: adds `Content-Digest` if needed, then
    /// `Signature-Input` and `Signature` (as new members, next to any
    /// signature already there).
    pub fn sign<B: AsRef<[u8]>>(&self, request: &mut Request<B>) -> Result<(), SignError> {
        let has_body = !request.body().as_ref().is_empty();
        if has_body && !request.headers().contains_key(&CONTENT_DIGEST) {
            let digest = content_digest(request.body().as_ref());
            request.headers_mut().insert(CONTENT_DIGEST.clone(), digest);
        }

        let names: Vec<String> = match &self.components {
            Some(names) => names.clone(),
            None => {
                let mut names: Vec<String> = ["@method", "@authority", "@path"]
                    .map(str::to_owned)
                    .to_vec();
                if request.uri().query().is_some() {
                    names.push("@query".to_owned());
                }
                if has_body {
                    names.push("content-digest".to_owned());
                }
                for extra in &self.extra {
                    if request.headers().contains_key(extra.as_str()) && !names.contains(extra) {
                        names.push(extra.clone());
                    }
                }
                names
            }
        };
        let mut components: Vec<Component> = Vec::with_capacity(names.len());
        for name in &names {
            let component = Component::plain(name)
                .ok_or_else(|| SignError::UnsupportedComponent(name.clone()))?;
            if components.contains(&component) {
                return Err(SignError::DuplicateComponent(name.clone()));
            }
            components.push(component);
        }

        let created = self
            .clock
            .now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| SignError::Time)?
            .as_secs();
        let expires = match self.expires_in {
            Some(after) => Some(
                created
                    .checked_add(after.as_secs())
                    .ok_or(SignError::Time)?,
            ),
            None => None,
        };
        let nonce = if self.nonce {
            let mut bytes = [0u8; 16];
            random_bytes(&mut bytes)?;
            Some(Base64::encode_string(&bytes))
        } else {
            None
        };
        let params = self.serialize(&names, created, expires, nonce.as_deref())?;

        let base = base::build(
            request.method(),
            request.uri(),
            request.headers(),
            &self.context,
            &components,
            &params,
        )
        .map_err(|e| e.into_sign_error())?;
        let signature = self.key.sign(base.as_bytes());

        let label =
            KeyRef::from_str(&self.label).map_err(|_| SignError::InvalidParameter("label"))?;
        let input = HeaderValue::try_from(format!("{}={params}", label.as_str()))
            .map_err(|_| SignError::InvalidParameter("label"))?;
        let value = HeaderValue::try_from(format!(
            "{}=:{}:",
            label.as_str(),
            Base64::encode_string(&signature)
        ))
        .map_err(|_| SignError::InvalidParameter("label"))?;
        let headers = request.headers_mut();
        headers.append(SIGNATURE_INPUT.clone(), input);
        headers.append(SIGNATURE.clone(), value);
        Ok(())
    }

    /// The inner list and its parameters: the `@signature-params` value.
    fn serialize(
        &self,
        names: &[String],
        created: u64,
        expires: Option<u64>,
        nonce: Option<&str>,
    ) -> Result<String, SignError> {
        const CREATED: &KeyRef = sfv::key_ref("created");
        const EXPIRES: &KeyRef = sfv::key_ref("expires");
        const NONCE: &KeyRef = sfv::key_ref("nonce");
        const KEYID: &KeyRef = sfv::key_ref("keyid");
        const ALG: &KeyRef = sfv::key_ref("alg");
        const TAG: &KeyRef = sfv::key_ref("tag");
        let integer = |value: u64| sfv::Integer::try_from(value).map_err(|_| SignError::Time);

        let mut out = ListSerializer::new();
        {
            let mut inner = out.inner_list();
            for name in names {
                let name = StringRef::from_str(name)
                    .map_err(|_| SignError::UnsupportedComponent(name.clone()))?;
                let _ = inner.bare_item(name);
            }
            let mut params = inner.finish().parameter(CREATED, integer(created)?);
            if let Some(expires) = expires {
                params = params.parameter(EXPIRES, integer(expires)?);
            }
            if let Some(nonce) = nonce {
                params = params.parameter(NONCE, sf_string("nonce", nonce)?);
            }
            params = params.parameter(KEYID, sf_string("keyid", &self.key_id)?);
            if self.alg {
                params = params.parameter(ALG, sfv::string_ref(self.key.algorithm().as_str()));
            }
            if let Some(tag) = &self.tag {
                params = params.parameter(TAG, sf_string("tag", tag)?);
            }
            let _ = params.finish();
        }
        // The list has one member, so it is never empty.
        out.finish().ok_or(SignError::Time)
    }
}

fn sf_string<'a>(param: &'static str, text: &'a str) -> Result<&'a StringRef, SignError> {
    StringRef::from_str(text).map_err(|_| SignError::InvalidParameter(param))
}

/// `sha-256=:<base64>:` of `body` (RFC 9530).
pub(crate) fn content_digest(body: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(body);
    let value = format!("sha-256=:{}:", Base64::encode_string(&digest));
    // Base64 and the fixed text are visible ASCII.
    HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl fmt::Debug for RequestSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestSigner")
            .field("key_id", &self.key_id)
            .field("key", &self.key)
            .field("label", &self.label)
            .field("components", &self.components)
            .field("extra", &self.extra)
            .field("nonce", &self.nonce)
            .field("alg", &self.alg)
            .field("expires_in", &self.expires_in)
            .field("tag", &self.tag)
            .field("context", &self.context)
            .field("clock", &self.clock)
            .finish()
    }
}
