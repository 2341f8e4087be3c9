use std::path::Path;
use std::sync::{Arc, Once};
use std::time::Duration;

use crate::location::DatabaseLocation;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection, Executor};

use crate::change_feed::{ChangeFeed, PollPace};
use crate::error::{Result, StoreError};

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Tuning that differs between deployments and tests.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Connections used for reads (and, on PostgreSQL, for writes too).
    pub max_connections: u32,
    /// How long a SQLite writer waits for another process's write lock.
    pub busy_timeout: Duration,
    /// How often other processes' changes are looked for where the database
    /// cannot push them (SQLite), right after a change.
    pub change_poll_interval: Duration,
    /// How long the SQLite watcher's wait between two looks may grow while
    /// nothing changes: the worst latency of another process's first change
    /// after a quiet spell (a write or a new job subscription of this
    /// process makes it look fast again at once). 25 ms: a queued job, the
    /// controller's first change after a quiet spell, starts at most that
    /// much later, and an idle process looks 40 times a second, not 200.
    pub change_poll_max_interval: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 16,
            busy_timeout: Duration::from_secs(30),
            change_poll_interval: Duration::from_millis(5),
            change_poll_max_interval: Duration::from_millis(25),
        }
    }
}

/// The one storage interface of the service. Cheap to clone; every clone shares
/// the same pools and change feed.
#[derive(Clone)]
pub struct Store {
    pub(crate) reader: AnyPool,
    /// On SQLite a single connection, so this process's writes queue here in
    /// order instead of contending for the file lock; on PostgreSQL the same
    /// pool as `reader`.
    pub(crate) writer: AnyPool,
    pub(crate) backend: Backend,
    pub(crate) feed: Arc<ChangeFeed>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Store {
    /// A write transaction. On SQLite it takes the write lock when it begins
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads before it writes
    /// fails at once with "database is locked" (`SQLITE_BUSY_SNAPSHOT`) when
    /// another process committed in between, since its snapshot is stale and
    /// no busy timeout can wait that out; taken up front, the lock is waited
    /// for like any other. PostgreSQL's row locks need nothing of the kind.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let tx = match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.writer.begin().await?,
        };
        Ok(tx)
    }

    /// Opens (creating when needed) and migrates the database the configuration names.
    pub async fn open(location: &DatabaseLocation) -> Result<Store> {
        Self::open_with(location, StoreOptions::default()).await
    }

    pub async fn open_with(location: &DatabaseLocation, options: StoreOptions) -> Result<Store> {
        let url = match location {
            DatabaseLocation::SqliteFile(path) => {
                create_parent_dir(path)?;
                make_private_file(path)?;
                sqlite_url(path)
            }
            DatabaseLocation::Url(url) => url.clone(),
        };
        let store = Self::open_url(&url, options).await?;
        if let DatabaseLocation::SqliteFile(path) = location {
            // SQLite gives a new -wal or -shm file the database file's mode;
            // ones left by an older build are made private here.
            for suffix in ["-wal", "-shm"] {
                let mut side = path.as_os_str().to_owned();
                side.push(suffix);
                let side = Path::new(&side);
                if side.exists() {
                    set_private(side, PRIVATE_FILE)?;
                }
            }
        }
        Ok(store)
    }

    /// Opens a database by sqlx URL (`sqlite://…` or `postgres://…`).
    pub async fn open_url(url: &str, options: StoreOptions) -> Result<Store> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);

        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
            return Err(StoreError::UnsupportedUrl(scheme.to_string()));
        };
        let mut url = url.to_string();
        if backend == Backend::Sqlite && !url.contains("mode=") {
            url.push_str(if url.contains('?') {
                "&mode=rwc"
            } else {
                "?mode=rwc"
            });
        }
        let connect: AnyConnectOptions = url.parse()?;

        let (reader, writer) = match backend {
            Backend::Sqlite => {
                // A file that is not a database fails here at once; a pool would
                // retry the failed set-up until its acquire timeout.
                let mut probe = AnyConnection::connect_with(&connect).await?;
                sqlx::query("SELECT count(*) FROM sqlite_master")
                    .fetch_one(&mut probe)
                    .await?;
                probe.close().await?;

                let busy_ms = options.busy_timeout.as_millis();
                let pool = |max: u32| {
                    AnyPoolOptions::new()
                        .max_connections(max)
                        .acquire_timeout(options.busy_timeout * 2)
                        // A ping is a round trip to the connection's worker
                        // thread, as costly as the query, and a local file
                        // connection cannot go stale.
                        .test_before_acquire(false)
                        .after_connect(move |conn, _| {
                            Box::pin(async move {
                                // WAL lets readers run beside the one writer; NORMAL sync
                                // in WAL mode survives any process crash. Incremental
                                // auto-vacuum lets the reaper give freed pages back to
                                // the file system a few at a time; it takes effect only
                                // on a file that has no table yet, so it comes first
                                // (on an older file it changes nothing: see
                                // `Store::rewrite_for_incremental_vacuum`).
                                for pragma in [
                                    "PRAGMA auto_vacuum = INCREMENTAL".to_string(),
                                    format!("PRAGMA busy_timeout = {busy_ms}"),
                                    "PRAGMA journal_mode = WAL".to_string(),
                                    "PRAGMA synchronous = NORMAL".to_string(),
                                    "PRAGMA foreign_keys = ON".to_string(),
                                ] {
                                    conn.execute(pragma.as_str()).await?;
                                }
                                Ok(())
                            })
                        })
                };
                let writer = pool(1).connect_with(connect.clone()).await?;
                let reader = pool(options.max_connections).connect_with(connect).await?;
                (reader, writer)
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(options.max_connections)
                    .connect_with(connect)
                    .await?;
                (pool.clone(), pool)
            }
        };

        migrate(backend, &writer).await?;
        let pace = PollPace {
            fastest: options.change_poll_interval,
            slowest: options
                .change_poll_max_interval
                .max(options.change_poll_interval),
        };
        let feed = ChangeFeed::start(backend, &url, reader.clone(), pace).await?;
        Ok(Store {
            reader,
            writer,
            backend,
            feed,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Where to wait for changes made by this or any other process.
    pub fn changes(&self) -> &ChangeFeed {
        &self.feed
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// The migrations embedded in this build for `backend`.
pub(crate) fn migrator(backend: Backend) -> sqlx::migrate::Migrator {
    match backend {
        Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
    }
}

/// Runs the backend's migrations. Several processes may start on a fresh SQLite
/// file at once (server and controller); SQLite has no migration lock, so a
/// loser of that race sees "already exists" and simply runs again, finding the
/// work done.
async fn migrate(backend: Backend, pool: &AnyPool) -> Result<()> {
    let migrator = migrator(backend);
    let mut attempt = 0;
    loop {
        match migrator.run(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 5 => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "migration raced another process; retrying");
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The installation's files hold every user's code, output and key hashes:
/// only the account that runs the services may read them.
const PRIVATE_DIR: u32 = 0o700;
const PRIVATE_FILE: u32 = 0o600;

/// Creates the database's missing folders (`~/.ci`), readable by the owner
/// only; a folder that exists keeps its mode (it may be shared on purpose),
/// the files in it are private anyway.
fn create_parent_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR)
            .create(dir)
            .map_err(|source| StoreError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
    }
    Ok(())
}

/// Creates the database file readable by its owner only, or makes an
/// existing one so, before SQLite opens it (SQLite would create it with the
/// process's umask, 0644 by default).
fn make_private_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => return set_private(path, PRIVATE_FILE),
        // Not a file (a folder, say): SQLite's own error says so.
        Ok(_) => return Ok(()),
        Err(_) => {}
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(PRIVATE_FILE)
        .open(path)
        .map_err(|source| StoreError::FileMode {
            path: path.display().to_string(),
            source,
        })?;
    // The mode given at creation is filtered by the umask: 0600 or tighter.
    set_private(path, PRIVATE_FILE)
}

fn set_private(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        StoreError::FileMode {
            path: path.display().to_string(),
            source,
        }
    })
}

/// A `sqlite://` URL for a file path; sqlx percent-decodes the path, so
/// characters that would end it early are encoded.
fn sqlite_url(path: &Path) -> String {
    let mut encoded = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' | '?' | '#' | ' ' => encoded.push_str(&format!("%{:02X}", c as u32)),
            c => encoded.push(c),
        }
    }
    format!("sqlite://{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    }

    #[tokio::test]
    async fn a_new_database_and_its_folder_are_private() {
        let root = tempfile::tempdir().expect("temp dir");
        let path = root.path().join(".ci").join("jobs.db");
        let store = Store::open(&DatabaseLocation::SqliteFile(path.clone()))
            .await
            .expect("open");
        store
            .create_user("Ada", "ada@example.com")
            .await
            .expect("a write, so the WAL exists");
        assert_eq!(mode(root.path().join(".ci").as_path()), 0o700);
        assert_eq!(mode(&path), 0o600);
        for side in ["jobs.db-wal", "jobs.db-shm"] {
            assert_eq!(mode(&root.path().join(".ci").join(side)), 0o600, "{side}");
        }
        store.close().await;
    }

    #[tokio::test]
    async fn an_existing_database_left_readable_is_made_private() {
        let root = tempfile::tempdir().expect("temp dir");
        let path = root.path().join("jobs.db");
        let store = Store::open(&DatabaseLocation::SqliteFile(path.clone()))
            .await
            .expect("open");
        store
            .create_user("Ada", "ada@example.com")
            .await
            .expect("a write");
        let wal = root.path().join("jobs.db-wal");
        for file in [&path, &wal] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let again = Store::open(&DatabaseLocation::SqliteFile(path.clone()))
            .await
            .expect("open again");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&wal), 0o600);
        assert_eq!(again.list_users().await.expect("users").len(), 1);
        again.close().await;
        store.close().await;
    }

    #[test]
    fn sqlite_urls_encode_awkward_characters() {
        assert_eq!(
            sqlite_url(Path::new("/tmp/a b?.db")),
            "sqlite:///tmp/a%20b%3F.db"
        );
    }
}
