//! `elves call <endpoint> k=v …`: a signed v2 call from the command line.
//! The center and credentials come from flags, `ELVES_URL`/`ELVES_AUTH_ID`/`ELVES_AUTH_KEY`,
//! or the `data/client.toml` that `elves up` writes. The services ignore these variables
//! (`elves_shared::config::CLIENT_VARIABLES`), so one shell can hold them and start a center.

use crate::up::{client_file_path, ClientFile};
use anyhow::{bail, Context as _};
use clap::Args;
use elves_shared::config;
use elves_shared::sign::{self, SignType};
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
    let from_file: Option<ClientFile> = std::fs::read_to_string(client_file_path(&args.data_dir))
        .ok()
        .and_then(|text| toml::from_str(&text).ok());
    let pick = |flag: Option<String>, file_value: Option<&str>, name: &str| {
        flag.or_else(|| file_value.map(str::to_string))
            .with_context(|| {
                format!("no {name}: pass --{name} or run `elves up` in this directory first")
            })
    };
    let url = pick(args.url, from_file.as_ref().map(|f| f.url.as_str()), "url")?;
    let auth_id = pick(
        args.auth_id,
        from_file.as_ref().map(|f| f.auth_id.as_str()),
        "auth-id",
    )?;
    let auth_key = pick(
        args.auth_key,
        from_file.as_ref().map(|f| f.auth_key.as_str()),
        "auth-key",
    )?;
    let Some(sign_type) = SignType::parse(&args.sign_type) else {
        bail!("--sign-type must be MD5 or HMAC-SHA256");
    };

    let endpoint = args.endpoint.trim_start_matches('/');
    let endpoint = endpoint.strip_prefix("api/v2/").unwrap_or(endpoint);
    let path = format!("/api/v2/{endpoint}");
    let mut params = Vec::new();
    for pair in &args.params {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("parameter {pair:?} is not key=value");
        };
        params.push((key.to_string(), value.to_string()));
    }
    params.push(("auth_id".to_string(), auth_id));
    let timestamp = chrono::Utc::now().timestamp();
    params.push(("timestamp".to_string(), timestamp.to_string()));
    let signed = sign::sign_params(&path, params, sign_type, &auth_key);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let text = runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", url.trim_end_matches('/')))
            .form(&signed)
            .send()
            .await
            .with_context(|| format!("calling {url}{path}"))?;
        response.text().await.context("reading the answer")
    })?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(value) => println!("{}", serde_json::to_string_pretty(&value)?),
        Err(_) => println!("{text}"),
    }
    Ok(())
}
