//! AppStore: apps, auth ids and bindings (SPEC §5), and the distribution of packages to agents.
//!
//! It keeps the supervisor-mode state of the database in memory, in an [`AppRegistry`] that
//! the HTTP API reads synchronously (authentication and authorization never wait on the
//! database). It reloads that state every `apps.refresh_ms` (changes made through another
//! center) and at once when asked ([`Reload`], sent by the admin endpoints before they answer).
//!
//! Distribution: each heartbeat says which center packages the agent has and which version of
//! each app it reports; when either differs from what the agent should have, AppStore
//! publishes a signed [`AppSet`] to `agent.<id>`.
//! After a reload it does the same for every agent it heard from recently, so that an upload
//! reaches online agents without waiting for their next heartbeat. The same set is not sent
//! again to an agent before `apps.resend_ms`, however often it beats.
//!
//! It does not serve downloads (the API does, checking the tokens minted here) and never
//! touches the database on its own thread.

use crate::config::{AppsConfig, AuthConfig, AuthMode};
use crate::store::blocking::blocking;
use crate::store::{AppVersionRow, Registry, Role, Store};
use actix::prelude::*;
use elves_shared::bus::{BusMessage, Destination, SharedBus};
use elves_shared::crypto::InstructionSigner;
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{self, kind, routing, AgentId, AppPackage, AppSet};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

/// How long an app set stays valid for the agent.
const APP_SET_TTL_MS: u64 = 5 * 60 * 1000;
/// Agents not heard from for this many of their intervals get no push after a reload; their
/// next heartbeat brings them up to date.
const PUSH_WITHIN_INTERVALS: u64 = 3;

/// A heartbeat arrived: what the agent has from the center.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentReported {
    pub agent: AgentId,
    /// Center-installed apps: name → package SHA-256.
    pub packages: BTreeMap<String, String>,
    /// Installed apps: name → the version the agent reports (the heartbeat's `apps`).
    pub versions: BTreeMap<String, String>,
    pub interval_ms: u64,
    pub received_at: u64,
}

/// Reload the registry from the database now, then bring the agents up to date. Answers once
/// the new state is visible to the API.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Reload;

#[derive(Message)]
#[rtype(result = "AppStoreState")]
pub struct GetState;

#[derive(Debug, Clone, MessageResponse, serde::Serialize)]
pub struct AppStoreState {
    pub apps: usize,
    pub online_apps: usize,
    pub auth_ids: usize,
    pub agents_reported: usize,
    pub app_sets_sent: u64,
}

/// An active auth id as the API sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthEntry {
    pub auth_key: String,
    pub role: Role,
    pub apps: BTreeSet<String>,
}

/// An app as the API sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppEntry {
    pub name: String,
    pub display_name: String,
    pub online: Option<AppVersionRow>,
    pub updated_at: u64,
    /// Agent ids it may run on (supervisor mode).
    pub agents: BTreeSet<String>,
}

/// The in-memory view of apps, auth ids and bindings. Pure: every decision about who may do
/// what is a method here.
#[derive(Debug, Clone)]
pub struct Snapshot {
    mode: AuthMode,
    /// The auth id of the configuration: the only one in simple mode, the bootstrap admin in
    /// supervisor mode.
    config_auth_id: String,
    config_auth_key: String,
    auth_ids: HashMap<String, AuthEntry>,
    apps: BTreeMap<String, AppEntry>,
    /// Agent id → apps bound to it.
    by_agent: HashMap<String, BTreeSet<String>>,
}

/// Why a caller may not do something (401.6 or 413.2 for the API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    NotAdmin,
    AppUnknown(String),
    AppNotHeld(String),
    AppNotBound { app: String, agent: String },
}

impl Snapshot {
    pub fn new(auth: &AuthConfig) -> Snapshot {
        Snapshot {
            mode: auth.mode,
            config_auth_id: auth.auth_id.clone(),
            config_auth_key: auth.auth_key.clone(),
            auth_ids: HashMap::new(),
            apps: BTreeMap::new(),
            by_agent: HashMap::new(),
        }
    }

    /// Replaces the database part of the snapshot.
    pub fn load(&mut self, registry: Registry) {
        let mut auth_ids: HashMap<String, AuthEntry> = registry
            .auth_ids
            .into_iter()
            .filter(|row| row.revoked_at.is_none())
            .map(|row| {
                let entry = AuthEntry {
                    auth_key: row.auth_key,
                    role: row.role,
                    apps: BTreeSet::new(),
                };
                (row.auth_id, entry)
            })
            .collect();
        for (app, auth_id) in registry.grants {
            if let Some(entry) = auth_ids.get_mut(&auth_id) {
                entry.apps.insert(app);
            }
        }
        let mut apps: BTreeMap<String, AppEntry> = registry
            .apps
            .into_iter()
            .map(|row| {
                let entry = AppEntry {
                    name: row.name.clone(),
                    display_name: row.display_name,
                    online: None,
                    updated_at: row.updated_at,
                    agents: BTreeSet::new(),
                };
                (row.name, entry)
            })
            .collect();
        for version in registry.online {
            if let Some(entry) = apps.get_mut(&version.app) {
                entry.online = Some(version);
            }
        }
        let mut by_agent: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (app, agent) in registry.bindings {
            if let Some(entry) = apps.get_mut(&app) {
                entry.agents.insert(agent.clone());
                by_agent.entry(agent).or_default().insert(app);
            }
        }
        self.auth_ids = auth_ids;
        self.apps = apps;
        self.by_agent = by_agent;
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The key that signs calls of `auth_id`; `None` for an unknown or revoked id (401.2).
    pub fn key_of(&self, auth_id: &str) -> Option<String> {
        if auth_id == self.config_auth_id {
            return Some(self.config_auth_key.clone());
        }
        match self.mode {
            AuthMode::Simple => None,
            AuthMode::Supervisor => self
                .auth_ids
                .get(auth_id)
                .map(|entry| entry.auth_key.clone()),
        }
    }

    pub fn role_of(&self, auth_id: &str) -> Option<Role> {
        if auth_id == self.config_auth_id || self.mode == AuthMode::Simple {
            return Some(Role::Admin);
        }
        self.auth_ids.get(auth_id).map(|entry| entry.role)
    }

    pub fn require_admin(&self, auth_id: &str) -> Result<(), Denied> {
        match self.role_of(auth_id) {
            Some(Role::Admin) => Ok(()),
            _ => Err(Denied::NotAdmin),
        }
    }

    /// May `auth_id` call `app` at all? Simple mode: yes. Supervisor mode: the app must be
    /// known to the center, and held by the auth id (admins hold every app).
    pub fn require_app(&self, auth_id: &str, app: &str) -> Result<(), Denied> {
        if self.mode == AuthMode::Simple {
            return Ok(());
        }
        if !self.apps.contains_key(app) {
            return Err(Denied::AppUnknown(app.to_string()));
        }
        if self.role_of(auth_id) == Some(Role::Admin) {
            return Ok(());
        }
        match self.auth_ids.get(auth_id) {
            Some(entry) if entry.apps.contains(app) => Ok(()),
            _ => Err(Denied::AppNotHeld(app.to_string())),
        }
    }

    /// May `app` run on `agent`? Simple mode: every app on every agent.
    pub fn require_bound(&self, app: &str, agent: &AgentId) -> Result<(), Denied> {
        if self.mode == AuthMode::Simple {
            return Ok(());
        }
        match self.apps.get(app) {
            Some(entry) if entry.agents.contains(agent.as_str()) => Ok(()),
            _ => Err(Denied::AppNotBound {
                app: app.to_string(),
                agent: agent.to_string(),
            }),
        }
    }

    /// The apps `auth_id` may call, by name.
    pub fn apps_of(&self, auth_id: &str) -> Vec<&AppEntry> {
        if self.role_of(auth_id) == Some(Role::Admin) {
            return self.apps.values().collect();
        }
        match self.auth_ids.get(auth_id) {
            Some(entry) => entry
                .apps
                .iter()
                .filter_map(|app| self.apps.get(app))
                .collect(),
            None => Vec::new(),
        }
    }

    /// In supervisor mode, the agent ids an auth id may send work to; `None` means every agent
    /// (simple mode).
    pub fn agents_of(&self, auth_id: &str) -> Option<BTreeSet<String>> {
        if self.mode == AuthMode::Simple {
            return None;
        }
        Some(
            self.apps_of(auth_id)
                .into_iter()
                .flat_map(|app| app.agents.iter().cloned())
                .collect(),
        )
    }

    pub fn app(&self, name: &str) -> Option<&AppEntry> {
        self.apps.get(name)
    }

    pub fn n_apps(&self) -> usize {
        self.apps.len()
    }

    pub fn n_auth_ids(&self) -> usize {
        self.auth_ids.len()
    }

    /// The packages `agent` should have: every online version in simple mode, the online
    /// versions of the apps bound to it in supervisor mode.
    pub fn desired_for(&self, agent: &AgentId) -> Vec<&AppVersionRow> {
        match self.mode {
            AuthMode::Simple => self
                .apps
                .values()
                .filter_map(|app| app.online.as_ref())
                .collect(),
            AuthMode::Supervisor => self
                .by_agent
                .get(agent.as_str())
                .into_iter()
                .flatten()
                .filter_map(|app| self.apps.get(app).and_then(|app| app.online.as_ref()))
                .collect(),
        }
    }
}

/// Expiring download links: an Ed25519 signature of the center over the package, the agent
/// and the expiry. Any center holding the same key accepts them; nobody else can mint one.
/// A link minted before a key rotation stays valid until the old key is retired.
pub struct DownloadTokens {
    signer: Arc<InstructionSigner>,
}

impl DownloadTokens {
    pub fn new(signer: Arc<InstructionSigner>) -> DownloadTokens {
        DownloadTokens { signer }
    }

    fn message(sha256: &str, agent: &str, expires_s: u64) -> Vec<u8> {
        format!("elves-download\n{sha256}\n{agent}\n{expires_s}").into_bytes()
    }

    pub fn mint(&self, sha256: &str, agent: &str, expires_s: u64) -> String {
        hex::encode(self.signer.sign(&Self::message(sha256, agent, expires_s)))
    }

    /// True when `token` was minted by this center's key for exactly these values and has not
    /// expired at `now_s`.
    pub fn verify(
        &self,
        sha256: &str,
        agent: &str,
        expires_s: u64,
        token: &str,
        now_s: u64,
    ) -> bool {
        if expires_s < now_s {
            return false;
        }
        let Ok(signature) = hex::decode(token) else {
            return false;
        };
        self.signer
            .signed_by_me(&Self::message(sha256, agent, expires_s), &signature)
    }
}

/// The registry shared by AppStore (writer) and the HTTP API (readers).
#[derive(Clone)]
pub struct AppRegistry {
    snapshot: Arc<RwLock<Snapshot>>,
    pub tokens: Arc<DownloadTokens>,
}

impl AppRegistry {
    pub fn new(auth: &AuthConfig, signer: Arc<InstructionSigner>) -> AppRegistry {
        AppRegistry {
            snapshot: Arc::new(RwLock::new(Snapshot::new(auth))),
            tokens: Arc::new(DownloadTokens::new(signer)),
        }
    }

    /// A read view; held only for the few microseconds of a check.
    pub fn read(&self) -> RwLockReadGuard<'_, Snapshot> {
        // A writer that panicked left a complete snapshot (replaced in one assignment).
        self.snapshot
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn replace(&self, registry: Registry) {
        let mut snapshot = self
            .snapshot
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        snapshot.load(registry);
    }
}

struct Reported {
    packages: BTreeMap<String, String>,
    versions: BTreeMap<String, String>,
    interval_ms: u64,
    received_at: u64,
}

pub struct AppStore {
    store: Store,
    bus: SharedBus,
    signer: Arc<InstructionSigner>,
    config: AppsConfig,
    /// Where agents download from, without a trailing slash.
    base_url: String,
    registry: AppRegistry,
    reported: HashMap<AgentId, Reported>,
    /// The digest of the last set sent to each agent, and when.
    sent: HashMap<AgentId, (String, u64)>,
    n_sent: u64,
}

impl AppStore {
    pub fn new(
        store: Store,
        bus: SharedBus,
        signer: Arc<InstructionSigner>,
        config: AppsConfig,
        base_url: String,
        registry: AppRegistry,
    ) -> AppStore {
        AppStore {
            store,
            bus,
            signer,
            config,
            base_url: base_url.trim_end_matches('/').to_string(),
            registry,
            reported: HashMap::new(),
            sent: HashMap::new(),
            n_sent: 0,
        }
    }

    /// Sends `agent` its app set if what it reported differs and the same set did not just go.
    fn reconcile(&mut self, agent: &AgentId, now: u64) {
        let Some(reported) = self.reported.get(agent) else {
            return;
        };
        let (set, digest) = {
            let snapshot = self.registry.read();
            let desired = snapshot.desired_for(agent);
            if !differs(&desired, &reported.packages, &reported.versions) {
                drop(snapshot);
                self.sent.remove(agent);
                return;
            }
            let digest = digest_of(&desired);
            if let Some((last_digest, sent_at)) = self.sent.get(agent) {
                if *last_digest == digest && now.saturating_sub(*sent_at) < self.config.resend_ms {
                    return;
                }
            }
            let set = app_set(
                agent,
                &desired,
                now,
                &self.base_url,
                self.config.download_ttl_s,
                &self.registry.tokens,
            );
            (set, digest)
        };
        self.sent.insert(agent.clone(), (digest, now));
        self.n_sent += 1;
        let message = signed_app_set(&self.signer, &set);
        let bus = self.bus.clone();
        let agent = agent.clone();
        log::info!("agent {agent}: sending app set ({} apps)", set.apps.len());
        actix_rt::spawn(async move {
            let destination = Destination::Topic(routing::agent(&agent));
            if let Err(err) = bus.publish(&destination, message).await {
                log::warn!("agent {agent}: app set not sent: {err}");
            }
        });
    }

    /// After a change: every agent heard from recently gets what it should have now.
    fn reconcile_recent(&mut self, now: u64) {
        let recent: Vec<AgentId> = self
            .reported
            .iter()
            .filter(|(_, reported)| {
                now.saturating_sub(reported.received_at)
                    <= reported.interval_ms.max(1) * PUSH_WITHIN_INTERVALS
            })
            .map(|(agent, _)| agent.clone())
            .collect();
        for agent in recent {
            self.reconcile(&agent, now);
        }
    }

    fn reload(&self) -> impl std::future::Future<Output = Result<Registry, String>> {
        let store = self.store.clone();
        async move {
            blocking(move || store.load_registry())
                .await
                .map_err(|err| err.to_string())
        }
    }
}

impl Actor for AppStore {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.notify(Refresh);
        let every = Duration::from_millis(self.config.refresh_ms.max(100));
        ctx.run_interval(every, |_, ctx| ctx.notify(Refresh));
    }
}

impl Supervised for AppStore {
    fn restarting(&mut self, _: &mut Context<Self>) {
        log::warn!("app store: restarting; agents are reconciled again at their next heartbeat");
        self.reported.clear();
        self.sent.clear();
    }
}

/// The periodic reload.
#[derive(Message)]
#[rtype(result = "()")]
struct Refresh;

impl Handler<Refresh> for AppStore {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Refresh, _: &mut Context<Self>) -> Self::Result {
        Box::pin(
            self.reload()
                .into_actor(self)
                .map(|loaded, actor, _| match loaded {
                    Ok(registry) => {
                        actor.registry.replace(registry);
                        actor.reconcile_recent(now_unix_ms());
                    }
                    Err(err) => {
                        log::warn!("app store: reload failed, keeping the old state: {err}")
                    }
                }),
        )
    }
}

impl Handler<Reload> for AppStore {
    type Result = ResponseActFuture<Self, Result<(), String>>;

    fn handle(&mut self, _: Reload, _: &mut Context<Self>) -> Self::Result {
        Box::pin(self.reload().into_actor(self).map(|loaded, actor, _| {
            let registry = loaded?;
            actor.registry.replace(registry);
            // A change is pushed at once, even to agents that just got an older set.
            actor.sent.clear();
            actor.reconcile_recent(now_unix_ms());
            Ok(())
        }))
    }
}

impl Handler<AgentReported> for AppStore {
    type Result = ();

    fn handle(&mut self, msg: AgentReported, _: &mut Context<Self>) {
        self.reported.insert(
            msg.agent.clone(),
            Reported {
                packages: msg.packages,
                versions: msg.versions,
                interval_ms: msg.interval_ms,
                received_at: msg.received_at,
            },
        );
        self.reconcile(&msg.agent, msg.received_at);
    }
}

impl Handler<GetState> for AppStore {
    type Result = AppStoreState;

    fn handle(&mut self, _: GetState, _: &mut Context<Self>) -> AppStoreState {
        let snapshot = self.registry.read();
        AppStoreState {
            apps: snapshot.n_apps(),
            online_apps: snapshot
                .apps
                .values()
                .filter(|app| app.online.is_some())
                .count(),
            auth_ids: snapshot.n_auth_ids(),
            agents_reported: self.reported.len(),
            app_sets_sent: self.n_sent,
        }
    }
}

/// True when the agent's center packages are not exactly the desired ones: another package,
/// or the same package under another version (a re-release of the same bytes keeps the
/// SHA-256, and the agent must still report the version it was told to have).
pub fn differs(
    desired: &[&AppVersionRow],
    packages: &BTreeMap<String, String>,
    versions: &BTreeMap<String, String>,
) -> bool {
    desired.len() != packages.len()
        || desired.iter().any(|version| {
            packages.get(&version.app) != Some(&version.sha256)
                || versions.get(&version.app) != Some(&version.version)
        })
}

fn digest_of(desired: &[&AppVersionRow]) -> String {
    let mut parts: Vec<String> = desired
        .iter()
        .map(|version| format!("{}={}@{}", version.app, version.sha256, version.version))
        .collect();
    parts.sort();
    parts.join(",")
}

/// The app set for `agent`, with download links valid for `ttl_s`.
pub fn app_set(
    agent: &AgentId,
    desired: &[&AppVersionRow],
    now: u64,
    base_url: &str,
    ttl_s: u64,
    tokens: &DownloadTokens,
) -> AppSet {
    let expires_s = now / 1000 + ttl_s;
    let apps = desired
        .iter()
        .map(|version| AppPackage {
            name: version.app.clone(),
            version: version.version.clone(),
            sha256: version.sha256.clone(),
            size: version.size,
            url: format!(
                "{base_url}/api/v2/app/download/{sha}?agent={agent}&expires={expires_s}&token={token}",
                sha = version.sha256,
                token = tokens.mint(&version.sha256, agent.as_str(), expires_s),
            ),
        })
        .collect();
    AppSet {
        agent: agent.clone(),
        issued_at: now,
        deadline: now + APP_SET_TTL_MS,
        apps,
    }
}

/// Encodes and signs an app set like an instruction (signature over the exact body bytes).
pub fn signed_app_set(signer: &InstructionSigner, set: &AppSet) -> BusMessage {
    let mut message = BusMessage::msgpack(kind::APP_SET, wire::encode(set));
    let (key_id, signature) = signer.sign_with_key_id(&message.body);
    message.sig = Some(signature);
    message.key_id = Some(key_id);
    message.expiration_ms = Some(set.deadline.saturating_sub(set.issued_at));
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AuthIdRow;

    fn auth(mode: AuthMode) -> AuthConfig {
        AuthConfig {
            mode,
            auth_id: "root".into(),
            auth_key: "root-key-123".into(),
            timestamp_window_s: 180,
        }
    }

    fn version(app: &str, version: &str, sha: char) -> AppVersionRow {
        AppVersionRow {
            app: app.into(),
            version: version.into(),
            sha256: sha.to_string().repeat(64),
            size: 1,
            uploaded_by: "root".into(),
            uploaded_at: 1,
        }
    }

    fn app(name: &str) -> crate::store::AppRow {
        crate::store::AppRow {
            name: name.into(),
            display_name: String::new(),
            online_version: None,
            created_at: 1,
            updated_at: 2,
        }
    }

    fn user(auth_id: &str, role: Role, revoked: bool) -> AuthIdRow {
        AuthIdRow {
            auth_id: auth_id.into(),
            auth_key: format!("{auth_id}-key"),
            role,
            comment: String::new(),
            created_at: 1,
            revoked_at: revoked.then_some(5),
        }
    }

    fn supervisor() -> Snapshot {
        let mut snapshot = Snapshot::new(&auth(AuthMode::Supervisor));
        snapshot.load(Registry {
            apps: vec![app("alpha"), app("beta")],
            online: vec![version("alpha", "1", 'a')],
            grants: vec![("alpha".into(), "alice".into())],
            bindings: vec![("alpha".into(), "agent-1".into())],
            auth_ids: vec![
                user("alice", Role::Normal, false),
                user("boss", Role::Admin, false),
                user("gone", Role::Normal, true),
            ],
        });
        snapshot
    }

    #[test]
    fn supervisor_mode_permission_matrix() {
        let snapshot = supervisor();
        let agent_1 = AgentId::parse("agent-1").unwrap();
        let agent_2 = AgentId::parse("agent-2").unwrap();
        assert_eq!(snapshot.key_of("alice").as_deref(), Some("alice-key"));
        assert_eq!(snapshot.key_of("root").as_deref(), Some("root-key-123"));
        assert_eq!(snapshot.key_of("gone"), None, "revoked");
        assert_eq!(snapshot.key_of("nobody"), None);
        assert!(snapshot.require_app("alice", "alpha").is_ok());
        assert_eq!(
            snapshot.require_app("alice", "beta"),
            Err(Denied::AppNotHeld("beta".into()))
        );
        assert_eq!(
            snapshot.require_app("alice", "zeta"),
            Err(Denied::AppUnknown("zeta".into()))
        );
        assert!(
            snapshot.require_app("boss", "beta").is_ok(),
            "admins hold every app"
        );
        assert!(snapshot.require_bound("alpha", &agent_1).is_ok());
        assert!(snapshot.require_bound("alpha", &agent_2).is_err());
        assert!(snapshot.require_bound("beta", &agent_1).is_err());
        assert_eq!(snapshot.require_admin("alice"), Err(Denied::NotAdmin));
        assert!(snapshot.require_admin("boss").is_ok());
        assert!(snapshot.require_admin("root").is_ok());
        assert_eq!(snapshot.desired_for(&agent_1).len(), 1);
        assert!(snapshot.desired_for(&agent_2).is_empty());
        assert_eq!(
            snapshot.agents_of("alice"),
            Some(["agent-1".to_string()].into())
        );
    }

    #[test]
    fn simple_mode_allows_everything_to_the_configured_id_only() {
        let mut snapshot = Snapshot::new(&auth(AuthMode::Simple));
        snapshot.load(Registry {
            apps: vec![app("alpha")],
            online: vec![version("alpha", "1", 'a')],
            auth_ids: vec![user("alice", Role::Normal, false)],
            ..Registry::default()
        });
        assert_eq!(snapshot.key_of("alice"), None);
        assert!(snapshot.key_of("root").is_some());
        let agent = AgentId::parse("any").unwrap();
        assert!(snapshot.require_app("root", "unknown").is_ok());
        assert!(snapshot.require_bound("alpha", &agent).is_ok());
        assert_eq!(
            snapshot.desired_for(&agent).len(),
            1,
            "every app to every agent"
        );
        assert_eq!(snapshot.agents_of("root"), None);
    }

    #[test]
    fn an_agent_is_sent_a_set_only_when_its_packages_differ() {
        let alpha = version("alpha", "1", 'a');
        let desired = vec![&alpha];
        let versions: BTreeMap<String, String> = [("alpha".to_string(), "1".to_string())].into();
        let mut reported = BTreeMap::new();
        assert!(differs(&desired, &reported, &versions));
        reported.insert("alpha".to_string(), "a".repeat(64));
        assert!(!differs(&desired, &reported, &versions));
        reported.insert("old".to_string(), "b".repeat(64));
        assert!(
            differs(&desired, &reported, &versions),
            "an app to set aside"
        );
        assert!(differs(&[], &reported, &versions));
    }

    #[test]
    fn a_re_release_of_the_same_bytes_under_a_new_version_is_sent() {
        // Version 2 was uploaded with the bytes of version 1: same SHA-256, new number.
        let re_released = version("alpha", "2", 'a');
        let desired = vec![&re_released];
        let packages: BTreeMap<String, String> = [("alpha".to_string(), "a".repeat(64))].into();
        let still_old: BTreeMap<String, String> = [("alpha".to_string(), "1".to_string())].into();
        assert!(differs(&desired, &packages, &still_old));
        let up_to_date: BTreeMap<String, String> = [("alpha".to_string(), "2".to_string())].into();
        assert!(!differs(&desired, &packages, &up_to_date));
        assert!(
            differs(&desired, &packages, &BTreeMap::new()),
            "an agent that reports no version for the app"
        );
    }

    #[test]
    fn download_tokens_bind_package_agent_and_expiry() {
        let tokens = DownloadTokens::new(Arc::new(InstructionSigner::generate("center")));
        let sha = "a".repeat(64);
        let token = tokens.mint(&sha, "agent-1", 1_000);
        assert!(tokens.verify(&sha, "agent-1", 1_000, &token, 999));
        assert!(
            !tokens.verify(&sha, "agent-1", 1_000, &token, 1_001),
            "expired"
        );
        assert!(!tokens.verify(&sha, "agent-2", 1_000, &token, 999));
        assert!(!tokens.verify(&"b".repeat(64), "agent-1", 1_000, &token, 999));
        assert!(!tokens.verify(&sha, "agent-1", 2_000, &token, 999));
        assert!(!tokens.verify(&sha, "agent-1", 1_000, "zz", 999));
        let other = DownloadTokens::new(Arc::new(InstructionSigner::generate("center")));
        assert!(!other.verify(&sha, "agent-1", 1_000, &token, 999));
    }

    #[test]
    fn app_sets_are_signed_and_carry_links() {
        let signer = Arc::new(InstructionSigner::generate("center"));
        let tokens = DownloadTokens::new(signer.clone());
        let alpha = version("alpha", "1", 'a');
        let agent = AgentId::parse("agent-1").unwrap();
        let set = app_set(&agent, &[&alpha], 5_000, "http://c:1", 60, &tokens);
        assert_eq!(set.apps.len(), 1);
        assert!(set.apps[0].url.starts_with(&format!(
            "http://c:1/api/v2/app/download/{}?agent=agent-1&expires=65&token=",
            "a".repeat(64)
        )));
        let message = signed_app_set(&signer, &set);
        assert_eq!(message.kind, kind::APP_SET);
        let mut verifier = elves_shared::crypto::InstructionVerifier::new();
        verifier
            .add_public_key_hex("center", &signer.public_key_hex())
            .unwrap();
        verifier
            .verify(
                &message.body,
                message.key_id.as_deref(),
                message.sig.as_deref(),
            )
            .unwrap();
    }
}
