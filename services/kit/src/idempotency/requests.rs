//! Every mutating request of the contracts, as an [`IdempotentRequest`]. A new mutating RPC
//! is added here; its handler cannot use the layer until it is.

use checkout_proto::{cart, checkout, fault, fulfillment, inventory, payment};

use super::IdempotentRequest;

macro_rules! idempotent_requests {
    ($($request:ty),* $(,)?) => {
        $(
            impl IdempotentRequest for $request {
                fn request_id(&self) -> &str {
                    &self.request_id
                }

                fn without_request_id(&self) -> Self {
                    let mut canonical = self.clone();
                    canonical.request_id.clear();
                    canonical
                }
            }
        )*
    };
}

idempotent_requests!(
    cart::CreateCartRequest,
    cart::AddItemRequest,
    cart::UpdateItemRequest,
    cart::RemoveItemRequest,
    cart::LockCartRequest,
    cart::UnlockCartRequest,
    cart::CompleteCartRequest,
    inventory::SetStockRequest,
    inventory::AdjustStockRequest,
    inventory::ReserveStockRequest,
    inventory::CommitReservationRequest,
    inventory::ReleaseReservationRequest,
    payment::AuthorizePaymentRequest,
    payment::CapturePaymentRequest,
    payment::VoidPaymentRequest,
    payment::RefundPaymentRequest,
    fulfillment::CreateShipmentsRequest,
    fulfillment::CancelShipmentsRequest,
    fulfillment::AdvanceShipmentRequest,
    checkout::StartCheckoutRequest,
    checkout::CancelCheckoutRequest,
    checkout::RetryCheckoutRequest,
    fault::SetFaultRulesRequest,
    fault::AddFaultRuleRequest,
    fault::ClearFaultRulesRequest,
);
