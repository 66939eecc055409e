//! A release `elves-center` and one release `elves-agent` process over RabbitMQ, the agent
//! answering no-op calls: what the benches that measure processes (RSS, threads) start from.

use super::agent_processes::AgentProcesses;
use super::{Api, CenterProcess};
use elves_shared::wire::AgentId;
use std::path::Path;

pub struct ReleasePair {
    pub center: CenterProcess,
    pub agents: AgentProcesses,
    pub api: Api,
    pub agent: String,
    id: AgentId,
    amqp: String,
    namespace: String,
    // Last: the processes use it until they are stopped.
    _dir: tempfile::TempDir,
}

impl ReleasePair {
    /// Starts both in a fresh namespace named after `label`, with the no-op app and what
    /// `install_apps` puts in the apps directory, and waits until the agent answers. `None`
    /// (said on stdout) when the release binaries are not built.
    pub async fn start(
        label: &str,
        amqp: &str,
        agent: &str,
        install_apps: impl FnOnce(&Path),
    ) -> Option<ReleasePair> {
        let (Some(center_bin), Some(agent_bin)) = (
            super::release_binary("elves-center"),
            super::release_binary("elves-agent"),
        ) else {
            println!("{label}: build elves-center and elves-agent in release first");
            return None;
        };
        println!(
            "{label}: elves-center built {} ago, elves-agent {} ago",
            super::built_ago(&center_bin),
            super::built_ago(&agent_bin)
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let namespace = super::namespace(&format!("elves-bench-{agent}"));
        let mut env = super::center_env(dir.path(), &namespace);
        env.push(("ELVES_BUS__URL".to_string(), amqp.to_string()));
        let center = CenterProcess::start(&center_bin, &super::repo_root(), env);
        let apps_dir = dir.path().join("apps");
        super::install_noop_app(&apps_dir);
        install_apps(&apps_dir);
        let id = AgentId::parse(agent).expect("agent id");
        let mut config = super::agent_config(
            &id,
            apps_dir,
            dir.path().join("spool"),
            1_000,
            &center.key_id,
            &center.public_key_hex,
        );
        config.bus.url = amqp.to_string();
        config.bus.namespace = namespace.clone();
        let agents = AgentProcesses::start(&agent_bin, dir.path(), &[config]);
        let api = Api::new(center.base_url.clone());
        super::wait_answering(&api, &[agent]).await;
        Some(ReleasePair {
            center,
            agents,
            api,
            agent: agent.to_string(),
            id,
            amqp: amqp.to_string(),
            namespace,
            _dir: dir,
        })
    }

    /// Stops both and deletes what they declared on the broker.
    pub async fn stop(self) {
        self.agents.stop().await;
        let center = self.center;
        tokio::task::block_in_place(|| center.stop());
        super::delete_broker_objects(&self.amqp, &self.namespace, &[self.id]).await;
    }
}
