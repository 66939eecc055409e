//! Root: the supervisor of the center's actors.
//!
//! It starts the bus consumers' queues first, then Heartbeat and Scheduler under actix
//! `Supervisor`s (an actor that stops is rebuilt through `restarting()` with the same address,
//! so nobody holding an `Addr` notices), then feeds them from the bus.
//! Queue and Cron will be started here as their siblings.
//! Shutdown runs in reverse: consumers stop first (their deliveries go back to the broker),
//! then the actors with the actix system.

use super::heartbeat::{Heartbeat, HeartbeatReceived};
use super::scheduler::{ReplyReceived, Scheduler};
use crate::config::CenterConfig;
use crate::metrics::Metrics;
use actix::prelude::*;
use elves_shared::bus::{Consumer, QueueSpec, SharedBus};
use elves_shared::crypto::InstructionSigner;
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{self, kind, routing, Heartbeat as HeartbeatMessage, JobResult, TaskId};
use std::sync::Arc;

/// Unsettled deliveries per consumer; bounds memory when a burst arrives.
const PREFETCH: u16 = 256;

/// The addresses of the supervised actors, handed to the HTTP API.
#[derive(Clone)]
pub struct Children {
    pub heartbeat: Addr<Heartbeat>,
    pub scheduler: Addr<Scheduler>,
}

pub struct Root {
    children: Children,
}

impl Actor for Root {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        log::info!("root: stopped");
    }
}

#[derive(Message)]
#[rtype(result = "Children")]
pub struct GetChildren;

impl Handler<GetChildren> for Root {
    type Result = MessageResult<GetChildren>;

    fn handle(&mut self, _: GetChildren, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.children.clone())
    }
}

impl Root {
    /// Starts every actor and consumer; returns once the center can take traffic.
    /// Must run inside the actix system.
    pub async fn start(
        config: &CenterConfig,
        bus: SharedBus,
        signer: Arc<InstructionSigner>,
        metrics: Arc<Metrics>,
    ) -> Result<Addr<Root>, elves_shared::bus::BusError> {
        // Each center instance has its own reply queue so that an RT result comes back to the
        // center whose caller is waiting, even when several centers share one broker.
        let instance = TaskId::random();
        let reply_queue = bus.queue_name(&format!("center.reply.{instance}"));
        let replies = bus
            .consume(
                QueueSpec {
                    name: reply_queue.clone(),
                    bindings: Vec::new(),
                    durable: false,
                },
                PREFETCH,
            )
            .await?;
        let heartbeats = bus
            .consume(
                QueueSpec {
                    name: bus.queue_name("center.heartbeat"),
                    bindings: vec![routing::CENTER_HEARTBEAT.to_string()],
                    durable: true,
                },
                PREFETCH,
            )
            .await?;

        let missed_beats = config.heartbeat.offline_after_missed_beats;
        let heartbeat = Supervisor::start(move |_| Heartbeat::new(missed_beats));
        let rt = config.rt.clone();
        let scheduler_bus = bus.clone();
        let scheduler = Supervisor::start(move |_| {
            Scheduler::new(scheduler_bus, signer, reply_queue, rt, metrics)
        });

        actix_rt::spawn(feed_heartbeats(heartbeats, heartbeat.clone()));
        actix_rt::spawn(feed_replies(replies, scheduler.clone()));

        let children = Children {
            heartbeat,
            scheduler,
        };
        Ok(Root { children }.start())
    }
}

async fn feed_heartbeats(mut consumer: Consumer, heartbeat: Addr<Heartbeat>) {
    while let Some(delivery) = consumer.next().await {
        let message = &delivery.message;
        if message.kind != kind::HEARTBEAT {
            log::warn!(
                "heartbeat queue: dropped message of kind {:?}",
                message.kind
            );
            delivery.reject().await;
            continue;
        }
        match wire::decode::<HeartbeatMessage>(&message.body) {
            Ok(decoded) => {
                heartbeat.do_send(HeartbeatReceived {
                    heartbeat: decoded,
                    received_at: now_unix_ms(),
                });
                delivery.ack().await;
            }
            Err(err) => {
                log::warn!("heartbeat queue: dropped undecodable message: {err}");
                delivery.reject().await;
            }
        }
    }
}

async fn feed_replies(mut consumer: Consumer, scheduler: Addr<Scheduler>) {
    while let Some(delivery) = consumer.next().await {
        let message = &delivery.message;
        match wire::decode::<JobResult>(&message.body) {
            Ok(result) if message.kind == kind::RESULT => {
                scheduler.do_send(ReplyReceived(result));
                delivery.ack().await;
            }
            Ok(_) => {
                log::warn!("reply queue: dropped message of kind {:?}", message.kind);
                delivery.reject().await;
            }
            Err(err) => {
                log::warn!("reply queue: dropped undecodable message: {err}");
                delivery.reject().await;
            }
        }
    }
}
