//! The conformance suite on SQLite: two independently opened stores on one
//! fresh file, as the server and the controller would have.

use ci_persistence::DatabaseLocation;
use ci_persistence::{Store, StoreOptions};

async fn two_handles() -> (Store, Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let location = DatabaseLocation::SqliteFile(dir.path().join("nested").join("jobs.db"));
    let a = Store::open_with(&location, StoreOptions::default())
        .await
        .expect("open a");
    let b = Store::open_with(&location, StoreOptions::default())
        .await
        .expect("open b");
    (a, b, dir)
}

ci_persistence::conformance_suite!(|| two_handles());
