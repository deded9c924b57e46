//! Objects spread over namespaces with a Zipf (power-law) size distribution, and the bucket
//! weights that follow.
//!
//! Namespace of rank `k` (1-based) gets a share proportional to `k^-s`. The sizes are
//! apportioned deterministically (largest remainder), so they sum to exactly the requested
//! number of objects and the same arguments give the same cluster on every machine; the seed of
//! a scenario varies the events, not the cluster. With `s` = 0 every namespace has the same size
//! (± 1). Namespace `k` is named `ns-{k}`; its bucket is the real one
//! ([`engine::bucket::bucket`] of [`engine::bucket::kubetemplate_shard_key`]).

use std::num::NonZeroU32;

/// The name of the namespace of rank `k` (1-based).
pub fn namespace_name(k: usize) -> String {
    format!("ns-{k}")
}

/// Sizes of `namespaces` namespaces holding `objects` objects in all, the namespace of rank `k`
/// (index `k - 1`) holding a share proportional to `k^-s`. Sums to `objects` exactly (no
/// namespaces: empty). A negative or non-finite `s` counts as 0.
pub fn namespace_sizes(namespaces: usize, objects: u64, s: f64) -> Vec<u64> {
    if namespaces == 0 {
        return Vec::new();
    }
    let s = if s.is_finite() { s.max(0.0) } else { 0.0 };
    let shares: Vec<f64> = (1..=namespaces).map(|k| (k as f64).powf(-s)).collect();
    let total: f64 = shares.iter().sum();
    let exact: Vec<f64> = shares
        .iter()
        .map(|share| objects as f64 * share / total)
        .collect();
    // Floors first, then one more object to the largest remainders until the sum is exact.
    // `as` saturates; every value is within 0..=objects.
    let mut sizes: Vec<u64> = exact.iter().map(|e| e.floor() as u64).collect();
    let assigned: u64 = sizes.iter().sum();
    // Rounding can push the floors above `objects` by a few when `objects` is above 2^53;
    // take those back from the largest namespaces.
    let mut over = assigned.saturating_sub(objects);
    for size in sizes.iter_mut() {
        if over == 0 {
            break;
        }
        let take = over.min(*size);
        *size -= take;
        over -= take;
    }
    let short = objects.saturating_sub(sizes.iter().sum());
    if short > 0 {
        let mut order: Vec<usize> = (0..namespaces).collect();
        // Largest remainder first, ties to the lower rank: deterministic.
        order.sort_by(|&a, &b| {
            let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
            rb.total_cmp(&ra).then(a.cmp(&b))
        });
        // `short` is below `namespaces` up to rounding; cycle in case rounding made it more.
        for i in order
            .iter()
            .cycle()
            .take(usize::try_from(short).unwrap_or(usize::MAX))
        {
            sizes[*i] += 1;
        }
    }
    sizes
}

/// The weight (object count) of each of `buckets` buckets, given namespace sizes by rank.
pub fn bucket_weights(sizes: &[u64], buckets: NonZeroU32) -> Vec<u64> {
    let mut weights = vec![0u64; buckets.get() as usize];
    for (i, size) in sizes.iter().enumerate() {
        if *size == 0 {
            continue;
        }
        let key = engine::bucket::kubetemplate_shard_key(&namespace_name(i + 1));
        let b = engine::bucket::bucket(&key, buckets) as usize;
        weights[b] = weights[b].saturating_add(*size);
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_to_the_requested_objects() {
        for (namespaces, objects, s) in [
            (100_000, 1_000_000, 1.1),
            (10, 1_000_000, 1.1),
            (1_000, 7, 1.1),
            (3, 10, 0.0),
            (1, 5, 2.0),
            (500, 12_345, 0.5),
            (7, 0, 1.1),
        ] {
            let sizes = namespace_sizes(namespaces, objects, s);
            assert_eq!(sizes.len(), namespaces);
            assert_eq!(
                sizes.iter().sum::<u64>(),
                objects,
                "{namespaces} {objects} {s}"
            );
        }
        assert!(namespace_sizes(0, 10, 1.0).is_empty());
    }

    #[test]
    fn sizes_follow_the_power_law() {
        let sizes = namespace_sizes(1_000, 1_000_000, 1.0);
        // Non-increasing in rank.
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]));
        // Rank 1 holds twice rank 2 and ten times rank 10 (±1 from rounding).
        assert!(sizes[0].abs_diff(2 * sizes[1]) <= 2);
        assert!(sizes[0].abs_diff(10 * sizes[9]) <= 10);
        // s = 0: equal sizes.
        let flat = namespace_sizes(4, 10, 0.0);
        assert_eq!(flat, vec![3, 3, 2, 2]);
        // A bad exponent is flat too.
        assert_eq!(namespace_sizes(4, 10, f64::NAN), flat);
    }

    #[test]
    fn deterministic_and_bucketed_like_the_webhook() {
        assert_eq!(
            namespace_sizes(1_000, 50_000, 1.1),
            namespace_sizes(1_000, 50_000, 1.1)
        );
        let sizes = namespace_sizes(1_000, 50_000, 1.1);
        let b = NonZeroU32::new(64).unwrap();
        let weights = bucket_weights(&sizes, b);
        assert_eq!(weights.len(), 64);
        assert_eq!(weights.iter().sum::<u64>(), 50_000);
        let first = engine::bucket::bucket("ns-1", b) as usize;
        assert!(weights[first] >= sizes[0]);
    }
}
