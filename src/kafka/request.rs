//! Request/reply over Kafka: requests go to a topic, replies come back on a reply
//! topic the requester owns, matched by correlation id.

use tower_mq_core::Error;

use super::admin::{Admin, TopicSpec};
use super::config::Config;
use super::consumer::{Consumer, ConsumerConfig};
use super::producer::Publisher;
use crate::request::Requester;

/// A [`Requester`] whose replies arrive on `reply_topic`.
///
/// Creates `reply_topic` (one partition) if it does not exist, declares a consumer
/// group of its own on it (`<reply_topic>.requester`) at the topic's end so only
/// replies sent from now on are read, and waits until that consumer has joined. The
/// serving side answers with [`Replier`](crate::request::Replier) over a
/// [`Publisher`]. Use one reply topic per requester process.
pub async fn requester(config: &Config, reply_topic: &str) -> Result<Requester<Publisher>, Error> {
    let admin = Admin::new(config)?;
    admin.create_topic(TopicSpec::new(reply_topic)).await?;
    let group = format!("{reply_topic}.requester");
    admin.declare_group(reply_topic, &group).await?;
    let mut replies = Consumer::subscribe(config, ConsumerConfig::new(reply_topic, group)).await?;
    replies
        .wait_for_assignment(config.operation_timeout())
        .await?;
    let publisher = Publisher::new(config)?;
    Ok(Requester::new(publisher, replies, reply_topic).with_broker_name(super::BROKER))
}
