//! Publishing onto an agent's queue, and what a task becomes when that fails.

use super::message::Outbound;
use crate::error::ApiError;
use elves_shared::bus::{BusError, BusMessage, Destination, SharedBus};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{routing, AgentId, Instruction, JobResult, TaskId};

/// Publishes a signed message onto `agent`'s queue, with the broker's confirm.
pub async fn publish(
    bus: &SharedBus,
    agent: &AgentId,
    message: BusMessage,
) -> Result<(), BusError> {
    bus.publish(&Destination::Topic(routing::agent(agent)), message)
        .await
}

/// What became of one task of an [`Outbound`] message.
#[derive(Debug)]
pub enum Sent {
    Published,
    /// The agent cannot get it (no queue for it, or the broker refused it): to be settled as
    /// failed at once.
    Undeliverable(JobResult),
    /// The bus is away: the task is to go back to `pendding` and be sent again later.
    BusUnavailable(TaskId),
}

/// Publishes the message of one [`Outbound`] and says, task by task, what became of it.
pub async fn publish_outbound(bus: &SharedBus, outbound: Outbound) -> Vec<Sent> {
    let Some(agent) = outbound.agent().cloned() else {
        return Vec::new();
    };
    let Outbound { tasks, message } = outbound;
    match publish(bus, &agent, message).await {
        Ok(()) => {
            log::debug!("{} task(s) sent to {agent}", tasks.len());
            tasks.iter().map(|_| Sent::Published).collect()
        }
        // A publish that failed with the connection may still have reached the agent; then
        // the agent drops the second copy as a replay (same task id).
        Err(BusError::Unavailable(err)) => {
            log::debug!("{} task(s) not sent, bus unavailable: {err}", tasks.len());
            tasks
                .into_iter()
                .map(|task| Sent::BusUnavailable(task.id))
                .collect()
        }
        Err(err) => {
            log::warn!(
                "{} task(s) could not be sent to {agent}: {err}",
                tasks.len()
            );
            tasks
                .iter()
                .map(|task| Sent::Undeliverable(undelivered(&Instruction::from(task), &err)))
                .collect()
        }
    }
}

/// The result of a task whose instruction could not be sent: it fails at once with 410.1, so
/// that its dependents and its cron see the failure now rather than at its deadline.
pub fn undelivered(instruction: &Instruction, err: &dyn std::fmt::Display) -> JobResult {
    let now = now_unix_ms();
    let error = ApiError::AgentUnreachable(format!(
        "could not send the job to agent {}: {err}",
        instruction.agent
    ));
    JobResult {
        id: instruction.id.clone(),
        agent: instruction.agent.clone(),
        task_type: instruction.task_type,
        mode: instruction.mode,
        app: instruction.app.clone(),
        func: instruction.func.clone(),
        worker_flag: -1,
        worker_message: String::new(),
        worker_costtime: 0,
        started_at: now,
        finished_at: now,
        error: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::instruction::tests::row;
    use crate::dispatch::message::pack_per_agent;
    use elves_shared::bus::{InProcBus, QueueSpec};
    use elves_shared::crypto::InstructionSigner;
    use std::sync::Arc;

    #[test]
    fn an_undelivered_task_fails_with_410_1_and_keeps_its_identity() {
        let instruction = Instruction::from(&row(3, "a", 0));
        let result = undelivered(&instruction, &"no queue is bound");
        assert_eq!(
            result.error,
            "[410.1]could not send the job to agent a: no queue is bound"
        );
        assert_eq!((result.id, result.worker_flag), (instruction.id, -1));
    }

    #[tokio::test]
    async fn an_agent_without_a_queue_makes_every_task_of_the_message_undeliverable() {
        let bus: SharedBus = Arc::new(InProcBus::new("test"));
        let signer = InstructionSigner::generate("center");
        let rows = vec![row(1, "gone", 0), row(2, "gone", 0)];
        let mut outbound = pack_per_agent(&signer, rows);
        let sent = publish_outbound(&bus, outbound.remove(0)).await;
        assert_eq!(sent.len(), 2);
        for outcome in sent {
            match outcome {
                Sent::Undeliverable(result) => assert!(result.error.starts_with("[410.1]")),
                other => panic!("expected undeliverable, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_bound_agent_gets_the_message() {
        let bus: SharedBus = Arc::new(InProcBus::new("test"));
        let agent = AgentId::parse("a").unwrap();
        let spec = QueueSpec::agent(bus.as_ref(), &agent);
        let mut consumer = bus.consume(spec, 16).await.unwrap();
        let signer = InstructionSigner::generate("center");
        let mut outbound = pack_per_agent(&signer, vec![row(1, "a", 0)]);
        let sent = publish_outbound(&bus, outbound.remove(0)).await;
        assert!(matches!(sent.as_slice(), [Sent::Published]));
        assert!(consumer.next().await.is_some());
    }
}
