//! With 10,000 templates settled, a 60-second window shows zero API writes from the system
//! (the Lease renewals that prove the processes alive excepted).
#![allow(clippy::unwrap_used, reason = "test fixtures")]

use std::time::Duration;

use anyhow::{Context as _, Result};
use kubetemplater_e2e::system::System;
use kubetemplater_e2e::workload;

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_settled_templates_cost_no_writes() -> Result<()> {
    if kubetemplater_e2e::system::on_external_cluster() {
        eprintln!(
            "SKIP ten_thousand_settled_templates_cost_no_writes: the proof reads devcluster's audit log"
        );
        return Ok(());
    }
    let system = System::start(3, false).await?;
    let audit = system.audit().context("devcluster has an audit log")?;
    let client = system.client.clone();
    let namespaces = workload::namespaces_with_policies(&client, "idle", 200).await?;
    workload::create_templates(&client, &workload::names(&namespaces, 0, 50), 1).await?;
    workload::all_completed(&client, &namespaces, 10_000, 1, Duration::from_secs(900)).await?;
    // Let the last status writes and the coordinator's re-plan settle.
    tokio::time::sleep(Duration::from_secs(10)).await;

    let cursor = audit.cursor()?;
    tokio::time::sleep(Duration::from_secs(60)).await;
    // Our identities' writes, Lease renewals excepted: the same count `loadtest idle` reports.
    let window = loadtest::apicount::Writes {
        events: audit.read_since(cursor)?,
    };
    let writes: Vec<String> = window
        .ours_without_leases()
        .into_iter()
        .map(|e| format!("{} {} by {}", e.verb, e.describe(), e.user.component()))
        .collect();
    assert!(
        writes.is_empty(),
        "{} writes in the idle window: {:#?}",
        writes.len(),
        &writes[..writes.len().min(20)]
    );
    Ok(())
}
