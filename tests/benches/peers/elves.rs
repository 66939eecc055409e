//! elves under test: distributed (the release `elves-center` and one `elves-agent` as processes
//! on RabbitMQ and PostgreSQL) and `elves up` (the release `elves` binary: center, agent and the
//! in-process bus in one process, SQLite). Called over HTTP with keep-alive, signed with MD5 as
//! most clients sign.

use super::support::agent_processes::AgentProcesses;
use super::support::{self, CenterProcess, ChildProcess};
use super::{Drain, RtSamples, Settings, PARAM};
use elves_center::store::testing::TestDatabase;
use elves_center::store::{Store, TaskRow, TaskStatus};
use elves_shared::sign::{self, SignType};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{AgentId, TaskId};
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The agent of the distributed run; `elves up`'s is `local`, at 127.0.0.1.
const AGENT: &str = "peers-agent";
const UP_AUTH_ID: &str = "admin";
/// `queue/addtask` calls in flight while a queue is filled one task a call.
const ADD_CONCURRENCY: usize = 16;
/// Tasks a `queue/addtasks` call carries.
const ADD_BATCH: usize = 500;
/// How often the database is asked whether the queue is done (the figure comes from the stored
/// finish times, not from this).
const POLL: Duration = Duration::from_millis(250);
/// A drain fails when no task settles for this long.
const STALL: Duration = Duration::from_secs(60);

/// A signed v2 client with its own credentials, over one keep-alive connection pool.
pub struct Client {
    http: reqwest::Client,
    pub base_url: String,
    pub auth_id: String,
    pub auth_key: String,
}

impl Client {
    fn new(base_url: String, auth_id: &str, auth_key: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            base_url,
            auth_id: auth_id.to_string(),
            auth_key: auth_key.to_string(),
        }
    }

    /// `POST /api/v2/<endpoint>`, MD5-signed; the HTTP status and the answer (`Null` when it
    /// is not JSON, as for a route the center does not have).
    async fn post(&self, endpoint: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let path = format!("/api/v2/{endpoint}");
        let mut pairs: Vec<(String, String)> = params
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        pairs.push(("auth_id".to_string(), self.auth_id.clone()));
        pairs.push(("timestamp".to_string(), (now_unix_ms() / 1000).to_string()));
        let signed = sign::sign_params(&path, pairs, SignType::Md5, &self.auth_key);
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .form(&signed)
            .send()
            .await
            .unwrap_or_else(|err| panic!("{endpoint}: {err}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// As [`Client::post`], and fails the run unless the call succeeded; its `result`.
    async fn ok(&self, endpoint: &str, params: &[(&str, &str)]) -> Value {
        let (status, answer) = self.post(endpoint, params).await;
        assert_eq!(
            answer["flag"], "true",
            "{endpoint} failed ({status}): {answer}"
        );
        answer["result"].clone()
    }

    /// Waits until `/healthz` counts an agent online (60 s at most).
    async fn wait_agent_online(&self, mut alive: impl FnMut() -> Result<(), String>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Err(gone) = alive() {
                panic!("waiting for the agent to come online: {gone}");
            }
            let health: Value = match self
                .http
                .get(format!("{}/healthz", self.base_url))
                .send()
                .await
            {
                Ok(response) => response.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            if health["heartbeat"]["agents_online"].as_u64().unwrap_or(0) >= 1 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no agent online within 60 s: {health}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `calls` rt calls of the no-op app on `ip`, one at a time, after `warmup` unmeasured.
    pub async fn rt(&self, ip: &str, warmup: usize, calls: usize) -> RtSamples {
        let params = [
            ("ip", ip),
            ("app", "noop"),
            ("func", "run"),
            ("param", PARAM),
        ];
        let mut samples = Vec::with_capacity(calls);
        for n in 0..warmup + calls {
            let started = Instant::now();
            let result = self.ok("rt/exec", &params).await;
            let elapsed = support::elapsed_ms(started);
            assert!(
                result["worker_flag"] == "1" && result["worker_message"] == "ok",
                "rt/exec answered {result}"
            );
            if n >= warmup {
                samples.push(elapsed);
            }
        }
        RtSamples(samples)
    }

    /// `calls` rt calls to an address no agent has, one at a time after `warmup`: the center
    /// answers `[414.1]` (unknown agent) after the HTTP hop, the signature check, the auth id's rights and the
    /// presence lookup, touching neither the database nor the bus. The cut that prices the
    /// HTTP side of an RT call.
    pub async fn refused_rt(&self, warmup: usize, calls: usize) -> RtSamples {
        let params = [
            ("ip", "10.255.255.254"),
            ("app", "noop"),
            ("func", "run"),
            ("param", PARAM),
        ];
        let mut samples = Vec::with_capacity(calls);
        for n in 0..warmup + calls {
            let started = Instant::now();
            let (status, answer) = self.post("rt/exec", &params).await;
            let elapsed = support::elapsed_ms(started);
            assert!(
                status == 200
                    && answer["flag"] == "false"
                    && answer["error"]
                        .as_str()
                        .is_some_and(|e| e.starts_with("[414.1]")),
                "rt/exec to nobody answered ({status}) {answer}"
            );
            if n >= warmup {
                samples.push(elapsed);
            }
        }
        RtSamples(samples)
    }

    /// A queue of `tasks` no-op tasks on `ip`, filled, then committed: from the commit to the
    /// last task's stored finish time. `store` reads the center's database.
    pub async fn drain(&self, store: &Store, ip: &str, tasks: usize) -> (Drain, &'static str) {
        let queue_id = self.ok("queue/create", &[("app", "noop")]).await["id"]
            .as_str()
            .expect("queue id")
            .to_string();
        let how = self.fill(&queue_id, ip, tasks).await;
        let committed_at = now_unix_ms();
        self.ok("queue/commit", &[("queue_id", &queue_id)]).await;
        let queue = TaskId::parse(&queue_id).expect("queue id");
        let rows = wait_queue_done(store, &queue, tasks).await;
        let failed = rows
            .iter()
            .filter(|row| {
                !(row.status == TaskStatus::Finished
                    && row.worker_flag == Some(1)
                    && row.worker_message.as_deref() == Some("ok"))
            })
            .count();
        assert_eq!(failed, 0, "{failed} of {tasks} queue tasks did not succeed");
        let last_finish = rows
            .iter()
            .filter_map(|row| row.finished_at)
            .max()
            .expect("finished tasks have a finish time");
        let seconds = last_finish.saturating_sub(committed_at) as f64 / 1000.0;
        (Drain { tasks, seconds }, how)
    }

    /// Adds `tasks` tasks: with `queue/addtasks` when the center answers it, else one
    /// `queue/addtask` a call. Says which.
    async fn fill(&self, queue_id: &str, ip: &str, tasks: usize) -> &'static str {
        let batch = |count: usize| {
            let task = json!({ "ip": ip, "func": "run", "param": PARAM });
            Value::Array(vec![task; count]).to_string()
        };
        let first = tasks.min(ADD_BATCH);
        let (status, answer) = self
            .post(
                "queue/addtasks",
                &[("queue_id", queue_id), ("tasks", &batch(first))],
            )
            .await;
        if status == 200 && answer["flag"] == "true" {
            let mut added = first;
            while added < tasks {
                let count = (tasks - added).min(ADD_BATCH);
                self.ok(
                    "queue/addtasks",
                    &[("queue_id", queue_id), ("tasks", &batch(count))],
                )
                .await;
                added += count;
            }
            return "queue/addtasks";
        }
        if status == 200 && answer.is_object() {
            eprintln!("queue/addtasks refused ({answer}); adding one task a call");
        }
        let added = futures::stream::iter(0..tasks)
            .map(|_| async move {
                self.ok(
                    "queue/addtask",
                    &[
                        ("queue_id", queue_id),
                        ("ip", ip),
                        ("func", "run"),
                        ("param", PARAM),
                    ],
                )
                .await
            })
            .buffer_unordered(ADD_CONCURRENCY)
            .count()
            .await;
        assert_eq!(added, tasks);
        "queue/addtask"
    }
}

/// Polls the database until every task of the queue settled; fails on a stall.
async fn wait_queue_done(store: &Store, queue: &TaskId, tasks: usize) -> Vec<TaskRow> {
    let mut progress = (0usize, Instant::now());
    loop {
        tokio::time::sleep(POLL).await;
        let (store, queue) = (store.clone(), queue.clone());
        let rows = tokio::task::spawn_blocking(move || store.queue_tasks(&queue))
            .await
            .expect("poll task")
            .expect("reading the queue's tasks");
        assert_eq!(rows.len(), tasks, "the queue holds every task added");
        let settled = rows
            .iter()
            .filter(|row| {
                matches!(
                    row.status,
                    TaskStatus::Finished | TaskStatus::Skipped | TaskStatus::Stopped
                )
            })
            .count();
        if settled == tasks {
            return rows;
        }
        if settled > progress.0 {
            progress = (settled, Instant::now());
        }
        assert!(
            progress.1.elapsed() < STALL,
            "no queue task settled for {STALL:?} ({settled} of {tasks} settled)"
        );
    }
}

async fn open_store(url: &str) -> Store {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || Store::open(&url))
        .await
        .expect("store task")
        .expect("the bench's own handle on the center's database")
}

/// The database a distributed center runs on.
#[derive(Debug, Clone, Copy)]
pub enum Database {
    Postgres,
    Sqlite,
}

/// The center and one agent as release processes on RabbitMQ and a fresh database.
pub struct Distributed {
    pub client: Client,
    pub store: Store,
    namespace: String,
    amqp: String,
    center: CenterProcess,
    agents: AgentProcesses,
    database: TestDatabase,
    _dir: tempfile::TempDir,
}

impl Distributed {
    pub async fn start(settings: &Settings, kind: Database) -> Distributed {
        let dir = tempfile::tempdir().expect("temp dir");
        let namespace = support::namespace("elves-peers");
        let pg_url = settings.pg_url.clone();
        let database = tokio::task::spawn_blocking(move || match kind {
            Database::Postgres => TestDatabase::postgres(&pg_url),
            Database::Sqlite => TestDatabase::sqlite(),
        })
        .await
        .expect("database task")
        .expect("a fresh database (is PostgreSQL up? scripts/services.sh)");
        let mut env = support::center_env(&dir.path().join("center"), &namespace);
        env.push(("ELVES_BUS__URL".to_string(), settings.amqp.clone()));
        env.push(("ELVES_DATABASE__URL".to_string(), database.url.clone()));
        let (bin, root) = (settings.center_bin.clone(), settings.root.clone());
        let center = tokio::task::spawn_blocking(move || CenterProcess::start(&bin, &root, env))
            .await
            .expect("center start task");
        let id = AgentId::parse(AGENT).expect("agent id");
        let mut config = support::agent_config(
            &id,
            dir.path().join("apps"),
            dir.path().join("spool"),
            1000,
            &center.key_id,
            &center.public_key_hex,
        );
        config.bus.url = settings.amqp.clone();
        config.bus.namespace = namespace.clone();
        // The worker is a native entry: no interpreter probe at start.
        config.interpreters = [("sh".to_string(), "/bin/sh".to_string())].into();
        super::install_worker(&config.apps_dir);
        let mut agents = AgentProcesses::start(&settings.agent_bin, dir.path(), &[config]);
        let client = Client::new(center.base_url.clone(), support::AUTH_ID, support::AUTH_KEY);
        client.wait_agent_online(|| agents.alive()).await;
        let store = open_store(&database.url).await;
        Distributed {
            client,
            store,
            namespace,
            amqp: settings.amqp.clone(),
            center,
            agents,
            database,
            _dir: dir,
        }
    }

    pub fn agent_ip(&self) -> &'static str {
        AGENT
    }

    /// Stops the agent and the center, deletes their broker objects and drops the database.
    pub async fn stop(self) {
        let Distributed {
            store,
            namespace,
            amqp,
            center,
            agents,
            database,
            ..
        } = self;
        agents.stop().await;
        drop(store);
        tokio::task::spawn_blocking(move || center.stop())
            .await
            .expect("center stops");
        let id = AgentId::parse(AGENT).expect("agent id");
        support::delete_broker_objects(&amqp, &namespace, &[id]).await;
        tokio::task::spawn_blocking(move || drop(database))
            .await
            .expect("database dropped");
    }
}

/// `elves up` as a child process on a free port, with a temp data dir holding the worker.
pub struct Up {
    pub client: Client,
    pub store: Store,
    child: ChildProcess,
    _dir: tempfile::TempDir,
}

impl Up {
    pub async fn start(elves_bin: &Path) -> Up {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let apps = dir.path().join("apps");
        std::fs::create_dir_all(&data).expect("data dir");
        super::install_worker(&apps);
        // `elves up` keeps a key it finds; writing it first is how the bench knows it.
        let auth_key = format!("{:032x}", rand::random::<u128>());
        std::fs::write(data.join("auth_key"), &auth_key).expect("auth key file");
        let port = support::free_port();
        let mut command = std::process::Command::new(elves_bin);
        command
            .arg("up")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data)
            .arg("--apps-dir")
            .arg(&apps)
            .arg("--examples-dir")
            .arg(dir.path().join("no-examples"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_string()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|name| name.starts_with("ELVES_")) {
                command.env_remove(name);
            }
        }
        let mut child = ChildProcess(command.spawn().expect("elves up starts"));
        let client = Client::new(format!("http://127.0.0.1:{port}"), UP_AUTH_ID, &auth_key);
        client
            .wait_agent_online(|| match child.running() {
                true => Ok(()),
                false => Err("elves up exited".to_string()),
            })
            .await;
        let store = open_store(&format!("sqlite://{}", data.join("elves.db").display())).await;
        Up {
            client,
            store,
            child,
            _dir: dir,
        }
    }

    pub fn agent_ip(&self) -> &'static str {
        "127.0.0.1"
    }

    /// SIGINT, as Ctrl-C would; killed after 20 s.
    pub async fn stop(self) {
        let Up {
            store, mut child, ..
        } = self;
        drop(store);
        if let Ok(pid) = i32::try_from(child.0.id()) {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGINT);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.running() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if child.running() {
            eprintln!("elves up did not stop within 20 s; killing it");
        }
        // Dropping kills it if it still runs.
    }
}
