//! A re-release: a new version uploaded with the bytes of an older one (same SHA-256). The
//! agent must report the version it was told to have, whatever the bytes, so
//! `info/agents/detail` moves to the new number.

use crate::apps_lifecycle::upload;
use crate::harness::{wait_until, Setup, TestEnv};
use elves_shared::package::testing::app_zip;
use std::time::Duration;

crate::on_every_setup!(the_same_bytes_under_a_new_version_are_reported_as_the_new_version);

/// Installs and heartbeats are fast in the tests (200 ms beats); this bounds a slow machine.
const REPORTED_WITHIN: Duration = Duration::from_secs(15);

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
