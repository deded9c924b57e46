//! kill -9 a worker under load: its buckets move once its Lease has expired and nothing is
//! lost. kill -9 the leader: a standby takes over within one Lease duration plus a few seconds,
//! keeps the persisted map, and the workers keep applying meanwhile.
#![allow(clippy::unwrap_used, reason = "test fixtures")]

use std::time::{Duration, Instant};

use anyhow::Result;
use kubetemplater_e2e::system::{LEASE_DURATION, System, moved_fraction, owners};
use kubetemplater_e2e::workload;

#[tokio::test(flavor = "multi_thread")]
async fn killed_worker_and_killed_leader_lose_nothing() -> Result<()> {
    let mut system = System::start(3, false).await?;
    let client = system.client.clone();
    let namespaces = workload::namespaces_with_policies(&client, "fail", 40).await?;
    workload::create_templates(&client, &workload::names(&namespaces, 0, 5), 1).await?;
    workload::all_completed(&client, &namespaces, 200, 1, Duration::from_secs(240)).await?;

    // A worker dies under load: templates are being created while it is killed.
    let creating = {
        let (client, names) = (client.clone(), workload::names(&namespaces, 5, 5));
        tokio::spawn(async move { workload::create_templates(&client, &names, 1).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    system.kill_worker("worker-1")?;
    let killed = Instant::now();
    let map = system
        .settled_map(LEASE_DURATION + Duration::from_secs(30))
        .await?;
    eprintln!(
        "worker-1's buckets moved {:?} after the kill",
        killed.elapsed()
    );
    assert!(
        killed.elapsed() >= LEASE_DURATION - Duration::from_secs(2),
        "buckets moved before worker-1's Lease could have expired"
    );
    assert!(owners(&map).iter().all(|o| o != "worker-1"));
    creating.await??;
    workload::all_completed(&client, &namespaces, 400, 1, Duration::from_secs(240)).await?;
    let objects = workload::managed_configmaps(&client, &namespaces).await?;
    assert_eq!(objects.len(), 400, "nothing lost");

    // The leader dies; the workers keep applying while a standby takes over.
    let before = owners(&system.settled_map(Duration::from_secs(30)).await?);
    let old = system.kill_leader().await?;
    let killed = Instant::now();
    let creating = {
        let (client, names) = (client.clone(), workload::names(&namespaces, 10, 2));
        tokio::spawn(async move { workload::create_templates(&client, &names, 1).await })
    };
    let new_leader = loop {
        if let Ok(map) = system.map().await
            && map.leader_id != old
            && !map.leader_id.is_empty()
        {
            break map.leader_id;
        }
        assert!(
            killed.elapsed() < LEASE_DURATION + Duration::from_secs(10),
            "no standby took over within the lease duration plus 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "{new_leader} took over {:?} after {old} was killed",
        killed.elapsed()
    );
    // Workers kept applying: templates created in the gap complete.
    creating.await??;
    workload::all_completed(&client, &namespaces, 480, 1, Duration::from_secs(240)).await?;
    let after = owners(&system.settled_map(Duration::from_secs(60)).await?);
    let moved = moved_fraction(&before, &after);
    assert!(
        moved <= 0.05,
        "the new leader reshuffled {:.1}% of the buckets",
        moved * 100.0
    );
    assert_eq!(
        workload::managed_configmaps(&client, &namespaces)
            .await?
            .len(),
        480
    );
    Ok(())
}
