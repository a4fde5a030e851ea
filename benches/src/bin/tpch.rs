//! TPC-H through a Flotilla cluster (coordinator + executor processes) over the
//! Postgres wire protocol and over Arrow Flight SQL, beside single-process
//! DataFusion on the same files, interleaved in one invocation on one machine.
//!
//! `cargo run --release -p benches --bin tpch -- --sf 1 --runs 3` prints one line
//! per query (the median of each path and the ratios to DataFusion), the sums,
//! and writes `tpch-sf<SF>.json`, `.md` and `.png` (a bar chart) to `--out`.
//! Every result of every run is checked against the reference answers in
//! `../shared/tpch/answers` (or, at other scale factors, against DataFusion's):
//! a wrong answer fails the run, however fast. `--quick` is SF0.1, one run: the
//! CI smoke run, built with the test profile. Timings are reported, never asserted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use arrow_flight::sql::client::FlightSqlServiceClient;
use clap::Parser;
use datafusion::arrow::array::RecordBatch;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::TryStreamExt;
use tests::answers::{batch_rows, compare, read_answer, Rows};
use tests::cluster::{Cluster, ClusterOptions};
use tokio_postgres::SimpleQueryMessage;
use tonic::transport::Channel;

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
    /// SF0.1, one run: the smoke run CI makes.
    #[arg(long)]
    quick: bool,
    /// Memory pool of each executor in MiB (operators spill beyond it); unbounded
    /// when absent. The SF10 figure runs with 2048.
    #[arg(long)]
    executor_memory_mib: Option<usize>,
    /// A session setting for both Flotilla sessions, `name=value` (repeatable),
    /// e.g. `--set distributed.broadcast_joins=false`; `datafusion.*` settings
    /// apply to the single-process baseline as well.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    settings: Vec<String>,
    /// Keep the generated data here between runs.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where the JSON, Markdown and PNG results go.
    #[arg(long)]
    out: Option<PathBuf>,
}

const TABLES: [&str; 8] = [
    "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier",
];

/// The three ways a query runs, in the order they are interleaved.
const PATHS: [&str; 3] = ["pgwire", "flightsql", "datafusion"];

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

fn pg_rows(messages: &[SimpleQueryMessage]) -> Rows {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

async fn flight_query(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>> {
    let info = client.execute(sql.to_string(), None).await?;
    let mut batches = Vec::new();
    for endpoint in &info.endpoint {
        let ticket = endpoint
            .ticket
            .clone()
            .ok_or_else(|| anyhow!("endpoint without a ticket"))?;
        let stream = client.do_get(ticket).await?;
        batches.extend(stream.try_collect::<Vec<_>>().await?);
    }
    Ok(batches)
}

/// Per-query medians of the three paths, in seconds.
struct QueryTimes {
    query: String,
    seconds: [f64; 3],
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.sf = 0.1;
        args.runs = 1;
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tests::shared_data_dir().join("bench"));
    std::fs::create_dir_all(&data_dir)?;
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| tests::shared_data_dir().join("bench-results"));
    std::fs::create_dir_all(&out_dir)?;
    let wanted: Option<Vec<usize>> = args
        .only
        .as_ref()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect());

    let started = Instant::now();
    let cluster = Cluster::standalone(ClusterOptions {
        executors: args.executors,
        tpch: Some(args.sf),
        config: args
            .executor_memory_mib
            .map(|mib| format!("[executor]\nmemory_limit_bytes = {}\n", mib << 20)),
        restart: false,
        data_dir: Some(data_dir.clone()),
        target_partitions: args.threads,
        password: None,
        fault_injection: false,
    })?;
    cluster
        .wait_executors(args.executors, Duration::from_secs(60))
        .await?;
    eprintln!("cluster ready in {:.2} s", started.elapsed().as_secs_f64());
    let client = cluster.client().await?;
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", cluster.flight_port))?
        .connect()
        .await?;
    let mut flight = FlightSqlServiceClient::new(channel);
    // Under trust any name is taken; the token keeps one session for the run.
    flight.handshake("flotilla", "").await?;
    for setting in &args.settings {
        let (name, value) = setting
            .split_once('=')
            .with_context(|| format!("--set {setting}: expected NAME=VALUE"))?;
        let statement = format!("SET {} = {}", name.trim(), value.trim());
        client.simple_query(&statement).await?;
        flight.execute_update(statement, None).await?;
    }

    let tables = data_dir.join("tpch").join(format!("sf{}", args.sf));
    // The baseline plans with the same analyzer rule Flotilla adds, so both
    // compute `avg` of decimals to the reference answers' precision.
    // The baseline plans with Flotilla's session settings (the join thresholds
    // among them), `datafusion.*` settings given with `--set` on top.
    let mut baseline_config = sql::session::session_config(&sql::config::FlotillaConfig::default())
        .with_target_partitions(args.threads);
    for setting in &args.settings {
        if let Some((name, value)) = setting.split_once('=') {
            if name.trim().starts_with("datafusion.") {
                baseline_config
                    .options_mut()
                    .set(name.trim(), value.trim())
                    .with_context(|| format!("--set {setting}"))?;
            }
        }
    }
    let single = SessionContext::new_with_state(
        SessionStateBuilder::new()
            .with_config(baseline_config)
            .with_default_features()
            .with_analyzer_rule(Arc::new(sql::rules::WidenDecimalAvgRule))
            .build(),
    );
    for table in TABLES {
        single
            .register_parquet(
                table,
                &format!("{}/", tables.join(table).display()),
                ParquetReadOptions::default(),
            )
            .await?;
    }
    let answers_dir = tests::shared_dir()
        .join("tpch/answers")
        .join(format!("sf{}", args.sf));

    let mut results = Vec::new();
    let mut failures = Vec::new();
    for n in 1..=22usize {
        if wanted.as_ref().is_some_and(|w| !w.contains(&n)) {
            continue;
        }
        let name = format!("q{n:02}");
        let path = tests::shared_dir()
            .join("tpch/queries")
            .join(format!("{name}.sql"));
        let sql = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        let sql = sql.trim().trim_end_matches(';');
        let answer = answers_dir.join(format!("{name}.csv"));
        let reference = if answer.exists() {
            Some(read_answer(&answer)?.1)
        } else {
            None
        };
        let mut times: [Vec<Duration>; 3] = Default::default();
        for run in 0..args.runs {
            let t = Instant::now();
            let messages = client.simple_query(sql).await?;
            times[0].push(t.elapsed());
            let pg = pg_rows(&messages);

            let t = Instant::now();
            let batches = flight_query(&mut flight, sql).await?;
            times[1].push(t.elapsed());
            let fl = batch_rows(&batches)?;

            let t = Instant::now();
            let batches = single.sql(sql).await?.collect().await?;
            times[2].push(t.elapsed());
            let df = batch_rows(&batches)?;

            let expected = reference.as_ref().unwrap_or(&df);
            for (label, rows) in [(PATHS[0], &pg), (PATHS[1], &fl), (PATHS[2], &df)] {
                if let Err(e) = compare(expected, rows) {
                    failures.push(format!("{name} {label} run {}: {e}", run + 1));
                }
            }
        }
        let seconds = times.map(median);
        println!(
            "{name}  pgwire {:8.3} s  flightsql {:8.3} s  datafusion {:8.3} s  ratios {:5.2} {:5.2}",
            seconds[0],
            seconds[1],
            seconds[2],
            seconds[0] / seconds[2],
            seconds[1] / seconds[2],
        );
        results.push(QueryTimes {
            query: name,
            seconds,
        });
    }
    // Peak resident memory of each executor over the whole run.
    let executor_peaks_mib: Vec<f64> = cluster
        .executor_pids(&client)
        .await?
        .iter()
        .filter_map(|pid| tests::memory_mib(*pid as u32).map(|m| m.1))
        .collect();
    eprintln!("executor peak resident memory (MiB): {executor_peaks_mib:.0?}");
    let totals: [f64; 3] = [0, 1, 2].map(|i| results.iter().map(|r| r.seconds[i]).sum());
    println!(
        "sum   pgwire {:8.3} s  flightsql {:8.3} s  datafusion {:8.3} s  ratios {:5.2} {:5.2}",
        totals[0],
        totals[1],
        totals[2],
        totals[0] / totals[2],
        totals[1] / totals[2],
    );

    let file = |ext: &str| out_dir.join(format!("tpch-sf{}.{ext}", args.sf));
    let json = serde_json::json!({
        "scale_factor": args.sf,
        "runs": args.runs,
        "executors": args.executors,
        "threads": args.threads,
        "executor_memory_mib": args.executor_memory_mib,
        "settings": args.settings,
        "executor_peak_rss_mib": executor_peaks_mib,
        "checked_against": if answers_dir.exists() { "reference answers" } else { "single-process DataFusion" },
        "queries": results.iter().map(|r| serde_json::json!({
            "query": r.query,
            "pgwire_s": r.seconds[0],
            "flightsql_s": r.seconds[1],
            "datafusion_s": r.seconds[2],
        })).collect::<Vec<_>>(),
        "totals_s": { "pgwire": totals[0], "flightsql": totals[1], "datafusion": totals[2] },
        "ratios": { "pgwire": totals[0] / totals[2], "flightsql": totals[1] / totals[2] },
        "failures": failures,
    });
    std::fs::write(file("json"), serde_json::to_string_pretty(&json)?)?;
    std::fs::write(file("md"), markdown(&args, &results, &totals))?;
    match chart(&file("png"), &args, &results) {
        Ok(()) => {}
        Err(e) => eprintln!("no chart: {e:#}"),
    }
    println!("{json}");
    eprintln!(
        "results in {}/tpch-sf{}.{{json,md,png}}",
        out_dir.display(),
        args.sf
    );
    if !failures.is_empty() {
        bail!("{} wrong results:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}

fn markdown(args: &Args, results: &[QueryTimes], totals: &[f64; 3]) -> String {
    let mut md = format!(
        "TPC-H SF{} — coordinator + {} executors, {} threads each; medians of {} run(s), seconds\n\n\
         | query | pgwire | Flight SQL | DataFusion (1 process) | pgwire / DF | Flight SQL / DF |\n\
         |---|---:|---:|---:|---:|---:|\n",
        args.sf, args.executors, args.threads, args.runs
    );
    for r in results {
        md.push_str(&format!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} |\n",
            r.query,
            r.seconds[0],
            r.seconds[1],
            r.seconds[2],
            r.seconds[0] / r.seconds[2],
            r.seconds[1] / r.seconds[2]
        ));
    }
    md.push_str(&format!(
        "| **sum** | **{:.3}** | **{:.3}** | **{:.3}** | **{:.2}** | **{:.2}** |\n",
        totals[0],
        totals[1],
        totals[2],
        totals[0] / totals[2],
        totals[1] / totals[2]
    ));
    md
}

/// A grouped bar chart of the per-query medians.
fn chart(path: &Path, args: &Args, results: &[QueryTimes]) -> Result<()> {
    use plotters::prelude::*;

    let font = ["DejaVuSans.ttf", "dejavu/DejaVuSans.ttf"]
        .iter()
        .map(|f| Path::new("/usr/share/fonts/truetype").join(f))
        .find_map(|p| std::fs::read(p).ok())
        .context(
            "no DejaVu Sans font under /usr/share/fonts/truetype (Debian: fonts-dejavu-core)",
        )?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow!("the font does not load"))?;

    let root = BitMapBackend::new(path, (1400, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = results
        .iter()
        .flat_map(|r| r.seconds)
        .fold(0.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "TPC-H SF{}: Flotilla (coordinator + {} executors) vs single-process DataFusion, median seconds",
                args.sf, args.executors
            ),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..results.len() as f64, 0f64..top.max(1e-3))?;
    let names: Vec<String> = results.iter().map(|r| r.query.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .x_labels(results.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("seconds")
        .label_style(("sans-serif", 14))
        .draw()?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
    ];
    for (k, label) in [
        "Flotilla via pgwire",
        "Flotilla via Flight SQL",
        "DataFusion, one process",
    ]
    .iter()
    .enumerate()
    {
        let color = colors[k];
        chart
            .draw_series(results.iter().enumerate().map(|(i, r)| {
                let x0 = i as f64 + 0.1 + 0.27 * k as f64;
                Rectangle::new([(x0, 0.0), (x0 + 0.25, r.seconds[k])], color.filled())
            }))?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
