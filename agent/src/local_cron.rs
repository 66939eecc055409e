//! Agent-local cron: `cron.json` in the original ELVES format, a JSON object of
//! `ID → {Flag, Comment, App, Func, Param, Timeout, Proxy, Mode, Rule}`, with Quartz rules.
//!
//! This module reads the file and keeps the schedule; running a firing (the worker, the result
//! to `center.result` and, in P mode, to `processor.<app>`) is the runtime's, through the
//! `launch` callback. A firing whose previous run of the same cron is still going is skipped,
//! so that a slow job does not pile up. The file is read once, at start.

use chrono_tz::Tz;
use elves_shared::quartz::QuartzRule;
use elves_shared::time::now_unix_ms;
use elves_shared::wire::Mode;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// One enabled entry of `cron.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalCron {
    pub id: String,
    pub comment: String,
    pub app: String,
    pub func: String,
    pub param: String,
    /// Seconds; 0 means the agent's default.
    pub timeout_s: u64,
    pub proxy: String,
    pub mode: Mode,
    pub rule: QuartzRule,
}

/// What `cron.json` holds: the enabled crons, how many are disabled, and the broken entries.
#[derive(Debug, Clone, Default)]
pub struct LocalCrons {
    pub crons: Vec<LocalCron>,
    pub disabled: usize,
    /// `entry <ID>: <what is wrong>`.
    pub errors: Vec<String>,
}

/// Reads `path`; a missing file means no local crons. A file that is not a JSON object is
/// one error; a broken entry is reported by its ID and the others still load.
pub fn load(path: &Path) -> LocalCrons {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => LocalCrons::default(),
        Err(err) => LocalCrons {
            errors: vec![format!("cannot read {}: {err}", path.display())],
            ..LocalCrons::default()
        },
    }
}

pub fn parse(text: &str) -> LocalCrons {
    let mut loaded = LocalCrons::default();
    let entries: BTreeMap<String, Value> = match serde_json::from_str(text) {
        Ok(entries) => entries,
        Err(err) => {
            loaded
                .errors
                .push(format!("not a JSON object of ID → entry: {err}"));
            return loaded;
        }
    };
    for (id, entry) in entries {
        match parse_entry(&id, &entry) {
            Ok(Some(cron)) => loaded.crons.push(cron),
            Ok(None) => loaded.disabled += 1,
            Err(why) => loaded.errors.push(format!("entry {id}: {why}")),
        }
    }
    loaded
}

/// `Ok(None)` for a disabled entry.
fn parse_entry(id: &str, entry: &Value) -> Result<Option<LocalCron>, String> {
    let Value::Object(fields) = entry else {
        return Err("must be a JSON object".to_string());
    };
    let known = [
        "Flag", "Comment", "App", "Func", "Param", "Timeout", "Proxy", "Mode", "Rule",
    ];
    if let Some(unknown) = fields.keys().find(|key| !known.contains(&key.as_str())) {
        return Err(format!("unknown field {unknown:?}"));
    }
    let text = |key: &str| -> Result<String, String> {
        match fields.get(key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(text)) => Ok(text.clone()),
            Some(Value::Number(number)) => Ok(number.to_string()),
            Some(other) => Err(format!("{key} must be a string, got {other}")),
        }
    };
    let enabled = match fields.get("Flag") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(flag)) => *flag,
        Some(Value::Number(number)) => number.as_i64() != Some(0),
        Some(Value::String(flag)) => !matches!(
            flag.trim().to_ascii_lowercase().as_str(),
            "0" | "false" | "off" | "no"
        ),
        Some(other) => return Err(format!("Flag must be 1 or 0, got {other}")),
    };
    let app = text("App")?;
    if !elves_shared::names::is_valid_name(&app) {
        return Err(format!("bad App {app:?}"));
    }
    let func = text("Func")?;
    if !elves_shared::names::is_valid_name(&func) {
        return Err(format!("bad Func {func:?}"));
    }
    // Param is JSON text; an object or array given as JSON is passed as its text.
    let param = match fields.get("Param") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(param)) => param.clone(),
        Some(other) => other.to_string(),
    };
    let timeout_s = match fields.get("Timeout") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(number)) => number
            .as_u64()
            .filter(|seconds| *seconds <= 86_400)
            .ok_or_else(|| format!("Timeout must be whole seconds 0..86400, got {number}"))?,
        Some(Value::String(seconds)) if seconds.is_empty() => 0,
        Some(Value::String(seconds)) => seconds
            .parse::<u64>()
            .ok()
            .filter(|seconds| *seconds <= 86_400)
            .ok_or_else(|| format!("Timeout must be whole seconds 0..86400, got {seconds:?}"))?,
        Some(other) => return Err(format!("Timeout must be a number, got {other}")),
    };
    let mode: Mode = text("Mode")?.parse()?;
    let rule = QuartzRule::parse(&text("Rule")?).map_err(|err| err.to_string())?;
    if !enabled {
        return Ok(None);
    }
    Ok(Some(LocalCron {
        id: id.to_string(),
        comment: text("Comment")?,
        app,
        func,
        param,
        timeout_s,
        proxy: text("Proxy")?,
        mode,
        rule,
    }))
}

/// Fires `crons` at their times until `stopping` turns true. `launch` runs one firing and
/// resolves when it is over; `skipped` is called for a firing dropped because the previous
/// run of the same cron is still going.
pub async fn run<L, F>(
    crons: Vec<LocalCron>,
    zone: Tz,
    mut stopping: watch::Receiver<bool>,
    launch: L,
    skipped: impl Fn(&LocalCron),
) where
    L: Fn(LocalCron) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    if crons.is_empty() {
        return;
    }
    let running: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = tokio::task::JoinSet::new();
    let mut next: Vec<Option<u64>> = crons
        .iter()
        .map(|cron| cron.rule.next_after_ms(now_unix_ms(), zone))
        .collect();
    while let Some(earliest) = next.iter().flatten().min().copied() {
        let wait = Duration::from_millis(earliest.saturating_sub(now_unix_ms()));
        tokio::select! {
            _ = stopping.wait_for(|stopping| *stopping) => break,
            () = tokio::time::sleep(wait) => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        }
        for (cron, next_time) in crons.iter().zip(next.iter_mut()) {
            if *next_time != Some(earliest) {
                continue;
            }
            *next_time = cron.rule.next_after_ms(earliest, zone);
            let newly_running = running
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(cron.id.clone());
            if !newly_running {
                skipped(cron);
                continue;
            }
            let run = launch(cron.clone());
            let running = running.clone();
            let id = cron.id.clone();
            tasks.spawn(async move {
                run.await;
                running
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .remove(&id);
            });
        }
    }
    // Dropping a worker's future kills its process group.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_format_loads_and_broken_entries_are_named() {
        let loaded = parse(
            r#"{
                "backup": {"Flag": 1, "Comment": "nightly", "App": "demo", "Func": "run",
                           "Param": "{\"a\":1}", "Timeout": 60, "Proxy": "", "Mode": "P",
                           "Rule": "0 0 2 * * ?"},
                "tick": {"App": "demo", "Func": "tick", "Param": {"b": 2}, "Timeout": "5",
                         "Mode": "np", "Rule": "0/1 * * * * ?"},
                "off": {"Flag": "0", "App": "demo", "Func": "x", "Rule": "0 0 * * * ?"},
                "badrule": {"App": "demo", "Func": "x", "Rule": "* * * * *"},
                "badapp": {"App": "../etc", "Func": "x", "Rule": "0 0 * * * ?"},
                "typo": {"App": "demo", "Func": "x", "Rule": "0 0 * * * ?", "Rlue": "1"}
            }"#,
        );
        assert_eq!(loaded.crons.len(), 2);
        assert_eq!(loaded.disabled, 1);
        let backup = &loaded.crons[0];
        assert_eq!(backup.id, "backup");
        assert_eq!(backup.comment, "nightly");
        assert_eq!(backup.param, r#"{"a":1}"#);
        assert_eq!((backup.timeout_s, backup.mode), (60, Mode::P));
        let tick = &loaded.crons[1];
        assert_eq!(tick.param, r#"{"b":2}"#);
        assert_eq!((tick.timeout_s, tick.mode), (5, Mode::NP));
        assert_eq!(loaded.errors.len(), 3, "{:?}", loaded.errors);
        assert!(loaded.errors[0].starts_with("entry badapp: bad App"));
        assert!(loaded.errors[1].starts_with("entry badrule: bad cron rule"));
        assert!(loaded.errors[2].starts_with("entry typo: unknown field \"Rlue\""));
        assert_eq!(parse("[1, 2]").errors.len(), 1);
        assert!(load(Path::new("/nonexistent/cron.json")).crons.is_empty());
    }

    #[tokio::test]
    async fn firings_run_and_overlapping_ones_are_skipped() {
        let crons = parse(
            r#"{"fast": {"App": "demo", "Func": "f", "Rule": "0/1 * * * * ?"},
                "slow": {"App": "demo", "Func": "s", "Rule": "0/1 * * * * ?"}}"#,
        )
        .crons;
        let (stop, stopping) = watch::channel(false);
        // "slow" runs until the test lets it go, so every later firing of it overlaps.
        let (release, released) = watch::channel(false);
        let fired = Arc::new(Mutex::new(Vec::new()));
        let skipped = Arc::new(Mutex::new(Vec::new()));
        let (fired_in, skipped_in) = (fired.clone(), skipped.clone());
        let runner = tokio::spawn(async move {
            run(
                crons,
                Tz::UTC,
                stopping,
                move |cron| {
                    fired_in.lock().unwrap().push(cron.id.clone());
                    let mut released = released.clone();
                    async move {
                        if cron.id == "slow" {
                            let _ = released.wait_for(|go| *go).await;
                        }
                    }
                },
                move |cron| skipped_in.lock().unwrap().push(cron.id.clone()),
            )
            .await
        });
        let count = |id: &str| fired.lock().unwrap().iter().filter(|f| *f == id).count();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while count("fast") < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "fast fired {}",
                count("fast")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.send(true).unwrap();
        release.send(true).unwrap();
        runner.await.unwrap();
        let fired = fired.lock().unwrap().clone();
        assert_eq!(
            fired.iter().filter(|id| *id == "slow").count(),
            1,
            "{fired:?}"
        );
        let skipped = skipped.lock().unwrap().clone();
        assert!(
            !skipped.is_empty() && skipped.iter().all(|id| id == "slow"),
            "{skipped:?}"
        );
    }
}
