//! The DataFusion session settings every Flotilla process shares.

use std::path::Path;
use std::sync::Arc;

use std::num::NonZeroUsize;

use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::SessionConfig;

use crate::config::FlotillaConfig;
use crate::error::Result;
use crate::object_stores::LazyObjectStoreRegistry;

/// Catalog and schema names clients see (`current_database()`, `current_schema()`).
pub const DEFAULT_CATALOG: &str = "flotilla";
pub const DEFAULT_SCHEMA: &str = "public";
/// Schema that holds the system tables.
pub const SYSTEM_SCHEMA: &str = "flotilla";

/// Whether executors may run supported operators on a GPU
/// (`SET flotilla.gpu = off | auto | force`): `auto` where the executor's
/// cost model expects a gain, `force` wherever supported and a device exists.
/// Each executor decides with what it has; without a device the CPU answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpuSetting {
    Off,
    #[default]
    Auto,
    Force,
}

impl std::str::FromStr for GpuSetting {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(GpuSetting::Off),
            "auto" => Ok(GpuSetting::Auto),
            "force" => Ok(GpuSetting::Force),
            other => Err(format!(
                "flotilla.gpu must be off, auto or force, not '{other}'"
            )),
        }
    }
}

impl std::fmt::Display for GpuSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GpuSetting::Off => "off",
            GpuSetting::Auto => "auto",
            GpuSetting::Force => "force",
        })
    }
}

impl datafusion::config::ConfigField for GpuSetting {
    fn visit<V: datafusion::config::Visit>(&self, v: &mut V, key: &str, description: &'static str) {
        v.some(key, self, description)
    }

    fn set(&mut self, _key: &str, value: &str) -> datafusion::error::Result<()> {
        *self = value
            .parse()
            .map_err(datafusion::error::DataFusionError::Configuration)?;
        Ok(())
    }

    fn reset(&mut self, _key: &str) -> datafusion::error::Result<()> {
        *self = GpuSetting::default();
        Ok(())
    }
}

datafusion::common::extensions_options! {
    /// Flotilla's own session settings, `SET flotilla.<name> = ...`; they
    /// travel with every task to the executors.
    pub struct FlotillaOptions {
        /// GPU use on executors: off, auto or force.
        pub gpu: GpuSetting, default = GpuSetting::Auto
    }
}

impl datafusion::config::ConfigExtension for FlotillaOptions {
    const PREFIX: &'static str = "flotilla";
}

/// Session settings from the configuration.
pub fn session_config(config: &FlotillaConfig) -> SessionConfig {
    let mut cfg = SessionConfig::new()
        .with_option_extension(FlotillaOptions::default())
        .with_target_partitions(config.target_partitions())
        .with_batch_size(config.query.batch_size)
        .with_information_schema(true)
        .with_default_catalog_and_schema(DEFAULT_CATALOG, DEFAULT_SCHEMA)
        .with_create_default_catalog_and_schema(true);
    let options = cfg.options_mut();
    // Postgres semantics where DataFusion offers a choice.
    options.sql_parser.enable_ident_normalization = true;
    options.execution.parquet.pushdown_filters = false;
    // Broadcast rather than shuffle build sides up to this size: shuffling the
    // probe side (often the largest table) costs more than sending every task a
    // copy of a small build side. DataFusion decides on the byte estimate, and
    // on the row count where no byte estimate exists.
    options.optimizer.hash_join_single_partition_threshold = config.query.broadcast_join_max_bytes;
    options.optimizer.hash_join_single_partition_threshold_rows =
        (config.query.broadcast_join_max_bytes / 16).max(1);
    cfg
}

/// A runtime whose object stores come from `registry`, with an optional memory
/// pool size, and spill files (if any) under `spill_dir` up to `spill_bytes_max`.
pub fn runtime_env(
    registry: Arc<LazyObjectStoreRegistry>,
    memory_limit_bytes: Option<usize>,
    spill_dir: Option<&Path>,
    spill_bytes_max: Option<u64>,
) -> Result<Arc<RuntimeEnv>> {
    let mut builder = RuntimeEnvBuilder::new().with_object_store_registry(registry);
    if let Some(limit) = memory_limit_bytes {
        // Fair rather than greedy: operators that can spill (sorts,
        // aggregations, repartitions) each get an equal share and spill early,
        // which leaves room for those that cannot (hash join build sides, the
        // merge phase of a sort) instead of letting the first sort take it all.
        builder = builder.with_memory_pool(Arc::new(TrackConsumersPool::new(
            FairSpillPool::new(limit),
            NonZeroUsize::new(5).expect("nonzero"),
        )));
        // A merge of spilled runs reserves a buffer per run it reads, as many
        // runs as the pool lets it: in a small pool one merge would take the
        // memory every other operator needs. Bound the runs per merge pass
        // (more passes, bounded memory); large pools keep DataFusion's default.
        if let Some(fan_in) = spill_merge_fan_in(limit) {
            builder = builder.with_max_spill_merge_fan_in(fan_in);
        }
    }
    if let Some(dir) = spill_dir {
        builder = builder.with_temp_file_path(dir);
    }
    if let Some(bytes) = spill_bytes_max {
        builder = builder.with_max_temp_directory_size(bytes);
    }
    Ok(builder.build_arc()?)
}

/// Spilled runs one merge pass may read, for a pool of `pool_bytes`: one per
/// 16 MiB of pool, 2 to 16; `None` (no bound) from 1 GiB up.
pub fn spill_merge_fan_in(pool_bytes: usize) -> Option<usize> {
    (pool_bytes < 1 << 30).then(|| (pool_bytes >> 24).clamp(2, 16))
}

/// The memory pool an executor gets when none is configured: 70 % of what this
/// process may use (its cgroup's limit, else the machine's memory), divided by
/// `executors_on_host`.
pub fn default_memory_pool_bytes(executors_on_host: usize) -> usize {
    let usable = cgroup_memory_limit()
        .into_iter()
        .chain(physical_memory())
        .min()
        .unwrap_or(4 << 30);
    let share = usable / 10 * 7 / executors_on_host.max(1) as u64;
    share.max(64 << 20) as usize
}

/// The memory limit of this process's cgroup (v2 `memory.max`, v1
/// `memory.limit_in_bytes`), if one is set.
fn cgroup_memory_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .filter_map(|text| text.trim().parse::<u64>().ok())
    // v1 reports "no limit" as a huge number.
    .find(|bytes| *bytes < 1 << 60)
}

/// `MemTotal` from `/proc/meminfo`.
fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}
