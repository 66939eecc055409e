//! The center's actors. `root` starts and supervises the others; see ARCHITECTURE.md.

pub mod heartbeat;
pub mod root;
pub mod scheduler;
pub mod task_queue;
