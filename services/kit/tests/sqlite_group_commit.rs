//! The SQLite write gate's shared commits: writers that queued together are made durable by one
//! COMMIT, none hears "committed" before it, and one writer's rollback or failure touches only
//! its own changes. In a test binary of its own because the commit counter is process-wide.

use std::collections::BTreeSet;
use std::time::Duration;

use checkout_kit::db::{self, Db, PoolConfig, Tx};
use checkout_kit::on_backend;

async fn sqlite(dir: &tempfile::TempDir, schema: &[&str]) -> Db {
    let url = format!("sqlite://{}/x.db", dir.path().display());
    let db = Db::connect(&url, &PoolConfig::default()).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    for sql in schema {
        exec(&mut tx, sql).await.unwrap();
    }
    tx.commit().await.unwrap();
    db
}

async fn exec(tx: &mut Tx, sql: &str) -> Result<(), sqlx::Error> {
    on_backend!(tx, conn => sqlx::query(sql).execute(&mut *conn).await.map(drop))
}

/// The values committed, read on a pooled connection (not the writer's).
async fn stored(db: &Db) -> BTreeSet<i64> {
    let mut tx = db.begin_read().await.unwrap();
    let xs: Vec<i64> = on_backend!(&mut tx, conn => {
        sqlx::query_scalar("SELECT x FROM t").fetch_all(&mut *conn).await.unwrap()
    });
    tx.rollback().await.unwrap();
    xs.into_iter().collect()
}

/// Lets spawned writers reach the gate and queue behind the turn the test holds.
async fn let_writers_queue() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

// One test, phase by phase: the commit counter is process-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_queued_together_share_one_commit_and_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite(
        &dir,
        &[
            "CREATE TABLE t (x INTEGER PRIMARY KEY)",
            "CREATE TABLE parent (id INTEGER PRIMARY KEY)",
            "CREATE TABLE child (pid INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)",
        ],
    )
    .await;

    // Phase 1: 31 writers queue while a 32nd holds the turn; when it commits, all of them are
    // made durable together, and each sees its row from another connection once told so.
    let before = db::commits_so_far();
    let mut leader = db.begin().await.unwrap();
    exec(&mut leader, "INSERT INTO t (x) VALUES (0)")
        .await
        .unwrap();
    let writers: Vec<_> = (1..32)
        .map(|x| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut tx = db.begin().await?;
                exec(&mut tx, &format!("INSERT INTO t (x) VALUES ({x})")).await?;
                tx.commit().await?;
                // Durable and visible the moment the commit returns.
                Ok::<bool, db::DbError>(stored(&db).await.contains(&x))
            })
        })
        .collect();
    let_writers_queue().await;
    leader.commit().await.unwrap();
    for w in writers {
        assert!(
            w.await.unwrap().unwrap(),
            "a writer's row was missing after its commit"
        );
    }
    let commits = db::commits_so_far() - before;
    assert!(commits <= 2, "32 queued writers took {commits} commits");
    assert_eq!(stored(&db).await, (0..32).collect());

    // Phase 2: writers that roll back, return early or fail a statement lose only their own
    // rows; the rest of the batch commits.
    exec_alone(&db, "DELETE FROM t").await;
    let mut leader = db.begin().await.unwrap();
    exec(&mut leader, "INSERT INTO t (x) VALUES (0)")
        .await
        .unwrap();
    let mut writers = Vec::new();
    for x in 1..=4_i64 {
        let db = db.clone();
        writers.push(tokio::spawn(async move {
            let mut tx = db.begin().await?;
            exec(&mut tx, &format!("INSERT INTO t (x) VALUES ({})", 10 * x)).await?;
            match x {
                1 => tx.commit().await?,
                2 => tx.rollback().await?,
                // Dropped unfinished, as by a handler returning early.
                3 => drop(tx),
                _ => {
                    // A failed statement, then a new row in the same transaction.
                    assert!(exec(&mut tx, "INSERT INTO t (x) VALUES (0)").await.is_err());
                    exec(&mut tx, "INSERT INTO t (x) VALUES (41)").await?;
                    tx.commit().await?;
                }
            }
            Ok::<(), db::DbError>(())
        }));
        // In line one after another, so each joins the transaction the others left open.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let_writers_queue().await;
    leader.commit().await.unwrap();
    for w in writers {
        w.await.unwrap().unwrap();
    }
    assert_eq!(stored(&db).await, BTreeSet::from([0, 10, 40, 41]));

    // Phase 3: a COMMIT that fails fails every writer of it, and stores none of them. (One
    // writer breaking a deferred constraint is the only way to make SQLite refuse a COMMIT
    // here; no schema of this system defers a constraint.)
    exec_alone(&db, "INSERT INTO parent (id) VALUES (1)").await;
    let mut leader = db.begin().await.unwrap();
    exec(&mut leader, "INSERT INTO t (x) VALUES (100)")
        .await
        .unwrap();
    let mut writers = Vec::new();
    for sql in [
        "INSERT INTO child (pid) VALUES (1)",
        "INSERT INTO child (pid) VALUES (99)",
    ] {
        let db = db.clone();
        writers.push(tokio::spawn(async move {
            let mut tx = db.begin().await?;
            exec(&mut tx, sql).await?;
            tx.commit().await
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A writer that only reads the batch's changes and rolls back must not answer from them
    // before they are durable: its rollback reports the failed COMMIT too.
    let reader = {
        let db = db.clone();
        tokio::spawn(async move {
            let mut tx = db.begin().await?;
            let seen: i64 = on_backend!(&mut tx, conn => {
                sqlx::query_scalar("SELECT count(*) FROM t WHERE x = 100").fetch_one(&mut *conn).await?
            });
            assert_eq!(seen, 1, "a joiner sees the batch's changes");
            tx.rollback().await
        })
    };
    let_writers_queue().await;
    assert!(leader.commit().await.is_err(), "the leader heard committed");
    for w in writers {
        assert!(w.await.unwrap().is_err(), "a writer heard committed");
    }
    assert!(
        reader.await.unwrap().is_err(),
        "a reader of the lost batch heard nothing of it"
    );
    assert!(!stored(&db).await.contains(&100));
    let mut read = db.begin_read().await.unwrap();
    let children: i64 = on_backend!(&mut read, conn => {
        sqlx::query_scalar("SELECT count(*) FROM child").fetch_one(&mut *conn).await.unwrap()
    });
    read.rollback().await.unwrap();
    assert_eq!(children, 0);
    // The gate is usable afterwards.
    exec_alone(&db, "INSERT INTO t (x) VALUES (101)").await;
    assert!(stored(&db).await.contains(&101));
    db.close().await;
}

async fn exec_alone(db: &Db, sql: &str) {
    let mut tx = db.begin().await.unwrap();
    exec(&mut tx, sql).await.unwrap();
    tx.commit().await.unwrap();
}
