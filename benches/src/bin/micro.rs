//! Micro-benchmarks of a Flotilla cluster, each beside its target in
//! `../shared/docs/targets.md`: start to first answered query, idle resident
//! memory, per-task scheduling overhead, `SELECT 1` round trips over pgwire and
//! Flight SQL, streaming a large result over both (rows/s and the coordinator's
//! peak memory), exchange throughput between executors, and concurrent clients
//! running TPC-H. Prints one line per figure and a JSON summary.
//!
//! `cargo build --workspace --all-targets && target/debug/micro` (full size) or
//! `--quick` (small sizes; what CI runs to keep it working). Nothing is asserted
//! but the answers: a wrong row count or a failed query fails the run.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arrow_flight::sql::client::FlightSqlServiceClient;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use tests::cluster::{simple_rows, Cluster, ClusterOptions};
use tests::memory_mib;
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
    /// Tasks of the fanned-out query that measures per-task overhead.
    #[arg(long, default_value_t = 1_000)]
    tasks: usize,
    /// Runs of the shuffle-bound query that measures exchange throughput.
    #[arg(long, default_value_t = 5)]
    exchange_runs: usize,
    /// Small sizes, for CI.
    #[arg(long)]
    quick: bool,
}

/// Bytes a process has passed to `write`-family calls (sockets included), from
/// `/proc/PID/io`.
fn written_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Bytes a process has taken from `read`-family calls (sockets included).
fn read_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs `sql` `runs` times on `client`, checks every answer has `rows` rows and
/// returns the median wall time in seconds.
async fn median_seconds(
    client: &tokio_postgres::Client,
    sql: &str,
    rows: usize,
    runs: usize,
) -> Result<f64> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let got = client.query(sql, &[]).await?;
        times.push(t.elapsed().as_secs_f64());
        if got.len() != rows {
            bail!("{sql}: {} rows, expected {rows}", got.len());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
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

/// The single count a query answers, through the simple protocol.
async fn simple_count(client: &tokio_postgres::Client, sql: &str) -> Result<i64> {
    let rows = simple_rows(client, sql).await?;
    rows.first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{sql}: no count in {rows:?}"))
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.rows = 200_000;
        args.round_trips = 100;
        args.clients = 4;
        args.tasks = 50;
        args.exchange_runs = 1;
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
        fault_injection: false,
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

    // Per-task scheduling overhead: one scan fanned out to `tasks` tasks (the
    // table's files split into byte ranges; most ranges hold no row group, so
    // the tasks are trivial) against the same query in the cluster's own width.
    // The difference, spread over the added tasks, is the cost of a task:
    // planning it, shipping its fragment, running and streaming it.
    let probe = "SELECT count(*) FROM lineitem WHERE l_quantity > 0";
    let expected = simple_count(&client, probe).await?;
    let fitted = median_seconds(&client, probe, 1, 3).await?;
    let fanned = cluster.client().await?;
    fanned
        .batch_execute(&format!(
            "SET distributed.max_tasks_per_stage = {}; \
             SET distributed.file_scan_config_bytes_per_partition = 1",
            args.tasks
        ))
        .await?;
    let plan = simple_rows(&fanned, &format!("EXPLAIN {probe}")).await?;
    let last_task = format!("tasks={},", args.tasks);
    if !plan
        .iter()
        .flatten()
        .flatten()
        .any(|cell| cell.contains(&last_task))
    {
        bail!(
            "the fanned-out plan does not have {} tasks: {plan:?}",
            args.tasks
        );
    }
    if simple_count(&fanned, probe).await? != expected {
        bail!("the fanned-out query counted differently");
    }
    let wide = median_seconds(&fanned, probe, 1, 3).await?;
    report(
        &format!("query in {} tasks / the same in 2", args.tasks),
        wide / fitted,
        "x",
        "-",
    );
    report(
        "per-task scheduling overhead",
        (wide - fitted) / (args.tasks - 2) as f64 * 1e3,
        "ms/task",
        "<= 0.2 ms/task",
    );
    drop(fanned);

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

    // Streaming a large result: 4 columns, counted as the rows arrive. The
    // coordinator's peak is reset first (`clear_refs` 5), so the figure is the
    // streams' own and not the fanned-out planning's above.
    let reset_peak = || std::fs::write(format!("/proc/{}/clear_refs", cluster.pid()), "5");
    reset_peak().context("resetting the coordinator's peak memory")?;
    let (streams_start_rss, _) = memory_mib(cluster.pid()).context("coordinator memory")?;
    report(
        "coordinator resident memory before the streams",
        streams_start_rss,
        "MiB",
        "-",
    );
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
    reset_peak().context("resetting the coordinator's peak memory")?;
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
        let name = format!("coordinator peak memory during the {path} stream");
        report(&name, peak, "MiB", "flat (idle + a few batches)");
    }

    // Exchange throughput: a query that moves every lineitem row between the
    // executors (partial aggregation switched off, so the rows themselves are
    // shuffled by key to the final aggregation). Bytes are what the executors
    // wrote to their sockets meanwhile, less what the coordinator received. The
    // same query folded into one task (`distributed.max_tasks_per_stage = 1`)
    // does the same scan and aggregation with nothing on the network; the runs
    // alternate. Two rates: bytes over the whole query's time (a lower bound,
    // scan and aggregation included) and bytes over the time the exchange added.
    let shuffle = "SELECT count(*), sum(p), sum(e), sum(q) FROM (SELECT l_orderkey, l_linenumber, \
                   sum(l_extendedprice) AS e, sum(l_quantity) AS q, sum(l_partkey) AS p \
                   FROM lineitem GROUP BY l_orderkey, l_linenumber) AS t";
    let no_partial =
        "SET datafusion.execution.skip_partial_aggregation_probe_ratio_threshold = 0.0; \
                      SET datafusion.execution.skip_partial_aggregation_probe_rows_threshold = 1";
    let spread = cluster.client().await?;
    spread.batch_execute(no_partial).await?;
    let folded = cluster.client().await?;
    folded.batch_execute(no_partial).await?;
    folded
        .batch_execute("SET distributed.max_tasks_per_stage = 1")
        .await?;
    let plan = simple_rows(&spread, &format!("EXPLAIN {shuffle}")).await?;
    if !plan
        .iter()
        .flatten()
        .flatten()
        .any(|cell| cell.contains("NetworkShuffleExec"))
    {
        bail!("the exchange query has no shuffle between executors: {plan:?}");
    }
    let written = || -> u64 { pids.iter().filter_map(|p| written_bytes(*p as u32)).sum() };
    let received = || read_bytes(cluster.pid()).unwrap_or(0);
    let (mut spread_s, mut folded_s, mut crossed, mut folded_bytes) = (0.0, 0.0, 0u64, 0u64);
    for _ in 0..args.exchange_runs {
        for (client, seconds, bytes) in [
            (&spread, &mut spread_s, &mut crossed),
            (&folded, &mut folded_s, &mut folded_bytes),
        ] {
            let (w, r) = (written(), received());
            let t = Instant::now();
            let row = client.query_one(shuffle, &[]).await?;
            *seconds += t.elapsed().as_secs_f64();
            *bytes += (written() - w).saturating_sub(received() - r);
            let groups: i64 = row.get(0);
            if groups != expected {
                bail!("the exchange query counted {groups} groups, not {expected}");
            }
        }
    }
    let runs = args.exchange_runs as f64;
    report(
        "bytes exchanged between executors per query",
        crossed as f64 / runs / 1e6,
        "MB",
        "-",
    );
    report(
        "the same, folded into one task",
        folded_bytes as f64 / runs / 1e6,
        "MB",
        "-",
    );
    report(
        "exchange query, 2 executors / folded into one task",
        spread_s / folded_s,
        "x",
        "-",
    );
    report(
        "exchange throughput, lower bound (whole query)",
        crossed as f64 / spread_s / 1e9,
        "GB/s",
        ">= 1 GB/s",
    );
    let added = spread_s - folded_s;
    report(
        "exchange throughput (time the exchange added)",
        if added > 0.0 {
            crossed as f64 / added / 1e9
        } else {
            f64::INFINITY
        },
        "GB/s",
        ">= 1 GB/s",
    );
    drop((spread, folded));

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
