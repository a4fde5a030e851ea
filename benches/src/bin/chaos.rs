//! The chaos scenarios of `../shared/docs/targets.md`'s reliability table at
//! full size (`tests::chaos::Scale::full`: 20 repeats, a 256 MiB pool at
//! TPC-H SF10, a 60 s slow client), each figure printed beside its target.
//! The same code runs scaled down in the test suite (`tests/integration/chaos.rs`).
//!
//! `cargo build --workspace --all-targets && target/debug/chaos` runs them all;
//! `--only kill_one_executor,cancellation` some; `--quick` at CI size. Writes
//! `chaos.json` to `--out`. A scenario whose pass criterion fails is reported
//! and makes the run fail.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Parser;
use tests::chaos::{self, Report, Scale};

#[derive(Parser)]
struct Args {
    /// Only these scenarios (comma-separated names).
    #[arg(long)]
    only: Option<String>,
    /// CI size instead of full size.
    #[arg(long)]
    quick: bool,
    /// Repeats of each kill and cancel (default: 20, or 5 with --quick).
    #[arg(long)]
    repeats: Option<usize>,
    /// Where `chaos.json` goes.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The targets, as the reliability table states them.
const TARGETS: [(&str, &str); 10] = [
    (
        "kill_one_executor",
        "1: correct, no client-visible error, time <= 2x a clean run + detection time",
    ),
    (
        "kill_all_executors",
        "2: within 60 s an error naming executor loss or a correct answer; never hangs",
    ),
    (
        "restart_reregisters",
        "3: re-registered within detection time + 10 s; the dead one never scheduled",
    ),
    (
        "transient_and_permanent_failures",
        "4: once: succeeds after 1 retry; always: fails after the retry budget",
    ),
    (
        "user_errors_are_not_retried",
        "5: no retry; executors stay up; SQLSTATE; connection usable",
    ),
    (
        "exchange_delayed_or_dropped",
        "6: below timeout correct, no failure; above: classified, recovered, correct",
    ),
    (
        "spill_under_a_small_pool",
        "7: 256 MiB pool, Q18/Q21 SF10 correct via spill, peak RSS <= limit x 1.1 + 64 MiB",
    ),
    (
        "admission_limits",
        "8: never more than 4 running; the overflow refused at once with 53300",
    ),
    (
        "cancellation",
        "9: 57014 / CANCELLED within 1 s (p99); executors idle within 2 s",
    ),
    ("slow_client", "10: memory flat, first row < 2 s"),
];

async fn run(name: &str, scale: &Scale) -> Result<Report> {
    match name {
        "kill_one_executor" => chaos::kill_one_executor(scale).await,
        "kill_all_executors" => chaos::kill_all_executors(scale).await,
        "restart_reregisters" => chaos::restart_reregisters(scale).await,
        "transient_and_permanent_failures" => chaos::transient_and_permanent_failures(scale).await,
        "user_errors_are_not_retried" => chaos::user_errors_are_not_retried(scale).await,
        "exchange_delayed_or_dropped" => chaos::exchange_delayed_or_dropped(scale).await,
        "spill_under_a_small_pool" => chaos::spill_under_a_small_pool(scale).await,
        "admission_limits" => chaos::admission_limits(scale).await,
        "cancellation" => chaos::cancellation(scale).await,
        "slow_client" => chaos::slow_client(scale).await,
        other => bail!("no scenario named {other}"),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut scale = if args.quick {
        Scale::ci()
    } else {
        Scale::full()
    };
    if let Some(repeats) = args.repeats {
        scale.repeats = repeats;
    }
    let wanted: Option<Vec<String>> = args
        .only
        .as_ref()
        .map(|s| s.split(',').map(|n| n.trim().to_string()).collect());
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for (name, target) in TARGETS {
        if wanted
            .as_ref()
            .is_some_and(|w| !w.iter().any(|n| n == name))
        {
            continue;
        }
        println!("== {name}\n   target {target}");
        let started = Instant::now();
        let outcome = run(name, &scale).await;
        let seconds = started.elapsed().as_secs_f64();
        match outcome {
            Ok(report) => {
                for figure in &report.figures {
                    println!(
                        "   {:<70} {:>10.3} {}",
                        figure.name, figure.value, figure.unit
                    );
                }
                println!("   passed in {seconds:.1} s");
                results.push(serde_json::json!({
                    "scenario": name,
                    "target": target,
                    "passed": true,
                    "seconds": seconds,
                    "figures": report.figures.iter().map(|f| serde_json::json!({
                        "name": f.name, "value": f.value, "unit": f.unit,
                    })).collect::<Vec<_>>(),
                }));
            }
            Err(error) => {
                println!("   FAILED after {seconds:.1} s: {error:#}");
                failures.push(name);
                results.push(serde_json::json!({
                    "scenario": name,
                    "target": target,
                    "passed": false,
                    "seconds": seconds,
                    "error": format!("{error:#}"),
                }));
            }
        }
    }
    let out = args
        .out
        .unwrap_or_else(|| tests::shared_data_dir().join("bench-results"));
    std::fs::create_dir_all(&out)?;
    let summary = serde_json::json!({
        "scale": {
            "sf": scale.sf, "repeats": scale.repeats, "spill_sf": scale.spill_sf,
            "pool_mib": scale.pool_mib, "slow_read_s": scale.slow_read.as_secs_f64(),
        },
        "scenarios": results,
    });
    std::fs::write(
        out.join("chaos.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    eprintln!("results in {}", out.join("chaos.json").display());
    if !failures.is_empty() {
        bail!(
            "{} scenario(s) failed: {}",
            failures.len(),
            failures.join(", ")
        );
    }
    Ok(())
}
