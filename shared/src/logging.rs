//! Process-wide logging set-up shared by `elves`, `elves-center` and `elves-agent`.

/// Starts `env_logger` with `RUST_LOG` (default `info`).
///
/// lapin's `tracing` spans reach `log` as ERROR records reading only `io_loop;` on every
/// connection: they are noise that looks like a failure, so they are silenced whatever
/// `RUST_LOG` says (lapin's real errors come through its own targets).
pub fn init() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .filter_module("tracing::span", log::LevelFilter::Off)
        .init();
}
