//! Bad input against the real brokers: each case fails with an error that says what
//! was wrong (broker, operation, destination, reason) and costs nothing else: the
//! connection goes on, and the next good message goes through.
//!
//! Addresses come from `TOWER_MQ_REDIS_URL`, `TOWER_MQ_NATS_URL` and
//! `TOWER_MQ_AMQP_URL` (defaults: the project harness).

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use harness::unique;
use tower::{Service, ServiceExt};
use tower_mq::{Error, ErrorKind, Message, Operation, Receipt};

async fn try_publish<S>(publisher: &mut S, message: Message) -> Result<Receipt, Error>
where
    S: Service<Message, Response = Receipt, Error = Error>,
{
    tokio::time::timeout(Duration::from_secs(15), async {
        publisher.ready().await?.call(message).await
    })
    .await
    .expect("a publish answers within 15 s")
}

/// Asserts `err` is permanent, from `broker`'s `operation`, and says `reason`.
fn assert_refused(err: &Error, broker: &str, operation: Operation, reason: &str) {
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.broker(), broker, "{err}");
    assert_eq!(err.operation(), operation, "{err}");
    let shown = format!("{err} {:?}", std::error::Error::source(err));
    assert!(shown.contains(reason), "{shown} lacks {reason:?}");
    assert!(!shown.contains("s3cret"), "the password leaked: {shown}");
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use crate::harness::redis::config;
    use tower_mq::redis::{Config, StreamConsumer, StreamConsumerConfig, StreamPublisher};

    #[tokio::test]
    async fn malformed_urls_are_permanent_connect_errors_without_the_password() {
        for bad in [
            "redis://:s3cret@127.0.0.1:notaport",
            "http://:s3cret@127.0.0.1:16379",
            "redis://:s3cret@",
        ] {
            let err = StreamPublisher::connect(&Config::new(bad))
                .await
                .expect_err(bad);
            assert_refused(&err, "redis", Operation::Connect, "");
        }
    }

    #[tokio::test]
    async fn a_key_that_is_not_a_stream_fails_publish_and_subscribe_permanently_naming_it() {
        let config = config().await;
        let key = unique("plain-string");
        let mut raw = config.connect().await.expect("connect");
        let _: () = ::redis::cmd("SET")
            .arg(&key)
            .arg("not a stream")
            .query_async(&mut raw)
            .await
            .expect("SET");
        let mut publisher = StreamPublisher::connect(&config).await.expect("connect");
        let err = try_publish(&mut publisher, Message::new(&key, "x"))
            .await
            .expect_err("a string is no stream");
        assert_refused(&err, "redis", Operation::Publish, "WRONGTYPE");
        assert_eq!(err.destination(), Some(key.as_str()));
        let err = StreamConsumer::subscribe(&config, StreamConsumerConfig::new(&key, "g"))
            .await
            .expect_err("a string is no stream");
        assert_refused(&err, "redis", Operation::Declare, "WRONGTYPE");
        // The publisher goes on.
        let good = unique("good");
        try_publish(&mut publisher, Message::new(&good, "x"))
            .await
            .expect("the next publish");
    }
}

#[cfg(feature = "nats")]
mod nats {
    use super::*;
    use crate::harness::nats::url;
    use tower_mq::nats::{Config, Connection, Publisher};

    async fn connect() -> Connection {
        crate::harness::nats::connect(Config::new(url())).await
    }

    #[tokio::test]
    async fn malformed_urls_are_permanent_connect_errors_without_the_password() {
        for bad in [
            "nats://user:s3cret@127.0.0.1:notaport",
            "nats://user:s3cret@[::1",
        ] {
            let err = Connection::connect(&Config::new(bad)).await.expect_err(bad);
            assert_refused(&err, "nats", Operation::Connect, "");
        }
        // Nothing to connect to is a mistake in the configuration, not an outage.
        for empty in ["", " , "] {
            let err = Connection::connect(&Config::new(empty))
                .await
                .expect_err("no server");
            assert_refused(&err, "nats", Operation::Connect, "the URL names no server");
        }
    }

    #[tokio::test]
    async fn a_payload_over_the_servers_max_payload_is_refused_and_the_next_goes_through() {
        let connection = connect().await;
        let subject = unique("oversize");
        let mut publisher = Publisher::new(&connection);
        let huge = vec![b'x'; 8 * 1024 * 1024];
        let err = try_publish(&mut publisher, Message::new(&subject, huge))
            .await
            .expect_err("over max_payload");
        assert_refused(&err, "nats", Operation::Publish, "max_payload");
        assert_eq!(err.destination(), Some(subject.as_str()));
        try_publish(&mut publisher, Message::new(&subject, "small"))
            .await
            .expect("the next publish");
    }

    #[tokio::test]
    async fn header_names_nats_cannot_carry_are_refused_naming_them() {
        let connection = connect().await;
        let subject = unique("header-names");
        let mut publisher = Publisher::new(&connection);
        for name in ["bad:name", "line\r\nbreak", "spa ce", ""] {
            let err = try_publish(
                &mut publisher,
                Message::new(&subject, "x").with_header(name, "v"),
            )
            .await
            .expect_err(name);
            assert_refused(&err, "nats", Operation::Publish, "header name");
        }
        try_publish(
            &mut publisher,
            Message::new(&subject, "x").with_header("fine", "v"),
        )
        .await
        .expect("the next publish");
    }

    #[tokio::test]
    async fn invalid_subjects_are_refused_naming_them() {
        let connection = connect().await;
        let mut publisher = Publisher::new(&connection);
        for subject in ["has space", "", "wild.*", "tail.>", "double..dot"] {
            let err = try_publish(&mut publisher, Message::new(subject, "x"))
                .await
                .expect_err(subject);
            assert_refused(&err, "nats", Operation::Publish, "subject");
        }
    }
}

#[cfg(feature = "rabbitmq")]
mod rabbitmq {
    use super::*;
    use crate::harness::rabbitmq::{connect, url};
    use tower_mq::rabbitmq::{Config, Queue, Routing, Topology};

    #[tokio::test]
    async fn header_names_and_ttls_amqp_cannot_carry_are_refused_naming_them() {
        let q = unique("amqp-refusals");
        let connection = connect(
            Config::new(url())
                .routing(Routing::DefaultExchange)
                .topology(
                    Topology::new().queue(Queue::classic(&q).expires(Duration::from_secs(60))),
                ),
        )
        .await;
        let mut publisher = connection.publisher();
        let long_name = "h".repeat(256);
        let cases = [
            (
                Message::new(&q, "x").with_header(long_name.as_str(), "v"),
                "255",
            ),
            (
                Message::new(&q, "x").with_ttl(Duration::from_micros(1500)),
                "whole milliseconds",
            ),
            (
                Message::new(&q, "x").with_ttl(Duration::from_millis(u64::MAX)),
                "invalid expiration",
            ),
        ];
        for (message, reason) in cases {
            let err = try_publish(&mut publisher, message)
                .await
                .expect_err(reason);
            assert_refused(&err, "rabbitmq", Operation::Publish, reason);
        }
        try_publish(&mut publisher, Message::new(&q, "fine"))
            .await
            .expect("the next publish");
    }
}
