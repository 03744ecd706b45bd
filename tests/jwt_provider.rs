//! jsonwebtoken's crypto provider is settled by the first JWT key keyward
//! builds, not by the first verifier: a service that only mints tokens
//! must not depend on a verifier having been made. Its own file, so that
//! nothing else in this process has touched the provider first.
#![cfg(feature = "jwt")]

use std::time::Duration;

use jsonwebtoken::crypto::{rust_crypto, CryptoProvider};
use keyward::jwt::{JwtIssuer, JwtSigningKey};
use keyward::ScopeSet;

#[test]
fn minting_before_any_verifier_has_a_crypto_provider() {
    let key = JwtSigningKey::hs256("k1", &[7; 32]).expect("a valid key");
    // No verifier, no token yet, and the process's provider is settled:
    // in a build where another crate also enables jsonwebtoken's
    // `aws_lc_rs` (no provider from its features), the first `mint` would
    // otherwise panic.
    assert!(
        CryptoProvider::install_default(&rust_crypto::DEFAULT_PROVIDER).is_err(),
        "building a signing key must install jsonwebtoken's crypto provider"
    );
    let issuer = JwtIssuer::new(key, "https://auth.example.com", "api");
    let token = issuer
        .mint("acme", &ScopeSet::new(), Duration::from_secs(60), None)
        .expect("minted");
    assert_eq!(token.split('.').count(), 3);
}
