//! Results: building a task's `JobResult`, choosing where it goes, and getting it there.
//!
//! `center.result` results go through the agent's `ResultBatcher` (several to a message when
//! several are ready), RT results to the waiting center's reply queue. A result the bus will not
//! take is spooled to disk for the spool's flusher to send later: no result is lost. P-mode
//! results also go, best effort, to the app's processor.

use super::Agent;
use crate::spool::{self, Outgoing};
use crate::stats::bump;
use crate::worker::WorkerReport;
use elves_shared::bus::{BusError, BusMessage, Destination};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{self, routing, Instruction, JobResult, TaskType};
use std::time::Duration;

const DELIVER_FIRST_BACKOFF: Duration = Duration::from_millis(100);
const DELIVER_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A result for `instruction` with everything but the outcome filled in.
pub(super) fn result_of(
    agent_id: &wire::AgentId,
    instruction: &Instruction,
    report: WorkerReport,
) -> JobResult {
    JobResult {
        id: instruction.id.clone(),
        agent: agent_id.clone(),
        task_type: instruction.task_type,
        mode: instruction.mode,
        app: instruction.app.clone(),
        func: instruction.func.clone(),
        worker_flag: report.worker_flag,
        worker_message: report.worker_message,
        worker_costtime: report.costtime_ms,
        started_at: report.started_at,
        finished_at: report.finished_at,
        error: String::new(),
    }
}

/// A result for a task that did not run to its end, with `error` saying why.
pub(super) fn failed_result(
    agent_id: &wire::AgentId,
    instruction: &Instruction,
    error: &str,
    message: &str,
    started_at: u64,
) -> JobResult {
    let finished_at = now_unix_ms();
    let report = WorkerReport {
        worker_flag: -1,
        worker_message: message.to_string(),
        costtime_ms: finished_at.saturating_sub(started_at),
        started_at,
        finished_at,
        not_started: None,
    };
    JobResult {
        error: error.to_string(),
        ..result_of(agent_id, instruction, report)
    }
}

/// Where the result of `instruction` goes: the waiting center's reply queue for RT tasks,
/// `center.result` for the others (and for an RT instruction that names no reply queue).
pub(super) fn outgoing_for(instruction_message: &BusMessage, result: JobResult) -> Outgoing {
    let destination = match (&result.task_type, &instruction_message.reply_to) {
        (TaskType::Rt, Some(reply_to)) if !reply_to.is_empty() => {
            Destination::Queue(reply_to.clone())
        }
        _ => Destination::Topic(routing::CENTER_RESULT.to_string()),
    };
    let correlation_id = instruction_message
        .correlation_id
        .clone()
        .unwrap_or_else(|| result.id.to_string());
    Outgoing {
        destination,
        correlation_id: Some(correlation_id),
        result,
    }
}

/// Publishes a result, or spools it when the bus will not take it; retries both until one works
/// or shutdown starts. True when the result is safe (published or on disk).
pub(super) async fn deliver(agent: &Agent, outgoing: &Outgoing) -> bool {
    let task_id = &outgoing.result.id;
    let mut stopping = agent.stopping.clone();
    let mut backoff = DELIVER_FIRST_BACKOFF;
    loop {
        let published = if outgoing.goes_to_center_result() {
            agent.results.publish(outgoing.clone()).await
        } else {
            spool::publish(agent.bus.as_ref(), outgoing).await
        };
        match published {
            Ok(()) => {
                bump(&agent.stats.results_published);
                log::debug!("task {task_id}: result published");
                return true;
            }
            Err(err) => {
                // Unavailable is the usual reason; Unroutable (no center ever declared
                // center.result) and Refused also mean "not now", and no result may be lost.
                log::warn!("task {task_id}: result not published, spooling it: {err}");
                match spool::spool_result(
                    &agent.spool,
                    outgoing.clone(),
                    &agent.spool_wake,
                    &agent.stats,
                )
                .await
                {
                    Ok(path) => {
                        log::info!("task {task_id}: result spooled to {}", path.display());
                        return true;
                    }
                    Err(err) => log::error!("task {task_id}: result not spooled either: {err}"),
                }
            }
        }
        tokio::select! {
            _ = stopping.wait_for(|stopping| *stopping) => {
                log::error!("task {task_id}: result not stored at shutdown; instruction left unacked");
                return false;
            }
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(DELIVER_MAX_BACKOFF);
    }
}

/// P mode: the app's processor gets the result too. Best effort: the center already has it,
/// and a processor that is not running must not hold up the agent.
pub(super) async fn publish_to_processor(agent: &Agent, result: &JobResult) {
    let app_dir = agent.config.apps_dir.join(&result.app);
    let target = tokio::task::spawn_blocking(move || crate::processor::target_of(&app_dir))
        .await
        .unwrap_or(crate::processor::ProcessorTarget::Bus);
    if let crate::processor::ProcessorTarget::Http { url, timeout } = target {
        match crate::processor::post(&agent.processor_http, &url, timeout, result).await {
            Ok(()) => log::debug!("task {}: result posted to {url}", result.id),
            Err(err) => log::warn!("task {}: result not posted to {url}: {err}", result.id),
        }
        return;
    }
    let destination = Destination::Topic(routing::processor(&result.app));
    let message = BusMessage::msgpack(wire::kind::RESULT, wire::encode(result));
    match agent.bus.publish(&destination, message).await {
        Ok(()) => log::debug!(
            "task {}: result sent to processor.{}",
            result.id,
            result.app
        ),
        Err(BusError::Unroutable(_)) => log::info!(
            "task {}: no processor listening on processor.{}",
            result.id,
            result.app
        ),
        Err(err) => log::warn!(
            "task {}: result not sent to processor.{}: {err}",
            result.id,
            result.app
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::delivery::job_of;
    use crate::runtime::testing::*;
    use elves_shared::bus::QueueSpec;
    use elves_shared::wire::{AgentId, Mode, TaskId};
    use std::path::Path;

    #[tokio::test]
    async fn rt_results_answer_the_reply_queue_and_p_mode_reaches_the_processor() {
        let harness = Harness::start(inproc(), |_| {}).await;
        let reply_queue = harness.bus.queue_name("reply.center-a");
        let mut replies = harness
            .bus
            .consume(
                QueueSpec {
                    name: reply_queue.clone(),
                    bindings: Vec::new(),
                    durable: false,
                },
                4,
            )
            .await
            .unwrap();
        let mut processor = harness
            .consume("processor.demo", &routing::processor("demo"))
            .await;

        let mut rt = harness.instruction("00000000000000a1", "demo", TaskType::Rt);
        rt.mode = Mode::P;
        let mut message = harness.signed(wire::kind::INSTRUCTION, wire::encode(&rt));
        message.reply_to = Some(reply_queue);
        message.correlation_id = Some("call-7".into());
        harness.send(message).await;

        let (reply, result) = next_result(&mut replies).await;
        assert_eq!(reply.correlation_id.as_deref(), Some("call-7"));
        assert_eq!(result.id, rt.id);
        assert_eq!(result.task_type, TaskType::Rt);
        assert_eq!(result.worker_flag, 1);
        let (_, processed) = next_result(&mut processor).await;
        assert_eq!(processed, result);
        harness.stop().await;
    }

    #[tokio::test]
    async fn a_result_nobody_can_take_yet_is_spooled_and_sent_later() {
        let harness = Harness::start(inproc(), |_| {}).await;
        let task = harness.instruction("00000000000000c1", "demo", TaskType::Queue);
        harness
            .send(harness.signed(wire::kind::INSTRUCTION, wire::encode(&task)))
            .await;
        let stats = harness.stats.clone();
        wait_until("the result to be spooled", || {
            stats.snapshot().results_spooled == 1
        })
        .await;
        let spool_dir = harness.dir.path().join("spool");
        let spooled_results = |dir: &Path| {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "result"))
                        .count()
                })
                .unwrap_or(1)
        };
        assert_eq!(spooled_results(&spool_dir), 1);

        // A center appears and binds center.result: the flusher's next attempt gets through.
        let mut results = harness
            .consume("center.result", routing::CENTER_RESULT)
            .await;
        let (_, result) = next_result(&mut results).await;
        assert_eq!(result.id, task.id);
        assert_eq!(result.worker_flag, 1);
        wait_until("the spool file to be removed", || {
            spooled_results(&spool_dir) == 0
        })
        .await;
        assert_eq!(stats.snapshot().results_published, 1);
        harness.stop().await;
    }

    /// The in-process bus, except that the first `n_failures` consumes fail as if the broker
    /// were down.

    #[test]
    fn rt_without_reply_to_falls_back_to_center_result() {
        let instruction = Instruction {
            id: TaskId::parse("00000000000000e1").unwrap(),
            agent: AgentId::parse("host-1").unwrap(),
            task_type: TaskType::Rt,
            mode: Mode::NP,
            app: "demo".into(),
            func: "f".into(),
            param: String::new(),
            timeout: 0,
            proxy: String::new(),
            issued_at: 0,
            deadline: 0,
        };
        let result = failed_result(&instruction.agent, &instruction, "expired", "late", 5);
        let outgoing = outgoing_for(&BusMessage::default(), result);
        assert_eq!(
            outgoing.destination,
            Destination::Topic(routing::CENTER_RESULT.into())
        );
        assert_eq!(outgoing.correlation_id.as_deref(), Some("00000000000000e1"));
        assert_eq!(job_of(&instruction).timeout, Duration::ZERO);
        assert_eq!(job_of(&instruction).kind, "rt");
    }
}
