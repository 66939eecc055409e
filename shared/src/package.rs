//! App packages (SPEC §3, §5, §11 "Packages"): a zip named `<app>_<version>.zip` whose root is
//! the app directory's content.
//!
//! One set of rules, used at three places: the center refuses a package before storing
//! anything ([`validate`]), the agent checks it again while installing ([`extract`]), and
//! `elves app pack` builds one ([`pack_dir`]).
//! The rules: size, entry-count, uncompressed-size and per-entry compression-ratio limits; entry
//! names are relative, without `..`, backslashes or NUL; only files, directories and symlinks;
//! no encrypted entries; no duplicates; a symlink's target, resolved the way the kernel would
//! (through the other symlinks of the package), stays inside the app directory; no entry lives
//! under a symlink. Sizes are the bytes actually inflated, never the ones the headers claim.
//!
//! This module does no network I/O and knows nothing of where packages are stored.

use crate::names::{is_valid_name, is_valid_version};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, Write};
use std::path::{Component, Path, PathBuf};

/// Entries smaller than this are not held to the compression-ratio limit: a small file can
/// compress very well and still be harmless.
const RATIO_EXEMPT_BYTES: u64 = 64 * 1024;
/// A symlink target longer than this is refused (no sane app needs more).
const MAX_SYMLINK_TARGET: u64 = 4096;
/// Symlinks followed while resolving one target, as the kernel's own limit.
const MAX_SYMLINK_HOPS: usize = 40;

/// What a package may be (SPEC §11 defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Bytes of the zip file itself.
    pub max_compressed_bytes: u64,
    /// Bytes of all entries once inflated.
    pub max_uncompressed_bytes: u64,
    pub max_entries: usize,
    /// Inflated size over compressed size, per entry.
    pub max_ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_compressed_bytes: 64 * 1024 * 1024,
            max_uncompressed_bytes: 512 * 1024 * 1024,
            max_entries: 10_000,
            max_ratio: 200,
        }
    }
}

/// Why a package was refused. Each message names the entry and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    #[error("bad package file name {0:?}: expected <app>_<version>.zip")]
    BadFileName(String),
    #[error("bad app name {0:?}")]
    BadAppName(String),
    #[error("bad version {0:?}: expected 1 to 32 of [0-9A-Za-z.+-]")]
    BadVersion(String),
    #[error("package is {size} bytes, over the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("not a readable zip archive: {0}")]
    NotZip(String),
    #[error("package has {count} entries, over the limit of {limit}")]
    TooManyEntries { count: usize, limit: usize },
    #[error("entry {0:?}: unsafe path (absolute, `..`, backslash, NUL or empty component)")]
    UnsafePath(String),
    #[error("entry {0:?}: appears twice")]
    Duplicate(String),
    #[error("entry {0:?}: encrypted entries are not accepted")]
    Encrypted(String),
    #[error("entry {entry:?}: symlink to {target:?} leaves the app directory")]
    SymlinkEscapes { entry: String, target: String },
    #[error("entry {0:?}: lies under a symlink")]
    UnderSymlink(String),
    #[error("entry {entry:?}: compression ratio {ratio} is over the limit of {limit}")]
    RatioExceeded {
        entry: String,
        ratio: u64,
        limit: u64,
    },
    #[error("package inflates to more than {limit} bytes")]
    UncompressedTooLarge { limit: u64 },
    #[error("entry {0:?}: content does not match its header (size or crc)")]
    Corrupt(String),
    #[error("io: {0}")]
    Io(String),
}

impl From<std::io::Error> for PackageError {
    fn from(err: std::io::Error) -> Self {
        PackageError::Io(err.to_string())
    }
}

/// `<app>_<version>.zip`, split at the last `_`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageName {
    pub app: String,
    pub version: String,
}

impl PackageName {
    pub fn parse(file_name: &str) -> Result<PackageName, PackageError> {
        let bad = || PackageError::BadFileName(file_name.to_string());
        let stem = file_name.strip_suffix(".zip").ok_or_else(bad)?;
        let (app, version) = stem.rsplit_once('_').ok_or_else(bad)?;
        if !is_valid_name(app) {
            return Err(PackageError::BadAppName(app.to_string()));
        }
        if !is_valid_version(version) {
            return Err(PackageError::BadVersion(version.to_string()));
        }
        Ok(PackageName {
            app: app.to_string(),
            version: version.to_string(),
        })
    }

    pub fn file_name(&self) -> String {
        format!("{}_{}.zip", self.app, self.version)
    }
}

/// A lowercase hex SHA-256 (64 characters).
pub fn is_valid_sha256(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lowercase hex SHA-256 of a file, read in chunks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// What a valid package holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub n_entries: usize,
    /// Inflated bytes of all files.
    pub uncompressed_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File { mode: u32, size: u64 },
    Symlink { target: String },
}

#[derive(Debug, Clone)]
struct Planned {
    index: usize,
    path: PathBuf,
    kind: Kind,
}

/// Checks a whole package without writing anything: every entry is inflated (to nowhere) to
/// count its real size and check its CRC.
pub fn validate<R: Read + Seek>(
    reader: R,
    compressed_bytes: u64,
    limits: &Limits,
) -> Result<Summary, PackageError> {
    let (mut archive, plan) = plan(reader, compressed_bytes, limits)?;
    let mut total = 0u64;
    for entry in &plan {
        if let Kind::File { size, .. } = entry.kind {
            let mut file = archive
                .by_index(entry.index)
                .map_err(|err| PackageError::NotZip(err.to_string()))?;
            let copied = copy_limited(&mut file, &mut std::io::sink(), size, &entry.path)?;
            total = add_within(total, copied, limits)?;
        }
    }
    Ok(Summary {
        n_entries: plan.len(),
        uncompressed_bytes: total,
    })
}

/// Extracts a package into `dest`, which must not exist yet (it is created). Directories and
/// files first (files created exclusively, never through a symlink), symlinks last. On error
/// `dest` may hold a partial tree: the caller removes it.
pub fn extract<R: Read + Seek>(
    reader: R,
    compressed_bytes: u64,
    limits: &Limits,
    dest: &Path,
) -> Result<Summary, PackageError> {
    let (mut archive, plan) = plan(reader, compressed_bytes, limits)?;
    std::fs::create_dir(dest)?;
    let mut total = 0u64;
    for entry in &plan {
        let target = dest.join(&entry.path);
        match &entry.kind {
            Kind::Dir => std::fs::create_dir_all(&target)?,
            Kind::File { mode, size } => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)?;
                let mut file = archive
                    .by_index(entry.index)
                    .map_err(|err| PackageError::NotZip(err.to_string()))?;
                let copied = copy_limited(&mut file, &mut out, *size, &entry.path)?;
                total = add_within(total, copied, limits)?;
                out.flush()?;
                set_mode(&target, *mode)?;
            }
            Kind::Symlink { .. } => {}
        }
    }
    for entry in &plan {
        if let Kind::Symlink { target } = &entry.kind {
            let link = dest.join(&entry.path);
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent)?;
            }
            make_symlink(target, &link)?;
        }
    }
    Ok(Summary {
        n_entries: plan.len(),
        uncompressed_bytes: total,
    })
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn make_symlink(target: &str, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn make_symlink(_: &str, link: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other(format!(
        "symlink {} not supported here",
        link.display()
    )))
}

fn add_within(total: u64, more: u64, limits: &Limits) -> Result<u64, PackageError> {
    let total = total.saturating_add(more);
    if total > limits.max_uncompressed_bytes {
        return Err(PackageError::UncompressedTooLarge {
            limit: limits.max_uncompressed_bytes,
        });
    }
    Ok(total)
}

/// Copies at most `declared` bytes; more (a header that lies) or a CRC error is `Corrupt`.
fn copy_limited(
    from: &mut impl Read,
    to: &mut impl Write,
    declared: u64,
    path: &Path,
) -> Result<u64, PackageError> {
    let corrupt = || PackageError::Corrupt(path.display().to_string());
    let copied = std::io::copy(&mut from.take(declared), to).map_err(|_| corrupt())?;
    // Reading one more byte makes the zip reader check the CRC at the end of the entry, and
    // tells an entry that inflates beyond its declared size.
    let mut one = [0u8; 1];
    match from.read(&mut one) {
        Ok(0) if copied == declared => Ok(copied),
        _ => Err(corrupt()),
    }
}

type Archive<R> = zip::ZipArchive<R>;

/// Reads the central directory and checks everything that does not need inflating the files.
fn plan<R: Read + Seek>(
    reader: R,
    compressed_bytes: u64,
    limits: &Limits,
) -> Result<(Archive<R>, Vec<Planned>), PackageError> {
    if compressed_bytes > limits.max_compressed_bytes {
        return Err(PackageError::TooLarge {
            size: compressed_bytes,
            limit: limits.max_compressed_bytes,
        });
    }
    let mut archive =
        zip::ZipArchive::new(reader).map_err(|err| PackageError::NotZip(err.to_string()))?;
    if archive.len() > limits.max_entries {
        return Err(PackageError::TooManyEntries {
            count: archive.len(),
            limit: limits.max_entries,
        });
    }
    let mut plan = Vec::with_capacity(archive.len());
    let mut seen = BTreeSet::new();
    let mut declared_total = 0u64;
    for index in 0..archive.len() {
        let file = archive
            .by_index_raw(index)
            .map_err(|err| PackageError::NotZip(err.to_string()))?;
        let raw_name = file
            .name()
            .map_err(|err| PackageError::NotZip(err.to_string()))?
            .to_string();
        let path = safe_path(&raw_name)?;
        if file.encrypted() {
            return Err(PackageError::Encrypted(raw_name));
        }
        let kind = if file.is_dir() {
            Kind::Dir
        } else if file.is_symlink() {
            if file.size() > MAX_SYMLINK_TARGET {
                return Err(PackageError::SymlinkEscapes {
                    entry: raw_name,
                    target: "(too long)".to_string(),
                });
            }
            Kind::Symlink {
                target: String::new(),
            }
        } else {
            let size = file.size();
            let compressed = file.compressed_size().max(1);
            if size > RATIO_EXEMPT_BYTES && size / compressed > limits.max_ratio {
                return Err(PackageError::RatioExceeded {
                    entry: raw_name,
                    ratio: size / compressed,
                    limit: limits.max_ratio,
                });
            }
            declared_total = add_within(declared_total, size, limits)?;
            // Only the permission bits: no setuid, setgid or sticky bit from a package.
            let mode = file.unix_mode().map_or(0o644, |mode| mode & 0o777);
            Kind::File { mode, size }
        };
        drop(file);
        if path.as_os_str().is_empty() {
            // `./`: the root itself.
            if kind == Kind::Dir {
                continue;
            }
            return Err(PackageError::UnsafePath(raw_name));
        }
        if !seen.insert(path.clone()) {
            return Err(PackageError::Duplicate(raw_name));
        }
        plan.push(Planned { index, path, kind });
    }
    // Symlink targets are the entry's content.
    for entry in plan.iter_mut() {
        if let Kind::Symlink { target } = &mut entry.kind {
            let mut file = archive
                .by_index(entry.index)
                .map_err(|err| PackageError::NotZip(err.to_string()))?;
            let mut bytes = Vec::new();
            file.by_ref()
                .take(MAX_SYMLINK_TARGET)
                .read_to_end(&mut bytes)
                .map_err(|_| PackageError::Corrupt(entry.path.display().to_string()))?;
            *target = String::from_utf8(bytes)
                .map_err(|_| PackageError::Corrupt(entry.path.display().to_string()))?;
        }
    }
    check_symlinks(&plan)?;
    Ok((archive, plan))
}

/// A relative path made of normal components only (`.` components dropped).
fn safe_path(raw: &str) -> Result<PathBuf, PackageError> {
    let unsafe_path = || PackageError::UnsafePath(raw.to_string());
    if raw.contains('\\') || raw.contains('\0') || raw.starts_with('/') {
        return Err(unsafe_path());
    }
    let trimmed = raw.strip_suffix('/').unwrap_or(raw);
    let mut path = PathBuf::new();
    for part in trimmed.split('/') {
        match part {
            "." => continue,
            "" | ".." => return Err(unsafe_path()),
            // `C:` and the like mean a drive on Windows.
            part if part.contains(':') && part.len() == 2 => return Err(unsafe_path()),
            part => path.push(part),
        }
    }
    if path
        .components()
        .any(|component| !matches!(component, Component::Normal(_)))
    {
        return Err(unsafe_path());
    }
    Ok(path)
}

/// Every symlink's target resolves inside the root, following the package's other symlinks;
/// and no entry lies under a symlink (it would be written through it).
fn check_symlinks(plan: &[Planned]) -> Result<(), PackageError> {
    let links: BTreeMap<PathBuf, &str> = plan
        .iter()
        .filter_map(|entry| match &entry.kind {
            Kind::Symlink { target } => Some((entry.path.clone(), target.as_str())),
            _ => None,
        })
        .collect();
    if links.is_empty() {
        return Ok(());
    }
    for entry in plan {
        let mut ancestor = entry.path.parent();
        while let Some(dir) = ancestor {
            if links.contains_key(dir) {
                return Err(PackageError::UnderSymlink(entry.path.display().to_string()));
            }
            ancestor = dir.parent();
        }
    }
    for (link, target) in &links {
        let escapes = || PackageError::SymlinkEscapes {
            entry: link.display().to_string(),
            target: target.to_string(),
        };
        if target.is_empty() || target.starts_with('/') || target.contains('\0') {
            return Err(escapes());
        }
        let mut start: Vec<String> = link
            .parent()
            .map(|parent| {
                parent
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let mut hops = 0;
        if !resolve_inside(&mut start, target, &links, &mut hops) {
            return Err(escapes());
        }
    }
    Ok(())
}

/// Walks `target` from the directory `at` (components from the root), following the package's
/// symlinks as the kernel would; false when the walk leaves the root or loops.
fn resolve_inside(
    at: &mut Vec<String>,
    target: &str,
    links: &BTreeMap<PathBuf, &str>,
    hops: &mut usize,
) -> bool {
    if target.starts_with('/') {
        return false;
    }
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if at.pop().is_none() {
                    return false;
                }
            }
            name => {
                at.push(name.to_string());
                let here: PathBuf = at.iter().collect();
                if let Some(next) = links.get(&here) {
                    *hops += 1;
                    if *hops > MAX_SYMLINK_HOPS {
                        return false;
                    }
                    at.pop();
                    if !resolve_inside(at, next, links, hops) {
                        return false;
                    }
                }
            }
        }
    }
    true
}

/// Zips the content of `dir` (not the directory itself), in a stable order, keeping permission
/// bits and relative symlinks. `__pycache__` directories are left out.
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, PackageError> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut stack = vec![PathBuf::new()];
    let zip_error = |err: zip::result::ZipError| PackageError::Io(err.to_string());
    while let Some(relative) = stack.pop() {
        let mut entries: Vec<_> =
            std::fs::read_dir(dir.join(&relative))?.collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries.into_iter().rev() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(PackageError::UnsafePath(
                    entry.file_name().to_string_lossy().into_owned(),
                ));
            };
            if name == "__pycache__" {
                continue;
            }
            let path = relative.join(name);
            let zip_name = path
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let metadata = std::fs::symlink_metadata(entry.path())?;
            let mode = permission_bits(&metadata);
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .unix_permissions(mode)
                .large_file(metadata.len() > u64::from(u32::MAX));
            if metadata.file_type().is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                writer
                    .add_symlink(zip_name, target.to_string_lossy(), options)
                    .map_err(zip_error)?;
            } else if metadata.is_dir() {
                writer
                    .add_directory(format!("{zip_name}/"), options)
                    .map_err(zip_error)?;
                stack.push(path);
            } else {
                writer.start_file(zip_name, options).map_err(zip_error)?;
                let mut file = std::fs::File::open(entry.path())?;
                std::io::copy(&mut file, &mut writer)?;
            }
        }
    }
    let cursor = writer.finish().map_err(zip_error)?;
    Ok(cursor.into_inner())
}

#[cfg(unix)]
fn permission_bits(metadata: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    metadata.permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn permission_bits(_: &std::fs::Metadata) -> u32 {
    0o644
}

/// Builders of hostile packages, for the tests of the center, the agent and the CLI.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    /// One entry of a hand-made zip.
    pub enum Entry<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        /// Stored without compression (so its ratio is 1).
        Stored(&'a str, &'a [u8]),
    }

    /// A zip with exactly these entries, names taken as given (even hostile ones).
    pub fn zip_of(entries: &[Entry<'_>]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let deflated =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for entry in entries {
            match entry {
                Entry::File(name, content, mode) => {
                    writer
                        .start_file(*name, deflated.unix_permissions(*mode))
                        .expect("start file");
                    writer.write_all(content).expect("write");
                }
                Entry::Stored(name, content) => {
                    let stored = SimpleFileOptions::default()
                        .compression_method(zip::CompressionMethod::Stored);
                    writer.start_file(*name, stored).expect("start file");
                    writer.write_all(content).expect("write");
                }
                Entry::Dir(name) => writer.add_directory(*name, deflated).expect("dir"),
                Entry::Symlink(name, target) => writer
                    .add_symlink(*name, *target, deflated)
                    .expect("symlink"),
            }
        }
        writer.finish().expect("finish").into_inner()
    }

    /// A minimal valid app: an executable `app-worker` that answers `reply`.
    pub fn app_zip(reply: &str) -> Vec<u8> {
        let script = format!(
            "#!/bin/sh\necho '<ElvesWFlag>true</ElvesWFlag><ElvesWResult>{reply}</ElvesWResult>'\n"
        );
        zip_of(&[Entry::File("app-worker", script.as_bytes(), 0o755)])
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{zip_of, Entry};
    use super::*;
    use std::io::Cursor;

    fn check(bytes: &[u8]) -> Result<Summary, PackageError> {
        validate(Cursor::new(bytes), bytes.len() as u64, &Limits::default())
    }

    #[test]
    fn names_split_at_the_last_underscore() {
        let name = PackageName::parse("my_app_1.2.3.zip").unwrap();
        assert_eq!(name.app, "my_app");
        assert_eq!(name.version, "1.2.3");
        assert_eq!(name.file_name(), "my_app_1.2.3.zip");
        for bad in [
            "app.zip",
            "app_1.0.tar",
            "_1.0.zip",
            "app_.zip",
            "a/b_1.zip",
            "app_1 0.zip",
        ] {
            assert!(PackageName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_plain_app_is_valid_and_extracts_with_its_modes() {
        let bytes = zip_of(&[
            Entry::File("app-worker", b"#!/bin/sh\necho hi\n", 0o755),
            Entry::Dir("lib/"),
            Entry::File("lib/data.txt", b"data", 0o640),
            Entry::Symlink("current", "lib/data.txt"),
            Entry::Symlink("lib/up", "../app-worker"),
        ]);
        let summary = check(&bytes).unwrap();
        assert_eq!(summary.n_entries, 5);
        let dir = tempfile_dir();
        let dest = dir.join("app");
        extract(
            Cursor::new(&bytes),
            bytes.len() as u64,
            &Limits::default(),
            &dest,
        )
        .unwrap();
        assert_eq!(std::fs::read(dest.join("current")).unwrap(), b"data");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &str| {
                std::fs::metadata(dest.join(p))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!(mode("app-worker"), 0o755);
            assert_eq!(mode("lib/data.txt"), 0o640);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("elves-pkg-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn hostile_paths_are_refused() {
        for name in [
            "/etc/passwd",
            "../evil",
            "a/../../evil",
            "a\\..\\evil",
            "C:/x",
            "a//b",
        ] {
            let bytes = zip_of(&[Entry::File(name, b"x", 0o644)]);
            assert!(
                matches!(check(&bytes), Err(PackageError::UnsafePath(_))),
                "{name}: {:?}",
                check(&bytes)
            );
        }
    }

    #[test]
    fn escaping_symlinks_are_refused() {
        let cases: &[&[Entry<'_>]] = &[
            &[Entry::Symlink("out", "/etc")],
            &[Entry::Symlink("out", "..")],
            &[Entry::Symlink("sub/out", "../../x")],
            // `here` is the root, so `here/..` is above it even though it looks inside.
            &[
                Entry::Symlink("here", "."),
                Entry::Symlink("out", "here/.."),
            ],
            &[Entry::Symlink("a", "b"), Entry::Symlink("b", "a/x")],
        ];
        for entries in cases {
            let bytes = zip_of(entries);
            assert!(
                matches!(check(&bytes), Err(PackageError::SymlinkEscapes { .. })),
                "{:?}",
                check(&bytes)
            );
        }
        let through = zip_of(&[
            Entry::Symlink("link", "sub"),
            Entry::File("link/file", b"x", 0o644),
        ]);
        assert!(matches!(
            check(&through),
            Err(PackageError::UnderSymlink(_))
        ));
    }

    #[test]
    fn bombs_and_limits_are_refused() {
        let zeros = vec![0u8; 4 * 1024 * 1024];
        let bomb = zip_of(&[Entry::File("zeros", &zeros, 0o644)]);
        assert!(matches!(
            check(&bomb),
            Err(PackageError::RatioExceeded { .. })
        ));

        let small = Limits {
            max_uncompressed_bytes: 1000,
            ..Limits::default()
        };
        let big = zip_of(&[
            Entry::Stored("a", &[1u8; 600]),
            Entry::Stored("b", &[2u8; 600]),
        ]);
        assert!(matches!(
            validate(Cursor::new(&big), big.len() as u64, &small),
            Err(PackageError::UncompressedTooLarge { .. })
        ));
        let few = Limits {
            max_entries: 1,
            ..Limits::default()
        };
        assert!(matches!(
            validate(Cursor::new(&big), big.len() as u64, &few),
            Err(PackageError::TooManyEntries { .. })
        ));
        assert!(matches!(
            validate(Cursor::new(&big), u64::MAX, &Limits::default()),
            Err(PackageError::TooLarge { .. })
        ));
        assert!(matches!(check(b"not a zip"), Err(PackageError::NotZip(_))));
        let twice = zip_of(&[
            Entry::File("a", b"1", 0o644),
            Entry::File("./a", b"2", 0o644),
        ]);
        assert!(matches!(check(&twice), Err(PackageError::Duplicate(_))));
    }

    #[test]
    fn a_header_that_lies_about_the_size_is_caught() {
        let mut bytes = zip_of(&[Entry::Stored("f", b"0123456789")]);
        // Patch the central directory's uncompressed size (offset 24 in its header) to 5.
        let central = bytes
            .windows(4)
            .rposition(|window| window == [0x50, 0x4b, 0x01, 0x02])
            .unwrap();
        bytes[central + 24..central + 28].copy_from_slice(&5u32.to_le_bytes());
        assert!(check(&bytes).is_err());
    }

    #[test]
    fn pack_then_validate_round_trips() {
        let dir = tempfile_dir();
        let app = dir.join("demo");
        std::fs::create_dir_all(app.join("lib/__pycache__")).unwrap();
        std::fs::write(app.join("app-worker"), b"#!/bin/sh\n").unwrap();
        std::fs::write(app.join("lib/x.py"), b"print(1)\n").unwrap();
        std::fs::write(app.join("lib/__pycache__/x.pyc"), b"junk").unwrap();
        let bytes = pack_dir(&app).unwrap();
        let summary = check(&bytes).unwrap();
        assert_eq!(summary.n_entries, 3, "app-worker, lib/, lib/x.py");
        let dest = dir.join("out");
        extract(
            Cursor::new(&bytes),
            bytes.len() as u64,
            &Limits::default(),
            &dest,
        )
        .unwrap();
        assert_eq!(std::fs::read(dest.join("lib/x.py")).unwrap(), b"print(1)\n");
        assert!(!dest.join("lib/__pycache__").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
