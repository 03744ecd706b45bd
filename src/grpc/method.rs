use std::collections::HashMap;

use crate::scope::ScopeSet;

/// Why a string is not a gRPC method pattern.
///
/// A pattern is `/package.Service/Method` (one method) or
/// `/package.Service/*` (every method of the service); the service name is
/// one or more dot-separated identifiers, the method one identifier, each
/// of ASCII letters, digits and `_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MethodPatternError {
    /// Not of the shape `/Service/Method`: no leading `/`, or not exactly
    /// two `/`-separated parts.
    #[error("a method pattern must look like /package.Service/Method or /package.Service/*")]
    Shape,
    /// The service name is empty, has an empty segment, or a character
    /// other than ASCII letters, digits, `_` and `.`.
    #[error("the service name of a method pattern must be dot-separated identifiers")]
    InvalidService,
    /// The method name is empty or has a character other than ASCII
    /// letters, digits and `_` (or is a `*` with something else).
    #[error("the method name of a method pattern must be an identifier or '*'")]
    InvalidMethod,
    /// The same pattern is listed twice.
    #[error("the method pattern is listed twice")]
    Duplicate,
}

/// A parsed pattern: one method, or a whole service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pattern<'a> {
    /// `/pkg.Service/Method`, kept whole.
    Method(&'a str),
    /// `/pkg.Service/*`, kept as `pkg.Service`.
    Service(&'a str),
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

pub(crate) fn parse(pattern: &str) -> Result<Pattern<'_>, MethodPatternError> {
    let (service, method) = pattern
        .strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .ok_or(MethodPatternError::Shape)?;
    if method.contains('/') {
        return Err(MethodPatternError::Shape);
    }
    if !service.split('.').all(is_identifier) {
        return Err(MethodPatternError::InvalidService);
    }
    if method == "*" {
        Ok(Pattern::Service(service))
    } else if is_identifier(method) {
        Ok(Pattern::Method(pattern))
    } else {
        Err(MethodPatternError::InvalidMethod)
    }
}

/// The scopes each method requires.
#[derive(Debug, Clone, Default)]
pub(crate) struct MethodTable {
    methods: HashMap<Box<str>, ScopeSet>,
    services: HashMap<Box<str>, ScopeSet>,
    /// What methods that no pattern matches require; `None` refuses them.
    pub(crate) unlisted: Option<ScopeSet>,
}

impl MethodTable {
    pub(crate) fn insert(
        &mut self,
        pattern: &str,
        scopes: ScopeSet,
    ) -> Result<(), MethodPatternError> {
        let (map, key) = match parse(pattern)? {
            Pattern::Method(path) => (&mut self.methods, path),
            Pattern::Service(service) => (&mut self.services, service),
        };
        if map.contains_key(key) {
            return Err(MethodPatternError::Duplicate);
        }
        map.insert(key.into(), scopes);
        Ok(())
    }

    /// The scopes `path` requires: its own pattern first, then its
    /// service's, then the default for unlisted methods. `None`: refused.
    pub(crate) fn lookup(&self, path: &str) -> Option<&ScopeSet> {
        if let Some(scopes) = self.methods.get(path) {
            return Some(scopes);
        }
        let service = path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .filter(|(_, method)| !method.is_empty() && !method.contains('/'))
            .map(|(service, _)| service);
        if let Some(scopes) = service.and_then(|service| self.services.get(service)) {
            return Some(scopes);
        }
        self.unlisted.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scopes(s: &str) -> ScopeSet {
        s.parse().unwrap()
    }

    #[test]
    fn parses_methods_and_services() {
        assert_eq!(
            parse("/grpc.health.v1.Health/Check"),
            Ok(Pattern::Method("/grpc.health.v1.Health/Check"))
        );
        assert_eq!(
            parse("/grpc.health.v1.Health/*"),
            Ok(Pattern::Service("grpc.health.v1.Health"))
        );
        assert_eq!(parse("/Svc/Do_it2"), Ok(Pattern::Method("/Svc/Do_it2")));
        for (bad, error) in [
            ("", MethodPatternError::Shape),
            ("grpc.Health/Check", MethodPatternError::Shape),
            ("/grpc.Health", MethodPatternError::Shape),
            ("/grpc.Health/Check/More", MethodPatternError::Shape),
            ("//Check", MethodPatternError::InvalidService),
            ("/grpc..Health/Check", MethodPatternError::InvalidService),
            ("/grpc.*/Check", MethodPatternError::InvalidService),
            ("/*/*", MethodPatternError::InvalidService),
            ("/grpc.Health/", MethodPatternError::InvalidMethod),
            ("/grpc.Health/Ch*", MethodPatternError::InvalidMethod),
            ("/grpc.Health/Ch eck", MethodPatternError::InvalidMethod),
            ("/grpc.Héalth/Check", MethodPatternError::InvalidService),
        ] {
            assert_eq!(parse(bad), Err(error), "{bad:?}");
        }
    }

    #[test]
    fn method_beats_service_beats_default() {
        let mut table = MethodTable::default();
        table.insert("/pkg.Svc/*", scopes("svc:read")).unwrap();
        table.insert("/pkg.Svc/Write", scopes("svc:write")).unwrap();
        assert_eq!(
            table.insert("/pkg.Svc/*", scopes("x")),
            Err(MethodPatternError::Duplicate)
        );
        assert_eq!(table.lookup("/pkg.Svc/Write"), Some(&scopes("svc:write")));
        assert_eq!(table.lookup("/pkg.Svc/Read"), Some(&scopes("svc:read")));
        assert_eq!(table.lookup("/pkg.Svc/"), None);
        assert_eq!(table.lookup("/pkg.Svc/Read/x"), None);
        assert_eq!(table.lookup("/pkg.Other/Read"), None);
        assert_eq!(table.lookup("/pkg.svc/Read"), None, "case-sensitive");
        assert_eq!(table.lookup("pkg.Svc/Read"), None);
        table.unlisted = Some(ScopeSet::new());
        assert_eq!(table.lookup("/pkg.Other/Read"), Some(&ScopeSet::new()));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(pattern in "\\PC{0,40}") {
            let _ = parse(&pattern);
        }

        #[test]
        fn a_listed_method_is_found(
            service in "[a-z][a-z0-9_]{0,8}(\\.[A-Za-z][A-Za-z0-9_]{0,8}){0,3}",
            method in "[A-Z][A-Za-z0-9_]{0,12}",
            other in "[A-Z][A-Za-z0-9_]{0,12}",
        ) {
            let path = format!("/{service}/{method}");
            let mut table = MethodTable::default();
            table.insert(&path, scopes("a:b")).unwrap();
            table.insert(&format!("/{service}/*"), scopes("c:d")).unwrap();
            prop_assert_eq!(table.lookup(&path), Some(&scopes("a:b")));
            let sibling = format!("/{service}/{other}");
            let expected = if other == method { scopes("a:b") } else { scopes("c:d") };
            prop_assert_eq!(table.lookup(&sibling), Some(&expected));
            let stranger = format!("/{service}x/{method}");
            prop_assert_eq!(table.lookup(&stranger), None);
        }
    }
}
