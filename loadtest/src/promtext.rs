//! Reading Prometheus text exposition (kube-apiserver's `/metrics`, our components' admin
//! `/metrics`): the samples, sums over label filters, and quantiles of histogram deltas.
//!
//! Only samples are needed (no `# HELP`/`# TYPE`, no exemplars), so this is a small tolerant
//! line reader rather than a dependency: a line that is not a sample is skipped, never an
//! error, since a scrape must not fail a benchmark for one odd line.

use std::collections::BTreeMap;

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_total`, `_bucket` … suffixes as exposed).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// The samples of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// Every sample, in exposition order.
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses exposition text.
    pub fn parse(text: &str) -> Self {
        Self {
            samples: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// Samples named `name` whose labels include every `(key, value)` of `filter`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }

    /// Sum of the samples named `name` matching `filter` (0 when there are none).
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.matching(name, filter).map(|s| s.value).sum()
    }

    /// Sums of `name` (matching `filter`) grouped by the value of label `by`.
    pub fn sum_by(&self, name: &str, filter: &[(&str, &str)], by: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.matching(name, filter) {
            let key = s.labels.get(by).cloned().unwrap_or_default();
            *out.entry(key).or_insert(0.0) += s.value;
        }
        out
    }

    /// The cumulative buckets of histogram `name` (matching `filter`, summed over other
    /// labels), as `(upper bound, count)` in bound order, `+Inf` last.
    pub fn histogram(&self, name: &str, filter: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut by_bound: BTreeMap<OrderedBound, f64> = BTreeMap::new();
        for s in self.matching(&bucket, filter) {
            let Some(le) = s.labels.get("le").and_then(|v| parse_value(v)) else {
                continue;
            };
            *by_bound.entry(OrderedBound(le)).or_insert(0.0) += s.value;
        }
        by_bound.into_iter().map(|(b, c)| (b.0, c)).collect()
    }
}

/// `after − before` of two cumulative histograms with the same bounds (what happened between
/// two scrapes); bounds missing from `before` count from 0.
pub fn histogram_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(bound, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b.total_cmp(&bound).is_eq())
                .map_or(0.0, |(_, c)| *c);
            (bound, (count - earlier).max(0.0))
        })
        .collect()
}

/// Quantile `q` (0–1) of a cumulative histogram, interpolated linearly within the bucket as
/// Prometheus' `histogram_quantile` does. `None` without observations; the highest finite bound
/// when the quantile falls into `+Inf`.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut lower_bound = 0.0;
    let mut lower_count = 0.0;
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower_bound);
            }
            let in_bucket = count - lower_count;
            if in_bucket <= 0.0 {
                return Some(bound);
            }
            return Some(lower_bound + (bound - lower_bound) * (rank - lower_count) / in_bucket);
        }
        lower_bound = bound;
        lower_count = count;
    }
    Some(lower_bound)
}

/// Mean of a histogram from its `_sum` and `_count` deltas.
pub fn mean(sum: f64, count: f64) -> Option<f64> {
    (count > 0.0).then(|| sum / count)
}

/// A bound usable as a map key (bounds are never NaN; `total_cmp` orders them).
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedBound(f64);
impl Eq for OrderedBound {}
impl PartialOrd for OrderedBound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrderedBound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line[open..].find('}')? + open;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let space = line.find(char::is_whitespace)?;
            (&line[..space], BTreeMap::new(), &line[space..])
        }
    };
    // The value; a timestamp may follow.
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some(Sample {
        name: name.trim().to_owned(),
        labels,
        value,
    })
}

/// `a="x",b="y\"z"` → labels (escapes `\\`, `\"`, `\n` undone).
fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(labels);
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim().to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP apiserver_request_total Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="201",resource="configmaps",verb="POST"} 10
apiserver_request_total{code="200",resource="configmaps",verb="APPLY"} 5
apiserver_request_total{code="200",resource="kubetemplates",verb="APPLY"} 2 1700000000000
kubetemplater_queue_depth 3
weird{a="x\"y,z",b="1"} 7
not a sample line
lat_bucket{le="0.1",type="v"} 2
lat_bucket{le="0.2",type="v"} 6
lat_bucket{le="+Inf",type="v"} 8
lat_bucket{le="0.1",type="m"} 1
lat_bucket{le="0.2",type="m"} 1
lat_bucket{le="+Inf",type="m"} 1
"#;

    #[test]
    fn samples_sums_and_groups() {
        let s = Scrape::parse(TEXT);
        assert_eq!(s.sum("apiserver_request_total", &[]), 17.0);
        assert_eq!(
            s.sum("apiserver_request_total", &[("resource", "configmaps")]),
            15.0
        );
        let by = s.sum_by("apiserver_request_total", &[], "verb");
        assert_eq!(by["APPLY"], 7.0);
        assert_eq!(by["POST"], 10.0);
        assert_eq!(s.sum("kubetemplater_queue_depth", &[]), 3.0);
        let weird = s.matching("weird", &[]).next().unwrap();
        assert_eq!(weird.labels["a"], "x\"y,z");
        assert_eq!(weird.labels["b"], "1");
        assert_eq!(s.sum("missing", &[]), 0.0);
    }

    #[test]
    fn histogram_quantiles() {
        let s = Scrape::parse(TEXT);
        let v = s.histogram("lat", &[("type", "v")]);
        assert_eq!(v, vec![(0.1, 2.0), (0.2, 6.0), (f64::INFINITY, 8.0)]);
        // Rank 4 of 8 is half-way through the (0.1, 0.2] bucket.
        let p50 = histogram_quantile(0.5, &v).unwrap();
        assert!((p50 - 0.15).abs() < 1e-9, "{p50}");
        assert!((histogram_quantile(0.25, &v).unwrap() - 0.1).abs() < 1e-9);
        // In +Inf: the highest finite bound.
        assert_eq!(histogram_quantile(0.99, &v), Some(0.2));
        let both = s.histogram("lat", &[]);
        assert_eq!(both.last().unwrap().1, 9.0);
        assert_eq!(histogram_quantile(0.5, &[]), None);
        assert_eq!(histogram_quantile(0.5, &[(1.0, 0.0)]), None);
    }

    #[test]
    fn deltas() {
        let before = vec![(0.1, 1.0), (f64::INFINITY, 2.0)];
        let after = vec![(0.1, 3.0), (0.5, 4.0), (f64::INFINITY, 6.0)];
        assert_eq!(
            histogram_delta(&before, &after),
            vec![(0.1, 2.0), (0.5, 4.0), (f64::INFINITY, 4.0)]
        );
        assert_eq!(mean(3.0, 2.0), Some(1.5));
        assert_eq!(mean(3.0, 0.0), None);
    }
}
