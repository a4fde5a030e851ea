//! The query lifecycle on the coordinator: parse, classify, plan, and run.
//!
//! [`Engine`] is shared by every connection: the catalog, the data-root policy, the
//! executor registry. [`Session`] is one connection's state: a DataFusion context
//! whose planner distributes every table scan over the live executors, and the
//! Postgres settings a client can `SET` and `SHOW`.
//!
//! Statements that need no table data (`SET`, `SHOW`, transaction control, catalog
//! queries, `SELECT 1`) are answered here alone, so they keep working while no
//! executor is alive; a statement that reads a table and finds no executor fails at
//! once with [`QueryError::NoExecutors`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{CatalogProviderList, MemorySchemaProvider, SchemaProvider};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::ScalarValue;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SendableRecordBatchStream, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::{DdlStatement, Expr as LogicalExpr, LogicalPlan};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{displayable, execute_stream, ExecutionPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{CreateExternalTable, DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    CloseCursor, CopySource, CopyTarget, Expr, FetchDirection, ObjectName, ObjectNamePart,
    ObjectType, Set, Statement as SqlStatement, Value,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use flight::channels::{ExchangeChannels, QueryFootprint};
use futures::StreamExt;
use sql::catalog::{CatalogEntry, PersistentCatalog};
use sql::config::{FlotillaConfig, TableConfig};
use sql::policy::DataRoots;
use sql::session::{DEFAULT_CATALOG, DEFAULT_SCHEMA, SYSTEM_SCHEMA};

use crate::admission::Admission;
use crate::attempts::{QueryRun, Replan};
use crate::error::{QueryError, Result};
use crate::registry::ExecutorRegistry;
use crate::system::{ExecutorsTable, QueriesTable};

/// Shared state of the coordinator's query service.
pub struct Engine {
    config: FlotillaConfig,
    catalog_list: Arc<dyn CatalogProviderList>,
    persistent: PersistentCatalog,
    roots: DataRoots,
    registry: ExecutorRegistry,
    runtime: Arc<RuntimeEnv>,
    /// Connections to executors, shared by every query.
    channels: ExchangeChannels,
    admission: Arc<Admission>,
    /// Query attempts started again after a failure of the cluster.
    retries: Arc<AtomicU64>,
    /// Started with `--fault-injection`: sessions know `fault_panic(text)`.
    fault_injection: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the catalog and registers every table: configured ones, `trusted`
    /// ones (generated data, exempt from the data-root policy), then persisted ones.
    pub async fn start(
        config: FlotillaConfig,
        registry: ExecutorRegistry,
        trusted: Vec<TableConfig>,
        fault_injection: bool,
    ) -> Result<Arc<Self>> {
        let roots = DataRoots::new(&config.effective_data_roots())?;
        let persistent = PersistentCatalog::open(&config.coordinator.data_dir)?;
        let object_stores = Arc::new(sql::object_stores::LazyObjectStoreRegistry::new(
            config.object_store.clone(),
        ));
        let runtime = sql::session::runtime_env(object_stores, None, None, None)?;
        let bootstrap = SessionContext::new_with_state(
            SessionStateBuilder::new()
                .with_config(sql::session::session_config(&config))
                .with_runtime_env(Arc::clone(&runtime))
                .with_default_features()
                .build(),
        );
        let catalog_list = bootstrap.state().catalog_list().clone();
        let catalog =
            catalog_list
                .catalog(DEFAULT_CATALOG)
                .ok_or_else(|| QueryError::Internal {
                    message: "default catalog missing".into(),
                })?;
        let system = Arc::new(MemorySchemaProvider::new());
        system.register_table(
            "executors".into(),
            Arc::new(ExecutorsTable::new(registry.clone())),
        )?;
        let admission = Arc::new(Admission::new(config.admission.clone()));
        let retries = Arc::new(AtomicU64::new(0));
        system.register_table(
            "queries".into(),
            Arc::new(QueriesTable::new(
                Arc::clone(&admission),
                Arc::clone(&retries),
            )),
        )?;
        catalog.register_schema(SYSTEM_SCHEMA, system)?;
        sql::pg_catalog::register_schema(&catalog_list)?;

        let engine = Arc::new(Self {
            channels: ExchangeChannels::new(config.coordinator.exchange_timeout),
            config,
            catalog_list,
            persistent,
            roots,
            registry,
            runtime,
            admission,
            retries,
            fault_injection,
        });

        for table in trusted {
            let sql = create_sql(&table, &table.location);
            bootstrap.sql(&sql).await?;
        }
        for table in engine.config.tables.clone() {
            let location = engine.roots.check(&table.location)?;
            let sql = create_sql(&table, &location);
            bootstrap.sql(&sql).await?;
        }
        for entry in engine.persistent.entries() {
            if bootstrap.table_exist(entry.name.as_str())? {
                tracing::warn!(
                    table = entry.name,
                    "persisted table shadowed by a configured one; skipped"
                );
                continue;
            }
            // A table whose files are gone must not stop the service: it stays in
            // the catalog file and loads again once its data is back.
            if let Err(error) = bootstrap.sql(&entry.create_sql).await {
                tracing::warn!(table = entry.name, %error, "persisted table failed to load");
            }
        }
        Ok(engine)
    }

    pub fn registry(&self) -> &ExecutorRegistry {
        &self.registry
    }

    pub fn config(&self) -> &FlotillaConfig {
        &self.config
    }

    /// Every catalog, schema and table clients can see.
    pub fn catalog_list(&self) -> &Arc<dyn CatalogProviderList> {
        &self.catalog_list
    }

    /// Names of the scalar functions a session can call.
    pub fn function_names(&self) -> Vec<String> {
        let state = SessionStateBuilder::new().with_default_features().build();
        let mut names: Vec<String> = state.scalar_functions().keys().cloned().collect();
        names.sort();
        names
    }

    /// A new session for one connection of `user`.
    pub fn session(self: &Arc<Self>, user: &str) -> Result<Session> {
        let mut config = sql::session::session_config(&self.config);
        config = config
            .with_create_default_catalog_and_schema(false)
            .with_option_extension(sql::pg_catalog::SessionSettings::default());
        let builder = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(Arc::clone(&self.runtime))
            .with_default_features()
            .with_analyzer_rule(Arc::new(sql::rules::WidenDecimalAvgRule))
            .with_catalog_list(Arc::clone(&self.catalog_list));
        let builder = flight::exchange::with_distributed_planning(
            builder,
            self.registry.live(),
            self.channels.clone(),
            &self.config.query,
        )?;
        let ctx = SessionContext::new_with_state(builder.build());
        sql::pg_catalog::register_functions(&ctx)?;
        if self.fault_injection {
            ctx.register_udf(flight::faults::panic_udf());
        }
        Ok(Session {
            engine: Arc::clone(self),
            user: user.to_string(),
            ctx,
            settings: Mutex::new(Settings::default()),
            cursors: tokio::sync::Mutex::new(HashMap::new()),
            planning: Mutex::new(None),
            state_version: AtomicU64::new(0),
        })
    }
}

fn create_sql(table: &TableConfig, location: &str) -> String {
    let mut sql = format!(
        "CREATE EXTERNAL TABLE \"{}\" STORED AS {} LOCATION '{}'",
        table.name,
        table.format.sql_keyword(),
        location.replace('\'', "''")
    );
    if !table.options.is_empty() {
        let options: Vec<String> = table
            .options
            .iter()
            .map(|(k, v)| format!("'{}' '{}'", k.replace('\'', "''"), v.replace('\'', "''")))
            .collect();
        sql.push_str(&format!(" OPTIONS ({})", options.join(", ")));
    }
    sql
}

/// What a statement did to the transaction state a client tracks.
#[derive(Debug, Clone)]
pub enum Effect {
    None,
    Begin,
    End,
    /// `DEALLOCATE name` (`None`: `ALL`): the protocol layer drops the statements.
    Deallocate(Option<String>),
    /// `DECLARE name CURSOR`: Postgres clients may describe the cursor as a portal
    /// of that name (the statement is `FETCH ALL FROM name`).
    DeclareCursor {
        name: String,
        portal: Box<Prepared>,
    },
}

/// The outcome of one statement.
pub enum Output {
    /// A result set.
    Rows(SendableRecordBatchStream),
    /// `COPY ... TO STDOUT`: rows for the client to receive as copy data.
    Copy {
        stream: SendableRecordBatchStream,
        options: CopyOptions,
    },
    /// A command with its tag (`SET`, `CREATE TABLE`, ...).
    Command {
        tag: String,
        rows: Option<usize>,
        effect: Effect,
    },
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Rows(_) => f.write_str("Output::Rows"),
            Output::Copy { .. } => f.write_str("Output::Copy"),
            Output::Command { tag, .. } => write!(f, "Output::Command({tag})"),
        }
    }
}

fn command(tag: &str) -> Output {
    Output::Command {
        tag: tag.to_string(),
        rows: None,
        effect: Effect::None,
    }
}

/// The row format of `COPY ... TO STDOUT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
    Binary,
}

/// Options of `COPY ... TO STDOUT`, as Postgres takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    pub format: CopyFormat,
    /// CSV only: a first line of column names.
    pub header: bool,
    pub delimiter: Option<char>,
    pub null: Option<String>,
    pub quote: Option<char>,
    pub escape: Option<char>,
}

impl CopyOptions {
    fn from_statement(
        options: &[datafusion::sql::sqlparser::ast::CopyOption],
        legacy: &[datafusion::sql::sqlparser::ast::CopyLegacyOption],
    ) -> Result<Self> {
        use datafusion::sql::sqlparser::ast::{CopyLegacyCsvOption, CopyLegacyOption, CopyOption};
        let mut out = CopyOptions {
            format: CopyFormat::Text,
            header: false,
            delimiter: None,
            null: None,
            quote: None,
            escape: None,
        };
        let unsupported = |what: String| QueryError::Unsupported { what };
        for option in options {
            match option {
                CopyOption::Format(name) => {
                    out.format = match name.value.to_lowercase().as_str() {
                        "text" => CopyFormat::Text,
                        "csv" => CopyFormat::Csv,
                        "binary" => CopyFormat::Binary,
                        other => return Err(unsupported(format!("COPY format {other}"))),
                    }
                }
                CopyOption::Header(on) => out.header = *on,
                CopyOption::Delimiter(c) => out.delimiter = Some(*c),
                CopyOption::Null(text) => out.null = Some(text.clone()),
                CopyOption::Quote(c) => out.quote = Some(*c),
                CopyOption::Escape(c) => out.escape = Some(*c),
                CopyOption::Encoding(e)
                    if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
                other => return Err(unsupported(format!("COPY option {other}"))),
            }
        }
        for option in legacy {
            match option {
                CopyLegacyOption::Binary => out.format = CopyFormat::Binary,
                CopyLegacyOption::Delimiter(c) => out.delimiter = Some(*c),
                CopyLegacyOption::Null(text) => out.null = Some(text.clone()),
                CopyLegacyOption::Header => out.header = true,
                CopyLegacyOption::Csv(csv) => {
                    out.format = CopyFormat::Csv;
                    for c in csv {
                        match c {
                            CopyLegacyCsvOption::Header => out.header = true,
                            CopyLegacyCsvOption::Quote(q) => out.quote = Some(*q),
                            CopyLegacyCsvOption::Escape(e) => out.escape = Some(*e),
                            other => return Err(unsupported(format!("COPY option {other}"))),
                        }
                    }
                }
                other => return Err(unsupported(format!("COPY option {other}"))),
            }
        }
        if out.header && out.format != CopyFormat::Csv {
            return Err(QueryError::Unsupported {
                what: "COPY HEADER outside CSV format".into(),
            });
        }
        Ok(out)
    }
}

/// A statement parsed (and, for queries, planned) once and executed many times.
#[derive(Debug, Clone)]
pub struct Prepared {
    statement: DFStatement,
    /// Result columns; `None` for statements that return no rows.
    pub schema: Option<SchemaRef>,
    /// Parameter types, `$1` first; `None` where neither client nor plan says.
    pub param_types: Vec<Option<DataType>>,
}

/// Postgres settings of one session.
#[derive(Debug, Default)]
struct Settings {
    values: BTreeMap<String, String>,
}

/// Settings every session has: name as `SHOW` displays it, and default. The
/// lookup key is the name in lower case.
const SETTINGS: &[(&str, &str)] = &[
    ("application_name", ""),
    ("bytea_output", "hex"),
    ("client_encoding", "UTF8"),
    ("client_min_messages", "notice"),
    ("DateStyle", "ISO, MDY"),
    ("default_transaction_isolation", "read committed"),
    ("default_transaction_read_only", "off"),
    ("extra_float_digits", "1"),
    ("idle_in_transaction_session_timeout", "0"),
    ("integer_datetimes", "on"),
    ("IntervalStyle", "postgres"),
    ("is_superuser", "on"),
    ("lc_collate", "C"),
    ("lc_ctype", "C"),
    ("lc_messages", "C"),
    ("lc_monetary", "C"),
    ("lc_numeric", "C"),
    ("lc_time", "C"),
    ("lock_timeout", "0"),
    ("max_identifier_length", "63"),
    ("search_path", "\"$user\", public"),
    ("server_encoding", "UTF8"),
    ("server_version", "16.6"),
    ("server_version_num", "160006"),
    ("standard_conforming_strings", "on"),
    ("statement_timeout", "0"),
    ("TimeZone", "Etc/UTC"),
    ("transaction_isolation", "read committed"),
    ("transaction_read_only", "off"),
];

/// Settings a client may not change (the server reports them).
const READ_ONLY_SETTINGS: &[&str] = &[
    "integer_datetimes",
    "is_superuser",
    "lc_collate",
    "lc_ctype",
    "max_identifier_length",
    "server_encoding",
    "server_version",
    "server_version_num",
];

fn canonical_setting(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    match lower.as_str() {
        "time zone" | "time_zone" => "timezone".into(),
        "transaction isolation level" => "transaction_isolation".into(),
        "session authorization" => "session_authorization".into(),
        _ => lower.replace(' ', "_"),
    }
}

/// `(display name, default)` of a known setting, by canonical key.
fn setting_spec(key: &str) -> Option<(&'static str, &'static str)> {
    SETTINGS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(key))
        .copied()
}

/// Whether a dotted name belongs to DataFusion's (or the exchange layer's) options.
fn is_engine_option(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("datafusion.")
        || lower.starts_with("distributed.")
        || lower.starts_with("flotilla.")
}

/// One connection's query state.
pub struct Session {
    engine: Arc<Engine>,
    /// Who connected (admission limits are per user).
    user: String,
    ctx: SessionContext,
    settings: Mutex<Settings>,
    cursors: tokio::sync::Mutex<HashMap<String, Cursor>>,
    /// The session's state as statements that stay on the coordinator plan in
    /// it, kept between statements (see [`Planning`]).
    planning: Mutex<Option<Planning>>,
    /// Bumped whenever a statement may have changed the session's state: a
    /// [`Planning`] taken before is then dropped, never put back.
    state_version: AtomicU64,
}

/// What planning a statement on the coordinator needs, built once and reused
/// until a statement changes the session's state (`SET`, DDL, ...). A copy of
/// the state clones every function registry, and so does a task context: with
/// the physical optimizer, that was most of a `SELECT 1`'s time.
struct Planning {
    /// Built at this [`Session::state_version`].
    version: u64,
    /// A copy of the session's state.
    state: datafusion::execution::SessionState,
    /// The same without physical optimizer rules, for a `SELECT` without
    /// `FROM` (see [`is_constant_select`]), whose initial plan is final.
    bare: datafusion::execution::SessionState,
    /// The task context local plans run in.
    task: Arc<TaskContext>,
}

/// A broadcast join's build side may take at most this part of the smallest
/// executor memory pool (1/8).
const BROADCAST_POOL_FRACTION: u64 = 8;

/// Upper bound on open cursors per session.
const CURSORS_MAX: usize = 1_000;

/// An open cursor (`DECLARE`): the rest of a query's rows, fetched on demand.
struct Cursor {
    stream: SendableRecordBatchStream,
    /// Rows taken from the stream and not fetched yet.
    pending: Option<RecordBatch>,
    /// `WITH HOLD`: the cursor outlives the transaction.
    hold: bool,
}

impl Cursor {
    /// The next `count` rows (all that are left for `None`).
    async fn take(&mut self, count: Option<usize>) -> Result<Vec<RecordBatch>> {
        let mut remaining = count.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        while remaining > 0 {
            let batch = match self.pending.take() {
                Some(batch) => batch,
                None => match self.stream.next().await {
                    Some(batch) => batch?,
                    None => break,
                },
            };
            if batch.num_rows() <= remaining {
                remaining -= batch.num_rows();
                out.push(batch);
            } else {
                out.push(batch.slice(0, remaining));
                self.pending = Some(batch.slice(remaining, batch.num_rows() - remaining));
                remaining = 0;
            }
        }
        Ok(out)
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

fn parse(sql: &str) -> Result<Vec<DFStatement>> {
    if sql.contains('\u{FFFD}') {
        // The wire layer replaces bytes that are not UTF-8 with U+FFFD.
        return Err(QueryError::InvalidEncoding);
    }
    let statements = match DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {}) {
        Ok(statements) => statements,
        // DataFusion's parser takes `COPY ... TO 'file'` only; Postgres clients
        // send `COPY ... TO STDOUT`, which the SQL parser itself understands.
        Err(error) if starts_with_keyword(sql, "copy") => {
            match datafusion::sql::sqlparser::parser::Parser::parse_sql(&PostgreSqlDialect {}, sql)
            {
                Ok(statements) => statements
                    .into_iter()
                    .map(|s| DFStatement::Statement(Box::new(s)))
                    .collect(),
                Err(_) => return Err(error.into()),
            }
        }
        Err(error) => return Err(error.into()),
    };
    Ok(statements
        .into_iter()
        .map(|mut statement| {
            match &mut statement {
                DFStatement::Statement(inner) => {
                    sql::pg_catalog::rewrite(inner);
                    sql::names::name_columns(inner);
                }
                DFStatement::Explain(explain) => {
                    if let DFStatement::Statement(inner) = explain.statement.as_mut() {
                        sql::pg_catalog::rewrite(inner);
                    }
                }
                _ => {}
            }
            statement
        })
        .collect())
}

impl Session {
    /// Runs every statement of a simple query, in order, stopping at the first error.
    pub async fn execute_sql(&self, sql: &str) -> Vec<Result<Output>> {
        let statements = match parse(sql) {
            Ok(statements) => statements,
            Err(e) => return vec![Err(e)],
        };
        let mut outputs = Vec::with_capacity(statements.len());
        for statement in statements {
            let result = self.execute_statement(statement, Vec::new()).await;
            let failed = result.is_err();
            outputs.push(result);
            if failed {
                break;
            }
        }
        outputs
    }

    /// Parses and plans one statement for the extended protocol. `Ok(None)` for an
    /// empty statement.
    pub async fn prepare(
        &self,
        sql: &str,
        client_types: &[Option<DataType>],
    ) -> Result<Option<Prepared>> {
        let mut statements = parse(sql)?;
        if statements.len() > 1 {
            return Err(QueryError::MultipleStatements);
        }
        let Some(statement) = statements.pop() else {
            return Ok(None);
        };
        let (schema, mut param_types) = self.describe(&statement).await?;
        for (i, client) in client_types.iter().enumerate() {
            if let Some(t) = client {
                if i >= param_types.len() {
                    param_types.resize(i + 1, None);
                }
                param_types[i] = Some(t.clone());
            }
        }
        Ok(Some(Prepared {
            statement,
            schema,
            param_types,
        }))
    }

    /// Executes a prepared statement with its parameter values. Rows come back in
    /// the column types the statement was described with.
    pub async fn execute_prepared(
        &self,
        prepared: &Prepared,
        params: Vec<ScalarValue>,
    ) -> Result<Output> {
        let output = self
            .execute_statement(prepared.statement.clone(), params)
            .await?;
        match (output, &prepared.schema) {
            (Output::Rows(stream), Some(described)) => {
                Ok(Output::Rows(conform(stream, Arc::clone(described))?))
            }
            (output, _) => Ok(output),
        }
    }

    /// Result columns and parameter types of a statement, without running it.
    async fn describe(
        &self,
        statement: &DFStatement,
    ) -> Result<(Option<SchemaRef>, Vec<Option<DataType>>)> {
        match statement {
            DFStatement::Statement(inner) => match inner.as_ref() {
                SqlStatement::ShowVariable { variable } => {
                    let name = join_idents(variable, " ");
                    if is_engine_option(&join_idents(variable, ".")) {
                        return self.describe_plan(statement).await;
                    }
                    let key = canonical_setting(&name);
                    let column = if key == "all" {
                        return Ok((Some(show_all_schema()), vec![]));
                    } else {
                        setting_spec(&key).map(|s| s.0.to_string()).unwrap_or(key)
                    };
                    Ok((Some(text_schema(&[&column])), vec![]))
                }
                SqlStatement::Query(_) => self.describe_plan(statement).await,
                SqlStatement::Fetch { name, .. } => {
                    Ok((Some(self.cursor_schema(&ident_key(name)).await?), vec![]))
                }
                SqlStatement::Explain { .. } => self.describe_plan(statement).await,
                _ => Ok((None, vec![])),
            },
            DFStatement::Explain(explain) if !explain.options.analyze => {
                Ok((Some(text_schema(&["plan_type", "plan"])), vec![]))
            }
            DFStatement::Explain(_) => self.describe_plan(statement).await,
            _ => Ok((None, vec![])),
        }
    }

    async fn describe_plan(
        &self,
        statement: &DFStatement,
    ) -> Result<(Option<SchemaRef>, Vec<Option<DataType>>)> {
        let planning = self.take_planning();
        let state = &planning.state;
        let plan = state.statement_to_plan(statement.clone()).await;
        // The analyzer's rules (type coercion, the widened decimal avg) decide
        // the column types rows will have; describe those, not the raw plan's.
        let analyzed = plan.as_ref().ok().and_then(|plan| {
            state
                .analyzer()
                .execute_and_check(plan.clone(), state.config_options(), |_, _| {})
                .ok()
        });
        self.give_back_planning(planning);
        let plan = plan?;
        let schema = Arc::new(
            analyzed
                .as_ref()
                .unwrap_or(&plan)
                .schema()
                .as_arrow()
                .clone(),
        );
        let schema = sql::names::display_schema(&schema).unwrap_or(schema);
        let mut types = plan.get_parameter_types()?;
        for (id, cast_type) in placeholder_cast_types(&plan)? {
            if let Some(slot @ None) = types.get_mut(&id) {
                *slot = Some(cast_type);
            }
        }
        let mut params: Vec<(usize, Option<DataType>)> = types
            .into_iter()
            .filter_map(|(name, t)| {
                name.strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .map(|n| (n, t))
            })
            .collect();
        params.sort_by_key(|(n, _)| *n);
        let count = params.last().map(|(n, _)| *n).unwrap_or(0);
        let mut out = vec![None; count];
        for (n, t) in params {
            if n >= 1 {
                out[n - 1] = t;
            }
        }
        Ok((Some(schema), out))
    }

    async fn execute_statement(
        &self,
        statement: DFStatement,
        params: Vec<ScalarValue>,
    ) -> Result<Output> {
        // Anything but a query may change the session's state (settings, the
        // catalog, registered functions): the kept planning state goes with it.
        let reads_only = match &statement {
            DFStatement::Statement(inner) => matches!(**inner, SqlStatement::Query(_)),
            DFStatement::Explain(_) => true,
            _ => false,
        };
        if !reads_only {
            self.state_changed();
        }
        let output = match statement {
            DFStatement::Statement(inner) => self.execute_sql_statement(*inner, params).await,
            DFStatement::CreateExternalTable(create) => self.create_external_table(create).await,
            DFStatement::Explain(explain) if !explain.options.analyze => {
                self.explain(*explain.statement, explain.options.verbose)
                    .await
            }
            other => self.run_plan(other, params).await,
        };
        if !reads_only {
            self.state_changed();
        }
        output
    }

    /// Drops the kept planning state: the session's state may have changed.
    fn state_changed(&self) {
        self.state_version.fetch_add(1, Ordering::SeqCst);
        *lock_planning(&self.planning) = None;
    }

    /// The kept planning state, or a new one; give it back with
    /// [`Session::give_back_planning`].
    fn take_planning(&self) -> Planning {
        let kept = lock_planning(&self.planning).take();
        let mut planning = match kept {
            Some(planning) => planning,
            None => {
                let version = self.state_version.load(Ordering::SeqCst);
                let state = self.ctx.state();
                let bare = SessionStateBuilder::new_from_existing(state.clone())
                    .with_physical_optimizer_rules(Vec::new())
                    .build();
                let task = Arc::new(TaskContext::from(&state));
                Planning {
                    version,
                    state,
                    bare,
                    task,
                }
            }
        };
        // `now()` and friends read the statement's start.
        planning.state.mark_start_execution();
        planning.bare.mark_start_execution();
        planning
    }

    /// Keeps `planning` for the next statement, unless the session's state
    /// changed since it was built.
    fn give_back_planning(&self, planning: Planning) {
        let mut kept = lock_planning(&self.planning);
        if planning.version == self.state_version.load(Ordering::SeqCst) {
            *kept = Some(planning);
        }
    }

    async fn execute_sql_statement(
        &self,
        statement: SqlStatement,
        params: Vec<ScalarValue>,
    ) -> Result<Output> {
        match statement {
            SqlStatement::StartTransaction { begin, .. } => Ok(Output::Command {
                tag: if begin { "BEGIN" } else { "START TRANSACTION" }.into(),
                rows: None,
                effect: Effect::Begin,
            }),
            SqlStatement::Commit { .. } => {
                self.end_transaction().await;
                Ok(Output::Command {
                    tag: "COMMIT".into(),
                    rows: None,
                    effect: Effect::End,
                })
            }
            SqlStatement::Rollback { savepoint, .. } => {
                if savepoint.is_none() {
                    self.end_transaction().await;
                }
                Ok(Output::Command {
                    tag: "ROLLBACK".into(),
                    rows: None,
                    effect: if savepoint.is_some() {
                        Effect::None
                    } else {
                        Effect::End
                    },
                })
            }
            SqlStatement::Declare { stmts } => self.declare(stmts, params).await,
            SqlStatement::Copy {
                source,
                to: true,
                target: CopyTarget::Stdout,
                options,
                legacy_options,
                ..
            } => {
                let options = CopyOptions::from_statement(&options, &legacy_options)?;
                let mut query = match source {
                    CopySource::Query(query) => SqlStatement::Query(query),
                    CopySource::Table {
                        table_name,
                        columns,
                    } => {
                        let list = if columns.is_empty() {
                            "*".to_string()
                        } else {
                            columns
                                .iter()
                                .map(|c| c.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        };
                        let mut parsed = parse(&format!("SELECT {list} FROM {table_name}"))?;
                        match parsed.pop() {
                            Some(DFStatement::Statement(inner)) => *inner,
                            _ => {
                                return Err(QueryError::Internal {
                                    message: "COPY source did not parse".into(),
                                })
                            }
                        }
                    }
                };
                sql::names::name_columns(&mut query);
                match self
                    .run_plan(DFStatement::Statement(Box::new(query)), params)
                    .await?
                {
                    Output::Rows(stream) => Ok(Output::Copy { stream, options }),
                    _ => Err(QueryError::Internal {
                        message: "COPY source returned no rows".into(),
                    }),
                }
            }
            SqlStatement::Copy { .. } => Err(QueryError::Unsupported {
                what: "COPY other than COPY ... TO STDOUT (tables are files: use CREATE EXTERNAL TABLE)".into(),
            }),
            SqlStatement::Fetch {
                name, direction, ..
            } => self.fetch(&ident_key(&name), direction).await,
            SqlStatement::Close { cursor } => {
                let mut cursors = self.cursors.lock().await;
                match cursor {
                    CloseCursor::All => {
                        cursors.clear();
                        Ok(command("CLOSE CURSOR ALL"))
                    }
                    CloseCursor::Specific { name } => {
                        let key = ident_key(&name);
                        match cursors.remove(&key) {
                            Some(_) => Ok(command("CLOSE CURSOR")),
                            None => Err(QueryError::CursorNotFound { name: key }),
                        }
                    }
                }
            }
            SqlStatement::Savepoint { .. } => Ok(command("SAVEPOINT")),
            SqlStatement::ReleaseSavepoint { .. } => Ok(command("RELEASE")),
            SqlStatement::Discard { .. } => {
                self.lock_settings().values.clear();
                self.mirror_setting("", None);
                self.cursors.lock().await.clear();
                Ok(command("DISCARD ALL"))
            }
            SqlStatement::Deallocate { name, .. } => {
                let target = if name.value.eq_ignore_ascii_case("all") && name.quote_style.is_none()
                {
                    None
                } else {
                    Some(name.value.clone())
                };
                Ok(Output::Command {
                    tag: if target.is_none() {
                        "DEALLOCATE ALL".into()
                    } else {
                        "DEALLOCATE".into()
                    },
                    rows: None,
                    effect: Effect::Deallocate(target),
                })
            }
            SqlStatement::Set(set) => self.set(set, params).await,
            SqlStatement::ShowVariable { variable } => {
                let name = join_idents(&variable, " ");
                let dotted = join_idents(&variable, ".").to_ascii_lowercase();
                if dotted.starts_with("flotilla.") {
                    // DataFusion's SHOW knows its own options only.
                    let value = self
                        .ctx
                        .state()
                        .config()
                        .options()
                        .entries()
                        .into_iter()
                        // An extension's entries are keyed without its prefix.
                        .find(|e| Some(e.key.as_str()) == dotted.strip_prefix("flotilla."))
                        .ok_or_else(|| QueryError::UnknownSetting { name: dotted.clone() })?
                        .value
                        .unwrap_or_default();
                    return rows(
                        text_schema(&[&dotted]),
                        vec![Arc::new(StringArray::from(vec![value]))],
                    );
                }
                if is_engine_option(&join_idents(&variable, ".")) {
                    let statement =
                        DFStatement::Statement(Box::new(SqlStatement::ShowVariable { variable }));
                    return self.run_plan(statement, params).await;
                }
                self.show(&name)
            }
            SqlStatement::Drop {
                object_type: ObjectType::Table,
                if_exists,
                names,
                cascade,
                restrict,
                purge,
                temporary,
                table,
            } => {
                for name in &names {
                    if table_key(name).starts_with(&format!("{SYSTEM_SCHEMA}.")) {
                        return Err(QueryError::Unsupported {
                            what: format!("dropping system table {name}"),
                        });
                    }
                }
                let keys: Vec<String> = names.iter().map(table_key).collect();
                let statement = SqlStatement::Drop {
                    object_type: ObjectType::Table,
                    if_exists,
                    names,
                    cascade,
                    restrict,
                    purge,
                    temporary,
                    table,
                };
                let output = self
                    .run_plan(DFStatement::Statement(Box::new(statement)), params)
                    .await?;
                for key in keys {
                    self.engine.persistent.remove(&key)?;
                }
                Ok(output)
            }
            other => {
                self.run_plan(DFStatement::Statement(Box::new(other)), params)
                    .await
            }
        }
    }

    /// COMMIT or ROLLBACK: cursors without `WITH HOLD` end with the transaction.
    async fn end_transaction(&self) {
        self.cursors.lock().await.retain(|_, cursor| cursor.hold);
    }

    async fn declare(
        &self,
        stmts: Vec<datafusion::sql::sqlparser::ast::Declare>,
        params: Vec<ScalarValue>,
    ) -> Result<Output> {
        let unsupported = |what: &str| QueryError::Unsupported { what: what.into() };
        let [declare] = <[_; 1]>::try_from(stmts)
            .map_err(|_| unsupported("declaring several cursors in one statement"))?;
        let (Some(query), [name]) = (declare.for_query, declare.names.as_slice()) else {
            return Err(unsupported("DECLARE without a cursor query"));
        };
        if declare.scroll == Some(true) {
            return Err(unsupported("SCROLL cursors"));
        }
        let name = ident_key(name);
        if self.cursors.lock().await.contains_key(&name) {
            return Err(QueryError::CursorExists { name });
        }
        let mut statement = SqlStatement::Query(query);
        sql::names::name_columns(&mut statement);
        let output = self
            .run_plan(DFStatement::Statement(Box::new(statement)), params)
            .await?;
        let Output::Rows(stream) = output else {
            return Err(unsupported(
                "a cursor over a statement that returns no rows",
            ));
        };
        let schema = stream.schema();
        let mut cursors = self.cursors.lock().await;
        if cursors.len() >= CURSORS_MAX {
            return Err(QueryError::Unsupported {
                what: format!("more than {CURSORS_MAX} open cursors in one session"),
            });
        }
        cursors.insert(
            name.clone(),
            Cursor {
                stream,
                pending: None,
                hold: declare.hold == Some(true),
            },
        );
        let portal = Prepared {
            statement: parse(&format!("FETCH ALL FROM \"{}\"", name.replace('"', "\"\"")))?
                .pop()
                .ok_or_else(|| QueryError::Internal {
                    message: "FETCH did not parse".into(),
                })?,
            schema: Some(schema),
            param_types: Vec::new(),
        };
        Ok(Output::Command {
            tag: "DECLARE CURSOR".into(),
            rows: None,
            effect: Effect::DeclareCursor {
                name,
                portal: Box::new(portal),
            },
        })
    }

    async fn fetch(&self, name: &str, direction: FetchDirection) -> Result<Output> {
        let count = |value: &datafusion::sql::sqlparser::ast::ValueWithSpan| {
            value
                .to_string()
                .parse::<usize>()
                .map_err(|_| QueryError::Unsupported {
                    what: format!("FETCH count {value}"),
                })
        };
        let rows = match &direction {
            FetchDirection::Next | FetchDirection::Forward { limit: None } => Some(1),
            FetchDirection::Count { limit } | FetchDirection::Forward { limit: Some(limit) } => {
                Some(count(limit)?)
            }
            FetchDirection::All | FetchDirection::ForwardAll => None,
            other => {
                return Err(QueryError::Unsupported {
                    what: format!("FETCH {other} (cursors move forward only)"),
                })
            }
        };
        let mut cursors = self.cursors.lock().await;
        let cursor = cursors
            .get_mut(name)
            .ok_or_else(|| QueryError::CursorNotFound {
                name: name.to_string(),
            })?;
        let schema = cursor.stream.schema();
        let batches = cursor.take(rows).await?;
        Ok(Output::Rows(Box::pin(MemoryStream::try_new(
            batches, schema, None,
        )?)))
    }

    /// Result columns of `FETCH` from an open cursor.
    async fn cursor_schema(&self, name: &str) -> Result<SchemaRef> {
        self.cursors
            .lock()
            .await
            .get(name)
            .map(|c| c.stream.schema())
            .ok_or_else(|| QueryError::CursorNotFound {
                name: name.to_string(),
            })
    }

    /// Carries a changed setting into the session's options, where
    /// `current_setting()` and `pg_settings` read it (`None`: back to default).
    fn mirror_setting(&self, name: &str, value: Option<&str>) {
        let state = self.ctx.state_ref();
        let mut state = state.write();
        if let Some(settings) = state
            .config_mut()
            .options_mut()
            .extensions
            .get_mut::<sql::pg_catalog::SessionSettings>()
        {
            match name {
                "" => settings.clear(),
                _ => settings.put(name, value),
            }
        }
    }

    fn lock_settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn set(&self, set: Set, params: Vec<ScalarValue>) -> Result<Output> {
        match set {
            Set::SingleAssignment {
                variable, values, ..
            } => {
                let name = variable.to_string();
                if is_engine_option(&name) {
                    let statement = DFStatement::Statement(Box::new(SqlStatement::Set(
                        Set::SingleAssignment {
                            scope: None,
                            hivevar: false,
                            variable,
                            values,
                        },
                    )));
                    return self.run_plan(statement, params).await;
                }
                let value = values.iter().map(expr_text).collect::<Vec<_>>().join(", ");
                self.assign(&name, &value)?;
                Ok(command("SET"))
            }
            Set::MultipleAssignments { assignments } => {
                for assignment in assignments {
                    self.assign(&assignment.name.to_string(), &expr_text(&assignment.value))?;
                }
                Ok(command("SET"))
            }
            Set::SetTimeZone { value, .. } => {
                self.assign("timezone", &expr_text(&value))?;
                Ok(command("SET"))
            }
            // Transaction modes, roles, names and session parameters are accepted and
            // have no effect: this engine has no transactions or roles.
            _ => Ok(command("SET")),
        }
    }

    fn assign(&self, name: &str, value: &str) -> Result<()> {
        let key = canonical_setting(name);
        let invalid = |reason: &str| QueryError::InvalidSetting {
            name: name.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        };
        if READ_ONLY_SETTINGS.contains(&key.as_str()) {
            return Err(QueryError::ReadOnlySetting {
                name: name.to_string(),
            });
        }
        let known = setting_spec(&key).is_some();
        if !known && !key.contains('.') && !matches!(key.as_str(), "session_authorization" | "role")
        {
            return Err(QueryError::UnknownSetting {
                name: name.to_string(),
            });
        }
        let normalized = match key.as_str() {
            "client_encoding" => {
                let upper = value.to_ascii_uppercase().replace('-', "");
                if !matches!(upper.as_str(), "UTF8" | "UNICODE") {
                    return Err(invalid("only UTF8 is supported"));
                }
                "UTF8".to_string()
            }
            "datestyle" => {
                if !value.to_ascii_uppercase().contains("ISO") && !value.is_empty() {
                    return Err(invalid("only the ISO date style is supported"));
                }
                "ISO, MDY".to_string()
            }
            "extra_float_digits" => {
                let digits: i32 = value
                    .parse()
                    .map_err(|_| invalid("an integer from -15 to 3 is required"))?;
                if !(-15..=3).contains(&digits) {
                    return Err(invalid("an integer from -15 to 3 is required"));
                }
                digits.to_string()
            }
            "statement_timeout" => {
                let timeout = parse_timeout(value).map_err(|reason| invalid(&reason))?;
                show_timeout(timeout)
            }
            _ => value.to_string(),
        };
        let default = setting_spec(&key).map(|s| s.1);
        let reset = value.eq_ignore_ascii_case("default") || Some(normalized.as_str()) == default;
        let shown = setting_spec(&key)
            .map(|spec| spec.0)
            .unwrap_or(key.as_str())
            .to_string();
        self.mirror_setting(&shown, (!reset).then_some(normalized.as_str()));
        let mut settings = self.lock_settings();
        if reset {
            settings.values.remove(&key);
        } else {
            settings.values.insert(key, normalized);
        }
        Ok(())
    }

    fn show(&self, name: &str) -> Result<Output> {
        let key = canonical_setting(name);
        if key == "all" {
            let settings = self.lock_settings();
            let mut names = Vec::new();
            let mut values = Vec::new();
            for (display, default) in SETTINGS {
                names.push(display.to_string());
                values.push(
                    settings
                        .values
                        .get(&display.to_ascii_lowercase())
                        .cloned()
                        .unwrap_or_else(|| default.to_string()),
                );
            }
            let descriptions = vec![String::new(); names.len()];
            return rows(
                show_all_schema(),
                vec![
                    Arc::new(StringArray::from(names)),
                    Arc::new(StringArray::from(values)),
                    Arc::new(StringArray::from(descriptions)),
                ],
            );
        }
        let display = setting_spec(&key).map(|s| s.0.to_string());
        let value = self.lock_settings().values.get(&key).cloned();
        let value = match (value, setting_spec(&key)) {
            (Some(v), _) => v,
            (None, Some(spec)) => spec.1.to_string(),
            (None, None) => {
                return Err(QueryError::UnknownSetting {
                    name: name.to_string(),
                })
            }
        };
        let column = display.unwrap_or(key);
        rows(
            text_schema(&[&column]),
            vec![Arc::new(StringArray::from(vec![value]))],
        )
    }

    async fn create_external_table(&self, mut create: CreateExternalTable) -> Result<Output> {
        let key = table_key(&create.name);
        if key.starts_with(&format!("{SYSTEM_SCHEMA}.")) {
            return Err(QueryError::Unsupported {
                what: format!("creating tables in the {SYSTEM_SCHEMA} schema"),
            });
        }
        let mut checked = Vec::with_capacity(create.locations.len());
        for location in &create.locations {
            checked.push(self.engine.roots.check(location)?);
        }
        create.locations = checked;
        let existed = self.ctx.table_exist(key.as_str()).unwrap_or(false);
        let create_sql = create.to_string();
        let temporary = create.temporary;
        let if_not_exists = create.if_not_exists;
        let output = self
            .run_plan(DFStatement::CreateExternalTable(create), Vec::new())
            .await?;
        let kept_old = existed && if_not_exists;
        if !temporary && !kept_old {
            self.engine.persistent.upsert(CatalogEntry {
                name: key,
                create_sql,
            })?;
        }
        Ok(output)
    }

    async fn explain(&self, inner: DFStatement, verbose: bool) -> Result<Output> {
        let (state, _) = self.statement_state()?;
        let logical = state.statement_to_plan(inner).await?;
        let optimized = state.optimize(&logical)?;
        let physical = self.physical_plan(&state, &optimized).await?;
        let staged = if flight::exchange::is_distributed(&physical) {
            flight::exchange::display_staged(physical.as_ref())
        } else {
            displayable(physical.as_ref()).indent(verbose).to_string()
        };
        let kinds = vec!["logical_plan".to_string(), "distributed_plan".to_string()];
        let plans = vec![optimized.display_indent().to_string(), staged];
        rows(
            text_schema(&["plan_type", "plan"]),
            vec![
                Arc::new(StringArray::from(kinds)),
                Arc::new(StringArray::from(plans)),
            ],
        )
    }

    /// The session's state for planning one statement, with task limits fitted to
    /// the live executors, and a channel resolver that records which executors
    /// the statement reaches (the returned footprint). Taken once per statement:
    /// a copy clones every function registry, which is most of the cost of a
    /// trivial query.
    fn statement_state(
        &self,
    ) -> Result<(datafusion::execution::SessionState, Arc<QueryFootprint>)> {
        let live = self.engine.registry.live().len();
        let mut state = self.ctx.state();
        flight::exchange::fit_task_limits(state.config_mut(), live)?;
        // A broadcast build side is held whole by every task that probes it: keep
        // it to a small part of the smallest executor's memory pool.
        if let Some(pool) = self.engine.registry.smallest_pool_bytes() {
            let optimizer = &mut state.config_mut().options_mut().optimizer;
            let cap = (pool / BROADCAST_POOL_FRACTION) as usize;
            if optimizer.hash_join_single_partition_threshold > cap {
                optimizer.hash_join_single_partition_threshold = cap;
                optimizer.hash_join_single_partition_threshold_rows = (cap / 16).max(1);
            }
        }
        let footprint = flight::exchange::track_query(state.config_mut(), &self.engine.channels);
        Ok((state, footprint))
    }

    /// `statement_timeout` in force, if any.
    fn statement_timeout(&self) -> Option<Duration> {
        let settings = self.lock_settings();
        let text = settings.values.get("statement_timeout")?;
        parse_timeout(text).ok().filter(|d| !d.is_zero())
    }

    /// Plans a logical plan physically, in `state` (see [`Session::statement_state`]).
    async fn physical_plan(
        &self,
        state: &datafusion::execution::SessionState,
        logical: &LogicalPlan,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Catalog and system relations live in the coordinator's memory: a query
        // over them alone is planned and run here, never shipped to executors.
        if !scans_files(logical) {
            let planner = datafusion::physical_planner::DefaultPhysicalPlanner::default();
            return Ok(
                datafusion::physical_planner::PhysicalPlanner::create_physical_plan(
                    &planner, logical, state,
                )
                .await?,
            );
        }
        let physical = state.create_physical_plan(logical).await?;
        let needs_executors =
            flight::exchange::is_distributed(&physical) || flight::exchange::reads_files(&physical);
        if needs_executors && self.engine.registry.live().is_empty() {
            return Err(QueryError::NoExecutors);
        }
        Ok(physical)
    }

    /// Plans and runs a statement DataFusion understands.
    async fn run_plan(&self, statement: DFStatement, params: Vec<ScalarValue>) -> Result<Output> {
        let mut planning = self.take_planning();
        let output = self.run_plan_in(&mut planning, statement, params).await;
        self.give_back_planning(planning);
        output
    }

    async fn run_plan_in(
        &self,
        planning: &mut Planning,
        statement: DFStatement,
        params: Vec<ScalarValue>,
    ) -> Result<Output> {
        let started = tokio::time::Instant::now();
        let analyze =
            matches!(&statement, DFStatement::Explain(explain) if explain.options.analyze);
        let mut plan = planning.state.statement_to_plan(statement).await?;
        if !params.is_empty() {
            plan = plan.with_param_values(params)?;
        }
        let tag = match &plan {
            LogicalPlan::Ddl(ddl) => Some(match ddl {
                DdlStatement::CreateExternalTable(_) | DdlStatement::CreateMemoryTable(_) => {
                    "CREATE TABLE"
                }
                DdlStatement::CreateView(_) => "CREATE VIEW",
                DdlStatement::CreateCatalogSchema(_) => "CREATE SCHEMA",
                DdlStatement::CreateCatalog(_) => "CREATE DATABASE",
                DdlStatement::CreateIndex(_) => "CREATE INDEX",
                DdlStatement::DropTable(_) => "DROP TABLE",
                DdlStatement::DropView(_) => "DROP VIEW",
                DdlStatement::DropCatalogSchema(_) => "DROP SCHEMA",
                _ => "OK",
            }),
            LogicalPlan::Statement(_) => Some("SET"),
            _ => None,
        };
        if let Some(tag) = tag {
            // DDL and SET run when the plan is executed; their output is empty.
            self.ctx.execute_logical_plan(plan).await?;
            return Ok(command(tag));
        }
        let optimized = planning.state.optimize(&plan)?;
        let timeout = self.statement_timeout().map(|d| (started + d, d));
        // Only queries that read tables run on executors: they take the
        // session's execution options along, are admitted, and run again if
        // the cluster fails them. The rest run here, in the kept state.
        if !scans_files(&optimized) {
            let start = async {
                let state = match is_constant_select(&optimized) {
                    true => &planning.bare,
                    false => &planning.state,
                };
                let physical = self.physical_plan(state, &optimized).await?;
                Ok::<_, QueryError>(execute_stream(physical, Arc::clone(&planning.task))?)
            };
            let stream = within(timeout, start).await?;
            let run = QueryRun::new(stream, None, timeout, None);
            return Ok(Output::Rows(with_display_names(run.into_stream())));
        }
        let (mut state, footprint) = self.statement_state()?;
        // Executors send their operators' metrics back only for EXPLAIN
        // ANALYZE, which shows them: every other query goes without the cost.
        if analyze {
            state
                .config_mut()
                .options_mut()
                .set("distributed.collect_metrics", "true")?;
        }
        let attempt = uuid::Uuid::new_v4().to_string();
        flight::exchange::send_execution_options(state.config_mut(), &attempt)?;
        let start = async {
            let permit = self.engine.admission.admit(&self.user).await?;
            let physical = self.physical_plan(&state, &optimized).await?;
            let stream = execute_stream(physical, Arc::new(TaskContext::from(&state)))?;
            Ok::<_, QueryError>((stream, permit))
        };
        let (stream, permit) = within(timeout, start).await?;
        let replan = Replan {
            attempt,
            logical: optimized,
            footprint,
            registry: self.engine.registry.clone(),
            retries_max: self.engine.config.query.retries_max,
            retried: Arc::clone(&self.engine.retries),
            stall_timeout: self.engine.config.query.stall_timeout,
            state,
        };
        let run = QueryRun::new(stream, Some(replan), timeout, Some(permit));
        Ok(Output::Rows(with_display_names(run.into_stream())))
    }
}

/// Runs `start` (planning a statement and starting it), failing it with
/// `statement_timeout` at the deadline, if there is one.
async fn within<T>(
    timeout: Option<(tokio::time::Instant, Duration)>,
    start: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match timeout {
        Some((at, timeout)) => tokio::time::timeout_at(at, start)
            .await
            .map_err(|_| QueryError::StatementTimeout { timeout })?,
        None => start.await,
    }
}

fn lock_planning(
    planning: &Mutex<Option<Planning>>,
) -> std::sync::MutexGuard<'_, Option<Planning>> {
    planning.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `plan` is a `SELECT` without `FROM`: projections over one empty
/// relation, with no subquery. DataFusion's initial physical plan of it (a
/// projection over a placeholder row) already meets every requirement, so it
/// is planned without the physical optimizer's rules.
fn is_constant_select(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Projection(projection) => {
            !projection.expr.iter().any(|e| {
                e.exists(|e| {
                    Ok(matches!(
                        e,
                        LogicalExpr::ScalarSubquery(_)
                            | LogicalExpr::Exists(_)
                            | LogicalExpr::InSubquery(_)
                            | LogicalExpr::OuterReferenceColumn(..)
                    ))
                })
                .unwrap_or(true)
            }) && is_constant_select(&projection.input)
        }
        LogicalPlan::EmptyRelation(_) => true,
        _ => false,
    }
}

/// A Postgres time setting: a number of milliseconds, or a number with a unit
/// (`us`, `ms`, `s`, `min`, `h`, `d`).
fn parse_timeout(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| {
        "a number of milliseconds, or a number with a unit, is required".to_string()
    })?;
    let millis = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" => number,
        "us" => number / 1000.0,
        "s" => number * 1e3,
        "min" => number * 60e3,
        "h" => number * 3600e3,
        "d" => number * 86400e3,
        other => return Err(format!("unknown unit \"{other}\" (us, ms, s, min, h or d)")),
    };
    if !millis.is_finite() || millis < 0.0 || millis > i32::MAX as f64 {
        return Err("out of range".to_string());
    }
    Ok(Duration::from_micros((millis * 1000.0) as u64))
}

/// A time setting as Postgres shows it: `0`, `1500ms`, `2s`, `5min`.
fn show_timeout(timeout: Duration) -> String {
    let ms = timeout.as_millis();
    match ms {
        0 => "0".to_string(),
        ms if ms % 60_000 == 0 => format!("{}min", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// The stream under the column names clients see (see `sql::names`).
fn with_display_names(stream: SendableRecordBatchStream) -> SendableRecordBatchStream {
    let Some(shown) = sql::names::display_schema(&stream.schema()) else {
        return stream;
    };
    let out_schema = Arc::clone(&shown);
    let renamed = stream.map(move |batch| {
        let batch = batch?;
        Ok(RecordBatch::try_new(
            Arc::clone(&shown),
            batch.columns().to_vec(),
        )?)
    });
    Box::pin(RecordBatchStreamAdapter::new(out_schema, renamed))
}

/// Casts a result stream to the column types a client was told about, where they
/// differ (a statement described before its parameters were bound).
fn conform(
    stream: SendableRecordBatchStream,
    described: SchemaRef,
) -> Result<SendableRecordBatchStream> {
    let actual = stream.schema();
    let unchanged = actual.fields().len() != described.fields().len()
        || actual
            .fields()
            .iter()
            .zip(described.fields())
            .all(|(a, d)| a.data_type() == d.data_type());
    if unchanged {
        return Ok(stream);
    }
    let target = Arc::new(Schema::new(
        actual
            .fields()
            .iter()
            .zip(described.fields())
            .map(|(a, d)| Field::new(a.name(), d.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let out_schema = Arc::clone(&target);
    let casted = stream.map(move |batch| {
        let batch = batch?;
        let columns = batch
            .columns()
            .iter()
            .zip(target.fields())
            .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(Arc::clone(&target), columns)?)
    });
    Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, casted)))
}

/// A `SHOW` variable's words joined by `separator`: `" "` for Postgres names
/// (`transaction isolation level`), `"."` for engine options.
fn join_idents(variable: &[datafusion::sql::sqlparser::ast::Ident], separator: &str) -> String {
    variable
        .iter()
        .map(|i| i.value.as_str())
        .collect::<Vec<_>>()
        .join(separator)
}

/// Whether a logical plan (subqueries included) reads a file-backed table.
fn scans_files(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let listing = datafusion::datasource::source_as_provider(&scan.source)
                .map(|provider| provider.is::<datafusion::datasource::listing::ListingTable>())
                .unwrap_or(true);
            if listing {
                found = true;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Whether the first word of `sql` (after blanks and comments) is `keyword`.
fn starts_with_keyword(sql: &str, keyword: &str) -> bool {
    let mut rest = sql.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after
                .split_once('\n')
                .map(|(_, r)| r)
                .unwrap_or("")
                .trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after
                .split_once("*/")
                .map(|(_, r)| r)
                .unwrap_or("")
                .trim_start();
        } else {
            break;
        }
    }
    rest.get(..keyword.len())
        .is_some_and(|w| w.eq_ignore_ascii_case(keyword))
        && rest[keyword.len()..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_alphanumeric() && c != '_')
}

/// A cursor's name as Postgres keys it: unquoted names fold to lower case.
fn ident_key(ident: &datafusion::sql::sqlparser::ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// The catalog key of a table name: unquoted parts lower-cased, the default
/// catalog and schema dropped.
fn table_key(name: &ObjectName) -> String {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) if ident.quote_style.is_some() => ident.value.clone(),
            ObjectNamePart::Identifier(ident) => ident.value.to_ascii_lowercase(),
            other => other.to_string(),
        })
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    match parts.as_slice() {
        [catalog, schema, table] if *catalog == DEFAULT_CATALOG && *schema == DEFAULT_SCHEMA => {
            table.to_string()
        }
        [schema, table] if *schema == DEFAULT_SCHEMA => table.to_string(),
        other => other.join("."),
    }
}

/// Types of placeholders written as `$n::type`: the type a client should bind.
fn placeholder_cast_types(plan: &LogicalPlan) -> Result<Vec<(String, DataType)>> {
    let mut found = Vec::new();
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                let (inner, field) = match e {
                    LogicalExpr::Cast(c) => (c.expr.as_ref(), &c.field),
                    LogicalExpr::TryCast(c) => (c.expr.as_ref(), &c.field),
                    _ => return Ok(TreeNodeRecursion::Continue),
                };
                if let LogicalExpr::Placeholder(p) = inner {
                    found.push((p.id.clone(), field.data_type().clone()));
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(found)
}

/// The text of a `SET` value: strings unquoted, everything else as written.
fn expr_text(expr: &Expr) -> String {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            Value::Number(n, _) => n.clone(),
            Value::Boolean(b) => if *b { "on" } else { "off" }.to_string(),
            other => other.to_string(),
        },
        Expr::Identifier(ident) => ident.value.clone(),
        other => other.to_string(),
    }
}

fn text_schema(names: &[&str]) -> SchemaRef {
    Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ))
}

fn show_all_schema() -> SchemaRef {
    text_schema(&["name", "setting", "description"])
}

fn rows(schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<Output> {
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)
        .map_err(|e| QueryError::DataFusion(e.into()))?;
    let stream = MemoryStream::try_new(vec![batch], schema, None)?;
    Ok(Output::Rows(Box::pin(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_keys_normalize() {
        let parse_name = |s: &str| -> ObjectName {
            let stmt = &parse(&format!("DROP TABLE {s}")).unwrap()[0];
            match stmt {
                DFStatement::Statement(inner) => match inner.as_ref() {
                    SqlStatement::Drop { names, .. } => names[0].clone(),
                    _ => unreachable!(),
                },
                _ => unreachable!(),
            }
        };
        assert_eq!(table_key(&parse_name("T1")), "t1");
        assert_eq!(table_key(&parse_name("public.t1")), "t1");
        assert_eq!(table_key(&parse_name("flotilla.public.t1")), "t1");
        assert_eq!(table_key(&parse_name("\"MiXed\"")), "MiXed");
        assert_eq!(
            table_key(&parse_name("flotilla.executors")),
            "flotilla.executors"
        );
    }

    #[test]
    fn replacement_characters_mean_bad_encoding() {
        assert!(matches!(
            parse("select 'a\u{FFFD}'"),
            Err(QueryError::InvalidEncoding)
        ));
    }

    #[test]
    fn timeouts_parse_as_postgres_writes_them() {
        assert_eq!(parse_timeout("2000").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_timeout("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_timeout("1.5 s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_timeout("1min").unwrap(), Duration::from_secs(60));
        assert!(parse_timeout("soon").is_err());
        assert!(parse_timeout("5 fortnights").is_err());
        assert_eq!(show_timeout(Duration::from_secs(2)), "2s");
        assert_eq!(show_timeout(Duration::from_millis(1500)), "1500ms");
        assert_eq!(show_timeout(Duration::ZERO), "0");
    }

    #[test]
    fn setting_names_canonicalize() {
        assert_eq!(canonical_setting("TIME ZONE"), "timezone");
        assert_eq!(
            canonical_setting("transaction isolation level"),
            "transaction_isolation"
        );
        assert_eq!(canonical_setting("DateStyle"), "datestyle");
    }
}
