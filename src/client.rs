//! The signed v2 client the subcommands share: where the center is and who calls it (flags,
//! then `ELVES_URL`/`ELVES_AUTH_ID`/`ELVES_AUTH_KEY`, then the `data/client.toml` that
//! `elves up` writes), and one signed POST per call.

use crate::up::{client_file_path, ClientFile};
use anyhow::{bail, Context as _};
use clap::Args;
use elves_shared::config;
use elves_shared::sign::{self, SignType};
use std::path::{Path, PathBuf};

/// Where the center is and who calls it: the flags every client subcommand takes.
#[derive(Args, Clone)]
pub struct Connection {
    #[arg(long, env = config::CLIENT_URL)]
    pub url: Option<String>,
    #[arg(long, env = config::CLIENT_AUTH_ID)]
    pub auth_id: Option<String>,
    #[arg(long, env = config::CLIENT_AUTH_KEY, hide_env_values = true)]
    pub auth_key: Option<String>,
    /// MD5 or HMAC-SHA256.
    #[arg(long, default_value = "HMAC-SHA256")]
    pub sign_type: String,
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
}

impl Connection {
    /// (url, auth id, auth key): flags, then the environment, then `<data>/client.toml`.
    pub fn resolve(&self) -> anyhow::Result<(String, String, String)> {
        resolve_credentials(
            self.url.clone(),
            self.auth_id.clone(),
            self.auth_key.clone(),
            &self.data_dir,
        )
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        Client::new(self.resolve()?, &self.sign_type)
    }

    /// `elves call <endpoint> <params>` with these flags: prints the answer.
    pub fn call(&self, endpoint: &str, params: Vec<String>) -> anyhow::Result<()> {
        crate::call::run(crate::call::CallArgs {
            endpoint: endpoint.to_string(),
            params,
            follow: false,
            connection: self.clone(),
        })
    }
}

/// (url, auth id, auth key): each from its flag or variable, else from `<data_dir>/client.toml`.
pub fn resolve_credentials(
    url: Option<String>,
    auth_id: Option<String>,
    auth_key: Option<String>,
    data_dir: &Path,
) -> anyhow::Result<(String, String, String)> {
    let from_file: Option<ClientFile> = std::fs::read_to_string(client_file_path(data_dir))
        .ok()
        .and_then(|text| toml::from_str(&text).ok());
    let pick = |flag: Option<String>, file_value: Option<&str>, name: &str| {
        flag.or_else(|| file_value.map(str::to_string))
            .with_context(|| {
                format!("no {name}: pass --{name} or run `elves up` in this directory first")
            })
    };
    Ok((
        pick(url, from_file.as_ref().map(|f| f.url.as_str()), "url")?,
        pick(
            auth_id,
            from_file.as_ref().map(|f| f.auth_id.as_str()),
            "auth-id",
        )?,
        pick(
            auth_key,
            from_file.as_ref().map(|f| f.auth_key.as_str()),
            "auth-key",
        )?,
    ))
}

/// Signs and sends v2 calls to one center as one auth id. A clone shares the connection pool.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    auth_id: String,
    auth_key: String,
    sign_type: SignType,
}

impl Client {
    pub fn new(
        (url, auth_id, auth_key): (String, String, String),
        sign_type: &str,
    ) -> anyhow::Result<Client> {
        let Some(sign_type) = SignType::parse(sign_type) else {
            bail!("--sign-type must be MD5 or HMAC-SHA256");
        };
        Ok(Client {
            http: reqwest::Client::new(),
            url: url.trim_end_matches('/').to_string(),
            auth_id,
            auth_key,
            sign_type,
        })
    }

    /// POSTs `params` to `/api/v2/<endpoint>` as a form, with `auth_id`, `timestamp` and the
    /// signature added; returns the answer's text.
    pub async fn call_text(
        &self,
        endpoint: &str,
        mut params: Vec<(String, String)>,
    ) -> anyhow::Result<String> {
        let endpoint = endpoint.trim_start_matches('/');
        let endpoint = endpoint.strip_prefix("api/v2/").unwrap_or(endpoint);
        let path = format!("/api/v2/{endpoint}");
        params.push(("auth_id".to_string(), self.auth_id.clone()));
        let timestamp = chrono::Utc::now().timestamp();
        params.push(("timestamp".to_string(), timestamp.to_string()));
        let signed = sign::sign_params(&path, params, self.sign_type, &self.auth_key);
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .form(&signed)
            .send()
            .await
            .with_context(|| format!("calling {}{path}", self.url))?;
        response.text().await.context("reading the answer")
    }

    /// Opens a server-sent-events call (`task/follow`), resuming after `last_event_id`; the
    /// response's body is the event stream, or the JSON envelope of a refused call.
    pub async fn open_events(
        &self,
        endpoint: &str,
        mut params: Vec<(String, String)>,
        last_event_id: Option<u64>,
    ) -> anyhow::Result<reqwest::Response> {
        let path = format!("/api/v2/{endpoint}");
        params.push(("auth_id".to_string(), self.auth_id.clone()));
        let timestamp = chrono::Utc::now().timestamp();
        params.push(("timestamp".to_string(), timestamp.to_string()));
        let signed = sign::sign_params(&path, params, self.sign_type, &self.auth_key);
        let mut request = self.http.post(format!("{}{path}", self.url)).form(&signed);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        request
            .send()
            .await
            .with_context(|| format!("calling {}{path}", self.url))
    }

    /// Like [`Client::call_text`], for callers that need the result: an answer with
    /// `flag` other than `"true"` is an error carrying the center's `[code]message`.
    pub async fn call_ok(
        &self,
        endpoint: &str,
        params: Vec<(String, String)>,
    ) -> anyhow::Result<serde_json::Value> {
        let text = self.call_text(endpoint, params).await?;
        let mut answer: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{endpoint}: the answer is not JSON: {text}"))?;
        if answer["flag"] != "true" {
            bail!("{endpoint}: {}", answer["error"].as_str().unwrap_or(&text));
        }
        Ok(answer["result"].take())
    }
}
