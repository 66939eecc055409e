//! The preparer: claims a batch of firings `prepare_ahead_ms` before their time, which stores
//! them as tasks of type `cron`, builds and signs their instructions, and publishes them at
//! their fire time. A firing that cannot be published is recorded as undelivered (410.1).
//!
//! Every use of the scheduler's dispatch helpers and all instruction building for crons is
//! here.

use super::Counters;
use crate::config::RtConfig;
use crate::dispatch::{deadline, signed_message, undelivered};
use crate::store::blocking::blocking;
use crate::store::{CronRow, Dispatch, FiringClaim, NewTask, Store, StoreError};
use elves_shared::bus::{BusMessage, Destination, SharedBus};
use elves_shared::crypto::InstructionSigner;
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{routing, AgentId, Instruction, JobResult, TaskId, TaskType};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Claims per database transaction. Large: a SQLite commit writes (and then checkpoints) every
/// page the transaction touched, and the firings of one fire time share many index pages, so
/// one transaction of 10,000 firings costs far less than five of 2,000.
pub(super) const CLAIM_BATCH: usize = 10_000;

/// A firing to prepare: a cron at the revision this center loaded, and when.
pub(super) struct Due {
    pub(super) row: Arc<CronRow>,
    pub(super) fire_time: u64,
}

/// Splits firings into claim batches: one fire time per batch, earliest first, at most `size`
/// firings each.
pub(super) fn batches(due: Vec<Due>, size: usize) -> Vec<Vec<Due>> {
    let size = size.max(1);
    let mut by_time: BTreeMap<u64, Vec<Due>> = BTreeMap::new();
    for firing in due {
        by_time.entry(firing.fire_time).or_default().push(firing);
    }
    let mut batches = Vec::new();
    for (_, mut firings) in by_time {
        while !firings.is_empty() {
            let rest = firings.split_off(firings.len().min(size));
            batches.push(std::mem::replace(&mut firings, rest));
        }
    }
    batches
}

/// Claims one batch of firings of the same fire time, signs what it won, and publishes at the
/// fire time.
pub(super) struct Preparer {
    pub(super) store: Store,
    pub(super) bus: SharedBus,
    pub(super) signer: Arc<InstructionSigner>,
    pub(super) instance: String,
    pub(super) rt: RtConfig,
    /// Agent ip or id → agent id, as of the last refresh.
    pub(super) agents: Arc<HashMap<String, AgentId>>,
    pub(super) counters: Arc<Counters>,
    /// One claim transaction at a time from this center (see `Cron::claim_turn`).
    pub(super) claim_turn: Arc<tokio::sync::Mutex<()>>,
}

/// Signed instructions of the firings won, the crons found stale, and how many firings were
/// not won.
type Prepared = (Vec<(Instruction, BusMessage)>, Vec<TaskId>, usize);

impl Preparer {
    /// Returns the crons that turned out stale (changed, stopped or deleted elsewhere).
    pub(super) async fn run(self, batch: Vec<Due>) -> Vec<TaskId> {
        let now = now_unix_ms();
        let looked_up = self
            .look_up_agents(unknown_addresses(&batch, &self.agents))
            .await;
        let claims: Vec<FiringClaim> = batch
            .iter()
            .filter_map(|due| {
                let address = &due.row.definition.ip;
                let Some(agent) = resolve_agent(address, &self.agents, &looked_up) else {
                    log::error!("cron {}: bad agent {address:?}", due.row.id);
                    return None;
                };
                Some(claim_of(due, agent, &self.instance, &self.rt, now))
            })
            .collect();
        let (messages, stale, n_lost) = match self.claim_and_sign(claims, now).await {
            Ok(prepared) => prepared,
            Err(err) => {
                log::error!("cron: claiming {} firing(s): {err}", batch.len());
                return Vec::new();
            }
        };
        let n_elsewhere = n_lost.saturating_sub(stale.len());
        self.counters
            .claimed_elsewhere
            .fetch_add(n_elsewhere as u64, Ordering::Relaxed);
        let Some(fire_time) = batch.first().map(|due| due.fire_time) else {
            return stale;
        };
        let wait = fire_time.saturating_sub(now_unix_ms());
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        self.publish(messages).await;
        stale
    }

    /// Looks up in the database the addresses the cached agents do not know (an agent newer
    /// than the last refresh).
    async fn look_up_agents(&self, unknown: BTreeSet<String>) -> HashMap<String, AgentId> {
        if unknown.is_empty() {
            return HashMap::new();
        }
        let store = self.store.clone();
        let looked_up = blocking(move || {
            let mut found = HashMap::new();
            for address in unknown {
                if let Some(row) = store.get_agent_by_ip_or_id(&address)? {
                    found.insert(address, row.id);
                }
            }
            Ok(found)
        })
        .await;
        looked_up.unwrap_or_else(|err| {
            log::warn!("cron: looking up agents: {err}");
            HashMap::new()
        })
    }

    /// Claims and signs on the blocking pool: for thousands of firings both take a while.
    async fn claim_and_sign(
        &self,
        claims: Vec<FiringClaim>,
        now: u64,
    ) -> Result<Prepared, StoreError> {
        let store = self.store.clone();
        let instance = self.instance.clone();
        let signer = self.signer.clone();
        let turn = self.claim_turn.clone().lock_owned().await;
        blocking(move || {
            let claiming = std::time::Instant::now();
            let outcome = store.claim_cron_firings(&instance, &claims, now);
            drop(turn);
            let outcome = outcome?;
            log::debug!(
                "cron: claimed {} of {} firing(s) in {:?}",
                outcome.won.len(),
                claims.len(),
                claiming.elapsed()
            );
            let n_lost = claims.len() - outcome.won.len();
            let messages = signed_won(&signer, &claims, &outcome.won);
            Ok((messages, outcome.stale, n_lost))
        })
        .await
    }

    /// Publishes every message at once; records those that could not be sent as undelivered.
    async fn publish(&self, messages: Vec<(Instruction, BusMessage)>) {
        let publishes = messages.into_iter().map(|(instruction, message)| {
            let bus = self.bus.clone();
            async move {
                let destination = Destination::Topic(routing::agent(&instruction.agent));
                match bus.publish(&destination, message).await {
                    Ok(()) => None,
                    Err(err) => Some((instruction, err.to_string())),
                }
            }
        });
        let outcomes = futures::future::join_all(publishes).await;
        let n_sent = outcomes.iter().filter(|outcome| outcome.is_none()).count();
        self.counters
            .fired
            .fetch_add(n_sent as u64, Ordering::Relaxed);
        let failures: Vec<JobResult> = outcomes
            .into_iter()
            .flatten()
            .map(|(instruction, err)| {
                log::warn!(
                    "cron task {}: could not send to {}: {err}",
                    instruction.id,
                    instruction.agent
                );
                undelivered(&instruction, &err)
            })
            .collect();
        if failures.is_empty() {
            return;
        }
        self.counters
            .publish_failures
            .fetch_add(failures.len() as u64, Ordering::Relaxed);
        let store = self.store.clone();
        let stored = blocking(move || {
            let now = now_unix_ms();
            for failure in &failures {
                store.record_result(failure, now)?;
                store.record_cron_result(failure)?;
            }
            Ok(())
        })
        .await;
        if let Err(err) = stored {
            log::error!("cron: recording undelivered firings: {err}");
        }
    }
}

/// The agent addresses of `batch` that `cached` does not know.
fn unknown_addresses(batch: &[Due], cached: &HashMap<String, AgentId>) -> BTreeSet<String> {
    batch
        .iter()
        .map(|due| due.row.definition.ip.clone())
        .filter(|address| !cached.contains_key(address))
        .collect()
}

/// The agent a cron's address names: a cached agent, else one just looked up, else the address
/// itself taken as an agent id; `None` when it is not even a valid agent id.
fn resolve_agent(
    address: &str,
    cached: &HashMap<String, AgentId>,
    looked_up: &HashMap<String, AgentId>,
) -> Option<AgentId> {
    match cached.get(address).or_else(|| looked_up.get(address)) {
        Some(agent) => Some(agent.clone()),
        None => AgentId::parse(address).ok(),
    }
}

/// The claim of one firing: a new task of type `cron` for `agent`, dispatched at the fire time.
fn claim_of(due: &Due, agent: AgentId, instance: &str, rt: &RtConfig, now: u64) -> FiringClaim {
    let definition = &due.row.definition;
    FiringClaim {
        cron_id: due.row.id.clone(),
        revision: due.row.revision,
        fire_time: due.fire_time,
        task: NewTask {
            id: TaskId::random(),
            queue_id: None,
            task_type: TaskType::Cron,
            agent,
            app: definition.app.clone(),
            func: definition.func.clone(),
            param: definition.param.clone(),
            timeout_s: definition.timeout_s,
            proxy: definition.proxy.clone(),
            mode: definition.mode,
            depend_task_id: None,
            created_at: now,
        },
        dispatch: Dispatch {
            center_instance: instance.to_string(),
            dispatched_at: due.fire_time,
            deadline: deadline(due.fire_time, definition.timeout_s, rt),
        },
    }
}

/// The signed instructions of the claims at the indices `won`, in that order.
fn signed_won(
    signer: &InstructionSigner,
    claims: &[FiringClaim],
    won: &[usize],
) -> Vec<(Instruction, BusMessage)> {
    won.iter()
        .filter_map(|index| claims.get(*index))
        .map(|claim| {
            let instruction = instruction_of(claim);
            let message = signed_message(signer, &instruction, None);
            (instruction, message)
        })
        .collect()
}

/// A won firing's instruction: issued at its fire time, like its stored task.
fn instruction_of(claim: &FiringClaim) -> Instruction {
    crate::dispatch::instruction(&claim.task, &claim.dispatch)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cron_row, T0};
    use super::*;
    use crate::store::testing::TestDatabase;
    use elves_shared::bus::testing::PublishOutageBus;
    use elves_shared::bus::{Bus, QueueSpec};
    use elves_shared::crypto::InstructionVerifier;
    use elves_shared::wire::{self, kind, Mode};

    const SECOND: u64 = 1_000;

    fn rt() -> RtConfig {
        RtConfig {
            default_timeout_s: 90,
            kill_grace_s: 5,
            dispatch_allowance_s: 60,
        }
    }

    fn due(n: u64, fire_time: u64) -> Due {
        Due {
            row: Arc::new(cron_row(n, "0/1 * * * * ?", "agent-1")),
            fire_time,
        }
    }

    fn agent(name: &str) -> AgentId {
        AgentId::parse(name).unwrap()
    }

    #[test]
    fn batches_hold_one_fire_time_each_earliest_first_and_at_most_the_batch_size() {
        let firings = vec![
            due(1, T0 + 2 * SECOND),
            due(2, T0 + SECOND),
            due(3, T0 + 2 * SECOND),
            due(4, T0 + 2 * SECOND),
            due(5, T0 + SECOND),
        ];
        let batches = batches(firings, 2);
        let shape: Vec<(u64, usize)> = batches
            .iter()
            .map(|batch| {
                assert!(batch.iter().all(|due| due.fire_time == batch[0].fire_time));
                (batch[0].fire_time, batch.len())
            })
            .collect();
        assert_eq!(
            shape,
            vec![(T0 + SECOND, 2), (T0 + 2 * SECOND, 2), (T0 + 2 * SECOND, 1)]
        );
        let order: Vec<TaskId> = batches
            .iter()
            .flatten()
            .map(|due| due.row.id.clone())
            .collect();
        let id = |n| cron_row(n, "", "").id;
        assert_eq!(order, vec![id(2), id(5), id(1), id(3), id(4)]);
    }

    #[test]
    fn no_firings_make_no_batches() {
        assert!(batches(Vec::new(), CLAIM_BATCH).is_empty());
    }

    #[test]
    fn only_addresses_unknown_to_the_cache_are_looked_up() {
        let batch = vec![
            Due {
                row: Arc::new(cron_row(1, "0/1 * * * * ?", "10.0.0.7")),
                fire_time: T0,
            },
            Due {
                row: Arc::new(cron_row(2, "0/1 * * * * ?", "10.0.0.8")),
                fire_time: T0,
            },
            Due {
                row: Arc::new(cron_row(3, "0/1 * * * * ?", "10.0.0.8")),
                fire_time: T0,
            },
        ];
        let cached = HashMap::from([("10.0.0.7".to_string(), agent("agent-7"))]);
        let unknown = unknown_addresses(&batch, &cached);
        assert_eq!(unknown, BTreeSet::from(["10.0.0.8".to_string()]));
    }

    #[test]
    fn an_address_is_a_cached_agent_then_a_looked_up_one_then_an_agent_id() {
        let cached = HashMap::from([("10.0.0.7".to_string(), agent("agent-7"))]);
        let looked_up = HashMap::from([
            ("10.0.0.7".to_string(), agent("stale")),
            ("10.0.0.8".to_string(), agent("agent-8")),
        ]);
        let resolve = |address| resolve_agent(address, &cached, &looked_up);
        assert_eq!(resolve("10.0.0.7"), Some(agent("agent-7")));
        assert_eq!(resolve("10.0.0.8"), Some(agent("agent-8")));
        assert_eq!(resolve("agent-9"), Some(agent("agent-9")));
        assert_eq!(resolve("not an agent"), None);
    }

    #[test]
    fn the_claim_is_a_cron_task_dispatched_at_its_fire_time() {
        let firing = due(1, T0 + 5 * SECOND);
        let claim = claim_of(&firing, agent("agent-7"), "center-a", &rt(), T0);
        assert_eq!(claim.cron_id, firing.row.id);
        assert_eq!(claim.revision, 1);
        assert_eq!(claim.fire_time, T0 + 5 * SECOND);
        let task = &claim.task;
        assert_eq!(task.task_type, TaskType::Cron);
        assert_eq!(task.agent, agent("agent-7"));
        assert_eq!(
            (task.app.as_str(), task.func.as_str(), task.param.as_str()),
            ("backup", "run", "{\"target\":\"/srv\"}")
        );
        assert_eq!((task.timeout_s, task.mode), (30, Mode::P));
        assert_eq!(task.proxy, "proxy-1");
        assert_eq!(
            (task.queue_id.clone(), task.depend_task_id.clone()),
            (None, None)
        );
        assert_eq!(task.created_at, T0);
        assert_eq!(claim.dispatch.center_instance, "center-a");
        assert_eq!(claim.dispatch.dispatched_at, T0 + 5 * SECOND);
        // Timeout 30 s, kill grace 5 s, dispatch allowance 60 s.
        assert_eq!(claim.dispatch.deadline, T0 + 5 * SECOND + 95 * SECOND);
        let again = claim_of(&firing, agent("agent-7"), "center-a", &rt(), T0);
        assert_ne!(again.task.id, task.id, "every firing is a task of its own");
    }

    #[test]
    fn the_instruction_is_the_claimed_task_issued_at_its_fire_time() {
        let claim = claim_of(
            &due(1, T0 + SECOND),
            agent("agent-7"),
            "center-a",
            &rt(),
            T0,
        );
        let instruction = instruction_of(&claim);
        assert_eq!(
            instruction,
            Instruction {
                id: claim.task.id.clone(),
                agent: agent("agent-7"),
                task_type: TaskType::Cron,
                mode: Mode::P,
                app: "backup".into(),
                func: "run".into(),
                param: "{\"target\":\"/srv\"}".into(),
                timeout: 30,
                proxy: "proxy-1".into(),
                issued_at: T0 + SECOND,
                deadline: T0 + SECOND + 95 * SECOND,
            }
        );
    }

    #[test]
    fn only_the_firings_won_are_signed_in_the_order_won() {
        let signer = InstructionSigner::generate("center");
        let claims: Vec<FiringClaim> = (1..=3)
            .map(|n| claim_of(&due(n, T0), agent("agent-7"), "center-a", &rt(), T0))
            .collect();
        let signed = signed_won(&signer, &claims, &[2, 0, 7]);
        let ids: Vec<TaskId> = signed.iter().map(|(i, _)| i.id.clone()).collect();
        assert_eq!(
            ids,
            vec![claims[2].task.id.clone(), claims[0].task.id.clone()]
        );
        let mut verifier = InstructionVerifier::new();
        verifier
            .add_public_key_hex("center", &signer.public_key_hex())
            .unwrap();
        for (instruction, message) in &signed {
            verifier
                .verify(
                    &message.body,
                    message.key_id.as_deref(),
                    message.sig.as_deref(),
                )
                .unwrap();
            assert_eq!(message.kind, kind::INSTRUCTION);
            let sent: Instruction = wire::decode(&message.body).unwrap();
            assert_eq!(&sent, instruction);
            assert_eq!(
                message.reply_to, None,
                "a cron's result goes to the task queue"
            );
        }
    }

    /// A store with one cron on `agent-1`, firing every second, and a bus whose publishes
    /// fail while `down`, with a consumer of the agent's topic.
    async fn fixture(
        down: bool,
    ) -> (
        TestDatabase,
        Store,
        Arc<PublishOutageBus>,
        elves_shared::bus::Consumer,
        CronRow,
    ) {
        let database = TestDatabase::sqlite().unwrap();
        let store = Store::open(&database.url).unwrap();
        let row = cron_row(1, "0/1 * * * * ?", "agent-1");
        store
            .create_cron(
                &row.id,
                &row.definition,
                &row.source,
                true,
                "ops",
                now_unix_ms(),
            )
            .unwrap();
        let row = store.get_cron(&row.id).unwrap().unwrap();
        let bus = Arc::new(PublishOutageBus::new("test", down));
        let consumer = bus
            .consume(
                QueueSpec {
                    name: bus.queue_name("agent.agent-1"),
                    bindings: vec![routing::agent(&agent("agent-1"))],
                    durable: true,
                },
                16,
            )
            .await
            .unwrap();
        (database, store, bus, consumer, row)
    }

    fn preparer(store: &Store, bus: SharedBus, counters: &Arc<Counters>) -> Preparer {
        Preparer {
            store: store.clone(),
            bus,
            signer: Arc::new(InstructionSigner::generate("center")),
            instance: "center-a".into(),
            rt: rt(),
            agents: Arc::new(HashMap::new()),
            counters: counters.clone(),
            claim_turn: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The next whole second at least `ahead_ms` from now: a firing of the fixture's cron.
    fn next_second(ahead_ms: u64) -> u64 {
        (now_unix_ms() + ahead_ms).div_ceil(SECOND) * SECOND
    }

    #[actix_rt::test]
    async fn a_claimed_firing_is_published_to_its_agent_at_its_fire_time() {
        let (_database, store, bus, mut consumer, row) = fixture(false).await;
        let counters = Arc::new(Counters::default());
        let fire_time = next_second(100);
        let batch = vec![Due {
            row: Arc::new(row),
            fire_time,
        }];
        let stale = preparer(&store, bus, &counters).run(batch).await;
        assert!(stale.is_empty());
        assert!(now_unix_ms() >= fire_time, "not published before its time");
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("an instruction")
            .expect("the queue is open");
        let instruction: Instruction = wire::decode(&delivery.message.body).unwrap();
        assert_eq!(instruction.task_type, TaskType::Cron);
        assert_eq!(instruction.issued_at, fire_time);
        let task = store.get_task(&instruction.id).unwrap().expect("stored");
        assert_eq!(task.dispatched_at, Some(fire_time));
        assert_eq!(counters.fired.load(Ordering::Relaxed), 1);
        assert_eq!(counters.publish_failures.load(Ordering::Relaxed), 0);
    }

    #[actix_rt::test]
    async fn a_firing_claimed_twice_is_published_once() {
        let (_database, store, bus, mut consumer, row) = fixture(false).await;
        let counters = Arc::new(Counters::default());
        let fire_time = next_second(0);
        let row = Arc::new(row);
        for _ in 0..2 {
            let batch = vec![Due {
                row: row.clone(),
                fire_time,
            }];
            preparer(&store, bus.clone(), &counters).run(batch).await;
        }
        assert_eq!(counters.fired.load(Ordering::Relaxed), 1);
        assert_eq!(counters.claimed_elsewhere.load(Ordering::Relaxed), 1);
        assert!(consumer.next().await.is_some());
        assert!(consumer.try_next().is_none(), "sent once");
    }

    #[actix_rt::test]
    async fn a_firing_that_cannot_be_published_is_recorded_undelivered() {
        let (_database, store, bus, mut consumer, row) = fixture(true).await;
        let counters = Arc::new(Counters::default());
        let fire_time = next_second(0);
        let cron_id = row.id.clone();
        let batch = vec![Due {
            row: Arc::new(row),
            fire_time,
        }];
        preparer(&store, bus, &counters).run(batch).await;
        assert_eq!(counters.fired.load(Ordering::Relaxed), 0);
        assert_eq!(counters.publish_failures.load(Ordering::Relaxed), 1);
        assert!(consumer.try_next().is_none(), "nothing was sent");
        let cron = store.get_cron(&cron_id).unwrap().unwrap();
        assert_eq!(cron.last_exec_time, Some(fire_time));
        let result = cron.last_exec_result.unwrap_or_default();
        assert!(result.contains("[410.1]"), "{result}");
    }

    #[actix_rt::test]
    async fn a_firing_of_an_older_revision_is_stale_and_not_published() {
        let (_database, store, bus, mut consumer, row) = fixture(false).await;
        let counters = Arc::new(Counters::default());
        let mut old = row.clone();
        old.revision -= 1;
        let batch = vec![Due {
            row: Arc::new(old),
            fire_time: next_second(0),
        }];
        let stale = preparer(&store, bus, &counters).run(batch).await;
        assert_eq!(stale, vec![row.id]);
        assert_eq!(counters.fired.load(Ordering::Relaxed), 0);
        assert_eq!(counters.claimed_elsewhere.load(Ordering::Relaxed), 0);
        assert!(consumer.try_next().is_none(), "nothing was sent");
    }
}
