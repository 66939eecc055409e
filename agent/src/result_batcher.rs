//! Results for `center.result`, several to a message when several are ready at once.
//!
//! Every message costs the broker a publish, a persist, a confirm, a delivery and an ack,
//! whatever its size: on a busy agent those per-message costs, not the bytes, are what the
//! broker spends its time on. One publisher task sends whatever results are waiting as one
//! [`ResultBatch`]; while that message waits for its publisher confirm, the results that
//! finish meanwhile gather for the next one. A lone result goes out at once, alone, in the
//! plain single-result form, so that a quiet agent adds no latency.

use crate::spool::Outgoing;
use elves_shared::bus::{BusError, BusMessage, Destination, SharedBus};
use elves_shared::wire::{self, routing, JobResult, ResultBatch};
use tokio::sync::{mpsc, oneshot};

/// At most this many results go in one message.
const MAX_RESULTS_PER_MESSAGE: usize = 256;
/// A message stops taking results once about this many bytes of them are in; a larger single
/// result still goes, alone.
const MAX_BYTES_PER_MESSAGE: usize = 1 << 20;
/// A result's fields besides its texts, in MessagePack, generously.
const RESULT_OVERHEAD_BYTES: usize = 256;

struct Waiting {
    outgoing: Outgoing,
    published: oneshot::Sender<Result<(), BusError>>,
}

/// The agent's one way to publish a result to `center.result`.
pub struct ResultBatcher {
    waiting: mpsc::UnboundedSender<Waiting>,
}

impl ResultBatcher {
    /// Starts the publisher task on the current runtime. It ends once every handle is dropped
    /// and what was handed to it is published.
    pub fn start(bus: SharedBus) -> Self {
        let (waiting, queue) = mpsc::unbounded_channel();
        tokio::spawn(publish_batches(bus, queue));
        ResultBatcher { waiting }
    }

    /// Publishes `outgoing`'s result to `center.result` (whatever its destination says),
    /// perhaps in one message with others; returns once the broker confirmed that message (or
    /// refused it).
    pub async fn publish(&self, outgoing: Outgoing) -> Result<(), BusError> {
        let (published, confirmed) = oneshot::channel();
        let stopped = || BusError::Unavailable("the result publisher has stopped".to_string());
        self.waiting
            .send(Waiting {
                outgoing,
                published,
            })
            .map_err(|_| stopped())?;
        confirmed.await.unwrap_or_else(|_| Err(stopped()))
    }
}

async fn publish_batches(bus: SharedBus, mut queue: mpsc::UnboundedReceiver<Waiting>) {
    let destination = Destination::Topic(routing::CENTER_RESULT.to_string());
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match queue.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut batch = vec![first];
        let mut bytes = size_of(&batch[0].outgoing.result);
        while batch.len() < MAX_RESULTS_PER_MESSAGE && bytes < MAX_BYTES_PER_MESSAGE {
            let Ok(next) = queue.try_recv() else { break };
            let next_bytes = size_of(&next.outgoing.result);
            if bytes + next_bytes > MAX_BYTES_PER_MESSAGE {
                carried = Some(next);
                break;
            }
            bytes += next_bytes;
            batch.push(next);
        }
        let outcome = bus.publish(&destination, message_of(&batch)).await;
        for waiting in batch {
            // A receiver that is gone belonged to a task that was dropped at shutdown.
            let _ = waiting.published.send(outcome.clone());
        }
    }
}

fn size_of(result: &JobResult) -> usize {
    RESULT_OVERHEAD_BYTES
        + result.worker_message.len()
        + result.error.len()
        + result.app.len()
        + result.func.len()
}

fn message_of(batch: &[Waiting]) -> BusMessage {
    if let [only] = batch {
        return only.outgoing.message();
    }
    let results = ResultBatch {
        results: batch
            .iter()
            .map(|waiting| waiting.outgoing.result.clone())
            .collect(),
    };
    BusMessage::msgpack(wire::kind::RESULTS, wire::encode(&results))
}

#[cfg(test)]
mod tests {
    use super::*;
    use elves_shared::bus::{Bus, InProcBus, QueueSpec};
    use elves_shared::wire::{AgentId, Mode, TaskId, TaskType};
    use std::sync::Arc;

    fn result(n: usize, message_bytes: usize) -> JobResult {
        outgoing(n, message_bytes).result
    }

    fn outgoing(n: usize, message_bytes: usize) -> Outgoing {
        Outgoing {
            destination: Destination::Topic(routing::CENTER_RESULT.to_string()),
            correlation_id: Some(format!("{n:016x}")),
            result: result_only(n, message_bytes),
        }
    }

    fn result_only(n: usize, message_bytes: usize) -> JobResult {
        JobResult {
            id: TaskId::parse(&format!("{n:016x}")).unwrap(),
            agent: AgentId::parse("agent-1").unwrap(),
            task_type: TaskType::Queue,
            mode: Mode::NP,
            app: "apptest".to_string(),
            func: "helloword".to_string(),
            worker_flag: 1,
            worker_message: "x".repeat(message_bytes),
            worker_costtime: 1,
            started_at: 1,
            finished_at: 2,
            error: String::new(),
        }
    }

    async fn center_result_queue(bus: &InProcBus) -> elves_shared::bus::Consumer {
        let spec = QueueSpec {
            name: bus.queue_name("center.result"),
            bindings: vec![routing::CENTER_RESULT.to_string()],
            durable: true,
        };
        bus.consume(spec, 1024).await.unwrap()
    }

    fn results_in(message: &BusMessage) -> Vec<JobResult> {
        match message.kind.as_str() {
            wire::kind::RESULT => vec![wire::decode::<JobResult>(&message.body).unwrap()],
            wire::kind::RESULTS => wire::decode::<ResultBatch>(&message.body).unwrap().results,
            other => panic!("unexpected kind {other}"),
        }
    }

    #[tokio::test]
    async fn a_lone_result_goes_alone_and_results_ready_together_share_messages() {
        let bus = Arc::new(InProcBus::new("batcher"));
        let mut consumer = center_result_queue(&bus).await;
        let batcher = ResultBatcher::start(bus.clone());

        batcher.publish(outgoing(0, 10)).await.unwrap();
        let lone = consumer.next().await.unwrap();
        assert_eq!(lone.message.kind, wire::kind::RESULT);
        assert_eq!(lone.message.message_id.as_deref(), Some("0000000000000000"));
        assert_eq!(
            lone.message.correlation_id.as_deref(),
            Some("0000000000000000")
        );
        assert_eq!(results_in(&lone.message), vec![result(0, 10)]);

        let n = 600;
        let publishes = (1..=n).map(|i| batcher.publish(outgoing(i, 10)));
        for outcome in futures::future::join_all(publishes).await {
            outcome.unwrap();
        }
        let mut received = Vec::new();
        let mut messages = 0;
        while received.len() < n {
            let delivery = consumer.next().await.unwrap();
            let results = results_in(&delivery.message);
            assert!(results.len() <= MAX_RESULTS_PER_MESSAGE);
            received.extend(results);
            messages += 1;
        }
        let expected: Vec<JobResult> = (1..=n).map(|i| result(i, 10)).collect();
        assert_eq!(received, expected, "every result, once, in order");
        assert!(messages < n / 2, "{n} results took {messages} messages");
        assert!(consumer.try_next().is_none());
    }

    #[tokio::test]
    async fn large_results_are_not_packed_past_the_byte_limit() {
        let bus = Arc::new(InProcBus::new("batcher-bytes"));
        let mut consumer = center_result_queue(&bus).await;
        let batcher = ResultBatcher::start(bus.clone());
        let big = MAX_BYTES_PER_MESSAGE / 2;
        let publishes = (0..4).map(|i| batcher.publish(outgoing(i, big)));
        for outcome in futures::future::join_all(publishes).await {
            outcome.unwrap();
        }
        let mut received = 0;
        while received < 4 {
            let delivery = consumer.next().await.unwrap();
            assert!(delivery.message.body.len() < MAX_BYTES_PER_MESSAGE + 4096);
            received += results_in(&delivery.message).len();
        }
        assert_eq!(received, 4);
    }

    #[tokio::test]
    async fn a_publish_nobody_can_take_fails_for_every_result_it_carried() {
        // No queue is bound to center.result: the bus refuses the message as unroutable.
        let bus = Arc::new(InProcBus::new("batcher-unroutable"));
        let batcher = ResultBatcher::start(bus);
        let publishes = (0..3).map(|i| batcher.publish(outgoing(i, 10)));
        for outcome in futures::future::join_all(publishes).await {
            assert!(
                matches!(outcome, Err(BusError::Unroutable(_))),
                "{outcome:?}"
            );
        }
    }
}
