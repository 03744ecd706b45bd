//! Property tests for scopes: parsing never panics, granted sets satisfy
//! what they contain, wildcards never cross resources, and RequireScopes
//! agrees with `ScopeSet::grants`.

use keyward::scope::{Scope, ScopeSet, MAX_SCOPE_LEN};
use keyward::RequireScopes;
use proptest::prelude::*;

/// One valid segment.
fn segment() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,8}"
}

/// A valid scope without a wildcard: 1 to 4 segments.
fn plain_scope() -> impl Strategy<Value = Scope> {
    prop::collection::vec(segment(), 1..=4)
        .prop_map(|segments| Scope::new(&segments.join(":")).expect("generated scopes are valid"))
}

/// A valid scope, possibly ending in `*`.
fn any_scope() -> impl Strategy<Value = Scope> {
    (plain_scope(), any::<bool>()).prop_map(|(scope, wild)| {
        if wild {
            Scope::new(&format!("{scope}:*")).unwrap_or(scope)
        } else {
            scope
        }
    })
}

fn scope_set() -> impl Strategy<Value = ScopeSet> {
    prop::collection::vec(any_scope(), 0..6).prop_map(|scopes| scopes.into_iter().collect())
}

proptest! {
    #[test]
    fn parsing_never_panics(input in any::<String>()) {
        let _ = Scope::new(&input);
        let _ = input.parse::<ScopeSet>();
        let _ = RequireScopes::try_all([&input]);
        let _ = RequireScopes::try_any(input.split(' '));
    }

    #[test]
    fn scope_shaped_input_never_panics_and_accepted_means_valid(
        input in "[a-zA-Z0-9:*. _é-]{0,140}"
    ) {
        if let Ok(scope) = Scope::new(&input) {
            prop_assert_eq!(scope.as_str(), input.as_str());
            prop_assert!(!input.is_empty() && input.len() <= MAX_SCOPE_LEN);
            prop_assert!(input != "*");
            prop_assert!(input
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.:*".contains(&b)));
            prop_assert!(!input.starts_with(':') && !input.ends_with(':') && !input.contains("::"));
            // A `*` only as the whole last segment.
            if let Some(star) = input.find('*') {
                prop_assert_eq!(star, input.len() - 1);
                prop_assert!(input.len() == 1 || input.ends_with(":*"));
            }
        }
    }

    #[test]
    fn invalid_characters_are_refused(
        scope in plain_scope(),
        bad in "[A-Z !\"#$%&'()+,/;<=>?@\\[\\]^`{|}~é]",
        at in any::<prop::sample::Index>(),
    ) {
        let mut s = scope.as_str().to_owned();
        let mut boundaries: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
        boundaries.push(s.len());
        s.insert_str(*at.get(&boundaries), &bad);
        prop_assert!(Scope::new(&s).is_err(), "{} was accepted", s);
    }

    #[test]
    fn display_round_trips(set in scope_set()) {
        prop_assert_eq!(set.to_string().parse::<ScopeSet>().unwrap(), set);
    }

    #[test]
    fn a_granted_set_satisfies_every_scope_it_contains(set in scope_set()) {
        for scope in &set {
            prop_assert!(set.grants(scope), "{} does not grant {}", set, scope);
        }
    }

    #[test]
    fn a_superset_grants_whatever_the_subset_grants(
        base in scope_set(),
        extra in scope_set(),
        required in plain_scope(),
    ) {
        let union: ScopeSet = base.iter().chain(extra.iter()).cloned().collect();
        if base.grants(&required) {
            prop_assert!(union.grants(&required));
        }
    }

    #[test]
    fn wildcards_never_grant_across_resources(
        resource in segment(),
        other in segment(),
        suffix in "[a-z0-9._-]{1,8}",
        action in prop::collection::vec(segment(), 1..=3),
    ) {
        let wildcard = Scope::new(&format!("{resource}:*")).unwrap();
        let action = action.join(":");
        // Its own resource, any action: granted.
        let own = Scope::new(&format!("{resource}:{action}")).unwrap();
        prop_assert!(wildcard.grants(&own));
        // The bare resource is not an action of it.
        prop_assert!(!wildcard.grants(&Scope::new(&resource).unwrap()));
        // A resource that merely starts with the same letters: never.
        let longer = format!("{resource}{suffix}:{action}");
        prop_assert!(!wildcard.grants(&Scope::new(&longer).unwrap()), "{} granted {}", wildcard, longer);
        // Any other resource: never.
        if other != resource {
            let foreign = Scope::new(&format!("{other}:{action}")).unwrap();
            prop_assert!(!wildcard.grants(&foreign), "{} granted {}", wildcard, foreign);
        }
        // `pets:*` never grants `petsx:read` or `users:read`.
        let pets = Scope::new("pets:*").unwrap();
        let petsx = Scope::new(&format!("pets{suffix}:read")).unwrap();
        prop_assert!(!pets.grants(&petsx));
        if resource != "pets" {
            let users = Scope::new(&format!("{resource}:read")).unwrap();
            prop_assert!(!pets.grants(&users));
        }
    }

    #[test]
    fn a_plain_scope_grants_only_itself(a in plain_scope(), b in any_scope()) {
        prop_assert_eq!(a.grants(&b), a == b);
    }
}
