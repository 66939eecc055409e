//! The heartbeat: who this agent is and which apps it has, to `center.heartbeat` at once,
//! then every `heartbeat_interval_ms`, and at once again after the installer changed an app.

use super::Agent;
use elves_shared::bus::{BusError, BusMessage, Destination};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{self, routing, Heartbeat};
use std::sync::Arc;

/// Heartbeats older than this many intervals are useless to a center: let the broker drop them
/// rather than pile them up while no center is consuming.
const HEARTBEAT_TTL_INTERVALS: u64 = 3;

/// Beats at once, then every `heartbeat_interval_ms`, until shutdown.
pub(super) async fn run(agent: Arc<Agent>) {
    let agent_id = agent.config.id.clone();
    let mut stopping = agent.stopping.clone();
    let mut ticker = tokio::time::interval(agent.config.heartbeat_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_failed = false;
    loop {
        tokio::select! {
            _ = stopping.wait_for(|stopping| *stopping) => return,
            _ = ticker.tick() => {}
            () = agent.beat_now.notified() => {}
        }
        match beat(&agent).await {
            Ok(()) => {
                if last_failed {
                    log::info!("agent {agent_id}: heartbeats go through again");
                }
                last_failed = false;
            }
            // Logged loudly once per outage, not every beat; the next beat retries.
            Err(err) if !last_failed => {
                log::warn!("agent {agent_id}: heartbeat not sent: {err}");
                last_failed = true;
            }
            Err(err) => log::debug!("agent {agent_id}: heartbeat not sent: {err}"),
        }
    }
}

async fn beat(agent: &Agent) -> Result<(), BusError> {
    let apps_dir = agent.config.apps_dir.clone();
    let (apps, packages) = tokio::task::spawn_blocking(move || {
        (
            crate::app_scan::installed_apps(&apps_dir),
            crate::installer::installed_packages(&apps_dir),
        )
    })
    .await
    .unwrap_or_default();
    let heartbeat = Heartbeat {
        agent: agent.config.id.clone(),
        ip: agent.config.ip(),
        asset: agent.config.asset.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        apps,
        sent_at: now_unix_ms(),
        interval_ms: agent.config.heartbeat_interval_ms,
        packages,
        labels: agent.config.labels.clone(),
    };
    let mut message = BusMessage::msgpack(wire::kind::HEARTBEAT, wire::encode(&heartbeat));
    // Of no use after a broker restart (the next beat says more): kept in the broker's memory
    // only, which spares it a disk write per beat, 1,000 a second for 10,000 agents at 10 s.
    message.transient = true;
    message.expiration_ms = Some(
        agent
            .config
            .heartbeat_interval_ms
            .saturating_mul(HEARTBEAT_TTL_INTERVALS),
    );
    let destination = Destination::Topic(routing::CENTER_HEARTBEAT.to_string());
    agent.bus.publish(&destination, message).await
}

#[cfg(test)]
mod tests {
    use crate::runtime::testing::*;
    use elves_shared::bus::QueueSpec;
    use elves_shared::wire::{self, routing, Heartbeat};
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn heartbeats_report_the_installed_apps() {
        let bus = inproc();
        let mut heartbeats = bus
            .consume(
                QueueSpec {
                    name: bus.queue_name("center.heartbeat"),
                    bindings: vec![routing::CENTER_HEARTBEAT.into()],
                    durable: true,
                },
                4,
            )
            .await
            .unwrap();
        let harness = Harness::start(bus, |config| {
            config.heartbeat_interval_ms = 100;
            config.asset = "rack-7".into();
        })
        .await;
        for _ in 0..2 {
            let delivery = tokio::time::timeout(WAIT, heartbeats.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(delivery.message.kind, wire::kind::HEARTBEAT);
            assert!(
                delivery.message.transient,
                "a heartbeat is not worth a disk write"
            );
            let heartbeat: Heartbeat = wire::decode(&delivery.message.body).unwrap();
            delivery.ack().await;
            assert_eq!(heartbeat.agent, harness.agent_id);
            assert_eq!(heartbeat.ip, "host-1");
            assert_eq!(heartbeat.asset, "rack-7");
            assert_eq!(heartbeat.version, env!("CARGO_PKG_VERSION"));
            assert_eq!(heartbeat.interval_ms, 100);
            let expected: BTreeMap<String, String> = [
                ("demo".to_string(), "1.2".to_string()),
                ("slow".to_string(), "0".to_string()),
            ]
            .into();
            assert_eq!(heartbeat.apps, expected);
        }
        harness.stop().await;
    }
}
