//! The conformance suite on PostgreSQL: each test gets a database of its own
//! on the server `CI_TEST_POSTGRES_URL` names (`scripts/postgres.sh` starts a
//! throwaway one and prints its URL), opened twice, as two replicas would.

use ci_persistence::{Store, StoreOptions};
use ci_testkit::postgres::ScratchDatabase;

async fn two_handles() -> (Store, Store, ScratchDatabase) {
    let scratch = ScratchDatabase::create("conformance")
        .await
        .expect("create a test database");
    let a = Store::open_url(scratch.url(), StoreOptions::default())
        .await
        .expect("open a");
    let b = Store::open_url(scratch.url(), StoreOptions::default())
        .await
        .expect("open b");
    (a, b, scratch)
}

ci_persistence::conformance_suite!(|| two_handles());
