//! The tower layer that applies a server's fault rules to every request (but never to health,
//! reflection or FaultService itself, so a faulty server can still be inspected and healed).

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;
use tonic::codegen::http;
use tower_layer::Layer;
use tower_service::Service;

use super::{FaultControl, Verdict};

const EXEMPT: [&str; 3] = [
    "/grpc.health.v1.",
    "/grpc.reflection.",
    "/checkout.fault.v1.FaultService/",
];

/// Wraps a server's services with its fault rules.
#[derive(Debug, Clone)]
pub struct FaultLayer {
    control: FaultControl,
}

impl FaultLayer {
    /// A layer applying these rules.
    pub fn new(control: FaultControl) -> Self {
        Self { control }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Faulty<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Faulty {
            inner,
            control: self.control.clone(),
        }
    }
}

/// A service with fault rules in front of it.
#[derive(Debug, Clone)]
pub struct Faulty<S> {
    inner: S,
    control: FaultControl,
}

fn abort(path: &str, when: &str) -> ! {
    eprintln!("fault injection: aborting {when} handling {path}");
    std::process::abort()
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for Faulty<S>
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

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let verdict = if EXEMPT.iter().any(|prefix| path.starts_with(prefix)) {
            Verdict::Pass
        } else {
            self.control.verdict(&path)
        };
        // The ready service handles this request; a fresh clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            match verdict {
                Verdict::Pass => inner.call(request).await,
                Verdict::Fail(code) => Ok(Status::new(code, "injected fault").into_http()),
                Verdict::Delay(wait) => {
                    tokio::time::sleep(wait).await;
                    inner.call(request).await
                }
                Verdict::Drop(code) => {
                    // A unary handler has finished (its effect committed) once its response
                    // exists; the caller never learns of it.
                    let _ = inner.call(request).await?;
                    Ok(Status::new(code, "injected fault: response lost").into_http())
                }
                Verdict::CrashBefore => abort(&path, "before"),
                Verdict::CrashAfter => {
                    let _ = inner.call(request).await;
                    abort(&path, "after")
                }
            }
        })
    }
}
