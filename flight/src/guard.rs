//! What every fragment an executor runs is wrapped in: [`TaskGuardExec`].
//!
//! It counts the task streams that are open (the executor reports the figure,
//! so a test can see an executor go idle after a cancel), turns a panic inside
//! the fragment into an error of the query that caused it (the executor and the
//! other queries on it carry on), and, on an executor started with fault
//! injection, fails tasks on request ([`crate::faults`]).
//!
//! The leaves of a fragment check the cancellation flag of their query attempt
//! ([`Cancellations`], set by the coordinator) at every batch.
//!
//! It also lets go of the fragment once every partition has been executed and
//! every stream of it has ended or been dropped. Operators keep state in their
//! plan nodes (a hash join's build side, say) and `datafusion-distributed`
//! keeps a finished task's plan in a cache that is only swept when later
//! requests arrive: without this, an executor would hold a finished or
//! cancelled query's memory until its next query.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use datafusion_distributed::BroadcastExec;
use futures::Stream;

use crate::faults::{Faults, TaskFault};

/// Counts of an executor's task streams.
#[derive(Debug, Default)]
pub struct TaskGauge {
    running: AtomicU64,
    closed: AtomicU64,
}

impl TaskGauge {
    /// Task streams open right now.
    pub fn running(&self) -> u64 {
        self.running.load(Ordering::Relaxed)
    }

    /// Task streams that have ended or been dropped since start.
    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }
}

/// The cancellation flags of the query attempts an executor runs tasks for,
/// by attempt id. The coordinator cancels an attempt it gave up on (the client
/// cancelled or went away, a timeout, a failure elsewhere); every leaf of the
/// attempt's fragments then fails at its next batch, so operators stop within
/// one batch of work instead of when their input next waits.
#[derive(Debug, Default)]
pub struct Cancellations {
    flags: Mutex<HashMap<String, (Arc<AtomicBool>, Instant)>>,
}

/// Flags no fragment holds any more are forgotten after this long (a cancel
/// may arrive before the attempt's fragments do).
const CANCELLATION_KEPT: Duration = Duration::from_secs(60);

impl Cancellations {
    /// The flag of `attempt`, created unset if new.
    pub fn flag(&self, attempt: &str) -> Arc<AtomicBool> {
        let mut flags = self.flags.lock().unwrap_or_else(|p| p.into_inner());
        if flags.len() > 1024 {
            flags.retain(|_, (flag, at)| {
                Arc::strong_count(flag) > 1 || at.elapsed() < CANCELLATION_KEPT
            });
        }
        let (flag, at) = flags
            .entry(attempt.to_string())
            .or_insert_with(|| (Arc::new(AtomicBool::new(false)), Instant::now()));
        *at = Instant::now();
        Arc::clone(flag)
    }

    /// Cancels `attempt`, whether its fragments are here yet or not.
    pub fn cancel(&self, attempt: &str) {
        self.flag(attempt).store(true, Ordering::SeqCst);
    }
}

/// Wraps a fragment the way [`TaskGuardExec`] says, keeping a producer head
/// (`RepartitionExec` or `BroadcastExec` at the root) on top: the exchange
/// replaces that head when it serves the task, and must find it there. Every
/// leaf gets a [`CancelCheckExec`] watching `cancelled`.
pub fn guard_fragment(
    plan: Arc<dyn ExecutionPlan>,
    gauge: &Arc<TaskGauge>,
    faults: &Arc<Faults>,
    cancelled: Arc<AtomicBool>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let plan = check_leaves(plan, &cancelled)?;
    let has_head = plan.is::<RepartitionExec>() || plan.is::<BroadcastExec>();
    if has_head {
        let input = Arc::clone(plan.children()[0]);
        let guarded = Arc::new(TaskGuardExec::new(input, gauge, faults));
        return plan.replace_children(
            vec![guarded],
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
        );
    }
    Ok(Arc::new(TaskGuardExec::new(plan, gauge, faults)))
}

/// Puts a [`CancelCheckExec`] over every leaf (scans, and the exchange reads
/// that stand for other stages).
fn check_leaves(
    plan: Arc<dyn ExecutionPlan>,
    cancelled: &Arc<AtomicBool>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
    if children.is_empty() {
        return Ok(Arc::new(CancelCheckExec {
            input: plan,
            cancelled: Arc::clone(cancelled),
        }));
    }
    let checked = children
        .into_iter()
        .map(|child| check_leaves(child, cancelled))
        .collect::<Result<Vec<_>>>()?;
    // The children keep their properties, so the node need not recompute its own.
    plan.replace_children(
        checked,
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
    )
}

/// A leaf in the place of the leaf it wraps (same children, none; same
/// properties and metrics, so that the fragment keeps its shape for the
/// exchange's metric collection): once its attempt is cancelled, its stream
/// fails at the next batch.
#[derive(Debug)]
pub struct CancelCheckExec {
    input: Arc<dyn ExecutionPlan>,
    cancelled: Arc<AtomicBool>,
}

impl DisplayAs for CancelCheckExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "CancelCheckExec")
    }
}

impl ExecutionPlan for CancelCheckExec {
    fn name(&self) -> &str {
        "CancelCheckExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.input.children()
    }

    fn metrics(&self) -> Option<MetricsSet> {
        self.input.metrics()
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.input.apply_expressions(f)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            return Ok(self);
        }
        Ok(Arc::new(Self {
            input: Arc::clone(&self.input).replace_children(children, options)?,
            cancelled: Arc::clone(&self.cancelled),
        }))
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let inner = self.input.execute(partition, context)?;
        Ok(Box::pin(CancelCheckStream {
            schema: inner.schema(),
            inner: Some(inner),
            cancelled: Arc::clone(&self.cancelled),
        }))
    }
}

struct CancelCheckStream {
    schema: SchemaRef,
    inner: Option<SendableRecordBatchStream>,
    cancelled: Arc<AtomicBool>,
}

impl Stream for CancelCheckStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.cancelled.load(Ordering::Relaxed) {
            if self.inner.take().is_some() {
                return Poll::Ready(Some(Err(DataFusionError::Execution(
                    "the query was cancelled".into(),
                ))));
            }
            return Poll::Ready(None);
        }
        match self.inner.as_mut() {
            Some(inner) => inner.as_mut().poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

impl RecordBatchStream for CancelCheckStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

/// A node in the place of a fragment's root (or of its producer head's
/// input): counts its open streams, contains panics, injects requested task
/// failures, releases the fragment when done.
///
/// It keeps the fragment's shape for plan walkers, the exchange's metric
/// collection above all (it pairs each node of the coordinator's stage with
/// the executor's node at the same place): it has the root's properties and
/// metrics, and as children [`ShadowExec`]s of the root's children, which
/// report the live nodes' metrics while the fragment runs and a copy of them
/// once it is released.
#[derive(Debug)]
pub struct TaskGuardExec {
    properties: Arc<PlanProperties>,
    schema: SchemaRef,
    /// The root's metrics.
    own: Arc<ShadowMetrics>,
    /// Shadows of the root's children.
    children: Vec<Arc<dyn ExecutionPlan>>,
    live: Arc<Mutex<Live>>,
    gauge: Arc<TaskGauge>,
    faults: Arc<Faults>,
}

/// The executed fragment and how far its execution got.
#[derive(Debug)]
struct Live {
    plan: Option<Arc<dyn ExecutionPlan>>,
    executed: Vec<bool>,
    open: usize,
    /// Every node's metrics, kept before the fragment goes.
    shadows: Vec<Arc<ShadowMetrics>>,
}

impl Live {
    /// Drops the fragment once nothing more can be asked of it.
    fn release_if_done(&mut self) {
        if self.open == 0 && self.executed.iter().all(|e| *e) && self.plan.is_some() {
            for shadow in &self.shadows {
                shadow.keep();
            }
            self.plan = None;
        }
    }
}

/// A node's metrics: the live node's while it exists, then a copy.
#[derive(Debug)]
pub struct ShadowMetrics {
    live: Weak<dyn ExecutionPlan>,
    kept: Mutex<Option<MetricsSet>>,
}

impl ShadowMetrics {
    fn new(node: &Arc<dyn ExecutionPlan>) -> Arc<Self> {
        Arc::new(Self {
            live: Arc::downgrade(node),
            kept: Mutex::new(None),
        })
    }

    fn get(&self) -> Option<MetricsSet> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone();
        kept.or_else(|| self.live.upgrade().and_then(|node| node.metrics()))
    }

    fn keep(&self) {
        if let Some(node) = self.live.upgrade() {
            *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = node.metrics();
        }
    }
}

/// What plan walkers see of a node inside a guarded fragment: its name,
/// properties and metrics, and its children's shadows. It holds none of the
/// node's state and never runs.
#[derive(Debug)]
pub struct ShadowExec {
    name: String,
    properties: Arc<PlanProperties>,
    metrics: Arc<ShadowMetrics>,
    children: Vec<Arc<dyn ExecutionPlan>>,
}

/// Shadows of `nodes` and their subtrees; their metrics go to `all`.
fn shadows_of(
    nodes: Vec<&Arc<dyn ExecutionPlan>>,
    all: &mut Vec<Arc<ShadowMetrics>>,
) -> Vec<Arc<dyn ExecutionPlan>> {
    nodes
        .into_iter()
        .map(|node| {
            let metrics = ShadowMetrics::new(node);
            all.push(Arc::clone(&metrics));
            Arc::new(ShadowExec {
                name: node.name().to_string(),
                properties: Arc::clone(node.properties()),
                metrics,
                children: shadows_of(node.children(), all),
            }) as Arc<dyn ExecutionPlan>
        })
        .collect()
}

impl DisplayAs for ShadowExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} (guarded)", self.name)
    }
}

impl ExecutionPlan for ShadowExec {
    fn name(&self) -> &str {
        &self.name
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.children.iter().collect()
    }

    fn metrics(&self) -> Option<MetricsSet> {
        self.metrics.get()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self {
            name: self.name.clone(),
            properties: Arc::clone(&self.properties),
            metrics: Arc::clone(&self.metrics),
            children,
        }))
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
        )
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        Err(DataFusionError::Internal(format!(
            "partition {partition} of {}, a guarded fragment's shadow, was executed",
            self.name
        )))
    }
}

impl TaskGuardExec {
    fn new(input: Arc<dyn ExecutionPlan>, gauge: &Arc<TaskGauge>, faults: &Arc<Faults>) -> Self {
        let partitions = input.output_partitioning().partition_count();
        let own = ShadowMetrics::new(&input);
        let mut shadows = vec![Arc::clone(&own)];
        let children = shadows_of(input.children(), &mut shadows);
        Self {
            properties: Arc::clone(input.properties()),
            schema: input.schema(),
            own,
            children,
            live: Arc::new(Mutex::new(Live {
                plan: Some(input),
                executed: vec![false; partitions],
                open: 0,
                shadows,
            })),
            gauge: Arc::clone(gauge),
            faults: Arc::clone(faults),
        }
    }
}

impl DisplayAs for TaskGuardExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TaskGuardExec")
    }
}

impl ExecutionPlan for TaskGuardExec {
    fn name(&self) -> &str {
        "TaskGuardExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.children.iter().collect()
    }

    fn metrics(&self) -> Option<MetricsSet> {
        self.own.get()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Walkers that rebuild the tree hand the shadows back unchanged.
        let same = children.len() == self.children.len()
            && children
                .iter()
                .zip(&self.children)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if same {
            return Ok(self);
        }
        Err(DataFusionError::Internal(
            "a guarded fragment's children cannot be replaced".into(),
        ))
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = Arc::clone(&self.schema);
        let plan = {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            let Some(plan) = live.plan.clone() else {
                return Err(DataFusionError::Internal(format!(
                    "partition {partition} of a task that has already finished"
                )));
            };
            if let Some(executed) = live.executed.get_mut(partition) {
                *executed = true;
            }
            live.open += 1;
            plan
        };
        // From here on the stream (or its drop) accounts for the open count.
        let mut stream = GuardedStream {
            schema,
            inner: None,
            injected: self.faults.task_fault(),
            gauge: Arc::clone(&self.gauge),
            live: Arc::clone(&self.live),
        };
        self.gauge.running.fetch_add(1, Ordering::Relaxed);
        if stream.injected.is_none() {
            stream.inner = Some(contain(|| plan.execute(partition, context))?);
        }
        Ok(Box::pin(stream))
    }
}

/// Runs `f`, turning a panic into an execution error.
fn contain<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| Err(panicked(payload)))
}

fn panicked(payload: Box<dyn Any + Send>) -> DataFusionError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".to_string());
    tracing::error!(
        message,
        "a task panicked; its query fails, the executor goes on"
    );
    DataFusionError::Execution(format!("a task panicked: {message}"))
}

struct GuardedStream {
    schema: SchemaRef,
    /// `None` once finished (or failed), and for an injected failure.
    inner: Option<SendableRecordBatchStream>,
    injected: Option<TaskFault>,
    gauge: Arc<TaskGauge>,
    live: Arc<Mutex<Live>>,
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        // The operator state the stream holds goes before the fragment does.
        self.inner = None;
        self.gauge.running.fetch_sub(1, Ordering::Relaxed);
        self.gauge.closed.fetch_add(1, Ordering::Relaxed);
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.open -= 1;
        live.release_if_done();
    }
}

impl Stream for GuardedStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.injected.take() {
            Some(TaskFault::Fail(error)) => return Poll::Ready(Some(Err(error))),
            Some(TaskFault::Stall) => {
                // Never woken: the task does nothing until it is dropped.
                self.injected = Some(TaskFault::Stall);
                return Poll::Pending;
            }
            None => {}
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll_next(cx)));
        match polled {
            Ok(Poll::Ready(None)) => {
                // Release the fragment's resources as soon as it is done.
                self.inner = None;
                Poll::Ready(None)
            }
            Ok(other) => other,
            Err(payload) => {
                self.inner = None;
                Poll::Ready(Some(Err(panicked(payload))))
            }
        }
    }
}

impl RecordBatchStream for GuardedStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}
