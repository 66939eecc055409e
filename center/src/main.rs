//! `elves-center --config config/center.toml`: the distributed deployment's center.

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "the elves center")]
struct Args {
    #[arg(long, default_value = "config/center.toml")]
    config: PathBuf,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(err) = run(Args::parse()) {
        eprintln!("elves-center: {err:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let config = elves_center::config::CenterConfig::load(Some(&args.config))?;
    let bus = elves_shared::bus::open(&config.bus.url, &config.bus.namespace)?;
    let listener = std::net::TcpListener::bind(&config.http.listen)
        .with_context(|| format!("binding http.listen {}", config.http.listen))?;
    let center = elves_center::start(config, listener, bus)?;
    eprintln!("elves-center: listening on http://{}", center.http_addr);
    eprintln!(
        "elves-center: instruction key {} {}",
        center.key_id, center.public_key_hex
    );
    let stop = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the signal runtime")?;
    stop.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    center.stop();
    Ok(())
}
