//! The one error type of the `sql` crate.

use std::path::PathBuf;

use datafusion::error::DataFusionError;

/// What kind of failure an error is, independent of the wire protocol that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller sent something wrong: bad SQL, a bad option, a forbidden location.
    InvalidInput,
    /// A named object (table, file, statement) does not exist.
    NotFound,
    /// A named object already exists.
    AlreadyExists,
    /// Valid input that this engine does not implement.
    Unsupported,
    /// A limit (memory, queue, size) was hit.
    ResourcesExhausted,
    /// A needed service (executor, object store) cannot be reached right now.
    Unavailable,
    /// A bug or broken invariant on our side.
    Internal,
}

/// Errors from configuration, catalog and data generation.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("invalid configuration ({origin}): {message}")]
    InvalidConfig { origin: String, message: String },
    #[error("location '{location}' is outside the configured data roots")]
    LocationOutsideDataRoots { location: String },
    #[error("table '{name}' already exists")]
    TableExists { name: String },
    #[error("table '{name}' does not exist")]
    TableNotFound { name: String },
    #[error("catalog '{name}' does not exist")]
    CatalogNotFound { name: String },
    #[error("catalog file {path} is unreadable: {message}")]
    CatalogCorrupt { path: PathBuf, message: String },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating TPC-H table '{table}' failed: {message}")]
    Generate { table: String, message: String },
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
}

impl SqlError {
    /// The protocol-neutral kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SqlError::InvalidConfig { .. } | SqlError::LocationOutsideDataRoots { .. } => {
                ErrorKind::InvalidInput
            }
            SqlError::TableExists { .. } => ErrorKind::AlreadyExists,
            SqlError::TableNotFound { .. } | SqlError::CatalogNotFound { .. } => {
                ErrorKind::NotFound
            }
            SqlError::CatalogCorrupt { .. } | SqlError::Io { .. } | SqlError::Generate { .. } => {
                ErrorKind::Internal
            }
            SqlError::DataFusion(e) => datafusion_kind(e),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SqlError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Classifies a DataFusion error, looking through context and shared wrappers.
pub fn datafusion_kind(e: &DataFusionError) -> ErrorKind {
    match e {
        DataFusionError::SQL(..) | DataFusionError::Plan(..) | DataFusionError::SchemaError(..) => {
            ErrorKind::InvalidInput
        }
        DataFusionError::NotImplemented(..) => ErrorKind::Unsupported,
        DataFusionError::ResourcesExhausted(..) => ErrorKind::ResourcesExhausted,
        DataFusionError::Context(_, inner) => datafusion_kind(inner),
        DataFusionError::Shared(inner) => datafusion_kind(inner),
        DataFusionError::Diagnostic(_, inner) => datafusion_kind(inner),
        DataFusionError::Collection(errs) => errs
            .first()
            .map(datafusion_kind)
            .unwrap_or(ErrorKind::Internal),
        DataFusionError::External(inner) => match inner.downcast_ref::<SqlError>() {
            Some(e) => e.kind(),
            None => match inner.downcast_ref::<DataFusionError>() {
                Some(e) => datafusion_kind(e),
                None => ErrorKind::Internal,
            },
        },
        DataFusionError::ArrowError(..) | DataFusionError::Execution(..) => ErrorKind::InvalidInput,
        _ => ErrorKind::Internal,
    }
}

pub type Result<T, E = SqlError> = std::result::Result<T, E>;
