//! Process lifecycle: SIGTERM stops the coordinator and every executor it started.

use std::time::{Duration, Instant};

use anyhow::Result;
use tests::cluster::{simple_rows, Cluster, ClusterOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_everything_without_orphans() -> Result<()> {
    let mut cluster = Cluster::standalone(ClusterOptions {
        executors: 2,
        tpch: None,
        ..ClusterOptions::default()
    })?;
    cluster.wait_executors(2, Duration::from_secs(30)).await?;
    let client = cluster.client().await?;
    let pids: Vec<i32> = simple_rows(&client, "select pid from flotilla.executors")
        .await?
        .into_iter()
        .filter_map(|r| r[0].as_deref().and_then(|p| p.parse().ok()))
        .collect();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|p| tests::process_alive(*p)));
    drop(client);

    let status = cluster.stop()?;
    assert!(status.success(), "standalone exited with {status:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| tests::process_alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "executors outlived the coordinator: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
