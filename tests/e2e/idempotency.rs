//! The idempotency layer as the running servers use it.

use std::time::Duration;

use checkout::role::Role;
use checkout_kit::db::{Db, PoolConfig};
use checkout_kit::idempotency::IdempotencyConfig;

use crate::helpers::{spawn_system_with, test_settings};

async fn count_keys(db: &Db) -> i64 {
    let sql = "SELECT count(*) FROM idempotency_keys";
    match db {
        Db::Sqlite(pool, ..) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        Db::Postgres(pool, _) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
    }
}

async fn insert_expired_key(db: &Db, request_id: &str) {
    let sql = "INSERT INTO idempotency_keys (scope, request_id, fingerprint, state, \
                 response_code, response_body, recovery_point, lock_token, locked_until, \
                 created_at, completed_at, expires_at) \
               VALUES ('/test/Rpc', $1, $2, 'done', 0, $2, 'started', 't', 0, 0, 0, 1)";
    let fingerprint = vec![0_u8; 32];
    match db {
        Db::Sqlite(pool, ..) => {
            sqlx::query(sql)
                .bind(request_id)
                .bind(&fingerprint)
                .execute(pool)
                .await
                .unwrap();
        }
        Db::Postgres(pool, _) => {
            sqlx::query(sql)
                .bind(request_id)
                .bind(&fingerprint)
                .execute(pool)
                .await
                .unwrap();
        }
    }
}

/// Every server runs the collector of expired keys over its own database.
#[tokio::test]
async fn every_server_collects_its_expired_keys() {
    let mut settings = test_settings();
    settings.idempotency = IdempotencyConfig {
        collect_interval: Duration::from_millis(50),
        ..IdempotencyConfig::default()
    };
    let sys = spawn_system_with(settings).await;
    let mut dbs = Vec::new();
    for role in Role::ALL {
        let db = Db::connect(sys.database_url(role), &PoolConfig::default())
            .await
            .unwrap();
        insert_expired_key(&db, &uuid::Uuid::new_v4().to_string()).await;
        dbs.push((role, db));
    }
    for (role, db) in &dbs {
        tokio::time::timeout(Duration::from_secs(10), async {
            while count_keys(db).await > 0 {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{role} never collected its expired key"));
    }
    for (_, db) in dbs {
        db.close().await;
    }
    sys.system.stop().await.unwrap();
}
