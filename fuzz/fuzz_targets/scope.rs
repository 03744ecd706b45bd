//! `Scope` and `ScopeSet` parsing against the grammar of the `scope`
//! module: what parses matches the grammar, prints back as it was read,
//! and grants as the module docs say.

#![no_main]

use arbitrary::Arbitrary;
use keyward::scope::{Scope, ScopeError, ScopeSet, MAX_SCOPE_LEN};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    /// One scope.
    scope: &'a str,
    /// A space-separated set.
    set: &'a str,
    /// A scope the set is asked about.
    required: &'a str,
}

/// The grammar: 1 to 128 bytes of `:`-separated segments of
/// `[a-z0-9._-]+`, the last of which may be `*`; not the lone `*`.
fn grammatical(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_SCOPE_LEN || s == "*" {
        return false;
    }
    let segments: Vec<&str> = s.split(':').collect();
    let last = segments.len() - 1;
    segments.iter().enumerate().all(|(i, segment)| {
        (i == last && *segment == "*")
            || (!segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.')))
    })
}

/// What the module docs say `granted` grants.
fn should_grant(granted: &str, required: &str) -> bool {
    match granted.strip_suffix('*') {
        Some(stem) => required.starts_with(stem) && required.len() > stem.len(),
        None => granted == required,
    }
}

fuzz_target!(|input: Input<'_>| {
    let scope = Scope::new(input.scope);
    assert_eq!(scope.is_ok(), grammatical(input.scope), "{:?}", input.scope);
    assert_eq!(input.scope.parse::<Scope>(), scope);
    if input.scope == "*" {
        assert_eq!(scope, Err(ScopeError::Universal));
    }
    if let Ok(scope) = &scope {
        assert_eq!(scope.as_str(), input.scope);
        assert_eq!(scope.to_string(), input.scope);
        assert_eq!(scope.is_wildcard(), input.scope.ends_with('*'));
        assert!(scope.grants(scope));
        assert!(!scope.grants(&Scope::everything()) || scope.is_wildcard());
        assert!(Scope::everything().grants(scope));
    }

    let set = input.set.parse::<ScopeSet>();
    let words: Vec<&str> = input.set.split_ascii_whitespace().collect();
    assert_eq!(
        set.is_ok(),
        words.iter().all(|w| grammatical(w)),
        "{:?}",
        input.set
    );
    if let Ok(set) = &set {
        // Sorted, without duplicates, and printed back to itself.
        let listed: Vec<&str> = set.iter().map(Scope::as_str).collect();
        assert!(
            listed.windows(2).all(|pair| pair[0] < pair[1]),
            "{listed:?}"
        );
        for word in &words {
            assert!(listed.contains(word));
            assert!(set.contains(&Scope::new(word).unwrap()));
        }
        assert_eq!(set.len(), listed.len());
        assert!(set.len() <= words.len());
        assert_eq!(set.to_string().parse::<ScopeSet>().as_ref(), Ok(set));
        assert_eq!(ScopeSet::parse(&words).as_ref(), Ok(set));

        if let Ok(required) = Scope::new(input.required) {
            let expected = words.iter().any(|w| should_grant(w, input.required));
            assert_eq!(set.grants(&required), expected, "{set} / {required}");
        }
    }
});
