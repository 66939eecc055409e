//! The web dashboard in a real headless browser (chromium through chromedriver) against a
//! real center and agents: sign-in, filters, a run from the form, crons paused and resumed, a
//! re-run, sign-out, and supervisor mode's permissions. Every page visited is saved as a
//! screenshot under `target/ui-screenshots/`.

use crate::harness::browser::Browser;
use crate::harness::{wait_until, BusKind, DbKind, Setup, TestEnv, AUTH_ID, AUTH_KEY};
use elves_center::config::AuthMode;
use serde_json::json;
use std::time::Duration;

async fn sign_in(browser: &Browser, base: &str, auth_id: &str, key: &str) {
    browser.goto(&format!("{base}/ui/login")).await;
    browser.fill("#auth_id", auth_id).await;
    browser.fill("#auth_key", key).await;
    browser.click_and_load("#sign-in").await;
}

/// The rows of the table `css` (each row's text).
async fn row_texts(browser: &Browser, css: &str) -> Vec<String> {
    let script =
        "return Array.from(document.querySelectorAll(arguments[0])).map(r => r.innerText);";
    let rows = browser
        .execute(script, json!([format!("{css} tbody tr")]))
        .await;
    rows.as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_walkthrough_in_a_real_browser() {
    // The distributed setup: RabbitMQ and PostgreSQL.
    let mut env = TestEnv::start_with(Setup {
        bus: BusKind::Rabbit,
        db: DbKind::Postgres,
    })
    .await;
    env.start_agent("a1").await;
    env.start_agent("b2").await;
    env.wait_online("a1").await;
    env.wait_online("b2").await;
    let base = env.base_url.clone();
    let browser = Browser::start().await;

    // `/` leads to the sign-in page when nobody is signed in.
    browser.goto(&format!("{base}/")).await;
    assert!(browser.current_url().await.ends_with("/ui/login"));
    browser.screenshot("01-sign-in").await;

    // A wrong key is refused and sets no session.
    sign_in(&browser, &base, AUTH_ID, "not-the-key").await;
    assert!(browser.page_text().await.contains("Wrong auth id or key."));
    assert!(browser.cookies().await.is_empty());
    browser.screenshot("02-sign-in-refused").await;
    browser.goto(&format!("{base}/ui/agents")).await;
    assert!(browser.current_url().await.ends_with("/ui/login"));

    // The right one signs in: an HttpOnly session cookie that does not hold the key.
    sign_in(&browser, &base, AUTH_ID, AUTH_KEY).await;
    assert!(browser.current_url().await.ends_with("/ui/"));
    assert!(browser.text("#whoami").await.contains(AUTH_ID));
    let cookies = browser.cookies().await;
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert_eq!(cookies[0]["name"], "elves_session");
    assert_eq!(cookies[0]["httpOnly"], true);
    assert_eq!(cookies[0]["sameSite"], "Strict");
    assert!(!cookies[0]["value"].as_str().unwrap().contains(AUTH_KEY));
    assert_eq!(browser.text("#agents-online").await, "2");
    browser.screenshot("03-overview").await;

    // An RT call from the form, its result shown.
    browser.goto(&format!("{base}/ui/run")).await;
    browser.screenshot("04-run-form").await;
    browser.fill("#run-ip", "ip-a1").await;
    browser.fill("#run-app", "apptest").await;
    browser.fill("#run-func", "helloword").await;
    browser
        .fill("#run-param", r#"{"my":"hello from the dashboard"}"#)
        .await;
    browser.click_and_load("#run-submit").await;
    assert_eq!(
        browser.text("#run-output").await,
        "hello from the dashboard"
    );
    assert!(browser.text("#run-result").await.contains("ok"));
    let first_task = browser.text("#run-task").await;
    browser.screenshot("05-run-result").await;

    // The agent list, filtered on the server; a1 now has a last successful task.
    browser.goto(&format!("{base}/ui/agents")).await;
    assert_eq!(row_texts(&browser, "#agents").await.len(), 2);
    browser.fill("#f-q", "b2").await;
    browser.click_and_load("#filter").await;
    let rows = row_texts(&browser, "#agents").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0].contains("b2") && rows[0].contains("online"),
        "{rows:?}"
    );
    assert!(rows[0].contains("none yet"), "b2 ran nothing: {rows:?}");
    browser.screenshot("06-agents-filtered").await;
    browser.fill("#f-q", "a1").await;
    browser.click_and_load("#filter").await;
    let rows = row_texts(&browser, "#agents").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(!rows[0].contains("none yet"), "a1's last success: {rows:?}");
    browser.fill("#f-q", "no-such-agent").await;
    browser.click_and_load("#filter").await;
    assert!(browser
        .text("#no-agents")
        .await
        .contains("No agent matches"));

    // The task history and the task page.
    browser.goto(&format!("{base}/ui/tasks?app=apptest")).await;
    let rows = row_texts(&browser, "#tasks").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].contains(&first_task), "{rows:?}");
    browser.screenshot("07-tasks").await;
    // Filtered by the auth id that ran it (PostgreSQL's plan of the filter's subselects).
    browser
        .goto(&format!("{base}/ui/tasks?app=apptest&auth_id={AUTH_ID}"))
        .await;
    assert_eq!(row_texts(&browser, "#tasks").await.len(), 1);
    browser
        .goto(&format!("{base}/ui/tasks?app=apptest&auth_id=someone-else"))
        .await;
    assert!(row_texts(&browser, "#tasks").await.is_empty());
    browser.goto(&format!("{base}/ui/tasks?app=apptest")).await;
    browser
        .click_and_load(&format!("a[href='/ui/tasks/{first_task}']"))
        .await;
    assert!(browser.text("#task-state").await.contains("ok"));
    assert!(browser
        .text("#task-result")
        .await
        .contains("hello from the dashboard"));
    browser.screenshot("08-task").await;

    // Re-run as it was: a new task with the same result.
    browser.click_and_load("#rerun").await;
    assert_eq!(
        browser.text("#run-output").await,
        "hello from the dashboard"
    );
    let rerun_task = browser.text("#run-task").await;
    assert_ne!(rerun_task, first_task);
    browser.screenshot("09-rerun-result").await;
    browser.goto(&format!("{base}/ui/tasks?app=apptest")).await;
    assert_eq!(row_texts(&browser, "#tasks").await.len(), 2);

    // A cron paused and resumed; the database says so too.
    let added = env
        .call(
            "cron/add",
            &[
                ("ip", "ip-a1"),
                ("app", "apptest"),
                ("func", "helloword"),
                ("rule", "0 0 3 * * ?"),
            ],
        )
        .await;
    assert_eq!(added["flag"], "true", "{added}");
    let cron_id = added["result"]["id"].as_str().unwrap().to_string();
    let cron_flag = || {
        let env = &env;
        let cron_id = cron_id.clone();
        async move {
            let detail = env.call("cron/detail", &[("cron_id", &cron_id)]).await;
            detail["result"]["cron_flag"].as_i64().unwrap()
        }
    };
    browser.goto(&format!("{base}/ui/crons")).await;
    assert!(browser.text(".cron-state").await.contains("active"));
    browser
        .click(&format!("input[name=id][value='{cron_id}']"))
        .await;
    browser.click_and_load("#pause").await;
    assert!(browser.text("#notice").await.contains("Paused 1 cron(s)"));
    assert!(browser.text(".cron-state").await.contains("paused"));
    assert_eq!(cron_flag().await, 0);
    browser.screenshot("10-cron-paused").await;
    browser
        .click(&format!("input[name=id][value='{cron_id}']"))
        .await;
    browser.click_and_load("#resume").await;
    assert!(browser.text("#notice").await.contains("Resumed 1 cron(s)"));
    assert!(browser.text(".cron-state").await.contains("active"));
    assert_eq!(cron_flag().await, 1);
    browser.screenshot("11-cron-resumed").await;

    // Apps (none uploaded yet: the empty state says what to do).
    browser.goto(&format!("{base}/ui/apps")).await;
    assert!(browser.text("#no-apps").await.contains("Upload a package"));
    browser.screenshot("12-apps").await;

    // The audit log has the dashboard's changes under the auth id.
    browser.goto(&format!("{base}/ui/admin")).await;
    wait_until("the audit entries", Duration::from_secs(5), || async {
        browser.goto(&format!("{base}/ui/admin")).await;
        let rows = row_texts(&browser, "#audit").await;
        [
            "ui/rt/exec",
            "ui/rerun",
            "ui/cron/stop",
            "ui/cron/start",
            "ui/login",
        ]
        .iter()
        .all(|action| {
            rows.iter()
                .any(|row| row.contains(action) && row.contains(AUTH_ID))
        })
    })
    .await;
    browser.screenshot("13-admin-audit").await;

    // On a phone-sized screen.
    browser.set_window_size(390, 844).await;
    browser.goto(&format!("{base}/ui/agents")).await;
    browser.screenshot("14-agents-phone").await;
    browser.set_window_size(1280, 900).await;

    // A form post without the session's CSRF token changes nothing.
    browser
        .execute(
            "document.documentElement.dataset.stale = '1'; \
             const f = document.createElement('form'); f.method = 'post'; \
             f.action = '/ui/crons'; \
             for (const [k, v] of [['action', 'pause'], ['id', arguments[0]]]) { \
               const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i); } \
             document.body.appendChild(f); f.submit();",
            json!([cron_id]),
        )
        .await;
    browser.wait_for_new_page().await;
    assert!(browser.page_text().await.contains("CSRF token"));
    assert_eq!(cron_flag().await, 1, "still active");

    // Sign out: the session is gone.
    browser.goto(&format!("{base}/ui/")).await;
    browser.click_and_load("#logout").await;
    assert!(browser.current_url().await.ends_with("/ui/login"));
    browser.goto(&format!("{base}/ui/tasks")).await;
    assert!(browser.current_url().await.ends_with("/ui/login"));
    browser.screenshot("15-signed-out").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_admin_sees_no_admin_pages_and_a_forged_admin_post_is_refused() {
    // The embedded setup of `elves up`: the in-process bus and SQLite.
    let env = TestEnv::start_configured(
        Setup {
            bus: BusKind::InProc,
            db: DbKind::Sqlite,
        },
        |config| config.auth.mode = AuthMode::Supervisor,
    )
    .await;
    let created = env
        .call("auth/create", &[("id", "viewer"), ("role", "normal")])
        .await;
    assert_eq!(created["flag"], "true", "{created}");
    let viewer_key = created["result"]["auth_key"].as_str().unwrap().to_string();
    let base = env.base_url.clone();
    let browser = Browser::start().await;

    sign_in(&browser, &base, "viewer", &viewer_key).await;
    assert!(browser.text("#whoami").await.contains("viewer (user)"));
    assert!(browser.find_all("a[href='/ui/admin']").await.is_empty());
    browser.screenshot("16-non-admin-overview").await;
    browser.goto(&format!("{base}/ui/admin")).await;
    assert!(browser
        .page_text()
        .await
        .contains("This page needs the admin role."));
    browser.screenshot("17-non-admin-refused").await;

    // A forged revoke of the admin, with the viewer's own valid CSRF token: refused.
    let csrf = browser.attribute("input[name=csrf]", "value").await;
    browser
        .execute(
            "document.documentElement.dataset.stale = '1'; \
             const f = document.createElement('form'); f.method = 'post'; \
             f.action = '/ui/admin/revoke'; \
             for (const [k, v] of [['csrf', arguments[0]], ['id', arguments[1]]]) { \
               const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i); } \
             document.body.appendChild(f); f.submit();",
            json!([csrf, AUTH_ID]),
        )
        .await;
    browser.wait_for_new_page().await;
    assert!(browser.current_url().await.ends_with("/ui/admin/revoke"));
    assert!(browser
        .page_text()
        .await
        .contains("This page needs the admin role."));
    browser.screenshot("18-forged-admin-post-refused").await;
    // The other admin forms, forged the same way: refused, and nothing changes.
    let made = env.call("app/create", &[("app", "demo")]).await;
    assert_eq!(made["flag"], "true", "{made}");
    let forged: [(&str, Vec<(&str, &str)>); 3] = [
        (
            "/ui/admin/grant",
            vec![
                ("csrf", &csrf),
                ("id", "viewer"),
                ("app", "demo"),
                ("action", "grant"),
            ],
        ),
        (
            "/ui/admin/bind",
            vec![
                ("csrf", &csrf),
                ("app", "demo"),
                ("ip", "a1"),
                ("action", "bind"),
            ],
        ),
        (
            "/ui/apps/online",
            vec![("csrf", &csrf), ("app", "demo"), ("version", "1.0")],
        ),
    ];
    for (action, fields) in &forged {
        forge_post(&browser, action, fields, false).await;
        assert!(
            browser
                .page_text()
                .await
                .contains("This page needs the admin role."),
            "{action}"
        );
    }
    // The upload form's token is in its address; its body is multipart.
    forge_post(
        &browser,
        &format!("/ui/apps/upload?csrf={csrf}&online=true"),
        &[("file", "not a package")],
        true,
    )
    .await;
    assert!(browser
        .page_text()
        .await
        .contains("This page needs the admin role."));
    let versions = env.call("app/versions", &[("app", "demo")]).await;
    assert_eq!(versions["result"]["versions"], json!([]), "{versions}");
    browser.screenshot("33-forged-upload-refused").await;
    // The forms of an app the viewer does not hold (yet), forged: refused by the API's rules.
    let queue = env.call("queue/create", &[("app", "demo")]).await;
    assert_eq!(queue["flag"], "true", "{queue}");
    let queue_id = queue["result"]["id"].as_str().unwrap().to_string();
    forge_post(
        &browser,
        &format!("/ui/queues/{queue_id}/stop"),
        &[("csrf", &csrf)],
        false,
    )
    .await;
    assert!(browser.page_text().await.contains("Not stopped"));
    forge_post(
        &browser,
        "/ui/crons/edit",
        &[
            ("csrf", &csrf),
            ("ip", "a1"),
            ("app", "demo"),
            ("func", "f"),
            ("rule", "0 0 3 * * ?"),
            ("previewed", "0 0 3 * * ?"),
            ("action", "save"),
        ],
        false,
    )
    .await;
    assert!(browser.page_text().await.contains("Not saved"));
    assert_eq!(env.call("cron/list", &[]).await["result"], json!([]));
    // The admin still works, and the refusal is in the audit log.
    let listed = env.call("auth/list", &[]).await;
    assert_eq!(listed["flag"], "true", "admin not revoked: {listed}");

    // The admin signs in and sees the Admin page, with the refused attempt audited.
    sign_in(&browser, &base, AUTH_ID, AUTH_KEY).await;
    browser.goto(&format!("{base}/ui/admin")).await;
    wait_until(
        "the refusal in the audit log",
        Duration::from_secs(5),
        || async {
            browser.goto(&format!("{base}/ui/admin")).await;
            row_texts(&browser, "#audit").await.iter().any(|row| {
                row.contains("viewer") && row.contains("ui/auth/revoke") && row.contains("401.6")
            })
        },
    )
    .await;
    assert!(row_texts(&browser, "#auth-ids")
        .await
        .iter()
        .any(|row| row.contains("viewer") && row.contains("active")));
    browser.screenshot("19-admin-auth-ids").await;
    // None of the forged changes happened; the admin makes them from the forms.
    let viewer_grants = || async {
        row_texts(&browser, "#grants")
            .await
            .into_iter()
            .find(|row| row.starts_with("viewer"))
            .unwrap_or_default()
    };
    assert!(viewer_grants().await.contains("none yet"));
    assert!(row_texts(&browser, "#bindings").await[0].contains("none"));
    browser.fill("#grant-id", "viewer").await;
    browser.fill("#grant-app", "demo").await;
    browser.click_and_load("#grant").await;
    assert!(browser.text("#notice").await.contains("Done"));
    assert!(viewer_grants().await.contains("demo"));
    browser.fill("#bind-app", "demo").await;
    browser.fill("#bind-ip", "a1").await;
    browser.click_and_load("#bind").await;
    assert!(browser.text("#notice").await.contains("Done"));
    let bindings = row_texts(&browser, "#bindings").await;
    assert!(
        bindings[0].contains("demo") && bindings[0].contains("a1"),
        "{bindings:?}"
    );
    browser.screenshot("34-admin-grants-and-bindings").await;
    browser.goto(&format!("{base}/ui/queues/{queue_id}")).await;
    assert!(
        browser.text("#queue-state").await.contains("open"),
        "the forged stop changed nothing"
    );
    browser.goto(&format!("{base}/ui/admin")).await;
    // A grant of an unknown app is refused with the API's reason.
    browser.fill("#grant-id", "viewer").await;
    browser.fill("#grant-app", "no-such-app").await;
    browser.click_and_load("#grant").await;
    assert!(browser.text("#notice").await.contains("Nothing changed"));
    let audited = row_texts(&browser, "#audit").await;
    for (who, action) in [
        ("viewer", "ui/queue/stop"),
        ("viewer", "ui/auth/grant"),
        ("viewer", "ui/app/bind"),
        ("viewer", "ui/app/online"),
        ("viewer", "ui/app/upload"),
        (AUTH_ID, "ui/auth/grant"),
        (AUTH_ID, "ui/app/bind"),
    ] {
        assert!(
            audited
                .iter()
                .any(|row| row.contains(who) && row.contains(action)),
            "{who} {action} in {audited:?}"
        );
    }
    browser.close().await;
}

/// The text of the first element matching `css`, or `None` when the page has none (a page
/// that reloads itself may be between two documents).
async fn text_if_any(browser: &Browser, css: &str) -> Option<String> {
    let found = browser
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            json!([css]),
        )
        .await;
    found.as_str().map(str::to_string)
}

/// Submits a form the page does not offer (a forged post) with `fields`, and waits for the
/// answer page.
async fn forge_post(browser: &Browser, action: &str, fields: &[(&str, &str)], multipart: bool) {
    let fields: Vec<[&str; 2]> = fields.iter().map(|(k, v)| [*k, *v]).collect();
    browser
        .execute(
            "document.documentElement.dataset.stale = '1'; \
             const f = document.createElement('form'); f.method = 'post'; \
             f.action = arguments[0]; if (arguments[2]) { f.enctype = 'multipart/form-data'; } \
             for (const [k, v] of arguments[1]) { \
               const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i); } \
             document.body.appendChild(f); f.submit();",
            json!([action, fields, multipart]),
        )
        .await;
    browser.wait_for_new_page().await;
}

/// Every cron as (id, rule), from the API.
async fn cron_rules(env: &TestEnv) -> Vec<(String, String)> {
    let listed = env.call("cron/list", &[]).await;
    assert_eq!(listed["flag"], "true", "{listed}");
    let mut rules = Vec::new();
    for id in listed["result"].as_array().unwrap() {
        let id = id.as_str().unwrap();
        let detail = env.call("cron/detail", &[("cron_id", id)]).await;
        assert_eq!(detail["flag"], "true", "{detail}");
        rules.push((
            id.to_string(),
            detail["result"]["rule"].as_str().unwrap().to_string(),
        ));
    }
    rules.sort();
    rules
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_batches_crons_apps_and_live_output_in_a_real_browser() {
    // The embedded setup of `elves up`, in simple mode (its one auth id is an admin).
    let mut env = TestEnv::start_with(Setup {
        bus: BusKind::InProc,
        db: DbKind::Sqlite,
    })
    .await;
    for id in ["a1", "b2"] {
        let mut config = env.agent_config(id);
        config.labels = [("role".to_string(), "web".to_string())].into();
        if id == "b2" {
            // b2 lacks the test app: its tasks fail, which makes a batch's failed subset.
            std::fs::remove_dir_all(config.apps_dir.join("elvestest")).unwrap();
        }
        env.start_agent_with(config).await;
    }
    env.wait_online("a1").await;
    env.wait_online("b2").await;
    let base = env.base_url.clone();
    let browser = Browser::start().await;
    sign_in(&browser, &base, AUTH_ID, AUTH_KEY).await;

    // Empty lists say what to do next.
    browser.goto(&format!("{base}/ui/queues")).await;
    assert!(browser.text("#no-queues").await.contains("queue/create"));
    browser.goto(&format!("{base}/ui/batches")).await;
    assert!(browser.text("#no-batches").await.contains("batch/create"));
    browser.screenshot("20-batches-empty").await;

    // A queue: t1 waits on a gate, t2 and t3 depend on t1, t4 on t2.
    let gate = env.dir.path().join("gate");
    let gate_param = json!({ "file": gate }).to_string();
    let queue_id = crate::queue::create_queue(&env).await;
    let t1 = crate::queue::add_task(&env, &queue_id, "ip-a1", "gate", &gate_param, "").await;
    let t2 = crate::queue::add_task(&env, &queue_id, "ip-a1", "ok", "", &t1).await;
    let t3 = crate::queue::add_task(&env, &queue_id, "ip-a1", "ok", "", &t1).await;
    let t4 = crate::queue::add_task(&env, &queue_id, "ip-a1", "ok", "", &t2).await;
    crate::queue::commit(&env, &queue_id).await;
    let started = env.dir.path().join("gate.started");
    wait_until("the gated task runs", Duration::from_secs(20), || async {
        started.exists()
    })
    .await;
    browser.goto(&format!("{base}/ui/queues")).await;
    let rows = row_texts(&browser, "#queues").await;
    assert!(
        rows.iter()
            .any(|row| row.contains(&queue_id) && row.contains("running")),
        "{rows:?}"
    );
    browser.screenshot("21-queues").await;
    browser
        .click_and_load(&format!("a[href='/ui/queues/{queue_id}']"))
        .await;
    let nested =
        |outer: &str, inner: &str| format!("li[data-task='{outer}'] li[data-task='{inner}']");
    for (outer, inner) in [(&t1, &t2), (&t1, &t3), (&t1, &t4), (&t2, &t4)] {
        assert_eq!(
            browser.find_all(&nested(outer, inner)).await.len(),
            1,
            "{inner} under {outer}"
        );
    }
    assert!(browser.find_all(&nested(&t3, &t4)).await.is_empty());
    assert!(browser
        .text(&format!("li[data-task='{t1}'] .badge"))
        .await
        .contains("running"));
    assert!(browser
        .text(&format!("li[data-task='{t4}'] .badge"))
        .await
        .contains("pending"));
    browser.screenshot("22-queue-graph").await;

    // Stop: every unsettled task is stopped (the running one cancelled), as the database says.
    browser.click_and_load("#stop-queue").await;
    assert!(browser.text("#notice").await.contains("Queue stopped"));
    assert!(browser.text("#queue-state").await.contains("stopped"));
    let results = crate::queue::results(&env, &queue_id).await;
    for task in [&t1, &t2, &t3, &t4] {
        assert_eq!(results[task.as_str()]["status"], "stoped", "{results:?}");
    }
    assert!(browser
        .text(&format!("li[data-task='{t4}'] .badge"))
        .await
        .contains("stopped"));
    assert!(browser.find_all("#stop-queue").await.is_empty());
    browser.screenshot("23-queue-stopped").await;
    std::fs::write(&gate, b"open").unwrap();

    // Live output: a task that prints a tick every 100 ms, watched on its page as it runs.
    let live_queue = crate::queue::create_queue(&env).await;
    let ticking =
        crate::queue::add_task(&env, &live_queue, "ip-a1", "ticks", r#"{"n":"50"}"#, "").await;
    crate::queue::commit(&env, &live_queue).await;
    browser.goto(&format!("{base}/ui/tasks/{ticking}")).await;
    assert!(
        browser.find_all("#live-output").await.len() == 1,
        "the page of a running task follows its output"
    );
    wait_until(
        "live output on the page",
        Duration::from_secs(20),
        || async {
            text_if_any(&browser, "#live-output")
                .await
                .is_some_and(|text| text.contains("tick 3\n"))
        },
    )
    .await;
    let task_state = crate::queue::results(&env, &live_queue).await;
    assert_ne!(
        task_state[ticking.as_str()]["status"],
        "finish",
        "the output was seen while the task ran"
    );
    browser
        .execute(
            "document.getElementById('live-output').scrollIntoView();",
            json!([]),
        )
        .await;
    browser.screenshot("24-task-live-output").await;
    // At the end the page reloads itself with the result and the stored output.
    wait_until(
        "the result after the output",
        Duration::from_secs(30),
        || async {
            text_if_any(&browser, "#task-result")
                .await
                .is_some_and(|text| text.contains("ticked 50"))
        },
    )
    .await;
    assert!(browser.text("#task-stdout").await.contains("tick 50"));
    browser
        .execute(
            "document.getElementById('task-stdout').scrollIntoView();",
            json!([]),
        )
        .await;
    browser.screenshot("25-task-output-stored").await;

    // A batch on both agents: b2 fails; re-running the failed subset runs on b2 only.
    let created = env
        .call(
            "batch/create",
            &[
                ("app", "elvestest"),
                ("func", "ok"),
                ("target", "role=web"),
                ("offline", "wait:60"),
            ],
        )
        .await;
    assert_eq!(created["flag"], "true", "{created}");
    let batch_id = created["result"]["id"].as_str().unwrap().to_string();
    wait_until("the batch ends", Duration::from_secs(60), || async {
        let status = env.call("batch/status", &[("id", &batch_id)]).await;
        status["result"]["state"] == "finished"
    })
    .await;
    browser.goto(&format!("{base}/ui/batches")).await;
    assert!(row_texts(&browser, "#batches").await[0].contains(&batch_id));
    browser
        .click_and_load(&format!("a[href='/ui/batches/{batch_id}']"))
        .await;
    let agents = row_texts(&browser, "#batch-agents").await;
    assert!(
        agents
            .iter()
            .any(|row| row.contains("a1") && row.contains("ok")),
        "{agents:?}"
    );
    assert!(
        agents
            .iter()
            .any(|row| row.contains("b2") && row.contains("failed")),
        "{agents:?}"
    );
    browser.screenshot("26-batch").await;
    browser.click_and_load("#retry-failed").await;
    let retry_url = browser.current_url().await;
    let retry_id = retry_url.rsplit('/').next().unwrap().to_string();
    assert_ne!(retry_id, batch_id);
    assert!(browser.page_text().await.contains(&batch_id), "re-run of");
    let status = env.call("batch/status", &[("id", &retry_id)]).await;
    assert_eq!(status["flag"], "true", "{status}");
    assert_eq!(
        status["result"]["count"], 1,
        "only the failed agent: {status}"
    );
    wait_until("the re-run ends", Duration::from_secs(60), || async {
        let status = env.call("batch/status", &[("id", &retry_id)]).await;
        status["result"]["state"] == "finished"
    })
    .await;
    browser.goto(&retry_url).await;
    let agents = row_texts(&browser, "#batch-agents").await;
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert!(agents[0].contains("b2"), "{agents:?}");
    browser.screenshot("27-batch-rerun-failed").await;
    // The history's batch type: the two tasks of the batch and the one of its re-run.
    browser.goto(&format!("{base}/ui/tasks?type=batch")).await;
    let rows = row_texts(&browser, "#tasks").await;
    assert_eq!(rows.len(), 3, "{rows:?}");

    // A cron added through the form: a bad rule is refused, a good one previewed, then saved.
    browser.goto(&format!("{base}/ui/crons")).await;
    browser.click_and_load("#add-cron").await;
    browser.fill("#cron-ip", "ip-a1").await;
    browser.fill("#cron-app", "elvestest").await;
    browser.fill("#cron-func", "ok").await;
    browser.fill("#cron-rule", "0 0 25 * * ?").await;
    browser.click_and_load("#cron-preview").await;
    assert!(browser.text("#notice").await.contains("Not saved"));
    assert!(browser.find_all("#cron-save").await.is_empty());
    browser.screenshot("28-cron-bad-rule").await;
    browser.fill("#cron-rule", "0 0 3 * * ?").await;
    browser.click_and_load("#cron-preview").await;
    let firings = browser.find_all("#preview li").await;
    assert_eq!(firings.len(), 5);
    assert!(browser.text("#preview").await.contains("03:00:00"));
    browser.screenshot("29-cron-preview").await;
    assert!(
        cron_rules(&env).await.is_empty(),
        "nothing saved by a preview"
    );
    // A rule changed after its preview is previewed again, not saved.
    browser.fill("#cron-rule", "0 15 3 * * ?").await;
    browser.click_and_load("#cron-save").await;
    assert!(browser.text("#preview").await.contains("03:15:00"));
    assert!(cron_rules(&env).await.is_empty());
    browser.click_and_load("#cron-save").await;
    assert!(browser.text("#notice").await.contains("Added cron"));
    let crons = cron_rules(&env).await;
    assert_eq!(crons.len(), 1, "{crons:?}");
    assert_eq!(crons[0].1, "0 15 3 * * ?");
    // Edit: the new definition replaces the old cron, paused as the old one was.
    let paused = env.call("cron/stop", &[("cron_id", &crons[0].0)]).await;
    assert_eq!(paused["flag"], "true", "{paused}");
    browser
        .click_and_load(&format!("#edit-{}", crons[0].0))
        .await;
    assert_eq!(
        browser.attribute("#cron-rule", "value").await,
        "0 15 3 * * ?"
    );
    browser.fill("#cron-rule", "0 30 4 * * ?").await;
    browser.click_and_load("#cron-preview").await;
    browser.click_and_load("#cron-save").await;
    assert!(browser.text("#notice").await.contains("Saved cron"));
    let edited = cron_rules(&env).await;
    assert_eq!(edited.len(), 1, "{edited:?}");
    assert_eq!(edited[0].1, "0 30 4 * * ?");
    assert_ne!(edited[0].0, crons[0].0);
    let detail = env.call("cron/detail", &[("cron_id", &edited[0].0)]).await;
    assert_eq!(detail["result"]["cron_flag"], 0, "{detail}");
    browser.screenshot("30-cron-edited").await;

    // Apps: upload two versions from the form, then roll back; the agents follow.
    let packages = tempfile::tempdir().unwrap();
    let installed_on_a1 = |version: &'static str| {
        let browser = &browser;
        let base = base.clone();
        async move {
            browser.goto(&format!("{base}/ui/apps")).await;
            text_if_any(
                browser,
                &format!("tr[data-app='demoapp'] .installed[data-version='{version}']"),
            )
            .await
            .is_some_and(|text| text.contains("a1"))
        }
    };
    for (version, reply) in [("1.0", "v1"), ("2.0", "v2")] {
        let path = packages.path().join(format!("demoapp_{version}.zip"));
        std::fs::write(&path, elves_shared::package::testing::app_zip(reply)).unwrap();
        browser.goto(&format!("{base}/ui/apps")).await;
        browser.choose_file("#package", &path).await;
        browser.click_and_load("#upload").await;
        assert!(
            browser
                .text("#notice")
                .await
                .contains(&format!("Uploaded demoapp version {version}")),
            "{}",
            browser.page_text().await
        );
        wait_until(
            "the agent installs the online version",
            Duration::from_secs(20),
            || installed_on_a1(if version == "1.0" { "1.0" } else { "2.0" }),
        )
        .await;
    }
    browser.screenshot("31-apps-two-versions").await;
    browser.click_and_load("#online-demoapp-1_0").await;
    assert!(browser
        .text("#notice")
        .await
        .contains("version 1.0 is online"));
    let versions = env.call("app/versions", &[("app", "demoapp")]).await;
    assert_eq!(versions["result"]["online_version"], "1.0", "{versions}");
    wait_until("the agent rolls back", Duration::from_secs(20), || {
        installed_on_a1("1.0")
    })
    .await;
    browser.screenshot("32-apps-rolled-back").await;

    // A package the API refuses is refused here too, and nothing is stored.
    let bad = packages.path().join("demoapp_3.0.zip");
    std::fs::write(&bad, b"not a zip").unwrap();
    browser.choose_file("#package", &bad).await;
    browser.click_and_load("#upload").await;
    assert!(browser.text("#notice").await.contains("Not uploaded"));
    let versions = env.call("app/versions", &[("app", "demoapp")]).await;
    assert_eq!(versions["result"]["versions"].as_array().unwrap().len(), 2);

    // The task history filtered by auth id: the queues' and batches' tasks are this id's.
    browser
        .goto(&format!("{base}/ui/tasks?auth_id={AUTH_ID}&func=ticks"))
        .await;
    let rows = row_texts(&browser, "#tasks").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].contains(&ticking), "{rows:?}");
    browser
        .goto(&format!("{base}/ui/tasks?auth_id=nobody"))
        .await;
    assert!(row_texts(&browser, "#tasks").await.is_empty());

    // The new pages on a phone-sized screen: states in words, nothing cut off.
    browser.set_window_size(390, 844).await;
    browser.goto(&format!("{base}/ui/queues/{queue_id}")).await;
    assert!(browser.text("#queue-state").await.contains("stopped"));
    browser.screenshot("35-queue-graph-phone").await;
    browser.goto(&format!("{base}/ui/batches/{batch_id}")).await;
    browser.screenshot("36-batch-phone").await;
    browser.set_window_size(1280, 900).await;

    // Every change above is in the audit log under the auth id.
    browser.goto(&format!("{base}/ui/admin")).await;
    let audited = row_texts(&browser, "#audit").await;
    for action in [
        "ui/queue/stop",
        "ui/batch/retry",
        "ui/cron/add",
        "ui/cron/delete",
        "ui/app/upload",
        "ui/app/online",
    ] {
        assert!(
            audited
                .iter()
                .any(|row| row.contains(action) && row.contains(AUTH_ID)),
            "{action} in {audited:?}"
        );
    }
    browser.close().await;
}
