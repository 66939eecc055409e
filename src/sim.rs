//! `elves sim`: a fleet of simulated agents (`elves_shared::sim`) against a running center,
//! to see what a fleet of thousands costs without thousands of hosts. Each agent has its own
//! id, queue and heartbeat, checks the center's signature on every instruction and answers
//! with real result messages; nothing is run. It prints how many agents are connected until
//! the run time is over or Ctrl-C.

use anyhow::{bail, Context as _};
use clap::Args;
use elves_shared::sim::{self, Away, RunTime, SimConfig, SimFleet};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct SimArgs {
    /// How many agents.
    #[arg(short = 'n', long, default_value_t = 100)]
    agents: usize,
    /// Agent ids are `<prefix>-<n>`; the ip each reports is its id.
    #[arg(long, default_value = "sim")]
    id_prefix: String,
    /// The center's bus.
    #[arg(
        long,
        env = "ELVES_SIM_BUS_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    bus_url: String,
    /// With an `amqps://` bus: the CA certificates (PEM) the broker's certificate must chain
    /// to (default: the system's).
    #[arg(long, env = "ELVES_SIM_BUS_TLS_CA")]
    bus_tls_ca: Option<PathBuf>,
    /// With an `amqps://` bus: a client certificate (PEM) to present, with --bus-tls-key.
    #[arg(long, env = "ELVES_SIM_BUS_TLS_CERT", requires = "bus_tls_key")]
    bus_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --bus-tls-cert.
    #[arg(long, env = "ELVES_SIM_BUS_TLS_KEY", requires = "bus_tls_cert")]
    bus_tls_key: Option<PathBuf>,
    /// The bus namespace of the center (`[bus] namespace`).
    #[arg(long, default_value = "elves")]
    namespace: String,
    /// The center's instruction key as it prints it at start-up, `<key id> <public key hex>`:
    /// instructions signed with anything else are refused.
    #[arg(long, env = "ELVES_SIM_CENTER_KEY")]
    center_key: String,
    /// Heartbeat interval of every agent, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    heartbeat_ms: u64,
    /// Task run time in milliseconds: `50` (fixed), `10..200` (uniform), `exp:50`
    /// (exponential, mean 50).
    #[arg(long, default_value = "0")]
    run_time: RunTime,
    /// Share of results that report failure, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    failure_rate: f64,
    /// Share of agents that go away now and then and come back, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    away_fraction: f64,
    /// How long such an agent stays between absences (±50 %), in milliseconds.
    #[arg(long, default_value_t = 120_000)]
    away_online_ms: u64,
    /// How long each absence lasts, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    away_offline_ms: u64,
    /// A label every agent reports, `key=value` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// An app every agent reports as installed, `name=version` (repeatable; default
    /// `noop=1`).
    #[arg(long = "app", value_name = "NAME=VERSION")]
    apps: Vec<String>,
    /// Agents start spread over this many milliseconds.
    #[arg(long, default_value_t = 0)]
    start_jitter_ms: u64,
    /// Agents sharing one broker connection.
    #[arg(long, default_value_t = 10)]
    agents_per_connection: usize,
    /// Unacked deliveries per agent.
    #[arg(long, default_value_t = 64)]
    prefetch: u16,
    /// Stop after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    duration_s: u64,
    /// Print the counts this often, in seconds.
    #[arg(long, default_value_t = 5)]
    report_every_s: u64,
}

pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let config = config_of(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(simulate(config, &args))
}

fn config_of(args: &SimArgs) -> anyhow::Result<SimConfig> {
    if args.agents == 0 {
        bail!("--agents must be at least 1");
    }
    for (name, rate) in [
        ("--failure-rate", args.failure_rate),
        ("--away-fraction", args.away_fraction),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            bail!("{name} must be between 0 and 1, got {rate}");
        }
    }
    if args.heartbeat_ms == 0 {
        bail!("--heartbeat-ms must be at least 1");
    }
    let Some((key_id, public_key)) = args.center_key.split_once(' ') else {
        bail!("--center-key must be `<key id> <public key hex>`, as the center prints it");
    };
    let agents = sim::agent_ids(&args.id_prefix, args.agents)
        .with_context(|| format!("--id-prefix {:?}", args.id_prefix))?;
    let mut config = SimConfig::new(
        &args.bus_url,
        &args.namespace,
        key_id.trim(),
        public_key.trim(),
        agents,
    );
    config.bus_tls = elves_shared::tls::ClientTls {
        ca: args.bus_tls_ca.clone(),
        cert: args.bus_tls_cert.clone(),
        key: args.bus_tls_key.clone(),
    };
    config.heartbeat_interval_ms = args.heartbeat_ms;
    config.run_time = args.run_time;
    config.failure_rate = args.failure_rate;
    config.away = (args.away_fraction > 0.0).then_some(Away {
        fraction: args.away_fraction,
        online_ms: args.away_online_ms,
        offline_ms: args.away_offline_ms,
    });
    config.labels = pairs("--label", &args.labels, |key, value| {
        elves_shared::names::is_valid_label(key) && elves_shared::names::is_valid_label(value)
    })?;
    if !args.apps.is_empty() {
        config.apps = pairs("--app", &args.apps, |name, version| {
            elves_shared::names::is_valid_name(name)
                && elves_shared::names::is_valid_version(version)
        })?;
    }
    config.start_jitter_ms = args.start_jitter_ms;
    config.agents_per_connection = args.agents_per_connection.max(1);
    config.prefetch = args.prefetch.max(1);
    Ok(config)
}

/// `key=value` texts as a map; each pair must pass `valid`.
fn pairs(
    flag: &str,
    texts: &[String],
    valid: impl Fn(&str, &str) -> bool,
) -> anyhow::Result<BTreeMap<String, String>> {
    texts
        .iter()
        .map(|text| match text.split_once('=') {
            Some((key, value)) if valid(key, value) => Ok((key.to_string(), value.to_string())),
            _ => bail!("{flag} {text:?}: expected key=value of the allowed characters"),
        })
        .collect()
}

async fn simulate(config: SimConfig, args: &SimArgs) -> anyhow::Result<()> {
    let total = config.agents.len() as u64;
    let started = Instant::now();
    let fleet = SimFleet::start(config).context("starting the simulated agents")?;
    let counters = fleet.counters();
    println!(
        "elves sim: {total} agents {}-… on {} (namespace {}), heartbeat {} ms",
        args.id_prefix, args.bus_url, args.namespace, args.heartbeat_ms
    );
    let deadline = (args.duration_s > 0).then(|| started + Duration::from_secs(args.duration_s));
    let mut ticker = tokio::time::interval(Duration::from_secs(args.report_every_s.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut all_connected_reported = false;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = &mut interrupted => break,
            _ = ticker.tick() => {}
        }
        let connected = counters.connected();
        if !all_connected_reported && connected + counters.away() >= total {
            println!(
                "all {total} agents connected after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            all_connected_reported = true;
        }
        println!(
            "connected {connected}/{total} (away {}), results {} ({} failed), refused {}, duplicates {}",
            counters.away(),
            counters.published(),
            counters.failed(),
            counters.refused(),
            counters.duplicates()
        );
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            break;
        }
    }
    fleet.stop().await;
    println!(
        "stopped after {:.1} s: results {} ({} failed), refused {}, duplicates {}",
        started.elapsed().as_secs_f64(),
        counters.published(),
        counters.failed(),
        counters.refused(),
        counters.duplicates()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<SimConfig> {
        let mut all = vec!["sim", "--center-key", "center 00"];
        all.extend_from_slice(args);
        config_of(&Command::try_parse_from(all)?.sim)
    }

    #[test]
    fn flags_make_the_fleet() {
        let config = parse(&[
            "-n",
            "12",
            "--id-prefix",
            "rack7",
            "--label",
            "zone=eu-1",
            "--app",
            "disk=2.0",
            "--run-time",
            "10..20",
            "--failure-rate",
            "0.1",
            "--away-fraction",
            "0.25",
        ])
        .unwrap();
        assert_eq!(config.agents.len(), 12);
        assert_eq!(config.agents[0].as_str(), "rack7-01");
        assert_eq!(config.center_key_id, "center");
        assert_eq!(config.labels["zone"], "eu-1");
        assert_eq!(config.apps.len(), 1);
        assert_eq!(config.apps["disk"], "2.0");
        assert_eq!(
            config.run_time,
            RunTime::Uniform {
                min_ms: 10,
                max_ms: 20
            }
        );
        assert_eq!(config.away.map(|away| away.fraction), Some(0.25));
    }

    #[test]
    fn tls_flags_make_the_bus_tls_and_a_certificate_needs_its_key() {
        let config = parse(&[
            "--bus-url",
            "amqps://broker:5671/%2f",
            "--bus-tls-ca",
            "ca.pem",
            "--bus-tls-cert",
            "sim.pem",
            "--bus-tls-key",
            "sim.key",
        ])
        .unwrap();
        assert_eq!(config.bus_tls.ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(config.bus_tls.cert, Some(PathBuf::from("sim.pem")));
        assert_eq!(config.bus_tls.key, Some(PathBuf::from("sim.key")));
        let err = parse(&["--bus-tls-cert", "sim.pem"]).unwrap_err();
        assert!(format!("{err:#}").contains("--bus-tls-key"), "{err:#}");
    }

    #[test]
    fn bad_flags_are_refused_with_their_name() {
        for (args, named) in [
            (vec!["--label", "zone=eu 1"], "--label"),
            (vec!["--app", "disk"], "--app"),
            (vec!["--failure-rate", "2"], "--failure-rate"),
            (vec!["-n", "0"], "--agents"),
            (vec!["--id-prefix", "a b"], "--id-prefix"),
        ] {
            let err = parse(&args).unwrap_err();
            assert!(format!("{err:#}").contains(named), "{args:?}: {err:#}");
        }
        let no_key = Command::try_parse_from(["sim", "--center-key", "just-an-id"]).unwrap();
        assert!(config_of(&no_key.sim).is_err());
    }
}
