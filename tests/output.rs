//! Live output (SPEC §12): chunks while the worker runs, `task/follow` with resume, head and
//! tail over the cap, the end event, a center restart mid-task, retention, and `rt/exec` with
//! `wait_s`.

use crate::harness::{error_code, unix_now_s, wait_until, BusKind, TestEnv, AUTH_ID, AUTH_KEY};
use crate::on_both_buses;
use elves_shared::sign::{self, SignType};
use serde_json::Value;
use std::time::{Duration, Instant};

on_both_buses!(
    output_is_seen_while_the_worker_runs_and_wait_s_answers_running,
    a_follower_that_reconnects_misses_nothing_and_gets_nothing_twice,
    output_over_the_cap_keeps_head_and_tail_with_the_marker,
    a_center_restart_mid_task_loses_no_output,
    retention_removes_old_output,
    unknown_tasks_and_bad_parameters_are_refused,
);

/// One server-sent event.
#[derive(Debug, Clone)]
struct Event {
    id: u64,
    name: String,
    data: Value,
}

/// A `task/follow` connection, read event by event.
struct Follow {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Follow {
    async fn open(env: &TestEnv, task_id: &str, last_event_id: Option<u64>) -> Follow {
        let path = "/api/v2/task/follow";
        let pairs = vec![
            ("id".to_string(), task_id.to_string()),
            ("stream".to_string(), "stdout".to_string()),
            ("auth_id".to_string(), AUTH_ID.to_string()),
            ("timestamp".to_string(), unix_now_s().to_string()),
        ];
        let signed = sign::sign_params(path, pairs, SignType::Md5, AUTH_KEY);
        let mut request = reqwest::Client::new()
            .post(format!("{}{path}", env.base_url))
            .form(&signed);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Follow {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next event (keepalive comments skipped); panics after 30 s without one.
    async fn next(&mut self) -> Option<Event> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(end) = self.buffer.windows(2).position(|pair| pair == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8(block).unwrap();
                if text.starts_with(':') {
                    continue;
                }
                let field = |name: &str| {
                    text.lines()
                        .find_map(|line| line.strip_prefix(&format!("{name}: ")))
                        .unwrap_or_else(|| panic!("no {name} in {text:?}"))
                        .to_string()
                };
                return Some(Event {
                    id: field("id").parse().unwrap(),
                    name: field("event"),
                    data: serde_json::from_str(&field("data")).unwrap(),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .expect("an event within 30 s")
                .unwrap();
            match chunk {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => return None,
            }
        }
    }
}

/// Reads the follow to its end: the text, and the end event.
async fn read_to_end(follow: &mut Follow, mut text: String, mut at: u64) -> (String, Event) {
    for _ in 0..10_000 {
        let event = follow
            .next()
            .await
            .expect("the stream ends with an end event");
        match event.name.as_str() {
            "chunk" => {
                assert_eq!(event.data["offset"], at, "chunks are contiguous: {event:?}");
                text.push_str(event.data["data"].as_str().unwrap());
                at = event.id;
            }
            "end" => {
                assert!(follow.next().await.is_none(), "nothing after end");
                return (text, event);
            }
            other => panic!("unexpected event {other}: {event:?}"),
        }
    }
    panic!("no end event");
}

fn ticks_text(n: usize) -> String {
    let mut text: String = (1..=n).map(|i| format!("tick {i}\n")).collect();
    text.push_str(&format!(
        "<ElvesWFlag>true</ElvesWFlag><ElvesWResult>ticked {n}</ElvesWResult>\n"
    ));
    text
}

async fn start_ticks(env: &TestEnv, n: usize) -> String {
    let param = format!(r#"{{"n":"{n}"}}"#);
    let answer = env
        .call(
            "rt/exec",
            &[
                ("ip", "ip-a1"),
                ("app", "elvestest"),
                ("func", "ticks"),
                ("param", &param),
                ("wait_s", "1"),
            ],
        )
        .await;
    assert_eq!(answer["flag"], "true", "{answer}");
    assert_eq!(answer["result"]["state"], "running", "{answer}");
    answer["result"]["id"].as_str().unwrap().to_string()
}

async fn task_result(env: &TestEnv, task_id: &str) -> Value {
    let answer = env.call("task/result", &[("id", task_id)]).await;
    assert_eq!(answer["flag"], "true", "{answer}");
    answer["result"].clone()
}

async fn output_from(env: &TestEnv, task_id: &str, offset: u64) -> Value {
    let offset = offset.to_string();
    let answer = env
        .call(
            "task/output",
            &[("id", task_id), ("stream", "stdout"), ("offset", &offset)],
        )
        .await;
    assert_eq!(answer["flag"], "true", "{answer}");
    answer["result"].clone()
}

/// The whole stored stdout of an ended task, read page by page.
async fn whole_output(env: &TestEnv, task_id: &str) -> String {
    let mut text = String::new();
    let mut at = 0;
    for _ in 0..1_000 {
        let page = output_from(env, task_id, at).await;
        assert_eq!(page["offset"], at);
        text.push_str(page["data"].as_str().unwrap());
        let next = page["next"].as_u64().unwrap();
        if next == at {
            return text;
        }
        at = next;
    }
    panic!("output without end");
}

async fn output_is_seen_while_the_worker_runs_and_wait_s_answers_running(kind: BusKind) {
    let mut env = TestEnv::start(kind).await;
    env.start_agent("a1").await;
    // 50 ticks of 100 ms: a 5 s task.
    let asked = Instant::now();
    let task_id = start_ticks(&env, 50).await;
    let answered_in = asked.elapsed();
    assert!(
        answered_in < Duration::from_millis(2_500),
        "wait_s=1 answered after {answered_in:?}"
    );
    let mut follow = Follow::open(&env, &task_id, None).await;
    let first = follow.next().await.unwrap();
    assert_eq!(first.name, "chunk");
    assert_eq!(first.data["offset"], 0);
    assert!(
        first.data["data"].as_str().unwrap().starts_with("tick 1\n"),
        "{first:?}"
    );
    // Seen while the worker still runs.
    assert_eq!(task_result(&env, &task_id).await["state"], "running");
    let (text, end) = read_to_end(
        &mut follow,
        first.data["data"].as_str().unwrap().into(),
        first.id,
    )
    .await;
    assert_eq!(text, ticks_text(50));
    assert_eq!(end.data["state"], "finished");
    assert_eq!(end.data["worker_flag"], "1");
    assert_eq!(end.data["truncated"], false);
    assert_eq!(end.id, text.len() as u64);
    assert!(end.data["worker_costtime"].as_u64().unwrap() >= 4_000);

    let result = task_result(&env, &task_id).await;
    assert_eq!(result["state"], "finished");
    assert_eq!(result["worker_flag"], "1");
    assert_eq!(result["worker_message"], "ticked 50");
    let stdout = output_from(&env, &task_id, 0).await;
    assert_eq!(stdout["ended"], true);
    assert_eq!(stdout["data"], ticks_text(50));
}

async fn a_follower_that_reconnects_misses_nothing_and_gets_nothing_twice(kind: BusKind) {
    let mut env = TestEnv::start(kind).await;
    env.start_agent("a1").await;
    let task_id = start_ticks(&env, 20).await;
    let mut follow = Follow::open(&env, &task_id, None).await;
    let mut text = String::new();
    let mut at = 0;
    for _ in 0..2 {
        let event = follow.next().await.unwrap();
        assert_eq!(event.name, "chunk");
        text.push_str(event.data["data"].as_str().unwrap());
        at = event.id;
    }
    // The connection drops; the client comes back with the last id it saw.
    drop(follow);
    let mut resumed = Follow::open(&env, &task_id, Some(at)).await;
    let (text, end) = read_to_end(&mut resumed, text, at).await;
    assert_eq!(text, ticks_text(20));
    assert_eq!(end.data["state"], "finished");
    // Resuming at the end gives the end at once, and nothing else.
    let mut at_end = Follow::open(&env, &task_id, Some(end.id)).await;
    let only = at_end.next().await.unwrap();
    assert_eq!(only.name, "end");
    assert_eq!(only.id, end.id);
}

async fn output_over_the_cap_keeps_head_and_tail_with_the_marker(kind: BusKind) {
    let mut env = TestEnv::start(kind).await;
    let mut config = env.agent_config("a1");
    // 1,200 bytes of head and 1,200 of tail: 100 lines each.
    config.exec.output_cap = 2_400;
    env.start_agent_with(config).await;
    env.wait_online("a1").await;
    let answer = env
        .call(
            "rt/exec",
            &[
                ("ip", "ip-a1"),
                ("app", "elvestest"),
                ("func", "lines"),
                ("param", r#"{"n":"1000"}"#),
            ],
        )
        .await;
    assert_eq!(answer["flag"], "true", "{answer}");
    // The result is what it always was.
    assert_eq!(answer["result"]["worker_message"], "wrote 1000");
    let task_id = answer["result"]["id"].as_str().unwrap().to_string();

    let mut written: String = (1..=1000).map(|i| format!("line {i:06}\n")).collect();
    written.push_str("<ElvesWFlag>true</ElvesWFlag><ElvesWResult>wrote 1000</ElvesWResult>\n");
    let dropped = written.len() - 2_400;
    let expected = format!(
        "{}[elves: {dropped} bytes dropped]\n{}",
        &written[..1_200],
        &written[written.len() - 1_200..]
    );
    let mut follow = Follow::open(&env, &task_id, None).await;
    let (followed, end) = read_to_end(&mut follow, String::new(), 0).await;
    assert_eq!(followed, expected);
    assert_eq!(end.data["truncated"], true);
    assert_eq!(end.id, written.len() as u64);
    assert_eq!(whole_output(&env, &task_id).await, expected);
    assert_eq!(task_result(&env, &task_id).await["truncated"], true);
}

async fn a_center_restart_mid_task_loses_no_output(kind: BusKind) {
    let mut env = TestEnv::start(kind).await;
    env.start_agent("a1").await;
    env.wait_online("a1").await;
    // A queue task: its result outlives the center that dispatched it.
    let answer = env
        .call(
            "queue/qksqueue",
            &[
                ("ip", "ip-a1"),
                ("app", "elvestest"),
                ("func", "ticks"),
                ("param", r#"{"n":"30"}"#),
            ],
        )
        .await;
    assert_eq!(answer["flag"], "true", "{answer}");
    let task_id = answer["result"]["task_id"].as_str().unwrap().to_string();
    let mut follow = Follow::open(&env, &task_id, None).await;
    let first = follow.next().await.unwrap();
    assert_eq!(first.name, "chunk");
    let text = first.data["data"].as_str().unwrap().to_string();

    let center = env.center.take().unwrap();
    tokio::task::spawn_blocking(move || center.stop())
        .await
        .unwrap();
    // The agent keeps writing while no center runs.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let center = crate::harness::start_center(env.config(), env.bus.clone()).await;
    env.base_url = format!("http://{}", center.http_addr);
    env.center = Some(center);

    let mut resumed = Follow::open(&env, &task_id, Some(first.id)).await;
    let (text, end) = read_to_end(&mut resumed, text, first.id).await;
    assert_eq!(text, ticks_text(30));
    assert_eq!(end.data["state"], "finished");
    assert_eq!(end.data["worker_flag"], "1");
}

async fn retention_removes_old_output(kind: BusKind) {
    let mut env = TestEnv::start_configured(
        crate::harness::Setup {
            bus: kind,
            db: crate::harness::DbKind::Sqlite,
        },
        |config| {
            config.output.retention_s = 2;
            config.output.sweep_ms = 200;
        },
    )
    .await;
    env.start_agent("a1").await;
    env.wait_online("a1").await;
    let answer = env
        .call(
            "rt/exec",
            &[
                ("ip", "ip-a1"),
                ("app", "elvestest"),
                ("func", "lines"),
                ("param", r#"{"n":"3"}"#),
            ],
        )
        .await;
    let task_id = answer["result"]["id"].as_str().unwrap().to_string();
    wait_until("the output is stored", Duration::from_secs(10), || async {
        output_from(&env, &task_id, 0).await["data"]
            .as_str()
            .unwrap()
            .starts_with("line 000001\n")
    })
    .await;
    wait_until("the output is deleted", Duration::from_secs(15), || async {
        output_from(&env, &task_id, 0).await["data"] == ""
    })
    .await;
    // The task and its result stay.
    assert_eq!(
        task_result(&env, &task_id).await["worker_message"],
        "wrote 3"
    );
}

async fn unknown_tasks_and_bad_parameters_are_refused(kind: BusKind) {
    let mut env = TestEnv::start(kind).await;
    env.start_agent("a1").await;
    for endpoint in ["task/output", "task/follow", "task/result"] {
        let answer = env.call(endpoint, &[("id", "0123456789abcdef")]).await;
        assert_eq!(error_code(&answer), "417.1", "{endpoint}: {answer}");
        let answer = env.call(endpoint, &[("id", "nope")]).await;
        assert_eq!(error_code(&answer), "403.2", "{endpoint}: {answer}");
    }
    let answer = env
        .call(
            "rt/exec",
            &[("ip", "ip-a1"), ("app", "elvestest"), ("func", "ok")],
        )
        .await;
    let task_id = answer["result"]["id"].as_str().unwrap().to_string();
    for (key, value) in [("stream", "stdin"), ("offset", "-1"), ("offset", "x")] {
        let answer = env
            .call("task/output", &[("id", &task_id), (key, value)])
            .await;
        assert_eq!(error_code(&answer), "403.2", "{key}={value}: {answer}");
    }
    // A result that comes within wait_s is the ordinary answer.
    let answer = env
        .call(
            "rt/exec",
            &[
                ("ip", "ip-a1"),
                ("app", "elvestest"),
                ("func", "ok"),
                ("wait_s", "30"),
            ],
        )
        .await;
    assert_eq!(answer["result"]["worker_flag"], "1", "{answer}");
    assert_eq!(answer["result"]["worker_message"], "ok", "{answer}");
    for wait_s in ["0", "91", "1.5", "x"] {
        let answer = env
            .call(
                "rt/exec",
                &[
                    ("ip", "ip-a1"),
                    ("app", "elvestest"),
                    ("func", "ok"),
                    ("wait_s", wait_s),
                ],
            )
            .await;
        assert_eq!(error_code(&answer), "403.8", "wait_s={wait_s}: {answer}");
    }
}

/// `elves tail` and `elves call rt/exec … --follow` show the output as the center has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_tails_a_task_and_follows_an_rt_call() {
    let mut env = TestEnv::start(BusKind::InProc).await;
    env.start_agent("a1").await;
    let task_id = start_ticks(&env, 10).await;
    let elves = |args: Vec<String>| {
        let url = env.base_url.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_elves"))
                .args(args)
                .env("ELVES_URL", url)
                .env("ELVES_AUTH_ID", AUTH_ID)
                .env("ELVES_AUTH_KEY", AUTH_KEY)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        })
    };
    let tailed = elves(vec!["tail".into(), task_id.clone()]).await.unwrap();
    assert!(tailed.status.success(), "{tailed:?}");
    assert_eq!(String::from_utf8(tailed.stdout).unwrap(), ticks_text(10));
    let summary = String::from_utf8(tailed.stderr).unwrap();
    assert!(summary.contains("finished: worker_flag 1"), "{summary}");

    let followed = elves(vec![
        "call".into(),
        "rt/exec".into(),
        "ip=ip-a1".into(),
        "app=elvestest".into(),
        "func=ticks".into(),
        r#"param={"n":"15"}"#.into(),
        "--follow".into(),
    ])
    .await
    .unwrap();
    assert!(followed.status.success(), "{followed:?}");
    let stdout = String::from_utf8(followed.stdout).unwrap();
    let (output, result) = stdout.split_at(ticks_text(15).len());
    assert_eq!(output, ticks_text(15));
    let result: Value = serde_json::from_str(result).unwrap();
    assert_eq!(result["worker_message"], "ticked 15");
    assert_eq!(result["state"], "finished");
}
