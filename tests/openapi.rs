//! `/api/v2/openapi.json` on a running center: served without a signature, the document the
//! center's handlers describe, and the calls it describes as signed are refused unsigned with
//! the first code it lists.

use crate::harness::{error_code, BusKind, TestEnv};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_description_is_served_unsigned_and_matches_the_center() {
    let env = TestEnv::start(BusKind::InProc).await;
    let response = reqwest::get(format!("{}/api/v2/openapi.json", env.base_url))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let document: Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.len() > 40, "{} paths", paths.len());

    // Every POST operation is a signed v2 call: without its sign parameters it answers the
    // envelope with the code its description lists first (401.1).
    let mut called = 0;
    for (path, item) in paths {
        let Some(operation) = item.get("post") else {
            continue;
        };
        called += 1;
        let first_code = operation["x-error-codes"][0].as_str().unwrap();
        let answer = env.post_form(path, &[]).await;
        assert_eq!(answer["flag"], "false", "{path}: {answer}");
        assert_eq!(error_code(&answer), first_code, "{path}: {answer}");
    }
    assert!(called > 40, "only {called} signed operations");
    for open in ["/healthz", "/metrics"] {
        assert_eq!(paths[open]["get"]["security"], serde_json::json!([{}]));
        let status = reqwest::get(format!("{}{open}", env.base_url))
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{open}");
    }
}

/// Checks `value` against `schema` (resolving `$ref`s in `document`): types, required
/// properties, and no property the schema does not name. Returns what does not match.
fn mismatches(document: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return mismatches(
            document,
            &document["components"]["schemas"][name],
            value,
            at,
        );
    }
    for combinator in ["oneOf", "anyOf"] {
        if let Some(alternatives) = schema[combinator].as_array() {
            // Matches when one alternative matches; else what the closest one found.
            return alternatives
                .iter()
                .map(|alternative| mismatches(document, alternative, value, at))
                .min_by_key(Vec::len)
                .unwrap_or_default();
        }
    }
    if let Some(parts) = schema["allOf"].as_array() {
        return parts
            .iter()
            .flat_map(|part| mismatches(document, part, value, at))
            .collect();
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        Value::Null => return Vec::new(), // any value
        other => panic!("{at}: a schema this check cannot read: {other}"),
    };
    let actual = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(number) if number.is_u64() || number.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let integer_as_number = actual == "integer" && types.contains(&"number");
    if !(types.contains(&actual) || integer_as_number) {
        return vec![format!("{at}: {actual}, documented {types:?}")];
    }
    let mut found = Vec::new();
    if let Value::Object(fields) = value {
        let properties = schema["properties"].as_object();
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap();
            if !fields.contains_key(name) {
                found.push(format!("{at}.{name}: missing"));
            }
        }
        for (name, field) in fields {
            if let Some(properties) = properties {
                match properties.get(name) {
                    Some(property) => found.extend(mismatches(
                        document,
                        property,
                        field,
                        &format!("{at}.{name}"),
                    )),
                    None => found.push(format!("{at}.{name}: not documented")),
                }
            } else if let Some(items) = schema.get("additionalProperties") {
                found.extend(mismatches(document, items, field, &format!("{at}.{name}")));
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (index, item) in items.iter().enumerate() {
            found.extend(mismatches(
                document,
                item_schema,
                item,
                &format!("{at}[{index}]"),
            ));
        }
    }
    found
}

/// The answers of the operations that document their result's shape have that shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_result_shapes_match_real_answers() {
    let mut env = TestEnv::start(BusKind::InProc).await;
    env.start_agent("a1").await;
    let document: Value = reqwest::get(format!("{}/api/v2/openapi.json", env.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let check = |endpoint: &str, answer: &Value| {
        assert_eq!(answer["flag"], "true", "{endpoint}: {answer}");
        let schema = &document["paths"][format!("/api/v2/{endpoint}")]["post"]["responses"]["200"]
            ["content"]["application/json"]["schema"];
        assert!(
            schema["$ref"]
                .as_str()
                .is_some_and(|r| r != "#/components/schemas/Envelope"),
            "{endpoint} documents no result shape: {schema}"
        );
        let wrong = mismatches(&document, schema, answer, endpoint);
        assert!(wrong.is_empty(), "{endpoint}: {wrong:?}\n{answer}");
    };

    let rt = env
        .call(
            "rt/exec",
            &[("ip", "ip-a1"), ("app", "elvestest"), ("func", "ok")],
        )
        .await;
    check("rt/exec", &rt);
    let task_id = rt["result"]["id"].as_str().unwrap().to_string();
    check(
        "task/result",
        &env.call("task/result", &[("id", &task_id)]).await,
    );
    check(
        "task/output",
        &env.call("task/output", &[("id", &task_id)]).await,
    );
    let running = env
        .call(
            "rt/exec",
            &[
                ("ip", "ip-a1"),
                ("app", "elvestest"),
                ("func", "ticks"),
                ("param", r#"{"n":"20"}"#),
                ("wait_s", "1"),
            ],
        )
        .await;
    assert_eq!(running["result"]["state"], "running", "{running}");
    check("rt/exec", &running);

    let queue = env.call("queue/create", &[("app", "elvestest")]).await;
    check("queue/create", &queue);
    let queue_id = queue["result"]["id"].as_str().unwrap().to_string();
    let added = env
        .call(
            "queue/addtask",
            &[("queue_id", &queue_id), ("ip", "ip-a1"), ("func", "ok")],
        )
        .await;
    check("queue/addtask", &added);
    let tasks =
        r#"[{"ip":"ip-a1","func":"ok"},{"ip":"ip-a1","func":"false","depends_on_index":0}]"#;
    let batch = env
        .call(
            "queue/addtasks",
            &[("queue_id", &queue_id), ("tasks", tasks)],
        )
        .await;
    check("queue/addtasks", &batch);
    // Before the commit every task is pending with empty fields; after it, some have results.
    check(
        "queue/result",
        &env.call("queue/result", &[("queue_id", &queue_id)]).await,
    );
    let committed = env.call("queue/commit", &[("queue_id", &queue_id)]).await;
    assert_eq!(committed["flag"], "true", "{committed}");
    crate::harness::wait_until(
        "the queue done",
        std::time::Duration::from_secs(30),
        || async {
            let result = env.call("queue/result", &[("queue_id", &queue_id)]).await;
            result["result"]
                .as_object()
                .is_some_and(|tasks| tasks.values().all(|task| task["status"] == "finish"))
        },
    )
    .await;
    check(
        "queue/result",
        &env.call("queue/result", &[("queue_id", &queue_id)]).await,
    );
    check(
        "queue/qksqueue",
        &env.call(
            "queue/qksqueue",
            &[("ip", "ip-a1"), ("app", "elvestest"), ("func", "ok")],
        )
        .await,
    );
    check(
        "cron/add",
        &env.call(
            "cron/add",
            &[
                ("ip", "ip-a1"),
                ("app", "elvestest"),
                ("func", "ok"),
                ("rule", "0 0 0 1 1 ? 2099"),
            ],
        )
        .await,
    );
}
