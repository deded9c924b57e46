//! `loadtest report <json>`: a report as a table a person reads.

use std::fmt::Write as _;

use crate::report::{Report, unit};

/// The report as text: run, machine, versions, parameters, figures (value and unit), notes and
/// the verdict with its problems.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored.
    let _ = writeln!(
        out,
        "scenario   {}  ({})",
        report.scenario,
        if report.ok { "ok" } else { "PROBLEMS" }
    );
    let _ = writeln!(
        out,
        "started    {}  ({:.1} s)",
        report.started_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        report.duration_s
    );
    let m = &report.machine;
    let _ = writeln!(
        out,
        "machine    {}: {} CPUs{}, {}, {}",
        m.hostname,
        m.cpus,
        m.cpu_model
            .as_deref()
            .map_or_else(String::new, |c| format!(" ({c})")),
        m.memory_bytes
            .map_or_else(|| "memory unknown".to_owned(), |b| human_bytes(b as f64)),
        m.os
    );
    let v = &report.versions;
    let _ = writeln!(
        out,
        "versions   loadtest {} ({}), commit {}{}",
        v.loadtest,
        if v.profile.is_empty() {
            "profile unknown"
        } else {
            v.profile.as_str()
        },
        v.git_commit.as_deref().unwrap_or("unknown"),
        if v.git_dirty == Some(true) {
            " + uncommitted changes"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "parameters {}", compact(&report.parameters));
    let _ = writeln!(out);

    let rows: Vec<(String, String, String, String)> = report
        .figures
        .iter()
        .map(|f| {
            (
                f.name.clone(),
                number(f.value, &f.unit),
                f.unit.clone(),
                f.description.clone().unwrap_or_default(),
            )
        })
        .collect();
    let width = |pick: fn(&(String, String, String, String)) -> usize, title: &str| {
        rows.iter().map(pick).max().unwrap_or(0).max(title.len())
    };
    let (wn, wv, wu) = (
        width(|r| r.0.chars().count(), "figure"),
        width(|r| r.1.chars().count(), "value"),
        width(|r| r.2.chars().count(), "unit"),
    );
    let _ = writeln!(
        out,
        "{:<wn$}  {:>wv$}  {:<wu$}  description",
        "figure", "value", "unit"
    );
    let _ = writeln!(
        out,
        "{}",
        "-".repeat(wn + wv + wu + 6 + "description".len())
    );
    for (name, value, unit, description) in &rows {
        let _ = writeln!(out, "{name:<wn$}  {value:>wv$}  {unit:<wu$}  {description}");
    }

    if !report.notes.is_empty() {
        let _ = writeln!(out, "\nnotes");
        for note in &report.notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    let _ = writeln!(out);
    if report.ok {
        let _ = writeln!(out, "verdict    ok");
    } else {
        let _ = writeln!(out, "verdict    {} problem(s)", report.problems.len());
        for p in &report.problems {
            let _ = writeln!(out, "- {p}");
        }
    }
    out
}

/// A value with its unit, as in the table (`12.5 ms`, `1,024 (1.0 KiB)`).
pub fn format_value(value: f64, unit: &str) -> String {
    let n = number(value, unit);
    if unit == unit::BYTES || unit == unit::COUNT || unit.is_empty() {
        n
    } else {
        format!("{n} {unit}")
    }
}

/// A value for the table: integers without decimals, bytes also in binary units, other
/// numbers with 3 significant decimals at most.
fn number(value: f64, unit: &str) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    if unit == unit::BYTES {
        return format!("{} ({})", group(value), human_bytes(value));
    }
    if value.fract() == 0.0 && value.abs() < 1e15 {
        return group(value);
    }
    let decimals = if value.abs() >= 100.0 {
        1
    } else if value.abs() >= 1.0 {
        2
    } else {
        3
    };
    format!("{value:.decimals$}")
}

/// An integral value with thousands separators: `1,234,567`.
fn group(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 {
        out.insert(0, '-');
    }
    out
}

fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

fn compact(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", v.to_string().trim_matches('"')))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Figure;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(1_000_000.0, unit::OBJECTS), "1,000,000");
        assert_eq!(number(-1234.0, unit::COUNT), "-1,234");
        assert_eq!(number(0.0, unit::COUNT), "0");
        assert_eq!(number(1.23456, unit::RATIO), "1.23");
        assert_eq!(number(0.012345, unit::RATIO), "0.012");
        assert_eq!(number(135.27, unit::RATIO), "135.3");
        assert_eq!(
            number(3.0 * 1024.0 * 1024.0, unit::BYTES),
            "3,145,728 (3.0 MiB)"
        );
        assert_eq!(number(f64::NAN, unit::RATIO), "NaN");
    }

    #[test]
    fn table_has_figures_notes_and_verdict() {
        let mut report = crate::report::tests_support::minimal("simulate");
        report.parameters = serde_json::json!({"workers": 20, "zipf": 1.1});
        report.figures = vec![
            Figure::new("ratio_to_ideal.mean", 1.0234, unit::RATIO).describe("moved / ideal"),
            Figure::new("objects", 10_000.0, unit::OBJECTS),
        ];
        report.notes = vec!["buckets are the unit".into()];
        let text = render(&report);
        assert!(text.contains("parameters workers=20 zipf=1.1"));
        assert!(text.contains("ratio_to_ideal.mean"));
        assert!(text.contains("1.02  ratio"));
        assert!(text.contains("10,000  objects"));
        assert!(text.contains("- buckets are the unit"));
        assert!(text.contains("verdict    ok"));
        report.ok = false;
        report.problems = vec!["event 3: bad".into()];
        let text = render(&report);
        assert!(text.contains("(PROBLEMS)"));
        assert!(text.contains("verdict    1 problem(s)\n- event 3: bad"));
    }
}
