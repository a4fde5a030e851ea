//! The executor registry: who is alive, where, and what they have done.
//!
//! Executors register and heartbeat over the control plane. One silent for longer
//! than the executor timeout is dropped from scheduling at once; if it comes back
//! it registers again as if new. [`LiveExecutors`] always mirrors the live set.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use flight::control::{
    actions, decode, encode, ControlHandler, DeregisterRequest, ExecutorStats, HeartbeatRequest,
    HeartbeatResponse, RegisterRequest, RegisterResponse,
};
use flight::exchange::LiveExecutors;
use sql::config::ObjectStoreConfig;
use tokio::sync::watch;
use tonic::Status;
use url::Url;

/// What the registry knows of one executor.
#[derive(Debug, Clone)]
pub struct ExecutorEntry {
    pub executor_id: String,
    pub worker_url: Url,
    /// Where the executor answers control-plane calls (stats, cancels).
    pub control_url: Url,
    pub pid: u32,
    pub version: String,
    pub registered_at: SystemTime,
    pub last_heartbeat: Instant,
    pub stats: ExecutorStats,
}

#[derive(Debug)]
struct Inner {
    executors: BTreeMap<String, ExecutorEntry>,
}

/// An executor taken out of scheduling while queries may have been using it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostExecutor {
    pub executor_id: String,
    pub worker_url: Url,
    pub reason: &'static str,
}

/// The executors lost most recently, newest last; `generation` counts every
/// loss since start.
#[derive(Debug, Clone, Default)]
pub struct LostExecutors {
    pub generation: u64,
    pub recent: VecDeque<LostExecutor>,
}

/// Losses kept for queries to look up: more than a cluster loses at once.
const LOST_KEPT: usize = 64;

/// Cluster membership, kept by the coordinator.
#[derive(Debug, Clone)]
pub struct ExecutorRegistry {
    inner: Arc<Mutex<Inner>>,
    live: LiveExecutors,
    lost: Arc<watch::Sender<LostExecutors>>,
    heartbeat_interval: Duration,
    executor_timeout: Duration,
    exchange_timeout: Duration,
    object_store: ObjectStoreConfig,
}

impl ExecutorRegistry {
    pub fn new(
        heartbeat_interval: Duration,
        executor_timeout: Duration,
        exchange_timeout: Duration,
        object_store: ObjectStoreConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                executors: BTreeMap::new(),
            })),
            live: LiveExecutors::new(),
            lost: Arc::new(watch::channel(LostExecutors::default()).0),
            heartbeat_interval,
            executor_timeout,
            exchange_timeout,
            object_store,
        }
    }

    /// Losses of executors, as they happen: a running query watches this to
    /// stop at once when an executor it uses is lost.
    pub fn lost(&self) -> watch::Receiver<LostExecutors> {
        self.lost.subscribe()
    }

    /// The control-plane URLs of the live executors whose worker URL is in `urls`.
    pub fn control_urls(&self, urls: &[Url]) -> Vec<Url> {
        self.lock()
            .executors
            .values()
            .filter(|e| urls.contains(&e.worker_url))
            .map(|e| e.control_url.clone())
            .collect()
    }

    /// The smallest memory pool among live executors, as their heartbeats report.
    pub fn smallest_pool_bytes(&self) -> Option<u64> {
        self.lock()
            .executors
            .values()
            .map(|e| e.stats.memory_pool_bytes)
            .filter(|bytes| *bytes > 0)
            .min()
    }

    /// How long an executor may stay silent before it is taken out of scheduling.
    pub fn executor_timeout(&self) -> Duration {
        self.executor_timeout
    }

    fn announce_lost(&self, lost: Vec<LostExecutor>) {
        if lost.is_empty() {
            return;
        }
        self.lost.send_modify(|state| {
            for executor in lost {
                state.generation += 1;
                if state.recent.len() == LOST_KEPT {
                    state.recent.pop_front();
                }
                state.recent.push_back(executor);
            }
        });
    }

    /// Takes an executor that a query could not reach out of scheduling until
    /// it registers again (a live one does so on its next heartbeat, which the
    /// coordinator answers with "unknown"). Returns whether it was live.
    pub fn suspect(&self, worker_url: &Url) -> bool {
        let mut inner = self.lock();
        let Some(id) = inner
            .executors
            .values()
            .find(|e| &e.worker_url == worker_url)
            .map(|e| e.executor_id.clone())
        else {
            return false;
        };
        inner.executors.remove(&id);
        self.publish(&inner);
        drop(inner);
        tracing::warn!(executor_id = id, %worker_url, "executor unreachable; out of scheduling until it registers again");
        self.announce_lost(vec![LostExecutor {
            executor_id: id,
            worker_url: worker_url.clone(),
            reason: "unreachable",
        }]);
        true
    }

    /// The live set the planner reads.
    pub fn live(&self) -> LiveExecutors {
        self.live.clone()
    }

    /// A copy of every live executor, ordered by id.
    pub fn executors(&self) -> Vec<ExecutorEntry> {
        self.lock().executors.values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, inner: &Inner) {
        self.live.replace(
            inner
                .executors
                .values()
                .map(|e| e.worker_url.clone())
                .collect(),
        );
    }

    fn register(&self, request: RegisterRequest) -> Result<RegisterResponse, Status> {
        let worker_url = Url::parse(&request.worker_url).map_err(|e| {
            Status::invalid_argument(format!("worker_url '{}': {e}", request.worker_url))
        })?;
        let control_url = match &request.control_url {
            Some(url) => Url::parse(url)
                .map_err(|e| Status::invalid_argument(format!("control_url '{url}': {e}")))?,
            None => worker_url.clone(),
        };
        if request.executor_id.is_empty() || request.executor_id.len() > 128 {
            return Err(Status::invalid_argument(
                "executor_id must be 1 to 128 characters",
            ));
        }
        let mut inner = self.lock();
        // An executor restarted at the same address replaces the old entry, and
        // one restarted under the same id at another address loses the old one.
        let mut replaced = Vec::new();
        inner.executors.retain(|id, e| {
            let keep = *id != request.executor_id && e.worker_url != worker_url;
            let same = *id == request.executor_id && e.worker_url == worker_url;
            if !keep && !same {
                replaced.push(LostExecutor {
                    executor_id: id.clone(),
                    worker_url: e.worker_url.clone(),
                    reason: "restarted",
                });
            }
            keep
        });
        inner.executors.insert(
            request.executor_id.clone(),
            ExecutorEntry {
                executor_id: request.executor_id.clone(),
                worker_url,
                control_url,
                pid: request.pid,
                version: request.version,
                registered_at: SystemTime::now(),
                last_heartbeat: Instant::now(),
                stats: ExecutorStats::default(),
            },
        );
        self.publish(&inner);
        drop(inner);
        self.announce_lost(replaced);
        tracing::info!(executor_id = request.executor_id, "executor registered");
        Ok(RegisterResponse {
            heartbeat_interval: self.heartbeat_interval,
            object_store: self.object_store.clone(),
            exchange_timeout: self.exchange_timeout,
        })
    }

    fn heartbeat(&self, request: HeartbeatRequest) -> HeartbeatResponse {
        let mut inner = self.lock();
        match inner.executors.get_mut(&request.executor_id) {
            Some(entry) => {
                entry.last_heartbeat = Instant::now();
                entry.stats = request.stats;
                HeartbeatResponse { known: true }
            }
            None => HeartbeatResponse { known: false },
        }
    }

    fn deregister(&self, executor_id: &str) {
        let mut inner = self.lock();
        if let Some(entry) = inner.executors.remove(executor_id) {
            self.publish(&inner);
            drop(inner);
            tracing::info!(executor_id, "executor deregistered");
            self.announce_lost(vec![LostExecutor {
                executor_id: entry.executor_id,
                worker_url: entry.worker_url,
                reason: "stopped",
            }]);
        }
    }

    /// Drops executors that missed their heartbeats; returns their ids.
    pub fn expire(&self) -> Vec<String> {
        let mut inner = self.lock();
        let now = Instant::now();
        let dead: Vec<LostExecutor> = inner
            .executors
            .values()
            .filter(|e| now.duration_since(e.last_heartbeat) > self.executor_timeout)
            .map(|e| LostExecutor {
                executor_id: e.executor_id.clone(),
                worker_url: e.worker_url.clone(),
                reason: "missed its heartbeats",
            })
            .collect();
        for lost in &dead {
            inner.executors.remove(&lost.executor_id);
            tracing::warn!(
                executor_id = lost.executor_id,
                "executor missed its heartbeats; removed"
            );
        }
        if !dead.is_empty() {
            self.publish(&inner);
        }
        drop(inner);
        let ids = dead.iter().map(|l| l.executor_id.clone()).collect();
        self.announce_lost(dead);
        ids
    }

    /// Expires silent executors until the returned task is aborted.
    pub fn spawn_reaper(&self) -> tokio::task::JoinHandle<()> {
        let registry = self.clone();
        let period = self.heartbeat_interval / 2;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            loop {
                ticker.tick().await;
                registry.expire();
            }
        })
    }
}

#[tonic::async_trait]
impl ControlHandler for ExecutorRegistry {
    async fn handle(&self, action: &str, body: Bytes) -> Result<Bytes, Status> {
        match action {
            actions::REGISTER => encode(&self.register(decode(&body)?)?),
            actions::HEARTBEAT => encode(&self.heartbeat(decode(&body)?)),
            actions::DEREGISTER => {
                let request: DeregisterRequest = decode(&body)?;
                self.deregister(&request.executor_id);
                encode(&serde_json::Value::Null)
            }
            other => Err(Status::unimplemented(format!(
                "coordinator does not serve action '{other}'"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_registry() -> ExecutorRegistry {
        ExecutorRegistry::new(
            Duration::from_millis(10),
            Duration::from_millis(30),
            Duration::from_secs(1),
            ObjectStoreConfig::default(),
        )
    }

    fn request(id: &str, port: u16) -> RegisterRequest {
        RegisterRequest {
            executor_id: id.into(),
            worker_url: format!("http://127.0.0.1:{port}"),
            control_url: None,
            pid: 1,
            version: "test".into(),
        }
    }

    #[test]
    fn register_heartbeat_expire() {
        let registry = test_registry();
        registry.register(request("a", 1)).unwrap();
        registry.register(request("b", 2)).unwrap();
        assert_eq!(registry.live().len(), 2);
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            registry
                .heartbeat(HeartbeatRequest {
                    executor_id: "a".into(),
                    stats: ExecutorStats {
                        tasks_started: 3,
                        ..ExecutorStats::default()
                    },
                })
                .known
        );
        assert_eq!(registry.expire(), vec!["b".to_string()]);
        assert_eq!(registry.live().len(), 1);
        assert!(
            !registry
                .heartbeat(HeartbeatRequest {
                    executor_id: "b".into(),
                    stats: ExecutorStats::default(),
                })
                .known
        );
        assert_eq!(registry.executors()[0].stats.tasks_started, 3);
    }

    #[test]
    fn restart_at_same_address_replaces_old_entry() {
        let registry = test_registry();
        registry.register(request("old", 7)).unwrap();
        registry.register(request("new", 7)).unwrap();
        let ids: Vec<_> = registry
            .executors()
            .into_iter()
            .map(|e| e.executor_id)
            .collect();
        assert_eq!(ids, vec!["new".to_string()]);
    }

    #[test]
    fn bad_registration_is_refused() {
        let registry = test_registry();
        let mut bad = request("x", 1);
        bad.worker_url = "not a url".into();
        assert_eq!(
            registry.register(bad).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
