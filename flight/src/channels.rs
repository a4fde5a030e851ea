//! Connections between Flotilla processes on the data plane: the coordinator's
//! to the executors that run a query's tasks, and the executors' to each other
//! for shuffle data.
//!
//! [`ExchangeChannels`] is the `datafusion-distributed` channel resolver every
//! Flotilla process installs. Over the crate's own gRPC client it adds:
//!
//! - limits: a connect timeout, a bound on how long a peer may take to start
//!   answering a request (`exchange_timeout`; a slow producer streaming slowly is
//!   fine, one that never answers is not) and HTTP/2 keep-alive, so that a dead
//!   or black-holed peer ends a query with an error instead of a hang;
//! - typed failures: a peer that cannot be reached, resets the connection or
//!   times out becomes a [`DataFusionError::IoError`] of a network kind, which
//!   keeps its kind when it crosses further processes and which
//!   [`crate::failure::is_retryable`] recognizes;
//! - the footprint of a query: on the coordinator each statement gets its own
//!   resolver ([`ExchangeChannels::for_query`]) that records every executor the
//!   query talks to, so that losing one of them can stop the query at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion_distributed::grpc::{create_worker_client, BoxCloneSyncChannel};
use datafusion_distributed::{
    ChannelResolver, CoordinatorToWorkerMsg, ExecuteTaskRequest, GetWorkerInfoRequest,
    GetWorkerInfoResponse, SetPlanRequest, WorkerChannel, WorkerToCoordinatorMsg,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tonic::transport::Endpoint;
use url::Url;

/// Time allowed to open a connection to another Flotilla process.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle or busy connection is probed with an HTTP/2 PING.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// A connection whose PING is not answered within this long is closed. Generous:
/// a peer's connection task shares its runtime with operator work.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound on the cached connections (one per peer URL).
const CHANNELS_MAX: usize = 1024;

/// The channel resolver of a Flotilla process: one lazily connected channel per
/// peer, shared by every query of the process.
#[derive(Clone)]
pub struct ExchangeChannels {
    /// Milliseconds; shared, so that an executor can take the cluster's value
    /// when it registers.
    exchange_timeout_ms: Arc<AtomicU64>,
    channels: Arc<Mutex<HashMap<Url, BoxCloneSyncChannel>>>,
    /// Peers this resolver's query has talked to; `None` for a process-wide one.
    footprint: Option<Arc<QueryFootprint>>,
}

impl std::fmt::Debug for ExchangeChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeChannels")
            .field("exchange_timeout", &self.exchange_timeout())
            .finish_non_exhaustive()
    }
}

impl ExchangeChannels {
    /// `exchange_timeout`: how long a peer may take to start answering a request.
    pub fn new(exchange_timeout: Duration) -> Self {
        Self {
            exchange_timeout_ms: Arc::new(AtomicU64::new(exchange_timeout.as_millis() as u64)),
            channels: Arc::new(Mutex::new(HashMap::new())),
            footprint: None,
        }
    }

    /// A resolver for one query: it shares this one's connections and records
    /// the peers the query reaches in the returned footprint.
    pub fn for_query(&self) -> (Self, Arc<QueryFootprint>) {
        let footprint = Arc::new(QueryFootprint::default());
        let resolver = Self {
            exchange_timeout_ms: Arc::clone(&self.exchange_timeout_ms),
            channels: Arc::clone(&self.channels),
            footprint: Some(Arc::clone(&footprint)),
        };
        (resolver, footprint)
    }

    /// How long a peer may take to start answering a request.
    pub fn exchange_timeout(&self) -> Duration {
        Duration::from_millis(self.exchange_timeout_ms.load(Ordering::Relaxed))
    }

    /// Changes the exchange timeout of connections opened from now on (an
    /// executor takes the coordinator's when it registers, before any query).
    pub fn set_exchange_timeout(&self, timeout: Duration) {
        self.exchange_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    fn channel(&self, url: &Url) -> Result<BoxCloneSyncChannel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(url) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| {
                DataFusionError::Configuration(format!("invalid executor URL '{url}': {e}"))
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(self.exchange_timeout())
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        // Lazy: connecting happens on the first request, and again after the
        // connection breaks, so a restarted peer at the same address is reached.
        let channel = BoxCloneSyncChannel::new(endpoint.connect_lazy());
        if channels.len() >= CHANNELS_MAX {
            channels.clear();
        }
        channels.insert(url.clone(), channel.clone());
        Ok(channel)
    }
}

#[async_trait]
impl ChannelResolver for ExchangeChannels {
    async fn get_worker_client_for_url(&self, url: &Url) -> Result<Box<dyn WorkerChannel>> {
        if let Some(footprint) = &self.footprint {
            footprint.record(url);
        }
        let channel = self.channel(url)?;
        Ok(Box::new(TypedFailures {
            inner: create_worker_client(channel),
            url: url.clone(),
        }))
    }
}

/// The executors one query has talked to.
#[derive(Debug, Default)]
pub struct QueryFootprint {
    urls: Mutex<BTreeSet<Url>>,
}

impl QueryFootprint {
    fn record(&self, url: &Url) {
        let mut urls = self.urls.lock().unwrap_or_else(|p| p.into_inner());
        if !urls.contains(url) {
            urls.insert(url.clone());
        }
    }

    /// Whether the query has talked to `url`.
    pub fn touches(&self, url: &Url) -> bool {
        self.urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(url)
    }

    /// Every peer the query has talked to.
    pub fn urls(&self) -> Vec<Url> {
        self.urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Forgets every peer: the next attempt of the query starts afresh.
    pub fn clear(&self) {
        self.urls.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// A worker client whose transport failures say which peer failed, as network
/// I/O errors.
struct TypedFailures {
    inner: Box<dyn WorkerChannel>,
    url: Url,
}

impl TypedFailures {
    fn map(&self) -> impl Fn(DataFusionError) -> DataFusionError + Send + Sync + 'static {
        let url = self.url.clone();
        move |error| crate::failure::as_transport_failure(error, &url)
    }
}

#[async_trait]
impl WorkerChannel for TypedFailures {
    async fn coordinator_channel(
        &mut self,
        headers: http::HeaderMap,
        set_plan_request: SetPlanRequest,
        c2w_stream: BoxStream<'static, CoordinatorToWorkerMsg>,
        metrics: ExecutionPlanMetricsSet,
        task_ctx: &Arc<TaskContext>,
    ) -> Result<BoxStream<'static, Result<WorkerToCoordinatorMsg>>> {
        let map = self.map();
        let stream = self
            .inner
            .coordinator_channel(headers, set_plan_request, c2w_stream, metrics, task_ctx)
            .await
            .map_err(&map)?;
        Ok(stream.map_err(map).boxed())
    }

    async fn execute_task(
        &mut self,
        headers: http::HeaderMap,
        request: ExecuteTaskRequest,
        metrics: ExecutionPlanMetricsSet,
        task_ctx: &Arc<TaskContext>,
    ) -> Result<Vec<BoxStream<'static, Result<RecordBatch>>>> {
        let map = Arc::new(self.map());
        let streams = self
            .inner
            .execute_task(headers, request, metrics, task_ctx)
            .await
            .map_err(|e| map(e))?;
        Ok(streams
            .into_iter()
            .map(|stream| {
                let map = Arc::clone(&map);
                stream.map_err(move |e| map(e)).boxed()
            })
            .collect())
    }

    async fn get_worker_info(
        &mut self,
        request: GetWorkerInfoRequest,
    ) -> Result<GetWorkerInfoResponse> {
        let map = self.map();
        self.inner.get_worker_info(request).await.map_err(map)
    }
}
