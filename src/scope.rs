//! Scopes: what a key may do. [`Scope`] is one validated permission such as
//! `pets:read`; [`ScopeSet`] is what a key holds, with wildcard grants.
//!
//! # Grammar
//!
//! A scope is 1 to 128 characters: segments separated by `:`, each segment
//! one or more of `a-z`, `0-9`, `-`, `_` and `.`; the last segment may
//! instead be `*`, a wildcard. Examples: `pets:read`, `billing.invoices:write`,
//! `pets:*`. Anything else is a [`ScopeError`], never accepted silently.
//!
//! # Granting
//!
//! A granted scope grants itself and, if it ends in `*`, every scope that
//! starts with the segments before the `*` and has at least one more:
//! `pets:*` grants `pets:read` and `pets:photos:write`, never `pets` itself,
//! `petsx:read` or `users:read`. The lone `*`, which grants everything, is
//! refused by [`Scope::new`] and made only by [`Scope::everything`], so that
//! it never enters through user input by accident.
//!
//! # Example
//!
//! ```
//! use keyward::scope::{Scope, ScopeSet};
//!
//! let granted: ScopeSet = "pets:* usage:read".parse()?;
//! assert!(granted.grants(&"pets:write".parse()?));
//! assert!(!granted.grants(&"users:read".parse()?));
//! assert!("Pets:Read".parse::<Scope>().is_err());
//! assert!("*".parse::<Scope>().is_err());
//! # Ok::<(), keyward::scope::ScopeError>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The longest scope accepted, in bytes.
pub const MAX_SCOPE_LEN: usize = 128;

/// One validated permission, such as `pets:read` or `pets:*`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope(Box<str>);

/// Why a string is not a [`Scope`] or a [`ScopeSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    /// Empty, or longer than 128 bytes.
    #[error("a scope must be 1 to 128 characters long")]
    Length,
    /// An empty segment (`pets:`, `:read`, `a::b`).
    #[error("a scope has an empty segment")]
    EmptySegment,
    /// A character outside `a-z 0-9 - _ . :`, or a `*` that is not a whole
    /// last segment.
    #[error("a scope may hold only a-z, 0-9, '-', '_', '.', ':' and a final '*' segment")]
    InvalidCharacter,
    /// The lone `*`, which only [`Scope::everything`] makes.
    #[error("the scope '*' grants everything and must be made with Scope::everything")]
    Universal,
}

impl Scope {
    /// Parses and validates a scope.
    pub fn new(s: &str) -> Result<Self, ScopeError> {
        if s == "*" {
            return Err(ScopeError::Universal);
        }
        validate(s)?;
        Ok(Self(s.into()))
    }

    /// The scope `*`, which grants every scope. Give it deliberately.
    pub fn everything() -> Self {
        Self("*".into())
    }

    /// The scope as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this scope ends in the `*` wildcard.
    pub fn is_wildcard(&self) -> bool {
        self.0.ends_with('*')
    }

    /// Whether holding `self` grants `required`.
    pub fn grants(&self, required: &Scope) -> bool {
        match self.0.strip_suffix('*') {
            // `pets:*` keeps `pets:`; `*` keeps "" and grants everything.
            Some(stem) => required.0.len() > stem.len() && required.0.starts_with(stem),
            None => self.0 == required.0,
        }
    }
}

fn validate(s: &str) -> Result<(), ScopeError> {
    if s.is_empty() || s.len() > MAX_SCOPE_LEN {
        return Err(ScopeError::Length);
    }
    let mut segments = s.split(':').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment.is_empty() {
            return Err(ScopeError::EmptySegment);
        }
        if segment == "*" && last {
            continue;
        }
        let valid = segment.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
        if !valid {
            return Err(ScopeError::InvalidCharacter);
        }
    }
    Ok(())
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Scope {
    type Error = ScopeError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl AsRef<str> for Scope {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The scopes a key holds: sorted, without duplicates, cheap to clone.
///
/// `Display` and `FromStr` use the space-separated form of OAuth's `scope`
/// parameter (`"pets:read pets:write"`).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct ScopeSet(Arc<[Scope]>);

impl ScopeSet {
    /// The empty set, which grants nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses each string as a [`Scope`].
    pub fn parse<I>(scopes: I) -> Result<Self, ScopeError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        scopes.into_iter().map(|s| Scope::new(s.as_ref())).collect()
    }

    /// Whether some scope in the set grants `required`.
    pub fn grants(&self, required: &Scope) -> bool {
        self.0.iter().any(|granted| granted.grants(required))
    }

    /// Whether the set holds `scope` itself (not merely something that
    /// grants it).
    pub fn contains(&self, scope: &Scope) -> bool {
        self.0.binary_search(scope).is_ok()
    }

    /// The scopes, sorted.
    pub fn iter(&self) -> std::slice::Iter<'_, Scope> {
        self.0.iter()
    }

    /// How many scopes the set holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut scopes: Vec<Scope> = iter.into_iter().collect();
        scopes.sort_unstable();
        scopes.dedup();
        Self(scopes.into())
    }
}

impl<const N: usize> From<[Scope; N]> for ScopeSet {
    fn from(scopes: [Scope; N]) -> Self {
        scopes.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a ScopeSet {
    type Item = &'a Scope;
    type IntoIter = std::slice::Iter<'a, Scope>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl FromStr for ScopeSet {
    type Err = ScopeError;

    /// Parses a space-separated list; `""` is the empty set.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.split_ascii_whitespace())
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.iter()).finish()
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(scope.as_str())?;
        }
        Ok(())
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Deserializing accepts `*` (stored records may hold it); parse untrusted
/// input with [`Scope::new`] instead.
#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        if s == "*" {
            return Ok(Scope::everything());
        }
        Scope::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for ScopeSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for ScopeSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Vec::<Scope>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Scope {
        Scope::new(x).unwrap()
    }

    #[test]
    fn grammar() {
        for good in ["pets", "pets:read", "a.b-c_d:9", "pets:*", "a:b:c:*"] {
            assert!(Scope::new(good).is_ok(), "{good}");
        }
        assert_eq!(Scope::new(""), Err(ScopeError::Length));
        assert_eq!(Scope::new(&"a".repeat(129)), Err(ScopeError::Length));
        assert_eq!(Scope::new("pets:"), Err(ScopeError::EmptySegment));
        assert_eq!(Scope::new(":read"), Err(ScopeError::EmptySegment));
        assert_eq!(Scope::new("Pets:read"), Err(ScopeError::InvalidCharacter));
        assert_eq!(Scope::new("pets read"), Err(ScopeError::InvalidCharacter));
        assert_eq!(Scope::new("pets:*:read"), Err(ScopeError::InvalidCharacter));
        assert_eq!(Scope::new("pets*"), Err(ScopeError::InvalidCharacter));
        assert_eq!(Scope::new("*"), Err(ScopeError::Universal));
    }

    #[test]
    fn wildcards() {
        assert!(s("pets:*").grants(&s("pets:read")));
        assert!(s("pets:*").grants(&s("pets:photos:write")));
        assert!(s("pets:*").grants(&s("pets:*")));
        assert!(!s("pets:*").grants(&s("pets")));
        assert!(!s("pets:*").grants(&s("petsx:read")));
        assert!(!s("pets:*").grants(&s("users:read")));
        assert!(!s("pets:read").grants(&s("pets:*")));
        assert!(Scope::everything().grants(&s("anything:at:all")));
    }

    #[test]
    fn sets_sort_dedup_and_display() {
        let set: ScopeSet = "b:x a:y b:x".parse().unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.to_string(), "a:y b:x");
        assert!(set.contains(&s("b:x")));
        assert!("a:y B:x".parse::<ScopeSet>().is_err());
        assert!(ScopeSet::new().is_empty());
    }
}
