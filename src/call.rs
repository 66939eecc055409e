//! `elves call <endpoint> k=v …`: a signed v2 call from the command line.
//! The center and credentials come from flags, `ELVES_URL`/`ELVES_AUTH_ID`/`ELVES_AUTH_KEY`,
//! or the `data/client.toml` that `elves up` writes. The services ignore these variables
//! (`elves_shared::config::CLIENT_VARIABLES`), so one shell can hold them and start a center.

use crate::client::{Client, Connection};
use anyhow::{bail, Context as _};
use clap::Args;

#[derive(Args)]
pub struct CallArgs {
    /// The endpoint under /api/v2, e.g. `rt/exec` (a leading `/api/v2/` is accepted too).
    pub(crate) endpoint: String,
    /// Parameters as key=value (auth_id, timestamp and sign are added).
    pub(crate) params: Vec<String>,
    /// `rt/exec` only: show the task's output as it comes (`wait_s=1` unless given), then
    /// its result.
    #[arg(long)]
    pub(crate) follow: bool,
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
    if args.follow {
        return runtime.block_on(call_and_follow(&client, &args.endpoint, params));
    }
    let text = runtime.block_on(client.call_text(&args.endpoint, params))?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(value) => println!("{}", serde_json::to_string_pretty(&value)?),
        Err(_) => println!("{text}"),
    }
    Ok(())
}

/// `rt/exec --follow`: the call answers once the task is running (`wait_s`), its output
/// follows, then its result as `task/result` gives it.
async fn call_and_follow(
    client: &Client,
    endpoint: &str,
    mut params: Vec<(String, String)>,
) -> anyhow::Result<()> {
    if endpoint
        .trim_start_matches('/')
        .trim_start_matches("api/v2/")
        != "rt/exec"
    {
        bail!("--follow is for rt/exec");
    }
    if !params.iter().any(|(key, _)| key == "wait_s") {
        params.push(("wait_s".to_string(), "1".to_string()));
    }
    let answer = client.call_ok("rt/exec", params).await?;
    let Some(task_id) = answer["id"].as_str() else {
        bail!("rt/exec: no task id in {answer}");
    };
    let end = crate::tail::follow(client, task_id, "stdout").await?;
    eprintln!("{}", end.summary(task_id));
    let result = client
        .call_ok("task/result", vec![("id".to_string(), task_id.to_string())])
        .await?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
