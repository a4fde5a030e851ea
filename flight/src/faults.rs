//! Fault injection, for the chaos tests and benchmarks only.
//!
//! Nothing here does anything unless a process is started with
//! `--fault-injection`: then an executor takes a [`FaultSpec`] over the control
//! plane (action [`crate::control::actions::FAULTS`]) and
//!
//! - fails its next `fail_tasks` tasks, or every task while `fail_always` is
//!   set, with a transient error (a lost connection, as a network I/O error);
//! - answers exchange requests (a consumer asking for a task's output) only
//!   after `exchange_delay`, and leaves the next `exchange_drops` of them
//!   unanswered, as a black-holed connection would;
//! - stalls its next `stall_tasks` tasks: their output never comes and they
//!   do no work, as a task whose shuffle data stopped arriving mid-stream;
//!
//! and every process registers `fault_panic(text)`, a scalar function that
//! panics, to stand for a buggy function.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use datafusion::arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use serde::{Deserialize, Serialize};

/// Faults to inject, as the control plane carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSpec {
    /// Fail this many of the next tasks (transiently).
    pub fail_tasks: u32,
    /// Fail every task until cleared.
    pub fail_always: bool,
    /// Delay before answering each exchange request.
    #[serde(with = "duration_ms")]
    pub exchange_delay: Duration,
    /// Leave this many of the next exchange requests unanswered.
    pub exchange_drops: u32,
    /// Stall this many of the next tasks for good.
    pub stall_tasks: u32,
}

/// The fault state of one process. Disabled (the default) means inert: specs
/// are refused and nothing is ever injected.
#[derive(Debug, Default)]
pub struct Faults {
    enabled: bool,
    executor_id: String,
    fail_tasks: AtomicU32,
    fail_always: AtomicBool,
    exchange_drops: AtomicU32,
    stall_tasks: AtomicU32,
    exchange_delay: Mutex<Duration>,
}

/// What an injected fault does to a task.
#[derive(Debug)]
pub(crate) enum TaskFault {
    /// The task fails with this (transient) error.
    Fail(DataFusionError),
    /// The task never produces anything.
    Stall,
}

impl Faults {
    /// Faults that can be injected into the process `executor_id`.
    pub fn enabled(executor_id: &str) -> Self {
        Self {
            enabled: true,
            executor_id: executor_id.to_string(),
            ..Self::default()
        }
    }

    /// Faults that can never be injected.
    pub fn disabled() -> Self {
        Self::default()
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Replaces the injected faults; refused unless the process was started
    /// with fault injection.
    pub fn set(&self, spec: &FaultSpec) -> std::result::Result<(), tonic::Status> {
        if !self.enabled {
            return Err(tonic::Status::permission_denied(
                "fault injection is off (start the executor with --fault-injection)",
            ));
        }
        self.fail_tasks.store(spec.fail_tasks, Ordering::SeqCst);
        self.fail_always.store(spec.fail_always, Ordering::SeqCst);
        self.exchange_drops
            .store(spec.exchange_drops, Ordering::SeqCst);
        self.stall_tasks.store(spec.stall_tasks, Ordering::SeqCst);
        *self
            .exchange_delay
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = spec.exchange_delay;
        tracing::warn!(?spec, "faults injected");
        Ok(())
    }

    /// The fault the task starting now must suffer, if any.
    pub(crate) fn task_fault(&self) -> Option<TaskFault> {
        if !self.enabled {
            return None;
        }
        let stall = self
            .stall_tasks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if stall {
            return Some(TaskFault::Stall);
        }
        self.task_failure().map(TaskFault::Fail)
    }

    /// The error the task starting now must fail with, if any.
    fn task_failure(&self) -> Option<DataFusionError> {
        let once = self
            .fail_tasks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !once && !self.fail_always.load(Ordering::SeqCst) {
            return None;
        }
        Some(DataFusionError::IoError(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            format!(
                "injected fault: a task on {} lost its connection",
                self.executor_id
            ),
        )))
    }

    /// What to do with an exchange request arriving now.
    fn exchange_fate(&self) -> ExchangeFate {
        if !self.enabled {
            return ExchangeFate::Serve(Duration::ZERO);
        }
        let dropped = self
            .exchange_drops
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if dropped {
            return ExchangeFate::Drop;
        }
        ExchangeFate::Serve(
            *self
                .exchange_delay
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }
}

enum ExchangeFate {
    Serve(Duration),
    Drop,
}

/// A tower layer for an executor's gRPC server that applies the exchange faults
/// to the task-output requests (`ExecuteTask`).
#[derive(Clone)]
pub struct ExchangeFaultLayer {
    faults: Arc<Faults>,
}

impl ExchangeFaultLayer {
    pub fn new(faults: Arc<Faults>) -> Self {
        Self { faults }
    }
}

impl<S> tower::Layer<S> for ExchangeFaultLayer {
    type Service = ExchangeFaultService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ExchangeFaultService {
            inner,
            faults: Arc::clone(&self.faults),
        }
    }
}

#[derive(Clone)]
pub struct ExchangeFaultService<S> {
    inner: S,
    faults: Arc<Faults>,
}

impl<S, B> tower::Service<http::Request<B>> for ExchangeFaultService<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let exchange = request.uri().path().ends_with("/ExecuteTask");
        let fate = if exchange {
            self.faults.exchange_fate()
        } else {
            ExchangeFate::Serve(Duration::ZERO)
        };
        // The service that was polled ready serves this request; a fresh clone
        // takes its place for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            match fate {
                ExchangeFate::Drop => {
                    tracing::warn!("injected fault: an exchange request is left unanswered");
                    futures::future::pending::<()>().await;
                    unreachable!("pending never resolves")
                }
                ExchangeFate::Serve(delay) => {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    inner.call(request).await
                }
            }
        })
    }
}

/// `fault_panic(text)`: panics with `text` when evaluated. Registered only in
/// processes started with fault injection.
pub fn panic_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(PanicUdf {
        signature: Signature::exact(vec![DataType::Utf8], Volatility::Volatile),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct PanicUdf {
    signature: Signature,
}

impl ScalarUDFImpl for PanicUdf {
    fn name(&self) -> &str {
        "fault_panic"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let text = match args.args.first() {
            Some(ColumnarValue::Scalar(value)) => value.to_string(),
            _ => "fault_panic".to_string(),
        };
        panic!("{text}");
    }
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_faults_refuse_and_never_fire() {
        let faults = Faults::disabled();
        assert!(faults
            .set(&FaultSpec {
                fail_tasks: 1,
                ..FaultSpec::default()
            })
            .is_err());
        assert!(faults.task_fault().is_none());
        assert!(matches!(faults.exchange_fate(), ExchangeFate::Serve(d) if d.is_zero()));
    }

    #[test]
    fn a_counted_failure_fires_that_many_times() {
        let faults = Faults::enabled("executor-1");
        faults
            .set(&FaultSpec {
                fail_tasks: 2,
                exchange_drops: 1,
                ..FaultSpec::default()
            })
            .unwrap();
        let Some(TaskFault::Fail(error)) = faults.task_fault() else {
            panic!("no first failure");
        };
        assert!(crate::failure::is_retryable(&error));
        assert!(faults.task_fault().is_some());
        assert!(faults.task_fault().is_none());
        assert!(matches!(faults.exchange_fate(), ExchangeFate::Drop));
        assert!(matches!(faults.exchange_fate(), ExchangeFate::Serve(_)));
    }
}
