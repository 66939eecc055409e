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

    // Apps (none registered in simple mode: the empty state says what to do).
    browser.goto(&format!("{base}/ui/apps")).await;
    assert!(browser.page_text().await.contains("No app you may use"));
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
    browser.close().await;
}
