//! A re-release: a new version uploaded with the bytes of an older one (same SHA-256). The
//! agent must report the version it was told to have, whatever the bytes, so
//! `info/agents/detail` moves to the new number.

use crate::harness::{unix_now_s, wait_until, Setup, TestEnv, AUTH_ID, AUTH_KEY};
use elves_shared::package::testing::app_zip;
use elves_shared::sign::{self, SignType};
use serde_json::Value;
use std::time::Duration;

crate::on_every_setup!(the_same_bytes_under_a_new_version_are_reported_as_the_new_version);

/// Installs and heartbeats are fast in the tests (200 ms beats); this bounds a slow machine.
const REPORTED_WITHIN: Duration = Duration::from_secs(15);

/// `POST /api/v2/app/upload` with the auth parameters in the query string and the zip as the
/// multipart field `file`.
async fn upload(env: &TestEnv, file_name: &str, bytes: &[u8]) -> Value {
    let path = "/api/v2/app/upload";
    let pairs = vec![
        ("auth_id".to_string(), AUTH_ID.to_string()),
        ("timestamp".to_string(), unix_now_s().to_string()),
    ];
    let signed = sign::sign_params(path, pairs, SignType::HmacSha256, AUTH_KEY);
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

/// The version of `app` that `info/agents/detail` shows for `ip`, if any.
async fn reported_version(env: &TestEnv, ip: &str, app: &str) -> Option<String> {
    let detail = env.call("info/agents/detail", &[("ip", ip)]).await;
    detail["result"]["apps"][app].as_str().map(str::to_string)
}

async fn wait_reported(env: &TestEnv, ip: &str, app: &str, version: &str) {
    wait_until(
        &format!("{ip} to report {app} {version}"),
        REPORTED_WITHIN,
        || async { reported_version(env, ip, app).await.as_deref() == Some(version) },
    )
    .await;
}

async fn the_same_bytes_under_a_new_version_are_reported_as_the_new_version(setup: Setup) {
    let mut env = TestEnv::start_with(setup).await;
    env.start_agent("a1").await;
    let bytes = app_zip("same");

    let first = upload(&env, "rerelease_1.0.zip", &bytes).await;
    assert_eq!(first["flag"], "true", "{first}");
    wait_reported(&env, "ip-a1", "rerelease", "1.0").await;

    let second = upload(&env, "rerelease_2.0.zip", &bytes).await;
    assert_eq!(second["flag"], "true", "{second}");
    assert_eq!(
        second["result"]["sha256"], first["result"]["sha256"],
        "the same bytes: {first} {second}"
    );
    wait_reported(&env, "ip-a1", "rerelease", "2.0").await;
    let versions = env.call("app/versions", &[("app", "rerelease")]).await;
    assert_eq!(versions["result"]["online_version"], "2.0", "{versions}");
}
