//! OutputKeeper: stores the live output agents send on `center.output` (SPEC §12) and deletes
//! it after the retention time.
//!
//! Any center consumes the shared queue and stores what it takes; readers (`task/output`,
//! `task/follow`) read the database, so a follower on one center sees output another stored.
//! [`OutputSignal`] wakes this center's followers as soon as something is stored here; followers
//! also look again every few hundred milliseconds for what other centers stored.

use crate::config::OutputConfig;
use crate::store::blocking::blocking;
use crate::store::{OutputBounds, Store};
use actix::prelude::*;
use elves_shared::bus::{Consumer, Delivery};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{self, kind, OutputBatch, OutputChunk};
use std::sync::Arc;
use std::time::Duration;

/// Output messages stored in one transaction at most.
const OUTPUT_BATCH: usize = 64;

/// Output bytes stored in one transaction at most: small messages of many agents go in one
/// commit, large ones one by one, so that a batch never holds much more than one message.
const OUTPUT_BATCH_BYTES: usize = 512 * 1024;

/// Wakes the followers of this center when output was stored.
pub type OutputSignal = Arc<tokio::sync::Notify>;

/// The bounds the center keeps per task and stream: the head and the tail, half each.
pub fn bounds(config: &OutputConfig) -> OutputBounds {
    let head_bytes = config.max_bytes_per_stream / 2;
    OutputBounds {
        head_bytes,
        tail_bytes: config.max_bytes_per_stream - head_bytes,
    }
}

pub struct OutputKeeper {
    store: Store,
    config: OutputConfig,
    signal: OutputSignal,
}

impl OutputKeeper {
    pub fn new(store: Store, config: OutputConfig, signal: OutputSignal) -> Self {
        OutputKeeper {
            store,
            config,
            signal,
        }
    }
}

impl Actor for OutputKeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let sweep = Duration::from_millis(self.config.sweep_ms);
        ctx.run_interval(sweep, |keeper, _| {
            let store = keeper.store.clone();
            let retention_ms = keeper.config.retention_s.saturating_mul(1000);
            actix_rt::spawn(async move {
                let cutoff = now_unix_ms().saturating_sub(retention_ms);
                match blocking(move || store.delete_output_before(cutoff)).await {
                    Ok(0) => {}
                    Ok(n_rows) => log::info!("output: {n_rows} chunk(s) past retention deleted"),
                    Err(err) => log::warn!("output: retention sweep failed: {err}"),
                }
            });
        });
    }
}

impl Supervised for OutputKeeper {}

/// Chunks to store; answers once they are committed.
#[derive(Message)]
#[rtype(result = "Result<usize, crate::store::StoreError>")]
pub struct OutputReceived(pub Vec<OutputChunk>);

impl Handler<OutputReceived> for OutputKeeper {
    type Result = ResponseFuture<Result<usize, crate::store::StoreError>>;

    fn handle(&mut self, msg: OutputReceived, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let bounds = bounds(&self.config);
        let signal = self.signal.clone();
        Box::pin(async move {
            let n_stored =
                blocking(move || store.store_output(&msg.0, bounds, now_unix_ms())).await?;
            signal.notify_waiters();
            Ok(n_stored)
        })
    }
}

/// Feeds OutputKeeper from `center.output`, whatever has arrived at once as one batch; each
/// message is acked once stored. Output is a live view: a batch the store refuses is dropped
/// (logged), not retried, so that the queue never backs up behind a broken database row.
pub async fn feed(mut consumer: Consumer, keeper: Addr<OutputKeeper>, agent_accounts: bool) {
    while let Some(first) = consumer.next().await {
        let mut deliveries = Vec::with_capacity(OUTPUT_BATCH);
        let mut chunks = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(mut delivery) = next {
            match decode(&mut delivery, agent_accounts) {
                Some(batch) => {
                    bytes += batch.chunks.iter().map(|c| c.data.len()).sum::<usize>();
                    chunks.extend(batch.chunks);
                    deliveries.push(delivery);
                }
                None => delivery.reject().await,
            }
            next = if deliveries.len() < OUTPUT_BATCH && bytes < OUTPUT_BATCH_BYTES {
                consumer.try_next()
            } else {
                None
            };
        }
        if chunks.is_empty() {
            for delivery in deliveries {
                delivery.ack().await;
            }
            continue;
        }
        match keeper.send(OutputReceived(chunks)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => log::warn!("output: {} message(s) not stored: {err}", deliveries.len()),
            Err(err) => log::warn!("output: keeper unreachable: {err}"),
        }
        for delivery in deliveries {
            delivery.ack().await;
        }
    }
}

/// The body is taken out of the delivery (kept only to be acked), so that a batch holds its
/// output once, decoded, not twice.
fn decode(delivery: &mut Delivery, agent_accounts: bool) -> Option<OutputBatch> {
    let body = std::mem::take(&mut delivery.message.body);
    let message = &delivery.message;
    if message.kind != kind::OUTPUT {
        log::warn!("output queue: dropped message of kind {:?}", message.kind);
        return None;
    }
    let batch = match wire::decode::<OutputBatch>(&body) {
        Ok(batch) => batch,
        Err(err) => {
            log::warn!("output queue: dropped undecodable message: {err}");
            return None;
        }
    };
    // With broker accounts per agent, an agent speaks only for itself.
    if agent_accounts && message.user_id.as_deref() != Some(batch.agent.as_str()) {
        log::warn!(
            "output queue: dropped output of agent {} published by {:?}",
            batch.agent,
            message.user_id
        );
        return None;
    }
    Some(batch)
}
