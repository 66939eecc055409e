//! SPEC §11 "Responses": when several parameters are bad, the answer is the first of their
//! errors in the order of the error-code table (403.1 ip, 403.2 param, 403.3 app, 403.4 mode,
//! 403.5 rule, 403.6 queue_id, 403.7 func, 403.8 timeout, 403.9 cron_id), and parameter errors
//! win over component errors (402.x) and over what is found or not (412.x).
//!
//! One table: for each endpoint, its checks in table order, each with a bad value. Every row
//! makes the checks from the n-th on fail at once and expects the n-th's code; if a handler
//! checked some parameter before one that comes earlier in the table, the row of the earlier
//! one gets the later one's code. The center runs in simple mode with its cron component off, so
//! that the supervisor-only and cron endpoints also have a component error after their
//! parameters.
//!
//! Endpoints with a single check and no component (queue/create, queue/commit, queue/stop,
//! queue/result, info/agents/detail, app/create, app/versions) have no two errors to order.

use crate::harness::{error_code, BusKind, DbKind, Setup, TestEnv};

/// A check of an endpoint: the parameter, a value that fails it, and its code.
type Check = (&'static str, &'static str, &'static str);

const IP: Check = ("ip", "", "403.1");
/// Where `ip` is optional, empty means "not given": a malformed one is the error.
const IP_MALFORMED: Check = ("ip", "bad ip", "403.1");
const PARAM: Check = ("param", "{not json", "403.2");
const PROXY: Check = ("proxy", "a|b|c", "403.2");
const APP: Check = ("app", "bad app", "403.3");
const MODE: Check = ("mode", "X", "403.4");
const RULE: Check = ("rule", "* * * * *", "403.5");
const QUEUE_ID: Check = ("queue_id", "nothex", "403.6");
const FUNC: Check = ("func", "bad func", "403.7");
const TIMEOUT: Check = ("timeout", "-1", "403.8");
const CRON_ID: Check = ("cron_id", "nothex", "403.9");
/// The array of a batch as a whole; its elements are checked like addtask's parameters
/// (tests/queue_batch.rs).
const TASKS: Check = ("tasks", "{not json", "403.2");
const VERSION: Check = ("version", "bad version", "403.2");
const AUTH_ID: Check = ("id", "bad id", "403.2");
const ROLE: Check = ("role", "boss", "403.2");
/// Not a parameter error: a malformed dependency is "dependency task not found".
const DEPEND: Check = ("depend_task_id", "nothex", "412.4");

/// Values that pass each check, for the parameters a row leaves good.
const GOOD: [(&str, &str); 14] = [
    ("ip", "ip-a1"),
    ("param", "{}"),
    ("proxy", ""),
    ("app", "elvestest"),
    ("mode", "NP"),
    ("rule", "0 0 3 * * ?"),
    ("queue_id", "00000000000000ff"),
    ("func", "log"),
    ("timeout", "10"),
    ("cron_id", "00000000000000ff"),
    ("version", "1.0"),
    ("id", "alice"),
    ("role", "normal"),
    ("tasks", r#"[{"ip": "ip-a1", "func": "log"}]"#),
];

/// Each endpoint's checks in table order, and the component error its center gives once the
/// parameters are good (this center: simple mode, cron off).
const ENDPOINTS: &[(&str, &[Check], Option<&str>)] = &[
    (
        "rt/exec",
        &[IP, PARAM, PROXY, APP, MODE, FUNC, TIMEOUT],
        None,
    ),
    (
        "queue/addtask",
        &[IP, PARAM, PROXY, MODE, QUEUE_ID, FUNC, TIMEOUT, DEPEND],
        None,
    ),
    ("queue/addtasks", &[TASKS, QUEUE_ID], None),
    (
        "queue/qksqueue",
        &[IP, PARAM, PROXY, APP, MODE, FUNC, TIMEOUT],
        None,
    ),
    (
        "cron/add",
        &[IP, PARAM, PROXY, APP, MODE, RULE, FUNC, TIMEOUT],
        Some("402.2"),
    ),
    ("cron/start", &[CRON_ID], Some("402.2")),
    ("cron/stop", &[CRON_ID], Some("402.2")),
    ("cron/delete", &[CRON_ID], Some("402.2")),
    ("cron/detail", &[CRON_ID], Some("402.2")),
    ("cron/info", &[CRON_ID], Some("402.2")),
    ("cron/list", &[IP_MALFORMED], Some("402.2")),
    ("app/online", &[VERSION, APP], None),
    ("app/bind", &[IP, APP], Some("402.1")),
    ("app/unbind", &[IP, APP], Some("402.1")),
    ("auth/create", &[AUTH_ID, ROLE], Some("402.1")),
    ("auth/revoke", &[AUTH_ID], Some("402.1")),
    ("auth/grant", &[AUTH_ID, APP], Some("402.1")),
    ("auth/ungrant", &[AUTH_ID, APP], Some("402.1")),
];

/// A row of the table: endpoint, parameters (two or more things wrong), expected code.
struct Row {
    endpoint: &'static str,
    params: Vec<(&'static str, &'static str)>,
    expected: &'static str,
}

fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for (endpoint, checks, component) in ENDPOINTS {
        for (first_bad, (_, _, expected)) in checks.iter().enumerate() {
            let n_wrong = checks.len() - first_bad + usize::from(component.is_some());
            if n_wrong < 2 {
                continue;
            }
            let params: Vec<(&str, &str)> = checks
                .iter()
                .enumerate()
                .map(|(index, (key, bad, _))| {
                    let good = GOOD.iter().find(|(name, _)| name == key).map(|(_, v)| *v);
                    let value = if index >= first_bad {
                        *bad
                    } else {
                        good.unwrap_or_else(|| panic!("no good value for {key}"))
                    };
                    (*key, value)
                })
                .collect();
            rows.push(Row {
                endpoint,
                params,
                expected,
            });
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_bad_parameters_answer_the_first_in_table_order() {
    let setup = Setup {
        bus: BusKind::InProc,
        db: DbKind::Sqlite,
    };
    let env = TestEnv::start_configured(setup, |config| config.cron.enabled = false).await;
    let rows = rows();
    assert!(rows.len() > 40, "the table has its rows: {}", rows.len());
    let mut wrong = Vec::new();
    for Row {
        endpoint,
        params,
        expected,
    } in &rows
    {
        let answer = env.call(endpoint, params).await;
        let code = error_code(&answer);
        if code != *expected {
            wrong.push(format!(
                "{endpoint} {params:?}: expected {expected}, got {answer}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} rows answer out of table order:\n{}",
        wrong.len(),
        rows.len(),
        wrong.join("\n")
    );
}
