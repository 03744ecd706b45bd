//! `KeyFormat::regex`, the expression registered with secret scanners
//! (GitHub's partner program): it finds every generated key in the text
//! around it, whole, and nothing that is not exactly a key's shape.

use keyward::key::{KeyFormat, KeyGenerator};
use proptest::prelude::*;
use regex::Regex;

proptest! {
    #[test]
    fn the_regex_finds_generated_keys_whole_in_text(
        prefix in "[a-z][a-z0-9_]{0,14}[a-z0-9]",
        bits in 128u32..=512,
        before in prop::sample::select(vec!["", " ", "\n", "KEY=", "\"", "'", "token: ", "=", "(", "`"]),
        after in prop::sample::select(vec!["", " ", "\n", "\"", "'", ";", ")", ",", "`", "\r\n"]),
    ) {
        let format = KeyFormat::new(&prefix).unwrap().with_secret_bits(bits).unwrap();
        let key = KeyGenerator::new(format.clone()).generate().unwrap();
        let regex = Regex::new(&format.regex()).unwrap();
        let text = format!("{before}{}{after}", key.expose_secret());
        let found: Vec<&str> = regex.find_iter(&text).map(|m| m.as_str()).collect();
        prop_assert_eq!(found, vec![key.expose_secret()]);
    }

    #[test]
    fn the_regex_refuses_longer_shorter_and_glued_strings(extra in "[0-9A-Za-z]") {
        let format = KeyFormat::new("sk_live").unwrap();
        let key = KeyGenerator::new(format.clone()).generate().unwrap();
        let regex = Regex::new(&format.regex()).unwrap();
        let text = key.expose_secret();
        let longer = format!("{text}{extra}");
        let glued_before = format!("x{text}");
        let glued_after = format!("{text}_x");
        prop_assert!(!regex.is_match(&longer));
        prop_assert!(!regex.is_match(&text[..text.len() - 1]));
        prop_assert!(!regex.is_match(&glued_before));
        prop_assert!(!regex.is_match(&glued_after));
    }
}

#[test]
fn the_documented_regex_for_the_default_format() {
    // The README's line for GitHub registration.
    assert_eq!(
        KeyFormat::new("sk_live").unwrap().regex(),
        r"\bsk_live_[0-9A-Za-z]{61}\b"
    );
    assert_eq!(
        KeyFormat::new("sk_live")
            .unwrap()
            .with_secret_bits(128)
            .unwrap()
            .regex(),
        r"\bsk_live_[0-9A-Za-z]{40}\b"
    );
}
