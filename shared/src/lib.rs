//! Everything that both the center and the agent must agree on:
//! the wire types and their MessagePack codec, API request signing,
//! instruction signing, app packages (zip rules), and the `Bus` with its RabbitMQ and in-process implementations.
//!
//! Nothing here knows about actors, HTTP or databases.

pub mod bus;
pub mod config;
pub mod crypto;
pub mod logging;
pub mod names;
pub mod package;
pub mod quartz;
pub mod sign;
#[cfg(feature = "sim")]
pub mod sim;
pub mod target;
pub mod time;
pub mod tls;
pub mod wire;
