//! Test helpers shared by the runtime's modules: a real agent on an in-process bus, with two
//! apps (`demo` answers at once, `slow` sleeps), and the signing and waiting around it.

use crate::config::AgentConfig;
use crate::runtime::run;
use crate::stats::AgentStats;
use elves_shared::bus::{BusMessage, Consumer, Destination, InProcBus, QueueSpec, SharedBus};
use elves_shared::crypto::InstructionSigner;
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{self, routing, AgentId, Instruction, JobResult, Mode, TaskId, TaskType};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// Polls `condition` until it holds, failing the test after `WAIT`.
pub(crate) async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) fn write_app(apps_dir: &Path, app: &str, script: &str, version: Option<&str>) {
    let dir = apps_dir.join(app);
    std::fs::create_dir_all(&dir).unwrap();
    let worker = dir.join("app-worker");
    std::fs::write(&worker, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
    if let Some(version) = version {
        std::fs::write(dir.join("VERSION"), format!("{version}\n")).unwrap();
    }
}

pub(crate) struct Harness {
    pub(crate) signer: InstructionSigner,
    pub(crate) bus: SharedBus,
    pub(crate) stats: Arc<AgentStats>,
    pub(crate) agent_id: AgentId,
    pub(crate) dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    agent: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Harness {
    /// Starts an agent with two apps: `demo` answers at once, `slow` sleeps.
    pub(crate) async fn start(bus: SharedBus, configure: impl FnOnce(&mut AgentConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let apps_dir = dir.path().join("apps");
        write_app(
            &apps_dir,
            "demo",
            "echo '<ElvesWFlag>true</ElvesWFlag><ElvesWResult>hi</ElvesWResult>'",
            Some("1.2"),
        );
        let pid_file = dir.path().join("slow.pid");
        write_app(
            &apps_dir,
            "slow",
            &format!(
                "echo $$ > {0}.tmp && mv {0}.tmp {0}; exec sleep 1000",
                pid_file.display()
            ),
            None,
        );
        let signer = InstructionSigner::generate("center");
        let agent_id = AgentId::parse("host-1").unwrap();
        let mut config = AgentConfig::new(agent_id.clone());
        config.apps_dir = apps_dir;
        config.spool_dir = dir.path().join("spool");
        config.center.public_key = signer.public_key_hex();
        config.interpreters = [("sh".to_string(), "/bin/sh".to_string())].into();
        configure(&mut config);
        // The center declares an agent's queue before it sends the first instruction.
        bus.declare(&QueueSpec::agent(bus.as_ref(), &agent_id))
            .await
            .unwrap();
        let stats = Arc::new(AgentStats::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let agent = tokio::spawn(run(config, bus.clone(), stats.clone(), async move {
            let _ = stopped.await;
        }));
        Harness {
            signer,
            bus,
            stats,
            agent_id,
            dir,
            stop: Some(stop),
            agent: Some(agent),
        }
    }

    pub(crate) fn instruction(&self, id: &str, app: &str, task_type: TaskType) -> Instruction {
        let now = now_unix_ms();
        Instruction {
            id: TaskId::parse(id).unwrap(),
            agent: self.agent_id.clone(),
            task_type,
            mode: Mode::NP,
            app: app.into(),
            func: "hello".into(),
            param: "{}".into(),
            timeout: 30,
            proxy: String::new(),
            issued_at: now,
            deadline: now + 60_000,
        }
    }

    pub(crate) fn signed(&self, kind: &str, body: Vec<u8>) -> BusMessage {
        sign_with(&self.signer, kind, body)
    }

    pub(crate) async fn send(&self, message: BusMessage) {
        let destination = Destination::Topic(routing::agent(&self.agent_id));
        self.bus.publish(&destination, message).await.unwrap();
    }

    pub(crate) async fn consume(&self, suffix: &str, key: &str) -> Consumer {
        let spec = QueueSpec {
            name: self.bus.queue_name(suffix),
            bindings: vec![key.to_string()],
            durable: true,
        };
        self.bus.consume(spec, 16).await.unwrap()
    }

    /// Stops the agent and checks that it returns cleanly within a bound.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(agent) = self.agent.take() {
            let res = tokio::time::timeout(WAIT, agent).await;
            res.expect("agent stopped in time")
                .expect("agent task joined")
                .expect("agent returned ok");
        }
    }
}

pub(crate) fn sign_with(signer: &InstructionSigner, kind: &str, body: Vec<u8>) -> BusMessage {
    let mut message = BusMessage::msgpack(kind, body);
    message.sig = Some(signer.sign(&message.body));
    message.key_id = Some(signer.key_id().to_string());
    message
}

pub(crate) async fn next_result(consumer: &mut Consumer) -> (BusMessage, JobResult) {
    let delivery = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a result in time")
        .expect("the bus is open");
    let message = delivery.message.clone();
    delivery.ack().await;
    assert_eq!(message.kind, wire::kind::RESULT);
    let result = wire::decode(&message.body).unwrap();
    (message, result)
}

pub(crate) fn inproc() -> SharedBus {
    Arc::new(InProcBus::new(&format!("test-{}", TaskId::random())))
}

/// The results in a `center.result` message, alone or packed.
pub(crate) async fn next_results(consumer: &mut Consumer) -> Vec<JobResult> {
    let delivery = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a result in time")
        .expect("the bus is open");
    let message = delivery.message.clone();
    delivery.ack().await;
    match message.kind.as_str() {
        wire::kind::RESULT => vec![wire::decode(&message.body).unwrap()],
        wire::kind::RESULTS => {
            wire::decode::<wire::ResultBatch>(&message.body)
                .unwrap()
                .results
        }
        other => panic!("not a result message: {other}"),
    }
}

pub(crate) fn batch_message(harness: &Harness, instructions: &[Instruction]) -> BusMessage {
    let body = wire::encode(&wire::InstructionBatch {
        instructions: instructions.to_vec(),
    });
    harness.signed(wire::kind::INSTRUCTIONS, body)
}
