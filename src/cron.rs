//! `elves cron reload`: asks a center (local or remote) to read its `cron.d` definition files
//! again, through the signed `cron/reload` call, and prints what changed and what is broken.
//! The same as sending the center SIGHUP, but it works across machines and shows the outcome.

use crate::client::Connection;
use clap::{Args, Subcommand};

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

pub fn run(args: CronArgs) -> anyhow::Result<()> {
    match args.command {
        CronCommand::Reload(connection) => connection.call("cron/reload", Vec::new()),
    }
}
