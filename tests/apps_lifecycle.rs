//! App lifecycle: upload → the agent installs within a heartbeat → rt runs it; upgrade and
//! rollback; hostile packages refused with nothing stored; the supervisor-mode permission
//! matrix. Each runs on every setup (in-process + SQLite, RabbitMQ + SQLite, RabbitMQ +
//! PostgreSQL).

use crate::harness::{error_code, unix_now_s, wait_until, Setup, TestEnv, AUTH_ID, AUTH_KEY};
use elves_center::config::AuthMode;
use elves_shared::package::testing::{app_zip, zip_of, Entry};
use elves_shared::sign::{self, SignType};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

crate::on_every_setup!(
    upload_installs_then_upgrade_and_rollback,
    hostile_packages_are_refused_and_nothing_is_stored,
    permission_matrix_in_supervisor_mode,
    processors_get_p_mode_results_of_rt_queue_and_cron,
    an_http_processor_gets_a_post,
    a_package_whose_bytes_changed_is_not_installed,
);

const HEARTBEAT: Duration = Duration::from_millis(200);

/// A signed v2 call as `auth_id`.
async fn call_as(
    env: &TestEnv,
    auth_id: &str,
    key: &str,
    endpoint: &str,
    params: &[(&str, &str)],
) -> Value {
    let path = format!("/api/v2/{endpoint}");
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    pairs.push(("auth_id".into(), auth_id.into()));
    pairs.push(("timestamp".into(), unix_now_s().to_string()));
    let signed = sign::sign_params(&path, pairs, SignType::Md5, key);
    env.post_form(&path, &signed).await
}

/// `POST /api/v2/app/upload` with the auth parameters in the query string and the zip as the
/// multipart field `file`.
pub(crate) async fn upload_as(
    env: &TestEnv,
    auth_id: &str,
    key: &str,
    file_name: &str,
    bytes: &[u8],
    extra: &[(&str, &str)],
) -> Value {
    let path = "/api/v2/app/upload";
    let mut pairs: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    pairs.push(("auth_id".into(), auth_id.into()));
    pairs.push(("timestamp".into(), unix_now_s().to_string()));
    let signed = sign::sign_params(path, pairs, SignType::HmacSha256, key);
    let boundary = format!("elves{:016x}", rand::random::<u64>());
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: application/zip\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    reqwest::Client::new()
        .post(format!("{}{path}", env.base_url))
        .query(&signed)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub(crate) async fn upload(env: &TestEnv, file_name: &str, bytes: &[u8]) -> Value {
    upload_as(env, AUTH_ID, AUTH_KEY, file_name, bytes, &[]).await
}

async fn rt(env: &TestEnv, ip: &str, app: &str) -> Value {
    env.call(
        "rt/exec",
        &[("ip", ip), ("app", app), ("func", "f"), ("timeout", "20")],
    )
    .await
}

/// Waits until rt on `ip` answers `expected` from `app`; returns how long that took.
async fn wait_runnable(env: &TestEnv, ip: &str, app: &str, expected: &str) -> Duration {
    let started = Instant::now();
    wait_until(
        &format!("{app} answering {expected} on {ip}"),
        HEARTBEAT + Duration::from_secs(2),
        || async {
            let answer = rt(env, ip, app).await;
            answer["result"]["worker_message"] == expected
        },
    )
    .await;
    started.elapsed()
}

/// Package downloads the center has served (its `/metrics`).
async fn downloads_served(env: &TestEnv) -> u64 {
    let metrics = env.metrics().await;
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(r#"elves_api_calls_total{endpoint="app/download",code="ok"} "#)
        })
        .map(|count| count.trim().parse().unwrap())
        .unwrap_or(0)
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        if entry.file_type().unwrap().is_dir() {
            found.extend(files_under(&entry.path()));
        } else {
            found.push(entry.path().display().to_string());
        }
    }
    found
}

async fn upload_installs_then_upgrade_and_rollback(setup: Setup) {
    let mut env = TestEnv::start_with(setup).await;
    env.start_agent("a1").await;
    let apps_dir = env.dir.path().join("apps-a1");

    let first = upload(&env, "demoapp_1.0.zip", &app_zip("v1")).await;
    assert_eq!(first["flag"], "true", "{first}");
    assert_eq!(first["result"]["app"], "demoapp");
    assert_eq!(first["result"]["version"], "1.0");
    assert_eq!(first["result"]["sha256"].as_str().unwrap().len(), 64);
    let took = wait_runnable(&env, "ip-a1", "demoapp", "v1").await;
    eprintln!("upload → runnable on the agent: {took:?}");
    assert_eq!(
        std::fs::read_to_string(apps_dir.join("demoapp/VERSION"))
            .unwrap()
            .trim(),
        "1.0"
    );

    // The identical package again changes nothing; other bytes under the same version: 415.2.
    let again = upload(&env, "demoapp_1.0.zip", &app_zip("v1")).await;
    assert_eq!(again["flag"], "true", "{again}");
    let conflict = upload(&env, "demoapp_1.0.zip", &app_zip("other")).await;
    assert_eq!(error_code(&conflict), "415.2", "{conflict}");

    let second = upload(&env, "demoapp_2.0.zip", &app_zip("v2")).await;
    assert_eq!(second["flag"], "true", "{second}");
    wait_runnable(&env, "ip-a1", "demoapp", "v2").await;
    assert!(
        apps_dir.join(".demoapp.previous").is_dir(),
        "previous version kept"
    );

    // An upload with online=false does not move agents.
    let third = upload_as(
        &env,
        AUTH_ID,
        AUTH_KEY,
        "demoapp_3.0.zip",
        &app_zip("v3"),
        &[("online", "false")],
    )
    .await;
    assert_eq!(third["flag"], "true", "{third}");

    let rollback = env
        .call("app/online", &[("app", "demoapp"), ("version", "1.0")])
        .await;
    assert_eq!(rollback["flag"], "true", "{rollback}");
    wait_runnable(&env, "ip-a1", "demoapp", "v1").await;
    assert_eq!(
        rt(&env, "ip-a1", "demoapp").await["result"]["worker_message"],
        "v1"
    );

    let versions = env.call("app/versions", &[("app", "demoapp")]).await;
    assert_eq!(versions["result"]["online_version"], "1.0", "{versions}");
    assert_eq!(versions["result"]["versions"].as_array().unwrap().len(), 3);

    let info = env.call("info/apps", &[]).await;
    let listed = info["result"].as_array().unwrap();
    let demo = listed.iter().find(|app| app["app"] == "demoapp").unwrap();
    assert_eq!(demo["app_ver"], "1.0", "{info}");

    // Auth ids and bindings are the supervisor component's: 402.1 in simple mode.
    let create = env.call("auth/create", &[("id", "alice")]).await;
    assert_eq!(error_code(&create), "402.1", "{create}");
    let bind = env
        .call("app/bind", &[("app", "demoapp"), ("ip", "ip-a1")])
        .await;
    assert_eq!(error_code(&bind), "402.1", "{bind}");

    // A second agent started later gets the online version at its first heartbeat.
    env.start_agent("a2").await;
    wait_runnable(&env, "ip-a2", "demoapp", "v1").await;

    let audit = {
        let store = elves_center::store::Store::open(&env.database.url).unwrap();
        store.recent_audit(50).unwrap()
    };
    let actions: Vec<&str> = audit.iter().map(|row| row.entry.action.as_str()).collect();
    assert!(
        actions.contains(&"app/upload") && actions.contains(&"app/online"),
        "{actions:?}"
    );
}

async fn hostile_packages_are_refused_and_nothing_is_stored(setup: Setup) {
    let mut env = TestEnv::start_configured(setup, |config| {
        config.apps.limits.max_compressed_bytes = 256 * 1024;
        config.apps.limits.max_entries = 50;
    })
    .await;
    env.start_agent("a1").await;
    let apps_dir = env.dir.path().join("apps-a1");
    let before: Vec<String> = files_under(&apps_dir);
    let received_before = env.stats("a1").received;
    let zeros = vec![0u8; 8 * 1024 * 1024];
    let noise: Vec<u8> = (0..300 * 1024).map(|_| rand::random::<u8>()).collect();
    let many: Vec<String> = (0..60).map(|n| format!("f{n}")).collect();
    let many_entries: Vec<Entry<'_>> = many
        .iter()
        .map(|name| Entry::File(name, b"x", 0o644))
        .collect();
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "absolute path",
            "evil_1.zip".into(),
            zip_of(&[Entry::File("/etc/evil", b"x", 0o644)]),
        ),
        (
            "dot-dot",
            "evil_1.zip".into(),
            zip_of(&[Entry::File("../evil", b"x", 0o644)]),
        ),
        (
            "nested dot-dot",
            "evil_1.zip".into(),
            zip_of(&[Entry::File("a/../../evil", b"x", 0o644)]),
        ),
        (
            "symlink escape",
            "evil_1.zip".into(),
            zip_of(&[Entry::Symlink("out", "../../etc")]),
        ),
        (
            "absolute symlink",
            "evil_1.zip".into(),
            zip_of(&[Entry::Symlink("out", "/etc/passwd")]),
        ),
        (
            "zip bomb",
            "evil_1.zip".into(),
            zip_of(&[Entry::File("zeros", &zeros, 0o644)]),
        ),
        (
            "too many entries",
            "evil_1.zip".into(),
            zip_of(&many_entries),
        ),
        (
            "too large",
            "evil_1.zip".into(),
            zip_of(&[Entry::Stored("noise", &noise)]),
        ),
        (
            "not a zip",
            "evil_1.zip".into(),
            b"this is not a zip".to_vec(),
        ),
        ("bad name", "evil.zip".into(), app_zip("x")),
        ("bad version", "evil_1 0.zip".into(), app_zip("x")),
        ("bad app name", "-evil_1.zip".into(), app_zip("x")),
    ];
    for (what, file_name, bytes) in &cases {
        let answer = upload(&env, file_name, bytes).await;
        assert_eq!(error_code(&answer), "415.1", "{what}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("package refused"),
            "{what}: {answer}"
        );
    }
    // A sha256 parameter that does not match the body.
    let mismatch = upload_as(
        &env,
        AUTH_ID,
        AUTH_KEY,
        "good_1.zip",
        &app_zip("x"),
        &[("sha256", &"0".repeat(64))],
    )
    .await;
    assert_eq!(error_code(&mismatch), "415.1", "{mismatch}");

    let stored = files_under(&env.dir.path().join("packages"));
    assert!(stored.is_empty(), "nothing stored: {stored:?}");
    let apps = env.call("app/list", &[]).await;
    assert_eq!(apps["result"], serde_json::json!([]), "{apps}");
    // The agent got nothing either: the center answers each heartbeat with the app set the agent
    // lacks, so after two more heartbeats any set would have reached it.
    env.wait_heartbeats("a1", 2).await;
    assert_eq!(
        env.stats("a1").received,
        received_before,
        "no message reached the agent"
    );
    assert_eq!(files_under(&apps_dir), before);
    assert!(!apps_dir.join("evil").exists());
}

async fn permission_matrix_in_supervisor_mode(setup: Setup) {
    let mut env = TestEnv::start_configured(setup, |config| {
        config.auth.mode = AuthMode::Supervisor;
    })
    .await;
    env.start_agent("a1").await;
    env.start_agent("a2").await;

    let create = |id: &'static str, role: &'static str| {
        let env = &env;
        async move {
            let answer = env.call("auth/create", &[("id", id), ("role", role)]).await;
            assert_eq!(answer["flag"], "true", "{answer}");
            answer["result"]["auth_key"].as_str().unwrap().to_string()
        }
    };
    let alice = create("alice", "normal").await;
    let bob = create("bob", "normal").await;
    let boss = create("boss", "admin").await;

    // An admin other than the bootstrap one uploads; a normal id may not.
    let refused = upload_as(&env, "alice", &alice, "demo_1.0.zip", &app_zip("hi"), &[]).await;
    assert_eq!(error_code(&refused), "401.6", "{refused}");
    let uploaded = upload_as(&env, "boss", &boss, "demo_1.0.zip", &app_zip("hi"), &[]).await;
    assert_eq!(uploaded["flag"], "true", "{uploaded}");
    let bound = call_as(
        &env,
        "boss",
        &boss,
        "app/bind",
        &[("app", "demo"), ("ip", "ip-a1")],
    )
    .await;
    assert_eq!(bound["flag"], "true", "{bound}");
    assert_eq!(bound["result"]["agent"], "a1", "bound by agent id");
    let granted = call_as(
        &env,
        "boss",
        &boss,
        "auth/grant",
        &[("id", "alice"), ("app", "demo")],
    )
    .await;
    assert_eq!(granted["flag"], "true", "{granted}");

    // Only the bound agent gets the package.
    wait_until("demo installed on a1", Duration::from_secs(5), || async {
        env.dir.path().join("apps-a1/demo/app-worker").exists()
    })
    .await;

    let rt_as = |auth_id: &'static str, key: String, ip: &'static str, app: &'static str| {
        let env = &env;
        async move {
            call_as(
                env,
                auth_id,
                &key,
                "rt/exec",
                &[("ip", ip), ("app", app), ("func", "f")],
            )
            .await
        }
    };
    let ok = rt_as("alice", alice.clone(), "ip-a1", "demo").await;
    assert_eq!(ok["flag"], "true", "{ok}");
    assert_eq!(ok["result"]["worker_message"], "hi");
    assert_eq!(
        error_code(&rt_as("alice", alice.clone(), "ip-a2", "demo").await),
        "401.6",
        "not bound"
    );
    assert_eq!(
        error_code(&rt_as("bob", bob.clone(), "ip-a1", "demo").await),
        "401.6",
        "not granted"
    );
    assert_eq!(
        error_code(&rt_as("alice", alice.clone(), "ip-a1", "nope").await),
        "413.2",
        "unknown app"
    );
    assert_eq!(
        error_code(&rt_as("alice", alice.clone(), "ip-a1", "apptest").await),
        "413.2",
        "installed by hand, unknown to the center"
    );
    assert_eq!(
        rt_as("boss", boss.clone(), "ip-a1", "demo").await["flag"],
        "true",
        "admins hold every app"
    );
    assert_eq!(
        error_code(&rt_as("boss", boss.clone(), "ip-a2", "demo").await),
        "401.6",
        "admins too need the binding"
    );

    // Queue endpoints.
    let quick = call_as(
        &env,
        "bob",
        &bob,
        "queue/qksqueue",
        &[("ip", "ip-a1"), ("app", "demo"), ("func", "f")],
    )
    .await;
    assert_eq!(error_code(&quick), "401.6", "{quick}");
    let queue = call_as(&env, "alice", &alice, "queue/create", &[("app", "demo")]).await;
    assert_eq!(queue["flag"], "true", "{queue}");
    let queue_id = queue["result"]["id"].as_str().unwrap().to_string();
    let add = call_as(
        &env,
        "alice",
        &alice,
        "queue/addtask",
        &[("queue_id", &queue_id), ("ip", "ip-a2"), ("func", "f")],
    )
    .await;
    assert_eq!(error_code(&add), "401.6", "{add}");
    // A batch is refused whole at its first task on an agent the app is not bound to.
    let batch = r#"[{"ip": "ip-a1", "func": "f"}, {"ip": "ip-a2", "func": "f"}]"#;
    let add = call_as(
        &env,
        "alice",
        &alice,
        "queue/addtasks",
        &[("queue_id", &queue_id), ("tasks", batch)],
    )
    .await;
    assert_eq!(error_code(&add), "401.6", "{add}");
    assert!(
        add["error"].as_str().unwrap().contains("tasks[1]: "),
        "{add}"
    );
    let add = call_as(
        &env,
        "bob",
        &bob,
        "queue/addtasks",
        &[
            ("queue_id", &queue_id),
            ("tasks", r#"[{"ip": "ip-a1", "func": "f"}]"#),
        ],
    )
    .await;
    assert_eq!(error_code(&add), "401.6", "not granted: {add}");
    let peek = call_as(
        &env,
        "bob",
        &bob,
        "queue/result",
        &[("queue_id", &queue_id)],
    )
    .await;
    assert_eq!(error_code(&peek), "401.6", "{peek}");
    assert_eq!(
        error_code(&call_as(&env, "bob", &bob, "queue/create", &[("app", "demo")]).await),
        "401.6"
    );

    // The RabbitMQ entry point: the same rules.
    assert_eq!(
        submit_as(&env, "bob", &bob, "ip-a1").await,
        "401.6",
        "submit, not granted"
    );
    assert_eq!(
        submit_as(&env, "alice", &alice, "ip-a2").await,
        "401.6",
        "submit, not bound"
    );
    assert_eq!(
        submit_as(&env, "alice", &alice, "ip-a1").await,
        "",
        "submit allowed"
    );

    // Admin endpoints for a normal id; info endpoints answer from the bindings.
    assert_eq!(
        error_code(&call_as(&env, "alice", &alice, "auth/list", &[]).await),
        "401.6"
    );
    assert_eq!(
        error_code(
            &call_as(
                &env,
                "alice",
                &alice,
                "app/online",
                &[("app", "demo"), ("version", "1.0")]
            )
            .await
        ),
        "401.6"
    );
    let agents = call_as(&env, "alice", &alice, "info/agents", &[]).await;
    assert_eq!(agents["result"], serde_json::json!(["ip-a1"]), "{agents}");
    let agents = call_as(&env, "bob", &bob, "info/agents", &[]).await;
    assert_eq!(agents["result"], serde_json::json!([]), "{agents}");
    let apps = call_as(&env, "alice", &alice, "info/apps", &[]).await;
    assert_eq!(apps["result"][0]["app"], "demo", "{apps}");
    assert_eq!(apps["result"][0]["app_ver"], "1.0", "{apps}");
    let detail = call_as(
        &env,
        "alice",
        &alice,
        "info/agents/detail",
        &[("ip", "ip-a1")],
    )
    .await;
    assert_eq!(detail["result"]["apps"]["demo"], "1.0", "{detail}");
    assert_eq!(detail["result"]["online"], true, "{detail}");
    let detail = call_as(
        &env,
        "alice",
        &alice,
        "info/agents/detail",
        &[("ip", "ip-a2")],
    )
    .await;
    assert_eq!(error_code(&detail), "401.6", "{detail}");
    let listed = env.call("auth/list", &[]).await;
    assert_eq!(listed["result"].as_array().unwrap().len(), 3, "{listed}");

    // Revoked: the key stops working at once.
    let revoked = env.call("auth/revoke", &[("id", "alice")]).await;
    assert_eq!(revoked["flag"], "true", "{revoked}");
    assert_eq!(
        error_code(&rt_as("alice", alice.clone(), "ip-a1", "demo").await),
        "401.2"
    );
    assert_eq!(
        error_code(&env.call("auth/revoke", &[("id", "alice")]).await),
        "413.1"
    );

    // Unbinding takes the app away from the agent.
    let unbound = env
        .call("app/unbind", &[("app", "demo"), ("ip", "a1")])
        .await;
    assert_eq!(unbound["result"]["removed"], true, "{unbound}");
    wait_until("demo set aside on a1", Duration::from_secs(5), || async {
        !env.dir.path().join("apps-a1/demo").exists()
    })
    .await;
    assert!(
        !env.dir.path().join("apps-a2/demo").exists(),
        "never installed on a2"
    );
}

/// Takes the next result from a processor queue.
async fn next_processed(
    consumer: &mut elves_shared::bus::Consumer,
) -> elves_shared::wire::JobResult {
    let delivery = tokio::time::timeout(Duration::from_secs(20), consumer.next())
        .await
        .expect("a processor result in time")
        .expect("the bus is open");
    let result = elves_shared::wire::decode(&delivery.message.body).unwrap();
    delivery.ack().await;
    result
}

async fn processors_get_p_mode_results_of_rt_queue_and_cron(setup: Setup) {
    let mut env = TestEnv::start_with(setup).await;
    env.start_agent("a1").await;
    let uploaded = upload(&env, "proc_1.0.zip", &app_zip("processed")).await;
    assert_eq!(uploaded["flag"], "true", "{uploaded}");
    wait_runnable(&env, "ip-a1", "proc", "processed").await;
    // The processor declares its queue, bound to `processor.<app>`.
    let bus = env.participant_bus();
    let mut processor = bus
        .consume(
            elves_shared::bus::QueueSpec {
                name: bus.queue_name("processor.proc"),
                bindings: vec![elves_shared::wire::routing::processor("proc")],
                durable: false,
            },
            16,
        )
        .await
        .unwrap();

    // NP results do not go to the processor; P results do, whatever started the task.
    let np = env
        .call(
            "rt/exec",
            &[("ip", "ip-a1"), ("app", "proc"), ("func", "np")],
        )
        .await;
    assert_eq!(np["flag"], "true", "{np}");
    let rt = env
        .call(
            "rt/exec",
            &[
                ("ip", "ip-a1"),
                ("app", "proc"),
                ("func", "f"),
                ("mode", "P"),
            ],
        )
        .await;
    assert_eq!(rt["flag"], "true", "{rt}");
    let processed = next_processed(&mut processor).await;
    assert_eq!(processed.id.as_str(), rt["result"]["id"].as_str().unwrap());
    assert_eq!(processed.task_type, elves_shared::wire::TaskType::Rt);
    assert_eq!(processed.worker_message, "processed");

    let queued = env
        .call(
            "queue/qksqueue",
            &[
                ("ip", "ip-a1"),
                ("app", "proc"),
                ("func", "q"),
                ("mode", "P"),
            ],
        )
        .await;
    assert_eq!(queued["flag"], "true", "{queued}");
    let processed = next_processed(&mut processor).await;
    assert_eq!(
        processed.id.as_str(),
        queued["result"]["task_id"].as_str().unwrap()
    );
    assert_eq!(processed.task_type, elves_shared::wire::TaskType::Queue);

    let cron = env
        .call(
            "cron/add",
            &[
                ("ip", "ip-a1"),
                ("app", "proc"),
                ("func", "c"),
                ("mode", "P"),
                ("rule", "* * * * * ?"),
            ],
        )
        .await;
    assert_eq!(cron["flag"], "true", "{cron}");
    let processed = next_processed(&mut processor).await;
    assert_eq!(processed.task_type, elves_shared::wire::TaskType::Cron);
    assert_eq!(processed.func, "c");
    assert_eq!(processed.worker_flag, 1);
    let cron_id = cron["result"]["id"].as_str().unwrap();
    env.call("cron/delete", &[("cron_id", cron_id)]).await;
}

/// A one-shot HTTP server: answers 200 to every request and hands over each body.
async fn http_sink() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/results", listener.local_addr().unwrap());
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buffer[..end]).to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|line| {
                            let (name, value) = line.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if buffer.len() < end + 4 + length {
                        continue;
                    }
                    let body = buffer[end + 4..end + 4 + length].to_vec();
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = sender.send((head, body));
                    return;
                }
            });
        }
    });
    (url, receiver)
}

async fn an_http_processor_gets_a_post(setup: Setup) {
    let mut env = TestEnv::start_with(setup).await;
    env.start_agent("a1").await;
    let (url, mut posts) = http_sink().await;
    let appcfg = format!(r#"{{"Processor": {{"Url": "{url}", "Timeout": 5}}}}"#);
    let script =
        "#!/bin/sh\necho '<ElvesWFlag>true</ElvesWFlag><ElvesWResult>hooked</ElvesWResult>'\n";
    let bytes = zip_of(&[
        Entry::File("app-worker", script.as_bytes(), 0o755),
        Entry::File("appcfg.json", appcfg.as_bytes(), 0o644),
    ]);
    let uploaded = upload(&env, "hooked_1.0.zip", &bytes).await;
    assert_eq!(uploaded["flag"], "true", "{uploaded}");
    wait_runnable(&env, "ip-a1", "hooked", "hooked").await;
    let rt = env
        .call(
            "rt/exec",
            &[
                ("ip", "ip-a1"),
                ("app", "hooked"),
                ("func", "f"),
                ("mode", "P"),
            ],
        )
        .await;
    assert_eq!(rt["flag"], "true", "{rt}");
    let (head, body) = tokio::time::timeout(Duration::from_secs(20), posts.recv())
        .await
        .expect("a POST in time")
        .unwrap();
    assert!(head.starts_with("POST /results"), "{head}");
    let posted: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(posted["id"], rt["result"]["id"], "{posted}");
    assert_eq!(posted["type"], "rt");
    assert_eq!(posted["mode"], "P");
    assert_eq!(posted["app"], "hooked");
    assert_eq!(posted["worker_flag"], 1);
    assert_eq!(posted["worker_message"], "hooked");
}

/// Publishes a signed Submit of `demo` on `ip` as `auth_id` and returns the reply's error code.
async fn submit_as(env: &TestEnv, auth_id: &str, key: &str, ip: &str) -> String {
    let bus = env.participant_bus();
    let reply_to = bus.queue_name(&format!("test.reply.{:08x}", rand::random::<u32>()));
    let mut replies = bus
        .consume(
            elves_shared::bus::QueueSpec {
                name: reply_to.clone(),
                bindings: Vec::new(),
                durable: false,
            },
            4,
        )
        .await
        .unwrap();
    let mut submit = elves_shared::wire::Submit {
        auth_id: auth_id.into(),
        timestamp: unix_now_s(),
        sign_type: "MD5".into(),
        sign: String::new(),
        agent: ip.into(),
        app: "demo".into(),
        func: "f".into(),
        param: String::new(),
        timeout: 20,
        proxy: String::new(),
        mode: "NP".into(),
    };
    let fields = elves_center::submit::signed_fields(&submit);
    let text = sign::sign_string(
        "/submit",
        fields.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    submit.sign = sign::compute(SignType::Md5, &text, key);
    let mut message = elves_shared::bus::BusMessage::msgpack(
        elves_shared::wire::kind::SUBMIT,
        elves_shared::wire::encode(&submit),
    );
    message.reply_to = Some(reply_to);
    bus.publish(
        &elves_shared::bus::Destination::Topic(elves_shared::wire::routing::CENTER_SUBMIT.into()),
        message,
    )
    .await
    .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(30), replies.next())
        .await
        .expect("a submit reply in time")
        .unwrap();
    let envelope: elves_shared::wire::Envelope<Value> =
        elves_shared::wire::decode(&delivery.message.body).unwrap();
    delivery.ack().await;
    error_code(&serde_json::to_value(&envelope).unwrap())
}

/// The Python processor SDK: its MessagePack decoder reads the wire's JobResult fixture, and
/// the example processor, as the HTTP endpoint of an app's appcfg.json, records a P-mode
/// result. (Its bus mode needs `pika`, which the test machines do not have.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_processor_sdk_decodes_results_and_serves_http() {
    let root = crate::harness::repo_root();
    let sdk = root.join("apps/sdk/python");
    let decoded = tokio::process::Command::new("python3")
        .arg(sdk.join("elves_processor.py"))
        .arg("--decode")
        .arg(root.join("shared/src/wire/fixtures/job_result.msgpack"))
        .output()
        .await
        .unwrap();
    assert!(decoded.status.success(), "{decoded:?}");
    let result: Value = serde_json::from_slice(&decoded.stdout).unwrap();
    assert_eq!(result["id"], "0123456789abcdef");
    assert_eq!(result["type"], "queue");
    assert_eq!(result["worker_flag"], -1);
    assert_eq!(result["worker_message"], "app exec timeout");

    let mut env = TestEnv::start(crate::harness::BusKind::InProc).await;
    env.start_agent("a1").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = env.dir.path().join("results.jsonl");
    let mut processor = tokio::process::Command::new("python3")
        .arg(sdk.join("example_processor.py"))
        .arg("--http")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--out")
        .arg(&out)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until("the processor listens", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    let appcfg = format!(r#"{{"Processor": {{"Url": "http://127.0.0.1:{port}/", "Timeout": 5}}}}"#);
    let script =
        "#!/bin/sh\necho '<ElvesWFlag>true</ElvesWFlag><ElvesWResult>to python</ElvesWResult>'\n";
    let bytes = zip_of(&[
        Entry::File("app-worker", script.as_bytes(), 0o755),
        Entry::File("appcfg.json", appcfg.as_bytes(), 0o644),
    ]);
    assert_eq!(upload(&env, "pyproc_1.0.zip", &bytes).await["flag"], "true");
    wait_runnable(&env, "ip-a1", "pyproc", "to python").await;
    let rt = env
        .call(
            "rt/exec",
            &[
                ("ip", "ip-a1"),
                ("app", "pyproc"),
                ("func", "f"),
                ("mode", "P"),
            ],
        )
        .await;
    let id = rt["result"]["id"].as_str().unwrap().to_string();
    wait_until(
        "the processor recorded the result",
        Duration::from_secs(20),
        || async { std::fs::read_to_string(&out).is_ok_and(|text| text.contains(&id)) },
    )
    .await;
    let line = std::fs::read_to_string(&out).unwrap();
    let recorded: Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert_eq!(recorded["worker_message"], "to python");
    assert_eq!(recorded["type"], "rt");
    processor.kill().await.unwrap();
}

/// The agent checks the SHA-256 the center recorded: a stored package whose bytes changed on
/// the center's disk is downloaded but never installed; once the right bytes are back, the next
/// app set installs it.
async fn a_package_whose_bytes_changed_is_not_installed(setup: Setup) {
    let mut env = TestEnv::start_configured(setup, |config| {
        config.apps.resend_ms = 500;
    })
    .await;
    env.start_agent("a1").await;
    let good = app_zip("genuine");
    let uploaded = upload_as(
        &env,
        AUTH_ID,
        AUTH_KEY,
        "tamper_1.0.zip",
        &good,
        &[("online", "false")],
    )
    .await;
    assert_eq!(uploaded["flag"], "true", "{uploaded}");
    let sha = uploaded["result"]["sha256"].as_str().unwrap().to_string();
    let stored = env
        .dir
        .path()
        .join("packages")
        .join(&sha[..2])
        .join(format!("{sha}.zip"));
    assert!(stored.exists(), "content-addressed under its sha256");
    std::fs::write(&stored, app_zip("forged")).unwrap();
    let served_before = downloads_served(&env).await;
    let online = env
        .call("app/online", &[("app", "tamper"), ("version", "1.0")])
        .await;
    assert_eq!(online["flag"], "true", "{online}");
    // Several app sets and downloads go by; none installs. The agent downloads one set at a
    // time, so by the third download it has checked and refused the first two.
    wait_until(
        "three downloads of the forged package",
        Duration::from_secs(20),
        || async { downloads_served(&env).await >= served_before + 3 },
    )
    .await;
    let apps_dir = env.dir.path().join("apps-a1");
    assert!(!apps_dir.join("tamper").exists());
    let answer = rt(&env, "ip-a1", "tamper").await;
    assert_eq!(answer["result"]["worker_flag"], "-1", "{answer}");
    assert!(
        answer["result"]["worker_message"]
            .as_str()
            .unwrap()
            .contains("not installed"),
        "{answer}"
    );
    std::fs::write(&stored, &good).unwrap();
    wait_until(
        "the genuine package installed",
        Duration::from_secs(15),
        || async { rt(&env, "ip-a1", "tamper").await["result"]["worker_message"] == "genuine" },
    )
    .await;
}
