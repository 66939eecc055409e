//! The floor: a bare lapin request/reply on the same broker, with no platform in between. The
//! responder spawns the same worker for each request, as an agent would, and answers with its
//! output; the caller waits for the answer. What any system built on RabbitMQ and a spawned
//! worker must pay at least.

use super::{Drain, RtSamples, Worker};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use std::time::{Duration, Instant};

/// Requests the responder works on at once in the drain, as the brief sets it.
const IN_FLIGHT: u16 = 8;
/// The longest wait for one answer; a lost one fails the run instead of hanging it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The caller's and the responder's connections and the queues of one run.
pub struct Floor {
    caller: Connection,
    responder: Connection,
    caller_channel: Channel,
    replies: Consumer,
    reply_queue: String,
    rt_queue: String,
    drain_queue: String,
    worker: Worker,
}

async fn connect(amqp: &str) -> Connection {
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    Connection::connect(amqp, properties)
        .await
        .expect("the floor connects to RabbitMQ")
}

async fn declare(channel: &Channel, name: &str) {
    channel
        .queue_declare(
            name,
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|err| panic!("declaring {name}: {err}"));
}

impl Floor {
    /// Connects the caller and the responder and declares the run's queues under `namespace`.
    pub async fn start(amqp: &str, namespace: &str, worker: Worker) -> Floor {
        let caller = connect(amqp).await;
        let responder = connect(amqp).await;
        let caller_channel = caller.create_channel().await.expect("caller channel");
        let rt_queue = format!("{namespace}.floor.rt");
        let drain_queue = format!("{namespace}.floor.drain");
        let reply_queue = format!("{namespace}.floor.reply");
        for queue in [&rt_queue, &drain_queue, &reply_queue] {
            declare(&caller_channel, queue).await;
        }
        let replies = caller_channel
            .basic_consume(
                &reply_queue,
                "floor-caller",
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consuming the replies");
        Floor {
            caller,
            responder,
            caller_channel,
            replies,
            reply_queue,
            rt_queue,
            drain_queue,
            worker,
        }
    }

    async fn request(&self, queue: &str, id: usize) {
        let properties = BasicProperties::default()
            .with_reply_to(ShortString::from(self.reply_queue.clone()))
            .with_correlation_id(ShortString::from(id.to_string()));
        self.caller_channel
            .basic_publish("", queue, BasicPublishOptions::default(), b"{}", properties)
            .await
            .expect("publishing a request")
            .await
            .expect("request published");
    }

    async fn answer(&mut self) -> Vec<u8> {
        let delivery = tokio::time::timeout(ANSWER_TIMEOUT, self.replies.next())
            .await
            .expect("the floor's answer within 30 s")
            .expect("the reply consumer is open")
            .expect("a reply delivery");
        delivery.data
    }

    /// Starts a responder on `queue` that works on `in_flight` requests at once; closing its
    /// channel ends it. Without `run_worker` it answers the worker's output at once: the two
    /// broker hops alone.
    async fn respond(&self, queue: &str, in_flight: u16, run_worker: bool) -> Channel {
        let channel = self
            .responder
            .create_channel()
            .await
            .expect("responder channel");
        channel
            .basic_qos(in_flight, BasicQosOptions::default())
            .await
            .expect("responder prefetch");
        let mut requests = channel
            .basic_consume(
                queue,
                "floor-responder",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consuming the requests");
        let (worker, responder) = (self.worker.clone(), channel.clone());
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = requests.next().await {
                let (channel, worker) = (responder.clone(), worker.clone());
                // Each request on its own task: the prefetch bounds how many run at once.
                tokio::spawn(async move {
                    let output = if run_worker {
                        worker.run().await
                    } else {
                        super::WORKER_OUTPUT.to_vec()
                    };
                    let reply_to = delivery
                        .properties
                        .reply_to()
                        .clone()
                        .map(|name| name.to_string())
                        .unwrap_or_default();
                    let mut properties = BasicProperties::default();
                    if let Some(id) = delivery.properties.correlation_id() {
                        properties = properties.with_correlation_id(id.clone());
                    }
                    if let Ok(confirm) = channel
                        .basic_publish(
                            "",
                            &reply_to,
                            BasicPublishOptions::default(),
                            &output,
                            properties,
                        )
                        .await
                    {
                        let _ = confirm.await;
                    }
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                });
            }
        });
        channel
    }

    /// `calls` requests one at a time after `warmup` unmeasured ones; each sample is publish →
    /// answer, in ms.
    pub async fn rt(&mut self, warmup: usize, calls: usize) -> RtSamples {
        self.round_trips(warmup, calls, true).await
    }

    /// As [`Floor::rt`] with a responder that runs nothing: what the two broker hops cost.
    pub async fn bare_round_trips(&mut self, warmup: usize, calls: usize) -> RtSamples {
        self.round_trips(warmup, calls, false).await
    }

    async fn round_trips(&mut self, warmup: usize, calls: usize, run_worker: bool) -> RtSamples {
        let rt_queue = self.rt_queue.clone();
        // The queue is auto-delete: an earlier run's responder took it along when it left.
        declare(&self.caller_channel, &rt_queue).await;
        let responder = self.respond(&rt_queue, 1, run_worker).await;
        let mut samples = Vec::with_capacity(calls);
        for n in 0..warmup + calls {
            let started = Instant::now();
            self.request(&rt_queue, n).await;
            let answer = self.answer().await;
            let elapsed = super::support::elapsed_ms(started);
            assert!(
                Worker::succeeded(&answer),
                "the floor's worker answered {:?}",
                String::from_utf8_lossy(&answer)
            );
            if n >= warmup {
                samples.push(elapsed);
            }
        }
        let _ = responder.close(200, "done").await;
        RtSamples(samples)
    }

    /// `tasks` requests in the queue first, then a responder with [`IN_FLIGHT`] at once: from
    /// its start to the last answer.
    pub async fn drain(&mut self, tasks: usize) -> Drain {
        let drain_queue = self.drain_queue.clone();
        for n in 0..tasks {
            self.request(&drain_queue, n).await;
        }
        let started = Instant::now();
        let responder = self.respond(&drain_queue, IN_FLIGHT, true).await;
        let mut ok = 0;
        for _ in 0..tasks {
            if Worker::succeeded(&self.answer().await) {
                ok += 1;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let _ = responder.close(200, "done").await;
        assert_eq!(ok, tasks, "every floor task succeeded");
        Drain { tasks, seconds }
    }

    /// Deletes the run's queues and closes both connections.
    pub async fn stop(self) {
        for queue in [&self.rt_queue, &self.drain_queue, &self.reply_queue] {
            let _ = self
                .caller_channel
                .queue_delete(queue, QueueDeleteOptions::default())
                .await;
        }
        let _ = self.caller_channel.close(200, "bench done").await;
        let _ = self.responder.close(200, "bench done").await;
        let _ = self.caller.close(200, "bench done").await;
    }
}
