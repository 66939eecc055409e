//! Inventory: agent labels from outside the agents (a CMDB export or endpoint, SPEC §12),
//! re-read every `inventory.refresh_ms` and on `ReloadInventory`.
//!
//! The source is a JSON file, a TOML file (`.toml`), or an HTTP(S) URL answering JSON. JSON is
//! `[{"agent": "<id or ip>", "labels": {"role": "web"}}]`; TOML is the same list as
//! `[[agent]]` tables with `agent` and `labels` keys.
//!
//! **Merge rule:** an agent's labels are its own (from its config, via heartbeats), overlaid by
//! the inventory entry for its ip, then by the entry for its id: on the same key the inventory
//! wins, and an entry by id wins over one by ip.
//!
//! A source that cannot be read or is invalid is logged and reported with its name
//! (`InventoryStatus::last_error`, the answer of `inventory/reload`); the previous inventory
//! stays in force.

use crate::config::InventoryConfig;
use actix::prelude::*;
use elves_shared::target::{validate_labels, Labels};
use elves_shared::time::now_unix_ms;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Read the source now; answers with the status after the read.
#[derive(Message)]
#[rtype(result = "InventoryStatus")]
pub struct ReloadInventory;

#[derive(Message)]
#[rtype(result = "()")]
struct Loaded(Result<HashMap<String, Labels>, String>);

/// What the inventory holds and how its last read went.
#[derive(Debug, Clone, Default, PartialEq, Eq, MessageResponse, serde::Serialize)]
pub struct InventoryStatus {
    pub source: String,
    /// Entries in force.
    pub entries: usize,
    /// When the entries in force were read (unix ms); 0 before the first good read.
    pub loaded_at: u64,
    /// The last read's failure, naming the source; empty when it succeeded.
    pub last_error: String,
}

#[derive(Default)]
struct Snapshot {
    by_agent: HashMap<String, Labels>,
    status: InventoryStatus,
}

/// The inventory in force, shared with the API and the batch creation.
#[derive(Clone, Default)]
pub struct InventoryLabels(Arc<RwLock<Snapshot>>);

impl InventoryLabels {
    /// An agent's labels by the merge rule of this module: its own, then the entry for its ip,
    /// then the entry for its id.
    pub fn merged(&self, id: &str, ip: &str, own: &Labels) -> Labels {
        let snapshot = self
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        merge(own, snapshot.by_agent.get(ip), snapshot.by_agent.get(id))
    }

    pub fn status(&self) -> InventoryStatus {
        let snapshot = self
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        snapshot.status.clone()
    }

    fn apply(&self, outcome: Result<HashMap<String, Labels>, String>, now: u64) {
        let mut snapshot = self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match outcome {
            Ok(by_agent) => {
                snapshot.status.entries = by_agent.len();
                snapshot.status.loaded_at = now;
                snapshot.status.last_error.clear();
                snapshot.by_agent = by_agent;
            }
            Err(err) => snapshot.status.last_error = err,
        }
    }
}

pub fn merge(own: &Labels, by_ip: Option<&Labels>, by_id: Option<&Labels>) -> Labels {
    let mut labels = own.clone();
    for overlay in [by_ip, by_id].into_iter().flatten() {
        for (key, value) in overlay {
            labels.insert(key.clone(), value.clone());
        }
    }
    labels
}

pub struct Inventory {
    config: InventoryConfig,
    labels: InventoryLabels,
    /// Callers of `ReloadInventory` waiting for the read in flight.
    waiting: Vec<tokio::sync::oneshot::Sender<InventoryStatus>>,
    reading: bool,
}

impl Inventory {
    pub fn new(config: InventoryConfig, labels: InventoryLabels) -> Self {
        {
            let mut snapshot = labels
                .0
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            snapshot.status.source = config.source.clone();
        }
        Inventory {
            config,
            labels,
            waiting: Vec::new(),
            reading: false,
        }
    }

    fn read(&mut self, ctx: &mut Context<Self>) {
        if self.reading || self.config.source.is_empty() {
            return;
        }
        self.reading = true;
        let source = self.config.source.clone();
        let me = ctx.address();
        actix_rt::spawn(async move {
            me.do_send(Loaded(read_source(&source).await));
        });
    }
}

impl Actor for Inventory {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.config.source.is_empty() {
            return;
        }
        self.read(ctx);
        ctx.run_interval(
            Duration::from_millis(self.config.refresh_ms.max(100)),
            |actor, ctx| actor.read(ctx),
        );
    }
}

impl Supervised for Inventory {
    fn restarting(&mut self, _: &mut Context<Self>) {
        log::warn!("inventory: restarting; the labels in force stay");
        self.reading = false;
    }
}

impl Handler<ReloadInventory> for Inventory {
    type Result = ResponseFuture<InventoryStatus>;

    fn handle(&mut self, _: ReloadInventory, ctx: &mut Context<Self>) -> Self::Result {
        if self.config.source.is_empty() {
            let status = self.labels.status();
            return Box::pin(async move { status });
        }
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.waiting.push(sender);
        self.read(ctx);
        let labels = self.labels.clone();
        Box::pin(async move { receiver.await.unwrap_or_else(|_| labels.status()) })
    }
}

impl Handler<Loaded> for Inventory {
    type Result = ();

    fn handle(&mut self, msg: Loaded, _: &mut Context<Self>) {
        self.reading = false;
        if let Err(err) = &msg.0 {
            log::warn!("inventory: {err}; the previous labels stay in force");
        }
        self.labels.apply(msg.0, now_unix_ms());
        let status = self.labels.status();
        for waiting in self.waiting.drain(..) {
            let _ = waiting.send(status.clone());
        }
    }
}

/// The largest inventory answer or file read (a CMDB of a large fleet fits well under this).
const MAX_SOURCE_BYTES: usize = 64 * 1024 * 1024;

async fn read_source(source: &str) -> Result<HashMap<String, Labels>, String> {
    let named = |err: String| format!("inventory {source}: {err}");
    let text = if source.starts_with("http://") || source.starts_with("https://") {
        let response = reqwest::Client::new()
            .get(source)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|err| named(err.to_string()))?;
        if !response.status().is_success() {
            return Err(named(format!("answered HTTP {}", response.status())));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|err| named(err.to_string()))?;
        if bytes.len() > MAX_SOURCE_BYTES {
            return Err(named(format!("larger than {MAX_SOURCE_BYTES} bytes")));
        }
        String::from_utf8(bytes.to_vec()).map_err(|_| named("not UTF-8".to_string()))?
    } else {
        let path = source.to_string();
        tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
            .await
            .map_err(|err| named(err.to_string()))?
            .map_err(|err| named(err.to_string()))?
    };
    let is_toml = source.ends_with(".toml");
    parse_inventory(&text, is_toml).map_err(named)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    agent: String,
    #[serde(default)]
    labels: Labels,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlInventory {
    #[serde(default)]
    agent: Vec<Entry>,
}

/// Parses an inventory; the error names the entry at fault. Several entries for the same agent
/// are merged in order (a later one wins on the same key).
pub fn parse_inventory(text: &str, is_toml: bool) -> Result<HashMap<String, Labels>, String> {
    let entries: Vec<Entry> = if is_toml {
        toml::from_str::<TomlInventory>(text)
            .map_err(|err| format!("not a valid TOML inventory: {err}"))?
            .agent
    } else {
        serde_json::from_str(text).map_err(|err| format!("not a valid JSON inventory: {err}"))?
    };
    let mut by_agent: HashMap<String, Labels> = HashMap::new();
    for (n, entry) in entries.into_iter().enumerate() {
        if entry.agent.trim().is_empty() {
            return Err(format!("entry {n}: agent is empty"));
        }
        validate_labels(&entry.labels)
            .map_err(|why| format!("entry {n} ({}): {why}", entry.agent))?;
        by_agent
            .entry(entry.agent)
            .or_default()
            .extend(entry.labels);
    }
    Ok(by_agent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_inventory_wins_and_an_id_entry_wins_over_an_ip_entry() {
        let own = labels(&[("role", "web"), ("rack", "r1")]);
        let by_ip = labels(&[("dc", "sh"), ("role", "cache")]);
        let by_id = labels(&[("dc", "bj")]);
        assert_eq!(
            merge(&own, Some(&by_ip), Some(&by_id)),
            labels(&[("role", "cache"), ("rack", "r1"), ("dc", "bj")])
        );
        assert_eq!(merge(&own, None, None), own);
    }

    #[test]
    fn json_and_toml_inventories_parse_and_bad_ones_name_the_entry() {
        let json = r#"[{"agent": "web-1", "labels": {"role": "web"}},
                       {"agent": "10.0.0.2", "labels": {"dc": "bj"}}]"#;
        let parsed = parse_inventory(json, false).unwrap();
        assert_eq!(parsed["web-1"], labels(&[("role", "web")]));
        assert_eq!(parsed["10.0.0.2"], labels(&[("dc", "bj")]));
        let toml = "[[agent]]\nagent = \"web-1\"\nlabels = { role = \"web\" }\n";
        assert_eq!(
            parse_inventory(toml, true).unwrap()["web-1"],
            labels(&[("role", "web")])
        );
        let err =
            parse_inventory(r#"[{"agent": "x", "labels": {"role": "a b"}}]"#, false).unwrap_err();
        assert!(err.contains("entry 0 (x)"), "{err}");
        assert!(parse_inventory("{", false).is_err());
        assert!(parse_inventory(r#"[{"agent": ""}]"#, false).is_err());
    }

    #[actix_rt::test]
    async fn a_broken_source_leaves_the_previous_labels_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cmdb.json");
        std::fs::write(&path, r#"[{"agent": "web-1", "labels": {"role": "web"}}]"#).unwrap();
        let labels = InventoryLabels::default();
        let config = InventoryConfig {
            source: path.to_string_lossy().into_owned(),
            refresh_ms: 3_600_000,
        };
        let inventory = Inventory::new(config, labels.clone()).start();
        let status = inventory.send(ReloadInventory).await.unwrap();
        assert_eq!(status.entries, 1);
        assert!(status.last_error.is_empty(), "{status:?}");
        let none = Labels::new();
        assert_eq!(labels.merged("web-1", "10.0.0.1", &none)["role"], "web");

        std::fs::write(&path, "not json").unwrap();
        let status = inventory.send(ReloadInventory).await.unwrap();
        assert!(status.last_error.contains("cmdb.json"), "{status:?}");
        assert_eq!(labels.merged("web-1", "10.0.0.1", &none)["role"], "web");
    }
}
