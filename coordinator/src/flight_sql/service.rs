//! The Flight SQL RPCs, and the authenticating wrapper around them.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionCancelQueryRequest, ActionCancelQueryResult, ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
    CommandGetCatalogs, CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys,
    CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, CommandGetXdbcTypeInfo, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementQuery, CommandStatementUpdate,
    DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, ActionType, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, Criteria,
    Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, IpcMessage, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use bytes::Bytes;
use datafusion::common::ScalarValue;
use datafusion::execution::SendableRecordBatchStream;
use futures::{stream, Stream, StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::metadata;
use crate::auth::{decode_basic, random_bytes, Tokens, Users};
use crate::engine::{Engine, Output, Prepared, Session};
use crate::error::QueryError;
use crate::pg::errors::{message, sqlstate};

/// Upper bound on open prepared statements, all clients together.
const PREPARED_MAX: usize = 10_000;
/// Upper bound on tickets handed out and not yet expired.
const TICKETS_MAX: usize = 10_000;
/// How long a ticket (a planned query) may wait for its `DoGet`.
const TICKET_TTL: Duration = Duration::from_secs(600);
/// A prepared statement unused for this long is closed.
const PREPARED_IDLE_TTL: Duration = Duration::from_secs(3600);
/// Upper bound on sessions kept for bearer tokens.
const SESSIONS_MAX: usize = 10_000;
/// The user of calls without credentials where authentication is `trust`.
const ANONYMOUS: &str = "flotilla";

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Who made a call: established once per RPC by [`Authenticated`] and passed to
/// the handlers in the request's extensions.
#[derive(Clone)]
pub struct Caller {
    user: String,
    /// The bearer token, where the call carried one.
    token: Option<String>,
    session: Arc<Session>,
}

/// One prepared statement: its owner, its plan and the parameters last bound.
struct PreparedEntry {
    user: String,
    session: Arc<Session>,
    prepared: Prepared,
    params: Option<Vec<ScalarValue>>,
    used: Instant,
}

/// One planned query waiting for `DoGet`.
#[derive(Clone)]
struct TicketEntry {
    user: String,
    session: Arc<Session>,
    prepared: Prepared,
    params: Vec<ScalarValue>,
    created: Instant,
    cancel: watch::Sender<bool>,
}

/// The Flight SQL service over the coordinator's engine.
pub struct FlightSqlFrontDoor {
    engine: Arc<Engine>,
    users: Arc<Users>,
    tokens: Arc<Tokens>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    prepared: Mutex<HashMap<Vec<u8>, PreparedEntry>>,
    tickets: Mutex<HashMap<Vec<u8>, TicketEntry>>,
    sql_info: SqlInfoData,
    xdbc_info: XdbcTypeInfoData,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A query error as a Flight status; the SQLSTATE travels in the `x-sqlstate`
/// metadata entry.
pub fn status(error: &QueryError) -> Status {
    let state = sqlstate(error);
    let text = message(error);
    let mut status = match &state[..2] {
        "57" if state == "57014" => Status::cancelled(text),
        "57" => Status::unavailable(text),
        "0A" => Status::unimplemented(text),
        "53" => Status::resource_exhausted(text),
        "28" => Status::unauthenticated(text),
        "XX" => {
            tracing::error!(%error, "internal error answered to a Flight SQL client");
            Status::internal(text)
        }
        _ if state == "42P01" || state == "42704" => Status::not_found(text),
        _ => Status::invalid_argument(text),
    };
    if let Ok(value) = state.parse() {
        status.metadata_mut().insert("x-sqlstate", value);
    }
    status
}

fn schema_bytes(schema: &Schema) -> Result<Bytes, Status> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &Default::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(message.0)
}

fn flight_info(
    schema: &Schema,
    ticket: Bytes,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, Status> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket { ticket }))
        .with_descriptor(descriptor)
        .with_total_records(-1)
        .with_total_bytes(-1))
}

/// Flight SQL clients (ADBC, JDBC) write parameters as `?`; the engine speaks
/// Postgres' `$1`, `$2`. Rewrites the first into the second outside string
/// literals, quoted identifiers and comments. Text that already uses `$n` is
/// left alone.
pub fn number_placeholders(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let has_dollar_params = bytes
        .windows(2)
        .any(|w| w[0] == b'$' && w[1].is_ascii_digit());
    if has_dollar_params || !sql.contains('?') {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut n = 0;
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                // A doubled quote inside a quoted run stays inside it.
                while let Some(d) = chars.next() {
                    out.push(d);
                    if d == c {
                        if chars.peek() == Some(&c) {
                            out.push(chars.next().unwrap_or(c));
                        } else {
                            break;
                        }
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                out.push(c);
                let mut prev = ' ';
                for d in chars.by_ref() {
                    out.push(d);
                    if prev == '*' && d == '/' {
                        break;
                    }
                    prev = d;
                }
            }
            '?' => {
                n += 1;
                out.push_str(&format!("${n}"));
            }
            _ => out.push(c),
        }
    }
    out
}

/// The FlightInfo of a metadata command: its ticket is the command itself,
/// which `DoGet` answers.
fn command_info(
    schema: &Schema,
    command: impl ProstMessageExt,
    request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>, Status> {
    let ticket = command.as_any().encode_to_vec().into();
    Ok(Response::new(flight_info(
        schema,
        ticket,
        request.into_inner(),
    )?))
}

/// Parameter names in the schemas Flotilla hands out: `$1`, `$2`, ...
fn parameter_schema(prepared: &Prepared) -> Schema {
    Schema::new(
        prepared
            .param_types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                Field::new(
                    format!("${}", i + 1),
                    t.clone().unwrap_or(DataType::Utf8),
                    true,
                )
            })
            .collect::<Vec<_>>(),
    )
}

fn result_schema(prepared: &Prepared) -> SchemaRef {
    prepared
        .schema
        .clone()
        .unwrap_or_else(|| Arc::new(Schema::empty()))
}

/// The values of row `row` of a parameter batch, converted to the types the
/// statement expects.
fn row_params(
    prepared: &Prepared,
    batch: &RecordBatch,
    row: usize,
) -> Result<Vec<ScalarValue>, Status> {
    let expected = prepared.param_types.len();
    if batch.num_columns() != expected {
        return Err(Status::invalid_argument(format!(
            "the statement takes {expected} parameter(s), {} were bound",
            batch.num_columns()
        )));
    }
    batch
        .columns()
        .iter()
        .zip(&prepared.param_types)
        .enumerate()
        .map(|(i, (column, target))| {
            let value = ScalarValue::try_from_array(column.as_ref(), row)
                .map_err(|e| Status::invalid_argument(format!("parameter ${}: {e}", i + 1)))?;
            match target {
                Some(t) if value.data_type() != *t => value.cast_to(t).map_err(|_| {
                    Status::invalid_argument(format!(
                        "parameter ${}: a value of type {} cannot be used as {t}",
                        i + 1,
                        value.data_type()
                    ))
                }),
                _ => Ok(value),
            }
        })
        .collect()
}

async fn parameter_batches(
    request: Request<PeekableFlightDataStream>,
) -> Result<Vec<RecordBatch>, Status> {
    // A message with only the command (no IPC header) carries no parameters.
    let messages = request
        .into_inner()
        .try_filter(|data| futures::future::ready(!data.data_header.is_empty()))
        .map_err(FlightError::from);
    let stream = FlightRecordBatchStream::new_from_flight_data(messages);
    stream.try_collect().await.map_err(Status::from)
}

/// Rows a command reports; result sets are drained and counted.
async fn affected_rows(output: Output) -> Result<i64, Status> {
    match output {
        Output::Command { rows, .. } => Ok(rows.map(|n| n as i64).unwrap_or(0)),
        Output::Copy { .. } => Err(copy_unsupported()),
        Output::Rows(mut stream) => {
            let mut count = 0i64;
            while let Some(batch) = stream.next().await {
                count += batch.map_err(|e| status(&QueryError::from(e)))?.num_rows() as i64;
            }
            Ok(count)
        }
    }
}

fn copy_unsupported() -> Status {
    Status::unimplemented(
        "COPY ... TO STDOUT belongs to the Postgres protocol; over Flight SQL run its query, which already streams Arrow",
    )
}

fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no credentials"))
}

fn check_owner(owner: &str, caller: &Caller, what: &str) -> Result<(), Status> {
    if owner == caller.user {
        Ok(())
    } else {
        Err(Status::not_found(format!("{what} does not exist")))
    }
}

impl FlightSqlFrontDoor {
    pub fn new(engine: Arc<Engine>, users: Arc<Users>, tokens: Arc<Tokens>) -> crate::Result<Self> {
        Ok(Self {
            sql_info: metadata::sql_info(&engine)?,
            xdbc_info: metadata::xdbc_info()?,
            engine,
            users,
            tokens,
            sessions: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashMap::new()),
            tickets: Mutex::new(HashMap::new()),
        })
    }

    fn new_session(&self, user: &str) -> Result<Arc<Session>, Status> {
        self.engine
            .session(user)
            .map(Arc::new)
            .map_err(|e| status(&e))
    }

    /// Who is calling, from the `authorization` headers: a bearer token from the
    /// handshake, or Basic credentials on the call itself. Without either the
    /// call is anonymous, which only `trust` allows.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let mut basic = None;
        for value in metadata.get_all("authorization") {
            let Ok(text) = value.to_str() else { continue };
            if let Some(token) = text
                .strip_prefix("Bearer ")
                .or_else(|| text.strip_prefix("bearer "))
            {
                let token = token.trim();
                let Some(user) = self.tokens.check(token) else {
                    return Err(Status::unauthenticated(
                        "the bearer token is invalid or expired; authenticate again",
                    ));
                };
                let session = self.session_for(token, &user)?;
                return Ok(Caller {
                    user,
                    token: Some(token.to_string()),
                    session,
                });
            }
            if basic.is_none() {
                basic = decode_basic(text);
            }
        }
        if let Some((user, password)) = basic {
            if !self.users.verify(&user, &password) {
                return Err(Status::unauthenticated(format!(
                    "password authentication failed for user \"{user}\""
                )));
            }
            return Ok(Caller {
                session: self.new_session(&user)?,
                user,
                token: None,
            });
        }
        if self.users.method() == sql::config::AuthMethod::Trust {
            return Ok(Caller {
                user: ANONYMOUS.to_string(),
                token: None,
                session: self.new_session(ANONYMOUS)?,
            });
        }
        Err(Status::unauthenticated(
            "authentication required: send Basic credentials in the handshake, then the bearer token it returns",
        ))
    }

    fn session_for(&self, token: &str, user: &str) -> Result<Arc<Session>, Status> {
        let mut sessions = lock(&self.sessions);
        if let Some(session) = sessions.get(token) {
            return Ok(Arc::clone(session));
        }
        if sessions.len() >= SESSIONS_MAX {
            sessions.retain(|t, _| self.tokens.check(t).is_some());
        }
        if sessions.len() >= SESSIONS_MAX {
            return Err(Status::resource_exhausted(
                "too many open Flight SQL sessions",
            ));
        }
        let session = self.new_session(user)?;
        sessions.insert(token.to_string(), Arc::clone(&session));
        Ok(session)
    }

    /// Handshake: Basic credentials (header or `BasicAuth` payload) in, bearer
    /// token out, as an `authorization` response header and as the payload.
    async fn handshake_token(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<BoxStream<HandshakeResponse>>, Status> {
        let mut credentials = None;
        for value in request.metadata().get_all("authorization") {
            if let Some(found) = value.to_str().ok().and_then(decode_basic) {
                credentials = Some(found);
                break;
            }
        }
        let mut messages = request.into_inner();
        if credentials.is_none() {
            if let Some(first) = messages.message().await? {
                if let Ok(auth) = arrow_flight::BasicAuth::decode(first.payload) {
                    if !auth.username.is_empty() {
                        credentials = Some((auth.username, auth.password));
                    }
                }
            }
        }
        let user = match credentials {
            Some((user, password)) => {
                if !self.users.verify(&user, &password) {
                    return Err(Status::unauthenticated(format!(
                        "password authentication failed for user \"{user}\""
                    )));
                }
                user
            }
            None if self.users.method() == sql::config::AuthMethod::Trust => ANONYMOUS.to_string(),
            None => {
                return Err(Status::unauthenticated(
                    "the handshake needs an authorization: Basic header",
                ))
            }
        };
        let token = self.tokens.issue(&user);
        self.session_for(&token, &user)?;
        let response = HandshakeResponse {
            protocol_version: 0,
            payload: Bytes::from(token.clone()),
        };
        let mut response: Response<BoxStream<HandshakeResponse>> =
            Response::new(Box::pin(stream::iter([Ok(response)])));
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("token is not a valid header value"))?;
        response.metadata_mut().insert("authorization", header);
        Ok(response)
    }

    fn store_ticket(&self, entry: TicketEntry) -> Result<Bytes, Status> {
        let handle = random_bytes(16);
        let mut tickets = lock(&self.tickets);
        let now = Instant::now();
        tickets.retain(|_, t| now.duration_since(t.created) < TICKET_TTL);
        if tickets.len() >= TICKETS_MAX {
            return Err(Status::resource_exhausted(
                "too many queries planned and not fetched; fetch or cancel some",
            ));
        }
        tickets.insert(handle.clone(), entry);
        Ok(TicketStatementQuery {
            statement_handle: handle.into(),
        }
        .as_any()
        .encode_to_vec()
        .into())
    }

    fn ticket_entry(
        &self,
        caller: &Caller,
        prepared: Prepared,
        params: Vec<ScalarValue>,
    ) -> TicketEntry {
        TicketEntry {
            user: caller.user.clone(),
            session: Arc::clone(&caller.session),
            prepared,
            params,
            created: Instant::now(),
            cancel: watch::channel(false).0,
        }
    }

    /// Runs a planned query and streams its batches as Flight data, in the schema
    /// announced for it.
    async fn run(&self, entry: TicketEntry) -> Result<Response<BoxStream<FlightData>>, Status> {
        let schema = result_schema(&entry.prepared);
        let mut cancel = entry.cancel.subscribe();
        if *cancel.borrow_and_update() {
            return Err(Status::cancelled("the query was cancelled"));
        }
        let output = entry
            .session
            .execute_prepared(&entry.prepared, entry.params.clone())
            .await
            .map_err(|e| status(&e))?;
        let batches: SendableRecordBatchStream = match output {
            Output::Rows(stream) => stream,
            Output::Copy { .. } => return Err(copy_unsupported()),
            Output::Command { .. } => Box::pin(
                datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                    Arc::clone(&schema),
                    stream::empty(),
                ),
            ),
        };
        let target = Arc::clone(&schema);
        let batches = stream::unfold(Some((batches, cancel)), move |state| {
            let target = Arc::clone(&target);
            async move {
                let (mut batches, mut cancel) = state?;
                let next = tokio::select! {
                    biased;
                    changed = cancel.changed() => match changed {
                        Ok(()) if *cancel.borrow() => {
                            return Some((Err(FlightError::Tonic(Box::new(Status::cancelled("the query was cancelled")))), None));
                        }
                        _ => batches.next().await,
                    },
                    item = batches.next() => item,
                };
                let item = next?;
                let item = item
                    .map_err(|e| FlightError::Tonic(Box::new(status(&QueryError::from(e)))))
                    .and_then(|batch| conform_batch(batch, &target))
                    .and_then(|batch| wire_pieces(batch, MAX_MESSAGE_BYTES));
                Some((item, Some((batches, cancel))))
            }
        })
        .map_ok(|pieces| stream::iter(pieces.into_iter().map(Ok)))
        .try_flatten();
        let flight = FlightDataEncoderBuilder::new()
            .with_max_flight_data_size(MAX_MESSAGE_BYTES)
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from);
        Ok(Response::new(Box::pin(flight)))
    }

    fn batch_response(batch: RecordBatch) -> Response<BoxStream<FlightData>> {
        let schema = batch.schema();
        let flight = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(stream::iter([Ok(batch)]))
            .map_err(Status::from);
        Response::new(Box::pin(flight))
    }

    fn prepared_entry<R>(
        &self,
        caller: &Caller,
        handle: &[u8],
        f: impl FnOnce(&mut PreparedEntry) -> R,
    ) -> Result<R, Status> {
        let mut prepared = lock(&self.prepared);
        match prepared.get_mut(handle) {
            Some(entry) => {
                check_owner(&entry.user, caller, "prepared statement")?;
                entry.used = Instant::now();
                Ok(f(entry))
            }
            None => Err(Status::not_found(
                "prepared statement does not exist (closed, expired, or never created)",
            )),
        }
    }

    fn cancel_ticket(&self, ticket: &[u8]) -> CancelStatus {
        let Ok(any) = Any::decode(ticket) else {
            return CancelStatus::Unspecified;
        };
        let Ok(Some(query)) = any.unpack::<TicketStatementQuery>() else {
            return CancelStatus::Unspecified;
        };
        match lock(&self.tickets).get(query.statement_handle.as_ref()) {
            Some(entry) => {
                entry.cancel.send_replace(true);
                CancelStatus::Cancelled
            }
            None => CancelStatus::NotCancellable,
        }
    }
}

/// The size a `DoGet` message aims at: well under the 4 MiB most gRPC clients
/// accept by default.
const MAX_MESSAGE_BYTES: usize = 2 * 1024 * 1024;

/// A batch cut into pieces that each fit one message of about `max_bytes`.
///
/// String and binary view columns share their data buffers with the batch they
/// were filtered, limited or sliced from, and Arrow IPC writes a view column's
/// buffers whole: five rows cut from a scanned page can carry megabytes, and
/// slicing (what arrow-flight's encoder does to split a batch) does not shrink
/// them. Each piece's view columns are compacted to the bytes its rows use.
fn wire_pieces(batch: RecordBatch, max_bytes: usize) -> Result<Vec<RecordBatch>, FlightError> {
    let has_views = batch
        .columns()
        .iter()
        .any(|c| matches!(c.data_type(), DataType::Utf8View | DataType::BinaryView));
    if !has_views || batch.num_rows() == 0 {
        return Ok(vec![batch]);
    }
    let batch = compact_views(&batch)?;
    let bytes: usize = batch
        .columns()
        .iter()
        .map(|c| c.get_buffer_memory_size())
        .sum();
    let pieces = bytes.div_ceil(max_bytes.max(1)).max(1);
    if pieces == 1 {
        return Ok(vec![batch]);
    }
    let rows = batch.num_rows().div_ceil(pieces).max(1);
    (0..batch.num_rows())
        .step_by(rows)
        .map(|offset| compact_views(&batch.slice(offset, rows.min(batch.num_rows() - offset))))
        .collect()
}

/// The batch with every view column holding only the bytes its rows reference.
fn compact_views(batch: &RecordBatch) -> Result<RecordBatch, FlightError> {
    use arrow::array::AsArray;
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8View => Arc::new(c.as_string_view().gc()) as _,
            DataType::BinaryView => Arc::new(c.as_binary_view().gc()) as _,
            _ => Arc::clone(c),
        })
        .collect();
    RecordBatch::try_new(batch.schema(), columns).map_err(FlightError::Arrow)
}

/// A batch in exactly the announced schema: the same columns, cast where the
/// types differ, under the announced field names and nullability.
fn conform_batch(batch: RecordBatch, target: &SchemaRef) -> Result<RecordBatch, FlightError> {
    if batch.schema() == *target {
        return Ok(batch);
    }
    if batch.num_columns() != target.fields().len() {
        return Err(FlightError::Tonic(Box::new(Status::internal(format!(
            "result has {} columns, {} were announced",
            batch.num_columns(),
            target.fields().len()
        )))));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                arrow::compute::cast(column, field.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(FlightError::Arrow)?;
    RecordBatch::try_new(Arc::clone(target), columns).map_err(FlightError::Arrow)
}

#[tonic::async_trait]
impl FlightSqlService for FlightSqlFrontDoor {
    type FlightService = FlightSqlFrontDoor;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<BoxStream<HandshakeResponse>>, Status> {
        self.handshake_token(request).await
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = caller(&request)?;
        let prepared = caller
            .session
            .prepare(&query.query, &[])
            .await
            .map_err(|e| status(&e))?
            .ok_or_else(|| Status::invalid_argument("the query is empty"))?;
        if !prepared.param_types.is_empty() {
            return Err(Status::invalid_argument(
                "a query with parameters must be prepared (CreatePreparedStatement) and bound",
            ));
        }
        let schema = result_schema(&prepared);
        let ticket = self.store_ticket(self.ticket_entry(&caller, prepared, Vec::new()))?;
        Ok(Response::new(flight_info(
            &schema,
            ticket,
            request.into_inner(),
        )?))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let caller = caller(&request)?;
        let (prepared, params) =
            self.prepared_entry(&caller, &cmd.prepared_statement_handle, |e| {
                (e.prepared.clone(), e.params.clone())
            })?;
        let params = match params {
            Some(params) => params,
            None if prepared.param_types.is_empty() => Vec::new(),
            None => {
                return Err(Status::invalid_argument(format!(
                    "the statement takes {} parameter(s); bind them with DoPut first",
                    prepared.param_types.len()
                )))
            }
        };
        let schema = result_schema(&prepared);
        let ticket = self.store_ticket(self.ticket_entry(&caller, prepared, params))?;
        Ok(Response::new(flight_info(
            &schema,
            ticket,
            request.into_inner(),
        )?))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.into_builder().schema(), query, request)
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.clone().into_builder().schema(), query, request)
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.clone().into_builder().schema(), query, request)
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.into_builder().schema(), query, request)
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(
            &query.clone().into_builder(&self.sql_info).schema(),
            query,
            request,
        )
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&metadata::primary_keys_schema(), query, request)
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&metadata::foreign_keys_schema(), query, request)
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&metadata::foreign_keys_schema(), query, request)
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&metadata::foreign_keys_schema(), query, request)
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(
            &query.into_builder(&self.xdbc_info).schema(),
            query,
            request,
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        let caller = caller(&request)?;
        let entry = lock(&self.tickets)
            .get(ticket.statement_handle.as_ref())
            .cloned()
            .ok_or_else(|| Status::not_found("ticket does not exist or has expired"))?;
        check_owner(&entry.user, &caller, "ticket")?;
        self.run(entry).await
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        let caller = caller(&request)?;
        let (prepared, params) =
            self.prepared_entry(&caller, &cmd.prepared_statement_handle, |e| {
                (e.prepared.clone(), e.params.clone().unwrap_or_default())
            })?;
        let entry = self.ticket_entry(&caller, prepared, params);
        self.run(entry).await
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        caller(&request)?;
        let mut builder = query.into_builder();
        for catalog in metadata::catalog_names(&self.engine) {
            builder.append(catalog);
        }
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Self::batch_response(batch))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        caller(&request)?;
        let mut builder = query.into_builder();
        for (catalog, schema) in metadata::schema_names(&self.engine) {
            builder.append(catalog, schema);
        }
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Self::batch_response(batch))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        caller(&request)?;
        let mut builder = query.into_builder();
        for table in metadata::tables(&self.engine)
            .await
            .map_err(|e| status(&e))?
        {
            builder
                .append(
                    &table.catalog,
                    &table.schema_name,
                    &table.name,
                    table.table_type,
                    &table.schema,
                )
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Self::batch_response(batch))
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        caller(&request)?;
        let mut builder = query.into_builder();
        for table_type in metadata::TABLE_TYPES {
            builder.append(table_type);
        }
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Self::batch_response(batch))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        caller(&request)?;
        let batch = query
            .into_builder(&self.sql_info)
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Self::batch_response(batch))
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        caller(&request)?;
        Ok(Self::batch_response(RecordBatch::new_empty(Arc::new(
            metadata::primary_keys_schema(),
        ))))
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        caller(&request)?;
        Ok(Self::batch_response(RecordBatch::new_empty(Arc::new(
            metadata::foreign_keys_schema(),
        ))))
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        caller(&request)?;
        Ok(Self::batch_response(RecordBatch::new_empty(Arc::new(
            metadata::foreign_keys_schema(),
        ))))
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        caller(&request)?;
        Ok(Self::batch_response(RecordBatch::new_empty(Arc::new(
            metadata::foreign_keys_schema(),
        ))))
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        caller(&request)?;
        let batch = query
            .into_builder(&self.xdbc_info)
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Self::batch_response(batch))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        Err(Status::invalid_argument(format!(
            "the ticket is not one this server issued ({})",
            message.type_url
        )))
    }

    async fn do_put_statement_update(
        &self,
        cmd: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = caller(&request)?;
        let mut total = 0;
        for output in caller.session.execute_sql(&cmd.query).await {
            let output = output.map_err(|e| status(&e))?;
            total += affected_rows(output).await?;
        }
        Ok(total)
    }

    async fn do_put_prepared_statement_query(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let caller = caller(&request)?;
        let handle = cmd.prepared_statement_handle.clone();
        let prepared = self.prepared_entry(&caller, &handle, |e| e.prepared.clone())?;
        let batches = parameter_batches(request).await?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let params = match batches.iter().find(|b| b.num_rows() > 0) {
            _ if rows > 1 => {
                return Err(Status::invalid_argument(format!(
                    "a query binds one row of parameters, {rows} were sent"
                )))
            }
            Some(batch) => row_params(&prepared, batch, 0)?,
            None if prepared.param_types.is_empty() => Vec::new(),
            None => {
                return Err(Status::invalid_argument(format!(
                    "the statement takes {} parameter(s), none were bound",
                    prepared.param_types.len()
                )))
            }
        };
        self.prepared_entry(&caller, &handle, |e| e.params = Some(params))?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle),
        })
    }

    async fn do_put_prepared_statement_update(
        &self,
        cmd: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let caller = caller(&request)?;
        let (prepared, bound) =
            self.prepared_entry(&caller, &cmd.prepared_statement_handle, |e| {
                (e.prepared.clone(), e.params.clone())
            })?;
        let batches = parameter_batches(request).await?;
        let mut rows = Vec::new();
        for batch in &batches {
            for row in 0..batch.num_rows() {
                rows.push(row_params(&prepared, batch, row)?);
            }
        }
        if rows.is_empty() {
            match bound {
                Some(params) => rows.push(params),
                None if prepared.param_types.is_empty() => rows.push(Vec::new()),
                None => {
                    return Err(Status::invalid_argument(format!(
                        "the statement takes {} parameter(s), none were bound",
                        prepared.param_types.len()
                    )))
                }
            }
        }
        let mut total = 0;
        for params in rows {
            let output = caller
                .session
                .execute_prepared(&prepared, params)
                .await
                .map_err(|e| status(&e))?;
            total += affected_rows(output).await?;
        }
        Ok(total)
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let caller = caller(&request)?;
        let prepared = caller
            .session
            .prepare(&number_placeholders(&query.query), &[])
            .await
            .map_err(|e| status(&e))?
            .ok_or_else(|| Status::invalid_argument("the statement is empty"))?;
        let dataset_schema = schema_bytes(&result_schema(&prepared))?;
        let parameter_schema = schema_bytes(&parameter_schema(&prepared))?;
        let handle = random_bytes(16);
        {
            let mut all = lock(&self.prepared);
            let now = Instant::now();
            all.retain(|_, e| now.duration_since(e.used) < PREPARED_IDLE_TTL);
            if all.len() >= PREPARED_MAX {
                return Err(Status::resource_exhausted(
                    "too many open prepared statements; close some",
                ));
            }
            all.insert(
                handle.clone(),
                PreparedEntry {
                    user: caller.user.clone(),
                    session: Arc::clone(&caller.session),
                    prepared,
                    params: None,
                    used: now,
                },
            );
        }
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into(),
            dataset_schema,
            parameter_schema,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        let caller = caller(&request)?;
        let mut all = lock(&self.prepared);
        match all.get(query.prepared_statement_handle.as_ref()) {
            Some(entry) => {
                check_owner(&entry.user, &caller, "prepared statement")?;
                // The session lives on in the caller; the entry's clone is dropped.
                let _ = &entry.session;
                all.remove(query.prepared_statement_handle.as_ref());
                Ok(())
            }
            None => Err(Status::not_found("prepared statement does not exist")),
        }
    }

    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        caller(&request)?;
        let info = FlightInfo::decode(query.info)
            .map_err(|e| Status::invalid_argument(format!("not a FlightInfo: {e}")))?;
        let result = info
            .endpoint
            .iter()
            .filter_map(|e| e.ticket.as_ref())
            .map(|t| self.cancel_ticket(&t.ticket))
            .max_by_key(|s| *s as i32)
            .unwrap_or(CancelStatus::NotCancellable);
        Ok(ActionCancelQueryResult {
            result: result as i32,
        })
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<BoxStream<arrow_flight::Result>>, Status> {
        let caller = caller(&request)?;
        let action = request.into_inner();
        match action.r#type.as_str() {
            "CancelFlightInfo" => {
                let cancel = CancelFlightInfoRequest::decode(action.body).map_err(|e| {
                    Status::invalid_argument(format!("bad CancelFlightInfoRequest: {e}"))
                })?;
                let info = cancel.info.ok_or_else(|| {
                    Status::invalid_argument("CancelFlightInfoRequest without info")
                })?;
                let tickets: Vec<_> = info
                    .endpoint
                    .iter()
                    .filter_map(|e| e.ticket.clone())
                    .collect();
                if tickets.is_empty() {
                    return Err(Status::invalid_argument("the FlightInfo has no ticket"));
                }
                let statuses: Vec<CancelStatus> = tickets
                    .iter()
                    .map(|t| self.cancel_ticket(&t.ticket))
                    .collect();
                let result = if statuses.iter().all(|s| *s == CancelStatus::Unspecified) {
                    return Err(Status::not_found(
                        "the FlightInfo names no query of this server",
                    ));
                } else if statuses.contains(&CancelStatus::Cancelled) {
                    CancelStatus::Cancelled
                } else {
                    CancelStatus::NotCancellable
                };
                let body = CancelFlightInfoResult {
                    status: result as i32,
                }
                .encode_to_vec();
                Ok(Response::new(Box::pin(stream::iter([Ok(
                    arrow_flight::Result { body: body.into() },
                )]))))
            }
            "CloseSession" => {
                if let Some(token) = &caller.token {
                    lock(&self.sessions).remove(token);
                    lock(&self.prepared).retain(|_, e| !Arc::ptr_eq(&e.session, &caller.session));
                    self.tokens.revoke(token);
                }
                // CloseSessionResult { status: CLOSED (1) }, encoded by hand: arrow-flight
                // 59 does not generate the session messages.
                Ok(Response::new(Box::pin(stream::iter([Ok(
                    arrow_flight::Result {
                        body: Bytes::from_static(&[0x08, 0x01]),
                    },
                )]))))
            }
            other => Err(Status::unimplemented(format!(
                "action {other} is not supported"
            ))),
        }
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<ActionType, Status>>> {
        Some(vec![
            Ok(ActionType {
                r#type: "CancelFlightInfo".into(),
                description: "Cancels a query by its FlightInfo".into(),
            }),
            Ok(ActionType {
                r#type: "CloseSession".into(),
                description: "Ends the session and its bearer token".into(),
            }),
        ])
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// The gRPC service clients talk to: every call but `Handshake` is
/// authenticated here, and the caller travels to the handlers in the request's
/// extensions.
#[derive(Clone)]
pub struct Authenticated {
    inner: Arc<FlightSqlFrontDoor>,
}

impl Authenticated {
    pub fn new(inner: Arc<FlightSqlFrontDoor>) -> Self {
        Self { inner }
    }

    fn admit<T>(&self, mut request: Request<T>) -> Result<Request<T>, Status> {
        let caller = self.inner.authenticate(request.metadata())?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

#[tonic::async_trait]
impl FlightService for Authenticated {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        self.inner.handshake_token(request).await
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        self.admit(request)?;
        Err(Status::unimplemented(
            "ListFlights is not supported; use Flight SQL commands",
        ))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        FlightService::get_flight_info(self.inner.as_ref(), self.admit(request)?).await
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        let info = FlightService::get_flight_info(self.inner.as_ref(), self.admit(request)?)
            .await?
            .into_inner();
        Ok(Response::new(PollInfo {
            flight_descriptor: info.flight_descriptor.clone(),
            info: Some(info),
            progress: Some(1.0),
            expiration_time: None,
        }))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let info = FlightService::get_flight_info(self.inner.as_ref(), self.admit(request)?)
            .await?
            .into_inner();
        Ok(Response::new(SchemaResult {
            schema: info.schema,
        }))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        FlightService::do_get(self.inner.as_ref(), self.admit(request)?).await
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        FlightService::do_put(self.inner.as_ref(), self.admit(request)?).await
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        FlightService::do_action(self.inner.as_ref(), self.admit(request)?).await
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        FlightService::list_actions(self.inner.as_ref(), self.admit(request)?).await
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        self.admit(request)?;
        Err(Status::unimplemented("DoExchange is not supported"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_columns_are_cut_and_compacted_per_message() {
        use arrow::array::{Int64Array, StringViewArray};
        let rows = 100_000;
        let strings: StringViewArray = (0..rows).map(|i| Some(format!("{i:0>100}"))).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8View, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(strings),
                Arc::new(Int64Array::from_iter_values(0..rows as i64)),
            ],
        )
        .unwrap();
        // A few rows sliced from it share all of its ~10 MB of string data.
        let few = wire_pieces(batch.slice(10, 5), MAX_MESSAGE_BYTES).unwrap();
        assert_eq!(few.len(), 1);
        // (Primitive slices share buffers too, but IPC writes only their rows.)
        let strings = few[0].column(0).get_buffer_memory_size();
        assert!(strings < 4096, "{strings} bytes of strings for 5 rows");
        let pieces = wire_pieces(batch.clone(), MAX_MESSAGE_BYTES).unwrap();
        assert!(pieces.len() >= 5, "{} pieces", pieces.len());
        let mut total = 0;
        for piece in &pieces {
            let bytes = piece.column(0).get_buffer_memory_size();
            assert!(
                bytes <= MAX_MESSAGE_BYTES,
                "{bytes} bytes of strings in one piece"
            );
            total += piece.num_rows();
        }
        assert_eq!(total, rows);
        let rejoined = arrow::compute::concat_batches(&batch.schema(), &pieces).unwrap();
        assert_eq!(rejoined, batch);
    }

    #[test]
    fn errors_map_to_flight_codes_with_sqlstate() {
        let s = status(&QueryError::Sql(sql::SqlError::TableNotFound {
            name: "x".into(),
        }));
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert_eq!(s.metadata().get("x-sqlstate").unwrap(), "42P01");
        let s = status(&QueryError::Cancelled);
        assert_eq!(s.code(), tonic::Code::Cancelled);
        let s = status(&QueryError::NoExecutors);
        assert_eq!(s.code(), tonic::Code::Unavailable);
    }

    #[test]
    fn question_marks_become_numbered_parameters() {
        assert_eq!(
            number_placeholders("select a from t where a = ? and b = ?"),
            "select a from t where a = $1 and b = $2"
        );
        assert_eq!(
            number_placeholders("select '?', \"q?\", x -- ?\n from t where y = ? /* ? */"),
            "select '?', \"q?\", x -- ?\n from t where y = $1 /* ? */"
        );
        assert_eq!(
            number_placeholders("select 'it''s ?' , ?"),
            "select 'it''s ?' , $1"
        );
        assert_eq!(number_placeholders("select $1, '?'"), "select $1, '?'");
    }

    #[test]
    fn batches_conform_to_the_announced_schema() {
        let batch = RecordBatch::try_from_iter([(
            "a",
            Arc::new(arrow::array::Int32Array::from(vec![1, 2])) as arrow::array::ArrayRef,
        )])
        .unwrap();
        let target: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let out = conform_batch(batch, &target).unwrap();
        assert_eq!(out.schema(), target);
    }
}
