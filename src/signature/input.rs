use std::fmt;

use http::header::HeaderName;
use http::{HeaderMap, Request};
use sfv::{
    BareItem, Dictionary, InnerList, ItemSerializer, ListEntry, ListSerializer, Parser, StringRef,
};

use super::base::{self, BaseContext, SignatureBase};
use super::keys::{self, Algorithm};
use super::SignatureError;
use crate::key::VerificationKey;

/// The `Signature-Input` field (RFC 9421 §4.1).
pub static SIGNATURE_INPUT: HeaderName = HeaderName::from_static("signature-input");
/// The `Signature` field (RFC 9421 §4.2).
pub static SIGNATURE: HeaderName = HeaderName::from_static("signature");

/// The longest `Signature-Input` or `Signature` field read (all its lines
/// together): 8 KiB. Longer ones are malformed.
pub const MAX_FIELD_LEN: usize = 8 * 1024;
/// The most components one signature may cover.
pub const MAX_COMPONENTS: usize = 32;
/// The longest signature read, in bytes (Ed25519's are 64, HMAC-SHA-256's
/// 32).
const MAX_SIGNATURE_LEN: usize = 512;

/// A component a signature covers, as it names it: a header field
/// (`"content-type"`) or a derived component (`"@method"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    name: String,
    /// The identifier as the signature base writes it, parameters
    /// included (`"date"`, `"@query-param";name="a"`).
    identifier: String,
    parameterised: bool,
}

impl Component {
    /// The component's name: a lowercase field name, or `@` and the
    /// derived component's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it is a derived component (`@method`, `@path`, …).
    pub fn is_derived(&self) -> bool {
        self.name.starts_with('@')
    }

    /// Whether the identifier carries parameters (`;sf`, `;name="…"`);
    /// keyward computes none of them.
    pub fn has_parameters(&self) -> bool {
        self.parameterised
    }

    pub(crate) fn identifier(&self) -> &str {
        &self.identifier
    }

    /// A component without parameters; `None` if `name` is no valid
    /// structured-field string.
    pub(crate) fn plain(name: &str) -> Option<Self> {
        let string = StringRef::from_str(name).ok()?;
        Some(Self {
            name: name.to_owned(),
            identifier: ItemSerializer::new().bare_item(string).finish(),
            parameterised: false,
        })
    }
}

/// A signature's parameters (RFC 9421 §2.3). Parameters of other names
/// are kept in the signature base but not read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SignatureParams {
    /// `created`: when the signature was made, in seconds since the epoch.
    pub created: Option<u64>,
    /// `expires`: when it stops being valid, in seconds since the epoch.
    pub expires: Option<u64>,
    /// `nonce`: a random value, making two signatures of one request differ.
    pub nonce: Option<String>,
    /// `alg`: the algorithm, as RFC 9421's registry names it.
    pub alg: Option<String>,
    /// `keyid`: which key signed (with keyward, a [`KeyId`](crate::KeyId)).
    pub keyid: Option<String>,
    /// `tag`: an application-specific tag.
    pub tag: Option<String>,
}

/// One signature of a request: its label, the components it covers, its
/// parameters and its bytes, read from the `Signature-Input` and
/// `Signature` fields.
///
/// The low-level way in: [`SignatureVerifier`](super::SignatureVerifier)
/// uses it and adds keys, times, replays and the required coverage. Use it
/// directly to verify with keys of your own.
///
/// # Example
///
/// ```
/// use http::Request;
/// use keyward::signature::{BaseContext, MessageSignature};
///
/// let request = Request::post("https://example.com/foo?param=Value&Pet=dog")
///     .header("date", "Tue, 20 Apr 2021 02:07:55 GMT")
///     .header("content-type", "application/json")
///     .header(
///         "signature-input",
///         r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#,
///     )
///     .header("signature", "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:")
///     .body(())?;
///
/// let signature = MessageSignature::find(request.headers(), "sig-b25")?;
/// assert_eq!(signature.params().keyid.as_deref(), Some("test-shared-secret"));
/// let base = signature.base(&request, &BaseContext::new())?;
/// assert!(base.as_bytes().starts_with(b"\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct MessageSignature {
    label: String,
    components: Vec<Component>,
    params: SignatureParams,
    /// The inner list and its parameters, serialized: the value of the
    /// `@signature-params` line.
    serialized: String,
    signature: Vec<u8>,
}

/// Both fields, parsed.
pub(crate) struct Fields {
    inputs: Dictionary,
    signatures: Dictionary,
}

impl Fields {
    /// Parses both fields; `Ok(None)` when neither is present.
    pub(crate) fn parse(headers: &HeaderMap) -> Result<Option<Self>, SignatureError> {
        let inputs = joined(headers, &SIGNATURE_INPUT)?;
        let signatures = joined(headers, &SIGNATURE)?;
        match (inputs, signatures) {
            (None, None) => Ok(None),
            (Some(inputs), Some(signatures)) => Ok(Some(Self {
                inputs: dictionary(&inputs, &SIGNATURE_INPUT)?,
                signatures: dictionary(&signatures, &SIGNATURE)?,
            })),
            _ => Err(SignatureError::MissingField),
        }
    }

    /// The labels in `Signature-Input`, each with its `keyid` if that is a
    /// string: what a verifier chooses by, without parsing the rest.
    pub(crate) fn key_ids(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.inputs.iter().map(|(label, entry)| {
            let keyid = match entry {
                ListEntry::InnerList(list) => list
                    .params
                    .get("keyid")
                    .and_then(|v| v.as_string())
                    .map(|s| s.as_str()),
                ListEntry::Item(_) => None,
            };
            (label.as_str(), keyid)
        })
    }

    /// The signature labelled `label`, parsed whole.
    pub(crate) fn signature(&self, label: &str) -> Result<MessageSignature, SignatureError> {
        let input = match self.inputs.get(label) {
            Some(ListEntry::InnerList(list)) => list,
            Some(ListEntry::Item(_)) => {
                return Err(SignatureError::Malformed(SIGNATURE_INPUT.clone()))
            }
            None => return Err(SignatureError::NoSignature),
        };
        let signature = match self.signatures.get(label) {
            Some(ListEntry::Item(item)) => match &item.bare_item {
                BareItem::ByteSequence(bytes) if (1..=MAX_SIGNATURE_LEN).contains(&bytes.len()) => {
                    bytes.clone()
                }
                _ => return Err(SignatureError::Malformed(SIGNATURE.clone())),
            },
            Some(ListEntry::InnerList(_)) => {
                return Err(SignatureError::Malformed(SIGNATURE.clone()))
            }
            None => return Err(SignatureError::MissingField),
        };
        Ok(MessageSignature {
            label: label.to_owned(),
            components: components(input)?,
            params: params(input)?,
            serialized: serialize_inner_list(input),
            signature,
        })
    }
}

impl MessageSignature {
    /// The signature labelled `label` in `headers`' `Signature-Input` and
    /// `Signature` fields.
    pub fn find(headers: &HeaderMap, label: &str) -> Result<Self, SignatureError> {
        Fields::parse(headers)?
            .ok_or(SignatureError::MissingField)?
            .signature(label)
    }

    /// The label (`sig1`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The covered components, in order.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// Whether a component of this name is covered (without parameters).
    pub fn covers(&self, name: &str) -> bool {
        self.components
            .iter()
            .any(|c| c.name == name && !c.parameterised)
    }

    /// The parameters.
    pub fn params(&self) -> &SignatureParams {
        &self.params
    }

    /// The signature's bytes, as sent.
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// The signature base (RFC 9421 §2.5) of `request` for this signature:
    /// the bytes that were signed, if the request is the one signed.
    pub fn base<B>(
        &self,
        request: &Request<B>,
        context: &BaseContext,
    ) -> Result<SignatureBase, SignatureError> {
        self.base_of(request.method(), request.uri(), request.headers(), context)
    }

    pub(crate) fn base_of(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        context: &BaseContext,
    ) -> Result<SignatureBase, SignatureError> {
        base::build(
            method,
            uri,
            headers,
            context,
            &self.components,
            &self.serialized,
        )
        .map_err(|e| e.into_verify_error())
    }
}

impl MessageSignature {
    /// Verifies this signature of `request` with `key`: builds the base and
    /// checks the signature, and that `alg`, if sent, names `key`'s
    /// algorithm. Nothing else: not the times, the coverage or replays
    /// ([`SignatureVerifier`](super::SignatureVerifier) does those).
    pub fn verify<B>(
        &self,
        request: &Request<B>,
        context: &BaseContext,
        key: &VerificationKey,
    ) -> Result<(), SignatureError> {
        if let Some(alg) = &self.params.alg {
            if Algorithm::of(key).is_none_or(|a| a.as_str() != alg) {
                return Err(SignatureError::AlgorithmMismatch);
            }
        }
        let base = self.base(request, context)?;
        if keys::verify(key, base.as_bytes(), &self.signature) {
            Ok(())
        } else {
            Err(SignatureError::Invalid)
        }
    }
}

impl fmt::Debug for MessageSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageSignature")
            .field("label", &self.label)
            .field("components", &self.components)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// All lines of field `name`, joined by `, ` as RFC 9651 §4.2 says;
/// `None` when absent.
pub(crate) fn joined(
    headers: &HeaderMap,
    name: &HeaderName,
) -> Result<Option<String>, SignatureError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let malformed = || SignatureError::Malformed(name.clone());
    let mut out = String::from(first.to_str().map_err(|_| malformed())?);
    for value in values {
        out.push_str(", ");
        out.push_str(value.to_str().map_err(|_| malformed())?);
    }
    if out.len() > MAX_FIELD_LEN {
        return Err(malformed());
    }
    Ok(Some(out))
}

pub(crate) fn dictionary(value: &str, name: &HeaderName) -> Result<Dictionary, SignatureError> {
    Parser::new(value)
        .parse::<Dictionary>()
        .map_err(|_| SignatureError::Malformed(name.clone()))
}

fn components(input: &InnerList) -> Result<Vec<Component>, SignatureError> {
    if input.items.len() > MAX_COMPONENTS {
        return Err(SignatureError::Malformed(SIGNATURE_INPUT.clone()));
    }
    let mut out: Vec<Component> = Vec::with_capacity(input.items.len());
    for item in &input.items {
        let BareItem::String(name) = &item.bare_item else {
            return Err(SignatureError::Malformed(SIGNATURE_INPUT.clone()));
        };
        let identifier = ItemSerializer::new()
            .bare_item(&item.bare_item)
            .parameters(&item.params)
            .finish();
        if out.iter().any(|c| c.identifier == identifier) {
            return Err(SignatureError::DuplicateComponent(name.as_str().to_owned()));
        }
        out.push(Component {
            name: name.as_str().to_owned(),
            identifier,
            parameterised: !item.params.is_empty(),
        });
    }
    Ok(out)
}

fn params(input: &InnerList) -> Result<SignatureParams, SignatureError> {
    let mut out = SignatureParams::default();
    for (key, value) in &input.params {
        match key.as_str() {
            "created" => out.created = Some(timestamp(value, "created")?),
            "expires" => out.expires = Some(timestamp(value, "expires")?),
            "nonce" => out.nonce = Some(string(value, "nonce")?),
            "alg" => out.alg = Some(string(value, "alg")?),
            "keyid" => out.keyid = Some(string(value, "keyid")?),
            "tag" => out.tag = Some(string(value, "tag")?),
            _ => {}
        }
    }
    Ok(out)
}

fn timestamp(value: &BareItem, name: &'static str) -> Result<u64, SignatureError> {
    value
        .as_integer()
        .and_then(|i| u64::try_from(i64::from(i)).ok())
        .ok_or(SignatureError::InvalidParameter(name))
}

fn string(value: &BareItem, name: &'static str) -> Result<String, SignatureError> {
    value
        .as_string()
        .map(|s| s.as_str().to_owned())
        .ok_or(SignatureError::InvalidParameter(name))
}

pub(crate) fn serialize_inner_list(list: &InnerList) -> String {
    let mut out = ListSerializer::new();
    {
        let mut inner = out.inner_list();
        inner.items(&list.items);
        let _ = inner.finish().parameters(&list.params);
    }
    // A list with one member is never empty.
    out.finish().unwrap_or_default()
}
