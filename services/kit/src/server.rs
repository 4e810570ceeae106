//! Server bootstrap shared by all five servers: health, reflection (v1 and v1alpha), limits,
//! request timeouts and graceful shutdown, on a listener the caller bound (port 0 in tests).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{Request, Response};
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::auth::AuthPolicy;
use crate::auth::layer::AuthLayer;
use crate::fault::FaultControl;
use crate::fault::layer::FaultLayer;
use crate::fault::service::FaultApi;
use crate::shutdown::Shutdown;
use crate::tls::ServerTls;
use checkout_proto::fault::fault_service_server::FaultServiceServer;

/// Request and connection limits every server applies.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// Deadline for one unary request when the client sets none shorter (`grpc-timeout`).
    pub request_timeout: Duration,
    /// Requests served at once on one connection; further ones wait.
    pub concurrency_per_connection: usize,
    /// HTTP/2 streams a client may open at once on one connection.
    pub max_concurrent_streams: u32,
    /// After shutdown is requested, how long in-flight requests get to finish.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            concurrency_per_connection: 256,
            max_concurrent_streams: 256,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Applies the message size limits of [`ServerLimits`] to a generated tonic server:
/// `limit_messages!(CartServiceServer::new(api), limits)`.
#[macro_export]
macro_rules! limit_messages {
    ($server:expr, $limits:expr) => {
        $server
            .max_decoding_message_size($limits.max_message_bytes)
            .max_encoding_message_size($limits.max_message_bytes)
    };
}

/// Errors of starting or running a server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The reflection service could not be built from the descriptors.
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The TLS certificate or key was refused.
    #[error("TLS certificate or key refused")]
    Tls(#[source] tonic::transport::Error),
    /// The transport failed while serving.
    #[error("gRPC transport failed")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds a TCP listener with an error that names the address.
pub async fn bind(addr: &str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

/// The gRPC services of one server, plus the standard services every server carries.
pub struct GrpcServer {
    role: &'static str,
    routes: RoutesBuilder,
    service_names: Vec<&'static str>,
    limits: ServerLimits,
    faults: FaultControl,
    auth: AuthPolicy,
    tls: Option<ServerTls>,
}

impl GrpcServer {
    /// A server for one role (`cart`, `orchestrator`, ...) with the given limits.
    pub fn new(role: &'static str, limits: ServerLimits) -> Self {
        Self {
            role,
            routes: Routes::builder(),
            service_names: Vec::new(),
            limits,
            faults: FaultControl::disabled(),
            auth: AuthPolicy::Disabled,
            tls: None,
        }
    }

    /// Serves under this auth policy (servers built directly start with auth disabled; the
    /// binary always sets a policy).
    pub fn with_auth(mut self, auth: AuthPolicy) -> Self {
        self.auth = auth;
        self
    }

    /// Serves over TLS with this certificate and key.
    pub fn with_tls(mut self, tls: Option<ServerTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Serves with these fault rules (and FaultService answering when they allow it).
    pub fn with_faults(mut self, faults: FaultControl) -> Self {
        self.faults = faults;
        self
    }

    /// The limits this server applies.
    pub fn limits(&self) -> &ServerLimits {
        &self.limits
    }

    /// Adds a generated tonic service; health reports it by its full name.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.add_service(service);
        self.service_names.push(S::NAME);
        self
    }

    /// Serves until `shutdown` fires, then reports NOT_SERVING, stops accepting, and lets
    /// in-flight requests finish for at most the drain timeout.
    pub async fn serve(self, listener: TcpListener, shutdown: Shutdown) -> Result<(), ServerError> {
        let Self {
            role,
            mut routes,
            mut service_names,
            limits,
            faults,
            auth,
            tls,
        } = self;
        routes.add_service(FaultApi::new(faults.clone()).server());
        service_names.push(<FaultServiceServer<FaultApi> as NamedService>::NAME);
        let local = listener.local_addr().ok();

        let (reporter, health) = tonic_health::server::health_reporter();
        for name in &service_names {
            reporter
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        let reflection_v1 = reflection_builder(&service_names).build_v1()?;
        let reflection_v1alpha = reflection_builder(&service_names).build_v1alpha()?;
        routes
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let stop_accepting = {
            let shutdown = shutdown.clone();
            let reporter = reporter.clone();
            async move {
                shutdown.requested().await;
                // Health first, so load balancers stop routing here before the listener closes.
                reporter
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                for name in &service_names {
                    reporter
                        .set_service_status(*name, ServingStatus::NotServing)
                        .await;
                }
                tracing::info!(role, "draining in-flight requests");
            }
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &tls {
            builder = builder.tls_config(tls.config()).map_err(ServerError::Tls)?;
        }
        // Auth runs before fault rules: an unauthenticated call never reaches a handler or
        // triggers an injected fault.
        let server = builder
            .trace_fn(move |request| request_span(role, request))
            .layer(AuthLayer::new(auth))
            .layer(FaultLayer::new(faults))
            .timeout(limits.request_timeout)
            .concurrency_limit_per_connection(limits.concurrency_per_connection)
            .max_concurrent_streams(limits.max_concurrent_streams)
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(incoming, stop_accepting);

        tracing::info!(role, addr = ?local, tls = tls.is_some(), "serving");
        let drain_deadline = async {
            shutdown.requested().await;
            tokio::time::sleep(limits.drain_timeout).await;
        };
        tokio::select! {
            result = server => result?,
            () = drain_deadline => {
                // Long-lived streams (WatchCheckout) would hold shutdown open forever.
                tracing::warn!(role, "drain timeout passed; closing remaining connections");
            }
        }
        tracing::info!(role, "stopped");
        Ok(())
    }
}

/// Reflection advertises exactly what this server serves (not every service in the contracts),
/// and both reflection versions are listed and describable from either.
fn reflection_builder(served: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let standard = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    served.iter().chain(standard.iter()).fold(
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(checkout_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ),
        |builder, name| builder.with_service_name(*name),
    )
}

/// The span of one served RPC, a child of the caller's trace context when it sent one. Only the
/// method and role are recorded: never a request's content.
fn request_span(role: &'static str, request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        server.role = role,
    );
    crate::telemetry::adopt(&span, crate::telemetry::extract(request.headers()));
    span
}

/// Formats a bound address as the endpoint clients dial (`https://` when serving TLS).
pub fn endpoint_of(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}")
}
