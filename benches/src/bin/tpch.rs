//! TPC-H through Flotilla (pgwire, coordinator + executors) beside single-process
//! DataFusion on the same files, in one invocation on one machine.
//!
//! `cargo run --release -p benches --bin tpch -- --sf 1 --runs 3`
//! prints one line per query (median seconds of each engine and their ratio), the
//! sums, and a JSON summary. `--quick` runs SF0.01 once, for CI smoke runs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use tests::cluster::{Cluster, ClusterOptions};

#[derive(Parser)]
struct Args {
    /// TPC-H scale factor.
    #[arg(long, default_value_t = 1.0)]
    sf: f64,
    /// Runs per query; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Executor processes.
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// Threads (target partitions) for single-process DataFusion and each process.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Only these queries (comma-separated numbers).
    #[arg(long)]
    only: Option<String>,
    /// SF0.01, one run: a smoke run for CI.
    #[arg(long)]
    quick: bool,
    /// Keep the generated data here between runs.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

const TABLES: [&str; 8] = [
    "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier",
];

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.sf = 0.01;
        args.runs = 1;
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tests::shared_data_dir().join("bench"));
    std::fs::create_dir_all(&data_dir)?;
    let wanted: Option<Vec<usize>> = args
        .only
        .as_ref()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect());

    let started = Instant::now();
    let cluster = Cluster::standalone(ClusterOptions {
        executors: args.executors,
        tpch: Some(args.sf),
        config: None,
        restart: false,
        data_dir: Some(data_dir.clone()),
        target_partitions: args.threads,
        password: None,
    })?;
    cluster
        .wait_executors(args.executors, Duration::from_secs(60))
        .await?;
    eprintln!("cluster ready in {:.2} s", started.elapsed().as_secs_f64());
    let client = cluster.client().await?;

    let tables = data_dir.join("tpch").join(format!("sf{}", args.sf));
    let single =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(args.threads));
    for table in TABLES {
        single
            .register_parquet(
                table,
                &format!("{}/", tables.join(table).display()),
                ParquetReadOptions::default(),
            )
            .await?;
    }

    let mut rows = Vec::new();
    for n in 1..=22usize {
        if wanted.as_ref().is_some_and(|w| !w.contains(&n)) {
            continue;
        }
        let path = tests::shared_dir()
            .join("tpch/queries")
            .join(format!("q{n:02}.sql"));
        let sql = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        let sql = sql.trim().trim_end_matches(';');
        let mut flotilla = Vec::new();
        let mut datafusion = Vec::new();
        for _ in 0..args.runs {
            let t = Instant::now();
            client.simple_query(sql).await?;
            flotilla.push(t.elapsed());
            let t = Instant::now();
            single.sql(sql).await?.collect().await?;
            datafusion.push(t.elapsed());
        }
        let (f, d) = (median(flotilla), median(datafusion));
        println!(
            "q{n:02}  flotilla {f:8.3} s  datafusion {d:8.3} s  ratio {:5.2}",
            f / d
        );
        rows.push((n, f, d));
    }
    let total_f: f64 = rows.iter().map(|r| r.1).sum();
    let total_d: f64 = rows.iter().map(|r| r.2).sum();
    println!(
        "sum   flotilla {total_f:8.3} s  datafusion {total_d:8.3} s  ratio {:5.2}",
        total_f / total_d
    );
    let json = serde_json::json!({
        "scale_factor": args.sf,
        "runs": args.runs,
        "executors": args.executors,
        "threads": args.threads,
        "queries": rows.iter().map(|(n, f, d)| serde_json::json!({
            "query": format!("q{n:02}"), "flotilla_s": f, "datafusion_s": d
        })).collect::<Vec<_>>(),
        "flotilla_total_s": total_f,
        "datafusion_total_s": total_d,
    });
    println!("{json}");
    Ok(())
}
