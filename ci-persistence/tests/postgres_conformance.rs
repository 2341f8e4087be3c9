//! The conformance suite on PostgreSQL: each test gets a database of its own
//! on the server `CI_TEST_POSTGRES_URL` names (`scripts/postgres.sh` starts a
//! throwaway one and prints its URL), opened twice, as two replicas would.

use ci_persistence::{Store, StoreOptions};
use sqlx::Connection;

async fn two_handles() -> (Store, Store) {
    let base = std::env::var("CI_TEST_POSTGRES_URL")
        .expect("CI_TEST_POSTGRES_URL must name a PostgreSQL server: run `scripts/postgres.sh` and export its URL");
    let name = format!("conformance_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&base)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    let (prefix, _) = base.rsplit_once('/').expect("a database URL");
    let url = format!("{prefix}/{name}");
    let a = Store::open_url(&url, StoreOptions::default())
        .await
        .expect("open a");
    let b = Store::open_url(&url, StoreOptions::default())
        .await
        .expect("open b");
    (a, b)
}

ci_persistence::conformance_suite!(|| two_handles());
