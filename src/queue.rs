//! `elves queue …`: queues of tasks from a file, through the signed v2 queue endpoints.
//!
//! `create` makes a queue (prints its id), `add` adds the tasks of a file to it with
//! `queue/addtasks` (as many calls as the file needs), `commit` lets it run, `watch` polls
//! `queue/result` until every task is settled, and `run` does all four.
//!
//! The file is TOML or JSON (by extension): an optional `app` (the queue's, for `run`) and
//! `tasks`, each with `ip`, `func` and optionally `param` (a JSON text, or any TOML/JSON value
//! standing for its JSON), `timeout`, `proxy`, `mode`, `name`, and one of `depends_on` (the
//! `name` of an earlier task of the file) or `depend_task_id` (a task already in the queue).
//! A JSON file may also be just the array of tasks.

use crate::client::{Client, Connection};
use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use elves_center::api::queue::{MAX_BATCH_BODY_BYTES, MAX_BATCH_TASKS};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How `watch` waits.
#[derive(Args, Clone)]
pub struct WatchOptions {
    /// Give up (and fail) after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Milliseconds between two polls of `queue/result`.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
}

#[derive(Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Create an open queue for an app; prints its id.
    Create {
        app: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Add the tasks of a TOML or JSON file to an open queue; prints their ids, one a line.
    Add {
        queue_id: String,
        file: PathBuf,
        #[command(flatten)]
        connection: Connection,
    },
    /// Commit a queue: its tasks start.
    Commit {
        queue_id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Wait until every task of a queue is settled, printing progress; fails when a task
    /// did not succeed.
    Watch {
        queue_id: String,
        #[command(flatten)]
        watch: WatchOptions,
        #[command(flatten)]
        connection: Connection,
    },
    /// Create, add, commit and watch a queue from a file.
    Run {
        file: PathBuf,
        /// The queue's app, when the file has no `app`.
        #[arg(long)]
        app: Option<String>,
        #[command(flatten)]
        watch: WatchOptions,
        #[command(flatten)]
        connection: Connection,
    },
}

pub fn run(args: QueueArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    match args.command {
        QueueCommand::Create { app, connection } => {
            let client = connection.client()?;
            let queue_id = runtime.block_on(create(&client, &app))?;
            println!("{queue_id}");
            Ok(())
        }
        QueueCommand::Add {
            queue_id,
            file,
            connection,
        } => {
            let client = connection.client()?;
            let tasks = read_task_file(&file)?.tasks;
            let ids = runtime.block_on(add(&client, &queue_id, &tasks))?;
            for id in ids {
                println!("{id}");
            }
            Ok(())
        }
        QueueCommand::Commit {
            queue_id,
            connection,
        } => {
            let client = connection.client()?;
            runtime.block_on(commit(&client, &queue_id))
        }
        QueueCommand::Watch {
            queue_id,
            watch,
            connection,
        } => {
            let client = connection.client()?;
            runtime.block_on(watch_until_settled(&client, &queue_id, &watch))
        }
        QueueCommand::Run {
            file,
            app,
            watch,
            connection,
        } => {
            let client = connection.client()?;
            let task_file = read_task_file(&file)?;
            let Some(app) = app.or(task_file.app) else {
                bail!("no app: give `app` in {} or --app", file.display());
            };
            runtime.block_on(async {
                let queue_id = create(&client, &app).await?;
                eprintln!("queue {queue_id} created");
                let ids = add(&client, &queue_id, &task_file.tasks).await?;
                commit(&client, &queue_id).await?;
                eprintln!("queue {queue_id}: {} tasks added and committed", ids.len());
                watch_until_settled(&client, &queue_id, &watch).await
            })
        }
    }
}

/// A task as a file describes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTask {
    /// How later tasks of the file refer to this one in `depends_on`.
    name: Option<String>,
    ip: String,
    func: String,
    param: Option<Value>,
    timeout: Option<u32>,
    proxy: Option<String>,
    mode: Option<String>,
    depends_on: Option<String>,
    depend_task_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    app: Option<String>,
    tasks: Vec<FileTask>,
}

/// A JSON file may be the whole `TaskFile` or just its tasks.
#[derive(Deserialize)]
#[serde(untagged)]
enum JsonTaskFile {
    Whole(TaskFile),
    Tasks(Vec<FileTask>),
}

fn read_task_file(path: &Path) -> anyhow::Result<TaskFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let extension = path.extension().and_then(|ext| ext.to_str()).unwrap_or("");
    let file = match extension.to_ascii_lowercase().as_str() {
        "toml" => toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?,
        "json" => match serde_json::from_str(&text)
            .with_context(|| format!("reading {}", path.display()))?
        {
            JsonTaskFile::Whole(file) => file,
            JsonTaskFile::Tasks(tasks) => TaskFile { app: None, tasks },
        },
        _ => bail!("{}: a task file ends in .toml or .json", path.display()),
    };
    if file.tasks.is_empty() {
        bail!("{}: no tasks", path.display());
    }
    Ok(file)
}

async fn create(client: &Client, app: &str) -> anyhow::Result<String> {
    let result = client
        .call_ok("queue/create", vec![("app".to_string(), app.to_string())])
        .await?;
    result["id"]
        .as_str()
        .map(str::to_string)
        .context("queue/create answered without an id")
}

async fn commit(client: &Client, queue_id: &str) -> anyhow::Result<()> {
    client
        .call_ok(
            "queue/commit",
            vec![("queue_id".to_string(), queue_id.to_string())],
        )
        .await?;
    Ok(())
}

/// Adds `tasks` in as few `queue/addtasks` calls as the limits allow; returns their ids in
/// order. A `depends_on` within one call becomes `depends_on_index`, on a task of an earlier
/// call the `depend_task_id` that call returned.
async fn add(client: &Client, queue_id: &str, tasks: &[FileTask]) -> anyhow::Result<Vec<String>> {
    let elements = batch_elements(tasks)?;
    let mut ids: Vec<String> = Vec::with_capacity(tasks.len());
    for batch in split_batches(&elements) {
        let batch_start = ids.len();
        let batch_tasks: Vec<Value> = batch
            .iter()
            .map(|element| element.for_call(batch_start, &ids))
            .collect::<anyhow::Result<_>>()?;
        let result = client
            .call_ok(
                "queue/addtasks",
                vec![
                    ("queue_id".to_string(), queue_id.to_string()),
                    ("tasks".to_string(), Value::Array(batch_tasks).to_string()),
                ],
            )
            .await
            .with_context(|| {
                format!(
                    "adding tasks {batch_start}..{} (tasks[i] counts from {batch_start})",
                    batch_start + batch.len()
                )
            })?;
        let added = result["ids"]
            .as_array()
            .context("queue/addtasks answered without ids")?;
        if added.len() != batch.len() {
            bail!(
                "queue/addtasks answered {} ids for {} tasks",
                added.len(),
                batch.len()
            );
        }
        ids.extend(added.iter().filter_map(Value::as_str).map(str::to_string));
    }
    Ok(ids)
}

/// A task of the file as an `addtasks` element, with its dependency still by file index.
struct Element {
    fields: Map<String, Value>,
    depends_on: Option<usize>,
    /// Its JSON length, for the body limit.
    size: usize,
}

impl Element {
    fn for_call(&self, batch_start: usize, earlier_ids: &[String]) -> anyhow::Result<Value> {
        let mut fields = self.fields.clone();
        if let Some(dependency) = self.depends_on {
            if dependency >= batch_start {
                fields.insert("depends_on_index".into(), json!(dependency - batch_start));
            } else {
                let id = earlier_ids
                    .get(dependency)
                    .context("a dependency of an earlier call has no id")?;
                fields.insert("depend_task_id".into(), json!(id));
            }
        }
        Ok(Value::Object(fields))
    }
}

fn batch_elements(tasks: &[FileTask]) -> anyhow::Result<Vec<Element>> {
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    let mut elements = Vec::with_capacity(tasks.len());
    for (index, task) in tasks.iter().enumerate() {
        let mut fields = Map::new();
        fields.insert("ip".into(), json!(task.ip));
        fields.insert("func".into(), json!(task.func));
        match &task.param {
            None => {}
            Some(Value::String(text)) => {
                fields.insert("param".into(), json!(text));
            }
            Some(value) => {
                fields.insert("param".into(), json!(value.to_string()));
            }
        }
        if let Some(timeout) = task.timeout {
            fields.insert("timeout".into(), json!(timeout));
        }
        for (key, value) in [("proxy", &task.proxy), ("mode", &task.mode)] {
            if let Some(value) = value {
                fields.insert(key.into(), json!(value));
            }
        }
        let depends_on = match (&task.depends_on, &task.depend_task_id) {
            (Some(_), Some(_)) => {
                bail!("tasks[{index}]: give depends_on or depend_task_id, not both")
            }
            (Some(name), None) => Some(*by_name.get(name.as_str()).with_context(|| {
                format!("tasks[{index}]: depends_on {name:?} is not the name of an earlier task")
            })?),
            (None, Some(id)) => {
                fields.insert("depend_task_id".into(), json!(id));
                None
            }
            (None, None) => None,
        };
        if let Some(name) = &task.name {
            if by_name.insert(name, index).is_some() {
                bail!("tasks[{index}]: the name {name:?} is taken by an earlier task");
            }
        }
        let size = Value::Object(fields.clone()).to_string().len();
        elements.push(Element {
            fields,
            depends_on,
            size,
        });
    }
    Ok(elements)
}

/// Splits the elements into calls of at most [`MAX_BATCH_TASKS`] tasks whose form-encoded
/// body stays under the center's limit (a byte may take three once encoded).
fn split_batches(elements: &[Element]) -> Vec<&[Element]> {
    let max_json_bytes = MAX_BATCH_BODY_BYTES / 3 - 4096;
    let mut batches = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (index, element) in elements.iter().enumerate() {
        let full = index - start == MAX_BATCH_TASKS || bytes + element.size + 1 > max_json_bytes;
        if full && index > start {
            batches.push(&elements[start..index]);
            start = index;
            bytes = 0;
        }
        bytes += element.size + 1;
    }
    if start < elements.len() {
        batches.push(&elements[start..]);
    }
    batches
}

/// Statuses of a queue's tasks that do not change any more.
const SETTLED: [&str; 3] = ["finish", "skipped", "stoped"];

/// Polls `queue/result` until every task is settled or the timeout passes, printing progress
/// to stderr when it changes; then prints a summary (and each task that did not succeed) to
/// stdout. Fails when the timeout passed or a task did not succeed.
async fn watch_until_settled(
    client: &Client,
    queue_id: &str,
    options: &WatchOptions,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.timeout);
    let mut last_progress = String::new();
    loop {
        let result = client
            .call_ok(
                "queue/result",
                vec![("queue_id".to_string(), queue_id.to_string())],
            )
            .await?;
        let tasks = result
            .as_object()
            .context("queue/result answered without tasks")?;
        let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
        for task in tasks.values() {
            *by_status
                .entry(task["status"].as_str().unwrap_or("?"))
                .or_default() += 1;
        }
        let settled: usize = SETTLED
            .iter()
            .map(|status| by_status.get(status).copied().unwrap_or(0))
            .sum();
        let progress = format!(
            "queue {queue_id}: {settled}/{} settled ({})",
            tasks.len(),
            by_status
                .iter()
                .map(|(status, n)| format!("{status} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if progress != last_progress {
            eprintln!("{progress}");
            last_progress = progress;
        }
        if settled == tasks.len() {
            return summarize(queue_id, tasks, started.elapsed());
        }
        if Instant::now() >= deadline {
            bail!(
                "queue {queue_id} not settled within {} s: {settled} of {} tasks are",
                options.timeout,
                tasks.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(options.interval_ms)).await;
    }
}

fn summarize(queue_id: &str, tasks: &Map<String, Value>, took: Duration) -> anyhow::Result<()> {
    let failed: Vec<&Value> = tasks
        .values()
        .filter(|task| task["status"] != "finish" || task["worker_flag"] != "1")
        .collect();
    println!(
        "queue {queue_id} settled in {:.1} s: {} tasks, {} succeeded, {} did not",
        took.as_secs_f64(),
        tasks.len(),
        tasks.len() - failed.len(),
        failed.len()
    );
    for task in &failed {
        println!(
            "  {} {} worker_flag={:?} {}{}",
            task["id"].as_str().unwrap_or("?"),
            task["status"].as_str().unwrap_or("?"),
            task["worker_flag"].as_str().unwrap_or(""),
            task["error"].as_str().unwrap_or(""),
            task["worker_message"].as_str().unwrap_or("")
        );
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{} of {} tasks did not succeed", failed.len(), tasks.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: Option<&str>, depends_on: Option<&str>) -> FileTask {
        FileTask {
            name: name.map(str::to_string),
            ip: "ip-a1".into(),
            func: "ok".into(),
            param: None,
            timeout: None,
            proxy: None,
            mode: None,
            depends_on: depends_on.map(str::to_string),
            depend_task_id: None,
        }
    }

    #[test]
    fn toml_tasks_with_a_table_param_and_a_dependency() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.toml");
        std::fs::write(
            &path,
            "app = \"demo\"\n[[tasks]]\nname = \"first\"\nip = \"ip-a1\"\nfunc = \"log\"\n\
             param = { line = \"a\" }\ntimeout = 5\n[[tasks]]\nip = \"ip-a1\"\nfunc = \"log\"\n\
             depends_on = \"first\"\n",
        )
        .unwrap();
        let file = read_task_file(&path).unwrap();
        assert_eq!(file.app.as_deref(), Some("demo"));
        let elements = batch_elements(&file.tasks).unwrap();
        let first = elements[0].for_call(0, &[]).unwrap();
        assert_eq!(first["param"], r#"{"line":"a"}"#);
        assert_eq!(first["timeout"], 5);
        assert_eq!(elements[1].for_call(0, &[]).unwrap()["depends_on_index"], 0);
        // In a later call, the dependency is the id the earlier call returned.
        let later = elements[1]
            .for_call(1, &["00000000000000aa".into()])
            .unwrap();
        assert_eq!(later["depend_task_id"], "00000000000000aa");
        assert!(later.get("depends_on_index").is_none());
    }

    #[test]
    fn a_json_file_may_be_just_the_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.json");
        std::fs::write(&path, r#"[{"ip":"ip-a1","func":"ok","param":"[1]"}]"#).unwrap();
        let file = read_task_file(&path).unwrap();
        assert_eq!(file.tasks.len(), 1);
        assert!(file.app.is_none());
        std::fs::write(&path, r#"[{"ip":"ip-a1","fnuc":"ok"}]"#).unwrap();
        assert!(
            read_task_file(&path).is_err(),
            "a misspelt field is refused"
        );
    }

    #[test]
    fn depends_on_must_name_an_earlier_task() {
        let tasks = [task(None, Some("later")), task(Some("later"), None)];
        let err = batch_elements(&tasks).err().unwrap().to_string();
        assert!(err.contains("tasks[0]") && err.contains("later"), "{err}");
        let tasks = [task(Some("a"), None), task(Some("a"), None)];
        assert!(batch_elements(&tasks).is_err(), "names are unique");
    }

    #[test]
    fn batches_respect_the_task_limit() {
        let tasks: Vec<FileTask> = (0..MAX_BATCH_TASKS * 2 + 1)
            .map(|_| task(None, None))
            .collect();
        let elements = batch_elements(&tasks).unwrap();
        let sizes: Vec<usize> = split_batches(&elements).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [MAX_BATCH_TASKS, MAX_BATCH_TASKS, 1]);
    }
}
