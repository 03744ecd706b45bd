//! gRPC method patterns (`MethodScopesLayer::method`) and the look-up of a
//! request path (`MethodScopesLayer::required_scopes`): a pattern is
//! accepted exactly when it has the documented shape, a listed method is
//! found, a method's own pattern wins over its service's, and an unlisted
//! path gets the default (refused, unless `allow_unlisted`).

#![no_main]

use arbitrary::Arbitrary;
use keyward::grpc::{MethodPatternError, MethodScopesLayer};
use keyward::scope::ScopeSet;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    patterns: Vec<&'a str>,
    paths: Vec<&'a str>,
    allow_unlisted: bool,
}

fn identifier(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The documented shape: `/` dot-separated identifiers `/` an identifier
/// or `*`. `Some(service)` for a whole-service pattern.
fn shape(pattern: &str) -> Option<Option<&str>> {
    let rest = pattern.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let (service, method) = (parts.next()?, parts.next()?);
    if parts.next().is_some() || !service.split('.').all(identifier) {
        return None;
    }
    if method == "*" {
        Some(Some(service))
    } else {
        identifier(method).then_some(None)
    }
}

/// A distinct scope set per pattern, to tell which one a look-up found.
fn scopes_for(i: usize) -> ScopeSet {
    format!("p:{i}").parse().unwrap()
}

fuzz_target!(|input: Input<'_>| {
    let mut layer = MethodScopesLayer::new();
    let mut methods: Vec<(&str, usize)> = Vec::new();
    let mut services: Vec<(&str, usize)> = Vec::new();
    let mut accepted: Vec<&str> = Vec::new();
    for (i, pattern) in input.patterns.iter().enumerate() {
        let listed = accepted.contains(pattern);
        match layer.clone().method(pattern, scopes_for(i)) {
            Ok(next) => {
                let service = shape(pattern).unwrap_or_else(|| panic!("accepted {pattern:?}"));
                assert!(!listed, "accepted {pattern:?} twice");
                accepted.push(pattern);
                match service {
                    Some(service) => services.push((service, i)),
                    None => methods.push((pattern, i)),
                }
                layer = next;
            }
            Err(MethodPatternError::Duplicate) => assert!(listed, "{pattern:?}"),
            Err(error) => assert!(shape(pattern).is_none(), "refused {pattern:?}: {error}"),
        }
    }
    let unlisted = scopes_for(usize::MAX);
    if input.allow_unlisted {
        layer = layer.allow_unlisted(unlisted.clone());
    }

    let listed_paths = methods.iter().map(|(p, _)| *p).collect::<Vec<_>>();
    for path in input.paths.iter().copied().chain(listed_paths) {
        let expected = if let Some((_, i)) = methods.iter().find(|(p, _)| *p == path) {
            Some(scopes_for(*i))
        } else {
            // `/service/method`, the method one non-empty segment.
            let service = path
                .strip_prefix('/')
                .and_then(|rest| rest.split_once('/'))
                .filter(|(_, method)| !method.is_empty() && !method.contains('/'))
                .map(|(service, _)| service);
            match services.iter().find(|(s, _)| Some(*s) == service) {
                Some((_, i)) => Some(scopes_for(*i)),
                None => input.allow_unlisted.then(|| unlisted.clone()),
            }
        };
        assert_eq!(layer.required_scopes(path), expected.as_ref(), "{path:?}");
    }
});
