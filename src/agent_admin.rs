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
            // The file is made before the call: a path that cannot be written must not leave
            // an enrolled agent whose password nobody saw.
            let file = out.as_deref().map(create_private).transpose()?;
            let enrolled = call(&connection, "agent/enroll", &id);
            let result = match enrolled {
                Ok(result) => result,
                Err(err) => {
                    if let Some(path) = &out {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(err);
                }
            };
            let config = result["config"]
                .as_str()
                .context("agent/enroll: the answer has no config")?;
            match (file, out) {
                (Some(mut file), Some(path)) => {
                    use std::io::Write as _;
                    file.write_all(config.as_bytes())
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!(
                        "elves: agent {id} enrolled; its config is in {}",
                        path.display()
                    );
                }
                _ => print!("{config}"),
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

/// Creates `path`, readable by its owner only; an existing file is an error.
fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))
}
