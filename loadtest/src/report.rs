//! The report every scenario writes: `report.json`, one format for all scenarios.
//!
//! A report holds what is needed to read and to rerun a measurement: the scenario and its
//! parameters, the machine and versions it ran on, the figures (named numbers with units), the
//! series behind the plot, and a verdict (`ok`, with the problems found). Scenario-specific
//! detail (one row per event, per sample, …) goes into `records` as free-form JSON objects.
//!
//! The format is versioned by [`FORMAT`]; fields added later default when absent, so an older
//! `report.json` still reads.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::host::{Machine, Versions};
use crate::{Error, Result};

/// Version of the report format.
pub const FORMAT: u32 = 1;

/// Name of the JSON file in a report directory.
pub const JSON_FILE: &str = "report.json";
/// Name of the plot in a report directory.
pub const PNG_FILE: &str = "report.png";

/// Units used in figures and series. Free text in the format; these keep spellings uniform.
pub mod unit {
    /// A dimensionless ratio (1.0 is the reference).
    pub const RATIO: &str = "ratio";
    /// Milliseconds.
    pub const MS: &str = "ms";
    /// Seconds.
    pub const S: &str = "s";
    /// Bytes.
    pub const BYTES: &str = "bytes";
    /// A count of buckets.
    pub const BUCKETS: &str = "buckets";
    /// A count of objects.
    pub const OBJECTS: &str = "objects";
    /// A count of workers.
    pub const WORKERS: &str = "workers";
    /// A count of namespaces.
    pub const NAMESPACES: &str = "namespaces";
    /// A count of anything else.
    pub const COUNT: &str = "count";
    /// An event number (x axis of per-event series).
    pub const EVENT: &str = "event";
    /// Per second.
    pub const PER_S: &str = "/s";
}

/// One run of one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Version of this format ([`FORMAT`]).
    pub format: u32,
    /// Scenario name (`simulate`, `burst`, …).
    pub scenario: String,
    /// When the run started.
    pub started_at: jiff::Timestamp,
    /// Wall-clock duration of the run.
    #[serde(default)]
    pub duration_s: f64,
    /// The machine it ran on.
    pub machine: Machine,
    /// What ran.
    pub versions: Versions,
    /// The scenario's parameters, as given or defaulted (enough to rerun it).
    pub parameters: serde_json::Value,
    /// Named numbers, in the order a reader should see them.
    pub figures: Vec<Figure>,
    /// Series for plots.
    #[serde(default)]
    pub series: Vec<Series>,
    /// Scenario-specific rows (one per event, sample, …), free-form JSON objects.
    #[serde(default)]
    pub records: Vec<serde_json::Value>,
    /// Remarks a reader needs to interpret the figures.
    #[serde(default)]
    pub notes: Vec<String>,
    /// No problem was found: every correctness check of the scenario held.
    pub ok: bool,
    /// What went wrong (empty when `ok`).
    #[serde(default)]
    pub problems: Vec<String>,
}

/// A named number with its unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Dotted name, for example `rebalance_ms.p99`.
    pub name: String,
    /// The value.
    pub value: f64,
    /// Its unit ([`unit`]).
    pub unit: String,
    /// What it is, for a reader (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A series of `(x, y)` points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Name, for example `ratio_to_ideal`.
    pub name: String,
    /// Unit of y.
    pub unit: String,
    /// Unit of x (`event`, `s`, …).
    pub x_unit: String,
    /// The points, in x order.
    pub points: Vec<Point>,
}

/// One point of a series, written as `[x, y]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point(pub f64, pub f64);

impl Figure {
    /// A figure without description.
    pub fn new(name: impl Into<String>, value: f64, unit: &str) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.to_owned(),
            description: None,
        }
    }

    /// With a description.
    pub fn describe(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }
}

impl Series {
    /// An empty series.
    pub fn new(name: impl Into<String>, unit: &str, x_unit: &str) -> Self {
        Self {
            name: name.into(),
            unit: unit.to_owned(),
            x_unit: x_unit.to_owned(),
            points: Vec::new(),
        }
    }

    /// Appends a point.
    pub fn push(&mut self, x: f64, y: f64) {
        self.points.push(Point(x, y));
    }
}

impl Report {
    /// The figure named `name`.
    pub fn figure(&self, name: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.name == name)
    }

    /// The series named `name`.
    pub fn series(&self, name: &str) -> Option<&Series> {
        self.series.iter().find(|s| s.name == name)
    }

    /// Sets `ok` from `problems`.
    pub fn conclude(&mut self) {
        self.ok = self.problems.is_empty();
    }

    /// Reads a `report.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| Error::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the report as pretty JSON to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self).map_err(Error::Serialize)?;
        text.push('\n');
        std::fs::write(path, text).map_err(|source| Error::Write {
            path: path.to_owned(),
            source,
        })
    }
}

/// Builders for tests of other modules.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A report with nothing measured.
    pub(crate) fn minimal(scenario: &str) -> Report {
        Report {
            format: FORMAT,
            scenario: scenario.into(),
            started_at: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
            duration_s: 0.0,
            machine: Machine::detect(),
            versions: Versions::detect(),
            parameters: serde_json::json!({}),
            figures: vec![],
            series: vec![],
            records: vec![],
            notes: vec![],
            ok: true,
            problems: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut series = Series::new("ratio_to_ideal", unit::RATIO, unit::EVENT);
        series.push(1.0, 0.98);
        series.push(2.0, 1.5);
        Report {
            format: FORMAT,
            scenario: "simulate".into(),
            started_at: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
            duration_s: 1.25,
            machine: Machine {
                hostname: "h".into(),
                cpus: 2,
                memory_bytes: Some(24 << 30),
                os: "Linux".into(),
                cpu_model: None,
            },
            versions: Versions {
                loadtest: "0.1.0".into(),
                git_commit: Some("abc".into()),
                git_dirty: Some(false),
                profile: "release".into(),
            },
            parameters: serde_json::json!({"workers": 20}),
            figures: vec![
                Figure::new("ratio_to_ideal.mean", 1.02, unit::RATIO).describe("mean"),
                Figure::new("rebalance_ms.p99", 3.5, unit::MS),
            ],
            series: vec![series],
            records: vec![serde_json::json!({"event": 1, "kind": "join"})],
            notes: vec!["a note".into()],
            ok: true,
            problems: vec![],
        }
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JSON_FILE);
        let report = sample();
        report.save(&path).unwrap();
        assert_eq!(Report::load(&path).unwrap(), report);
    }

    #[test]
    fn points_are_pairs_and_descriptions_optional() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(
            json["series"][0]["points"][0],
            serde_json::json!([1.0, 0.98])
        );
        assert!(json["figures"][1].get("description").is_none());
        assert_eq!(json["started_at"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn fields_added_later_default() {
        let mut json = serde_json::to_value(sample()).unwrap();
        let obj = json.as_object_mut().unwrap();
        for key in ["series", "records", "notes", "problems", "duration_s"] {
            obj.remove(key);
        }
        let report: Report = serde_json::from_value(json).unwrap();
        assert!(report.series.is_empty() && report.problems.is_empty());
    }

    #[test]
    fn lookups_and_verdict() {
        let mut report = sample();
        assert_eq!(report.figure("rebalance_ms.p99").unwrap().value, 3.5);
        assert!(report.series("ratio_to_ideal").is_some());
        assert!(report.figure("nope").is_none());
        report.problems.push("bad".into());
        report.conclude();
        assert!(!report.ok);
    }
}
