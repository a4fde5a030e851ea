//! The DataFusion session settings every Flotilla process shares.

use std::path::Path;
use std::sync::Arc;

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

/// Session settings from the configuration.
pub fn session_config(config: &FlotillaConfig) -> SessionConfig {
    let mut cfg = SessionConfig::new()
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
/// pool size and spill directory.
pub fn runtime_env(
    registry: Arc<LazyObjectStoreRegistry>,
    memory_limit_bytes: Option<usize>,
    spill_dir: Option<&Path>,
) -> Result<Arc<RuntimeEnv>> {
    let mut builder = RuntimeEnvBuilder::new().with_object_store_registry(registry);
    if let Some(limit) = memory_limit_bytes {
        builder = builder.with_memory_limit(limit, 1.0);
    }
    if let Some(dir) = spill_dir {
        builder = builder.with_temp_file_path(dir);
    }
    Ok(builder.build_arc()?)
}
