//! GPU stages against the CPU on the same executor: TPC-H Q1, Q6, Q3 and Q5
//! in one process (DataFusion's plan, as an executor runs its fragments),
//! once as planned and once through the GPU stage rule, interleaved, every
//! answer compared. Data movement (bytes and time copying) is reported apart
//! from kernel time.
//!
//!     cargo build --workspace --all-targets
//!     $CARGO_TARGET_DIR/debug/gpu --sf 1            # --sf 10, --runs 5, --mode auto
//!
//! Without a GPU it says so and stops, unless `--emulate` runs the stages in
//! the kernels' host emulation (to keep the harness working; its times say
//! nothing about GPUs). `--quick` is SF0.1, one run, emulated when no device.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use gpu::{GpuMode, GpuStageExec, GpuStageRule};
use tests::answers::{batch_rows, compare};

#[derive(Parser)]
struct Args {
    /// TPC-H scale factor.
    #[arg(long, default_value_t = 1.0)]
    sf: f64,
    /// Runs per query and side; the median counts.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// `force` (every supported stage on the GPU) or `auto` (the cost model).
    #[arg(long, default_value = "force")]
    mode: String,
    /// Run the stages in the host emulation when there is no GPU.
    #[arg(long)]
    emulate: bool,
    /// SF0.1, one run, emulated if there is no GPU.
    #[arg(long)]
    quick: bool,
    /// Partitions (CPU threads and GPU stages at once).
    #[arg(long, default_value_t = 2)]
    partitions: usize,
    /// Where TPC-H data is kept (generated on first use).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

const QUERIES: [usize; 4] = [1, 6, 3, 5];
const TABLES: [&str; 8] = [
    "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier",
];

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.sf = 0.1;
        args.runs = 1;
        args.emulate = true;
    }
    let mode: GpuMode = args.mode.parse().map_err(anyhow::Error::msg)?;
    let rule = match gpu::probe(None) {
        Ok(device) => {
            println!(
                "device: {} (compute capability {}.{}, {} MiB), calibration {:?}",
                device.info().name,
                device.info().compute_capability.0,
                device.info().compute_capability.1,
                device.info().memory_bytes >> 20,
                device.calibration()
            );
            GpuStageRule::for_probe(&Ok(device))
        }
        Err(reason) if args.emulate => {
            println!("no GPU ({reason}): the stages run in the host emulation");
            GpuStageRule::emulated()
        }
        Err(reason) => {
            println!("no GPU: {reason}. Nothing ran on a GPU (--emulate runs the host emulation).");
            return Ok(());
        }
    };
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tests::shared_data_dir().join("bench"));
    sql::tpch::ensure_dataset(&data_dir, args.sf)?;
    let tables = sql::tpch::dataset_dir(&data_dir, args.sf);
    let state = SessionStateBuilder::new()
        .with_config(SessionConfig::new().with_target_partitions(args.partitions))
        .with_default_features()
        .with_analyzer_rule(Arc::new(sql::rules::WidenDecimalAvgRule))
        .build();
    let ctx = SessionContext::new_with_state(state);
    for table in TABLES {
        let location = format!("{}/", tables.join(table).display());
        ctx.register_parquet(table, &location, ParquetReadOptions::default())
            .await?;
    }
    println!(
        "TPC-H SF{}, {} partitions, {} run(s), mode {mode}\n",
        args.sf, args.partitions, args.runs
    );
    println!(
        "| query | CPU s | GPU path s | CPU / GPU | stages on GPU | rows to GPU | MB in | MB out | copy ms | kernel ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut failed = false;
    for q in QUERIES {
        let path = tests::shared_dir()
            .join("tpch/queries")
            .join(format!("q{q:02}.sql"));
        let sql = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        let sql = sql.trim().trim_end_matches(';');
        let mut cpu_times = Vec::new();
        let mut gpu_times = Vec::new();
        let mut figures = StageFigures::default();
        for _ in 0..args.runs {
            let plan = ctx.sql(sql).await?.create_physical_plan().await?;
            let started = Instant::now();
            let cpu = collect(Arc::clone(&plan), ctx.task_ctx()).await?;
            cpu_times.push(started.elapsed());
            let plan = rule.rewrite(ctx.sql(sql).await?.create_physical_plan().await?, mode)?;
            let started = Instant::now();
            let on_gpu = collect(Arc::clone(&plan), ctx.task_ctx()).await?;
            gpu_times.push(started.elapsed());
            figures = StageFigures::of(&plan);
            if let Err(e) = compare(&batch_rows(&cpu)?, &batch_rows(&on_gpu)?) {
                println!("q{q:02}: the GPU path's answer differs: {e}");
                failed = true;
            }
        }
        let (cpu, on_gpu) = (median(&mut cpu_times), median(&mut gpu_times));
        println!(
            "| q{q:02} | {:.3} | {:.3} | {:.2} | {} of {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            cpu.as_secs_f64(),
            on_gpu.as_secs_f64(),
            cpu.as_secs_f64() / on_gpu.as_secs_f64().max(1e-9),
            figures.on_gpu,
            figures.stages,
            figures.rows,
            figures.bytes_in as f64 / 1e6,
            figures.bytes_out as f64 / 1e6,
            figures.copy.as_secs_f64() * 1e3,
            figures.kernel.as_secs_f64() * 1e3,
        );
        for reason in figures.reasons {
            println!("|   | {reason} |||||||||");
        }
    }
    if failed {
        bail!("a GPU answer differed from the CPU's");
    }
    Ok(())
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// What a plan's GPU stages did (their metrics, summed).
#[derive(Default)]
struct StageFigures {
    stages: usize,
    on_gpu: usize,
    rows: usize,
    bytes_in: usize,
    bytes_out: usize,
    copy: Duration,
    kernel: Duration,
    reasons: Vec<String>,
}

impl StageFigures {
    fn of(plan: &Arc<dyn ExecutionPlan>) -> Self {
        let mut figures = Self::default();
        figures.visit(plan);
        figures
    }

    fn visit(&mut self, plan: &Arc<dyn ExecutionPlan>) {
        if let Some(stage) = plan.downcast_ref::<GpuStageExec>() {
            self.stages += 1;
            if stage.decision().on_gpu {
                self.on_gpu += 1;
            } else {
                self.reasons.push(format!(
                    "{}: CPU, {}",
                    stage.summary(),
                    stage.decision().reason
                ));
            }
            if let Some(metrics) = plan.metrics() {
                for metric in metrics.iter() {
                    let value = metric.value();
                    let n = value.as_usize();
                    match value.name() {
                        "gpu_rows" => self.rows += n,
                        "gpu_bytes_in" => self.bytes_in += n,
                        "gpu_bytes_out" => self.bytes_out += n,
                        "gpu_copy_time" => self.copy += Duration::from_nanos(n as u64),
                        "gpu_kernel_time" => self.kernel += Duration::from_nanos(n as u64),
                        _ => {}
                    }
                }
            }
        }
        for child in plan.children() {
            self.visit(child);
        }
    }
}
