//! Counters of what the agent did with the messages it received, for logs, tests and ops.
//!
//! Plain atomics: every task bumps them from its own tokio task, and nobody needs a consistent
//! cut across counters, so relaxed ordering is enough. This module does not export them anywhere.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct AgentStats {
    /// Messages taken from the agent's queue, whatever their kind.
    pub received: AtomicU64,
    /// Instructions whose worker was started.
    pub ran: AtomicU64,
    /// Unsigned, forged or unknown-key messages.
    pub refused_signature: AtomicU64,
    /// Instructions whose deadline had passed.
    pub expired: AtomicU64,
    /// Instructions whose id had been seen before.
    pub replayed: AtomicU64,
    /// Instructions whose worker was running when this agent last stopped: reported lost,
    /// not run again.
    pub lost: AtomicU64,
    /// Bodies that could not be decoded, and messages of an unknown kind.
    pub undecodable: AtomicU64,
    /// Results written to disk because the bus was unavailable.
    pub results_spooled: AtomicU64,
    /// Results the bus accepted (straight away or from the spool).
    pub results_published: AtomicU64,
    /// Accepted instructions not finished yet, waiting for a worker slot or running (a gauge,
    /// not a counter).
    pub running: AtomicU64,
    /// Agent-local cron firings whose worker was started.
    pub cron_runs: AtomicU64,
    /// Agent-local cron runs whose worker_flag was not 1.
    pub cron_failures: AtomicU64,
    /// Agent-local cron firings skipped because the previous run was still going.
    pub cron_skipped: AtomicU64,
}

/// A copy of the counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub received: u64,
    pub ran: u64,
    pub refused_signature: u64,
    pub expired: u64,
    pub replayed: u64,
    #[serde(default)]
    pub lost: u64,
    pub undecodable: u64,
    pub results_spooled: u64,
    pub results_published: u64,
    pub running: u64,
    #[serde(default)]
    pub cron_runs: u64,
    #[serde(default)]
    pub cron_failures: u64,
    #[serde(default)]
    pub cron_skipped: u64,
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl AgentStats {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            received: read(&self.received),
            ran: read(&self.ran),
            refused_signature: read(&self.refused_signature),
            expired: read(&self.expired),
            replayed: read(&self.replayed),
            lost: read(&self.lost),
            undecodable: read(&self.undecodable),
            results_spooled: read(&self.results_spooled),
            results_published: read(&self.results_published),
            running: read(&self.running),
            cron_runs: read(&self.cron_runs),
            cron_failures: read(&self.cron_failures),
            cron_skipped: read(&self.cron_skipped),
        }
    }

    /// Marks one task as in flight until the returned guard is dropped, so the gauge comes back
    /// down even when the task running the worker ends early.
    pub(crate) fn running_guard(&self) -> RunningGuard<'_> {
        self.running.fetch_add(1, Ordering::Relaxed);
        RunningGuard { stats: self }
    }
}

pub(crate) struct RunningGuard<'a> {
    stats: &'a AgentStats,
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.stats.running.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_copies_every_counter() {
        let stats = AgentStats::new();
        bump(&stats.received);
        bump(&stats.received);
        bump(&stats.refused_signature);
        bump(&stats.results_spooled);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.received, 2);
        assert_eq!(snapshot.refused_signature, 1);
        assert_eq!(snapshot.results_spooled, 1);
        assert_eq!(snapshot.ran, 0);
        let json = serde_json::to_value(snapshot).unwrap();
        assert_eq!(json["received"], 2);
    }

    #[test]
    fn the_running_gauge_follows_its_guards() {
        let stats = AgentStats::new();
        let first = stats.running_guard();
        let second = stats.running_guard();
        assert_eq!(stats.snapshot().running, 2);
        drop(first);
        assert_eq!(stats.snapshot().running, 1);
        drop(second);
        assert_eq!(stats.snapshot().running, 0);
    }
}
