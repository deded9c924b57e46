//! Shard key → bucket.
//!
//! Every sharded object has a *shard key*: its namespace for a `KubeTemplate`
//! ([`kubetemplate_shard_key`]), `"<registry-namespace>/<registry-name>/<uid>"` for a `Tenant`
//! ([`tenant_shard_key`]). Its bucket is
//!
//! ```text
//! bucket = FNV-1a-64(UTF-8 bytes of the shard key) mod B
//! ```
//!
//! with the 64-bit FNV-1a hash (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`, each
//! byte XORed into the state and then the state multiplied by the prime, wrapping mod 2^64) and
//! `B` the fixed number of buckets (default [`DEFAULT_BUCKETS`] = 1024). The result is the same
//! on every platform, process and release: it is written once into the label
//! `kubetemplater.io/bucket` ([`BUCKET_LABEL`]) and never recomputed differently. The
//! algorithm and a table of test vectors are in `docs/bucket.md`, so other implementations can
//! check themselves.

use std::num::NonZeroU32;

/// Result of this module's fallible functions.
pub type Result<T, E = BucketError> = std::result::Result<T, E>;

/// Default number of buckets, set at install time and never changed at run time.
pub const DEFAULT_BUCKETS: u32 = 1024;

/// [`DEFAULT_BUCKETS`] as the [`NonZeroU32`] that [`bucket`] takes.
pub const DEFAULT_BUCKET_COUNT: NonZeroU32 = match NonZeroU32::new(DEFAULT_BUCKETS) {
    Some(n) => n,
    None => panic!("DEFAULT_BUCKETS is not zero"),
};

/// The label holding an object's bucket (same as `api::constants::LABEL_BUCKET`).
pub const BUCKET_LABEL: &str = api::constants::LABEL_BUCKET;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Why a bucket count or a bucket label is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BucketError {
    /// The number of buckets is zero.
    #[error("the number of buckets must be at least 1")]
    ZeroBuckets,
    /// A bucket label value is not a decimal number below the number of buckets.
    #[error("bucket label value {value:?} is not a bucket number below {buckets}")]
    InvalidLabel {
        /// The label value as found.
        value: String,
        /// The number of buckets.
        buckets: u32,
    },
}

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

/// The bucket (`0..buckets`) of a shard key: FNV-1a-64 of its UTF-8 bytes modulo `buckets`.
pub fn bucket(shard_key: &str, buckets: NonZeroU32) -> u32 {
    let b = u64::from(buckets.get());
    // The remainder is below `buckets`, which fits in u32.
    u32::try_from(fnv1a_64(shard_key.as_bytes()) % b).unwrap_or(0)
}

/// A bucket count from configuration: anything but zero.
pub fn bucket_count(buckets: u32) -> Result<NonZeroU32> {
    NonZeroU32::new(buckets).ok_or(BucketError::ZeroBuckets)
}

/// The shard key of a `KubeTemplate`: its namespace.
pub fn kubetemplate_shard_key(namespace: &str) -> String {
    namespace.to_owned()
}

/// The shard key of a `Tenant`: `"<registry-namespace>/<registry-name>/<uid>"`.
pub fn tenant_shard_key(registry_namespace: &str, registry_name: &str, uid: &str) -> String {
    format!("{registry_namespace}/{registry_name}/{uid}")
}

/// The value of the [`BUCKET_LABEL`] label for a bucket: its decimal number, e.g. `"17"`.
pub fn bucket_label_value(bucket: u32) -> String {
    bucket.to_string()
}

/// Reads a [`BUCKET_LABEL`] value back: a decimal number (no sign, no leading zeros except
/// `"0"`) below `buckets`.
pub fn parse_bucket_label(value: &str, buckets: NonZeroU32) -> Result<u32> {
    let invalid = || BucketError::InvalidLabel {
        value: value.to_owned(),
        buckets: buckets.get(),
    };
    let canonical = !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit())
        && (value == "0" || !value.starts_with('0'));
    if !canonical {
        return Err(invalid());
    }
    match value.parse::<u32>() {
        Ok(bucket) if bucket < buckets.get() => Ok(bucket),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn labels_round_trip() {
        let b = DEFAULT_BUCKET_COUNT;
        for n in [0, 1, 17, 1023] {
            assert_eq!(parse_bucket_label(&bucket_label_value(n), b), Ok(n));
        }
        for bad in ["", "1024", "-1", "+1", "01", "1.0", " 1", "x"] {
            assert!(parse_bucket_label(bad, b).is_err(), "{bad:?}");
        }
        assert_eq!(bucket_count(0), Err(BucketError::ZeroBuckets));
        assert_eq!(bucket_count(1024), Ok(DEFAULT_BUCKET_COUNT));
    }
}
