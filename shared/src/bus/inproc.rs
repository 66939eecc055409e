//! The in-process bus: the embedded default of `elves up` and of most tests.
//!
//! It keeps the RabbitMQ semantics that the rest of the code relies on (routing by key,
//! unroutable publishes fail, bounded prefetch, requeue) but holds messages only in memory:
//! it is for one process on one machine, so there is no broker to restart.

use super::{Bus, BusError, BusMessage, Consumer, Delivery, Destination, QueueSpec, Settle};
use async_trait::async_trait;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, Notify};

#[derive(Default)]
struct Queue {
    messages: Mutex<VecDeque<BusMessage>>,
    ready: Notify,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<BusMessage>> {
        // A poisoned lock only means another thread panicked while pushing; the deque is intact.
        self.messages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push_back(&self, message: BusMessage) {
        self.lock().push_back(message);
        self.ready.notify_one();
    }

    fn push_front(&self, message: BusMessage) {
        self.lock().push_front(message);
        self.ready.notify_one();
    }

    async fn pop(&self) -> BusMessage {
        loop {
            let notified = self.ready.notified();
            if let Some(message) = self.lock().pop_front() {
                return message;
            }
            notified.await;
        }
    }
}

#[derive(Default)]
struct Broker {
    queues: BTreeMap<String, Arc<Queue>>,
    /// routing key → names of the queues bound to it.
    bindings: BTreeMap<String, Vec<String>>,
}

pub struct InProcBus {
    namespace: String,
    broker: Arc<Mutex<Broker>>,
}

/// Puts an unprocessed message back at the head of its queue.
pub(crate) struct Requeue {
    queue: Arc<Queue>,
}

impl Requeue {
    pub(crate) fn put_back(self, message: BusMessage) {
        self.queue.push_front(message);
    }
}

impl InProcBus {
    pub fn new(namespace: &str) -> Self {
        InProcBus {
            namespace: namespace.to_string(),
            broker: Arc::new(Mutex::new(Broker::default())),
        }
    }

    fn broker(&self) -> MutexGuard<'_, Broker> {
        lock_broker(&self.broker)
    }

    fn declare_now(&self, spec: &QueueSpec) -> Arc<Queue> {
        let mut broker = self.broker();
        let queue = broker.queues.entry(spec.name.clone()).or_default().clone();
        for key in &spec.bindings {
            let bound = broker.bindings.entry(key.clone()).or_default();
            if !bound.contains(&spec.name) {
                bound.push(spec.name.clone());
            }
        }
        queue
    }
}

#[async_trait]
impl Bus for InProcBus {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    async fn declare(&self, spec: &QueueSpec) -> Result<(), BusError> {
        self.declare_now(spec);
        Ok(())
    }

    async fn publish(
        &self,
        destination: &Destination,
        message: BusMessage,
    ) -> Result<(), BusError> {
        let targets: Vec<Arc<Queue>> = {
            let broker = self.broker();
            match destination {
                Destination::Topic(key) => broker
                    .bindings
                    .get(key)
                    .into_iter()
                    .flatten()
                    .filter_map(|name| broker.queues.get(name).cloned())
                    .collect(),
                Destination::Queue(name) => broker.queues.get(name).cloned().into_iter().collect(),
            }
        };
        let Some((last, others)) = targets.split_last() else {
            let name = match destination {
                Destination::Topic(key) | Destination::Queue(key) => key.clone(),
            };
            return Err(BusError::Unroutable(name));
        };
        for queue in others {
            queue.push_back(message.clone());
        }
        last.push_back(message);
        Ok(())
    }

    async fn consume(&self, spec: QueueSpec, prefetch: u16) -> Result<Consumer, BusError> {
        let queue = self.declare_now(&spec);
        let (sender, receiver) = mpsc::channel(usize::from(prefetch.max(1)));
        let broker = self.broker.clone();
        // The pump moves messages into the consumer's bounded channel, which is what bounds
        // the number of unsettled messages, as prefetch does on RabbitMQ.
        tokio::spawn(async move {
            loop {
                let Ok(permit) = sender.reserve().await else {
                    break;
                };
                let message = tokio::select! {
                    message = queue.pop() => message,
                    _ = sender.closed() => break,
                };
                let requeue = Requeue {
                    queue: queue.clone(),
                };
                permit.send(Delivery::new(message, false, Settle::InProc(requeue)));
            }
            if !spec.durable {
                // A private queue disappears with its consumer, as an exclusive RabbitMQ queue does.
                forget(&broker, &spec.name);
            }
        });
        Ok(Consumer::new(receiver))
    }
}

fn lock_broker(broker: &Mutex<Broker>) -> MutexGuard<'_, Broker> {
    broker
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn forget(broker: &Mutex<Broker>, name: &str) {
    let mut broker = lock_broker(broker);
    broker.queues.remove(name);
    for bound in broker.bindings.values_mut() {
        bound.retain(|queue_name| queue_name != name);
    }
}
