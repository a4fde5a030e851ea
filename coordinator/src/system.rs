//! System tables under the `flotilla` schema.
//!
//! `flotilla.executors`: one row per live executor with the tasks it has run. The
//! counts are read from each executor when the table is scanned (falling back to the
//! last heartbeat if the executor does not answer in time), so a client can compare
//! them before and after a query to see which executors ran it, and see an
//! executor go idle (no task running, no memory reserved) after a query ends.
//!
//! `flotilla.queries`: queries running and queued now, the most that ever ran
//! at once, how many were refused, how many attempts were started again after
//! a failure of the cluster, and the admission limits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use flight::control::{actions, ControlClient, ExecutorStats};

use crate::admission::Admission;
use crate::registry::ExecutorRegistry;

/// Time allowed for an executor to report its stats during a scan.
const STATS_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct ExecutorsTable {
    registry: ExecutorRegistry,
    schema: SchemaRef,
}

impl ExecutorsTable {
    pub fn new(registry: ExecutorRegistry) -> Self {
        let schema = Arc::new(Schema::new(vec![
            Field::new("executor_id", DataType::Utf8, false),
            Field::new("worker_url", DataType::Utf8, false),
            Field::new("control_url", DataType::Utf8, false),
            Field::new("pid", DataType::Int64, false),
            Field::new("version", DataType::Utf8, false),
            Field::new(
                "registered_at",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("heartbeat_age_ms", DataType::Int64, false),
            Field::new("tasks_started", DataType::Int64, false),
            Field::new("tasks_running", DataType::Int64, false),
            Field::new("memory_reserved_bytes", DataType::Int64, false),
            Field::new("memory_pool_bytes", DataType::Int64, false),
            Field::new("spill_bytes", DataType::Int64, false),
            Field::new("gpu_stages", DataType::Int64, false),
            Field::new("gpu_fallbacks", DataType::Int64, false),
        ]));
        Self { registry, schema }
    }

    async fn batch(&self) -> Result<RecordBatch> {
        let executors = self.registry.executors();
        let stats = futures::future::join_all(executors.iter().map(|e| async move {
            let live = match ControlClient::new(e.control_url.as_str(), STATS_TIMEOUT) {
                Ok(client) => client
                    .call::<_, ExecutorStats>(actions::STATS, &serde_json::Value::Null)
                    .await
                    .ok(),
                Err(_) => None,
            };
            live.unwrap_or_else(|| e.stats.clone())
        }))
        .await;
        let now = Instant::now();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                executors.iter().map(|e| e.executor_id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                executors.iter().map(|e| e.worker_url.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                executors.iter().map(|e| e.control_url.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(
                executors.iter().map(|e| e.pid as i64),
            )),
            Arc::new(StringArray::from_iter_values(
                executors.iter().map(|e| e.version.as_str()),
            )),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(executors.iter().map(|e| {
                    e.registered_at
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0)
                }))
                .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter_values(executors.iter().map(|e| {
                now.saturating_duration_since(e.last_heartbeat).as_millis() as i64
            }))),
            int_column(&stats, |s| s.tasks_started),
            int_column(&stats, |s| s.tasks_running),
            int_column(&stats, |s| s.memory_reserved_bytes),
            int_column(&stats, |s| s.memory_pool_bytes),
            int_column(&stats, |s| s.spill_bytes),
            int_column(&stats, |s| s.gpu_stages),
            int_column(&stats, |s| s.gpu_fallbacks),
        ];
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

fn int_column(stats: &[ExecutorStats], field: impl Fn(&ExecutorStats) -> u64) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(
        stats.iter().map(|s| field(s) as i64),
    ))
}

/// `flotilla.queries`: one row.
#[derive(Debug)]
pub struct QueriesTable {
    admission: Arc<Admission>,
    retried: Arc<AtomicU64>,
    schema: SchemaRef,
}

impl QueriesTable {
    pub fn new(admission: Arc<Admission>, retried: Arc<AtomicU64>) -> Self {
        let field = |name| Field::new(name, DataType::Int64, false);
        let schema = Arc::new(Schema::new(vec![
            field("running"),
            field("queued"),
            field("running_peak"),
            field("rejected"),
            field("retried"),
            field("running_max"),
            field("queued_max"),
        ]));
        Self {
            admission,
            retried,
            schema,
        }
    }
}

#[async_trait]
impl TableProvider for QueriesTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let counts = self.admission.counts();
        let config = self.admission.config();
        let values = [
            counts.running as i64,
            counts.queued as i64,
            counts.running_peak as i64,
            counts.rejected as i64,
            self.retried.load(Ordering::Relaxed) as i64,
            config.running_max as i64,
            config.queued_max as i64,
        ];
        let columns: Vec<ArrayRef> = values
            .iter()
            .map(|v| Arc::new(Int64Array::from(vec![*v])) as ArrayRef)
            .collect();
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        let table = MemTable::try_new(Arc::clone(&self.schema), vec![vec![batch]])?;
        table.scan(state, projection, filters, limit).await
    }
}

#[async_trait]
impl TableProvider for ExecutorsTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = self.batch().await?;
        let table = MemTable::try_new(Arc::clone(&self.schema), vec![vec![batch]])?;
        table.scan(state, projection, filters, limit).await
    }
}
