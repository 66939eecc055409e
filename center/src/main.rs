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
    elves_shared::logging::init();
    let args = Args::parse();
    if let Err(err) = elves_center::run_until_signal(&args.config) {
        eprintln!("elves-center: {err:#}");
        std::process::exit(1);
    }
}
