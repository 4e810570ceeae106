//! Every inventory rule, through the handlers, on the backend the test run picks.

use std::time::Duration;

use checkout_inventory::fixture::StockFixture;
use checkout_inventory::{reaper, stock};
use checkout_kit::db::Backend;
use checkout_kit::on_backend;
use checkout_kit::status::{fields_of, reason_of};
use checkout_kit::testing::{self, statement_log};
use checkout_proto::inventory::inventory_service_server::InventoryService;
use checkout_proto::inventory::*;
use tonic::{Code, Request, Status};

mod support;

use support::{FIXTURE, harness, line, rid};

fn assert_refused(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(status).as_deref(), Some(reason), "{status:?}");
}

#[tokio::test]
async fn stock_is_listed_per_warehouse_by_priority() {
    let h = harness().await;
    let warehouses = h
        .api
        .list_warehouses(Request::new(ListWarehousesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .warehouses;
    let ids: Vec<_> = warehouses.iter().map(|w| w.warehouse_id.as_str()).collect();
    assert_eq!(ids, ["east", "west"]);
    let split = h.stock("SPLIT").await;
    assert_eq!(split.total_available, 65);
    assert_eq!(split.levels[0].warehouse_id, "east");
    let missing = h
        .api
        .get_stock(Request::new(GetStockRequest {
            sku: "NOPE".to_owned(),
        }))
        .await
        .unwrap_err();
    assert_refused(&missing, Code::NotFound, "SKU_NOT_FOUND");

    // Seeding again never overwrites stock that changed since.
    h.reserve(&rid(), vec![line("PLENTY", 10)], None)
        .await
        .unwrap();
    stock::seed(&h.db, &StockFixture::parse(FIXTURE).unwrap())
        .await
        .unwrap();
    assert_eq!(h.level("PLENTY", "west").await, (100, 10));
}

#[tokio::test]
async fn restocks_are_idempotent_and_never_undercut_reservations() {
    let h = harness().await;
    let adjust = AdjustStockRequest {
        request_id: rid(),
        sku: "PLENTY".to_owned(),
        warehouse_id: "west".to_owned(),
        delta: 5,
    };
    h.api
        .adjust_stock(Request::new(adjust.clone()))
        .await
        .unwrap();
    h.api.adjust_stock(Request::new(adjust)).await.unwrap();
    assert_eq!(h.level("PLENTY", "west").await, (105, 0), "one effect");

    let set = |on_hand, sku: &str, warehouse: &str| SetStockRequest {
        request_id: rid(),
        sku: sku.to_owned(),
        warehouse_id: warehouse.to_owned(),
        on_hand,
    };
    let level = h
        .api
        .set_stock(Request::new(set(7, "NEW-SKU", "east")))
        .await
        .unwrap()
        .into_inner()
        .level
        .unwrap();
    assert_eq!((level.on_hand, level.reserved, level.available), (7, 0, 7));

    h.reserve(&rid(), vec![line("PLENTY", 30)], None)
        .await
        .unwrap();
    let below = h
        .api
        .set_stock(Request::new(set(29, "PLENTY", "west")))
        .await
        .unwrap_err();
    assert_refused(&below, Code::FailedPrecondition, "STOCK_BELOW_RESERVED");
    let down = h
        .api
        .adjust_stock(Request::new(AdjustStockRequest {
            request_id: rid(),
            sku: "PLENTY".to_owned(),
            warehouse_id: "west".to_owned(),
            delta: -80,
        }))
        .await
        .unwrap_err();
    assert_refused(&down, Code::FailedPrecondition, "STOCK_BELOW_RESERVED");
    assert_eq!(h.level("PLENTY", "west").await, (105, 30));

    let nowhere = h
        .api
        .set_stock(Request::new(set(1, "PLENTY", "mars")))
        .await
        .unwrap_err();
    assert_refused(&nowhere, Code::NotFound, "WAREHOUSE_NOT_FOUND");
    let negative = h
        .api
        .set_stock(Request::new(set(-1, "PLENTY", "west")))
        .await
        .unwrap_err();
    assert_eq!(fields_of(&negative), vec!["on_hand"]);
}

#[tokio::test]
async fn reservations_fill_warehouses_by_priority_all_or_nothing() {
    let h = harness().await;
    let checkout = rid();
    let reservation = h
        .reserve(&checkout, vec![line("SPLIT", 50), line("PLENTY", 2)], None)
        .await
        .unwrap();
    assert_eq!(reservation.state(), ReservationState::Active);
    let split: Vec<(String, String, i64)> = reservation
        .allocations
        .iter()
        .map(|a| (a.sku.clone(), a.warehouse_id.clone(), a.quantity))
        .collect();
    assert_eq!(
        split,
        vec![
            ("PLENTY".to_owned(), "west".to_owned(), 2),
            ("SPLIT".to_owned(), "east".to_owned(), 40),
            ("SPLIT".to_owned(), "west".to_owned(), 10),
        ]
    );
    assert!(reservation.expire_time.is_some());
    assert_eq!(h.level("SPLIT", "east").await, (40, 40));
    assert_eq!(h.level("SPLIT", "west").await, (25, 10));

    // One short line and nothing is reserved, not even the lines that would fit.
    let short = h
        .reserve(
            &rid(),
            vec![line("PLENTY", 3), line("SCARCE", 2), line("SPLIT", 16)],
            None,
        )
        .await
        .unwrap_err();
    assert_refused(&short, Code::FailedPrecondition, "OUT_OF_STOCK");
    let info = tonic_types::StatusExt::get_details_error_info(&short).unwrap();
    assert_eq!(info.metadata["skus"], "SCARCE,SPLIT");
    assert_eq!(h.level("PLENTY", "west").await, (100, 2));

    // The same checkout reserving again (a retry with a new request id) gets its reservation.
    let again = h
        .reserve(&checkout, vec![line("SPLIT", 50), line("PLENTY", 2)], None)
        .await
        .unwrap();
    assert_eq!(again.reservation_id, reservation.reservation_id);
    assert_eq!(h.level("SPLIT", "east").await, (40, 40), "no second effect");
    let different = h
        .reserve(&checkout, vec![line("PLENTY", 1)], None)
        .await
        .unwrap_err();
    assert_refused(&different, Code::FailedPrecondition, "RESERVATION_EXISTS");
}

#[tokio::test]
async fn a_reservation_answers_its_lines_and_allocations_in_the_order_it_is_read_back() {
    statement_log();
    let h = harness().await;
    // Punctuation orders differently under a language collation (which Postgres may use for
    // text) than byte by byte.
    for (sku, warehouse, on_hand) in [
        ("AB", "east", 5),
        ("A_B", "east", 5),
        ("A-C", "east", 1),
        ("A-C", "west", 5),
        ("A.B", "west", 5),
    ] {
        h.api
            .set_stock(Request::new(SetStockRequest {
                request_id: rid(),
                sku: sku.to_owned(),
                warehouse_id: warehouse.to_owned(),
                on_hand,
            }))
            .await
            .unwrap();
    }
    let checkout = rid();
    let reserved = h
        .reserve(
            &checkout,
            vec![
                line("AB", 1),
                line("A_B", 1),
                line("A-C", 3),
                line("A.B", 1),
            ],
            None,
        )
        .await
        .unwrap();
    let allocations: Vec<(&str, &str, i64)> = reserved
        .allocations
        .iter()
        .map(|a| (a.sku.as_str(), a.warehouse_id.as_str(), a.quantity))
        .collect();
    assert_eq!(
        allocations,
        vec![
            ("A-C", "east", 1),
            ("A-C", "west", 2),
            ("A.B", "west", 1),
            ("AB", "east", 1),
            ("A_B", "east", 1),
        ]
    );
    let lines: Vec<&str> = reserved.lines.iter().map(|l| l.sku.as_str()).collect();
    assert_eq!(lines, ["AB", "A_B", "A-C", "A.B"]);
    assert_eq!(h.reservation(&checkout).await, reserved);
    if testing::backend() == Backend::Sqlite {
        // A reservation's lines and allocations go to the writer's thread as one string, however
        // many (other tests of this binary reserve too, always the same way).
        testing::assert_one_hand_off(
            &statement_log(),
            &[
                "INSERT INTO reservation_lines ",
                "INSERT INTO reservation_allocations ",
            ],
            // This reservation's four lines and five allocations in one.
            "(?, ?, ?, ?)",
            9,
        );
    }
}

#[tokio::test]
async fn malformed_reservations_are_refused_by_field() {
    let h = harness().await;
    let cases: Vec<(Vec<ReservationLine>, Option<prost_types::Duration>, &str)> = vec![
        (vec![], None, "lines"),
        (vec![line("PLENTY", 0)], None, "lines[0].quantity"),
        (
            vec![line("PLENTY", 1), line("PLENTY", 1)],
            None,
            "lines[1].sku",
        ),
        (vec![line("bad sku", 1)], None, "lines[0].sku"),
        (
            vec![line("PLENTY", 1)],
            Some(prost_types::Duration {
                seconds: 0,
                nanos: 5,
            }),
            "ttl",
        ),
    ];
    for (lines, ttl, field) in cases {
        let refused = h.reserve(&rid(), lines, ttl).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(
            fields_of(&refused).iter().any(|f| f == field),
            "{refused:?}"
        );
    }
    let bad_checkout = h
        .reserve("nope", vec![line("PLENTY", 1)], None)
        .await
        .unwrap_err();
    assert_eq!(fields_of(&bad_checkout), vec!["checkout_id"]);
    assert_eq!(h.level("PLENTY", "west").await, (100, 0));
}

#[tokio::test]
async fn commit_and_release_move_stock_once_and_refuse_each_other() {
    let h = harness().await;
    let committed = rid();
    h.reserve(&committed, vec![line("PLENTY", 4)], None)
        .await
        .unwrap();
    let done = h.commit(&committed).await.unwrap();
    assert_eq!(done.state(), ReservationState::Committed);
    // Built from the row the commit returned, not read back: the same as what is stored.
    assert_eq!(done, h.reservation(&committed).await);
    assert_eq!(h.level("PLENTY", "west").await, (96, 0));
    assert_eq!(h.commit(&committed).await.unwrap(), done);
    assert_eq!(
        h.level("PLENTY", "west").await,
        (96, 0),
        "committing again is harmless"
    );
    assert_refused(
        &h.release(&committed).await.unwrap_err(),
        Code::FailedPrecondition,
        "RESERVATION_COMMITTED",
    );

    let released = rid();
    let reservation = h
        .reserve(&released, vec![line("PLENTY", 6)], None)
        .await
        .unwrap();
    let by_id = h
        .api
        .release_reservation(Request::new(ReleaseReservationRequest {
            request_id: rid(),
            target: Some(release_reservation_request::Target::ReservationId(
                reservation.reservation_id.clone(),
            )),
            reason: "payment declined".to_owned(),
        }))
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    assert_eq!(by_id.state(), ReservationState::Released);
    assert_eq!(by_id.release_reason, "payment declined");
    assert_eq!(by_id, h.reservation(&released).await);
    assert_eq!(h.level("PLENTY", "west").await, (96, 0));
    h.release(&released).await.unwrap();
    assert_eq!(
        h.level("PLENTY", "west").await,
        (96, 0),
        "releasing again is harmless"
    );
    assert_refused(
        &h.commit(&released).await.unwrap_err(),
        Code::FailedPrecondition,
        "RESERVATION_RELEASED",
    );
    let unknown = h
        .api
        .commit_reservation(Request::new(CommitReservationRequest {
            request_id: rid(),
            target: Some(commit_reservation_request::Target::ReservationId(rid())),
        }))
        .await
        .unwrap_err();
    assert_refused(&unknown, Code::NotFound, "RESERVATION_NOT_FOUND");
}

#[tokio::test]
async fn a_release_before_the_reserve_leaves_a_tombstone_that_refuses_it() {
    let h = harness().await;
    let checkout = rid();
    let tombstone = h.release(&checkout).await.unwrap();
    assert_eq!(tombstone.state(), ReservationState::Tombstone);
    assert!(tombstone.allocations.is_empty());
    let late = h
        .reserve(&checkout, vec![line("SCARCE", 1)], None)
        .await
        .unwrap_err();
    assert_refused(&late, Code::FailedPrecondition, "CHECKOUT_RELEASED");
    assert_eq!(
        h.level("SCARCE", "east").await,
        (1, 0),
        "the late reserve changed nothing"
    );
    assert_eq!(
        h.reservation(&checkout).await.state(),
        ReservationState::Tombstone
    );
}

#[tokio::test]
async fn expired_reservations_are_reaped_once_even_by_competing_reapers() {
    let h = harness().await;
    let checkout = rid();
    let one_second = prost_types::Duration {
        seconds: 1,
        nanos: 0,
    };
    h.reserve(&checkout, vec![line("SPLIT", 45)], Some(one_second))
        .await
        .unwrap();
    let lasting = rid();
    h.reserve(&lasting, vec![line("SPLIT", 5)], None)
        .await
        .unwrap();
    assert_eq!(
        reaper::reap_once(&h.db, 100).await.unwrap(),
        0,
        "not due yet"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let (a, b) = tokio::join!(reaper::reap_once(&h.db, 100), reaper::reap_once(&h.db, 100));
    assert_eq!(a.unwrap() + b.unwrap(), 1, "exactly one reaper released it");
    let reaped = h.reservation(&checkout).await;
    assert_eq!(reaped.state(), ReservationState::Expired);
    assert_eq!(reaped.release_reason, "ttl elapsed");
    // The reaped 45 were 40 from east and 5 from west; the lasting 5 came from west.
    assert_eq!(h.level("SPLIT", "east").await, (40, 0));
    assert_eq!(h.level("SPLIT", "west").await, (25, 5));
    assert_refused(
        &h.commit(&checkout).await.unwrap_err(),
        Code::FailedPrecondition,
        "RESERVATION_RELEASED",
    );
    assert_eq!(
        h.reservation(&lasting).await.state(),
        ReservationState::Active
    );
}

#[tokio::test]
async fn the_database_refuses_over_reservation_as_a_last_line_of_defence() {
    let h = harness().await;
    let mut tx = h.db.begin().await.unwrap();
    let over = on_backend!(&mut tx, conn => {
        sqlx::query("UPDATE stock SET reserved = on_hand + 1 WHERE sku = 'SCARCE'")
            .execute(&mut *conn)
            .await
            .is_err()
    });
    assert!(over, "reserved > on_hand must be refused");
    tx.rollback().await.unwrap();
    let mut tx = h.db.begin().await.unwrap();
    let negative = on_backend!(&mut tx, conn => {
        sqlx::query("UPDATE stock SET on_hand = -1, reserved = 0 WHERE sku = 'SCARCE'")
            .execute(&mut *conn)
            .await
            .is_err()
    });
    assert!(negative, "negative stock must be refused");
    tx.rollback().await.unwrap();
}
