//! The one error type of the `flight` crate.

use sql::ErrorKind;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum FlightError {
    #[error("invalid URL '{url}': {message}")]
    InvalidUrl { url: String, message: String },
    #[error("cannot reach {peer}: {message}")]
    Unreachable { peer: String, message: String },
    #[error("{peer} rejected the request ({code:?}): {message}")]
    Rejected {
        peer: String,
        code: Code,
        message: String,
    },
    #[error("protocol error talking to {peer}: {message}")]
    Protocol { peer: String, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server stopped: {message}")]
    Serve { message: String },
    /// An executor a running query used went away: the coordinator stopped
    /// hearing from it, or it re-registered at another address.
    #[error("executor {executor_id} ({url}) was lost while the query ran: {reason}")]
    ExecutorLost {
        executor_id: String,
        url: String,
        reason: String,
    },
}

impl FlightError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            FlightError::InvalidUrl { .. } => ErrorKind::InvalidInput,
            FlightError::Unreachable { .. } => ErrorKind::Unavailable,
            FlightError::Rejected { code, .. } => match code {
                Code::InvalidArgument => ErrorKind::InvalidInput,
                Code::NotFound => ErrorKind::NotFound,
                Code::Unimplemented => ErrorKind::Unsupported,
                Code::ResourceExhausted => ErrorKind::ResourcesExhausted,
                Code::Unavailable | Code::DeadlineExceeded => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            FlightError::Protocol { .. } | FlightError::Serve { .. } => ErrorKind::Internal,
            FlightError::Listen { .. } | FlightError::ExecutorLost { .. } => ErrorKind::Unavailable,
        }
    }

    pub(crate) fn from_status(peer: &str, status: Status) -> Self {
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                FlightError::Unreachable {
                    peer: peer.to_string(),
                    message: status.message().to_string(),
                }
            }
            code => FlightError::Rejected {
                peer: peer.to_string(),
                code,
                message: status.message().to_string(),
            },
        }
    }
}

pub type Result<T, E = FlightError> = std::result::Result<T, E>;
