//! Integration tests: a real center, real agents and real HTTP calls, over the in-process bus
//! and over RabbitMQ (`ELVES_TEST_AMQP_URL`). One binary, one module per area.

// A failed unwrap is how a test reports an unexpected error.
#![allow(clippy::unwrap_used)]

mod app_rerelease;
mod apps_lifecycle;
mod batch;
mod broker_wait;
mod bus;
mod cluster;
mod cron;
mod cron_signal;
mod doctor;
mod durability;
mod enroll;
mod env_vars;
mod faults;
mod fleet_sim;
mod harness;
mod key_rotation;
mod openapi;
mod output;
mod packaging;
mod python_sdk;
mod queue;
mod queue_batch;
mod rt;
mod tls;
mod ui;
mod up;
mod validation_order;
