//! Whether the database can serve this build: it answers, and every migration
//! embedded in the binary has been applied to it.
//!
//! A replica's `/ready` asks this, so that a load balancer sends no request to
//! a replica whose database is out of reach or was migrated by nobody yet (a
//! newer binary rolled out before any process of it ran the migrations).

use std::collections::HashSet;

use crate::error::Result;
use crate::store::{migrator, Store};

impl Store {
    /// `Ok(true)` when the database answers and holds every embedded
    /// migration, applied successfully; `Ok(false)` when one is missing or
    /// failed; `Err` when the database does not answer.
    pub async fn schema_is_current(&self) -> Result<bool> {
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.reader)
                .await?;
        let applied: HashSet<i64> = applied.into_iter().collect();
        Ok(migrator(self.backend)
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .all(|m| applied.contains(&m.version)))
    }
}
