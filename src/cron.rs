//! `elves cron reload`: asks a center (local or remote) to read its `cron.d` definition files
//! again, through the signed `cron/reload` call, and prints what changed and what is broken.
//! The same as sending the center SIGHUP, but it works across machines and shows the outcome.

use crate::call::{self, CallArgs};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args)]
pub struct CronArgs {
    #[command(subcommand)]
    command: CronCommand,
}

#[derive(Subcommand)]
enum CronCommand {
    /// Reload the center's cron definition files (config/cron.d/*.toml).
    Reload(Connection),
}

/// Where the center is and how to sign, as for `elves call`.
#[derive(Args)]
struct Connection {
    #[arg(long, env = "ELVES_URL")]
    url: Option<String>,
    #[arg(long, env = "ELVES_AUTH_ID")]
    auth_id: Option<String>,
    #[arg(long, env = "ELVES_AUTH_KEY", hide_env_values = true)]
    auth_key: Option<String>,
    /// MD5 or HMAC-SHA256.
    #[arg(long, default_value = "HMAC-SHA256")]
    sign_type: String,
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
}

pub fn run(args: CronArgs) -> anyhow::Result<()> {
    match args.command {
        CronCommand::Reload(connection) => call::run(CallArgs {
            endpoint: "cron/reload".to_string(),
            params: Vec::new(),
            url: connection.url,
            auth_id: connection.auth_id,
            auth_key: connection.auth_key,
            sign_type: connection.sign_type,
            data_dir: connection.data_dir,
        }),
    }
}
