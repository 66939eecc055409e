//! Queue tasks end to end: dependencies, fan-out, failures, stop, submissions, on every setup.

use crate::harness::{error_code, wait_until, Setup, TestEnv};
use crate::{on_both_buses, on_every_setup};
use serde_json::{json, Map, Value};
use std::time::Duration;

on_every_setup!(
    endpoints_answer_with_the_original_codes,
    dependency_chain_runs_in_order,
    fan_out_runs_across_agents,
    failure_skips_dependents_and_the_queue_completes,
    stop_cancels_the_running_task_and_stops_the_rest,
    quick_queue_runs_one_task,
    submission_runs_and_replies,
    submission_with_a_bad_signature_is_refused_and_runs_nothing,
    results_packed_in_one_message_are_stored_each_once,
);

// The center's result consumer batches with `try_next`: both buses must offer it.
on_both_buses!(consumer_try_next_takes_what_already_arrived_without_waiting);

const TERMINAL: [&str; 3] = ["finish", "skipped", "stoped"];

async fn env_with_agents(setup: Setup, agents: &[&str]) -> TestEnv {
    let mut env = TestEnv::start_with(setup).await;
    for agent in agents {
        env.start_agent(agent).await;
    }
    env
}

pub fn ok_result(answer: &Value) -> &Value {
    assert_eq!(answer["flag"], "true", "call failed: {answer}");
    &answer["result"]
}

pub async fn create_queue(env: &TestEnv) -> String {
    let answer = env.call("queue/create", &[("app", "elvestest")]).await;
    ok_result(&answer)["id"].as_str().unwrap().to_string()
}

pub async fn add_task(
    env: &TestEnv,
    queue_id: &str,
    ip: &str,
    func: &str,
    param: &str,
    depend: &str,
) -> String {
    let answer = env
        .call(
            "queue/addtask",
            &[
                ("queue_id", queue_id),
                ("ip", ip),
                ("func", func),
                ("param", param),
                ("depend_task_id", depend),
            ],
        )
        .await;
    ok_result(&answer)["id"].as_str().unwrap().to_string()
}

pub async fn commit(env: &TestEnv, queue_id: &str) {
    let answer = env.call("queue/commit", &[("queue_id", queue_id)]).await;
    ok_result(&answer);
}

pub async fn results(env: &TestEnv, queue_id: &str) -> Map<String, Value> {
    let answer = env.call("queue/result", &[("queue_id", queue_id)]).await;
    ok_result(&answer).as_object().unwrap().clone()
}

/// Waits until every task of the queue is finished, skipped or stopped; returns the results.
pub async fn wait_finished(env: &TestEnv, queue_id: &str) -> Map<String, Value> {
    let what = format!("every task of queue {queue_id} finished");
    wait_until(&what, Duration::from_secs(60), || async {
        results(env, queue_id)
            .await
            .values()
            .all(|task| TERMINAL.contains(&task["status"].as_str().unwrap()))
    })
    .await;
    results(env, queue_id).await
}

pub fn log_param(file: &std::path::Path, line: &str) -> String {
    json!({ "file": file, "line": line }).to_string()
}

pub fn read_lines(file: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn endpoints_answer_with_the_original_codes(setup: Setup) {
    let env = env_with_agents(setup, &["a1"]).await;
    let code = |answer: Value| error_code(&answer);
    assert_eq!(
        code(env.call("queue/create", &[("app", "bad/app")]).await),
        "403.3"
    );
    assert_eq!(
        code(env.call("queue/commit", &[("queue_id", "nothex")]).await),
        "403.6"
    );
    assert_eq!(
        code(
            env.call("queue/result", &[("queue_id", "0123456789ABCDEF")])
                .await
        ),
        "403.6"
    );
    assert_eq!(
        code(env.call("queue/stop", &[("queue_id", "")]).await),
        "403.6"
    );
    let unknown = "00000000000000aa";
    assert_eq!(
        code(env.call("queue/commit", &[("queue_id", unknown)]).await),
        "412.1"
    );
    assert_eq!(
        code(env.call("queue/result", &[("queue_id", unknown)]).await),
        "412.1"
    );
    assert_eq!(
        code(env.call("queue/stop", &[("queue_id", unknown)]).await),
        "412.1"
    );
    assert_eq!(
        code(
            env.call(
                "queue/addtask",
                &[("queue_id", unknown), ("ip", "ip-a1"), ("func", "ok")]
            )
            .await
        ),
        "412.1"
    );

    let queue_id = create_queue(&env).await;
    let q = queue_id.as_str();
    // Committing an empty queue is not allowed.
    assert_eq!(
        code(env.call("queue/commit", &[("queue_id", q)]).await),
        "412.2"
    );
    assert_eq!(
        code(
            env.call(
                "queue/addtask",
                &[("queue_id", q), ("ip", "nobody"), ("func", "ok")]
            )
            .await
        ),
        "414.1"
    );
    assert_eq!(
        code(
            env.call(
                "queue/addtask",
                &[("queue_id", q), ("ip", "ip-a1"), ("func", "")]
            )
            .await
        ),
        "403.7"
    );
    assert_eq!(
        code(
            env.call(
                "queue/addtask",
                &[
                    ("queue_id", q),
                    ("ip", "ip-a1"),
                    ("func", "ok"),
                    ("mode", "Q")
                ]
            )
            .await
        ),
        "403.4"
    );
    assert_eq!(
        code(
            env.call(
                "queue/addtask",
                &[
                    ("queue_id", q),
                    ("ip", "ip-a1"),
                    ("func", "ok"),
                    ("timeout", "1.5")
                ]
            )
            .await
        ),
        "403.8"
    );
    assert_eq!(
        code(
            env.call(
                "queue/addtask",
                &[
                    ("queue_id", q),
                    ("ip", "ip-a1"),
                    ("func", "ok"),
                    ("depend_task_id", unknown)
                ]
            )
            .await
        ),
        "412.4"
    );
    // A task of another queue is not a dependency this queue can have.
    let other = create_queue(&env).await;
    let foreign = add_task(&env, &other, "ip-a1", "ok", "", "").await;
    assert_eq!(
        code(
            env.call(
                "queue/addtask",
                &[
                    ("queue_id", q),
                    ("ip", "ip-a1"),
                    ("func", "ok"),
                    ("depend_task_id", &foreign)
                ]
            )
            .await
        ),
        "412.4"
    );

    let task = add_task(&env, q, "ip-a1", "ok", "", "").await;
    let before = results(&env, q).await;
    assert_eq!(
        before[&task],
        json!({"id": task, "status": "pendding", "depend_task_id": "", "flag": "", "error": "",
               "worker_flag": "", "worker_message": "", "worker_costtime": 0})
    );
    commit(&env, q).await;
    assert_eq!(
        code(env.call("queue/commit", &[("queue_id", q)]).await),
        "412.2"
    );
    assert_eq!(
        code(
            env.call(
                "queue/addtask",
                &[("queue_id", q), ("ip", "ip-a1"), ("func", "ok")]
            )
            .await
        ),
        "412.2"
    );
    let done = wait_finished(&env, q).await;
    assert_eq!(done[&task]["status"], "finish");
    assert_eq!(done[&task]["flag"], "true");
    assert_eq!(done[&task]["worker_flag"], "1");
    assert_eq!(done[&task]["worker_message"], "ok");
}

async fn dependency_chain_runs_in_order(setup: Setup) {
    let env = env_with_agents(setup, &["a1", "a2"]).await;
    let file = env.dir.path().join("chain.log");
    let q = create_queue(&env).await;
    let t1 = add_task(&env, &q, "ip-a1", "log", &log_param(&file, "one"), "").await;
    let t2 = add_task(&env, &q, "ip-a2", "log", &log_param(&file, "two"), &t1).await;
    let t3 = add_task(&env, &q, "ip-a1", "log", &log_param(&file, "three"), &t2).await;
    commit(&env, &q).await;
    let done = wait_finished(&env, &q).await;
    for (task, line) in [(&t1, "one"), (&t2, "two"), (&t3, "three")] {
        assert_eq!(done[task]["status"], "finish");
        assert_eq!(done[task]["worker_message"], line);
    }
    assert_eq!(done[&t2]["depend_task_id"], t1.as_str());
    assert_eq!(
        read_lines(&file),
        ["one", "two", "three"],
        "each task ran once, in order"
    );
}

async fn fan_out_runs_across_agents(setup: Setup) {
    let env = env_with_agents(setup, &["a1", "a2"]).await;
    let file = env.dir.path().join("fan.log");
    let q = create_queue(&env).await;
    let root = add_task(&env, &q, "ip-a1", "log", &log_param(&file, "root"), "").await;
    let mut leaves = Vec::new();
    for n in 0..6 {
        let agent = if n % 2 == 0 { "ip-a1" } else { "ip-a2" };
        leaves.push(
            add_task(
                &env,
                &q,
                agent,
                "log",
                &log_param(&file, &format!("leaf{n}")),
                &root,
            )
            .await,
        );
    }
    commit(&env, &q).await;
    let done = wait_finished(&env, &q).await;
    assert!(done
        .values()
        .all(|task| task["status"] == "finish" && task["worker_flag"] == "1"));
    let lines = read_lines(&file);
    assert_eq!(lines.len(), 7, "{lines:?}");
    assert_eq!(lines[0], "root");
    assert!(env.stats("a1").ran >= 1 && env.stats("a2").ran >= 1);
}

async fn failure_skips_dependents_and_the_queue_completes(setup: Setup) {
    let env = env_with_agents(setup, &["a1"]).await;
    let file = env.dir.path().join("skip.log");
    let q = create_queue(&env).await;
    let failing = add_task(&env, &q, "ip-a1", "false", "", "").await;
    let child = add_task(
        &env,
        &q,
        "ip-a1",
        "log",
        &log_param(&file, "child"),
        &failing,
    )
    .await;
    let grandchild = add_task(
        &env,
        &q,
        "ip-a1",
        "log",
        &log_param(&file, "grandchild"),
        &child,
    )
    .await;
    let independent = add_task(
        &env,
        &q,
        "ip-a1",
        "log",
        &log_param(&file, "independent"),
        "",
    )
    .await;
    commit(&env, &q).await;
    let done = wait_finished(&env, &q).await;
    assert_eq!(done[&failing]["status"], "finish");
    assert_eq!(done[&failing]["worker_flag"], "0");
    for skipped in [&child, &grandchild] {
        let task = &done[skipped];
        assert_eq!(task["status"], "skipped");
        assert_eq!(task["worker_flag"], "");
        assert_eq!(task["worker_costtime"], 0);
        assert!(
            task["error"].as_str().unwrap().contains(failing.as_str()),
            "{task}"
        );
    }
    assert_eq!(done[&independent]["status"], "finish");
    assert_eq!(read_lines(&file), ["independent"]);
}

async fn stop_cancels_the_running_task_and_stops_the_rest(setup: Setup) {
    let env = env_with_agents(setup, &["a1"]).await;
    let pidfile = env.dir.path().join("stop.pid");
    let q = create_queue(&env).await;
    let long = add_task(
        &env,
        &q,
        "ip-a1",
        "sleep",
        &json!({ "pidfile": pidfile }).to_string(),
        "",
    )
    .await;
    let waiting = add_task(&env, &q, "ip-a1", "ok", "", &long).await;
    commit(&env, &q).await;
    wait_until("long task running", Duration::from_secs(20), || async {
        pidfile.exists() && results(&env, &q).await[&long]["status"] == "execing"
    })
    .await;
    let answer = env.call("queue/stop", &[("queue_id", &q)]).await;
    let statuses = ok_result(&answer);
    assert_eq!(statuses[&long], "stoped");
    assert_eq!(statuses[&waiting], "stoped");
    // The agent killed the running worker's whole process group.
    let grandchild: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until("grandchild killed", Duration::from_secs(20), || async {
        unsafe { libc::kill(grandchild, 0) != 0 }
    })
    .await;
    assert_eq!(
        error_code(
            &env.call(
                "queue/addtask",
                &[("queue_id", &q), ("ip", "ip-a1"), ("func", "ok")]
            )
            .await
        ),
        "412.2"
    );
    assert_eq!(
        error_code(&env.call("queue/commit", &[("queue_id", &q)]).await),
        "412.2"
    );
    let after = results(&env, &q).await;
    assert_eq!(after[&long]["status"], "stoped");
    assert_eq!(after[&waiting]["status"], "stoped");
}

async fn quick_queue_runs_one_task(setup: Setup) {
    let env = env_with_agents(setup, &["a1"]).await;
    let answer = env
        .call(
            "queue/qksqueue",
            &[
                ("ip", "ip-a1"),
                ("app", "elvestest"),
                ("func", "echo"),
                ("param", "{\"a\":1}"),
            ],
        )
        .await;
    let result = ok_result(&answer);
    let (q, task) = (
        result["id"].as_str().unwrap(),
        result["task_id"].as_str().unwrap(),
    );
    let done = wait_finished(&env, q).await;
    assert_eq!(done[task]["worker_message"], "{\"a\":1}");
    assert_eq!(
        error_code(
            &env.call(
                "queue/qksqueue",
                &[
                    ("ip", "ip-a1"),
                    ("app", "elvestest"),
                    ("func", "ok"),
                    ("param", "{x")
                ]
            )
            .await
        ),
        "403.2"
    );
}

fn submit_message(
    env: &TestEnv,
    func: &str,
    auth_key: &str,
    json_encoding: bool,
) -> elves_shared::bus::BusMessage {
    let _ = env;
    submit_message_with_param(func, "{\"k\":\"v\"}", auth_key, json_encoding)
}

/// A signed submission for `elvestest.<func>` on agent a1, correlation id `corr-1`.
pub fn submit_message_with_param(
    func: &str,
    param: &str,
    auth_key: &str,
    json_encoding: bool,
) -> elves_shared::bus::BusMessage {
    use elves_shared::sign::{self, SignType};
    let mut submit = elves_shared::wire::Submit {
        auth_id: crate::harness::AUTH_ID.into(),
        timestamp: crate::harness::unix_now_s(),
        sign_type: "HMAC-SHA256".into(),
        sign: String::new(),
        agent: "ip-a1".into(),
        app: "elvestest".into(),
        func: func.into(),
        param: param.into(),
        timeout: 30,
        proxy: String::new(),
        mode: "NP".into(),
    };
    let fields = elves_center::submit::signed_fields(&submit);
    let text = sign::sign_string(
        "/submit",
        fields.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    submit.sign = sign::compute(SignType::HmacSha256, &text, auth_key);
    let mut message = if json_encoding {
        let mut message = elves_shared::bus::BusMessage::msgpack(
            elves_shared::wire::kind::SUBMIT,
            serde_json::to_vec(&submit).unwrap(),
        );
        message.content_type = elves_shared::bus::CONTENT_TYPE_JSON.into();
        message
    } else {
        elves_shared::bus::BusMessage::msgpack(
            elves_shared::wire::kind::SUBMIT,
            elves_shared::wire::encode(&submit),
        )
    };
    message.correlation_id = Some("corr-1".into());
    message
}

/// Declares a private reply queue on the bus and returns its consumer and name.
pub async fn reply_queue(
    env: &TestEnv,
) -> (
    elves_shared::bus::Consumer,
    String,
    elves_shared::bus::SharedBus,
) {
    let bus = env.participant_bus();
    let name = bus.queue_name(&format!("test.reply.{:08x}", rand::random::<u32>()));
    let consumer = bus
        .consume(
            elves_shared::bus::QueueSpec {
                name: name.clone(),
                bindings: Vec::new(),
                durable: false,
            },
            8,
        )
        .await
        .unwrap();
    (consumer, name, bus)
}

pub async fn next_reply(
    consumer: &mut elves_shared::bus::Consumer,
) -> elves_shared::bus::BusMessage {
    let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("a reply within 30 s")
        .unwrap();
    let message = delivery.message.clone();
    delivery.ack().await;
    message
}

async fn submission_runs_and_replies(setup: Setup) {
    let env = env_with_agents(setup, &["a1"]).await;
    let (mut consumer, reply_to, bus) = reply_queue(&env).await;
    let destination =
        elves_shared::bus::Destination::Topic(elves_shared::wire::routing::CENTER_SUBMIT.into());
    for json_encoding in [false, true] {
        let mut message = submit_message(&env, "echo", crate::harness::AUTH_KEY, json_encoding);
        message.reply_to = Some(reply_to.clone());
        bus.publish(&destination, message).await.unwrap();
        let reply = next_reply(&mut consumer).await;
        assert_eq!(reply.kind, "submit_reply");
        assert_eq!(reply.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(
            reply.is_json(),
            json_encoding,
            "the reply uses the request's encoding"
        );
        let envelope: elves_shared::wire::Envelope<elves_shared::wire::JobResult> = if json_encoding
        {
            serde_json::from_slice(&reply.body).unwrap()
        } else {
            elves_shared::wire::decode(&reply.body).unwrap()
        };
        assert_eq!(envelope.flag, "true");
        assert_eq!(envelope.result.worker_flag, 1);
        assert_eq!(envelope.result.worker_message, "{\"k\":\"v\"}");
    }
}

async fn submission_with_a_bad_signature_is_refused_and_runs_nothing(setup: Setup) {
    let env = env_with_agents(setup, &["a1"]).await;
    let (mut consumer, reply_to, bus) = reply_queue(&env).await;
    let destination =
        elves_shared::bus::Destination::Topic(elves_shared::wire::routing::CENTER_SUBMIT.into());
    let mut message = submit_message(&env, "ok", "not-the-key-at-all", false);
    message.reply_to = Some(reply_to.clone());
    bus.publish(&destination, message).await.unwrap();
    let reply = next_reply(&mut consumer).await;
    let envelope: elves_shared::wire::Envelope<Value> =
        elves_shared::wire::decode(&reply.body).unwrap();
    assert_eq!(envelope.flag, "false");
    assert!(envelope.error.starts_with("[401.5]"), "{}", envelope.error);
    // Garbage on the submit queue gets a reply too, and the center keeps serving.
    let mut garbage = elves_shared::bus::BusMessage::msgpack("submit", b"\xc1garbage".to_vec());
    garbage.reply_to = Some(reply_to.clone());
    bus.publish(&destination, garbage).await.unwrap();
    let reply = next_reply(&mut consumer).await;
    let envelope: elves_shared::wire::Envelope<Value> =
        elves_shared::wire::decode(&reply.body).unwrap();
    assert!(envelope.error.starts_with("[403.2]"), "{}", envelope.error);
    assert_eq!(
        env.stats("a1").ran,
        0,
        "a refused submission never reaches the agent"
    );
    let answer = env
        .call(
            "queue/qksqueue",
            &[("ip", "ip-a1"), ("app", "elvestest"), ("func", "ok")],
        )
        .await;
    let q = ok_result(&answer)["id"].as_str().unwrap().to_string();
    wait_finished(&env, &q).await;
    assert_eq!(env.stats("a1").ran, 1);
}

async fn consumer_try_next_takes_what_already_arrived_without_waiting(
    kind: crate::harness::BusKind,
) {
    let env = TestEnv::start(kind).await;
    let (mut consumer, name, bus) = reply_queue(&env).await;
    assert!(consumer.try_next().is_none(), "nothing was published yet");
    let destination = elves_shared::bus::Destination::Queue(name);
    for n in 0..3u8 {
        let message = elves_shared::bus::BusMessage::msgpack("test", vec![n]);
        bus.publish(&destination, message).await.unwrap();
    }
    let first = next_reply(&mut consumer).await;
    assert_eq!(first.body, vec![0]);
    // Deliveries reach the consumer on their own time (over RabbitMQ, from the broker).
    let mut bodies = Vec::new();
    wait_until("the other two deliveries", Duration::from_secs(10), || {
        if let Some(delivery) = consumer.try_next() {
            bodies.push(delivery.message.body.clone());
            tokio::spawn(delivery.ack());
        }
        std::future::ready(bodies.len() == 2)
    })
    .await;
    assert_eq!(bodies, vec![vec![1], vec![2]]);
    assert!(consumer.try_next().is_none(), "all three were taken");
}

/// Agents send the results they have ready at once as one `results` message. Here the test
/// plays the agent: it takes the instructions from the agent's queue itself and answers them
/// all in one message, next to a malformed and an empty one, then sends the batch again.
async fn results_packed_in_one_message_are_stored_each_once(setup: Setup) {
    use elves_shared::bus::{BusMessage, Destination, QueueSpec};
    use elves_shared::wire::{self, kind, routing, JobResult, ResultBatch};

    let mut env = env_with_agents(setup, &["a1"]).await;
    let q = create_queue(&env).await;
    let mut tasks = Vec::new();
    for n in 0..5 {
        tasks.push(add_task(&env, &q, "ip-a1", "ok", &json!({ "n": n }).to_string(), "").await);
    }
    // The real agent goes away; its queue stays, and the test reads it instead.
    env.stop_agent("a1").await;
    let bus = env.participant_bus();
    let spec = QueueSpec {
        name: bus.queue_name("agent.a1"),
        bindings: vec!["agent.a1".to_string()],
        durable: true,
    };
    let mut agent_queue = bus.consume(spec, 16).await.unwrap();
    commit(&env, &q).await;

    let mut answered = Vec::new();
    while answered.len() < tasks.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(30), agent_queue.next())
            .await
            .expect("an instruction within 30 s")
            .unwrap();
        // Tasks claimed together for one agent come as one `instructions` message.
        let instructions = instructions_in(&delivery.message);
        delivery.ack().await;
        for instruction in instructions {
            answered.push(JobResult {
                id: instruction.id.clone(),
                agent: instruction.agent.clone(),
                task_type: instruction.task_type,
                mode: instruction.mode,
                app: instruction.app.clone(),
                func: instruction.func.clone(),
                worker_flag: 1,
                worker_message: format!("answer to {}", instruction.param),
                worker_costtime: 3,
                started_at: instruction.issued_at,
                finished_at: instruction.issued_at + 3,
                error: String::new(),
            });
        }
    }
    let center_result = Destination::Topic(routing::CENTER_RESULT.to_string());
    let garbage = BusMessage::msgpack(kind::RESULTS, b"\xc1 not msgpack".to_vec());
    let empty = BusMessage::msgpack(
        kind::RESULTS,
        wire::encode(&ResultBatch { results: vec![] }),
    );
    let batch = |results: &[JobResult]| {
        let body = wire::encode(&ResultBatch {
            results: results.to_vec(),
        });
        BusMessage::msgpack(kind::RESULTS, body)
    };
    for message in [garbage, empty, batch(&answered)] {
        bus.publish(&center_result, message).await.unwrap();
    }

    let done = wait_finished(&env, &q).await;
    for task in &tasks {
        assert_eq!(done[task]["status"], "finish", "{task}: {:?}", done[task]);
        assert_eq!(done[task]["worker_flag"], "1");
    }
    let mut answers: Vec<String> = done
        .values()
        .map(|task| task["worker_message"].as_str().unwrap().to_string())
        .collect();
    answers.sort();
    let expected: Vec<String> = (0..5)
        .map(|n| format!("answer to {}", json!({ "n": n })))
        .collect();
    assert_eq!(answers, expected);

    // The same results again, now with other answers: a late duplicate changes nothing.
    // A later task's result, sent after it on the same queue, shows when it was consumed.
    for result in &mut answered {
        result.worker_message = "changed".to_string();
        result.worker_flag = 0;
    }
    bus.publish(&center_result, batch(&answered)).await.unwrap();
    let later_queue = create_queue(&env).await;
    add_task(&env, &later_queue, "ip-a1", "ok", "{}", "").await;
    commit(&env, &later_queue).await;
    let delivery = tokio::time::timeout(Duration::from_secs(30), agent_queue.next())
        .await
        .expect("the later instruction within 30 s")
        .unwrap();
    let instruction = instructions_in(&delivery.message).remove(0);
    delivery.ack().await;
    let later = JobResult {
        id: instruction.id.clone(),
        worker_message: "later".to_string(),
        ..answered[0].clone()
    };
    let message = BusMessage::msgpack(kind::RESULT, wire::encode(&later));
    bus.publish(&center_result, message).await.unwrap();
    wait_finished(&env, &later_queue).await;
    assert_eq!(
        results(&env, &q).await,
        done,
        "a duplicate batch changes nothing"
    );
}

/// The instructions an agent-queue message carries: one (`instruction`) or several
/// (`instructions`).
fn instructions_in(
    message: &elves_shared::bus::BusMessage,
) -> Vec<elves_shared::wire::Instruction> {
    use elves_shared::wire::{self, kind, InstructionBatch};
    match message.kind.as_str() {
        kind::INSTRUCTION => vec![wire::decode(&message.body).unwrap()],
        kind::INSTRUCTIONS => {
            wire::decode::<InstructionBatch>(&message.body)
                .unwrap()
                .instructions
        }
        other => panic!("not an instruction message: {other}"),
    }
}
