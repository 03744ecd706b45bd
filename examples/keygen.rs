//! Mints a key from the command line and prints the key, its id and its
//! hash: the hash (and id) go into your own database, the key to its owner.
//!
//! ```sh
//! cargo run --example keygen -- sk_live          # prefix, 256-bit secret
//! cargo run --example keygen -- sk_test 128      # prefix, secret bits
//! KEYWARD_PEPPER=... cargo run --example keygen -- sk_live   # HMAC with a pepper
//! KEYWARD_PEPPER=... KEYWARD_PEPPER_ID=2 cargo run --example keygen -- sk_live
//! ```
//!
//! The hash names its algorithm (`sha256:…` or `hmac-sha256:<pepper id>:…`),
//! so that a service verifies each stored key the way it was made.

use keyward::key::{KeyFormat, KeyGenerator, KeyHasher, PepperId};

fn main() {
    if let Err(error) = run() {
        eprintln!("error: {error}");
        eprintln!("usage: keygen [PREFIX] [SECRET_BITS]   (defaults: sk_live 256)");
        std::process::exit(2);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let prefix = args.next().unwrap_or_else(|| "sk_live".to_owned());
    let bits: u32 = match args.next() {
        Some(bits) => bits.parse().map_err(|_| "SECRET_BITS must be a number")?,
        None => keyward::key::DEFAULT_SECRET_BITS,
    };
    let format = KeyFormat::new(&prefix)?.with_secret_bits(bits)?;
    let hasher = match std::env::var("KEYWARD_PEPPER") {
        Ok(pepper) if !pepper.is_empty() => {
            let id: PepperId = match std::env::var("KEYWARD_PEPPER_ID") {
                Ok(id) => id.parse()?,
                Err(_) => PepperId::new(1),
            };
            KeyHasher::with_pepper(id, pepper.as_bytes())
        }
        _ => KeyHasher::sha256(),
    };
    let key = KeyGenerator::new(format.clone()).generate()?;
    println!("key:    {}", key.expose_secret());
    println!("key_id: {}", key.id());
    println!("hash:   {}", hasher.hash(key.secret()));
    println!("regex:  {}", format.regex());
    Ok(())
}
