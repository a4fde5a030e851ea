//! The executor role: hosts the exchange worker that runs fragments, registers
//! with the coordinator, heartbeats, and answers stats requests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flight::channels::ExchangeChannels;
use flight::control::CancelRequest;
use flight::control::{
    actions, decode, encode, ControlClient, ControlHandler, ControlService, DeregisterRequest,
    HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse,
};
use flight::exchange::{ExchangeWorker, FragmentRewrite, TaskCounters};
use flight::faults::{FaultSpec, Faults};
use flight::guard::Cancellations;
use serde::de::IgnoredAny;
use sql::config::{ExecutorConfig, GpuDevice, ObjectStoreConfig};
use sql::object_stores::LazyObjectStoreRegistry;
use sql::session::GpuSetting;
use tokio::net::TcpListener;
use tonic::Status;

/// Errors of the executor role.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid coordinator URL '{url}': {source}")]
    CoordinatorUrl {
        url: String,
        #[source]
        source: flight::FlightError,
    },
    #[error("listening on {addr} needs --advertise-url: other processes cannot reach an unspecified address")]
    Advertise { addr: SocketAddr },
    #[error(transparent)]
    Setup(#[from] sql::SqlError),
    #[error("worker service failed: {message}")]
    Serve { message: String },
    #[error("cannot create the spill directory {path}: {source}")]
    SpillDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ExecutorError {
    pub fn kind(&self) -> sql::ErrorKind {
        match self {
            ExecutorError::Listen { .. } => sql::ErrorKind::Unavailable,
            ExecutorError::CoordinatorUrl { .. } | ExecutorError::Advertise { .. } => {
                sql::ErrorKind::InvalidInput
            }
            ExecutorError::Setup(e) => e.kind(),
            ExecutorError::Serve { .. } => sql::ErrorKind::Internal,
            ExecutorError::SpillDir { .. } => sql::ErrorKind::Unavailable,
        }
    }
}

/// How to start an executor.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// Control-plane URL of the coordinator (`http://host:port`).
    pub coordinator_url: String,
    /// Stable identity; a fresh one is made when `None`.
    pub executor_id: Option<String>,
    /// The URL other processes reach this executor at; required when listening on
    /// an unspecified address (0.0.0.0), else derived from the bound address.
    pub advertise_url: Option<String>,
    pub config: ExecutorConfig,
    /// Accept injected faults over the control plane (tests and chaos
    /// benchmarks only; see `flight::faults`).
    pub fault_injection: bool,
}

/// Time allowed for one control-plane call.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);
/// Wait between registration attempts while the coordinator cannot be reached.
const REGISTER_RETRY: Duration = Duration::from_millis(200);

/// Runs an executor until `shutdown` resolves. Plan fragments run on `data_plane`,
/// a runtime of their own: operator work that does not yield can starve only
/// other operator work there, never the heartbeats and signal handling of the
/// runtime this function runs on.
pub async fn run(
    options: ExecutorOptions,
    data_plane: tokio::runtime::Handle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ExecutorError> {
    let listen = options.config.listen;
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| ExecutorError::Listen {
            addr: listen,
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| ExecutorError::Listen {
            addr: options.config.listen,
            source,
        })?;
    let worker_url = match (&options.advertise_url, local.ip().is_unspecified()) {
        (Some(url), _) => url.clone(),
        (None, false) => format!("http://{local}"),
        (None, true) => return Err(ExecutorError::Advertise { addr: local }),
    };
    // The control plane (stats, cancels, faults) has a listener of its own,
    // served by this runtime, so that it answers at once while operator work
    // keeps the data-plane runtime busy.
    let control_addr = options
        .config
        .control_listen
        .unwrap_or_else(|| SocketAddr::new(local.ip(), 0));
    let control_listener =
        TcpListener::bind(control_addr)
            .await
            .map_err(|source| ExecutorError::Listen {
                addr: control_addr,
                source,
            })?;
    let control_local = control_listener
        .local_addr()
        .map_err(|source| ExecutorError::Listen {
            addr: control_addr,
            source,
        })?;
    let control_url = url::Url::parse(&worker_url)
        .ok()
        .and_then(|mut url| {
            url.set_port(Some(control_local.port())).ok()?;
            Some(url.to_string().trim_end_matches('/').to_string())
        })
        .unwrap_or_else(|| format!("http://{control_local}"));
    let executor_id = options
        .executor_id
        .clone()
        .unwrap_or_else(|| format!("executor-{}", &uuid::Uuid::new_v4().to_string()[..8]));

    let object_stores = Arc::new(LazyObjectStoreRegistry::new(ObjectStoreConfig::default()));
    let memory_pool_bytes = options
        .config
        .memory_limit_bytes
        .unwrap_or_else(|| sql::session::default_memory_pool_bytes(1));
    let spill_dir = spill_dir(&options.config, &executor_id)?;
    let runtime = sql::session::runtime_env(
        Arc::clone(&object_stores),
        Some(memory_pool_bytes),
        Some(&spill_dir),
        Some(options.config.spill_bytes_max),
    )?;
    tracing::info!(
        executor_id,
        memory_pool_bytes,
        spill_dir = %spill_dir.display(),
        spill_bytes_max = options.config.spill_bytes_max,
        "executor resources"
    );
    let faults = Arc::new(if options.fault_injection {
        tracing::warn!(
            executor_id,
            "fault injection is on: this executor takes injected faults"
        );
        Faults::enabled(&executor_id)
    } else {
        Faults::disabled()
    });
    let channels =
        ExchangeChannels::new(sql::config::CoordinatorConfig::default().exchange_timeout);
    let worker = ExchangeWorker::new(
        runtime,
        channels.clone(),
        Arc::clone(&faults),
        gpu_rewrites(&options.config, &executor_id),
    );
    let counters = worker.counters();
    let sweeper = data_plane.spawn(worker.sweeper());
    let stats = ControlService::new_server(Arc::new(StatsHandler {
        counters: Arc::clone(&counters),
        faults,
        cancellations: worker.cancellations(),
    }));

    let router = worker.router();
    let (stop_control_tx, stop_control_rx) = tokio::sync::oneshot::channel::<()>();
    let control = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(stats)
            .serve_with_incoming_shutdown(flight::net::incoming(control_listener), async move {
                let _ = stop_control_rx.await;
            }),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = data_plane.spawn(async move {
        // The listener belongs to the runtime that polls it.
        let listener = TcpListener::from_std(listener)?;
        router
            .serve_with_incoming_shutdown(flight::net::incoming(listener), async move {
                let _ = stop_rx.await;
            })
            .await
            .map_err(std::io::Error::other)
    });
    tracing::info!(executor_id, worker_url, control_url, "executor listening");

    let coordinator =
        ControlClient::new(&options.coordinator_url, CONTROL_TIMEOUT).map_err(|source| {
            ExecutorError::CoordinatorUrl {
                url: options.coordinator_url.clone(),
                source,
            }
        })?;
    let membership = Membership {
        coordinator: coordinator.clone(),
        request: RegisterRequest {
            executor_id: executor_id.clone(),
            worker_url,
            control_url: Some(control_url),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        counters,
        object_stores,
        channels,
    };
    let heartbeats = tokio::spawn(membership.run());

    shutdown.await;
    tracing::info!(executor_id, "executor stopping");
    heartbeats.abort();
    sweeper.abort();
    let _ = coordinator
        .call::<_, IgnoredAny>(
            actions::DEREGISTER,
            &DeregisterRequest {
                executor_id: executor_id.clone(),
            },
        )
        .await;
    let _ = stop_tx.send(());
    let _ = stop_control_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(1), control).await;
    match tokio::time::timeout(Duration::from_secs(5), serve).await {
        Ok(Ok(Ok(()))) | Err(_) => Ok(()),
        Ok(Ok(Err(e))) => Err(ExecutorError::Serve {
            message: e.to_string(),
        }),
        Ok(Err(e)) => Err(ExecutorError::Serve {
            message: e.to_string(),
        }),
    }
}

/// The spill directory of this executor: `<spill_dir>/flotilla-<executor_id>`,
/// emptied at start, so that spill files a killed predecessor of the same id
/// left behind do not stay on disk.
fn spill_dir(
    config: &ExecutorConfig,
    executor_id: &str,
) -> Result<std::path::PathBuf, ExecutorError> {
    let base = config.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
    let safe: String = executor_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = base.join(format!("flotilla-{safe}"));
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::fs::create_dir_all(&dir).map_err(|source| ExecutorError::SpillDir {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Keeps this executor registered: registers, heartbeats, registers again when the
/// coordinator has forgotten it, and keeps trying while it cannot be reached.
struct Membership {
    coordinator: ControlClient,
    request: RegisterRequest,
    counters: Arc<TaskCounters>,
    object_stores: Arc<LazyObjectStoreRegistry>,
    channels: ExchangeChannels,
}

impl Membership {
    async fn run(self) {
        loop {
            let interval = self.register().await;
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let beat = HeartbeatRequest {
                    executor_id: self.request.executor_id.clone(),
                    stats: executor_stats(&self.counters),
                };
                match self
                    .coordinator
                    .call::<_, HeartbeatResponse>(actions::HEARTBEAT, &beat)
                    .await
                {
                    Ok(HeartbeatResponse { known: true }) => {}
                    Ok(HeartbeatResponse { known: false }) => {
                        tracing::warn!(
                            executor_id = self.request.executor_id,
                            "coordinator does not know this executor; registering again"
                        );
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "heartbeat failed");
                    }
                }
            }
        }
    }

    /// Registers, retrying until it succeeds; returns the heartbeat interval.
    async fn register(&self) -> Duration {
        loop {
            match self
                .coordinator
                .call::<_, RegisterResponse>(actions::REGISTER, &self.request)
                .await
            {
                Ok(response) => {
                    self.object_stores.set_config(response.object_store);
                    self.channels
                        .set_exchange_timeout(response.exchange_timeout);
                    tracing::info!(
                        executor_id = self.request.executor_id,
                        coordinator = self.coordinator.url(),
                        "registered"
                    );
                    return response.heartbeat_interval;
                }
                Err(error) => {
                    tracing::debug!(%error, "registration failed; retrying");
                    tokio::time::sleep(REGISTER_RETRY).await;
                }
            }
        }
    }
}

/// Answers the coordinator's stats and cancel requests (and, on an executor
/// started with fault injection, requests to inject faults).
struct StatsHandler {
    counters: Arc<TaskCounters>,
    faults: Arc<Faults>,
    cancellations: Arc<Cancellations>,
}

#[tonic::async_trait]
impl ControlHandler for StatsHandler {
    async fn handle(&self, action: &str, body: Bytes) -> Result<Bytes, Status> {
        match action {
            actions::STATS => {
                let _: IgnoredAny = decode(&body)?;
                encode(&executor_stats(&self.counters))
            }
            actions::CANCEL => {
                let request: CancelRequest = decode(&body)?;
                tracing::debug!(attempt = request.attempt, "query attempt cancelled");
                self.cancellations.cancel(&request.attempt);
                encode(&serde_json::Value::Null)
            }
            actions::FAULTS => {
                let spec: FaultSpec = decode(&body)?;
                self.faults.set(&spec)?;
                encode(&serde_json::Value::Null)
            }
            other => Err(Status::unimplemented(format!(
                "executor does not serve action '{other}'"
            ))),
        }
    }
}

/// The executor's counters, the GPU stages' included.
fn executor_stats(counters: &TaskCounters) -> flight::control::ExecutorStats {
    let (gpu_stages, gpu_fallbacks) = gpu::stage_counts();
    flight::control::ExecutorStats {
        gpu_stages,
        gpu_fallbacks,
        ..counters.stats()
    }
}

/// What [`gpu::probe`] finds on this machine, in words: the device, its
/// measured speeds and the kernels' register figures, or why there is none.
pub fn gpu_report() -> String {
    match gpu::probe(kernel_cache_dir().as_deref()) {
        Ok(device) => {
            let info = device.info();
            let mut text = format!(
                "GPU: {} (compute capability {}.{}, {} MiB)\ncalibration: {:?}\n",
                info.name,
                info.compute_capability.0,
                info.compute_capability.1,
                info.memory_bytes >> 20,
                device.calibration()
            );
            let arch = format!(
                "sm_{}{}",
                info.compute_capability.0, info.compute_capability.1
            );
            match gpu::nvrtc::compile(&arch) {
                Ok(build) => {
                    for f in build.functions {
                        text.push_str(&format!(
                            "kernel {}: {} registers, {} bytes stack, {} bytes spilled\n",
                            f.name, f.registers, f.stack_frame_bytes, f.spill_store_bytes
                        ));
                    }
                }
                Err(error) => text.push_str(&format!("kernels: {error}\n")),
            }
            text.trim_end().to_string()
        }
        Err(reason) => format!("no GPU: {reason}"),
    }
}

/// Where compiled kernels are cached: `$XDG_CACHE_HOME/flotilla/kernels`, or
/// `~/.cache/flotilla/kernels`.
fn kernel_cache_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .map(|dir| dir.join("flotilla").join("kernels"))
}

/// The GPU stage rule for this executor's device (see `gpu`), as a fragment
/// rewrite that follows each task's `flotilla.gpu`.
fn gpu_rewrites(config: &sql::config::ExecutorConfig, executor_id: &str) -> Vec<FragmentRewrite> {
    let rule = match config.gpu {
        GpuDevice::None => return Vec::new(),
        GpuDevice::Emulate => {
            tracing::warn!(executor_id, "GPU stages run in the kernels' host emulation");
            gpu::GpuStageRule::emulated()
        }
        GpuDevice::Detect => {
            let probe = gpu::probe(kernel_cache_dir().as_deref());
            match &probe {
                Ok(device) => tracing::info!(
                    executor_id,
                    device = %device.info().name,
                    compute_capability = ?device.info().compute_capability,
                    calibration = ?device.calibration(),
                    "GPU stages run on this device"
                ),
                Err(reason) => {
                    tracing::info!(executor_id, %reason, "no GPU: every stage runs on the CPU")
                }
            }
            gpu::GpuStageRule::for_probe(&probe)
        }
    };
    let rewrite: FragmentRewrite =
        Arc::new(move |plan, session: &datafusion::prelude::SessionConfig| {
            let setting = session
                .options()
                .extensions
                .get::<sql::session::FlotillaOptions>()
                .map(|o| o.gpu)
                .unwrap_or_default();
            let mode = match setting {
                GpuSetting::Off => gpu::GpuMode::Off,
                GpuSetting::Auto => gpu::GpuMode::Auto,
                GpuSetting::Force => gpu::GpuMode::Force,
            };
            rule.rewrite(plan, mode)
        });
    vec![rewrite]
}
