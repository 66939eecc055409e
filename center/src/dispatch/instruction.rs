//! The instruction an agent gets for a stored task.

use crate::config::RtConfig;
use crate::store::{Dispatch, NewTask, TaskRow};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::Instruction;

/// `issued_at + timeout + kill grace + dispatch allowance` (SPEC §11 "Finer points").
pub fn deadline(issued_at: u64, timeout_s: u32, rt: &RtConfig) -> u64 {
    let seconds =
        u64::from(timeout_s) + u64::from(rt.kill_grace_s) + u64::from(rt.dispatch_allowance_s);
    issued_at + seconds * 1000
}

/// The instruction of a task stored already dispatched: an RT call or a cron firing, whose
/// row is written with its dispatch before it is sent.
pub fn instruction(task: &NewTask, dispatch: &Dispatch) -> Instruction {
    Instruction {
        id: task.id.clone(),
        agent: task.agent.clone(),
        task_type: task.task_type,
        mode: task.mode,
        app: task.app.clone(),
        func: task.func.clone(),
        param: task.param.clone(),
        timeout: task.timeout_s,
        proxy: task.proxy.clone(),
        issued_at: dispatch.dispatched_at,
        deadline: dispatch.deadline,
    }
}

/// The instruction of a task read back from the tasks table: a claimed queue task, or one a
/// restarted center sends again.
impl From<&TaskRow> for Instruction {
    fn from(task: &TaskRow) -> Self {
        let issued_at = task.dispatched_at.unwrap_or_else(now_unix_ms);
        Instruction {
            id: task.id.clone(),
            agent: task.agent.clone(),
            task_type: task.task_type,
            mode: task.mode,
            app: task.app.clone(),
            func: task.func.clone(),
            param: task.param.clone(),
            timeout: task.timeout_s,
            proxy: task.proxy.clone(),
            issued_at,
            deadline: task.deadline.unwrap_or(issued_at),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::TaskStatus;
    use elves_shared::wire::{AgentId, Mode, TaskId, TaskType};

    pub fn row(n: u64, agent: &str, param_bytes: usize) -> TaskRow {
        TaskRow {
            id: TaskId::parse(&format!("{n:016x}")).unwrap(),
            queue_id: None,
            task_type: TaskType::Queue,
            agent: AgentId::parse(agent).unwrap(),
            app: "demo".into(),
            func: "ok".into(),
            param: "p".repeat(param_bytes),
            timeout_s: 10,
            proxy: "python3".into(),
            mode: Mode::P,
            depend_task_id: None,
            status: TaskStatus::Executing,
            flag: String::new(),
            error: String::new(),
            worker_flag: None,
            worker_message: None,
            worker_costtime: None,
            dispatched_by: Some("center-a".into()),
            dispatched_at: Some(1_000),
            deadline: Some(61_000),
            created_at: n,
            finished_at: None,
        }
    }

    #[test]
    fn deadline_adds_timeout_grace_and_allowance() {
        let rt = RtConfig {
            default_timeout_s: 90,
            kill_grace_s: 5,
            dispatch_allowance_s: 60,
        };
        assert_eq!(deadline(1_000, 10, &rt), 1_000 + 75_000);
    }

    #[test]
    fn a_stored_row_and_a_new_task_give_the_same_instruction() {
        let row = row(7, "a", 3);
        let new_task = NewTask {
            id: row.id.clone(),
            queue_id: None,
            task_type: row.task_type,
            agent: row.agent.clone(),
            app: row.app.clone(),
            func: row.func.clone(),
            param: row.param.clone(),
            timeout_s: row.timeout_s,
            proxy: row.proxy.clone(),
            mode: row.mode,
            depend_task_id: None,
            created_at: 7,
        };
        let dispatch = Dispatch {
            center_instance: "center-a".into(),
            dispatched_at: 1_000,
            deadline: 61_000,
        };
        let from_row = Instruction::from(&row);
        assert_eq!(from_row, instruction(&new_task, &dispatch));
        assert_eq!((from_row.issued_at, from_row.deadline), (1_000, 61_000));
        assert_eq!(
            (from_row.mode, from_row.proxy.as_str()),
            (Mode::P, "python3")
        );
    }

    #[test]
    fn a_row_never_dispatched_is_issued_now() {
        let mut row = row(1, "a", 0);
        row.dispatched_at = None;
        row.deadline = None;
        let before = now_unix_ms();
        let instruction = Instruction::from(&row);
        assert!(instruction.issued_at >= before);
        assert_eq!(instruction.deadline, instruction.issued_at);
    }
}
