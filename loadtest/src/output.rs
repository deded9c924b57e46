//! Where a run's report goes: `--out <dir>`, by default
//! `target/loadtest/<scenario>-<UTC timestamp>/` under the current directory, holding
//! `report.json` and `report.png`.

use std::path::{Path, PathBuf};

use crate::plot::{self, Panel};
use crate::report::{JSON_FILE, PNG_FILE, Report};
use crate::{Error, Result};

/// Output options shared by every scenario.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OutputArgs {
    /// Directory for report.json and report.png [default: target/loadtest/<scenario>-<timestamp>/]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// No progress bar; print one summary line at the end (for CI).
    #[arg(long, short)]
    pub quiet: bool,
}

/// The files written.
#[derive(Debug, Clone)]
pub struct Written {
    /// The directory.
    pub dir: PathBuf,
    /// `report.json`.
    pub json: PathBuf,
    /// `report.png`.
    pub png: PathBuf,
}

impl OutputArgs {
    /// The report directory of a run of `scenario` started at `started_at`.
    pub fn dir(&self, scenario: &str, started_at: jiff::Timestamp) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| default_dir(scenario, started_at))
    }
}

/// `target/loadtest/<scenario>-<YYYYmmddTHHMMSSZ>`.
pub fn default_dir(scenario: &str, started_at: jiff::Timestamp) -> PathBuf {
    Path::new("target").join("loadtest").join(format!(
        "{scenario}-{}",
        started_at.strftime("%Y%m%dT%H%M%SZ")
    ))
}

/// Writes `report.json` and the plot of `panels` into `dir` (created if missing). The JSON is
/// written first, so a plotting failure still leaves the figures.
pub fn write(report: &Report, panels: &[Panel], dir: &Path) -> Result<Written> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_owned(),
        source,
    })?;
    let json = dir.join(JSON_FILE);
    report.save(&json)?;
    let png = dir.join(PNG_FILE);
    plot::render(report, panels, &png)?;
    Ok(Written {
        dir: dir.to_owned(),
        json,
        png,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_names_scenario_and_time() {
        let t = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        assert_eq!(
            default_dir("simulate", t),
            Path::new("target/loadtest/simulate-20231114T221320Z")
        );
        let given = OutputArgs {
            out: Some("x".into()),
            quiet: true,
        };
        assert_eq!(given.dir("simulate", t), Path::new("x"));
    }
}
