//! `elves call <endpoint> k=v …`: a signed v2 call from the command line.
//! The center and credentials come from flags, `ELVES_URL`/`ELVES_AUTH_ID`/`ELVES_AUTH_KEY`,
//! or the `data/client.toml` that `elves up` writes. The services ignore these variables
//! (`elves_shared::config::CLIENT_VARIABLES`), so one shell can hold them and start a center.

use crate::client::{self, Client};
use anyhow::{bail, Context as _};
use clap::Args;
use elves_shared::config;
use std::path::PathBuf;

#[derive(Args)]
pub struct CallArgs {
    /// The endpoint under /api/v2, e.g. `rt/exec` (a leading `/api/v2/` is accepted too).
    pub(crate) endpoint: String,
    /// Parameters as key=value (auth_id, timestamp and sign are added).
    pub(crate) params: Vec<String>,
    #[arg(long, env = config::CLIENT_URL)]
    pub(crate) url: Option<String>,
    #[arg(long, env = config::CLIENT_AUTH_ID)]
    pub(crate) auth_id: Option<String>,
    #[arg(long, env = config::CLIENT_AUTH_KEY, hide_env_values = true)]
    pub(crate) auth_key: Option<String>,
    /// MD5 or HMAC-SHA256.
    #[arg(long, default_value = "HMAC-SHA256")]
    pub(crate) sign_type: String,
    #[arg(long, default_value = "data")]
    pub(crate) data_dir: PathBuf,
}

pub fn run(args: CallArgs) -> anyhow::Result<()> {
    let credentials =
        client::resolve_credentials(args.url, args.auth_id, args.auth_key, &args.data_dir)?;
    let client = Client::new(credentials, &args.sign_type)?;
    let mut params = Vec::new();
    for pair in &args.params {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("parameter {pair:?} is not key=value");
        };
        params.push((key.to_string(), value.to_string()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let text = runtime.block_on(client.call_text(&args.endpoint, params))?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(value) => println!("{}", serde_json::to_string_pretty(&value)?),
        Err(_) => println!("{text}"),
    }
    Ok(())
}
