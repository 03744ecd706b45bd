//! Deserializing policies and records (serde_json into `Limits`,
//! `RatePolicy`, `CreditPolicy`, `Policy`, `ScopeSet` and `KeyRecord`)
//! never panics, and what deserializes serializes again and reads back as
//! the same value, with the same JSON.
//!
//! Stores read records back from Redis or PostgreSQL as JSON: a corrupted
//! or hostile row must be an error, never a panic in a request.

#![no_main]

use std::fmt::Debug;

use keyward::limit::{CreditPolicy, Limits, Policy, RatePolicy};
use keyward::scope::ScopeSet;
use keyward::KeyRecord;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T>(data: &[u8])
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let Ok(value) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let json = serde_json::to_string(&value)
        .unwrap_or_else(|error| panic!("{value:?} does not serialize: {error}"));
    let back = serde_json::from_str::<T>(&json)
        .unwrap_or_else(|error| panic!("{json} does not read back: {error}"));
    assert_eq!(back, value, "{json}");
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
}

fuzz_target!(|data: &[u8]| {
    round_trip::<Limits>(data);
    round_trip::<RatePolicy>(data);
    round_trip::<CreditPolicy>(data);
    round_trip::<Policy>(data);
    round_trip::<ScopeSet>(data);
    round_trip::<KeyRecord>(data);
});
