//! Migrations apply cleanly, and a second time as a no-op, for every role.

use checkout::launch::open_database;
use checkout::role::Role;
use checkout_kit::db::{Db, PoolConfig};
use checkout_kit::testing::TestDatabase;

async fn applied(db: &Db) -> Vec<i64> {
    let sql = "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";
    match db {
        Db::Sqlite(pool, ..) => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap(),
        Db::Postgres(pool, _) => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap(),
    }
}

#[tokio::test]
async fn migrations_apply_once_and_again_as_a_no_op() {
    for role in Role::ALL {
        let database = TestDatabase::new(role.name());
        let pool = PoolConfig::default();

        let db = open_database(role, database.url(), &pool).await.unwrap();
        let first = applied(&db).await;
        let expected: Vec<i64> = role.migrations().sqlite.iter().map(|m| m.version).collect();
        assert_eq!(first, expected, "{role}: every migration applied");
        db.close().await;

        let db = open_database(role, database.url(), &pool).await.unwrap();
        assert_eq!(
            applied(&db).await,
            first,
            "{role}: second run changes nothing"
        );
        db.close().await;
    }
}

#[test]
fn both_backends_have_the_same_migration_versions() {
    for role in Role::ALL {
        let versions =
            |m: &sqlx::migrate::Migrator| m.iter().map(|m| m.version).collect::<Vec<_>>();
        let set = role.migrations();
        assert_eq!(versions(&set.sqlite), versions(&set.postgres), "{role}");
        assert!(!versions(&set.sqlite).is_empty(), "{role} has migrations");
    }
}
