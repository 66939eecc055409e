//! 1,000 RT calls at once to one agent (issue 16): what the burst costs the center in threads
//! and memory, and the latency the callers see. Not a test: it prints figures.
//!
//! A release `elves-center` and `elves-agent` over RabbitMQ; the calls are the no-op worker,
//! all sent at once, answered in the order the agent runs them. The center's thread count and
//! RSS are sampled every 10 ms through the burst.
//!
//! Run: `cargo build --release -p elves-center -p elves-agent && cargo bench --bench
//! rt_burst`. `ELVES_BENCH_CALLS` sets the count of calls (default 1,000).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::release_pair::ReleasePair;
use support::{elapsed_ms, Summary};

fn main() {
    if support::listing_only() {
        return;
    }
    let calls = support::env_count("ELVES_BENCH_CALLS", 1_000);
    let runtime = support::runtime(2);
    runtime.block_on(burst(&support::amqp_url(), calls));
}

async fn burst(amqp: &str, calls: usize) {
    let Some(pair) = ReleasePair::start("rt burst", amqp, "burst-agent", |_| {}).await else {
        return;
    };
    let api = pair.api.clone();
    let mut quiet = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        api.ok(
            "rt/exec",
            &[("ip", "burst-agent"), ("app", "noop"), ("func", "run")],
        )
        .await;
        quiet.push(elapsed_ms(started));
    }
    let pid = pair.center.pid();
    let idle_threads = support::status_kib(pid, "Threads:").unwrap_or(0);
    let idle_rss = support::status_kib(pid, "VmRSS:").unwrap_or(0);

    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let (mut threads, mut rss) = (0, 0);
            while sampling.load(Ordering::Relaxed) {
                threads = threads.max(support::status_kib(pid, "Threads:").unwrap_or(0));
                rss = rss.max(support::status_kib(pid, "VmRSS:").unwrap_or(0));
                std::thread::sleep(Duration::from_millis(10));
            }
            (threads, rss)
        })
    };
    let started = Instant::now();
    let burst: Vec<_> = (0..calls)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move {
                let asked = Instant::now();
                let answer = api
                    .call(
                        "rt/exec",
                        &[("ip", "burst-agent"), ("app", "noop"), ("func", "run")],
                    )
                    .await;
                (answer["flag"] == "true", elapsed_ms(asked))
            })
        })
        .collect();
    let (mut answered, mut latencies) = (0, Vec::with_capacity(calls));
    for call in burst {
        let (ok, took) = call.await.expect("a call");
        answered += usize::from(ok);
        latencies.push(took);
    }
    let wall = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let (peak_threads, peak_rss) = sampler.join().expect("sampler");
    let (quiet, loaded) = (Summary::of(&quiet), Summary::of(&latencies));
    println!(
        "rt burst: {calls} calls at once, {answered} answered ok in {:.1} s ({:.0} calls/s)",
        wall.as_secs_f64(),
        calls as f64 / wall.as_secs_f64()
    );
    println!(
        "  latency: p50 {:.1} ms, p99 {:.1} ms (one at a time before it: p50 {:.2} ms, p99 {:.2} ms)",
        loaded.p50, loaded.p99, quiet.p50, quiet.p99
    );
    println!(
        "  center threads: idle {idle_threads}, peak {peak_threads}; RSS idle {idle_rss} KiB, \
         peak {peak_rss} KiB"
    );
    pair.stop().await;
}
