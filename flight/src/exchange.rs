//! Our seam around `datafusion-distributed`: everything that knows its API lives
//! here, so the exchange layer can be replaced without touching the coordinator or
//! the executor.
//!
//! - [`LiveExecutors`] feeds the planner the executors that are alive right now.
//! - [`with_distributed_planning`] turns a session into a coordinating one.
//! - [`ExchangeWorker`] is the executor side: it runs fragments and counts tasks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::catalog::memory::DataSourceExec;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_distributed::{
    display_plan_ascii, CompressionType, DesiredTaskCountEvent, DesiredTaskCountEventResponse,
    DesiredTaskCountHandler, DistributedConfig, DistributedExec, DistributedExt,
    SessionStateBuilderExt, Worker, WorkerQueryContext, WorkerResolver, WorkerSessionBuilder,
};
use sql::config::QueryConfig;
use url::Url;

use crate::control::ExecutorStats;

/// The worker URLs of the executors that are alive, shared between the registry
/// that updates it and the planner that reads it.
#[derive(Debug, Clone, Default)]
pub struct LiveExecutors {
    urls: Arc<RwLock<Vec<Url>>>,
}

impl LiveExecutors {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the set; the order given is the order tasks are routed in.
    pub fn replace(&self, urls: Vec<Url>) {
        *self.urls.write().unwrap_or_else(|p| p.into_inner()) = urls;
    }

    pub fn snapshot(&self) -> Vec<Url> {
        self.urls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn len(&self) -> usize {
        self.urls.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl WorkerResolver for LiveExecutors {
    fn get_urls(&self) -> Result<Vec<Url>> {
        Ok(self.snapshot())
    }
}

/// Makes a session plan every query into stages that run on `executors`.
pub fn with_distributed_planning(
    builder: SessionStateBuilder,
    executors: LiveExecutors,
    query: &QueryConfig,
) -> Result<SessionStateBuilder> {
    let compression = match query.exchange_compression.as_str() {
        "lz4" => Some(CompressionType::LZ4_FRAME),
        "zstd" => Some(CompressionType::ZSTD),
        _ => None,
    };
    builder
        .with_distributed_worker_resolver(executors.clone())
        .with_distributed_planner()
        .with_distributed_file_scan_config_bytes_per_partition(query.scan_bytes_per_partition)?
        .with_distributed_compression(compression)?
        .with_distributed_desired_task_count_handler(SpreadLeafTasks { executors })
        .with_distributed_metrics_collection(false)
}

/// Fits the stage width to the cluster: up to one task per live executor, and at
/// least two, so that even a one-executor cluster runs table scans remotely (the
/// planner folds a one-task stage under a one-task consumer into the consumer).
/// A width the session chose (`SET distributed.max_tasks_per_stage = n`, n > 0) is
/// kept: `config` is a statement's copy, and the session's own value stays 0
/// ("fit to the cluster") unless a user set it.
///
/// A task plans at least two partitions. With one, DataFusion aggregates in a
/// single step straight over the scan (no repartition between a partial and a
/// final step), and the planner, splitting that scan over tasks, would have
/// each task aggregate only its share of the rows.
pub fn fit_task_limits(config: &mut SessionConfig, live_executors: usize) -> Result<()> {
    if config.target_partitions() < 2 {
        config.options_mut().execution.target_partitions = 2;
    }
    let d_cfg = DistributedConfig::from_config_options_mut(config.options_mut())?;
    if d_cfg.max_tasks_per_stage == 0 {
        d_cfg.max_tasks_per_stage = live_executors.max(2);
    }
    Ok(())
}

/// The staged plan as text: stages, tasks per stage and the exchanges between them.
pub fn display_staged(plan: &dyn ExecutionPlan) -> String {
    display_plan_ascii(plan, false)
}

/// Whether a physical plan runs (at least partly) on executors.
pub fn is_distributed(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.is::<DistributedExec>() || plan.children().iter().any(|child| is_distributed(child))
}

/// Whether a physical plan reads files (a table scan).
pub fn reads_files(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let here = plan
        .downcast_ref::<DataSourceExec>()
        .and_then(|dse| dse.data_source().downcast_ref::<FileScanConfig>())
        .is_some();
    here || plan.children().iter().any(|child| reads_files(child))
}

/// Sizes leaf stages: as many tasks as the input bytes call for, but never fewer
/// than the live executors, so every table scan runs on executors and is spread
/// over all of them even when the data is small.
struct SpreadLeafTasks {
    executors: LiveExecutors,
}

#[async_trait]
impl DesiredTaskCountHandler for SpreadLeafTasks {
    async fn handle(
        &self,
        ev: DesiredTaskCountEvent<'_>,
    ) -> Option<Result<DesiredTaskCountEventResponse>> {
        let dse = ev.plan.downcast_ref::<DataSourceExec>()?;
        let scan = dse.data_source().downcast_ref::<FileScanConfig>()?;
        let bytes: u64 = scan
            .file_groups
            .iter()
            .flat_map(|group| group.files())
            .map(|file| file.effective_size())
            .sum();
        let per_partition = DistributedConfig::from_session_config(ev.session_config)
            .map(|c| c.file_scan_config_bytes_per_partition)
            .unwrap_or(16 * 1024 * 1024)
            .max(1) as u64;
        let partitions = ev.session_config.target_partitions().max(1) as u64;
        let by_size = bytes.div_ceil(per_partition).div_ceil(partitions) as usize;
        let tasks = by_size.max(self.executors.len()).max(2);
        Some(Ok(DesiredTaskCountEventResponse::desired(tasks)))
    }
}

/// Counters of the work an executor did.
#[derive(Debug, Default)]
pub struct TaskCounters {
    tasks_started: AtomicU64,
}

impl TaskCounters {
    pub fn stats(&self) -> ExecutorStats {
        ExecutorStats {
            tasks_started: self.tasks_started.load(Ordering::Relaxed),
        }
    }
}

/// The executor side of the exchange: runs the fragments the coordinator sends and
/// serves their output to other executors and to the coordinator.
pub struct ExchangeWorker {
    worker: Worker,
    counters: Arc<TaskCounters>,
}

impl ExchangeWorker {
    pub fn new(runtime: Arc<RuntimeEnv>) -> Self {
        let counters = Arc::new(TaskCounters::default());
        let template = SessionStateBuilder::new()
            .with_default_features()
            .with_runtime_env(Arc::clone(&runtime))
            .build();
        let worker = Worker::from_session_builder(CountingSessionBuilder {
            counters: Arc::clone(&counters),
            template,
        })
        .with_runtime_env(runtime)
        .with_version(env!("CARGO_PKG_VERSION"));
        Self { worker, counters }
    }

    pub fn counters(&self) -> Arc<TaskCounters> {
        Arc::clone(&self.counters)
    }

    /// Starts a router holding the worker service.
    pub fn router(self, server: &mut tonic::transport::Server) -> tonic::transport::server::Router {
        server.add_service(self.worker.into_worker_server())
    }
}

struct CountingSessionBuilder {
    counters: Arc<TaskCounters>,
    /// DataFusion's default functions and planners over the worker's runtime,
    /// built once. A task gets a copy with its own configuration: building a
    /// state registers every function anew, a tenth of a trivial task's cost.
    template: SessionState,
}

#[async_trait]
impl WorkerSessionBuilder for CountingSessionBuilder {
    async fn build_session_state(
        &self,
        ctx: WorkerQueryContext,
    ) -> std::result::Result<SessionState, DataFusionError> {
        // Called once per task the coordinator sends here.
        self.counters.tasks_started.fetch_add(1, Ordering::Relaxed);
        let mut builder = ctx.builder;
        let Some(config) = builder.config().take() else {
            return Ok(builder.build());
        };
        let mut state = self.template.clone();
        *state.config_mut() = config;
        Ok(state)
    }
}
