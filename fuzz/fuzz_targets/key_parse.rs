//! `KeyFormat::parse` against the format's definition: it accepts exactly
//! the strings of the right length, prefix, alphabet and checksum, and
//! returns the id and secret they hold. `ApiKey::parse` agrees with it.
//!
//! Half of the inputs get a correct checksum appended, so that the fuzzer
//! reaches the accepting path, not only the refusals.

#![no_main]

use arbitrary::Arbitrary;
use keyward::key::{ApiKey, KeyFormat, ParseError, CHECKSUM_LEN, KEY_ID_LEN};
use libfuzzer_sys::fuzz_target;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    /// The format's prefix: taken when valid, else `sk_live`.
    prefix: &'a str,
    /// The secret's strength, when valid (128 to 512).
    bits: Option<u16>,
    /// The presented string, or its start when a checksum is appended.
    key: &'a str,
    /// Pad (with `A`) or cut `key` to the length a key has before its
    /// checksum.
    fit: bool,
    /// Append the right checksum to `key`.
    sign: bool,
}

fn checksum(signed: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut crc = crc32(signed);
    let mut out = [b'0'; CHECKSUM_LEN];
    for digit in out.iter_mut().rev() {
        *digit = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    out
}

/// CRC-32 (IEEE), bit by bit: an independent reference for the crate's.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// What the format's definition says of `key`.
fn expected(format: &KeyFormat, key: &str) -> Result<(), ParseError> {
    let bytes = key.as_bytes();
    if bytes.len() != format.key_len() {
        return Err(ParseError::Length);
    }
    let prefix = format.prefix().as_bytes();
    if !bytes.starts_with(prefix) || bytes[prefix.len()] != b'_' {
        return Err(ParseError::Prefix);
    }
    if !bytes[prefix.len() + 1..]
        .iter()
        .all(u8::is_ascii_alphanumeric)
    {
        return Err(ParseError::Alphabet);
    }
    let (signed, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if checksum(signed) != sum {
        return Err(ParseError::Checksum);
    }
    Ok(())
}

fuzz_target!(|input: Input<'_>| {
    let mut format =
        KeyFormat::new(input.prefix).unwrap_or_else(|_| KeyFormat::new("sk_live").unwrap());
    if let Some(bits) = input.bits {
        if let Ok(with_bits) = format.clone().with_secret_bits(u32::from(bits)) {
            format = with_bits;
        }
    }
    let mut key = input.key.to_owned();
    if input.fit {
        let len = format.key_len() - CHECKSUM_LEN;
        while key.len() > len {
            key.pop();
        }
        while key.len() < len {
            key.push('A');
        }
    }
    if input.sign {
        let sum = checksum(key.as_bytes());
        key.push_str(std::str::from_utf8(&sum).unwrap());
    }

    let parsed = format.parse(&key);
    assert_eq!(parsed.map(|_| ()), expected(&format, &key), "{key:?}");
    let owned = ApiKey::parse(&format, &key);
    assert_eq!(owned.is_ok(), parsed.is_ok());

    if let Ok(parsed) = parsed {
        let id_start = format.prefix().len() + 1;
        let secret_start = id_start + KEY_ID_LEN;
        assert_eq!(parsed.id().as_str(), &key[id_start..secret_start]);
        assert_eq!(
            parsed.secret(),
            &key[secret_start..key.len() - CHECKSUM_LEN]
        );
        assert_eq!(parsed.secret().len(), format.secret_len());
        assert_eq!(
            parsed.id().as_str().parse::<keyward::KeyId>(),
            Ok(parsed.id())
        );
        // Neither Debug shows the secret.
        let owned = owned.unwrap();
        assert_eq!(owned.id(), parsed.id());
        assert_eq!(owned.secret(), parsed.secret());
        assert_eq!(owned.expose_secret(), key);
        for shown in [
            format!("{parsed:?}"),
            format!("{owned:?}"),
            owned.to_string(),
        ] {
            assert!(!shown.contains(parsed.secret()), "{shown}");
        }
    }
});
