//! With many finished sagas stored, the sweeper's query and every listing query still walk an
//! index (their plans say so), and listing pages stay correct.

use checkout_kit::db::{Backend, now_millis};
use checkout_kit::testing::{self, TestDatabase};
use checkout_orchestrator::{checkout_saga, store};

fn step_names() -> Vec<&'static str> {
    checkout_saga::definition(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(1),
    )
    .steps
    .iter()
    .map(|s| s.name)
    .collect()
}

#[tokio::test]
async fn sweeper_and_listing_queries_stay_on_their_indexes_with_many_finished_sagas() {
    let database = TestDatabase::new("scaling");
    let db = database
        .migrated(&checkout_orchestrator::MIGRATIONS)
        .await
        .unwrap();
    let stored = 20_000;
    let mut tx = db.begin().await.unwrap();
    store::preload_finished(&mut tx, stored, &step_names(), now_millis())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    store::analyze(&mut tx).await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = db.begin_read().await.unwrap();
    let plans = store::query_plans(&mut tx).await.unwrap();
    assert_eq!(plans.len(), 5);
    for (name, lines) in &plans {
        let plan = lines.join("\n");
        match testing::backend() {
            Backend::Sqlite => {
                assert!(
                    plan.contains("USING INDEX") || plan.contains("USING COVERING INDEX"),
                    "{name}:\n{plan}"
                );
                assert!(
                    !lines.iter().any(|l| l.trim() == "SCAN sagas"),
                    "{name}:\n{plan}"
                );
                assert!(!plan.contains("TEMP B-TREE"), "{name} sorts:\n{plan}");
                if name.contains("customer") {
                    // Never a walk over every customer's sagas filtered down to one.
                    assert!(plan.contains("customer_id=?"), "{name}:\n{plan}");
                }
            }
            Backend::Postgres => {
                assert!(plan.contains("Index"), "{name}:\n{plan}");
                // The planner may sort what an index scan found (one customer's few sagas);
                // it never reads the whole table.
                assert!(!plan.contains("Seq Scan on sagas"), "{name}:\n{plan}");
                if name.contains("customer") {
                    assert!(plan.contains("customer_id ="), "{name}:\n{plan}");
                }
            }
        }
    }

    // Pages of one customer, newest first, chained by cursor, with and without a status.
    let customer = "preloaded-customer-7";
    for status in [None, Some("completed")] {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store::list(&mut tx, Some(customer), status, cursor.clone(), 7)
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            let last = page.last().unwrap();
            cursor = Some((last.created_at, last.saga_id.clone()));
            seen.extend(page.into_iter().map(|s| (s.created_at, s.saga_id)));
        }
        assert_eq!(seen.len(), 20, "every seventh-customer saga once");
        assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first");
    }
    assert!(
        store::list(&mut tx, None, Some("running"), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store::due(&mut tx, "replica", now_millis(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    tx.rollback().await.unwrap();
}
