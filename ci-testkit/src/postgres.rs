//! Scratch PostgreSQL databases on the server `CI_TEST_POSTGRES_URL` names
//! (`scripts/postgres.sh` starts a throwaway one and prints its URL): each
//! test or benchmark run gets a fresh, empty database, dropped afterwards.

use sqlx::Connection as _;
use uuid::Uuid;

use crate::error::KitError;

/// The variable naming the PostgreSQL server tests make databases on.
pub const SERVER_URL_VAR: &str = "CI_TEST_POSTGRES_URL";

/// The server URL from [`SERVER_URL_VAR`]; fails the test when unset.
pub fn server_url() -> String {
    std::env::var(SERVER_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{SERVER_URL_VAR} must name a PostgreSQL server: run \
             `export {SERVER_URL_VAR}=$(bash scripts/postgres.sh)` (scripts/test does)"
        )
    })
}

/// The URL of database `name` on the server of `admin_url` (same user,
/// host, port and query; another path).
pub fn database_url(admin_url: &str, name: &str) -> Result<String, KitError> {
    let mut url = reqwest::Url::parse(admin_url)
        .map_err(|e| KitError::Setup(format!("{admin_url:?} is not a database URL: {e}")))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(KitError::Setup(format!(
            "{admin_url:?} is not a postgres:// URL"
        )));
    }
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// The database name of a `postgres://…/name` URL.
pub fn database_name(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    let name = url.path().trim_start_matches('/');
    (!name.is_empty()).then(|| name.to_string())
}

/// Runs one SQL statement on the server of `admin_url` as the user named
/// there (the throwaway server's owner); the rows affected.
pub async fn admin_sql(admin_url: &str, sql: &str) -> Result<u64, KitError> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    let done = sqlx::query(sql).execute(&mut conn).await?;
    conn.close().await.ok();
    Ok(done.rows_affected())
}

/// Makes a fresh database named `<prefix>_<random>` on the server of
/// `admin_url`; its URL.
pub async fn create_database(admin_url: &str, prefix: &str) -> Result<String, KitError> {
    let name = format!("{prefix}_{}", Uuid::new_v4().simple());
    let url = database_url(admin_url, &name)?;
    admin_sql(admin_url, &format!("CREATE DATABASE \"{name}\"")).await?;
    Ok(url)
}

/// Drops the database of `url` on the server of `admin_url`, ending the
/// connections still open to it.
pub async fn drop_database(admin_url: &str, url: &str) -> Result<(), KitError> {
    let name =
        database_name(url).ok_or_else(|| KitError::Setup(format!("{url:?} names no database")))?;
    admin_sql(
        admin_url,
        &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
    )
    .await?;
    Ok(())
}

/// A database of its own for one test on the server `CI_TEST_POSTGRES_URL`
/// names, dropped when this value goes, so that test runs do not pile
/// databases up on the server (an empty one takes 7 MB).
pub struct ScratchDatabase {
    admin_url: String,
    url: String,
}

impl ScratchDatabase {
    /// A fresh database named `<prefix>_<random>`.
    pub async fn create(prefix: &str) -> Result<Self, KitError> {
        let admin_url = server_url();
        let url = create_database(&admin_url, prefix).await?;
        Ok(ScratchDatabase { admin_url, url })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        // Drop may run inside the test's runtime, which must not be blocked
        // on: the database is dropped from a thread with a runtime of its own.
        let (admin_url, url) = (self.admin_url.clone(), self.url.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime
                .block_on(drop_database(&admin_url, &url))
                .map_err(std::io::Error::other)
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop the test database {}: {e}", self.url);
        }
    }
}

/// The sessions on database `name` that listen for notifications, as
/// (`application_name`, pid): their last statement was a `LISTEN`, which a
/// change listener's connection never follows with another. It tells a test,
/// from the database's side, which processes' change listeners are
/// connected; a session that was ended and opened again has another pid.
pub async fn listening_sessions(
    admin_url: &str,
    name: &str,
) -> Result<Vec<(String, i32)>, KitError> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    let sessions: Vec<(String, i32)> = sqlx::query_as(
        "SELECT application_name, pid FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid() AND query LIKE 'LISTEN %' \
         ORDER BY application_name, pid",
    )
    .bind(name)
    .fetch_all(&mut conn)
    .await?;
    conn.close().await.ok();
    Ok(sessions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_keep_the_server_and_change_the_name() {
        assert_eq!(
            database_url("postgres://ci:ci@127.0.0.1:55432/ci", "e2e_1").ok(),
            Some("postgres://ci:ci@127.0.0.1:55432/e2e_1".to_string())
        );
        assert!(database_url("sqlite:///tmp/x.db", "e2e_1").is_err());
        assert_eq!(
            database_name("postgres://ci:ci@127.0.0.1:55432/e2e_1").as_deref(),
            Some("e2e_1")
        );
        assert_eq!(database_name("postgres://ci:ci@127.0.0.1:55432"), None);
    }
}
