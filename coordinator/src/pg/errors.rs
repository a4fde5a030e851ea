//! Errors to SQLSTATEs: the one place the pgwire layer converts them.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use pgwire::error::{ErrorInfo, PgWireError};
use sql::SqlError;

use crate::error::QueryError;

/// The ErrorResponse for an error.
pub fn error_info(error: &QueryError) -> ErrorInfo {
    let code = sqlstate(error);
    if code == "XX000" {
        tracing::error!(%error, "internal error answered to a client");
    }
    ErrorInfo::new("ERROR".to_string(), code.to_string(), message(error))
}

/// As a `PgWireError`, for paths that return errors rather than responses.
pub fn pg_error(error: &QueryError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(error)))
}

pub fn message(error: &QueryError) -> String {
    match error {
        QueryError::DataFusion(e) => clean_message(e),
        other => other.to_string(),
    }
}

/// DataFusion wraps messages in prefixes and context chains; keep what the user needs.
fn clean_message(error: &DataFusionError) -> String {
    if let DataFusionError::External(inner) = error {
        if let Some(e) = inner.downcast_ref::<QueryError>() {
            return message(e);
        }
    }
    let text = error.to_string();
    let trimmed = text
        .trim_start_matches("External error: ")
        .trim_start_matches("Error during planning: ")
        .trim_start_matches("Execution error: ")
        .trim_start_matches("Arrow error: ")
        .trim_start_matches("SQL error: ");
    trimmed.to_string()
}

/// The SQLSTATE for an error.
pub fn sqlstate(error: &QueryError) -> &'static str {
    match error {
        QueryError::Sql(e) => match e {
            SqlError::LocationOutsideDataRoots { .. } => "42501",
            SqlError::TableExists { .. } => "42P07",
            SqlError::TableNotFound { .. } => "42P01",
            SqlError::InvalidConfig { .. } => "22023",
            SqlError::DataFusion(e) => datafusion_sqlstate(e),
            _ => "XX000",
        },
        QueryError::DataFusion(e) => datafusion_sqlstate(e),
        QueryError::NoExecutors => "57P03",
        QueryError::UnknownSetting { .. } => "42704",
        QueryError::InvalidSetting { .. } => "22023",
        QueryError::Unsupported { .. } => "0A000",
        QueryError::ReadOnlySetting { .. } => "55P02",
        QueryError::MultipleStatements => "42601",
        QueryError::InvalidEncoding => "22021",
        QueryError::BadParameter { .. } => "22P02",
        QueryError::Internal { .. } => "XX000",
        QueryError::Cancelled | QueryError::StatementTimeout { .. } => "57014",
        QueryError::ExecutorsLost => "57P03",
        QueryError::Stalled { .. } => "XX000",
        QueryError::TooManyQueries { .. } => "53300",
        QueryError::CursorNotFound { .. } => "34000",
        QueryError::WrongParameterCount { .. } => "08P01",
        QueryError::CursorExists { .. } => "42P03",
    }
}

fn datafusion_sqlstate(error: &DataFusionError) -> &'static str {
    match error {
        DataFusionError::SQL(..) => "42601",
        DataFusionError::NotImplemented(..) => "0A000",
        DataFusionError::ResourcesExhausted(..) => "53200",
        DataFusionError::ArrowError(e, _) => arrow_sqlstate(e),
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            datafusion_sqlstate(inner)
        }
        DataFusionError::Shared(inner) => datafusion_sqlstate(inner),
        // A file or object store that fails under a query (a bucket gone, an
        // object deleted, permissions): io_error.
        DataFusionError::ObjectStore(_) => "58030",
        DataFusionError::IoError(e) if is_network(e) => "57P03",
        DataFusionError::IoError(_) => "58030",
        DataFusionError::External(inner) => {
            if let Some(e) = inner.downcast_ref::<DataFusionError>() {
                return datafusion_sqlstate(e);
            }
            // Failures of a query's run (timeout, lost executors) travel in its
            // result stream as external errors.
            if let Some(e) = inner.downcast_ref::<QueryError>() {
                return sqlstate(e);
            }
            if let Some(e) = inner.downcast_ref::<flight::FlightError>() {
                return match e.kind() {
                    sql::ErrorKind::Unavailable => "57P03",
                    _ => "XX000",
                };
            }
            if let Some(e) = inner.downcast_ref::<std::io::Error>() {
                return if is_network(e) { "57P03" } else { "58030" };
            }
            if let Some(e) = inner.downcast_ref::<ArrowError>() {
                return arrow_sqlstate(e);
            }
            by_message(&inner.to_string()).unwrap_or("XX000")
        }
        DataFusionError::SchemaError(..) => by_message(&error.to_string()).unwrap_or("42703"),
        DataFusionError::Plan(msg) => by_message(msg).unwrap_or("42000"),
        DataFusionError::Execution(msg) => by_message(msg).unwrap_or("22000"),
        DataFusionError::Configuration(_) => "22023",
        other => by_message(&other.to_string()).unwrap_or("XX000"),
    }
}

/// An I/O error that says a peer is gone or unreachable.
fn is_network(error: &std::io::Error) -> bool {
    flight::failure::is_network_kind(error.kind())
}

fn arrow_sqlstate(error: &ArrowError) -> &'static str {
    match error {
        ArrowError::DivideByZero => "22012",
        ArrowError::ArithmeticOverflow(_) => "22003",
        ArrowError::CastError(_) | ArrowError::ParseError(_) => "22P02",
        ArrowError::MemoryError(_) => "53200",
        ArrowError::ExternalError(inner) => by_message(&inner.to_string()).unwrap_or("XX000"),
        other => by_message(&other.to_string()).unwrap_or("22000"),
    }
}

/// Errors that crossed a process boundary arrive as text: classify by what they say.
fn by_message(message: &str) -> Option<&'static str> {
    let m = message.to_ascii_lowercase();
    let rules: &[(&str, &str)] = &[
        // A bug in an operator or function, contained to its query.
        ("a task panicked", "XX000"),
        // The spill directory's cap (`executor.spill_bytes_max`).
        ("exceeded the allowable limit", "53200"),
        ("divide by zero", "22012"),
        ("division by zero", "22012"),
        ("overflow", "22003"),
        ("cancelled", "57014"),
        ("canceled", "57014"),
        ("sql parser error", "42601"),
        // An object store failing under a query: a deleted object, a bucket gone.
        ("object at location", "58030"),
        ("nosuchbucket", "58030"),
        ("error performing get", "58030"),
        ("parsererror", "42601"),
        ("invalid function", "42883"),
        ("unknown function", "42883"),
        ("no function matches", "42883"),
        ("not found", "42P01"),
        ("no field named", "42703"),
        ("cannot cast", "22P02"),
        ("cast error", "22P02"),
        ("resources exhausted", "53200"),
        ("not implemented", "0A000"),
        ("not supported", "0A000"),
    ];
    rules
        .iter()
        .find(|(needle, _)| m.contains(needle))
        .map(|(_, code)| *code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_of(e: DataFusionError) -> &'static str {
        sqlstate(&QueryError::DataFusion(e))
    }

    #[test]
    fn common_errors_get_real_sqlstates() {
        assert_eq!(
            state_of(DataFusionError::Plan(
                "table 'flotilla.public.x' not found".into()
            )),
            "42P01"
        );
        assert_eq!(
            state_of(DataFusionError::Plan("Invalid function 'nope'".into())),
            "42883"
        );
        assert_eq!(
            state_of(DataFusionError::ArrowError(
                Box::new(ArrowError::DivideByZero),
                None
            )),
            "22012"
        );
        assert_eq!(
            state_of(DataFusionError::External(
                "Arrow error: Divide by zero error".into()
            )),
            "22012"
        );
        assert_eq!(sqlstate(&QueryError::NoExecutors), "57P03");
        assert_eq!(sqlstate(&QueryError::InvalidEncoding), "22021");
    }
}
