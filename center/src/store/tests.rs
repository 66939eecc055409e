//! One suite of store tests, written once and run on both backends: SQLite on a temp file
//! always, PostgreSQL on a fresh database per test when `ELVES_TEST_PG_URL` is set (and CI
//! fails when it is not).
//!
//! Each case is a plain function of a `&Store`; `on_both_backends!` makes a `#[test]` of it
//! in `sqlite::` and in `postgres::`.

use super::*;
use elves_shared::wire::{AgentId, JobResult, Mode, TaskType};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};
use std::time::Duration;

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $case() {
                    let db = super::TestDb::sqlite();
                    super::$case(&db.store);
                }
            )*
        }

        mod postgres {
            $(
                #[test]
                fn $case() {
                    if let Some(db) = super::TestDb::postgres() {
                        super::$case(&db.store);
                    }
                }
            )*
        }
    };
}

on_both_backends!(
    queue_lifecycle_and_its_errors,
    dependency_chain_releases_tasks_in_order,
    failed_task_skips_its_transitive_dependents_and_the_queue_still_finishes,
    duplicate_result_changes_nothing,
    a_result_from_another_agent_settles_nothing,
    concurrent_claims_never_share_a_task,
    concurrent_results_finish_the_queue_exactly_once,
    batch_of_results_settles_each_task_once,
    overlapping_batches_from_several_centers_apply_each_result_once,
    stop_returns_the_execing_tasks,
    expire_overdue_settles_tasks_past_their_deadline,
    rt_and_cron_tasks_are_stored_dispatched,
    rt_results_are_recorded_together,
    audit_log_round_trip,
    agents_round_trip,
    agents_written_in_batches_and_listed_by_page,
    apps_versions_and_bindings,
    concurrent_uploads_of_one_app,
    submit_replies_are_owed_once_their_task_is_settled,
    unsent_tasks_go_back_to_pending,
    output_keeps_head_and_tail_and_refuses_overlaps,
);

/// A store on a database of its own. Fields drop in order: the store (and its pool) first,
/// then the database.
struct TestDb {
    store: Store,
    _database: testing::TestDatabase,
}

impl TestDb {
    fn sqlite() -> TestDb {
        let database = testing::TestDatabase::sqlite().unwrap();
        let store = Store::open(&database.url).unwrap();
        assert_eq!(store.backend(), Backend::Sqlite);
        TestDb {
            store,
            _database: database,
        }
    }

    fn postgres() -> Option<TestDb> {
        let database = testing::TestDatabase::postgres(&testing::pg_url()?).unwrap();
        let store = Store::open(&database.url).unwrap();
        assert_eq!(store.backend(), Backend::Postgres);
        Some(TestDb {
            store,
            _database: database,
        })
    }
}

const ALLOWANCE: Duration = Duration::from_secs(65);

fn id(n: u64) -> TaskId {
    TaskId::parse(&format!("{n:016x}")).unwrap()
}

fn agent() -> AgentId {
    AgentId::parse("agent-1").unwrap()
}

fn queue_task(
    queue_id: &TaskId,
    task_id: &TaskId,
    depend_task_id: Option<&TaskId>,
    created_at: u64,
) -> NewTask {
    NewTask {
        id: task_id.clone(),
        queue_id: Some(queue_id.clone()),
        task_type: TaskType::Queue,
        agent: agent(),
        app: "demo".to_string(),
        func: "echo".to_string(),
        param: r#"{"n":1}"#.to_string(),
        timeout_s: 10,
        proxy: "python3|main.py".to_string(),
        mode: Mode::P,
        depend_task_id: depend_task_id.cloned(),
        created_at,
    }
}

fn result(task_id: &TaskId, worker_flag: i8, message: &str) -> JobResult {
    JobResult {
        id: task_id.clone(),
        agent: agent(),
        task_type: TaskType::Queue,
        mode: Mode::P,
        app: "demo".to_string(),
        func: "echo".to_string(),
        worker_flag,
        worker_message: message.to_string(),
        worker_costtime: 42,
        started_at: 1,
        finished_at: 2,
        error: String::new(),
    }
}

/// A committed queue `queue_id` whose tasks are `(task id, dependency)`, created in order.
fn committed_queue(store: &Store, queue_id: &TaskId, tasks: &[(u64, Option<u64>)]) {
    store.create_queue(queue_id, "demo", "ops", 1).unwrap();
    for (n, (task, depend)) in tasks.iter().enumerate() {
        let depend = depend.map(id);
        store
            .add_task(&queue_task(
                queue_id,
                &id(*task),
                depend.as_ref(),
                10 + n as u64,
            ))
            .unwrap();
    }
    store.commit_queue(queue_id, 2).unwrap();
}

fn claim(store: &Store, now: u64, limit: usize) -> BTreeSet<TaskId> {
    store
        .claim_ready_tasks("center-a", now, limit, ALLOWANCE)
        .unwrap()
        .into_iter()
        .map(|task| task.id)
        .collect()
}

fn ids(numbers: &[u64]) -> BTreeSet<TaskId> {
    numbers.iter().copied().map(id).collect()
}

fn task(store: &Store, n: u64) -> TaskRow {
    store.get_task(&id(n)).unwrap().unwrap()
}

fn queue_tasks_by_id(store: &Store, queue_id: &TaskId) -> BTreeMap<TaskId, TaskRow> {
    store
        .queue_tasks(queue_id)
        .unwrap()
        .into_iter()
        .map(|task| (task.id.clone(), task))
        .collect()
}

fn queue_lifecycle_and_its_errors(store: &Store) {
    let queue_id = id(0x100);
    assert_eq!(store.get_queue(&queue_id).unwrap(), None);
    assert!(matches!(
        store.add_task(&queue_task(&queue_id, &id(1), None, 10)),
        Err(StoreError::QueueNotFound(missing)) if missing == queue_id
    ));
    assert!(matches!(
        store.commit_queue(&queue_id, 2),
        Err(StoreError::QueueNotFound(_))
    ));
    assert!(matches!(
        store.stop_queue(&queue_id, 2),
        Err(StoreError::QueueNotFound(_))
    ));

    store.create_queue(&queue_id, "demo", "ops", 1_000).unwrap();
    assert!(matches!(
        store.create_queue(&queue_id, "demo", "ops", 1_000),
        Err(StoreError::DuplicateId(taken)) if taken == queue_id
    ));
    let queue = store.get_queue(&queue_id).unwrap().unwrap();
    assert_eq!(
        queue,
        QueueRow {
            id: queue_id.clone(),
            app: "demo".to_string(),
            auth_id: "ops".to_string(),
            status: QueueStatus::Open,
            created_at: 1_000,
            committed_at: None,
            finished_at: None,
        }
    );

    let empty_commit = store.commit_queue(&queue_id, 2_000);
    assert!(
        matches!(
            empty_commit,
            Err(StoreError::QueueStatusDoesNotAllow {
                status: QueueStatus::Open,
                ..
            })
        ),
        "{empty_commit:?}"
    );

    // A dependency must exist, and in the same queue.
    assert!(matches!(
        store.add_task(&queue_task(&queue_id, &id(1), Some(&id(99)), 10)),
        Err(StoreError::DependencyNotFound { depend_task_id, .. }) if depend_task_id == id(99)
    ));
    let other_queue = id(0x200);
    store
        .create_queue(&other_queue, "demo", "ops", 1_000)
        .unwrap();
    store
        .add_task(&queue_task(&other_queue, &id(50), None, 10))
        .unwrap();
    assert!(matches!(
        store.add_task(&queue_task(&queue_id, &id(1), Some(&id(50)), 10)),
        Err(StoreError::DependencyNotFound { .. })
    ));

    store
        .add_task(&queue_task(&queue_id, &id(1), None, 10))
        .unwrap();
    store
        .add_task(&queue_task(&queue_id, &id(2), Some(&id(1)), 11))
        .unwrap();
    assert!(matches!(
        store.add_task(&queue_task(&queue_id, &id(1), None, 12)),
        Err(StoreError::DuplicateId(_))
    ));
    let mut without_queue = queue_task(&queue_id, &id(3), None, 12);
    without_queue.queue_id = None;
    assert!(matches!(
        store.add_task(&without_queue),
        Err(StoreError::InvalidTask { .. })
    ));

    // Nothing runs before the commit.
    assert!(claim(store, 1_500, 10).is_empty());

    store.commit_queue(&queue_id, 2_000).unwrap();
    let queue = store.get_queue(&queue_id).unwrap().unwrap();
    assert_eq!(queue.status, QueueStatus::Committed);
    assert_eq!(queue.committed_at, Some(2_000));
    assert!(matches!(
        store.commit_queue(&queue_id, 2_001),
        Err(StoreError::QueueStatusDoesNotAllow {
            status: QueueStatus::Committed,
            ..
        })
    ));
    assert!(matches!(
        store.add_task(&queue_task(&queue_id, &id(4), None, 13)),
        Err(StoreError::QueueStatusDoesNotAllow {
            status: QueueStatus::Committed,
            ..
        })
    ));

    let tasks = store.queue_tasks(&queue_id).unwrap();
    assert_eq!(tasks.len(), 2);
    let first = &tasks[0];
    assert_eq!(first.id, id(1));
    assert_eq!(first.queue_id, Some(queue_id.clone()));
    assert_eq!(first.task_type, TaskType::Queue);
    assert_eq!(first.agent, agent());
    assert_eq!((first.app.as_str(), first.func.as_str()), ("demo", "echo"));
    assert_eq!(first.param, r#"{"n":1}"#);
    assert_eq!(first.timeout_s, 10);
    assert_eq!(first.proxy, "python3|main.py");
    assert_eq!(first.mode, Mode::P);
    assert_eq!(first.status, TaskStatus::Pending);
    assert_eq!((first.flag.as_str(), first.error.as_str()), ("", ""));
    assert_eq!(first.worker_flag, None);
    assert_eq!(first.created_at, 10);
    assert_eq!(tasks[1].depend_task_id, Some(id(1)));
    assert!(store.queue_tasks(&id(0x999)).unwrap().is_empty());
}

fn dependency_chain_releases_tasks_in_order(store: &Store) {
    // 1 ← 2 ← 3, and 4 on its own.
    let queue_id = id(0x100);
    committed_queue(
        store,
        &queue_id,
        &[(1, None), (2, Some(1)), (3, Some(2)), (4, None)],
    );

    let claimed = store
        .claim_ready_tasks("center-a", 1_000, 10, ALLOWANCE)
        .unwrap();
    assert_eq!(
        claimed
            .iter()
            .map(|task| task.id.clone())
            .collect::<Vec<_>>(),
        vec![id(1), id(4)]
    );
    for task in &claimed {
        assert_eq!(task.status, TaskStatus::Executing);
        assert_eq!(task.dispatched_by.as_deref(), Some("center-a"));
        assert_eq!(task.dispatched_at, Some(1_000));
        assert_eq!(task.deadline, Some(1_000 + 10_000 + 65_000));
    }
    assert!(claim(store, 1_001, 10).is_empty());

    let outcome = store
        .record_result(&result(&id(1), 1, "one"), 2_000)
        .unwrap();
    assert!(outcome.applied);
    assert!(outcome.skipped_task_ids.is_empty());
    assert_eq!(outcome.finished_queue_id, None);
    let settled = outcome.task.unwrap();
    assert_eq!(settled.status, TaskStatus::Finished);
    assert_eq!(settled.flag, "true");
    assert_eq!(settled.worker_flag, Some(1));
    assert_eq!(settled.worker_message.as_deref(), Some("one"));
    assert_eq!(settled.worker_costtime, Some(42));
    assert_eq!(settled.finished_at, Some(2_000));

    assert_eq!(claim(store, 2_001, 10), ids(&[2]));
    let outcome = store
        .record_result(&result(&id(4), 1, "four"), 2_002)
        .unwrap();
    assert_eq!(outcome.finished_queue_id, None);
    store
        .record_result(&result(&id(2), 1, "two"), 2_003)
        .unwrap();
    assert_eq!(claim(store, 2_004, 10), ids(&[3]));
    assert_eq!(
        store.get_queue(&queue_id).unwrap().unwrap().status,
        QueueStatus::Committed
    );

    let outcome = store
        .record_result(&result(&id(3), 1, "three"), 3_000)
        .unwrap();
    assert_eq!(outcome.finished_queue_id, Some(queue_id.clone()));
    let queue = store.get_queue(&queue_id).unwrap().unwrap();
    assert_eq!(queue.status, QueueStatus::Finished);
    assert_eq!(queue.finished_at, Some(3_000));
    assert!(store
        .queue_tasks(&queue_id)
        .unwrap()
        .iter()
        .all(|task| task.status == TaskStatus::Finished && task.worker_flag == Some(1)));
}

fn failed_task_skips_its_transitive_dependents_and_the_queue_still_finishes(store: &Store) {
    // 1 ← 2 ← 3, 1 ← 5, and 6 on its own.
    let queue_id = id(0x100);
    committed_queue(
        store,
        &queue_id,
        &[
            (1, None),
            (2, Some(1)),
            (3, Some(2)),
            (5, Some(1)),
            (6, None),
        ],
    );
    assert_eq!(claim(store, 1_000, 10), ids(&[1, 6]));

    let outcome = store
        .record_result(&result(&id(1), 0, "no"), 2_000)
        .unwrap();
    assert!(outcome.applied);
    assert_eq!(
        outcome
            .skipped_task_ids
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>(),
        ids(&[2, 3, 5])
    );
    assert_eq!(outcome.finished_queue_id, None, "task 6 is still running");

    let failed = task(store, 1);
    assert_eq!(failed.status, TaskStatus::Finished);
    assert_eq!(
        failed.flag, "true",
        "the agent did report: the worker said false"
    );
    assert_eq!(failed.worker_flag, Some(0));

    let direct = task(store, 2);
    assert_eq!(direct.status, TaskStatus::Skipped);
    assert_eq!(direct.error, format!("dependency task {} failed", id(1)));
    assert_eq!((direct.flag.as_str(), direct.worker_flag), ("", None));
    assert_eq!(direct.finished_at, Some(2_000));
    let transitive = task(store, 3);
    assert_eq!(transitive.status, TaskStatus::Skipped);
    assert!(
        transitive.error.contains(id(2).as_str()),
        "{}",
        transitive.error
    );
    assert!(
        transitive.error.contains(id(1).as_str()),
        "{}",
        transitive.error
    );
    assert_eq!(task(store, 5).status, TaskStatus::Skipped);

    assert!(claim(store, 2_001, 10).is_empty());
    let outcome = store
        .record_result(&result(&id(6), 1, "six"), 3_000)
        .unwrap();
    assert_eq!(outcome.finished_queue_id, Some(queue_id.clone()));
    assert_eq!(
        store.get_queue(&queue_id).unwrap().unwrap().status,
        QueueStatus::Finished
    );
}

fn a_result_from_another_agent_settles_nothing(store: &Store) {
    let queue_id = id(0x100);
    committed_queue(store, &queue_id, &[(1, None)]);
    assert_eq!(claim(store, 1_000, 10), ids(&[1]));
    let mut forged = result(&id(1), 1, "forged");
    forged.agent = AgentId::parse("agent-2").unwrap();
    let outcome = store.record_result(&forged, 2_000).unwrap();
    assert!(!outcome.applied);
    assert_eq!(
        outcome.task.unwrap().status,
        TaskStatus::Executing,
        "still waiting for its own agent"
    );
    let real = store
        .record_result(&result(&id(1), 1, "real"), 3_000)
        .unwrap();
    assert!(real.applied);
    assert_eq!(real.task.unwrap().worker_message.as_deref(), Some("real"));
}

fn duplicate_result_changes_nothing(store: &Store) {
    let queue_id = id(0x100);
    committed_queue(store, &queue_id, &[(1, None)]);
    assert_eq!(claim(store, 1_000, 10), ids(&[1]));

    let first = store
        .record_result(&result(&id(1), 1, "first"), 2_000)
        .unwrap();
    assert!(first.applied);
    assert_eq!(first.finished_queue_id, Some(queue_id.clone()));

    let again = store
        .record_result(&result(&id(1), 0, "second"), 3_000)
        .unwrap();
    assert!(!again.applied);
    assert!(again.skipped_task_ids.is_empty());
    assert_eq!(again.finished_queue_id, None);
    let stored = again.task.unwrap();
    assert_eq!(stored, first.task.unwrap());
    assert_eq!(stored.worker_message.as_deref(), Some("first"));
    assert_eq!(stored.finished_at, Some(2_000));
    assert_eq!(
        store.get_queue(&queue_id).unwrap().unwrap().finished_at,
        Some(2_000)
    );

    let unknown = store
        .record_result(&result(&id(77), 1, "who?"), 3_000)
        .unwrap();
    assert!(!unknown.applied);
    assert_eq!(unknown.task, None);
}

fn batch_of_results_settles_each_task_once(store: &Store) {
    // 1 ← 6, 2 ← 7, and 3, 4, 5 on their own.
    let queue_id = id(0x100);
    committed_queue(
        store,
        &queue_id,
        &[
            (1, None),
            (2, None),
            (3, None),
            (4, None),
            (5, None),
            (6, Some(1)),
            (7, Some(2)),
        ],
    );
    assert_eq!(claim(store, 1_000, 10), ids(&[1, 2, 3, 4, 5]));
    assert!(store.record_results(&[], 1_500).unwrap().is_empty());

    // Out of id order, with a duplicate inside the batch and a task nobody knows.
    let batch = [
        result(&id(3), 1, "three"),
        result(&id(1), 1, "one"),
        result(&id(2), 0, "two failed"),
        result(&id(1), 0, "one again"),
        result(&id(77), 1, "who?"),
    ];
    let outcomes = store.record_results(&batch, 2_000).unwrap();
    assert_eq!(
        outcomes
            .iter()
            .map(|outcome| outcome.applied)
            .collect::<Vec<_>>(),
        vec![true, true, true, false, false]
    );
    assert_eq!(outcomes[2].skipped_task_ids, vec![id(7)]);
    assert!(outcomes
        .iter()
        .all(|outcome| outcome.finished_queue_id.is_none()));
    // The first result for task 1 settled it; the second was a duplicate and sees that.
    for outcome in &outcomes[1..=3] {
        let stored = outcome.task.as_ref().unwrap();
        assert_eq!(stored.status, TaskStatus::Finished);
        assert_eq!(stored.finished_at, Some(2_000));
    }
    assert_eq!(
        outcomes[1].task.as_ref().unwrap().worker_message.as_deref(),
        Some("one")
    );
    assert_eq!(outcomes[3].task, outcomes[1].task);
    assert_eq!(outcomes[4].task, None);
    assert_eq!(task(store, 7).status, TaskStatus::Skipped);

    // Task 1 succeeded once: its dependent is released once.
    assert_eq!(claim(store, 2_001, 10), ids(&[6]));
    assert!(claim(store, 2_002, 10).is_empty());

    // The same batch again changes nothing.
    let again = store.record_results(&batch, 2_500).unwrap();
    assert!(again.iter().all(|outcome| !outcome.applied));
    assert!(again
        .iter()
        .all(|outcome| outcome.skipped_task_ids.is_empty() && outcome.finished_queue_id.is_none()));
    assert_eq!(task(store, 1).worker_message.as_deref(), Some("one"));
    assert_eq!(task(store, 3).finished_at, Some(2_000));

    // The batch that settles the last tasks finishes the queue, once, on its last result.
    let last = [
        result(&id(6), 1, "six"),
        result(&id(4), 1, "four"),
        result(&id(3), 1, "three again"),
        result(&id(5), 1, "five"),
        result(&id(5), 1, "five again"),
    ];
    let outcomes = store.record_results(&last, 3_000).unwrap();
    assert_eq!(
        outcomes
            .iter()
            .map(|outcome| outcome.applied)
            .collect::<Vec<_>>(),
        vec![true, true, false, true, false]
    );
    assert_eq!(
        outcomes
            .iter()
            .map(|outcome| outcome.finished_queue_id.clone())
            .collect::<Vec<_>>(),
        vec![None, None, None, Some(queue_id.clone()), None]
    );
    let queue = store.get_queue(&queue_id).unwrap().unwrap();
    assert_eq!(queue.status, QueueStatus::Finished);
    assert_eq!(queue.finished_at, Some(3_000));
    assert!(store
        .record_results(&last, 4_000)
        .unwrap()
        .iter()
        .all(|outcome| !outcome.applied && outcome.finished_queue_id.is_none()));
    assert_eq!(
        store.get_queue(&queue_id).unwrap().unwrap().finished_at,
        Some(3_000)
    );
}

fn overlapping_batches_from_several_centers_apply_each_result_once(store: &Store) {
    // Two queues whose tasks interleave, each task with a dependent; every "center" records
    // every result, in batches, in its own order (as redeliveries after a crash would): each
    // result applies once, each queue finishes once, and no transaction deadlocks.
    const N_TASKS: u64 = 60;
    const N_CENTERS: usize = 4;
    let queues = [id(0x10_000), id(0x20_000)];
    for queue_id in &queues {
        store.create_queue(queue_id, "demo", "ops", 1).unwrap();
    }
    for n in 1..=N_TASKS {
        let queue_id = &queues[(n % 2) as usize];
        store
            .add_task(&queue_task(queue_id, &id(n), None, 10 + n))
            .unwrap();
        store
            .add_task(&queue_task(queue_id, &id(1_000 + n), Some(&id(n)), 100 + n))
            .unwrap();
    }
    for queue_id in &queues {
        store.commit_queue(queue_id, 2).unwrap();
    }
    assert_eq!(claim(store, 1_000, 1_000).len() as u64, N_TASKS);

    let barrier = Arc::new(Barrier::new(N_CENTERS));
    let threads: Vec<_> = (0..N_CENTERS)
        .map(|center| {
            let store = store.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut order: Vec<u64> = (1..=N_TASKS).collect();
                if center % 2 == 1 {
                    order.reverse();
                }
                order.rotate_left(center * 7);
                let results: Vec<JobResult> =
                    order.iter().map(|&n| result(&id(n), 1, "ok")).collect();
                barrier.wait();
                let mut outcomes = Vec::new();
                for batch in results.chunks(9 + center) {
                    outcomes.extend(
                        store
                            .record_results(batch, 2_000)
                            .unwrap()
                            .into_iter()
                            .zip(batch.iter().map(|result| result.id.clone())),
                    );
                }
                outcomes
            })
        })
        .collect();
    let outcomes: Vec<(RecordOutcome, TaskId)> = threads
        .into_iter()
        .flat_map(|thread| thread.join().unwrap())
        .collect();
    let applied: Vec<&TaskId> = outcomes
        .iter()
        .filter(|(outcome, _)| outcome.applied)
        .map(|(_, task_id)| task_id)
        .collect();
    assert_eq!(applied.len() as u64, N_TASKS, "each result applied once");
    assert_eq!(
        applied.iter().collect::<BTreeSet<_>>().len() as u64,
        N_TASKS
    );
    assert!(outcomes.iter().all(|(outcome, _)| outcome
        .task
        .as_ref()
        .is_some_and(|task| task.status == TaskStatus::Finished)));
    assert!(
        outcomes
            .iter()
            .all(|(outcome, _)| outcome.finished_queue_id.is_none()),
        "the dependents are still pending"
    );

    // Every dependent is released, once.
    let released = claim(store, 3_000, 1_000);
    assert_eq!(released, (1..=N_TASKS).map(|n| id(1_000 + n)).collect());
    assert!(claim(store, 3_001, 1_000).is_empty());
    let last: Vec<JobResult> = (1..=N_TASKS)
        .map(|n| result(&id(1_000 + n), 1, "ok"))
        .collect();
    let finished: Vec<TaskId> = store
        .record_results(&last, 4_000)
        .unwrap()
        .into_iter()
        .filter_map(|outcome| outcome.finished_queue_id)
        .collect();
    assert_eq!(
        finished.into_iter().collect::<BTreeSet<_>>(),
        queues.iter().cloned().collect()
    );
}

fn concurrent_claims_never_share_a_task(store: &Store) {
    const N_TASKS: u64 = 200;
    const N_THREADS: usize = 4;
    let queue_id = id(0x10_000);
    let tasks: Vec<(u64, Option<u64>)> = (1..=N_TASKS).map(|n| (n, None)).collect();
    committed_queue(store, &queue_id, &tasks);

    let barrier = Arc::new(Barrier::new(N_THREADS));
    let threads: Vec<_> = (0..N_THREADS)
        .map(|thread| {
            let store = store.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let center = format!("center-{thread}");
                let mut claimed = Vec::new();
                barrier.wait();
                loop {
                    let batch = store
                        .claim_ready_tasks(&center, 1_000, 7, ALLOWANCE)
                        .unwrap();
                    if batch.is_empty() {
                        break;
                    }
                    claimed.extend(batch.into_iter().map(|task| (task.id, center.clone())));
                }
                claimed
            })
        })
        .collect();
    let claimed: Vec<(TaskId, String)> = threads
        .into_iter()
        .flat_map(|thread| thread.join().unwrap())
        .collect();

    let unique: BTreeSet<&TaskId> = claimed.iter().map(|(task_id, _)| task_id).collect();
    assert_eq!(
        unique.len(),
        claimed.len(),
        "a task was returned to two callers"
    );
    assert_eq!(claimed.len() as u64, N_TASKS);
    assert!(claim(store, 1_001, 10).is_empty());
    // What each caller was told matches what the database says.
    let stored = queue_tasks_by_id(store, &queue_id);
    for (task_id, center) in &claimed {
        let task = &stored[task_id];
        assert_eq!(task.status, TaskStatus::Executing);
        assert_eq!(task.dispatched_by.as_ref(), Some(center));
    }
}

fn concurrent_results_finish_the_queue_exactly_once(store: &Store) {
    // Results of one queue recorded by several centers at once: whoever records the last one
    // must see the others, or the queue would stay committed forever.
    const N_TASKS: u64 = 40;
    const N_THREADS: u64 = 4;
    let queue_id = id(0x10_000);
    let tasks: Vec<(u64, Option<u64>)> = (1..=N_TASKS).map(|n| (n, None)).collect();
    committed_queue(store, &queue_id, &tasks);
    assert_eq!(claim(store, 1_000, 100).len() as u64, N_TASKS);

    let barrier = Arc::new(Barrier::new(N_THREADS as usize));
    let threads: Vec<_> = (0..N_THREADS)
        .map(|thread| {
            let store = store.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                (1..=N_TASKS)
                    .filter(|n| n % N_THREADS == thread)
                    .map(|n| {
                        store
                            .record_result(&result(&id(n), 1, "ok"), 2_000)
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let outcomes: Vec<RecordOutcome> = threads
        .into_iter()
        .flat_map(|thread| thread.join().unwrap())
        .collect();
    assert!(outcomes.iter().all(|outcome| outcome.applied));
    let n_finishers = outcomes
        .iter()
        .filter(|outcome| outcome.finished_queue_id.as_ref() == Some(&queue_id))
        .count();
    assert_eq!(n_finishers, 1);
    assert_eq!(
        store.get_queue(&queue_id).unwrap().unwrap().status,
        QueueStatus::Finished
    );
}

fn stop_returns_the_execing_tasks(store: &Store) {
    // 1, 2, 3 ← 1, and 4.
    let queue_id = id(0x100);
    committed_queue(
        store,
        &queue_id,
        &[(1, None), (2, None), (3, Some(1)), (4, None)],
    );
    assert_eq!(claim(store, 1_000, 2), ids(&[1, 2]));
    store
        .record_result(&result(&id(2), 1, "two"), 1_500)
        .unwrap();

    let outcome = store.stop_queue(&queue_id, 2_000).unwrap();
    assert_eq!(outcome.previous_status, QueueStatus::Committed);
    assert_eq!(outcome.execing_task_ids, vec![id(1)]);
    let tasks = queue_tasks_by_id(store, &queue_id);
    assert_eq!(tasks[&id(1)].status, TaskStatus::Stopped);
    assert_eq!(tasks[&id(1)].finished_at, Some(2_000));
    assert_eq!(tasks[&id(2)].status, TaskStatus::Finished);
    assert_eq!(tasks[&id(3)].status, TaskStatus::Stopped);
    assert_eq!(tasks[&id(4)].status, TaskStatus::Stopped);
    let queue = store.get_queue(&queue_id).unwrap().unwrap();
    assert_eq!(queue.status, QueueStatus::Stopped);
    assert_eq!(queue.finished_at, Some(2_000));

    // The cancelled task's result comes late and changes nothing; nothing runs any more.
    assert!(
        !store
            .record_result(&result(&id(1), 1, "late"), 2_500)
            .unwrap()
            .applied
    );
    assert_eq!(task(store, 1).status, TaskStatus::Stopped);
    assert!(claim(store, 2_600, 10).is_empty());
    assert!(matches!(
        store.add_task(&queue_task(&queue_id, &id(5), None, 20)),
        Err(StoreError::QueueStatusDoesNotAllow {
            status: QueueStatus::Stopped,
            ..
        })
    ));
    assert!(matches!(
        store.commit_queue(&queue_id, 2_700),
        Err(StoreError::QueueStatusDoesNotAllow {
            status: QueueStatus::Stopped,
            ..
        })
    ));
    let again = store.stop_queue(&queue_id, 2_800).unwrap();
    assert_eq!(again.previous_status, QueueStatus::Stopped);
    assert!(again.execing_task_ids.is_empty());
    assert_eq!(
        store.get_queue(&queue_id).unwrap().unwrap().finished_at,
        Some(2_000)
    );

    // An open queue stops too; a finished one cannot.
    let open_queue = id(0x200);
    store.create_queue(&open_queue, "demo", "ops", 1).unwrap();
    store
        .add_task(&queue_task(&open_queue, &id(21), None, 10))
        .unwrap();
    let outcome = store.stop_queue(&open_queue, 3_000).unwrap();
    assert_eq!(outcome.previous_status, QueueStatus::Open);
    assert!(outcome.execing_task_ids.is_empty());
    assert_eq!(task(store, 21).status, TaskStatus::Stopped);

    let finished_queue = id(0x300);
    committed_queue(store, &finished_queue, &[(31, None)]);
    assert_eq!(claim(store, 3_100, 10), ids(&[31]));
    store
        .record_result(&result(&id(31), 1, "done"), 3_200)
        .unwrap();
    assert!(matches!(
        store.stop_queue(&finished_queue, 3_300),
        Err(StoreError::QueueStatusDoesNotAllow {
            status: QueueStatus::Finished,
            ..
        })
    ));
}

fn expire_overdue_settles_tasks_past_their_deadline(store: &Store) {
    // 1 ← 2.
    let queue_id = id(0x100);
    committed_queue(store, &queue_id, &[(1, None), (2, Some(1))]);
    let claimed = store
        .claim_ready_tasks("center-a", 1_000, 10, Duration::from_secs(5))
        .unwrap();
    assert_eq!(claimed[0].deadline, Some(1_000 + 10_000 + 5_000));

    let rt_task = NewTask {
        queue_id: None,
        task_type: TaskType::Rt,
        ..queue_task(&queue_id, &id(9), None, 10)
    };
    let dispatch = Dispatch {
        center_instance: "center-b".to_string(),
        dispatched_at: 1_000,
        deadline: 20_000,
    };
    store.insert_task(&rt_task, &dispatch).unwrap();

    assert!(
        store.expire_overdue(16_000).unwrap().is_empty(),
        "the deadline itself is not past"
    );
    let expired = store.expire_overdue(16_001).unwrap();
    assert_eq!(expired.len(), 1);
    let settled = &expired[0];
    assert_eq!(settled.id, id(1));
    assert_eq!(settled.status, TaskStatus::Finished);
    assert_eq!(settled.worker_flag, Some(-1));
    assert_eq!(settled.flag, "false");
    assert_eq!(settled.error, DEADLINE_MESSAGE);
    assert_eq!(settled.worker_message.as_deref(), Some(DEADLINE_MESSAGE));
    assert_eq!(settled.finished_at, Some(16_001));
    assert_eq!(task(store, 2).status, TaskStatus::Skipped);
    let queue = store.get_queue(&queue_id).unwrap().unwrap();
    assert_eq!(queue.status, QueueStatus::Finished);
    assert_eq!(queue.finished_at, Some(16_001));

    // The agent's answer after the deadline is late.
    assert!(
        !store
            .record_result(&result(&id(1), 1, "late"), 17_000)
            .unwrap()
            .applied
    );
    assert_eq!(task(store, 1).worker_flag, Some(-1));
    assert!(store.expire_overdue(17_000).unwrap().is_empty());

    let expired = store.expire_overdue(20_001).unwrap();
    assert_eq!(
        expired
            .iter()
            .map(|task| task.id.clone())
            .collect::<Vec<_>>(),
        vec![id(9)]
    );
    assert!(store.expire_overdue(30_000).unwrap().is_empty());
}

fn rt_and_cron_tasks_are_stored_dispatched(store: &Store) {
    let queue_id = id(0x100);
    let rt_task = NewTask {
        queue_id: None,
        task_type: TaskType::Rt,
        mode: Mode::NP,
        ..queue_task(&queue_id, &id(1), None, 10)
    };
    let dispatch = Dispatch {
        center_instance: "center-a".to_string(),
        dispatched_at: 100,
        deadline: 160_100,
    };
    store.insert_task(&rt_task, &dispatch).unwrap();
    assert!(matches!(
        store.insert_task(&rt_task, &dispatch),
        Err(StoreError::DuplicateId(taken)) if taken == id(1)
    ));
    let stored = task(store, 1);
    assert_eq!(stored.status, TaskStatus::Executing);
    assert_eq!(stored.task_type, TaskType::Rt);
    assert_eq!(stored.queue_id, None);
    assert_eq!(stored.dispatched_by.as_deref(), Some("center-a"));
    assert_eq!(stored.dispatched_at, Some(100));
    assert_eq!(stored.deadline, Some(160_100));
    assert!(
        claim(store, 200, 10).is_empty(),
        "rt tasks are never claimed"
    );

    let mut agent_error = result(&id(1), -1, "");
    agent_error.error = "expired".to_string();
    let outcome = store.record_result(&agent_error, 300).unwrap();
    assert!(outcome.applied);
    assert_eq!(outcome.finished_queue_id, None);
    let settled = outcome.task.unwrap();
    assert_eq!(settled.status, TaskStatus::Finished);
    assert_eq!(
        (settled.flag.as_str(), settled.error.as_str()),
        ("false", "expired")
    );

    let cron_task = NewTask {
        id: id(2),
        task_type: TaskType::Cron,
        ..rt_task.clone()
    };
    store.insert_task(&cron_task, &dispatch).unwrap();
    assert_eq!(task(store, 2).task_type, TaskType::Cron);
    assert!(
        store
            .record_result(&result(&id(2), 1, "ok"), 400)
            .unwrap()
            .applied
    );

    let queue_kind = NewTask {
        id: id(3),
        task_type: TaskType::Queue,
        ..rt_task.clone()
    };
    assert!(matches!(
        store.insert_task(&queue_kind, &dispatch),
        Err(StoreError::InvalidTask { .. })
    ));
    let with_dependency = NewTask {
        id: id(4),
        depend_task_id: Some(id(1)),
        ..rt_task
    };
    assert!(matches!(
        store.insert_task(&with_dependency, &dispatch),
        Err(StoreError::InvalidTask { .. })
    ));
    assert_eq!(store.get_task(&id(3)).unwrap(), None);
}

fn rt_results_are_recorded_together(store: &Store) {
    let dispatch = Dispatch {
        center_instance: "center-a".to_string(),
        dispatched_at: 100,
        deadline: 160_100,
    };
    for n in 1..=3 {
        let rt_task = NewTask {
            queue_id: None,
            task_type: TaskType::Rt,
            ..queue_task(&id(0x100), &id(n), None, 10)
        };
        store.insert_task(&rt_task, &dispatch).unwrap();
    }
    let rt_result = |n: u64, worker_flag: i8, message: &str| JobResult {
        task_type: TaskType::Rt,
        ..result(&id(n), worker_flag, message)
    };
    let outcomes = store
        .record_rt_results(
            &[
                rt_result(2, 1, "two"),
                rt_result(1, 0, "one"),
                rt_result(2, 1, "again"),
                rt_result(7, 1, "unknown"),
            ],
            500,
        )
        .unwrap();
    let applied: Vec<bool> = outcomes.iter().map(|outcome| outcome.applied).collect();
    assert_eq!(applied, vec![true, true, false, false]);
    assert_eq!(outcomes[3].task, None);
    for (n, message, worker_flag) in [(1, "one", 0), (2, "two", 1)] {
        let stored = task(store, n);
        assert_eq!(stored.status, TaskStatus::Finished);
        assert_eq!(stored.worker_message.as_deref(), Some(message));
        assert_eq!(stored.worker_flag, Some(worker_flag));
        assert_eq!(stored.finished_at, Some(500));
    }
    assert_eq!(task(store, 3).status, TaskStatus::Executing);
    assert!(store.record_rt_results(&[], 600).unwrap().is_empty());
}

fn audit_log_round_trip(store: &Store) {
    assert!(store.recent_audit(10).unwrap().is_empty());
    let entries: Vec<AuditEntry> = (1..=3)
        .map(|n| AuditEntry {
            at: 1_000 * n,
            auth_id: "ops".to_string(),
            action: "queue/addtask".to_string(),
            target: id(n).to_string(),
            agent: (n != 2).then(|| "agent-1".to_string()),
            outcome: if n == 3 {
                "[412.1]queue not found".to_string()
            } else {
                "ok".to_string()
            },
        })
        .collect();
    for entry in &entries {
        store.audit(entry).unwrap();
    }
    let recent = store.recent_audit(2).unwrap();
    assert_eq!(
        recent
            .iter()
            .map(|row| row.entry.clone())
            .collect::<Vec<_>>(),
        vec![entries[2].clone(), entries[1].clone()]
    );
    assert!(recent[0].id > recent[1].id);
    assert_eq!(store.recent_audit(10).unwrap().len(), 3);
}

fn agents_round_trip(store: &Store) {
    assert_eq!(store.get_agent_by_ip_or_id("agent-1").unwrap(), None);
    let heartbeat = elves_shared::wire::Heartbeat {
        agent: agent(),
        ip: "10.0.0.7".to_string(),
        asset: "rack-7".to_string(),
        version: "0.1.0".to_string(),
        apps: BTreeMap::from([("demo".to_string(), "1.0".to_string())]),
        sent_at: 999,
        interval_ms: 5_000,
        packages: BTreeMap::new(),
        labels: BTreeMap::from([("role".to_string(), "web".to_string())]),
    };
    let first = AgentRow::from_heartbeat(&heartbeat, 1_000);
    assert_eq!(first.last_heartbeat_at, 1_000);
    store.upsert_agent(&first).unwrap();
    assert_eq!(
        store.get_agent_by_ip_or_id("agent-1").unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store.get_agent_by_ip_or_id("10.0.0.7").unwrap(),
        Some(first.clone())
    );
    assert_eq!(store.get_agent_by_ip_or_id("10.0.0.9").unwrap(), None);

    let newer = AgentRow {
        version: "0.2.0".to_string(),
        apps: BTreeMap::from([
            ("demo".to_string(), "1.1".to_string()),
            ("disk".to_string(), "2".to_string()),
        ]),
        last_heartbeat_at: 2_000,
        ..first.clone()
    };
    store.upsert_agent(&newer).unwrap();
    assert_eq!(
        store.get_agent_by_ip_or_id("agent-1").unwrap(),
        Some(newer.clone())
    );
    // A beat handled late (by another center) does not roll the row back.
    let older = AgentRow {
        version: "0.0.9".to_string(),
        last_heartbeat_at: 1_500,
        ..first.clone()
    };
    store.upsert_agent(&older).unwrap();
    assert_eq!(
        store.get_agent_by_ip_or_id("agent-1").unwrap(),
        Some(newer.clone())
    );

    let second = AgentRow {
        id: AgentId::parse("agent-2").unwrap(),
        ip: "10.0.0.8".to_string(),
        apps: BTreeMap::new(),
        ..first
    };
    store.upsert_agent(&second).unwrap();
    assert_eq!(store.list_agents().unwrap(), vec![newer, second]);
}

#[test]
fn sqlite_store_opens_a_plain_path_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("elves.db");
    let path = path.to_str().unwrap();
    {
        let store = Store::open(path).unwrap();
        store.create_queue(&id(1), "demo", "ops", 1).unwrap();
    }
    // Opening again runs no migration twice and finds the data.
    let store = Store::open(&format!("sqlite://{path}")).unwrap();
    assert_eq!(store.get_queue(&id(1)).unwrap().unwrap().app, "demo");
    assert!(matches!(
        Store::open("mysql://db/elves"),
        Err(StoreError::BadUrl(_))
    ));
}

#[test]
fn postgres_open_fails_fast_with_the_reason() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let err = Store::open("postgres://nobody@127.0.0.1:1/elves").unwrap_err();
    assert!(matches!(err, StoreError::Connect(_)), "{err}");
}

#[test]
fn store_is_a_clone_send_sync_handle() {
    fn assert_handle<T: Clone + Send + Sync + 'static>() {}
    assert_handle::<Store>();
}

fn apps_versions_and_bindings(store: &Store) {
    super::apps::tests::apps_versions_and_bindings(store);
}

fn concurrent_uploads_of_one_app(store: &Store) {
    super::apps::tests::concurrent_uploads_of_one_app(store);
}

fn submit_replies_are_owed_once_their_task_is_settled(store: &Store) {
    let queue_id = id(0x100);
    committed_queue(store, &queue_id, &[(1, None), (2, None)]);
    let address = |n: u64| ReplyAddress {
        reply_to: format!("reply.{n}"),
        correlation_id: Some(format!("corr-{n}")),
        json: n == 2,
    };
    store.save_submit_reply(&id(1), &address(1), 5).unwrap();
    store.save_submit_reply(&id(2), &address(2), 5).unwrap();
    let owed = |only: Option<&[TaskId]>, before: Option<u64>| -> Vec<(TaskId, ReplyAddress)> {
        store
            .settled_submit_replies(only, before, 10)
            .unwrap()
            .into_iter()
            .map(|(task, address)| (task.id, address))
            .collect()
    };
    assert!(
        owed(None, None).is_empty(),
        "nothing is owed while tasks wait"
    );

    store
        .claim_ready_tasks("center-a", 1_000, 10, Duration::from_secs(5))
        .unwrap();
    assert!(
        owed(None, None).is_empty(),
        "nothing is owed while tasks run"
    );
    assert!(
        store
            .record_result(&result(&id(1), 1, "one"), 2_000)
            .unwrap()
            .applied
    );
    assert_eq!(owed(None, None), vec![(id(1), address(1))]);
    assert_eq!(owed(Some(&[id(1)]), None), vec![(id(1), address(1))]);
    assert!(owed(Some(&[id(2)]), None).is_empty());
    assert!(
        owed(None, Some(2_000)).is_empty(),
        "settled at 2 000, not before"
    );
    assert_eq!(owed(None, Some(2_001)), vec![(id(1), address(1))]);
    let (settled, _) = store
        .settled_submit_replies(Some(&[id(1)]), None, 10)
        .unwrap()
        .remove(0);
    assert_eq!(settled.worker_flag, Some(1));
    assert_eq!(settled.worker_message.as_deref(), Some("one"));

    // A task settled by its deadline owes its reply as well.
    store.expire_overdue(1_000_000).unwrap();
    assert_eq!(
        owed(None, None),
        vec![(id(1), address(1)), (id(2), address(2))]
    );
    store.forget_submit_reply(&id(1)).unwrap();
    assert_eq!(owed(None, None), vec![(id(2), address(2))]);
    assert_eq!(store.count_submit_replies().unwrap(), 1);
    // Forgetting twice is harmless.
    store.forget_submit_reply(&id(1)).unwrap();
    assert_eq!(store.count_submit_replies().unwrap(), 1);
}

fn unsent_tasks_go_back_to_pending(store: &Store) {
    let queue_id = id(0x100);
    committed_queue(store, &queue_id, &[(1, None), (2, None), (3, Some(1))]);
    let claimed = store
        .claim_ready_tasks("center-a", 1_000, 10, Duration::from_secs(5))
        .unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(
        store.release_unsent(&[id(1)], "center-b").unwrap(),
        0,
        "another center's claim is not ours to release"
    );
    assert_eq!(store.release_unsent(&[id(1)], "center-a").unwrap(), 1);
    let released = task(store, 1);
    assert_eq!(released.status, TaskStatus::Pending);
    assert_eq!(released.dispatched_by, None);
    assert_eq!(released.deadline, None);
    assert_eq!(store.release_unsent(&[id(1)], "center-a").unwrap(), 0);

    // The next round claims it again, and only it: 3 still waits for 1.
    let again = store
        .claim_ready_tasks("center-a", 2_000, 10, Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        again.iter().map(|task| task.id.clone()).collect::<Vec<_>>(),
        vec![id(1)]
    );
    assert!(
        store
            .record_result(&result(&id(1), 1, "ok"), 3_000)
            .unwrap()
            .applied
    );

    // A stopped queue's claimed task stays stopped: it is cancelled, not sent again.
    store.stop_queue(&queue_id, 4_000).unwrap();
    assert_eq!(store.release_unsent(&[id(2)], "center-a").unwrap(), 0);
    assert_eq!(task(store, 2).status, TaskStatus::Stopped);
}

/// A database that hands out no connection (away, or every connection held) fails a call
/// within the checkout timeout with a message that says so, instead of holding it for 30 s.
#[test]
fn a_call_without_a_connection_fails_fast_and_says_why() {
    let db = TestDb::sqlite();
    let held: Vec<_> = (0..POOL_SIZE).map(|_| db.store.conn().unwrap()).collect();
    let asked = std::time::Instant::now();
    let err = db.store.list_apps().unwrap_err();
    let waited = asked.elapsed();
    assert!(matches!(err, StoreError::Pool(_)), "{err}");
    assert!(err.to_string().starts_with("database unavailable"), "{err}");
    assert!(
        waited >= CHECKOUT_TIMEOUT && waited < CHECKOUT_TIMEOUT * 3,
        "{waited:?}"
    );
    drop(held);
    assert!(db.store.list_apps().is_ok());
}

fn agents_written_in_batches_and_listed_by_page(store: &Store) {
    let row = |n: usize, at: u64| AgentRow {
        id: AgentId::parse(&format!("batch-{n:04}")).unwrap(),
        ip: format!("10.9.{}.{}", n / 256, n % 256),
        asset: String::new(),
        version: "1".to_string(),
        apps: BTreeMap::from([("noop".to_string(), "1".to_string())]),
        last_heartbeat_at: at,
        interval_ms: 1_000,
        labels: BTreeMap::from([("rack".to_string(), format!("r{}", n % 4))]),
    };
    // More rows than one statement takes, so that the chunks are exercised.
    let first: Vec<AgentRow> = (0..2_500).map(|n| row(n, 10_000)).collect();
    store.upsert_agents(&first).unwrap();
    assert_eq!(store.agents_seen_since(0).unwrap().len(), 2_500);

    // A later batch updates; a row older than the stored one changes nothing.
    let mut second: Vec<AgentRow> = (0..10).map(|n| row(n, 20_000)).collect();
    second.push(row(10, 5_000));
    store.upsert_agents(&second).unwrap();
    let recent = store.agents_seen_since(15_000).unwrap();
    assert_eq!(recent.len(), 10);
    assert_eq!(recent[0], row(0, 20_000));
    assert_eq!(
        store.get_agent_by_ip_or_id("batch-0010").unwrap(),
        Some(row(10, 10_000))
    );

    // Pages of distinct ips, in order, that together are the whole list once.
    let mut listed = Vec::new();
    let mut offset = 0;
    loop {
        let page = store.agent_ips_page(offset, 1_000).unwrap();
        let short = page.len() < 1_000;
        listed.extend(page);
        offset += 1_000;
        if short {
            break;
        }
    }
    let mut expected: Vec<String> = first.iter().map(|row| row.ip.clone()).collect();
    expected.sort();
    assert_eq!(listed, expected);

    let ids = vec!["batch-0003".to_string(), "nobody".to_string()];
    let found = store.agents_by_ids(&ids).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id.as_str(), "batch-0003");
}

fn output_keeps_head_and_tail_and_refuses_overlaps(store: &Store) {
    use elves_shared::wire::{OutputChunk, OutputStream};
    let bounds = OutputBounds {
        head_bytes: 10,
        tail_bytes: 10,
    };
    let chunk = |offset: u64, data: &str, eof: bool, dropped: u64| OutputChunk {
        id: id(7),
        stream: OutputStream::Stdout,
        offset,
        prev_end: offset,
        data: data.as_bytes().to_vec(),
        eof,
        dropped,
    };
    let store_one = |chunk: OutputChunk| store.store_output(&[chunk], bounds, 1_000).unwrap();
    assert_eq!(store_one(chunk(0, "abcdef", false, 0)), 1);
    // The head is clipped at its bound.
    assert_eq!(store_one(chunk(6, "ghijkl", false, 0)), 1);
    assert_eq!(store_one(chunk(12, "mnop", false, 0)), 1);
    // The tail has its 10 bytes after this one: the middle row goes.
    assert_eq!(store_one(chunk(16, "qrstuvwxyz", false, 0)), 1);
    // A duplicate and an overlap change nothing.
    assert_eq!(store_one(chunk(16, "qrstuvwxyz", false, 0)), 0);
    assert_eq!(store_one(chunk(20, "XXXX", false, 0)), 0);
    let read = |offset| {
        store
            .read_output(&id(7), OutputStream::Stdout, offset, 1024)
            .unwrap()
    };
    let whole = read(0);
    assert_eq!(
        String::from_utf8(whole.data).unwrap(),
        "abcdefghij[elves: 6 bytes dropped]\nqrstuvwxyz"
    );
    assert_eq!((whole.next, whole.eof, whole.task_eof), (26, false, false));
    let from_the_pruned_middle = read(13);
    assert_eq!(
        String::from_utf8(from_the_pruned_middle.data).unwrap(),
        "[elves: 3 bytes dropped]\nqrstuvwxyz"
    );
    let from_inside_a_row = read(18);
    assert_eq!(from_inside_a_row.data, b"stuvwxyz");
    assert_eq!(from_inside_a_row.next, 26);

    assert_eq!(store_one(chunk(26, "", true, 6)), 1);
    let at_end = read(26);
    assert!(at_end.data.is_empty());
    assert!(at_end.eof && at_end.task_eof && at_end.truncated);
    assert!(read(0).eof);
    assert!(store.output_truncated(&id(7)).unwrap());
    // Nothing after the end.
    assert_eq!(store_one(chunk(26, "late", false, 0)), 0);
    // Another stream of the same task is its own.
    let other = store
        .read_output(&id(7), OutputStream::Stderr, 0, 1024)
        .unwrap();
    assert!(other.data.is_empty() && !other.eof && other.task_eof);

    assert_eq!(store.delete_output_before(999).unwrap(), 0);
    assert_eq!(store.delete_output_before(1_001).unwrap(), 4);
    assert!(read(0).data.is_empty());
}
