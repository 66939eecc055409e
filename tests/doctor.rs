//! `elves doctor` against a real deployment: a center on RabbitMQ and PostgreSQL, checked by the
//! `elves` binary through configuration files as an operator writes them. A good deployment
//! passes; each broken piece is reported with its fix and a non-zero exit.

use crate::harness::{
    amqp_url, center_config, pg_url, start_center, BusKind, DbKind, Setup, TestEnv, AUTH_ID,
    AUTH_KEY,
};
use elves_center::store::testing::TestDatabase;
use std::path::{Path, PathBuf};
use std::process::Output;

/// What one run of `elves doctor` printed and how it ended.
struct Diagnosis {
    success: bool,
    stdout: String,
}

impl Diagnosis {
    fn line(&self, label: &str, name: &str) -> Option<&str> {
        let start = format!("{label:<5} {name:<10} ");
        self.stdout
            .lines()
            .map(str::trim_start)
            .find(|line| line.starts_with(&start))
    }

    /// The check's line and the fix line after it.
    fn failure(&self, name: &str) -> String {
        let mut lines = self.stdout.lines().map(str::trim_start);
        let start = format!("FAIL  {name:<10} ");
        match lines.find(|line| line.starts_with(&start)) {
            Some(line) => format!("{line}\n{}", lines.next().unwrap_or_default()),
            None => panic!("no failure of {name} in:\n{}", self.stdout),
        }
    }
}

async fn doctor(args: &[&str]) -> Diagnosis {
    let started = std::time::Instant::now();
    let output: Output = tokio::process::Command::new(env!("CARGO_BIN_EXE_elves"))
        .arg("doctor")
        .args(args)
        .args(["--timeout-s", "5"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}{stderr}elves doctor took {:?}", started.elapsed());
    Diagnosis {
        success: output.status.success(),
        stdout,
    }
}

/// A running center on the real broker and PostgreSQL, and configuration files for it and for
/// an agent of it, written as an operator would.
struct Deployment {
    env: TestEnv,
    files: tempfile::TempDir,
}

impl Deployment {
    async fn start() -> Deployment {
        let env = TestEnv::start_with(Setup {
            bus: BusKind::Rabbit,
            db: DbKind::Postgres,
        })
        .await;
        let files = tempfile::tempdir().unwrap();
        for dir in ["apps", "spool"] {
            std::fs::create_dir(files.path().join(dir)).unwrap();
        }
        Deployment { env, files }
    }

    fn center_config(&self, database_url: &str) -> PathBuf {
        let env = &self.env;
        let text = format!(
            "data_dir = {data_dir:?}\n\
             [http]\nlisten = {listen:?}\n\
             [bus]\nurl = {bus:?}\nnamespace = {namespace:?}\n\
             [auth]\nauth_id = {AUTH_ID:?}\nauth_key = {AUTH_KEY:?}\n\
             [database]\nurl = {database_url:?}\n",
            data_dir = env.dir.path().display().to_string(),
            listen = env.center().http_addr.to_string(),
            bus = amqp_url(),
            namespace = env.namespace,
        );
        self.write("center.toml", &text)
    }

    fn agent_config(&self, bus_url: &str, public_key: &str) -> PathBuf {
        let env = &self.env;
        let dir = self.files.path();
        let text = format!(
            "id = \"doctor-agent\"\n\
             apps_dir = {apps:?}\nspool_dir = {spool:?}\n\
             [bus]\nurl = {bus_url:?}\nnamespace = {namespace:?}\n\
             [center]\nkey_id = {key_id:?}\npublic_key = {public_key:?}\ndownload_url = {url:?}\n",
            apps = dir.join("apps").display().to_string(),
            spool = dir.join("spool").display().to_string(),
            namespace = env.namespace,
            key_id = env.key_id,
            url = env.base_url,
        );
        self.write("agent.toml", &text)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.files.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The broker URL of the tests with another password.
fn amqp_url_with_password(password: &str) -> String {
    let mut url = url::Url::parse(&amqp_url()).unwrap();
    url.set_password(Some(password)).unwrap();
    url.to_string()
}

/// A port on this host that nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_deployment_passes() {
    let deployment = Deployment::start().await;
    let center = deployment.center_config(&deployment.env.center_database_url);
    let agent = deployment.agent_config(&amqp_url(), &deployment.env.public_key_hex);
    let diagnosis = doctor(&["--center", arg(&center), "--agent", arg(&agent)]).await;
    assert!(diagnosis.success, "{}", diagnosis.stdout);
    for name in [
        "config",
        "data_dir",
        "database",
        "broker",
        "center",
        "clock",
        "apps_dir",
        "spool_dir",
        "key",
    ] {
        assert!(
            diagnosis.line("ok", name).is_some(),
            "{name} not ok:\n{}",
            diagnosis.stdout
        );
    }
    let database = diagnosis.line("ok", "database").unwrap();
    assert!(database.contains("schema up to date"), "{database}");
    assert!(diagnosis.stdout.contains("no problems found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_broker_password_is_reported_with_the_fix() {
    let deployment = Deployment::start().await;
    let agent = deployment.agent_config(
        &amqp_url_with_password("not-the-password"),
        &deployment.env.public_key_hex,
    );
    let diagnosis = doctor(&["--agent", arg(&agent)]).await;
    assert!(!diagnosis.success);
    let failure = diagnosis.failure("broker");
    assert!(failure.contains("ACCESS_REFUSED"), "{failure}");
    assert!(
        failure.contains("rabbitmqctl authenticate_user"),
        "{failure}"
    );
    assert!(
        !failure.contains("not-the-password"),
        "password printed: {failure}"
    );
    // Only the broker is wrong: the rest of the agent's checks still pass.
    assert!(
        diagnosis.line("ok", "key").is_some(),
        "{}",
        diagnosis.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_port_is_reported_with_the_fix() {
    let deployment = Deployment::start().await;
    let mut url = url::Url::parse(&amqp_url()).unwrap();
    url.set_port(Some(closed_port())).unwrap();
    let agent = deployment.agent_config(url.as_str(), &deployment.env.public_key_hex);
    let diagnosis = doctor(&["--agent", arg(&agent)]).await;
    assert!(!diagnosis.success);
    let failure = diagnosis.failure("broker");
    assert!(failure.contains("refused"), "{failure}");
    assert!(failure.contains("start RabbitMQ"), "{failure}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmigrated_database_is_reported_and_left_unmigrated() {
    let deployment = Deployment::start().await;
    let empty = TestDatabase::postgres(&pg_url()).unwrap();
    let center = deployment.center_config(&empty.url);
    for _ in 0..2 {
        // The second run finds the same: the doctor migrates nothing.
        let diagnosis = doctor(&["--center", arg(&center)]).await;
        assert!(!diagnosis.success);
        let failure = diagnosis.failure("database");
        assert!(failure.contains("not migrated"), "{failure}");
        assert!(failure.contains("restart elves-center"), "{failure}");
    }
    let pending = elves_center::store::Store::pending_migrations(&empty.url).unwrap();
    assert!(!pending.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_reported_with_the_fix() {
    let deployment = Deployment::start().await;
    let center = deployment.center_config(&format!(
        "postgres://postgres@127.0.0.1:{}/test",
        closed_port()
    ));
    let diagnosis = doctor(&["--center", arg(&center)]).await;
    assert!(!diagnosis.success);
    let failure = diagnosis.failure("database");
    assert!(failure.contains("pg_isready"), "{failure}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_center_key_is_reported_with_the_right_one() {
    let deployment = Deployment::start().await;
    let other = elves_shared::crypto::InstructionSigner::generate(&deployment.env.key_id);
    let agent = deployment.agent_config(&amqp_url(), &other.public_key_hex());
    let diagnosis = doctor(&["--agent", arg(&agent)]).await;
    assert!(!diagnosis.success);
    let failure = diagnosis.failure("key");
    assert!(failure.contains(&other.public_key_hex()), "{failure}");
    assert!(
        failure.contains(&format!(
            "set center.public_key = \"{}\"",
            deployment.env.public_key_hex
        )),
        "{failure}"
    );
    assert!(
        diagnosis.line("ok", "broker").is_some(),
        "{}",
        diagnosis.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_that_does_not_parse_is_reported_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("agent.toml");
    std::fs::write(&broken, "id = \"a\"\nheartbeat_interval_ms = \"often\"\n").unwrap();
    let diagnosis = doctor(&["--agent", arg(&broken)]).await;
    assert!(!diagnosis.success);
    let failure = diagnosis.failure("config");
    assert!(failure.contains("heartbeat_interval_ms"), "{failure}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_center_waiting_for_its_broker_is_reported_with_the_brokers_error() {
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::sqlite().unwrap();
    let mut broker = url::Url::parse(&amqp_url()).unwrap();
    broker.set_port(Some(closed_port())).unwrap();
    let namespace = format!("elves-doctor-{:016x}", rand::random::<u64>());
    let mut config = center_config(dir.path(), &BusKind::Rabbit, &namespace, &database.url);
    config.bus.url = broker.to_string();
    let bus = elves_shared::bus::open(&config.bus.url, &namespace).unwrap();
    let center = start_center(config, bus).await;
    let file = dir.path().join("center.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = {data_dir:?}\n[http]\nlisten = {listen:?}\n\
             [bus]\nurl = {url:?}\nnamespace = {namespace:?}\n\
             [auth]\nauth_id = {AUTH_ID:?}\nauth_key = {AUTH_KEY:?}\n\
             [database]\nurl = {database:?}\n",
            data_dir = dir.path().display().to_string(),
            listen = center.http_addr.to_string(),
            url = broker.to_string(),
            database = database.url,
        ),
    )
    .unwrap();
    let diagnosis = doctor(&["--center", arg(&file)]).await;
    tokio::task::spawn_blocking(move || center.stop())
        .await
        .unwrap();
    assert!(!diagnosis.success);
    // The center migrated its SQLite file before it began waiting.
    let database = diagnosis.line("ok", "database");
    assert!(
        database.is_some_and(|line| line.contains("schema up to date")),
        "{}",
        diagnosis.stdout
    );
    assert!(diagnosis.failure("broker").contains("start RabbitMQ"));
    let failure = diagnosis.failure("center");
    assert!(failure.contains("waiting for the broker"), "{failure}");
    assert!(failure.contains("refused"), "{failure}");
}
