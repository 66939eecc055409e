//! `elves up`: the embedded default. One process holds the center, one local agent and the
//! in-process bus; state, keys and uploaded apps live under the data directory.
//! It writes `<data>/client.toml` so that `elves call` run from the same directory just works.
//!
//! The bundled example apps stay where they are, read-only: each is linked into the agent's
//! apps directory, where an upload of the same name replaces the link, never the example.

use anyhow::Context as _;
use clap::Args;
use elves_agent::{AgentConfig, AgentStats};
use elves_center::config::CenterConfig;
use elves_shared::wire::AgentId;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Args)]
pub struct UpArgs {
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:8080", env = "ELVES_UP_LISTEN")]
    listen: String,
    /// Keys, spool and state.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Where the local agent keeps its apps, uploaded ones included [default: <data-dir>/apps].
    #[arg(long)]
    apps_dir: Option<PathBuf>,
    /// Example apps made runnable without an upload (linked into the apps directory).
    #[arg(long, default_value = "apps")]
    examples_dir: PathBuf,
}

/// What `elves call` needs to reach the center that `elves up` started.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ClientFile {
    pub url: String,
    pub auth_id: String,
    pub auth_key: String,
}

pub fn client_file_path(data_dir: &Path) -> PathBuf {
    data_dir.join("client.toml")
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    elves_center::tune_allocator();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let apps_dir = args
        .apps_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("apps"));
    std::fs::create_dir_all(&apps_dir)
        .with_context(|| format!("creating apps dir {}", apps_dir.display()))?;
    let examples = link_examples(&args.examples_dir, &apps_dir)?;
    let auth_key = load_or_create_auth_key(&args.data_dir)?;
    let listener = std::net::TcpListener::bind(&args.listen).with_context(|| {
        format!(
            "binding {} (is another elves running? try --listen)",
            args.listen
        )
    })?;
    let url = format!("http://{}", listener.local_addr()?);

    let center_config: CenterConfig = elves_shared::config::load(
        None,
        [
            (
                "ELVES_DATA_DIR".to_string(),
                args.data_dir.display().to_string(),
            ),
            ("ELVES_AUTH__AUTH_ID".to_string(), "admin".to_string()),
            ("ELVES_AUTH__AUTH_KEY".to_string(), auth_key.clone()),
        ],
    )?;
    center_config.validate()?;
    let bus = elves_shared::bus::open("inproc", &center_config.bus.namespace)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the agent runtime")?;
    let agent_id = AgentId::parse(LOCAL_AGENT).context("agent id")?;
    make_local_agent_reachable(&center_config, &bus, &agent_id, &runtime)?;
    let center = elves_center::start(center_config, listener, bus.clone())?;

    let mut agent_config = AgentConfig::new(agent_id);
    agent_config.ip = LOCAL_AGENT_IP.to_string();
    agent_config.apps_dir = apps_dir.clone();
    agent_config.spool_dir = args.data_dir.join("agent-spool");
    agent_config.center.key_id = center.key_id.clone();
    agent_config.center.public_key = center.public_key_hex.clone();
    agent_config.validate()?;

    let client = ClientFile {
        url: url.clone(),
        auth_id: "admin".to_string(),
        auth_key: auth_key.clone(),
    };
    let client_path = client_file_path(&args.data_dir);
    std::fs::write(&client_path, toml::to_string(&client)?)
        .with_context(|| format!("writing {}", client_path.display()))?;

    println!("elves is up");
    println!("  api:      {url}/api/v2/…   (health: {url}/healthz, metrics: {url}/metrics)");
    println!("  web:      {url}/ui/   (sign in with the auth_id and auth_key below)");
    println!("  auth_id:  admin");
    println!("  auth_key: {auth_key}");
    println!(
        "  agent:    {LOCAL_AGENT} (ip {LOCAL_AGENT_IP}), apps in {}",
        apps_dir.display()
    );
    if !examples.is_empty() {
        println!(
            "  examples: {} (from {})",
            examples.join(", "),
            args.examples_dir.display()
        );
    }
    println!("try, from this directory:");
    println!(
        "  {} call rt/exec ip={LOCAL_AGENT_IP} app=apptest func=helloword 'param={{\"my\":\"hello elves\"}}'",
        elves_command()
    );
    println!("stop with ctrl-c");

    let stats = Arc::new(AgentStats::new());
    let outcome = runtime.block_on(async move {
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        elves_agent::run(agent_config, bus, stats, shutdown).await
    });
    center.stop();
    outcome
}

/// The simple-mode key is made once and kept, so that clients keep working across restarts.
fn load_or_create_auth_key(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("auth_key");
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= 16 => Ok(text.trim().to_string()),
        _ => {
            let key = format!("{:032x}", rand::random::<u128>());
            std::fs::write(&path, &key).with_context(|| format!("writing {}", path.display()))?;
            Ok(key)
        }
    }
}

const LOCAL_AGENT: &str = "local";
const LOCAL_AGENT_IP: &str = "127.0.0.1";

/// Makes the local agent known and its queue exist before the center starts, so that nothing
/// the center sends before the agent consumes is lost: a cron firing due in the first second
/// is resolved from its ip to the agent through the agents table and waits in the queue.
fn make_local_agent_reachable(
    config: &CenterConfig,
    bus: &elves_shared::bus::SharedBus,
    agent: &AgentId,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    let store =
        elves_center::store::Store::open(&config.database_url()).context("opening the database")?;
    let known = store
        .get_agent_by_ip_or_id(agent.as_str())
        .context("reading the agents table")?;
    if known.is_none() {
        // Never heard from: it counts as offline until its first heartbeat.
        let row = elves_center::store::AgentRow {
            id: agent.clone(),
            ip: LOCAL_AGENT_IP.to_string(),
            asset: String::new(),
            version: String::new(),
            apps: Default::default(),
            last_heartbeat_at: 0,
            interval_ms: 0,
            labels: Default::default(),
        };
        store
            .upsert_agent(&row)
            .context("registering the local agent")?;
    }
    let spec = elves_shared::bus::QueueSpec::agent(bus.as_ref(), agent);
    runtime
        .block_on(bus.declare(&spec))
        .context("declaring the local agent's queue")?;
    Ok(())
}

/// Links each example app of `examples_dir` into `apps_dir` unless something of that name is
/// there already (an upload, or the link of an earlier start). Only directories with an entry
/// program are apps: the SDK folder beside them is not. Returns the names linked or found.
fn link_examples(examples_dir: &Path, apps_dir: &Path) -> anyhow::Result<Vec<String>> {
    let Ok(entries) = std::fs::read_dir(examples_dir) else {
        // No examples here (elves up run outside a checkout): nothing to link.
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
    for entry in entries.flatten() {
        let source = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let is_app = elves_shared::names::is_valid_name(&name)
            && !name.starts_with('.')
            && ["app-worker", "app-worker.py"]
                .iter()
                .any(|entry| source.join(entry).is_file());
        if !is_app {
            continue;
        }
        let link = apps_dir.join(&name);
        if link.symlink_metadata().is_err() {
            let target = source
                .canonicalize()
                .with_context(|| format!("resolving {}", source.display()))?;
            std::os::unix::fs::symlink(&target, &link)
                .with_context(|| format!("linking {} to {}", link.display(), target.display()))?;
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// The command that runs this very binary: `elves` when that is what PATH finds, else its
/// path, so that the call printed for a new user starts no second build.
fn elves_command() -> String {
    let Ok(this) = std::env::current_exe().and_then(|path| path.canonicalize()) else {
        return "elves".to_string();
    };
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("elves"))
                .find(|candidate| candidate.is_file())
                .and_then(|found| found.canonicalize().ok())
        })
        .unwrap_or_default();
    if on_path.as_deref() == Some(this.as_path()) {
        return "elves".to_string();
    }
    shell_quoted(&this.display().to_string())
}

fn shell_quoted(text: &str) -> String {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'+'));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_are_linked_once_and_the_sdk_is_not_an_app() {
        let examples = tempfile::tempdir().unwrap();
        let apps = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(examples.path().join("hello")).unwrap();
        std::fs::write(examples.path().join("hello/app-worker.py"), "").unwrap();
        std::fs::create_dir_all(examples.path().join("sdk/python")).unwrap();
        std::fs::write(examples.path().join("sdk/python/app-worker.py"), "").unwrap();
        std::fs::create_dir_all(apps.path().join("uploaded")).unwrap();

        let linked = link_examples(examples.path(), apps.path()).unwrap();
        assert_eq!(linked, ["hello"]);
        assert!(apps.path().join("hello/app-worker.py").is_file());
        assert!(!apps.path().join("sdk").exists());
        // A second start finds the link and leaves it.
        assert_eq!(
            link_examples(examples.path(), apps.path()).unwrap(),
            ["hello"]
        );
        assert!(link_examples(&apps.path().join("missing"), apps.path())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn shell_quoting_keeps_plain_paths_and_quotes_the_rest() {
        assert_eq!(shell_quoted("/opt/elves/bin/elves"), "/opt/elves/bin/elves");
        assert_eq!(shell_quoted("/my dir/it's"), "'/my dir/it'\\''s'");
    }
}
