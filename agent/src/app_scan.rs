//! App scanning: the apps installed under the apps directory and their versions, as the
//! heartbeat reports them.
//!
//! A directory is an app when it has the entry program SPEC §3 runs without a proxy (an
//! executable `app-worker`, or `app-worker.py`; see `worker::has_default_entry`), or when the
//! center installed it (its package marker): other folders next to the apps, such as the
//! Python SDK's `sdk/python/`, are not reported. Whether a given call can run is still the
//! worker's decision, made when it runs.

use std::collections::BTreeMap;
use std::path::Path;

/// The apps installed under `apps_dir`: name → the content of `<app>/VERSION`, or "0" when it
/// is missing or not a valid version. Directories whose name is not a valid app name (such as
/// an installer's temporary or backup directories) and directories without an entry program
/// are not apps.
pub fn installed_apps(apps_dir: &Path) -> BTreeMap<String, String> {
    let mut apps = BTreeMap::new();
    let entries = match std::fs::read_dir(apps_dir) {
        Ok(entries) => entries,
        Err(err) => {
            log::warn!("apps directory {}: {err}", apps_dir.display());
            return apps;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        if !elves_shared::names::is_valid_name(name) || !path.is_dir() || !is_app(&path) {
            continue;
        }
        let version = std::fs::read_to_string(path.join("VERSION"))
            .ok()
            .map(|text| text.trim().to_string())
            .filter(|version| elves_shared::names::is_valid_version(version))
            .unwrap_or_else(|| "0".to_string());
        apps.insert(name.to_string(), version);
    }
    apps
}

/// A center-installed package counts even without a default entry (an app run only through a
/// proxy): the center compares what it installed with what the heartbeat reports.
fn is_app(dir: &Path) -> bool {
    crate::worker::has_default_entry(dir) || dir.join(crate::installer::MARKER).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn write_app(apps_dir: &Path, app: &str, version: Option<&str>) {
        let dir = apps_dir.join(app);
        std::fs::create_dir_all(&dir).unwrap();
        let worker = dir.join("app-worker");
        std::fs::write(&worker, "#!/bin/sh\ntrue\n").unwrap();
        std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
        if let Some(version) = version {
            std::fs::write(dir.join("VERSION"), format!("{version}\n")).unwrap();
        }
    }

    #[test]
    fn installed_apps_reads_versions_and_skips_non_apps() {
        let dir = tempfile::tempdir().unwrap();
        write_app(dir.path(), "alpha", Some("2.0.1"));
        write_app(dir.path(), "beta", None);
        write_app(dir.path(), "gamma", Some("not a version!"));
        std::fs::create_dir_all(dir.path().join(".alpha.tmp-123")).unwrap();
        std::fs::write(dir.path().join("stray-file"), b"x").unwrap();
        let apps = installed_apps(dir.path());
        let expected: BTreeMap<String, String> = [
            ("alpha".to_string(), "2.0.1".to_string()),
            ("beta".to_string(), "0".to_string()),
            ("gamma".to_string(), "0".to_string()),
        ]
        .into();
        assert_eq!(apps, expected);
        assert!(installed_apps(&PathBuf::from("/nonexistent/apps")).is_empty());
    }

    #[test]
    fn only_directories_with_an_entry_program_are_apps() {
        let dir = tempfile::tempdir().unwrap();
        let apps_dir = dir.path();
        // The Python SDK's folder: an app-worker.py, but one level down, so not an app.
        let sdk = apps_dir.join("sdk/python");
        std::fs::create_dir_all(&sdk).unwrap();
        std::fs::write(sdk.join("app-worker.py"), "# the SDK\n").unwrap();
        std::fs::write(sdk.join("elves_processor.py"), "# the SDK\n").unwrap();
        let docs = apps_dir.join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("README"), "not an app\n").unwrap();
        let not_executable = apps_dir.join("plain");
        std::fs::create_dir_all(&not_executable).unwrap();
        std::fs::write(not_executable.join("app-worker"), "#!/bin/sh\n").unwrap();
        let python_app = apps_dir.join("real");
        std::fs::create_dir_all(&python_app).unwrap();
        std::fs::write(python_app.join("app-worker.py"), "print()\n").unwrap();
        std::fs::write(python_app.join("VERSION"), "1.0\n").unwrap();
        write_app(apps_dir, "native", None);
        let proxy_only = apps_dir.join("packaged");
        std::fs::create_dir_all(&proxy_only).unwrap();
        std::fs::write(proxy_only.join("main.sh"), "echo\n").unwrap();
        std::fs::write(proxy_only.join("VERSION"), "3.1\n").unwrap();
        std::fs::write(proxy_only.join(crate::installer::MARKER), "{}").unwrap();
        let apps = installed_apps(apps_dir);
        let expected: BTreeMap<String, String> = [
            ("native".to_string(), "0".to_string()),
            ("packaged".to_string(), "3.1".to_string()),
            ("real".to_string(), "1.0".to_string()),
        ]
        .into();
        assert_eq!(apps, expected);
    }
}
