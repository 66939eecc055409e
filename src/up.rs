//! `elves up`: the embedded default. One process holds the center, one local agent and the
//! in-process bus; state and keys live under the data directory.
//! It writes `<data>/client.toml` so that `elves call` run from the same directory just works.

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
    /// The apps the local agent runs.
    #[arg(long, default_value = "apps")]
    apps_dir: PathBuf,
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
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
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
    let center = elves_center::start(center_config, listener, bus.clone())?;

    let mut agent_config = AgentConfig::new(AgentId::parse("local").context("agent id")?);
    agent_config.ip = "127.0.0.1".to_string();
    agent_config.apps_dir = args.apps_dir.clone();
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
    println!("  auth_id:  admin");
    println!("  auth_key: {auth_key}");
    println!(
        "  agent:    local (ip 127.0.0.1), apps from {}",
        args.apps_dir.display()
    );
    println!("try, from this directory:");
    println!("  cargo run -q -- call rt/exec ip=127.0.0.1 app=apptest func=helloword 'param={{\"my\":\"hello elves\"}}'");
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
