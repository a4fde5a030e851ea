//! GPU stages on any machine (`gpu`): every kernel compiles through NVRTC
//! for sm_80 and sm_90 (NVRTC must be installed: `tests/run.sh` installs the
//! `nvidia-cuda-nvrtc-cu12` wheel; without it these tests fail); no driver and
//! a stub driver reporting no device give a clean "no GPU"; the kernels'
//! CUDA source, run on the host through the emulation header, gives
//! DataFusion's answers on TPC-H data; the planner rule's decisions with a
//! device capability injected; TPC-H through a cluster with `flotilla.gpu =
//! force`, on the emulated device and on no device. Where a real device
//! exists, the same queries run on it against the CPU.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use datafusion::arrow::array::{
    Array, Decimal128Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::physical_plan::{collect, displayable, ExecutionPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use gpu::{Calibration, Capability, GpuMode, GpuStageExec, GpuStageRule};
use tests::answers::{batch_rows, compare, read_answer, Rows};
use tests::cluster::{simple_rows, Cluster, ClusterOptions};

fn query_text(n: usize) -> Result<String> {
    tests::chaos::tpch_query(n)
}

fn tpch_dir(sf: f64) -> Result<PathBuf> {
    let data = tests::shared_data_dir();
    sql::tpch::ensure_dataset(&data, sf)?;
    Ok(sql::tpch::dataset_dir(&data, sf))
}

/// Single-process DataFusion over TPC-H, with Flotilla's planning rules.
async fn tpch_context(sf: f64) -> Result<SessionContext> {
    tests::chaos::reference_context(&tpch_dir(sf)?).await
}

/// The query's plan through `rule` (`None`: the plan as DataFusion made it).
async fn plan_of(
    ctx: &SessionContext,
    sql: &str,
    rule: Option<(&GpuStageRule, GpuMode)>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let plan = ctx.sql(sql).await?.create_physical_plan().await?;
    Ok(match rule {
        Some((rule, mode)) => rule.rewrite(plan, mode)?,
        None => plan,
    })
}

async fn run(
    ctx: &SessionContext,
    sql: &str,
    rule: Option<(&GpuStageRule, GpuMode)>,
) -> Result<(Vec<RecordBatch>, Arc<dyn ExecutionPlan>)> {
    let plan = plan_of(ctx, sql, rule).await?;
    let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await?;
    Ok((batches, plan))
}

/// The GPU stages of a plan: (what, on the GPU, why).
fn stages(plan: &Arc<dyn ExecutionPlan>) -> Vec<(String, bool, String)> {
    let mut out = Vec::new();
    if let Some(stage) = plan.downcast_ref::<GpuStageExec>() {
        out.push((
            stage.summary(),
            stage.decision().on_gpu,
            stage.decision().reason.clone(),
        ));
    }
    for child in plan.children() {
        out.extend(stages(child));
    }
    out
}

/// A metric of the plan's GPU stages, summed.
fn stage_metric(plan: &Arc<dyn ExecutionPlan>, name: &str) -> usize {
    let mut total = 0;
    if plan.downcast_ref::<GpuStageExec>().is_some() {
        if let Some(metrics) = plan.metrics() {
            total += metrics
                .iter()
                .filter(|m| m.value().name() == name)
                .map(|m| m.value().as_usize())
                .sum::<usize>();
        }
    }
    total
        + plan
            .children()
            .iter()
            .map(|c| stage_metric(c, name))
            .sum::<usize>()
}

/// Runs `sql` on the CPU and through `rule`, and checks the answers agree
/// (floats within a tolerance, everything else exactly, nulls included) and
/// that a stage ran on the device without falling back.
async fn differential(ctx: &SessionContext, sql: &str, rule: &GpuStageRule) -> Result<Rows> {
    let (cpu, _) = run(ctx, sql, None).await?;
    let (gpu, plan) = run(ctx, sql, Some((rule, GpuMode::Force))).await?;
    let on_gpu = stages(&plan).iter().filter(|s| s.1).count();
    ensure!(
        on_gpu > 0,
        "no stage ran on the device:\n{}",
        displayable(plan.as_ref()).indent(true)
    );
    ensure!(
        stage_metric(&plan, "gpu_fallbacks_to_cpu") == 0,
        "a stage fell back to the CPU"
    );
    // (Unless the files' statistics pruned every row away.)
    ensure!(
        stage_metric(&plan, "gpu_rows") > 0 || sql.contains("> 1000"),
        "the device saw no rows: {sql}"
    );
    let (cpu, gpu) = (batch_rows(&cpu)?, batch_rows(&gpu)?);
    compare(&sorted(cpu.clone()), &sorted(gpu))
        .with_context(|| format!("GPU against CPU: {sql}"))?;
    Ok(cpu)
}

/// `rows` are TPC-H query `q`'s reference answer at SF0.1.
fn matches_reference(q: usize, rows: &Rows) -> Result<()> {
    let (_, expected) = read_answer(
        &tests::shared_dir()
            .join("tpch/answers/sf0.1")
            .join(format!("q{q:02}.csv")),
    )?;
    compare(&expected, rows).with_context(|| format!("q{q:02} against the reference"))
}

fn sorted(mut rows: Rows) -> Rows {
    rows.sort();
    rows
}

#[test]
fn every_kernel_compiles_through_nvrtc_for_sm80_and_sm90() -> Result<()> {
    let mut figures = String::new();
    for arch in ["compute_80", "compute_90"] {
        let build = gpu::nvrtc::compile(arch).with_context(|| format!("PTX for {arch}"))?;
        let ptx = String::from_utf8_lossy(&build.image);
        for kernel in gpu::nvrtc::KERNELS {
            ensure!(
                ptx.contains(&format!(".entry {kernel}")),
                "{arch}: no {kernel} in the PTX"
            );
        }
        figures.push_str(&format!(
            "{arch}: PTX {} bytes in {:?}\n",
            build.image.len(),
            build.elapsed
        ));
    }
    for arch in ["sm_80", "sm_90"] {
        let build = gpu::nvrtc::compile(arch).with_context(|| format!("cubin for {arch}"))?;
        ensure!(build.image.starts_with(b"\x7fELF"), "{arch}: not a cubin");
        for kernel in gpu::nvrtc::KERNELS {
            let f = build
                .functions
                .iter()
                .find(|f| f.name == kernel)
                .with_context(|| {
                    format!("{arch}: no ptxas figures for {kernel}:\n{}", build.log)
                })?;
            // Budgets: registers for full occupancy of 256-thread blocks at
            // 4 blocks per SM, and no spills.
            ensure!(
                f.registers > 0 && f.registers <= 64,
                "{arch} {kernel}: {} registers",
                f.registers
            );
            ensure!(
                f.spill_store_bytes == 0 && f.spill_load_bytes == 0,
                "{arch} {kernel}: spills {f:?}"
            );
            figures.push_str(&format!(
                "{arch} {kernel}: {} registers, {} bytes stack frame, {} bytes spill stores, {} bytes spill loads\n",
                f.registers, f.stack_frame_bytes, f.spill_store_bytes, f.spill_load_bytes
            ));
        }
    }
    // A broken kernel is an error with the compiler's log, not a panic.
    let error = gpu::nvrtc::compile_source("extern \"C\" __global__ void k() { nope; }", "sm_80")
        .expect_err("a broken kernel compiled");
    ensure!(error.to_string().contains("nope"), "{error}");
    println!("{figures}");
    let out = tests::shared_data_dir().join("gpu-kernel-figures.txt");
    std::fs::write(&out, &figures)?;
    Ok(())
}

/// The `flotilla` binary's `gpu` report, with `LD_LIBRARY_PATH` set to `libs`.
fn gpu_report(libs: Option<&std::path::Path>) -> Result<String> {
    let mut command = std::process::Command::new(tests::flotilla_bin());
    command.arg("gpu");
    if let Some(dir) = libs {
        command.env("LD_LIBRARY_PATH", dir);
    }
    let output = command.output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success() && !stderr.contains("panicked"),
        "flotilla gpu failed: {:?}\n{stderr}",
        output.status
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

#[test]
fn no_driver_means_no_gpu_and_no_panic() -> Result<()> {
    match gpu::probe(None) {
        Ok(device) => {
            println!(
                "a GPU is present ({}): the no-driver path is checked on machines without one",
                device.info().name
            );
            return Ok(());
        }
        Err(error) => ensure!(
            error.kind() == gpu::ErrorKind::Unavailable,
            "not an unavailable device: {error}"
        ),
    }
    ensure!(gpu::detect().is_none());
    let report = gpu_report(None)?;
    ensure!(report.starts_with("no GPU: "), "{report}");
    Ok(())
}

/// A driver library that loads but reports no device (`cuInit` returns
/// CUDA_ERROR_NO_DEVICE), as on a machine whose GPU is missing or hidden.
#[test]
fn a_driver_without_devices_is_a_clean_no_gpu() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("stub.c");
    std::fs::write(
        &source,
        r#"
typedef int CUresult;
CUresult cuInit(unsigned flags) { (void)flags; return 100; }
CUresult cuDeviceGetCount(int *count) { *count = 0; return 0; }
CUresult cuDeviceGet(int *device, int ordinal) { (void)device; (void)ordinal; return 100; }
CUresult cuGetErrorString(CUresult e, const char **s) { (void)e; *s = "no CUDA-capable device is detected"; return 0; }
CUresult cuGetErrorName(CUresult e, const char **s) { (void)e; *s = "CUDA_ERROR_NO_DEVICE"; return 0; }
"#,
    )?;
    let library = dir.path().join("libcuda.so.1");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(&library)
        .arg(&source)
        .status()?;
    ensure!(status.success(), "the stub driver did not build");
    std::os::unix::fs::symlink(&library, dir.path().join("libcuda.so"))?;
    let report = gpu_report(Some(dir.path()))?;
    ensure!(
        report.starts_with("no GPU: no usable GPU") && report.contains("CUDA_ERROR_NO_DEVICE"),
        "{report}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_kernels_give_datafusions_tpch_answers() -> Result<()> {
    let ctx = tpch_context(0.1).await?;
    let rule = GpuStageRule::emulated();
    if std::env::var_os("FLOTILLA_GPU_DEBUG").is_some() {
        for q in [1, 6] {
            let plan = plan_of(&ctx, &query_text(q)?, None).await?;
            fn walk(p: &Arc<dyn ExecutionPlan>) {
                if let Some(a) =
                    p.downcast_ref::<datafusion::physical_plan::aggregates::AggregateExec>()
                {
                    println!("{:?}", gpu::AggregateStage::plan(a).err());
                }
                for c in p.children() {
                    walk(c)
                }
            }
            walk(&plan);
        }
    }
    for q in [1, 6] {
        let sql = query_text(q)?;
        let rows = differential(&ctx, &sql, &rule).await?;
        matches_reference(q, &rows)?;
    }
    // Many groups and small chunks: tables fill, overflow, grow and are read
    // out many times over.
    let small_chunks = GpuStageRule::emulated().with_chunk_rows(20_000);
    for sql in [
        "select l_orderkey, sum(l_quantity), count(*), avg(l_extendedprice), count(l_comment) \
         from lineitem where l_shipdate > date '1995-01-01' group by l_orderkey",
        "select l_suppkey, l_linenumber, sum(l_extendedprice * (1 - l_discount)) \
         from lineitem group by l_suppkey, l_linenumber",
        "select o_orderpriority, o_orderstatus, count(*), sum(o_totalprice), avg(o_custkey) \
         from orders where o_orderdate between date '1994-01-01' and date '1996-12-31' \
         group by o_orderpriority, o_orderstatus",
        "select sum(cast(l_discount as double) * l_quantity), avg(cast(l_tax as double)), count(*) \
         from lineitem where l_quantity < 10 or l_discount >= 0.09",
        "select count(*), sum(l_quantity) from lineitem where l_quantity > 1000",
    ] {
        differential(&ctx, sql, &small_chunks).await?;
    }
    // min() is not a GPU aggregate: that aggregate stays on the CPU.
    let plan = plan_of(
        &ctx,
        "select l_linenumber, min(l_tax) from lineitem group by l_linenumber",
        Some((&rule, GpuMode::Force)),
    )
    .await?;
    let found = stages(&plan);
    ensure!(
        found.len() == 1 && !found[0].1 && found[0].2.contains("aggregate function min"),
        "min() on the GPU: {found:?}"
    );
    Ok(())
}

/// Nulls in keys, values and filters; strings as keys; the CPU's overflow
/// error reached through the fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_kernels_treat_nulls_and_overflow_as_datafusion() -> Result<()> {
    let rows = 200_000usize;
    let pick = |i: usize, m: usize| (i.wrapping_mul(2654435761) >> 7) % m;
    let k: Int32Array = (0..rows)
        .map(|i| (pick(i, 7) != 0).then(|| pick(i, 50) as i32))
        .collect();
    let v: Int64Array = (0..rows)
        .map(|i| (pick(i, 5) != 0).then(|| pick(i, 100_000) as i64 - 50_000))
        .collect();
    let d = (0..rows)
        .map(|i| (pick(i, 3) != 0).then(|| pick(i, 1_000_000) as i128))
        .collect::<Decimal128Array>()
        .with_precision_and_scale(15, 2)?;
    let f: Float64Array = (0..rows)
        .map(|i| (pick(i, 4) != 0).then(|| pick(i, 1000) as f64 / 7.0))
        .collect();
    let s: StringArray = (0..rows)
        .map(|i| (pick(i, 6) != 0).then(|| format!("name-{}", pick(i, 20))))
        .collect();
    let big: Int64Array = (0..rows)
        .map(|i| Some((i % 1000) as i64 * 4_000_000_000_000_000))
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int32, true),
        Field::new("v", DataType::Int64, true),
        Field::new("d", DataType::Decimal128(15, 2), true),
        Field::new("f", DataType::Float64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("big", DataType::Int64, true),
    ]));
    let columns: Vec<Arc<dyn Array>> = vec![
        Arc::new(k),
        Arc::new(v),
        Arc::new(d),
        Arc::new(f),
        Arc::new(s),
        Arc::new(big),
    ];
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    let batches: Vec<RecordBatch> = (0..rows)
        .step_by(8192)
        .map(|at| batch.slice(at, 8192.min(rows - at)))
        .collect();
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])?;
    ctx.register_table("t", Arc::new(table))?;
    let rule = GpuStageRule::emulated().with_chunk_rows(65_536);
    for sql in [
        "select k, count(*), count(v), sum(v), avg(f), sum(d), avg(d) from t group by k",
        "select s, k, sum(v), count(f) from t where v is not null or f > 50 group by s, k",
        "select count(*), sum(v), sum(d), avg(f) from t where k is null",
        "select k, sum(v * 3 - 7), sum(d * 2), sum(f * f) from t where not (k > 20) group by k",
        "select count(*), sum(v), avg(d) from t where v > 1000000",
    ] {
        differential(&ctx, sql, &rule).await?;
    }
    // Int64 products out of range wrap around, as DataFusion's do.
    differential(
        &ctx,
        "select k, sum(big * 4), count(*) from t group by k",
        &rule,
    )
    .await?;
    // A cast out of range is DataFusion's error either way: the device's
    // flag sends the stage back to the CPU, which reports it.
    let sql = "select k, sum(cast(big as int)) from t group by k";
    let cpu = run(&ctx, sql, None)
        .await
        .err()
        .context("the CPU did not overflow")?;
    let gpu = run(&ctx, sql, Some((&rule, GpuMode::Force)))
        .await
        .err()
        .context("the GPU path did not overflow")?;
    // (Which row fails first depends on the order partitions run in.)
    let kind = |e: &anyhow::Error| e.to_string().contains("to type Int32");
    ensure!(
        kind(&gpu) && kind(&cpu),
        "not the CPU's error: {gpu} (CPU: {cpu})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_kernels_pair_what_datafusion_joins() -> Result<()> {
    // Duplicates and nulls on both sides.
    let build = Int64Array::from(vec![Some(1), Some(2), Some(2), None, Some(5)]);
    let probe = Int64Array::from(vec![Some(2), None, Some(5), Some(7), Some(1), Some(2)]);
    let (p, b) = gpu::emulated_join_pairs(&build, &probe)?;
    let mut pairs: Vec<(i32, i32)> = p.into_iter().zip(b).collect();
    pairs.sort_unstable();
    ensure!(
        pairs == vec![(0, 1), (0, 2), (2, 4), (4, 0), (5, 1), (5, 2)],
        "{pairs:?}"
    );
    // Every lineitem with its order, as DataFusion's join counts them.
    let ctx = tpch_context(0.1).await?;
    let column = |sql: &'static str| {
        let ctx = ctx.clone();
        async move {
            let batches = ctx.sql(sql).await?.collect().await?;
            let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(0).as_ref()).collect();
            anyhow::Ok(datafusion::arrow::compute::concat(&arrays)?)
        }
    };
    let orders = column("select o_orderkey from orders").await?;
    let lineitem = column("select l_orderkey from lineitem").await?;
    let (p, b) = gpu::emulated_join_pairs(orders.as_ref(), lineitem.as_ref())?;
    let expected = simple_count(
        &ctx,
        "select count(*) from orders join lineitem on o_orderkey = l_orderkey",
    )
    .await?;
    ensure!(
        p.len() == expected,
        "{} pairs, DataFusion joins {expected}",
        p.len()
    );
    let keys = |a: &dyn Array| {
        a.as_any()
            .downcast_ref::<Int64Array>()
            .map(|x| x.values().to_vec())
            .context("an Int64 key")
    };
    let (o, l) = (keys(orders.as_ref())?, keys(lineitem.as_ref())?);
    ensure!(
        p.iter()
            .zip(&b)
            .all(|(&p, &b)| l[p as usize] == o[b as usize]),
        "a pair with different keys"
    );
    Ok(())
}

/// Joins feeding aggregates: the join kernels pair the rows and the
/// aggregate kernel folds the pairs, on TPC-H queries and on nulls,
/// duplicate keys and string groups of the build side; a device failure in
/// the middle of a stage leaves the answer as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_join_stages_give_datafusions_answers() -> Result<()> {
    let ctx = tpch_context(0.1).await?;
    let rule = GpuStageRule::emulated();
    let joined = |plan: &Arc<dyn ExecutionPlan>| {
        stages(plan)
            .into_iter()
            .filter(|s| s.1 && s.0.starts_with("inner hash join"))
            .count()
    };
    for q in [3, 5] {
        let sql = query_text(q)?;
        let plan = plan_of(&ctx, &sql, Some((&rule, GpuMode::Force))).await?;
        ensure!(
            joined(&plan) > 0,
            "q{q:02}: no join stage on the device: {:?}",
            stages(&plan)
        );
        let rows = differential(&ctx, &sql, &rule).await?;
        matches_reference(q, &rows)?;
    }
    let small_chunks = GpuStageRule::emulated().with_chunk_rows(20_000);
    for sql in [
        "select o_orderpriority, count(*), sum(l_quantity), avg(l_discount) \
         from orders join lineitem on o_orderkey = l_orderkey \
         where l_shipdate > date '1995-01-01' group by o_orderpriority",
        "select l_orderkey, o_orderdate, sum(l_extendedprice * (1 - l_discount)), count(*) \
         from orders join lineitem on l_orderkey = o_orderkey \
         where o_orderdate < date '1995-03-15' group by l_orderkey, o_orderdate",
        "select count(*), sum(ps_supplycost * ps_availqty) \
         from partsupp join supplier on ps_suppkey = s_suppkey where s_acctbal > 0",
    ] {
        let plan = plan_of(&ctx, sql, Some((&small_chunks, GpuMode::Force))).await?;
        ensure!(
            joined(&plan) > 0,
            "{sql}: no join stage: {:?}",
            stages(&plan)
        );
        differential(&ctx, sql, &small_chunks).await?;
    }

    // Nulls and duplicates among the keys of both sides; the build side's
    // strings as group keys.
    let rows = 150_000usize;
    let pick = |i: usize, m: usize| (i.wrapping_mul(2654435761) >> 7) % m;
    let build_rows = 3_000usize;
    let bk: Int64Array = (0..build_rows)
        .map(|i| (pick(i, 11) != 0).then(|| pick(i, 2_000) as i64))
        .collect();
    let bs: StringArray = (0..build_rows)
        .map(|i| (pick(i, 9) != 0).then(|| format!("group-{}", pick(i, 13))))
        .collect();
    let bv: Int32Array = (0..build_rows).map(|i| Some(pick(i, 100) as i32)).collect();
    let pk: Int64Array = (0..rows)
        .map(|i| (pick(i + 7, 13) != 0).then(|| pick(i + 3, 2_500) as i64))
        .collect();
    let pv: Float64Array = (0..rows)
        .map(|i| (pick(i, 5) != 0).then(|| pick(i, 1000) as f64 / 8.0))
        .collect();
    let pd = (0..rows)
        .map(|i| Some(pick(i, 100_000) as i128))
        .collect::<Decimal128Array>()
        .with_precision_and_scale(15, 2)?;
    let build_schema = Arc::new(Schema::new(vec![
        Field::new("bk", DataType::Int64, true),
        Field::new("bs", DataType::Utf8, true),
        Field::new("bv", DataType::Int32, true),
    ]));
    let probe_schema = Arc::new(Schema::new(vec![
        Field::new("pk", DataType::Int64, true),
        Field::new("pv", DataType::Float64, true),
        Field::new("pd", DataType::Decimal128(15, 2), true),
    ]));
    let build = RecordBatch::try_new(
        Arc::clone(&build_schema),
        vec![Arc::new(bk), Arc::new(bs), Arc::new(bv)],
    )?;
    let probe = RecordBatch::try_new(
        Arc::clone(&probe_schema),
        vec![Arc::new(pk), Arc::new(pv), Arc::new(pd)],
    )?;
    let split = |batch: &RecordBatch| -> Vec<Vec<RecordBatch>> {
        let half = batch.num_rows() / 2;
        [(0, half), (half, batch.num_rows() - half)]
            .iter()
            .map(|&(at, len)| {
                (at..at + len)
                    .step_by(4096)
                    .map(|s| batch.slice(s, 4096.min(at + len - s)))
                    .collect()
            })
            .collect()
    };
    // Both of DataFusion's join modes: the build side collected once for
    // all partitions (the small build side's default), and hash-partitioned
    // on both sides.
    for partitioned in [false, true] {
        let mut config = SessionConfig::new().with_target_partitions(2);
        if partitioned {
            let optimizer = &mut config.options_mut().optimizer;
            optimizer.hash_join_single_partition_threshold = 0;
            optimizer.hash_join_single_partition_threshold_rows = 0;
        }
        let ctx = SessionContext::new_with_config(config);
        for (name, schema, rows) in [("b", &build_schema, &build), ("p", &probe_schema, &probe)] {
            let table = datafusion::datasource::MemTable::try_new(Arc::clone(schema), split(rows))?;
            ctx.register_table(name, Arc::new(table))?;
        }
        joins_on_memory_tables(&ctx, joined, partitioned).await?;
    }
    // The build side counts in the memory pool, as DataFusion's own join's
    // does: a pool too small for it fails the query the same way.
    let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_memory_limit(32 * 1024, 1.0)
        .build_arc()?;
    let ctx =
        SessionContext::new_with_config_rt(SessionConfig::new().with_target_partitions(2), runtime);
    for (name, schema, batch) in [("b", &build_schema, &build), ("p", &probe_schema, &probe)] {
        ctx.register_table(
            name,
            Arc::new(datafusion::datasource::MemTable::try_new(
                Arc::clone(schema),
                split(batch),
            )?),
        )?;
    }
    let sql = "select bs, count(*), sum(pv) from b join p on bk = pk group by bs";
    let rule = GpuStageRule::emulated();
    let plan = plan_of(&ctx, sql, Some((&rule, GpuMode::Force))).await?;
    ensure!(joined(&plan) > 0, "no join stage: {:?}", stages(&plan));
    for (path, result) in [
        ("CPU", run(&ctx, sql, None).await),
        ("GPU", run(&ctx, sql, Some((&rule, GpuMode::Force))).await),
    ] {
        let error = result
            .err()
            .with_context(|| format!("{path}: ran in a 32 KiB pool"))?;
        ensure!(
            error.to_string().contains("Resources exhausted"),
            "{path}: {error}"
        );
    }
    Ok(())
}

/// The join stages' checks over the tables `b` (build) and `p` (probe).
async fn joins_on_memory_tables(
    ctx: &SessionContext,
    joined: impl Fn(&Arc<dyn ExecutionPlan>) -> usize,
    partitioned: bool,
) -> Result<()> {
    let mode = if partitioned {
        "mode=Partitioned"
    } else {
        "mode=CollectLeft"
    };
    let rule = GpuStageRule::emulated().with_chunk_rows(16_384);
    let queries = [
        "select bs, count(*), count(pv), sum(pv), sum(pd), avg(pd), sum(bv) from b join p on bk = pk group by bs",
        // (Grouped by the join key, a partitioned join's output is already
        // partitioned by the group: DataFusion aggregates it in one step.)
        if partitioned {
            "select bv, count(*), sum(pv), sum(bv * 2) from p join b on pk = bk where pv > 10 or bv < 50 group by bv"
        } else {
            "select pk, count(*), sum(bv * 2) from p join b on pk = bk where pv > 10 or bv < 50 group by pk"
        },
        "select count(*), sum(pd), avg(pv) from b join p on bk = pk where bs is null",
    ];
    for sql in queries {
        let plan = plan_of(ctx, sql, Some((&rule, GpuMode::Force))).await?;
        let text = displayable(plan.as_ref()).indent(true).to_string();
        ensure!(text.contains(mode), "{sql}: not {mode}:\n{text}");
        ensure!(
            joined(&plan) > 0,
            "{sql}: no join stage: {:?}",
            stages(&plan)
        );
        differential(ctx, sql, &rule).await?;
    }
    // Outer joins stay on the CPU, and say so.
    let plan = plan_of(
        ctx,
        "select bs, count(pv) from b left join p on bk = pk group by bs",
        Some((&rule, GpuMode::Force)),
    )
    .await?;
    let found = stages(&plan);
    ensure!(
        found.iter().all(|s| !s.1) && found.iter().any(|s| s.2.contains("Left join")),
        "a left join on the GPU: {found:?}"
    );
    // The device fails after its third launch of each partition: what it
    // folded before stays, the CPU takes the rest, and the answer is the
    // same.
    for rule in [
        GpuStageRule::emulated()
            .with_chunk_rows(16_384)
            .with_failure_after(3),
        GpuStageRule::emulated().with_failure_after(1),
    ] {
        for sql in queries
            .iter()
            .copied()
            .chain(["select pk, sum(pv), count(*), sum(pd) from p where pk > 100 group by pk"])
        {
            let (cpu, _) = run(ctx, sql, None).await?;
            let (gpu, plan) = run(ctx, sql, Some((&rule, GpuMode::Force))).await?;
            ensure!(
                stage_metric(&plan, "gpu_fallbacks_to_cpu") > 0,
                "{sql}: no stage fell back"
            );
            compare(&sorted(batch_rows(&cpu)?), &sorted(batch_rows(&gpu)?))
                .with_context(|| format!("after a device failure: {sql}"))?;
        }
    }
    Ok(())
}

async fn simple_count(ctx: &SessionContext, sql: &str) -> Result<usize> {
    let rows = batch_rows(&ctx.sql(sql).await?.collect().await?)?;
    rows.first()
        .and_then(|r| r[0].as_ref())
        .and_then(|v| v.parse().ok())
        .context("a count")
}

fn fast_device() -> Capability {
    Capability {
        name: "injected fast device".into(),
        calibration: Calibration {
            copy_in_bytes_per_second: 25e9,
            kernel_rows_per_second: 20e9,
            launch: Duration::from_micros(10),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rule_replaces_what_the_device_supports() -> Result<()> {
    let ctx = tpch_context(0.1).await?;
    let fast = GpuStageRule::with_capability(fast_device());
    let slow = GpuStageRule::with_capability(Capability {
        name: "injected slow device".into(),
        calibration: Calibration {
            copy_in_bytes_per_second: 0.2e9,
            kernel_rows_per_second: 0.05e9,
            launch: Duration::from_millis(1),
        },
    });
    let none = GpuStageRule::for_probe(&Err(gpu::GpuError::NoDriver));
    for q in [1, 6] {
        let sql = query_text(q)?;
        let on_fast = stages(&plan_of(&ctx, &sql, Some((&fast, GpuMode::Auto))).await?);
        ensure!(
            on_fast.len() == 1 && on_fast[0].1,
            "q{q:02} on a fast device: {on_fast:?}"
        );
        ensure!(on_fast[0].0.starts_with("filter -> "), "{on_fast:?}");
        let on_slow = stages(&plan_of(&ctx, &sql, Some((&slow, GpuMode::Auto))).await?);
        ensure!(
            on_slow.len() == 1 && !on_slow[0].1 && on_slow[0].2.contains("on the CPU"),
            "q{q:02} on a slow device: {on_slow:?}"
        );
        let forced = stages(&plan_of(&ctx, &sql, Some((&slow, GpuMode::Force))).await?);
        ensure!(
            forced.len() == 1 && forced[0].1,
            "q{q:02} forced: {forced:?}"
        );
        let off = stages(&plan_of(&ctx, &sql, Some((&fast, GpuMode::Off))).await?);
        ensure!(off.is_empty(), "q{q:02} with the GPU off: {off:?}");
        let absent = stages(&plan_of(&ctx, &sql, Some((&none, GpuMode::Force))).await?);
        ensure!(
            absent.len() == 1 && !absent[0].1 && absent[0].2.starts_with("no GPU here"),
            "q{q:02} without a device: {absent:?}"
        );
        // Shown in the plan's text, for EXPLAIN.
        let text = displayable(
            plan_of(&ctx, &sql, Some((&fast, GpuMode::Auto)))
                .await?
                .as_ref(),
        )
        .indent(true)
        .to_string();
        ensure!(text.contains("GpuStageExec: filter -> "), "{text}");
    }
    // The aggregates over Q3's and Q5's last joins: the join goes with them
    // when forced, and stays on the CPU on a slow device.
    for q in [3, 5] {
        let sql = query_text(q)?;
        let forced = stages(&plan_of(&ctx, &sql, Some((&fast, GpuMode::Force))).await?);
        ensure!(
            forced
                .iter()
                .any(|s| s.1 && s.0.starts_with("inner hash join -> ")),
            "q{q:02} forced: {forced:?}"
        );
        let on_slow = stages(&plan_of(&ctx, &sql, Some((&slow, GpuMode::Auto))).await?);
        ensure!(
            on_slow.iter().all(|s| !s.1),
            "q{q:02} on a slow device: {on_slow:?}"
        );
        // Q3's probe side is lineitem, large enough for the fast device;
        // Q5's (after its other joins) is not.
        let auto = stages(&plan_of(&ctx, &sql, Some((&fast, GpuMode::Auto))).await?);
        let joined = |s: &(String, bool, String)| s.0.starts_with("inner hash join -> ");
        ensure!(
            auto.iter().any(|s| joined(s) && s.1 == (q == 3)),
            "q{q:02} on a fast device: {auto:?}"
        );
    }
    // What stays on the CPU: aggregates the device does not compute, and
    // small inputs under auto.
    for sql in [
        "select l_returnflag, max(l_quantity) from lineitem group by l_returnflag",
        "select sum(length(l_comment)) from lineitem",
    ] {
        let found = stages(&plan_of(&ctx, sql, Some((&fast, GpuMode::Force))).await?);
        ensure!(found.iter().all(|s| !s.1), "{sql}: {found:?}");
    }
    let small = stages(
        &plan_of(
            &ctx,
            "select n_regionkey, count(*) from nation group by n_regionkey",
            Some((&fast, GpuMode::Auto)),
        )
        .await?,
    );
    ensure!(
        small.iter().all(|s| !s.1 && s.2.contains("fewer than")),
        "{small:?}"
    );
    // With no device, the CPU answers every TPC-H query, forced or not.
    for q in 1..=22 {
        let sql = query_text(q)?;
        let (cpu, _) = run(&ctx, &sql, None).await?;
        let (forced, _) = run(&ctx, &sql, Some((&none, GpuMode::Force))).await?;
        compare(&batch_rows(&cpu)?, &batch_rows(&forced)?)
            .with_context(|| format!("q{q:02} forced without a device"))?;
    }
    Ok(())
}

/// TPC-H through a cluster whose executors use `device` (`executor.gpu`),
/// with `flotilla.gpu = force`: the reference answers, and the number of
/// stages that ran on a device.
async fn tpch_forced(device: &str) -> Result<i64> {
    let cluster = Cluster::standalone(ClusterOptions {
        config: Some(format!("[executor]\ngpu = \"{device}\"\n")),
        ..ClusterOptions::default()
    })?;
    cluster.wait_executors(2, Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    client.simple_query("SET flotilla.gpu = 'force'").await?;
    let shown = simple_rows(&client, "SHOW flotilla.gpu").await?;
    ensure!(
        shown.iter().flatten().flatten().any(|v| v == "force"),
        "SHOW flotilla.gpu: {shown:?}"
    );
    let mut failures = Vec::new();
    for q in 1..=22 {
        let name = format!("q{q:02}");
        let actual = match simple_rows(&client, &query_text(q)?).await {
            Ok(rows) => rows,
            Err(e) => {
                failures.push(format!("{name}: {e:?}"));
                continue;
            }
        };
        let (_, expected) = read_answer(
            &tests::shared_dir()
                .join("tpch/answers/sf0.1")
                .join(format!("{name}.csv")),
        )?;
        if let Err(e) = compare(&expected, &actual) {
            failures.push(format!("{name}: {e}"));
        }
    }
    if !failures.is_empty() {
        bail!("{}\n{}", failures.join("\n"), cluster.log_text());
    }
    // EXPLAIN ANALYZE shows what the executors did: their operators'
    // metrics, and where each partial aggregate ran or why not.
    let explain = simple_rows(&client, &format!("EXPLAIN ANALYZE {}", query_text(6)?)).await?;
    let text: String = explain
        .iter()
        .flatten()
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    ensure!(
        text.contains("DistributedLeafExec:, metrics=[output_rows="),
        "no executor metrics in EXPLAIN ANALYZE:\n{text}"
    );
    let shown = match device {
        "emulate" => "gpu_stage(host emulation)=",
        _ => "gpu_declined(no GPU here",
    };
    if gpu::detect().is_none() {
        ensure!(
            text.contains(shown),
            "EXPLAIN ANALYZE lacks {shown}:\n{text}"
        );
    }
    if device == "emulate" {
        // Q3's last join feeds its aggregate on the device, in the cluster
        // too (the join's sides come through exchanges).
        let explain = simple_rows(&client, &format!("EXPLAIN ANALYZE {}", query_text(3)?)).await?;
        let text = explain
            .iter()
            .flatten()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        ensure!(
            text.contains("gpu_build_rows="),
            "no join stage ran in Q3:\n{text}"
        );
    }
    // A bad value is refused with the setting's own message.
    let error = client
        .simple_query("SET flotilla.gpu = 'sometimes'")
        .await
        .err()
        .context("flotilla.gpu took a bad value")?;
    ensure!(
        format!("{error:?}").contains("off, auto or force"),
        "{error:?}"
    );
    let rows = simple_rows(
        &client,
        "select sum(gpu_stages), sum(gpu_fallbacks) from flotilla.executors",
    )
    .await?;
    let count = |i: usize| -> i64 {
        rows[0][i]
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    };
    ensure!(count(1) == 0, "stages fell back: {rows:?}");
    Ok(count(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_forced_onto_the_emulated_device_gives_the_reference_answers() -> Result<()> {
    let stages = tpch_forced("emulate").await?;
    // Q1 and Q6 at least, on each of their tasks.
    ensure!(stages >= 2, "{stages} stages ran on the emulated device");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_forced_without_a_device_gives_the_reference_answers() -> Result<()> {
    if gpu::detect().is_some() {
        println!("a GPU is present: this checks the device path instead");
    }
    let stages = tpch_forced("detect").await?;
    if gpu::detect().is_none() {
        ensure!(
            stages == 0,
            "{stages} stages ran on a device that is not there"
        );
    }
    Ok(())
}

/// Where a device exists: TPC-H SF1 shapes on the GPU against the CPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_real_device_answers_match_the_cpu() -> Result<()> {
    let Some(device) = gpu::detect() else {
        println!("no GPU on this machine: the device differential runs where one exists");
        return Ok(());
    };
    println!("device: {:?}", device.info());
    let ctx = tpch_context(1.0).await?;
    let rule = GpuStageRule::for_probe(&Ok(Arc::clone(&device)));
    for q in [1, 3, 5, 6] {
        differential(&ctx, &query_text(q)?, &rule).await?;
    }
    differential(
        &ctx,
        "select l_orderkey, sum(l_quantity), count(*), avg(l_extendedprice) from lineitem group by l_orderkey",
        &rule,
    )
    .await?;
    let orders = ctx
        .sql("select o_orderkey from orders")
        .await?
        .collect()
        .await?;
    let lineitem = ctx
        .sql("select l_orderkey from lineitem")
        .await?
        .collect()
        .await?;
    let concat = |batches: &[RecordBatch]| {
        let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(0).as_ref()).collect();
        datafusion::arrow::compute::concat(&arrays)
    };
    let (o, l) = (concat(&orders)?, concat(&lineitem)?);
    let on_device = gpu::join_pairs(&device, o.as_ref(), l.as_ref())?;
    let on_host = gpu::emulated_join_pairs(o.as_ref(), l.as_ref())?;
    let mut a: Vec<_> = on_device.0.into_iter().zip(on_device.1).collect();
    let mut b: Vec<_> = on_host.0.into_iter().zip(on_host.1).collect();
    a.sort_unstable();
    b.sort_unstable();
    ensure!(
        a == b,
        "the device's join pairs differ from the emulation's"
    );
    Ok(())
}
