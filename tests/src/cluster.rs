//! Real Flotilla processes for tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// How to start a standalone cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub executors: usize,
    /// TPC-H scale factor; generated once into the shared test data dir.
    pub tpch: Option<f64>,
    /// Extra TOML configuration.
    pub config: Option<String>,
    pub restart: bool,
    /// Data dir to use instead of a fresh temporary one (to restart on the same catalog).
    pub data_dir: Option<PathBuf>,
    /// Partitions per task (fixed, so plans are the same on every machine).
    pub target_partitions: usize,
    /// Password of user `flotilla`; `None` leaves authentication at `trust`.
    pub password: Option<String>,
    /// Start with `--fault-injection` (executors take faults; `fault_panic` exists).
    pub fault_injection: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            executors: 2,
            tpch: Some(0.1),
            config: None,
            restart: true,
            data_dir: None,
            target_partitions: 2,
            password: None,
            fault_injection: false,
        }
    }
}

impl ClusterOptions {
    /// One executor and no TPC-H data: for tests of the protocol, not of queries.
    pub fn minimal() -> Self {
        Self {
            executors: 1,
            tpch: None,
            ..Self::default()
        }
    }
}

/// A running `flotilla standalone` (or `coordinator`) process; stopped on drop.
pub struct Cluster {
    child: Child,
    pub pg_port: u16,
    /// Port of the Flight SQL front door.
    pub flight_port: u16,
    /// Password of user `flotilla`, where one is configured.
    pub password: Option<String>,
    /// The coordinator's data dir (a fresh temporary one per cluster).
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub log: PathBuf,
}

/// Configuration every test cluster shares: fixed partition counts so plans and
/// task counts are the same on every machine.
fn base_config(target_partitions: usize) -> String {
    format!("[query]\ntarget_partitions = {target_partitions}\n")
}

impl Cluster {
    /// Starts `flotilla standalone` with a fresh data dir.
    pub fn standalone(options: ClusterOptions) -> Result<Self> {
        let (tmp, data_dir) = match &options.data_dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("flotilla-test-")
                    .tempdir()?;
                let dir = tmp.path().to_path_buf();
                (Some(tmp), dir)
            }
        };
        if options.tpch.is_some() && !data_dir.join("tpch").exists() {
            // TPC-H data is shared between tests: generated once per build.
            let shared = crate::shared_data_dir().join("tpch");
            std::fs::create_dir_all(&shared)?;
            std::os::unix::fs::symlink(&shared, data_dir.join("tpch"))?;
        }
        let config_path = data_dir.join("flotilla.toml");
        let mut config = base_config(options.target_partitions);
        if let Some(password) = &options.password {
            config.push_str(&format!(
                "[[auth.user]]\nname = \"{USER}\"\npassword = \"{password}\"\n"
            ));
        }
        if let Some(extra) = &options.config {
            config.push_str(extra);
        }
        std::fs::write(&config_path, config)?;
        let mut command = Command::new(crate::flotilla_bin());
        command
            .arg("standalone")
            .arg("--executors")
            .arg(options.executors.to_string())
            .arg("--pg-listen")
            .arg("127.0.0.1:0")
            .arg("--flight-listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--config")
            .arg(&config_path)
            .arg("--tpch")
            .arg(options.tpch.unwrap_or(0.0).to_string());
        if !options.restart {
            command.arg("--no-restart");
        }
        if options.fault_injection {
            command.arg("--fault-injection");
        }
        let mut cluster = Self::spawn(command, data_dir, tmp, Duration::from_secs(300))?;
        cluster.password = options.password;
        Ok(cluster)
    }

    /// Starts `flotilla coordinator` alone (no executors) on `data_dir`.
    pub fn coordinator_only(data_dir: &Path, config: &str) -> Result<Self> {
        let config_path = data_dir.join("coordinator.toml");
        std::fs::write(&config_path, format!("{}{config}", base_config(2)))?;
        let mut command = Command::new(crate::flotilla_bin());
        command
            .arg("coordinator")
            .arg("--config")
            .arg(&config_path)
            .arg("--pg-listen")
            .arg("127.0.0.1:0")
            .arg("--flight-listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir);
        Self::spawn(
            command,
            data_dir.to_path_buf(),
            None,
            Duration::from_secs(60),
        )
    }

    fn spawn(
        mut command: Command,
        data_dir: PathBuf,
        tmp: Option<tempfile::TempDir>,
        ready_timeout: Duration,
    ) -> Result<Self> {
        let log = data_dir.join(format!("server-{}.log", std::process::id()));
        let log_file = std::fs::File::create(&log)?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .env("RUST_LOG", "info");
        // If the test process dies, the server goes with it.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = command.spawn().context("starting flotilla")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut pg, mut flight, mut sent) = (None, None, false);
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                pg = pg.or_else(|| parse_port(&line));
                flight = flight.or_else(|| parse_flight_port(&line));
                if let (Some(pg), Some(flight), false) = (pg, flight, sent) {
                    let _ = tx.send((pg, flight));
                    sent = true;
                }
            }
        });
        let deadline = Instant::now() + ready_timeout;
        let (port, flight_port) = loop {
            if let Ok(ports) = rx.recv_timeout(Duration::from_millis(100)) {
                break ports;
            }
            let exited = child.try_wait()?;
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("flotilla did not become ready (exit: {exited:?}); log:\n{text}");
            }
        };
        Ok(Self {
            child,
            pg_port: port,
            flight_port,
            password: None,
            data_dir,
            _tmp: tmp,
            log,
        })
    }

    /// A connected client (the connection runs on a background task).
    pub async fn client(&self) -> Result<Client> {
        connect_as(self.pg_port, USER, self.password.as_deref()).await
    }

    /// Waits until `count` executors are registered.
    pub async fn wait_executors(&self, count: usize, timeout: Duration) -> Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + timeout;
        loop {
            let rows = simple_rows(&client, "select executor_id from flotilla.executors").await?;
            if rows.len() == count {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} executors registered, wanted {count}", rows.len());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Tasks started per executor id.
    pub async fn tasks_by_executor(&self, client: &Client) -> Result<Vec<(String, i64)>> {
        let rows = simple_rows(
            client,
            "select executor_id, tasks_started from flotilla.executors order by executor_id",
        )
        .await?;
        rows.into_iter()
            .map(|r| {
                let id = r[0].clone().ok_or_else(|| anyhow!("null id"))?;
                let n = r[1].clone().ok_or_else(|| anyhow!("null count"))?.parse()?;
                Ok((id, n))
            })
            .collect()
    }

    /// Process ids of the registered executors.
    pub async fn executor_pids(&self, client: &Client) -> Result<Vec<i32>> {
        Ok(simple_rows(client, "select pid from flotilla.executors")
            .await?
            .into_iter()
            .filter_map(|r| r[0].as_deref().and_then(|p| p.parse().ok()))
            .collect())
    }

    /// Process id of the coordinator (the `flotilla standalone` or `coordinator` process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server with SIGTERM and waits for it (up to 10 s, then SIGKILL).
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Ok(self.child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.stop();
        }
    }
}

/// The Flight SQL port from "Flight SQL: grpc://IP:PORT" (standalone) or
/// "..., Flight SQL on grpc://IP:PORT, ..." (coordinator).
fn parse_flight_port(line: &str) -> Option<u16> {
    let rest = line.split("grpc://").nth(1)?;
    let addr = rest.split([',', ' ']).next()?;
    addr.rsplit(':').next()?.parse().ok()
}

fn parse_port(line: &str) -> Option<u16> {
    // "Connect with: psql -h 127.0.0.1 -p PORT -U flotilla" (standalone) or
    // "coordinator ready: postgres on 127.0.0.1:PORT, ..." (coordinator).
    if let Some(rest) = line.split(" -p ").nth(1) {
        return rest.split_whitespace().next()?.parse().ok();
    }
    if let Some(rest) = line.strip_prefix("coordinator ready: postgres on ") {
        let addr = rest.split(',').next()?;
        return addr.rsplit(':').next()?.parse().ok();
    }
    None
}

/// The user test clients connect as.
pub const USER: &str = "flotilla";

/// Connects a tokio-postgres client to 127.0.0.1:`port` (no password).
pub async fn connect(port: u16) -> Result<Client> {
    connect_as(port, USER, None).await
}

/// Connects a tokio-postgres client to 127.0.0.1:`port` as `user`.
pub async fn connect_as(port: u16, user: &str, password: Option<&str>) -> Result<Client> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname("flotilla")
        .connect_timeout(Duration::from_secs(10));
    if let Some(password) = password {
        config.password(password);
    }
    let (client, connection) = config
        .connect(NoTls)
        .await
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Rows of a simple query as text (None for NULL).
pub async fn simple_rows(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// The SQLSTATE of an error from tokio-postgres.
pub fn sqlstate(error: &tokio_postgres::Error) -> Option<String> {
    error.code().map(|c| c.code().to_string())
}

/// Waits until none of `pids` is alive; fails after `timeout`.
pub async fn wait_exited(pids: &[i32], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|p| crate::process_alive(*p)) {
        if Instant::now() > deadline {
            bail!("processes {pids:?} still alive after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
