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

/// How much a committed transaction survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Durability {
    /// The commit returns once the change is on disk (PostgreSQL flushes its log; SQLite's
    /// WAL with `synchronous = NORMAL` as always).
    Full,
    /// PostgreSQL: `SET LOCAL synchronous_commit = off`, the commit returns before the log is
    /// flushed, and a crash of the database server (not of the center) may lose the last
    /// fraction of a second of such commits. Never lost half-way, never out of order, and
    /// scoped to the one transaction. SQLite: the same as `Full`. Only for RT history (see
    /// [`Store::insert_task`](super::Store::insert_task)) and agent rows
    /// ([`Store::upsert_agents`](super::Store::upsert_agents)).
    Relaxed,
}

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

    /// Not run on checkout (the pool is built with `test_on_check_out(false)`): a ping there
    /// was a round trip to PostgreSQL before every store call. A lost connection shows in the
    /// query that meets it instead, and [`Manager::has_broken`] then keeps it out of the pool.
    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), Self::Error> {
        conn.ping().map_err(diesel::r2d2::Error::QueryError)
    }

    /// A PostgreSQL connection whose server went away is broken once a query has met it:
    /// libpq then reports its transaction status unknown, which diesel counts as broken.
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

/// The names of the migrations the database lacks, oldest first; applies none.
pub(super) fn pending_migrations(conn: &mut DbConnection) -> Result<Vec<String>, StoreError> {
    let migration_error =
        |err: Box<dyn std::error::Error + Send + Sync>| StoreError::Migration(err.to_string());
    let names = match conn {
        DbConnection::Pg(pg) => pg
            .pending_migrations(POSTGRES_MIGRATIONS)
            .map_err(migration_error)?
            .iter()
            .map(|migration| migration.name().to_string())
            .collect(),
        DbConnection::Sqlite(sqlite) => sqlite
            .pending_migrations(SQLITE_MIGRATIONS)
            .map_err(migration_error)?
            .iter()
            .map(|migration| migration.name().to_string())
            .collect(),
    };
    Ok(names)
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
        self.write_transaction_with(Durability::Full, body)
    }

    /// [`DbConnection::write_transaction`] with the commit's [`Durability`]. On PostgreSQL the
    /// `SET LOCAL` travels with the `BEGIN`, in the same round trip.
    pub(super) fn write_transaction_with<T>(
        &mut self,
        durability: Durability,
        body: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // The derived transaction manager keeps its state in the inner connection, so the
        // transaction can be opened on the inner SQLite connection with custom SQL and then
        // committed or rolled back through the enum as usual.
        match self {
            DbConnection::Sqlite(sqlite) => {
                AnsiTransactionManager::begin_transaction_sql(sqlite, "BEGIN IMMEDIATE")?
            }
            DbConnection::Pg(pg) => match durability {
                Durability::Full => AnsiTransactionManager::begin_transaction_sql(pg, "BEGIN")?,
                Durability::Relaxed => AnsiTransactionManager::begin_transaction_sql(
                    pg,
                    "BEGIN; SET LOCAL synchronous_commit = off",
                )?,
            },
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
    use diesel::sql_types::Text;

    #[derive(diesel::QueryableByName)]
    struct SynchronousCommit {
        #[diesel(sql_type = Text)]
        synchronous_commit: String,
    }

    fn synchronous_commit(conn: &mut DbConnection) -> Result<String, StoreError> {
        Ok(diesel::sql_query("SHOW synchronous_commit")
            .get_result::<SynchronousCommit>(conn)?
            .synchronous_commit)
    }

    #[test]
    fn relaxed_durability_holds_for_its_own_transaction_only_on_postgres() {
        let Some(url) = super::super::testing::pg_url() else {
            return;
        };
        let mut conn = Target::parse(&url).unwrap().establish().unwrap();
        let server_default = synchronous_commit(&mut conn).unwrap();
        assert_ne!(
            server_default, "off",
            "the test needs a durable server default"
        );
        assert_eq!(
            conn.write_transaction_with(Durability::Relaxed, synchronous_commit)
                .unwrap(),
            "off"
        );
        assert_eq!(
            conn.write_transaction(synchronous_commit).unwrap(),
            server_default,
            "the next transaction on the same connection is durable again"
        );
        assert_eq!(synchronous_commit(&mut conn).unwrap(), server_default);
    }

    #[derive(diesel::QueryableByName)]
    struct BackendPid {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }

    /// Ends the server process of `conn` from `killer`, as a server restart would.
    fn terminate(conn: &mut DbConnection, killer: &mut DbConnection) {
        let pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
            .get_result::<BackendPid>(conn)
            .unwrap()
            .pid;
        diesel::sql_query(format!("SELECT pg_terminate_backend({pid})"))
            .execute(killer)
            .unwrap();
    }

    #[test]
    fn a_postgres_connection_whose_server_went_away_is_broken() {
        let Some(url) = super::super::testing::pg_url() else {
            return;
        };
        let manager = Manager {
            target: Target::parse(&url).unwrap(),
        };
        let mut killer = manager.connect().unwrap();

        let mut queried = manager.connect().unwrap();
        assert!(!manager.has_broken(&mut queried));
        terminate(&mut queried, &mut killer);
        assert!(diesel::sql_query("SELECT 1").execute(&mut queried).is_err());
        assert!(manager.has_broken(&mut queried));

        let mut transaction = manager.connect().unwrap();
        terminate(&mut transaction, &mut killer);
        assert!(transaction.write_transaction(|_| Ok(())).is_err());
        assert!(manager.has_broken(&mut transaction));

        assert!(!manager.has_broken(&mut killer));
    }

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
