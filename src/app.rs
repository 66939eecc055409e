//! `elves app …` and `elves auth …`: packages and supervisor-mode administration.
//!
//! `app pack` zips an app directory with the same rules the center applies (and checks the
//! result before writing it); `app push` uploads a zip (multipart, auth parameters signed in
//! the query string, with its `sha256`). The other subcommands are signed calls to the admin
//! endpoints, printed like `elves call`.

use crate::client::Connection;
use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use elves_shared::package::{self, Limits, PackageName};
use elves_shared::sign::{self, SignType};
use std::path::PathBuf;

#[derive(Args)]
pub struct AppArgs {
    #[command(subcommand)]
    command: AppCommand,
}

#[derive(Subcommand)]
enum AppCommand {
    /// Zip an app directory into `<app>_<version>.zip` (the app is the directory's name).
    Pack {
        dir: PathBuf,
        /// Defaults to the content of `<dir>/VERSION`.
        #[arg(long)]
        version: Option<String>,
        /// Where to write the zip.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Upload a package; it becomes the online version unless --offline.
    Push {
        zip: PathBuf,
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Make a version the one agents should have (an older one rolls agents back).
    Online {
        app: String,
        version: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// The versions of an app.
    Versions {
        app: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Every app with its online version and agents.
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// Let an app run on an agent (supervisor mode).
    Bind {
        app: String,
        ip: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Take an app away from an agent (supervisor mode).
    Unbind {
        app: String,
        ip: String,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Args)]
pub struct AuthArgs {
    #[command(subcommand)]
    command: AuthCommand,
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Create an auth id; prints its key once.
    Create {
        id: String,
        /// admin or normal.
        #[arg(long, default_value = "normal")]
        role: String,
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Every auth id with its role and apps.
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// Revoke an auth id: its key stops working.
    Revoke {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Let an auth id call an app.
    Grant {
        id: String,
        app: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Take an app away from an auth id.
    Ungrant {
        id: String,
        app: String,
        #[command(flatten)]
        connection: Connection,
    },
}

pub fn run_app(args: AppArgs) -> anyhow::Result<()> {
    match args.command {
        AppCommand::Pack { dir, version, out } => {
            let path = pack(&dir, version, &out)?;
            eprintln!("wrote {}", path.display());
            Ok(())
        }
        AppCommand::Push {
            zip,
            offline,
            connection,
        } => push(&zip, offline, &connection),
        AppCommand::Online {
            app,
            version,
            connection,
        } => connection.call(
            "app/online",
            vec![format!("app={app}"), format!("version={version}")],
        ),
        AppCommand::Versions { app, connection } => {
            connection.call("app/versions", vec![format!("app={app}")])
        }
        AppCommand::List { connection } => connection.call("app/list", Vec::new()),
        AppCommand::Bind {
            app,
            ip,
            connection,
        } => connection.call("app/bind", vec![format!("app={app}"), format!("ip={ip}")]),
        AppCommand::Unbind {
            app,
            ip,
            connection,
        } => connection.call("app/unbind", vec![format!("app={app}"), format!("ip={ip}")]),
    }
}

pub fn run_auth(args: AuthArgs) -> anyhow::Result<()> {
    match args.command {
        AuthCommand::Create {
            id,
            role,
            comment,
            connection,
        } => connection.call(
            "auth/create",
            vec![
                format!("id={id}"),
                format!("role={role}"),
                format!("comment={comment}"),
            ],
        ),
        AuthCommand::List { connection } => connection.call("auth/list", Vec::new()),
        AuthCommand::Revoke { id, connection } => {
            connection.call("auth/revoke", vec![format!("id={id}")])
        }
        AuthCommand::Grant {
            id,
            app,
            connection,
        } => connection.call("auth/grant", vec![format!("id={id}"), format!("app={app}")]),
        AuthCommand::Ungrant {
            id,
            app,
            connection,
        } => connection.call(
            "auth/ungrant",
            vec![format!("id={id}"), format!("app={app}")],
        ),
    }
}

/// Zips `dir` as `<out>/<app>_<version>.zip`, refusing what the center would refuse.
pub fn pack(
    dir: &std::path::Path,
    version: Option<String>,
    out: &std::path::Path,
) -> anyhow::Result<PathBuf> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("reading {}", dir.display()))?;
    let app = dir
        .file_name()
        .and_then(|name| name.to_str())
        .context("the app directory needs a name")?
        .to_string();
    let version = match version {
        Some(version) => version,
        None => std::fs::read_to_string(dir.join("VERSION"))
            .with_context(|| format!("no --version and no {}/VERSION", dir.display()))?
            .trim()
            .to_string(),
    };
    let name = PackageName::parse(&format!("{app}_{version}.zip"))?;
    let bytes = package::pack_dir(&dir)?;
    package::validate(
        std::io::Cursor::new(&bytes),
        bytes.len() as u64,
        &Limits::default(),
    )
    .context("the packed app would be refused")?;
    let path = out.join(name.file_name());
    std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn push(zip: &std::path::Path, offline: bool, connection: &Connection) -> anyhow::Result<()> {
    let file_name = zip
        .file_name()
        .and_then(|name| name.to_str())
        .context("the package needs a file name")?
        .to_string();
    PackageName::parse(&file_name)?;
    let bytes = std::fs::read(zip).with_context(|| format!("reading {}", zip.display()))?;
    let (url, auth_id, auth_key) = connection.resolve()?;
    let Some(sign_type) = SignType::parse(&connection.sign_type) else {
        bail!("--sign-type must be MD5 or HMAC-SHA256");
    };
    let path = "/api/v2/app/upload";
    let mut params = vec![
        ("sha256".to_string(), package::sha256_hex(&bytes)),
        ("auth_id".to_string(), auth_id),
        (
            "timestamp".to_string(),
            chrono::Utc::now().timestamp().to_string(),
        ),
    ];
    if offline {
        params.push(("online".to_string(), "false".to_string()));
    }
    let signed = sign::sign_params(path, params, sign_type, &auth_key);
    let boundary = format!("elves{:016x}", rand::random::<u64>());
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n\
         Content-Type: application/zip\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let text = runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", url.trim_end_matches('/')))
            .query(&signed)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await
            .with_context(|| format!("uploading to {url}"))?;
        response.text().await.context("reading the answer")
    })?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(value) => {
            let pretty = serde_json::to_string_pretty(&value)?;
            std::io::Write::write_all(&mut std::io::stdout(), format!("{pretty}\n").as_bytes())?;
            if value["flag"] != "true" {
                bail!("upload refused");
            }
        }
        Err(_) => bail!("unexpected answer: {text}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_names_the_zip_after_the_directory_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("myapp");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("app-worker.py"), b"print(1)\n").unwrap();
        std::fs::write(app.join("VERSION"), b"1.2.3\n").unwrap();
        let path = pack(&app, None, dir.path()).unwrap();
        assert_eq!(path.file_name().unwrap(), "myapp_1.2.3.zip");
        let path = pack(&app, Some("2.0".into()), dir.path()).unwrap();
        assert_eq!(path.file_name().unwrap(), "myapp_2.0.zip");
        assert!(pack(&app, Some("bad version".into()), dir.path()).is_err());
    }
}
