//! Every fulfillment rule, through the handlers, on the backend the test run picks.

use checkout_fulfillment::address::ServedCountries;
use checkout_fulfillment::api::FulfillmentServiceApi;
use checkout_kit::db::Backend;
use checkout_kit::idempotency::{Idempotency, IdempotencyConfig};
use checkout_kit::status::{fields_of, reason_of};
use checkout_kit::testing::{self, TestDatabase, statement_log};
use checkout_proto::common::{Address, Allocation};
use checkout_proto::fulfillment::fulfillment_service_server::FulfillmentService;
use checkout_proto::fulfillment::*;
use tonic::{Code, Request, Status};

struct Harness {
    api: FulfillmentServiceApi,
    _database: TestDatabase,
}

async fn harness() -> Harness {
    let database = TestDatabase::new("fulfillment");
    let db = database
        .migrated(&checkout_fulfillment::MIGRATIONS)
        .await
        .unwrap();
    let idempotency = Idempotency::new(db.clone(), IdempotencyConfig::default());
    Harness {
        api: FulfillmentServiceApi::new(db, idempotency, ServedCountries::parse("US,DE").unwrap()),
        _database: database,
    }
}

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn address(country: &str) -> Address {
    Address {
        recipient_name: "Ada Lovelace".to_owned(),
        line1: "12 Analytical Row".to_owned(),
        line2: String::new(),
        city: "Berlin".to_owned(),
        region: String::new(),
        postal_code: "10115".to_owned(),
        country_code: country.to_owned(),
        phone: "+49 30 1234567".to_owned(),
    }
}

fn alloc(sku: &str, warehouse: &str, quantity: i64) -> Allocation {
    Allocation {
        sku: sku.to_owned(),
        warehouse_id: warehouse.to_owned(),
        quantity,
    }
}

fn assert_refused(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(status).as_deref(), Some(reason), "{status:?}");
}

impl Harness {
    async fn create_with(
        &self,
        request_id: &str,
        checkout: &str,
        allocations: Vec<Allocation>,
        address: Address,
    ) -> Result<Vec<Shipment>, Status> {
        self.api
            .create_shipments(Request::new(CreateShipmentsRequest {
                request_id: request_id.to_owned(),
                checkout_id: checkout.to_owned(),
                allocations,
                address: Some(address),
            }))
            .await
            .map(|r| r.into_inner().shipments)
    }

    async fn create(&self, checkout: &str) -> Result<Vec<Shipment>, Status> {
        self.create_with(
            &rid(),
            checkout,
            vec![
                alloc("A", "east", 2),
                alloc("B", "west", 1),
                alloc("C", "east", 3),
            ],
            address("DE"),
        )
        .await
    }

    async fn cancel(&self, checkout: &str) -> Result<Vec<Shipment>, Status> {
        self.api
            .cancel_shipments(Request::new(CancelShipmentsRequest {
                request_id: rid(),
                checkout_id: checkout.to_owned(),
                reason: "compensation".to_owned(),
            }))
            .await
            .map(|r| r.into_inner().shipments)
    }

    async fn advance(&self, shipment_id: &str, to: ShipmentStatus) -> Result<Shipment, Status> {
        self.api
            .advance_shipment(Request::new(AdvanceShipmentRequest {
                request_id: rid(),
                shipment_id: shipment_id.to_owned(),
                target_status: to.into(),
            }))
            .await
            .map(|r| r.into_inner().shipment.unwrap())
    }

    async fn get(&self, checkout: &str) -> Vec<Shipment> {
        self.api
            .get_shipments(Request::new(GetShipmentsRequest {
                checkout_id: checkout.to_owned(),
            }))
            .await
            .unwrap()
            .into_inner()
            .shipments
    }
}

#[tokio::test]
async fn one_shipment_per_warehouse_with_its_lines() {
    statement_log();
    let h = harness().await;
    let checkout = rid();
    let shipments = h.create(&checkout).await.unwrap();
    let summary: Vec<(String, Vec<(String, i64)>)> = shipments
        .iter()
        .map(|s| {
            (
                s.warehouse_id.clone(),
                s.lines
                    .iter()
                    .map(|l| (l.sku.clone(), l.quantity))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "east".to_owned(),
                vec![("A".to_owned(), 2), ("C".to_owned(), 3)]
            ),
            ("west".to_owned(), vec![("B".to_owned(), 1)]),
        ]
    );
    assert!(
        shipments
            .iter()
            .all(|s| s.status() == ShipmentStatus::Pending)
    );
    assert!(shipments.iter().all(|s| s.events.len() == 1));
    assert_eq!(h.get(&checkout).await, shipments);
    // Creating again for the same checkout (a retry with a new request id) returns the same.
    assert_eq!(h.create(&checkout).await.unwrap(), shipments);
    let other = h
        .create_with(
            &rid(),
            &checkout,
            vec![alloc("A", "east", 1)],
            address("DE"),
        )
        .await
        .unwrap_err();
    assert_refused(&other, Code::FailedPrecondition, "SHIPMENTS_EXIST");
    if testing::backend() == Backend::Sqlite {
        // A create's shipments, lines and first events go to the writer's thread as one string
        // (other tests of this binary create too, always the same way).
        testing::assert_one_hand_off(
            &statement_log(),
            &[
                "INSERT INTO shipments ",
                "INSERT INTO shipment_lines ",
                "INSERT INTO shipment_events ",
            ],
            // This create's two shipments in one.
            "(?, 1, ?, ?)",
            2,
        );
    }
}

#[tokio::test]
async fn shipments_and_lines_come_in_byte_order_in_the_create_answer_and_every_read() {
    let h = harness().await;
    let checkout = rid();
    // Punctuation and case order differently under a language collation (which Postgres may
    // use for text) than byte by byte.
    let created = h
        .create_with(
            &rid(),
            &checkout,
            vec![
                alloc("AB", "w2", 1),
                alloc("A_B", "w2", 2),
                alloc("A-C", "w2", 3),
                alloc("A.B", "w2", 4),
                alloc("Z", "W1", 5),
            ],
            address("DE"),
        )
        .await
        .unwrap();
    let order: Vec<(&str, Vec<&str>)> = created
        .iter()
        .map(|s| {
            (
                s.warehouse_id.as_str(),
                s.lines.iter().map(|l| l.sku.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![("W1", vec!["Z"]), ("w2", vec!["A-C", "A.B", "AB", "A_B"])]
    );
    assert_eq!(h.get(&checkout).await, created);
}

#[tokio::test]
async fn addresses_are_checked_field_by_field_and_unserved_countries_refused() {
    let h = harness().await;
    let mut bad = address("DE");
    bad.recipient_name.clear();
    bad.postal_code = "10115;DROP".to_owned();
    bad.country_code = "Germany".to_owned();
    let refused = h
        .create_with(&rid(), &rid(), vec![alloc("A", "east", 1)], bad)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let fields = fields_of(&refused);
    for field in [
        "address.recipient_name",
        "address.postal_code",
        "address.country_code",
    ] {
        assert!(fields.iter().any(|f| f == field), "{fields:?}");
    }
    for country in ["AQ", "FR"] {
        let checkout = rid();
        let unserved = h
            .create_with(
                &rid(),
                &checkout,
                vec![alloc("A", "east", 1)],
                address(country),
            )
            .await
            .unwrap_err();
        assert_refused(
            &unserved,
            Code::FailedPrecondition,
            "ADDRESS_NOT_SERVICEABLE",
        );
        // A refusal creates nothing, so the checkout has no shipments.
        let none = h
            .api
            .get_shipments(Request::new(GetShipmentsRequest {
                checkout_id: checkout,
            }))
            .await
            .unwrap_err();
        assert_eq!(none.code(), Code::NotFound);
    }
    let empty = h
        .create_with(&rid(), &rid(), vec![], address("DE"))
        .await
        .unwrap_err();
    assert_eq!(fields_of(&empty), vec!["allocations"]);
}

#[tokio::test]
async fn shipments_advance_in_order_with_a_tracking_number_on_ship() {
    let h = harness().await;
    let checkout = rid();
    let shipment = h.create(&checkout).await.unwrap().remove(0);
    let id = shipment.shipment_id.clone();
    let skip = h.advance(&id, ShipmentStatus::Shipped).await.unwrap_err();
    assert_refused(&skip, Code::FailedPrecondition, "INVALID_TRANSITION");
    h.advance(&id, ShipmentStatus::Packed).await.unwrap();
    let shipped = h.advance(&id, ShipmentStatus::Shipped).await.unwrap();
    assert!(shipped.tracking_number.starts_with("TRK"));
    let delivered = h.advance(&id, ShipmentStatus::Delivered).await.unwrap();
    let history: Vec<ShipmentStatus> = delivered.events.iter().map(|e| e.status()).collect();
    assert_eq!(
        history,
        [
            ShipmentStatus::Pending,
            ShipmentStatus::Packed,
            ShipmentStatus::Shipped,
            ShipmentStatus::Delivered
        ]
    );
    assert!(delivered.events.iter().all(|e| e.time.is_some()));
    let back = h.advance(&id, ShipmentStatus::Packed).await.unwrap_err();
    assert_refused(&back, Code::FailedPrecondition, "INVALID_TRANSITION");
    let unknown = h.advance(&rid(), ShipmentStatus::Packed).await.unwrap_err();
    assert_refused(&unknown, Code::NotFound, "SHIPMENT_NOT_FOUND");
}

#[tokio::test]
async fn cancel_works_until_something_ships() {
    let h = harness().await;
    let packed = rid();
    let shipments = h.create(&packed).await.unwrap();
    h.advance(&shipments[0].shipment_id, ShipmentStatus::Packed)
        .await
        .unwrap();
    let cancelled = h.cancel(&packed).await.unwrap();
    assert!(
        cancelled
            .iter()
            .all(|s| s.status() == ShipmentStatus::Cancelled)
    );
    assert_eq!(
        h.cancel(&packed).await.unwrap(),
        cancelled,
        "cancelling again is harmless"
    );
    let after = h
        .advance(&shipments[1].shipment_id, ShipmentStatus::Packed)
        .await
        .unwrap_err();
    assert_refused(&after, Code::FailedPrecondition, "INVALID_TRANSITION");

    let gone = rid();
    let shipments = h.create(&gone).await.unwrap();
    h.advance(&shipments[1].shipment_id, ShipmentStatus::Packed)
        .await
        .unwrap();
    h.advance(&shipments[1].shipment_id, ShipmentStatus::Shipped)
        .await
        .unwrap();
    let refused = h.cancel(&gone).await.unwrap_err();
    assert_refused(
        &refused,
        Code::FailedPrecondition,
        "SHIPMENT_ALREADY_SHIPPED",
    );
    assert_eq!(
        h.get(&gone).await[0].status(),
        ShipmentStatus::Pending,
        "nothing changed"
    );
}

#[tokio::test]
async fn a_cancel_before_the_create_leaves_a_tombstone_that_refuses_it() {
    let h = harness().await;
    let checkout = rid();
    assert!(h.cancel(&checkout).await.unwrap().is_empty());
    let late = h.create(&checkout).await.unwrap_err();
    assert_refused(&late, Code::FailedPrecondition, "CHECKOUT_CANCELLED");
}

#[tokio::test]
async fn every_mutation_replays_its_first_answer() {
    let h = harness().await;
    let checkout = rid();
    let request_id = rid();
    let allocations = vec![alloc("A", "east", 1)];
    let first = h
        .create_with(&request_id, &checkout, allocations.clone(), address("US"))
        .await
        .unwrap();
    let again = h
        .create_with(&request_id, &checkout, allocations, address("US"))
        .await
        .unwrap();
    assert_eq!(first, again);
    let reused = h
        .create_with(
            &request_id,
            &checkout,
            vec![alloc("A", "east", 2)],
            address("US"),
        )
        .await
        .unwrap_err();
    assert_refused(&reused, Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED");

    let advance = AdvanceShipmentRequest {
        request_id: rid(),
        shipment_id: first[0].shipment_id.clone(),
        target_status: ShipmentStatus::Packed.into(),
    };
    let a = h
        .api
        .advance_shipment(Request::new(advance.clone()))
        .await
        .unwrap()
        .into_inner();
    let b = h
        .api
        .advance_shipment(Request::new(advance))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a, b);
    assert_eq!(
        a.shipment.unwrap().events.len(),
        2,
        "one transition recorded"
    );

    let cancel = CancelShipmentsRequest {
        request_id: rid(),
        checkout_id: checkout,
        reason: String::new(),
    };
    let a = h
        .api
        .cancel_shipments(Request::new(cancel.clone()))
        .await
        .unwrap()
        .into_inner();
    let b = h
        .api
        .cancel_shipments(Request::new(cancel))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_racing_a_ship_has_exactly_one_winner() {
    let h = harness().await;
    for _ in 0..20 {
        let checkout = rid();
        let shipment = h.create(&checkout).await.unwrap().remove(0);
        h.advance(&shipment.shipment_id, ShipmentStatus::Packed)
            .await
            .unwrap();
        let (api_a, api_b) = (h.api.clone(), h.api.clone());
        let (id, checkout_b) = (shipment.shipment_id.clone(), checkout.clone());
        let ship = tokio::spawn(async move {
            api_a
                .advance_shipment(Request::new(AdvanceShipmentRequest {
                    request_id: rid(),
                    shipment_id: id,
                    target_status: ShipmentStatus::Shipped.into(),
                }))
                .await
        });
        let cancel = tokio::spawn(async move {
            api_b
                .cancel_shipments(Request::new(CancelShipmentsRequest {
                    request_id: rid(),
                    checkout_id: checkout_b,
                    reason: String::new(),
                }))
                .await
        });
        let (ship, cancel) = (ship.await.unwrap(), cancel.await.unwrap());
        assert!(
            ship.is_ok() != cancel.is_ok(),
            "exactly one wins: {ship:?} / {cancel:?}"
        );
        let now = h.get(&checkout).await;
        let status = now
            .iter()
            .find(|s| s.shipment_id == shipment.shipment_id)
            .unwrap()
            .status();
        if ship.is_ok() {
            assert_eq!(status, ShipmentStatus::Shipped);
            assert_refused(
                &cancel.unwrap_err(),
                Code::FailedPrecondition,
                "SHIPMENT_ALREADY_SHIPPED",
            );
        } else {
            assert_eq!(status, ShipmentStatus::Cancelled);
            assert!(now.iter().all(|s| s.status() == ShipmentStatus::Cancelled));
        }
    }
}

#[tokio::test]
async fn a_first_create_is_one_write_and_every_other_goes_the_usual_way() {
    use checkout_kit::db::{Backend, Db, PoolConfig};
    use checkout_kit::testing::{self, RoundTrips};

    let postgres = testing::backend() == Backend::Postgres;
    let database = TestDatabase::new("fulfillment_one_statement");
    let migrated = database
        .migrated(&checkout_fulfillment::MIGRATIONS)
        .await
        .unwrap();
    // On Postgres the service talks through a proxy counting round trips; on SQLite the
    // statement log shows the hand-offs to the writer's thread.
    let (db, round_trips) = if postgres {
        migrated.close().await;
        let round_trips = RoundTrips::count(&database).await;
        let db = Db::connect(round_trips.url(), &PoolConfig::default())
            .await
            .unwrap();
        (db, Some(round_trips))
    } else {
        statement_log();
        (migrated, None)
    };
    let idempotency = Idempotency::new(db.clone(), IdempotencyConfig::default());
    let h = Harness {
        api: FulfillmentServiceApi::new(db, idempotency, ServedCountries::parse("US,DE").unwrap()),
        _database: database,
    };
    // The first create prepares the statement on its connection.
    h.create(&rid()).await.unwrap();

    let (checkout, request) = (rid(), rid());
    let allocations = vec![alloc("A", "east", 2), alloc("B", "west", 1)];
    let before = match &round_trips {
        Some(round_trips) => round_trips.settled().await,
        None => statement_log().len(),
    };
    let created = h
        .create_with(&request, &checkout, allocations.clone(), address("DE"))
        .await
        .unwrap();
    match &round_trips {
        Some(round_trips) => assert_eq!(
            round_trips.settled().await - before,
            1,
            "no BEGIN, no COMMIT: the checkout, shipments, lines, events and key in one statement"
        ),
        None => {
            let logged = statement_log()[before..].to_vec();
            assert!(
                logged.iter().any(|s| [
                    "INSERT INTO idempotency_keys ",
                    "INSERT INTO fulfillment_checkouts ",
                    "INSERT INTO shipments ",
                    "INSERT INTO shipment_lines ",
                    "INSERT INTO shipment_events ",
                ]
                .iter()
                .all(|statement| s.contains(statement))),
                "the checkout, shipments, lines, events and key in one hand-off: {logged:?}"
            );
        }
    }
    assert_eq!(created.len(), 2);
    assert_eq!(
        h.get(&checkout).await,
        created,
        "the answer is what was stored"
    );

    // A repeat replays it, and another request for the same checkout gets the same shipments.
    let again = h
        .create_with(&request, &checkout, allocations.clone(), address("DE"))
        .await
        .unwrap();
    assert_eq!(again, created);
    let other = h
        .create_with(&rid(), &checkout, allocations, address("DE"))
        .await
        .unwrap();
    assert_eq!(other, created);
    // The key was stored with the shipments: used for a different request, it is refused.
    let reused = h
        .create_with(
            &request,
            &checkout,
            vec![alloc("C", "east", 1)],
            address("DE"),
        )
        .await
        .unwrap_err();
    assert_refused(&reused, Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED");
    // A checkout cancelled before its create keeps its tombstone: the statement is refused whole.
    let cancelled = rid();
    h.cancel(&cancelled).await.unwrap();
    let refused = h.create(&cancelled).await.unwrap_err();
    assert_refused(&refused, Code::FailedPrecondition, "CHECKOUT_CANCELLED");
    let none = h
        .api
        .get_shipments(Request::new(GetShipmentsRequest {
            checkout_id: cancelled,
        }))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::NotFound, "{none:?}");
}
