//! The loadtest scenarios, small, against the whole system on a private devcluster: each must
//! run to the end and find no problem (every template Completed, no write when idle, no missed
//! or duplicated apply under churn and across handoffs; every Tenant of a registry's rows Ready,
//! changed rows reaching their objects, no write when idle). Correctness only: the figures are
//! not judged here (docs/benchmarks.md has them from full-size runs).
#![allow(clippy::unwrap_used, reason = "test fixtures")]

use anyhow::{Result, ensure};
use kubetemplater_e2e::system::{System, on_external_cluster};
use loadtest::output::OutputArgs;
use loadtest::populate::PopulateArgs;
use loadtest::report::Report;
use loadtest::target::TargetArgs;
use loadtest::{Cluster, admission, burst, churn, idle, rebalance, tenants};

fn populate(templates: usize) -> PopulateArgs {
    PopulateArgs {
        templates,
        namespaces: 4,
        objects: 2,
        concurrency: 8,
        timeout_s: 180,
        keep: false,
    }
}

fn churn_args(seconds: u64, rate: f64) -> churn::ChurnArgs {
    churn::ChurnArgs {
        populate: populate(20),
        rate,
        duration: seconds,
        updates: 70,
        deletes: 15,
        creates: 15,
        drain_timeout: 120,
    }
}

async fn run(scenario: Cluster, target: &TargetArgs) -> Result<Report> {
    let dir = tempfile::tempdir()?;
    let output = OutputArgs {
        out: Some(dir.path().to_owned()),
        quiet: true,
    };
    let (report, written) = loadtest::run_cluster(&scenario, target, &output).await?;
    eprintln!("{}", loadtest::summary_line(&scenario, &report));
    ensure!(
        written.json.is_file() && written.png.is_file(),
        "report files written"
    );
    ensure!(
        report.ok,
        "{} found problems: {:#?}",
        report.scenario,
        report.problems
    );
    Ok(report)
}

fn figure(report: &Report, name: &str) -> f64 {
    report
        .figure(name)
        .unwrap_or_else(|| panic!("{} has no figure {name}", report.scenario))
        .value
}

#[tokio::test(flavor = "multi_thread")]
async fn every_scenario_runs_small_and_finds_no_problem() -> Result<()> {
    let external = on_external_cluster();
    let system = System::start(2, false).await?;
    let target = TargetArgs {
        kubeconfig: Some(system.endpoints().kubeconfig.clone()),
        system_namespace: devcluster::stack::SYSTEM_NAMESPACE.to_owned(),
        metrics: Vec::new(),
        pids: Vec::new(),
    };

    let report = run(
        Cluster::Burst(burst::BurstArgs {
            populate: populate(20),
            no_ceiling: false,
        }),
        &target,
    )
    .await?;
    assert_eq!(figure(&report, "completed"), 20.0);
    assert_eq!(figure(&report, "objects"), 40.0);
    assert!(figure(&report, "fraction_of_ceiling") > 0.0);
    assert!(figure(&report, "latency_ms.p99") >= figure(&report, "latency_ms.p50"));
    assert!(report.series("completed_per_s").is_some());
    if !external {
        assert!(figure(&report, "cpu_s.worker-0") >= 0.0);
        assert!(
            figure(&report, "writes.kubetemplater:worker-0")
                + figure(&report, "writes.kubetemplater:worker-1")
                > 0.0
        );
    }

    let report = run(
        Cluster::Idle(idle::IdleArgs {
            populate: populate(20),
            settle: 5,
            window: 5,
        }),
        &target,
    )
    .await?;
    assert_eq!(figure(&report, "idle.writes"), 0.0);

    let report = run(Cluster::Churn(churn_args(6, 10.0)), &target).await?;
    assert!(figure(&report, "churn.changes") > 0.0);
    assert_eq!(figure(&report, "missed_applies"), 0.0);
    if !external {
        assert_eq!(figure(&report, "duplicated_applies"), 0.0);
    }

    if external {
        eprintln!("SKIP rebalance: scaling workers outside devcluster needs --scale-command");
    } else {
        let report = run(
            Cluster::Rebalance(rebalance::RebalanceArgs {
                churn: churn_args(12, 5.0),
                scale: vec![3, 2],
                scale_command: None,
                coordinator: None,
            }),
            &target,
        )
        .await?;
        assert!(figure(&report, "buckets_moved") > 0.0);
        assert_eq!(figure(&report, "missed_applies"), 0.0);
        assert_eq!(figure(&report, "duplicated_applies"), 0.0);
    }

    if system.has_webhook() {
        let report = run(
            Cluster::Admission(admission::AdmissionArgs {
                requests: 40,
                concurrency: 4,
                objects: 3,
            }),
            &target,
        )
        .await?;
        assert!(figure(&report, "client_ms.p50") > 0.0);
        assert!(figure(&report, "baseline_ms.p50") > 0.0);
        assert!(figure(&report, "webhook_ms.validate.p50") > 0.0);
        assert!(figure(&report, "apiserver_ms.validating.p50") > 0.0);
    }

    // Tenants: on an external cluster the coordinators still run here, so a local SQLite file
    // works, but its Nodes may have no room for pods: no Deployment there.
    let sqlite = tempfile::tempdir()?;
    let report = run(
        Cluster::Tenants(tenants::TenantsArgs {
            rows: 50,
            resources: if external { 2 } else { 3 },
            replicas: 1,
            sync_interval: "2s".to_owned(),
            changes: 10,
            change_seconds: 4,
            settle: 6,
            idle_seconds: 10,
            sqlite_path: external.then(|| sqlite.path().join("tenants.db")),
            timeout_s: 180,
            keep: false,
        }),
        &target,
    )
    .await?;
    assert_eq!(figure(&report, "ready"), 50.0);
    assert_eq!(figure(&report, "changes.updated"), 10.0);
    assert!(figure(&report, "change_ms.p99") >= figure(&report, "change_tenant_ms.p50"));
    assert_eq!(figure(&report, "idle.writes"), 0.0);
    if !external {
        // The coordinators' metrics: the rows read, syncs while idle, one write per Tenant (a
        // Tenant just written counts as existing before the watch shows it).
        assert_eq!(figure(&report, "registry.rows.total"), 50.0);
        assert!(figure(&report, "idle.query.count") > 0.0);
        assert_eq!(
            figure(&report, "ramp.coordinator_writes.apply_tenant"),
            50.0
        );
    }
    Ok(())
}
