//! Our seam around `datafusion-distributed`: everything that knows its API lives
//! here, so the exchange layer can be replaced without touching the coordinator or
//! the executor.
//!
//! - [`LiveExecutors`] feeds the planner the executors that are alive right now.
//! - [`with_distributed_planning`] turns a session into a coordinating one.
//! - [`ExchangeWorker`] is the executor side: it runs fragments and counts tasks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::Schema;
use datafusion::catalog::memory::DataSourceExec;
use datafusion::config::ConfigOptions;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::MemoryLimit;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_distributed::{
    display_plan_ascii, CompressionType, DesiredTaskCountEvent, DesiredTaskCountEventResponse,
    DesiredTaskCountHandler, DistributedConfig, DistributedExec, DistributedExt, MaybeEncoded,
    SessionStateBuilderExt, SetPlanRequest, TaskKey, Worker, WorkerPlanRewriteEvent,
    WorkerPlanRewriteEventResponse, WorkerQueryContext, WorkerResolver, WorkerSessionBuilder,
};
use futures::StreamExt;
use sql::config::QueryConfig;
use url::Url;

use crate::channels::{ExchangeChannels, QueryFootprint};
use crate::control::ExecutorStats;
use crate::faults::{ExchangeFaultLayer, Faults};
use crate::guard::{guard_fragment, Cancellations, TaskGauge};

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

/// Makes a session plan every query into stages that run on `executors`,
/// reached through `channels`.
pub fn with_distributed_planning(
    builder: SessionStateBuilder,
    executors: LiveExecutors,
    channels: ExchangeChannels,
    query: &QueryConfig,
) -> Result<SessionStateBuilder> {
    let compression = match query.exchange_compression.as_str() {
        "lz4" => Some(CompressionType::LZ4_FRAME),
        "zstd" => Some(CompressionType::ZSTD),
        _ => None,
    };
    builder
        .with_distributed_worker_resolver(executors.clone())
        .with_distributed_channel_resolver(channels)
        .with_distributed_planner()
        .with_distributed_file_scan_config_bytes_per_partition(query.scan_bytes_per_partition)?
        .with_distributed_compression(compression)?
        .with_distributed_worker_connection_buffer_budget_bytes(query.exchange_buffer_bytes)?
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

/// Gives one statement's configuration its own channel resolver (sharing the
/// connections of `channels`), and returns the footprint it records: every
/// executor the statement's plan reaches.
pub fn track_query(config: &mut SessionConfig, channels: &ExchangeChannels) -> Arc<QueryFootprint> {
    let (resolver, footprint) = channels.for_query();
    config.set_distributed_channel_resolver(resolver);
    footprint
}

/// Makes every task of a statement carry the statement's execution options
/// that differ from DataFusion's defaults (`SET datafusion.execution.batch_size
/// = ...`): `datafusion-distributed` carries only its own options to executors,
/// which would otherwise run every fragment with defaults. Call it before the
/// statement is planned physically, for statements that run on executors.
///
/// Tasks also carry `attempt`, the id under which the coordinator cancels them
/// ([`cancel_attempt`]).
pub fn send_execution_options(config: &mut SessionConfig, attempt: &str) -> Result<()> {
    static DEFAULTS: std::sync::OnceLock<std::collections::HashMap<String, Option<String>>> =
        std::sync::OnceLock::new();
    let defaults = DEFAULTS.get_or_init(|| {
        ConfigOptions::default()
            .entries()
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect()
    });
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::try_from(attempt) {
        headers.insert(ATTEMPT_HEADER, value);
    }
    for entry in config.options().entries() {
        let propagated = EXECUTOR_OPTION_PREFIXES
            .iter()
            .any(|prefix| entry.key.starts_with(prefix));
        let (true, Some(value)) = (propagated, entry.value) else {
            continue;
        };
        if defaults.get(&entry.key) == Some(&Some(value.clone())) {
            continue;
        }
        let name = format!("{OPTION_HEADER_PREFIX}{}", entry.key);
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::try_from(name),
            http::HeaderValue::try_from(value),
        ) {
            headers.insert(name, value);
        }
    }
    // Flotilla's own settings (an extension: its entries' keys lack the
    // prefix), all of them.
    for (prefix, extension) in config.options().extensions.iter() {
        if prefix != FLOTILLA_PREFIX {
            continue;
        }
        for entry in extension.entries() {
            let Some(value) = entry.value else { continue };
            let name = format!("{OPTION_HEADER_PREFIX}{prefix}.{}", entry.key);
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::try_from(name),
                http::HeaderValue::try_from(value),
            ) {
                headers.insert(name, value);
            }
        }
    }
    config.set_distributed_passthrough_headers(headers)
}

/// Carries a task's attempt id.
const ATTEMPT_HEADER: &str = "x-flotilla-attempt";

/// Tells the executors at `urls` to stop every task of `attempt` (fire and
/// forget: an executor that does not answer within a second is skipped).
pub async fn cancel_attempt(urls: &[Url], attempt: &str) {
    let body = crate::control::CancelRequest {
        attempt: attempt.to_string(),
    };
    let calls = urls.iter().map(|url| {
        let body = body.clone();
        async move {
            if let Ok(client) = crate::control::ControlClient::new(url.as_str(), CANCEL_TIMEOUT) {
                let _ = client
                    .call::<_, serde::de::IgnoredAny>(crate::control::actions::CANCEL, &body)
                    .await;
            }
        }
    });
    futures::future::join_all(calls).await;
}

/// Time an executor has to acknowledge a cancel.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(1);

/// Options that shape how a fragment runs (and not only how it is planned).
const EXECUTOR_OPTION_PREFIXES: [&str; 2] = ["datafusion.execution.", "flotilla."];
/// The prefix of Flotilla's own session settings (`sql::session::FlotillaOptions`).
const FLOTILLA_PREFIX: &str = "flotilla";
/// Header that carries one option to executors: the prefix, then the key.
const OPTION_HEADER_PREFIX: &str = "x-flotilla-option-";

/// Applies the options a coordinator sent with a task (see [`track_query`]).
fn apply_sent_options(config: &mut SessionConfig, headers: &http::HeaderMap) {
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(OPTION_HEADER_PREFIX) else {
            continue;
        };
        let allowed = EXECUTOR_OPTION_PREFIXES.iter().any(|p| key.starts_with(p));
        let Ok(value) = value.to_str() else { continue };
        if !allowed {
            continue;
        }
        if let Err(error) = config.options_mut().set(key, value) {
            tracing::warn!(key, value, %error, "option sent with a task not applied");
        }
    }
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
#[derive(Debug)]
pub struct TaskCounters {
    tasks_started: AtomicU64,
    gauge: Arc<TaskGauge>,
    runtime: Arc<RuntimeEnv>,
}

impl TaskCounters {
    pub fn stats(&self) -> ExecutorStats {
        let pool = &self.runtime.memory_pool;
        ExecutorStats {
            tasks_started: self.tasks_started.load(Ordering::Relaxed),
            tasks_running: self.gauge.running(),
            memory_reserved_bytes: pool.reserved() as u64,
            memory_pool_bytes: match pool.memory_limit() {
                MemoryLimit::Finite(bytes) => bytes as u64,
                _ => 0,
            },
            spill_bytes: self.runtime.disk_manager.used_disk_space(),
            cpu_time_ms: process_cpu_time_ms(),
            // The executor adds its GPU stages' counts.
            gpu_stages: 0,
            gpu_fallbacks: 0,
        }
    }
}

/// CPU time the threads that run fragments (the data-plane runtime's,
/// named `flotilla-data`) have used, from `/proc/self/task/*/stat`: work on
/// queries, and not the heartbeats and stats calls of the control plane.
fn process_cpu_time_ms() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(DATA_PLANE_THREAD) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ticks += field(11) + field(12);
    }
    ticks * 1000 / per_second
}

/// The name of the data-plane runtime's threads (set in `src/main.rs`).
pub const DATA_PLANE_THREAD: &str = "flotilla-data";

/// A rewrite an executor applies to every fragment it receives, before the
/// fragment runs, given the task's session settings (the GPU stage rule).
/// It must keep the plan's shape: the same nodes and edges, the same rows.
pub type FragmentRewrite = Arc<
    dyn Fn(Arc<dyn ExecutionPlan>, &SessionConfig) -> Result<Arc<dyn ExecutionPlan>> + Send + Sync,
>;

/// The executor side of the exchange: runs the fragments the coordinator sends and
/// serves their output to other executors and to the coordinator.
pub struct ExchangeWorker {
    worker: Worker,
    counters: Arc<TaskCounters>,
    faults: Arc<Faults>,
    gauge: Arc<TaskGauge>,
    cancellations: Arc<Cancellations>,
}

impl ExchangeWorker {
    /// A worker over `runtime` (memory pool, disk manager, object stores), whose
    /// own requests to other executors go through `channels`, and which
    /// applies `rewrites` to each fragment in order.
    pub fn new(
        runtime: Arc<RuntimeEnv>,
        channels: ExchangeChannels,
        faults: Arc<Faults>,
        rewrites: Vec<FragmentRewrite>,
    ) -> Self {
        let gauge = Arc::new(TaskGauge::default());
        let cancellations = Arc::new(Cancellations::default());
        let counters = Arc::new(TaskCounters {
            tasks_started: AtomicU64::new(0),
            gauge: Arc::clone(&gauge),
            runtime: Arc::clone(&runtime),
        });
        let mut template = SessionStateBuilder::new()
            .with_default_features()
            .with_runtime_env(Arc::clone(&runtime))
            .build();
        if faults.is_enabled() {
            let _ = datafusion::execution::FunctionRegistry::register_udf(
                &mut template,
                Arc::new(crate::faults::panic_udf()),
            );
        }
        let default_reservation = ConfigOptions::default()
            .execution
            .sort_spill_reservation_bytes;
        let sort_spill_reservation_bytes = match runtime.memory_pool.memory_limit() {
            MemoryLimit::Finite(pool) => default_reservation.min(pool / 32),
            _ => default_reservation,
        };
        let worker = Worker::from_session_builder(CountingSessionBuilder {
            counters: Arc::clone(&counters),
            template,
            channels,
            gauge: Arc::clone(&gauge),
            faults: Arc::clone(&faults),
            cancellations: Arc::clone(&cancellations),
            sort_spill_reservation_bytes,
            rewrites: Arc::new(rewrites),
        })
        .with_runtime_env(runtime)
        .with_version(env!("CARGO_PKG_VERSION"));
        Self {
            worker,
            counters,
            faults,
            gauge,
            cancellations,
        }
    }

    /// Where the control plane cancels query attempts.
    pub fn cancellations(&self) -> Arc<Cancellations> {
        Arc::clone(&self.cancellations)
    }

    /// Runs until dropped: shortly after task streams close, asks the worker
    /// to drop the tasks that are finished.
    ///
    /// `datafusion-distributed` keeps each task (its plan, and the state its
    /// producer head holds: a repartition still reading its input for a
    /// consumer that never came, a broadcast cache) in a cache that discards
    /// finished tasks only while serving later requests. An idle executor
    /// would keep a cancelled query's work running and its memory held until
    /// its next query; a sweep is such a request, a plan that does nothing.
    pub fn sweeper(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let worker = self.worker.clone();
        let gauge = Arc::clone(&self.gauge);
        async move {
            let mut seen = gauge.closed();
            let mut changed_at = tokio::time::Instant::now();
            let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let closed = gauge.closed();
                if closed != seen {
                    seen = closed;
                    changed_at = tokio::time::Instant::now();
                }
                if changed_at.elapsed() < SWEEP_WINDOW {
                    if let Err(error) = sweep(&worker).await {
                        tracing::debug!(%error, "task sweep failed");
                    }
                }
            }
        }
    }

    pub fn counters(&self) -> Arc<TaskCounters> {
        Arc::clone(&self.counters)
    }

    /// A gRPC router holding the worker service, with the exchange faults (inert
    /// unless fault injection is on) in front of it.
    pub fn router(
        self,
    ) -> tonic::transport::server::Router<
        tower::layer::util::Stack<ExchangeFaultLayer, tower::layer::util::Identity>,
    > {
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .layer(ExchangeFaultLayer::new(self.faults))
            .add_service(self.worker.into_worker_server())
    }
}

/// How often the sweeper looks for closed task streams.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// How long after the last task stream closed the sweeper keeps sweeping: the
/// worker's cache acts on a request only if its last sweep is 300 ms old.
const SWEEP_WINDOW: Duration = Duration::from_millis(1500);
/// Marks a sweep's request, so that it is not counted as a task.
const SWEEP_HEADER: &str = "x-flotilla-sweep";

/// One request that does nothing but let the worker's task cache drop what is
/// finished (see [`ExchangeWorker::sweeper`]).
async fn sweep(worker: &Worker) -> Result<()> {
    let request = SetPlanRequest {
        task_key: TaskKey {
            query_id: uuid::Uuid::new_v4(),
            stage_id: 0,
            task_number: 0,
        },
        task_count: 1,
        plan: MaybeEncoded::Decoded(Arc::new(EmptyExec::new(Arc::new(Schema::empty())))),
        work_unit_feed_declarations: Vec::new(),
        target_worker_url: Url::parse("http://sweep.invalid/").expect("a valid URL"),
        query_start_time_ns: 0,
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(SWEEP_HEADER, http::HeaderValue::from_static("1"));
    let replies = worker
        .coordinator_channel(headers, request, futures::stream::empty().boxed())
        .await?;
    drop(replies);
    Ok(())
}

struct CountingSessionBuilder {
    counters: Arc<TaskCounters>,
    /// DataFusion's default functions and planners over the worker's runtime,
    /// built once. A task gets a copy with its own configuration: building a
    /// state registers every function anew, a tenth of a trivial task's cost.
    template: SessionState,
    channels: ExchangeChannels,
    gauge: Arc<TaskGauge>,
    faults: Arc<Faults>,
    cancellations: Arc<Cancellations>,
    sort_spill_reservation_bytes: usize,
    rewrites: Arc<Vec<FragmentRewrite>>,
}

#[async_trait]
impl WorkerSessionBuilder for CountingSessionBuilder {
    async fn build_session_state(
        &self,
        ctx: WorkerQueryContext,
    ) -> std::result::Result<SessionState, DataFusionError> {
        // Called once per task the coordinator sends here (and per sweep).
        if !ctx.headers.contains_key(SWEEP_HEADER) {
            self.counters.tasks_started.fetch_add(1, Ordering::Relaxed);
        }
        let mut builder = ctx.builder;
        let Some(mut config) = builder.config().take() else {
            return Ok(builder.build());
        };
        // Merging spilled runs reserves this much per sort: DataFusion's 10 MiB
        // suits gigabyte pools, and would leave a small pool nothing but these
        // reservations. A coordinator's explicit setting, applied next, wins.
        config.options_mut().execution.sort_spill_reservation_bytes =
            self.sort_spill_reservation_bytes;
        if config
            .options()
            .extensions
            .get::<sql::session::FlotillaOptions>()
            .is_none()
        {
            config
                .options_mut()
                .extensions
                .insert(sql::session::FlotillaOptions::default());
        }
        apply_sent_options(&mut config, &ctx.headers);
        config.set_distributed_channel_resolver(self.channels.clone());
        let gauge = Arc::clone(&self.gauge);
        let faults = Arc::clone(&self.faults);
        let cancelled = match ctx
            .headers
            .get(ATTEMPT_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            Some(attempt) => self.cancellations.flag(attempt),
            None => Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let rewrites = Arc::clone(&self.rewrites);
        config.set_distributed_worker_plan_rewrite_handler(
            move |ev: WorkerPlanRewriteEvent<'_>| {
                let mut plan = ev.plan;
                for rewrite in rewrites.iter() {
                    plan = rewrite(plan, ev.session_config)?;
                }
                guard_fragment(plan, &gauge, &faults, Arc::clone(&cancelled))
                    .map(WorkerPlanRewriteEventResponse::new)
            },
        );
        let mut state = self.template.clone();
        *state.config_mut() = config;
        Ok(state)
    }
}
