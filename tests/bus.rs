//! The RabbitMQ bus on the real broker, for what the tests through a center cannot see.

use crate::harness::amqp_url;
use crate::harness::rabbit_node::{free_port, RabbitNode};
use elves_shared::bus::{self, BusMessage, Consumer, Delivery, Destination, QueueSpec};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multiple_ack_settles_the_earlier_deliveries_and_their_own_settling_is_ignored() {
    let namespace = format!("elves-test-bus-{:08x}", rand::random::<u32>());
    let bus = bus::open(&amqp_url(), &namespace).unwrap();
    let spec = QueueSpec {
        name: bus.queue_name("batch"),
        bindings: vec!["batch".to_string()],
        durable: false,
    };
    // A prefetch of 3: the broker sends the 4th message only once some of the first 3 are acked.
    let mut consumer = bus.consume(spec, 3).await.unwrap();
    let destination = Destination::Topic("batch".to_string());
    for number in 1..=7 {
        let mut message = BusMessage::msgpack("batch", vec![number]);
        message.message_id = Some(format!("m{number}"));
        bus.publish(&destination, message).await.unwrap();
    }
    let (first, second, third) = (
        next(&mut consumer).await,
        next(&mut consumer).await,
        next(&mut consumer).await,
    );
    assert_eq!(
        [&first.0, &second.0, &third.0].map(String::as_str),
        ["m1", "m2", "m3"]
    );
    third.2.ack_multiple().await;
    // Covered by the multiple ack: settling them again would name delivery tags the broker no
    // longer knows, and it would close the channel, and with it this auto-deleted queue.
    first.2.ack().await;
    second.2.requeue().await;

    // All 3 prefetch slots are free again: the next 3 arrive, each for the first time.
    let (fourth, fifth, sixth) = (
        next(&mut consumer).await,
        next(&mut consumer).await,
        next(&mut consumer).await,
    );
    assert_eq!(
        [
            (fourth.0.as_str(), fourth.1),
            (fifth.0.as_str(), fifth.1),
            (sixth.0.as_str(), sixth.1)
        ],
        [("m4", false), ("m5", false), ("m6", false)]
    );
    // The channel is still the same one: a requeue comes back at once, redelivered, ahead of
    // m7 and of anything else.
    fifth.2.requeue().await;
    let again = next(&mut consumer).await;
    assert_eq!((again.0.as_str(), again.1), ("m5", true));
    fourth.2.ack().await;
    again.2.ack().await;
    sixth.2.ack().await;
    let last = next(&mut consumer).await;
    assert_eq!((last.0.as_str(), last.1), ("m7", false));
    last.2.ack().await;
    bus.close().await;
}

/// A broker restart costs the bus neither a publish nor its consumer: the first publish after
/// it reconnects and retries, and the consumer reconnects (declaring its queue again) by itself.
/// On a private node, so that the shared broker is not restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_and_consuming_go_on_after_a_broker_restart() {
    let mut node = RabbitNode::start_on(free_port()).await;
    let namespace = format!("elves-test-bus-{:08x}", rand::random::<u32>());
    let bus = bus::open(&node.url(), &namespace).unwrap();
    let spec = QueueSpec {
        name: bus.queue_name("restart"),
        bindings: vec!["restart".to_string()],
        durable: true,
    };
    let mut consumer = bus.consume(spec, 10).await.unwrap();
    let destination = Destination::Topic("restart".to_string());
    let mut before = BusMessage::msgpack("restart", b"before".to_vec());
    before.message_id = Some("before".to_string());
    bus.publish(&destination, before).await.unwrap();
    let (id, _, delivery) = next(&mut consumer).await;
    assert_eq!(id, "before");
    delivery.ack().await;

    node.stop();
    node.start().await;
    let mut after = BusMessage::msgpack("restart", b"after".to_vec());
    after.message_id = Some("after".to_string());
    bus.publish(&destination, after)
        .await
        .expect("the first publish after the restart goes through");
    let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("the consumer is back within 30 s")
        .expect("consumer open");
    assert_eq!(delivery.message.message_id.as_deref(), Some("after"));
    delivery.ack().await;
    bus.close().await;
}

/// The next delivery with its message id and whether it is a redelivery.
async fn next(consumer: &mut Consumer) -> (String, bool, Delivery) {
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("delivery within 10 s")
        .expect("consumer open");
    let id = delivery.message.message_id.clone().unwrap_or_default();
    (id, delivery.redelivered, delivery)
}
