//! PostgreSQL plumbing shared by keyward's PostgreSQL components (feature
//! `postgres`): validated schema and table names, and the versioned
//! migrations each component runs from its own `migrate()`.
//!
//! Names are never bound as parameters in SQL (PostgreSQL cannot), so they
//! are checked once, here, as [`Identifier`]s: lowercase ASCII letters,
//! digits and `_`, starting with a letter or `_`, at most
//! [`Identifier::MAX_LEN`] bytes. Such a name means the same quoted and
//! unquoted, and nothing a user passes can change the SQL around it.
//!
//! Each component keeps its applied migrations in a table of its own next to
//! its data (`<table>_migrations`), takes a transaction-level advisory lock
//! before it looks, and applies what is missing in the same transaction: two
//! processes that start at once apply each migration once, and a failed
//! migration leaves nothing behind.
//!
//! # Example
//!
//! ```
//! use keyward::postgres::{Identifier, QualifiedName};
//!
//! let table = QualifiedName::new("auth", "api_keys")?;
//! assert_eq!(table.to_string(), r#""auth"."api_keys""#);
//! assert!(Identifier::new("keys; drop table users").is_err());
//! assert!(Identifier::new("Keys").is_err()); // lowercase only: quoted and unquoted agree
//! # Ok::<(), keyward::postgres::InvalidIdentifier>(())
//! ```

pub(crate) mod migrate;

use std::fmt;

pub use migrate::MigrateError;

/// A schema, table or channel name that is safe to put into SQL as is.
///
/// See the [module docs](self) for the rules.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identifier(String);

/// Why a string is not an [`Identifier`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a PostgreSQL name here is 1 to 48 characters of [a-z0-9_], starting with a letter or `_`")]
pub struct InvalidIdentifier;

impl Identifier {
    /// The longest name accepted, in bytes: PostgreSQL's limit is 63, and
    /// keyward derives names from it (`<table>_migrations`, index names).
    pub const MAX_LEN: usize = 48;

    /// Checks `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidIdentifier> {
        let name = name.into();
        let bytes = name.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && (bytes[0].is_ascii_lowercase() || bytes[0] == b'_')
            && bytes
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid {
            Ok(Self(name))
        } else {
            Err(InvalidIdentifier)
        }
    }

    /// The name, unquoted.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name with `suffix` appended (`suffix` is of the same alphabet,
    /// so the result needs no new check beyond PostgreSQL's 63-byte limit).
    pub(crate) fn suffixed(&self, suffix: &'static str) -> Self {
        debug_assert!(suffix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        debug_assert!(self.0.len() + suffix.len() <= 63);
        Self(format!("{}{suffix}", self.0))
    }
}

impl fmt::Display for Identifier {
    /// Quoted, ready for SQL: `"name"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::str::FromStr for Identifier {
    type Err = InvalidIdentifier;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A table in a schema: `"schema"."table"` when displayed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QualifiedName {
    schema: Identifier,
    name: Identifier,
}

impl QualifiedName {
    /// Checks both names.
    pub fn new(schema: &str, name: &str) -> Result<Self, InvalidIdentifier> {
        Ok(Self {
            schema: Identifier::new(schema)?,
            name: Identifier::new(name)?,
        })
    }

    /// From names already checked.
    pub fn from_parts(schema: Identifier, name: Identifier) -> Self {
        Self { schema, name }
    }

    /// The schema.
    pub fn schema(&self) -> &Identifier {
        &self.schema
    }

    /// The table's own name.
    pub fn name(&self) -> &Identifier {
        &self.name
    }

    /// Another table in the same schema, named after this one.
    pub(crate) fn sibling(&self, suffix: &'static str) -> Self {
        Self {
            schema: self.schema.clone(),
            name: self.name.suffixed(suffix),
        }
    }
}

impl fmt::Display for QualifiedName {
    /// Quoted, ready for SQL: `"schema"."table"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_refuse_everything_that_could_change_the_sql() {
        for bad in [
            "",
            "Keys",
            "keys\"",
            "a b",
            "a;b",
            "1abc",
            "ké",
            "a-b",
            "a.b",
            "%",
            &"a".repeat(49),
        ] {
            assert_eq!(Identifier::new(bad), Err(InvalidIdentifier), "{bad:?}");
        }
        for good in ["keys", "_x", "api_keys_2", &"a".repeat(48)] {
            assert_eq!(Identifier::new(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn qualified_names_are_quoted() {
        let name = QualifiedName::new("public", "keyward_keys").unwrap();
        assert_eq!(name.to_string(), "\"public\".\"keyward_keys\"");
        assert_eq!(
            name.sibling("_migrations").to_string(),
            "\"public\".\"keyward_keys_migrations\""
        );
    }
}
