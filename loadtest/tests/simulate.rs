//! The `loadtest` binary end to end: a small `simulate` writes a report that parses, is ok and
//! has its plot, and `loadtest report` prints it. Seconds, no cluster.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test fixtures")]

use std::path::Path;
use std::process::{Command, Output};

use loadtest::report::{JSON_FILE, PNG_FILE, Report};

fn loadtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .output()
        .expect("run loadtest")
}

fn simulate(out: &Path) -> Output {
    loadtest(&[
        "simulate",
        "--workers",
        "20",
        "--objects",
        "10000",
        "--namespaces",
        "1000",
        "--events",
        "10",
        "--seed",
        "3",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn simulate_writes_a_complete_report_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let run = simulate(&out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // Quiet: one summary line, then where the report is; no progress bar on stderr.
    assert!(
        stdout.starts_with("simulate ok: 20 workers, 1024 buckets, 10 events"),
        "{stdout}"
    );
    assert!(
        run.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let report = Report::load(&out.join(JSON_FILE)).unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert!(report.problems.is_empty());
    assert_eq!(report.scenario, "simulate");
    assert_eq!(report.parameters["workers"], 20);
    assert!(report.machine.cpus >= 1);
    assert_eq!(report.versions.loadtest, env!("CARGO_PKG_VERSION"));
    for name in [
        "objects",
        "buckets",
        "ratio_to_ideal.mean",
        "ratio_to_ideal.p95",
        "ratio_to_ideal.max",
        "max_over_mean.max",
        "rebalance_ms.p50",
        "rebalance_ms.p99",
        "initial_plan_ms",
        "fixed_point_failures",
    ] {
        assert!(report.figure(name).is_some(), "figure {name} missing");
    }
    assert_eq!(report.figure("objects").unwrap().value, 10_000.0);
    assert_eq!(report.figure("fixed_point_failures").unwrap().value, 0.0);
    assert_eq!(report.records.len(), 11);
    assert_eq!(report.series("ratio_to_ideal").unwrap().points.len(), 10);

    let png = std::fs::read(out.join(PNG_FILE)).unwrap();
    assert!(png.len() > 1_000);
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // The same seed gives the same events.
    let again = dir.path().join("again");
    assert!(simulate(&again).status.success());
    let second = Report::load(&again.join(JSON_FILE)).unwrap();
    let moved = |r: &Report| -> Vec<_> {
        r.records
            .iter()
            .map(|e| {
                (
                    e["kind"].clone(),
                    e["worker"].clone(),
                    e["buckets_moved"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(moved(&report), moved(&second));

    // `report` prints the table and exits 0 for an ok report.
    let table = loadtest(&["report", out.join(JSON_FILE).to_str().unwrap()]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("scenario   simulate  (ok)"), "{text}");
    assert!(text.contains("rebalance_ms.p99"));
    assert!(text.contains("verdict    ok"));
}

#[test]
fn report_of_a_bad_file_fails_with_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    std::fs::write(&path, "{\"not\": \"a report\"}").unwrap();
    let run = loadtest(&["report", path.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("is not a loadtest report"));
}

#[test]
fn report_of_a_failed_run_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    assert!(simulate(&out).status.success());
    let path = out.join(JSON_FILE);
    let mut report = Report::load(&path).unwrap();
    report.ok = false;
    report.problems = vec!["event 1 (join): an example problem".into()];
    report.save(&path).unwrap();
    let run = loadtest(&["report", path.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stdout).contains("- event 1 (join): an example problem"));
}
