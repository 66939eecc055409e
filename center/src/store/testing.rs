//! Fresh databases for tests (the store's own and the integration tests): a SQLite file in a
//! temp dir, or a new PostgreSQL database on the server of `ELVES_TEST_PG_URL`, dropped when the
//! guard goes. Public because the integration tests in `tests/` and the benches use it too
//! (through the `testing` feature); not compiled into a production build.

use diesel::{Connection, RunQueryDsl};

/// `ELVES_TEST_PG_URL`, which CI must set: on CI a missing URL is a failure, not a skip.
pub fn pg_url() -> Option<String> {
    let url = std::env::var("ELVES_TEST_PG_URL")
        .ok()
        .filter(|url| !url.is_empty());
    if url.is_none() && std::env::var_os("CI").is_some() {
        panic!("ELVES_TEST_PG_URL must be set on CI");
    }
    url
}

/// A database of its own; dropping it removes the database (PostgreSQL) or its file.
pub struct TestDatabase {
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Sqlite {
        _dir: tempfile::TempDir,
    },
    Postgres {
        maintenance_url: String,
        database: String,
    },
}

impl TestDatabase {
    pub fn sqlite() -> Result<TestDatabase, String> {
        let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
        let path = dir.path().join("data").join("elves.db");
        Ok(TestDatabase {
            url: format!("sqlite://{}", path.display()),
            cleanup: Cleanup::Sqlite { _dir: dir },
        })
    }

    /// A fresh database `elves_t_<random>` on the server of `base_url`, so that tests run in
    /// parallel.
    pub fn postgres(base_url: &str) -> Result<TestDatabase, String> {
        let (mut maintenance, maintenance_url) = connect_maintenance(base_url)?;
        let database = format!("elves_t_{:016x}", rand::random::<u64>());
        diesel::sql_query(format!("CREATE DATABASE {database}"))
            .execute(&mut maintenance)
            .map_err(|err| format!("creating {database}: {err}"))?;
        let mut url = url::Url::parse(base_url).map_err(|err| err.to_string())?;
        url.set_path(&format!("/{database}"));
        Ok(TestDatabase {
            url: url.to_string(),
            cleanup: Cleanup::Postgres {
                maintenance_url,
                database,
            },
        })
    }
}

/// A connection for CREATE and DROP DATABASE: the URL's own database, or else the `postgres`
/// database of the same server (the URL's database need not exist).
fn connect_maintenance(base_url: &str) -> Result<(diesel::PgConnection, String), String> {
    if let Ok(conn) = diesel::PgConnection::establish(base_url) {
        return Ok((conn, base_url.to_string()));
    }
    let mut url = url::Url::parse(base_url).map_err(|err| err.to_string())?;
    url.set_path("/postgres");
    let conn = diesel::PgConnection::establish(url.as_str())
        .map_err(|err| format!("connecting to {base_url}: {err}"))?;
    Ok((conn, url.to_string()))
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Cleanup::Postgres {
            maintenance_url,
            database,
        } = &self.cleanup
        {
            if let Ok(mut conn) = diesel::PgConnection::establish(maintenance_url) {
                let _ =
                    diesel::sql_query(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                        .execute(&mut conn);
            }
        }
    }
}
