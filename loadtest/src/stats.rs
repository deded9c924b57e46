//! Summary statistics of a sample: count, mean, min, max and nearest-rank percentiles.

/// Summary of a sample of numbers (NaNs are dropped).
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    sorted: Vec<f64>,
}

impl Summary {
    /// Summarises `values`.
    pub fn new(values: impl IntoIterator<Item = f64>) -> Self {
        let mut sorted: Vec<f64> = values.into_iter().filter(|v| !v.is_nan()).collect();
        sorted.sort_by(f64::total_cmp);
        Self { sorted }
    }

    /// Number of values.
    pub fn count(&self) -> usize {
        self.sorted.len()
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// Arithmetic mean (`None` when empty).
    pub fn mean(&self) -> Option<f64> {
        (!self.is_empty()).then(|| self.sorted.iter().sum::<f64>() / self.sorted.len() as f64)
    }

    /// Smallest value.
    pub fn min(&self) -> Option<f64> {
        self.sorted.first().copied()
    }

    /// Largest value.
    pub fn max(&self) -> Option<f64> {
        self.sorted.last().copied()
    }

    /// Nearest-rank percentile `p` (0–100): the smallest value with at least `p`% of the values
    /// at or below it (`p` = 0 gives the minimum). `None` when empty.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let n = self.sorted.len();
        if n == 0 {
            return None;
        }
        let p = p.clamp(0.0, 100.0);
        // `as` saturates; the rank is within 1..=n.
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.sorted.get(rank.clamp(1, n) - 1).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_min_max() {
        let s = Summary::new([3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!(s.count(), 3);
        assert_eq!(s.mean(), Some(2.0));
        assert_eq!(s.min(), Some(1.0));
        assert_eq!(s.max(), Some(3.0));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = Summary::new((1..=100).map(f64::from));
        assert_eq!(s.percentile(50.0), Some(50.0));
        assert_eq!(s.percentile(95.0), Some(95.0));
        assert_eq!(s.percentile(99.0), Some(99.0));
        assert_eq!(s.percentile(100.0), Some(100.0));
        assert_eq!(s.percentile(0.0), Some(1.0));
        let small = Summary::new([10.0, 20.0, 30.0, 40.0]);
        assert_eq!(small.percentile(50.0), Some(20.0));
        assert_eq!(small.percentile(51.0), Some(30.0));
        assert_eq!(small.percentile(99.0), Some(40.0));
        assert_eq!(small.percentile(250.0), Some(40.0));
    }

    #[test]
    fn empty() {
        let s = Summary::new(std::iter::empty());
        assert!(s.is_empty());
        assert_eq!(s.mean(), None);
        assert_eq!(s.percentile(50.0), None);
        assert_eq!(s.max(), None);
    }
}
