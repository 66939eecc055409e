//! The `Bus`: the one interface the center and the agent use to exchange messages.
//!
//! Two implementations: [`RabbitBus`] (RabbitMQ through lapin, for multi-machine deployments)
//! and [`InProcBus`] (the embedded default: one process, no broker).
//! Both follow the same contract so that every integration test can run on either:
//! one topic exchange named after the namespace, queue names prefixed with the namespace,
//! publishes to a routing key nobody listens on fail with [`BusError::Unroutable`],
//! consumers get [`Delivery`]s that they ack only after the effect is stored.

mod inproc;
mod rabbit;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use inproc::InProcBus;
pub use rabbit::RabbitBus;

use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::mpsc;

pub const CONTENT_TYPE_MSGPACK: &str = "application/msgpack";
pub const CONTENT_TYPE_JSON: &str = "application/json";

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("no queue is bound to {0}")]
    Unroutable(String),
    #[error("broker refused the message for {0}")]
    Refused(String),
    /// The broker holds something this process cannot use as it is configured (a queue of
    /// another type): retrying does not help, an operator must act.
    #[error("bus misconfigured: {0}")]
    Misconfigured(String),
}

/// How the center's shared durable queues (see [`QueueSpec::is_center_shared`]) are declared
/// on RabbitMQ; `[bus] queue_type` in the center's config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// On one node. What a single broker needs, and what every queue was declared as before
    /// the setting existed: a queue's type cannot change once declared.
    #[default]
    Classic,
    /// Replicated over the nodes of a cluster (Raft): the queue and what it holds survive the
    /// loss of a minority of them.
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// One message with the AMQP properties the protocol uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusMessage {
    /// AMQP `type`: one of [`crate::wire::kind`].
    pub kind: String,
    pub body: Vec<u8>,
    pub content_type: String,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub timestamp_ms: u64,
    /// Per-message TTL; the broker drops the message after it.
    pub expiration_ms: Option<u64>,
    /// Ed25519 signature of `body`, raw 64 bytes (instructions only).
    pub sig: Option<Vec<u8>>,
    pub key_id: Option<String>,
    /// Kept in the broker's memory only, not written to its disk: for a message that is of no
    /// use after a broker restart, such as an RT instruction, whose caller waits for the reply
    /// on a queue that the restart deletes. Saves the broker's disk write on the way.
    pub transient: bool,
    /// AMQP `user-id`: the broker account that published the message. `RabbitBus` stamps its
    /// own on every message it publishes, and RabbitMQ refuses a message whose user-id is not
    /// the publishing connection's user, so a consumer can trust it names the sender's account
    /// (the in-process bus has no accounts and leaves it empty).
    pub user_id: Option<String>,
}

impl BusMessage {
    /// A MessagePack message of `kind` stamped with the current time.
    pub fn msgpack(kind: &str, body: Vec<u8>) -> Self {
        BusMessage {
            kind: kind.to_string(),
            body,
            content_type: CONTENT_TYPE_MSGPACK.to_string(),
            timestamp_ms: crate::time::now_unix_ms(),
            ..Default::default()
        }
    }

    pub fn is_json(&self) -> bool {
        self.content_type.eq_ignore_ascii_case(CONTENT_TYPE_JSON)
    }
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Through the namespace's topic exchange with this routing key.
    Topic(String),
    /// Straight to a queue by its full name (replies to `reply_to`).
    Queue(String),
}

/// A queue to declare, by full name (see [`Bus::queue_name`]), and the routing keys bound to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub bindings: Vec<String>,
    /// Durable queues outlive their consumers and the broker; the others are private to one
    /// process (exclusive, auto-deleted), like a center's RT reply queue.
    pub durable: bool,
}

impl QueueSpec {
    /// An agent's own durable queue, bound to `agent.<id>`: the agent consumes it, and a host
    /// that starts an agent beside its center (`elves up`) declares it first, so that nothing
    /// sent before the agent consumes is lost.
    ///
    /// A classic queue declared without arguments, on purpose. It outlives its agent (durable,
    /// not auto-deleted), so that work sent while the agent restarts waits for it. A quorum
    /// queue would be a Raft group per agent, far too dear for 10,000 of them. Tuning
    /// (`queue-version` 2, an `expires` that reaps the queues of agents gone for good) belongs
    /// in a broker policy (ARCHITECTURE.md, "Scale"): a policy applies to queues that already
    /// exist, whereas an argument added here would make every redeclaration of an existing
    /// queue fail with PRECONDITION_FAILED and strand the fleet on upgrade.
    pub fn agent(bus: &dyn Bus, agent: &crate::wire::AgentId) -> QueueSpec {
        QueueSpec {
            name: bus.queue_name(&crate::wire::routing::agent(agent)),
            bindings: vec![crate::wire::routing::agent(agent)],
            durable: true,
        }
    }

    /// Whether this is one of the durable queues all centers share (`<namespace>.center.*`:
    /// results, submissions, heartbeats, live output), the queues `[bus] queue_type` applies
    /// to. What they hold is the fleet's work in flight, and a center cannot run without
    /// consuming them, so in a cluster they must outlive any one node. A center's private
    /// reply queue is not durable (and a quorum queue cannot be exclusive); agents' queues are
    /// not the center's (see [`QueueSpec::agent`]).
    pub fn is_center_shared(&self, namespace: &str) -> bool {
        self.durable
            && self
                .name
                .strip_prefix(namespace)
                .is_some_and(|rest| rest.starts_with(".center."))
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    fn namespace(&self) -> &str;

    /// The full name of a queue: `<namespace>.<suffix>`.
    fn queue_name(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.namespace())
    }

    async fn declare(&self, spec: &QueueSpec) -> Result<(), BusError>;

    /// Returns once the broker has taken responsibility for the message (publisher confirm).
    async fn publish(&self, destination: &Destination, message: BusMessage)
        -> Result<(), BusError>;

    /// Declares the queue and consumes it. The first attempt happens before this returns;
    /// after that the consumer survives broker restarts by reconnecting with backoff.
    async fn consume(&self, spec: QueueSpec, prefetch: u16) -> Result<Consumer, BusError>;

    /// Ends the bus for good: consumers end without reconnecting, publishes fail. A process
    /// calls it before its runtime goes away, so that the broker connection closes cleanly
    /// instead of failing under a runtime that is shutting down.
    async fn close(&self) {}
}

pub type SharedBus = Arc<dyn Bus>;

/// Opens the bus an URL names: `inproc` (or empty) for the embedded bus, `amqp://…` for RabbitMQ
/// (or several, comma-separated: the nodes of a cluster, see [`broker_urls`]). The center's
/// queues are classic; [`open_with`] chooses.
pub fn open(url: &str, namespace: &str) -> Result<SharedBus, BusError> {
    open_configured(
        url,
        namespace,
        QueueType::Classic,
        &crate::tls::ClientTls::default(),
    )
}

/// As [`open`], declaring the center's shared queues as `queue_type` on RabbitMQ.
pub fn open_with(url: &str, namespace: &str, queue_type: QueueType) -> Result<SharedBus, BusError> {
    open_configured(
        url,
        namespace,
        queue_type,
        &crate::tls::ClientTls::default(),
    )
}

/// As [`open`], with the TLS files of `amqps://` connections (`[bus] tls_ca`, `tls_cert`,
/// `tls_key`).
pub fn open_with_tls(
    url: &str,
    namespace: &str,
    tls: &crate::tls::ClientTls,
) -> Result<SharedBus, BusError> {
    open_configured(url, namespace, QueueType::Classic, tls)
}

/// As [`open`], with every option. TLS files with any other URL than `amqps://` are refused
/// rather than ignored: the operator meant the link to be encrypted.
pub fn open_configured(
    url: &str,
    namespace: &str,
    queue_type: QueueType,
    tls: &crate::tls::ClientTls,
) -> Result<SharedBus, BusError> {
    let tls_config = if tls.is_configured() {
        if let Some(plain) = broker_urls(url)
            .into_iter()
            .find(|url| !url.starts_with("amqps://"))
        {
            // Not the URL itself: it may carry a password.
            let scheme = plain.split_once("://").map_or(plain, |(scheme, _)| scheme);
            return Err(BusError::Unavailable(format!(
                "bus.tls_ca, tls_cert or tls_key is set, but bus.url is {scheme}, not amqps://"
            )));
        }
        Some(rabbit::tls_config(tls)?)
    } else {
        None
    };
    if url.is_empty() || url == "inproc" {
        return Ok(Arc::new(InProcBus::new(namespace)));
    }
    let urls = broker_urls(url);
    let not_amqp = |url: &&str| !(url.starts_with("amqp://") || url.starts_with("amqps://"));
    if urls.is_empty() || urls.iter().any(not_amqp) {
        return Err(BusError::Unavailable(format!(
            "bus url must be `inproc`, or one or more amqp:// or amqps:// URLs separated by \
             commas, got {url:?}"
        )));
    }
    Ok(Arc::new(RabbitBus::with_options(
        &urls, namespace, queue_type, tls_config,
    )))
}

/// One connection to one broker URL as the bus makes it (TLS with `tls` for `amqps://`),
/// without the bus around it: for a check of the broker alone (`elves doctor`).
pub async fn connect_one(
    url: &str,
    tls: &crate::tls::ClientTls,
    properties: lapin::ConnectionProperties,
) -> Result<lapin::Connection, BusError> {
    let config = if tls.is_configured() {
        Some(rabbit::tls_config(tls)?)
    } else {
        None
    };
    rabbit::connect(url, config.as_ref(), properties).await
}

/// The broker addresses of a bus url: one URL, or the nodes of a cluster separated by commas
/// (a comma inside a user name or password is written `%2C`). A client connects to the first
/// that answers, and after losing a node starts with the next one.
pub fn broker_urls(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// `url` asking the broker for frames of at most `frame_max` bytes, unless it already says.
///
/// lapin keeps a send and a receive buffer of 32 frames each per connection, so RabbitMQ's usual
/// 128 KiB frame costs 8 MiB of touched memory; an agent, whose messages are small, does better
/// with small frames (a message larger than a frame is split, not refused). `inproc` and `0` leave
/// the URL as it is.
pub fn with_frame_max(url: &str, frame_max: u32) -> String {
    let urls = broker_urls(url);
    if urls.len() > 1 {
        let each: Vec<String> = urls
            .iter()
            .map(|url| with_frame_max(url, frame_max))
            .collect();
        return each.join(",");
    }
    let is_amqp = url.starts_with("amqp://") || url.starts_with("amqps://");
    let already_set = url
        .split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|pair| pair.starts_with("frame_max=")));
    if !is_amqp || already_set || frame_max == 0 {
        return url.to_string();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}frame_max={frame_max}")
}

/// The pause before a reconnect attempt whose backoff is `backoff`: a random point in its
/// upper half ("equal jitter"). When a broker restarts under thousands of clients, they all
/// lose it in the same instant; without the jitter their retries would arrive in waves at the
/// same instants, each wave a storm of connection opens, queue declarations and consumer
/// registrations. With it they spread over the window, and every client still retries within
/// `backoff`.
pub fn jittered(backoff: std::time::Duration) -> std::time::Duration {
    use rand::Rng;
    let half = backoff / 2;
    let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
    half + std::time::Duration::from_micros(rand::thread_rng().gen_range(0..=spread))
}

/// A stream of deliveries from one queue.
pub struct Consumer {
    receiver: mpsc::Receiver<Delivery>,
    losses: tokio::sync::watch::Receiver<u64>,
    connected: tokio::sync::watch::Receiver<bool>,
}

impl Consumer {
    /// A consumer that is always connected (the in-process bus).
    pub(crate) fn new(receiver: mpsc::Receiver<Delivery>) -> Self {
        // The in-process bus never loses a consumer: senders nobody changes.
        let (keep_losses, losses) = tokio::sync::watch::channel(0);
        let (keep_link, connected) = tokio::sync::watch::channel(true);
        std::mem::forget(keep_losses);
        std::mem::forget(keep_link);
        Consumer {
            receiver,
            losses,
            connected,
        }
    }

    /// A consumer whose lost links `losses` counts and whose connection to the broker
    /// `connected` follows.
    pub(crate) fn with_link(
        receiver: mpsc::Receiver<Delivery>,
        losses: tokio::sync::watch::Receiver<u64>,
        connected: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Consumer {
            receiver,
            losses,
            connected,
        }
    }

    /// Counts the times this consumer lost its broker connection or channel (it then consumes
    /// again by itself). Deliveries not acked by then went back to the queue, and a private
    /// queue was deleted with what it held: whoever waits for messages on it learns here that
    /// they may never come.
    pub fn losses(&self) -> tokio::sync::watch::Receiver<u64> {
        self.losses.clone()
    }

    /// Whether the consumer is attached to its queue now: false from the moment its broker
    /// connection is lost until it consumes again. A center uses it to tell "the agents went
    /// quiet" from "I cannot hear them".
    pub fn connected(&self) -> tokio::sync::watch::Receiver<bool> {
        self.connected.clone()
    }

    /// The next delivery; `None` only when the bus itself was dropped.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.receiver.recv().await
    }

    /// A delivery that has already arrived, without waiting; `None` when there is none yet (or
    /// the bus was dropped). Lets a consumer take what piled up while it was busy as one batch.
    pub fn try_next(&mut self) -> Option<Delivery> {
        self.receiver.try_recv().ok()
    }
}

/// A received message that must be settled: ack after its effect is stored, reject if it can
/// never be processed (bad bytes), requeue if it could be processed later.
pub struct Delivery {
    pub message: BusMessage,
    /// True when the broker delivered this message before (the consumer may have died mid-way).
    pub redelivered: bool,
    settle: Settle,
}

pub(crate) enum Settle {
    Rabbit(lapin::acker::Acker),
    InProc(inproc::Requeue),
}

impl Delivery {
    pub(crate) fn new(message: BusMessage, redelivered: bool, settle: Settle) -> Self {
        Delivery {
            message,
            redelivered,
            settle,
        }
    }

    pub async fn ack(self) {
        if let Settle::Rabbit(acker) = &self.settle {
            if let Err(err) = acker.ack(Default::default()).await {
                // The channel died; the broker redelivers, and consumers are idempotent.
                log::warn!("bus: ack failed, message will be redelivered: {err}");
            }
        }
    }

    /// Drops the message for good (no requeue): for bodies that cannot be decoded.
    pub async fn reject(self) {
        if let Settle::Rabbit(acker) = &self.settle {
            let options = lapin::options::BasicRejectOptions { requeue: false };
            if let Err(err) = acker.reject(options).await {
                log::warn!("bus: reject failed: {err}");
            }
        }
    }

    /// Gives the message back to the queue so that it is delivered again.
    pub async fn requeue(self) {
        match self.settle {
            Settle::Rabbit(acker) => {
                let options = lapin::options::BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                if let Err(err) = acker.nack(options).await {
                    log::warn!("bus: requeue failed: {err}");
                }
            }
            Settle::InProc(requeue) => requeue.put_back(self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{broker_urls, jittered, open, open_with_tls, with_frame_max, QueueSpec};
    use crate::tls::ClientTls;
    use std::time::Duration;

    #[test]
    fn tls_files_need_an_amqps_url() {
        let tls = ClientTls {
            ca: Some("ca.pem".into()),
            ..Default::default()
        };
        for url in ["inproc", "amqp://user:secret@host/%2f"] {
            let err = open_with_tls(url, "ns", &tls)
                .err()
                .map(|err| err.to_string());
            let err = err.unwrap_or_default();
            assert!(err.contains("not amqps://"), "{url}: {err}");
            assert!(!err.contains("secret"), "the password stays out: {err}");
        }
    }

    #[test]
    fn jitter_stays_in_the_upper_half_and_spreads() {
        let backoff = Duration::from_secs(4);
        let pauses: Vec<Duration> = (0..200).map(|_| jittered(backoff)).collect();
        assert!(pauses
            .iter()
            .all(|pause| (Duration::from_secs(2)..=backoff).contains(pause)));
        let distinct: std::collections::HashSet<_> = pauses.iter().collect();
        assert!(distinct.len() > 100, "pauses are spread, not one value");
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn frame_max_is_added_once_and_only_to_amqp_urls() {
        assert_eq!(
            with_frame_max("amqp://guest:guest@127.0.0.1:5672/%2f", 16384),
            "amqp://guest:guest@127.0.0.1:5672/%2f?frame_max=16384"
        );
        assert_eq!(
            with_frame_max("amqps://host/vh?heartbeat=30", 8192),
            "amqps://host/vh?heartbeat=30&frame_max=8192"
        );
        assert_eq!(
            with_frame_max("amqp://host/vh?frame_max=65536", 8192),
            "amqp://host/vh?frame_max=65536"
        );
        assert_eq!(with_frame_max("inproc", 8192), "inproc");
        assert_eq!(
            with_frame_max("amqp://a:5672/%2f, amqp://b:5672/%2f?frame_max=4096", 8192),
            "amqp://a:5672/%2f?frame_max=8192,amqp://b:5672/%2f?frame_max=4096",
            "each node of a list"
        );
        assert_eq!(with_frame_max("amqp://host/vh", 0), "amqp://host/vh");
    }

    #[test]
    fn a_bus_url_may_list_the_nodes_of_a_cluster() {
        assert_eq!(
            broker_urls("amqp://a:5672/%2f, amqp://b:5673/%2f,,amqp://c/%2f "),
            ["amqp://a:5672/%2f", "amqp://b:5673/%2f", "amqp://c/%2f"]
        );
        assert_eq!(broker_urls("amqp://a/%2f"), ["amqp://a/%2f"]);
        assert!(open("amqp://a/%2f,amqps://b/%2f", "ns").is_ok());
        let refused = open("amqp://a/%2f,inproc", "ns")
            .err()
            .map(|e| e.to_string());
        assert!(
            refused
                .as_deref()
                .is_some_and(|text| text.contains("separated by commas")),
            "{refused:?}"
        );
        assert!(open(" , ", "ns").is_err());
    }

    #[test]
    fn queue_type_applies_to_the_durable_center_queues_only() {
        let spec = |name: &str, durable: bool| QueueSpec {
            name: name.to_string(),
            bindings: Vec::new(),
            durable,
        };
        assert!(spec("ns.center.result", true).is_center_shared("ns"));
        assert!(spec("ns.center.submit", true).is_center_shared("ns"));
        assert!(!spec("ns.center.reply.0123", false).is_center_shared("ns"));
        assert!(!spec("ns.agent.a1", true).is_center_shared("ns"));
        assert!(!spec("ns.center.result", true).is_center_shared("other"));
        assert!(!spec("nsx.center.result", true).is_center_shared("ns"));
    }
}
