//! Authentication, TLS and ownership over the network: who may call what, encrypted transport
//! between every hop, and ids that cannot be probed across customers.

use std::time::Duration;

use checkout::launch::Security;
use checkout::role::Role;
use checkout_kit::auth::{AuthPolicy, Bearer, Secret};
use checkout_kit::client::{ClientOptions, OutboundChannel};
use checkout_kit::tls::{ClientTls, ServerTls};
use checkout_proto::cart::cart_service_client::CartServiceClient;
use checkout_proto::cart::{
    AddItemRequest, CartState, CreateCartRequest, GetCartRequest, LockCartRequest,
    RemoveItemRequest, UpdateItemRequest,
};
use checkout_proto::checkout::checkout_service_client::CheckoutServiceClient;
use checkout_proto::checkout::{
    CancelCheckoutRequest, CheckoutStatus, GetCheckoutRequest, ListCheckoutsRequest,
    RetryCheckoutRequest, WatchCheckoutRequest,
};
use checkout_proto::fault::ListFaultRulesRequest;
use checkout_proto::fault::fault_service_client::FaultServiceClient;
use checkout_proto::fulfillment::GetShipmentsRequest;
use checkout_proto::fulfillment::fulfillment_service_client::FulfillmentServiceClient;
use checkout_proto::inventory::GetStockRequest;
use checkout_proto::inventory::inventory_service_client::InventoryServiceClient;
use checkout_proto::payment::payment_service_client::PaymentServiceClient;
use checkout_proto::payment::{GetPaymentRequest, get_payment_request};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::checkout::Clients;
use crate::helpers::{
    assert_unchanged, business_rows, channel, channel_with, spawn_system, spawn_system_with,
    storefront_channel, test_credentials, test_settings,
};

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn storefront(url: String) -> OutboundChannel {
    storefront_channel(&url).await
}

fn not_found<T>(result: Result<tonic::Response<T>, tonic::Status>, what: &str) {
    let status = result
        .err()
        .unwrap_or_else(|| panic!("{what}: answered a stranger"));
    assert_eq!(status.code(), Code::NotFound, "{what}: {status:?}");
}

fn no_key() -> ClientOptions {
    ClientOptions::default()
}

fn key(secret: &str) -> ClientOptions {
    ClientOptions::with_bearer(Bearer::new(&Secret::new(secret)).unwrap())
}

/// The code one call earned (`Ok` when it succeeded).
macro_rules! code_of {
    ($call:expr) => {
        $call.await.err().map_or(Code::Ok, |status| status.code())
    };
}

/// One representative call per service class, made on channels with the given credential.
async fn probe(
    endpoint: impl Fn(Role) -> String,
    options: ClientOptions,
) -> Vec<(&'static str, Code)> {
    let dial = |role: Role| {
        let (url, options) = (endpoint(role), options.clone());
        async move { channel_with(&url, options).await }
    };
    let cart = CartServiceClient::new(dial(Role::Cart).await);
    let checkout = CheckoutServiceClient::new(dial(Role::Orchestrator).await);
    let faults = FaultServiceClient::new(dial(Role::Orchestrator).await);
    let (mut c1, mut c2, mut k1, mut k2, mut f) =
        (cart.clone(), cart, checkout.clone(), checkout, faults);
    vec![
        (
            "cart.CreateCart",
            code_of!(c1.create_cart(CreateCartRequest {
                request_id: rid(),
                customer_id: "probe".to_owned(),
                currency_code: "USD".to_owned(),
            })),
        ),
        (
            "cart.LockCart",
            code_of!(c2.lock_cart(LockCartRequest {
                request_id: rid(),
                cart_id: rid(),
                checkout_id: rid(),
                customer_id: "probe".to_owned(),
            })),
        ),
        (
            "checkout.ListCheckouts",
            code_of!(k1.list_checkouts(ListCheckoutsRequest {
                customer_id: "probe".to_owned(),
                ..ListCheckoutsRequest::default()
            })),
        ),
        (
            "checkout.RetryCheckout",
            code_of!(k2.retry_checkout(RetryCheckoutRequest {
                request_id: rid(),
                checkout_id: rid(),
                reason: "probe".to_owned(),
            })),
        ),
        (
            "inventory.GetStock",
            code_of!(
                InventoryServiceClient::new(dial(Role::Inventory).await).get_stock(
                    GetStockRequest {
                        sku: "MUG-CERAMIC".to_owned(),
                    }
                )
            ),
        ),
        (
            "payment.GetPayment",
            code_of!(
                PaymentServiceClient::new(dial(Role::Payment).await).get_payment(
                    GetPaymentRequest {
                        target: Some(get_payment_request::Target::CheckoutId(rid())),
                    }
                )
            ),
        ),
        (
            "fulfillment.GetShipments",
            code_of!(
                FulfillmentServiceClient::new(dial(Role::Fulfillment).await)
                    .get_shipments(GetShipmentsRequest { checkout_id: rid() })
            ),
        ),
        (
            "fault.ListFaultRules",
            code_of!(f.list_fault_rules(ListFaultRulesRequest {})),
        ),
    ]
}

fn codes_of(results: &[(&'static str, Code)], expected: &[(&str, Code)]) {
    for (rpc, want) in expected {
        let got = results
            .iter()
            .find(|(name, _)| name == rpc)
            .map(|(_, c)| *c)
            .unwrap_or_else(|| panic!("{rpc} was not probed"));
        assert_eq!(got, *want, "{rpc}: {results:?}");
    }
}

#[tokio::test]
async fn every_rpc_needs_a_key_and_storefront_keys_stay_out_of_internal_services() {
    let sys = spawn_system().await;
    let before = sys.snapshot().await;
    let endpoint = |role| sys.endpoint(role);

    let all_unauthenticated: Vec<(&str, Code)> = [
        "cart.CreateCart",
        "cart.LockCart",
        "checkout.ListCheckouts",
        "checkout.RetryCheckout",
        "inventory.GetStock",
        "payment.GetPayment",
        "fulfillment.GetShipments",
        "fault.ListFaultRules",
    ]
    .into_iter()
    .map(|rpc| (rpc, Code::Unauthenticated))
    .collect();
    codes_of(&probe(endpoint, no_key()).await, &all_unauthenticated);
    codes_of(
        &probe(endpoint, key("not-a-key")).await,
        &all_unauthenticated,
    );
    // The internal key's hash is configured; the hash itself is not a key.
    let hash_as_key = test_credentials().internal.hash().to_hex();
    codes_of(
        &probe(endpoint, key(&hash_as_key)).await,
        &all_unauthenticated,
    );
    // Refused calls changed nothing, not even an idempotency record.
    assert_unchanged(&before, &sys.snapshot().await, "unauthenticated calls");

    let storefront = ClientOptions::with_bearer(test_credentials().storefront_bearer());
    codes_of(
        &probe(endpoint, storefront).await,
        &[
            ("cart.CreateCart", Code::Ok),
            ("checkout.ListCheckouts", Code::Ok),
            ("cart.LockCart", Code::PermissionDenied),
            ("checkout.RetryCheckout", Code::PermissionDenied),
            ("inventory.GetStock", Code::PermissionDenied),
            ("payment.GetPayment", Code::PermissionDenied),
            ("fulfillment.GetShipments", Code::PermissionDenied),
            ("fault.ListFaultRules", Code::PermissionDenied),
        ],
    );

    let internal = ClientOptions::with_bearer(test_credentials().internal_bearer());
    codes_of(
        &probe(endpoint, internal).await,
        &[
            ("cart.CreateCart", Code::Ok),
            ("inventory.GetStock", Code::Ok),
            // Past auth: fault injection is not allowed on these servers.
            ("fault.ListFaultRules", Code::FailedPrecondition),
            // Past auth: refused for what the request says, not for who sent it.
            ("cart.LockCart", Code::NotFound),
            ("checkout.RetryCheckout", Code::NotFound),
        ],
    );

    let refused = CartServiceClient::new(channel_with(&sys.endpoint(Role::Cart), no_key()).await)
        .create_cart(CreateCartRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        checkout_kit::status::reason_of(&refused).as_deref(),
        Some("CREDENTIAL_MISSING")
    );
    sys.system.stop().await.unwrap();
}

#[tokio::test]
async fn health_and_reflection_are_open_unless_configured_otherwise() {
    let sys = spawn_system().await;
    let mut health = HealthClient::new(channel_with(&sys.endpoint(Role::Payment), no_key()).await);
    health
        .check(HealthCheckRequest::default())
        .await
        .expect("health needs no key by default");
    sys.system.stop().await.unwrap();

    let mut settings = test_settings();
    let ring = test_credentials().keyring().with_open_health(false);
    settings.security.auth = AuthPolicy::Enforced(ring);
    let sys = spawn_system_with(settings).await;
    let mut health = HealthClient::new(channel_with(&sys.endpoint(Role::Payment), no_key()).await);
    let refused = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut health = HealthClient::new(storefront_channel(&sys.endpoint(Role::Payment)).await);
    health.check(HealthCheckRequest::default()).await.unwrap();
    sys.system.stop().await.unwrap();
}

#[tokio::test]
async fn a_storefront_key_checks_out_while_the_orchestrator_presents_the_internal_key() {
    let sys = spawn_system().await;
    let mut c = Clients::connect_with(|role| sys.endpoint(role), storefront).await;
    let cart = c.cart("erin", "USD", &[("MUG-CERAMIC", 1)]).await;
    let done = c
        .start(&cart, "erin", "tok_visa", "US", Duration::from_secs(20))
        .await;
    assert_eq!(done.status(), CheckoutStatus::Completed, "{done:?}");
    sys.system.stop().await.unwrap();
}

#[tokio::test]
async fn the_orchestrator_without_the_internal_key_cannot_drive_the_services() {
    let mut settings = test_settings();
    // The servers accept the usual keys; the orchestrator presents a storefront key instead.
    settings.security.internal_key = Some(test_credentials().storefront);
    let sys = spawn_system_with(settings).await;
    let mut c = Clients::of(&sys).await;
    let cart = c.cart("frank", "USD", &[("MUG-CERAMIC", 1)]).await;
    let checkout = c
        .start(&cart, "frank", "tok_visa", "US", Duration::from_secs(20))
        .await;
    assert_ne!(checkout.status(), CheckoutStatus::Completed, "{checkout:?}");
    let cart = c
        .cart
        .get_cart(GetCartRequest {
            cart_id: cart,
            customer_id: "frank".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .cart
        .unwrap();
    assert_eq!(cart.state(), CartState::Active, "the lock was refused");
    sys.system.stop().await.unwrap();
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 it signed, as PEM.
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    (ca_cert.pem(), server_cert.pem(), server_key.serialize_pem())
}

#[tokio::test]
async fn every_hop_speaks_tls_with_a_certificate_made_in_the_test() {
    let (ca, cert, key_pem) = certificates();
    let trust = ClientTls::from_pem(ca);
    let settings = checkout::launch::Settings {
        security: Security {
            server_tls: Some(ServerTls::from_pem(cert, key_pem)),
            client_tls: Some(trust.clone()),
            ..test_settings().security
        },
        ..test_settings()
    };
    let sys = spawn_system_with(settings).await;
    let cart_endpoint = sys.endpoint(Role::Cart);
    assert!(cart_endpoint.starts_with("https://"), "{cart_endpoint}");

    let options = ClientOptions {
        tls: Some(trust.clone()),
        ..ClientOptions::with_bearer(test_credentials().storefront_bearer())
    };
    let dial = |url: String| {
        let options = options.clone();
        async move { channel_with(&url, options).await }
    };
    let mut c = Clients::connect_with(|role| sys.endpoint(role), dial).await;
    let cart = c.cart("grace", "USD", &[("MUG-CERAMIC", 2)]).await;
    // The orchestrator reaches all four services over TLS, or this would not complete.
    let done = c
        .start(&cart, "grace", "tok_visa", "US", Duration::from_secs(20))
        .await;
    assert_eq!(done.status(), CheckoutStatus::Completed, "{done:?}");

    // A plaintext client gets nowhere; nor does one that trusts a different CA.
    let plaintext = cart_endpoint.replace("https://", "http://");
    let refused = checkout_kit::client::connect(
        &plaintext,
        &ClientOptions::with_bearer(test_credentials().storefront_bearer()),
    )
    .await;
    let plaintext_failed = match refused {
        Err(_) => true,
        Ok(channel) => CartServiceClient::new(channel)
            .get_cart(GetCartRequest::default())
            .await
            .is_err_and(|s| {
                s.code() == Code::Unavailable
                    || s.code() == Code::Unknown
                    || s.code() == Code::Internal
            }),
    };
    assert!(plaintext_failed, "plaintext must not reach a TLS server");
    let (other_ca, _, _) = certificates();
    let stranger = checkout_kit::client::connect(
        &cart_endpoint,
        &ClientOptions {
            tls: Some(ClientTls::from_pem(other_ca)),
            ..ClientOptions::with_bearer(test_credentials().storefront_bearer())
        },
    )
    .await;
    assert!(
        stranger.is_err(),
        "a certificate from an untrusted CA is refused"
    );
    sys.system.stop().await.unwrap();
}

#[tokio::test]
async fn carts_and_checkouts_answer_only_their_customer() {
    let sys = spawn_system().await;
    let mut c = Clients::connect_with(|role| sys.endpoint(role), storefront).await;
    let cart = c
        .cart("heidi", "USD", &[("MUG-CERAMIC", 1), ("TSHIRT-BLK-M", 1)])
        .await;
    let before = sys.snapshot().await;

    let mallory = || "mallory".to_owned();
    not_found(
        c.cart
            .get_cart(GetCartRequest {
                cart_id: cart.clone(),
                customer_id: mallory(),
            })
            .await,
        "GetCart",
    );
    not_found(
        c.cart
            .add_item(AddItemRequest {
                request_id: rid(),
                cart_id: cart.clone(),
                customer_id: mallory(),
                sku: "MUG-CERAMIC".to_owned(),
                quantity: 1,
            })
            .await,
        "AddItem",
    );
    not_found(
        c.cart
            .update_item(UpdateItemRequest {
                request_id: rid(),
                cart_id: cart.clone(),
                customer_id: mallory(),
                sku: "MUG-CERAMIC".to_owned(),
                quantity: 5,
            })
            .await,
        "UpdateItem",
    );
    not_found(
        c.cart
            .remove_item(RemoveItemRequest {
                request_id: rid(),
                cart_id: cart.clone(),
                customer_id: mallory(),
                sku: "MUG-CERAMIC".to_owned(),
            })
            .await,
        "RemoveItem",
    );
    // Refusals are remembered under their request ids; the cart itself is untouched.
    assert_unchanged(
        &business_rows(&before),
        &business_rows(&sys.snapshot().await),
        "a stranger's cart edits",
    );

    // A stranger's checkout of the cart fails at the lock; the cart stays heidi's and active.
    let theirs = c
        .start(&cart, "mallory", "tok_visa", "US", Duration::from_secs(20))
        .await;
    assert_ne!(theirs.status(), CheckoutStatus::Completed, "{theirs:?}");
    let cart_now = c
        .cart
        .get_cart(GetCartRequest {
            cart_id: cart.clone(),
            customer_id: "heidi".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .cart
        .unwrap();
    assert_eq!(cart_now.state(), CartState::Active);

    let mine = c
        .start(&cart, "heidi", "tok_visa", "US", Duration::from_secs(20))
        .await;
    assert_eq!(mine.status(), CheckoutStatus::Completed, "{mine:?}");
    not_found(
        c.checkout
            .get_checkout(GetCheckoutRequest {
                checkout_id: mine.checkout_id.clone(),
                customer_id: mallory(),
            })
            .await,
        "GetCheckout",
    );
    not_found(
        c.checkout
            .cancel_checkout(CancelCheckoutRequest {
                request_id: rid(),
                checkout_id: mine.checkout_id.clone(),
                customer_id: mallory(),
                reason: "mine now".to_owned(),
            })
            .await,
        "CancelCheckout",
    );
    let watched = c
        .checkout
        .watch_checkout(WatchCheckoutRequest {
            checkout_id: mine.checkout_id.clone(),
            customer_id: mallory(),
        })
        .await;
    match watched {
        Err(status) => assert_eq!(status.code(), Code::NotFound),
        Ok(stream) => {
            let first = tokio_stream::StreamExt::next(&mut stream.into_inner()).await;
            let status = first
                .expect("an answer")
                .expect_err("no events for a stranger");
            assert_eq!(status.code(), Code::NotFound);
        }
    }

    // A storefront lists one customer at a time; only the internal credential lists everyone.
    let everyone = c
        .checkout
        .list_checkouts(ListCheckoutsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(everyone.code(), Code::InvalidArgument);
    assert_eq!(checkout_kit::status::fields_of(&everyone), ["customer_id"]);
    let mallorys = c
        .checkout
        .list_checkouts(ListCheckoutsRequest {
            customer_id: mallory(),
            page_size: 50,
            ..ListCheckoutsRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .checkouts;
    assert!(
        mallorys.iter().all(|c| c.customer_id == "mallory"),
        "{mallorys:?}"
    );
    let operator = CheckoutServiceClient::new(channel(&sys.endpoint(Role::Orchestrator)).await)
        .list_checkouts(ListCheckoutsRequest {
            page_size: 50,
            ..ListCheckoutsRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .checkouts;
    assert!(operator.len() >= 2, "{operator:?}");
    sys.system.stop().await.unwrap();
}
