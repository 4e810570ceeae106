//! gRPC clients of the services the saga drives.

use checkout_kit::client::{self, ClientOptions, EndpointError, OutboundChannel};
use checkout_proto::cart::cart_service_client::CartServiceClient;
use checkout_proto::fulfillment::fulfillment_service_client::FulfillmentServiceClient;
use checkout_proto::inventory::inventory_service_client::InventoryServiceClient;
use checkout_proto::payment::payment_service_client::PaymentServiceClient;

/// Where the four services listen (`http://host:port`, or `https://` with TLS).
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

/// A service endpoint the orchestrator cannot dial.
#[derive(Debug, thiserror::Error)]
#[error("{service} endpoint")]
pub struct ServiceEndpointError {
    /// Which service's endpoint.
    pub service: &'static str,
    /// Why it cannot be dialled.
    #[source]
    pub source: EndpointError,
}

/// The four service clients, presenting the orchestrator's internal credential. Channels
/// connect lazily and reconnect on their own, so the orchestrator starts even while a service is
/// down (its commands then fail as transient).
#[derive(Debug, Clone)]
pub struct ServiceClients {
    /// CartService client.
    pub cart: CartServiceClient<OutboundChannel>,
    /// InventoryService client.
    pub inventory: InventoryServiceClient<OutboundChannel>,
    /// PaymentService client.
    pub payment: PaymentServiceClient<OutboundChannel>,
    /// FulfillmentService client.
    pub fulfillment: FulfillmentServiceClient<OutboundChannel>,
}

impl ServiceClients {
    /// Lazily connecting clients for the given endpoints.
    pub fn connect_lazy(
        endpoints: &ServiceEndpoints,
        options: &ClientOptions,
    ) -> Result<Self, ServiceEndpointError> {
        let channel = |service: &'static str, url: &str| {
            client::connect_lazy(url, options)
                .map_err(|source| ServiceEndpointError { service, source })
        };
        Ok(Self {
            cart: CartServiceClient::new(channel("cart", &endpoints.cart)?),
            inventory: InventoryServiceClient::new(channel("inventory", &endpoints.inventory)?),
            payment: PaymentServiceClient::new(channel("payment", &endpoints.payment)?),
            fulfillment: FulfillmentServiceClient::new(channel(
                "fulfillment",
                &endpoints.fulfillment,
            )?),
        })
    }
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
        let options = ClientOptions::default();
        let err = ServiceClients::connect_lazy(&endpoints("not a url"), &options).unwrap_err();
        assert_eq!(err.service, "cart");
        assert!(err.source.to_string().contains("not a url"));
        assert_eq!(err.to_string(), "cart endpoint");
        assert!(ServiceClients::connect_lazy(&endpoints("/just/a/path"), &options).is_err());
        assert!(
            ServiceClients::connect_lazy(&endpoints("http://127.0.0.1:50051"), &options).is_ok()
        );
    }
}
