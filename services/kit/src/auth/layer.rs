//! The tower layer that enforces an [`AuthPolicy`] before any handler (or fault rule) runs, and
//! records the [`Caller`] in the request's extensions for handlers that scope by it.

use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use tonic::codegen::http;
use tower_layer::Layer;
use tower_service::Service;

use super::{AUTHORIZATION, AuthPolicy, Caller};

/// Wraps a server's services with its auth policy.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    policy: AuthPolicy,
}

impl AuthLayer {
    /// A layer enforcing `policy`.
    pub fn new(policy: AuthPolicy) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// A service that only sees calls its policy lets through.
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    policy: AuthPolicy,
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for Authenticated<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let caller = match &self.policy {
            AuthPolicy::Disabled => Ok(Some(Caller::Unchecked)),
            AuthPolicy::Enforced(keyring) => keyring.check(
                request.uri().path(),
                request.headers().get(AUTHORIZATION).map(|v| v.as_bytes()),
            ),
        };
        // The credential goes no further than this layer: handlers, fault rules and traces
        // never see it.
        request.headers_mut().remove(AUTHORIZATION);
        match caller {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                // The ready service handles this request; a fresh clone waits for the next one.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                inner.call(request).boxed()
            }
            Err(denial) => {
                let path = request.uri().path().to_owned();
                tracing::debug!(rpc = %path, ?denial, "call refused by auth policy");
                let refusal = denial.status().into_http();
                Box::pin(async move { Ok(refusal) })
            }
        }
    }
}
