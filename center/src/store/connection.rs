//! Connections: which backend a database URL names, the pool's connection manager, the
//! per-connection SQLite settings, migrations, and the write transaction every state change
//! runs in.
//!
//! Queries do not live here. The one place that looks inside [`DbConnection`] for a backend
//! is where SQL really differs (locking clauses, upserts, `BEGIN IMMEDIATE`).

use super::StoreError;
use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::pg::PgConnection;
use diesel::r2d2::{CustomizeConnection, ManageConnection, R2D2Connection};
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::time::Duration;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// How long a SQLite connection waits for another writer before it gives up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Any PostgreSQL session key works as long as every center uses the same one: it makes
/// centers that start together run the migrations one after the other.
const MIGRATION_LOCK_KEY: i64 = 0x656c_7665_735f_6462; // "elves_db"

/// The database products the store speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded default: one file, bundled SQLite.
    Sqlite,
    /// Production backend, shared by several centers.
    Postgres,
}

/// One pooled connection; query code is written once against this type.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
}

/// Where a database URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// A file path for SQLite.
    Sqlite(String),
    /// A libpq connection URL.
    Postgres(String),
}

impl Target {
    /// `sqlite://<path>` or a plain file path → SQLite; `postgres://…` or `postgresql://…` →
    /// PostgreSQL. `sqlite:///abs/path` is the absolute path `/abs/path`.
    pub(super) fn parse(url: &str) -> Result<Target, StoreError> {
        let url = url.trim();
        let bad_url = || StoreError::BadUrl(url.to_string());
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Target::Postgres(url.to_string()));
        }
        let path = match url.strip_prefix("sqlite://") {
            Some(path) => path,
            None if url.contains("://") => return Err(bad_url()),
            None => url,
        };
        // An in-memory database would be a different, empty database on every pooled
        // connection, so it is refused rather than silently misbehaving.
        if path.is_empty() || path == ":memory:" || path.starts_with("file:") {
            return Err(bad_url());
        }
        Ok(Target::Sqlite(path.to_string()))
    }

    pub(super) fn backend(&self) -> Backend {
        match self {
            Target::Sqlite(_) => Backend::Sqlite,
            Target::Postgres(_) => Backend::Postgres,
        }
    }

    /// Opens one connection of the right kind. The derived `MultiConnection::establish` is not
    /// used: it tries each backend in turn, so a PostgreSQL URL whose server is down would end
    /// up creating a SQLite file named after the URL.
    pub(super) fn establish(&self) -> Result<DbConnection, diesel::ConnectionError> {
        match self {
            Target::Sqlite(path) => SqliteConnection::establish(path).map(DbConnection::Sqlite),
            Target::Postgres(url) => PgConnection::establish(url).map(DbConnection::Pg),
        }
    }
}

/// The r2d2 connection manager: establishes connections for one [`Target`].
#[derive(Debug)]
pub(super) struct Manager {
    pub(super) target: Target,
}

impl ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<DbConnection, Self::Error> {
        self.target
            .establish()
            .map_err(diesel::r2d2::Error::ConnectionError)
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), Self::Error> {
        conn.ping().map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
    }
}

/// Sets up every new SQLite connection: WAL (readers do not block the writer), a busy timeout
/// (writers queue instead of failing at once), and foreign keys (off by default in SQLite).
/// PostgreSQL connections need nothing.
#[derive(Debug)]
pub(super) struct SqlitePragmas;

impl SqlitePragmas {
    pub(super) fn apply(conn: &mut DbConnection) -> diesel::QueryResult<()> {
        if let DbConnection::Sqlite(sqlite) = conn {
            // busy_timeout comes first so that switching to WAL also waits for other writers.
            sqlite.batch_execute(&format!(
                "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; \
                 PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
                SQLITE_BUSY_TIMEOUT.as_millis()
            ))?;
        }
        Ok(())
    }
}

impl CustomizeConnection<DbConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut DbConnection) -> Result<(), diesel::r2d2::Error> {
        SqlitePragmas::apply(conn).map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Brings the schema up to date. Safe when several centers start at once: PostgreSQL holds a
/// session advisory lock around the run, SQLite runs it in one `BEGIN IMMEDIATE` transaction.
pub(super) fn run_migrations(conn: &mut DbConnection) -> Result<(), StoreError> {
    let migration_error =
        |err: Box<dyn std::error::Error + Send + Sync>| StoreError::Migration(err.to_string());
    match conn {
        DbConnection::Pg(pg) => {
            diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
                .execute(pg)?;
            let result = pg
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(drop)
                .map_err(migration_error);
            diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
                .execute(pg)?;
            result
        }
        DbConnection::Sqlite(sqlite) => sqlite.immediate_transaction(|sqlite| {
            sqlite
                .run_pending_migrations(SQLITE_MIGRATIONS)
                .map(drop)
                .map_err(migration_error)
        }),
    }
}

impl DbConnection {
    /// Runs `body` in one transaction that may write.
    ///
    /// On SQLite the transaction starts with `BEGIN IMMEDIATE`, which takes the write lock at
    /// once (waiting up to the busy timeout): a deferred transaction that reads and then writes
    /// fails with `SQLITE_BUSY` when another connection wrote in between, instead of waiting.
    /// Holding the write lock from the start also makes every such transaction serial, which
    /// is what makes the store race-safe on SQLite.
    /// On PostgreSQL it is an ordinary `READ COMMITTED` transaction; the queries themselves
    /// take the row locks they need (see `lock_queue` and the claim's `SKIP LOCKED`).
    pub(super) fn write_transaction<T>(
        &mut self,
        body: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // The derived transaction manager keeps its state in the inner connection, so the
        // transaction can be opened on the inner SQLite connection with custom SQL and then
        // committed or rolled back through the enum as usual.
        match self {
            DbConnection::Sqlite(sqlite) => {
                AnsiTransactionManager::begin_transaction_sql(sqlite, "BEGIN IMMEDIATE")?
            }
            DbConnection::Pg(_) => {
                <DbConnection as Connection>::TransactionManager::begin_transaction(self)?
            }
        }
        match body(self) {
            Ok(value) => {
                <DbConnection as Connection>::TransactionManager::commit_transaction(self)?;
                Ok(value)
            }
            Err(err) => {
                match <DbConnection as Connection>::TransactionManager::rollback_transaction(self) {
                    Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => Err(err),
                    Err(rollback_err) => Err(rollback_err.into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_name_their_backend() {
        assert_eq!(
            Target::parse("sqlite://data/elves.db").unwrap(),
            Target::Sqlite("data/elves.db".to_string())
        );
        assert_eq!(
            Target::parse("sqlite:///var/lib/elves/elves.db").unwrap(),
            Target::Sqlite("/var/lib/elves/elves.db".to_string())
        );
        assert_eq!(
            Target::parse("./data/elves.db").unwrap(),
            Target::Sqlite("./data/elves.db".to_string())
        );
        assert_eq!(
            Target::parse("postgres://elves@db.example/elves").unwrap(),
            Target::Postgres("postgres://elves@db.example/elves".to_string())
        );
        assert_eq!(
            Target::parse("postgresql://db/elves").unwrap().backend(),
            Backend::Postgres
        );
        for bad in [
            "",
            "sqlite://",
            ":memory:",
            "sqlite://:memory:",
            "mysql://db/elves",
            "file:x.db",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(StoreError::BadUrl(_))),
                "{bad:?} should be refused"
            );
        }
    }
}
