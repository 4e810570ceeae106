//! The idempotency rules, on the backend the test run picks.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use checkout_proto::cart::{AddItemRequest, Cart, CartLine};
use tonic::{Code, Status};

use super::*;
use crate::db::{Db, Statements, Tx};
use crate::on_backend;
use crate::status::{Rejection, reason_of};
use crate::testing::TestDatabase;

const SCOPE: &str = "/checkout.cart.v1.CartService/AddItem";

fn request(request_id: &str, quantity: i64) -> AddItemRequest {
    AddItemRequest {
        request_id: request_id.to_owned(),
        cart_id: "cart-1".to_owned(),
        customer_id: "customer-1".to_owned(),
        sku: "SKU-1".to_owned(),
        quantity,
    }
}

fn answer(quantity: i64) -> Cart {
    Cart {
        cart_id: "cart-1".to_owned(),
        lines: vec![CartLine {
            sku: "SKU-1".to_owned(),
            quantity,
            ..CartLine::default()
        }],
        ..Cart::default()
    }
}

async fn setup(config: IdempotencyConfig) -> (TestDatabase, Db, Idempotency) {
    let (database, db) = TestDatabase::with_scratch_table(
        "idem",
        "CREATE TABLE effects (id TEXT NOT NULL, note TEXT NOT NULL)",
    )
    .await;
    let layer = Idempotency::new(db.clone(), config);
    (database, db, layer)
}

async fn record_effect(tx: &mut Tx, id: &str) -> Result<(), Status> {
    on_backend!(tx, conn => {
        sqlx::query("INSERT INTO effects (id, note) VALUES ($1, 'x')")
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(|e| crate::status::internal(&e))?;
    });
    Ok(())
}

/// Rows of a table, read in one statement.
async fn count(db: &Db, table: &str) -> i64 {
    let mut tx = db.single_read().await.unwrap();
    let n: i64 = on_backend!(&mut tx, conn => {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut *conn)
            .await
            .unwrap()
    });
    tx.rollback().await.unwrap();
    n
}

async fn effects(db: &Db) -> i64 {
    count(db, "effects").await
}

async fn keys(db: &Db) -> i64 {
    count(db, "idempotency_keys").await
}

/// A handler as services write one: one database effect, one answer.
async fn add_item(layer: &Idempotency, request: &AddItemRequest) -> Result<Cart, Status> {
    let key = Key::new(SCOPE, request)?;
    let quantity = request.quantity;
    crate::idempotent!(layer, key, |tx| {
        record_effect(tx, "add").await?;
        Ok(answer(quantity))
    })
}

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn a_repeated_request_replays_the_first_answer_with_one_effect() {
    let (_database, db, layer) = setup(IdempotencyConfig::default()).await;
    let request_id = id();
    let first = add_item(&layer, &request(&request_id, 2)).await.unwrap();
    let second = add_item(&layer, &request(&request_id, 2)).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(effects(&db).await, 1);

    // Another spelling of the same UUID is the same key.
    let upper = request_id.to_uppercase();
    assert_eq!(add_item(&layer, &request(&upper, 2)).await.unwrap(), first);
    assert_eq!(effects(&db).await, 1);

    // A new request id is a new request.
    add_item(&layer, &request(&id(), 2)).await.unwrap();
    assert_eq!(effects(&db).await, 2);
}

#[tokio::test]
async fn reuse_with_a_different_request_is_refused_and_changes_nothing() {
    let (_database, db, layer) = setup(IdempotencyConfig::default()).await;
    let request_id = id();
    add_item(&layer, &request(&request_id, 2)).await.unwrap();
    let refused = add_item(&layer, &request(&request_id, 3))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(reason_of(&refused).as_deref(), Some(KEY_REUSED));
    assert_eq!(
        crate::status::fields_of(&refused),
        vec!["request_id".to_owned()]
    );
    assert_eq!(effects(&db).await, 1);
}

#[tokio::test]
async fn a_request_id_that_is_not_a_uuid_is_refused_by_field() {
    let (_database, db, layer) = setup(IdempotencyConfig::default()).await;
    for bad in [
        "",
        "42",
        "not-a-uuid",
        "123e4567-e89b-12d3-a456-42661417400",
    ] {
        let refused = add_item(&layer, &request(bad, 1)).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{bad:?}");
        assert_eq!(
            crate::status::fields_of(&refused),
            vec!["request_id".to_owned()]
        );
    }
    assert_eq!(effects(&db).await, 0);
    assert_eq!(keys(&db).await, 0);
}

#[tokio::test]
async fn business_errors_are_stored_and_replayed_byte_for_byte_without_their_changes() {
    let (_database, db, layer) = setup(IdempotencyConfig::default()).await;
    let request = request(&id(), 1);
    let refuse = || async {
        let key = Key::new(SCOPE, &request)?;
        let result: Result<Cart, Status> = crate::idempotent!(layer, key, |tx| {
            // A partial change, then a refusal: the change must not survive.
            record_effect(tx, "partial").await?;
            Err(
                Rejection::new(Code::FailedPrecondition, "CART_NOT_EDITABLE", "locked")
                    .meta("cart_id", "cart-1")
                    .into_status(),
            )
        });
        result
    };
    let first = refuse().await.unwrap_err();
    let second = refuse().await.unwrap_err();
    assert_eq!(first.code(), Code::FailedPrecondition);
    assert_eq!(second.code(), first.code());
    assert_eq!(second.message(), first.message());
    assert_eq!(second.details(), first.details());
    assert_eq!(reason_of(&second).as_deref(), Some("CART_NOT_EDITABLE"));
    assert_eq!(effects(&db).await, 0);
    assert_eq!(keys(&db).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_overtaken_by_a_duplicate_answers_what_the_duplicate_stored() {
    let (_database, db, layer) = setup(IdempotencyConfig::default()).await;
    let request = request(&id(), 1);
    let key = Key::new(SCOPE, &request).unwrap();
    let mut duplicate = None;
    let refused: Result<Cart, Status> = async {
        crate::idempotent!(layer, key, |tx| {
            record_effect(tx, "partial").await?;
            // A duplicate arrives while this attempt runs: on SQLite it queues at the write gate
            // and runs the moment this attempt's refusal rolls back; on Postgres it runs beside
            // this attempt and commits first. Either way it stores its answer before the
            // refusal is stored.
            let (layer, request) = (layer.clone(), request.clone());
            duplicate = Some(tokio::spawn(
                async move { add_item(&layer, &request).await },
            ));
            tokio::time::sleep(Duration::from_millis(300)).await;
            Err(
                Rejection::new(Code::FailedPrecondition, "CART_NOT_EDITABLE", "locked")
                    .into_status(),
            )
        })
    }
    .await;
    let duplicate = duplicate.unwrap().await.unwrap().unwrap();
    assert_eq!(duplicate, answer(1));
    // One key, one answer: the refused attempt reports what the key now holds.
    assert_eq!(refused.unwrap(), duplicate);
    assert_eq!(add_item(&layer, &request).await.unwrap(), duplicate);
    assert_eq!(effects(&db).await, 1);
    assert_eq!(keys(&db).await, 1);
}

#[tokio::test]
async fn transient_failures_are_not_stored_so_a_retry_runs_again() {
    let (_database, db, layer) = setup(IdempotencyConfig::default()).await;
    let request = request(&id(), 1);
    let attempt = |fail: bool| {
        let request = request.clone();
        let layer = layer.clone();
        async move {
            let key = Key::new(SCOPE, &request)?;
            let result: Result<Cart, Status> = crate::idempotent!(layer, key, |tx| {
                record_effect(tx, "attempt").await?;
                if fail {
                    Err(Status::unavailable("downstream hiccup"))
                } else {
                    Ok(answer(1))
                }
            });
            result
        }
    };
    assert_eq!(attempt(true).await.unwrap_err().code(), Code::Unavailable);
    assert_eq!(effects(&db).await, 0);
    assert_eq!(keys(&db).await, 0);
    attempt(false).await.unwrap();
    assert_eq!(effects(&db).await, 1);
}

#[tokio::test]
async fn a_repeat_answers_what_was_stored_whatever_its_handler_does_now() {
    let (_database, db, layer) = setup(IdempotencyConfig::default()).await;
    let request = request(&id(), 2);
    let first = add_item(&layer, &request).await.unwrap();
    // The handler runs again for a repeat (the key is looked at only when the answer is
    // stored): a transient failure or a refusal now must not replace the stored answer.
    let now_failing = [
        Status::unavailable("downstream hiccup"),
        Status::aborted("version moved"),
        Rejection::new(Code::FailedPrecondition, "CART_NOT_EDITABLE", "locked").into_status(),
    ];
    for failure in now_failing {
        let key = Key::new(SCOPE, &request).unwrap();
        let repeat: Result<Cart, Status> = async {
            crate::idempotent!(layer, key, |tx| {
                record_effect(tx, "repeat").await?;
                Err(failure.clone())
            })
        }
        .await;
        assert_eq!(repeat.unwrap(), first, "after {failure:?}");
    }
    assert_eq!(effects(&db).await, 1);
    assert_eq!(keys(&db).await, 1);
}

#[tokio::test]
async fn an_expired_key_not_yet_collected_is_taken_for_a_new_request() {
    // Long enough that the new request's repeat below comes well within it even on a loaded
    // machine (at 100 ms a CI run once saw the repeat's key expire too, and run a third time).
    let retention = Duration::from_secs(1);
    let config = IdempotencyConfig {
        retention,
        ..IdempotencyConfig::default()
    };
    let (_database, db, layer) = setup(config).await;
    let request_id = id();
    assert_eq!(
        add_item(&layer, &request(&request_id, 1)).await.unwrap(),
        answer(1)
    );
    tokio::time::sleep(retention + Duration::from_millis(200)).await;
    // Still stored, but forgotten: a different request under the same id runs and is stored.
    assert_eq!(keys(&db).await, 1);
    assert_eq!(
        add_item(&layer, &request(&request_id, 7)).await.unwrap(),
        answer(7)
    );
    assert_eq!(
        add_item(&layer, &request(&request_id, 7)).await.unwrap(),
        answer(7)
    );
    assert_eq!(effects(&db).await, 2);
    assert_eq!(keys(&db).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_duplicates_make_one_effect() {
    let (_database, db, layer) = setup(IdempotencyConfig::default()).await;
    let request = Arc::new(request(&id(), 5));
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (layer, request, barrier) = (layer.clone(), request.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                add_item(&layer, &request).await
            })
        })
        .collect();
    let mut answers = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(cart) => {
                assert_eq!(cart, answer(5));
                answers += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Aborted, "{status:?}");
                assert_eq!(reason_of(&status).as_deref(), Some(IN_PROGRESS));
            }
        }
    }
    assert!(answers >= 1);
    assert_eq!(effects(&db).await, 1);
    assert_eq!(keys(&db).await, 1);
}

#[tokio::test]
async fn a_replay_after_a_restart_is_identical() {
    let (database, db, layer) = setup(IdempotencyConfig::default()).await;
    let request = request(&id(), 3);
    let first = add_item(&layer, &request).await.unwrap();
    db.close().await;

    // A new pool and layer over the same database, as a restarted server has.
    let reopened = Db::connect(database.url(), &crate::db::PoolConfig::default())
        .await
        .unwrap();
    let layer = Idempotency::new(reopened.clone(), IdempotencyConfig::default());
    let again = add_item(&layer, &request).await.unwrap();
    assert_eq!(
        prost::Message::encode_to_vec(&again),
        prost::Message::encode_to_vec(&first)
    );
    assert_eq!(effects(&reopened).await, 1);
}

fn short_locks() -> IdempotencyConfig {
    IdempotencyConfig {
        lock_ttl: Duration::from_millis(200),
        ..IdempotencyConfig::default()
    }
}

#[tokio::test]
async fn a_live_lock_is_refused_and_a_stale_one_taken_over_at_its_recovery_point() {
    let (_database, db, layer) = setup(short_locks()).await;
    let request = request(&id(), 1);
    let key = || Key::new(SCOPE, &request).unwrap();

    let Started::Run(mut first, mut tx) = layer.start::<Cart>(key(), STARTED).await.unwrap() else {
        panic!("a new key runs");
    };
    assert_eq!(first.recovery_point(), STARTED);
    let processor_key = first.external_key();
    record_effect(&mut tx, "intent").await.unwrap();
    first
        .checkpoint(&mut tx, "intent_recorded", Some(b"amount=100"))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // While the holder's lock is live, a duplicate is told to come back later.
    let busy = layer.start::<Cart>(key(), STARTED).await.unwrap_err();
    assert_eq!(busy.code(), Code::Aborted);
    assert_eq!(reason_of(&busy).as_deref(), Some(IN_PROGRESS));

    // The holder "crashes"; once its lock is stale the next caller resumes where it stopped,
    // with the same key for the external system.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Started::Run(second, takeover) = layer.start::<Cart>(key(), STARTED).await.unwrap() else {
        panic!("a stale key is taken over");
    };
    takeover.commit().await.unwrap();
    assert_eq!(second.recovery_point(), "intent_recorded");
    assert_eq!(second.recovery_data(), Some(&b"amount=100"[..]));
    assert_eq!(second.external_key(), processor_key);

    // The old holder wakes up: its writes are fenced off.
    let late = first.finish(db.begin().await.unwrap(), Ok(answer(9))).await;
    assert_eq!(late.unwrap_err().code(), Code::Aborted);

    let done = second
        .finish(db.begin().await.unwrap(), Ok(answer(1)))
        .await
        .unwrap();
    let Started::Replay(replayed) = layer.start::<Cart>(key(), STARTED).await.unwrap() else {
        panic!("a done key replays");
    };
    assert_eq!(replayed.unwrap(), done);
    assert_eq!(effects(&db).await, 1);
}

#[tokio::test]
async fn a_new_key_is_claimed_at_its_intent_and_a_takeover_resumes_there() {
    let (_database, _db, layer) = setup(short_locks()).await;
    let request = request(&id(), 1);
    let key = || Key::new(SCOPE, &request).unwrap();

    // A claim rolled back with the caller's write leaves nothing behind.
    let Started::Run(_, claim) = layer.start::<Cart>(key(), "requested").await.unwrap() else {
        panic!("a new key runs");
    };
    claim.rollback().await.unwrap();

    let Started::Run(first, claim) = layer.start::<Cart>(key(), "requested").await.unwrap() else {
        panic!("a rolled-back claim left no key");
    };
    assert_eq!(
        (first.recovery_point(), first.resumed()),
        ("requested", false)
    );
    claim.commit().await.unwrap();

    // The holder "crashes" with no checkpoint of its own: the claim recorded its intent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Started::Run(second, takeover) = layer.start::<Cart>(key(), STARTED).await.unwrap() else {
        panic!("a stale key is taken over");
    };
    takeover.commit().await.unwrap();
    assert_eq!(
        (second.recovery_point(), second.resumed()),
        ("requested", true)
    );
    assert_eq!(second.external_key(), first.external_key());
}

/// A note in `effects`, for [`Idempotency::start_with`] to send with the claim.
fn note(id: &str) -> Statements {
    Statements::new().then(
        "INSERT INTO effects (id, note) VALUES ($1, 'with the claim') RETURNING id",
        vec![id.into()],
    )
}

#[tokio::test]
async fn statements_sent_with_a_new_claim_are_answered_and_otherwise_rolled_back() {
    crate::testing::statement_log();
    let (_database, db, layer) = setup(short_locks()).await;
    let request = request(&id(), 1);
    let key = || Key::new(SCOPE, &request).unwrap();

    // A new key: the claim and the note in one hand-off, the note answered.
    let before = crate::testing::statement_log().len();
    let (Started::Run(first, claim), Some(answers)) = layer
        .start_with::<Cart>(key(), "requested", note("first"))
        .await
        .unwrap()
    else {
        panic!("a new key runs with its statements answered");
    };
    assert_eq!(
        answers[0].rows::<(String,)>().unwrap(),
        vec![("first".to_owned(),)]
    );
    assert_eq!(
        (first.recovery_point(), first.resumed()),
        ("requested", false)
    );
    claim.commit().await.unwrap();
    if db.backend() == crate::db::Backend::Sqlite {
        crate::testing::assert_one_hand_off(
            &crate::testing::statement_log()[before..],
            &["'with the claim'", "INSERT INTO idempotency_keys"],
            "'with the claim'",
            1,
        );
    }
    assert_eq!((effects(&db).await, keys(&db).await), (1, 1));

    // Held by a live claim: refused, and the note sent with the claim is rolled back.
    let busy = layer
        .start_with::<Cart>(key(), STARTED, note("busy"))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&busy).as_deref(), Some(IN_PROGRESS));
    assert_eq!(effects(&db).await, 1);

    // Taken over once stale: the claim is made the long way, with no answers (the caller runs
    // its statements itself), and the note is rolled back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (Started::Run(second, takeover), None) = layer
        .start_with::<Cart>(key(), STARTED, note("takeover"))
        .await
        .unwrap()
    else {
        panic!("a stale key is taken over, without answers");
    };
    assert_eq!(
        (second.recovery_point(), second.resumed()),
        ("requested", true)
    );
    takeover.commit().await.unwrap();
    assert_eq!((effects(&db).await, keys(&db).await), (1, 1));
}

#[tokio::test]
async fn a_transient_external_failure_unlocks_for_an_immediate_retry() {
    let (_database, db, layer) = setup(IdempotencyConfig::default()).await;
    let request = request(&id(), 1);
    let key = || Key::new(SCOPE, &request).unwrap();
    let Started::Run(first, claim) = layer.start::<Cart>(key(), STARTED).await.unwrap() else {
        panic!("a new key runs");
    };
    claim.commit().await.unwrap();
    let failed = first
        .finish(
            db.begin().await.unwrap(),
            Err(Status::unavailable("processor timeout")),
        )
        .await;
    assert_eq!(failed.unwrap_err().code(), Code::Unavailable);
    // No waiting for the lock: the retry resumes at once.
    assert!(matches!(
        layer.start::<Cart>(key(), STARTED).await.unwrap(),
        Started::Run(..)
    ));
}

#[tokio::test]
async fn expired_keys_are_collected_in_batches_and_then_forgotten() {
    let config = IdempotencyConfig {
        retention: Duration::from_millis(100),
        collect_batch: 2,
        ..IdempotencyConfig::default()
    };
    let (_database, db, layer) = setup(config).await;
    let reused = id();
    add_item(&layer, &request(&reused, 1)).await.unwrap();
    for _ in 0..4 {
        add_item(&layer, &request(&id(), 1)).await.unwrap();
    }
    // A claim still held under a live lock is never collected.
    let held = request(&id(), 1);
    let Started::Run(_held, claim) = layer
        .start::<Cart>(Key::new(SCOPE, &held).unwrap(), STARTED)
        .await
        .unwrap()
    else {
        panic!("a new key runs");
    };
    claim.commit().await.unwrap();
    assert_eq!(keys(&db).await, 6);
    tokio::time::sleep(Duration::from_millis(150)).await;

    assert_eq!(layer.collect_expired().await.unwrap(), 2);
    assert_eq!(layer.collect_expired().await.unwrap(), 2);
    assert_eq!(layer.collect_expired().await.unwrap(), 1);
    assert_eq!(layer.collect_expired().await.unwrap(), 0);
    assert_eq!(keys(&db).await, 1);

    // After retention a key is new again, even for a different request.
    add_item(&layer, &request(&reused, 7)).await.unwrap();
    assert_eq!(effects(&db).await, 6);
}

#[tokio::test]
async fn the_collector_task_runs_until_shutdown() {
    let config = IdempotencyConfig {
        retention: Duration::from_millis(50),
        collect_interval: Duration::from_millis(50),
        ..IdempotencyConfig::default()
    };
    let (_database, db, layer) = setup(config).await;
    add_item(&layer, &request(&id(), 1)).await.unwrap();
    let (trigger, shutdown) = crate::shutdown::Shutdown::new();
    let collector = layer.spawn_collector(shutdown);
    tokio::time::timeout(Duration::from_secs(5), async {
        while keys(&db).await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the collector deletes the expired key");
    trigger.fire();
    tokio::time::timeout(Duration::from_secs(5), collector)
        .await
        .expect("the collector stops on shutdown")
        .unwrap();
}

#[test]
fn the_fingerprint_ignores_only_the_request_id() {
    let a = Key::new(SCOPE, &request(&id(), 1)).unwrap();
    let b = Key::new(SCOPE, &request(&id(), 1)).unwrap();
    let c = Key::new(SCOPE, &request(&id(), 2)).unwrap();
    let other_rpc = Key::new(
        "/checkout.cart.v1.CartService/UpdateItem",
        &request(&id(), 1),
    )
    .unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_ne!(a.fingerprint(), c.fingerprint());
    assert_ne!(a.fingerprint(), other_rpc.fingerprint());
}

/// One run of an effect with a unique row, as [`Idempotency::in_one_statement`] runs it: on
/// SQLite a note first, then the unique row, so a refused row must take the note back with it.
async fn in_one_statement(layer: &Idempotency, request_id: &str, row: &str) -> bool {
    static POSTGRES: LazyLock<String> = LazyLock::new(|| {
        in_one_statement_sql("effect AS (INSERT INTO unique_effects (id) VALUES ($10)) SELECT 1")
    });
    static SQLITE: LazyLock<String> = LazyLock::new(|| {
        in_one_hand_off_sql(
            "INSERT INTO effects (id, note) VALUES (?, 'in one go'); \
             INSERT INTO unique_effects (id) VALUES (?)",
        )
    });
    let key = Key::new(SCOPE, &request(request_id, 2)).unwrap();
    layer
        .in_one_statement(
            &key,
            &answer(2),
            (POSTGRES.as_str(), |query| query.bind(row)),
            (SQLITE.as_str(), |query| query.bind(row).bind(row)),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn in_one_statement_writes_the_effect_with_its_key_done_or_nothing() {
    let (_database, db, layer) = setup(IdempotencyConfig::default()).await;
    let mut tx = db.begin().await.unwrap();
    on_backend!(&mut tx, conn => {
        sqlx::query("CREATE TABLE unique_effects (id TEXT PRIMARY KEY)")
            .execute(&mut *conn)
            .await
            .unwrap();
    });
    tx.commit().await.unwrap();
    let (first, second) = (id(), id());

    assert!(in_one_statement(&layer, &first, "a").await);
    let sqlite_notes = i64::from(db.backend() == crate::db::Backend::Sqlite);
    assert_eq!(
        (
            keys(&db).await,
            count(&db, "unique_effects").await,
            effects(&db).await
        ),
        (1, 1, sqlite_notes)
    );
    // The key is done with the answer: the usual way replays it and its handler's change goes.
    assert_eq!(
        add_item(&layer, &request(&first, 2)).await.unwrap(),
        answer(2)
    );
    assert_eq!(effects(&db).await, sqlite_notes);
    // The key known already: nothing is written.
    assert!(!in_one_statement(&layer, &first, "b").await);
    // The effect's row known already: the new key is not stored either, nor (on SQLite) the
    // note written before the refused row.
    assert!(!in_one_statement(&layer, &second, "a").await);
    assert_eq!(
        (
            keys(&db).await,
            count(&db, "unique_effects").await,
            effects(&db).await
        ),
        (1, 1, sqlite_notes)
    );
}

/// Adds a line through [`idempotent!`], its effect written by [`Tx::write_last`].
async fn add_item_held(layer: &Idempotency, request: &AddItemRequest) -> Result<Cart, Status> {
    let key = Key::new(SCOPE, request)?;
    idempotent!(layer, key, |tx| {
        tx.write_last(
            "INSERT INTO effects (id, note) VALUES ($1, 'held')".to_owned(),
            vec![request.request_id.as_str().into()],
        )
        .await
        .map_err(|e| status::database(&e))?;
        Ok(answer(request.quantity))
    })
}

#[tokio::test]
async fn a_held_write_goes_with_the_key_and_is_rolled_back_with_a_repeat() {
    crate::testing::statement_log();
    let (_database, db, layer) = setup(IdempotencyConfig::default()).await;
    let request = request(&id(), 3);
    let before = crate::testing::statement_log().len();
    assert_eq!(add_item_held(&layer, &request).await.unwrap(), answer(3));
    let logged = crate::testing::statement_log()[before..].to_vec();
    assert_eq!((effects(&db).await, keys(&db).await), (1, 1));
    if db.backend() == crate::db::Backend::Sqlite {
        assert!(
            logged.iter().any(|s| s.contains("INSERT INTO effects ")
                && s.contains("INSERT INTO idempotency_keys ")),
            "the held write and the key in one hand-off: {logged:?}"
        );
    }
    // A repeat runs its handler in vain: the key is remembered, so its held write goes too.
    assert_eq!(add_item_held(&layer, &request).await.unwrap(), answer(3));
    assert_eq!((effects(&db).await, keys(&db).await), (1, 1));
}

#[tokio::test]
async fn a_held_write_commits_with_its_transaction_and_a_rollback_drops_it() {
    let (_database, db, _layer) = setup(IdempotencyConfig::default()).await;
    let hold = async |note: &str| {
        let mut tx = db.begin().await.unwrap();
        tx.write_last(
            "INSERT INTO effects (id, note) VALUES ($1, $2)".to_owned(),
            vec![id().as_str().into(), note.into()],
        )
        .await
        .unwrap();
        // A second held write runs the first: both keep their order.
        tx.write_last(
            "INSERT INTO effects (id, note) VALUES ($1, $2)".to_owned(),
            vec![id().as_str().into(), Some(note).into()],
        )
        .await
        .unwrap();
        tx
    };
    hold("rolled back").await.rollback().await.unwrap();
    assert_eq!(effects(&db).await, 0);
    hold("committed").await.commit().await.unwrap();
    assert_eq!(effects(&db).await, 2);
}
