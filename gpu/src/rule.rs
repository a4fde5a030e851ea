//! The planner rule an executor applies to each fragment it receives: every
//! partial aggregate the device supports (see [`AggregateStage::plan`]),
//! with the projection, filter and inner hash join under it, becomes a
//! [`GpuStageExec`] that keeps the CPU plan, and a cost model decides where
//! it runs.
//!
//! The cost model compares, per partition, the copy of the stage's input
//! columns to the device plus the kernel's passes with the CPU doing the
//! same work, all at speeds measured when the executor started (the
//! device's in [`Calibration`], the CPU's in [`cpu_rows_per_second`]). Plans
//! on the wire never say anything about GPUs: each executor decides for
//! itself with what it has.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::error::Result;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::ExecutionPlan;

use crate::backend::Backend;
use crate::device::{cpu_rows_per_second, Calibration, Device};
use crate::error::GpuError;
use crate::stage::{AggregateStage, Decision, GpuStageExec, CHUNK_ROWS};

/// Whether a session's queries may use the GPU (`flotilla.gpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpuMode {
    /// Never.
    Off,
    /// Where the cost model expects a gain.
    #[default]
    Auto,
    /// Wherever the stage is supported and a device exists (the CPU still
    /// answers without one, or when the device cannot).
    Force,
}

impl std::str::FromStr for GpuMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "false" => Ok(GpuMode::Off),
            "auto" => Ok(GpuMode::Auto),
            "force" | "on" | "true" => Ok(GpuMode::Force),
            other => Err(format!("flotilla.gpu is off, auto or force, not {other:?}")),
        }
    }
}

impl std::fmt::Display for GpuMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GpuMode::Off => "off",
            GpuMode::Auto => "auto",
            GpuMode::Force => "force",
        })
    }
}

/// What the cost model knows of a device.
#[derive(Debug, Clone)]
pub struct Capability {
    pub name: String,
    pub calibration: Calibration,
}

/// Fewer rows than this per partition never pay for a launch.
pub const ROWS_MIN: usize = 64 * 1024;

/// The executor's GPU rule (see the module's documentation).
#[derive(Clone)]
pub struct GpuStageRule {
    backend: Option<Backend>,
    capability: Option<Capability>,
    /// Why there is no device, when there is none.
    absent: String,
    chunk_rows: usize,
    fail_after: Option<usize>,
}

impl std::fmt::Debug for GpuStageRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuStageRule")
            .field("capability", &self.capability)
            .field("absent", &self.absent)
            .finish()
    }
}

impl GpuStageRule {
    /// The rule for what [`crate::probe`] found.
    pub fn for_probe(probe: &std::result::Result<Arc<Device>, GpuError>) -> Self {
        match probe {
            Ok(device) => Self {
                backend: Some(Backend::Cuda(Arc::clone(device))),
                capability: Some(Capability {
                    name: device.info().name.clone(),
                    calibration: device.calibration(),
                }),
                absent: String::new(),
                chunk_rows: CHUNK_ROWS,
                fail_after: None,
            },
            Err(error) => Self {
                backend: None,
                capability: None,
                absent: error.to_string(),
                chunk_rows: CHUNK_ROWS,
                fail_after: None,
            },
        }
    }

    /// Stages run by the host emulation of the kernels, as if it were a
    /// device: for tests of the GPU path on machines without one.
    pub fn emulated() -> Self {
        Self {
            backend: Some(Backend::Emulated),
            capability: Some(Capability {
                name: "host emulation".into(),
                calibration: Calibration {
                    copy_in_bytes_per_second: 1e10,
                    kernel_rows_per_second: cpu_rows_per_second() / 10.0,
                    launch: std::time::Duration::from_micros(1),
                },
            }),
            absent: String::new(),
            chunk_rows: CHUNK_ROWS,
            fail_after: None,
        }
    }

    /// Decisions as with a device of `capability`, which the stages do not
    /// run on (they run on the CPU): for plan tests.
    pub fn with_capability(capability: Capability) -> Self {
        Self {
            backend: None,
            capability: Some(capability),
            absent: String::new(),
            chunk_rows: CHUNK_ROWS,
            fail_after: None,
        }
    }

    /// Rows per launch of the stages it makes (tests use small chunks, to
    /// run many launches and fill tables).
    pub fn with_chunk_rows(mut self, rows: usize) -> Self {
        self.chunk_rows = rows.max(1);
        self
    }

    /// Tests: the device of every stage it makes reports a failure after
    /// `launches` launches of a partition, so that the CPU takes over.
    pub fn with_failure_after(mut self, launches: usize) -> Self {
        self.fail_after = Some(launches);
        self
    }

    /// Whether stages can run anywhere but the CPU.
    pub fn has_device(&self) -> bool {
        self.backend.is_some()
    }

    /// `plan` with its supported aggregates turned into GPU stages.
    pub fn rewrite(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        mode: GpuMode,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if mode == GpuMode::Off {
            return Ok(plan);
        }
        plan.transform_up(|node| {
            let Some(aggregate) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            // Only the partial step could run on a device: the others stay
            // as they are, and say nothing.
            if *aggregate.mode() != AggregateMode::Partial {
                return Ok(Transformed::no(node));
            }
            // A stage that stays on the CPU, for EXPLAIN ANALYZE to say why.
            let declined = |reason: String| {
                let decision = Decision {
                    on_gpu: false,
                    reason,
                };
                let exec = GpuStageExec::new(Arc::clone(&node), None, None, decision);
                Ok(Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>))
            };
            let Some(capability) = &self.capability else {
                // No device: nothing to compile.
                return declined(format!("no GPU here ({})", self.absent));
            };
            let stage = match AggregateStage::plan(aggregate) {
                Ok(stage) => stage,
                Err(error) => return declined(error.to_string()),
            };
            let rows = input_rows(aggregate, &stage);
            let decision = decide(capability, &stage, rows, mode);
            let exec = GpuStageExec::new(
                Arc::clone(&node),
                Some(Arc::new(stage)),
                self.backend.clone(),
                decision,
            )
            .with_chunk_rows(self.chunk_rows)
            .with_failure_after(self.fail_after);
            Ok(Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>))
        })
        .data()
    }
}

/// Where a stage runs on a device of `capability`.
fn decide(
    capability: &Capability,
    stage: &AggregateStage,
    rows: Option<InputRows>,
    mode: GpuMode,
) -> Decision {
    if mode == GpuMode::Force {
        return Decision {
            on_gpu: true,
            reason: "flotilla.gpu = force".into(),
        };
    }
    let Some(InputRows { rows, build_rows }) = rows else {
        return Decision {
            on_gpu: false,
            reason: "no row count to estimate the cost with".into(),
        };
    };
    if rows < ROWS_MIN {
        return Decision {
            on_gpu: false,
            reason: format!("{rows} rows per partition, fewer than {ROWS_MIN}"),
        };
    }
    let estimate = estimate(
        stage,
        rows,
        build_rows,
        &capability.calibration,
        cpu_rows_per_second(),
    );
    Decision {
        on_gpu: estimate.gpu_seconds < estimate.cpu_seconds,
        reason: format!(
            "{rows} rows per partition: {:.2} ms on the GPU ({:.2} ms of it copying) against {:.2} ms on the CPU",
            estimate.gpu_seconds * 1e3,
            estimate.copy_seconds * 1e3,
            estimate.cpu_seconds * 1e3
        ),
    }
}

/// The cost model's figures for one partition.
#[derive(Debug, Clone, Copy)]
pub struct Estimate {
    pub copy_seconds: f64,
    pub gpu_seconds: f64,
    pub cpu_seconds: f64,
}

/// The cost of `rows` rows of `stage` (over a join: probe rows, with
/// `build_rows` on the build side) on a device and on the CPU.
pub fn estimate(
    stage: &AggregateStage,
    rows: usize,
    build_rows: usize,
    calibration: &Calibration,
    cpu_rows_per_second: f64,
) -> Estimate {
    let rows = rows as f64;
    let build_rows = build_rows as f64;
    // The calibrations measure about four instructions per row; a join
    // probes (about one more) and builds (about one per build row).
    let probe = if stage.is_join() { 1.0 } else { 0.0 };
    let work = (stage.instructions() as f64 / 4.0).max(1.0) + probe;
    let launches = (rows / CHUNK_ROWS as f64).ceil().max(1.0);
    // The build side's columns go in again with each chunk.
    let copy_seconds = (rows * stage.row_bytes() as f64
        + launches * build_rows * stage.build_row_bytes() as f64)
        / calibration.copy_in_bytes_per_second;
    let gpu_seconds = copy_seconds
        + (rows * work + build_rows) / calibration.kernel_rows_per_second
        + launches * calibration.launch.as_secs_f64() * (1.0 + probe);
    let cpu_seconds = (rows * work + build_rows) / cpu_rows_per_second;
    Estimate {
        copy_seconds,
        gpu_seconds,
        cpu_seconds,
    }
}

/// What a stage reads per partition, by the plan's statistics.
#[derive(Debug, Clone, Copy)]
struct InputRows {
    /// Rows of the input (over a join: of the probe side).
    rows: usize,
    /// A join's build rows (all of them, for each partition reads them).
    build_rows: usize,
}

/// Rows each partition of the stage's input holds (the plan `depth` levels
/// under the aggregate, or that join's probe side).
fn input_rows(aggregate: &AggregateExec, stage: &AggregateStage) -> Option<InputRows> {
    let mut input = aggregate.input();
    for _ in 0..stage.depth() {
        input = input.children().into_iter().next()?;
    }
    if !stage.is_join() {
        return Some(InputRows {
            rows: partition_rows(input)?,
            build_rows: 0,
        });
    }
    let children = input.children();
    let (build, probe) = (children.first()?, children.get(1)?);
    let partitions = build.properties().partitioning.partition_count().max(1);
    Some(InputRows {
        rows: partition_rows(probe)?,
        build_rows: partition_rows(build)? * partitions,
    })
}

/// Rows each partition of `plan` holds, by its statistics.
fn partition_rows(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    let partitions = plan.properties().partitioning.partition_count().max(1);
    let statistics = StatisticsContext::default()
        .compute(plan.as_ref(), &StatisticsArgs::new())
        .ok()?;
    statistics
        .num_rows
        .get_value()
        .map(|rows| rows / partitions)
}
