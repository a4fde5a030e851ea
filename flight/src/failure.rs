//! Which failures of a query another attempt can get past.
//!
//! A query is re-run only for failures of the cluster, never of the query: an
//! executor that cannot be reached, resets its connection, stops answering or is
//! declared lost by the coordinator. Division by zero, a bad cast, a missing
//! table, a panicking function or an exhausted memory pool fail the same way on
//! every attempt and are answered at once.
//!
//! Transport failures are typed where they happen ([`as_transport_failure`], in
//! the exchange channels of every process) as [`DataFusionError::IoError`] of a
//! network kind: `datafusion-distributed` carries an I/O error's kind across
//! processes, so a failure two hops away still classifies here.

use std::io::ErrorKind as IoKind;

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use tonic::Code;
use url::Url;

use crate::error::FlightError;

/// I/O error kinds that mean a peer is gone, unreachable or silent.
const NETWORK_KINDS: [IoKind; 10] = [
    IoKind::ConnectionRefused,
    IoKind::ConnectionReset,
    IoKind::ConnectionAborted,
    IoKind::NotConnected,
    IoKind::BrokenPipe,
    IoKind::TimedOut,
    IoKind::HostUnreachable,
    IoKind::NetworkUnreachable,
    IoKind::NetworkDown,
    IoKind::AddrNotAvailable,
];

/// Whether an I/O error of this kind means a peer is gone, unreachable or silent.
pub fn is_network_kind(kind: IoKind) -> bool {
    NETWORK_KINDS.contains(&kind)
}

/// Whether another attempt of the query could succeed where this one failed.
pub fn is_retryable(error: &DataFusionError) -> bool {
    match error {
        DataFusionError::IoError(e) => NETWORK_KINDS.contains(&e.kind()),
        DataFusionError::ArrowError(e, _) => arrow_retryable(e),
        DataFusionError::External(inner) => external_retryable(inner.as_ref()),
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            is_retryable(inner)
        }
        DataFusionError::Shared(inner) => is_retryable(inner),
        DataFusionError::Collection(errors) => errors.iter().any(is_retryable),
        _ => false,
    }
}

/// Whether the error says a memory pool (or the spill space) ran out.
pub fn is_resources_exhausted(error: &DataFusionError) -> bool {
    match error {
        DataFusionError::ResourcesExhausted(_) => true,
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            is_resources_exhausted(inner)
        }
        DataFusionError::Shared(inner) => is_resources_exhausted(inner),
        DataFusionError::Collection(errors) => errors.iter().any(is_resources_exhausted),
        DataFusionError::External(inner) => inner
            .downcast_ref::<DataFusionError>()
            .is_some_and(is_resources_exhausted),
        _ => false,
    }
}

fn arrow_retryable(error: &ArrowError) -> bool {
    match error {
        ArrowError::IoError(_, e) => NETWORK_KINDS.contains(&e.kind()),
        ArrowError::ExternalError(inner) => external_retryable(inner.as_ref()),
        _ => false,
    }
}

fn external_retryable(inner: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    if let Some(e) = inner.downcast_ref::<DataFusionError>() {
        return is_retryable(e);
    }
    if let Some(e) = inner.downcast_ref::<FlightError>() {
        return matches!(e, FlightError::ExecutorLost { .. });
    }
    if let Some(e) = inner.downcast_ref::<std::io::Error>() {
        return NETWORK_KINDS.contains(&e.kind());
    }
    if let Some(status) = inner.downcast_ref::<tonic::Status>() {
        return transport_kind(status).is_some();
    }
    if let Some(e) = inner.downcast_ref::<arrow_flight::error::FlightError>() {
        return match e {
            arrow_flight::error::FlightError::Tonic(status) => transport_kind(status).is_some(),
            _ => false,
        };
    }
    false
}

/// The network kind of a gRPC status that says the call never got a real answer
/// from its peer; `None` for statuses the peer itself returned.
fn transport_kind(status: &tonic::Status) -> Option<IoKind> {
    let message = status.message().to_ascii_lowercase();
    let broken = [
        "transport",
        "h2 protocol",
        "connection",
        "broken pipe",
        "timeout",
    ]
    .iter()
    .any(|needle| message.contains(needle));
    match status.code() {
        Code::Unavailable => Some(IoKind::NotConnected),
        Code::DeadlineExceeded => Some(IoKind::TimedOut),
        Code::Cancelled if message.contains("timeout") => Some(IoKind::TimedOut),
        Code::Cancelled | Code::Unknown | Code::Internal | Code::Aborted if broken => {
            Some(IoKind::ConnectionReset)
        }
        _ => None,
    }
}

/// The same error, with a transport failure talking to `peer` turned into a
/// network I/O error naming the peer; any other error is returned unchanged.
pub fn as_transport_failure(error: DataFusionError, peer: &Url) -> DataFusionError {
    match error {
        DataFusionError::External(inner) => {
            let kind = inner
                .downcast_ref::<tonic::Status>()
                .and_then(transport_kind)
                .or_else(
                    || match inner.downcast_ref::<arrow_flight::error::FlightError>() {
                        Some(arrow_flight::error::FlightError::Tonic(status)) => {
                            transport_kind(status)
                        }
                        _ => None,
                    },
                );
            match kind {
                Some(kind) => DataFusionError::IoError(std::io::Error::new(
                    kind,
                    format!("executor {peer} failed: {inner}"),
                )),
                None => DataFusionError::External(inner),
            }
        }
        DataFusionError::Context(context, inner) => {
            DataFusionError::Context(context, Box::new(as_transport_failure(*inner, peer)))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Url {
        Url::parse("http://127.0.0.1:4000").unwrap()
    }

    #[test]
    fn transport_failures_retry_and_keep_their_kind() {
        let refused = DataFusionError::External(Box::new(tonic::Status::unavailable(
            "error trying to connect: tcp connect error: Connection refused",
        )));
        let typed = as_transport_failure(refused, &peer());
        match &typed {
            DataFusionError::IoError(e) => {
                assert_eq!(e.kind(), IoKind::NotConnected);
                assert!(e.to_string().contains("127.0.0.1:4000"), "{e}");
            }
            other => panic!("not typed: {other:?}"),
        }
        assert!(is_retryable(&typed));
        let reset = DataFusionError::External(Box::new(tonic::Status::unknown(
            "h2 protocol error: error reading a body from connection",
        )));
        assert!(is_retryable(&as_transport_failure(reset, &peer())));
        let nested = DataFusionError::Context(
            "reading shuffle data".into(),
            Box::new(DataFusionError::Shared(std::sync::Arc::new(typed))),
        );
        assert!(is_retryable(&nested));
    }

    #[test]
    fn query_failures_do_not_retry() {
        let cases = [
            DataFusionError::ArrowError(Box::new(ArrowError::DivideByZero), None),
            DataFusionError::Plan("table 'x' not found".into()),
            DataFusionError::Execution("panicked at 'boom'".into()),
            DataFusionError::ResourcesExhausted("pool exhausted".into()),
            DataFusionError::IoError(std::io::Error::new(IoKind::NotFound, "no such file")),
            // A status the peer answered with is the peer's verdict, not a lost peer.
            DataFusionError::External(Box::new(tonic::Status::invalid_argument("bad plan"))),
        ];
        for case in cases {
            let typed = as_transport_failure(case, &peer());
            assert!(!is_retryable(&typed), "retried: {typed:?}");
        }
    }

    #[test]
    fn a_lost_executor_retries() {
        let lost = DataFusionError::External(Box::new(FlightError::ExecutorLost {
            executor_id: "executor-1".into(),
            url: peer().to_string(),
            reason: "missed heartbeats".into(),
        }));
        assert!(is_retryable(&lost));
    }
}
