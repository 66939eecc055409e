//! The elves agent as a library: the binary in `main.rs` only loads the configuration and
//! calls into it, and tests use the same code.
//!
//! `exec` runs child processes within limits; `worker` speaks the ELVES worker protocol on
//! top of it.
//! `config` loads the agent's settings, `guard` decides whether an instruction may run (with
//! `done_journal` remembering, across restarts, which tasks already ran),
//! `spool` keeps results on disk while the bus is away, `result_batcher` packs the results
//! ready at once into one `center.result` message, `stats` counts what happened, and
//! `app_scan` lists the installed apps for the heartbeat, `installer` applies the center's app
//! sets, and `runtime` ties them to the bus: it is the agent's one entry point, [`run`].
//! `service` runs it as a process does (`elves-agent`, `elves agent`).

pub mod app_scan;
pub mod config;
pub mod done_journal;
pub mod exec;
pub mod guard;
pub mod installer;
pub mod local_cron;
pub mod output;
pub mod processor;
pub mod result_batcher;
pub mod runtime;
pub mod service;
pub mod spool;
pub mod stats;
pub mod worker;

pub use config::AgentConfig;
pub use runtime::run;
pub use stats::AgentStats;
