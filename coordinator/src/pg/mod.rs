//! The Postgres wire protocol front door (`pgwire`).
//!
//! Simple and extended query protocols, prepared statements and portals,
//! ParameterStatus values real drivers check, BackendKeyData and CancelRequest.
//! Each connection owns one [`Session`], kept in pgwire's per-connection
//! extensions; errors become SQLSTATEs in [`errors`] and the connection goes on.

mod auth;
pub mod encode;
pub mod errors;
mod params;

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use async_trait::async_trait;
use datafusion::execution::SendableRecordBatchStream;
use futures::{stream, Sink, SinkExt, StreamExt};
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, AuthOutcome,
    DefaultServerParameterProvider, StartupHandler,
};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::PortalExecutionState;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::send_execution_response;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    CopyCsvOptions, CopyEncoder, CopyResponse, CopyTextOptions, FieldInfo, QueryResponse, Response,
    Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::PgWireConnectionState;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionGuard, ConnectionHandle, ConnectionManager,
    PgWireServerHandlers, PidSecretKeyGenerator, RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::copy::CopyData;
use pgwire::messages::extendedquery::{Execute, Parse, ParseComplete};
use pgwire::messages::response::EmptyQueryResponse;
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::tokio_rustls::TlsAcceptor;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::auth::Users;
use crate::engine::{CopyFormat, CopyOptions, Effect, Engine, Output, Prepared, Session};
use crate::error::QueryError;
pub use auth::tls_acceptor;
use auth::PgAuth;
use errors::{error_info, pg_error};

/// The server version clients see: a plain `16.x`, as drivers parse it.
pub const SERVER_VERSION: &str = "16.6";

/// Serves the Postgres protocol on `listener` until `shutdown` resolves; open
/// connections are closed then.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    users: Arc<Users>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let handlers = Arc::new(PgHandlers::new(engine, users));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    let _ = socket.set_nodelay(true);
                    let handlers = Arc::clone(&handlers);
                    let tls = tls.clone();
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
                    connections.spawn(async move {
                        // A client that goes away mid-query is noticed within a
                        // check interval, not when the query next sends a row:
                        // dropping the connection drops its query, which stops
                        // on every executor.
                        tokio::select! {
                            result = pgwire::tokio::process_socket(socket, tls, handlers) => {
                                if let Err(error) = result {
                                    tracing::debug!(%error, "connection ended with an error");
                                }
                            }
                            _ = peer_hung_up(fd) => {
                                tracing::debug!("client went away; its connection and query end");
                            }
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// How often a connection checks that its client is still there (Postgres'
/// `client_connection_check_interval`).
const CLIENT_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Resolves once the peer of socket `fd` has closed or reset the connection.
/// The caller keeps the socket open while this runs (both live in one task).
async fn peer_hung_up(fd: std::os::fd::RawFd) {
    loop {
        tokio::time::sleep(CLIENT_CHECK_INTERVAL).await;
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one pollfd for a socket the caller keeps open; timeout 0
        // makes this a non-blocking check.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        if ready > 0 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return;
        }
    }
}

/// The handlers pgwire calls; one instance serves every connection.
pub struct PgHandlers {
    handler: Arc<PgHandler>,
    cancel: Arc<PgCancelHandler>,
}

/// Key of a connection for CancelRequest: process id and secret key.
type CancelKey = (i32, bytes::Bytes);

/// Per-connection cancel signal: a counter bumped by each CancelRequest. A result
/// stream stops when the counter moves past the value it started with, so a
/// cancel reaches a query while its rows are still being produced, not only while
/// it is being planned.
#[derive(Debug)]
struct CancelSignal(watch::Sender<u64>);

/// Connections that can be cancelled.
#[derive(Debug, Default)]
struct CancelRegistry(Mutex<HashMap<CancelKey, Arc<CancelSignal>>>);

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CancelKey, Arc<CancelSignal>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes a connection from the [`CancelRegistry`] when the connection ends.
struct CancelGuard {
    registry: Arc<CancelRegistry>,
    key: CancelKey,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key);
    }
}

/// Answers CancelRequest: interrupts planning (pgwire's connection manager) and
/// stops the result stream (our signal).
pub struct PgCancelHandler {
    inner: DefaultCancelHandler,
    registry: Arc<CancelRegistry>,
}

#[async_trait]
impl pgwire::api::cancel::CancelHandler for PgCancelHandler {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let key = (request.pid, request.secret_key.to_bytes());
        let signal = self.registry.lock().get(&key).cloned();
        if let Some(signal) = signal {
            signal.0.send_modify(|n| *n += 1);
        }
        self.inner.on_cancel_request(request).await;
    }
}

impl PgHandlers {
    pub fn new(engine: Arc<Engine>, users: Arc<Users>) -> Self {
        let manager = Arc::new(ConnectionManager::new());
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = SERVER_VERSION.to_string();
        parameters.date_style = "ISO, MDY".to_string();
        parameters.client_encoding = Some("UTF8".to_string());
        let cancels = Arc::new(CancelRegistry::default());
        Self {
            handler: Arc::new(PgHandler {
                engine,
                manager: Arc::clone(&manager),
                cancels: Arc::clone(&cancels),
                parameters,
                pids: RandomPidSecretKeyGenerator::default(),
                parser: Arc::new(PgQueryParser),
                auth: PgAuth::new(users),
            }),
            cancel: Arc::new(PgCancelHandler {
                inner: DefaultCancelHandler::new(manager),
                registry: cancels,
            }),
        }
    }
}

impl PgWireServerHandlers for PgHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.handler)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.handler)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.handler)
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        Arc::clone(&self.cancel)
    }
}

pub struct PgHandler {
    engine: Arc<Engine>,
    manager: Arc<ConnectionManager>,
    cancels: Arc<CancelRegistry>,
    parameters: DefaultServerParameterProvider,
    pids: RandomPidSecretKeyGenerator,
    parser: Arc<PgQueryParser>,
    /// `None` under `trust`.
    auth: Option<PgAuth>,
}

fn session_of<C: ClientInfo>(client: &C) -> PgWireResult<Arc<Session>> {
    client.session_extensions().get::<Session>().ok_or_else(|| {
        pg_error(&QueryError::Internal {
            message: "connection has no session".into(),
        })
    })
}

impl PgHandler {
    /// The end of a successful start-up: the last authentication message, then
    /// the connection's cancel key, its session, and ReadyForQuery.
    async fn complete_startup<C>(
        &self,
        client: &mut C,
        final_message: Option<Authentication>,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(message) = final_message {
            client
                .send(PgWireBackendMessage::Authentication(message))
                .await?;
        }
        let (pid, secret) = self.pids.generate(client);
        client.set_pid_and_secret_key(pid, secret.clone());
        let key = (pid, secret.to_bytes());
        let (handle, guard) = self.manager.register(pid, secret);
        let signal = Arc::new(CancelSignal(watch::channel(0).0));
        self.cancels.lock().insert(key.clone(), Arc::clone(&signal));
        client
            .session_extensions()
            .insert::<Arc<CancelSignal>>(signal);
        client
            .session_extensions()
            .insert::<CancelGuard>(CancelGuard {
                registry: Arc::clone(&self.cancels),
                key,
            });
        client
            .session_extensions()
            .insert::<Arc<ConnectionHandle>>(handle);
        client.session_extensions().insert::<ConnectionGuard>(guard);
        let user = client
            .metadata()
            .get(pgwire::api::METADATA_USER)
            .cloned()
            .unwrap_or_default();
        let session = self.engine.session(&user).map_err(|e| pg_error(&e))?;
        client.session_extensions().insert::<Session>(session);
        finish_authentication(client, &self.parameters).await
    }
}

#[async_trait]
impl StartupHandler for PgHandler {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let outcome = match (message, &self.auth) {
            (PgWireFrontendMessage::Startup(ref startup), auth) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                match auth {
                    None => return self.complete_startup(client, None).await,
                    Some(auth) => {
                        auth.driver
                            .begin_authentication(client, auth.mechanism.create())
                            .await?
                    }
                }
            }
            (PgWireFrontendMessage::PasswordMessageFamily(message), Some(auth)) => {
                auth.driver.advance_authentication(client, message).await?
            }
            _ => return Ok(()),
        };
        match outcome {
            AuthOutcome::Authenticated { final_message, .. } => {
                self.complete_startup(client, final_message).await
            }
            AuthOutcome::InProgress => Ok(()),
        }
    }
}

/// Turns one statement's output into a protocol response.
fn respond<C>(client: &C, output: Output, format: &Format) -> Response
where
    C: ClientInfo + ClientPortalStore,
    C::PortalStore: PortalStore,
{
    match output {
        Output::Rows(stream) => {
            let cancel = client
                .session_extensions()
                .get::<Arc<CancelSignal>>()
                .map(|signal| signal.0.subscribe());
            Response::Query(query_response(stream, format, cancel))
        }
        Output::Copy { stream, options } => {
            let cancel = client
                .session_extensions()
                .get::<Arc<CancelSignal>>()
                .map(|signal| signal.0.subscribe());
            Response::CopyOut(copy_response(stream, &options, cancel))
        }
        Output::Command { tag, rows, effect } => {
            let mut tag = Tag::new(&tag);
            if let Some(rows) = rows {
                tag = tag.with_rows(rows);
            }
            match effect {
                Effect::Begin => Response::TransactionStart(tag),
                Effect::End => Response::TransactionEnd(tag),
                Effect::Deallocate(name) => {
                    match name {
                        Some(name) => client.portal_store().rm_statement(&name),
                        None => deallocate_all(client),
                    }
                    Response::Execution(tag)
                }
                Effect::None | Effect::DeclareCursor { .. } => Response::Execution(tag),
            }
        }
    }
}

/// Names of the prepared statements a connection has parsed; pgwire's store
/// cannot list them, and `DEALLOCATE ALL` needs them.
#[derive(Debug, Default)]
struct StatementNames(Mutex<BTreeSet<String>>);

fn deallocate_all<C>(client: &C)
where
    C: ClientInfo + ClientPortalStore,
    C::PortalStore: PortalStore,
{
    if let Some(names) = client.session_extensions().get::<StatementNames>() {
        let names = std::mem::take(&mut *names.0.lock().unwrap_or_else(|p| p.into_inner()));
        for name in names {
            client.portal_store().rm_statement(&name);
        }
    }
}

fn query_response(
    stream: SendableRecordBatchStream,
    format: &Format,
    cancel: Option<watch::Receiver<u64>>,
) -> QueryResponse {
    let fields = Arc::new(encode::field_infos(stream.schema().as_ref(), format));
    let row_fields = Arc::clone(&fields);
    let rows = cancellable(stream, cancel)
        .map(move |batch| match batch {
            Ok(batch) => match encode::encode_batch(&batch, &row_fields) {
                Ok(rows) => rows.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            },
            Err(e) => vec![Err(pg_error(&e))],
        })
        .flat_map(stream::iter);
    QueryResponse::new(fields, rows)
}

/// `COPY ... TO STDOUT`: the rows as copy data, one message per row, in the
/// requested format (and a CSV header line first if asked for).
fn copy_response(
    stream: SendableRecordBatchStream,
    options: &CopyOptions,
    cancel: Option<watch::Receiver<u64>>,
) -> CopyResponse {
    let schema = stream.schema();
    let binary = options.format == CopyFormat::Binary;
    let format = if binary {
        Format::UnifiedBinary
    } else {
        Format::UnifiedText
    };
    let fields = Arc::new(encode::field_infos(schema.as_ref(), &format));
    let delimiter = options.delimiter.map(|c| c.to_string());
    let mut encoder = match options.format {
        CopyFormat::Binary => CopyEncoder::new_binary(fields),
        CopyFormat::Text => {
            let mut text = CopyTextOptions::default();
            if let Some(d) = &delimiter {
                text.delimiter = d.as_str().into();
            }
            if let Some(null) = &options.null {
                text.null_string = null.as_str().into();
            }
            CopyEncoder::new_text(fields, text)
        }
        CopyFormat::Csv => {
            let mut csv = CopyCsvOptions::default();
            if let Some(d) = &delimiter {
                csv.delimiter = d.as_str().into();
            }
            if let Some(null) = &options.null {
                csv.null_string = null.as_str().into();
            }
            if let Some(q) = options.quote {
                csv.quote = q.to_string().into();
            }
            if let Some(e) = options.escape {
                csv.escape = e.to_string().into();
            }
            CopyEncoder::new_csv(fields, csv)
        }
    };
    let header = options.header.then(|| {
        let delimiter = delimiter.clone().unwrap_or_else(|| ",".to_string());
        let quote = options.quote.unwrap_or('"').to_string();
        let names: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| {
                let name = f.name();
                if name.contains(&delimiter) || name.contains(&quote) || name.contains('\n') {
                    format!(
                        "{quote}{}{quote}",
                        name.replace(&quote, &format!("{quote}{quote}"))
                    )
                } else {
                    name.clone()
                }
            })
            .collect();
        Ok(CopyData::new(
            format!("{}\n", names.join(&delimiter)).into(),
        ))
    });
    let rows = cancellable(stream, cancel)
        .map(move |batch| match batch {
            Ok(batch) => match encode::encode_copy(&batch, &mut encoder) {
                Ok(rows) => rows.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            },
            Err(e) => vec![Err(pg_error(&e))],
        })
        .flat_map(stream::iter);
    let columns = schema.fields().len();
    CopyResponse::new(i8::from(binary), columns, stream::iter(header).chain(rows))
}

/// Ends `stream` with [`QueryError::Cancelled`] when a CancelRequest arrives;
/// dropping the DataFusion stream stops the query everywhere it runs.
fn cancellable(
    stream: SendableRecordBatchStream,
    cancel: Option<watch::Receiver<u64>>,
) -> impl futures::Stream<Item = Result<RecordBatch, QueryError>> + Send {
    let mut cancel = cancel;
    if let Some(rx) = cancel.as_mut() {
        // Cancels that arrived before this query started are not for it.
        rx.borrow_and_update();
    }
    stream::unfold(Some((stream, cancel)), |state| async move {
        let (mut stream, mut cancel) = state?;
        let next = match cancel.as_mut() {
            Some(rx) => tokio::select! {
                biased;
                changed = rx.changed() => match changed {
                    Ok(()) => return Some((Err(QueryError::Cancelled), None)),
                    // The connection is gone; nobody can cancel any more.
                    Err(_) => {
                        cancel = None;
                        stream.next().await
                    }
                },
                item = stream.next() => item,
            },
            None => stream.next().await,
        };
        next.map(|item| (item.map_err(QueryError::from), Some((stream, cancel))))
    })
}

#[async_trait]
impl SimpleQueryHandler for PgHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client)?;
        let outputs = session.execute_sql(query).await;
        if outputs.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        Ok(outputs
            .into_iter()
            .map(|output| match output {
                Ok(output) => respond(client, output, &Format::UnifiedText),
                Err(error) => Response::Error(Box::new(error_info(&error))),
            })
            .collect())
    }
}

/// Parses (and plans) statements for the extended protocol, in the connection's
/// session.
pub struct PgQueryParser;

#[async_trait]
impl QueryParser for PgQueryParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let session = session_of(client)?;
        let client_types: Vec<Option<DataType>> = types
            .iter()
            .map(|t| t.as_ref().and_then(encode::arrow_type))
            .collect();
        session
            .prepare(sql, &client_types)
            .await
            .map_err(|e| pg_error(&e))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt
            .param_types
            .iter()
            .map(|t| t.as_ref().map(encode::pg_type).unwrap_or(Type::TEXT))
            .collect())
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(match &stmt.schema {
            Some(schema) => {
                encode::field_infos(schema, column_format.unwrap_or(&Format::UnifiedText))
            }
            None => Vec::new(),
        })
    }
}

#[async_trait]
impl ExtendedQueryHandler for PgHandler {
    type Statement = Prepared;
    type QueryParser = PgQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::clone(&self.parser)
    }

    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message
            .name
            .clone()
            .unwrap_or_else(|| pgwire::api::DEFAULT_NAME.to_owned());
        match StoredStatement::parse(client, &message, Arc::clone(&self.parser)).await? {
            Some(stmt) => client.portal_store().put_statement(Arc::new(stmt)),
            None => client.portal_store().put_empty_statement(&name),
        }
        client
            .session_extensions()
            .get_or_insert_with(StatementNames::default)
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name);
        client
            .send(PgWireBackendMessage::ParseComplete(ParseComplete::new()))
            .await?;
        Ok(())
    }

    /// Execute with no row limit streams rows as they are produced. (pgwire's
    /// default collects a portal's rows before sending any, which holds a whole
    /// result in memory.) A row limit, or a portal already suspended, goes the
    /// default way: at most `max_rows` rows are held.
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(pgwire::api::DEFAULT_NAME);
        let portal = match client.portal_store().get_portal(name) {
            Some(pgwire::api::store::Entry::Value(portal)) => Some(portal),
            _ => None,
        };
        let initial = match &portal {
            Some(portal) => matches!(*portal.state().lock().await, PortalExecutionState::Initial),
            None => false,
        };
        let (Some(portal), true, 0, PgWireConnectionState::ReadyForQuery) =
            (portal, initial, message.max_rows, client.state())
        else {
            return self._on_execute(client, message).await;
        };
        let mut transaction_status = client.transaction_status();
        client.set_state(PgWireConnectionState::QueryInProgress);
        let handle = client.session_extensions().get::<Arc<ConnectionHandle>>();
        let response = match handle {
            Some(handle) => {
                let cancel = handle.start_query().await;
                match futures::future::select(
                    Box::pin(ExtendedQueryHandler::do_query(
                        self,
                        client,
                        portal.as_ref(),
                        0,
                    )),
                    cancel,
                )
                .await
                {
                    futures::future::Either::Left((result, _)) => result,
                    futures::future::Either::Right(_) => Err(PgWireError::QueryCanceled),
                }
            }
            None => ExtendedQueryHandler::do_query(self, client, portal.as_ref(), 0).await,
        };
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                client.set_state(PgWireConnectionState::ReadyForQuery);
                return Err(error);
            }
        };
        *portal.state().lock().await = PortalExecutionState::Finished;
        match response {
            Response::Query(mut results) => {
                let tag = results.command_tag().to_owned();
                let mut rows = 0;
                while let Some(row) = results.data_rows().next().await {
                    match row {
                        Ok(row) => client.feed(PgWireBackendMessage::DataRow(row)).await?,
                        Err(error) => {
                            client.set_state(PgWireConnectionState::ReadyForQuery);
                            return Err(error);
                        }
                    }
                    rows += 1;
                }
                client
                    .send(PgWireBackendMessage::CommandComplete(
                        Tag::new(&tag).with_rows(rows).into(),
                    ))
                    .await?;
            }
            Response::EmptyQuery => {
                client
                    .feed(PgWireBackendMessage::EmptyQueryResponse(
                        EmptyQueryResponse::new(),
                    ))
                    .await?;
            }
            Response::Execution(tag) => send_execution_response(client, tag).await?,
            Response::TransactionStart(tag) => {
                send_execution_response(client, tag).await?;
                transaction_status = transaction_status.to_in_transaction_state();
            }
            Response::TransactionEnd(tag) => {
                send_execution_response(client, tag).await?;
                transaction_status = transaction_status.to_idle_state();
                client.portal_store().rm_portal(pgwire::api::DEFAULT_NAME);
            }
            Response::Error(error) => {
                client
                    .send(PgWireBackendMessage::ErrorResponse((*error).into()))
                    .await?;
                transaction_status = transaction_status.to_error_state();
            }
            Response::CopyOut(copy) => {
                pgwire::api::copy::send_copy_out_response(client, copy).await?;
            }
            _ => {
                client.set_state(PgWireConnectionState::ReadyForQuery);
                return Err(pg_error(&QueryError::Internal {
                    message: "unexpected response to Execute".into(),
                }));
            }
        }
        client.set_state(PgWireConnectionState::ReadyForQuery);
        client.set_transaction_status(transaction_status);
        Ok(())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client)?;
        let stored: &StoredStatement<Prepared> = &portal.statement;
        let values = params::bind(portal, stored).map_err(|e| pg_error(&e))?;
        let output = session
            .execute_prepared(&stored.statement, values)
            .await
            .map_err(|e| pg_error(&e))?;
        if let Output::Command {
            effect: Effect::DeclareCursor { name, portal },
            ..
        } = &output
        {
            // Postgres exposes a cursor as a portal of the same name; clients
            // (psycopg) describe it before fetching.
            let statement = Arc::new(StoredStatement::new(
                format!("cursor {name}"),
                portal.as_ref().clone(),
                Vec::new(),
            ));
            client
                .portal_store()
                .put_portal(Arc::new(Portal::new_cursor(name.clone(), statement)));
        }
        Ok(respond(client, output, &portal.result_column_format))
    }
}
