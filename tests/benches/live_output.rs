//! Live output (SPEC §12): what streaming a worker's output costs (not a test: it prints
//! figures).
//!
//! 1. RT p50 of a quiet worker (the no-op worker, one line of output) through an agent that
//!    streams output and through one that does not (`exec.output_live = false`), calls
//!    interleaved one for one, over the in-process bus and over RabbitMQ.
//! 2. A worker writing 4 GiB to stdout as fast as it can, on `elves-agent` and `elves-center`
//!    processes over RabbitMQ (release builds, `scripts/bench` makes them): their RSS idle and
//!    at peak while it runs (sampled every 20 ms, and VmHWM), and the RT p50 of the no-op
//!    worker on the same agent idle and while the writer runs.
//!
//! Run: `cargo build --release -p elves-center -p elves-agent && cargo bench --bench
//! live_output`. `ELVES_BENCH_CALLS` sets the count of calls per series (default 200).

mod support;

use elves_shared::wire::AgentId;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use support::release_pair::ReleasePair;
use support::{elapsed_ms, Api, InProcessAgent, Summary};

/// 4 GiB rather than the 1 GB: written as fast as it can, 1 GiB is over in less than
/// half a second, too short for the calls measured alongside it.
const FLOOD_WORKER: &str = "#!/bin/sh\ndd if=/dev/zero bs=4096 count=1048576 2>/dev/null\n\
    printf '<ElvesWFlag>true</ElvesWFlag><ElvesWResult>flooded</ElvesWResult>'\n";

fn main() {
    if support::listing_only() {
        return;
    }
    let calls = support::env_count("ELVES_BENCH_CALLS", 200);
    let amqp = support::amqp_url();
    let runtime = support::runtime(2);
    for bus in ["inproc", amqp.as_str()] {
        runtime.block_on(streaming_overhead(bus, calls));
    }
    runtime.block_on(gigabyte_writer(&amqp, calls));
}

fn install_flood_app(apps_dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let app_dir = apps_dir.join("flood");
    std::fs::create_dir_all(&app_dir).expect("app dir");
    let worker = app_dir.join("app-worker");
    std::fs::write(&worker, FLOOD_WORKER).expect("worker file");
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).expect("worker mode");
}

async fn noop_call(api: &Api, agent: &str) -> f64 {
    let started = Instant::now();
    let result = api
        .ok(
            "rt/exec",
            &[("ip", agent), ("app", "noop"), ("func", "run")],
        )
        .await;
    assert_eq!(result["worker_flag"], "1", "{result}");
    elapsed_ms(started)
}

async fn streaming_overhead(bus_url: &str, calls: usize) {
    let label = if bus_url == "inproc" {
        "in-process bus"
    } else {
        "RabbitMQ"
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let namespace = support::namespace("elves-bench-live");
    let bus = elves_shared::bus::open(bus_url, &namespace).expect("bus");
    let mut env = support::center_env(dir.path(), &namespace);
    env.push(("ELVES_BUS__URL".to_string(), bus_url.to_string()));
    let center = tokio::task::block_in_place(|| {
        support::start_center(support::center_config(env), bus.clone())
    });
    let apps_dir = dir.path().join("apps");
    support::install_noop_app(&apps_dir);
    let mut agents = Vec::new();
    let mut ids = Vec::new();
    for (name, live) in [("live", true), ("off", false)] {
        let id = AgentId::parse(name).expect("agent id");
        let mut config = support::agent_config(
            &id,
            apps_dir.clone(),
            dir.path().join(format!("spool-{name}")),
            1_000,
            &center.key_id,
            &center.public_key_hex,
        );
        config.bus.url = bus_url.to_string();
        config.bus.namespace = namespace.clone();
        config.exec.output_live = live;
        // The in-process bus is one per process: the agents share the center's.
        let agent_bus = if bus_url == "inproc" {
            bus.clone()
        } else {
            elves_shared::bus::open(bus_url, &namespace).expect("agent bus")
        };
        agents.push(InProcessAgent::spawn(config, agent_bus));
        ids.push(id);
    }
    let api = Api::new(format!("http://{}", center.http_addr));
    support::wait_answering(&api, &["live", "off"]).await;
    for _ in 0..20 {
        noop_call(&api, "live").await;
        noop_call(&api, "off").await;
    }
    let (mut live, mut off) = (Vec::new(), Vec::new());
    for _ in 0..calls {
        live.push(noop_call(&api, "live").await);
        off.push(noop_call(&api, "off").await);
    }
    let (live, off) = (Summary::of(&live), Summary::of(&off));
    println!(
        "rt p50 of a quiet worker, {label}: streaming {:.2} ms, not streaming {:.2} ms \
         ({:+.1} %); p99 {:.2} / {:.2} ms; {} calls each",
        live.p50,
        off.p50,
        (live.p50 / off.p50 - 1.0) * 100.0,
        live.p99,
        off.p99,
        live.count
    );
    support::stop_agents(agents).await;
    tokio::task::block_in_place(|| center.stop());
    if bus_url != "inproc" {
        support::delete_broker_objects(bus_url, &namespace, &ids).await;
    }
}

async fn gigabyte_writer(amqp: &str, calls: usize) {
    let Some(pair) =
        ReleasePair::start("4 GiB writer", amqp, "flood-agent", install_flood_app).await
    else {
        return;
    };
    let (api, agents) = (&pair.api, &pair.agents);
    let mut idle = Vec::new();
    for _ in 0..calls {
        idle.push(noop_call(api, "flood-agent").await);
    }
    let (center_pid, agent_idle) = (pair.center.pid(), agents.rss());
    let center_idle = support::status_kib(center_pid, "VmRSS:").unwrap_or(0);

    // Sampled from before the call, so that a writer faster than the first look is caught.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let agent_pid = agents.pids()[0];
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let (mut agent_peak, mut center_peak) = (0, 0);
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                agent_peak = agent_peak.max(support::status_kib(agent_pid, "VmRSS:").unwrap_or(0));
                center_peak =
                    center_peak.max(support::status_kib(center_pid, "VmRSS:").unwrap_or(0));
                std::thread::sleep(Duration::from_millis(10));
            }
            (agent_peak, center_peak)
        })
    };
    let started = Instant::now();
    let flood = {
        let api = api.clone();
        tokio::spawn(async move {
            api.ok(
                "rt/exec",
                &[
                    ("ip", "flood-agent"),
                    ("app", "flood"),
                    ("func", "run"),
                    ("timeout", "600"),
                ],
            )
            .await
        })
    };
    // No-op calls on the same agent, one after another, for as long as the writer runs.
    let mut busy = Vec::new();
    while !flood.is_finished() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the writer never ended"
        );
        let took = noop_call(api, "flood-agent").await;
        if !flood.is_finished() {
            busy.push(took);
        }
    }
    let answer = flood.await.expect("the writer's call");
    let task_id = answer["id"].as_str().expect("a task id").to_string();
    let result = answer;
    let wrote_in = started.elapsed();
    // Until the agent's last output message (the end of the stream) is stored.
    let mut output = Value::Null;
    for _ in 0..100 {
        output = api
            .ok("task/output", &[("id", &task_id), ("offset", "0")])
            .await;
        if output["truncated"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let (agent_peak, center_peak) = sampler.join().expect("sampler");
    let agent_after = agents.rss();
    if result["worker_flag"] != "1" {
        println!("4 GiB writer: the writer's result: {result}");
    }
    println!(
        "4 GiB writer: {} bytes of worker_message in {:.1} s, worker_flag {}, output truncated {}",
        result["worker_message"].as_str().map_or(0, str::len),
        wrote_in.as_secs_f64(),
        result["worker_flag"],
        output["truncated"]
    );
    println!(
        "  agent RSS: idle {} KiB, peak sampled {} KiB (+{} KiB), VmHWM {} KiB",
        agent_idle.rss_kib,
        agent_peak,
        agent_peak.saturating_sub(agent_idle.rss_kib),
        agent_after.peaks_kib
    );
    println!(
        "  center RSS: idle {center_idle} KiB, peak sampled {center_peak} KiB (+{} KiB), VmHWM {} KiB",
        center_peak.saturating_sub(center_idle),
        support::status_kib(center_pid, "VmHWM:").unwrap_or(0)
    );
    let (idle, busy) = (Summary::of(&idle), Summary::of(&busy));
    println!(
        "  rt p50 of the no-op worker on the same agent: idle {:.2} ms, while the writer runs \
         {:.2} ms ({} calls); p99 {:.2} / {:.2} ms",
        idle.p50, busy.p50, busy.count, idle.p99, busy.p99
    );
    pair.stop().await;
}
