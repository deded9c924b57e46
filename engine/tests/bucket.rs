//! Bucket assignment: fixed test vectors (also in docs/bucket.md) and distribution.

use std::num::NonZeroU32;

use engine::bucket::{
    DEFAULT_BUCKET_COUNT, DEFAULT_BUCKETS, bucket, bucket_count, bucket_label_value, fnv1a_64,
    kubetemplate_shard_key, tenant_shard_key,
};

/// (shard key, buckets, bucket, FNV-1a-64 of the key). Computed independently of this crate;
/// the same table is in docs/bucket.md.
const VECTORS: &[(&str, u32, u32, u64)] = &[
    ("", 1024, 805, 0xcbf2_9ce4_8422_2325),
    ("default", 1024, 510, 0xebad_a516_8620_c5fe),
    ("kube-system", 1024, 862, 0xdf65_c7bc_1d82_b35e),
    ("team-a", 1024, 726, 0xde90_a371_7d12_52d6),
    ("team-b", 1024, 291, 0xde90_a271_7d12_5123),
    ("ns-0", 1024, 627, 0x4a82_b8ba_48e2_5e73),
    ("ns-9999", 1024, 197, 0x7540_01b6_d692_c4c5),
    ("saas/reg/acme", 1024, 391, 0x20f5_49f8_481e_a587),
    ("saas/reg/globex", 1024, 166, 0xd016_ddfb_21d0_70a6),
    (
        "tenants/mysql-registry/42",
        1024,
        388,
        0x607b_6e77_48aa_5984,
    ),
    ("ünïcødé-ns", 1024, 696, 0xa8b0_8870_3401_eeb8),
    ("team-a", 1, 0, 0xde90_a371_7d12_52d6),
    ("team-a", 7, 0, 0xde90_a371_7d12_52d6),
    ("team-a", 4096, 726, 0xde90_a371_7d12_52d6),
    ("saas/reg/acme", 65536, 42375, 0x20f5_49f8_481e_a587),
];

fn count(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero")
}

#[test]
fn fixed_vectors() {
    for &(key, buckets, want, hash) in VECTORS {
        assert_eq!(fnv1a_64(key.as_bytes()), hash, "hash of {key:?}");
        assert_eq!(
            bucket(key, count(buckets)),
            want,
            "bucket of {key:?} in {buckets}"
        );
    }
}

#[test]
fn shard_keys() {
    assert_eq!(kubetemplate_shard_key("team-a"), "team-a");
    assert_eq!(tenant_shard_key("saas", "reg", "acme"), "saas/reg/acme");
    assert_eq!(
        bucket(
            &tenant_shard_key("saas", "reg", "acme"),
            DEFAULT_BUCKET_COUNT
        ),
        391
    );
    assert_eq!(bucket_label_value(391), "391");
    assert_eq!(DEFAULT_BUCKETS, 1024);
    assert_eq!(DEFAULT_BUCKET_COUNT.get(), DEFAULT_BUCKETS);
}

#[test]
fn zero_buckets_is_an_error() {
    assert!(bucket_count(0).is_err());
    assert_eq!(bucket_count(7).map(NonZeroU32::get), Ok(7));
}

#[test]
fn buckets_are_in_range() {
    for buckets in [1, 2, 3, 1000, 1024, u32::MAX] {
        for i in 0..200 {
            let key = format!("ns-{i}");
            assert!(bucket(&key, count(buckets)) < buckets);
        }
    }
}

#[test]
fn ten_thousand_namespaces_spread_evenly() {
    let buckets = DEFAULT_BUCKETS as usize;
    let keys = 10_000;
    let mut counts = vec![0u32; buckets];
    for i in 0..keys {
        counts[bucket(&format!("ns-{i}"), DEFAULT_BUCKET_COUNT) as usize] += 1;
    }
    let mean = keys as f64 / buckets as f64;
    let chi_square: f64 = counts
        .iter()
        .map(|&c| (f64::from(c) - mean).powi(2) / mean)
        .sum();
    // 1023 degrees of freedom: mean 1023, standard deviation about 45. Anything above
    // mean + 5 sd would mean a clearly non-uniform hash.
    assert!(chi_square < 1023.0 + 5.0 * 45.0, "chi-square {chi_square}");
    let max = counts.iter().copied().max().unwrap_or(0);
    assert!(
        f64::from(max) <= 3.0 * mean,
        "fullest bucket holds {max}, mean {mean}"
    );
    let empty = counts.iter().filter(|&&c| c == 0).count();
    assert!(empty < 5, "{empty} empty buckets");
}
