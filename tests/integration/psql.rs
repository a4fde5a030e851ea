//! A smoke test with Debian's psql: `select 1`, a TPC-H query, an error followed
//! by a good query.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use tests::cluster::{Cluster, ClusterOptions};

fn psql(port: u16, commands: &[&str]) -> Result<std::process::Output> {
    let mut command = Command::new("psql");
    command
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-U",
            "flotilla",
            "-d",
            "flotilla",
        ])
        .arg("-p")
        .arg(port.to_string())
        .env("PGCONNECT_TIMEOUT", "10");
    for c in commands {
        command.arg("-c").arg(c);
    }
    command
        .output()
        .context("running psql (apt-get install postgresql-client)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_smoke() -> Result<()> {
    let cluster = Cluster::standalone(ClusterOptions::default())?;
    cluster.wait_executors(2, Duration::from_secs(60)).await?;
    let port = cluster.pg_port;

    let out = psql(port, &["select 1"])?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    let q6 = std::fs::read_to_string(tests::shared_dir().join("tpch/queries/q06.sql"))?;
    let out = psql(port, &[q6.trim()])?;
    assert!(out.status.success(), "{out:?}");
    let revenue: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    assert!(
        (revenue - 11_803_420.253_4).abs() < 1e-2,
        "q06 revenue {revenue}"
    );

    let out = psql(port, &["select * from no_such_table", "select 2"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ERROR:"), "{stderr}");
    assert!(stderr.contains("no_such_table"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    Ok(())
}
