//! The package installer (SPEC §5 "App packages"): makes the apps directory match the latest
//! [`AppSet`] the center sent.
//!
//! For each listed app whose installed package differs: download from the center over HTTP,
//! check size and SHA-256 against the set, check and extract the zip with the shared package
//! rules into `<apps>/.<app>.tmp-<n>`, then swap it in atomically (Linux `RENAME_EXCHANGE`;
//! elsewhere two renames). The replaced version is kept as `<apps>/.<app>.previous`, so that a
//! rollback to it needs no download. Center-installed apps that are no longer listed are set
//! aside the same way; apps installed by hand (without the `.elves-package` marker) are never
//! touched unless the center sends an app of the same name.
//!
//! An app already at the listed package but under another version (the same bytes released
//! again under a new number) only has its `VERSION` and marker rewritten: the agent reports
//! the version the center told it to have, whatever the bytes.
//!
//! Sets are handled one at a time, always the latest (a `watch` channel): a set that arrives
//! while a download runs is taken up once it ends. Directory names starting with `.` are not
//! apps (`elves_shared::names::is_valid_name`), so temporary and previous versions never run.

use elves_shared::package::{self, Limits};
use elves_shared::wire::{AppPackage, AppSet};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Notify};

/// The marker a center install leaves in the app directory: `{"version", "sha256"}`.
pub const MARKER: &str = ".elves-package";
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A failed set is tried again after this long (or when a new set arrives).
const RETRY_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("app {app}: download: {message}")]
    Download { app: String, message: String },
    #[error("app {app}: package sha256 is {got}, the center said {expected}")]
    HashMismatch {
        app: String,
        got: String,
        expected: String,
    },
    #[error("app {app}: package refused: {source}")]
    Refused {
        app: String,
        source: package::PackageError,
    },
    #[error("app {app}: {message}")]
    Io { app: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Marker {
    version: String,
    sha256: String,
}

/// Center packages installed under `apps_dir`: app name → SHA-256 (from the markers).
pub fn installed_packages(apps_dir: &Path) -> BTreeMap<String, String> {
    let mut packages = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(apps_dir) else {
        return packages;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !elves_shared::names::is_valid_name(name) {
            continue;
        }
        if let Some(marker) = read_marker(&entry.path()) {
            packages.insert(name.to_string(), marker.sha256);
        }
    }
    packages
}

fn read_marker(app_dir: &Path) -> Option<Marker> {
    let text = std::fs::read_to_string(app_dir.join(MARKER)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Downloads and installs packages for one agent.
#[derive(Clone)]
pub struct Installer {
    apps_dir: PathBuf,
    limits: Limits,
    http: reqwest::Client,
    /// Replaces scheme, host and port of the links (an agent behind NAT), when set.
    download_base: Option<String>,
}

impl Installer {
    /// Downloads follow the links' scheme: `https://` when the center serves its API over TLS
    /// (or `download_base` says so). `center_ca` (`center.tls_ca`, checked when the
    /// configuration is loaded) is then the only CA the center's certificate may chain to.
    pub fn new(
        apps_dir: PathBuf,
        limits: Limits,
        download_base: Option<String>,
        center_ca: Option<&Path>,
    ) -> Installer {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(DOWNLOAD_TIMEOUT);
        if let Some(path) = center_ca {
            match center_certificates(path) {
                Ok(certificates) => {
                    builder = builder.tls_built_in_root_certs(false);
                    for certificate in certificates {
                        builder = builder.add_root_certificate(certificate);
                    }
                }
                // Downloads from an https:// center then fail, each naming the certificate.
                Err(err) => log::error!("center.tls_ca: {err}"),
            }
        }
        let http = builder.build().unwrap_or_else(|err| {
            log::error!("package downloads: {err}; using a default client");
            reqwest::Client::new()
        });
        Installer {
            apps_dir,
            limits,
            http,
            download_base: download_base.filter(|base| !base.is_empty()),
        }
    }

    /// Brings the apps directory to `set`; true when something changed. Stops at the first
    /// failure (the rest is tried again with the next set or retry).
    pub async fn apply(&self, set: &AppSet) -> Result<bool, InstallError> {
        let mut changed = false;
        for app in &set.apps {
            if !elves_shared::names::is_valid_name(&app.name)
                || !package::is_valid_sha256(&app.sha256)
            {
                log::warn!("app set: skipped malformed entry {:?}", app.name);
                continue;
            }
            if self.install(app).await? {
                changed = true;
            }
        }
        let listed: Vec<&str> = set.apps.iter().map(|app| app.name.as_str()).collect();
        let installed = {
            let apps_dir = self.apps_dir.clone();
            tokio::task::spawn_blocking(move || installed_packages(&apps_dir))
                .await
                .unwrap_or_default()
        };
        for name in installed.keys() {
            if !listed.contains(&name.as_str()) {
                let apps_dir = self.apps_dir.clone();
                let app = name.clone();
                let moved = tokio::task::spawn_blocking(move || set_aside(&apps_dir, &app))
                    .await
                    .map_err(|err| io_error(name, err))?
                    .map_err(|err| io_error(name, err))?;
                if moved {
                    log::info!("app {name}: no longer assigned by the center, set aside");
                    changed = true;
                }
            }
        }
        Ok(changed)
    }

    /// Installs one app unless it already is at this package; true when it changed.
    async fn install(&self, app: &AppPackage) -> Result<bool, InstallError> {
        let app_dir = self.apps_dir.join(&app.name);
        let previous_dir = self.apps_dir.join(format!(".{}.previous", app.name));
        let (current, previous) = {
            let (app_dir, previous_dir) = (app_dir.clone(), previous_dir.clone());
            tokio::task::spawn_blocking(move || (read_marker(&app_dir), read_marker(&previous_dir)))
                .await
                .unwrap_or((None, None))
        };
        if current
            .as_ref()
            .is_some_and(|marker| marker.sha256 == app.sha256)
        {
            // The same bytes may come back under a new version (a re-release): only the label
            // changes.
            return self.label(app).await;
        }
        if previous
            .as_ref()
            .is_some_and(|marker| marker.sha256 == app.sha256)
        {
            // A rollback to the version kept aside: swap it back, no download.
            let (apps_dir, name) = (self.apps_dir.clone(), app.name.clone());
            tokio::task::spawn_blocking(move || swap_in(&apps_dir, &name, &previous_dir))
                .await
                .map_err(|err| io_error(&app.name, err))?
                .map_err(|err| io_error(&app.name, err))?;
            self.label(app).await?;
            log::info!(
                "app {}: back to version {} (kept aside)",
                app.name,
                app.version
            );
            return Ok(true);
        }
        let zip_path = self.download(app).await?;
        let staged =
            self.apps_dir
                .join(format!(".{}.tmp-{:016x}", app.name, rand::random::<u64>()));
        let limits = self.limits;
        let marker = Marker {
            version: app.version.clone(),
            sha256: app.sha256.clone(),
        };
        let (apps_dir, name, zip, stage) = (
            self.apps_dir.clone(),
            app.name.clone(),
            zip_path.clone(),
            staged.clone(),
        );
        let outcome = tokio::task::spawn_blocking(move || {
            let result = stage_package(&zip, &stage, &limits, &marker)
                .and_then(|()| swap_in(&apps_dir, &name, &stage).map_err(StageError::Io));
            let _ = std::fs::remove_file(&zip);
            if result.is_err() {
                let _ = std::fs::remove_dir_all(&stage);
            }
            result
        })
        .await
        .map_err(|err| io_error(&app.name, err))?;
        match outcome {
            Ok(()) => {
                log::info!(
                    "app {}: version {} installed ({})",
                    app.name,
                    app.version,
                    app.sha256
                );
                Ok(true)
            }
            Err(StageError::Refused(source)) => Err(InstallError::Refused {
                app: app.name.clone(),
                source,
            }),
            Err(StageError::Io(err)) => Err(io_error(&app.name, err)),
        }
    }

    /// Makes the installed app, already at `app`'s package, carry `app`'s version in its
    /// marker and `VERSION`; true when that changed anything.
    async fn label(&self, app: &AppPackage) -> Result<bool, InstallError> {
        let app_dir = self.apps_dir.join(&app.name);
        let marker = Marker {
            version: app.version.clone(),
            sha256: app.sha256.clone(),
        };
        let relabelled = tokio::task::spawn_blocking(move || relabel(&app_dir, &marker))
            .await
            .map_err(|err| io_error(&app.name, err))?
            .map_err(|err| io_error(&app.name, err))?;
        if relabelled {
            log::info!(
                "app {}: version {} is the package already installed ({}), relabelled",
                app.name,
                app.version,
                app.sha256
            );
        }
        Ok(relabelled)
    }

    fn url_of(&self, app: &AppPackage) -> String {
        match &self.download_base {
            Some(base) => match app.url.find("/api/") {
                Some(index) => format!("{}{}", base.trim_end_matches('/'), &app.url[index..]),
                None => app.url.clone(),
            },
            None => app.url.clone(),
        }
    }

    /// Streams the package to `<apps>/.downloads/<sha256>.part`, checking size and hash.
    async fn download(&self, app: &AppPackage) -> Result<PathBuf, InstallError> {
        let failed = |message: String| InstallError::Download {
            app: app.name.clone(),
            message,
        };
        let dir = self.apps_dir.join(".downloads");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|err| io_error(&app.name, err))?;
        let path = dir.join(format!("{}.part", app.sha256));
        let limit = app.size.min(self.limits.max_compressed_bytes);
        let mut response = self
            .http
            .get(self.url_of(app))
            .send()
            .await
            // With its causes: the TLS reason (an untrusted certificate) is only in them.
            .map_err(|err| failed(with_causes(&err)))?;
        if !response.status().is_success() {
            return Err(failed(format!("http status {}", response.status())));
        }
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|err| io_error(&app.name, err))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let result = async {
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|err| failed(err.to_string()))?
            {
                size += chunk.len() as u64;
                if size > limit {
                    return Err(failed(format!("more than the {limit} bytes announced")));
                }
                hasher.update(&chunk);
                file.write_all(&chunk)
                    .await
                    .map_err(|err| io_error(&app.name, err))?;
            }
            file.flush().await.map_err(|err| io_error(&app.name, err))?;
            let got = hex::encode(hasher.finalize());
            if got != app.sha256 {
                return Err(InstallError::HashMismatch {
                    app: app.name.clone(),
                    got,
                    expected: app.sha256.clone(),
                });
            }
            Ok(())
        }
        .await;
        if let Err(err) = result {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(err);
        }
        Ok(path)
    }
}

fn io_error(app: &str, err: impl std::fmt::Display) -> InstallError {
    InstallError::Io {
        app: app.to_string(),
        message: err.to_string(),
    }
}

enum StageError {
    Refused(package::PackageError),
    Io(std::io::Error),
}

/// Extracts `zip` into `stage` (which must not exist) and writes the marker and `VERSION`.
fn stage_package(
    zip: &Path,
    stage: &Path,
    limits: &Limits,
    marker: &Marker,
) -> Result<(), StageError> {
    let file = std::fs::File::open(zip).map_err(StageError::Io)?;
    let size = file.metadata().map_err(StageError::Io)?.len();
    package::extract(std::io::BufReader::new(file), size, limits, stage)
        .map_err(StageError::Refused)?;
    let text = serde_json::to_string(marker).unwrap_or_default();
    std::fs::write(stage.join(MARKER), text).map_err(StageError::Io)?;
    // The heartbeat reports the version from here, as for apps installed by hand.
    std::fs::write(stage.join("VERSION"), format!("{}\n", marker.version))
        .map_err(StageError::Io)?;
    Ok(())
}

/// Writes `VERSION` and the marker of an installed app so that they say `marker`, unless they
/// already do; true when it wrote. Each file is replaced whole by a rename, so that a reader
/// (the heartbeat) never sees half a version. `VERSION` goes first: the marker, written last,
/// is what says the relabelling finished, and one interrupted is done again at the next set.
fn relabel(app_dir: &Path, marker: &Marker) -> std::io::Result<bool> {
    let version_file = app_dir.join("VERSION");
    let labelled = read_marker(app_dir).as_ref() == Some(marker)
        && std::fs::read_to_string(&version_file).is_ok_and(|text| text.trim() == marker.version);
    if labelled {
        return Ok(false);
    }
    replace_file(&version_file, format!("{}\n", marker.version).as_bytes())?;
    let text = serde_json::to_string(marker).map_err(std::io::Error::other)?;
    replace_file(&app_dir.join(MARKER), text.as_bytes())?;
    Ok(true)
}

/// Replaces `path` with `content` through a temporary file next to it and a rename.
fn replace_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("file");
    let temporary = path.with_file_name(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
    let written =
        std::fs::write(&temporary, content).and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Puts `incoming` in place of `<apps>/<name>`; what was there becomes `.<name>.previous`
/// (replacing the older one). `incoming` may itself be the previous directory (a rollback).
fn swap_in(apps_dir: &Path, name: &str, incoming: &Path) -> std::io::Result<()> {
    let current = apps_dir.join(name);
    let previous = apps_dir.join(format!(".{name}.previous"));
    if !current.exists() {
        return std::fs::rename(incoming, &current);
    }
    if exchange(incoming, &current).is_ok() {
        // `incoming` now holds the replaced version.
        if incoming != previous {
            remove_dir_if_present(&previous)?;
            std::fs::rename(incoming, &previous)?;
        }
        return Ok(());
    }
    // No atomic exchange here: two renames, with a short moment without the app.
    let parked = apps_dir.join(format!(".{name}.parked-{:016x}", rand::random::<u64>()));
    std::fs::rename(&current, &parked)?;
    std::fs::rename(incoming, &current)?;
    remove_dir_if_present(&previous)?;
    std::fs::rename(&parked, &previous)
}

/// Moves a center-installed app out of the way (kept as `.<name>.previous`); false when it
/// was not there.
fn set_aside(apps_dir: &Path, name: &str) -> std::io::Result<bool> {
    let current = apps_dir.join(name);
    if read_marker(&current).is_none() {
        return Ok(false);
    }
    let previous = apps_dir.join(format!(".{name}.previous"));
    remove_dir_if_present(&previous)?;
    std::fs::rename(&current, &previous)?;
    Ok(true)
}

fn remove_dir_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Atomically swaps two paths (Linux `renameat2(RENAME_EXCHANGE)`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The CA certificates of a PEM file, for reqwest.
fn center_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem =
        std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| format!("{}: {err}", path.display()))
}

/// Applies the latest set until shutdown; after each change `changed` is notified (the
/// heartbeat goes out at once to report it).
pub async fn run(
    installer: Installer,
    mut sets: watch::Receiver<Option<AppSet>>,
    changed: Arc<Notify>,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        let set = sets.borrow_and_update().clone();
        if let Some(set) = set {
            match installer.apply(&set).await {
                Ok(true) => changed.notify_one(),
                Ok(false) => {}
                Err(err) => {
                    log::warn!("app set: {err}; retrying in {RETRY_AFTER:?}");
                    changed.notify_one();
                    tokio::select! {
                        _ = stopping.wait_for(|stopping| *stopping) => return,
                        _ = sets.changed() => continue,
                        () = tokio::time::sleep(RETRY_AFTER) => {
                            sets.mark_changed();
                            continue;
                        }
                    }
                }
            }
        }
        tokio::select! {
            _ = stopping.wait_for(|stopping| *stopping) => return,
            changed = sets.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_app(dir: &Path, marker: Option<&str>) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("app-worker"), b"#!/bin/sh\n").unwrap();
        if let Some(sha) = marker {
            let marker = Marker {
                version: "1".into(),
                sha256: sha.into(),
            };
            std::fs::write(dir.join(MARKER), serde_json::to_string(&marker).unwrap()).unwrap();
        }
    }

    #[test]
    fn swap_keeps_the_previous_version_and_can_swap_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let apps = dir.path();
        write_app(&apps.join("demo"), Some("old"));
        write_app(&apps.join(".demo.tmp-1"), Some("new"));
        swap_in(apps, "demo", &apps.join(".demo.tmp-1")).unwrap();
        assert_eq!(read_marker(&apps.join("demo")).unwrap().sha256, "new");
        assert_eq!(
            read_marker(&apps.join(".demo.previous")).unwrap().sha256,
            "old"
        );
        assert!(!apps.join(".demo.tmp-1").exists());
        swap_in(apps, "demo", &apps.join(".demo.previous")).unwrap();
        assert_eq!(read_marker(&apps.join("demo")).unwrap().sha256, "old");
        assert_eq!(
            read_marker(&apps.join(".demo.previous")).unwrap().sha256,
            "new"
        );
    }

    #[test]
    fn only_center_installed_apps_are_reported_and_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let apps = dir.path();
        write_app(&apps.join("managed"), Some("abc"));
        write_app(&apps.join("by-hand"), None);
        write_app(&apps.join(".managed.previous"), Some("older"));
        let installed = installed_packages(apps);
        assert_eq!(installed.len(), 1);
        assert_eq!(installed["managed"], "abc");
        assert!(!set_aside(apps, "by-hand").unwrap());
        assert!(apps.join("by-hand").exists());
        assert!(set_aside(apps, "managed").unwrap());
        assert!(!apps.join("managed").exists());
        assert_eq!(
            read_marker(&apps.join(".managed.previous")).unwrap().sha256,
            "abc"
        );
    }

    #[tokio::test]
    async fn the_same_package_under_a_new_version_is_relabelled_without_a_download() {
        let dir = tempfile::tempdir().unwrap();
        let apps = dir.path();
        let sha = "ab".repeat(32);
        let installed = apps.join("demo");
        std::fs::create_dir_all(&installed).unwrap();
        std::fs::write(installed.join("app-worker"), b"#!/bin/sh\n").unwrap();
        let marker = Marker {
            version: "1.0".into(),
            sha256: sha.clone(),
        };
        std::fs::write(
            installed.join(MARKER),
            serde_json::to_string(&marker).unwrap(),
        )
        .unwrap();
        std::fs::write(installed.join("VERSION"), "1.0\n").unwrap();
        // Nothing listens there: a download attempt would fail the apply.
        let installer = Installer::new(apps.to_path_buf(), Limits::default(), None, None);
        let set = |version: &str| AppSet {
            agent: elves_shared::wire::AgentId::parse("host-1").unwrap(),
            issued_at: 0,
            deadline: u64::MAX,
            apps: vec![AppPackage {
                name: "demo".into(),
                version: version.into(),
                sha256: sha.clone(),
                size: 10,
                url: "http://127.0.0.1:1/api/v2/app/download/x".into(),
            }],
        };

        assert!(
            !installer.apply(&set("1.0")).await.unwrap(),
            "nothing to do"
        );
        assert!(installer.apply(&set("2.0")).await.unwrap(), "relabelled");
        let version = std::fs::read_to_string(installed.join("VERSION")).unwrap();
        assert_eq!(version.trim(), "2.0");
        assert_eq!(read_marker(&installed).unwrap().version, "2.0");
        assert_eq!(read_marker(&installed).unwrap().sha256, sha);
        assert_eq!(crate::app_scan::installed_apps(apps)["demo"], "2.0");
        assert!(!installer.apply(&set("2.0")).await.unwrap(), "done once");
    }

    #[test]
    fn a_hostile_package_is_not_staged() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("evil.zip");
        let bytes =
            package::testing::zip_of(&[package::testing::Entry::File("../evil", b"x", 0o644)]);
        std::fs::write(&zip, bytes).unwrap();
        let stage = dir.path().join(".evil.tmp-1");
        let marker = Marker {
            version: "1".into(),
            sha256: "0".repeat(64),
        };
        assert!(matches!(
            stage_package(&zip, &stage, &Limits::default(), &marker),
            Err(StageError::Refused(_))
        ));
        assert!(!dir.path().join("evil").exists());
    }
}
