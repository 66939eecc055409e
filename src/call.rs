//! `elves call <endpoint> k=v …`: a signed v2 call from the command line.
//! The center and credentials come from flags, `ELVES_URL`/`ELVES_AUTH_ID`/`ELVES_AUTH_KEY`,
//! or the `data/client.toml` that `elves up` writes. The services ignore these variables
//! (`elves_shared::config::CLIENT_VARIABLES`), so one shell can hold them and start a center.

use crate::client::Connection;
use anyhow::{bail, Context as _};
use clap::Args;

#[derive(Args)]
pub struct CallArgs {
    /// The endpoint under /api/v2, e.g. `rt/exec` (a leading `/api/v2/` is accepted too).
    pub(crate) endpoint: String,
    /// Parameters as key=value (auth_id, timestamp and sign are added).
    pub(crate) params: Vec<String>,
    #[command(flatten)]
    pub(crate) connection: Connection,
}

pub fn run(args: CallArgs) -> anyhow::Result<()> {
    let client = args.connection.client()?;
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
