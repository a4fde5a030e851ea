//! `flotilla`: one binary, three roles.
//!
//! - `standalone`: a coordinator in this process plus N executor child processes it
//!   supervises, with TPC-H data generated on first run. No configuration needed.
//! - `coordinator`: the front door and planner of a real cluster.
//! - `executor`: a worker that registers with a coordinator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use sql::config::FlotillaConfig;
use tokio::process::{Child, Command};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Distributed SQL over Parquet, CSV and JSON"
)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// A coordinator and N executor processes on this machine, TPC-H data included.
    Standalone(StandaloneArgs),
    /// The coordinator of a cluster: Postgres wire protocol, planning, scheduling.
    Coordinator(CoordinatorArgs),
    /// An executor: runs plan fragments, registers with a coordinator.
    Executor(ExecutorArgs),
    /// Says what GPU an executor on this machine would use, or why none.
    Gpu,
}

#[derive(Args)]
struct StandaloneArgs {
    /// Executor processes to start.
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// Postgres wire protocol address.
    #[arg(long)]
    pg_listen: Option<SocketAddr>,
    /// Arrow Flight SQL address (default 127.0.0.1:50051).
    #[arg(long)]
    flight_listen: Option<SocketAddr>,
    /// Where the catalog and generated data live (default: ./flotilla-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TPC-H scale factor to generate and register; 0 for none.
    #[arg(long, default_value_t = 1.0)]
    tpch: f64,
    /// Configuration file (TOML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Do not restart executors that die.
    #[arg(long)]
    no_restart: bool,
    /// Accept injected faults (tests and chaos benchmarks only): executors take
    /// them over the control plane, and `fault_panic(text)` exists.
    #[arg(long)]
    fault_injection: bool,
}

#[derive(Args)]
struct CoordinatorArgs {
    /// Configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Postgres wire protocol address (overrides the file).
    #[arg(long)]
    pg_listen: Option<SocketAddr>,
    /// Arrow Flight SQL address (overrides the file; default 127.0.0.1:50051).
    #[arg(long)]
    flight_listen: Option<SocketAddr>,
    /// Control-plane address executors register with (overrides the file).
    #[arg(long)]
    control_listen: Option<SocketAddr>,
    /// Data directory (overrides the file).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TPC-H scale factor to generate into the data dir and register (the
    /// executors must see the same files at the same path); 0 for none.
    #[arg(long, default_value_t = 0.0)]
    tpch: f64,
    /// Register `fault_panic(text)` (tests and chaos benchmarks only).
    #[arg(long)]
    fault_injection: bool,
}

#[derive(Args)]
struct ExecutorArgs {
    /// Control-plane URL of the coordinator, e.g. http://10.0.0.1:50050.
    #[arg(long)]
    coordinator: String,
    /// Address of this executor's worker service (port 0: any free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Stable executor id (default: a random one).
    #[arg(long)]
    executor_id: Option<String>,
    /// URL others reach this executor at (needed when listening on 0.0.0.0).
    #[arg(long)]
    advertise_url: Option<String>,
    /// Configuration file (TOML); only its [executor] section is used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Memory pool for query execution, in bytes.
    #[arg(long)]
    memory_limit_bytes: Option<usize>,
    /// Accept injected faults over the control plane (tests and chaos
    /// benchmarks only).
    #[arg(long)]
    fault_injection: bool,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Role::Gpu = cli.role {
        println!("{}", executor::gpu_report());
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("flotilla")
        .build()
        .context("building the runtime")?;
    // Executors run plan fragments on a second runtime, so that operator work
    // cannot starve heartbeats and signal handling on the first.
    let data_plane = match cli.role {
        Role::Executor(_) => Some(
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name(flight::exchange::DATA_PLANE_THREAD)
                .build()
                .context("building the data-plane runtime")?,
        ),
        _ => None,
    };
    let data_handle = data_plane.as_ref().map(|rt| rt.handle().clone());
    let result = runtime.block_on(async move {
        match cli.role {
            Role::Standalone(args) => standalone(args).await,
            Role::Coordinator(args) => coordinator(args).await,
            Role::Executor(args) => executor(args, data_handle.expect("data-plane runtime")).await,
            Role::Gpu => Ok(()),
        }
    });
    if let Some(data_plane) = data_plane {
        // Fragments still running belong to a stopped executor: do not wait.
        data_plane.shutdown_background();
    }
    // Operator work that never yields would hold a plain runtime drop forever;
    // the role has already stopped its services, so give tasks a moment and go.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

/// How long tasks may run on after a role has stopped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

fn load_config(path: Option<&PathBuf>) -> Result<FlotillaConfig> {
    Ok(match path {
        Some(path) => FlotillaConfig::from_file(path)?,
        None => FlotillaConfig::default(),
    })
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn coordinator(args: CoordinatorArgs) -> Result<()> {
    let mut config = load_config(args.config.as_ref())?;
    if let Some(addr) = args.pg_listen {
        config.coordinator.pg_listen = addr;
    }
    if let Some(addr) = args.flight_listen {
        config.coordinator.flight_listen = addr;
    }
    if let Some(addr) = args.control_listen {
        config.coordinator.control_listen = addr;
    }
    if let Some(dir) = args.data_dir {
        config.coordinator.data_dir = dir;
    }
    config.validate("command line")?;
    let trusted = generate_tpch(&config, args.tpch).await?;
    coordinator::run(
        config,
        trusted,
        args.fault_injection,
        |addrs| {
            println!(
                "coordinator ready: postgres on {}, Flight SQL on grpc://{}, executors register at {}",
                addrs.pg,
                addrs.flight,
                addrs.control_url()
            );
        },
        termination(),
    )
    .await?;
    Ok(())
}

async fn executor(args: ExecutorArgs, data_plane: tokio::runtime::Handle) -> Result<()> {
    let config = load_config(args.config.as_ref())?;
    let mut executor_config = config.executor;
    if let Some(addr) = args.listen {
        executor_config.listen = addr;
    }
    if let Some(limit) = args.memory_limit_bytes {
        executor_config.memory_limit_bytes = Some(limit);
    }
    executor::run(
        executor::ExecutorOptions {
            coordinator_url: args.coordinator,
            executor_id: args.executor_id,
            advertise_url: args.advertise_url,
            config: executor_config,
            fault_injection: args.fault_injection,
        },
        data_plane,
        termination(),
    )
    .await?;
    Ok(())
}

async fn standalone(args: StandaloneArgs) -> Result<()> {
    let mut config = load_config(args.config.as_ref())?;
    if let Some(addr) = args.pg_listen {
        config.coordinator.pg_listen = addr;
    }
    if let Some(addr) = args.flight_listen {
        config.coordinator.flight_listen = addr;
    }
    if let Some(dir) = &args.data_dir {
        config.coordinator.data_dir = dir.clone();
    }
    config.validate("command line")?;
    if args.executors == 0 {
        bail!("--executors must be at least 1");
    }
    let trusted = generate_tpch(&config, args.tpch).await?;

    let (addrs_tx, addrs_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopping = Arc::new(AtomicBool::new(false));
    // Executors on one machine share its memory: unless configured, each gets
    // an equal part of the default pool.
    let children = ChildOptions {
        config: args.config.clone(),
        memory_limit_bytes: config
            .executor
            .memory_limit_bytes
            .unwrap_or_else(|| sql::session::default_memory_pool_bytes(args.executors)),
        fault_injection: args.fault_injection,
    };
    let supervisor = tokio::spawn(supervise(
        args.executors,
        !args.no_restart,
        children,
        addrs_rx,
        stop_rx,
        Arc::clone(&stopping),
    ));

    let executors = args.executors;
    let shutdown = {
        let stopping = Arc::clone(&stopping);
        async move {
            termination().await;
            stopping.store(true, Ordering::SeqCst);
        }
    };
    let result = coordinator::run(
        config,
        trusted,
        args.fault_injection,
        move |addrs| {
            println!(
                "Flotilla standalone: coordinator and {executors} executors.\n\
                 Flight SQL: grpc://{}\n\
                 Connect with: psql -h {} -p {} -U flotilla",
                addrs.flight,
                addrs.pg.ip(),
                addrs.pg.port()
            );
            let _ = addrs_tx.send(addrs);
        },
        shutdown,
    )
    .await;
    stopping.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let _ = supervisor.await;
    result?;
    Ok(())
}

/// Generates TPC-H data at scale factor `sf` into the data dir (once; reused
/// afterwards) and returns its tables; none for `sf` 0.
async fn generate_tpch(config: &FlotillaConfig, sf: f64) -> Result<Vec<sql::config::TableConfig>> {
    if sf <= 0.0 {
        return Ok(Vec::new());
    }
    let data_dir = config.coordinator.data_dir.clone();
    let started = Instant::now();
    let tables = tokio::task::spawn_blocking(move || sql::tpch::ensure_dataset(&data_dir, sf))
        .await
        .context("TPC-H generation thread")??;
    tracing::info!(
        scale_factor = sf,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "TPC-H data ready"
    );
    Ok(tables)
}

/// Starts executor child processes and restarts those that die, until told to stop;
/// then stops them all (SIGTERM, then SIGKILL after a grace period).
async fn supervise(
    count: usize,
    restart: bool,
    config: ChildOptions,
    addrs: tokio::sync::oneshot::Receiver<coordinator::CoordinatorAddrs>,
    mut stop: watch::Receiver<bool>,
    stopping: Arc<AtomicBool>,
) {
    let Ok(addrs) = addrs.await else {
        return;
    };
    let url = addrs.control_url();
    let (exit_tx, mut exit_rx) = tokio::sync::mpsc::channel::<usize>(count.max(1));
    let mut children: Vec<Option<Child>> = Vec::with_capacity(count);
    let mut started: Vec<Instant> = vec![Instant::now(); count];
    let mut backoff: Vec<Duration> = vec![RESTART_BACKOFF_MIN; count];
    for slot in 0..count {
        children.push(spawn_executor(slot, &url, &config));
    }
    let mut watchers = tokio::task::JoinSet::new();
    let mut pids: Vec<Option<u32>> = children
        .iter()
        .map(|c| c.as_ref().and_then(|c| c.id()))
        .collect();
    for (slot, child) in children.iter_mut().enumerate() {
        if let Some(child) = child.take() {
            watchers.spawn(wait_child(slot, child, exit_tx.clone()));
        }
    }
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(slot) = exit_rx.recv() => {
                pids[slot] = None;
                if !restart || stopping.load(Ordering::SeqCst) {
                    tracing::warn!(slot, "executor exited; not restarting");
                    continue;
                }
                if started[slot].elapsed() > Duration::from_secs(30) {
                    backoff[slot] = RESTART_BACKOFF_MIN;
                }
                let delay = backoff[slot];
                backoff[slot] = (delay * 2).min(RESTART_BACKOFF_MAX);
                tracing::warn!(slot, delay_ms = delay.as_millis() as u64, "executor exited; restarting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => break,
                }
                if stopping.load(Ordering::SeqCst) {
                    continue;
                }
                if let Some(child) = spawn_executor(slot, &url, &config) {
                    pids[slot] = child.id();
                    started[slot] = Instant::now();
                    watchers.spawn(wait_child(slot, child, exit_tx.clone()));
                }
            }
        }
    }
    // Stop: SIGTERM every child, give them a grace period, then SIGKILL.
    for pid in pids.iter().flatten() {
        signal_pid(*pid, libc::SIGTERM);
    }
    let deadline = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => {
                for pid in pids.iter().flatten() {
                    signal_pid(*pid, libc::SIGKILL);
                }
                watchers.shutdown().await;
                break;
            }
            next = watchers.join_next() => {
                if next.is_none() {
                    break;
                }
            }
            Some(slot) = exit_rx.recv() => { pids[slot] = None; }
        }
    }
}

const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(250);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(5);

async fn wait_child(slot: usize, mut child: Child, exits: tokio::sync::mpsc::Sender<usize>) {
    let status = child.wait().await;
    tracing::info!(slot, ?status, "executor process ended");
    let _ = exits.send(slot).await;
}

fn signal_pid(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a pid we spawned; at worst the process is already gone.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// What every executor child is started with.
struct ChildOptions {
    /// The configuration file (its [executor] section applies).
    config: Option<PathBuf>,
    memory_limit_bytes: usize,
    fault_injection: bool,
}

/// Starts one executor child.
fn spawn_executor(slot: usize, coordinator_url: &str, options: &ChildOptions) -> Option<Child> {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            tracing::error!(%error, "cannot find the flotilla binary");
            return None;
        }
    };
    let mut command = Command::new(exe);
    command
        .arg("executor")
        .arg("--coordinator")
        .arg(coordinator_url)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--executor-id")
        .arg(format!("executor-{}", slot + 1))
        .arg("--memory-limit-bytes")
        .arg(options.memory_limit_bytes.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(path) = &options.config {
        command.arg("--config").arg(path);
    }
    if options.fault_injection {
        command.arg("--fault-injection");
    }
    // SAFETY: prctl is async-signal-safe; it asks the kernel to SIGTERM the child if
    // this process dies, so executors never outlive their standalone parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match command.spawn() {
        Ok(child) => Some(child),
        Err(error) => {
            tracing::error!(%error, slot, "cannot start executor");
            None
        }
    }
}
