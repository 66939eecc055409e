//! `elves keys`: the center's instruction signing keys. `elves keys list` shows them;
//! `elves keys rotate` walks a rotation one step per call, none of which stops a task:
//! `add <id>` (a new key beside the old one), `use <id>` (sign with it), `retire <id>` (drop
//! the old one). Without a step it shows where the rotation stands and the next step.

use crate::client::Connection;
use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Every key with its state: staged, signing, trusted, retired.
    List(Connection),
    /// One step of a key rotation; without a step, where it stands and what comes next.
    Rotate {
        #[command(subcommand)]
        step: Option<RotateStep>,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Subcommand)]
enum RotateStep {
    /// Make a new key <id> beside the others; agents must trust it before `use`.
    Add {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Sign with <id> from now on; the previous key stays trusted.
    Use {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Stop trusting <id>; instructions signed with it are refused by agents that dropped it.
    Retire {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
}

pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    match args.command {
        KeysCommand::List(connection) => {
            let result = call(&connection, "keys/list", None)?;
            print_keys(&result["keys"]);
            Ok(())
        }
        KeysCommand::Rotate {
            step: None,
            connection,
        } => {
            let result = call(&connection, "keys/list", None)?;
            print_keys(&result["keys"]);
            println!();
            println!("{}", next_step(&result["keys"]));
            Ok(())
        }
        KeysCommand::Rotate {
            step: Some(step), ..
        } => {
            let (endpoint, id, connection) = match step {
                RotateStep::Add { id, connection } => ("keys/add", id, connection),
                RotateStep::Use { id, connection } => ("keys/use", id, connection),
                RotateStep::Retire { id, connection } => ("keys/retire", id, connection),
            };
            let result = call(&connection, endpoint, Some(&id))?;
            print_keys(&result["keys"]);
            println!();
            println!("{}", next_step(&result["keys"]));
            Ok(())
        }
    }
}

fn call(connection: &Connection, endpoint: &str, id: Option<&str>) -> anyhow::Result<Value> {
    let client = connection.client()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let params = id
        .map(|id| vec![("id".to_string(), id.to_string())])
        .unwrap_or_default();
    runtime.block_on(client.call_ok(endpoint, params))
}

fn print_keys(keys: &Value) {
    for key in keys.as_array().into_iter().flatten() {
        println!(
            "{:<8} {:<20} {}",
            key["state"].as_str().unwrap_or("?"),
            key["key_id"].as_str().unwrap_or("?"),
            key["public_key"].as_str().unwrap_or("?")
        );
    }
}

/// What the operator does next, from the keys' states.
fn next_step(keys: &Value) -> String {
    let with = |state: &str| -> Vec<String> {
        keys.as_array()
            .into_iter()
            .flatten()
            .filter(|key| key["state"] == state)
            .filter_map(|key| key["key_id"].as_str().map(str::to_string))
            .collect()
    };
    let (staged, trusted) = (with("staged"), with("trusted"));
    let trust_lines = keys
        .as_array()
        .into_iter()
        .flatten()
        .filter(|key| key["state"] != "retired")
        .map(|key| {
            format!(
                "  {} = \"{}\"",
                key["key_id"].as_str().unwrap_or("?"),
                key["public_key"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    if let Some(id) = staged.first() {
        format!(
            "next: give every agent the trusted keys under [center.keys] and send it SIGHUP\n\
             (new agents get them from `elves agent enroll`):\n[center.keys]\n{trust_lines}\n\
             then: elves keys rotate use {id}"
        )
    } else if let Some(id) = trusted.first() {
        format!(
            "next, once nothing signed with {id} is waiting any more (the longest task \
             deadline):\n  elves keys rotate retire {id}\nthen drop {id} from the agents' \
             [center.keys] and send them SIGHUP"
        )
    } else {
        "no rotation under way; start one with: elves keys rotate add <new key id>".to_string()
    }
}
