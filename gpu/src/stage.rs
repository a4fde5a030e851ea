//! The fused GPU stage: a partial hash aggregate over an optional projection,
//! filter and inner hash join, run by one kernel per coalesced chunk of its
//! input (and, over a join, the probe kernel before it).
//!
//! [`AggregateStage::plan`] reads a DataFusion `AggregateExec` (partial mode)
//! and the projection, filter and join under it, and compiles them into row
//! programs over the columns of the plan below them (the stage's *input*;
//! over a join, the joined rows: the build side's columns, then the probe
//! side's).
//! [`GpuStageExec`] takes the `AggregateExec`'s place in the plan with the
//! same child, so the plan's shape is unchanged: it reads the stage's input
//! itself, folds it into a hash table on the device and emits the same
//! partial-aggregate rows DataFusion would (groups, then each aggregate's
//! state columns). Whenever the device is busy, out of memory or reports a
//! condition the CPU must handle (an integer overflow, which DataFusion
//! reports as an error), the `AggregateExec` takes over: from the start when
//! busy, or from the chunk the device failed on, with that chunk and the
//! rest of the input in the place of its inputs (every chunk is folded whole
//! or not at all, see [`Folder`]). Nothing reaches the output before the
//! whole input is folded or handed over.

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
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    InputOrderMode, PlanProperties, ReplaceChildrenOptions,
};
use futures::{StreamExt, TryStreamExt};

use crate::backend::{Backend, Chunk, HostColumn, Readback, Rows, TableShape};
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

/// The inner hash join a stage's rows come from: the build side is the
/// join's left child (read whole, first), the probe side its right.
#[derive(Debug, Clone)]
struct JoinInput {
    /// Columns of the build side: the joined rows' first columns.
    build_width: usize,
    /// The key's column in the build side's rows and in the probe side's.
    build_key: usize,
    probe_key: usize,
    /// One build side for every partition (DataFusion's CollectLeft), or
    /// one per partition.
    collect_left: bool,
}

/// A partial aggregate compiled for the device.
#[derive(Debug)]
pub struct AggregateStage {
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    /// Plan levels between the aggregate and its input (0: none, 1 or 2:
    /// a projection and/or a filter).
    depth: usize,
    /// The join the input is, if it is one: the programs then read the
    /// joined rows (the build side's columns, then the probe side's).
    join: Option<JoinInput>,
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
        let mut join = None;
        let mut input_schema = plan.schema();
        if let Some(hash_join) = plan.downcast_ref::<HashJoinExec>() {
            let PlannedJoin {
                input,
                joined,
                condition,
            } = join_input(hash_join)?;
            if let Some(projection) = &hash_join.projection {
                let by: Vec<Arc<dyn PhysicalExpr>> = projection
                    .iter()
                    .map(|&i| {
                        Arc::new(Column::new(joined.field(i).name(), i)) as Arc<dyn PhysicalExpr>
                    })
                    .collect();
                exprs = exprs
                    .iter()
                    .map(|e| substitute(e, &by))
                    .collect::<DfResult<_>>()?;
                predicate = predicate.map(|p| substitute(&p, &by)).transpose()?;
            }
            if let Some(condition) = condition {
                predicate = Some(match predicate {
                    Some(predicate) => {
                        Arc::new(datafusion::physical_expr::expressions::BinaryExpr::new(
                            condition,
                            datafusion::logical_expr::Operator::And,
                            predicate,
                        ))
                    }
                    None => condition,
                });
                if !steps.contains(&"filter") {
                    steps.insert(0, "filter");
                }
            }
            steps.insert(0, "inner hash join");
            input_schema = joined;
            join = Some(input);
        }
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
            join,
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

    /// Whether the stage reads a join's output.
    pub fn is_join(&self) -> bool {
        self.join.is_some()
    }

    /// Bytes that cross to the device per input row (over a join: per probe
    /// row, its key included).
    pub fn row_bytes(&self) -> usize {
        let width = self.join.as_ref().map_or(0, |j| j.build_width);
        self.column_bytes(|c| c >= width) + if self.is_join() { 8 } else { 0 }
    }

    /// Bytes of the build side's columns per build row (0 but over a join).
    pub fn build_row_bytes(&self) -> usize {
        match &self.join {
            Some(join) => self.column_bytes(|c| c < join.build_width),
            None => 0,
        }
    }

    fn column_bytes(&self, which: impl Fn(usize) -> bool) -> usize {
        let columns: Vec<usize> = self
            .read_columns
            .iter()
            .copied()
            .filter(|&c| which(c))
            .collect();
        columns
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
            + columns.len().div_ceil(8)
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

/// The join a stage can read its rows from, and the joined rows' schema,
/// or what the device does not support of it.
fn join_input(join: &HashJoinExec) -> Result<PlannedJoin> {
    use datafusion::common::{JoinType, NullEquality};
    if *join.join_type() != JoinType::Inner || join.null_aware {
        return Err(GpuError::unsupported(format!(
            "a {} join (only inner joins run on the GPU)",
            join.join_type()
        )));
    }
    if join.fetch().is_some() {
        return Err(GpuError::unsupported("a join with a row limit"));
    }
    if join.null_equality() != NullEquality::NullEqualsNothing {
        return Err(GpuError::unsupported("a join on which nulls match"));
    }
    let collect_left = match join.partition_mode() {
        PartitionMode::CollectLeft => true,
        PartitionMode::Partitioned => false,
        PartitionMode::Auto => return Err(GpuError::unsupported("a join of no partition mode")),
    };
    let [(left, right)] = join.on() else {
        return Err(GpuError::unsupported(format!(
            "a join on {} keys (the GPU joins on one)",
            join.on().len()
        )));
    };
    let (left_schema, right_schema) = (join.left().schema(), join.right().schema());
    let key = |expr: &Arc<dyn PhysicalExpr>, schema: &SchemaRef| {
        let column = expr
            .downcast_ref::<Column>()
            .ok_or_else(|| GpuError::unsupported(format!("a join on {expr}")))?;
        match schema.field(column.index()).data_type() {
            DataType::Int32 | DataType::Int64 => Ok(column.index()),
            other => Err(GpuError::unsupported(format!(
                "a join on {expr} of type {other}"
            ))),
        }
    };
    let (build_key, probe_key) = (key(left, &left_schema)?, key(right, &right_schema)?);
    let fields: Vec<arrow::datatypes::FieldRef> = left_schema
        .fields()
        .iter()
        .chain(right_schema.fields().iter())
        .cloned()
        .collect();
    let joined = Arc::new(arrow::datatypes::Schema::new(fields));
    let build_width = left_schema.fields().len();
    // The join's other conditions, over the joined rows: for an inner
    // join, a filter on its output.
    let condition = match join.filter() {
        Some(filter) => {
            use datafusion::common::JoinSide;
            let by = filter
                .column_indices()
                .iter()
                .map(|c| {
                    let at = match c.side {
                        JoinSide::Left => Ok(c.index),
                        JoinSide::Right => Ok(build_width + c.index),
                        JoinSide::None => Err(GpuError::unsupported("a join condition's column")),
                    }?;
                    Ok(Arc::new(Column::new(joined.field(at).name(), at)) as Arc<dyn PhysicalExpr>)
                })
                .collect::<Result<Vec<_>>>()?;
            Some(substitute(filter.expression(), &by)?)
        }
        None => None,
    };
    Ok(PlannedJoin {
        input: JoinInput {
            build_width,
            build_key,
            probe_key,
            collect_left,
        },
        joined,
        condition,
    })
}

/// A join as a stage reads it.
struct PlannedJoin {
    input: JoinInput,
    /// The joined rows' schema.
    joined: SchemaRef,
    /// Conditions besides the key's, over the joined rows.
    condition: Option<Arc<dyn PhysicalExpr>>,
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
    /// A join stage's build side when every partition reads the same one
    /// (CollectLeft): read once, by the first partition to want it.
    shared_build: Arc<tokio::sync::OnceCell<Arc<BuildSide>>>,
    /// Tests: the launch after which the device reports a failure.
    fail_after: Option<usize>,
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
            shared_build: Arc::default(),
            fail_after: None,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// Rows per launch (tests use small chunks to exercise many launches).
    pub fn with_chunk_rows(mut self, rows: usize) -> Self {
        self.chunk_rows = rows.max(1);
        self
    }

    /// Tests: the device reports a failure after `launches` launches of
    /// each partition (it has folded that launch's rows: the stage must undo
    /// them).
    pub fn with_failure_after(mut self, launches: Option<usize>) -> Self {
        self.fail_after = launches;
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
            shared_build: Arc::default(),
            fail_after: self.fail_after,
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
        let run = StageRun {
            metrics: StageMetrics::new(&self.metrics, partition, stage.join.is_some()),
            cpu: Arc::clone(&self.cpu),
            input: self.input(&stage),
            stage,
            backend,
            partition,
            context,
            chunk_rows: self.chunk_rows,
            shared_build: Arc::clone(&self.shared_build),
            fail_after: self.fail_after,
        };
        let schema = self.schema();
        let stream = futures::stream::once(run.run()).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// One partition of a GPU stage, as it runs.
struct StageRun {
    stage: Arc<AggregateStage>,
    backend: Backend,
    /// The `AggregateExec` as planned.
    cpu: Arc<dyn ExecutionPlan>,
    /// The plan the stage reads (a join: the plan whose children it reads).
    input: Arc<dyn ExecutionPlan>,
    partition: usize,
    context: Arc<TaskContext>,
    chunk_rows: usize,
    shared_build: Arc<tokio::sync::OnceCell<Arc<BuildSide>>>,
    fail_after: Option<usize>,
    metrics: StageMetrics,
}

impl StageRun {
    async fn run(self) -> DfResult<SendableRecordBatchStream> {
        let permit = self.backend.try_permit();
        // A join's build side, read whole before anything else.
        let build = match &self.stage.join {
            Some(join) => Some(self.read_build(join).await?),
            None => None,
        };
        if let (Some(count), Some(build)) = (&self.metrics.build_rows, &build) {
            count.add(build.batches.iter().map(RecordBatch::num_rows).sum());
        }
        if permit.is_none() {
            self.metrics.busy.add(1);
            return match &build {
                // The CPU join, with the build side already read.
                Some(build) => {
                    let probe = Arc::clone(self.input.children()[1]);
                    let build = self.replay_build(build)?;
                    cpu_over(&self.cpu, &self.stage, vec![build, probe])?
                        .execute(self.partition, Arc::clone(&self.context))
                }
                None => self.cpu.execute(self.partition, Arc::clone(&self.context)),
            };
        }
        let rows = match self.stage.join {
            Some(_) => Arc::clone(self.input.children()[1]),
            None => Arc::clone(&self.input),
        }
        .execute(self.partition, Arc::clone(&self.context))?;
        let mut folder = Folder::new(&self.stage, &self.backend, self.fail_after);
        let outcome = folder
            .fold_all(
                rows,
                build.as_deref().map(|b| &b.batches),
                self.chunk_rows,
                &self.metrics,
            )
            .await;
        folder.report(&self.metrics);
        drop(permit);
        let (failure, rest) = match outcome {
            Ok(()) => {
                STAGES_COMPLETED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let batches = folder.output;
                return Ok(Box::pin(MemoryStream::try_new(
                    batches,
                    self.stage.output_schema.clone(),
                    None,
                )?));
            }
            Err(Stop::Input(error)) => return Err(error),
            Err(Stop::Device { error, rest }) => (error, rest),
        };
        tracing::info!(%failure, stage = self.stage.summary(), "the GPU stage goes on on the CPU");
        self.metrics.fallbacks.add(1);
        STAGES_FALLEN_BACK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // What the device folded before the failing chunk stays; the CPU
        // plan takes that chunk and the rest of the input.
        let mut leaves = Vec::new();
        if let Some(build) = &build {
            leaves.push(self.replay_build(build)?);
        }
        let probe_partitions = match self.stage.join {
            Some(_) => self.input.children()[1].output_partitioning(),
            None => self.input.output_partitioning(),
        }
        .partition_count();
        leaves.push(Arc::new(ReplayExec::new(rest, self.partition, probe_partitions)) as _);
        let cpu = cpu_over(&self.cpu, &self.stage, leaves)?
            .execute(self.partition, Arc::clone(&self.context))?;
        let done = futures::stream::iter(folder.output.into_iter().map(Ok));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.stage.output_schema.clone(),
            done.chain(cpu),
        )))
    }

    /// The join's build side: this partition's, or the one all partitions
    /// share.
    async fn read_build(&self, join: &JoinInput) -> DfResult<Arc<BuildSide>> {
        use datafusion::execution::memory_pool::MemoryConsumer;
        let plan = Arc::clone(self.input.children()[0]);
        let read = |partition: usize| {
            let context = Arc::clone(&self.context);
            let plan = Arc::clone(&plan);
            async move {
                // Counted in the memory pool as it arrives, as DataFusion's
                // join counts its build side.
                let reservation =
                    MemoryConsumer::new(format!("GpuStageExec[{partition}] build side"))
                        .register(context.memory_pool());
                let mut stream = plan.execute(partition, context)?;
                let mut batches = Vec::new();
                while let Some(batch) = stream.next().await.transpose()? {
                    reservation.try_grow(batch.get_array_memory_size())?;
                    batches.push(batch);
                }
                DfResult::Ok(Arc::new(BuildSide {
                    batches,
                    _reservation: reservation,
                }))
            }
        };
        if join.collect_left {
            self.shared_build
                .get_or_try_init(|| read(0))
                .await
                .map(Arc::clone)
        } else {
            read(self.partition).await
        }
    }

    /// The build side read, as a plan for the CPU join.
    fn replay_build(&self, build: &Arc<BuildSide>) -> DfResult<Arc<dyn ExecutionPlan>> {
        let plan = self.input.children()[0];
        let (partition, partitions) = match self.stage.join.as_ref().map(|j| j.collect_left) {
            Some(true) => (0, 1),
            _ => (self.partition, plan.output_partitioning().partition_count()),
        };
        let stream = MemoryStream::try_new(build.batches.clone(), plan.schema(), None)?;
        Ok(Arc::new(ReplayExec::new(
            Box::pin(stream),
            partition,
            partitions,
        )))
    }
}

/// A join stage's build side, read whole, and its share of the memory pool.
struct BuildSide {
    batches: Vec<RecordBatch>,
    _reservation: datafusion::execution::memory_pool::MemoryReservation,
}

/// The CPU plan of a stage (`cpu`, the `AggregateExec`) over `leaves` in the
/// place of its input: the plan the stage reads, or for a join the join's
/// two children (the join itself made anew, with no dynamic filter: its
/// partitions must not wait for the GPU stage's).
fn cpu_over(
    cpu: &Arc<dyn ExecutionPlan>,
    stage: &AggregateStage,
    leaves: Vec<Arc<dyn ExecutionPlan>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    fn rebuild(
        node: &Arc<dyn ExecutionPlan>,
        levels: usize,
        join: bool,
        leaves: &mut Option<Vec<Arc<dyn ExecutionPlan>>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut leaves_here = || {
            leaves
                .take()
                .ok_or_else(|| DataFusionError::Internal("a GPU stage's leaves, twice".into()))
        };
        if levels == 0 {
            if !join {
                let mut leaves = leaves_here()?;
                return leaves
                    .pop()
                    .ok_or_else(|| DataFusionError::Internal("a GPU stage's input".into()));
            }
            let hash_join = node.downcast_ref::<HashJoinExec>().ok_or_else(|| {
                DataFusionError::Internal("a GPU join stage over no hash join".into())
            })?;
            return hash_join
                .builder()
                .with_new_children(leaves_here()?)?
                .reset_state()
                .build_exec();
        }
        let child = rebuild(node.children()[0], levels - 1, join, leaves)?;
        Arc::clone(node).replace_children(vec![child], recompute())
    }
    let mut leaves = Some(leaves);
    let child = rebuild(
        cpu.children()[0],
        stage.depth,
        stage.join.is_some(),
        &mut leaves,
    )?;
    Arc::clone(cpu).replace_children(vec![child], recompute())
}

fn recompute() -> ReplaceChildrenOptions {
    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute)
}

/// One partition of a plan's input as the rest of a stream: where the CPU
/// goes on with what the GPU stage had not folded yet.
struct ReplayExec {
    stream: std::sync::Mutex<Option<SendableRecordBatchStream>>,
    partition: usize,
    properties: Arc<PlanProperties>,
}

impl ReplayExec {
    fn new(stream: SendableRecordBatchStream, partition: usize, partitions: usize) -> Self {
        use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
        use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
        let properties = PlanProperties::new(
            EquivalenceProperties::new(stream.schema()),
            Partitioning::UnknownPartitioning(partitions.max(partition + 1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            stream: std::sync::Mutex::new(Some(stream)),
            partition,
            properties: Arc::new(properties),
        }
    }
}

impl fmt::Debug for ReplayExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplayExec({})", self.partition)
    }
}

impl DisplayAs for ReplayExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ReplayExec: partition {}", self.partition)
    }
}

impl ExecutionPlan for ReplayExec {
    fn name(&self) -> &str {
        "ReplayExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
        )
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "a replayed input has no children".into(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let stream = match self.stream.lock() {
            Ok(mut stream) if partition == self.partition => stream.take(),
            _ => None,
        };
        stream.ok_or_else(|| {
            DataFusionError::Internal(format!(
                "partition {partition} of a replayed input (partition {}), or read twice",
                self.partition
            ))
        })
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
    /// A join stage's build rows.
    build_rows: Option<Count>,
    busy: Count,
}

impl StageMetrics {
    fn new(set: &ExecutionPlanMetricsSet, partition: usize, join: bool) -> Self {
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
            build_rows: join.then(|| count("gpu_build_rows")),
            busy: count("gpu_busy_ran_on_cpu"),
        }
    }
}

/// Why a stage's fold stopped.
enum Stop {
    /// The input failed: that is the query's error.
    Input(DataFusionError),
    /// The device could not go on: the CPU takes `rest`, the input from the
    /// chunk it failed on (every row before it is in the folder's output).
    Device {
        error: GpuError,
        rest: SendableRecordBatchStream,
    },
}

/// The device failed where the CPU cannot take over (what it had folded is
/// lost with it): the query's error.
fn device_lost(error: GpuError) -> Stop {
    Stop::Input(DataFusionError::External(Box::new(error)))
}

/// A stage's hash table and what it has emitted, chunk by chunk: every chunk
/// is folded in whole or not at all (the table is checkpointed before each).
struct Folder<'a> {
    stage: &'a AggregateStage,
    backend: &'a Backend,
    meta: Vec<i32>,
    capacity: usize,
    table: Option<crate::backend::AggregateTable>,
    join: Option<(crate::backend::JoinTable, RecordBatch)>,
    dictionaries: Dictionaries,
    output: Vec<RecordBatch>,
    /// Figures of tables replaced by larger ones.
    figures: crate::backend::Figures,
    launches: usize,
    fail_after: Option<usize>,
}

impl<'a> Folder<'a> {
    fn new(stage: &'a AggregateStage, backend: &'a Backend, fail_after: Option<usize>) -> Self {
        Self {
            stage,
            backend,
            meta: stage.meta(),
            capacity: CAPACITY_START,
            table: None,
            join: None,
            dictionaries: Dictionaries::new(stage),
            output: Vec::new(),
            figures: crate::backend::Figures::default(),
            launches: 0,
            fail_after,
        }
    }

    /// Folds in the whole input (and, for a join, builds its table from
    /// `build` first).
    async fn fold_all(
        &mut self,
        mut input: SendableRecordBatchStream,
        build: Option<&Vec<RecordBatch>>,
        chunk_rows: usize,
        metrics: &StageMetrics,
    ) -> std::result::Result<(), Stop> {
        let schema = input.schema();
        if let Err(error) = self.start(build) {
            // Nothing folded: the CPU takes the whole input.
            self.table = None;
            return Err(Stop::Device { error, rest: input });
        }
        let mut pending: Vec<RecordBatch> = Vec::new();
        let mut pending_rows = 0;
        loop {
            let next = input.next().await.transpose().map_err(Stop::Input)?;
            if let Some(batch) = &next {
                pending_rows += batch.num_rows();
                pending.push(batch.clone());
            }
            let full = pending_rows >= chunk_rows;
            if (full || next.is_none()) && pending_rows > 0 {
                let chunk = concat_batches(&schema, &pending).map_err(|e| Stop::Input(e.into()))?;
                pending.clear();
                pending_rows = 0;
                metrics.rows.add(chunk.num_rows());
                if let Err(error) = self.fold_chunk(&chunk) {
                    // The table as it was before this chunk goes out; the
                    // chunk and the rest of the input go to the CPU.
                    self.empty_after_failure().map_err(device_lost)?;
                    let rest = futures::stream::once(async move { Ok(chunk) }).chain(input);
                    return Err(Stop::Device {
                        error,
                        rest: Box::pin(RecordBatchStreamAdapter::new(schema, rest)),
                    });
                }
            }
            if next.is_none() {
                break;
            }
        }
        if let Some(table) = &mut self.table {
            let rows = read_out(self.stage, table, &self.dictionaries).map_err(device_lost)?;
            self.output.extend(rows);
        }
        Ok(())
    }

    /// The first table, and a join's build side on the device.
    fn start(&mut self, build: Option<&Vec<RecordBatch>>) -> Result<()> {
        let mut table = self.backend.aggregate_table(
            self.stage.shape(self.capacity),
            &self.meta,
            &self.stage.programs,
        )?;
        table.checkpoint()?;
        self.table = Some(table);
        if let (Some(join), Some(build)) = (&self.stage.join, build) {
            let schema = build.first().map(RecordBatch::schema).unwrap_or_else(|| {
                Arc::new(arrow::datatypes::Schema::new(
                    self.stage.input_schema.fields()[..join.build_width].to_vec(),
                ))
            });
            let build = concat_batches(&schema, build)
                .map_err(|e| GpuError::unsupported(format!("the build side: {e}")))?;
            if build.num_rows() >= i32::MAX as usize / 2 {
                return Err(GpuError::unsupported("a build side of 2^30 rows or more"));
            }
            let key = build.column(join.build_key);
            let bits = key.nulls().map(|n| n.inner().sliced());
            let table = self.backend.join_table(
                crate::backend::join_key(key.as_ref(), bits.as_ref())?,
                build.num_rows(),
            )?;
            self.join = Some((table, build));
        }
        Ok(())
    }

    /// Folds in one chunk, whole or not at all.
    fn fold_chunk(&mut self, chunk: &RecordBatch) -> Result<()> {
        let stage = self.stage;
        let Some(table) = self.table.as_mut() else {
            return Err(GpuError::Kernel {
                what: "a fold without a table".into(),
            });
        };
        table.checkpoint()?;
        let (columns, pairs, build_width) = match (&mut self.join, &stage.join) {
            (Some((join, build)), Some(input)) => {
                let key = chunk.column(input.probe_key);
                let bits = key.nulls().map(|n| n.inner().sliced());
                let pairs = join.probe(
                    crate::backend::join_key(key.as_ref(), bits.as_ref())?,
                    chunk.num_rows(),
                )?;
                if pairs.is_empty() {
                    return Ok(());
                }
                let columns: Vec<ArrayRef> = build
                    .columns()
                    .iter()
                    .chain(chunk.columns())
                    .cloned()
                    .collect();
                (columns, Some(pairs), input.build_width)
            }
            _ => (chunk.columns().to_vec(), None, 0),
        };
        let encoded = Encoded::new(stage, &columns, &mut self.dictionaries)?;
        let host = encoded.chunk(stage, chunk.num_rows(), build_width);
        let rows = match &pairs {
            Some(pairs) => Rows::Pairs(pairs),
            None => Rows::All,
        };
        while let Some(table) = self.table.as_mut() {
            self.launches += 1;
            let folded = table.fold(&host, rows)?;
            if self.fail_after.is_some_and(|n| self.launches >= n) {
                return Err(GpuError::Kernel {
                    what: "a failure injected by a test".into(),
                });
            }
            if folded.overflow.is_empty() {
                // Half full: emptied now, so the next chunk finds free slots.
                if !stage.keys.is_empty() && folded.groups * 2 > table.shape().capacity {
                    self.output
                        .extend(read_out(stage, table, &self.dictionaries)?);
                }
                return Ok(());
            }
            // Some groups found no slot: the table as it was before this
            // chunk goes out, and the whole chunk goes again into a larger,
            // empty table.
            table.restore()?;
            self.output
                .extend(read_out(stage, table, &self.dictionaries)?);
            table.checkpoint()?;
            if self.capacity >= CAPACITY_MAX {
                return Err(GpuError::unsupported(format!(
                    "a chunk of more groups than {CAPACITY_MAX} slots hold"
                )));
            }
            self.capacity = (self.capacity * 4).min(CAPACITY_MAX);
            let larger = self.backend.aggregate_table(
                stage.shape(self.capacity),
                &self.meta,
                &stage.programs,
            )?;
            if let Some(old) = self.table.replace(larger) {
                self.figures.add(&old.figures());
            }
            if let Some(table) = self.table.as_mut() {
                table.checkpoint()?;
            }
        }
        Ok(())
    }

    /// After a failed chunk: the table as it was before it, emitted.
    fn empty_after_failure(&mut self) -> Result<()> {
        if let Some(table) = self.table.as_mut() {
            table.restore()?;
            self.output
                .extend(read_out(self.stage, table, &self.dictionaries)?);
        }
        Ok(())
    }

    fn report(&self, metrics: &StageMetrics) {
        let mut figures = self.figures;
        if let Some(table) = &self.table {
            figures.add(&table.figures());
        }
        metrics.launches.add(figures.launches as usize);
        metrics.bytes_in.add(figures.bytes_in as usize);
        metrics.bytes_out.add(figures.bytes_out as usize);
        metrics
            .copy_time
            .add_duration(figures.copy_in + figures.copy_out);
        metrics.kernel_time.add_duration(figures.kernel);
    }
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
    /// `input`: the stage's input columns (over a join, the build side's
    /// then the probe side's).
    fn new(
        stage: &AggregateStage,
        input: &[ArrayRef],
        dictionaries: &mut Dictionaries,
    ) -> Result<Self> {
        let mut columns = vec![None; input.len()];
        let mut validity = vec![None; input.len()];
        for &c in &stage.read_columns {
            let array = &input[c];
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
            let strings = arrow::compute::cast(&input[key.column], &DataType::Utf8)
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

    /// The chunk for a launch: over a join, the first `build_width` columns
    /// are the build side's.
    fn chunk(&self, stage: &AggregateStage, rows: usize, build_width: usize) -> Chunk<'_> {
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
        let build_side = if build_width == 0 {
            Vec::new()
        } else {
            let codes_build = stage
                .keys
                .iter()
                .filter(|k| k.encoding == KeyEncoding::Dictionary)
                .map(|k| k.column < build_width);
            (0..self.columns.len())
                .map(|c| c < build_width)
                .chain(codes_build)
                .collect()
        };
        Chunk {
            rows,
            columns,
            build_side,
        }
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
