//! The RabbitMQ bus through lapin.
//!
//! One connection per bus, shared by a confirm-mode publishing channel and one channel per
//! consumer. When the broker goes away, the next publish reconnects (and retries once), and each
//! consumer reconnects in the background with exponential backoff (jittered, so that a fleet
//! that lost the broker together does not come back together), re-declaring its queue.
//! It does not spool: callers that must not lose a message (the agent's results) do that.
//!
//! A bus may know several brokers (the nodes of a cluster). It connects to the first that
//! answers, in the order given, and a reconnect starts with the address after the one it was
//! connected to, so that a node that just went away is tried last rather than first.

use super::{
    Bus, BusError, BusMessage, Consumer, Delivery, Destination, QueueSpec, QueueType, Settle,
};
use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, ByteArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};

/// How long [`RabbitBus::close`] keeps the runtime up for lapin's I/O thread after Close-Ok.
const IO_THREAD_WIND_DOWN: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long opening a connection (TCP, AMQP handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// AMQP `delivery_mode` values.
const DELIVERY_TRANSIENT: u8 = 1;
const DELIVERY_PERSISTENT: u8 = 2;

#[derive(Clone)]
pub struct RabbitBus {
    inner: Arc<Inner>,
}

struct Inner {
    /// The brokers this bus may connect to: one, or the nodes of a cluster.
    urls: Vec<String>,
    /// The index in `urls` to try first at the next connect.
    next_url: AtomicUsize,
    /// How the center's shared queues are declared ([`QueueSpec::is_center_shared`]).
    queue_type: QueueType,
    namespace: String,
    link: Mutex<Option<Link>>,
    closed: AtomicBool,
}

#[derive(Clone)]
struct Link {
    connection: Arc<Connection>,
    publisher: Channel,
    /// The broker account of this connection, stamped on every message published through it.
    user: Option<String>,
}

impl Link {
    fn usable(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

fn unavailable(err: lapin::Error) -> BusError {
    BusError::Unavailable(err.to_string())
}

impl RabbitBus {
    /// A bus on the broker at `url` (or the brokers of a comma-separated list, see
    /// [`super::broker_urls`]), declaring every queue classic.
    pub fn new(url: &str, namespace: &str) -> Self {
        RabbitBus::with_queue_type(&super::broker_urls(url), namespace, QueueType::Classic)
    }

    /// A bus on the brokers at `urls`, declaring the center's shared queues as `queue_type`.
    pub fn with_queue_type(urls: &[&str], namespace: &str, queue_type: QueueType) -> Self {
        RabbitBus {
            inner: Arc::new(Inner {
                urls: urls.iter().map(|url| url.to_string()).collect(),
                next_url: AtomicUsize::new(0),
                queue_type,
                namespace: namespace.to_string(),
                link: Mutex::new(None),
                closed: AtomicBool::new(false),
            }),
        }
    }
}

/// `host:port` of an AMQP URL, for messages: never its credentials.
fn broker_address(url: &str) -> String {
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => "an unreadable URL".to_string(),
    }
}

/// The user an AMQP URL logs in as (lapin's default `guest` when it names none); `None` for
/// EXTERNAL authentication (the user is the certificate's) or a URL lapin cannot read.
fn broker_user(url: &str) -> Option<String> {
    let uri: lapin::uri::AMQPUri = url.parse().ok()?;
    if uri.query.auth_mechanism == Some(lapin::auth::SASLMechanism::External) {
        return None;
    }
    Some(uri.authority.userinfo.username)
}

impl Inner {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    async fn link(&self) -> Result<Link, BusError> {
        let mut guard = self.link.lock().await;
        if self.is_closed() {
            return Err(BusError::Unavailable("the bus was closed".to_string()));
        }
        if let Some(link) = guard.as_ref().filter(|link| link.usable()) {
            return Ok(link.clone());
        }
        let n_urls = self.urls.len();
        let first = self.next_url.load(Ordering::Acquire);
        let mut failures = Vec::new();
        for offset in 0..n_urls {
            let index = (first + offset) % n_urls;
            let url = &self.urls[index];
            match open_link(url, &self.namespace).await {
                Ok(link) => {
                    // Whatever ends this connection, the next attempt starts elsewhere.
                    self.next_url.store((index + 1) % n_urls, Ordering::Release);
                    if guard.is_some() || offset > 0 {
                        log::info!("bus: connected to the broker at {}", broker_address(url));
                    }
                    *guard = Some(link.clone());
                    return Ok(link);
                }
                Err(err) if n_urls == 1 => return Err(err),
                Err(err) => failures.push(format!("{}: {err}", broker_address(url))),
            }
        }
        Err(BusError::Unavailable(format!(
            "none of the {n_urls} brokers answered: {}",
            failures.join("; ")
        )))
    }

    async fn publish_once(
        &self,
        link: &Link,
        destination: &Destination,
        message: &BusMessage,
    ) -> Result<(), PublishFailure> {
        let (exchange, routing_key) = match destination {
            Destination::Topic(key) => (self.namespace.as_str(), key.as_str()),
            Destination::Queue(name) => ("", name.as_str()),
        };
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let confirm = link
            .publisher
            .basic_publish(
                exchange,
                routing_key,
                options,
                &message.body,
                properties_of(message),
            )
            .await
            .map_err(PublishFailure::Connection)?;
        match confirm.await.map_err(PublishFailure::Connection)? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_returned)) => {
                Err(PublishFailure::Unroutable(routing_key.to_string()))
            }
            Confirmation::Nack(_) => Err(PublishFailure::Nack(routing_key.to_string())),
        }
    }

    async fn open_consumer(
        &self,
        spec: &QueueSpec,
        prefetch: u16,
    ) -> Result<(Channel, lapin::Consumer), BusError> {
        let link = self.link().await?;
        let channel = link
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        channel
            .basic_qos(prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        declare_queue(&channel, &self.namespace, spec, self.queue_type).await?;
        let consumer = channel
            .basic_consume(
                &spec.name,
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        Ok((channel, consumer))
    }
}

/// One connection to the broker at `url`, with its confirm-mode publishing channel and the
/// namespace's exchange declared.
async fn open_link(url: &str, namespace: &str) -> Result<Link, BusError> {
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    // A broker taking thousands of connections at once resets some during the handshake,
    // and lapin's connect can then wait for ever, holding the bus's link lock: every consumer
    // and publisher of the bus would wait with it.
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties))
        .await
        .map_err(|_| {
            BusError::Unavailable(format!(
                "no connection to the broker within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(unavailable)?;
    let publisher = connection.create_channel().await.map_err(unavailable)?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(unavailable)?;
    declare_exchange(&publisher, namespace).await?;
    Ok(Link {
        connection: Arc::new(connection),
        publisher,
        user: broker_user(url),
    })
}

/// The error of a queue declaration: a queue that exists with other arguments (the usual case:
/// another type than `declared_type`) is a configuration error that names the fix, since
/// retrying cannot help.
fn declare_failure(err: lapin::Error, queue: &str, declared_type: QueueType) -> BusError {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    let lapin::Error::ProtocolError(amqp) = &err else {
        return unavailable(err);
    };
    if amqp.kind() != &AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) {
        return unavailable(err);
    }
    let wanted = declared_type.as_str();
    let other = match declared_type {
        QueueType::Classic => QueueType::Quorum.as_str(),
        QueueType::Quorum => QueueType::Classic.as_str(),
    };
    BusError::Misconfigured(format!(
        "queue {queue} exists on the broker with other arguments than this {wanted} \
         declaration ({}). A queue's type cannot change in place: set `[bus] queue_type = \
         \"{other}\"` if that is what the queue is, or stop every center, let the queue drain, \
         delete it (`rabbitmqctl delete_queue {queue}`) and start again so that it is declared \
         {wanted}",
        amqp.get_message()
    ))
}

enum PublishFailure {
    Connection(lapin::Error),
    Unroutable(String),
    Nack(String),
}

async fn declare_exchange(channel: &Channel, namespace: &str) -> Result<(), BusError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            namespace,
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await
        .map_err(unavailable)
}

async fn declare_queue(
    channel: &Channel,
    namespace: &str,
    spec: &QueueSpec,
    queue_type: QueueType,
) -> Result<(), BusError> {
    declare_exchange(channel, namespace).await?;
    let options = QueueDeclareOptions {
        durable: spec.durable,
        exclusive: !spec.durable,
        auto_delete: !spec.durable,
        ..Default::default()
    };
    let declared_type = if spec.is_center_shared(namespace) {
        queue_type
    } else {
        QueueType::Classic
    };
    let mut arguments = FieldTable::default();
    // Classic is declared without the argument, as every queue was before `queue_type`
    // existed: an argument an existing queue lacks fails its redeclaration.
    if declared_type == QueueType::Quorum {
        arguments.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from("quorum")),
        );
    }
    channel
        .queue_declare(&spec.name, options, arguments)
        .await
        .map_err(|err| declare_failure(err, &spec.name, declared_type))?;
    for key in &spec.bindings {
        channel
            .queue_bind(
                &spec.name,
                namespace,
                key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

fn properties_of(message: &BusMessage) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(sig) = &message.sig {
        headers.insert(
            ShortString::from("sig"),
            AMQPValue::ByteArray(ByteArray::from(sig.clone())),
        );
    }
    if let Some(key_id) = &message.key_id {
        headers.insert(
            ShortString::from("key_id"),
            AMQPValue::LongString(LongString::from(key_id.as_str())),
        );
    }
    let mut properties = BasicProperties::default()
        .with_type(ShortString::from(message.kind.as_str()))
        .with_content_type(ShortString::from(message.content_type.as_str()))
        .with_timestamp(message.timestamp_ms / 1000)
        .with_delivery_mode(if message.transient {
            DELIVERY_TRANSIENT
        } else {
            DELIVERY_PERSISTENT
        })
        .with_headers(headers);
    if let Some(id) = &message.message_id {
        properties = properties.with_message_id(ShortString::from(id.as_str()));
    }
    if let Some(id) = &message.correlation_id {
        properties = properties.with_correlation_id(ShortString::from(id.as_str()));
    }
    if let Some(reply_to) = &message.reply_to {
        properties = properties.with_reply_to(ShortString::from(reply_to.as_str()));
    }
    if let Some(user_id) = &message.user_id {
        properties = properties.with_user_id(ShortString::from(user_id.as_str()));
    }
    if let Some(expiration) = message.expiration_ms {
        properties = properties.with_expiration(ShortString::from(expiration.to_string()));
    }
    properties
}

fn message_of(delivery: &lapin::message::Delivery) -> BusMessage {
    let properties = &delivery.properties;
    let text = |value: &Option<ShortString>| value.as_ref().map(|s| s.as_str().to_string());
    let headers = properties.headers().as_ref();
    let header = |name: &str| headers.and_then(|table| table.inner().get(name).cloned());
    let sig = match header("sig") {
        Some(AMQPValue::ByteArray(bytes)) => Some(bytes.as_slice().to_vec()),
        Some(AMQPValue::LongString(bytes)) => Some(bytes.as_bytes().to_vec()),
        _ => None,
    };
    let key_id = match header("key_id") {
        Some(AMQPValue::LongString(text)) => {
            Some(String::from_utf8_lossy(text.as_bytes()).into_owned())
        }
        Some(AMQPValue::ShortString(text)) => Some(text.as_str().to_string()),
        _ => None,
    };
    BusMessage {
        kind: text(properties.kind()).unwrap_or_default(),
        body: delivery.data.clone(),
        content_type: text(properties.content_type()).unwrap_or_default(),
        message_id: text(properties.message_id()),
        correlation_id: text(properties.correlation_id()),
        reply_to: text(properties.reply_to()),
        timestamp_ms: properties.timestamp().unwrap_or(0) * 1000,
        expiration_ms: properties
            .expiration()
            .as_ref()
            .and_then(|text| text.as_str().parse().ok()),
        sig,
        key_id,
        transient: properties.delivery_mode() == &Some(DELIVERY_TRANSIENT),
        user_id: text(properties.user_id()),
    }
}

#[async_trait]
impl Bus for RabbitBus {
    fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    async fn declare(&self, spec: &QueueSpec) -> Result<(), BusError> {
        let link = self.inner.link().await?;
        let channel = link
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        let declared =
            declare_queue(&channel, &self.inner.namespace, spec, self.inner.queue_type).await;
        let _ = channel.close(200, "declared").await;
        declared
    }

    async fn publish(
        &self,
        destination: &Destination,
        message: BusMessage,
    ) -> Result<(), BusError> {
        // A connection that died since the last publish is only noticed now: reconnect and try
        // once more, so that a broker restart costs one slow publish rather than an error.
        let mut message = message;
        let mut last_error = None;
        for _attempt in 0..2 {
            let link = self.inner.link().await?;
            // The broker checks it against the connection's user: a claim it cannot forge.
            message.user_id = link.user.clone();
            match self.inner.publish_once(&link, destination, &message).await {
                Ok(()) => return Ok(()),
                Err(PublishFailure::Unroutable(key)) => return Err(BusError::Unroutable(key)),
                Err(PublishFailure::Nack(key)) => return Err(BusError::Refused(key)),
                Err(PublishFailure::Connection(err)) => {
                    log::warn!("bus: publish failed, reconnecting: {err}");
                    let mut guard = self.inner.link.lock().await;
                    if guard
                        .as_ref()
                        .is_some_and(|current| Arc::ptr_eq(&current.connection, &link.connection))
                    {
                        *guard = None;
                    }
                    last_error = Some(err);
                }
            }
        }
        Err(BusError::Unavailable(
            last_error.map(|err| err.to_string()).unwrap_or_default(),
        ))
    }

    async fn consume(&self, spec: QueueSpec, prefetch: u16) -> Result<Consumer, BusError> {
        let first = self.inner.open_consumer(&spec, prefetch).await?;
        let (sender, receiver) = mpsc::channel(usize::from(prefetch.max(1)));
        let (losses, losses_seen) = tokio::sync::watch::channel(0u64);
        let (link_up, connected) = tokio::sync::watch::channel(true);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut current = Some(first);
            let mut backoff = FIRST_BACKOFF;
            loop {
                if let Some((channel, mut stream)) = current.take() {
                    loop {
                        let item = tokio::select! {
                            item = stream.next() => item,
                            _ = sender.closed() => {
                                let _ = channel.close(200, "consumer dropped").await;
                                return;
                            }
                        };
                        match item {
                            Some(Ok(delivery)) => {
                                backoff = FIRST_BACKOFF;
                                let message = message_of(&delivery);
                                let settle = Settle::Rabbit(delivery.acker);
                                let delivery = Delivery::new(message, delivery.redelivered, settle);
                                if sender.send(delivery).await.is_err() {
                                    let _ = channel.close(200, "consumer dropped").await;
                                    return;
                                }
                            }
                            _ if inner.is_closed() => return,
                            Some(Err(err)) => {
                                log::warn!("bus: consumer of {} lost: {err}", spec.name);
                                let _ = link_up.send(false);
                                break;
                            }
                            None => {
                                log::warn!("bus: consumer of {} ended", spec.name);
                                let _ = link_up.send(false);
                                break;
                            }
                        }
                    }
                    losses.send_modify(|n_lost| *n_lost += 1);
                }
                if sender.is_closed() || inner.is_closed() {
                    return;
                }
                tokio::time::sleep(super::jittered(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                match inner.open_consumer(&spec, prefetch).await {
                    Ok(opened) => {
                        log::info!("bus: consuming {} again", spec.name);
                        let _ = link_up.send(true);
                        current = Some(opened);
                    }
                    Err(err) => log::warn!("bus: cannot consume {} yet: {err}", spec.name),
                }
            }
        });
        Ok(Consumer::with_link(receiver, losses_seen, connected))
    }

    async fn close(&self) {
        let mut guard = self.inner.link.lock().await;
        self.inner.closed.store(true, Ordering::Release);
        if let Some(link) = guard.take() {
            log::debug!("bus: closing the connection");
            match link.connection.close(200, "closing").await {
                Ok(()) => {
                    log::debug!("bus: connection closed");
                    // lapin's I/O thread still makes its last turns on this runtime's
                    // reactor after Close-Ok and cannot be joined; a runtime dropped under it
                    // makes it log errors for a connection that closed fine.
                    tokio::time::sleep(IO_THREAD_WIND_DOWN).await;
                }
                Err(err) => log::debug!("bus: closing the connection: {err}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_a_url_logs_in_as() {
        assert_eq!(
            broker_user("amqp://agent-7:secret@127.0.0.1:5672/%2f").as_deref(),
            Some("agent-7")
        );
        assert_eq!(
            broker_user("amqp://a%40b:pw@host/").as_deref(),
            Some("a@b"),
            "percent-decoded, as lapin logs in"
        );
        assert_eq!(broker_user("amqp://host").as_deref(), Some("guest"));
        assert_eq!(
            broker_user("amqps://host/?auth_mechanism=external").as_deref(),
            None
        );
        assert_eq!(broker_user("not a url"), None);
    }
}
