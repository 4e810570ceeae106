//! Hostile input to every RPC of every service: malformed, oversized, boundary and wrong-type
//! requests aimed at real stored resources. Each is refused with INVALID_ARGUMENT naming the
//! field (or OUT_OF_RANGE, tonic's answer, for a body over the size limit), and afterwards not one stored
//! row of any of the five databases has changed — not even an idempotency record.

use std::time::Duration;

use checkout::role::Role;
use checkout_proto::cart::*;
use checkout_proto::checkout::*;
use checkout_proto::common::{Address, Allocation, Money};
use checkout_proto::fault::*;
use checkout_proto::fulfillment::*;
use checkout_proto::inventory::*;
use checkout_proto::payment::*;
use prost::Message;
use tonic::Code;

use crate::checkout::{Clients, address};
use crate::helpers::{assert_unchanged, call_raw, channel, spawn_system_with, test_settings};

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn huge() -> String {
    "x".repeat(10_000)
}

/// One hostile request: where it goes, its body, and the field the refusal must name.
struct Case {
    label: String,
    role: Role,
    path: &'static str,
    body: Vec<u8>,
    expect: Code,
    field: Option<&'static str>,
}

fn case<M: Message>(
    role: Role,
    path: &'static str,
    label: &str,
    request: M,
    field: &'static str,
) -> Case {
    Case {
        label: format!("{path} {label}"),
        role,
        path,
        body: request.encode_to_vec(),
        expect: Code::InvalidArgument,
        field: Some(field),
    }
}

fn raw(role: Role, path: &'static str, label: &str, body: Vec<u8>, expect: Code) -> Case {
    Case {
        label: format!("{path} {label}"),
        role,
        path,
        body,
        expect,
        field: None,
    }
}

/// Ids of real resources, so a refusal that slipped through would change something.
struct Real {
    cart: String,
    open_cart: String,
    checkout: String,
    reservation: String,
    payment: String,
    shipment: String,
}

fn money(amount_minor: i64, currency: &str) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency_code: currency.to_owned(),
    })
}

fn cart_cases(r: &Real) -> Vec<Case> {
    const LIST: &str = "/checkout.cart.v1.CartService/ListProducts";
    const CREATE: &str = "/checkout.cart.v1.CartService/CreateCart";
    const GET: &str = "/checkout.cart.v1.CartService/GetCart";
    const ADD: &str = "/checkout.cart.v1.CartService/AddItem";
    const UPDATE: &str = "/checkout.cart.v1.CartService/UpdateItem";
    const REMOVE: &str = "/checkout.cart.v1.CartService/RemoveItem";
    const LOCK: &str = "/checkout.cart.v1.CartService/LockCart";
    const UNLOCK: &str = "/checkout.cart.v1.CartService/UnlockCart";
    const COMPLETE: &str = "/checkout.cart.v1.CartService/CompleteCart";
    let c = Role::Cart;
    let add = |sku: &str, quantity: i64| AddItemRequest {
        request_id: rid(),
        cart_id: r.open_cart.clone(),
        customer_id: "alice".to_owned(),
        sku: sku.to_owned(),
        quantity,
    };
    vec![
        case(
            c,
            LIST,
            "negative page",
            ListProductsRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        case(
            c,
            LIST,
            "forged token",
            ListProductsRequest {
                page_token: "zz".to_owned(),
                ..Default::default()
            },
            "page_token",
        ),
        case(
            c,
            LIST,
            "lower-case currency",
            ListProductsRequest {
                currency_code: "usd".to_owned(),
                ..Default::default()
            },
            "currency_code",
        ),
        case(
            c,
            CREATE,
            "empty",
            CreateCartRequest::default(),
            "request_id",
        ),
        case(
            c,
            CREATE,
            "four-letter currency",
            CreateCartRequest {
                request_id: rid(),
                customer_id: "alice".to_owned(),
                currency_code: "USDX".to_owned(),
            },
            "currency_code",
        ),
        case(
            c,
            CREATE,
            "huge customer",
            CreateCartRequest {
                request_id: rid(),
                customer_id: huge(),
                currency_code: "USD".to_owned(),
            },
            "customer_id",
        ),
        case(
            c,
            CREATE,
            "customer with control characters",
            CreateCartRequest {
                request_id: rid(),
                customer_id: "al\u{0}ice".to_owned(),
                currency_code: "USD".to_owned(),
            },
            "customer_id",
        ),
        case(
            c,
            GET,
            "cart id not a UUID",
            GetCartRequest {
                cart_id: "1 OR 1=1".to_owned(),
                customer_id: "alice".to_owned(),
            },
            "cart_id",
        ),
        case(
            c,
            ADD,
            "request id not a UUID",
            AddItemRequest {
                request_id: "again".to_owned(),
                ..add("MUG-CERAMIC", 1)
            },
            "request_id",
        ),
        case(c, ADD, "zero quantity", add("MUG-CERAMIC", 0), "quantity"),
        case(
            c,
            ADD,
            "negative quantity",
            add("MUG-CERAMIC", -5),
            "quantity",
        ),
        case(c, ADD, "huge sku", add(&huge(), 1), "sku"),
        case(c, ADD, "lower-case sku", add("mug-ceramic", 1), "sku"),
        case(
            c,
            UPDATE,
            "negative quantity",
            UpdateItemRequest {
                request_id: rid(),
                cart_id: r.open_cart.clone(),
                customer_id: "alice".to_owned(),
                sku: "MUG-CERAMIC".to_owned(),
                quantity: -1,
            },
            "quantity",
        ),
        case(
            c,
            REMOVE,
            "empty sku",
            RemoveItemRequest {
                request_id: rid(),
                cart_id: r.open_cart.clone(),
                customer_id: "alice".to_owned(),
                sku: String::new(),
            },
            "sku",
        ),
        case(
            c,
            LOCK,
            "checkout id not a UUID",
            LockCartRequest {
                request_id: rid(),
                cart_id: r.open_cart.clone(),
                checkout_id: huge(),
                customer_id: "alice".to_owned(),
            },
            "checkout_id",
        ),
        case(
            c,
            UNLOCK,
            "cart id not a UUID",
            UnlockCartRequest {
                request_id: rid(),
                cart_id: "cart-1".to_owned(),
                checkout_id: r.checkout.clone(),
            },
            "cart_id",
        ),
        case(
            c,
            COMPLETE,
            "request id missing",
            CompleteCartRequest {
                request_id: String::new(),
                cart_id: r.cart.clone(),
                checkout_id: r.checkout.clone(),
            },
            "request_id",
        ),
    ]
}

fn inventory_cases(r: &Real) -> Vec<Case> {
    const WAREHOUSES: &str = "/checkout.inventory.v1.InventoryService/ListWarehouses";
    const GET: &str = "/checkout.inventory.v1.InventoryService/GetStock";
    const SET: &str = "/checkout.inventory.v1.InventoryService/SetStock";
    const ADJUST: &str = "/checkout.inventory.v1.InventoryService/AdjustStock";
    const RESERVE: &str = "/checkout.inventory.v1.InventoryService/ReserveStock";
    const COMMIT: &str = "/checkout.inventory.v1.InventoryService/CommitReservation";
    const RELEASE: &str = "/checkout.inventory.v1.InventoryService/ReleaseReservation";
    const GET_RES: &str = "/checkout.inventory.v1.InventoryService/GetReservation";
    let i = Role::Inventory;
    let line = |sku: &str, quantity: i64| ReservationLine {
        sku: sku.to_owned(),
        quantity,
    };
    let reserve = |lines: Vec<ReservationLine>| ReserveStockRequest {
        request_id: rid(),
        checkout_id: rid(),
        lines,
        ttl: None,
    };
    vec![
        raw(
            i,
            WAREHOUSES,
            "garbage body",
            vec![0xff; 64],
            Code::InvalidArgument,
        ),
        case(
            i,
            GET,
            "bad sku",
            GetStockRequest {
                sku: "no spaces allowed".to_owned(),
            },
            "sku",
        ),
        case(
            i,
            SET,
            "negative on hand",
            SetStockRequest {
                request_id: rid(),
                sku: "MUG-CERAMIC".to_owned(),
                warehouse_id: "wh-east".to_owned(),
                on_hand: -1,
            },
            "on_hand",
        ),
        case(
            i,
            SET,
            "huge warehouse",
            SetStockRequest {
                request_id: rid(),
                sku: "MUG-CERAMIC".to_owned(),
                warehouse_id: huge(),
                on_hand: 1,
            },
            "warehouse_id",
        ),
        case(
            i,
            ADJUST,
            "zero delta",
            AdjustStockRequest {
                request_id: rid(),
                sku: "MUG-CERAMIC".to_owned(),
                warehouse_id: "wh-east".to_owned(),
                delta: 0,
            },
            "delta",
        ),
        case(i, RESERVE, "no lines", reserve(vec![]), "lines"),
        case(
            i,
            RESERVE,
            "negative quantity",
            reserve(vec![line("MUG-CERAMIC", -3)]),
            "lines[0].quantity",
        ),
        case(
            i,
            RESERVE,
            "bad sku in a line",
            reserve(vec![line("MUG-CERAMIC", 1), line("??", 1)]),
            "lines[1].sku",
        ),
        case(
            i,
            RESERVE,
            "checkout id not a UUID",
            ReserveStockRequest {
                checkout_id: "x".to_owned(),
                ..reserve(vec![line("MUG-CERAMIC", 1)])
            },
            "checkout_id",
        ),
        case(
            i,
            COMMIT,
            "no target",
            CommitReservationRequest {
                request_id: rid(),
                target: None,
            },
            "target",
        ),
        case(
            i,
            COMMIT,
            "reservation id not a UUID",
            CommitReservationRequest {
                request_id: rid(),
                target: Some(commit_reservation_request::Target::ReservationId(huge())),
            },
            "reservation_id",
        ),
        case(
            i,
            RELEASE,
            "huge reason",
            ReleaseReservationRequest {
                request_id: rid(),
                target: Some(release_reservation_request::Target::ReservationId(
                    r.reservation.clone(),
                )),
                reason: huge(),
            },
            "reason",
        ),
        case(
            i,
            GET_RES,
            "checkout id not a UUID",
            GetReservationRequest {
                target: Some(get_reservation_request::Target::CheckoutId(
                    "nope".to_owned(),
                )),
            },
            "checkout_id",
        ),
    ]
}

fn payment_cases(r: &Real) -> Vec<Case> {
    const AUTHORIZE: &str = "/checkout.payment.v1.PaymentService/AuthorizePayment";
    const CAPTURE: &str = "/checkout.payment.v1.PaymentService/CapturePayment";
    const VOID: &str = "/checkout.payment.v1.PaymentService/VoidPayment";
    const REFUND: &str = "/checkout.payment.v1.PaymentService/RefundPayment";
    const GET: &str = "/checkout.payment.v1.PaymentService/GetPayment";
    const LEDGER: &str = "/checkout.payment.v1.PaymentService/ListLedgerEntries";
    const RECONCILE: &str = "/checkout.payment.v1.PaymentService/Reconcile";
    let p = Role::Payment;
    let authorize = |amount: Option<Money>, token: String| AuthorizePaymentRequest {
        request_id: rid(),
        checkout_id: rid(),
        amount,
        payment_token: token,
        customer_id: "alice".to_owned(),
    };
    let by_payment = || Some(refund_payment_request::Target::PaymentId(r.payment.clone()));
    vec![
        case(
            p,
            AUTHORIZE,
            "negative amount",
            authorize(money(-100, "USD"), "tok_visa".to_owned()),
            "amount.amount_minor",
        ),
        case(
            p,
            AUTHORIZE,
            "zero amount",
            authorize(money(0, "USD"), "tok_visa".to_owned()),
            "amount.amount_minor",
        ),
        case(
            p,
            AUTHORIZE,
            "no amount",
            authorize(None, "tok_visa".to_owned()),
            "amount",
        ),
        case(
            p,
            AUTHORIZE,
            "huge token",
            authorize(money(100, "USD"), huge()),
            "payment_token",
        ),
        case(
            p,
            AUTHORIZE,
            "empty token",
            authorize(money(100, "USD"), String::new()),
            "payment_token",
        ),
        case(
            p,
            CAPTURE,
            "capture more than a negative",
            CapturePaymentRequest {
                request_id: rid(),
                target: Some(capture_payment_request::Target::PaymentId(
                    r.payment.clone(),
                )),
                amount: money(-1, "USD"),
            },
            "amount.amount_minor",
        ),
        case(
            p,
            VOID,
            "no target",
            VoidPaymentRequest {
                request_id: rid(),
                target: None,
            },
            "target",
        ),
        case(
            p,
            REFUND,
            "negative refund of a real payment",
            RefundPaymentRequest {
                request_id: rid(),
                target: by_payment(),
                amount: money(-500, "USD"),
                reason: String::new(),
            },
            "amount.amount_minor",
        ),
        case(
            p,
            REFUND,
            "huge reason",
            RefundPaymentRequest {
                request_id: rid(),
                target: by_payment(),
                amount: money(1, "USD"),
                reason: huge(),
            },
            "reason",
        ),
        case(
            p,
            REFUND,
            "request id not a UUID",
            RefundPaymentRequest {
                request_id: "refund-please".to_owned(),
                target: by_payment(),
                amount: money(1, "USD"),
                reason: String::new(),
            },
            "request_id",
        ),
        case(
            p,
            GET,
            "payment id not a UUID",
            GetPaymentRequest {
                target: Some(get_payment_request::Target::PaymentId(
                    "'; DROP TABLE payments; --".to_owned(),
                )),
            },
            "payment_id",
        ),
        case(
            p,
            LEDGER,
            "negative page",
            ListLedgerEntriesRequest {
                target: Some(list_ledger_entries_request::Target::PaymentId(
                    r.payment.clone(),
                )),
                page_size: -7,
                page_token: String::new(),
            },
            "page_size",
        ),
        case(
            p,
            LEDGER,
            "forged token",
            ListLedgerEntriesRequest {
                target: Some(list_ledger_entries_request::Target::PaymentId(
                    r.payment.clone(),
                )),
                page_size: 10,
                page_token: "é".repeat(10),
            },
            "page_token",
        ),
        raw(
            p,
            RECONCILE,
            "garbage body",
            vec![0x0a, 0xff, 0xff, 0xff],
            Code::InvalidArgument,
        ),
    ]
}

fn fulfillment_cases(r: &Real) -> Vec<Case> {
    const CREATE: &str = "/checkout.fulfillment.v1.FulfillmentService/CreateShipments";
    const CANCEL: &str = "/checkout.fulfillment.v1.FulfillmentService/CancelShipments";
    const GET: &str = "/checkout.fulfillment.v1.FulfillmentService/GetShipments";
    const ADVANCE: &str = "/checkout.fulfillment.v1.FulfillmentService/AdvanceShipment";
    let f = Role::Fulfillment;
    let allocation = |quantity: i64| Allocation {
        sku: "MUG-CERAMIC".to_owned(),
        warehouse_id: "wh-east".to_owned(),
        quantity,
    };
    let create = |allocations: Vec<Allocation>, address: Option<Address>| CreateShipmentsRequest {
        request_id: rid(),
        checkout_id: rid(),
        allocations,
        address,
    };
    let with = |edit: fn(&mut Address)| {
        let mut a = address("US");
        edit(&mut a);
        Some(a)
    };
    vec![
        case(
            f,
            CREATE,
            "no allocations",
            create(vec![], Some(address("US"))),
            "allocations",
        ),
        case(
            f,
            CREATE,
            "zero quantity",
            create(vec![allocation(0)], Some(address("US"))),
            "allocations[0].quantity",
        ),
        case(
            f,
            CREATE,
            "no address",
            create(vec![allocation(1)], None),
            "address",
        ),
        case(
            f,
            CREATE,
            "huge line1",
            create(vec![allocation(1)], with(|a| a.line1 = "x".repeat(10_000))),
            "address.line1",
        ),
        case(
            f,
            CREATE,
            "lower-case country",
            create(
                vec![allocation(1)],
                with(|a| a.country_code = "us".to_owned()),
            ),
            "address.country_code",
        ),
        case(
            f,
            CREATE,
            "three-letter country",
            create(
                vec![allocation(1)],
                with(|a| a.country_code = "USA".to_owned()),
            ),
            "address.country_code",
        ),
        case(
            f,
            CREATE,
            "control characters in city",
            create(
                vec![allocation(1)],
                with(|a| a.city = "Spring\nfield".to_owned()),
            ),
            "address.city",
        ),
        case(
            f,
            CREATE,
            "phone of letters",
            create(
                vec![allocation(1)],
                with(|a| a.phone = "call me maybe".to_owned()),
            ),
            "address.phone",
        ),
        case(
            f,
            CANCEL,
            "huge reason",
            CancelShipmentsRequest {
                request_id: rid(),
                checkout_id: r.checkout.clone(),
                reason: huge(),
            },
            "reason",
        ),
        case(
            f,
            GET,
            "checkout id not a UUID",
            GetShipmentsRequest {
                checkout_id: "*".to_owned(),
            },
            "checkout_id",
        ),
        case(
            f,
            ADVANCE,
            "unknown status",
            AdvanceShipmentRequest {
                request_id: rid(),
                shipment_id: r.shipment.clone(),
                target_status: 999,
            },
            "target_status",
        ),
        case(
            f,
            ADVANCE,
            "shipment id not a UUID",
            AdvanceShipmentRequest {
                request_id: rid(),
                shipment_id: "s-1".to_owned(),
                target_status: ShipmentStatus::Shipped as i32,
            },
            "shipment_id",
        ),
    ]
}

fn checkout_cases(r: &Real) -> Vec<Case> {
    const START: &str = "/checkout.checkout.v1.CheckoutService/StartCheckout";
    const GET: &str = "/checkout.checkout.v1.CheckoutService/GetCheckout";
    const LIST: &str = "/checkout.checkout.v1.CheckoutService/ListCheckouts";
    const CANCEL: &str = "/checkout.checkout.v1.CheckoutService/CancelCheckout";
    const RETRY: &str = "/checkout.checkout.v1.CheckoutService/RetryCheckout";
    let o = Role::Orchestrator;
    let start = |token: &str, country: &str| StartCheckoutRequest {
        request_id: rid(),
        cart_id: r.open_cart.clone(),
        customer_id: "alice".to_owned(),
        payment_token: token.to_owned(),
        shipping_address: Some(address(country)),
        wait_for_outcome: None,
    };
    vec![
        case(o, START, "empty token", start("", "US"), "payment_token"),
        case(
            o,
            START,
            "huge token",
            start(&huge(), "US"),
            "payment_token",
        ),
        case(
            o,
            START,
            "bad country",
            start("tok_visa", "U"),
            "shipping_address.country_code",
        ),
        case(
            o,
            START,
            "no address",
            StartCheckoutRequest {
                shipping_address: None,
                ..start("tok_visa", "US")
            },
            "shipping_address",
        ),
        case(
            o,
            START,
            "negative wait",
            StartCheckoutRequest {
                wait_for_outcome: Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                }),
                ..start("tok_visa", "US")
            },
            "wait_for_outcome",
        ),
        case(
            o,
            START,
            "cart id not a UUID",
            StartCheckoutRequest {
                cart_id: "cart".to_owned(),
                ..start("tok_visa", "US")
            },
            "cart_id",
        ),
        case(
            o,
            GET,
            "checkout id not a UUID",
            GetCheckoutRequest {
                checkout_id: huge(),
                customer_id: "alice".to_owned(),
            },
            "checkout_id",
        ),
        case(
            o,
            LIST,
            "huge page",
            ListCheckoutsRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        case(
            o,
            LIST,
            "forged token",
            ListCheckoutsRequest {
                customer_id: "alice".to_owned(),
                page_token: "00".to_owned(),
                ..Default::default()
            },
            "page_token",
        ),
        case(
            o,
            CANCEL,
            "huge reason",
            CancelCheckoutRequest {
                request_id: rid(),
                checkout_id: r.checkout.clone(),
                customer_id: "alice".to_owned(),
                reason: huge(),
            },
            "reason",
        ),
        case(
            o,
            CANCEL,
            "customer missing",
            CancelCheckoutRequest {
                request_id: rid(),
                checkout_id: r.checkout.clone(),
                customer_id: String::new(),
                reason: String::new(),
            },
            "customer_id",
        ),
        case(
            o,
            RETRY,
            "request id not a UUID",
            RetryCheckoutRequest {
                request_id: "x".to_owned(),
                checkout_id: r.checkout.clone(),
                reason: String::new(),
            },
            "request_id",
        ),
    ]
}

fn fault_cases() -> Vec<Case> {
    const SET: &str = "/checkout.fault.v1.FaultService/SetFaultRules";
    const ADD: &str = "/checkout.fault.v1.FaultService/AddFaultRule";
    const CLEAR: &str = "/checkout.fault.v1.FaultService/ClearFaultRules";
    const LIST: &str = "/checkout.fault.v1.FaultService/ListFaultRules";
    let o = Role::Orchestrator;
    let rule = |probability: f64| FaultRule {
        rpc_pattern: "*".to_owned(),
        probability,
        kind: FaultKind::ErrorBefore as i32,
        error_code: Code::Unavailable as i32,
        ..FaultRule::default()
    };
    vec![
        case(
            o,
            SET,
            "probability above one",
            SetFaultRulesRequest {
                request_id: rid(),
                rules: vec![rule(7.0)],
                seed: 1,
            },
            "rules[0].probability",
        ),
        case(
            o,
            ADD,
            "no rule",
            AddFaultRuleRequest {
                request_id: rid(),
                rule: None,
            },
            "rule",
        ),
        case(
            o,
            CLEAR,
            "request id not a UUID",
            ClearFaultRulesRequest {
                request_id: "now".to_owned(),
            },
            "request_id",
        ),
        raw(o, LIST, "garbage body", vec![0x08], Code::InvalidArgument),
    ]
}

/// Bodies no generated client would send: not protobuf, another message, over the size limit.
fn wire_cases() -> Vec<Case> {
    let listing = ListProductsRequest {
        page_size: 5,
        ..Default::default()
    }
    .encode_to_vec();
    let oversized = AddItemRequest {
        sku: "A".repeat(5 * 1024 * 1024),
        ..Default::default()
    }
    .encode_to_vec();
    let mut cases = Vec::new();
    for (role, path) in [
        (Role::Cart, "/checkout.cart.v1.CartService/AddItem"),
        (
            Role::Inventory,
            "/checkout.inventory.v1.InventoryService/ReserveStock",
        ),
        (
            Role::Payment,
            "/checkout.payment.v1.PaymentService/AuthorizePayment",
        ),
        (
            Role::Fulfillment,
            "/checkout.fulfillment.v1.FulfillmentService/CreateShipments",
        ),
        (
            Role::Orchestrator,
            "/checkout.checkout.v1.CheckoutService/StartCheckout",
        ),
    ] {
        cases.push(raw(
            role,
            path,
            "not protobuf",
            vec![0xff; 64],
            Code::InvalidArgument,
        ));
        cases.push(raw(
            role,
            path,
            "truncated field",
            vec![0x12, 0x40, b'a'],
            Code::InvalidArgument,
        ));
        // Field 3 of ListProductsRequest is a string; field 3 of these requests is something
        // else, or the decoded request lacks its required fields: refused either way.
        cases.push(raw(
            role,
            path,
            "another message type",
            listing.clone(),
            Code::InvalidArgument,
        ));
        cases.push(raw(
            role,
            path,
            "over the size limit",
            oversized.clone(),
            Code::OutOfRange,
        ));
    }
    cases
}

#[tokio::test]
async fn hostile_requests_to_every_rpc_are_refused_and_change_nothing() {
    let mut settings = test_settings();
    // Fault injection allowed, so FaultService validates its input rather than refusing outright.
    settings.faults.allowed = true;
    let sys = spawn_system_with(settings).await;
    let mut c = Clients::of(&sys).await;
    let cart = c
        .cart("alice", "USD", &[("MUG-CERAMIC", 2), ("TSHIRT-BLK-M", 1)])
        .await;
    let done = c
        .start(&cart, "alice", "tok_visa", "US", Duration::from_secs(20))
        .await;
    assert_eq!(done.status(), CheckoutStatus::Completed, "{done:?}");
    let order = done.order.clone().expect("an order summary");
    let open_cart = c.cart("alice", "USD", &[("SOCKS-3PK", 1)]).await;
    let real = Real {
        cart,
        open_cart,
        checkout: done.checkout_id.clone(),
        reservation: order.reservation_id.clone(),
        payment: order.payment_id.clone(),
        shipment: order.shipment_ids.first().cloned().expect("a shipment"),
    };

    let before = sys.snapshot().await;
    let cases: Vec<Case> = [
        cart_cases(&real),
        inventory_cases(&real),
        payment_cases(&real),
        fulfillment_cases(&real),
        checkout_cases(&real),
        fault_cases(),
        wire_cases(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut wrong = Vec::new();
    for case in &cases {
        let connection = channel(&sys.endpoint(case.role)).await;
        match call_raw(connection, case.path, case.body.clone()).await {
            Ok(_) => wrong.push(format!("{}: accepted", case.label)),
            Err(status) if status.code() != case.expect => wrong.push(format!(
                "{}: {:?} ({}), expected {:?}",
                case.label,
                status.code(),
                status.message(),
                case.expect
            )),
            Err(status) => {
                let fields = checkout_kit::status::fields_of(&status);
                if let Some(field) = case.field
                    && !fields.iter().any(|f| f == field)
                {
                    wrong.push(format!("{}: names {fields:?}, not {field}", case.label));
                }
            }
        }
    }
    // The one streaming RPC: its refusal comes as the call's answer or the stream's first item.
    let mut watcher = checkout_proto::checkout::checkout_service_client::CheckoutServiceClient::new(
        channel(&sys.endpoint(Role::Orchestrator)).await,
    );
    for (label, request, field) in [
        (
            "id not a UUID",
            WatchCheckoutRequest {
                checkout_id: huge(),
                customer_id: "alice".to_owned(),
            },
            "checkout_id",
        ),
        (
            "customer missing",
            WatchCheckoutRequest {
                checkout_id: real.checkout.clone(),
                customer_id: String::new(),
            },
            "customer_id",
        ),
    ] {
        let refusal = match watcher.watch_checkout(request).await {
            Err(status) => Some(status),
            Ok(stream) => tokio_stream::StreamExt::next(&mut stream.into_inner())
                .await
                .and_then(Result::err),
        };
        match refusal {
            Some(s)
                if s.code() == Code::InvalidArgument
                    && checkout_kit::status::fields_of(&s)
                        .iter()
                        .any(|f| f == field) => {}
            other => wrong.push(format!("WatchCheckout {label}: {other:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    assert_unchanged(&before, &sys.snapshot().await, "hostile requests");
    sys.system.stop().await.unwrap();
}
