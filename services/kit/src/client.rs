//! Dialling a checkout server: one way for the orchestrator, the tools (demo, chaos, bench) and
//! tests. Every call carries the current trace context and, when configured, the caller's
//! bearer credential; `https://` endpoints use TLS trusting the configured CA.

use std::time::Duration;

use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::Bearer;
use crate::tls::ClientTls;

/// A channel whose calls carry trace context and the caller's credential.
pub type OutboundChannel = InterceptedService<Channel, Outbound>;

/// The interceptor behind [`OutboundChannel`].
#[derive(Debug, Clone, Default)]
pub struct Outbound {
    bearer: Option<Bearer>,
}

impl Outbound {
    /// Calls that present `bearer` (none: unauthenticated, for servers in development mode).
    pub fn new(bearer: Option<Bearer>) -> Self {
        Self { bearer }
    }
}

impl Interceptor for Outbound {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        crate::telemetry::inject(request.metadata_mut());
        if let Some(bearer) = &self.bearer {
            bearer.apply(request.metadata_mut());
        }
        Ok(request)
    }
}

/// How a client dials: its credential and TLS trust.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// The credential every call presents.
    pub bearer: Option<Bearer>,
    /// TLS trust for `https://` endpoints (system defaults are not used: name a CA).
    pub tls: Option<ClientTls>,
    /// How long connecting may take (5 s when unset).
    pub connect_timeout: Option<Duration>,
    /// Deadline of every call made on the channel (none when unset: callers set their own).
    pub request_timeout: Option<Duration>,
}

impl ClientOptions {
    /// Calls presenting `bearer`, plaintext, default timeouts.
    pub fn with_bearer(bearer: Bearer) -> Self {
        Self {
            bearer: Some(bearer),
            ..Self::default()
        }
    }
}

/// Why an endpoint cannot be dialled.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Not a usable URI.
    #[error("invalid endpoint `{0}`: expected http://host:port or https://host:port")]
    Invalid(String),
    /// `https://` was asked for without a CA to trust.
    #[error("endpoint `{0}` is https but no CA certificate was given (--tls-ca)")]
    NoTrust(String),
    /// The TLS settings were refused.
    #[error("TLS settings for `{0}` were refused: {1}")]
    Tls(String, String),
    /// Nothing answered (only from [`connect`]).
    #[error("cannot connect to `{0}`")]
    Unreachable(String, #[source] tonic::transport::Error),
}

/// A channel that connects on first use and reconnects on its own, so a caller starts even while
/// the server is down (its calls then fail as UNAVAILABLE).
pub fn connect_lazy(url: &str, options: &ClientOptions) -> Result<OutboundChannel, EndpointError> {
    let endpoint = endpoint(url, options)?;
    Ok(InterceptedService::new(
        endpoint.connect_lazy(),
        Outbound::new(options.bearer.clone()),
    ))
}

/// A channel connected now: fails at once when the server cannot be reached.
pub async fn connect(url: &str, options: &ClientOptions) -> Result<OutboundChannel, EndpointError> {
    let channel = endpoint(url, options)?
        .connect()
        .await
        .map_err(|source| EndpointError::Unreachable(url.to_owned(), source))?;
    Ok(InterceptedService::new(
        channel,
        Outbound::new(options.bearer.clone()),
    ))
}

fn endpoint(url: &str, options: &ClientOptions) -> Result<Endpoint, EndpointError> {
    let invalid = || EndpointError::Invalid(url.to_owned());
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|_| invalid())?;
    // `Endpoint::from_shared` accepts a bare path; a channel to it could never connect.
    let scheme = endpoint.uri().scheme_str().map(str::to_owned);
    if endpoint.uri().host().is_none() {
        return Err(invalid());
    }
    let mut endpoint = endpoint
        .tcp_nodelay(true)
        .connect_timeout(options.connect_timeout.unwrap_or(Duration::from_secs(5)));
    if let Some(timeout) = options.request_timeout {
        endpoint = endpoint.timeout(timeout);
    }
    match scheme.as_deref() {
        Some("http") => Ok(endpoint),
        Some("https") => {
            let tls = options
                .tls
                .as_ref()
                .ok_or_else(|| EndpointError::NoTrust(url.to_owned()))?;
            endpoint
                .tls_config(tls.config())
                .map_err(|e| EndpointError::Tls(url.to_owned(), e.to_string()))
        }
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_endpoints_are_refused() {
        let options = ClientOptions::default();
        assert!(connect_lazy("not a url", &options).is_err());
        assert!(connect_lazy("/just/a/path", &options).is_err());
        assert!(connect_lazy("ftp://127.0.0.1:1", &options).is_err());
        assert!(matches!(
            connect_lazy("https://127.0.0.1:1", &options),
            Err(EndpointError::NoTrust(_))
        ));
        assert!(connect_lazy("http://127.0.0.1:50051", &options).is_ok());
    }
}
