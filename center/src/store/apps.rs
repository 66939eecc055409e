//! Supervisor-mode state (SPEC §5, §9): apps and their versions, auth ids with their keys and
//! roles, which auth ids hold which apps, and which agents an app may run on.
//!
//! Package bytes are not here: a version row names its zip by SHA-256, and the zip lives in the
//! center's package directory. Deciding who may do what is the caller's job
//! (`crate::actors::app_store`); this file only stores and reads back.

use super::connection::DbConnection;
use super::models::{db_time, unix_ms};
use super::schema::{app_agents, app_auth_ids, app_versions, apps, auth_ids};
use super::{Store, StoreError};
use diesel::prelude::*;

/// One app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRow {
    pub name: String,
    pub display_name: String,
    /// The version agents should have.
    pub online_version: Option<String>,
    pub created_at: u64,
    /// Changed when the app was created, got a version or changed its online version.
    pub updated_at: u64,
}

/// One uploaded version of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppVersionRow {
    pub app: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub uploaded_by: String,
    pub uploaded_at: u64,
}

/// What an auth id may do beyond the apps it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Manages apps, versions, bindings and auth ids, and holds every app.
    Admin,
    /// Calls the apps it holds.
    Normal,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Normal => "normal",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "normal" | "" => Some(Role::Normal),
            _ => None,
        }
    }
}

/// One auth id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthIdRow {
    pub auth_id: String,
    pub auth_key: String,
    pub role: Role,
    pub comment: String,
    pub created_at: u64,
    pub revoked_at: Option<u64>,
}

/// A version to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAppVersion {
    pub app: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub uploaded_by: String,
    pub uploaded_at: u64,
    /// Make it the online version in the same transaction.
    pub make_online: bool,
}

/// What [`Store::add_app_version`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionAdded {
    Added,
    /// The same app, version and content were already there: nothing changed.
    Unchanged,
}

/// Everything the AppStore keeps in memory, read in one go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    pub apps: Vec<AppRow>,
    /// The online version of each app that has one.
    pub online: Vec<AppVersionRow>,
    /// (app, auth id) grants.
    pub grants: Vec<(String, String)>,
    /// (app, agent id) bindings.
    pub bindings: Vec<(String, String)>,
    /// Every auth id, revoked ones included.
    pub auth_ids: Vec<AuthIdRow>,
}

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = apps)]
struct AppRecord {
    name: String,
    display_name: String,
    online_version: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl From<AppRecord> for AppRow {
    fn from(record: AppRecord) -> AppRow {
        AppRow {
            name: record.name,
            display_name: record.display_name,
            online_version: record.online_version,
            created_at: unix_ms(record.created_at),
            updated_at: unix_ms(record.updated_at),
        }
    }
}

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = app_versions)]
struct AppVersionRecord {
    app: String,
    version: String,
    sha256: String,
    size: i64,
    uploaded_by: String,
    uploaded_at: i64,
}

impl From<AppVersionRecord> for AppVersionRow {
    fn from(record: AppVersionRecord) -> AppVersionRow {
        AppVersionRow {
            app: record.app,
            version: record.version,
            sha256: record.sha256,
            size: unix_ms(record.size),
            uploaded_by: record.uploaded_by,
            uploaded_at: unix_ms(record.uploaded_at),
        }
    }
}

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = auth_ids)]
struct AuthIdRecord {
    auth_id: String,
    auth_key: String,
    role: String,
    comment: String,
    created_at: i64,
    revoked_at: Option<i64>,
}

impl TryFrom<AuthIdRecord> for AuthIdRow {
    type Error = StoreError;

    fn try_from(record: AuthIdRecord) -> Result<AuthIdRow, StoreError> {
        let role = Role::parse(&record.role).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "auth id {}: unknown role {:?}",
                record.auth_id, record.role
            ))
        })?;
        Ok(AuthIdRow {
            auth_id: record.auth_id,
            auth_key: record.auth_key,
            role,
            comment: record.comment,
            created_at: unix_ms(record.created_at),
            revoked_at: record.revoked_at.map(unix_ms),
        })
    }
}

fn find_app(conn: &mut DbConnection, name: &str) -> Result<Option<AppRecord>, StoreError> {
    Ok(apps::table
        .find(name)
        .select(AppRecord::as_select())
        .first(conn)
        .optional()?)
}

fn require_app(conn: &mut DbConnection, name: &str) -> Result<AppRecord, StoreError> {
    find_app(conn, name)?.ok_or_else(|| StoreError::AppNotFound(name.to_string()))
}

/// Inserts the app unless it exists; true when this call inserted it. `ON CONFLICT DO
/// NOTHING` rather than a look first: two uploads of a new app at once on PostgreSQL would both
/// find nothing, and the second insert would fail on the primary key.
fn insert_app(
    conn: &mut DbConnection,
    name: &str,
    display_name: &str,
    now: u64,
) -> Result<bool, StoreError> {
    let record = AppRecord {
        name: name.to_string(),
        display_name: display_name.to_string(),
        online_version: None,
        created_at: db_time(now),
        updated_at: db_time(now),
    };
    let insert = diesel::insert_into(apps::table)
        .values(&record)
        .on_conflict_do_nothing();
    // The multi-backend connection has no ON CONFLICT; each backend has.
    let n_inserted = match conn {
        DbConnection::Pg(pg) => insert.execute(pg)?,
        DbConnection::Sqlite(sqlite) => insert.execute(sqlite)?,
    };
    Ok(n_inserted == 1)
}

fn active_auth_id(conn: &mut DbConnection, auth_id: &str) -> Result<(), StoreError> {
    let n_found: i64 = auth_ids::table
        .filter(auth_ids::auth_id.eq(auth_id))
        .filter(auth_ids::revoked_at.is_null())
        .count()
        .get_result(conn)?;
    if n_found == 0 {
        return Err(StoreError::AuthIdNotFound(auth_id.to_string()));
    }
    Ok(())
}

impl Store {
    /// Creates an app without versions; false when it already existed (its name is kept, a
    /// non-empty `display_name` replaces the old one).
    pub fn create_app(&self, name: &str, display_name: &str, now: u64) -> Result<bool, StoreError> {
        self.conn()?.write_transaction(|conn| {
            if insert_app(conn, name, display_name, now)? {
                return Ok(true);
            }
            if !display_name.is_empty() {
                diesel::update(apps::table.find(name))
                    .set(apps::display_name.eq(display_name))
                    .execute(conn)?;
            }
            Ok(false)
        })
    }

    /// Adds a version (creating the app on its first upload). The same version with the same
    /// content again changes nothing; with other content it is [`StoreError::VersionConflict`].
    pub fn add_app_version(&self, new: &NewAppVersion) -> Result<VersionAdded, StoreError> {
        self.conn()?.write_transaction(|conn| {
            insert_app(conn, &new.app, "", new.uploaded_at)?;
            // Inserted unless the version exists; a concurrent upload of the same version
            // makes this wait for it and then find its row, never a key violation.
            let record = AppVersionRecord {
                app: new.app.clone(),
                version: new.version.clone(),
                sha256: new.sha256.clone(),
                size: db_time(new.size),
                uploaded_by: new.uploaded_by.clone(),
                uploaded_at: db_time(new.uploaded_at),
            };
            let insert = diesel::insert_into(app_versions::table)
                .values(&record)
                .on_conflict_do_nothing();
            let n_inserted = match conn {
                DbConnection::Pg(pg) => insert.execute(pg)?,
                DbConnection::Sqlite(sqlite) => insert.execute(sqlite)?,
            };
            if n_inserted == 0 {
                let existing = app_versions::table
                    .find((&new.app, &new.version))
                    .select(AppVersionRecord::as_select())
                    .first(conn)?;
                if existing.sha256 == new.sha256 {
                    return Ok(VersionAdded::Unchanged);
                }
                return Err(StoreError::VersionConflict {
                    app: new.app.clone(),
                    version: new.version.clone(),
                });
            }
            let online_version = new.make_online.then(|| new.version.clone());
            let update = diesel::update(apps::table.find(&new.app));
            match online_version {
                Some(version) => update
                    .set((
                        apps::online_version.eq(Some(version)),
                        apps::updated_at.eq(db_time(new.uploaded_at)),
                    ))
                    .execute(conn)?,
                None => update
                    .set(apps::updated_at.eq(db_time(new.uploaded_at)))
                    .execute(conn)?,
            };
            Ok(VersionAdded::Added)
        })
    }

    /// Makes `version` the one agents should have; it must have been uploaded.
    pub fn set_online_version(&self, app: &str, version: &str, now: u64) -> Result<(), StoreError> {
        self.conn()?.write_transaction(|conn| {
            require_app(conn, app)?;
            let n_found: i64 = app_versions::table
                .filter(app_versions::app.eq(app))
                .filter(app_versions::version.eq(version))
                .count()
                .get_result(conn)?;
            if n_found == 0 {
                return Err(StoreError::AppVersionNotFound {
                    app: app.to_string(),
                    version: version.to_string(),
                });
            }
            diesel::update(apps::table.find(app))
                .set((
                    apps::online_version.eq(Some(version)),
                    apps::updated_at.eq(db_time(now)),
                ))
                .execute(conn)?;
            Ok(())
        })
    }

    pub fn get_app(&self, name: &str) -> Result<Option<AppRow>, StoreError> {
        Ok(find_app(&mut *self.conn()?, name)?.map(AppRow::from))
    }

    pub fn list_apps(&self) -> Result<Vec<AppRow>, StoreError> {
        let records = apps::table
            .order(apps::name)
            .select(AppRecord::as_select())
            .load(&mut *self.conn()?)?;
        Ok(records.into_iter().map(AppRow::from).collect())
    }

    /// The versions of an app, oldest upload first.
    pub fn app_versions(&self, app: &str) -> Result<Vec<AppVersionRow>, StoreError> {
        let mut conn = self.conn()?;
        require_app(&mut conn, app)?;
        let records = app_versions::table
            .filter(app_versions::app.eq(app))
            .order((app_versions::uploaded_at, app_versions::version))
            .select(AppVersionRecord::as_select())
            .load(&mut *conn)?;
        Ok(records.into_iter().map(AppVersionRow::from).collect())
    }

    /// The version row that a package with this SHA-256 belongs to, if any.
    pub fn version_by_sha256(&self, sha256: &str) -> Result<Option<AppVersionRow>, StoreError> {
        let record = app_versions::table
            .filter(app_versions::sha256.eq(sha256))
            .select(AppVersionRecord::as_select())
            .first(&mut *self.conn()?)
            .optional()?;
        Ok(record.map(AppVersionRow::from))
    }

    /// Lets `app` run on `agent`; false when it already could.
    pub fn bind_agent(&self, app: &str, agent: &str) -> Result<bool, StoreError> {
        self.conn()?.write_transaction(|conn| {
            require_app(conn, app)?;
            let n_found: i64 = app_agents::table
                .filter(app_agents::app.eq(app))
                .filter(app_agents::agent.eq(agent))
                .count()
                .get_result(conn)?;
            if n_found > 0 {
                return Ok(false);
            }
            diesel::insert_into(app_agents::table)
                .values((app_agents::app.eq(app), app_agents::agent.eq(agent)))
                .execute(conn)?;
            Ok(true)
        })
    }

    /// False when the binding did not exist.
    pub fn unbind_agent(&self, app: &str, agent: &str) -> Result<bool, StoreError> {
        let n_deleted = diesel::delete(
            app_agents::table
                .filter(app_agents::app.eq(app))
                .filter(app_agents::agent.eq(agent)),
        )
        .execute(&mut *self.conn()?)?;
        Ok(n_deleted > 0)
    }

    /// Creates an auth id; [`StoreError::AuthIdExists`] when the id was ever used (revoked ids
    /// are not reused, so that old audit entries keep one meaning).
    pub fn create_auth_id(&self, row: &AuthIdRow) -> Result<(), StoreError> {
        self.conn()?.write_transaction(|conn| {
            let n_found: i64 = auth_ids::table
                .filter(auth_ids::auth_id.eq(&row.auth_id))
                .count()
                .get_result(conn)?;
            if n_found > 0 {
                return Err(StoreError::AuthIdExists(row.auth_id.clone()));
            }
            diesel::insert_into(auth_ids::table)
                .values(&AuthIdRecord {
                    auth_id: row.auth_id.clone(),
                    auth_key: row.auth_key.clone(),
                    role: row.role.as_str().to_string(),
                    comment: row.comment.clone(),
                    created_at: db_time(row.created_at),
                    revoked_at: None,
                })
                .execute(conn)?;
            Ok(())
        })
    }

    pub fn list_auth_ids(&self) -> Result<Vec<AuthIdRow>, StoreError> {
        let records = auth_ids::table
            .order(auth_ids::auth_id)
            .select(AuthIdRecord::as_select())
            .load(&mut *self.conn()?)?;
        records.into_iter().map(AuthIdRow::try_from).collect()
    }

    /// Revokes an active auth id; [`StoreError::AuthIdNotFound`] when there is none.
    pub fn revoke_auth_id(&self, auth_id: &str, now: u64) -> Result<(), StoreError> {
        let n_updated = diesel::update(
            auth_ids::table
                .filter(auth_ids::auth_id.eq(auth_id))
                .filter(auth_ids::revoked_at.is_null()),
        )
        .set(auth_ids::revoked_at.eq(Some(db_time(now))))
        .execute(&mut *self.conn()?)?;
        if n_updated == 0 {
            return Err(StoreError::AuthIdNotFound(auth_id.to_string()));
        }
        Ok(())
    }

    /// Lets `auth_id` call `app`; false when it already could.
    pub fn grant_app(&self, auth_id: &str, app: &str) -> Result<bool, StoreError> {
        self.conn()?.write_transaction(|conn| {
            require_app(conn, app)?;
            active_auth_id(conn, auth_id)?;
            let n_found: i64 = app_auth_ids::table
                .filter(app_auth_ids::app.eq(app))
                .filter(app_auth_ids::auth_id.eq(auth_id))
                .count()
                .get_result(conn)?;
            if n_found > 0 {
                return Ok(false);
            }
            diesel::insert_into(app_auth_ids::table)
                .values((app_auth_ids::app.eq(app), app_auth_ids::auth_id.eq(auth_id)))
                .execute(conn)?;
            Ok(true)
        })
    }

    /// False when the grant did not exist.
    pub fn ungrant_app(&self, auth_id: &str, app: &str) -> Result<bool, StoreError> {
        let n_deleted = diesel::delete(
            app_auth_ids::table
                .filter(app_auth_ids::app.eq(app))
                .filter(app_auth_ids::auth_id.eq(auth_id)),
        )
        .execute(&mut *self.conn()?)?;
        Ok(n_deleted > 0)
    }

    /// Everything the AppStore keeps in memory.
    pub fn load_registry(&self) -> Result<Registry, StoreError> {
        let mut conn = self.conn()?;
        let apps: Vec<AppRow> = apps::table
            .order(apps::name)
            .select(AppRecord::as_select())
            .load(&mut *conn)?
            .into_iter()
            .map(AppRow::from)
            .collect();
        let online = app_versions::table
            .inner_join(apps::table)
            .filter(apps::online_version.eq(app_versions::version.nullable()))
            .order(app_versions::app)
            .select(AppVersionRecord::as_select())
            .load(&mut *conn)?
            .into_iter()
            .map(AppVersionRow::from)
            .collect();
        let grants = app_auth_ids::table
            .order((app_auth_ids::app, app_auth_ids::auth_id))
            .select((app_auth_ids::app, app_auth_ids::auth_id))
            .load(&mut *conn)?;
        let bindings = app_agents::table
            .order((app_agents::app, app_agents::agent))
            .select((app_agents::app, app_agents::agent))
            .load(&mut *conn)?;
        let auth_ids = auth_ids::table
            .order(auth_ids::auth_id)
            .select(AuthIdRecord::as_select())
            .load(&mut *conn)?
            .into_iter()
            .map(AuthIdRow::try_from)
            .collect::<Result<_, _>>()?;
        Ok(Registry {
            apps,
            online,
            grants,
            bindings,
            auth_ids,
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn version(app: &str, version: &str, sha: char, make_online: bool) -> NewAppVersion {
        NewAppVersion {
            app: app.to_string(),
            version: version.to_string(),
            sha256: sha.to_string().repeat(64),
            size: 10,
            uploaded_by: "admin".to_string(),
            uploaded_at: 1_000,
            make_online,
        }
    }

    /// Run on both backends by `store::tests`: uploads of one new app at once, the same
    /// version with the same bytes or other bytes, each answer is Added, Unchanged or a
    /// version conflict (415.2 at the API), never a key violation.
    pub fn concurrent_uploads_of_one_app(store: &Store) {
        for round in 0..10 {
            let app = format!("race{round}");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let uploads: Vec<_> = (0..4)
                .map(|n| {
                    let (store, barrier, app) = (store.clone(), barrier.clone(), app.clone());
                    std::thread::spawn(move || {
                        let sha = if n < 2 { 'a' } else { 'b' };
                        barrier.wait();
                        store.add_app_version(&version(&app, "1.0", sha, true))
                    })
                })
                .collect();
            let mut n_added = 0;
            for upload in uploads {
                match upload.join().unwrap() {
                    Ok(VersionAdded::Added) => n_added += 1,
                    Ok(VersionAdded::Unchanged) | Err(StoreError::VersionConflict { .. }) => {}
                    Err(other) => panic!("round {round}: {other}"),
                }
            }
            assert_eq!(n_added, 1, "round {round}");
            assert_eq!(store.app_versions(&app).unwrap().len(), 1);
        }
    }

    /// Run on both backends by `store::tests`.
    pub fn apps_versions_and_bindings(store: &Store) {
        assert_eq!(
            store
                .add_app_version(&version("demo", "1.0", 'a', true))
                .unwrap(),
            VersionAdded::Added
        );
        assert_eq!(
            store
                .add_app_version(&version("demo", "1.0", 'a', true))
                .unwrap(),
            VersionAdded::Unchanged
        );
        assert!(matches!(
            store.add_app_version(&version("demo", "1.0", 'b', true)),
            Err(StoreError::VersionConflict { .. })
        ));
        store
            .add_app_version(&version("demo", "2.0", 'c', false))
            .unwrap();
        let app = store.get_app("demo").unwrap().unwrap();
        assert_eq!(app.online_version.as_deref(), Some("1.0"));
        store.set_online_version("demo", "2.0", 2_000).unwrap();
        assert!(matches!(
            store.set_online_version("demo", "9.9", 2_000),
            Err(StoreError::AppVersionNotFound { .. })
        ));
        assert!(matches!(
            store.set_online_version("nope", "1.0", 2_000),
            Err(StoreError::AppNotFound(_))
        ));
        assert_eq!(store.app_versions("demo").unwrap().len(), 2);
        assert_eq!(
            store
                .version_by_sha256(&"c".repeat(64))
                .unwrap()
                .unwrap()
                .version,
            "2.0"
        );
        assert!(store.create_app("empty", "An empty app", 5).unwrap());
        assert!(!store.create_app("empty", "", 6).unwrap());

        assert!(store.bind_agent("demo", "agent-1").unwrap());
        assert!(!store.bind_agent("demo", "agent-1").unwrap());
        assert!(matches!(
            store.bind_agent("nope", "agent-1"),
            Err(StoreError::AppNotFound(_))
        ));

        let user = AuthIdRow {
            auth_id: "alice".into(),
            auth_key: "alice-key-123".into(),
            role: Role::Normal,
            comment: String::new(),
            created_at: 1,
            revoked_at: None,
        };
        store.create_auth_id(&user).unwrap();
        assert!(matches!(
            store.create_auth_id(&user),
            Err(StoreError::AuthIdExists(_))
        ));
        assert!(store.grant_app("alice", "demo").unwrap());
        assert!(matches!(
            store.grant_app("bob", "demo"),
            Err(StoreError::AuthIdNotFound(_))
        ));

        let registry = store.load_registry().unwrap();
        assert_eq!(registry.apps.len(), 2);
        assert_eq!(registry.online.len(), 1);
        assert_eq!(registry.online[0].version, "2.0");
        assert_eq!(registry.grants, vec![("demo".into(), "alice".into())]);
        assert_eq!(registry.bindings, vec![("demo".into(), "agent-1".into())]);
        assert_eq!(registry.auth_ids.len(), 1);

        store.revoke_auth_id("alice", 3).unwrap();
        assert!(matches!(
            store.revoke_auth_id("alice", 4),
            Err(StoreError::AuthIdNotFound(_))
        ));
        assert_eq!(store.list_auth_ids().unwrap()[0].revoked_at, Some(3));
        assert!(store.unbind_agent("demo", "agent-1").unwrap());
        assert!(store.ungrant_app("alice", "demo").unwrap());
        let registry = store.load_registry().unwrap();
        assert!(registry.bindings.is_empty() && registry.grants.is_empty());
    }
}
