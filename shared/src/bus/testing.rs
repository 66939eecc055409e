//! Buses for tests of code that must survive a broker outage. Other crates' tests reach it
//! through the `testing` feature; not compiled into a production build.

use super::{Bus, BusError, BusMessage, Consumer, Destination, InProcBus, QueueSpec};
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, Ordering};

/// The in-process bus, except that publishes fail with [`BusError::Unavailable`] while it is
/// down, as they do while RabbitMQ restarts. Declares and consumers are unaffected.
pub struct PublishOutageBus {
    inner: InProcBus,
    down: AtomicBool,
}

impl PublishOutageBus {
    pub fn new(namespace: &str, down: bool) -> Self {
        PublishOutageBus {
            inner: InProcBus::new(namespace),
            down: AtomicBool::new(down),
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

#[async_trait]
impl Bus for PublishOutageBus {
    fn namespace(&self) -> &str {
        self.inner.namespace()
    }

    async fn declare(&self, spec: &QueueSpec) -> Result<(), BusError> {
        self.inner.declare(spec).await
    }

    async fn publish(
        &self,
        destination: &Destination,
        message: BusMessage,
    ) -> Result<(), BusError> {
        if self.down.load(Ordering::SeqCst) {
            Err(BusError::Unavailable("broker down".into()))
        } else {
            self.inner.publish(destination, message).await
        }
    }

    async fn consume(&self, spec: QueueSpec, prefetch: u16) -> Result<Consumer, BusError> {
        self.inner.consume(spec, prefetch).await
    }
}

/// Removes what a test or bench run left on a shared RabbitMQ: the durable queues of the
/// center and of `agents`, and the namespace's exchange, so that repeated runs do not pile them
/// up. Best effort: a queue declared under another name stays.
pub async fn delete_namespace(amqp_url: &str, namespace: &str, agents: &[String]) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let properties = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let Ok(connection) = lapin::Connection::connect(amqp_url, properties).await else {
        log::warn!("could not connect to clean up namespace {namespace}");
        return;
    };
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    let mut queues: Vec<String> = [
        "center.result",
        "center.heartbeat",
        "center.submit",
        "center.output",
    ]
    .iter()
    .map(|suffix| format!("{namespace}.{suffix}"))
    .collect();
    queues.extend(agents.iter().map(|id| format!("{namespace}.agent.{id}")));
    for queue in &queues {
        let _ = channel
            .queue_delete(queue, QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(namespace, ExchangeDeleteOptions::default())
        .await;
    let _ = connection.close(200, "clean-up done").await;
}
