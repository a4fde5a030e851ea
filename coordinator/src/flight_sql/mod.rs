//! The Arrow Flight SQL front door.
//!
//! [`FlightSqlFrontDoor`] implements arrow-flight's `FlightSqlService` over the same
//! [`Engine`] the Postgres front door uses; [`Authenticated`] wraps it as the gRPC
//! `FlightService`, checks the bearer token of every call but the handshake, and
//! adds `GetSchema`, which the `FlightSqlService` trait cannot express.
//!
//! State that outlives one RPC (sessions, prepared statements, tickets) is kept
//! per bearer token and bounded in count and age. A ticket names a planned query;
//! `DoGet` runs it and streams batches as they are produced, in exactly the schema
//! its `FlightInfo` advertised.

mod metadata;
mod service;

use std::future::Future;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use sql::config::TlsConfig;
use tokio::net::TcpListener;
use tonic::transport::server::Router;

use crate::auth::{Tokens, Users};
use crate::engine::Engine;
use crate::error::{QueryError, Result};

pub use service::{Authenticated, FlightSqlFrontDoor};

/// Largest message a client may send (parameter batches, plans).
const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The Flight SQL server, ready to serve: checked (TLS files read) before any
/// listener answers.
pub fn router(
    engine: Arc<Engine>,
    users: Arc<Users>,
    tokens: Arc<Tokens>,
    tls: Option<&TlsConfig>,
) -> Result<Router> {
    let front_door = Arc::new(FlightSqlFrontDoor::new(engine, users, tokens)?);
    let service = FlightServiceServer::new(Authenticated::new(front_door))
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let mut builder = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(tls) = tls {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| QueryError::Internal {
                message: format!("cannot read {}: {e}", path.display()),
            })
        };
        let identity = tonic::transport::Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| QueryError::Internal {
                message: format!("Flight SQL TLS configuration: {e}"),
            })?;
    }
    Ok(builder.add_service(service))
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) {
    if let Err(error) = router
        .serve_with_incoming_shutdown(flight::net::incoming(listener), shutdown)
        .await
    {
        tracing::error!(%error, "Flight SQL front door stopped");
    }
}
