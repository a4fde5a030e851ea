//! Micro-benchmarks of a Flotilla cluster, each beside its target in
//! `../shared/docs/targets.md`: start to first answered query, idle resident
//! memory, `SELECT 1` round trips over pgwire and Flight SQL, streaming a large
//! result over both (rows/s and the coordinator's peak memory), and concurrent
//! clients running TPC-H. Prints one line per figure and a JSON summary.
//!
//! `cargo build --workspace --all-targets && target/debug/micro` (full size) or
//! `--quick` (small sizes; what CI runs to keep it working). Nothing is asserted
//! but the answers: a wrong row count or a failed query fails the run.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arrow_flight::sql::client::FlightSqlServiceClient;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use tests::cluster::{Cluster, ClusterOptions};
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    /// Executor processes.
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// Rows of the streamed result (4 columns).
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// `SELECT 1` round trips per protocol.
    #[arg(long, default_value_t = 1_000)]
    round_trips: usize,
    /// Concurrent clients, each running the 22 TPC-H queries at SF0.1.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Small sizes, for CI.
    #[arg(long)]
    quick: bool,
}

/// Resident memory of a process, from `/proc`: (current, peak) in MiB.
fn memory_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn percentile(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i].as_secs_f64() * 1e3
}

async fn flight_client(port: u16) -> Result<FlightSqlServiceClient<Channel>> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect()
        .await?;
    let mut client = FlightSqlServiceClient::new(channel);
    client.handshake("flotilla", "").await?;
    Ok(client)
}

/// Rows of a Flight SQL query, counted as they stream.
async fn flight_rows(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Result<u64> {
    let info = client.execute(sql.to_string(), None).await?;
    let mut rows = 0u64;
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.context("endpoint without ticket")?;
        let mut stream = client.do_get(ticket).await?;
        while let Some(batch) = stream.try_next().await? {
            rows += batch.num_rows() as u64;
        }
    }
    Ok(rows)
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.rows = 200_000;
        args.round_trips = 100;
        args.clients = 4;
    }
    let data_dir = tests::shared_data_dir().join("micro");
    std::fs::create_dir_all(&data_dir)?;
    let options = ClusterOptions {
        executors: args.executors,
        tpch: Some(0.1),
        config: None,
        restart: false,
        data_dir: Some(data_dir.clone()),
        target_partitions: 2,
        password: None,
    };
    // A first start generates the data; the measured one finds it present.
    {
        let mut first = Cluster::standalone(options.clone())?;
        first.stop()?;
    }
    let mut figures = serde_json::Map::new();
    let mut report = |name: &str, value: f64, unit: &str, target: &str| {
        println!("{name:<44} {value:>12.3} {unit:<8} target {target}");
        figures.insert(
            name.to_string(),
            serde_json::json!({ "value": value, "unit": unit, "target": target }),
        );
    };

    let started = Instant::now();
    let cluster = Cluster::standalone(options)?;
    cluster
        .wait_executors(args.executors, Duration::from_secs(60))
        .await?;
    let client = cluster.client().await?;
    client.simple_query("select count(*) from nation").await?;
    report(
        "start to first answered query",
        started.elapsed().as_secs_f64(),
        "s",
        "< 1 s",
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let (coordinator_rss, _) = memory_mib(cluster.pid()).context("coordinator memory")?;
    report(
        "idle resident memory, coordinator",
        coordinator_rss,
        "MiB",
        "< 64 MiB",
    );
    let pids = cluster.executor_pids(&client).await?;
    let executor_rss = pids
        .iter()
        .filter_map(|p| memory_mib(*p as u32))
        .map(|m| m.0)
        .fold(0.0f64, f64::max);
    report(
        "idle resident memory, executor (largest)",
        executor_rss,
        "MiB",
        "< 64 MiB",
    );

    // SELECT 1 round trips.
    let mut samples = Vec::with_capacity(args.round_trips);
    for _ in 0..args.round_trips + 20 {
        let t = Instant::now();
        client.simple_query("SELECT 1").await?;
        samples.push(t.elapsed());
    }
    samples.drain(..20);
    report(
        "SELECT 1 over pgwire, p50",
        percentile(&mut samples, 0.5),
        "ms",
        "<= 0.3 ms",
    );
    report(
        "SELECT 1 over pgwire, p99",
        percentile(&mut samples, 0.99),
        "ms",
        "-",
    );
    let mut flight = flight_client(cluster.flight_port).await?;
    let mut samples = Vec::with_capacity(args.round_trips);
    for _ in 0..args.round_trips + 20 {
        let t = Instant::now();
        let rows = flight_rows(&mut flight, "SELECT 1").await?;
        samples.push(t.elapsed());
        if rows != 1 {
            bail!("SELECT 1 over Flight SQL returned {rows} rows");
        }
    }
    samples.drain(..20);
    report(
        "SELECT 1 over Flight SQL, p50",
        percentile(&mut samples, 0.5),
        "ms",
        "<= 1 ms",
    );
    report(
        "SELECT 1 over Flight SQL, p99",
        percentile(&mut samples, 0.99),
        "ms",
        "-",
    );

    // Streaming a large result: 4 columns, counted as the rows arrive.
    let sql = format!(
        "SELECT value AS a, value * 2 AS b, value % 7 AS c, 'row' AS d FROM generate_series(1, {})",
        args.rows
    );
    let statement = client.prepare(&sql).await?;
    let t = Instant::now();
    let stream = client
        .query_raw(&statement, std::iter::empty::<i64>())
        .await?;
    futures::pin_mut!(stream);
    let mut rows = 0u64;
    while let Some(row) = stream.next().await {
        row?;
        rows += 1;
    }
    let pgwire = (rows, t.elapsed().as_secs_f64());
    let (_, pgwire_peak) = memory_mib(cluster.pid()).context("coordinator memory")?;
    let t = Instant::now();
    let rows = flight_rows(&mut flight, &sql).await?;
    let flight_sql = (rows, t.elapsed().as_secs_f64());
    let (_, flight_peak) = memory_mib(cluster.pid()).context("coordinator memory")?;
    for (path, (rows, seconds), peak, target) in [
        ("pgwire", pgwire, pgwire_peak, ">= 1 M rows/s"),
        ("Flight SQL", flight_sql, flight_peak, ">= 10 M rows/s"),
    ] {
        if rows != args.rows {
            bail!("{path} streamed {rows} rows, not {}", args.rows);
        }
        let name = format!("stream rows x 4 columns over {path}");
        report(&name, rows as f64 / seconds / 1e6, "M rows/s", target);
        let name = format!("coordinator peak memory after {path} stream");
        report(&name, peak, "MiB", "flat (idle + a few batches)");
    }

    // Concurrent clients, each running the 22 TPC-H queries once.
    let queries: Vec<String> = (1..=22)
        .map(|n| {
            std::fs::read_to_string(tests::shared_dir().join(format!("tpch/queries/q{n:02}.sql")))
                .map(|s| s.trim().trim_end_matches(';').to_string())
        })
        .collect::<std::io::Result<_>>()?;
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let client = cluster.client().await?;
        let queries = queries.clone();
        tasks.spawn(async move {
            for q in &queries {
                client.simple_query(q).await?;
            }
            Ok::<_, tokio_postgres::Error>(queries.len())
        });
    }
    let mut done = 0usize;
    let mut failed = 0usize;
    while let Some(result) = tasks.join_next().await {
        match result? {
            Ok(n) => done += n,
            Err(e) => {
                eprintln!("a client failed: {e}");
                failed += 1;
            }
        }
    }
    let seconds = t.elapsed().as_secs_f64();
    report(
        &format!("{} clients x 22 TPC-H SF0.1 queries", args.clients),
        done as f64 / seconds,
        "queries/s",
        "no failures",
    );
    if failed > 0 {
        bail!("{failed} of {} concurrent clients failed", args.clients);
    }
    println!("{}", serde_json::Value::Object(figures));
    Ok(())
}
