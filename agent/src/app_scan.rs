//! App scanning: the apps installed under the apps directory and their versions, as the
//! heartbeat reports them.

use std::collections::BTreeMap;
use std::path::Path;

/// The apps installed under `apps_dir`: name → the content of `<app>/VERSION`, or "0" when it
/// is missing or not a valid version. Directories whose name is not a valid app name (such as
/// an installer's temporary or backup directories) are not apps.
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
        if !elves_shared::names::is_valid_name(name) || !path.is_dir() {
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
}
