//! The agent-local crons of `cron_file` (`crate::local_cron` reads the file and keeps the
//! schedule): each firing runs the worker and reports like a center task of type cron.

use super::results::{deliver, publish_to_processor};
use super::Agent;
use crate::local_cron::LocalCron;
use crate::spool::Outgoing;
use crate::stats::bump;
use crate::worker::WorkerJob;
use elves_shared::bus::Destination;
use elves_shared::wire::{routing, JobResult, Mode, TaskId, TaskType};
use std::sync::Arc;
use std::time::Duration;

/// Runs the agent-local crons of `cron_file` until shutdown.
pub(super) async fn run(agent: Arc<Agent>) {
    let path = agent.config.cron_file.clone();
    let loaded = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || crate::local_cron::load(&path))
            .await
            .unwrap_or_default()
    };
    for error in &loaded.errors {
        log::error!("local cron {}: {error}", path.display());
    }
    if loaded.crons.is_empty() {
        return;
    }
    log::info!(
        "local cron: {} cron(s) from {} ({} disabled)",
        loaded.crons.len(),
        path.display(),
        loaded.disabled
    );
    // `validate` checked the zone.
    let zone = elves_shared::quartz::parse_time_zone(&agent.config.cron_time_zone)
        .unwrap_or(chrono_tz::Tz::UTC);
    let skipped_agent = agent.clone();
    crate::local_cron::run(
        loaded.crons,
        zone,
        agent.stopping.clone(),
        |cron| run_local_cron(agent.clone(), cron),
        move |cron| {
            bump(&skipped_agent.stats.cron_skipped);
            log::warn!(
                "local cron {}: previous run still going, firing skipped",
                cron.id
            );
        },
    )
    .await;
}

/// One firing of a local cron: runs the worker and reports like a center task of type cron
/// (NP: `center.result`; P: also `processor.<app>`).
async fn run_local_cron(agent: Arc<Agent>, cron: LocalCron) {
    let task_id = TaskId::random();
    bump(&agent.stats.cron_runs);
    let _running = agent.stats.running_guard();
    log::info!(
        "task {task_id}: local cron {} fired, app {} func {} mode {}",
        cron.id,
        cron.app,
        cron.func,
        cron.mode
    );
    let timeout_s = if cron.timeout_s == 0 {
        agent.config.exec.timeout_s
    } else {
        cron.timeout_s
    };
    let job = WorkerJob {
        task_id: task_id.to_string(),
        app: cron.app.clone(),
        func: cron.func.clone(),
        param: cron.param.clone(),
        kind: TaskType::Cron.as_str().to_string(),
        mode: cron.mode.as_str().to_string(),
        timeout: Duration::from_secs(timeout_s),
        proxy: cron.proxy.clone(),
    };
    let report = agent.runner.run(job).await;
    if report.is_shutdown_refusal() {
        return;
    }
    if report.worker_flag != 1 {
        bump(&agent.stats.cron_failures);
    }
    log::info!(
        "task {task_id}: local cron {} done, worker_flag {}",
        cron.id,
        report.worker_flag
    );
    let result = JobResult {
        id: task_id.clone(),
        agent: agent.config.id.clone(),
        task_type: TaskType::Cron,
        mode: cron.mode,
        app: cron.app,
        func: cron.func,
        worker_flag: report.worker_flag,
        worker_message: report.worker_message,
        worker_costtime: report.costtime_ms,
        started_at: report.started_at,
        finished_at: report.finished_at,
        error: String::new(),
    };
    let outgoing = Outgoing {
        destination: Destination::Topic(routing::CENTER_RESULT.to_string()),
        correlation_id: Some(task_id.to_string()),
        result,
    };
    if deliver(&agent, &outgoing).await && cron.mode == Mode::P {
        publish_to_processor(&agent, &outgoing.result).await;
    }
}
