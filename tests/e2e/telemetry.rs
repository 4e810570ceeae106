//! Telemetry end to end: `up` exports to an in-process OTLP receiver; one checkout is one trace
//! across all five servers with intact parent links; the metrics arrive; and payment tokens and
//! addresses appear in no log line and no span.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use checkout_proto::checkout::checkout_service_client::CheckoutServiceClient;
use checkout_proto::checkout::{CheckoutStatus, StartCheckoutRequest};
use checkout_proto::common::Address;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::{Request, Response, Status};

use crate::checkout::Clients;
use crate::helpers::channel;

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    metrics: Arc<Mutex<HashSet<String>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut names = self.metrics.lock().unwrap();
        for resource in request.into_inner().resource_metrics {
            for scope in resource.scope_metrics {
                names.extend(scope.metrics.into_iter().map(|m| m.name));
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            other => Some(format!("{other:?}")),
        }
    })
}

const SECRET_NAME: &str = "Ada Secretname";
const SECRET_STREET: &str = "42 Hidden Lane";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_checkout_is_one_trace_across_five_servers_and_nothing_private_leaks() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let server = receiver.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(server.clone()))
            .add_service(MetricsServiceServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    let mut command = Command::new(env!("CARGO_BIN_EXE_checkout"));
    for (key, _) in std::env::vars() {
        if key.starts_with("CHECKOUT_") || key.starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
    let mut child = crate::helpers::with_test_keys(&mut command)
        .arg("up")
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--orchestrator-listen",
            "127.0.0.1:0",
            "--cart-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--inventory-listen",
            "127.0.0.1:0",
            "--payment-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--fulfillment-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let endpoints: HashMap<String, String> = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take_while(|line| !line.starts_with("try:"))
            .filter_map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                let endpoint = words.iter().find(|w| w.starts_with("http://"))?;
                Some((words.first()?.to_string(), endpoint.to_string()))
            })
            .collect()
    })
    .await
    .unwrap();
    let role = |name: &str| endpoints[name].clone();
    let mut c = Clients::connect(|r| role(r.name())).await;

    let cart = c.cart("tracy", "USD", &[("MUG-CERAMIC", 1)]).await;
    let request = StartCheckoutRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        cart_id: cart,
        customer_id: "tracy".to_owned(),
        payment_token: "tok_visa".to_owned(),
        shipping_address: Some(Address {
            recipient_name: SECRET_NAME.to_owned(),
            line1: SECRET_STREET.to_owned(),
            city: "Springfield".to_owned(),
            postal_code: "12345".to_owned(),
            country_code: "US".to_owned(),
            ..Address::default()
        }),
        wait_for_outcome: Some(prost_types::Duration {
            seconds: 20,
            nanos: 0,
        }),
    };
    let mut checkout = CheckoutServiceClient::new(channel(&role("orchestrator")).await);
    let done = checkout
        .start_checkout(request.clone())
        .await
        .unwrap()
        .into_inner()
        .checkout
        .unwrap();
    assert_eq!(done.status(), CheckoutStatus::Completed);
    // A replay, and a compensated checkout, so every instrument records something.
    checkout.start_checkout(request).await.unwrap();
    let declined = c.cart("tracy", "USD", &[("CAP-NVY", 1)]).await;
    c.start(
        &declined,
        "tracy",
        "tok_chargeDeclined",
        "US",
        Duration::from_secs(20),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;

    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;

    let spans = receiver.spans.lock().unwrap().clone();
    let root = spans
        .iter()
        .find(|s| attribute(s, "rpc.method").as_deref() == Some("StartCheckout"))
        .expect("the StartCheckout server span was exported");
    let trace: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .collect();
    let services: HashSet<String> = trace
        .iter()
        .filter_map(|s| attribute(s, "rpc.service"))
        .collect();
    for service in [
        "checkout.checkout.v1.CheckoutService",
        "checkout.cart.v1.CartService",
        "checkout.inventory.v1.InventoryService",
        "checkout.payment.v1.PaymentService",
        "checkout.fulfillment.v1.FulfillmentService",
    ] {
        assert!(
            services.contains(service),
            "{service} missing from the trace: {services:?}"
        );
    }
    let ids: HashSet<&Vec<u8>> = trace.iter().map(|s| &s.span_id).collect();
    let orphans: Vec<&str> = trace
        .iter()
        .filter(|s| !s.parent_span_id.is_empty() && !ids.contains(&s.parent_span_id))
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        orphans.is_empty(),
        "spans whose parent is not in the trace: {orphans:?}"
    );
    assert!(
        trace.iter().any(|s| s.name == "capture_payment"),
        "step spans are in the trace"
    );

    let metrics = receiver.metrics.lock().unwrap().clone();
    for name in [
        "checkout.started",
        "checkout.finished",
        "checkout.saga.duration",
        "checkout.step.duration",
        "checkout.step.retries",
        "checkout.compensations",
        "checkout.parked",
        "inventory.reserve.attempts",
        "inventory.reserve.conflicts",
        "idempotency.replays",
        "payment.processor.calls",
    ] {
        assert!(
            metrics.contains(name),
            "metric {name} did not arrive: {metrics:?}"
        );
    }

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.lines().count() > 10, "debug logs were written");
    let keys = crate::helpers::test_credentials();
    for secret in [
        "tok_visa",
        "tok_chargeDeclined",
        SECRET_NAME,
        SECRET_STREET,
        // The clients' and the orchestrator's API keys.
        keys.storefront.expose(),
        keys.internal.expose(),
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
        for span in &spans {
            for a in &span.attributes {
                let value = format!("{:?}", a.value);
                assert!(
                    !value.contains(secret),
                    "{secret} leaked into span {}",
                    span.name
                );
            }
        }
    }
}
