//! `elves doctor`: checks a deployment from the host it runs on, through the same files and
//! addresses the services use, and says for each problem how to fix it. It changes nothing:
//! no database is created or migrated, no queue or exchange declared, nothing written but a
//! probe file that is removed at once.

use anyhow::Context as _;
use clap::Args;
use elves_agent::AgentConfig;
use elves_center::config::CenterConfig;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("configs").required(true).multiple(true).args(["center", "agent"])))]
pub struct DoctorArgs {
    /// A center's configuration: its data directory, database, broker and its own /healthz.
    #[arg(long, value_name = "FILE")]
    pub center: Option<PathBuf>,
    /// An agent's configuration: its broker account, directories, and the center's key and clock.
    #[arg(long, value_name = "FILE")]
    pub agent: Option<PathBuf>,
    /// The center's HTTP address for the clock and key checks (http://host:port). Default: the
    /// center config's apps.public_url or http.listen, the agent config's center.download_url.
    #[arg(long, value_name = "URL")]
    pub center_url: Option<String>,
    /// The largest clock difference to the center that passes, in seconds.
    #[arg(long, default_value_t = 5)]
    pub max_clock_skew_s: u64,
    /// How long each network check may take, in seconds.
    #[arg(long, default_value_t = 5)]
    pub timeout_s: u64,
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(String),
    /// Works now but deserves a look; does not fail the run.
    Warn {
        problem: String,
        fix: String,
    },
    Fail {
        problem: String,
        fix: String,
    },
    /// Could not be checked from what was given; says what would allow it.
    Skipped(String),
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (label, text, fix) = match &self.outcome {
            Outcome::Ok(text) => ("ok", text, None),
            Outcome::Warn { problem, fix } => ("WARN", problem, Some(fix)),
            Outcome::Fail { problem, fix } => ("FAIL", problem, Some(fix)),
            Outcome::Skipped(text) => ("skip", text, None),
        };
        write!(f, "  {label:<5} {:<10} {text}", self.name)?;
        if let Some(fix) = fix {
            write!(f, "\n        {:<10} fix: {fix}", "")?;
        }
        Ok(())
    }
}

fn ok(name: &'static str, text: impl Into<String>) -> Check {
    Check {
        name,
        outcome: Outcome::Ok(text.into()),
    }
}

/// Error texts of other libraries may span lines (libpq's do): one line per check.
fn one_line(text: impl Into<String>) -> String {
    text.into().split_whitespace().collect::<Vec<_>>().join(" ")
}

fn fail(name: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        outcome: Outcome::Fail {
            problem: one_line(problem),
            fix: fix.into(),
        },
    }
}

fn warn(name: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        outcome: Outcome::Warn {
            problem: one_line(problem),
            fix: fix.into(),
        },
    }
}

fn skipped(name: &'static str, text: impl Into<String>) -> Check {
    Check {
        name,
        outcome: Outcome::Skipped(text.into()),
    }
}

/// The example key of the shipped center configuration: a center still using it is open to
/// anyone who read the README.
const EXAMPLE_AUTH_KEY: &str = "change-me-please";

pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    // Every problem is reported below with its fix; lapin's own log lines about the same
    // events (a refused login, the probe of a missing exchange) would only repeat them as
    // errors. RUST_LOG brings them back.
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(log::LevelFilter::Off);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let options = Options {
        center_url: args.center_url,
        max_clock_skew: Duration::from_secs(args.max_clock_skew_s),
        timeout: Duration::from_secs(args.timeout_s.max(1)),
    };
    let mut failures = 0;
    if is_root() {
        println!(
            "note: running as root, so the directory checks say nothing about the service's \
             user; run as that user instead: runuser -u elves-center (or elves-agent) -- \
             elves doctor …"
        );
    }
    if let Some(path) = &args.center {
        println!("center {}", path.display());
        let checks = runtime.block_on(check_center(path, &options));
        failures += print_checks(&checks);
    }
    if let Some(path) = &args.agent {
        println!("agent {}", path.display());
        let checks = runtime.block_on(check_agent(path, &options));
        failures += print_checks(&checks);
    }
    if failures > 0 {
        anyhow::bail!("{failures} problem(s) found");
    }
    println!("no problems found");
    Ok(())
}

fn print_checks(checks: &[Check]) -> usize {
    for check in checks {
        println!("{check}");
    }
    checks
        .iter()
        .filter(|check| matches!(check.outcome, Outcome::Fail { .. }))
        .count()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub struct Options {
    pub center_url: Option<String>,
    pub max_clock_skew: Duration,
    pub timeout: Duration,
}

/// Every check of a center's configuration, in the order a broken deployment is best
/// repaired: the file, its directories, the database, the broker, then the running center.
pub async fn check_center(path: &Path, options: &Options) -> Vec<Check> {
    let config = match CenterConfig::load(Some(path)) {
        Ok(config) => config,
        Err(err) => return vec![config_failure(path, &err)],
    };
    let mut checks = vec![ok(
        "config",
        format!(
            "parses (listen {}, namespace {}, auth mode {:?})",
            config.http.listen, config.bus.namespace, config.auth.mode
        ),
    )];
    if config.auth.auth_key == EXAMPLE_AUTH_KEY {
        checks.push(fail(
            "auth",
            "auth.auth_key is still the example key",
            format!(
                "set auth.auth_key in {} to a secret of your own, e.g. `openssl rand -hex 24`",
                path.display()
            ),
        ));
    }
    checks.push(check_writable_dir(
        "data_dir",
        &config.data_dir,
        "elves-center",
    ));
    checks.push(check_database(&config.database_url(), options.timeout).await);
    checks.push(
        check_brokers(
            &config.bus.url,
            &config.bus.tls(),
            &config.bus.namespace,
            Role::Center,
            options,
        )
        .await,
    );
    let url = options.center_url.clone().unwrap_or_else(|| {
        if config.apps.public_url.is_empty() {
            format!("http://{}", config.http.listen)
        } else {
            config.apps.public_url.clone()
        }
    });
    checks.extend(check_center_http(&url, None, options).await);
    checks
}

/// Every check of an agent's configuration.
pub async fn check_agent(path: &Path, options: &Options) -> Vec<Check> {
    let config = match AgentConfig::load(Some(path), std::env::vars()) {
        Ok(config) => config,
        Err(err) => return vec![config_failure(path, &err)],
    };
    if let Err(err) = config.center.verifier() {
        return vec![config_failure(path, &err)];
    }
    let mut checks = vec![ok(
        "config",
        format!(
            "parses (agent {}, namespace {})",
            config.id, config.bus.namespace
        ),
    )];
    checks.push(check_writable_dir(
        "apps_dir",
        &config.apps_dir,
        "elves-agent",
    ));
    checks.push(check_writable_dir(
        "spool_dir",
        &config.spool_dir,
        "elves-agent",
    ));
    checks.push(
        check_brokers(
            &config.bus.url,
            &config.bus.tls(),
            &config.bus.namespace,
            Role::Agent,
            options,
        )
        .await,
    );
    let url = options.center_url.clone().or_else(|| {
        (!config.center.download_url.is_empty()).then(|| config.center.download_url.clone())
    });
    match url {
        Some(url) => {
            // The single key, or with `[center.keys]` (enrolled agents, rotations) the first.
            let expected = match config.center.keys.iter().next() {
                Some(first) if config.center.public_key.trim().is_empty() => first,
                _ => (&config.center.key_id, &config.center.public_key),
            };
            checks.extend(check_center_http(&url, Some(expected), options).await);
        }
        None => checks.push(skipped(
            "center",
            "clock and public key not checked: no center address (pass --center-url \
             http://<center>:<port>, or set center.download_url)",
        )),
    }
    checks
}

fn config_failure(path: &Path, err: &dyn std::fmt::Display) -> Check {
    let fix = match std::fs::File::open(path) {
        Err(open) if open.kind() == std::io::ErrorKind::NotFound => format!(
            "give the right path; the packages install /etc/elves/center.toml and \
             /etc/elves/agent.toml, examples are in the repository's config/ ({} is missing)",
            path.display()
        ),
        Err(open) if open.kind() == std::io::ErrorKind::PermissionDenied => format!(
            "run as root or as the service's user: {} is readable by them only (it holds \
             credentials)",
            path.display()
        ),
        _ => format!(
            "correct the key named above in {} (or the ELVES_… variable overriding it)",
            path.display()
        ),
    };
    fail("config", format!("{}: {err}", path.display()), fix)
}

/// A directory the service writes to: it must exist (or be creatable) and take a new file.
fn check_writable_dir(name: &'static str, dir: &Path, service_user: &str) -> Check {
    let owner_fix = format!(
        "give it to the service's user: install -d -o {service_user} -g {service_user} -m 0750 {}",
        dir.display()
    );
    if !dir.exists() {
        let parent = dir
            .ancestors()
            .skip(1)
            .find(|ancestor| ancestor.exists())
            .unwrap_or_else(|| Path::new("."));
        return match probe_write(parent) {
            Ok(()) => warn(
                name,
                format!(
                    "{} does not exist yet (the service creates it at start)",
                    dir.display()
                ),
                owner_fix,
            ),
            Err(err) => fail(
                name,
                format!(
                    "{} does not exist and {} is not writable: {err}",
                    dir.display(),
                    parent.display()
                ),
                owner_fix,
            ),
        };
    }
    match probe_write(dir) {
        Ok(()) => ok(name, format!("{} is writable", dir.display())),
        Err(err) => fail(
            name,
            format!("{} is not writable: {err}", dir.display()),
            owner_fix,
        ),
    }
}

fn probe_write(dir: &Path) -> std::io::Result<()> {
    let probe = tempfile::Builder::new()
        .prefix(".elves-doctor-")
        .tempfile_in(dir)?;
    probe.close()
}

/// Reachable with these credentials and migrated; applies nothing.
async fn check_database(url: &str, timeout: Duration) -> Check {
    let shown = without_password(url);
    if let Some(path) = sqlite_path(url) {
        if !Path::new(&path).is_file() {
            return warn(
                "database",
                format!("SQLite file {path} does not exist yet"),
                "start the center once: it creates and migrates it (systemctl start elves-center)",
            );
        }
    }
    let owned_url = url.to_string();
    // libpq may wait minutes for a host that drops packets: the check runs on a thread of its
    // own, which is left behind if it takes longer than the timeout.
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = sender.send(elves_center::store::Store::pending_migrations(&owned_url));
    });
    let database_fix = "check [database] url (ELVES_DATABASE__URL): host, port, database, user \
                        and password; is PostgreSQL running? (`pg_isready -d <url>`)";
    match tokio::time::timeout(timeout, receiver).await {
        Err(_) => fail(
            "database",
            format!(
                "{shown}: no answer within {} s",
                timeout.as_secs_f64().round()
            ),
            database_fix,
        ),
        Ok(Err(_)) => fail("database", format!("{shown}: the check died"), database_fix),
        Ok(Ok(Err(err))) => fail("database", format!("{shown}: {err}"), database_fix),
        Ok(Ok(Ok(pending))) if pending.is_empty() => {
            ok("database", format!("{shown}: reachable, schema up to date"))
        }
        Ok(Ok(Ok(pending))) => fail(
            "database",
            format!(
                "{shown}: not migrated, {} migration(s) pending (first: {})",
                pending.len(),
                pending[0]
            ),
            "start or restart a center of this version on it: it applies the migrations at \
             start (systemctl restart elves-center)",
        ),
    }
}

/// The file of a SQLite database URL, as the center's store reads it.
fn sqlite_path(url: &str) -> Option<String> {
    let url = url.trim();
    match url.strip_prefix("sqlite://") {
        Some(path) => Some(path.to_string()),
        None if url.contains("://") => None,
        None => Some(url.to_string()),
    }
}

/// `url` with its password replaced by `***`, for printing.
fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Center,
    Agent,
}

/// Logs in with the configured URL and looks for the namespace's exchange without declaring it.
/// Every broker of the url's list (a cluster's nodes): the first failure, or all fine.
async fn check_brokers(
    urls: &str,
    tls: &elves_shared::tls::ClientTls,
    namespace: &str,
    role: Role,
    options: &Options,
) -> Check {
    let mut last = None;
    for url in elves_shared::bus::broker_urls(urls) {
        let check = check_broker(url, tls, namespace, role, options).await;
        if matches!(check.outcome, Outcome::Fail { .. }) {
            return check;
        }
        last = Some(check);
    }
    match last {
        Some(check) => check,
        None => check_broker(urls, tls, namespace, role, options).await,
    }
}

async fn check_broker(
    url: &str,
    tls: &elves_shared::tls::ClientTls,
    namespace: &str,
    role: Role,
    options: &Options,
) -> Check {
    let shown = without_password(url);
    if url == "inproc" || url.is_empty() {
        return fail(
            "broker",
            "bus.url is `inproc`: only `elves up` runs center and agent in one process",
            "set [bus] url to the broker, amqp://<user>:<password>@<host>:5672/%2f",
        );
    }
    let properties = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let connection = match tokio::time::timeout(
        options.timeout,
        elves_shared::bus::connect_one(url, tls, properties),
    )
    .await
    {
        Err(_) => {
            return fail(
                "broker",
                format!(
                    "{shown}: no answer within {} s",
                    options.timeout.as_secs_f64().round()
                ),
                "is the host right and the port open on its firewall? (AMQP: 5672)",
            )
        }
        Ok(Err(err)) => {
            let (problem, fix) = broker_error(&err);
            return fail("broker", format!("{shown}: {problem}"), fix);
        }
        Ok(Ok(connection)) => connection,
    };
    let outcome = exchange_check(&connection, &shown, namespace, role).await;
    let _ = connection.close(200, "elves doctor").await;
    outcome
}

async fn exchange_check(
    connection: &lapin::Connection,
    shown: &str,
    namespace: &str,
    role: Role,
) -> Check {
    let channel = match connection.create_channel().await {
        Ok(channel) => channel,
        Err(err) => {
            let (problem, fix) = broker_error(&err);
            return fail("broker", format!("{shown}: {problem}"), fix);
        }
    };
    let passive = lapin::options::ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .exchange_declare(
            namespace,
            lapin::ExchangeKind::Topic,
            passive,
            lapin::types::FieldTable::default(),
        )
        .await;
    match (declared, role) {
        (Ok(()), _) => ok(
            "broker",
            format!("{shown}: logged in, exchange {namespace} exists"),
        ),
        (Err(_), Role::Center) => ok(
            "broker",
            format!("{shown}: logged in (exchange {namespace} is declared at the center's start)"),
        ),
        (Err(err), Role::Agent) => warn(
            "broker",
            format!("{shown}: logged in, but exchange {namespace} does not exist: {err}"),
            "no center has started with this namespace on this broker yet: start the center, \
             and check that [bus] namespace is the same in both configurations",
        ),
    }
}

/// What a failed broker login means and what to do about it.
fn broker_error(err: &dyn std::fmt::Display) -> (String, String) {
    let text = err.to_string();
    let fix = if text.contains("ACCESS_REFUSED") || text.contains("ACCESSREFUSED") {
        "the broker refused the user or password in [bus] url (ELVES_BUS__URL): check them \
         with `rabbitmqctl authenticate_user <user> <password>`"
    } else if text.contains("NOT_ALLOWED") || text.contains("NOTALLOWED") {
        "the vhost in [bus] url does not exist or the user may not use it: \
         `rabbitmqctl set_permissions -p <vhost> <user> '.*' '.*' '.*'` (or the agent's narrower \
         rights)"
    } else if text.contains("onnection refused") {
        "nothing listens at that host and port: start RabbitMQ (systemctl start \
         rabbitmq-server) or correct the port in [bus] url"
    } else if text.contains("ailed to lookup") || text.contains("resolve") {
        "the broker's host name does not resolve: correct the host in [bus] url"
    } else {
        "check [bus] url: amqp://<user>:<password>@<host>:<port>/<vhost>"
    };
    (text, fix.to_string())
}

/// The running center: it answers, it is connected to its broker, its clock agrees with this
/// host's, and (for an agent) it signs with the key the agent trusts.
async fn check_center_http(
    url: &str,
    expected_key: Option<(&String, &String)>,
    options: &Options,
) -> Vec<Check> {
    let healthz = format!("{}/healthz", url.trim_end_matches('/'));
    let client = match reqwest::Client::builder().timeout(options.timeout).build() {
        Ok(client) => client,
        Err(err) => return vec![fail("center", format!("HTTP client: {err}"), "report this")],
    };
    let sent = SystemTime::now();
    let response = match client.get(&healthz).send().await {
        Ok(response) => response,
        Err(err) => {
            let fix = if expected_key.is_some() {
                "is the center running, and is this address reachable from here? \
                 (--center-url, center.download_url)"
            } else {
                "is the center running? systemctl start elves-center; journalctl -u elves-center"
            };
            return vec![fail(
                "center",
                format!("{healthz}: {}", error_chain(&err)),
                fix,
            )];
        }
    };
    let received = SystemTime::now();
    let date = response
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    let mut checks = Vec::new();
    let state = body["status"].as_str().unwrap_or("unknown").to_string();
    if status.is_success() {
        checks.push(ok("center", format!("{healthz}: {state}")));
    } else {
        // A center waiting for its broker says why in `broker.last_error`.
        let reason = body["broker"]["last_error"]
            .as_str()
            .map(|error| format!(" (broker: {error})"))
            .unwrap_or_default();
        checks.push(fail(
            "center",
            format!("{healthz}: HTTP {status}, status {state}{reason}"),
            "the center runs but is not ready: journalctl -u elves-center says why (a center \
             waiting for the broker shows the broker's error above)",
        ));
    }
    checks.push(match date {
        Some(date) => clock_check(&date, sent, received, options.max_clock_skew),
        None => skipped("clock", "the center's answer has no Date header"),
    });
    if let Some((key_id, public_key)) = expected_key {
        checks.push(key_check(&body, key_id, public_key));
    }
    checks
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The center's clock against this host's, from the answer's Date header (whole seconds),
/// compared with the middle of the request.
pub fn clock_check(
    date_header: &str,
    sent: SystemTime,
    received: SystemTime,
    max_skew: Duration,
) -> Check {
    let Ok(center_time) = chrono::DateTime::parse_from_rfc2822(date_header) else {
        return skipped("clock", format!("unreadable Date header {date_header:?}"));
    };
    let round_trip = received.duration_since(sent).unwrap_or_default();
    let local_mid = chrono::DateTime::<chrono::Utc>::from(sent + round_trip / 2);
    let skew_ms = center_time
        .with_timezone(&chrono::Utc)
        .signed_duration_since(local_mid)
        .num_milliseconds();
    // The header lags the center's clock by 0 to 1.5 s (whole seconds, cut off, from a cache
    // actix-web refreshes every 500 ms): the middle of that is the best guess.
    let skew_s = ((skew_ms + 750) as f64 / 1000.0).round() as i64;
    let limit = i64::try_from(max_skew.as_secs()).unwrap_or(i64::MAX);
    let description = match skew_s {
        -1..=1 => "in step with the center (to the second its Date header tells)".to_string(),
        s if s > 0 => format!("{s} s behind the center (±1 s)"),
        s => format!("{} s ahead of the center (±1 s)", -s),
    };
    if skew_s.abs() > limit {
        fail(
            "clock",
            format!("this host is {description}, more than {limit} s"),
            "synchronise both clocks (timedatectl set-ntp true, or chrony): signed calls are \
             refused outside auth.timestamp_window_s and instructions carry deadlines",
        )
    } else {
        ok("clock", description)
    }
}

/// The agent's configured key among the keys the center says it signs with.
fn key_check(healthz: &serde_json::Value, key_id: &str, public_key: &str) -> Check {
    let Some(keys) = healthz["instruction_keys"].as_array() else {
        return skipped(
            "key",
            "the center's /healthz lists no instruction keys (an older center)",
        );
    };
    let configured = public_key.trim().to_ascii_lowercase();
    let listed: Vec<(String, String)> = keys
        .iter()
        .map(|key| {
            (
                key["key_id"].as_str().unwrap_or_default().to_string(),
                key["public_key"]
                    .as_str()
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
            )
        })
        .collect();
    if listed
        .iter()
        .any(|(id, key)| id == key_id && *key == configured)
    {
        return ok(
            "key",
            format!("center.public_key matches the center's key {key_id:?}"),
        );
    }
    let fix = match listed.iter().find(|(id, _)| id == key_id) {
        Some((id, key)) => format!(
            "set center.public_key = \"{key}\" (key id {id:?}) in the agent's configuration, \
             if that center is the one to trust"
        ),
        None => format!(
            "the center signs as {}: set center.key_id and center.public_key to one of them",
            listed
                .iter()
                .map(|(id, key)| format!("{id:?} = {key}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    fail(
        "key",
        format!(
            "center.public_key ({key_id:?} = {configured}) is not a key the center signs with: \
             every instruction would be refused"
        ),
        fix,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_in_step_passes_and_a_skewed_one_fails() {
        // 2026-12-06 05:00:00 UTC
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_533_200);
        let header = "Sun, 06 Dec 2026 05:00:00 GMT";
        let limit = Duration::from_secs(5);
        let check = |local: SystemTime| clock_check(header, local, local, limit);
        // The center's clock read 05:00:00.x when it answered: in step at 05:00:00.4 here.
        let in_step = check(now + Duration::from_millis(400));
        assert!(matches!(in_step.outcome, Outcome::Ok(_)), "{in_step}");
        let slightly_behind = check(now - Duration::from_secs(4));
        assert!(
            matches!(slightly_behind.outcome, Outcome::Ok(_)),
            "{slightly_behind}"
        );
        let behind = check(now - Duration::from_secs(30));
        assert!(
            matches!(&behind.outcome, Outcome::Fail { problem, .. } if problem.contains("31 s behind")),
            "{behind}"
        );
        let ahead = check(now + Duration::from_secs(8));
        assert!(
            matches!(&ahead.outcome, Outcome::Fail { problem, .. } if problem.contains("7 s ahead")),
            "{ahead}"
        );
    }

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            without_password("amqp://agent:s3cret@broker:5672/%2f"),
            "amqp://agent:***@broker:5672/%2f"
        );
        assert_eq!(
            without_password("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
    }
}
