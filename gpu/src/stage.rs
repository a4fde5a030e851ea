//! The fused GPU stage: a partial hash aggregate over an optional projection
//! and filter, run by one kernel per coalesced chunk of its input.
//!
//! [`AggregateStage::plan`] reads a DataFusion `AggregateExec` (partial mode)
//! and the projection and filter under it, and compiles them into row
//! programs over the columns of the plan below them (the stage's *input*).
//! [`GpuStageExec`] takes the `AggregateExec`'s place in the plan with the
//! same child, so the plan's shape is unchanged: it reads the stage's input
//! itself, folds it into a hash table on the device and emits the same
//! partial-aggregate rows DataFusion would (groups, then each aggregate's
//! state columns). Whenever the device is busy, out of memory or reports a
//! condition the CPU must handle (an integer overflow, which DataFusion
//! reports as an error), the `AggregateExec` itself runs instead, from the
//! start: nothing reaches the output before the whole input is folded.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array,
    RecordBatch, StringArray, UInt64Array,
};
use arrow::compute::concat_batches;
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float64Type, Int32Type, Int64Type, SchemaRef,
};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, InputOrderMode,
    PlanProperties, ReplaceChildrenOptions,
};
use futures::{StreamExt, TryStreamExt};

use crate::backend::{Backend, Chunk, HostColumn, Readback, TableShape};
use crate::error::{GpuError, Result};
use crate::program::{ColumnKind, ProgramRef, ProgramSet, ValueType};

/// Aggregate kinds (FL_AGG_* in kernels/aggregate.cu).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
enum SlotKind {
    CountRows = 0,
    Count = 1,
    SumInt = 2,
    SumFloat = 3,
}

impl SlotKind {
    fn words(self) -> usize {
        match self {
            SlotKind::CountRows | SlotKind::Count => 1,
            SlotKind::SumInt => 3,
            SlotKind::SumFloat => 2,
        }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    kind: SlotKind,
    program: Option<ProgramRef>,
    offset: usize,
}

/// How a group key reaches the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyEncoding {
    /// Int32, Date32, Int64: as they are.
    Integer(ColumnKind),
    /// Strings: as codes of a dictionary the stage builds on the host.
    Dictionary,
}

#[derive(Debug, Clone)]
struct Key {
    /// The key's column in the stage's input.
    column: usize,
    encoding: KeyEncoding,
}

/// One state column of the output.
#[derive(Debug, Clone, Copy)]
enum Output {
    /// A count: of rows, of non-null values, or of the values a sum added.
    Count { slot: usize },
    /// A sum; null where it added no value.
    Sum { slot: usize },
}

/// A partial aggregate compiled for the device.
#[derive(Debug)]
pub struct AggregateStage {
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    /// Plan levels between the aggregate and its input (0: none, 1 or 2:
    /// a projection and/or a filter).
    depth: usize,
    programs: ProgramSet,
    filter: Option<ProgramRef>,
    keys: Vec<Key>,
    slots: Vec<Slot>,
    outputs: Vec<Output>,
    acc_width: usize,
    /// The input columns the programs and keys read.
    read_columns: Vec<usize>,
    /// Those of them read for their validity only (counted, of a type the
    /// device does not read).
    validity_only: Vec<usize>,
    /// What it does, for EXPLAIN.
    summary: String,
}

/// Most group keys a stage takes (the kernel's key array).
const KEYS_MAX: usize = 8;

impl AggregateStage {
    /// Compiles `aggregate` and the projection and filter under it, or says
    /// what the device does not support.
    pub fn plan(aggregate: &AggregateExec) -> Result<Self> {
        if *aggregate.mode() != AggregateMode::Partial {
            return Err(GpuError::unsupported(format!(
                "{:?} aggregation (only the partial step runs on the GPU)",
                aggregate.mode()
            )));
        }
        let group_by = aggregate.group_expr();
        if !group_by.is_single() {
            return Err(GpuError::unsupported("grouping sets"));
        }
        if group_by.expr().len() > KEYS_MAX {
            return Err(GpuError::unsupported(format!(
                "more than {KEYS_MAX} group keys"
            )));
        }
        if aggregate.limit_options().is_some() {
            return Err(GpuError::unsupported("an aggregate with a row limit"));
        }
        if *aggregate.input_order_mode() != InputOrderMode::Linear {
            return Err(GpuError::unsupported("aggregation over sorted input"));
        }
        if aggregate.filter_expr().iter().any(Option::is_some) {
            return Err(GpuError::unsupported("an aggregate with FILTER"));
        }
        // Walk down through a projection and a filter, rewriting the
        // aggregate's expressions over the plan below them.
        let mut exprs: Vec<Arc<dyn PhysicalExpr>> =
            group_by.expr().iter().map(|(e, _)| Arc::clone(e)).collect();
        let arguments: Vec<Vec<Arc<dyn PhysicalExpr>>> = aggregate
            .aggr_expr()
            .iter()
            .map(|a| a.expressions())
            .collect();
        let key_count = exprs.len();
        let mut argument_counts = Vec::new();
        for args in &arguments {
            argument_counts.push(args.len());
            exprs.extend(args.iter().cloned());
        }
        let mut plan: Arc<dyn ExecutionPlan> = Arc::clone(aggregate.input());
        let mut depth = 0;
        let mut predicate = None;
        let mut steps = Vec::new();
        if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
            let by: Vec<Arc<dyn PhysicalExpr>> = projection
                .expr()
                .iter()
                .map(|p| Arc::clone(&p.expr))
                .collect();
            exprs = exprs
                .iter()
                .map(|e| substitute(e, &by))
                .collect::<DfResult<_>>()?;
            let input = Arc::clone(projection.input());
            plan = input;
            depth += 1;
            steps.push("projection");
        }
        if let Some(filter) = plan.downcast_ref::<FilterExec>() {
            if let Some(projection) = filter.projection() {
                let input_schema = filter.input().schema();
                let by: Vec<Arc<dyn PhysicalExpr>> = projection
                    .iter()
                    .map(|&i| {
                        Arc::new(Column::new(input_schema.field(i).name(), i))
                            as Arc<dyn PhysicalExpr>
                    })
                    .collect();
                exprs = exprs
                    .iter()
                    .map(|e| substitute(e, &by))
                    .collect::<DfResult<_>>()?;
            }
            predicate = Some(Arc::clone(filter.predicate()));
            let input = Arc::clone(filter.input());
            plan = input;
            depth += 1;
            steps.insert(0, "filter");
        }
        if contains_exchange(&plan) {
            return Err(GpuError::unsupported(
                "input from another stage (the GPU stage reads files it can read again)",
            ));
        }
        let input_schema = plan.schema();
        let mut programs = ProgramSet::default();
        let filter = match &predicate {
            Some(predicate) => {
                let (at, ty) = programs.compile(predicate, &input_schema)?;
                if ty != ValueType::Bool {
                    return Err(GpuError::unsupported(format!("filter {predicate}")));
                }
                Some(at)
            }
            None => None,
        };
        let mut read_columns: Vec<usize> = Vec::new();
        let mut keys = Vec::new();
        for key in &exprs[..key_count] {
            let Some(column) = key.downcast_ref::<Column>() else {
                return Err(GpuError::unsupported(format!("group key {key}")));
            };
            let data_type = input_schema.field(column.index()).data_type();
            let encoding = match data_type {
                DataType::Int32 | DataType::Date32 | DataType::Int64 => {
                    KeyEncoding::Integer(ColumnKind::of(data_type).unwrap_or(ColumnKind::I64))
                }
                DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
                    KeyEncoding::Dictionary
                }
                other => {
                    return Err(GpuError::unsupported(format!(
                        "group key {key} of type {other}"
                    )))
                }
            };
            keys.push(Key {
                column: column.index(),
                encoding,
            });
        }
        let mut slots: Vec<Slot> = Vec::new();
        let mut validity_only: Vec<usize> = Vec::new();
        let mut outputs = Vec::new();
        let mut acc_width = 0;
        let mut add_slot = |kind: SlotKind, program: Option<ProgramRef>| {
            slots.push(Slot {
                kind,
                program,
                offset: acc_width,
            });
            acc_width += kind.words();
            slots.len() - 1
        };
        let mut at = key_count;
        let mut names = Vec::new();
        for (aggregate_expr, &count) in aggregate.aggr_expr().iter().zip(&argument_counts) {
            let args = &exprs[at..at + count];
            at += count;
            let name = aggregate_expr.fun().name().to_lowercase();
            if aggregate_expr.is_distinct() || !aggregate_expr.order_bys().is_empty() {
                return Err(GpuError::unsupported(format!(
                    "{}: DISTINCT or ORDER BY",
                    aggregate_expr.name()
                )));
            }
            let states = aggregate_expr.state_fields()?;
            let [arg] = args else {
                return Err(GpuError::unsupported(format!(
                    "{} with {} arguments",
                    aggregate_expr.name(),
                    args.len()
                )));
            };
            match name.as_str() {
                "count" => {
                    let constant = arg
                        .downcast_ref::<Literal>()
                        .is_some_and(|l| !l.value().is_null());
                    let column = arg.downcast_ref::<Column>().map(Column::index);
                    let slot = if constant {
                        add_slot(SlotKind::CountRows, None)
                    } else if let Some(column) = column
                        .filter(|&c| ColumnKind::of(input_schema.field(c).data_type()).is_none())
                    {
                        // A column the device cannot read: its validity
                        // bitmap is all a count needs.
                        validity_only.push(column);
                        let program = programs.load_validity(column);
                        add_slot(SlotKind::Count, Some(program))
                    } else {
                        let (program, _) = programs.compile(arg, &input_schema)?;
                        add_slot(SlotKind::Count, Some(program))
                    };
                    expect_states(aggregate_expr.name(), &states, &["count"])?;
                    outputs.push(Output::Count { slot });
                }
                "sum" | "avg" => {
                    let (program, ty) = programs.compile(arg, &input_schema)?;
                    let kind = match ty {
                        ValueType::Float => SlotKind::SumFloat,
                        ValueType::Int { .. } | ValueType::Decimal { .. } => SlotKind::SumInt,
                        ValueType::Bool => {
                            return Err(GpuError::unsupported(format!(
                                "{} of a boolean",
                                aggregate_expr.name()
                            )))
                        }
                    };
                    let slot = add_slot(kind, Some(program));
                    let sum_type = if name == "sum" {
                        expect_states(aggregate_expr.name(), &states, &["sum"])?;
                        outputs.push(Output::Sum { slot });
                        states[0].data_type()
                    } else {
                        expect_states(aggregate_expr.name(), &states, &["count", "sum"])?;
                        outputs.push(Output::Count { slot });
                        outputs.push(Output::Sum { slot });
                        states[1].data_type()
                    };
                    // The device sums at the argument's scale, so the state
                    // must be at that scale too.
                    // A 256-bit sum (DataFusion widens avg's) is exact in
                    // 128 bits when the values are small enough for 2^40
                    // rows of them.
                    let small = crate::program::digits_bound(arg, &input_schema)
                        .is_some_and(|digits| digits <= 25);
                    let fits = match (ty, sum_type) {
                        (ValueType::Float, DataType::Float64) => true,
                        (ValueType::Int { .. }, DataType::Int64) => true,
                        (ValueType::Decimal { scale, .. }, DataType::Decimal128(_, s)) => {
                            scale == *s
                        }
                        (ValueType::Decimal { scale, .. }, DataType::Decimal256(_, s)) => {
                            scale == *s && small
                        }
                        _ => false,
                    };
                    if !fits {
                        return Err(GpuError::unsupported(format!(
                            "{} of {ty:?} into {sum_type}",
                            aggregate_expr.name()
                        )));
                    }
                }
                other => return Err(GpuError::unsupported(format!("aggregate function {other}"))),
            }
            names.push(aggregate_expr.name().to_string());
        }
        for pair in programs.code.chunks(2) {
            if pair[0] == crate::program::op::LOAD && !read_columns.contains(&(pair[1] as usize)) {
                read_columns.push(pair[1] as usize);
            }
        }
        for key in &keys {
            if !read_columns.contains(&key.column) {
                read_columns.push(key.column);
            }
        }
        read_columns.sort_unstable();
        steps.push("partial aggregate");
        let summary = format!(
            "{} [{}] by {} key(s)",
            steps.join(" -> "),
            names.join(", "),
            keys.len()
        );
        Ok(Self {
            input_schema,
            output_schema: aggregate.schema(),
            depth,
            programs,
            filter,
            keys,
            slots,
            outputs,
            acc_width,
            read_columns,
            validity_only,
            summary,
        })
    }

    /// Plan levels between the aggregate and the plan the stage reads.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// What the stage does, in a line.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// Bytes that cross to the device per input row.
    pub fn row_bytes(&self) -> usize {
        self.read_columns
            .iter()
            .map(|&c| {
                let data_type = self.input_schema.field(c).data_type();
                // Dictionary codes are 4 bytes; validity one bit.
                match ColumnKind::of(data_type) {
                    Some(kind) => kind.width(),
                    None if self.validity_only.contains(&c) => 0,
                    None => 4,
                }
            })
            .sum::<usize>()
            + self.read_columns.len().div_ceil(8)
    }

    /// Row program instructions per row (the work the device does per row).
    pub fn instructions(&self) -> usize {
        self.programs.code.len() / 2 + self.slots.len()
    }

    /// The `meta` array of the aggregate kernel.
    fn meta(&self) -> Vec<i32> {
        let dictionary_base = self.input_schema.fields().len();
        let mut meta = vec![
            self.filter.map_or(0, |f| f.len as i32),
            self.keys.len() as i32,
            self.slots.len() as i32,
        ];
        let mut codes = 0;
        for key in &self.keys {
            meta.push(match key.encoding {
                KeyEncoding::Integer(_) => key.column as i32,
                KeyEncoding::Dictionary => {
                    codes += 1;
                    (dictionary_base + codes - 1) as i32
                }
            });
        }
        meta.extend(self.slots.iter().map(|s| s.kind as i32));
        meta.extend(
            self.slots
                .iter()
                .map(|s| s.program.map_or(0, |p| p.start as i32)),
        );
        meta.extend(
            self.slots
                .iter()
                .map(|s| s.program.map_or(0, |p| p.len as i32)),
        );
        meta.extend(self.slots.iter().map(|s| s.offset as i32));
        meta
    }

    fn shape(&self, capacity: usize) -> TableShape {
        TableShape {
            capacity: if self.keys.is_empty() { 1 } else { capacity },
            keys: self.keys.len(),
            acc_width: self.acc_width,
        }
    }
}

fn expect_states(
    name: &str,
    states: &[arrow::datatypes::FieldRef],
    suffixes: &[&str],
) -> Result<()> {
    let matches = states.len() == suffixes.len()
        && states
            .iter()
            .zip(suffixes)
            .all(|(field, suffix)| field.name().ends_with(&format!("[{suffix}]")));
    if matches {
        Ok(())
    } else {
        Err(GpuError::unsupported(format!(
            "{name}: state {:?}",
            states.iter().map(|f| f.name()).collect::<Vec<_>>()
        )))
    }
}

/// `expr` with each column `i` replaced by `by[i]`.
fn substitute(
    expr: &Arc<dyn PhysicalExpr>,
    by: &[Arc<dyn PhysicalExpr>],
) -> DfResult<Arc<dyn PhysicalExpr>> {
    Arc::clone(expr)
        .transform_up(|e| {
            Ok(match e.downcast_ref::<Column>() {
                Some(column) => match by.get(column.index()) {
                    Some(replacement) => Transformed::yes(Arc::clone(replacement)),
                    None => Transformed::no(e),
                },
                None => Transformed::no(e),
            })
        })
        .data()
}

/// Whether the plan reads from another stage (`datafusion-distributed`'s
/// network boundaries), which cannot be read twice.
fn contains_exchange(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.name().starts_with("Network") || plan.children().into_iter().any(contains_exchange)
}

/// Stages this process ran to the end on a device, and stages that fell
/// back to the CPU after they started on one.
static STAGES_COMPLETED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static STAGES_FALLEN_BACK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// (stages completed on a device, stages that fell back to the CPU) since
/// the process started.
pub fn stage_counts() -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (
        STAGES_COMPLETED.load(Relaxed),
        STAGES_FALLEN_BACK.load(Relaxed),
    )
}

/// Rows folded per launch: input batches are coalesced up to this many.
pub const CHUNK_ROWS: usize = 1 << 20;
/// Slots of a keyed table at first; it grows by 4x when a chunk overflows.
const CAPACITY_START: usize = 1 << 12;
const CAPACITY_MAX: usize = 1 << 24;

/// Where a stage runs, and why.
#[derive(Debug, Clone)]
pub struct Decision {
    pub on_gpu: bool,
    pub reason: String,
}

/// The GPU stage in a plan, in the place of an `AggregateExec` (see the
/// module's documentation).
pub struct GpuStageExec {
    /// The `AggregateExec` as planned, with the same child: the CPU path.
    cpu: Arc<dyn ExecutionPlan>,
    /// `None`: the device does not support the aggregate (the decision says
    /// why); it stands here so that `EXPLAIN ANALYZE` says so.
    stage: Option<Arc<AggregateStage>>,
    backend: Option<Backend>,
    decision: Decision,
    chunk_rows: usize,
    metrics: ExecutionPlanMetricsSet,
}

impl fmt::Debug for GpuStageExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuStageExec")
            .field("stage", &self.summary())
            .field("decision", &self.decision)
            .finish()
    }
}

impl GpuStageExec {
    /// `aggregate` (an `AggregateExec` that `stage` was planned from) run by
    /// `backend` when `decision` says so.
    pub(crate) fn new(
        aggregate: Arc<dyn ExecutionPlan>,
        stage: Option<Arc<AggregateStage>>,
        backend: Option<Backend>,
        decision: Decision,
    ) -> Self {
        Self {
            cpu: aggregate,
            stage,
            backend,
            decision,
            chunk_rows: CHUNK_ROWS,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// Rows per launch (tests use small chunks to exercise many launches).
    pub fn with_chunk_rows(mut self, rows: usize) -> Self {
        self.chunk_rows = rows.max(1);
        self
    }

    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The compiled stage, if the device supports the aggregate.
    pub fn stage(&self) -> Option<&AggregateStage> {
        self.stage.as_deref()
    }

    /// What the stage does, in a line.
    pub fn summary(&self) -> String {
        match &self.stage {
            Some(stage) => stage.summary.clone(),
            None => "partial aggregate".into(),
        }
    }

    /// The plan the stage reads: `depth` levels under the aggregate.
    fn input(&self, stage: &AggregateStage) -> Arc<dyn ExecutionPlan> {
        let mut plan = Arc::clone(self.cpu.children()[0]);
        for _ in 0..stage.depth {
            plan = Arc::clone(plan.children()[0]);
        }
        plan
    }
}

impl DisplayAs for GpuStageExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let place = match (&self.backend, self.decision.on_gpu) {
            (Some(backend), true) => format!("GPU ({})", backend.name()),
            _ => "CPU".to_string(),
        };
        write!(
            f,
            "GpuStageExec: {}, on {place}: {}",
            self.summary(),
            self.decision.reason
        )
    }
}

impl ExecutionPlan for GpuStageExec {
    fn name(&self) -> &str {
        "GpuStageExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.cpu.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.cpu.children()
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        self.cpu.apply_expressions(f)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let cpu = Arc::clone(&self.cpu).replace_children(children, options)?;
        Ok(Arc::new(GpuStageExec {
            cpu,
            stage: self.stage.clone(),
            backend: self.backend.clone(),
            decision: self.decision.clone(),
            chunk_rows: self.chunk_rows,
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        // The stage's own figures, and the CPU plan's (when it ran).
        let mut metrics = self.metrics.clone_inner();
        for metric in self.cpu.metrics().iter().flat_map(|m| m.iter()) {
            metrics.push(Arc::clone(metric));
        }
        Some(metrics)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let (backend, stage) = match (&self.backend, &self.stage, self.decision.on_gpu) {
            (Some(backend), Some(stage), true) => (backend.clone(), Arc::clone(stage)),
            _ => {
                // Why not, for EXPLAIN ANALYZE (metrics are all it shows of
                // what executors did).
                // The reason is in the name: EXPLAIN ANALYZE sums metrics
                // by name and drops their labels.
                MetricBuilder::new(&self.metrics)
                    .counter(
                        metric_name("gpu_declined", &self.decision.reason),
                        partition,
                    )
                    .add(1);
                return self.cpu.execute(partition, context);
            }
        };
        MetricBuilder::new(&self.metrics)
            .counter(metric_name("gpu_stage", &backend.name()), partition)
            .add(1);
        let metrics = StageMetrics::new(&self.metrics, partition);
        let cpu = Arc::clone(&self.cpu);
        let input = self.input(&stage);
        let schema = self.schema();
        let chunk_rows = self.chunk_rows;
        let stream = futures::stream::once(async move {
            let permit = backend.try_permit();
            if permit.is_none() {
                metrics.busy.add(1);
                return cpu.execute(partition, context);
            }
            let rows = input.execute(partition, Arc::clone(&context))?;
            match fold_input(&stage, &backend, rows, chunk_rows, &metrics).await {
                Ok(batches) => {
                    drop(permit);
                    STAGES_COMPLETED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(Box::pin(MemoryStream::try_new(batches, stage.output_schema.clone(), None)?)
                        as SendableRecordBatchStream)
                }
                Err(Failure::Input(error)) => Err(error),
                Err(Failure::Device(error)) => {
                    drop(permit);
                    tracing::info!(%error, stage = stage.summary(), "the GPU stage runs on the CPU instead");
                    metrics.fallbacks.add(1);
                    STAGES_FALLEN_BACK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    cpu.execute(partition, context)
                }
            }
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// `what(detail)`, with the separators of a metrics list kept out of it.
fn metric_name(what: &str, detail: &str) -> String {
    format!("{what}({})", detail.replace(',', ";").replace('=', ":"))
}

/// The stage's figures, per partition, in `EXPLAIN ANALYZE`.
#[derive(Clone)]
struct StageMetrics {
    rows: Count,
    launches: Count,
    bytes_in: Count,
    bytes_out: Count,
    copy_time: Time,
    kernel_time: Time,
    fallbacks: Count,
    busy: Count,
}

impl StageMetrics {
    fn new(set: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        let count = |name: &'static str| MetricBuilder::new(set).counter(name, partition);
        let time = |name: &'static str| MetricBuilder::new(set).subset_time(name, partition);
        Self {
            rows: count("gpu_rows"),
            launches: count("gpu_launches"),
            bytes_in: count("gpu_bytes_in"),
            bytes_out: count("gpu_bytes_out"),
            copy_time: time("gpu_copy_time"),
            kernel_time: time("gpu_kernel_time"),
            fallbacks: count("gpu_fallbacks_to_cpu"),
            busy: count("gpu_busy_ran_on_cpu"),
        }
    }
}

enum Failure {
    /// The input failed: that is the query's error.
    Input(DataFusionError),
    /// The device could not finish: the CPU path answers.
    Device(GpuError),
}

impl From<GpuError> for Failure {
    fn from(error: GpuError) -> Self {
        Failure::Device(error)
    }
}

/// Folds the whole input in, returning the partial aggregate's rows.
async fn fold_input(
    stage: &AggregateStage,
    backend: &Backend,
    mut input: SendableRecordBatchStream,
    chunk_rows: usize,
    metrics: &StageMetrics,
) -> std::result::Result<Vec<RecordBatch>, Failure> {
    let meta = stage.meta();
    let mut capacity = CAPACITY_START;
    let mut table = backend.aggregate_table(stage.shape(capacity), &meta, &stage.programs)?;
    let mut dictionaries = Dictionaries::new(stage);
    let mut output = Vec::new();
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0;
    let schema = input.schema();
    loop {
        let next = input.next().await.transpose().map_err(Failure::Input)?;
        if let Some(batch) = &next {
            pending_rows += batch.num_rows();
            pending.push(batch.clone());
        }
        let full = pending_rows >= chunk_rows;
        if (full || next.is_none()) && pending_rows > 0 {
            let chunk = concat_batches(&schema, &pending).map_err(|e| Failure::Input(e.into()))?;
            pending.clear();
            pending_rows = 0;
            metrics.rows.add(chunk.num_rows());
            let encoded = Encoded::new(stage, &chunk, &mut dictionaries)?;
            let host = encoded.chunk(chunk.num_rows());
            let mut folded = table.fold(&host, None)?;
            let mut only: Option<Vec<i32>> = None;
            // Rows whose group found no slot: empty the table into the
            // output, make it larger, fold them again.
            while !folded.overflow.is_empty() {
                let rows: Vec<i32> = match &only {
                    Some(previous) => folded
                        .overflow
                        .iter()
                        .map(|&i| previous[i as usize])
                        .collect(),
                    None => folded.overflow.clone(),
                };
                output.extend(read_out(stage, &mut table, &dictionaries)?);
                if capacity < CAPACITY_MAX {
                    capacity = (capacity * 4).min(CAPACITY_MAX);
                    table =
                        backend.aggregate_table(stage.shape(capacity), &meta, &stage.programs)?;
                }
                folded = table.fold(&host, Some(&rows))?;
                only = Some(rows);
            }
            // Half full: emptied now, so the next chunk finds free slots.
            if !stage.keys.is_empty() && folded.groups * 2 > table.shape().capacity {
                output.extend(read_out(stage, &mut table, &dictionaries)?);
            }
        }
        if next.is_none() {
            break;
        }
    }
    output.extend(read_out(stage, &mut table, &dictionaries)?);
    let figures = table.figures();
    metrics.launches.add(figures.launches as usize);
    metrics.bytes_in.add(figures.bytes_in as usize);
    metrics.bytes_out.add(figures.bytes_out as usize);
    metrics
        .copy_time
        .add_duration(figures.copy_in + figures.copy_out);
    metrics.kernel_time.add_duration(figures.kernel);
    Ok(output)
}

/// The string keys' dictionaries: code -> value, value -> code.
struct Dictionaries {
    codes: Vec<HashMap<Vec<u8>, i32>>,
    values: Vec<Vec<Vec<u8>>>,
}

impl Dictionaries {
    fn new(stage: &AggregateStage) -> Self {
        let n = stage
            .keys
            .iter()
            .filter(|k| k.encoding == KeyEncoding::Dictionary)
            .count();
        Self {
            codes: vec![HashMap::new(); n],
            values: vec![Vec::new(); n],
        }
    }
}

/// A chunk's arrays as the device reads them, kept alive for the launch.
struct Encoded {
    /// Per input column, the array if a program reads it.
    columns: Vec<Option<ArrayRef>>,
    /// Validity bitmaps re-aligned to bit 0, where an array's were not.
    validity: Vec<Option<arrow::buffer::Buffer>>,
    /// The string keys' codes (and their validity).
    codes: Vec<Int32Array>,
    code_validity: Vec<Option<arrow::buffer::Buffer>>,
}

impl Encoded {
    fn new(
        stage: &AggregateStage,
        chunk: &RecordBatch,
        dictionaries: &mut Dictionaries,
    ) -> Result<Self> {
        let mut columns = vec![None; chunk.num_columns()];
        let mut validity = vec![None; chunk.num_columns()];
        for &c in &stage.read_columns {
            let array = chunk.column(c);
            if ColumnKind::of(array.data_type()).is_some() || stage.validity_only.contains(&c) {
                validity[c] = array.nulls().map(|n| n.inner().sliced());
                columns[c] = Some(Arc::clone(array));
            }
        }
        let mut codes = Vec::new();
        let mut code_validity = Vec::new();
        let mut d = 0;
        for key in &stage.keys {
            if key.encoding != KeyEncoding::Dictionary {
                continue;
            }
            let strings = arrow::compute::cast(chunk.column(key.column), &DataType::Utf8)
                .map_err(|e| GpuError::unsupported(format!("a string key: {e}")))?;
            let strings = strings.as_string::<i32>();
            let map = &mut dictionaries.codes[d];
            let values = &mut dictionaries.values[d];
            let array: Int32Array = strings
                .iter()
                .map(|s| {
                    s.map(|s| {
                        *map.entry(s.as_bytes().to_vec()).or_insert_with(|| {
                            values.push(s.as_bytes().to_vec());
                            (values.len() - 1) as i32
                        })
                    })
                })
                .collect();
            code_validity.push(array.nulls().map(|n| n.inner().sliced()));
            codes.push(array);
            d += 1;
        }
        Ok(Self {
            columns,
            validity,
            codes,
            code_validity,
        })
    }

    fn chunk(&self, rows: usize) -> Chunk<'_> {
        let mut columns: Vec<Option<HostColumn<'_>>> = self
            .columns
            .iter()
            .zip(&self.validity)
            .map(|(array, validity)| {
                let array = array.as_ref()?;
                let validity = validity.as_ref().map(|b| b.as_slice());
                Some(match ColumnKind::of(array.data_type()) {
                    Some(kind) => HostColumn {
                        values: value_bytes(array.as_ref())?,
                        validity,
                        kind,
                    },
                    None => HostColumn {
                        values: &[],
                        validity,
                        kind: ColumnKind::Validity,
                    },
                })
            })
            .collect();
        for (codes, validity) in self.codes.iter().zip(&self.code_validity) {
            columns.push(Some(HostColumn {
                values: codes.values().inner().as_slice(),
                validity: validity.as_ref().map(|b| b.as_slice()),
                kind: ColumnKind::I32,
            }));
        }
        Chunk { rows, columns }
    }
}

/// A fixed-width array's values, from its first row.
pub(crate) fn value_bytes(array: &dyn Array) -> Option<&[u8]> {
    Some(match array.data_type() {
        DataType::Int32 => array
            .as_primitive::<Int32Type>()
            .values()
            .inner()
            .as_slice(),
        DataType::Date32 => array
            .as_primitive::<Date32Type>()
            .values()
            .inner()
            .as_slice(),
        DataType::Int64 => array
            .as_primitive::<Int64Type>()
            .values()
            .inner()
            .as_slice(),
        DataType::Float64 => array
            .as_primitive::<Float64Type>()
            .values()
            .inner()
            .as_slice(),
        DataType::Decimal128(_, _) => array
            .as_primitive::<Decimal128Type>()
            .values()
            .inner()
            .as_slice(),
        _ => return None,
    })
}

/// Empties the table into partial-aggregate rows.
fn read_out(
    stage: &AggregateStage,
    table: &mut crate::backend::AggregateTable,
    dictionaries: &Dictionaries,
) -> Result<Vec<RecordBatch>> {
    let read = table.take()?;
    let batch = build_output(stage, &read, dictionaries)?;
    Ok(if batch.num_rows() == 0 && !stage.keys.is_empty() {
        Vec::new()
    } else {
        vec![batch]
    })
}

fn build_output(
    stage: &AggregateStage,
    read: &Readback,
    dictionaries: &Dictionaries,
) -> Result<RecordBatch> {
    let schema = &stage.output_schema;
    let internal = |what: String| GpuError::Kernel { what };
    // A global aggregate has its one group even over no rows, as
    // DataFusion's has.
    let slots: Vec<usize> = if stage.keys.is_empty() {
        vec![0]
    } else {
        (0..read.state.len())
            .filter(|&s| read.state[s] == 2)
            .collect()
    };
    let k = stage.keys.len();
    let w = stage.acc_width;
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    let mut d = 0;
    for (i, key) in stage.keys.iter().enumerate() {
        let field = schema.field(i);
        let valid = |s: usize| (read.key_valid[s] >> i) & 1 == 1;
        let value = |s: usize| read.keys[s * k + i];
        let array: ArrayRef = match key.encoding {
            KeyEncoding::Dictionary => {
                let values = &dictionaries.values[d];
                d += 1;
                let strings: StringArray = slots
                    .iter()
                    .map(|&s| {
                        valid(s).then(|| {
                            String::from_utf8_lossy(&values[value(s) as usize]).into_owned()
                        })
                    })
                    .collect();
                arrow::compute::cast(&strings, field.data_type())
                    .map_err(|e| internal(format!("a string key: {e}")))?
            }
            KeyEncoding::Integer(_) => match field.data_type() {
                DataType::Int32 => Arc::new(
                    slots
                        .iter()
                        .map(|&s| valid(s).then(|| value(s) as i32))
                        .collect::<Int32Array>(),
                ),
                DataType::Date32 => Arc::new(
                    slots
                        .iter()
                        .map(|&s| valid(s).then(|| value(s) as i32))
                        .collect::<Date32Array>(),
                ),
                _ => Arc::new(
                    slots
                        .iter()
                        .map(|&s| valid(s).then(|| value(s)))
                        .collect::<Int64Array>(),
                ),
            },
        };
        columns.push(array);
    }
    for (j, output) in stage.outputs.iter().enumerate() {
        let field = schema.field(k + j);
        let (slot, is_count) = match *output {
            Output::Count { slot } => (slot, true),
            Output::Sum { slot } => (slot, false),
        };
        let spec = &stage.slots[slot];
        let word = |s: usize, n: usize| read.acc[s * w + spec.offset + n];
        // The count a sum keeps sits after its value.
        let count_word = match spec.kind {
            SlotKind::CountRows | SlotKind::Count => 0,
            SlotKind::SumInt => 2,
            SlotKind::SumFloat => 1,
        };
        let array: ArrayRef = if is_count {
            match field.data_type() {
                DataType::UInt64 => Arc::new(
                    slots
                        .iter()
                        .map(|&s| word(s, count_word))
                        .collect::<UInt64Array>(),
                ),
                _ => Arc::new(
                    slots
                        .iter()
                        .map(|&s| word(s, count_word) as i64)
                        .collect::<Int64Array>(),
                ),
            }
        } else {
            let present = |s: usize| word(s, count_word) > 0;
            match (spec.kind, field.data_type()) {
                (SlotKind::SumFloat, _) => Arc::new(
                    slots
                        .iter()
                        .map(|&s| present(s).then(|| f64::from_bits(word(s, 0))))
                        .collect::<Float64Array>(),
                ),
                (_, DataType::Decimal128(p, sc)) => Arc::new(
                    slots
                        .iter()
                        .map(|&s| present(s).then(|| i128_of(word(s, 0), word(s, 1))))
                        .collect::<Decimal128Array>()
                        .with_precision_and_scale(*p, *sc)
                        .map_err(|e| internal(format!("a decimal sum: {e}")))?,
                ),
                (_, DataType::Decimal256(p, sc)) => Arc::new(
                    slots
                        .iter()
                        .map(|&s| {
                            present(s).then(|| {
                                arrow::datatypes::i256::from_i128(i128_of(word(s, 0), word(s, 1)))
                            })
                        })
                        .collect::<arrow::array::Decimal256Array>()
                        .with_precision_and_scale(*p, *sc)
                        .map_err(|e| internal(format!("a decimal sum: {e}")))?,
                ),
                _ => Arc::new(
                    slots
                        .iter()
                        // Int64 sums wrap on overflow, as DataFusion's do.
                        .map(|&s| present(s).then(|| i128_of(word(s, 0), word(s, 1)) as i64))
                        .collect::<Int64Array>(),
                ),
            }
        };
        columns.push(array);
    }
    RecordBatch::try_new(Arc::clone(schema), columns)
        .map_err(|e| internal(format!("the stage's output: {e}")))
}

fn i128_of(low: u64, high: u64) -> i128 {
    ((high as u128) << 64 | low as u128) as i128
}
