//! Counters behind `/metrics` (Prometheus text format). Cheap to bump from any thread.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    /// (endpoint, code) → calls; code is `ok` for successful calls.
    calls: Mutex<BTreeMap<(String, String), u64>>,
    /// outcome → tasks.
    tasks: Mutex<BTreeMap<&'static str, u64>>,
    /// Batch agents settled, by their final state (ok, failed, timeout, offline, …).
    batch_agents: Mutex<BTreeMap<&'static str, u64>>,
    /// Batches ended, by how (finished, stopped).
    batches: Mutex<BTreeMap<&'static str, u64>>,
}

/// How a task ended, as counted in `elves_tasks_total{outcome=…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOutcome {
    /// worker_flag 1
    Succeeded,
    /// worker_flag 0
    Failed,
    /// worker_flag -1: timeout, crash, not installed, bad output
    Errored,
    /// The agent refused or dropped it (expired).
    Rejected,
    /// No result arrived before the deadline.
    Lost,
}

impl TaskOutcome {
    pub fn from_worker_flag(worker_flag: i8) -> Self {
        match worker_flag {
            1 => TaskOutcome::Succeeded,
            0 => TaskOutcome::Failed,
            _ => TaskOutcome::Errored,
        }
    }

    fn label(self) -> &'static str {
        match self {
            TaskOutcome::Succeeded => "succeeded",
            TaskOutcome::Failed => "failed",
            TaskOutcome::Errored => "errored",
            TaskOutcome::Rejected => "rejected",
            TaskOutcome::Lost => "lost",
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters stay meaningful even if a thread panicked while holding the lock.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Metrics {
    pub fn record_call(&self, endpoint: &str, code: &str) {
        *lock(&self.calls)
            .entry((endpoint.to_string(), code.to_string()))
            .or_default() += 1;
    }

    pub fn record_task(&self, outcome: TaskOutcome) {
        *lock(&self.tasks).entry(outcome.label()).or_default() += 1;
    }

    /// `n` agents of a batch reached `state` (`ok`, `failed`, `offline`, …).
    pub fn record_batch_agents(&self, state: &'static str, n: u64) {
        if n > 0 {
            *lock(&self.batch_agents).entry(state).or_default() += n;
        }
    }

    /// A batch ended `finished` or `stopped`.
    pub fn record_batch_end(&self, state: &'static str) {
        *lock(&self.batches).entry(state).or_default() += 1;
    }

    pub fn render(&self, agents_online: usize, agents_known: usize) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "# HELP elves_api_calls_total v2 API calls by endpoint and result code."
        );
        let _ = writeln!(text, "# TYPE elves_api_calls_total counter");
        for ((endpoint, code), count) in lock(&self.calls).iter() {
            let _ = writeln!(
                text,
                "elves_api_calls_total{{endpoint=\"{endpoint}\",code=\"{code}\"}} {count}"
            );
        }
        let _ = writeln!(text, "# HELP elves_tasks_total Finished tasks by outcome.");
        let _ = writeln!(text, "# TYPE elves_tasks_total counter");
        for (outcome, count) in lock(&self.tasks).iter() {
            let _ = writeln!(text, "elves_tasks_total{{outcome=\"{outcome}\"}} {count}");
        }
        let _ = writeln!(
            text,
            "# HELP elves_batch_agents_total Agents of batches settled, by state."
        );
        let _ = writeln!(text, "# TYPE elves_batch_agents_total counter");
        for (state, count) in lock(&self.batch_agents).iter() {
            let _ = writeln!(
                text,
                "elves_batch_agents_total{{state=\"{state}\"}} {count}"
            );
        }
        let _ = writeln!(text, "# HELP elves_batches_total Batches ended, by state.");
        let _ = writeln!(text, "# TYPE elves_batches_total counter");
        for (state, count) in lock(&self.batches).iter() {
            let _ = writeln!(text, "elves_batches_total{{state=\"{state}\"}} {count}");
        }
        let _ = writeln!(
            text,
            "# HELP elves_agents_online Agents whose heartbeat is recent."
        );
        let _ = writeln!(text, "# TYPE elves_agents_online gauge");
        let _ = writeln!(text, "elves_agents_online {agents_online}");
        let _ = writeln!(
            text,
            "# HELP elves_agents_known Agents ever seen by this center."
        );
        let _ = writeln!(text, "# TYPE elves_agents_known gauge");
        let _ = writeln!(text, "elves_agents_known {agents_known}");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let metrics = Metrics::default();
        metrics.record_call("rt/exec", "ok");
        metrics.record_call("rt/exec", "ok");
        metrics.record_call("rt/exec", "414.1");
        metrics.record_task(TaskOutcome::from_worker_flag(1));
        let text = metrics.render(3, 4);
        assert!(text.contains("elves_api_calls_total{endpoint=\"rt/exec\",code=\"ok\"} 2"));
        assert!(text.contains("elves_api_calls_total{endpoint=\"rt/exec\",code=\"414.1\"} 1"));
        assert!(text.contains("elves_tasks_total{outcome=\"succeeded\"} 1"));
        assert!(text.contains("elves_agents_online 3"));
        metrics.record_batch_agents("ok", 2);
        metrics.record_batch_end("finished");
        let text = metrics.render(3, 4);
        assert!(text.contains("elves_batch_agents_total{state=\"ok\"} 2"));
        assert!(text.contains("elves_batches_total{state=\"finished\"} 1"));
    }
}
