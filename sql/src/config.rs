//! The one typed configuration of a Flotilla process: file, flags and defaults.
//!
//! Every key is known: unknown keys are rejected when the file is read, and
//! [`FlotillaConfig::validate`] checks what serde cannot.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SqlError};

/// Root of the configuration file (TOML).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlotillaConfig {
    #[serde(default)]
    pub coordinator: CoordinatorConfig,
    #[serde(default)]
    pub executor: ExecutorConfig,
    #[serde(default)]
    pub query: QueryConfig,
    #[serde(default)]
    pub admission: AdmissionConfig,
    #[serde(default)]
    pub object_store: ObjectStoreConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// Certificates for TLS on both front doors; absent means plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Tables registered at start-up, in addition to those in the persisted catalog.
    #[serde(default, rename = "table")]
    pub tables: Vec<TableConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Address of the Postgres wire protocol listener.
    pub pg_listen: SocketAddr,
    /// Address of the Arrow Flight SQL listener.
    pub flight_listen: SocketAddr,
    /// Address of the control plane that executors register with.
    pub control_listen: SocketAddr,
    /// Where the catalog (and generated data) is kept.
    pub data_dir: PathBuf,
    /// File locations that tables may point at. Empty means: the data dir only.
    pub data_roots: Vec<String>,
    /// How often executors heartbeat.
    #[serde(with = "duration_text")]
    pub heartbeat_interval: Duration,
    /// An executor silent for this long is taken out of scheduling, and the
    /// queries it was working for start again on the others.
    #[serde(with = "duration_text")]
    pub executor_timeout: Duration,
    /// How long an executor may take to start answering a request for a task's
    /// output or a fragment (streaming the rows may take as long as it takes).
    /// Past it the executor counts as lost for that query. Executors get the
    /// value when they register.
    #[serde(with = "duration_text")]
    pub exchange_timeout: Duration,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            pg_listen: "127.0.0.1:5432".parse().expect("valid default address"),
            flight_listen: "127.0.0.1:50051".parse().expect("valid default address"),
            control_listen: "127.0.0.1:0".parse().expect("valid default address"),
            data_dir: PathBuf::from("flotilla-data"),
            data_roots: Vec::new(),
            heartbeat_interval: Duration::from_millis(500),
            executor_timeout: Duration::from_secs(3),
            exchange_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorConfig {
    /// Address the executor's worker service listens on (port 0: any free port).
    pub listen: SocketAddr,
    /// Address of its control plane (stats, cancels); unset: the worker's
    /// address with any free port. Advertised with the worker URL's host.
    pub control_listen: Option<SocketAddr>,
    /// Memory pool size for query execution. Unset: 70 % of the memory this
    /// process may use (its cgroup limit, else the machine's), shared among the
    /// executors `standalone` starts on one machine. Sorts, aggregations and
    /// sort-merge joins spill to disk beyond it; an operator that cannot spill
    /// fails its query with a resources-exhausted error.
    pub memory_limit_bytes: Option<usize>,
    /// Directory for spill files; `None` means the system temporary directory.
    pub spill_dir: Option<PathBuf>,
    /// Most bytes of spill files on disk at once; a query that needs more fails
    /// with a resources-exhausted error.
    pub spill_bytes_max: u64,
    /// The device GPU stages run on: `detect` (the first CUDA device of
    /// compute capability 8.0 or more, if there is one), `none`, or `emulate`
    /// (the kernels' host emulation, to test the GPU path without a GPU).
    pub gpu: GpuDevice,
}

/// Where an executor's GPU stages run (`executor.gpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuDevice {
    #[default]
    Detect,
    None,
    Emulate,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".parse().expect("valid default address"),
            control_listen: None,
            memory_limit_bytes: None,
            spill_dir: None,
            spill_bytes_max: 64 << 30,
            gpu: GpuDevice::Detect,
        }
    }
}

/// Limits on the queries that run on executors at once (statements answered
/// by the coordinator alone, such as catalog queries and `SET`, are not
/// counted). A query over the running limit waits in the queue; one over the
/// queue's limit is refused at once (SQLSTATE 53300, `RESOURCE_EXHAUSTED`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Queries running at once, cluster-wide.
    pub running_max: usize,
    /// Queries waiting for a running slot, cluster-wide.
    pub queued_max: usize,
    /// Queries one user may run at once; 0: no per-user limit.
    pub user_running_max: usize,
    /// Queries one user may have waiting; 0: no per-user limit.
    pub user_queued_max: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            running_max: 32,
            queued_max: 256,
            user_running_max: 0,
            user_queued_max: 0,
        }
    }
}

/// Query knobs that apply to every session (each is also settable with `SET`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Partitions per task (DataFusion's `target_partitions`); 0 means the core count.
    pub target_partitions: usize,
    /// Rows per batch.
    pub batch_size: usize,
    /// Bytes of input files per partition of a leaf stage; smaller means more tasks.
    pub scan_bytes_per_partition: usize,
    /// Compression of shuffle data: `lz4`, `zstd` or `none`.
    pub exchange_compression: String,
    /// Bytes of shuffle data one consumer buffers from one executor before it
    /// pauses reading (backpressure: a slow client holds at most this much per
    /// executor on the coordinator). The budget is shared by the partitions
    /// one connection carries: too small a budget lets one partition's unread
    /// rows stop a sibling that waits for its own (a stall; see
    /// `query.stall_timeout`).
    pub exchange_buffer_bytes: usize,
    /// A join whose build side is estimated below this many bytes collects it
    /// whole (in a cluster: broadcasts it to every task of the probe side)
    /// instead of shuffling both sides by key. DataFusion's own default is 1 MiB.
    pub broadcast_join_max_bytes: usize,
    /// Times a query is run again after a failure of the cluster (an executor
    /// lost or unreachable) before the failure is reported, as long as no row
    /// has reached the client. Failures of the query itself are never retried.
    pub retries_max: u32,
    /// A query whose executors use no CPU for this long while it waits for
    /// rows has stalled (a deadlock in an operator, say) and fails instead of
    /// waiting for ever; zero: never.
    #[serde(with = "duration_text")]
    pub stall_timeout: Duration,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            target_partitions: 0,
            batch_size: 8192,
            scan_bytes_per_partition: 4 * 1024 * 1024,
            exchange_compression: "none".to_string(),
            exchange_buffer_bytes: 64 << 20,
            broadcast_join_max_bytes: 64 * 1024 * 1024,
            retries_max: 2,
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// Object-store settings; the coordinator hands them to executors when they register.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectStoreConfig {
    /// S3 (or S3-compatible) settings; unset fields fall back to the `AWS_*` environment.
    pub s3: Option<S3Config>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Allow plain `http://` endpoints (local S3-compatible servers).
    pub allow_http: bool,
}

/// How clients prove who they are, on both front doors.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `trust`, `scram-sha-256`, `password` (cleartext; use with TLS) or `md5`.
    /// Unset: `scram-sha-256` when users are configured, else `trust`, which is
    /// refused unless both listeners are on loopback.
    pub method: Option<AuthMethod>,
    /// How long a Flight SQL bearer token stays valid after the handshake.
    #[serde(with = "duration_text")]
    pub token_ttl: Duration,
    #[serde(rename = "user")]
    pub users: Vec<UserConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            method: None,
            token_ttl: Duration::from_secs(3600),
            users: Vec::new(),
        }
    }
}

/// How a Postgres client authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    Trust,
    ScramSha256,
    Password,
    Md5,
}

/// One user allowed to connect.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password: String,
}

/// PEM files of the server's certificate chain and private key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A file format Flotilla can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Parquet,
    Csv,
    Json,
}

impl FileFormat {
    /// The keyword `CREATE EXTERNAL TABLE ... STORED AS` takes.
    pub fn sql_keyword(self) -> &'static str {
        match self {
            FileFormat::Parquet => "PARQUET",
            FileFormat::Csv => "CSV",
            FileFormat::Json => "JSON",
        }
    }
}

/// A table declared in the configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    pub name: String,
    pub format: FileFormat,
    /// A local path or an object-store URL (`s3://bucket/prefix/`).
    pub location: String,
    /// Format options as `CREATE EXTERNAL TABLE ... OPTIONS` takes them (e.g. `format.has_header`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl FlotillaConfig {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| SqlError::io(path, e))?;
        let config = Self::from_toml(&text, &path.display().to_string())?;
        Ok(config)
    }

    /// Parses and validates TOML text; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let config: FlotillaConfig = toml::from_str(text).map_err(|e| SqlError::InvalidConfig {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Checks what the types cannot express.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |message: String| SqlError::InvalidConfig {
            origin: origin.to_string(),
            message,
        };
        if self.coordinator.heartbeat_interval.is_zero() {
            return Err(bad(
                "coordinator.heartbeat_interval must be above zero".into()
            ));
        }
        if self.coordinator.executor_timeout <= self.coordinator.heartbeat_interval {
            return Err(bad(
                "coordinator.executor_timeout must be longer than coordinator.heartbeat_interval"
                    .into(),
            ));
        }
        if self.coordinator.exchange_timeout.is_zero() {
            return Err(bad("coordinator.exchange_timeout must be above zero".into()));
        }
        if self.admission.running_max == 0 {
            return Err(bad("admission.running_max must be above zero".into()));
        }
        if self.query.batch_size == 0 {
            return Err(bad("query.batch_size must be above zero".into()));
        }
        if self.query.exchange_buffer_bytes == 0 {
            return Err(bad("query.exchange_buffer_bytes must be above zero".into()));
        }
        if self.query.scan_bytes_per_partition == 0 {
            return Err(bad(
                "query.scan_bytes_per_partition must be above zero".into()
            ));
        }
        if !["lz4", "zstd", "none"].contains(&self.query.exchange_compression.as_str()) {
            return Err(bad(format!(
                "query.exchange_compression must be lz4, zstd or none, not '{}'",
                self.query.exchange_compression
            )));
        }
        let mut users = std::collections::HashSet::new();
        for user in &self.auth.users {
            if user.name.is_empty() {
                return Err(bad("auth.user name must not be empty".into()));
            }
            if !users.insert(user.name.as_str()) {
                return Err(bad(format!("user '{}' is declared twice", user.name)));
            }
        }
        let method = self.auth_method();
        if method != AuthMethod::Trust && self.auth.users.is_empty() {
            return Err(bad(format!(
                "auth.method {method:?} needs at least one [[auth.user]]"
            )));
        }
        if self.auth.method.is_none()
            && method == AuthMethod::Trust
            && !(self.coordinator.pg_listen.ip().is_loopback()
                && self.coordinator.flight_listen.ip().is_loopback())
        {
            return Err(bad(
                "listening beyond loopback needs [[auth.user]] entries or an explicit auth.method = \"trust\""
                    .into(),
            ));
        }
        if self.auth.token_ttl.is_zero() {
            return Err(bad("auth.token_ttl must be above zero".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for table in &self.tables {
            if !is_identifier(&table.name) {
                return Err(bad(format!(
                    "table name '{}' must be letters, digits and '_', not starting with a digit",
                    table.name
                )));
            }
            if !seen.insert(table.name.to_ascii_lowercase()) {
                return Err(bad(format!("table '{}' is declared twice", table.name)));
            }
        }
        Ok(())
    }

    /// The authentication method in force (see [`AuthConfig::method`]).
    pub fn auth_method(&self) -> AuthMethod {
        match self.auth.method {
            Some(method) => method,
            None if self.auth.users.is_empty() => AuthMethod::Trust,
            None => AuthMethod::ScramSha256,
        }
    }

    /// The data roots in force: the configured ones, or the data dir alone.
    pub fn effective_data_roots(&self) -> Vec<String> {
        if self.coordinator.data_roots.is_empty() {
            vec![self.coordinator.data_dir.display().to_string()]
        } else {
            self.coordinator.data_roots.clone()
        }
    }

    /// Target partitions with 0 resolved to the core count.
    pub fn target_partitions(&self) -> usize {
        match self.query.target_partitions {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        }
    }
}

/// Whether `name` is a plain SQL identifier.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Durations written as text: `500ms`, `3s`, `1m`.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected() {
        let err = FlotillaConfig::from_toml("[coordinator]\npg_lisen = \"x\"\n", "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pg_lisen"), "{err}");
    }

    #[test]
    fn full_file_parses() {
        let text = r#"
            [coordinator]
            pg_listen = "127.0.0.1:6543"
            data_dir = "/tmp/x"
            data_roots = ["/tmp/x", "s3://bucket/"]
            heartbeat_interval = "250ms"
            executor_timeout = "2s"

            [query]
            target_partitions = 4

            [object_store.s3]
            endpoint = "http://127.0.0.1:9000"
            allow_http = true

            [[table]]
            name = "t1"
            format = "csv"
            location = "/tmp/x/t1.csv"
            options = { "format.has_header" = "true" }
        "#;
        let config = FlotillaConfig::from_toml(text, "test").unwrap();
        assert_eq!(config.coordinator.pg_listen.port(), 6543);
        assert_eq!(
            config.coordinator.heartbeat_interval,
            Duration::from_millis(250)
        );
        assert_eq!(config.tables[0].format, FileFormat::Csv);
        assert_eq!(config.target_partitions(), 4);
        assert!(config.object_store.s3.unwrap().allow_http);
    }

    #[test]
    fn auth_defaults_and_checks() {
        let none = FlotillaConfig::from_toml("", "test").unwrap();
        assert_eq!(none.auth_method(), AuthMethod::Trust);
        let users = "[[auth.user]]\nname = \"u\"\npassword = \"p\"\n";
        let with_users = FlotillaConfig::from_toml(users, "test").unwrap();
        assert_eq!(with_users.auth_method(), AuthMethod::ScramSha256);
        let open = "[coordinator]\npg_listen = \"0.0.0.0:5432\"\n";
        assert!(FlotillaConfig::from_toml(open, "test").is_err());
        let explicit = format!("{open}[auth]\nmethod = \"trust\"\n");
        assert!(FlotillaConfig::from_toml(&explicit, "test").is_ok());
        let no_users = "[auth]\nmethod = \"md5\"\n";
        assert!(FlotillaConfig::from_toml(no_users, "test").is_err());
    }

    #[test]
    fn timeout_must_exceed_heartbeat() {
        let text = "[coordinator]\nheartbeat_interval = \"2s\"\nexecutor_timeout = \"1s\"\n";
        assert!(FlotillaConfig::from_toml(text, "test").is_err());
    }

    #[test]
    fn duplicate_and_bad_table_names_are_rejected() {
        let dup = "[[table]]\nname=\"a\"\nformat=\"csv\"\nlocation=\"/x\"\n[[table]]\nname=\"A\"\nformat=\"csv\"\nlocation=\"/y\"\n";
        assert!(FlotillaConfig::from_toml(dup, "test").is_err());
        let bad = "[[table]]\nname=\"1a\"\nformat=\"csv\"\nlocation=\"/x\"\n";
        assert!(FlotillaConfig::from_toml(bad, "test").is_err());
    }
}
