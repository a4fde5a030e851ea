//! The one error type of the `coordinator` crate.

use datafusion::error::DataFusionError;
use sql::{ErrorKind, SqlError};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error(
        "no executor is alive to run this query; it reads table data, which only executors do"
    )]
    NoExecutors,
    #[error("unrecognized configuration parameter \"{name}\"")]
    UnknownSetting { name: String },
    #[error("invalid value for parameter \"{name}\": \"{value}\" ({reason})")]
    InvalidSetting {
        name: String,
        value: String,
        reason: String,
    },
    #[error("parameter \"{name}\" cannot be changed")]
    ReadOnlySetting { name: String },
    #[error("{what} is not supported")]
    Unsupported { what: String },
    #[error("cannot insert multiple commands into a prepared statement")]
    MultipleStatements,
    #[error("invalid byte sequence for encoding \"UTF8\"")]
    InvalidEncoding,
    #[error("could not bind parameter ${index}: {message}")]
    BadParameter { index: usize, message: String },
    #[error("bind message supplies {supplied} parameters, but the prepared statement requires {required}")]
    WrongParameterCount { supplied: usize, required: usize },
    #[error("cursor \"{name}\" does not exist")]
    CursorNotFound { name: String },
    #[error("cursor \"{name}\" already exists")]
    CursorExists { name: String },
    #[error("canceling statement due to user request")]
    Cancelled,
    #[error("canceling statement due to statement timeout ({timeout:?})")]
    StatementTimeout { timeout: std::time::Duration },
    #[error("every executor was lost while the query ran, and none came back")]
    ExecutorsLost,
    #[error("the query stalled: its executors did no work for {idle:?} while it waited for rows")]
    Stalled { idle: std::time::Duration },
    #[error(
        "too many queries: {running} running and {queued} queued for {scope}; try again later"
    )]
    TooManyQueries {
        running: usize,
        queued: usize,
        scope: &'static str,
    },
    #[error("internal error: {message}")]
    Internal { message: String },
}

impl QueryError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            QueryError::Sql(e) => e.kind(),
            QueryError::DataFusion(e) => sql::error::datafusion_kind(e),
            QueryError::NoExecutors => ErrorKind::Unavailable,
            QueryError::UnknownSetting { .. } | QueryError::CursorNotFound { .. } => {
                ErrorKind::NotFound
            }
            QueryError::CursorExists { .. } => ErrorKind::AlreadyExists,
            QueryError::InvalidSetting { .. }
            | QueryError::MultipleStatements
            | QueryError::InvalidEncoding
            | QueryError::BadParameter { .. }
            | QueryError::WrongParameterCount { .. } => ErrorKind::InvalidInput,
            QueryError::Unsupported { .. } | QueryError::ReadOnlySetting { .. } => {
                ErrorKind::Unsupported
            }
            QueryError::Internal { .. } => ErrorKind::Internal,
            QueryError::Cancelled | QueryError::StatementTimeout { .. } => ErrorKind::Unavailable,
            QueryError::ExecutorsLost => ErrorKind::Unavailable,
            QueryError::Stalled { .. } => ErrorKind::Internal,
            QueryError::TooManyQueries { .. } => ErrorKind::ResourcesExhausted,
        }
    }
}

pub type Result<T, E = QueryError> = std::result::Result<T, E>;
