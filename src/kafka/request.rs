//! Request/reply over Kafka: requests go to a topic, replies come back on a reply
//! topic the requester owns, matched by correlation id; the
//! [generic requester](crate::request) on Kafka's publisher and consumer.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tower::ServiceExt;
//! use tower_mq::kafka::{Config, Requester};
//! use tower_mq::Message;
//!
//! # async fn run() -> Result<(), tower_mq::Error> {
//! let config = Config::new("127.0.0.1:9092");
//! let requester = Requester::connect(&config, "replies.billing-client")
//!     .await?
//!     .timeout(Duration::from_secs(5));
//! let reply = requester.oneshot(Message::new("rpc.invoice", "42")).await?;
//! println!("{:?}", reply.payload());
//! # Ok(())
//! # }
//! ```

use tower_mq_core::Error;

use super::admin::{Admin, TopicSpec};
use super::config::Config;
use super::consumer::{Consumer, ConsumerConfig};
use super::publisher::Publisher;

/// The [generic requester](crate::request::Requester) over a Kafka [`Publisher`] and a
/// consumer of a reply topic of its own; made by [`Requester::connect`].
pub type Requester = crate::request::Requester<Publisher>;

impl crate::request::Requester<Publisher> {
    /// A Kafka requester whose replies arrive on `reply_topic`.
    ///
    /// Creates `reply_topic` (one partition) if it does not exist, declares a consumer
    /// group of its own on it (`<reply_topic>.requester`) at the topic's end so only
    /// replies sent from now on are read, and waits until that consumer has joined.
    /// The serving side answers with [`Replier`](crate::request::Replier) over a
    /// [`Publisher`]. Use one reply topic per requester process.
    pub async fn connect(config: &Config, reply_topic: &str) -> Result<Self, Error> {
        let admin = Admin::new(config)?;
        admin.create_topic(TopicSpec::new(reply_topic)).await?;
        let group = format!("{reply_topic}.requester");
        admin.declare_group(reply_topic, &group).await?;
        let mut replies =
            Consumer::subscribe(config, ConsumerConfig::new(reply_topic, group)).await?;
        replies
            .wait_for_assignment(config.operation_timeout)
            .await?;
        let publisher = Publisher::new(config)?;
        Ok(Self::new(publisher, replies, reply_topic).broker_name(super::BROKER))
    }
}
