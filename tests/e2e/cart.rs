//! The cart service over the network, as the orchestrator and storefronts use it.

use checkout::role::Role;
use checkout_proto::cart::cart_service_client::CartServiceClient;
use checkout_proto::cart::{
    AddItemRequest, CartState, CreateCartRequest, ListProductsRequest, LockCartRequest,
};

use crate::helpers::{channel, spawn_system};

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn a_cart_is_built_and_locked_over_grpc_with_catalog_prices() {
    let sys = spawn_system().await;
    let mut cart_service = CartServiceClient::new(channel(&sys.endpoint(Role::Cart)).await);

    let products = cart_service
        .list_products(ListProductsRequest {
            page_size: 100,
            page_token: String::new(),
            currency_code: "USD".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .products;
    assert!(
        products.len() >= 10,
        "the shipped catalog is seeded at start"
    );

    let cart = cart_service
        .create_cart(CreateCartRequest {
            request_id: rid(),
            customer_id: "alice".to_owned(),
            currency_code: "USD".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .cart
        .unwrap();
    let add = AddItemRequest {
        request_id: rid(),
        cart_id: cart.cart_id.clone(),
        customer_id: "alice".to_owned(),
        sku: products[0].sku.clone(),
        quantity: 3,
    };
    let first = cart_service
        .add_item(add.clone())
        .await
        .unwrap()
        .into_inner();
    // A retried request (same request_id) is answered from the first, with no second effect.
    let retried = cart_service.add_item(add).await.unwrap().into_inner();
    assert_eq!(first, retried);
    let cart = first.cart.unwrap();
    assert_eq!(cart.lines[0].quantity, 3);
    assert_eq!(
        cart.subtotal.unwrap().amount_minor,
        3 * products[0].unit_price.as_ref().unwrap().amount_minor
    );

    let snapshot = cart_service
        .lock_cart(LockCartRequest {
            request_id: rid(),
            cart_id: cart.cart_id.clone(),
            checkout_id: rid(),
            customer_id: "alice".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(snapshot.lines.len(), 1);
    let locked = cart_service
        .get_cart(checkout_proto::cart::GetCartRequest {
            cart_id: cart.cart_id,
            customer_id: "alice".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .cart
        .unwrap();
    assert_eq!(locked.state(), CartState::CheckingOut);
    sys.system.stop().await.unwrap();
}
