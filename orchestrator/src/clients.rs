//! gRPC clients of the services the saga drives.

use checkout_kit::telemetry::PropagateTrace;
use checkout_proto::cart::cart_service_client::CartServiceClient;
use checkout_proto::fulfillment::fulfillment_service_client::FulfillmentServiceClient;
use checkout_proto::inventory::inventory_service_client::InventoryServiceClient;
use checkout_proto::payment::payment_service_client::PaymentServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A channel whose calls carry the caller's trace context.
pub type TracedChannel = InterceptedService<Channel, PropagateTrace>;

/// Where the four services listen (`http://host:port`).
#[derive(Debug, Clone)]
pub struct ServiceEndpoints {
    /// CartService endpoint.
    pub cart: String,
    /// InventoryService endpoint.
    pub inventory: String,
    /// PaymentService endpoint.
    pub payment: String,
    /// FulfillmentService endpoint.
    pub fulfillment: String,
}

/// An endpoint that is not an `http://host:port` URI.
#[derive(Debug, thiserror::Error)]
#[error("invalid {service} endpoint `{url}`: expected http://host:port")]
pub struct EndpointError {
    /// Which service's endpoint.
    pub service: &'static str,
    /// The endpoint as given.
    pub url: String,
}

/// The four service clients. Channels connect lazily and reconnect on their own, so the
/// orchestrator starts even while a service is down (its commands then fail as transient).
#[derive(Debug, Clone)]
pub struct ServiceClients {
    /// CartService client.
    pub cart: CartServiceClient<TracedChannel>,
    /// InventoryService client.
    pub inventory: InventoryServiceClient<TracedChannel>,
    /// PaymentService client.
    pub payment: PaymentServiceClient<TracedChannel>,
    /// FulfillmentService client.
    pub fulfillment: FulfillmentServiceClient<TracedChannel>,
}

impl ServiceClients {
    /// Lazily connecting clients for the given endpoints.
    pub fn connect_lazy(endpoints: &ServiceEndpoints) -> Result<Self, EndpointError> {
        Ok(Self {
            cart: CartServiceClient::with_interceptor(
                channel("cart", &endpoints.cart)?,
                PropagateTrace,
            ),
            inventory: InventoryServiceClient::with_interceptor(
                channel("inventory", &endpoints.inventory)?,
                PropagateTrace,
            ),
            payment: PaymentServiceClient::with_interceptor(
                channel("payment", &endpoints.payment)?,
                PropagateTrace,
            ),
            fulfillment: FulfillmentServiceClient::with_interceptor(
                channel("fulfillment", &endpoints.fulfillment)?,
                PropagateTrace,
            ),
        })
    }
}

fn channel(service: &'static str, url: &str) -> Result<Channel, EndpointError> {
    let error = || EndpointError {
        service,
        url: url.to_owned(),
    };
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|_| error())?;
    // `Endpoint::from_shared` accepts a bare path; a channel to it could never connect.
    if endpoint.uri().scheme().is_none() || endpoint.uri().host().is_none() {
        return Err(error());
    }
    Ok(endpoint
        .tcp_nodelay(true)
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(cart: &str) -> ServiceEndpoints {
        ServiceEndpoints {
            cart: cart.to_owned(),
            inventory: "http://127.0.0.1:50052".to_owned(),
            payment: "http://127.0.0.1:50053".to_owned(),
            fulfillment: "http://127.0.0.1:50054".to_owned(),
        }
    }

    #[tokio::test]
    async fn bad_endpoints_are_refused_by_name() {
        let err = ServiceClients::connect_lazy(&endpoints("not a url")).unwrap_err();
        assert_eq!(err.service, "cart");
        assert!(err.to_string().contains("not a url"));
        assert!(ServiceClients::connect_lazy(&endpoints("/just/a/path")).is_err());
        assert!(ServiceClients::connect_lazy(&endpoints("http://127.0.0.1:50051")).is_ok());
    }
}
