//! How long a reservation holds its stock rows. On Postgres a written stock row stays locked to
//! every other reservation of its sku until the writer commits, so every handler writes its
//! stock rows last. A binary of its own, whose tests take turns: the statement log they read is
//! process-wide.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use checkout_kit::db::{Backend, Db};
use checkout_kit::on_backend;
use checkout_kit::testing::{self, statement_log};
use checkout_proto::inventory::{Reservation, ReservationState};

mod support;

use support::{Harness, harness, line, rid};

/// The statement log is process-wide: the tests of this binary take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn allocations(reservation: &Reservation) -> Vec<(&str, &str, i64)> {
    reservation
        .allocations
        .iter()
        .map(|a| (a.sku.as_str(), a.warehouse_id.as_str(), a.quantity))
        .collect()
}

/// (warehouse, reserved) of a sku.
async fn reserved(h: &Harness, sku: &str) -> Vec<(String, i64)> {
    h.stock(sku)
        .await
        .levels
        .into_iter()
        .map(|l| (l.warehouse_id, l.reserved))
        .collect()
}

/// Asserts that from a request's first stock write on, it ran only more stock writes, its
/// idempotency key and its COMMIT (which sqlx logs on SQLite only).
fn assert_stock_written_last(request: &str, logged: &[String]) {
    let first = logged
        .iter()
        .position(|s| s.contains("UPDATE stock SET"))
        .unwrap_or_else(|| panic!("{request} writes stock: {logged:?}"));
    for statement in &logged[first..] {
        assert!(
            ["UPDATE stock SET", "INSERT INTO idempotency_keys", "COMMIT"]
                .iter()
                .any(|s| statement.contains(s)),
            "{request} holds a stock row across {statement}"
        );
    }
}

/// On SQLite, asserts that a commit's or release's last stock write went to the writer's
/// thread with the request's key, in one hand-off ([`checkout_kit::db::Tx::write_last`]).
fn assert_last_stock_write_goes_with_the_key(request: &str, logged: &[String], h: &Harness) {
    if h.db.backend() != Backend::Sqlite {
        return;
    }
    assert!(
        logged
            .iter()
            .any(|s| s.contains("UPDATE stock SET") && s.contains("INSERT INTO idempotency_keys")),
        "{request}'s last stock write and its key in one hand-off: {logged:?}"
    );
}

/// On SQLite, a reservation's state change and the reads its stock moves need (allocations and
/// lines, found by checkout) went to the writer in one hand-off.
fn assert_read_with_the_state_change(logged: &[String], h: &Harness) {
    if h.db.backend() != Backend::Sqlite {
        return;
    }
    testing::assert_one_hand_off(
        logged,
        &[
            "UPDATE reservations SET state = $2",
            "FROM reservation_allocations a",
            "FROM reservation_lines WHERE reservation_id = (SELECT reservation_id",
        ],
        "FROM reservation_lines",
        1,
    );
}

#[tokio::test]
async fn reserve_commit_and_release_write_their_stock_rows_last() {
    let _turn = ONE_AT_A_TIME.lock().await;
    statement_log();
    let h = harness().await;
    let (kept, dropped) = (rid(), rid());

    let before = statement_log().len();
    h.reserve(&kept, vec![line("SPLIT", 41), line("PLENTY", 2)], None)
        .await
        .unwrap();
    assert_stock_written_last("a reserve", &statement_log()[before..]);
    if h.db.backend() == Backend::Sqlite {
        // The reservation's row and both lines' stock levels went in one hand-off.
        testing::assert_one_hand_off(
            &statement_log()[before..],
            &["INSERT INTO reservations (", "FROM stock s JOIN warehouses"],
            "FROM stock s JOIN warehouses",
            2,
        );
    }

    let before = statement_log().len();
    h.reserve(&dropped, vec![line("PLENTY", 3)], None)
        .await
        .unwrap();
    assert_stock_written_last("a reserve", &statement_log()[before..]);

    let before = statement_log().len();
    let commit_answer = h.commit(&kept).await.unwrap();
    assert_stock_written_last("a commit", &statement_log()[before..]);
    assert_last_stock_write_goes_with_the_key("a commit", &statement_log()[before..], &h);
    assert_read_with_the_state_change(&statement_log()[before..], &h);

    let before = statement_log().len();
    let release_answer = h.release(&dropped).await.unwrap();
    assert_stock_written_last("a release", &statement_log()[before..]);
    assert_last_stock_write_goes_with_the_key("a release", &statement_log()[before..], &h);
    assert_read_with_the_state_change(&statement_log()[before..], &h);

    // What the handlers answered is what they stored.
    assert_eq!(commit_answer, h.reservation(&kept).await);
    assert_eq!(commit_answer.lines.len(), 2);
    assert_eq!(release_answer, h.reservation(&dropped).await);
    let committed = h.reservation(&kept).await;
    assert_eq!(committed.state(), ReservationState::Committed);
    assert_eq!(
        allocations(&committed),
        [
            ("PLENTY", "west", 2),
            ("SPLIT", "east", 40),
            ("SPLIT", "west", 1)
        ]
    );
    assert_eq!(
        h.reservation(&dropped).await.state(),
        ReservationState::Released
    );
    assert_eq!(
        reserved(&h, "PLENTY").await,
        [("west".to_owned(), 0)],
        "committed units left, released ones returned"
    );
}

/// Locks that sessions of this test's Postgres database wait for (a row lock is waited for as
/// the holder's transaction id, which names no database).
async fn lock_waits(db: &Db) -> i64 {
    let mut tx = db.begin_read().await.unwrap();
    let waits = on_backend!(&mut tx, conn => {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid IN \
             (SELECT pid FROM pg_stat_activity WHERE datname = current_database())",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap()
    });
    tx.rollback().await.unwrap();
    waits
}

#[tokio::test]
async fn a_reservation_whose_split_changed_under_it_starts_over_and_stores_the_new_split() {
    if testing::backend() == Backend::Sqlite {
        // SQLite runs one writer at a time: nothing changes between a reservation's read of
        // its stock and its compare-and-set.
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let h = Arc::new(harness().await);
    // Another writer takes one unit of the first warehouse and holds the row.
    let mut other = h.db.begin().await.unwrap();
    on_backend!(&mut other, conn => {
        sqlx::query(
            "UPDATE stock SET reserved = reserved + 1, version = version + 1 \
             WHERE sku = 'SPLIT' AND warehouse_id = 'east'",
        )
        .execute(&mut *conn)
        .await
        .unwrap();
    });
    // This reservation read 40 free units there, wrote its split (all 40 from east) and now
    // waits on the row.
    let checkout = rid();
    let reserving = tokio::spawn({
        let (h, checkout) = (h.clone(), checkout.clone());
        async move { h.reserve(&checkout, vec![line("SPLIT", 40)], None).await }
    });
    let waited = async {
        while lock_waits(&h.db).await == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), waited)
        .await
        .expect("the reservation waits on the stock row");
    other.commit().await.unwrap();

    // Its compare-and-set lost; east has 39 now, so the split is 39 + 1 and the written one
    // no longer holds.
    let made = reserving.await.unwrap().unwrap();
    assert_eq!(
        allocations(&made),
        [("SPLIT", "east", 39), ("SPLIT", "west", 1)]
    );
    assert_eq!(h.reservation(&checkout).await, made);
    assert_eq!(
        reserved(&h, "SPLIT").await,
        [("east".to_owned(), 40), ("west".to_owned(), 1)]
    );
    assert!(h.api.reserve_stats().conflicts.load(Ordering::Relaxed) >= 1);
}
