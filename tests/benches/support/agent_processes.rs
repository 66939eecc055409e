//! Real agents as a real host runs them: one `elves-agent` process each, configured by its own
//! TOML file, its stderr forwarded line by line with its id. A real host runs one agent with a
//! few dozen file descriptors; a hundred agents in one process would make every worker spawn
//! copy and close thousands of them.

use super::ChildProcess;
use elves_agent::AgentConfig;
use elves_shared::wire::AgentId;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Running agent processes, killed when dropped before [`AgentProcesses::stop`] (a bench that
/// panicked), so that none outlives the bench.
pub struct AgentProcesses {
    children: Vec<AgentChild>,
    /// Forward each agent's stderr; they end when its process does.
    forwarders: JoinSet<()>,
    log_lines: Arc<AtomicU64>,
}

struct AgentChild {
    id: AgentId,
    child: ChildProcess,
}

/// The agent processes' memory, read from `/proc/<pid>/status`.
pub struct AgentsRss {
    /// Processes whose status could be read (all of them, unless one had exited).
    pub processes: usize,
    /// Their VmRSS at that moment, summed; pages they share (the binary's code, libc) count
    /// once per process.
    pub rss_kib: u64,
    /// The anonymous part of it (RssAnon): memory of each agent's own.
    pub anon_kib: u64,
    /// Their VmHWM summed: each one's own peak, which need not have been at the same time.
    pub peaks_kib: u64,
}

impl AgentProcesses {
    /// Starts one `bin` process per configuration, each reading `<dir>/agent-<id>.toml`, with
    /// the bench's `RUST_LOG` (by default `warn`) and no other `ELVES_…` variable. Fails the
    /// bench when a file would not give its agent exactly `config` (defaults included) or a
    /// process does not start. Needs a Tokio runtime (the stderr forwarders run on it).
    pub fn start(bin: &Path, dir: &Path, configs: &[AgentConfig]) -> AgentProcesses {
        let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_string());
        let log_lines = Arc::new(AtomicU64::new(0));
        let mut forwarders = JoinSet::new();
        let mut children = Vec::with_capacity(configs.len());
        for config in configs {
            let id = &config.id;
            let path = dir.join(format!("agent-{id}.toml"));
            std::fs::write(&path, config_toml(config))
                .unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
            // The file must give the agent exactly the in-process configuration, defaults
            // included; reading it back as the binary will is the check.
            let loaded = AgentConfig::load(Some(&path), Vec::new())
                .unwrap_or_else(|err| panic!("{} does not load: {err}", path.display()));
            assert_eq!(
                format!("{loaded:?}"),
                format!("{config:?}"),
                "{} reads back as another configuration than the in-process agent's",
                path.display()
            );
            let mut command = std::process::Command::new(bin);
            // The working directory stays this bench's, so that relative defaults (the cron
            // file) resolve as they do for the in-process agents.
            command
                .arg("--config")
                .arg(&path)
                .env("RUST_LOG", &rust_log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            // The agent reads every `ELVES_…` variable as configuration: the file alone is its
            // configuration, whatever this bench was given for the center.
            for (name, _) in std::env::vars_os() {
                if name.to_str().is_some_and(|name| name.starts_with("ELVES_")) {
                    command.env_remove(name);
                }
            }
            let mut child = command
                .spawn()
                .unwrap_or_else(|err| panic!("{} does not start: {err}", bin.display()));
            let stderr = child.stderr.take();
            // Owned before anything else can fail, so that a panic kills it.
            children.push(AgentChild {
                id: id.clone(),
                child: ChildProcess(child),
            });
            let stderr = stderr
                .map(tokio::process::ChildStderr::from_std)
                .expect("the agent's stderr is piped")
                .expect("the agent's stderr registers with the runtime");
            forwarders.spawn(forward_log(id.clone(), stderr, log_lines.clone()));
        }
        AgentProcesses {
            children,
            forwarders,
            log_lines,
        }
    }

    /// `Err` naming the first agent process that has exited.
    pub fn alive(&mut self) -> Result<(), String> {
        for agent in self.children.iter_mut() {
            match agent.child.0.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => return Err(format!("agent {} exited ({status})", agent.id)),
                Err(err) => return Err(format!("agent {}: cannot wait for it: {err}", agent.id)),
            }
        }
        Ok(())
    }

    /// The processes' VmRSS and VmHWM now, summed.
    pub fn rss(&self) -> AgentsRss {
        let mut total = AgentsRss {
            processes: 0,
            rss_kib: 0,
            anon_kib: 0,
            peaks_kib: 0,
        };
        for agent in &self.children {
            let pid = agent.child.0.id();
            let figure = |field| super::status_kib(pid, field);
            if let (Some(rss), Some(anon), Some(peak)) =
                (figure("VmRSS:"), figure("RssAnon:"), figure("VmHWM:"))
            {
                total.processes += 1;
                total.rss_kib += rss;
                total.anon_kib += anon;
                total.peaks_kib += peak;
            }
        }
        total
    }

    /// The processes' pids, in the order of their configurations.
    pub fn pids(&self) -> Vec<u32> {
        self.children
            .iter()
            .map(|agent| agent.child.0.id())
            .collect()
    }

    /// Lines the processes wrote on stderr; complete once [`AgentProcesses::stop`] returned.
    pub fn log_lines(&self) -> Arc<AtomicU64> {
        self.log_lines.clone()
    }

    /// Stops every agent with SIGTERM, as systemd does, so that each shuts down as on a real
    /// host; kills those still running after 40 s.
    pub async fn stop(self) {
        let AgentProcesses {
            mut children,
            mut forwarders,
            ..
        } = self;
        for agent in &mut children {
            // A reaped child's pid may belong to another process by now: signal only those
            // still running.
            if !agent.child.running() {
                continue;
            }
            if let Ok(pid) = i32::try_from(agent.child.0.id()) {
                // SAFETY: kill(2) on the pid of our own child, which is not reaped.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline && children.iter_mut().any(|agent| agent.child.running()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for agent in &mut children {
            match agent.child.0.try_wait() {
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status)) => eprintln!("agent {} ended with {status}", agent.id),
                Ok(None) => {
                    eprintln!("agent {} did not stop within 40 s; killing it", agent.id);
                    let _ = agent.child.0.kill();
                    let _ = agent.child.0.wait();
                }
                Err(err) => eprintln!("agent {}: cannot wait for it: {err}", agent.id),
            }
        }
        // Each forwarder ends at its agent's end of stderr; one held open by some leftover
        // process must not hang the bench.
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            while forwarders.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            eprintln!("agents' stderr still open 5 s after they ended; not waiting");
            forwarders.abort_all();
        }
    }
}

/// The TOML file of an agent process: the keys the benches set (id, directories, heartbeat,
/// interpreters, bus, center key); every other key is left to its default, as it is for the
/// in-process agents.
pub fn config_toml(config: &AgentConfig) -> String {
    let path = |path: &Path| {
        toml::Value::String(
            path.to_str()
                .unwrap_or_else(|| panic!("agent path {} is not UTF-8", path.display()))
                .to_string(),
        )
    };
    let mut bus = toml::Table::new();
    bus.insert("url".into(), config.bus.url.clone().into());
    bus.insert("namespace".into(), config.bus.namespace.clone().into());
    let mut center = toml::Table::new();
    center.insert("key_id".into(), config.center.key_id.clone().into());
    center.insert("public_key".into(), config.center.public_key.clone().into());
    let mut file = toml::Table::new();
    file.insert("id".into(), config.id.to_string().into());
    file.insert("apps_dir".into(), path(&config.apps_dir));
    file.insert("spool_dir".into(), path(&config.spool_dir));
    file.insert(
        "heartbeat_interval_ms".into(),
        toml::Value::Integer(i64::try_from(config.heartbeat_interval_ms).unwrap_or(i64::MAX)),
    );
    let interpreters: toml::Table = config
        .interpreters
        .iter()
        .map(|(name, path)| (name.clone(), path.clone().into()))
        .collect();
    file.insert("interpreters".into(), interpreters.into());
    file.insert("bus".into(), bus.into());
    file.insert("center".into(), center.into());
    toml::to_string(&file).expect("an agent configuration serializes as TOML")
}

/// Forwards an agent process's stderr line by line, with its id, counting the lines.
async fn forward_log(id: AgentId, stderr: tokio::process::ChildStderr, lines: Arc<AtomicU64>) {
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        lines.fetch_add(1, Ordering::Relaxed);
        eprintln!("[agent {id}] {line}");
    }
}
