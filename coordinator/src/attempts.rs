//! One query's result stream, run to its end whatever happens to the cluster.
//!
//! [`QueryRun`] wraps the stream of a query's first attempt and adds:
//!
//! - **executor loss**: when the registry takes out of scheduling an executor
//!   this query talked to (missed heartbeats, restarted elsewhere, found
//!   unreachable), the attempt stops at once instead of waiting on it;
//! - **retries**: an attempt that fails for a reason of the cluster, not of the
//!   query ([`flight::failure::is_retryable`]), is planned and run again on the
//!   executors alive then, up to `query.retries_max` times, as long as no row
//!   has left this stream. Executors that do not answer a probe are taken out
//!   of scheduling first; with none left it waits up to the executor timeout
//!   for one to register. Rows are never duplicated or partial: once a row is
//!   out, a failure is reported to the client;
//! - **the statement timeout** (`SET statement_timeout`), over the whole run;
//! - **joins that spill**: an attempt that exhausts an executor's memory pool
//!   in a query with joins runs once more with sort-merge joins, which spill
//!   to disk (hash joins cannot: their build side must fit in memory). If that
//!   fails too, the resources-exhausted error is the answer;
//! - the admission **permit**, held until the stream ends or is dropped;
//! - a **panic** in an operator that runs here becomes the query's error;
//! - a **stall** (the executors' data planes do no work at all for
//!   `query.stall_timeout` while the query waits for rows) runs the query once
//!   more with unbounded exchange buffers (the one stall known: see
//!   `QueryRun::unstall`), then ends it with an error instead of a wait for
//!   ever.
//!
//! Dropping the stream drops the attempt's stream, which stops the query on
//! every executor (`datafusion-distributed` ends the tasks when their
//! coordinator channels close).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, SessionState, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::execute_stream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use flight::channels::QueryFootprint;
use flight::control::ControlClient;
use flight::FlightError;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::admission::Permit;
use crate::error::QueryError;
use crate::registry::{ExecutorRegistry, LostExecutors};

/// Time an executor has to answer the probe made before a retry.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause before the first retry; doubled for each further one.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// How to run a query again: its optimized plan and the session state it was
/// planned in (whose channel resolver records the query's footprint).
pub struct Replan {
    /// The id the current attempt's tasks carry, under which executors cancel them.
    pub attempt: String,
    pub state: SessionState,
    pub logical: LogicalPlan,
    pub footprint: Arc<QueryFootprint>,
    pub registry: ExecutorRegistry,
    pub retries_max: u32,
    /// Counts the attempts started again, cluster-wide (`flotilla.queries`).
    pub retried: Arc<AtomicU64>,
    /// No executor CPU for this long while waiting for rows: stalled (zero: never).
    pub stall_timeout: Duration,
}

/// How often a waiting query looks at its executors' CPU time: a quarter of
/// the stall timeout, between these bounds.
const STALL_CHECKS_MIN: Duration = Duration::from_millis(250);
const STALL_CHECKS_MAX: Duration = Duration::from_secs(5);

/// What a waiting query last saw of its executors' CPU time.
#[derive(Debug)]
struct StallWatch {
    cpu_time_ms: Option<u64>,
    since: Instant,
}

impl StallWatch {
    fn new() -> Self {
        Self {
            cpu_time_ms: None,
            since: Instant::now(),
        }
    }

    /// Records the executors' CPU time now; returns how long it has not moved.
    fn observe(&mut self, cpu_time_ms: u64) -> Duration {
        if self.cpu_time_ms != Some(cpu_time_ms) {
            self.cpu_time_ms = Some(cpu_time_ms);
            self.since = Instant::now();
        }
        self.since.elapsed()
    }
}

impl Replan {
    /// Whether the query joins tables (a sort-merge plan may then fit where the
    /// hash-join plan did not) and still plans hash joins.
    fn may_sort_merge(&self) -> bool {
        use datafusion::common::tree_node::TreeNodeRecursion;
        let mut joins = false;
        let _ = self.logical.apply_with_subqueries(|node| {
            if let LogicalPlan::Join(join) = node {
                if !join.on.is_empty() {
                    joins = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        joins && self.state.config_options().optimizer.prefer_hash_join
    }
}

/// A running query: see the module documentation.
pub struct QueryRun {
    stream: Option<SendableRecordBatchStream>,
    replan: Option<Replan>,
    retries: u32,
    /// Rows (or any batch) have left this stream: no more retries.
    emitted: bool,
    lost: Option<watch::Receiver<LostExecutors>>,
    deadline: Option<(Instant, Duration)>,
    _permit: Option<Permit>,
    done: bool,
    /// The last attempt ran to its end: nothing is left to cancel.
    finished: bool,
    stall: StallWatch,
    /// Run again once already for a stall.
    unstalled: bool,
}

impl Drop for QueryRun {
    /// A run dropped before its last attempt finished (the client cancelled or
    /// left, a timeout, an error) tells the executors to stop that attempt's
    /// tasks now rather than when their work next waits.
    fn drop(&mut self) {
        let Some(replan) = &self.replan else { return };
        if self.finished {
            return;
        }
        let urls = replan.registry.control_urls(&replan.footprint.urls());
        let attempt = replan.attempt.clone();
        if urls.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { flight::exchange::cancel_attempt(&urls, &attempt).await });
        }
    }
}

impl QueryRun {
    /// `first`: the stream of the first attempt. `replan`: how to run it again
    /// (`None`: never, for a query that runs on the coordinator alone).
    /// `timeout`: the statement timeout, counted from `started`.
    pub fn new(
        first: SendableRecordBatchStream,
        replan: Option<Replan>,
        timeout: Option<(Instant, Duration)>,
        permit: Option<Permit>,
    ) -> Self {
        let lost = replan.as_ref().map(|r| {
            let mut rx = r.registry.lost();
            // Losses before the query started are not its concern.
            rx.borrow_and_update();
            rx
        });
        Self {
            stream: Some(first),
            replan,
            retries: 0,
            emitted: false,
            lost,
            deadline: timeout,
            _permit: permit,
            done: false,
            finished: false,
            stall: StallWatch::new(),
            unstalled: false,
        }
    }

    /// The run as a record batch stream with `first`'s schema.
    pub fn into_stream(self) -> SendableRecordBatchStream {
        let schema = self
            .stream
            .as_ref()
            .map(|s| s.schema())
            .expect("a new run has its first stream");
        let batches = futures::stream::unfold(self, |mut run| async move {
            let item = run.next().await?;
            Some((item, run))
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, batches))
    }

    async fn next(&mut self) -> Option<Result<RecordBatch, DataFusionError>> {
        loop {
            if self.done {
                return None;
            }
            let item = match self.poll_attempt().await {
                Ok(item) => item,
                Err(error) => Some(Err(error)),
            };
            match item {
                None => {
                    self.done = true;
                    self.finished = true;
                    return None;
                }
                Some(Ok(batch)) => {
                    self.emitted = true;
                    self.stall = StallWatch::new();
                    return Some(Ok(batch));
                }
                Some(Err(error)) => {
                    let again = if self.may_unstall(&error) {
                        tracing::warn!(
                            %error,
                            "the query stalled; running it again with unbounded exchange buffers"
                        );
                        self.unstall();
                        true
                    } else if self.may_sort_merge(&error) {
                        tracing::warn!(
                            %error,
                            "a hash join exhausted the memory pool; running the query again with sort-merge joins, which spill"
                        );
                        self.use_sort_merge_joins();
                        true
                    } else if self.may_retry(&error) {
                        self.retries += 1;
                        if let Some(replan) = &self.replan {
                            replan.retried.fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::warn!(
                            attempt = self.retries + 1,
                            %error,
                            "query attempt failed for a reason of the cluster; running it again"
                        );
                        true
                    } else {
                        false
                    };
                    if !again {
                        self.done = true;
                        return Some(Err(error));
                    }
                    self.stream = None;
                    self.stall = StallWatch::new();
                    match self.restart().await {
                        Ok(stream) => self.stream = Some(stream),
                        Err(restart_error) => {
                            self.done = true;
                            return Some(Err(restart_error));
                        }
                    }
                }
            }
        }
    }

    /// Plans the next attempts with sort-merge joins, which spill. Broadcast
    /// (collected) build sides are hash joins too: only small ones stay, at
    /// DataFusion's own thresholds.
    fn use_sort_merge_joins(&mut self) {
        let Some(replan) = self.replan.as_mut() else {
            return;
        };
        let options = replan.state.config_mut().options_mut();
        // A sort-merge join reads its two inputs in key order, partition by
        // partition, which is what makes a stall likely (see `unstall`).
        unbounded_exchange_buffers(options);
        let optimizer = &mut options.optimizer;
        optimizer.prefer_hash_join = false;
        let defaults = datafusion::config::OptimizerOptions::default();
        optimizer.hash_join_single_partition_threshold = optimizer
            .hash_join_single_partition_threshold
            .min(defaults.hash_join_single_partition_threshold);
        optimizer.hash_join_single_partition_threshold_rows = optimizer
            .hash_join_single_partition_threshold_rows
            .min(defaults.hash_join_single_partition_threshold_rows);
    }

    /// Whether the attempt stalled, and the query has not been run again for
    /// a stall yet.
    fn may_unstall(&self, error: &DataFusionError) -> bool {
        let stalled = matches!(
            error,
            DataFusionError::External(inner)
                if matches!(inner.downcast_ref::<QueryError>(), Some(QueryError::Stalled { .. }))
        );
        stalled && !self.unstalled && !self.emitted && self.replan.is_some()
    }

    /// Runs the next attempts with exchange buffers unbounded.
    ///
    /// The exchange's buffer budget is per connection, shared by the
    /// partitions the connection carries: one partition's unread rows can fill
    /// it while a sibling partition waits for rows behind them, and both wait
    /// for ever. Without a budget the exchange buffers the difference instead
    /// (in the memory pool) and the query goes on.
    fn unstall(&mut self) {
        self.unstalled = true;
        if let Some(replan) = self.replan.as_mut() {
            unbounded_exchange_buffers(replan.state.config_mut().options_mut());
        }
    }

    fn may_sort_merge(&self, error: &DataFusionError) -> bool {
        let Some(replan) = &self.replan else {
            return false;
        };
        !self.emitted && flight::failure::is_resources_exhausted(error) && replan.may_sort_merge()
    }

    fn may_retry(&self, error: &DataFusionError) -> bool {
        let Some(replan) = &self.replan else {
            return false;
        };
        !self.emitted && self.retries < replan.retries_max && flight::failure::is_retryable(error)
    }

    /// The next item of the current attempt, or the reason it must stop: the
    /// deadline passed, or an executor it uses was lost.
    async fn poll_attempt(
        &mut self,
    ) -> Result<Option<Result<RecordBatch, DataFusionError>>, DataFusionError> {
        let Self {
            stream,
            replan,
            lost,
            deadline,
            stall,
            ..
        } = self;
        let stream = stream
            .as_mut()
            .ok_or_else(|| DataFusionError::Internal("query run without a stream".into()))?;
        let (at, timeout) = match deadline {
            Some((at, timeout)) => (Some(*at), *timeout),
            None => (None, Duration::ZERO),
        };
        let sleep = async move {
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => futures::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        let stall_timeout = replan.as_ref().map_or(Duration::ZERO, |r| r.stall_timeout);
        let mut stall_checks =
            tokio::time::interval((stall_timeout / 4).clamp(STALL_CHECKS_MIN, STALL_CHECKS_MAX));
        loop {
            let changed = async {
                match lost.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => futures::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut sleep => {
                    return Err(external(QueryError::StatementTimeout { timeout }));
                }
                _ = stall_checks.tick(), if !stall_timeout.is_zero() => {
                    let Some(replan) = replan.as_ref() else { continue };
                    let urls = replan.registry.control_urls(&replan.footprint.urls());
                    if urls.is_empty() {
                        // The attempt has not reached an executor yet.
                        continue;
                    }
                    let idle = stall.observe(executors_cpu_time_ms(&urls).await);
                    if idle >= stall_timeout {
                        return Err(external(QueryError::Stalled { idle }));
                    }
                }
                changed = changed => {
                    if !changed {
                        *lost = None;
                        continue;
                    }
                    if let (Some(replan), Some(rx)) = (replan.as_ref(), lost.as_mut()) {
                        if let Some(error) = lost_executor(replan, rx) {
                            return Err(error);
                        }
                    }
                }
                // A panic in an operator on the coordinator (the head stage, or
                // a query answered here alone) fails this query, not the
                // connection or the process.
                item = std::panic::AssertUnwindSafe(stream.next()).catch_unwind() => {
                    return match item {
                        Ok(item) => Ok(item),
                        Err(payload) => Err(DataFusionError::Execution(format!(
                            "a task panicked: {}",
                            panic_text(payload.as_ref())
                        ))),
                    };
                }
            }
        }
    }

    /// Plans and starts the next attempt, on the executors that answer.
    async fn restart(&mut self) -> Result<SendableRecordBatchStream, DataFusionError> {
        let deadline = self.deadline.map(|(at, _)| at);
        let timeout = self.deadline.map(|(_, d)| d).unwrap_or_default();
        let next = uuid::Uuid::new_v4().to_string();
        let replan = self
            .replan
            .as_mut()
            .ok_or_else(|| DataFusionError::Internal("retry without a plan".into()))?;
        let failed = std::mem::replace(&mut replan.attempt, next);
        flight::exchange::send_execution_options(replan.state.config_mut(), &replan.attempt)?;
        let replan = &*replan;
        let retries = self.retries;
        let prepare = async {
            let used = replan.registry.control_urls(&replan.footprint.urls());
            flight::exchange::cancel_attempt(&used, &failed).await;
            if retries > 0 {
                tokio::time::sleep(RETRY_BACKOFF * 2u32.saturating_pow(retries - 1)).await;
            }
            wind_down(&used).await;
            drop_unreachable(&replan.registry).await;
            wait_for_executors(&replan.registry).await?;
            replan.footprint.clear();
            let physical = replan.state.create_physical_plan(&replan.logical).await?;
            execute_stream(physical, Arc::new(TaskContext::from(&replan.state)))
        };
        let stream = match deadline {
            Some(at) => tokio::time::timeout_at(at, prepare)
                .await
                .map_err(|_| external(QueryError::StatementTimeout { timeout }))??,
            None => prepare.await?,
        };
        if let Some(rx) = self.lost.as_mut() {
            rx.borrow_and_update();
        }
        Ok(stream)
    }
}

/// Lifts the exchange's per-connection buffer budget (see [`QueryRun::unstall`]).
fn unbounded_exchange_buffers(options: &mut datafusion::config::ConfigOptions) {
    if let Err(error) = options.set(
        "distributed.worker_connection_buffer_budget_bytes",
        &(1u64 << 50).to_string(),
    ) {
        tracing::warn!(%error, "exchange buffer budget not lifted");
    }
}

/// The loss of an executor the attempt uses, if the latest losses include one.
fn lost_executor(
    replan: &Replan,
    rx: &mut watch::Receiver<LostExecutors>,
) -> Option<DataFusionError> {
    let lost = rx.borrow_and_update();
    let hit = lost
        .recent
        .iter()
        .rev()
        .find(|l| replan.footprint.touches(&l.worker_url))?;
    Some(external(FlightError::ExecutorLost {
        executor_id: hit.executor_id.clone(),
        url: hit.worker_url.to_string(),
        reason: hit.reason.to_string(),
    }))
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".to_string())
}

fn external(error: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}

/// Waits (at most [`WIND_DOWN_MAX`]) until the executors the failed attempt
/// used run no task: their tasks stop, and free their memory, a moment after
/// the attempt's stream is dropped, and the next attempt should not compete
/// with them for memory. An executor that does not answer counts as done.
async fn wind_down(urls: &[url::Url]) {
    let give_up = Instant::now() + WIND_DOWN_MAX;
    let clients: Vec<ControlClient> = urls
        .iter()
        .filter_map(|url| ControlClient::new(url.as_str(), PROBE_TIMEOUT).ok())
        .collect();
    while Instant::now() < give_up {
        let busy = futures::future::join_all(clients.iter().map(|client| async move {
            client
                .call::<_, flight::control::ExecutorStats>(
                    flight::control::actions::STATS,
                    &serde_json::Value::Null,
                )
                .await
                .map(|stats| stats.tasks_running > 0)
                .unwrap_or(false)
        }))
        .await;
        if !busy.contains(&true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::debug!(
        ?urls,
        "a failed attempt's tasks still run; starting the next one anyway"
    );
}

/// The CPU time the executors at `urls` have used, summed (those that do not
/// answer count zero).
async fn executors_cpu_time_ms(urls: &[url::Url]) -> u64 {
    let calls = urls.iter().map(|url| async move {
        let Ok(client) = ControlClient::new(url.as_str(), PROBE_TIMEOUT) else {
            return 0;
        };
        client
            .call::<_, flight::control::ExecutorStats>(
                flight::control::actions::STATS,
                &serde_json::Value::Null,
            )
            .await
            .map(|stats| stats.cpu_time_ms)
            .unwrap_or(0)
    });
    futures::future::join_all(calls).await.into_iter().sum()
}

/// Longest wait for a failed attempt's tasks to stop.
const WIND_DOWN_MAX: Duration = Duration::from_secs(2);

/// Probes every live executor; those that do not answer are taken out of
/// scheduling.
async fn drop_unreachable(registry: &ExecutorRegistry) {
    let probes = registry.executors().into_iter().map(|entry| async move {
        let url = entry.control_url.to_string();
        let reachable = match ControlClient::new(&url, PROBE_TIMEOUT) {
            Ok(client) => client
                .call::<_, flight::control::ExecutorStats>(
                    flight::control::actions::STATS,
                    &serde_json::Value::Null,
                )
                .await
                .is_ok(),
            Err(_) => false,
        };
        (entry.worker_url, reachable)
    });
    for (url, reachable) in futures::future::join_all(probes).await {
        if !reachable {
            registry.suspect(&url);
        }
    }
}

/// Waits (up to the executor timeout) until an executor is live.
async fn wait_for_executors(registry: &ExecutorRegistry) -> Result<(), DataFusionError> {
    let give_up = Instant::now() + registry.executor_timeout();
    while registry.live().is_empty() {
        if Instant::now() >= give_up {
            return Err(external(QueryError::ExecutorsLost));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
