//! Property tests: parsing never panics; generate → format → parse round-trips.

use keyward::key::{ApiKey, KeyFormat, KeyGenerator, ParseError};
use keyward::scope::Scope;
use proptest::prelude::*;

fn format() -> KeyFormat {
    KeyFormat::new("sk_live").unwrap()
}

proptest! {
    #[test]
    fn parsing_any_string_never_panics(input in any::<String>()) {
        let _ = format().parse(&input);
        let _ = KeyFormat::new(&input);
        let _ = input.parse::<keyward::key::KeyId>();
        let _ = input.parse::<keyward::key::KeyHash>();
        let _ = Scope::new(&input);
    }

    #[test]
    fn parsing_key_shaped_strings_never_panics(body in "[0-9A-Za-z_é]{0,80}") {
        let _ = format().parse(&format!("sk_live_{body}"));
    }

    #[test]
    fn generated_keys_round_trip(
        prefix in "[a-z][a-z0-9_]{0,14}[a-z0-9]",
        bits in 128u32..=512,
    ) {
        let format = KeyFormat::new(&prefix).unwrap().with_secret_bits(bits).unwrap();
        let key = KeyGenerator::new(format.clone()).generate().unwrap();
        let text = key.expose_secret();
        prop_assert_eq!(text.len(), format.key_len());
        let parsed = format.parse(text).unwrap();
        prop_assert_eq!(parsed.id(), key.id());
        prop_assert_eq!(parsed.secret(), key.secret());
        let owned = ApiKey::parse(&format, text).unwrap();
        prop_assert_eq!(owned, key);
    }

    #[test]
    fn any_single_character_change_is_refused(index in 8usize..69, replacement in "[0-9A-Za-z]") {
        let format = format();
        let key = KeyGenerator::new(format.clone()).generate().unwrap();
        let mut bytes = key.expose_secret().as_bytes().to_vec();
        let replacement = replacement.as_bytes()[0];
        prop_assume!(bytes[index] != replacement);
        bytes[index] = replacement;
        let changed = String::from_utf8(bytes).unwrap();
        // CRC32 catches every error confined to one byte.
        prop_assert_eq!(format.parse(&changed).unwrap_err(), ParseError::Checksum);
    }

    #[test]
    fn truncated_or_extended_keys_are_refused(cut in 0usize..69, extra in "[0-9A-Za-z]{1,4}") {
        let format = format();
        let key = KeyGenerator::new(format.clone()).generate().unwrap();
        let text = key.expose_secret();
        prop_assert_eq!(format.parse(&text[..cut]).unwrap_err(), ParseError::Length);
        prop_assert_eq!(format.parse(&format!("{text}{extra}")).unwrap_err(), ParseError::Length);
    }
}
