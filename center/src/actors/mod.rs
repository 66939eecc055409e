//! The center's actors. `root` starts and supervises the others; see ARCHITECTURE.md.

pub mod app_store;
pub mod batch;
pub mod cron;
pub mod heartbeat;
pub mod inventory;
pub mod output;
pub mod root;
pub mod scheduler;
pub mod task_queue;
