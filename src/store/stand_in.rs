//! Stand-ins: what the request path checks an unknown id against, so that
//! refusing an unknown id costs what refusing a known one does (SECURITY.md,
//! "Timing").
//!
//! A stand-in is a record that no secret matches. The check runs on it the
//! steps it runs on a known id's record (reference count, hash, compare,
//! status and times), and a store whose look-up reads less for a miss than
//! for a hit hands one out in the record's place, read where the record
//! would have been read ([`KeyStore::find_immediate_found`]).
//!
//! [`KeyStore::find_immediate_found`]: super::KeyStore::find_immediate_found

use std::sync::Arc;

use super::{Lookup, StoreError};
use crate::key::{HashAlgorithm, KeyHash, KeyId};
use crate::record::KeyRecord;

/// How many stand-ins a set holds: about as many as the records an
/// attacker's ids would meet, so that a stand-in is as cold or as warm as a
/// record (a first request meets a cold one, a repeated one a warm one).
pub(crate) const STAND_INS: usize = 1 << STAND_IN_BITS;
const STAND_IN_BITS: u32 = 10;

/// A stand-in record: active, without validity times, and its hash (by
/// `algorithm`) the hash of no known input.
pub(crate) fn record(algorithm: HashAlgorithm) -> KeyRecord {
    let hash = KeyHash::new(algorithm, [0x5a; 32]);
    let id = KeyId::from_checked(*b"000000000000");
    KeyRecord::new(id, hash, "", std::time::UNIX_EPOCH)
}

/// `STAND_INS` stand-in records, each in an allocation of its own.
pub(crate) fn records(algorithm: HashAlgorithm) -> Box<[Arc<KeyRecord>]> {
    (0..STAND_INS)
        .map(|_| Arc::new(record(algorithm)))
        .collect()
}

/// The stand-in an id meets: ids are random, so a few of their bytes
/// spread them evenly; an id always meets the same one.
pub(crate) fn slot(id: &KeyId) -> usize {
    let [a, b, c, d, e, f, g, h, ..] = *id.as_bytes();
    let spread = u64::from_le_bytes([a, b, c, d, e, f, g, h]).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (spread >> (64 - STAND_IN_BITS)) as usize
}

/// What the request path's look-up found ([`KeyStore::find_immediate_found`]).
///
/// Public in a private module: no one outside keyward can name it, so only
/// keyward's own stores implement the method that answers it.
///
/// [`KeyStore::find_immediate_found`]: super::KeyStore::find_immediate_found
#[derive(Debug)]
pub enum Found {
    /// The id's record.
    Known(Arc<KeyRecord>),
    /// The id is unknown: the stand-in the store read in the record's
    /// place, or `None` if it read none (the caller uses its own).
    Unknown(Option<Arc<KeyRecord>>),
}

impl Found {
    /// A plain look-up's answer, with no stand-in.
    pub(crate) fn from_lookup(lookup: Lookup) -> Result<Self, StoreError> {
        lookup.map(|found| match found {
            Some(record) => Found::Known(record),
            None => Found::Unknown(None),
        })
    }
}
