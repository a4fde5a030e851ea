//! Accepting gRPC connections.

use futures::{Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;

/// The connections `listener` accepts, with Nagle's algorithm off.
///
/// tonic sets `TCP_NODELAY` only on listeners it binds itself; on a stream of
/// accepted connections (`serve_with_incoming`) small gRPC frames otherwise wait
/// for the peer's delayed ACK, about 40 ms a round trip on Linux.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "TCP_NODELAY not set");
            }
        }
        accepted
    })
}
