//! Heartbeat: the registry of agents, from their heartbeats.
//! It answers "may I send work to this agent now?" without waiting out a task's timeout.
//! It keeps its state in memory and never touches the bus itself: root feeds it.

use actix::prelude::*;
use elves_shared::wire::{AgentId, Heartbeat as HeartbeatMessage};
use std::collections::{BTreeMap, HashMap};

/// An agent's heartbeat arrived (at the center's clock `received_at`, unix ms).
#[derive(Message)]
#[rtype(result = "()")]
pub struct HeartbeatReceived {
    pub heartbeat: HeartbeatMessage,
    pub received_at: u64,
}

/// Where can work for `address` (an agent ip or id) go, at the center's clock `now`?
#[derive(Message)]
#[rtype(result = "AgentLookup")]
pub struct LookupAgent {
    pub address: String,
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, MessageResponse)]
pub enum AgentLookup {
    Unknown,
    Offline { agent: AgentId, last_seen: u64 },
    Online { agent: AgentId },
}

#[derive(Message)]
#[rtype(result = "HeartbeatState")]
pub struct GetState {
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, MessageResponse, serde::Serialize)]
pub struct HeartbeatState {
    pub agents_known: usize,
    pub agents_online: usize,
    /// Online agents by id, with the apps they reported.
    pub online: BTreeMap<String, BTreeMap<String, String>>,
}

struct AgentEntry {
    last: HeartbeatMessage,
    last_seen: u64,
}

pub struct Heartbeat {
    agents: HashMap<AgentId, AgentEntry>,
    /// Agents are addressed by ip as well as by id; the latest heartbeat owns an ip.
    by_ip: HashMap<String, AgentId>,
    offline_after_missed_beats: u32,
}

impl Heartbeat {
    pub fn new(offline_after_missed_beats: u32) -> Self {
        Heartbeat {
            agents: HashMap::new(),
            by_ip: HashMap::new(),
            offline_after_missed_beats,
        }
    }

    fn resolve(&self, address: &str) -> Option<&AgentEntry> {
        if let Some(entry) = AgentId::parse(address)
            .ok()
            .and_then(|id| self.agents.get(&id))
        {
            return Some(entry);
        }
        self.by_ip.get(address).and_then(|id| self.agents.get(id))
    }

    fn is_online(&self, entry: &AgentEntry, now: u64) -> bool {
        is_online(
            entry.last_seen,
            entry.last.interval_ms,
            self.offline_after_missed_beats,
            now,
        )
    }
}

impl Actor for Heartbeat {
    type Context = Context<Self>;
}

impl Supervised for Heartbeat {
    fn restarting(&mut self, _: &mut Context<Self>) {
        log::warn!("heartbeat: restarting; agents reappear with their next heartbeat");
        self.agents.clear();
        self.by_ip.clear();
    }
}

impl Handler<HeartbeatReceived> for Heartbeat {
    type Result = ();

    fn handle(&mut self, msg: HeartbeatReceived, _: &mut Context<Self>) {
        let agent = msg.heartbeat.agent.clone();
        if !self.agents.contains_key(&agent) {
            log::info!("agent {agent}: first heartbeat (ip {})", msg.heartbeat.ip);
        }
        self.by_ip.insert(msg.heartbeat.ip.clone(), agent.clone());
        self.agents.insert(
            agent,
            AgentEntry {
                last: msg.heartbeat,
                last_seen: msg.received_at,
            },
        );
    }
}

impl Handler<LookupAgent> for Heartbeat {
    type Result = AgentLookup;

    fn handle(&mut self, msg: LookupAgent, _: &mut Context<Self>) -> AgentLookup {
        match self.resolve(&msg.address) {
            None => AgentLookup::Unknown,
            Some(entry) if self.is_online(entry, msg.now) => AgentLookup::Online {
                agent: entry.last.agent.clone(),
            },
            Some(entry) => AgentLookup::Offline {
                agent: entry.last.agent.clone(),
                last_seen: entry.last_seen,
            },
        }
    }
}

impl Handler<GetState> for Heartbeat {
    type Result = HeartbeatState;

    fn handle(&mut self, msg: GetState, _: &mut Context<Self>) -> HeartbeatState {
        let online: BTreeMap<String, BTreeMap<String, String>> = self
            .agents
            .iter()
            .filter(|(_, entry)| self.is_online(entry, msg.now))
            .map(|(id, entry)| (id.to_string(), entry.last.apps.clone()))
            .collect();
        HeartbeatState {
            agents_known: self.agents.len(),
            agents_online: online.len(),
            online,
        }
    }
}

/// An agent is online until it has missed `missed_beats` of its own intervals.
pub fn is_online(last_seen: u64, interval_ms: u64, missed_beats: u32, now: u64) -> bool {
    let allowance = interval_ms.max(1).saturating_mul(u64::from(missed_beats));
    now.saturating_sub(last_seen) <= allowance
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_until_missed_beats() {
        assert!(is_online(1_000, 100, 3, 1_300));
        assert!(!is_online(1_000, 100, 3, 1_301));
        assert!(
            is_online(1_000, 100, 3, 900),
            "a clock step backwards is not offline"
        );
    }

    #[actix_rt::test]
    async fn lookup_by_id_and_ip() {
        let addr = Heartbeat::new(3).start();
        let heartbeat = HeartbeatMessage {
            agent: AgentId::parse("a1").unwrap(),
            ip: "10.1.1.1".into(),
            asset: String::new(),
            version: "0".into(),
            apps: BTreeMap::new(),
            sent_at: 0,
            interval_ms: 100,
            packages: BTreeMap::new(),
            labels: BTreeMap::new(),
        };
        let unknown = addr
            .send(LookupAgent {
                address: "a1".into(),
                now: 0,
            })
            .await
            .unwrap();
        assert_eq!(unknown, AgentLookup::Unknown);
        addr.send(HeartbeatReceived {
            heartbeat,
            received_at: 1_000,
        })
        .await
        .unwrap();
        let by_ip = addr
            .send(LookupAgent {
                address: "10.1.1.1".into(),
                now: 1_100,
            })
            .await
            .unwrap();
        assert!(matches!(by_ip, AgentLookup::Online { .. }));
        let later = addr
            .send(LookupAgent {
                address: "a1".into(),
                now: 2_000,
            })
            .await
            .unwrap();
        assert!(matches!(
            later,
            AgentLookup::Offline {
                last_seen: 1_000,
                ..
            }
        ));
    }
}
