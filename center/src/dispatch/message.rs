//! Signed bus messages: one instruction, several packed for one agent, or a cancel.
//! The signature covers the exact body bytes, so agents verify what they decode.

use crate::store::TaskRow;
use elves_shared::bus::BusMessage;
use elves_shared::crypto::InstructionSigner;
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{self, kind, AgentId, Cancel, Instruction, TaskId};
use std::collections::HashMap;

/// At most this many instructions go in one message.
pub const MAX_INSTRUCTIONS_PER_MESSAGE: usize = 100;
/// A message stops taking instructions once about this many bytes of them are in.
pub const MAX_INSTRUCTION_BYTES_PER_MESSAGE: usize = 1 << 20;
/// An instruction's fields besides its texts, in MessagePack, generously.
const INSTRUCTION_OVERHEAD_BYTES: usize = 256;

fn signed(signer: &InstructionSigner, message_kind: &str, body: Vec<u8>) -> BusMessage {
    let mut message = BusMessage::msgpack(message_kind, body);
    let (key_id, signature) = signer.sign_with_key_id(&message.body);
    message.sig = Some(signature);
    message.key_id = Some(key_id);
    message
}

/// One instruction, signed; the persistent form queue and cron tasks travel in.
pub fn signed_message(
    signer: &InstructionSigner,
    instruction: &Instruction,
    reply_to: Option<&str>,
) -> BusMessage {
    let mut message = signed(signer, kind::INSTRUCTION, wire::encode(instruction));
    message.message_id = Some(instruction.id.to_string());
    message.correlation_id = Some(instruction.id.to_string());
    message.reply_to = reply_to.map(str::to_string);
    // The broker drops what nobody consumed before the deadline; the agent checks it too.
    message.expiration_ms = Some(instruction.deadline.saturating_sub(instruction.issued_at));
    message
}

/// The message of an RT instruction: signed, answered on `reply_queue`, and transient.
///
/// The caller's wait and the center's reply queue both end with a broker restart, so an RT
/// instruction kept on the broker's disk would only run later with nobody waiting for its
/// result; kept in memory, it also spares the broker a disk write on the caller's clock.
/// Queue and cron instructions stay persistent: they must survive the restart.
pub fn rt_message(
    signer: &InstructionSigner,
    instruction: &Instruction,
    reply_queue: &str,
) -> BusMessage {
    let mut message = signed_message(signer, instruction, Some(reply_queue));
    message.transient = true;
    message
}

/// One `instructions` message for several instructions to the same agent, signed once.
pub fn packed_message(signer: &InstructionSigner, instructions: Vec<Instruction>) -> BusMessage {
    let now = now_unix_ms();
    // The broker may drop the message only once every instruction in it has expired.
    let last_deadline = instructions
        .iter()
        .map(|instruction| instruction.deadline)
        .max()
        .unwrap_or(now);
    let body = wire::encode(&wire::InstructionBatch { instructions });
    let mut message = signed(signer, kind::INSTRUCTIONS, body);
    message.expiration_ms = Some(last_deadline.saturating_sub(now).max(1));
    message
}

/// A signed order to kill a running task (a stopped queue).
pub fn cancel_message(signer: &InstructionSigner, task_id: &TaskId) -> BusMessage {
    let body = wire::encode(&Cancel {
        id: task_id.clone(),
    });
    let mut message = signed(signer, kind::CANCEL, body);
    message.message_id = Some(task_id.to_string());
    message
}

/// Tasks for one agent and the one signed message that carries their instructions.
pub struct Outbound {
    pub tasks: Vec<TaskRow>,
    pub message: BusMessage,
}

impl Outbound {
    pub fn agent(&self) -> Option<&AgentId> {
        self.tasks.first().map(|task| &task.agent)
    }
}

/// Groups tasks by agent, in the order given, and signs one message per group (several per
/// agent when a group is large): an agent given many tasks at once gets few messages.
pub fn pack_per_agent(signer: &InstructionSigner, tasks: Vec<TaskRow>) -> Vec<Outbound> {
    let mut by_agent: Vec<(AgentId, Vec<TaskRow>)> = Vec::new();
    let mut slot_of: HashMap<AgentId, usize> = HashMap::new();
    for task in tasks {
        let slot = *slot_of.entry(task.agent.clone()).or_insert_with(|| {
            by_agent.push((task.agent.clone(), Vec::new()));
            by_agent.len() - 1
        });
        by_agent[slot].1.push(task);
    }
    let mut outbound = Vec::new();
    for (_, tasks) in by_agent {
        let mut group = Vec::new();
        let mut bytes = 0;
        for task in tasks {
            let task_bytes = INSTRUCTION_OVERHEAD_BYTES
                + task.param.len()
                + task.app.len()
                + task.func.len()
                + task.proxy.len();
            let full = group.len() >= MAX_INSTRUCTIONS_PER_MESSAGE
                || bytes + task_bytes > MAX_INSTRUCTION_BYTES_PER_MESSAGE;
            if full && !group.is_empty() {
                outbound.push(sign_group(signer, std::mem::take(&mut group)));
                bytes = 0;
            }
            bytes += task_bytes;
            group.push(task);
        }
        if !group.is_empty() {
            outbound.push(sign_group(signer, group));
        }
    }
    outbound
}

/// One task goes as a plain `instruction`; several as one `instructions` message.
fn sign_group(signer: &InstructionSigner, tasks: Vec<TaskRow>) -> Outbound {
    let instructions: Vec<Instruction> = tasks.iter().map(Instruction::from).collect();
    let message = match instructions.as_slice() {
        [only] => signed_message(signer, only, None),
        _ => packed_message(signer, instructions),
    };
    Outbound { tasks, message }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dispatch::instruction::tests::row;
    use elves_shared::crypto::InstructionVerifier;
    use elves_shared::wire::{AgentId, Mode, TaskType};

    fn verifier_of(signer: &InstructionSigner) -> InstructionVerifier {
        let mut verifier = InstructionVerifier::new();
        verifier
            .add_public_key_hex("center", &signer.public_key_hex())
            .unwrap();
        verifier
    }

    fn verify(verifier: &InstructionVerifier, message: &BusMessage) {
        verifier
            .verify(
                &message.body,
                message.key_id.as_deref(),
                message.sig.as_deref(),
            )
            .unwrap();
    }

    fn instruction() -> Instruction {
        Instruction {
            id: TaskId::random(),
            agent: AgentId::parse("a").unwrap(),
            task_type: TaskType::Rt,
            mode: Mode::NP,
            app: "x".into(),
            func: "y".into(),
            param: String::new(),
            timeout: 1,
            proxy: String::new(),
            issued_at: 10,
            deadline: 20,
        }
    }

    pub fn instructions_in(message: &BusMessage) -> Vec<Instruction> {
        match message.kind.as_str() {
            kind::INSTRUCTION => vec![wire::decode(&message.body).unwrap()],
            kind::INSTRUCTIONS => {
                wire::decode::<wire::InstructionBatch>(&message.body)
                    .unwrap()
                    .instructions
            }
            other => panic!("not an instruction message: {other}"),
        }
    }

    #[test]
    fn signed_message_verifies() {
        let signer = InstructionSigner::generate("center");
        let instruction = instruction();
        let message = signed_message(&signer, &instruction, Some("reply"));
        verify(&verifier_of(&signer), &message);
        assert_eq!(message.expiration_ms, Some(10));
        assert_eq!(message.reply_to.as_deref(), Some("reply"));
        assert!(
            !message.transient,
            "queue and cron instructions must outlive the broker"
        );
    }

    #[test]
    fn rt_messages_are_transient_and_answered_on_the_reply_queue() {
        let signer = InstructionSigner::generate("center");
        let instruction = instruction();
        let message = rt_message(&signer, &instruction, "center.reply");
        assert!(message.transient);
        // Otherwise the very message a queue or cron instruction would be.
        let persistent = signed_message(&signer, &instruction, Some("center.reply"));
        let same_but_persistent = BusMessage {
            transient: false,
            timestamp_ms: persistent.timestamp_ms,
            ..message
        };
        assert_eq!(same_but_persistent, persistent);
    }

    #[test]
    fn a_cancel_is_signed_and_names_its_task() {
        let signer = InstructionSigner::generate("center");
        let id = TaskId::random();
        let message = cancel_message(&signer, &id);
        verify(&verifier_of(&signer), &message);
        assert_eq!(message.kind, kind::CANCEL);
        let cancel: Cancel = wire::decode(&message.body).unwrap();
        assert_eq!(cancel.id, id);
    }

    #[test]
    fn claimed_tasks_go_one_signed_message_per_agent_in_claim_order() {
        let signer = InstructionSigner::generate("center");
        let verifier = verifier_of(&signer);
        let agents = ["a", "b", "a", "a", "c"];
        let rows = agents
            .iter()
            .enumerate()
            .map(|(n, agent)| row(n as u64, agent, 10))
            .collect();
        let outbound = pack_per_agent(&signer, rows);
        let kinds: Vec<&str> = outbound.iter().map(|o| o.message.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [kind::INSTRUCTIONS, kind::INSTRUCTION, kind::INSTRUCTION]
        );
        for message in outbound.iter().map(|o| &o.message) {
            verify(&verifier, message);
        }
        let to_a = instructions_in(&outbound[0].message);
        let ids: Vec<String> = to_a.iter().map(|i| i.id.to_string()).collect();
        assert_eq!(ids, [0u64, 2, 3].map(|n| format!("{n:016x}")));
        assert!(to_a
            .iter()
            .all(|i| i.agent.as_str() == "a" && i.deadline == 61_000));
        let carried: Vec<usize> = outbound.iter().map(|o| o.tasks.len()).collect();
        assert_eq!(carried, [3, 1, 1]);
        assert_eq!(outbound[1].agent().map(AgentId::as_str), Some("b"));
    }

    #[test]
    fn a_large_group_is_split_by_count_and_by_size() {
        let signer = InstructionSigner::generate("center");
        let many = (0..250).map(|n| row(n, "a", 10)).collect();
        let sizes: Vec<usize> = pack_per_agent(&signer, many)
            .iter()
            .map(|o| o.tasks.len())
            .collect();
        assert_eq!(sizes, [100, 100, 50]);
        let big = MAX_INSTRUCTION_BYTES_PER_MESSAGE / 3;
        let large = (0..4).map(|n| row(n, "a", big)).collect();
        let sizes: Vec<usize> = pack_per_agent(&signer, large)
            .iter()
            .map(|o| o.tasks.len())
            .collect();
        assert_eq!(sizes, [2, 2]);
    }
}
