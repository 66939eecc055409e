//! `elves agent`: without a subcommand it runs the agent of this host (as `elves-agent`);
//! `elves agent enroll <id>` and `elves agent revoke <id>` are signed admin calls to a center
//! (`agent/enroll`, `agent/revoke`): the center makes or deletes the agent's broker user, and
//! enroll prints the agent's whole `agent.toml` (or writes it with `--out`, readable by the
//! file's owner only: it holds the agent's broker password).

use crate::client::Connection;
use anyhow::Context as _;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    /// The agent's configuration (when running the agent).
    #[arg(long, default_value = "config/agent.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<AgentCommand>,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Make everything agent <id> needs (its broker user, limited to its own queue) and print
    /// its agent.toml (admin).
    Enroll {
        id: String,
        /// Write the config here (mode 0600; an existing file is not overwritten).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Take agent <id>'s broker user away: its connection is closed and refused (admin).
    Revoke {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    match args.command {
        None => elves_agent::service::run_until_signal(&args.config),
        Some(AgentCommand::Enroll {
            id,
            out,
            connection,
        }) => {
            let result = call(&connection, "agent/enroll", &id)?;
            let config = result["config"]
                .as_str()
                .context("agent/enroll: the answer has no config")?;
            match out {
                Some(path) => {
                    write_private(&path, config)?;
                    eprintln!(
                        "elves: agent {id} enrolled; its config is in {}",
                        path.display()
                    );
                }
                None => print!("{config}"),
            }
            if let Some(note) = result["note"].as_str().filter(|note| !note.is_empty()) {
                eprintln!("elves: note: {note}");
            }
            Ok(())
        }
        Some(AgentCommand::Revoke { id, connection }) => {
            call(&connection, "agent/revoke", &id)?;
            eprintln!("elves: agent {id} revoked: its broker user is deleted");
            Ok(())
        }
    }
}

fn call(connection: &Connection, endpoint: &str, id: &str) -> anyhow::Result<serde_json::Value> {
    let client = connection.client()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(client.call_ok(endpoint, vec![("id".to_string(), id.to_string())]))
}

/// Creates `path` with `text`, readable by its owner only; an existing file is an error.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
