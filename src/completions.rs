//! Shell completions and man pages, generated from the command's own clap definitions so that
//! they always match it: `elves completions <shell>` prints a script, `elves man --out-dir <dir>`
//! writes `elves.1` and one page per subcommand (`elves-doctor.1`, …). The packages ship both.

use anyhow::Context as _;
use clap::Args;
use std::io::Write as _;
use std::path::PathBuf;

#[derive(Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Where to write the pages (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
}

/// Prints the completion script for `args.shell` to standard output.
pub fn completions(args: CompletionsArgs, mut command: clap::Command) -> anyhow::Result<()> {
    let name = command.get_name().to_string();
    // Generated into memory first: clap_complete panics on a failed write (a closed pipe),
    // a write of our own reports it.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    std::io::stdout()
        .lock()
        .write_all(&script)
        .context("writing the completion script")
}

/// Writes the man pages of `command` and every subcommand into `args.out_dir`.
pub fn man(args: ManArgs, command: clap::Command) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    clap_mangen::generate_to(command, &args.out_dir)
        .with_context(|| format!("writing man pages into {}", args.out_dir.display()))?;
    println!("man pages written to {}", args.out_dir.display());
    Ok(())
}
