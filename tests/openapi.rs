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
