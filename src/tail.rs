//! `elves tail <task_id>`: a task's output on the terminal as it comes (`task/follow`), until
//! the task ends. A dropped connection is resumed from the last offset seen, so nothing is
//! shown twice or missed.

use crate::client::{Client, Connection};
use anyhow::{bail, Context as _};
use clap::Args;
use std::io::Write as _;
use std::time::Duration;

#[derive(Args)]
pub struct TailArgs {
    /// The task's id (as `rt/exec`, `queue/addtask` or `task/result` show it).
    pub(crate) task_id: String,
    /// `stdout` or `stderr`.
    #[arg(long, default_value = "stdout")]
    pub(crate) stream: String,
    #[command(flatten)]
    pub(crate) connection: Connection,
}

/// Reconnections in a row without any event before giving up.
const MAX_RECONNECTS: u32 = 30;
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

pub fn run(args: TailArgs) -> anyhow::Result<()> {
    let client = args.connection.client()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let end = runtime.block_on(follow(&client, &args.task_id, &args.stream))?;
    eprintln!("{}", end.summary(&args.task_id));
    if end.worker_flag != "1" {
        std::process::exit(1);
    }
    Ok(())
}

/// What the `end` event said.
pub struct TaskEnd {
    pub state: String,
    pub worker_flag: String,
    pub worker_costtime: u64,
    pub truncated: bool,
}

impl TaskEnd {
    pub fn summary(&self, task_id: &str) -> String {
        format!(
            "[task {task_id} {}: worker_flag {}, {} ms{}]",
            self.state,
            self.worker_flag,
            self.worker_costtime,
            if self.truncated {
                ", output truncated"
            } else {
                ""
            }
        )
    }
}

/// Writes the task's `stream` to stdout until the task ends.
pub async fn follow(client: &Client, task_id: &str, stream: &str) -> anyhow::Result<TaskEnd> {
    let mut stdout = std::io::stdout();
    let mut to_stdout = |text: &str| -> std::io::Result<()> {
        stdout.write_all(text.as_bytes())?;
        stdout.flush()
    };
    follow_into(client, task_id, stream, &mut to_stdout).await
}

/// Hands the task's `stream` to `sink`, chunk by chunk, until the task ends.
pub async fn follow_into(
    client: &Client,
    task_id: &str,
    stream: &str,
    sink: &mut (dyn FnMut(&str) -> std::io::Result<()> + Send),
) -> anyhow::Result<TaskEnd> {
    let mut last_id: Option<u64> = None;
    let mut failures = 0;
    loop {
        let params = vec![
            ("id".to_string(), task_id.to_string()),
            ("stream".to_string(), stream.to_string()),
        ];
        let response = match client.open_events("task/follow", params, last_id).await {
            Ok(response) => response,
            Err(err) => {
                failures += 1;
                if failures > MAX_RECONNECTS {
                    return Err(err);
                }
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        let is_events = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
        if !is_events {
            let text = response.text().await.unwrap_or_default();
            let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            bail!("task/follow: {}", answer["error"].as_str().unwrap_or(&text));
        }
        match read_events(response, &mut last_id, &mut failures, sink).await? {
            Some(end) => return Ok(end),
            None => {
                failures += 1;
                if failures > MAX_RECONNECTS {
                    bail!("task/follow: the connection keeps dropping");
                }
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
}

/// Prints chunks until `end` (returned) or until the connection drops (`None`).
async fn read_events(
    mut response: reqwest::Response,
    last_id: &mut Option<u64>,
    failures: &mut u32,
    sink: &mut (dyn FnMut(&str) -> std::io::Result<()> + Send),
) -> anyhow::Result<Option<TaskEnd>> {
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        while let Some(at) = buffer.windows(2).position(|pair| pair == b"\n\n") {
            let block: Vec<u8> = buffer.drain(..at + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let field = |name: &str| {
                text.lines()
                    .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
                    .map(str::to_string)
            };
            let (Some(event), Some(data)) = (field("event"), field("data")) else {
                continue; // a keepalive comment
            };
            let data: serde_json::Value =
                serde_json::from_str(&data).context("task/follow: an event that is not JSON")?;
            *failures = 0;
            match event.as_str() {
                "chunk" => {
                    sink(data["data"].as_str().unwrap_or_default())?;
                }
                "end" => {
                    return Ok(Some(TaskEnd {
                        state: data["state"].as_str().unwrap_or_default().to_string(),
                        worker_flag: data["worker_flag"].as_str().unwrap_or_default().to_string(),
                        worker_costtime: data["worker_costtime"].as_u64().unwrap_or(0),
                        truncated: data["truncated"].as_bool().unwrap_or(false),
                    }))
                }
                "error" => bail!(
                    "task/follow: {}",
                    data["error"].as_str().unwrap_or_default()
                ),
                _ => {}
            }
            if let Some(id) = field("id").and_then(|id| id.parse().ok()) {
                *last_id = Some(id);
            }
        }
        match response.chunk().await {
            Ok(Some(bytes)) => buffer.extend_from_slice(&bytes),
            Ok(None) | Err(_) => return Ok(None),
        }
    }
}
