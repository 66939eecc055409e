//! The RabbitMQ bus on the real broker, for what the tests through a center cannot see.

use crate::harness::amqp_url;
use elves_shared::bus::{self, BusMessage, Destination, QueueSpec};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_and_persistent_messages_reach_the_broker_as_such() {
    let namespace = format!("elves-test-bus-{:08x}", rand::random::<u32>());
    let bus = bus::open(&amqp_url(), &namespace).unwrap();
    let spec = QueueSpec {
        name: bus.queue_name("probe"),
        bindings: vec!["probe".to_string()],
        durable: false,
    };
    let mut consumer = bus.consume(spec, 10).await.unwrap();
    for (id, transient) in [("kept", false), ("memory-only", true)] {
        let mut message = BusMessage::msgpack("probe", id.as_bytes().to_vec());
        message.message_id = Some(id.to_string());
        message.transient = transient;
        let destination = Destination::Topic("probe".to_string());
        bus.publish(&destination, message).await.unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..2 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("delivery within 10 s")
            .expect("consumer open");
        seen.push((
            delivery.message.message_id.clone().unwrap_or_default(),
            delivery.message.transient,
        ));
        delivery.ack().await;
    }
    assert_eq!(
        seen,
        [
            ("kept".to_string(), false),
            ("memory-only".to_string(), true)
        ]
    );
    bus.close().await;
}
