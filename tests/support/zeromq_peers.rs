//! What the ZeroMQ test targets (`tests/zeromq.rs` and the interop suite's
//! `tests/interop/zeromq.rs`) do with their tower-mq peers the same way: wait, bounded,
//! for a delivery or a ready publisher; bind a port again that a closed socket may
//! still hold; and probe a new subscriber past ZeroMQ's slow joiner.
//!
//! It uses `waits.rs`, which the including target declares beside it (`mod waits;`).

#![allow(dead_code)] // each test target uses a different part

use std::time::Duration;

use std::future::IntoFuture;

use futures_util::StreamExt;
use tower::{Service, ServiceExt};
use tower_mq::request::IntoReply;
use tower_mq::zeromq::{Config, Consumer, Publisher};
use tower_mq::{serve, BoxError, Delivery, Error, Message, Receipt, Replier};

/// The bound on waiting for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// The next delivery of `consumer`, which should be `what`.
pub async fn next(consumer: &mut Consumer, what: &str) -> Delivery {
    super::waits::next_within(consumer, what, WAIT).await
}

/// A delivery's payload, as text.
pub fn text(delivery: &Delivery) -> String {
    String::from_utf8_lossy(delivery.message().payload()).into_owned()
}

/// `publisher`, once it is ready.
pub async fn ready(publisher: &mut Publisher) -> &mut Publisher {
    tokio::time::timeout(WAIT, publisher.ready())
        .await
        .expect("publisher not ready in time")
        .expect("publisher failed")
}

/// Sends `message` once `publisher` is ready; the send must succeed.
pub async fn publish(publisher: &mut Publisher, message: Message) -> Receipt {
    ready(publisher)
        .await
        .call(message)
        .await
        .expect("publish failed")
}

/// `open`s a socket bound to `endpoint` (the plain config), retrying while the port
/// is still held by a socket being closed (bounded).
pub async fn bind_again<T>(endpoint: &str, open: impl AsyncFn(&Config) -> Result<T, Error>) -> T {
    let config = Config::new().bind(endpoint);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match open(&config).await {
            Ok(socket) => return socket,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%e, "rebind not possible yet");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("binding {endpoint} failed: {e}"),
        }
    }
}

/// Publishes probes on `probe_topic` until `subscriber` gets one: a subscription reaches
/// the PUB a moment after the connection (ZeroMQ's slow joiner).
pub async fn until_subscribed(
    publisher: &mut Publisher,
    subscriber: &mut Consumer,
    probe_topic: &str,
) {
    let probing = async {
        loop {
            publish(publisher, Message::new(probe_topic, "probe")).await;
            if let Ok(Some(Ok(_))) =
                tokio::time::timeout(Duration::from_millis(50), subscriber.next()).await
            {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, probing)
        .await
        .expect("the subscription never became active");
}

/// A ROUTER with `config`, bound to a free loopback port, whose requests `handler`
/// answers (served on a task of its own); the endpoint to connect to.
pub async fn served_router<H>(config: Config, handler: H) -> String
where
    H: Service<Delivery> + Send + 'static,
    H::Response: IntoReply,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
{
    let (requests, replies) = Consumer::router(&config.bind("tcp://127.0.0.1:0"))
        .await
        .expect("bind ROUTER");
    let endpoint = requests.endpoints()[0].clone();
    tokio::spawn(serve(requests, Replier::new(handler, replies)).into_future());
    endpoint
}
