//! BatchRunner: moves batches along (SPEC §12). Every tick, and at once when asked, it takes
//! each active batch one step ([`Store::advance_batch`]): agents whose task settled get their
//! state, the failure threshold is checked, and the agents the rollout allows now are released
//! into the batch's queue, where TaskQueue claims and sends them like any queue task.
//!
//! It keeps no batch state of its own: the database is the source of truth, so a restarted
//! actor (or center) carries on where the stored state says, and the tasks already released
//! are TaskQueue's to send again after a restart (agents drop ids they have seen).

use crate::metrics::Metrics;
use crate::store::blocking::blocking;
use crate::store::{BatchState, BatchStep, Store};
use actix::prelude::*;
use elves_shared::time::now_unix_ms;
use std::sync::Arc;
use std::time::Duration;

/// Take every active batch a step now (after a create, a stop or a retry).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AdvanceBatches;

#[derive(Message)]
#[rtype(result = "()")]
struct AdvanceDone;

#[derive(Message)]
#[rtype(result = "BatchRunnerState")]
pub struct GetState;

#[derive(Debug, Clone, MessageResponse, serde::Serialize)]
pub struct BatchRunnerState {
    pub advancing: bool,
}

/// Told when agents were released, so that their tasks are claimed now rather than at the
/// next queue tick (Root wires it to TaskQueue).
pub type WakeDispatch = Arc<dyn Fn() + Send + Sync>;

/// Whether `agent` is online at `now`, given its stored `(last_heartbeat_at, interval_ms)`
/// when it has a row: the Heartbeat registry's rule and memory, handed over by Root.
pub type OnlineRule = Arc<dyn Fn(&str, Option<(u64, u64)>, u64) -> bool + Send + Sync>;

pub struct BatchRunner {
    store: Store,
    metrics: Arc<Metrics>,
    wake_dispatch: WakeDispatch,
    tick: Duration,
    online: OnlineRule,
    advancing: bool,
    advance_again: bool,
}

impl BatchRunner {
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        wake_dispatch: WakeDispatch,
        tick: Duration,
        online: OnlineRule,
    ) -> Self {
        BatchRunner {
            store,
            metrics,
            wake_dispatch,
            tick,
            online,
            advancing: false,
            advance_again: false,
        }
    }
}

impl Actor for BatchRunner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.tick, |_, ctx| ctx.notify(AdvanceBatches));
        // Batches that were running when this center stopped go on from their stored state.
        ctx.notify(AdvanceBatches);
    }
}

impl Supervised for BatchRunner {
    fn restarting(&mut self, _: &mut Context<Self>) {
        log::warn!("batch runner: restarting; state is in the database");
        self.advancing = false;
        self.advance_again = false;
    }
}

impl Handler<AdvanceBatches> for BatchRunner {
    type Result = ();

    fn handle(&mut self, _: AdvanceBatches, ctx: &mut Context<Self>) {
        if self.advancing {
            self.advance_again = true;
            return;
        }
        self.advancing = true;
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let wake_dispatch = self.wake_dispatch.clone();
        let online = self.online.clone();
        let me = ctx.address();
        actix_rt::spawn(async move {
            match blocking(move || advance_all(&store, &online)).await {
                Ok(steps) => {
                    let mut released = 0;
                    for step in &steps {
                        note_step(&metrics, step);
                        released += step.released;
                    }
                    if released > 0 {
                        wake_dispatch();
                    }
                }
                Err(err) => log::error!("batch runner: advancing batches: {err}"),
            }
            me.do_send(AdvanceDone);
        });
    }
}

impl Handler<AdvanceDone> for BatchRunner {
    type Result = ();

    fn handle(&mut self, _: AdvanceDone, ctx: &mut Context<Self>) {
        self.advancing = false;
        if std::mem::take(&mut self.advance_again) {
            ctx.notify(AdvanceBatches);
        }
    }
}

impl Handler<GetState> for BatchRunner {
    type Result = BatchRunnerState;

    fn handle(&mut self, _: GetState, _: &mut Context<Self>) -> BatchRunnerState {
        BatchRunnerState {
            advancing: self.advancing,
        }
    }
}

/// One step of every active batch. A batch whose step fails is logged and retried next tick;
/// the others go on.
fn advance_all(
    store: &Store,
    online: &OnlineRule,
) -> Result<Vec<BatchStep>, crate::store::StoreError> {
    let now = now_unix_ms();
    let online = |agent: &str, stored: Option<(u64, u64)>| online(agent, stored, now);
    let mut steps = Vec::new();
    for id in store.active_batch_ids()? {
        match store.advance_batch(&id, now, &online) {
            Ok(step) => {
                if let Some(ended) = step.ended {
                    log::info!("batch {id}: {ended}");
                }
                steps.push(step);
            }
            Err(err) => log::error!("batch {id}: step failed, will retry: {err}"),
        }
    }
    Ok(steps)
}

fn note_step(metrics: &Metrics, step: &BatchStep) {
    for state in &step.settled {
        metrics.record_batch_agents(state.as_str(), 1);
    }
    metrics.record_batch_agents("offline", u64::try_from(step.offline).unwrap_or(0));
    if let Some(ended) = step.ended {
        metrics.record_batch_end(match ended {
            BatchState::Running => "running",
            BatchState::Finished => "finished",
            BatchState::Stopped => "stopped",
        });
    }
}
