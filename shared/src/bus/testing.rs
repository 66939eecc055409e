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
