//! The instruction guard: decides whether a received instruction may run (SPEC §5).
//!
//! In order: the Ed25519 signature over the exact body bytes (headers `sig` and `key_id`), the
//! body decodes, the instruction is addressed to this agent, its id was not seen before, and its
//! deadline has not passed. Seen ids are remembered until their deadline and then forgotten:
//! after the deadline a replay is refused as expired anyway, so memory stays bounded by the ids
//! of the instructions that are still live. The runtime also hands it, at start, the ids of
//! tasks an earlier run of the agent finished (see `done_journal`), so that an instruction the
//! broker delivers again after a restart does not run twice.
//!
//! An `instructions` message carries several instructions under one signature: it is refused
//! as a whole when the signature, the body or any instruction's addressee is wrong, and
//! otherwise each instruction gets its own verdict.
//!
//! Pure: no I/O, no clock (the caller passes `now`), no counters; the runtime acts on the verdict.

use elves_shared::bus::BusMessage;
use elves_shared::crypto::{InstructionVerifier, VerifyError};
use elves_shared::wire::{self, AgentId, AppSet, Cancel, Instruction, InstructionBatch, TaskId};
use std::collections::{BTreeSet, HashMap};

/// What to do with one received instruction.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Authentic, fresh and new: run it.
    Run(Instruction),
    /// Not to be trusted or not readable: reject it without requeue.
    Refused(Refusal),
    /// Authentic but its deadline passed before it could run: report it as expired.
    Expired(Instruction),
    /// Authentic but already received (a redelivery or a replay): drop it.
    Replayed(TaskId),
}

/// Why a message was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Signature(VerifyError),
    #[error("undecodable body: {0}")]
    Undecodable(String),
    /// Correctly signed, but for another agent: someone re-routed it, so it is refused like a
    /// forgery rather than run on the wrong host.
    #[error("instruction is addressed to agent {0}")]
    WrongAgent(AgentId),
}

pub struct InstructionGuard {
    verifier: InstructionVerifier,
    agent_id: AgentId,
    /// Seen ids → their deadline.
    seen: HashMap<TaskId, u64>,
    /// The same ids ordered by deadline, so that forgetting is cheap.
    by_deadline: BTreeSet<(u64, TaskId)>,
}

impl InstructionGuard {
    pub fn new(verifier: InstructionVerifier, agent_id: AgentId) -> Self {
        InstructionGuard {
            verifier,
            agent_id,
            seen: HashMap::new(),
            by_deadline: BTreeSet::new(),
        }
    }

    /// Judges one `instruction` message received at `now_ms` (unix ms).
    pub fn check(&mut self, message: &BusMessage, now_ms: u64) -> Verdict {
        self.forget_until(now_ms);
        if let Err(refusal) = self.verify(message) {
            return Verdict::Refused(refusal);
        }
        let instruction: Instruction = match wire::decode(&message.body) {
            Ok(instruction) => instruction,
            Err(err) => return Verdict::Refused(Refusal::Undecodable(err.to_string())),
        };
        if instruction.agent != self.agent_id {
            return Verdict::Refused(Refusal::WrongAgent(instruction.agent));
        }
        self.judge(instruction, now_ms)
    }

    /// Judges one `instructions` message received at `now_ms`: one verdict per instruction,
    /// in order, or one refusal for the whole message.
    pub fn check_batch(
        &mut self,
        message: &BusMessage,
        now_ms: u64,
    ) -> Result<Vec<Verdict>, Refusal> {
        self.forget_until(now_ms);
        self.verify(message)?;
        let batch: InstructionBatch =
            wire::decode(&message.body).map_err(|err| Refusal::Undecodable(err.to_string()))?;
        if batch.instructions.is_empty() {
            return Err(Refusal::Undecodable(
                "an instructions message with no instruction".to_string(),
            ));
        }
        if let Some(stray) = batch
            .instructions
            .iter()
            .find(|instruction| instruction.agent != self.agent_id)
        {
            return Err(Refusal::WrongAgent(stray.agent.clone()));
        }
        Ok(batch
            .instructions
            .into_iter()
            .map(|instruction| self.judge(instruction, now_ms))
            .collect())
    }

    /// Remembers `id` as seen until `deadline`: for the tasks an earlier run of this agent
    /// finished.
    pub fn remember(&mut self, id: TaskId, deadline: u64) {
        if self.seen.insert(id.clone(), deadline).is_none() {
            self.by_deadline.insert((deadline, id));
        }
    }

    fn judge(&mut self, instruction: Instruction, now_ms: u64) -> Verdict {
        if self.seen.contains_key(&instruction.id) {
            return Verdict::Replayed(instruction.id);
        }
        if instruction.deadline < now_ms {
            return Verdict::Expired(instruction);
        }
        self.remember(instruction.id.clone(), instruction.deadline);
        Verdict::Run(instruction)
    }

    /// Verifies and decodes a `cancel` message; it is signed with the same header scheme as an
    /// instruction, so that broker access alone cannot stop tasks either.
    pub fn check_cancel(&self, message: &BusMessage) -> Result<Cancel, Refusal> {
        self.verify(message)?;
        wire::decode(&message.body).map_err(|err| Refusal::Undecodable(err.to_string()))
    }

    /// Verifies and decodes an `app_set` message: signed like an instruction and addressed to
    /// this agent. `Ok(None)` for a set past its deadline (stale: ignored, the next heartbeat
    /// brings a fresh one).
    pub fn check_app_set(
        &self,
        message: &BusMessage,
        now_ms: u64,
    ) -> Result<Option<AppSet>, Refusal> {
        self.verify(message)?;
        let set: AppSet =
            wire::decode(&message.body).map_err(|err| Refusal::Undecodable(err.to_string()))?;
        if set.agent != self.agent_id {
            return Err(Refusal::WrongAgent(set.agent));
        }
        if set.deadline < now_ms {
            return Ok(None);
        }
        Ok(Some(set))
    }

    /// How many ids are remembered now (for tests and ops).
    pub fn n_remembered(&self) -> usize {
        self.seen.len()
    }

    fn verify(&self, message: &BusMessage) -> Result<(), Refusal> {
        self.verifier
            .verify(
                &message.body,
                message.key_id.as_deref(),
                message.sig.as_deref(),
            )
            .map_err(Refusal::Signature)
    }

    /// Forgets the ids whose deadline is before `now_ms`: a replay of those is expired anyway.
    fn forget_until(&mut self, now_ms: u64) {
        while let Some((deadline, _)) = self.by_deadline.first() {
            if *deadline >= now_ms {
                break;
            }
            if let Some((_, id)) = self.by_deadline.pop_first() {
                self.seen.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elves_shared::crypto::InstructionSigner;
    use elves_shared::wire::{Mode, TaskType};

    const NOW: u64 = 1_700_000_000_000;

    fn setup() -> (InstructionSigner, InstructionGuard) {
        let signer = InstructionSigner::generate("center");
        let mut verifier = InstructionVerifier::new();
        verifier
            .add_public_key_hex("center", &signer.public_key_hex())
            .unwrap();
        let guard = InstructionGuard::new(verifier, AgentId::parse("host-1").unwrap());
        (signer, guard)
    }

    fn instruction(id: &str, deadline: u64) -> Instruction {
        Instruction {
            id: TaskId::parse(id).unwrap(),
            agent: AgentId::parse("host-1").unwrap(),
            task_type: TaskType::Queue,
            mode: Mode::NP,
            app: "apptest".into(),
            func: "hello".into(),
            param: String::new(),
            timeout: 90,
            proxy: String::new(),
            issued_at: NOW - 1_000,
            deadline,
        }
    }

    fn signed(signer: &InstructionSigner, instruction: &Instruction) -> BusMessage {
        let body = wire::encode(instruction);
        let mut message = BusMessage::msgpack(wire::kind::INSTRUCTION, body);
        message.sig = Some(signer.sign(&message.body));
        message.key_id = Some(signer.key_id().to_string());
        message
    }

    #[test]
    fn a_signed_fresh_instruction_runs() {
        let (signer, mut guard) = setup();
        let sent = instruction("0000000000000001", NOW + 60_000);
        let verdict = guard.check(&signed(&signer, &sent), NOW);
        assert_eq!(verdict, Verdict::Run(sent));
        assert_eq!(guard.n_remembered(), 1);
    }

    #[test]
    fn a_forged_instruction_is_refused() {
        let (_, mut guard) = setup();
        let forger = InstructionSigner::generate("center");
        let sent = instruction("0000000000000001", NOW + 60_000);
        let verdict = guard.check(&signed(&forger, &sent), NOW);
        assert_eq!(
            verdict,
            Verdict::Refused(Refusal::Signature(VerifyError::BadSignature))
        );
        assert_eq!(guard.n_remembered(), 0);
    }

    #[test]
    fn an_unsigned_or_unknown_key_instruction_is_refused() {
        let (signer, mut guard) = setup();
        let sent = instruction("0000000000000001", NOW + 60_000);
        let mut unsigned = signed(&signer, &sent);
        unsigned.sig = None;
        assert_eq!(
            guard.check(&unsigned, NOW),
            Verdict::Refused(Refusal::Signature(VerifyError::Unsigned))
        );
        let mut unknown_key = signed(&signer, &sent);
        unknown_key.key_id = Some("other".into());
        assert_eq!(
            guard.check(&unknown_key, NOW),
            Verdict::Refused(Refusal::Signature(VerifyError::UnknownKey("other".into())))
        );
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let (signer, mut guard) = setup();
        let mut message = signed(&signer, &instruction("0000000000000001", NOW + 60_000));
        let tampered = instruction("0000000000000002", NOW + 60_000);
        message.body = wire::encode(&tampered);
        assert_eq!(
            guard.check(&message, NOW),
            Verdict::Refused(Refusal::Signature(VerifyError::BadSignature))
        );
    }

    #[test]
    fn signed_garbage_is_undecodable() {
        let (signer, mut guard) = setup();
        let mut message = BusMessage::msgpack(wire::kind::INSTRUCTION, b"\xffnot msgpack".to_vec());
        message.sig = Some(signer.sign(&message.body));
        message.key_id = Some("center".into());
        assert!(matches!(
            guard.check(&message, NOW),
            Verdict::Refused(Refusal::Undecodable(_))
        ));
    }

    #[test]
    fn an_instruction_for_another_agent_is_refused() {
        let (signer, mut guard) = setup();
        let mut sent = instruction("0000000000000001", NOW + 60_000);
        sent.agent = AgentId::parse("host-2").unwrap();
        assert_eq!(
            guard.check(&signed(&signer, &sent), NOW),
            Verdict::Refused(Refusal::WrongAgent(AgentId::parse("host-2").unwrap()))
        );
    }

    #[test]
    fn a_passed_deadline_is_expired_and_the_deadline_itself_is_not() {
        let (signer, mut guard) = setup();
        let late = instruction("0000000000000001", NOW - 1);
        assert_eq!(
            guard.check(&signed(&signer, &late), NOW),
            Verdict::Expired(late)
        );
        let just_in_time = instruction("0000000000000002", NOW);
        assert_eq!(
            guard.check(&signed(&signer, &just_in_time), NOW),
            Verdict::Run(just_in_time)
        );
    }

    #[test]
    fn a_second_delivery_of_an_id_is_a_replay() {
        let (signer, mut guard) = setup();
        let sent = instruction("0000000000000001", NOW + 60_000);
        let message = signed(&signer, &sent);
        assert!(matches!(guard.check(&message, NOW), Verdict::Run(_)));
        assert_eq!(
            guard.check(&message, NOW + 1_000),
            Verdict::Replayed(sent.id.clone())
        );
    }

    #[test]
    fn ids_are_forgotten_after_their_deadline_and_a_late_replay_is_expired() {
        let (signer, mut guard) = setup();
        let short = instruction("0000000000000001", NOW + 1_000);
        let long = instruction("0000000000000002", NOW + 60_000);
        assert!(matches!(
            guard.check(&signed(&signer, &short), NOW),
            Verdict::Run(_)
        ));
        assert!(matches!(
            guard.check(&signed(&signer, &long), NOW),
            Verdict::Run(_)
        ));
        assert_eq!(guard.n_remembered(), 2);
        let later = NOW + 2_000;
        assert_eq!(
            guard.check(&signed(&signer, &short), later),
            Verdict::Expired(short)
        );
        assert_eq!(guard.n_remembered(), 1);
        assert_eq!(
            guard.check(&signed(&signer, &long), later),
            Verdict::Replayed(long.id.clone())
        );
    }

    #[test]
    fn app_sets_are_verified_addressed_and_fresh() {
        let (signer, guard) = setup();
        let set = AppSet {
            agent: AgentId::parse("host-1").unwrap(),
            issued_at: NOW,
            deadline: NOW + 1_000,
            apps: Vec::new(),
        };
        let sign = |set: &AppSet, signer: &InstructionSigner| {
            let mut message = BusMessage::msgpack(wire::kind::APP_SET, wire::encode(set));
            message.sig = Some(signer.sign(&message.body));
            message.key_id = Some("center".into());
            message
        };
        assert_eq!(
            guard.check_app_set(&sign(&set, &signer), NOW),
            Ok(Some(set.clone()))
        );
        assert_eq!(
            guard.check_app_set(&sign(&set, &signer), NOW + 2_000),
            Ok(None)
        );
        let forger = InstructionSigner::generate("center");
        assert!(guard.check_app_set(&sign(&set, &forger), NOW).is_err());
        let mut other = set.clone();
        other.agent = AgentId::parse("host-2").unwrap();
        assert!(matches!(
            guard.check_app_set(&sign(&other, &signer), NOW),
            Err(Refusal::WrongAgent(_))
        ));
    }

    #[test]
    fn cancels_are_verified_too() {
        let (signer, guard) = setup();
        let cancel = Cancel {
            id: TaskId::parse("0000000000000001").unwrap(),
        };
        let mut message = BusMessage::msgpack(wire::kind::CANCEL, wire::encode(&cancel));
        message.sig = Some(signer.sign(&message.body));
        message.key_id = Some("center".into());
        assert_eq!(guard.check_cancel(&message), Ok(cancel));
        let forger = InstructionSigner::generate("center");
        message.sig = Some(forger.sign(&message.body));
        assert_eq!(
            guard.check_cancel(&message),
            Err(Refusal::Signature(VerifyError::BadSignature))
        );
    }

    fn signed_batch(signer: &InstructionSigner, instructions: &[Instruction]) -> BusMessage {
        let body = wire::encode(&InstructionBatch {
            instructions: instructions.to_vec(),
        });
        let mut message = BusMessage::msgpack(wire::kind::INSTRUCTIONS, body);
        message.sig = Some(signer.sign(&message.body));
        message.key_id = Some(signer.key_id().to_string());
        message
    }

    #[test]
    fn a_batch_gets_one_verdict_per_instruction() {
        let (signer, mut guard) = setup();
        let seen_before = instruction("0000000000000001", NOW + 60_000);
        assert!(matches!(
            guard.check(&signed(&signer, &seen_before), NOW),
            Verdict::Run(_)
        ));
        let fresh = instruction("0000000000000002", NOW + 60_000);
        let late = instruction("0000000000000003", NOW - 1);
        let batch = [
            seen_before.clone(),
            fresh.clone(),
            late.clone(),
            fresh.clone(),
        ];
        let verdicts = guard
            .check_batch(&signed_batch(&signer, &batch), NOW)
            .unwrap();
        assert_eq!(
            verdicts,
            vec![
                Verdict::Replayed(seen_before.id),
                Verdict::Run(fresh.clone()),
                Verdict::Expired(late),
                Verdict::Replayed(fresh.id),
            ]
        );
    }

    #[test]
    fn a_batch_is_refused_whole_when_forged_tampered_empty_or_partly_for_another_agent() {
        let (signer, mut guard) = setup();
        let ours = instruction("0000000000000001", NOW + 60_000);
        let theirs = Instruction {
            agent: AgentId::parse("host-2").unwrap(),
            ..instruction("0000000000000002", NOW + 60_000)
        };
        let forger = InstructionSigner::generate("center");
        let forged = signed_batch(&forger, std::slice::from_ref(&ours));
        assert!(matches!(
            guard.check_batch(&forged, NOW),
            Err(Refusal::Signature(_))
        ));
        let mut tampered = signed_batch(&signer, std::slice::from_ref(&ours));
        tampered.body.push(0);
        assert!(guard.check_batch(&tampered, NOW).is_err());
        assert!(matches!(
            guard.check_batch(&signed_batch(&signer, &[]), NOW),
            Err(Refusal::Undecodable(_))
        ));
        assert_eq!(
            guard.check_batch(&signed_batch(&signer, &[ours.clone(), theirs]), NOW),
            Err(Refusal::WrongAgent(AgentId::parse("host-2").unwrap()))
        );
        assert_eq!(
            guard.n_remembered(),
            0,
            "nothing of a refused batch is remembered"
        );
        // A single instruction signed alone is not a batch.
        assert!(guard.check_batch(&signed(&signer, &ours), NOW).is_err());
    }

    #[test]
    fn remembered_ids_are_replays_until_their_deadline() {
        let (signer, mut guard) = setup();
        let done = instruction("0000000000000001", NOW + 60_000);
        guard.remember(done.id.clone(), done.deadline);
        assert_eq!(
            guard.check(&signed(&signer, &done), NOW),
            Verdict::Replayed(done.id.clone())
        );
        assert_eq!(
            guard.check(&signed(&signer, &done), NOW + 60_001),
            Verdict::Expired(done)
        );
    }
}
