//! `elves run <target> <app> <func> [param] --batch 10% --max-fail 5%`: one call over a fleet
//! as a batch (SPEC §12). Creates the batch, shows a live progress bar on stderr while it runs,
//! then prints a summary table (counts, the slowest agents, the first failures) — or, with
//! `--json`, one JSON object for scripts. Exits non-zero unless every agent succeeded.

use crate::client::{Client, Connection};
use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct RunArgs {
    /// Which agents: ids or ips, globs, `role=web`, `dc in (bj,sh)`, with and/or/not.
    target: String,
    app: String,
    func: String,
    /// The JSON param passed to every agent's worker.
    param: Option<String>,
    /// Rollout step: N, N% (rounded up) or a ramp such as `1,5,20%`.
    #[arg(long, default_value = "100%")]
    batch: String,
    /// Stop starting agents once failures exceed this (N or N%).
    #[arg(long)]
    max_fail: Option<String>,
    /// `sliding` keeps a step's worth running; `lockstep` runs step after step.
    #[arg(long, default_value = "sliding")]
    window: String,
    /// Lockstep: seconds between steps.
    #[arg(long)]
    wait_s: Option<u64>,
    /// `skip` reports offline agents at once; `wait:<seconds>` waits for them up to that.
    #[arg(long, default_value = "skip")]
    offline: String,
    /// The task timeout on each agent, seconds (the center's default when absent).
    #[arg(long)]
    timeout: Option<u32>,
    #[arg(long)]
    mode: Option<String>,
    #[arg(long)]
    proxy: Option<String>,
    /// Print one JSON object (status and every agent's result) instead of the table.
    #[arg(long)]
    json: bool,
    /// Show every agent's output as it comes, each line prefixed by the agent's id, then
    /// the summary.
    #[arg(long, conflicts_with = "json")]
    follow: bool,
    /// With --follow: how many agents' output is followed at once (one connection each);
    /// agents beyond it are followed as earlier ones end.
    #[arg(long, default_value_t = 64)]
    follow_max: usize,
    /// Milliseconds between two polls of `batch/status`.
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
    /// Give up waiting (the batch goes on) after this many seconds.
    #[arg(long, default_value_t = 3600)]
    wait_timeout: u64,
    #[command(flatten)]
    connection: Connection,
}

/// Agents named in the table's "slowest" and "failures" lists.
const LISTED: usize = 5;

/// Results fetched per `batch/result` call.
const PAGE_SIZE: usize = 1000;

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let client = args.connection.client()?;
    runtime.block_on(run_batch(&client, &args))
}

fn create_params(args: &RunArgs) -> Vec<(String, String)> {
    let mut params = vec![
        ("target".to_string(), args.target.clone()),
        ("app".to_string(), args.app.clone()),
        ("func".to_string(), args.func.clone()),
        ("size".to_string(), args.batch.clone()),
        ("window".to_string(), args.window.clone()),
        ("offline".to_string(), args.offline.clone()),
    ];
    let optional = [
        ("param", args.param.clone()),
        ("max_fail", args.max_fail.clone()),
        ("wait_s", args.wait_s.map(|s| s.to_string())),
        ("timeout", args.timeout.map(|s| s.to_string())),
        ("mode", args.mode.clone()),
        ("proxy", args.proxy.clone()),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            params.push((key.to_string(), value));
        }
    }
    params
}

async fn run_batch(client: &Client, args: &RunArgs) -> anyhow::Result<()> {
    let created = client.call_ok("batch/create", create_params(args)).await?;
    let id = created["id"]
        .as_str()
        .context("batch/create answered without an id")?
        .to_string();
    let count = created["count"].as_u64().unwrap_or(0);
    if !args.json {
        eprintln!("batch {id}: {count} agents matched {:?}", args.target);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.wait_timeout);
    // A progress bar redrawn between prefixed output lines would garble both.
    let bar = std::io::stderr().is_terminal() && !args.json && !args.follow;
    let mut followers = args
        .follow
        .then(|| Followers::new(client.clone(), args.follow_max));
    let status = loop {
        let status = client
            .call_ok("batch/status", vec![("id".to_string(), id.clone())])
            .await?;
        let ended = status["state"] != "running" && status["counts"]["running"] == 0;
        if let Some(followers) = followers.as_mut() {
            followers.start_new(&all_results(client, &id).await?);
        }
        if bar {
            eprint!("\r{}", progress_line(&status));
            let _ = std::io::stderr().flush();
        }
        if ended {
            if bar {
                eprintln!();
            }
            break status;
        }
        if Instant::now() >= deadline {
            if bar {
                eprintln!();
            }
            bail!(
                "batch {id} still running after {} s; follow it with `elves call batch/status id={id}`",
                args.wait_timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms.max(50))).await;
    };
    let items = all_results(client, &id).await?;
    if let Some(mut followers) = followers {
        followers.start_new(&items);
        followers.finish(deadline).await;
    }
    let took = started.elapsed();
    if args.json {
        println!(
            "{}",
            json!({ "status": status, "items": items, "took_ms": took.as_millis() as u64 })
        );
    } else {
        print!("{}", summary_table(&status, &items, took));
    }
    let ok = status["counts"]["ok"].as_u64().unwrap_or(0);
    if ok != count || status["state"] != "finished" {
        bail!("batch {id}: {ok} of {count} agents succeeded");
    }
    Ok(())
}

async fn all_results(client: &Client, id: &str) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    for page in 1.. {
        let result = client
            .call_ok(
                "batch/result",
                vec![
                    ("id".to_string(), id.to_string()),
                    ("page".to_string(), page.to_string()),
                    ("page_size".to_string(), PAGE_SIZE.to_string()),
                ],
            )
            .await?;
        let page_items = result["items"].as_array().cloned().unwrap_or_default();
        let total = result["count"].as_u64().unwrap_or(0) as usize;
        let got = page_items.len();
        items.extend(page_items);
        if got < PAGE_SIZE || items.len() >= total {
            break;
        }
    }
    Ok(items)
}

/// `--follow`: one `task/follow` per agent whose task has started, at most `max` at once,
/// writing whole lines to stdout as `<agent> | <line>`.
struct Followers {
    client: Client,
    max: usize,
    seen: std::collections::HashSet<String>,
    waiting: std::collections::VecDeque<(String, String)>,
    running: tokio::task::JoinSet<()>,
}

impl Followers {
    fn new(client: Client, max: usize) -> Followers {
        Followers {
            client,
            max: max.max(1),
            seen: Default::default(),
            waiting: Default::default(),
            running: tokio::task::JoinSet::new(),
        }
    }

    /// Queues the tasks of `items` not followed yet, and starts as many as the cap allows.
    fn start_new(&mut self, items: &[Value]) {
        for item in items {
            let task_id = item["task_id"].as_str().unwrap_or_default();
            let agent = item["agent"].as_str().unwrap_or_default();
            if !task_id.is_empty() && self.seen.insert(task_id.to_string()) {
                self.waiting
                    .push_back((agent.to_string(), task_id.to_string()));
            }
        }
        while self.running.try_join_next().is_some() {}
        while self.running.len() < self.max {
            let Some((agent, task_id)) = self.waiting.pop_front() else {
                break;
            };
            let client = self.client.clone();
            self.running.spawn(async move {
                let mut lines = PrefixedLines::new(&agent);
                let ended = crate::tail::follow_into(&client, &task_id, "stdout", &mut |text| {
                    write_out(&lines.push(text))
                })
                .await;
                let _ = write_out(&lines.rest());
                if let Err(err) = ended {
                    eprintln!("{agent}: following task {task_id}: {err:#}");
                }
            });
        }
    }

    /// Follows the rest to their end (or until `deadline`).
    async fn finish(&mut self, deadline: Instant) {
        loop {
            self.start_new(&[]);
            if self.running.is_empty() {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.running.join_next()).await {
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => {
                    self.running.abort_all();
                    return;
                }
            }
        }
    }
}

/// Cuts one agent's output into whole lines, each with the agent's prefix, so that agents
/// writing at once never interleave inside a line.
struct PrefixedLines {
    prefix: String,
    partial: String,
}

impl PrefixedLines {
    fn new(agent: &str) -> PrefixedLines {
        PrefixedLines {
            prefix: format!("{agent} | "),
            partial: String::new(),
        }
    }

    /// The lines `text` completes, prefixed; a line without its newline yet waits.
    fn push(&mut self, text: &str) -> String {
        self.partial.push_str(text);
        let Some(last_newline) = self.partial.rfind('\n') else {
            return String::new();
        };
        let rest = self.partial.split_off(last_newline + 1);
        let whole = std::mem::replace(&mut self.partial, rest);
        self.prefixed(&whole)
    }

    /// What is left without a final newline, at the task's end.
    fn rest(&mut self) -> String {
        if self.partial.is_empty() {
            return String::new();
        }
        let mut rest = std::mem::take(&mut self.partial);
        rest.push('\n');
        self.prefixed(&rest)
    }

    fn prefixed(&self, lines: &str) -> String {
        let mut text = String::with_capacity(lines.len() + self.prefix.len() * 4);
        for line in lines.split_inclusive('\n') {
            text.push_str(&self.prefix);
            text.push_str(line);
        }
        text
    }
}

/// One write under stdout's lock: blocks of two agents never mix.
fn write_out(text: &str) -> std::io::Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

fn count(status: &Value, state: &str) -> u64 {
    status["counts"][state].as_u64().unwrap_or(0)
}

/// `[#######-------]  41/100  ok 38 failed 2 offline 1 running 10`
pub fn progress_line(status: &Value) -> String {
    const WIDTH: u64 = 30;
    let total = status["count"].as_u64().unwrap_or(0);
    let done = status["progress"].as_u64().unwrap_or(0);
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let bar: String = (0..WIDTH)
        .map(|n| if n < filled { '#' } else { '-' })
        .collect();
    let mut line = format!("[{bar}] {done:>5}/{total}");
    for state in ["ok", "failed", "timeout", "offline", "running"] {
        let n = count(status, state);
        if n > 0 || state == "ok" {
            line.push_str(&format!("  {state} {n}"));
        }
    }
    line
}

/// The summary printed at the end: counts by state, the slowest agents, the first failures.
pub fn summary_table(status: &Value, items: &[Value], took: Duration) -> String {
    let mut text = format!(
        "batch {} {} in {:.1} s ({} agents{})\n",
        status["id"].as_str().unwrap_or(""),
        status["state"].as_str().unwrap_or(""),
        took.as_secs_f64(),
        status["count"],
        match status["stop_reason"].as_str() {
            Some(reason) if !reason.is_empty() => format!("; {reason}"),
            _ => String::new(),
        }
    );
    text.push_str(&format!("{:<10} {:>7}\n", "state", "agents"));
    for state in [
        "ok", "failed", "timeout", "offline", "skipped", "stopped", "pending", "running",
    ] {
        let n = count(status, state);
        if n > 0 || state == "ok" {
            text.push_str(&format!("{state:<10} {n:>7}\n"));
        }
    }
    let mut ran: Vec<&Value> = items
        .iter()
        .filter(|item| item["worker_flag"] != "")
        .collect();
    ran.sort_by_key(|item| std::cmp::Reverse(item["worker_costtime"].as_u64().unwrap_or(0)));
    if !ran.is_empty() {
        text.push_str("slowest:\n");
        for item in ran.iter().take(LISTED) {
            text.push_str(&format!(
                "  {:<24} {:>8} ms\n",
                item["agent"].as_str().unwrap_or(""),
                item["worker_costtime"]
            ));
        }
    }
    let failures: Vec<&Value> = items
        .iter()
        .filter(|item| matches!(item["state"].as_str(), Some("failed" | "timeout")))
        .collect();
    if !failures.is_empty() {
        text.push_str("first failures:\n");
        for item in failures.iter().take(LISTED) {
            let message = item["worker_message"].as_str().unwrap_or("");
            let message: String = message
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(100)
                .collect();
            text.push_str(&format!(
                "  {:<24} {:<8} {message}\n",
                item["agent"].as_str().unwrap_or(""),
                item["state"].as_str().unwrap_or("")
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Value {
        json!({
            "id": "00000000000000aa", "state": "stopped", "count": 10, "progress": 4,
            "stop_reason": "max_fail 1 exceeded: 2 of 10 agents failed",
            "counts": {"pending": 0, "running": 0, "ok": 2, "failed": 2, "timeout": 0,
                       "offline": 0, "skipped": 6, "stopped": 0},
        })
    }

    #[test]
    fn followed_output_is_written_in_whole_prefixed_lines() {
        let mut lines = PrefixedLines::new("web-1");
        assert_eq!(lines.push("star"), "");
        assert_eq!(lines.push("ted\nhalf"), "web-1 | started\n");
        assert_eq!(
            lines.push("way\n\ndone\nno newline"),
            "web-1 | halfway\nweb-1 | \nweb-1 | done\n"
        );
        assert_eq!(lines.rest(), "web-1 | no newline\n");
        assert_eq!(lines.rest(), "");
    }

    #[test]
    fn the_progress_bar_shows_settled_agents_and_counts() {
        let line = progress_line(&status());
        assert!(
            line.starts_with("[############------------------]"),
            "{line}"
        );
        assert!(line.contains("4/10") && line.contains("failed 2"), "{line}");
    }

    #[test]
    fn the_summary_lists_counts_the_slowest_and_the_first_failures() {
        let items = vec![
            json!({"agent": "a1", "state": "ok", "worker_flag": "1", "worker_message": "fine", "worker_costtime": 30}),
            json!({"agent": "a2", "state": "failed", "worker_flag": "0", "worker_message": "disk full\nmore", "worker_costtime": 90}),
            json!({"agent": "a3", "state": "skipped", "worker_flag": "", "worker_message": "", "worker_costtime": 0}),
        ];
        let table = summary_table(&status(), &items, Duration::from_millis(1500));
        assert!(table.contains("stopped in 1.5 s"), "{table}");
        assert!(table.contains("max_fail 1 exceeded"), "{table}");
        assert!(table.contains("skipped          6"), "{table}");
        let slowest = table.split("slowest:\n").nth(1).unwrap();
        assert!(slowest.trim_start().starts_with("a2"), "{table}");
        assert!(
            table.contains("a2                       failed   disk full\n"),
            "{table}"
        );
        assert!(!table.contains("a3 "), "{table}");
    }
}
