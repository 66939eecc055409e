//! Cron definition files: `config/cron.d/*.toml`, each with `[[cron]]` entries (SPEC §7.3).
//!
//! Reading and checking only: the Cron actor hands the result to
//! [`crate::store::Store::sync_file_crons`]. A broken file or entry is reported by file and
//! entry name, and what it defined before is left as it is, so that a typo never removes a
//! working cron; the other files and entries still load.
//!
//! ```toml
//! [[cron]]
//! id = "nightly-backup"        # name of the entry, unique across files
//! agent = "10.0.0.7"           # an agent ip or id
//! app = "backup"
//! func = "run"
//! param = '{"target": "/srv"}' # JSON text (a TOML table or array is turned into JSON)
//! rule = "0 0 2 * * ?"         # Quartz
//! mode = "NP"                  # NP (default) or P
//! timeout = 600                # seconds, 0 or absent = the center's default
//! proxy = ""
//! enabled = true               # default true
//! ```

use crate::store::{CronDefinition, FileCron};
use elves_shared::quartz::QuartzRule;
use elves_shared::wire::{AgentId, Mode, TaskId};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// One problem found while loading, named by file and (when it got that far) entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DefinitionError {
    pub file: String,
    /// The entry's id, or `#<n>` (1-based) when the entry has no readable id; empty for
    /// problems of the whole file.
    pub entry: String,
    pub error: String,
}

impl std::fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.entry.is_empty() {
            write!(f, "{}: {}", self.file, self.error)
        } else {
            write!(f, "{} entry {}: {}", self.file, self.entry, self.error)
        }
    }
}

/// What the files say, and what could not be read.
#[derive(Debug, Clone, Default)]
pub struct Definitions {
    pub crons: Vec<FileCron>,
    pub errors: Vec<DefinitionError>,
    /// Files that could not be read at all: their crons stay as they are.
    pub broken_files: Vec<String>,
    /// Crons of entries that are broken: they stay as they are.
    pub broken_ids: Vec<TaskId>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    agent: String,
    app: String,
    func: String,
    #[serde(default)]
    param: Option<toml::Value>,
    rule: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    timeout: i64,
    #[serde(default)]
    proxy: String,
    #[serde(default = "default_enabled")]
    enabled: bool,
}

fn default_enabled() -> bool {
    true
}

/// The cron id of a file entry: the entry's id itself when it is a 16-hex id, else derived
/// from it (the same on every center and every reload).
pub fn cron_id_of(entry_id: &str) -> TaskId {
    if let Ok(id) = TaskId::parse(entry_id) {
        return id;
    }
    let digest = Sha256::digest(format!("cron.d:{entry_id}").as_bytes());
    let text = hex::encode(&digest[..8]);
    TaskId::parse(&text).unwrap_or_else(|_| TaskId::random())
}

/// Reads every `*.toml` of `dir`, in name order. A missing directory means no file crons.
pub fn load_dir(dir: &Path, default_timeout_s: u32) -> Definitions {
    let mut definitions = Definitions::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return definitions,
        Err(err) => {
            definitions.errors.push(DefinitionError {
                file: dir.display().to_string(),
                entry: String::new(),
                error: format!("cannot read the directory: {err}"),
            });
            // Nothing can be trusted: leave every file cron as it is.
            definitions.broken_files.push("*".to_string());
            return definitions;
        }
    };
    let mut files: Vec<_> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml") && path.is_file())
        .collect();
    files.sort();
    let mut seen: BTreeMap<TaskId, String> = BTreeMap::new();
    for path in files {
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_file(&name, &text, default_timeout_s, &mut seen, &mut definitions),
            Err(err) => {
                definitions.errors.push(DefinitionError {
                    file: name.clone(),
                    entry: String::new(),
                    error: format!("cannot read: {err}"),
                });
                definitions.broken_files.push(name);
            }
        }
    }
    definitions
}

/// Parses one file's text into `definitions`; `seen` maps the ids of earlier entries to their
/// file.
pub fn parse_file(
    file: &str,
    text: &str,
    default_timeout_s: u32,
    seen: &mut BTreeMap<TaskId, String>,
    definitions: &mut Definitions,
) {
    let file_error = |error: String| DefinitionError {
        file: file.to_string(),
        entry: String::new(),
        error,
    };
    let document: toml::Table = match text.parse() {
        Ok(document) => document,
        Err(err) => {
            definitions
                .errors
                .push(file_error(format!("not valid TOML: {err}")));
            definitions.broken_files.push(file.to_string());
            return;
        }
    };
    if let Some(key) = document.keys().find(|key| *key != "cron") {
        definitions.errors.push(file_error(format!(
            "unknown key `{key}` (only [[cron]] entries)"
        )));
    }
    let entries = match document.get("cron") {
        None => return,
        Some(toml::Value::Array(entries)) => entries,
        Some(_) => {
            definitions
                .errors
                .push(file_error("`cron` must be [[cron]] entries".to_string()));
            definitions.broken_files.push(file.to_string());
            return;
        }
    };
    for (index, value) in entries.iter().enumerate() {
        let readable_id = value
            .get("id")
            .and_then(toml::Value::as_str)
            .filter(|id| elves_shared::names::is_valid_name(id))
            .map(str::to_string);
        let entry_name = readable_id
            .clone()
            .unwrap_or_else(|| format!("#{}", index + 1));
        let outcome = value
            .clone()
            .try_into::<Entry>()
            .map_err(|err| err.to_string())
            .and_then(|entry| check_entry(file, entry, default_timeout_s));
        match outcome {
            Ok(cron) => {
                if let Some(other) = seen.get(&cron.id) {
                    definitions.errors.push(DefinitionError {
                        file: file.to_string(),
                        entry: entry_name,
                        error: format!("id already defined in {other}; this entry is ignored"),
                    });
                    continue;
                }
                seen.insert(cron.id.clone(), file.to_string());
                definitions.crons.push(cron);
            }
            Err(error) => {
                if let Some(id) = &readable_id {
                    definitions.broken_ids.push(cron_id_of(id));
                }
                definitions.errors.push(DefinitionError {
                    file: file.to_string(),
                    entry: entry_name,
                    error,
                });
            }
        }
    }
}

fn check_entry(file: &str, entry: Entry, default_timeout_s: u32) -> Result<FileCron, String> {
    if !elves_shared::names::is_valid_name(&entry.id) {
        return Err(format!(
            "id {:?} must match ^[A-Za-z0-9_][A-Za-z0-9_.-]{{0,63}}$",
            entry.id
        ));
    }
    if AgentId::parse(&entry.agent).is_err() {
        return Err(format!("bad agent {:?}", entry.agent));
    }
    if !elves_shared::names::is_valid_name(&entry.app) {
        return Err(format!("bad app name {:?}", entry.app));
    }
    if !elves_shared::names::is_valid_name(&entry.func) {
        return Err(format!("bad func name {:?}", entry.func));
    }
    let param = match entry.param {
        None => String::new(),
        Some(toml::Value::String(text)) => {
            if !text.is_empty() {
                serde_json::from_str::<serde::de::IgnoredAny>(&text)
                    .map_err(|err| format!("param is not JSON: {err}"))?;
            }
            text
        }
        Some(other) => serde_json::to_string(&other).map_err(|err| format!("param: {err}"))?,
    };
    QuartzRule::parse(&entry.rule).map_err(|err| err.to_string())?;
    let mode: Mode = entry.mode.parse()?;
    let timeout_s = match entry.timeout {
        0 => default_timeout_s,
        seconds @ 1..=86_400 => u32::try_from(seconds).unwrap_or(default_timeout_s),
        other => {
            return Err(format!(
                "timeout must be whole seconds 0..86400, got {other}"
            ))
        }
    };
    if entry.proxy.len() > 256 || entry.proxy.contains('\0') || entry.proxy.matches('|').count() > 1
    {
        return Err(format!("bad proxy {:?}", entry.proxy));
    }
    Ok(FileCron {
        id: cron_id_of(&entry.id),
        file: file.to_string(),
        entry: entry.id,
        definition: CronDefinition {
            ip: entry.agent,
            app: entry.app,
            func: entry.func,
            param,
            rule: entry.rule.trim().to_string(),
            mode,
            timeout_s,
            proxy: entry.proxy,
        },
        enabled: entry.enabled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(files: &[(&str, &str)]) -> Definitions {
        let mut definitions = Definitions::default();
        let mut seen = BTreeMap::new();
        for (file, text) in files {
            parse_file(file, text, 90, &mut seen, &mut definitions);
        }
        definitions
    }

    #[test]
    fn entries_load_and_broken_ones_are_named() {
        let good = r#"
[[cron]]
id = "nightly"
agent = "10.0.0.7"
app = "backup"
func = "run"
param = { target = "/srv" }
rule = "0 0 2 * * ?"
mode = "p"
timeout = 600

[[cron]]
id = "bad-rule"
agent = "10.0.0.7"
app = "backup"
func = "run"
rule = "0 0 2 * *"

[[cron]]
agent = "10.0.0.7"
app = "x"
func = "y"
rule = "0 0 2 * * ?"

[[cron]]
id = "typo"
agent = "10.0.0.7"
app = "x"
func = "y"
rule = "0 0 2 * * ?"
enable = false
"#;
        let definitions = parse(&[
            ("a.toml", good),
            ("b.toml", "this is [not toml"),
            ("c.toml", "[[cron]]\nid = \"nightly\"\nagent = \"h\"\napp = \"a\"\nfunc = \"f\"\nrule = \"* * * * * ?\"\n"),
        ]);
        assert_eq!(definitions.crons.len(), 1);
        let nightly = &definitions.crons[0];
        assert_eq!(nightly.entry, "nightly");
        assert_eq!(nightly.id, cron_id_of("nightly"));
        assert_eq!(nightly.definition.param, r#"{"target":"/srv"}"#);
        assert_eq!(nightly.definition.mode, Mode::P);
        assert_eq!(nightly.definition.timeout_s, 600);
        assert!(nightly.enabled);
        let errors: Vec<String> = definitions.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert!(
            errors[0].starts_with("a.toml entry bad-rule: bad cron rule"),
            "{errors:#?}"
        );
        assert!(
            errors[1].starts_with("a.toml entry #3: missing field `id`"),
            "{errors:#?}"
        );
        assert!(
            errors[2].starts_with("a.toml entry typo: unknown field `enable`"),
            "{errors:#?}"
        );
        assert!(
            errors[3].starts_with("b.toml: not valid TOML"),
            "{errors:#?}"
        );
        assert!(
            errors[4].contains("c.toml entry nightly: id already defined in a.toml"),
            "{errors:#?}"
        );
        assert_eq!(definitions.broken_files, vec!["b.toml".to_string()]);
        assert_eq!(
            definitions.broken_ids,
            vec![cron_id_of("bad-rule"), cron_id_of("typo")]
        );
    }

    #[test]
    fn ids_are_stable_and_hex_ids_are_kept() {
        assert_eq!(cron_id_of("nightly"), cron_id_of("nightly"));
        assert_ne!(cron_id_of("nightly"), cron_id_of("weekly"));
        assert_eq!(cron_id_of("00000000000000ab").as_str(), "00000000000000ab");
    }

    #[test]
    fn a_missing_directory_is_no_crons() {
        let definitions = load_dir(Path::new("/nonexistent/cron.d"), 90);
        assert!(definitions.crons.is_empty() && definitions.errors.is_empty());
    }
}
