//! The definition-file reload: reads `config/cron.d` again and brings the database to match
//! it, at start, on [`ReloadDefinitions`] (the API) and on SIGHUP where enabled.

use super::{Cron, Refresh};
use crate::cron_files::{self, DefinitionError};
use crate::store::blocking::blocking;
use crate::store::{Store, StoreError, SyncOutcome};
use actix::prelude::*;
use elves_shared::time::now_unix_ms;
use elves_shared::wire::TaskId;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Read the definition files again and bring the database to match them.
#[derive(Message)]
#[rtype(result = "Result<ReloadReport, StoreError>")]
pub struct ReloadDefinitions;

/// What a reload did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadReport {
    pub dir: String,
    pub created: Vec<TaskId>,
    pub updated: Vec<TaskId>,
    pub removed: Vec<TaskId>,
    pub unchanged: usize,
    pub errors: Vec<DefinitionError>,
}

/// Brings the file crons of the database to match the files of `dir` (blocking).
fn reload(store: &Store, dir: &Path, default_timeout_s: u32) -> Result<ReloadReport, StoreError> {
    let definitions = cron_files::load_dir(dir, default_timeout_s);
    let outcome: SyncOutcome = store.sync_file_crons(
        &definitions.crons,
        &definitions.broken_files,
        &definitions.broken_ids,
        now_unix_ms(),
    )?;
    Ok(ReloadReport {
        dir: dir.display().to_string(),
        created: outcome.created,
        updated: outcome.updated,
        removed: outcome.removed,
        unchanged: outcome.unchanged,
        errors: definitions.errors,
    })
}

impl Handler<ReloadDefinitions> for Cron {
    type Result = ResponseActFuture<Self, Result<ReloadReport, StoreError>>;

    fn handle(&mut self, _: ReloadDefinitions, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let dir = self.config.dir.clone();
        let default_timeout_s = self.rt.default_timeout_s;
        let work = async move { blocking(move || reload(&store, &dir, default_timeout_s)).await };
        Box::pin(work.into_actor(self).map(|report, _, ctx| {
            if report.is_ok() {
                ctx.notify(Refresh);
            }
            report
        }))
    }
}

/// Set by the processes that own their signals (`elves-center`, `elves center`): a SIGHUP
/// there reloads the definition files. Tests and embedded centers leave SIGHUP alone.
static SIGHUP_RELOAD: AtomicBool = AtomicBool::new(false);

/// Makes centers started from now on reload their definition files on SIGHUP.
pub fn enable_sighup_reload() {
    SIGHUP_RELOAD.store(true, Ordering::Relaxed);
}

/// Reloads the definition files on every SIGHUP, if [`enable_sighup_reload`] was called.
/// Must run inside the actix system.
pub fn reload_on_sighup(cron: Addr<Cron>) {
    if !SIGHUP_RELOAD.load(Ordering::Relaxed) {
        return;
    }
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(err) => {
            log::error!("cron: cannot listen for SIGHUP: {err}");
            return;
        }
    };
    actix_rt::spawn(async move {
        while hangups.recv().await.is_some() {
            log::info!("cron: SIGHUP: reloading the definition files");
            match cron.send(ReloadDefinitions).await {
                Ok(Ok(report)) => log_report(&report),
                Ok(Err(err)) => log::error!("cron: reloading definition files: {err}"),
                Err(err) => log::error!("cron: reloading definition files: {err}"),
            }
        }
    });
}

pub fn log_report(report: &ReloadReport) {
    log::info!(
        "cron: definition files in {}: {} created, {} updated, {} removed, {} unchanged",
        report.dir,
        report.created.len(),
        report.updated.len(),
        report.removed.len(),
        report.unchanged
    );
    for error in &report.errors {
        log::error!("cron: definition file {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cron_files::cron_id_of;
    use crate::store::testing::TestDatabase;

    /// A store on a SQLite file of its own and an empty definition directory. Fields drop in
    /// order: the store first, then its database.
    struct Fixture {
        store: Store,
        _database: TestDatabase,
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let database = TestDatabase::sqlite().unwrap();
            let store = Store::open(&database.url).unwrap();
            Fixture {
                store,
                _database: database,
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn write(&self, file: &str, text: &str) {
            std::fs::write(self.dir.path().join(file), text).unwrap();
        }

        fn reload(&self) -> ReloadReport {
            reload(&self.store, self.dir.path(), 90).unwrap()
        }
    }

    fn entry(id: &str, rule: &str) -> String {
        format!(
            "[[cron]]\nid = \"{id}\"\nagent = \"10.0.0.7\"\napp = \"backup\"\nfunc = \"run\"\n\
             rule = \"{rule}\"\n\n"
        )
    }

    #[test]
    fn a_new_file_creates_its_crons_and_a_second_reload_changes_nothing() {
        let fixture = Fixture::new();
        fixture.write("backup.toml", &entry("nightly", "0 0 2 * * ?"));
        let report = fixture.reload();
        assert_eq!(report.created, vec![cron_id_of("nightly")]);
        assert_eq!(report.dir, fixture.dir.path().display().to_string());
        assert!(report.errors.is_empty());
        let crons = fixture.store.list_crons().unwrap();
        assert_eq!(crons.len(), 1);
        assert_eq!(crons[0].definition.rule, "0 0 2 * * ?");
        assert_eq!(crons[0].definition.timeout_s, 90);

        let report = fixture.reload();
        assert!(report.created.is_empty() && report.updated.is_empty());
        assert!(report.removed.is_empty());
        assert_eq!(report.unchanged, 1);
    }

    #[test]
    fn an_edited_entry_is_updated_and_a_removed_file_removes_its_crons() {
        let fixture = Fixture::new();
        fixture.write("backup.toml", &entry("nightly", "0 0 2 * * ?"));
        fixture.write("report.toml", &entry("weekly", "0 0 3 ? * MON"));
        assert_eq!(fixture.reload().created.len(), 2);

        fixture.write("backup.toml", &entry("nightly", "0 30 2 * * ?"));
        std::fs::remove_file(fixture.dir.path().join("report.toml")).unwrap();
        let report = fixture.reload();
        assert_eq!(report.updated, vec![cron_id_of("nightly")]);
        assert_eq!(report.removed, vec![cron_id_of("weekly")]);
        let crons = fixture.store.list_crons().unwrap();
        assert_eq!(crons.len(), 1);
        assert_eq!(crons[0].definition.rule, "0 30 2 * * ?");
    }

    #[test]
    fn a_broken_entry_is_reported_and_its_cron_kept() {
        let fixture = Fixture::new();
        fixture.write("backup.toml", &entry("nightly", "0 0 2 * * ?"));
        fixture.reload();

        fixture.write("backup.toml", &entry("nightly", "0 0 2 * *"));
        let report = fixture.reload();
        assert_eq!(report.errors.len(), 1);
        assert_eq!(report.errors[0].entry, "nightly");
        assert!(report.removed.is_empty() && report.updated.is_empty());
        let crons = fixture.store.list_crons().unwrap();
        assert_eq!(crons.len(), 1);
        assert_eq!(crons[0].definition.rule, "0 0 2 * * ?");
    }
}
