//! The Pub/Sub publisher: `PUBLISH`, with the channel's receiver count in the
//! receipt. See the [Pub/Sub module docs](super).

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::RedisResult;
use tower::Service;

use super::Framing;
use crate::redis::config::Config;
use crate::redis::connection::{Connection, Readiness};
use crate::redis::future::ResponseFuture;
use crate::redis::layout::{
    beyond_payload, check_destination, encode, is_plain, pack_envelope, StreamLayout,
    ENVELOPE_MAGIC,
};
use crate::redis::BROKER;
use crate::{Error, Guarantee, Message, Operation, Receipt};

/// Publishes messages on Redis Pub/Sub channels with `PUBLISH`: a
/// `Service<Message, Response = Receipt, Error = Error>`.
///
/// The message's destination names the channel. Clones share one connection; the
/// publisher is `Send + Sync + Clone`: keep one in axum state or a
/// `BoxCloneSyncService`. See the [module docs](super).
// `Clone` is derived: a clone of `Readiness` starts with no wait of its own.
#[derive(Clone)]
pub struct Publisher {
    readiness: Readiness,
    framing: Framing,
    ignore_unsupported: bool,
}

impl Publisher {
    /// Connects to the server `config` names.
    pub async fn connect(config: &Config) -> Result<Self, Error> {
        Ok(
            Publisher::from_connection(Connection::connect(config).await?)
                .framing(config.pubsub_framing),
        )
    }

    /// A publisher on an existing connection manager (its own settings apply).
    pub fn from_connection_manager(manager: ConnectionManager) -> Self {
        Publisher::from_connection(Connection::from_manager(manager, Duration::from_secs(1)))
    }

    fn from_connection(conn: Connection) -> Self {
        Publisher {
            readiness: Readiness::new(conn),
            framing: Framing::Plain,
            ignore_unsupported: false,
        }
    }

    /// Frames messages this way (default: the config's, [`Framing::Plain`] for a
    /// publisher built from a connection manager).
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    /// Whether what the framing cannot carry is left out instead of failing the
    /// publish: with plain framing, everything but the payload; with the envelope, a
    /// priority is carried unhonoured. Off by default.
    pub fn ignore_unsupported(mut self, ignore: bool) -> Self {
        self.ignore_unsupported = ignore;
        self
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("connected", &self.readiness.connection().is_up())
            .field("framing", &self.framing)
            .field("ignore_unsupported", &self.ignore_unsupported)
            .finish()
    }
}

impl Service<Message> for Publisher {
    type Response = Receipt;
    type Error = Error;
    type Future = ResponseFuture<Receipt>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.readiness.poll_ready(cx)
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let mut conn = self.readiness.connection().clone();
        let message_channel = message.shared_destination();
        let ignore_unsupported = self.ignore_unsupported;
        let framing = self.framing;
        ResponseFuture::new(async move {
            let payload = frame(framing, message, ignore_unsupported)?;
            let channel = message_channel;
            let result: RedisResult<u64> = redis::cmd("PUBLISH")
                .arg(&*channel)
                .arg(payload.as_ref())
                .query_async(conn.manager_mut())
                .await;
            let receivers = conn.checked(result, Operation::Publish, &channel)?;
            Ok(Receipt::new(BROKER, channel, Guarantee::Forwarded).with_receivers(receivers))
        })
    }
}

/// The payload to publish for `message` with `framing`.
fn frame(framing: Framing, message: Message, ignore_unsupported: bool) -> Result<Bytes, Error> {
    check_destination(&message)?;
    let plain = is_plain(&message);
    match framing {
        Framing::Envelope
            if !plain
                || !message.is_persistent()
                || message.payload().starts_with(ENVELOPE_MAGIC) =>
        {
            Ok(pack_envelope(&encode(
                &StreamLayout::envelope(),
                &message,
                ignore_unsupported,
            )?))
        }
        Framing::Plain if !plain && !ignore_unsupported => {
            Err(Error::permanent(BROKER, Operation::Publish)
                .with_code(tower_mq_core::Code::Unsupported)
                .with_destination(message.destination().to_owned())
                .with_reason(format!(
                    "Redis Pub/Sub carries only the payload, and the message also has {} \
                     (enable the envelope framing to carry them, or ignore unsupported \
                     properties to send the payload alone)",
                    beyond_payload(&message).join(", ")
                )))
        }
        _ => Ok(message.into_payload()),
    }
}
