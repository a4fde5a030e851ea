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

/// What psql users type first: its catalog commands, answered from the
/// emulated `pg_catalog`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_describes_the_catalog() -> Result<()> {
    let cluster = Cluster::standalone(ClusterOptions::default())?;
    cluster.wait_executors(2, Duration::from_secs(60)).await?;
    let port = cluster.pg_port;
    let text = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).to_string();

    let out = psql(port, &["\\dt"])?;
    assert!(out.status.success(), "{out:?}");
    let tables: Vec<String> = text(&out)
        .lines()
        .map(|l| l.split('|').nth(1).unwrap_or("").to_string())
        .collect();
    for t in [
        "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier",
    ] {
        assert!(
            tables.iter().any(|n| n == t),
            "\\dt lacks {t}: {}",
            text(&out)
        );
    }
    assert!(
        text(&out).contains("public|lineitem|table"),
        "{}",
        text(&out)
    );

    let out = psql(port, &["\\d lineitem"])?;
    assert!(out.status.success(), "{out:?}");
    let described = text(&out);
    assert!(described.contains("l_orderkey|bigint"), "{described}");
    assert!(
        described.contains("l_quantity|numeric(15,2)"),
        "{described}"
    );
    assert!(described.contains("l_shipdate|date"), "{described}");
    assert_eq!(
        described.lines().filter(|l| l.starts_with("l_")).count(),
        16,
        "{described}"
    );

    let out = psql(port, &["\\dn"])?;
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out).lines().any(|l| l.starts_with("public|")),
        "{}",
        text(&out)
    );

    let out = psql(port, &["\\l"])?;
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out).lines().any(|l| l.starts_with("flotilla|")),
        "{}",
        text(&out)
    );

    // Several statements in one simple query: one result each, in order.
    let out = psql(
        port,
        &["select 1; select 'two'; select count(*) from region"],
    )?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out).trim(),
        "1\ntwo\n5",
        "psql 15 prints every result of -c"
    );
    Ok(())
}

/// Ctrl-C in psql sends a CancelRequest; the query stops with 57014 and psql
/// exits long before the query could have finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_cancels_with_cancel_request() -> Result<()> {
    let cluster = Cluster::standalone(ClusterOptions::default())?;
    cluster.wait_executors(2, Duration::from_secs(60)).await?;
    let mut child = Command::new("psql")
        .args(["-X", "-h", "127.0.0.1", "-U", "flotilla", "-d", "flotilla", "-p"])
        .arg(cluster.pg_port.to_string())
        .args([
            "-c",
            "select count(*) from lineitem, nation n1, nation n2 where l_comment <> n1.n_comment || n2.n_comment",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = std::time::Instant::now();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let deadline = started + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "psql did not stop after SIGINT"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
    // The server answers the next client at once.
    let out = psql(cluster.pg_port, &["select 7"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");
    Ok(())
}
