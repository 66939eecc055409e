//! The one path every task takes to an agent, whichever actor sends it: RT calls (Scheduler),
//! queue tasks (TaskQueue) and cron firings (Cron).
//!
//! - [`instruction`]: the [`Instruction`](elves_shared::wire::Instruction) built from a stored
//!   task, and its deadline;
//! - [`message`]: MessagePack, the Ed25519 signature over the exact body bytes and the key id;
//!   one instruction per message or several for one agent packed into one;
//! - [`publish`]: onto the agent's queue, and the undelivered result (410.1) of a task whose
//!   publish failed;
//! - [`submit_reply`]: the answer to a producer that submitted a task over the bus;
//! - [`keyring`]: the keys the center signs with, and their rotation.
//!
//! It sits below the actors and above the store: it knows the wire, the bus and the store's
//! row types, never an actor or a handler.

pub mod instruction;
pub mod keyring;
pub mod message;
pub mod publish;
pub mod sender;
pub mod submit_reply;

pub use instruction::{deadline, instruction};
pub use message::{cancel_message, pack_per_agent, rt_message, signed_message, Outbound};
pub use publish::{publish, publish_outbound, undelivered, Sent};
