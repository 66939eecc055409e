//! The `elves` command: `elves up` runs a complete system in one process (the embedded default),
//! `elves call` makes a signed v2 API call and prints the JSON answer, `elves queue` runs
//! queues of tasks from a file, `elves sim` runs a fleet of simulated agents.

mod agent_admin;
mod app;
mod call;
mod client;
mod completions;
mod cron;
mod doctor;
mod keys;
mod queue;
mod run;
mod sim;
mod tail;
mod up;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "elves: run apps on managed hosts through one signed API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Center and a local agent in one process: in-process bus, apps from ./apps, HTTP on localhost.
    Up(up::UpArgs),
    /// A center of a distributed deployment (the same as the `elves-center` binary).
    Center {
        #[arg(long, default_value = "config/center.toml")]
        config: std::path::PathBuf,
    },
    /// The agent of a host (the same as the `elves-agent` binary); `elves agent enroll|revoke <id>`.
    Agent(agent_admin::AgentArgs),
    /// The center's signing keys: `elves keys list`, `elves keys rotate [add|use|retire <id>]`.
    Keys(keys::KeysArgs),
    /// Sign and send a v2 API call, e.g. `elves call rt/exec ip=127.0.0.1 app=apptest func=helloword`.
    Call(call::CallArgs),
    /// App packages: `elves app pack <dir>`, `elves app push <zip>`, online, versions, bind…
    App(app::AppArgs),
    /// Auth ids (supervisor mode): `elves auth create|list|revoke|grant|ungrant`.
    Auth(app::AuthArgs),
    /// Center cron definition files: `elves cron reload` (signed call to `cron/reload`).
    Cron(cron::CronArgs),
    /// Queues from a TOML or JSON file of tasks: `elves queue create|add|commit|watch|run`.
    Queue(queue::QueueArgs),
    /// A fleet of simulated agents against a running center: `elves sim -n 2000 --center-key "<id> <hex>"`.
    Sim(sim::SimArgs),
    /// One call over a fleet in batches: `elves run 'role=web' app func --batch 10% --max-fail 5%`.
    Run(Box<run::RunArgs>),
    /// A task's live output until it ends: `elves tail <task_id> [--stream stderr]`.
    Tail(tail::TailArgs),
    /// Checks a deployment from this host and says how to fix what is wrong:
    /// `elves doctor --center /etc/elves/center.toml`, `elves doctor --agent /etc/elves/agent.toml`.
    Doctor(doctor::DoctorArgs),
    /// A completion script for a shell: `elves completions bash > /etc/bash_completion.d/elves`.
    Completions(completions::CompletionsArgs),
    /// The man pages of elves and its subcommands: `elves man --out-dir man/`.
    Man(completions::ManArgs),
}

fn main() {
    elves_shared::logging::init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Up(args) => up::run(args),
        Command::Call(args) => call::run(args),
        Command::App(args) => app::run_app(args),
        Command::Auth(args) => app::run_auth(args),
        Command::Cron(args) => cron::run(args),
        Command::Queue(args) => queue::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Run(args) => run::run(*args),
        Command::Tail(args) => tail::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Completions(args) => completions::completions(args, Cli::command()),
        Command::Man(args) => completions::man(args, Cli::command()),
        Command::Center { config } => elves_center::run_until_signal(&config),
        Command::Agent(args) => agent_admin::run(args),
        Command::Keys(args) => keys::run(args),
    };
    if let Err(err) = outcome {
        eprintln!("elves: {err:#}");
        std::process::exit(1);
    }
}
