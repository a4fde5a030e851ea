//! The control plane: executors register with the coordinator, heartbeat, and
//! answer stats requests. It rides on Arrow Flight `DoAction` with JSON bodies, so
//! it needs no generated code and shares the transport of the data plane.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sql::config::ObjectStoreConfig;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::error::{FlightError, Result};

/// Action names of the control plane.
pub mod actions {
    pub const REGISTER: &str = "flotilla.register";
    pub const HEARTBEAT: &str = "flotilla.heartbeat";
    pub const DEREGISTER: &str = "flotilla.deregister";
    pub const STATS: &str = "flotilla.stats";
    /// Executors started with `--fault-injection` only: replace the injected
    /// faults (body: [`crate::faults::FaultSpec`]).
    pub const FAULTS: &str = "flotilla.faults";
    /// Coordinator to executor: stop every task of a query attempt (body:
    /// [`super::CancelRequest`]).
    pub const CANCEL: &str = "flotilla.cancel";
}

/// Stop every task of a query attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelRequest {
    pub attempt: String,
}

/// Sent by an executor when it starts (and again if the coordinator forgot it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub executor_id: String,
    /// Where the executor's worker service listens (`http://host:port`).
    pub worker_url: String,
    /// Where its control plane listens; unset: at the worker URL.
    #[serde(default)]
    pub control_url: Option<String>,
    pub pid: u32,
    pub version: String,
}

/// What the coordinator tells a newly registered executor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    #[serde(with = "duration_ms")]
    pub heartbeat_interval: Duration,
    pub object_store: ObjectStoreConfig,
    /// How long a peer may take to start answering an exchange request.
    #[serde(with = "duration_ms")]
    pub exchange_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub executor_id: String,
    pub stats: ExecutorStats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// False when the coordinator does not know this executor (it restarted, or
    /// declared the executor dead): the executor must register again.
    pub known: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeregisterRequest {
    pub executor_id: String,
}

/// Counters an executor keeps about its own work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecutorStats {
    /// Tasks whose fragment this executor accepted since it started.
    pub tasks_started: u64,
    /// Task streams open now (0: the executor is idle).
    pub tasks_running: u64,
    /// Bytes operators hold in the memory pool now.
    pub memory_reserved_bytes: u64,
    /// Size of the memory pool.
    pub memory_pool_bytes: u64,
    /// Bytes of spill files on disk now.
    pub spill_bytes: u64,
    /// CPU time the executor's data-plane threads (fragments, exchange) have
    /// used since it started.
    pub cpu_time_ms: u64,
    /// GPU stages run to the end on a device since the executor started.
    pub gpu_stages: u64,
    /// GPU stages that had to run on the CPU after they started on a device.
    pub gpu_fallbacks: u64,
}

/// Serves one side of the control plane: it gets each action's name and JSON body.
#[tonic::async_trait]
pub trait ControlHandler: Send + Sync + 'static {
    async fn handle(&self, action: &str, body: Bytes) -> std::result::Result<Bytes, Status>;
}

/// Decodes a JSON action body, with a clear status when it is malformed.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> std::result::Result<T, Status> {
    serde_json::from_slice(body)
        .map_err(|e| Status::invalid_argument(format!("malformed action body: {e}")))
}

/// Encodes a JSON action result.
pub fn encode<T: Serialize>(value: &T) -> std::result::Result<Bytes, Status> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Status::internal(format!("cannot encode action result: {e}")))
}

/// A Flight service that answers only the control-plane actions.
pub struct ControlService<H> {
    handler: Arc<H>,
}

impl<H: ControlHandler> ControlService<H> {
    pub fn new_server(handler: Arc<H>) -> FlightServiceServer<Self> {
        FlightServiceServer::new(Self { handler })
    }
}

type Stream<T> = Pin<Box<dyn futures::Stream<Item = std::result::Result<T, Status>> + Send>>;

fn unsupported<T>(what: &str) -> std::result::Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not served on the control plane"
    )))
}

#[tonic::async_trait]
impl<H: ControlHandler> FlightService for ControlService<H> {
    type HandshakeStream = Stream<HandshakeResponse>;
    type ListFlightsStream = Stream<FlightInfo>;
    type DoGetStream = Stream<FlightData>;
    type DoPutStream = Stream<PutResult>;
    type DoExchangeStream = Stream<FlightData>;
    type DoActionStream = Stream<arrow_flight::Result>;
    type ListActionsStream = Stream<ActionType>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<Response<Self::HandshakeStream>, Status> {
        unsupported("Handshake")
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> std::result::Result<Response<Self::ListFlightsStream>, Status> {
        unsupported("ListFlights")
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        unsupported("GetFlightInfo")
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<PollInfo>, Status> {
        unsupported("PollFlightInfo")
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<SchemaResult>, Status> {
        unsupported("GetSchema")
    }

    async fn do_get(
        &self,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<Self::DoGetStream>, Status> {
        unsupported("DoGet")
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoPutStream>, Status> {
        unsupported("DoPut")
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoExchangeStream>, Status> {
        unsupported("DoExchange")
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> std::result::Result<Response<Self::DoActionStream>, Status> {
        let action = request.into_inner();
        let body = self.handler.handle(&action.r#type, action.body).await?;
        let result = arrow_flight::Result { body };
        Ok(Response::new(
            stream::once(async move { Ok(result) }).boxed(),
        ))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> std::result::Result<Response<Self::ListActionsStream>, Status> {
        let names = [
            actions::REGISTER,
            actions::HEARTBEAT,
            actions::DEREGISTER,
            actions::STATS,
        ];
        let types: Vec<_> = names
            .iter()
            .map(|name| {
                Ok(ActionType {
                    r#type: name.to_string(),
                    description: String::new(),
                })
            })
            .collect();
        Ok(Response::new(stream::iter(types).boxed()))
    }
}

/// A client of the control plane (either side).
#[derive(Clone)]
pub struct ControlClient {
    url: String,
    inner: FlightServiceClient<Channel>,
    timeout: Duration,
}

impl ControlClient {
    /// Connects lazily: the first call opens the connection. Calls time out after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| FlightError::InvalidUrl {
                url: url.to_string(),
                message: e.to_string(),
            })?
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true);
        Ok(Self {
            url: url.to_string(),
            inner: FlightServiceClient::new(endpoint.connect_lazy()),
            timeout,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Calls one action and decodes its one result.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        action: &str,
        request: &Req,
    ) -> Result<Resp> {
        let body = serde_json::to_vec(request).map_err(|e| FlightError::Protocol {
            peer: self.url.clone(),
            message: e.to_string(),
        })?;
        let mut client = self.inner.clone();
        let call = async {
            let mut results: BoxStream<'static, _> = client
                .do_action(Action {
                    r#type: action.to_string(),
                    body: body.into(),
                })
                .await?
                .into_inner()
                .boxed();
            match results.next().await {
                Some(result) => Ok(result?.body),
                None => Err(Status::internal("empty action result")),
            }
        };
        let body = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| FlightError::Unreachable {
                peer: self.url.clone(),
                message: format!("no answer within {:?}", self.timeout),
            })?
            .map_err(|status| FlightError::from_status(&self.url, status))?;
        serde_json::from_slice(&body).map_err(|e| FlightError::Protocol {
            peer: self.url.clone(),
            message: e.to_string(),
        })
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
