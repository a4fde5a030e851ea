//! The coordinator role: the Postgres front door, the query lifecycle, the
//! executor registry and the control plane executors register with.

pub mod admission;
pub mod attempts;
pub mod auth;
pub mod engine;
pub mod error;
pub mod flight_sql;
pub mod pg;
pub mod registry;
pub mod system;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use flight::control::ControlService;
use sql::config::{FlotillaConfig, TableConfig};
use tokio::net::TcpListener;

pub use error::{QueryError, Result};

/// Where a started coordinator listens.
#[derive(Debug, Clone, Copy)]
pub struct CoordinatorAddrs {
    pub pg: SocketAddr,
    pub flight: SocketAddr,
    pub control: SocketAddr,
}

impl CoordinatorAddrs {
    /// The URL executors register with.
    pub fn control_url(&self) -> String {
        format!("http://{}", self.control)
    }
}

/// Runs a coordinator until `shutdown` resolves. `on_ready` is called once both
/// listeners are bound and the catalog is loaded.
pub async fn run(
    config: FlotillaConfig,
    trusted_tables: Vec<TableConfig>,
    fault_injection: bool,
    on_ready: impl FnOnce(CoordinatorAddrs) + Send,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| QueryError::Internal {
                message: format!("cannot listen on {addr}: {e}"),
            })
    };
    let pg_listener = bind(config.coordinator.pg_listen).await?;
    let flight_listener = bind(config.coordinator.flight_listen).await?;
    let control_listener = bind(config.coordinator.control_listen).await?;
    let local = |l: &TcpListener| {
        l.local_addr().map_err(|e| QueryError::Internal {
            message: e.to_string(),
        })
    };
    let addrs = CoordinatorAddrs {
        pg: local(&pg_listener)?,
        flight: local(&flight_listener)?,
        control: control_listener
            .local_addr()
            .map_err(|e| QueryError::Internal {
                message: e.to_string(),
            })?,
    };

    let registry = registry::ExecutorRegistry::new(
        config.coordinator.heartbeat_interval,
        config.coordinator.executor_timeout,
        config.coordinator.exchange_timeout,
        config.object_store.clone(),
    );
    let (stop_control, control_stopped) = tokio::sync::oneshot::channel::<()>();
    let control = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(ControlService::new_server(Arc::new(registry.clone())))
            .serve_with_incoming_shutdown(flight::net::incoming(control_listener), async move {
                let _ = control_stopped.await;
            }),
    );
    let reaper = registry.spawn_reaper();
    let engine = engine::Engine::start(config, registry, trusted_tables, fault_injection).await?;

    let users = Arc::new(auth::Users::from_config(engine.config()));
    let tokens = Arc::new(auth::Tokens::new(engine.config().auth.token_ttl));
    let tls = engine.config().tls.clone();
    let pg_tls = match &tls {
        Some(tls) => Some(pg::tls_acceptor(tls)?),
        None => None,
    };
    let flight_router = flight_sql::router(
        Arc::clone(&engine),
        Arc::clone(&users),
        tokens,
        tls.as_ref(),
    )?;
    let (stop_flight, flight_stopped) = tokio::sync::oneshot::channel::<()>();
    let flight = tokio::spawn(flight_sql::serve(
        flight_router,
        flight_listener,
        async move {
            let _ = flight_stopped.await;
        },
    ));

    on_ready(addrs);
    pg::serve(pg_listener, engine, users, pg_tls, shutdown).await;

    let _ = stop_flight.send(());
    let _ = flight.await;

    reaper.abort();
    let _ = stop_control.send(());
    let _ = control.await;
    Ok(())
}
