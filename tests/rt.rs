//! Instant (RT) calls end to end: HTTP → center → bus → agent → worker → reply → HTTP.

use crate::harness::{error_code, unix_now_s, TestEnv, AUTH_ID, AUTH_KEY};
use crate::on_both_buses;
use elves_shared::bus::{BusMessage, Destination};
use elves_shared::crypto::InstructionSigner;
use elves_shared::sign::{self, SignType};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{self, kind, routing, AgentId, Instruction, Mode, TaskId, TaskType};
use serde_json::Value;
use std::time::{Duration, Instant};

on_both_buses!(
    apptest_helloword_returns_the_param,
    app_returning_false_is_worker_flag_0,
    crashing_app_is_worker_flag_minus_1_with_stderr,
    missing_app_is_reported_not_installed,
    timeout_kills_the_whole_process_group,
    large_output_is_truncated_and_well_formed,
    param_round_trips_byte_exact,
    worker_sees_task_environment,
    forged_and_unsigned_instructions_never_run,
    garbage_on_the_agent_queue_is_dropped_and_agent_keeps_serving,
    unknown_agent_fails_at_once_with_414,
    offline_agent_fails_at_once_with_410,
);

async fn env_with_agent(kind: crate::harness::BusKind) -> TestEnv {
    let mut env = TestEnv::start(kind).await;
    env.start_agent("a1").await;
    env
}

fn result_of(answer: &Value) -> &Value {
    assert_eq!(answer["flag"], "true", "call failed: {answer}");
    &answer["result"]
}

async fn apptest_helloword_returns_the_param(kind: crate::harness::BusKind) {
    let env = env_with_agent(kind).await;
    for sign_type in [SignType::Md5, SignType::HmacSha256] {
        let answer = env
            .call_signed(
                "rt/exec",
                &[
                    ("ip", "ip-a1"),
                    ("app", "apptest"),
                    ("func", "helloword"),
                    ("param", r#"{"my":"hello elves"}"#),
                ],
                sign_type,
            )
            .await;
        let result = result_of(&answer);
        assert_eq!(result["worker_flag"], "1");
        assert_eq!(result["worker_message"], "hello elves");
        assert!(result["worker_costtime"].is_u64());
        assert!(TaskId::parse(result["id"].as_str().unwrap()).is_ok());
        assert_eq!(answer["error"], "");
    }
    // Addressing the agent by its id works as well as by its ip.
    let by_id = env
        .call(
            "rt/exec",
            &[
                ("ip", "a1"),
                ("app", "apptest"),
                ("func", "helloword"),
                ("param", r#"{"my":1}"#),
            ],
        )
        .await;
    assert_eq!(result_of(&by_id)["worker_message"], "1");

    let metrics = env.metrics().await;
    assert!(
        metrics.contains("elves_api_calls_total{endpoint=\"rt/exec\",code=\"ok\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("elves_tasks_total{outcome=\"succeeded\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("elves_agents_online 1"), "{metrics}");
}

async fn app_returning_false_is_worker_flag_0(kind: crate::harness::BusKind) {
    let env = env_with_agent(kind).await;
    let answer = env
        .call(
            "rt/exec",
            &[("ip", "ip-a1"), ("app", "elvestest"), ("func", "false")],
        )
        .await;
    // The platform got a result, so the call itself succeeded: only worker_flag says false.
    let result = result_of(&answer);
    assert_eq!(result["worker_flag"], "0");
    assert_eq!(result["worker_message"], "nope");
}

async fn crashing_app_is_worker_flag_minus_1_with_stderr(kind: crate::harness::BusKind) {
    let env = env_with_agent(kind).await;
    let answer = env
        .call(
            "rt/exec",
            &[("ip", "ip-a1"), ("app", "elvestest"), ("func", "crash")],
        )
        .await;
    let result = result_of(&answer);
    assert_eq!(result["worker_flag"], "-1");
    let message = result["worker_message"].as_str().unwrap();
    assert!(message.contains("boom"), "stderr shown on -1: {message}");
    assert!(message.contains('3'), "exit code named: {message}");
}

async fn missing_app_is_reported_not_installed(kind: crate::harness::BusKind) {
    let env = env_with_agent(kind).await;
    let answer = env
        .call(
            "rt/exec",
            &[("ip", "ip-a1"), ("app", "nosuchapp"), ("func", "x")],
        )
        .await;
    let result = result_of(&answer);
    assert_eq!(result["worker_flag"], "-1");
    assert_eq!(result["worker_message"], "app [nosuchapp] not installed");
}

fn process_exists(pid: i32) -> bool {
    // Signal 0 checks for existence; a zombie still counts, which is what we want to rule out.
    unsafe { libc::kill(pid, 0) == 0 }
}

async fn timeout_kills_the_whole_process_group(kind: crate::harness::BusKind) {
    let env = env_with_agent(kind).await;
    let pidfile = env.dir.path().join("grandchild.pid");
    let param = serde_json::json!({ "pidfile": pidfile }).to_string();
    let answer = env
        .call(
            "rt/exec",
            &[
                ("ip", "ip-a1"),
                ("app", "elvestest"),
                ("func", "sleep"),
                ("timeout", "1"),
                ("param", &param),
            ],
        )
        .await;
    let result = result_of(&answer);
    assert_eq!(result["worker_flag"], "-1");
    assert!(result["worker_message"]
        .as_str()
        .unwrap()
        .contains("app exec timeout"));
    let costtime = result["worker_costtime"].as_u64().unwrap();
    assert!((1_000..10_000).contains(&costtime), "costtime {costtime}");

    let text = std::fs::read_to_string(&pidfile).expect("the worker started its grandchild");
    let grandchild: i32 = text.trim().parse().unwrap();
    crate::harness::wait_until(
        "grandchild killed and reaped",
        Duration::from_secs(10),
        || async { !process_exists(grandchild) },
    )
    .await;
}

async fn large_output_is_truncated_and_well_formed(kind: crate::harness::BusKind) {
    let env = env_with_agent(kind).await;
    let answer = env
        .call(
            "rt/exec",
            &[("ip", "ip-a1"), ("app", "elvestest"), ("func", "big")],
        )
        .await;
    let result = result_of(&answer);
    assert_eq!(
        result["worker_flag"], "1",
        "flag still read from the captured part"
    );
    let message = result["worker_message"].as_str().unwrap();
    assert!(
        message.len() < 1_100_000,
        "capped at 1 MiB, got {}",
        message.len()
    );
    assert!(
        message.len() > 1_000_000,
        "keeps what was captured, got {}",
        message.len()
    );
    assert!(message.starts_with("xxxx"));
    let marker_at = message.rfind("…[truncated ").expect("truncation marker");
    let dropped: u64 = message[marker_at..]
        .trim_start_matches("…[truncated ")
        .trim_end_matches(" bytes]")
        .parse()
        .unwrap();
    assert!(dropped > 1_000_000, "dropped {dropped}");
}

async fn param_round_trips_byte_exact(kind: crate::harness::BusKind) {
    let env = env_with_agent(kind).await;
    let params = [
        r#"{"text":"héllo wörld ✓ 中文 🎉","quote":"\"x\" 'y'","nl":"a\nb\r\n\tc","esc":"\\u0041"}"#,
        "\"just a string with spaces  and\\ttabs\"",
        "[1, 2.50, {\"k\": null}]   ",
        "",
    ];
    for param in params {
        let answer = env
            .call(
                "rt/exec",
                &[
                    ("ip", "ip-a1"),
                    ("app", "elvestest"),
                    ("func", "echo"),
                    ("param", param),
                ],
            )
            .await;
        let result = result_of(&answer);
        assert_eq!(result["worker_flag"], "1", "{param}");
        assert_eq!(result["worker_message"].as_str().unwrap(), param);
    }
}

async fn worker_sees_task_environment(kind: crate::harness::BusKind) {
    let env = env_with_agent(kind).await;
    let answer = env
        .call(
            "rt/exec",
            &[
                ("ip", "ip-a1"),
                ("app", "elvestest"),
                ("func", "env"),
                ("mode", "p"),
            ],
        )
        .await;
    let result = result_of(&answer);
    let id = result["id"].as_str().unwrap();
    assert_eq!(result["worker_message"], format!("{id} elvestest env rt P"));
}

fn instruction_for(agent: &str, func: &str, param: &str) -> Instruction {
    let now = now_unix_ms();
    Instruction {
        id: TaskId::random(),
        agent: AgentId::parse(agent).unwrap(),
        task_type: TaskType::Queue,
        mode: Mode::NP,
        app: "elvestest".into(),
        func: func.into(),
        param: param.into(),
        timeout: 30,
        proxy: String::new(),
        issued_at: now,
        deadline: now + 60_000,
    }
}

async fn forged_and_unsigned_instructions_never_run(kind: crate::harness::BusKind) {
    let env = env_with_agent(kind).await;
    let bus = env.participant_bus();
    let destination = Destination::Topic(routing::agent(&AgentId::parse("a1").unwrap()));
    let pidfile = env.dir.path().join("forged.pid");
    let param = serde_json::json!({ "pidfile": pidfile }).to_string();

    // Someone with broker access and a key of their own, claiming the center's key id.
    let forger = InstructionSigner::generate(&env.center().key_id);
    let forged = instruction_for("a1", "sleep", &param);
    let mut message = BusMessage::msgpack(kind::INSTRUCTION, wire::encode(&forged));
    message.sig = Some(forger.sign(&message.body));
    message.key_id = Some(forger.key_id().to_string());
    bus.publish(&destination, message).await.unwrap();

    let unsigned = instruction_for("a1", "sleep", &param);
    let message = BusMessage::msgpack(kind::INSTRUCTION, wire::encode(&unsigned));
    bus.publish(&destination, message).await.unwrap();

    crate::harness::wait_until("both refused", Duration::from_secs(10), || async {
        env.stats("a1").refused_signature == 2
    })
    .await;
    // The agent still serves the real center, and the refused ones never started a worker.
    let answer = env
        .call(
            "rt/exec",
            &[("ip", "ip-a1"), ("app", "elvestest"), ("func", "ok")],
        )
        .await;
    assert_eq!(result_of(&answer)["worker_flag"], "1");
    assert!(!pidfile.exists(), "a refused instruction ran");
    assert_eq!(env.stats("a1").ran, 1);
}

async fn garbage_on_the_agent_queue_is_dropped_and_agent_keeps_serving(
    kind: crate::harness::BusKind,
) {
    let env = env_with_agent(kind).await;
    let bus = env.participant_bus();
    let destination = Destination::Topic(routing::agent(&AgentId::parse("a1").unwrap()));
    // Garbage signed with the center's own key reaches the decoder; unsigned garbage does not.
    let center_key =
        InstructionSigner::load_or_create(&env.center().key_id, &env.dir.path().join("center.key"))
            .unwrap();
    let mut signed_garbage =
        BusMessage::msgpack(kind::INSTRUCTION, b"\xc1\xff not msgpack".to_vec());
    signed_garbage.sig = Some(center_key.sign(&signed_garbage.body));
    signed_garbage.key_id = Some(center_key.key_id().to_string());
    bus.publish(&destination, signed_garbage).await.unwrap();
    bus.publish(&destination, BusMessage::msgpack("nonsense", vec![0, 1, 2]))
        .await
        .unwrap();
    bus.publish(
        &destination,
        BusMessage::msgpack(kind::INSTRUCTION, Vec::new()),
    )
    .await
    .unwrap();

    crate::harness::wait_until("garbage dropped", Duration::from_secs(10), || async {
        let stats = env.stats("a1");
        stats.undecodable + stats.refused_signature == 3
    })
    .await;
    assert!(env.stats("a1").undecodable >= 1, "{:?}", env.stats("a1"));
    let answer = env
        .call(
            "rt/exec",
            &[
                ("ip", "ip-a1"),
                ("app", "apptest"),
                ("func", "helloword"),
                ("param", r#"{"my":"still here"}"#),
            ],
        )
        .await;
    assert_eq!(result_of(&answer)["worker_message"], "still here");
}

async fn unknown_agent_fails_at_once_with_414(kind: crate::harness::BusKind) {
    let env = env_with_agent(kind).await;
    let started = Instant::now();
    let answer = env
        .call(
            "rt/exec",
            &[
                ("ip", "10.9.9.9"),
                ("app", "apptest"),
                ("func", "helloword"),
                ("timeout", "60"),
            ],
        )
        .await;
    assert_eq!(error_code(&answer), "414.1", "{answer}");
    assert_eq!(answer["flag"], "false");
    // Failing "at once" means not waiting out the 60 s timeout of the call.
    assert!(started.elapsed() < Duration::from_secs(10));
}

async fn offline_agent_fails_at_once_with_410(kind: crate::harness::BusKind) {
    let mut env = env_with_agent(kind).await;
    env.stop_agent("a1").await;
    env.wait_offline("a1").await;
    let started = Instant::now();
    let answer = env
        .call(
            "rt/exec",
            &[
                ("ip", "ip-a1"),
                ("app", "apptest"),
                ("func", "helloword"),
                ("timeout", "60"),
            ],
        )
        .await;
    assert_eq!(error_code(&answer), "410.1", "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

// Error codes do not depend on the bus: these run once, on the in-process bus.

fn signed_pairs(
    path: &str,
    params: &[(&str, &str)],
    timestamp: &str,
    sign_type: SignType,
) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    pairs.push(("auth_id".into(), AUTH_ID.into()));
    pairs.push(("timestamp".into(), timestamp.into()));
    sign::sign_params(path, pairs, sign_type, AUTH_KEY)
}

fn replace(pairs: &mut [(String, String)], key: &str, value: &str) {
    for pair in pairs.iter_mut().filter(|(k, _)| k == key) {
        pair.1 = value.to_string();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auth_error_has_its_code() {
    let env = env_with_agent(crate::harness::BusKind::InProc).await;
    let path = "/api/v2/rt/exec";
    let ok_params = [
        ("ip", "ip-a1"),
        ("app", "apptest"),
        ("func", "helloword"),
        ("param", r#"{"my":"x"}"#),
    ];
    let now = unix_now_s().to_string();
    let good = signed_pairs(path, &ok_params, &now, SignType::Md5);
    assert_eq!(
        result_of(&env.post_form(path, &good).await)["worker_message"],
        "x"
    );
    // GET with the query string is the same call.
    assert_eq!(
        result_of(&env.get_query(path, &good).await)["worker_message"],
        "x"
    );

    let mut cases: Vec<(&str, Vec<(String, String)>)> = Vec::new();
    cases.push((
        "401.1",
        good.iter().filter(|(k, _)| k != "sign").cloned().collect(),
    ));
    cases.push((
        "401.1",
        good.iter()
            .filter(|(k, _)| k != "sign_type")
            .cloned()
            .collect(),
    ));
    let mut unknown = good.clone();
    replace(&mut unknown, "auth_id", "intruder");
    cases.push(("401.2", unknown));
    let mut bad_type = good.clone();
    replace(&mut bad_type, "sign_type", "SHA1");
    cases.push(("401.3", bad_type));
    let mut short = good.clone();
    replace(&mut short, "sign", "abcdef");
    cases.push(("401.4", short));
    let mut tampered = good.clone();
    replace(&mut tampered, "func", "other");
    cases.push(("401.5", tampered));
    let old = (unix_now_s() - 1_000).to_string();
    cases.push(("401.7", signed_pairs(path, &ok_params, &old, SignType::Md5)));
    cases.push((
        "401.8",
        signed_pairs(path, &ok_params, "yesterday", SignType::HmacSha256),
    ));
    // Auth errors win over parameter errors.
    let mut both = signed_pairs(path, &[("ip", "bad ip!")], &now, SignType::Md5);
    replace(&mut both, "sign", &"0".repeat(32));
    cases.push(("401.5", both));
    for (code, pairs) in cases {
        let answer = env.post_form(path, &pairs).await;
        assert_eq!(error_code(&answer), code, "{pairs:?} → {answer}");
        assert_eq!(answer["flag"], "false");
        assert!(answer["result"].is_null());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_parameter_error_has_its_code() {
    let env = env_with_agent(crate::harness::BusKind::InProc).await;
    let base = [("ip", "ip-a1"), ("app", "apptest"), ("func", "helloword")];
    let with = |key: &'static str, value: &'static str| {
        let mut params: Vec<(&str, &str)> =
            base.iter().filter(|(k, _)| *k != key).copied().collect();
        params.push((key, value));
        params
    };
    let without = |key: &'static str| -> Vec<(&str, &str)> {
        base.iter().filter(|(k, _)| *k != key).copied().collect()
    };
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("403.1", without("ip")),
        ("403.1", with("ip", "10.0.0.1;rm")),
        ("403.2", with("param", "{not json")),
        ("403.3", without("app")),
        ("403.3", with("app", "../etc")),
        ("403.4", with("mode", "X")),
        ("403.7", without("func")),
        ("403.7", with("func", "a b")),
        ("403.8", with("timeout", "-1")),
        ("403.8", with("timeout", "1.5")),
        ("403.8", with("timeout", "86401")),
        ("403.8", with("timeout", "soon")),
        // 403.1 comes before 403.3 in the table, so it wins.
        ("403.1", vec![("ip", ""), ("app", "")]),
    ];
    for (code, params) in cases {
        let answer = env.call("rt/exec", &params).await;
        assert_eq!(error_code(&answer), code, "{params:?} → {answer}");
    }
    assert_eq!(env.stats("a1").ran, 0, "no refused call reached the agent");
    let metrics = env.metrics().await;
    assert!(
        metrics.contains("elves_api_calls_total{endpoint=\"rt/exec\",code=\"403.8\"} 4"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics_need_no_signature_and_show_no_secrets() {
    let env = env_with_agent(crate::harness::BusKind::InProc).await;
    let health = env.healthz().await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["heartbeat"]["agents_online"], 1);
    let text = health.to_string() + &env.metrics().await;
    assert!(!text.contains(AUTH_KEY));
}
