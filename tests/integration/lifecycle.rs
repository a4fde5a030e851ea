//! Process lifecycle: SIGTERM stops the coordinator and every executor it started.

use std::time::Duration;

use anyhow::Result;
use tests::cluster::{wait_exited, Cluster, ClusterOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_everything_without_orphans() -> Result<()> {
    let mut cluster = Cluster::standalone(ClusterOptions {
        executors: 2,
        tpch: None,
        ..ClusterOptions::default()
    })?;
    cluster.wait_executors(2, Duration::from_secs(30)).await?;
    let client = cluster.client().await?;
    let pids = cluster.executor_pids(&client).await?;
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|p| tests::process_alive(*p)));
    drop(client);

    let status = cluster.stop()?;
    assert!(status.success(), "standalone exited with {status:?}");
    // The executors must not outlive the coordinator.
    wait_exited(&pids, Duration::from_secs(10)).await
}
